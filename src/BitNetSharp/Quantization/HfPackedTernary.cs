using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace BitNetSharp.Quantization;

/// <summary>How a transformers BitNet checkpoint's <c>weight_scale</c> turns ternary codes into weights (FORMATS.md §5.2).</summary>
public enum HfWeightScaleRule
{
    /// <summary><c>linear_class = "autobitlinear"</c> (2B4T): W = T · weight_scale.</summary>
    Multiply,

    /// <summary><c>linear_class = "bitlinear"</c> or absent (HF1BitLLM, Falcon3-1.58bit): W = T / weight_scale.</summary>
    Divide,
}

/// <summary>
/// The transformers BitNet packed weight (FORMATS.md §5.1): uint8 of shape [out/4, in], where byte [p, k] holds
/// the codes (t+1) of output rows p, p+R, p+2R, p+3R (R = out/4) at column k in bit pairs [1:0], [3:2], [5:4],
/// [7:6] — blocked, not interleaved, whatever the <c>unpack_weights</c> docstring says. One <c>weight_scale</c>
/// per tensor, applied as <see cref="HfWeightScaleRule"/> says.
/// <para>
/// Code 3 is refused (<see cref="InvalidDataException"/>) rather than read as 0 as one converter does: pack_weights
/// never writes it, so meeting one means the tensor is not what its name says, and a silent 0 would hide that.
/// </para>
/// </summary>
public static unsafe class HfPackedTernary
{
    /// <summary>The rule for a <c>quantization_config.linear_class</c> value (null or empty: transformers' default, <c>bitlinear</c>).</summary>
    /// <exception cref="ArgumentException">Any other value.</exception>
    public static HfWeightScaleRule RuleForLinearClass(string? linearClass) => linearClass switch
    {
        null or "" or "bitlinear" => HfWeightScaleRule.Divide,
        "autobitlinear" => HfWeightScaleRule.Multiply,
        _ => throw new ArgumentException(
            $"quantization_config.linear_class is \"{linearClass}\"; transformers knows \"bitlinear\" (weights divided by weight_scale) and \"autobitlinear\" (multiplied).",
            nameof(linearClass)),
    };

    /// <summary>
    /// The runtime row scale for a <c>weight_scale</c>: ws itself, or 1f/ws under <see cref="HfWeightScaleRule.Divide"/>.
    /// Since t ∈ {−1, 0, 1}, t·(1f/ws) is exactly the fp32 t/ws, so dividing costs nothing in accuracy.
    /// </summary>
    /// <exception cref="ArgumentException">ws is NaN, infinite or negative, or zero when dividing.</exception>
    public static float RowScale(float weightScale, HfWeightScaleRule rule)
    {
        // Negative too: transformers' quantizers store max|w| or mean|w| (≥ 0); a negative one flipped the layer's sign and ran.
        if (!float.IsFinite(weightScale) || weightScale < 0f || (rule == HfWeightScaleRule.Divide && weightScale == 0f))
            throw new ArgumentException(
                $"weight_scale is {weightScale}, which cannot scale a ternary weight (rule: {rule}); the checkpoint is corrupt.", nameof(weightScale));
        float scale = rule == HfWeightScaleRule.Multiply ? weightScale : 1f / weightScale;
        // The result too: 1/ws of a finite ws below about 3e-39 is +∞, which made every weight ±∞ and zeros NaN.
        if (!float.IsFinite(scale))
            throw new ArgumentException(
                $"weight_scale is {weightScale}, whose inverse is not a finite float (rule: {rule}); the checkpoint is corrupt.", nameof(weightScale));
        return scale;
    }

    /// <summary>The <c>weight_scale</c> that stores a row scale under a rule (the inverse of <see cref="RowScale"/>).</summary>
    public static float WeightScaleFor(float rowScale, HfWeightScaleRule rule) => RowScale(rowScale, rule);

    /// <summary>Bytes of the packed [out/4, in] tensor; out must be a multiple of 4.</summary>
    public static long ByteLength(int outFeatures, int inFeatures)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(outFeatures);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(inFeatures);
        if (outFeatures % 4 != 0)
            throw new ArgumentException($"A packed ternary weight has out_features/4 rows, so out_features must be a multiple of 4; got {outFeatures}.", nameof(outFeatures));
        return (long)outFeatures / 4 * inFeatures;
    }

    /// <summary>Unpacks a packed weight into an out × in runtime matrix; every row scale = <see cref="RowScale"/>(weightScale, rule).</summary>
    /// <param name="packed">The uint8 tensor [out/4, in], row-major.</param>
    /// <exception cref="InvalidDataException">A code 3.</exception>
    [SkipLocalsInit]
    public static TernaryMatrix Decode(ReadOnlySpan<byte> packed, int outFeatures, int inFeatures, float weightScale, HfWeightScaleRule rule)
    {
        long expected = ByteLength(outFeatures, inFeatures);
        if (packed.Length != expected)
            throw new ArgumentException(
                $"A packed weight for {outFeatures}×{inFeatures} is [{outFeatures / 4}, {inFeatures}] = {expected} bytes; got {packed.Length}.", nameof(packed));
        float scale = RowScale(weightScale, rule);
        int quarter = outFeatures / 4;
        var m = TernaryMatrix.Allocate(outFeatures, inFeatures, scale);
        try
        {
            var codes = new byte[m.PaddedCols];
            codes.AsSpan(inFeatures).Fill(1);
            fixed (byte* src0 = packed)
            fixed (byte* c = codes)
            {
                for (int r = 0; r < outFeatures; r++)
                {
                    int q = r / quarter, p = r % quarter;
                    ExtractPair(src0 + (long)p * inFeatures, c, inFeatures, 2 * q);
                    if (!TernaryRowCodes.PackRow(codes, m.Row(r)))
                    {
                        int k = TernaryRowCodes.IndexOfInvalid(codes);
                        throw new InvalidDataException(
                            $"Packed ternary byte [{p}, {k}] has code 3 in bits [{2 * q + 1}:{2 * q}] (row {r}); transformers' pack_weights never writes it, so the tensor is corrupt or not a packed BitNet weight.");
                    }
                }
            }
            return m;
        }
        catch
        {
            m.Dispose();
            throw;
        }
    }

    /// <summary>The packed [out/4, in] bytes of <paramref name="matrix"/>'s codes (scales are not part of the packed tensor).</summary>
    public static byte[] Encode(TernaryMatrix matrix)
    {
        var bytes = new byte[ByteLength(matrix.Rows, matrix.Cols)];
        Encode(matrix, bytes);
        return bytes;
    }

    /// <summary>Writes <paramref name="matrix"/>'s codes packed as [out/4, in] into <paramref name="destination"/>.</summary>
    public static void Encode(TernaryMatrix matrix, Span<byte> destination)
    {
        long expected = ByteLength(matrix.Rows, matrix.Cols);
        if (destination.Length != expected)
            throw new ArgumentException($"A packed weight for {matrix.Rows}×{matrix.Cols} is {expected} bytes; the destination has {destination.Length}.", nameof(destination));
        int cols = matrix.Cols, quarter = matrix.Rows / 4;
        destination.Clear();
        var codes = new byte[matrix.PaddedCols];
        for (int r = 0; r < matrix.Rows; r++)
        {
            int q = r / quarter, p = r % quarter;
            TernaryRowCodes.UnpackRow(matrix.Row(r), codes);
            var dst = destination.Slice(p * cols, cols);
            for (int k = 0; k < cols; k++) dst[k] |= (byte)((codes[k] & 3) << (2 * q));
        }
    }

    /// <summary>
    /// The one <c>weight_scale</c> for <paramref name="matrix"/> under <paramref name="rule"/>.
    /// </summary>
    /// <exception cref="ArgumentException">The rows do not share one scale.</exception>
    public static float WeightScaleFor(TernaryMatrix matrix, HfWeightScaleRule rule)
    {
        float s = matrix.RowScales[0];
        for (int r = 1; r < matrix.Rows; r++)
        {
            if (BitConverter.SingleToInt32Bits(matrix.RowScales[r]) != BitConverter.SingleToInt32Bits(s))
                throw new ArgumentException($"A packed BitNet weight has one weight_scale, but row 0 has scale {s} and row {r} has {matrix.RowScales[r]}.", nameof(matrix));
        }
        return WeightScaleFor(s, rule);
    }

    /// <summary>
    /// The float weights (out × in, row-major) straight from the format's definition — the independent
    /// reference for tests: W[q·R + p, k] = (((packed[p, k] >> 2q) &amp; 3) − 1) then × or ÷ weight_scale.
    /// </summary>
    public static void Dequantize(ReadOnlySpan<byte> packed, int outFeatures, int inFeatures, float weightScale, HfWeightScaleRule rule, Span<float> destination)
    {
        if (packed.Length != ByteLength(outFeatures, inFeatures) || destination.Length != (long)outFeatures * inFeatures)
            throw new ArgumentException("Packed bytes or destination do not match the shape.");
        int quarter = outFeatures / 4;
        for (int p = 0; p < quarter; p++)
        for (int k = 0; k < inFeatures; k++)
        for (int q = 0; q < 4; q++)
        {
            int t = ((packed[p * inFeatures + k] >> (2 * q)) & 3) - 1;
            destination[(q * quarter + p) * inFeatures + k] = rule == HfWeightScaleRule.Multiply ? t * weightScale : t / weightScale;
        }
    }

    private static void ExtractPair(byte* src, byte* dst, int count, int shift)
    {
        int k = 0;
        if (Vector128.IsHardwareAccelerated)
        {
            var three = Vector128.Create((byte)3);
            for (; k <= count - 16; k += 16)
                (Vector128.ShiftRightLogical(Vector128.Load(src + k), shift) & three).Store(dst + k);
        }
        for (; k < count; k++) dst[k] = (byte)((src[k] >> shift) & 3);
    }
}
