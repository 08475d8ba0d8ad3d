using BitNetSharp.Kernels.FloatOps;
using BitNetSharp.Threading;

namespace BitNetSharp.Training.Layers;

/// <summary>
/// The 2B4T FFN gate m = relu(g)² ⊙ u (FORMATS.md §4.2 step 10), forward by the engine's
/// <see cref="GatedActivation.ReluSquared(ReadOnlySpan{float}, ReadOnlySpan{float}, Span{float})"/>.
/// Backward with r = relu(g): dg = dm·u·2r, du = dm·r².
/// </summary>
public sealed unsafe class ReluSquaredGate : IParallelWork
{
    private readonly WorkerPool _pool;
    private float* _g, _u, _m, _dm, _dg, _du;
    private int _n;
    private bool _backward;

    public ReluSquaredGate(WorkerPool pool) => _pool = pool;

    public void Forward(float* g, float* u, float* m, int tokens, int n)
    {
        _g = g;
        _u = u;
        _m = m;
        _n = n;
        _backward = false;
        _pool.Run(this, tokens);
    }

    public void Backward(float* g, float* u, float* dm, float* dg, float* du, int tokens, int n)
    {
        _g = g;
        _u = u;
        _dm = dm;
        _dg = dg;
        _du = du;
        _n = n;
        _backward = true;
        _pool.Run(this, tokens);
    }

    public void Execute(int start, int end, int worker)
    {
        int n = _n;
        for (int t = start; t < end; t++)
        {
            long o = (long)t * n;
            if (!_backward)
            {
                GatedActivation.ReluSquared(new ReadOnlySpan<float>(_g + o, n), new ReadOnlySpan<float>(_u + o, n), new Span<float>(_m + o, n));
                continue;
            }
            for (int i = 0; i < n; i++)
            {
                float r = _g[o + i] > 0f ? _g[o + i] : 0f, dm = _dm[o + i];
                _dg[o + i] = dm * _u[o + i] * 2f * r;
                _du[o + i] = dm * r * r;
            }
        }
    }
}
