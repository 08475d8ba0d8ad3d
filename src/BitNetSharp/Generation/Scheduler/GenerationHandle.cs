using System.Threading.Channels;

namespace BitNetSharp.Generation.Scheduler;

/// <summary>
/// A submitted request: its events arrive on <see cref="Events"/> as the engine produces them, and the channel
/// completes when every choice has finished — with an <see cref="OperationCanceledException"/> after
/// <see cref="Cancel"/>, a <see cref="RequestTimeoutException"/> after the timeout, or the engine's error if it failed.
/// The engine thread owns every mutable field below except the cancellation flag.
/// </summary>
public sealed class GenerationHandle
{
    private readonly ContinuousBatchScheduler _scheduler;
    private readonly Channel<GenerationEvent> _channel =
        Channel.CreateUnbounded<GenerationEvent>(new UnboundedChannelOptions { SingleWriter = true, SingleReader = false });
    private int _cancelled;
    private CancellationTokenRegistration _registration;

    internal GenerationHandle(ContinuousBatchScheduler scheduler, long id, GenerationRequest request, long submittedTicks, long deadlineTicks)
    {
        _scheduler = scheduler;
        Id = id;
        Request = request;
        SubmittedTicks = submittedTicks;
        DeadlineTicks = deadlineTicks;
    }

    public long Id { get; }

    public GenerationRequest Request { get; }

    public int PromptTokens => Request.Prompt.Count;

    public ChannelReader<GenerationEvent> Events => _channel.Reader;

    /// <summary>Stops the request: its sequences leave the batch and free their KV caches at the engine's next step.</summary>
    public void Cancel()
    {
        if (Interlocked.CompareExchange(ref _cancelled, 1, 0) == 0) _scheduler.Wake();
    }

    /// <summary>
    /// Stops the request as <see cref="Cancel"/> does, for its caller's own reasons (a sibling prompt of one HTTP request
    /// was refused or failed), not its client's: it is not counted as cancelled (bitnet_requests_cancelled_total is "a
    /// client that went away", and a multi-prompt 429 counted one). The first of the two calls decides.
    /// </summary>
    public void Withdraw()
    {
        if (Interlocked.CompareExchange(ref _cancelled, 2, 0) == 0) _scheduler.Wake();
    }

    internal bool IsCancelled => Volatile.Read(ref _cancelled) != 0;

    internal bool IsWithdrawn => Volatile.Read(ref _cancelled) == 2;

    internal void Register(CancellationToken cancellation)
    {
        if (cancellation.CanBeCanceled) _registration = cancellation.Register(static h => ((GenerationHandle)h!).Cancel(), this);
    }

    internal ChannelWriter<GenerationEvent> Writer => _channel.Writer;

    internal long SubmittedTicks { get; }
    internal long DeadlineTicks { get; }
    internal Sequence[] Sequences { get; set; } = [];
    internal int UnfinishedChoices { get; set; }
    internal bool FirstTokenSeen { get; set; }
    internal bool Admitted { get; set; }
    internal bool Done { get; private set; }

    /// <summary>
    /// Ends the request (with <paramref name="error"/> unless it ended normally). Inside an engine step the channel is
    /// closed when the step's bookkeeping is done (<see cref="ContinuousBatchScheduler"/> defers it), so a caller that
    /// sees its request end sees that step counted in the scheduler's statistics, histograms and health snapshot.
    /// </summary>
    internal void Complete(Exception? error)
    {
        Done = true;
        if (!_scheduler.DeferClose(this, error)) Close(error);
    }

    /// <summary>Whether <see cref="Events"/> has been closed (tests).</summary>
    internal bool Closed { get; private set; }

    /// <summary>Closes the channel and drops the cancellation hook.</summary>
    internal void Close(Exception? error)
    {
        Closed = true;
        _channel.Writer.TryComplete(error);
        _registration.Dispose();
    }
}

/// <summary>A request that did not finish within its timeout; <see cref="Started"/>: whether it had been admitted to
/// the batch (it ran) or was still waiting in the queue.</summary>
public sealed class RequestTimeoutException(string message, bool started) : TimeoutException(message)
{
    public bool Started { get; } = started;
}
