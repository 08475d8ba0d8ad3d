using BitNetSharp.Formats.Gguf;

namespace BitNetSharp.Model;

/// <summary>
/// The one place that writes a BitNet model's GGUF header keys (FORMATS.md §1.4, §3.4): general.* and the
/// architecture-prefixed hyper-parameters, in the order bitnet.cpp's converter writes them. Used by the converter,
/// the trainer's exporter and the synthetic-model builder, so the files they write cannot drift apart.
/// </summary>
public static class GgufModelMetadata
{
    /// <summary>Mostly-I2_S, as bitnet.cpp's fork numbers it.</summary>
    public const uint FileTypeI2S = 40;
    public const uint FileTypeTq2_0 = 37;
    public const uint FileTypeTq1_0 = 36;
    public const uint FileTypeF16 = 1;

    /// <param name="headDim">Written as key/value length only when it differs from dim/heads.</param>
    /// <param name="activation">Written as {arch}.hidden_activation (read by upstream's bitnet arch); null to omit.</param>
    public static void Write(GgufWriter w, string architecture, string? name, uint fileType, int vocabSize, int contextLength,
        int dim, int layers, int feedForward, int heads, int kvHeads, int headDim, float rmsEps, float ropeTheta, string? activation = null)
    {
        string a = architecture;
        w.AddString("general.architecture", a);
        if (name is not null) w.AddString("general.name", name);
        w.AddUInt32("general.file_type", fileType);
        w.AddUInt32("general.quantization_version", 2);
        w.AddUInt32(a + ".vocab_size", (uint)vocabSize);
        w.AddUInt32(a + ".context_length", (uint)contextLength);
        w.AddUInt32(a + ".embedding_length", (uint)dim);
        w.AddUInt32(a + ".block_count", (uint)layers);
        w.AddUInt32(a + ".feed_forward_length", (uint)feedForward);
        w.AddUInt32(a + ".rope.dimension_count", (uint)headDim);
        w.AddUInt32(a + ".attention.head_count", (uint)heads);
        w.AddUInt32(a + ".attention.head_count_kv", (uint)kvHeads);
        if (headDim != dim / heads)
        {
            w.AddUInt32(a + ".attention.key_length", (uint)headDim);
            w.AddUInt32(a + ".attention.value_length", (uint)headDim);
        }
        w.AddFloat32(a + ".attention.layer_norm_rms_epsilon", rmsEps);
        w.AddFloat32(a + ".rope.freq_base", ropeTheta);
        if (activation is not null) w.AddString(a + ".hidden_activation", activation);
    }

    public static void Write(GgufWriter w, ModelConfig c, string architecture, string? name, uint fileType, string? activation = null) =>
        Write(w, architecture, name, fileType, c.VocabSize, c.ContextLength, c.Dim, c.Layers, c.FeedForward, c.Heads, c.KvHeads, c.HeadDim,
            c.RmsEps, c.RopeTheta, activation);
}
