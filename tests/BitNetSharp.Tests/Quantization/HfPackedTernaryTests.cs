using BitNetSharp.Quantization;

namespace BitNetSharp.Tests.Quantization;

public class HfPackedTernaryTests
{
    [Fact]
    public void PackedByteHoldsRowsAQuarterApartLowPairFirst()
    {
        // out = 8 (R = 2), in = 3: packed shape [2, 3].
        var packed = new byte[6];
        packed.AsSpan().Fill(0b01_01_01_01);
        packed[1 * 3 + 2] = 0b10_01_00_10; // [p=1, k=2]: rows 1, 3, 5, 7 at column 2 = +1, −1, 0, +1

        using var m = HfPackedTernary.Decode(packed, outFeatures: 8, inFeatures: 3, weightScale: 2f, HfWeightScaleRule.Multiply);

        Assert.Equal(1, m.Get(1, 2));
        Assert.Equal(-1, m.Get(3, 2));
        Assert.Equal(0, m.Get(5, 2));
        Assert.Equal(1, m.Get(7, 2));
        var counts = TernaryCodeCounts.Of(m);
        Assert.Equal((2L, 1L, 21L), (counts.Plus, counts.Minus, counts.Zero));

        var reference = new float[24];
        HfPackedTernary.Dequantize(packed, 8, 3, 2f, HfWeightScaleRule.Multiply, reference);
        Assert.Equal(reference, Dequantizer.ToFloat(m));
    }

    [Fact]
    public void AutoBitLinearMultipliesAndBitLinearDivides()
    {
        var packed = new byte[4];
        packed.AsSpan().Fill(0b01_01_01_10); // row 0 (first quarter) = +1 in every column, rows 1..3 zero
        Assert.Equal(HfWeightScaleRule.Multiply, HfPackedTernary.RuleForLinearClass("autobitlinear"));
        Assert.Equal(HfWeightScaleRule.Divide, HfPackedTernary.RuleForLinearClass("bitlinear"));
        Assert.Equal(HfWeightScaleRule.Divide, HfPackedTernary.RuleForLinearClass(null));
        Assert.Throws<ArgumentException>(() => HfPackedTernary.RuleForLinearClass("BitLinear4"));

        using var multiplied = HfPackedTernary.Decode(packed, 4, 4, 1.5f, HfPackedTernary.RuleForLinearClass("autobitlinear"));
        using var divided = HfPackedTernary.Decode(packed, 4, 4, 4f, HfPackedTernary.RuleForLinearClass("bitlinear"));
        Assert.Equal(1.5f, multiplied.GetFloat(0, 0));
        Assert.Equal(0.25f, divided.GetFloat(0, 0));
        Assert.All(divided.RowScales, s => Assert.Equal(0.25f, s));

        // t·(1f/ws) is exactly the fp32 t/ws for t ∈ {−1, 0, 1}, so the reference's true division agrees bit for bit.
        float ws = 1.555f;
        Assert.Equal(1f / ws, HfPackedTernary.RowScale(ws, HfWeightScaleRule.Divide));
        Assert.Equal(-1f / ws, -1 * HfPackedTernary.RowScale(ws, HfWeightScaleRule.Divide));
        Assert.Throws<ArgumentException>(() => HfPackedTernary.RowScale(0f, HfWeightScaleRule.Divide));
        // Negative under either rule: it flipped the layer's sign and ran (GGUF/HF fuzz sweep).
        Assert.Throws<ArgumentException>(() => HfPackedTernary.RowScale(-1f, HfWeightScaleRule.Divide));
        Assert.Throws<ArgumentException>(() => HfPackedTernary.RowScale(-1f, HfWeightScaleRule.Multiply));
        // A finite weight_scale whose inverse overflows: every weight was ±∞ (zeros NaN).
        Assert.Throws<ArgumentException>(() => HfPackedTernary.RowScale(1e-39f, HfWeightScaleRule.Divide));
    }

    [Fact]
    public void Code3IsRefusedWithItsPosition()
    {
        var packed = new byte[8];
        packed.AsSpan().Fill(0b01_01_01_01);
        packed[1 * 4 + 3] = 0b01_11_01_01; // [p=1, k=3], bits [5:4] → row 1 + 2·2 = 5
        var ex = Assert.Throws<InvalidDataException>(() => HfPackedTernary.Decode(packed, 8, 4, 1f, HfWeightScaleRule.Multiply));
        Assert.Contains("[1, 3]", ex.Message);
        Assert.Contains("row 5", ex.Message);
    }

    [Theory]
    [InlineData(4, 1)]
    [InlineData(8, 200)]
    [InlineData(12, 333)]
    [InlineData(640, 256)]
    public void EncodeThenDecodeRoundTrips(int outFeatures, int inFeatures)
    {
        using var m = TernaryFixtures.Random(outFeatures, inFeatures, seed: outFeatures ^ inFeatures, _ => 0.5f);
        var packed = HfPackedTernary.Encode(m);
        Assert.Equal(outFeatures / 4 * inFeatures, packed.Length);
        float ws = HfPackedTernary.WeightScaleFor(m, HfWeightScaleRule.Divide);
        Assert.Equal(2f, ws);
        using var back = HfPackedTernary.Decode(packed, outFeatures, inFeatures, ws, HfWeightScaleRule.Divide);
        TernaryFixtures.AssertSame(m, back);

        var reference = new float[outFeatures * inFeatures];
        HfPackedTernary.Dequantize(packed, outFeatures, inFeatures, ws, HfWeightScaleRule.Divide, reference);
        Assert.Equal(reference, Dequantizer.ToFloat(back));
    }

    [Fact]
    public void ShapeIsValidated()
    {
        Assert.Throws<ArgumentException>(() => HfPackedTernary.Decode(new byte[6], 6, 4, 1f, HfWeightScaleRule.Multiply));
        Assert.Throws<ArgumentException>(() => HfPackedTernary.Decode(new byte[5], 4, 4, 1f, HfWeightScaleRule.Multiply));
    }
}
