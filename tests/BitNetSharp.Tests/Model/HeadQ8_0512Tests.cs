using BitNetSharp.Kernels;
using BitNetSharp.Quantization;

namespace BitNetSharp.Tests.Model;

/// <summary>
/// The 512-bit Q8_0 head (<see cref="HeadQ8_0512"/>): every (row, token) sum the same whichever entry point and however
/// many rows or tokens a call takes (bit for bit: batched decode must not change logits), and each equal to the exact
/// block sums Σ_b d_w·d_x·Σ w·q (computed in double) to within float rounding. Random weights cover −128…127 and odd,
/// even and single block counts.
/// </summary>
public unsafe class HeadQ8_0512Tests
{
    [Fact]
    public void EveryEntryPointGivesTheSameSumsAndTheyAreTheExactDot()
    {
        Assert.SkipUnless(HeadQ8_0512.IsSupported, "the 512-bit Q8_0 head needs AVX-512BW");
        var rng = new Random(12);
        foreach (int blocks in new[] { 1, 2, 3, 7, 80 })
        {
            int cols = blocks * 32, rows = 6, tokens = HeadQ8_0512.MaxTokens;
            long rowBytes = blocks * 34L;
            var w = new byte[rows * rowBytes];
            rng.NextBytes(w);
            for (int r = 0; r < rows; r++)
                for (int b = 0; b < blocks; b++)
                    BitConverter.TryWriteBytes(w.AsSpan((int)(r * rowBytes + b * 34)), HalfConversions.FloatToHalf((float)(rng.NextDouble() + 0.01) * 0.02f));
            var x = Enumerable.Range(0, tokens * cols).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();
            var q = new sbyte[tokens * cols];
            var d = new float[tokens * blocks];
            var x16 = new short[tokens * cols];
            var got = new float[4];
            var single = new float[rows * tokens];
            fixed (byte* pw = w)
            fixed (float* px = x)
            fixed (sbyte* pq = q)
            fixed (float* pd = d)
            fixed (short* p16 = x16)
            fixed (float* pg = got)
            {
                for (int t = 0; t < tokens; t++) HeadKernels.QuantizeQ8Blocks(px + t * cols, cols, pq + t * cols, pd + t * blocks);
                HeadQ8_0512.Widen(pq, p16, tokens * cols);
                for (int i = 0; i < tokens * cols; i++) Assert.Equal(q[i], x16[i]);
                for (int r = 0; r < rows; r++)
                    for (int t = 0; t < tokens; t++)
                    {
                        HeadQ8_0512.Dot(pw + r * rowBytes, p16 + t * cols, cols, pd + t * blocks, blocks, 1, pg);
                        single[r * tokens + t] = got[0];
                        double exact = 0, magnitude = 0;
                        for (int b = 0; b < blocks; b++)
                        {
                            long sum = 0, abs = 0;
                            for (int i = 0; i < 32; i++)
                            {
                                int product = (sbyte)w[r * rowBytes + b * 34 + 2 + i] * q[t * cols + b * 32 + i];
                                sum += product;
                                abs += Math.Abs(product);
                            }
                            double scale = (double)HalfConversions.HalfToFloat(BitConverter.ToUInt16(w, (int)(r * rowBytes + b * 34))) * d[t * blocks + b];
                            exact += scale * sum;
                            magnitude += scale * abs;
                        }
                        Assert.True(Math.Abs(got[0] - exact) <= 1e-6 * magnitude + 1e-30, $"{blocks} blocks, row {r}, token {t}: {got[0]:R} vs exact {exact:R}");
                    }
                for (int r = 0; r < rows; r++)
                    for (int n = 2; n <= tokens; n++)
                    {
                        HeadQ8_0512.Dot(pw + r * rowBytes, p16, cols, pd, blocks, n, pg);
                        for (int t = 0; t < n; t++)
                            Assert.True(BitConverter.SingleToInt32Bits(single[r * tokens + t]) == BitConverter.SingleToInt32Bits(got[t]), $"{blocks} blocks, row {r}, {n} tokens, token {t}");
                    }
                HeadQ8_0512.DotRows4(pw + rowBytes, pw + 2 * rowBytes, pw + 4 * rowBytes, pw + 5 * rowBytes, p16, pd, blocks, pg, pg + 1, pg + 2, pg + 3);
                int[] which = [1, 2, 4, 5];
                for (int k = 0; k < 4; k++)
                    Assert.True(BitConverter.SingleToInt32Bits(single[which[k] * tokens]) == BitConverter.SingleToInt32Bits(got[k]), $"{blocks} blocks, four rows, row {which[k]}");
                var eight = new float[8];
                fixed (float* pe = eight)
                    HeadQ8_0512.DotRows4x2(pw + rowBytes, pw + 2 * rowBytes, pw + 4 * rowBytes, pw + 5 * rowBytes, p16, cols, pd, blocks, pe);
                for (int k = 0; k < 4; k++)
                    for (int t = 0; t < 2; t++)
                        Assert.True(BitConverter.SingleToInt32Bits(single[which[k] * tokens + t]) == BitConverter.SingleToInt32Bits(eight[2 * k + t]),
                            $"{blocks} blocks, four rows and two tokens, row {which[k]}, token {t}");
            }
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => HeadQ8_0512.Dot(null, null, 0, null, 1, 5, null));
    }
}
