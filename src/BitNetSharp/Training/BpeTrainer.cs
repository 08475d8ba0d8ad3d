using System.Text;

namespace BitNetSharp.Training;

/// <summary>
/// Trains a byte-level BPE vocabulary (GPT-2 / Sennrich et al. 2016) on text:
/// <list type="number">
/// <item>the text is cut at every occurrence of a special token, longest first as the runtime cuts it (special tokens
/// never take part in merges);</item>
/// <item>each piece is pre-tokenized by GPT-2's regex (<see cref="TrainedTokenizer.Gpt2Pattern"/>) and every
/// pre-token is counted as a sequence of its UTF-8 bytes;</item>
/// <item>repeatedly, the adjacent symbol pair with the highest count summed over all pre-tokens (counted with
/// multiplicity, pairs never crossing a pre-token boundary) is merged into a new symbol, until the vocabulary
/// (special tokens + 256 bytes + merges) has the requested size.</item>
/// </list>
/// <para>
/// Tie-break, deterministic: among pairs with equal count the lexicographically greatest pair wins, comparing
/// (bytes of left, bytes of right) as byte strings (unsigned bytes, a proper prefix sorts first), first the left
/// then the right — the rule of the Stanford CS336 reference trainer, whose output this reproduces.
/// </para>
/// Ids: special tokens first in the order given, then the 256 single bytes in GPT-2's order
/// (<see cref="ByteLevel.Order"/>), then one id per merge in merge order.
/// </summary>
public static class BpeTrainer
{
    public const string EndOfText = "<|endoftext|>";

    /// <summary>
    /// Trains on <paramref name="texts"/> (documents; none crosses into the next). Throws <see cref="ArgumentException"/>
    /// when <paramref name="vocabSize"/> is below specials + 256 or above what the corpus supports (no pair left to merge).
    /// </summary>
    /// <param name="bosToken">The special token used as BOS (default the first special token).</param>
    /// <param name="eosToken">The special token used as EOS (default the first special token).</param>
    public static TrainedTokenizer Train(IEnumerable<string> texts, int vocabSize, IReadOnlyList<string> specialTokens, string? bosToken = null, string? eosToken = null,
        CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(texts);
        ArgumentNullException.ThrowIfNull(specialTokens);
        if (specialTokens.Count == 0) throw new ArgumentException("At least one special token (e.g. <|endoftext|>) is needed for BOS/EOS.", nameof(specialTokens));
        if (specialTokens.Distinct(StringComparer.Ordinal).Count() != specialTokens.Count || specialTokens.Any(string.IsNullOrEmpty))
            throw new ArgumentException("Special tokens must be distinct and non-empty.", nameof(specialTokens));
        int baseCount = specialTokens.Count + 256;
        if (vocabSize < baseCount)
            throw new ArgumentException($"A vocabulary of {vocabSize} cannot hold the {specialTokens.Count} special token(s) and the 256 byte tokens; use at least {baseCount}.", nameof(vocabSize));

        // 1–2. Pre-token counts.
        var counts = new Dictionary<string, long>(StringComparer.Ordinal);
        var specialsLongestFirst = specialTokens.OrderByDescending(s => s.Length).ToArray();
        var pieces = new List<(int Start, int Length)>();
        foreach (var text in texts)
        {
        cancellation.ThrowIfCancellationRequested();
        foreach (var (partStart, partLength, special) in TrainedTokenizer.Partition(text, specialsLongestFirst))
        {
            if (special >= 0) continue;
            string part = text.Substring(partStart, partLength);
            pieces.Clear();
            TrainedTokenizer.PreTokenize(part, pieces);
            foreach (var (start, length) in pieces)
            {
                var key = part.Substring(start, length);
                counts[key] = counts.TryGetValue(key, out long c) ? c + 1 : 1;
            }
        }
        }

        // Symbols: byte values 0..255 are symbols 0..255; merge k creates symbol 256 + k.
        var symbolBytes = new List<byte[]>(vocabSize);
        for (int b = 0; b < 256; b++) symbolBytes.Add([(byte)b]);
        var words = new List<int[]>(counts.Count);
        var wordCounts = new List<long>(counts.Count);
        foreach (var (text, count) in counts.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            var bytes = Encoding.UTF8.GetBytes(text);
            words.Add(Array.ConvertAll(bytes, b => (int)b));
            wordCounts.Add(count);
        }

        // 3. Pair statistics and, per pair, the words it occurs in.
        var pairCounts = new Dictionary<(int, int), long>();
        var pairWords = new Dictionary<(int, int), HashSet<int>>();
        for (int w = 0; w < words.Count; w++) AddPairs(words[w], w, wordCounts[w], pairCounts, pairWords);

        var merges = new List<(int Left, int Right)>();
        int target = vocabSize - baseCount;
        var removed = new List<(int, int)>();
        var added = new List<(int, int)>();
        while (merges.Count < target)
        {
            // Ctrl-C in `bitnet train` waited for the whole vocabulary (tens of seconds on a large corpus).
            cancellation.ThrowIfCancellationRequested();
            (int, int) best = default;
            long bestCount = 0;
            foreach (var (pair, count) in pairCounts)
            {
                if (count > bestCount || (count == bestCount && count > 0 && Greater(pair, best, symbolBytes)))
                {
                    best = pair;
                    bestCount = count;
                }
            }
            if (bestCount == 0)
                throw new ArgumentException(
                    $"The corpus supports at most {baseCount + merges.Count} tokens ({specialTokens.Count} special + 256 bytes + {merges.Count} merges): " +
                    $"after {merges.Count} merges no two adjacent symbols are left to merge. Use --vocab {baseCount + merges.Count} or less, or more text.",
                    nameof(vocabSize));

            int created = symbolBytes.Count;
            symbolBytes.Add([.. symbolBytes[best.Item1], .. symbolBytes[best.Item2]]);
            merges.Add(best);
            foreach (int w in pairWords[best].ToArray())
            {
                // Only the pairs next to a merge change: the word's other pairs were removed and counted again, so a long
                // word without spaces (a minified or base64 blob: one pre-token) cost its length in dictionary updates per
                // merge (a 1 MB one took 4 minutes for 700 merges).
                words[w] = Merge(words[w], best, created, removed, added);
                long count = wordCounts[w];
                foreach (var pair in removed)
                {
                    long left = pairCounts[pair] - count;
                    if (left == 0)
                    {
                        pairCounts.Remove(pair);
                        pairWords.Remove(pair);
                    }
                    else pairCounts[pair] = left; // w stays listed: a word listed for a pair it lost is merged as a no-op
                }
                foreach (var pair in added)
                {
                    pairCounts[pair] = pairCounts.TryGetValue(pair, out long c) ? c + count : count;
                    if (!pairWords.TryGetValue(pair, out var set)) pairWords[pair] = set = [];
                    set.Add(w);
                }
            }
        }

        // Ids and texts.
        var tokens = new List<string>(vocabSize);
        tokens.AddRange(specialTokens);
        var idOfSymbol = new int[symbolBytes.Count];
        foreach (byte b in ByteLevel.Order)
        {
            idOfSymbol[b] = tokens.Count;
            tokens.Add(ByteLevel.CharOf(b).ToString());
        }
        var mergeTexts = new List<string>(merges.Count);
        for (int k = 0; k < merges.Count; k++)
        {
            string left = ByteLevel.Encode(symbolBytes[merges[k].Left]), right = ByteLevel.Encode(symbolBytes[merges[k].Right]);
            mergeTexts.Add(left + " " + right);
            idOfSymbol[256 + k] = tokens.Count;
            tokens.Add(left + right);
        }
        int bos = specialTokens.ToList().IndexOf(bosToken ?? specialTokens[0]);
        int eos = specialTokens.ToList().IndexOf(eosToken ?? specialTokens[0]);
        if (bos < 0 || eos < 0) throw new ArgumentException("The BOS and EOS tokens must be among the special tokens.");
        return new TrainedTokenizer(tokens, mergeTexts, specialTokens, bos, eos);
    }

    /// <summary>(bytes(a.left), bytes(a.right)) &gt; (bytes(b.left), bytes(b.right)) lexicographically.</summary>
    private static bool Greater((int, int) a, (int, int) b, List<byte[]> bytes)
    {
        int c = bytes[a.Item1].AsSpan().SequenceCompareTo(bytes[b.Item1]);
        if (c != 0) return c > 0;
        return bytes[a.Item2].AsSpan().SequenceCompareTo(bytes[b.Item2]) > 0;
    }

    /// <summary>
    /// <paramref name="word"/> with each occurrence of <paramref name="pair"/>, left to right, made <paramref name="created"/>;
    /// <paramref name="removed"/> gets the old word's pairs that touched a merged symbol (once each) and
    /// <paramref name="added"/> the new word's pairs that touch a created one, so counts change by exactly the difference.
    /// </summary>
    private static int[] Merge(int[] word, (int Left, int Right) pair, int created, List<(int, int)> removed, List<(int, int)> added)
    {
        removed.Clear();
        added.Clear();
        var result = new List<int>(word.Length);
        int lastRemoved = -1; // the old pair index (i, i+1) last listed, so adjacent merges list a pair once
        for (int i = 0; i < word.Length; i++)
        {
            if (i + 1 < word.Length && word[i] == pair.Left && word[i + 1] == pair.Right)
            {
                for (int j = Math.Max(i - 1, lastRemoved + 1); j <= i + 1 && j + 1 < word.Length; j++) removed.Add((word[j], word[j + 1]));
                lastRemoved = Math.Min(i + 1, word.Length - 2);
                result.Add(created);
                i++;
            }
            else result.Add(word[i]);
        }
        // The new word's pairs with a created symbol on either side (a pair of two created symbols once).
        for (int k = 0; k + 1 < result.Count; k++)
            if (result[k] == created || result[k + 1] == created) added.Add((result[k], result[k + 1]));
        return [.. result];
    }

    private static void AddPairs(int[] word, int w, long count, Dictionary<(int, int), long> pairCounts, Dictionary<(int, int), HashSet<int>> pairWords)
    {
        for (int i = 0; i + 1 < word.Length; i++)
        {
            var pair = (word[i], word[i + 1]);
            pairCounts[pair] = pairCounts.TryGetValue(pair, out long c) ? c + count : count;
            if (!pairWords.TryGetValue(pair, out var set)) pairWords[pair] = set = [];
            set.Add(w);
        }
    }

}
