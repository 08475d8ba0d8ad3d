using BitNetSharp.Formats.Gguf;

namespace BitNetSharp.Model;

/// <summary>What <see cref="ModelWeights.Load(string, ModelLoadOptions?)"/> may change about a model as it loads it.</summary>
public sealed record ModelLoadOptions
{
    /// <summary>
    /// Positions the model runs to (0: the file's context length). Larger than the file's extends it: RoPE is a fixed
    /// function of the position, so positions past the trained context are computed the same way (as llama.cpp's
    /// <c>-c</c> beyond <c>n_ctx_train</c>), only without the training's guarantee of quality there.
    /// </summary>
    public int ContextLength { get; init; }

    /// <summary>
    /// Re-encode the output head into this type as the model loads (F16, Q8_0 or Q6_K, by
    /// <see cref="Quantization.EmbeddingEncoder"/>: the bytes <c>bitnet convert --embedding-type</c> would write), or
    /// null to use it as stored; a head already of this type is used as stored. A tied token embedding is the same
    /// table, so it is re-encoded with it (as in a converted file); an untied embedding stays as stored. The file's
    /// pages of the replaced table are dropped from this process's memory (Linux), so the process holds the new encoding
    /// only. A Q6_K head streams 3.1× and a Q8_0 head 1.9× fewer bytes per token than F16.
    /// </summary>
    public GgmlType? HeadType { get; init; }

    /// <summary>The file's own config with these options applied.</summary>
    internal ModelConfig Apply(ModelConfig c)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(ContextLength);
        return ContextLength > 0 && ContextLength != c.ContextLength ? c with { ContextLength = ContextLength } : c;
    }
}
