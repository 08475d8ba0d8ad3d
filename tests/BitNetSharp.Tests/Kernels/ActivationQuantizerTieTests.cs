using System.Numerics;
using BitNetSharp.Kernels;
using BitNetSharp.Quantization;
using BitNetSharp.Threading;
using BitNetSharp.Training;
using BitNetSharp.Training.Layers;

namespace BitNetSharp.Tests.Kernels;

/// <summary>
/// Issue #15: the int8 activation code is round_half_even(x·127/γ) of the real quotient, on inputs full of exact ties
/// (bf16-valued, as on BitNet's bf16 checkpoints), checked against rational arithmetic on every quantizer path this CPU
/// has: the reference, the 256- and 128-bit paths, the scalar tail, the kernels' buffer and the trainer's fake quantizer.
/// </summary>
public class ActivationQuantizerTieTests(ITestOutputHelper output)
{
    /// <summary>
    /// The exact code by rational arithmetic, independent of any floating-point division: x = X·2^a and γ = G·2^b exactly
    /// (γ the double max(max|x|, 1e−5)), so 127x/γ = 127·X·2^a / (G·2^b) is a ratio of integers; floor it, and compare
    /// twice the remainder with the divisor (equal: a tie, to the even neighbour).
    /// </summary>
    private static int RationalCode(float x, double gamma)
    {
        var (xm, xe) = Decompose(x);
        var (gm, ge) = Decompose(gamma);
        BigInteger num = 127 * xm, den = gm;
        if (xe >= ge) num <<= xe - ge; else den <<= ge - xe;
        var q = BigInteger.DivRem(num, den, out var rem);
        if (rem.Sign < 0) { q -= 1; rem += den; } // floor division
        int c = (2 * rem).CompareTo(den);
        if (c > 0 || (c == 0 && !q.IsEven)) q += 1;
        return (int)BigInteger.Max(-128, BigInteger.Min(127, q));
    }

    private static (BigInteger Mantissa, int Exponent) Decompose(double v)
    {
        long bits = BitConverter.DoubleToInt64Bits(v);
        int e = (int)((bits >> 52) & 0x7FF);
        long m = bits & ((1L << 52) - 1);
        if (e == 0) e = 1; else m |= 1L << 52;
        return (v < 0 ? -m : m, e - 1075);
    }

    private static float Bf16(float v) => BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(v) & unchecked((int)0xFFFF0000));

    /// <summary>Rows whose elements are exact ties, values one ulp either side of them, and bf16 noise.</summary>
    public static List<float[]> TieRows()
    {
        var rng = new Random(15);
        var rows = new List<float[]>();
        void Add(List<float> values, int length)
        {
            while (values.Count < length) values.Add(values[rng.Next(values.Count)]);
            var row = values.Take(length).ToArray();
            rng.Shuffle(row.AsSpan(1)); // element 0 keeps the absmax, the rest land in vector blocks and tails alike
            rows.Add(row);
        }

        // γ = 127/64: x = k/128 for odd k is the tie k/2 for every half-integer 0.5 … 126.5, both signs.
        foreach (int length in new[] { 254, 257, 1000, 2563 })
        {
            var v = new List<float> { 127f / 64 };
            for (int k = 1; k < 254; k += 2) { v.Add(k / 128f); v.Add(-k / 128f); }
            Add(v, length);
        }
        // bf16 absmax values: ±γ/2 (±63.5 → ±64), ±γ/254·odd where exact, the float neighbours of ±γ/2, bf16 noise.
        foreach (float absMax in new[] { 2.375f, 1.2578125f, 3f, 0.8125f, 17.25f, 0.01171875f, 2.984375f })
        foreach (int length in new[] { 31, 64, 100, 2560 })
        {
            float g = absMax;
            var v = new List<float> { -g, g / 2, -g / 2, g / 4, -g / 8, BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(g / 2) + 1),
                BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(g / 2) - 1), -BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(g / 2) - 1) };
            for (int k = 1; k < 254; k += 2)
            {
                float t = (float)(g * (double)k / 254);
                if ((double)t * 254 == g * (double)k) v.Add(rng.Next(2) == 0 ? t : -t);
            }
            for (int j = 0; j < 64; j++) v.Add(Bf16((float)(rng.NextDouble() * 2 - 1) * g));
            Add(v, length);
        }
        // Under the 1e−5 floor (γ = 1e−5 is no float): values at and next to the quotient's half-integers.
        var tiny = new List<float> { 9e-6f };
        for (int k = 0; k < 127; k++)
        {
            float t = (float)((k + 0.5) * 1e-5 / 127);
            int bits = BitConverter.SingleToInt32Bits(t);
            for (int d = -2; d <= 2; d++) tiny.Add(BitConverter.Int32BitsToSingle(bits + d) * (k % 2 == 0 ? 1 : -1));
        }
        Add(tiny, tiny.Count);
        return rows;
    }

    private static sbyte[] Expected(float[] x, out double gamma)
    {
        float absMax = 0;
        foreach (float v in x) absMax = MathF.Max(absMax, MathF.Abs(v));
        gamma = Math.Max((double)absMax, 1e-5);
        var q = new sbyte[x.Length];
        for (int i = 0; i < x.Length; i++) q[i] = (sbyte)RationalCode(x[i], gamma);
        return q;
    }

    [Fact]
    public void TheFixtureHasTiesTheFp32ProductMisses()
    {
        int ties = 0, fp32Wrong = 0, total = 0;
        foreach (var x in TieRows())
        {
            var expected = Expected(x, out double gamma);
            float s = Int8ActivationQuantizer.ScaleFor((float)Math.Min(gamma, float.MaxValue));
            for (int i = 0; i < x.Length; i++)
            {
                double r = x[i] * 127.0 / gamma;
                if (Math.Abs(r - Math.Floor(r) - 0.5) < 1e-12) ties++;
                if (Math.Clamp((int)MathF.Round(x[i] * s), -128, 127) != expected[i]) fp32Wrong++;
            }
            total += x.Length;
        }
        output.WriteLine($"{total} elements, {ties} ties or within 1e-12 of one, {fp32Wrong} that round(x·fl(127/γ)) in fp32 gets wrong");
        Assert.True(ties > 1000, $"{ties} ties");
        Assert.True(fp32Wrong >= 300, $"the fixture must catch the fp32 product: {fp32Wrong} mismatches");
        // The example: −1.1875 is exactly half the absmax 2.375 (both bf16), −63.5 → −64; fl(127/2.375) is a hair
        // low, so the fp32 product is −63.499996 → −63.
        Assert.Equal(-64, RationalCode(-1.1875f, 2.375));
        Assert.Equal(-63.499996f, -1.1875f * Int8ActivationQuantizer.ScaleFor(2.375f));
        var q = new sbyte[2];
        Int8ActivationQuantizer.Quantize([2.375f, -1.1875f], q, out _, out _);
        Assert.Equal(-64, q[1]);
    }

    [Fact]
    public void ReferenceEqualsRationalArithmetic()
    {
        foreach (var x in TieRows())
        {
            var expected = Expected(x, out double gamma);
            var q = new sbyte[x.Length + 5];
            Int8ActivationQuantizer.QuantizeReference(x, q, out float s, out int sum);
            Assert.Equal((float)(127.0 / gamma), s);
            Assert.Equal(expected, q[..x.Length]);
            Assert.Equal(expected.Sum(v => v), sum);
            Assert.All(q[x.Length..], v => Assert.Equal(0, v));
        }
    }

    [Theory]
    [InlineData(512)]
    [InlineData(256)]
    [InlineData(128)]
    [InlineData(0)]
    public void EveryVectorWidthEqualsTheReference(int vectorBits)
    {
        foreach (var x in TieRows())
        {
            var expected = new sbyte[x.Length + 7];
            Int8ActivationQuantizer.QuantizeReference(x, expected, out float s1, out int sum1);
            var actual = new sbyte[x.Length + 7];
            actual.AsSpan().Fill(99);
            Int8ActivationQuantizer.Quantize(x, actual, out float s2, out int sum2, vectorBits);
            Assert.Equal(s1, s2);
            Assert.Equal(sum1, sum2);
            Assert.Equal(expected, actual);
        }
    }

    [Theory]
    [InlineData(512)]
    [InlineData(256)]
    [InlineData(128)]
    [InlineData(0)]
    public void NonFiniteRowsGiveTheReferenceCodesAtEveryWidth(int vectorBits)
    {
        // A row with a NaN or an infinity (a corrupted weight upstream): whatever codes the reference gives, every path gives.
        var rng = new Random(3);
        foreach (float bad in new[] { float.NaN, float.PositiveInfinity, float.NegativeInfinity })
        foreach (int length in new[] { 70, 130, 200 })
        foreach (int at in new[] { 0, 17, length - 1 })
        {
            var x = new float[length];
            for (int i = 0; i < length; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
            x[at] = bad;
            var expected = new sbyte[length];
            Int8ActivationQuantizer.QuantizeReference(x, expected, out float s1, out int sum1);
            var actual = new sbyte[length];
            Int8ActivationQuantizer.Quantize(x, actual, out float s2, out int sum2, vectorBits);
            Assert.Equal(s1, s2);
            Assert.Equal(sum1, sum2);
            Assert.Equal(expected, actual);
        }
    }

    [Fact]
    public void KernelBufferEqualsTheReference()
    {
        foreach (var x in TieRows())
        {
            using var qa = new QuantizedActivations(2, x.Length);
            Int8ActivationQuantizer.Quantize(x, qa, 1);
            var expected = new sbyte[qa.PaddedCols];
            Int8ActivationQuantizer.QuantizeReference(x, expected, out float s, out int sum);
            Assert.Equal(expected, qa.RowSpan(1).ToArray());
            Assert.Equal(s, qa.Scales[1]);
            Assert.Equal(sum, qa.Sums[1]);
        }
    }

    [Fact]
    public unsafe void TrainerFakeQuantizerEqualsTheReference()
    {
        using var pool = new WorkerPool(2);
        var linear = new BitLinear(pool, new MatMulNT(pool), new Transpose(pool), quantized: true);
        foreach (var x in TieRows())
        {
            var expected = new sbyte[x.Length];
            Int8ActivationQuantizer.QuantizeReference(x, expected, out float s, out _);

            var direct = new float[x.Length];
            Assert.Equal(s, Int8ActivationQuantizer.QuantizeToFloatCodes(x, direct));
            Assert.Equal(expected.Select(v => (float)v), direct);

            // Two tokens through BitLinear's parallel per-token path: the row and its negation.
            var both = x.Concat(x.Select(v => -v)).ToArray();
            var q = new float[both.Length];
            var scales = new float[2];
            fixed (float* px = both, pq = q, ps = scales) linear.QuantizeActivations(px, 2, x.Length, pq, ps);
            Assert.Equal(s, scales[0]);
            Assert.Equal(s, scales[1]);
            Assert.Equal(expected.Select(v => (float)v), q[..x.Length]);
            Int8ActivationQuantizer.QuantizeReference(both.AsSpan(x.Length), expected, out _, out _);
            Assert.Equal(expected.Select(v => (float)v), q[x.Length..]);
        }
    }
}
