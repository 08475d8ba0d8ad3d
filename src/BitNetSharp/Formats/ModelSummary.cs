using System.Text.Json;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Formats.HuggingFace;
using BitNetSharp.Formats.Safetensors;

namespace BitNetSharp.Formats;

/// <summary>The hyper-parameters a transformer loader needs; null where the file does not say.</summary>
public sealed record ModelHyperParameters
{
    public int? EmbeddingLength { get; init; }
    public int? BlockCount { get; init; }
    public int? HeadCount { get; init; }
    public int? HeadCountKv { get; init; }
    public int? FeedForwardLength { get; init; }
    public int? VocabSize { get; init; }
    public int? ContextLength { get; init; }
    public double? RopeTheta { get; init; }
    public double? RmsNormEps { get; init; }
}

/// <summary>What a model's tokenizer is: the GGUF-embedded vocabulary, or the tokenizer files of an HF directory.</summary>
public sealed record TokenizerSummary
{
    /// <summary><c>tokenizer.ggml.model</c> ("gpt2", "llama", ...); null for HF directories.</summary>
    public string? Model { get; init; }

    /// <summary><c>tokenizer.ggml.pre</c>; null when absent (as in the official 2B4T GGUF).</summary>
    public string? Pre { get; init; }

    public int? TokenCount { get; init; }
    public int? MergeCount { get; init; }
    public int? BosTokenId { get; init; }
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];

    /// <summary>Tokenizer files present in an HF directory.</summary>
    public IReadOnlyList<string> Files { get; init; } = [];
}

/// <summary>One tensor as <c>inspect</c> lists it.</summary>
/// <param name="Shape">As the file stores it: ne0 first for GGUF, outermost first for safetensors.</param>
/// <param name="Parameters">Weights it represents (4 per byte for packed U8 ternary checkpoints).</param>
/// <param name="IsProjection">One of the seven per-layer linear projections, the weights BitNet ternarizes.</param>
public sealed record TensorSummary(string Name, string Type, long[] Shape, long Parameters, long Bytes, bool IsProjection);

/// <summary>
/// The facts about a model file that <c>bitnet inspect</c> prints, gathered without loading weights: format,
/// architecture, hyper-parameters, tokenizer, tensors, parameter counts and bits per weight. Kept in the library
/// so the CLI, the server and benchmarks report the same numbers.
/// </summary>
public sealed class ModelSummary
{
    public required string Path { get; init; }
    public required ModelPathKind Kind { get; init; }

    /// <summary>"GGUF v3", "Hugging Face directory", "safetensors".</summary>
    public required string FormatDescription { get; init; }

    /// <summary>Bytes of the model file, or of all weight files of a directory.</summary>
    public required long FileBytes { get; init; }

    public string? Architecture { get; init; }
    public string? Name { get; init; }

    /// <summary>GGUF <c>general.file_type</c> (e.g. 40 = mostly I2_S); null elsewhere.</summary>
    public uint? FileType { get; init; }

    /// <summary>HF <c>quantization_config.quant_method</c>/<c>linear_class</c>, e.g. "bitnet/autobitlinear".</summary>
    public string? Quantization { get; init; }

    public int MetadataCount { get; init; }

    /// <summary>The activation bit widths the file asks for (<see cref="Model.ActivationBits"/> spec), or null (8 everywhere).</summary>
    public string? ActivationBits { get; init; }

    /// <summary>Why the file's activation-bits key cannot be used (the engine refuses the file), or null.</summary>
    public string? ActivationBitsError { get; init; }
    public required ModelHyperParameters HyperParameters { get; init; }
    public required TokenizerSummary Tokenizer { get; init; }
    public required IReadOnlyList<TensorSummary> Tensors { get; init; }

    /// <summary>Tensor count per type name, in order of first appearance.</summary>
    public required IReadOnlyList<KeyValuePair<string, int>> TypeCounts { get; init; }

    public required long TotalParameters { get; init; }
    public required long ProjectionParameters { get; init; }
    public required long TensorBytes { get; init; }
    public required long ProjectionTensorBytes { get; init; }

    /// <summary>Tensor bytes × 8 / parameters over every tensor; null without tensors.</summary>
    public double? BitsPerWeight => TotalParameters > 0 ? TensorBytes * 8.0 / TotalParameters : null;

    /// <summary>The same over the projection matrices only: ≈2.0 for I2_S, 1.6875 for TQ1_0, 16 for F16.</summary>
    public double? ProjectionBitsPerWeight => ProjectionParameters > 0 ? ProjectionTensorBytes * 8.0 / ProjectionParameters : null;

    /// <summary>Detects what <paramref name="path"/> is, opens it, and summarizes it.</summary>
    public static ModelSummary Load(string path)
    {
        switch (ModelPath.Detect(path))
        {
            case ModelPathKind.Gguf:
            {
                using var f = GgufFile.Open(path);
                return FromGguf(f);
            }
            case ModelPathKind.HuggingFaceDirectory:
            {
                using var d = HfModelDirectory.Open(path);
                return FromHfDirectory(d);
            }
            default:
            {
                using var c = SafetensorsCheckpoint.OpenFile(path);
                return FromSafetensors(c, path, config: null, tokenizerFiles: []);
            }
        }
    }

    /// <summary>GGUF projection names (llama.cpp's per-layer tensor names, including the fused QKV of some arches).</summary>
    private static readonly string[] GgufProjectionSuffixes =
        [".attn_q.weight", ".attn_k.weight", ".attn_v.weight", ".attn_qkv.weight", ".attn_output.weight", ".ffn_gate.weight", ".ffn_up.weight", ".ffn_down.weight"];

    private static readonly string[] HfProjectionSuffixes =
        [".q_proj.weight", ".k_proj.weight", ".v_proj.weight", ".o_proj.weight", ".gate_proj.weight", ".up_proj.weight", ".down_proj.weight"];

    private static bool EndsWithAny(string name, string[] suffixes)
    {
        foreach (var s in suffixes)
            if (name.EndsWith(s, StringComparison.Ordinal)) return true;
        return false;
    }

    public static ModelSummary FromGguf(GgufFile file)
    {
        var m = file.Metadata;
        string? arch = m.Architecture;
        // inspect describes files the engine refuses too (the tool for finding out why): a key of another type (a
        // per-layer array of head counts, as OpenELM writes) reads as absent here instead of aborting the summary.
        static T? Lenient<T>(Func<T?> read)
        {
            try
            {
                return read();
            }
            catch (ModelFormatException)
            {
                return default;
            }
        }
        int? ArchInt(string suffix) => Lenient<int?>(() => arch is not null && m.TryGetUInt32(arch + "." + suffix, out var v) ? checked((int)Math.Min(v, int.MaxValue)) : null);
        // float32 → shortest decimal → double, so 1e-5f reports as 1E-05 rather than 9.999999747378752E-06.
        double? ArchFloat(string suffix) => Lenient<double?>(() => arch is not null && m.TryGetFloat32(arch + "." + suffix, out var v)
            ? double.Parse(v.ToString(System.Globalization.CultureInfo.InvariantCulture), System.Globalization.CultureInfo.InvariantCulture)
            : null);
        string? activationBits = null, activationBitsError = null;
        try
        {
            activationBits = ArchInt("block_count") is { } layers && Model.ActivationBits.FromGguf(file, layers) is { } bits ? bits.ToString() : null;
        }
        catch (ModelFormatException e)
        {
            activationBitsError = e.Message;
        }

        // Lenient too: a key of another type reads as absent (a string general.file_type threw out of inspect).
        var tokens = Lenient(() => m.TryGetStringArray("tokenizer.ggml.tokens", out var t) ? t : null);
        var merges = Lenient(() => m.TryGetArray("tokenizer.ggml.merges", out var a) ? a : null);
        int? heads = ArchInt("attention.head_count");
        var hyper = new ModelHyperParameters
        {
            EmbeddingLength = ArchInt("embedding_length"),
            BlockCount = ArchInt("block_count"),
            HeadCount = heads,
            HeadCountKv = ArchInt("attention.head_count_kv") ?? heads,
            FeedForwardLength = ArchInt("feed_forward_length"),
            VocabSize = ArchInt("vocab_size") ?? tokens?.Length,
            ContextLength = ArchInt("context_length"),
            RopeTheta = ArchFloat("rope.freq_base"),
            RmsNormEps = ArchFloat("attention.layer_norm_rms_epsilon"),
        };
        var tokenizer = new TokenizerSummary
        {
            Model = Lenient(() => m.TryGetString("tokenizer.ggml.model", out var model) ? model : null),
            Pre = Lenient(() => m.TryGetString("tokenizer.ggml.pre", out var pre) ? pre : null),
            TokenCount = tokens?.Length,
            MergeCount = merges?.Count,
            BosTokenId = Lenient<int?>(() => m.TryGetInt32("tokenizer.ggml.bos_token_id", out var bos) ? bos : null),
            EosTokenIds = Lenient<int?>(() => m.TryGetInt32("tokenizer.ggml.eos_token_id", out var eos) ? eos : null) is { } eosId ? [eosId] : [],
        };

        var tensors = new List<TensorSummary>(file.Tensors.Count);
        foreach (var t in file.Tensors)
            tensors.Add(new TensorSummary(t.Name, GgmlTypeInfo.Name(t.Type), t.Dims.ToArray(), t.ElementCount, t.ByteSize, EndsWithAny(t.Name, GgufProjectionSuffixes)));

        var totals = Tally(tensors);
        return new ModelSummary
        {
            Path = file.FilePath,
            Kind = ModelPathKind.Gguf,
            FormatDescription = $"GGUF v{file.Version}",
            FileBytes = file.FileLength,
            Architecture = arch,
            Name = Lenient(() => m.TryGetString("general.name", out var name) ? name : null),
            FileType = Lenient<uint?>(() => m.TryGetUInt32("general.file_type", out var ft) ? ft : null),
            MetadataCount = m.Count,
            ActivationBits = activationBits,
            ActivationBitsError = activationBitsError,
            HyperParameters = hyper,
            Tokenizer = tokenizer,
            Tensors = tensors,
            TypeCounts = totals.TypeCounts,
            TotalParameters = totals.Parameters,
            ProjectionParameters = totals.ProjectionParameters,
            TensorBytes = totals.Bytes,
            ProjectionTensorBytes = totals.ProjectionBytes,
        };
    }

    /// <summary>
    /// A directory's summary; its stop ids are the ones generation stops on (generation_config.json's, else config.json's,
    /// as transformers and generate read them): config.json's alone were shown, [] where generate stopped on [262, 7].
    /// </summary>
    public static ModelSummary FromHfDirectory(HfModelDirectory directory)
    {
        IReadOnlyList<int>? ids;
        try
        {
            ids = HfConfig.GenerationStopIds(directory.DirectoryPath).Ids;
        }
        catch (ModelFormatException)
        {
            ids = null; // a damaged generation_config.json: the rest is still described (generate names the damage)
        }
        return FromSafetensors(directory.Weights, directory.DirectoryPath, directory.Config, directory.TokenizerFiles, ids);
    }

    /// <summary>
    /// Summarizes safetensors weights, with the directory's config when there is one. In a BitNet checkpoint
    /// (<c>quant_method</c> "bitnet") a U8 projection packs four ternary weights per byte along dim 0 (FORMATS.md §5.1),
    /// so it counts as four parameters per element.
    /// </summary>
    public static ModelSummary FromSafetensors(SafetensorsCheckpoint weights, string path, HfConfig? config, IReadOnlyList<string> tokenizerFiles,
        IReadOnlyList<int>? eosTokenIds = null)
    {
        bool packedTernary = string.Equals(config?.Quantization?.QuantMethod, "bitnet", StringComparison.OrdinalIgnoreCase);
        var tensors = new List<TensorSummary>(weights.Tensors.Count);
        foreach (var t in weights.Tensors)
        {
            bool projection = EndsWithAny(t.Name, HfProjectionSuffixes);
            long parameters = projection && packedTernary && t.DType == SafetensorsDType.U8 ? t.ElementCount * 4 : t.ElementCount;
            tensors.Add(new TensorSummary(t.Name, t.DTypeName, t.Shape.ToArray(), parameters, t.ByteLength, projection));
        }

        var hyper = config is null ? new ModelHyperParameters() : new ModelHyperParameters
        {
            EmbeddingLength = config.HiddenSize,
            BlockCount = config.NumHiddenLayers,
            HeadCount = config.NumAttentionHeads,
            HeadCountKv = config.NumKeyValueHeads,
            FeedForwardLength = config.IntermediateSize,
            VocabSize = config.VocabSize,
            ContextLength = config.MaxPositionEmbeddings,
            RopeTheta = config.RopeTheta,
            RmsNormEps = config.RmsNormEps,
        };
        var q = config?.Quantization;
        var totals = Tally(tensors);
        return new ModelSummary
        {
            Path = path,
            Kind = config is null ? ModelPathKind.Safetensors : ModelPathKind.HuggingFaceDirectory,
            FormatDescription = config is null ? "safetensors" : $"Hugging Face directory ({weights.Files.Count} safetensors file{(weights.Files.Count == 1 ? "" : "s")})",
            FileBytes = weights.TotalFileBytes,
            Architecture = config is null ? null : config.Architectures.Count > 0 ? config.Architectures[0] : config.ModelType,
            Name = config?.ModelType,
            Quantization = q is null ? null : string.Join("/", new[] { q.QuantMethod, q.LinearClass, q.QuantizationMode }.Where(s => s is not null)),
            MetadataCount = weights.Files.Count > 0 ? weights.Files[0].Metadata.Count : 0,
            HyperParameters = hyper,
            Tokenizer = new TokenizerSummary
            {
                BosTokenId = config?.BosTokenId,
                EosTokenIds = eosTokenIds ?? config?.EosTokenIds ?? [],
                TokenCount = config?.VocabSize,
                Files = tokenizerFiles,
            },
            Tensors = tensors,
            TypeCounts = totals.TypeCounts,
            TotalParameters = totals.Parameters,
            ProjectionParameters = totals.ProjectionParameters,
            TensorBytes = totals.Bytes,
            ProjectionTensorBytes = totals.ProjectionBytes,
        };
    }

    private sealed record TensorTotals(long Parameters, long ProjectionParameters, long Bytes, long ProjectionBytes, List<KeyValuePair<string, int>> TypeCounts);

    /// <summary>The totals every format derives the same way from its tensor list.</summary>
    private static TensorTotals Tally(List<TensorSummary> tensors)
    {
        long total = 0, projection = 0, bytes = 0, projectionBytes = 0;
        var counts = new List<KeyValuePair<string, int>>();
        var index = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var t in tensors)
        {
            total += t.Parameters;
            bytes += t.Bytes;
            if (t.IsProjection)
            {
                projection += t.Parameters;
                projectionBytes += t.Bytes;
            }
            if (index.TryGetValue(t.Type, out int i)) counts[i] = new(t.Type, counts[i].Value + 1);
            else
            {
                index[t.Type] = counts.Count;
                counts.Add(new(t.Type, 1));
            }
        }
        return new TensorTotals(total, projection, bytes, projectionBytes, counts);
    }

    /// <summary>Writes the summary as one JSON object (snake_case keys); tensors only when <paramref name="includeTensors"/>.</summary>
    public void WriteJson(Utf8JsonWriter w, bool includeTensors)
    {
        w.WriteStartObject();
        w.WriteString("path", Path);
        w.WriteString("format", Kind switch
        {
            ModelPathKind.Gguf => "gguf",
            ModelPathKind.HuggingFaceDirectory => "hf-directory",
            _ => "safetensors",
        });
        w.WriteString("format_description", FormatDescription);
        w.WriteNumber("file_bytes", FileBytes);
        WriteNullable(w, "architecture", Architecture);
        WriteNullable(w, "name", Name);
        if (FileType is { } ft) w.WriteNumber("file_type", ft); else w.WriteNull("file_type");
        WriteNullable(w, "quantization", Quantization);
        w.WriteNumber("metadata_count", MetadataCount);
        WriteNullable(w, "activation_bits", ActivationBits);
        if (ActivationBitsError is not null) w.WriteString("activation_bits_error", ActivationBitsError); // null above is not "8 everywhere" then

        w.WriteStartObject("hyperparameters");
        var h = HyperParameters;
        WriteNullable(w, "embedding_length", h.EmbeddingLength);
        WriteNullable(w, "block_count", h.BlockCount);
        WriteNullable(w, "head_count", h.HeadCount);
        WriteNullable(w, "head_count_kv", h.HeadCountKv);
        WriteNullable(w, "feed_forward_length", h.FeedForwardLength);
        WriteNullable(w, "vocab_size", h.VocabSize);
        WriteNullable(w, "context_length", h.ContextLength);
        WriteNullable(w, "rope_theta", h.RopeTheta);
        WriteNullable(w, "rms_norm_eps", h.RmsNormEps);
        w.WriteEndObject();

        w.WriteStartObject("tokenizer");
        WriteNullable(w, "model", Tokenizer.Model);
        WriteNullable(w, "pre", Tokenizer.Pre);
        WriteNullable(w, "token_count", Tokenizer.TokenCount);
        WriteNullable(w, "merge_count", Tokenizer.MergeCount);
        WriteNullable(w, "bos_token_id", Tokenizer.BosTokenId);
        w.WriteStartArray("eos_token_ids");
        foreach (var id in Tokenizer.EosTokenIds) w.WriteNumberValue(id);
        w.WriteEndArray();
        w.WriteStartArray("files");
        foreach (var f in Tokenizer.Files) w.WriteStringValue(f);
        w.WriteEndArray();
        w.WriteEndObject();

        w.WriteNumber("tensor_count", Tensors.Count);
        w.WriteStartObject("tensor_types");
        foreach (var (type, count) in TypeCounts) w.WriteNumber(type, count);
        w.WriteEndObject();
        w.WriteStartObject("parameters");
        w.WriteNumber("total", TotalParameters);
        w.WriteNumber("projection", ProjectionParameters);
        w.WriteEndObject();
        w.WriteStartObject("tensor_bytes");
        w.WriteNumber("total", TensorBytes);
        w.WriteNumber("projection", ProjectionTensorBytes);
        w.WriteEndObject();
        w.WriteStartObject("bits_per_weight");
        WriteNullable(w, "overall", BitsPerWeight);
        WriteNullable(w, "projection", ProjectionBitsPerWeight);
        w.WriteEndObject();

        if (includeTensors)
        {
            w.WriteStartArray("tensors");
            foreach (var t in Tensors)
            {
                w.WriteStartObject();
                w.WriteString("name", t.Name);
                w.WriteString("type", t.Type);
                w.WriteStartArray("shape");
                foreach (var d in t.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteNumber("parameters", t.Parameters);
                w.WriteNumber("bytes", t.Bytes);
                w.WriteBoolean("projection", t.IsProjection);
                w.WriteEndObject();
            }
            w.WriteEndArray();
        }
        w.WriteEndObject();
    }

    private static void WriteNullable(Utf8JsonWriter w, string name, string? value)
    {
        if (value is null) w.WriteNull(name); else w.WriteString(name, value);
    }

    private static void WriteNullable(Utf8JsonWriter w, string name, int? value)
    {
        if (value is { } v) w.WriteNumber(name, v); else w.WriteNull(name);
    }

    private static void WriteNullable(Utf8JsonWriter w, string name, double? value)
    {
        // JSON has no NaN or infinity; a corrupt float becomes null rather than invalid output.
        if (value is { } v && double.IsFinite(v)) w.WriteNumber(name, v); else w.WriteNull(name);
    }
}
