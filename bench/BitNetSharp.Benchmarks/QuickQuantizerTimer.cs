using System.Diagnostics;
using System.Runtime.Intrinsics;
using BitNetSharp.Kernels;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// `quick-quant` mode: the int8 activation quantizer against the pre-#15 one (fp32 x·s_x rounded, no tie check; kept
/// below as the baseline) in one process, alternating rounds so both see the same machine load. Prints ns per row and
/// the ratio for 2B4T's row widths, on uniform activations and on bf16-rounded ones (where exact ties occur), and the
/// exact quantizer's 256-bit path beside the widest one this CPU takes.
/// </summary>
public static unsafe class QuickQuantizerTimer
{
    public static void Run()
    {
        Console.WriteLine($"int8 activation quantizer, ns per row (min of 7 alternating rounds); Vector256 {Vector256.IsHardwareAccelerated}, Vector512 {Vector512.IsHardwareAccelerated}");
        foreach (int n in new[] { 2560, 6912 })
        foreach (bool bf16 in new[] { false, true })
        {
            var rng = new Random(n);
            const int rows = 64;
            var x = new float[rows * n];
            for (int i = 0; i < x.Length; i++)
            {
                float v = (float)((rng.NextDouble() + rng.NextDouble() + rng.NextDouble() - 1.5) * 2);
                x[i] = bf16 ? BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(v) & unchecked((int)0xFFFF0000)) : v;
            }
            var q = new sbyte[n];
            double bestNew = double.MaxValue, bestOld = double.MaxValue, best256 = double.MaxValue;
            for (int round = 0; round < 7; round++)
            {
                bestOld = Math.Min(bestOld, Time(() => { for (int r = 0; r < rows; r++) Baseline(x.AsSpan(r * n, n), q, out _, out _); }, rows));
                bestNew = Math.Min(bestNew, Time(() => { for (int r = 0; r < rows; r++) Int8ActivationQuantizer.Quantize(x.AsSpan(r * n, n), q, out _, out _); }, rows));
                best256 = Math.Min(best256, Time(() => { for (int r = 0; r < rows; r++) Int8ActivationQuantizer.Quantize(x.AsSpan(r * n, n), q, out _, out _, 256); }, rows));
            }
            Console.WriteLine($"  n={n,5} {(bf16 ? "bf16" : "fp32"),4}: exact {bestNew,8:F0} ns (256-bit path {best256,8:F0} ns)  fp32-only {bestOld,8:F0} ns  ratio {bestNew / bestOld:F3}");
        }
    }

    private static double Time(Action pass, int rows)
    {
        pass();
        int passes = 0;
        var sw = Stopwatch.StartNew();
        while (sw.ElapsedMilliseconds < 150) { pass(); passes++; }
        return sw.Elapsed.TotalNanoseconds / ((double)passes * rows);
    }

    /// <summary>The quantizer before issue #15 (its AVX2 path): q = round(x · fl(127/γ)) in fp32, which misses exact ties.</summary>
    private static void Baseline(ReadOnlySpan<float> x, Span<sbyte> q, out float scale, out int sum)
    {
        float s = Int8ActivationQuantizer.ScaleFor(BaselineAbsMax(x));
        scale = s;
        int n = x.Length, i = 0;
        sum = 0;
        fixed (float* px = x)
        fixed (sbyte* pq = q)
        {
            var vs = Vector256.Create(s);
            var lo = Vector256.Create(-128);
            var hi = Vector256.Create(127);
            var acc = Vector256<int>.Zero;
            for (; i <= n - 32; i += 32)
            {
                var a = Vector256.Clamp(Vector256.ConvertToInt32(Vector256.Round(Vector256.Load(px + i) * vs)), lo, hi);
                var b = Vector256.Clamp(Vector256.ConvertToInt32(Vector256.Round(Vector256.Load(px + i + 8) * vs)), lo, hi);
                var c = Vector256.Clamp(Vector256.ConvertToInt32(Vector256.Round(Vector256.Load(px + i + 16) * vs)), lo, hi);
                var d = Vector256.Clamp(Vector256.ConvertToInt32(Vector256.Round(Vector256.Load(px + i + 24) * vs)), lo, hi);
                acc += (a + b) + (c + d);
                Vector256.Narrow(Vector256.Narrow(a, b), Vector256.Narrow(c, d)).Store(pq + i);
            }
            sum = Vector256.Sum(acc);
            for (; i < n; i++)
            {
                int v = Math.Clamp((int)MathF.Round(px[i] * s), -128, 127);
                pq[i] = (sbyte)v;
                sum += v;
            }
        }
    }

    /// <summary>max |x| before #15: one accumulator, so one chain of Max latencies.</summary>
    private static float BaselineAbsMax(ReadOnlySpan<float> x)
    {
        int n = x.Length, i = 0;
        float m = 0f;
        fixed (float* p = x)
        {
            var acc = Vector256<float>.Zero;
            for (; i <= n - 8; i += 8) acc = Vector256.Max(acc, Vector256.Abs(Vector256.Load(p + i)));
            for (int k = 0; k < 8; k++) m = MathF.Max(m, acc[k]);
            for (; i < n; i++) m = MathF.Max(m, MathF.Abs(p[i]));
        }
        return m;
    }
}
