using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace BitNetSharp.Kernels.FloatOps;

/// <summary>
/// FP8 E4M3 in the OCP "FN" variant (PyTorch float8_e4m3fn): 1 sign, 4 exponent (bias 7) and 3 mantissa bits,
/// no infinities, S.1111.111 is NaN, largest finite ±448, smallest subnormal 2^−9, smallest normal 2^−6.
/// Encoding rounds to nearest even and saturates everything beyond ±448 (±∞ included) to ±448.
/// </summary>
public static class Fp8E4M3
{
    public const float MaxValue = 448f;
    public const byte NaNCode = 0x7F;

    private static readonly float[] DecodeTable = BuildTable();

    /// <summary>The 256 decoded values, indexed by code.</summary>
    public static ReadOnlySpan<float> Table => DecodeTable;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToFloat(byte code) => DecodeTable[code];

    public static byte FromFloat(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        byte sign = (byte)((bits >> 24) & 0x80);
        if (float.IsNaN(value)) return (byte)(sign | NaNCode);
        float a = MathF.Abs(value);
        if (a > MaxValue) return (byte)(sign | 0x7E);
        if (a < 0.015625f) // below 2^−6: subnormal, in units of 2^−9 (code 8 is 2^−6, the first normal: the carry is right)
            return (byte)(sign | (int)MathF.Round(a * 512f));
        int exponent = (int)((bits >> 23) & 0xFF) - 127;
        uint mantissa = bits & 0x7FFFFF;
        uint rounded = (mantissa + 0x7FFFF + ((mantissa >> 20) & 1)) >> 20; // 3 bits, may carry into the exponent
        return (byte)(sign | (((exponent + 7) << 3) + (int)rounded));
    }

    /// <summary>
    /// codes[i] = <see cref="FromFloat"/>(x[i] · scale) for every i, sixteen (AVX-512) or thirty-two (AVX2) values a
    /// step, the same bits as the scalar encoder: the normal range rounds the fp32 mantissa to three bits by integer add
    /// (nearest even, the carry running into the exponent) and rebiases the exponent; below 2^−6 the code is
    /// round_half_even(|y|·512) (<c>vcvtps2dq</c> in the default rounding mode); beyond 448 (±∞ included) it saturates
    /// to 0x7E; NaN gives 0x7F; the sign is bit 7. The KV cache's fp8 rows are written through it.
    /// </summary>
    public static unsafe void Encode(float* x, float scale, byte* codes, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated && Avx512F.IsSupported)
        {
            var f = Vector512.Create(scale);
            for (; i <= n - 16; i += 16)
                Avx512F.ConvertToVector128Byte(Encode16(Vector512.Load(x + i) * f)).Store(codes + i);
        }
        else if (Avx2.IsSupported)
        {
            var f = Vector256.Create(scale);
            for (; i <= n - 32; i += 32)
            {
                var a = Vector256.Narrow(Encode8(Vector256.Load(x + i) * f), Encode8(Vector256.Load(x + i + 8) * f));
                var b = Vector256.Narrow(Encode8(Vector256.Load(x + i + 16) * f), Encode8(Vector256.Load(x + i + 24) * f));
                Vector256.Narrow(a, b).AsByte().Store(codes + i);
            }
        }
        for (; i < n; i++) codes[i] = FromFloat(x[i] * scale);
    }

    private const uint SmallestNormalBits = 0x3C800000; // 2^−6
    private const uint InfinityBits = 0x7F800000;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<uint> Encode16(Vector512<float> y)
    {
        var bits = y.AsUInt32();
        var a = bits & Vector512.Create(0x7FFFFFFFu);
        var normal = Vector512.ShiftRightLogical(a + Vector512.Create(0x7FFFFu) + (Vector512.ShiftRightLogical(a, 20) & Vector512<uint>.One), 20) - Vector512.Create(120u << 3);
        var subnormal = Avx512F.ConvertToVector512UInt32(a.AsSingle() * Vector512.Create(512f)); // 0..8, rounded to nearest even
        var code = Vector512.Min(Vector512.ConditionalSelect(Vector512.LessThan(a, Vector512.Create(SmallestNormalBits)), subnormal, normal), Vector512.Create(0x7Eu));
        code = Vector512.ConditionalSelect(Vector512.GreaterThan(a, Vector512.Create(InfinityBits)), Vector512.Create((uint)NaNCode), code);
        return code | (Vector512.ShiftRightLogical(bits, 24) & Vector512.Create(0x80u));
    }

    /// <summary><see cref="Encode16"/> in 256 bits, with signed compares (AVX2 has no unsigned ones; every magnitude here is below 2^31).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Encode8(Vector256<float> y)
    {
        var bits = y.AsInt32();
        var a = bits & Vector256.Create(0x7FFFFFFF);
        var normal = Vector256.ShiftRightLogical(a + Vector256.Create(0x7FFFF) + (Vector256.ShiftRightLogical(a, 20) & Vector256<int>.One), 20) - Vector256.Create(120 << 3);
        var subnormal = Avx.ConvertToVector256Int32(a.AsSingle() * Vector256.Create(512f));
        var code = Vector256.Min(Vector256.ConditionalSelect(Vector256.LessThan(a, Vector256.Create((int)SmallestNormalBits)), subnormal, normal), Vector256.Create(0x7E));
        code = Vector256.ConditionalSelect(Vector256.GreaterThan(a, Vector256.Create((int)InfinityBits)), Vector256.Create((int)NaNCode), code);
        return code | (Vector256.ShiftRightLogical(bits, 24) & Vector256.Create(0x80));
    }

    /// <summary>The definition: (−1)^s · 2^(e−7) · (1 + m/8), subnormals 2^−6 · m/8, code 0x7F/0xFF NaN.</summary>
    private static float[] BuildTable()
    {
        var table = new float[256];
        for (int code = 0; code < 256; code++)
        {
            int e = (code >> 3) & 0xF, m = code & 7;
            // float.NaN has its sign bit set, so NaNs are built from bits to keep the code's sign.
            float magnitude = (code & 0x7F) == NaNCode ? BitConverter.UInt32BitsToSingle(0x7FC00000)
                : e == 0 ? m / 8f * MathF.Pow(2, -6)
                : (1 + m / 8f) * MathF.Pow(2, e - 7);
            table[code] = (code & 0x80) != 0 ? -magnitude : magnitude;
        }
        return table;
    }

    /// <summary>
    /// Eight (or sixteen) codes to fp32 without a table: the 7 magnitude bits placed under the fp32 exponent field
    /// and rebiased by +120 by integer add (exact for normals); subnormals (exponent 0) get one more exponent step
    /// and 2^−6 subtracted, the classic magic-number trick, so no fp32 denormal is ever formed.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Decode(Vector256<uint> codes)
    {
        var magnitude = codes & Vector256.Create(0x7Fu);
        var normal = Vector256.ShiftLeft(magnitude, 20) + Vector256.Create(120u << 23);
        var subnormal = ((normal + Vector256.Create(1u << 23)).AsSingle() - Vector256.Create(0.015625f)).AsUInt32();
        var isSubnormal = Vector256.LessThan(magnitude, Vector256.Create(8u));
        var result = Vector256.ConditionalSelect(isSubnormal, subnormal, normal);
        result |= Vector256.Equals(magnitude, Vector256.Create((uint)NaNCode)) & Vector256.Create(0x7FC00000u);
        return (result | Vector256.ShiftLeft(codes & Vector256.Create(0x80u), 24)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Decode(Vector512<uint> codes)
    {
        var magnitude = codes & Vector512.Create(0x7Fu);
        var normal = Vector512.ShiftLeft(magnitude, 20) + Vector512.Create(120u << 23);
        var subnormal = ((normal + Vector512.Create(1u << 23)).AsSingle() - Vector512.Create(0.015625f)).AsUInt32();
        var isSubnormal = Vector512.LessThan(magnitude, Vector512.Create(8u));
        var result = Vector512.ConditionalSelect(isSubnormal, subnormal, normal);
        result |= Vector512.Equals(magnitude, Vector512.Create((uint)NaNCode)) & Vector512.Create(0x7FC00000u);
        return (result | Vector512.ShiftLeft(codes & Vector512.Create(0x80u), 24)).AsSingle();
    }
}
