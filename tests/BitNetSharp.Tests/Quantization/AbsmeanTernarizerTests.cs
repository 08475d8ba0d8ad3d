using BitNetSharp.Quantization;

namespace BitNetSharp.Tests.Quantization;

public class AbsmeanTernarizerTests
{
    // mean|W| = 4/8 = 0.5 exactly, so s = 2 and W·s lands on ±0.5 and ±2.5, where round-half-even matters.
    private static readonly float[] TieWeights = [0.25f, -0.25f, 0.75f, -1.25f, 0.5f, 0f, 1.0f, 0f];

    [Fact]
    public void TiesRoundToEvenAndLargeValuesClamp()
    {
        using var m = AbsmeanTernarizer.FromFloat32(TieWeights, rows: 2, cols: 4);
        // W·s = 0.5, −0.5, 1.5, −2.5 | 1, 0, 2, 0 → 0, 0, 2→1, −2→−1 | 1, 0, 1, 0
        Assert.Equal(new sbyte[] { 0, 0, 1, -1, 1, 0, 1, 0 }, Dequantizer.ToTernary(m));
        Assert.Equal([0.5f, 0.5f], m.RowScales);
    }

    [Fact]
    public void HalfAndBFloat16InputsMatchFloat32()
    {
        // Every value above is exact in fp16 and bf16.
        ushort[] f16 = Array.ConvertAll(TieWeights, HalfConversions.FloatToHalf);
        ushort[] bf16 = Array.ConvertAll(TieWeights, HalfConversions.FloatToBFloat16);
        using var a = AbsmeanTernarizer.FromFloat32(TieWeights, 2, 4);
        using var b = AbsmeanTernarizer.FromFloat16(f16, 2, 4);
        using var c = AbsmeanTernarizer.FromBFloat16(bf16, 2, 4);
        TernaryFixtures.AssertSame(a, b);
        TernaryFixtures.AssertSame(a, c);
    }

    [Fact]
    public void GeneralMatrixMatchesHandComputedCodes()
    {
        float[] w = [0.5f, -1.0f, 0.1f, 2.0f, -0.3f, 0.0f, 0.26f, -0.7f];
        // mean|W| = 4.86 / 8 = 0.6075, s ≈ 1.6461: W·s ≈ 0.823, −1.646, 0.165, 3.292 | −0.494, 0, 0.428, −1.152
        using var m = AbsmeanTernarizer.FromFloat32(w, 2, 4);
        Assert.Equal(new sbyte[] { 1, -1, 0, 1, 0, 0, 0, -1 }, Dequantizer.ToTernary(m));

        float beta = (float)(4.86 / 8); // the double sum of these floats rounds to the same fp32 value
        Assert.Equal(beta, AbsmeanTernarizer.Beta(w));
        float s = 1f / beta;
        Assert.Equal(1f / s, m.RowScales[0]); // what round(W·s)/s multiplies by
    }

    [Fact]
    public void ProductNotQuotientDecidesTheBoundary()
    {
        // w one ulp above β/2: w/β rounds to just above 0.5 (→ 1), but fl(1/β) is rounded down enough that
        // w·fl(1/β) rounds to exactly 0.5 (a tie, → 0). β found by a random search; the ternarizer must follow
        // the product, as PyTorch's (W*s).round() does.
        float beta = 0.94402134f;
        float w = MathF.BitIncrement(0.5f * beta), s = 1f / beta;
        Assert.Equal(1f, MathF.Round(w / beta));
        Assert.Equal(0f, MathF.Round(w * s));
        Assert.Equal(0, AbsmeanTernarizer.Ternary(w, s));
    }

    [Fact]
    public void CompareFormEqualsClampOfRoundHalfEven()
    {
        var ys = new List<float> { 0f, -0f, 1e-30f, float.MaxValue, float.MinValue, 3e9f, -3e9f };
        foreach (float edge in new[] { 0.5f, 1f, 1.5f, 2.5f })
        {
            float y = MathF.BitDecrement(MathF.BitDecrement(edge));
            for (int k = 0; k < 5; k++, y = MathF.BitIncrement(y))
            {
                ys.Add(y);
                ys.Add(-y);
            }
        }
        var rng = new Random(4);
        for (int i = 0; i < 2000; i++) ys.Add((float)(rng.NextDouble() * 6 - 3));

        foreach (float y in ys)
            Assert.Equal((int)Math.Clamp(MathF.Round(y, MidpointRounding.ToEven), -1f, 1f), AbsmeanTernarizer.Ternary(y, 1f));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(15)]
    [InlineData(16)]
    [InlineData(333)]
    public void VectorCodesMatchScalarCodes(int length)
    {
        var rng = new Random(length);
        var x = new float[length];
        for (int i = 0; i < length; i++) x[i] = (float)(rng.NextDouble() * 4 - 2);
        x[0] = 0.25f; // × s = 2 → a 0.5 tie
        var codes = new byte[length];
        LatentWeights.TernaryCodes(x, 2f, codes);
        for (int i = 0; i < length; i++) Assert.Equal(AbsmeanTernarizer.Ternary(x[i], 2f) + 1, codes[i]);
        Assert.Equal(1, codes[0]);
    }

    [Fact]
    public void AllZeroWeightsUseTheClampedBeta()
    {
        using var m = AbsmeanTernarizer.FromFloat32(new float[200], 1, 200);
        Assert.Equal(1f / (1f / 1e-5f), m.RowScales[0]);
        Assert.Equal(200, TernaryCodeCounts.Of(m).Zero);
    }

    [Fact]
    public void OddShapesPadWithZeros()
    {
        var rng = new Random(9);
        var w = new float[3 * 333];
        for (int i = 0; i < w.Length; i++) w[i] = (float)(rng.NextDouble() * 2 - 1);
        using var m = AbsmeanTernarizer.FromFloat32(w, 3, 333);
        float s = 1f / AbsmeanTernarizer.Beta(w);
        var t = Dequantizer.ToTernary(m);
        for (int i = 0; i < w.Length; i++) Assert.Equal(AbsmeanTernarizer.Ternary(w[i], s), t[i]);
        for (int c = 333; c < m.PaddedCols; c++) Assert.Equal(0, m.Get(2, c));
        var counts = TernaryCodeCounts.Of(m);
        Assert.Equal(w.Length, counts.Total);
        Assert.Equal(0, counts.Invalid);
    }

    [Fact]
    public void NonFiniteWeightsAreRefused()
    {
        Assert.Throws<ArgumentException>(() => AbsmeanTernarizer.FromFloat32([1f, float.NaN], 1, 2));
        Assert.Throws<ArgumentException>(() => AbsmeanTernarizer.FromFloat32([1f, 2f, 3f], 1, 2));
    }
}

public class SignBinarizerTests
{
    [Fact]
    public void SignWithZeroAsPlusOneAndAbsmeanScale()
    {
        float[] w = [0.5f, -0.1f, 0f, -2f, 0.3f, -0.3f, 0.2f, 1.2f, -0.0f];
        using var m = SignBinarizer.FromFloat32(w, rows: 1, cols: 9);
        Assert.Equal([1, -1, 1, -1, 1, -1, 1, 1, 1], Enumerable.Range(0, 9).Select(c => m.Get(0, c)));
        float beta = (float)(4.6 / 9);
        Assert.Equal(beta, m.RowScales[0], 6);
        Assert.Equal(Array.ConvertAll(w, v => v >= 0 ? m.RowScales[0] : -m.RowScales[0]), Dequantizer.ToFloat(m));
        for (int c = 9; c < m.PaddedCols; c++) Assert.Equal(-1, m.Get(0, c)); // padding bits 0
    }

    [Fact]
    public void CentredSubtractsTheMean()
    {
        float[] w = [1f, 2f, 3f, 6f]; // mean 3
        using var plain = SignBinarizer.FromFloat32(w, 1, 4);
        using var centred = SignBinarizer.FromFloat32(w, 1, 4, centred: true);
        Assert.Equal([1, 1, 1, 1], Enumerable.Range(0, 4).Select(c => plain.Get(0, c)));
        Assert.Equal([-1, -1, 1, 1], Enumerable.Range(0, 4).Select(c => centred.Get(0, c)));
        Assert.Equal(3f, centred.RowScales[0]);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void OddWidthsMatchAPerElementSign(bool centred)
    {
        const int rows = 3, cols = 203;
        var rng = new Random(centred ? 1 : 2);
        var w = new float[rows * cols];
        for (int i = 0; i < w.Length; i++) w[i] = (float)(rng.NextDouble() - 0.4);
        float alpha = centred ? (float)(w.Sum(v => (double)v) / w.Length) : 0f;
        using var m = SignBinarizer.FromFloat32(w, rows, cols, centred);
        for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            Assert.Equal(w[r * cols + c] - alpha >= 0 ? 1 : -1, m.Get(r, c));
    }

    [Fact]
    public void BFloat16InputMatchesFloat32()
    {
        float[] w = [0.5f, -0.25f, 0f, 1.5f, -3f];
        using var a = SignBinarizer.FromFloat32(w, 1, 5);
        using var b = SignBinarizer.FromBFloat16(Array.ConvertAll(w, HalfConversions.FloatToBFloat16), 1, 5);
        Assert.Equal(Dequantizer.ToFloat(a), Dequantizer.ToFloat(b));
    }
}

public class LatentWeightConversionTests
{
    [Fact]
    public void VectorHalfConversionIsExactForEveryBitPattern()
    {
        var all = new ushort[65536 + 5]; // odd length: exercises the scalar tail too
        for (int i = 0; i < all.Length; i++) all[i] = (ushort)i;
        var dst = new float[all.Length];
        Float16Element.ToFloat(all, dst);
        for (int i = 0; i < all.Length; i++)
        {
            float expected = HalfConversions.HalfToFloat(all[i]);
            if (float.IsNaN(expected)) Assert.True(float.IsNaN(dst[i]), $"0x{all[i]:X4}");
            else Assert.Equal(BitConverter.SingleToInt32Bits(expected), BitConverter.SingleToInt32Bits(dst[i]));
        }
    }

    [Fact]
    public void VectorBFloat16ConversionIsExactForEveryBitPattern()
    {
        var all = new ushort[65536 + 3];
        for (int i = 0; i < all.Length; i++) all[i] = (ushort)i;
        var dst = new float[all.Length];
        BFloat16Element.ToFloat(all, dst);
        for (int i = 0; i < all.Length; i++)
            Assert.Equal(BitConverter.SingleToInt32Bits(HalfConversions.BFloat16ToFloat(all[i])), BitConverter.SingleToInt32Bits(dst[i]));
    }

    [Fact]
    public void NonFiniteHalfWeightsAreRefused()
    {
        ushort[] w = [0x3C00, 0x7C00]; // 1, +inf
        Assert.Throws<ArgumentException>(() => AbsmeanTernarizer.FromFloat16(w, 1, 2));
    }
}
