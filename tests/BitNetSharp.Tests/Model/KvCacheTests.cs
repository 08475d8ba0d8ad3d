using BitNetSharp.Kernels;
using BitNetSharp.Kernels.FloatOps;
using BitNetSharp.Model;
using BitNetSharp.Quantization;

namespace BitNetSharp.Tests.Model;

public unsafe class KvCacheTests
{
    /// <summary>
    /// A cache past what the machine can give is an InsufficientMemoryException naming the size and --ctx (the CLI's
    /// one-line error): a model declaring 16M positions, run without --ctx, ended generate and chat with an
    /// OutOfMemoryException stack trace (README sweep; here a cache past any 48-bit address space).
    /// </summary>
    [Fact]
    public void ACacheTooLargeForTheMachineNamesTheContextOption()
    {
        var e = Assert.Throws<InsufficientMemoryException>(() => new KvCache(2000, 64, 128, 1 << 24, KvCacheType.F32));
        Assert.Contains("16,777,216 positions", e.Message);
        Assert.Contains("--ctx", e.Message);
    }

    /// <summary>
    /// Caches are measured against the memory available before they are allocated, all of a server's sequences
    /// together: an int8 cache of 16M positions (12.9 GB per buffer, each under the machine's 23 GB) was allocated
    /// without a word, four of them for a server (109.5 GB), which would be killed once its contexts filled, while the same
    /// context in f16 was refused. The message names the sizes, the type as --kv-type reads it, and what to change.
    /// </summary>
    [Fact]
    public void CachesPastTheAvailableMemoryAreRefusedBeforeTheyAreAllocated()
    {
        long one = KvCache.BytesFor(6, 2, 64, 1 << 24, KvCacheType.Int8);
        KvCache.EnsureFits(6, 2, 64, 1 << 24, KvCacheType.Int8, 4, 4 * one); // fits exactly
        KvCache.EnsureFits(6, 2, 64, 1 << 24, KvCacheType.Int8, 4, available: null); // unknown: not refused
        var e = Assert.Throws<InsufficientMemoryException>(() => KvCache.EnsureFits(6, 2, 64, 1 << 24, KvCacheType.Int8, 4, 23_000_000_000));
        Assert.Contains("16,777,216 positions (6 layers, 2 KV heads × 64, int8) needs 27.4 GB, 109.5 GB for 4 sequences", e.Message);
        Assert.Contains("(23.0 GB available)", e.Message);
        Assert.Contains("--ctx", e.Message);
        Assert.Contains("--max-seqs", e.Message);
        var single = Assert.Throws<InsufficientMemoryException>(() => KvCache.EnsureFits(6, 2, 64, 1 << 24, KvCacheType.Fp8E4M3, 1, one - 1));
        Assert.Contains("fp8e4m3) needs 27.4 GB, more than", single.Message);
        Assert.DoesNotContain("--max-seqs", single.Message);
    }

    /// <summary>Every output names a KV type as --kv-type reads it back (the telemetry context and profile wrote
    /// "Int8" and "Fp8E4M3", /v1/models "int8", messages "F16").</summary>
    [Fact]
    public void KvTypeNamesReadBack()
    {
        Assert.Equal(["f32", "f16", "int8", "fp8e4m3"], Enum.GetValues<KvCacheType>().Select(t => t.Name()));
        foreach (var t in Enum.GetValues<KvCacheType>())
            Assert.Equal(t, BitNetSharp.Cli.Commands.ModelOptions.ParseKvType(t.Name()));
    }

    public static TheoryData<KvCacheType> Types() => new(Enum.GetValues<KvCacheType>());

    private static float[] Row(Random rng, int n, float scale = 3f) =>
        Enumerable.Range(0, n).Select(_ => (float)((rng.NextDouble() + rng.NextDouble() + rng.NextDouble() - 1.5) * scale)).ToArray();

    /// <summary>Fills positions [0, count) of every layer with random K/V; returns them [layer][position].</summary>
    private static (float[][][] K, float[][][] V) Fill(KvCache cache, int count, int seed)
    {
        var rng = new Random(seed);
        var k = new float[cache.Layers][][];
        var v = new float[cache.Layers][][];
        for (int l = 0; l < cache.Layers; l++)
        {
            k[l] = new float[count][];
            v[l] = new float[count][];
            for (int p = 0; p < count; p++)
            {
                k[l][p] = Row(rng, cache.KvDim);
                v[l][p] = Row(rng, cache.KvDim);
                cache.Write(l, p, k[l][p], v[l][p]);
            }
        }
        return (k, v);
    }

    [Theory, MemberData(nameof(Types))]
    public void RoundTripsWithinTheTypesError(KvCacheType type)
    {
        foreach (int headDim in new[] { 7, 64, 100, 128 })
        {
            using var cache = new KvCache(2, 3, headDim, 9, type);
            var (keys, values) = Fill(cache, 9, headDim);
            var k = new float[cache.KvDim];
            var v = new float[cache.KvDim];
            for (int l = 0; l < 2; l++)
            for (int p = 0; p < 9; p++)
            {
                cache.Read(l, p, k, v);
                AssertWithinError(type, keys[l][p], k, headDim);
                AssertWithinError(type, values[l][p], v, headDim);
            }
        }
    }

    private static void AssertWithinError(KvCacheType type, float[] original, float[] stored, int headDim)
    {
        for (int h = 0; h < original.Length / headDim; h++)
        {
            var x = original.AsSpan(h * headDim, headDim);
            var y = stored.AsSpan(h * headDim, headDim);
            float max = 0f;
            foreach (float e in x) max = MathF.Max(max, MathF.Abs(e));
            for (int i = 0; i < headDim; i++)
            {
                float a = MathF.Abs(x[i]), err = MathF.Abs(x[i] - y[i]);
                bool ok = type switch
                {
                    KvCacheType.F32 => err == 0f,
                    KvCacheType.F16 => err <= a * MathF.Pow(2, -11) || (a < 6.2e-5f && err <= MathF.Pow(2, -25)),
                    KvCacheType.Int8 => err <= max / 127f / 2f * (1 + 1e-5f),
                    // Normal after scaling (|x|·448/max ≥ 2^−6): relative 2^−4; below that, subnormal spacing.
                    _ => a * 448f / max >= 0.015625f ? err <= a * 0.0625f * (1 + 1e-5f) : err <= max / 448f * MathF.Pow(2, -10) * 1.0001f,
                };
                Assert.True(ok, $"{type} head {h} element {i}: {x[i]:R} stored as {y[i]:R} (max {max})");
            }
        }
    }

    [Theory, MemberData(nameof(Types))]
    public void ScoresAndAccumulateVMatchNaiveFloat(KvCacheType type)
    {
        var rng = new Random(11);
        foreach (int headDim in new[] { 7, 31, 64, 96, 100, 128 })
        {
            const int layers = 2, kvHeads = 3, positions = 37; // two full blocks of 16 scores and a partial one
            using var cache = new KvCache(layers, kvHeads, headDim, 40, type);
            Fill(cache, positions, headDim + 1);
            var k = new float[cache.KvDim];
            var v = new float[cache.KvDim];
            for (int l = 0; l < layers; l++)
            for (int h = 0; h < kvHeads; h++)
            {
                var q = Row(rng, headDim);
                var weights = Enumerable.Range(0, positions).Select(_ => (float)rng.NextDouble()).ToArray();
                weights[3] = 0f;
                float scale = 1f / MathF.Sqrt(headDim);
                var expectedScores = new float[positions];
                var expectedOut = new float[headDim];
                // Int8 rows are read in integers (Int8Attention): q is rounded to int16 steps of max|q|/32767 and each
                // weight·rowScale to steps of the block's largest/32767. The documented bounds on what that adds:
                var scoreSlack = new float[positions];
                var outSlack = new float[headDim];
                float qStep = q.Max(MathF.Abs) / 32767f, uStep = 0f;
                for (int p = 0; p < positions; p++)
                {
                    cache.Read(l, p, k, v);
                    uStep = MathF.Max(uStep, weights[p] * RowMax(v, h * headDim, headDim) / 127f / 32767f);
                }
                for (int p = 0; p < positions; p++)
                {
                    cache.Read(l, p, k, v);
                    double dot = 0;
                    for (int d = 0; d < headDim; d++) dot += (double)q[d] * k[h * headDim + d];
                    expectedScores[p] = (float)(dot * scale);
                    for (int d = 0; d < headDim; d++) expectedOut[d] += weights[p] * v[h * headDim + d];
                    if (type != KvCacheType.Int8) continue;
                    for (int d = 0; d < headDim; d++) scoreSlack[p] += qStep / 2 * MathF.Abs(k[h * headDim + d]) * scale;
                    float vScale = RowMax(v, h * headDim, headDim) / 127f;
                    if (vScale > 0)
                        for (int d = 0; d < headDim; d++) outSlack[d] += uStep / 2 * MathF.Abs(v[h * headDim + d]) / vScale;
                }
                var scores = new float[positions + 2];
                cache.Scores(l, h, q, scores, positions, scale);
                var output = new float[headDim];
                cache.AccumulateV(l, h, weights, output, positions);
                for (int p = 0; p < positions; p++)
                    Assert.True(MathF.Abs(scores[p] - expectedScores[p]) <= scoreSlack[p] * 1.001f + 1e-4f * (1 + MathF.Abs(expectedScores[p])),
                        $"{type} hd={headDim} layer {l} head {h} pos {p}: {scores[p]} vs {expectedScores[p]}");
                for (int d = 0; d < headDim; d++)
                    Assert.True(MathF.Abs(output[d] - expectedOut[d]) <= outSlack[d] * 1.001f + 1e-4f * (1 + MathF.Abs(expectedOut[d])),
                        $"{type} hd={headDim} layer {l} head {h} dim {d}: {output[d]} vs {expectedOut[d]}");
            }
        }
    }

    private static float RowMax(float[] x, int start, int count)
    {
        float max = 0f;
        for (int i = start; i < start + count; i++) max = MathF.Max(max, MathF.Abs(x[i]));
        return max;
    }

    public static TheoryData<KvCacheType, string> TypesAndWidths()
    {
        var data = new TheoryData<KvCacheType, string>();
        foreach (var t in Enum.GetValues<KvCacheType>())
        foreach (var w in new[] { "widest", "256", "scalar" })
            data.Add(t, w);
        return data;
    }

    /// <summary>Every vector width of the row kernels against the scalar loop, on the same stored rows.</summary>
    [Theory, MemberData(nameof(TypesAndWidths))]
    public void EveryWidthMatchesScalar(KvCacheType type, string width)
    {
        var rng = new Random(12);
        foreach (int headDim in new[] { 1, 15, 16, 17, 33, 100, 128, 130 })
        {
            using var cache = new KvCache(1, 2, headDim, 6, type);
            Fill(cache, 6, headDim);
            var q = Row(rng, headDim);
            var w = Enumerable.Range(0, 6).Select(_ => (float)rng.NextDouble()).ToArray();
            var expectedScores = new float[6];
            var expectedOut = new float[headDim];
            var scores = new float[6];
            var output = new float[headDim];
            Dispatch(cache, type, "scalar", q, expectedScores, w, expectedOut);
            Dispatch(cache, type, width, q, scores, w, output);
            if (type == KvCacheType.Int8)
            {
                // Integer sums, then the same float operations: every width gives the same bits.
                Assert.Equal(expectedScores, scores);
                Assert.Equal(expectedOut, output);
            }
            for (int p = 0; p < 6; p++) Assert.Equal(expectedScores[p], scores[p], 1e-4f * (1 + MathF.Abs(expectedScores[p])));
            for (int d = 0; d < headDim; d++) Assert.Equal(expectedOut[d], output[d], 1e-4f * (1 + MathF.Abs(expectedOut[d])));
        }
    }

    private static void Dispatch(KvCache c, KvCacheType type, string width, float[] q, float[] scores, float[] w, float[] output)
    {
        switch (type, width)
        {
            case (KvCacheType.F32, "widest"): c.ScoresCore<F32Row, WidestVector>(0, 1, q, scores, 0, 6, 1f); c.AccumulateCore<F32Row, WidestVector>(0, 1, w, output, 0, 6); break;
            case (KvCacheType.F32, "256"): c.ScoresCore<F32Row, Vector256Width>(0, 1, q, scores, 0, 6, 1f); c.AccumulateCore<F32Row, Vector256Width>(0, 1, w, output, 0, 6); break;
            case (KvCacheType.F32, _): c.ScoresCore<F32Row, ScalarWidth>(0, 1, q, scores, 0, 6, 1f); c.AccumulateCore<F32Row, ScalarWidth>(0, 1, w, output, 0, 6); break;
            case (KvCacheType.F16, "widest"): c.ScoresCore<F16Row, WidestVector>(0, 1, q, scores, 0, 6, 1f); c.AccumulateCore<F16Row, WidestVector>(0, 1, w, output, 0, 6); break;
            case (KvCacheType.F16, "256"): c.ScoresCore<F16Row, Vector256Width>(0, 1, q, scores, 0, 6, 1f); c.AccumulateCore<F16Row, Vector256Width>(0, 1, w, output, 0, 6); break;
            case (KvCacheType.F16, _): c.ScoresCore<F16Row, ScalarWidth>(0, 1, q, scores, 0, 6, 1f); c.AccumulateCore<F16Row, ScalarWidth>(0, 1, w, output, 0, 6); break;
            case (KvCacheType.Int8, "widest"): c.ScoresCore<Int8Row, WidestVector>(0, 1, q, scores, 0, 6, 1f); c.AccumulateCore<Int8Row, WidestVector>(0, 1, w, output, 0, 6); break;
            case (KvCacheType.Int8, "256"): c.ScoresCore<Int8Row, Vector256Width>(0, 1, q, scores, 0, 6, 1f); c.AccumulateCore<Int8Row, Vector256Width>(0, 1, w, output, 0, 6); break;
            case (KvCacheType.Int8, _): c.ScoresCore<Int8Row, ScalarWidth>(0, 1, q, scores, 0, 6, 1f); c.AccumulateCore<Int8Row, ScalarWidth>(0, 1, w, output, 0, 6); break;
            case (_, "widest"): c.ScoresCore<Fp8Row, WidestVector>(0, 1, q, scores, 0, 6, 1f); c.AccumulateCore<Fp8Row, WidestVector>(0, 1, w, output, 0, 6); break;
            case (_, "256"): c.ScoresCore<Fp8Row, Vector256Width>(0, 1, q, scores, 0, 6, 1f); c.AccumulateCore<Fp8Row, Vector256Width>(0, 1, w, output, 0, 6); break;
            default: c.ScoresCore<Fp8Row, ScalarWidth>(0, 1, q, scores, 0, 6, 1f); c.AccumulateCore<Fp8Row, ScalarWidth>(0, 1, w, output, 0, 6); break;
        }
    }

    /// <summary>
    /// The fast F16 path (rows known finite) gives exactly the general path's scores and outputs, at every width, on
    /// rows that include subnormal and extreme finite halves; a cache holding ±inf switches to the general path
    /// (an inf key then makes that score infinite instead of a large finite number).
    /// </summary>
    [Fact]
    public void F16FinitePathEqualsTheGeneralPathAndInfinityFallsBack()
    {
        var rng = new Random(21);
        foreach (int headDim in new[] { 15, 16, 33, 100, 128 })
        {
            using var cache = new KvCache(1, 2, headDim, 6, KvCacheType.F16);
            for (int p = 0; p < 6; p++)
            {
                var k = Enumerable.Range(0, 2 * headDim).Select(i => i % 7 == 0 ? 3e-7f * (float)(rng.NextDouble() - 0.5) : i % 11 == 0 ? 60000f : (float)(rng.NextDouble() * 4 - 2)).ToArray();
                var v = Enumerable.Range(0, 2 * headDim).Select(i => i % 5 == 0 ? -1e-6f : (float)(rng.NextDouble() * 4 - 2)).ToArray();
                cache.Write(0, p, k, v);
            }
            var q = Row(rng, headDim);
            var w = Enumerable.Range(0, 6).Select(_ => (float)rng.NextDouble()).ToArray();
            var general = new float[6];
            var fast = new float[6];
            var generalOut = new float[headDim];
            var fastOut = new float[headDim];
            cache.ScoresCore<F16Row, WidestVector>(0, 1, q, general, 0, 6, 1f);
            cache.ScoresCore<F16FiniteRow, WidestVector>(0, 1, q, fast, 0, 6, 1f);
            Assert.Equal(general, fast);
            var viaApi = new float[6];
            cache.Scores(0, 1, q, viaApi, 6);
            Assert.Equal(general, viaApi);
            cache.AccumulateCore<F16Row, WidestVector>(0, 1, w, generalOut, 0, 6);
            cache.AccumulateCore<F16FiniteRow, WidestVector>(0, 1, w, fastOut, 0, 6);
            Assert.Equal(generalOut, fastOut);
            foreach (var width in new[] { "256", "scalar" })
            {
                var a = new float[6];
                var b = new float[6];
                if (width == "256") { cache.ScoresCore<F16Row, Vector256Width>(0, 1, q, a, 0, 6, 1f); cache.ScoresCore<F16FiniteRow, Vector256Width>(0, 1, q, b, 0, 6, 1f); }
                else { cache.ScoresCore<F16Row, ScalarWidth>(0, 1, q, a, 0, 6, 1f); cache.ScoresCore<F16FiniteRow, ScalarWidth>(0, 1, q, b, 0, 6, 1f); }
                Assert.Equal(a, b);
            }
        }

        using var inf = new KvCache(1, 1, 16, 2, KvCacheType.F16);
        var ones = Enumerable.Repeat(1f, 16).ToArray();
        inf.Write(0, 0, ones, ones);
        var key = (float[])ones.Clone();
        key[3] = 1e6f; // beyond fp16: stored as +inf
        inf.Write(0, 1, key, ones);
        var s = new float[2];
        inf.Scores(0, 0, ones, s, 2);
        Assert.Equal(16f, s[0]);
        Assert.True(float.IsPositiveInfinity(s[1]), $"score {s[1]}");
        inf.Clear();
        inf.Write(0, 0, ones, ones);
        inf.Scores(0, 0, ones, s, 1);
        Assert.Equal(16f, s[0]);
    }

    /// <summary>
    /// The finite F16 lane kernels move the widening's × 2^112 onto the query or the weight (<see cref="ScaledHalfLanes"/>).
    /// Scores and outputs must stay those of the general F16 path bit for bit: keys with subnormal and near-65504 halves,
    /// queries and weights just under the 2^16 limit (scaled) and at it (not scaled), and a NaN query.
    /// </summary>
    [Fact]
    public void F16ScaledLanesEqualTheGeneralPathAtTheLimits()
    {
        Assert.Equal(ScaledHalfLanes.Up, MathF.ScaleB(1f, 112));
        var rng = new Random(47);
        foreach (int headDim in new[] { 64, ScaledHalfLanes.MaxHeadDim + 16 }) // the second is past the scaled path's limit
            ScaledLanesCase(rng, headDim);
    }

    private static void ScaledLanesCase(Random rng, int headDim)
    {
        const int positions = 37, stride = 40;
        using var cache = new KvCache(1, 1, headDim, positions, KvCacheType.F16);
        for (int p = 0; p < positions; p++)
        {
            var k = Enumerable.Range(0, headDim).Select(i => i % 7 == 0 ? 2e-7f * (float)(rng.NextDouble() - 0.5) : i % 13 == 0 ? -65000f : (float)(rng.NextDouble() * 4 - 2)).ToArray();
            var v = Enumerable.Range(0, headDim).Select(i => i % 5 == 0 ? 3e-8f * (float)(rng.NextDouble() - 0.5) : i % 17 == 0 ? 60000f : (float)(rng.NextDouble() * 4 - 2)).ToArray();
            cache.Write(0, p, k, v);
        }
        float under = BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(65536f) - 1);
        foreach (float big in new[] { 1f, under, 65536f, float.NaN })
        {
            var q = Enumerable.Range(0, 4 * headDim).Select(i => i == 3 * headDim + 5 ? big : i % 9 == 0 ? 1e-30f : (float)(rng.NextDouble() * 2 - 1)).ToArray();
            var grouped = new float[4 * stride];
            cache.ScoresGroup(0, 0, q, 4, grouped, stride, positions, 0.125f);
            for (int g = 0; g < 4; g++)
            {
                var general = new float[positions];
                var single = new float[positions];
                cache.ScoresCore<F16Row, WidestVector>(0, 0, q.AsSpan(g * headDim, headDim), general, 0, positions, 0.125f);
                cache.Scores(0, 0, q.AsSpan(g * headDim, headDim), single, positions, 0.125f);
                Assert.Equal(general, single);
                Assert.Equal(general, grouped.AsSpan(g * stride, positions).ToArray());
            }

            var weights = new float[4 * stride];
            for (int i = 0; i < weights.Length; i++) weights[i] = i % 11 == 0 ? 1e-40f : (float)rng.NextDouble();
            weights[2 * stride + 7] = float.IsNaN(big) ? 0.5f : big; // one weight at the same magnitudes (a NaN weight would poison both sides alike)
            var output = Enumerable.Range(0, 4 * headDim).Select(i => (i % 5) * 0.25f - 0.5f).ToArray();
            var expected = (float[])output.Clone();
            cache.AccumulateVGroup(0, 0, weights, 4, stride, output, positions);
            for (int g = 0; g < 4; g++)
                cache.AccumulateCore<F16Row, WidestVector>(0, 0, weights.AsSpan(g * stride, positions), expected.AsSpan(g * headDim, headDim), 0, positions);
            Assert.Equal(expected, output);
        }
    }

    [Fact]
    public void ScaledHalfWideningIsTheHalfTimesTwoToTheMinus112OnEveryFiniteCode()
    {
        Assert.SkipUnless(System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated, "the scaled widening is the 512-bit lane path");
        var codes = new short[65536];
        for (int i = 0; i < codes.Length; i++) codes[i] = (short)i;
        fixed (short* c = codes)
            for (int i = 0; i < codes.Length; i += 16)
            {
                var wide = ScaledHalfLanes.Widen16((byte*)c, i);
                for (int j = 0; j < 16; j++)
                {
                    float half = HalfConversions.HalfToFloat((ushort)(i + j));
                    if (!float.IsFinite(half)) continue;
                    Assert.Equal((double)half, (double)wide[j] * Math.ScaleB(1.0, 112));
                }
            }
    }

    [Fact]
    public void ScaledFp8WideningIsTheCodeTimesTwoToTheMinus120OnEveryCodeACacheHolds()
    {
        Assert.SkipUnless(System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated, "the scaled widening is the 512-bit lane path");
        Assert.Equal(ScaledFp8Lanes.Up, MathF.ScaleB(1f, 120));
        var codes = new byte[256];
        for (int i = 0; i < codes.Length; i++) codes[i] = (byte)i;
        fixed (byte* c = codes)
            for (int i = 0; i < codes.Length; i += 16)
            {
                var wide = ScaledFp8Lanes.Widen16(c, i);
                for (int j = 0; j < 16; j++)
                {
                    if ((i + j & 0x7F) == 0x7F) continue; // the NaN codes, which Encode never writes
                    Assert.Equal((double)Fp8E4M3.ToFloat((byte)(i + j)), (double)wide[j] * Math.ScaleB(1.0, 120));
                }
            }
    }

    /// <summary>
    /// The FP8 group kernels move the widening's × 2^120 onto the query or the block's weights (<see cref="ScaledFp8Lanes"/>).
    /// Scores and outputs must stay those of the general FP8 path bit for bit: rows with subnormal codes and codes at
    /// 448, queries and weights × row scales just under the 2^8 limit (scaled) and at it (not scaled, for that block
    /// only), a NaN query, and a head past the scaled copies' size.
    /// </summary>
    [Fact]
    public void Fp8ScaledLanesEqualTheGeneralPathAtTheLimits()
    {
        var rng = new Random(53);
        foreach (int headDim in new[] { 64, 128, ScaledHalfLanes.MaxHeadDim + 16 })
        {
            const int positions = 150, stride = 160;
            using var cache = new KvCache(1, 1, headDim, positions, KvCacheType.Fp8E4M3);
            for (int p = 0; p < positions; p++)
            {
                // Each row's largest magnitude is 448, so its scale is 1 and a weight is its own product with the scale.
                var k = Enumerable.Range(0, headDim).Select(i => i == 0 ? 448f : i % 7 == 0 ? 0.003f * (float)(rng.NextDouble() - 0.5) : (float)(rng.NextDouble() * 200 - 100)).ToArray();
                var v = Enumerable.Range(0, headDim).Select(i => i == 1 ? -448f : i % 5 == 0 ? 0.002f * (float)(rng.NextDouble() - 0.5) : (float)(rng.NextDouble() * 200 - 100)).ToArray();
                cache.Write(0, p, k, v);
            }
            float under = BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(256f) - 1);
            foreach (float big in new[] { 1f, under, 256f, float.NaN })
            {
                var q = Enumerable.Range(0, 4 * headDim).Select(i => i == 3 * headDim + 5 ? big : i % 9 == 0 ? 1e-30f : (float)(rng.NextDouble() * 2 - 1)).ToArray();
                var grouped = new float[4 * stride];
                cache.ScoresGroup(0, 0, q, 4, grouped, stride, positions, 0.125f);
                for (int g = 0; g < 4; g++)
                {
                    var general = new float[positions];
                    cache.ScoresCore<Fp8Row, WidestVector>(0, 0, q.AsSpan(g * headDim, headDim), general, 0, positions, 0.125f);
                    Assert.Equal(general, grouped.AsSpan(g * stride, positions).ToArray());
                }

                var weights = new float[4 * stride];
                for (int i = 0; i < weights.Length; i++) weights[i] = i % 11 == 0 ? 1e-40f : (float)rng.NextDouble();
                weights[2 * stride + 70] = float.IsNaN(big) ? 0.5f : big; // in the second block of 64 positions
                var output = Enumerable.Range(0, 4 * headDim).Select(i => (i % 5) * 0.25f - 0.5f).ToArray();
                var expected = (float[])output.Clone();
                cache.AccumulateVGroup(0, 0, weights, 4, stride, output, positions);
                for (int g = 0; g < 4; g++)
                    cache.AccumulateCore<Fp8Row, WidestVector>(0, 0, weights.AsSpan(g * stride, positions), expected.AsSpan(g * headDim, headDim), 0, positions);
                Assert.Equal(expected, output);
            }
        }
    }

    /// <summary>
    /// GQA groups: ScoresGroup / AccumulateVGroup equal one Scores / AccumulateV call per query head, bit for bit, for
    /// every cache type and group size (a group of four on a finite F16 cache takes the shared-widening path), with
    /// zero weights (skipped per head) mixed in.
    /// </summary>
    [Theory]
    [InlineData(KvCacheType.F16, 4)]
    [InlineData(KvCacheType.F16, 2)]
    [InlineData(KvCacheType.F32, 4)]
    [InlineData(KvCacheType.Int8, 4)]
    [InlineData(KvCacheType.Int8, 2)]
    [InlineData(KvCacheType.Fp8E4M3, 3)]
    [InlineData(KvCacheType.Fp8E4M3, 4)]
    [InlineData(KvCacheType.F16, 3)] // padded to four (the bundled model's group)
    [InlineData(KvCacheType.F16, 6)] // four, then two head by head
    [InlineData(KvCacheType.F16, 8)] // two fours
    [InlineData(KvCacheType.Fp8E4M3, 2)]
    [InlineData(KvCacheType.Fp8E4M3, 7)] // four, then three padded
    [InlineData(KvCacheType.Int8, 8)]
    [InlineData(KvCacheType.Int8, 3)]
    [InlineData(KvCacheType.F32, 3)]
    public void GroupedAttentionEqualsPerHead(KvCacheType type, int group)
    {
        // 1/√128, the 2B4T score scale: not a power of two, so the order of the scale multiplications shows.
        const float Scale = 0.088388346f;
        var rng = new Random(31);
        foreach (var (headDim, positions) in new[] { (16, 9), (48, 37), (100, 9), (128, 37), (128, 16) })
        {
            int stride = positions + 3;
            using var cache = new KvCache(2, 2, headDim, 40, type);
            for (int p = 0; p < positions; p++)
                for (int l = 0; l < 2; l++)
                    cache.Write(l, p, Row(rng, 2 * headDim), Row(rng, 2 * headDim));
            var q = Row(rng, group * headDim);
            var grouped = new float[group * stride];
            cache.ScoresGroup(1, 1, q, group, grouped, stride, positions, Scale);
            var weights = new float[group * stride];
            for (int g = 0; g < group; g++)
            {
                var single = new float[positions];
                cache.Scores(1, 1, q.AsSpan(g * headDim, headDim), single, positions, Scale);
                Assert.Equal(single, grouped.AsSpan(g * stride, positions).ToArray());
                for (int p = 0; p < positions; p++) weights[g * stride + p] = (p + g) % 4 == 0 ? 0f : (float)rng.NextDouble();
            }
            var output = Enumerable.Range(0, group * headDim).Select(i => (i % 5) * 0.25f - 0.5f).ToArray();
            var expected = (float[])output.Clone();
            cache.AccumulateVGroup(1, 1, weights, group, stride, output, positions);
            for (int g = 0; g < group; g++)
                cache.AccumulateV(1, 1, weights.AsSpan(g * stride, positions), expected.AsSpan(g * headDim, headDim), positions);
            Assert.Equal(expected, output);
        }
    }

    /// <summary>
    /// A padded group (three heads through the four-head kernels) over more positions than one padded piece holds, from
    /// an offset: equal to per-head calls bit for bit, so the pieces continue the same sums (and the int8 weighted sum's
    /// blocks of 256 positions start where a per-head call starts them).
    /// </summary>
    [Theory]
    [InlineData(KvCacheType.F16)]
    [InlineData(KvCacheType.Fp8E4M3)]
    [InlineData(KvCacheType.Int8)]
    public void PaddedGroupsOverManyPositionsEqualPerHead(KvCacheType type)
    {
        const int headDim = 64, group = 3, positions = 1200, start = 37, count = 1150, stride = 1160;
        var rng = new Random(12);
        using var cache = new KvCache(1, 2, headDim, positions, type);
        for (int p = 0; p < positions; p++) cache.Write(0, p, Row(rng, 2 * headDim), Row(rng, 2 * headDim));
        var q = Row(rng, group * headDim, 0.5f);
        var grouped = new float[group * stride];
        cache.ScoresGroupRange(0, 1, q, group, grouped, stride, start, count, 0.125f);
        var weights = new float[group * stride];
        for (int i = 0; i < weights.Length; i++) weights[i] = (float)rng.NextDouble() * 1e-3f;
        var output = Row(rng, group * headDim, 0.5f);
        var expected = (float[])output.Clone();
        cache.AccumulateVGroupRange(0, 1, weights, group, stride, output, start, count);
        for (int g = 0; g < group; g++)
        {
            var single = new float[count];
            cache.ScoresRangeForTest(0, 1, q.AsSpan(g * headDim, headDim), single, start, count, 0.125f);
            Assert.Equal(single, grouped.AsSpan(g * stride, count).ToArray());
            cache.AccumulateVRangeForTest(0, 1, weights.AsSpan(g * stride, count), expected.AsSpan(g * headDim, headDim), start, count);
        }
        Assert.Equal(expected, output);
    }

    /// <summary>
    /// One head's weighted sum in registers (the 512-bit lane path of <see cref="AttentionKernels.Accumulate{TRow, TWidth}"/>
    /// for finite F16 and FP8 rows) equals the position-by-position axpy of the 256-bit path bit for bit, at head
    /// dimensions that take its 128-, 64- and 16-wide passes, with weights past the scaled widening's limit too.
    /// </summary>
    [Fact]
    public void OneHeadRegisterSumsEqualTheAxpyLoop()
    {
        Assert.SkipUnless(System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated, "the register sums are the 512-bit lane path");
        var rng = new Random(5);
        foreach (int headDim in new[] { 16, 48, 64, 112, 128, 256, 320 })
        {
            const int positions = 45;
            using var f16 = new KvCache(1, 1, headDim, positions, KvCacheType.F16);
            using var fp8 = new KvCache(1, 1, headDim, positions, KvCacheType.Fp8E4M3);
            for (int p = 0; p < positions; p++)
            {
                var k = Row(rng, headDim);
                var v = Row(rng, headDim);
                f16.Write(0, p, k, v);
                fp8.Write(0, p, k, v);
            }
            foreach (float big in new[] { 1f, 70000f })
            {
                var w = Enumerable.Range(0, positions).Select(i => i == 9 ? big : i % 7 == 0 ? 0f : (float)rng.NextDouble()).ToArray();
                var start = Row(rng, headDim, 0.5f);
                float[] Sum<TRow, TWidth>(KvCache c) where TRow : IKvRow where TWidth : struct, IVectorWidth
                {
                    var o = (float[])start.Clone();
                    c.AccumulateCore<TRow, TWidth>(0, 0, w, o, 0, positions);
                    return o;
                }
                Assert.Equal(Sum<F16FiniteRow, Vector256Width>(f16), Sum<F16FiniteRow, WidestVector>(f16));
                Assert.Equal(Sum<F16Row, WidestVector>(f16), Sum<F16FiniteRow, WidestVector>(f16));
                Assert.Equal(Sum<Fp8Row, Vector256Width>(fp8), Sum<Fp8Row, WidestVector>(fp8));
            }
        }
    }

    /// <summary>
    /// A range of positions scores and accumulates exactly as the same positions inside a whole-head call: each
    /// position's score does not depend on which others share its block of sixteen, for every type and group.
    /// </summary>
    [Theory]
    [InlineData(KvCacheType.F32, 4)]
    [InlineData(KvCacheType.F16, 4)]
    [InlineData(KvCacheType.F16, 1)]
    [InlineData(KvCacheType.Int8, 4)]
    [InlineData(KvCacheType.Int8, 3)]
    [InlineData(KvCacheType.Fp8E4M3, 4)]
    public void RangesEqualTheWholeHeadsSlices(KvCacheType type, int group)
    {
        var rng = new Random(8);
        const int headDim = 32, positions = 77, stride = 80;
        using var cache = new KvCache(1, 2, headDim, 96, type);
        for (int p = 0; p < positions; p++) cache.Write(0, p, Row(rng, 2 * headDim), Row(rng, 2 * headDim));
        var q = Row(rng, group * headDim);
        var whole = new float[group * stride];
        cache.ScoresGroup(0, 1, q, group, whole, stride, positions, 0.25f);
        foreach (var (start, count) in new[] { (0, 16), (5, 30), (61, 16), (70, 7), (3, 1) })
        {
            var part = new float[group * count];
            cache.ScoresGroupRange(0, 1, q, group, part, count, start, count, 0.25f);
            for (int g = 0; g < group; g++) Assert.Equal(whole.AsSpan(g * stride + start, count).ToArray(), part.AsSpan(g * count, count).ToArray());

            // Σ over the range with weights w equals the whole-head call with zeros outside the range.
            var w = new float[group * count];
            var padded = new float[group * stride];
            for (int g = 0; g < group; g++)
                for (int i = 0; i < count; i++) padded[g * stride + start + i] = w[g * count + i] = (float)rng.NextDouble();
            var a = new float[group * headDim];
            var b = new float[group * headDim];
            cache.AccumulateVGroupRange(0, 1, w, group, count, a, start, count);
            cache.AccumulateVGroup(0, 1, padded, group, stride, b, positions);
            Assert.Equal(b, a);
        }
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => cache.ScoresGroupRange(0, 1, q, group, new float[group * 8], 8, 72, 8));
        Assert.Contains("[72, 80)", e.Message);
    }

    /// <summary>The 512-bit lane widenings of the one-byte types give exactly the table values of every code a cache can hold.</summary>
    [Fact]
    public void ByteWideningsAreExactOnEveryStoredCode()
    {
        Assert.SkipUnless(System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated, "the lane widenings are the 512-bit path");
        var codes = new byte[256];
        for (int i = 0; i < 256; i++) codes[i] = (byte)i;
        fixed (byte* pc = codes)
            for (int i = 0; i < 256; i += 16)
            {
                var i8 = Int8Row.Widen16(pc, i);
                var f8 = Fp8Row.Widen16(pc, i);
                for (int j = 0; j < 16; j++)
                {
                    byte code = (byte)(i + j);
                    Assert.Equal((float)(sbyte)code, i8[j]);
                    if ((code & 0x7F) == Fp8E4M3.NaNCode) continue; // never stored (Fp8Row.Encode)
                    Assert.Equal(BitConverter.SingleToInt32Bits(Fp8E4M3.ToFloat(code)), BitConverter.SingleToInt32Bits(f8[j]));
                }
            }
    }

    /// <summary>The 256-bit fp8 widening (the dot and axpy loops without AVX-512) gives exactly the table value of every
    /// code a cache can hold.</summary>
    [Fact]
    public void Fp8WideningAt256BitsIsExactOnEveryStoredCode()
    {
        Assert.SkipUnless(System.Runtime.Intrinsics.X86.Avx2.IsSupported, "the 256-bit widening needs AVX2");
        var codes = new byte[256];
        for (int i = 0; i < 256; i++) codes[i] = (byte)i;
        fixed (byte* pc = codes)
            for (int i = 0; i < 256; i += 8)
            {
                var f8 = Fp8Row.Widen8(pc, i);
                for (int j = 0; j < 8; j++)
                {
                    byte code = (byte)(i + j);
                    if ((code & 0x7F) == Fp8E4M3.NaNCode) continue; // never stored (Fp8Row.Encode)
                    Assert.Equal(BitConverter.SingleToInt32Bits(Fp8E4M3.ToFloat(code)), BitConverter.SingleToInt32Bits(f8[j]));
                }
            }
    }

    /// <summary>A row whose largest value is so small that 448/max overflows still stores finite codes (no NaN from 0·∞).</summary>
    [Theory]
    [InlineData(KvCacheType.Int8)]
    [InlineData(KvCacheType.Fp8E4M3)]
    public void TinyRowsStoreFiniteCodes(KvCacheType type)
    {
        using var cache = new KvCache(1, 1, 16, 4, type);
        var x = new float[16];
        x[3] = 1e-40f; // subnormal: 448/x and 127/x overflow to +inf
        x[5] = -5e-41f;
        cache.Write(0, 0, x, x);
        var k = new float[16];
        var v = new float[16];
        cache.Read(0, 0, k, v);
        Assert.All(k, f => Assert.False(float.IsNaN(f)));
        Assert.Equal(0f, k[0]);
        Assert.True(k[3] > 0 && k[5] < 0, $"{k[3]} {k[5]}");
    }

    /// <summary>Sixteen vectors summed together follow, bit for bit, the documented tree for each (lanes k and k+8, then
    /// k+4, k+2, k+1), on values whose sum depends on the order.</summary>
    [Fact]
    public unsafe void TransposedLaneSumsFollowTheTree()
    {
        Assert.SkipUnless(System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated, "the transposed lane sums are the 512-bit attention path");
        var rng = new Random(5);
        var v = new System.Runtime.Intrinsics.Vector512<float>[16];
        for (int round = 0; round < 300; round++)
        {
            var values = new float[16 * 16];
            for (int i = 0; i < values.Length; i++) values[i] = (float)((rng.NextDouble() - 0.5) * Math.Pow(10, rng.Next(-3, 8)));
            for (int j = 0; j < 16; j++) v[j] = System.Runtime.Intrinsics.Vector512.Create(values.AsSpan(j * 16, 16));
            System.Runtime.Intrinsics.Vector512<float> sums;
            fixed (System.Runtime.Intrinsics.Vector512<float>* pv = v) sums = LaneSums.Sums16(pv);
            for (int j = 0; j < 16; j++)
            {
                var x = values.AsSpan(j * 16, 16);
                var a = new float[8];
                for (int k = 0; k < 8; k++) a[k] = x[k] + x[k + 8];
                var b = new float[4];
                for (int k = 0; k < 4; k++) b[k] = a[k] + a[k + 4];
                float tree = (b[0] + b[2]) + (b[1] + b[3]);
                Assert.Equal(BitConverter.SingleToInt32Bits(tree), BitConverter.SingleToInt32Bits(sums[j]));
            }
        }
    }

    [Fact]
    public void F16WideningIsExactOnEveryCode()
    {
        var codes = new uint[65536];
        for (int i = 0; i < codes.Length; i++) codes[i] = (uint)i;
        for (int i = 0; i < codes.Length; i += 16)
        {
            var wide = F16Row.Widen(System.Runtime.Intrinsics.Vector512.Create(codes.AsSpan(i, 16)));
            var lo = F16Row.Widen(System.Runtime.Intrinsics.Vector256.Create(codes.AsSpan(i, 8)));
            for (int j = 0; j < 16; j++)
            {
                float expected = HalfConversions.HalfToFloat((ushort)(i + j));
                if (float.IsNaN(expected))
                {
                    Assert.True(float.IsNaN(wide[j]));
                    continue;
                }
                Assert.Equal(BitConverter.SingleToInt32Bits(expected), BitConverter.SingleToInt32Bits(wide[j]));
                if (j < 8) Assert.Equal(BitConverter.SingleToInt32Bits(expected), BitConverter.SingleToInt32Bits(lo[j]));
            }
        }
    }

    [Fact]
    public void PositionBeyondCapacityNamesPositionAndCapacity()
    {
        using var cache = new KvCache(1, 1, 4, 3, KvCacheType.F16);
        var row = new float[4];
        for (int p = 0; p < 3; p++) cache.Write(0, p, row, row);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => cache.Write(0, 3, row, row));
        Assert.Equal("position", e.ParamName);
        Assert.Contains("Position 3", e.Message);
        Assert.Contains("capacity of 3 positions", e.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.Write(0, -1, row, row));
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.Write(1, 0, row, row));
        Assert.Throws<ArgumentException>(() => cache.Write(0, 0, new float[3], row));
    }

    [Fact]
    public void LengthTracksEveryLayer()
    {
        using var cache = new KvCache(2, 1, 4, 8, KvCacheType.F32);
        var row = new float[4];
        Assert.Equal(0, cache.Length);
        cache.Write(0, 0, row, row);
        cache.Write(0, 1, row, row);
        Assert.Equal(0, cache.Length); // layer 1 has nothing yet
        Assert.Equal(2, cache.LayerLength(0));
        var gap = Assert.Throws<ArgumentOutOfRangeException>(() => cache.Write(1, 1, row, row));
        Assert.Contains("gap", gap.Message);
        cache.Write(1, 0, row, row);
        cache.Write(1, 1, row, row);
        Assert.Equal(2, cache.Length);
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.Scores(0, 0, row, new float[3], 3));
        cache.Write(0, 1, [1, 2, 3, 4], row); // overwriting a position is allowed
        cache.Truncate(1);
        Assert.Equal(1, cache.Length);
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.Read(0, 1, row, row));
        cache.Write(0, 1, row, row);
        cache.Clear();
        Assert.Equal(0, cache.Length);
        Assert.Equal(0, cache.LayerLength(0));
        Assert.Equal(0L, cache.BytesInUse);
    }

    [Fact]
    public void ByteSizes()
    {
        // 2B4T at its full context: 30 layers × 5 kv heads × 128 × 4096 positions × (K + V).
        Assert.Equal(30L * 640 * 4096 * 2 * 2, KvCache.BytesFor(30, 5, 128, 4096, KvCacheType.F16));
        Assert.Equal(30L * 640 * 4096 * 2 * 4, KvCache.BytesFor(30, 5, 128, 4096, KvCacheType.F32));
        Assert.Equal(30L * 5 * 4096 * 2 * (128 + 4), KvCache.BytesFor(30, 5, 128, 4096, KvCacheType.Int8));
        foreach (var type in Enum.GetValues<KvCacheType>())
        {
            using var cache = new KvCache(3, 2, 10, 5, type);
            Assert.Equal(KvCache.BytesFor(3, 2, 10, 5, type), cache.ByteLength);
            Fill(cache, 2, 1);
            Assert.Equal(cache.ByteLength / 5 * 2, cache.BytesInUse);
        }
        // Int8 keys with a head of 32 are stored in 16-position blocks: a context of 17 allocates 32 key positions.
        // In use is what the written positions' rows take (whole key blocks), and all of it once full.
        using (var blocked = new KvCache(1, 1, 32, 17, KvCacheType.Int8))
        {
            var r = new float[32];
            r[0] = 1;
            blocked.Write(0, 0, r, r);
            Assert.Equal(16 * 32 + 32 + 2 * 4, blocked.BytesInUse);
            for (int p = 1; p < 17; p++) blocked.Write(0, p, r, r);
            Assert.Equal(blocked.ByteLength, blocked.BytesInUse);
        }
    }

    [Fact]
    public void Int8AndFp8HandleAllZeroRows()
    {
        foreach (var type in new[] { KvCacheType.Int8, KvCacheType.Fp8E4M3 })
        {
            using var cache = new KvCache(1, 1, 16, 2, type);
            cache.Write(0, 0, new float[16], new float[16]);
            var scores = new float[1];
            cache.Scores(0, 0, Enumerable.Repeat(1f, 16).ToArray(), scores, 1);
            Assert.Equal(0f, scores[0]);
            var k = new float[16];
            cache.Read(0, 0, k, k);
            Assert.All(k, x => Assert.Equal(0f, x));
        }
    }

    /// <summary>
    /// The 256-bit finite-F16 weighted sum of a GQA group with the sums in registers (what a CPU without AVX-512 runs)
    /// equals one 256-bit axpy per position and head, bit for bit: zero, subnormal and large weights, halves across the
    /// whole finite range, head dimensions 16 and 128, more positions than one block.
    /// </summary>
    [Fact]
    public unsafe void F16RegisterWeightedSumEqualsPerPositionAxpyAt256Bits()
    {
        Assert.SkipUnless(System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated, "needs 256-bit vectors");
        var rng = new Random(41);
        foreach (int n in new[] { 16, 128 })
        {
            const int positions = 150, stride = positions + 3; // blocks of 64 positions: two whole and a partial one
            var halves = new ushort[positions * n];
            for (int i = 0; i < halves.Length; i++)
            {
                ushort h;
                do h = (ushort)rng.Next(0, 65536); while ((h & 0x7C00) == 0x7C00); // finite halves only
                halves[i] = h;
            }
            var weights = new float[4 * stride];
            for (int i = 0; i < weights.Length; i++)
                weights[i] = (i % 11) switch { 0 => 0f, 1 => 1e-40f, 2 => 3e4f, _ => (float)rng.NextDouble() };
            var start = Enumerable.Range(0, 4 * n).Select(i => (float)Math.Cos(i)).ToArray();
            var expected = (float[])start.Clone();
            var actual = (float[])start.Clone();
            fixed (ushort* ph = halves)
            fixed (float* pw = weights, pe = expected, pa = actual)
            {
                for (int p = 0; p < positions; p++)
                    for (int g = 0; g < 4; g++)
                        F16FiniteRow.Axpy<Vector256Width>(pw[g * stride + p], (byte*)(ph + p * n), pe + g * n, n);
                F16FiniteRow.Accumulate4Registers((byte*)ph, 2 * n, n, pw, stride, pa, positions);
            }
            for (int i = 0; i < 4 * n; i++)
                Assert.True(expected[i].Equals(actual[i]), $"n {n}, head {i / n}, dimension {i % n}: {actual[i]} instead of {expected[i]}");
        }
    }
}
