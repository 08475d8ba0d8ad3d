using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.Arm;
using System.Runtime.Intrinsics.X86;
using BitNetSharp.Quantization;

namespace BitNetSharp.Kernels;

/// <summary>
/// One instruction-set variant of the binary {−1,+1} × int8 product (<see cref="BinaryMatrix"/> layout).
/// Each variant computes P = Σ_{bit=1} q exactly; then Σ s·q = 2P − Σq and the epilogue matches the ternary one.
/// Bits are expanded to 0/1 bytes (broadcast, byte shuffle, AND with the bit's mask, unsigned min with 1) so the
/// same u8×s8 multiply-add serves; activations stay in natural order.
/// </summary>
public abstract unsafe class BinaryKernel
{
    public abstract string Name { get; }
    public abstract bool IsSupported { get; }

    public void MatMul(BinaryMatrix w, QuantizedActivations x, float* y, int yStride, int rowStart, int rowEnd)
    {
        // The widths themselves: two that pad to one multiple of 128 (100 and 120) passed, the extra inputs dropped or read as 0.
        if (w.Cols != x.Cols)
            throw new ArgumentException($"Weight rows have {w.Cols} inputs but the activations have {x.Cols}.", nameof(x));
        if (rowStart < 0 || rowEnd > w.Rows || rowStart > rowEnd)
            throw new ArgumentOutOfRangeException(nameof(rowEnd), $"Row range [{rowStart}, {rowEnd}) is outside [0, {w.Rows}).");
        if (!IsSupported) throw new PlatformNotSupportedException($"Binary kernel '{Name}' is not supported on this CPU.");
        MatMulCore(w, x, y, yStride, rowStart, rowEnd);
    }

    protected abstract void MatMulCore(BinaryMatrix w, QuantizedActivations x, float* y, int yStride, int rowStart, int rowEnd);

    public override string ToString() => Name;

    protected static void Run<TDot>(BinaryMatrix w, QuantizedActivations x, float* y, int yStride, int rowStart, int rowEnd)
        where TDot : IBinaryRowDot
    {
        int blocks = w.PaddedCols / BinaryMatrix.BlockSize;
        for (int n = rowStart; n < rowEnd; n++)
        {
            byte* row = w.Row(n);
            float scale = w.RowScales[n];
            for (int t = 0; t < x.Tokens; t++)
            {
                int positive = TDot.Dot(row, x.Row(t), blocks);
                y[(long)t * yStride + n] = (float)(2 * positive - x.Sums[t]) / x.Scales[t] * scale;
            }
        }
    }
}

public unsafe interface IBinaryRowDot
{
    /// <summary>Σ of the activations whose weight bit is 1, over <paramref name="blocks"/> 128-column blocks.</summary>
    static abstract int Dot(byte* w, sbyte* q, int blocks);
}

public sealed unsafe class ReferenceBinaryKernel : BinaryKernel
{
    public override string Name => "reference";
    public override bool IsSupported => true;

    protected override void MatMulCore(BinaryMatrix w, QuantizedActivations x, float* y, int yStride, int rowStart, int rowEnd) =>
        Run<ScalarDot>(w, x, y, yStride, rowStart, rowEnd);

    public readonly struct ScalarDot : IBinaryRowDot
    {
        public static int Dot(byte* w, sbyte* q, int blocks)
        {
            int d = 0, cols = blocks * BinaryMatrix.BlockSize;
            for (int c = 0; c < cols; c++) d += ((w[c >> 3] >> (c & 7)) & 1) * q[c];
            return d;
        }
    }
}

public sealed unsafe class Avx2BinaryKernel : BinaryKernel
{
    public override string Name => "avx2";
    public override bool IsSupported => Avx2.IsSupported;

    protected override void MatMulCore(BinaryMatrix w, QuantizedActivations x, float* y, int yStride, int rowStart, int rowEnd) =>
        Run<Dot256>(w, x, y, yStride, rowStart, rowEnd);

    public readonly struct Dot256 : IBinaryRowDot
    {
        /// <summary>Pair sums lie in [−256, 254]; 4 per block × 16 blocks stays inside int16.</summary>
        private const int Int16Blocks = 16;

        public static int Dot(byte* w, sbyte* q, int blocks)
        {
            // vpshufb works within 128-bit lanes; the broadcast dword is in both, so lane 0 takes bytes 0,1 and lane 1 bytes 2,3.
            var spread = Vector256.Create((byte)0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
            var bit = Vector256.Create((byte)1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128);
            var one = Vector256.Create((byte)1);
            var ones16 = Vector256.Create((short)1);
            var acc = Vector256<int>.Zero;
            for (int b = 0; b < blocks;)
            {
                int end = Math.Min(blocks, b + Int16Blocks);
                var acc16 = Vector256<short>.Zero;
                for (; b < end; b++)
                {
                    for (int i = 0; i < 4; i++)
                    {
                        var bits = Vector256.Create(*(uint*)(w + b * 16 + i * 4)).AsByte();
                        var b01 = Avx2.Min(Avx2.Shuffle(bits, spread) & bit, one);
                        acc16 = Avx2.Add(acc16, Avx2.MultiplyAddAdjacent(b01, Avx.LoadVector256(q + b * 128 + i * 32)));
                    }
                }
                acc = Avx2.Add(acc, Avx2.MultiplyAddAdjacent(acc16, ones16));
            }
            return Vector256.Sum(acc);
        }
    }
}

public sealed unsafe class Avx512BinaryKernel : BinaryKernel
{
    public override string Name => "avx512";
    public override bool IsSupported => Avx512BW.IsSupported;

    protected override void MatMulCore(BinaryMatrix w, QuantizedActivations x, float* y, int yStride, int rowStart, int rowEnd) =>
        Run<Dot512>(w, x, y, yStride, rowStart, rowEnd);

    public readonly struct Dot512 : IBinaryRowDot
    {
        private const int Int16Blocks = 16;

        public static int Dot(byte* w, sbyte* q, int blocks)
        {
            var spread = Vector512.Create(
                Vector256.Create((byte)0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3),
                Vector256.Create((byte)4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7));
            var bit = Vector512.Create(0x8040201008040201UL).AsByte();
            var one = Vector512.Create((byte)1);
            var ones16 = Vector512.Create((short)1);
            var acc = Vector512<int>.Zero;
            for (int b = 0; b < blocks;)
            {
                int end = Math.Min(blocks, b + Int16Blocks);
                var acc16 = Vector512<short>.Zero;
                for (; b < end; b++)
                {
                    for (int i = 0; i < 2; i++)
                    {
                        var bits = Vector512.Create(*(ulong*)(w + b * 16 + i * 8)).AsByte();
                        var b01 = Avx512BW.Min(Avx512BW.Shuffle(bits, spread) & bit, one);
                        acc16 = Avx512BW.Add(acc16, Avx512BW.MultiplyAddAdjacent(b01, Vector512.Load(q + b * 128 + i * 64)));
                    }
                }
                acc = Avx512F.Add(acc, Avx512BW.MultiplyAddAdjacent(acc16, ones16));
            }
            return Vector512.Sum(acc);
        }
    }
}

public sealed unsafe class NeonBinaryKernel : BinaryKernel
{
    public override string Name => "neon";
    public override bool IsSupported => AdvSimd.Arm64.IsSupported;

    protected override void MatMulCore(BinaryMatrix w, QuantizedActivations x, float* y, int yStride, int rowStart, int rowEnd) =>
        Run<DotNeon>(w, x, y, yStride, rowStart, rowEnd);

    public readonly struct DotNeon : IBinaryRowDot
    {
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public static int Dot(byte* w, sbyte* q, int blocks)
        {
            var spread = Vector128.Create((byte)0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
            var bit = Vector128.Create(0x8040201008040201UL).AsByte();
            var one = Vector128.Create((byte)1);
            var acc = Vector128<int>.Zero;
            int groups = blocks * 8;
            for (int g = 0; g < groups; g++)
            {
                var bits = Vector128.Create(*(ushort*)(w + g * 2)).AsByte();
                var b01 = AdvSimd.Min(AdvSimd.Arm64.VectorTableLookup(bits, spread) & bit, one).AsSByte();
                var a = AdvSimd.LoadVector128(q + g * 16);
                acc = AdvSimd.AddPairwiseWideningAndAdd(acc, AdvSimd.MultiplyWideningLower(b01.GetLower(), a.GetLower()));
                acc = AdvSimd.AddPairwiseWideningAndAdd(acc, AdvSimd.MultiplyWideningUpper(b01, a));
            }
            return Vector128.Sum(acc);
        }
    }
}
