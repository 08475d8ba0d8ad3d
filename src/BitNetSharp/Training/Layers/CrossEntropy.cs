using BitNetSharp.Threading;

namespace BitNetSharp.Training.Layers;

/// <summary>
/// Next-token cross-entropy over logits [tokens, vocab]: loss_t = logsumexp(z_t) − z_t[target_t] (computed with the
/// max subtracted, in double for the sum), and in the backward pass dz_t = (softmax(z_t) − onehot(target_t)) / n
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
            float max = float.NegativeInfinity;
            for (int i = 0; i < v; i++) max = MathF.Max(max, z[i]);
            double sum = 0;
            for (int i = 0; i < v; i++) sum += MathF.Exp(z[i] - max);
            int target = _targets[t];
            if (!_backward)
            {
                _losses[t] = (float)(Math.Log(sum) + max - z[target]);
                continue;
            }
            float inv = (float)(1.0 / sum);
            for (int i = 0; i < v; i++) z[i] = MathF.Exp(z[i] - max) * inv * _gradScale;
            z[target] -= _gradScale;
        }
    }
}
