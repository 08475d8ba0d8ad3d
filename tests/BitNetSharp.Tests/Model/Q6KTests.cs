using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using System.Text.Json;
using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Kernels;
using BitNetSharp.Model;
using BitNetSharp.Quantization;
using BitNetSharp.Threading;

namespace BitNetSharp.Tests.Model;

/// <summary>
/// Q6_K embeddings and output heads against gguf-py, llama.cpp's own Python package: tests/fixtures/q6k was made by
/// tools/reference/make_q6k_fixture.py (gguf-py 0.19.0, numpy 2.4.6) — 4 rows × 512 columns of Q6_K blocks (random
/// bytes with finite fp16 scales, and a row of edge blocks), gguf-py's dequantization of them, an activation vector
/// with numpy's float64 row dots, and the same rows as a Q6_K tensor in a GGUF written by gguf-py.
/// </summary>
public unsafe class Q6KTests
{
    /// <summary>The unit roundoff of float32.</summary>
    private const double U = 1.0 / (1 << 24);

    private sealed record Fixture(int Rows, int Cols, byte[] Blocks, float[] Dequantized, float[] X, double[] Dots);

    private static string FixturePath(string file) => RepositoryFiles.Path(Path.Combine("tests", "fixtures", "q6k", file));

    private static Fixture Read()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(FixturePath("q6k_blocks.json")));
        var r = doc.RootElement;
        float[] Floats(string name) => MemoryMarshal.Cast<byte, float>(Convert.FromBase64String(r.GetProperty(name).GetString()!)).ToArray();
        return new Fixture(
            r.GetProperty("rows").GetInt32(),
            r.GetProperty("cols").GetInt32(),
            Convert.FromBase64String(r.GetProperty("blocks_base64").GetString()!),
            Floats("dequantized_f32le_base64"),
            Floats("x_f32le_base64"),
            r.GetProperty("dot_f64").EnumerateArray().Select(e => e.GetDouble()).ToArray());
    }

    /// <summary>
    /// Bit for bit, not within an ulp: ggml, gguf-py and <see cref="Q6K.DequantizeBlock"/> all compute
    /// (d · scale) · (q − 32) in float32 in that order from the same fp16 d (widened exactly), so every value is the
    /// same correctly rounded product. Edge blocks included: d = 65504 with scale −128 and q = 63, and the
    /// smallest subnormal d.
    /// </summary>
    [Fact]
    public void GetRowEqualsGgufPyBitForBit()
    {
        var f = Read();
        Assert.Equal(f.Rows * f.Cols / Q6K.BlockWeights * Q6K.BlockBytes, f.Blocks.Length);
        fixed (byte* p = f.Blocks)
        {
            var table = new EmbeddingTable(GgmlType.Q6_K, p, f.Blocks.Length, f.Rows, f.Cols, f.Blocks, "q6k_blocks.json", "blocks");
            var row = new float[f.Cols];
            for (int r = 0; r < f.Rows; r++)
            {
                table.GetRow(r, row);
                for (int i = 0; i < f.Cols; i++)
                {
                    float expected = f.Dequantized[r * f.Cols + i];
                    if (BitConverter.SingleToInt32Bits(expected) != BitConverter.SingleToInt32Bits(row[i]))
                        Assert.Fail($"row {r} value {i}: gguf-py {expected:R}, got {row[i]:R}");
                }
            }
        }
    }

    /// <summary>The GGUF written by gguf-py's GGUFWriter: sized, typed and shaped as ggml does, read in place.</summary>
    [Fact]
    public void GgufWrittenByGgufPyIsReadInPlace()
    {
        var f = Read();
        using var file = GgufFile.Open(FixturePath("q6k_tensor.gguf"));
        var info = file.GetTensor("token_embd.weight");
        Assert.Equal(GgmlType.Q6_K, info.Type);
        Assert.Equal(new long[] { f.Cols, f.Rows }, info.Dims.ToArray());
        Assert.Equal(f.Blocks.Length, info.ByteSize);
        Assert.Equal(f.Blocks, file.GetTensorData(info).ToArray());
        var table = new EmbeddingTable(info.Type, file.GetTensorPointer(info), info.ByteSize, f.Rows, f.Cols, file, file.FilePath, info.Name);
        var row = new float[f.Cols];
        table.GetRow(2, row);
        Assert.Equal(f.Dequantized.AsSpan(2 * f.Cols, f.Cols).ToArray(), row);
    }

    /// <summary>
    /// The float path (no AVX2) against numpy's float64 dot of gguf-py's values. Its error is float32 rounding
    /// only: 16-term group sums, one product by d·scale, a 32-term sum over groups — at most about
    /// (16 + 2 + 32)·u·Σ|w·x| to first order; 64·u (3.8e−6) is the bound. Measured: at most 2.0e−8·Σ|w·x|.
    /// </summary>
    [Fact]
    public void FloatDotEqualsNumpyFloat64()
    {
        var f = Read();
        long rowBytes = f.Cols / Q6K.BlockWeights * Q6K.BlockBytes;
        double worst = 0;
        fixed (byte* p = f.Blocks)
        fixed (float* x = f.X)
            for (int r = 0; r < f.Rows; r++)
            {
                double y = HeadKernels.DotQ6_K(p + r * rowBytes, x, f.Cols);
                double magnitude = AbsDot(f.Dequantized.AsSpan(r * f.Cols, f.Cols), f.X);
                worst = Math.Max(worst, Math.Abs(y - f.Dots[r]) / magnitude);
                Assert.True(Math.Abs(y - f.Dots[r]) <= 64 * U * magnitude, $"row {r}: numpy {f.Dots[r]:R}, got {y:R}");
            }
        Assert.True(worst < 64 * U, $"worst |Δ| / Σ|w·x| = {worst:E2}");
    }

    /// <summary>
    /// The head (MatVec) against numpy's float64 dots. The head quantizes x to int8
    /// with one scale d_x = max|x|/127 per 256 values, as llama.cpp's Q6_K head does, so each x_i moves by at most
    /// d_x/2: the logit moves by at most Σ_blocks d_x/2 · Σ|w_i| (computed here per row), plus float32 rounding
    /// (64·u·Σ|w·x|). Without AVX2 the portable integer dot computes the same. Measured with AVX2: errors of
    /// 1.1–2.7 % of |y| (what int8 activations with one scale per 256 values cost, in llama.cpp as here), at most
    /// 0.092 of the bound.
    /// </summary>
    [Fact]
    public void MatVecEqualsNumpyWithinTheActivationQuantizationBound()
    {
        var f = Read();
        var y = new float[f.Rows];
        fixed (byte* p = f.Blocks)
        fixed (float* x = f.X)
        fixed (float* py = y)
            new EmbeddingTable(GgmlType.Q6_K, p, f.Blocks.Length, f.Rows, f.Cols, f.Blocks, "q6k_blocks.json", "blocks").MatVec(x, py, 0, f.Rows);
        for (int r = 0; r < f.Rows; r++)
        {
            var w = f.Dequantized.AsSpan(r * f.Cols, f.Cols);
            double bound = 64 * U * AbsDot(w, f.X) + ActivationQuantizationBound(w, f.X); // every CPU quantizes x (ARM64 too)
            double error = Math.Abs(y[r] - f.Dots[r]);
            Assert.True(error <= bound, $"row {r}: numpy {f.Dots[r]:R}, got {y[r]:R}, |Δ| {error:E3} > bound {bound:E3}");
        }
    }

    /// <summary>
    /// The integer AVX2 kernel against the float path fed the same int8-quantized activations (q·d_x): the same sum
    /// by two routes. The integer one is exact per block up to one int32→float conversion and one FMA by d_w·d_x;
    /// the float one rounds as in <see cref="FloatDotEqualsNumpyFloat64"/>; 64·u·Σ|w·x̂| bounds both. Blocks: the
    /// fixture's, and random ones (random bytes and finite scales) over 1 to 12 blocks. Measured: at most
    /// 1.5e−8·Σ|w·x̂|.
    /// </summary>
    [Fact]
    public void VectorizedEqualsFloatPathOnTheSameActivations()
    {
        Assert.SkipUnless(Avx2.IsSupported, "the vectorized Q6_K path needs AVX2");
        var rng = new Random(5);
        var f = Read();
        var cases = new List<(byte[] Blocks, int Cols)> { (f.Blocks[..(2 * Q6K.BlockBytes)], 512), (f.Blocks[(6 * Q6K.BlockBytes)..], 512) };
        foreach (int blocks in new[] { 1, 3, 10, 12 })
        {
            var bytes = new byte[blocks * Q6K.BlockBytes];
            rng.NextBytes(bytes);
            for (int b = 0; b < blocks; b++)
                BitConverter.TryWriteBytes(bytes.AsSpan(b * Q6K.BlockBytes + Q6K.DOffset), HalfConversions.FloatToHalf((float)(rng.NextDouble() - 0.5) * 0.1f));
            cases.Add((bytes, blocks * Q6K.BlockWeights));
        }
        double worst = 0;
        foreach (var (bytes, cols) in cases)
        {
            var x = Enumerable.Range(0, cols).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();
            var q = new sbyte[cols];
            var d = new float[cols / Q6K.BlockWeights];
            var sums = new short[cols / 16];
            var xq = new float[cols];
            var w = new float[cols];
            float vectorized, scalar;
            fixed (byte* pw = bytes)
            fixed (float* px = x)
            fixed (sbyte* pq = q)
            fixed (float* pd = d)
            fixed (short* ps = sums)
            fixed (float* pxq = xq)
            {
                HeadKernels.QuantizeQ8KBlocks(px, cols, pq, pd, ps);
                for (int i = 0; i < cols; i++) xq[i] = q[i] * d[i / Q6K.BlockWeights];
                for (int g = 0; g < cols / 16; g++)
                {
                    int s = 0;
                    for (int i = 0; i < 16; i++) s += q[g * 16 + i];
                    Assert.Equal(s, sums[g]);
                }
                vectorized = HeadKernels.DotQ6_KQ8K(pw, pq, pd, ps, cols / Q6K.BlockWeights);
                scalar = HeadKernels.DotQ6_K(pw, pxq, cols);
                fixed (float* pww = w)
                    for (int b = 0; b < cols / Q6K.BlockWeights; b++) Q6K.DequantizeBlock(pw + b * Q6K.BlockBytes, pww + b * Q6K.BlockWeights);
            }
            double magnitude = AbsDot(w, xq);
            worst = Math.Max(worst, Math.Abs(vectorized - scalar) / magnitude);
            Assert.True(Math.Abs(vectorized - scalar) <= 64 * U * magnitude, $"{cols} columns: vectorized {vectorized:R}, float path {scalar:R}");
        }
        Assert.True(worst < 64 * U, $"worst |Δ| / Σ|w·x̂| = {worst:E2}");
    }

    [Fact]
    public void ColumnsThatAreNotWholeBlocksAreAClearError()
    {
        var data = new byte[2 * 2 * Q6K.BlockBytes];
        fixed (byte* p = data)
        {
            byte* q = p;
            var e = Assert.Throws<ModelFormatException>(() => new EmbeddingTable(GgmlType.Q6_K, q, data.Length, 3, 384, data, "m.gguf", "token_embd.weight"));
            Assert.Contains("multiple of 256", e.Message);
            Assert.Contains("384", e.Message);
            Assert.Contains("m.gguf", e.Message);
            Assert.Contains("token_embd.weight", e.Message);
            e = Assert.Throws<ModelFormatException>(() => new EmbeddingTable(GgmlType.Q6_K, q, data.Length - 1, 2, 512, data, "m.gguf", "output.weight"));
            Assert.Contains("840", e.Message); // 2 rows × 2 blocks × 210 bytes
            Assert.Contains("output.weight", e.Message);
        }
        var shape = SyntheticShape.Tiny; // dim 128
        var se = Assert.Throws<ArgumentException>(() => SyntheticModel.Build(shape, 1, GgmlType.Q6_K));
        Assert.Contains("256", se.Message);
        Assert.False(GgmlTypeInfo.TryByteSize(GgmlType.Q6_K, [128, 4], out _, out var error));
        Assert.Contains("256", error);
    }

    /// <summary>
    /// The encoder's promise (<see cref="Q6K.Encode"/>): every decoded weight within d·scale/2 ≤ (s + d)/2 of its
    /// input, s = max|group|/31 — checked on uniform, Gaussian, tiny (subnormal-d) and all-zero blocks; and the
    /// decoded codes stay inside [−31, 31] (the encoder never needs −32). Measured: worst 0.499 steps.
    /// </summary>
    [Fact]
    public void EncoderErrorStaysWithinHalfAStep()
    {
        var rng = new Random(9);
        float Gaussian() => (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        var inputs = new List<float[]>
        {
            Enumerable.Range(0, 1024).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray(),
            Enumerable.Range(0, 512).Select(_ => Gaussian() * 0.02f).ToArray(),
            Enumerable.Range(0, 256).Select(_ => Gaussian() * 1e-9f).ToArray(),
            new float[256],
            Enumerable.Range(0, 256).Select(i => i < 16 ? 1000f * Gaussian() : 1e-3f * Gaussian()).ToArray(),
        };
        double worstSteps = 0;
        foreach (var x in inputs)
        {
            var bytes = new byte[x.Length / Q6K.BlockWeights * Q6K.BlockBytes];
            Q6K.Encode(x, bytes);
            var decoded = new float[x.Length];
            fixed (byte* p = bytes)
            fixed (float* y = decoded)
                for (int b = 0; b < x.Length / Q6K.BlockWeights; b++) Q6K.DequantizeBlock(p + b * Q6K.BlockBytes, y + b * Q6K.BlockWeights);
            for (int b = 0; b < x.Length / Q6K.BlockWeights; b++)
            {
                var block = bytes.AsSpan(b * Q6K.BlockBytes, Q6K.BlockBytes);
                double d = HalfConversions.HalfToFloat(BitConverter.ToUInt16(block[Q6K.DOffset..]));
                for (int g = 0; g < 16; g++)
                {
                    int start = b * Q6K.BlockWeights + g * 16;
                    double s = 0;
                    for (int i = 0; i < 16; i++) s = Math.Max(s, Math.Abs(x[start + i]) / 31.0);
                    double step = d * (sbyte)block[Q6K.ScalesOffset + g];
                    Assert.True(step <= s + d, $"block {b} group {g}: step {step:E3} > s + d = {s + d:E3}");
                    for (int i = 0; i < 16; i++)
                    {
                        double error = Math.Abs(decoded[start + i] - x[start + i]);
                        Assert.True(error <= step / 2 * (1 + 4 * U) + float.Epsilon, $"value {start + i}: {x[start + i]:R} decoded as {decoded[start + i]:R}, step {step:E3}");
                        if (step > 0)
                        {
                            worstSteps = Math.Max(worstSteps, error / step);
                            Assert.InRange(Math.Round(decoded[start + i] / step), -31, 31);
                        }
                    }
                }
            }
        }
        Assert.True(worstSteps <= 0.5 + 1e-6, $"worst error = {worstSteps} steps");
        Assert.Throws<ArgumentException>(() => Q6K.Encode(new float[255], new byte[210]));
        Assert.Throws<ArgumentException>(() => Q6K.Encode(Enumerable.Repeat(float.NaN, 256).ToArray(), new byte[210]));
        Assert.Throws<ArgumentException>(() => Q6K.Encode(Enumerable.Repeat(1e9f, 256).ToArray(), new byte[210]));
    }

    /// <summary>
    /// ggml's reference quantizer (<see cref="Q6K.EncodeReference"/>, what convert and --head-type write), worked by hand
    /// on a block of ones: every group's make_qx_quants maps 1 to code −32 with scale −1/32 (the 18 other scales tried
    /// tie or lose), so d = fp16(1/4096) = 0x0C00, every int8 scale is −128, every code 0, and the block decodes to 1
    /// exactly. On Gaussian data it beats the plain rounding encoder on the error it minimizes (Σ x²·(x − x̂)²).
    /// </summary>
    [Fact]
    public void ReferenceEncoderMatchesGgmlsFormulas()
    {
        var ones = Enumerable.Repeat(1f, 256).ToArray();
        var bytes = new byte[Q6K.BlockBytes];
        Q6K.EncodeReference(ones, bytes);
        Assert.All(bytes[..Q6K.ScalesOffset], b => Assert.Equal(0, b));
        Assert.All(bytes[Q6K.ScalesOffset..Q6K.DOffset], b => Assert.Equal(0x80, b));
        Assert.Equal(0x0C00, BitConverter.ToUInt16(bytes, Q6K.DOffset));
        var decoded = new float[256];
        fixed (byte* p = bytes)
        fixed (float* y = decoded)
            Q6K.DequantizeBlock(p, y);
        Assert.All(decoded, v => Assert.Equal(1f, v));

        Q6K.EncodeReference(new float[256], bytes);
        Assert.All(bytes, b => Assert.Equal(0, b));

        var rng = new Random(4);
        var x = Enumerable.Range(0, 64 * 256).Select(_ => (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()))).ToArray();
        double WeightedError(Action<float[], byte[]> encode)
        {
            var q = new byte[64 * Q6K.BlockBytes];
            encode(x, q);
            var y = new float[x.Length];
            fixed (byte* p = q)
            fixed (float* py = y)
                for (int b = 0; b < 64; b++) Q6K.DequantizeBlock(p + b * Q6K.BlockBytes, py + b * 256);
            double e = 0;
            for (int i = 0; i < x.Length; i++) e += (double)x[i] * x[i] * (x[i] - y[i]) * (x[i] - y[i]);
            return e;
        }
        double reference = WeightedError((v, q) => Q6K.EncodeReference(v, q)), plain = WeightedError((v, q) => Q6K.Encode(v, q));
        Assert.True(reference < plain, $"weighted error: reference {reference:E3}, plain {plain:E3}");
        Assert.Throws<ArgumentException>(() => Q6K.EncodeReference(new float[255], new byte[210]));
        Assert.Throws<ArgumentException>(() => Q6K.EncodeReference(Enumerable.Repeat(float.NaN, 256).ToArray(), new byte[210]));
    }

    private static double AbsDot(ReadOnlySpan<float> w, ReadOnlySpan<float> x)
    {
        double s = 0;
        for (int i = 0; i < w.Length; i++) s += Math.Abs((double)w[i] * x[i]);
        return s;
    }

    /// <summary>Σ over 256-value blocks of (max|x|/127)/2 · Σ|w|: how far int8 activations can move a dot product.</summary>
    internal static double ActivationQuantizationBound(ReadOnlySpan<float> w, ReadOnlySpan<float> x)
    {
        double bound = 0;
        for (int b = 0; b < w.Length; b += Q6K.BlockWeights)
        {
            double max = 0, absW = 0;
            for (int i = b; i < b + Q6K.BlockWeights; i++)
            {
                max = Math.Max(max, Math.Abs(x[i]));
                absW += Math.Abs(w[i]);
            }
            bound += max / 127 / 2 * absW;
        }
        return bound * (1 + 1e-6);
    }
}

/// <summary>
/// Whole tiny models (dim 256) whose embedding or head is Q6_K, written as GGUF, loaded by <see cref="ModelWeights"/>
/// and run by the engine. Reference: the naive double-precision forward (<see cref="NaiveForward"/>), which decodes the
/// table with <see cref="EmbeddingTable.GetRow"/> — checked bit for bit against gguf-py above — and dots in double.
/// <para>
/// Bound per logit r: the engine's Q6_K head quantizes the final hidden state h to int8 with one scale per 256 values
/// (as llama.cpp does), which moves logit r by at most Σ_blocks (max|h|/127)/2 · Σ|w_r| (the same
/// <see cref="Q6KTests.ActivationQuantizationBound"/> as for the fixture, computed from the naive h); everything
/// before the head is the engine's float32 path, which <see cref="TransformerTests.DecodeMatchesNaiveForward"/>
/// holds within 1e−5 of the logit range, so that is added as slack. The F32 twin — the same file with the embedding
/// replaced by its exact float32 decoding — has identical hidden states, so it must satisfy the same bound against the
/// Q6_K model, and its own float head the 1e−5 slack alone.
/// </para>
/// <para>
/// Measured (AVX2): the Q6_K head's logits are within 5.1e−3 (tied) and 5.5e−3 (untied) of the logit range of the
/// naive double head, at most 0.16 of the per-logit bound — the int8 activations' cost, as in llama.cpp; against
/// the naive logits of the same int8 h, within 1.3e−7 of the range (float rounding only). The F32 twin: 2.0e−7.
/// </para>
/// </summary>
public class Q6KModelTests
{
    private static readonly int[] Prompt = [5, 17, 200, 3, 3, 99, 42, 7, 128, 255, 0, 64];
    private static readonly SyntheticShape Shape = SyntheticShape.Tiny with { Dim = 256 };

    private static unsafe byte[] Floats(EmbeddingTable table)
    {
        var bytes = new byte[table.Rows * table.Cols * 4];
        for (int r = 0; r < table.Rows; r++) table.GetRow(r, MemoryMarshal.Cast<byte, float>(bytes.AsSpan(r * table.Cols * 4, table.Cols * 4)));
        return bytes;
    }

    /// <summary>A copy of <paramref name="source"/> with <paramref name="replace"/> applied to the tensor list.</summary>
    private static byte[] Rewrite(GgufFile source, Func<GgufTensorInfo, (GgmlType Type, byte[] Data)?> replace, Action<GgufWriter>? extra = null)
    {
        var w = new GgufWriter();
        foreach (var (key, value) in source.Metadata.Entries) w.Add(key, value);
        foreach (var t in source.Tensors)
        {
            var (type, data) = replace(t) ?? (t.Type, source.GetTensorData(t).ToArray());
            w.AddTensor(t.Name, type, t.Dims, data);
        }
        extra?.Invoke(w);
        return w.ToArray();
    }

    private static (float[][] Prefill, float[] Decode) Run(ModelWeights w)
    {
        using var pool = new WorkerPool(2);
        using var engine = new Transformer(w, 16, pool);
        using var cache = new KvCache(w.Config.Layers, w.Config.KvHeads, w.Config.HeadDim, w.Config.ContextLength, KvCacheType.F32);
        int v = w.Config.VocabSize;
        var batch = Prompt[..^1].Select((t, i) => new BatchToken(t, 0, i, true)).ToArray();
        var all = new float[batch.Length * v];
        engine.Forward(batch, [cache], all);
        var decode = new float[v];
        engine.Forward([new BatchToken(Prompt[^1], 0, Prompt.Length - 1, true)], [cache], decode);
        return (Enumerable.Range(0, batch.Length).Select(i => all.AsSpan(i * v, v).ToArray()).ToArray(), decode);
    }

    /// <summary>
    /// The naive h quantized as the Q6_K head quantizes it (<see cref="HeadKernels.QuantizeQ8KBlocks"/>) and
    /// widened back, q·d_x; and the largest d_x.
    /// </summary>
    private static unsafe (float[] Quantized, float MaxStep) Q8K(float[] h)
    {
        var q = new sbyte[h.Length];
        var d = new float[h.Length / Q6K.BlockWeights];
        var sums = new short[h.Length / 16];
        fixed (float* ph = h)
        fixed (sbyte* pq = q)
        fixed (float* pd = d)
        fixed (short* ps = sums)
            HeadKernels.QuantizeQ8KBlocks(ph, h.Length, pq, pd, ps);
        return (q.Select((v, i) => v * d[i / Q6K.BlockWeights]).ToArray(), d.Max());
    }

    /// <summary>
    /// Checks every position's logits against the naive forward; returns (worst |Δ|/range, worst |Δ|/bound). With a
    /// quantized head, also against the naive logits of the int8-quantized naive h — the head's exact arithmetic —
    /// within 1e−5 of the range plus two activation code steps (d_x·max|w_r| each): the engine's float h and the naive
    /// double h differ by rounding, which can put an activation on the other side of a rounding boundary.
    /// </summary>
    private static (double Range, double Bound, double Tight) Check(ModelWeights w, (float[][] Prefill, float[] Decode) logits, bool quantizedHead, float[][]? twin = null)
    {
        var naive = new NaiveForward(w);
        var row = new float[w.Config.Dim];
        bool quantized = quantizedHead; // every CPU quantizes the head's activations (without AVX2 too)
        double worstRange = 0, worstBound = 0, worstTight = 0;
        for (int pos = 0; pos < Prompt.Length; pos++)
        {
            var expected = naive.Step(Prompt[pos], pos);
            var hidden = naive.LastHidden.Select(v => (float)v).ToArray();
            var (hq, maxStep) = Q8K(hidden);
            var got = pos < Prompt.Length - 1 ? logits.Prefill[pos] : logits.Decode;
            double range = expected.Max() - expected.Min();
            for (int r = 0; r < expected.Length; r++)
            {
                Assert.True(float.IsFinite(got[r]), $"position {pos} logit {r} is {got[r]}");
                w.Output.GetRow(r, row);
                double bound = 1e-5 * range + (quantized ? Q6KTests.ActivationQuantizationBound(row, hidden) : 0);
                double error = Math.Abs(got[r] - expected[r]);
                Assert.True(error <= bound, $"position {pos} logit {r}: naive {expected[r]:R}, engine {got[r]:R}, |Δ| {error:E3} > bound {bound:E3}");
                if (quantized)
                {
                    double exact = 0, maxW = 0;
                    for (int i = 0; i < row.Length; i++)
                    {
                        exact += row[i] * (double)hq[i];
                        maxW = Math.Max(maxW, Math.Abs(row[i]));
                    }
                    double tight = 1e-5 * range + 2 * maxStep * maxW;
                    worstTight = Math.Max(worstTight, Math.Abs(got[r] - exact) / range);
                    Assert.True(Math.Abs(got[r] - exact) <= tight, $"position {pos} logit {r}: naive with int8 h {exact:R}, engine {got[r]:R}, |Δ| {Math.Abs(got[r] - exact):E3} > {tight:E3}");
                }
                if (twin is not null)
                {
                    double twinError = Math.Abs(got[r] - twin[pos][r]);
                    Assert.True(twinError <= bound, $"position {pos} logit {r}: F32 twin {twin[pos][r]:R}, Q6_K {got[r]:R}, |Δ| {twinError:E3} > bound {bound:E3}");
                }
                worstRange = Math.Max(worstRange, error / range);
                worstBound = Math.Max(worstBound, error / bound);
            }
        }
        return (worstRange, worstBound, worstTight);
    }

    [Fact]
    public void TiedQ6KEmbeddingRunsAndMatchesItsF32Twin()
    {
        var bytes = SyntheticModel.Build(Shape, 11, GgmlType.Q6_K).ToArray();
        using var q6 = ModelWeights.FromGguf(GgufFile.Parse(bytes, "q6.gguf"), ownsFile: true);
        Assert.Equal(GgmlType.Q6_K, q6.TokenEmbedding.Type);
        Assert.True(q6.TiedOutput);
        Assert.Equal(Shape.VocabSize * Q6K.BlockBytes, q6.TokenEmbedding.ByteLength); // one 256-value block per row

        using var source = GgufFile.Parse(bytes, "q6.gguf");
        var twinBytes = Rewrite(source, t => t.Name == "token_embd.weight" ? (GgmlType.F32, Floats(q6.TokenEmbedding)) : null);
        using var f32 = ModelWeights.FromGguf(GgufFile.Parse(twinBytes, "f32.gguf"), ownsFile: true);
        Assert.Equal(GgmlType.F32, f32.TokenEmbedding.Type);

        var twin = Run(f32);
        var twinRows = twin.Prefill.Append(twin.Decode).ToArray();
        var (twinRange, _, _) = Check(f32, twin, quantizedHead: false);
        var (range, bound, tight) = Check(q6, Run(q6), quantizedHead: true, twinRows);
        Assert.True(twinRange < 1e-5, $"F32 twin: worst |Δ| / range = {twinRange:E2}");
        Assert.True(bound <= 1, $"Q6_K: worst |Δ| / range = {range:E2}, worst |Δ| / bound = {bound:F3}, worst |Δ| / range against int8 h = {tight:E2}");
    }

    [Fact]
    public void UntiedQ6KOutputHeadLoadsAndRuns()
    {
        // An F32 embedding and a separate Q6_K output.weight (the F32 values encoded by Q6K.Encode).
        var baseBytes = SyntheticModel.Build(Shape, 12, GgmlType.F32).ToArray();
        using var source = GgufFile.Parse(baseBytes, "f32.gguf");
        var embd = source.GetTensor("token_embd.weight");
        var head = new byte[Shape.VocabSize * Q6K.BlockBytes];
        Q6K.Encode(MemoryMarshal.Cast<byte, float>(source.GetTensorData(embd)), head);
        var bytes = Rewrite(source, _ => null, w => w.AddTensor("output.weight", GgmlType.Q6_K, [Shape.Dim, Shape.VocabSize], head));
        using var model = ModelWeights.FromGguf(GgufFile.Parse(bytes, "untied.gguf"), ownsFile: true);
        Assert.False(model.TiedOutput);
        Assert.Equal(GgmlType.F32, model.TokenEmbedding.Type);
        Assert.Equal(GgmlType.Q6_K, model.Output.Type);
        var (range, bound, tight) = Check(model, Run(model), quantizedHead: true);
        Assert.True(bound <= 1, $"worst |Δ| / range = {range:E2}, worst |Δ| / bound = {bound:F3}, worst |Δ| / range against int8 h = {tight:E2}");
    }
}
