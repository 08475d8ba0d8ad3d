using System.Runtime.CompilerServices;
using System.Diagnostics.Metrics;
using System.Globalization;
using BitNetSharp.Generation.Scheduler;
using BitNetSharp.Monitoring.Alerts;

namespace BitNetSharp.Monitoring;

/// <summary>
/// Publishes a scheduler's model health — the latest sampled step per layer and BitLinear input, logits, non-finite
/// sequences, token-latency spread, weight integrity and code shares, and the alerts — as
/// <see cref="System.Diagnostics.Metrics"/> instruments on the <see cref="HealthNames.MeterName"/> meter (so
/// dotnet-counters and OpenTelemetry exporters see them), and the same values, under their Prometheus names, as the
/// signals alert rules evaluate (<see cref="CollectSignals"/>). Each signal is declared once below with both names, so
/// a rule, /metrics and the dashboards cannot disagree about what a name means.
/// </summary>
public sealed class HealthMeters : IDisposable
{
    private readonly ContinuousBatchScheduler _scheduler;
    private readonly Func<WeightIntegrity?> _integrity;
    private readonly Func<WeightCodeStats?> _codes;
    private readonly Func<AlertEngine?> _alerts;
    private readonly Signal[] _signals;

    /// <summary>One exported signal: instrument name and unit, its Prometheus name, and how to read its series.</summary>
    public sealed record Signal(string Instrument, string Unit, string PrometheusName, bool Counter, string Description, Action<List<Measurement<double>>> Read);

    public HealthMeters(ContinuousBatchScheduler scheduler, Func<WeightIntegrity?> integrity, Func<WeightCodeStats?> codes, Func<AlertEngine?> alerts)
    {
        _scheduler = scheduler;
        _integrity = integrity;
        _codes = codes;
        _alerts = alerts;
        Meter = new Meter(HealthNames.MeterName);
        _signals =
        [
            PerInput("bitnet.health.activation.saturation", "1", "bitnet_health_activation_saturation_ratio",
                "Share of a BitLinear input's codes at the clamp limits (|q| >= 127 at 8 bits, 2^(bits-1)-1 at fewer), last sampled step, mean over its tokens.", s => s.Saturation, withBits: true),
            PerInput("bitnet.health.activation.underflow", "1", "bitnet_health_activation_underflow_ratio",
                "Share of a BitLinear input's codes that are 0 (below half a quantization step), last sampled step.", s => s.Underflow, withBits: true),
            PerInput("bitnet.health.activation.crest_factor", "{factor}", "bitnet_health_activation_crest_factor",
                "absmax/RMS of a BitLinear input per token (about 127/crest int8 levels carry a typical entry), last sampled step.", s => s.CrestFactor),
            PerLayer("bitnet.health.residual.rms", "{value}", "bitnet_health_residual_rms", "RMS of the residual stream after the layer, last sampled step.", s => s.ResidualRms),
            PerLayer("bitnet.health.residual.max_abs", "{value}", "bitnet_health_residual_max_abs", "Largest |x| of the residual stream after the layer, last sampled step.", s => s.ResidualMaxAbs),
            PerLayer("bitnet.health.residual.relative_change", "1", "bitnet_health_residual_relative_change_ratio",
                "||x_after - x_before|| / ||x_before|| of the layer's residual update, largest over the last sampled step's tokens (one diverging sequence is not averaged away by the batch).", s => s.ResidualChange),
            new("bitnet.health.residual.blowup", "{flag}", "bitnet_health_residual_blowup", false,
                "1 when the layer's relative change crossed the blow-up threshold (or was not finite) for a token of the last sampled step.", m => ReadSnapshot(m, s =>
                {
                    for (int l = 0; l < s.Layers; l++) m.Add(new(s.BlowUp[l] ? 1 : 0, Layer(l)));
                })),
            new("bitnet.health.kv.error", "1", "bitnet_health_kv_error_ratio", false,
                "The KV cache's rounding of the key (tensor=\"k\") and value (\"v\") rows the last sampled step wrote to the layer, ||x - stored|| / ||x||, largest over its tokens (0 with an f32 cache).",
                m => ReadSnapshot(m, s =>
                {
                    for (int l = 0; l < s.Layers; l++)
                    {
                        m.Add(new(s.KvKeyError[l], Layer(l), new("tensor", "k")));
                        m.Add(new(s.KvValueError[l], Layer(l), new("tensor", "v")));
                    }
                })),
            Logit("bitnet.health.logits.min", "bitnet_health_logits_min", "Smallest logit of the last sampled step with logits rows.", s => s.LogitMin, s => s.LastLogitMin),
            Logit("bitnet.health.logits.max", "bitnet_health_logits_max", "Largest logit of the last sampled step with logits rows.", s => s.LogitMax, s => s.LastLogitMax),
            Logit("bitnet.health.logits.range", "bitnet_health_logits_range", "Smallest max-min among the logits rows of the last sampled step with any (flat output shows here).", s => s.LogitRange, s => s.LastLogitRange),
            Logit("bitnet.health.logits.entropy", "bitnet_health_logits_entropy", "Mean softmax entropy (nats) of the logits rows of the last sampled step with any.", s => s.LogitEntropy, s => s.LastLogitEntropy),
            new("bitnet.health.nonfinite_sequences", "{sequence}", "bitnet_health_nonfinite_sequences_total", true,
                "Sequences ended because their logits held NaN or Inf.", m => m.Add(new(_scheduler.Statistics.NonFiniteSequences))),
            new("bitnet.health.samples", "{step}", "bitnet_health_samples_total", true,
                "Engine steps whose health was measured, the warm-up's included (bitnet_engine_steps_total counts served steps only, so this can be the larger).", m => m.Add(new(t_collection?.Samples ?? _scheduler.Health.Samples))),
            new("bitnet.health.logit_samples", "{step}", "bitnet_health_logit_samples_total", true,
                "Measured steps that had logits rows (a prompt chunk alone has none, and the logits gauges keep their last value): rules over the logits gauges count new samples by it.",
                m =>
                {
                    long n = 0; // 0 before the first sample, as bitnet_health_samples_total
                    ReadSnapshot(m, s => n = s.LogitSamples);
                    m.Add(new(n));
                }),
            new("bitnet.health.token_latency.stddev", "s", "bitnet_health_token_latency_stddev_seconds", false,
                $"Standard deviation of the last 256 inter-token latencies (absent until {MinJitterWindow} are in).", m =>
                {
                    // Two latencies (one of them across a prefill chunk) made a 0.3 s spread that fired the alert.
                    if (_scheduler.TokenLatency.Count < MinJitterWindow) return;
                    var (_, sd) = _scheduler.TokenLatency.Statistics();
                    if (!double.IsNaN(sd)) m.Add(new(sd));
                }),
            new("bitnet.health.repetition", "1", "bitnet_health_repetition_ratio", false,
                "Largest share, over the running sequences, of the last 64 generated tokens that repeat a 4-gram seen earlier in the sequence (a loop reads near 1; 0 when no sequence has 16 generated tokens).",
                m => m.Add(new(_scheduler.RepetitionShare))),
            new("bitnet.weights.checksum_mismatches", "{tensor}", "bitnet_weights_checksum_mismatches_total", true,
                "Tensors a full checksum found changed since load (each counted once until a full check passes).", m => { if (_integrity() is { } w) m.Add(new(w.Mismatches)); }),
            new("bitnet.weights.probe_mismatches", "{tensor}", "bitnet_weights_probe_mismatches_total", true,
                "Packed tensors whose sampled words a probe found changed since load (each counted once until a full check passes).", m => { if (_integrity() is { } w) m.Add(new(w.ProbeMismatches)); }),
            new("bitnet.weights.verifications", "{check}", "bitnet_weights_verifications_total", true,
                "Full weight checksum passes completed.", m => { if (_integrity() is { } w) m.Add(new(w.Verifications)); }),
            new("bitnet.weights.verified", "{flag}", "bitnet_weights_verified", false,
                "1 while no check or probe has found changed weights (0 after a mismatch until a full check passes, and for good once a mapped model file was cut short under the server).",
                // A file cut short fails every generation from then on, and no probe or check runs to say so (the forward
                // pass fails first): counted here, so BitNetWeightChecksumMismatch fires (it read 1 while /health said 503).
                m => { if (_integrity() is { } w) m.Add(new(w.Verified && _scheduler.ModelFileProblem() is null ? 1 : 0)); }),
            new("bitnet.weights.code_share", "1", "bitnet_weights_code_share_ratio", false,
                "Share of a packed projection's weights that are -1, 0 and +1.", m =>
                {
                    if (_codes() is not { } c) return;
                    var labels = HealthNames.ProjectionLabels;
                    for (int l = 0; l < c.Layers; l++)
                        for (int j = 0; j < labels.Length; j++)
                        {
                            var k = c[l, j];
                            string layer = l.ToString(CultureInfo.InvariantCulture);
                            m.Add(new(k.MinusShare, new("layer", layer), new("projection", labels[j]), new("code", "-1")));
                            m.Add(new(k.ZeroShare, new("layer", layer), new("projection", labels[j]), new("code", "0")));
                            m.Add(new(k.PlusShare, new("layer", layer), new("projection", labels[j]), new("code", "+1")));
                        }
                }),
            new("bitnet.weights.degenerate_tensors", "{tensor}", "bitnet_weights_degenerate_tensors", false,
                "Packed projections with no -1 or no +1 codes (all one sign or all zero).", m => { if (_codes() is { } c) m.Add(new(c.Degenerate)); }),
            new("bitnet.telemetry.dropped_rows", "{row}", "bitnet_telemetry_dropped_rows_total", true,
                "Telemetry log rows lost to write errors or a writer too far behind (present with --telemetry-log).", m =>
                {
                    if (_scheduler.Telemetry is Telemetry.TelemetryLogWriter w) m.Add(new(w.DroppedRecords));
                }),
            new("bitnet.alerts", "{alert}", "bitnet_alerts_total", true, "Times each alert rule started firing.", m =>
            {
                if (_alerts() is { } a) foreach (var s in a.States) m.Add(new(s.TimesFired, new KeyValuePair<string, object?>("rule", s.Rule.Name)));
            }),
            // The rule's severity rides along so Prometheus can forward the server's own evaluation with it (the
            // BitNetServerRuleFiring rule in deploy/prometheus): the server counts "for" in samples, however sparse.
            new("bitnet.alerts.firing", "{alert}", "bitnet_alerts_firing", false, "1 while the alert rule is firing (severity: the rule's).", m =>
            {
                if (_alerts() is { } a)
                    foreach (var s in a.States)
                        m.Add(new(s.Firing ? 1 : 0, new KeyValuePair<string, object?>("rule", s.Rule.Name), new KeyValuePair<string, object?>("severity", s.Rule.Severity)));
            }),
            new("bitnet.alerts.webhook_failures", "{notification}", "bitnet_alerts_webhook_failures_total", true,
                "Alert notifications the --alert-webhook never took (refused or unreachable on every try, or pushed out of a full queue).", m =>
                {
                    if (_alerts() is { } a && a.HasWebhook) m.Add(new(a.WebhookFailures));
                }),
        ];
        foreach (var s in _signals)
            if (!SignalNames.Contains(s.PrometheusName))
                throw new InvalidOperationException($"HealthMeters.SignalNames lacks '{s.PrometheusName}'.");
        if (_signals.Length != SignalNames.Count) throw new InvalidOperationException("HealthMeters.SignalNames lists a signal the meters do not declare.");
        foreach (var s in _signals)
        {
            var signal = s;
            if (s.Counter) Meter.CreateObservableCounter(s.Instrument, () => Observe(signal), s.Unit, s.Description);
            else Meter.CreateObservableGauge(s.Instrument, () => Observe(signal), s.Unit, s.Description);
        }
    }

    public Meter Meter { get; }

    /// <summary>
    /// The Prometheus names of <see cref="Signals"/>, known before any scheduler exists (a server checks its alert
    /// rules against them before it loads the model); the constructor throws if the two ever disagree.
    /// </summary>
    /// <summary>Inter-token latencies the jitter gauge needs before it reports a spread.</summary>
    public const int MinJitterWindow = 32;

    public static IReadOnlyCollection<string> SignalNames { get; } = new HashSet<string>(StringComparer.Ordinal)
    {
        "bitnet_health_activation_saturation_ratio", "bitnet_health_activation_underflow_ratio", "bitnet_health_activation_crest_factor",
        "bitnet_health_residual_rms", "bitnet_health_residual_max_abs", "bitnet_health_residual_relative_change_ratio", "bitnet_health_residual_blowup",
        "bitnet_health_kv_error_ratio", "bitnet_health_logits_min", "bitnet_health_logits_max", "bitnet_health_logits_range", "bitnet_health_logits_entropy",
        "bitnet_health_nonfinite_sequences_total", "bitnet_health_samples_total", "bitnet_health_logit_samples_total", "bitnet_health_token_latency_stddev_seconds", "bitnet_health_repetition_ratio",
        "bitnet_weights_checksum_mismatches_total", "bitnet_weights_probe_mismatches_total", "bitnet_weights_verifications_total",
        "bitnet_weights_verified", "bitnet_weights_code_share_ratio", "bitnet_weights_degenerate_tensors", "bitnet_telemetry_dropped_rows_total",
        "bitnet_alerts_total", "bitnet_alerts_firing", "bitnet_alerts_webhook_failures_total",
    };

    /// <summary>
    /// The label names of the labelled signals (the rest carry none), for checking an alert rule's "match" at load; a
    /// test compares them with the series a running server collects.
    /// </summary>
    public static IReadOnlyDictionary<string, string[]> SignalLabels { get; } = new Dictionary<string, string[]>(StringComparer.Ordinal)
    {
        ["bitnet_health_activation_saturation_ratio"] = ["layer", "input", "bits"],
        ["bitnet_health_activation_underflow_ratio"] = ["layer", "input", "bits"],
        ["bitnet_health_activation_crest_factor"] = ["layer", "input"],
        ["bitnet_health_residual_rms"] = ["layer"],
        ["bitnet_health_residual_max_abs"] = ["layer"],
        ["bitnet_health_residual_relative_change_ratio"] = ["layer"],
        ["bitnet_health_residual_blowup"] = ["layer"],
        ["bitnet_health_kv_error_ratio"] = ["layer", "tensor"],
        ["bitnet_weights_code_share_ratio"] = ["layer", "projection", "code"],
        ["bitnet_alerts_total"] = ["rule"],
        ["bitnet_alerts_firing"] = ["rule", "severity"],
    };

    /// <summary>
    /// The signals measured on sampled steps only (their gauges hold the last sampled step): alert rules over them
    /// count "for" in new samples, told by bitnet_health_samples_total (<see cref="Alerts.AlertEngineOptions.SampledMetrics"/>).
    /// </summary>
    public static IReadOnlyCollection<string> SampledSignalNames { get; } = new HashSet<string>(StringComparer.Ordinal)
    {
        "bitnet_health_activation_saturation_ratio", "bitnet_health_activation_underflow_ratio", "bitnet_health_activation_crest_factor",
        "bitnet_health_residual_rms", "bitnet_health_residual_max_abs", "bitnet_health_residual_relative_change_ratio", "bitnet_health_residual_blowup",
        "bitnet_health_kv_error_ratio", "bitnet_health_logits_min", "bitnet_health_logits_max", "bitnet_health_logits_range", "bitnet_health_logits_entropy",
    };

    public IReadOnlyList<Signal> Signals => _signals;

    private static List<Measurement<double>> Observe(Signal s)
    {
        var list = new List<Measurement<double>>();
        s.Read(list);
        return list;
    }

    /// <summary>
    /// Adds every signal's current series to <paramref name="set"/> under its Prometheus name. All of them are read under
    /// the health collector's lock, so no sampled step is published in between: the samples counter (which gates the
    /// sampled rules' <c>for</c>) used to be read after the gauges, so a step published between the two paired the
    /// new count with the old values, and one bad sample counted twice.
    /// </summary>
    public void CollectSignals(SignalSet set) => _scheduler.Health.Read(_ =>
    {
        t_collectingForAlerts = true;
        try
        {
            CollectAll(set);
        }
        finally
        {
            t_collectingForAlerts = false;
        }
        return 0;
    });

    private void CollectAll(SignalSet set)
    {
        var list = new List<Measurement<double>>();
        foreach (var s in _signals)
        {
            list.Clear();
            s.Read(list);
            foreach (var m in list)
            {
                var tags = m.Tags;
                var labels = new string[tags.Length * 2];
                for (int i = 0; i < tags.Length; i++)
                {
                    labels[2 * i] = tags[i].Key;
                    labels[2 * i + 1] = Convert.ToString(tags[i].Value, CultureInfo.InvariantCulture) ?? "";
                }
                set.Add(s.PrometheusName, m.Value, labels);
            }
        }
    }

    private static KeyValuePair<string, object?> Layer(int l) => new("layer", l.ToString(CultureInfo.InvariantCulture));

    private void ReadSnapshot(List<Measurement<double>> m, Action<HealthSnapshot> read)
    {
        if (t_collection is { } one)
        {
            if (one.Samples > 0) read(one);
            return;
        }
        _scheduler.Health.Read(s =>
        {
            if (s.Samples > 0) read(s);
            return 0;
        });
    }

    [ThreadStatic] private static HealthSnapshot? t_collection;

    /// <summary>
    /// Runs <paramref name="collect"/> (a scrape's collection of the instruments) with every health signal reading one
    /// copy of the last sampled step. Each used to take the collector's lock on its own, so one scrape could pair a
    /// layer's blow-up flag with another step's relative change, and the samples counter with neither. A copy, not the
    /// lock held throughout: the alert gauges take the alert engine's lock, which the engine holds while it takes this one.
    /// </summary>
    public void OneSnapshot(Action collect)
    {
        var previous = t_collection;
        t_collection = _scheduler.Health.Read(s => s.Clone());
        try
        {
            collect();
        }
        finally
        {
            t_collection = previous;
        }
    }

    /// <param name="withBits">Adds the input's activation bits as a "bits" label (saturation and underflow shares mean other things at fewer bits).</param>
    private Signal PerInput(string name, string unit, string prom, string description, Func<HealthSnapshot, float[]> values, bool withBits = false) =>
        new(name, unit, prom, false, description, m => ReadSnapshot(m, s =>
        {
            var v = values(s);
            for (int l = 0; l < s.Layers; l++)
                for (int i = 0; i < HealthNames.InputCount; i++)
                {
                    int c = l * HealthNames.InputCount + i;
                    var input = new KeyValuePair<string, object?>("input", HealthNames.InputLabels[i]);
                    m.Add(withBits ? new(v[c], Layer(l), input, new KeyValuePair<string, object?>("bits", BitsLabels[s.Bits[c]])) : new(v[c], Layer(l), input));
                }
        }));

    private static readonly string[] BitsLabels = [.. Enumerable.Range(0, 9).Select(b => b.ToString(System.Globalization.CultureInfo.InvariantCulture))];

    private Signal PerLayer(string name, string unit, string prom, string description, Func<HealthSnapshot, float[]> values) =>
        new(name, unit, prom, false, description, m => ReadSnapshot(m, s =>
        {
            var v = values(s);
            for (int l = 0; l < s.Layers; l++) m.Add(new(v[l], Layer(l)));
        }));

    /// <summary>
    /// A logits gauge. A sampled step without logits rows (a prompt chunk alone) has none: /metrics keeps the value of the
    /// last published step that had them (<paramref name="last"/>; the series vanished there, which reset a Prometheus
    /// alert's <c>for</c> and resolved a firing one), while the in-process alert engine sees no value, so it does not
    /// count the old one again as a new sample. The carried value is the collector's, not the last one a reader saw:
    /// a step with logits that no scrape read before a prompt chunk replaced it showed the one before it.
    /// </summary>
    private Signal Logit(string name, string prom, string description, Func<HealthSnapshot, float> value, Func<HealthSnapshot, float> last) =>
        new(name, "{value}", prom, false, description, m => ReadSnapshot(m, s =>
        {
            if (s.LogitRows > 0) m.Add(new(value(s)));
            else if (!t_collectingForAlerts && !float.IsNaN(last(s))) m.Add(new(last(s)));
        }));

    [ThreadStatic] private static bool t_collectingForAlerts;

    public void Dispose() => Meter.Dispose();
}
