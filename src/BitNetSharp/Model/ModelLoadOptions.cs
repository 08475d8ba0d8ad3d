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

    /// <summary>The file's own config with these options applied.</summary>
    internal ModelConfig Apply(ModelConfig c)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(ContextLength);
        return ContextLength > 0 && ContextLength != c.ContextLength ? c with { ContextLength = ContextLength } : c;
    }
}
