using System.Runtime.CompilerServices;

namespace BitNetSharp.Generation.Sampling;

/// <summary>
/// The k best candidates without sorting the vocabulary: a k-entry min-heap whose root is the worst kept
/// (O(V) compares when k ≪ V, as most candidates lose to the root), then heap-sorted best first.
/// Order: higher logit first, ties to the lower id, so every result is deterministic. NaN logits are skipped.
/// </summary>
public static class TopKSelection
{
    /// <summary>
    /// Writes the best min(k, count) of (ids[i], logits[i]) to outIds/outLogits, best first; an empty
    /// <paramref name="ids"/> means id = index. Returns how many were written.
    /// </summary>
    public static int Select(ReadOnlySpan<float> logits, ReadOnlySpan<int> ids, int k, Span<int> outIds, Span<float> outLogits)
    {
        if (!ids.IsEmpty && ids.Length != logits.Length) throw new ArgumentException("ids and logits differ in length.", nameof(ids));
        k = Math.Min(k, logits.Length);
        if (k <= 0) return 0; // nothing to keep (a log-prob request without a top list); the heap would index an empty span
        if (outIds.Length < k || outLogits.Length < k) throw new ArgumentException($"Room for fewer than {k} results.", nameof(outIds));
        int size = 0;
        for (int i = 0; i < logits.Length; i++)
        {
            float logit = logits[i];
            if (float.IsNaN(logit)) continue;
            int id = ids.IsEmpty ? i : ids[i];
            if (size < k)
            {
                outIds[size] = id;
                outLogits[size] = logit;
                SiftUp(outIds, outLogits, size++);
            }
            else if (Worse(outLogits[0], outIds[0], logit, id))
            {
                outIds[0] = id;
                outLogits[0] = logit;
                SiftDown(outIds, outLogits, 0, size);
            }
        }
        for (int end = size - 1; end > 0; end--)
        {
            (outIds[0], outIds[end]) = (outIds[end], outIds[0]);
            (outLogits[0], outLogits[end]) = (outLogits[end], outLogits[0]);
            SiftDown(outIds, outLogits, 0, end);
        }
        return size;
    }

    /// <summary>Whether (la, ia) ranks below (lb, ib).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool Worse(float la, int ia, float lb, int ib) => la < lb || (la == lb && ia > ib);

    private static void SiftUp(Span<int> ids, Span<float> logits, int i)
    {
        while (i > 0)
        {
            int parent = (i - 1) >> 1;
            if (!Worse(logits[i], ids[i], logits[parent], ids[parent])) break;
            (ids[i], ids[parent]) = (ids[parent], ids[i]);
            (logits[i], logits[parent]) = (logits[parent], logits[i]);
            i = parent;
        }
    }

    private static void SiftDown(Span<int> ids, Span<float> logits, int i, int size)
    {
        while (true)
        {
            int left = 2 * i + 1;
            if (left >= size) return;
            int worst = left;
            int right = left + 1;
            if (right < size && Worse(logits[right], ids[right], logits[left], ids[left])) worst = right;
            if (!Worse(logits[worst], ids[worst], logits[i], ids[i])) return;
            (ids[i], ids[worst]) = (ids[worst], ids[i]);
            (logits[i], logits[worst]) = (logits[worst], logits[i]);
            i = worst;
        }
    }
}
