namespace BitNetSharp.Generation.Scheduler;

/// <summary>
/// The engine's plain counters. The engine thread is the only writer of every field but <see cref="Rejected"/>
/// (submitting threads) and publishes with <see cref="Volatile"/> writes; readers (meters, tests, the health check)
/// see a value at most one step old. Nothing here locks or allocates.
/// </summary>
internal sealed class SchedulerCounters
{
    public long PromptTokens;       // prompt tokens run through the model (each choice prefills its own copy)
    public long GenerationTokens;   // tokens delivered, the stop token that ended a choice included
    public long Steps;
    public long StepTokens;
    public long FinishedStop;
    public long FinishedLength;
    public long Cancelled;
    public long Withdrawn;          // stopped by the caller for its own reasons (GenerationHandle.Withdraw): no metric
    public long TimedOut;
    public long Failed;
    public long Rejected;
    public long NonFiniteSequences; // choices ended because their logits held NaN/Inf
    public long SpeculativeSteps;   // decode steps of a sequence that fed draft tokens
    public long DraftedTokens;      // draft tokens verified
    public long AcceptedTokens;     // of them, accepted
    public long ComputedDraftTokens; // draft tokens fed through the model, verified or not
    public long SpeculativeTokens;  // tokens those steps emitted (accepted drafts + the model's own next token)
    public int RunningRequests;
    public int RunningSequences;
    public long KvPositionsInUse;
    public long LastStepTicks;
    public long BusySinceTicks;     // when work last arrived at an idle scheduler (nothing running or waiting)

    public static void Add(ref long field, long n) => Volatile.Write(ref field, field + n);

    public static void Set(ref int field, int value) => Volatile.Write(ref field, value);

    public static void Set(ref long field, long value) => Volatile.Write(ref field, value);
}

/// <summary>A snapshot of a scheduler's counters: cumulative totals since it started and the gauges as of its last step.</summary>
public readonly record struct SchedulerStatistics(
    int RunningRequests,
    int WaitingRequests,
    int RunningSequences,
    int MaxSequences,
    long KvPositionsInUse,
    long KvPositionsCapacity,
    long PromptTokens,
    long GenerationTokens,
    long Steps,
    long StepTokens,
    long FinishedStop,
    long FinishedLength,
    long Cancelled,
    long TimedOut,
    long Failed,
    long Rejected,
    long NonFiniteSequences = 0,
    long SpeculativeSteps = 0,
    long DraftedTokens = 0,
    long AcceptedTokens = 0,
    long SpeculativeTokens = 0,
    int WaitingSequences = 0,
    double StallSeconds = 0,
    long ComputedDraftTokens = 0)
{
    /// <summary>Accepted ÷ drafted tokens of speculating sequences (0 before any draft).</summary>
    public double DraftAcceptanceRate => DraftedTokens == 0 ? 0 : (double)AcceptedTokens / DraftedTokens;

    /// <summary>Tokens emitted per speculative decode step of a sequence (1 would be plain decoding).</summary>
    public double TokensPerSpeculativeStep => SpeculativeSteps == 0 ? 0 : (double)SpeculativeTokens / SpeculativeSteps;

    /// <summary>
    /// Waiting sequences beyond those the free sequences will take at the next step: what the queue limit
    /// (<see cref="SchedulerOptions.MaxQueue"/>) counts. Every request waits for the next step, so waiting sequences
    /// alone read a burst into an idle server as a full queue.
    /// </summary>
    public int QueuedSequences => Math.Max(0, WaitingSequences - Math.Max(0, MaxSequences - RunningSequences));

    /// <summary>Fraction of all KV-cache positions holding a token.</summary>
    public double KvCacheUsage => KvPositionsCapacity == 0 ? 0 : (double)KvPositionsInUse / KvPositionsCapacity;
}
