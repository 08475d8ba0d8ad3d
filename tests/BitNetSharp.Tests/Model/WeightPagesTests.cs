using System.Text.Json;
using BitNetSharp.Cli;
using BitNetSharp.Cli.Commands;
using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Memory;
using BitNetSharp.Model;
using BitNetSharp.Tests.Formats;

namespace BitNetSharp.Tests.Model;

/// <summary><see cref="ModelLoadOptions.WeightPages"/> (<c>--weight-pages</c>): a model file read into a private copy in 2 MiB pages.</summary>
public class WeightPagesTests
{
    private static string Fixture => RepositoryFiles.Path("tests/fixtures/tinystories-4m/model.gguf");

    private static void SkipWithoutHugePages() =>
        Assert.SkipUnless(HugePages.Available, "transparent huge pages need Linux with THP not set to never");

    [Fact]
    public unsafe void HugePageCopyHoldsTheFileBytesAndSmallFilesAreMapped()
    {
        SkipWithoutHugePages();
        using var dir = new TestGguf.TempDirectory();
        string big = dir.File("big.bin"), small = dir.File("small.bin");
        var bytes = new byte[5 * (int)HugePages.PageBytes / 2 + 123]; // 5 MiB + 123: a partial last page
        new Random(5).NextBytes(bytes);
        File.WriteAllBytes(big, bytes);
        File.WriteAllBytes(small, bytes.AsSpan(0, 1 << 20).ToArray());

        using (var copy = FileMapping.Open(big, hugePages: true))
        {
            Assert.True(copy.InHugePages);
            Assert.Equal(0, (long)copy.Pointer % HugePages.PageBytes);
            Assert.Equal(bytes.Length, copy.Length);
            Assert.True(new ReadOnlySpan<byte>(copy.Pointer, bytes.Length).SequenceEqual(bytes));
            Assert.InRange(copy.HugePageBackedBytes, 0, bytes.Length); // never more than the copy, whatever shares its mapping
        }
        using (var mapped = FileMapping.Open(big, hugePages: false))
        {
            Assert.False(mapped.InHugePages);
            Assert.True(new ReadOnlySpan<byte>(mapped.Pointer, bytes.Length).SequenceEqual(bytes));
        }
        using (var below = FileMapping.Open(small, hugePages: true)) // under one huge page: mapped as before
            Assert.False(below.InHugePages);
    }

    private static float[] Logits(ModelWeights w, int[] tokens) => HeadTypeOnLoadTests.Logits(w, tokens);

    [Fact]
    public void ACopyRunsTheSameModelAsTheMapping()
    {
        SkipWithoutHugePages();
        using var mapped = ModelWeights.Load(Fixture, new ModelLoadOptions { WeightPages = WeightPages.File });
        using var copied = ModelWeights.Load(Fixture, new ModelLoadOptions { WeightPages = WeightPages.Huge });
        Assert.False(mapped.Gguf!.InHugePages);
        Assert.True(copied.Gguf!.InHugePages);
        int[] tokens = [1, 17, 300, 4, 99, 2048];
        Assert.Equal(Logits(mapped, tokens), Logits(copied, tokens));
    }

    /// <summary>
    /// A head re-encoded at load releases the stored table's pages. A mapping faults them back in from the file; a
    /// copy would read zeros, so reading that tensor afterwards is refused with a message instead.
    /// </summary>
    [Fact]
    public void AReleasedTableOfACopyIsRefusedNotReadAsZeros()
    {
        SkipWithoutHugePages();
        using var mapped = ModelWeights.Load(Fixture, new ModelLoadOptions { WeightPages = WeightPages.File, HeadType = GgmlType.F16 });
        using var copied = ModelWeights.Load(Fixture, new ModelLoadOptions { WeightPages = WeightPages.Huge, HeadType = GgmlType.F16 });
        using var original = GgufFile.Open(Fixture);
        var stored = original.GetTensorData("token_embd.weight").ToArray();
        Assert.True(mapped.Gguf!.GetTensorData("token_embd.weight").SequenceEqual(stored));
        var e = Assert.Throws<InvalidOperationException>(() => copied.Gguf!.GetTensorData("token_embd.weight").ToArray());
        Assert.Contains("token_embd.weight", e.Message);
        Assert.Contains("released", e.Message);
        Assert.True(copied.Gguf!.GetTensorData("output_norm.weight").SequenceEqual(original.GetTensorData("output_norm.weight"))); // the rest reads as stored
        int[] tokens = [1, 5, 9];
        Assert.Equal(Logits(mapped, tokens), Logits(copied, tokens));
    }

    /// <summary>
    /// Projections decoded into buffers of their own (TQ2_0 here) release the file's bytes: they stayed resident (in a
    /// private 2 MiB-page copy, unreclaimable: the file and its decoded weights both held) and --mlock locked them. A copy
    /// of the file (calibrate's output) still reads those tensors as stored, from the file.
    /// </summary>
    [Fact]
    public void DecodedProjectionsReleaseTheFilesBytesAndACopyStillReadsThem()
    {
        using var dir = new TestGguf.TempDirectory();
        string tq2 = dir.File("tq2.gguf");
        using (var source = ModelWeights.Load(Fixture)) ModelConverter.ToGguf(source, PackedWeightType.TQ2_0).WriteFile(tq2);
        var pages = HugePages.Available ? WeightPages.Huge : WeightPages.File;
        using var w = ModelWeights.Load(tq2, new ModelLoadOptions { WeightPages = pages });
        var tensors = w.Gguf!.Tensors.Where(t => t.Type == GgmlType.TQ2_0).ToList();
        Assert.NotEmpty(tensors);
        long projections = tensors.Sum(t => t.ByteSize);
        long live = w.Gguf.Mapping.LiveRanges().Sum(r => r.End - r.Start);
        Assert.True(live <= w.Gguf.Mapping.Length - projections + tensors.Count * 2L * Environment.SystemPageSize,
            $"{live} bytes live of {w.Gguf.Mapping.Length}; the {projections} bytes of decoded projections should be released");

        string copy = dir.File("copy.gguf");
        GgufCopy.WithMetadata(w.Gguf, copy, [new("general.name", GgufValue.FromString("copied"))]);
        using var original = GgufFile.Open(tq2);
        using var copied = GgufFile.Open(copy);
        foreach (var t in original.Tensors)
            Assert.True(copied.GetTensorData(t.Name).SequenceEqual(original.GetTensorData(t)), t.Name);
    }

    [Fact]
    public void AutoCopiesLargeFilesOnly()
    {
        var auto = new ModelLoadOptions();
        Assert.Equal(WeightPages.Auto, auto.WeightPages);
        Assert.False(auto.UseHugePages(ModelLoadOptions.AutoHugePagesMinBytes - 1));
        Assert.True(new ModelLoadOptions { WeightPages = WeightPages.Huge }.UseHugePages(10));
        Assert.False(new ModelLoadOptions { WeightPages = WeightPages.File }.UseHugePages(1L << 40));
        if (!HugePages.Available) Assert.False(auto.UseHugePages(1L << 30));
        Assert.False(auto.UseHugePages(1L << 50)); // more than any machine's free memory: mapped
    }

    [Fact]
    public void CliTakesWeightPagesAndReportsThem()
    {
        Assert.Equal(WeightPages.Huge, ModelOptions.ParseWeightPages("huge"));
        Assert.Equal(WeightPages.File, ModelOptions.ParseWeightPages("FILE"));
        Assert.Equal(WeightPages.Auto, ModelOptions.ParseWeightPages(null));
        var bad = Assert.Throws<UsageException>(() => ModelOptions.ParseWeightPages("big"));
        Assert.Contains("--weight-pages", bad.Message);

        var output = new StringWriter();
        var error = new StringWriter();
        Assert.Equal(2, Program.Run(["generate", "-m", Fixture, "-p", "Once", "-n", "1", "--weight-pages", "big"], output, error));
        Assert.Contains("--weight-pages 'big'", error.ToString());

        SkipWithoutHugePages();
        output = new StringWriter();
        error = new StringWriter();
        int code = Program.Run(["bench", "-m", Fixture, "-p", "0", "-n", "2", "-t", "1", "-r", "1", "--weight-pages", "huge", "--json"], output, error);
        Assert.True(code == 0, error.ToString());
        using var doc = JsonDocument.Parse(output.ToString());
        Assert.Equal("huge", doc.RootElement.GetProperty("weight_pages").GetString());
        Assert.Contains("2 MiB pages", doc.RootElement.GetProperty("weights_in_memory").GetString());
    }

    /// <summary>An HF directory in bench: its weights are decoded into memory (weight_pages "decoded"), and its size is
    /// its safetensors files' (file_bytes read 0).</summary>
    [Fact]
    public void BenchDescribesAnHfDirectory()
    {
        string hf = RepositoryFiles.Path("tests/fixtures/hf-bitnet/autobitlinear-online-gqa-f32");
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Program.Run(["bench", "-m", hf, "-p", "0", "-n", "2", "-t", "1", "-r", "1", "--json"], output, error);
        Assert.True(code == 0, error.ToString());
        using var doc = JsonDocument.Parse(output.ToString());
        Assert.Equal("decoded", doc.RootElement.GetProperty("weight_pages").GetString());
        long expected = Directory.EnumerateFiles(hf, "*.safetensors").Sum(f => new FileInfo(f).Length);
        Assert.True(expected > 0);
        Assert.Equal(expected, doc.RootElement.GetProperty("file_bytes").GetInt64());

        // Only the files the loader reads: a copy of the weights beside model.safetensors (consolidated.safetensors, as
        // some repositories ship) is not read, and was counted (twice the size).
        using var dir = new TestGguf.TempDirectory();
        foreach (var f in Directory.GetFiles(hf)) File.Copy(f, dir.File(Path.GetFileName(f)));
        File.Copy(dir.File("model.safetensors"), dir.File("consolidated.safetensors"));
        output = new StringWriter();
        code = Program.Run(["bench", "-m", dir.Path, "-p", "0", "-n", "2", "-t", "1", "-r", "1", "--json"], output, error);
        Assert.True(code == 0, error.ToString());
        using var again = JsonDocument.Parse(output.ToString());
        Assert.Equal(expected, again.RootElement.GetProperty("file_bytes").GetInt64());
    }
}
