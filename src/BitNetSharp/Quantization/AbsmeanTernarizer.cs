using System.Runtime.CompilerServices;

namespace BitNetSharp.Quantization;

/// <summary>
/// BitNet b1.58's absmean weight quantization (FORMATS.md §4.4), for checkpoints that ship float latent weights
/// (1bitLLM fp16, the 2B4T bf16 master): one scale per tensor, β = max(mean|W|, 1e−5), T = clamp(round(W/β), −1, 1).
/// <para>
/// Order of operations, chosen to match transformers' <c>WeightQuant</c>, 1bitLLM's <c>weight_quant</c> and
/// bitnet.cpp's <c>preprocess-huggingface-bitnet.py</c>, which all compute in fp32:
/// mean|W| is summed in double and rounded once to fp32 (PyTorch's fp32 reduction may differ from that in the
/// last bit); β = max(that, 1e−5f); s = 1f/β (one fp32 division); T = clamp(round_half_even(W·s), −1, 1) with
/// W·s one fp32 multiply — not W/β, which rounds differently at the ±0.5 boundaries.
/// </para>
/// <para>
/// Row scale = 1f/s rather than β. Those pipelines dequantize as round(W·s)/s, and for T = ±1 that fp32 division
/// is exactly ±fp32(1/s) — the value bitnet.cpp then stores as the I2_S scale — which can differ from β in the
/// last bit. (1bitLLM and HF online additionally round that to the checkpoint dtype; callers wanting that can round
/// <see cref="TernaryMatrix.RowScales"/> themselves.)
/// </para>
/// </summary>
public static unsafe class AbsmeanTernarizer
{
    /// <summary>The clamp on β (transformers' <c>mean.clamp(min=1e-5)</c>).</summary>
    public const float MinBeta = 1e-5f;

    public static TernaryMatrix FromFloat32(ReadOnlySpan<float> weights, int rows, int cols) =>
        Ternarize<float, Float32Element>(weights, rows, cols);

    /// <param name="weights">IEEE fp16 bit patterns.</param>
    public static TernaryMatrix FromFloat16(ReadOnlySpan<ushort> weights, int rows, int cols) =>
        Ternarize<ushort, Float16Element>(weights, rows, cols);

    /// <param name="weights">bfloat16 bit patterns.</param>
    public static TernaryMatrix FromBFloat16(ReadOnlySpan<ushort> weights, int rows, int cols) =>
        Ternarize<ushort, BFloat16Element>(weights, rows, cols);

    /// <summary>β = max(mean|W| (double, then fp32), 1e−5).</summary>
    public static float Beta(ReadOnlySpan<float> weights) =>
        MathF.Max(LatentWeights.MeanAbs<float, Float32Element>(weights, 1, weights.Length), MinBeta);

    /// <summary>clamp(round_half_even(w · s), −1, 1) with w·s one fp32 multiply.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Ternary(float w, float s) => LatentWeights.Ternary(w * s);

    private static TernaryMatrix Ternarize<T, TElement>(ReadOnlySpan<T> weights, int rows, int cols)
        where T : unmanaged where TElement : ILatentElement<T>
    {
        LatentWeights.RequireShape(weights.Length, rows, cols, nameof(weights));
        float beta = MathF.Max(LatentWeights.MeanAbs<T, TElement>(weights, rows, cols), MinBeta);
        float s = 1f / beta;
        var m = TernaryMatrix.Allocate(rows, cols, 1f / s);
        var buffer = new float[cols];
        var codes = new byte[m.PaddedCols];
        codes.AsSpan(cols).Fill(1);
        for (int r = 0; r < rows; r++)
        {
            LatentWeights.TernaryCodes(LatentWeights.Row<T, TElement>(weights, r, cols, buffer), s, codes.AsSpan(0, cols));
            TernaryRowCodes.PackRow(codes, m.Row(r));
        }
        return m;
    }
}
