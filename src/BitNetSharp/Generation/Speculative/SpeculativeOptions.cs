using BitNetSharp.Model;

namespace BitNetSharp.Generation.Speculative;

/// <summary>Where speculative decoding's draft tokens come from.</summary>
public enum DraftSource
{
    /// <summary>Prompt lookup: the tokens that followed the latest earlier occurrence of the context's last n tokens (no second model).</summary>
    NGram,

    /// <summary>A smaller model with the same vocabulary, run ahead greedily or by sampling with the same settings.</summary>
    Model,
}

/// <summary>
/// Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a draft proposes up to <see cref="DraftTokens"/>
/// tokens, the model scores them all in one batched forward, and the longest prefix the model agrees with is kept,
/// plus the model's own next token. Greedy output is token-for-token that of plain greedy decoding; sampled output
/// has exactly plain sampling's distribution (the rejection rule), though not the same tokens for a given seed.
/// </summary>
public sealed record SpeculativeOptions
{
    public DraftSource Source { get; init; } = DraftSource.NGram;

    /// <summary>Draft tokens per verification step at most (the step then runs up to k + 1 tokens).</summary>
    public int DraftTokens { get; init; } = 5;

    /// <summary>Longest context suffix the n-gram draft tries to match first.</summary>
    public int MaxNGram { get; init; } = 3;

    /// <summary>Shortest suffix it falls back to.</summary>
    public int MinNGram { get; init; } = 1;

    /// <summary>The draft model (<see cref="DraftSource.Model"/>); the caller owns it. Must have the target's vocabulary.</summary>
    public ModelWeights? DraftModel { get; init; }

    /// <summary>
    /// The draft model's tokenizer, compared token by token with the model's; when null it is read from the draft's
    /// GGUF (a draft from a Hugging Face directory without it is compared by vocabulary size only).
    /// </summary>
    public Tokenization.BitNetTokenizer? DraftTokenizer { get; init; }

    public const int MaxDraftTokens = 32;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first setting that makes no sense.</summary>
    public void Validate()
    {
        if (!Enum.IsDefined(Source)) throw new ArgumentException($"Unknown draft source {Source}.", nameof(Source));
        if (DraftTokens < 1 || DraftTokens > MaxDraftTokens)
            throw new ArgumentException($"Draft tokens must be between 1 and {MaxDraftTokens}; got {DraftTokens}.", nameof(DraftTokens));
        if (MinNGram < 1 || MaxNGram < MinNGram)
            throw new ArgumentException($"The n-gram lengths must satisfy 1 ≤ min ({MinNGram}) ≤ max ({MaxNGram}).", nameof(MaxNGram));
        if (Source == DraftSource.Model && DraftModel is null)
            throw new ArgumentException("A model draft needs the draft model's weights.", nameof(DraftModel));
    }

    /// <summary>
    /// Refuses a draft model whose vocabulary differs from the target's: its token ids would mean other tokens.
    /// Compares the vocabulary sizes and, when both carry tokenizers, every token's text.
    /// </summary>
    public static void CheckSameVocabulary(ModelConfig target, Tokenization.BitNetTokenizer? targetTokenizer,
        ModelConfig draft, Tokenization.BitNetTokenizer? draftTokenizer, string draftName = "the draft model")
    {
        if (draft.VocabSize != target.VocabSize)
            throw new ArgumentException(
                $"{draftName} has a vocabulary of {draft.VocabSize} tokens, the model {target.VocabSize}: speculative decoding needs the same vocabulary (the same tokenizer).");
        if (targetTokenizer is null || draftTokenizer is null) return;
        if (draftTokenizer.VocabularySize != targetTokenizer.VocabularySize)
            throw new ArgumentException(
                $"{draftName}'s tokenizer has {draftTokenizer.VocabularySize} tokens, the model's {targetTokenizer.VocabularySize}: speculative decoding needs the same tokenizer.");
        for (int id = 0; id < targetTokenizer.VocabularySize; id++)
            if (targetTokenizer.TokenText(id) != draftTokenizer.TokenText(id))
                throw new ArgumentException(
                    $"{draftName}'s tokenizer differs from the model's at token {id} ({draftTokenizer.TokenText(id)} vs {targetTokenizer.TokenText(id)}): speculative decoding needs the same tokenizer.");
    }
}

/// <summary>Counts of a speculative generation: verification forwards, tokens drafted and accepted, tokens emitted.</summary>
public readonly record struct SpeculativeStats(long Steps, long Drafted, long Accepted, long Emitted)
{
    /// <summary>Accepted ÷ drafted (0 when nothing was drafted).</summary>
    public double AcceptanceRate => Drafted > 0 ? (double)Accepted / Drafted : 0;

    /// <summary>
    /// Tokens emitted per verification forward (1 is plain decoding). Every forward of the generation counts, those that
    /// found no draft included: the speed-up in forwards. The server's bitnet_speculative_* counters count only the
    /// steps that drafted (emitted ÷ steps there is the gain where a draft was tried).
    /// </summary>
    public double TokensPerStep => Steps > 0 ? (double)Emitted / Steps : 0;

    public static SpeculativeStats operator +(SpeculativeStats a, SpeculativeStats b) =>
        new(a.Steps + b.Steps, a.Drafted + b.Drafted, a.Accepted + b.Accepted, a.Emitted + b.Emitted);
}
