using BitNetSharp.Diagnostics;
using BitNetSharp.Model;
using BitNetSharp.Threading;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// `quick-least-claims MODEL.gguf [rounds] [threads] [tokens]`: decode (int8 KV, depth 0) with the owned ranges' claims
/// shrinking to their least claim at the end of each slice (<see cref="WorkerPool.LeastClaims"/>) and without (the grain
/// as the least), alternating in one process. Prints tok/s per round and the median on/off ratio.
/// </summary>
internal static class QuickLeastClaims
{
    public static void Run(string model, int rounds, int threads, int tokens)
    {
        using var weights = ModelWeights.Load(model, new ModelLoadOptions { ContextLength = tokens + 8 });
        using var pool = new WorkerPool(threads);
        Console.WriteLine($"{model}: {threads} thread(s), tg{tokens}, weights in huge pages: {weights.Gguf?.InHugePages}");
        var ratios = new List<double>();
        for (int r = 0; r < rounds; r++)
        {
            var tps = new double[2];
            foreach (bool on in r % 2 == 0 ? new[] { false, true } : new[] { true, false })
            {
                WorkerPool.LeastClaims = on;
                var s = ThroughputBenchmark.DecodeDepths(weights, pool, tokens, 3, [null], KvCacheType.Int8);
                tps[on ? 1 : 0] = Median(s[0].TokensPerSecond);
            }
            WorkerPool.LeastClaims = true;
            ratios.Add(tps[1] / tps[0]);
            Console.WriteLine($"round {r + 1}: grain as least {tps[0]:F2} tok/s, least claims {tps[1]:F2} (x{tps[1] / tps[0]:F3})");
        }
        var o = ratios.Order().ToList();
        Console.WriteLine($"least claims / grain as least, median of rounds: {o[o.Count / 2]:F3} ({o[0]:F3}-{o[^1]:F3})");
    }

    private static double Median(IEnumerable<double> v)
    {
        var s = v.Order().ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }
}
