using System.Runtime.InteropServices;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Quantization;

namespace BitNetSharp.Training;

/// <summary>How the exported projections are packed.</summary>
public enum ProjectionPacking
{
    /// <summary>bitnet.cpp I2_S with the fp32 β, bit-exact to the trainer's quantized forward; rows·cols must be a multiple of 128.</summary>
    I2S,

    /// <summary>llama.cpp TQ2_0: β rounded to fp16 per 256-block; input features must be a multiple of 256.</summary>
    Tq2_0,
}

/// <summary>
/// Writes trained latent weights as a GGUF the engine runs (arch <c>bitnet-b1.58</c>, tensor names of FORMATS.md §3.1):
/// the seven projections per block ternarized by absmean exactly as the trainer's forward does
/// (<see cref="AbsmeanTernarizer.FromFloat32"/>) and packed I2_S (or TQ2_0), norms and the tied embedding in F32
/// (the head is the embedding; no output.weight), and the trained tokenizer under the standard keys
/// (tokenizer.ggml.model "gpt2", pre "gpt-2", tokens, token_type, merges, BOS/EOS ids, add_bos_token). Written to a
/// temporary file and renamed, so a failure never leaves a partial model under the final name.
/// </summary>
public static class ModelExporter
{
    public const string Architecture = "bitnet-b1.58";

    public static GgufWriter Build(TrainingShape shape, ReadOnlySpan<float> parameters, TrainedTokenizer tokenizer, string name,
        ProjectionPacking packing = ProjectionPacking.I2S, bool addBos = false, Model.ActivationBits? activationBits = null)
    {
        var layout = new ParameterLayout(shape);
        if (parameters.Length != layout.Count)
            throw new ArgumentException($"{parameters.Length} parameters for a model of {layout.Count}.", nameof(parameters));
        if (tokenizer.Count != shape.VocabSize)
            throw new ArgumentException($"The tokenizer has {tokenizer.Count} tokens; the model's vocabulary is {shape.VocabSize}.", nameof(tokenizer));
        CheckPackable(shape, packing);

        var w = new GgufWriter();
        Model.GgufModelMetadata.Write(w, Architecture, name, packing == ProjectionPacking.I2S ? Model.GgufModelMetadata.FileTypeI2S : Model.GgufModelMetadata.FileTypeTq2_0,
            shape.VocabSize, shape.ContextLength, shape.Dim, shape.Layers, shape.FeedForward, shape.Heads, shape.KvHeads, shape.HeadDim,
            shape.RmsEps, shape.RopeTheta);
        w.AddString("tokenizer.ggml.model", "gpt2");
        w.AddString("tokenizer.ggml.pre", "gpt-2");
        w.AddArray("tokenizer.ggml.tokens", tokenizer.Tokens.ToArray());
        w.AddArray("tokenizer.ggml.token_type", tokenizer.TokenTypes.ToArray());
        w.AddArray("tokenizer.ggml.merges", tokenizer.Merges.ToArray());
        w.AddUInt32("tokenizer.ggml.bos_token_id", (uint)tokenizer.BosId);
        w.AddUInt32("tokenizer.ggml.eos_token_id", (uint)tokenizer.EosId);
        w.AddBool("tokenizer.ggml.add_bos_token", addBos);
        w.AddBool("tokenizer.ggml.add_eos_token", false);
        if (activationBits is not null)
        {
            if (activationBits.Layers != shape.Layers)
                throw new ArgumentException($"The activation bit widths are for {activationBits.Layers} layers; the model has {shape.Layers}.", nameof(activationBits));
            // Only widths the model was trained at below 8 are written, so an 8-bit run exports the same bytes as before.
            if (!activationBits.AllEight) activationBits.WriteTo(w);
        }

        foreach (var t in layout.Tensors)
        {
            var values = parameters.Slice(t.Offset, t.Length);
            long[] dims = t.IsMatrix ? [t.Cols, t.Rows] : [t.Cols];
            if (!t.IsProjection)
            {
                w.AddTensor(t.Name, GgmlType.F32, dims, MemoryMarshal.AsBytes(values).ToArray());
                continue;
            }
            using var m = AbsmeanTernarizer.FromFloat32(values, t.Rows, t.Cols);
            if (packing == ProjectionPacking.I2S) w.AddTensor(t.Name, GgmlType.I2_S, dims, I2S.Encode(m));
            else w.AddTensor(t.Name, GgmlType.TQ2_0, dims, Tq2_0.Encode(m));
        }
        return w;
    }

    /// <summary>Builds and writes to <paramref name="path"/> (temporary file + rename).</summary>
    public static void Write(string path, TrainingShape shape, ReadOnlySpan<float> parameters, TrainedTokenizer tokenizer, string name,
        ProjectionPacking packing = ProjectionPacking.I2S, bool addBos = false, Model.ActivationBits? activationBits = null) =>
        Build(shape, parameters, tokenizer, name, packing, addBos, activationBits).WriteFile(path);

    /// <summary>Throws <see cref="ArgumentException"/> when a projection of <paramref name="shape"/> cannot be packed as <paramref name="packing"/>.</summary>
    public static void CheckPackable(TrainingShape shape, ProjectionPacking packing)
    {
        var layout = new ParameterLayout(shape);
        foreach (var t in layout.Tensors)
        {
            if (!t.IsProjection) continue;
            if (packing == ProjectionPacking.I2S && (long)t.Rows * t.Cols % I2S.BlockWeights != 0)
                throw new ArgumentException(
                    $"{t.Name} is {t.Rows}×{t.Cols}; I2_S packs whole blocks of {I2S.BlockWeights} weights, so rows·cols must be a multiple of {I2S.BlockWeights}. Use dims that are multiples of 128 (dim, ff, and kv-heads·head-dim).");
            if (packing == ProjectionPacking.Tq2_0 && t.Cols % Tq2_0.BlockWeights != 0)
                throw new ArgumentException(
                    $"{t.Name} has {t.Cols} inputs; TQ2_0 blocks are {Tq2_0.BlockWeights} inputs, so dim and ff must be multiples of {Tq2_0.BlockWeights}.");
        }
    }
}
