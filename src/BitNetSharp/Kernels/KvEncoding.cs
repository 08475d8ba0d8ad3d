using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using BitNetSharp.Quantization;

namespace BitNetSharp.Kernels;

/// <summary>
/// The vector parts of the KV-cache row encoders (<see cref="Int8Row"/>, <see cref="Fp8Row"/>, <see cref="F16Row"/>):
/// every decode step encodes each layer's new key and value rows, and the scalar loops took 4–9 µs a layer on the 2B4T
/// shape (five heads, two rows of 128) — more than the attention over a short context itself. Each gives exactly the
/// scalar definition's result (tests compare them element by element, specials included).
/// </summary>
internal static unsafe class KvEncoding
{
    /// <summary>max |x_i|, or NaN when any x_i is NaN (as a chain of <see cref="MathF.Max(float, float)"/> gives).</summary>
    public static float AbsMax(ReadOnlySpan<float> x)
    {
        int n = x.Length, i = 0;
        float m = 0f;
        fixed (float* p = x)
        {
            if (Vector256.IsHardwareAccelerated && n >= 16)
            {
                Vector256<float> a0 = Vector256<float>.Zero, a1 = a0;
                Vector256<float> nan = Vector256<float>.Zero;
                for (; i <= n - 16; i += 16)
                {
                    var u = Vector256.Load(p + i);
                    var v = Vector256.Load(p + i + 8);
                    nan |= ~Vector256.Equals(u, u) | ~Vector256.Equals(v, v);
                    a0 = Vector256.MaxNative(a0, Vector256.Abs(u));
                    a1 = Vector256.MaxNative(a1, Vector256.Abs(v));
                }
                if (nan != Vector256<float>.Zero) return float.NaN;
                var acc = Vector256.MaxNative(a0, a1);
                for (int k = 0; k < 8; k++) m = MathF.Max(m, acc[k]);
            }
            for (; i < n; i++) m = MathF.Max(m, MathF.Abs(p[i]));
        }
        return m;
    }

    /// <summary>q_i = clamp(round_half_even(x_i · <paramref name="inv"/>), −127, 127) for finite x·inv (|x_i·inv| ≲ 127).</summary>
    public static void RoundScaled(ReadOnlySpan<float> x, float inv, sbyte* q)
    {
        int n = x.Length, i = 0;
        fixed (float* p = x)
        {
            if (Vector256.IsHardwareAccelerated)
            {
                var s = Vector256.Create(inv);
                var lo = Vector256.Create(-127);
                var hi = Vector256.Create(127);
                for (; i <= n - 32; i += 32)
                {
                    var a = Vector256.Clamp(Vector256.ConvertToInt32(Vector256.Round(Vector256.Load(p + i) * s)), lo, hi);
                    var b = Vector256.Clamp(Vector256.ConvertToInt32(Vector256.Round(Vector256.Load(p + i + 8) * s)), lo, hi);
                    var c = Vector256.Clamp(Vector256.ConvertToInt32(Vector256.Round(Vector256.Load(p + i + 16) * s)), lo, hi);
                    var d = Vector256.Clamp(Vector256.ConvertToInt32(Vector256.Round(Vector256.Load(p + i + 24) * s)), lo, hi);
                    Vector256.Narrow(Vector256.Narrow(a, b), Vector256.Narrow(c, d)).AsSByte().Store(q + i);
                }
            }
            for (; i < n; i++) q[i] = (sbyte)Math.Clamp((int)MathF.Round(p[i] * inv), -127, 127);
        }
    }

    /// <summary>
    /// h_i = the IEEE half nearest x_i (ties to even), bit for bit what <c>(Half)x</c> gives. Eight at a time by integer
    /// arithmetic: normal results add the rounding increment below bit 13 and rebias the exponent; results below 2⁻¹⁴
    /// (half subnormals) come from adding 0.5f, whose ulp (2⁻²⁴) is the half subnormal step, so the FPU rounds them. A
    /// group holding NaN, ±∞ or a magnitude that rounds to ∞ (≥ 65520) takes the scalar conversion.
    /// </summary>
    public static void ToHalf(ReadOnlySpan<float> x, ushort* h)
    {
        int n = x.Length, i = 0;
        fixed (float* p = x)
        {
            if (Vector256.IsHardwareAccelerated)
            {
                var magnitudeMask = Vector256.Create(0x7FFFFFFFu);
                var overflow = Vector256.Create(0x477FF000u); // 65520: rounds to +inf
                var smallestNormal = Vector256.Create(0x38800000u); // 2^-14
                var rebias = Vector256.Create(0x38000000u); // (127 - 15) << 23
                var half = Vector256.Create(0.5f);
                for (; i <= n - 16; i += 16)
                {
                    var u = Vector256.Load((uint*)p + i);
                    var v = Vector256.Load((uint*)p + i + 8);
                    var au = u & magnitudeMask;
                    var av = v & magnitudeMask;
                    if (Vector256.GreaterThanOrEqualAny(au, overflow) || Vector256.GreaterThanOrEqualAny(av, overflow)) break;
                    Vector256.Narrow(Half8(u, au, rebias, smallestNormal, half), Half8(v, av, rebias, smallestNormal, half)).Store(h + i);
                }
            }
            for (; i < n; i++) h[i] = HalfConversions.FloatToHalf(p[i]);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> Half8(Vector256<uint> bits, Vector256<uint> magnitude, Vector256<uint> rebias, Vector256<uint> smallestNormal, Vector256<float> half)
    {
        var normal = (magnitude - rebias + Vector256.Create(0xFFFu) + ((magnitude >> 13) & Vector256.Create(1u))) >> 13;
        var subnormal = (magnitude.AsSingle() + half).AsUInt32() - half.AsUInt32();
        var result = Vector256.ConditionalSelect(Vector256.LessThan(magnitude, smallestNormal), subnormal, normal);
        return result | ((bits >> 16) & Vector256.Create(0x8000u));
    }

    /// <summary>Prefetches (into L1) every cache line that [p, p + bytes) touches, a partial first and last one included.
    /// A hint: never faults, no effect without SSE.</summary>
    public static void PrefetchLines(byte* p, long bytes)
    {
        if (!Sse.IsSupported) return;
        for (byte* line = (byte*)((nuint)p & ~(nuint)63); line < p + bytes; line += 64) Sse.Prefetch0(line);
    }
}
