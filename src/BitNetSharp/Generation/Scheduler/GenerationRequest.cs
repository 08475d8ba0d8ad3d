using BitNetSharp.Generation.Sampling;

namespace BitNetSharp.Generation.Scheduler;

/// <summary>One request to a <see cref="ContinuousBatchScheduler"/>: a tokenized prompt and how to continue it.</summary>
public sealed record GenerationRequest
{
    /// <summary>The prompt's token ids (at least one).</summary>
    public required IReadOnlyList<int> Prompt { get; init; }

    /// <summary>Tokens to generate at most per choice; prompt + this must fit the scheduler's context.</summary>
    public int MaxTokens { get; init; } = 16;

    /// <summary>
    /// Sampling for every choice. With a seed, choice i uses <see cref="SamplingParameters.StreamSeed"/>(seed, i) (choice 0 the seed itself), so n
    /// choices differ, each replays, and neighbouring seeds share no choice; with
    /// LogProbs set, every token event carries its log-probabilities.
    /// </summary>
    public SamplingParameters Sampling { get; init; } = SamplingParameters.Greedy;

    /// <summary>Texts that end a choice (finish reason Stop); the text from the match on is not delivered.</summary>
    public IReadOnlyList<string>? StopStrings { get; init; }

    /// <summary>Keep going past the tokenizer's end-of-sequence and end-of-turn tokens (and <see cref="StopTokenIds"/>).</summary>
    public bool IgnoreStopTokens { get; init; }

    /// <summary>Token ids that end a choice besides the tokenizer's stop tokens (a chat template's turn openers); not delivered.</summary>
    public IReadOnlyList<int>? StopTokenIds { get; init; }

    /// <summary>Independent continuations of the prompt (OpenAI n), each its own sequence with its own KV cache.</summary>
    public int Choices { get; init; } = 1;

    /// <summary>Wall-clock limit from submission, waiting included; null takes the scheduler's default.</summary>
    public TimeSpan? Timeout { get; init; }

    /// <summary>
    /// Speculative decoding for this request: null follows the scheduler (<see cref="SchedulerOptions.Speculation"/>),
    /// false turns it off; true needs the scheduler's speculation on (it says how: draft source and tokens).
    /// </summary>
    public bool? Speculate { get; init; }

    /// <summary>The caller's id for this request (the server's completion id), carried into telemetry records.</summary>
    public string? RequestId { get; init; }

    /// <summary>The W3C trace id (32 hex digits) of the request's traceparent, carried into telemetry records.</summary>
    public string? TraceId { get; init; }

    /// <summary>
    /// Added to each choice's number in telemetry records: a caller that splits one request into several (the server, a
    /// list of prompts: prompt × n) numbers them as its response does, so the step rows of two prompts under one
    /// <see cref="RequestId"/> are told apart (every prompt's first choice was sequence 0).
    /// </summary>
    public int ChoiceOffset { get; init; }
}

/// <summary>
/// What a request's channel delivers for one choice: a generated token (<see cref="Token"/> ≥ 0) with the text it
/// completes — empty while a UTF-8 character is partial or the text could be the start of a stop string — or, with
/// <see cref="Token"/> = −1, only the text left over when the choice ends at a stop token. The last event of a
/// choice has <see cref="Finish"/> set.
/// </summary>
public readonly record struct GenerationEvent(int Choice, int Token, string Text, float LogProb, TokenLogProb[]? TopLogProbs, FinishReason Finish)
{
    /// <summary>
    /// Where <see cref="Token"/>'s own text starts in the choice's text (chars; for the token a stop string ends,
    /// capped at the final text). Not the length delivered so far: text held back for a possible stop string arrives
    /// with a later token, in front of that token's own text (OpenAI's legacy <c>text_offset</c>).
    /// </summary>
    public int TextOffset { get; init; }

    /// <summary>
    /// The stop token (end of text, end of turn) that ended the choice, on its last event (<see cref="Token"/> = −1);
    /// −1 otherwise. It was sampled like any other token, and usage counts it as llama-server and vLLM do.
    /// </summary>
    public int StopToken { get; init; } = -1;
}

/// <summary>The queue of waiting requests is full; retry later (HTTP 429).</summary>
public sealed class SchedulerQueueFullException(int maxQueue)
    : Exception($"The server is busy: its queue of {maxQueue} waiting sequences is full (a request with n choices takes n). Retry in a moment.")
{
    public int MaxQueue { get; } = maxQueue;
}
