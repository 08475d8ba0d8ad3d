using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace BitNetSharp.Kernels;

/// <summary>
/// The Q8_0 head's row dot on 512-bit vectors (AVX-512BW), one token against four rows or one row against one to four
/// tokens. A block's 32 int8 weights are widened to int16 (vpmovsxbw from memory) and multiplied by the token's int8
/// activations widened once per call (<see cref="Widen"/>) with vpmaddwd: one vector of 16 int32 pair sums per block,
/// converted and added with one fused multiply-add by d_w·d_x — five vector operations per block, against seven to eight
/// for the 256-bit kernel's vpsignb/vpmaddubsw form (AVX-512 has no vpsignb; emulating it cost as much as it saved).
/// Even blocks go to one accumulator and odd ones to another, in block order, so a (row, token) sum is the same whichever
/// method and however many tokens or rows a call takes (not the same lanes as the 256-bit <see cref="HeadKernels.DotQ8_0Q8"/>:
/// on a CPU with AVX-512 every Q8_0 head product takes this kernel).
/// </summary>
public static unsafe class HeadQ8_0512
{
    public static bool IsSupported => Avx512BW.IsSupported && Vector512.IsHardwareAccelerated;

    /// <summary>Most tokens per <see cref="Dot"/> call.</summary>
    public const int MaxTokens = 4;

    private const int BlockBytes = 34;

    /// <summary>Q8_0-quantized activations (<see cref="HeadKernels.QuantizeQ8Blocks"/>) widened to int16, the form the
    /// kernels read.</summary>
    public static void Widen(sbyte* q, short* x16, int n)
    {
        int i = 0;
        for (; i + 32 <= n; i += 32) Avx512BW.ConvertToVector512Int16(Vector256.Load(q + i)).Store(x16 + i);
        for (; i < n; i++) x16[i] = q[i];
    }

    /// <summary>
    /// One token (widened activations <paramref name="x16"/>, block scales <paramref name="dx"/>) against four rows read
    /// side by side (four weight streams, as the F16 and Q6_K heads).
    /// </summary>
    public static void DotRows4(byte* w0, byte* w1, byte* w2, byte* w3, short* x16, float* dx, int blocks, float* r0, float* r1, float* r2, float* r3)
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, c0 = default, c1 = default, c2 = default, c3 = default;
        int b = 0;
        for (; b + 2 <= blocks; b += 2)
        {
            long at = (long)b * BlockBytes;
            var xa = Vector512.Load(x16 + b * 32);
            var xb = Vector512.Load(x16 + b * 32 + 32);
            float ea = dx[b], eb = dx[b + 1];
            a0 = Block(w0 + at, xa, ea, a0); c0 = Block(w0 + at + BlockBytes, xb, eb, c0);
            a1 = Block(w1 + at, xa, ea, a1); c1 = Block(w1 + at + BlockBytes, xb, eb, c1);
            a2 = Block(w2 + at, xa, ea, a2); c2 = Block(w2 + at + BlockBytes, xb, eb, c2);
            a3 = Block(w3 + at, xa, ea, a3); c3 = Block(w3 + at + BlockBytes, xb, eb, c3);
        }
        if (b < blocks)
        {
            long at = (long)b * BlockBytes;
            var xa = Vector512.Load(x16 + b * 32);
            a0 = Block(w0 + at, xa, dx[b], a0); a1 = Block(w1 + at, xa, dx[b], a1);
            a2 = Block(w2 + at, xa, dx[b], a2); a3 = Block(w3 + at, xa, dx[b], a3);
        }
        *r0 = Vector512.Sum(a0 + c0);
        *r1 = Vector512.Sum(a1 + c1);
        *r2 = Vector512.Sum(a2 + c2);
        *r3 = Vector512.Sum(a3 + c3);
    }

    /// <summary>
    /// Two tokens (widened activations <paramref name="x16"/> and x16 + <paramref name="stride"/>, block scales
    /// <paramref name="dx"/> and dx + blocks) against four rows read side by side, each block widened once for both:
    /// result[2k + t] = row k · token t, equal to <see cref="Dot"/>'s bit for bit (two sequences decoding together).
    /// </summary>
    public static void DotRows4x2(byte* w0, byte* w1, byte* w2, byte* w3, short* x16, int stride, float* dx, int blocks, float* result)
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, c0 = default, c1 = default, c2 = default, c3 = default;
        Vector512<float> e0 = default, e1 = default, e2 = default, e3 = default, f0 = default, f1 = default, f2 = default, f3 = default;
        int b = 0;
        for (; b < blocks; b += 2)
        {
            long at = (long)b * BlockBytes;
            bool pair = b + 1 < blocks;
            var xa = Vector512.Load(x16 + b * 32);
            var ya = Vector512.Load(x16 + stride + b * 32);
            float da = dx[b], ea = dx[blocks + b];
            if (pair)
            {
                var xb = Vector512.Load(x16 + b * 32 + 32);
                var yb = Vector512.Load(x16 + stride + b * 32 + 32);
                float db = dx[b + 1], eb = dx[blocks + b + 1];
                Two(w0 + at, xa, ya, da, ea, ref a0, ref e0); Two(w0 + at + BlockBytes, xb, yb, db, eb, ref c0, ref f0);
                Two(w1 + at, xa, ya, da, ea, ref a1, ref e1); Two(w1 + at + BlockBytes, xb, yb, db, eb, ref c1, ref f1);
                Two(w2 + at, xa, ya, da, ea, ref a2, ref e2); Two(w2 + at + BlockBytes, xb, yb, db, eb, ref c2, ref f2);
                Two(w3 + at, xa, ya, da, ea, ref a3, ref e3); Two(w3 + at + BlockBytes, xb, yb, db, eb, ref c3, ref f3);
            }
            else
            {
                Two(w0 + at, xa, ya, da, ea, ref a0, ref e0); Two(w1 + at, xa, ya, da, ea, ref a1, ref e1);
                Two(w2 + at, xa, ya, da, ea, ref a2, ref e2); Two(w3 + at, xa, ya, da, ea, ref a3, ref e3);
            }
        }
        result[0] = Vector512.Sum(a0 + c0); result[1] = Vector512.Sum(e0 + f0);
        result[2] = Vector512.Sum(a1 + c1); result[3] = Vector512.Sum(e1 + f1);
        result[4] = Vector512.Sum(a2 + c2); result[5] = Vector512.Sum(e2 + f2);
        result[6] = Vector512.Sum(a3 + c3); result[7] = Vector512.Sum(e3 + f3);
    }

    /// <summary>One block of one row against two tokens, widened once.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Two(byte* w, Vector512<short> x0, Vector512<short> x1, float dx0, float dx1, ref Vector512<float> acc0, ref Vector512<float> acc1)
    {
        var w16 = Avx512BW.ConvertToVector512Int16(Vector256.Load((sbyte*)(w + 2)));
        float dw = HeadKernels.FiniteHalfToSingle(*(short*)w);
        acc0 = Vector512.FusedMultiplyAdd(Vector512.ConvertToSingle(Avx512BW.MultiplyAddAdjacent(w16, x0)), Vector512.Create(dw * dx0), acc0);
        acc1 = Vector512.FusedMultiplyAdd(Vector512.ConvertToSingle(Avx512BW.MultiplyAddAdjacent(w16, x1)), Vector512.Create(dw * dx1), acc1);
    }

    /// <summary>
    /// result[j] = row <paramref name="w"/> · token j (widened activations <paramref name="x16"/> + j·<paramref name="stride"/>,
    /// block scales <paramref name="dx"/> + j·blocks) for j &lt; <paramref name="tokens"/> (1 to 4): each block's weights
    /// widened once for all the tokens; each token's sum as <see cref="DotRows4"/> has it.
    /// </summary>
    public static void Dot(byte* w, short* x16, int stride, float* dx, int blocks, int tokens, float* result)
    {
        if ((uint)(tokens - 1) >= MaxTokens) throw new ArgumentOutOfRangeException(nameof(tokens), tokens, "one to four tokens per call");
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, c0 = default, c1 = default, c2 = default, c3 = default;
        int b = 0;
        for (; b + 2 <= blocks; b += 2)
        {
            // Even blocks into the a accumulators, odd into the c ones (as DotRows4).
            byte* wb = w + (long)b * BlockBytes;
            var wa = Avx512BW.ConvertToVector512Int16(Vector256.Load((sbyte*)(wb + 2)));
            var wc = Avx512BW.ConvertToVector512Int16(Vector256.Load((sbyte*)(wb + BlockBytes + 2)));
            float da = HeadKernels.FiniteHalfToSingle(*(short*)wb), dc = HeadKernels.FiniteHalfToSingle(*(short*)(wb + BlockBytes));
            short* x = x16 + b * 32;
            a0 = Fma(wa, x, da * dx[b], a0);
            c0 = Fma(wc, x + 32, dc * dx[b + 1], c0);
            if (tokens > 1)
            {
                a1 = Fma(wa, x + stride, da * dx[blocks + b], a1);
                c1 = Fma(wc, x + stride + 32, dc * dx[blocks + b + 1], c1);
                if (tokens > 2)
                {
                    a2 = Fma(wa, x + 2 * stride, da * dx[2 * blocks + b], a2);
                    c2 = Fma(wc, x + 2 * stride + 32, dc * dx[2 * blocks + b + 1], c2);
                    if (tokens > 3)
                    {
                        a3 = Fma(wa, x + 3 * stride, da * dx[3 * blocks + b], a3);
                        c3 = Fma(wc, x + 3 * stride + 32, dc * dx[3 * blocks + b + 1], c3);
                    }
                }
            }
        }
        if (b < blocks)
        {
            byte* wb = w + (long)b * BlockBytes;
            var wa = Avx512BW.ConvertToVector512Int16(Vector256.Load((sbyte*)(wb + 2)));
            float da = HeadKernels.FiniteHalfToSingle(*(short*)wb);
            short* x = x16 + b * 32;
            a0 = Fma(wa, x, da * dx[b], a0);
            if (tokens > 1) a1 = Fma(wa, x + stride, da * dx[blocks + b], a1);
            if (tokens > 2) a2 = Fma(wa, x + 2 * stride, da * dx[2 * blocks + b], a2);
            if (tokens > 3) a3 = Fma(wa, x + 3 * stride, da * dx[3 * blocks + b], a3);
        }
        result[0] = Vector512.Sum(a0 + c0);
        if (tokens > 1) result[1] = Vector512.Sum(a1 + c1);
        if (tokens > 2) result[2] = Vector512.Sum(a2 + c2);
        if (tokens > 3) result[3] = Vector512.Sum(a3 + c3);
    }

    /// <summary>One block of one row against one token, added to <paramref name="acc"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Block(byte* w, Vector512<short> x, float dx, Vector512<float> acc)
    {
        var w16 = Avx512BW.ConvertToVector512Int16(Vector256.Load((sbyte*)(w + 2)));
        return Vector512.FusedMultiplyAdd(Vector512.ConvertToSingle(Avx512BW.MultiplyAddAdjacent(w16, x)),
            Vector512.Create(HeadKernels.FiniteHalfToSingle(*(short*)w) * dx), acc);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Fma(Vector512<short> w16, short* x, float d, Vector512<float> acc) =>
        Vector512.FusedMultiplyAdd(Vector512.ConvertToSingle(Avx512BW.MultiplyAddAdjacent(w16, Vector512.Load(x))), Vector512.Create(d), acc);
}
