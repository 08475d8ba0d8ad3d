using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using BitNetSharp.Quantization;

namespace BitNetSharp.Kernels;

/// <summary>
/// AVX2: one 32-byte load gives the codes of a 128-weight block; shift-and-mask yields four vectors of 32
/// codes matching four contiguous 32-activation spans; vpmaddubsw (u8 code × s8 activation) makes int16 pair
/// sums. A pair sum lies in [−512, 508], so 16 blocks (64 pair sums per lane) accumulate in int16 without
/// overflow (worst case −32768) before one vpmaddwd widens them to int32. Decode takes eight rows at a time and
/// reduces their lanes together (<see cref="Dot256.LaneSums"/>), prefill two rows against a four-token tile, as the
/// AVX-512 kernel does.
/// </summary>
public sealed unsafe class Avx2TernaryKernel : TernaryKernel
{
    /// <summary>Blocks accumulated in int16 before widening: 16 blocks × 4 pair sums × (−512) = −32768.</summary>
    internal const int Int16Blocks = 16;

    public override string Name => "avx2";
    public override bool IsSupported => Avx2.IsSupported;

    protected override void MatMulCore(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int rowStart, int rowEnd) =>
        TernaryDriver.RunPairs<Dot256>(w, x, y, yStride, rowStart, rowEnd);

    protected override void MatVecQuartersCore(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int sliceStart, int quarter, int from, int to) =>
        TernaryDriver.Quarters<Dot256>(w, x, y, yStride, sliceStart, quarter, from, to);

    public readonly struct Dot256 : ITernaryRowPairDot
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static int Dot(byte* w, sbyte* q, int blocks) => Vector256.Sum(DotLanesTimes4(w, q, blocks)) >> 2;

        /// <summary>
        /// Four times Σ c·q over <paramref name="blocks"/> blocks, spread over eight int32 lanes (before the horizontal sum).
        /// One 16-bit shift per block instead of three: with p the packed bytes and p4 = p &gt;&gt; 4 (16-bit lanes: a byte's
        /// low four bits of p4 are its own high four), the codes go into vpmaddubsw as p4 &amp; 12 = 4·c₀, p4 &amp; 3 = c₁,
        /// p &amp; 12 = 4·c₂ and p &amp; 3 = c₃. Scale-4 and scale-1 pair sums keep separate int16 sums, which vpmaddwd widens
        /// by ×1 and ×4. A scale-4 pair sum lies in [−2048, 2032]: 16 of them (four 64-byte steps) reach at worst −32768.
        /// Five operations per block split the codes (seven with three shifts), and only one of them competes with the
        /// multiplies or the other shifts for a port: decode from memory 0.81 → 0.96 of a plain sum on Zen 4.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> DotLanesTimes4(byte* w, sbyte* q, int blocks)
        {
            var m3 = Vector256.Create((byte)3);
            var m12 = Vector256.Create((byte)12);
            var acc = Vector256<int>.Zero;
            byte* wp = w;
            byte* wEnd = w + (blocks >> 1) * 64;
            sbyte* qp = q;
            while (wp < wEnd)
            {
                byte* chunkEnd = wEnd - wp > ScaledSteps * 64 ? wp + ScaledSteps * 64 : wEnd;
                Vector256<short> s1 = default, s4 = default;
                for (; wp < chunkEnd; wp += 64, qp += 256)
                {
                    TernaryKernel.PrefetchWeights(wp);
                    ScaledBlock(Avx.LoadVector256(wp), qp, m3, m12, ref s1, ref s4);
                    ScaledBlock(Avx.LoadVector256(wp + 32), qp + 128, m3, m12, ref s1, ref s4);
                }
                acc = Avx2.Add(acc, Widen(s1, s4));
            }
            if ((blocks & 1) != 0)
            {
                Vector256<short> s1 = default, s4 = default;
                ScaledBlock(Avx.LoadVector256(wp), qp, m3, m12, ref s1, ref s4);
                acc = Avx2.Add(acc, Widen(s1, s4));
            }
            return acc;
        }

        /// <summary>64-byte steps per int16 chunk of the scaled sums: 4 steps × 2 blocks × 2 pair sums × (−2048) = −32768.</summary>
        private const int ScaledSteps = 4;

        /// <summary>One block (32 packed bytes, 128 activations) into the scale-1 and scale-4 int16 sums.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static void ScaledBlock(Vector256<byte> p, sbyte* q, Vector256<byte> m3, Vector256<byte> m12, ref Vector256<short> s1, ref Vector256<short> s4)
        {
            var p4 = Avx2.ShiftRightLogical(p.AsUInt16(), 4).AsByte();
            s4 = Avx2.Add(s4, Avx2.Add(Avx2.MultiplyAddAdjacent(p4 & m12, Avx.LoadVector256(q)), Avx2.MultiplyAddAdjacent(p & m12, Avx.LoadVector256(q + 64))));
            s1 = Avx2.Add(s1, Avx2.Add(Avx2.MultiplyAddAdjacent(p4 & m3, Avx.LoadVector256(q + 32)), Avx2.MultiplyAddAdjacent(p & m3, Avx.LoadVector256(q + 96))));
        }

        /// <summary>4·(scale-1 sums) + (scale-4 sums), widened to int32: four times the dot.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector256<int> Widen(Vector256<short> s1, Vector256<short> s4) =>
            Avx2.Add(Avx2.MultiplyAddAdjacent(s4, Vector256.Create((short)1)), Avx2.MultiplyAddAdjacent(s1, Vector256.Create((short)4)));

        /// <summary>
        /// One token against eight consecutive rows, read one after another (one stream through memory); their lane
        /// sums are reduced together (<see cref="LaneSums"/>) instead of eight horizontal sums, and the caller's
        /// epilogue is one vector.
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
        }

        /// <summary>
        /// One token against four rows read side by side from four far-apart places (<see cref="TernaryKernel.WeightStreams"/>),
        /// in <see cref="DotLanesTimes4"/>'s split and int16 chunks, no software prefetch (the hardware prefetchers follow
        /// the four streams). Exact integer sums, so the same results as <see cref="DotRows8"/>.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        /// <summary>Two tokens: two <see cref="DotRows4Streams"/> passes, the second on rows then in L1 (sixteen 256-bit
        /// registers do not hold both tokens' sums and activations).</summary>
        public static void DotRows4Streams2(byte* w, long streamBytes, sbyte* q0, sbyte* q1, int blocks, int* result)
        {
            DotRows4Streams(w, streamBytes, q0, blocks, result);
            DotRows4Streams(w, streamBytes, q1, blocks, result + 4);
        }

        public static void DotRows4Streams(byte* w, long streamBytes, sbyte* q, int blocks, int* result)
        {
            var m3 = Vector256.Create((byte)3);
            var m12 = Vector256.Create((byte)12);
            byte* w0 = w, w1 = w + streamBytes, w2 = w1 + streamBytes, w3 = w2 + streamBytes;
            Vector256<int> a0 = default, a1 = default, a2 = default, a3 = default;
            long end = (long)(blocks >> 1) * 64;
            long o = 0;
            while (o < end)
            {
                long chunkEnd = Math.Min(end, o + ScaledSteps * 64);
                Vector256<short> s10 = default, s40 = default, s11 = default, s41 = default, s12 = default, s42 = default, s13 = default, s43 = default;
                for (; o < chunkEnd; o += 64)
                {
                    sbyte* qp = q + 4 * o;
                    ScaledBlock(Avx.LoadVector256(w0 + o), qp, m3, m12, ref s10, ref s40);
                    ScaledBlock(Avx.LoadVector256(w1 + o), qp, m3, m12, ref s11, ref s41);
                    ScaledBlock(Avx.LoadVector256(w2 + o), qp, m3, m12, ref s12, ref s42);
                    ScaledBlock(Avx.LoadVector256(w3 + o), qp, m3, m12, ref s13, ref s43);
                    ScaledBlock(Avx.LoadVector256(w0 + o + 32), qp + 128, m3, m12, ref s10, ref s40);
                    ScaledBlock(Avx.LoadVector256(w1 + o + 32), qp + 128, m3, m12, ref s11, ref s41);
                    ScaledBlock(Avx.LoadVector256(w2 + o + 32), qp + 128, m3, m12, ref s12, ref s42);
                    ScaledBlock(Avx.LoadVector256(w3 + o + 32), qp + 128, m3, m12, ref s13, ref s43);
                }
                a0 = Avx2.Add(a0, Widen(s10, s40)); a1 = Avx2.Add(a1, Widen(s11, s41));
                a2 = Avx2.Add(a2, Widen(s12, s42)); a3 = Avx2.Add(a3, Widen(s13, s43));
            }
            if ((blocks & 1) != 0)
            {
                sbyte* qp = q + 4 * o;
                Vector256<short> s10 = default, s40 = default, s11 = default, s41 = default, s12 = default, s42 = default, s13 = default, s43 = default;
                ScaledBlock(Avx.LoadVector256(w0 + o), qp, m3, m12, ref s10, ref s40);
                ScaledBlock(Avx.LoadVector256(w1 + o), qp, m3, m12, ref s11, ref s41);
                ScaledBlock(Avx.LoadVector256(w2 + o), qp, m3, m12, ref s12, ref s42);
                ScaledBlock(Avx.LoadVector256(w3 + o), qp, m3, m12, ref s13, ref s43);
                a0 = Avx2.Add(a0, Widen(s10, s40)); a1 = Avx2.Add(a1, Widen(s11, s41));
                a2 = Avx2.Add(a2, Widen(s12, s42)); a3 = Avx2.Add(a3, Widen(s13, s43));
            }
            var lanes = LaneSums(a0, a1, a2, a3, a0, a1, a2, a3);
            Avx2.ShiftRightArithmetic(lanes.GetLower(), 2).Store(result);
        }

        /// <summary><see cref="DotLanesTimes4"/> for two tokens: each block's codes are split once and used for both.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void DotLanes2Times4(byte* w, sbyte* q0, sbyte* q1, int blocks, out Vector256<int> lanes0, out Vector256<int> lanes1)
        {
            var m3 = Vector256.Create((byte)3);
            var m12 = Vector256.Create((byte)12);
            Vector256<int> a0 = default, a1 = default;
            byte* wp = w;
            byte* wEnd = w + blocks * 32;
            long o = 0;
            while (wp < wEnd)
            {
                byte* chunkEnd = wEnd - wp > 2 * ScaledSteps * 32 ? wp + 2 * ScaledSteps * 32 : wEnd;
                Vector256<short> s1 = default, s4 = default, t1 = default, t4 = default;
                for (; wp < chunkEnd; wp += 32, o += 128)
                {
                    if ((o & 128) == 0) TernaryKernel.PrefetchWeights(wp);
                    var p = Avx.LoadVector256(wp);
                    var p4 = Avx2.ShiftRightLogical(p.AsUInt16(), 4).AsByte();
                    var c0 = p4 & m12; var c1 = p4 & m3; var c2 = p & m12; var c3 = p & m3;
                    s4 = Avx2.Add(s4, Avx2.Add(Avx2.MultiplyAddAdjacent(c0, Avx.LoadVector256(q0 + o)), Avx2.MultiplyAddAdjacent(c2, Avx.LoadVector256(q0 + o + 64))));
                    s1 = Avx2.Add(s1, Avx2.Add(Avx2.MultiplyAddAdjacent(c1, Avx.LoadVector256(q0 + o + 32)), Avx2.MultiplyAddAdjacent(c3, Avx.LoadVector256(q0 + o + 96))));
                    t4 = Avx2.Add(t4, Avx2.Add(Avx2.MultiplyAddAdjacent(c0, Avx.LoadVector256(q1 + o)), Avx2.MultiplyAddAdjacent(c2, Avx.LoadVector256(q1 + o + 64))));
                    t1 = Avx2.Add(t1, Avx2.Add(Avx2.MultiplyAddAdjacent(c1, Avx.LoadVector256(q1 + o + 32)), Avx2.MultiplyAddAdjacent(c3, Avx.LoadVector256(q1 + o + 96))));
                }
                a0 = Avx2.Add(a0, Widen(s1, s4));
                a1 = Avx2.Add(a1, Widen(t1, t4));
            }
            lanes0 = a0;
            lanes1 = a1;
        }

        /// <summary><see cref="DotRows8"/> for two tokens: result[r] with <paramref name="q0"/>, result[8 + r] with <paramref name="q1"/>.</summary>
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
        }

        public static bool HasDotRows8x3 => true;

        /// <summary>
        /// <see cref="DotLanes2Times4"/> for three tokens: each block's codes are split once and used three times. Twelve
        /// vpmaddubsw a block whatever the split; what three at once saves is the second split and load of the weights: on the
        /// Zen 2 EPYC (one thread, 2560-wide rows, one process, alternating) 13.5 against 14.4 cycles a block with the rows in
        /// L2, 14.0 against 15.6 from memory, for two tokens and then one.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void DotLanes3Times4(byte* w, sbyte* q0, sbyte* q1, sbyte* q2, int blocks, out Vector256<int> lanes0, out Vector256<int> lanes1, out Vector256<int> lanes2)
        {
            var m3 = Vector256.Create((byte)3);
            var m12 = Vector256.Create((byte)12);
            Vector256<int> a0 = default, a1 = default, a2 = default;
            byte* wp = w;
            byte* wEnd = w + blocks * 32;
            long o = 0;
            while (wp < wEnd)
            {
                byte* chunkEnd = wEnd - wp > 2 * ScaledSteps * 32 ? wp + 2 * ScaledSteps * 32 : wEnd;
                Vector256<short> s1 = default, s4 = default, t1 = default, t4 = default, u1 = default, u4 = default;
                for (; wp < chunkEnd; wp += 32, o += 128)
                {
                    if ((o & 128) == 0) TernaryKernel.PrefetchWeights(wp);
                    var p = Avx.LoadVector256(wp);
                    var p4 = Avx2.ShiftRightLogical(p.AsUInt16(), 4).AsByte();
                    var c0 = p4 & m12; var c1 = p4 & m3; var c2 = p & m12; var c3 = p & m3;
                    s4 = Avx2.Add(s4, Avx2.Add(Avx2.MultiplyAddAdjacent(c0, Avx.LoadVector256(q0 + o)), Avx2.MultiplyAddAdjacent(c2, Avx.LoadVector256(q0 + o + 64))));
                    s1 = Avx2.Add(s1, Avx2.Add(Avx2.MultiplyAddAdjacent(c1, Avx.LoadVector256(q0 + o + 32)), Avx2.MultiplyAddAdjacent(c3, Avx.LoadVector256(q0 + o + 96))));
                    t4 = Avx2.Add(t4, Avx2.Add(Avx2.MultiplyAddAdjacent(c0, Avx.LoadVector256(q1 + o)), Avx2.MultiplyAddAdjacent(c2, Avx.LoadVector256(q1 + o + 64))));
                    t1 = Avx2.Add(t1, Avx2.Add(Avx2.MultiplyAddAdjacent(c1, Avx.LoadVector256(q1 + o + 32)), Avx2.MultiplyAddAdjacent(c3, Avx.LoadVector256(q1 + o + 96))));
                    u4 = Avx2.Add(u4, Avx2.Add(Avx2.MultiplyAddAdjacent(c0, Avx.LoadVector256(q2 + o)), Avx2.MultiplyAddAdjacent(c2, Avx.LoadVector256(q2 + o + 64))));
                    u1 = Avx2.Add(u1, Avx2.Add(Avx2.MultiplyAddAdjacent(c1, Avx.LoadVector256(q2 + o + 32)), Avx2.MultiplyAddAdjacent(c3, Avx.LoadVector256(q2 + o + 96))));
                }
                a0 = Avx2.Add(a0, Widen(s1, s4));
                a1 = Avx2.Add(a1, Widen(t1, t4));
                a2 = Avx2.Add(a2, Widen(u1, u4));
            }
            lanes0 = a0;
            lanes1 = a1;
            lanes2 = a2;
        }

        /// <summary><see cref="DotRows8"/> for three tokens (<see cref="ITernaryRowPairDot.DotRows8x3"/>).</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void DotRows8x3(byte* w, long rowBytes, sbyte* q0, sbyte* q1, sbyte* q2, int blocks, int* result)
        {
            DotLanes3Times4(w, q0, q1, q2, blocks, out var a0, out var b0, out var c0);
            DotLanes3Times4(w + rowBytes, q0, q1, q2, blocks, out var a1, out var b1, out var c1);
            DotLanes3Times4(w + 2 * rowBytes, q0, q1, q2, blocks, out var a2, out var b2, out var c2);
            DotLanes3Times4(w + 3 * rowBytes, q0, q1, q2, blocks, out var a3, out var b3, out var c3);
            DotLanes3Times4(w + 4 * rowBytes, q0, q1, q2, blocks, out var a4, out var b4, out var c4);
            DotLanes3Times4(w + 5 * rowBytes, q0, q1, q2, blocks, out var a5, out var b5, out var c5);
            DotLanes3Times4(w + 6 * rowBytes, q0, q1, q2, blocks, out var a6, out var b6, out var c6);
            DotLanes3Times4(w + 7 * rowBytes, q0, q1, q2, blocks, out var a7, out var b7, out var c7);
            Avx2.ShiftRightArithmetic(LaneSums(a0, a1, a2, a3, a4, a5, a6, a7), 2).Store(result);
            Avx2.ShiftRightArithmetic(LaneSums(b0, b1, b2, b3, b4, b5, b6, b7), 2).Store(result + 8);
            Avx2.ShiftRightArithmetic(LaneSums(c0, c1, c2, c3, c4, c5, c6, c7), 2).Store(result + 16);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Dot4(byte* w, sbyte* q0, sbyte* q1, sbyte* q2, sbyte* q3, int blocks, int* result)
        {
            var mask = Vector256.Create((byte)3);
            var ones = Vector256.Create((short)1);
            Vector256<int> a0 = default, a1 = default, a2 = default, a3 = default;
            for (int b = 0; b < blocks;)
            {
                int end = Math.Min(blocks, b + Int16Blocks);
                Vector256<short> s0 = default, s1 = default, s2 = default, s3 = default;
                for (; b < end; b++)
                {
                    if ((b & 1) == 0) TernaryKernel.PrefetchWeights(w + b * 32);
                    var packed = Avx.LoadVector256(w + b * 32);
                    var c0 = Avx2.ShiftRightLogical(packed.AsUInt16(), 6).AsByte() & mask;
                    var c1 = Avx2.ShiftRightLogical(packed.AsUInt16(), 4).AsByte() & mask;
                    var c2 = Avx2.ShiftRightLogical(packed.AsUInt16(), 2).AsByte() & mask;
                    var c3 = packed & mask;
                    int o = b * 128;
                    s0 = Avx2.Add(s0, Block(c0, c1, c2, c3, q0 + o));
                    s1 = Avx2.Add(s1, Block(c0, c1, c2, c3, q1 + o));
                    s2 = Avx2.Add(s2, Block(c0, c1, c2, c3, q2 + o));
                    s3 = Avx2.Add(s3, Block(c0, c1, c2, c3, q3 + o));
                }
                a0 = Avx2.Add(a0, Avx2.MultiplyAddAdjacent(s0, ones));
                a1 = Avx2.Add(a1, Avx2.MultiplyAddAdjacent(s1, ones));
                a2 = Avx2.Add(a2, Avx2.MultiplyAddAdjacent(s2, ones));
                a3 = Avx2.Add(a3, Avx2.MultiplyAddAdjacent(s3, ones));
            }
            result[0] = Vector256.Sum(a0);
            result[1] = Vector256.Sum(a1);
            result[2] = Vector256.Sum(a2);
            result[3] = Vector256.Sum(a3);
        }

        /// <summary>
        /// Two rows × four tokens (result[2j + r], row r and token j), one code group at a time: both rows' codes of
        /// the group, then each token's 32 activations loaded once and multiplied against both. Eight int16 sums, two
        /// packed blocks, two code vectors and one activation vector fit the sixteen 256-bit registers.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Dot2x4(byte* w0, byte* w1, sbyte* q0, sbyte* q1, sbyte* q2, sbyte* q3, int blocks, int* result)
        {
            var ones = Vector256.Create((short)1);
            Vector256<int> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
            for (int b = 0; b < blocks;)
            {
                int end = Math.Min(blocks, b + Int16Blocks);
                Vector256<short> s0 = default, s1 = default, s2 = default, s3 = default, t0 = default, t1 = default, t2 = default, t3 = default;
                for (; b < end; b++)
                {
                    if ((b & 1) == 0)
                    {
                        TernaryKernel.PrefetchWeights(w0 + b * 32);
                        TernaryKernel.PrefetchWeights(w1 + b * 32);
                    }
                    var pa = Avx.LoadVector256(w0 + b * 32);
                    var pb = Avx.LoadVector256(w1 + b * 32);
                    int o = b * 128;
                    Group(Code(pa, 6), Code(pb, 6), q0 + o, q1 + o, q2 + o, q3 + o, ref s0, ref s1, ref s2, ref s3, ref t0, ref t1, ref t2, ref t3);
                    Group(Code(pa, 4), Code(pb, 4), q0 + o + 32, q1 + o + 32, q2 + o + 32, q3 + o + 32, ref s0, ref s1, ref s2, ref s3, ref t0, ref t1, ref t2, ref t3);
                    Group(Code(pa, 2), Code(pb, 2), q0 + o + 64, q1 + o + 64, q2 + o + 64, q3 + o + 64, ref s0, ref s1, ref s2, ref s3, ref t0, ref t1, ref t2, ref t3);
                    Group(pa & Vector256.Create((byte)3), pb & Vector256.Create((byte)3), q0 + o + 96, q1 + o + 96, q2 + o + 96, q3 + o + 96, ref s0, ref s1, ref s2, ref s3, ref t0, ref t1, ref t2, ref t3);
                }
                a0 = Avx2.Add(a0, Avx2.MultiplyAddAdjacent(s0, ones)); b0 = Avx2.Add(b0, Avx2.MultiplyAddAdjacent(t0, ones));
                a1 = Avx2.Add(a1, Avx2.MultiplyAddAdjacent(s1, ones)); b1 = Avx2.Add(b1, Avx2.MultiplyAddAdjacent(t1, ones));
                a2 = Avx2.Add(a2, Avx2.MultiplyAddAdjacent(s2, ones)); b2 = Avx2.Add(b2, Avx2.MultiplyAddAdjacent(t2, ones));
                a3 = Avx2.Add(a3, Avx2.MultiplyAddAdjacent(s3, ones)); b3 = Avx2.Add(b3, Avx2.MultiplyAddAdjacent(t3, ones));
            }
            LaneSums(a0, b0, a1, b1, a2, b2, a3, b3).Store(result);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector256<byte> Code(Vector256<byte> packed, [System.Diagnostics.CodeAnalysis.ConstantExpected] byte shift) =>
            Avx2.ShiftRightLogical(packed.AsUInt16(), shift).AsByte() & Vector256.Create((byte)3);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static void Group(Vector256<byte> c, Vector256<byte> d, sbyte* x0, sbyte* x1, sbyte* x2, sbyte* x3,
            ref Vector256<short> s0, ref Vector256<short> s1, ref Vector256<short> s2, ref Vector256<short> s3,
            ref Vector256<short> t0, ref Vector256<short> t1, ref Vector256<short> t2, ref Vector256<short> t3)
        {
            var x = Avx.LoadVector256(x0);
            s0 = Avx2.Add(s0, Avx2.MultiplyAddAdjacent(c, x)); t0 = Avx2.Add(t0, Avx2.MultiplyAddAdjacent(d, x));
            x = Avx.LoadVector256(x1);
            s1 = Avx2.Add(s1, Avx2.MultiplyAddAdjacent(c, x)); t1 = Avx2.Add(t1, Avx2.MultiplyAddAdjacent(d, x));
            x = Avx.LoadVector256(x2);
            s2 = Avx2.Add(s2, Avx2.MultiplyAddAdjacent(c, x)); t2 = Avx2.Add(t2, Avx2.MultiplyAddAdjacent(d, x));
            x = Avx.LoadVector256(x3);
            s3 = Avx2.Add(s3, Avx2.MultiplyAddAdjacent(c, x)); t3 = Avx2.Add(t3, Avx2.MultiplyAddAdjacent(d, x));
        }

        /// <summary>
        /// The sums of the lanes of eight vectors, in their order, as one vector: two rounds of pairwise horizontal adds
        /// leave each vector's four partial sums per 128-bit half, and one cross-half add finishes them (about 10
        /// operations where eight separate horizontal sums take about 40). Integer sums, so the order does not change them.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> LaneSums(Vector256<int> v0, Vector256<int> v1, Vector256<int> v2, Vector256<int> v3,
            Vector256<int> v4, Vector256<int> v5, Vector256<int> v6, Vector256<int> v7)
        {
            // Per half: [v0 pair, v0 pair, v1 pair, v1 pair], then [v0, v1, v2, v3] partial sums.
            var h0123 = Avx2.HorizontalAdd(Avx2.HorizontalAdd(v0, v1), Avx2.HorizontalAdd(v2, v3));
            var h4567 = Avx2.HorizontalAdd(Avx2.HorizontalAdd(v4, v5), Avx2.HorizontalAdd(v6, v7));
            return Avx2.Add(Avx2.Permute2x128(h0123, h4567, 0x20), Avx2.Permute2x128(h0123, h4567, 0x31));
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector256<short> Block(Vector256<byte> c0, Vector256<byte> c1, Vector256<byte> c2, Vector256<byte> c3, sbyte* q) =>
            Avx2.Add(
                Avx2.Add(Avx2.MultiplyAddAdjacent(c0, Avx.LoadVector256(q)), Avx2.MultiplyAddAdjacent(c1, Avx.LoadVector256(q + 32))),
                Avx2.Add(Avx2.MultiplyAddAdjacent(c2, Avx.LoadVector256(q + 64)), Avx2.MultiplyAddAdjacent(c3, Avx.LoadVector256(q + 96))));
    }
}

/// <summary>
/// AVX-VNNI (VEX vpdpbusd on 256-bit registers): the u8×s8 dot of four bytes accumulates straight into int32,
/// so there is no int16 stage to bound. .NET 10 exposes VNNI only at 128/256 bits (no 512-bit vpdpbusd), so
/// this is the VNNI variant on AVX-512 CPUs too.
/// </summary>
public sealed unsafe class AvxVnniTernaryKernel : TernaryKernel
{
    public override string Name => "avxvnni";
    public override bool IsSupported => AvxVnni.IsSupported;

    /// <summary>
    /// Four or more tokens (prefill, batches): the VNNI tiles. Fewer (decode): the AVX2 kernel's eight-row and
    /// four-stream decode (<see cref="Avx2TernaryKernel.Dot256"/>), which read weights faster than the VNNI row loop:
    /// on the Zen 5 EPYC with AVX-512 off (`DOTNET_EnableAVX512=0 BITNET_KERNEL=avxvnni|avx2 bitnet profile --synthetic
    /// 2b4t -t 1 -n 32`, two rounds) the projections read 20.4–22.4 GB/s with the VNNI rows against 22.7–23.5 with it.
    /// Exact integer sums both ways, so the same floats.
    /// </summary>
    protected override void MatMulCore(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int rowStart, int rowEnd)
    {
        if (x.Tokens < 4) TernaryDriver.RunPairs<Avx2TernaryKernel.Dot256>(w, x, y, yStride, rowStart, rowEnd);
        else TernaryDriver.Run<DotVnni>(w, x, y, yStride, rowStart, rowEnd);
    }

    protected override void MatVecQuartersCore(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int sliceStart, int quarter, int from, int to) =>
        TernaryDriver.Quarters<Avx2TernaryKernel.Dot256>(w, x, y, yStride, sliceStart, quarter, from, to);

    public readonly struct DotVnni : ITernaryRowDot
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static int Dot(byte* w, sbyte* q, int blocks)
        {
            // Four accumulators: vpdpbusd has a multi-cycle latency, one chain per code group keeps the units busy.
            var mask = Vector256.Create((byte)3);
            Vector256<int> a0 = default, a1 = default, a2 = default, a3 = default;
            for (int b = 0; b < blocks; b++)
            {
                if ((b & 1) == 0) TernaryKernel.PrefetchWeights(w + b * 32);
                var packed = Avx.LoadVector256(w + b * 32);
                sbyte* qb = q + b * 128;
                a0 = AvxVnni.MultiplyWideningAndAdd(a0, Avx2.ShiftRightLogical(packed.AsUInt16(), 6).AsByte() & mask, Avx.LoadVector256(qb));
                a1 = AvxVnni.MultiplyWideningAndAdd(a1, Avx2.ShiftRightLogical(packed.AsUInt16(), 4).AsByte() & mask, Avx.LoadVector256(qb + 32));
                a2 = AvxVnni.MultiplyWideningAndAdd(a2, Avx2.ShiftRightLogical(packed.AsUInt16(), 2).AsByte() & mask, Avx.LoadVector256(qb + 64));
                a3 = AvxVnni.MultiplyWideningAndAdd(a3, packed & mask, Avx.LoadVector256(qb + 96));
            }
            return Vector256.Sum(Avx2.Add(Avx2.Add(a0, a1), Avx2.Add(a2, a3)));
        }

        /// <summary>
        /// Four tokens, two accumulators each (codes 0 and 2 into one, 1 and 3 into the other): vpdpbusd's latency
        /// with one accumulator per token (four dependent products per block, four chains) held the kernel to ~45 % of
        /// its throughput at 8 tokens; eight chains of two keep both units busy. Integer sums, so the same results.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Dot4(byte* w, sbyte* q0, sbyte* q1, sbyte* q2, sbyte* q3, int blocks, int* result)
        {
            var mask = Vector256.Create((byte)3);
            Vector256<int> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
            for (int b = 0; b < blocks; b++)
            {
                if ((b & 1) == 0) TernaryKernel.PrefetchWeights(w + b * 32);
                var packed = Avx.LoadVector256(w + b * 32);
                var c0 = Avx2.ShiftRightLogical(packed.AsUInt16(), 6).AsByte() & mask;
                var c1 = Avx2.ShiftRightLogical(packed.AsUInt16(), 4).AsByte() & mask;
                var c2 = Avx2.ShiftRightLogical(packed.AsUInt16(), 2).AsByte() & mask;
                var c3 = packed & mask;
                int o = b * 128;
                Block(ref a0, ref b0, c0, c1, c2, c3, q0 + o);
                Block(ref a1, ref b1, c0, c1, c2, c3, q1 + o);
                Block(ref a2, ref b2, c0, c1, c2, c3, q2 + o);
                Block(ref a3, ref b3, c0, c1, c2, c3, q3 + o);
            }
            result[0] = Vector256.Sum(Avx2.Add(a0, b0));
            result[1] = Vector256.Sum(Avx2.Add(a1, b1));
            result[2] = Vector256.Sum(Avx2.Add(a2, b2));
            result[3] = Vector256.Sum(Avx2.Add(a3, b3));
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static void Block(ref Vector256<int> even, ref Vector256<int> odd, Vector256<byte> c0, Vector256<byte> c1, Vector256<byte> c2, Vector256<byte> c3, sbyte* q)
        {
            even = AvxVnni.MultiplyWideningAndAdd(even, c0, Avx.LoadVector256(q));
            odd = AvxVnni.MultiplyWideningAndAdd(odd, c1, Avx.LoadVector256(q + 32));
            even = AvxVnni.MultiplyWideningAndAdd(even, c2, Avx.LoadVector256(q + 64));
            odd = AvxVnni.MultiplyWideningAndAdd(odd, c3, Avx.LoadVector256(q + 96));
        }
    }
}
