using System.Diagnostics;
using BitNetSharp.Kernels.FloatOps;
using BitNetSharp.Model;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// `quick-small-attention [positions] [types, default f16,int8]`: one layer's attention at a short depth, piece by piece
/// (the KV write of one position, the scores, the softmax, the weighted sum of V), in cache, ns a layer: the bundled
/// model's shape (6 heads on 2 kv heads of 64, groups of three), or with SMALL_2B4T=1 the 2B4T shape (20 on 5 of 128).
/// Where a short context's attention time goes, which the long-context benchmarks do not show.
/// </summary>
internal static class QuickSmallAttention
{
    public static void Run(int positions, KvCacheType type, int heads = 6, int kvHeads = 2, int hd = 64)
    {
        int group = heads / kvHeads, stride = positions;
        using var cache = new KvCache(1, kvHeads, hd, Math.Max(256, positions), type);
        var rng = new Random(3);
        var k = new float[kvHeads * hd]; var v = new float[kvHeads * hd];
        for (int p = 0; p < positions; p++)
        {
            for (int i = 0; i < k.Length; i++) { k[i] = (float)(rng.NextDouble() * 2 - 1); v[i] = (float)(rng.NextDouble() * 2 - 1); }
            cache.Write(0, p, k, v);
        }
        var q = new float[heads * hd];
        for (int i = 0; i < q.Length; i++) q[i] = (float)(rng.NextDouble() * 2 - 1);
        var scores = new float[group * stride];
        var output = new float[group * hd];
        float scale = 1f / MathF.Sqrt(hd);
        double Time(Action a)
        {
            for (int i = 0; i < 1000; i++) a();
            double best = double.MaxValue;
            for (int r = 0; r < 9; r++)
            {
                long t0 = Stopwatch.GetTimestamp();
                for (int i = 0; i < 2000; i++) a();
                best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalNanoseconds / 2000);
            }
            return best;
        }
        for (int round = 0; round < 3; round++)
        {
            double w = Time(() => cache.Write(0, positions - 1, k, v));
            double s = Time(() => { for (int h = 0; h < kvHeads; h++) cache.ScoresGroup(0, h, q.AsSpan(h * group * hd, group * hd), group, scores, stride, positions, scale); });
            double x = Time(() => { for (int h = 0; h < kvHeads; h++) for (int g = 0; g < group; g++) Softmax.AttentionInPlace(scores.AsSpan(g * stride, positions)); });
            double o = Time(() => { for (int h = 0; h < kvHeads; h++) { output.AsSpan().Clear(); cache.AccumulateVGroup(0, h, scores, group, stride, output, positions); } });
            Console.WriteLine($"{type} {positions} positions, {kvHeads} kv heads x {group} queries x {hd}: ns a layer: write {w:F0}  scores {s:F0}  softmax {x:F0}  values {o:F0}  sum {w + s + x + o:F0}");
        }
    }
}
