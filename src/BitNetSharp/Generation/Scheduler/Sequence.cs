using BitNetSharp.Generation.Sampling;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Generation.Scheduler;

/// <summary>One running choice of a request: the KV-cache slot it owns, how far its prompt is in the cache, and its sampler and text state.</summary>
internal sealed class Sequence(GenerationHandle request, int choice, int slot, Sampler sampler, StreamingDetokenizer? detokenizer, StopStringMatcher? stops)
{
    public GenerationHandle Request { get; } = request;
    public int Choice { get; } = choice;
    public int Slot { get; } = slot;
    public Sampler Sampler { get; } = sampler;
    public StreamingDetokenizer? Detokenizer { get; } = detokenizer;
    public StopStringMatcher? Stops { get; } = stops;

    /// <summary>Prompt then generated tokens: what the penalties look at.</summary>
    public List<int> History { get; } = new(request.Request.Prompt.Count + request.Request.MaxTokens);

    public int PromptLength => Request.Request.Prompt.Count;

    /// <summary>How much of this sequence's recent output repeats itself (a loop reads near 1).</summary>
    public BitNetSharp.Monitoring.RepetitionTracker Repetition { get; } = new();

    /// <summary>Prompt tokens already sent to the engine.</summary>
    public int Prefilled;

    /// <summary>Positions in the KV cache (after the step in flight).</summary>
    public int CacheLength;

    /// <summary>The sampled token the next step feeds, or −1 while the prompt is still being prefilled.</summary>
    public int NextToken = -1;

    public int Generated;

    /// <summary>Chars of text the generated tokens have decoded to so far, delivered or held back for a stop string.</summary>
    public int DecodedChars;

    /// <summary>Chars delivered in events so far.</summary>
    public int DeliveredChars;

    /// <summary>Speculation: the draft tokens fed after <see cref="NextToken"/> in the step in flight (DraftCount of them).</summary>
    public int[]? Drafts;
    public int DraftCount;
    public long LastTokenTicks;
    public bool Finished;
}
