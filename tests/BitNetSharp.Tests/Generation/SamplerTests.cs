using BitNetSharp.Generation.Sampling;

namespace BitNetSharp.Tests.Generation;

public class SamplerTests
{
    private static float[] RandomLogits(Random rng, int n, float scale = 4f) =>
        Enumerable.Range(0, n).Select(_ => (float)((rng.NextDouble() * 2 - 1) * scale)).ToArray();

    private static int ArgMaxNaive(float[] x)
    {
        int best = 0;
        for (int i = 1; i < x.Length; i++) if (x[i] > x[best]) best = i;
        return best;
    }

    [Fact]
    public void GreedyIsArgMaxWithTiesToTheLowestId()
    {
        var rng = new Random(1);
        var sampler = new Sampler(SamplingParameters.Greedy, 1000);
        for (int t = 0; t < 50; t++)
        {
            var logits = RandomLogits(rng, 1000);
            Assert.Equal(ArgMaxNaive(logits), sampler.Sample(logits, []));
        }
        var tied = new float[1000];
        tied[700] = tied[300] = tied[999] = 5f;
        Assert.Equal(300, sampler.Sample(tied, []));
    }

    [Fact]
    public void SameSeedSameTokensDifferentSeedDifferentTokens()
    {
        var rng = new Random(2);
        var rows = Enumerable.Range(0, 200).Select(_ => RandomLogits(rng, 500, 2f)).ToArray();
        var p = new SamplingParameters { Temperature = 1.3f, TopK = 100, TopP = 0.95f, Seed = 42 };
        int[] Run(SamplingParameters parameters)
        {
            var s = new Sampler(parameters, 500);
            return rows.Select(r => s.Sample(r, [])).ToArray();
        }
        var a = Run(p);
        Assert.Equal(a, Run(p));
        Assert.NotEqual(a, Run(p with { Seed = 43 }));
        Assert.Equal(42UL, new Sampler(p, 500).Seed);
    }

    [Fact]
    public void SeededStreamIsStableAcrossVersions()
    {
        // xoshiro256** seeded with splitmix64(0): the first outputs, fixed here so a change of PRNG is noticed.
        var rng = new Xoshiro256StarStar(0);
        var first = new[] { rng.NextUInt64(), rng.NextUInt64(), rng.NextUInt64() };
        var again = new Xoshiro256StarStar(0);
        Assert.Equal(first, new[] { again.NextUInt64(), again.NextUInt64(), again.NextUInt64() });
        Assert.Equal(0x99EC5F36CB75F2B4UL, first[0]);
    }

    [Fact]
    public void TopKOfOneIsGreedy()
    {
        var rng = new Random(3);
        var sampler = new Sampler(new SamplingParameters { TopK = 1, Temperature = 5f, Seed = 1 }, 300);
        for (int t = 0; t < 50; t++)
        {
            var logits = RandomLogits(rng, 300);
            Assert.Equal(ArgMaxNaive(logits), sampler.Sample(logits, []));
        }
    }

    [Fact]
    public void TinyTopPKeepsOnlyTheMax()
    {
        var rng = new Random(4);
        var sampler = new Sampler(new SamplingParameters { TopP = 1e-6f, Temperature = 2f, Seed = 9 }, 20000);
        for (int t = 0; t < 20; t++)
        {
            var logits = RandomLogits(rng, 20000, 0.5f);
            Assert.Equal(ArgMaxNaive(logits), sampler.Sample(logits, []));
            Assert.Equal(1, sampler.Candidates.Length);
        }
    }

    /// <summary>The nucleus over an unsorted 128k vocabulary (found by growing partial selection) equals a full sort's.</summary>
    [Theory]
    [InlineData(0.5f)]
    [InlineData(0.9f)]
    [InlineData(0.999f)]
    [InlineData(0.99999f)]
    public void TopPMatchesAFullSort(float topP)
    {
        var rng = new Random(5);
        const int vocab = 128256;
        var sampler = new Sampler(new SamplingParameters { TopP = topP, Seed = 3 }, vocab);
        foreach (float scale in new[] { 0f, 0.01f, 1f, 8f, 30f, 300f })
        {
            var logits = RandomLogits(rng, vocab, scale);
            sampler.Sample(logits, []);
            var order = Enumerable.Range(0, vocab).OrderByDescending(i => logits[i]).ThenBy(i => i).ToArray();
            // A large nucleus is kept unsorted: compare it as a set with a best-first prefix.
            var actual = sampler.Candidates.ToArray().OrderByDescending(i => logits[i]).ThenBy(i => i).ToArray();
            Assert.Equal(order[..actual.Length], actual);
            // The shortest one reaching p, up to the rounding of a 128k-term normalizer (a tail token is ~1e-8 of the mass).
            double max = logits.Max(), z = logits.Sum(x => Math.Exp(x - max));
            double Mass(int k) => order.Take(k).Sum(i => Math.Exp(logits[i] - max)) / z;
            Assert.True(Mass(actual.Length) >= topP - 1e-6, $"mass {Mass(actual.Length)} of {actual.Length} tokens");
            Assert.True(Mass(actual.Length - 1) < topP + 1e-6, $"mass {Mass(actual.Length - 1)} of {actual.Length - 1} tokens");
        }
    }

    /// <summary>Best-first ids of <paramref name="ids"/> until the mass (normalized over them) reaches p.</summary>
    private static int[] Nucleus(float[] logits, int[] ids, float p, int? normalizeOverAll = null)
    {
        var order = ids.OrderByDescending(i => logits[i]).ThenBy(i => i).ToArray();
        var over = normalizeOverAll is null ? ids : Enumerable.Range(0, normalizeOverAll.Value).ToArray();
        double max = over.Max(i => (double)logits[i]);
        double z = over.Sum(i => Math.Exp(logits[i] - max));
        double cum = 0;
        for (int k = 0; k < order.Length; k++)
        {
            cum += Math.Exp(logits[order[k]] - max) / z;
            if (cum >= p) return order[..(k + 1)];
        }
        return order;
    }

    /// <summary>
    /// "Whichever keeps fewer" with typical-p between top-k and top-p, where the nucleus is over 64 tokens: the bucketed
    /// search credited each candidate with the probability of the token whose id was its position (typical reorders
    /// them), so the boundary fell in the wrong place.
    /// </summary>
    [Fact]
    public void WhicheverKeepsFewerAfterTypicalKeepsTheWholeDistributionsNucleus()
    {
        const int vocab = 300;
        var logits = Enumerable.Range(0, vocab).Select(i => i < 250 ? -0.005f * i : -50f).ToArray();
        var sampler = new Sampler(new SamplingParameters { TopK = 250, TypicalP = 0.9999f, TopP = 0.5f, TopKOrTopPWhicheverKeepsFewer = true, Seed = 1 }, vocab);
        sampler.Sample(logits, []);
        var nucleus = Nucleus(logits, Enumerable.Range(0, vocab).ToArray(), 0.5f);
        Assert.Equal(89, nucleus.Length);
        Assert.Equal(nucleus, sampler.Candidates.ToArray().Order().ToArray());
    }

    /// <summary>
    /// Buffers handed from one sampler to the next (the scheduler's per-slot scratch) give the same tokens as fresh ones,
    /// whatever the previous sampler did with them (penalties, top-p buckets, a throw on a bad history).
    /// </summary>
    [Fact]
    public void ReusedBuffersSampleAsFreshOnesDo()
    {
        var rng = new Random(12);
        const int vocab = 3000;
        var buffers = new SamplerBuffers(vocab);
        var before = new Sampler(new SamplingParameters { TopP = 0.3f, TopK = 0, RepetitionPenalty = 1.3f, PresencePenalty = 0.5f, Seed = 4 }, vocab, buffers);
        int[] history = Enumerable.Range(0, 200).Select(_ => rng.Next(vocab)).ToArray();
        for (int i = 0; i < 20; i++) before.Sample(RandomLogits(rng, vocab, 5f), history);
        Assert.Throws<ArgumentOutOfRangeException>(() => before.Sample(RandomLogits(rng, vocab, 5f), [1, vocab + 3]));
        var parameters = new SamplingParameters { TopP = 0.9f, TopK = 50, FrequencyPenalty = 0.7f, PenaltyLastN = -1, Seed = 9, LogProbs = 3 };
        var reused = new Sampler(parameters, vocab, buffers);
        var fresh = new Sampler(parameters, vocab);
        for (int i = 0; i < 30; i++)
        {
            var logits = RandomLogits(rng, vocab, 5f);
            Assert.Equal(fresh.Sample(logits, history), reused.Sample(logits, history));
            Assert.Equal(fresh.TopLogProbs.ToArray(), reused.TopLogProbs.ToArray());
        }
        Assert.Throws<ArgumentException>(() => new Sampler(parameters, vocab + 1, buffers));
    }

    [Fact]
    public void TopKThenTopPSequentialVersusWhicheverKeepsFewer()
    {
        var rng = new Random(6);
        const int vocab = 5000;
        var logits = RandomLogits(rng, vocab, 6f);
        var top50 = Enumerable.Range(0, vocab).OrderByDescending(i => logits[i]).ThenBy(i => i).Take(50).ToArray();

        var sequential = new Sampler(new SamplingParameters { TopK = 50, TopP = 0.6f, Seed = 1 }, vocab);
        sequential.Sample(logits, []);
        Assert.Equal(Nucleus(logits, top50, 0.6f), sequential.Candidates.ToArray());

        var fewer = new Sampler(new SamplingParameters { TopK = 50, TopP = 0.6f, Seed = 1, TopKOrTopPWhicheverKeepsFewer = true }, vocab);
        fewer.Sample(logits, []);
        var nucleus = Nucleus(logits, Enumerable.Range(0, vocab).ToArray(), 0.6f);
        Assert.Equal(Math.Min(50, nucleus.Length), fewer.Candidates.Length);
        Assert.Equal(nucleus.Take(50).ToArray(), fewer.Candidates.ToArray());
        Assert.True(sequential.Candidates.Length <= fewer.Candidates.Length);
    }

    [Fact]
    public void MinPKeepsTokensAboveTheFractionOfTheTop()
    {
        // p ∝ [0.4, 0.3, 0.19, 0.11]; min_p 0.5 → threshold 0.2 keeps tokens 0 and 1.
        float[] logits = [MathF.Log(0.4f), MathF.Log(0.3f), MathF.Log(0.19f), MathF.Log(0.11f)];
        var sampler = new Sampler(new SamplingParameters { MinP = 0.5f, Seed = 5 }, 4);
        var seen = new HashSet<int>();
        for (int i = 0; i < 500; i++) seen.Add(sampler.Sample(logits, []));
        Assert.Equal([0, 1], seen.Order());
        Assert.Equal([0, 1], sampler.Candidates.ToArray().Order());
    }

    [Fact]
    public void TypicalKeepsTheTokensNearestTheEntropy()
    {
        // p = [0.5, 0.3, 0.15, 0.05]: H = 1.142 nats; |−ln p − H| = [0.449, 0.062, 0.755, 1.853].
        // Ordered 1, 0, 2, 3 with running mass 0.3, 0.8, …; typical_p 0.7 keeps {1, 0}.
        float[] logits = [MathF.Log(0.5f), MathF.Log(0.3f), MathF.Log(0.15f), MathF.Log(0.05f)];
        var sampler = new Sampler(new SamplingParameters { TypicalP = 0.7f, Seed = 5 }, 4);
        sampler.Sample(logits, []);
        Assert.Equal([1, 0], sampler.Candidates.ToArray());
    }

    [Fact]
    public void PenaltiesChangeTheRightLogitsByTheRightAmounts()
    {
        float[] logits = [2f, -2f, 1f, 0.5f, 3f];
        int[] history = [0, 1, 0, 4];
        var repetition = new Sampler(new SamplingParameters { RepetitionPenalty = 2f, Temperature = 0f, PenaltyLastN = -1 }, 5);
        repetition.Sample(logits, history);
        Assert.Equal([1f, -4f, 1f, 0.5f, 1.5f], repetition.ProcessedLogits.ToArray());

        var openAi = new Sampler(new SamplingParameters { PresencePenalty = 0.5f, FrequencyPenalty = 0.25f, Temperature = 0f, PenaltyLastN = -1 }, 5);
        openAi.Sample(logits, history);
        // token 0 occurs twice: 2 − (2·0.25 + 0.5); tokens 1 and 4 once: −0.75.
        Assert.Equal([1f, -2.75f, 1f, 0.5f, 2.25f], openAi.ProcessedLogits.ToArray());

        var both = new Sampler(new SamplingParameters { RepetitionPenalty = 2f, FrequencyPenalty = 1f, Temperature = 0f, PenaltyLastN = -1 }, 5);
        both.Sample(logits, history);
        Assert.Equal([-1f, -5f, 1f, 0.5f, 0.5f], both.ProcessedLogits.ToArray());

        // The window: only the last 2 history tokens (0, 4) count.
        var window = new Sampler(new SamplingParameters { PresencePenalty = 1f, Temperature = 0f, PenaltyLastN = 2 }, 5);
        window.Sample(logits, history);
        Assert.Equal([1f, -2f, 1f, 0.5f, 2f], window.ProcessedLogits.ToArray());

        // And the counts are cleared: the same call again gives the same result.
        window.Sample(logits, history);
        Assert.Equal([1f, -2f, 1f, 0.5f, 2f], window.ProcessedLogits.ToArray());
        Assert.Throws<ArgumentOutOfRangeException>(() => window.Sample(logits, [0, 7]));
    }

    /// <summary>
    /// The server's sampling (OpenAI's presence/frequency over the generated tokens only) still applies the repetition
    /// penalty to the prompt's tokens, as llama.cpp, HF and vLLM do: it saw only the generated ones, so a request's
    /// repetition_penalty did nothing until the answer repeated itself.
    /// </summary>
    [Fact]
    public void RepetitionPenaltyCountsThePromptWherePresenceDoesNot()
    {
        float[] logits = [2f, -2f, 1f, 0.5f, 3f];
        int[] history = [0, 1, 0, 4]; // prompt 0 1, generated 0 4
        var server = new Sampler(new SamplingParameters { RepetitionPenalty = 2f, PresencePenalty = 0.5f, Temperature = 0f, PenaltyLastN = -1, PenalizePrompt = false }, 5);
        server.Sample(logits, history, promptLength: 2);
        // 0: 2/2 − 0.5 (generated once); 1: −2·2, prompt only, no presence; 4: 3/2 − 0.5.
        Assert.Equal([0.5f, -4f, 1f, 0.5f, 1f], server.ProcessedLogits.ToArray());
        // With the prompt counted, presence applies to token 1 too, and 0 is counted once (presence is per token).
        var cli = new Sampler(new SamplingParameters { RepetitionPenalty = 2f, PresencePenalty = 0.5f, Temperature = 0f, PenaltyLastN = -1 }, 5);
        cli.Sample(logits, history, promptLength: 2);
        Assert.Equal([0.5f, -4.5f, 1f, 0.5f, 1f], cli.ProcessedLogits.ToArray());
        // Presence alone, prompt left out: only the generated tokens move; the counts clear between calls.
        var openAi = new Sampler(new SamplingParameters { PresencePenalty = 1f, Temperature = 0f, PenaltyLastN = -1, PenalizePrompt = false }, 5);
        for (int i = 0; i < 2; i++)
        {
            openAi.Sample(logits, history, promptLength: 2);
            Assert.Equal([1f, -2f, 1f, 0.5f, 2f], openAi.ProcessedLogits.ToArray());
        }
    }

    [Fact]
    public void LogitBiasBansAndShifts()
    {
        float[] logits = [1f, 5f, 4f, 0f];
        var bias = new Dictionary<int, float> { [1] = float.NegativeInfinity, [3] = 0.5f };
        var greedy = new Sampler(new SamplingParameters { Temperature = 0f, LogitBias = bias }, 4);
        Assert.Equal(2, greedy.Sample(logits, []));
        Assert.Equal([1f, float.NegativeInfinity, 4f, 0.5f], greedy.ProcessedLogits.ToArray());

        var sampler = new Sampler(new SamplingParameters { Temperature = 3f, LogitBias = bias, Seed = 8 }, 4);
        for (int i = 0; i < 2000; i++) Assert.NotEqual(1, sampler.Sample(logits, []));

        var all = new Sampler(new SamplingParameters { LogitBias = Enumerable.Range(0, 4).ToDictionary(i => i, _ => float.NegativeInfinity) }, 4);
        Assert.Throws<InvalidOperationException>(() => all.Sample(logits, []));
    }

    /// <summary>χ² goodness of fit, 3 degrees of freedom: 16.27 is the 0.1% critical value.</summary>
    [Theory]
    [InlineData(1f)]
    [InlineData(0.5f)]
    [InlineData(2f)]
    public void DrawsMatchTheDistributionAtTheTemperature(float temperature)
    {
        double[] p = [0.1, 0.2, 0.3, 0.4];
        float[] logits = p.Select(x => (float)Math.Log(x)).ToArray();
        var expected = p.Select(x => Math.Pow(x, 1 / temperature)).ToArray();
        double z = expected.Sum();
        const int draws = 40000;
        var counts = new int[4];
        var sampler = new Sampler(new SamplingParameters { Temperature = temperature, Seed = 2024 }, 4);
        for (int i = 0; i < draws; i++) counts[sampler.Sample(logits, [])]++;
        double chi2 = 0;
        for (int i = 0; i < 4; i++)
        {
            double e = draws * expected[i] / z;
            chi2 += (counts[i] - e) * (counts[i] - e) / e;
        }
        Assert.True(chi2 < 16.27, $"χ² = {chi2:F2}, counts {string.Join(", ", counts)}");
    }

    [Fact]
    public void TopKKeepsTheRatiosOfTheSurvivors()
    {
        float[] logits = [MathF.Log(0.1f), MathF.Log(0.2f), MathF.Log(0.3f), MathF.Log(0.4f)];
        var sampler = new Sampler(new SamplingParameters { TopK = 2, Seed = 77 }, 4);
        var counts = new int[4];
        for (int i = 0; i < 14000; i++) counts[sampler.Sample(logits, [])]++;
        Assert.Equal(0, counts[0] + counts[1]);
        Assert.InRange(counts[3] / (double)counts[2], 4 / 3.0 * 0.93, 4 / 3.0 * 1.07);
    }

    [Fact]
    public void LogProbsAreTheModelsLogSoftmax()
    {
        float[] logits = [1f, 2f, 3f, -1f];
        double logZ = Math.Log(Math.Exp(1) + Math.Exp(2) + Math.Exp(3) + Math.Exp(-1));
        // Temperature, bias and penalties change the choice, not the reported log-probabilities.
        var sampler = new Sampler(new SamplingParameters
        {
            Temperature = 0f, LogProbs = 2, RepetitionPenalty = 3f,
            LogitBias = new Dictionary<int, float> { [2] = float.NegativeInfinity },
        }, 4);
        int token = sampler.Sample(logits, [1]);
        Assert.Equal(0, token); // 2 is banned; 1 is penalized to 2/3 < 1
        Assert.Equal(1 - logZ, sampler.ChosenLogProb, 5);
        Assert.Equal(2, sampler.TopLogProbs.Length);
        Assert.Equal(new TokenLogProb(2, (float)(3 - logZ)).Token, sampler.TopLogProbs[0].Token);
        Assert.Equal(3 - logZ, sampler.TopLogProbs[0].LogProb, 5);
        Assert.Equal(1, sampler.TopLogProbs[1].Token);
        Assert.Equal(2 - logZ, sampler.TopLogProbs[1].LogProb, 5);

        var none = new Sampler(new SamplingParameters(), 4);
        none.Sample(logits, []);
        Assert.True(float.IsNaN(none.ChosenLogProb));
        Assert.Equal(0, none.TopLogProbs.Length);
    }

    [Fact]
    public void SamplingDoesNotAllocate()
    {
        var rng = new Random(9);
        const int vocab = 32000;
        var logits = RandomLogits(rng, vocab);
        int[] history = Enumerable.Range(0, 100).Select(i => i * 7).ToArray();
        var sampler = new Sampler(new SamplingParameters
        {
            Temperature = 0.8f, TopK = 40, TopP = 0.95f, MinP = 0.05f, RepetitionPenalty = 1.1f,
            PresencePenalty = 0.1f, FrequencyPenalty = 0.1f, LogProbs = 5, Seed = 1,
            LogitBias = new Dictionary<int, float> { [5] = -2f },
        }, vocab);
        var nucleus = new Sampler(new SamplingParameters { TopP = 0.9f, TypicalP = 0.95f, Seed = 1 }, vocab);
        for (int i = 0; i < 20; i++) { sampler.Sample(logits, history); nucleus.Sample(logits, history); }
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 50; i++) { sampler.Sample(logits, history); nucleus.Sample(logits, history); }
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    [Fact]
    public void RejectsAWrongSizedRowAndInvalidLogits()
    {
        var sampler = new Sampler(new SamplingParameters(), 10);
        Assert.Throws<ArgumentException>(() => sampler.Sample(new float[9], []));
        var nan = new float[10];
        nan[3] = float.NaN;
        Assert.Equal("logits", Assert.Throws<ArgumentException>(() => sampler.Sample(nan, [])).ParamName);
        nan[3] = float.PositiveInfinity;
        Assert.Equal("logits", Assert.Throws<ArgumentException>(() => sampler.Sample(nan, [])).ParamName);
    }

    [Fact]
    public void TinyTemperatureIsNearlyGreedyWithoutOverflow()
    {
        var rng = new Random(10);
        var sampler = new Sampler(new SamplingParameters { Temperature = 1e-44f, Seed = 4 }, 1000);
        for (int t = 0; t < 20; t++)
        {
            var logits = RandomLogits(rng, 1000, 30f);
            Assert.Equal(ArgMaxNaive(logits), sampler.Sample(logits, []));
        }
    }
}
