using System.Diagnostics.CodeAnalysis;
using System.Text.Json;

namespace BitNetSharp.Formats.Safetensors;

/// <summary>
/// All safetensors files of one checkpoint seen as a single tensor namespace: either one file, or the shards that
/// a <c>model.safetensors.index.json</c> lists in its <c>weight_map</c>. Every tensor the index promises must be in
/// the shard it names, and no name may appear in two shards.
/// </summary>
public sealed class SafetensorsCheckpoint : IDisposable
{
    public const string IndexFileName = "model.safetensors.index.json";

    private readonly SafetensorsFile[] _files;
    private readonly Dictionary<string, SafetensorsTensorInfo> _byName;
    private readonly SafetensorsTensorInfo[] _tensors;

    private SafetensorsCheckpoint(SafetensorsFile[] files, string? indexPath)
    {
        _files = files;
        IndexPath = indexPath;
        _byName = new Dictionary<string, SafetensorsTensorInfo>(StringComparer.Ordinal);
        var all = new List<SafetensorsTensorInfo>();
        foreach (var file in files)
        {
            foreach (var t in file.Tensors)
            {
                if (!_byName.TryAdd(t.Name, t))
                    throw new ModelFormatException(file.FilePath, $"tensor also appears in {_byName[t.Name].File.FilePath}", t.Name);
                all.Add(t);
            }
        }
        _tensors = all.ToArray();
    }

    /// <summary>The index file, or null for a single-file checkpoint.</summary>
    public string? IndexPath { get; }

    public IReadOnlyList<SafetensorsFile> Files => _files;

    /// <summary>Every tensor of every shard, shard by shard in header order.</summary>
    public IReadOnlyList<SafetensorsTensorInfo> Tensors => _tensors;

    public bool TryGetTensor(string name, [NotNullWhen(true)] out SafetensorsTensorInfo? tensor) => _byName.TryGetValue(name, out tensor);

    public SafetensorsTensorInfo GetTensor(string name) =>
        _byName.TryGetValue(name, out var t) ? t : throw new ModelFormatException(IndexPath ?? _files[0].FilePath, "required tensor is missing", name);

    /// <summary>The tensor's bytes in place, from whichever shard holds it.</summary>
    public ReadOnlySpan<byte> GetTensorData(SafetensorsTensorInfo tensor) => tensor.File.GetTensorData(tensor);

    /// <summary>Sum of all shard file sizes.</summary>
    public long TotalFileBytes
    {
        get
        {
            long total = 0;
            foreach (var f in _files) total += f.FileLength;
            return total;
        }
    }

    /// <summary>A checkpoint of exactly one file.</summary>
    public static SafetensorsCheckpoint OpenFile(string path) => new([SafetensorsFile.Open(path)], null);

    /// <summary>Opens the shards listed by an index file; shard names must be plain file names beside the index.</summary>
    public static SafetensorsCheckpoint OpenIndex(string indexPath)
    {
        var weightMap = ReadWeightMap(indexPath);
        var directory = Path.GetDirectoryName(Path.GetFullPath(indexPath)) ?? ".";
        // In order of first mention, each once (a HashSet beside the list: List.Contains made an index of many
        // distinct names quadratic before the first missing file was reported).
        var shardNames = new List<string>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var shard in weightMap.Values)
            if (seen.Add(shard)) shardNames.Add(shard);

        var files = new List<SafetensorsFile>(shardNames.Count);
        try
        {
            foreach (var shard in shardNames) files.Add(SafetensorsFile.Open(Path.Combine(directory, shard)));
            var checkpoint = new SafetensorsCheckpoint(files.ToArray(), indexPath);
            foreach (var (tensor, shard) in weightMap)
            {
                if (!checkpoint._byName.TryGetValue(tensor, out var info) || Path.GetFileName(info.File.FilePath) != shard)
                    throw new ModelFormatException(indexPath, $"the weight_map places this tensor in {shard}, but that file does not contain it", tensor);
            }
            return checkpoint;
        }
        catch
        {
            foreach (var f in files) f.Dispose();
            throw;
        }
    }

    /// <summary>Several files without an index (e.g. shards whose index was lost), opened in the given order.</summary>
    public static SafetensorsCheckpoint OpenFiles(IReadOnlyList<string> paths)
    {
        var files = new List<SafetensorsFile>(paths.Count);
        try
        {
            foreach (var p in paths) files.Add(SafetensorsFile.Open(p));
            return new SafetensorsCheckpoint(files.ToArray(), null);
        }
        catch
        {
            foreach (var f in files) f.Dispose();
            throw;
        }
    }

    private static Dictionary<string, string> ReadWeightMap(string indexPath)
    {
        byte[] bytes;
        PathIdentity.RequireRegularFile(indexPath, IndexFileName);
        try
        {
            bytes = File.ReadAllBytes(indexPath);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelFormatException(indexPath, $"cannot read the index: {e.Message}", inner: e);
        }
        if (!System.Text.Unicode.Utf8.IsValid(bytes))
            throw new ModelFormatException(indexPath, "the index is not valid UTF-8 text");
        try
        {
            using var document = JsonDocument.Parse(bytes);
            JsonText.Require(document.RootElement, indexPath);
            if (document.RootElement.ValueKind != JsonValueKind.Object ||
                !document.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new ModelFormatException(indexPath, "the index has no 'weight_map' object", "weight_map");
            var result = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var entry in map.EnumerateObject())
            {
                if (entry.Value.ValueKind != JsonValueKind.String)
                    throw new ModelFormatException(indexPath, $"weight_map value is a JSON {entry.Value.ValueKind}, expected a file name", entry.Name);
                var shard = entry.Value.GetString()!;
                // Shards must sit beside the index: a path would let a downloaded index point anywhere on disk.
                if (shard.Length == 0 || shard != Path.GetFileName(shard) || shard is "." or ".." || shard.Contains('\\') || shard.Contains('/') || shard.Contains('\0'))
                    throw new ModelFormatException(indexPath, $"weight_map names '{shard}', expected a plain file name in the same directory", entry.Name);
                if (!result.TryAdd(entry.Name, shard))
                    throw new ModelFormatException(indexPath, "weight_map lists this tensor twice", entry.Name);
            }
            if (result.Count == 0)
                throw new ModelFormatException(indexPath, "the weight_map is empty", "weight_map");
            return result;
        }
        catch (JsonException e)
        {
            throw new ModelFormatException(indexPath, $"the index is not valid JSON: {e.Message}", inner: e);
        }
    }

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
    }
}
