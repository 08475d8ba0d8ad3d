using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using BitNetSharp.Formats;
using BitNetSharp.Kernels;
using BitNetSharp.Quantization;

namespace BitNetSharp.Tests.Model;

/// <summary>
/// The 512-bit Q6_K head dot (<see cref="HeadQ6K512"/>) against the 256-bit one (<see cref="HeadKernels.DotQ6_KQ8K"/>),
/// bit for bit: random blocks (random bytes, so every code, every high-bit pattern and scales down to −128, with
/// finite fp16 d), one to four tokens per call, and four rows side by side for one and for two tokens.
/// </summary>
public unsafe class HeadQ6K512Tests
{
    [Fact]
    public void EqualsThe256BitDotBitForBit()
    {
        Assert.SkipUnless(HeadQ6K512.IsSupported && Avx2.IsSupported, "the 512-bit Q6_K dot needs AVX-512BW");
        var rng = new Random(11);
        foreach (int blocks in new[] { 1, 2, 3, 10 })
        {
            int cols = blocks * Q6K.BlockWeights, rows = 9;
            long rowBytes = (long)blocks * Q6K.BlockBytes;
            var w = new byte[rows * rowBytes];
            rng.NextBytes(w);
            for (int r = 0; r < rows; r++)
                for (int b = 0; b < blocks; b++)
                    BitConverter.TryWriteBytes(w.AsSpan((int)(r * rowBytes + b * Q6K.BlockBytes + Q6K.DOffset)), HalfConversions.FloatToHalf((float)(rng.NextDouble() - 0.5) * 0.05f));
            const int tokens = HeadQ6K512.MaxTokens;
            var x = Enumerable.Range(0, tokens * cols).Select(i => i % 97 == 0 ? 0f : (float)(rng.NextDouble() * 6 - 3)).ToArray();
            var q = new sbyte[tokens * cols];
            var d = new float[tokens * blocks];
            var sums = new short[tokens * cols / 16];
            var got = new float[4];
            fixed (byte* pw = w)
            fixed (float* px = x)
            fixed (sbyte* pq = q)
            fixed (float* pd = d)
            fixed (short* ps = sums)
            fixed (float* pg = got)
            {
                for (int t = 0; t < tokens; t++) HeadKernels.QuantizeQ8KBlocks(px + t * cols, cols, pq + t * cols, pd + t * blocks, ps + t * cols / 16);
                for (int r = 0; r < rows; r++)
                    for (int n = 1; n <= tokens; n++)
                    {
                        HeadQ6K512.Dot(pw + r * rowBytes, pq, cols, pd, ps, blocks, n, pg);
                        for (int t = 0; t < n; t++)
                            Assert.True(BitConverter.SingleToInt32Bits(Expected(pw, pq, pd, ps, rowBytes, cols, blocks, r, t)) == BitConverter.SingleToInt32Bits(got[t]),
                                $"{blocks} blocks, row {r}, {n} tokens, token {t}: {got[t]:R} vs {Expected(pw, pq, pd, ps, rowBytes, cols, blocks, r, t):R}");
                    }
                HeadQ6K512.DotRows4(pw, pw + 3 * rowBytes, pw + 5 * rowBytes, pw + 8 * rowBytes, pq, pd, ps, blocks, pg, pg + 1, pg + 2, pg + 3);
                int[] which = [0, 3, 5, 8];
                for (int k = 0; k < 4; k++)
                    Assert.True(BitConverter.SingleToInt32Bits(Expected(pw, pq, pd, ps, rowBytes, cols, blocks, which[k], 0)) == BitConverter.SingleToInt32Bits(got[k]), $"{blocks} blocks, four rows, row {which[k]}");
                var eight = new float[8];
                fixed (float* pe = eight)
                    HeadQ6K512.DotRows4x2(pw, pw + 3 * rowBytes, pw + 5 * rowBytes, pw + 8 * rowBytes, pq, cols, pd, ps, blocks, pe);
                for (int k = 0; k < 4; k++)
                    for (int t = 0; t < 2; t++)
                        Assert.True(BitConverter.SingleToInt32Bits(Expected(pw, pq, pd, ps, rowBytes, cols, blocks, which[k], t)) == BitConverter.SingleToInt32Bits(eight[2 * k + t]),
                            $"{blocks} blocks, four rows and two tokens, row {which[k]}, token {t}");
            }
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => HeadQ6K512.Dot(null, null, 0, null, null, 1, 5, null));
        Assert.Throws<ArgumentOutOfRangeException>(() => HeadQ6K512.Dot(null, null, 0, null, null, 1, 0, null));
    }

    /// <summary>The inline scale conversion equals HalfToFloat for every one of the 65,536 halves (NaN as a NaN).</summary>
    [Fact]
    public void InlineHalfConversionEqualsHalfToFloatForEveryHalf()
    {
        for (int h = 0; h <= ushort.MaxValue; h++)
        {
            float expected = HalfConversions.HalfToFloat((ushort)h), got = HeadQ6K512.HalfToSingle((ushort)h);
            if (float.IsNaN(expected)) Assert.True(float.IsNaN(got), $"0x{h:X4}: {got:R}");
            else Assert.True(BitConverter.SingleToInt32Bits(expected) == BitConverter.SingleToInt32Bits(got), $"0x{h:X4}: {got:R} vs {expected:R}");
        }
    }

    private static float Expected(byte* w, sbyte* q, float* d, short* sums, long rowBytes, int cols, int blocks, int row, int token) =>
        HeadKernels.DotQ6_KQ8K(w + row * rowBytes, q + token * cols, d + token * blocks, sums + token * cols / 16, blocks);
}

/// <summary>
/// The Q6_K reference encoder's scale search on 512-bit vectors (sixteen groups per block, one per lane) writes the
/// same bytes as the one-group-at-a-time search, on blocks built to reach every branch: Gaussian and uniform values,
/// all-zero and sub-epsilon groups beside normal ones, groups of one repeated value (ties between trial scales), values
/// on rounding midpoints, a single outlier per group, and magnitudes from 1e-30 to 1e30.
/// </summary>
public class Q6KVectorSearchTests
{
    [Fact]
    public void VectorSearchWritesTheScalarSearchsBytes()
    {
        Assert.SkipUnless(System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated, "the vector search runs where 512-bit vectors are accelerated");
        var rng = new Random(21);
        float Gaussian() => (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        var blocks = new List<float[]>();
        for (int n = 0; n < 200; n++)
        {
            var b = new float[256];
            int kind = n % 8;
            float scale = MathF.Pow(10, rng.Next(-30, 31));
            for (int g = 0; g < 16; g++)
                for (int i = 0; i < 16; i++)
                {
                    int e = 16 * g + i;
                    b[e] = kind switch
                    {
                        0 => Gaussian() * 0.02f,
                        1 => (float)(rng.NextDouble() * 2 - 1) * scale,
                        2 => g % 3 == 0 ? 0f : g % 3 == 1 ? 1e-17f * Gaussian() : Gaussian(),
                        3 => (g + 1) * 0.25f,
                        4 => (rng.Next(-64, 65) + 0.5f) / 64f,
                        5 => i == g ? 100f * Gaussian() : 0.01f * Gaussian(),
                        6 => rng.Next(-3, 4),
                        _ => Gaussian() * scale,
                    };
                }
            blocks.Add(b);
        }
        var values = blocks.SelectMany(b => b).ToArray();
        var vector = new byte[blocks.Count * Q6K.BlockBytes];
        var scalar = new byte[blocks.Count * Q6K.BlockBytes];
        Q6K.EncodeReference(values, vector, vectorSearch: true);
        Q6K.EncodeReference(values, scalar, vectorSearch: false);
        for (int b = 0; b < blocks.Count; b++)
            Assert.True(vector.AsSpan(b * Q6K.BlockBytes, Q6K.BlockBytes).SequenceEqual(scalar.AsSpan(b * Q6K.BlockBytes, Q6K.BlockBytes)), $"block {b} (kind {b % 8}) differs");
    }
}
