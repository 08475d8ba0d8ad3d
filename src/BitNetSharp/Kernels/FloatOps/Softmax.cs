using System.Runtime.Intrinsics;

namespace BitNetSharp.Kernels.FloatOps;

/// <summary>
/// In-place softmax (FORMATS.md §4.2 step 4): subtract the maximum, exponentiate in fp32, sum in double (as ggml's
/// soft_max does, which also keeps a 128k-vocabulary normalizer accurate enough for top-p), multiply by (float)(1/Σ).
/// The vector path uses the runtime's vector e^x and sums in lanes, so it agrees with <see cref="Reference"/> to an
/// ulp or two, not bit for bit. −∞ entries (masked positions) become 0.
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
            double sum = ExpAndSum<TWidth>(p, n, max);
            Scale<TWidth>(p, n, (float)(1.0 / sum));
        }
    }

    /// <summary>
    /// Softmax for attention scores: like <see cref="InPlace(Span{float})"/>, but scores holding NaN or +∞ (from
    /// corrupted weights), or all −∞ (an overflowed key times a negative query: the F16 cache stores ±∞ past 65504),
    /// become NaN instead of throwing, so the values flow on into the residual stream, where the health monitor names
    /// the layer, and only the sequences they belong to fail (the chunked path, <see cref="PartialSoftmax"/>, gives NaN
    /// there too; all −∞ threw here and failed every request in the batch).
    /// </summary>
    public static void AttentionInPlace(Span<float> x)
    {
        if (x.IsEmpty) return;
        fixed (float* p = x)
        {
            int n = x.Length;
            float max = ArgMax.Max<WidestVector>(p, n);
            if (!float.IsFinite(max))
            {
                x.Fill(float.NaN);
                return;
            }
            double sum = ExpAndSum<WidestVector>(p, n, max);
            Scale<WidestVector>(p, n, (float)(1.0 / sum));
        }
    }

    public static void Reference(Span<float> x)
    {
        if (x.IsEmpty) return;
        float max = float.NegativeInfinity;
        foreach (float v in x) max = MathF.Max(max, v);
        CheckMax(max);
        double sum = 0;
        for (int i = 0; i < x.Length; i++)
        {
            x[i] = MathF.Exp(x[i] - max);
            sum += x[i];
        }
        float inv = (float)(1.0 / sum);
        for (int i = 0; i < x.Length; i++) x[i] *= inv;
    }

    private static void CheckMax(float max)
    {
        if (float.IsNegativeInfinity(max)) throw new ArgumentException("Softmax over values that are all −∞ is undefined.");
        if (float.IsNaN(max) || float.IsPositiveInfinity(max)) throw new ArgumentException($"Softmax input contains {max}.");
    }

    /// <summary>p[i] = e^(p[i] − max) in fp32 (<see cref="FastExp"/>: the same bits at every width); returns Σ p[i] accumulated in double.</summary>
    public static double ExpAndSum<TWidth>(float* p, int n, float max) where TWidth : struct, IVectorWidth
    {
        int i = 0;
        double sum = 0;
        if (TWidth.Bits >= 512 && Vector512.IsHardwareAccelerated && n >= 16)
        {
            var m = Vector512.Create(max);
            Vector512<double> a0 = default, a1 = default;
            for (; i <= n - 16; i += 16)
            {
                var e = FastExp.Exp(Vector512.Load(p + i) - m);
                e.Store(p + i);
                a0 += Vector512.WidenLower(e);
                a1 += Vector512.WidenUpper(e);
            }
            sum = Vector512.Sum(a0 + a1);
        }
        else if (TWidth.Bits >= 256 && Vector256.IsHardwareAccelerated && n >= 8)
        {
            var m = Vector256.Create(max);
            Vector256<double> a0 = default, a1 = default;
            for (; i <= n - 8; i += 8)
            {
                var e = FastExp.Exp(Vector256.Load(p + i) - m);
                e.Store(p + i);
                a0 += Vector256.WidenLower(e);
                a1 += Vector256.WidenUpper(e);
            }
            sum = Vector256.Sum(a0 + a1);
        }
        else if (TWidth.Bits >= 128 && Vector128.IsHardwareAccelerated && n >= 4)
        {
            var m = Vector128.Create(max);
            Vector128<double> a0 = default, a1 = default;
            for (; i <= n - 4; i += 4)
            {
                var e = FastExp.Exp(Vector128.Load(p + i) - m);
                e.Store(p + i);
                a0 += Vector128.WidenLower(e);
                a1 += Vector128.WidenUpper(e);
            }
            sum = Vector128.Sum(a0 + a1);
        }
        for (; i < n; i++)
        {
            p[i] = FastExp.Exp(p[i] - max);
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
