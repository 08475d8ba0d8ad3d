using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

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
