namespace BitNetSharp.Evaluation;

/// <summary>
/// Next-token distributions compared in double precision: log-softmax of a logits row, KL divergence between two
/// rows, the same against a reference kept only as its top-k tokens plus the mass of the rest, and top-k selection.
/// </summary>
public static class Distributions
{
    /// <summary>log softmax(z) into <paramref name="logProbs"/> (max subtracted, the normaliser summed in double).</summary>
    public static void LogSoftmax(ReadOnlySpan<float> z, Span<double> logProbs)
    {
        if (logProbs.Length != z.Length) throw new ArgumentException($"{logProbs.Length} outputs for {z.Length} logits.", nameof(logProbs));
        float max = float.NegativeInfinity;
        foreach (float v in z) max = MathF.Max(max, v);
        double sum = 0;
        foreach (float v in z) sum += Math.Exp(v - max);
        double logZ = max + Math.Log(sum);
        for (int i = 0; i < z.Length; i++) logProbs[i] = z[i] - logZ;
    }

    /// <summary>KL(P ‖ Q) = Σ p (ln p − ln q) in nats, from two log-probability rows (terms with p = 0 add nothing).</summary>
    public static double KlDivergence(ReadOnlySpan<double> logP, ReadOnlySpan<double> logQ)
    {
        if (logP.Length != logQ.Length) throw new ArgumentException($"Rows of {logP.Length} and {logQ.Length} tokens cannot be compared.", nameof(logQ));
        double kl = 0;
        for (int i = 0; i < logP.Length; i++)
        {
            double p = Math.Exp(logP[i]);
            if (p > 0) kl += p * (logP[i] - logQ[i]);
        }
        return Math.Max(0, kl); // rounding can leave a tiny negative for identical rows
    }

    /// <summary>
    /// <see cref="KlDivergence"/> against a row saved as float: Q's entries are rounded to float as P's were when they
    /// were stored (a model against its own file reads exactly 0), and P's total probability comes back in
    /// <paramref name="massP"/> (a damaged row's is not 1) from the same pass, which computes each p anyway.
    /// </summary>
    public static double KlDivergenceAsStored(ReadOnlySpan<double> logP, ReadOnlySpan<double> logQ, out double massP)
    {
        if (logP.Length != logQ.Length) throw new ArgumentException($"Rows of {logP.Length} and {logQ.Length} tokens cannot be compared.", nameof(logQ));
        double kl = 0, mass = 0;
        for (int i = 0; i < logP.Length; i++)
        {
            double p = Math.Exp(logP[i]);
            mass += p;
            if (p > 0) kl += p * (logP[i] - (float)logQ[i]);
        }
        massP = mass;
        return Math.Max(0, kl);
    }

    /// <summary>Index of the largest value rounded to float (the first of equals): <see cref="ArgMax"/> of a row as it would be saved.</summary>
    public static int ArgMaxAsStored(ReadOnlySpan<double> values)
    {
        int best = 0;
        float top = (float)values[0];
        for (int i = 1; i < values.Length; i++)
        {
            float v = (float)values[i];
            if (v > top)
            {
                top = v;
                best = i;
            }
        }
        return best;
    }

    /// <summary>
    /// KL(P ‖ Q) where P is known only by its top tokens (<paramref name="ids"/>, <paramref name="logP"/>) and the
    /// log of the mass of all other tokens (<paramref name="logRest"/>): the divergence between the two distributions
    /// coarsened to those k tokens plus one "rest" bucket. By the data-processing inequality it is at most the
    /// full KL; with the top 32 of a peaked next-token distribution it is close to it.
    /// </summary>
    /// <param name="logRestQ">Q's rest mass as the caller has it (a saved reference's rounding applied to this run's too); else summed from <paramref name="logQ"/>.</param>
    /// <param name="roundQ">Q's top entries rounded to float, as a saved P's were.</param>
    public static double KlDivergenceTopK(ReadOnlySpan<int> ids, ReadOnlySpan<float> logP, double logRest, ReadOnlySpan<double> logQ, double? logRestQ = null, bool roundQ = false)
    {
        double kl = 0;
        for (int j = 0; j < ids.Length; j++)
        {
            double lq = roundQ ? (float)logQ[ids[j]] : logQ[ids[j]];
            double p = Math.Exp(logP[j]);
            if (p > 0) kl += p * (logP[j] - lq);
        }
        double restP = Math.Exp(logRest);
        // Q's rest mass summed over the other tokens in log space: 1 − (Q's top mass) cancelled to 0 when Q held nearly
        // everything on P's top tokens, and a floor of 5e-324 then added up to ~744 × restP nats.
        if (restP > 0) kl += restP * (logRest - (logRestQ ?? LogSumExpExcept(logQ, ids)));
        return Math.Max(0, kl);
    }

    /// <summary>ln Σ exp(<paramref name="logs"/>[i]) over the indices not in <paramref name="excluded"/> (−∞ when none is left), summed without cancellation.</summary>
    public static double LogSumExpExcept(ReadOnlySpan<double> logs, ReadOnlySpan<int> excluded)
    {
        int[]? rented = null;
        Span<int> sorted = excluded.Length <= 256 ? stackalloc int[excluded.Length] : (rented = System.Buffers.ArrayPool<int>.Shared.Rent(excluded.Length)).AsSpan(0, excluded.Length);
        try
        {
            excluded.CopyTo(sorted);
            sorted.Sort();
            double max = double.NegativeInfinity;
            for (int i = 0, e = 0; i < logs.Length; i++)
            {
                while (e < sorted.Length && sorted[e] < i) e++;
                if (e < sorted.Length && sorted[e] == i) continue;
                if (logs[i] > max) max = logs[i];
            }
            if (double.IsNegativeInfinity(max) || double.IsNaN(max)) return max;
            double sum = 0;
            for (int i = 0, e = 0; i < logs.Length; i++)
            {
                while (e < sorted.Length && sorted[e] < i) e++;
                if (e < sorted.Length && sorted[e] == i) continue;
                sum += Math.Exp(logs[i] - max);
            }
            return max + Math.Log(sum);
        }
        finally
        {
            if (rented is not null) System.Buffers.ArrayPool<int>.Shared.Return(rented);
        }
    }

    /// <summary>Index of the largest value (the first of equals).</summary>
    public static int ArgMax(ReadOnlySpan<double> values)
    {
        int best = 0;
        for (int i = 1; i < values.Length; i++)
            if (values[i] > values[best]) best = i;
        return best;
    }

    /// <summary>
    /// The <paramref name="ids"/>.Length largest entries of <paramref name="values"/>, largest first (ties: lower
    /// index first), by a bounded min-heap: O(n log k), no allocation.
    /// </summary>
    public static void TopK(ReadOnlySpan<double> values, Span<int> ids)
    {
        int k = ids.Length;
        if (k == 0) return;
        if (k > values.Length) throw new ArgumentException($"Top {k} of {values.Length} values.", nameof(ids));
        // Heap of the k best so far with the worst at the root; "worse" = smaller value, or equal value and larger index.
        for (int i = 0; i < k; i++)
        {
            ids[i] = i;
            SiftUp(values, ids, i);
        }
        for (int i = k; i < values.Length; i++)
        {
            if (!Better(values, i, ids[0])) continue;
            ids[0] = i;
            SiftDown(values, ids, 0, k);
        }
        // Heap sort in place: repeatedly move the worst to the end, so the array ends best-first.
        for (int end = k - 1; end > 0; end--)
        {
            (ids[0], ids[end]) = (ids[end], ids[0]);
            SiftDown(values, ids, 0, end);
        }
    }

    private static bool Better(ReadOnlySpan<double> v, int a, int b) => v[a] > v[b] || (v[a] == v[b] && a < b);

    private static void SiftUp(ReadOnlySpan<double> v, Span<int> heap, int i)
    {
        while (i > 0)
        {
            int parent = (i - 1) / 2;
            if (!Better(v, heap[parent], heap[i])) break;
            (heap[parent], heap[i]) = (heap[i], heap[parent]);
            i = parent;
        }
    }

    private static void SiftDown(ReadOnlySpan<double> v, Span<int> heap, int i, int n)
    {
        while (true)
        {
            int l = 2 * i + 1, r = l + 1, worst = i;
            if (l < n && Better(v, heap[worst], heap[l])) worst = l;
            if (r < n && Better(v, heap[worst], heap[r])) worst = r;
            if (worst == i) return;
            (heap[worst], heap[i]) = (heap[i], heap[worst]);
            i = worst;
        }
    }
}
