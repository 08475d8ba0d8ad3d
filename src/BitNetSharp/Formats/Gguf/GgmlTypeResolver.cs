namespace BitNetSharp.Formats.Gguf;

/// <summary>
/// Turns a tensor type id read from a GGUF file into a <see cref="GgmlType"/>, settling the ids that upstream
/// ggml and bitnet.cpp's fork assign differently (FORMATS.md §2.1).
/// <list type="bullet">
/// <item>36 is always I2_S: upstream's 36 (IQ4_NL_4_4) was a runtime repacking that no writer ever stored.</item>
/// <item>37 is the fork's activation-only I8_S (upstream IQ4_NL_4_8, also never stored): rejected.</item>
/// <item>38 is always TL1, for the same reason as 36 (upstream IQ4_NL_8_8).</item>
/// <item>39 is TL2 when <c>general.file_type</c> is 39 (the fork's MOSTLY_TL2), or when the architecture starts
/// with "bitnet" and a TL2 tensor of this shape fits the bytes the tensor has before the next one; otherwise it is
/// upstream's MXFP4, which is what every non-BitNet file with id 39 (e.g. gpt-oss) contains.</item>
/// <item>0x4231 is BitNetSharp's binary type <see cref="GgmlType.B1_128"/>.</item>
/// <item>4, 5 and 31–33 (types ggml removed) and anything else above 39 are unknown.</item>
/// </list>
/// </summary>
public static class GgmlTypeResolver
{
    /// <summary>The fork's <c>general.file_type</c> value for a mostly-TL2 file.</summary>
    public const uint FileTypeMostlyTl2 = 39;

    /// <summary>The fork's <c>general.file_type</c> value for a mostly-I2_S file (the official 2B4T GGUF).</summary>
    public const uint FileTypeMostlyI2S = 40;

    /// <summary>
    /// Resolves <paramref name="fileId"/> or returns null when no known type has that id.
    /// <paramref name="availableBytes"/> is the span from this tensor's offset to the next tensor's offset (or the
    /// end of the file); it only matters for id 39.
    /// </summary>
    public static GgmlType? Resolve(uint fileId, string? architecture, uint? fileType, ReadOnlySpan<long> dims, long availableBytes)
    {
        switch (fileId)
        {
            case (uint)GgmlType.B1_128:
                return GgmlType.B1_128;
            case 4 or 5:
            case >= 31 and <= 33:
            case 37:
            case > 39:
                return null;
            case 39:
                bool bitnetFile = fileType == FileTypeMostlyTl2 ||
                    (architecture is not null && architecture.StartsWith("bitnet", StringComparison.Ordinal) &&
                     GgmlTypeInfo.TryByteSize(GgmlType.TL2, dims, out var tl2Bytes, out _) && tl2Bytes <= availableBytes);
                return bitnetFile ? GgmlType.TL2 : GgmlType.MXFP4;
            default:
                return (GgmlType)fileId;
        }
    }
}
