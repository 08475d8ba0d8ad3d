using BitNetSharp.Kernels;
using BitNetSharp.Quantization;
using static BitNetSharp.Tests.Kernels.KernelTestData;

namespace BitNetSharp.Tests.Kernels;

public unsafe class BinaryKernelTests
{
    public static TheoryData<string> Supported() => new(KernelRegistry.SupportedBinary.Select(k => k.Name));

    private static float[] Run(BinaryKernel kernel, BinaryMatrix w, QuantizedActivations x)
    {
        var y = new float[x.Tokens * w.Rows];
        fixed (float* py = y) kernel.MatMul(w, x, py, w.Rows, 0, w.Rows);
        return y;
    }

    /// <summary>
    /// BITNET_KERNEL is one variable for both families: every ternary name picks a binary kernel (or says this CPU cannot
    /// run it). avx512lut named no binary kernel, so a binary model failed to load under it.
    /// </summary>
    [Fact]
    public void EveryTernaryKernelNameSelectsABinaryKernel()
    {
        foreach (var ternary in KernelRegistry.AllTernary)
        {
            try
            {
                var binary = KernelRegistry.SelectBinary(ternary.Name);
                Assert.True(binary.IsSupported, ternary.Name);
            }
            catch (ArgumentException e)
            {
                Assert.Contains("this CPU cannot run it", e.Message);
            }
        }
    }

    [Theory]
    [MemberData(nameof(Supported))]
    public void EqualsOracleAndReference(string name)
    {
        var kernel = KernelRegistry.SelectBinary(name);
        var rng = new Random(77);
        foreach (int k in new[] { 1, 9, 128, 129, 300, 1024, 2051 })
        foreach (var pattern in new[] { Pattern.Random, Pattern.AllEqual, Pattern.Outlier, Pattern.AllZero })
        {
            using var w = RandomBinary(rng, 1 + rng.Next(20), k);
            int tokens = 1 + rng.Next(5);
            using var x = Quantize(Enumerable.Range(0, tokens).Select(_ => Activations(rng, k, pattern)).ToArray());
            var y = Run(kernel, w, x);
            var reference = Run(new ReferenceBinaryKernel(), w, x);
            for (int t = 0; t < tokens; t++)
            for (int r = 0; r < w.Rows; r++)
            {
                long d = 0;
                for (int c = 0; c < k; c++) d += w.Get(r, c) * x.Row(t)[c];
                float expected = (float)d / x.Scales[t] * w.RowScales[r];
                Assert.Equal(expected, reference[t * w.Rows + r]);
                Assert.Equal(BitConverter.SingleToInt32Bits(reference[t * w.Rows + r]), BitConverter.SingleToInt32Bits(y[t * w.Rows + r]));
            }
        }
    }

    [Theory]
    [MemberData(nameof(Supported))]
    public void Int16BoundIsExact(string name)
    {
        var kernel = KernelRegistry.SelectBinary(name);
        const int k = 8192;
        using var w = new BinaryMatrix(1, k);
        for (int c = 0; c < k; c++) w.Set(0, c, 1);
        using var x = new QuantizedActivations(1, k);
        x.RowSpan(0).Fill(-128);
        x.Scales[0] = 1f;
        x.Sums[0] = -128 * k;
        Assert.Equal(-128f * k, Run(kernel, w, x)[0]);
    }
}
