namespace BitNetSharp.Formats.Gguf;

/// <summary>
/// One tensor-info record of a GGUF file, validated: its data lies inside the file, is aligned, and overlaps no
/// other tensor. Dimensions are in ggml order, ne0 (the contiguous one) first, so a PyTorch [out, in] linear
/// weight has <c>Dims = [in, out]</c>.
/// </summary>
public sealed class GgufTensorInfo
{
    private readonly long[] _dims;

    internal GgufTensorInfo(int index, string name, long[] dims, GgmlType type, uint typeId, long offset, long byteSize, long elementCount)
    {
        Index = index;
        Name = name;
        _dims = dims;
        Type = type;
        TypeId = typeId;
        Offset = offset;
        ByteSize = byteSize;
        ElementCount = elementCount;
    }

    /// <summary>Position in the file's tensor-info list.</summary>
    public int Index { get; }

    public string Name { get; }

    /// <summary>ne0 first (innermost).</summary>
    public ReadOnlySpan<long> Dims => _dims;

    public int DimensionCount => _dims.Length;

    public GgmlType Type { get; }

    /// <summary>The type id as written in the file (39 for both TL2 and MXFP4).</summary>
    public uint TypeId { get; }

    /// <summary>Byte offset from the start of the data section (a multiple of the file's alignment).</summary>
    public long Offset { get; }

    /// <summary>Derived from type and dims by <see cref="GgmlTypeInfo.ByteSize"/>; GGUF does not store it.</summary>
    public long ByteSize { get; }

    public long ElementCount { get; }

    /// <summary>ggml-style shape text, ne0 first: "[2560, 6912]".</summary>
    public string ShapeText => "[" + string.Join(", ", _dims) + "]";

    public override string ToString() => $"{Name} {GgmlTypeInfo.Name(Type)} {ShapeText}";
}
