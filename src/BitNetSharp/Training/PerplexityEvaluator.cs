using BitNetSharp.Model;

namespace BitNetSharp.Training;

/// <summary>The result of <see cref="PerplexityEvaluator.Evaluate"/>.</summary>
/// <param name="NegativeLogLikelihood">Σ −ln p(token | context) over the scored tokens, in nats.</param>
/// <param name="ScoredBytes">UTF-8 bytes of the scored tokens (0 when no byte counts were given).</param>
public sealed record PerplexityResult(double NegativeLogLikelihood, long ScoredTokens, long ScoredBytes, int Windows)
{
    /// <summary>exp(mean NLL per token); NaN when nothing was scored (it read a perfect 1).</summary>
    public double Perplexity => Math.Exp(MeanNll);

    /// <summary>Mean NLL per token in nats; NaN when nothing was scored.</summary>
    public double MeanNll => ScoredTokens > 0 ? NegativeLogLikelihood / ScoredTokens : double.NaN;

    /// <summary>Total NLL in bits over the UTF-8 bytes of the scored text (NaN without byte counts).</summary>
    public double BitsPerByte => ScoredBytes > 0 ? NegativeLogLikelihood / Math.Log(2) / ScoredBytes : double.NaN;
}

/// <summary>
/// Perplexity of a token stream under the engine: windows of ctx tokens start every <c>stride</c> tokens (default
/// ctx: non-overlapping chunks); each window is run from an empty
/// KV cache and only its tokens at positions ≥ ctx/2 are scored (predicted from at least ctx/2 tokens of context), so
/// a token's score never depends on where a window happens to begin. With stride = ctx/2 every token after the first
/// ctx/2 is scored exactly once; a stride below ctx/2 (or ctx/2 rounded down, for an odd ctx) scores the last stride
/// positions of each window instead, so no token is scored twice.
/// When <c>bosId</c> ≥ 0 the first token of every window is replaced by BOS, as llama-perplexity does for models that
/// add one. Unlike llama-perplexity each window also scores its last position (the next window's first token);
/// <see cref="Evaluation.QualityEvaluator.Evaluate"/> with llamaChunks follows llama-perplexity exactly. Bits per byte = Σ NLL / ln 2 / Σ UTF-8 bytes of the scored tokens.
/// </summary>
public static class PerplexityEvaluator
{
    /// <summary>A perplexity as a person reads it: 2 decimals, or 4 significant digits with an exponent from a million
    /// (calibrate --tune printed an untrained model's, e^119, as a 52-digit number).</summary>
    public static string Format(double perplexity) =>
        perplexity.ToString(perplexity < 1e6 ? "F2" : "0.###e+0", System.Globalization.CultureInfo.InvariantCulture);

    public static PerplexityResult Evaluate(Transformer engine, ReadOnlySpan<int> tokens, int ctx, int stride = 0,
        Func<int, int>? tokenByteCount = null, int bosId = -1, Action<int, int>? progress = null) =>
        Evaluation.QualityEvaluator.Evaluate(engine, tokens, ctx, stride, tokenByteCount, bosId, progress).Model;

    /// <summary>−ln softmax(z)[target], with the max subtracted and the sum in double.</summary>
    public static double NegativeLogProbability(ReadOnlySpan<float> z, int target)
    {
        float max = float.NegativeInfinity;
        foreach (float v in z) max = MathF.Max(max, v);
        double sum = 0;
        foreach (float v in z) sum += Math.Exp(v - max);
        return Math.Log(sum) + max - z[target];
    }
}
