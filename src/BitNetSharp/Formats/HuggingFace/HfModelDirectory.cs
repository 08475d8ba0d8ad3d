using BitNetSharp.Formats.Safetensors;

namespace BitNetSharp.Formats.HuggingFace;

/// <summary>
/// A Hugging Face model directory: config.json, the weights (an index with shards, model.safetensors, or every
/// *.safetensors file when there is neither), and whichever tokenizer files are present.
/// </summary>
public sealed class HfModelDirectory : IDisposable
{
    /// <summary>Tokenizer-related files a directory may carry, in the order <see cref="TokenizerFiles"/> reports them.</summary>
    public static readonly IReadOnlyList<string> KnownTokenizerFiles =
    [
        "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
        "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json",
    ];

    private HfModelDirectory(string path, HfConfig config, SafetensorsCheckpoint weights, IReadOnlyList<string> tokenizerFiles)
    {
        DirectoryPath = path;
        Config = config;
        Weights = weights;
        TokenizerFiles = tokenizerFiles;
    }

    public string DirectoryPath { get; }

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
        var index = Path.Combine(directory, SafetensorsCheckpoint.IndexFileName);
        var single = Path.Combine(directory, "model.safetensors");
        if (File.Exists(index)) weights = SafetensorsCheckpoint.OpenIndex(index);
        else if (File.Exists(single)) weights = SafetensorsCheckpoint.OpenFile(single);
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
        return new HfModelDirectory(directory, config, weights, tokenizerFiles);
    }

    public void Dispose() => Weights.Dispose();
}
