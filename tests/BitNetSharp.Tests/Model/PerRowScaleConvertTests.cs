using BitNetSharp.Formats.Gguf;
using BitNetSharp.Model;
using BitNetSharp.Tests.Formats;

namespace BitNetSharp.Tests.Model;

/// <summary>
/// A projection with one scale per output row (as TQ2_0/TQ1_0 files may carry: each 256-block has its own fp16 d)
/// survives convert to every type that can hold it: TQ2_0/TQ1_0 keep one d per block, F16 writes ±β_r. Convert
/// refused TQ2_0 and TQ1_0, and F16 was re-ternarized on reload by absmean with one scale for the whole tensor.
/// </summary>
public class PerRowScaleConvertTests
{
    private static readonly SyntheticShape Shape = SyntheticShape.Tiny with { Name = "tiny256", Dim = 256, FeedForward = 512 };

    [Theory]
    [InlineData(PackedWeightType.TQ2_0)]
    [InlineData(PackedWeightType.TQ1_0)]
    [InlineData(PackedWeightType.F16)]
    public void PerRowScalesRoundTrip(PackedWeightType type)
    {
        using var dir = new TestGguf.TempDirectory();
        string tq2 = dir.File("tq2.gguf"), converted = dir.File("converted.gguf");
        using (var source = ModelWeights.Load(WriteSynthetic(dir)))
            ModelConverter.ToGguf(source, PackedWeightType.TQ2_0).WriteFile(tq2);

        using var perRow = ModelWeights.Load(tq2);
        var q = perRow.Layers[0].Q;
        for (int r = 0; r < q.Rows; r++) q.RowScales[r] *= (r % 3) switch { 0 => 1f, 1 => 2f, _ => 0.5f };
        ModelConverter.ToGguf(perRow, type).WriteFile(converted);

        using var back = ModelWeights.Load(converted);
        var q2 = back.Layers[0].Q;
        Assert.Equal(q.RowScales, q2.RowScales);
        for (int r = 0; r < q.Rows; r++)
        for (int c = 0; c < q.Cols; c++)
            Assert.Equal(q.Get(r, c), q2.Get(r, c));
        int[] tokens = [1, 7, 42, 3, 200];
        Assert.Equal(HeadTypeOnLoadTests.Logits(perRow, tokens), HeadTypeOnLoadTests.Logits(back, tokens));
    }

    /// <summary>
    /// TQ2_0/TQ1_0 block scales may be negative (weight = code × d): such rows convert to I2_S as the magnitude with
    /// negated codes, the same logits (the scale was written negative and the converted file refused by the loader).
    /// </summary>
    [Theory]
    [InlineData(PackedWeightType.I2_S)]
    [InlineData(PackedWeightType.TQ1_0)]
    public void NegativeRowScalesConvertToTheSameWeights(PackedWeightType type)
    {
        using var dir = new TestGguf.TempDirectory();
        string tq2 = dir.File("tq2.gguf"), converted = dir.File("converted.gguf");
        using (var source = ModelWeights.Load(WriteSynthetic(dir)))
            ModelConverter.ToGguf(source, PackedWeightType.TQ2_0).WriteFile(tq2);
        using var negative = ModelWeights.Load(tq2);
        var up = negative.Layers[1].Up;
        for (int r = 0; r < up.Rows; r += 2) up.RowScales[r] = -up.RowScales[r];
        ModelConverter.ToGguf(negative, type).WriteFile(converted);

        using var back = ModelWeights.Load(converted);
        var up2 = back.Layers[1].Up;
        for (int r = 0; r < up.Rows; r++)
        for (int c = 0; c < up.Cols; c += 7)
            Assert.Equal(up.Get(r, c) * up.RowScales[r], up2.Get(r, c) * up2.RowScales[r]);
        int[] tokens = [1, 7, 42, 3, 200];
        var expected = HeadTypeOnLoadTests.Logits(negative, tokens);
        var actual = HeadTypeOnLoadTests.Logits(back, tokens);
        for (int i = 0; i < expected.Length; i++) Assert.Equal(expected[i], actual[i], 1e-4f);
    }

    /// <summary>
    /// A scale under fp16's normal range (6.1e-5) is stored as a subnormal with fewer bits (1e-6 moves by 1.3 %, where
    /// the README promises 2^-11): convert says so, naming the tensor and the error, for the fp16-scale types only.
    /// </summary>
    [Fact]
    public void ScalesStoredAsFp16SubnormalsAreSaid()
    {
        using var dir = new TestGguf.TempDirectory();
        using var w = ModelWeights.Load(WriteSynthetic(dir));
        Assert.DoesNotContain(ModelConverter.CompatibilityWarnings(w, PackedWeightType.TQ2_0), m => m.Contains("normal range"));
        var up = w.Layers[1].Up;
        for (int r = 0; r < up.Rows; r++) up.RowScales[r] = 1e-6f;
        foreach (var type in new[] { PackedWeightType.TQ2_0, PackedWeightType.TQ1_0, PackedWeightType.F16 })
        {
            var warning = Assert.Single(ModelConverter.CompatibilityWarnings(w, type), m => m.Contains("normal range"));
            Assert.StartsWith("blk.1.ffn_up.weight: scale 1E-06 (row 0) is below fp16's normal range (6.1e-5)", warning);
            Assert.Contains("off by 1.33 %", warning);
        }
        Assert.DoesNotContain(ModelConverter.CompatibilityWarnings(w, PackedWeightType.I2_S), m => m.Contains("normal range"));
    }

    [Fact]
    public void I2SStillRefusesPerRowScalesNamingTheTensor()
    {
        using var dir = new TestGguf.TempDirectory();
        using var w = ModelWeights.Load(WriteSynthetic(dir));
        var k = w.Layers[1].K;
        var scales = k.RowScales;
        if (scales.Length > 1) scales[1] = scales[0] * 2f;
        var e = Assert.Throws<ArgumentException>(() => ModelConverter.CheckShapes(w, PackedWeightType.I2_S));
        Assert.Contains("blk.1.attn_k.weight", e.Message);
    }

    /// <summary>A row scale fp16 cannot hold is refused naming the tensor, not only "Row 3".</summary>
    /// <summary>... for F16 too (±β as halves: it wrote ±Inf without a word), and the advice names the type that can hold it.</summary>
    /// <summary>... and a nonzero scale fp16 rounds to 0 (TQ2_0 and TQ1_0 wrote 0: the row reloaded as zeros, silently).</summary>
    [Theory]
    [InlineData(PackedWeightType.TQ2_0, 1e9f)]
    [InlineData(PackedWeightType.F16, 1e9f)]
    [InlineData(PackedWeightType.TQ2_0, 1e-8f)]
    [InlineData(PackedWeightType.TQ1_0, 1e-8f)]
    [InlineData(PackedWeightType.F16, 1e-8f)]
    public void ScaleFp16CannotHoldNamesTheTensor(PackedWeightType type, float scale)
    {
        using var dir = new TestGguf.TempDirectory();
        using var w = ModelWeights.Load(WriteSynthetic(dir));
        w.Layers[1].Up.RowScales[3] = scale;
        var e = Assert.Throws<ArgumentException>(() => ModelConverter.ToGguf(w, type));
        Assert.Contains("blk.1.ffn_up.weight", e.Message);
        Assert.Contains("fp16", e.Message);
        Assert.Contains("--type i2_s keeps an fp32 scale", e.Message);
    }

    /// <summary>An all-zero projection is exactly ternary: a llama-arch F16 file with one loads (it was refused as full precision).</summary>
    [Fact]
    public void AnAllZeroFloatProjectionLoadsAsTernary()
    {
        var shape = SyntheticShape.Tiny;
        var source = GgufFile.Parse(SyntheticModel.Build(shape, 21, GgmlType.F32, subNorms: false, architecture: "bitnet").ToArray(), "bitnet.gguf");
        var llama = new GgufWriter();
        foreach (var (key, value) in source.Metadata.Entries)
            llama.Add(key == "general.architecture" ? key : key.StartsWith("bitnet.", StringComparison.Ordinal) ? "llama." + key["bitnet.".Length..] : key,
                key == "general.architecture" ? GgufValue.FromString("llama") : value);
        foreach (var t in source.Tensors)
        {
            if (t.Name == "blk.0.attn_v.weight") llama.AddTensor(t.Name, GgmlType.F16, t.Dims.ToArray(), new byte[t.ElementCount * 2]);
            else llama.AddTensor(t.Name, t.Type, t.Dims.ToArray(), source.GetTensorData(t).ToArray());
        }
        source.Dispose();
        using var dir = new TestGguf.TempDirectory();
        string path = dir.File("zero.gguf");
        llama.WriteFile(path);
        using var w = ModelWeights.Load(path);
        var v = w.Layers[0].V;
        for (int r = 0; r < v.Rows; r++)
        for (int c = 0; c < v.Cols; c++)
            Assert.Equal(0, v.Get(r, c));
    }

    /// <summary>Converting keeps the model card's general.* keys (license, tags, source URL were dropped) and writes its own where the file is new.</summary>
    [Fact]
    public void ConvertKeepsTheModelCardKeys()
    {
        using var dir = new TestGguf.TempDirectory();
        string path = dir.File("card.gguf");
        SyntheticModel.Build(Shape, 5).AddString("general.license", "mit").AddString("general.source.url", "https://example.org/m")
            .AddArray("general.tags", new[] { "bitnet", "ternary" }).WriteFile(path);
        using var w = ModelWeights.Load(path);
        using var converted = GgufFile.Parse(ModelConverter.ToGguf(w, PackedWeightType.TQ2_0).ToArray(), "converted.gguf");
        var m = converted.Metadata;
        Assert.Equal("mit", m.GetString("general.license"));
        Assert.Equal("https://example.org/m", m.GetString("general.source.url"));
        Assert.Equal($"synthetic-{Shape.Name}", m.GetString("general.name"));
        Assert.Equal(GgufModelMetadata.FileTypeTq2_0, m.GetUInt32("general.file_type"));
        Assert.Equal(["bitnet", "ternary"], m.GetStringArray("general.tags"));
    }

    private static string WriteSynthetic(TestGguf.TempDirectory dir)
    {
        string path = dir.File("synthetic.gguf");
        SyntheticModel.Build(Shape, 5).WriteFile(path);
        return path;
    }

    /// <summary>
    /// Conversion holds one encoded tensor at a time: every tensor was encoded into memory before the write began (the
    /// whole output, 1.2 GB for 2B4T). Building the writer now encodes nothing; writing encodes each tensor as it goes.
    /// </summary>
    [Theory]
    [InlineData(PackedWeightType.I2_S)]
    [InlineData(PackedWeightType.TQ2_0)]
    public void ConversionEncodesEachTensorAsItIsWritten(PackedWeightType type)
    {
        using var dir = new TestGguf.TempDirectory();
        string source = dir.File("src.gguf");
        SyntheticModel.Build(new SyntheticShape("wide", 1024, 4, 8, 4, 3072, 300, 128), 5).WriteFile(source);
        using var w = ModelWeights.Load(source);
        int steps = 0;
        ModelConverter.ToGguf(w, type); // JIT and type loading allocate on first use; measured below is the second
        long before = GC.GetAllocatedBytesForCurrentThread();
        var writer = ModelConverter.ToGguf(w, type, (done, total) => steps = done);
        long building = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal(0, steps);
        string output = dir.File("out.gguf");
        writer.WriteFile(output);
        long size = new FileInfo(output).Length;
        Assert.True(building < size / 10, $"building the writer allocated {building:N0} bytes for a {size:N0}-byte file");
        Assert.Equal(2 + w.Config.Layers * 11, steps); // tied head: embedding, output norm, 11 per layer
        using var reloaded = ModelWeights.Load(output);
        Assert.Equal(w.Layers[3].Down.RowScales[0], reloaded.Layers[3].Down.RowScales[0], type == PackedWeightType.I2_S ? 0f : 1e-3f);
    }
}
