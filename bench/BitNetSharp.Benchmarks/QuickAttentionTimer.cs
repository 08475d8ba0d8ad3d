using System.Diagnostics;
using BitNetSharp.Diagnostics;
using BitNetSharp.Diagnostics.Profiling;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Model;
using BitNetSharp.Threading;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// `quick-attention [depth] [threads...]` mode: one decode step's attention over a long context on the 2B4T attention
/// shape (20 query heads on 5 KV heads of 128), per KV-cache type, with the chunks of the context spread over the
/// threads (Transformer.AttentionChunk 256) against one pass per KV head (the chunk as long as the context), in one
/// process with alternating rounds. The model is the 2B4T shape cut to 4 layers (QUICK_ATTENTION_LAYERS=30 for all of
/// them, so the cache no longer fits the L3 and comes from memory) with a small feed-forward and
/// vocabulary; the cache is filled by writing random K/V rows (no prefill). Attention time per layer is the operation
/// profiler's attention time (KV write and attention over the cached positions) per step, divided by the layers; the cache bytes it read per second are compared
/// with this machine's read bandwidth at the same thread count (<see cref="MemoryBandwidth"/>, best pattern).
/// </summary>
public static class QuickAttentionTimer
{
    /// <summary>
    /// QUICK_ATTENTION_AB=values: the weighted sum with its steady value prefetch stream and with the
    /// first-pass prefetch before it (<see cref="BitNetSharp.Kernels.AttentionKernels.StreamValues"/>), alternating, instead
    /// of split against whole.
    /// </summary>
    private static readonly bool Ab = Environment.GetEnvironmentVariable("QUICK_ATTENTION_AB") == "values";

    /// <summary>
    /// QUICK_ATTENTION_CHUNKS=256,1024,8192: the engine at each of these chunk lengths (Transformer.AttentionChunk),
    /// alternating rounds, instead of split against whole: how the time grows with the number of chunks.
    /// </summary>
    private static readonly int[] Chunks = Array.ConvertAll((Environment.GetEnvironmentVariable("QUICK_ATTENTION_CHUNKS") ?? "")
        .Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries), int.Parse);

    private static readonly int Layers = int.TryParse(Environment.GetEnvironmentVariable("QUICK_ATTENTION_LAYERS"), out int l) ? l : 4;

    /// <summary>QUICK_ATTENTION_TYPES=int8,f16 (names of <see cref="KvCacheType"/>, any case): only those types; default all.</summary>
    private static readonly KvCacheType[] Types = (Environment.GetEnvironmentVariable("QUICK_ATTENTION_TYPES") ?? "")
        .Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) is { Length: > 0 } names
        ? Array.ConvertAll(names, n => Enum.Parse<KvCacheType>(n, ignoreCase: true))
        : Enum.GetValues<KvCacheType>();

    public static void Run(int depth, int[] threadCounts)
    {
        if (Environment.GetEnvironmentVariable("QUICK_ATTENTION_HUGEPAGES") == "1") BitNetSharp.Memory.HugePages.Enabled = true;
        var shape = new SyntheticShape("2b4t-attention", 2560, Layers, 20, 5, 256, 512, depth + 16);
        using var weights = ModelWeights.FromGguf(GgufFile.Parse(SyntheticModel.Build(shape, 1, GgmlType.F16).ToArray(), "attention.gguf"), ownsFile: true);
        var c = weights.Config;
        Console.WriteLine($"attention at depth {depth}, 2B4T heads (20 q / 5 kv × {c.HeadDim}); ms per layer = the profiler's attention time per step / {Layers} (median of 15 steps), best of 5 alternating rounds");
        foreach (int threads in threadCounts)
        {
            using var pool = new WorkerPool(threads);
            double bound; // GB/s
            using (var probe = new MemoryBandwidth()) bound = probe.Measure(pool);
            Console.WriteLine($"{threads} thread(s): read bound {bound:F1} GB/s");
            foreach (var type in Types)
            {
                using var cache = new KvCache(c.Layers, c.KvHeads, c.HeadDim, c.ContextLength, type);
                Fill(cache, depth);
                using var split = new Transformer(weights, 1, pool); // the default chunk (256)
                using var whole = new Transformer(weights, 1, pool) { AttentionChunk = c.ContextLength };
                double bestSplit = double.MaxValue, bestWhole = double.MaxValue;
                var logits = new float[c.VocabSize];
                if (Ab)
                {
                    // The weighted sum's value prefetch, the steady stream (on) against the first-pass hints (off), alternating rounds.
                    double on = double.MaxValue, off = double.MaxValue;
                    for (int round = 0; round < 7; round++)
                    {
                        BitNetSharp.Kernels.AttentionKernels.StreamValues = false;
                        off = Math.Min(off, AttentionSeconds(split, cache, depth, logits));
                        BitNetSharp.Kernels.AttentionKernels.StreamValues = true;
                        on = Math.Min(on, AttentionSeconds(split, cache, depth, logits));
                    }
                    Console.WriteLine($"  {type,-8} values streamed on {on * 1e3 / Layers,7:F3} ms  off {off * 1e3 / Layers,7:F3} ms  speed {off / on:F2}x");
                    continue;
                }
                if (Chunks.Length > 0)
                {
                    var engines = Array.ConvertAll(Chunks, n => new Transformer(weights, 1, pool) { AttentionChunk = n });
                    var best = new double[Chunks.Length];
                    Array.Fill(best, double.MaxValue);
                    for (int round = 0; round < 7; round++)
                        for (int e = 0; e < engines.Length; e++) best[e] = Math.Min(best[e], AttentionSeconds(engines[e], cache, depth, logits));
                    foreach (var e in engines) e.Dispose();
                    Console.Write($"  {type,-8} ms a layer by chunk:");
                    for (int e = 0; e < Chunks.Length; e++) Console.Write($"  {Chunks[e]} {best[e] * 1e3 / Layers:F3}");
                    Console.WriteLine();
                    continue;
                }
                for (int round = 0; round < 5; round++)
                {
                    bestWhole = Math.Min(bestWhole, AttentionSeconds(whole, cache, depth, logits));
                    bestSplit = Math.Min(bestSplit, AttentionSeconds(split, cache, depth, logits));
                }
                long bytes = KvCache.BytesFor(1, c.KvHeads, c.HeadDim, depth, type); // one layer's K and V (and scales) over the depth
                Console.WriteLine($"  {type,-8} split {bestSplit * 1e3 / Layers,7:F3} ms  whole {bestWhole * 1e3 / Layers,7:F3} ms  split/whole speed {bestWhole / bestSplit:F2}x  " +
                    $"split reads {bytes * Layers / bestSplit / 1e9,5:F1} GB/s = {bytes * Layers / bestSplit / 1e9 / bound:F2} of the bound");
            }
        }
    }

    /// <summary>Random K/V rows at positions [0, depth) of every layer.</summary>
    private static void Fill(KvCache cache, int depth)
    {
        var rng = new Random(3);
        var k = new float[cache.KvDim];
        var v = new float[cache.KvDim];
        for (int p = 0; p < depth; p++)
        {
            // Small keys keep the scores within a few units of each other, as a trained model's are: no softmax weight
            // underflows to 0 (a zero weight skips its V row, which would make the timing depend on the random data).
            // Their magnitudes (1e-4 to 2e-4) stay normal numbers in fp16: keys of ±1e-7 were fp16 subnormals, which
            // an Ice Lake core handles about 25× slower (a microcode assist, by all appearances): the F16 rows read
            // 0.3 GB/s there, a cost of the data, not of the kernel.
            for (int i = 0; i < k.Length; i++)
            {
                double magnitude = 1e-4 + rng.NextDouble() * 1e-4;
                k[i] = (float)(rng.Next(2) == 0 ? magnitude : -magnitude);
                v[i] = (float)(rng.NextDouble() * 4 - 2);
            }
            for (int l = 0; l < cache.Layers; l++) cache.Write(l, p, k, v);
        }
    }

    /// <summary>
    /// The median over 15 steps at position <paramref name="depth"/> (the cache truncated back every time) of the
    /// profiler's attention time summed over the layers: the KV write and the attention over the cached positions,
    /// nothing else of the step.
    /// </summary>
    private static double AttentionSeconds(Transformer engine, KvCache cache, int depth, float[] logits)
    {
        var stats = new OpStats(Layers);
        engine.Profiler = new OpProfiler(Layers, engine.Pool.ThreadCount) { Stats = stats };
        var times = new double[15];
        try
        {
            for (int i = 0; i < times.Length; i++)
            {
                cache.Truncate(depth);
                long before = 0, after = 0;
                for (int l = 0; l < Layers; l++) before += stats.Ticks[OpStats.Index(ProfileOp.Attention, l)];
                engine.Forward([new BatchToken(7, 0, depth, true)], [cache], logits);
                for (int l = 0; l < Layers; l++) after += stats.Ticks[OpStats.Index(ProfileOp.Attention, l)];
                times[i] = (double)(after - before) / Stopwatch.Frequency;
            }
        }
        finally
        {
            engine.Profiler = null;
        }
        Array.Sort(times);
        return times[times.Length / 2];
    }
}
