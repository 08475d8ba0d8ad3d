using BitNetSharp.Generation;
using BitNetSharp.Generation.Sampling;
using BitNetSharp.Kernels;
using BitNetSharp.Kernels.FloatOps;
using BitNetSharp.Model;
using BitNetSharp.Monitoring;
using BitNetSharp.Tests.Model;
using BitNetSharp.Threading;

namespace BitNetSharp.Tests.Monitoring;

public class HealthCollectorTests
{
    private static KvCache Cache(ModelConfig c) => new(c.Layers, c.KvHeads, c.HeadDim, c.ContextLength, KvCacheType.F32);

    [Fact]
    public void LogitStatsMatchTheDoubleReference()
    {
        var rng = new Random(3);
        foreach (int n in new[] { 1, 7, 8, 33, 1000, 4099 })
        {
            var row = new float[n];
            for (int i = 0; i < n; i++) row[i] = (float)(rng.NextDouble() * 40 - 20);
            var fast = LogitStats.Compute(row);
            var slow = LogitStats.Reference(row);
            Assert.Equal(slow.Min, fast.Min);
            Assert.Equal(slow.Max, fast.Max);
            Assert.Equal(0, fast.NonFinite);
            Assert.Equal(slow.Entropy, fast.Entropy, 1e-4);
            Assert.Equal(0, LogitStats.CountNonFinite(row));
        }
        // Uniform logits: entropy ln V; one dominant logit: entropy ~0.
        Assert.Equal(Math.Log(512), LogitStats.Compute(new float[512]).Entropy, 1e-4);
        var peaked = new float[512];
        peaked[100] = 100;
        Assert.True(LogitStats.Compute(peaked).Entropy < 1e-6);
    }

    [Fact]
    public void NonFiniteLogitsAreCountedAndLeftOutOfTheStatistics()
    {
        var row = new float[37];
        for (int i = 0; i < row.Length; i++) row[i] = i;
        row[3] = float.NaN;
        row[20] = float.PositiveInfinity;
        row[36] = float.NegativeInfinity;
        Assert.Equal(3, LogitStats.CountNonFinite(row));
        var s = LogitStats.Compute(row);
        Assert.Equal(3, s.NonFinite);
        Assert.Equal(0, s.Min);
        Assert.Equal(35, s.Max);
        Assert.Equal(LogitStats.Reference(row).Entropy, s.Entropy, 1e-4);
        Assert.True(float.IsNaN(LogitStats.Compute([float.NaN, float.NaN]).Max));
    }

    /// <summary>
    /// Finite logits whose spread passes float's range (a model blowing up, before it reaches ∞): x − max was −∞ in
    /// float, e^(−∞)·(−∞) NaN, and the entropy NaN where the reference gives 0. Both the scalar tail and the vector path.
    /// </summary>
    [Theory]
    [InlineData(2)]
    [InlineData(16)]
    [InlineData(19)]
    public void EntropyStaysFiniteWhenTheSpreadPassesFloatRange(int n)
    {
        var row = new float[n];
        for (int i = 0; i < n; i++) row[i] = i % 2 == 0 ? float.MaxValue : -float.MaxValue;
        var s = LogitStats.Compute(row);
        Assert.False(float.IsNaN(s.Entropy));
        Assert.Equal(LogitStats.Reference(row).Entropy, s.Entropy, 1e-5);
    }

    [Fact]
    public void CodeCountsAndFinitenessMatchScalarLoops()
    {
        var rng = new Random(5);
        foreach (int n in new[] { 5, 32, 100, 2560 })
        {
            var codes = new sbyte[n];
            for (int i = 0; i < n; i++) codes[i] = (sbyte)rng.Next(-128, 128);
            codes[0] = 0;
            codes[n - 1] = 127;
            ModelHealthCollector.CountCodes(codes, out int sat, out int zeros);
            Assert.Equal(codes.Count(c => c is >= 127 or <= -127), sat);
            Assert.Equal(codes.Count(c => c == 0), zeros);
            var x = new float[n];
            Assert.True(ModelHealthCollector.AllFinite(x));
            x[rng.Next(n)] = float.NegativeInfinity;
            Assert.False(ModelHealthCollector.AllFinite(x));
        }
    }

    /// <summary>Collecting changes nothing the model computes: logits are bit-identical with and without it.</summary>
    [Fact]
    public void CollectingLeavesTheLogitsBitIdentical()
    {
        using var w = TransformerTests.TinyModel();
        var c = w.Config;
        using var pool = new WorkerPool(2);
        using var plain = new Transformer(w, 8, pool);
        using var watched = new Transformer(w, 8, pool);
        using var health = new ModelHealthCollector(c, 8) { SampleEvery = 1 };
        watched.Health = health;
        using var c1 = Cache(c);
        using var c2 = Cache(c);
        var a = new float[4 * c.VocabSize];
        var b = new float[4 * c.VocabSize];
        BatchToken[] batch = [new(5, 0, 0, true), new(17, 0, 1, true), new(200, 0, 2, true), new(3, 0, 3, true)];
        plain.Forward(batch, [c1], a);
        watched.Forward(batch, [c2], b);
        Assert.Equal(a, b);
        Assert.True(health.Sampling);
        health.Publish();
        Assert.Equal(1, health.Samples);
        var snap = health.Latest;
        Assert.Equal(4, snap.Tokens);
        Assert.All(snap.ResidualRms, v => Assert.True(v > 0 && float.IsFinite(v)));
        Assert.All(snap.CrestFactor, v => Assert.True(v >= 1));
    }

    /// <summary>The layer-0 q/k/v input statistics equal what the reference quantizer gives for RMSNorm(embedding).</summary>
    [Fact]
    public void FirstLayerInputStatisticsMatchTheReferenceQuantizer()
    {
        using var w = TransformerTests.TinyModel();
        var c = w.Config;
        using var pool = new WorkerPool(1);
        using var engine = new Transformer(w, 4, pool);
        using var health = new ModelHealthCollector(c, 4) { SampleEvery = 1 };
        engine.Health = health;
        using var cache = Cache(c);
        var logits = new float[c.VocabSize];
        engine.Forward([new BatchToken(42, 0, 0, true)], [cache], logits);
        health.AddLogits(LogitStats.Compute(logits));
        health.Publish();
        var snap = health.Latest;

        var x = new float[c.Dim];
        w.TokenEmbedding.GetRow(42, x);
        var xb = new float[c.Dim];
        RmsNorm.Apply(x, w.Layers[0].AttnNorm, xb, c.RmsEps);
        var q = new sbyte[BitNetSharp.Quantization.TernaryMatrix.PadCols(c.Dim)];
        Int8ActivationQuantizer.QuantizeReference(xb, q, out _, out _);
        int sat = 0, zero = 0;
        for (int i = 0; i < c.Dim; i++)
        {
            if (q[i] == 0) zero++;
            else if (Math.Abs((int)q[i]) >= 127) sat++;
        }
        double rms = Math.Sqrt(xb.Sum(v => (double)v * v) / c.Dim), max = xb.Max(v => Math.Abs(v));
        int cell = snap.Index(0, BitLinearInput.Qkv);
        Assert.Equal((float)sat / c.Dim, snap.Saturation[cell]);
        Assert.Equal((float)zero / c.Dim, snap.Underflow[cell]);
        Assert.Equal(max / rms, snap.CrestFactor[cell], 1e-4);
        Assert.True(sat >= 1); // absmax scaling puts the largest entry at ±127
        var expected = LogitStats.Reference(logits);
        Assert.Equal(expected.Range, snap.LogitRange);
        Assert.Equal(1, snap.LogitRows);
    }

    /// <summary>
    /// The KV rounding gauges: layer 0's key/value rows do not depend on the cache (attention comes after them), so an
    /// f32 cache's rows are the exact ones and the rounded cache's rows read back give the error, computed here in
    /// double; the f32 cache reads 0 everywhere.
    /// </summary>
    [Theory]
    [InlineData(KvCacheType.Int8, 0.002, 0.05)]
    [InlineData(KvCacheType.Fp8E4M3, 0.01, 0.07)]
    [InlineData(KvCacheType.F16, 1e-5, 1e-3)]
    public void KvRoundingIsTheStoredRowsDistanceFromTheExactOnes(KvCacheType type, double low, double high)
    {
        using var w = TransformerTests.TinyModel();
        var c = w.Config;
        using var pool = new WorkerPool(2);
        using var exactEngine = new Transformer(w, 4, pool);
        using var engine = new Transformer(w, 4, pool);
        using var health = new ModelHealthCollector(c, 4) { SampleEvery = 1 };
        engine.Health = health;
        using var exact = Cache(c);
        using var rounded = new KvCache(c.Layers, c.KvHeads, c.HeadDim, c.ContextLength, type);
        var logits = new float[3 * c.VocabSize];
        BatchToken[] batch = [new(5, 0, 0, true), new(17, 0, 1, true), new(200, 0, 2, true)];
        exactEngine.Forward(batch, [exact], logits);
        engine.Forward(batch, [rounded], logits);
        health.Publish();
        var snap = health.Latest;

        double key = 0, value = 0;
        var k = new float[c.KvDim];
        var v = new float[c.KvDim];
        var kHat = new float[c.KvDim];
        var vHat = new float[c.KvDim];
        for (int t = 0; t < 3; t++)
        {
            exact.Read(0, t, k, v);
            rounded.Read(0, t, kHat, vHat);
            key = Math.Max(key, Distance(k, kHat));
            value = Math.Max(value, Distance(v, vHat));
        }
        Assert.Equal(key, snap.KvKeyError[0], 1e-6);
        Assert.Equal(value, snap.KvValueError[0], 1e-6);
        for (int l = 0; l < c.Layers; l++)
        {
            Assert.InRange(snap.KvKeyError[l], low, high);
            Assert.InRange(snap.KvValueError[l], low, high);
        }

        using var f32Health = new ModelHealthCollector(c, 4) { SampleEvery = 1 };
        exactEngine.Health = f32Health;
        using var exact2 = Cache(c);
        exactEngine.Forward(batch, [exact2], logits);
        f32Health.Publish();
        Assert.All(f32Health.Latest.KvKeyError, e => Assert.Equal(0f, e));
        Assert.All(f32Health.Latest.KvValueError, e => Assert.Equal(0f, e));

        static double Distance(float[] x, float[] y)
        {
            double d = 0, n = 0;
            for (int i = 0; i < x.Length; i++)
            {
                d += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
                n += (double)x[i] * x[i];
            }
            return Math.Sqrt(d / n);
        }
    }

    /// <summary>At most 16 of a step's tokens have their KV rounding measured (a 512-token prefill chunk read back every row), the first always.</summary>
    [Fact]
    public void KvRoundingIsMeasuredOnAtMostSixteenTokensAStep()
    {
        foreach (int n in new[] { 1, 15, 16, 17, 40, 512, 4096 })
        {
            int measured = 0;
            for (int t = 0; t < n; t++) if (ModelHealthCollector.MeasuresKv(t, n)) measured++;
            Assert.InRange(measured, Math.Min(n, 9), 16);
            Assert.True(ModelHealthCollector.MeasuresKv(0, n));
        }
        Assert.True(ModelHealthCollector.MeasuresKv(15, 16));
        Assert.False(ModelHealthCollector.MeasuresKv(1, 40));
        Assert.True(ModelHealthCollector.MeasuresKv(39, 40)); // every 3rd of 40
    }

    [Fact]
    public void RelativeErrorOfSpecialRows()
    {
        Assert.Equal(0f, ModelHealthCollector.RelativeError([0f, 0f], [0f, 0f]));
        Assert.Equal(float.PositiveInfinity, ModelHealthCollector.RelativeError([0f, 0f], [1f, 0f]));
        Assert.True(float.IsNaN(ModelHealthCollector.RelativeError([float.NaN, 1f], [0f, 1f])));
        Assert.True(float.IsNaN(ModelHealthCollector.RelativeError([float.PositiveInfinity, 1f], [float.PositiveInfinity, 1f])));
        Assert.Equal(0.6f, ModelHealthCollector.RelativeError([3f, 4f], [3f, 1f]), 1e-6f);
    }

    [Fact]
    public void SamplingRateIsHonoured()
    {
        using var w = TransformerTests.TinyModel();
        using var pool = new WorkerPool(1);
        using var engine = new Transformer(w, 4, pool);
        using var health = new ModelHealthCollector(w.Config, 4) { SampleEvery = 3 };
        engine.Health = health;
        using var cache = Cache(w.Config);
        var logits = new float[w.Config.VocabSize];
        int published = 0;
        health.Published += _ => published++;
        for (int pos = 0; pos < 7; pos++)
        {
            engine.Forward([new BatchToken(pos + 1, 0, pos, true)], [cache], logits);
            health.Publish();
        }
        Assert.Equal(7, health.Steps);
        Assert.Equal(3, health.Samples); // steps 0, 3, 6
        Assert.Equal(3, published);
        health.SampleEvery = 0;
        engine.Forward([new BatchToken(1, 0, 7, true)], [cache], logits);
        health.Publish();
        Assert.Equal(3, health.Samples);
        Assert.Throws<ArgumentException>(() => new Transformer(w, 8, pool) { Health = health });
    }

    [Fact]
    public void NonFiniteValuesAreTracedToTheLayerWhereTheyFirstAppear()
    {
        using var w = TransformerTests.TinyModel();
        using var pool = new WorkerPool(2);
        using var engine = new Transformer(w, 4, pool);
        using var health = new ModelHealthCollector(w.Config, 4) { SampleEvery = 0 };
        engine.Health = health;
        var logits = new float[2 * w.Config.VocabSize];
        var scales = w.Layers[1].Q.RowScales;
        float saved = scales[0];
        scales[0] = float.NaN;
        using (var cache = Cache(w.Config))
        {
            engine.Forward([new BatchToken(1, 0, 0, true)], [cache], logits);
            Assert.True(LogitStats.CountNonFinite(logits.AsSpan(0, w.Config.VocabSize)) > 0);
            Assert.Equal(1, health.NonFiniteOrigin(0));
        }
        scales[0] = saved;
        using (var cache = Cache(w.Config))
        {
            engine.Forward([new BatchToken(1, 0, 0, true)], [cache], logits);
            Assert.Equal(0, LogitStats.CountNonFinite(logits.AsSpan(0, w.Config.VocabSize)));
            Assert.Equal(ModelHealthCollector.Finite, health.NonFiniteOrigin(0));
        }
        Assert.Contains("layer 1", ModelHealthCollector.DescribeOrigin(1));
    }

    [Fact]
    public void GeneratorEndsWithAnErrorNamingTheLayer()
    {
        using var w = TransformerTests.TinyModel();
        w.Layers[0].Down.RowScales[3] = float.PositiveInfinity;
        using var g = new TextGenerator(w, null, new GeneratorOptions { Threads = 1, HealthSampleEvery = 1 });
        // The failing step's logits figures are published as NaN (it published none: no --log-logits line, and no
        // logits line in --health when the first step failed; health sweep).
        int rows = 0;
        float max = 0;
        g.Health.Published += snap => (rows, max) = (snap.LogitRows, snap.LogitMax);
        var e = Assert.Throws<NonFiniteLogitsException>(() => g.Generate([1, 2, 3], 4, SamplingParameters.Greedy, cancellation: TestContext.Current.CancellationToken).ToList());
        Assert.Equal(0, e.Layer);
        Assert.Contains("layer 0", e.Message);
        Assert.Equal(1, rows);
        Assert.True(float.IsNaN(max));
    }
}

public class HealthCollectorBatchTests
{
    /// <summary>A token whose embedding is NaN poisons only its own sequence: the other sequence's logits equal its logits alone.</summary>
    [Fact]
    public unsafe void NaNStaysInItsSequence()
    {
        // An untied head: with a tied one, the poisoned embedding row is also every sequence's head row.
        var writer = SyntheticModel.Build(SyntheticShape.Tiny, 7, BitNetSharp.Formats.Gguf.GgmlType.F16);
        AddOutputHead(writer, SyntheticShape.Tiny.Dim, SyntheticShape.Tiny.VocabSize);
        using var w = ModelWeights.FromGguf(BitNetSharp.Formats.Gguf.GgufFile.Parse(writer.ToArray(), "tiny-untied.gguf"), ownsFile: true);
        Assert.False(w.TiedOutput);
        var c = w.Config;
        using var pool = new WorkerPool(2);
        using var engine = new Transformer(w, 8, pool);
        using var health = new ModelHealthCollector(c, 8) { SampleEvery = 1 };
        engine.Health = health;
        var alone = new float[c.VocabSize];
        using (var cache = new KvCache(c.Layers, c.KvHeads, c.HeadDim, c.ContextLength, KvCacheType.F32))
            engine.Forward([new BatchToken(5, 0, 0), new BatchToken(6, 0, 1, true)], [cache], alone);
        ((ushort*)(w.TokenEmbedding.Data + 90 * w.TokenEmbedding.RowBytes))[3] = 0x7E00;
        var both = new float[2 * c.VocabSize];
        using var c0 = new KvCache(c.Layers, c.KvHeads, c.HeadDim, c.ContextLength, KvCacheType.F32);
        using var c1 = new KvCache(c.Layers, c.KvHeads, c.HeadDim, c.ContextLength, KvCacheType.F32);
        engine.Forward([new BatchToken(90, 1, 0), new BatchToken(5, 0, 0), new BatchToken(90, 1, 1, true), new BatchToken(6, 0, 1, true)], [c0, c1], both);
        Assert.Equal(ModelHealthCollector.Embedding, health.NonFiniteOrigin(0));
        Assert.Equal(ModelHealthCollector.Finite, health.NonFiniteOrigin(1));
        Assert.Equal(alone, both.AsSpan(c.VocabSize).ToArray());
    }

    /// <summary>
    /// Infinities written into a tied F16 head row after load (a mapped file changed under a running process): the raw-half
    /// kernels read them as ±65536, so that token's logit came out huge and finite (it won every step, or never could)
    /// and nothing non-finite was seen. The engine's pass makes it NaN; every other logit is as before. Q8_0 and Q6_K
    /// heads likewise by their blocks' fp16 scales (read as finite halves too).
    /// </summary>
    [Theory]
    [InlineData(BitNetSharp.Formats.Gguf.GgmlType.F16)]
    [InlineData(BitNetSharp.Formats.Gguf.GgmlType.Q8_0)]
    [InlineData(BitNetSharp.Formats.Gguf.GgmlType.Q6_K)]
    public unsafe void AnInfiniteHeadRowWrittenAfterLoadGivesANaNLogit(BitNetSharp.Formats.Gguf.GgmlType type)
    {
        var shape = type == BitNetSharp.Formats.Gguf.GgmlType.Q6_K ? SyntheticShape.Tiny with { Dim = 256 } : SyntheticShape.Tiny; // Q6_K rows are 256-value blocks
        using var w = ModelWeights.FromGguf(BitNetSharp.Formats.Gguf.GgufFile.Parse(SyntheticModel.Build(shape, 7, type).ToArray(), "tiny.gguf"), ownsFile: true);
        Assert.True(w.TiedOutput);
        var c = w.Config;
        using var pool = new WorkerPool(2);
        using var engine = new Transformer(w, 8, pool);
        var before = new float[c.VocabSize];
        using (var cache = new KvCache(c.Layers, c.KvHeads, c.HeadDim, c.ContextLength, KvCacheType.F32))
            engine.Forward([new BatchToken(5, 0, 0), new BatchToken(6, 0, 1, true)], [cache], before);
        byte* row = w.TokenEmbedding.Data + 100 * w.TokenEmbedding.RowBytes;
        if (type == BitNetSharp.Formats.Gguf.GgmlType.F16)
            for (int j = 0; j < c.Dim; j++) ((ushort*)row)[j] = 0x7C00;
        else if (type == BitNetSharp.Formats.Gguf.GgmlType.Q8_0)
            for (int b = 0; b < c.Dim / 32; b++) *(ushort*)(row + b * 34) = 0x7C00; // every block's scale +inf
        else
            for (int b = 0; b < c.Dim / 256; b++) *(ushort*)(row + b * 210 + 208) = 0x7C00;
        var after = new float[c.VocabSize];
        using (var cache = new KvCache(c.Layers, c.KvHeads, c.HeadDim, c.ContextLength, KvCacheType.F32))
            engine.Forward([new BatchToken(5, 0, 0), new BatchToken(6, 0, 1, true)], [cache], after);
        Assert.True(float.IsNaN(after[100]), $"token 100's logit: {after[100]}");
        after[100] = before[100];
        Assert.Equal(before, after);
    }

    /// <summary>The tiny model with an untied head (a tied one would carry the NaN into every logit) and token 90's embedding row holding a NaN.</summary>
    private static unsafe ModelWeights UntiedWithANaNEmbedding()
    {
        var writer = SyntheticModel.Build(SyntheticShape.Tiny, 7, BitNetSharp.Formats.Gguf.GgmlType.F16);
        AddOutputHead(writer, SyntheticShape.Tiny.Dim, SyntheticShape.Tiny.VocabSize);
        var w = ModelWeights.FromGguf(BitNetSharp.Formats.Gguf.GgufFile.Parse(writer.ToArray(), "tiny-untied.gguf"), ownsFile: true);
        ((ushort*)(w.TokenEmbedding.Data + 90 * w.TokenEmbedding.RowBytes))[3] = 0x7E00;
        return w;
    }

    /// <summary>A NaN embedding two positions back reaches the logits row through attention: the origin is the embedding, not layer 0.</summary>
    [Fact]
    public unsafe void NaNCarriedByAttentionIsTracedToItsOrigin()
    {
        using var w = UntiedWithANaNEmbedding();
        var c = w.Config;
        using var pool = new WorkerPool(2);
        using var engine = new Transformer(w, 8, pool);
        using var health = new ModelHealthCollector(c, 8) { SampleEvery = 1 };
        engine.Health = health;
        var logits = new float[2 * c.VocabSize];
        using var c0 = new KvCache(c.Layers, c.KvHeads, c.HeadDim, c.ContextLength, KvCacheType.F32);
        using var c1 = new KvCache(c.Layers, c.KvHeads, c.HeadDim, c.ContextLength, KvCacheType.F32);
        engine.Forward([new BatchToken(90, 0, 0), new BatchToken(5, 0, 1, true), new BatchToken(5, 1, 0), new BatchToken(6, 1, 1, true)], [c0, c1], logits);
        Assert.True(float.IsNaN(logits[0]));
        Assert.Equal(ModelHealthCollector.Embedding, health.NonFiniteOrigin(0));
        Assert.Equal(ModelHealthCollector.Finite, health.NonFiniteOrigin(1));
    }

    /// <summary>
    /// A NaN made in a prompt's earlier chunk (a step with no logits row) reaches the last chunk only through the KV
    /// cache: the origin is where it first appeared, not the first layer of the later chunk that read it (server
    /// --max-batched-tokens 4 named layer 2 for a NaN made in layer 1; health sweep). A cleared cache forgets it.
    /// </summary>
    [Fact]
    public unsafe void NaNFromAnEarlierChunkIsTracedToItsOrigin()
    {
        using var w = UntiedWithANaNEmbedding();
        var c = w.Config;
        using var pool = new WorkerPool(2);
        using var engine = new Transformer(w, 8, pool);
        using var health = new ModelHealthCollector(c, 8) { SampleEvery = 1 };
        engine.Health = health;
        var logits = new float[c.VocabSize];
        using var cache = new KvCache(c.Layers, c.KvHeads, c.HeadDim, c.ContextLength, KvCacheType.F32);
        engine.Forward([new BatchToken(5, 0, 0), new BatchToken(90, 0, 1)], [cache], logits); // the first chunk: no logits
        Assert.Equal(ModelHealthCollector.Embedding, cache.NonFiniteOrigin);
        engine.Forward([new BatchToken(6, 0, 2), new BatchToken(7, 0, 3, true)], [cache], logits);
        Assert.True(float.IsNaN(logits[0]));
        Assert.Equal(ModelHealthCollector.Embedding, health.NonFiniteOrigin(0)); // read as layer 0's attention before

        cache.Truncate(2);
        Assert.Equal(ModelHealthCollector.Embedding, cache.NonFiniteOrigin); // position 1 is still held
        cache.Truncate(1);
        Assert.Equal(ModelHealthCollector.Finite, cache.NonFiniteOrigin);
        // Each origin lasts as long as a position it was seen at (review: one lowest origin outlived its position).
        cache.NoteNonFinite(1, 2);
        cache.NoteNonFinite(ModelHealthCollector.Embedding, 9);
        Assert.Equal(ModelHealthCollector.Embedding, cache.NonFiniteOrigin);
        cache.Truncate(5);
        Assert.Equal(1, cache.NonFiniteOrigin);
        using (var copy = new KvCache(c.Layers, c.KvHeads, c.HeadDim, c.ContextLength, KvCacheType.F32))
        {
            copy.CopyFrom(cache);
            Assert.Equal(1, copy.NonFiniteOrigin);
        }
        cache.Truncate(1);
        Assert.Equal(ModelHealthCollector.Finite, cache.NonFiniteOrigin);
        cache.Clear();
        engine.Forward([new BatchToken(5, 0, 0), new BatchToken(6, 0, 1, true)], [cache], logits);
        Assert.Equal(ModelHealthCollector.Finite, health.NonFiniteOrigin(0));

        // The user's path: a generator reading the prompt in chunks of 2 names the embedding.
        using var g = new TextGenerator(w, null, new GeneratorOptions { Threads = 1, HealthSampleEvery = 1, PrefillChunk = 2 });
        var e = Assert.Throws<NonFiniteLogitsException>(() => g.Generate([5, 90, 6, 7], 2, SamplingParameters.Greedy, cancellation: TestContext.Current.CancellationToken).ToList());
        Assert.Contains("token embedding", e.Message);
    }

    /// <summary>
    /// Layer 0's output turning +∞ is flagged (only NaN was); squares sum in double, so residuals near 1e18 give their
    /// RMS, not ∞; codes past the clamp limit count as saturated in the vector path too.
    /// </summary>
    [Fact]
    public void InfinityHugeValuesAndCodesPastTheLimitAreMeasured()
    {
        using var w = TransformerTests.TinyModel();
        var c = w.Config;
        using var health = new ModelHealthCollector(c, 1) { SampleEvery = 1 };
        var ones = Enumerable.Repeat(1f, c.Dim).ToArray();
        var inf = (float[])ones.Clone();
        inf[3] = float.PositiveInfinity;
        health.BeginForward(1);
        health.LayerStart(0, 0, ones);
        health.LayerEnd(0, 0, inf);
        var huge = Enumerable.Repeat(2e18f, c.Dim).ToArray();
        for (int l = 1; l < c.Layers; l++)
        {
            health.LayerStart(l, 0, huge);
            health.LayerEnd(l, 0, huge);
        }
        health.EndForward();
        health.Publish();
        var snap = health.Latest;
        Assert.True(snap.BlowUp[0]);
        Assert.Equal(2e18, snap.ResidualRms[1], 2e18 * 1e-6);
        Assert.Equal(0f, snap.ResidualChange[1]);
        ModelHealthCollector.CountCodes(Enumerable.Repeat((sbyte)127, 32).ToArray(), out int saturated, out _, maxCode: 7);
        Assert.Equal(32, saturated);
    }

    /// <summary>
    /// One token blowing a layer up is flagged however many tokens share the step: the change was the mean over the
    /// step's tokens, so one diverging sequence in a batch of 16 read (100 + 15 × 0.3) / 16 = 6.5, under the threshold 8.
    /// </summary>
    [Fact]
    public void OneDivergingTokenIsFlaggedWhateverTheBatch()
    {
        using var w = TransformerTests.TinyModel();
        var c = w.Config;
        Assert.True(c.Layers >= 2);
        const int tokens = 16;
        using var health = new ModelHealthCollector(c, tokens) { SampleEvery = 1 };
        var before = Enumerable.Range(0, c.Dim).Select(i => 1f + i % 3).ToArray();
        float[] Scaled(float k) => before.Select(v => v * k).ToArray();
        health.BeginForward(tokens);
        for (int l = 0; l < c.Layers; l++)
            for (int t = 0; t < tokens; t++)
            {
                health.LayerStart(l, t, before);
                health.LayerEnd(l, t, l == 1 && t == 0 ? Scaled(101) : Scaled(1.3f));
            }
        health.EndForward();
        health.Publish();
        var snap = health.Latest;
        Assert.Equal(100f, snap.ResidualChange[1], 1e-3f);
        Assert.True(snap.BlowUp[1]);
        Assert.Equal(0.3f, snap.ResidualChange[0], 1e-5f);
        Assert.False(snap.BlowUp[0]);

        // A sequence's first token (the attention sink, which many models blow up in an early layer on purpose) is left
        // out; not finite, it always counts.
        void Step(Func<int, float> changeOfToken0)
        {
            health.BeginForward(tokens);
            for (int t = 0; t < tokens; t++) health.MapToken(t, t < 8 ? 0 : 1, t < 8 ? t : t - 8);
            for (int l = 0; l < c.Layers; l++)
                for (int t = 0; t < tokens; t++)
                {
                    health.LayerStart(l, t, before);
                    health.LayerEnd(l, t, l == 1 && t == 0 ? Scaled(1 + changeOfToken0(l)) : Scaled(1.3f));
                }
            health.EndForward();
            health.Publish();
        }
        Step(_ => 500f);
        Assert.Equal(0.3f, health.Latest.ResidualChange[1], 1e-5f);
        Assert.False(health.Latest.BlowUp[1]);
        Step(_ => float.NaN);
        Assert.True(float.IsNaN(health.Latest.ResidualChange[1]));
        health.BeginForward(1);
        health.MapToken(0, 0, 0);
        for (int l = 0; l < c.Layers; l++)
        {
            health.LayerStart(l, 0, before);
            health.LayerEnd(l, 0, l == 1 ? Scaled(21) : Scaled(1.3f));
        }
        health.EndForward();
        health.Publish();
        // ... alone, it is not measured (0) nor flagged: the same healthy sink was flagged, and counted by the alert rule
        // over the gauge, or not by whether other tokens shared its step (a prompt of just BOS was; a longer one was not).
        Assert.Equal(0f, health.Latest.ResidualChange[1]);
        Assert.False(health.Latest.BlowUp[1]);
    }

    /// <summary>An idle scheduler sampling every step's health, with the health meters over it; tests drive its collector.</summary>
    private sealed class MeteredScheduler : IDisposable
    {
        public MeteredScheduler()
        {
            (Weights, var tokenizer) = BitNetSharp.Tests.Server.TinyChatModel.Load();
            Scheduler = new BitNetSharp.Generation.Scheduler.ContinuousBatchScheduler(Weights, tokenizer,
                new BitNetSharp.Generation.Scheduler.SchedulerOptions { MaxSequences = 1, Threads = 1, HealthSampleEvery = 1 });
            Meters = new HealthMeters(Scheduler, () => null, () => null, () => null);
        }

        public ModelWeights Weights { get; }
        public BitNetSharp.Generation.Scheduler.ContinuousBatchScheduler Scheduler { get; }
        public HealthMeters Meters { get; }

        public void Dispose()
        {
            Meters.Dispose();
            Scheduler.Dispose();
            Weights.Dispose();
        }
    }

    /// <summary>One sampled one-token step in which every layer takes the stream from <paramref name="before"/> to <paramref name="after"/>.</summary>
    private static void PublishEveryLayer(ModelHealthCollector health, int layers, float[] before, float[] after)
    {
        health.BeginForward(1);
        for (int l = 0; l < layers; l++)
        {
            health.LayerStart(l, 0, before);
            health.LayerEnd(l, 0, after);
        }
        health.EndForward();
        health.Publish();
    }

    /// <summary>
    /// A scrape reads every health gauge from one sampled step (HealthMeters.OneSnapshot, which the server's exporter runs
    /// its collection in): each gauge took the collector's lock on its own, so a step published mid-scrape paired one
    /// family's values with another step's.
    /// </summary>
    [Fact]
    public void AScrapeReadsOneSampledStep()
    {
        using var m = new MeteredScheduler();
        var (meters, health, c) = (m.Meters, m.Scheduler.Health, m.Weights.Config);
        var before = Enumerable.Repeat(1f, c.Dim).ToArray();
        void Publish(float change) => PublishEveryLayer(health, c.Layers, before, Enumerable.Repeat(1f + change, c.Dim).ToArray());
        double Read(string name)
        {
            var list = new List<System.Diagnostics.Metrics.Measurement<double>>();
            meters.Signals.Single(x => x.PrometheusName == name).Read(list);
            return list.Count == 0 ? double.NaN : list[^1].Value;
        }
        Publish(0.5f);
        double samples = double.NaN, change = double.NaN;
        meters.OneSnapshot(() =>
        {
            samples = Read("bitnet_health_samples_total");
            Publish(20f); // a step published between two families' reads
            change = Read("bitnet_health_residual_relative_change_ratio");
        });
        Assert.Equal(health.Samples - 1, samples);
        Assert.Equal(0.5, change, 1e-4);
        Assert.Equal(20, Read("bitnet_health_residual_relative_change_ratio"), 1e-3); // outside a scrape: the latest step
    }

    /// <summary>
    /// The alert engine's signals are one sample's: the samples counter (which gates the sampled rules' <c>for</c>) was
    /// read after the gauges, so a step published in between paired the new count with the old values and one bad
    /// sample counted twice. Here each published sample k changes layer 1 by k/1000, and every collection must read
    /// the change of the sample it counts.
    /// </summary>
    [Fact]
    public async Task SignalsAreReadFromOneSample()
    {
        using var m = new MeteredScheduler();
        var (meters, health, c) = (m.Meters, m.Scheduler.Health, m.Weights.Config);
        var before = Enumerable.Repeat(1f, c.Dim).ToArray();
        using var stop = new CancellationTokenSource();
        var publisher = Task.Run(() =>
        {
            var after = new float[c.Dim];
            for (long k = health.Samples + 1; !stop.IsCancellationRequested; k++)
            {
                Array.Fill(after, 1f + k / 1000f);
                PublishEveryLayer(health, c.Layers, before, after);
            }
        }, TestContext.Current.CancellationToken);
        try
        {
            var set = new BitNetSharp.Monitoring.Alerts.SignalSet();
            var layer1 = new Dictionary<string, string> { ["layer"] = "1" };
            int seen = 0;
            var clock = System.Diagnostics.Stopwatch.StartNew();
            for (int i = 0; (i < 3000 || seen < 100) && clock.Elapsed < TimeSpan.FromSeconds(60); i++)
            {
                set.Clear();
                meters.CollectSignals(set);
                double samples = set.Reduce("bitnet_health_samples_total", "max", null) ?? 0;
                if (samples == 0)
                {
                    Thread.Yield(); // the publisher has not published yet
                    continue;
                }
                seen++;
                double change = set.Reduce("bitnet_health_residual_relative_change_ratio", "max", layer1)!.Value;
                Assert.Equal(samples / 1000, change, samples / 1000 * 1e-4 + 1e-5);
            }
            Assert.True(seen >= 100, $"only {seen} collections saw a published sample");
        }
        finally
        {
            stop.Cancel();
            await publisher;
        }
    }

    /// <summary>
    /// A sampled step without logits rows (a prompt chunk only) keeps the last logits gauges in /metrics (they vanished,
    /// which reset a Prometheus alert's pending time and resolved a firing one), but the in-process alert engine sees no
    /// value there, so it does not count the old one again as a new sample.
    /// </summary>
    [Fact]
    public void AStepWithoutLogitsKeepsTheLastLogitsGaugesForPrometheusOnly()
    {
        using var m = new MeteredScheduler();
        var (meters, health) = (m.Meters, m.Scheduler.Health);
        var range = meters.Signals.Single(x => x.PrometheusName == "bitnet_health_logits_range");
        var stats = LogitStats.Compute([0.5f, 0.25f, 0.75f]);
        double? Scraped()
        {
            var list = new List<System.Diagnostics.Metrics.Measurement<double>>();
            range.Read(list);
            return list.Count == 0 ? null : list[0].Value;
        }
        double? Collected()
        {
            var set = new BitNetSharp.Monitoring.Alerts.SignalSet();
            meters.CollectSignals(set);
            return set.Reduce("bitnet_health_logits_range", "min", null);
        }
        health.BeginForward(1);
        health.EndForward();
        health.AddLogits(stats);
        health.Publish();
        Assert.Equal(stats.Range, Scraped()!.Value, 1e-6);
        Assert.Equal(stats.Range, Collected()!.Value, 1e-6);
        health.BeginForward(1); // a prompt chunk: no logits rows
        health.EndForward();
        health.Publish();
        Assert.Equal(0, health.Latest.LogitRows);
        Assert.Equal(stats.Range, Scraped()!.Value, 1e-6);
        Assert.Null(Collected());

        // A step with logits that no reader saw, then a prompt chunk: /metrics shows that step's value (it showed the
        // value the last reader happened to see, and on a fresh server no series at all).
        var flat = LogitStats.Compute([0.5f, 0.5f, 0.5f + 1e-3f]);
        health.BeginForward(1);
        health.EndForward();
        health.AddLogits(flat);
        health.Publish();
        health.BeginForward(1);
        health.EndForward();
        health.Publish();
        Assert.Equal(flat.Range, Scraped()!.Value, 1e-6);
        Assert.Null(Collected());

        // bitnet_health_logit_samples_total grows only with steps that had logits: what Prometheus's logits rule counts
        // as a new sample (bitnet_health_samples_total counted the carried value again, a prompt-only prefill fired it).
        var logitSamples = meters.Signals.Single(x => x.PrometheusName == "bitnet_health_logit_samples_total");
        var read = new List<System.Diagnostics.Metrics.Measurement<double>>();
        logitSamples.Read(read);
        Assert.Equal(2, read.Single().Value);
        Assert.Equal(4, health.Samples);
    }

    /// <summary>
    /// Saturation and underflow carry the input's activation bits as a "bits" label, and the default rules read 8-bit
    /// inputs only: a healthy 4-bit input (a calibrated or a4.8-style model) has about half its codes at 0, and the
    /// 8-bit thresholds fired BitNetActivationUnderflow on it for good.
    /// </summary>
    [Fact]
    public void LowBitInputsCarryTheirBitsAndTheDefaultRulesLeaveThemOut()
    {
        using var m = new MeteredScheduler();
        var (meters, health) = (m.Meters, m.Scheduler.Health);
        int dim = m.Weights.Config.Dim;
        var x = Enumerable.Range(0, dim).Select(i => (float)Math.Sin(i * 0.7)).ToArray();
        var codes = new sbyte[dim]; // all zero: 100 % underflow
        var rules = BitNetSharp.Monitoring.Alerts.AlertRules.Default.Where(r => r.Name == "BitNetActivationUnderflow").Select(r => r with { For = 1 }).ToList();
        foreach (var (maxCode, fires) in new[] { (7, false), (127, true) })
        {
            health.BeginForward(1);
            health.Quantized(0, BitLinearInput.Qkv, 0, x, codes, maxCode);
            health.EndForward();
            health.Publish();
            Assert.Equal(maxCode == 7 ? 4 : 8, health.Latest.Bits[(int)BitLinearInput.Qkv]);
            var series = new List<System.Diagnostics.Metrics.Measurement<double>>();
            meters.Signals.Single(s => s.PrometheusName == "bitnet_health_activation_underflow_ratio").Read(series);
            var qkv = series.Single(s => s.Tags.ToArray().Contains(new("layer", "0")) && s.Tags.ToArray().Contains(new("input", "qkv")));
            Assert.Contains(new KeyValuePair<string, object?>("bits", maxCode == 7 ? "4" : "8"), qkv.Tags.ToArray());
            Assert.Equal(1.0, qkv.Value);
            using var alerts = new BitNetSharp.Monitoring.Alerts.AlertEngine(rules, meters.CollectSignals);
            alerts.Evaluate();
            Assert.Equal(fires, alerts.Firing.Count == 1);
        }
    }

    /// <summary>
    /// A BitLinear input holding NaN or ∞ reads NaN as its crest factor, saturation and underflow, which trips the rules:
    /// crest read a healthy 0, and saturation 0 and underflow 1 (the codes NaN quantized to, all 0), so a saturation
    /// alert read healthy and the underflow one fired with the wrong diagnosis.
    /// </summary>
    [Theory]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    public void NonFiniteInputGivesNaNStatistics(float bad)
    {
        using var w = TransformerTests.TinyModel();
        using var health = new ModelHealthCollector(w.Config, 1) { SampleEvery = 1 };
        var x = Enumerable.Repeat(1f, w.Config.Dim).ToArray();
        x[5] = bad;
        var codes = new sbyte[x.Length];
        health.BeginForward(1);
        health.Quantized(0, BitLinearInput.Qkv, 0, x, codes);
        health.EndForward();
        health.Publish();
        Assert.True(float.IsNaN(health.Latest.CrestFactor[(int)BitLinearInput.Qkv]));
        Assert.True(float.IsNaN(health.Latest.Saturation[(int)BitLinearInput.Qkv]));
        Assert.True(float.IsNaN(health.Latest.Underflow[(int)BitLinearInput.Qkv]));
    }

    /// <summary>Adds a random F32 "output.weight" so the model's head is not its embedding.</summary>
    internal static void AddOutputHead(BitNetSharp.Formats.Gguf.GgufWriter writer, int dim, int vocab)
    {
        var rng = new Random(99);
        var values = new float[dim * vocab];
        for (int i = 0; i < values.Length; i++) values[i] = (float)(rng.NextDouble() * 2 - 1);
        writer.AddTensor("output.weight", BitNetSharp.Formats.Gguf.GgmlType.F32, [dim, vocab], System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()).ToArray());
    }
}
