using BitNetSharp.Quantization;

namespace BitNetSharp.Tests.Quantization;

/// <summary>Random ternary matrices and comparisons shared by the codec tests.</summary>
internal static class TernaryFixtures
{
    /// <summary>A rows × cols matrix of uniformly random −1/0/+1 with the given per-row scales (or 1).</summary>
    public static TernaryMatrix Random(int rows, int cols, int seed, Func<int, float>? rowScale = null)
    {
        var rng = new Random(seed);
        var m = TernaryMatrix.Allocate(rows, cols);
        for (int r = 0; r < rows; r++)
        {
            m.RowScales[r] = rowScale?.Invoke(r) ?? 1f;
            for (int c = 0; c < cols; c++) m.Set(r, c, rng.Next(3) - 1);
        }
        return m;
    }

    /// <summary>Same shape, same codes, same row scales, padding still code 1.</summary>
    public static unsafe void AssertSame(TernaryMatrix expected, TernaryMatrix actual)
    {
        Assert.Equal(expected.Rows, actual.Rows);
        Assert.Equal(expected.Cols, actual.Cols);
        Assert.Equal(expected.RowScales, actual.RowScales);
        Assert.Equal(Dequantizer.ToTernary(expected), Dequantizer.ToTernary(actual));
        for (int r = 0; r < actual.Rows; r++)
        for (int c = actual.Cols; c < actual.PaddedCols; c++)
            Assert.Equal(0, actual.Get(r, c));
    }
}
