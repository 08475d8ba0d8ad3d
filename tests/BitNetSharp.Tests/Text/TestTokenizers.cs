using System.Text;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Tests.Text;

/// <summary>The tokenizers the tests share, loaded once from shared/data (each access skips the test when the file is absent).</summary>
internal static class TestTokenizers
{
    private static readonly Lazy<BitNetTokenizer> Gpt2Lazy = new(() => FromGgufFile("gpt-2"));
    private static readonly Lazy<BitNetTokenizer> LlamaSpmLazy = new(() => FromGgufFile("llama-spm"));
    private static readonly Lazy<BitNetTokenizer> Llama3TiktokenLazy = new(() => TokenizerLoader.FromTokenizerModel(Llama3ModelPath));
    private static readonly Lazy<(BitNetTokenizer Tokenizer, byte[] Gguf)> Llama3GgufLazy = new(BuildLlama3Gguf);

    private static string Llama3ModelPath => SharedData.RequirePath("tokenizers/llama3_tokenizer.model");

    public static BitNetTokenizer Gpt2 => Require(Gpt2Lazy, "llama.cpp-vocab/ggml-vocab-gpt-2.gguf");

    public static BitNetTokenizer LlamaSpm => Require(LlamaSpmLazy, "llama.cpp-vocab/ggml-vocab-llama-spm.gguf");

    public static BitNetTokenizer Llama3Tiktoken => Require(Llama3TiktokenLazy, "tokenizers/llama3_tokenizer.model");

    /// <summary>
    /// The Llama 3 vocabulary as the official BitNet 2B4T GGUF stores it: gpt2 model, byte-level token texts,
    /// merges, CONTROL specials, BOS 128000 / EOS 128001, and no <c>tokenizer.ggml.pre</c>, loaded through
    /// <see cref="TokenizerLoader.FromGguf(GgufMetadata)"/>.
    /// </summary>
    public static BitNetTokenizer Llama3Gguf => Require(Llama3GgufLazy, "tokenizers/llama3_tokenizer.model").Tokenizer;

    /// <summary>The bytes of the GGUF behind <see cref="Llama3Gguf"/>.</summary>
    public static byte[] Llama3GgufBytes => Require(Llama3GgufLazy, "tokenizers/llama3_tokenizer.model").Gguf;

    public static IEnumerable<BitNetTokenizer> All => [Gpt2, LlamaSpm, Llama3Tiktoken, Llama3Gguf];

    private static T Require<T>(Lazy<T> lazy, string relative)
    {
        SharedData.RequirePath(relative);
        return lazy.Value;
    }

    private static BitNetTokenizer FromGgufFile(string name)
    {
        using var file = GgufFile.Open(SharedData.RequirePath($"llama.cpp-vocab/ggml-vocab-{name}.gguf"));
        return TokenizerLoader.FromGguf(file);
    }

    private static (BitNetTokenizer, byte[]) BuildLlama3Gguf()
    {
        var (tokens, merges) = Llama3VocabularyWithMerges(Llama3ModelPath);
        var types = new int[tokens.Length];
        for (int i = 0; i < types.Length; i++) types[i] = i < 128000 ? 1 : 3;
        var writer = new GgufWriter()
            .AddString("general.architecture", "bitnet-b1.58")
            .AddString("tokenizer.ggml.model", "gpt2")
            .AddArray("tokenizer.ggml.tokens", tokens)
            .AddArray("tokenizer.ggml.token_type", types)
            .AddArray("tokenizer.ggml.merges", merges)
            .AddUInt32("tokenizer.ggml.bos_token_id", 128000)
            .AddUInt32("tokenizer.ggml.eos_token_id", 128001)
            .AddUInt32("tokenizer.ggml.padding_token_id", 128001);
        var bytes = writer.ToArray();
        using var file = GgufFile.Parse(bytes, "llama3-as-bitnet-2b4t.gguf");
        return (TokenizerLoader.FromGguf(file), bytes);
    }

    /// <summary>
    /// Token texts (byte-level) and the merge list of a tiktoken vocabulary, derived as Hugging Face's tiktoken
    /// converter derives them for Llama 3's tokenizer.json (and so for the GGUF converted from it): for every token,
    /// each split into two parts that are both tokens is a merge; merges are ordered by the rank of the token they
    /// make, then by the ranks of the parts.
    /// </summary>
    public static (string[] Tokens, string[] Merges) Llama3VocabularyWithMerges(string path)
    {
        var lines = File.ReadAllLines(path);
        var byRank = new string[lines.Length];
        var rankOf = new Dictionary<string, int>(lines.Length, StringComparer.Ordinal);
        foreach (var line in lines)
        {
            var parts = line.Split(' ');
            int rank = int.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture);
            var text = Encode(Convert.FromBase64String(parts[0]));
            byRank[rank] = text;
            rankOf[text] = rank;
        }
        var merges = new List<string>();
        var local = new List<(int Left, int Right, string Merge)>();
        for (int rank = 0; rank < byRank.Length; rank++)
        {
            var token = byRank[rank];
            local.Clear();
            for (int i = 1; i < token.Length; i++)
                if (rankOf.TryGetValue(token[..i], out var l) && rankOf.TryGetValue(token[i..], out var r))
                    local.Add((l, r, token[..i] + " " + token[i..]));
            local.Sort((a, b) => a.Left != b.Left ? a.Left.CompareTo(b.Left) : a.Right.CompareTo(b.Right));
            foreach (var m in local) merges.Add(m.Merge);
        }
        var tokens = new string[byRank.Length + 256];
        byRank.CopyTo(tokens, 0);
        TiktokenBpeTokenizer.Llama3SpecialTokens().CopyTo(tokens, byRank.Length);
        return (tokens, [.. merges]);
    }

    /// <summary>GPT-2's byte → character map, written out independently of the library's.</summary>
    private static string Encode(byte[] bytes)
    {
        var sb = new StringBuilder(bytes.Length);
        foreach (var b in bytes) sb.Append(ByteChars[b]);
        return sb.ToString();
    }

    private static readonly char[] ByteChars = BuildByteChars();

    private static char[] BuildByteChars()
    {
        var printable = new List<int>();
        for (int b = '!'; b <= '~'; b++) printable.Add(b);
        for (int b = 0xA1; b <= 0xAC; b++) printable.Add(b);
        for (int b = 0xAE; b <= 0xFF; b++) printable.Add(b);
        var map = new char[256];
        int next = 256;
        for (int b = 0; b < 256; b++) map[b] = printable.Contains(b) ? (char)b : (char)next++;
        return map;
    }
}
