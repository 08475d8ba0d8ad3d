namespace BitNetSharp.Diagnostics.Profiling;

/// <summary>The operation kinds the forward pass reports to an <see cref="OpProfiler"/>, in the order a layer runs them.</summary>
public enum ProfileOp
{
    Embedding,
    Norm,
    Quantize,
    Q,
    K,
    V,
    Rope,
    /// <summary>KV-cache write and attention over the cached positions.</summary>
    Attention,
    O,
    Residual,
    Gate,
    Up,
    /// <summary>relu² or SiLU gating.</summary>
    Activation,
    Down,
    Head,
    Sampling,
}

/// <summary>Names and properties of <see cref="ProfileOp"/> values.</summary>
public static class ProfileOps
{
    public const int Count = (int)ProfileOp.Sampling + 1;

    private static readonly string[] Names =
        ["embedding", "norm", "quantize", "q", "k", "v", "rope", "attention", "o", "residual", "gate", "up", "activation", "down", "head", "sampling"];

    public static string Name(ProfileOp op) => Names[(int)op];

    /// <summary>The ternary BitLinear projections (int8 × ternary products).</summary>
    public static bool IsBitLinear(ProfileOp op) => op is ProfileOp.Q or ProfileOp.K or ProfileOp.V or ProfileOp.O or ProfileOp.Gate or ProfileOp.Up or ProfileOp.Down;
}

/// <summary>
/// Time, calls, weight bytes and multiply-accumulates per (layer, operation kind) over one phase (prefill or decode).
/// Layer −1 holds the operations outside the layers (embedding, final norm, head, sampling).
/// </summary>
public sealed class OpStats
{
    public OpStats(int layers)
    {
        Layers = layers;
        int n = (layers + 1) * ProfileOps.Count;
        Ticks = new long[n];
        Calls = new long[n];
        Bytes = new long[n];
        Macs = new long[n];
    }

    public int Layers { get; }

    /// <summary>Stopwatch ticks, [(layer + 1)·Count + op].</summary>
    public long[] Ticks { get; }
    public long[] Calls { get; }
    public long[] Bytes { get; }
    public long[] Macs { get; }

    /// <summary>Forward passes (steps) and tokens they carried, and the wall ticks of those steps (embedding to head).</summary>
    public long Steps { get; internal set; }
    public long Tokens { get; internal set; }
    public long StepTicks { get; internal set; }

    public static int Index(ProfileOp op, int layer) => (layer + 1) * ProfileOps.Count + (int)op;

    public void Add(ProfileOp op, int layer, long ticks, long bytes, long macs)
    {
        int i = Index(op, layer);
        Ticks[i] += ticks;
        Calls[i]++;
        Bytes[i] += bytes;
        Macs[i] += macs;
    }

    public void AddStep(int tokens, long ticks)
    {
        Steps++;
        Tokens += tokens;
        StepTicks += ticks;
    }

    public void Clear()
    {
        Array.Clear(Ticks);
        Array.Clear(Calls);
        Array.Clear(Bytes);
        Array.Clear(Macs);
        Steps = Tokens = StepTicks = 0;
    }
}
