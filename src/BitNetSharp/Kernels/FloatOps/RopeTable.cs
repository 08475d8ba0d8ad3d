using System.Runtime.Intrinsics;

namespace BitNetSharp.Kernels.FloatOps;

/// <summary>How rotary pairs are formed inside a head (FORMATS.md §4.3).</summary>
public enum RopeStyle
{
    /// <summary>GPT-NeoX / HF rotate_half: pairs (i, i + headDim/2). The <c>bitnet*</c> GGUF arches and HF checkpoints.</summary>
    Neox,

    /// <summary>Original / ggml NORM: interleaved pairs (2i, 2i+1). <c>llama</c>-arch GGUFs, whose q/k rows are permuted for it.</summary>
    Norm,
}

/// <summary>
/// cos and sin of every rotary angle for positions [0, MaxPositions), computed once like HF:
/// inv_freq_i = 1 / base^((2i)/headDim) with the exponent and power in fp32, angle = (float)pos · inv_freq_i,
/// then fp32 cos/sin (HF then rounds them to bf16; ggml instead multiplies θ by base^(−2/hd) pair by pair;
/// neither is reproduced bit for bit, see §4.3). Layout: [position][pair], headDim/2 floats per position
/// (2B4T at 4096 positions: 2 MiB). Rotation in fp32 without FMA: x0·c − x1·s, x1·c + x0·s, identical at every width.
/// </summary>
public sealed unsafe class RopeTable
{
    private float[] _cos;
    private float[] _sin;
    private readonly float[] _invFreq;

    /// <param name="initialPositions">Positions computed now (at most <paramref name="maxPositions"/>; default all of
    /// them); <see cref="EnsurePositions"/> computes more as they are reached. The engine computes the positions its
    /// sequences reach: a model declaring 16M positions, run with a context of 16, computed 1 GiB of angles first.</param>
    public RopeTable(int headDim, int maxPositions, float theta, RopeStyle style = RopeStyle.Neox, int initialPositions = int.MaxValue)
    {
        if (headDim <= 0 || headDim % 2 != 0)
            throw new ArgumentOutOfRangeException(nameof(headDim), headDim, "The head dimension must be a positive even number.");
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxPositions);
        if (!(theta > 1f) || float.IsInfinity(theta))
            throw new ArgumentOutOfRangeException(nameof(theta), theta, "The RoPE base (rope_theta) must be a finite number above 1.");
        HeadDim = headDim;
        MaxPositions = maxPositions;
        Theta = theta;
        Style = style;
        int half = headDim / 2;
        _invFreq = new float[half];
        for (int i = 0; i < half; i++) _invFreq[i] = 1f / MathF.Pow(theta, (float)(2 * i) / headDim);
        _cos = [];
        _sin = [];
        EnsurePositions(Math.Clamp(initialPositions, 1, maxPositions));
    }

    public int HeadDim { get; }

    /// <summary>The most positions the table may hold (the model's context).</summary>
    public int MaxPositions { get; }

    /// <summary>Positions [0, ComputedPositions) are computed and may be read.</summary>
    public int ComputedPositions { get; private set; }

    /// <summary>
    /// Computes positions up to <paramref name="count"/> (at least doubling what is there, at most
    /// <see cref="MaxPositions"/>); each value is what the full table holds. Not thread-safe: call it before the step
    /// whose threads read the table (the engine does, for the step's last position).
    /// </summary>
    public void EnsurePositions(int count)
    {
        if (count <= ComputedPositions) return;
        if (count > MaxPositions)
            throw new ArgumentOutOfRangeException(nameof(count), count, $"Position {count - 1} is outside the RoPE table's {MaxPositions} positions.");
        int half = HeadDim / 2;
        int target = (int)Math.Min(MaxPositions, Math.Max(count, 2L * ComputedPositions));
        if ((long)target * half > Array.MaxLength)
        {
            if ((long)count * half > Array.MaxLength)
                throw new ArgumentOutOfRangeException(nameof(count), count,
                    $"Position {count - 1} at head_dim {HeadDim} needs a rotary table of more than {Array.MaxLength:N0} angles, beyond what this runtime holds.");
            target = Array.MaxLength / half; // as far as one array goes (growing by `count` alone copied the table every step)
        }
        var cos = new float[(long)target * half];
        var sin = new float[(long)target * half];
        _cos.CopyTo(cos, 0);
        _sin.CopyTo(sin, 0);
        for (int pos = ComputedPositions; pos < target; pos++)
        for (int i = 0; i < half; i++)
        {
            float angle = pos * _invFreq[i];
            cos[(long)pos * half + i] = MathF.Cos(angle);
            sin[(long)pos * half + i] = MathF.Sin(angle);
        }
        _cos = cos;
        _sin = sin;
        ComputedPositions = target;
    }
    public float Theta { get; }
    public RopeStyle Style { get; }

    /// <summary>cos of the angles at one position (headDim/2 values).</summary>
    public ReadOnlySpan<float> Cos(int position) => _cos.AsSpan(CheckPosition(position) * (HeadDim / 2), HeadDim / 2);

    /// <summary>sin of the angles at one position (headDim/2 values).</summary>
    public ReadOnlySpan<float> Sin(int position) => _sin.AsSpan(CheckPosition(position) * (HeadDim / 2), HeadDim / 2);

    /// <summary>Rotates every head of <paramref name="x"/> (heads × headDim values, head-major) in place.</summary>
    public void Apply(Span<float> x, int position) => Apply<WidestVector>(x, position);

    public void Apply<TWidth>(Span<float> x, int position) where TWidth : struct, IVectorWidth
    {
        int heads = CheckHeads(x);
        int half = HeadDim / 2;
        int offset = CheckPosition(position) * half;
        fixed (float* px = x)
        fixed (float* pc = &_cos[offset])
        fixed (float* ps = &_sin[offset])
        {
            for (int h = 0; h < heads; h++)
            {
                float* head = px + (long)h * HeadDim;
                if (Style == RopeStyle.Neox) RotateHalves<TWidth>(head, head + half, pc, ps, half);
                else RotateInterleaved(head, pc, ps, half);
            }
        }
    }

    /// <summary>The scalar definition, straight from §4.3.</summary>
    public void ApplyReference(Span<float> x, int position)
    {
        int heads = CheckHeads(x);
        int half = HeadDim / 2;
        var cos = Cos(position);
        var sin = Sin(position);
        for (int h = 0; h < heads; h++)
        {
            var head = x.Slice(h * HeadDim, HeadDim);
            for (int i = 0; i < half; i++)
            {
                int a = Style == RopeStyle.Neox ? i : 2 * i;
                int b = Style == RopeStyle.Neox ? i + half : 2 * i + 1;
                float x0 = head[a], x1 = head[b];
                head[a] = x0 * cos[i] - x1 * sin[i];
                head[b] = x1 * cos[i] + x0 * sin[i];
            }
        }
    }

    private static void RotateHalves<TWidth>(float* a, float* b, float* c, float* s, int half) where TWidth : struct, IVectorWidth
    {
        int i = 0;
        if (TWidth.Bits >= 512 && Vector512.IsHardwareAccelerated)
        {
            for (; i <= half - 16; i += 16)
            {
                var x0 = Vector512.Load(a + i);
                var x1 = Vector512.Load(b + i);
                var vc = Vector512.Load(c + i);
                var vs = Vector512.Load(s + i);
                (x0 * vc - x1 * vs).Store(a + i);
                (x1 * vc + x0 * vs).Store(b + i);
            }
        }
        if (TWidth.Bits >= 256 && Vector256.IsHardwareAccelerated)
        {
            for (; i <= half - 8; i += 8)
            {
                var x0 = Vector256.Load(a + i);
                var x1 = Vector256.Load(b + i);
                var vc = Vector256.Load(c + i);
                var vs = Vector256.Load(s + i);
                (x0 * vc - x1 * vs).Store(a + i);
                (x1 * vc + x0 * vs).Store(b + i);
            }
        }
        if (TWidth.Bits >= 128 && Vector128.IsHardwareAccelerated)
        {
            for (; i <= half - 4; i += 4)
            {
                var x0 = Vector128.Load(a + i);
                var x1 = Vector128.Load(b + i);
                var vc = Vector128.Load(c + i);
                var vs = Vector128.Load(s + i);
                (x0 * vc - x1 * vs).Store(a + i);
                (x1 * vc + x0 * vs).Store(b + i);
            }
        }
        for (; i < half; i++)
        {
            float x0 = a[i], x1 = b[i];
            a[i] = x0 * c[i] - x1 * s[i];
            b[i] = x1 * c[i] + x0 * s[i];
        }
    }

    /// <summary>Interleaved pairs are left scalar: a head is at most a few hundred values and NORM models are rare.</summary>
    private static void RotateInterleaved(float* head, float* c, float* s, int half)
    {
        for (int i = 0; i < half; i++)
        {
            float x0 = head[2 * i], x1 = head[2 * i + 1];
            head[2 * i] = x0 * c[i] - x1 * s[i];
            head[2 * i + 1] = x1 * c[i] + x0 * s[i];
        }
    }

    private int CheckPosition(int position)
    {
        if ((uint)position >= (uint)ComputedPositions)
            throw new ArgumentOutOfRangeException(nameof(position), position, (uint)position >= (uint)MaxPositions
                ? $"Position {position} is outside the RoPE table's {MaxPositions} positions."
                : $"Position {position} is not computed yet ({ComputedPositions} are); call EnsurePositions first.");
        return position;
    }

    private int CheckHeads(Span<float> x)
    {
        if (x.Length % HeadDim != 0)
            throw new ArgumentException($"{x.Length} values are not a whole number of heads of {HeadDim}.", nameof(x));
        return x.Length / HeadDim;
    }
}
