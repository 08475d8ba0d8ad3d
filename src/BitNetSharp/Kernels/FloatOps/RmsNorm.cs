using System.Runtime.Intrinsics;

namespace BitNetSharp.Kernels.FloatOps;

/// <summary>
/// RMSNorm as ggml computes it (FORMATS.md §4.2): each square x_i·x_i in fp32, summed in double;
/// mean = (float)(Σ/n); s = 1/sqrtf(mean + eps); y_i = (x_i·s)·w_i in fp32, in that order (ggml's rms_norm then
/// mul). The vector path sums the doubles in lanes, so its Σ can differ from the sequential one in the last
/// bits of a double; after rounding to fp32 the outputs agree with <see cref="Reference"/> to within an ulp.
/// y may alias x.
/// </summary>
public static unsafe class RmsNorm
{
    public static void Apply(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, Span<float> y, float eps) =>
        Apply<WidestVector>(x, weight, y, eps);

    public static void Apply<TWidth>(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, Span<float> y, float eps)
        where TWidth : struct, IVectorWidth
    {
        CheckLengths(x, weight, y);
        if (x.IsEmpty) return;
        fixed (float* px = x)
        fixed (float* pw = weight)
        fixed (float* py = y)
        {
            int n = x.Length;
            float s = InverseRms(SumOfSquares<TWidth>(px, n), n, eps);
            int i = 0;
            if (TWidth.Bits >= 512 && Vector512.IsHardwareAccelerated)
            {
                var vs = Vector512.Create(s);
                for (; i <= n - 16; i += 16) (Vector512.Load(px + i) * vs * Vector512.Load(pw + i)).Store(py + i);
            }
            if (TWidth.Bits >= 256 && Vector256.IsHardwareAccelerated)
            {
                var vs = Vector256.Create(s);
                for (; i <= n - 8; i += 8) (Vector256.Load(px + i) * vs * Vector256.Load(pw + i)).Store(py + i);
            }
            if (TWidth.Bits >= 128 && Vector128.IsHardwareAccelerated)
            {
                var vs = Vector128.Create(s);
                for (; i <= n - 4; i += 4) (Vector128.Load(px + i) * vs * Vector128.Load(pw + i)).Store(py + i);
            }
            for (; i < n; i++) py[i] = px[i] * s * pw[i];
        }
    }

    public static void Reference(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, Span<float> y, float eps)
    {
        CheckLengths(x, weight, y);
        if (x.IsEmpty) return;
        double sum = 0;
        foreach (float v in x) sum += v * v;
        float s = InverseRms(sum, x.Length, eps);
        for (int i = 0; i < x.Length; i++) y[i] = x[i] * s * weight[i];
    }

    private static float InverseRms(double sumOfSquares, int n, float eps)
    {
        float mean = (float)(sumOfSquares / n);
        return 1f / MathF.Sqrt(mean + eps);
    }

    /// <summary>Σ (double)(x_i·x_i), the squares rounded to fp32 first as ggml does.</summary>
    public static double SumOfSquares<TWidth>(float* p, int n) where TWidth : struct, IVectorWidth
    {
        int i = 0;
        double sum = 0;
        if (TWidth.Bits >= 512 && Vector512.IsHardwareAccelerated && n >= 16)
        {
            Vector512<double> a0 = default, a1 = default;
            for (; i <= n - 16; i += 16)
            {
                var v = Vector512.Load(p + i);
                var sq = v * v;
                a0 += Vector512.WidenLower(sq);
                a1 += Vector512.WidenUpper(sq);
            }
            sum = Vector512.Sum(a0 + a1);
        }
        else if (TWidth.Bits >= 256 && Vector256.IsHardwareAccelerated && n >= 8)
        {
            Vector256<double> a0 = default, a1 = default;
            for (; i <= n - 8; i += 8)
            {
                var v = Vector256.Load(p + i);
                var sq = v * v;
                a0 += Vector256.WidenLower(sq);
                a1 += Vector256.WidenUpper(sq);
            }
            sum = Vector256.Sum(a0 + a1);
        }
        else if (TWidth.Bits >= 128 && Vector128.IsHardwareAccelerated && n >= 4)
        {
            Vector128<double> a0 = default, a1 = default;
            for (; i <= n - 4; i += 4)
            {
                var v = Vector128.Load(p + i);
                var sq = v * v;
                a0 += Vector128.WidenLower(sq);
                a1 += Vector128.WidenUpper(sq);
            }
            sum = Vector128.Sum(a0 + a1);
        }
        for (; i < n; i++) sum += p[i] * p[i];
        return sum;
    }

    private static void CheckLengths(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, Span<float> y)
    {
        if (weight.Length != x.Length || y.Length != x.Length)
            throw new ArgumentException($"RMSNorm lengths differ: x {x.Length}, weight {weight.Length}, y {y.Length}.", nameof(y));
    }
}
