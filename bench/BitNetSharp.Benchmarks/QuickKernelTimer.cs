using System.Diagnostics;
using BitNetSharp.Kernels;
using BitNetSharp.Quantization;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// `quick` mode: a fast development loop (seconds, not minutes) over the same shapes and working-set rule as
/// <see cref="MatVecBenchmarks"/>; tokens = 1 is mat-vec, more is the token-tiled mat-mul. The committed figures
/// come from BenchmarkDotNet, not from here.
/// </summary>
public static unsafe class QuickKernelTimer
{
    public static void Run(int tokens)
    {
        foreach (var shape in new[] { (2560, 2560), (2560, 640), (2560, 6912), (6912, 2560) })
        {
            var (k, n) = shape;
            long packed = (long)n * TernaryMatrix.PadCols(k) / 4;
            int copies = Environment.GetEnvironmentVariable("BITNET_QUICK_HOT") == "1" ? 1 : (int)Math.Max(2, (256L << 20) / packed);
            var rng = new Random(1);
            var ws = new TernaryMatrix[copies];
            for (int c = 0; c < copies; c++)
            {
                ws[c] = TernaryMatrix.Allocate(n, k);
                var span = new Span<byte>(ws[c].Data, (int)ws[c].ByteLength);
                rng.NextBytes(span);
                for (int i = 0; i < span.Length; i++) if ((span[i] & 3) == 3) span[i] &= 0xFE;
            }
            using var x = new QuantizedActivations(tokens, k);
            var xf = new float[k];
            for (int t = 0; t < tokens; t++)
            {
                for (int i = 0; i < k; i++) xf[i] = (float)(rng.NextDouble() - 0.5);
                Int8ActivationQuantizer.Quantize(xf, x, t);
            }
            var y = new float[n * tokens];
            Console.Write($"{k}x{n} T={tokens}:");
            foreach (var kernel in KernelRegistry.SupportedTernary)
            {
                if (kernel.Name == "reference" && tokens > 1) continue;
                fixed (float* py = y)
                {
                    int calls = 0, next = 0;
                    var sw = Stopwatch.StartNew();
                    while (sw.ElapsedMilliseconds < 600)
                    {
                        kernel.MatMul(ws[next], x, py, n, 0, n);
                        next = next + 1 == copies ? 0 : next + 1;
                        calls++;
                    }
                    double seconds = sw.Elapsed.TotalSeconds;
                    Console.Write($"  {kernel.Name} {packed * (double)calls / seconds / 1e9:F1} GB/s ({calls * (double)tokens * n * k / seconds / 1e9:F0} GMAC/s)");
                }
            }
            Console.WriteLine();
            foreach (var w in ws) w.Dispose();
        }
    }
}
