using BitNetSharp.Cli;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Model;
using BitNetSharp.Quantization;
using BitNetSharp.Tests.Formats;
using BitNetSharp.Threading;

namespace BitNetSharp.Tests.Model;

/// <summary>`bitnet convert --embedding-type`: the token embedding / head re-encoded as F16, Q8_0 or Q6_K.</summary>
public class EmbeddingConversionTests
{
    private static string Fixture(string variant) => RepositoryFiles.Path(Path.Combine("tests", "fixtures", "hf-bitnet", variant));

    /// <summary>llama.cpp's Q8_0 rule on a hand-checked block: d = 127/127 = 1 → codes equal the (rounded) inputs.</summary>
    [Fact]
    public void Q8_0EncodesAsLlamaCppDoes()
    {
        var x = new float[32];
        for (int i = 0; i < 32; i++) x[i] = i - 16 + (i % 3 == 0 ? 0.5f : 0f);
        x[5] = 127f;
        var block = new byte[34];
        EmbeddingEncoder.EncodeQ8_0(x, block);
        Assert.Equal(HalfConversions.FloatToHalf(1f), BitConverter.ToUInt16(block, 0));
        for (int i = 0; i < 32; i++) Assert.Equal((sbyte)MathF.Round(x[i], MidpointRounding.AwayFromZero), (sbyte)block[2 + i]);

        var rng = new Random(3);
        var values = Enumerable.Range(0, 320).Select(_ => (float)(rng.NextDouble() * 6 - 3)).ToArray();
        var bytes = new byte[10 * 34];
        EmbeddingEncoder.EncodeQ8_0(values, bytes);
        for (int b = 0; b < 10; b++)
        {
            float d = HalfConversions.HalfToFloat(BitConverter.ToUInt16(bytes, b * 34));
            float amax = values.Skip(b * 32).Take(32).Max(MathF.Abs);
            for (int i = 0; i < 32; i++)
            {
                float decoded = d * (sbyte)bytes[b * 34 + 2 + i];
                // half a step of the unrounded scale, plus what rounding d to fp16 moves 127 steps by
                Assert.True(MathF.Abs(decoded - values[b * 32 + i]) <= amax / 127f * 0.5f + 127 * MathF.Abs(d - amax / 127f) + 1e-6f);
            }
        }
    }

    /// <summary>
    /// convert --type i2_s warns when a tensor's rows are not whole 128-weight blocks (the tiny shape's down projection,
    /// 320 wide): bitnet.cpp reads each I2_S row from a block's start and drops its tail, so such a file computes wrong
    /// outputs there. A shape of whole blocks converts without the warning.
    /// </summary>
    [Fact]
    public void I2SOfRowsThatAreNotWholeBlocksWarnsForBitnetCpp()
    {
        using var dir = new BitNetSharp.Tests.Formats.TestGguf.TempDirectory();
        string tiny = dir.File("tiny.gguf"), even = dir.File("even.gguf");
        SyntheticModel.Build(SyntheticShape.Tiny, 3).WriteFile(tiny);
        SyntheticModel.Build(SyntheticShape.Tiny with { FeedForward = 384 }, 3).WriteFile(even);
        var error = new StringWriter();
        Assert.True(Program.Run(["convert", tiny, dir.File("a.gguf"), "--type", "i2_s"], new StringWriter(), error) == 0, error.ToString());
        Assert.Contains("warning: blk.0.ffn_down.weight has rows of 320 weights", error.ToString());
        Assert.Contains("bitnet.cpp", error.ToString());
        error = new StringWriter();
        Assert.True(Program.Run(["convert", even, dir.File("b.gguf"), "--type", "i2_s"], new StringWriter(), error) == 0, error.ToString());
        Assert.DoesNotContain("warning", error.ToString());
    }

    /// <summary>
    /// The bundled model (trained, F32 embedding, tied head) converted with each embedding type: the GGUF holds that
    /// type, and its logits stay close to the original's. (A random fixture is no use here: its int8 activation codes
    /// flip under any 0.1 % input change and the logits move by 10 % of their range.)
    /// </summary>
    [Theory]
    [InlineData("f16", GgmlType.F16)]
    [InlineData("q8_0", GgmlType.Q8_0)]
    [InlineData("q6_k", GgmlType.Q6_K)]
    public void ConvertedEmbeddingHoldsTheTypeAndTheLogits(string option, GgmlType type)
    {
        string src = RepositoryFiles.Path("tests/fixtures/tinystories-4m/model.gguf");
        string path = Path.Combine(Path.GetTempPath(), $"bitnet-embd-{Environment.ProcessId}-{option}.gguf");
        try
        {
            var error = new StringWriter();
            Assert.True(Program.Run(["convert", src, path, "--embedding-type", option], new StringWriter(), error) == 0, error.ToString());
            using var converted = ModelWeights.Load(path);
            Assert.Equal(type, converted.TokenEmbedding.Type);
            using var original = ModelWeights.Load(src);
            int[] prompt = [1, 17, 64, 101, 500, 9, 42, 1000, 7, 300];
            var a = Logits(original, prompt);
            var b = Logits(converted, prompt);
            double range = a.Max() - a.Min(), worst = 0;
            for (int i = 0; i < a.Length; i++) worst = Math.Max(worst, Math.Abs(a[i] - b[i]) / range);
            // Measured: f16 6.0e-3, q8_0 1.5e-2, q6_k 2.5e-2 of the range (int8 activation codes amplify small input changes).
            Assert.True(worst < 0.05, $"{option}: max |Δlogit| / range = {worst:E2}");
            Assert.True(worst > 0, "the converted embedding changed nothing: the re-encoding did not happen");
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>
    /// What matters to a user: perplexity on 100 KB of held-out TinyStories moves by less than 0.5 % (measured on
    /// 200 KB: q8_0 −0.006 %, q6_k +0.06 %; bitnet.cpp reports +0.23 % for a Q6_K 2B4T embedding on WikiText).
    /// </summary>
    [Theory]
    [InlineData("q8_0")]
    [InlineData("q6_k")]
    public void QuantizedEmbeddingKeepsPerplexity(string option)
    {
        string corpus = SharedData.RequirePath("corpora/tinystories_val_subset.txt");
        string src = RepositoryFiles.Path("tests/fixtures/tinystories-4m/model.gguf");
        string path = Path.Combine(Path.GetTempPath(), $"bitnet-embd-ppl-{Environment.ProcessId}-{option}.gguf");
        string text = Path.Combine(Path.GetTempPath(), $"bitnet-embd-ppl-{Environment.ProcessId}-{option}.txt");
        try
        {
            File.WriteAllText(text, File.ReadAllText(corpus)[..100_000]);
            Assert.Equal(0, Program.Run(["convert", src, path, "--embedding-type", option], new StringWriter(), new StringWriter()));
            double Ppl(string model)
            {
                var output = new StringWriter();
                var error = new StringWriter();
                Assert.True(Program.Run(["eval", "-m", model, "--data", text, "--json"], output, error) == 0, error.ToString());
                using var doc = System.Text.Json.JsonDocument.Parse(output.ToString());
                return doc.RootElement.GetProperty("perplexity").GetDouble();
            }
            double before = Ppl(src), after = Ppl(path);
            Assert.True(Math.Abs(after / before - 1) < 0.005, $"{option}: perplexity {before:F4} → {after:F4}");
        }
        finally
        {
            File.Delete(path);
            File.Delete(text);
        }
    }

    [Fact]
    public void RowsThatAreNotWholeBlocksAreRefusedBeforeWriting()
    {
        string path = Path.Combine(Path.GetTempPath(), $"bitnet-embd-{Environment.ProcessId}-bad.gguf");
        var error = new StringWriter();
        int code = Program.Run(["convert", Fixture("autobitlinear-online-gqa-f32"), path, "--embedding-type", "q6_k"], new StringWriter(), error);
        Assert.NotEqual(0, code);
        Assert.Contains("256", error.ToString());
        Assert.Contains("--embedding-type", error.ToString());
        Assert.False(File.Exists(path));
        error = new StringWriter();
        Assert.NotEqual(0, Program.Run(["convert", Fixture("autobitlinear-online-gqa-f32"), path, "--embedding-type", "q4_0"], new StringWriter(), error));
        Assert.Contains("keep, f32, f16, q8_0, q6_k", error.ToString());
        Assert.False(File.Exists(path));
        // An output that is a directory: a usage error naming it (before: "Is a directory : '/tmp'" or "Could not find a part of the path").
        foreach (var dir in new[] { Path.GetTempPath().TrimEnd('/'), Path.GetTempPath() })
        {
            error = new StringWriter();
            Assert.Equal(2, Program.Run(["convert", Fixture("autobitlinear-online-gqa-f32"), dir], new StringWriter(), error));
            Assert.Contains("is a directory; give a file path", error.ToString());
        }
    }

    /// <summary>
    /// --embedding-type f32 writes the table's values as decoded (calibrate --tune needs an F32 embedding, and a file
    /// with an F16 one had no way to get it): every value equals the F16 file's, and the logits to float rounding.
    /// </summary>
    [Fact]
    public void F32EmbeddingHoldsTheDecodedValuesExactly()
    {
        using var dir = new TestGguf.TempDirectory();
        string src = RepositoryFiles.Path("tests/fixtures/tinystories-4m/model.gguf"), f16 = dir.File("f16.gguf"), f32 = dir.File("f32.gguf");
        var error = new StringWriter();
        Assert.True(Program.Run(["convert", src, f16, "--embedding-type", "f16"], new StringWriter(), error) == 0, error.ToString());
        Assert.True(Program.Run(["convert", f16, f32, "--embedding-type", "f32"], new StringWriter(), error) == 0, error.ToString());
        using var half = ModelWeights.Load(f16);
        using var full = ModelWeights.Load(f32);
        Assert.Equal(GgmlType.F16, half.TokenEmbedding.Type);
        Assert.Equal(GgmlType.F32, full.TokenEmbedding.Type);
        var a = new float[half.Config.Dim];
        var b = new float[half.Config.Dim];
        for (int r = 0; r < half.TokenEmbedding.Rows; r++)
        {
            half.TokenEmbedding.GetRow(r, a);
            full.TokenEmbedding.GetRow(r, b);
            Assert.True(a.AsSpan().SequenceEqual(b), $"row {r}");
        }
        // The head's dot products are the F16 and F32 kernels', summing in their own orders: the same to float rounding.
        int[] prompt = [1, 17, 64, 101, 500, 9];
        float[] x = Logits(half, prompt), y = Logits(full, prompt);
        double range = x.Max() - x.Min(), worst = 0;
        for (int i = 0; i < x.Length; i++) worst = Math.Max(worst, Math.Abs(x[i] - y[i]) / range);
        Assert.True(worst < 1e-5, $"max |Δlogit| / range = {worst:E2}");
    }

    private static float[] Logits(ModelWeights w, int[] prompt)
    {
        var c = w.Config;
        using var pool = new WorkerPool(1);
        using var engine = new Transformer(w, prompt.Length, pool);
        using var cache = new KvCache(c.Layers, c.KvHeads, c.HeadDim, prompt.Length, KvCacheType.F32);
        var all = new float[prompt.Length * c.VocabSize];
        engine.Forward(prompt.Select((t, i) => new BatchToken(t, 0, i, true)).ToArray(), [cache], all);
        return all;
    }
}
