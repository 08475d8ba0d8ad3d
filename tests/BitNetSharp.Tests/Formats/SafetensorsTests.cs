using System.Text;
using BitNetSharp.Formats;
using BitNetSharp.Formats.Safetensors;

namespace BitNetSharp.Tests.Formats;

public class SafetensorsTests
{
    private static ModelFormatException Fails(byte[] bytes) =>
        Assert.Throws<ModelFormatException>(() => SafetensorsFile.Parse(bytes, "bad.safetensors").Dispose());

    private static ModelFormatException FailsHeader(string header, int dataLength = 64) =>
        Fails(TestSafetensors.Assemble(header, new byte[dataLength]));

    /// <summary>The format's no-holes rule: bytes before the first tensor, between two, or after the last are refused.</summary>
    [Theory]
    [InlineData("""{"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}""", 8, "must start at 0")]
    [InlineData("""{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}""", 8, "no trailing bytes")]
    [InlineData("""{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}""", 6, "belong to no tensor")]
    [InlineData("""{}""", 8, "no trailing bytes")]
    public void BytesNoTensorAccountsForAreRefused(string header, int dataLength, string expected) =>
        Assert.Contains(expected, FailsHeader(header, dataLength).Message);

    [Fact]
    public void ReadsTensorsMetadataAndValues()
    {
        using var f = SafetensorsFile.Parse(TestSafetensors.Small().ToArray());
        Assert.Equal("pt", f.Metadata["format"]);
        Assert.Equal(7, f.Tensors.Count);
        Assert.Equal("model.embed_tokens.weight", f.Tensors[0].Name);
        var q = f.GetTensor("model.layers.0.self_attn.q_proj.weight");
        Assert.Equal(SafetensorsDType.U8, q.DType);
        Assert.Equal(new long[] { 2, 8 }, q.Shape.ToArray());
        Assert.Equal(TestGguf.RandomBytes(16, 22), f.GetTensorData(q).ToArray());
        Assert.Equal([1.0f], f.ReadFloat32(f.GetTensor("model.layers.0.self_attn.q_proj.weight_scale")));
        Assert.Equal([-2f], f.ReadFloat32(f.GetTensor("model.scalar")));
        Assert.Empty(f.GetTensor("model.scalar").Shape.ToArray());
        Assert.Equal(1, f.GetTensor("model.scalar").ElementCount);
        Assert.Equal(0, f.DataOffset % 8);
    }

    [Fact]
    public void UnsupportedDTypeIsListedButRefusedWhenRead()
    {
        using var f = SafetensorsFile.Parse(TestSafetensors.Small().ToArray(), "m.safetensors");
        var fp8 = f.GetTensor("model.extra.fp8");
        Assert.Equal(SafetensorsDType.F8_E4M3, fp8.DType);
        Assert.False(fp8.IsSupported);
        var e = Assert.Throws<ModelFormatException>(() => f.GetTensorData(fp8).Length);
        Assert.Equal("model.extra.fp8", e.Item);
        Assert.Contains("F8_E4M3 is not supported", e.Message);
    }

    [Fact]
    public void UnknownDTypeIsListedWithoutSizeCheck()
    {
        var bytes = TestSafetensors.Assemble("""{"x":{"dtype":"F4","shape":[4],"data_offsets":[0,2]}}""", new byte[2]);
        using var f = SafetensorsFile.Parse(bytes);
        Assert.Equal(SafetensorsDType.Unknown, f.Tensors[0].DType);
        Assert.Equal("F4", f.Tensors[0].DTypeName);
        Assert.Throws<ModelFormatException>(() => f.GetTensorData(f.Tensors[0]).Length);
    }

    [Fact]
    public void EveryTruncationFails()
    {
        var bytes = TestSafetensors.Small().ToArray();
        for (int length = 0; length < bytes.Length; length++)
        {
            var prefix = bytes.AsSpan(0, length).ToArray();
            Assert.Throws<ModelFormatException>(() => SafetensorsFile.Parse(prefix).Dispose());
        }
    }

    [Fact]
    public void BadHeaderLengthsFail()
    {
        Assert.Contains("too short", Fails(new byte[5]).Message);
        var zero = new byte[16];
        Assert.Contains("header length is 0", Fails(zero).Message);
        var huge = new byte[16];
        BitConverter.TryWriteBytes(huge, ulong.MaxValue);
        Assert.Contains("only 8 bytes follow", Fails(huge).Message);
        var notJson = TestSafetensors.Assemble("[1,2]   ", []);
        Assert.Contains("does not start with '{'", Fails(notJson).Message);
    }

    [Fact]
    public void BadJsonFails()
    {
        Assert.Contains("not valid JSON", FailsHeader("""{"a":{"dtype":"F32",""").Message);
        Assert.Contains("not valid JSON", FailsHeader("{\"a\":1,}").Message);
    }

    [Theory]
    [InlineData("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", 8, "run past the end")]
    [InlineData("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}}""", 64, "end before they begin")]
    [InlineData("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}}""", 64, "needs 16")]
    [InlineData("""{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}}""", 64, "needs 24")]
    [InlineData("""{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}""", 64, "non-negative integer")]
    [InlineData("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[0]}}""", 64, "data_offsets")]
    [InlineData("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[-4,12]}}""", 64, "non-negative integer")]
    [InlineData("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,1e300]}}""", 64, "non-negative integer")]
    [InlineData("""{"w":{"shape":[4],"data_offsets":[0,16]}}""", 64, "dtype")]
    [InlineData("""{"w":{"dtype":"F32","data_offsets":[0,16]}}""", 64, "shape")]
    [InlineData("""{"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,16]}}""", 64, "overflows")]
    [InlineData("""{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}""", 64, "overlap")]
    [InlineData("""{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}""", 64, "twice")]
    [InlineData("""{"w":{"dtype":"BF16","shape":[2],"data_offsets":[0,4],"dtype":"F16"}}""", 4, "field 'dtype' appears twice")] // read as F16
    [InlineData("""{"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4],"shape":[2,2]}}""", 4, "field 'shape' appears twice")]
    [InlineData("""{"__metadata__":{"k":1}}""", 0, "expected a string")]
    [InlineData("""{"w":[1]}""", 0, "expected an object")]
    public void BadTensorEntriesFail(string header, int dataLength, string expected)
    {
        var e = FailsHeader(header, dataLength);
        Assert.Contains(expected, e.Message);
        Assert.StartsWith("bad.safetensors: ", e.Message);
    }

    [Fact]
    public void ShardedCheckpointResolvesEveryTensorThroughTheIndex()
    {
        using var dir = new TestGguf.TempDirectory();
        File.WriteAllBytes(dir.File("model-00001-of-00002.safetensors"),
            new TestSafetensors().Add("a", "F32", [2], new byte[8]).ToArray());
        File.WriteAllBytes(dir.File("model-00002-of-00002.safetensors"),
            new TestSafetensors().Add("b", "BF16", [2], new byte[4]).ToArray());
        File.WriteAllText(dir.File("model.safetensors.index.json"),
            """{"metadata":{"total_size":12},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}""");
        using (var c = SafetensorsCheckpoint.OpenIndex(dir.File("model.safetensors.index.json")))
        {
            Assert.Equal(2, c.Files.Count);
            Assert.Equal(2, c.Tensors.Count);
            Assert.Equal(SafetensorsDType.BF16, c.GetTensor("b").DType);
            Assert.Equal(8, c.GetTensorData(c.GetTensor("a")).Length);
        }

        File.WriteAllText(dir.File("model.safetensors.index.json"),
            """{"weight_map":{"a":"model-00002-of-00002.safetensors"}}""");
        var wrongShard = Assert.Throws<ModelFormatException>(() => SafetensorsCheckpoint.OpenIndex(dir.File("model.safetensors.index.json")));
        Assert.Equal("a", wrongShard.Item);

        File.WriteAllText(dir.File("model.safetensors.index.json"), """{"weight_map":{"a":"../escape.safetensors"}}""");
        Assert.Contains("plain file name", Assert.Throws<ModelFormatException>(() => SafetensorsCheckpoint.OpenIndex(dir.File("model.safetensors.index.json"))).Message);

        File.WriteAllText(dir.File("model.safetensors.index.json"), """{"weight_map":{"c":"missing.safetensors"}}""");
        Assert.Contains("missing.safetensors", Assert.Throws<ModelFormatException>(() => SafetensorsCheckpoint.OpenIndex(dir.File("model.safetensors.index.json"))).Message);

        File.WriteAllText(dir.File("model.safetensors.index.json"), "{not json");
        Assert.Contains("not valid JSON", Assert.Throws<ModelFormatException>(() => SafetensorsCheckpoint.OpenIndex(dir.File("model.safetensors.index.json"))).Message);
    }

    [Fact]
    public void MappedFileOnDiskReadsLikeTheInMemoryOne()
    {
        using var dir = new TestGguf.TempDirectory();
        var path = dir.File("model.safetensors");
        File.WriteAllBytes(path, TestSafetensors.Small().ToArray());
        using var f = SafetensorsFile.Open(path);
        Assert.Equal(TestGguf.RandomBytes(32, 23), f.GetTensorData(f.GetTensor("model.layers.0.input_layernorm.weight")).ToArray());
        Assert.Equal((Encoding.UTF8.GetByteCount(TestSafetensors.Small().HeaderJson()) + 7) / 8 * 8, f.HeaderLength);
    }
}
