using System.Globalization;
using BitNetSharp.Generation.Scheduler;
using BitNetSharp.Model;
using BitNetSharp.Monitoring;
using BitNetSharp.Monitoring.Alerts;
using BitNetSharp.Monitoring.Telemetry;
using Microsoft.Extensions.Logging;

namespace BitNetSharp.Server;

/// <summary>
/// Everything that watches the served model: the load-time weight checksums (probed by the engine, re-checked by the
/// background verifier), the per-tensor code shares (computed once in the background), the health meters, the alert
/// engine over them and the serving signals, and the telemetry log.
/// </summary>
internal sealed class ModelMonitor : IDisposable
{
    private readonly ContinuousBatchScheduler _scheduler;
    private readonly MonitoringOptions _options;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stop = new();
    private volatile WeightCodeStats? _codes;
    private WeightVerifier? _verifier;
    private int _disposed;

    /// <summary>This replica in an alert's labels: the machine's name and the port it listens on.</summary>
    internal static string Instance(Uri? address) =>
        address is null ? Environment.MachineName : string.Create(CultureInfo.InvariantCulture, $"{Environment.MachineName}:{address.Port}");

    /// <summary>The dashboard's address for an alert's links (externalURL, generatorURL): a wildcard bind named by the machine.</summary>
    internal static string? Dashboard(Uri? address)
    {
        if (address is null) return null;
        string host = address.Host is "0.0.0.0" or "[::]" or "::" ? Environment.MachineName : address.Host;
        return string.Create(CultureInfo.InvariantCulture, $"{address.Scheme}://{(host.Contains(':') && !host.StartsWith('[') ? "[" + host + "]" : host)}:{address.Port}/dashboard");
    }

    /// <summary>
    /// The sampled gauges whose alert rules count "for" in new health samples (bitnet_health_samples_total): activation,
    /// residual and logit health. A rule on the logits alone waits on their own counter (<see cref="GatedCounts"/>).
    /// </summary>
    public static readonly IReadOnlyCollection<string> GatedSamples = HealthMeters.SampledSignalNames;

    private string? _lastEngineFailure;
    private long _lastEngineFailureAt;
    private int _repeatedEngineFailures;

    /// <summary>
    /// A failed engine step, logged, and written to the telemetry log as one engine_failed event per request it failed
    /// (with the request's id and trace id, as non-finite-logits events are, so `bitnet logs --request` finds it): its
    /// requests got HTTP 500 generation_failed (or an error event in a stream) and the log said nothing (a model file cut
    /// short failed every request silently but for the weights alert). The same error again within a minute is counted,
    /// not logged, so a server failing every step does not flood its log; the count is logged with the next line, or at
    /// the stop.
    /// </summary>
    private void EngineFailed(Exception e, IReadOnlyList<(string? RequestId, string? TraceId)> requests)
    {
        long time = TelemetryClock.UnixNanos();
        foreach (var (id, trace) in requests)
            _scheduler.Telemetry?.Write(new TelemetryEvent(time, "engine_failed", id, trace, e.Message));
        if (requests.Count == 0) _scheduler.Telemetry?.Write(new TelemetryEvent(time, "engine_failed", null, null, e.Message));
        long now = Environment.TickCount64;
        if (e.Message == _lastEngineFailure && now - _lastEngineFailureAt < 60_000)
        {
            _repeatedEngineFailures++;
            return;
        }
        LogRepeatedEngineFailures();
        (_lastEngineFailure, _lastEngineFailureAt) = (e.Message, now);
        _logger.LogError("An engine step failed; its {Count} request(s) failed with it (HTTP 500 generation_failed, or an error event in a stream): {Message}", requests.Count, e.Message);
    }

    /// <summary>Says how many more steps failed with the last logged error since it was logged (none: nothing).</summary>
    private void LogRepeatedEngineFailures()
    {
        if (_repeatedEngineFailures == 0 || _lastEngineFailure is null) return;
        _logger.LogError("{Count} more engine step(s) failed with the same error since it was last logged: {Message}", _repeatedEngineFailures, _lastEngineFailure);
        _repeatedEngineFailures = 0;
    }

    /// <summary>
    /// Gauges that change only with their own counter: the logits, only on sampled steps that had logits rows
    /// (bitnet_health_logit_samples_total, as deploy/prometheus counts them; a prompt chunk alone is sampled without
    /// logits and leaves them as they were, so counting all samples fired BitNetLogitRangeCollapse on one bad value
    /// followed by prompt-only steps, where Prometheus did not); the latency spread, as tokens are delivered (an idle
    /// server's last window cannot fire it).
    /// </summary>
    public static readonly IReadOnlyDictionary<string, string> GatedCounts = new Dictionary<string, string>(StringComparer.Ordinal)
    {
        ["bitnet_health_token_latency_stddev_seconds"] = "bitnet_generation_tokens_total",
        ["bitnet_health_logits_min"] = "bitnet_health_logit_samples_total",
        ["bitnet_health_logits_max"] = "bitnet_health_logit_samples_total",
        ["bitnet_health_logits_range"] = "bitnet_health_logit_samples_total",
        ["bitnet_health_logits_entropy"] = "bitnet_health_logit_samples_total",
    };

    /// <param name="address">The server's bound address, which names this replica in alerts (null: the machine's name alone).</param>
    public ModelMonitor(ModelWeights weights, string modelId, ContinuousBatchScheduler scheduler, MonitoringOptions options, ILogger logger, Uri? address = null)
    {
        _scheduler = scheduler;
        _options = options;
        _logger = logger;
        scheduler.EngineFailed += EngineFailed;
        if (options.Checksums)
        {
            var sw = System.Diagnostics.Stopwatch.StartNew();
            Integrity = new WeightIntegrity(weights);
            scheduler.Integrity = Integrity;
            Integrity.MismatchFound += names =>
            {
                logger.LogError("Weight integrity: {Tensors} changed since load.", string.Join(", ", names));
                scheduler.Telemetry?.Write(new TelemetryEvent(TelemetryClock.UnixNanos(), "weight_mismatch", null, null, $"changed since load: {string.Join(", ", names)}"));
            };
            logger.LogInformation("Weight checksums: {Tensors} tensors, {Bytes} bytes in {Seconds:F2} s; model checksum {Checksum}.",
                Integrity.Tensors.Count, Integrity.TotalBytes, sw.Elapsed.TotalSeconds, Integrity.ModelChecksumHex);
        }
        Meters = new HealthMeters(scheduler, () => Integrity, () => _codes, () => Alerts);
        var rules = options.AlertRules ?? AlertRules.Default;
        // Given rules only: the built-in ones read bits="8" and layers after 0 on purpose, and stay quiet on a model
        // without such inputs (a 4-bit or one-layer model failed its load on them).
        if (options.AlertRules is { } given)
            foreach (var warning in CheckRulesFitModel(given, options.AlertRulesFile ?? "alert rules", modelId, weights.Config.Layers,
                         weights.ActivationBits ?? ActivationBits.Uniform(weights.Config.Layers)))
                logger.LogWarning("{Warning}", warning);
        // A file of no rules replaces the built-in ones with nothing: said once, not left to be found in an incident.
        if (rules.Count == 0 && options.AlertRulesFile is { } empty)
            logger.LogWarning("Alert rules: {File} lists no rules, so no alert is evaluated (the built-in rules are replaced, not added to).", empty);
        if (rules.Count > 0)
        {
            Alerts = new AlertEngine(rules, CollectSignals, new AlertEngineOptions
            {
                Interval = options.AlertInterval,
                WebhookUrl = options.AlertWebhook,
                // instance tells replicas apart: without it two servers of one model sent the same fingerprint, and
                // a receiver that deduplicates on it let one replica's "resolved" clear the other's "firing". The machine's
                // name alone did not: two servers on one host (two ports) still shared it.
                Labels = new Dictionary<string, string> { ["model"] = modelId, ["instance"] = Instance(address) },
                ExternalUrl = Dashboard(address),
                Log = message => logger.LogWarning("{Alert}", message),
                KnownMetrics = AlertMetrics,
                KnownLabels = AlertLabels,
                SampledMetrics = GatedSamples,
                SampleCounter = "bitnet_health_samples_total",
                CountedMetrics = GatedCounts,
            });
            Alerts.Changed += a => scheduler.Telemetry?.Write(new TelemetryEvent(TelemetryClock.UnixNanos(), a.Firing ? "alert_firing" : "alert_resolved", null, null,
                a.Firing
                    ? string.Create(CultureInfo.InvariantCulture, $"{a.Rule.Name}: {a.Rule.Quantity} = {a.Value:G6}{(a.AtText is { Length: > 0 } at ? " at " + at : "")} {a.Rule.Op} {a.Rule.Threshold:G6}")
                    : string.Create(CultureInfo.InvariantCulture, $"{a.Rule.Name}: resolved{(a.Reason is { } why ? $" ({why})" : "")}; {a.Rule.Quantity} = {a.Value:G6}{(a.AtText is { Length: > 0 } at2 ? " at " + at2 : "")}")));
        }
        if (options.TelemetryLog is { } open)
        {
            var context = new Dictionary<string, string>(TelemetryContext.Create(out var warnings, Kernels.KernelRegistry.ForModel(weights.TernaryBytes, weights.Config.Dim).Name, scheduler.Threads, modelId,
                Integrity?.ModelChecksumHex, ProjectionType(weights), scheduler.Options.KvType.Name(),
                (weights.ActivationBits ?? Model.ActivationBits.Uniform(weights.Config.Layers)).ToString()))
            {
                ["model.path"] = weights.SourcePath,
                ["health.sample_every"] = scheduler.Options.HealthSampleEvery.ToString(CultureInfo.InvariantCulture),
            };
            foreach (var w in warnings) logger.LogWarning("BITNET_LOG_CONTEXT: {Warning}", w);
            scheduler.Telemetry = open(context);
            // A log that cannot be written (a full disk, a directory taken away) drops rows on its own thread: say so.
            if (scheduler.Telemetry is TelemetryLogWriter log)
                log.FailureChanged += e =>
                {
                    if (e is null) logger.LogWarning("telemetry log: writing again ({Rows} rows dropped so far)", log.DroppedRecords);
                    else logger.LogWarning("telemetry log: rows are being dropped, {Error} (bitnet_telemetry_dropped_rows_total counts them)", e.Message);
                };
            if (scheduler.Telemetry is TelemetryLogWriter writer)
                writer.FileLost += path => logger.LogWarning("telemetry log: {Path} was removed or replaced while being written; going on in a new file (the rows written to it are gone with it)", path);
        }
        // Unpacking every tensor takes seconds on a 2B model: off the load path. Dispose waits for it, since the weights
        // are unmapped right after (it kept reading them: a crash at shutdown).
        CodeStats = Task.Run(() =>
        {
            try
            {
                _codes = WeightCodeStats.Compute(weights, _stop.Token);
                if (_codes.Degenerate > 0) logger.LogWarning("{Count} packed projections have no -1 or no +1 codes: check the model's conversion.", _codes.Degenerate);
            }
            catch (OperationCanceledException)
            {
            }
            catch (Exception e)
            {
                logger.LogWarning("weight code statistics failed: {Error}", e.Message);
            }
        });
    }

    public WeightIntegrity? Integrity { get; }

    /// <summary>The background count of each projection's ternary codes; complete once <see cref="Dispose"/> returns.</summary>
    internal Task CodeStats { get; }

    /// <summary>The GGUF type of the first packed projection ("i2_s", "tq2_0", …), or the source kind for an HF directory.</summary>
    private static string ProjectionType(ModelWeights weights)
    {
        if (weights.Gguf is { } g && g.TryGetTensor("blk.0.attn_q.weight", out var t)) return Formats.Gguf.GgmlTypeInfo.Name(t.Type);
        return weights.HfDirectory is not null ? "safetensors" : "unknown";
    }

    public HealthMeters Meters { get; }

    public AlertEngine? Alerts { get; }

    public WeightCodeStats? Codes => _codes;

    public TimeSpan? VerifyInterval => _options.VerifyWeightsInterval;

    /// <summary>Starts the verifier and the alert timer (after warm-up, so warm-up's own tokens set no latency alerts).</summary>
    public void Start()
    {
        if (Integrity is not null && _options.VerifyWeightsInterval is { } every) _verifier = new WeightVerifier(Integrity, every);
        Alerts?.Start();
    }

    /// <summary>
    /// The serving signals alert rules may name, under the names /metrics exports them by (the scheduler's meters):
    /// its gauges and counters. Histograms (time to first token, step duration, …) are not signals: a rule compares
    /// one number, and the health set carries the token-latency spread.
    /// </summary>
    private static readonly (string Name, Func<SchedulerStatistics, SchedulerOptions, double> Read)[] Serving =
    [
        ("bitnet_requests_waiting", (s, _) => s.WaitingRequests),
        ("bitnet_sequences_waiting", (s, _) => s.WaitingSequences),
        ("bitnet_sequences_queued", (s, _) => s.QueuedSequences),
        ("bitnet_requests_running", (s, _) => s.RunningRequests),
        ("bitnet_requests_max_queue", (_, o) => o.MaxQueue),
        ("bitnet_sequences_running", (s, _) => s.RunningSequences),
        ("bitnet_sequences_max", (_, o) => o.MaxSequences),
        ("bitnet_kv_cache_usage_ratio", (s, _) => s.KvCacheUsage),
        ("bitnet_prompt_tokens_total", (s, _) => s.PromptTokens),
        ("bitnet_generation_tokens_total", (s, _) => s.GenerationTokens),
        ("bitnet_engine_steps_total", (s, _) => s.Steps),
        ("bitnet_engine_stall_seconds", (s, _) => s.StallSeconds),
        ("bitnet_requests_cancelled_total", (s, _) => s.Cancelled),
        ("bitnet_requests_timed_out_total", (s, _) => s.TimedOut),
        ("bitnet_requests_rejected_total", (s, _) => s.Rejected),
        ("bitnet_requests_failed_total", (s, _) => s.Failed),
        ("bitnet_speculative_steps_total", (s, _) => s.SpeculativeSteps),
        ("bitnet_speculative_drafted_tokens_total", (s, _) => s.DraftedTokens),
        ("bitnet_speculative_accepted_tokens_total", (s, _) => s.AcceptedTokens),
        ("bitnet_speculative_computed_draft_tokens_total", (s, _) => s.ComputedDraftTokens),
        ("bitnet_speculative_emitted_tokens_total", (s, _) => s.SpeculativeTokens),
    ];

    private const string Success = "bitnet_request_success_total";

    /// <summary>Every metric an alert rule on a server may name: the health signals and the serving ones.</summary>
    public static IReadOnlyCollection<string> AlertMetrics { get; } = BuildAlertMetrics();

    /// <summary>
    /// How given rules fit this model (the rule file is read before the model is known). A layer the model lacks
    /// ("layer": "99") fails the load, as /health's error: the rule is wrong for any model of this depth. What may be
    /// meant for other models a shared rule file also serves — a bits width none of this model's inputs runs at
    /// ("bits": "4" on an 8-bit model), a negation that excludes nothing ("!99") or keeps nothing (a one-layer model's
    /// "!0") — is returned as warnings, which the server logs: such rules loaded without a word and could never fire here.
    /// </summary>
    internal static List<string> CheckRulesFitModel(IReadOnlyList<AlertRule> rules, string file, string modelId, int layers, ActivationBits bits)
    {
        var warnings = new List<string>();
        var widths = new SortedSet<int>();
        for (int l = 0; l < bits.Layers; l++)
            for (int i = 0; i < ActivationBits.Inputs; i++) widths.Add(bits[l, (BitLinearInput)i]);
        string have = string.Join(", ", widths);
        foreach (var rule in rules)
        {
            if (rule.Match is not { } match) continue;
            if (match.TryGetValue("layer", out var layerText))
            {
                bool not = layerText.StartsWith('!');
                if (int.TryParse(not ? layerText[1..] : layerText, NumberStyles.None, CultureInfo.InvariantCulture, out int layer))
                {
                    string span = $"{modelId} has {layers} layers (0 to {layers - 1})";
                    if (!not && layer >= layers)
                        throw new AlertRulesException($"{file}: rule '{rule.Name}' matches layer {layer}, but {span}: it could never fire. Fix the rule or drop its layer match.");
                    if (not && layer >= layers)
                        warnings.Add($"{file}: rule '{rule.Name}' matches \"!{layer}\" (every layer but {layer}), but {span}: the match excludes nothing here.");
                    else if (not && layers == 1)
                        warnings.Add($"{file}: rule '{rule.Name}' matches \"!{layer}\" (every layer but {layer}), but {span}: it cannot fire on this model.");
                }
            }
            if (match.TryGetValue("bits", out var bitsText))
            {
                bool not = bitsText.StartsWith('!');
                if (int.TryParse(not ? bitsText[1..] : bitsText, NumberStyles.None, CultureInfo.InvariantCulture, out int b))
                {
                    string runs = $"{modelId}'s inputs run at {have} bits (its activation bits)";
                    if (!not && !widths.Contains(b))
                        warnings.Add($"{file}: rule '{rule.Name}' matches bits {b}, but {runs}: it cannot fire on this model.");
                    else if (not && !widths.Contains(b))
                        warnings.Add($"{file}: rule '{rule.Name}' matches \"!{b}\" (every width but {b}), but {runs}: the match excludes nothing here.");
                    else if (not && widths.Count == 1)
                        warnings.Add($"{file}: rule '{rule.Name}' matches \"!{b}\" (every width but {b}), but {runs}: it cannot fire on this model.");
                }
            }
        }
        return warnings;
    }

    /// <summary>The label names of <see cref="AlertMetrics"/> that carry labels (the rest carry none).</summary>
    public static IReadOnlyDictionary<string, string[]> AlertLabels { get; } =
        new Dictionary<string, string[]>(HealthMeters.SignalLabels, StringComparer.Ordinal) { [Success] = ["finish_reason"] };

    private static HashSet<string> BuildAlertMetrics()
    {
        var names = new HashSet<string>(HealthMeters.SignalNames, StringComparer.Ordinal) { Success };
        foreach (var (name, _) in Serving) names.Add(name);
        return names;
    }

    /// <summary>The health signals plus the serving ones the rules may name.</summary>
    public void CollectSignals(SignalSet set)
    {
        // The counts before the gauges: a token is added to the latency window before it is counted, so read in this
        // order a token delivered in between shows in the next evaluation's count too. Read after, it paired the new count
        // with the old spread, and the jitter rule (evaluated only when the count moves) kept that stale spread while idle.
        var s = _scheduler.Statistics;
        Meters.CollectSignals(set);
        foreach (var (name, read) in Serving) set.Add(name, read(s, _scheduler.Options));
        set.Add(Success, s.FinishedStop, "finish_reason", "stop");
        set.Add(Success, s.FinishedLength, "finish_reason", "length");
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _scheduler.EngineFailed -= EngineFailed;
        LogRepeatedEngineFailures();
        _stop.Cancel();
        // It checks the token between tensors: at most one tensor's count to wait for.
        CodeStats.Wait(TimeSpan.FromMinutes(1));
        _verifier?.Dispose();
        Alerts?.Dispose();
        Meters.Dispose();
        (_scheduler.Telemetry as IDisposable)?.Dispose();
    }
}
