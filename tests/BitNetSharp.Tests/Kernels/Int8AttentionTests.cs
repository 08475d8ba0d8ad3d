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
}
