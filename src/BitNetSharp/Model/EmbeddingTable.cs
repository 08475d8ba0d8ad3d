using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Quantization;

namespace BitNetSharp.Model;

/// <summary>
/// A float matrix kept in its file encoding (F32, F16, BF16 or Q8_0), read in place: the token embedding (one row
/// per lookup) and the output head (every row dotted with the final hidden state). Never expanded to float — a
/// 2B4T F16 embedding is 657 MB as F16 and would be 1.3 GB as F32.
/// </summary>
public sealed unsafe class EmbeddingTable
{
    private readonly byte* _data;
    private readonly object _owner;

    public EmbeddingTable(GgmlType type, byte* data, long byteLength, int rows, int cols, object owner, string path, string name)
    {
        if (type is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q8_0))
            throw new ModelFormatException(path, $"type {GgmlTypeInfo.Name(type)} is not supported for embeddings or the output head; expected f32, f16, bf16 or q8_0", name);
        if (type == GgmlType.Q8_0 && cols % 32 != 0)
            throw new ModelFormatException(path, $"q8_0 rows must be a multiple of 32 values, found {cols}", name);
        Type = type;
        Rows = rows;
        Cols = cols;
        RowBytes = type switch
        {
            GgmlType.F32 => cols * 4L,
            GgmlType.Q8_0 => cols / 32 * 34L,
            _ => cols * 2L,
        };
        if (RowBytes * rows != byteLength)
            throw new ModelFormatException(path, $"{rows}×{cols} {GgmlTypeInfo.Name(type)} needs {RowBytes * rows} bytes, found {byteLength}", name);
        _data = data;
        _owner = owner;
    }

    public GgmlType Type { get; }
    public int Rows { get; }
    public int Cols { get; }
    public long RowBytes { get; }
    public long ByteLength => RowBytes * Rows;

    /// <summary>The encoded rows, in place (for writing them to another file).</summary>
    public ReadOnlyMemory<byte> Bytes => new Memory.UnmanagedMemory(_data, checked((int)ByteLength)).Memory;

    /// <summary>Keeps the memory map (or buffer) that holds the data alive as long as this table.</summary>
    public object Owner => _owner;

    private byte* Row(int row) => _data + row * RowBytes;

    /// <summary>Decodes row <paramref name="row"/> into <paramref name="destination"/> (Cols floats).</summary>
    public void GetRow(int row, Span<float> destination)
    {
        if ((uint)row >= (uint)Rows) throw new ArgumentOutOfRangeException(nameof(row), row, $"Row must be in [0, {Rows}).");
        byte* p = Row(row);
        switch (Type)
        {
            case GgmlType.F32:
                new ReadOnlySpan<float>(p, Cols).CopyTo(destination);
                break;
            case GgmlType.F16:
                for (int i = 0; i < Cols; i++) destination[i] = HalfConversions.HalfToFloat(((ushort*)p)[i]);
                break;
            case GgmlType.BF16:
                for (int i = 0; i < Cols; i++) destination[i] = HalfConversions.BFloat16ToFloat(((ushort*)p)[i]);
                break;
            case GgmlType.Q8_0:
                for (int b = 0; b < Cols / 32; b++)
                {
                    byte* block = p + b * 34;
                    float d = HalfConversions.HalfToFloat(BinaryPrimitives.ReadUInt16LittleEndian(new ReadOnlySpan<byte>(block, 2)));
                    for (int i = 0; i < 32; i++) destination[b * 32 + i] = d * ((sbyte*)block)[2 + i];
                }
                break;
        }
    }

    /// <summary>y[r] = row r · x for r in [rowStart, rowEnd) — the output head.</summary>
    public void MatVec(float* x, float* y, int rowStart, int rowEnd)
    {
        switch (Type)
        {
            case GgmlType.F32:
                for (int r = rowStart; r < rowEnd; r++) y[r] = Kernels.FloatMatVec.Dot((float*)Row(r), x, Cols);
                break;
            case GgmlType.F16:
                for (int r = rowStart; r < rowEnd; r++) y[r] = DotF16((ushort*)Row(r), x, Cols);
                break;
            case GgmlType.BF16:
                for (int r = rowStart; r < rowEnd; r++) y[r] = DotBF16((ushort*)Row(r), x, Cols);
                break;
            case GgmlType.Q8_0:
                for (int r = rowStart; r < rowEnd; r++) y[r] = DotQ8_0(Row(r), x, Cols);
                break;
        }
    }

    /// <summary>
    /// Exact fp16 → fp32 without F16C (not exposed by .NET): shift the exponent and mantissa into place and
    /// multiply by 2^112 to rebias, which also handles subnormals; exponent 31 (inf/NaN) is patched.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> HalfToSingle(Vector256<uint> h)
    {
        var magnitude = (Vector256.ShiftLeft(h & Vector256.Create(0x7FFFu), 13).AsSingle() * Vector256.Create(0x77800000u).AsSingle()).AsUInt32();
        magnitude |= Vector256.Equals(h & Vector256.Create(0x7C00u), Vector256.Create(0x7C00u)) & Vector256.Create(0x7F800000u);
        return (magnitude | Vector256.ShiftLeft(h & Vector256.Create(0x8000u), 16)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> HalfToSingle(Vector512<uint> h)
    {
        var magnitude = (Vector512.ShiftLeft(h & Vector512.Create(0x7FFFu), 13).AsSingle() * Vector512.Create(0x77800000u).AsSingle()).AsUInt32();
        magnitude |= Vector512.Equals(h & Vector512.Create(0x7C00u), Vector512.Create(0x7C00u)) & Vector512.Create(0x7F800000u);
        return (magnitude | Vector512.ShiftLeft(h & Vector512.Create(0x8000u), 16)).AsSingle();
    }

    public static float DotF16(ushort* w, float* x, int n)
    {
        int i = 0;
        float sum = 0f;
        if (Vector512.IsHardwareAccelerated && n >= 32)
        {
            Vector512<float> a = default, b = default;
            for (; i <= n - 32; i += 32)
            {
                var h = Vector512.Load(w + i);
                a = Vector512.FusedMultiplyAdd(HalfToSingle(Vector512.WidenLower(h)), Vector512.Load(x + i), a);
                b = Vector512.FusedMultiplyAdd(HalfToSingle(Vector512.WidenUpper(h)), Vector512.Load(x + i + 16), b);
            }
            sum = Vector512.Sum(a + b);
        }
        else if (Vector256.IsHardwareAccelerated && n >= 16)
        {
            Vector256<float> a = default, b = default;
            for (; i <= n - 16; i += 16)
            {
                var h = Vector256.Load(w + i);
                a = Vector256.FusedMultiplyAdd(HalfToSingle(Vector256.WidenLower(h)), Vector256.Load(x + i), a);
                b = Vector256.FusedMultiplyAdd(HalfToSingle(Vector256.WidenUpper(h)), Vector256.Load(x + i + 8), b);
            }
            sum = Vector256.Sum(a + b);
        }
        for (; i < n; i++) sum += HalfConversions.HalfToFloat(w[i]) * x[i];
        return sum;
    }

    public static float DotBF16(ushort* w, float* x, int n)
    {
        int i = 0;
        float sum = 0f;
        if (Vector512.IsHardwareAccelerated && n >= 32)
        {
            Vector512<float> a = default, b = default;
            for (; i <= n - 32; i += 32)
            {
                var h = Vector512.Load(w + i);
                a = Vector512.FusedMultiplyAdd(Vector512.ShiftLeft(Vector512.WidenLower(h), 16).AsSingle(), Vector512.Load(x + i), a);
                b = Vector512.FusedMultiplyAdd(Vector512.ShiftLeft(Vector512.WidenUpper(h), 16).AsSingle(), Vector512.Load(x + i + 16), b);
            }
            sum = Vector512.Sum(a + b);
        }
        else if (Vector256.IsHardwareAccelerated && n >= 16)
        {
            Vector256<float> a = default, b = default;
            for (; i <= n - 16; i += 16)
            {
                var h = Vector256.Load(w + i);
                a = Vector256.FusedMultiplyAdd(Vector256.ShiftLeft(Vector256.WidenLower(h), 16).AsSingle(), Vector256.Load(x + i), a);
                b = Vector256.FusedMultiplyAdd(Vector256.ShiftLeft(Vector256.WidenUpper(h), 16).AsSingle(), Vector256.Load(x + i + 8), b);
            }
            sum = Vector256.Sum(a + b);
        }
        for (; i < n; i++) sum += HalfConversions.BFloat16ToFloat(w[i]) * x[i];
        return sum;
    }

    /// <summary>Q8_0 (32 int8 + an fp16 scale per block) against float activations, one block at a time.</summary>
    public static float DotQ8_0(byte* w, float* x, int n)
    {
        float sum = 0f;
        for (int b = 0; b < n / 32; b++, w += 34, x += 32)
        {
            float d = HalfConversions.HalfToFloat(*(ushort*)w);
            sbyte* q = (sbyte*)(w + 2);
            float block;
            if (Vector256.IsHardwareAccelerated)
            {
                var all = Vector256.Load(q); // exactly the block's 32 values
                var lo = Vector256.WidenLower(all);
                var hi = Vector256.WidenUpper(all);
                var acc = Vector256.ConvertToSingle(Vector256.WidenLower(lo)) * Vector256.Load(x);
                acc = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(Vector256.WidenUpper(lo)), Vector256.Load(x + 8), acc);
                acc = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(Vector256.WidenLower(hi)), Vector256.Load(x + 16), acc);
                acc = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(Vector256.WidenUpper(hi)), Vector256.Load(x + 24), acc);
                block = Vector256.Sum(acc);
            }
            else
            {
                block = 0f;
                for (int j = 0; j < 32; j++) block += q[j] * x[j];
            }
            sum += d * block;
        }
        return sum;
    }
}
