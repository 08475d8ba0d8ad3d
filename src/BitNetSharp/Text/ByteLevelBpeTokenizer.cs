using System.Buffers;
using System.Text;
using BitNetSharp.Formats;

namespace BitNetSharp.Tokenization;

/// <summary>
/// Byte-level BPE (GPT-2, Llama 3, BitNet b1.58 2B4T): the text is split by a <see cref="PreTokenizer"/>, each
/// word's UTF-8 bytes start as one token each, and adjacent pairs are merged lowest merge rank first (ties: leftmost),
/// as in llama.cpp's llm_tokenizer_bpe. Built from a vocabulary plus the ranked merge list ("A B" strings), which is
/// what GGUF (<c>tokenizer.ggml.merges</c>), merges.txt and tokenizer.json carry.
/// </summary>
public sealed class ByteLevelBpeTokenizer : BitNetTokenizer
{
    private readonly Dictionary<long, (int Rank, int Merged)> _merges;
    private readonly int[] _byteTokens = new int[256];
    private readonly PreTokenizer _preTokenizer;

    /// <inheritdoc/>
    public override string? CoverageWarning
    {
        get
        {
            int missing = 0;
            var examples = new List<string>();
            for (int b = 0; b < 256; b++)
            {
                // 0xC0, 0xC1 and 0xF5–0xFF never occur in UTF-8, and text is encoded from UTF-8: GPT-NeoX's vocabularies
                // (Pythia, MPT) leave them out on purpose, and were warned about as if damaged.
                if (_byteTokens[b] >= 0 || b is 0xC0 or 0xC1 or >= 0xF5) continue;
                missing++;
                if (examples.Count < 8) examples.Add(b is >= 0x21 and < 0x7F ? $"0x{b:X2} '{(char)b}'" : $"0x{b:X2}");
            }
            return missing == 0 ? null
                : $"the vocabulary has no token for {missing} of the 243 bytes UTF-8 text can hold ({string.Join(", ", examples)}{(missing > examples.Count ? ", …" : "")}): text holding them loses them when encoded (as llama.cpp drops them). Is the vocabulary damaged?";
        }
    }

    internal ByteLevelBpeTokenizer(TokenizerVocabulary vocabulary, IReadOnlyList<string> merges, PreTokenizer preTokenizer, string sourcePath, string mergesItem)
        : base(vocabulary, static (text, _) => ByteLevelEncoding.Decode(text))
    {
        _preTokenizer = preTokenizer;
        for (int b = 0; b < 256; b++) _byteTokens[b] = vocabulary.Find(ByteLevelEncoding.ByteToChar((byte)b).ToString());

        _merges = new Dictionary<long, (int, int)>(merges.Count, PairComparer.Instance);
        var lookup = IdByText.GetAlternateLookup<ReadOnlySpan<char>>();
        char[] joined = new char[64];
        for (int rank = 0; rank < merges.Count; rank++)
        {
            var merge = merges[rank].AsSpan();
            // llama.cpp splits at the first space after the first character, so a merge of a literal space still parses.
            int space = merge.Length > 1 ? merge[1..].IndexOf(' ') + 1 : 0;
            if (space <= 0)
                throw new ModelFormatException(sourcePath, $"merge {rank} (\"{merges[rank]}\") is not two tokens separated by a space", mergesItem);
            var left = merge[..space];
            var right = merge[(space + 1)..];
            if (left.Length + right.Length > joined.Length) joined = new char[left.Length + right.Length];
            left.CopyTo(joined);
            right.CopyTo(joined.AsSpan(left.Length));
            // A merge whose parts or result are not tokens can never fire on token ids; skip it.
            if (!lookup.TryGetValue(left, out var leftId) || !lookup.TryGetValue(right, out var rightId) ||
                !lookup.TryGetValue(joined.AsSpan(0, left.Length + right.Length), out var mergedId)) continue;
            _merges.TryAdd(PairKey(leftId, rightId), (rank, mergedId));
        }
    }

    public PreTokenizer PreTokenizer => _preTokenizer;

    public int MergeCount => _merges.Count;

    /// <summary>
    /// The merges that can fire, in rank order, as "left right" token texts (the form GGUF and merges.txt store).
    /// Merges of the source whose parts or result are not tokens were dropped at load: they never apply to ids.
    /// </summary>
    public string[] MergeTexts()
    {
        var ordered = new (int Rank, long Pair)[_merges.Count];
        int i = 0;
        foreach (var (pair, value) in _merges) ordered[i++] = (value.Rank, pair);
        Array.Sort(ordered, (a, b) => a.Rank.CompareTo(b.Rank));
        var texts = new string[ordered.Length];
        for (i = 0; i < ordered.Length; i++)
            texts[i] = TokenText((int)(ordered[i].Pair >> 32)) + " " + TokenText((int)(uint)ordered[i].Pair);
        return texts;
    }

    public override string Description => $"byte-level BPE, {_preTokenizer.Name} pre-tokenizer{(_preTokenizer.IgnoreMerges ? ", whole-word vocabulary hits" : "")}";

    private static long PairKey(int left, int right) => ((long)left << 32) | (uint)right;

    /// <summary>
    /// The merge table's hash: long's own is hi ^ lo, i.e. left ^ right, so every merge of a token with itself (548 in
    /// Llama 3's table: "ĠĠ", "ĠĠ ĠĠ", ...) hashed to 0 and pairs of small ids crowded a few buckets; a run of one
    /// repeated token walked that chain at every lookup (1 MB of spaces took 8.3 s with Llama 3's vocabulary, 0.48 s spread). A
    /// Fibonacci multiply spreads both halves over the whole word.
    /// </summary>
    internal sealed class PairComparer : IEqualityComparer<long>
    {
        public static readonly PairComparer Instance = new();

        public bool Equals(long x, long y) => x == y;

        public int GetHashCode(long key) => (int)((ulong)key * 0x9E3779B97F4A7C15UL >> 32);
    }

    /// <summary>Plain text (no special tokens) to ids, for a tokenizer that encodes through this one (tiktoken's ranks).</summary>
    internal void EncodePlain(string text, int start, int length, List<int> output) => EncodeText(text, start, length, afterSpecial: false, output);

    private protected override void EncodeText(string text, int start, int length, bool afterSpecial, List<int> output)
    {
        var words = new List<(int Start, int Length)>();
        _preTokenizer.Split(text, start, length, words);
        var session = new MergeSession();
        byte[] utf8 = ArrayPool<byte>.Shared.Rent(256);
        char[] chars = ArrayPool<char>.Shared.Rent(256);
        try
        {
            foreach (var (wordStart, wordLength) in words)
            {
                var word = text.AsSpan(wordStart, wordLength);
                int max = Encoding.UTF8.GetMaxByteCount(wordLength);
                if (max > utf8.Length)
                {
                    ArrayPool<byte>.Shared.Return(utf8);
                    ArrayPool<char>.Shared.Return(chars);
                    utf8 = ArrayPool<byte>.Shared.Rent(max);
                    chars = ArrayPool<char>.Shared.Rent(max);
                }
                int n = Encoding.UTF8.GetBytes(word, utf8);
                var bytes = utf8.AsSpan(0, n);

                if (_preTokenizer.IgnoreMerges)
                {
                    for (int i = 0; i < n; i++) chars[i] = ByteLevelEncoding.ByteToChar(bytes[i]);
                    if (TryGetTokenId(chars.AsSpan(0, n), out var whole))
                    {
                        output.Add(whole);
                        continue;
                    }
                }
                session.Merge(bytes, _byteTokens, _merges, output);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(utf8);
            ArrayPool<char>.Shared.Return(chars);
        }
    }

    /// <summary>Scratch state for merging one word after another (a doubly linked list of symbols and a queue of candidate pairs).</summary>
    private sealed class MergeSession
    {
        private int[] _ids = new int[64];
        private int[] _prev = new int[64];
        private int[] _next = new int[64];
        private readonly PriorityQueue<(int Left, int Right, int LeftId, int RightId, int Merged), long> _queue = new();

        public void Merge(ReadOnlySpan<byte> bytes, int[] byteTokens, Dictionary<long, (int Rank, int Merged)> merges, List<int> output)
        {
            int n = bytes.Length;
            if (n > _ids.Length)
            {
                _ids = new int[n];
                _prev = new int[n];
                _next = new int[n];
            }
            for (int i = 0; i < n; i++)
            {
                _ids[i] = byteTokens[bytes[i]];
                _prev[i] = i - 1;
                _next[i] = i + 1 < n ? i + 1 : -1;
            }
            _queue.Clear();
            for (int i = 1; i < n; i++) TryQueue(i - 1, i, merges);

            while (_queue.TryDequeue(out var pair, out _))
            {
                // Stale entry: one side has merged with something else since this pair was queued.
                if (_ids[pair.Left] != pair.LeftId || _ids[pair.Right] != pair.RightId || _next[pair.Left] != pair.Right) continue;
                _ids[pair.Left] = pair.Merged;
                _ids[pair.Right] = -2;
                int after = _next[pair.Right];
                _next[pair.Left] = after;
                if (after >= 0) _prev[after] = pair.Left;
                if (_prev[pair.Left] >= 0) TryQueue(_prev[pair.Left], pair.Left, merges);
                if (after >= 0) TryQueue(pair.Left, after, merges);
            }

            // A byte whose character is not in the vocabulary (-1) has no token; llama.cpp drops it too.
            for (int i = 0; i >= 0 && i < n; i = _next[i])
                if (_ids[i] >= 0) output.Add(_ids[i]);
        }

        private void TryQueue(int left, int right, Dictionary<long, (int Rank, int Merged)> merges)
        {
            int leftId = _ids[left], rightId = _ids[right];
            if (leftId < 0 || rightId < 0) return;
            if (!merges.TryGetValue(PairKey(leftId, rightId), out var rule)) return;
            _queue.Enqueue((left, right, leftId, rightId, rule.Merged), ((long)rule.Rank << 32) | (uint)left);
        }
    }
}
