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
}
