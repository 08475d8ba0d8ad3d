using BitNetSharp.Formats.Gguf;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Tests.Text;

/// <summary>Our tokenizers against llama.cpp's test vectors for every vocabulary we have and support.</summary>
public class VocabVectorTests
{
    public static TheoryData<string> GgufVocabularies => new()
    {
        "gpt-2", "falcon", "mpt", "starcoder", "refact", "deepseek-coder", "deepseek-llm", "llama-spm", "phi-3",
    };

    [Theory]
    [MemberData(nameof(GgufVocabularies))]
    public void GgufVocabularyMatchesLlamaCppVectors(string name)
    {
        var cases = VocabVectors.Load(name);
        using var file = GgufFile.Open(SharedData.RequirePath($"llama.cpp-vocab/ggml-vocab-{name}.gguf"));
        var tokenizer = TokenizerLoader.FromGguf(file);
        var failures = VocabVectors.Failures(tokenizer, cases);
        Assert.True(failures.Count == 0, $"{failures.Count} of {cases.Count} cases differ:\n" + string.Join("\n", failures));
    }

    [Fact]
    public void Llama3TiktokenFileMatchesLlamaBpeVectors()
    {
        var cases = VocabVectors.Load("llama-bpe");
        var tokenizer = TokenizerLoader.FromTokenizerModel(SharedData.RequirePath("tokenizers/llama3_tokenizer.model"));
        var failures = VocabVectors.Failures(tokenizer, cases);
        Assert.True(failures.Count == 0, $"{failures.Count} of {cases.Count} cases differ:\n" + string.Join("\n", failures));
    }

    [Fact]
    public void Llama2SentencePieceModelMatchesLlamaSpmVectors()
    {
        var cases = VocabVectors.Load("llama-spm");
        var tokenizer = TokenizerLoader.FromTokenizerModel(SharedData.RequirePath("tokenizers/llama2_tokenizer.model"));
        var failures = VocabVectors.Failures(tokenizer, cases);
        Assert.True(failures.Count == 0, $"{failures.Count} of {cases.Count} cases differ:\n" + string.Join("\n", failures));
    }

    /// <summary>
    /// The BitNet 2B4T GGUF path: the Llama 3 vocabulary as gpt2 tokens + merges without tokenizer.ggml.pre must be
    /// read as Llama 3 (FORMATS.md §6.1) and tokenize exactly like the tiktoken original.
    /// </summary>
    [Fact]
    public void Llama3AsGgufWithoutPreMatchesLlamaBpeVectors()
    {
        var cases = VocabVectors.Load("llama-bpe");
        var tokenizer = TestTokenizers.Llama3Gguf;
        Assert.Equal(128256, tokenizer.VocabularySize);
        var bpe = Assert.IsType<ByteLevelBpeTokenizer>(tokenizer);
        Assert.Equal("llama3", bpe.PreTokenizer.Name);
        Assert.Equal(280147, bpe.MergeCount); // the merge count of Llama 3's tokenizer.json and of the 2B4T GGUF
        Assert.True(tokenizer.AddBosToken);
        var failures = VocabVectors.Failures(tokenizer, cases);
        Assert.True(failures.Count == 0, $"{failures.Count} of {cases.Count} cases differ:\n" + string.Join("\n", failures));
    }

    /// <summary>
    /// Our byte-level BPE over the official GGUF merges, the tiktoken file's tokenizer (merges derived from its ranks) and
    /// an independent rank merge written here as tiktoken defines it (repeatedly merge the adjacent pair whose bytes have
    /// the lowest rank) agree id for id on real text.
    /// </summary>
    [Fact]
    public void Llama3GgufAndTiktokenAgreeOnCorpora()
    {
        var ranks = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var line in File.ReadLines(SharedData.RequirePath("tokenizers/llama3_tokenizer.model")))
        {
            int space = line.IndexOf(' ');
            if (space > 0) ranks[Convert.ToHexString(Convert.FromBase64String(line[..space]))] = int.Parse(line[(space + 1)..], System.Globalization.CultureInfo.InvariantCulture);
        }
        var texts = new[]
        {
            File.ReadAllText(SharedData.RequirePath("corpora/tinyshakespeare.txt"))[..60_000],
            File.ReadAllText(SharedData.RequirePath("corpora/wikitext-2-raw.wiki.test.raw.hfvariant"))[..60_000],
            string.Join("\n", VocabVectors.Load("llama-bpe").Select(c => c.Input)),
        };
        foreach (var text in texts)
        {
            var ours = TestTokenizers.Llama3Gguf.Encode(text, addBos: true);
            var tiktoken = TestTokenizers.Llama3Tiktoken.Encode(text, addBos: true);
            Assert.Equal(ours, tiktoken);
            Assert.Equal(text, TestTokenizers.Llama3Gguf.Decode(ours));
            Assert.Equal(ours.Skip(1), RankMerge(text, ranks));
        }
    }

    /// <summary>tiktoken's byte-pair merge, naively: over each Llama 3 piece, merge the lowest-ranked adjacent pair until none is ranked.</summary>
    private static List<int> RankMerge(string text, Dictionary<string, int> ranks)
    {
        var pieces = new List<(int Start, int Length)>();
        BitNetSharp.Tokenization.PreTokenizer.Llama3.Split(text, 0, text.Length, pieces);
        var ids = new List<int>();
        foreach (var (start, length) in pieces)
        {
            var bytes = System.Text.Encoding.UTF8.GetBytes(text.Substring(start, length));
            if (ranks.TryGetValue(Convert.ToHexString(bytes), out int whole)) { ids.Add(whole); continue; }
            var parts = bytes.Select(b => new[] { b }).ToList();
            while (true)
            {
                int best = -1, bestRank = int.MaxValue;
                for (int i = 0; i + 1 < parts.Count; i++)
                    if (ranks.TryGetValue(Convert.ToHexString([.. parts[i], .. parts[i + 1]]), out int r) && r < bestRank) (best, bestRank) = (i, r);
                if (best < 0) break;
                parts[best] = [.. parts[best], .. parts[best + 1]];
                parts.RemoveAt(best + 1);
            }
            foreach (var p in parts) ids.Add(ranks[Convert.ToHexString(p)]);
        }
        return ids;
    }
}
