using System.Text;

namespace BitNetSharp.Training;

/// <summary>
/// A byte-level BPE vocabulary made by <see cref="BpeTrainer"/>, in GPT-2's conventions and GGUF's "gpt2" model:
/// <see cref="Tokens"/> are id → token text (special tokens as written; every other token as its bytes through GPT-2's
/// byte → character map), <see cref="Merges"/> are "left right" in rank order. <see cref="Encode"/> is the encoder
/// the trainer uses for its data (GPT-2 pre-tokenization, then merges by rank); the runtime's GGUF tokenizer
/// (pre-tokenizer "gpt-2") gives the same ids for the same text (with special-token text read as the tokens on both sides).
/// </summary>
public sealed partial class TrainedTokenizer
{
    /// <summary>
    /// GPT-2's pre-tokenizer (tiktoken "gpt2" / the cs336 reference), with the final <c>\s+</c> alternative; applied
    /// through the runtime's "gpt-2" <see cref="Tokenization.PreTokenizer"/> (the same pieces: text no alternative matches
    /// is a piece there too), by code point.
    /// </summary>
    public const string Gpt2Pattern = @"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    /// <summary>GGUF token_type values (FORMATS.md §1.4).</summary>
    public const int NormalType = 1, ControlType = 3;

    private readonly Dictionary<string, int> _ids = new(StringComparer.Ordinal);
    private readonly Dictionary<(int, int), (int Rank, int Id)> _mergeRanks = [];
    private readonly Dictionary<string, int[]> _cache = new(StringComparer.Ordinal);
    private readonly string[] _specialOrder; // longest first, ties in the given order (the runtime's partition order)

    public TrainedTokenizer(IReadOnlyList<string> tokens, IReadOnlyList<string> merges, IReadOnlyList<string> specialTokens, int bosId, int eosId)
    {
        Tokens = tokens;
        Merges = merges;
        SpecialTokens = specialTokens;
        BosId = bosId;
        EosId = eosId;
        for (int i = 0; i < tokens.Count; i++)
            if (!_ids.TryAdd(tokens[i], i)) throw new ArgumentException($"Token '{tokens[i]}' appears twice in the vocabulary.", nameof(tokens));
        var types = new int[tokens.Count];
        Array.Fill(types, NormalType);
        foreach (var s in specialTokens) types[_ids[s]] = ControlType;
        TokenTypes = types;
        for (int r = 0; r < merges.Count; r++)
        {
            int space = merges[r].IndexOf(' ', StringComparison.Ordinal);
            string left = merges[r][..space], right = merges[r][(space + 1)..];
            _mergeRanks[(_ids[left], _ids[right])] = (r, _ids[left + right]);
        }
        _specialOrder = [.. specialTokens.OrderByDescending(s => s.Length)];
        if ((uint)bosId >= (uint)tokens.Count || (uint)eosId >= (uint)tokens.Count)
            throw new ArgumentException($"BOS {bosId} / EOS {eosId} are outside the vocabulary of {tokens.Count}.");
    }

    public IReadOnlyList<string> Tokens { get; }
    public IReadOnlyList<int> TokenTypes { get; }
    public IReadOnlyList<string> Merges { get; }
    public IReadOnlyList<string> SpecialTokens { get; }
    public int BosId { get; }
    public int EosId { get; }
    public int Count => Tokens.Count;

    /// <summary>
    /// The pieces of <paramref name="text"/> as the runtime splits them (the exported GGUF's "gpt-2" pre-tokenizer,
    /// matched by code point): the trainer's own regex saw UTF-16 units, so a letter or digit outside the BMP (𝐀, 𝟏) was
    /// two "other" surrogates there, merged with its punctuation, and the model trained on ids the runtime never gives.
    /// </summary>
    internal static void PreTokenize(string text, List<(int Start, int Length)> pieces) =>
        Tokenization.PreTokenizer.Gpt2.Split(text, 0, text.Length, pieces);

    /// <summary>
    /// Cuts <paramref name="text"/> at its special tokens the way the runtime (and llama.cpp's tokenizer_st_partition)
    /// does: one special at a time, longest first (<paramref name="specialsLongestFirst"/>), each cutting every text run
    /// left by the ones before. A single regex of alternatives took the leftmost match instead: with specials "ab" and
    /// "bcd", "abcd" trained as [ab] c d while the runtime gives a [bcd]. Special is an index into the list, −1 for text.
    /// </summary>
    internal static List<(int Start, int Length, int Special)> Partition(string text, IReadOnlyList<string> specialsLongestFirst)
    {
        var fragments = new List<(int Start, int Length, int Special)>();
        if (text.Length == 0) return fragments;
        fragments.Add((0, text.Length, -1));
        var next = new List<(int Start, int Length, int Special)>();
        for (int k = 0; k < specialsLongestFirst.Count; k++)
        {
            string special = specialsLongestFirst[k];
            // An empty special (a damaged checkpoint's) would match everywhere and never advance.
            if (special.Length == 0 || !text.Contains(special, StringComparison.Ordinal)) continue;
            next.Clear();
            foreach (var f in fragments)
            {
                if (f.Special >= 0 || f.Length < special.Length)
                {
                    next.Add(f);
                    continue;
                }
                int run = f.Start, end = f.Start + f.Length;
                while (run < end)
                {
                    int hit = text.AsSpan(run, end - run).IndexOf(special, StringComparison.Ordinal);
                    if (hit < 0) break;
                    if (hit > 0) next.Add((run, hit, -1));
                    next.Add((run + hit, special.Length, k));
                    run += hit + special.Length;
                }
                if (run < end) next.Add((run, end - run, -1));
            }
            (fragments, next) = (next, fragments);
        }
        return fragments;
    }

    /// <summary>Id of a token text, or −1.</summary>
    public int IdOf(string token) => _ids.TryGetValue(token, out int id) ? id : -1;

    /// <summary>The ids of <paramref name="text"/>: special tokens (when <paramref name="parseSpecial"/>) as themselves, the rest by BPE.</summary>
    public void Encode(string text, List<int> output, bool parseSpecial = true) => Encode(text, output, parseSpecial, default);

    /// <summary><see cref="Encode(string, List{int}, bool)"/>, stopping with <see cref="OperationCanceledException"/>
    /// between pieces once <paramref name="cancellation"/> is set (a whole corpus file is one text).</summary>
    public void Encode(string text, List<int> output, bool parseSpecial, CancellationToken cancellation)
    {
        if (parseSpecial && _specialOrder.Length > 0)
        {
            foreach (var (start, length, special) in Partition(text, _specialOrder))
                if (special >= 0) output.Add(_ids[_specialOrder[special]]);
                else EncodeOrdinary(text.Substring(start, length), output, cancellation);
        }
        else EncodeOrdinary(text, output, cancellation);
    }

    public int[] Encode(string text, bool parseSpecial = true)
    {
        var ids = new List<int>();
        Encode(text, ids, parseSpecial);
        return [.. ids];
    }

    private void EncodeOrdinary(string text, List<int> output, CancellationToken cancellation)
    {
        var pieces = new List<(int Start, int Length)>();
        PreTokenize(text, pieces);
        int n = 0;
        foreach (var (start, length) in pieces)
        {
            if ((++n & 4095) == 0) cancellation.ThrowIfCancellationRequested();
            string piece = ByteLevel.Encode(text.AsSpan(start, length));
            if (!_cache.TryGetValue(piece, out var ids))
            {
                ids = Bpe(piece);
                if (_cache.Count < 1 << 20) _cache[piece] = ids;
            }
            output.AddRange(ids);
        }
    }

    /// <summary>
    /// Applies merges lowest rank first until none applies (GPT-2's bpe()): each occurrence of a pair, left to right
    /// among those of equal rank, taken from a priority queue over a linked list of symbols. A merge's pairs with its
    /// neighbours rank after it (its symbol did not exist before it), so this merges exactly what rescanning the word for
    /// its lowest-ranked pair does. That rescan cost the word's length per merge: a 1 MB word without spaces took 9 s.
    /// </summary>
    private int[] Bpe(string piece)
    {
        int n = piece.Length;
        if (n == 0) return [];
        var symbol = new int[n];
        var next = new int[n];
        var prev = new int[n];
        for (int i = 0; i < n; i++)
        {
            symbol[i] = _ids[piece[i].ToString()];
            prev[i] = i - 1;
            next[i] = i + 1 < n ? i + 1 : -1;
        }
        var queue = new PriorityQueue<int, (int Rank, int At)>();
        for (int i = 0; i + 1 < n; i++) Offer(i);
        while (queue.TryDequeue(out int at, out var key))
        {
            int right = next[at];
            // Stale: the left symbol was merged into its neighbour, or the pair here is another one now.
            if (symbol[at] < 0 || right < 0 || !_mergeRanks.TryGetValue((symbol[at], symbol[right]), out var m) || m.Rank != key.Rank) continue;
            symbol[at] = m.Id;
            symbol[right] = -1;
            next[at] = next[right];
            if (next[right] >= 0) prev[next[right]] = at;
            if (prev[at] >= 0) Offer(prev[at]);
            Offer(at);
        }
        var result = new List<int>();
        for (int i = 0; i >= 0; i = next[i]) result.Add(symbol[i]);
        return [.. result];

        void Offer(int left)
        {
            int right = next[left];
            if (right >= 0 && _mergeRanks.TryGetValue((symbol[left], symbol[right]), out var m)) queue.Enqueue(left, (m.Rank, left));
        }
    }

    /// <summary>The text of <paramref name="ids"/> (invalid UTF-8 becomes U+FFFD).</summary>
    public string Decode(ReadOnlySpan<int> ids)
    {
        var bytes = new List<byte>();
        foreach (int id in ids)
        {
            string t = Tokens[id];
            if (TokenTypes[id] == ControlType) bytes.AddRange(Encoding.UTF8.GetBytes(t));
            else bytes.AddRange(ByteLevel.Decode(t));
        }
        return Encoding.UTF8.GetString([.. bytes]);
    }
}

/// <summary>
/// GPT-2's reversible byte ↔ character map (bytes_to_unicode): the 188 printable bytes '!'..'~', '¡'..'¬', '®'..'ÿ'
/// map to themselves, the other 68 to U+0100 + n in byte order, so every token is a printable string ("Ġ" = space).
/// <see cref="Order"/> is GPT-2's list order (printable ranges first), which is also the id order of the 256 byte
/// tokens in GPT-2's vocab.json and in the vocabularies <see cref="BpeTrainer"/> makes.
/// </summary>
public static class ByteLevel
{
    private static readonly char[] ToChar = new char[256];
    private static readonly Dictionary<char, byte> ToByte = [];

    /// <summary>The 256 bytes in GPT-2's bytes_to_unicode order.</summary>
    public static IReadOnlyList<byte> Order { get; }

    static ByteLevel()
    {
        var order = new List<byte>();
        for (int b = '!'; b <= '~'; b++) order.Add((byte)b);
        for (int b = 0xA1; b <= 0xAC; b++) order.Add((byte)b);
        for (int b = 0xAE; b <= 0xFF; b++) order.Add((byte)b);
        foreach (byte b in order) ToChar[b] = (char)b;
        int n = 0;
        for (int b = 0; b < 256; b++)
        {
            if (order.Contains((byte)b)) continue;
            order.Add((byte)b);
            ToChar[b] = (char)(256 + n++);
        }
        for (int b = 0; b < 256; b++) ToByte[ToChar[b]] = (byte)b;
        Order = order;
    }

    public static char CharOf(byte b) => ToChar[b];

    public static string Encode(ReadOnlySpan<byte> bytes)
    {
        var chars = new char[bytes.Length];
        for (int i = 0; i < bytes.Length; i++) chars[i] = ToChar[bytes[i]];
        return new string(chars);
    }

    public static string Encode(ReadOnlySpan<char> text)
    {
        Span<byte> buffer = text.Length <= 256 ? stackalloc byte[1024] : new byte[Encoding.UTF8.GetMaxByteCount(text.Length)];
        int n = Encoding.UTF8.GetBytes(text, buffer);
        return Encode(buffer[..n]);
    }

    public static byte[] Decode(string token)
    {
        var bytes = new byte[token.Length];
        for (int i = 0; i < token.Length; i++)
            bytes[i] = ToByte.TryGetValue(token[i], out byte b) ? b
                : throw new ArgumentException($"'{token}' is not a byte-level token: character U+{(int)token[i]:X4} stands for no byte.", nameof(token));
        return bytes;
    }
}
