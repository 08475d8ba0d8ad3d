namespace BitNetSharp.Formats.Gguf;

/// <summary>
/// A GGUF array value: one element type and a typed .NET array holding the elements (byte[], sbyte[], ushort[],
/// short[], uint[], int[], float[], bool[], string[], GgufArray[] for nested arrays, ulong[], long[], double[]).
/// Keeping the typed array, rather than a list of boxed values, makes a 128k-token vocabulary one allocation.
/// </summary>
public sealed class GgufArray
{
    private readonly Array _items;

    private GgufArray(GgufValueType elementType, Array items)
    {
        ElementType = elementType;
        _items = items;
    }

    public GgufValueType ElementType { get; }

    public int Count => _items.Length;

    /// <summary>An array of <typeparamref name="T"/>, whose .NET type picks the GGUF element type (string → string, float → float32, GgufArray → nested array, ...).</summary>
    public static GgufArray Create<T>(T[] items)
    {
        ArgumentNullException.ThrowIfNull(items);
        var type = ElementTypeOf(typeof(T)) ??
            throw new ArgumentException($"{typeof(T).Name} is not a GGUF array element type.", nameof(items));
        if (items is string[] strings && Array.IndexOf(strings, null) >= 0) throw new ArgumentException("A string array contains null.", nameof(items));
        if (items is GgufArray[] arrays && Array.IndexOf(arrays, null) >= 0) throw new ArgumentException("A nested array contains null.", nameof(items));
        return new GgufArray(type, (Array)items.Clone());
    }

    /// <summary>Wraps an array the reader just decoded, without copying.</summary>
    internal static GgufArray Wrap(GgufValueType elementType, Array items) => new(elementType, items);

    /// <summary>The elements without copying; <typeparamref name="T"/> must be the element's .NET type exactly.</summary>
    public ReadOnlySpan<T> AsSpan<T>() =>
        // Compared by element type, not with `is T[]`: the CLR lets a short[] pass as ushort[] (and int[] as uint[]).
        ElementTypeOf(typeof(T)) == ElementType
            ? (T[])_items
            : throw new InvalidCastException($"The array holds {GgufValueTypes.Name(ElementType)} elements, not {typeof(T).Name}.");

    /// <summary>The raw typed array (shared, do not modify).</summary>
    internal Array Items => _items;

    /// <summary>Elements as float32 (float64 elements narrowed) when the element type is float32 or float64.</summary>
    public bool TryGetFloats(out float[] values)
    {
        switch (ElementType)
        {
            case GgufValueType.Float32:
                values = (float[])_items.Clone();
                return true;
            case GgufValueType.Float64:
                var d = (double[])_items;
                values = new float[d.Length];
                for (int i = 0; i < d.Length; i++) values[i] = (float)d[i];
                return true;
            default:
                values = [];
                return false;
        }
    }

    /// <summary>Elements as 64-bit integers for any integer element type; false when a uint64 element exceeds long.MaxValue.</summary>
    public bool TryGetInt64s(out long[] values)
    {
        values = new long[_items.Length];
        // Switch on the declared element type: `_items is ushort[]` is also true for a short[] in the CLR.
        switch (ElementType)
        {
            case GgufValueType.UInt8: { var a = (byte[])_items; for (int i = 0; i < a.Length; i++) values[i] = a[i]; return true; }
            case GgufValueType.Int8: { var a = (sbyte[])_items; for (int i = 0; i < a.Length; i++) values[i] = a[i]; return true; }
            case GgufValueType.UInt16: { var a = (ushort[])_items; for (int i = 0; i < a.Length; i++) values[i] = a[i]; return true; }
            case GgufValueType.Int16: { var a = (short[])_items; for (int i = 0; i < a.Length; i++) values[i] = a[i]; return true; }
            case GgufValueType.UInt32: { var a = (uint[])_items; for (int i = 0; i < a.Length; i++) values[i] = a[i]; return true; }
            case GgufValueType.Int32: { var a = (int[])_items; for (int i = 0; i < a.Length; i++) values[i] = a[i]; return true; }
            case GgufValueType.Int64: Array.Copy(_items, values, values.Length); return true;
            case GgufValueType.UInt64:
            {
                var a = (ulong[])_items;
                for (int i = 0; i < a.Length; i++)
                {
                    if (a[i] > long.MaxValue) return false;
                    values[i] = (long)a[i];
                }
                return true;
            }
            default:
                values = [];
                return false;
        }
    }

    public override string ToString() => $"{GgufValueTypes.Name(ElementType)}[{Count}]";

    private static GgufValueType? ElementTypeOf(Type t) =>
        t == typeof(byte) ? GgufValueType.UInt8 :
        t == typeof(sbyte) ? GgufValueType.Int8 :
        t == typeof(ushort) ? GgufValueType.UInt16 :
        t == typeof(short) ? GgufValueType.Int16 :
        t == typeof(uint) ? GgufValueType.UInt32 :
        t == typeof(int) ? GgufValueType.Int32 :
        t == typeof(float) ? GgufValueType.Float32 :
        t == typeof(bool) ? GgufValueType.Bool :
        t == typeof(string) ? GgufValueType.String :
        t == typeof(GgufArray) ? GgufValueType.Array :
        t == typeof(ulong) ? GgufValueType.UInt64 :
        t == typeof(long) ? GgufValueType.Int64 :
        t == typeof(double) ? GgufValueType.Float64 :
        null;
}
