using System.Runtime.Intrinsics;
using BitNetSharp.Kernels.FloatOps;

namespace BitNetSharp.Kernels;

/// <summary>
/// Attention over a long context in chunks of cached positions (split-K, as in flash-decoding): each chunk c keeps its
/// softmax unnormalized against its own maximum, m_c = max s, with l_c = Σ e^(s − m_c) and o_c = Σ e^(s − m_c) · V;
/// the merge rescales every chunk to the common maximum M = max m_c:
/// out = Σ_c (e^(m_c − M) / L) · o_c with L = Σ_c e^(m_c − M) · l_c, which is softmax(s) · V over all the positions.
/// Chunks can run on different threads; the merge visits them in increasing order, so the result does not depend on
/// which thread computed what.
/// </summary>
internal static unsafe class PartialSoftmax
{
    /// <summary>
    /// scores[i] = e^(scores[i] − m) in place with m = max scores (returned in <paramref name="max"/>); returns
    /// Σ e^(scores[i] − m). Scores holding NaN or +∞ (corrupted weights) give max = NaN and zero weights, so the merge
    /// makes the head's output NaN, as the unsplit softmax does; all −∞ gives max = −∞, sum 0 and zero weights.
    /// </summary>
    public static float Exponentiate(float* scores, int count, out float max)
    {
        max = ArgMax.Max<WidestVector>(scores, count);
        if (!float.IsFinite(max))
        {
            new Span<float>(scores, count).Clear();
            if (!float.IsNegativeInfinity(max)) max = float.NaN;
            return 0f;
        }
        return (float)Softmax.ExpAndSum<WidestVector>(scores, count, max);
    }

    /// <summary>
    /// output[0..n) = the merge of <paramref name="chunks"/> partial results for one head: chunk c's output row is at
    /// partials + c·partialStride, its maximum and sum at partials + c·partialStride + maxOffset and + sumOffset.
    /// A NaN maximum in any chunk, or no finite maximum at all, makes the output NaN.
    /// </summary>
    private const int MaxStackChunks = 512;

    [System.Runtime.CompilerServices.SkipLocalsInit]
    public static void Merge(float* partials, int chunks, int partialStride, int maxOffset, int sumOffset, int n, float* output)
    {
        float top = float.NegativeInfinity;
        for (int c = 0; c < chunks; c++)
        {
            float m = partials[(long)c * partialStride + maxOffset];
            if (float.IsNaN(m)) { top = float.NaN; break; }
            top = MathF.Max(top, m);
        }
        if (!float.IsFinite(top))
        {
            new Span<float>(output, n).Fill(float.NaN);
            return;
        }
        // Each chunk's e^(m_c − M) once (the same floats the sum and the factors both use).
        float[]? rented = chunks > MaxStackChunks ? System.Buffers.ArrayPool<float>.Shared.Rent(chunks) : null;
        Span<float> rescale = rented ?? stackalloc float[MaxStackChunks];
        double total = 0;
        for (int c = 0; c < chunks; c++)
        {
            float* p = partials + (long)c * partialStride;
            float gap = p[maxOffset] - top;
            // A chunk whose every weight lies more than 87 below the maximum adds nothing, as the unsplit softmax's
            // FastExp makes such weights exactly 0; its row is cleared, so a ±∞ value it holds (an F16 cache past
            // 65504, weighted ~1 inside its own chunk) cannot turn the head's output into NaN as 0·∞ or into ±∞.
            float e = gap < -87f || float.IsNegativeInfinity(p[maxOffset]) ? 0f : MathF.Exp(gap);
            if (e == 0f) new Span<float>(p, n).Clear();
            rescale[c] = e;
            total += (double)p[sumOffset] * e;
        }
        for (int c = 0; c < chunks; c++) rescale[c] = (float)(rescale[c] / total);
        fixed (float* f = rescale) Weigh(partials, chunks, partialStride, f, n, output);
        if (rented != null) System.Buffers.ArrayPool<float>.Shared.Return(rented);
    }

    /// <summary>
    /// output[i] = f₀·o₀[i], then + f_c·o_c[i] (one fused multiply-add) for c = 1, 2, … in order: the same operations per
    /// value at every width. Each 32-value slice is summed over all chunks in registers before it is stored, so the
    /// chunks' rows are independent loads (not a load and store of the output per chunk).
    /// </summary>
    private static void Weigh(float* partials, int chunks, int stride, float* f, int n, float* output)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            // 128 values at a time: eight independent chains of fused multiply-adds, the chunk loop outside, so the
            // chains overlap (a 32-value slice alone waits on one FMA's latency per chunk). The same operations per value.
            for (; i <= n - 128; i += 128)
            {
                float* p = partials + i;
                var f0 = Vector512.Create(f[0]);
                var a0 = f0 * Vector512.Load(p); var a1 = f0 * Vector512.Load(p + 16);
                var a2 = f0 * Vector512.Load(p + 32); var a3 = f0 * Vector512.Load(p + 48);
                var a4 = f0 * Vector512.Load(p + 64); var a5 = f0 * Vector512.Load(p + 80);
                var a6 = f0 * Vector512.Load(p + 96); var a7 = f0 * Vector512.Load(p + 112);
                for (int c = 1; c < chunks; c++)
                {
                    p += stride;
                    var fc = Vector512.Create(f[c]);
                    a0 = Vector512.FusedMultiplyAdd(fc, Vector512.Load(p), a0);
                    a1 = Vector512.FusedMultiplyAdd(fc, Vector512.Load(p + 16), a1);
                    a2 = Vector512.FusedMultiplyAdd(fc, Vector512.Load(p + 32), a2);
                    a3 = Vector512.FusedMultiplyAdd(fc, Vector512.Load(p + 48), a3);
                    a4 = Vector512.FusedMultiplyAdd(fc, Vector512.Load(p + 64), a4);
                    a5 = Vector512.FusedMultiplyAdd(fc, Vector512.Load(p + 80), a5);
                    a6 = Vector512.FusedMultiplyAdd(fc, Vector512.Load(p + 96), a6);
                    a7 = Vector512.FusedMultiplyAdd(fc, Vector512.Load(p + 112), a7);
                }
                a0.Store(output + i); a1.Store(output + i + 16); a2.Store(output + i + 32); a3.Store(output + i + 48);
                a4.Store(output + i + 64); a5.Store(output + i + 80); a6.Store(output + i + 96); a7.Store(output + i + 112);
            }
            for (; i <= n - 32; i += 32)
            {
                float* p = partials + i;
                var f0 = Vector512.Create(f[0]);
                var a = f0 * Vector512.Load(p);
                var b = f0 * Vector512.Load(p + 16);
                for (int c = 1; c < chunks; c++)
                {
                    p += stride;
                    var fc = Vector512.Create(f[c]);
                    a = Vector512.FusedMultiplyAdd(fc, Vector512.Load(p), a);
                    b = Vector512.FusedMultiplyAdd(fc, Vector512.Load(p + 16), b);
                }
                a.Store(output + i);
                b.Store(output + i + 16);
            }
        }
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i <= n - 8; i += 8)
            {
                float* p = partials + i;
                var a = Vector256.Create(f[0]) * Vector256.Load(p);
                for (int c = 1; c < chunks; c++)
                {
                    p += stride;
                    a = Vector256.FusedMultiplyAdd(Vector256.Create(f[c]), Vector256.Load(p), a);
                }
                a.Store(output + i);
            }
        }
        for (; i < n; i++)
        {
            float* p = partials + i;
            float a = f[0] * *p;
            for (int c = 1; c < chunks; c++)
            {
                p += stride;
                a = MathF.FusedMultiplyAdd(f[c], *p, a);
            }
            output[i] = a;
        }
    }
}
