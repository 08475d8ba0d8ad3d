using System.Runtime.Intrinsics.X86;
using BitNetSharp.Kernels;
using BitNetSharp.Quantization;
using BitNetSharp.Threading;
using static BitNetSharp.Tests.Kernels.KernelTestData;

namespace BitNetSharp.Tests.Kernels;

/// <summary>The lookup kernel's own pieces: the repacked layout, the tables, and when the engine picks it. (Its products
/// against the reference run in <see cref="TernaryKernelTests"/>' theories, over every supported variant.)</summary>
public unsafe class LutTernaryKernelTests
{
    /// <summary>Every weight of the repacked layout decodes to the matrix's value, padding (rows past N, columns past K)
    /// to zero: block b, word g, row i at [b][g][i]; triple m of a word in bits 5m..5m+4, index Σ_d (t+1)·3^d.</summary>
    [Fact]
    public void RepackKeepsEveryWeightInItsDocumentedPlace()
    {
        var rng = new Random(5);
        foreach (var (rows, cols) in new[] { (45, 300), (32, 128), (70, 2560 + 3) })
        {
            using var w = RandomTernary(rng, rows, cols);
            using var packed = LutTernaryKernel.Pack(w);
            int words = LutTernaryKernel.WordsPerRow(w.PaddedCols);
            Assert.Equal(words, packed.Words);
            Assert.Equal((rows + 31) / 32, packed.Blocks);
            for (int b = 0; b < packed.Blocks; b++)
            for (int i = 0; i < 32; i++)
            for (int g = 0; g < words; g++)
            {
                int word = (ushort)packed.Block(b)[g * 32 + i];
                Assert.Equal(0, word >> 15);
                for (int m = 0; m < 3; m++)
                {
                    int index = (word >> (5 * m)) & 31;
                    Assert.True(index < 27, $"index {index} at block {b} row {i} word {g}");
                    for (int d = 0; d < 3; d++)
                    {
                        int col = 9 * g + 3 * m + d, row = 32 * b + i;
                        int expected = row < rows && col < cols ? w.Get(row, col) : 0;
                        int actual = index / Pow3(d) % 3 - 1;
                        if (expected != actual) Assert.Fail($"{rows}x{cols}: row {row} col {col}: {actual}, matrix {expected}");
                    }
                }
            }
        }
    }

    private static int Pow3(int d) => d == 0 ? 1 : d == 1 ? 3 : 9;

    /// <summary>Entry e of triple j is Σ_d (digit_d(e) − 1)·q[3j+d] (activations past the padded width count as 0),
    /// entries 27–31 are 0: checked against a direct sum for every entry of random, extreme and short rows.</summary>
    [Fact]
    public void TablesHoldEveryTripleSum()
    {
        if (!Avx512BW.IsSupported) Assert.Skip("The lookup kernel needs AVX-512BW; this CPU (or DOTNET_EnableAVX512=0) has none.");
        var rng = new Random(6);
        foreach (int cols in new[] { 128, 300, 2560, 6912 })
        {
            int padded = TernaryMatrix.PadCols(cols);
            var q = new sbyte[padded];
            for (int i = 0; i < cols; i++) q[i] = (sbyte)(i % 7 == 0 ? -128 : i % 5 == 0 ? 127 : rng.Next(-128, 128));
            var tables = new short[LutTernaryKernel.TableBytes(padded) / 2];
            fixed (sbyte* pq = q)
            fixed (short* pt = tables)
                LutTernaryKernel.BuildTables(pq, padded, pt);
            int triples = 3 * LutTernaryKernel.WordsPerRow(padded);
            for (int j = 0; j < triples; j++)
            for (int e = 0; e < 32; e++)
            {
                int expected = 0;
                if (e < 27)
                    for (int d = 0; d < 3; d++)
                    {
                        int k = 3 * j + d;
                        expected += (e / Pow3(d) % 3 - 1) * (k < padded ? q[k] : 0);
                    }
                if (tables[32 * j + e] != expected) Assert.Fail($"K={cols}: triple {j} entry {e}: {tables[32 * j + e]}, expected {expected}");
            }
        }
    }

    /// <summary>Products over four quarter streams of a two-thread owned plan, with slices that are not whole multiples of
    /// four blocks (640 rows: 10 blocks a thread) and a row range that cuts blocks, equal the reference bit for bit.</summary>
    [Fact]
    public void QuarterStreamsAndCutBlocksEqualReference()
    {
        var kernel = new LutTernaryKernel();
        if (!kernel.IsSupported) Assert.Skip("The lookup kernel needs AVX-512BW; this CPU (or DOTNET_EnableAVX512=0) has none.");
        var reference = new ReferenceTernaryKernel();
        var rng = new Random(7);
        using var w = RandomTernary(rng, 640, 2560);
        foreach (int tokens in new[] { 1, 2, 3, 4 })
        {
            using var x = Quantize(Enumerable.Range(0, tokens).Select(_ => Activations(rng, 2560, Pattern.Random)).ToArray());
            var expected = new float[tokens * w.Rows];
            fixed (float* pe = expected) reference.MatMul(w, x, pe, w.Rows, 0, w.Rows);

            using var pool = new WorkerPool(2);
            using var matmul = new TernaryMatMul(pool);
            var got = new float[tokens * w.Rows];
            fixed (float* pg = got) matmul.Run(kernel, w, x, pg, w.Rows);
            Assert.Equal(expected, got);

            var cut = new float[tokens * w.Rows];
            fixed (float* pc = cut) kernel.MatMul(w, x, pc, w.Rows, 5, 77);
            for (int t = 0; t < tokens; t++)
                for (int r = 0; r < w.Rows; r++)
                    Assert.Equal(r is >= 5 and < 77 ? expected[t * w.Rows + r] : 0f, cut[t * w.Rows + r]);

            if (tokens == 1)
            {
                var quarters = new float[w.Rows];
                fixed (float* pq = quarters) kernel.MatVecQuarters(w, matmul.Prepare(kernel, x), pq, 64, 128, 0, 128);
                for (int r = 64; r < 64 + 512; r++) Assert.Equal(expected[r], quarters[r]);
            }
        }
    }

    /// <summary>
    /// Prefill by lookup (<see cref="LutTernaryKernel.LookupPrefill"/>): products of four tokens and more, split over one to
    /// three threads by tokens, with one Prepare serving several matrices (q, k, v: each thread's tables reused) and a
    /// fresh Prepare after the activations change; and the kernel's own row ranges. All equal the reference bit for bit.
    /// </summary>
    [Fact]
    public void PrefillByLookupEqualsReferenceOnEveryThreadCount()
    {
        var kernel = new LutTernaryKernel(lookupPrefill: true);
        if (!kernel.IsSupported) Assert.Skip("The lookup kernel needs AVX-512BW; this CPU (or DOTNET_EnableAVX512=0) has none.");
        Assert.True(kernel.LookupPrefill);
        var reference = new ReferenceTernaryKernel();
        var rng = new Random(8);
        // 384 × 384 and 128 × 384 (the bundled model's q and k), 1024 × 384 and 384 × 1030 (a width that is not a multiple of 128):
        // each sized so that 64 tokens share the product out (rows × cols × tokens ≥ threads · 2^19).
        using var q = RandomTernary(rng, 384, 384);
        using var k = RandomTernary(rng, 128 + 5, 384);
        using var up = RandomTernary(rng, 1024, 384);
        using var down = RandomTernary(rng, 384, 1030);
        foreach (int threads in new[] { 1, 2, 3 })
        {
            using var pool = new WorkerPool(threads);
            using var matmul = new TernaryMatMul(pool);
            foreach (int tokens in new[] { 4, 7, 64, 70 })
            {
                for (int round = 0; round < 2; round++) // new activations in the same buffers' place: the tables must be rebuilt
                {
                    using var x = Quantize(Enumerable.Range(0, tokens).Select(_ => Activations(rng, 384, Pattern.Random)).ToArray());
                    var rows = matmul.Prepare(kernel, x);
                    foreach (var w in new[] { q, k, up })
                    {
                        var expected = new float[tokens * w.Rows];
                        fixed (float* pe = expected) reference.MatMul(w, x, pe, w.Rows, 0, w.Rows);
                        var got = new float[tokens * w.Rows];
                        fixed (float* pg = got) matmul.Run(kernel, w, rows, pg, w.Rows);
                        Assert.Equal(expected, got);
                    }
                    using var wide = Quantize(Enumerable.Range(0, tokens).Select(_ => Activations(rng, 1030, Pattern.Outlier)).ToArray());
                    var expectedDown = new float[tokens * down.Rows];
                    fixed (float* pe = expectedDown) reference.MatMul(down, wide, pe, down.Rows, 0, down.Rows);
                    var gotDown = new float[tokens * down.Rows];
                    fixed (float* pg = gotDown) matmul.Run(kernel, down, wide, pg, down.Rows);
                    Assert.Equal(expectedDown, gotDown);
                }
            }
        }

        using var some = Quantize(Enumerable.Range(0, 9).Select(_ => Activations(rng, 384, Pattern.Random)).ToArray());
        var all = new float[9 * up.Rows];
        fixed (float* pa = all) reference.MatMul(up, some, pa, up.Rows, 0, up.Rows);
        var cut = new float[9 * up.Rows];
        fixed (float* pc = cut) kernel.MatMul(up, some, pc, up.Rows, 33, 500);
        for (int t = 0; t < 9; t++)
            for (int r = 0; r < up.Rows; r++)
                Assert.Equal(r is >= 33 and < 500 ? all[t * up.Rows + r] : 0f, cut[t * up.Rows + r]);
    }

    /// <summary>The engine's choice: the lookup kernel for a model small enough to run from the caches, the int8 kernel
    /// otherwise (BITNET_KERNEL, when set, decides instead).</summary>
    [Fact]
    public void SmallModelsTakeTheLookupKernel()
    {
        if (!string.IsNullOrWhiteSpace(Environment.GetEnvironmentVariable(KernelRegistry.EnvironmentVariable)))
        {
            Assert.Same(KernelRegistry.Ternary, KernelRegistry.ForModel(1));
            if (KernelRegistry.Ternary is LutTernaryKernel)
                Assert.True(((LutTernaryKernel)KernelRegistry.ForModel(1, 384)).LookupPrefill);
            else Assert.Same(KernelRegistry.Ternary, KernelRegistry.ForModel(1, 384));
            return;
        }
        bool lookup = KernelRegistry.LookupByDefault;
        bool intel = TernaryKernel.IsIntelWithVbmi();
        Assert.Equal(Avx512BW.IsSupported && (TernaryKernel.AmdFamily() >= 0x1A || intel), lookup);
        Assert.Equal(lookup ? "avx512lut" : KernelRegistry.Ternary.Name, KernelRegistry.ForModel(2_400_000).Name);
        if (lookup)
        {
            // Prefill by lookup only for narrow models (and so the bundled model's, 384 wide).
            Assert.True(((LutTernaryKernel)KernelRegistry.ForModel(2_400_000, 384)).LookupPrefill);
            Assert.True(((LutTernaryKernel)KernelRegistry.ForModel(2_400_000, KernelRegistry.LookupPrefillMaxWidth)).LookupPrefill);
            Assert.False(((LutTernaryKernel)KernelRegistry.ForModel(12_000_000, 1536)).LookupPrefill);
        }
        Assert.Equal(lookup ? "avx512lut" : KernelRegistry.Ternary.Name, KernelRegistry.ForModel(KernelRegistry.LookupMaxBytes).Name);
        // Past the caches the int8 kernel, everywhere: the lookup repack would be a second resident copy of the weights.
        Assert.Same(KernelRegistry.Ternary, KernelRegistry.ForModel(KernelRegistry.LookupMaxBytes + 1));
        Assert.Same(KernelRegistry.Ternary, KernelRegistry.ForModel(521_000_000));
    }

    /// <summary>The repacked copy is owned by its matrix: made once, and disposed with it.</summary>
    [Fact]
    public void TheRepackIsMadeOnceAndLivesWithTheMatrix()
    {
        var rng = new Random(8);
        var w = RandomTernary(rng, 64, 256);
        var first = LutTernaryKernel.Layout(w);
        Assert.Same(first, LutTernaryKernel.Layout(w));
        Assert.Same(first, w.KernelLayout);
        w.Dispose();
        Assert.Null(w.KernelLayout);
    }
}
