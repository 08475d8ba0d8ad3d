using System.Diagnostics;
using BitNetSharp.Kernels;
using BitNetSharp.Quantization;
using BitNetSharp.Threading;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// `quick-product-timeline [layers] [passes] [threads]`: the 2B4T shape's decode mat-vecs (q, k, v, o, gate, up, down
/// per layer, one token, one product at a time as <see cref="TernaryMatMul.Run(TernaryKernel, TernaryMatrix, QuantizedActivations, float*, int)"/>)
/// with the pool's <see cref="ChunkTimeline"/> attached, and where each product's wall time goes, medians per matrix
/// shape in µs: from the call to each thread's first claim (caller, worker), the gap between the two threads' last claims
/// ending, from the last claim's end to the call's return, and each thread's time in claims.
/// </summary>
public static unsafe class QuickProductTimeline
{
    private const int Hidden = 2560, Ffn = 6912;

    public static void Run(int layers, int passes, int threads = 2)
    {
        var rng = new Random(7);
        var ws = QuickDecodeVariants.DecodeMatrices(layers, rng, out long bytes);
        var kernel = KernelRegistry.Ternary;
        using var pool = new WorkerPool(threads);
        using var op = new TernaryMatMul(pool);
        var xh = new QuantizedActivations(1, Hidden); var xf = new QuantizedActivations(1, Ffn);
        var f = new float[Ffn];
        for (int i = 0; i < Ffn; i++) f[i] = (float)(rng.NextDouble() - 0.5);
        Int8ActivationQuantizer.Quantize(f.AsSpan(0, Hidden), xh, 0);
        Int8ActivationQuantizer.Quantize(f, xf, 0);
        var y = new float[Ffn];
        pool.BeginTight();
        var tl = new ChunkTimeline(2, 100000);
        var t0 = new long[ws.Length]; var t1 = new long[ws.Length];
        string[] names = ["q", "k", "v", "o", "gate", "up", "down"];
        var stats = new List<double>[7, 8];
        for (int s = 0; s < 7; s++) for (int j = 0; j < 8; j++) stats[s, j] = new();
        double us(long ticks) => ticks * 1e6 / Stopwatch.Frequency;
        for (int p = 0; p < passes; p++)
        {
            tl.Clear();
            pool.Timeline = p == 0 ? null : tl;
            fixed (float* py = y)
                for (int i = 0; i < ws.Length; i++)
                {
                    var w = ws[i];
                    tl.Tag = i;
                    t0[i] = Stopwatch.GetTimestamp();
                    op.Run(kernel, w, w.Cols == Hidden ? xh : xf, py, w.Rows);
                    t1[i] = Stopwatch.GetTimestamp();
                }
            pool.Timeline = null;
            if (p == 0) continue;
            for (int i = 0; i < ws.Length; i++)
            {
                long[] first = [long.MaxValue, long.MaxValue], last = [0, 0], busy = [0, 0]; int[] n = [0, 0];
                for (int wk = 0; wk < threads; wk++)
                    foreach (var c in tl.Spans(wk))
                        if (c.Tag == i) { first[wk] = Math.Min(first[wk], c.Start); last[wk] = Math.Max(last[wk], c.End); busy[wk] += c.End - c.Start; n[wk]++; }
                if (n[0] == 0 || (threads > 1 && n[1] == 0)) continue;
                int s = i % 7;
                stats[s, 0].Add(us(t1[i] - t0[i]));
                stats[s, 1].Add(us(first[0] - t0[i]));
                stats[s, 2].Add(us(first[1] - t0[i]));
                stats[s, 3].Add(us(Math.Max(last[0], last[1]) - Math.Min(last[0], last[1])));
                stats[s, 4].Add(us(t1[i] - Math.Max(last[0], last[1])));
                stats[s, 5].Add(us(busy[0] + busy[1]) / 2);
                stats[s, 6].Add(us(busy[0]));
                stats[s, 7].Add(us(busy[1]));
            }
        }
        double Med(List<double> v) { var o = v.Order().ToList(); return o.Count == 0 ? double.NaN : o[o.Count / 2]; }
        Console.WriteLine("product: wall | caller start lag | worker start lag | end gap between threads | join after last | mean busy  (medians, us)");
        for (int s = 0; s < 7; s++)
            Console.WriteLine($"{names[s],5}: {Med(stats[s, 0]),6:F1} | {Med(stats[s, 1]),5:F2} | {Med(stats[s, 2]),5:F2} | {Med(stats[s, 3]),5:F2} | {Med(stats[s, 4]),5:F2} | {Med(stats[s, 5]),6:F1} | busy caller {Med(stats[s, 6]),6:F1} worker {Med(stats[s, 7]),6:F1} (n {stats[s, 0].Count})");
    }
}

