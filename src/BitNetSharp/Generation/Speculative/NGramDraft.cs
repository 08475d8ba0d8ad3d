namespace BitNetSharp.Generation.Speculative;

/// <summary>
/// Prompt-lookup drafting (Saxena 2023): find the latest earlier occurrence of the context's last n tokens (n from
/// max down to min) and propose the tokens that followed it. No second model; strong where the output copies the
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
            // start: where an earlier copy of the suffix begins; its continuation history[start + n] must exist.
            for (int start = len - n - 1; start >= 0; start--)
            {
                if (history[start] != suffix[0] || !history.Slice(start, n).SequenceEqual(suffix)) continue;
                int from = start + n;
                int count = Math.Min(k, len - from);
                history.Slice(from, count).CopyTo(output);
                return count;
            }
        }
        return 0;
    }
}
