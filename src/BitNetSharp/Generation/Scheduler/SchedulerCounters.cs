namespace BitNetSharp.Generation.Scheduler;

/// <summary>
/// The engine's plain counters. The engine thread is the only writer of every field but <see cref="Rejected"/>
/// (submitting threads) and publishes with <see cref="Volatile"/> writes; readers (meters, tests, the health check)
/// see a value at most one step old. Nothing here locks or allocates.
/// </summary>
internal sealed class SchedulerCounters
{
    public long PromptTokens;       // prompt tokens run through the model (each choice prefills its own copy)
    public long GenerationTokens;   // tokens delivered, stop tokens not counted
    public long Steps;
    public long StepTokens;
    public long FinishedStop;
    public long FinishedLength;
    public long Cancelled;
    public long TimedOut;
    public long Failed;
    public long Rejected;
    public long NonFiniteSequences; // choices ended because their logits held NaN/Inf
    public int RunningRequests;
    public int RunningSequences;
    public long KvPositionsInUse;
    public long LastStepTicks;

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
    long NonFiniteSequences = 0)
{
    /// <summary>Fraction of all KV-cache positions holding a token.</summary>
    public double KvCacheUsage => KvPositionsCapacity == 0 ? 0 : (double)KvPositionsInUse / KvPositionsCapacity;
}
