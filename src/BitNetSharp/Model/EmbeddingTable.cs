using System.Buffers.Binary;
using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Kernels;
using BitNetSharp.Quantization;

namespace BitNetSharp.Model;

/// <summary>
/// A float matrix kept in its file encoding (F32, F16, BF16, Q8_0 or Q6_K), read in place: the token embedding (one row
/// per lookup) and the output head (every row dotted with the final hidden state). Never expanded to float — a
/// 2B4T F16 embedding is 657 MB as F16 and would be 1.3 GB as F32. The head's dot products live in
/// <see cref="HeadKernels"/>.
/// </summary>
public sealed unsafe class EmbeddingTable
{
    private readonly byte* _data;
    private readonly object _owner;

    public EmbeddingTable(GgmlType type, byte* data, long byteLength, int rows, int cols, object owner, string path, string name)
    {
        if (type is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q8_0 or GgmlType.Q6_K))
            throw new ModelFormatException(path, $"type {GgmlTypeInfo.Name(type)} is not supported for embeddings or the output head; expected f32, f16, bf16, q8_0 or q6_K", name);
        if (type == GgmlType.Q8_0 && cols % 32 != 0)
            throw new ModelFormatException(path, $"q8_0 rows must be a multiple of 32 values, found {cols}", name);
        if (type == GgmlType.Q6_K && cols % Q6K.BlockWeights != 0)
            throw new ModelFormatException(path, $"q6_K rows must be a multiple of {Q6K.BlockWeights} values, found {cols}", name);
        Type = type;
        Rows = rows;
        Cols = cols;
        RowBytes = type switch
        {
            GgmlType.F32 => cols * 4L,
            GgmlType.Q8_0 => cols / 32 * 34L,
            GgmlType.Q6_K => cols / Q6K.BlockWeights * (long)Q6K.BlockBytes,
            _ => cols * 2L,
        };
        if (RowBytes * rows != byteLength)
            throw new ModelFormatException(path, $"{rows}×{cols} {GgmlTypeInfo.Name(type)} needs {RowBytes * rows} bytes, found {byteLength}", name);
        _data = data;
        _owner = owner;
        // Every encoding is checked (F32 and BF16 too: their kernels carry a NaN through to the logits, but only when the
        // row is read, and `convert` copied such a table into a new file without a word, where norms and projections
        // with one were refused at load).
        long bad = type switch
        {
            GgmlType.F16 => HeadKernels.FirstNonFiniteHalf((ushort*)data, (long)rows * cols),
            GgmlType.BF16 => HeadKernels.FirstNonFiniteBFloat16((ushort*)data, (long)rows * cols),
            GgmlType.F32 => HeadKernels.FirstNonFiniteSingle((float*)data, (long)rows * cols),
            _ => -1,
        };
        if (bad >= 0)
            throw new ModelFormatException(path, $"value {bad % cols} of row {bad / cols} is infinite or NaN; the table must hold finite numbers", name);
        // The blocks' fp16 scales too: the vector head kernels read them as finite halves (an infinite scale became
        // 65536, NaN 98304), so such a file gave finite logits on AVX2/AVX-512 and ∞/NaN on the other paths.
        if (type is GgmlType.Q8_0 or GgmlType.Q6_K)
        {
            int blockBytes = type == GgmlType.Q8_0 ? 34 : Q6K.BlockBytes, scaleAt = type == GgmlType.Q8_0 ? 0 : Q6K.DOffset;
            int blockWeights = type == GgmlType.Q8_0 ? 32 : Q6K.BlockWeights;
            long blocks = byteLength / blockBytes;
            for (long b = 0; b < blocks; b++)
                if ((*(ushort*)(data + b * blockBytes + scaleAt) & 0x7C00) == 0x7C00)
                {
                    long first = b * blockWeights;
                    throw new ModelFormatException(path,
                        $"the {GgmlTypeInfo.Name(type)} block holding values {first % cols}..{first % cols + blockWeights - 1} of row {first / cols} has an infinite or NaN scale; the table must hold finite numbers", name);
                }
        }
    }

    public GgmlType Type { get; }
    public int Rows { get; }
    public int Cols { get; }
    public long RowBytes { get; }
    public long ByteLength => RowBytes * Rows;

    /// <summary>The encoded rows, in place (for writing them to another file).</summary>
    public ReadOnlyMemory<byte> Bytes => new Memory.UnmanagedMemory(_data, checked((int)ByteLength)).Memory;

    /// <summary>The encoded rows in place (<see cref="ByteLength"/> bytes), for checksums.</summary>
    public byte* Data => _data;

    /// <summary>Keeps the memory map (or buffer) that holds the data alive as long as this table.</summary>
    public object Owner => _owner;

    private byte* Row(int row) => _data + row * RowBytes;

    /// <summary>The rows as the head kernels read them.</summary>
    private HeadMatrix Matrix => new(Type, _data, RowBytes, Cols);

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
            case GgmlType.Q6_K:
                if (destination.Length < Cols) throw new ArgumentException($"The destination holds {destination.Length} values; a row has {Cols}.", nameof(destination));
                fixed (float* y = destination)
                    for (int b = 0; b < Cols / Q6K.BlockWeights; b++) Q6K.DequantizeBlock(p + b * Q6K.BlockBytes, y + b * Q6K.BlockWeights);
                break;
        }
    }

    /// <summary>y[r] = row r · x for r in [rowStart, rowEnd) — the output head (<see cref="HeadKernels.MatVec"/>).</summary>
    public void MatVec(float* x, float* y, int rowStart, int rowEnd) => HeadKernels.MatVec(Matrix, x, y, rowStart, rowEnd);

    /// <summary>After a head pass over every row: a token's largest or smallest logit whose row holds a non-finite half
    /// (written into a mapped F16 file after load) is made NaN (<see cref="HeadKernels.GuardExtremeRows"/>).</summary>
    public void GuardNonFiniteRows(float* y, int tokens, long yStride) => HeadKernels.GuardExtremeRows(Matrix, y, tokens, yStride, 0, Rows);

    /// <summary>
    /// Logits of several hidden states at once: y[t·yStride + r] = row r · x_t for rows [rowStart, rowEnd)
    /// (<see cref="HeadKernels.MatMul"/>).
    /// </summary>
    public void MatMul(float* x, int tokens, float* y, long yStride, int rowStart, int rowEnd) =>
        HeadKernels.MatMul(Matrix, x, tokens, y, yStride, rowStart, rowEnd);
}
