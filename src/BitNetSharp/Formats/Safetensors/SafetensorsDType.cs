namespace BitNetSharp.Formats.Safetensors;

/// <summary>Element types a safetensors header can name (the names are the header's spelling).</summary>
public enum SafetensorsDType
{
    /// <summary>A dtype string this library does not know; such tensors are listed but cannot be read.</summary>
    Unknown = 0,
    BOOL,
    U8,
    I8,
    F8_E5M2,
    F8_E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

/// <summary>Sizes and support of <see cref="SafetensorsDType"/>s.</summary>
public static class SafetensorsDTypes
{
    /// <summary>Parses the header's dtype string ("F32", "BF16", ...); unknown strings give <see cref="SafetensorsDType.Unknown"/>.</summary>
    public static SafetensorsDType Parse(string name) => name switch
    {
        "BOOL" => SafetensorsDType.BOOL,
        "U8" => SafetensorsDType.U8,
        "I8" => SafetensorsDType.I8,
        "F8_E5M2" => SafetensorsDType.F8_E5M2,
        "F8_E4M3" => SafetensorsDType.F8_E4M3,
        "I16" => SafetensorsDType.I16,
        "U16" => SafetensorsDType.U16,
        "F16" => SafetensorsDType.F16,
        "BF16" => SafetensorsDType.BF16,
        "I32" => SafetensorsDType.I32,
        "U32" => SafetensorsDType.U32,
        "F32" => SafetensorsDType.F32,
        "F64" => SafetensorsDType.F64,
        "I64" => SafetensorsDType.I64,
        "U64" => SafetensorsDType.U64,
        _ => SafetensorsDType.Unknown,
    };

    /// <summary>Bytes per element; 0 for <see cref="SafetensorsDType.Unknown"/>, whose size cannot be checked.</summary>
    public static int ElementSize(SafetensorsDType type) => type switch
    {
        SafetensorsDType.BOOL or SafetensorsDType.U8 or SafetensorsDType.I8 or SafetensorsDType.F8_E5M2 or SafetensorsDType.F8_E4M3 => 1,
        SafetensorsDType.I16 or SafetensorsDType.U16 or SafetensorsDType.F16 or SafetensorsDType.BF16 => 2,
        SafetensorsDType.I32 or SafetensorsDType.U32 or SafetensorsDType.F32 => 4,
        SafetensorsDType.F64 or SafetensorsDType.I64 or SafetensorsDType.U64 => 8,
        _ => 0,
    };

    /// <summary>
    /// The dtypes BitNet checkpoints use and this library reads: F32/F16/BF16 float weights and norms, U8 packed
    /// ternary weights, I8. Others are listed by <c>inspect</c> but reading them is an error.
    /// </summary>
    public static bool IsSupported(SafetensorsDType type) =>
        type is SafetensorsDType.F32 or SafetensorsDType.F16 or SafetensorsDType.BF16 or SafetensorsDType.U8 or SafetensorsDType.I8;
}
