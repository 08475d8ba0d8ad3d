namespace BitNetSharp.Generation.Sampling;

/// <summary>
/// How one sequence picks its next token. The defaults change nothing: temperature 1 and every filter and
/// penalty off, i.e. a draw from the model's own distribution. <see cref="Sampler"/> documents the order in
/// which the settings act.
/// </summary>
public sealed record SamplingParameters
{
    /// <summary>Logits are divided by it after the filters; 0 means greedy (argmax, ties to the lowest id).</summary>
    public float Temperature { get; init; } = 1f;

    /// <summary>Keep only the k most likely tokens; 0 turns it off.</summary>
    public int TopK { get; init; }

    /// <summary>Nucleus: keep the most likely tokens until their probability reaches p; 1 turns it off.</summary>
    public float TopP { get; init; } = 1f;

    /// <summary>Drop tokens whose probability is below min_p × the top token's; 0 turns it off.</summary>
    public float MinP { get; init; }

    /// <summary>Locally typical sampling (Meister et al. 2022) with mass p; 1 turns it off.</summary>
    public float TypicalP { get; init; } = 1f;

    /// <summary>CTRL-style: the logit of a token in the window is divided by it when positive, multiplied when not; 1 turns it off.</summary>
    public float RepetitionPenalty { get; init; } = 1f;

    /// <summary>Subtracted once from the logit of every token that occurs in the window (OpenAI presence_penalty).</summary>
    public float PresencePenalty { get; init; }

    /// <summary>Subtracted from a token's logit once per occurrence in the window (OpenAI frequency_penalty).</summary>
    public float FrequencyPenalty { get; init; }

    /// <summary>How many of the last history tokens the penalties look at; −1 means all of them, 0 none.</summary>
    public int PenaltyLastN { get; init; } = 64;

    /// <summary>
    /// Whether the presence and frequency penalties count the prompt's tokens (llama.cpp's penalties, the CLI's) or only
    /// the generated ones (OpenAI's: how often a token was sampled so far; the server's). The repetition penalty counts
    /// the prompt either way, as llama.cpp, HF and vLLM do. Both engines pass the sampler the prompt's length.
    /// </summary>
    public bool PenalizePrompt { get; init; } = true;

    /// <summary>Token id → value added to its logit first of all; −∞ bans the token.</summary>
    public IReadOnlyDictionary<int, float>? LogitBias { get; init; }

    /// <summary>Bounds of <see cref="RepetitionPenalty"/>, <see cref="PresencePenalty"/> and <see cref="FrequencyPenalty"/>.</summary>
    public const float MinRepetitionPenalty = 1e-3f, MaxRepetitionPenalty = 1e3f, MaxAdditivePenalty = 1e3f;

    /// <summary>Seed of the sampler's own PRNG (xoshiro256**), so a seed replays the same tokens on any .NET version; null picks one at random.</summary>
    public ulong? Seed { get; init; }

    /// <summary>
    /// The seed of stream <paramref name="stream"/> under <paramref name="seed"/> (a request's choice, a chat's answer):
    /// stream 0 is the seed itself, so a single choice replays `generate --seed`; the others are a SplitMix64 mix of both,
    /// so streams of neighbouring seeds share no draws. With seed + i, a request with seed 43 repeated choice 1 of the
    /// same request with seed 42 (3 of 4 completions the same), and anyone stepping through seeds got correlated samples.
    /// </summary>
    public static ulong StreamSeed(ulong seed, int stream)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(stream);
        if (stream == 0) return seed;
        var mix = new Training.SplitMix64(seed);
        var second = new Training.SplitMix64(mix.NextUInt64() ^ unchecked((ulong)stream * 0xD1B54A32D192ED03UL));
        return second.NextUInt64();
    }

    /// <summary>
    /// With both top-k and top-p set: keep min(k, size of the nucleus of the whole distribution), the cutoff
    /// that keeps fewer tokens. Off (the default), top-p runs after top-k on the k survivors renormalized, as in
    /// llama.cpp, HF and vLLM.
    /// </summary>
    public bool TopKOrTopPWhicheverKeepsFewer { get; init; }

    /// <summary>
    /// Log-probabilities to report with each token: null for none, 0 for the chosen token's only, N for the chosen
    /// token's and the N most likely tokens' (OpenAI logprobs / top_logprobs, llama.cpp n_probs).
    /// </summary>
    public int? LogProbs { get; init; }

    /// <summary>Greedy decoding.</summary>
    public static SamplingParameters Greedy { get; } = new() { Temperature = 0f };

    /// <summary>Throws <see cref="ArgumentException"/> naming the first setting that is out of range.</summary>
    public void Validate()
    {
        if (!(Temperature >= 0f) || float.IsInfinity(Temperature))
            Fail(nameof(Temperature), $"temperature must be a finite number ≥ 0 (0 means greedy); got {Temperature}.");
        if (TopK < 0) Fail(nameof(TopK), $"top_k must be ≥ 0 (0 turns it off); got {TopK}.");
        if (!(TopP > 0f && TopP <= 1f)) Fail(nameof(TopP), $"top_p must be in (0, 1] (1 turns it off); got {TopP}.");
        if (!(MinP >= 0f && MinP <= 1f)) Fail(nameof(MinP), $"min_p must be in [0, 1] (0 turns it off); got {MinP}.");
        if (!(TypicalP > 0f && TypicalP <= 1f)) Fail(nameof(TypicalP), $"typical_p must be in (0, 1] (1 turns it off); got {TypicalP}.");
        // Bounded so a penalised logit stays finite (logit / 1e-38, or count × −3e38, overflowed to ∞ and the sampler
        // blamed the forward pass); the bounds are far past any useful setting.
        if (!(RepetitionPenalty >= MinRepetitionPenalty && RepetitionPenalty <= MaxRepetitionPenalty))
            Fail(nameof(RepetitionPenalty), $"repetition_penalty must be between {MinRepetitionPenalty} and {MaxRepetitionPenalty} (1 turns it off); got {RepetitionPenalty}.");
        if (!(Math.Abs(PresencePenalty) <= MaxAdditivePenalty))
            Fail(nameof(PresencePenalty), $"presence_penalty must be between -{MaxAdditivePenalty} and {MaxAdditivePenalty}; got {PresencePenalty}.");
        if (!(Math.Abs(FrequencyPenalty) <= MaxAdditivePenalty))
            Fail(nameof(FrequencyPenalty), $"frequency_penalty must be between -{MaxAdditivePenalty} and {MaxAdditivePenalty}; got {FrequencyPenalty}.");
        if (PenaltyLastN < -1) Fail(nameof(PenaltyLastN), $"penalty_last_n must be ≥ −1 (−1 means the whole history); got {PenaltyLastN}.");
        if (LogProbs < 0) Fail(nameof(LogProbs), $"the number of top log-probabilities must be ≥ 0; got {LogProbs}.");
        if (LogitBias is not null)
        {
            foreach (var (token, bias) in LogitBias)
            {
                if (token < 0) Fail(nameof(LogitBias), $"logit_bias names token {token}; token ids are ≥ 0.");
                if (float.IsNaN(bias) || float.IsPositiveInfinity(bias))
                    Fail(nameof(LogitBias), $"logit_bias for token {token} is {bias}; use a finite number, or −∞ to ban the token.");
            }
        }
    }

    /// <summary><see cref="Validate()"/> plus the checks that need the vocabulary size.</summary>
    public void Validate(int vocabSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(vocabSize);
        Validate();
        if (LogitBias is not null)
            foreach (int token in LogitBias.Keys)
                if (token >= vocabSize) Fail(nameof(LogitBias), $"logit_bias names token {token}, but the vocabulary has {vocabSize} tokens (0..{vocabSize - 1}).");
        if (LogProbs > vocabSize) Fail(nameof(LogProbs), $"{LogProbs} top log-probabilities asked for, but the vocabulary has {vocabSize} tokens.");
    }

    private static void Fail(string parameter, string message) => throw new ArgumentException(message, parameter);
}
