using System.Runtime.Intrinsics;
using BitNetSharp.Kernels.FloatOps;

namespace BitNetSharp.Tests.Kernels.FloatOps;

public class FastExpTests
{
    /// <summary>Distance in representable fp32 values between a and the correctly rounded e^x.</summary>
    private static long Ulps(float actual, double exact)
    {
        float expected = (float)exact;
        return Math.Abs((long)BitConverter.SingleToInt32Bits(actual) - BitConverter.SingleToInt32Bits(expected));
    }

    /// <summary>Every ~1/4096 step over the whole range of normal results, against Math.Exp in double: at most 2 ulp.</summary>
    [Fact]
    public void WithinTwoUlpOfExactOverTheRange()
    {
        long worst = 0;
        float worstAt = 0;
        for (double x = -87; x < 88.72; x += 1.0 / 4096)
        {
            float xf = (float)x;
            float e = FastExp.Exp(xf);
            long u = Ulps(e, Math.Exp(xf));
            if (u > worst) { worst = u; worstAt = xf; }
        }
        Assert.True(worst <= 2, $"{worst} ulp at x = {worstAt:R}");
    }

    [Fact]
    public void LimitsAndSpecialValues()
    {
        Assert.Equal(1f, FastExp.Exp(0f));
        Assert.Equal(1f, FastExp.Exp(-0f));
        Assert.Equal(MathF.E, FastExp.Exp(1f), 6);
        Assert.Equal(float.PositiveInfinity, FastExp.Exp(88.8f));
        Assert.Equal(float.PositiveInfinity, FastExp.Exp(float.PositiveInfinity));
        Assert.Equal(float.PositiveInfinity, FastExp.Exp(float.MaxValue));
        Assert.Equal(0f, FastExp.Exp(-104f));
        Assert.Equal(0f, FastExp.Exp(float.NegativeInfinity));
        Assert.Equal(0f, FastExp.Exp(float.MinValue));
        Assert.True(float.IsNaN(FastExp.Exp(float.NaN)));
        // No subnormal results (they cost a microcode assist): below −87, 0; from −87, normal.
        Assert.Equal(0f, FastExp.Exp(-100f));
        Assert.Equal(0f, FastExp.Exp(BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(-87f) + 1)));
        Assert.True(FastExp.Exp(-87f) >= 1.1754944e-38f, $"{FastExp.Exp(-87f):R}");
        // Monotone where a softmax uses it (x ≤ 0), across the cut too.
        float previous = 0f;
        for (float x = -90f; x <= 0f; x += 1f / 512)
        {
            float e = FastExp.Exp(x);
            Assert.True(e >= previous, $"e^{x} = {e} below e^(x−step) = {previous}");
            previous = e;
        }
    }

    /// <summary>
    /// The 512-bit form (one vscalefps where AVX-512 is there, two power-of-two factors elsewhere) gives the scalar
    /// form's bits over a sweep of every fp32 bit pattern in steps of 241 (about 17.8 million values: every exponent,
    /// NaNs, infinities, subnormal inputs and both signs), so the single-rounding scaling matches the two-factor one.
    /// </summary>
    [Fact]
    public void The512BitFormGivesTheScalarBitsOverEveryExponent()
    {
        var x = new float[16];
        long mismatches = 0;
        string first = "";
        for (long bits = 0; bits <= uint.MaxValue; bits += 16 * 241)
        {
            for (int j = 0; j < 16; j++) x[j] = BitConverter.Int32BitsToSingle((int)(uint)Math.Min(bits + j * 241L, uint.MaxValue));
            var v = FastExp.Exp(Vector512.Create(x));
            for (int j = 0; j < 16; j++)
            {
                float want = FastExp.Exp(x[j]);
                if (BitConverter.SingleToInt32Bits(want) != BitConverter.SingleToInt32Bits(v[j]) && !(float.IsNaN(want) && float.IsNaN(v[j])))
                {
                    if (mismatches++ == 0) first = $"e^{x[j]:R}: {v[j]:R} against {want:R}";
                }
            }
        }
        Assert.True(mismatches == 0, $"{mismatches} values differ; first {first}");
    }

    /// <summary>The 128-, 256- and 512-bit forms give the scalar form's bits, specials included.</summary>
    [Fact]
    public void EveryWidthGivesTheScalarBits()
    {
        var rng = new Random(3);
        var x = new float[4096];
        for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() * 200 - 110);
        float[] specials = [float.NaN, float.PositiveInfinity, float.NegativeInfinity, 0f, -0f, 88.72f, -87.34f, -103.99f, 89.5f, float.MaxValue, float.MinValue, 1e-30f, -1e-30f, 0.3465736f, -0.3465736f, -87f, -86.99999f, -87.00001f];
        specials.CopyTo(x, 0);
        for (int i = 0; i < x.Length; i += 16)
        {
            var v512 = FastExp.Exp(Vector512.Create(x.AsSpan(i, 16)));
            var v256 = FastExp.Exp(Vector256.Create(x.AsSpan(i, 8)));
            var v128 = FastExp.Exp(Vector128.Create(x.AsSpan(i, 4)));
            for (int j = 0; j < 16; j++)
            {
                int expected = BitConverter.SingleToInt32Bits(FastExp.Exp(x[i + j]));
                Assert.True(expected == BitConverter.SingleToInt32Bits(v512[j]), $"512-bit e^{x[i + j]:R}: {v512[j]:R} vs {FastExp.Exp(x[i + j]):R}");
                if (j < 8) Assert.True(expected == BitConverter.SingleToInt32Bits(v256[j]), $"256-bit e^{x[i + j]:R}");
                if (j < 4) Assert.True(expected == BitConverter.SingleToInt32Bits(v128[j]), $"128-bit e^{x[i + j]:R}");
            }
        }
    }
}
