namespace BitNetSharp.Formats.Safetensors;

/// <summary>
/// One tensor of a safetensors file, validated against the file: its byte range lies in the data section, matches
/// shape × element size, and overlaps no other tensor. <see cref="Shape"/> is in PyTorch order (outermost first),
/// the reverse of GGUF's ne0-first dims.
/// </summary>
public sealed class SafetensorsTensorInfo
{
    private readonly long[] _shape;

    internal SafetensorsTensorInfo(SafetensorsFile file, string name, string dtypeName, long[] shape, long begin, long end, long elementCount)
    {
        File = file;
        Name = name;
        DTypeName = dtypeName;
        DType = SafetensorsDTypes.Parse(dtypeName);
        _shape = shape;
        DataBegin = begin;
        DataEnd = end;
        ElementCount = elementCount;
    }

    /// <summary>The file holding the tensor's bytes.</summary>
    public SafetensorsFile File { get; }

    public string Name { get; }

    public SafetensorsDType DType { get; }

    /// <summary>The dtype as the header spells it (kept for dtypes this library does not know).</summary>
    public string DTypeName { get; }

    /// <summary>PyTorch order, outermost first; empty for a scalar.</summary>
    public ReadOnlySpan<long> Shape => _shape;

    /// <summary>Start of the tensor's bytes, relative to the data section after the header.</summary>
    public long DataBegin { get; }

    public long DataEnd { get; }

    public long ByteLength => DataEnd - DataBegin;

    public long ElementCount { get; }

    public bool IsSupported => SafetensorsDTypes.IsSupported(DType);

    /// <summary>PyTorch-style shape text: "[640, 2560]".</summary>
    public string ShapeText => "[" + string.Join(", ", _shape) + "]";

    public override string ToString() => $"{Name} {DTypeName} {ShapeText}";
}
