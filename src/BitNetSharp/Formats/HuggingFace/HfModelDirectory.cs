using BitNetSharp.Formats.Safetensors;

namespace BitNetSharp.Formats.HuggingFace;

/// <summary>
/// A Hugging Face model directory: config.json, the weights (model.safetensors, else an index with shards, else every
/// *.safetensors file), and whichever tokenizer files are present.
/// </summary>
public sealed class HfModelDirectory : IDisposable
{
    /// <summary>Tokenizer-related files a directory may carry, in the order <see cref="TokenizerFiles"/> reports them.</summary>
    public static readonly IReadOnlyList<string> KnownTokenizerFiles =
    [
        "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
        "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json",
    ];

    private HfModelDirectory(string path, HfConfig config, SafetensorsCheckpoint weights, IReadOnlyList<string> tokenizerFiles, string? note)
    {
        Note = note;
        DirectoryPath = path;
        Config = config;
        Weights = weights;
        TokenizerFiles = tokenizerFiles;
    }

    public string DirectoryPath { get; }

    /// <summary>Something about how the directory was read that a user should hear (files present but not read), or null.</summary>
    public string? Note { get; }

    public HfConfig Config { get; }

    public SafetensorsCheckpoint Weights { get; }

    /// <summary>Names (not paths) of the <see cref="KnownTokenizerFiles"/> that exist in the directory.</summary>
    public IReadOnlyList<string> TokenizerFiles { get; }

    /// <summary>
    /// Whether a vocabulary is here (tokenizer.json, tokenizer.model, or vocab.json with merges.txt): config-only files
    /// (generation_config.json, which save_pretrained writes beside every model, tokenizer_config.json) are not one.
    /// </summary>
    public bool HasTokenizer => HasVocabulary(DirectoryPath);

    /// <inheritdoc cref="HasTokenizer"/>
    public static bool HasVocabulary(string directory) =>
        File.Exists(Path.Combine(directory, "tokenizer.json")) || File.Exists(Path.Combine(directory, "tokenizer.model")) ||
        (File.Exists(Path.Combine(directory, "vocab.json")) && File.Exists(Path.Combine(directory, "merges.txt")));

    public static HfModelDirectory Open(string directory)
    {
        if (!Directory.Exists(directory))
            throw new ModelFormatException(directory, "no such directory");
        var config = HfConfig.Load(Path.Combine(directory, HfConfig.FileName));

        SafetensorsCheckpoint weights;
        string? note = null;
        var index = Path.Combine(directory, SafetensorsCheckpoint.IndexFileName);
        var single = Path.Combine(directory, "model.safetensors");
        // model.safetensors first, then the index, as transformers' from_pretrained looks for them: with both present
        // (a re-saved model beside the shards of another) the index won here, and other weights ran than transformers runs.
        if (File.Exists(single))
        {
            weights = SafetensorsCheckpoint.OpenFile(single);
            if (File.Exists(index))
                note = $"{directory} has both model.safetensors and {SafetensorsCheckpoint.IndexFileName}: model.safetensors is read, as transformers reads it, and the index with its shards is not";
        }
        else if (File.Exists(index)) weights = SafetensorsCheckpoint.OpenIndex(index);
        else
        {
            var files = Directory.GetFiles(directory, "*.safetensors");
            if (files.Length == 0)
                throw new ModelFormatException(directory, $"no weights found: expected {SafetensorsCheckpoint.IndexFileName}, model.safetensors or other *.safetensors files (PyTorch .bin checkpoints are not supported)");
            Array.Sort(files, StringComparer.Ordinal);
            weights = SafetensorsCheckpoint.OpenFiles(files);
        }

        var tokenizerFiles = new List<string>();
        foreach (var name in KnownTokenizerFiles)
            if (File.Exists(Path.Combine(directory, name))) tokenizerFiles.Add(name);
        return new HfModelDirectory(directory, config, weights, tokenizerFiles, note);
    }

    public void Dispose() => Weights.Dispose();
}
