using BitNetSharp.Kernels.FloatOps;
using BitNetSharp.Threading;

namespace BitNetSharp.Training.Layers;

/// <summary>
/// Causal grouped-query attention over q [tokens, heads·hd] and k, v [tokens, kvHeads·hd] (post-RoPE), batch rows of
/// seqLen tokens: query head h reads kv head h / group (FORMATS.md §4.2 step 4), scores · hd^−½, fp32 softmax
/// (the engine's <see cref="Softmax"/>). The probabilities [batch, heads, t, t'] are kept for the backward pass:
/// dp = dout·v, dv += p·dout, ds = p ⊙ (dp − Σ p·dp), dq = scale·Σ ds·k, dk += scale·ds·q.
/// Work is split over (batch row, kv head) so the heads that share a kv head accumulate dk and dv on one thread.
/// </summary>
public sealed unsafe class CausalAttention : IParallelWork
{
    private readonly WorkerPool _pool;
    private readonly TrainingShape _s;
    private readonly float[][] _scratch;
    private readonly float _scale;
    private float* _q, _k, _v, _probs, _out, _dout, _dq, _dk, _dv;
    private int _seqLen;
    private bool _backward;

    public CausalAttention(WorkerPool pool, TrainingShape shape)
    {
        _pool = pool;
        _s = shape;
        _scale = 1f / MathF.Sqrt(shape.HeadDim);
        _scratch = new float[pool.ThreadCount][];
        for (int i = 0; i < _scratch.Length; i++) _scratch[i] = new float[shape.ContextLength];
    }

    /// <summary>out [tokens, qDim]; probs [batch, heads, seqLen, seqLen] (only t' ≤ t written).</summary>
    public void Forward(float* q, float* k, float* v, float* probs, float* output, int batch, int seqLen)
    {
        _q = q;
        _k = k;
        _v = v;
        _probs = probs;
        _out = output;
        _seqLen = seqLen;
        _backward = false;
        _pool.Run(this, batch * _s.KvHeads);
    }

    /// <summary>dq, dk, dv are overwritten.</summary>
    public void Backward(float* q, float* k, float* v, float* probs, float* dout, float* dq, float* dk, float* dv, int batch, int seqLen)
    {
        _q = q;
        _k = k;
        _v = v;
        _probs = probs;
        _dout = dout;
        _dq = dq;
        _dk = dk;
        _dv = dv;
        _seqLen = seqLen;
        _backward = true;
        _pool.Run(this, batch * _s.KvHeads);
    }

    public void Execute(int start, int end, int worker)
    {
        int hd = _s.HeadDim, qDim = _s.QDim, kvDim = _s.KvDim, T = _seqLen, group = _s.GroupSize;
        var scratch = _scratch[worker];
        for (int item = start; item < end; item++)
        {
            int b = item / _s.KvHeads, kvh = item % _s.KvHeads;
            long row0 = (long)b * T;
            float* kBase = _k + row0 * kvDim + kvh * hd, vBase = _v + row0 * kvDim + kvh * hd;
            if (_backward)
            {
                float* dkBase = _dk + row0 * kvDim + kvh * hd, dvBase = _dv + row0 * kvDim + kvh * hd;
                for (int t = 0; t < T; t++)
                {
                    new Span<float>(dkBase + (long)t * kvDim, hd).Clear();
                    new Span<float>(dvBase + (long)t * kvDim, hd).Clear();
                }
            }
            for (int h = kvh * group; h < (kvh + 1) * group; h++)
            {
                float* probs = _probs + ((long)b * _s.Heads + h) * T * T;
                for (int t = 0; t < T; t++)
                {
                    float* q = _q + (row0 + t) * qDim + h * hd;
                    float* p = probs + (long)t * T;
                    if (!_backward)
                    {
                        for (int u = 0; u <= t; u++) p[u] = _scale * MatMulNT.Dot(q, kBase + (long)u * kvDim, hd);
                        // NaN or +∞ scores (a diverging run) become NaN probabilities, so the loss is NaN and the run's
                        // check stops it saying to lower --lr; Softmax.InPlace threw, naming neither.
                        Softmax.AttentionInPlace(new Span<float>(p, t + 1));
                        float* o = _out + (row0 + t) * qDim + h * hd;
                        new Span<float>(o, hd).Clear();
                        for (int u = 0; u <= t; u++) MatMulNT.Axpy(p[u], vBase + (long)u * kvDim, o, hd);
                    }
                    else
                    {
                        float* dout = _dout + (row0 + t) * qDim + h * hd;
                        float* dq = _dq + (row0 + t) * qDim + h * hd;
                        float* dkBase = _dk + row0 * kvDim + kvh * hd, dvBase = _dv + row0 * kvDim + kvh * hd;
                        double sum = 0;
                        for (int u = 0; u <= t; u++)
                        {
                            float dp = MatMulNT.Dot(dout, vBase + (long)u * kvDim, hd);
                            scratch[u] = dp;
                            sum += (double)p[u] * dp;
                            MatMulNT.Axpy(p[u], dout, dvBase + (long)u * kvDim, hd);
                        }
                        new Span<float>(dq, hd).Clear();
                        for (int u = 0; u <= t; u++)
                        {
                            float ds = p[u] * (scratch[u] - (float)sum) * _scale;
                            MatMulNT.Axpy(ds, kBase + (long)u * kvDim, dq, hd);
                            MatMulNT.Axpy(ds, q, dkBase + (long)u * kvDim, hd);
                        }
                    }
                }
            }
        }
    }
}
