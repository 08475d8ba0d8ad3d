using System.Runtime.Intrinsics;

namespace BitNetSharp.Kernels.FloatOps;

/// <summary>
/// Index of the largest value, ties to the lowest index (greedy decoding must not depend on the vector width).
/// NaN never wins; an all-NaN input gives 0. The vector path finds the maximum, then the first index holding
/// it: two streaming passes that are exact at any width (max is order-independent without NaN).
/// </summary>
public static unsafe class ArgMax
{
    public static int Of(ReadOnlySpan<float> x) => Of<WidestVector>(x);

    public static int Of<TWidth>(ReadOnlySpan<float> x) where TWidth : struct, IVectorWidth
    {
        if (x.IsEmpty) throw new ArgumentException("ArgMax of an empty span.", nameof(x));
        fixed (float* p = x)
        {
            float max = Max<TWidth>(p, x.Length);
            if (float.IsNaN(max)) return Reference(x);
            return FirstIndexOf<TWidth>(p, x.Length, max);
        }
    }

    public static int Reference(ReadOnlySpan<float> x)
    {
        if (x.IsEmpty) throw new ArgumentException("ArgMax of an empty span.", nameof(x));
        int best = -1;
        for (int i = 0; i < x.Length; i++)
            if (!float.IsNaN(x[i]) && (best < 0 || x[i] > x[best])) best = i;
        return Math.Max(best, 0);
    }

    /// <summary>The largest value; NaN if any element is NaN (vector max propagates NaN like <see cref="MathF.Max"/>).</summary>
    public static float Max<TWidth>(float* p, int n) where TWidth : struct, IVectorWidth
    {
        int i = 0;
        float max = float.NegativeInfinity;
        if (TWidth.Bits >= 512 && Vector512.IsHardwareAccelerated && n >= 16)
        {
            var m = Vector512.Create(float.NegativeInfinity);
            for (; i <= n - 16; i += 16) m = Vector512.Max(m, Vector512.Load(p + i));
            max = MaxAcross(m);
        }
        else if (TWidth.Bits >= 256 && Vector256.IsHardwareAccelerated && n >= 8)
        {
            var m = Vector256.Create(float.NegativeInfinity);
            for (; i <= n - 8; i += 8) m = Vector256.Max(m, Vector256.Load(p + i));
            max = MaxAcross(m);
        }
        else if (TWidth.Bits >= 128 && Vector128.IsHardwareAccelerated && n >= 4)
        {
            var m = Vector128.Create(float.NegativeInfinity);
            for (; i <= n - 4; i += 4) m = Vector128.Max(m, Vector128.Load(p + i));
            max = MaxAcross(m);
        }
        for (; i < n; i++) max = MathF.Max(max, p[i]);
        return max;
    }

    public static float Max(ReadOnlySpan<float> x)
    {
        fixed (float* p = x) return Max<WidestVector>(p, x.Length);
    }

    /// <summary>The largest lane, taken as <see cref="Max{TWidth}"/> takes it.</summary>
    internal static float MaxAcross(Vector512<float> m) => MaxAcross(Vector256.Max(m.GetLower(), m.GetUpper()));

    private static float MaxAcross(Vector256<float> m) => MaxAcross(Vector128.Max(m.GetLower(), m.GetUpper()));

    private static float MaxAcross(Vector128<float> m) => MathF.Max(MathF.Max(m[0], m[1]), MathF.Max(m[2], m[3]));

    private static int FirstIndexOf<TWidth>(float* p, int n, float value) where TWidth : struct, IVectorWidth
    {
        int i = 0;
        if (TWidth.Bits >= 512 && Vector512.IsHardwareAccelerated)
        {
            var v = Vector512.Create(value);
            for (; i <= n - 16; i += 16)
            {
                uint mask = (uint)Vector512.Equals(Vector512.Load(p + i), v).ExtractMostSignificantBits();
                if (mask != 0) return i + System.Numerics.BitOperations.TrailingZeroCount(mask);
            }
        }
        if (TWidth.Bits >= 256 && Vector256.IsHardwareAccelerated)
        {
            var v = Vector256.Create(value);
            for (; i <= n - 8; i += 8)
            {
                uint mask = Vector256.Equals(Vector256.Load(p + i), v).ExtractMostSignificantBits();
                if (mask != 0) return i + System.Numerics.BitOperations.TrailingZeroCount(mask);
            }
        }
        for (; i < n; i++)
            if (p[i] == value) return i;
        throw new InvalidOperationException("The maximum was not found on the second pass.");
    }
}
