using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Kernels;
using BitNetSharp.Model;
using BitNetSharp.Quantization;

namespace BitNetSharp.Tests.Model;

public unsafe class EmbeddingTableTests
{
    /// <summary>The fast widening is exact for every finite half, subnormals and −0 included, at every vector width.</summary>
    [Fact]
    public void F16DotIsExactForEveryFiniteHalf()
    {
        var w = new ushort[64];
        var x = new float[64];
        x[0] = 1f;  // lands in the 512/256-bit body
        x[40] = 1f; // lands in a second vector
        for (int bits = 0; bits < 65536; bits++)
        {
            if ((bits & 0x7C00) == 0x7C00) continue;
            w[0] = (ushort)bits;
            w[40] = (ushort)(bits ^ 0x8000);
            float expected = (float)BitConverter.UInt16BitsToHalf((ushort)bits);
            fixed (ushort* pw = w)
            fixed (float* px = x)
            {
                Assert.Equal(0f, HeadKernels.DotF16(pw, px, 64)); // h + (−h)
                x[40] = 0f;
                float one = HeadKernels.DotF16(pw, px, 64);
                x[40] = 1f;
                if (BitConverter.SingleToInt32Bits(one) != BitConverter.SingleToInt32Bits(expected) && !(one == 0 && expected == 0))
                    Assert.Fail($"half 0x{bits:X4}: expected {expected:R}, got {one:R}");
            }
        }
    }

    [Fact]
    public void NonFiniteF16TableIsRefusedAtLoad()
    {
        var data = new byte[4 * 32 * 2];
        BitConverter.TryWriteBytes(data.AsSpan(2 * (32 + 5)), (ushort)0x7C00); // +inf at row 1, value 5
        fixed (byte* p = data)
        {
            byte* q = p;
            var e = Assert.Throws<ModelFormatException>(() => new EmbeddingTable(GgmlType.F16, q, data.Length, 4, 32, data, "m.gguf", "token_embd.weight"));
            Assert.Contains("row 1", e.Message);
            Assert.Contains("token_embd.weight", e.Message);
        }
    }

    /// <summary>F32 and BF16 tables with a NaN or infinity are refused at load too (only F16 ones were: `convert` copied
    /// such a table into a new file without a word, and the model failed only when the row was read).</summary>
    [Theory]
    [InlineData(GgmlType.F32, 0x7FC00000u)]
    [InlineData(GgmlType.F32, 0xFF800000u)]
    [InlineData(GgmlType.BF16, 0x7FC0u)]
    [InlineData(GgmlType.BF16, 0xFF80u)]
    public void NonFiniteF32AndBF16TablesAreRefusedAtLoad(GgmlType type, uint bits)
    {
        int size = type == GgmlType.F32 ? 4 : 2;
        var data = new byte[4 * 40 * size];
        int at = 2 * 40 + 37; // row 2, value 37: past the vector body of a 40-value row
        if (type == GgmlType.F32) BitConverter.TryWriteBytes(data.AsSpan(at * 4), bits);
        else BitConverter.TryWriteBytes(data.AsSpan(at * 2), (ushort)bits);
        fixed (byte* p = data)
        {
            byte* q = p;
            var e = Assert.Throws<ModelFormatException>(() => new EmbeddingTable(type, q, data.Length, 4, 40, data, "m.gguf", "token_embd.weight"));
            Assert.Contains("value 37 of row 2", e.Message);
        }
        data.AsSpan().Clear();
        fixed (byte* p = data)
            Assert.Equal(4, new EmbeddingTable(type, p, data.Length, 4, 40, data, "m.gguf", "token_embd.weight").Rows);
    }

    [Theory]
    [InlineData(GgmlType.F32)]
    [InlineData(GgmlType.F16)]
    [InlineData(GgmlType.BF16)]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.Q6_K)]
    public void MatVecEqualsRowDotProducts(GgmlType type)
    {
        var shape = SyntheticShape.Tiny with { VocabSize = 50, Dim = type == GgmlType.Q6_K ? 256 : 128 }; // Q6_K rows are whole 256-value blocks
        using var w = ModelWeights.FromGguf(GgufFile.Parse(SyntheticModel.Build(shape, 2, type).ToArray(), "t.gguf"), ownsFile: true);
        var table = w.TokenEmbedding;
        var rng = new Random(1);
        var x = Enumerable.Range(0, table.Cols).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray();
        var y = new float[table.Rows];
        fixed (float* px = x)
        fixed (float* py = y)
            table.MatVec(px, py, 0, table.Rows);
        // The Q8_0 head quantizes the activations to Q8_0 blocks as llama.cpp does, on every CPU (without AVX2 too);
        // the oracle uses the same activations (q·d), so what is checked is the integer kernel, not the quantization.
        var xs = x.ToArray();
        if (type == GgmlType.Q8_0)
        {
            var q = new sbyte[xs.Length];
            var d = new float[xs.Length / 32];
            fixed (float* px = x)
            fixed (sbyte* pq = q)
            fixed (float* pd = d)
                HeadKernels.QuantizeQ8Blocks(px, xs.Length, pq, pd);
            for (int i = 0; i < xs.Length; i++) xs[i] = q[i] * d[i / 32];
        }
        if (type == GgmlType.Q6_K)
        {
            // Likewise the Q6_K head with Q8_K activations (one scale per 256 values).
            var q = new sbyte[xs.Length];
            var d = new float[xs.Length / 256];
            var sums = new short[xs.Length / 16];
            fixed (float* px = x)
            fixed (sbyte* pq = q)
            fixed (float* pd = d)
            fixed (short* ps = sums)
                HeadKernels.QuantizeQ8KBlocks(px, xs.Length, pq, pd, ps);
            for (int i = 0; i < xs.Length; i++) xs[i] = q[i] * d[i / 256];
        }
        var row = new float[table.Cols];
        for (int r = 0; r < table.Rows; r++)
        {
            table.GetRow(r, row);
            double expected = 0;
            for (int i = 0; i < row.Length; i++) expected += row[i] * (double)xs[i];
            Assert.Equal(expected, y[r], 1e-4); // |Δ| ≤ 1e-4 (rounding both to 4 places failed on values straddling a boundary)
        }
    }
}

public unsafe class EmbeddingTableBatchTests
{
    /// <summary>The batched head (row blocks outer, token tiles inside, F16 rows widened once per tile) equals one MatVec per token, bit for bit.</summary>
    [Theory]
    [InlineData(GgmlType.F32)]
    [InlineData(GgmlType.F16)]
    [InlineData(GgmlType.BF16)]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.Q6_K)]
    public void MatMulEqualsMatVecPerToken(GgmlType type)
    {
        var shape = SyntheticShape.Tiny with { VocabSize = 71, Dim = type == GgmlType.Q6_K ? 256 : 128 }; // 71: an odd last row
        using var w = ModelWeights.FromGguf(GgufFile.Parse(SyntheticModel.Build(shape, 4, type).ToArray(), "t.gguf"), ownsFile: true);
        var table = w.TokenEmbedding;
        var rng = new Random(2);
        foreach (int tokens in new[] { 2, 3, 4, 7, 9, 70 }) // 7: overlapping 4-token tiles; 9: overlapping 8-token tiles; 70: past the 64-token chunk of the quantized heads
        {
            var x = Enumerable.Range(0, tokens * table.Cols).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray();
            var batched = new float[tokens * table.Rows];
            var single = new float[tokens * table.Rows];
            fixed (float* px = x)
            fixed (float* pb = batched)
            fixed (float* ps = single)
            {
                table.MatMul(px, tokens, pb, table.Rows, 0, table.Rows);
                for (int t = 0; t < tokens; t++) table.MatVec(px + t * table.Cols, ps + t * table.Rows, 0, table.Rows);
            }
            Assert.Equal(single, batched);
        }
    }
}

[Collection(nameof(BitNetSharp.Tests.Kernels.WeightStreamsCollection))]
public unsafe class EmbeddingTableF16BatchEdgeTests
{
    /// <summary>
    /// The 512-bit F16 head multiplies raw half bits (half · 2^−112) by activations scaled by 2^112. Subnormal halves,
    /// signed zeros, the largest half, subnormal and near-limit activations must still give MatVec's sums bit for bit,
    /// and activations too large to scale (≥ 2^16, inf, NaN) must take the unscaled path and also match.
    /// </summary>
    [Theory]
    [InlineData(0f)]
    [InlineData(70000f)]
    [InlineData(float.PositiveInfinity)]
    [InlineData(float.NaN)]
    public void MatMulMatchesMatVecOnExtremeValues(float outlier)
    {
        var before = BitNetSharp.Kernels.TernaryKernel.WeightStreamsState;
        try
        {
            foreach (int streams in new[] { 1, 4 }) // MatVec's adjacent rows with prefetch, and rows from four quarters
            {
                BitNetSharp.Kernels.TernaryKernel.WeightStreams = streams;
                foreach (int cols in new[] { 96 + 1024, 1136, 1128 }) // several column chunks; 1136: 16k but not 32k; 1128: not 16k (a scalar tail)
                    CheckWidth(outlier, cols);
            }
        }
        finally
        {
            BitNetSharp.Kernels.TernaryKernel.WeightStreamsState = before;
        }
    }

    /// <summary>
    /// A non-finite half written into a mapped F16 table after load (a file changed under a running server) was read by
    /// the raw-half kernels as a large finite weight (±65536 · (1 + mantissa)): its row's logit came out huge and finite,
    /// so that token won every step and no non-finite check saw it. The rows of each token's largest and smallest logit
    /// are now checked and such a logit is NaN, on every path (one token, two, three, the 4- and 8-token tiles, the
    /// portable loop past the fast paths' widths), with one weight stream or four; every other logit is unchanged.
    /// </summary>
    [Fact]
    public void ANonFiniteHalfWrittenAfterLoadMakesItsExtremeLogitNaN()
    {
        var before = BitNetSharp.Kernels.TernaryKernel.WeightStreamsState;
        try
        {
            foreach (int streams in new[] { 1, 4 })
            {
                BitNetSharp.Kernels.TernaryKernel.WeightStreams = streams;
                foreach (int cols in new[] { 128, 1128 })
                    foreach (int tokens in new[] { 1, 2, 3, 4, 8, 9 })
                        foreach (var (infRow, nanRow) in new[] { (7, 30), (40, 0), (33, 39) }) // 40: past the 8-wide scan's body
                            CheckNonFiniteRows(cols, tokens, infRow, nanRow);
            }
        }
        finally
        {
            BitNetSharp.Kernels.TernaryKernel.WeightStreamsState = before;
        }
    }

    private static void CheckNonFiniteRows(int cols, int tokens, int infRow, int nanRow)
    {
        const int rows = 41;
        var rng = new Random(cols + tokens);
        var halves = new ushort[rows * cols];
        for (int i = 0; i < halves.Length; i++) halves[i] = BitConverter.HalfToUInt16Bits((Half)(rng.NextDouble() - 0.5));
        var x = new float[tokens * cols];
        for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() - 0.5);
        for (int t = 0; t < tokens; t++)
        {
            x[t * cols + 3] = 1f;  // +inf at infRow, column 3: the raw read makes its logit ≈ +65536
            x[t * cols + 5] = -1f; // NaN at nanRow, column 5: ≈ −98304
        }
        var clean = new float[tokens * rows];
        var y = new float[tokens * rows];
        fixed (ushort* pw = halves)
        fixed (float* px = x)
        fixed (float* pc = clean)
        fixed (float* py = y)
        {
            var m = new HeadMatrix(GgmlType.F16, (byte*)pw, 2L * cols, cols);
            HeadKernels.MatMul(m, px, tokens, pc, rows, 0, rows);
            pw[infRow * cols + 3] = 0x7C00;
            pw[nanRow * cols + 5] = 0x7E00;
            HeadKernels.MatMul(m, px, tokens, py, rows, 0, rows);
            HeadKernels.GuardExtremeRows(m, py, tokens, rows, 0, rows);
            for (int t = 0; t < tokens; t++)
                for (int r = 0; r < rows; r++)
                {
                    float v = py[t * rows + r];
                    if (r == infRow || r == nanRow) Assert.True(float.IsNaN(v), $"{cols} columns, {tokens} tokens: token {t}, row {r} (a non-finite half) gave {v}");
                    else Assert.Equal(pc[t * rows + r], v);
                }
        }
    }

    private static void CheckWidth(float outlier, int cols)
    {
        const int rows = 37; // several 16-row blocks, an odd row count, a MatVec remainder after groups of four rows
        var rng = new Random(5);
        var halves = new ushort[rows * cols];
        for (int i = 0; i < halves.Length; i++)
        {
            halves[i] = (i % 7) switch
            {
                0 => (ushort)rng.Next(1, 0x400),                  // subnormal
                1 => (ushort)(0x8000 | rng.Next(1, 0x400)),       // negative subnormal
                2 => (ushort)(i % 2 == 0 ? 0x0000 : 0x8000),      // ±0
                3 => (ushort)(i % 2 == 0 ? 0x7BFF : 0xFBFF),      // ±65504
                _ => BitConverter.HalfToUInt16Bits((Half)(rng.NextDouble() * 4 - 2)),
            };
        }
        foreach (int tokens in new[] { 1, 2, 3, 4, 5, 8, 11, 16, 17 }) // two and three tokens' four-row passes; 4-token and 8-token tiles, full and overlapping
        {
            var x = new float[tokens * cols];
            for (int i = 0; i < x.Length; i++)
                x[i] = (i % 11) switch
                {
                    0 => BitConverter.Int32BitsToSingle(rng.Next(1, 0x7FFFFF)) * (rng.Next(2) == 0 ? 1 : -1), // subnormal float
                    1 => 65535.99f * (rng.Next(2) == 0 ? 1 : -1),
                    _ => (float)(rng.NextDouble() * 2 - 1),
                };
            if (outlier != 0f) x[(tokens - 1) * cols + 17] = outlier;
            var batched = new float[tokens * rows];
            var single = new float[tokens * rows];
            fixed (ushort* pw = halves)
            fixed (float* px = x)
            fixed (float* pb = batched)
            fixed (float* ps = single)
            {
                var table = new EmbeddingTable(GgmlType.F16, (byte*)pw, halves.Length * 2L, rows, cols, halves, "t.gguf", "output.weight");
                table.MatMul(px, tokens, pb, rows, 0, rows);
                table.MatMul(px, tokens, pb, rows, 0, rows);
                // MatVec over the whole table, or as two workers' slices (37 rows: 9 rows, quarters of 2 and a leftover;
                // 28 rows, quarters of 7): each slice reads one row from each of its quarters per pass.
                for (int t = 0; t < tokens; t++)
                {
                    if (t % 2 == 0) table.MatVec(px + t * cols, ps + t * rows, 0, rows);
                    else { table.MatVec(px + t * cols, ps + t * rows, 0, 9); table.MatVec(px + t * cols, ps + t * rows, 9, rows); }
                }
                // and a worker's slice that starts mid-block
                Array.Fill(batched, -1f);
                table.MatMul(px, tokens, pb, rows, 0, 9);
                table.MatMul(px, tokens, pb, rows, 9, rows);
                // MatVec's own fast path (four rows per pass, raw halves) against the plain per-row dot.
                for (int t = 0; t < tokens; t++)
                    for (int r = 0; r < rows; r++)
                    {
                        float dot = HeadKernels.DotF16(pw + r * cols, px + t * cols, cols);
                        float mv = single[t * rows + r];
                        Assert.True(BitConverter.SingleToInt32Bits(dot) == BitConverter.SingleToInt32Bits(mv) || (float.IsNaN(dot) && float.IsNaN(mv)),
                            $"cols {cols}, token {t}, row {r}: MatVec {mv} vs DotF16 {dot}");
                    }
            }
            for (int i = 0; i < single.Length; i++)
                Assert.True(BitConverter.SingleToInt32Bits(single[i]) == BitConverter.SingleToInt32Bits(batched[i]) || (float.IsNaN(single[i]) && float.IsNaN(batched[i])),
                    $"cols {cols}, tokens {tokens}, token {i / rows}, row {i % rows}: batched {batched[i]} vs single {single[i]}");
        }
    }
}

public class TopKSelectionEdgeTests
{
    [Fact]
    public void KZeroSelectsNothing() =>
        Assert.Equal(0, BitNetSharp.Generation.Sampling.TopKSelection.Select([1f, 2f], [], 0, new int[0], new float[0]));
}
