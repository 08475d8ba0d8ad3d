namespace BitNetSharp.Quantization;

/// <summary>
/// The original (1-bit) BitNet weight binarization: B = sign(W − α) with one scale per tensor, β = mean|W|
/// (summed in double, rounded once to fp32). α = 0 by default; <c>centred: true</c> uses α = mean W, the
/// zero-mean centring of the BitNet paper (arXiv 2310.11453). sign(0) is +1 here (a weight exactly equal to α
/// has to go somewhere; +1 matches "bit set when w − α ≥ 0").
/// </summary>
public static unsafe class SignBinarizer
{
    public static BinaryMatrix FromFloat32(ReadOnlySpan<float> weights, int rows, int cols, bool centred = false) =>
        Binarize<float, Float32Element>(weights, rows, cols, centred);

    /// <param name="weights">IEEE fp16 bit patterns.</param>
    public static BinaryMatrix FromFloat16(ReadOnlySpan<ushort> weights, int rows, int cols, bool centred = false) =>
        Binarize<ushort, Float16Element>(weights, rows, cols, centred);

    /// <param name="weights">bfloat16 bit patterns.</param>
    public static BinaryMatrix FromBFloat16(ReadOnlySpan<ushort> weights, int rows, int cols, bool centred = false) =>
        Binarize<ushort, BFloat16Element>(weights, rows, cols, centred);

    private static BinaryMatrix Binarize<T, TElement>(ReadOnlySpan<T> weights, int rows, int cols, bool centred) where TElement : ILatentElement<T>
    {
        LatentWeights.RequireShape(weights.Length, rows, cols, nameof(weights));
        float beta = LatentWeights.MeanAbs<T, TElement>(weights);
        float alpha = centred ? LatentWeights.Mean<T, TElement>(weights) : 0f;
        var m = new BinaryMatrix(rows, cols, beta); // zeroed: every bit −1, padding included
        for (int r = 0; r < rows; r++)
        {
            var row = weights.Slice(r * cols, cols);
            byte* dst = m.Row(r);
            for (int c0 = 0; c0 < cols; c0 += 8)
            {
                int bits = 0, end = Math.Min(8, cols - c0);
                for (int i = 0; i < end; i++)
                {
                    if (TElement.ToFloat(row[c0 + i]) - alpha >= 0f) bits |= 1 << i;
                }
                dst[c0 >> 3] = (byte)bits;
            }
        }
        return m;
    }
}
