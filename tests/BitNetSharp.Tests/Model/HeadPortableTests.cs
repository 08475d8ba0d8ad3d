using System.Runtime.Intrinsics.X86;
using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Kernels;
using BitNetSharp.Quantization;

namespace BitNetSharp.Tests.Model;

/// <summary>
/// The Q8_0 and Q6_K heads without AVX2 (ARM64): the portable integer dots compute what the AVX2 kernels compute —
/// int8-quantized activations (Q8_0 blocks of 32, Q8_K blocks of 256), exact integer sums per block, one multiply by
/// d_w·d_x — against a float64 reference of that definition and against the AVX2 kernels where this CPU has them.
/// (The fallback used the float activations: logits off by the activation quantization error on ARM only.)
/// tests/BitNetSharp.KernelCheck runs the head itself under qemu-aarch64.
/// </summary>
public unsafe class HeadPortableTests
{
    private const double U = 1.0 / (1 << 24);

    [Fact]
    public void PortableQ8_0DotIsTheQuantizedDot()
    {
        var rng = new Random(7);
        foreach (int blocks in new[] { 1, 3, 8, 80 })
        {
            int cols = blocks * 32;
            var row = new byte[blocks * 34];
            rng.NextBytes(row);
            for (int b = 0; b < blocks; b++)
                BitConverter.TryWriteBytes(row.AsSpan(b * 34), HalfConversions.FloatToHalf((float)(rng.NextDouble() - 0.5) * 0.05f));
            var x = Enumerable.Range(0, cols).Select(_ => (float)(rng.NextDouble() * 6 - 3)).ToArray();
            var q = new sbyte[cols];
            var d = new float[blocks];
            double exact = 0, magnitude = 0;
            float portable, avx2 = float.NaN;
            fixed (byte* w = row)
            fixed (float* px = x)
            fixed (sbyte* pq = q)
            fixed (float* pd = d)
            {
                HeadKernels.QuantizeQ8Blocks(px, cols, pq, pd);
                for (int b = 0; b < blocks; b++)
                {
                    double dw = HalfConversions.HalfToFloat(BitConverter.ToUInt16(row, b * 34));
                    for (int i = 0; i < 32; i++)
                    {
                        double term = dw * (sbyte)row[b * 34 + 2 + i] * (q[b * 32 + i] * (double)d[b]);
                        exact += term;
                        magnitude += Math.Abs(term);
                    }
                }
                portable = HeadKernels.DotQ8_0Q8Portable(w, pq, pd, blocks);
                if (Avx2.IsSupported) avx2 = HeadKernels.DotQ8_0Q8(w, pq, pd, blocks);
            }
            Assert.True(Math.Abs(portable - exact) <= 64 * U * magnitude, $"{blocks} blocks: portable {portable:R}, exact {exact:R}");
            if (Avx2.IsSupported) Assert.True(Math.Abs(portable - avx2) <= 64 * U * magnitude, $"{blocks} blocks: portable {portable:R}, AVX2 {avx2:R}");
        }
    }

    [Fact]
    public void PortableQ6_KDotIsTheQuantizedDot()
    {
        var rng = new Random(11);
        foreach (int blocks in new[] { 1, 3, 10 })
        {
            int cols = blocks * Q6K.BlockWeights;
            var row = new byte[blocks * Q6K.BlockBytes];
            rng.NextBytes(row);
            for (int b = 0; b < blocks; b++)
                BitConverter.TryWriteBytes(row.AsSpan(b * Q6K.BlockBytes + Q6K.DOffset), HalfConversions.FloatToHalf((float)(rng.NextDouble() - 0.5) * 0.1f));
            var x = Enumerable.Range(0, cols).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();
            var q = new sbyte[cols];
            var d = new float[blocks];
            var sums = new short[cols / 16];
            var w = new float[cols];
            double exact = 0, magnitude = 0;
            float portable, avx2 = float.NaN;
            fixed (byte* pw = row)
            fixed (float* px = x)
            fixed (sbyte* pq = q)
            fixed (float* pd = d)
            fixed (short* ps = sums)
            fixed (float* pww = w)
            {
                HeadKernels.QuantizeQ8KBlocks(px, cols, pq, pd, ps);
                for (int b = 0; b < blocks; b++) Q6K.DequantizeBlock(pw + b * Q6K.BlockBytes, pww + b * Q6K.BlockWeights);
                for (int i = 0; i < cols; i++)
                {
                    double term = (double)w[i] * (q[i] * (double)d[i / Q6K.BlockWeights]);
                    exact += term;
                    magnitude += Math.Abs(term);
                }
                portable = HeadKernels.DotQ6_KQ8KPortable(pw, pq, pd, ps, blocks);
                if (Avx2.IsSupported) avx2 = HeadKernels.DotQ6_KQ8K(pw, pq, pd, ps, blocks);
            }
            Assert.True(Math.Abs(portable - exact) <= 64 * U * magnitude, $"{blocks} blocks: portable {portable:R}, exact {exact:R}");
            if (Avx2.IsSupported) Assert.True(Math.Abs(portable - avx2) <= 64 * U * magnitude, $"{blocks} blocks: portable {portable:R}, AVX2 {avx2:R}");
        }
    }
}
