using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using BitNetSharp.Quantization;

namespace BitNetSharp.Kernels;

/// <summary>
/// AVX2: one 32-byte load gives the codes of a 128-weight block; shift-and-mask yields four vectors of 32
/// codes matching four contiguous 32-activation spans; vpmaddubsw (u8 code × s8 activation) makes int16 pair
/// sums. A pair sum lies in [−512, 508], so 16 blocks (64 pair sums per lane) accumulate in int16 without
/// overflow (worst case −32768) before one vpmaddwd widens them to int32.
/// </summary>
public sealed unsafe class Avx2TernaryKernel : TernaryKernel
{
    /// <summary>Blocks accumulated in int16 before widening: 16 blocks × 4 pair sums × (−512) = −32768.</summary>
    internal const int Int16Blocks = 16;

    public override string Name => "avx2";
    public override bool IsSupported => Avx2.IsSupported;

    protected override void MatMulCore(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int rowStart, int rowEnd) =>
        TernaryDriver.Run<Dot256>(w, x, y, yStride, rowStart, rowEnd);

    public readonly struct Dot256 : ITernaryRowDot
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static int Dot(byte* w, sbyte* q, int blocks)
        {
            var mask = Vector256.Create((byte)3);
            var ones = Vector256.Create((short)1);
            var acc = Vector256<int>.Zero;
            for (int b = 0; b < blocks;)
            {
                int end = Math.Min(blocks, b + Int16Blocks);
                var acc16 = Vector256<short>.Zero;
                for (; b < end; b++)
                {
                    if ((b & 1) == 0) TernaryKernel.PrefetchWeights(w + b * 32);
                    var packed = Avx.LoadVector256(w + b * 32);
                    sbyte* qb = q + b * 128;
                    var c0 = Avx2.ShiftRightLogical(packed.AsUInt16(), 6).AsByte() & mask;
                    var c1 = Avx2.ShiftRightLogical(packed.AsUInt16(), 4).AsByte() & mask;
                    var c2 = Avx2.ShiftRightLogical(packed.AsUInt16(), 2).AsByte() & mask;
                    var c3 = packed & mask;
                    var s01 = Avx2.Add(Avx2.MultiplyAddAdjacent(c0, Avx.LoadVector256(qb)), Avx2.MultiplyAddAdjacent(c1, Avx.LoadVector256(qb + 32)));
                    var s23 = Avx2.Add(Avx2.MultiplyAddAdjacent(c2, Avx.LoadVector256(qb + 64)), Avx2.MultiplyAddAdjacent(c3, Avx.LoadVector256(qb + 96)));
                    acc16 = Avx2.Add(acc16, Avx2.Add(s01, s23));
                }
                acc = Avx2.Add(acc, Avx2.MultiplyAddAdjacent(acc16, ones));
            }
            return Vector256.Sum(acc);
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

    protected override void MatMulCore(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int rowStart, int rowEnd) =>
        TernaryDriver.Run<DotVnni>(w, x, y, yStride, rowStart, rowEnd);

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
