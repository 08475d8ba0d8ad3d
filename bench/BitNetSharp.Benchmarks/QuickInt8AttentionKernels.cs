using System.Diagnostics;
using BitNetSharp.Kernels;
using BitNetSharp.Kernels.FloatOps;

namespace BitNetSharp.Benchmarks;

/// <summary>Int8 rows through the float kernels (the path before the integer kernels): same storage, other type.</summary>
internal readonly unsafe struct Int8FloatRow : IKvRow
{
    public static int ElementSize => 1;
    public static bool HasScale => true;
    public static bool AlwaysFinite => true;
    public static bool HasLanes => true;
    public static System.Runtime.Intrinsics.Vector512<float> Widen16(byte* row, int i) => Int8Row.Widen16(row, i);
    public static float Encode(ReadOnlySpan<float> x, byte* row) => Int8Row.Encode(x, row);
    public static void Decode(byte* row, float scale, Span<float> x) => Int8Row.Decode(row, scale, x);
    public static float Dot<TWidth>(float* q, byte* row, int n) where TWidth : struct, IVectorWidth => Int8Row.Dot<TWidth>(q, row, n);
    public static void Axpy<TWidth>(float w, byte* row, float* output, int n) where TWidth : struct, IVectorWidth => Int8Row.Axpy<TWidth>(w, row, output, n);
}

/// <summary>
/// The int8 KV attention kernels alone, float against integer (and the f16 group kernels beside them), in one process: a GQA group of four queries over 4096
/// cached positions of 128 values (one 2B4T kv head at depth 4096), in chunks of 256 as the engine calls them, rows hot
/// in cache (the compute side). `quick-int8-attention [rounds]`.
/// </summary>
internal static unsafe class QuickInt8AttentionKernels
{
    public static void Run(int rounds)
    {
        const int n = 128, positions = 4096, chunk = 256;
        var rng = new Random(5);
        byte* rows = (byte*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(positions * n, 64);
        float* scales = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(positions * 4, 64);
        float* q = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(4 * n * 4, 64);
        float* w = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(4 * positions * 4, 64);
        float* scores = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(4 * positions * 4, 64);
        float* output = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(4 * n * 4, 64);
        byte* blocks = (byte*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(positions * n, 64);
        byte* halves = (byte*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(positions * n * 2, 64);
        var x = new float[n];
        for (int p = 0; p < positions; p++)
        {
            for (int d = 0; d < n; d++) x[d] = (float)(rng.NextDouble() * 2 - 1);
            F16Row.Encode(x, halves + (long)p * n * 2);
            scales[p] = Int8Row.Encode(x, rows + (long)p * n);
            Int8KeyBlocks.Store(rows + (long)p * n, blocks, p, n);
        }
        for (int i = 0; i < 4 * n; i++) q[i] = (float)(rng.NextDouble() * 2 - 1);
        for (int i = 0; i < 4 * positions; i++) w[i] = (float)rng.NextDouble();
        Console.WriteLine($"int8 attention kernels, one kv head x 4 queries, {positions} positions x {n} in chunks of {chunk}, rows in cache; µs per call set (best of 200)");
        for (int r = 0; r < rounds; r++)
        {
            // The float lane kernels need 512-bit vectors (the engine takes them only then); without, their rows print NaN.
            bool lanes = AttentionKernels.HasLanePath<Int8FloatRow>(n);
            double sf = !lanes ? double.NaN : Time(() => { for (int c = 0; c < positions; c += chunk) AttentionKernels.ScoresGroup4<Int8FloatRow>(rows + (long)c * n, scales + c, n, n, q, scores + c, positions, chunk, 0.1f); });
            double si = Time(() => { for (int c = 0; c < positions; c += chunk) AttentionKernels.ScoresGroup4<Int8Row>(rows + (long)c * n, scales + c, n, n, q, scores + c, positions, chunk, 0.1f); });
            double af = !lanes ? double.NaN : Time(() => { for (int c = 0; c < positions; c += chunk) AttentionKernels.AccumulateGroup4<Int8FloatRow>(rows + (long)c * n, scales + c, n, n, w + c, positions, output, chunk); });
            double ai = Time(() => { for (int c = 0; c < positions; c += chunk) AttentionKernels.AccumulateGroup4<Int8Row>(rows + (long)c * n, scales + c, n, n, w + c, positions, output, chunk); });
            short* q16 = (short*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(4 * n * 2, 64);
            float* fac = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(64, 64);
            for (int g = 0; g < 4; g++) fac[g] = Int8Attention.QuantizeQuery(q + g * n, n, q16 + g * n);
            double sd = Time(() => Int8Attention.ScoresGroup4<WidestVector>(rows, scales, n, n, q16, fac, scores, positions, positions));
            double sb = Time(() => Int8KeyBlocks.ScoresGroup4<WidestVector>(blocks, scales, n, q16, fac, scores, positions, 0, positions));
            double ex = Time(() => { for (int c = 0; c < 4 * positions; c += chunk) PartialSoftmax.Exponentiate(scores + c, chunk, out _); });
            Console.WriteLine($"  exponentiate 4 x {positions} scores in chunks: {ex:F1} µs = {ex * 3400 / positions:F0} cycles/position");
            Console.WriteLine($"  direct int scores, one call: rows {sd:F1} µs = {sd * 3400 / positions:F0} cycles/position; keys in blocks of 16 {sb:F1} µs = {sb * 3400 / positions:F0} cycles/position ({sd / sb:F2}x)");
            // F16 as the cache dispatches it: the lane kernels with 512-bit vectors, the row-at-a-time group kernels without.
            double fs = Time(() =>
            {
                for (int c = 0; c < positions; c += chunk)
                    if (lanes) AttentionKernels.ScoresGroup4<F16FiniteRow>(halves + (long)c * n * 2, null, 2 * n, n, q, scores + c, positions, chunk, 0.1f);
                    else AttentionKernels.ScoresF16Group4(halves + (long)c * n * 2, 2 * n, n, q, scores + c, positions, chunk, 0.1f);
            });
            double fa = Time(() =>
            {
                for (int c = 0; c < positions; c += chunk)
                    if (lanes) AttentionKernels.AccumulateGroup4<F16FiniteRow>(halves + (long)c * n * 2, null, 2 * n, n, w + c, positions, output, chunk);
                    else AttentionKernels.AccumulateF16Group4(halves + (long)c * n * 2, 2 * n, n, w + c, positions, output, chunk);
            });
            Console.WriteLine($"  f16 rows: scores {fs:F1} µs = {fs * 3400 / positions:F0} cycles/position, V sum {fa:F1} µs = {fa * 3400 / positions:F0} cycles/position");
            Console.WriteLine($"round {r + 1}: scores float {sf,7:F1}  int {si,7:F1}  ({sf / si:F2}x)   V sum float {af,7:F1}  int {ai,7:F1}  ({af / ai:F2}x)   cycles/position at 3.4 GHz: scores {sf * 3400 / positions:F0} -> {si * 3400 / positions:F0}, V {af * 3400 / positions:F0} -> {ai * 3400 / positions:F0}");
        }
    }

    private static double Time(Action a)
    {
        a();
        double best = double.MaxValue;
        var sw = new Stopwatch();
        for (int i = 0; i < 200; i++)
        {
            sw.Restart();
            a();
            best = Math.Min(best, sw.Elapsed.TotalMicroseconds);
        }
        return best;
    }
}
