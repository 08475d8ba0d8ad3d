using BitNetSharp.Kernels;
using BitNetSharp.Kernels.FloatOps;

namespace BitNetSharp.Tests.Kernels;

public unsafe class Int8AttentionTests
{
    /// <summary>
    /// The largest integer sums the kernels can form — every stored byte ±127 (or −128), every query value at its
    /// largest, every weight equal — stay inside int32 and give the exact score and weighted sum.
    /// </summary>
    [Theory]
    [InlineData(128)]
    [InlineData(512)]
    [InlineData(1024)]
    public void ExtremeSumsDoNotOverflow(int n)
    {
        const int positions = 300; // two blocks of the weighted sum: 256 + 44
        byte* rows = (byte*)System.Runtime.InteropServices.NativeMemory.Alloc((nuint)(positions * n));
        try
        {
            var scales = new float[positions];
            var ones = new float[n];
            Array.Fill(ones, 1f);
            for (int p = 0; p < positions; p++) scales[p] = Int8Row.Encode(ones, rows + (long)p * n); // every byte 127
            for (int i = 0; i < n; i++) ((sbyte*)rows)[i] = -128; // a byte Encode never writes, but a cache could hold
            var q = new float[n];
            Array.Fill(q, -3f);
            var scores = new float[positions];
            var weights = new float[positions];
            Array.Fill(weights, 1f);
            var output = new float[n];
            fixed (float* pq = q, ps = scores, pw = weights, po = output, pscale = scales)
            {
                AttentionKernels.Scores<Int8Row, WidestVector>(rows, pscale, n, n, pq, ps, positions, 0.5f);
                AttentionKernels.Accumulate<Int8Row, WidestVector>(rows, pscale, n, n, pw, po, positions);
            }
            float s = 1f / 127f; // the row scale of an all-ones row
            Assert.Equal(3.0 * n * 128 * s * 0.5, scores[0], 1e-4 * 3 * n); // (−3)·(−128·s) per dimension
            for (int p = 1; p < positions; p++) Assert.Equal(-3.0 * n * 0.5, scores[p], 1e-4 * 3 * n);
            double expected = -128 * s + (positions - 1) * 1.0;
            for (int d = 0; d < n; d++) Assert.Equal(expected, output[d], 1e-3 * positions);
        }
        finally
        {
            System.Runtime.InteropServices.NativeMemory.Free(rows);
        }
    }

    /// <summary>
    /// The weighted sum of V for a GQA group of four heads equals four one-head calls bit for bit at every width (512-bit
    /// when the head is a multiple of 64, the 256-bit four-head kernel otherwise or without AVX-512, scalar): two blocks
    /// of positions with an odd count, one head with no weight in the first block, and one head with a NaN weight.
    /// </summary>
    [Theory]
    [InlineData(128, false)]
    [InlineData(48, false)]
    [InlineData(128, true)]
    public void GroupOfFourWeightedSumEqualsFourHeadsAtEveryWidth(int n, bool nanWeight)
    {
        const int positions = 301, stride = positions + 5;
        byte* rows = (byte*)System.Runtime.InteropServices.NativeMemory.Alloc((nuint)(positions * n));
        try
        {
            var rng = new Random(n);
            var scales = new float[positions];
            var x = new float[n];
            for (int p = 0; p < positions; p++)
            {
                for (int d = 0; d < n; d++) x[d] = (float)(rng.NextDouble() * 2 - 1) * (1 + p % 7);
                scales[p] = Int8Row.Encode(x, rows + (long)p * n);
            }
            var weights = new float[4 * stride];
            for (int g = 0; g < 4; g++)
                for (int p = 0; p < positions; p++) weights[g * stride + p] = g == 1 && p < Int8Attention.Block ? 0f : (float)Math.Exp(-rng.NextDouble() * 12);
            if (nanWeight) weights[2 * stride + 7] = float.NaN;
            var start = Enumerable.Range(0, 4 * n).Select(i => (float)Math.Sin(i)).ToArray();
            var expected = (float[])start.Clone();
            fixed (float* pw = weights, pe = expected, pscale = scales)
                for (int g = 0; g < 4; g++) Int8Attention.Accumulate<ScalarWidth>(rows, pscale, n, n, pw + g * stride, pe + g * n, positions);
            foreach (var width in new[] { "scalar", "256", "widest" })
            {
                var actual = (float[])start.Clone();
                fixed (float* pw = weights, pa = actual, pscale = scales)
                    switch (width)
                    {
                        case "scalar": Int8Attention.AccumulateGroup4<ScalarWidth>(rows, pscale, n, n, pw, stride, pa, positions); break;
                        case "256": Int8Attention.AccumulateGroup4<Vector256Width>(rows, pscale, n, n, pw, stride, pa, positions); break;
                        default: Int8Attention.AccumulateGroup4<WidestVector>(rows, pscale, n, n, pw, stride, pa, positions); break;
                    }
                for (int i = 0; i < 4 * n; i++)
                    Assert.True(expected[i].Equals(actual[i]), $"{width}, head {i / n}, dimension {i % n}: {actual[i]} instead of {expected[i]}");
            }
            if (nanWeight) Assert.True(float.IsNaN(expected[2 * n]), "the NaN weight reaches its head's output");
        }
        finally
        {
            System.Runtime.InteropServices.NativeMemory.Free(rows);
        }
    }

    /// <summary>
    /// The int16 rounding of queries and weights (vectorized at whatever width this CPU runs, 512 or 256 bits — CI runs
    /// the suite both ways — with a scalar tail) equals the plain per-element definition: round half to even of
    /// x·(levels / max|x|), the scale max/levels, for lengths around every vector boundary; NaN anywhere gives NaN.
    /// </summary>
    [Fact]
    public void QueryAndWeightRoundingEqualThePlainDefinition()
    {
        var rng = new Random(17);
        foreach (int n in new[] { 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 128, 256, 300 })
        {
            var x = Enumerable.Range(0, n).Select(_ => (float)((rng.NextDouble() * 2 - 1) * Math.Exp(rng.Next(-8, 8)))).ToArray();
            var y = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 0.1)).ToArray();
            var q16 = new short[n];
            var u16 = new short[n];
            float qScale, uScale;
            fixed (float* px = x, py = y)
            fixed (short* pq = q16, pu = u16)
            {
                qScale = Int8Attention.QuantizeQuery(px, n, pq);
                uScale = n <= Int8Attention.Block ? Int8Attention.QuantizeWeights(px, py, n, pu) : float.NaN;
            }
            int levels = Int8Attention.QueryLevels(n);
            float qMax = x.Max(MathF.Abs), qInv = levels / qMax;
            Assert.Equal(qMax / levels, qScale);
            for (int i = 0; i < n; i++) Assert.True((short)(int)MathF.Round(x[i] * qInv) == q16[i], $"n {n}, query {i}: {q16[i]}");
            if (n > Int8Attention.Block) continue;
            var products = x.Zip(y, (a, b) => a * b).ToArray();
            float uMax = products.Max(MathF.Abs), uInv = 32767 / uMax;
            Assert.Equal(uMax / 32767, uScale);
            for (int i = 0; i < n; i++) Assert.True((short)(int)MathF.Round(x[i] * y[i] * uInv) == u16[i], $"n {n}, weight {i}: {u16[i]}");
            x[n / 2] = float.NaN;
            fixed (float* px = x)
            fixed (short* pq = q16)
                Assert.True(float.IsNaN(Int8Attention.QuantizeQuery(px, n, pq)), $"n {n}: a NaN query value gives NaN");
        }
    }

    /// <summary>
    /// Products exactly halfway between two integers round to the even one, in the vector body and the scalar tail alike
    /// (the vectors convert with the CPU's round-to-nearest-even, the tail with MathF.Round): with the largest product
    /// 32767 the scale is 1, so the rounded values are the products themselves.
    /// </summary>
    [Fact]
    public void RoundingTiesGoToEven()
    {
        float[] products = [32767f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 3.5f, 100.5f, 101.5f, -32766.5f, 4f, -4f, 0f, 7.5f, 8.5f];
        var x = Enumerable.Range(0, 37).Select(i => products[i % products.Length]).ToArray(); // 37: two 16-value vectors and a tail of 5
        var y = Enumerable.Repeat(1f, x.Length).ToArray();
        var u16 = new short[x.Length];
        float scale;
        fixed (float* px = x, py = y)
        fixed (short* pu = u16)
            scale = Int8Attention.QuantizeWeights(px, py, x.Length, pu);
        Assert.Equal(1f, scale);
        for (int i = 0; i < x.Length; i++) Assert.True((short)Math.Round(x[i], MidpointRounding.ToEven) == u16[i], $"weight {i} ({x[i]}): {u16[i]}");
    }
}
