using System.Text.Json;
using BitNetSharp.Cli;
using BitNetSharp.Cli.Commands;
using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Model;
using BitNetSharp.Tests.Formats;
using BitNetSharp.Threading;

namespace BitNetSharp.Tests.Model;

/// <summary><see cref="ModelLoadOptions.HeadType"/> (<c>--head-type</c>): the head re-encoded as the model loads.</summary>
public class HeadTypeOnLoadTests
{
    private static readonly SyntheticShape Shape = SyntheticShape.Tiny with { Name = "tiny256", Dim = 256 };

    private static string BundledModel => RepositoryFiles.Path("tests/fixtures/tinystories-4m/model.gguf");

    internal static unsafe float[] Logits(ModelWeights w, int[] tokens)
    {
        using var pool = new WorkerPool(1);
        using var engine = new Transformer(w, tokens.Length, pool);
        using var cache = new KvCache(w.Config.Layers, w.Config.KvHeads, w.Config.HeadDim, tokens.Length);
        var logits = new float[tokens.Length * w.Config.VocabSize];
        engine.Forward(tokens.Select((t, i) => new BatchToken(t, 0, i, true)).ToArray(), [cache], logits);
        return logits;
    }

    [Theory]
    [InlineData("q8_0")]
    [InlineData("q6_k")]
    public void ReencodedHeadEqualsWhatConvertWrites(string name)
    {
        var type = ModelOptions.ParseHeadType(name)!.Value;
        using var dir = new TestGguf.TempDirectory();
        string f16 = dir.File("f16.gguf"), converted = dir.File("converted.gguf");
        SyntheticModel.Build(Shape, 3).WriteFile(f16);
        using (var stored = ModelWeights.Load(f16))
            ModelConverter.ToGguf(stored, PackedWeightType.I2_S, embeddingType: type).WriteFile(converted);

        using var onLoad = ModelWeights.Load(f16, new ModelLoadOptions { HeadType = type });
        using var file = ModelWeights.Load(converted);
        Assert.Equal(type, onLoad.Output.Type);
        Assert.Same(onLoad.Output, onLoad.TokenEmbedding); // tied: one table, as in the converted file
        Assert.True(onLoad.Output.Bytes.Span.SequenceEqual(file.Output.Bytes.Span));
        int[] tokens = [1, 7, 42, 3, 200];
        Assert.Equal(Logits(file, tokens), Logits(onLoad, tokens));
    }

    [Fact]
    public void SameTypeIsAsStoredAndOtherTypesWiden()
    {
        using var dir = new TestGguf.TempDirectory();
        string f16 = dir.File("f16.gguf");
        SyntheticModel.Build(Shape, 3).WriteFile(f16);
        using var asStored = ModelWeights.Load(f16, new ModelLoadOptions { HeadType = GgmlType.F16 });
        Assert.IsType<GgufFile>(asStored.Output.Owner); // still the file's bytes, in place

        using var bundled = ModelWeights.Load(BundledModel); // an F32 head
        using var widened = ModelWeights.Load(BundledModel, new ModelLoadOptions { HeadType = GgmlType.F16 });
        Assert.Equal(GgmlType.F32, bundled.Output.Type);
        Assert.Equal(GgmlType.F16, widened.Output.Type);
        Assert.Equal(bundled.Output.ByteLength / 2, widened.Output.ByteLength);
        Assert.True(widened.Output.Bytes.Span.SequenceEqual(BitNetSharp.Quantization.EmbeddingEncoder.Encode(bundled.Output, GgmlType.F16)));
    }

    [Fact]
    public void AHeadTheTypeCannotHoldIsAnErrorNamingTheBlocks()
    {
        using var dir = new TestGguf.TempDirectory();
        string tiny = dir.File("tiny.gguf");
        SyntheticModel.Build(SyntheticShape.Tiny, 3).WriteFile(tiny); // dim 128: not whole Q6_K blocks
        var e = Assert.Throws<UnsuitableSettingException>(() => ModelWeights.Load(tiny, new ModelLoadOptions { HeadType = GgmlType.Q6_K }));
        Assert.Contains("blocks of 256", e.Message);
    }

    private static (int Code, string Output, string Error) Cli(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Program.Run(args, output, error);
        return (code, output.ToString(), error.ToString());
    }

    [Fact]
    public void GenerateAndEvalTakeHeadType()
    {
        using var dir = new TestGguf.TempDirectory();
        var (code, output, error) = Cli("generate", "-m", BundledModel, "-p", "Once upon a time", "-n", "4", "--temp", "0", "--head-type", "q6_k");
        Assert.True(code == 0, error);
        Assert.NotEmpty(output);
        (code, _, error) = Cli("generate", "-m", BundledModel, "-p", "Once", "-n", "1", "--head-type", "q4");
        Assert.Equal(2, code);
        Assert.Contains("--head-type 'q4'", error);
        // q6_k on rows that are not whole 256-value blocks (the bundled model's 384): the way out is named.
        // A usage error (exit 2): the file is sound, the setting does not fit it (it exited 1, a bad file's code).
        (code, _, error) = Cli("generate", "-m", RepositoryFiles.Path("models/bitnet-tinystories.gguf"), "-p", "Once", "-n", "1", "--head-type", "q6_k");
        Assert.Equal(2, code);
        Assert.Contains("cannot be re-encoded as Q6_K", error);
        Assert.Contains("--head-type f16", error);
        // serve too (it exited 1, "the model could not be loaded").
        (code, _, error) = Cli("serve", "-m", RepositoryFiles.Path("models/bitnet-tinystories.gguf"), "--port", "0", "--head-type", "q6_k");
        Assert.Equal(2, code);
        Assert.Contains("cannot be re-encoded as Q6_K", error);

        string data = dir.File("story.txt");
        File.WriteAllText(data, string.Concat(Enumerable.Repeat(
            "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun with her dog. ", 12)));
        (code, output, error) = Cli("eval", "-m", BundledModel, "--data", data, "--ctx", "64", "--head-type", "q8_0", "--kl-reference", BundledModel, "--json", "-t", "1");
        Assert.True(code == 0, error);
        var kl = JsonDocument.Parse(output).RootElement.GetProperty("kl");
        Assert.InRange(kl.GetProperty("mean").GetDouble(), 1e-7, 0.02); // a Q8_0 head against the stored F32 one
    }
}
