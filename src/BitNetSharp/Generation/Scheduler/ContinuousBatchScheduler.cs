using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.InteropServices;
using BitNetSharp.Generation.Sampling;
using BitNetSharp.Generation.Speculative;
using BitNetSharp.Model;
using BitNetSharp.Monitoring;
using BitNetSharp.Monitoring.Telemetry;
using BitNetSharp.Threading;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Generation.Scheduler;

/// <summary>
/// Continuous batching over one <see cref="Transformer"/>: many requests share each forward pass, joining and
/// leaving the batch between steps.
/// <para>
/// One dedicated engine thread loops: take new submissions and cancellations; drop cancelled and timed-out
/// requests (their KV-cache slots are free for this very step); admit waiting requests, oldest first, while
/// there are free slots for all of a request's choices; build one batch — every running sequence's next token
/// first (decode), then prompt chunks of the sequences still prefilling, oldest first, up to
/// <see cref="SchedulerOptions.MaxBatchedTokens"/> (chunked prefill) — run it, and sample one token for each
/// sequence that got a logits row. Every kernel works per token, so a sequence's tokens do not depend on what
/// else shares its batch: batched greedy output equals the output alone, bit for bit.
/// </para>
/// <para>
/// KV caches: a pool of <see cref="SchedulerOptions.MaxSequences"/> caches of the full context, allocated at start.
/// The memory bound is then known when the server starts rather than found mid-request, and admitting a request
/// allocates no cache; pages are committed by the OS as positions are first written, so a slot that never held
/// a long sequence costs little resident memory.
/// </para>
/// </summary>
public sealed class ContinuousBatchScheduler : IDisposable
{
    private readonly ModelConfig _config;
    private readonly BitNetTokenizer? _tokenizer;
    private readonly WorkerPool _pool;
    private readonly bool _ownsPool;
    private readonly Transformer _engine;

    /// <summary>The activation bit widths the engine quantizes at (the model file's, or --activation-bits).</summary>
    public Model.ActivationBits ActivationBits => _engine.ActivationBits;
    private readonly KvCache[] _caches;           // (MaxSequences) one per slot
    private readonly SamplerBuffers?[] _samplerBuffers; // (MaxSequences) the sampler scratch of each slot's sequence, made at first use
    private readonly Stack<int> _freeSlots;
    private readonly float[] _logits;             // (MaxSequences, vocab): at most one row per sequence per step
    private readonly BatchToken[] _batch;         // (MaxBatchedTokens)
    private readonly Sequence?[] _rowOwner;       // first logits row of a sequence's group → the sequence
    private readonly List<Sequence> _running = [];           // admission order; engine thread only
    private readonly List<GenerationHandle> _runningRequests = [];
    private readonly List<GenerationHandle> _waiting = [];   // FIFO; engine thread only
    private readonly ConcurrentQueue<GenerationHandle> _inbox = new();
    private readonly ManualResetEventSlim _wake = new(false);
    // The counters readers see (Statistics, /metrics) and the engine thread's current target: the same object, except
    // while WarmingUp, when the engine counts into a throwaway one (switched at the top of a step, on the engine thread,
    // so no step is split between them).
    private readonly SchedulerCounters _served = new();
    private readonly SchedulerCounters _uncounted = new();
    private SchedulerCounters _counters;
    private volatile bool _warmingUp;
    private readonly MetricSampleRing _samples = new(1 << 16);
    private readonly Thread _thread;
    private volatile bool _stopping;
    private int _queued;      // submitted, not yet admitted or dropped
    private int _queuedSequences; // the choices of those requests: what the queue limit counts
    private long _nextId;
    private volatile bool _disposed;

    private readonly ModelWeights _weights;

    /// <summary>
    /// Raised on the engine thread when a step fails (the forward pass or the engine's own code), with the requests it
    /// fails (their ids and trace ids), before they hear of it: they end with the error, and nothing else said so (the
    /// server logs it; a model file cut short under it failed every request with HTTP 500 and no log line). Handlers
    /// must not block.
    /// </summary>
    public event Action<Exception, IReadOnlyList<(string? RequestId, string? TraceId)>>? EngineFailed;

    private void RaiseEngineFailed(Exception e, IEnumerable<GenerationHandle> failing)
    {
        if (EngineFailed is null) return;
        try
        {
            var ids = new List<(string?, string?)>();
            foreach (var h in failing) ids.Add((h.Request.RequestId, h.Request.TraceId));
            EngineFailed?.Invoke(e, ids);
        }
        catch (Exception)
        {
            // A handler's own failure must not end the engine thread.
        }
    }

    /// <summary>
    /// Why the model can no longer be read, or null: a file it is mapped from was cut short under the server (see
    /// <see cref="Formats.ModelFileChangedException"/>). Every step fails then; /health answers 503 with this.
    /// </summary>
    public string? ModelFileProblem()
    {
        try
        {
            _weights.CheckFilesNotTruncated();
            return null;
        }
        catch (Formats.ModelFileChangedException e)
        {
            return e.Message;
        }
        catch (ObjectDisposedException)
        {
            return null;
        }
    }

    public ContinuousBatchScheduler(ModelWeights weights, BitNetTokenizer? tokenizer, SchedulerOptions? options = null, WorkerPool? pool = null)
    {
        _counters = _served;
        ArgumentNullException.ThrowIfNull(weights);
        options ??= new SchedulerOptions();
        options.Validate();
        Options = options;
        _config = weights.Config;
        _weights = weights;
        _tokenizer = tokenizer;
        ContextLength = options.ContextLength > 0 ? Math.Min(options.ContextLength, _config.ContextLength) : _config.ContextLength;
        _pool = pool ?? new WorkerPool(options.Threads);
        _ownsPool = pool is null;
        try
        {
            _engine = new Transformer(weights, options.MaxBatchedTokens, _pool);
            Health = new ModelHealthCollector(_config, options.MaxBatchedTokens) { SampleEvery = options.HealthSampleEvery };
            _engine.Health = Health;
            // All of them at once: each alone may fit where together they do not (their pages are committed as they fill).
            KvCache.EnsureFits(_config.Layers, _config.KvHeads, _config.HeadDim, ContextLength, options.KvType, options.MaxSequences);
            _caches = new KvCache[options.MaxSequences];
            for (int i = 0; i < _caches.Length; i++)
                _caches[i] = new KvCache(_config.Layers, _config.KvHeads, _config.HeadDim, ContextLength, options.KvType);
        }
        catch
        {
            foreach (var c in _caches ?? []) c?.Dispose();
            _engine?.Dispose();
            if (_ownsPool) _pool.Dispose();
            throw;
        }
        _freeSlots = new Stack<int>(Enumerable.Range(0, options.MaxSequences).Reverse());
        _samplerBuffers = new SamplerBuffers?[options.MaxSequences];
        // A speculating sequence wants a logits row for its next token and each of its drafts.
        int rowsPerSequence = 1 + (options.Speculation?.DraftTokens ?? 0);
        int maxRows = (int)Math.Min((long)options.MaxSequences * rowsPerSequence, options.MaxBatchedTokens);
        _logits = new float[(long)Math.Max(maxRows, options.MaxSequences) * _config.VocabSize];
        _batch = new BatchToken[options.MaxBatchedTokens];
        _rowOwner = new Sequence?[Math.Max(maxRows, options.MaxSequences)];
        KvCacheBytes = _caches.Sum(c => c.ByteLength);
        Health.Published += WriteLayers;
        Meters = new SchedulerMeters(this, _samples, KvCacheBytes);
        _thread = new Thread(Loop) { IsBackground = true, Name = "bitnet-engine" };
        _thread.Start();
    }

    public SchedulerOptions Options { get; }

    public ModelConfig Config => _config;

    public BitNetTokenizer? Tokenizer => _tokenizer;

    /// <summary>Positions per sequence: a prompt plus its max tokens must fit.</summary>
    public int ContextLength { get; }

    public int Threads => _pool.ThreadCount;

    /// <summary>Bytes allocated for all slots' KV caches.</summary>
    public long KvCacheBytes { get; }

    public SchedulerMeters Meters { get; }

    /// <summary>The forward pass's numerical-health collector (sampling rate: <see cref="SchedulerOptions.HealthSampleEvery"/>).</summary>
    public ModelHealthCollector Health { get; }

    /// <summary>Recent inter-token latencies, for their standard deviation.</summary>
    public LatencyWindow TokenLatency { get; } = new();

    /// <summary>
    /// The largest <see cref="RepetitionTracker.Share"/> among the running sequences as of the last step: near 1 while a
    /// sequence loops, 0 when none has generated <see cref="RepetitionTracker.MinTokens"/> tokens (an idle server loops
    /// nowhere: a NaN here left the gauge, and a rule on it, at the last loop's value after that loop ended).
    /// </summary>
    public double RepetitionShare => Volatile.Read(ref _repetition);

    private double _repetition;

    /// <summary>When set (before requests arrive), the engine probes the weights every <see cref="SchedulerOptions.WeightProbeEvery"/> steps.</summary>
    public WeightIntegrity? Integrity { get; set; }

    /// <summary>When set, sampled steps and events are written here (from the engine thread).</summary>
    public ITelemetrySink? Telemetry { get; set; }

    /// <summary>Test hook: runs on the engine thread before each forward pass (fault drills inject latency here).</summary>
    internal Action? BeforeForward { get; set; }

    /// <summary>Tests close it to hold the engine between steps, making queue states deterministic.</summary>
    internal ManualResetEventSlim StepGate { get; } = new(true);

    private bool _atGate;

    /// <summary>
    /// Tests: closes <see cref="StepGate"/> and returns once the engine waits at it, so nothing submitted afterwards is
    /// admitted before <c>StepGate.Set()</c> (a Reset alone let an engine already past the gate take one more step).
    /// </summary>
    internal bool HoldAtGate(TimeSpan timeout)
    {
        StepGate.Reset();
        // Woken until it is there: an engine that passed the gate just before the Reset takes one more step, and an
        // idle one waits for work.
        return SpinWait.SpinUntil(() =>
        {
            if (Volatile.Read(ref _atGate)) return true;
            _wake.Set();
            Thread.Sleep(1);
            return false;
        }, timeout);
    }

    /// <summary>Tests: runs as each choice is admitted (its argument), so a throw shows what a failed admission leaves.</summary>
    internal Action<int>? AdmissionFault { get; set; }

    public SchedulerStatistics Statistics
    {
        get
        {
            var c = _served;
            return new SchedulerStatistics(
                Volatile.Read(ref c.RunningRequests), Volatile.Read(ref _queued), Volatile.Read(ref c.RunningSequences), Options.MaxSequences,
                Volatile.Read(ref c.KvPositionsInUse), (long)Options.MaxSequences * ContextLength,
                Volatile.Read(ref c.PromptTokens), Volatile.Read(ref c.GenerationTokens), Volatile.Read(ref c.Steps), Volatile.Read(ref c.StepTokens),
                Volatile.Read(ref c.FinishedStop), Volatile.Read(ref c.FinishedLength), Volatile.Read(ref c.Cancelled), Volatile.Read(ref c.TimedOut),
                Volatile.Read(ref c.Failed), Volatile.Read(ref c.Rejected), Volatile.Read(ref c.NonFiniteSequences),
                Volatile.Read(ref c.SpeculativeSteps), Volatile.Read(ref c.DraftedTokens), Volatile.Read(ref c.AcceptedTokens), Volatile.Read(ref c.SpeculativeTokens),
                Volatile.Read(ref _queuedSequences), StallSeconds(), Volatile.Read(ref c.ComputedDraftTokens));
        }
    }

    /// <summary>
    /// Seconds the engine has had work (requests running or waiting) without finishing a step: since its last step, or
    /// since work arrived at an idle scheduler, whichever is later; 0 when nothing is running or waiting. A forward that
    /// hangs (a deadlock, a stalled worker) leaves requests running and steps frozen, and grows this without bound;
    /// nothing else showed it (/health answered ok, and request timeouts are reaped by the engine thread itself).
    /// </summary>
    private double StallSeconds()
    {
        if (Volatile.Read(ref _served.RunningRequests) + Volatile.Read(ref _queued) <= 0) return 0;
        long since = Math.Max(Volatile.Read(ref _served.LastStepTicks), Volatile.Read(ref _served.BusySinceTicks));
        return since == 0 ? 0 : Math.Max(0, (Stopwatch.GetTimestamp() - since) / (double)Stopwatch.Frequency);
    }

    /// <summary>
    /// Queues <paramref name="request"/> and returns at once; its events arrive on the handle's channel.
    /// Cancelling <paramref name="cancellation"/> is <see cref="GenerationHandle.Cancel"/>.
    /// </summary>
    /// <exception cref="ArgumentException">The request cannot run here (empty prompt, an id outside the vocabulary, past the context, too many choices, bad sampling settings).</exception>
    /// <exception cref="SchedulerQueueFullException">The request's choices would put more than MaxQueue sequences waiting beyond what the free sequences can take.</exception>
    public GenerationHandle Submit(GenerationRequest request, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        ObjectDisposedException.ThrowIf(_disposed, this);
        request = Snapshot(request);
        Check(request);
        // Every request passes through the queue, free sequences or not (the engine admits between steps), so the
        // limit counts only the requests that the free sequences (as of the last step) cannot take: with MaxQueue 0 a
        // request is refused only when every sequence is busy, and a burst into an idle server is not refused.
        // A request waits for all its choices at once, so the limit counts sequences: n requests of n = 8 each wait
        // for 64 sequences, not 8 (counting requests let such a burst overrun MaxQueue eightfold).
        int free = Math.Max(0, Options.MaxSequences - Volatile.Read(ref _served.RunningSequences));
        if (Interlocked.Add(ref _queuedSequences, request.Choices) > Options.MaxQueue + free)
        {
            Interlocked.Add(ref _queuedSequences, -request.Choices);
            Interlocked.Increment(ref _served.Rejected);
            throw new SchedulerQueueFullException(Options.MaxQueue);
        }
        long now = Stopwatch.GetTimestamp();
        // Work arriving at an idle scheduler starts the stall clock (StallSeconds); a busy one's runs from its last step.
        if (Interlocked.Increment(ref _queued) == 1 && Volatile.Read(ref _served.RunningRequests) == 0) SchedulerCounters.Set(ref _served.BusySinceTicks, now);
        var timeout = request.Timeout ?? Options.DefaultTimeout;
        long deadline = timeout is { } t ? now + (long)Math.Min(t.TotalSeconds * Stopwatch.Frequency, long.MaxValue / 4) : long.MaxValue;
        var handle = new GenerationHandle(this, Interlocked.Increment(ref _nextId), request, now, deadline);
        handle.Register(cancellation);
        _inbox.Enqueue(handle);
        Wake();
        // Disposed between the check above and the enqueue: the engine will never see it.
        if (_disposed) DrainInboxAfterStop();
        return handle;
    }

    /// <summary>
    /// The request with its own copies of the collections it holds: the engine reads them later, on its thread, and a
    /// caller that changed a list or the logit-bias map after Submit (checked here, read at admission) hung its request
    /// and failed every running one; a prompt cleared after admission held its sequence for ever.
    /// </summary>
    private static GenerationRequest Snapshot(GenerationRequest r)
    {
        ArgumentNullException.ThrowIfNull(r.Prompt, nameof(r.Prompt));
        ArgumentNullException.ThrowIfNull(r.Sampling, nameof(r.Sampling));
        return r with
        {
            Prompt = r.Prompt.ToArray(),
            StopStrings = r.StopStrings?.ToArray(),
            StopTokenIds = r.StopTokenIds?.ToArray(),
            Sampling = r.Sampling.LogitBias is { } bias ? r.Sampling with { LogitBias = new Dictionary<int, float>(bias) } : r.Sampling,
        };
    }

    private void Check(GenerationRequest r)
    {
        ArgumentNullException.ThrowIfNull(r.Prompt, nameof(r.Prompt));
        if (r.Prompt.Count == 0) throw new ArgumentException("The prompt is empty: give at least one token.", nameof(r.Prompt));
        foreach (int id in r.Prompt)
            if ((uint)id >= (uint)_config.VocabSize)
                throw new ArgumentException($"Token id {id} is outside the vocabulary of {_config.VocabSize} tokens.", nameof(r.Prompt));
        if (r.MaxTokens < 1) throw new ArgumentException($"MaxTokens must be ≥ 1; got {r.MaxTokens}.", nameof(r.MaxTokens));
        if ((long)r.Prompt.Count + r.MaxTokens > ContextLength)
            throw new ArgumentException(
                $"The prompt ({r.Prompt.Count} tokens) plus up to {r.MaxTokens} new tokens exceeds the context of {ContextLength} tokens.", nameof(r.MaxTokens));
        if (r.Choices < 1 || r.Choices > Options.MaxSequences)
            throw new ArgumentException($"Choices must be between 1 and {Options.MaxSequences} (the sequences that can run at once); got {r.Choices}.", nameof(r.Choices));
        ArgumentNullException.ThrowIfNull(r.Sampling, nameof(r.Sampling));
        r.Sampling.Validate(_config.VocabSize);
        if (r.Timeout is { } t && t <= TimeSpan.Zero) throw new ArgumentException($"The timeout must be positive; got {t}.", nameof(r.Timeout));
        if (r.StopStrings is not null)
            foreach (var s in r.StopStrings)
                if (string.IsNullOrEmpty(s)) throw new ArgumentException("A stop string is empty.", nameof(r.StopStrings));
    }

    internal void Wake() => _wake.Set();

    /// <summary>
    /// While true the engine's work counts in no statistic, counter or histogram: a server's warm-up requests (their
    /// latencies are JIT compilation) were counted as served traffic, so every rollout showed phantom requests and a
    /// time-to-first-token spike. Set it before submitting the warm-up and clear it once its requests have ended; the
    /// engine switches at the top of its next step, so no step is split between the two. The health collector still
    /// samples those steps: they are real forwards of the model, and a model that is broken shows it before it serves.
    /// </summary>
    public bool WarmingUp
    {
        get => _warmingUp;
        set
        {
            _warmingUp = value;
            _wake.Set();
        }
    }

    private void Observe(MetricKind kind, double value)
    {
        if (ReferenceEquals(_counters, _served)) _samples.Write(kind, value);
    }

    // ---- The engine thread ------------------------------------------------------------------------------------

    private void Loop()
    {
        while (!_stopping)
        {
            try
            {
                RunStep();
            }
            catch (Exception e)
            {
                // A bug outside the forward pass and sampling: fail what is running rather than the process.
                var failing = _runningRequests.ToArray();
                RaiseEngineFailed(e, failing);
                foreach (var r in failing) Fail(r, new InvalidOperationException($"The engine failed: {e.Message}", e), ref _counters.Failed);
                _running.RemoveAll(static s => s.Finished);
            }
        }
        var stopped = new ObjectDisposedException(nameof(ContinuousBatchScheduler), "The server is shutting down.");
        foreach (var r in _runningRequests.ToArray()) Fail(r, stopped, ref _counters.Failed);
        while (_inbox.TryDequeue(out var h)) _waiting.Add(h);
        foreach (var r in _waiting.ToArray()) Fail(r, stopped, ref _counters.Failed);
    }

    /// <summary>
    /// Requests that ended during the current step, closed at its end (or before the engine idles): a client that read
    /// its request's end and then /metrics (or a test, Statistics and the health snapshot) missed the step's own
    /// counters, histogram samples and health publication, which come after the last token is delivered (the CI saw
    /// step_tokens short of the tokens generated). Engine thread only.
    /// </summary>
    private readonly List<(GenerationHandle Handle, Exception? Error)> _closing = new(16);
    private bool _stepping;

    /// <summary>True when <paramref name="h"/>'s close is held until the engine's step ends (called on its thread within a step).</summary>
    internal bool DeferClose(GenerationHandle h, Exception? error)
    {
        if (!_stepping || Thread.CurrentThread != _thread) return false;
        _closing.Add((h, error));
        return true;
    }

    private void CloseEnded()
    {
        if (_closing.Count == 0) return;
        // Each close on its own: one that threw would otherwise leave the rest open, and the list retried every step.
        foreach (var (h, error) in _closing)
        {
            try
            {
                h.Close(error);
            }
            catch (Exception e) when (e is ObjectDisposedException or InvalidOperationException)
            {
            }
        }
        _closing.Clear();
    }

    /// <summary>One engine step: admissions, one batch through the model, one token per sequence with a logits row.</summary>
    private void RunStep()
    {
        // The flag is cleared, then the gate looked at again: a HoldAtGate between this engine's wake-up and its clearing
        // the flag read a stale "at the gate" and returned while the engine went on into a step.
        while (!StepGate.Wait(0))
        {
            Volatile.Write(ref _atGate, true);
            StepGate.Wait();
            Volatile.Write(ref _atGate, false);
            Interlocked.MemoryBarrier();
        }
        _stepping = true;
        try
        {
            StepCore();
        }
        finally
        {
            _stepping = false;
            CloseEnded();
        }
    }

    private void StepCore()
    {
        _wake.Reset();
        long now = Stopwatch.GetTimestamp();
        while (_inbox.TryDequeue(out var h)) _waiting.Add(h);
        // After the inbox: WarmingUp is set before the warm-up is submitted, so a step that sees a warm-up request sees the flag.
        _counters = _warmingUp ? _uncounted : _served;
        Reap(now);
        Admit(now);
        int n = BuildBatch(out int rows);
        PublishGauges();
        // What Reap and Admit ended (timeouts, cancellations, refusals) is counted already and in no batch: its caller hears
        // now, not after this step's forward (a slow or hung one held a cancelled request's end) or the idle wait.
        CloseEnded();
        if (n == 0)
        {
            _wake.Wait(IdleWait(now));
            return;
        }
        long before = Stopwatch.GetTimestamp();
        try
        {
            BeforeForward?.Invoke(); // part of the forward: a hook that throws stands for a failed forward pass (tests)
            _engine.Forward(_batch.AsSpan(0, n), _caches, _logits);
        }
        catch (Exception e)
        {
            // A bug or an exhausted resource: everything in this batch is in an unknown state (its KV rows, its
            // logits). A running request with no token in the batch (a prompt waiting for budget) has a cache the
            // forward never touched: it goes on. Failing every running request ended those for another's fault.
            var inBatch = new bool[_caches.Length];
            for (int i = 0; i < n; i++) inBatch[_batch[i].Sequence] = true;
            var error = new InvalidOperationException($"The engine failed: {e.Message}", e);
            var failing = new List<GenerationHandle>();
            foreach (var r in _runningRequests)
                if (Array.Exists(r.Sequences!, q => !q.Finished && inBatch[q.Slot])) failing.Add(r);
            RaiseEngineFailed(e, failing);
            foreach (var r in failing) Fail(r, error, ref _counters.Failed);
            _running.RemoveAll(static s => s.Finished);
            return;
        }
        long after = Stopwatch.GetTimestamp();
        // The health collector's number for this forward, so step rows and layer rows share it even after an engine
        // failure that began a forward (counted there) without finishing the step (not counted in Steps).
        long step = Health.Steps - 1;
        bool sampling = Health.Sampling;
        var telemetry = Telemetry;
        // What Deliver writes into each delivered token's telemetry row (accepted drafts and replacements included).
        _stepRecord = sampling && telemetry is not null ? new StepContext(telemetry, step, n, (float)SchedulerMeters.Seconds(after - before)) : null;
        for (int r = 0, group = 1; r < rows; r += group)
        {
            var seq = _rowOwner[r]!;
            _rowOwner[r] = null;
            group = 1 + seq.DraftCount; // the next token's row, then one per draft (speculation)
            if (seq.Finished) continue;
            try
            {
                // The rows are checked as they are used (CheckRow): the first one here, a draft's when it is verified,
                // the bonus row before it is sampled. A row after a rejected draft is conditioned on a token plain
                // decoding never feeds: its NaN (a draft that overflowed the model) failed a request plain decoding finishes.
                CheckRow(r);
                int sampleRow = r;
                if (seq.DraftCount > 0)
                {
                    // Accepted drafts are delivered in Verify; a rejection's replacement here; after all accepted,
                    // the bonus token is sampled from the last row below, as a plain decode step would.
                    int accepted = Verify(seq, r, after, sampling, out int replacement, out LogitStats replacementStats);
                    if (seq.Finished) continue;
                    if (replacement >= 0)
                    {
                        Deliver(seq, replacement, after, replacementStats);
                        continue;
                    }
                    sampleRow = r + accepted;
                    CheckRow(sampleRow);
                }
                var row = _logits.AsSpan(sampleRow * _config.VocabSize, _config.VocabSize);
                // The statistics cover the tokens that can be sampled: ids past the tokenizer (a padded embedding's
                // untrained rows) widened the range, so a collapse of the real logits went unseen.
                LogitStats stats = sampling ? LogitStats.Compute(row[..UsableVocab]) : default;
                if (sampling) Health.AddLogits(stats);
                // Ids past the tokenizer cannot be detokenized: never sample them.
                if (UsableVocab < row.Length) row[UsableVocab..].Fill(float.NegativeInfinity);
                Step(seq, row, after, stats);
            }
            catch (NonFiniteLogitsException error)
            {
                // Only this sequence's values went bad (or every sequence's, each failing alone): end it, keep serving the rest.
                SchedulerCounters.Add(ref _counters.NonFiniteSequences, 1);
                // The sampled step's logit figures say so (NaN): they kept the last healthy step's values.
                if (sampling) Health.AddLogits(new LogitStats(float.NaN, float.NaN, float.NaN, UsableVocab));
                // With this step's number: its layer rows (the blow-up) are matched by it, and `logs --request` keeps them.
                telemetry?.Write(new TelemetryEvent(TelemetryClock.UnixNanos(), "nonfinite_logits", seq.Request.Request.RequestId, seq.Request.Request.TraceId, error.Message) { Step = step });
                Fail(seq.Request, error, ref _counters.Failed);
            }
            catch (Exception e)
            {
                // One request's sampling failed (e.g. logit_bias banned every token): end it, keep serving the rest.
                Fail(seq.Request, e as InvalidOperationException ?? new InvalidOperationException($"Sampling failed: {e.Message}", e), ref _counters.Failed);
            }
        }
        _stepRecord = null;
        Health.Publish();
        // A mismatch raises WeightIntegrity.MismatchFound, whose handler (the server's ModelMonitor) logs it and writes the
        // one weight_mismatch event; writing another here doubled every probe's event, naming whatever a concurrent
        // full check had found last.
        if (Integrity is { } integrity && Options.WeightProbeEvery > 0 && step % Options.WeightProbeEvery == 0)
        {
            try
            {
                integrity.Probe();
            }
            catch (Formats.ModelFileChangedException)
            {
                // The file was cut short: this step's tokens are out; the next forward pass fails with it, and /health says why.
            }
        }
        SchedulerCounters.Add(ref _counters.Steps, 1);
        SchedulerCounters.Add(ref _counters.StepTokens, n);
        SchedulerCounters.Set(ref _counters.LastStepTicks, after);
        Observe(MetricKind.StepTokens, n);
        Observe(MetricKind.StepDuration, SchedulerMeters.Seconds(after - before));
        _running.RemoveAll(static s => s.Finished);
    }

    /// <summary>Ends cancelled and timed-out requests, waiting or running, freeing their slots before this step's admissions.</summary>
    private void Reap(long now)
    {
        for (int i = _waiting.Count - 1; i >= 0; i--)
        {
            var h = _waiting[i];
            if (h.IsCancelled) Fail(h, new OperationCanceledException("The request was cancelled."), ref h.IsWithdrawn ? ref _counters.Withdrawn : ref _counters.Cancelled);
            else if (now >= h.DeadlineTicks) Fail(h, TimedOut(h), ref _counters.TimedOut);
        }
        for (int i = _runningRequests.Count - 1; i >= 0; i--)
        {
            var h = _runningRequests[i];
            if (h.IsCancelled) Fail(h, new OperationCanceledException("The request was cancelled."), ref h.IsWithdrawn ? ref _counters.Withdrawn : ref _counters.Cancelled);
            else if (now >= h.DeadlineTicks) Fail(h, TimedOut(h), ref _counters.TimedOut);
        }
        _running.RemoveAll(static s => s.Finished);
    }

    private RequestTimeoutException TimedOut(GenerationHandle h)
    {
        var t = h.Request.Timeout ?? Options.DefaultTimeout;
        return new RequestTimeoutException(
            $"The request did not finish within its timeout of {t?.TotalSeconds:0.###} s" + (h.Admitted ? "." : " (it was still waiting in the queue)."), h.Admitted);
    }

    private void Admit(long now)
    {
        while (_waiting.Count > 0 && _freeSlots.Count >= _waiting[0].Request.Choices)
        {
            var h = _waiting[0];
            _waiting.RemoveAt(0);
            Interlocked.Decrement(ref _queued);
            Interlocked.Add(ref _queuedSequences, -h.Request.Choices);
            var r = h.Request;
            var sequences = new Sequence[r.Choices];
            int made = 0;
            try
            {
                for (int c = 0; c < r.Choices; c++)
                {
                    var sampling = r.Sampling.Seed is { } seed && c > 0 ? r.Sampling with { Seed = SamplingParameters.StreamSeed(seed, c) } : r.Sampling;
                    // Sampler with LogProbs = 0 runs a top-0 selection that indexes an empty heap; ask it for one and deliver none.
                    if (sampling.LogProbs == 0) sampling = sampling with { LogProbs = 1 };
                    // The slot is taken off the free stack only once its sequence exists, so a throw above leaves it there.
                    int slot = _freeSlots.Peek();
                    var buffers = _samplerBuffers[slot] ??= new SamplerBuffers(_config.VocabSize);
                    var sampler = new Sampler(sampling, _config.VocabSize, buffers);
                    AdmissionFault?.Invoke(c);
                    // The same rule as TextGenerator: SentencePiece's leading space goes only at the start of text (a
                    // prompt ending in BOS or another control token); the server printed " world" where the CLI printed "world".
                    var seq = new Sequence(h, c, slot, sampler,
                        _tokenizer is null ? null : new StreamingDetokenizer(_tokenizer, includeSpecial: false,
                            atTextStart: StreamingDetokenizer.StartsText(_tokenizer, r.Prompt)),
                        r.StopStrings is { Count: > 0 } stops ? new StopStringMatcher(stops) : null);
                    _freeSlots.Pop();
                    sequences[made++] = seq;
                    seq.History.AddRange(r.Prompt);
                    foreach (int t in r.Prompt) seq.Repetition.AddPrompt(t);
                }
            }
            catch (Exception e)
            {
                // This request fails alone: its slots go back and its caller hears why (it was in no list: never
                // completed, its slots lost, and the loop's catch failed every running request).
                for (int c = 0; c < made; c++) _freeSlots.Push(sequences[c].Slot);
                SchedulerCounters.Add(ref _counters.Failed, 1);
                PublishGauges();
                h.Complete(new InvalidOperationException($"The request could not start: {e.Message}", e));
                continue;
            }
            foreach (var seq in sequences) _running.Add(seq);
            h.Sequences = sequences;
            h.UnfinishedChoices = r.Choices;
            h.Admitted = true;
            _runningRequests.Add(h);
            Observe(MetricKind.QueueTime, SchedulerMeters.Seconds(now - h.SubmittedTicks));
            Observe(MetricKind.PromptLength, r.Prompt.Count);
        }
    }

    /// <summary>
    /// Decode tokens of every running sequence first, then prompt chunks in admission order up to the token budget;
    /// speculative drafts only in what both leave.
    /// </summary>
    private int BuildBatch(out int rows)
    {
        int n = 0;
        rows = 0;
        int decoding = 0;
        long prefill = 0;
        foreach (var s in _running)
        {
            if (s.NextToken >= 0) decoding++;
            else prefill += s.PromptLength - s.Prefilled;
        }
        // Draft tokens share what the decode tokens and the waiting prompt chunks leave of the step's budget, first
        // come first served: drafts are a guess, and taking prompt chunks' room starved new requests' prefill.
        int spare = (int)Math.Max(0, _batch.Length - decoding - prefill);
        foreach (var s in _running)
        {
            if (s.NextToken < 0) continue;
            int d = spare > 0 ? Propose(s, spare) : (s.DraftCount = 0);
            spare -= d;
            _batch[n++] = new BatchToken(s.NextToken, s.Slot, s.CacheLength, WantLogits: true);
            _rowOwner[rows] = s;
            rows += 1 + d;
            s.CacheLength++;
            for (int i = 0; i < d; i++) _batch[n++] = new BatchToken(s.Drafts![i], s.Slot, s.CacheLength++, WantLogits: true);
        }
        int budget = _batch.Length - n;
        long prompt = 0;
        foreach (var s in _running)
        {
            if (budget == 0) break;
            if (s.NextToken >= 0 || s.Prefilled == s.PromptLength) continue;
            int take = Math.Min(budget, s.PromptLength - s.Prefilled);
            var tokens = s.Request.Request.Prompt;
            for (int i = 0; i < take; i++)
            {
                int pos = s.Prefilled + i;
                _batch[n++] = new BatchToken(tokens[pos], s.Slot, pos, WantLogits: pos == s.PromptLength - 1);
            }
            s.Prefilled += take;
            s.CacheLength += take;
            if (s.Prefilled == s.PromptLength) _rowOwner[rows++] = s;
            budget -= take;
            prompt += take;
        }
        if (prompt > 0) SchedulerCounters.Add(ref _counters.PromptTokens, prompt);
        return n;
    }

    /// <summary>Samples a sequence's next token from its logits row and delivers it, ending the choice at a stop token, a stop string or its length.</summary>
    private int Step(Sequence s, ReadOnlySpan<float> logits, long now, in LogitStats stats)
    {
        int token = s.Sampler.Sample(logits, CollectionsMarshal.AsSpan(s.History), s.PromptLength);
        Deliver(s, token, now, stats);
        return token;
    }

    /// <summary>The logits columns that are tokens: the tokenizer's vocabulary when the model's rows are padded past it.</summary>
    private int UsableVocab => _tokenizer is not null && _tokenizer.VocabularySize < _config.VocabSize ? _tokenizer.VocabularySize : _config.VocabSize;

    /// <summary>A sampled step's telemetry: the sink, the step number, its tokens and its duration.</summary>
    private sealed record StepContext(ITelemetrySink Sink, long Step, int Tokens, float Seconds);

    private StepContext? _stepRecord;

    /// <summary>
    /// The draft tokens sequence <paramref name="s"/> feeds with its next token (at most <paramref name="budget"/>):
    /// prompt lookup over its history, when speculation is on for its request; none near its length or context end.
    /// </summary>
    private int Propose(Sequence s, int budget)
    {
        s.DraftCount = 0;
        if (Options.Speculation is not { } spec || !(s.Request.Request.Speculate ?? true)) return 0;
        int k = Math.Min(spec.DraftTokens, budget);
        k = Math.Min(k, s.Request.Request.MaxTokens - s.Generated - 1);      // the step emits up to k + 1 tokens
        k = Math.Min(k, ContextLength - 1 - s.CacheLength);                  // positions of the next token and its drafts
        if (k <= 0) return 0;
        s.Drafts ??= new int[spec.DraftTokens];
        s.DraftCount = NGramDraft.Propose(CollectionsMarshal.AsSpan(s.History), spec.MaxNGram, spec.MinNGram, s.Drafts.AsSpan(0, k));
        return s.DraftCount;
    }

    /// <summary>
    /// Checks a speculating sequence's drafts against its rows (row <paramref name="first"/> + i scores draft i) by the
    /// exact acceptance rule, delivers the accepted ones, and rolls the KV cache back past the rejected ones. Returns
    /// how many were accepted; <paramref name="replacement"/> is the token drawn at the first rejection (−1 if none).
    /// </summary>
    private int Verify(Sequence s, int first, long now, bool sampling, out int replacement, out LogitStats replacementStats)
    {
        int vocab = _config.VocabSize, drafts = s.DraftCount, accepted = 0, verified = 0;
        replacement = -1;
        replacementStats = default;
        s.DraftCount = 0;
        for (int i = 0; i < drafts && !s.Finished; i++)
        {
            if (i > 0) CheckRow(first + i);
            verified++; // drafts after a stop in an accepted one are never verified: "drafted" counts these only
            var row = _logits.AsSpan((first + i) * vocab, vocab);
            LogitStats stats = sampling ? LogitStats.Compute(row[..UsableVocab]) : default;
            if (sampling) Health.AddLogits(stats);
            if (UsableVocab < row.Length) row[UsableVocab..].Fill(float.NegativeInfinity);
            int draft = s.Drafts![i];
            // The point-mass rule as a draw: sample the row exactly as plain decoding does (one uniform) and accept the
            // draft iff that is the token. Accepted with probability p(draft), replaced by p without it: the same law as
            // accepting on u < p(draft), but the same tokens as plain decoding for a seed, whatever the load (whether a
            // step drafts depends on the batch's spare budget, and the two rules spent the PRNG differently).
            int token = s.Sampler.Sample(row, CollectionsMarshal.AsSpan(s.History), s.PromptLength);
            bool ok = token == draft;
            if (!ok)
            {
                replacement = token;
                replacementStats = stats;
                break;
            }
            accepted++;
            Deliver(s, draft, now, stats);
        }
        SchedulerCounters.Add(ref _counters.SpeculativeSteps, 1);
        SchedulerCounters.Add(ref _counters.DraftedTokens, verified);
        // Every draft fed through the model, those after a rejection or a stop too: the compute speculation spends.
        SchedulerCounters.Add(ref _counters.ComputedDraftTokens, drafts);
        SchedulerCounters.Add(ref _counters.AcceptedTokens, accepted);
        SchedulerCounters.Add(ref _counters.SpeculativeTokens, accepted + (s.Finished ? 0 : 1));
        if (!s.Finished)
        {
            s.CacheLength -= drafts - accepted;
            _caches[s.Slot].Truncate(s.CacheLength);
        }
        return accepted;
    }

    /// <summary>A <see cref="NonFiniteLogitsException"/> naming where the values first went bad when logits row <paramref name="row"/> holds NaN or ±Inf.</summary>
    private void CheckRow(int row)
    {
        int bad = LogitStats.CountNonFinite(_logits.AsSpan(row * _config.VocabSize, UsableVocab));
        if (bad > 0) throw new NonFiniteLogitsException(bad, UsableVocab, Health.NonFiniteOrigin(row));
    }

    /// <summary>Delivers a chosen token: counts it, streams its text, ends the choice at a stop token, a stop string or its length.</summary>
    private void Deliver(Sequence s, int token, long now, in LogitStats stats)
    {
        var h = s.Request;
        var r = h.Request;
        if (!h.FirstTokenSeen)
        {
            h.FirstTokenSeen = true;
            Observe(MetricKind.TimeToFirstToken, SchedulerMeters.Seconds(now - h.SubmittedTicks));
        }
        float latency = float.NaN;
        if (s.LastTokenTicks != 0)
        {
            double itl = SchedulerMeters.Seconds(now - s.LastTokenTicks);
            latency = (float)itl;
            // The histogram and the jitter window hold the gaps between a sequence's steps: tokens delivered together
            // (accepted drafts) add no zeros, which made a steady speculating engine read as jittery (std-dev ≈ 0.47 of
            // its step) and pulled the ITL median below a millisecond while steps took tens.
            if (now != s.LastTokenTicks)
            {
                Observe(MetricKind.InterTokenLatency, itl);
                if (ReferenceEquals(_counters, _served)) TokenLatency.Add(itl);
            }
        }
        s.LastTokenTicks = now;
        if (_stepRecord is { } step)
            step.Sink.Write(new TelemetryStepRecord(TelemetryClock.UnixNanos(), step.Step, r.RequestId, r.TraceId, r.ChoiceOffset + s.Choice, token, step.Tokens,
                step.Seconds, latency, stats.Min, stats.Max, stats.Entropy, 0));

        if (!r.IgnoreStopTokens && ((_tokenizer is not null && _tokenizer.IsStopToken(token)) || (r.StopTokenIds is { Count: > 0 } extra && extra.Contains(token))))
        {
            string rest = s.Detokenizer?.Flush() ?? "";
            if (s.Stops is { } m) rest = m.Push(rest, out _) + m.Flush();
            // The stop token was sampled from a forward step like any other: generated, and counted (usage, tok/s).
            s.Generated++;
            SchedulerCounters.Add(ref _counters.GenerationTokens, 1);
            Emit(s, -1, rest, float.NaN, null, FinishReason.Stop, stopToken: token);
            return;
        }

        s.Generated++;
        s.History.Add(token);
        s.Repetition.AddGenerated(token);
        SchedulerCounters.Add(ref _counters.GenerationTokens, 1);
        TokenLogProb[]? top = r.Sampling.LogProbs is > 0 ? s.Sampler.TopLogProbs.ToArray() : null;
        float logProb = s.Sampler.ChosenLogProb;
        string text = s.Detokenizer?.Append(token) ?? "";
        bool last = s.Generated == r.MaxTokens;
        if (last) text += s.Detokenizer?.Flush() ?? "";
        int offset = s.DecodedChars;
        s.DecodedChars += text.Length;
        if (s.Stops is { } stops)
        {
            text = stops.Push(text, out bool stopped);
            if (stopped)
            {
                Emit(s, token, text, logProb, top, FinishReason.Stop, offset);
                return;
            }
            if (last) text += stops.Flush();
        }
        if (last)
        {
            Emit(s, token, text, logProb, top, FinishReason.Length, offset);
            return;
        }
        Emit(s, token, text, logProb, top, FinishReason.None, offset);
        s.NextToken = token;
    }

    private void Emit(Sequence s, int token, string text, float logProb, TokenLogProb[]? top, FinishReason finish, int offset = -1, int stopToken = -1)
    {
        var h = s.Request;
        int delivered = s.DeliveredChars;
        s.DeliveredChars += text.Length;
        // Text held back for a stop string is not delivered yet but has its place: the offset counts it. The token a
        // stop string cut may start past the final text (capped there); a stop token's leftover (−1) sits at the end.
        int textOffset = offset < 0 ? delivered : finish == FinishReason.Stop ? Math.Min(offset, s.DeliveredChars) : offset;
        h.Writer.TryWrite(new GenerationEvent(s.Choice, token, text, logProb, top, finish) { TextOffset = textOffset, StopToken = stopToken });
        if (finish == FinishReason.None) return;
        Release(s);
        Observe(MetricKind.GenerationLength, s.Generated);
        if (finish == FinishReason.Length) SchedulerCounters.Add(ref _counters.FinishedLength, 1);
        else SchedulerCounters.Add(ref _counters.FinishedStop, 1);
        if (--h.UnfinishedChoices == 0)
        {
            Observe(MetricKind.EndToEndLatency, SchedulerMeters.Seconds(Stopwatch.GetTimestamp() - h.SubmittedTicks));
            _runningRequests.Remove(h);
            PublishGauges(); // before the caller sees the end: its slot already reads free
            h.Complete(null);
        }
    }

    /// <summary>Frees a sequence's slot; the cache is emptied so the next owner starts at position 0.</summary>
    private void Release(Sequence s)
    {
        if (s.Finished) return;
        s.Finished = true;
        s.NextToken = -1;
        _caches[s.Slot].Clear();
        _freeSlots.Push(s.Slot);
    }

    /// <summary>Ends a request early with <paramref name="error"/>, waiting or running, and counts it in <paramref name="counter"/>.</summary>
    private void Fail(GenerationHandle h, Exception error, ref long counter)
    {
        if (h.Done) return;
        if (h.Admitted)
        {
            foreach (var s in h.Sequences) Release(s);
            _runningRequests.Remove(h);
        }
        else if (_waiting.Remove(h))
        {
            Interlocked.Decrement(ref _queued);
            Interlocked.Add(ref _queuedSequences, -h.Request.Choices);
        }
        SchedulerCounters.Add(ref counter, 1);
        PublishGauges();
        h.Complete(error);
    }

    private void PublishGauges()
    {
        long kv = 0;
        int running = 0;
        foreach (var s in _running)
        {
            if (s.Finished) continue; // released this step, removed from the list at the next
            kv += s.CacheLength;
            running++;
        }
        SchedulerCounters.Set(ref _served.KvPositionsInUse, kv); // gauges: the state, warm-up or not
        SchedulerCounters.Set(ref _served.RunningSequences, running);
        double repetition = 0;
        foreach (var s in _running)
            if (!s.Finished && s.Repetition.Share is var share && share > repetition) repetition = share;
        Volatile.Write(ref _repetition, repetition);
        SchedulerCounters.Set(ref _served.RunningRequests, _runningRequests.Count);
    }

    /// <summary>How long an idle engine may sleep: until the nearest waiting request's deadline, at most a second.</summary>
    private TimeSpan IdleWait(long now)
    {
        long nearest = now + Stopwatch.Frequency;
        foreach (var h in _waiting) nearest = Math.Min(nearest, h.DeadlineTicks);
        return TimeSpan.FromSeconds(Math.Max(0, SchedulerMeters.Seconds(nearest - now)));
    }

    private readonly TelemetryLayerRecord _layerRecord = new();

    /// <summary>Each layer of a published sampled step as a telemetry record (the sink copies it; one record object is reused).</summary>
    private void WriteLayers(HealthSnapshot snap)
    {
        if (Telemetry is not { } sink) return;
        var rec = _layerRecord;
        for (int l = 0; l < snap.Layers; l++)
        {
            rec.TimeUnixNanos = snap.TimeUnixNanos;
            rec.Step = snap.Step;
            rec.Layer = l;
            rec.Tokens = snap.Tokens;
            for (int i = 0; i < HealthNames.InputCount; i++)
            {
                rec.Saturation[i] = snap.Saturation[l * HealthNames.InputCount + i];
                rec.Underflow[i] = snap.Underflow[l * HealthNames.InputCount + i];
                rec.CrestFactor[i] = snap.CrestFactor[l * HealthNames.InputCount + i];
            }
            rec.ResidualRms = snap.ResidualRms[l];
            rec.ResidualMaxAbs = snap.ResidualMaxAbs[l];
            rec.ResidualChange = snap.ResidualChange[l];
            rec.KvKeyError = snap.KvKeyError[l];
            rec.KvValueError = snap.KvValueError[l];
            sink.Write(rec);
        }
    }

    /// <summary>Ends submissions that raced with the engine's last look at the inbox.</summary>
    private void DrainInboxAfterStop()
    {
        if (_thread.IsAlive) return;
        while (_inbox.TryDequeue(out var h)) h.Complete(new ObjectDisposedException(nameof(ContinuousBatchScheduler), "The server is shutting down."));
    }

    /// <summary>Stops the engine thread; requests still waiting or running end with <see cref="ObjectDisposedException"/>.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _stopping = true;
        StepGate.Set();
        _wake.Set();
        _thread.Join();
        DrainInboxAfterStop();
        Meters.Dispose();
        _engine.Dispose();
        Health.Dispose();
        foreach (var c in _caches) c.Dispose();
        if (_ownsPool) _pool.Dispose();
        // _wake is not disposed: a late Cancel() from a request handler may still set it.
    }
}
