using System.Buffers.Binary;
using System.Globalization;
using System.Text;

namespace BitNetSharp.Formats.Gguf;

/// <summary>
/// Parses and validates a GGUF v2/v3 header over a pointer and a length. The file is hostile until proven
/// otherwise: every count, length, offset and size is compared with the bytes that remain before it is used, so a
/// string length of 2^60 or an array count of 2^40 fails at once instead of allocating, and the total work is
/// linear in the file size (each element consumed costs at least one byte; array nesting is capped).
/// </summary>
internal static unsafe class GgufReader
{
    /// <summary>Header: magic, version, tensor count, metadata count.</summary>
    public const int HeaderSize = 24;

    /// <summary>Arrays of arrays are legal GGUF but nobody nests deeply; the cap keeps recursion off the stack limit.</summary>
    public const int MaxArrayNesting = 16;

    /// <summary>Smallest key/value record: empty-string length (8) + type (4) + a 1-byte value.</summary>
    private const int MinMetadataRecordSize = 13;

    /// <summary>Smallest tensor info: name length (8) + n_dims (4) + one dim (8) + type (4) + offset (8).</summary>
    private const int MinTensorInfoSize = 32;

    internal sealed class Result
    {
        public required string FilePath { get; init; }
        public required uint Version { get; init; }
        public required int Alignment { get; init; }
        public required long DataOffset { get; init; }
        public required GgufMetadata Metadata { get; init; }
        public required GgufTensorInfo[] Tensors { get; init; }
        public required Dictionary<string, GgufTensorInfo> TensorsByName { get; init; }
    }

    private readonly record struct RawTensor(string Name, long[] Dims, uint TypeId, ulong Offset);

    public static Result Parse(byte* data, long length, string path)
    {
        var c = new Cursor(data, length, path);

        if (length < 4)
            throw new ModelFormatException(path, $"the file is {length} bytes long, too short for a GGUF header ({HeaderSize} bytes); it is truncated or not a GGUF file");
        uint magic = c.ReadUInt32("magic");
        if (magic != GgufFile.Magic)
            throw new ModelFormatException(path, $"not a GGUF file: the first bytes are {FormatMagic(magic)}, expected 47 47 55 46 (\"GGUF\")");
        uint version = c.ReadUInt32("version");
        if (version == 1)
            throw new ModelFormatException(path, "GGUF version 1 is not supported (it used 32-bit counts); re-convert the model with a current llama.cpp to get version 3");
        if (version is not (2 or 3))
        {
            var swapped = BinaryPrimitives.ReverseEndianness(version);
            var hint = swapped is 2 or 3 ? " (this looks like a big-endian file, which is not supported)" : "";
            throw new ModelFormatException(path, $"unsupported GGUF version {version}, expected 2 or 3{hint}");
        }
        ulong tensorCount = c.ReadUInt64("tensor count");
        ulong kvCount = c.ReadUInt64("metadata count");
        long remaining = c.Remaining;
        if (kvCount > (ulong)(remaining / MinMetadataRecordSize))
            throw new ModelFormatException(path, $"the header declares {kvCount} metadata entries, but the {remaining} bytes left can hold at most {remaining / MinMetadataRecordSize}");
        if (tensorCount > (ulong)(remaining / MinTensorInfoSize) ||
            (long)kvCount * MinMetadataRecordSize + (long)tensorCount * MinTensorInfoSize > remaining)
            throw new ModelFormatException(path, $"the header declares {tensorCount} tensors and {kvCount} metadata entries, more than the {remaining} bytes left can hold");

        // Counts are bounded by the file size but may still be hostile, so collections grow instead of trusting them.
        int capacityHint = (int)Math.Min(kvCount, 4096);
        var ordered = new List<KeyValuePair<string, GgufValue>>(capacityHint);
        var values = new Dictionary<string, GgufValue>(capacityHint, StringComparer.Ordinal);
        for (ulong i = 0; i < kvCount; i++)
        {
            long at = c.Position;
            string key = c.ReadString($"metadata key #{i}");
            if (key.Length == 0)
                throw new ModelFormatException(path, $"metadata entry #{i} at byte {at} has an empty key");
            uint typeId = c.ReadUInt32($"type of '{key}'", key);
            if (!GgufValueTypes.IsDefined(typeId))
                throw new ModelFormatException(path, $"unknown metadata value type {typeId}, expected 0 to 12", key);
            var value = ReadValue(ref c, (GgufValueType)typeId, key, 0);
            if (!values.TryAdd(key, value))
                throw new ModelFormatException(path, "duplicate metadata key", key);
            ordered.Add(new(key, value));
        }
        var metadata = new GgufMetadata(path, ordered, values);

        int alignment = ReadAlignment(metadata, path);
        string? architecture = metadata.Architecture;
        uint? fileType = values.TryGetValue("general.file_type", out var ft) && ft.TryGetInteger(out var ftValue) &&
                         ftValue >= 0 && ftValue <= uint.MaxValue ? (uint)ftValue : null;

        if (tensorCount > int.MaxValue)
            throw new ModelFormatException(path, $"the header declares {tensorCount} tensors, more than this reader supports ({int.MaxValue})");
        var raw = new List<RawTensor>((int)Math.Min(tensorCount, 4096));
        var names = new HashSet<string>((int)Math.Min(tensorCount, 4096), StringComparer.Ordinal);
        for (int i = 0; i < (int)tensorCount; i++)
        {
            string name = c.ReadString($"name of tensor #{i}");
            if (name.Length == 0)
                throw new ModelFormatException(path, $"tensor #{i} has an empty name");
            // ggml holds names in 64 bytes with the terminator: llama.cpp refuses a longer one at open, and our writer
            // would not copy the file (calibrate ran to the end, then failed writing).
            if (System.Text.Encoding.UTF8.GetByteCount(name) > GgufWriter.MaxTensorNameBytes)
                throw new ModelFormatException(path, $"the tensor name is {System.Text.Encoding.UTF8.GetByteCount(name)} bytes, longer than the {GgufWriter.MaxTensorNameBytes} ggml allows (llama.cpp refuses such a file too)", name);
            if (!names.Add(name))
                throw new ModelFormatException(path, "duplicate tensor name", name);
            uint nDims = c.ReadUInt32("n_dims", name);
            if (nDims > GgmlTypeInfo.MaxDimensions)
                throw new ModelFormatException(path, $"has {nDims} dimensions, expected 0 to {GgmlTypeInfo.MaxDimensions}", name);
            // A 0-d tensor is a scalar, as ggml reads it (missing dimensions are 1): gguf-py writes n_dims = len(shape),
            // so a converter's scalar (a per-tensor scale) has none. It is held as [1].
            var dims = new long[Math.Max(nDims, 1u)];
            if (nDims == 0) dims[0] = 1;
            for (int d = 0; d < nDims; d++)
            {
                ulong dim = c.ReadUInt64($"dimension {d}", name);
                if (dim is 0 or > long.MaxValue)
                    throw new ModelFormatException(path, $"dimension {d} is {dim}, expected a positive 63-bit size", name);
                dims[d] = (long)dim;
            }
            uint typeId = c.ReadUInt32("type", name);
            ulong offset = c.ReadUInt64("offset", name);
            raw.Add(new RawTensor(name, dims, typeId, offset));
        }

        long headerEnd = c.Position;
        long dataOffset = headerEnd + (alignment - headerEnd % alignment) % alignment;
        // A vocabulary-only file may end right after its header; the data section only has to exist if it has content.
        if (raw.Count > 0 && dataOffset > length)
            throw new ModelFormatException(path, $"the tensor data section would start at byte {dataOffset}, past the end of the file ({length} bytes); the file is truncated");
        long dataLength = Math.Max(0, length - dataOffset);
        // The padding before the data is zeros (FORMATS.md §1; llama.cpp and gguf-py write zeros). Anything else is the
        // rest of a tensor record the header's count left out, or damage: a count one short read the last record as
        // padding, every offset landed in the wrong place, and the load blamed a tensor's codes ("the tensor is corrupt").
        if (raw.Count > 0)
        {
            long checkedEnd = Math.Min(Math.Min(dataOffset, length), headerEnd + 65536);
            for (long at = headerEnd; at < checkedEnd; at++)
                if (data[at] != 0)
                    throw new ModelFormatException(path, $"byte {at}, in the padding between the tensor records (which end at byte {headerEnd}) and the tensor data (at byte {dataOffset}), is 0x{data[at]:X2}, not zero: the header's tensor count ({tensorCount}) is likely short of the records the file holds, or the header is damaged");
        }

        var tensors = BuildTensors(raw.ToArray(), alignment, dataLength, architecture, fileType, path);
        var byName = new Dictionary<string, GgufTensorInfo>(tensors.Length, StringComparer.Ordinal);
        foreach (var t in tensors) byName.Add(t.Name, t);

        return new Result
        {
            FilePath = path,
            Version = version,
            Alignment = alignment,
            DataOffset = dataOffset,
            Metadata = metadata,
            Tensors = tensors,
            TensorsByName = byName,
        };
    }

    /// <summary>
    /// Checks offsets against the data section, resolves type ids (which for id 39 needs the bytes up to the next
    /// tensor), derives sizes and proves that no two tensors overlap by walking them in offset order.
    /// </summary>
    private static GgufTensorInfo[] BuildTensors(RawTensor[] raw, int alignment, long dataLength, string? architecture, uint? fileType, string path)
    {
        var offsets = new long[raw.Length];
        var order = new int[raw.Length];
        for (int i = 0; i < raw.Length; i++)
        {
            var r = raw[i];
            // Offsets past the end are said in the walk below, in offset order: checked here, a file cut inside one tensor
            // named the next one ("data offset … is past the end"), never the tensor that was cut.
            if (r.Offset > (ulong)long.MaxValue)
                throw new ModelFormatException(path, $"data offset {r.Offset} is past the end of the tensor data section ({dataLength} bytes); the file is truncated or corrupt", r.Name);
            if (r.Offset % (ulong)alignment != 0)
                throw new ModelFormatException(path, $"data offset {r.Offset} is not a multiple of the alignment {alignment}", r.Name);
            offsets[i] = (long)r.Offset;
            order[i] = i;
        }
        Array.Sort(offsets, order);

        var tensors = new GgufTensorInfo[raw.Length];
        for (int k = 0; k < order.Length; k++)
        {
            var r = raw[order[k]];
            long offset = offsets[k];
            if (offset > dataLength)
                throw new ModelFormatException(path, $"data offset {offset} is past the end of the tensor data section ({dataLength} bytes); the file is truncated or corrupt", r.Name);
            long next = k + 1 < order.Length ? offsets[k + 1] : long.MaxValue;
            long limit = Math.Min(next, dataLength);
            long available = limit - offset;

            var type = GgmlTypeResolver.Resolve(r.TypeId, architecture, fileType, r.Dims, available);
            if (type is null)
            {
                string what = r.TypeId == (uint)GgmlType.I8_S
                    ? "type id 37 is bitnet.cpp's activation-only i8_s, which cannot appear in a file"
                    : $"unknown tensor type id {r.TypeId}; this reader knows the ggml types up to 39 except the removed ids 4, 5 and 31-33";
                throw new ModelFormatException(path, what, r.Name);
            }
            if (!GgmlTypeInfo.TryByteSize(type.Value, r.Dims, out long size, out var error))
                throw new ModelFormatException(path, $"shape [{string.Join(", ", r.Dims)}] does not fit type {GgmlTypeInfo.Name(type.Value)}: {error}", r.Name);
            if (size > available)
            {
                string why = next <= dataLength
                    ? $"overlaps tensor '{raw[order[k + 1]].Name}', which starts at data offset {limit}"
                    : $"runs past the end of the file (the data section is {dataLength} bytes); the file is truncated";
                throw new ModelFormatException(path, $"{GgmlTypeInfo.Name(type.Value)} [{string.Join(", ", r.Dims)}] needs {size} bytes from data offset {offset}, but {why}", r.Name);
            }
            // Tensors lie back to back, each padded to the alignment, as llama.cpp's loader requires (it refuses a file
            // whose offsets do not add up): a type changed to one of smaller size (F16 to Q8_0 in a damaged header) fit
            // before the next tensor, loaded, and generated garbage. TL1/TL2 sizes follow bitnet.cpp's kernels' tiling,
            // which this check leaves alone.
            if (next <= dataLength && type.Value is not (GgmlType.TL1 or GgmlType.TL2) && r.TypeId is not (38 or 39)
                && (offset + size + alignment - 1) / alignment * alignment is var end && end != next)
                throw new ModelFormatException(path,
                    $"{GgmlTypeInfo.Name(type.Value)} [{string.Join(", ", r.Dims)}] takes {size} bytes from data offset {offset} (to {end} with padding), but the next tensor, '{raw[order[k + 1]].Name}', starts at {next}: this tensor's type or shape does not match its data, or the header is damaged (llama.cpp refuses such a file too)", r.Name);
            long elements = 1;
            foreach (var d in r.Dims) elements *= d; // TryByteSize proved this does not overflow.
            tensors[order[k]] = new GgufTensorInfo(order[k], r.Name, r.Dims, type.Value, r.TypeId, offset, size, elements);
        }
        return tensors;
    }

    private static int ReadAlignment(GgufMetadata metadata, string path)
    {
        if (!metadata.TryGetValue(GgufFile.AlignmentKey, out var value)) return GgufFile.DefaultAlignment;
        if (!value.TryGetInteger(out var n))
            throw new ModelFormatException(path, $"found a {GgufValueTypes.Name(value.Type)} value, expected a uint32", GgufFile.AlignmentKey);
        // The spec asks for a multiple of 8; the 1 GiB cap keeps padding arithmetic far from overflow.
        if (n <= 0 || n % 8 != 0 || n > 1 << 30)
            throw new ModelFormatException(path, $"alignment {n} is invalid, expected a nonzero multiple of 8 (at most 2^30)", GgufFile.AlignmentKey);
        return (int)n;
    }

    private static GgufValue ReadValue(ref Cursor c, GgufValueType type, string key, int depth) => type switch
    {
        GgufValueType.UInt8 => GgufValue.FromUInt8(c.ReadByte(key)),
        GgufValueType.Int8 => GgufValue.FromInt8((sbyte)c.ReadByte(key)),
        GgufValueType.UInt16 => GgufValue.FromUInt16(c.ReadUInt16(key)),
        GgufValueType.Int16 => GgufValue.FromInt16((short)c.ReadUInt16(key)),
        GgufValueType.UInt32 => GgufValue.FromUInt32(c.ReadUInt32("value", key)),
        GgufValueType.Int32 => GgufValue.FromInt32((int)c.ReadUInt32("value", key)),
        GgufValueType.Float32 => GgufValue.FromFloat32(BitConverter.UInt32BitsToSingle(c.ReadUInt32("value", key))),
        GgufValueType.Bool => GgufValue.FromBool(c.ReadBool(key)),
        GgufValueType.String => GgufValue.FromString(c.ReadString(key)),
        GgufValueType.Array => GgufValue.FromArray(ReadArray(ref c, key, depth + 1)),
        GgufValueType.UInt64 => GgufValue.FromUInt64(c.ReadUInt64("value", key)),
        GgufValueType.Int64 => GgufValue.FromInt64((long)c.ReadUInt64("value", key)),
        GgufValueType.Float64 => GgufValue.FromFloat64(BitConverter.UInt64BitsToDouble(c.ReadUInt64("value", key))),
        _ => throw new ModelFormatException(c.Path, $"unknown metadata value type {(uint)type}, expected 0 to 12", key),
    };

    private static GgufArray ReadArray(ref Cursor c, string key, int depth)
    {
        if (depth > MaxArrayNesting)
            throw new ModelFormatException(c.Path, $"arrays are nested more than {MaxArrayNesting} deep", key);
        uint elementTypeId = c.ReadUInt32("array element type", key);
        if (!GgufValueTypes.IsDefined(elementTypeId))
            throw new ModelFormatException(c.Path, $"unknown array element type {elementTypeId}, expected 0 to 12", key);
        var elementType = (GgufValueType)elementTypeId;
        ulong count = c.ReadUInt64("array count", key);
        long minSize = GgufValueTypes.MinimumSize(elementType);
        if (count > (ulong)(c.Remaining / minSize))
            throw new ModelFormatException(c.Path, $"array of {count} {GgufValueTypes.Name(elementType)} elements cannot fit in the {c.Remaining} bytes left (each needs at least {minSize}); the file is truncated or corrupt", key);
        if (count > int.MaxValue)
            throw new ModelFormatException(c.Path, $"array of {count} elements is larger than this reader supports", key);
        int n = (int)count;

        switch (elementType)
        {
            case GgufValueType.UInt8: return GgufArray.Wrap(elementType, c.ReadFixedArray<byte>(n, key));
            case GgufValueType.Int8: return GgufArray.Wrap(elementType, c.ReadFixedArray<sbyte>(n, key));
            case GgufValueType.UInt16: return GgufArray.Wrap(elementType, c.ReadFixedArray<ushort>(n, key));
            case GgufValueType.Int16: return GgufArray.Wrap(elementType, c.ReadFixedArray<short>(n, key));
            case GgufValueType.UInt32: return GgufArray.Wrap(elementType, c.ReadFixedArray<uint>(n, key));
            case GgufValueType.Int32: return GgufArray.Wrap(elementType, c.ReadFixedArray<int>(n, key));
            case GgufValueType.Float32: return GgufArray.Wrap(elementType, c.ReadFixedArray<float>(n, key));
            case GgufValueType.UInt64: return GgufArray.Wrap(elementType, c.ReadFixedArray<ulong>(n, key));
            case GgufValueType.Int64: return GgufArray.Wrap(elementType, c.ReadFixedArray<long>(n, key));
            case GgufValueType.Float64: return GgufArray.Wrap(elementType, c.ReadFixedArray<double>(n, key));
            case GgufValueType.Bool:
            {
                var bools = new bool[n];
                for (int i = 0; i < n; i++) bools[i] = c.ReadBool(key);
                return GgufArray.Wrap(elementType, bools);
            }
            case GgufValueType.String:
            {
                var strings = new string[n];
                for (int i = 0; i < n; i++) strings[i] = c.ReadString(key);
                return GgufArray.Wrap(elementType, strings);
            }
            default:
            {
                var arrays = new GgufArray[n];
                // Each element is a complete array value (its own element type and count), nothing in between.
                for (int i = 0; i < n; i++) arrays[i] = ReadArray(ref c, key, depth + 1);
                return GgufArray.Wrap(elementType, arrays);
            }
        }
    }

    private static string FormatMagic(uint magic)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, magic);
        return string.Create(CultureInfo.InvariantCulture, $"{b[0]:X2} {b[1]:X2} {b[2]:X2} {b[3]:X2}");
    }

    /// <summary>A bounds-checked little-endian reader; every read names what it was reading when it runs out.</summary>
    private ref struct Cursor(byte* data, long length, string path)
    {
        private readonly byte* _data = data;
        private readonly long _length = length;

        public readonly string Path = path;
        public long Position;

        public readonly long Remaining => _length - Position;

        private byte* Take(long count, string what, string? item)
        {
            if (count > _length - Position)
                throw new ModelFormatException(Path, $"the file ends at byte {_length} while reading {what} ({count} bytes at byte {Position}); it is truncated or corrupt", item);
            byte* p = _data + Position;
            Position += count;
            return p;
        }

        public byte ReadByte(string item) => *Take(1, "a 1-byte value", item);

        public bool ReadBool(string item)
        {
            long at = Position;
            byte b = *Take(1, "a bool", item);
            return b switch
            {
                0 => false,
                1 => true,
                _ => throw new ModelFormatException(Path, $"bool at byte {at} is {b}, expected 0 or 1", item),
            };
        }

        public ushort ReadUInt16(string item) => BinaryPrimitives.ReadUInt16LittleEndian(new ReadOnlySpan<byte>(Take(2, "a 2-byte value", item), 2));

        public uint ReadUInt32(string what, string? item = null) => BinaryPrimitives.ReadUInt32LittleEndian(new ReadOnlySpan<byte>(Take(4, what, item), 4));

        public ulong ReadUInt64(string what, string? item = null) => BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(Take(8, what, item), 8));

        /// <summary>
        /// A GGUF string: u64 length, then UTF-8 bytes. Invalid UTF-8 is replaced (U+FFFD) rather than rejected, as
        /// llama.cpp keeps such strings too; the length is checked against the bytes left before anything is allocated.
        /// </summary>
        public string ReadString(string what, string? item = null)
        {
            long at = Position;
            ulong len = ReadUInt64($"the length of {what}", item);
            if (len > (ulong)Remaining)
                throw new ModelFormatException(Path, $"string at byte {at} claims {len} bytes, but only {Remaining} remain; the file is truncated or corrupt", item ?? what);
            if (len > int.MaxValue)
                throw new ModelFormatException(Path, $"string at byte {at} claims {len} bytes, more than this reader supports", item ?? what);
            byte* p = Take((long)len, what, item);
            return len == 0 ? "" : Encoding.UTF8.GetString(p, (int)len);
        }

        /// <summary>Copies <paramref name="count"/> little-endian elements (count already bounded by the caller).</summary>
        public T[] ReadFixedArray<T>(int count, string item) where T : unmanaged
        {
            long bytes = (long)count * sizeof(T);
            byte* p = Take(bytes, $"{count} array elements", item);
            var result = new T[count];
            new ReadOnlySpan<T>(p, count).CopyTo(result);
            return result;
        }
    }
}
