using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Formats.HuggingFace;
using BitNetSharp.Formats.Safetensors;
using BitNetSharp.Model;

namespace BitNetSharp.Tests.Formats;

/// <summary>What the reference readers (ggml's gguf.cpp, safetensors, transformers) accept or assume, and we did not.</summary>
public class LoaderConventionTests
{
    /// <summary>GGUF RoPE variants the engine does not run are refused by key; the converter's no-op (linear × 1) loads.</summary>
    [Theory]
    [InlineData("yarn", 4f, "bitnet-b1.58.rope.scaling.factor")]
    [InlineData(null, 2f, "bitnet-b1.58.rope.scaling.factor")]   // llama.cpp's default type is linear
    [InlineData("dynamic", 0f, "bitnet-b1.58.rope.scaling.type")]
    public void GgufRopeScalingIsRefusedByKey(string? type, float factor, string key)
    {
        var w = SyntheticModel.Build(SyntheticShape.Tiny, 1);
        if (type is not null) w.AddString("bitnet-b1.58.rope.scaling.type", type);
        if (factor != 0f) w.AddFloat32("bitnet-b1.58.rope.scaling.factor", factor);
        using var file = GgufFile.Parse(w.ToArray(), "scaled.gguf");
        var e = Assert.Throws<ModelFormatException>(() => ModelConfig.FromGguf(file));
        Assert.Equal(key, e.Item);
    }

    [Fact]
    public void GgufNoOpScalingLoadsAndPartialRotaryIsRefused()
    {
        var w = SyntheticModel.Build(SyntheticShape.Tiny, 1);
        w.AddString("bitnet-b1.58.rope.scaling.type", "linear").AddFloat32("bitnet-b1.58.rope.scaling.factor", 1f);
        using (var file = GgufFile.Parse(w.ToArray(), "noop.gguf"))
            Assert.Equal(SyntheticShape.Tiny.Dim / SyntheticShape.Tiny.Heads, ModelConfig.FromGguf(file).HeadDim);

        // rope.dimension_count below the head dimension (partial rotary): written by our own writer as the head dim.
        var bytes = SyntheticModel.Build(SyntheticShape.Tiny, 1).ToArray();
        using var original = GgufFile.Parse(bytes, "tiny.gguf");
        var copy = new GgufWriter();
        foreach (var (k, v) in original.Metadata.Entries)
            copy.Add(k, k.EndsWith(".rope.dimension_count", StringComparison.Ordinal) ? GgufValue.FromUInt32(16) : v);
        using var partial = GgufFile.Parse(copy.ToArray(), "partial.gguf");
        Assert.Equal("bitnet-b1.58.rope.dimension_count", Assert.Throws<ModelFormatException>(() => ModelConfig.FromGguf(partial)).Item);
    }

    /// <summary>
    /// Shapes the engine does not run are refused by name (sweep against a Python reference): a value_length other than
    /// the key heads' width loaded and ran with the key width; a bitnet-b1.58 file without sub-norms ran a graph
    /// without them (bitnet.cpp's loader requires them); the same file with them, and value_length equal to the head
    /// dimension, load.
    /// </summary>
    [Fact]
    public void GgufValueLengthAndMissingSubNormsAreRefusedByName()
    {
        int headDim = SyntheticShape.Tiny.Dim / SyntheticShape.Tiny.Heads;
        foreach (var (value, refused) in new[] { ((uint)headDim, false), ((uint)headDim / 2, true) })
        {
            var w = SyntheticModel.Build(SyntheticShape.Tiny, 1);
            w.AddUInt32("bitnet-b1.58.attention.value_length", value);
            using var file = GgufFile.Parse(w.ToArray(), "values.gguf");
            if (!refused) Assert.Equal(headDim, ModelConfig.FromGguf(file).HeadDim);
            else Assert.Equal("bitnet-b1.58.attention.value_length", Assert.Throws<ModelFormatException>(() => ModelConfig.FromGguf(file)).Item);
        }

        using var plain = GgufFile.Parse(SyntheticModel.Build(SyntheticShape.Tiny, 1, subNorms: false).ToArray(), "plain.gguf");
        var e = Assert.Throws<ModelFormatException>(() => ModelConfig.FromGguf(plain));
        Assert.Equal("blk.0.attn_sub_norm.weight", e.Item);
        Assert.Contains("'bitnet-b1.58'", e.Message);
        using var bitnet = GgufFile.Parse(SyntheticModel.Build(SyntheticShape.Tiny, 1, subNorms: false, architecture: "bitnet").ToArray(), "bitnet.gguf");
        Assert.False(ModelConfig.FromGguf(bitnet).HasSubNorms);
    }

    /// <summary>transformers' partial_rotary_factor (top level or in rope_parameters) other than 1 is refused by key; it loaded and rotated whole heads.</summary>
    [Theory]
    [InlineData(""","partial_rotary_factor":0.5""", "partial_rotary_factor")]
    [InlineData(""","rope_parameters":{"rope_theta":10000.0,"rope_type":"default","partial_rotary_factor":0.25}""", "rope_parameters.partial_rotary_factor")]
    [InlineData(""","partial_rotary_factor":1.0""", null)]
    public void HfPartialRotaryIsRefusedByKey(string extra, string? key)
    {
        var config = HfConfig.Parse(System.Text.Encoding.UTF8.GetBytes("""{"architectures":["BitNetForCausalLM"],"hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":32""" + extra + "}"), "config.json");
        if (key is null) Assert.Equal(16, ModelConfig.FromHf(config).HeadDim);
        else Assert.Equal(key, Assert.Throws<ModelFormatException>(() => ModelConfig.FromHf(config)).Item);
    }

    /// <summary>A 0-d tensor (gguf-py writes n_dims = len(shape), so a scalar has none) is one element, as ggml reads it.</summary>
    [Fact]
    public void GgufScalarTensorOpens()
    {
        var bytes = new RawBytes().GgufHeader(3, 1, 0).TensorInfo("s", 0, 0).PadTo(32).Bytes(BitConverter.GetBytes(2f)).ToArray();
        using var f = GgufFile.Parse(bytes, "scalar.gguf");
        Assert.Equal(1, f.GetTensor("s").ElementCount);
        Assert.Equal(2f, BitConverter.ToSingle(f.GetTensorData("s")));
    }

    /// <summary>safetensors' "__metadata__": null is no metadata (the reference parser's field is optional).</summary>
    [Fact]
    public void SafetensorsNullMetadataIsNone()
    {
        using var f = SafetensorsFile.Parse(TestSafetensors.Assemble("""{"__metadata__":null,"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}""", new byte[1]), "null-meta.safetensors");
        Assert.Empty(f.Metadata);
        Assert.Equal(1, f.GetTensor("a").ElementCount);
    }

    /// <summary>transformers' LlamaConfig (and 1bitLLM's BitnetConfig) default rms_norm_eps is 1e-6; BitNetConfig's is 1e-5.</summary>
    [Theory]
    [InlineData("""{"architectures":["LlamaForCausalLM"],"quantization_config":{"quant_method":"bitnet"},"hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":32}""", 1e-6f)]
    [InlineData("""{"architectures":["BitNetForCausalLM"],"hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":32}""", 1e-5f)]
    public void HfRmsEpsDefaultsFollowTransformers(string json, float eps)
    {
        var config = HfConfig.Parse(System.Text.Encoding.UTF8.GetBytes(json), "config.json");
        Assert.Equal(eps, ModelConfig.FromHf(config).RmsEps);
    }

    /// <summary>An rms_norm_eps float32 cannot hold is named as written (it read "RMS norm epsilon 0 must be positive").</summary>
    [Fact]
    public void HfRmsEpsBelowFloat32IsNamedAsWritten()
    {
        var config = HfConfig.Parse(System.Text.Encoding.UTF8.GetBytes("""{"architectures":["BitNetForCausalLM"],"hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":32,"rms_norm_eps":1e-50}"""), "config.json");
        var e = Assert.Throws<ModelFormatException>(() => ModelConfig.FromHf(config));
        Assert.Equal("rms_norm_eps", e.Item);
        Assert.Contains("1E-50 is below float32's smallest value", e.Message);
    }

    /// <summary>
    /// A plain F16 Llama (arch "llama" with full-precision projections) is refused naming the first projection: it
    /// loaded, its weights ternarized by absmean, and generated noise. Ternary llama-arch files hold I2_S or ±a values.
    /// </summary>
    [Fact]
    public void APlainLlamaIsRefusedNotTernarized()
    {
        var path = SharedData.RequirePath("models/llama-2-tiny-random.gguf");
        var e = Assert.Throws<ModelFormatException>(() => ModelWeights.Load(path).Dispose());
        Assert.Equal("blk.0.attn_q.weight", e.Item);
        Assert.Contains("not ternary", e.Message);
    }
}
