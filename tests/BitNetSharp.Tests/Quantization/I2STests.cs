using System.Buffers.Binary;
using BitNetSharp.Memory;
using BitNetSharp.Quantization;

namespace BitNetSharp.Tests.Quantization;

public unsafe class I2STests
{
    /// <summary>n/4 code bytes, all code 1 (0b01 in every pair), then the tail with the scale.</summary>
    private static byte[] ZeroTensor(int rows, int cols, float scale)
    {
        var bytes = new byte[I2S.ByteLength(rows, cols)];
        int codeBytes = rows * cols / 4;
        bytes.AsSpan(0, codeBytes).Fill(0b01_01_01_01);
        BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(codeBytes), scale);
        return bytes;
    }

    [Fact]
    public void ByteE4MapsMostSignificantPairFirst()
    {
        var bytes = ZeroTensor(1, 128, 0.5f);
        bytes[0] = 0xE4; // 0b11_10_01_00: j=0 → 3, j=32 → 2, j=64 → 1, j=96 → 0
        var values = new float[128];
        I2S.Dequantize(bytes, 1, 128, values);
        Assert.Equal([2 * 0.5f, 0.5f, 0f, -0.5f], new[] { values[0], values[32], values[64], values[96] });

        // Code 3 is not a ternary weight: the runtime decoders refuse it, naming where it is.
        var ex = Assert.Throws<InvalidDataException>(() => I2S.Decode(bytes, 1, 128));
        Assert.Contains("row 0, column 0", ex.Message);
    }

    [Fact]
    public void HandBuiltBlockDecodesToTheSpecifiedElements()
    {
        var bytes = ZeroTensor(2, 128, 0.25f);
        bytes[0] = 0b00_10_01_00;      // j=0 → −1, j=32 → +1, j=64 → 0, j=96 → −1
        bytes[32 + 31] = 0b10_01_01_01; // row 1 (second block), j=31 → +1
        using var m = I2S.Decode(bytes, 2, 128);
        Assert.Equal([0.25f, 0.25f], m.RowScales);
        Assert.Equal(-1, m.Get(0, 0));
        Assert.Equal(1, m.Get(0, 32));
        Assert.Equal(0, m.Get(0, 64));
        Assert.Equal(-1, m.Get(0, 96));
        Assert.Equal(1, m.Get(1, 31));
        Assert.Equal(4, CountNonzero(m));
    }

    [Fact]
    public void RowsThatStraddleBlocksAreRepacked()
    {
        // 2 × 64: one flat block; row 1 starts at j = 64.
        var bytes = ZeroTensor(2, 64, 1f);
        bytes[0] = 0b10_01_00_10; // j=0 (r0 c0) → +1, j=32 (r0 c32) → 0, j=64 (r1 c0) → −1, j=96 (r1 c32) → +1
        bytes[5] = 0b01_00_01_01; // j=37 (r0 c37) → −1
        using var m = I2S.Decode(bytes, 2, 64);
        Assert.Equal(1, m.Get(0, 0));
        Assert.Equal(0, m.Get(0, 32));
        Assert.Equal(-1, m.Get(0, 37));
        Assert.Equal(-1, m.Get(1, 0));
        Assert.Equal(1, m.Get(1, 32));
        Assert.Equal(4, CountNonzero(m));
    }

    private static int CountNonzero(TernaryMatrix m)
    {
        var counts = TernaryCodeCounts.Of(m);
        return (int)(counts.Minus + counts.Plus);
    }

    [Theory]
    [InlineData(3, 256)]
    [InlineData(7, 640)]
    [InlineData(16, 200)]
    [InlineData(128, 333)]
    [InlineData(2, 64)]
    public void EncodeThenDecodeRoundTrips(int rows, int cols)
    {
        using var m = TernaryFixtures.Random(rows, cols, seed: rows * 1000 + cols, _ => 1.2345f);
        var bytes = I2S.Encode(m);
        Assert.Equal(rows * cols / 4 + 32, bytes.Length);
        Assert.Equal(1.2345f, BinaryPrimitives.ReadSingleLittleEndian(bytes.AsSpan(rows * cols / 4)));
        Assert.All(bytes[(rows * cols / 4 + 4)..], b => Assert.Equal(0, b));
        using var back = I2S.Decode(bytes, rows, cols);
        TernaryFixtures.AssertSame(m, back);

        var reference = new float[rows * cols];
        I2S.Dequantize(bytes, rows, cols, reference);
        Assert.Equal(reference, Dequantizer.ToFloat(back));
    }

    [Fact]
    public void InPlaceWrapSeesTheSameValuesAsARepackWithoutCopying()
    {
        const int rows = 6, cols = 384;
        using var m = TernaryFixtures.Random(rows, cols, seed: 5, _ => 0.875f);
        var bytes = I2S.Encode(m);
        using var file = new NativeBuffer(bytes.Length);
        bytes.CopyTo(new Span<byte>(file.Pointer, bytes.Length));

        Assert.True(I2S.TryWrapInPlace(file.Pointer, file.ByteLength, rows, cols, file, out var wrapped));
        using (wrapped)
        {
            Assert.True(wrapped.Data == file.Pointer);
            Assert.False(wrapped.OwnsOwner);
            using var repacked = I2S.Decode(bytes, rows, cols);
            TernaryFixtures.AssertSame(repacked, wrapped);
            TernaryFixtures.AssertSame(m, wrapped);
        }
        // Disposing the wrapper left the file's memory alone.
        Assert.Equal(bytes, new Span<byte>(file.Pointer, bytes.Length).ToArray());
    }

    [Fact]
    public void InPlaceWrapDeclinesRowsThatStraddleBlocks()
    {
        var bytes = ZeroTensor(16, 200, 1f);
        fixed (byte* p = bytes)
        {
            Assert.False(I2S.TryWrapInPlace(p, bytes.Length, 16, 200, bytes, out var none));
            Assert.Null(none);
            using var m = I2S.WrapOrDecode(p, bytes.Length, 16, 200, bytes);
            Assert.True(m.OwnsOwner);
            Assert.Equal(16 * 200, TernaryCodeCounts.Of(m).Zero);
        }
    }

    [Fact]
    public void InPlaceWrapRefusesCode3()
    {
        var bytes = ZeroTensor(2, 128, 1f);
        bytes[32 + 3] = 0b01_01_11_01; // row 1, j = 64 + 3
        using var file = new NativeBuffer(bytes.Length);
        bytes.CopyTo(new Span<byte>(file.Pointer, bytes.Length));

        var ex = Assert.Throws<InvalidDataException>(() => I2S.TryWrapInPlace(file.Pointer, file.ByteLength, 2, 128, file, out _));
        Assert.Contains("row 1, column 67", ex.Message);
        Assert.True(I2S.TryWrapInPlace(file.Pointer, file.ByteLength, 2, 128, file, out var unvalidated, validateCodes: false));
        using (unvalidated) Assert.Equal(1, TernaryCodeCounts.Of(unvalidated).Invalid);
    }

    [Fact]
    public void LengthAndShapeAreValidated()
    {
        var ok = ZeroTensor(1, 128, 1f);
        var ex = Assert.Throws<ArgumentException>(() => I2S.Decode(ok.AsSpan(0, ok.Length - 1), 1, 128));
        Assert.Contains("= 64 bytes", ex.Message);
        Assert.Throws<ArgumentException>(() => I2S.ByteLength(3, 100)); // 300 weights: not whole blocks

        BinaryPrimitives.WriteSingleLittleEndian(ok.AsSpan(32), float.NaN);
        Assert.Throws<InvalidDataException>(() => I2S.Decode(ok, 1, 128));
        // Negative: bitnet.cpp writes max|w|; a −1 flipped the layer's products and generated (GGUF fuzz sweep). 0 stays (an all-zero tensor).
        BinaryPrimitives.WriteSingleLittleEndian(ok.AsSpan(32), -1f);
        Assert.Contains("≥ 0", Assert.Throws<InvalidDataException>(() => I2S.Decode(ok, 1, 128)).Message);
        BinaryPrimitives.WriteSingleLittleEndian(ok.AsSpan(32), 0f);
        I2S.Decode(ok, 1, 128).Dispose();
    }

    /// <summary>
    /// A negative row scale (TQ1_0/TQ2_0 block scales may be negative) is written as its magnitude with the row's codes
    /// negated: the same weights, where the scale was written negative and the loader refused the converted file. Rows of
    /// one magnitude and either sign are one I2_S tensor.
    /// </summary>
    [Theory]
    [InlineData(4, 256)]
    [InlineData(16, 200)]
    public void NegativeRowScalesAreWrittenAsNegatedCodes(int rows, int cols)
    {
        using var m = TernaryFixtures.Random(rows, cols, seed: 11, r => r % 2 == 0 ? -0.75f : 0.75f);
        var expected = Dequantizer.ToFloat(m);
        Assert.Contains(expected, v => v != 0f);
        var bytes = I2S.Encode(m);
        Assert.Equal(0.75f, BinaryPrimitives.ReadSingleLittleEndian(bytes.AsSpan(rows * cols / 4)));
        var reference = new float[rows * cols];
        I2S.Dequantize(bytes, rows, cols, reference);
        Assert.Equal(expected, reference);
        using var back = I2S.Decode(bytes, rows, cols);
        Assert.Equal(expected, Dequantizer.ToFloat(back));
    }

    [Fact]
    public void EncodeRefusesDifferentRowScales()
    {
        using var m = TernaryFixtures.Random(2, 128, seed: 1, r => r + 1f);
        var ex = Assert.Throws<ArgumentException>(() => I2S.Encode(m));
        Assert.Contains("one scale per tensor", ex.Message);
    }
}
