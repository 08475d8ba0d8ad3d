namespace BitNetSharp.Monitoring;

/// <summary>
/// A sequence's logits held NaN or ±∞, so no token can be sampled (or scored); the sequence is ended with this error.
/// <see cref="Origin"/> is where the non-finite values first appeared (<see cref="ModelHealthCollector.NonFiniteOrigin"/>),
/// <see cref="ModelHealthCollector.Finite"/> when not traced (an evaluation's score).
/// </summary>
public sealed class NonFiniteLogitsException : InvalidOperationException
{
    public NonFiniteLogitsException(int nonFinite, int vocab, int origin)
        : base($"The model produced non-finite logits ({nonFinite} of {vocab} are NaN or infinite); they first appeared {ModelHealthCollector.DescribeOrigin(origin)}. " +
            "The weights or the input are corrupt: check the model file (bitnet inspect) and the weight checksums.")
    {
        NonFinite = nonFinite;
        Origin = origin;
    }

    /// <summary>Logits found non-finite where they are used (an evaluation's score), said in <paramref name="message"/>.</summary>
    public NonFiniteLogitsException(string message) : base(message)
    {
        Origin = ModelHealthCollector.Finite;
    }

    public int NonFinite { get; }

    /// <summary><see cref="ModelHealthCollector.Finite"/> (output norm or head, or not traced: an evaluation's score), <see cref="ModelHealthCollector.Embedding"/>, or a layer index.</summary>
    public int Origin { get; }

    /// <summary>The layer, or null when the values came from the embedding or the head.</summary>
    public int? Layer => Origin >= 0 ? Origin : null;
}
