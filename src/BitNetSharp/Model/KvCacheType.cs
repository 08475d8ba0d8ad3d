namespace BitNetSharp.Model;

/// <summary>The element type K and V rows are stored in. Chosen once, when the cache is created.</summary>
public enum KvCacheType
{
    /// <summary>4 bytes per value, exact.</summary>
    F32,

    /// <summary>2 bytes per value, IEEE half (bitnet.cpp's default type_k = type_v = F16); relative error ≤ 2^−11.</summary>
    F16,

    /// <summary>1 byte per value plus one fp32 scale per head row: q = round(x·127/max|x|); absolute error ≤ scale/2.</summary>
    Int8,

    /// <summary>1 byte per value (FP8 E4M3) plus one fp32 scale per head row mapping max|x| to 448; relative error ≤ 2^−4 for normals.</summary>
    Fp8E4M3,
}

/// <summary>The KV cache types' names as every output writes them (JSON, /v1/models, the telemetry context, messages):
/// <c>f32</c>, <c>f16</c>, <c>int8</c>, <c>fp8e4m3</c>, each of which <c>--kv-type</c> reads back. (Outputs differed:
/// the telemetry context and profile wrote <c>Int8</c> and <c>Fp8E4M3</c>, bench <c>Int8</c>, /v1/models <c>int8</c>.)</summary>
public static class KvCacheTypeNames
{
    public static string Name(this KvCacheType type) => type switch
    {
        KvCacheType.F32 => "f32",
        KvCacheType.F16 => "f16",
        KvCacheType.Int8 => "int8",
        KvCacheType.Fp8E4M3 => "fp8e4m3",
        _ => type.ToString(),
    };
}
