using System.Runtime.Intrinsics;

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

    private static BinaryMatrix Binarize<T, TElement>(ReadOnlySpan<T> weights, int rows, int cols, bool centred)
        where T : unmanaged where TElement : ILatentElement<T>
    {
        LatentWeights.RequireShape(weights.Length, rows, cols, nameof(weights));
        float beta = LatentWeights.MeanAbs<T, TElement>(weights, rows, cols);
        float alpha = centred ? LatentWeights.Mean<T, TElement>(weights, rows, cols) : 0f;
        var buffer = new float[cols];
        var m = new BinaryMatrix(rows, cols, beta); // zeroed: every bit −1, padding included
        for (int r = 0; r < rows; r++)
        {
            var row = LatentWeights.Row<T, TElement>(weights, r, cols, buffer);
            byte* dst = m.Row(r);
            int c0 = 0;
            if (Vector128.IsHardwareAccelerated)
            {
                var a = Vector128.Create(alpha);
                for (; c0 <= cols - 8; c0 += 8)
                {
                    uint lo = Vector128.GreaterThanOrEqual(Vector128.Create(row.Slice(c0, 4)) - a, Vector128<float>.Zero).ExtractMostSignificantBits();
                    uint hi = Vector128.GreaterThanOrEqual(Vector128.Create(row.Slice(c0 + 4, 4)) - a, Vector128<float>.Zero).ExtractMostSignificantBits();
                    dst[c0 >> 3] = (byte)(lo | (hi << 4));
                }
            }
            for (; c0 < cols; c0 += 8)
            {
                int bits = 0, end = Math.Min(8, cols - c0);
                for (int i = 0; i < end; i++) bits |= (row[c0 + i] - alpha >= 0f ? 1 : 0) << i;
                dst[c0 >> 3] = (byte)bits;
            }
        }
        return m;
    }
}
