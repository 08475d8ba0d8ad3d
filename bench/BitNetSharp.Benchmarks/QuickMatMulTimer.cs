using System.Diagnostics;
using System.Runtime.Intrinsics;
using BitNetSharp.Threading;
using BitNetSharp.Training;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// `quick-matmul [threads]` mode: the trainer's fp32 product (<see cref="MatMulNT"/>) with its 512-bit 4×4 tile against
/// the 256-bit 2×4 tile, in one process with alternating rounds so both see the same machine load. Shapes are one
/// training step's products for a dim-384 / ff-1024 / 4096-token-vocabulary model on 8×256 tokens: forward x·Wᵀ,
/// input gradient, weight gradient (k = tokens), and the tied head. Prints GFLOP/s and the ratio per shape, and the
/// largest difference between the two tiles' results relative to the output's largest magnitude.
/// </summary>
public static unsafe class QuickMatMulTimer
{
    public static void Run(int threads)
    {
        Console.WriteLine($"MatMulNT, GFLOP/s (best of 7 alternating rounds), {threads} thread(s); Vector512 {Vector512.IsHardwareAccelerated}");
        if (!Vector512.IsHardwareAccelerated) { Console.WriteLine("  no 512-bit vectors here: only the 2×4 tile runs"); return; }
        using var pool = new WorkerPool(threads);
        var mm = new MatMulNT(pool);
        (string Name, int M, int N, int K)[] shapes =
        [
            ("forward ff   2048x1024x384", 2048, 1024, 384),
            ("forward down 2048x384x1024", 2048, 384, 1024),
            ("dx          2048x384x1024", 2048, 384, 1024),
            ("dW          1024x384x2048", 1024, 384, 2048),
            ("head        2048x4096x384", 2048, 4096, 384),
        ];
        foreach (var (name, m, n, k) in shapes)
        {
            var rng = new Random(m ^ n ^ k);
            float[] a = Fill(m * k, rng), b = Fill(n * k, rng), c4 = new float[m * n], c2 = new float[m * n];
            double best4 = 0, best2 = 0;
            fixed (float* pa = a, pb = b, p4 = c4, p2 = c2)
            {
                float* ca = pa, cb = pb, o4 = p4, o2 = p2;
                for (int round = 0; round < 7; round++)
                {
                    mm.Use512 = false;
                    best2 = Math.Max(best2, Gflops(() => mm.Run(ca, cb, o2, m, n, k), m, n, k));
                    mm.Use512 = true;
                    best4 = Math.Max(best4, Gflops(() => mm.Run(ca, cb, o4, m, n, k), m, n, k));
                }
            }
            double maxAbs = 0, maxDiff = 0;
            for (int i = 0; i < c4.Length; i++) { maxAbs = Math.Max(maxAbs, Math.Abs(c2[i])); maxDiff = Math.Max(maxDiff, Math.Abs(c4[i] - c2[i])); }
            Console.WriteLine($"  {name}: 4x4/512 {best4,6:F1}  2x4/256 {best2,6:F1}  ratio {best4 / best2:F3}  max|diff|/max|c| {maxDiff / maxAbs:E1}");
        }
    }

    private static float[] Fill(int count, Random rng)
    {
        var x = new float[count];
        for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        return x;
    }

    private static double Gflops(Action pass, int m, int n, int k)
    {
        pass();
        int passes = 0;
        var sw = Stopwatch.StartNew();
        while (sw.ElapsedMilliseconds < 200) { pass(); passes++; }
        return 2.0 * m * n * k * passes / sw.Elapsed.TotalSeconds / 1e9;
    }
}
