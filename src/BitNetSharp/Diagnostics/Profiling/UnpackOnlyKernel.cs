using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using BitNetSharp.Kernels;
using BitNetSharp.Quantization;

namespace BitNetSharp.Diagnostics.Profiling;

/// <summary>
/// The AVX-512 kernels' weight side alone: the same 64-byte loads with the same prefetch and the same code extraction
/// (<typeparamref name="TSplit"/>), as many times per row as the real driver unpacks it (once per 4-token tile and
/// once per leftover token), but no activation loads and no multiply-accumulate — the codes are folded with XOR so the
/// work is not optimized away. Timing it against the real kernel on the same cache-resident matrix splits the
/// kernel's time into unpacking and multiply-accumulate. Not a product: its output is a checksum.
/// </summary>
public sealed unsafe class UnpackOnlyKernel<TSplit> : TernaryKernel where TSplit : ICodeSplit512
{
    public UnpackOnlyKernel(string name) => Name = name + "-unpack-only";

    public override string Name { get; }

    public override bool IsSupported => Avx512BW.IsSupported && (typeof(TSplit) == typeof(ShiftSplit) || Gfni.V512.IsSupported);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    protected override void MatMulCore(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int rowStart, int rowEnd)
    {
        int pairs = w.PaddedCols / TernaryMatrix.BlockSize / 2;
        int passes = x.Tokens / 4 + x.Tokens % 4;
        for (int n = rowStart; n < rowEnd; n++)
        {
            byte* row = w.Row(n);
            var acc = Vector512<byte>.Zero;
            for (int pass = 0; pass < passes; pass++)
                for (int p = 0; p < pairs; p++)
                {
                    PrefetchWeights(row + p * 64);
                    var packed = Vector512.Load(row + p * 64);
                    acc ^= TSplit.Code0(packed) ^ TSplit.Code1(packed) ^ TSplit.Code2(packed) ^ TSplit.Code3(packed);
                }
            *(int*)(y + n) = acc.AsInt32().ToScalar(); // the checksum's bits, not a value
        }
    }
}
