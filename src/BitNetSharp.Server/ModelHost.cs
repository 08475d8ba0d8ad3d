using System.Diagnostics;
using BitNetSharp.Generation.Scheduler;
using BitNetSharp.Monitoring;
using BitNetSharp.Monitoring.Alerts;
using BitNetSharp.Monitoring.Telemetry;
using BitNetSharp.Server.Api;
using BitNetSharp.Server.Metrics;
using BitNetSharp.Tokenization;
using Microsoft.Extensions.Logging;

namespace BitNetSharp.Server;

/// <summary>Where the served model is in its life: /health answers 503 until <see cref="Ready"/>.</summary>
public enum ModelState { Loading, WarmingUp, Ready, Failed }

/// <summary>The model as the routes see it once it is ready.</summary>
internal sealed record ServedModel(string Id, long Created, ContinuousBatchScheduler Scheduler, BitNetTokenizer? Tokenizer, ChatTemplate? Template, PrometheusTextExporter Exporter,
    ModelMonitor Monitor)
{
    public int ContextLength => Scheduler.ContextLength;
    public int VocabSize => Scheduler.Config.VocabSize;
}

/// <summary>
/// Loads the model on a background thread after the server is listening, runs the warm-up requests, then serves
/// it; owns the scheduler, the weights and the metrics exporter.
/// </summary>
internal sealed class ModelHost(ServerOptions options, ILogger logger) : IDisposable
{
    /// <summary>How long the engine may hold work without finishing a step before /health calls it stalled.</summary>
    public TimeSpan EngineStallAfter => options.Monitoring.EngineStallAfter;

    private readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private volatile int _state = (int)ModelState.Loading;
    private volatile ServedModel? _served;
    private LoadedModel? _loaded;
    private ModelMonitor? _monitor;
    private ProcessMeters? _process;
    private Thread? _thread;

    public ModelState State => (ModelState)_state;

    /// <summary>When this server started: /metrics (bitnet_server_start_time_seconds) and /health?verbose carry it.</summary>
    public DateTimeOffset Started { get; } = DateTimeOffset.UtcNow;

    public string? Error { get; private set; }

    /// <summary>Completes when the model is ready; faults when loading or warm-up failed.</summary>
    public Task Ready => _ready.Task;

    public ServedModel? Served => _served;

    private Uri? _address;

    /// <param name="address">The bound address: alerts name the replica by it (host and port), and link to its dashboard.</param>
    public void Start(Uri? address = null)
    {
        _address = address;
        _thread = new Thread(Load) { IsBackground = true, Name = "bitnet-model-load" };
        _thread.Start();
    }

    private void Load()
    {
        try
        {
            var sw = Stopwatch.StartNew();
            var loaded = options.LoadModel() ?? throw new InvalidOperationException("The model loader returned nothing.");
            lock (_lifecycle)
            {
                // Stopped while loading: Dispose did not wait for the load (a large model takes minutes, and SIGTERM to a
                // starting pod ran past the shutdown timeout); what was loaded is freed here.
                if (Volatile.Read(ref _disposed) != 0)
                {
                    loaded.Weights.Dispose();
                    Error = "The server stopped before the model was ready.";
                    _state = (int)ModelState.Failed;
                    _ready.TrySetCanceled();
                    return;
                }
                _loaded = loaded;
            }
            _state = (int)ModelState.WarmingUp;
            var scheduler = new ContinuousBatchScheduler(loaded.Weights, loaded.Tokenizer, options.Scheduler with { DefaultTimeout = options.RequestTimeout });
            string templateReason = "--template";
            var template = loaded.Tokenizer is null ? null : options.ChatTemplate ?? ChatTemplates.ForModel(loaded.Weights.Config.Architecture, loaded.Tokenizer, out templateReason);
            if (template != null) logger.LogInformation("Chat template {Template} ({Reason}).", template.Name, templateReason);
            var monitor = new ModelMonitor(loaded.Weights, loaded.Id, scheduler, options.Monitoring, logger, _address);
            _monitor = monitor;
            var process = new ProcessMeters(() => InFlight, Started, () => Refused, () => WriteTimeouts, () => State == ModelState.Ready, () => InternalErrors);
            _process = process;
            var served = new ServedModel(loaded.Id, DateTimeOffset.UtcNow.ToUnixTimeSeconds(), scheduler, loaded.Tokenizer, template,
                new PrometheusTextExporter([scheduler.Meters.Meter, monitor.Meters.Meter, process.Meter], scheduler.Meters.Publish, monitor.Meters.OneSnapshot), monitor);
            _served = served;
            logger.LogInformation("Loaded {Model} in {Seconds:F1} s; warming up.", loaded.Id, sw.Elapsed.TotalSeconds);
            // Warm-up is not served traffic: it counts in no counter or histogram (each rollout showed two phantom
            // requests and a time-to-first-token p99 of the JIT's seconds).
            scheduler.WarmingUp = true;
            Warmup(scheduler);
            scheduler.WarmingUp = false;
            // Warm-up's gaps include JIT compilation: left in the jitter window they could fire the latency alert on an
            // idle server that had not served anyone yet.
            scheduler.TokenLatency.Clear();
            monitor.Start();
            _state = (int)ModelState.Ready;
            _ready.TrySetResult();
        }
        catch (Exception e) when (Volatile.Read(ref _disposed) != 0)
        {
            // Stopped during warm-up: its requests ended with the engine; not a load failure.
            Error = "The server stopped before the model was ready.";
            _state = (int)ModelState.Failed;
            logger.LogInformation("Stopped before the model was ready ({Reason}).", e.Message);
            _ready.TrySetCanceled();
        }
        catch (Exception e)
        {
            Error = e.Message;
            _state = (int)ModelState.Failed;
            // A bad or unreadable model file is the user's to fix, said in one line; anything else keeps its stack trace.
            // (Non-finite logits in the warm-up are the model's numbers, said by the message: its stack trace told nothing;
            // so are KV caches past the machine's memory, whose message names --ctx and --max-seqs.)
            if (e is BitNetSharp.Formats.ModelFormatException or BitNetSharp.Formats.UnsuitableSettingException or InvalidDataException or IOException or UnauthorizedAccessException or NotSupportedException
                or BitNetSharp.Monitoring.NonFiniteLogitsException or InsufficientMemoryException)
                logger.LogError("Loading the model failed: {Message}", e.Message);
            else if (e is BitNetSharp.Monitoring.Alerts.AlertRulesException)
                logger.LogError("The alert rules do not fit the model: {Message}", e.Message);
            else logger.LogError(e, "Loading the model failed.");
            _ready.TrySetException(e);
        }
    }

    /// <summary>Short concurrent generations through the whole path (prefill, batched decode, sampling, detokenizing), so the JIT has compiled it before the first client.</summary>
    private void Warmup(ContinuousBatchScheduler scheduler)
    {
        int n = Math.Min(options.WarmupRequests, scheduler.Options.MaxSequences);
        int vocab = scheduler.Config.VocabSize;
        int promptLength = Math.Max(1, Math.Min(8, scheduler.ContextLength / 2));
        int maxTokens = Math.Max(1, Math.Min(8, scheduler.ContextLength - promptLength));
        var stop = _stop.Token;
        var handles = Enumerable.Range(0, n).Select(i => scheduler.Submit(new GenerationRequest
        {
            Prompt = Enumerable.Range(0, promptLength).Select(k => (k * 31 + i * 7) % vocab).ToArray(),
            MaxTokens = maxTokens,
            IgnoreStopTokens = true,
            // No deadline: --timeout is for clients' requests (a short one made every warm-up time out, and the server
            // refused to start, blaming the model); the stop token ends the warm-up at shutdown.
            Timeout = TimeSpan.MaxValue,
            // Named in the telemetry log: its steps (the JIT's first compilations among them) are not traffic.
            RequestId = BitNetSharp.Monitoring.Telemetry.TelemetryLogSchema.WarmupRequestIdPrefix + i.ToString(System.Globalization.CultureInfo.InvariantCulture),
        }, stop)).ToArray();
        foreach (var h in handles)
            Task.Run(async () => { await foreach (var _ in h.Events.ReadAllAsync(stop)) { } }, stop).GetAwaiter().GetResult();
        stop.ThrowIfCancellationRequested();
    }

    /// <summary>The served model, or a 503 (loading, warming up) or 500 (failed) for the client.</summary>
    public ServedModel RequireReady() => State switch
    {
        ModelState.Ready => _served!,
        ModelState.Failed => throw new ApiException(500, $"The model failed to load: {Error}", "server_error", code: "model_load_failed") { ShouldRetry = false },
        var s => throw new ApiException(503, s == ModelState.Loading ? "The model is still loading; retry in a moment." : "The model is warming up; retry in a moment.",
            "server_error", code: "model_loading") { RetryAfterSeconds = 1 },
    };

    private int _disposed;
    private volatile bool _draining;
    private int _inFlight;

    /// <summary>True once <see cref="BeginDrain"/> was called: /health says "draining" (503) and new generations get 503.</summary>
    public bool Draining => _draining;

    private long _refusedDraining, _refusedLoading;

    /// <summary>Generation requests refused with 503 while draining (shutting_down) and while loading or warming up (model_loading).</summary>
    public (long Draining, long Loading) Refused => (Interlocked.Read(ref _refusedDraining), Interlocked.Read(ref _refusedLoading));

    /// <summary>Generation requests being handled now (from routing to the last byte written).</summary>
    public int InFlight => Volatile.Read(ref _inFlight);

    private long _writeTimeouts, _internalErrors;

    /// <summary>Requests that met an unhandled error in the server's code (answered 500 internal_error, or aborted once begun).</summary>
    public long InternalErrors => Interlocked.Read(ref _internalErrors);

    /// <summary>Counts one request that met an unhandled error (logged by the caller).</summary>
    public void NoteInternalError() => Interlocked.Increment(ref _internalErrors);

    /// <summary>Connections closed because a write of the answer waited --write-timeout on a client that read nothing.</summary>
    public long WriteTimeouts => Interlocked.Read(ref _writeTimeouts);

    /// <summary>
    /// Counts and logs a connection closed by <see cref="Api.WriteStallWatch"/>: the engine may have finished the answer
    /// already (it runs ahead of the writer), so the request's outcome counters can read success for an answer the
    /// client never received; this one says so.
    /// </summary>
    /// <param name="answer">What was being written: "request ID" for a generation, else the method and path.</param>
    public void NoteWriteTimeout(string answer)
    {
        Interlocked.Increment(ref _writeTimeouts);
        logger.LogWarning("Closed the connection of {Answer}: its client read nothing for {Seconds:F0} s (--write-timeout) while the answer was being written.",
            answer, options.WriteStallTimeout.TotalSeconds);
    }

    /// <summary>How long a write of any answer may wait on a client that reads nothing (--write-timeout).</summary>
    public TimeSpan WriteStallTimeout => options.WriteStallTimeout;

    /// <summary>What an answer other than a generation's does when its write stalls: counted and logged by method and path.</summary>
    public Action WriteStalled(Microsoft.AspNetCore.Http.HttpContext context) => () => NoteWriteTimeout($"{context.Request.Method} {context.Request.Path}");

    public void BeginDrain() => _draining = true;

    /// <summary>
    /// Admits one generation request (pair with <see cref="ExitRequest"/> in a finally): the served model, or a 503 while
    /// loading, warming up or draining (so a balancer retries another replica).
    /// </summary>
    public ServedModel EnterRequest()
    {
        Interlocked.Increment(ref _inFlight);
        try
        {
            if (_draining)
            {
                Interlocked.Increment(ref _refusedDraining);
                throw new ApiException(503, "The server is shutting down; retry on another replica.", "server_error", code: "shutting_down") { RetryAfterSeconds = 1 };
            }
            if (State is ModelState.Loading or ModelState.WarmingUp) Interlocked.Increment(ref _refusedLoading);
            return RequireReady();
        }
        catch
        {
            Interlocked.Decrement(ref _inFlight);
            throw;
        }
    }

    public void ExitRequest() => Interlocked.Decrement(ref _inFlight);

    private readonly object _lifecycle = new();
    private readonly CancellationTokenSource _stop = new();

    /// <summary>
    /// Stops the engine (requests in flight end with <see cref="ObjectDisposedException"/>) and frees the model; safe to
    /// call twice. While the model is still loading it returns at once (the load thread frees the model when the loader
    /// returns); during warm-up it stops the engine first, so the warm-up requests end instead of running out.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _stop.Cancel();
        lock (_lifecycle)
            if (_loaded is null && _thread is { IsAlive: true }) return;
        _served?.Scheduler.Dispose();
        _thread?.Join();
        _served?.Exporter.Dispose();
        _process?.Dispose();
        _served?.Scheduler.Dispose();
        _monitor?.Dispose(); // after the engine, so its last telemetry records are written
        _loaded?.Weights.Dispose();
    }
}
