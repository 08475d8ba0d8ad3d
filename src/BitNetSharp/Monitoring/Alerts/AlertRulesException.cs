namespace BitNetSharp.Monitoring.Alerts;

/// <summary>
/// An alert rule file that does not fit the model it watches (found at load, when the model is known: a layer match past
/// its layers). The rule file's error, not the model's: a host says so rather than "the model could not be loaded".
/// </summary>
public sealed class AlertRulesException(string message) : Exception(message);
