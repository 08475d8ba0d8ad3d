namespace BitNetSharp.Formats.Gguf;

/// <summary>The 13 GGUF metadata value types; the values are the u32 ids written in files.</summary>
public enum GgufValueType : uint
{
    UInt8 = 0,
    Int8 = 1,
    UInt16 = 2,
    Int16 = 3,
    UInt32 = 4,
    Int32 = 5,
    Float32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    UInt64 = 10,
    Int64 = 11,
    Float64 = 12,
}

/// <summary>Sizes and names of <see cref="GgufValueType"/>s.</summary>
public static class GgufValueTypes
{
    /// <summary>True for the ids 0–12.</summary>
    public static bool IsDefined(uint id) => id <= (uint)GgufValueType.Float64;

    /// <summary>Bytes of a fixed-size value; 0 for strings and arrays.</summary>
    public static int FixedSize(GgufValueType type) => type switch
    {
        GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.Bool => 1,
        GgufValueType.UInt16 or GgufValueType.Int16 => 2,
        GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.Float32 => 4,
        GgufValueType.UInt64 or GgufValueType.Int64 or GgufValueType.Float64 => 8,
        _ => 0,
    };

    /// <summary>
    /// The fewest bytes one value of <paramref name="type"/> can occupy: a string is at least its u64 length, an
    /// array at least its u32 element type and u64 count. Dividing the bytes left by this bounds any element count
    /// before anything is allocated.
    /// </summary>
    public static int MinimumSize(GgufValueType type) => type switch
    {
        GgufValueType.String => 8,
        GgufValueType.Array => 12,
        _ => FixedSize(type),
    };

    /// <summary>True for the eight integer types.</summary>
    public static bool IsInteger(GgufValueType type) => type is GgufValueType.UInt8 or GgufValueType.Int8 or
        GgufValueType.UInt16 or GgufValueType.Int16 or GgufValueType.UInt32 or GgufValueType.Int32 or
        GgufValueType.UInt64 or GgufValueType.Int64;

    /// <summary>Lower-case name as gguf.md spells it ("uint32", "string", ...).</summary>
    public static string Name(GgufValueType type) => type switch
    {
        GgufValueType.UInt8 => "uint8",
        GgufValueType.Int8 => "int8",
        GgufValueType.UInt16 => "uint16",
        GgufValueType.Int16 => "int16",
        GgufValueType.UInt32 => "uint32",
        GgufValueType.Int32 => "int32",
        GgufValueType.Float32 => "float32",
        GgufValueType.Bool => "bool",
        GgufValueType.String => "string",
        GgufValueType.Array => "array",
        GgufValueType.UInt64 => "uint64",
        GgufValueType.Int64 => "int64",
        GgufValueType.Float64 => "float64",
        _ => $"type {(uint)type}",
    };
}
