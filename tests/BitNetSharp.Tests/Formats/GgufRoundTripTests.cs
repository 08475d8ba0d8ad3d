using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;

namespace BitNetSharp.Tests.Formats;

public class GgufRoundTripTests
{
    [Fact]
    public void EveryMetadataValueTypeSurvivesWriteThenRead()
    {
        var nested = GgufArray.Create(new[]
        {
            GgufArray.Create(new[] { 1, 2, 3 }),
            GgufArray.Create(Array.Empty<int>()),
            GgufArray.Create(new[] { GgufArray.Create(new[] { "deep", "ß✓😀" }) }),
        });
        var w = new GgufWriter()
            .Add("u8", GgufValue.FromUInt8(250))
            .Add("i8", GgufValue.FromInt8(-120))
            .Add("u16", GgufValue.FromUInt16(65000))
            .Add("i16", GgufValue.FromInt16(-32000))
            .Add("u32", GgufValue.FromUInt32(4_000_000_000))
            .Add("i32", GgufValue.FromInt32(-2_000_000_000))
            .Add("f32", GgufValue.FromFloat32(3.25f))
            .Add("bool.true", GgufValue.FromBool(true))
            .Add("bool.false", GgufValue.FromBool(false))
            .Add("str.unicode", GgufValue.FromString("héllo ▁world 你好 😀"))
            .Add("str.empty", GgufValue.FromString(""))
            .Add("u64", GgufValue.FromUInt64(ulong.MaxValue))
            .Add("i64", GgufValue.FromInt64(long.MinValue))
            .Add("f64", GgufValue.FromFloat64(Math.PI))
            .Add("arch-with.dots-1.58.key", GgufValue.FromUInt32(7))
            .AddArray("a.u8", new byte[] { 0, 1, 255 })
            .AddArray("a.i8", new sbyte[] { -128, 127 })
            .AddArray("a.u16", new ushort[] { 1, 65535 })
            .AddArray("a.i16", new short[] { -1, 1 })
            .AddArray("a.u32", new uint[] { 0, uint.MaxValue })
            .AddArray("a.i32", new[] { int.MinValue, 0, int.MaxValue })
            .AddArray("a.f32", new[] { -1.5f, float.Epsilon, float.PositiveInfinity })
            .AddArray("a.bool", new[] { true, false, true })
            .AddArray("a.str", new[] { "", "a", "Ω≈ç", "<0x0A>" })
            .AddArray("a.u64", new[] { ulong.MaxValue })
            .AddArray("a.i64", new[] { long.MinValue, 5L })
            .AddArray("a.f64", new[] { 1e300, -0.0 })
            .AddArray("a.empty.str", Array.Empty<string>())
            .AddArray("a.empty.f32", Array.Empty<float>())
            .Add("a.nested", GgufValue.FromArray(nested));

        using var f = GgufFile.Parse(w.ToArray());
        var m = f.Metadata;
        Assert.Equal(3u, f.Version);
        Assert.Equal(30, m.Count);
        Assert.Equal("u8", m.Entries[0].Key);
        Assert.Equal("a.nested", m.Entries[^1].Key);

        Assert.Equal((byte)250, m.GetValue("u8").Value);
        Assert.Equal((sbyte)-120, m.GetValue("i8").Value);
        Assert.Equal((ushort)65000, m.GetValue("u16").Value);
        Assert.Equal((short)-32000, m.GetValue("i16").Value);
        Assert.Equal(4_000_000_000u, m.GetUInt32("u32"));
        Assert.Equal(-2_000_000_000, m.GetInt32("i32"));
        Assert.Equal(3.25f, m.GetFloat32("f32"));
        Assert.True(m.GetBool("bool.true"));
        Assert.False(m.GetBool("bool.false"));
        Assert.Equal("héllo ▁world 你好 😀", m.GetString("str.unicode"));
        Assert.Equal("", m.GetString("str.empty"));
        Assert.Equal(ulong.MaxValue, m.GetUInt64("u64"));
        Assert.Equal(long.MinValue, m.GetValue("i64").Value);
        Assert.Equal(Math.PI, m.GetValue("f64").Value);
        Assert.Equal((float)Math.PI, m.GetFloat32("f64"));
        Assert.Equal(7u, m.GetUInt32("arch-with.dots-1.58.key"));
        Assert.Equal(250u, m.GetUInt32("u8")); // any integer width is accepted for counts

        Assert.Equal(new byte[] { 0, 1, 255 }, m.GetArray("a.u8").AsSpan<byte>().ToArray());
        Assert.Equal(new sbyte[] { -128, 127 }, m.GetArray("a.i8").AsSpan<sbyte>().ToArray());
        Assert.Equal(new ushort[] { 1, 65535 }, m.GetArray("a.u16").AsSpan<ushort>().ToArray());
        Assert.Equal(new short[] { -1, 1 }, m.GetArray("a.i16").AsSpan<short>().ToArray());
        Assert.Equal(new uint[] { 0, uint.MaxValue }, m.GetArray("a.u32").AsSpan<uint>().ToArray());
        Assert.Equal(new[] { int.MinValue, 0, int.MaxValue }, m.GetInt32Array("a.i32"));
        Assert.Equal(new[] { -1, 1 }, m.GetInt32Array("a.i16"));
        Assert.Equal(new[] { -1.5f, float.Epsilon, float.PositiveInfinity }, m.GetFloat32Array("a.f32"));
        Assert.Equal(new[] { true, false, true }, m.GetArray("a.bool").AsSpan<bool>().ToArray());
        Assert.Equal(new[] { "", "a", "Ω≈ç", "<0x0A>" }, m.GetStringArray("a.str"));
        Assert.Equal(new[] { ulong.MaxValue }, m.GetArray("a.u64").AsSpan<ulong>().ToArray());
        Assert.Equal(new[] { long.MinValue, 5L }, m.GetArray("a.i64").AsSpan<long>().ToArray());
        Assert.Equal(new[] { 1e300, -0.0 }, m.GetArray("a.f64").AsSpan<double>().ToArray());
        Assert.Empty(m.GetStringArray("a.empty.str"));
        Assert.Equal(GgufValueType.String, m.GetArray("a.empty.str").ElementType);
        Assert.Empty(m.GetFloat32Array("a.empty.f32"));

        var n = m.GetArray("a.nested");
        Assert.Equal(GgufValueType.Array, n.ElementType);
        var inner = n.AsSpan<GgufArray>();
        Assert.Equal(3, inner.Length);
        Assert.Equal(new[] { 1, 2, 3 }, inner[0].AsSpan<int>().ToArray());
        Assert.Equal(0, inner[1].Count);
        Assert.Equal(GgufValueType.Int32, inner[1].ElementType);
        Assert.Equal(new[] { "deep", "ß✓😀" }, inner[2].AsSpan<GgufArray>()[0].AsSpan<string>().ToArray());
        Assert.Empty(f.Tensors);
    }

    [Theory]
    [InlineData(32)]
    [InlineData(8)]
    [InlineData(64)]
    [InlineData(4096)]
    public void TensorsOfEveryBitNetTypeSurviveWriteThenRead(int alignment)
    {
        var w = TestGguf.TinyBitNet(alignment);
        var bytes = w.ToArray();
        using var f = GgufFile.Parse(bytes);

        Assert.Equal(alignment, f.Alignment);
        Assert.Equal(alignment != 32, f.Metadata.ContainsKey("general.alignment"));
        Assert.Equal(0, f.DataOffset % alignment);
        Assert.Equal(7, f.Tensors.Count);
        string[] names = ["token_embd.weight", "output_norm.weight", "blk.0.attn_norm.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight", "blk.0.ffn_down.weight"];
        GgmlType[] types = [GgmlType.F16, GgmlType.F32, GgmlType.F32, GgmlType.I2_S, GgmlType.TQ2_0, GgmlType.TQ1_0, GgmlType.BF16];
        long[] sizes = [256 * 16 * 2, 1024, 1024, 256 * 256 / 4 + 32, 128 * 66, 128 * 54, 512 * 256 * 2];
        for (int i = 0; i < names.Length; i++)
        {
            var t = f.Tensors[i];
            Assert.Equal(names[i], t.Name);
            Assert.Equal(types[i], t.Type);
            Assert.Equal(sizes[i], t.ByteSize);
            Assert.Equal(0, t.Offset % alignment);
            Assert.Equal(TestGguf.RandomBytes((int)sizes[i], i + 1), f.GetTensorData(t).ToArray());
        }
        Assert.Equal(new long[] { 256, 128 }, f.GetTensor("blk.0.attn_k.weight").Dims.ToArray());
        Assert.Equal(256L * 128, f.GetTensor("blk.0.attn_k.weight").ElementCount);
        Assert.Equal("bitnet-b1.58", f.Metadata.Architecture);
        Assert.Equal(256u, f.Metadata.GetUInt32(f.Metadata.ArchitectureKey("embedding_length")));
    }

    [Fact]
    public void WriteFileRenamesIntoPlaceAndTheMappedFileReadsBack()
    {
        using var dir = new TestGguf.TempDirectory();
        var path = dir.File("tiny.gguf");
        TestGguf.TinyBitNet().WriteFile(path);
        Assert.Equal(["tiny.gguf"], Directory.GetFiles(dir.Path).Select(Path.GetFileName));

        using (var f = GgufFile.Open(path))
        {
            Assert.Equal(new FileInfo(path).Length, f.FileLength);
            Assert.Equal(TestGguf.RandomBytes(1024, 2), f.GetTensorData("output_norm.weight").ToArray());
        }

        // Overwriting an existing file goes through the same temp-and-rename path.
        new GgufWriter().AddString("general.architecture", "llama").WriteFile(path);
        using var again = GgufFile.Open(path);
        Assert.Empty(again.Tensors);
    }

    [Fact]
    public void DisposedFileRefusesToHandOutTensorMemory()
    {
        var f = GgufFile.Parse(TestGguf.TinyBitNet().ToArray());
        var t = f.GetTensor("blk.0.attn_q.weight");
        f.Dispose();
        Assert.Throws<ObjectDisposedException>(() => { _ = f.GetTensorData(t); });
    }

    [Fact]
    public void WriterRejectsBytesThatDoNotMatchTheTypeSize()
    {
        var w = new GgufWriter();
        var e = Assert.Throws<ArgumentException>(() => w.AddTensor("x", GgmlType.TQ2_0, [256, 2], new byte[131]));
        Assert.Contains("132", e.Message);
        Assert.Throws<ArgumentException>(() => w.AddTensor("y", GgmlType.TQ1_0, [100], new byte[54]));
        Assert.Throws<ArgumentException>(() => w.AddTensor("z", GgmlType.I8_S, [128], new byte[128]));
        Assert.Throws<ArgumentException>(() => w.AddTensor(new string('n', 64), GgmlType.F32, [1], new byte[4]));
        w.AddTensor("ok", GgmlType.F32, [1], new byte[4]);
        Assert.Throws<ArgumentException>(() => w.AddTensor("ok", GgmlType.F32, [1], new byte[4]));
        w.AddString("k", "v");
        Assert.Throws<ArgumentException>(() => w.AddString("k", "again"));
        Assert.Throws<ArgumentException>(() => w.AddUInt32("general.alignment", 64));
        Assert.Throws<ArgumentOutOfRangeException>(() => new GgufWriter(12));
        Assert.Throws<ArgumentOutOfRangeException>(() => new GgufWriter(0));
    }

    [Fact]
    public void MissingKeysAndWrongTypesNameTheKey()
    {
        using var f = GgufFile.Parse(TestGguf.TinyBitNet().ToArray(), "tiny.gguf");
        var m = f.Metadata;
        var missing = Assert.Throws<ModelFormatException>(() => m.GetUInt32(m.ArchitectureKey("expert_count")));
        Assert.Equal("bitnet-b1.58.expert_count", missing.Item);
        Assert.Contains("tiny.gguf", missing.Message);
        Assert.Contains("missing", missing.Message);
        var wrong = Assert.Throws<ModelFormatException>(() => m.GetUInt32("general.name"));
        Assert.Contains("found a string value, expected an integer", wrong.Message);
        Assert.False(m.TryGetUInt32("nope", out _));
        var tensor = Assert.Throws<ModelFormatException>(() => f.GetTensor("output.weight"));
        Assert.Equal("output.weight", tensor.Item);
    }
}
