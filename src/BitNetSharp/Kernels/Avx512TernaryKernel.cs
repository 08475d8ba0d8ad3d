using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using BitNetSharp.Quantization;

namespace BitNetSharp.Kernels;

/// <summary>
/// AVX-512BW: one 64-byte load holds two 128-weight blocks. After shift-and-mask, lanes 0–31 of code vector g
/// belong to block b (activations 32g..32g+31) and lanes 32–63 to block b+1, so each activation operand is two
/// 32-byte loads joined (vinserti64x4). vpmaddubsw pair sums accumulate in int16 for 16 two-block steps
/// (the same −32768 bound as AVX2) before vpmaddwd widens them. An odd last block takes the 256-bit path.
/// </summary>
public sealed unsafe class Avx512TernaryKernel : TernaryKernel
{
    public override string Name => "avx512";
    public override bool IsSupported => Avx512BW.IsSupported;

    protected override void MatMulCore(TernaryMatrix w, QuantizedActivations x, float* y, int yStride, int rowStart, int rowEnd) =>
        TernaryDriver.Run<Dot512>(w, x, y, yStride, rowStart, rowEnd);

    public readonly struct Dot512 : ITernaryRowDot
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector512<sbyte> Pair(sbyte* q) =>
            Vector512.Create(Vector256.Load(q), Vector256.Load(q + 128));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static int Dot(byte* w, sbyte* q, int blocks)
        {
            var mask = Vector512.Create((byte)3);
            var ones = Vector512.Create((short)1);
            var acc = Vector512<int>.Zero;
            int pairs = blocks >> 1;
            for (int p = 0; p < pairs;)
            {
                int end = Math.Min(pairs, p + Avx2TernaryKernel.Int16Blocks);
                var acc16 = Vector512<short>.Zero;
                for (; p < end; p++)
                {
                    var packed = Vector512.Load(w + p * 64);
                    sbyte* qb = q + p * 256;
                    var c0 = Avx512BW.ShiftRightLogical(packed.AsUInt16(), 6).AsByte() & mask;
                    var c1 = Avx512BW.ShiftRightLogical(packed.AsUInt16(), 4).AsByte() & mask;
                    var c2 = Avx512BW.ShiftRightLogical(packed.AsUInt16(), 2).AsByte() & mask;
                    var c3 = packed & mask;
                    var s01 = Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(c0, Pair(qb)), Avx512BW.MultiplyAddAdjacent(c1, Pair(qb + 32)));
                    var s23 = Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(c2, Pair(qb + 64)), Avx512BW.MultiplyAddAdjacent(c3, Pair(qb + 96)));
                    acc16 = Avx512BW.Add(acc16, Avx512BW.Add(s01, s23));
                }
                acc = Avx512F.Add(acc, Avx512BW.MultiplyAddAdjacent(acc16, ones));
            }
            int d = Vector512.Sum(acc);
            if ((blocks & 1) != 0)
                d += Avx2TernaryKernel.Dot256.Dot(w + (blocks - 1) * 32, q + (blocks - 1) * 128, 1);
            return d;
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Dot4(byte* w, sbyte* q0, sbyte* q1, sbyte* q2, sbyte* q3, int blocks, int* result)
        {
            var mask = Vector512.Create((byte)3);
            var ones = Vector512.Create((short)1);
            Vector512<int> a0 = default, a1 = default, a2 = default, a3 = default;
            int pairs = blocks >> 1;
            for (int p = 0; p < pairs;)
            {
                int end = Math.Min(pairs, p + Avx2TernaryKernel.Int16Blocks);
                Vector512<short> s0 = default, s1 = default, s2 = default, s3 = default;
                for (; p < end; p++)
                {
                    var packed = Vector512.Load(w + p * 64);
                    var c0 = Avx512BW.ShiftRightLogical(packed.AsUInt16(), 6).AsByte() & mask;
                    var c1 = Avx512BW.ShiftRightLogical(packed.AsUInt16(), 4).AsByte() & mask;
                    var c2 = Avx512BW.ShiftRightLogical(packed.AsUInt16(), 2).AsByte() & mask;
                    var c3 = packed & mask;
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

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector512<short> Block(Vector512<byte> c0, Vector512<byte> c1, Vector512<byte> c2, Vector512<byte> c3, sbyte* q) =>
            Avx512BW.Add(
                Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(c0, Pair(q)), Avx512BW.MultiplyAddAdjacent(c1, Pair(q + 32))),
                Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(c2, Pair(q + 64)), Avx512BW.MultiplyAddAdjacent(c3, Pair(q + 96))));
    }
}
