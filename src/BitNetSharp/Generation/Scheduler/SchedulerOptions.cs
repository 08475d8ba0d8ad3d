using BitNetSharp.Generation.Speculative;
using BitNetSharp.Model;

namespace BitNetSharp.Generation.Scheduler;

/// <summary>How a <see cref="ContinuousBatchScheduler"/> is sized. Every bound is fixed when the scheduler starts.</summary>
public sealed record SchedulerOptions
{
    /// <summary>Sequences that run at once; each owns one KV cache of <see cref="ContextLength"/> positions from a pool allocated at start.</summary>
    public int MaxSequences { get; init; } = 8;

    /// <summary>
    /// Tokens per engine step: every running sequence's decode token, then prompt chunks up to this budget. It bounds
    /// how long one step takes, i.e. how much a long prompt can delay the other sequences' next token. At least
    /// <see cref="MaxSequences"/>, so every decode token always fits.
    /// </summary>
    public int MaxBatchedTokens { get; init; } = 256;

    /// <summary>
    /// Sequences that may wait to start, beyond those the free sequences take at the next step; a request that would
    /// pass it is refused at once with <see cref="SchedulerQueueFullException"/>. A request counts its
    /// <see cref="GenerationRequest.Choices"/> (n), so for n = 1 this is the number of waiting requests. 0: refuse
    /// whatever cannot start at once.
    /// </summary>
    public int MaxQueue { get; init; } = 64;

    /// <summary>KV-cache positions per sequence (≤ 0: the model's context length).</summary>
    public int ContextLength { get; init; }

    public KvCacheType KvType { get; init; } = KvCacheType.F16;

    /// <summary>Worker threads for the forward pass (≤ 0: physical cores).</summary>
    public int Threads { get; init; }

    /// <summary>Applies to requests that name no timeout of their own; null means none.</summary>
    public TimeSpan? DefaultTimeout { get; init; }

    /// <summary>Measure the model's numerical health every N engine steps (0: only the always-on NaN/Inf check). Measuring costs a few element passes per layer and token; every 8th step keeps it well under 1 % of decode time.</summary>
    public int HealthSampleEvery { get; init; } = 8;

    /// <summary>Compare a fixed sample of each packed weight tensor with its load-time bytes every N engine steps (0: never); needs <see cref="ContinuousBatchScheduler.Integrity"/>.</summary>
    public int WeightProbeEvery { get; init; } = 256;

    /// <summary>
    /// Speculative decoding for every request that does not turn it off (null: none): each decoding sequence feeds
    /// up to DraftTokens prompt-lookup drafts with its next token, all verified in the same batched step, so a step
    /// can emit several tokens per sequence. Only <see cref="DraftSource.NGram"/> drafts here: a draft model would
    /// need its own batched engine and KV-cache slots.
    /// </summary>
    public SpeculativeOptions? Speculation { get; init; }

    /// <summary>Throws <see cref="ArgumentException"/> naming the first bound that makes no sense.</summary>
    public void Validate()
    {
        if (MaxSequences < 1) throw new ArgumentException($"MaxSequences must be ≥ 1; got {MaxSequences}.", nameof(MaxSequences));
        if (MaxBatchedTokens < MaxSequences)
            throw new ArgumentException(
                $"MaxBatchedTokens ({MaxBatchedTokens}) must be at least MaxSequences ({MaxSequences}): every running sequence's decode token goes into each step.",
                nameof(MaxBatchedTokens));
        if (MaxQueue < 0) throw new ArgumentException($"MaxQueue must be ≥ 0; got {MaxQueue}.", nameof(MaxQueue));
        if (!Enum.IsDefined(KvType)) throw new ArgumentException($"Unknown KV cache type {KvType}.", nameof(KvType));
        if (HealthSampleEvery < 0) throw new ArgumentException($"HealthSampleEvery must be ≥ 0 (0: off); got {HealthSampleEvery}.", nameof(HealthSampleEvery));
        if (WeightProbeEvery < 0) throw new ArgumentException($"WeightProbeEvery must be ≥ 0 (0: off); got {WeightProbeEvery}.", nameof(WeightProbeEvery));
        if (Speculation is { } spec)
        {
            spec.Validate();
            if (spec.Source != DraftSource.NGram)
                throw new ArgumentException("The scheduler drafts by prompt lookup (n-gram) only; a draft model runs with generate and chat.", nameof(Speculation));
        }
        if (DefaultTimeout is { } t && t <= TimeSpan.Zero) throw new ArgumentException($"DefaultTimeout must be positive; got {t}.", nameof(DefaultTimeout));
    }
}
