using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using BitNetSharp.Kernels;
using BitNetSharp.Quantization;
using K = BitNetSharp.Kernels.Avx512TernaryKernel.Dot512<BitNetSharp.Kernels.BalancedSplit>;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// Experiment kept as a `quick-decode` row: one token against eight rows from the eight eighths of a matrix (eight weight
/// streams instead of the production four). On the Zen 5 EPYC (one thread, `quick-decode 16 5 0.4`) it read 23.1 GB/s
/// against 31.8 for four streams, and a plain eight-stream sum 28.5 against 32.9 for four: not used.
/// </summary>
public static unsafe class QuickEightStreams
{
    public static void Run(TernaryMatrix w, ActivationRows x, float[] y)
    {
        int blocks = w.PaddedCols / TernaryMatrix.BlockSize;
        if ((blocks & 1) != 0) throw new InvalidOperationException("even blocks only");
        int eighth = w.Rows / 8;
        long streamBytes = eighth * w.RowBytes;
        sbyte* q = x.Row(0);
        int sum = x.Sums[0];
        float scale = x.Scales[0];
        int* d = stackalloc int[8];
        var sums = Vector256.Create(sum);
        var act = Vector256.Create(scale);
        fixed (float* scales = w.RowScales)
        fixed (float* py = y)
        {
            for (int r = 0; r < eighth; r++)
            {
                DotRows8Streams(w.Row(r), streamBytes, q, blocks, d);
                var s = Vector256.Create(scales[r], scales[r + eighth], scales[r + 2 * eighth], scales[r + 3 * eighth], scales[r + 4 * eighth], scales[r + 5 * eighth], scales[r + 6 * eighth], scales[r + 7 * eighth]);
                var o = Vector256.ConvertToSingle(Vector256.Load(d) - sums) / act * s;
                for (int k = 0; k < 8; k++) py[r + k * eighth] = o.GetElement(k);
            }
        }
        if (8 * eighth < w.Rows)
        {
            fixed (float* py = y) s_kernel.MatMul(w, x, py, w.Rows, 8 * eighth, w.Rows);
        }
    }

    private static readonly TernaryKernel s_kernel = new Avx512GfniTernaryKernel();

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    public static void DotRows8Streams(byte* w, long streamBytes, sbyte* q, int blocks, int* result)
    {
        var m3 = Vector512.Create((byte)3);
        var m12 = Vector512.Create((byte)12);
        byte* w0 = w, w1 = w + streamBytes, w2 = w1 + streamBytes, w3 = w2 + streamBytes;
        byte* w4 = w3 + streamBytes, w5 = w4 + streamBytes, w6 = w5 + streamBytes, w7 = w6 + streamBytes;
        Vector512<int> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        long end = (long)(blocks >> 1) * 64;
        for (long o = 0; o < end;)
        {
            long chunkEnd = Math.Min(end, o + 8 * 64);
            Vector512<short> s10 = default, s40 = default, s11 = default, s41 = default, s12 = default, s42 = default, s13 = default, s43 = default;
            Vector512<short> s14 = default, s44 = default, s15 = default, s45 = default, s16 = default, s46 = default, s17 = default, s47 = default;
            for (; o < chunkEnd; o += 64)
            {
                sbyte* qp = q + 4 * o;
                var q0 = Vector512.Load(qp); var q1 = Vector512.Load(qp + 64); var q2 = Vector512.Load(qp + 128); var q3 = Vector512.Load(qp + 192);
                K.ScaledStep(Vector512.Load(w0 + o), q0, q1, q2, q3, m3, m12, ref s10, ref s40);
                K.ScaledStep(Vector512.Load(w1 + o), q0, q1, q2, q3, m3, m12, ref s11, ref s41);
                K.ScaledStep(Vector512.Load(w2 + o), q0, q1, q2, q3, m3, m12, ref s12, ref s42);
                K.ScaledStep(Vector512.Load(w3 + o), q0, q1, q2, q3, m3, m12, ref s13, ref s43);
                K.ScaledStep(Vector512.Load(w4 + o), q0, q1, q2, q3, m3, m12, ref s14, ref s44);
                K.ScaledStep(Vector512.Load(w5 + o), q0, q1, q2, q3, m3, m12, ref s15, ref s45);
                K.ScaledStep(Vector512.Load(w6 + o), q0, q1, q2, q3, m3, m12, ref s16, ref s46);
                K.ScaledStep(Vector512.Load(w7 + o), q0, q1, q2, q3, m3, m12, ref s17, ref s47);
            }
            a0 = Avx512F.Add(a0, K.Widen(s10, s40)); a1 = Avx512F.Add(a1, K.Widen(s11, s41));
            a2 = Avx512F.Add(a2, K.Widen(s12, s42)); a3 = Avx512F.Add(a3, K.Widen(s13, s43));
            a4 = Avx512F.Add(a4, K.Widen(s14, s44)); a5 = Avx512F.Add(a5, K.Widen(s15, s45));
            a6 = Avx512F.Add(a6, K.Widen(s16, s46)); a7 = Avx512F.Add(a7, K.Widen(s17, s47));
        }
        Avx2.ShiftRightArithmetic(K.LaneSums(a0, a1, a2, a3, a4, a5, a6, a7), 2).Store(result);
    }

    public static long s_sink;

    public static void EightStreamSum(byte* p, long n)
    {
        long e = n / 8 / 64 * 64;
        Vector512<long> a0 = default, a1 = default, a2 = default, a3 = default;
        for (long i = 0; i < e; i += 64)
        {
            a0 += Vector512.Load((long*)(p + i)) + Vector512.Load((long*)(p + 4 * e + i));
            a1 += Vector512.Load((long*)(p + e + i)) + Vector512.Load((long*)(p + 5 * e + i));
            a2 += Vector512.Load((long*)(p + 2 * e + i)) + Vector512.Load((long*)(p + 6 * e + i));
            a3 += Vector512.Load((long*)(p + 3 * e + i)) + Vector512.Load((long*)(p + 7 * e + i));
        }
        for (long i = 8 * e; i < n; i++) a0 += Vector512.Create((long)p[i]);
        s_sink += Vector512.Sum(a0 + a1 + a2 + a3);
    }
}
