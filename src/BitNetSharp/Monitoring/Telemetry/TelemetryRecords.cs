namespace BitNetSharp.Monitoring.Telemetry;

/// <summary>
/// One sampled token of one sequence: which request (and W3C trace) it belongs to, the engine step that produced it,
/// how long that step and this sequence's previous token took, and its logits' health. <c>Token</c> is the token sampled from
/// these logits (a stop token included), so a log's tokens for one request are its completion, in order.
/// </summary>
public readonly record struct TelemetryStepRecord(
    long TimeUnixNanos,
    long Step,
    string? RequestId,
    string? TraceId,
    int Sequence,
    int Token,
    int BatchTokens,
    float StepSeconds,
    float LatencySeconds,
    float LogitMin,
    float LogitMax,
    float LogitEntropy,
    int NonFinite);

/// <summary>
/// One layer of one sampled engine step, averaged over the step's tokens: per BitLinear input (index =
/// <see cref="BitLinearInput"/>) the share of int8 codes at the clamp limits, the share of zero codes and the crest
/// factor; and the residual stream after the layer.
/// </summary>
public sealed class TelemetryLayerRecord
{
    public long TimeUnixNanos { get; set; }
    public long Step { get; set; }
    public int Layer { get; set; }
    public int Tokens { get; set; }
    public float[] Saturation { get; } = new float[HealthNames.InputCount];
    public float[] Underflow { get; } = new float[HealthNames.InputCount];
    public float[] CrestFactor { get; } = new float[HealthNames.InputCount];
    public float ResidualRms { get; set; }
    public float ResidualMaxAbs { get; set; }
    public float ResidualChange { get; set; }

    /// <summary>The KV cache's rounding of the key rows (<see cref="HealthSnapshot.KvKeyError"/>); NaN where not recorded.</summary>
    public float KvKeyError { get; set; } = float.NaN;

    /// <summary>The KV cache's rounding of the value rows; NaN where not recorded.</summary>
    public float KvValueError { get; set; } = float.NaN;
}

/// <summary>Something that happened once: an alert firing or resolving, a sequence ended by non-finite logits, a weight mismatch.</summary>
public readonly record struct TelemetryEvent(long TimeUnixNanos, string Kind, string? RequestId, string? TraceId, string Message)
{
    /// <summary>
    /// The engine step the event belongs to (a sequence's non-finite logits: the step that produced them), matching its
    /// layer rows; null: the last step written (the column was always that, often the previous sampled step).
    /// </summary>
    public long? Step { get; init; }
}
