using BitNetSharp.Kernels.FloatOps;
using BitNetSharp.Threading;

namespace BitNetSharp.Training.Layers;

/// <summary>
/// NEOX RoPE (FORMATS.md §4.3) on every head of q and k, in place, with the engine's <see cref="RopeTable"/> so
/// the rotated values are bit-identical to inference. Token t of a batch row sits at position t (each training
/// sequence starts at 0). Backward is the inverse rotation (the transpose of an orthogonal 2×2 block):
/// dx0 = dy0·c + dy1·s, dx1 = dy1·c − dy0·s.
/// </summary>
public sealed unsafe class RopeLayer : IParallelWork
{
    private readonly WorkerPool _pool;
    private readonly RopeTable _table;
    private float* _q, _k;
    private int _seqLen, _qWidth, _kWidth;
    private bool _backward;

    public RopeLayer(WorkerPool pool, TrainingShape shape)
    {
        _pool = pool;
        _table = new RopeTable(shape.HeadDim, shape.ContextLength, shape.RopeTheta, RopeStyle.Neox);
    }

    public void Forward(float* q, float* k, int tokens, int seqLen, int qWidth, int kWidth) => Run(q, k, tokens, seqLen, qWidth, kWidth, false);

    public void Backward(float* dq, float* dk, int tokens, int seqLen, int qWidth, int kWidth) => Run(dq, dk, tokens, seqLen, qWidth, kWidth, true);

    private void Run(float* q, float* k, int tokens, int seqLen, int qWidth, int kWidth, bool backward)
    {
        _q = q;
        _k = k;
        _seqLen = seqLen;
        _qWidth = qWidth;
        _kWidth = kWidth;
        _backward = backward;
        _pool.Run(this, tokens);
    }

    public void Execute(int start, int end, int worker)
    {
        for (int t = start; t < end; t++)
        {
            int pos = t % _seqLen;
            var q = new Span<float>(_q + (long)t * _qWidth, _qWidth);
            var k = new Span<float>(_k + (long)t * _kWidth, _kWidth);
            if (!_backward)
            {
                _table.Apply(q, pos);
                _table.Apply(k, pos);
            }
            else
            {
                Inverse(q, pos);
                Inverse(k, pos);
            }
        }
    }

    private void Inverse(Span<float> x, int pos)
    {
        int hd = _table.HeadDim, half = hd / 2;
        var cos = _table.Cos(pos);
        var sin = _table.Sin(pos);
        for (int h = 0; h < x.Length; h += hd)
        for (int i = 0; i < half; i++)
        {
            float d0 = x[h + i], d1 = x[h + i + half];
            x[h + i] = d0 * cos[i] + d1 * sin[i];
            x[h + i + half] = d1 * cos[i] - d0 * sin[i];
        }
    }
}
