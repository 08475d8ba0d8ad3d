using BitNetSharp.Threading;

namespace BitNetSharp.Training;

/// <summary>
/// AdamW (Loshchilov &amp; Hutter 2019) with bias correction: m = β1·m + (1−β1)·g, v = β2·v + (1−β2)·g²,
/// p −= lr·(m̂ / (√v̂ + ε) + λ·p), the decoupled decay λ applied to matrices only (the projections and the tied
/// embedding; not norm weights). Before the update the gradient is clipped by its global L2 norm. The norm is
/// summed in double over fixed 64K-element chunks and the chunk sums added in order, so it — and so the whole run —
/// is the same whatever the thread count (a resumed run with another -t stays bit-identical).
/// </summary>
public sealed class AdamW : IParallelWork
{
    private const int Chunk = 1 << 16;
    private readonly WorkerPool _pool;
    private readonly float[] _params, _grads;
    private readonly byte[] _decay;          // per element: 1 where weight decay applies
    private readonly double[] _chunkSums;
    private float _lr, _scale, _bc1, _bc2;
    private bool _norm;

    public AdamW(float[] parameters, float[] gradients, ParameterLayout layout, WorkerPool pool)
    {
        _pool = pool;
        _params = parameters;
        _grads = gradients;
        M = new float[parameters.Length];
        V = new float[parameters.Length];
        _decay = new byte[parameters.Length];
        foreach (var t in layout.Tensors)
            if (t.IsMatrix) _decay.AsSpan(t.Offset, t.Length).Fill(1);
        _chunkSums = new double[(parameters.Length + Chunk - 1) / Chunk];
    }

    public float Beta1 { get; init; } = 0.9f;
    public float Beta2 { get; init; } = 0.95f;
    public float Epsilon { get; init; } = 1e-8f;
    public float WeightDecay { get; init; } = 0.1f;

    /// <summary>Global-norm clip threshold (≤ 0: no clipping).</summary>
    public float ClipNorm { get; init; } = 1f;

    /// <summary>First moment (saved in checkpoints).</summary>
    public float[] M { get; }

    /// <summary>Second moment (saved in checkpoints).</summary>
    public float[] V { get; }

    /// <summary>Global gradient norm before clipping, of the last <see cref="Step"/>.</summary>
    public float LastGradNorm { get; private set; }

    /// <summary>One update with learning rate <paramref name="lr"/>; <paramref name="step"/> counts from 1.</summary>
    public void Step(int step, float lr)
    {
        _norm = true;
        _pool.Run(this, _chunkSums.Length);
        double sq = 0;
        foreach (double s in _chunkSums) sq += s;
        float norm = (float)Math.Sqrt(sq);
        LastGradNorm = norm;
        // A NaN norm failed "norm > ClipNorm" and went through unclipped; an infinite one scaled by 0 gave ∞·0 = NaN.
        // Refused before any weight or moment changes.
        if (!float.IsFinite(norm))
            throw new TrainingDivergedException($"the gradient norm is {norm.ToString(System.Globalization.CultureInfo.InvariantCulture)} at step {step}: training diverged; the weights are left as they were. Lower --lr (or raise --warmup).");
        _scale = ClipNorm > 0 && norm > ClipNorm ? ClipNorm / norm : 1f;
        _lr = lr;
        _bc1 = 1f - MathF.Pow(Beta1, step);
        _bc2 = 1f - MathF.Pow(Beta2, step);
        _norm = false;
        _pool.Run(this, _chunkSums.Length);
    }

    public void Execute(int start, int end, int worker)
    {
        for (int c = start; c < end; c++)
        {
            int i0 = c * Chunk, i1 = Math.Min(_params.Length, i0 + Chunk);
            if (_norm)
            {
                double s = 0;
                for (int i = i0; i < i1; i++) s += (double)_grads[i] * _grads[i];
                _chunkSums[c] = s;
                continue;
            }
            float b1 = Beta1, b2 = Beta2, wd = WeightDecay * _lr;
            for (int i = i0; i < i1; i++)
            {
                float g = _grads[i] * _scale;
                float m = M[i] = b1 * M[i] + (1f - b1) * g;
                float v = V[i] = b2 * V[i] + (1f - b2) * g * g;
                float update = m / _bc1 / (MathF.Sqrt(v / _bc2) + Epsilon);
                _params[i] -= _lr * update + (_decay[i] != 0 ? wd * _params[i] : 0f);
            }
        }
    }
}

/// <summary>Linear warm-up from 0 to the peak over <see cref="WarmupSteps"/>, then cosine decay to <see cref="MinFraction"/>·peak at <see cref="TotalSteps"/>.</summary>
public sealed record LearningRateSchedule(float Peak, int WarmupSteps, int TotalSteps, float MinFraction = 0.1f)
{
    /// <summary>The rate for step <paramref name="step"/> (1-based).</summary>
    public float At(int step)
    {
        if (step <= WarmupSteps) return Peak * step / Math.Max(1, WarmupSteps);
        double progress = Math.Clamp((double)(step - WarmupSteps) / Math.Max(1, TotalSteps - WarmupSteps), 0, 1);
        double cosine = 0.5 * (1 + Math.Cos(Math.PI * progress));
        return (float)(Peak * (MinFraction + (1 - MinFraction) * cosine));
    }
}
