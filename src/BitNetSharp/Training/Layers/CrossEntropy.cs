using System.Runtime.Intrinsics;
using BitNetSharp.Threading;

namespace BitNetSharp.Training.Layers;

/// <summary>
/// Next-token cross-entropy over logits [tokens, vocab]: loss_t = logsumexp(z_t) − z_t[target_t] (computed with the
/// max subtracted, e^x by the runtime's vector exp, the sum in double), and in the backward pass dz_t = (softmax(z_t) − onehot(target_t)) / n
/// written over the logits, n being the number of tokens averaged. Per-token losses are kept so the mean is summed
/// in a fixed order whatever the thread count.
/// </summary>
public sealed unsafe class CrossEntropy : IParallelWork
{
    private readonly WorkerPool _pool;
    private float* _logits;
    private int* _targets;
    private float[] _losses = [];
    private int _vocab;
    private float _gradScale;
    private bool _backward;

    public CrossEntropy(WorkerPool pool) => _pool = pool;

    public void Forward(float* logits, int* targets, float[] losses, int tokens, int vocab)
    {
        _logits = logits;
        _targets = targets;
        _losses = losses;
        _vocab = vocab;
        _backward = false;
        _pool.Run(this, tokens);
    }

    public void Backward(float* logits, int* targets, int tokens, int vocab)
    {
        _logits = logits;
        _targets = targets;
        _vocab = vocab;
        _gradScale = 1f / tokens;
        _backward = true;
        _pool.Run(this, tokens);
    }

    public void Execute(int start, int end, int worker)
    {
        int v = _vocab;
        for (int t = start; t < end; t++)
        {
            float* z = _logits + (long)t * v;
            float max = Max(z, v);
            double sum = ExpSum(z, v, max, _backward ? z : null);
            int target = _targets[t];
            if (!_backward)
            {
                _losses[t] = (float)(Math.Log(sum) + max - z[target]);
                continue;
            }
            float scale = (float)(1.0 / sum) * _gradScale;
            for (int i = 0; i < v; i++) z[i] *= scale;
            z[target] -= _gradScale;
        }
    }

    private static float Max(float* z, int n)
    {
        int i = 0;
        float max = float.NegativeInfinity;
        if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            var m = Vector256.Create(float.NegativeInfinity);
            for (; i <= n - 8; i += 8) m = Vector256.Max(m, Vector256.Load(z + i));
            for (int k = 0; k < 8; k++) max = MathF.Max(max, m[k]);
        }
        for (; i < n; i++) max = MathF.Max(max, z[i]);
        return max;
    }

    /// <summary>Σ e^(z−max) (vector e^x, fp32 lanes summed into a double per 8-wide block); writes e^(z−max) to <paramref name="exp"/> when given.</summary>
    private static double ExpSum(float* z, int n, float max, float* exp)
    {
        int i = 0;
        double sum = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var m = Vector256.Create(max);
            for (; i <= n - 8; i += 8)
            {
                var e = Vector256.Exp(Vector256.Load(z + i) - m);
                if (exp != null) e.Store(exp + i);
                sum += Vector256.Sum(e);
            }
        }
        for (; i < n; i++)
        {
            float e = MathF.Exp(z[i] - max);
            if (exp != null) exp[i] = e;
            sum += e;
        }
        return sum;
    }
}
