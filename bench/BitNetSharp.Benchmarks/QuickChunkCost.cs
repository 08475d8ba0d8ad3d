using System.Diagnostics;
using System.Runtime.InteropServices;
using BitNetSharp.Kernels;
using BitNetSharp.Kernels.FloatOps;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// `quick-chunk-cost [rounds]`: one kv head of int8 K/V (4 queries, 4096 positions of 128, rows in cache) through the
/// kernels alone, in one pass (scores, softmax, one weighted sum) against chunks of 256 as the engine splits it
/// (scores, per-chunk exponentials, a weighted sum per chunk into its own partial, the merge), and the split with one
/// piece at a time made whole: where the per-chunk cost is, without the engine around the kernels. µs a call set, best of 300.
/// </summary>
internal static unsafe class QuickChunkCost
{
    public static void Run(int rounds)
    {
        const int n = 128, positions = 4096, chunk = 256, chunks = positions / chunk, partial = 4 * n + 8;
        var rng = new Random(7);
        byte* rows = (byte*)NativeMemory.AlignedAlloc(positions * n, 64);
        byte* blocks = (byte*)NativeMemory.AlignedAlloc(positions * n, 64);
        float* kScales = (float*)NativeMemory.AlignedAlloc(positions * 4, 64);
        float* vScales = (float*)NativeMemory.AlignedAlloc(positions * 4, 64);
        float* q = (float*)NativeMemory.AlignedAlloc(4 * n * 4, 64);
        float* scores = (float*)NativeMemory.AlignedAlloc(4 * positions * 4, 64);
        float* output = (float*)NativeMemory.AlignedAlloc(4 * n * 4, 64);
        float* partials = (float*)NativeMemory.AlignedAlloc(chunks * partial * 4, 64);
        var x = new float[n];
        byte* tmp = stackalloc byte[n];
        for (int p = 0; p < positions; p++)
        {
            for (int d = 0; d < n; d++) x[d] = (float)(rng.NextDouble() * 2 - 1);
            kScales[p] = Int8Row.Encode(x, tmp);
            Int8KeyBlocks.Store(tmp, blocks, p, n);
            for (int d = 0; d < n; d++) x[d] = (float)(rng.NextDouble() * 2 - 1);
            vScales[p] = Int8Row.Encode(x, rows + (long)p * n);
        }
        for (int i = 0; i < 4 * n; i++) q[i] = (float)(rng.NextDouble() * 2 - 1);
        const float scale = 0.088f;
        void Scores() => AttentionKernels.ScoresGroup4Int8Blocks(blocks, kScales, n, q, scores, positions, 0, positions, scale);
        void Exps()
        {
            for (int c = 0; c < chunks; c++)
            {
                float* pc = partials + c * partial;
                for (int g = 0; g < 4; g++) pc[4 * n + 4 + g] = PartialSoftmax.Exponentiate(scores + g * positions + c * chunk, chunk, out pc[4 * n + g]);
            }
        }
        void Values()
        {
            for (int c = 0; c < chunks; c++)
            {
                float* pc = partials + c * partial;
                new Span<float>(pc, 4 * n).Clear();
                AttentionKernels.AccumulateGroup4<Int8Row>(rows + (long)c * chunk * n, vScales + c * chunk, n, n, scores + c * chunk, positions, pc, chunk);
            }
        }
        void Merge()
        {
            for (int g = 0; g < 4; g++) PartialSoftmax.Merge(partials + g * n, chunks, partial, 4 * n - g * n + g, 4 * n - g * n + 4 + g, n, output + g * n);
        }
        void WholeSoftmax() { for (int g = 0; g < 4; g++) Softmax.AttentionInPlace(new Span<float>(scores + g * positions, positions)); }
        void WholeValues()
        {
            new Span<float>(output, 4 * n).Clear();
            AttentionKernels.AccumulateGroup4<Int8Row>(rows, vScales, n, n, scores, positions, output, positions);
        }
        var cases = new (string Name, Action Body)[]
        {
            ("whole", () => { Scores(); WholeSoftmax(); WholeValues(); }),
            ("split", () => { Scores(); Exps(); Values(); Merge(); }),
            ("scores", Scores),
            ("chunk exps", () => { Scores(); Exps(); }),
            ("whole softmax", () => { Scores(); WholeSoftmax(); }),
            ("chunk values", Values),
            ("whole values", WholeValues),
            ("merge", Merge),
        };
        Console.WriteLine($"one kv head, 4 queries, {positions} positions x {n}, int8, in cache: µs a call set (best of 300), chunk {chunk}");
        var best = new double[cases.Length];
        Array.Fill(best, double.MaxValue);
        for (int r = 0; r < rounds; r++)
        {
            for (int i = 0; i < cases.Length; i++)
            {
                cases[i].Body();
                var sw = new Stopwatch();
                for (int k = 0; k < 300; k++)
                {
                    sw.Restart();
                    cases[i].Body();
                    best[i] = Math.Min(best[i], sw.Elapsed.TotalMicroseconds);
                }
            }
            Console.WriteLine($"round {r + 1}: " + string.Join("  ", cases.Select((c, i) => $"{c.Name} {best[i]:F1}")));
        }
    }
}
