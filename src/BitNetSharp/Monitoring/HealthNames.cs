namespace BitNetSharp.Monitoring;

/// <summary>
/// The four BitLinear inputs of a layer, each quantized once per token to int8 and shared by the projections that read
/// it: q/k/v read the normed attention input, o the attention output, gate/up the normed FFN input, down the gated
/// FFN activation.
/// </summary>
public enum BitLinearInput { Qkv = 0, O = 1, GateUp = 2, Down = 3 }

/// <summary>
/// Names shared by the collector, the metrics, the alert rules, the telemetry log and the dashboards. Label values
/// are bounded: a layer index and one of <see cref="InputLabels"/> or <see cref="ProjectionLabels"/>.
/// </summary>
public static class HealthNames
{
    public const int InputCount = 4;

    /// <summary>Label values of <see cref="BitLinearInput"/>, in enum order.</summary>
    public static readonly string[] InputLabels = ["qkv", "o", "gate_up", "down"];

    /// <summary>The seven ternary projections of a layer, in <see cref="Model.LayerWeights"/> order.</summary>
    public static readonly string[] ProjectionLabels = ["q", "k", "v", "o", "gate", "up", "down"];

    public static string Label(BitLinearInput input) => InputLabels[(int)input];

    /// <summary>The Meter every model-health instrument is published on (dotnet-counters: <c>--counters BitNetSharp.Health</c>).</summary>
    public const string MeterName = "BitNetSharp.Health";
}
