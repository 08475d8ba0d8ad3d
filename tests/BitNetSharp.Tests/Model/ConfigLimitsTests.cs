using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Model;

namespace BitNetSharp.Tests.Model;

/// <summary>Sizes the engine multiplies in int are checked when a model loads, not discovered at its first token.</summary>
public class ConfigLimitsTests
{
    /// <summary>
    /// 256 query heads per KV head over 2^24 positions: the group's score buffer (256 × 2^24 = 2^32) wrapped to an
    /// empty array, its size check wrapped negative, and the first forward wrote through a null pointer.
    /// </summary>
    [Fact]
    public void AttentionBuffersPastOneArrayAreRefusedAtLoad()
    {
        var shape = new SyntheticShape("wrap", 512, 1, 256, 1, 256, 32, ModelConfig.MaxContextLength);
        var bytes = SyntheticModel.Build(shape, 1, GgmlType.F32).ToArray();
        var e = Assert.Throws<ModelFormatException>(() => ModelWeights.FromGguf(GgufFile.Parse(bytes, "wrap.gguf"), ownsFile: true).Dispose());
        Assert.Contains("wrap.gguf", e.Message);
        Assert.Contains("--ctx", e.Message);
        // The same model at a context the buffers hold loads.
        using var ok = ModelWeights.FromGguf(GgufFile.Parse(bytes, "wrap.gguf"), ownsFile: true, new ModelLoadOptions { ContextLength = 4096 });
        Assert.Equal(4096, ok.Config.ContextLength);
    }

    /// <summary>A context set at load is held to the file's own limit (it bypassed it, then ran out of memory building the RoPE table).</summary>
    [Fact]
    public void ALoadTimeContextIsValidatedLikeTheFiles()
    {
        var bytes = SyntheticModel.Build(SyntheticShape.Tiny, 1).ToArray();
        var e = Assert.Throws<ModelFormatException>(() => ModelWeights.FromGguf(GgufFile.Parse(bytes, "tiny.gguf"), ownsFile: true,
            new ModelLoadOptions { ContextLength = ModelConfig.MaxContextLength + 1 }).Dispose());
        Assert.Contains("context length", e.Message);
    }

    /// <summary>A block count whose ×4 wraps to the array's length (0) passed the activation-width check, then indexed past it.</summary>
    [Fact]
    public void ActivationWidthCountIsCheckedWithoutWrapping()
    {
        var w = new GgufWriter().AddString("general.architecture", "bitnet-b1.58").AddUInt32("bitnet-b1.58.block_count", 1u << 30);
        w.AddArray(ActivationBits.GgufKey, Array.Empty<byte>());
        using var f = GgufFile.Parse(w.ToArray(), "x.gguf");
        var e = Assert.Throws<ModelFormatException>(() => ActivationBits.FromGguf(f, 1 << 30));
        Assert.Contains("4294967296", e.Message);
    }
}
