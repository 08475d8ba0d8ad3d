using System.Text.Json;

namespace BitNetSharp.Formats.HuggingFace;

/// <summary>
/// The fields of a Hugging Face <c>config.json</c> that a BitNet loader needs. Required fields (sizes and counts)
/// throw a <see cref="ModelFormatException"/> naming the file and field when missing or mistyped; optional ones are
/// null when absent, except <see cref="NumKeyValueHeads"/>, which defaults to the head count as in transformers.
/// </summary>
public sealed class HfConfig
{
    public const string FileName = "config.json";

    public required string FilePath { get; init; }

    /// <summary>e.g. ["BitNetForCausalLM"].</summary>
    public required IReadOnlyList<string> Architectures { get; init; }

    /// <summary>e.g. "bitnet" (2B4T) or "llama" (1bitLLM).</summary>
    public string? ModelType { get; init; }

    public required int HiddenSize { get; init; }
    public required int IntermediateSize { get; init; }
    public required int NumHiddenLayers { get; init; }
    public required int NumAttentionHeads { get; init; }

    /// <summary><c>num_key_value_heads</c>, or <see cref="NumAttentionHeads"/> when absent (no GQA).</summary>
    public required int NumKeyValueHeads { get; init; }

    public required int VocabSize { get; init; }
    public double? RmsNormEps { get; init; }
    /// <summary><c>rope_theta</c>, read at the top level (transformers 4.x) or inside <c>rope_parameters</c> (5.x).</summary>
    public double? RopeTheta { get; init; }

    /// <summary>
    /// <c>rope_type</c> (or the older <c>type</c>) of <c>rope_parameters</c> / <c>rope_scaling</c>; null when neither
    /// names one. "default" is plain RoPE; anything else (llama3, yarn, linear, dynamic…) rescales frequencies.
    /// </summary>
    public string? RopeType { get; init; }

    /// <summary>Where <see cref="RopeType"/> was read (<c>rope_scaling.type</c>, <c>rope_parameters.rope_type</c>…), for errors.</summary>
    public string? RopeTypeKey { get; init; }

    /// <summary>The RoPE scaling factor (<c>rope_parameters.factor</c> or <c>rope_scaling.factor</c>), null when absent.</summary>
    public double? RopeFactor { get; init; }

    /// <summary>Where <see cref="RopeFactor"/> was read, for errors.</summary>
    public string RopeFactorKey { get; init; } = "rope_scaling.factor";

    public int? MaxPositionEmbeddings { get; init; }

    /// <summary>e.g. "relu2" (2B4T) or "silu".</summary>
    public string? HiddenAct { get; init; }

    public bool? TieWordEmbeddings { get; init; }
    public int? BosTokenId { get; init; }

    /// <summary><c>eos_token_id</c>, which may be one id or a list; empty when absent.</summary>
    public required IReadOnlyList<int> EosTokenIds { get; init; }

    /// <summary><c>torch_dtype</c>, or <c>dtype</c> as transformers 5 writes it.</summary>
    public string? TorchDType { get; init; }

    /// <summary><c>attention_bias</c> / <c>mlp_bias</c> (Llama's config): projections with a bias, which the engine does not add.</summary>
    public bool? AttentionBias { get; init; }
    public bool? MlpBias { get; init; }

    /// <summary><c>head_dim</c> when the config states it; otherwise hidden_size / heads applies.</summary>
    public int? HeadDim { get; init; }

    /// <summary><c>partial_rotary_factor</c> (top level, or in <c>rope_parameters</c> as transformers 5 writes it): the share of each head RoPE rotates; null when absent.</summary>
    public double? PartialRotaryFactor { get; init; }

    /// <summary>Where <see cref="PartialRotaryFactor"/> was read, for errors.</summary>
    public string PartialRotaryFactorKey { get; init; } = "partial_rotary_factor";

    public HfQuantizationConfig? Quantization { get; init; }

    /// <summary>Reads and validates <paramref name="path"/>.</summary>
    public static HfConfig Load(string path)
    {
        byte[] bytes;
        PathIdentity.RequireRegularFile(path, Path.GetFileName(path));
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new ModelFormatException(path, "no such file; a Hugging Face model directory needs a config.json", inner: e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelFormatException(path, $"cannot read the file: {e.Message}", inner: e);
        }
        return Parse(bytes, path);
    }

    /// <summary>
    /// The ids a Hugging Face model's generation stops on, as transformers reads them: generation_config.json's
    /// <c>eos_token_id</c> (one id or a list) when that file exists, else config.json's; with the file that holds them
    /// (null when neither exists). A missing config.json gives none (the weights' loader reports it); a file that cannot
    /// be read or parsed throws <see cref="ModelFormatException"/> naming it.
    /// </summary>
    public static (IReadOnlyList<int> Ids, string? Source) GenerationStopIds(string directory)
    {
        string generation = Path.Combine(directory, "generation_config.json");
        if (File.Exists(generation)) return (EosIds(generation), generation);
        string config = Path.Combine(directory, FileName);
        return File.Exists(config) ? (EosIds(config), config) : ([], null);
    }

    private static IReadOnlyList<int> EosIds(string path)
    {
        byte[] bytes;
        PathIdentity.RequireRegularFile(path, Path.GetFileName(path));
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelFormatException(path, $"cannot read the file: {e.Message}", inner: e);
        }
        if (!System.Text.Unicode.Utf8.IsValid(bytes)) throw new ModelFormatException(path, "not valid UTF-8 text");
        try
        {
            using var document = JsonDocument.Parse(bytes, new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
            JsonText.Require(document.RootElement, path);
            if (document.RootElement.ValueKind != JsonValueKind.Object)
                throw new ModelFormatException(path, $"the top level is a JSON {document.RootElement.ValueKind}, expected an object");
            return new Fields(document.RootElement, path).IntOrIntList("eos_token_id");
        }
        catch (JsonException e)
        {
            throw new ModelFormatException(path, $"not valid JSON: {e.Message}", inner: e);
        }
    }

    /// <summary>Parses config.json bytes; <paramref name="path"/> is used in error messages.</summary>
    public static HfConfig Parse(ReadOnlyMemory<byte> json, string path)
    {
        if (!System.Text.Unicode.Utf8.IsValid(json.Span))
            throw new ModelFormatException(path, "not valid UTF-8 text");
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(json, new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        }
        catch (JsonException e)
        {
            throw new ModelFormatException(path, $"not valid JSON: {e.Message}", inner: e);
        }
        using (document)
        {
            JsonText.Require(document.RootElement, path);
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw new ModelFormatException(path, $"the top level is a JSON {root.ValueKind}, expected an object");
            var r = new Fields(root, path);
            int heads = r.RequiredInt("num_attention_heads");
            return new HfConfig
            {
                FilePath = path,
                Architectures = r.StringList("architectures"),
                ModelType = r.OptionalString("model_type"),
                HiddenSize = r.RequiredInt("hidden_size"),
                IntermediateSize = r.RequiredInt("intermediate_size"),
                NumHiddenLayers = r.RequiredInt("num_hidden_layers"),
                NumAttentionHeads = heads,
                // transformers: absent means the config class's default (BitNetConfig: 5, 2B4T's), an explicit null
                // means num_attention_heads (every class's "backward compatibility" rule, and Llama's default).
                NumKeyValueHeads = r.OptionalInt("num_key_value_heads")
                    ?? (!root.TryGetProperty("num_key_value_heads", out _) && IsBitNetConfig(root) ? BitNetDefaultKeyValueHeads : heads),
                VocabSize = r.RequiredInt("vocab_size"),
                RmsNormEps = r.OptionalDouble("rms_norm_eps"),
                RopeTheta = r.OptionalDouble("rope_theta") ?? RopeField(root, path, "rope_parameters", r2 => r2.OptionalDouble("rope_theta")),
                RopeType = RopeField(root, path, "rope_parameters", RopeTypeOf) ?? RopeField(root, path, "rope_scaling", RopeTypeOf),
                RopeTypeKey = RopeField(root, path, "rope_parameters", f => RopeTypeKeyOf(f, "rope_parameters")) ?? RopeField(root, path, "rope_scaling", f => RopeTypeKeyOf(f, "rope_scaling")),
                RopeFactor = RopeField(root, path, "rope_parameters", f => f.OptionalDouble("factor")) ?? RopeField(root, path, "rope_scaling", f => f.OptionalDouble("factor")),
                RopeFactorKey = RopeField(root, path, "rope_parameters", f => f.OptionalDouble("factor")) is not null ? "rope_parameters.factor" : "rope_scaling.factor",
                MaxPositionEmbeddings = r.OptionalInt("max_position_embeddings"),
                HiddenAct = r.OptionalString("hidden_act"),
                TieWordEmbeddings = r.OptionalBool("tie_word_embeddings"),
                BosTokenId = r.OptionalInt("bos_token_id"),
                EosTokenIds = r.IntOrIntList("eos_token_id"),
                TorchDType = r.OptionalString("torch_dtype") ?? r.OptionalString("dtype"),
                AttentionBias = r.OptionalBool("attention_bias"),
                MlpBias = r.OptionalBool("mlp_bias"),
                HeadDim = r.OptionalInt("head_dim"),
                PartialRotaryFactor = r.OptionalDouble("partial_rotary_factor") ?? RopeField(root, path, "rope_parameters", f => f.OptionalDouble("partial_rotary_factor")),
                PartialRotaryFactorKey = r.OptionalDouble("partial_rotary_factor") is not null ? "partial_rotary_factor" : "rope_parameters.partial_rotary_factor",
                Quantization = HfQuantizationConfig.Read(root, path),
            };
        }
    }

    private static string? RopeTypeOf(Fields f) => f.OptionalString("rope_type") ?? f.OptionalString("type");

    private static string? RopeTypeKeyOf(Fields f, string section) =>
        f.OptionalString("rope_type") is not null ? section + ".rope_type" : f.OptionalString("type") is not null ? section + ".type" : null;

    /// <summary>transformers' BitNetConfig default for num_key_value_heads (the 2B4T shape's).</summary>
    public const int BitNetDefaultKeyValueHeads = 5;

    /// <summary>Whether transformers builds this config as a BitNetConfig (model_type "bitnet"), whose defaults differ from Llama's.</summary>
    private static bool IsBitNetConfig(JsonElement root) =>
        root.TryGetProperty("model_type", out var t) && t.ValueKind == JsonValueKind.String && t.GetString() == "bitnet";

    /// <summary>A field of the <paramref name="section"/> object (rope_parameters / rope_scaling), null when absent.</summary>
    private static T? RopeField<T>(JsonElement root, string path, string section, Func<Fields, T?> read)
    {
        if (!root.TryGetProperty(section, out var obj) || obj.ValueKind == JsonValueKind.Null) return default;
        if (obj.ValueKind != JsonValueKind.Object)
            throw new ModelFormatException(path, $"found a JSON {obj.ValueKind}, expected an object", section);
        return read(new Fields(obj, path, section + "."));
    }

    /// <summary>Typed field access over one JSON object, with errors that name the file and the field.</summary>
    internal readonly struct Fields(JsonElement obj, string path, string prefix = "")
    {
        private ModelFormatException Error(string field, string message) => new(path, message, prefix + field);

        private bool TryGet(string field, out JsonElement value) =>
            obj.TryGetProperty(field, out value) && value.ValueKind != JsonValueKind.Null;

        public int RequiredInt(string field) =>
            OptionalInt(field) ?? throw Error(field, "required field is missing");

        /// <summary>Non-negative integers only: every count and id in a config is one.</summary>
        public int? OptionalInt(string field)
        {
            if (!TryGet(field, out var v)) return null;
            if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out int n) || n < 0)
                throw Error(field, $"found {Describe(v)}, expected a non-negative integer");
            return n;
        }

        public double? OptionalDouble(string field)
        {
            if (!TryGet(field, out var v)) return null;
            if (v.ValueKind != JsonValueKind.Number || !v.TryGetDouble(out double d))
                throw Error(field, $"found {Describe(v)}, expected a number");
            return d;
        }

        public string? OptionalString(string field)
        {
            if (!TryGet(field, out var v)) return null;
            return v.ValueKind == JsonValueKind.String ? v.GetString() : throw Error(field, $"found {Describe(v)}, expected a string");
        }

        public bool? OptionalBool(string field)
        {
            if (!TryGet(field, out var v)) return null;
            return v.ValueKind switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw Error(field, $"found {Describe(v)}, expected true or false"),
            };
        }

        public IReadOnlyList<string> StringList(string field)
        {
            if (!TryGet(field, out var v)) return [];
            if (v.ValueKind != JsonValueKind.Array) throw Error(field, $"found {Describe(v)}, expected a list of strings");
            var list = new List<string>();
            foreach (var item in v.EnumerateArray())
            {
                if (item.ValueKind != JsonValueKind.String) throw Error(field, $"found {Describe(item)} in the list, expected strings");
                list.Add(item.GetString()!);
            }
            return list;
        }

        public IReadOnlyList<int> IntOrIntList(string field)
        {
            if (!TryGet(field, out var v)) return [];
            if (v.ValueKind == JsonValueKind.Number) return [OptionalInt(field)!.Value];
            if (v.ValueKind != JsonValueKind.Array) throw Error(field, $"found {Describe(v)}, expected an integer or a list of integers");
            var list = new List<int>();
            foreach (var item in v.EnumerateArray())
            {
                if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt32(out int n) || n < 0)
                    throw Error(field, $"found {Describe(item)} in the list, expected non-negative integers");
                list.Add(n);
            }
            return list;
        }

        private static string Describe(JsonElement v)
        {
            // true, false and null are their own text ("found true true" before).
            if (v.ValueKind is JsonValueKind.True or JsonValueKind.False or JsonValueKind.Null) return v.ValueKind.ToString().ToLowerInvariant();
            var text = v.GetRawText();
            return $"{v.ValueKind.ToString().ToLowerInvariant()} {(text.Length > 40 ? text[..40] + "…" : text)}";
        }
    }
}

/// <summary>
/// <c>quantization_config</c> of a BitNet checkpoint. <see cref="LinearClass"/> decides what <c>weight_scale</c>
/// means: "autobitlinear" multiplies, "bitlinear" or absent divides (FORMATS.md §5.2).
/// </summary>
public sealed class HfQuantizationConfig
{
    /// <summary>e.g. "bitnet".</summary>
    public string? QuantMethod { get; init; }

    /// <summary>"autobitlinear", "bitlinear" or null.</summary>
    public string? LinearClass { get; init; }

    /// <summary>"offline" (packed ternary weights) or "online" (bf16 masters quantized per forward).</summary>
    public string? QuantizationMode { get; init; }

    /// <summary>Falcon-E style extra RMSNorm before each BitLinear's activation quantization.</summary>
    public bool? UseRmsNorm { get; init; }

    /// <summary>True when <c>weight_scale</c> multiplies the ternary weights (autobitlinear) rather than divides them.</summary>
    public bool WeightScaleMultiplies => string.Equals(LinearClass, "autobitlinear", StringComparison.OrdinalIgnoreCase);

    internal static HfQuantizationConfig? Read(JsonElement root, string path)
    {
        if (!root.TryGetProperty("quantization_config", out var q) || q.ValueKind == JsonValueKind.Null) return null;
        if (q.ValueKind != JsonValueKind.Object)
            throw new ModelFormatException(path, $"found a JSON {q.ValueKind}, expected an object", "quantization_config");
        var r = new HfConfig.Fields(q, path, "quantization_config.");
        return new HfQuantizationConfig
        {
            QuantMethod = r.OptionalString("quant_method"),
            LinearClass = r.OptionalString("linear_class"),
            QuantizationMode = r.OptionalString("quantization_mode"),
            UseRmsNorm = r.OptionalBool("use_rms_norm"),
        };
    }
}
