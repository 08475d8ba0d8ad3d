using BitNetSharp.Kernels;
using BitNetSharp.Quantization;

namespace BitNetSharp.Tests.Kernels;

/// <summary>The vector KV-cache row encoders against their scalar definitions, bit for bit.</summary>
public unsafe class KvEncodingTests
{
    /// <summary>Float bit patterns: a stride over all 2³² (every exponent, both signs), plus the edges of the half range.</summary>
    private static IEnumerable<uint> Patterns()
    {
        for (ulong b = 0; b <= uint.MaxValue; b += 251) yield return (uint)b;
        uint[] edges =
        [
            0x00000000, 0x80000000, 0x00000001, 0x33000000, 0x33000001, 0x337FFFFF, 0x33800000, 0x387FC000, 0x387FE000, 0x387FFFFF,
            0x38800000, 0x38801000, 0x38802000, 0x3F800FFF, 0x3F801000, 0x3F803000, 0x477FE000, 0x477FEFFF, 0x477FF000, 0x477FFFFF,
            0x47800000, 0x7F7FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFC00001, 0x7FFFFFFF,
        ];
        foreach (uint e in edges)
            for (uint d = 0; d < 3; d++)
            {
                yield return e + d;
                yield return e - d;
                yield return e ^ 0x80000000u;
            }
    }

    [Fact]
    public void ToHalfIsTheHalfConversionBitForBit()
    {
        var values = Patterns().Select(BitConverter.UInt32BitsToSingle).ToArray();
        var got = new ushort[values.Length];
        // Rows of 128 as the cache writes them; the row holding an overflow or NaN takes the scalar path from there.
        fixed (ushort* h = got)
            for (int start = 0; start < values.Length; start += 128)
                KvEncoding.ToHalf(values.AsSpan(start, Math.Min(128, values.Length - start)), h + start);
        int checkedValues = 0;
        for (int i = 0; i < values.Length; i++)
        {
            ushort expect = BitConverter.HalfToUInt16Bits((Half)values[i]);
            Assert.True(expect == got[i], $"0x{BitConverter.SingleToUInt32Bits(values[i]):X8} ({values[i]:R}): expected 0x{expect:X4}, got 0x{got[i]:X4}");
            checkedValues++;
        }
        Assert.True(checkedValues > 17_000_000);
    }

    [Fact]
    public void ToHalfOfFiniteRowsTakesTheVectorPathForEveryValue()
    {
        // Rows of ordinary, subnormal and tie values (no overflow): every 16-value group is converted by the vector code.
        var rng = new Random(5);
        var x = new float[4096];
        for (int i = 0; i < x.Length; i++)
            x[i] = (i % 4) switch
            {
                0 => (float)((rng.NextDouble() - 0.5) * 100),
                1 => (float)((rng.NextDouble() - 0.5) * 1e-5), // half subnormals
                2 => BitConverter.UInt32BitsToSingle(0x3F801000u + ((uint)rng.Next(1024) << 13)), // exact ties
                _ => (float)((rng.NextDouble() - 0.5) * 131000), // up to the overflow edge
            };
        for (int i = 3; i < x.Length; i += 4) x[i] = Math.Clamp(x[i], -65519f, 65519f);
        var got = new ushort[x.Length];
        fixed (ushort* h = got) KvEncoding.ToHalf(x, h);
        for (int i = 0; i < x.Length; i++) Assert.Equal(BitConverter.HalfToUInt16Bits((Half)x[i]), got[i]);
    }

    [Theory]
    [InlineData(128)]
    [InlineData(64)]
    [InlineData(100)]
    [InlineData(7)]
    public void AbsMaxIsTheMaxOfMagnitudesAndNaNWhenAnyIsNaN(int n)
    {
        var rng = new Random(n);
        for (int trial = 0; trial < 200; trial++)
        {
            var x = Enumerable.Range(0, n).Select(_ => (float)((rng.NextDouble() - 0.5) * Math.Pow(10, rng.Next(-6, 6)))).ToArray();
            if (trial % 5 == 1) x[rng.Next(n)] = float.NegativeInfinity;
            if (trial % 7 == 2) x[rng.Next(n)] = float.NaN;
            if (trial % 11 == 3) Array.Clear(x);
            float expect = 0f;
            foreach (float v in x) expect = MathF.Max(expect, MathF.Abs(v));
            float got = KvEncoding.AbsMax(x);
            if (float.IsNaN(expect)) Assert.True(float.IsNaN(got), $"trial {trial}: expected NaN, got {got}");
            else Assert.Equal(BitConverter.SingleToInt32Bits(expect), BitConverter.SingleToInt32Bits(got));
        }
    }

    [Theory]
    [InlineData(128)]
    [InlineData(96)]
    [InlineData(45)]
    public void RoundScaledIsTheScalarRoundingBitForBit(int n)
    {
        var rng = new Random(n);
        for (int trial = 0; trial < 200; trial++)
        {
            var x = Enumerable.Range(0, n).Select(_ => (float)((rng.NextDouble() - 0.5) * 8)).ToArray();
            // Exact ties at ±k.5 after scaling by 1 (round half to even decides them).
            if (trial % 3 == 0) for (int i = 0; i < n; i += 3) x[i] = (rng.Next(-254, 254) | 1) * 0.5f / 2f;
            float max = x.Max(MathF.Abs);
            float inv = trial % 3 == 0 ? 1f : 127f / max;
            var got = new sbyte[n];
            fixed (sbyte* q = got) KvEncoding.RoundScaled(x, inv, q);
            for (int i = 0; i < n; i++) Assert.Equal((sbyte)Math.Clamp((int)MathF.Round(x[i] * inv), -127, 127), got[i]);
        }
    }
}
