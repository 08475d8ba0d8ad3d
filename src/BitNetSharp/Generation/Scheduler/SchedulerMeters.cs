using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace BitNetSharp.Generation.Scheduler;

/// <summary>
/// A scheduler's <see cref="System.Diagnostics.Metrics"/> instruments. Gauges and counters are observable: they
/// read the engine's plain counters when a listener collects. Histograms get their measurements from the engine's
/// sample ring, drained by <see cref="Publish"/> (every second, and by an exporter right before it collects), so
/// a listener's callback never runs on the engine thread.
/// <para>Names are dotted OpenTelemetry style with UCUM units ("s", "By", "1", "{token}"); a Prometheus exporter
/// turns <c>bitnet.time_to_first_token</c> with unit "s" into <c>bitnet_time_to_first_token_seconds</c>.</para>
/// </summary>
public sealed class SchedulerMeters : IDisposable
{
    public const string MeterName = "BitNetSharp.Scheduler";

    private static readonly double[] LatencyBuckets =
        [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640];

    private static readonly double[] LengthBuckets = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072];

    private readonly ContinuousBatchScheduler _scheduler;
    private readonly MetricSampleRing _samples;
    private readonly Histogram<double>[] _histograms;
    private readonly Timer _timer;

    internal SchedulerMeters(ContinuousBatchScheduler scheduler, MetricSampleRing samples, long kvBytes)
    {
        _scheduler = scheduler;
        _samples = samples;
        Meter = new Meter(MeterName);
        var m = Meter;

        m.CreateObservableGauge("bitnet.requests.running", () => _scheduler.Statistics.RunningRequests, "{request}",
            "Requests with at least one sequence in the running batch.");
        m.CreateObservableGauge("bitnet.requests.waiting", () => _scheduler.Statistics.WaitingRequests, "{request}",
            "Requests submitted and not yet admitted, those that start at the next step included (a request arriving during a step waits for its end even with sequences free); bitnet_sequences_queued counts what waits for a busy sequence.");
        m.CreateObservableGauge("bitnet.sequences.waiting", () => _scheduler.Statistics.WaitingSequences, "{sequence}",
            "Sequences (choices) of the waiting requests, those free sequences take at the next step included (a request with n choices waits for n); bitnet_sequences_queued is what the queue limit counts.");
        m.CreateObservableGauge("bitnet.sequences.queued", () => _scheduler.Statistics.QueuedSequences, "{sequence}",
            "Waiting sequences beyond those the free sequences take at the next step: the queue use --max-queue limits.");
        m.CreateObservableGauge("bitnet.requests.max_queue", () => _scheduler.Options.MaxQueue, "{sequence}",
            "The most sequences that may wait beyond the free ones; a request that would pass it is refused with 429.");
        m.CreateObservableGauge("bitnet.sequences.running", () => _scheduler.Statistics.RunningSequences, "{sequence}",
            "Sequences (choices) in the running batch, each holding one KV-cache slot.");
        m.CreateObservableGauge("bitnet.sequences.max", () => _scheduler.Options.MaxSequences, "{sequence}",
            "KV-cache slots: the most sequences that can run at once.");
        m.CreateObservableGauge("bitnet.kv_cache.usage", () => _scheduler.Statistics.KvCacheUsage, "1",
            "Fraction of all KV-cache positions (slots × context) holding a token.");
        m.CreateObservableGauge("bitnet.kv_cache.size", () => kvBytes, "By", "Bytes allocated for the KV caches of all slots.");

        m.CreateObservableGauge("bitnet.engine.stall", () => _scheduler.Statistics.StallSeconds, "s",
            "Seconds the engine has had requests running or waiting without finishing a step (0 when idle or progressing): a hung forward pass grows it.");

        m.CreateObservableCounter("bitnet.prompt_tokens", () => _scheduler.Statistics.PromptTokens, "{token}",
            "Prompt tokens run through the model (each choice of a request prefills its own copy).");
        m.CreateObservableCounter("bitnet.generation_tokens", () => _scheduler.Statistics.GenerationTokens, "{token}",
            "Generated tokens, the stop token that ended a choice included (as usage.completion_tokens counts them).");
        m.CreateObservableCounter("bitnet.engine.steps", () => _scheduler.Statistics.Steps, "{step}",
            "Engine steps (forward passes over one batch) serving requests; the warm-up's are not counted.");
        m.CreateObservableCounter("bitnet.request.success", () =>
        {
            var s = _scheduler.Statistics;
            return new[]
            {
                new Measurement<long>(s.FinishedStop, new KeyValuePair<string, object?>("finish_reason", "stop")),
                new Measurement<long>(s.FinishedLength, new KeyValuePair<string, object?>("finish_reason", "length")),
            };
        }, "{sequence}", "Choices that finished normally, by finish reason (a request with n choices counts n times).");
        m.CreateObservableCounter("bitnet.requests.cancelled", () => _scheduler.Statistics.Cancelled, "{request}",
            "Requests cancelled before they finished (a client that went away).");
        m.CreateObservableCounter("bitnet.requests.timed_out", () => _scheduler.Statistics.TimedOut, "{request}",
            "Requests stopped by their timeout, waiting or running.");
        m.CreateObservableCounter("bitnet.requests.rejected", () => _scheduler.Statistics.Rejected, "{request}",
            "Requests refused because the waiting queue was full.");
        m.CreateObservableCounter("bitnet.requests.failed", () => _scheduler.Statistics.Failed, "{request}",
            "Requests ended by an engine or sampling error.");
        m.CreateObservableCounter("bitnet.speculative.steps", () => _scheduler.Statistics.SpeculativeSteps, "{step}",
            "Speculative decode steps: a sequence's next token fed with draft tokens, all verified in one forward (steps that found no draft are not counted, unlike the CLI's per-forward figure).");
        m.CreateObservableCounter("bitnet.speculative.drafted_tokens", () => _scheduler.Statistics.DraftedTokens, "{token}",
            "Draft tokens verified (prompt lookup): those up to the first rejection or stop; acceptance rate = accepted ÷ drafted.");
        m.CreateObservableCounter("bitnet.speculative.computed_draft_tokens", () => _scheduler.Statistics.ComputedDraftTokens, "{token}",
            "Draft tokens fed through the model, verified or not (those after a rejection or a stop are computed and thrown away): the forward work speculation spends; accepted ÷ computed is the share of it that paid.");
        m.CreateObservableCounter("bitnet.speculative.accepted_tokens", () => _scheduler.Statistics.AcceptedTokens, "{token}",
            "Draft tokens accepted by the model.");
        m.CreateObservableCounter("bitnet.speculative.emitted_tokens", () => _scheduler.Statistics.SpeculativeTokens, "{token}",
            "Tokens emitted by speculative steps (accepted drafts plus the model's own token); tokens per step = emitted ÷ steps.");

        m.CreateObservableCounter("bitnet.metric_samples.dropped", () => _samples.Dropped, "{sample}",
            "Histogram observations the engine dropped because nothing drained its sample ring (a starved thread pool): while it grows, the latency and length histograms undercount.");

        _histograms = new Histogram<double>[Enum.GetValues<MetricKind>().Length];
        Histogram(MetricKind.TimeToFirstToken, "bitnet.time_to_first_token", "s", "Time from submission to a request's first generated token.", LatencyBuckets);
        Histogram(MetricKind.InterTokenLatency, "bitnet.inter_token_latency", "s", "Time between consecutive deliveries of one sequence's tokens (tokens delivered in the same step, e.g. accepted drafts, count once).", LatencyBuckets);
        Histogram(MetricKind.EndToEndLatency, "bitnet.e2e_request_latency", "s", "Time from submission to a request's last token.", LatencyBuckets);
        Histogram(MetricKind.QueueTime, "bitnet.request.queue_time", "s", "Time a request waited for free sequences.", LatencyBuckets);
        Histogram(MetricKind.PromptLength, "bitnet.request.prompt_tokens", "{token}", "Prompt length of each admitted request.", LengthBuckets);
        Histogram(MetricKind.GenerationLength, "bitnet.request.generation_tokens", "{token}", "Tokens generated by each finished choice.", LengthBuckets);
        Histogram(MetricKind.StepTokens, "bitnet.engine.step_tokens", "{token}", "Tokens in each engine step (decode tokens plus prompt chunks).", LengthBuckets);
        Histogram(MetricKind.StepDuration, "bitnet.engine.step_duration", "s",
            "Time of each engine step's forward pass over its batch (sampling and delivery not included).", LatencyBuckets);

        _timer = new Timer(static s => ((SchedulerMeters)s!).Publish(), this, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1));
    }

    public Meter Meter { get; }

    /// <summary>Observations the engine dropped because nobody drained the ring for a long time.</summary>
    public long DroppedSamples => _samples.Dropped;

    private void Histogram(MetricKind kind, string name, string unit, string description, double[] buckets) =>
        _histograms[(int)kind] = Meter.CreateHistogram(name, unit, description, tags: null,
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = buckets });

    /// <summary>Records every observation the engine made since the last call into the histograms.</summary>
    public void Publish()
    {
        var sink = new HistogramSink(_histograms);
        _samples.Drain(ref sink);
    }

    private readonly struct HistogramSink(Histogram<double>[] histograms) : IMetricSink
    {
        public void Record(MetricSample sample) => histograms[(int)sample.Kind].Record(sample.Value);
    }

    internal static double Seconds(long ticks) => (double)ticks / Stopwatch.Frequency;

    public void Dispose()
    {
        _timer.Dispose();
        Meter.Dispose();
    }
}
