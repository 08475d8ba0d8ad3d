using System.Diagnostics;
using BitNetSharp.Generation.Sampling;
using BitNetSharp.Model;
using BitNetSharp.Threading;

namespace BitNetSharp.Diagnostics.Profiling;

/// <summary>What <see cref="ProfileSession.Run"/> profiles: a prompt (one prefill batch) and then decode steps of one
/// token per sequence, greedy-sampled, on <see cref="Sequences"/> sequences decoding together.</summary>
public sealed record ProfileOptions
{
    public required int[] Prompt { get; init; }

    /// <summary>Decode steps after the prefill (each one forward pass of one token and one sampling).</summary>
    public int DecodeSteps { get; init; } = 16;

    public KvCacheType KvType { get; init; } = KvCacheType.F16;

    /// <summary>Size of the read-bandwidth probe's buffer (it must be far larger than the caches).</summary>
    public long BandwidthProbeBytes { get; init; } = 1L << 30;

    /// <summary>Seconds the integer-MAC ceiling is measured for, per token count.</summary>
    public double PeakSeconds { get; init; } = 0.25;

    /// <summary>Decode repetitions with profiling off and on, alternating, for the overhead A/B (0: none).</summary>
    public int AbRepetitions { get; init; }

    /// <summary>The model file, for the resident size of its mapping (null: not measured).</summary>
    public string? ModelPath { get; init; }

    /// <summary>Sequences decoding together, each with the same prompt and its own KV cache (as `serve` batches concurrent
    /// requests): the prefill is one batch of all their prompts, and each decode step one token of each.</summary>
    public int Sequences { get; init; } = 1;

    /// <summary>The ternary kernel to profile (null: the one the engine picks for the model, <see cref="Kernels.KernelRegistry.ForModel"/>).</summary>
    public Kernels.TernaryKernel? Kernel { get; init; }

    /// <summary>Most sequences a profile batches (as `bench -s`).</summary>
    public const int MaxSequences = 256;
}

/// <summary>One phase (prefill or decode) of a profile.</summary>
public sealed record PhaseProfile(string Name, OpStats Stats, int Tokens, double WallSeconds, PerfSample Counters,
    ProcessMemory Before, ProcessMemory After, long AllocatedBytes, double[] ThreadBusySeconds)
;

/// <summary>The share of the ternary kernel's time spent unpacking codes (the rest: multiply-accumulate and epilogue) for
/// rows <paramref name="Cols"/> wide at <paramref name="Tokens"/> tokens, weights in cache.</summary>
public sealed record UnpackShare(int Cols, int Tokens, double Share);

/// <summary>Everything one <c>bitnet profile</c> run measured.</summary>
public sealed class ProfileReport
{
    public required ModelConfig Config { get; init; }
    public required string Kernel { get; init; }
    public required string HeadType { get; init; }
    /// <summary>How decode read the weights (<see cref="Kernels.HeadKernels.DescribeStreams"/>).</summary>
    public string WeightStreams { get; init; } = "";
    /// <summary>The KV cache's element type the run used.</summary>
    public KvCacheType KvType { get; init; }
    public required int Threads { get; init; }

    /// <summary>The most tokens whose products read the lookup kernel's own layout (0: every product reads the packed
    /// 2-bit matrix; the lookup kernel reads that for prefill unless it looks prefill up too).</summary>
    public int LookupLayoutTokens { get; init; }

    /// <summary>Sequences decoding together (<see cref="ProfileOptions.Sequences"/>): each decode step produces this many
    /// tokens, and the phases' token counts include all of them.</summary>
    public int Sequences { get; init; } = 1;
    public required double BandwidthGBps { get; init; }
    public required double PeakGmacPrefill { get; init; }
    public required double PeakGmacDecode { get; init; }
    public required PhaseProfile Prefill { get; init; }
    public required PhaseProfile Decode { get; init; }
    public required double TtftSeconds { get; init; }
    public required LatencySummary DecodeLatency { get; init; }
    public string? HardwareCountersUnavailable { get; init; }
    public string? SoftwareCountersUnavailable { get; init; }
    public required SpanLog Spans { get; init; }
    public required ChunkTimeline Chunks { get; init; }
    /// <summary>The ternary kernel's time split on cache-resident weights of each projection width (empty: the kernel has
    /// no unpack-only variant).</summary>
    public IReadOnlyList<UnpackShare> KernelUnpackShares { get; init; } = [];
    public double[]? AbOffTokensPerSecond { get; init; }
    public double[]? AbOnTokensPerSecond { get; init; }

    /// <summary>Peak resident set at the end of the run.</summary>
    public long? PeakRssBytes => Decode.After.PeakRssBytes;
}

/// <summary>
/// Runs a prompt and decode steps with the operation timer attached and gathers, per phase, the op table, perf counters,
/// memory and allocation figures, per-token latencies and the span/chunk timeline for a trace; with this machine's read
/// bandwidth and int8 MAC ceiling measured in the same run, so each operation can be placed against both limits.
/// </summary>
public static class ProfileSession
{
    public static ProfileReport Run(ModelWeights weights, WorkerPool pool, ProfileOptions o)
    {
        var c = weights.Config;
        int promptLen = o.Prompt.Length;
        if (promptLen == 0) throw new ArgumentException("The prompt is empty; profile needs at least one prompt token.", nameof(o));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(o.DecodeSteps);
        int sequences = o.Sequences;
        if (sequences is < 1 or > ProfileOptions.MaxSequences)
            throw new ArgumentException($"Sequences must be from 1 to {ProfileOptions.MaxSequences}; got {sequences}.", nameof(o));
        if ((long)promptLen + o.DecodeSteps > c.ContextLength) // long: DecodeSteps near int.MaxValue wrapped and passed
            throw new ArgumentException($"{promptLen} prompt tokens and {o.DecodeSteps} decode steps exceed the model's context of {c.ContextLength} tokens.", nameof(o));

        // The host's bandwidth drifts (shared memory controllers), so the run is bracketed by two probes and bounded by
        // the better one; the probe's buffer is freed and the peak-RSS watermark reset so it does not count as the model's.
        double Probe()
        {
            double gbps;
            using (var probe = new MemoryBandwidth(o.BandwidthProbeBytes)) gbps = probe.Measure(pool, 3);
            GC.Collect();
            ProcessMemory.ResetPeak();
            return gbps;
        }
        double bandwidth = Probe();
        using var engine = new Transformer(weights, promptLen * sequences, pool, o.Kernel);
        // The ceilings at the phases' own token counts: a decode step is one token per sequence.
        int prefillTokens = promptLen * sequences;
        // The best over the projections' input widths: wider rows run faster (fewer row starts and reductions per MAC), so
        // a ceiling measured at the model dimension alone was beaten by the ff-wide down projection (131 % of "peak").
        double Peak(int tokens)
        {
            double best = 0;
            foreach (int width in KernelPeak.ProjectionWidths(c))
                best = Math.Max(best, KernelPeak.Measure(pool, engine.Kernel, width, tokens, o.PeakSeconds));
            return best;
        }
        double peakDecode = Peak(sequences);
        double peakPrefill = prefillTokens == sequences ? peakDecode : Peak(prefillTokens);
        var unpack = new List<UnpackShare>();
        foreach (int width in KernelPeak.ProjectionWidths(c))
            foreach (int tokens in prefillTokens == sequences ? [sequences] : new[] { sequences, prefillTokens })
                if (KernelPeak.UnpackShare(pool, engine.Kernel, width, tokens, o.PeakSeconds) is { } share)
                    unpack.Add(new UnpackShare(width, tokens, share));

        var caches = new KvCache[sequences];
        for (int q = 0; q < sequences; q++) caches[q] = new KvCache(c.Layers, c.KvHeads, c.HeadDim, promptLen + o.DecodeSteps, o.KvType);
        using var cacheOwner = new Disposables(caches);
        var sampler = new Sampler(new SamplingParameters { Temperature = 0f, TopK = 0, TopP = 1f, MinP = 0f }, c.VocabSize);
        var logits = new float[(long)c.VocabSize * sequences];
        var history = new int[sequences][];
        var prefillBatch = new BatchToken[promptLen * sequences];
        for (int q = 0; q < sequences; q++)
        {
            history[q] = new int[promptLen + o.DecodeSteps + 1];
            o.Prompt.CopyTo(history[q], 0);
            for (int i = 0; i < promptLen; i++) prefillBatch[q * promptLen + i] = new BatchToken(o.Prompt[i], q, i, i == promptLen - 1);
        }
        var step = new BatchToken[sequences];
        var latencies = new double[o.DecodeSteps];

        var profiler = new OpProfiler(c.Layers, pool.ThreadCount);
        var spans = new SpanLog(4096);
        var chunks = new ChunkTimeline(pool.ThreadCount, 4096);
        var scratch = new OpStats(c.Layers);
        var prefillStats = new OpStats(c.Layers);
        var decodeStats = new OpStats(c.Layers);

        long Prefill(OpStats? stats)
        {
            foreach (var cache in caches) cache.Clear();
            profiler.Stats = stats;
            long s = Stopwatch.GetTimestamp();
            engine.Forward(prefillBatch, caches, logits);
            long e = Stopwatch.GetTimestamp();
            stats?.AddStep(promptLen * sequences, e - s);
            if (engine.Profiler is not null) spans.Add(new TraceSpan(s, e, SpanKind.Step, 0, -1, promptLen * sequences, 0, 0));
            return e;
        }
        void Sample(int length)
        {
            // One greedy sample per sequence from its row of logits (rows in batch order: sequence q is row q).
            var p = engine.Profiler;
            for (int q = 0; q < sequences; q++)
            {
                p?.Begin(ProfileOp.Sampling, -1, 1);
                int token = sampler.Sample(logits.AsSpan(q * c.VocabSize, c.VocabSize), history[q].AsSpan(0, length));
                p?.End();
                history[q][length] = token;
            }
        }
        void DecodeStep(int i, OpStats? stats)
        {
            for (int q = 0; q < sequences; q++) step[q] = new BatchToken(history[q][promptLen + i], q, promptLen + i, true);
            long s = Stopwatch.GetTimestamp();
            engine.Forward(step, caches, logits);
            long e = Stopwatch.GetTimestamp();
            stats?.AddStep(sequences, e - s);
            if (engine.Profiler is not null) spans.Add(new TraceSpan(s, e, SpanKind.Step, i + 1, -1, sequences, 0, 0));
            Sample(promptLen + i + 1);
        }
        void Attach(bool on)
        {
            engine.Profiler = on ? profiler : null;
            pool.Timeline = on ? chunks : null;
            profiler.Trace = on ? spans : null;
            profiler.Timeline = on ? chunks : null;
        }
        SpanLog measuredSpans = spans;
        ChunkTimeline measuredChunks = chunks;

        try
        {
            // Warm-up with everything attached: first-touch page faults, the sizes the span logs need, and the JIT's
            // tiering (methods are recompiled optimized after ~30 calls once 100 ms pass without new code; a profile of
            // the first, unoptimized code measured 1.5× slower decode on the bundled model): at least one full run, more
            // until a second has passed, each round also reading the counters and /proc as the timed phases do. Then the
            // JIT is let go quiet before each timed phase (JitQuiet.Settle). Reading /proc calls string and file methods
            // thousands of times; before, their optimized recompiles ran on the background thread during the timed decode
            // of the 2B4T shape (21–44 methods, 20–50 ms of compiling on a core the decode needed; workers busy 79–83 % of
            // the phase against 89–95 % without). What the JIT still compiles while timed is reported with the phase.
            using var counters = PerfCounters.Open();
            Attach(true);
            long warmStart = Stopwatch.GetTimestamp();
            for (int round = 0; round < 50 && (round == 0 || Stopwatch.GetElapsedTime(warmStart).TotalSeconds < 1.0); round++)
            {
                Prefill(scratch);
                Sample(promptLen);
                for (int i = 0; i < o.DecodeSteps; i++) DecodeStep(i, scratch);
                spans.Reserve((int)Math.Min(int.MaxValue, (spans.Count + spans.Dropped) * 5 / 4 + 64));
                chunks.Reserve((int)Math.Min(int.MaxValue, (chunks.MaxCount + chunks.Dropped) * 5 / 4 + 64));
                spans.Clear();
                chunks.Clear();
                _ = counters.Read();
                _ = ProcessMemory.Read(o.ModelPath);
            }
            GC.Collect();
            GC.WaitForPendingFinalizers();

            // The JIT quiet before each timed phase (what the reads just before set off compiles now, not while timed),
            // then one untimed pass of what is timed next: after the quiet spell's sleep the first pass ran ~2× slower
            // (2B4T, 2 threads: the first decode step 40–49 ms against 21–25 for the rest, in every run; 22–38 ms without
            // the sleep), as after any idle spell on this host, and a profile is of steady work.
            JitQuiet.Settle();
            Attach(false);
            Prefill(null);
            Attach(true);
            // After the untimed pass: what it compiled or collected is not the timed phase's (the JIT and GC counts came
            // from before it, so they counted the very compiles the pass is there to absorb).
            var mem0 = ProcessMemory.Read(o.ModelPath);
            var perf0 = counters.Read();
            long a0 = GC.GetTotalAllocatedBytes(precise: true);
            long t0 = Stopwatch.GetTimestamp();
            long prefillEnd = Prefill(prefillStats);
            profiler.Stats = prefillStats;
            Sample(promptLen);
            long t1 = Stopwatch.GetTimestamp();
            long a1 = GC.GetTotalAllocatedBytes(precise: true);
            spans.Add(new TraceSpan(t0, t1, SpanKind.Phase, 0, -1, promptLen * sequences, 0, 0));
            var perf1 = counters.Read();
            var mem1 = ProcessMemory.Read(o.ModelPath);

            JitQuiet.Settle();
            Attach(false);
            DecodeStep(0, null); // untimed; the timed step 0 recomputes the same greedy token at the same position
            foreach (var cache in caches) cache.Truncate(promptLen);
            Attach(true);
            var mem2 = ProcessMemory.Read(o.ModelPath);
            var perf2 = counters.Read();
            long a2 = GC.GetTotalAllocatedBytes(precise: true);
            long t2 = Stopwatch.GetTimestamp();
            for (int i = 0; i < o.DecodeSteps; i++)
            {
                long s = Stopwatch.GetTimestamp();
                profiler.Stats = decodeStats;
                DecodeStep(i, decodeStats);
                latencies[i] = Stopwatch.GetElapsedTime(s).TotalSeconds;
            }
            long t3 = Stopwatch.GetTimestamp();
            long a3 = GC.GetTotalAllocatedBytes(precise: true);
            var perf3 = counters.Read();
            var mem3 = ProcessMemory.Read(o.ModelPath);
            spans.Add(new TraceSpan(t2, t3, SpanKind.Phase, 1, -1, o.DecodeSteps * sequences, 0, 0));
            _ = prefillEnd;

            // Detached: the probe's pool runs recorded chunks after the decode phase, drawn in the trace as "sampling chunk" work.
            Attach(false);
            bandwidth = Math.Max(bandwidth, Probe());
            var prefill = new PhaseProfile("prefill", prefillStats, promptLen * sequences, Seconds(t1 - t0), perf1.Minus(perf0), mem0, mem1, a1 - a0, Busy(chunks, t0, t1));
            var decode = new PhaseProfile("decode", decodeStats, o.DecodeSteps * sequences, Seconds(t3 - t2), perf3.Minus(perf2), mem2, mem3, a3 - a2, Busy(chunks, t2, t3));

            double[]? off = null, on = null;
            if (o.AbRepetitions > 0)
            {
                // The A/B records into logs of its own, the same size, so the profile's timeline is kept.
                spans = new SpanLog(measuredSpans.Count + 64);
                chunks = new ChunkTimeline(pool.ThreadCount, measuredChunks.MaxCount + 64);
                off = new double[o.AbRepetitions];
                on = new double[o.AbRepetitions];
                var abStats = new OpStats(c.Layers);
                for (int r = 0; r < o.AbRepetitions; r++)
                {
                    // Alternate which goes first, so host drift does not always favour one.
                    bool first = r % 2 == 0;
                    for (int k = 0; k < 2; k++)
                    {
                        bool profiled = first ^ (k == 1);
                        double tps = DecodeRun(profiled, abStats);
                        if (profiled) on[r] = tps;
                        else off[r] = tps;
                    }
                }
            }

            return new ProfileReport
            {
                Config = c,
                Kernel = engine.Kernel.Name,
                LookupLayoutTokens = engine.Kernel is Kernels.LutTernaryKernel lut ? (lut.LookupPrefill ? int.MaxValue : Kernels.LutTernaryKernel.MaxLookupTokens) : 0,
                HeadType = weights.Output.Type.ToString(),
                WeightStreams = Kernels.HeadKernels.DescribeStreams(weights.Output.Type),
                KvType = o.KvType,
                Threads = pool.ThreadCount,
                Sequences = sequences,
                BandwidthGBps = bandwidth,
                PeakGmacPrefill = peakPrefill,
                PeakGmacDecode = peakDecode,
                Prefill = prefill,
                Decode = decode,
                TtftSeconds = Seconds(t1 - t0),
                DecodeLatency = LatencySummary.Of(latencies),
                HardwareCountersUnavailable = counters.HardwareUnavailableReason,
                SoftwareCountersUnavailable = counters.SoftwareUnavailableReason,
                Spans = measuredSpans,
                Chunks = measuredChunks,
                KernelUnpackShares = unpack,
                AbOffTokensPerSecond = off,
                AbOnTokensPerSecond = on,
            };
        }
        finally
        {
            Attach(false);
        }

        // One decode run over the same positions (after a prefill that is not timed), profiler off or on as in the profile.
        double DecodeRun(bool profiled, OpStats stats)
        {
            Attach(false);
            Prefill(null);
            Sample(promptLen);
            Attach(profiled);
            profiler.Stats = profiled ? stats : null; // Prefill(null) left it null: the "on" runs skipped the per-op accounting they measure
            spans.Clear();
            chunks.Clear();
            stats.Clear();
            long s = Stopwatch.GetTimestamp();
            for (int i = 0; i < o.DecodeSteps; i++) DecodeStep(i, profiled ? stats : null);
            double tps = (double)o.DecodeSteps * sequences / Stopwatch.GetElapsedTime(s).TotalSeconds;
            Attach(false);
            return tps;
        }
    }

    private static double Seconds(long ticks) => (double)ticks / Stopwatch.Frequency;

    /// <summary>Disposes the sequences' caches however the run ends.</summary>
    private sealed class Disposables(IDisposable[] items) : IDisposable
    {
        public void Dispose()
        {
            foreach (var item in items) item.Dispose();
        }
    }

    /// <summary>Per worker, the seconds its recorded chunks overlap [from, to).</summary>
    private static double[] Busy(ChunkTimeline chunks, long from, long to)
    {
        var busy = new double[chunks.Workers];
        for (int w = 0; w < chunks.Workers; w++)
        {
            long ticks = 0;
            foreach (var s in chunks.Spans(w))
                if (s.End > from && s.Start < to) ticks += Math.Min(s.End, to) - Math.Max(s.Start, from);
            busy[w] = Seconds(ticks);
        }
        return busy;
    }
}
