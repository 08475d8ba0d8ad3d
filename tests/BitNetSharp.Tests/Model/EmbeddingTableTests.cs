using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;
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
                Assert.Equal(0f, EmbeddingTable.DotF16(pw, px, 64)); // h + (−h)
                x[40] = 0f;
                float one = EmbeddingTable.DotF16(pw, px, 64);
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
        // The Q8_0 head quantizes the activations to Q8_0 blocks as llama.cpp does; the oracle uses the same
        // activations (q·d), so what is checked is the integer kernel, not the quantization.
        var xs = x.ToArray();
        if (type == GgmlType.Q8_0 && System.Runtime.Intrinsics.X86.Avx2.IsSupported)
        {
            var q = new sbyte[xs.Length];
            var d = new float[xs.Length / 32];
            fixed (float* px = x)
            fixed (sbyte* pq = q)
            fixed (float* pd = d)
                EmbeddingTable.QuantizeQ8Blocks(px, xs.Length, pq, pd);
            for (int i = 0; i < xs.Length; i++) xs[i] = q[i] * d[i / 32];
        }
        if (type == GgmlType.Q6_K && System.Runtime.Intrinsics.X86.Avx2.IsSupported)
        {
            // Likewise the Q6_K head with Q8_K activations (one scale per 256 values).
            var q = new sbyte[xs.Length];
            var d = new float[xs.Length / 256];
            var sums = new short[xs.Length / 16];
            fixed (float* px = x)
            fixed (sbyte* pq = q)
            fixed (float* pd = d)
            fixed (short* ps = sums)
                EmbeddingTable.QuantizeQ8KBlocks(px, xs.Length, pq, pd, ps);
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
    /// <summary>The batched head (row blocks outer, 4-token tiles inside, F16 rows widened once per tile) equals one MatVec per token, bit for bit.</summary>
    [Theory]
    [InlineData(GgmlType.F32)]
    [InlineData(GgmlType.F16)]
    [InlineData(GgmlType.BF16)]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.Q6_K)]
    public void MatMulEqualsMatVecPerToken(GgmlType type)
    {
        var shape = SyntheticShape.Tiny with { VocabSize = 70, Dim = type == GgmlType.Q6_K ? 256 : 128 };
        using var w = ModelWeights.FromGguf(GgufFile.Parse(SyntheticModel.Build(shape, 4, type).ToArray(), "t.gguf"), ownsFile: true);
        var table = w.TokenEmbedding;
        var rng = new Random(2);
        foreach (int tokens in new[] { 2, 4, 7, 9, 70 }) // 9: two 4-token tiles and one more; 70: past the 64-token chunk of the quantized heads
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

public class TopKSelectionEdgeTests
{
    [Fact]
    public void KZeroSelectsNothing() =>
        Assert.Equal(0, BitNetSharp.Generation.Sampling.TopKSelection.Select([1f, 2f], [], 0, new int[0], new float[0]));
}
