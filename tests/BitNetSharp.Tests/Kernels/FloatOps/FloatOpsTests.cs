using BitNetSharp.Kernels.FloatOps;
using static BitNetSharp.Tests.Kernels.FloatOps.Widths;

namespace BitNetSharp.Tests.Kernels.FloatOps;

public class FloatOpsTests
{
    public static TheoryData<string> AllWidths() => Widths.All();

    private sealed class RmsNormCheck : IWidthCheck
    {
        public void Run<TWidth>() where TWidth : struct, IVectorWidth
        {
            var rng = new Random(1);
            foreach (int n in Lengths)
            {
                var x = Widths.Random(rng, n, 3f);
                var w = Widths.Random(rng, n, 2f);
                var expected = new float[n];
                var actual = new float[n];
                RmsNorm.Reference(x, w, expected, 1e-5f);
                RmsNorm.Apply<TWidth>(x, w, actual, 1e-5f);
                // The double sums may differ in their last bits; after rounding to fp32 at most an ulp remains.
                AssertClose(expected, actual, 2.5e-7f, 0f, $"rmsnorm n={n}");
                RmsNorm.Apply<TWidth>(x, w, x, 1e-5f); // in place
                AssertBitwise(actual, x, $"rmsnorm in place n={n}");
            }
        }
    }

    [Theory, MemberData(nameof(AllWidths))]
    public void RmsNormMatchesReference(string width) => Widths.Run(width, new RmsNormCheck());

    [Fact]
    public void RmsNormKnownValue()
    {
        // mean(3², 4²) = 12.5; y = x / √12.5 · w.
        var y = new float[2];
        RmsNorm.Apply([3f, 4f], [1f, 2f], y, 0f);
        Assert.Equal(3f / MathF.Sqrt(12.5f), y[0], 6);
        Assert.Equal(2 * 4f / MathF.Sqrt(12.5f), y[1], 6);
        // eps dominates an all-zero row instead of dividing by zero.
        RmsNorm.Apply([0f, 0f], [1f, 1f], y, 1e-5f);
        Assert.Equal([0f, 0f], y);
    }

    private sealed class RopeCheck(RopeStyle style) : IWidthCheck
    {
        public void Run<TWidth>() where TWidth : struct, IVectorWidth
        {
            var rng = new Random(2);
            foreach (int headDim in new[] { 2, 8, 14, 64, 96, 100, 128 })
            {
                var table = new RopeTable(headDim, 300, 500000f, style);
                foreach (int position in new[] { 0, 1, 17, 299 })
                {
                    var x = Widths.Random(rng, headDim * 3, 4f);
                    var expected = x.ToArray();
                    table.ApplyReference(expected, position);
                    table.Apply<TWidth>(x, position);
                    AssertBitwise(expected, x, $"rope {style} hd={headDim} pos={position}");
                }
            }
        }
    }

    [Theory, MemberData(nameof(AllWidths))]
    public void NeoxRopeMatchesReferenceBitForBit(string width) => Widths.Run(width, new RopeCheck(RopeStyle.Neox));

    [Theory, MemberData(nameof(AllWidths))]
    public void NormRopeMatchesReferenceBitForBit(string width) => Widths.Run(width, new RopeCheck(RopeStyle.Norm));

    [Fact]
    public void RopeTableFollowsTheHfFormula()
    {
        const int hd = 128;
        var table = new RopeTable(hd, 4096, 500000f);
        foreach (int pos in new[] { 0, 1, 4095 })
        {
            var cos = table.Cos(pos);
            var sin = table.Sin(pos);
            for (int i = 0; i < hd / 2; i++)
            {
                float invFreq = 1f / MathF.Pow(500000f, (float)(2 * i) / hd);
                Assert.Equal(MathF.Cos(pos * invFreq), cos[i]);
                Assert.Equal(MathF.Sin(pos * invFreq), sin[i]);
            }
        }
    }

    [Fact]
    public void RopePairsRotateByTheirAngle()
    {
        // headDim 4: pair 0 turns by pos·1, pair 1 by pos·θ^(−1/2).
        var neox = new RopeTable(4, 8, 10000f, RopeStyle.Neox);
        float[] x = [1f, 2f, 3f, 4f]; // NEOX pairs (1,3) and (2,4)
        neox.Apply(x, 0);
        Assert.Equal([1f, 2f, 3f, 4f], x);
        neox.Apply(x, 3);
        float a0 = 3f, a1 = 3f / 100f;
        Assert.Equal(1f * MathF.Cos(a0) - 3f * MathF.Sin(a0), x[0], 5);
        Assert.Equal(3f * MathF.Cos(a0) + 1f * MathF.Sin(a0), x[2], 5);
        Assert.Equal(2f * MathF.Cos(a1) - 4f * MathF.Sin(a1), x[1], 5);
        Assert.Equal(4f * MathF.Cos(a1) + 2f * MathF.Sin(a1), x[3], 5);

        var norm = new RopeTable(4, 8, 10000f, RopeStyle.Norm);
        float[] y = [1f, 3f, 2f, 4f]; // NORM pairs (1,3) and (2,4), interleaved
        norm.Apply(y, 3);
        Assert.Equal([x[0], x[2], x[1], x[3]], y);
    }

    [Fact]
    public void RopeRejectsBadShapes()
    {
        var table = new RopeTable(8, 4, 10000f);
        Assert.Throws<ArgumentOutOfRangeException>(() => table.Apply(new float[8], 4));
        Assert.Throws<ArgumentException>(() => table.Apply(new float[12], 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new RopeTable(7, 4, 10000f));
    }

    /// <summary>
    /// A table computed as positions are reached holds what the full table holds, bit for bit; a position not yet
    /// computed, or past the table, is refused rather than read as zeros.
    /// </summary>
    [Theory]
    [InlineData(RopeStyle.Neox)]
    [InlineData(RopeStyle.Norm)]
    public void RopeGrownOnDemandEqualsTheFullTable(RopeStyle style)
    {
        var full = new RopeTable(64, 5000, 500000f, style);
        var lazy = new RopeTable(64, 5000, 500000f, style, initialPositions: 3);
        Assert.Equal(3, lazy.ComputedPositions);
        Assert.Throws<ArgumentOutOfRangeException>(() => lazy.Apply(new float[64], 3));
        lazy.EnsurePositions(4);
        Assert.Equal(6, lazy.ComputedPositions); // at least doubles
        lazy.EnsurePositions(4097);
        Assert.Equal(4097, lazy.ComputedPositions);
        lazy.EnsurePositions(5000);
        Assert.Equal(5000, lazy.ComputedPositions);
        Assert.Throws<ArgumentOutOfRangeException>(() => lazy.EnsurePositions(5001));
        for (int position = 0; position < 5000; position++)
        {
            Assert.Equal(full.Cos(position).ToArray(), lazy.Cos(position).ToArray());
            Assert.Equal(full.Sin(position).ToArray(), lazy.Sin(position).ToArray());
        }
    }

    private sealed class SoftmaxCheck : IWidthCheck
    {
        public void Run<TWidth>() where TWidth : struct, IVectorWidth
        {
            var rng = new Random(3);
            foreach (int n in Lengths)
            {
                var x = Widths.Random(rng, n, 20f);
                if (n > 3) x[n / 2] = float.NegativeInfinity;
                var expected = x.ToArray();
                Softmax.Reference(expected);
                Softmax.InPlace<TWidth>(x);
                AssertClose(expected, x, 2e-6f, 1e-9f, $"softmax n={n}");
                Assert.Equal(1.0, x.Sum(v => (double)v), 5);
                if (n > 3) Assert.Equal(0f, x[n / 2]);
            }
        }
    }

    [Theory, MemberData(nameof(AllWidths))]
    public void SoftmaxMatchesReference(string width) => Widths.Run(width, new SoftmaxCheck());

    [Fact]
    public void SoftmaxKnownValuesAndErrors()
    {
        float[] x = [0f, MathF.Log(3f), float.NegativeInfinity, 1000f - 1000f];
        Softmax.InPlace(x);
        Assert.Equal(0.2f, x[0], 6);
        Assert.Equal(0.6f, x[1], 6);
        Assert.Equal(0f, x[2]);
        Assert.Equal(0.2f, x[3], 6);
        float[] large = [1000f, 1000f];
        Softmax.InPlace(large); // max subtraction keeps e^x finite
        Assert.Equal([0.5f, 0.5f], large);
        Assert.Throws<ArgumentException>(() => Softmax.InPlace(new[] { float.NegativeInfinity, float.NegativeInfinity }));
        Assert.Throws<ArgumentException>(() => Softmax.InPlace(new[] { 1f, float.NaN }));
    }

    /// <summary>
    /// Attention scores that cannot be normalized (NaN, +∞, or all −∞: an F16 key past 65504 is stored as ∞, and a
    /// negative query component makes its score −∞) become NaN for the health monitor to name; all −∞ threw, and the
    /// scheduler failed every request in the batch.
    /// </summary>
    [Fact]
    public void AttentionSoftmaxTurnsUndefinedScoresIntoNaN()
    {
        foreach (var scores in new[] { new[] { float.NegativeInfinity, float.NegativeInfinity }, [1f, float.NaN], [float.PositiveInfinity, 0f], [float.NegativeInfinity] })
        {
            Softmax.AttentionInPlace(scores);
            Assert.All(scores, v => Assert.True(float.IsNaN(v)));
        }
        float[] fine = [0f, MathF.Log(3f)];
        Softmax.AttentionInPlace(fine);
        Assert.Equal(0.25f, fine[0], 6);

        using var cache = new BitNetSharp.Model.KvCache(1, 1, 16, 2, BitNetSharp.Model.KvCacheType.F16);
        var key = Enumerable.Repeat(1f, 16).ToArray();
        key[3] = 1e6f;
        cache.Write(0, 0, key, Enumerable.Repeat(1f, 16).ToArray());
        var q = new float[16];
        q[3] = -1f;
        var s = new float[1];
        cache.Scores(0, 0, q, s, 1, 0.25f);
        Assert.Equal(float.NegativeInfinity, s[0]);
        Softmax.AttentionInPlace(s);
        Assert.True(float.IsNaN(s[0]));
    }

    private sealed class GateCheck : IWidthCheck
    {
        public void Run<TWidth>() where TWidth : struct, IVectorWidth
        {
            var rng = new Random(4);
            foreach (int n in Lengths)
            {
                var g = Widths.Random(rng, n, 6f);
                var u = Widths.Random(rng, n, 2f);
                var expected = new float[n];
                var actual = new float[n];
                GatedActivation.ReluSquaredReference(g, u, expected);
                GatedActivation.ReluSquared<TWidth>(g, u, actual);
                AssertBitwise(expected, actual, $"relu² n={n}");
                GatedActivation.SiluReference(g, u, expected);
                GatedActivation.Silu<TWidth>(g, u, actual);
                AssertClose(expected, actual, 1e-6f, 1e-30f, $"silu n={n}");
            }
        }
    }

    [Theory, MemberData(nameof(AllWidths))]
    public void GatesMatchReference(string width) => Widths.Run(width, new GateCheck());

    [Fact]
    public void GateKnownValues()
    {
        var y = new float[4];
        GatedActivation.ReluSquared([-2f, 0f, 3f, 0.5f], [5f, 5f, 2f, -4f], y);
        Assert.Equal([0f, 0f, 18f, -1f], y);
        GatedActivation.Silu([0f, 1f, -100f, 100f], [1f, 2f, 1f, 1f], y);
        Assert.Equal(0f, y[0]);
        Assert.Equal(2f / (1f + MathF.Exp(-1f)), y[1], 6);
        Assert.Equal(0f, y[2], 6);
        Assert.Equal(100f, y[3], 4);
    }

    private sealed class ResidualCheck : IWidthCheck
    {
        public void Run<TWidth>() where TWidth : struct, IVectorWidth
        {
            var rng = new Random(5);
            foreach (int n in Lengths)
            {
                var h = Widths.Random(rng, n, 10f);
                var x = Widths.Random(rng, n, 10f);
                var expected = h.ToArray();
                ResidualAdd.Reference(expected, x);
                ResidualAdd.Apply<TWidth>(h, x);
                AssertBitwise(expected, h, $"residual n={n}");
            }
        }
    }

    [Theory, MemberData(nameof(AllWidths))]
    public void ResidualAddMatchesReference(string width) => Widths.Run(width, new ResidualCheck());

    private sealed class ArgMaxCheck : IWidthCheck
    {
        public void Run<TWidth>() where TWidth : struct, IVectorWidth
        {
            var rng = new Random(6);
            foreach (int n in Lengths.Append(128256))
            {
                var x = Widths.Random(rng, n, 5f);
                Assert.Equal(ArgMax.Reference(x), ArgMax.Of<TWidth>(x));
                // Ties: the maximum at three places, the lowest wins.
                int a = rng.Next(n), b = rng.Next(n), c = rng.Next(n);
                x[a] = x[b] = x[c] = 7f;
                Assert.Equal(Math.Min(a, Math.Min(b, c)), ArgMax.Of<TWidth>(x));
                // A NaN never wins.
                x[n - 1] = float.NaN;
                Assert.Equal(ArgMax.Reference(x), ArgMax.Of<TWidth>(x));
            }
        }
    }

    [Theory, MemberData(nameof(AllWidths))]
    public void ArgMaxMatchesReference(string width) => Widths.Run(width, new ArgMaxCheck());

    [Fact]
    public void ArgMaxEdgeCases()
    {
        Assert.Equal(0, ArgMax.Of([float.NaN, float.NaN]));
        Assert.Equal(1, ArgMax.Of([float.NaN, -3f, -4f]));
        Assert.Equal(0, ArgMax.Of([float.NegativeInfinity, float.NegativeInfinity]));
        Assert.Equal(2, ArgMax.Of([1f, 2f, float.PositiveInfinity, float.PositiveInfinity]));
        Assert.Throws<ArgumentException>(() => ArgMax.Of([]));
    }
}
