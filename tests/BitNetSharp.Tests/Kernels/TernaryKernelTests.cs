using BitNetSharp.Formats.Gguf;
using BitNetSharp.Kernels;
using BitNetSharp.Quantization;
using BitNetSharp.Threading;
using static BitNetSharp.Tests.Kernels.KernelTestData;

namespace BitNetSharp.Tests.Kernels;

/// <summary>
/// The tests that set the process-wide <see cref="TernaryKernel.WeightStreams"/> (the kernel, head and profiler tests)
/// run one at a time: one test's setting changed how another's products were grouped (seen only on a loaded CI machine).
/// </summary>
[CollectionDefinition(nameof(WeightStreamsCollection))]
public sealed class WeightStreamsCollection;

[Collection(nameof(WeightStreamsCollection))]
public unsafe class TernaryKernelTests
{
    /// <summary>Every variant this CPU supports, by name (the reference included, checked against the oracle).</summary>
    public static TheoryData<string> Supported() => new(KernelRegistry.SupportedTernary.Select(k => k.Name));

    private static float[] Run(TernaryKernel kernel, TernaryMatrix w, QuantizedActivations x)
    {
        var y = new float[x.Tokens * w.Rows];
        fixed (float* py = y) kernel.MatMul(w, x, py, w.Rows, 0, w.Rows);
        return y;
    }

    private static void AssertBitwiseEqual(float[] expected, float[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(actual[i]))
                Assert.Fail($"{what}: element {i} differs: reference {expected[i]:R}, variant {actual[i]:R}");
    }

    [Theory]
    [MemberData(nameof(Supported))]
    public void EqualsReferenceBitForBitOnRandomShapes(string name)
    {
        var kernel = KernelRegistry.SelectTernary(name);
        var reference = new ReferenceTernaryKernel();
        var rng = new Random(1234);
        int[] ks = [1, 7, 31, 127, 128, 129, 255, 256, 257, 383, 640, 1000, 2560 + 3];
        int[] tokenCounts = [1, 2, 3, 4, 5, 8, 11];
        foreach (int k in ks)
        {
            int n = 1 + rng.Next(37);
            var w = RandomTernary(rng, n, k);
            int tokens = tokenCounts[rng.Next(tokenCounts.Length)];
            var pattern = (Pattern)rng.Next(5);
            using var x = Quantize(Enumerable.Range(0, tokens).Select(_ => Activations(rng, k, pattern)).ToArray());
            AssertBitwiseEqual(Run(reference, w, x), Run(kernel, w, x), $"{name} K={k} N={n} T={tokens} {pattern}");
            w.Dispose();
        }
    }

    [Theory]
    [MemberData(nameof(Supported))]
    public void ExtremeActivations(string name)
    {
        var kernel = KernelRegistry.SelectTernary(name);
        var rng = new Random(99);
        foreach (var pattern in new[] { Pattern.AllEqual, Pattern.Outlier, Pattern.AllZero })
        foreach (int tokens in new[] { 1, 4, 6 })
        {
            using var w = RandomTernary(rng, 9, 515);
            using var x = Quantize(Enumerable.Range(0, tokens).Select(_ => Activations(rng, 515, pattern)).ToArray());
            var y = Run(kernel, w, x);
            for (int t = 0; t < tokens; t++)
            for (int r = 0; r < w.Rows; r++)
                Assert.Equal(Oracle(w, x, r, t), y[t * w.Rows + r]);
        }
    }

    /// <summary>The int16 accumulation bound: every code +1 against q = −128 over 8192 inputs (and +127), the worst
    /// case for vpmaddubsw partial sums. The integer result must still be exact. Eleven rows (patterns repeating every
    /// three) and one, two or four tokens, so the eight-row decode paths and the row tail both meet it.</summary>
    [Theory]
    [MemberData(nameof(Supported))]
    public void SaturationWorstCaseIsExact(string name)
    {
        var kernel = KernelRegistry.SelectTernary(name);
        const int k = 8192 + 128, rows = 11;
        using var w = TernaryMatrix.Allocate(rows, k);
        for (int r = 0; r < rows; r++)
        for (int c = 0; c < k; c++)
            w.Set(r, c, r % 3 == 0 ? 1 : r % 3 == 1 ? -1 : c % 2 == 0 ? 1 : -1);
        foreach (sbyte value in new sbyte[] { -128, 127 })
        foreach (int tokens in new[] { 1, 2, 4 })
        {
            using var x = new QuantizedActivations(tokens, k);
            for (int t = 0; t < tokens; t++)
            {
                x.RowSpan(t)[..k].Fill(value);
                x.Scales[t] = 1f;
                x.Sums[t] = value * k;
            }
            var y = Run(kernel, w, x);
            for (int t = 0; t < tokens; t++)
            for (int r = 0; r < rows; r++)
                Assert.Equal(r % 3 == 0 ? (float)value * k : r % 3 == 1 ? -(float)value * k : 0f, y[t * rows + r]);
        }
    }

    /// <summary>
    /// Decode with one weight stream and with four (<see cref="TernaryKernel.WeightStreams"/>: one row from each quarter
    /// of the range per pass, the epilogue on four lanes, then the rows past the last quarter): the reference's floats bit
    /// for bit, whatever the CPU's default. Row counts around the four-stream threshold (32) and with leftovers, odd block
    /// counts (the 256-bit tail), sub-ranges as a worker's slice, and the int16 worst case over 8192 inputs.
    /// </summary>
    [Theory]
    [MemberData(nameof(Supported))]
    public void OneAndFourWeightStreamsEqualReference(string name)
    {
        var kernel = KernelRegistry.SelectTernary(name);
        var reference = new ReferenceTernaryKernel();
        var rng = new Random(4242);
        var before = TernaryKernel.WeightStreamsState;
        try
        {
            foreach (int streams in new[] { 1, 4 })
            {
                TernaryKernel.WeightStreams = streams;
                foreach (var (rows, k) in new[] { (31, 256), (32, 128), (33, 384), (37, 2563), (70, 640), (131, 1000) })
                {
                    using var w = RandomTernary(rng, rows, k);
                    using var x = Quantize([Activations(rng, k, (Pattern)rng.Next(5))]);
                    var expected = Run(reference, w, x);
                    AssertBitwiseEqual(expected, Run(kernel, w, x), $"{name}, {streams} stream(s), K={k} N={rows}");
                    // Two workers' slices, the first ending mid-range.
                    var y = new float[rows];
                    int split = rows / 3 + 1;
                    fixed (float* py = y)
                    {
                        kernel.MatMul(w, x, py, rows, 0, split);
                        kernel.MatMul(w, x, py, rows, split, rows);
                    }
                    AssertBitwiseEqual(expected, y, $"{name}, {streams} stream(s), K={k} N={rows}, slices at {split}");
                }
                const int kw = 8192 + 128, rowsW = 35;
                using var worst = TernaryMatrix.Allocate(rowsW, kw);
                for (int r = 0; r < rowsW; r++)
                for (int c = 0; c < kw; c++)
                    worst.Set(r, c, r % 3 == 0 ? 1 : r % 3 == 1 ? -1 : c % 2 == 0 ? 1 : -1);
                foreach (sbyte value in new sbyte[] { -128, 127 })
                {
                    using var x = new QuantizedActivations(1, kw);
                    x.RowSpan(0)[..kw].Fill(value);
                    x.Scales[0] = 1f;
                    x.Sums[0] = value * kw;
                    var y = Run(kernel, worst, x);
                    for (int r = 0; r < rowsW; r++)
                        Assert.Equal(r % 3 == 0 ? (float)value * kw : r % 3 == 1 ? -(float)value * kw : 0f, y[r]);
                }
            }
        }
        finally
        {
            TernaryKernel.WeightStreamsState = before;
        }
    }

    [Fact]
    public void WeightStreamsAreOneOrFour()
    {
        Assert.Contains(TernaryKernel.WeightStreams, new[] { 1, 4 });
        Assert.Contains(TernaryKernel.DefaultWeightStreams(), new[] { 1, 4 });
        Assert.Throws<ArgumentOutOfRangeException>(() => TernaryKernel.WeightStreams = 2);
    }

    /// <summary>Four weight streams by default on Zen 3 (measured faster there) and Zen 5; Zen 4, the rest of family 19h, keeps one.</summary>
    [Fact]
    public void Zen3IsToldFromZen4ByItsModel()
    {
        foreach (int model in new[] { 0x01, 0x08, 0x21, 0x44, 0x50 }) Assert.True(TernaryKernel.IsZen3(0x19, model), $"model {model:x}");
        foreach (int model in new[] { 0x11, 0x18, 0x61, 0x74, 0xA0 }) Assert.False(TernaryKernel.IsZen3(0x19, model), $"model {model:x}");
        Assert.False(TernaryKernel.IsZen3(0x17, 0x31)); // Zen 2
        Assert.False(TernaryKernel.IsZen3(0x1A, 0x02)); // Zen 5
        if (TernaryKernel.AmdFamily() is var family and >= 0)
            Assert.Equal(family >= 0x1A || TernaryKernel.IsZen3(family, TernaryKernel.AmdModel()) ? 4 : 1, TernaryKernel.DefaultWeightStreams());
        else
            Assert.Equal(-1, TernaryKernel.AmdModel());
    }

    /// <summary>
    /// A stream count set in code holds for the quantized heads as BITNET_WEIGHT_STREAMS does: on Intel they read four
    /// rows side by side by default and a set 1 was ignored (tests looping over both counts ran the four-row path twice),
    /// and bench/profile said "1 weight stream(s)" while the head read four.
    /// </summary>
    [Fact]
    public void ASetStreamCountHoldsForTheQuantizedHeads()
    {
        var before = TernaryKernel.WeightStreamsState;
        try
        {
            TernaryKernel.WeightStreams = 1;
            Assert.False(HeadKernels.QuantizedRowsSideBySide);
            Assert.Equal("1 weight stream(s)", HeadKernels.DescribeStreams(GgmlType.Q6_K));
            TernaryKernel.WeightStreams = 4;
            Assert.True(HeadKernels.QuantizedRowsSideBySide);
            Assert.Equal("4 weight stream(s)", HeadKernels.DescribeStreams(GgmlType.Q8_0));
        }
        finally
        {
            TernaryKernel.WeightStreamsState = before;
        }
    }

    [Fact]
    public void ReferenceMatchesIndependentOracle()
    {
        var rng = new Random(5);
        using var w = RandomTernary(rng, 13, 300);
        using var x = Quantize(Enumerable.Range(0, 3).Select(_ => Activations(rng, 300, Pattern.Random)).ToArray());
        var y = Run(new ReferenceTernaryKernel(), w, x);
        for (int t = 0; t < 3; t++)
        for (int r = 0; r < 13; r++)
            Assert.Equal(Oracle(w, x, r, t), y[t * 13 + r]);
    }

    /// <summary>
    /// Widths that pad to the same multiple of 128 (100 and 120) are still two widths: refused, as differing padded
    /// widths are (the extra inputs were dropped, or the missing ones read as 0, without a word). A token count past the
    /// buffer or below 0 is refused where it is set (it threw IndexOutOfRange from inside a kernel, or computed nothing).
    /// </summary>
    [Theory]
    [MemberData(nameof(Supported))]
    public unsafe void MismatchedWidthsAndTokenCountsAreRefused(string name)
    {
        var kernel = KernelRegistry.SelectTernary(name);
        using var w = TernaryMatrix.Allocate(16, 100, 1f);
        using var x = new QuantizedActivations(1, 120);
        var y = new float[16];
        fixed (float* py = y)
        {
            float* p = py;
            var e = Assert.Throws<ArgumentException>(() => kernel.MatMul(w, x, p, 16, 0, 16));
            Assert.Contains("Weight rows have 100 inputs but the activations have 120", e.Message);
            // The parallel driver the engine uses, directly and on prepared rows (one product or several).
            using var pool = new BitNetSharp.Threading.WorkerPool(1);
            using var mm = new TernaryMatMul(pool);
            Assert.Contains("have 100 inputs but the activations have 120", Assert.Throws<ArgumentException>(() => mm.Run(kernel, w, x, p, 16)).Message);
            Assert.Throws<ArgumentException>(() => mm.Run(kernel, w, mm.Prepare(kernel, x), p, 16));
        }
        using var two = new QuantizedActivations(2, 100);
        Assert.Throws<ArgumentOutOfRangeException>(() => two.Tokens = 3);
        Assert.Throws<ArgumentOutOfRangeException>(() => two.Tokens = -1);
        two.Tokens = 0;
        Assert.Equal(0, two.Tokens);
    }

    [Fact]
    public void EpilogueFollowsBitnetCppOrder()
    {
        // y = fp32(fp32(D − A) / s_x) · scale: a hand-computed case.
        using var w = TernaryMatrix.Allocate(1, 4, scale: 0.5f);
        w.Set(0, 0, 1); w.Set(0, 1, -1); w.Set(0, 2, 0); w.Set(0, 3, 1);
        using var x = new QuantizedActivations(1, 4);
        Int8ActivationQuantizer.Quantize([1f, -0.5f, 0.25f, 2f], x, 0);
        // γ = 2, s = 63.5: q = [64 (63.5 → even 64), −32 (−31.75), 16 (15.875), 127]
        Assert.Equal(new sbyte[] { 64, -32, 16, 127 }, x.RowSpan(0)[..4].ToArray());
        var y = Run(new ReferenceTernaryKernel(), w, x);
        Assert.Equal((float)(64 + 32 + 127) / 63.5f * 0.5f, y[0]);
    }

    [Fact]
    public void ParallelRunEqualsSingleThread()
    {
        var rng = new Random(11);
        using var w = RandomTernary(rng, 333, 640);
        using var x = Quantize(Enumerable.Range(0, 5).Select(_ => Activations(rng, 640, Pattern.Random)).ToArray());
        var kernel = KernelRegistry.Ternary;
        var expected = Run(kernel, w, x);
        using var pool = new WorkerPool(3);
        using var op = new TernaryMatMul(pool);
        var y = new float[expected.Length];
        for (int repeat = 0; repeat < 50; repeat++)
        {
            Array.Clear(y);
            fixed (float* py = y) op.Run(kernel, w, x, py, w.Rows);
            Assert.Equal(expected, y);
        }
    }

    /// <summary>A four-stream pass's positions [from, to) of a slice's quarters: the reference's floats on exactly those rows
    /// (the rest untouched), for one to three tokens (pairs of tokens share each weight's unpacking, an odd one goes alone;
    /// 3200 inputs: an odd number of 256-weight blocks), every variant and the default (range per quarter) of kernels
    /// without a four-stream dot.</summary>
    [Theory]
    [MemberData(nameof(SupportedAndReference))]
    public void QuarterPositionsEqualReference(string name)
    {
        var kernel = name == "reference" ? new ReferenceTernaryKernel() : KernelRegistry.SelectTernary(name);
        var rng = new Random(77);
        foreach (int k in new[] { 640, 3200 })
        {
            using var w = RandomTernary(rng, 70, k);
            foreach (int tokens in new[] { 1, 2, 3 })
            {
                using var x = Quantize(Enumerable.Range(0, tokens).Select(_ => Activations(rng, k, Pattern.Random)).ToArray());
                var expected = Run(new ReferenceTernaryKernel(), w, x);
                using var pool = new WorkerPool(1);
                using var op = new TernaryMatMul(pool);
                var rows = op.Prepare(kernel, x);
                foreach (var (sliceStart, quarter, from, to) in new[] { (3, 15, 2, 11), (0, 17, 0, 17), (6, 16, 5, 5), (2, 1, 0, 1) })
                {
                    var y = Enumerable.Repeat(float.NaN, 70 * tokens).ToArray();
                    fixed (float* py = y)
                    {
                        if (tokens == 1) kernel.MatVecQuarters(w, rows, py, sliceStart, quarter, from, to);
                        else kernel.MatVecQuarters(w, rows, py, 70, sliceStart, quarter, from, to);
                    }
                    for (int t = 0; t < tokens; t++)
                    for (int n = 0; n < 70; n++)
                    {
                        int offset = n - sliceStart, p = offset % Math.Max(1, quarter);
                        bool covered = offset >= 0 && offset < 4 * quarter && p >= from && p < to;
                        if (covered) Assert.True(BitConverter.SingleToInt32Bits(expected[t * 70 + n]) == BitConverter.SingleToInt32Bits(y[t * 70 + n]),
                            $"{name}, {tokens} token(s), width {k}: token {t} row {n} is {y[t * 70 + n]}, reference {expected[t * 70 + n]}");
                        else Assert.True(float.IsNaN(y[t * 70 + n]), $"{name}: token {t} row {n} written outside positions [{from}, {to}) of slice {sliceStart}+4x{quarter}");
                    }
                }
            }
        }
        using var w1 = RandomTernary(rng, 70, 640);
        using var x1 = Quantize([Activations(rng, 640, Pattern.Random), Activations(rng, 640, Pattern.Random)]);
        using var pool1 = new WorkerPool(1);
        using var op1 = new TernaryMatMul(pool1);
        var rows1 = op1.Prepare(kernel, x1);
        var out1 = new float[140];
        Assert.Throws<ArgumentOutOfRangeException>(() => { fixed (float* po = out1) kernel.MatVecQuarters(w1, rows1, po, 69, 0, 10, 0, 4); }); // a stride under one token's rows
        Assert.Throws<ArgumentOutOfRangeException>(() => { fixed (float* po = out1) kernel.MatVecQuarters(w1, rows1, po, 10, 16, 0, 4); });
        Assert.Throws<ArgumentOutOfRangeException>(() => { fixed (float* po = out1) kernel.MatVecQuarters(w1, rows1, po, 0, 10, 3, 11); });
    }

    public static TheoryData<string> SupportedAndReference() => new(KernelRegistry.SupportedTernary.Select(k => k.Name).Append("reference").Distinct());

    /// <summary>Decode's products of one to three tokens over owned ranges (<see cref="WorkerPool.RunOwned"/>): the reference's
    /// floats with one and four weight streams, any thread count, slices with leftover rows and matrices too small to share out.</summary>
    [Theory]
    [MemberData(nameof(Supported))]
    public void DecodeOverOwnedRangesEqualsReference(string name)
    {
        var kernel = KernelRegistry.SelectTernary(name);
        var rng = new Random(78);
        var before = TernaryKernel.WeightStreamsState;
        try
        {
            foreach (int threads in new[] { 2, 3 })
            {
                using var pool = new WorkerPool(threads);
                using var op = new TernaryMatMul(pool);
                foreach (var (n, k) in new[] { (31, 256), (333, 640), (643, 2560), (1000, 2560), (2561, 1024) }) // the first two: too small to share out
                {
                    using var w = RandomTernary(rng, n, k);
                    foreach (int tokens in new[] { 1, 2, 3 })
                    {
                        using var x = Quantize(Enumerable.Range(0, tokens).Select(_ => Activations(rng, k, Pattern.Random)).ToArray());
                        var expected = Run(new ReferenceTernaryKernel(), w, x);
                        foreach (int streams in new[] { 1, 4 })
                        {
                            TernaryKernel.WeightStreams = streams;
                            for (int repeat = 0; repeat < 3; repeat++)
                            {
                                var y = new float[n * tokens];
                                fixed (float* py = y) op.Run(kernel, w, x, py, n);
                                for (int r = 0; r < n * tokens; r++)
                                    Assert.True(BitConverter.SingleToInt32Bits(expected[r]) == BitConverter.SingleToInt32Bits(y[r]),
                                        $"{name}, {threads} threads, {streams} stream(s), {tokens} token(s), {n}x{k}: output {r} is {y[r]}, reference {expected[r]}");
                            }
                        }
                    }
                }
            }
        }
        finally
        {
            TernaryKernel.WeightStreamsState = before;
        }
    }

    /// <summary>
    /// <see cref="TernaryMatMul.RunMany"/> (q, k and v; gate and up as one pass): each product's floats equal the
    /// reference's, the rest of every output untouched, for one to three tokens, two and three threads, one and four
    /// weight streams, products whose slices leave rows past four quarters, and sets too small for one pass (then one
    /// product after another). <see cref="TernaryMatMul.RunsAsOnePass"/> says which, and the one-pass plan is taken
    /// in some of the cases, so both paths are checked.
    /// </summary>
    [Theory]
    [MemberData(nameof(Supported))]
    public void ProductsOfOneInputAsOnePassEqualReference(string name)
    {
        var kernel = KernelRegistry.SelectTernary(name);
        var rng = new Random(80);
        var before = TernaryKernel.WeightStreamsState;
        int onePass = 0, apart = 0;
        try
        {
            foreach (int threads in new[] { 2, 3 })
            {
                using var pool = new WorkerPool(threads);
                using var op = new TernaryMatMul(pool);
                foreach (var (k, shapes) in new (int, int[])[] { (2560, [1000, 450, 451]), (1024, [2561, 2563]), (2560, [643, 100, 100]), (256, [64, 64]) })
                {
                    var ws = shapes.Select(n => RandomTernary(rng, n, k)).ToArray();
                    try
                    {
                        foreach (int tokens in new[] { 1, 2, 3, 5 })
                        {
                            using var x = Quantize(Enumerable.Range(0, tokens).Select(_ => Activations(rng, k, Pattern.Random)).ToArray());
                            var expected = ws.Select(w => Run(new ReferenceTernaryKernel(), w, x)).ToArray();
                            foreach (int streams in new[] { 1, 4 })
                            {
                                TernaryKernel.WeightStreams = streams;
                                var rows = op.Prepare(kernel, x);
                                bool one = op.RunsAsOnePass(kernel, rows, ws[0], ws[1], ws.Length > 2 ? ws[2] : null);
                                bool expectOne = streams == 4 && tokens <= 3 && kernel.RowAlignment <= 8 && !kernel.SplitsByTokens(tokens)
                                    && ws.All(w => (long)w.Rows * w.Cols * tokens >= (long)threads << 19 && w.Rows / threads / 4 >= 8);
                                Assert.Equal(expectOne, one);
                                if (one) onePass++; else apart++;
                                // Outputs with a stride past each product's rows: the gap must stay untouched.
                                var ys = ws.Select(w => Enumerable.Repeat(float.NaN, (w.Rows + 5) * tokens).ToArray()).ToArray();
                                fixed (float* y0 = ys[0], y1 = ys[1], y2 = ws.Length > 2 ? ys[2] : null)
                                {
                                    if (ws.Length == 3) op.RunMany(kernel, rows, 3, ws[0], y0, ws[0].Rows + 5, ws[1], y1, ws[1].Rows + 5, ws[2], y2, ws[2].Rows + 5);
                                    else op.RunMany(kernel, rows, 2, ws[0], y0, ws[0].Rows + 5, ws[1], y1, ws[1].Rows + 5);
                                }
                                for (int i = 0; i < ws.Length; i++)
                                {
                                    int n = ws[i].Rows;
                                    for (int t = 0; t < tokens; t++)
                                    {
                                        for (int r = 0; r < n; r++)
                                            Assert.True(BitConverter.SingleToInt32Bits(expected[i][t * n + r]) == BitConverter.SingleToInt32Bits(ys[i][t * (n + 5) + r]),
                                                $"{name}, {threads} threads, {streams} stream(s), {tokens} token(s), product {i} ({n}x{k}, one pass: {one}): row {r} of token {t} is {ys[i][t * (n + 5) + r]}, reference {expected[i][t * n + r]}");
                                        for (int r = n; r < n + 5; r++)
                                            Assert.True(float.IsNaN(ys[i][t * (n + 5) + r]), $"{name}: product {i} wrote past its rows (token {t}, slot {r})");
                                    }
                                }
                            }
                        }
                    }
                    finally
                    {
                        foreach (var w in ws) w.Dispose();
                    }
                }
            }
        }
        finally
        {
            TernaryKernel.WeightStreamsState = before;
        }
        if (KernelRegistry.SelectTernary(name).RowAlignment <= 8) Assert.True(onePass > 0, $"{name}: no case took the one-pass plan");
        Assert.True(apart > 0);

        using var pool1 = new WorkerPool(2);
        using var op1 = new TernaryMatMul(pool1);
        using var wa = RandomTernary(rng, 64, 256);
        using var wb = RandomTernary(rng, 64, 512);
        using var xa = Quantize([Activations(rng, 256, Pattern.Random)]);
        var ra = op1.Prepare(kernel, xa);
        var out1 = new float[64];
        Assert.Throws<ArgumentOutOfRangeException>(() => { fixed (float* po = out1) op1.RunMany(kernel, ra, 4, wa, po, 64); });
        Assert.Throws<ArgumentNullException>(() => { fixed (float* po = out1) op1.RunMany(kernel, ra, 2, wa, po, 64); });
        var e = Assert.Throws<ArgumentException>(() => { fixed (float* po = out1) op1.RunMany(kernel, ra, 2, wa, po, 64, wb, po, 64); });
        Assert.Contains("product 1", e.Message);
    }

    /// <summary>How decode products are shared out: one under 2^19 multiply-adds per thread stays whole on the calling thread
    /// (a small model's decode is dispatch-bound); a larger one is one slice per thread, the owner's claims from the front
    /// of its slice (quarter positions with four weight streams: items, not rows).</summary>
    [Fact]
    public void SmallDecodeProductsStayOnTheCallingThreadLargeOnesAreSlicedPerThread()
    {
        var kernel = KernelRegistry.Ternary;
        var rng = new Random(79);
        var before = TernaryKernel.WeightStreamsState;
        try
        {
            TernaryKernel.WeightStreams = 1;
            using var pool = new WorkerPool(2);
            using var op = new TernaryMatMul(pool);
            foreach (var (n, k, shared) in new[] { (256, 256, false), (200, 2560, false), (640, 2560, true), (2560, 2560, true) })
            {
                using var w = RandomTernary(rng, n, k);
                using var x = Quantize([Activations(rng, k, Pattern.Random)]);
                var timeline = new ChunkTimeline(2, 64);
                pool.Timeline = timeline;
                var y = new float[n];
                fixed (float* py = y) op.Run(kernel, w, x, py, n);
                pool.Timeline = null;
                Assert.Equal(Run(new ReferenceTernaryKernel(), w, x), y);
                var spans = timeline.Spans(0).ToArray().Concat(timeline.Spans(1).ToArray()).ToList();
                if (!shared)
                {
                    Assert.Equal([(0, n)], spans.Select(c => (c.ItemStart, c.ItemEnd)));
                    continue;
                }
                // Rows in address order: worker 0 starts at row 0, worker 1 (if it ran before the caller took its slice)
                // at the middle, in whole 8-row groups.
                Assert.Contains(spans, c => c.ItemStart == 0);
                Assert.True(spans.Count >= 2, $"{n}x{k}: one chunk for the whole product");
                Assert.All(spans, c => Assert.True(c.ItemEnd - c.ItemStart < n, $"{n}x{k}: a chunk covers every row"));
            }
        }
        finally
        {
            TernaryKernel.WeightStreamsState = before;
        }
    }

    /// <summary>Activations laid out once (<see cref="TernaryMatMul.Prepare"/>) serve several products, in chunks, with
    /// every variant's layout (the AVX-512 ones copy the rows pair-interleaved), and give each kernel's own results.</summary>
    [Theory]
    [MemberData(nameof(Supported))]
    public void PreparedActivationsServeSeveralProducts(string name)
    {
        var kernel = KernelRegistry.SelectTernary(name);
        var rng = new Random(12);
        using var a = RandomTernary(rng, 1000, 2560);
        using var b = RandomTernary(rng, 77, 2560);
        using var x = Quantize(Enumerable.Range(0, 9).Select(_ => Activations(rng, 2560, Pattern.Random)).ToArray());
        using var pool = new WorkerPool(2);
        using var op = new TernaryMatMul(pool);
        for (int repeat = 0; repeat < 3; repeat++)
        {
            var rows = op.Prepare(kernel, x);
            var ya = new float[a.Rows * 9];
            var yb = new float[b.Rows * 9];
            fixed (float* pa = ya) op.Run(kernel, a, rows, pa, a.Rows);
            fixed (float* pb = yb) op.Run(kernel, b, rows, pb, b.Rows);
            Assert.Equal(Run(kernel, a, x), ya);
            Assert.Equal(Run(kernel, b, x), yb);
        }
        using var narrow = RandomTernary(rng, 4, 256);
        var y = new float[4 * 9];
        var ex = Assert.Throws<ArgumentException>(() => { fixed (float* py = y) op.Run(kernel, narrow, op.Prepare(kernel, x), py, 4); });
        Assert.Contains("256", ex.Message);
    }

    [Fact]
    public void MismatchedShapesAreRejected()
    {
        using var w = TernaryMatrix.Allocate(4, 256);
        using var x = new QuantizedActivations(1, 512);
        var y = new float[4];
        var ex = Assert.Throws<ArgumentException>(() => { fixed (float* py = y) new ReferenceTernaryKernel().MatMul(w, x, py, 4, 0, 4); });
        Assert.Contains("256", ex.Message);
    }

    [Fact]
    public void RegistryHonoursNamesAndRejectsUnknown()
    {
        Assert.Equal("reference", KernelRegistry.SelectTernary("reference").Name);
        Assert.Equal("reference", KernelRegistry.SelectTernary(" REFERENCE ").Name);
        var ex = Assert.Throws<ArgumentException>(() => KernelRegistry.SelectTernary("sse9"));
        Assert.Contains("BITNET_KERNEL", ex.Message);
        Assert.Contains("avx2", ex.Message);
        Assert.True(KernelRegistry.SelectTernary(null).IsSupported);
    }
}
