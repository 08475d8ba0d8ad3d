using System.Diagnostics.CodeAnalysis;
using System.Globalization;

namespace BitNetSharp.Formats.Gguf;

/// <summary>
/// The key/value metadata of a GGUF file in file order, with typed accessors whose errors name the file, the key,
/// what was found and what was expected. Architecture keys are formed by concatenation (<see cref="ArchitectureKey"/>):
/// architecture names contain dots ("bitnet-b1.58"), so keys are never split on '.'.
/// </summary>
public sealed class GgufMetadata
{
    private readonly Dictionary<string, GgufValue> _values;
    private readonly List<KeyValuePair<string, GgufValue>> _ordered;

    internal GgufMetadata(string filePath, List<KeyValuePair<string, GgufValue>> ordered, Dictionary<string, GgufValue> values)
    {
        FilePath = filePath;
        _ordered = ordered;
        _values = values;
    }

    /// <summary>The file the metadata came from, used in error messages.</summary>
    public string FilePath { get; }

    /// <summary>All entries in the order the file lists them.</summary>
    public IReadOnlyList<KeyValuePair<string, GgufValue>> Entries => _ordered;

    public int Count => _ordered.Count;

    public bool ContainsKey(string key) => _values.ContainsKey(key);

    public bool TryGetValue(string key, [NotNullWhen(true)] out GgufValue? value) => _values.TryGetValue(key, out value);

    /// <summary>The value of a required key.</summary>
    public GgufValue GetValue(string key) =>
        _values.TryGetValue(key, out var value) ? value : throw Missing(key);

    /// <summary><c>general.architecture</c>, or null when absent or not a string.</summary>
    public string? Architecture => _values.TryGetValue("general.architecture", out var v) && v.Value is string s ? s : null;

    /// <summary><c>Architecture + "." + suffix</c>; throws when the file names no architecture.</summary>
    public string ArchitectureKey(string suffix)
    {
        var arch = Architecture ?? throw new ModelFormatException(FilePath,
            "required string metadata key is missing; architecture-specific keys cannot be located without it", "general.architecture");
        return arch + "." + suffix;
    }

    public string GetString(string key) => TryGetString(key, out var s) ? s : throw Missing(key);

    /// <summary>False when absent; throws when present with another type.</summary>
    public bool TryGetString(string key, [NotNullWhen(true)] out string? value)
    {
        value = null;
        if (!_values.TryGetValue(key, out var v)) return false;
        value = v.Value as string ?? throw WrongType(key, v, "a string");
        return true;
    }

    public uint GetUInt32(string key) => TryGetUInt32(key, out var n) ? n : throw Missing(key);

    /// <summary>
    /// Accepts any integer width (counts are "mostly uint64" by spec but uint32 in practice, and some writers
    /// emit int32), failing only when the value does not fit.
    /// </summary>
    public bool TryGetUInt32(string key, out uint value)
    {
        value = 0;
        if (!TryGetInteger(key, out var n)) return false;
        if (n < 0 || n > uint.MaxValue) throw OutOfRange(key, n, "0 to 4294967295");
        value = (uint)n;
        return true;
    }

    public ulong GetUInt64(string key) => TryGetUInt64(key, out var n) ? n : throw Missing(key);

    public bool TryGetUInt64(string key, out ulong value)
    {
        value = 0;
        if (!TryGetInteger(key, out var n)) return false;
        if (n < 0 || n > ulong.MaxValue) throw OutOfRange(key, n, "a non-negative 64-bit integer");
        value = (ulong)n;
        return true;
    }

    public int GetInt32(string key) => TryGetInt32(key, out var n) ? n : throw Missing(key);

    public bool TryGetInt32(string key, out int value)
    {
        value = 0;
        if (!TryGetInteger(key, out var n)) return false;
        if (n < int.MinValue || n > int.MaxValue) throw OutOfRange(key, n, "a 32-bit signed integer");
        value = (int)n;
        return true;
    }

    /// <summary>Any integer type, widened without loss.</summary>
    public bool TryGetInteger(string key, out Int128 value)
    {
        value = 0;
        if (!_values.TryGetValue(key, out var v)) return false;
        if (!v.TryGetInteger(out value)) throw WrongType(key, v, "an integer");
        return true;
    }

    public float GetFloat32(string key) => TryGetFloat32(key, out var f) ? f : throw Missing(key);

    /// <summary>Accepts float32 and float64 (narrowed).</summary>
    public bool TryGetFloat32(string key, out float value)
    {
        value = 0;
        if (!_values.TryGetValue(key, out var v)) return false;
        if (!v.TryGetFloat(out var d)) throw WrongType(key, v, "a float32");
        value = (float)d;
        return true;
    }

    public bool GetBool(string key) => TryGetBool(key, out var b) ? b : throw Missing(key);

    public bool TryGetBool(string key, out bool value)
    {
        value = false;
        if (!_values.TryGetValue(key, out var v)) return false;
        value = v.Value is bool b ? b : throw WrongType(key, v, "a bool");
        return true;
    }

    public GgufArray GetArray(string key) => TryGetArray(key, out var a) ? a : throw Missing(key);

    public bool TryGetArray(string key, [NotNullWhen(true)] out GgufArray? value)
    {
        value = null;
        if (!_values.TryGetValue(key, out var v)) return false;
        value = v.Value as GgufArray ?? throw WrongType(key, v, "an array");
        return true;
    }

    /// <summary>A string array such as <c>tokenizer.ggml.tokens</c> (returned without copying; do not modify).</summary>
    public string[] GetStringArray(string key) => TryGetStringArray(key, out var a) ? a : throw Missing(key);

    public bool TryGetStringArray(string key, [NotNullWhen(true)] out string[]? value)
    {
        value = null;
        if (!TryGetArray(key, out var a)) return false;
        value = a.ElementType == GgufValueType.String ? (string[])a.Items : throw WrongElementType(key, a, "string");
        return true;
    }

    /// <summary>A float32 (or float64, narrowed) array such as <c>tokenizer.ggml.scores</c>.</summary>
    public float[] GetFloat32Array(string key) => TryGetFloat32Array(key, out var a) ? a : throw Missing(key);

    public bool TryGetFloat32Array(string key, [NotNullWhen(true)] out float[]? value)
    {
        value = null;
        if (!TryGetArray(key, out var a)) return false;
        if (!a.TryGetFloats(out var floats)) throw WrongElementType(key, a, "float32");
        value = floats;
        return true;
    }

    /// <summary>An integer array of any element width such as <c>tokenizer.ggml.token_type</c>, range-checked into int.</summary>
    public int[] GetInt32Array(string key) => TryGetInt32Array(key, out var a) ? a : throw Missing(key);

    public bool TryGetInt32Array(string key, [NotNullWhen(true)] out int[]? value)
    {
        value = null;
        if (!TryGetArray(key, out var a)) return false;
        if (a.ElementType == GgufValueType.Int32)
        {
            value = (int[])a.Items.Clone();
            return true;
        }
        if (!a.TryGetInt64s(out var longs)) throw WrongElementType(key, a, "integer");
        value = new int[longs.Length];
        for (int i = 0; i < longs.Length; i++)
        {
            if (longs[i] < int.MinValue || longs[i] > int.MaxValue)
                throw new ModelFormatException(FilePath, $"element {i} is {longs[i]}, which does not fit a 32-bit integer", key);
            value[i] = (int)longs[i];
        }
        return true;
    }

    private ModelFormatException Missing(string key) =>
        new(FilePath, "required metadata key is missing", key);

    private ModelFormatException WrongType(string key, GgufValue found, string expected) =>
        new(FilePath, $"found a {GgufValueTypes.Name(found.Type)} value, expected {expected}", key);

    private ModelFormatException WrongElementType(string key, GgufArray found, string expected) =>
        new(FilePath, $"found an array of {GgufValueTypes.Name(found.ElementType)}, expected an array of {expected}", key);

    private ModelFormatException OutOfRange(string key, Int128 found, string expected) =>
        new(FilePath, $"value {found.ToString(CultureInfo.InvariantCulture)} is out of range, expected {expected}", key);
}
