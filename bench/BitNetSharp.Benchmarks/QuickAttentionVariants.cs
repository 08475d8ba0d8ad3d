using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using BitNetSharp.Kernels;
using BitNetSharp.Kernels.FloatOps;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// `quick-attn-variants [rounds]`: int8 attention kernel variants tried against the engine's, one 2B4T kv head (four
/// queries, 4096 positions × 128), hot in cache and from memory (64 sets rotated), each checked bit for bit first:
/// scores two adjacent blocks a step (each broadcast query pair serves 32 positions) and four blocks from the four
/// quarters (four streams); the weighted sum over V stored as position pairs interleaved by dimension (no unpack, one
/// sign extension per 32 values). EXP_SPLIT=1 instead times the softmax pieces (maximum, exponentials and sum, bare
/// exponential, the merge of 17 chunk partials) per position of four heads. Kernels kept in the engine are in Kernels/; these stayed here because the
/// engine-level measurement did not support them (see bench/results/attention-value-stream-amd-epyc-zen5-2core.md).
/// </summary>
internal static unsafe class QuickAttentionVariants
{
    private const int N = 128, Positions = 4096, Sets = 64, Chunk = 256, Rows = 16;

    public static void Run(int rounds)
    {
        var rng = new Random(7);
        long bytes = (long)Positions * N;
        var blocks = new byte*[Sets];
        var values = new byte*[Sets];
        var pairs = new byte*[Sets];
        var kScales = new float*[Sets];
        var vScales = new float*[Sets];
        var x = new float[N];
        var row = stackalloc byte[N];
        for (int s = 0; s < Sets; s++)
        {
            blocks[s] = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
            values[s] = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
            pairs[s] = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
            kScales[s] = (float*)NativeMemory.AlignedAlloc(Positions * 4, 64);
            vScales[s] = (float*)NativeMemory.AlignedAlloc(Positions * 4, 64);
            for (int p = 0; p < Positions; p++)
            {
                for (int d = 0; d < N; d++) x[d] = (float)(rng.NextDouble() * 2 - 1);
                kScales[s][p] = Int8Row.Encode(x, row);
                Int8KeyBlocks.Store(row, blocks[s], p, N);
                for (int d = 0; d < N; d++) x[d] = (float)(rng.NextDouble() * 2 - 1);
                vScales[s][p] = Int8Row.Encode(x, values[s] + (long)p * N);
            }
            for (int p = 0; p < Positions; p += 2)
                for (int d = 0; d < N; d++)
                {
                    pairs[s][(long)p * N + 2 * d] = values[s][(long)p * N + d];
                    pairs[s][(long)p * N + 2 * d + 1] = values[s][(long)(p + 1) * N + d];
                }
        }
        float* q = (float*)NativeMemory.AlignedAlloc(4 * N * 4, 64);
        short* q16 = (short*)NativeMemory.AlignedAlloc(4 * N * 2, 64);
        float* fac = (float*)NativeMemory.AlignedAlloc(64, 64);
        float* scores = (float*)NativeMemory.AlignedAlloc(4 * Positions * 4, 64);
        float* scores2 = (float*)NativeMemory.AlignedAlloc(4 * Positions * 4, 64);
        float* output = (float*)NativeMemory.AlignedAlloc(4 * N * 4, 64);
        float* output2 = (float*)NativeMemory.AlignedAlloc(4 * N * 4, 64);
        short* u16 = (short*)NativeMemory.AlignedAlloc(4 * (Chunk + 2) * 2, 64);
        float* us = (float*)NativeMemory.AlignedAlloc(64, 64);
        for (int i = 0; i < 4 * N; i++) q[i] = (float)(rng.NextDouble() * 2 - 1);
        for (int g = 0; g < 4; g++) fac[g] = Int8Attention.QuantizeQuery(q + g * N, N, q16 + g * N);
        for (int i = 0; i < 4 * Positions; i++) scores[i] = (float)rng.NextDouble();

        // Check equality first.
        Int8KeyBlocks.ScoresGroup4<WidestVector>(blocks[0], kScales[0], N, q16, fac, scores, Positions, 0, Positions);
        Scores2Blocks(blocks[0], kScales[0], N, q16, fac, scores2, Positions, 0, Positions);
        for (int i = 0; i < 4 * Positions; i++) if (scores[i] != scores2[i]) throw new Exception($"scores differ at {i}");
        new Span<float>(scores2, 4 * Positions).Clear();
        Scores4Streams(blocks[0], kScales[0], N, q16, fac, scores2, Positions, Positions);
        for (int i = 0; i < 4 * Positions; i++) if (scores[i] != scores2[i]) throw new Exception($"4-stream scores differ at {i}");
        for (int i = 0; i < 4 * Positions; i++) scores[i] = (float)rng.NextDouble();
        new Span<float>(output, 4 * N).Clear(); new Span<float>(output2, 4 * N).Clear();
        V0(values[0], vScales[0], scores, output, u16, us);
        VPairs(pairs[0], vScales[0], scores, output2, u16, us);
        for (int i = 0; i < 4 * N; i++) if (output[i] != output2[i]) throw new Exception($"V differs at {i}: {output[i]} {output2[i]}");

        Console.WriteLine("variants equal the engine's kernels bit for bit");
        Console.WriteLine($"ns per position (one kv head, 4 queries, {Positions} x {N}): hot | cold ({Sets} sets, {Sets * 2 * bytes >> 20} MiB)");
        if (Environment.GetEnvironmentVariable("EXP_SPLIT") == "1")
        {
            // Each piece over one chunk of four heads, 4000 calls a timing (the data stays finite: exponentials of
            // exponentials), the best of 9 per round.
            float* sc = (float*)NativeMemory.AlignedAlloc(4 * Chunk * 4, 64);
            float* mx = stackalloc float[8];
            for (int i = 0; i < 4 * Chunk; i++) sc[i] = -(i % 37) * 0.25f + (i % 5) * 0.01f;
            for (int g = 0; g < 4; g++) mx[g + 4] = PartialSoftmax.Exponentiate(sc + g * Chunk, Chunk, out mx[g]);
            const int Calls = 4000, MergeChunks = 17;
            float* merge = (float*)NativeMemory.AlignedAlloc((nuint)(MergeChunks * 4 * (N + 2) * 4), 64);
            float* mergeOut = (float*)NativeMemory.AlignedAlloc(4 * N * 4, 64);
            for (int i = 0; i < MergeChunks * 4 * (N + 2); i++) merge[i] = (i % 29) * 0.03f + 0.5f;
            float sink = 0;
            double Per(Action body)
            {
                double best = double.MaxValue;
                for (int k = 0; k < 9; k++)
                {
                    long t0 = Stopwatch.GetTimestamp();
                    body();
                    best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalNanoseconds / Calls / Chunk);
                }
                return best;
            }
            for (int r = 0; r < rounds; r++)
            {
                double tm = Per(() => { for (int c = 0; c < Calls; c++) for (int g = 0; g < 4; g++) sink += ArgMax.Max<WidestVector>(sc + g * Chunk, Chunk); });
                double te = Per(() => { for (int c = 0; c < Calls; c++) for (int g = 0; g < 4; g++) sink += (float)Softmax.ExpAndSum<WidestVector>(sc + g * Chunk, Chunk, 0.5f); });
                double tx = Per(() => { for (int c = 0; c < Calls; c++) for (int g = 0; g < 4; g++) sink += PartialSoftmax.Exponentiate(sc + g * Chunk, Chunk, out _); });
                double tf = Per(() => { for (int c = 0; c < Calls; c++) for (int g = 0; g < 4; g++) { var v = Vector512<float>.Zero; for (int i = 0; i < Chunk; i += 16) v += FastExp.Exp(Vector512.Load(sc + g * Chunk + i)); sink += v[0]; } });
                double tg = Per(() => { for (int c = 0; c < Calls; c++) for (int g = 0; g < 4; g++) PartialSoftmax.Merge(merge + g * N, MergeChunks, 4 * (N + 2), 4 * N - g * N + g, 4 * N - g * N + 4 + g, N, mergeOut + g * N); });
                Console.WriteLine($"ns per position (4 heads, chunk {Chunk}): max {tm:F2}  expAndSum {te:F2}  exponentiate {tx:F2}  bare exp {tf:F2}  merge of {MergeChunks} chunks {tg:F2}  ({sink + mx[4] + mergeOut[5]})");
            }
            return;
        }
        for (int r = 0; r < rounds; r++)
        {
            var s0 = Both(s => Int8KeyBlocks.ScoresGroup4<WidestVector>(blocks[s], kScales[s], N, q16, fac, scores2, Positions, 0, Positions));
            var s2 = Both(s => Scores2Blocks(blocks[s], kScales[s], N, q16, fac, scores2, Positions, 0, Positions));
            var s4 = Both(s => Scores4Streams(blocks[s], kScales[s], N, q16, fac, scores2, Positions, Positions));
            var v0 = Both(s => V0(values[s], vScales[s], scores, output, u16, us));
            var vp = Both(s => VPairs(pairs[s], vScales[s], scores, output, u16, us));
            var e0 = Both(s => { for (int c = 0; c < Positions; c += Chunk) for (int g = 0; g < 4; g++) { new Span<float>(scores2 + g * Positions + c, Chunk).Fill(-1f); PartialSoftmax.Exponentiate(scores2 + g * Positions + c, Chunk, out _); } });
            var f0 = Both(s => { for (int c = 0; c < Positions; c += Chunk) for (int g = 0; g < 4; g++) new Span<float>(scores2 + g * Positions + c, Chunk).Fill(-1f); });
            Console.WriteLine($"round {r + 1}: scores {s0.Hot:F2}|{s0.Cold:F2}  2-block {s2.Hot:F2}|{s2.Cold:F2}  4-stream {s4.Hot:F2}|{s4.Cold:F2}   V {v0.Hot:F2}|{v0.Cold:F2}  pairs {vp.Hot:F2}|{vp.Cold:F2}   exp+fill {e0.Hot:F2} fill {f0.Hot:F2}");
        }
    }

    private static void V0(byte* values, float* vScales, float* weights, float* output, short* u16, float* us)
    {
        for (int c = 0; c < Positions; c += Chunk) Int8Attention.AccumulateGroup4<WidestVector>(values + (long)c * N, vScales + c, N, N, weights + c, Positions, output, Chunk);
    }

    private static void VPairs(byte* pairs, float* vScales, float* weights, float* output, short* u16, float* us)
    {
        for (int c = 0; c < Positions; c += Chunk)
        {
            Int8Attention.QuantizeWeights4(weights + c, Positions, vScales + c, Chunk, u16, Chunk + 2, us);
            AccumulatePairs4(pairs + (long)c * N, N, u16, Chunk + 2, Chunk, us, output);
        }
    }

    /// <summary>Rows stored as position pairs interleaved by dimension (v_p,d, v_p+1,d): no unpack, natural dimension order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void AccumulatePairs4(byte* pairs, int n, short* u16, int uStride, int count, float* us, float* output)
    {
        short* ub = u16 + uStride, uc = u16 + 2 * uStride, ud = u16 + 3 * uStride;
        for (int d = 0; d < n; d += 64)
        {
            Vector512<int> a0 = default, a1 = default, a2 = default, a3 = default;
            Vector512<int> b0 = default, b1 = default, b2 = default, b3 = default;
            Vector512<int> c0 = default, c1 = default, c2 = default, c3 = default;
            Vector512<int> d0 = default, d1 = default, d2 = default, d3 = default;
            sbyte* pr = (sbyte*)pairs + 2 * d;
            for (int p = 0; p < count; p += 2, pr += 2 * n)
            {
                if (d == 0) AttentionKernels.Prefetch((byte*)pr + AttentionKernels.PrefetchBytes, 2 * n);
                var x0 = Avx512BW.ConvertToVector512Int16(Vector256.Load(pr));
                var x1 = Avx512BW.ConvertToVector512Int16(Vector256.Load(pr + 32));
                var x2 = Avx512BW.ConvertToVector512Int16(Vector256.Load(pr + 64));
                var x3 = Avx512BW.ConvertToVector512Int16(Vector256.Load(pr + 96));
                var u = Vector512.Create(*(int*)(u16 + p)).AsInt16();
                a0 += Avx512BW.MultiplyAddAdjacent(x0, u); a1 += Avx512BW.MultiplyAddAdjacent(x1, u);
                a2 += Avx512BW.MultiplyAddAdjacent(x2, u); a3 += Avx512BW.MultiplyAddAdjacent(x3, u);
                u = Vector512.Create(*(int*)(ub + p)).AsInt16();
                b0 += Avx512BW.MultiplyAddAdjacent(x0, u); b1 += Avx512BW.MultiplyAddAdjacent(x1, u);
                b2 += Avx512BW.MultiplyAddAdjacent(x2, u); b3 += Avx512BW.MultiplyAddAdjacent(x3, u);
                u = Vector512.Create(*(int*)(uc + p)).AsInt16();
                c0 += Avx512BW.MultiplyAddAdjacent(x0, u); c1 += Avx512BW.MultiplyAddAdjacent(x1, u);
                c2 += Avx512BW.MultiplyAddAdjacent(x2, u); c3 += Avx512BW.MultiplyAddAdjacent(x3, u);
                u = Vector512.Create(*(int*)(ud + p)).AsInt16();
                d0 += Avx512BW.MultiplyAddAdjacent(x0, u); d1 += Avx512BW.MultiplyAddAdjacent(x1, u);
                d2 += Avx512BW.MultiplyAddAdjacent(x2, u); d3 += Avx512BW.MultiplyAddAdjacent(x3, u);
            }
            Store(a0, a1, a2, a3, us[0], output + d);
            Store(b0, b1, b2, b3, us[1], output + n + d);
            Store(c0, c1, c2, c3, us[2], output + 2 * n + d);
            Store(d0, d1, d2, d3, us[3], output + 3 * n + d);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(Vector512<int> a, Vector512<int> b, Vector512<int> c, Vector512<int> e, float scale, float* o)
    {
        var f = Vector512.Create(scale);
        (Vector512.Load(o) + Vector512.ConvertToSingle(a) * f).Store(o);
        (Vector512.Load(o + 16) + Vector512.ConvertToSingle(b) * f).Store(o + 16);
        (Vector512.Load(o + 32) + Vector512.ConvertToSingle(c) * f).Store(o + 32);
        (Vector512.Load(o + 48) + Vector512.ConvertToSingle(e) * f).Store(o + 48);
    }

    /// <summary>Int8KeyBlocks.ScoresGroup4 with two blocks per iteration: each broadcast query pair serves 32 positions.</summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Scores2Blocks(byte* blocks, float* rowScales, int n, short* q16, float* factors, float* scores, int scoresStride, int start, int count)
    {
        int* sums = stackalloc int[8 * Rows];
        int* q0 = (int*)q16, q1 = (int*)(q16 + n), q2 = (int*)(q16 + 2 * n), q3 = (int*)(q16 + 3 * n);
        int first = start / Rows * Rows;
        AttentionKernels.PrefetchStart(blocks + (long)first * n, n, count);
        int b0 = first;
        for (; b0 + 2 * Rows <= start + count; b0 += 2 * Rows)
        {
            sbyte* k = (sbyte*)blocks + (long)b0 * n;
            long ahead = AttentionKernels.PrefetchBytes;
            long next = Rows * n;
            AttentionKernels.PrefetchLine((byte*)(rowScales + b0 + 8 * Rows));
            AttentionKernels.PrefetchLine((byte*)(rowScales + b0 + 9 * Rows));
            Vector512<int> a0 = default, a1 = default, a2 = default, a3 = default, c0 = default, c1 = default, c2 = default, c3 = default;
            for (int j = 0; j < n / 2; j++, k += 2 * Rows)
            {
                if ((j & 1) == 0) { AttentionKernels.PrefetchLine((byte*)k + ahead); AttentionKernels.PrefetchLine((byte*)k + next + ahead); }
                var k0 = Avx512BW.ConvertToVector512Int16(Vector256.Load(k));
                var k1 = Avx512BW.ConvertToVector512Int16(Vector256.Load(k + next));
                var x = Vector512.Create(q0[j]).AsInt16();
                a0 += Avx512BW.MultiplyAddAdjacent(k0, x); c0 += Avx512BW.MultiplyAddAdjacent(k1, x);
                x = Vector512.Create(q1[j]).AsInt16();
                a1 += Avx512BW.MultiplyAddAdjacent(k0, x); c1 += Avx512BW.MultiplyAddAdjacent(k1, x);
                x = Vector512.Create(q2[j]).AsInt16();
                a2 += Avx512BW.MultiplyAddAdjacent(k0, x); c2 += Avx512BW.MultiplyAddAdjacent(k1, x);
                x = Vector512.Create(q3[j]).AsInt16();
                a3 += Avx512BW.MultiplyAddAdjacent(k0, x); c3 += Avx512BW.MultiplyAddAdjacent(k1, x);
            }
            Finish(a0, rowScales + b0, factors[0], scores + (b0 - start));
            Finish(a1, rowScales + b0, factors[1], scores + scoresStride + (b0 - start));
            Finish(a2, rowScales + b0, factors[2], scores + 2 * scoresStride + (b0 - start));
            Finish(a3, rowScales + b0, factors[3], scores + 3 * scoresStride + (b0 - start));
            Finish(c0, rowScales + b0 + Rows, factors[0], scores + (b0 + Rows - start));
            Finish(c1, rowScales + b0 + Rows, factors[1], scores + scoresStride + (b0 + Rows - start));
            Finish(c2, rowScales + b0 + Rows, factors[2], scores + 2 * scoresStride + (b0 + Rows - start));
            Finish(c3, rowScales + b0 + Rows, factors[3], scores + 3 * scoresStride + (b0 + Rows - start));
        }
        if (b0 < start + count) Int8KeyBlocks.ScoresGroup4<WidestVector>(blocks, rowScales, n, q16, factors, scores + (b0 - start), scoresStride, b0, start + count - b0);
    }

    /// <summary>Four blocks per iteration, one from each quarter of the positions (four far-apart streams).</summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Scores4Streams(byte* blocks, float* rowScales, int n, short* q16, float* factors, float* scores, int scoresStride, int count)
    {
        int* q0 = (int*)q16, q1 = (int*)(q16 + n), q2 = (int*)(q16 + 2 * n), q3 = (int*)(q16 + 3 * n);
        int nb = count / Rows, qb = nb / 4;
        long quarter = (long)qb * Rows * n;
        for (int s4 = 0; s4 < 4; s4++) AttentionKernels.PrefetchStart(blocks + s4 * quarter, n, Math.Min(count, qb * Rows));
        for (int bi = 0; bi < qb; bi++)
        {
            sbyte* k = (sbyte*)blocks + (long)bi * Rows * n;
            long ahead = AttentionKernels.PrefetchBytes;
            Vector512<int> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
            Vector512<int> c0 = default, c1 = default, c2 = default, c3 = default, d0 = default, d1 = default, d2 = default, d3 = default;
            for (int j = 0; j < n / 2; j++, k += 2 * Rows)
            {
                if ((j & 1) == 0)
                {
                    AttentionKernels.PrefetchLine((byte*)k + ahead); AttentionKernels.PrefetchLine((byte*)k + quarter + ahead);
                    AttentionKernels.PrefetchLine((byte*)k + 2 * quarter + ahead); AttentionKernels.PrefetchLine((byte*)k + 3 * quarter + ahead);
                }
                var k0 = Avx512BW.ConvertToVector512Int16(Vector256.Load(k));
                var k1 = Avx512BW.ConvertToVector512Int16(Vector256.Load(k + quarter));
                var k2 = Avx512BW.ConvertToVector512Int16(Vector256.Load(k + 2 * quarter));
                var k3 = Avx512BW.ConvertToVector512Int16(Vector256.Load(k + 3 * quarter));
                var x = Vector512.Create(q0[j]).AsInt16();
                a0 += Avx512BW.MultiplyAddAdjacent(k0, x); b0 += Avx512BW.MultiplyAddAdjacent(k1, x); c0 += Avx512BW.MultiplyAddAdjacent(k2, x); d0 += Avx512BW.MultiplyAddAdjacent(k3, x);
                x = Vector512.Create(q1[j]).AsInt16();
                a1 += Avx512BW.MultiplyAddAdjacent(k0, x); b1 += Avx512BW.MultiplyAddAdjacent(k1, x); c1 += Avx512BW.MultiplyAddAdjacent(k2, x); d1 += Avx512BW.MultiplyAddAdjacent(k3, x);
                x = Vector512.Create(q2[j]).AsInt16();
                a2 += Avx512BW.MultiplyAddAdjacent(k0, x); b2 += Avx512BW.MultiplyAddAdjacent(k1, x); c2 += Avx512BW.MultiplyAddAdjacent(k2, x); d2 += Avx512BW.MultiplyAddAdjacent(k3, x);
                x = Vector512.Create(q3[j]).AsInt16();
                a3 += Avx512BW.MultiplyAddAdjacent(k0, x); b3 += Avx512BW.MultiplyAddAdjacent(k1, x); c3 += Avx512BW.MultiplyAddAdjacent(k2, x); d3 += Avx512BW.MultiplyAddAdjacent(k3, x);
            }
            int p0 = bi * Rows, qp = qb * Rows;
            Finish(a0, rowScales + p0, factors[0], scores + p0); Finish(a1, rowScales + p0, factors[1], scores + scoresStride + p0);
            Finish(a2, rowScales + p0, factors[2], scores + 2 * scoresStride + p0); Finish(a3, rowScales + p0, factors[3], scores + 3 * scoresStride + p0);
            p0 += qp;
            Finish(b0, rowScales + p0, factors[0], scores + p0); Finish(b1, rowScales + p0, factors[1], scores + scoresStride + p0);
            Finish(b2, rowScales + p0, factors[2], scores + 2 * scoresStride + p0); Finish(b3, rowScales + p0, factors[3], scores + 3 * scoresStride + p0);
            p0 += qp;
            Finish(c0, rowScales + p0, factors[0], scores + p0); Finish(c1, rowScales + p0, factors[1], scores + scoresStride + p0);
            Finish(c2, rowScales + p0, factors[2], scores + 2 * scoresStride + p0); Finish(c3, rowScales + p0, factors[3], scores + 3 * scoresStride + p0);
            p0 += qp;
            Finish(d0, rowScales + p0, factors[0], scores + p0); Finish(d1, rowScales + p0, factors[1], scores + scoresStride + p0);
            Finish(d2, rowScales + p0, factors[2], scores + 2 * scoresStride + p0); Finish(d3, rowScales + p0, factors[3], scores + 3 * scoresStride + p0);
        }
        int done = 4 * qb * Rows;
        if (done < count) Int8KeyBlocks.ScoresGroup4<WidestVector>(blocks, rowScales, n, q16, factors, scores + done, scoresStride, done, count - done);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Finish(Vector512<int> sums, float* rowScales, float factor, float* scores) =>
        (Vector512.ConvertToSingle(sums) * Vector512.Load(rowScales) * Vector512.Create(factor)).Store(scores);

    private static long _sink;

    private static (double Hot, double Cold) Both(Action<int> run)
    {
        var sw = new Stopwatch();
        for (int s = 0; s < Sets; s++) run(s);
        double hot = double.MaxValue, cold = double.MaxValue;
        for (int i = 0; i < 50; i++)
        {
            sw.Restart();
            run(0);
            hot = Math.Min(hot, sw.Elapsed.TotalNanoseconds / Positions);
        }
        for (int round = 0; round < 4; round++)
        {
            sw.Restart();
            for (int s = 0; s < Sets; s++) run(s);
            cold = Math.Min(cold, sw.Elapsed.TotalNanoseconds / Positions / Sets);
        }
        _sink++;
        return (hot, cold);
    }
}
