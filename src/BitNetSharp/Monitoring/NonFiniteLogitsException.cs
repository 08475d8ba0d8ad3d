namespace BitNetSharp.Monitoring;

/// <summary>
/// A sequence's logits held NaN or ±∞, so no token can be sampled; the sequence is ended with this error. <see cref="Origin"/>
/// is where the non-finite values first appeared (<see cref="ModelHealthCollector.NonFiniteOrigin"/>).
/// </summary>
public sealed class NonFiniteLogitsException(int nonFinite, int vocab, int origin)
    : InvalidOperationException($"The model produced non-finite logits ({nonFinite} of {vocab} are NaN or infinite); they first appeared {ModelHealthCollector.DescribeOrigin(origin)}. " +
        "The weights or the input are corrupt: check the model file (bitnet inspect) and the weight checksums.")
{
    public int NonFinite { get; } = nonFinite;

    /// <summary><see cref="ModelHealthCollector.Finite"/> (output norm or head), <see cref="ModelHealthCollector.Embedding"/>, or a layer index.</summary>
    public int Origin { get; } = origin;

    /// <summary>The layer, or null when the values came from the embedding or the head.</summary>
    public int? Layer => Origin >= 0 ? Origin : null;
}
