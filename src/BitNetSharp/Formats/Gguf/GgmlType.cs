namespace BitNetSharp.Formats.Gguf;

/// <summary>
/// A ggml tensor element type. Every member's value is the id written in GGUF files, with one exception:
/// id 39 means TL2 in bitnet.cpp's fork and MXFP4 upstream (FORMATS.md §2.1), so <see cref="TL2"/> keeps 39 and
/// <see cref="MXFP4"/> gets a value outside the u32 id range that files use today; <see cref="GgmlTypeInfo.FileId"/>
/// maps it back to 39. Readers never cast a file id to this enum directly: <see cref="GgmlTypeResolver"/> does.
/// Ids that ggml removed (4, 5, 31–33) or that were only ever runtime repackings are absent on purpose.
/// </summary>
public enum GgmlType : uint
{
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,

    /// <summary>bitnet.cpp's 2-bit ternary layout with one fp32 scale per tensor (FORMATS.md §2.5). File id 36.</summary>
    I2_S = 36,

    /// <summary>bitnet.cpp's int8 activation type; it never appears in a file, so readers reject it.</summary>
    I8_S = 37,

    /// <summary>bitnet.cpp's ARM lookup-table layout; build-specific, sized only. File id 38.</summary>
    TL1 = 38,

    /// <summary>bitnet.cpp's x86 lookup-table layout; build-specific, sized only. File id 39 (shared with MXFP4).</summary>
    TL2 = 39,

    /// <summary>
    /// BitNetSharp's own binary {−1,+1} weight type (the original BitNet: sign(W) with an absmean scale), file id
    /// 0x4231 ("1B"), far above ggml's range so no upstream type will collide with it; only BitNetSharp reads it.
    /// Layout (<see cref="Quantization.B1"/>): each row padded to a multiple of 128 columns, 1 bit per weight LSB-first
    /// (1 = +1), rows back to back, then a 32-byte tail whose first 4 bytes are the fp32 tensor scale.
    /// </summary>
    B1_128 = 0x4231,

    /// <summary>Upstream ggml's MXFP4 (32 weights, one E8M0 exponent + 16 nibble bytes). File id 39, see the type summary.</summary>
    MXFP4 = 0x1_0000 | 39,
}
