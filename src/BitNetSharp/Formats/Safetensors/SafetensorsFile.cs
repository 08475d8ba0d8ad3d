using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;
using System.Text.Json;
using BitNetSharp.Quantization;

namespace BitNetSharp.Formats.Safetensors;

/// <summary>
/// An open .safetensors file: an 8-byte little-endian header length, a JSON header mapping tensor names to dtype,
/// shape and byte range, then the raw data, memory-mapped and handed out in place. The header is checked as
/// hostile input (length against the file, every range inside the data, size = shape × dtype size, no overlaps)
/// before any tensor is exposed.
/// </summary>
public sealed unsafe class SafetensorsFile : IDisposable
{
    /// <summary>Headers above this are refused, as the reference implementation does, so a lying length cannot demand gigabytes.</summary>
    public const long MaxHeaderLength = 100_000_000;

    private readonly FileMapping _mapping;

    /// <summary>Throws <see cref="ModelFileChangedException"/> when the mapped file is now shorter than its map.</summary>
    public void CheckNotTruncated() => _mapping.CheckNotTruncated();
    private readonly SafetensorsTensorInfo[] _tensors;
    private readonly Dictionary<string, SafetensorsTensorInfo> _byName;

    private SafetensorsFile(FileMapping mapping, string path)
    {
        _mapping = mapping;
        FilePath = path;
        long length = mapping.Length;
        if (length < 8)
            throw new ModelFormatException(path, $"the file is {length} bytes long, too short for a safetensors header length (8 bytes); it is truncated or not a safetensors file");
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(mapping.Pointer, 8));
        if (headerLength == 0)
            throw new ModelFormatException(path, "the header length is 0; a safetensors header is a JSON object");
        if (headerLength > (ulong)(length - 8))
            throw new ModelFormatException(path, $"the header length is {headerLength} bytes, but only {length - 8} bytes follow it; the file is truncated or not a safetensors file");
        if (headerLength > MaxHeaderLength)
            throw new ModelFormatException(path, $"the header length is {headerLength} bytes, above the {MaxHeaderLength}-byte limit");
        HeaderLength = (long)headerLength;
        DataOffset = 8 + HeaderLength;

        var header = new ReadOnlySpan<byte>(mapping.Pointer + 8, (int)HeaderLength).ToArray();
        if (header[0] != (byte)'{')
            throw new ModelFormatException(path, $"the header does not start with '{{' (found byte 0x{header[0]:X2}); this is not a safetensors file");
        // System.Text.Json validates UTF-8 inside strings only when they are read, and then throws
        // InvalidOperationException; checking the whole header first keeps every failure a ModelFormatException.
        if (!System.Text.Unicode.Utf8.IsValid(header))
            throw new ModelFormatException(path, "the header is not valid UTF-8 text");
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(header, new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException e)
        {
            throw new ModelFormatException(path, $"the header is not valid JSON: {e.Message}", inner: e);
        }
        using (document)
        {
            JsonText.Require(document.RootElement, path);
            (_tensors, Metadata) = ReadHeader(document.RootElement, length - DataOffset, path);
        }
        _byName = new Dictionary<string, SafetensorsTensorInfo>(_tensors.Length, StringComparer.Ordinal);
        foreach (var t in _tensors) _byName.Add(t.Name, t);
    }

    /// <summary>Maps and validates <paramref name="path"/>; any defect is a <see cref="ModelFormatException"/>.</summary>
    public static SafetensorsFile Open(string path)
    {
        var mapping = FileMapping.Open(path);
        try
        {
            return new SafetensorsFile(mapping, path);
        }
        catch
        {
            mapping.Dispose();
            throw;
        }
    }

    /// <summary>Parses safetensors bytes held in memory (pinned, not copied).</summary>
    public static SafetensorsFile Parse(byte[] bytes, string displayName = "<memory>")
    {
        ArgumentNullException.ThrowIfNull(bytes);
        var mapping = FileMapping.FromArray(bytes);
        try
        {
            return new SafetensorsFile(mapping, displayName);
        }
        catch
        {
            mapping.Dispose();
            throw;
        }
    }

    public string FilePath { get; }

    public long FileLength => _mapping.Length;

    public long HeaderLength { get; }

    /// <summary>Absolute offset of the data section (8 + header length); tensor ranges are relative to it.</summary>
    public long DataOffset { get; }

    /// <summary>The header's <c>__metadata__</c> string map (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Tensors in header order.</summary>
    public IReadOnlyList<SafetensorsTensorInfo> Tensors => _tensors;

    public bool TryGetTensor(string name, [NotNullWhen(true)] out SafetensorsTensorInfo? tensor) => _byName.TryGetValue(name, out tensor);

    public SafetensorsTensorInfo GetTensor(string name) =>
        _byName.TryGetValue(name, out var t) ? t : throw new ModelFormatException(FilePath, "required tensor is missing", name);

    /// <summary>The tensor's bytes in place; its dtype must be one this library reads (<see cref="SafetensorsDTypes.IsSupported"/>).</summary>
    public ReadOnlySpan<byte> GetTensorData(SafetensorsTensorInfo tensor)
    {
        var p = GetTensorPointer(tensor);
        if (tensor.ByteLength > int.MaxValue)
            throw new NotSupportedException($"Tensor '{tensor.Name}' is {tensor.ByteLength} bytes, more than a span can address; use GetTensorPointer.");
        return new ReadOnlySpan<byte>(p, (int)tensor.ByteLength);
    }

    /// <summary>First byte of the tensor; valid for <see cref="SafetensorsTensorInfo.ByteLength"/> bytes while this file is open.</summary>
    public byte* GetTensorPointer(SafetensorsTensorInfo tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        if (!ReferenceEquals(tensor.File, this))
            throw new ArgumentException($"Tensor '{tensor.Name}' belongs to {tensor.File.FilePath}, not {FilePath}.", nameof(tensor));
        if (!tensor.IsSupported)
            throw new ModelFormatException(FilePath, $"dtype {tensor.DTypeName} is not supported; this library reads F32, F16, BF16, U8 and I8 tensors", tensor.Name);
        return _mapping.Pointer + DataOffset + tensor.DataBegin;
    }

    /// <summary>The tensor converted to fp32 (F32, F16, BF16, U8, I8), for the small float tensors a loader needs eagerly: norms, scales.</summary>
    public float[] ReadFloat32(SafetensorsTensorInfo tensor)
    {
        var bytes = GetTensorData(tensor);
        var result = new float[tensor.ElementCount];
        switch (tensor.DType)
        {
            case SafetensorsDType.F32:
                for (int i = 0; i < result.Length; i++) result[i] = BinaryPrimitives.ReadSingleLittleEndian(bytes[(4 * i)..]);
                break;
            case SafetensorsDType.F16:
                for (int i = 0; i < result.Length; i++) result[i] = HalfConversions.HalfToFloat(BinaryPrimitives.ReadUInt16LittleEndian(bytes[(2 * i)..]));
                break;
            case SafetensorsDType.BF16:
                for (int i = 0; i < result.Length; i++) result[i] = HalfConversions.BFloat16ToFloat(BinaryPrimitives.ReadUInt16LittleEndian(bytes[(2 * i)..]));
                break;
            case SafetensorsDType.U8:
                for (int i = 0; i < result.Length; i++) result[i] = bytes[i];
                break;
            case SafetensorsDType.I8:
                for (int i = 0; i < result.Length; i++) result[i] = (sbyte)bytes[i];
                break;
        }
        return result;
    }

    public void Dispose() => _mapping.Dispose();

    private (SafetensorsTensorInfo[] Tensors, IReadOnlyDictionary<string, string> Metadata) ReadHeader(JsonElement root, long dataLength, string path)
    {
        if (root.ValueKind != JsonValueKind.Object)
            throw new ModelFormatException(path, $"the header is a JSON {root.ValueKind}, expected an object");
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        var tensors = new List<SafetensorsTensorInfo>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var property in root.EnumerateObject())
        {
            string name = property.Name;
            if (!seen.Add(name))
                throw new ModelFormatException(path, "the header lists this name twice", name);
            if (name == "__metadata__")
            {
                // The reference parser's metadata is optional: null is "none", as absent is.
                if (property.Value.ValueKind == JsonValueKind.Null) continue;
                if (property.Value.ValueKind != JsonValueKind.Object)
                    throw new ModelFormatException(path, $"found a JSON {property.Value.ValueKind}, expected an object of strings", name);
                foreach (var entry in property.Value.EnumerateObject())
                {
                    if (entry.Value.ValueKind != JsonValueKind.String)
                        throw new ModelFormatException(path, $"metadata value '{entry.Name}' is a JSON {entry.Value.ValueKind}, expected a string", name);
                    if (!metadata.TryAdd(entry.Name, entry.Value.GetString()!))
                        throw new ModelFormatException(path, $"metadata key '{entry.Name}' appears twice", name);
                }
                continue;
            }
            tensors.Add(ReadTensor(property.Value, name, dataLength, path));
        }

        var byBegin = tensors.ToArray();
        Array.Sort(byBegin, static (a, b) => a.DataBegin != b.DataBegin ? a.DataBegin.CompareTo(b.DataBegin) : a.DataEnd.CompareTo(b.DataEnd));
        for (int i = 1; i < byBegin.Length; i++)
        {
            var previous = byBegin[i - 1];
            if (byBegin[i].DataBegin < previous.DataEnd)
                throw new ModelFormatException(path, $"bytes [{previous.DataBegin}, {previous.DataEnd}) overlap tensor '{byBegin[i].Name}' at [{byBegin[i].DataBegin}, {byBegin[i].DataEnd})", previous.Name);
            // The format's rule (and the reference parser's): tensors index the whole byte buffer, without holes, so a
            // file cannot carry bytes no tensor accounts for (polyglot files).
            if (byBegin[i].DataBegin > previous.DataEnd)
                throw new ModelFormatException(path, $"bytes [{previous.DataEnd}, {byBegin[i].DataBegin}) between tensor '{previous.Name}' and this one belong to no tensor; safetensors allows no holes", byBegin[i].Name);
        }
        if (byBegin.Length > 0 && byBegin[0].DataBegin != 0)
            throw new ModelFormatException(path, $"the first tensor starts at byte {byBegin[0].DataBegin} of the data; safetensors allows no holes (it must start at 0)", byBegin[0].Name);
        long end = byBegin.Length > 0 ? byBegin.Max(static t => t.DataEnd) : 0;
        if (end != dataLength)
            throw new ModelFormatException(path, $"the tensors end at byte {end} of the data but the file holds {dataLength} data bytes; safetensors allows no trailing bytes (was something appended to the file?)");
        return (tensors.ToArray(), metadata);
    }

    private SafetensorsTensorInfo ReadTensor(JsonElement entry, string name, long dataLength, string path)
    {
        if (entry.ValueKind != JsonValueKind.Object)
            throw new ModelFormatException(path, $"found a JSON {entry.ValueKind}, expected an object with dtype, shape and data_offsets", name);
        // A field given twice was read as its last value ("dtype":"BF16", …, "dtype":"F16" loaded as F16 and changed the
        // logits); the safetensors library refuses it, and so does this reader.
        var fields = new HashSet<string>(StringComparer.Ordinal);
        foreach (var field in entry.EnumerateObject())
            if (!fields.Add(field.Name))
                throw new ModelFormatException(path, $"field '{field.Name}' appears twice in this tensor's entry", name);
        if (!entry.TryGetProperty("dtype", out var dtype) || dtype.ValueKind != JsonValueKind.String)
            throw new ModelFormatException(path, "field 'dtype' is missing or not a string", name);
        if (!entry.TryGetProperty("shape", out var shapeElement) || shapeElement.ValueKind != JsonValueKind.Array)
            throw new ModelFormatException(path, "field 'shape' is missing or not an array", name);
        if (!entry.TryGetProperty("data_offsets", out var offsets) || offsets.ValueKind != JsonValueKind.Array || offsets.GetArrayLength() != 2)
            throw new ModelFormatException(path, "field 'data_offsets' is missing or not a [begin, end] pair", name);

        string dtypeName = dtype.GetString()!;
        var shape = new long[shapeElement.GetArrayLength()];
        long elements = 1;
        int k = 0;
        foreach (var dim in shapeElement.EnumerateArray())
        {
            if (dim.ValueKind != JsonValueKind.Number || !dim.TryGetInt64(out long d) || d < 0)
                throw new ModelFormatException(path, $"shape entry {k} is {dim.GetRawText()}, expected a non-negative integer", name);
            shape[k++] = d;
            if (d != 0 && elements > long.MaxValue / d)
                throw new ModelFormatException(path, "the element count of the shape overflows 64 bits", name);
            elements *= d;
        }

        long begin = ReadOffset(offsets[0], "begin", name, path);
        long end = ReadOffset(offsets[1], "end", name, path);
        if (begin > end)
            throw new ModelFormatException(path, $"data_offsets [{begin}, {end}] end before they begin", name);
        if (end > dataLength)
            throw new ModelFormatException(path, $"data_offsets [{begin}, {end}] run past the end of the data section ({dataLength} bytes); the file is truncated", name);

        int elementSize = SafetensorsDTypes.ElementSize(SafetensorsDTypes.Parse(dtypeName));
        if (elementSize > 0)
        {
            if (elements > long.MaxValue / elementSize)
                throw new ModelFormatException(path, "the byte size of the shape overflows 64 bits", name);
            long expected = elements * elementSize;
            if (end - begin != expected)
                throw new ModelFormatException(path, $"data_offsets [{begin}, {end}] span {end - begin} bytes, but {dtypeName} [{string.Join(", ", shape)}] needs {expected}", name);
        }
        return new SafetensorsTensorInfo(this, name, dtypeName, shape, begin, end, elements);
    }

    private static long ReadOffset(JsonElement element, string which, string name, string path)
    {
        if (element.ValueKind != JsonValueKind.Number || !element.TryGetInt64(out long value) || value < 0)
            throw new ModelFormatException(path, $"data_offsets {which} is {element.GetRawText()}, expected a non-negative integer", name);
        return value;
    }
}
