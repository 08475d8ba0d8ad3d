using BitNetSharp.Quantization;

namespace BitNetSharp.Tests.Quantization;

public unsafe class TernaryRowCodesTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(127)]
    [InlineData(128)]
    [InlineData(333)]
    public void PackAndUnpackAgreeWithTheMatrixAccessors(int cols)
    {
        using var m = TernaryFixtures.Random(2, cols, seed: cols);
        var codes = new byte[m.PaddedCols];
        TernaryRowCodes.UnpackRow(m.Row(1), codes);
        for (int c = 0; c < m.PaddedCols; c++) Assert.Equal(m.Get(1, c) + 1, codes[c]);

        using var copy = TernaryMatrix.Allocate(1, cols);
        Assert.True(TernaryRowCodes.PackRow(codes, copy.Row(0)));
        Assert.Equal(new Span<byte>(m.Row(1), m.RowBytes).ToArray(), new Span<byte>(copy.Row(0), copy.RowBytes).ToArray());
    }

    [Fact]
    public void PackReportsCodesAboveTwo()
    {
        using var m = TernaryMatrix.Allocate(1, 256);
        var codes = new byte[256];
        codes.AsSpan().Fill(1);
        codes[0] = 2; codes[32] = 1; // 2|1 = 3 must not look invalid
        Assert.True(TernaryRowCodes.PackRow(codes, m.Row(0)));
        codes[200] = 3;
        Assert.False(TernaryRowCodes.PackRow(codes, m.Row(0)));
        Assert.Equal(200, TernaryRowCodes.IndexOfInvalid(codes));
    }

    [Fact]
    public void Code3ScanFindsAPairInTheTail()
    {
        var bytes = new byte[37];
        bytes.AsSpan().Fill(0b10_01_00_10);
        Assert.False(TernaryRowCodes.ContainsCode3(bytes));
        bytes[36] = 0b00_11_00_00;
        Assert.True(TernaryRowCodes.ContainsCode3(bytes));
        bytes[36] = 0b00_01_10_00; // bits across a pair boundary are not a code 3
        Assert.False(TernaryRowCodes.ContainsCode3(bytes));
    }
}
