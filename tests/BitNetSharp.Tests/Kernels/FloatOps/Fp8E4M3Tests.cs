using System.Runtime.Intrinsics;
using BitNetSharp.Kernels.FloatOps;

namespace BitNetSharp.Tests.Kernels.FloatOps;

public class Fp8E4M3Tests
{
    [Fact]
    public void EveryCodeDecodesAndEncodesBackToItself()
    {
        for (int code = 0; code < 256; code++)
            Assert.Equal((byte)code, Fp8E4M3.FromFloat(Fp8E4M3.ToFloat((byte)code)));
    }

    [Theory]
    [InlineData(0x00, 0f)]
    [InlineData(0x01, 0.001953125f)]      // 2^−9, the smallest subnormal
    [InlineData(0x07, 0.013671875f)]      // 7·2^−9, the largest subnormal
    [InlineData(0x08, 0.015625f)]         // 2^−6, the smallest normal
    [InlineData(0x38, 1f)]
    [InlineData(0x39, 1.125f)]
    [InlineData(0x40, 2f)]
    [InlineData(0x7E, 448f)]              // the largest finite
    [InlineData(0xB8, -1f)]
    [InlineData(0xFE, -448f)]
    public void KnownCodes(int code, float value)
    {
        Assert.Equal(value, Fp8E4M3.ToFloat((byte)code));
        Assert.Equal((byte)code, Fp8E4M3.FromFloat(value));
    }

    [Fact]
    public void SpecialValues()
    {
        Assert.True(float.IsNaN(Fp8E4M3.ToFloat(0x7F)));
        Assert.True(float.IsNaN(Fp8E4M3.ToFloat(0xFF)));
        Assert.Equal(0x7F, Fp8E4M3.FromFloat(float.NaN) & 0x7F);
        Assert.Equal(0x80, Fp8E4M3.FromFloat(-0f));
        Assert.True(float.IsNegative(Fp8E4M3.ToFloat(0x80)));
        // Saturation, infinities included.
        Assert.Equal(0x7E, Fp8E4M3.FromFloat(449f));
        Assert.Equal(0x7E, Fp8E4M3.FromFloat(464f));
        Assert.Equal(0x7E, Fp8E4M3.FromFloat(1e30f));
        Assert.Equal(0x7E, Fp8E4M3.FromFloat(float.PositiveInfinity));
        Assert.Equal(0xFE, Fp8E4M3.FromFloat(float.NegativeInfinity));
    }

    [Fact]
    public unsafe void TheVectorEncoderGivesTheScalarCodesOverEveryExponent()
    {
        // Every 241st fp32 bit pattern (17.8 M values: every exponent, both signs, NaNs, infinities, fp32 subnormals),
        // in blocks of 61 so each block runs the vector steps and a scalar tail, at scale 1; then the same values through
        // scales that put them near the fp8 boundaries (2^−6, 448, the subnormal steps, ties).
        const int Block = 61;
        float* x = stackalloc float[Block];
        byte* codes = stackalloc byte[Block];
        uint bits = 0;
        for (long done = 0; done < (1L << 32) / 241; done += Block)
        {
            for (int i = 0; i < Block; i++, bits += 241) x[i] = BitConverter.UInt32BitsToSingle(bits);
            Fp8E4M3.Encode(x, 1f, codes, Block);
            for (int i = 0; i < Block; i++)
                if (codes[i] != Fp8E4M3.FromFloat(x[i]))
                    Assert.Fail($"{x[i]:R} (0x{BitConverter.SingleToUInt32Bits(x[i]):X8}): vector 0x{codes[i]:X2}, scalar 0x{Fp8E4M3.FromFloat(x[i]):X2}");
        }
        var rng = new Random(11);
        float[] scales = [1f, 448f, 0.015625f, 1f / 512, 1f / 1024, 3f / 2048, 448f / 0.7f, 1.0000001f, 0.99999994f];
        for (int round = 0; round < 2000; round++)
        {
            for (int i = 0; i < Block; i++)
                x[i] = (rng.Next(4)) switch
                {
                    0 => (float)(rng.NextDouble() * 2 - 1),
                    1 => Fp8E4M3.ToFloat((byte)rng.Next(256)) * (rng.Next(2) == 0 ? 1f : 1.0625f),
                    2 => (rng.Next(17) - 8) / 512f + (rng.Next(2) == 0 ? 0 : 1f / 1024),
                    _ => (float)(rng.NextDouble() * 900 - 450),
                };
            float scale = scales[round % scales.Length];
            Fp8E4M3.Encode(x, scale, codes, Block);
            for (int i = 0; i < Block; i++) Assert.Equal(Fp8E4M3.FromFloat(x[i] * scale), codes[i]);
        }
    }

    [Fact]
    public void RoundsToNearestEven()
    {
        Assert.Equal(1f, Fp8E4M3.ToFloat(Fp8E4M3.FromFloat(1.0625f)));     // halfway 1 | 1.125 → even mantissa 0
        Assert.Equal(1.25f, Fp8E4M3.ToFloat(Fp8E4M3.FromFloat(1.1875f)));  // halfway 1.125 | 1.25 → even mantissa 2
        Assert.Equal(1.125f, Fp8E4M3.ToFloat(Fp8E4M3.FromFloat(1.07f)));
        Assert.Equal(0f, Fp8E4M3.ToFloat(Fp8E4M3.FromFloat(0.0009765625f)));                 // 2^−10: halfway 0 | 2^−9 → 0
        Assert.Equal(0.00390625f, Fp8E4M3.ToFloat(Fp8E4M3.FromFloat(3 * 0.0009765625f)));   // 3·2^−10 → 2·2^−9
        Assert.Equal(0.015625f, Fp8E4M3.ToFloat(Fp8E4M3.FromFloat(0.0146484375f)));          // 7.5·2^−9 → 8·2^−9 = 2^−6
        Assert.Equal(448f, Fp8E4M3.ToFloat(Fp8E4M3.FromFloat(432f)));                        // halfway 416 | 448 → 448 (even m=6)
        Assert.Equal(2f, Fp8E4M3.ToFloat(Fp8E4M3.FromFloat(1.97f)));                          // carry into the exponent
    }

    [Fact]
    public void NormalValuesWithinHalfAnUlp()
    {
        var rng = new Random(7);
        for (int i = 0; i < 100_000; i++)
        {
            float x = MathF.Pow(2f, (float)(rng.NextDouble() * 14.8 - 6)) * (rng.Next(2) == 0 ? 1 : -1);
            if (MathF.Abs(x) > 448f) continue;
            float y = Fp8E4M3.ToFloat(Fp8E4M3.FromFloat(x));
            Assert.True(MathF.Abs(y - x) <= MathF.Abs(x) * 0.0625f, $"{x} → {y}");
        }
    }

    [Fact]
    public void VectorDecodeEqualsTheTable()
    {
        var codes = new uint[256];
        for (int i = 0; i < 256; i++) codes[i] = (uint)i;
        for (int i = 0; i < 256; i += 16)
        {
            var lo = Fp8E4M3.Decode(Vector256.Create(codes.AsSpan(i, 8)));
            var hi = Fp8E4M3.Decode(Vector256.Create(codes.AsSpan(i + 8, 8)));
            var wide = Fp8E4M3.Decode(Vector512.Create(codes.AsSpan(i, 16)));
            for (int j = 0; j < 16; j++)
            {
                float expected = Fp8E4M3.ToFloat((byte)(i + j));
                float v256 = j < 8 ? lo[j] : hi[j - 8];
                Assert.Equal(float.IsNaN(expected), float.IsNaN(v256));
                Assert.Equal(float.IsNaN(expected), float.IsNaN(wide[j]));
                if (!float.IsNaN(expected))
                {
                    Assert.Equal(BitConverter.SingleToInt32Bits(expected), BitConverter.SingleToInt32Bits(v256));
                    Assert.Equal(BitConverter.SingleToInt32Bits(expected), BitConverter.SingleToInt32Bits(wide[j]));
                }
            }
        }
    }
}
