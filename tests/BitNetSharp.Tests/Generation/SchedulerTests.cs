using System.Diagnostics;
using BitNetSharp.Generation;
using BitNetSharp.Generation.Sampling;
using BitNetSharp.Generation.Scheduler;
using BitNetSharp.Model;
using BitNetSharp.Tests.Server;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Tests.Generation;

/// <summary>The continuous-batching scheduler on a tiny synthetic model with a byte-level tokenizer.</summary>
public sealed class SchedulerTests : IDisposable
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);
    private readonly ModelWeights _weights;
    private readonly BitNetTokenizer _tokenizer;

    public SchedulerTests() => (_weights, _tokenizer) = TinyChatModel.Load();

    public void Dispose() => _weights.Dispose();

    private ContinuousBatchScheduler Scheduler(int maxSeqs = 8, int maxBatched = 32, int maxQueue = 64) =>
        new(_weights, _tokenizer, new SchedulerOptions { MaxSequences = maxSeqs, MaxBatchedTokens = maxBatched, MaxQueue = maxQueue, Threads = 2 });

    private static GenerationHandle Submit(ContinuousBatchScheduler s, GenerationRequest r) => s.Submit(r, TestContext.Current.CancellationToken);

    private sealed record Output(List<int> Tokens, string Text, FinishReason Finish, List<GenerationEvent> Events);

    /// <summary>Reads a handle to the end; one entry per choice.</summary>
    private static async Task<Output[]> Collect(GenerationHandle h)
    {
        int n = h.Request.Choices;
        var outs = Enumerable.Range(0, n).Select(_ => new Output([], "", FinishReason.None, [])).ToArray();
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        cts.CancelAfter(Bound);
        try
        {
            await foreach (var e in h.Events.ReadAllAsync(cts.Token))
            {
                var o = outs[e.Choice];
                if (e.Token >= 0) o.Tokens.Add(e.Token);
                o.Events.Add(e);
                outs[e.Choice] = o with { Text = o.Text + e.Text, Finish = e.Finish };
            }
        }
        catch (OperationCanceledException) when (cts.IsCancellationRequested && !TestContext.Current.CancellationToken.IsCancellationRequested)
        {
            // Not the request's cancellation: this wait ran out (a request that never closed would otherwise read as cancelled).
            throw new TimeoutException($"the request did not end within {Bound.TotalSeconds} s");
        }
        return outs;
    }

    private static int[] Prompt(int i) => Enumerable.Range(0, 3 + i * 5 % 41).Select(k => (k * 37 + i * 11) % 256).ToArray();

    /// <summary>
    /// 16 greedy requests submitted at once (8 run, 8 wait; prompts of 3 to 43 tokens, so prefill is chunked over
    /// steps and mixed with other sequences' decode tokens) each produce exactly the tokens they produce alone, and
    /// the same tokens as the single-sequence <see cref="TextGenerator"/>: batching changes nothing.
    /// </summary>
    [Fact]
    public async Task ConcurrentGreedyRequestsEqualRunningAlone()
    {
        var requests = Enumerable.Range(0, 16).Select(i => new GenerationRequest { Prompt = Prompt(i), MaxTokens = 12 + i % 5, IgnoreStopTokens = true }).ToArray();
        Output[] alone;
        using (var s = Scheduler())
        {
            alone = new Output[16];
            for (int i = 0; i < 16; i++) alone[i] = (await Collect(Submit(s, requests[i])))[0];
        }
        using (var s = Scheduler())
        {
            var handles = requests.Select(r => Submit(s, r)).ToArray();
            var together = await Task.WhenAll(handles.Select(Collect));
            for (int i = 0; i < 16; i++)
            {
                Assert.Equal(alone[i].Tokens, together[i][0].Tokens);
                Assert.Equal(alone[i].Text, together[i][0].Text);
                Assert.Equal(FinishReason.Length, together[i][0].Finish);
                Assert.Equal(requests[i].MaxTokens, together[i][0].Tokens.Count);
            }
            var st = s.Statistics;
            Assert.Equal(16, st.FinishedLength);
            Assert.Equal(requests.Sum(r => r.MaxTokens), st.GenerationTokens);
            Assert.Equal(requests.Sum(r => r.Prompt.Count), st.PromptTokens);
            Assert.True(st.Steps < requests.Sum(r => r.MaxTokens), $"{st.Steps} steps: the requests were not batched");
        }
        using var generator = new TextGenerator(_weights, _tokenizer, new GeneratorOptions { Threads = 2 });
        for (int i = 0; i < 16; i += 5)
        {
            generator.Reset();
            var ids = generator.Generate(requests[i].Prompt, requests[i].MaxTokens, SamplingParameters.Greedy, ignoreStop: true, cancellation: TestContext.Current.CancellationToken).Select(t => t.Id).ToList();
            Assert.Equal(ids, alone[i].Tokens);
        }
    }

    /// <summary>
    /// One set of sampling parameters acts the same in both engines: with the prompt left out of the penalties (the
    /// server's OpenAI-style presence penalty), TextGenerator penalized the prompt anyway.
    /// </summary>
    [Fact]
    public async Task PenaltiesLeaveThePromptOutInBothEnginesAlike()
    {
        var sampling = new SamplingParameters { Temperature = 0f, PresencePenalty = 100f, PenalizePrompt = false, PenaltyLastN = -1 };
        var prompts = Enumerable.Range(0, 6).Select(Prompt).ToArray();
        using var s = Scheduler();
        using var generator = new TextGenerator(_weights, _tokenizer, new GeneratorOptions { Threads = 2 });
        List<int> Alone(int[] prompt, SamplingParameters p)
        {
            generator.Reset();
            return generator.Generate(prompt, 6, p, ignoreStop: true, cancellation: TestContext.Current.CancellationToken).Select(t => t.Id).ToList();
        }
        bool promptMatters = false;
        foreach (var prompt in prompts)
        {
            var scheduled = (await Collect(Submit(s, new GenerationRequest { Prompt = prompt, MaxTokens = 6, Sampling = sampling, IgnoreStopTokens = true })))[0].Tokens;
            Assert.Equal(scheduled, Alone(prompt, sampling));
            promptMatters |= !Alone(prompt, sampling with { PenalizePrompt = true }).SequenceEqual(scheduled);
        }
        Assert.True(promptMatters, "no prompt's penalty changed the output: the test shows nothing");
    }

    /// <summary>
    /// A failed forward pass fails the requests with tokens in that batch, not a running request whose prompt was waiting
    /// for budget: the forward never touched its cache, and it was failed for another request's fault.
    /// </summary>
    [Fact]
    public async Task AFailedForwardFailsOnlyTheRequestsInItsBatch()
    {
        using var s = Scheduler(maxSeqs: 2, maxBatched: 8);
        int forwards = 0;
        Assert.True(s.HoldAtGate(Bound)); // both admitted in the same step
        var a = Submit(s, new GenerationRequest { Prompt = Prompt(7), MaxTokens = 4, IgnoreStopTokens = true }); // 38 tokens: five steps of prefill
        var b = Submit(s, new GenerationRequest { Prompt = [1, 2, 3], MaxTokens = 4, IgnoreStopTokens = true });
        s.BeforeForward = () =>
        {
            if (Interlocked.Increment(ref forwards) == 2) throw new InvalidOperationException("simulated engine failure");
        };
        s.StepGate.Set();
        var failure = await Assert.ThrowsAnyAsync<Exception>(() => Collect(a));
        Assert.Contains("simulated engine failure", failure.ToString());
        var outB = (await Collect(b))[0];
        Assert.Equal(FinishReason.Length, outB.Finish);
        Assert.Equal(4, outB.Tokens.Count);
        Assert.Equal(1, s.Statistics.Failed);
    }

    /// <summary>
    /// A caller that changes its request's collections after Submit (checked there, read at admission on the engine's
    /// thread): the bias map gained an id outside the vocabulary, the Sampler threw in admission, the request hung (in
    /// no list), its slot was lost and every running request failed with "The engine failed". The request is a
    /// snapshot now; a prompt cleared after Submit changes nothing either.
    /// </summary>
    [Fact]
    public async Task ARequestChangedAfterSubmitRunsAsSubmittedAndHarmsNoOther()
    {
        using var s = Scheduler(maxSeqs: 2);
        var bystander = Submit(s, new GenerationRequest { Prompt = Prompt(0), MaxTokens = 40, IgnoreStopTokens = true });
        s.StepGate.Reset();
        var bias = new Dictionary<int, float> { [1] = 0f };
        var prompt = new List<int>(Prompt(1));
        var changed = Submit(s, new GenerationRequest { Prompt = prompt, MaxTokens = 3, IgnoreStopTokens = true, Sampling = SamplingParameters.Greedy with { LogitBias = bias } });
        bias[int.MaxValue] = 1f; // after Submit's check
        prompt.Clear();
        s.StepGate.Set();
        var outs = await Collect(changed);
        Assert.Equal(3, outs[0].Tokens.Count);
        Assert.Equal(Prompt(1).Length, changed.Request.Prompt.Count);
        Assert.Equal(40, (await Collect(bystander))[0].Tokens.Count);
        Assert.Equal(2, (await Collect(Submit(s, new GenerationRequest { Prompt = Prompt(2), Choices = 2, MaxTokens = 2 }))).Length); // no slot lost
    }

    /// <summary>
    /// A request whose admission throws (here at its second choice) fails alone, says why, and gives back every slot it
    /// took: it was in no list (never completed, its slots lost) and the loop's catch failed every running request.
    /// </summary>
    [Fact]
    public async Task AFailedAdmissionFailsThatRequestAloneAndKeepsEverySlot()
    {
        using var s = Scheduler(maxSeqs: 3);
        var bystander = Submit(s, new GenerationRequest { Prompt = Prompt(0), MaxTokens = 30, IgnoreStopTokens = true });
        await foreach (var _ in bystander.Events.ReadAllAsync(TestContext.Current.CancellationToken)) break; // running
        s.AdmissionFault = c => { if (c == 1) throw new InvalidOperationException("injected"); };
        var failing = Submit(s, new GenerationRequest { Prompt = Prompt(1), Choices = 2, MaxTokens = 3 });
        var e = await Assert.ThrowsAnyAsync<Exception>(() => Collect(failing));
        Assert.Contains("could not start", e.Message + e.InnerException?.Message);
        s.AdmissionFault = null;
        Assert.Equal(29, (await Collect(bystander))[0].Tokens.Count); // all but the first, read above
        Assert.Equal(3, (await Collect(Submit(s, new GenerationRequest { Prompt = Prompt(2), Choices = 3, MaxTokens = 2 }))).Length); // all three slots free
    }

    [Fact]
    public async Task QueueOverflowFailsFastAndCountsTheRejection()
    {
        using var s = Scheduler(maxSeqs: 1, maxBatched: 8, maxQueue: 2);
        Assert.True(s.HoldAtGate(Bound)); // hold the engine: nothing is admitted, so the submissions stay queued
        // The one free sequence will take the first; two more may wait; the fourth is refused.
        var a = Submit(s, new GenerationRequest { Prompt = [1, 2, 3], MaxTokens = 4 });
        var b = Submit(s, new GenerationRequest { Prompt = [4, 5], MaxTokens = 4 });
        var c = Submit(s, new GenerationRequest { Prompt = [7], MaxTokens = 4 });
        var e = Assert.Throws<SchedulerQueueFullException>(() => Submit(s, new GenerationRequest { Prompt = [6], MaxTokens = 4 }));
        Assert.Contains("queue of 2 waiting sequences is full", e.Message);
        Assert.Equal(3, s.Statistics.WaitingRequests);
        Assert.Equal(1, s.Statistics.Rejected);
        s.StepGate.Set();
        await Collect(a);
        await Collect(b);
        await Collect(c);
        Assert.Equal(0, s.Statistics.WaitingRequests);
        Assert.Single(await Collect(Submit(s, new GenerationRequest { Prompt = [6], MaxTokens = 4 })));
    }

    /// <summary>
    /// The queue counts sequences: a request with n choices waits for n. Counting requests let two n = 2 requests
    /// wait behind a full engine with MaxQueue 2, four sequences where the limit allows two.
    /// </summary>
    [Fact]
    public async Task TheQueueLimitCountsEveryChoice()
    {
        using var s = Scheduler(maxSeqs: 2, maxBatched: 8, maxQueue: 2);
        Assert.True(s.HoldAtGate(Bound)); // the engine waits at its gate: nothing is admitted, so the submissions stay queued
        // The two free sequences take the first request (n = 2); a second n = 2 request fills the queue of 2.
        var a = Submit(s, new GenerationRequest { Prompt = [1, 2, 3], MaxTokens = 4, Choices = 2 });
        var b = Submit(s, new GenerationRequest { Prompt = [4, 5], MaxTokens = 4, Choices = 2 });
        Assert.Throws<SchedulerQueueFullException>(() => Submit(s, new GenerationRequest { Prompt = [6], MaxTokens = 4, Choices = 2 }));
        Assert.Throws<SchedulerQueueFullException>(() => Submit(s, new GenerationRequest { Prompt = [6], MaxTokens = 4 }));
        Assert.Equal(2, s.Statistics.WaitingRequests);
        Assert.Equal(4, s.Statistics.WaitingSequences); // what the limit counts, and what the queue alert reads
        Assert.Equal(2, s.Statistics.Rejected);
        s.StepGate.Set();
        Assert.Equal(2, (await Collect(a)).Length);
        Assert.Equal(2, (await Collect(b)).Length);
        // Admission and completion gave the counted sequences back: the full limit is open again.
        Assert.Equal(2, (await Collect(Submit(s, new GenerationRequest { Prompt = [6], MaxTokens = 4, Choices = 2 }))).Length);
    }

    /// <summary>
    /// MaxQueue 0 refuses only what cannot start: requests up to the free sequences are taken (before, every request
    /// was refused, and a server with --max-queue 0 failed its own warm-up), one more while they run is refused.
    /// </summary>
    [Fact]
    public async Task AnEmptyQueueStillTakesRequestsForFreeSequences()
    {
        using var s = Scheduler(maxSeqs: 2, maxBatched: 8, maxQueue: 0);
        Assert.True(s.HoldAtGate(Bound)); // the engine waits at its gate: nothing is admitted, so the submissions stay queued
        var a = Submit(s, new GenerationRequest { Prompt = [1, 2, 3], MaxTokens = 4 });
        var b = Submit(s, new GenerationRequest { Prompt = [4, 5], MaxTokens = 4 });
        var e = Assert.Throws<SchedulerQueueFullException>(() => Submit(s, new GenerationRequest { Prompt = [6], MaxTokens = 4 }));
        Assert.Equal(1, s.Statistics.Rejected);
        s.StepGate.Set();
        Assert.Single(await Collect(a));
        Assert.Single(await Collect(b));
        Assert.Single(await Collect(Submit(s, new GenerationRequest { Prompt = [6], MaxTokens = 4 })));
    }

    /// <summary>
    /// OpenAI's penalties (PenalizePrompt false, the server's): a token the prompt holds is not penalized until it is
    /// generated, and a generated token is penalized however long ago it came. llama.cpp's (the default) count the prompt.
    /// </summary>
    [Fact]
    public async Task PenaltiesCanLeaveThePromptOut()
    {
        using var s = Scheduler();
        var greedy = new SamplingParameters { Temperature = 0f };
        async Task<List<int>> Run(int[] prompt, SamplingParameters p, int n = 1) =>
            (await Collect(Submit(s, new GenerationRequest { Prompt = prompt, MaxTokens = n, IgnoreStopTokens = true, Sampling = p })))[0].Tokens;
        // A prompt whose greedy next token already occurs in it.
        int[]? prompt = null;
        int next = -1;
        for (int t = 0; t < 256 && prompt is null; t++)
        {
            int[] candidate = [t, (t * 7 + 3) % 256, t];
            int first = (await Run(candidate, greedy))[0];
            if (candidate.Contains(first)) (prompt, next) = (candidate, first);
        }
        Assert.NotNull(prompt);
        var heavy = greedy with { PresencePenalty = 50f, FrequencyPenalty = 50f };
        Assert.NotEqual(next, (await Run(prompt, heavy))[0]); // the prompt counts: the token is pushed down
        Assert.Equal(next, (await Run(prompt, heavy with { PenalizePrompt = false, PenaltyLastN = -1 }))[0]); // it does not
        // Generated tokens count over the whole completion: no token repeats in 40.
        var tokens = await Run(prompt, heavy with { PenalizePrompt = false, PenaltyLastN = -1 }, 40);
        Assert.Equal(40, tokens.Count);
        Assert.Equal(tokens.Count, tokens.Distinct().Count());
    }

    /// <summary>
    /// A model whose vocabulary is padded past its tokenizer's (as 2B4T's is): the health's logit statistics cover the
    /// tokens only. Before, the padded ids' logits (never sampled) were in the minimum, maximum and range, so a flat
    /// distribution over the real tokens could not trip the collapse alert.
    /// </summary>
    [Fact]
    public async Task LogitStatisticsLeaveOutPaddedVocabulary()
    {
        const int padded = 300;
        var writer = SyntheticModel.Build(TinyChatModel.Shape with { VocabSize = padded }, 11);
        var tokens = new List<string>();
        for (int b = 0; b < 256; b++) tokens.Add(ByteLevelEncoding.ByteToChar((byte)b).ToString());
        tokens.AddRange(["Ġt", "he", "Ġthe", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]);
        writer.AddString("tokenizer.ggml.model", "gpt2").AddString("tokenizer.ggml.pre", "gpt-2")
            .AddArray("tokenizer.ggml.tokens", tokens.ToArray())
            .AddArray("tokenizer.ggml.token_type", tokens.Select((_, i) => i >= TinyChatModel.EndOfText ? 3 : 1).ToArray())
            .AddArray("tokenizer.ggml.merges", new[] { "Ġ t", "h e", "Ġt he" })
            .AddUInt32("tokenizer.ggml.bos_token_id", TinyChatModel.EndOfText).AddUInt32("tokenizer.ggml.eos_token_id", TinyChatModel.EndOfText);
        var file = BitNetSharp.Formats.Gguf.GgufFile.Parse(writer.ToArray(), "padded.gguf");
        var tokenizer = TokenizerLoader.FromGguf(file);
        using var weights = ModelWeights.FromGguf(file, ownsFile: true);
        Assert.Equal(padded, weights.Config.VocabSize);
        Assert.Equal(TinyChatModel.VocabSize, tokenizer.VocabularySize);
        // A prompt whose last row's extreme logit is a padded id's (from the engine directly), so the test can tell.
        int[] prompt = [];
        var logits = new float[padded];
        BitNetSharp.Monitoring.LogitStats real = default, all = default;
        using (var pool = new BitNetSharp.Threading.WorkerPool(2))
        using (var engine = new Transformer(weights, 4, pool))
        using (var cache = new KvCache(weights.Config.Layers, weights.Config.KvHeads, weights.Config.HeadDim, 16, KvCacheType.F16))
            for (int t = 0; t < 100; t++)
            {
                prompt = [5, 9, 13, (t * 37 + 1) % 256];
                cache.Truncate(0);
                engine.Forward(prompt.Select((id, i) => new BatchToken(id, 0, i, i == prompt.Length - 1)).ToArray(), [cache], logits);
                real = BitNetSharp.Monitoring.LogitStats.Compute(logits.AsSpan(0, TinyChatModel.VocabSize));
                all = BitNetSharp.Monitoring.LogitStats.Compute(logits);
                if (all.Min < real.Min || all.Max > real.Max) break;
            }
        Assert.True(all.Min < real.Min || all.Max > real.Max, "the padded ids must widen the range for this test to mean anything");

        using var s = new ContinuousBatchScheduler(weights, tokenizer, new SchedulerOptions { MaxSequences = 1, MaxBatchedTokens = 8, Threads = 2, HealthSampleEvery = 1, KvType = KvCacheType.F16 });
        await Collect(Submit(s, new GenerationRequest { Prompt = prompt, MaxTokens = 1, IgnoreStopTokens = true, Sampling = SamplingParameters.Greedy }));
        var (min, max) = s.Health.Read(h => (h.LogitMin, h.LogitMax));
        Assert.Equal(real.Min, min, 4);
        Assert.Equal(real.Max, max, 4);
    }

    /// <summary>With one slot, a long request holds it; cancelling the request frees the slot and the waiting one runs.</summary>
    [Fact]
    public async Task CancellationFreesTheSlotForTheNextRequest()
    {
        // The engine closes the gate itself in its second forward, so the long request is held after two tokens
        // however late this thread runs (closing it from here once let the request run to its end first, and the
        // next request then read as running, not waiting).
        using var s = Scheduler(maxSeqs: 1, maxBatched: 8);
        int forwards = 0;
        s.BeforeForward = () =>
        {
            if (Interlocked.Increment(ref forwards) == 2) s.StepGate.Reset();
        };
        using var cts = new CancellationTokenSource();
        var longRequest = s.Submit(new GenerationRequest { Prompt = [1, 2, 3], MaxTokens = 200, IgnoreStopTokens = true }, cts.Token);
        using var read = new CancellationTokenSource(Bound);
        var first = await longRequest.Events.ReadAsync(read.Token);
        Assert.True(first.Token >= 0);
        var next = Submit(s, new GenerationRequest { Prompt = [9, 8, 7], MaxTokens = 5, IgnoreStopTokens = true });
        await TestServer.EventuallyAsync(() => Task.FromResult(Volatile.Read(ref forwards) >= 2), "the engine holds the long request");
        Assert.Equal(1, s.Statistics.RunningSequences);
        Assert.Equal(1, s.Statistics.WaitingRequests);
        cts.Cancel();
        s.StepGate.Set();
        var done = await Collect(next);
        Assert.Equal(5, done[0].Tokens.Count);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Collect(longRequest)); // its own wait running out is a TimeoutException
        var st = s.Statistics;
        Assert.Equal(1, st.Cancelled);
        Assert.Equal(0, st.RunningSequences);
        Assert.Equal(0, st.KvPositionsInUse);
    }

    [Fact]
    public async Task TimeoutEndsWaitingAndRunningRequests()
    {
        using var s = Scheduler(maxSeqs: 1, maxBatched: 8);
        Assert.True(s.HoldAtGate(Bound));
        var waiting = Submit(s, new GenerationRequest { Prompt = [1, 2], MaxTokens = 4, Timeout = TimeSpan.FromMilliseconds(20) });
        Thread.Sleep(60);
        s.StepGate.Set();
        var e = await Assert.ThrowsAsync<RequestTimeoutException>(() => Collect(waiting));
        Assert.Contains("0.02 s", e.Message);
        Assert.False(e.Started); // timed out in the queue: the server leaves a retry to the client's rule

        // The engine holds before its second forward pass (the first gives the running request its first token) until the
        // deadline has passed, whatever the machine's load: no race between this thread and 250 fast steps. The deadline
        // is 1 s, not a few ms: it counts from Submit, and the first forward must come before it (on a loaded 2-core CI
        // host the engine thread can wake 30 ms late, and the request timed out before its first token).
        int forwards = 0;
        using var hold = new ManualResetEventSlim(false);
        s.BeforeForward = () => { if (Interlocked.Increment(ref forwards) == 2) hold.Wait(); };
        var running = Submit(s, new GenerationRequest { Prompt = [1, 2], MaxTokens = 250, IgnoreStopTokens = true, Timeout = TimeSpan.FromSeconds(1) });
        using var read = new CancellationTokenSource(Bound);
        await running.Events.ReadAsync(read.Token);
        Thread.Sleep(1100); // past the deadline with tokens still to go
        hold.Set();
        var ran = await Assert.ThrowsAsync<RequestTimeoutException>(async () => { await foreach (var _ in running.Events.ReadAllAsync(read.Token)) { } });
        Assert.True(ran.Started); // timed out while running: the server says x-should-retry: false
        Assert.Equal(2, s.Statistics.TimedOut);
        Assert.Equal(0, s.Statistics.RunningSequences);
        // The slot is free again.
        Assert.Equal(3, (await Collect(Submit(s, new GenerationRequest { Prompt = [5], MaxTokens = 3, IgnoreStopTokens = true })))[0].Tokens.Count);
    }

    /// <summary>A stop string taken from the middle of a greedy output ends the same request there, without the stop text, even when it spans tokens.</summary>
    [Fact]
    public async Task StopStringsEndTheChoiceBeforeTheMatch()
    {
        using var s = Scheduler();
        var request = new GenerationRequest { Prompt = [72, 101, 108, 108, 111], MaxTokens = 40, IgnoreStopTokens = true };
        var full = (await Collect(Submit(s, request)))[0];
        Assert.True(full.Text.Length >= 12, full.Text);
        string stop = full.Text.Substring(7, 3);
        var stopped = (await Collect(Submit(s, request with { StopStrings = ["never-there", stop] })))[0];
        Assert.Equal(FinishReason.Stop, stopped.Finish);
        Assert.Equal(full.Text[..full.Text.IndexOf(stop, StringComparison.Ordinal)], stopped.Text);
        Assert.Equal(full.Tokens.Take(stopped.Tokens.Count), stopped.Tokens);
    }

    /// <summary>
    /// n choices are separate sequences: with a seed, choice i replays a single-choice request seeded with the choice's
    /// stream seed (choice 0: the seed itself), and a request seeded one higher shares none of them (with seed + i,
    /// seed 1235's choice 0 was seed 1234's choice 1).
    /// </summary>
    [Fact]
    public async Task SeveralChoicesAreIndependentSeededSequences()
    {
        using var s = Scheduler();
        var sampling = new SamplingParameters { Temperature = 1.5f, Seed = 1234, LogProbs = 3 };
        var request = new GenerationRequest { Prompt = [3, 1, 4, 1, 5], MaxTokens = 10, IgnoreStopTokens = true, Sampling = sampling, Choices = 3 };
        var outs = await Collect(Submit(s, request));
        Assert.Equal(3, outs.Length);
        Assert.NotEqual(outs[0].Tokens, outs[1].Tokens);
        for (int c = 0; c < 3; c++)
        {
            var single = (await Collect(Submit(s, request with { Choices = 1, Sampling = sampling with { Seed = SamplingParameters.StreamSeed(1234, c) } })))[0];
            Assert.Equal(single.Tokens, outs[c].Tokens);
            foreach (var e in outs[c].Events.Where(e => e.Token >= 0))
            {
                Assert.True(e.LogProb <= 0 && float.IsFinite(e.LogProb));
                Assert.Equal(3, e.TopLogProbs!.Length);
                Assert.True(e.TopLogProbs[0].LogProb >= e.LogProb);
            }
        }
        Assert.Equal(1234UL, SamplingParameters.StreamSeed(1234, 0));
        var next = await Collect(Submit(s, request with { Sampling = sampling with { Seed = 1235 } }));
        foreach (var o in next)
            Assert.DoesNotContain(outs, x => x.Tokens.SequenceEqual(o.Tokens));
    }

    [Fact]
    public async Task GreedyStopsAtTheEndOfTextTokenAndReportsMetrics()
    {
        using var s = Scheduler();
        // Ban every token but 'a' and end-of-text, then favour end-of-text after one 'a': finish reason stop, no stop token delivered.
        var bias = Enumerable.Range(0, TinyChatModel.VocabSize).ToDictionary(i => i, i => i == 'a' || i == TinyChatModel.EndOfText ? 0f : float.NegativeInfinity);
        var sampling = SamplingParameters.Greedy with { LogitBias = bias, PresencePenalty = SamplingParameters.MaxAdditivePenalty };
        // The listener starts before the request: the meters' 1 s drain timer sent the first token's samples to no
        // listener when it ticked between admission and a listener started after the request.
        var seen = new Dictionary<string, double>();
        using var listener = new System.Diagnostics.Metrics.MeterListener();
        listener.InstrumentPublished = (i, l) => { if (ReferenceEquals(i.Meter, s.Meters.Meter)) l.EnableMeasurementEvents(i); };
        listener.SetMeasurementEventCallback<double>((i, v, _, _) => { lock (seen) seen[i.Name] = seen.GetValueOrDefault(i.Name) + 1; });
        listener.SetMeasurementEventCallback<long>((i, v, _, _) => { lock (seen) seen[i.Name] = v; });
        listener.SetMeasurementEventCallback<int>((i, v, _, _) => { lock (seen) seen[i.Name] = v; });
        listener.Start();
        var outs = await Collect(Submit(s, new GenerationRequest { Prompt = [(int)'b'], MaxTokens = 10, Sampling = sampling }));
        Assert.Equal(FinishReason.Stop, outs[0].Finish);
        Assert.DoesNotContain(TinyChatModel.EndOfText, outs[0].Tokens);
        Assert.True(outs[0].Tokens.Count <= 1);
        Assert.Equal(-1, outs[0].Events[^1].Token);

        s.Meters.Publish();
        listener.RecordObservableInstruments();
        Assert.Equal(1, seen["bitnet.time_to_first_token"]);
        Assert.Equal(1, seen["bitnet.request.queue_time"]);
        Assert.True(seen["bitnet.engine.step_tokens"] >= 1);
        Assert.Equal(seen["bitnet.engine.step_tokens"], seen["bitnet.engine.step_duration"]); // one of each per step
        Assert.Equal(1, seen["bitnet.prompt_tokens"]);
        Assert.Equal(0, seen["bitnet.requests.running"]);
    }

    /// <summary>
    /// Observations the engine drops when nothing drains its ring are counted in a metric: the histograms undercount
    /// then (step_duration_count below steps_total) and nothing said why.
    /// </summary>
    [Fact]
    public void DroppedHistogramSamplesAreCounted()
    {
        using var s = Scheduler();
        var ring = new MetricSampleRing(4);
        using var meters = new SchedulerMeters(s, ring, 0);
        for (int i = 0; i < 5; i++) ring.Write(MetricKind.StepDuration, 0.01);
        long dropped = -1;
        using var listener = new System.Diagnostics.Metrics.MeterListener();
        listener.InstrumentPublished = (i, l) => { if (ReferenceEquals(i.Meter, meters.Meter) && i.Name == "bitnet.metric_samples.dropped") l.EnableMeasurementEvents(i); };
        listener.SetMeasurementEventCallback<long>((i, v, _, _) => dropped = v);
        listener.Start();
        listener.RecordObservableInstruments();
        Assert.Equal(ring.Dropped, dropped);
        Assert.True(dropped >= 1);
    }

    [Fact]
    public void BadRequestsAreRefusedBeforeQueueing()
    {
        using var s = Scheduler(maxSeqs: 2, maxBatched: 8);
        Assert.Throws<ArgumentException>(() => Submit(s, new GenerationRequest { Prompt = [] }));
        Assert.Throws<ArgumentException>(() => Submit(s, new GenerationRequest { Prompt = [TinyChatModel.VocabSize] }));
        var ctx = Assert.Throws<ArgumentException>(() => Submit(s, new GenerationRequest { Prompt = [1, 2], MaxTokens = 255 }));
        Assert.Contains("exceeds the context of 256", ctx.Message);
        Assert.Throws<ArgumentException>(() => Submit(s, new GenerationRequest { Prompt = [1], Choices = 3 }));
        Assert.Throws<ArgumentException>(() => Submit(s, new GenerationRequest { Prompt = [1], StopStrings = [""] }));
        Assert.Equal(0, s.Statistics.WaitingRequests);
        Assert.Throws<ArgumentException>(() => new SchedulerOptions { MaxSequences = 8, MaxBatchedTokens = 4 }.Validate());
    }

    [Theory]
    [InlineData(new[] { "Hello, wor", "ld! Bye" }, new[] { "world" }, "Hello, ", true)]
    [InlineData(new[] { "ab", "c", "d" }, new[] { "cde" }, "abcd", false)]
    [InlineData(new[] { "x<", "|e", "nd|>y" }, new[] { "<|end|>" }, "x", true)]
    [InlineData(new[] { "aaa", "ab" }, new[] { "aab" }, "aa", true)]
    public void StopStringMatcherHoldsBackPossibleStarts(string[] pieces, string[] stops, string expected, bool expectStop)
    {
        var m = new StopStringMatcher(stops);
        string text = "";
        bool stopped = false;
        foreach (var p in pieces)
        {
            text += m.Push(p, out stopped);
            if (stopped) break;
        }
        if (!stopped) text += m.Flush();
        Assert.Equal(expected, text);
        Assert.Equal(expectStop, stopped);
    }

    /// <summary>Disposing with work in flight ends every request instead of leaving a reader hanging.</summary>
    [Fact]
    public async Task DisposeEndsRequestsInFlight()
    {
        var s = Scheduler(maxSeqs: 1, maxBatched: 8);
        var running = Submit(s, new GenerationRequest { Prompt = [1], MaxTokens = 250, IgnoreStopTokens = true });
        var waiting = Submit(s, new GenerationRequest { Prompt = [2], MaxTokens = 4 });
        var sw = Stopwatch.StartNew();
        s.Dispose();
        Assert.True(sw.Elapsed < Bound);
        using var read = new CancellationTokenSource(Bound);
        foreach (var h in new[] { running, waiting })
        {
            try { await foreach (var _ in h.Events.ReadAllAsync(read.Token)) { } }
            catch (ObjectDisposedException) { }
            Assert.True(h.Events.Completion.IsCompleted);
        }
        Assert.Throws<ObjectDisposedException>(() => Submit(s, new GenerationRequest { Prompt = [1] }));
    }

    /// <summary>
    /// Withdraw stops a request as Cancel does without counting it as a client's cancellation; the first call decides.
    /// ChoiceOffset numbers a request's step rows as its caller's response does (two prompts of one HTTP request were
    /// both sequence 0 in the telemetry log).
    /// </summary>
    [Fact]
    public async Task AWithdrawnRequestIsNotCountedCancelledAndChoicesAreNumberedFromTheirOffset()
    {
        var sink = new RowSink();
        using var s = new ContinuousBatchScheduler(_weights, _tokenizer, new SchedulerOptions { MaxSequences = 4, MaxBatchedTokens = 32, Threads = 2, HealthSampleEvery = 1 })
        {
            Telemetry = sink,
        };
        // The engine is held while each request is stopped: on a loaded 2-core CI machine the tiny model once finished
        // all 64 tokens between Submit and Cancel, and the request ended normally.
        Assert.True(s.HoldAtGate(Bound));
        var withdrawn = Submit(s, new GenerationRequest { Prompt = [1, 2, 3], MaxTokens = 64, IgnoreStopTokens = true });
        withdrawn.Withdraw();
        withdrawn.Cancel(); // too late: withdrawn already
        s.StepGate.Set();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Collect(withdrawn));
        Assert.Equal(0, s.Statistics.Cancelled);
        Assert.True(s.HoldAtGate(Bound));
        var cancelled = Submit(s, new GenerationRequest { Prompt = [1, 2, 3], MaxTokens = 64, IgnoreStopTokens = true });
        cancelled.Cancel();
        s.StepGate.Set();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Collect(cancelled));
        Assert.Equal(1, s.Statistics.Cancelled);

        await Collect(Submit(s, new GenerationRequest { Prompt = [4, 5], MaxTokens = 2, IgnoreStopTokens = true, Choices = 2, ChoiceOffset = 4, RequestId = "r" }));
        lock (sink.StepRows)
            Assert.Equal([4, 5], sink.Sequences.Where(x => x.Request == "r").Select(x => x.Sequence).Distinct().Order());
    }

    /// <summary>
    /// A request's events close only after its last step is counted: the step's statistics, histogram samples and
    /// health publication (whose layer rows this sink sees) came after the last token's delivery closed the channel,
    /// so a client reading /metrics right after its answer (or a test reading Statistics) could miss that step — the
    /// CI read step_tokens short of the generated tokens.
    /// </summary>
    [Fact]
    public async Task ARequestEndsAfterItsLastStepIsCounted()
    {
        GenerationHandle? handle = null;
        var closedAtPublish = new List<bool>();
        using var s = new ContinuousBatchScheduler(_weights, _tokenizer, new SchedulerOptions { MaxSequences = 2, MaxBatchedTokens = 32, Threads = 2, HealthSampleEvery = 1 })
        {
            Telemetry = new LayerRowProbe(() =>
            {
                if (Volatile.Read(ref handle) is { } h)
                    lock (closedAtPublish) closedAtPublish.Add(h.Closed);
            }),
        };
        s.StepGate.Reset();
        Volatile.Write(ref handle, Submit(s, new GenerationRequest { Prompt = [1, 2, 3], MaxTokens = 2, IgnoreStopTokens = true }));
        s.StepGate.Set();
        await Collect(handle);
        Assert.Equal(2, s.Statistics.Steps); // counted before the caller saw the end
        lock (closedAtPublish)
        {
            Assert.NotEmpty(closedAtPublish);
            Assert.DoesNotContain(true, closedAtPublish);
        }
    }

    private sealed class LayerRowProbe(Action onLayerRow) : BitNetSharp.Monitoring.Telemetry.ITelemetrySink
    {
        public void Write(in BitNetSharp.Monitoring.Telemetry.TelemetryStepRecord record) { }

        public void Write(BitNetSharp.Monitoring.Telemetry.TelemetryLayerRecord record) => onLayerRow();

        public void Write(in BitNetSharp.Monitoring.Telemetry.TelemetryEvent record) { }
    }

    private sealed class RowSink : BitNetSharp.Monitoring.Telemetry.ITelemetrySink
    {
        public readonly List<long> StepRows = [], LayerRows = [];

        public readonly List<(string? Request, int Sequence)> Sequences = [];

        public void Write(in BitNetSharp.Monitoring.Telemetry.TelemetryStepRecord record)
        {
            lock (StepRows)
            {
                StepRows.Add(record.Step);
                Sequences.Add((record.RequestId, record.Sequence));
            }
        }

        public void Write(BitNetSharp.Monitoring.Telemetry.TelemetryLayerRecord record)
        {
            lock (StepRows) LayerRows.Add(record.Step);
        }

        public readonly List<(string Kind, long? Step)> Events = [];

        public void Write(in BitNetSharp.Monitoring.Telemetry.TelemetryEvent record)
        {
            lock (StepRows) Events.Add((record.Kind, record.Step));
        }
    }

    /// <summary>
    /// A sequence's non-finite logits: the event carries the step that produced them, the step whose layer rows show the
    /// blow-up (the log wrote the last step it had seen, an earlier one).
    /// </summary>
    [Fact]
    public async Task TheNonFiniteLogitsEventCarriesTheStepOfItsLayerRows()
    {
        var sink = new RowSink();
        using var s = new ContinuousBatchScheduler(_weights, _tokenizer, new SchedulerOptions { MaxSequences = 2, MaxBatchedTokens = 32, Threads = 2, HealthSampleEvery = 1 })
        {
            Telemetry = sink,
        };
        await Collect(Submit(s, new GenerationRequest { Prompt = [1, 2, 3], MaxTokens = 3, IgnoreStopTokens = true }));
        unsafe
        {
            // 'Z': a NaN in its embedding row (the head is tied, so from now on every sequence's logits hold a NaN).
            var row = (ushort*)(_weights.TokenEmbedding.Data + 90 * _weights.TokenEmbedding.RowBytes);
            row[3] = 0x7E00;
        }
        await Assert.ThrowsAnyAsync<Exception>(() => Collect(Submit(s, new GenerationRequest { Prompt = [90, 90], MaxTokens = 3, IgnoreStopTokens = true })));
        // The request fails inside the step; its layer rows are written when the step ends (Health.Publish), which the
        // engine thread may not have reached when the failure reaches this thread.
        for (var wait = System.Diagnostics.Stopwatch.StartNew(); wait.Elapsed < Bound; await Task.Delay(10, TestContext.Current.CancellationToken))
            lock (sink.StepRows)
                if (sink.Events.FirstOrDefault(e => e.Kind == "nonfinite_logits").Step is { } failed && sink.LayerRows.Contains(failed)) break;
        lock (sink.StepRows)
        {
            var (_, step) = Assert.Single(sink.Events, e => e.Kind == "nonfinite_logits");
            Assert.NotNull(step);
            Assert.Contains(step!.Value, sink.LayerRows);
            Assert.Equal(sink.LayerRows.Max(), step.Value); // the failing step, the last one measured
            Assert.True(step.Value > sink.StepRows.Max()); // no token row for it: the check threw first
        }
    }

    /// <summary>
    /// A forward the health collector counted but the scheduler never finished (an engine failure mid-pass) used to
    /// shift every later token row's step one behind its layer rows, so a log's token could not be joined to its layers.
    /// </summary>
    [Fact]
    public async Task TokenRowsAndLayerRowsShareStepNumbersAfterAnAbortedForward()
    {
        var sink = new RowSink();
        using var s = new ContinuousBatchScheduler(_weights, _tokenizer, new SchedulerOptions { MaxSequences = 2, MaxBatchedTokens = 32, Threads = 2, HealthSampleEvery = 1 })
        {
            Telemetry = sink,
        };
        await Collect(Submit(s, new GenerationRequest { Prompt = [1, 2, 3], MaxTokens = 3, IgnoreStopTokens = true }));
        s.Health.BeginForward(1); // what an engine failure after the pass began leaves behind
        await Collect(Submit(s, new GenerationRequest { Prompt = [4, 5], MaxTokens = 4, IgnoreStopTokens = true }));
        // The last token reaches this thread before its step's layer rows are written (Health.Publish ends the step).
        for (var wait = System.Diagnostics.Stopwatch.StartNew(); wait.Elapsed < Bound; await Task.Delay(10, TestContext.Current.CancellationToken))
            lock (sink.StepRows)
                if (sink.StepRows.Count > 0 && sink.LayerRows.Contains(sink.StepRows[^1])) break;
        lock (sink.StepRows)
        {
            Assert.Equal(7, sink.StepRows.Count);
            Assert.All(sink.StepRows, step => Assert.Contains(step, sink.LayerRows));
            Assert.Equal(sink.LayerRows.Max(), sink.StepRows[^1]); // the last step made the last token
        }
    }
}
