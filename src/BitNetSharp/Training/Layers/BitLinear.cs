using BitNetSharp.Kernels;
using BitNetSharp.Quantization;
using BitNetSharp.Threading;

namespace BitNetSharp.Training.Layers;

/// <summary>
/// BitNet b1.58's BitLinear (FORMATS.md §4.4) for training, y = W̃·x̃ with
/// <list type="bullet">
/// <item>weights ternarized per tensor by absmean: β = max(mean|W|, 1e−5) (<see cref="AbsmeanTernarizer.Beta"/>),
/// T = clamp(round_half_even(W · (1/β)), −1, 1) (<see cref="AbsmeanTernarizer.Ternary"/>), W̃ = β·T;</item>
/// <item>activations fake-quantized per token exactly as <see cref="Int8ActivationQuantizer"/>:
/// s_x = 127 / max(max|x|, 1e−5), q = clamp(round_half_even(x·127/γ), −128, 127) of the exact quotient, x̃ = q / s_x;
/// or at a lower width b (<c>bitnet train --activation-bits</c>) as <see cref="LowBitActivationQuantizer"/>, with
/// m = 2^(b−1) − 1 in place of 127.</item>
/// </list>
/// The forward product is computed as the engine does, y = (Σ_k T_ok·q_k) / s_x · β with the integer sum exact in
/// fp32, so it is bit-identical to the ternary kernels on the exported model.
/// <para>
/// Backward: the straight-through estimator. Both quantizers are treated as the identity in the backward pass
/// (∂x̃/∂x := I, ∂W̃/∂W := I), while the products use the quantized values the forward used:
/// dx = W̃ᵀ·dy = β·(Tᵀ·dy) and dW = dy·x̃ᵀ = Σ_t dy_t·(q_t / s_x,t)ᵀ. No clipping mask is applied to x (values at
/// the absmax are never clipped; the int8 range only clips the one value that rounds to +128) nor to W (weights
/// beyond ±1.5β keep receiving gradient), as in the BitNet papers' STE.
/// </para>
/// With <c>quantized = false</c> (the full-precision twin) the same code runs with T = W, β = 1, q = x, s_x = 1.
/// </summary>
public sealed unsafe class BitLinear : IParallelWork
{
    private readonly WorkerPool _pool;
    private readonly MatMulNT _matmul;
    private readonly Transpose _transpose;
    private readonly bool _quantized;
    private float* _src, _dst, _scale;
    private int _cols, _mode, _bits = 8;
    private float _inverseBeta;

    public BitLinear(WorkerPool pool, MatMulNT matmul, Transpose transpose, bool quantized)
    {
        _pool = pool;
        _matmul = matmul;
        _transpose = transpose;
        _quantized = quantized;
    }

    public bool Quantized => _quantized;

    /// <summary>
    /// Weight quantization, once per optimizer step: codes[o, i] = T (or W), codesT = its transpose (for dx); returns β
    /// (1 in full precision).
    /// </summary>
    public float QuantizeWeights(float* w, int rows, int cols, float* codes, float* codesT)
    {
        float beta = 1f;
        if (_quantized)
        {
            beta = Beta(w, rows, cols);
            // AbsmeanTernarizer's s = 1f/β, and its row scale 1f/s, is what the exported I2_S carries; use the same value.
            float s = 1f / beta;
            beta = 1f / s;
            _src = w;
            _dst = codes;
            _cols = cols;
            _inverseBeta = s;
            _mode = 0;
            _pool.Run(this, rows);
        }
        else new ReadOnlySpan<float>(w, rows * cols).CopyTo(new Span<float>(codes, rows * cols));
        _transpose.Run(codes, rows, cols, codesT);
        return beta;
    }

    /// <summary>
    /// β = max(mean|W|, 1e−5) summed exactly as <see cref="AbsmeanTernarizer.FromFloat32"/> does for the export (per-row
    /// double sums added row by row, then one rounding to fp32), so the exported scale is the trainer's bit for bit;
    /// without the temporary row buffer the library call makes.
    /// </summary>
    public static float Beta(float* w, int rows, int cols)
    {
        double sum = 0;
        for (int r = 0; r < rows; r++) sum += LatentWeights.SumAbs(new ReadOnlySpan<float>(w + (long)r * cols, cols));
        double mean = sum / ((double)rows * cols);
        if (!double.IsFinite(mean))
            throw new TrainingDivergedException("the latent weights are no longer finite: training diverged. Lower --lr (or raise --warmup) and start again.");
        return MathF.Max((float)mean, AbsmeanTernarizer.MinBeta);
    }

    /// <summary>
    /// Per-token activation quantization of x [tokens, cols] into q (codes as floats) and s_x at <paramref name="bits"/>
    /// bits (the engine's quantizer, <see cref="LowBitActivationQuantizer"/>: codes in [−(2^(b−1)−1), 2^(b−1)−1], s_x =
    /// (2^(b−1)−1)/γ; 8 is <see cref="Int8ActivationQuantizer"/>); x copied and s_x = 1 in full precision.
    /// </summary>
    public void QuantizeActivations(float* x, int tokens, int cols, float* q, float* scales, int bits = 8)
    {
        _bits = bits;
        _src = x;
        _dst = q;
        _scale = scales;
        _cols = cols;
        _mode = 1;
        _pool.Run(this, tokens);
    }

    /// <summary>y [tokens, rows] = (q·codesᵀ) / s_x · β.</summary>
    public void Forward(float* q, float* scales, float* codes, float beta, float* y, int tokens, int rows, int cols) =>
        _matmul.Run(q, codes, y, tokens, rows, cols, accumulate: false, div: scales, scale: beta);

    /// <summary>
    /// dx [tokens, cols] (+)= β·dy·T; dW [rows, cols] = dyᵀ·x̃ where <paramref name="xT"/> = x̃ᵀ [cols, tokens]
    /// (q / s_x transposed, made once per input and shared by the projections that read it).
    /// <paramref name="dyT"/> is scratch for rows·tokens floats.
    /// </summary>
    public void Backward(float* dy, float* xT, float* codesT, float beta, float* dx, bool accumulateDx, float* dw, float* dyT, int tokens, int rows, int cols)
    {
        _matmul.Run(dy, codesT, dx, tokens, cols, rows, accumulateDx, null, beta);
        _transpose.Run(dy, tokens, rows, dyT);
        _matmul.Run(dyT, xT, dw, rows, cols, tokens);
    }

    /// <summary>x̃ᵀ [cols, tokens] = (q / s_x)ᵀ for the weight gradient.</summary>
    public void TransposeInput(float* q, float* scales, float* xT, int tokens, int cols) => _transpose.Run(q, tokens, cols, xT, scales);

    public void Execute(int start, int end, int worker)
    {
        int n = _cols;
        if (_mode == 0)
        {
            for (int r = start; r < end; r++)
            {
                float* w = _src + (long)r * n, c = _dst + (long)r * n;
                for (int i = 0; i < n; i++) c[i] = AbsmeanTernarizer.Ternary(w[i], _inverseBeta);
            }
            return;
        }
        for (int t = start; t < end; t++)
        {
            float* x = _src + (long)t * n, q = _dst + (long)t * n;
            if (!_quantized)
            {
                new ReadOnlySpan<float>(x, n).CopyTo(new Span<float>(q, n));
                _scale[t] = 1f;
                continue;
            }
            _scale[t] = _bits == 8
                ? Int8ActivationQuantizer.QuantizeToFloatCodes(new ReadOnlySpan<float>(x, n), new Span<float>(q, n))
                : LowBitActivationQuantizer.QuantizeToFloatCodes(new ReadOnlySpan<float>(x, n), new Span<float>(q, n), _bits);
        }
    }
}
