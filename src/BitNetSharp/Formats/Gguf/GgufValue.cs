using System.Globalization;

namespace BitNetSharp.Formats.Gguf;

/// <summary>
/// One GGUF metadata value: its wire type and the decoded .NET value (byte, sbyte, ushort, short, uint, int,
/// float, bool, string, <see cref="GgufArray"/>, ulong, long or double). Values are decoded when the file is
/// opened so they outlive the file mapping and can be handed to a <see cref="GgufWriter"/> unchanged.
/// </summary>
public sealed class GgufValue
{
    private GgufValue(GgufValueType type, object value)
    {
        Type = type;
        Value = value;
    }

    public GgufValueType Type { get; }

    /// <summary>The decoded value, boxed; its .NET type is fixed by <see cref="Type"/>.</summary>
    public object Value { get; }

    public static GgufValue FromUInt8(byte value) => new(GgufValueType.UInt8, value);
    public static GgufValue FromInt8(sbyte value) => new(GgufValueType.Int8, value);
    public static GgufValue FromUInt16(ushort value) => new(GgufValueType.UInt16, value);
    public static GgufValue FromInt16(short value) => new(GgufValueType.Int16, value);
    public static GgufValue FromUInt32(uint value) => new(GgufValueType.UInt32, value);
    public static GgufValue FromInt32(int value) => new(GgufValueType.Int32, value);
    public static GgufValue FromFloat32(float value) => new(GgufValueType.Float32, value);
    public static GgufValue FromBool(bool value) => new(GgufValueType.Bool, value);
    public static GgufValue FromString(string value) => new(GgufValueType.String, value ?? throw new ArgumentNullException(nameof(value)));
    public static GgufValue FromArray(GgufArray value) => new(GgufValueType.Array, value ?? throw new ArgumentNullException(nameof(value)));
    public static GgufValue FromUInt64(ulong value) => new(GgufValueType.UInt64, value);
    public static GgufValue FromInt64(long value) => new(GgufValueType.Int64, value);
    public static GgufValue FromFloat64(double value) => new(GgufValueType.Float64, value);

    /// <summary>The value as a signed 128-bit integer if <see cref="Type"/> is any integer type, which covers every width without loss.</summary>
    public bool TryGetInteger(out Int128 value)
    {
        switch (Value)
        {
            case byte v: value = v; return true;
            case sbyte v: value = v; return true;
            case ushort v: value = v; return true;
            case short v: value = v; return true;
            case uint v: value = v; return true;
            case int v: value = v; return true;
            case ulong v: value = v; return true;
            case long v: value = v; return true;
            default: value = 0; return false;
        }
    }

    /// <summary>The value as a double if <see cref="Type"/> is float32 or float64.</summary>
    public bool TryGetFloat(out double value)
    {
        switch (Value)
        {
            case float f: value = f; return true;
            case double d: value = d; return true;
            default: value = 0; return false;
        }
    }

    /// <summary>A short human-readable rendering (arrays as their element type and count).</summary>
    public override string ToString() => Value switch
    {
        string s => s,
        bool b => b ? "true" : "false",
        float f => f.ToString("R", CultureInfo.InvariantCulture),
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        GgufArray a => a.ToString(),
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => Value.ToString() ?? "",
    };
}
