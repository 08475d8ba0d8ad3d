using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Kernels;
using BitNetSharp.Model;
using BitNetSharp.Threading;

namespace BitNetSharp.Tests.Model;

/// <summary>
/// Attention over a long context in chunks with a partial softmax each (Transformer.AttentionChunk): the same logits
/// for every thread count, for a batched prefill and token-by-token decoding, and within fp32 rounding of the
/// unchunked computation.
/// </summary>
public unsafe class SplitAttentionTests
{
    /// <summary>8 query heads on 2 KV heads (a GQA group of four, the 2B4T ratio), head dimension 16.</summary>
    private static readonly SyntheticShape Group4 = new("g4", 128, 2, 8, 2, 320, 256, 256);

    public static TheoryData<KvCacheType, bool> Cases()
    {
        var data = new TheoryData<KvCacheType, bool>();
        foreach (var type in Enum.GetValues<KvCacheType>())
        {
            data.Add(type, true);
            data.Add(type, false);
        }
        return data;
    }

    private static ModelWeights Model(bool group4) =>
        ModelWeights.FromGguf(GgufFile.Parse(SyntheticModel.Build(group4 ? Group4 : SyntheticShape.Tiny, 11, GgmlType.F32).ToArray(), "tiny.gguf"), ownsFile: true);

    private static int[] Tokens(int n, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => rng.Next(256)).ToArray();
    }

    /// <summary>Decodes <paramref name="tokens"/> one at a time; returns the logits of every step.</summary>
    private static float[][] Decode(ModelWeights w, int threads, int chunk, KvCacheType type, int[] tokens)
    {
        using var pool = new WorkerPool(threads);
        using var engine = new Transformer(w, 8, pool) { AttentionChunk = chunk, AttentionInlineLimit = 0 };
        var c = w.Config;
        using var cache = new KvCache(c.Layers, c.KvHeads, c.HeadDim, c.ContextLength, type);
        var steps = new float[tokens.Length][];
        for (int i = 0; i < tokens.Length; i++)
        {
            steps[i] = new float[c.VocabSize];
            engine.Forward([new BatchToken(tokens[i], 0, i, true)], [cache], steps[i]);
        }
        return steps;
    }

    [Theory, MemberData(nameof(Cases))]
    public void IdenticalForEveryThreadCountAndForPrefill(KvCacheType type, bool group4)
    {
        using var w = Model(group4);
        var tokens = Tokens(70, 3);
        var one = Decode(w, 1, 8, type, tokens); // 70 positions: up to 9 chunks of 8
        foreach (int threads in new[] { 2, 3, 4 })
        {
            var other = Decode(w, threads, 8, type, tokens);
            for (int i = 0; i < tokens.Length; i++) Assert.Equal(one[i], other[i]);
        }

        // The whole prompt as one batch (many pairs: each pair's chunks run in order on one thread) ends where decoding did.
        var c = w.Config;
        using var pool = new WorkerPool(2);
        using var engine = new Transformer(w, 80, pool) { AttentionChunk = 8, AttentionInlineLimit = 0 };
        using var cache = new KvCache(c.Layers, c.KvHeads, c.HeadDim, c.ContextLength, type);
        var logits = new float[c.VocabSize];
        engine.Forward(tokens.Select((t, i) => new BatchToken(t, 0, i, i == tokens.Length - 1)).ToArray(), [cache], logits);
        Assert.Equal(one[^1], logits);
    }

    /// <summary>
    /// Head dimension 32: int8 keys are stored in blocks of 16 positions (Int8KeyBlocks). Chunks of 7 and 24 positions
    /// start and end inside blocks, runs of chunks span several; the logits stay identical across thread counts and
    /// between token-by-token decoding and one batched prefill.
    /// </summary>
    [Theory]
    [InlineData(7)]
    [InlineData(24)]
    public void Int8KeyBlocksIdenticalForEveryThreadCountAndForPrefill(int chunk)
    {
        var shape = new SyntheticShape("g4-hd32", 128, 2, 4, 1, 320, 256, 256); // 4 query heads of 32 on one kv head
        using var w = ModelWeights.FromGguf(GgufFile.Parse(SyntheticModel.Build(shape, 13, GgmlType.F32).ToArray(), "hd32.gguf"), ownsFile: true);
        Assert.Equal(32, w.Config.HeadDim);
        var tokens = Tokens(75, 4);
        var one = Decode(w, 1, chunk, KvCacheType.Int8, tokens);
        foreach (int threads in new[] { 2, 3 })
        {
            var other = Decode(w, threads, chunk, KvCacheType.Int8, tokens);
            for (int i = 0; i < tokens.Length; i++) Assert.Equal(one[i], other[i]);
        }
        var c = w.Config;
        using var pool = new WorkerPool(2);
        using var engine = new Transformer(w, 80, pool) { AttentionChunk = chunk, AttentionInlineLimit = 0 };
        using var cache = new KvCache(c.Layers, c.KvHeads, c.HeadDim, c.ContextLength, KvCacheType.Int8);
        var logits = new float[c.VocabSize];
        engine.Forward(tokens.Select((t, i) => new BatchToken(t, 0, i, i == tokens.Length - 1)).ToArray(), [cache], logits);
        Assert.Equal(one[^1], logits);
    }

    [Fact]
    public void TwoSequencesDecodedTogetherEqualEachAlone()
    {
        using var w = Model(group4: true);
        var c = w.Config;
        var a = Tokens(50, 5);
        var b = Tokens(30, 6);
        var aloneA = Decode(w, 2, 8, KvCacheType.F16, a);
        var aloneB = Decode(w, 2, 8, KvCacheType.F16, b);
        using var pool = new WorkerPool(2);
        using var engine = new Transformer(w, 8, pool) { AttentionChunk = 8, AttentionInlineLimit = 0 };
        using var ca = new KvCache(c.Layers, c.KvHeads, c.HeadDim, c.ContextLength, KvCacheType.F16);
        using var cb = new KvCache(c.Layers, c.KvHeads, c.HeadDim, c.ContextLength, KvCacheType.F16);
        var logits = new float[2 * c.VocabSize];
        for (int i = 0; i < a.Length; i++)
        {
            if (i < b.Length)
            {
                engine.Forward([new BatchToken(a[i], 0, i, true), new BatchToken(b[i], 1, i, true)], [ca, cb], logits);
                Assert.Equal(aloneA[i], logits.AsSpan(0, c.VocabSize).ToArray());
                Assert.Equal(aloneB[i], logits.AsSpan(c.VocabSize, c.VocabSize).ToArray());
            }
            else
            {
                engine.Forward([new BatchToken(a[i], 0, i, true)], [ca, cb], logits);
                Assert.Equal(aloneA[i], logits.AsSpan(0, c.VocabSize).ToArray());
            }
        }
    }

    /// <summary>Chunks of 8 against one pass over all positions (chunk ≥ context): fp32 rounding apart, same argmax.</summary>
    [Theory]
    [InlineData(KvCacheType.F32)]
    public void ChunkedEqualsUnchunkedToRounding(KvCacheType type)
    {
        using var w = Model(group4: true);
        var tokens = Tokens(90, 9);
        var chunked = Decode(w, 2, 8, type, tokens);
        var whole = Decode(w, 2, w.Config.ContextLength, type, tokens);
        double worst = 0;
        for (int i = 0; i < tokens.Length; i++)
        {
            double range = whole[i].Max() - whole[i].Min();
            for (int v = 0; v < whole[i].Length; v++) worst = Math.Max(worst, Math.Abs(whole[i][v] - chunked[i][v]) / range);
            Assert.Equal(Array.IndexOf(whole[i], whole[i].Max()), Array.IndexOf(chunked[i], chunked[i].Max()));
        }
        Assert.True(worst < 1e-4, $"max |Δ| / logit range = {worst:E2}");
        Assert.True(worst > 0, "chunks of 8 should round differently from one pass: is the chunked path running?");
    }

    /// <summary>
    /// Int8 rows are read in integers with the weights rounded per block (Int8Attention), so chunks of 8 round the
    /// weights on other grids than one pass does: the logits move, but by far less than storing K and V in int8 at all
    /// moves them from fp32, and the argmax stays.
    /// </summary>
    [Fact]
    public void Int8ChunkedMovesLogitsFarLessThanInt8Itself()
    {
        using var w = Model(group4: true);
        var tokens = Tokens(90, 9);
        var chunked = Decode(w, 2, 8, KvCacheType.Int8, tokens);
        var whole = Decode(w, 2, w.Config.ContextLength, KvCacheType.Int8, tokens);
        var reference = Decode(w, 2, w.Config.ContextLength, KvCacheType.F32, tokens);
        double chunking = 0, int8 = 0;
        for (int i = 0; i < tokens.Length; i++)
        {
            double range = reference[i].Max() - reference[i].Min();
            for (int v = 0; v < whole[i].Length; v++)
            {
                chunking = Math.Max(chunking, Math.Abs(whole[i][v] - chunked[i][v]) / range);
                int8 = Math.Max(int8, Math.Abs(whole[i][v] - reference[i][v]) / range);
            }
            Assert.Equal(Array.IndexOf(whole[i], whole[i].Max()), Array.IndexOf(chunked[i], chunked[i].Max()));
        }
        Assert.True(chunking < 0.05 * int8, $"chunking moved the logits by {chunking:E2} of their range; int8 KV itself by {int8:E2}");
        Assert.True(chunking > 0, "chunks of 8 should round differently from one pass: is the chunked path running?");
    }

    [Fact]
    public void ChunkLengthIsValidated()
    {
        using var w = Model(group4: false);
        using var engine = new Transformer(w, 4, new WorkerPool(1));
        Assert.Equal(256, engine.AttentionChunk);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => engine.AttentionChunk = 0);
        Assert.Contains("chunk", e.Message);
    }

    /// <summary>The merge of chunk partials equals softmax(s)·V computed in double over all positions, with a chunk whose
    /// scores are all −∞ (it contributes nothing); a NaN score anywhere makes the output NaN.</summary>
    [Fact]
    public void MergeEqualsSoftmaxOverAllPositions()
    {
        var rng = new Random(4);
        const int n = 24, chunk = 10, positions = 47;
        var s = Enumerable.Range(0, positions).Select(_ => (float)(rng.NextDouble() * 20 - 10)).ToArray();
        for (int p = 10; p < 20; p++) s[p] = float.NegativeInfinity; // the whole second chunk
        var v = Enumerable.Range(0, positions).Select(_ => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray()).ToArray();

        double max = s.Max(), z = s.Sum(x => Math.Exp(x - max));
        var expected = new double[n];
        for (int p = 0; p < positions; p++)
            for (int d = 0; d < n; d++) expected[d] += Math.Exp(s[p] - max) / z * v[p][d];

        int chunks = (positions + chunk - 1) / chunk, stride = n + 2;
        var partials = new float[chunks * stride];
        var output = new float[n];
        fixed (float* pp = partials)
        fixed (float* po = output)
        {
            Merged(s, v, chunk, pp, stride);
            PartialSoftmax.Merge(pp, chunks, stride, n, n + 1, n, po);
            for (int d = 0; d < n; d++) Assert.True(Math.Abs(output[d] - expected[d]) < 1e-6, $"d {d}: {output[d]} vs {expected[d]}");

            s[33] = float.NaN;
            Merged(s, v, chunk, pp, stride);
            PartialSoftmax.Merge(pp, chunks, stride, n, n + 1, n, po);
            Assert.All(output, x => Assert.True(float.IsNaN(x)));
        }
    }

    /// <summary>
    /// The merge gives, bit for bit, f₀·o₀ then one fused multiply-add per chunk in order, with f_c = e^(m_c − M) / L, at
    /// every head size through each vector path (171 = 128 + 32 + 8 + 3 values: the eight-chain block, the 32- and
    /// 8-value slices and the scalar tail) and for one to forty chunks.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(17)]
    [InlineData(40)]
    public void MergeIsTheOrderedFusedSumAtEveryWidth(int chunks)
    {
        var rng = new Random(chunks);
        const int n = 171, stride = n + 2;
        var partials = new float[chunks * stride];
        for (int c = 0; c < chunks; c++)
        {
            for (int d = 0; d < n; d++) partials[c * stride + d] = (float)(rng.NextDouble() * 8 - 4);
            partials[c * stride + n] = (float)(rng.NextDouble() * 6 - 3);     // the chunk's maximum
            partials[c * stride + n + 1] = (float)(rng.NextDouble() * 50 + 1); // its sum
        }
        float top = float.NegativeInfinity;
        for (int c = 0; c < chunks; c++) top = MathF.Max(top, partials[c * stride + n]);
        var e = new float[chunks];
        double total = 0;
        for (int c = 0; c < chunks; c++)
        {
            e[c] = MathF.Exp(partials[c * stride + n] - top);
            total += (double)partials[c * stride + n + 1] * e[c];
        }
        var f = new float[chunks];
        for (int c = 0; c < chunks; c++) f[c] = (float)(e[c] / total);
        var output = new float[n];
        fixed (float* pp = partials)
        fixed (float* po = output)
            PartialSoftmax.Merge(pp, chunks, stride, n, n + 1, n, po);
        for (int d = 0; d < n; d++)
        {
            float want = f[0] * partials[d];
            for (int c = 1; c < chunks; c++) want = MathF.FusedMultiplyAdd(f[c], partials[c * stride + d], want);
            Assert.True(BitConverter.SingleToInt32Bits(want) == BitConverter.SingleToInt32Bits(output[d]), $"d {d}: {output[d]:R} against {want:R}");
        }
    }

    /// <summary>
    /// A chunk whose scores all lie far below another chunk's maximum adds nothing, as the unsplit softmax drops weights
    /// more than 87 below its maximum: its partial row may hold ±∞ (an F16 cache stores values past 65504 as ∞, weighted
    /// ~1 inside the chunk's own softmax), and the merge made the head NaN (0·∞, gap −400) or ±∞ (gap −95).
    /// </summary>
    [Theory]
    [InlineData(400f)]
    [InlineData(95f)]
    public void AChunkFarBelowTheMaximumCannotPoisonTheMerge(float gap)
    {
        const int n = 16, chunk = 8, positions = 16;
        var s = new float[positions]; // chunk 0 at 0, chunk 1 at gap above it
        for (int p = chunk; p < positions; p++) s[p] = gap;
        var v = Enumerable.Range(0, positions).Select(p => Enumerable.Repeat(p < chunk ? 5f : 1f, n).ToArray()).ToArray();
        v[0][3] = float.PositiveInfinity;
        int stride = n + 2;
        var partials = new float[2 * stride];
        var output = new float[n];
        fixed (float* pp = partials)
        fixed (float* po = output)
        {
            Merged(s, v, chunk, pp, stride);
            Assert.True(float.IsPositiveInfinity(partials[3])); // chunk 0's own output holds the ∞
            PartialSoftmax.Merge(pp, 2, stride, n, n + 1, n, po);
        }
        Assert.All(output, x => Assert.Equal(1f, x, 1e-6f)); // the softmax is all chunk 1's
    }

    /// <summary>Each chunk's partial, as the engine makes it: exponentiate, then Σ weight · V.</summary>
    private static void Merged(float[] s, float[][] v, int chunk, float* partials, int stride)
    {
        int n = v[0].Length;
        for (int first = 0, c = 0; first < s.Length; first += chunk, c++)
        {
            int count = Math.Min(chunk, s.Length - first);
            var w = s.AsSpan(first, count).ToArray();
            float* p = partials + c * stride;
            fixed (float* pw = w) p[n + 1] = PartialSoftmax.Exponentiate(pw, count, out p[n]);
            for (int d = 0; d < n; d++)
            {
                float o = 0;
                for (int i = 0; i < count; i++) o += w[i] * v[first + i][d];
                p[d] = o;
            }
        }
    }
}
