using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using BitNetSharp.Formats;
using BitNetSharp.Quantization;

namespace BitNetSharp.Kernels;

/// <summary>
/// The Q6_K head's row dot on 512-bit vectors (AVX-512BW), for one to four tokens at once, bit-identical to
/// <see cref="HeadKernels.DotQ6_KQ8K"/> per token. The 256-bit kernel spends ~24 vector operations per 64 weight bytes
/// (four 32-code quarters assembled one by one, eight scale shuffles per 128 weights), which kept one Zen 5 core at
/// ~22 GB/s: the Q6_K head (269 MB on the 2B4T shape) was no faster than the F16 one (657 MB). Here a 512-bit vector holds
/// two quarters: the low nibbles of both come from one load of ql, the two high bits of both from one broadcast of qh
/// shifted by a per-half count (vpsllvw / vpsrlvw), and one bitwise select (vpternlog) joins them; each block's sixteen
/// scales are spread by four vpermw. The two quarters' int32 sums sit in the two 256-bit halves, whose sum has exactly
/// the lanes of the 256-bit kernel (each lane the same four weights of every quarter), so the integer sums — and, in the
/// same order, the float accumulation — are those of <see cref="HeadKernels.DotQ6_KQ8K"/>.
/// </summary>
public static unsafe class HeadQ6K512
{
    public static bool IsSupported => Avx512BW.IsSupported && Vector512.IsHardwareAccelerated;

    /// <summary>Most tokens per call.</summary>
    public const int MaxTokens = 4;

    /// <summary>
    /// result[j] = row <paramref name="w"/> (Q6_K, <paramref name="blocks"/> blocks) · token j's Q8_K activations
    /// (<paramref name="qx"/> + j·<paramref name="stride"/>, scales <paramref name="dx"/> + j·blocks, sums
    /// <paramref name="sums"/> + j·16·blocks) for j &lt; <paramref name="tokens"/> (1 to 4).
    /// </summary>
    public static void Dot(byte* w, sbyte* qx, int stride, float* dx, short* sums, int blocks, int tokens, float* result)
    {
        if ((uint)(tokens - 1) >= MaxTokens) throw new ArgumentOutOfRangeException(nameof(tokens), tokens, "one to four tokens per call");
        var m0F = Vector512.Create((byte)0x0F);
        var m30 = Vector512.Create((byte)0x30);
        // Per-half shift counts: quarter 0 takes qh bits 0-1 (<< 4), quarter 1 bits 2-3 (<< 2), quarter 2 bits 4-5 (as
        // they are), quarter 3 bits 6-7 (>> 2), each then masked to bits 4-5.
        var left = Vector512.Create(Vector256.Create((ushort)4), Vector256.Create((ushort)2));
        var right = Vector512.Create(Vector256<ushort>.Zero, Vector256.Create((ushort)2));
        var spread0 = Spread(0);
        var spread1 = Spread(4);
        var spread2 = Spread(8);
        var spread3 = Spread(12);
        Vector256<float> acc0 = default, acc1 = default, acc2 = default, acc3 = default;
        int groups = 16 * blocks;
        for (int b = 0; b < blocks; b++, w += Q6K.BlockBytes)
        {
            var scales = Avx2.ConvertToVector256Int16(Vector128.Load((sbyte*)(w + Q6K.ScalesOffset)));
            var wide = scales.ToVector512Unsafe();
            var s01a = Avx512BW.PermuteVar32x16(wide, spread0);
            var s23a = Avx512BW.PermuteVar32x16(wide, spread1);
            var s01b = Avx512BW.PermuteVar32x16(wide, spread2);
            var s23b = Avx512BW.PermuteVar32x16(wide, spread3);
            // The block's 64 qh bytes in one load; each half's 32 in both 256-bit lanes (vshufi64x2).
            var qh = Vector512.Load(w + Q6K.QhOffset).AsUInt64();
            Codes(Vector512.Load(w), Avx512F.Shuffle4x128(qh, qh, 0b01_00_01_00).AsUInt16(), m0F, m30, left, right, out var q01a, out var q23a);
            Codes(Vector512.Load(w + 64), Avx512F.Shuffle4x128(qh, qh, 0b11_10_11_10).AsUInt16(), m0F, m30, left, right, out var q01b, out var q23b);
            float dw = HalfToSingle(*(ushort*)(w + Q6K.DOffset));
            int off = b * Q6K.BlockWeights, g = b * 16;
            acc0 = Token(qx + off, dw * dx[b], sums + g, scales, q01a, q23a, q01b, q23b, s01a, s23a, s01b, s23b, acc0);
            if (tokens > 1)
            {
                acc1 = Token(qx + stride + off, dw * dx[blocks + b], sums + groups + g, scales, q01a, q23a, q01b, q23b, s01a, s23a, s01b, s23b, acc1);
                if (tokens > 2)
                {
                    acc2 = Token(qx + 2 * stride + off, dw * dx[2 * blocks + b], sums + 2 * groups + g, scales, q01a, q23a, q01b, q23b, s01a, s23a, s01b, s23b, acc2);
                    if (tokens > 3)
                        acc3 = Token(qx + 3 * stride + off, dw * dx[3 * blocks + b], sums + 3 * groups + g, scales, q01a, q23a, q01b, q23b, s01a, s23a, s01b, s23b, acc3);
                }
            }
        }
        result[0] = Vector256.Sum(acc0);
        if (tokens > 1) result[1] = Vector256.Sum(acc1);
        if (tokens > 2) result[2] = Vector256.Sum(acc2);
        if (tokens > 3) result[3] = Vector256.Sum(acc3);
    }

    /// <summary>
    /// One token against four rows read side by side (four weight streams: on Zen 5 one core read one Q6_K row after
    /// another from memory at ~26 GB/s whatever the kernel's speed in cache), each row's blocks in order, so each result
    /// equals <see cref="Dot"/>'s (and <see cref="HeadKernels.DotQ6_KQ8K"/>'s) bit for bit.
    /// </summary>
    public static void DotRows4(byte* w0, byte* w1, byte* w2, byte* w3, sbyte* qx, float* dx, short* sums, int blocks, float* y0, float* y1, float* y2, float* y3)
    {
        var m0F = Vector512.Create((byte)0x0F);
        var m30 = Vector512.Create((byte)0x30);
        var left = Vector512.Create(Vector256.Create((ushort)4), Vector256.Create((ushort)2));
        var right = Vector512.Create(Vector256<ushort>.Zero, Vector256.Create((ushort)2));
        var spread0 = Spread(0);
        var spread1 = Spread(4);
        var spread2 = Spread(8);
        var spread3 = Spread(12);
        Vector256<float> acc0 = default, acc1 = default, acc2 = default, acc3 = default;
        for (int b = 0; b < blocks; b++)
        {
            long at = (long)b * Q6K.BlockBytes;
            sbyte* x = qx + b * Q6K.BlockWeights;
            float d = dx[b];
            short* s = sums + b * 16;
            acc0 = Block(w0 + at, x, d, s, m0F, m30, left, right, spread0, spread1, spread2, spread3, acc0);
            acc1 = Block(w1 + at, x, d, s, m0F, m30, left, right, spread0, spread1, spread2, spread3, acc1);
            acc2 = Block(w2 + at, x, d, s, m0F, m30, left, right, spread0, spread1, spread2, spread3, acc2);
            acc3 = Block(w3 + at, x, d, s, m0F, m30, left, right, spread0, spread1, spread2, spread3, acc3);
        }
        *y0 = Vector256.Sum(acc0);
        *y1 = Vector256.Sum(acc1);
        *y2 = Vector256.Sum(acc2);
        *y3 = Vector256.Sum(acc3);
    }

    /// <summary>
    /// Two tokens (Q8_K activations <paramref name="qx"/> and <paramref name="qx"/> + <paramref name="stride"/>, scales
    /// <paramref name="dx"/> and dx + blocks, sums <paramref name="sums"/> and sums + 16·blocks) against four rows read side
    /// by side: each row's block unpacked once for both. result[2k + t] = row k · token t, equal to <see cref="Dot"/>'s bit
    /// for bit. Two sequences decoding together (`-s 2`, a speculative check of two tokens) read the head this way.
    /// </summary>
    public static void DotRows4x2(byte* w0, byte* w1, byte* w2, byte* w3, sbyte* qx, int stride, float* dx, short* sums, int blocks, float* result)
    {
        var m0F = Vector512.Create((byte)0x0F);
        var m30 = Vector512.Create((byte)0x30);
        var left = Vector512.Create(Vector256.Create((ushort)4), Vector256.Create((ushort)2));
        var right = Vector512.Create(Vector256<ushort>.Zero, Vector256.Create((ushort)2));
        var spread0 = Spread(0);
        var spread1 = Spread(4);
        var spread2 = Spread(8);
        var spread3 = Spread(12);
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
        int groups = 16 * blocks;
        for (int b = 0; b < blocks; b++)
        {
            long at = (long)b * Q6K.BlockBytes;
            sbyte* x0 = qx + b * Q6K.BlockWeights, x1 = x0 + stride;
            float d0 = dx[b], d1 = dx[blocks + b];
            short* s0 = sums + b * 16, s1 = s0 + groups;
            Block2(w0 + at, x0, x1, d0, d1, s0, s1, m0F, m30, left, right, spread0, spread1, spread2, spread3, ref a0, ref b0);
            Block2(w1 + at, x0, x1, d0, d1, s0, s1, m0F, m30, left, right, spread0, spread1, spread2, spread3, ref a1, ref b1);
            Block2(w2 + at, x0, x1, d0, d1, s0, s1, m0F, m30, left, right, spread0, spread1, spread2, spread3, ref a2, ref b2);
            Block2(w3 + at, x0, x1, d0, d1, s0, s1, m0F, m30, left, right, spread0, spread1, spread2, spread3, ref a3, ref b3);
        }
        result[0] = Vector256.Sum(a0); result[1] = Vector256.Sum(b0);
        result[2] = Vector256.Sum(a1); result[3] = Vector256.Sum(b1);
        result[4] = Vector256.Sum(a2); result[5] = Vector256.Sum(b2);
        result[6] = Vector256.Sum(a3); result[7] = Vector256.Sum(b3);
    }

    /// <summary>One block of one row against two tokens, unpacked once.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Block2(byte* w, sbyte* x0, sbyte* x1, float dx0, float dx1, short* sums0, short* sums1, Vector512<byte> m0F, Vector512<byte> m30,
        Vector512<ushort> left, Vector512<ushort> right, Vector512<short> spread0, Vector512<short> spread1, Vector512<short> spread2,
        Vector512<short> spread3, ref Vector256<float> acc0, ref Vector256<float> acc1)
    {
        var scales = Avx2.ConvertToVector256Int16(Vector128.Load((sbyte*)(w + Q6K.ScalesOffset)));
        var wide = scales.ToVector512Unsafe();
        var qh = Vector512.Load(w + Q6K.QhOffset).AsUInt64();
        Codes(Vector512.Load(w), Avx512F.Shuffle4x128(qh, qh, 0b01_00_01_00).AsUInt16(), m0F, m30, left, right, out var q01a, out var q23a);
        Codes(Vector512.Load(w + 64), Avx512F.Shuffle4x128(qh, qh, 0b11_10_11_10).AsUInt16(), m0F, m30, left, right, out var q01b, out var q23b);
        var s01a = Avx512BW.PermuteVar32x16(wide, spread0);
        var s23a = Avx512BW.PermuteVar32x16(wide, spread1);
        var s01b = Avx512BW.PermuteVar32x16(wide, spread2);
        var s23b = Avx512BW.PermuteVar32x16(wide, spread3);
        float dw = HalfToSingle(*(ushort*)(w + Q6K.DOffset));
        acc0 = Token(x0, dw * dx0, sums0, scales, q01a, q23a, q01b, q23b, s01a, s23a, s01b, s23b, acc0);
        acc1 = Token(x1, dw * dx1, sums1, scales, q01a, q23a, q01b, q23b, s01a, s23a, s01b, s23b, acc1);
    }

    /// <summary>One block of one row against one token (scale <paramref name="dx"/>), added to <paramref name="acc"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Block(byte* w, sbyte* x, float dx, short* sums, Vector512<byte> m0F, Vector512<byte> m30,
        Vector512<ushort> left, Vector512<ushort> right, Vector512<short> spread0, Vector512<short> spread1, Vector512<short> spread2,
        Vector512<short> spread3, Vector256<float> acc)
    {
        var scales = Avx2.ConvertToVector256Int16(Vector128.Load((sbyte*)(w + Q6K.ScalesOffset)));
        var wide = scales.ToVector512Unsafe();
        var qh = Vector512.Load(w + Q6K.QhOffset).AsUInt64();
        Codes(Vector512.Load(w), Avx512F.Shuffle4x128(qh, qh, 0b01_00_01_00).AsUInt16(), m0F, m30, left, right, out var q01a, out var q23a);
        Codes(Vector512.Load(w + 64), Avx512F.Shuffle4x128(qh, qh, 0b11_10_11_10).AsUInt16(), m0F, m30, left, right, out var q01b, out var q23b);
        return Token(x, HalfToSingle(*(ushort*)(w + Q6K.DOffset)) * dx, sums, scales, q01a, q23a, q01b, q23b, Avx512BW.PermuteVar32x16(wide, spread0), Avx512BW.PermuteVar32x16(wide, spread1),
            Avx512BW.PermuteVar32x16(wide, spread2), Avx512BW.PermuteVar32x16(wide, spread3), acc);
    }

    /// <summary>
    /// A block's fp16 scale as a float, inline: finite halves exactly as <see cref="HalfConversions.HalfToFloat"/> (the
    /// exponent and mantissa moved into a float's fields, then times 2^112, which also makes subnormals right), ±inf as
    /// ±inf, NaN as a NaN. HalfToFloat is a call the JIT does not inline when a method is compiled optimized at its first
    /// call (the CLI's setting); inside the loop it spilled every vector register and the four-row kernel ran at a third
    /// of its speed.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float HalfToSingle(ushort h)
    {
        uint u = (uint)(h & 0x7FFF) << 13;
        uint bits = (h & 0x7C00) == 0x7C00 ? 0x7F800000 | u : BitConverter.SingleToUInt32Bits(BitConverter.UInt32BitsToSingle(u) * 5.192296858534828e33f);
        return BitConverter.UInt32BitsToSingle(bits | (uint)(h & 0x8000) << 16);
    }

    /// <summary>vpermw indices giving scale s in int16 lanes 0-7, s+1 in 8-15, s+2 in 16-23 and s+3 in 24-31 (a 512-bit
    /// vector of two quarters: each 16-weight group's eight pair sums meet its scale).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<short> Spread(int s)
    {
        var v = Vector512.Create(Vector256.Create((short)s, (short)s, (short)s, (short)s, (short)s, (short)s, (short)s, (short)s,
                (short)(s + 1), (short)(s + 1), (short)(s + 1), (short)(s + 1), (short)(s + 1), (short)(s + 1), (short)(s + 1), (short)(s + 1)),
            Vector256.Create((short)(s + 2), (short)(s + 2), (short)(s + 2), (short)(s + 2), (short)(s + 2), (short)(s + 2), (short)(s + 2), (short)(s + 2),
                (short)(s + 3), (short)(s + 3), (short)(s + 3), (short)(s + 3), (short)(s + 3), (short)(s + 3), (short)(s + 3), (short)(s + 3)));
        return v;
    }

    /// <summary>One half of a block (its 64 ql bytes, its 32 qh bytes in both 256-bit lanes) as two vectors of 6-bit
    /// codes: quarters 0|1 and quarters 2|3.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Codes(Vector512<byte> ql, Vector512<ushort> hi, Vector512<byte> m0F, Vector512<byte> m30, Vector512<ushort> left, Vector512<ushort> right,
        out Vector512<byte> q01, out Vector512<byte> q23)
    {
        q01 = Vector512.ConditionalSelect(m0F, ql, Avx512BW.ShiftLeftLogicalVariable(hi, left).AsByte() & m30);
        q23 = Vector512.ConditionalSelect(m0F, Avx512BW.ShiftRightLogical(ql.AsUInt16(), 4).AsByte(), Avx512BW.ShiftRightLogicalVariable(hi, right).AsByte() & m30);
    }

    /// <summary>One token's block: the integer sums as <see cref="HeadKernels.DotQ6_KQ8K"/> has them, then its fused
    /// multiply-add by d_w·d_x.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Token(sbyte* x, float d, short* sums, Vector256<short> scales,
        Vector512<byte> q01a, Vector512<byte> q23a, Vector512<byte> q01b, Vector512<byte> q23b,
        Vector512<short> s01a, Vector512<short> s23a, Vector512<short> s01b, Vector512<short> s23b, Vector256<float> acc)
    {
        var p = (Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(q01a, Vector512.Load(x)), s01a)
                + Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(q23a, Vector512.Load(x + 64)), s23a))
            + (Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(q01b, Vector512.Load(x + 128)), s01b)
                + Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(q23b, Vector512.Load(x + 192)), s23b));
        var isum = -Vector256.ShiftLeft(Avx2.MultiplyAddAdjacent(scales, Vector256.Load(sums)), 5) + (p.GetLower() + p.GetUpper());
        return Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(isum), Vector256.Create(d), acc);
    }
}
