using System.Diagnostics;
using BitNetSharp.Kernels.FloatOps;
using BitNetSharp.Model;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// `quick-gqa [positions] [headDim] [kvHeads]`: one layer's decode attention through <see cref="KvCache"/>'s group entry
/// points (scores, softmax, weighted sum of V; the calls the Transformer makes per kv head), rows in cache, for every KV
/// type and GQA group sizes 1, 2, 3, 4 and 8 — µs a layer for each part (best of 5 runs of 20,000 calls). The default
/// shape is the bundled model's (head dim 64, two kv heads, three queries each) at 132 cached positions.
/// </summary>
public static class QuickGqaAttention
{
    public static void Run(int positions, int headDim, int kvHeads)
    {
        Console.WriteLine($"decode attention of one layer, {kvHeads} kv heads × head dim {headDim}, {positions} cached positions, rows in cache; µs a layer (best of 5 × 20,000)");
        int ctx = Math.Max(positions, 16);
        foreach (var type in new[] { KvCacheType.F16, KvCacheType.Int8, KvCacheType.Fp8E4M3, KvCacheType.F32 })
        {
            using var cache = new KvCache(1, kvHeads, headDim, ctx, type);
            var rng = new Random(1);
            var k = new float[kvHeads * headDim];
            var v = new float[kvHeads * headDim];
            for (int p = 0; p < positions; p++)
            {
                for (int i = 0; i < k.Length; i++) { k[i] = (float)rng.NextDouble() - 0.5f; v[i] = (float)rng.NextDouble() - 0.5f; }
                cache.Write(0, p, k, v);
            }
            foreach (int group in new[] { 1, 2, 3, 4, 8 })
            {
                var q = new float[group * headDim];
                for (int i = 0; i < q.Length; i++) q[i] = (float)rng.NextDouble() - 0.5f;
                var scores = new float[group * ctx];
                var o = new float[group * headDim];
                float scale = 1f / MathF.Sqrt(headDim);
                void Scores() { for (int h = 0; h < kvHeads; h++) cache.ScoresGroup(0, h, q, group, scores, ctx, positions, scale); }
                void Softmaxes() { for (int h = 0; h < kvHeads; h++) for (int g = 0; g < group; g++) Softmax.AttentionInPlace(scores.AsSpan(g * ctx, positions)); }
                void Sums() { for (int h = 0; h < kvHeads; h++) { Array.Clear(o); cache.AccumulateVGroup(0, h, scores, group, ctx, o, positions); } }
                Scores();
                Softmaxes();
                double s = Time(Scores), x = Time(Softmaxes), a = Time(Sums);
                Console.WriteLine($"  {type,-8} group {group}: scores {s,6:F2}  softmax {x,5:F2}  V sums {a,6:F2}  all {s + x + a,6:F2} µs  ({(s + x + a) / group / kvHeads:F2} a query head)");
            }
        }
    }

    private static double Time(Action a)
    {
        for (int i = 0; i < 20000; i++) a();
        double best = double.MaxValue;
        for (int r = 0; r < 5; r++)
        {
            var clock = Stopwatch.StartNew();
            for (int i = 0; i < 20000; i++) a();
            best = Math.Min(best, clock.Elapsed.TotalMicroseconds / 20000);
        }
        return best;
    }
}
