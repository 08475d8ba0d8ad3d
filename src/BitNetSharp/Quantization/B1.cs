using System.Buffers.Binary;

namespace BitNetSharp.Quantization;

/// <summary>
/// BitNetSharp's binary GGUF type B1_128 (GgmlType.B1_128): the <see cref="BinaryMatrix"/> row layout stored as is
/// (rows padded to 128 columns, 1 bit per weight LSB-first, 1 = +1), followed by a 32-byte tail whose first four
/// bytes are the fp32 tensor scale — the same tail convention as I2_S. Decoding is one copy.
/// </summary>
public static unsafe class B1
{
    public static long ByteLength(int rows, int cols) => (long)rows * ((cols + 127) / 128) * 16 + 32;

    public static BinaryMatrix Decode(ReadOnlySpan<byte> data, int rows, int cols)
    {
        long expected = ByteLength(rows, cols);
        if (data.Length != expected)
            throw new ArgumentException($"A B1_128 tensor of {rows}×{cols} has {expected} bytes; found {data.Length}.", nameof(data));
        long packed = expected - 32;
        float scale = BinaryPrimitives.ReadSingleLittleEndian(data[(int)packed..]);
        if (!float.IsFinite(scale))
            throw new InvalidDataException($"The B1_128 scale is {scale}; a finite value is required.");
        var matrix = new BinaryMatrix(rows, cols, scale);
        data[..(int)packed].CopyTo(new Span<byte>(matrix.Data, (int)packed));
        // Padding bits must be zero: a padded activation is zero, but a stray bit would still be a wrong weight on export.
        int tail = cols % 128;
        if (tail != 0)
        {
            for (int r = 0; r < rows; r++)
            for (int c = cols; c < matrix.PaddedCols; c++)
                if (((matrix.Row(r)[c >> 3] >> (c & 7)) & 1) != 0)
                    throw new InvalidDataException($"B1_128 row {r} has a set padding bit at column {c} (the tensor has {cols} columns).");
        }
        return matrix;
    }

    /// <summary>Encodes a binary matrix; its rows must share one scale (BitNet has one per tensor).</summary>
    public static byte[] Encode(BinaryMatrix matrix)
    {
        float scale = matrix.RowScales[0];
        for (int r = 1; r < matrix.Rows; r++)
            if (BitConverter.SingleToInt32Bits(matrix.RowScales[r]) != BitConverter.SingleToInt32Bits(scale))
                throw new ArgumentException($"B1_128 stores one scale per tensor, but row {r} has scale {matrix.RowScales[r]} and row 0 has {scale}.", nameof(matrix));
        var bytes = new byte[ByteLength(matrix.Rows, matrix.Cols)];
        new ReadOnlySpan<byte>(matrix.Data, (int)matrix.ByteLength).CopyTo(bytes);
        BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan((int)matrix.ByteLength), scale);
        return bytes;
    }
}
