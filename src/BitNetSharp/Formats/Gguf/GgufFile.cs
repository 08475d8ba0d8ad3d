namespace BitNetSharp.Formats.Gguf;

/// <summary>
/// An open GGUF v2/v3 file: validated metadata and tensor infos, plus the tensor bytes in place through one
/// read-only memory map. Every tensor span stays valid until <see cref="Dispose"/>; after that, accessors throw
/// <see cref="ObjectDisposedException"/> rather than hand out dangling memory.
/// </summary>
public sealed unsafe class GgufFile : IDisposable
{
    /// <summary>"GGUF" read as a little-endian u32.</summary>
    public const uint Magic = 0x46554747;

    /// <summary>Alignment of the data section and of every tensor offset when <c>general.alignment</c> is absent.</summary>
    public const int DefaultAlignment = 32;

    public const string AlignmentKey = "general.alignment";

    private readonly FileMapping _mapping;
    private readonly GgufTensorInfo[] _tensors;
    private readonly Dictionary<string, GgufTensorInfo> _tensorsByName;

    /// <summary>The file's memory mapping (for locking it in RAM).</summary>
    internal FileMapping Mapping => _mapping;

    /// <summary>Throws <see cref="ModelFileChangedException"/> when the mapped file is now shorter than its map.</summary>
    public void CheckNotTruncated() => _mapping.CheckNotTruncated();

    private GgufFile(FileMapping mapping, GgufReader.Result parsed)
    {
        _mapping = mapping;
        FilePath = parsed.FilePath;
        Version = parsed.Version;
        Alignment = parsed.Alignment;
        DataOffset = parsed.DataOffset;
        Metadata = parsed.Metadata;
        _tensors = parsed.Tensors;
        _tensorsByName = parsed.TensorsByName;
    }

    /// <summary>Maps and validates <paramref name="path"/>; any defect is a <see cref="ModelFormatException"/>.</summary>
    public static GgufFile Open(string path) => Open(path, hugePages: false);

    /// <summary>
    /// Opens and validates <paramref name="path"/>; with <paramref name="hugePages"/> (a file of at least 2 MiB) read
    /// into a private copy in huge pages instead of mapped (see <see cref="InHugePages"/>).
    /// </summary>
    public static GgufFile Open(string path, bool hugePages)
    {
        var mapping = FileMapping.Open(path, hugePages);
        try
        {
            return new GgufFile(mapping, GgufReader.Parse(mapping.Pointer, mapping.Length, path));
        }
        catch
        {
            mapping.Dispose();
            throw;
        }
    }

    /// <summary>Parses GGUF bytes held in memory (pinned, not copied); <paramref name="displayName"/> stands in for the path in errors.</summary>
    public static GgufFile Parse(byte[] bytes, string displayName = "<memory>")
    {
        ArgumentNullException.ThrowIfNull(bytes);
        var mapping = FileMapping.FromArray(bytes);
        try
        {
            return new GgufFile(mapping, GgufReader.Parse(mapping.Pointer, mapping.Length, displayName));
        }
        catch
        {
            mapping.Dispose();
            throw;
        }
    }

    public string FilePath { get; }

    /// <summary>Whether the file's bytes are a private copy in 2 MiB-aligned, huge-page-advised memory rather than a mapping.</summary>
    public bool InHugePages => _mapping.InHugePages;

    /// <summary>Bytes of that copy the kernel backs with 2 MiB pages now (−1: mapped, or unknown).</summary>
    public long HugePageBackedBytes => _mapping.HugePageBackedBytes;

    /// <summary>2 or 3.</summary>
    public uint Version { get; }

    public long FileLength => _mapping.Length;

    /// <summary><c>general.alignment</c> or <see cref="DefaultAlignment"/>.</summary>
    public int Alignment { get; }

    /// <summary>Absolute file offset of the tensor data section (the header end padded to <see cref="Alignment"/>).</summary>
    public long DataOffset { get; }

    public GgufMetadata Metadata { get; }

    /// <summary>Tensor infos in file order.</summary>
    public IReadOnlyList<GgufTensorInfo> Tensors => _tensors;

    public bool TryGetTensor(string name, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out GgufTensorInfo? tensor) =>
        _tensorsByName.TryGetValue(name, out tensor);

    /// <summary>A required tensor; a missing one is a <see cref="ModelFormatException"/> naming it.</summary>
    public GgufTensorInfo GetTensor(string name) =>
        _tensorsByName.TryGetValue(name, out var t) ? t : throw new ModelFormatException(FilePath, "required tensor is missing", name);

    /// <summary>The tensor's bytes in place. Tensors over 2 GiB do not fit a span; use <see cref="GetTensorPointer"/>.</summary>
    public ReadOnlySpan<byte> GetTensorData(GgufTensorInfo tensor)
    {
        var p = GetTensorPointer(tensor);
        if (tensor.ByteSize > int.MaxValue)
            throw new NotSupportedException($"Tensor '{tensor.Name}' is {tensor.ByteSize} bytes, more than a span can address; use GetTensorPointer.");
        return new ReadOnlySpan<byte>(p, (int)tensor.ByteSize);
    }

    public ReadOnlySpan<byte> GetTensorData(string name) => GetTensorData(GetTensor(name));

    /// <summary>The first byte of the tensor's data; valid for <see cref="GgufTensorInfo.ByteSize"/> bytes while this file is open.</summary>
    public byte* GetTensorPointer(GgufTensorInfo tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        if ((uint)tensor.Index >= (uint)_tensors.Length || !ReferenceEquals(_tensors[tensor.Index], tensor))
            throw new ArgumentException($"Tensor '{tensor.Name}' does not belong to {FilePath}.", nameof(tensor));
        _mapping.CheckNotReleased(DataOffset + tensor.Offset, tensor.ByteSize, $"{FilePath}: tensor '{tensor.Name}'");
        return _mapping.Pointer + DataOffset + tensor.Offset;
    }

    /// <summary>Sum of all tensors' byte sizes (what the weights occupy, excluding padding).</summary>
    public long TensorBytes
    {
        get
        {
            long total = 0;
            foreach (var t in _tensors) total += t.ByteSize;
            return total;
        }
    }

    public void Dispose() => _mapping.Dispose();
}
