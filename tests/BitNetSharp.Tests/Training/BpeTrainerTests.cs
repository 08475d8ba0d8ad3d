using System.Text.Json;
using BitNetSharp.Training;

namespace BitNetSharp.Tests.Training;

public class BpeTrainerTests(ITestOutputHelper output)
{
    /// <summary>
    /// The cs336 reference: vocab 500 with &lt;|endoftext|&gt; on cs336_corpus.en. Merges must equal the reference in
    /// order; the vocabulary must equal it id for id (specials first, bytes in GPT-2 order, then merges).
    /// </summary>
    [Fact]
    public void MatchesTheCs336ReferenceMergesAndVocabulary()
    {
        var corpus = SharedData.RequirePath("corpora/cs336_corpus.en");
        var referenceMerges = File.ReadAllLines(SharedData.RequirePath("tokenizers/cs336_train-bpe-reference-merges.txt")).Where(l => l.Length > 0).ToArray();
        var referenceVocab = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(SharedData.RequirePath("tokenizers/cs336_train-bpe-reference-vocab.json")))!;

        var tokenizer = BpeTrainer.Train([File.ReadAllText(corpus)], 500, [BpeTrainer.EndOfText]);

        int firstDifference = Enumerable.Range(0, Math.Min(referenceMerges.Length, tokenizer.Merges.Count))
            .FirstOrDefault(i => referenceMerges[i] != tokenizer.Merges[i], -1);
        if (firstDifference >= 0) output.WriteLine($"first difference at merge {firstDifference}: ours '{tokenizer.Merges[firstDifference]}', reference '{referenceMerges[firstDifference]}'");
        Assert.Equal(referenceMerges, tokenizer.Merges);
        Assert.Equal(500, tokenizer.Count);
        for (int id = 0; id < tokenizer.Count; id++) Assert.Equal(referenceVocab[tokenizer.Tokens[id]], id);
    }

    /// <summary>
    /// Overlapping special tokens are cut longest first, as the runtime (and llama.cpp) cuts them: with "ab" and "bcd",
    /// "abcd" trained and encoded as [ab] c d while the exported model's runtime tokenizer gives a [bcd], so the model
    /// trained on ids it never sees.
    /// </summary>
    [Fact]
    public void OverlappingSpecialTokensAreCutAsTheRuntimeCutsThem()
    {
        string[] specials = [BpeTrainer.EndOfText, "ab", "bcd"];
        const string text = "xx abcd yy abcd zz the cat sat on the mat<|endoftext|>abcd";
        var tokenizer = BpeTrainer.Train([text, text], 270, specials);
        var w = new BitNetSharp.Formats.Gguf.GgufWriter();
        w.AddString("tokenizer.ggml.model", "gpt2").AddString("tokenizer.ggml.pre", "gpt-2")
         .AddArray("tokenizer.ggml.tokens", tokenizer.Tokens.ToArray())
         .AddArray("tokenizer.ggml.token_type", tokenizer.TokenTypes.ToArray())
         .AddArray("tokenizer.ggml.merges", tokenizer.Merges.ToArray())
         .AddUInt32("tokenizer.ggml.bos_token_id", (uint)tokenizer.BosId)
         .AddUInt32("tokenizer.ggml.eos_token_id", (uint)tokenizer.EosId);
        using var file = BitNetSharp.Formats.Gguf.GgufFile.Parse(w.ToArray(), "trained.gguf");
        var runtime = BitNetSharp.Tokenization.TokenizerLoader.FromGguf(file);
        foreach (var probe in new[] { "abcd", "xabcdx abcd", "ab bcd abcd<|endoftext|>abcdbcd" })
            Assert.Equal(runtime.Encode(probe, addBos: false, parseSpecial: true), tokenizer.Encode(probe));
        Assert.Equal([tokenizer.IdOf("a"), tokenizer.IdOf("bcd")], tokenizer.Encode("abcd"));
        // An empty special (a damaged checkpoint's) is skipped: it matched everywhere and the cut never advanced.
        Assert.Equal([(0, 1, -1), (1, 1, 1), (2, 1, -1)], TrainedTokenizer.Partition("abc", ["", "b"]));
    }

    [Fact]
    public void EncodeDecodeRoundTripsAndUsesTheMerges()
    {
        const string text = "the cat sat on the mat. the cat ate the rat!\nthe end<|endoftext|>a new start";
        var tokenizer = BpeTrainer.Train([text, text], 280, [BpeTrainer.EndOfText]);
        var ids = tokenizer.Encode(text);
        Assert.Equal(text, tokenizer.Decode(ids));
        Assert.Contains(0, ids); // the special token parsed as itself
        Assert.True(ids.Length < System.Text.Encoding.UTF8.GetByteCount(text) / 2, $"{ids.Length} ids");
        Assert.Equal(tokenizer.IdOf("Ġthe"), tokenizer.Encode(" the", parseSpecial: false).Single());
    }

    /// <summary>
    /// A corpus that separates its documents with &lt;|endoftext|&gt; (TinyStoriesV2 does) trains on EOS there, as the
    /// trainer that cut the marker out when counting pairs assumed; the corpus encoded it as a dozen text ids.
    /// </summary>
    [Fact]
    public void TheTrainingStreamReadsASpecialTokenInADocumentAsThatToken()
    {
        string[] docs = ["once upon a time<|endoftext|>the end", "a cat sat\nthe end"];
        var tokenizer = BpeTrainer.Train(docs, 270, [BpeTrainer.EndOfText]);
        var stream = TrainingCorpus.Split(docs, 0).EncodeTrain(tokenizer);
        Assert.Equal(2, stream.Count(id => id == tokenizer.EosId)); // the one in the text and the one between documents
        Assert.DoesNotContain("endoftext", tokenizer.Decode([.. stream.Where(id => id != tokenizer.EosId)]));
        var held = TrainingCorpus.Split(["a story<|endoftext|>the next one\nand its end<|endoftext|>x"], 0.5).EncodeValidation(tokenizer);
        Assert.Contains(tokenizer.EosId, held);
    }

    [Fact]
    public void TiesBreakToTheLexicographicallyGreaterPair()
    {
        // "ab" and "cd" each occur twice: (c, d) > (a, b), so it is merged first.
        var tokenizer = BpeTrainer.Train(["ab cd ab cd"], 1 + 256 + 1, [BpeTrainer.EndOfText]);
        Assert.Equal(["c d"], tokenizer.Merges);
    }

    [Fact]
    public void AVocabularyLargerThanTheCorpusSupportsIsAClearError()
    {
        var e = Assert.Throws<ArgumentException>(() => BpeTrainer.Train(["abc abc"], 1000, [BpeTrainer.EndOfText]));
        Assert.Contains("supports at most", e.Message);
        Assert.Contains("--vocab", e.Message);
        Assert.Throws<ArgumentException>(() => BpeTrainer.Train(["abc"], 200, [BpeTrainer.EndOfText]));
    }
}
