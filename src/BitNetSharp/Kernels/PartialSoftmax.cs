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
        double total = 0;
        for (int c = 0; c < chunks; c++)
        {
            float* p = partials + (long)c * partialStride;
            total += (double)p[sumOffset] * MathF.Exp(p[maxOffset] - top);
        }
        for (int c = 0; c < chunks; c++)
        {
            float* p = partials + (long)c * partialStride;
            float f = (float)(MathF.Exp(p[maxOffset] - top) / total);
            if (c == 0) Scale(p, f, output, n);
            else FusedAdd(p, f, output, n);
        }
    }

    /// <summary>output = f · o.</summary>
    private static void Scale(float* o, float f, float* output, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var v = Vector512.Create(f);
            for (; i <= n - 16; i += 16) (v * Vector512.Load(o + i)).Store(output + i);
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var v = Vector256.Create(f);
            for (; i <= n - 8; i += 8) (v * Vector256.Load(o + i)).Store(output + i);
        }
        for (; i < n; i++) output[i] = f * o[i];
    }

    /// <summary>output = f · o + output, one fused multiply-add per value at every width.</summary>
    private static void FusedAdd(float* o, float f, float* output, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var v = Vector512.Create(f);
            for (; i <= n - 16; i += 16) Vector512.FusedMultiplyAdd(v, Vector512.Load(o + i), Vector512.Load(output + i)).Store(output + i);
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var v = Vector256.Create(f);
            for (; i <= n - 8; i += 8) Vector256.FusedMultiplyAdd(v, Vector256.Load(o + i), Vector256.Load(output + i)).Store(output + i);
        }
        for (; i < n; i++) output[i] = MathF.FusedMultiplyAdd(f, o[i], output[i]);
    }
}
