using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Formats.HuggingFace;
using BitNetSharp.Kernels.FloatOps;

namespace BitNetSharp.Model;

/// <summary>Which graph a model runs (FORMATS.md §3.2, §4.5).</summary>
public enum ModelFamily
{
    /// <summary>BitNet b1.58 2B4T: relu² FFN, attention and FFN sub-norms, NEOX RoPE, tied head (GGUF bitnet-b1.58 / bitnet-25, HF BitNetForCausalLM).</summary>
    BitNet158,

    /// <summary>1bitLLM bitnet_b1_58-*: SiLU-gated FFN with the same sub-norms, NEOX RoPE (GGUF bitnet, HF BitnetForCausalLM).</summary>
    BitNetLlama,

    /// <summary>Ternary Llama-architecture models (Llama3-8B-1.58, Falcon3-1.58bit via bitnet.cpp): SiLU, no sub-norms, NORM RoPE with permuted q/k.</summary>
    TernaryLlama,
}

public enum FeedForwardActivation { ReluSquared, Silu }

/// <summary>The hyper-parameters of a BitNet transformer, read from a GGUF file or an HF config.json.</summary>
public sealed record ModelConfig
{
    public required string Architecture { get; init; }
    public required ModelFamily Family { get; init; }
    public required int Dim { get; init; }
    public required int Layers { get; init; }
    public required int Heads { get; init; }
    public required int KvHeads { get; init; }
    public required int HeadDim { get; init; }
    public required int FeedForward { get; init; }
    public required int VocabSize { get; init; }
    public required int ContextLength { get; init; }
    public required float RmsEps { get; init; }
    public required float RopeTheta { get; init; }
    public required FeedForwardActivation Activation { get; init; }
    public required RopeStyle Rope { get; init; }
    public required bool HasSubNorms { get; init; }

    /// <summary>Query heads per KV head (GQA group size).</summary>
    public int GroupSize => Heads / KvHeads;
    public int QDim => Heads * HeadDim;
    public int KvDim => KvHeads * HeadDim;

    public static ModelConfig FromGguf(GgufFile file)
    {
        var m = file.Metadata;
        string arch = m.GetString("general.architecture");
        var family = arch switch
        {
            "bitnet-b1.58" or "bitnet-25" => ModelFamily.BitNet158,
            "bitnet" => ModelFamily.BitNetLlama,
            "llama" => ModelFamily.TernaryLlama,
            _ => throw new ModelFormatException(file.FilePath,
                $"architecture '{arch}' is not a BitNet model this runtime runs; expected bitnet-b1.58, bitnet-25, bitnet or llama", "general.architecture"),
        };
        int dim = m.GetInt32(m.ArchitectureKey("embedding_length"));
        int heads = m.GetInt32(m.ArchitectureKey("attention.head_count"));
        int kvHeads = m.TryGetInt32(m.ArchitectureKey("attention.head_count_kv"), out int kv) ? kv : heads;
        int vocab = m.TryGetInt32(m.ArchitectureKey("vocab_size"), out int v) ? v
            : m.TryGetArray("tokenizer.ggml.tokens", out var tokens) ? (int)tokens.Count
            : EmbeddingRows(file);
        var activation = family == ModelFamily.BitNet158 ? FeedForwardActivation.ReluSquared : FeedForwardActivation.Silu;
        if (m.TryGetString(m.ArchitectureKey("hidden_activation"), out var act))
            activation = ParseActivation(file.FilePath, m.ArchitectureKey("hidden_activation"), act);
        int headDim = m.TryGetInt32(m.ArchitectureKey("attention.key_length"), out int kl) ? kl : dim / Math.Max(heads, 1);
        var config = new ModelConfig
        {
            Architecture = arch,
            Family = family,
            Dim = dim,
            Layers = m.GetInt32(m.ArchitectureKey("block_count")),
            Heads = heads,
            KvHeads = kvHeads,
            HeadDim = headDim,
            FeedForward = m.GetInt32(m.ArchitectureKey("feed_forward_length")),
            VocabSize = vocab,
            ContextLength = m.TryGetInt32(m.ArchitectureKey("context_length"), out int ctx) ? ctx : 2048,
            RmsEps = m.TryGetFloat32(m.ArchitectureKey("attention.layer_norm_rms_epsilon"), out float eps) ? eps : 1e-5f,
            RopeTheta = m.TryGetFloat32(m.ArchitectureKey("rope.freq_base"), out float theta) ? theta : 10000f,
            Activation = activation,
            Rope = family == ModelFamily.TernaryLlama ? RopeStyle.Norm : RopeStyle.Neox,
            HasSubNorms = file.TryGetTensor("blk.0.attn_sub_norm.weight", out _),
        };
        config.Validate(file.FilePath);
        CheckPlainRope(file, headDim);
        // The engine's value heads are as wide as its key heads. A value_length that says otherwise loaded and ran with
        // the key width where the V tensors had it (llama.cpp sizes V by value_length and would refuse the file).
        string valueKey = m.ArchitectureKey("attention.value_length");
        if (m.TryGetInt32(valueKey, out int valueLength) && valueLength != headDim)
            throw new ModelFormatException(file.FilePath,
                $"value heads of {valueLength} dimensions differ from the key heads' {headDim}, which this runtime does not implement (it needs attention.value_length = attention.key_length)", valueKey);
        // bitnet-b1.58 and bitnet-25 (2B4T's graph) normalize the attention output and the FFN hidden state (sub-norms)
        // in every layer, and bitnet.cpp's loader requires the tensors. Without them the file loaded and ran another
        // graph without a word. (Files of arch bitnet without them still load: the engine's plain graph.)
        if (family == ModelFamily.BitNet158 && !config.HasSubNorms)
            throw new ModelFormatException(file.FilePath,
                $"architecture '{arch}' normalizes each layer's attention output and FFN hidden state (sub-norms), but the file has no blk.0.attn_sub_norm.weight; the file is incomplete", "blk.0.attn_sub_norm.weight");
        return config;
    }

    /// <summary>
    /// Refuses RoPE variants the engine does not implement, which llama.cpp would honour: a scaling factor other than 1
    /// (linear is llama.cpp's default type when only the factor is given; yarn, longrope), a frequency-factor tensor
    /// (llama3-style rope_freqs.weight) and partial rotary (rope.dimension_count below the head dimension). They loaded
    /// and ran as plain RoPE. The no-op the upstream bitnet converter writes (linear, factor 1) loads.
    /// </summary>
    private static void CheckPlainRope(GgufFile file, int headDim)
    {
        var m = file.Metadata;
        string typeKey = m.ArchitectureKey("rope.scaling.type"), factorKey = m.ArchitectureKey("rope.scaling.factor"), oldKey = m.ArchitectureKey("rope.scale_linear");
        string? type = m.TryGetString(typeKey, out var t) ? t : null;
        float factor = m.TryGetFloat32(factorKey, out float f) ? f : m.TryGetFloat32(oldKey, out float f2) ? f2 : 0f;
        bool scaled = factor != 0f && factor != 1f;
        if (type is not (null or "none" or "linear" or "yarn" or "longrope"))
            throw new ModelFormatException(file.FilePath, $"RoPE scaling type '{type}' is not one this runtime knows; only plain RoPE is supported", typeKey);
        if (type != "none" && scaled)
            throw new ModelFormatException(file.FilePath, $"RoPE scaling {type ?? "linear"} × {factor} rescales the rotary frequencies, which this runtime does not implement; only plain RoPE (no scaling, or factor 1) is supported",
                m.ContainsKey(factorKey) ? factorKey : oldKey);
        if (file.TryGetTensor("rope_freqs.weight", out _))
            throw new ModelFormatException(file.FilePath, "per-frequency RoPE factors (llama3-style rope scaling) are not implemented by this runtime; only plain RoPE is supported", "rope_freqs.weight");
        string rotKey = m.ArchitectureKey("rope.dimension_count");
        if (m.TryGetInt32(rotKey, out int rot) && rot != headDim)
            throw new ModelFormatException(file.FilePath, $"rotates {rot} of each head's {headDim} dimensions (partial rotary), which this runtime does not implement; it rotates whole heads", rotKey);
    }

    public static ModelConfig FromHf(HfConfig hf)
    {
        string arch = hf.Architectures.Count > 0 ? hf.Architectures[0] : hf.ModelType ?? "";
        // A quantization of another kind (GPTQ, AWQ, bitsandbytes…) packs its weights its own way: a BitNet model's
        // config with quant_method "gptq" had its uint8 weights unpacked as ternary codes and generated nonsense.
        if (hf.Quantization?.QuantMethod is { } method && !string.Equals(method, "bitnet", StringComparison.OrdinalIgnoreCase))
            throw new ModelFormatException(hf.FilePath,
                $"'{method}' is not a quantization this runtime reads; it reads BitNet checkpoints (quant_method \"bitnet\") and unquantized fp32/fp16/bf16 weights (no quantization_config)", "quantization_config.quant_method");
        var family = arch switch
        {
            // Without "architectures" (a BitNetConfig saved on its own) transformers resolves model_type through its
            // auto classes: "bitnet" is BitNetForCausalLM, "llama" LlamaForCausalLM.
            "BitNetForCausalLM" => ModelFamily.BitNet158,
            "bitnet" when hf.Architectures.Count == 0 => ModelFamily.BitNet158,
            "llama" when hf.Architectures.Count == 0 && string.Equals(hf.Quantization?.QuantMethod, "bitnet", StringComparison.OrdinalIgnoreCase) => ModelFamily.TernaryLlama,
            "BitnetForCausalLM" => ModelFamily.BitNetLlama,
            "LlamaForCausalLM" when string.Equals(hf.Quantization?.QuantMethod, "bitnet", StringComparison.OrdinalIgnoreCase) => ModelFamily.TernaryLlama,
            _ => throw new ModelFormatException(hf.FilePath,
                $"architecture '{arch}' is not a BitNet model this runtime runs; expected BitNetForCausalLM, BitnetForCausalLM or LlamaForCausalLM with quantization_config.quant_method = bitnet", "architectures"),
        };
        // As the GGUF path reads it: plain RoPE, or linear/dynamic scaling by 1 (a no-op). A factor other than 1 without a
        // type rescaled in transformers and ran plain here; linear × 1 was refused here and loads from the GGUF.
        bool unitFactor = hf.RopeFactor is null or 1.0;
        bool plainType = hf.RopeType is null || hf.RopeType.Equals("default", StringComparison.OrdinalIgnoreCase) || hf.RopeType.Equals("none", StringComparison.OrdinalIgnoreCase)
            || (unitFactor && (hf.RopeType.Equals("linear", StringComparison.OrdinalIgnoreCase) || hf.RopeType.Equals("dynamic", StringComparison.OrdinalIgnoreCase)));
        if (!plainType)
            throw new ModelFormatException(hf.FilePath,
                $"RoPE type '{hf.RopeType}' rescales the rotary frequencies, which this runtime does not implement; only plain RoPE (rope_type \"default\") is supported", hf.RopeTypeKey ?? "rope_parameters.rope_type");
        if (!unitFactor && !(hf.RopeType?.Equals("none", StringComparison.OrdinalIgnoreCase) ?? false))
            throw new ModelFormatException(hf.FilePath,
                $"RoPE scaling × {hf.RopeFactor} rescales the rotary frequencies, which this runtime does not implement; only plain RoPE (no scaling, or factor 1) is supported", hf.RopeFactorKey);
        // Partial rotary: transformers rotates head_dim · factor dimensions; it loaded and rotated whole heads (the GGUF
        // path refuses rope.dimension_count below the head dimension by name).
        if (hf.PartialRotaryFactor is { } rotary && rotary != 1.0)
            throw new ModelFormatException(hf.FilePath, string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"partial rotary (factor {rotary:R}: RoPE on part of each head) is not implemented by this runtime; it rotates whole heads (factor 1)"), hf.PartialRotaryFactorKey);
        if (hf.Quantization?.UseRmsNorm == true)
            throw new ModelFormatException(hf.FilePath,
                "use_rms_norm = true (an extra RMSNorm inside every BitLinear before activation quantization) is not supported by this runtime", "quantization_config.use_rms_norm");
        // A positive epsilon below float32's range read "RMS norm epsilon 0 must be positive" (the value as cast).
        if (hf.RmsNormEps is { } tinyEps && tinyEps > 0 && (float)tinyEps == 0)
            throw new ModelFormatException(hf.FilePath, string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"{hf.RmsNormEps.Value:R} is below float32's smallest value (1.4e-45), and the norms compute in float32, where it is 0; give a value such as 1e-5"), "rms_norm_eps");
        var activation = hf.HiddenAct is { } act ? ParseActivation(hf.FilePath, "hidden_act", act)
            : family == ModelFamily.BitNet158 ? FeedForwardActivation.ReluSquared : FeedForwardActivation.Silu;
        var config = new ModelConfig
        {
            Architecture = arch,
            Family = family,
            Dim = hf.HiddenSize,
            Layers = hf.NumHiddenLayers,
            Heads = hf.NumAttentionHeads,
            KvHeads = hf.NumKeyValueHeads,
            HeadDim = hf.HeadDim ?? hf.HiddenSize / Math.Max(hf.NumAttentionHeads, 1),
            FeedForward = hf.IntermediateSize,
            VocabSize = hf.VocabSize,
            ContextLength = hf.MaxPositionEmbeddings ?? 2048,
            // transformers' defaults: BitNetConfig 1e-5; LlamaConfig (and 1bitLLM's BitnetConfig) 1e-6.
            RmsEps = (float)(hf.RmsNormEps ?? (family == ModelFamily.BitNet158 ? 1e-5 : 1e-6)),
            // transformers' defaults when the config names no base: BitNetConfig 500000, Llama and 1bitLLM 10000.
            RopeTheta = (float)(hf.RopeTheta ?? (family == ModelFamily.BitNet158 ? 500000.0 : 10000.0)),
            Activation = activation,
            // HF checkpoints keep q/k in rotate_half order for every family; only GGUF llama-arch files are permuted.
            Rope = RopeStyle.Neox,
            HasSubNorms = family != ModelFamily.TernaryLlama,
        };
        config.Validate(hf.FilePath);
        return config;
    }

    private static FeedForwardActivation ParseActivation(string path, string key, string value) => value.ToLowerInvariant() switch
    {
        "relu2" or "relu_sqr" or "relu-squared" or "relu_squared" => FeedForwardActivation.ReluSquared,
        "silu" or "swish" => FeedForwardActivation.Silu,
        _ => throw new ModelFormatException(path, $"activation '{value}' is not supported; expected relu2 or silu", key),
    };

    /// <summary>The vocabulary from the embedding's second dimension (no vocab_size key and no tokenizer).</summary>
    private static int EmbeddingRows(GgufFile file)
    {
        if (!file.TryGetTensor("token_embd.weight", out var embedding))
            throw new ModelFormatException(file.FilePath, "no vocab_size key, no tokenizer.ggml.tokens and no token_embd.weight tensor to take the vocabulary from", "token_embd.weight");
        if (embedding.Dims.Length != 2 || embedding.Dims[1] <= 0 || embedding.Dims[1] > int.MaxValue)
            throw new ModelFormatException(file.FilePath, $"expected a 2-D [dim, vocab] tensor with a positive vocabulary below 2^31, got [{string.Join(", ", embedding.Dims.ToArray())}]", "token_embd.weight");
        return (int)embedding.Dims[1];
    }

    /// <summary>The longest context a model may declare: 16 Mi positions (the RoPE table and the KV cache are sized by it).</summary>
    public const int MaxContextLength = 1 << 24;

    private void Validate(string path)
    {
        void Require(bool ok, string what)
        {
            if (!ok) throw new ModelFormatException(path, what);
        }
        Require(Dim > 0 && Layers > 0 && Heads > 0 && KvHeads > 0 && HeadDim > 0 && FeedForward > 0 && VocabSize > 0 && ContextLength > 0,
            $"every size must be positive (dim {Dim}, layers {Layers}, heads {Heads}, kv heads {KvHeads}, head dim {HeadDim}, ff {FeedForward}, vocab {VocabSize}, context {ContextLength})");
        Require(Heads % KvHeads == 0, $"{Heads} attention heads do not divide into {KvHeads} KV heads");
        // Sizes the engine multiplies in int: a head count × head dimension that wrapped passed every shape check.
        Require((long)Heads * HeadDim <= 1 << 24 && Dim <= 1 << 24 && FeedForward <= 1 << 24,
            $"the sizes (dim {Dim}, {Heads} heads × head dim {HeadDim}, ff {FeedForward}) are beyond what this runtime supports (2^24 per dimension)");
        Require(HeadDim % 2 == 0, $"head dimension {HeadDim} must be even for RoPE");
        Require(float.IsFinite(RmsEps) && RmsEps > 0, $"RMS norm epsilon {RmsEps} must be positive");
        // Models use 1e-5 or 1e-6. One past 1 outweighs any activation's mean square: the norms scale every token to
        // nearly nothing (1e30 loaded and generated "time time time"), which no real model is.
        Require(RmsEps <= 1, $"RMS norm epsilon {RmsEps} is not a small number (models use about 1e-5; above 1 it swamps every activation), so the file is damaged");
        // The RoPE table's own rule (θ^(−2i/d) must fall with i): a base of 1 or below loaded and then failed at the first forward pass.
        Require(float.IsFinite(RopeTheta) && RopeTheta > 1, $"RoPE base (rope_theta / rope.freq_base) {RopeTheta} must be a finite number above 1");
        Require(ContextLength <= MaxContextLength, $"context length {ContextLength} is beyond what this runtime supports ({MaxContextLength} positions)");
    }

    /// <summary>
    /// <see cref="Validate"/> and the limits that depend on the context the model runs with, which a load option may
    /// shorten: a file whose own context is too long for them loads with a shorter --ctx.
    /// </summary>
    internal ModelConfig Validated(string path)
    {
        Validate(path);
        void Require(bool ok, string what)
        {
            if (!ok) throw new ModelFormatException(path, what);
        }
        // The attention buffers the engine sizes in int: a query group's scores over the context, and its chunk
        // partials. A wrapped product loaded, then crashed the process at the first token.
        Require((long)GroupSize * ContextLength <= Array.MaxLength && (long)GroupSize * (HeadDim + 2) * ((ContextLength + 255) / 256) <= Array.MaxLength,
            $"{Heads / KvHeads} query heads per KV head ({Heads} heads, {KvHeads} KV heads) over a context of {ContextLength} positions need attention buffers beyond what this runtime supports; load with a shorter context (--ctx)");
        // The rotary table is no limit here: the engine computes it for the positions its sequences reach (RopeTable.
        // EnsurePositions), so a long declared context costs nothing until it is used (it was computed at load: 2^24
        // positions at head_dim 128 took 8 GB before the first token, and were refused at load since).
        return this;
    }
}
