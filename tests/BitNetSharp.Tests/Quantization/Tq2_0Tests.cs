using System.Buffers.Binary;
using BitNetSharp.Quantization;

namespace BitNetSharp.Tests.Quantization;

public class Tq2_0Tests
{
    private const ushort HalfOne = 0x3C00, HalfHalf = 0x3800, HalfQuarter = 0x3400;

    /// <summary>One all-zero TQ2_0 block (every code 1 = 0b01) with scale d.</summary>
    private static byte[] ZeroBlock(ushort d)
    {
        var block = new byte[Tq2_0.BlockBytes];
        block.AsSpan(0, 64).Fill(0b01_01_01_01);
        BinaryPrimitives.WriteUInt16LittleEndian(block.AsSpan(64), d);
        return block;
    }

    [Fact]
    public void HandBuiltBlockDecodesToTheSpecifiedElements()
    {
        var block = ZeroBlock(HalfHalf);
        // qs[0]: pairs [1:0]=10, [3:2]=00, [5:4]=01, [7:6]=10 → elements 0, 32, 64, 96 (half 0, m 0, l 0..3) = +1, −1, 0, +1.
        block[0] = 0b10_01_00_10;
        // qs[32 + 5] is half 1, m 5: all pairs 00 → elements 128+5, 160+5, 192+5, 224+5 = −1.
        block[37] = 0b00_00_00_00;

        using var m = Tq2_0.Decode(block, rows: 1, cols: 256);

        Assert.Equal(0.5f, m.RowScales[0]);
        var expected = new int[256];
        expected[0] = 1; expected[32] = -1; expected[64] = 0; expected[96] = 1;
        expected[133] = expected[165] = expected[197] = expected[229] = -1;
        for (int e = 0; e < 256; e++) Assert.Equal(expected[e], m.Get(0, e));

        var reference = new float[256];
        Tq2_0.Dequantize(block, reference);
        Assert.Equal(reference, Dequantizer.ToFloat(m));
    }

    [Fact]
    public void EachRowTakesItsBlocksScale()
    {
        var a = ZeroBlock(HalfHalf); a[1] = 0b01_01_01_10;    // element 1 = +1
        var b = ZeroBlock(HalfQuarter); b[2] = 0b01_01_01_00; // element 2 = −1
        using var m = Tq2_0.Decode([.. a, .. b], rows: 2, cols: 256);
        Assert.Equal([0.5f, 0.25f], m.RowScales);
        Assert.Equal(0.5f, m.GetFloat(0, 1));
        Assert.Equal(-0.25f, m.GetFloat(1, 2));
    }

    [Fact]
    public void ZeroBlocksDoNotConstrainTheScaleAndZeroRowsTakeTheTensorScale()
    {
        var nonzero = ZeroBlock(HalfHalf); nonzero[0] = 0b01_01_01_10;
        var zeroWithOtherScale = ZeroBlock(HalfOne);
        var zeroScaleWithCodes = ZeroBlock(0x8000); zeroScaleWithCodes[0] = 0b10_10_10_10; // d = −0: all values 0
        using var m = Tq2_0.Decode([.. zeroWithOtherScale, .. zeroScaleWithCodes, .. nonzero, .. zeroWithOtherScale], rows: 2, cols: 512);
        Assert.Equal([0.5f, 0.5f], m.RowScales);
        for (int c = 0; c < 512; c++) Assert.Equal(0, m.Get(0, c));
        Assert.Equal(1, m.Get(1, 0));
    }

    [Fact]
    public void MixedBlockScalesInOneRowAreRefused()
    {
        var a = ZeroBlock(HalfHalf); a[0] = 0b01_01_01_10;
        var b = ZeroBlock(HalfQuarter); b[0] = 0b01_01_01_10;
        var ex = Assert.Throws<InvalidDataException>(() => Tq2_0.Decode([.. a, .. b], rows: 1, cols: 512));
        Assert.Contains("row 0", ex.Message);
        Assert.Contains("0.5", ex.Message);
        Assert.Contains("0.25", ex.Message);
    }

    [Fact]
    public void Code3IsRefusedWithItsPosition()
    {
        var block = ZeroBlock(HalfOne);
        block[32 + 7] = 0b01_11_01_01; // half 1, m 7, l 2 → element 128 + 64 + 7 = 199
        var ex = Assert.Throws<InvalidDataException>(() => Tq2_0.Decode(block, rows: 1, cols: 256));
        Assert.Contains("column 199", ex.Message);
    }

    [Fact]
    public void WrongByteCountIsRefused()
    {
        Assert.Throws<ArgumentException>(() => Tq2_0.Decode(new byte[65], rows: 1, cols: 256));
    }

    [Theory]
    [InlineData(200)]
    [InlineData(333)]
    [InlineData(384)]
    public void EncodeRefusesColumnsThatAreNotWholeBlocks(int cols)
    {
        using var m = TernaryFixtures.Random(2, cols, seed: cols);
        var ex = Assert.Throws<ArgumentException>(() => Tq2_0.Encode(m));
        Assert.Contains("TQ2_0 needs rows that are a multiple of 256 weights", ex.Message);
        Assert.Contains($"K={cols}", ex.Message);
    }

    [Theory]
    [InlineData(1, 256)]
    [InlineData(5, 512)]
    [InlineData(3, 2560)]
    public void EncodeThenDecodeRoundTrips(int rows, int cols)
    {
        // Scales fp16 can hold exactly, since TQ2_0 stores d as fp16.
        using var m = TernaryFixtures.Random(rows, cols, seed: rows * cols, r => 0.125f * (r + 1));
        var bytes = Tq2_0.Encode(m);
        Assert.Equal(Tq2_0.ByteLength(rows, cols), bytes.Length);
        using var back = Tq2_0.Decode(bytes, rows, cols);
        TernaryFixtures.AssertSame(m, back);

        var reference = new float[rows * cols];
        Tq2_0.Dequantize(bytes, reference);
        Assert.Equal(reference, Dequantizer.ToFloat(back));
    }

    [Fact]
    public void EncodeRoundsTheScaleToHalf()
    {
        using var m = TernaryFixtures.Random(1, 256, seed: 7, _ => 0.1f);
        using var back = Tq2_0.Decode(Tq2_0.Encode(m), 1, 256);
        Assert.Equal((float)(Half)0.1f, back.RowScales[0]);
    }

    [Fact]
    public void ReferenceQuantizerKeepsTernarizedWeightsExactly()
    {
        const int rows = 3, cols = 512;
        float beta = (float)(Half)0.0371f;
        var rng = new Random(11);
        var w = new float[rows * cols];
        for (int i = 0; i < w.Length; i++) w[i] = (rng.Next(3) - 1) * beta;
        w[0] = beta; // every block of row 0 certainly has a nonzero

        using var m = Tq2_0.Decode(Tq2_0.QuantizeReference(w, rows, cols), rows, cols);
        Assert.Equal(w, Dequantizer.ToFloat(m));
    }

    [Fact]
    public void ReferenceQuantizerRoundsHalfAwayFromZero()
    {
        var x = new float[256];
        x[0] = 1f;     // d = 1
        x[1] = 0.5f;   // lroundf(0.5) = 1, where round-half-even would give 0
        x[2] = -0.5f;  // −1
        x[3] = 0.49f;  // 0
        var bytes = new byte[Tq2_0.BlockBytes];
        Tq2_0.QuantizeReference(x, bytes);
        var values = new float[256];
        Tq2_0.Dequantize(bytes, values);
        Assert.Equal([1f, 1f, -1f, 0f], values[..4]);
        Assert.Equal(HalfOne, BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(64)));
    }

    /// <summary>
    /// The reference quantizers refuse a block whose scale fp16 cannot hold (a value past 65504, NaN, ∞), as Encode does:
    /// they wrote an ∞ or NaN scale that Decode then refused.
    /// </summary>
    [Theory]
    [InlineData(70000f)]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    public void ReferenceQuantizersRefuseAScaleFp16CannotHold(float value)
    {
        var x = new float[256];
        x[5] = 0.5f;
        x[9] = value;
        Assert.Throws<ArgumentException>(() => Tq2_0.QuantizeReference(x, new byte[Tq2_0.BlockBytes]));
        Assert.Throws<ArgumentException>(() => Tq1_0.QuantizeReference(x, new byte[Tq1_0.BlockBytes]));
    }
}
