using BitNetSharp.Kernels.FloatOps;
using BitNetSharp.Threading;

namespace BitNetSharp.Training.Layers;

/// <summary>
/// RMSNorm over rows of width n: y = w ⊙ x · r with r = 1/sqrt(mean(x²) + eps), computed by the engine's
/// <see cref="RmsNorm.Apply(ReadOnlySpan{float}, ReadOnlySpan{float}, Span{float}, float)"/> so training and
/// inference agree bit for bit. Backward, with g = w ⊙ dy:
/// dx = r·g − (r³/n)·x·Σ_i g_i x_i (added to dx: the residual stream already carries a gradient), and
/// dw_i = Σ_tokens dy_i·x_i·r.
/// </summary>
public sealed unsafe class RmsNormLayer : IParallelWork
{
    /// <summary>dw is reduced over tokens in blocks of 16 columns (one cache line of each row) per work item.</summary>
    private const int ColumnBlock = 16;
    private readonly WorkerPool _pool;
    private float* _x, _w, _y, _rstd, _dy, _dx, _dw;
    private int _n, _tokens, _mode;
    private float _eps;

    public RmsNormLayer(WorkerPool pool) => _pool = pool;

    /// <summary>y[t] = RMSNorm(x[t]) · w; rstd[t] = r, kept for the backward pass.</summary>
    public void Forward(float* x, float* w, float* y, float* rstd, int tokens, int n, float eps)
    {
        _x = x;
        _w = w;
        _y = y;
        _rstd = rstd;
        _tokens = tokens;
        _n = n;
        _eps = eps;
        _mode = 0;
        _pool.Run(this, tokens);
    }

    /// <summary>dx[t] += ∂L/∂x (from dy); dw = ∂L/∂w (overwritten).</summary>
    public void Backward(float* x, float* w, float* rstd, float* dy, float* dx, float* dw, int tokens, int n)
    {
        _x = x;
        _w = w;
        _rstd = rstd;
        _dy = dy;
        _dx = dx;
        _dw = dw;
        _tokens = tokens;
        _n = n;
        _mode = 1;
        _pool.Run(this, tokens);
        _mode = 2;
        _pool.Run(this, (n + ColumnBlock - 1) / ColumnBlock);
    }

    public void Execute(int start, int end, int worker)
    {
        int n = _n;
        switch (_mode)
        {
            case 0:
                for (int t = start; t < end; t++)
                {
                    float* x = _x + (long)t * n;
                    var row = new ReadOnlySpan<float>(x, n);
                    RmsNorm.Apply(row, new ReadOnlySpan<float>(_w, n), new Span<float>(_y + (long)t * n, n), _eps);
                    // The same two roundings as RmsNorm: (float)(Σ/n), then 1f / sqrtf(mean + eps).
                    float mean = (float)(RmsNorm.SumOfSquares<WidestVector>(x, n) / n);
                    _rstd[t] = 1f / MathF.Sqrt(mean + _eps);
                }
                break;
            case 1:
                for (int t = start; t < end; t++)
                {
                    float* x = _x + (long)t * n, dy = _dy + (long)t * n, dx = _dx + (long)t * n;
                    float r = _rstd[t];
                    double dot = 0;
                    for (int i = 0; i < n; i++) dot += (double)_w[i] * dy[i] * x[i];
                    float c = (float)(dot * r * r * r / n);
                    for (int i = 0; i < n; i++) dx[i] += r * _w[i] * dy[i] - c * x[i];
                }
                break;
            default:
                Span<double> sums = stackalloc double[ColumnBlock];
                for (int block = start; block < end; block++)
                {
                    int i0 = block * ColumnBlock, width = Math.Min(ColumnBlock, n - i0);
                    sums.Clear();
                    for (int t = 0; t < _tokens; t++)
                    {
                        float* dy = _dy + (long)t * n + i0, x = _x + (long)t * n + i0;
                        double r = _rstd[t];
                        for (int j = 0; j < width; j++) sums[j] += (double)dy[j] * x[j] * r;
                    }
                    for (int j = 0; j < width; j++) _dw[i0 + j] = (float)sums[j];
                }
                break;
        }
    }
}
