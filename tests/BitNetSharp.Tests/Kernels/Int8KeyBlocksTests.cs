using System.Runtime.InteropServices;
using BitNetSharp.Kernels;
using BitNetSharp.Kernels.FloatOps;
using BitNetSharp.Model;

namespace BitNetSharp.Tests.Kernels;

/// <summary>
/// Int8 keys in blocks of 16 positions (<see cref="Int8KeyBlocks"/>) score exactly like the same keys stored as rows:
/// the same integer sums and float operations, so the same bits, at every width, for any start and count.
/// </summary>
public unsafe class Int8KeyBlocksTests
{
    private const int Positions = 70; // four whole blocks and a partial one

    private sealed class Keys : IDisposable
    {
        public readonly int N;
        public readonly byte* Rows;
        public readonly byte* Blocks;
        public readonly float[] Scales = new float[Positions];

        public Keys(int n, int seed, bool extreme = false)
        {
            N = n;
            Rows = (byte*)NativeMemory.Alloc((nuint)(Positions * n));
            Blocks = (byte*)NativeMemory.Alloc((nuint)(Int8KeyBlocks.RoundUp(Positions) * n));
            new Span<byte>(Blocks, Int8KeyBlocks.RoundUp(Positions) * n).Fill(0x5A); // the partial block's tail is garbage
            var rng = new Random(seed);
            var x = new float[n];
            for (int p = 0; p < Positions; p++)
            {
                for (int d = 0; d < n; d++) x[d] = extreme ? (p % 2 == 0 ? 1f : -1f) : (float)(rng.NextDouble() * 2 - 1) * (1 + p % 5);
                Scales[p] = Int8Row.Encode(x, Rows + (long)p * n);
                if (extreme && p % 3 == 0) new Span<byte>(Rows + (long)p * n, n).Fill(0x80); // −128: never encoded, but storable
                Int8KeyBlocks.Store(Rows + (long)p * n, Blocks, p, n);
            }
        }

        public void Dispose()
        {
            NativeMemory.Free(Rows);
            NativeMemory.Free(Blocks);
        }
    }

    private static short[] Query(int n, int seed, bool extreme)
    {
        var rng = new Random(seed);
        int levels = Int8Attention.QueryLevels(n);
        return Enumerable.Range(0, n).Select(_ => (short)(extreme ? -levels : rng.Next(-levels, levels + 1))).ToArray();
    }

    public static TheoryData<int, bool> Shapes() => new() { { 32, false }, { 128, false }, { 256, false }, { 128, true }, { 1024, true } };

    private static readonly (int Start, int Count)[] Ranges = [(0, Positions), (5, 11), (16, 16), (3, 60), (69, 1), (17, 40), (0, 0)];

    [Theory, MemberData(nameof(Shapes))]
    public void ScoresEqualTheRowLayoutAtEveryWidth(int n, bool extreme)
    {
        using var keys = new Keys(n, n, extreme);
        var q16 = Query(n, n + 1, extreme);
        var expected = new float[Positions];
        var actual = new float[Positions];
        fixed (short* q = q16)
        fixed (float* scales = keys.Scales, e = expected, a = actual)
            foreach (var (start, count) in Ranges)
            {
                Int8Attention.Scores<ScalarWidth>(keys.Rows + (long)start * n, scales + start, n, n, q, e, count, 0.37f);
                foreach (var width in new[] { "scalar", "256", "widest" })
                {
                    Array.Fill(actual, float.NaN);
                    switch (width)
                    {
                        case "scalar": Int8KeyBlocks.Scores<ScalarWidth>(keys.Blocks, scales, n, q, a, start, count, 0.37f); break;
                        case "256": Int8KeyBlocks.Scores<Vector256Width>(keys.Blocks, scales, n, q, a, start, count, 0.37f); break;
                        default: Int8KeyBlocks.Scores<WidestVector>(keys.Blocks, scales, n, q, a, start, count, 0.37f); break;
                    }
                    Assert.Equal(expected.AsSpan(0, count).ToArray(), actual.AsSpan(0, count).ToArray());
                    Assert.All(actual.AsSpan(count).ToArray(), v => Assert.True(float.IsNaN(v), $"wrote past count ({width}, start {start})"));
                }
            }
    }

    [Theory, MemberData(nameof(Shapes))]
    public void GroupOfFourEqualsFourSingleQueries(int n, bool extreme)
    {
        using var keys = new Keys(n, 2 * n, extreme);
        var q16 = Enumerable.Range(0, 4).SelectMany(g => Query(n, 10 + g, extreme)).ToArray();
        float[] factors = [0.5f, -1.25f, 3e-3f, 7f];
        const int stride = Positions + 3;
        var expected = new float[4 * stride];
        var actual = new float[4 * stride];
        fixed (short* q = q16)
        fixed (float* scales = keys.Scales, e = expected, a = actual, f = factors)
            foreach (var (start, count) in Ranges)
            {
                for (int g = 0; g < 4; g++) Int8Attention.Scores<ScalarWidth>(keys.Rows + (long)start * n, scales + start, n, n, q + g * n, e + g * stride, count, factors[g]);
                foreach (var width in new[] { "scalar", "256", "widest" })
                {
                    Array.Fill(actual, float.NaN);
                    switch (width)
                    {
                        case "scalar": Int8KeyBlocks.ScoresGroup4<ScalarWidth>(keys.Blocks, scales, n, q, f, a, stride, start, count); break;
                        case "256": Int8KeyBlocks.ScoresGroup4<Vector256Width>(keys.Blocks, scales, n, q, f, a, stride, start, count); break;
                        default: Int8KeyBlocks.ScoresGroup4<WidestVector>(keys.Blocks, scales, n, q, f, a, stride, start, count); break;
                    }
                    for (int g = 0; g < 4; g++)
                    {
                        Assert.Equal(expected.AsSpan(g * stride, count).ToArray(), actual.AsSpan(g * stride, count).ToArray());
                        Assert.All(actual.AsSpan(g * stride + count, stride - count).ToArray(), v => Assert.True(float.IsNaN(v), $"wrote past count ({width}, query {g}, start {start})"));
                    }
                }
            }
    }

    [Fact]
    public void StoreThenLoadGivesTheRowBack()
    {
        using var keys = new Keys(128, 3);
        var row = new byte[128];
        fixed (byte* r = row)
            for (int p = 0; p < Positions; p++)
            {
                Int8KeyBlocks.Load(keys.Blocks, p, 128, r);
                Assert.Equal(new Span<byte>(keys.Rows + (long)p * 128, 128).ToArray(), row);
            }
    }

    [Fact]
    public void NonFiniteQueryGivesNonFiniteScores()
    {
        using var keys = new Keys(128, 4);
        var q = Enumerable.Range(0, 128).Select(i => i == 7 ? float.NaN : 0.1f).ToArray();
        var scores = new float[Positions];
        fixed (float* pq = q, ps = scores, scales = keys.Scales)
            AttentionKernels.ScoresInt8Blocks<WidestVector>(keys.Blocks, scales, 128, pq, ps, 0, Positions, 1f);
        Assert.All(scores, s => Assert.True(float.IsNaN(s)));
    }

    /// <summary>The cache stores int8 keys of head dimension 128 in blocks, allocates whole blocks, and reads them back as written.</summary>
    [Fact]
    public void CacheRoundTripsBlockedKeys()
    {
        const int context = 37; // not a whole number of blocks
        using var cache = new KvCache(2, 3, 128, context, KvCacheType.Int8);
        Assert.Equal(KvCache.BytesFor(2, 3, 128, context, KvCacheType.Int8), cache.ByteLength);
        Assert.Equal(2L * 3 * (48 + 37) * 128 + 2L * 2 * 3 * 37 * sizeof(float), cache.ByteLength);
        var rng = new Random(9);
        var written = new List<float[]>();
        for (int p = 0; p < context; p++)
            for (int l = 0; l < 2; l++)
            {
                var k = Enumerable.Range(0, cache.KvDim).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
                cache.Write(l, p, k, k);
                written.Add(k);
            }
        var kOut = new float[cache.KvDim];
        var vOut = new float[cache.KvDim];
        for (int p = 0; p < context; p++)
            for (int l = 0; l < 2; l++)
            {
                cache.Read(l, p, kOut, vOut);
                Assert.Equal(vOut, kOut); // same input, same encoding: keys in blocks decode like values in rows
                var x = written[2 * p + l];
                for (int i = 0; i < x.Length; i++) Assert.Equal(x[i], kOut[i], 1f / 127);
            }
    }
}
