using BitNetSharp.Diagnostics;
using BitNetSharp.Memory;
using BitNetSharp.Model;
using BitNetSharp.Threading;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// `quick-kv-pages MODEL.gguf [depth] [rounds] [threads]`: decode (tg32, int8 KV) at depth 0 and at the depth with the
/// KV caches (and the engine's buffers) in 4 KiB pages and in 2 MiB pages (<see cref="HugePages.Enabled"/> while they
/// are allocated), alternating in one process; the weights as <see cref="WeightPages.Auto"/> loads them. Prints tok/s per
/// round and the huge/small ratio at each depth.
/// </summary>
internal static class QuickKvPages
{
    public static void Run(string model, int depth, int rounds, int threads)
    {
        using var weights = ModelWeights.Load(model, new ModelLoadOptions { ContextLength = depth + 64 });
        using var pool = new WorkerPool(threads);
        using var prefix = ThroughputBenchmark.FillDepth(weights, pool, depth, depth + 64, KvCacheType.Int8);
        Console.WriteLine($"weights in huge pages: {weights.Gguf?.InHugePages}; depth {depth}, {threads} thread(s)");
        var ratios0 = new List<double>();
        var ratiosD = new List<double>();
        for (int r = 0; r < rounds; r++)
        {
            var tps = new double[2, 2];
            foreach (bool huge in new[] { false, true })
            {
                HugePages.Enabled = huge;
                var s = ThroughputBenchmark.DecodeDepths(weights, pool, 32, 3, [null, prefix], KvCacheType.Int8);
                HugePages.Enabled = false;
                tps[huge ? 1 : 0, 0] = Median(s[0].TokensPerSecond);
                tps[huge ? 1 : 0, 1] = Median(s[1].TokensPerSecond);
            }
            ratios0.Add(tps[1, 0] / tps[0, 0]);
            ratiosD.Add(tps[1, 1] / tps[0, 1]);
            Console.WriteLine($"round {r + 1}: 4 KiB d0 {tps[0, 0]:F2} d{depth} {tps[0, 1]:F2} (x{tps[0, 1] / tps[0, 0]:F3}) | 2 MiB d0 {tps[1, 0]:F2} d{depth} {tps[1, 1]:F2} (x{tps[1, 1] / tps[1, 0]:F3})");
        }
        Console.WriteLine($"2 MiB / 4 KiB KV pages, median of rounds: d0 {Median(ratios0):F3} ({ratios0.Min():F3}-{ratios0.Max():F3}), d{depth} {Median(ratiosD):F3} ({ratiosD.Min():F3}-{ratiosD.Max():F3})");
    }

    private static double Median(IReadOnlyList<double> v)
    {
        var s = v.OrderBy(x => x).ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }
}
