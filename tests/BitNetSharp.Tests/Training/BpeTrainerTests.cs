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

        var tokenizer = BpeTrainer.Train([File.ReadAllText(corpus)], 500, [BpeTrainer.EndOfText], cancellation: TestContext.Current.CancellationToken);

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
        var tokenizer = BpeTrainer.Train([text, text], 270, specials, cancellation: TestContext.Current.CancellationToken);
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
        var tokenizer = BpeTrainer.Train([text, text], 280, [BpeTrainer.EndOfText], cancellation: TestContext.Current.CancellationToken);
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
        var tokenizer = BpeTrainer.Train(docs, 270, [BpeTrainer.EndOfText], cancellation: TestContext.Current.CancellationToken);
        var stream = TrainingCorpus.Split(docs, 0).EncodeTrain(tokenizer, TestContext.Current.CancellationToken);
        Assert.Equal(2, stream.Count(id => id == tokenizer.EosId)); // the one in the text and the one between documents
        Assert.DoesNotContain("endoftext", tokenizer.Decode([.. stream.Where(id => id != tokenizer.EosId)]));
        var held = TrainingCorpus.Split(["a story<|endoftext|>the next one\nand its end<|endoftext|>x"], 0.5).EncodeValidation(tokenizer, TestContext.Current.CancellationToken);
        Assert.Contains(tokenizer.EosId, held);
    }

    [Fact]
    public void TiesBreakToTheLexicographicallyGreaterPair()
    {
        // "ab" and "cd" each occur twice: (c, d) > (a, b), so it is merged first.
        var tokenizer = BpeTrainer.Train(["ab cd ab cd"], 1 + 256 + 1, [BpeTrainer.EndOfText], cancellation: TestContext.Current.CancellationToken);
        Assert.Equal(["c d"], tokenizer.Merges);
    }

    /// <summary>
    /// The trainer updates only the pairs next to each merge (it recounted every pair of every word a merge touched, so a
    /// long word without spaces cost its length per merge: 4 minutes for a 1 MB one). Its merges equal those of a plain
    /// trainer that recounts every pair from scratch before each merge, on text made to break incremental counting:
    /// runs of one letter (overlapping pairs: "aaaa" merges as [aa][aa]), long words, repeats, and many words.
    /// </summary>
    [Theory]
    [InlineData(1, "ab", 2000, 60)]
    [InlineData(2, "abc", 3, 70)]
    [InlineData(3, "aab", 40, 150)]
    [InlineData(4, "abcdefgh", 9, 200)]
    public void MergesEqualARecountFromScratch(int seed, string alphabet, int maxWord, int merges)
    {
        var random = new Random(seed);
        var text = new System.Text.StringBuilder();
        for (int w = 0; w < 400; w++)
        {
            int length = 1 + random.Next(maxWord);
            char run = alphabet[random.Next(alphabet.Length)];
            for (int i = 0; i < length; i++) text.Append(random.Next(3) == 0 ? run : alphabet[random.Next(alphabet.Length)]);
            text.Append(' ');
        }
        text.Append(new string('a', 3000)).Append(' ').Append(string.Concat(Enumerable.Repeat("ab", 1500)));
        string corpus = text.ToString();
        var trained = BpeTrainer.Train([corpus], 257 + merges, [BpeTrainer.EndOfText], cancellation: TestContext.Current.CancellationToken);
        Assert.Equal(RecountedMerges(corpus, merges), trained.Merges);
    }

    /// <summary>Byte-level BPE the plain way: every pre-token's pairs counted again before each merge.</summary>
    private static List<string> RecountedMerges(string corpus, int merges)
    {
        var pieces = new List<(int Start, int Length)>();
        TrainedTokenizer.PreTokenize(corpus, pieces);
        var words = pieces.Select(p => System.Text.Encoding.UTF8.GetBytes(corpus.Substring(p.Start, p.Length)).Select(b => new[] { b }).ToList()).ToList();
        var result = new List<string>();
        while (result.Count < merges)
        {
            var counts = new Dictionary<(string, string), (byte[] Left, byte[] Right, int Count)>();
            foreach (var word in words)
                for (int i = 0; i + 1 < word.Count; i++)
                {
                    var key = (Convert.ToHexString(word[i]), Convert.ToHexString(word[i + 1]));
                    counts[key] = counts.TryGetValue(key, out var c) ? c with { Count = c.Count + 1 } : (word[i], word[i + 1], 1);
                }
            var best = counts.Values.OrderByDescending(c => c.Count)
                .ThenByDescending(c => c.Left, Comparer<byte[]>.Create((x, y) => x.AsSpan().SequenceCompareTo(y)))
                .ThenByDescending(c => c.Right, Comparer<byte[]>.Create((x, y) => x.AsSpan().SequenceCompareTo(y))).First();
            result.Add(ByteLevel.Encode(best.Left.AsSpan()) + " " + ByteLevel.Encode(best.Right.AsSpan()));
            byte[] merged = [.. best.Left, .. best.Right];
            foreach (var word in words)
                for (int i = 0; i + 1 < word.Count; i++)
                    if (word[i].AsSpan().SequenceEqual(best.Left) && word[i + 1].AsSpan().SequenceEqual(best.Right))
                    {
                        word[i] = merged;
                        word.RemoveAt(i + 1);
                    }
        }
        return result;
    }

    /// <summary>Ctrl-C in `bitnet train` reaches the tokenizer's training and the corpus's encoding (it waited for both).</summary>
    [Fact]
    public void TrainingAndEncodingStopWhenCancelled()
    {
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        string text = string.Concat(Enumerable.Repeat("the cat sat on the mat ", 2000));
        Assert.Throws<OperationCanceledException>(() => BpeTrainer.Train([text], 265, [BpeTrainer.EndOfText], cancellation: cancelled.Token));
        var tokenizer = BpeTrainer.Train([text], 265, [BpeTrainer.EndOfText], cancellation: TestContext.Current.CancellationToken);
        Assert.Throws<OperationCanceledException>(() => TrainingCorpus.Split([text], 0.1).EncodeTrain(tokenizer, cancelled.Token));
        Assert.NotEmpty(TrainingCorpus.Split([text], 0.1).EncodeTrain(tokenizer, TestContext.Current.CancellationToken));
    }

    [Fact]
    public void AVocabularyLargerThanTheCorpusSupportsIsAClearError()
    {
        var e = Assert.Throws<ArgumentException>(() => BpeTrainer.Train(["abc abc"], 1000, [BpeTrainer.EndOfText], cancellation: TestContext.Current.CancellationToken));
        Assert.Contains("supports at most", e.Message);
        Assert.Contains("--vocab", e.Message);
        Assert.Throws<ArgumentException>(() => BpeTrainer.Train(["abc"], 200, [BpeTrainer.EndOfText], cancellation: TestContext.Current.CancellationToken));
    }
}
