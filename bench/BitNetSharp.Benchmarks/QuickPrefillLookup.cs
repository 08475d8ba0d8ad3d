using System.Diagnostics;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Kernels;
using BitNetSharp.Model;
using BitNetSharp.Threading;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// `quick-prefill [tokens] [rounds] [threads...]`: the prefill of a <c>tokens</c>-token prompt through whole synthetic
/// models 384 to 2560 wide (<see cref="Transformer.Forward"/>, int8 KV cache), by lookup
/// (<see cref="LutTernaryKernel.LookupPrefill"/>: tables per thread, products split by tokens) against the int8 tiles of
/// the best AVX-512 kernel, alternated round by round in one process; median tok/s of each and their ratio, after
/// checking that both give the same logits. Where the lookup wins decides which models
/// <see cref="KernelRegistry.ForModel"/> prefill by lookup.
/// </summary>
public static class QuickPrefillLookup
{
    public static void Run(int tokens, int rounds, int[] threadCounts)
    {
        var lookup = new LutTernaryKernel(lookupPrefill: true);
        if (!lookup.IsSupported)
        {
            Console.WriteLine("quick-prefill: the lookup kernel needs AVX-512BW; this CPU has none.");
            return;
        }
        TernaryKernel tiles = System.Runtime.Intrinsics.X86.Gfni.V512.IsSupported ? new Avx512GfniTernaryKernel() : new Avx512TernaryKernel();
        Console.WriteLine($"prefill of {tokens} tokens: lookup (tables per thread) vs {tiles.Name} tiles, median tok/s of {rounds} rounds");
        SyntheticShape[] shapes =
        [
            new("w384", 384, 6, 6, 2, 1024, 4096, 512),  // the bundled model's shape
            new("w768", 768, 4, 12, 4, 2048, 4096, 512),
            new("w1024", 1024, 4, 16, 4, 2816, 4096, 512),
            new("w1536", 1536, 2, 16, 4, 4096, 4096, 512),
            new("w2560", 2560, 2, 20, 5, 6912, 4096, 512), // 2B4T's layers
        ];
        foreach (var shape in shapes)
        {
            using var weights = ModelWeights.FromGguf(GgufFile.Parse(SyntheticModel.Build(shape, 1, GgmlType.F16).ToArray(), shape.Name + ".gguf"), ownsFile: true);
            long ternary = weights.TernaryBytes;
            foreach (int threads in threadCounts)
            {
                using var pool = new WorkerPool(threads);
                using var a = new Transformer(weights, tokens, pool, lookup);
                using var b = new Transformer(weights, tokens, pool, tiles);
                var c = weights.Config;
                using var cache = new KvCache(c.Layers, c.KvHeads, c.HeadDim, c.ContextLength, KvCacheType.Int8);
                var batch = new BatchToken[tokens];
                for (int t = 0; t < tokens; t++) batch[t] = new BatchToken(1 + t * 37 % (c.VocabSize - 1), 0, t, t == tokens - 1);
                var la = new float[c.VocabSize];
                var lb = new float[c.VocabSize];
                double Prefill(Transformer m, float[] logits)
                {
                    int n = 0;
                    var clock = Stopwatch.StartNew();
                    do
                    {
                        cache.Clear();
                        m.Forward(batch, [cache], logits);
                        n++;
                    }
                    while (clock.Elapsed.TotalSeconds < 0.3);
                    return n * (double)tokens / clock.Elapsed.TotalSeconds;
                }
                Prefill(a, la);
                Prefill(b, lb);
                if (!la.AsSpan().SequenceEqual(lb)) throw new InvalidOperationException($"{shape.Name}: lookup and tiles give different logits");
                var ra = new List<double>();
                var rb = new List<double>();
                for (int r = 0; r < rounds; r++)
                {
                    ra.Add(Prefill(a, la));
                    rb.Add(Prefill(b, lb));
                }
                ra.Sort();
                rb.Sort();
                double ma = ra[ra.Count / 2], mb = rb[rb.Count / 2];
                Console.WriteLine($"  {shape.Name,-6} ({ternary / 1048576.0 / c.Layers,5:F2} MB of projections a layer), {threads} thread(s): lookup {ma,8:F0}  tiles {mb,8:F0} tok/s  lookup/tiles {ma / mb:F2}");
            }
        }
    }
}
