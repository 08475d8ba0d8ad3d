using BitNetSharp.Formats.Gguf;

namespace BitNetSharp.Tests.Formats;

public class GgmlTypeTests
{
    [Theory]
    [InlineData(GgmlType.F32, new long[] { 7, 3 }, 84)]
    [InlineData(GgmlType.F16, new long[] { 7, 3 }, 42)]
    [InlineData(GgmlType.BF16, new long[] { 2560 }, 5120)]
    [InlineData(GgmlType.Q8_0, new long[] { 64, 2 }, 4 * 34)]
    [InlineData(GgmlType.Q6_K, new long[] { 2560, 128256 }, 10L * 128256 * 210)]
    [InlineData(GgmlType.Q4_K, new long[] { 256 }, 144)]
    [InlineData(GgmlType.Q2_K, new long[] { 256 }, 84)]
    [InlineData(GgmlType.Q8_K, new long[] { 256 }, 292)]
    [InlineData(GgmlType.TQ1_0, new long[] { 2560, 640 }, 10L * 640 * 54)]
    [InlineData(GgmlType.TQ2_0, new long[] { 2560, 640 }, 10L * 640 * 66)]
    [InlineData(GgmlType.MXFP4, new long[] { 64 }, 34)]
    public void ByteSizeFollowsTheBlockGeometry(GgmlType type, long[] dims, long expected) =>
        Assert.Equal(expected, GgmlTypeInfo.ByteSize(type, dims));

    [Fact]
    public void I2SizesMatchTheOfficial2B4TFile()
    {
        // FORMATS.md §2.5: n/4 + 32 for every projection of the official GGUF.
        Assert.Equal(1_638_432, GgmlTypeInfo.ByteSize(GgmlType.I2_S, [2560, 2560]));
        Assert.Equal(409_632, GgmlTypeInfo.ByteSize(GgmlType.I2_S, [2560, 640]));
        Assert.Equal(4_423_712, GgmlTypeInfo.ByteSize(GgmlType.I2_S, [2560, 6912]));
        Assert.Equal(4_423_712, GgmlTypeInfo.ByteSize(GgmlType.I2_S, [6912, 2560]));
        Assert.Equal(GgmlTypeInfo.ByteSize(GgmlType.I2_S, [2560, 640]), GgmlTypeInfo.ByteSize(GgmlType.TL1, [2560, 640]));
        // 30 layers × (q, o: 2560² + k, v: 2560×640 + gate, up, down) + F16 embedding + 121 F32 norms = the 2B4T data size.
        long layer = 2 * 1_638_432 + 2 * 409_632 + 3 * 4_423_712;
        long norms = 30 * (2 * 2560 * 4 + 2560 * 4 + 6912 * 4) + 2560 * 4;
        Assert.Equal(1_179_449_920, 30 * layer + 128256L * 2560 * 2 + norms);
    }

    [Fact]
    public void ShapesThatDoNotFitAreExplained()
    {
        Assert.False(GgmlTypeInfo.TryByteSize(GgmlType.Q8_0, [33], out _, out var error));
        Assert.Contains("multiple of 32", error);
        Assert.False(GgmlTypeInfo.TryByteSize(GgmlType.F32, [], out _, out error));
        Assert.False(GgmlTypeInfo.TryByteSize(GgmlType.F32, [long.MaxValue, 2], out _, out error));
        Assert.Contains("overflows", error);
        Assert.False(GgmlTypeInfo.TryByteSize(GgmlType.F64, [long.MaxValue / 4], out _, out error));
        Assert.False(GgmlTypeInfo.TryByteSize(GgmlType.I8_S, [128], out _, out error));
        Assert.False(GgmlTypeInfo.TryByteSize((GgmlType)31, [32], out _, out error));
        Assert.Contains("unknown ggml type 31", error);
        Assert.False(GgmlTypeInfo.TryByteSize(GgmlType.TL2, [128, 4], out _, out _));
    }

    [Fact]
    public void FileIdsAndNames()
    {
        Assert.Equal(39u, GgmlTypeInfo.FileId(GgmlType.MXFP4));
        Assert.Equal(39u, GgmlTypeInfo.FileId(GgmlType.TL2));
        Assert.Equal(36u, GgmlTypeInfo.FileId(GgmlType.I2_S));
        Assert.Equal("i2_s", GgmlTypeInfo.Name(GgmlType.I2_S));
        Assert.Equal("q6_K", GgmlTypeInfo.Name(GgmlType.Q6_K));
        Assert.True(GgmlTypeInfo.IsTernary(GgmlType.TQ1_0));
        Assert.False(GgmlTypeInfo.IsTernary(GgmlType.F16));
    }

    [Fact]
    public void CollidingIdsResolveByTheDocumentedRule()
    {
        long[] dims = [2560, 640];
        long tl2 = GgmlTypeInfo.ByteSize(GgmlType.TL2, dims);
        Assert.Equal(GgmlType.I2_S, GgmlTypeResolver.Resolve(36, "llama", null, dims, 0));
        Assert.Equal(GgmlType.TL1, GgmlTypeResolver.Resolve(38, null, null, dims, 0));
        Assert.Null(GgmlTypeResolver.Resolve(37, "bitnet-b1.58", 40, dims, 0));
        Assert.Null(GgmlTypeResolver.Resolve(4, null, null, dims, 0));
        Assert.Null(GgmlTypeResolver.Resolve(40, null, null, dims, 0));
        Assert.Equal(GgmlType.TL2, GgmlTypeResolver.Resolve(39, "gpt-oss", 39, dims, 0));
        Assert.Equal(GgmlType.TL2, GgmlTypeResolver.Resolve(39, "bitnet-b1.58", 40, dims, tl2));
        Assert.Equal(GgmlType.MXFP4, GgmlTypeResolver.Resolve(39, "bitnet-b1.58", 40, dims, tl2 - 1));
        Assert.Equal(GgmlType.MXFP4, GgmlTypeResolver.Resolve(39, "gpt-oss", 38, dims, 1 << 30));
        Assert.Equal(GgmlType.MXFP4, GgmlTypeResolver.Resolve(39, null, null, dims, 1 << 30));
    }

    [Fact]
    public void ReaderResolvesId39ByArchitecture()
    {
        long[] dims = [512, 4];
        int tl2 = (int)GgmlTypeInfo.ByteSize(GgmlType.TL2, dims);
        int mxfp4 = (int)GgmlTypeInfo.ByteSize(GgmlType.MXFP4, dims);
        var bitnet = new GgufWriter().AddString("general.architecture", "bitnet");
        bitnet.AddTensor("w", GgmlType.TL2, dims, new byte[tl2]);
        using (var f = GgufFile.Parse(bitnet.ToArray()))
        {
            Assert.Equal(GgmlType.TL2, f.Tensors[0].Type);
            Assert.Equal(39u, f.Tensors[0].TypeId);
        }
        var upstream = new GgufWriter().AddString("general.architecture", "gpt-oss");
        upstream.AddTensor("w", GgmlType.MXFP4, dims, new byte[mxfp4]);
        using (var f = GgufFile.Parse(upstream.ToArray()))
            Assert.Equal(GgmlType.MXFP4, f.Tensors[0].Type);
    }
}
