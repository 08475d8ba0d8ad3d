using System.Net;
using BitNetSharp.Generation;
using BitNetSharp.Generation.Sampling;
using BitNetSharp.Generation.Scheduler;
using BitNetSharp.Generation.Speculative;
using BitNetSharp.Model;
using BitNetSharp.Tests.Server;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Tests.Generation;

/// <summary>Speculative decoding under continuous batching: per-sequence n-gram drafts verified inside the shared step.</summary>
public sealed class SpeculativeSchedulerTests : IDisposable
{
    private readonly ModelWeights _weights;
    private readonly BitNetTokenizer _tokenizer;

    public SpeculativeSchedulerTests() => (_weights, _tokenizer) = TinyChatModel.Load();

    public void Dispose() => _weights.Dispose();

    private static int[] Prompt(int i) => Enumerable.Range(0, 6 + i * 5 % 31).Select(k => (k % (2 + i % 4) * 37 + i * 11) % 256).ToArray();

    private sealed class CollectingSink : BitNetSharp.Monitoring.Telemetry.ITelemetrySink
    {
        public readonly List<BitNetSharp.Monitoring.Telemetry.TelemetryStepRecord> Steps = [];

        public void Write(in BitNetSharp.Monitoring.Telemetry.TelemetryStepRecord record)
        {
            lock (Steps) Steps.Add(record);
        }

        public void Write(BitNetSharp.Monitoring.Telemetry.TelemetryLayerRecord record) { }

        public void Write(in BitNetSharp.Monitoring.Telemetry.TelemetryEvent record) { }
    }

    /// <summary>
    /// With speculation every delivered token has its telemetry row (before: accepted drafts and replacements had none,
    /// so a request's rows were not its completion), and the jitter window holds one gap per step, not a zero for each
    /// token delivered with another (which made a steady engine read as jittery).
    /// </summary>
    [Fact]
    public async Task SpeculatingSequencesLogEveryTokenAndNoZeroLatencies()
    {
        var sink = new CollectingSink();
        using var s = new ContinuousBatchScheduler(_weights, _tokenizer, new SchedulerOptions
        {
            MaxSequences = 2, MaxBatchedTokens = 40, Threads = 2, HealthSampleEvery = 1, Speculation = new SpeculativeOptions { DraftTokens = 4 },
        }) { Telemetry = sink };
        using var exporter = new BitNetSharp.Server.Metrics.PrometheusTextExporter([s.Meters.Meter], s.Meters.Publish);
        // One request at a time, the prompts the batched test accepts drafts on, until some drafts were accepted.
        int expectedGaps = 0, requests = 0;
        for (int i = 0; i < 12 && (s.Statistics.AcceptedTokens == 0 || requests < 3); i++, requests++)
        {
            string id = $"r{i}";
            var tokens = await Tokens(s.Submit(new GenerationRequest { Prompt = Prompt(i), MaxTokens = 20, IgnoreStopTokens = true, Sampling = SamplingParameters.Greedy, RequestId = id },
                TestContext.Current.CancellationToken));
            List<BitNetSharp.Monitoring.Telemetry.TelemetryStepRecord> rows;
            lock (sink.Steps) rows = [.. sink.Steps.Where(r => r.RequestId == id)];
            Assert.Equal(tokens, rows.Select(r => r.Token).ToList());
            expectedGaps += rows.Select(r => r.Step).Distinct().Count() - 1;
        }
        Assert.True(s.Statistics.AcceptedTokens > 0, $"{s.Statistics}");
        Assert.True(expectedGaps < s.Statistics.GenerationTokens - requests, $"{expectedGaps} gaps for {s.Statistics.GenerationTokens} tokens");
        Assert.Equal(expectedGaps, s.TokenLatency.Count);
        // The ITL histogram counts the same gaps: accepted drafts added zeros that pulled its median below a millisecond.
        string metrics = exporter.Write();
        Assert.Contains($"bitnet_inter_token_latency_seconds_count {expectedGaps}\n", metrics);
    }

    /// <summary>
    /// Drafts take only what decode tokens and waiting prompt chunks leave of a step's budget: a speculating sequence
    /// (1 token + 8 drafts of a 10-token budget) left a new prompt 1 token on its drafting steps, so its first
    /// token waited for more steps than 9 tokens a step need, and the longer drafts ran, the longer every new request starved.
    /// </summary>
    [Fact]
    public async Task DraftsDoNotStarveAWaitingPrompt()
    {
        using var s = new ContinuousBatchScheduler(_weights, _tokenizer, new SchedulerOptions
        {
            MaxSequences = 2, MaxBatchedTokens = 10, Threads = 1, Speculation = new SpeculativeOptions { DraftTokens = 8 },
        });
        // Steps that carried prompt tokens (the counter grows in the batch build, before the forward hook).
        long lastPrompt = 0;
        int prefillSteps = 0;
        // Paused from the engine's own step once drafts run, so a is still decoding (and drafting) when b arrives:
        // polled from here, a fast machine finished a first and the test passed on the old code too.
        var drafting = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        s.BeforeForward = () =>
        {
            long p = s.Statistics.PromptTokens;
            if (p > lastPrompt) { prefillSteps++; lastPrompt = p; }
            if (!drafting.Task.IsCompleted && s.Statistics.DraftedTokens > 16)
            {
                s.StepGate.Reset(); // the next step waits
                drafting.TrySetResult();
            }
        };
        // A looping history: prompt lookup proposes drafts on most steps.
        int[] loop = [.. Enumerable.Range(0, 48).Select(i => 10 + i % 4)];
        var a = s.Submit(new GenerationRequest { Prompt = loop, MaxTokens = 200, IgnoreStopTokens = true, Sampling = SamplingParameters.Greedy },
            TestContext.Current.CancellationToken);
        var first = a.Events.ReadAllAsync(TestContext.Current.CancellationToken).GetAsyncEnumerator(TestContext.Current.CancellationToken);
        Assert.True(await first.MoveNextAsync());
        await drafting.Task.WaitAsync(TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken);
        Assert.Equal(1, s.Statistics.RunningSequences); // a is still decoding
        Volatile.Write(ref prefillSteps, 0);
        int[] longPrompt = [.. Prompt(3), .. Prompt(4), .. Prompt(5), .. Prompt(6), .. Prompt(7)];
        var b = s.Submit(new GenerationRequest { Prompt = longPrompt[..90], MaxTokens = 1, IgnoreStopTokens = true, Sampling = SamplingParameters.Greedy },
            TestContext.Current.CancellationToken);
        s.StepGate.Set();
        Assert.Single(await Tokens(b));
        // 90 prompt tokens at 9 a step: the budget less a's decode token.
        Assert.True(Volatile.Read(ref prefillSteps) <= 10, $"the prompt took {prefillSteps} steps; {s.Statistics}");
        await first.DisposeAsync();
    }

    private static async Task<List<int>> Tokens(GenerationHandle h)
    {
        var tokens = new List<int>();
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        cts.CancelAfter(TimeSpan.FromSeconds(60));
        await foreach (var e in h.Events.ReadAllAsync(cts.Token))
            if (e.Token >= 0) tokens.Add(e.Token);
        return tokens;
    }

    /// <summary>
    /// 24 greedy requests at once (8 run, the rest wait; some with speculation turned off per request, some with
    /// penalties) give exactly plain TextGenerator's tokens, and the speculative counters add up.
    /// </summary>
    [Fact]
    public async Task BatchedSpeculativeGreedyEqualsPlainDecoding()
    {
        var penalties = SamplingParameters.Greedy with { RepetitionPenalty = 1.2f, PenaltyLastN = 8 };
        var requests = Enumerable.Range(0, 24).Select(i => new GenerationRequest
        {
            Prompt = Prompt(i),
            MaxTokens = 20 + i % 7,
            IgnoreStopTokens = true,
            Sampling = i % 3 == 2 ? penalties : SamplingParameters.Greedy,
            Speculate = i % 5 == 4 ? false : null,
        }).ToArray();
        using (var s = new ContinuousBatchScheduler(_weights, _tokenizer, new SchedulerOptions
        {
            MaxSequences = 8, MaxBatchedTokens = 40, Threads = 2, Speculation = new SpeculativeOptions { DraftTokens = 4 },
        }))
        {
            var handles = requests.Select(r => s.Submit(r, TestContext.Current.CancellationToken)).ToArray();
            var outputs = await Task.WhenAll(handles.Select(Tokens));
            using var generator = new TextGenerator(_weights, _tokenizer, new GeneratorOptions { Threads = 2 });
            for (int i = 0; i < requests.Length; i++)
            {
                generator.Reset();
                var expected = generator.Generate(requests[i].Prompt, requests[i].MaxTokens, requests[i].Sampling, ignoreStop: true,
                    cancellation: TestContext.Current.CancellationToken).Select(t => t.Id).ToList();
                Assert.Equal(expected, outputs[i]);
            }
            var st = s.Statistics;
            TestContext.Current.TestOutputHelper?.WriteLine($"steps {st.Steps}, speculative steps {st.SpeculativeSteps}, drafted {st.DraftedTokens}, accepted {st.AcceptedTokens}, emitted {st.SpeculativeTokens}");
            Assert.Equal(requests.Sum(r => r.MaxTokens), st.GenerationTokens);
            Assert.True(st.DraftedTokens > 0 && st.AcceptedTokens > 0 && st.AcceptedTokens < st.DraftedTokens, $"{st}");
            Assert.True(st.TokensPerSpeculativeStep > 1, $"{st.TokensPerSpeculativeStep} tokens per speculative step");
        }
    }

    /// <summary>
    /// "Drafted" counts the drafts the step verified: a stop token among accepted drafts ends the sequence there, and
    /// the drafts after it were never checked. Each speculative step rejects at most one draft, so drafted − accepted
    /// never exceeds the speculative steps (it read 6 drafted, 2 accepted for one step that stopped on the second).
    /// </summary>
    [Fact]
    public async Task DraftsAfterAStopAreNotCountedAsDrafted()
    {
        using var s = new ContinuousBatchScheduler(_weights, _tokenizer, new SchedulerOptions
        {
            MaxSequences = 4, MaxBatchedTokens = 40, Threads = 2, Speculation = new SpeculativeOptions { DraftTokens = 4 },
        });
        int stopsAfterAcceptedDrafts = 0;
        for (int i = 0; i < 8; i++)
        {
            var request = new GenerationRequest { Prompt = Prompt(i), MaxTokens = 20, IgnoreStopTokens = true, Sampling = SamplingParameters.Greedy };
            long accepted0 = s.Statistics.AcceptedTokens;
            var output = await Tokens(s.Submit(request, TestContext.Current.CancellationToken));
            if (s.Statistics.AcceptedTokens == accepted0) continue;
            // Stop at each later token of the greedy output in turn: some of them arrive as an accepted draft mid-step.
            for (int j = 2; j < output.Count; j++)
            {
                var before = s.Statistics;
                var stopped = await Tokens(s.Submit(request with { IgnoreStopTokens = false, StopTokenIds = [output[j]] }, TestContext.Current.CancellationToken));
                var after = s.Statistics;
                long drafted = after.DraftedTokens - before.DraftedTokens, accepted = after.AcceptedTokens - before.AcceptedTokens;
                long steps = after.SpeculativeSteps - before.SpeculativeSteps;
                Assert.True(drafted - accepted <= steps, $"prompt {i}, stop at {j}: drafted {drafted}, accepted {accepted}, in {steps} speculative steps");
                if (stopped.Count < output.Count && accepted > 0) stopsAfterAcceptedDrafts++;
            }
        }
        Assert.True(stopsAfterAcceptedDrafts > 0);
    }

    /// <summary>
    /// A seeded sampled request gives the same text with n-gram speculation as without, whatever else is in the batch
    /// (drafting depends on the step's spare budget, so on the load): the acceptance rule spent the PRNG differently
    /// from plain sampling, and the same seed replayed differently under load.
    /// </summary>
    [Fact]
    public async Task ASeededRequestReplaysWithSpeculationUnderAnyLoad()
    {
        // Three allowed tokens at a high temperature, prompts of them: drafts are found, and both accepted and rejected.
        int[] allowed = [65, 66, 67];
        var bias = Enumerable.Range(0, TinyChatModel.VocabSize).Where(t => !allowed.Contains(t)).ToDictionary(t => t, _ => float.NegativeInfinity);
        var requests = Enumerable.Range(0, 8).Select(i => new GenerationRequest
        {
            Prompt = [.. Enumerable.Range(0, 8 + i).Select(k => allowed[(k * (i + 1) + k / 3) % 3])], MaxTokens = 16, IgnoreStopTokens = true,
            Sampling = new SamplingParameters { Temperature = 4f, LogitBias = bias, Seed = (ulong)(100 + i) },
        }).ToArray();
        async Task<List<int>[]> Run(SpeculativeOptions? speculation, int maxBatched)
        {
            using var s = new ContinuousBatchScheduler(_weights, _tokenizer, new SchedulerOptions
            {
                MaxSequences = 8, MaxBatchedTokens = maxBatched, Threads = 2, Speculation = speculation,
            });
            var outputs = await Task.WhenAll(requests.Select(r => Tokens(s.Submit(r, TestContext.Current.CancellationToken))));
            if (speculation is not null) Assert.True(s.Statistics.AcceptedTokens > 0 && s.Statistics.AcceptedTokens < s.Statistics.DraftedTokens, $"{s.Statistics}");
            return outputs;
        }
        var plain = await Run(null, 64);
        Assert.Equal(plain, await Run(new SpeculativeOptions { DraftTokens = 4 }, 64));
        Assert.Equal(plain, await Run(new SpeculativeOptions { DraftTokens = 4 }, 12)); // a tight budget: fewer steps draft
    }

    /// <summary>maxTokens 0 with speculation yields nothing, as plain decoding does (it ran to the end of the context).</summary>
    [Fact]
    public void SpeculativeGenerationOfZeroTokensYieldsNothing()
    {
        using var g = new TextGenerator(_weights, _tokenizer, new GeneratorOptions { Threads = 1, Speculation = new SpeculativeOptions() });
        Assert.Empty(g.Generate([1, 2, 3], 0, SamplingParameters.Greedy, ignoreStop: true, cancellation: TestContext.Current.CancellationToken).ToList());
        Assert.Equal(4, g.Generate([1, 2, 3], 4, SamplingParameters.Greedy, ignoreStop: true, cancellation: TestContext.Current.CancellationToken).Count(t => t.Id >= 0));
    }

    [Fact]
    public void SchedulerRefusesADraftModel()
    {
        var e = Assert.Throws<ArgumentException>(() => new SchedulerOptions
        {
            Speculation = new SpeculativeOptions { Source = DraftSource.Model, DraftModel = _weights },
        }.Validate());
        Assert.Contains("n-gram", e.Message);
    }

    /// <summary>A server speculating for every request answers greedy completions exactly as one that does not, and /metrics counts the drafts.</summary>
    [Fact]
    public async Task ServerWithSpeculationAnswersTheSameAndCountsDrafts()
    {
        var body = new { prompt = "the cat the cat the cat the", max_tokens = 24, temperature = 0, ignore_eos = true };
        await using var plain = await TestServer.StartAsync();
        await using var speculative = await TestServer.StartAsync(o => o with
        {
            Scheduler = o.Scheduler with { Speculation = new SpeculativeOptions { DraftTokens = 4 } },
        });
        var (status, expected, _) = await plain.PostAsync("v1/completions", body);
        Assert.Equal(HttpStatusCode.OK, status);
        var (status2, actual, _) = await speculative.PostAsync("v1/completions", body);
        Assert.Equal(HttpStatusCode.OK, status2);
        Assert.Equal(expected.GetProperty("choices")[0].GetProperty("text").GetString(), actual.GetProperty("choices")[0].GetProperty("text").GetString());
        string metrics = await speculative.MetricsAsync();
        double drafted = TestServer.Sample(metrics, "bitnet_speculative_drafted_tokens_total");
        double accepted = TestServer.Sample(metrics, "bitnet_speculative_accepted_tokens_total");
        Assert.True(drafted > 0, metrics);
        Assert.InRange(accepted, 0, drafted);
        // Every draft fed through the model, the ones after a rejection too: at least those verified, and exactly the step
        // tokens that are neither the prompt nor a decode step's own input. The one request's G tokens: the first from
        // the prefill, then one per plain decode step and accepted + 1 per speculative step, so its decode steps fed
        // G - 1 - emitted + speculative steps tokens of their own.
        double computed = TestServer.Sample(metrics, "bitnet_speculative_computed_draft_tokens_total");
        Assert.InRange(computed, drafted, double.MaxValue);
        double ownInputs = TestServer.Sample(metrics, "bitnet_generation_tokens_total") - 1
            - TestServer.Sample(metrics, "bitnet_speculative_emitted_tokens_total") + TestServer.Sample(metrics, "bitnet_speculative_steps_total");
        Assert.Equal(TestServer.Sample(metrics, "bitnet_engine_step_tokens_sum") - TestServer.Sample(metrics, "bitnet_prompt_tokens_total") - ownInputs, computed);
        Assert.True(TestServer.Sample(metrics, "bitnet_speculative_steps_total") > 0);
        Assert.True(TestServer.Sample(metrics, "bitnet_speculative_emitted_tokens_total") > 0);

        // Per request: "speculate": false drafts nothing; true on a server without --speculate is a 400 naming the field.
        var (status3, off, _) = await speculative.PostAsync("v1/completions", new { prompt = "the cat the cat the cat the", max_tokens = 24, temperature = 0, ignore_eos = true, speculate = false });
        Assert.Equal(HttpStatusCode.OK, status3);
        Assert.Equal(expected.GetProperty("choices")[0].GetProperty("text").GetString(), off.GetProperty("choices")[0].GetProperty("text").GetString());
        Assert.Equal(drafted, TestServer.Sample(await speculative.MetricsAsync(), "bitnet_speculative_drafted_tokens_total"));
        var (status4, error, _) = await plain.PostAsync("v1/completions", new { prompt = "the cat", max_tokens = 4, speculate = true });
        Assert.Equal(HttpStatusCode.BadRequest, status4);
        Assert.Contains("speculate", error.GetProperty("error").GetProperty("message").GetString());
    }
}

/// <summary>A generator whose construction fails frees its worker threads (they waited for work for the rest of the
/// process: 7 per failed construction at 8 threads). Counts process threads: runs with no other test in parallel.</summary>
[Collection(nameof(BitNetSharp.Tests.Training.AllocationTests))]
public sealed class GeneratorConstructionTests
{
    [Fact]
    public void AFailedConstructionLeavesNoWorkerThreads()
    {
        var (weights, tokenizer) = TinyChatModel.Load();
        using var _ = weights;
        int before = System.Diagnostics.Process.GetCurrentProcess().Threads.Count;
        for (int i = 0; i < 10; i++)
            Assert.Throws<ArgumentOutOfRangeException>(() => new TextGenerator(weights, tokenizer, new GeneratorOptions { Threads = 8, KvType = (KvCacheType)99 }));
        Thread.Sleep(200); // disposed workers exit
        int after = System.Diagnostics.Process.GetCurrentProcess().Threads.Count;
        Assert.True(after - before < 20, $"{after - before} more threads after 10 failed constructions");
    }
}
