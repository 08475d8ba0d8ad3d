namespace BitNetSharp.Generation.Speculative;

/// <summary>
/// Prompt-lookup drafting (Saxena 2023): find the latest earlier occurrence of the context's last n tokens (n from
/// max down to min) that has k tokens after it, else the one with the most, and propose the tokens that followed it. No second model; strong where the output copies the
/// input (summaries, edits, code, retrieval-augmented answers) and harmless elsewhere (no match, no draft).
/// </summary>
public static class NGramDraft
{
    /// <summary>Writes up to <paramref name="output"/>.Length draft tokens continuing <paramref name="history"/>; returns how many.</summary>
    public static int Propose(ReadOnlySpan<int> history, int maxN, int minN, Span<int> output)
    {
        int k = output.Length;
        if (k == 0) return 0;
        int len = history.Length;
        for (int n = Math.Min(maxN, len - 1); n >= minN; n--)
        {
            var suffix = history[(len - n)..];
            // start: where an earlier copy of the suffix begins; its continuation history[start + n] must exist. The
            // latest copy with k tokens after it wins; inside a run that repeats with a period shorter than n the
            // latest copies overlap the suffix and have fewer, so the search goes on to the one with the most.
            int best = -1, bestCount = 0;
            for (int start = len - n - 1; start >= 0; start--)
            {
                if (history[start] != suffix[0] || !history.Slice(start, n).SequenceEqual(suffix)) continue;
                int count = Math.Min(k, len - start - n);
                if (count <= bestCount) continue;
                best = start + n;
                bestCount = count;
                if (count == k) break;
            }
            if (best >= 0)
            {
                history.Slice(best, bestCount).CopyTo(output);
                return bestCount;
            }
        }
        return 0;
    }
}
