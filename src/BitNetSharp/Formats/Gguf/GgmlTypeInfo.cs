using System.Diagnostics.CodeAnalysis;

namespace BitNetSharp.Formats.Gguf;

/// <summary>
/// Block geometry of each <see cref="GgmlType"/> and the byte size of a tensor, which GGUF never stores: a reader
/// derives it from type and shape to bound every tensor inside the file, and a writer checks the caller's bytes
/// against it. Sizes follow ggml's type traits (k-quant structs laid out without padding); I2_S, TL1 and TL2
/// have the bitnet.cpp fork's special rules (FORMATS.md §2.5, §2.7).
/// </summary>
public static class GgmlTypeInfo
{
    /// <summary>Largest dimension count a GGUF tensor may have (ggml's GGML_MAX_DIMS).</summary>
    public const int MaxDimensions = 4;

    /// <summary>Weights per block: the innermost dimension must be a multiple of it. 0 for types sized by a whole-tensor rule.</summary>
    public static int BlockSize(GgmlType type) => Geometry(type).BlockSize;

    /// <summary>Bytes per block of <see cref="BlockSize"/> weights. 0 for types sized by a whole-tensor rule.</summary>
    public static int BytesPerBlock(GgmlType type) => Geometry(type).BlockBytes;

    /// <summary>True for types this library knows how to size (every member except <see cref="GgmlType.I8_S"/>).</summary>
    public static bool IsKnown(GgmlType type) => Geometry(type).Name is not null && type != GgmlType.I8_S;

    /// <summary>The name ggml prints (e.g. "q8_0", "i2_s"), or the numeric id for an unknown value.</summary>
    public static string Name(GgmlType type) => Geometry(type).Name ?? ((uint)type).ToString(System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>The id written to a GGUF file for this type (39 for both TL2 and MXFP4).</summary>
    public static uint FileId(GgmlType type) => type == GgmlType.MXFP4 ? 39u : (uint)type;

    /// <summary>True for the ternary encodings (TQ1_0, TQ2_0, I2_S, TL1, TL2).</summary>
    public static bool IsTernary(GgmlType type) =>
        type is GgmlType.TQ1_0 or GgmlType.TQ2_0 or GgmlType.I2_S or GgmlType.TL1 or GgmlType.TL2;

    /// <summary>Bytes of a tensor of <paramref name="type"/> with dims ne0 first; throws <see cref="ArgumentException"/> when the shape does not fit the type.</summary>
    public static long ByteSize(GgmlType type, ReadOnlySpan<long> dims)
    {
        if (!TryByteSize(type, dims, out var bytes, out var error)) throw new ArgumentException(error, nameof(dims));
        return bytes;
    }

    /// <summary>
    /// As <see cref="ByteSize"/>, returning false with a user-facing reason instead of throwing. Every product is
    /// overflow-checked so a hostile shape cannot wrap into a small size.
    /// </summary>
    public static bool TryByteSize(GgmlType type, ReadOnlySpan<long> dims, out long bytes, [NotNullWhen(false)] out string? error)
    {
        bytes = 0;
        if (dims.Length is < 1 or > MaxDimensions)
        {
            error = $"a tensor has 1 to {MaxDimensions} dimensions, found {dims.Length}";
            return false;
        }
        long elements = 1;
        foreach (var d in dims)
        {
            if (d < 1)
            {
                error = $"dimension {d} is not positive";
                return false;
            }
            if (elements > long.MaxValue / d)
            {
                error = "the element count overflows 64 bits";
                return false;
            }
            elements *= d;
        }

        var g = Geometry(type);
        if (g.Name is null || type == GgmlType.I8_S)
        {
            error = type == GgmlType.I8_S
                ? "type i8_s is bitnet.cpp's activation-only type and cannot be stored"
                : $"unknown ggml type {(uint)type}";
            return false;
        }

        switch (type)
        {
            case GgmlType.I2_S:
            case GgmlType.TL1:
                // ggml_nbytes special case in the fork: 2 bits per weight, then a 32-byte tail holding the fp32 scale.
                bytes = elements / 4 + 32;
                error = null;
                return true;
            case GgmlType.TL2:
                return TryTl2ByteSize(dims, out bytes, out error);
            case GgmlType.B1_128:
                // Rows padded to 128 columns (16 bytes per block), then the 32-byte scale tail.
                if (dims[0] > long.MaxValue - 127)
                {
                    error = "the byte size overflows 64 bits";
                    return false;
                }
                long rowBlocks = (dims[0] + 127) / 128;
                long rows = dims[0] == 0 ? 0 : elements / dims[0];
                if (rows > 0 && rowBlocks > long.MaxValue / 16 / rows)
                {
                    error = "the byte size overflows 64 bits";
                    return false;
                }
                bytes = rows * rowBlocks * 16 + 32;
                error = null;
                return true;
        }

        long ne0 = dims[0];
        if (ne0 % g.BlockSize != 0)
        {
            error = $"type {g.Name} needs the innermost dimension to be a multiple of {g.BlockSize}, found {ne0}";
            return false;
        }
        long blocks = elements / g.BlockSize;
        if (blocks > long.MaxValue / g.BlockBytes)
        {
            error = "the byte size overflows 64 bits";
            return false;
        }
        bytes = blocks * g.BlockBytes;
        error = null;
        return true;
    }

    /// <summary>
    /// TL2's size in the fork's ggml_nbytes: the first ne0−256 columns of each row in 5-bit triples, the last 256 in
    /// 4-bit pairs, rounded up to 32, plus the 32-byte scale tail. Evaluated left to right in integer arithmetic as
    /// written in FORMATS.md §2.7 (UNVERIFIED against the C source); only two-dimensional tensors with ne0 ≥ 256.
    /// </summary>
    private static bool TryTl2ByteSize(ReadOnlySpan<long> dims, out long bytes, [NotNullWhen(false)] out string? error)
    {
        bytes = 0;
        if (dims.Length > 2 && (dims[2] != 1 || (dims.Length > 3 && dims[3] != 1)))
        {
            error = "type tl2 is only defined for matrices";
            return false;
        }
        long ne0 = dims[0], ne1 = dims.Length > 1 ? dims[1] : 1;
        if (ne0 < 256)
        {
            error = $"type tl2 needs the innermost dimension to be at least 256, found {ne0}";
            return false;
        }
        try
        {
            long triples = checked((ne0 - 256) * ne1 / 3 * 5 / 8);
            long pairs = checked(256 * ne1 / 2 * 4 / 8);
            long body = checked(triples + pairs);
            bytes = checked((body + 31) / 32 * 32 + 32);
        }
        catch (OverflowException)
        {
            error = "the byte size overflows 64 bits";
            return false;
        }
        error = null;
        return true;
    }

    private readonly record struct TypeGeometry(string? Name, int BlockSize, int BlockBytes);

    private static TypeGeometry Geometry(GgmlType type) => type switch
    {
        GgmlType.F32 => new("f32", 1, 4),
        GgmlType.F16 => new("f16", 1, 2),
        GgmlType.Q4_0 => new("q4_0", 32, 18),
        GgmlType.Q4_1 => new("q4_1", 32, 20),
        GgmlType.Q5_0 => new("q5_0", 32, 22),
        GgmlType.Q5_1 => new("q5_1", 32, 24),
        GgmlType.Q8_0 => new("q8_0", 32, 34),
        GgmlType.Q8_1 => new("q8_1", 32, 36),
        GgmlType.Q2_K => new("q2_K", 256, 84),
        GgmlType.Q3_K => new("q3_K", 256, 110),
        GgmlType.Q4_K => new("q4_K", 256, 144),
        GgmlType.Q5_K => new("q5_K", 256, 176),
        GgmlType.Q6_K => new("q6_K", 256, 210),
        GgmlType.Q8_K => new("q8_K", 256, 292),
        GgmlType.IQ2_XXS => new("iq2_xxs", 256, 66),
        GgmlType.IQ2_XS => new("iq2_xs", 256, 74),
        GgmlType.IQ3_XXS => new("iq3_xxs", 256, 98),
        GgmlType.IQ1_S => new("iq1_s", 256, 50),
        GgmlType.IQ4_NL => new("iq4_nl", 32, 18),
        GgmlType.IQ3_S => new("iq3_s", 256, 110),
        GgmlType.IQ2_S => new("iq2_s", 256, 82),
        GgmlType.IQ4_XS => new("iq4_xs", 256, 136),
        GgmlType.I8 => new("i8", 1, 1),
        GgmlType.I16 => new("i16", 1, 2),
        GgmlType.I32 => new("i32", 1, 4),
        GgmlType.I64 => new("i64", 1, 8),
        GgmlType.F64 => new("f64", 1, 8),
        GgmlType.IQ1_M => new("iq1_m", 256, 56),
        GgmlType.BF16 => new("bf16", 1, 2),
        GgmlType.TQ1_0 => new("tq1_0", 256, 54),
        GgmlType.TQ2_0 => new("tq2_0", 256, 66),
        GgmlType.I2_S => new("i2_s", 0, 0),
        GgmlType.I8_S => new("i8_s", 0, 0),
        GgmlType.TL1 => new("tl1", 0, 0),
        GgmlType.TL2 => new("tl2", 0, 0),
        GgmlType.B1_128 => new("b1_128", 0, 0),
        GgmlType.MXFP4 => new("mxfp4", 32, 17),
        _ => default,
    };
}
