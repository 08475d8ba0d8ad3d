using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using BitNetSharp.Kernels.FloatOps;

namespace BitNetSharp.Kernels;

/// <summary>
/// Int8 keys stored in blocks of <see cref="Rows"/> positions, transposed by dimension pairs: within a block, pair j
/// (dimensions 2j, 2j+1) of the sixteen positions is 32 contiguous bytes, position-major ([n/2 pairs][16 positions][2]).
/// A block takes the same 16·n bytes as sixteen rows.
/// <para>
/// Why: scoring one position against a row-major key leaves its products spread over the 16 lanes of a register, and
/// summing those lanes cost about a third of the score kernel (~9 of 29 cycles a position on Zen 4). Here one
/// <c>vpmaddwd</c> of a block's pair j (sign-extended to int16) with the broadcast query pair (q_2j, q_2j+1) adds the
/// pair's products of sixteen positions into sixteen lanes, one lane per position: no horizontal sum at all.
/// </para>
/// The sums are the same exact int32 sums as <see cref="Int8Attention.Scores{TWidth}"/> forms on rows, followed by the
/// same float operations, so scores are bit-identical to the row layout's, at every width.
/// </summary>
internal static unsafe class Int8KeyBlocks
{
    /// <summary>Positions per block.</summary>
    public const int Rows = 16;

    /// <summary>Whether keys of <paramref name="n"/> values use blocks (whole 32-value groups, within the integer kernels' range).</summary>
    public static bool Serves(int n) => n % 32 == 0 && Int8Attention.Serves(n);

    /// <summary>Positions ahead whose row scales the score loop requests (a block's sixteen scales are one cache line).</summary>
    private const int ScaleAhead = 8 * Rows;

    /// <summary>Positions to allocate for <paramref name="positions"/>: whole blocks.</summary>
    public static int RoundUp(int positions) => (positions + Rows - 1) / Rows * Rows;

    /// <summary>Byte offset of position <paramref name="position"/>'s block from the head's first block.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long BlockOffset(int position, int n) => (long)(position / Rows) * Rows * n;

    /// <summary>Stores one encoded row (n bytes) as position <paramref name="position"/> of the head whose blocks start at <paramref name="blocks"/>.</summary>
    public static void Store(byte* row, byte* blocks, int position, int n)
    {
        byte* b = blocks + BlockOffset(position, n) + 2 * (position % Rows);
        for (int j = 0; j < n / 2; j++) *(short*)(b + j * 2 * Rows) = *(short*)(row + 2 * j);
    }

    /// <summary>Gathers position <paramref name="position"/> back into one row of n bytes.</summary>
    public static void Load(byte* blocks, int position, int n, byte* row)
    {
        byte* b = blocks + BlockOffset(position, n) + 2 * (position % Rows);
        for (int j = 0; j < n / 2; j++) *(short*)(row + 2 * j) = *(short*)(b + j * 2 * Rows);
    }

    /// <summary>
    /// scores[i] = (float)(q16 · k_(start+i)) · rowScales[start+i] · factor for i in [0, count): one query against the
    /// head whose blocks start at <paramref name="blocks"/> (rowScales indexed by position from the head's first).
    /// Reads whole blocks: the allocation must hold every block that [start, start + count) touches.
    /// </summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Scores<TWidth>(byte* blocks, float* rowScales, int n, short* q16, float* scores, int start, int count, float factor)
        where TWidth : struct, IVectorWidth
    {
        if (count <= 0) return;
        int* sums = stackalloc int[Rows];
        for (int b0 = start / Rows * Rows; b0 < start + count; b0 += Rows)
        {
            byte* block = blocks + BlockOffset(b0, n);
            BlockSums<TWidth>(block, n, q16, sums);
            Finish(sums, rowScales, factor, scores, start, count, b0);
        }
    }

    /// <summary>
    /// The scores of a GQA group of four queries (q16 + g·n, factors[g]) to scores + g·scoresStride: equal to four
    /// <see cref="Scores{TWidth}"/> calls, each block widened once for the four.
    /// </summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void ScoresGroup4<TWidth>(byte* blocks, float* rowScales, int n, short* q16, float* factors, float* scores, int scoresStride, int start, int count)
        where TWidth : struct, IVectorWidth
    {
        if (!(TWidth.Bits >= 512 && Avx512BW.IsSupported))
        {
            if (TWidth.Bits >= 256 && Avx2.IsSupported) ScoresGroup4Avx2(blocks, rowScales, n, q16, factors, scores, scoresStride, start, count);
            else for (int g = 0; g < 4; g++) Scores<TWidth>(blocks, rowScales, n, q16 + g * n, scores + g * scoresStride, start, count, factors[g]);
            return;
        }
        if (count <= 0) return;
        int* sums = stackalloc int[4 * Rows];
        int* q0 = (int*)q16, q1 = (int*)(q16 + n), q2 = (int*)(q16 + 2 * n), q3 = (int*)(q16 + 3 * n); // query pairs as int32
        int first = start / Rows * Rows;
        AttentionKernels.PrefetchStart(blocks + BlockOffset(first, n), n, RoundUp(count + start - first));
        for (int b0 = first; b0 < start + count; b0 += Rows)
        {
            byte* block = blocks + BlockOffset(b0, n);
            long ahead = AttentionKernels.PrefetchBytes; // one hint per 64 bytes read, in the loop
            AttentionKernels.PrefetchLine((byte*)(rowScales + b0 + ScaleAhead)); // a block's row scales are one line
            Vector512<int> a0 = default, a1 = default, a2 = default, a3 = default, b0v = default, b1 = default, b2 = default, b3 = default;
            int* p0 = q0, p1 = q1, p2 = q2, p3 = q3;
            for (sbyte* k = (sbyte*)block, end = k + Rows * n; k < end; k += 4 * Rows, p0 += 2, p1 += 2, p2 += 2, p3 += 2)
            {
                AttentionKernels.PrefetchLine((byte*)k + ahead);
                var k0 = Avx512BW.ConvertToVector512Int16(Vector256.Load(k));
                var k1 = Avx512BW.ConvertToVector512Int16(Vector256.Load(k + 2 * Rows));
                a0 += Avx512BW.MultiplyAddAdjacent(k0, Vector512.Create(p0[0]).AsInt16());
                b0v += Avx512BW.MultiplyAddAdjacent(k1, Vector512.Create(p0[1]).AsInt16());
                a1 += Avx512BW.MultiplyAddAdjacent(k0, Vector512.Create(p1[0]).AsInt16());
                b1 += Avx512BW.MultiplyAddAdjacent(k1, Vector512.Create(p1[1]).AsInt16());
                a2 += Avx512BW.MultiplyAddAdjacent(k0, Vector512.Create(p2[0]).AsInt16());
                b2 += Avx512BW.MultiplyAddAdjacent(k1, Vector512.Create(p2[1]).AsInt16());
                a3 += Avx512BW.MultiplyAddAdjacent(k0, Vector512.Create(p3[0]).AsInt16());
                b3 += Avx512BW.MultiplyAddAdjacent(k1, Vector512.Create(p3[1]).AsInt16());
            }
            (a0 + b0v).Store(sums);
            (a1 + b1).Store(sums + Rows);
            (a2 + b2).Store(sums + 2 * Rows);
            (a3 + b3).Store(sums + 3 * Rows);
            for (int g = 0; g < 4; g++) Finish(sums + g * Rows, rowScales, factors[g], scores + g * scoresStride, start, count, b0);
        }
    }

    /// <summary>
    /// <see cref="ScoresGroup4{TWidth}"/> in 256-bit vectors (AVX2 without AVX-512): each pair j of a block is loaded and
    /// sign-extended once (positions 0–7 and 8–15) for the four queries, where four single-query calls widened it four
    /// times. Eight accumulators (query × half block) stay in registers; the sums are the same exact int32 sums.
    /// </summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ScoresGroup4Avx2(byte* blocks, float* rowScales, int n, short* q16, float* factors, float* scores, int scoresStride, int start, int count)
    {
        if (count <= 0) return;
        int* sums = stackalloc int[4 * Rows];
        int* q0 = (int*)q16, q1 = (int*)(q16 + n), q2 = (int*)(q16 + 2 * n), q3 = (int*)(q16 + 3 * n); // query pairs as int32
        int first = start / Rows * Rows;
        AttentionKernels.PrefetchStart(blocks + BlockOffset(first, n), n, RoundUp(count + start - first));
        for (int b0 = first; b0 < start + count; b0 += Rows)
        {
            byte* block = blocks + BlockOffset(b0, n);
            long ahead = AttentionKernels.PrefetchBytes;
            Vector256<int> l0 = default, h0 = default, l1 = default, h1 = default, l2 = default, h2 = default, l3 = default, h3 = default;
            int j = 0;
            for (sbyte* k = (sbyte*)block, end = k + Rows * n; k < end; k += 2 * Rows, j++)
            {
                if ((j & 1) == 0) AttentionKernels.PrefetchLine((byte*)k + ahead); // one hint per 64 bytes read
                var lo = Avx2.ConvertToVector256Int16(Vector128.Load(k));
                var hi = Avx2.ConvertToVector256Int16(Vector128.Load(k + Rows));
                var x = Vector256.Create(q0[j]).AsInt16();
                l0 += Avx2.MultiplyAddAdjacent(lo, x); h0 += Avx2.MultiplyAddAdjacent(hi, x);
                x = Vector256.Create(q1[j]).AsInt16();
                l1 += Avx2.MultiplyAddAdjacent(lo, x); h1 += Avx2.MultiplyAddAdjacent(hi, x);
                x = Vector256.Create(q2[j]).AsInt16();
                l2 += Avx2.MultiplyAddAdjacent(lo, x); h2 += Avx2.MultiplyAddAdjacent(hi, x);
                x = Vector256.Create(q3[j]).AsInt16();
                l3 += Avx2.MultiplyAddAdjacent(lo, x); h3 += Avx2.MultiplyAddAdjacent(hi, x);
            }
            l0.Store(sums); h0.Store(sums + 8);
            l1.Store(sums + Rows); h1.Store(sums + Rows + 8);
            l2.Store(sums + 2 * Rows); h2.Store(sums + 2 * Rows + 8);
            l3.Store(sums + 3 * Rows); h3.Store(sums + 3 * Rows + 8);
            for (int g = 0; g < 4; g++) Finish(sums + g * Rows, rowScales, factors[g], scores + g * scoresStride, start, count, b0);
        }
    }

    /// <summary>sums[i] = q16 · k_i for the sixteen positions of one block (exact int32).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void BlockSums<TWidth>(byte* block, int n, short* q16, int* sums) where TWidth : struct, IVectorWidth
    {
        int* qp = (int*)q16;
        if (TWidth.Bits >= 512 && Avx512BW.IsSupported)
        {
            Vector512<int> a = default, b = default;
            for (int j = 0; j < n / 2; j += 2)
            {
                a += Avx512BW.MultiplyAddAdjacent(Avx512BW.ConvertToVector512Int16(Vector256.Load((sbyte*)block + j * 2 * Rows)), Vector512.Create(qp[j]).AsInt16());
                b += Avx512BW.MultiplyAddAdjacent(Avx512BW.ConvertToVector512Int16(Vector256.Load((sbyte*)block + (j + 1) * 2 * Rows)), Vector512.Create(qp[j + 1]).AsInt16());
            }
            (a + b).Store(sums);
            return;
        }
        if (TWidth.Bits >= 256 && Avx2.IsSupported)
        {
            Vector256<int> lo = default, hi = default; // positions 0–7 and 8–15
            for (int j = 0; j < n / 2; j++)
            {
                var qv = Vector256.Create(qp[j]).AsInt16();
                sbyte* pair = (sbyte*)block + j * 2 * Rows;
                lo += Avx2.MultiplyAddAdjacent(Avx2.ConvertToVector256Int16(Vector128.Load(pair)), qv);
                hi += Avx2.MultiplyAddAdjacent(Avx2.ConvertToVector256Int16(Vector128.Load(pair + Rows)), qv);
            }
            lo.Store(sums);
            hi.Store(sums + 8);
            return;
        }
        for (int i = 0; i < Rows; i++) sums[i] = 0;
        for (int j = 0; j < n / 2; j++)
        {
            int qa = q16[2 * j], qb = q16[2 * j + 1];
            sbyte* pair = (sbyte*)block + j * 2 * Rows;
            for (int i = 0; i < Rows; i++) sums[i] += qa * pair[2 * i] + qb * pair[2 * i + 1];
        }
    }

    /// <summary>The scores of the block at position b0 that fall in [start, start + count): (float)sum · rowScale · factor.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Finish(int* sums, float* rowScales, float factor, float* scores, int start, int count, int b0)
    {
        int from = Math.Max(b0, start), to = Math.Min(b0 + Rows, start + count);
        if (Vector512.IsHardwareAccelerated && from == b0 && to == b0 + Rows)
        {
            (Vector512.ConvertToSingle(Vector512.Load(sums)) * Vector512.Load(rowScales + b0) * Vector512.Create(factor)).Store(scores + (b0 - start));
            return;
        }
        if (Vector256.IsHardwareAccelerated && from == b0 && to == b0 + Rows)
        {
            var f = Vector256.Create(factor);
            (Vector256.ConvertToSingle(Vector256.Load(sums)) * Vector256.Load(rowScales + b0) * f).Store(scores + (b0 - start));
            (Vector256.ConvertToSingle(Vector256.Load(sums + 8)) * Vector256.Load(rowScales + b0 + 8) * f).Store(scores + (b0 - start) + 8);
            return;
        }
        for (int p = from; p < to; p++) scores[p - start] = (float)sums[p - b0] * rowScales[p] * factor;
    }
}
