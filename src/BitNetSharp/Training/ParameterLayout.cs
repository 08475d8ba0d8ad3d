namespace BitNetSharp.Training;

/// <summary>
/// One named tensor inside the flat parameter array (llm.c style: parameters, gradients and both Adam moments are
/// four arrays of the same length, carved by the same offsets). Names are the GGUF tensor names (FORMATS.md §3.1).
/// </summary>
/// <param name="Rows">Output features (or vocabulary rows); 1 for a vector.</param>
/// <param name="Cols">Input features (the contiguous dimension).</param>
/// <param name="IsProjection">One of the seven ternary BitLinear weights per layer.</param>
/// <param name="Layer">The block it belongs to, or −1.</param>
public readonly record struct ParameterTensor(string Name, int Offset, int Rows, int Cols, bool IsProjection, int Layer)
{
    public int Length => Rows * Cols;
    public bool IsMatrix => Rows > 1;
    public int End => Offset + Length;
}

/// <summary>Offsets of one block's tensors in the flat parameter array.</summary>
public sealed class LayerOffsets
{
    public int AttnNorm;     // (dim)
    public int Q;            // (qDim, dim)
    public int K;            // (kvDim, dim)
    public int V;            // (kvDim, dim)
    public int AttnSubNorm;  // (qDim)
    public int O;            // (dim, qDim)
    public int FfnNorm;      // (dim)
    public int Gate;         // (ff, dim)
    public int Up;           // (ff, dim)
    public int FfnSubNorm;   // (ff)
    public int Down;         // (dim, ff)
}

/// <summary>Where every tensor of a <see cref="TrainingShape"/> lives in the flat arrays, in GGUF order.</summary>
public sealed class ParameterLayout
{
    private readonly List<ParameterTensor> _tensors = [];

    public ParameterLayout(TrainingShape shape)
    {
        shape.Validate();
        Shape = shape;
        int d = shape.Dim, q = shape.QDim, kv = shape.KvDim, ff = shape.FeedForward;
        Embedding = Add("token_embd.weight", shape.VocabSize, d, false, -1);
        OutputNorm = Add("output_norm.weight", 1, d, false, -1);
        Layers = new LayerOffsets[shape.Layers];
        for (int l = 0; l < shape.Layers; l++)
        {
            string p = $"blk.{l}.";
            Layers[l] = new LayerOffsets
            {
                AttnNorm = Add(p + "attn_norm.weight", 1, d, false, l),
                Q = Add(p + "attn_q.weight", q, d, true, l),
                K = Add(p + "attn_k.weight", kv, d, true, l),
                V = Add(p + "attn_v.weight", kv, d, true, l),
                AttnSubNorm = Add(p + "attn_sub_norm.weight", 1, q, false, l),
                O = Add(p + "attn_output.weight", d, q, true, l),
                FfnNorm = Add(p + "ffn_norm.weight", 1, d, false, l),
                Gate = Add(p + "ffn_gate.weight", ff, d, true, l),
                Up = Add(p + "ffn_up.weight", ff, d, true, l),
                FfnSubNorm = Add(p + "ffn_sub_norm.weight", 1, ff, false, l),
                Down = Add(p + "ffn_down.weight", d, ff, true, l),
            };
        }
    }

    public TrainingShape Shape { get; }
    public int Embedding { get; }     // (vocab, dim), also the output head
    public int OutputNorm { get; }    // (dim)
    public LayerOffsets[] Layers { get; }
    public IReadOnlyList<ParameterTensor> Tensors => _tensors;
    public int Count { get; private set; }

    public ParameterTensor this[string name] => _tensors.Find(t => t.Name == name) is { Name: not null } t ? t
        : throw new KeyNotFoundException($"No parameter tensor named '{name}'.");

    private int Add(string name, int rows, int cols, bool projection, int layer)
    {
        long end = (long)Count + (long)rows * cols;
        if (end > Array.MaxLength)
            throw new ArgumentException($"The model has more than {Array.MaxLength} parameters, more than this trainer holds in one array; choose a smaller shape.");
        int offset = Count;
        _tensors.Add(new ParameterTensor(name, offset, rows, cols, projection, layer));
        Count = (int)end;
        return offset;
    }
}
