using BitNetSharp.Cli;
using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Model;
using BitNetSharp.Tests.FormatsAtomic;

namespace BitNetSharp.Tests.Formats;

/// <summary>Header values past what the arithmetic holds, and conversions that must keep what the source meant.</summary>
public class ParserEdgeTests
{
    private static ModelFormatException Fails(byte[] bytes) => Assert.Throws<ModelFormatException>(() => GgufFile.Parse(bytes, "bad.gguf"));

    /// <summary>A B1_128 row length near 2^63 wrapped the byte size negative, and the tensor was accepted.</summary>
    [Fact]
    public void AB1RowLengthThatOverflowsIsRefused()
    {
        Assert.False(GgmlTypeInfo.TryByteSize(GgmlType.B1_128, [long.MaxValue], out _, out var error));
        Assert.Contains("overflows", error);
        var bytes = new RawBytes().GgufHeader(3, 1, 0).TensorInfo("b", (uint)GgmlType.B1_128, 0, (ulong)long.MaxValue).PadTo(32).Zeros(32).ToArray();
        Assert.Equal("b", Fails(bytes).Item);
    }

    /// <summary>A file the reader opens with a spec-valid alignment of 24 can be copied (calibrate's GgufCopy threw).</summary>
    [Fact]
    public void AFileWithAlignment24CanBeCopied()
    {
        var bytes = new RawBytes().GgufHeader(3, 1, 1).KvU32("general.alignment", 24)
            .TensorInfo("w", 0, 24, 2).PadTo(24).Zeros(48).ToArray();
        using var source = GgufFile.Parse(bytes, "a24.gguf");
        using var dir = new TestGguf.TempDirectory();
        string path = dir.File("copy.gguf");
        GgufCopy.WithMetadata(source, path, [new("general.name", GgufValue.FromString("copy"))]);
        using var copy = GgufFile.Open(path);
        Assert.Equal(24, copy.Alignment);
        Assert.Equal("copy", copy.Metadata.GetString("general.name"));
        Assert.Equal(source.GetTensorData("w").ToArray(), copy.GetTensorData("w").ToArray());
    }

    /// <summary>
    /// A tensor name past ggml's 63 bytes is refused at open, by name, as llama.cpp refuses it: the reader took it and
    /// the writer did not, so calibrate ran its whole search and then failed copying the file. 63 bytes load.
    /// </summary>
    [Fact]
    public void ATensorNamePastGgmlsLimitIsRefusedAtOpen()
    {
        string longName = new('a', 64);
        var bytes = new RawBytes().GgufHeader(3, 1, 0).TensorInfo(longName, 0, 0, 2).PadTo(32).Zeros(32).ToArray();
        var e = Assert.Throws<ModelFormatException>(() => GgufFile.Parse(bytes, "long.gguf"));
        Assert.Contains("64 bytes, longer than the 63", e.Message);
        Assert.Contains(longName, e.Message);
        using var ok = GgufFile.Parse(new RawBytes().GgufHeader(3, 1, 0).TensorInfo(new string('a', 63), 0, 0, 2).PadTo(32).Zeros(32).ToArray(), "ok.gguf");
        Assert.Single(ok.Tensors);
    }

    /// <summary>
    /// The copy reads each tensor from the mapped file: it took a managed copy of every tensor (the whole model again,
    /// 1.2 GB for 2B4T) and threw NotSupportedException for a tensor past 2 GiB, after calibrate's whole search.
    /// </summary>
    [Fact]
    public void CopyingStreamsTensorsFromTheMap()
    {
        using var dir = new TestGguf.TempDirectory();
        const int n = 16 << 20; // 64 MiB of F32
        var data = new byte[n * 4L];
        new Random(3).NextBytes(data);
        string sourcePath = dir.File("big.gguf"), copyPath = dir.File("copy.gguf");
        new GgufWriter().AddString("general.name", "big").AddTensor("w", GgmlType.F32, [n], data).WriteFile(sourcePath);
        using (var source = GgufFile.Open(sourcePath))
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            GgufCopy.WithMetadata(source, copyPath, [new("general.name", GgufValue.FromString("copy"))]);
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            Assert.True(allocated < 8 << 20, $"the copy allocated {allocated:N0} bytes");
        }
        using var copy = GgufFile.Open(copyPath);
        Assert.Equal("copy", copy.Metadata.GetString("general.name"));
        Assert.True(copy.GetTensorData("w").SequenceEqual(data));
    }

    /// <summary>A 1-D token_embd.weight without a vocab_size key crashed with an IndexOutOfRangeException.</summary>
    [Fact]
    public void AOneDimensionalEmbeddingIsNamed()
    {
        var source = GgufFile.Parse(SyntheticModel.Build(SyntheticShape.Tiny, 3).ToArray(), "tiny.gguf");
        var w = new GgufWriter();
        foreach (var (key, value) in source.Metadata.Entries)
            if (!key.EndsWith(".vocab_size", StringComparison.Ordinal) && !key.StartsWith("tokenizer.", StringComparison.Ordinal)) w.Add(key, value);
        foreach (var t in source.Tensors)
        {
            if (t.Name == "token_embd.weight") w.AddTensor(t.Name, GgmlType.F32, [8], new byte[32]);
            else w.AddTensor(t.Name, t.Type, t.Dims.ToArray(), source.GetTensorData(t).ToArray());
        }
        source.Dispose();
        var e = Assert.Throws<ModelFormatException>(() => ModelConfig.FromGguf(GgufFile.Parse(w.ToArray(), "one-d.gguf")));
        Assert.Equal("token_embd.weight", e.Item);
    }

    /// <summary>head_count × key_length that wraps int (2^30+4 heads × 4 = 16) passed every shape check.</summary>
    [Fact]
    public void HeadSizesThatWrapAreRefused()
    {
        var source = GgufFile.Parse(SyntheticModel.Build(SyntheticShape.Tiny, 3).ToArray(), "tiny.gguf");
        string arch = source.Metadata.GetString("general.architecture");
        var w = new GgufWriter();
        foreach (var (key, value) in source.Metadata.Entries)
        {
            if (key == arch + ".attention.head_count") w.AddUInt32(key, (1u << 30) + 4);
            else if (key == arch + ".attention.head_count_kv") w.AddUInt32(key, 1);
            else if (key is not null && key != arch + ".attention.key_length" && key != arch + ".attention.value_length") w.Add(key, value);
        }
        w.AddUInt32(arch + ".attention.key_length", 4);
        w.AddUInt32(arch + ".attention.value_length", 4);
        foreach (var t in source.Tensors) w.AddTensor(t.Name, t.Type, t.Dims.ToArray(), source.GetTensorData(t).ToArray());
        source.Dispose();
        var e = Assert.Throws<ModelFormatException>(() => ModelConfig.FromGguf(GgufFile.Parse(w.ToArray(), "wrap.gguf")));
        Assert.Contains("beyond what this runtime supports", e.Message);
    }

    /// <summary>
    /// An output inside a bind mount of the input model directory, in a subfolder (original/params.json), is a file of
    /// that directory: only the output's own folder was compared by identity, so a nested file was replaced.
    /// </summary>
    [Fact]
    public void AnOutputNestedInABindMountOfTheModelDirectoryIsRefused()
    {
        using var dir = new TestGguf.TempDirectory();
        Directory.CreateDirectory(dir.File("model/original"));
        File.WriteAllText(dir.File("model/original/params.json"), "{}");
        Directory.CreateDirectory(dir.File("view"));
        using var mount = BindMount.TryCreate(dir.File("model"), dir.File("view"));
        Assert.SkipWhen(mount is null, "bind mounts need root (mount --bind); this machine refused one");
        var error = new StringWriter();
        int code = Program.Run(["convert", dir.File("model"), dir.File("view/original/params.json")], new StringWriter(), error);
        Assert.Equal(2, code);
        Assert.Contains("is a file of the input model directory", error.ToString());
        Assert.Equal("{}", File.ReadAllText(dir.File("model/original/params.json")));
    }

    /// <summary>convert onto its own input replaced the source with its re-encoding.</summary>
    [Theory]
    [InlineData("same")]
    [InlineData("linked-folder")] // through a link to its folder: the string compare saw two files, and the input was replaced
    [InlineData("bind-mount")] // through a bind mount of its folder: no link to resolve, the same folder by (device, inode)
    public void ConvertRefusesToWriteOverItsInput(string spelling)
    {
        using var dir = new TestGguf.TempDirectory();
        Directory.CreateDirectory(dir.File("models"));
        string model = dir.File("models/m.gguf");
        SyntheticModel.Build(SyntheticShape.Tiny, 3).WriteFile(model);
        byte[] before = File.ReadAllBytes(model);
        BindMount? mount = null;
        if (spelling == "bind-mount")
        {
            Directory.CreateDirectory(dir.File("view"));
            mount = BindMount.TryCreate(dir.File("models"), dir.File("view"));
            Assert.SkipWhen(mount is null, "bind mounts need root (mount --bind); this machine refused one");
        }
        using var unmount = mount;
        string output = spelling switch
        {
            "linked-folder" => Path.Combine(Directory.CreateSymbolicLink(dir.File("alias"), dir.File("models")).FullName, "m.gguf"),
            "bind-mount" => dir.File("view/m.gguf"),
            _ => model,
        };
        var error = new StringWriter();
        int code = Program.Run(["convert", model, output, "--embedding-type", "q8_0"], new StringWriter(), error);
        Assert.NotEqual(0, code);
        Assert.Contains("is the input model file", error.ToString());
        Assert.Equal(before, File.ReadAllBytes(model));
    }
}
