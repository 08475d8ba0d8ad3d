using System.Diagnostics;
using BitNetSharp.Diagnostics.Profiling;
using BitNetSharp.Model;
using BitNetSharp.Threading;

namespace BitNetSharp.Diagnostics;

/// <summary>Tokens per second of one test, over repetitions.</summary>
public sealed record ThroughputSample(string Test, int Threads, double[] TokensPerSecond, int Sequences = 1)
{
    /// <summary>pp: the prompt's forward pass per repetition (the time to first token's logits); tg: each decode step,
    /// all repetitions together. Null where not measured.</summary>
    public LatencySummary? Latency { get; init; }

    /// <summary>Tokens already in the KV cache when the test ran (llama-bench's <c>-d</c>).</summary>
    public int Depth { get; init; }

    /// <summary>Tokens each sequence processed in one repetition (pp: the prompt; tg: the decode steps).</summary>
    public int Tokens { get; init; }

    /// <summary>Untimed forward passes before the timed ones (pp: prompt passes; tg: decode steps of each depth).</summary>
    public int WarmupRuns { get; init; }

    /// <summary>
    /// KV-cache bytes a decode step reads on average (all sequences): step i (from 0) attends over the depth plus i + 1
    /// positions, so the mean over the test's steps (the integer mean positions, (tokens + 1) / 2 rounded down, counted
    /// 2 of tg4's 2.5: 20 % too few bytes). 0 for prompt processing.
    /// </summary>
    public long KvBytesPerStep(ModelConfig config, KvCacheType type)
    {
        if (!Test.StartsWith("tg", StringComparison.Ordinal) || Tokens <= 0) return 0;
        double sum = 0;
        for (int i = 1; i <= Tokens; i++) sum += KvCache.BytesFor(config.Layers, config.KvHeads, config.HeadDim, Depth + i, type);
        return (long)Math.Round(Sequences * sum / Tokens);
    }

    /// <summary>
    /// The fraction of the step's wall time spent in attention (the KV-cache write and the attention over the cached
    /// positions, the profiler's <c>attention</c> operation), from one extra profiled pass of the test; null where not measured.
    /// </summary>
    public double? AttentionShare { get; init; }

    public double Mean => TokensPerSecond.Average();

    public double StdDev
    {
        get
        {
            if (TokensPerSecond.Length < 2) return 0;
            double m = Mean;
            return Math.Sqrt(TokensPerSecond.Sum(v => (v - m) * (v - m)) / (TokensPerSecond.Length - 1));
        }
    }
}

/// <summary>Throughput at one depth over throughput at <paramref name="BaseDepth"/>, paired by repetition: the median of the per-pair ratios and their range.</summary>
public readonly record struct PairedRatio(double Median, double Min, double Max, int BaseDepth);

/// <summary>
/// llama-bench's two measurements on a loaded model: prompt processing (pp: one batch of N prompt tokens, logits
/// for the last) and token generation (tg: N tokens one at a time from an empty context, logits every step, as
/// in real decoding but with a fixed token instead of sampling, so the numbers measure the engine alone).
/// </summary>
public static class ThroughputBenchmark
{
    /// <summary>
    /// Fills a new KV cache of <paramref name="contextLength"/> positions with <paramref name="depth"/> tokens (seeded
    /// random ids through the model, in batches of up to 512; untimed): the context a test at depth d runs on, as
    /// llama-bench's <c>-d</c> prefills it. The caller owns the cache.
    /// </summary>
    public static KvCache FillDepth(ModelWeights weights, WorkerPool pool, int depth, int contextLength, KvCacheType kv = KvCacheType.F16)
    {
        var c = weights.Config;
        ArgumentOutOfRangeException.ThrowIfNegative(depth);
        if (depth > contextLength || contextLength > c.ContextLength)
            throw new ArgumentOutOfRangeException(nameof(depth), depth, $"A depth of {depth} in a cache of {contextLength} positions does not fit the model's context of {c.ContextLength}.");
        var cache = new KvCache(c.Layers, c.KvHeads, c.HeadDim, contextLength, kv);
        if (depth == 0) return cache;
        try
        {
            int chunk = Math.Min(depth, 512);
            using var engine = new Transformer(weights, chunk, pool);
            var batch = new BatchToken[chunk];
            var rng = new Random(2);
            for (int p0 = 0; p0 < depth; p0 += chunk)
            {
                int m = Math.Min(chunk, depth - p0);
                for (int i = 0; i < m; i++) batch[i] = new BatchToken(rng.Next(c.VocabSize), 0, p0 + i);
                engine.Forward(batch.AsSpan(0, m), [cache], Span<float>.Empty);
            }
            return cache;
        }
        catch
        {
            cache.Dispose();
            throw;
        }
    }

    /// <summary>Most untimed prompt passes before <see cref="Prefill"/>'s timed ones (besides the first and the last): past
    /// the runtime's two ~30-call promotions of a method to optimized code, for the methods a forward pass calls once.</summary>
    public const int WarmupPasses = 64;

    /// <summary>Longest time the warm-up passes of <see cref="Prefill"/> may take in all (seconds; the quiet spells after them not counted), however few passes that allows.</summary>
    public const double WarmupSeconds = 2.0;

    /// <summary>
    /// Prompt processing: one batch of <paramref name="tokens"/> tokens, logits for the last. With <paramref name="prefix"/>
    /// (from <see cref="FillDepth"/>) the batch continues its positions and every repetition starts from them again (the
    /// cache is truncated back to the prefix); test name "ppN @ dD". <paramref name="attentionShare"/>: one more,
    /// profiled, pass for <see cref="ThroughputSample.AttentionShare"/>.
    /// </summary>
    public static ThroughputSample Prefill(ModelWeights weights, WorkerPool pool, int tokens, int repetitions, KvCacheType kv = KvCacheType.F16,
        KvCache? prefix = null, bool attentionShare = false)
    {
        // As DecodeDepths: 0 repetitions returned a sample whose Mean threw "Sequence contains no elements" later.
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(tokens);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(repetitions);
        var c = weights.Config;
        int depth = prefix?.Length ?? 0;
        if (prefix is not null && (prefix.Type != kv || depth + tokens > prefix.ContextLength))
            throw new ArgumentException($"The prefix cache ({prefix.Type.Name()}, {depth} of {prefix.ContextLength} positions) has no room for {tokens} {kv.Name()} tokens.", nameof(prefix));
        using var engine = new Transformer(weights, tokens, pool);
        var cache = prefix ?? new KvCache(c.Layers, c.KvHeads, c.HeadDim, Math.Min(c.ContextLength, tokens), kv);
        try
        {
            var batch = new BatchToken[tokens];
            var rng = new Random(1);
            for (int i = 0; i < tokens; i++) batch[i] = new BatchToken(rng.Next(c.VocabSize), 0, depth + i, i == tokens - 1);
            var logits = new float[c.VocabSize];
            var samples = new double[repetitions];
            var seconds = new double[repetitions];
            void Run()
            {
                cache.Truncate(depth);
                engine.Forward(batch, [cache], logits);
            }
            Run(); // warm-up: JIT, page faults
            // The runtime promotes a method to optimized code in two rounds of ~30 calls (instrumented, then optimized with
            // the profile), and the ones called once per forward pass get there only after ~60 passes: with two warm-up
            // passes a small model's first pp test was timed in unoptimized code (1823 against 5631 t/s for the same test
            // run third). So two rounds of up to WarmupPasses / 2 passes, each followed by a quiet spell for the
            // recompiles it set off, within WarmupSeconds in all (a large model's passes take seconds, where those
            // calls cost nothing).
            int warmups = 1;
            double passSeconds = 0; // the passes' own time: a quiet spell stretched by other work must not use up the budget
            for (int round = 0; round < 2; round++)
            {
                for (int i = 0; i < WarmupPasses / 2 && passSeconds < WarmupSeconds; i++, warmups++)
                {
                    long pass = Stopwatch.GetTimestamp();
                    Run();
                    passSeconds += Stopwatch.GetElapsedTime(pass).TotalSeconds;
                }
                // The optimized recompiles the passes set off, before the timed runs.
                Profiling.JitQuiet.Settle();
            }
            // One more untimed run, as the first pass after the quiet spell's sleep runs slower (see ProfileSession).
            Run();
            warmups++;
            for (int r = 0; r < repetitions; r++)
            {
                cache.Truncate(depth);
                long start = Stopwatch.GetTimestamp();
                engine.Forward(batch, [cache], logits);
                seconds[r] = Stopwatch.GetElapsedTime(start).TotalSeconds;
                samples[r] = tokens / seconds[r];
            }
            return new ThroughputSample(AtDepth($"pp{tokens}", depth), pool.ThreadCount, samples)
            {
                Tokens = tokens,
                Latency = LatencySummary.Of(seconds),
                Depth = depth,
                WarmupRuns = warmups,
                AttentionShare = attentionShare ? MeasureAttentionShare(engine, pool, c.Layers, Run) : null,
            };
        }
        finally
        {
            if (prefix is null) cache.Dispose();
            else cache.Truncate(depth);
        }
    }

    /// <summary>
    /// Token generation; with <paramref name="sequences"/> &gt; 1, that many sequences decode in lockstep, one batch
    /// of one token per sequence per step (what the server's continuous batching runs), and the figure is the
    /// aggregate: all sequences' tokens per second. Test name "tgN" or "tgN×B". With <paramref name="prefix"/> (from
    /// <see cref="FillDepth"/>), every sequence starts from a copy of it and every repetition from the prefix again;
    /// name "tgN @ dD". <paramref name="attentionShare"/>: one more, profiled, run for <see cref="ThroughputSample.AttentionShare"/>.
    /// </summary>
    public static ThroughputSample Decode(ModelWeights weights, WorkerPool pool, int tokens, int repetitions, KvCacheType kv = KvCacheType.F16, int sequences = 1,
        KvCache? prefix = null, bool attentionShare = false) =>
        DecodeDepths(weights, pool, tokens, repetitions, [prefix], kv, sequences, attentionShare)[0];

    /// <summary>
    /// <see cref="Decode"/> at several depths at once (one prefix per depth, null for an empty context), their
    /// repetitions interleaved: repetition r runs at every depth, in order, before repetition r + 1 runs at any. A
    /// host whose speed drifts (a shared VM) then slows every depth alike, and sample r of one depth pairs with sample
    /// r of another taken in the same seconds: <see cref="PairedRatio"/> of two results is the depth ratio without the
    /// drift between two blocks of runs. One engine serves every depth; each depth keeps its own caches.
    /// <paramref name="onTimedRun"/> is told (depth index, repetition) before each timed run.
    /// </summary>
    public static ThroughputSample[] DecodeDepths(ModelWeights weights, WorkerPool pool, int tokens, int repetitions, IReadOnlyList<KvCache?> prefixes,
        KvCacheType kv = KvCacheType.F16, int sequences = 1, bool attentionShare = false, Action<int, int>? onTimedRun = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(sequences);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(tokens);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(repetitions);
        if (prefixes.Count == 0) throw new ArgumentException("At least one depth (a null prefix for depth 0) is needed.", nameof(prefixes));
        var c = weights.Config;
        int depths = prefixes.Count;
        var depthOf = new int[depths];
        for (int i = 0; i < depths; i++)
        {
            var prefix = prefixes[i];
            depthOf[i] = prefix?.Length ?? 0;
            if (prefix is not null && (prefix.Type != kv || depthOf[i] + tokens > prefix.ContextLength))
                throw new ArgumentException($"The prefix cache ({prefix.Type.Name()}, {depthOf[i]} of {prefix.ContextLength} positions) has no room for {tokens} {kv.Name()} tokens.", nameof(prefixes));
        }
        using var engine = new Transformer(weights, sequences, pool);
        var caches = new KvCache[depths][];
        var logits = new float[(long)sequences * c.VocabSize];
        var batch = new BatchToken[sequences];
        var samples = new double[depths][];
        var steps = new double[depths][];
        void Run(int d, int repetition)
        {
            foreach (var cache in caches[d]) cache.Truncate(depthOf[d]);
            int token = 1;
            long last = Stopwatch.GetTimestamp();
            for (int i = 0; i < tokens; i++)
            {
                for (int s = 0; s < sequences; s++)
                {
                    batch[s] = new BatchToken(token, s, depthOf[d] + i, true);
                    token = (token * 31 + 7) % c.VocabSize;
                }
                engine.Forward(batch, caches[d], logits);
                long now = Stopwatch.GetTimestamp();
                if (repetition >= 0) steps[d][(long)repetition * tokens + i] = (double)(now - last) / Stopwatch.Frequency;
                last = now;
            }
        }
        try
        {
            for (int d = 0; d < depths; d++)
            {
                var prefix = prefixes[d];
                caches[d] = new KvCache[sequences];
                samples[d] = new double[repetitions];
                steps[d] = new double[(long)tokens * repetitions];
                for (int s = 0; s < sequences; s++)
                {
                    if (s == 0 && prefix is not null)
                    {
                        caches[d][0] = prefix;
                        continue;
                    }
                    caches[d][s] = new KvCache(c.Layers, c.KvHeads, c.HeadDim, prefix?.ContextLength ?? Math.Min(c.ContextLength, tokens + 1), kv);
                    if (prefix is not null) caches[d][s].CopyFrom(prefix);
                }
            }
            // Warm-up as Prefill's: the methods called once per step reach optimized code only after ~60 steps, in two
            // rounds of recompiles. Two untimed runs (16 steps at -n 8) left the first timed test to the tier-up: one
            // step of 2.4-4.5 ms, that test at ~1,750 tok/s against ~3,400 for the same test run after it (bundled
            // model, -t 1, `bench -p 0 -n 8 -s 1,1,1`), which skewed depth ratios and A/B ratios towards the side run
            // later. Two rounds of at least WarmupPasses / 2 steps, each followed by a quiet spell, within WarmupSeconds.
            double passSeconds = 0;
            int steps0 = 0;
            for (int round = 0; round < 2; round++)
            {
                do
                {
                    long pass = Stopwatch.GetTimestamp();
                    for (int d = 0; d < depths; d++) Run(d, -1);
                    passSeconds += Stopwatch.GetElapsedTime(pass).TotalSeconds;
                    steps0 += tokens;
                }
                while (steps0 < (round + 1) * WarmupPasses / 2 && passSeconds < WarmupSeconds);
                Profiling.JitQuiet.Settle();
            }
            // One more untimed run, as the first pass after the quiet spell's sleep runs slower (see ProfileSession).
            for (int d = 0; d < depths; d++) Run(d, -1);
            steps0 += tokens;
            for (int r = 0; r < repetitions; r++)
                for (int d = 0; d < depths; d++)
                {
                    onTimedRun?.Invoke(d, r);
                    long start = Stopwatch.GetTimestamp();
                    Run(d, r);
                    samples[d][r] = (double)tokens * sequences / Stopwatch.GetElapsedTime(start).TotalSeconds;
                }
            string name = sequences == 1 ? $"tg{tokens}" : $"tg{tokens}×{sequences}";
            var results = new ThroughputSample[depths];
            for (int d = 0; d < depths; d++)
            {
                int at = d;
                results[d] = new ThroughputSample(AtDepth(name, depthOf[d]), pool.ThreadCount, samples[d], sequences)
                {
                    Tokens = tokens,
                    Latency = LatencySummary.Of(steps[d]),
                    Depth = depthOf[d],
                    WarmupRuns = steps0,
                    AttentionShare = attentionShare ? MeasureAttentionShare(engine, pool, c.Layers, () => Run(at, -1)) : null,
                };
            }
            return results;
        }
        finally
        {
            for (int d = 0; d < depths; d++)
            {
                if (caches[d] is null) continue;
                foreach (var cache in caches[d])
                {
                    if (cache is null) continue;
                    if (ReferenceEquals(cache, prefixes[d])) cache.Truncate(depthOf[d]);
                    else cache.Dispose();
                }
            }
        }
    }

    /// <summary>
    /// The ratio of two results' throughput paired by repetition, sample r of <paramref name="test"/> over sample r of
    /// <paramref name="baseline"/> (taken in the same seconds by <see cref="DecodeDepths"/>): the median of those ratios
    /// and their range. Null when the two do not have the same number of samples.
    /// </summary>
    public static PairedRatio? Paired(ThroughputSample test, ThroughputSample baseline)
    {
        int n = test.TokensPerSecond.Length;
        if (n == 0 || n != baseline.TokensPerSecond.Length) return null;
        var r = new double[n];
        for (int i = 0; i < n; i++) r[i] = test.TokensPerSecond[i] / baseline.TokensPerSecond[i];
        Array.Sort(r);
        double median = n % 2 == 1 ? r[n / 2] : (r[n / 2 - 1] + r[n / 2]) / 2;
        return new PairedRatio(median, r[0], r[n - 1], baseline.Depth);
    }

    private static string AtDepth(string test, int depth) => depth > 0 ? $"{test} @ d{depth}" : test;

    /// <summary>Profiled passes behind <see cref="ThroughputSample.AttentionShare"/>, their median taken.</summary>
    public const int AttentionSharePasses = 3;

    /// <summary>
    /// Attention's share of <paramref name="run"/>'s wall time (summed over layers), with an operation profiler attached:
    /// the median of <see cref="AttentionSharePasses"/> passes (one pass preempted inside attention on a busy host read
    /// 70 % beside a row whose speed said a few percent). What the profiler's timestamps cost is what
    /// <c>bench --profile-ab</c> measures.
    /// </summary>
    private static double MeasureAttentionShare(Transformer engine, WorkerPool pool, int layers, Action run)
    {
        Span<double> shares = stackalloc double[AttentionSharePasses];
        for (int pass = 0; pass < shares.Length; pass++)
        {
            var stats = new OpStats(layers);
            engine.Profiler = new OpProfiler(layers, pool.ThreadCount) { Stats = stats };
            long start = Stopwatch.GetTimestamp();
            try
            {
                run();
            }
            finally
            {
                engine.Profiler = null;
            }
            long wall = Stopwatch.GetTimestamp() - start;
            long attention = 0;
            for (int l = 0; l < layers; l++) attention += stats.Ticks[OpStats.Index(ProfileOp.Attention, l)];
            shares[pass] = wall > 0 ? (double)attention / wall : 0;
        }
        shares.Sort();
        return shares[shares.Length / 2];
    }

    /// <summary>
    /// Decode with model-health collection off and on, in alternating repetitions of one run (so host drift hits both
    /// alike): "off" runs the bare forward pass; "on" attaches a <see cref="Monitoring.ModelHealthCollector"/> measuring every
    /// <paramref name="sampleEvery"/>-th step and does what the server does per step — the NaN/Inf scan of every
    /// logits row, the logits statistics on sampled steps, and publishing. Returns (off, on).
    /// </summary>
    public static (ThroughputSample Off, ThroughputSample On) DecodeHealthAB(ModelWeights weights, WorkerPool pool, int tokens, int repetitions,
        int sampleEvery, KvCacheType kv = KvCacheType.F16, int sequences = 1)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(sequences);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(tokens);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(repetitions);
        ArgumentOutOfRangeException.ThrowIfNegative(sampleEvery);
        var c = weights.Config;
        using var engine = new Transformer(weights, sequences, pool);
        using var health = new Monitoring.ModelHealthCollector(c, sequences) { SampleEvery = sampleEvery };
        var caches = new KvCache[sequences];
        for (int s = 0; s < sequences; s++) caches[s] = new KvCache(c.Layers, c.KvHeads, c.HeadDim, Math.Min(c.ContextLength, tokens + 1), kv);
        var logits = new float[(long)sequences * c.VocabSize];
        var batch = new BatchToken[sequences];
        var off = new double[repetitions];
        var on = new double[repetitions];
        double Run(bool watched)
        {
            engine.Health = watched ? health : null;
            foreach (var cache in caches) cache.Clear();
            int token = 1;
            long start = Stopwatch.GetTimestamp();
            for (int i = 0; i < tokens; i++)
            {
                for (int s = 0; s < sequences; s++)
                {
                    batch[s] = new BatchToken(token, s, i, true);
                    token = (token * 31 + 7) % c.VocabSize;
                }
                engine.Forward(batch, caches, logits);
                if (!watched) continue;
                for (int s = 0; s < sequences; s++)
                {
                    var row = logits.AsSpan(s * c.VocabSize, c.VocabSize);
                    if (Monitoring.LogitStats.CountNonFinite(row) > 0) throw new InvalidOperationException("The benchmark model produced non-finite logits.");
                    if (health.Sampling) health.AddLogits(Monitoring.LogitStats.Compute(row));
                }
                health.Publish();
            }
            return (double)tokens * sequences / Stopwatch.GetElapsedTime(start).TotalSeconds;
        }
        try
        {
            Run(false); // warm-up, both paths
            Run(true);
            for (int r = 0; r < repetitions; r++)
            {
                // Alternate which goes first, so neither always follows the other.
                if (r % 2 == 0) { off[r] = Run(false); on[r] = Run(true); }
                else { on[r] = Run(true); off[r] = Run(false); }
            }
        }
        finally
        {
            foreach (var cache in caches) cache.Dispose();
        }
        string name = sequences == 1 ? $"tg{tokens}" : $"tg{tokens}×{sequences}";
        return (new ThroughputSample(name + " health off", pool.ThreadCount, off, sequences) { Tokens = tokens },
            new ThroughputSample(name + (sampleEvery > 0 ? $" health 1/{sampleEvery}" : " health checks"), pool.ThreadCount, on, sequences) { Tokens = tokens });
    }

    /// <summary>
    /// Decode with the profiler off and on, in alternating repetitions of one run: "on" attaches what <c>bitnet
    /// profile</c> attaches — the operation timer with its table, the span log and the pool's chunk timeline — sized
    /// before the timed runs so recording allocates nothing. Returns (off, on).
    /// </summary>
    public static (ThroughputSample Off, ThroughputSample On) DecodeProfileAB(ModelWeights weights, WorkerPool pool, int tokens, int repetitions,
        KvCacheType kv = KvCacheType.F16)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(tokens);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(repetitions);
        var c = weights.Config;
        using var engine = new Transformer(weights, 1, pool);
        using var cache = new KvCache(c.Layers, c.KvHeads, c.HeadDim, Math.Min(c.ContextLength, tokens + 1), kv);
        var profiler = new OpProfiler(c.Layers, pool.ThreadCount) { Stats = new OpStats(c.Layers) };
        var spans = new SpanLog(4096);
        var chunks = new ChunkTimeline(pool.ThreadCount, 4096);
        var logits = new float[c.VocabSize];
        var batch = new BatchToken[1];
        var off = new double[repetitions];
        var on = new double[repetitions];
        double Run(bool profiled)
        {
            engine.Profiler = profiled ? profiler : null;
            pool.Timeline = profiled ? chunks : null;
            (profiler.Trace, profiler.Timeline) = (spans, chunks);
            spans.Clear();
            chunks.Clear();
            cache.Clear();
            int token = 1;
            long start = Stopwatch.GetTimestamp();
            for (int i = 0; i < tokens; i++)
            {
                batch[0] = new BatchToken(token, 0, i, true);
                token = (token * 31 + 7) % c.VocabSize;
                engine.Forward(batch, [cache], logits);
            }
            double tps = tokens / Stopwatch.GetElapsedTime(start).TotalSeconds;
            engine.Profiler = null;
            pool.Timeline = null;
            return tps;
        }
        Run(false); // warm-up, both paths; then the logs are sized to what one run records
        Run(true);
        spans.Reserve(spans.Count + (int)spans.Dropped + 64);
        chunks.Reserve(chunks.MaxCount + (int)chunks.Dropped + 64);
        for (int r = 0; r < repetitions; r++)
        {
            if (r % 2 == 0) { off[r] = Run(false); on[r] = Run(true); }
            else { on[r] = Run(true); off[r] = Run(false); }
        }
        return (new ThroughputSample($"tg{tokens} profile off", pool.ThreadCount, off) { Tokens = tokens }, new ThroughputSample($"tg{tokens} profile on", pool.ThreadCount, on) { Tokens = tokens });
    }

    /// <summary>Weight bytes a decode step must read from memory: every projection (as <paramref name="kernel"/> reads it:
    /// the lookup kernel from its own, smaller layout), the head, one embedding row and the norms (the KV cache a step
    /// reads depends on the depth: <see cref="ThroughputSample.KvBytesPerStep"/>). <paramref name="tokens"/>: the products'
    /// token count (a step of n sequences: n), which decides the layout the lookup kernel reads (its own up to a few
    /// tokens, the int8 kernel's 2-bit one past them).</summary>
    public static long BytesPerToken(ModelWeights w, Kernels.TernaryKernel? kernel = null, int tokens = 1)
    {
        long bytes = w.Output.ByteLength + w.TokenEmbedding.RowBytes + w.OutputNorm.Length * 4L;
        foreach (var l in w.Layers)
        {
            bytes += kernel is null ? l.PackedBytes
                : kernel.BytesRead(l.Q, tokens) + kernel.BytesRead(l.K, tokens) + kernel.BytesRead(l.V, tokens) + kernel.BytesRead(l.O, tokens)
                  + kernel.BytesRead(l.Gate, tokens) + kernel.BytesRead(l.Up, tokens) + kernel.BytesRead(l.Down, tokens);
            bytes += (l.AttnNorm.Length + l.FfnNorm.Length + (l.AttnSubNorm?.Length ?? 0) + (l.FfnSubNorm?.Length ?? 0)) * 4L;
        }
        return bytes;
    }

    /// <summary>Peak resident set size of this process (Linux VmHWM), or null where unavailable.</summary>
    public static long? PeakResidentBytes() => StatusBytes("VmHWM:");

    /// <summary>Resident set size of this process now (Linux VmRSS), or null where unavailable.</summary>
    public static long? ResidentBytes() => StatusBytes("VmRSS:");

    private static long? StatusBytes(string key)
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith(key, StringComparison.Ordinal))
                    return long.Parse(line.AsSpan(key.Length).Trim().TrimEnd("kB").Trim()) * 1024;
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
        return null;
    }
}
