namespace BitNetSharp.Quantization;

/// <summary>
/// How many weights of a ternary matrix are −1, 0 and +1 (padding excluded), for load-time diagnostics: a
/// BitNet b1.58 weight is typically about a third zeros, and a tensor that is all zeros or has no zeros at all
/// usually means it was decoded with the wrong layout. <see cref="Invalid"/> counts code 3, which only
/// unvalidated in-place bytes can hold.
/// </summary>
public readonly record struct TernaryCodeCounts(long Minus, long Zero, long Plus, long Invalid)
{
    public long Total => Minus + Zero + Plus + Invalid;

    public double MinusShare => Share(Minus);
    public double ZeroShare => Share(Zero);
    public double PlusShare => Share(Plus);

    public static unsafe TernaryCodeCounts Of(TernaryMatrix matrix)
    {
        var codes = new byte[matrix.PaddedCols];
        long minus = 0, zero = 0, plus = 0;
        for (int r = 0; r < matrix.Rows; r++)
        {
            TernaryRowCodes.UnpackRow(matrix.Row(r), codes);
            var row = codes.AsSpan(0, matrix.Cols);
            minus += row.Count((byte)0);
            zero += row.Count((byte)1);
            plus += row.Count((byte)2);
        }
        long total = (long)matrix.Rows * matrix.Cols;
        return new TernaryCodeCounts(minus, zero, plus, total - minus - zero - plus);
    }

    private double Share(long count) => Total == 0 ? 0 : (double)count / Total;

    public override string ToString() =>
        $"−1: {MinusShare:P1}, 0: {ZeroShare:P1}, +1: {PlusShare:P1}" + (Invalid != 0 ? $", invalid: {Invalid}" : "");
}
