namespace BitNetSharp.Quantization;

/// <summary>Runtime matrices back to float weights (row-major, padding dropped), for tests and export.</summary>
public static unsafe class Dequantizer
{
    /// <summary>rows × cols floats: t · RowScales[row].</summary>
    public static float[] ToFloat(TernaryMatrix matrix)
    {
        var values = new float[(long)matrix.Rows * matrix.Cols];
        ToFloat(matrix, values);
        return values;
    }

    public static void ToFloat(TernaryMatrix matrix, Span<float> destination)
    {
        if (destination.Length != (long)matrix.Rows * matrix.Cols)
            throw new ArgumentException($"A {matrix.Rows}×{matrix.Cols} matrix has {(long)matrix.Rows * matrix.Cols} values; the destination has {destination.Length}.", nameof(destination));
        var codes = new byte[matrix.PaddedCols];
        for (int r = 0; r < matrix.Rows; r++)
        {
            TernaryRowCodes.UnpackRow(matrix.Row(r), codes);
            float scale = matrix.RowScales[r];
            var dst = destination.Slice(r * matrix.Cols, matrix.Cols);
            for (int c = 0; c < dst.Length; c++) dst[c] = (codes[c] - 1) * scale;
        }
    }

    /// <summary>rows × cols ternary values −1/0/+1 (code 3, possible only in unvalidated wrapped bytes, gives 2).</summary>
    public static sbyte[] ToTernary(TernaryMatrix matrix)
    {
        var values = new sbyte[(long)matrix.Rows * matrix.Cols];
        var codes = new byte[matrix.PaddedCols];
        for (int r = 0; r < matrix.Rows; r++)
        {
            TernaryRowCodes.UnpackRow(matrix.Row(r), codes);
            var dst = values.AsSpan(r * matrix.Cols, matrix.Cols);
            for (int c = 0; c < dst.Length; c++) dst[c] = (sbyte)(codes[c] - 1);
        }
        return values;
    }

    /// <summary>rows × cols floats: ±RowScales[row].</summary>
    public static float[] ToFloat(BinaryMatrix matrix)
    {
        var values = new float[(long)matrix.Rows * matrix.Cols];
        for (int r = 0; r < matrix.Rows; r++)
        {
            byte* row = matrix.Row(r);
            float scale = matrix.RowScales[r];
            var dst = values.AsSpan(r * matrix.Cols, matrix.Cols);
            for (int c = 0; c < dst.Length; c++) dst[c] = ((row[c >> 3] >> (c & 7)) & 1) != 0 ? scale : -scale;
        }
        return values;
    }
}
