using System.Runtime.Intrinsics;

namespace BitNetSharp.Kernels.FloatOps;

/// <summary>
/// In-place softmax in fp32 (FORMATS.md §4.2 step 4): subtract the maximum, exponentiate, multiply by 1/Σ as
/// ggml does. The vector path sums in per-lane fp32 accumulators and uses the runtime's vector e^x, so it
/// agrees with <see cref="Reference"/> to a few ulp, not bit for bit. −∞ entries (masked positions) become 0.
/// </summary>
public static unsafe class Softmax
{
    public static void InPlace(Span<float> x) => InPlace<WidestVector>(x);

    public static void InPlace<TWidth>(Span<float> x) where TWidth : struct, IVectorWidth
    {
        if (x.IsEmpty) return;
        fixed (float* p = x)
        {
            int n = x.Length;
            float max = ArgMax.Max<TWidth>(p, n);
            CheckMax(max);
            float sum = ExpAndSum<TWidth>(p, n, max);
            Scale<TWidth>(p, n, 1f / sum);
        }
    }

    public static void Reference(Span<float> x)
    {
        if (x.IsEmpty) return;
        float max = float.NegativeInfinity;
        foreach (float v in x) max = MathF.Max(max, v);
        CheckMax(max);
        float sum = 0f;
        for (int i = 0; i < x.Length; i++)
        {
            x[i] = MathF.Exp(x[i] - max);
            sum += x[i];
        }
        float inv = 1f / sum;
        for (int i = 0; i < x.Length; i++) x[i] *= inv;
    }

    private static void CheckMax(float max)
    {
        if (float.IsNegativeInfinity(max)) throw new ArgumentException("Softmax over values that are all −∞ is undefined.");
        if (float.IsNaN(max) || float.IsPositiveInfinity(max)) throw new ArgumentException($"Softmax input contains {max}.");
    }

    /// <summary>p[i] = e^(p[i] − max); returns Σ p[i].</summary>
    public static float ExpAndSum<TWidth>(float* p, int n, float max) where TWidth : struct, IVectorWidth
    {
        int i = 0;
        float sum = 0f;
        if (TWidth.Bits >= 512 && Vector512.IsHardwareAccelerated && n >= 16)
        {
            var m = Vector512.Create(max);
            var acc = Vector512<float>.Zero;
            for (; i <= n - 16; i += 16)
            {
                var e = Vector512.Exp(Vector512.Load(p + i) - m);
                e.Store(p + i);
                acc += e;
            }
            sum = Vector512.Sum(acc);
        }
        else if (TWidth.Bits >= 256 && Vector256.IsHardwareAccelerated && n >= 8)
        {
            var m = Vector256.Create(max);
            var acc = Vector256<float>.Zero;
            for (; i <= n - 8; i += 8)
            {
                var e = Vector256.Exp(Vector256.Load(p + i) - m);
                e.Store(p + i);
                acc += e;
            }
            sum = Vector256.Sum(acc);
        }
        else if (TWidth.Bits >= 128 && Vector128.IsHardwareAccelerated && n >= 4)
        {
            var m = Vector128.Create(max);
            var acc = Vector128<float>.Zero;
            for (; i <= n - 4; i += 4)
            {
                var e = Vector128.Exp(Vector128.Load(p + i) - m);
                e.Store(p + i);
                acc += e;
            }
            sum = Vector128.Sum(acc);
        }
        for (; i < n; i++)
        {
            p[i] = MathF.Exp(p[i] - max);
            sum += p[i];
        }
        return sum;
    }

    /// <summary>p[i] *= s.</summary>
    public static void Scale<TWidth>(float* p, int n, float s) where TWidth : struct, IVectorWidth
    {
        int i = 0;
        if (TWidth.Bits >= 512 && Vector512.IsHardwareAccelerated)
        {
            var v = Vector512.Create(s);
            for (; i <= n - 16; i += 16) (Vector512.Load(p + i) * v).Store(p + i);
        }
        if (TWidth.Bits >= 256 && Vector256.IsHardwareAccelerated)
        {
            var v = Vector256.Create(s);
            for (; i <= n - 8; i += 8) (Vector256.Load(p + i) * v).Store(p + i);
        }
        if (TWidth.Bits >= 128 && Vector128.IsHardwareAccelerated)
        {
            var v = Vector128.Create(s);
            for (; i <= n - 4; i += 4) (Vector128.Load(p + i) * v).Store(p + i);
        }
        for (; i < n; i++) p[i] *= s;
    }
}
