using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Model;
using BitNetSharp.Threading;

namespace BitNetSharp.Tests.Model;

public class TransformerTests
{
    internal static ModelWeights TinyModel(GgmlType embedding = GgmlType.F32, int seed = 7, SyntheticShape? shape = null, bool subNorms = true, string arch = "bitnet-b1.58") =>
        ModelWeights.FromGguf(GgufFile.Parse(SyntheticModel.Build(shape ?? SyntheticShape.Tiny, seed, embedding, subNorms, arch).ToArray(), "tiny.gguf"), ownsFile: true);

    private static KvCache Cache(ModelConfig c, KvCacheType type = KvCacheType.F32) => new(c.Layers, c.KvHeads, c.HeadDim, c.ContextLength, type);

    private static readonly int[] Prompt = [5, 17, 200, 3, 3, 99, 42, 7, 128, 255, 0, 64];

    /// <summary>
    /// A step too large for the activation rows' int indexing is refused, naming the limit and the flag, before any thread
    /// or buffer exists: token × width wrapped (a negative size, or a positive one too small that a batch overran).
    /// </summary>
    [Fact]
    public void AStepTooLargeToIndexIsRefusedNamingTheLimit()
    {
        using var w = TinyModel();
        var c = w.Config;
        long widest = Math.Max(Math.Max(c.Dim, c.QDim), Math.Max(c.KvDim, c.FeedForward));
        int tooMany = (int)(int.MaxValue / widest) + 1;
        using var pool = new WorkerPool(1);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new Transformer(w, tooMany, pool));
        Assert.Contains($"at most {int.MaxValue / widest} tokens", e.Message);
        Assert.Contains("--max-batched-tokens", e.Message);
    }

    /// <summary>A small model's decode stays on the calling thread: its products are below the pool's threshold and its
    /// attention below <see cref="Transformer.AttentionInlineMacs"/>, so no step wakes the other worker (whose wake-up
    /// cost more than the attention itself: 14 µs a layer on two threads against 4.9 on one).</summary>
    [Fact]
    public void ASmallModelsDecodeStepsNeverWakeTheOtherWorker()
    {
        using var w = TinyModel();
        using var pool = new WorkerPool(2);
        using var engine = new Transformer(w, 16, pool);
        using var cache = Cache(w.Config);
        var logits = new float[w.Config.VocabSize];
        var timeline = new ChunkTimeline(2, 4096);
        pool.Timeline = timeline;
        for (int pos = 0; pos < Prompt.Length; pos++)
            engine.Forward([new BatchToken(Prompt[pos], 0, pos, true)], [cache], logits);
        pool.Timeline = null;
        Assert.True(timeline.Spans(0).Length > 0, "nothing recorded on the calling thread");
        Assert.Equal(0, timeline.Spans(1).Length);
    }

    /// <summary>
    /// Engine vs the naive double-precision forward. Observed: max |Δ| = 1.4e−7 (bitnet-b1.58) and 8.8e−8 (bitnet)
    /// of the logit range, i.e. fp32 rounding. The bound, 1e−5, leaves room for an int8 activation code that a
    /// one-ulp difference in a norm moves by one step (a discontinuity of the model itself), and is still five
    /// orders below what a wiring error (a wrong RoPE pair, GQA map, norm or residual) produces.
    /// </summary>
    [Theory]
    [InlineData("bitnet-b1.58", true)]
    [InlineData("bitnet", true)]
    public void DecodeMatchesNaiveForward(string arch, bool subNorms)
    {
        using var w = TinyModel(arch: arch, subNorms: subNorms);
        var naive = new NaiveForward(w);
        using var pool = new WorkerPool(2);
        using var engine = new Transformer(w, 16, pool);
        using var cache = Cache(w.Config);
        var logits = new float[w.Config.VocabSize];
        double worst = 0;
        for (int pos = 0; pos < Prompt.Length; pos++)
        {
            engine.Forward([new BatchToken(Prompt[pos], 0, pos, true)], [cache], logits);
            var expected = naive.Step(Prompt[pos], pos);
            double range = expected.Max() - expected.Min();
            for (int i = 0; i < expected.Length; i++) worst = Math.Max(worst, Math.Abs(expected[i] - logits[i]) / range);
            Assert.Equal(Array.IndexOf(expected, expected.Max()), Array.IndexOf(logits, logits.Max()));
        }
        Assert.True(worst < 1e-5, $"max |Δ| / logit range = {worst:E2}");
    }

    [Fact]
    public void PrefillInOneBatchEqualsTokenByToken()
    {
        using var w = TinyModel();
        using var engine = new Transformer(w, 16, new WorkerPool(2));
        using var a = Cache(w.Config);
        using var b = Cache(w.Config);
        var batch = Prompt.Select((t, i) => new BatchToken(t, 0, i, i == Prompt.Length - 1)).ToArray();
        var batched = new float[w.Config.VocabSize];
        engine.Forward(batch, [a], batched);
        var single = new float[w.Config.VocabSize];
        for (int i = 0; i < Prompt.Length; i++) engine.Forward([batch[i] with { WantLogits = true }], [b], single);
        Assert.Equal(batched, single); // integer kernels and per-token float ops: bit-identical
    }

    /// <summary>
    /// Prefill by lookup (<see cref="BitNetSharp.Kernels.LutTernaryKernel.LookupPrefill"/>), its products split over two
    /// threads by tokens (a 384-wide model, as the bundled one), gives the logits of the same prompt fed one token at a time.
    /// </summary>
    [Fact]
    public void PrefillByLookupOnTwoThreadsEqualsTokenByToken()
    {
        var kernel = new BitNetSharp.Kernels.LutTernaryKernel(lookupPrefill: true);
        if (!kernel.IsSupported) Assert.Skip("The lookup kernel needs AVX-512BW; this CPU (or DOTNET_EnableAVX512=0) has none.");
        using var w = TinyModel(shape: new SyntheticShape("w384", 384, 2, 6, 2, 1024, 256, 64));
        using var engine = new Transformer(w, 64, new WorkerPool(2), kernel);
        using var a = Cache(w.Config);
        using var b = Cache(w.Config);
        var prompt = Enumerable.Range(0, 40).Select(i => (i * 37 + 11) % 256).ToArray();
        var batch = prompt.Select((t, i) => new BatchToken(t, 0, i, i == prompt.Length - 1)).ToArray();
        var batched = new float[w.Config.VocabSize];
        engine.Forward(batch, [a], batched);
        var single = new float[w.Config.VocabSize];
        for (int i = 0; i < prompt.Length; i++) engine.Forward([batch[i] with { WantLogits = true }], [b], single);
        Assert.Equal(batched, single);
    }

    [Fact]
    public void SequencesBatchedTogetherEqualEachAlone()
    {
        using var w = TinyModel(GgmlType.F16);
        using var engine = new Transformer(w, 32, new WorkerPool(2));
        int[] other = [9, 8, 7, 6, 5, 4, 3];
        using var c0 = Cache(w.Config, KvCacheType.F16);
        using var c1 = Cache(w.Config, KvCacheType.F16);
        // Prefill both prompts in one mixed batch, then decode both in one batch.
        var batch = Prompt.Select((t, i) => new BatchToken(t, 0, i, i == Prompt.Length - 1))
            .Concat(other.Select((t, i) => new BatchToken(t, 1, i, i == other.Length - 1))).ToArray();
        var both = new float[2 * w.Config.VocabSize];
        engine.Forward(batch, [c0, c1], both);
        var decode = new float[2 * w.Config.VocabSize];
        engine.Forward([new BatchToken(1, 0, Prompt.Length, true), new BatchToken(2, 1, other.Length, true)], [c0, c1], decode);

        foreach (var (prompt, next, row) in new[] { (Prompt, 1, 0), (other, 2, 1) })
        {
            using var alone = Cache(w.Config, KvCacheType.F16);
            var logits = new float[w.Config.VocabSize];
            engine.Forward(prompt.Select((t, i) => new BatchToken(t, 0, i, i == prompt.Length - 1)).ToArray(), [alone], logits);
            Assert.Equal(both.AsSpan(row * logits.Length, logits.Length).ToArray(), logits);
            engine.Forward([new BatchToken(next, 0, prompt.Length, true)], [alone], logits);
            Assert.Equal(decode.AsSpan(row * logits.Length, logits.Length).ToArray(), logits);
        }
    }

    [Fact]
    public void BadTokensAndPositionsAreClearErrors()
    {
        using var w = TinyModel();
        using var engine = new Transformer(w, 4, new WorkerPool(1));
        using var cache = Cache(w.Config);
        var logits = new float[w.Config.VocabSize];
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => engine.Forward([new BatchToken(256, 0, 0, true)], [cache], logits));
        Assert.Contains("256", e.Message);
        Assert.Contains("vocabulary", e.Message);
        e = Assert.Throws<ArgumentOutOfRangeException>(() => engine.Forward([new BatchToken(1, 0, w.Config.ContextLength, true)], [cache], logits));
        Assert.Contains("context", e.Message);
    }

    /// <summary>A KV cache of another shape is refused before anything is written: the same kv width in another head
    /// split ran and gave garbage attention, and fewer layers threw midway after other sequences' layers were written.</summary>
    [Fact]
    public void AKvCacheOfAnotherShapeIsRefusedBeforeAnyWrite()
    {
        using var w = ModelWeights.FromGguf(GgufFile.Parse(SyntheticModel.Build(SyntheticShape.Tiny).ToArray(), "t.gguf"), ownsFile: true);
        var c = w.Config;
        using var pool = new BitNetSharp.Threading.WorkerPool(1);
        using var engine = new Transformer(w, 4, pool);
        using var good = new KvCache(c.Layers, c.KvHeads, c.HeadDim, 8, KvCacheType.F32);
        using var split = new KvCache(c.Layers, c.KvHeads * 2, c.HeadDim / 2, 8, KvCacheType.F32);
        using var shallow = new KvCache(1, c.KvHeads, c.HeadDim, 8, KvCacheType.F32);
        var logits = new float[2 * c.VocabSize];
        foreach (var bad in new[] { split, shallow })
        {
            var e = Assert.Throws<ArgumentException>(() => engine.Forward([new BatchToken(1, 0, 0, true), new BatchToken(2, 1, 0, true)], [good, bad], logits));
            Assert.Contains("Sequence 1's KV cache", e.Message);
            Assert.Equal(0, good.LayerLength(0));
        }
    }

    /// <summary>A GGUF with the tiny model's tensors plus <paramref name="extra"/> (name, type, dims, bytes).</summary>
    private static GgufFile WithTensor(string name, GgmlType type, long[] dims, byte[] data)
    {
        using var full = GgufFile.Parse(SyntheticModel.Build(SyntheticShape.Tiny).ToArray(), "full.gguf");
        var w = new GgufWriter();
        foreach (var (key, value) in full.Metadata.Entries) w.Add(key, value);
        foreach (var t in full.Tensors) w.AddTensor(t.Name, t.Type, t.Dims, full.GetTensorData(t).ToArray());
        w.AddTensor(name, type, dims, data);
        return GgufFile.Parse(w.ToArray(), "extra.gguf");
    }

    /// <summary>
    /// A projection's optional .scale tensor (llama.cpp's bitnet arch multiplies it onto the product) is applied, and a
    /// .bias tensor is refused by name: both were ignored, and the logits differed from the model's without a word.
    /// </summary>
    [Fact]
    public void ProjectionScaleTensorsApplyAndBiasTensorsAreRefused()
    {
        using var plain = ModelWeights.FromGguf(GgufFile.Parse(SyntheticModel.Build(SyntheticShape.Tiny).ToArray(), "plain.gguf"), ownsFile: true);
        using var scaled = ModelWeights.FromGguf(WithTensor("blk.0.ffn_down.scale", GgmlType.F32, [1], BitConverter.GetBytes(0.5f)), ownsFile: true);
        Assert.Equal(plain.Layers[0].Down.RowScales.Select(v => v * 0.5f), scaled.Layers[0].Down.RowScales);
        Assert.Equal(plain.Layers[1].Down.RowScales, scaled.Layers[1].Down.RowScales);
        Assert.Equal(plain.Layers[0].Up.RowScales, scaled.Layers[0].Up.RowScales);

        var e = Assert.Throws<ModelFormatException>(() => ModelWeights.FromGguf(WithTensor("blk.0.attn_q.bias", GgmlType.F32, [SyntheticShape.Tiny.Dim], new byte[4 * SyntheticShape.Tiny.Dim]), ownsFile: true));
        Assert.Contains("blk.0.attn_q.bias", e.Message);
        e = Assert.Throws<ModelFormatException>(() => ModelWeights.FromGguf(WithTensor("blk.1.attn_k.scale", GgmlType.F32, [2], new byte[8]), ownsFile: true));
        Assert.Contains("blk.1.attn_k.scale", e.Message);
        // A negative scale flipped the layer's sign and ran (GGUF fuzz sweep).
        e = Assert.Throws<ModelFormatException>(() => ModelWeights.FromGguf(WithTensor("blk.0.ffn_down.scale", GgmlType.F32, [1], BitConverter.GetBytes(-1f)), ownsFile: true));
        Assert.Contains("blk.0.ffn_down.scale", e.Message);
        Assert.Contains("≥ 0", e.Message);
    }

    /// <summary>
    /// A tensor the graph does not read is refused by name, as llama.cpp refuses a file with the wrong number of
    /// tensors: a block_count below the file's layers ran a model cut short, and another variant's tensor (a q norm,
    /// one sub-norm without the other) was dropped; each loaded and gave other logits without a word.
    /// </summary>
    [Fact]
    public void TensorsTheGraphDoesNotReadAreRefused()
    {
        int dim = SyntheticShape.Tiny.Dim;
        var e = Assert.Throws<ModelFormatException>(() => ModelWeights.FromGguf(WithTensor("blk.0.attn_q_norm.weight", GgmlType.F32, [dim], new byte[4 * dim]), ownsFile: true));
        Assert.Contains("blk.0.attn_q_norm.weight", e.Message);
        Assert.Contains("does not use", e.Message);
        e = Assert.Throws<ModelFormatException>(() => ModelWeights.FromGguf(WithTensor("mystery.weight", GgmlType.F32, [dim], new byte[4 * dim]), ownsFile: true));
        Assert.Contains("mystery.weight", e.Message);

        // block_count 1 over a file of 2 layers.
        using var full = GgufFile.Parse(SyntheticModel.Build(SyntheticShape.Tiny).ToArray(), "full.gguf");
        var w = new GgufWriter();
        string arch = full.Metadata.GetString("general.architecture");
        foreach (var (key, value) in full.Metadata.Entries) w.Add(key, key == arch + ".block_count" ? GgufValue.FromUInt32(1) : value);
        foreach (var t in full.Tensors) w.AddTensor(t.Name, t.Type, t.Dims, full.GetTensorData(t).ToArray());
        e = Assert.Throws<ModelFormatException>(() => ModelWeights.FromGguf(GgufFile.Parse(w.ToArray(), "short.gguf"), ownsFile: true));
        Assert.Contains("block_count is 1", e.Message);
        Assert.Contains("blk.1.", e.Message);

        // One sub-norm without the other: the ffn sub-norms were dropped.
        using var plain = GgufFile.Parse(SyntheticModel.Build(SyntheticShape.Tiny, subNorms: false).ToArray(), "plain.gguf");
        var half = new GgufWriter();
        foreach (var (key, value) in plain.Metadata.Entries) half.Add(key, value);
        foreach (var t in plain.Tensors) half.AddTensor(t.Name, t.Type, t.Dims, plain.GetTensorData(t).ToArray());
        half.AddTensor("blk.0.ffn_sub_norm.weight", GgmlType.F32, [SyntheticShape.Tiny.FeedForward], new byte[4 * SyntheticShape.Tiny.FeedForward]);
        e = Assert.Throws<ModelFormatException>(() => ModelWeights.FromGguf(GgufFile.Parse(half.ToArray(), "half.gguf"), ownsFile: true));
        Assert.Contains("blk.0.attn_sub_norm.weight", e.Message);
    }

    [Fact]
    public void MissingTensorIsNamed()
    {
        var writer = SyntheticModel.Build(SyntheticShape.Tiny);
        var bytes = writer.ToArray();
        // Rebuild without one tensor: read back, copy all but blk.1.ffn_up.weight.
        using var full = GgufFile.Parse(bytes, "full.gguf");
        var w2 = new GgufWriter();
        foreach (var (key, value) in full.Metadata.Entries) w2.Add(key, value);
        foreach (var t in full.Tensors)
            if (t.Name != "blk.1.ffn_up.weight") w2.AddTensor(t.Name, t.Type, t.Dims, full.GetTensorData(t).ToArray());
        var e = Assert.Throws<ModelFormatException>(() => ModelWeights.FromGguf(GgufFile.Parse(w2.ToArray(), "cut.gguf"), ownsFile: true));
        Assert.Contains("blk.1.ffn_up.weight", e.Message);
        Assert.Contains("cut.gguf", e.Message);
    }
}

[Collection(nameof(BitNetSharp.Tests.Training.AllocationTests))] // counts process-wide allocations: runs with no other test in parallel
public class TransformerAllocationTests
{
    /// <summary>A decode step (batch, caches and logits reused) allocates nothing on any thread once warm. The warm-up is
    /// long because tiered JIT recompiles hot methods during the first few hundred calls, and that allocates.</summary>
    [Fact]
    public void DecodeStepAllocatesNothing()
    {
        using var w = TransformerTests.TinyModel(GgmlType.F16);
        using var pool = new WorkerPool(2);
        using var engine = new Transformer(w, 4, pool);
        using var cache = new KvCache(w.Config.Layers, w.Config.KvHeads, w.Config.HeadDim, w.Config.ContextLength, KvCacheType.F16);
        KvCache[] caches = [cache];
        var batch = new BatchToken[1];
        var logits = new float[w.Config.VocabSize];
        for (int round = 0; round < 40; round++)
        {
            cache.Clear();
            for (int pos = 0; pos < 8; pos++)
            {
                batch[0] = new BatchToken(pos + 1, 0, pos, true);
                engine.Forward(batch, caches, logits);
            }
        }
        // Tiered JIT recompiles hot methods after a 100 ms delay, and a recompilation inside a window allocates; an
        // allocation per step would show in every window, so one clean window out of twenty proves there is none.
        long allocated = long.MaxValue;
        for (int window = 0; window < 20 && allocated != 0; window++)
        {
            cache.Clear();
            long before = GC.GetTotalAllocatedBytes(precise: true);
            for (int pos = 0; pos < 32; pos++)
            {
                batch[0] = new BatchToken(pos + 1, 0, pos, true);
                engine.Forward(batch, caches, logits);
            }
            allocated = Math.Min(allocated, GC.GetTotalAllocatedBytes(precise: true) - before);
        }
        Assert.True(allocated == 0, $"every window of 32 decode steps allocated; the least was {allocated} bytes");
    }
}
