using System.Diagnostics;
using BitNetSharp.Kernels;
using BitNetSharp.Quantization;
using BitNetSharp.Threading;

namespace BitNetSharp.Diagnostics.Profiling;

/// <summary>
/// The int8 × ternary multiply-accumulate ceiling of this machine: the engine's kernel on the pool over a weight matrix
/// small enough to stay in the caches (so memory does not bound it), at a given token count. A projection that reaches a
/// large share of it is compute-bound; one far below it but near the read bandwidth is memory-bound.
/// </summary>
public static unsafe class KernelPeak
{
    /// <summary>The input widths of the model's ternary projections (q/k/v and gate/up read Dim, o reads QDim, down
    /// FeedForward), each once, ascending: where the profile measures its ceiling and the kernel's unpack share.</summary>
    public static SortedSet<int> ProjectionWidths(Model.ModelConfig c) => [c.Dim, c.QDim, c.FeedForward];

    /// <summary>Best GMAC/s (1e9 multiply-accumulates per second) over about <paramref name="seconds"/> of repeated
    /// products of a cache-resident <paramref name="cols"/>-wide matrix with <paramref name="tokens"/> tokens.</summary>
    public static double Measure(WorkerPool pool, TernaryKernel kernel, int cols, int tokens, double seconds = 0.25) =>
        Rate(pool, kernel, cols, tokens, seconds, 7);

    /// <summary>The unpack-only variant of <paramref name="kernel"/> (null: none for this kernel; the AVX-512 ones have one).</summary>
    public static TernaryKernel? UnpackOnly(TernaryKernel kernel) => kernel.Name switch
    {
        "avx512" => new UnpackOnlyKernel<ShiftSplit>(kernel.Name),
        "avx512gfni" => new UnpackOnlyKernel<BalancedSplit>(kernel.Name),
        _ => null,
    };

    /// <summary>
    /// The share of <paramref name="kernel"/>'s time spent unpacking weight codes, on a cache-resident matrix of this width
    /// and token count: the unpack-only variant's time over the full kernel's (both best-of over <paramref name="seconds"/>,
    /// on the same matrix). Null when the kernel has no unpack-only variant.
    /// </summary>
    public static double? UnpackShare(WorkerPool pool, TernaryKernel kernel, int cols, int tokens, double seconds = 0.25)
    {
        if (UnpackOnly(kernel) is not { IsSupported: true } unpack) return null;
        double full = Rate(pool, kernel, cols, tokens, seconds, 7);
        double only = Rate(pool, unpack, cols, tokens, seconds, 7);
        return Math.Min(1, full / only);
    }

    private static double Rate(WorkerPool pool, TernaryKernel kernel, int cols, int tokens, double seconds, int seed)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(cols);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(tokens);
        int rowBytes = TernaryMatrix.PadCols(cols) / 4;
        // ~128 KiB of weights per thread: inside any current core's L2, so the loop measures arithmetic and unpacking.
        int rows = Math.Max(64, 128 * 1024 * pool.ThreadCount / rowBytes / 16 * 16);
        var rng = new Random(seed);
        using var w = TernaryMatrix.Allocate(rows, cols);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) w.Set(r, c, rng.Next(3) - 1);
        using var x = new QuantizedActivations(tokens, cols) { Tokens = tokens };
        var values = new float[cols];
        for (int t = 0; t < tokens; t++)
        {
            for (int c = 0; c < cols; c++) values[c] = (float)(rng.NextDouble() * 2 - 1);
            Int8ActivationQuantizer.Quantize(values, x, t);
        }
        using var y = new Memory.NativeBuffer((long)tokens * rows * sizeof(float));
        using var matmul = new TernaryMatMul(pool);
        var prepared = matmul.Prepare(kernel, x);
        long macs = (long)rows * cols * tokens;
        // Enough products per timing that the pool's per-call cost is not what is measured.
        int batch = (int)Math.Max(1, (1L << 24) / macs);
        for (int i = 0; i < batch; i++) matmul.Run(kernel, w, prepared, (float*)y.Pointer, rows);
        double best = 0;
        long deadline = Stopwatch.GetTimestamp() + (long)(seconds * Stopwatch.Frequency);
        do
        {
            long start = Stopwatch.GetTimestamp();
            for (int i = 0; i < batch; i++) matmul.Run(kernel, w, prepared, (float*)y.Pointer, rows);
            best = Math.Max(best, macs * (double)batch / Stopwatch.GetElapsedTime(start).TotalSeconds / 1e9);
        }
        while (Stopwatch.GetTimestamp() < deadline);
        return best;
    }
}
