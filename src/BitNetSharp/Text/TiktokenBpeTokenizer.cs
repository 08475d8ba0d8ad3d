using BitNetSharp.Formats;

namespace BitNetSharp.Tokenization;

/// <summary>
/// A tiktoken vocabulary (Meta's Llama 3 <c>tokenizer.model</c>, which BitNet b1.58 2B4T ships too): ranked byte
/// sequences, merged by rank, with the Llama 3 pre-tokenizer. Plain text is encoded by our byte-level BPE over the
/// merges the ranks imply (<see cref="DeriveMerges"/>, built at the first encode): the same ids as merging by rank
/// (Meta's vectors and llama.cpp's llama-bpe ones pass), in O(n log n) per piece — Microsoft.ML.Tokenizers' rank
/// merge rescanned the piece on every merge, minutes for a megabyte of one letter — and with the code-point
/// pre-tokenizer llama.cpp uses. Special tokens, BOS, decoding and id checks are the base class's. Token texts are given in byte-level form ("Ġthe"),
/// the same strings a GGUF conversion of this vocabulary stores.
/// </summary>
public sealed class TiktokenBpeTokenizer : BitNetTokenizer
{
    private readonly TokenizerVocabulary _vocabulary;
    private readonly string _path;
    private readonly int _rankCount;
    private readonly Lazy<ByteLevelBpeTokenizer> _bpe;

    private TiktokenBpeTokenizer(TokenizerVocabulary vocabulary, int rankCount, string path)
        : base(vocabulary, static (text, _) => ByteLevelEncoding.Decode(text))
    {
        _vocabulary = vocabulary;
        _rankCount = rankCount;
        _path = path;
        // Built once however many requests race for it (each racer derived its own 280 K merges).
        _bpe = new Lazy<ByteLevelBpeTokenizer>(() => new ByteLevelBpeTokenizer(_vocabulary, DeriveMerges(), PreTokenizer.Llama3, _path, "ranks"), LazyThreadSafetyMode.ExecutionAndPublication);
    }

    /// <summary>The merge engine over <see cref="DeriveMerges"/> (about a second for Llama 3's 128,000 ranks, once).</summary>
    private ByteLevelBpeTokenizer Bpe => _bpe.Value;

    /// <summary>
    /// The merge list equivalent to the ranks, as Hugging Face's tiktoken converter derives it for Llama 3's
    /// tokenizer.json (and so as GGUF conversions of it store it): for every ranked token, each split into two parts
    /// that are both ranked tokens is a merge; merges are ordered by the rank of the token they make, then by the
    /// ranks of the left and right parts. For Llama 3 this gives the 280,147 merges of the official GGUFs.
    /// </summary>
    public string[] DeriveMerges()
    {
        var rankOf = new Dictionary<string, int>(_rankCount, StringComparer.Ordinal);
        for (int rank = 0; rank < _rankCount; rank++) rankOf.TryAdd(TokenText(rank), rank);
        var merges = new List<string>(_rankCount * 2);
        var local = new List<(int Left, int Right, int Split)>();
        for (int rank = 0; rank < _rankCount; rank++)
        {
            string token = TokenText(rank);
            local.Clear();
            for (int i = 1; i < token.Length; i++)
                if (rankOf.TryGetValue(token[..i], out var left) && rankOf.TryGetValue(token[i..], out var right))
                    local.Add((left, right, i));
            local.Sort((a, b) => a.Left != b.Left ? a.Left.CompareTo(b.Left) : a.Right.CompareTo(b.Right));
            foreach (var (_, _, split) in local) merges.Add(string.Concat(token.AsSpan(0, split), " ", token.AsSpan(split)));
        }
        return [.. merges];
    }

    public override string Description => "tiktoken BPE (merged by rank), llama3 pre-tokenizer";

    /// <summary>
    /// Llama 3's 256 special tokens after the 128000 ranks, named as Meta's original Llama 3 tokenizer (and BitNet's
    /// gpu/tokenizer.py) name them: 128000 begin_of_text, 128001 end_of_text, 128006/128007 start/end_header_id,
    /// 128009 eot_id, every other one <c>&lt;|reserved_special_token_N|&gt;</c> numbered in order.
    /// (Llama 3.1 later renamed 128004/128005/128008/128010/128011.)
    /// </summary>
    public static string[] Llama3SpecialTokens()
    {
        var names = new string[256];
        names[0] = "<|begin_of_text|>";
        names[1] = "<|end_of_text|>";
        names[6] = "<|start_header_id|>";
        names[7] = "<|end_header_id|>";
        names[9] = "<|eot_id|>";
        int reserved = 0;
        for (int i = 0; i < names.Length; i++) names[i] ??= $"<|reserved_special_token_{reserved++}|>";
        return names;
    }

    /// <param name="file">The tiktoken file's bytes: one "base64-bytes rank" line per token, ranks 0 to N-1.</param>
    /// <param name="specialTokens">Texts of the tokens after the ranked ones (their ids follow the last rank).</param>
    /// <param name="configure">Sets the special ids and BOS rule once the vocabulary is known.</param>
    /// <param name="path">The file, for errors.</param>
    internal static TiktokenBpeTokenizer Create(byte[] file, string[] specialTokens, Action<TokenizerVocabulary> configure, string path)
    {
        // The ranked bytes are read here too: the library does not expose them, and decoding needs them.
        var ranked = ReadRanks(file, path);
        // Every text must be spellable: the 256 single bytes are ranked tokens in any byte-level vocabulary.
        var single = new bool[256];
        foreach (var bytes in ranked)
            if (bytes.Length == 1) single[bytes[0]] = true;
        if (Array.IndexOf(single, false) is var missing and >= 0)
            throw new ModelFormatException(path, $"not a tiktoken vocabulary: the single byte 0x{missing:X2} has no rank (a byte-level vocabulary ranks all 256)");
        var texts = new string[ranked.Length + specialTokens.Length];
        var kinds = new TokenKind[texts.Length];
        for (int id = 0; id < ranked.Length; id++)
        {
            texts[id] = ByteLevelEncoding.Encode(ranked[id]);
            kinds[id] = TokenKind.Normal;
        }
        for (int i = 0; i < specialTokens.Length; i++)
        {
            texts[ranked.Length + i] = specialTokens[i];
            kinds[ranked.Length + i] = TokenKind.Control;
        }
        var vocabulary = new TokenizerVocabulary(texts, kinds);
        configure(vocabulary);
        return new TiktokenBpeTokenizer(vocabulary, ranked.Length, path);
    }

    private static byte[][] ReadRanks(byte[] file, string path)
    {
        var lines = System.Text.Encoding.ASCII.GetString(file).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var ranked = new byte[lines.Length][];
        for (int line = 0; line < lines.Length; line++)
        {
            var text = lines[line].AsSpan().TrimEnd('\r');
            int space = text.IndexOf(' ');
            if (space <= 0 || !int.TryParse(text[(space + 1)..], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var rank))
                throw new ModelFormatException(path, $"line {line + 1} is not \"base64-bytes rank\"");
            if (rank >= ranked.Length || ranked[rank] != null)
                throw new ModelFormatException(path, $"line {line + 1}: rank {rank} is repeated or beyond the {ranked.Length} lines, so ranks are not 0 to {ranked.Length - 1}");
            try
            {
                ranked[rank] = Convert.FromBase64String(text[..space].ToString());
            }
            catch (FormatException)
            {
                throw new ModelFormatException(path, $"line {line + 1}: \"{text[..space].ToString()}\" is not base64");
            }
        }
        return ranked;
    }

    private protected override void EncodeText(string text, int start, int length, bool afterSpecial, List<int> output)
    {
        Bpe.EncodePlain(text, start, length, output);
    }
}
