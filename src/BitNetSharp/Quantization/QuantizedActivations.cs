using BitNetSharp.Memory;

namespace BitNetSharp.Quantization;

/// <summary>
/// Int8 activations of T tokens, quantized per token (FORMATS.md §2.6/§4.4), the kernels' input.
/// Row t holds <see cref="PaddedCols"/> int8 codes (zeros past <see cref="Cols"/>), its scale s_x = 127/γ and
/// the exact sum of its codes (so Σ t·q = Σ c·q − Σ q). Allocated once for a maximum token count and reused.
/// </summary>
public sealed unsafe class QuantizedActivations : IDisposable
{
    private readonly NativeBuffer _codes;

    public QuantizedActivations(int maxTokens, int cols)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxTokens);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(cols);
        MaxTokens = maxTokens;
        Cols = cols;
        PaddedCols = TernaryMatrix.PadCols(cols);
        _codes = new NativeBuffer((long)maxTokens * PaddedCols);
        Scales = new float[maxTokens];
        Sums = new int[maxTokens];
        Tokens = maxTokens;
    }

    public int MaxTokens { get; }
    public int Cols { get; }
    public int PaddedCols { get; }

    /// <summary>Tokens currently held, 0 to <see cref="MaxTokens"/> (more read past the codes' native buffer).</summary>
    public int Tokens
    {
        get;
        set
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value);
            ArgumentOutOfRangeException.ThrowIfGreaterThan(value, MaxTokens);
            field = value;
        }
    }

    /// <summary>s_x = (float)(127/γ) per token; q = round(x·127/γ) of the exact quotient (see <see cref="Kernels.Int8ActivationQuantizer"/>).</summary>
    public float[] Scales { get; }

    /// <summary>Σ q per token.</summary>
    public int[] Sums { get; }

    public sbyte* Row(int token) => (sbyte*)_codes.Pointer + (long)token * PaddedCols;

    public Span<sbyte> RowSpan(int token) => new(Row(token), PaddedCols);

    public void Dispose() => _codes.Dispose();
}
