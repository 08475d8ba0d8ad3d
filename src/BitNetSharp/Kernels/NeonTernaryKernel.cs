using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.Arm;
using BitNetSharp.Quantization;

namespace BitNetSharp.Kernels;

/// <summary>
/// ARM64 AdvSimd: each 128-weight block is read as two 16-byte halves; shift-and-mask of a half gives the
/// codes of activations 32g + 16h … +15. Products are widened with smull/smull2 (|c·q| ≤ 256 fits int16) and
/// pairwise-accumulated into int32 with sadalp. Always decodes the portable 128/32 layout — the ARM-only
/// 64/16 layout of later bitnet.cpp builds is what broke its ARM output (FORMATS.md §2.5).
/// </summary>
public sealed unsafe class NeonTernaryKernel : TernaryKernel
{
    public override string Name => "neon";
    public override bool IsSupported => AdvSimd.Arm64.IsSupported;

    protected override void MatMulCore(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int rowStart, int rowEnd) =>
        TernaryDriver.Run<DotNeon>(w, x, y, yStride, rowStart, rowEnd);

    public readonly struct DotNeon : ITernaryRowDot
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector128<int> Mac(Vector128<int> acc, Vector128<byte> codes, sbyte* q)
        {
            var c = codes.AsSByte();
            var a = AdvSimd.LoadVector128(q);
            acc = AdvSimd.AddPairwiseWideningAndAdd(acc, AdvSimd.MultiplyWideningLower(c.GetLower(), a.GetLower()));
            return AdvSimd.AddPairwiseWideningAndAdd(acc, AdvSimd.MultiplyWideningUpper(c, a));
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector128<int> Block(Vector128<int> acc, byte* w, sbyte* q)
        {
            var mask = Vector128.Create((byte)3);
            for (int h = 0; h < 2; h++)
            {
                var packed = AdvSimd.LoadVector128(w + 16 * h);
                sbyte* qh = q + 16 * h;
                acc = Mac(acc, AdvSimd.ShiftRightLogical(packed, 6), qh);
                acc = Mac(acc, AdvSimd.ShiftRightLogical(packed, 4) & mask, qh + 32);
                acc = Mac(acc, AdvSimd.ShiftRightLogical(packed, 2) & mask, qh + 64);
                acc = Mac(acc, packed & mask, qh + 96);
            }
            return acc;
        }

        public static int Dot(byte* w, sbyte* q, int blocks)
        {
            var acc = Vector128<int>.Zero;
            for (int b = 0; b < blocks; b++) acc = Block(acc, w + b * 32, q + b * 128);
            return Vector128.Sum(acc);
        }

        public static void Dot4(byte* w, sbyte* q0, sbyte* q1, sbyte* q2, sbyte* q3, int blocks, int* result)
        {
            var mask = Vector128.Create((byte)3);
            Vector128<int> a0 = default, a1 = default, a2 = default, a3 = default;
            for (int b = 0; b < blocks; b++)
            {
                for (int h = 0; h < 2; h++)
                {
                    var packed = AdvSimd.LoadVector128(w + b * 32 + 16 * h);
                    var c0 = AdvSimd.ShiftRightLogical(packed, 6);
                    var c1 = AdvSimd.ShiftRightLogical(packed, 4) & mask;
                    var c2 = AdvSimd.ShiftRightLogical(packed, 2) & mask;
                    var c3 = packed & mask;
                    int o = b * 128 + 16 * h;
                    a0 = Mac(Mac(Mac(Mac(a0, c0, q0 + o), c1, q0 + o + 32), c2, q0 + o + 64), c3, q0 + o + 96);
                    a1 = Mac(Mac(Mac(Mac(a1, c0, q1 + o), c1, q1 + o + 32), c2, q1 + o + 64), c3, q1 + o + 96);
                    a2 = Mac(Mac(Mac(Mac(a2, c0, q2 + o), c1, q2 + o + 32), c2, q2 + o + 64), c3, q2 + o + 96);
                    a3 = Mac(Mac(Mac(Mac(a3, c0, q3 + o), c1, q3 + o + 32), c2, q3 + o + 64), c3, q3 + o + 96);
                }
            }
            result[0] = Vector128.Sum(a0);
            result[1] = Vector128.Sum(a1);
            result[2] = Vector128.Sum(a2);
            result[3] = Vector128.Sum(a3);
        }
    }
}

/// <summary>ARMv8.2 dot-product (sdot): four code×activation products per int32 lane per instruction.</summary>
public sealed unsafe class NeonDotProdTernaryKernel : TernaryKernel
{
    public override string Name => "neondot";
    public override bool IsSupported => Dp.IsSupported;

    protected override void MatMulCore(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int rowStart, int rowEnd) =>
        TernaryDriver.Run<DotSdot>(w, x, y, yStride, rowStart, rowEnd);

    public readonly struct DotSdot : ITernaryRowDot
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector128<int> Mac(Vector128<int> acc, Vector128<byte> codes, sbyte* q) =>
            Dp.DotProduct(acc, codes.AsSByte(), AdvSimd.LoadVector128(q));

        public static int Dot(byte* w, sbyte* q, int blocks)
        {
            var mask = Vector128.Create((byte)3);
            Vector128<int> a = default, b2 = default;
            for (int b = 0; b < blocks; b++)
            {
                for (int h = 0; h < 2; h++)
                {
                    var packed = AdvSimd.LoadVector128(w + b * 32 + 16 * h);
                    sbyte* qh = q + b * 128 + 16 * h;
                    a = Mac(a, AdvSimd.ShiftRightLogical(packed, 6), qh);
                    b2 = Mac(b2, AdvSimd.ShiftRightLogical(packed, 4) & mask, qh + 32);
                    a = Mac(a, AdvSimd.ShiftRightLogical(packed, 2) & mask, qh + 64);
                    b2 = Mac(b2, packed & mask, qh + 96);
                }
            }
            return Vector128.Sum(a + b2);
        }

        public static void Dot4(byte* w, sbyte* q0, sbyte* q1, sbyte* q2, sbyte* q3, int blocks, int* result)
        {
            var mask = Vector128.Create((byte)3);
            Vector128<int> a0 = default, a1 = default, a2 = default, a3 = default;
            for (int b = 0; b < blocks; b++)
            {
                for (int h = 0; h < 2; h++)
                {
                    var packed = AdvSimd.LoadVector128(w + b * 32 + 16 * h);
                    var c0 = AdvSimd.ShiftRightLogical(packed, 6);
                    var c1 = AdvSimd.ShiftRightLogical(packed, 4) & mask;
                    var c2 = AdvSimd.ShiftRightLogical(packed, 2) & mask;
                    var c3 = packed & mask;
                    int o = b * 128 + 16 * h;
                    a0 = Mac(Mac(Mac(Mac(a0, c0, q0 + o), c1, q0 + o + 32), c2, q0 + o + 64), c3, q0 + o + 96);
                    a1 = Mac(Mac(Mac(Mac(a1, c0, q1 + o), c1, q1 + o + 32), c2, q1 + o + 64), c3, q1 + o + 96);
                    a2 = Mac(Mac(Mac(Mac(a2, c0, q2 + o), c1, q2 + o + 32), c2, q2 + o + 64), c3, q2 + o + 96);
                    a3 = Mac(Mac(Mac(Mac(a3, c0, q3 + o), c1, q3 + o + 32), c2, q3 + o + 64), c3, q3 + o + 96);
                }
            }
            result[0] = Vector128.Sum(a0);
            result[1] = Vector128.Sum(a1);
            result[2] = Vector128.Sum(a2);
            result[3] = Vector128.Sum(a3);
        }
    }
}
