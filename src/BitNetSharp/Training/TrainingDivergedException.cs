namespace BitNetSharp.Training;

/// <summary>The weights became NaN or infinite (too high a learning rate): the run cannot continue.</summary>
public sealed class TrainingDivergedException(string message) : InvalidOperationException(message);
