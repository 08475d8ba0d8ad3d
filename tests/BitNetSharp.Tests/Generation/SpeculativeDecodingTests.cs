using BitNetSharp.Formats.Gguf;
using BitNetSharp.Generation;
using BitNetSharp.Generation.Sampling;
using BitNetSharp.Generation.Speculative;
using BitNetSharp.Model;
using BitNetSharp.Tests.Server;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Tests.Generation;

/// <summary>
/// Speculative decoding: greedy output equals plain greedy decoding token for token (n-gram drafts, a layer-truncated
/// draft, the model as its own draft), and the acceptance rule leaves the sampling distribution unchanged.
/// </summary>
public sealed class SpeculativeDecodingTests
{
    private static List<int> Run(TextGenerator g, IReadOnlyList<int> prompt, int n, SamplingParameters sampling)
    {
        g.Reset();
        return g.Generate(prompt, n, sampling, ignoreStop: true, cancellation: TestContext.Current.CancellationToken)
            .Where(t => t.Id >= 0).Select(t => t.Id).ToList();
    }

    /// <summary>
    /// Cancelled while the prompt is read: one final Cancelled token, as when cancelled while decoding (it
    /// threw OperationCanceledException, and chat's Ctrl-C during a long prompt ended the program), with and without
    /// speculation; the generator stays usable.
    /// </summary>
    [Fact]
    public void CancellingDuringThePromptEndsWithACancelledToken()
    {
        var (weights, tokenizer) = TinyChatModel.Load();
        using var _ = weights;
        var options = new GeneratorOptions { Threads = 1, PrefillChunk = 4 };
        foreach (var speculation in new SpeculativeOptions?[] { null, new SpeculativeOptions { DraftTokens = 3 } })
        {
            using var g = new TextGenerator(weights, tokenizer, options with { Speculation = speculation });
            int[] prompt = [.. Enumerable.Range(1, 20)];
            using var cts = new CancellationTokenSource();
            cts.Cancel();
            var tokens = g.Generate(prompt, 4, SamplingParameters.Greedy, cancellation: cts.Token).ToList();
            Assert.Equal(FinishReason.Cancelled, Assert.Single(tokens).Finish);
            Assert.Equal(0, g.LastStats!.GeneratedTokens);

            var expected = g.Generate(prompt, 4, SamplingParameters.Greedy, ignoreStop: true, cancellation: TestContext.Current.CancellationToken).Select(t => t.Id).ToList();
            Assert.Equal(4, expected.Count);
        }
    }

    /// <summary>
    /// A prompt ending in a padding id (an embedding row past the tokenizer's vocabulary, as in padded checkpoints) is a
    /// valid prompt: it threw from the tokenizer after the whole prompt had been run.
    /// </summary>
    [Fact]
    public void APromptEndingInAPaddingIdGenerates()
    {
        var (weights, tokenizer) = TinyChatModel.Load(modelVocab: 272);
        using var _ = weights;
        Assert.True(tokenizer.VocabularySize < weights.Config.VocabSize);
        using var g = new TextGenerator(weights, tokenizer, new GeneratorOptions { Threads = 1 });
        var tokens = g.Generate([TinyChatModel.EndOfText, 5, 270], 3, SamplingParameters.Greedy, ignoreStop: true, cancellation: TestContext.Current.CancellationToken).ToList();
        Assert.Equal(3, tokens.Count);
        Assert.All(tokens, t => Assert.True(t.Id < tokenizer.VocabularySize));
    }

    /// <summary>
    /// The draft model reads the prompt in the first decoding step, chunk by chunk; a cancellation then (Ctrl-C right
    /// after the first token) waited for the whole prompt to go through the draft. It now stops between chunks.
    /// </summary>
    [Fact]
    public void ACancellationStopsTheDraftsPromptRead()
    {
        var (weights, tokenizer) = TinyChatModel.Load();
        using var target = weights;
        var (draftWeights, _) = TinyChatModel.Load(seed: 12);
        using var draft = draftWeights;
        using var g = new TextGenerator(target, tokenizer, new GeneratorOptions
        {
            Threads = 1,
            Speculation = new SpeculativeOptions { Source = DraftSource.Model, DraftModel = draft, DraftTokens = 2 },
        });
        var prompt = Enumerable.Range(0, 200).Select(i => 32 + i % 90).ToArray();
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        var tokens = new List<GeneratedToken>();
        foreach (var t in g.Generate(prompt, 8, SamplingParameters.Greedy, ignoreStop: true, cancellation: cancel.Token))
        {
            tokens.Add(t);
            cancel.Cancel(); // at the first token
        }
        Assert.Equal(FinishReason.Cancelled, tokens[^1].Finish);
        Assert.True(g.DraftCachedTokens < prompt.Length, $"the draft read {g.DraftCachedTokens} tokens after the cancellation");
        // Uncancelled, the next generation drafts as before.
        var again = g.Generate(prompt, 8, SamplingParameters.Greedy, ignoreStop: true, cancellation: TestContext.Current.CancellationToken).ToList();
        Assert.Equal(8, again.Count);
        Assert.True(g.LastStats!.Speculative!.Value.Drafted > 0);
    }

    /// <summary>Story openings that repeat names and phrases (so prompt lookup finds matches), built from small lists.</summary>
    private static IEnumerable<string> StoryPrompts(int count)
    {
        string[] names = ["Lily", "Tom", "Sue", "Max", "Anna", "Ben", "Mia"];
        string[] things = ["ball", "dog", "red car", "big tree", "toy boat", "cat", "kite"];
        string[] verbs = ["play", "run", "jump", "sing", "read", "swim", "draw"];
        for (int i = 0; i < count; i++)
        {
            string name = names[i % names.Length], thing = things[i * 3 % things.Length], verb = verbs[i * 5 % verbs.Length];
            yield return (i % 3) switch
            {
                0 => $"Once upon a time, there was a little girl named {name}. {name} loved to {verb} with her {thing}. One day, {name} took the {thing} to the park.",
                1 => $"{name} had a {thing}. The {thing} was very special. Every day, {name} would {verb} with the {thing}. {name} said, \"I love my {thing}!\"",
                _ => $"One day, {name} went to {verb} in the park. In the park, {name} saw a {thing}.",
            };
        }
    }

    /// <summary>
    /// A library caller's draft model of the same vocabulary size but another tokenizer is refused, as the CLI refuses
    /// it: its ids meant other tokens, every draft was rejected, and speculation was pure overhead without a word.
    /// </summary>
    [Fact]
    public void ALibraryDraftWithAnotherTokenizerIsRefused()
    {
        var (weights, tokenizer) = TinyChatModel.Load();
        using var target = weights;
        var w = SyntheticModel.Build(TinyChatModel.Shape, 3);
        var tokens = new List<string>();
        for (int b = 0; b < 256; b++) tokens.Add(BitNetSharp.Tokenization.ByteLevelEncoding.ByteToChar((byte)b).ToString());
        tokens.AddRange(["he", "Ġt", "Ġthe", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]); // 256 and 257 swapped
        w.AddString("tokenizer.ggml.model", "gpt2").AddString("tokenizer.ggml.pre", "gpt-2")
         .AddArray("tokenizer.ggml.tokens", tokens.ToArray())
         .AddArray("tokenizer.ggml.token_type", tokens.Select((_, i) => i >= TinyChatModel.EndOfText ? 3 : 1).ToArray())
         .AddArray("tokenizer.ggml.merges", new[] { "h e", "Ġ t", "Ġt he" });
        using var draft = ModelWeights.FromGguf(GgufFile.Parse(w.ToArray(), "draft.gguf"), ownsFile: true);
        var options = new GeneratorOptions { Threads = 1, Speculation = new SpeculativeOptions { Source = DraftSource.Model, DraftModel = draft, DraftTokens = 2 } };
        var e = Assert.Throws<ArgumentException>(() => new TextGenerator(target, tokenizer, options));
        Assert.Contains("token 256", e.Message);
        // The same tokenizer (another model's weights) is accepted.
        var (same, _) = TinyChatModel.Load(seed: 12);
        using (same)
        {
            using (new TextGenerator(target, tokenizer, options with { Speculation = options.Speculation with { DraftModel = same } }))
            {
            }
            // A tokenizer given with the draft (the CLI's, already loaded; an HF directory's) is the one compared.
            var other = TokenizerLoader.FromGguf(draft.Gguf!);
            e = Assert.Throws<ArgumentException>(() => new TextGenerator(target, tokenizer,
                options with { Speculation = options.Speculation with { DraftModel = same, DraftTokenizer = other } }));
            Assert.Contains("token 256", e.Message);
        }
    }

    [Fact]
    public void BundledModelGreedyOutputIsIdenticalOver50Prompts()
    {
        using var weights = ModelWeights.Load(RepositoryFiles.Path("models/bitnet-tinystories.gguf"));
        var tokenizer = TokenizerLoader.FromGguf(weights.Gguf!);
        using var draft = weights.FirstLayers(2);
        var options = new GeneratorOptions { Threads = 1, ContextLength = 256 };
        using var plain = new TextGenerator(weights, tokenizer, options);
        using var ngram = new TextGenerator(weights, tokenizer, options with { Speculation = new SpeculativeOptions { DraftTokens = 4 } });
        using var layers = new TextGenerator(weights, tokenizer, options with { Speculation = new SpeculativeOptions { Source = DraftSource.Model, DraftModel = draft, DraftTokens = 3 } });
        using var self = new TextGenerator(weights, tokenizer, options with { Speculation = new SpeculativeOptions { Source = DraftSource.Model, DraftModel = weights, DraftTokens = 6 } });
        var total = new SpeculativeStats[3];
        int i = 0;
        foreach (string text in StoryPrompts(50))
        {
            var prompt = tokenizer.Encode(text, addBos: tokenizer.AddBosToken);
            var expected = Run(plain, prompt, 32, SamplingParameters.Greedy);
            Assert.Equal(expected, Run(ngram, prompt, 32, SamplingParameters.Greedy));
            total[0] += ngram.LastStats!.Speculative!.Value;
            if (i % 4 == 0)
            {
                Assert.Equal(expected, Run(layers, prompt, 32, SamplingParameters.Greedy));
                total[1] += layers.LastStats!.Speculative!.Value;
            }
            if (i % 10 == 0)
            {
                Assert.Equal(expected, Run(self, prompt, 32, SamplingParameters.Greedy));
                total[2] += self.LastStats!.Speculative!.Value;
            }
            i++;
        }
        TestContext.Current.TestOutputHelper?.WriteLine($"ngram {total[0]} acceptance {total[0].AcceptanceRate:P1}; first-2-layers draft {total[1]} acceptance {total[1].AcceptanceRate:P1}; self {total[2]}");
        Assert.True(total[0].Accepted > 0, "prompt lookup never matched");
        Assert.InRange(total[1].AcceptanceRate, 0.01, 0.99); // a partial draft: some accepted, some not
        Assert.Equal(total[2].Drafted, total[2].Accepted);    // the model as its own draft agrees everywhere
        Assert.True(total[2].TokensPerStep > 4, $"{total[2].TokensPerStep} tokens per step with a perfect draft of 6");
    }

    /// <summary>
    /// Cancelled mid-step, speculation stops where plain decoding does (all of a step's accepted drafts came out first),
    /// and a stop inside an accepted draft leaves the drafts after it out of "drafted": they were never verified, and
    /// the acceptance rate read 2 of 6 for a draft that matched every token it was checked on.
    /// </summary>
    [Fact]
    public void CancellationAndStopsEndASpeculativeStepWhereTheyShould()
    {
        using var weights = ModelWeights.Load(RepositoryFiles.Path("models/bitnet-tinystories.gguf"));
        var tokenizer = TokenizerLoader.FromGguf(weights.Gguf!);
        var options = new GeneratorOptions { Threads = 1, ContextLength = 128 };
        using var self = new TextGenerator(weights, tokenizer, options with { Speculation = new SpeculativeOptions { Source = DraftSource.Model, DraftModel = weights, DraftTokens = 6 } });
        var prompt = tokenizer.Encode("Once upon a time", addBos: tokenizer.AddBosToken);

        using var cts = new CancellationTokenSource();
        var got = new List<GeneratedToken>();
        foreach (var t in self.Generate(prompt, 20, SamplingParameters.Greedy, ignoreStop: true, cancellation: cts.Token))
        {
            got.Add(t);
            if (got.Count == 2) cts.Cancel();
        }
        Assert.Equal(3, got.Count); // t0, t1, then the cancellation: plain decoding's count (it printed t2..t6 first)
        Assert.Equal(FinishReason.Cancelled, got[2].Finish);

        self.Reset();
        var greedy = Run(self, prompt, 8, SamplingParameters.Greedy);
        int stop = greedy[2];
        Assert.SkipWhen(greedy[0] == stop || greedy[1] == stop, "the third greedy token repeats an earlier one");
        self.Reset();
        self.StopTokenIds = [stop];
        var stopped = self.Generate(prompt, 8, SamplingParameters.Greedy, cancellation: TestContext.Current.CancellationToken).ToList();
        Assert.Equal(FinishReason.Stop, stopped[^1].Finish);
        var stats = self.LastStats!.Speculative!.Value;
        Assert.Equal(stats.Drafted, stats.Accepted); // every verified draft matched; the ones after the stop were never verified
    }

    [Fact]
    public void SyntheticModelGreedyOutputIsIdenticalOver50PromptsWithPenaltiesAndBias()
    {
        var (weights, tokenizer) = TinyChatModel.Load();
        using var _ = weights;
        // A differently seeded model of the same shape and vocabulary as a (poor) draft.
        var (other, _) = TinyChatModel.Load(seed: 12);
        using var __ = other;
        var options = new GeneratorOptions { Threads = 1 };
        using var plain = new TextGenerator(weights, tokenizer, options);
        using var ngram = new TextGenerator(weights, tokenizer, options with { Speculation = new SpeculativeOptions { DraftTokens = 6, MaxNGram = 2 } });
        using var perturbed = new TextGenerator(weights, tokenizer, options with { Speculation = new SpeculativeOptions { Source = DraftSource.Model, DraftModel = other, DraftTokens = 2 } });
        using var layer = new TextGenerator(weights, tokenizer, options with { Speculation = new SpeculativeOptions { Source = DraftSource.Model, DraftModel = weights.FirstLayers(1), DraftTokens = 4 } });
        var greedyWithPenalties = SamplingParameters.Greedy with { RepetitionPenalty = 1.3f, FrequencyPenalty = 0.2f, PenaltyLastN = 16, LogitBias = new Dictionary<int, float> { [32] = 2f } };
        var stats = new SpeculativeStats[3];
        for (int i = 0; i < 50; i++)
        {
            var prompt = Enumerable.Range(0, 4 + i % 13).Select(k => (k % (2 + i % 5) * 31 + i * 7) % 256).ToArray();
            var sampling = i % 2 == 0 ? SamplingParameters.Greedy : greedyWithPenalties;
            var expected = Run(plain, prompt, 40, sampling);
            Assert.Equal(expected, Run(ngram, prompt, 40, sampling));
            stats[0] += ngram.LastStats!.Speculative!.Value;
            Assert.Equal(expected, Run(perturbed, prompt, 40, sampling));
            stats[1] += perturbed.LastStats!.Speculative!.Value;
            Assert.Equal(expected, Run(layer, prompt, 40, sampling));
            stats[2] += layer.LastStats!.Speculative!.Value;
        }
        TestContext.Current.TestOutputHelper?.WriteLine($"ngram {stats[0]}, other-seed draft {stats[1]}, 1-layer draft {stats[2]}");
        Assert.True(stats[0].Accepted > 0 && stats[0].Accepted < stats[0].Drafted, $"n-gram: {stats[0]}");
        Assert.True(stats[2].Accepted > 0 && stats[2].Accepted < stats[2].Drafted, $"1-layer draft: {stats[2]}");
    }

    /// <summary>A prompt longer than the prefill chunk (its first chunks want no logits) runs, and speculation still matches plain.</summary>
    [Fact]
    public void PromptLongerThanThePrefillChunkWorks()
    {
        var (weights, tokenizer) = TinyChatModel.Load();
        using var _ = weights;
        var options = new GeneratorOptions { Threads = 1, PrefillChunk = 16 };
        using var plain = new TextGenerator(weights, tokenizer, options);
        using var ngram = new TextGenerator(weights, tokenizer, options with { Speculation = new SpeculativeOptions { DraftTokens = 8 } });
        var prompt = Enumerable.Range(0, 150).Select(k => k * 13 % 97).ToArray();
        var expected = Run(plain, prompt, 30, SamplingParameters.Greedy);
        Assert.Equal(30, expected.Count);
        Assert.Equal(expected, Run(ngram, prompt, 30, SamplingParameters.Greedy));
    }

    /// <summary>A context of one position has nothing to verify a draft against: speculation is left off and the run is
    /// plain decoding's (it was refused, naming the prefill chunk, where the same run without it worked; speculative sweep).</summary>
    [Fact]
    public void AOnePositionContextRunsWithoutSpeculation()
    {
        var (weights, tokenizer) = TinyChatModel.Load();
        using var _ = weights;
        var options = new GeneratorOptions { Threads = 1, ContextLength = 1 };
        using var plain = new TextGenerator(weights, tokenizer, options);
        using var ngram = new TextGenerator(weights, tokenizer, options with { Speculation = new SpeculativeOptions { DraftTokens = 8 } });
        Assert.Null(ngram.Speculation);
        var expected = Run(plain, [5], 1, SamplingParameters.Greedy);
        Assert.Equal(expected, Run(ngram, [5], 1, SamplingParameters.Greedy));
        // Its settings are still checked.
        Assert.ThrowsAny<ArgumentException>(() => new TextGenerator(weights, tokenizer, options with { Speculation = new SpeculativeOptions { DraftTokens = 0 } }));
    }

    [Fact]
    public void NGramDraftCopiesWhatFollowedTheLatestMatch()
    {
        Span<int> output = stackalloc int[4];
        // ... 1 2 3 [9 8] ... 1 2 3 [7 6 5] ... 2 3: the latest "2 3" is followed by 7 6 5 and then the suffix itself.
        int[] h = [1, 2, 3, 9, 8, 1, 2, 3, 7, 6, 5, 2, 3];
        Assert.Equal(4, NGramDraft.Propose(h, 3, 1, output));
        Assert.Equal([7, 6, 5, 2], output.ToArray());
        // Longer n first: "4 5 4" and "5 4" never occurred before, "4" did (latest at index 1).
        Assert.Equal(2, NGramDraft.Propose([4, 4, 5, 4], 3, 1, output[..2]));
        Assert.Equal([5, 4], output[..2].ToArray());
        Assert.Equal(2, NGramDraft.Propose([7, 4, 5, 9, 4, 5], 3, 1, output[..2])); // "4 5" → 9 4
        Assert.Equal([9, 4], output[..2].ToArray());
        Assert.Equal(0, NGramDraft.Propose([1, 2, 3], 3, 1, output));   // no earlier occurrence of any suffix
        Assert.Equal(0, NGramDraft.Propose([1, 2, 1], 3, 2, output));   // "1" matches, but min n is 2
        Assert.Equal(2, NGramDraft.Propose([5, 6, 5], 3, 1, output));   // the continuation runs to the end of the history
        Assert.Equal([6, 5], output[..2].ToArray());
    }

    [Fact]
    public void NGramDraftInsideARepeatedRunTakesTheMatchWithAFullDraft()
    {
        // Eight 7s: the latest "7 7 7" overlaps the suffix and has one token after it; the earliest has five. Whitespace,
        // indentation and repeated punctuation are such runs: one draft per step there wasted most of the speculation.
        Span<int> output = stackalloc int[5];
        Assert.Equal(5, NGramDraft.Propose([7, 7, 7, 7, 7, 7, 7, 7], 3, 1, output));
        Assert.Equal([7, 7, 7, 7, 7], output.ToArray());
        // Period 2 ("a b a b ..."): a full draft copies the period on.
        Assert.Equal(4, NGramDraft.Propose([1, 2, 1, 2, 1, 2, 1, 2], 3, 1, output[..4]));
        Assert.Equal([1, 2, 1, 2], output[..4].ToArray());
        // The latest "3" has only "5 3" after it; an earlier one has a full draft.
        Assert.Equal(4, NGramDraft.Propose([3, 9, 8, 3, 5, 3], 1, 1, output[..4]));
        Assert.Equal([9, 8, 3, 5], output[..4].ToArray());
        // With no match that has k tokens after it, the one with the most wins.
        Assert.Equal(4, NGramDraft.Propose([9, 3, 8, 3, 5, 3], 1, 1, output));
        Assert.Equal([8, 3, 5, 3], output[..4].ToArray());
    }

    private static readonly float[] P = [0.30f, 0.05f, 0.20f, 0f, 0.15f, 0.10f, 0.12f, 0.08f];
    private static readonly float[] Q = [0.05f, 0.25f, 0.10f, 0.20f, 0.15f, 0.05f, 0.05f, 0.15f];

    /// <summary>Pearson's χ² of observed counts against probabilities (cells with probability 0 must be empty).</summary>
    private static double ChiSquare(long[] counts, float[] p, long n)
    {
        double chi = 0;
        for (int i = 0; i < p.Length; i++)
        {
            if (p[i] == 0) { Assert.Equal(0, counts[i]); continue; }
            double e = n * (double)p[i];
            chi += (counts[i] - e) * (counts[i] - e) / e;
        }
        return chi;
    }

    // 6 degrees of freedom (7 non-zero cells): P(χ² > 22.46) = 0.001. Fixed seeds make each test deterministic.
    private const double Bound = 22.46;

    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    [InlineData(1)]
    public void PointMassRuleEmitsTokensDistributedAsP(int draft)
    {
        var sampler = new Sampler(new SamplingParameters { Seed = 17 }, P.Length);
        var p = new float[P.Length];
        var counts = new long[P.Length];
        const int N = 200_000;
        long accepted = 0;
        for (int i = 0; i < N; i++)
        {
            P.CopyTo(p, 0);
            if (SpeculativeAcceptance.AcceptPointMass(sampler, p, draft, out int token)) accepted++;
            counts[token]++;
        }
        double chi = ChiSquare(counts, P, N);
        TestContext.Current.TestOutputHelper?.WriteLine($"draft {draft}: χ² {chi:F2}, acceptance {accepted / (double)N:F4} (p(x) = {P[draft]})");
        Assert.InRange(chi, 0, Bound);
        Assert.InRange(accepted / (double)N, P[draft] - 0.005, P[draft] + 0.005);
    }

    [Fact]
    public void SampledDraftRuleEmitsTokensDistributedAsP()
    {
        var sampler = new Sampler(new SamplingParameters { Seed = 23 }, P.Length);
        var drafter = new Sampler(new SamplingParameters { Seed = 24 }, P.Length);
        var p = new float[P.Length];
        var counts = new long[P.Length];
        const int N = 200_000;
        long accepted = 0;
        for (int i = 0; i < N; i++)
        {
            int x = drafter.DrawFrom(Q);
            P.CopyTo(p, 0);
            if (SpeculativeAcceptance.AcceptSampled(sampler, p, Q, x, out int token)) accepted++;
            counts[token]++;
        }
        double chi = ChiSquare(counts, P, N);
        double expectedAcceptance = P.Zip(Q, Math.Min).Sum(); // Σ min(p, q)
        TestContext.Current.TestOutputHelper?.WriteLine($"χ² {chi:F2}, acceptance {accepted / (double)N:F4} (expected {expectedAcceptance:F4})");
        Assert.InRange(chi, 0, Bound);
        Assert.InRange(accepted / (double)N, expectedAcceptance - 0.005, expectedAcceptance + 0.005);
    }

    /// <summary>The sampler's distribution is what Sample draws from: filters and temperature included, argmax at temperature 0.</summary>
    [Fact]
    public void DistributionMatchesSampleFrequencies()
    {
        float[] logits = [2f, 1.5f, 0.2f, -1f, 1.9f, 0f, -3f, 1f];
        var parameters = new SamplingParameters { Temperature = 0.7f, TopK = 5, TopP = 0.9f, MinP = 0.05f, RepetitionPenalty = 1.3f, Seed = 5 };
        int[] history = [0, 4];
        var sampler = new Sampler(parameters, logits.Length);
        var probs = new float[logits.Length];
        sampler.Distribution(logits, history, probs);
        Assert.Equal(1.0, probs.Sum(), 5);
        var counts = new long[logits.Length];
        const int N = 100_000;
        for (int i = 0; i < N; i++) counts[sampler.Sample(logits, history)]++;
        int cells = probs.Count(v => v > 0);
        Assert.True(cells >= 3, $"{cells} tokens survive the filters");
        Assert.InRange(ChiSquare(counts, probs, N), 0, Bound);

        var greedy = new Sampler(SamplingParameters.Greedy, logits.Length);
        greedy.Distribution(logits, [], probs);
        Assert.Equal([1f, 0, 0, 0, 0, 0, 0, 0], probs);
    }

    /// <summary>
    /// End to end on a model: the first three generated tokens (the second and third come from a verification step,
    /// accepted drafts or replacements) have the same joint distribution with speculation as without (two-sample χ²
    /// over seeds), at a high temperature over three allowed tokens (logit_bias bans the rest), so that the prompt always
    /// holds an n-gram match and both drafts are partly accepted. The n-gram draft exercises the point-mass rule, the
    /// sampling 1-layer draft the p/q rule.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void SpeculativeSamplingKeepsTheModelsDistribution(bool draftModel)
    {
        var (weights, tokenizer) = TinyChatModel.Load();
        using var _ = weights;
        var options = new GeneratorOptions { Threads = 1 };
        var spec = draftModel
            ? new SpeculativeOptions { Source = DraftSource.Model, DraftModel = weights.FirstLayers(1), DraftTokens = 2 }
            : new SpeculativeOptions { DraftTokens = 2 };
        using var plain = new TextGenerator(weights, tokenizer, options);
        using var speculative = new TextGenerator(weights, tokenizer, options with { Speculation = spec });
        int[] allowed = [65, 66, 67];
        var bias = Enumerable.Range(0, TinyChatModel.VocabSize).Where(t => !allowed.Contains(t)).ToDictionary(t => t, _ => float.NegativeInfinity);
        int[] prompt = [65, 66, 67, 65, 67, 66, 66, 65];
        // The synthetic model's logits are far apart: a temperature of the allowed tokens' spread flattens them enough.
        var promptLogits = new List<float[]>();
        plain.Generate(prompt, 1, SamplingParameters.Greedy, promptLogits: promptLogits, cancellation: TestContext.Current.CancellationToken).ToList();
        var lastRow = promptLogits[^1];
        float temperature = Math.Max(1f, allowed.Max(t => lastRow[t]) - allowed.Min(t => lastRow[t]));
        const int Runs = 3000;
        var a = new Dictionary<string, int>();
        var b = new Dictionary<string, int>();
        long drafted = 0, accepted = 0;
        var ct = TestContext.Current.CancellationToken;
        for (int s = 0; s < Runs; s++)
        {
            var sampling = new SamplingParameters { Temperature = temperature, LogitBias = bias, Seed = (ulong)s };
            // No Reset: the prompt's cached prefix is reused, so each run costs a few tokens.
            string x = string.Join(',', plain.Generate(prompt, 3, sampling, cancellation: ct).Select(t => t.Id));
            string y = string.Join(',', speculative.Generate(prompt, 3, sampling with { Seed = (ulong)(s + 1_000_000) }, cancellation: ct).Select(t => t.Id));
            a[x] = a.GetValueOrDefault(x) + 1;
            b[y] = b.GetValueOrDefault(y) + 1;
            drafted += speculative.LastStats!.Speculative!.Value.Drafted;
            accepted += speculative.LastStats!.Speculative!.Value.Accepted;
        }
        // Two-sample χ² over the 27 token triples, pooling triples seen fewer than 10 times in total.
        double chi = 0;
        int df = -1;
        long restA = 0, restB = 0;
        foreach (var key in a.Keys.Union(b.Keys))
        {
            int ca = a.GetValueOrDefault(key), cb = b.GetValueOrDefault(key);
            if (ca + cb < 10) { restA += ca; restB += cb; continue; }
            chi += (double)(ca - cb) * (ca - cb) / (ca + cb);
            df++;
        }
        if (restA + restB > 0) { chi += (double)(restA - restB) * (restA - restB) / (restA + restB); df++; }
        TestContext.Current.TestOutputHelper?.WriteLine($"temperature {temperature}: χ² {chi:F2} with {df} degrees of freedom; drafted {drafted}, accepted {accepted}");
        Assert.True(drafted >= Runs, $"drafted {drafted} in {Runs} runs");
        Assert.True(accepted > drafted / 10 && accepted < drafted, $"accepted {accepted} of {drafted}");
        Assert.True(df >= 8, $"{df} degrees of freedom");
        // χ² with df degrees of freedom: mean df, sd √(2df); df + 3 + 4 sd is far in the tail for a correct rule.
        Assert.InRange(chi, 0, df + 3 + 4 * Math.Sqrt(2.0 * df));
    }

    /// <summary>
    /// A seed gives the same tokens with n-gram speculation as without, at any temperature: the point-mass rule is taken
    /// as a draw (the row sampled as plain decoding samples it, the draft accepted iff it is that token). The uniform
    /// test spent the PRNG differently, so a seeded request's text depended on whether its steps drafted, which under
    /// the server's batch budget depends on the load.
    /// </summary>
    [Fact]
    public void ASeedGivesTheSameTokensWithNGramSpeculationAsWithout()
    {
        var (weights, tokenizer) = TinyChatModel.Load();
        using var _ = weights;
        var options = new GeneratorOptions { Threads = 1 };
        using var plain = new TextGenerator(weights, tokenizer, options);
        using var speculative = new TextGenerator(weights, tokenizer, options with { Speculation = new SpeculativeOptions { DraftTokens = 3 } });
        int[] allowed = [65, 66, 67];
        var bias = Enumerable.Range(0, TinyChatModel.VocabSize).Where(t => !allowed.Contains(t)).ToDictionary(t => t, _ => float.NegativeInfinity);
        int[] prompt = [65, 66, 67, 65, 67, 66, 66, 65];
        var ct = TestContext.Current.CancellationToken;
        long accepted = 0, rejected = 0;
        for (int s = 0; s < 60; s++)
        {
            var sampling = new SamplingParameters { Temperature = 4f, LogitBias = bias, Seed = (ulong)s };
            var x = plain.Generate(prompt, 8, sampling, cancellation: ct).Select(t => t.Id).ToList();
            var y = speculative.Generate(prompt, 8, sampling, cancellation: ct).Select(t => t.Id).ToList();
            Assert.True(x.SequenceEqual(y), $"seed {s}: {string.Join(',', x)} without speculation, {string.Join(',', y)} with");
            var st = speculative.LastStats!.Speculative!.Value;
            accepted += st.Accepted;
            rejected += st.Drafted - st.Accepted;
        }
        Assert.True(accepted > 0 && rejected > 0, $"accepted {accepted}, rejected {rejected}: both outcomes must occur");
    }

    [Fact]
    public void DraftWithAnotherVocabularyIsRefusedNamingBothSizes()
    {
        var (weights, tokenizer) = TinyChatModel.Load();
        using var _ = weights;
        using var other = ModelWeights.FromGguf(GgufFile.Parse(SyntheticModel.Build(SyntheticShape.Tiny, 3).ToArray(), "tiny.gguf"), ownsFile: true);
        var e = Assert.Throws<ArgumentException>(() => new TextGenerator(weights, tokenizer,
            new GeneratorOptions { Threads = 1, Speculation = new SpeculativeOptions { Source = DraftSource.Model, DraftModel = other } }));
        Assert.Contains("256", e.Message);
        Assert.Contains("262", e.Message);
    }
}
