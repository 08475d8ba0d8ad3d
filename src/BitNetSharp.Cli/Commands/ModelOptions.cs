using System.CommandLine;
using System.Globalization;
using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Generation;
using BitNetSharp.Generation.Sampling;
using BitNetSharp.Model;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Cli.Commands;

/// <summary>The options every model-running command shares (-m, -t, --ctx, --kv-type) and the sampling flags, with their parsing.</summary>
public sealed class ModelOptions
{
    public Option<string?> Model { get; } = new("--model", "-m") { Description = "A .gguf file or a Hugging Face model directory (default: the bundled model)." };
    public Option<int> Threads { get; } = new("--threads", "-t") { Description = "Worker threads (default: physical cores)." };
    public Option<int> Context { get; } = new("--ctx", "-c") { Description = "Context length to allocate (default and most: the model's)." };
    public Option<string> KvType { get; } = new("--kv-type") { Description = "KV-cache element type: f32, f16, int8 or fp8.", DefaultValueFactory = _ => "f16" };

    public Option<string?> ActivationBitsSpec { get; } = NewActivationBitsOption();

    public Option<string?> HeadType { get; } = NewHeadTypeOption();

    public Option<string?> WeightPagesSpec { get; } = NewWeightPagesOption();

    public static Option<string?> NewWeightPagesOption() => new("--weight-pages")
    {
        Description = "Where a GGUF model's bytes live while it runs: file (the file mapped: nothing copied, shared with other processes), "
            + "huge (a private copy in 2 MiB pages, Linux transparent huge pages: decode streams every weight, and 4 KiB pages cost a TLB miss each), "
            + "auto (huge for models of 64 MiB or more where THP is available and free memory holds the copy, else file). Default: auto.",
    };

    /// <summary>--weight-pages's value (null: auto).</summary>
    public static WeightPages ParseWeightPages(string? value) => value?.Trim().ToLowerInvariant() switch
    {
        null or "auto" => WeightPages.Auto,
        "file" or "map" or "mmap" => WeightPages.File,
        "huge" or "hugepages" => WeightPages.Huge,
        _ => throw new UsageException($"--weight-pages '{value}' is not one of auto, file, huge."),
    };

    /// <summary>How the loaded model's bytes are held, for reports: "2 MiB pages (copy): N of M MiB backed" or "file mapping".</summary>
    public static string DescribeWeightPages(ModelWeights weights)
    {
        // An HF checkpoint's projections are decoded from safetensors into memory: "file mapping" said otherwise, and
        // --weight-pages (which acts on a GGUF's bytes) was ignored without a word.
        if (weights.Gguf is not { } g) return "decoded into memory from the Hugging Face checkpoint (--weight-pages applies to GGUF files)";
        if (!g.InHugePages) return "file mapping (4 KiB pages)";
        long backed = Math.Min(g.HugePageBackedBytes, g.FileLength);
        return backed >= 0
            ? $"private copy, 2 MiB pages: {backed / 1048576.0:F0} of {g.FileLength / 1048576.0:F0} MiB backed"
            : "private copy advised for 2 MiB pages";
    }

    /// <summary>JSON's <c>weight_pages</c>: "huge" (a private copy in 2 MiB pages), "file" (the GGUF mapped) or "decoded" (an HF checkpoint).</summary>
    public static string WeightPagesKind(ModelWeights weights) => weights.Gguf is not { } g ? "decoded" : g.InHugePages ? "huge" : "file";

    public static Option<string?> NewHeadTypeOption() => new("--head-type")
    {
        Description = "Re-encode the output head as the model loads: f16, q8_0 or q6_k (default: as stored; the official 2B4T GGUF stores f16). "
            + "A tied token embedding is re-encoded with it, as `convert --embedding-type` would.",
    };

    /// <summary>--head-type's value as a type, or null (as stored).</summary>
    public static GgmlType? ParseHeadType(string? value) => value?.Trim().ToLowerInvariant() switch
    {
        null => null,
        "f16" => GgmlType.F16,
        "q8_0" => GgmlType.Q8_0,
        "q6_k" => GgmlType.Q6_K,
        _ => throw new UsageException($"--head-type '{value}' is not one of f16, q8_0, q6_k."),
    };

    /// <summary>What -c does not change but loading does: --head-type, --weight-pages.</summary>
    public ModelLoadOptions LoadOptions(ParseResult r) => new() { HeadType = ParseHeadType(r.GetValue(HeadType)), WeightPages = ParseWeightPages(r.GetValue(WeightPagesSpec)) };

    public static Option<string?> NewActivationBitsOption(string name = "--activation-bits") => new(name)
    {
        Description = "Activation bit widths (8, 6, 5, 4, 3, 2) of the BitLinear inputs, over the model file's: 4 (all), "
            + "8,8,4,4 (per layer), qkv=4,gate_up=4 (per input), 2:down=6 (one layer's input).",
    };

    public void AddTo(Command command)
    {
        command.Options.Add(Model);
        command.Options.Add(Threads);
        command.Options.Add(Context);
        command.Options.Add(KvType);
        command.Options.Add(ActivationBitsSpec);
        command.Options.Add(HeadType);
        command.Options.Add(WeightPagesSpec);
    }

    /// <summary>Loads the model of -m (or the bundled one) with --activation-bits applied.</summary>
    public (ModelWeights Weights, BitNetTokenizer? Tokenizer) Load(ParseResult r)
    {
        var (weights, tokenizer) = Load(ResolveModel(r.GetValue(Model)), LoadOptions(r));
        try
        {
            ApplyActivationBits(weights, r.GetValue(ActivationBitsSpec));
            return (weights, tokenizer);
        }
        catch
        {
            weights.Dispose();
            throw;
        }
    }

    /// <summary>Parses a bit-width spec over the weights' own widths (a usage error names the bad item).</summary>
    public static ActivationBits? ParseActivationBits(ModelWeights weights, string? spec, string option = "--activation-bits")
    {
        if (spec is null) return weights.ActivationBits;
        try
        {
            return ActivationBits.Parse(spec, weights.Config.Layers, weights.ActivationBits, option);
        }
        catch (ArgumentException e)
        {
            throw new UsageException(e.Message);
        }
    }

    public static void ApplyActivationBits(ModelWeights weights, string? spec, string option = "--activation-bits") =>
        weights.ActivationBits = ParseActivationBits(weights, spec, option);

    /// <summary>The model path from -m, else the bundled model next to the tool or in the repository's models/.</summary>
    public static string ResolveModel(string? path)
    {
        // `-m "$MODEL"` with MODEL unset: an empty -m silently ran the bundled model.
        if (path is not null && string.IsNullOrWhiteSpace(path))
            throw new UsageException("--model (-m) is empty; give a .gguf file or a Hugging Face model directory, or leave -m out for the bundled model.");
        if (path is not null) return path;
        foreach (var candidate in BundledModelCandidates())
            if (File.Exists(candidate)) return candidate;
        throw new UsageException("no model given and no bundled model found; pass -m path/to/model.gguf (or a Hugging Face model directory).");
    }

    public const string BundledModelFile = "bitnet-tinystories.gguf";

    /// <summary>The most worker threads -t takes (as bench's --threads): 2^31 − 1 threw out of memory allocating the pool.</summary>
    public const int MaxThreads = 4096;

    private static IEnumerable<string> BundledModelCandidates()
    {
        yield return Path.Combine(AppContext.BaseDirectory, "models", BundledModelFile);
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            yield return Path.Combine(dir.FullName, "models", BundledModelFile);
        yield return Path.Combine(Environment.CurrentDirectory, "models", BundledModelFile);
    }

    /// <summary>
    /// Says on <paramref name="error"/> when --ctx asks for more positions than the model has (it was cut to the model's
    /// silently, and a chat reported "context full (256 tokens, --ctx)" to a user who asked for 4096).
    /// </summary>
    public void NoteContext(ParseResult r, ModelWeights weights, TextWriter error)
    {
        int context = r.GetValue(Context);
        if (context > weights.Config.ContextLength)
            error.WriteLine($"note: --ctx {context} is more than the model's context of {weights.Config.ContextLength} tokens (its positions end there); using {weights.Config.ContextLength}.");
    }

    /// <summary><see cref="NoteContext"/>, and the tokenizer checked against the model's vocabulary (<see cref="VocabularyWarning"/>).</summary>
    public void NoteModel(ParseResult r, ModelWeights weights, BitNetTokenizer? tokenizer, TextWriter error)
    {
        NoteContext(r, weights, error);
        if (weights.HfDirectory?.Note is { } note) error.WriteLine("note: " + note + ".");
        if (VocabularyWarning(weights, tokenizer) is { } warning) error.WriteLine("warning: " + warning);
        if (tokenizer?.CoverageWarning is { } coverage) error.WriteLine("warning: " + coverage);
    }

    /// <summary>
    /// A warning when the tokenizer does not fit the model's vocabulary, else null: a GGUF whose token list is shorter
    /// than its embedding (100 tokens for 4096 rows ran and printed garbage without a word), or a Hugging Face
    /// tokenizer under half the rows or over them (a few hundred padding rows past the tokenizer are common there).
    /// </summary>
    public static string? VocabularyWarning(ModelWeights weights, BitNetTokenizer? tokenizer)
    {
        if (tokenizer is null) return null;
        int tokens = tokenizer.VocabularySize, rows = weights.Config.VocabSize;
        bool gguf = weights.Gguf is not null;
        if (tokens < rows && (gguf || tokens < rows / 2))
            return $"the tokenizer has {tokens} tokens and the model {rows} vocabulary rows: ids {tokens} to {rows - 1} can never be written as text and are not sampled. Is this the model's own tokenizer?";
        if (tokens > rows)
            return $"the tokenizer has {tokens} tokens and the model only {rows} vocabulary rows: text that encodes to an id from {rows} on cannot be read. Is this the model's own tokenizer?";
        return null;
    }

    /// <summary>
    /// Refuses tokens the tokenizer made that the model has no row for (a tokenizer with more tokens than the model, see
    /// <see cref="VocabularyWarning"/>): a model/tokenizer mismatch, exit 1 naming the model, where the engine's range
    /// check read as the user's usage error (exit 2, "Token id 322 is outside the vocabulary of 256 tokens").
    /// </summary>
    public static void CheckEncoded(ModelWeights weights, ReadOnlySpan<int> tokens, string what)
    {
        int rows = weights.Config.VocabSize;
        foreach (int id in tokens)
            if ((uint)id >= (uint)rows)
                throw new BitNetSharp.Formats.ModelFormatException(weights.SourcePath,
                    $"the tokenizer turned {what} into token id {id}, and the model has {rows} vocabulary rows (ids 0 to {rows - 1}): the tokenizer does not belong to this model; use the model's own tokenizer");
    }

    public GeneratorOptions Generator(ParseResult r)
    {
        int threads = r.GetValue(Threads), context = r.GetValue(Context);
        if (threads < 0) throw new UsageException($"--threads (-t) must be 0 (physical cores) or more; got {threads}.");
        if (threads > MaxThreads) throw new UsageException($"--threads (-t) must be at most {MaxThreads}; got {threads}.");
        if (context < 0) throw new UsageException($"--ctx (-c) must be 0 (the model's context) or more; got {context}.");
        return new()
        {
            Threads = threads,
            ContextLength = context,
            KvType = ParseKvType(r.GetValue(KvType) ?? "f16"),
        };
    }

    public static KvCacheType ParseKvType(string value, string option = "--kv-type") => value.Trim().ToLowerInvariant() switch
    {
        "f32" or "fp32" => KvCacheType.F32,
        "f16" or "fp16" => KvCacheType.F16,
        "int8" or "i8" or "q8" => KvCacheType.Int8,
        // "fp8e4m3": the type's name as bench/eval JSON and the telemetry context write it, so a result's kv_type reads back.
        "fp8" or "f8" or "e4m3" or "fp8e4m3" or "fp8_e4m3" => KvCacheType.Fp8E4M3,
        _ => throw new UsageException($"{option} '{value}' is not one of f32, f16, int8, fp8."),
    };

    /// <summary>
    /// Whether a GGUF has a tokenizer (tokenizer.ggml.model). A vocabulary without it (tokenizer.ggml.tokens present: the
    /// key renamed or its bytes damaged) is a damaged file, exit 1 naming both keys: it read as "has no tokenizer; pass
    /// --prompt-ids", a usage error, and convert copied the arrays into a file no command could read text with.
    /// </summary>
    public static bool HasGgufTokenizer(GgufFile file, string path)
    {
        // llama.cpp's marker for a model shipped without a vocabulary.
        if (file.Metadata.TryGetString("tokenizer.ggml.model", out var kind)) return kind is not ("none" or "no_vocab");
        if (file.Metadata.ContainsKey("tokenizer.ggml.tokens"))
            throw new ModelFormatException(path, "tokenizer.ggml.tokens is present but tokenizer.ggml.model, the kind of tokenizer, is missing: the tokenizer metadata is damaged (a key renamed or cut); restore the file from its source.");
        return false;
    }

    /// <summary>
    /// The tokenizer alone, without the weights: a GGUF's vocabulary (any architecture, a vocab-only file too) or a
    /// Hugging Face directory's tokenizer files. `tokenize` loaded, checked and copied the whole model for it, and
    /// refused llama.cpp's vocab-only files and models of other architectures.
    /// </summary>
    public static BitNetTokenizer LoadTokenizer(string path)
    {
        switch (ModelPath.Detect(path))
        {
            case ModelPathKind.Gguf:
                using (var file = GgufFile.Open(path))
                {
                    if (!HasGgufTokenizer(file, path))
                        throw new UsageException($"{path} has no tokenizer ({(file.Metadata.TryGetString("tokenizer.ggml.model", out var kind) ? $"tokenizer.ggml.model is '{kind}'" : "no tokenizer.ggml.model")}).");
                    return TokenizerLoader.FromGguf(file);
                }
            case ModelPathKind.HuggingFaceDirectory:
                // No tokenizer file at all is the same case as a GGUF without one: a usage error, exit 2 (it exited 1,
                // a damaged file's code). As Load reads a directory: generation_config.json alone is no tokenizer, and
                // any other tokenizer file without a vocabulary (an interrupted download) is still that error.
                if (!BitNetSharp.Formats.HuggingFace.HfModelDirectory.KnownTokenizerFiles.Any(f => f != "generation_config.json" && File.Exists(Path.Combine(path, f))))
                    throw new UsageException($"{path} has no tokenizer (no tokenizer.json, tokenizer.model, or vocab.json with merges.txt).");
                return TokenizerLoader.FromHfDirectory(path);
            default:
                throw new UsageException($"{path} is a lone .safetensors file, which holds no tokenizer; pass its model directory or a .gguf file.");
        }
    }

    /// <summary>Loads weights and, when the file has one, the tokenizer.</summary>
    /// <param name="preTokenizer">A GGUF's byte-level pre-tokenizer by its tokenizer.ggml.pre name instead of the file's (eval --pre-tokenizer).</param>
    public static (ModelWeights Weights, BitNetTokenizer? Tokenizer) Load(string path, ModelLoadOptions? options = null, string? preTokenizer = null)
    {
        var weights = ModelWeights.Load(path, options);
        try
        {
            BitNetTokenizer? tokenizer = null;
            if (preTokenizer is not null && !(weights.Gguf is { } g && g.Metadata.TryGetString("tokenizer.ggml.model", out var kind) && kind == "gpt2"))
                throw new UsageException($"--pre-tokenizer applies to a GGUF's byte-level (gpt2) vocabulary; {weights.SourcePath} has none.");
            if (weights.Gguf is { } gguf && HasGgufTokenizer(gguf, weights.SourcePath))
            {
                try
                {
                    tokenizer = TokenizerLoader.FromGguf(gguf, preTokenizer);
                }
                catch (ArgumentException e) when (preTokenizer is not null)
                {
                    throw new UsageException("--pre-tokenizer: " + e.Message.Split(" (Parameter '")[0]);
                }
            }
            // generation_config.json alone (save_pretrained writes it beside every model) is no tokenizer: it failed the
            // whole load with "no tokenizer found". Any other tokenizer file without a vocabulary (an interrupted
            // download) still is that error.
            else if (weights.HfDirectory is { } dir && (dir.HasTokenizer || dir.TokenizerFiles.Any(f => f != "generation_config.json")))
                tokenizer = TokenizerLoader.FromHfDirectory(dir.DirectoryPath);
            // A GGUF's token list and its embedding are one vocabulary (llama.cpp requires it): more tokens than rows
            // means ids the model cannot embed, a file put together from two models.
            if (tokenizer is not null && weights.Gguf is not null && tokenizer.VocabularySize > weights.Config.VocabSize)
                throw new ModelFormatException(weights.SourcePath,
                    $"the tokenizer has {tokenizer.VocabularySize} tokens but the model's embedding only {weights.Config.VocabSize} rows: ids from {weights.Config.VocabSize} on cannot be embedded; the tokenizer is not this model's",
                    "tokenizer.ggml.tokens");
            return (weights, tokenizer);
        }
        catch
        {
            weights.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Token ids separated by commas or white space ("1,2,3", "1 2 3", one per line as `jq -r '.ids[]'` prints them);
    /// one comma at the end is allowed (a `printf '%s,'` loop). An empty id between commas, or a comma first, is an
    /// error naming where: it was dropped, and an id lost from a pasted list went unnoticed.
    /// </summary>
    public static int[] ParseIds(string text)
    {
        var ids = new List<int>();
        string[] parts = text.Split(',');
        for (int i = 0; i < parts.Length; i++)
        {
            string[] items = parts[i].Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (items.Length == 0 && parts.Length > 1 && !(i == parts.Length - 1 && ids.Count > 0))
                throw new UsageException(ids.Count == 0
                    ? $"--prompt-ids '{text}': the list starts with an empty id (a comma first); give ids such as 1,2,3."
                    : $"--prompt-ids '{text}': an empty id after id {ids.Count} ({ids[^1]}): two commas in a row; give ids such as 1,2,3.");
            foreach (var s in items)
                ids.Add(int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int id) && id >= 0
                    ? id
                    : throw new UsageException(System.Text.RegularExpressions.Regex.IsMatch(s, @"^\+?[0-9]+$")
                        ? $"--prompt-ids: '{s}' is too large for a token id (ids run from 0 to the vocabulary's size − 1)."
                        : $"--prompt-ids: '{s}' is not a token id (a whole number from 0)."));
        }
        if (ids.Count == 0) throw new UsageException("--prompt-ids is empty; give token ids such as 1,2,3.");
        return [.. ids];
    }
}

/// <summary>Sampling flags with llama.cpp's names and defaults; --temp 0 means greedy.</summary>
public sealed class SamplingOptions
{
    public Option<float> Temperature { get; } = new("--temp") { Description = "Temperature; 0 = greedy.", DefaultValueFactory = _ => 0.8f };
    public Option<int> TopK { get; } = new("--top-k") { Description = "Keep the k most likely tokens (0 or less = off, as in llama.cpp).", DefaultValueFactory = _ => 40 };
    public Option<float> TopP { get; } = new("--top-p") { Description = "Nucleus sampling mass (1 = off; 0 keeps only the most likely token, as in llama.cpp).", DefaultValueFactory = _ => 0.95f };
    public Option<float> MinP { get; } = new("--min-p") { Description = "Drop tokens below this fraction of the top probability (0 = off).", DefaultValueFactory = _ => 0.05f };
    public Option<float> TypicalP { get; } = new("--typical-p") { Description = "Locally typical sampling mass (1 = off).", DefaultValueFactory = _ => 1f };
    public Option<float> RepeatPenalty { get; } = new("--repeat-penalty") { Description = "Repetition penalty (1 = off).", DefaultValueFactory = _ => 1f };
    public Option<int> RepeatLastN { get; } = new("--repeat-last-n") { Description = "Tokens the penalties look back over (-1: the whole sequence; 0: none, penalties off).", DefaultValueFactory = _ => 64 };
    public Option<float> PresencePenalty { get; } = new("--presence-penalty") { Description = "Subtracted once from every token already present." };
    public Option<float> FrequencyPenalty { get; } = new("--frequency-penalty") { Description = "Subtracted per occurrence." };
    public Option<ulong?> Seed { get; } = new("--seed", "-s") { Description = "Random seed for reproducible sampling." };

    /// <summary>
    /// OpenAI's meaning of the presence and frequency penalties, which serve applies: they count the tokens generated so
    /// far, not the prompt's. Without it `generate` could not replay a request's penalties (README said --repeat-last-n -1
    /// did; a prompt word the server left alone was penalized).
    /// </summary>
    public Option<bool> NoPenalizePrompt { get; } = new("--no-penalize-prompt") { Description = "Presence and frequency penalties count only the generated tokens (OpenAI's meaning, as serve applies them); the repetition penalty still counts the prompt." };

    public void AddTo(Command command)
    {
        foreach (var o in new Option[] { Temperature, TopK, TopP, MinP, TypicalP, RepeatPenalty, RepeatLastN, PresencePenalty, FrequencyPenalty, NoPenalizePrompt, Seed })
            command.Options.Add(o);
    }

    public SamplingParameters Parse(ParseResult r)
    {
        var p = new SamplingParameters
        {
            Temperature = r.GetValue(Temperature),
            TopK = r.GetValue(TopK),
            TopP = r.GetValue(TopP),
            MinP = r.GetValue(MinP),
            TypicalP = r.GetValue(TypicalP),
            RepetitionPenalty = r.GetValue(RepeatPenalty),
            PenaltyLastN = r.GetValue(RepeatLastN),
            PresencePenalty = r.GetValue(PresencePenalty),
            FrequencyPenalty = r.GetValue(FrequencyPenalty),
            PenalizePrompt = !r.GetValue(NoPenalizePrompt),
            Seed = r.GetValue(Seed),
        };
        // llama.cpp's meanings, which these flags are named after (they were usage errors): top-k ≤ 0 is off, and
        // top-p 0 keeps the single most likely token (the sampler's top-k 1, as the server maps the API's top_p 0).
        if (p.TopK < 0) p = p with { TopK = 0 };
        if (p.TopP == 0f) p = p with { TopP = 1f, TopK = 1 };
        try
        {
            p.Validate();
        }
        catch (ArgumentException e)
        {
            // The library names the API's fields (temperature, top_k); here the user typed flags.
            Option? flag = e.ParamName switch
            {
                nameof(SamplingParameters.Temperature) => Temperature,
                nameof(SamplingParameters.TopK) => TopK,
                nameof(SamplingParameters.TopP) => TopP,
                nameof(SamplingParameters.MinP) => MinP,
                nameof(SamplingParameters.TypicalP) => TypicalP,
                nameof(SamplingParameters.RepetitionPenalty) => RepeatPenalty,
                nameof(SamplingParameters.PenaltyLastN) => RepeatLastN,
                nameof(SamplingParameters.PresencePenalty) => PresencePenalty,
                nameof(SamplingParameters.FrequencyPenalty) => FrequencyPenalty,
                _ => null,
            };
            // The flag's own range where it is wider than the API's (--top-p 0 is taken; the library's "(0, 1]" read as if not).
            if (flag == TopP) throw new UsageException($"--top-p must be in [0, 1] (1 turns it off; 0 keeps only the most likely token); got {r.GetValue(TopP).ToString(System.Globalization.CultureInfo.InvariantCulture)}.");
            throw new UsageException(flag is null ? e.Message.Split(" (Parameter '")[0] : $"{flag.Name}: {e.Message.Split(" (Parameter '")[0]}");
        }
        return p;
    }
}
