using System.Buffers.Binary;
using BitNetSharp.Quantization;

namespace BitNetSharp.Tests.Quantization;

public class Tq1_0Tests
{
    // Stored bytes worked out by hand from FORMATS.md §2.3: b = (v·256 + 242) / 243, v = Σ t_i·3^(4−i).
    private const byte AllZeroQs = 128;  // trits 1,1,1,1,1: v = 121, (30976 + 242) / 243 = 128
    private const byte AllZeroQh = 127;  // trits 1,1,1,1 then ×3: v = 120, (30720 + 242) / 243 = 127
    private const byte Qs0 = 188;        // trits 2,0,1,2,1: v = 162 + 0 + 9 + 6 + 1 = 178, (45568 + 242) / 243 = 188
    private const byte Qs35 = 70;        // trits 0,2,1,1,0: v = 0 + 54 + 9 + 3 + 0 = 66, (16896 + 242) / 243 = 70
    private const byte Qh2 = 231;        // trits 2,2,0,1 then ×3: v = (54 + 18 + 0 + 1)·3 = 219, (56064 + 242) / 243 = 231

    private static byte[] ZeroBlock(ushort d)
    {
        var block = new byte[Tq1_0.BlockBytes];
        block.AsSpan(0, 48).Fill(AllZeroQs);
        block.AsSpan(48, 4).Fill(AllZeroQh);
        BinaryPrimitives.WriteUInt16LittleEndian(block.AsSpan(52), d);
        return block;
    }

    [Fact]
    public void HandComputedBytesMatchTheEncoder()
    {
        Assert.Equal(AllZeroQs, Tq1_0.PackTrits(1, 1, 1, 1, 1));
        Assert.Equal(AllZeroQh, Tq1_0.PackTrits(1, 1, 1, 1, 0));
        Assert.Equal(Qs0, Tq1_0.PackTrits(2, 0, 1, 2, 1));
        Assert.Equal(Qs35, Tq1_0.PackTrits(0, 2, 1, 1, 0));
        Assert.Equal(Qh2, Tq1_0.PackTrits(2, 2, 0, 1, 0));
    }

    [Fact]
    public void EveryFiveTritGroupSurvivesPackAndTrit()
    {
        for (int v = 0; v < 243; v++)
        {
            int[] t = [v / 81, v / 27 % 3, v / 9 % 3, v / 3 % 3, v % 3];
            byte b = Tq1_0.PackTrits(t[0], t[1], t[2], t[3], t[4]);
            for (int n = 0; n < 5; n++) Assert.Equal(t[n], Tq1_0.Trit(b, n));
        }
    }

    [Fact]
    public void HandBuiltBlockDecodesToTheSpecifiedElements()
    {
        var block = ZeroBlock(0x3800); // d = 0.5
        block[0] = Qs0;        // elements 0, 32, 64, 96, 128 (n = e/32, m = 0)
        block[32 + 3] = Qs35;  // elements 160 + n·16 + 3: 163, 179, 195, 211, 227
        block[48 + 2] = Qh2;   // elements 240 + n·4 + 2: 242, 246, 250, 254

        using var m = Tq1_0.Decode(block, rows: 1, cols: 256);

        var expected = new int[256];
        (expected[0], expected[32], expected[64], expected[96], expected[128]) = (1, -1, 0, 1, 0);
        (expected[163], expected[179], expected[195], expected[211], expected[227]) = (-1, 1, 0, 0, -1);
        (expected[242], expected[246], expected[250], expected[254]) = (1, 1, -1, 0);
        for (int e = 0; e < 256; e++) Assert.Equal(expected[e], m.Get(0, e));
        Assert.Equal(0.5f, m.RowScales[0]);

        var reference = new float[256];
        Tq1_0.Dequantize(block, reference);
        Assert.Equal(reference, Dequantizer.ToFloat(m));
    }

    [Fact]
    public void MixedBlockScalesInOneRowAreRefused()
    {
        var a = ZeroBlock(0x3800); a[0] = Qs0;
        var b = ZeroBlock(0x3C00); b[0] = Qs0;
        Assert.Throws<InvalidDataException>(() => Tq1_0.Decode([.. a, .. b], rows: 1, cols: 512));
    }

    [Theory]
    [InlineData(1, 256)]
    [InlineData(4, 768)]
    [InlineData(2, 2560)]
    public void EncodeThenDecodeRoundTrips(int rows, int cols)
    {
        using var m = TernaryFixtures.Random(rows, cols, seed: rows + cols, r => 1.5f + r);
        var bytes = Tq1_0.Encode(m);
        Assert.Equal(Tq1_0.ByteLength(rows, cols), bytes.Length);
        using var back = Tq1_0.Decode(bytes, rows, cols);
        TernaryFixtures.AssertSame(m, back);

        var reference = new float[rows * cols];
        Tq1_0.Dequantize(bytes, reference);
        Assert.Equal(reference, Dequantizer.ToFloat(back));
    }

    [Fact]
    public void EncodeMatchesTheReferenceQuantizer()
    {
        // Ternarized weights (±d, 0) through llama.cpp's reference quantizer give the same bytes as encoding the codes.
        using var m = TernaryFixtures.Random(2, 512, seed: 3, _ => 0.75f);
        for (int r = 0; r < 2; r++) m.Set(r, 0, 1); // max|x| = d in every block
        for (int r = 0; r < 2; r++) m.Set(r, 256, -1);
        Assert.Equal(Tq1_0.Encode(m), QuantizeReference(Dequantizer.ToFloat(m)));
    }

    private static byte[] QuantizeReference(float[] x)
    {
        var bytes = new byte[x.Length / 256 * Tq1_0.BlockBytes];
        Tq1_0.QuantizeReference(x, bytes);
        return bytes;
    }

    [Theory]
    [InlineData(200)]
    [InlineData(333)]
    public void EncodeRefusesColumnsThatAreNotWholeBlocks(int cols)
    {
        using var m = TernaryFixtures.Random(1, cols, seed: 1);
        var ex = Assert.Throws<ArgumentException>(() => Tq1_0.Encode(m));
        Assert.Contains($"K={cols}", ex.Message);
    }
}
