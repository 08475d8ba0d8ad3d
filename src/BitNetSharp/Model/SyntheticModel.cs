using BitNetSharp.Formats.Gguf;
using BitNetSharp.Quantization;

namespace BitNetSharp.Model;

/// <summary>A model shape for <see cref="SyntheticModel"/>.</summary>
public sealed record SyntheticShape(string Name, int Dim, int Layers, int Heads, int KvHeads, int FeedForward, int VocabSize, int ContextLength = 2048)
{
    /// <summary>BitNet b1.58 2B4T (FORMATS.md §4.1).</summary>
    public static SyntheticShape BitNet2B4T { get; } = new("2b4t", 2560, 30, 20, 5, 6912, 128256, 4096);

    /// <summary>1bitLLM bitnet_b1_58-large (700M): hidden 1536, 24 layers, 16 heads, ff 4096, vocab 32002.</summary>
    public static SyntheticShape Large { get; } = new("large", 1536, 24, 16, 16, 4096, 32002, 2048);

    /// <summary>A model small enough for tests.</summary>
    public static SyntheticShape Tiny { get; } = new("tiny", 128, 2, 4, 2, 320, 256, 256);

    public static SyntheticShape ByName(string name) => name.ToLowerInvariant() switch
    {
        "2b4t" => BitNet2B4T,
        "large" => Large,
        "tiny" => Tiny,
        _ => throw new ArgumentException($"Unknown synthetic shape '{name}'; use 2b4t, large or tiny.", nameof(name)),
    };
}

/// <summary>
/// Writes a BitNet b1.58 GGUF (arch bitnet-b1.58) of a given shape with random ternary I2_S projections, random
/// norm weights and a random embedding/head — the same file layout as the official 2B4T GGUF, so benchmarks and
/// tests exercise the real loading path without a download.
/// </summary>
public static class SyntheticModel
{
    /// <summary>
    /// Changes whenever <see cref="Build"/> writes other bytes for the same shape (layout, packing, metadata): cached
    /// files are keyed by it, so an older file is not benchmarked as the current one.
    /// </summary>
    public const int BuildVersion = 1;

    public static GgufWriter Build(SyntheticShape shape, int seed = 1, GgmlType embeddingType = GgmlType.F16, bool subNorms = true, string architecture = "bitnet-b1.58")
    {
        if (embeddingType == GgmlType.Q6_K && shape.Dim % Q6K.BlockWeights != 0)
            throw new ArgumentException($"A q6_K embedding needs rows of a multiple of {Q6K.BlockWeights} values; shape {shape.Name} has dim {shape.Dim}.", nameof(embeddingType));
        var rng = new Random(seed);
        int hd = shape.Dim / shape.Heads;
        int qDim = shape.Heads * hd, kvDim = shape.KvHeads * hd;
        var w = new GgufWriter();
        GgufModelMetadata.Write(w, architecture, $"synthetic-{shape.Name}", GgufModelMetadata.FileTypeI2S, shape.VocabSize, shape.ContextLength,
            shape.Dim, shape.Layers, shape.FeedForward, shape.Heads, shape.KvHeads, hd, 1e-5f, 500000f);

        w.AddTensor("token_embd.weight", embeddingType, [shape.Dim, shape.VocabSize], FloatTensor(rng, (long)shape.Dim * shape.VocabSize, 1f, embeddingType));
        w.AddTensor("output_norm.weight", GgmlType.F32, [shape.Dim], Norm(rng, shape.Dim));
        for (int l = 0; l < shape.Layers; l++)
        {
            string p = $"blk.{l}.";
            w.AddTensor(p + "attn_norm.weight", GgmlType.F32, [shape.Dim], Norm(rng, shape.Dim));
            w.AddTensor(p + "attn_q.weight", GgmlType.I2_S, [shape.Dim, qDim], Ternary(rng, qDim, shape.Dim));
            w.AddTensor(p + "attn_k.weight", GgmlType.I2_S, [shape.Dim, kvDim], Ternary(rng, kvDim, shape.Dim));
            w.AddTensor(p + "attn_v.weight", GgmlType.I2_S, [shape.Dim, kvDim], Ternary(rng, kvDim, shape.Dim));
            if (subNorms) w.AddTensor(p + "attn_sub_norm.weight", GgmlType.F32, [qDim], Norm(rng, qDim));
            w.AddTensor(p + "attn_output.weight", GgmlType.I2_S, [qDim, shape.Dim], Ternary(rng, shape.Dim, qDim));
            w.AddTensor(p + "ffn_norm.weight", GgmlType.F32, [shape.Dim], Norm(rng, shape.Dim));
            w.AddTensor(p + "ffn_gate.weight", GgmlType.I2_S, [shape.Dim, shape.FeedForward], Ternary(rng, shape.FeedForward, shape.Dim));
            w.AddTensor(p + "ffn_up.weight", GgmlType.I2_S, [shape.Dim, shape.FeedForward], Ternary(rng, shape.FeedForward, shape.Dim));
            if (subNorms) w.AddTensor(p + "ffn_sub_norm.weight", GgmlType.F32, [shape.FeedForward], Norm(rng, shape.FeedForward));
            w.AddTensor(p + "ffn_down.weight", GgmlType.I2_S, [shape.FeedForward, shape.Dim], Ternary(rng, shape.Dim, shape.FeedForward));
        }
        return w;
    }

    private static byte[] Ternary(Random rng, int rows, int cols)
    {
        // β ≈ the absmean of a trained projection; one scale per tensor like the official file.
        using var m = TernaryMatrix.Allocate(rows, cols, 0.5f + (float)rng.NextDouble());
        unsafe
        {
            var codes = new byte[81];
            for (int i = 0; i < 81; i++) codes[i] = (byte)((i % 3) << 6 | (i / 3 % 3) << 4 | (i / 9 % 3) << 2 | (i / 27 % 3));
            int fullBytes = m.Cols / 128 * 32;
            for (int r = 0; r < rows; r++)
            {
                byte* row = m.Row(r);
                for (int b = 0; b < fullBytes; b++) row[b] = codes[rng.Next(81)];
                for (int c = fullBytes * 4; c < m.Cols; c++) m.Set(r, c, rng.Next(3) - 1);
            }
        }
        return I2S.Encode(m);
    }

    private static byte[] Norm(Random rng, int n)
    {
        var bytes = new byte[n * 4];
        for (int i = 0; i < n; i++) BitConverter.TryWriteBytes(bytes.AsSpan(i * 4), 0.5f + (float)rng.NextDouble());
        return bytes;
    }

    private static byte[] FloatTensor(Random rng, long count, float amplitude, GgmlType type)
    {
        if (type == GgmlType.Q8_0)
        {
            // 32 int8 values and one fp16 scale per block, like llama.cpp's Q8_0 of a ±amplitude uniform tensor.
            var q8 = new byte[checked(count / 32 * 34)];
            ushort d = HalfConversions.FloatToHalf(amplitude / 127f);
            for (long b = 0; b < count / 32; b++)
            {
                BitConverter.TryWriteBytes(q8.AsSpan((int)(b * 34)), d);
                rng.NextBytes(q8.AsSpan((int)(b * 34 + 2), 32));
            }
            return q8;
        }
        if (type == GgmlType.Q6_K)
        {
            // Uniform ±amplitude floats through BitNetSharp's own Q6_K encoder (Q6K.Encode: a plain rounding
            // quantizer, not llama.cpp's error-minimizing one; the format is the same), a chunk at a time.
            var q6 = new byte[checked(count / Q6K.BlockWeights * Q6K.BlockBytes)];
            var chunk = new float[64 * Q6K.BlockWeights];
            for (long start = 0; start < count; start += chunk.Length)
            {
                int n = (int)Math.Min(chunk.Length, count - start);
                for (int i = 0; i < n; i++) chunk[i] = (float)(rng.NextDouble() * 2 - 1) * amplitude;
                Q6K.Encode(chunk.AsSpan(0, n), q6.AsSpan((int)(start / Q6K.BlockWeights * Q6K.BlockBytes)));
            }
            return q6;
        }
        int size = type == GgmlType.F32 ? 4 : 2;
        var bytes = new byte[checked(count * size)];
        for (long i = 0; i < count; i++)
        {
            float v = (float)(rng.NextDouble() * 2 - 1) * amplitude;
            switch (type)
            {
                case GgmlType.F32: BitConverter.TryWriteBytes(bytes.AsSpan((int)(i * 4)), v); break;
                case GgmlType.F16: BitConverter.TryWriteBytes(bytes.AsSpan((int)(i * 2)), HalfConversions.FloatToHalf(v)); break;
                case GgmlType.BF16: BitConverter.TryWriteBytes(bytes.AsSpan((int)(i * 2)), HalfConversions.FloatToBFloat16(v)); break;
                default: throw new ArgumentException($"Embedding type {type} is not supported by the synthetic builder; use f32, f16, bf16, q8_0 or q6_K.", nameof(type));
            }
        }
        return bytes;
    }
}
