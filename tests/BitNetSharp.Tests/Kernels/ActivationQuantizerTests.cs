using BitNetSharp.Kernels;
using static BitNetSharp.Tests.Kernels.KernelTestData;

namespace BitNetSharp.Tests.Kernels;

public class ActivationQuantizerTests
{
    [Fact]
    public void RoundsHalfToEvenAndKeepsTheSum()
    {
        // γ = 127 ⇒ s = 1 exactly: 0.5 → 0, 1.5 → 2, 2.5 → 2, −0.5 → 0, −3.5 → −4.
        float[] x = [127f, 0.5f, 1.5f, 2.5f, -0.5f, -3.5f];
        var q = new sbyte[8];
        Int8ActivationQuantizer.QuantizeReference(x, q, out float s, out int sum);
        Assert.Equal(1f, s);
        Assert.Equal(new sbyte[] { 127, 0, 2, 2, 0, -4, 0, 0 }, q);
        Assert.Equal(127 + 2 + 2 - 4, sum);
    }

    [Fact]
    public void FloorAppliesToTinyInputs()
    {
        var q = new sbyte[4];
        Int8ActivationQuantizer.QuantizeReference([1e-7f, -2e-6f, 0f, 0f], q, out float s, out _);
        Assert.Equal((float)(127.0 / 1e-5), s);
        // s = 1.27e7: 1e−7 → 1.27 → 1; −2e−6 → −25.4 → −25.
        Assert.Equal(new sbyte[] { 1, -25, 0, 0 }, q);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(15)]
    [InlineData(16)]
    [InlineData(31)]
    [InlineData(33)]
    [InlineData(100)]
    [InlineData(2560)]
    [InlineData(6913)]
    public void SimdEqualsReference(int length)
    {
        var rng = new Random(length);
        foreach (Pattern pattern in Enum.GetValues<Pattern>())
        {
            var x = Activations(rng, length, pattern);
            var expected = new sbyte[length + 7];
            var actual = new sbyte[length + 7];
            actual.AsSpan().Fill(99);
            Int8ActivationQuantizer.QuantizeReference(x, expected, out float s1, out int sum1);
            Int8ActivationQuantizer.Quantize(x, actual, out float s2, out int sum2);
            Assert.Equal(s1, s2);
            Assert.Equal(sum1, sum2);
            Assert.Equal(expected, actual);
        }
    }
}
