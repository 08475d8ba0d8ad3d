using BitNetSharp.Generation;
using BitNetSharp.Generation.Scheduler;
using BitNetSharp.Server.Api;

namespace BitNetSharp.Tests.Server;

/// <summary>How a request with several prompts merges their scheduler requests' events.</summary>
public sealed class CompletionEventsTests
{
    /// <summary>
    /// One prompt timing out in the queue ends the merged stream at once, while the other prompt still generates.
    /// Before, its TimeoutException waited for every other prompt's whole generation.
    /// </summary>
    [Fact]
    public async Task OnePromptsFailureEndsTheMergeWithoutWaitingForTheOthers()
    {
        var ct = TestContext.Current.CancellationToken;
        var (weights, tokenizer) = TinyChatModel.Load();
        using var _ = weights;
        using var s = new ContinuousBatchScheduler(weights, tokenizer, new SchedulerOptions { MaxSequences = 1, MaxBatchedTokens = 8, Threads = 1 });
        // Once the waiting prompt has timed out (its events closed), the engine is held until the test has looked, so the
        // running prompt cannot finish meanwhile however late this thread runs (2 s of 10 ms steps once could).
        using var hold = new ManualResetEventSlim(false);
        GenerationHandle? waiting = null;
        s.BeforeForward = () =>
        {
            Thread.Sleep(10);
            if (Volatile.Read(ref waiting) is { Closed: true }) hold.Wait(TimeSpan.FromSeconds(60));
        };
        var running = s.Submit(new GenerationRequest { Prompt = [1, 2, 3], MaxTokens = 200, IgnoreStopTokens = true }, ct);
        Volatile.Write(ref waiting, s.Submit(new GenerationRequest { Prompt = [4, 5], MaxTokens = 4, Timeout = TimeSpan.FromMilliseconds(100) }, ct));
        int events = 0;
        try
        {
            await Assert.ThrowsAsync<RequestTimeoutException>(async () =>
            {
                await foreach (var _ in CompletionEndpoints.Events([running, waiting], 1, ct)) events++;
            }).WaitAsync(TimeSpan.FromSeconds(60), ct); // a merge that waited for the held prompt fails here, not hours later
            Assert.False(running.Events.Completion.IsCompleted, $"the merge waited for the running prompt ({events} events) before reporting the timeout");
        }
        finally
        {
            running.Cancel();
            hold.Set();
        }
    }
}
