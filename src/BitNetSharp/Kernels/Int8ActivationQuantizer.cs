using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using BitNetSharp.Quantization;

namespace BitNetSharp.Kernels;

/// <summary>
/// Per-token int8 activation quantization exactly as bitnet.cpp's quantize_row_i8_s and HF's ActQuant
/// (FORMATS.md §2.6, §4.4): γ = max(max|x|, 1e−5) taken in double, s_x = (float)(127/γ),
/// q = clamp(round_half_even(x · s_x), −128, 127) with an fp32 multiply, and Σq kept for the kernels.
/// The SIMD path is bit-identical to the scalar reference: max|x| is exact in any order, the multiply is
/// the same fp32 operation, and Vector.Round is round-half-to-even like <see cref="MathF.Round(float)"/>.
/// </summary>
public static unsafe class Int8ActivationQuantizer
{
    public const double AbsMaxFloor = 1e-5;

    /// <summary>s_x for a given max|x|.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ScaleFor(float absMax) => (float)(127.0 / Math.Max((double)absMax, AbsMaxFloor));

    /// <summary>Quantizes one token into row <paramref name="token"/> of <paramref name="dst"/>.</summary>
    public static void Quantize(ReadOnlySpan<float> x, QuantizedActivations dst, int token)
    {
        if (x.Length != dst.Cols)
            throw new ArgumentException($"Activation row has {x.Length} values; the quantized buffer expects {dst.Cols}.", nameof(x));
        if ((uint)token >= (uint)dst.MaxTokens) throw new ArgumentOutOfRangeException(nameof(token));
        Quantize(x, dst.RowSpan(token), out dst.Scales[token], out dst.Sums[token]);
    }

    /// <summary>Vectorized quantization; <paramref name="q"/> past x.Length is zeroed (kernel padding).</summary>
    public static void Quantize(ReadOnlySpan<float> x, Span<sbyte> q, out float scale, out int sum)
    {
        if (q.Length < x.Length) throw new ArgumentException("Output is shorter than the input.", nameof(q));
        float s = ScaleFor(AbsMax(x));
        scale = s;
        int n = x.Length, i = 0;
        fixed (float* px = x)
        fixed (sbyte* pq = q)
        {
            if (Vector256.IsHardwareAccelerated && n >= 32)
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
            }
            else if (Vector128.IsHardwareAccelerated && n >= 16)
            {
                var vs = Vector128.Create(s);
                var lo = Vector128.Create(-128);
                var hi = Vector128.Create(127);
                var acc = Vector128<int>.Zero;
                for (; i <= n - 16; i += 16)
                {
                    var a = Vector128.Clamp(Vector128.ConvertToInt32(Vector128.Round(Vector128.Load(px + i) * vs)), lo, hi);
                    var b = Vector128.Clamp(Vector128.ConvertToInt32(Vector128.Round(Vector128.Load(px + i + 4) * vs)), lo, hi);
                    var c = Vector128.Clamp(Vector128.ConvertToInt32(Vector128.Round(Vector128.Load(px + i + 8) * vs)), lo, hi);
                    var d = Vector128.Clamp(Vector128.ConvertToInt32(Vector128.Round(Vector128.Load(px + i + 12) * vs)), lo, hi);
                    acc += (a + b) + (c + d);
                    Vector128.Narrow(Vector128.Narrow(a, b), Vector128.Narrow(c, d)).Store(pq + i);
                }
                sum = Vector128.Sum(acc);
            }
            else
            {
                sum = 0;
            }
            for (; i < n; i++)
            {
                sbyte v = QuantizeOne(px[i], s);
                pq[i] = v;
                sum += v;
            }
        }
        q[n..].Clear();
    }

    /// <summary>The scalar reference, written for reading, against which the SIMD path is tested.</summary>
    public static void QuantizeReference(ReadOnlySpan<float> x, Span<sbyte> q, out float scale, out int sum)
    {
        float absMax = 0f;
        foreach (float v in x) absMax = MathF.Max(absMax, MathF.Abs(v));
        float s = ScaleFor(absMax);
        scale = s;
        sum = 0;
        for (int i = 0; i < x.Length; i++)
        {
            q[i] = QuantizeOne(x[i], s);
            sum += q[i];
        }
        q[x.Length..].Clear();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static sbyte QuantizeOne(float x, float s) =>
        (sbyte)Math.Clamp((int)MathF.Round(x * s), -128, 127);

    /// <summary>max |x_i| (NaN-free inputs assumed; a NaN is the logit/activation monitor's job to flag).</summary>
    public static float AbsMax(ReadOnlySpan<float> x)
    {
        int n = x.Length, i = 0;
        float m = 0f;
        fixed (float* p = x)
        {
            if (Vector256.IsHardwareAccelerated && n >= 8)
            {
                var acc = Vector256<float>.Zero;
                for (; i <= n - 8; i += 8) acc = Vector256.Max(acc, Vector256.Abs(Vector256.Load(p + i)));
                for (int k = 0; k < 8; k++) m = MathF.Max(m, acc[k]);
            }
            else if (Vector128.IsHardwareAccelerated && n >= 4)
            {
                var acc = Vector128<float>.Zero;
                for (; i <= n - 4; i += 4) acc = Vector128.Max(acc, Vector128.Abs(Vector128.Load(p + i)));
                for (int k = 0; k < 4; k++) m = MathF.Max(m, acc[k]);
            }
            for (; i < n; i++) m = MathF.Max(m, MathF.Abs(p[i]));
        }
        return m;
    }
}
