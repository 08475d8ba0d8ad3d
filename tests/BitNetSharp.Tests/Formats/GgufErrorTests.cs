using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;

namespace BitNetSharp.Tests.Formats;

/// <summary>Each kind of malformed GGUF fails with a <see cref="ModelFormatException"/> that says what is wrong.</summary>
public class GgufErrorTests
{
    private static ModelFormatException Fails(byte[] bytes) =>
        Assert.Throws<ModelFormatException>(() => GgufFile.Parse(bytes, "bad.gguf").Dispose());

    /// <summary>
    /// Names and keys from the file are shown escaped and cut short: a damaged length read a 5.6 MB "name" and printed it
    /// raw (6,939 lines of binary), and a key holding an escape sequence reached the terminal as one.
    /// </summary>
    [Fact]
    public void ErrorsShowFileTextEscapedAndShort()
    {
        static byte[] TwoKeys(string key)
        {
            using var m = new MemoryStream();
            using var w = new BinaryWriter(m);
            w.Write("GGUF"u8);
            w.Write(3u);
            w.Write(0ul); // tensors
            w.Write(2ul); // metadata entries: the same key twice
            for (int i = 0; i < 2; i++)
            {
                var k = System.Text.Encoding.UTF8.GetBytes(key);
                w.Write((ulong)k.Length);
                w.Write(k);
                w.Write(4u); // uint32
                w.Write(7u);
            }
            w.Flush();
            return m.ToArray();
        }
        var e = Fails(TwoKeys("general.\u001b[2Jname"));
        Assert.Contains("general.\\u001b[2Jname", e.Message);
        Assert.DoesNotContain('\u001b', e.Message);
        // A bidi override is escaped too (it reordered the line); a pair at the cut is kept whole.
        Assert.Contains("\\u202e", Fails(TwoKeys("general.\u202Eeman")).Message);
        string emoji = new string('k', 119) + "\U0001F600" + new string('k', 10);
        Assert.DoesNotContain("\uD83D…", Fails(TwoKeys(emoji)).Message);
        e = Fails(TwoKeys(new string('k', 100_000)));
        Assert.True(e.Message.Length < 400, e.Message.Length.ToString(System.Globalization.CultureInfo.InvariantCulture));
        Assert.Contains("(100,000 characters in all): duplicate metadata key", e.Message);
    }

    /// <summary>
    /// Tensors lie back to back (padded to the alignment), as llama.cpp requires: a type changed to a smaller one (F16
    /// to Q8_0 in a damaged header) left a gap before the next tensor, loaded, and generated garbage.
    /// </summary>
    [Fact]
    public void ATensorWhoseSizeLeavesAGapBeforeTheNextIsRefused()
    {
        var bytes = TestGguf.TinyBitNet().ToArray();
        var name = "token_embd.weight"u8.ToArray();
        int at = bytes.AsSpan().LastIndexOf(name) + name.Length; // its tensor record (after the metadata)
        uint dims = BitConverter.ToUInt32(bytes, at);
        int typeAt = at + 4 + 8 * (int)dims;
        Assert.Equal((uint)GgmlType.F16, BitConverter.ToUInt32(bytes, typeAt));
        BitConverter.GetBytes((uint)GgmlType.Q8_0).CopyTo(bytes, typeAt);
        var e = Fails(bytes);
        Assert.Contains("token_embd.weight: q8_0 [256, 16] takes 4352 bytes", e.Message);
        Assert.Contains("this tensor's type or shape does not match its data", e.Message);
    }

    /// <summary>An RMS epsilon past 1 (damage: models use about 1e-5) is refused at load; 1e30 loaded and generated "time time time".</summary>
    [Fact]
    public void AnRmsEpsilonPastOneIsRefused()
    {
        var bytes = BitNetSharp.Model.SyntheticModel.Build(BitNetSharp.Model.SyntheticShape.Tiny, 5).ToArray();
        var key = ".attention.layer_norm_rms_epsilon"u8.ToArray();
        int at = bytes.AsSpan().IndexOf(key) + key.Length;
        Assert.Equal(6u, BitConverter.ToUInt32(bytes, at)); // float32
        BitConverter.GetBytes(1e30f).CopyTo(bytes, at + 4);
        using var file = GgufFile.Parse(bytes, "eps.gguf");
        var e = Assert.Throws<ModelFormatException>(() => BitNetSharp.Model.ModelWeights.FromGguf(file, ownsFile: false).Dispose());
        Assert.Contains("RMS norm epsilon 1E+30 is not a small number", e.Message);
    }

    [Fact]
    public void EveryTruncationOfAValidFileFails()
    {
        var bytes = TestGguf.Small().ToArray();
        long dataEnd;
        using (var whole = GgufFile.Parse(bytes))
        {
            dataEnd = 0;
            foreach (var t in whole.Tensors) dataEnd = Math.Max(dataEnd, whole.DataOffset + t.Offset + t.ByteSize);
        }
        for (int length = 0; length < dataEnd; length++)
        {
            var prefix = bytes.AsSpan(0, length).ToArray();
            var e = Assert.Throws<ModelFormatException>(() => GgufFile.Parse(prefix, "cut.gguf").Dispose());
            Assert.StartsWith("cut.gguf: ", e.Message);
        }
        // Only the zero padding after the last tensor may be cut: the data is all there.
        for (long length = dataEnd; length <= bytes.Length; length++)
            GgufFile.Parse(bytes.AsSpan(0, (int)length).ToArray()).Dispose();
    }

    /// <summary>
    /// A file cut inside a tensor names that tensor, "runs past the end of the file": the offsets were checked first, so
    /// the error named the next tensor in the file ("data offset … is past the end"), never the one that was cut.
    /// </summary>
    [Fact]
    public void ACutInsideATensorNamesThatTensor()
    {
        var bytes = BitNetSharp.Model.SyntheticModel.Build(BitNetSharp.Model.SyntheticShape.Tiny, 5).ToArray();
        string cutName;
        int cutAt;
        using (var whole = GgufFile.Parse(bytes))
        {
            var byOffset = whole.Tensors.OrderBy(t => t.Offset).ToArray();
            var victim = byOffset[byOffset.Length / 2]; // one with tensors after it
            cutName = victim.Name;
            cutAt = (int)(whole.DataOffset + victim.Offset + victim.ByteSize / 2);
        }
        var e = Fails(bytes.AsSpan(0, cutAt).ToArray());
        Assert.Equal(cutName, e.Item);
        Assert.Contains("runs past the end of the file", e.Message);
    }

    /// <summary>
    /// A tensor count one short: the last record is read as the padding before the data, which is zeros. Refused
    /// naming the count (the load blamed a tensor's codes, "the tensor is corrupt", every offset being off).
    /// </summary>
    [Fact]
    public void ATensorCountShortOfTheRecordsIsRefusedNamingTheCount()
    {
        var bytes = File.ReadAllBytes(RepositoryFiles.Path("models/bitnet-tinystories.gguf"));
        long count = BitConverter.ToInt64(bytes, 8);
        BitConverter.GetBytes(count - 1).CopyTo(bytes, 8);
        var e = Fails(bytes);
        Assert.Contains($"is likely short of the records the file holds", e.Message);
        Assert.Contains($"the header's tensor count ({count - 1})", e.Message);
    }

    [Fact]
    public void EmptyAndTinyFilesOnDiskFail()
    {
        using var dir = new TestGguf.TempDirectory();
        var empty = dir.File("empty.gguf");
        File.WriteAllBytes(empty, []);
        Assert.Contains("0 bytes", Assert.Throws<ModelFormatException>(() => GgufFile.Open(empty)).Message);
        var three = dir.File("three.gguf");
        File.WriteAllBytes(three, "GGU"u8.ToArray());
        Assert.Throws<ModelFormatException>(() => GgufFile.Open(three));
        var missing = Assert.Throws<ModelFormatException>(() => GgufFile.Open(dir.File("missing.gguf")));
        Assert.Contains("missing.gguf", missing.Message);
    }

    [Fact]
    public void BadMagicIsReportedWithTheBytesFound()
    {
        var bytes = TestGguf.TinyBitNet().ToArray();
        bytes[0] = (byte)'X';
        var e = Fails(bytes);
        Assert.Contains("not a GGUF file", e.Message);
        Assert.Contains("58 47 55 46", e.Message);
    }

    [Theory]
    [InlineData(1u, "version 1 is not supported")]
    [InlineData(4u, "unsupported GGUF version 4")]
    [InlineData(0x03000000u, "big-endian")]
    public void UnsupportedVersionsAreRejected(uint version, string expected)
    {
        var e = Fails(new RawBytes().GgufHeader(version, 0, 0).ToArray());
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void VersionTwoIsAccepted()
    {
        using var f = GgufFile.Parse(new RawBytes().GgufHeader(2, 0, 1).KvString("general.architecture", "llama").ToArray());
        Assert.Equal(2u, f.Version);
        Assert.Equal("llama", f.Metadata.Architecture);
    }

    [Fact]
    public void UnknownTensorTypeIsNamed()
    {
        var bytes = new RawBytes().GgufHeader(3, 1, 0).TensorInfo("w", 31, 0, 32).PadTo(32).Zeros(64).ToArray();
        var e = Fails(bytes);
        Assert.Equal("w", e.Item);
        Assert.Contains("unknown tensor type id 31", e.Message);
        var i8s = Fails(new RawBytes().GgufHeader(3, 1, 0).TensorInfo("w", 37, 0, 32).PadTo(32).Zeros(64).ToArray());
        Assert.Contains("i8_s", i8s.Message);
    }

    [Fact]
    public void OffsetPastTheEndIsRejected()
    {
        var bytes = new RawBytes().GgufHeader(3, 1, 0).TensorInfo("w", 0, 1024, 8).PadTo(32).Zeros(32).ToArray();
        var e = Fails(bytes);
        Assert.Equal("w", e.Item);
        Assert.Contains("past the end", e.Message);
    }

    [Fact]
    public void DataRunningPastTheEndIsRejected()
    {
        var bytes = new RawBytes().GgufHeader(3, 1, 0).TensorInfo("w", 0, 0, 16).PadTo(32).Zeros(32).ToArray();
        var e = Fails(bytes);
        Assert.Contains("needs 64 bytes", e.Message);
        Assert.Contains("truncated", e.Message);
    }

    [Fact]
    public void MisalignedOffsetIsRejected()
    {
        var bytes = new RawBytes().GgufHeader(3, 1, 0).TensorInfo("w", 0, 4, 8).PadTo(32).Zeros(64).ToArray();
        Assert.Contains("not a multiple of the alignment 32", Fails(bytes).Message);
    }

    [Fact]
    public void OverlappingTensorsAreRejected()
    {
        var bytes = new RawBytes().GgufHeader(3, 2, 0)
            .TensorInfo("a", 0, 0, 16) // 64 bytes, but b starts at 32
            .TensorInfo("b", 0, 32, 8)
            .PadTo(32).Zeros(128).ToArray();
        var e = Fails(bytes);
        Assert.Equal("a", e.Item);
        Assert.Contains("overlaps tensor 'b'", e.Message);
        var same = new RawBytes().GgufHeader(3, 2, 0).TensorInfo("a", 0, 0, 8).TensorInfo("b", 0, 0, 8).PadTo(32).Zeros(64).ToArray();
        Assert.Contains("overlaps", Fails(same).Message);
    }

    [Fact]
    public void ShapeThatDoesNotFitTheTypeIsRejected()
    {
        var bytes = new RawBytes().GgufHeader(3, 1, 0).TensorInfo("q", 35, 0, 100, 2).PadTo(32).Zeros(1024).ToArray();
        var e = Fails(bytes);
        Assert.Equal("q", e.Item);
        Assert.Contains("multiple of 256", e.Message);
        var tooMany = new RawBytes().GgufHeader(3, 1, 0).TensorInfo("q", 0, 0, 1, 1, 1, 1, 1).PadTo(32).Zeros(64).ToArray();
        Assert.Contains("5 dimensions", Fails(tooMany).Message);
        var zero = new RawBytes().GgufHeader(3, 1, 0).TensorInfo("q", 0, 0, 0).PadTo(32).Zeros(64).ToArray();
        Assert.Contains("dimension 0 is 0", Fails(zero).Message);
        var overflow = new RawBytes().GgufHeader(3, 1, 0).TensorInfo("q", 0, 0, 1UL << 40, 1UL << 40).PadTo(32).Zeros(64).ToArray();
        Assert.Contains("overflows", Fails(overflow).Message);
    }

    [Fact]
    public void HugeStringLengthFailsWithoutAllocating()
    {
        var bytes = new RawBytes().GgufHeader(3, 0, 1).Str("k").U32(8).U64(1UL << 60).Zeros(16).ToArray();
        var e = Fails(bytes);
        Assert.Contains("claims 1152921504606846976 bytes", e.Message);
        var hugeKey = new RawBytes().GgufHeader(3, 0, 1).U64(ulong.MaxValue).Zeros(16).ToArray();
        Assert.Throws<ModelFormatException>(() => GgufFile.Parse(hugeKey).Dispose());
    }

    [Fact]
    public void HugeArrayCountFailsWithoutAllocating()
    {
        var bytes = new RawBytes().GgufHeader(3, 0, 1).Str("k").U32(9).U32(4).U64(1UL << 40).Zeros(64).ToArray();
        var e = Fails(bytes);
        Assert.Equal("k", e.Item);
        Assert.Contains("cannot fit", e.Message);
        var strings = new RawBytes().GgufHeader(3, 0, 1).Str("k").U32(9).U32(8).U64(100).Zeros(64 * 8 - 8).ToArray();
        Assert.Contains("cannot fit", Fails(strings).Message);
    }

    [Fact]
    public void HugeHeaderCountsFail()
    {
        Assert.Contains("metadata entries", Fails(new RawBytes().GgufHeader(3, 0, ulong.MaxValue).Zeros(64).ToArray()).Message);
        Assert.Contains("tensors", Fails(new RawBytes().GgufHeader(3, 1UL << 62, 0).Zeros(64).ToArray()).Message);
    }

    [Fact]
    public void DeeplyNestedArraysFail()
    {
        var raw = new RawBytes().GgufHeader(3, 0, 1).Str("k").U32(9);
        for (int i = 0; i < 100; i++) raw.U32(9).U64(1);
        raw.U32(0).U64(0);
        Assert.Contains("nested", Fails(raw.ToArray()).Message);
    }

    [Fact]
    public void DuplicateKeysAndTensorNamesAreRejected()
    {
        var keys = new RawBytes().GgufHeader(3, 0, 2).KvU32("a", 1).KvU32("a", 2).ToArray();
        var e = Fails(keys);
        Assert.Equal("a", e.Item);
        Assert.Contains("duplicate metadata key", e.Message);
        var names = new RawBytes().GgufHeader(3, 2, 0).TensorInfo("t", 0, 0, 8).TensorInfo("t", 0, 32, 8).PadTo(32).Zeros(64).ToArray();
        Assert.Contains("duplicate tensor name", Fails(names).Message);
    }

    [Theory]
    [InlineData(0u)]
    [InlineData(12u)]
    [InlineData(7u)]
    public void BadAlignmentValuesAreRejected(uint alignment)
    {
        var bytes = new RawBytes().GgufHeader(3, 0, 1).KvU32("general.alignment", alignment).ToArray();
        var e = Fails(bytes);
        Assert.Equal("general.alignment", e.Item);
        Assert.Contains($"alignment {alignment} is invalid", e.Message);
        var wrongType = new RawBytes().GgufHeader(3, 0, 1).KvString("general.alignment", "32").ToArray();
        Assert.Contains("expected a uint32", Fails(wrongType).Message);
    }

    [Fact]
    public void AlignmentThatIsAMultipleOfEightButNotAPowerOfTwoIsAcceptedAsTheSpecSays()
    {
        var bytes = new RawBytes().GgufHeader(3, 1, 1).KvU32("general.alignment", 24)
            .TensorInfo("w", 0, 24, 2).PadTo(24).Zeros(48).ToArray();
        using var f = GgufFile.Parse(bytes);
        Assert.Equal(24, f.Alignment);
        Assert.Equal(0, f.DataOffset % 24);
        Assert.Equal(24, f.Tensors[0].Offset);
    }

    [Fact]
    public void InvalidBoolAndUnknownValueTypeAreRejected()
    {
        Assert.Contains("expected 0 or 1", Fails(new RawBytes().GgufHeader(3, 0, 1).Str("b").U32(7).U8(2).ToArray()).Message);
        Assert.Contains("unknown metadata value type 13", Fails(new RawBytes().GgufHeader(3, 0, 1).Str("b").U32(13).U64(0).ToArray()).Message);
    }
}
