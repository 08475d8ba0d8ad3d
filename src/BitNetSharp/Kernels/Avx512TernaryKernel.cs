using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using BitNetSharp.Quantization;

namespace BitNetSharp.Kernels;

/// <summary>
/// AVX-512BW: one 64-byte load holds two 128-weight blocks. After shift-and-mask, lanes 0–31 of code vector g
/// belong to block b (activations 32g..32g+31) and lanes 32–63 to block b+1 (activations 128+32g..). Rather
/// than join two 32-byte loads per operand (measured: slower than AVX2), each call first copies the activation
/// rows into a per-thread scratch in that pair-interleaved order — K bytes per token, against K/4 weight bytes
/// per output row — so every operand is one 64-byte load. vpmaddubsw pair sums accumulate in int16 for 16
/// two-block steps (the same −32768 bound as AVX2) before vpmaddwd widens them. An odd last block keeps its
/// natural order and takes the 256-bit path. Decode (one or two tokens against eight rows) splits the codes with one
/// shift and four masks whatever the split type (<see cref="Dot512{TSplit}.DotLanesTimes4"/>); the split type serves
/// the prefill tiles.
/// </summary>
public sealed unsafe class Avx512TernaryKernel : TernaryKernel
{
    public override string Name => "avx512";
    public override bool IsSupported => Avx512BW.IsSupported;

    protected override void MatMulCore(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int rowStart, int rowEnd) =>
        TernaryDriver.RunPairs<Dot512<ShiftSplit>>(w, x, y, yStride, rowStart, rowEnd);

    protected override void MatVecQuartersCore(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int sliceStart, int quarter, int from, int to) =>
        TernaryDriver.Quarters<Dot512<ShiftSplit>>(w, x, y, yStride, sliceStart, quarter, from, to);

    public override ActivationRows Prepare(QuantizedActivations x, ref Memory.NativeBuffer? scratch) => InterleavedRows(x, ref scratch);

    /// <summary>The activation rows copied, pair-interleaved, into <paramref name="scratch"/> (grown, never per call).</summary>
    internal static ActivationRows InterleavedRows(QuantizedActivations x, ref Memory.NativeBuffer? scratch)
    {
        long need = (long)x.Tokens * x.PaddedCols;
        if (scratch is null || scratch.ByteLength < need)
        {
            // Dropped before the new one is made: an allocation that throws left the disposed buffer in place, its old
            // size passed the check, and every later call failed with ObjectDisposedException.
            scratch?.Dispose();
            scratch = null;
            scratch = new Memory.NativeBuffer(Math.Max(need, 1 << 16), zero: false);
        }
        var rows = (sbyte*)scratch.Pointer;
        for (int t = 0; t < x.Tokens; t++) Interleave(x.Row(t), rows + (long)t * x.PaddedCols, x.PaddedCols);
        return new ActivationRows(rows, x.PaddedCols, x.Tokens, x.Scales, x.Sums, x.Cols);
    }

    /// <summary>Within each 256-activation pair of blocks: [g][block][i] ← block·128 + 32g + i.</summary>
    internal static void Interleave(sbyte* src, sbyte* dst, int paddedCols)
    {
        int pairs = paddedCols / 256;
        for (int p = 0; p < pairs; p++, src += 256, dst += 256)
        {
            for (int g = 0; g < 4; g++)
            {
                Vector256.Store(Vector256.Load(src + 32 * g), dst + 64 * g);
                Vector256.Store(Vector256.Load(src + 128 + 32 * g), dst + 64 * g + 32);
            }
        }
        if (paddedCols % 256 != 0)
            Buffer.MemoryCopy(src, dst, 128, 128);
    }

    public readonly struct Dot512<TSplit> : ITernaryRowPairDot where TSplit : ICodeSplit512
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector512<sbyte> Pair(sbyte* q) => Vector512.Load(q);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static int Dot(byte* w, sbyte* q, int blocks)
        {
            var ones = Vector512.Create((short)1);
            var acc = Vector512<int>.Zero;
            int pairs = blocks >> 1;
            for (int p = 0; p < pairs;)
            {
                int end = Math.Min(pairs, p + Avx2TernaryKernel.Int16Blocks);
                var acc16 = Vector512<short>.Zero;
                for (; p < end; p++)
                {
                    TernaryKernel.PrefetchWeights(w + p * 64);
                    var packed = Vector512.Load(w + p * 64);
                    sbyte* qb = q + p * 256;
                    var c0 = TSplit.Code0(packed); var c1 = TSplit.Code1(packed); var c2 = TSplit.Code2(packed); var c3 = TSplit.Code3(packed);
                    var s01 = Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(c0, Pair(qb)), Avx512BW.MultiplyAddAdjacent(c1, Pair(qb + 64)));
                    var s23 = Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(c2, Pair(qb + 128)), Avx512BW.MultiplyAddAdjacent(c3, Pair(qb + 192)));
                    acc16 = Avx512BW.Add(acc16, Avx512BW.Add(s01, s23));
                }
                acc = Avx512F.Add(acc, Avx512BW.MultiplyAddAdjacent(acc16, ones));
            }
            int d = Vector512.Sum(acc);
            if ((blocks & 1) != 0)
                d += Avx2TernaryKernel.Dot256.Dot(w + (blocks - 1) * 32, q + (blocks - 1) * 128, 1);
            return d;
        }

        /// <summary>
        /// Four times Σ c·q over the even number of blocks below <paramref name="blocks"/>, spread over 16 int32 lanes
        /// (the odd last block is the caller's). Decode's split, whatever <typeparamref name="TSplit"/> is: one 16-bit shift
        /// p4 = p &gt;&gt; 4 per 64 bytes, then p4 &amp; 12 = 4·c₀, p4 &amp; 3 = c₁, p &amp; 12 = 4·c₂, p &amp; 3 = c₃ into vpmaddubsw, with
        /// scale-4 and scale-1 int16 sums widened by ×1 and ×4 (as <see cref="Avx2TernaryKernel.Dot256.DotLanesTimes4"/>).
        /// It needs no GFNI and puts nothing but the multiplies on Zen 4's multiply ports. Bench `quick-decode` (one
        /// process, Zen 4, three runs): level with the <see cref="BalancedSplit"/> loop, 0.98–1.03 of a plain sum from
        /// memory for both, and ahead of the three-shift <see cref="ShiftSplit"/> loop (0.96–0.99) that the avx512 kernel
        /// used on CPUs without GFNI.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<int> DotLanesTimes4(byte* w, sbyte* q, int blocks)
        {
            var m3 = Vector512.Create((byte)3);
            var m12 = Vector512.Create((byte)12);
            var acc = Vector512<int>.Zero;
            byte* wp = w;
            byte* wEnd = w + (blocks >> 1) * 64;
            sbyte* qp = q;
            while (wp < wEnd)
            {
                byte* chunkEnd = wEnd - wp > ScaledSteps * 64 ? wp + ScaledSteps * 64 : wEnd;
                Vector512<short> s1 = default, s4 = default;
                for (; wp < chunkEnd; wp += 64, qp += 256)
                {
                    TernaryKernel.PrefetchWeights(wp);
                    var p = Vector512.Load(wp);
                    var p4 = Avx512BW.ShiftRightLogical(p.AsUInt16(), 4).AsByte();
                    s4 = Avx512BW.Add(s4, Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(p4 & m12, Pair(qp)), Avx512BW.MultiplyAddAdjacent(p & m12, Pair(qp + 128))));
                    s1 = Avx512BW.Add(s1, Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(p4 & m3, Pair(qp + 64)), Avx512BW.MultiplyAddAdjacent(p & m3, Pair(qp + 192))));
                }
                acc = Avx512F.Add(acc, Widen(s1, s4));
            }
            return acc;
        }

        /// <summary>
        /// How far ahead of the four streams' current lines <see cref="DotRows4Streams"/> and <see cref="DotRows4Streams2"/>
        /// prefetch (<see cref="ICodeSplit512.FetchStream"/>: prefetchnta, each stream's line once per 64-byte step).
        /// Before: prefetcht1 1 KiB ahead, which on the Zen 5 EPYC (2B4T shape, 2 threads, `bitnet profile`, alternating
        /// builds) read 48.4 GB/s against 44.8 with no prefetch; 512 B and 2 KiB were in between, 4 KiB no better than none.
        /// Now prefetchnta 2 KiB ahead: the line goes to L1 without being installed in L2 (nor, evicted, in the L3 that
        /// Zen fills with L2's victims), so a weight stream read once no longer pushes out what is used again. `quick-decode
        /// threads` (BitNetSharp.Benchmarks; 16 2B4T layers, 278 MB, one process, variants alternating, medians of 15
        /// rounds), Zen 5 EPYC, 2 threads, four runs: 57.6, 52.7, 67.5, 69.8 GB/s against 49.9, 42.4, 58.8, 55.2 for t1 at
        /// 1 KiB; prefetcht0 2 KiB 57.0, 53.4, 68.0 (level with nta); nta 1 KiB, 3 KiB and 4 KiB in between. One thread
        /// 30.8 against 27.2. The bench keeps the alternatives as rows, to be measured on each CPU.
        /// </summary>
        internal const long StreamPrefetchBytes = 2048;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static void PrefetchStreams(byte* w0, byte* w1, byte* w2, byte* w3)
        {
            TSplit.FetchStream(w0); TSplit.FetchStream(w1); TSplit.FetchStream(w2); TSplit.FetchStream(w3);
        }

        /// <summary>64-byte steps per int16 chunk of the scaled sums: 8 steps × 2 pair sums × (−2048) = −32768.</summary>
        private const int ScaledSteps = 8;

        /// <summary>4·(scale-1 sums) + (scale-4 sums), widened to int32: four times the dot.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        internal static Vector512<int> Widen(Vector512<short> s1, Vector512<short> s4) =>
            Avx512F.Add(Avx512BW.MultiplyAddAdjacent(s4, Vector512.Create((short)1)), Avx512BW.MultiplyAddAdjacent(s1, Vector512.Create((short)4)));

        /// <summary>The last block of an odd count, in its natural order (256-bit), added to eight rows' results. Called
        /// after the rows' vectors are reduced: a call among them would make the JIT spill every vector register.</summary>
        [MethodImpl(MethodImplOptions.NoInlining)]
        private static void AddOddBlockRows8(byte* w, long rowBytes, sbyte* q, int blocks, int* result)
        {
            for (int r = 0; r < 8; r++)
                result[r] += Avx2TernaryKernel.Dot256.Dot(w + r * rowBytes + (blocks - 1) * 32, q + (blocks - 1) * 128, 1);
        }

        /// <summary>
        /// One token against eight consecutive rows, read one after another (a single stream through memory: reading
        /// the eight side by side was 2–3× slower from memory on the Zen 4 EPYC, the hardware prefetcher losing the
        /// streams). What the eight rows share is the end: their lane sums are reduced together by <see cref="LaneSums"/>
        /// (about 20 operations, not 8 × 8 with a long dependency chain each), and the caller's epilogue is one vector.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void DotRows8(byte* w, long rowBytes, sbyte* q, int blocks, int* result)
        {
            var v0 = DotLanesTimes4(w, q, blocks);
            var v1 = DotLanesTimes4(w + rowBytes, q, blocks);
            var v2 = DotLanesTimes4(w + 2 * rowBytes, q, blocks);
            var v3 = DotLanesTimes4(w + 3 * rowBytes, q, blocks);
            var v4 = DotLanesTimes4(w + 4 * rowBytes, q, blocks);
            var v5 = DotLanesTimes4(w + 5 * rowBytes, q, blocks);
            var v6 = DotLanesTimes4(w + 6 * rowBytes, q, blocks);
            var v7 = DotLanesTimes4(w + 7 * rowBytes, q, blocks);
            Avx2.ShiftRightArithmetic(LaneSums(v0, v1, v2, v3, v4, v5, v6, v7), 2).Store(result);
            if ((blocks & 1) != 0) AddOddBlockRows8(w, rowBytes, q, blocks, result);
        }

        /// <summary>
        /// One token against four rows read side by side from four far-apart places (<see cref="TernaryKernel.WeightStreams"/>),
        /// in <see cref="DotLanesTimes4"/>'s split and int16 chunks, each 64-byte step's four activation vectors loaded once
        /// for the four rows. The hardware prefetchers follow the four streams; each is also prefetched
        /// <see cref="StreamPrefetchBytes"/> ahead. Exact integer sums, so the same results as <see cref="DotRows8"/>.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void DotRows4Streams(byte* w, long streamBytes, sbyte* q, int blocks, int* result)
        {
            var m3 = Vector512.Create((byte)3);
            var m12 = Vector512.Create((byte)12);
            byte* w0 = w, w1 = w + streamBytes, w2 = w1 + streamBytes, w3 = w2 + streamBytes;
            Vector512<int> a0 = default, a1 = default, a2 = default, a3 = default;
            long end = (long)(blocks >> 1) * 64;
            for (long o = 0; o < end;)
            {
                long chunkEnd = Math.Min(end, o + ScaledSteps * 64);
                Vector512<short> s10 = default, s40 = default, s11 = default, s41 = default, s12 = default, s42 = default, s13 = default, s43 = default;
                for (; o < chunkEnd; o += 64)
                {
                    PrefetchStreams(w0 + o, w1 + o, w2 + o, w3 + o);
                    sbyte* qp = q + 4 * o;
                    var q0 = Pair(qp); var q1 = Pair(qp + 64); var q2 = Pair(qp + 128); var q3 = Pair(qp + 192);
                    ScaledStep(Vector512.Load(w0 + o), q0, q1, q2, q3, m3, m12, ref s10, ref s40);
                    ScaledStep(Vector512.Load(w1 + o), q0, q1, q2, q3, m3, m12, ref s11, ref s41);
                    ScaledStep(Vector512.Load(w2 + o), q0, q1, q2, q3, m3, m12, ref s12, ref s42);
                    ScaledStep(Vector512.Load(w3 + o), q0, q1, q2, q3, m3, m12, ref s13, ref s43);
                }
                a0 = Avx512F.Add(a0, Widen(s10, s40)); a1 = Avx512F.Add(a1, Widen(s11, s41));
                a2 = Avx512F.Add(a2, Widen(s12, s42)); a3 = Avx512F.Add(a3, Widen(s13, s43));
            }
            Avx2.ShiftRightArithmetic(LaneSums(a0, a1, a2, a3, a0, a1, a2, a3).GetLower(), 2).Store(result);
            if ((blocks & 1) != 0) AddOddBlockStreams4(w, streamBytes, q, blocks, result);
        }

        /// <summary>
        /// <see cref="DotRows4Streams"/> for two tokens: each 64-byte step of each row is split into its four code vectors
        /// once and multiplied by both tokens' activations (loaded once per step for the four rows). Exact integer sums,
        /// so the same results as two <see cref="DotRows4Streams"/> calls.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void DotRows4Streams2(byte* w, long streamBytes, sbyte* q0, sbyte* q1, int blocks, int* result)
        {
            var m3 = Vector512.Create((byte)3);
            var m12 = Vector512.Create((byte)12);
            byte* w0 = w, w1 = w + streamBytes, w2 = w1 + streamBytes, w3 = w2 + streamBytes;
            Vector512<int> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
            long end = (long)(blocks >> 1) * 64;
            for (long o = 0; o < end;)
            {
                long chunkEnd = Math.Min(end, o + ScaledSteps * 64);
                Vector512<short> s10 = default, s40 = default, s11 = default, s41 = default, s12 = default, s42 = default, s13 = default, s43 = default;
                Vector512<short> t10 = default, t40 = default, t11 = default, t41 = default, t12 = default, t42 = default, t13 = default, t43 = default;
                for (; o < chunkEnd; o += 64)
                {
                    PrefetchStreams(w0 + o, w1 + o, w2 + o, w3 + o);
                    sbyte* qp = q0 + 4 * o, qr = q1 + 4 * o;
                    var p0 = Pair(qp); var p1 = Pair(qp + 64); var p2 = Pair(qp + 128); var p3 = Pair(qp + 192);
                    var r0 = Pair(qr); var r1 = Pair(qr + 64); var r2 = Pair(qr + 128); var r3 = Pair(qr + 192);
                    ScaledStep2(Vector512.Load(w0 + o), p0, p1, p2, p3, r0, r1, r2, r3, m3, m12, ref s10, ref s40, ref t10, ref t40);
                    ScaledStep2(Vector512.Load(w1 + o), p0, p1, p2, p3, r0, r1, r2, r3, m3, m12, ref s11, ref s41, ref t11, ref t41);
                    ScaledStep2(Vector512.Load(w2 + o), p0, p1, p2, p3, r0, r1, r2, r3, m3, m12, ref s12, ref s42, ref t12, ref t42);
                    ScaledStep2(Vector512.Load(w3 + o), p0, p1, p2, p3, r0, r1, r2, r3, m3, m12, ref s13, ref s43, ref t13, ref t43);
                }
                a0 = Avx512F.Add(a0, Widen(s10, s40)); a1 = Avx512F.Add(a1, Widen(s11, s41));
                a2 = Avx512F.Add(a2, Widen(s12, s42)); a3 = Avx512F.Add(a3, Widen(s13, s43));
                b0 = Avx512F.Add(b0, Widen(t10, t40)); b1 = Avx512F.Add(b1, Widen(t11, t41));
                b2 = Avx512F.Add(b2, Widen(t12, t42)); b3 = Avx512F.Add(b3, Widen(t13, t43));
            }
            Avx2.ShiftRightArithmetic(LaneSums(a0, a1, a2, a3, b0, b1, b2, b3), 2).Store(result);
            if ((blocks & 1) != 0)
            {
                AddOddBlockStreams4(w, streamBytes, q0, blocks, result);
                AddOddBlockStreams4(w, streamBytes, q1, blocks, result + 4);
            }
        }

        /// <summary><see cref="ScaledStep"/> for two tokens' activation vectors on one row's codes.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static void ScaledStep2(Vector512<byte> p, Vector512<sbyte> q0, Vector512<sbyte> q1, Vector512<sbyte> q2, Vector512<sbyte> q3,
            Vector512<sbyte> r0, Vector512<sbyte> r1, Vector512<sbyte> r2, Vector512<sbyte> r3,
            Vector512<byte> m3, Vector512<byte> m12, ref Vector512<short> s1, ref Vector512<short> s4, ref Vector512<short> t1, ref Vector512<short> t4)
        {
            var p4 = Avx512BW.ShiftRightLogical(p.AsUInt16(), 4).AsByte();
            var c0 = p4 & m12; var c1 = p4 & m3; var c2 = p & m12; var c3 = p & m3;
            s4 = Avx512BW.Add(s4, Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(c0, q0), Avx512BW.MultiplyAddAdjacent(c2, q2)));
            s1 = Avx512BW.Add(s1, Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(c1, q1), Avx512BW.MultiplyAddAdjacent(c3, q3)));
            t4 = Avx512BW.Add(t4, Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(c0, r0), Avx512BW.MultiplyAddAdjacent(c2, r2)));
            t1 = Avx512BW.Add(t1, Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(c1, r1), Avx512BW.MultiplyAddAdjacent(c3, r3)));
        }

        /// <summary>One 64-byte step of <see cref="DotLanesTimes4"/>'s split for one row, on activation vectors already loaded.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        internal static void ScaledStep(Vector512<byte> p, Vector512<sbyte> q0, Vector512<sbyte> q1, Vector512<sbyte> q2, Vector512<sbyte> q3,
            Vector512<byte> m3, Vector512<byte> m12, ref Vector512<short> s1, ref Vector512<short> s4)
        {
            var p4 = Avx512BW.ShiftRightLogical(p.AsUInt16(), 4).AsByte();
            s4 = Avx512BW.Add(s4, Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(p4 & m12, q0), Avx512BW.MultiplyAddAdjacent(p & m12, q2)));
            s1 = Avx512BW.Add(s1, Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(p4 & m3, q1), Avx512BW.MultiplyAddAdjacent(p & m3, q3)));
        }

        /// <summary>The last block of an odd count for <see cref="DotRows4Streams"/>'s four rows (natural order, 256-bit).</summary>
        [MethodImpl(MethodImplOptions.NoInlining)]
        private static void AddOddBlockStreams4(byte* w, long streamBytes, sbyte* q, int blocks, int* result)
        {
            for (int r = 0; r < 4; r++)
                result[r] += Avx2TernaryKernel.Dot256.Dot(w + r * streamBytes + (blocks - 1) * 32, q + (blocks - 1) * 128, 1);
        }

        /// <summary><see cref="DotLanesTimes4"/> for two tokens: each 64 weight bytes are split into codes once and
        /// multiplied by both tokens' activations.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void DotLanes2Times4(byte* w, sbyte* q0, sbyte* q1, int blocks, out Vector512<int> lanes0, out Vector512<int> lanes1)
        {
            var m3 = Vector512.Create((byte)3);
            var m12 = Vector512.Create((byte)12);
            Vector512<int> a0 = default, a1 = default;
            byte* wp = w;
            byte* wEnd = w + (blocks >> 1) * 64;
            long o = 0;
            while (wp < wEnd)
            {
                byte* chunkEnd = wEnd - wp > ScaledSteps * 64 ? wp + ScaledSteps * 64 : wEnd;
                Vector512<short> s1 = default, s4 = default, t1 = default, t4 = default;
                for (; wp < chunkEnd; wp += 64, o += 256)
                {
                    TernaryKernel.PrefetchWeights(wp);
                    var p = Vector512.Load(wp);
                    var p4 = Avx512BW.ShiftRightLogical(p.AsUInt16(), 4).AsByte();
                    var c0 = p4 & m12; var c1 = p4 & m3; var c2 = p & m12; var c3 = p & m3;
                    s4 = Avx512BW.Add(s4, Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(c0, Pair(q0 + o)), Avx512BW.MultiplyAddAdjacent(c2, Pair(q0 + o + 128))));
                    s1 = Avx512BW.Add(s1, Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(c1, Pair(q0 + o + 64)), Avx512BW.MultiplyAddAdjacent(c3, Pair(q0 + o + 192))));
                    t4 = Avx512BW.Add(t4, Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(c0, Pair(q1 + o)), Avx512BW.MultiplyAddAdjacent(c2, Pair(q1 + o + 128))));
                    t1 = Avx512BW.Add(t1, Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(c1, Pair(q1 + o + 64)), Avx512BW.MultiplyAddAdjacent(c3, Pair(q1 + o + 192))));
                }
                a0 = Avx512F.Add(a0, Widen(s1, s4));
                a1 = Avx512F.Add(a1, Widen(t1, t4));
            }
            lanes0 = a0;
            lanes1 = a1;
        }

        /// <summary><see cref="DotRows8"/> for two tokens: result[r] is row r with <paramref name="q0"/>, result[8 + r] with
        /// <paramref name="q1"/> (two or three sequences decoding together; speculative checks of a few tokens).</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void DotRows8x2(byte* w, long rowBytes, sbyte* q0, sbyte* q1, int blocks, int* result)
        {
            DotLanes2Times4(w, q0, q1, blocks, out var a0, out var b0);
            DotLanes2Times4(w + rowBytes, q0, q1, blocks, out var a1, out var b1);
            DotLanes2Times4(w + 2 * rowBytes, q0, q1, blocks, out var a2, out var b2);
            DotLanes2Times4(w + 3 * rowBytes, q0, q1, blocks, out var a3, out var b3);
            DotLanes2Times4(w + 4 * rowBytes, q0, q1, blocks, out var a4, out var b4);
            DotLanes2Times4(w + 5 * rowBytes, q0, q1, blocks, out var a5, out var b5);
            DotLanes2Times4(w + 6 * rowBytes, q0, q1, blocks, out var a6, out var b6);
            DotLanes2Times4(w + 7 * rowBytes, q0, q1, blocks, out var a7, out var b7);
            Avx2.ShiftRightArithmetic(LaneSums(a0, a1, a2, a3, a4, a5, a6, a7), 2).Store(result);
            Avx2.ShiftRightArithmetic(LaneSums(b0, b1, b2, b3, b4, b5, b6, b7), 2).Store(result + 8);
            if ((blocks & 1) != 0)
            {
                AddOddBlockRows8(w, rowBytes, q0, blocks, result);
                AddOddBlockRows8(w, rowBytes, q1, blocks, result + 8);
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Dot4(byte* w, sbyte* q0, sbyte* q1, sbyte* q2, sbyte* q3, int blocks, int* result)
        {
            var ones = Vector512.Create((short)1);
            Vector512<int> a0 = default, a1 = default, a2 = default, a3 = default;
            int pairs = blocks >> 1;
            for (int p = 0; p < pairs;)
            {
                int end = Math.Min(pairs, p + Avx2TernaryKernel.Int16Blocks);
                Vector512<short> s0 = default, s1 = default, s2 = default, s3 = default;
                for (; p < end; p++)
                {
                    TernaryKernel.PrefetchWeights(w + p * 64);
                    var packed = Vector512.Load(w + p * 64);
                    var c0 = TSplit.Code0(packed); var c1 = TSplit.Code1(packed); var c2 = TSplit.Code2(packed); var c3 = TSplit.Code3(packed);
                    int o = p * 256;
                    s0 = Avx512BW.Add(s0, Block(c0, c1, c2, c3, q0 + o));
                    s1 = Avx512BW.Add(s1, Block(c0, c1, c2, c3, q1 + o));
                    s2 = Avx512BW.Add(s2, Block(c0, c1, c2, c3, q2 + o));
                    s3 = Avx512BW.Add(s3, Block(c0, c1, c2, c3, q3 + o));
                }
                a0 = Avx512F.Add(a0, Avx512BW.MultiplyAddAdjacent(s0, ones));
                a1 = Avx512F.Add(a1, Avx512BW.MultiplyAddAdjacent(s1, ones));
                a2 = Avx512F.Add(a2, Avx512BW.MultiplyAddAdjacent(s2, ones));
                a3 = Avx512F.Add(a3, Avx512BW.MultiplyAddAdjacent(s3, ones));
            }
            result[0] = Vector512.Sum(a0);
            result[1] = Vector512.Sum(a1);
            result[2] = Vector512.Sum(a2);
            result[3] = Vector512.Sum(a3);
            if ((blocks & 1) != 0)
            {
                int* tail = stackalloc int[4];
                int o = (blocks - 1) * 128;
                Avx2TernaryKernel.Dot256.Dot4(w + (blocks - 1) * 32, q0 + o, q1 + o, q2 + o, q3 + o, 1, tail);
                for (int j = 0; j < 4; j++) result[j] += tail[j];
            }
        }

        /// <summary>Two rows × four tokens: both rows' codes are extracted, then each token's 256 activations are
        /// loaded once and multiplied against both (activation loads per multiply halved against two Dot4 calls).
        /// result[2j + r] is row r's dot with token j.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Dot2x4(byte* w0, byte* w1, sbyte* q0, sbyte* q1, sbyte* q2, sbyte* q3, int blocks, int* result)
        {
            var ones = Vector512.Create((short)1);
            Vector512<int> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
            int pairs = blocks >> 1;
            for (int p = 0; p < pairs;)
            {
                int end = Math.Min(pairs, p + Avx2TernaryKernel.Int16Blocks);
                Vector512<short> s0 = default, s1 = default, s2 = default, s3 = default, t0 = default, t1 = default, t2 = default, t3 = default;
                for (; p < end; p++)
                {
                    TernaryKernel.PrefetchWeights(w0 + p * 64);
                    TernaryKernel.PrefetchWeights(w1 + p * 64);
                    var pa = Vector512.Load(w0 + p * 64);
                    var pb = Vector512.Load(w1 + p * 64);
                    var c0 = TSplit.Code0(pa); var c1 = TSplit.Code1(pa); var c2 = TSplit.Code2(pa); var c3 = TSplit.Code3(pa);
                    var d0 = TSplit.Code0(pb); var d1 = TSplit.Code1(pb); var d2 = TSplit.Code2(pb); var d3 = TSplit.Code3(pb);
                    int o = p * 256;
                    Both(c0, c1, c2, c3, d0, d1, d2, d3, q0 + o, ref s0, ref t0);
                    Both(c0, c1, c2, c3, d0, d1, d2, d3, q1 + o, ref s1, ref t1);
                    Both(c0, c1, c2, c3, d0, d1, d2, d3, q2 + o, ref s2, ref t2);
                    Both(c0, c1, c2, c3, d0, d1, d2, d3, q3 + o, ref s3, ref t3);
                }
                a0 = Avx512F.Add(a0, Avx512BW.MultiplyAddAdjacent(s0, ones)); b0 = Avx512F.Add(b0, Avx512BW.MultiplyAddAdjacent(t0, ones));
                a1 = Avx512F.Add(a1, Avx512BW.MultiplyAddAdjacent(s1, ones)); b1 = Avx512F.Add(b1, Avx512BW.MultiplyAddAdjacent(t1, ones));
                a2 = Avx512F.Add(a2, Avx512BW.MultiplyAddAdjacent(s2, ones)); b2 = Avx512F.Add(b2, Avx512BW.MultiplyAddAdjacent(t2, ones));
                a3 = Avx512F.Add(a3, Avx512BW.MultiplyAddAdjacent(s3, ones)); b3 = Avx512F.Add(b3, Avx512BW.MultiplyAddAdjacent(t3, ones));
            }
            LaneSums(a0, b0, a1, b1, a2, b2, a3, b3).Store(result);
            if ((blocks & 1) != 0) AddOddBlock2x4(w0, w1, q0, q1, q2, q3, blocks, result);
        }

        /// <summary>The last block of an odd count, in its natural order (256-bit), added to Dot2x4's results. Kept
        /// out of Dot2x4: its stack buffer would stop the JIT inlining Dot2x4 into the driver's loop.</summary>
        [MethodImpl(MethodImplOptions.NoInlining)]
        private static void AddOddBlock2x4(byte* w0, byte* w1, sbyte* q0, sbyte* q1, sbyte* q2, sbyte* q3, int blocks, int* result)
        {
            int* tail = stackalloc int[4];
            int o = (blocks - 1) * 128;
            Avx2TernaryKernel.Dot256.Dot4(w0 + (blocks - 1) * 32, q0 + o, q1 + o, q2 + o, q3 + o, 1, tail);
            for (int j = 0; j < 4; j++) result[2 * j] += tail[j];
            Avx2TernaryKernel.Dot256.Dot4(w1 + (blocks - 1) * 32, q0 + o, q1 + o, q2 + o, q3 + o, 1, tail);
            for (int j = 0; j < 4; j++) result[2 * j + 1] += tail[j];
        }

        /// <summary>
        /// The sums of the lanes of eight vectors, in their order, as one vector: halves of two vectors are added
        /// together in one register, then quarters of four, then the four lanes of each quarter (about 20 operations
        /// where eight separate horizontal sums take about 70, and one 32-byte store instead of eight 4-byte stores
        /// that a vector reload could not forward from). Integer sums, so the order does not change them.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> LaneSums(Vector512<int> v0, Vector512<int> v1, Vector512<int> v2, Vector512<int> v3,
            Vector512<int> v4, Vector512<int> v5, Vector512<int> v6, Vector512<int> v7)
        {
            // Quarters (128 bits) 0,1 + 2,3 of two vectors side by side: [v0 q0+q2, v0 q1+q3, v1 q0+q2, v1 q1+q3].
            var s01 = Avx512F.Add(Avx512F.Shuffle4x128(v0, v1, 0x44), Avx512F.Shuffle4x128(v0, v1, 0xEE));
            var s23 = Avx512F.Add(Avx512F.Shuffle4x128(v2, v3, 0x44), Avx512F.Shuffle4x128(v2, v3, 0xEE));
            var s45 = Avx512F.Add(Avx512F.Shuffle4x128(v4, v5, 0x44), Avx512F.Shuffle4x128(v4, v5, 0xEE));
            var s67 = Avx512F.Add(Avx512F.Shuffle4x128(v6, v7, 0x44), Avx512F.Shuffle4x128(v6, v7, 0xEE));
            // Quarter k of t0123 holds four partial sums of v_k; of t4567, of v_(4+k).
            var t0123 = Avx512F.Add(Avx512F.Shuffle4x128(s01, s23, 0x88), Avx512F.Shuffle4x128(s01, s23, 0xDD));
            var t4567 = Avx512F.Add(Avx512F.Shuffle4x128(s45, s67, 0x88), Avx512F.Shuffle4x128(s45, s67, 0xDD));
            // Within each quarter: [a0+a2, a1+a3, b0+b2, b1+b3], then adjacent pairs added: [A, A, B, B].
            var z = Avx512F.Add(Avx512F.UnpackLow(t0123.AsInt64(), t4567.AsInt64()).AsInt32(), Avx512F.UnpackHigh(t0123.AsInt64(), t4567.AsInt64()).AsInt32());
            var w = Avx512F.Add(z, Avx512F.Shuffle(z, 0xB1));
            // v_k is in lane 4k, v_(4+k) in lane 4k + 2.
            return Avx512F.PermuteVar16x32(w, Vector512.Create(0, 4, 8, 12, 2, 6, 10, 14, 0, 0, 0, 0, 0, 0, 0, 0)).GetLower();
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static void Both(Vector512<byte> c0, Vector512<byte> c1, Vector512<byte> c2, Vector512<byte> c3,
            Vector512<byte> d0, Vector512<byte> d1, Vector512<byte> d2, Vector512<byte> d3, sbyte* q, ref Vector512<short> s, ref Vector512<short> t)
        {
            var x0 = Pair(q); var x1 = Pair(q + 64); var x2 = Pair(q + 128); var x3 = Pair(q + 192);
            s = Avx512BW.Add(s, Avx512BW.Add(
                Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(c0, x0), Avx512BW.MultiplyAddAdjacent(c1, x1)),
                Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(c2, x2), Avx512BW.MultiplyAddAdjacent(c3, x3))));
            t = Avx512BW.Add(t, Avx512BW.Add(
                Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(d0, x0), Avx512BW.MultiplyAddAdjacent(d1, x1)),
                Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(d2, x2), Avx512BW.MultiplyAddAdjacent(d3, x3))));
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector512<short> Block(Vector512<byte> c0, Vector512<byte> c1, Vector512<byte> c2, Vector512<byte> c3, sbyte* q) =>
            Avx512BW.Add(
                Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(c0, Pair(q)), Avx512BW.MultiplyAddAdjacent(c1, Pair(q + 64))),
                Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(c2, Pair(q + 128)), Avx512BW.MultiplyAddAdjacent(c3, Pair(q + 192))));
    }
}

/// <summary>Extracts the 2-bit code vectors (bit shift 6, 4, 2, 0) from 64 packed bytes. Four separate methods
/// rather than one returning a tuple: a tuple of four Vector512 is returned through memory.</summary>
public unsafe interface ICodeSplit512
{
    static abstract Vector512<byte> Code0(Vector512<byte> packed);
    static abstract Vector512<byte> Code1(Vector512<byte> packed);
    static abstract Vector512<byte> Code2(Vector512<byte> packed);
    static abstract Vector512<byte> Code3(Vector512<byte> packed);

    /// <summary>The software prefetch of one weight stream's line at <paramref name="line"/> in the four-stream decode loops
    /// (<see cref="Avx512TernaryKernel.Dot512{TSplit}.StreamPrefetchBytes"/> ahead, non-temporal). A split type may
    /// replace it, which is how `quick-decode threads` times other prefetches against it in one process.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static virtual void FetchStream(byte* line) => Sse.PrefetchNonTemporal(line + Avx512TernaryKernel.Dot512<ShiftSplit>.StreamPrefetchBytes);
}

/// <summary>16-bit shifts plus a byte mask: 7 operations per 64 bytes.</summary>
public readonly struct ShiftSplit : ICodeSplit512
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<byte> Code0(Vector512<byte> packed) => Avx512BW.ShiftRightLogical(packed.AsUInt16(), 6).AsByte() & Vector512.Create((byte)3);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<byte> Code1(Vector512<byte> packed) => Avx512BW.ShiftRightLogical(packed.AsUInt16(), 4).AsByte() & Vector512.Create((byte)3);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<byte> Code2(Vector512<byte> packed) => Avx512BW.ShiftRightLogical(packed.AsUInt16(), 2).AsByte() & Vector512.Create((byte)3);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<byte> Code3(Vector512<byte> packed) => packed & Vector512.Create((byte)3);
}

/// <summary>
/// GFNI: gf2p8affineqb multiplies each byte by an 8×8 bit matrix, so "move bits s, s+1 to bits 0, 1 and clear
/// the rest" is one instruction per code group (4 operations per 64 bytes instead of 7). Output bit i is the
/// parity of (matrix byte 7−i AND input), so matrix byte 7 selects bit s and byte 6 selects bit s+1.
/// </summary>
public readonly struct GfniSplit : ICodeSplit512
{
    private const ulong Shift6 = 0x40UL << 56 | 0x80UL << 48;
    private const ulong Shift4 = 0x10UL << 56 | 0x20UL << 48;
    private const ulong Shift2 = 0x04UL << 56 | 0x08UL << 48;
    private const ulong Shift0 = 0x01UL << 56 | 0x02UL << 48;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<byte> Code0(Vector512<byte> packed) => Gfni.V512.GaloisFieldAffineTransform(packed, Vector512.Create(Shift6).AsByte(), 0);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<byte> Code1(Vector512<byte> packed) => Gfni.V512.GaloisFieldAffineTransform(packed, Vector512.Create(Shift4).AsByte(), 0);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<byte> Code2(Vector512<byte> packed) => Gfni.V512.GaloisFieldAffineTransform(packed, Vector512.Create(Shift2).AsByte(), 0);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<byte> Code3(Vector512<byte> packed) => Gfni.V512.GaloisFieldAffineTransform(packed, Vector512.Create(Shift0).AsByte(), 0);
}

/// <summary>
/// GFNI for two code groups, shift-and-mask for one and a plain mask for the last (5 operations per 64 bytes). On Zen 4
/// gf2p8affineqb shares the multiply ports with vpmaddubsw, so four GFNI operations plus four multiplies queue on two
/// ports while the others idle; moving two groups to shifts and ANDs balances them. bench `quick-decode`, one process,
/// 2B4T shapes, one thread: 29.6 GB/s against 26.8 for <see cref="GfniSplit"/> with the weights in cache, 23.3 against
/// 22.6 from memory; three GFNI + one AND 28.7 / 22.5, one GFNI 28.4 / 22.7. Those are decode figures; decode now
/// takes <see cref="Avx512TernaryKernel.Dot512{TSplit}.DotLanesTimes4"/>, and this split serves the prefill tiles.
/// </summary>
public readonly struct BalancedSplit : ICodeSplit512
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<byte> Code0(Vector512<byte> packed) => ShiftSplit.Code0(packed);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<byte> Code1(Vector512<byte> packed) => GfniSplit.Code1(packed);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<byte> Code2(Vector512<byte> packed) => GfniSplit.Code2(packed);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<byte> Code3(Vector512<byte> packed) => ShiftSplit.Code3(packed);
}

/// <summary>The AVX-512 kernel with GFNI in its code extraction (<see cref="BalancedSplit"/>); activations interleaved as in <see cref="Avx512TernaryKernel"/>.</summary>
public sealed unsafe class Avx512GfniTernaryKernel : TernaryKernel
{
    public override string Name => "avx512gfni";
    public override bool IsSupported => Avx512BW.IsSupported && Gfni.V512.IsSupported;

    protected override void MatMulCore(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int rowStart, int rowEnd) =>
        TernaryDriver.RunPairs<Avx512TernaryKernel.Dot512<BalancedSplit>>(w, x, y, yStride, rowStart, rowEnd);

    protected override void MatVecQuartersCore(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int sliceStart, int quarter, int from, int to) =>
        TernaryDriver.Quarters<Avx512TernaryKernel.Dot512<BalancedSplit>>(w, x, y, yStride, sliceStart, quarter, from, to);

    public override ActivationRows Prepare(QuantizedActivations x, ref Memory.NativeBuffer? scratch) => Avx512TernaryKernel.InterleavedRows(x, ref scratch);
}
