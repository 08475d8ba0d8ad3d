using BitNetSharp.Formats.Gguf;

namespace BitNetSharp.Tests.Formats;

/// <summary>The writer's output has to be what llama.cpp's own writer produces, byte for byte.</summary>
public class GgufWriterCompatibilityTests
{
    [Theory]
    [InlineData("models/llama-2-tiny-random.gguf")]
    [InlineData("llama.cpp-vocab/ggml-vocab-llama-spm.gguf")]
    [InlineData("llama.cpp-vocab/ggml-vocab-gpt-2.gguf")]
    public void RewritingARealFileReproducesItExactly(string relative)
    {
        var path = SharedData.RequirePath(relative);
        var original = File.ReadAllBytes(path);
        using var f = GgufFile.Parse(original, path);
        var w = new GgufWriter(f.Alignment);
        foreach (var (key, value) in f.Metadata.Entries)
            if (key != GgufFile.AlignmentKey) w.Add(key, value);
        foreach (var t in f.Tensors) w.AddTensor(t.Name, t.Type, t.Dims, f.GetTensorData(t).ToArray());
        var rewritten = w.ToArray();
        Assert.Equal(original.Length, rewritten.Length);
        Assert.True(original.AsSpan().SequenceEqual(rewritten), "the rewritten file differs from llama.cpp's");
    }
}
