using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using BitNetSharp.Kernels;
using BitNetSharp.Quantization;

namespace BitNetSharp.Diagnostics.Profiling;

/// <summary>
/// The AVX-512 kernels' weight side alone: the same 64-byte loads with the same prefetch and the same code extraction,
/// as many times per row as the real driver unpacks it, but no activation loads and no multiply-accumulate — the codes
/// are folded with XOR so the work is not optimized away. The driver unpacks a row once per 4-token tile with
/// <typeparamref name="TSplit"/>, and once per pair of the tokens left over (decode's one, two or three tokens, and a
/// prompt's last tokens past its tiles) with the one-shift split of <see cref="Avx512TernaryKernel.Dot512{TSplit}.DotLanesTimes4"/>,
/// whatever <typeparamref name="TSplit"/> is; an odd last 128-weight block is unpacked at 256 bits, as the kernel does.
/// (Before, leftover tokens were unpacked one at a time with <typeparamref name="TSplit"/> and the odd block not at all:
/// the share read twice the real one at two tokens, and about 0 at the tiny model's width of one block.)
/// Timing it against the real kernel on the same cache-resident matrix splits the kernel's time into unpacking and
/// multiply-accumulate. Not a product: its output is a checksum.
/// </summary>
public sealed unsafe class UnpackOnlyKernel<TSplit> : TernaryKernel where TSplit : ICodeSplit512
{
    public UnpackOnlyKernel(string name) => Name = name + "-unpack-only";

    public override string Name { get; }

    public override bool IsSupported => Avx512BW.IsSupported && (typeof(TSplit) == typeof(ShiftSplit) || Gfni.V512.IsSupported);

    /// <summary>How many times the driver unpacks each row at <paramref name="tokens"/> tokens: with the tile split
    /// (4-token tiles), and with the one-shift split (the rest, two tokens at a time).</summary>
    internal static (int Tiles, int Pairs) Passes(int tokens) => (tokens / 4, (tokens % 4 + 1) / 2);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    protected override void MatMulCore(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int rowStart, int rowEnd)
    {
        int blocks = w.PaddedCols / TernaryMatrix.BlockSize, pairs = blocks / 2;
        var (tilePasses, pairPasses) = Passes(x.Tokens);
        var m3 = Vector512.Create((byte)3);
        var m12 = Vector512.Create((byte)12);
        for (int n = rowStart; n < rowEnd; n++)
        {
            byte* row = w.Row(n);
            var acc = Vector512<byte>.Zero;
            var odd = Vector256<byte>.Zero;
            for (int pass = 0; pass < tilePasses + pairPasses; pass++)
            {
                if (pass < tilePasses)
                    for (int p = 0; p < pairs; p++)
                    {
                        PrefetchWeights(row + p * 64);
                        var packed = Vector512.Load(row + p * 64);
                        acc ^= TSplit.Code0(packed) ^ TSplit.Code1(packed) ^ TSplit.Code2(packed) ^ TSplit.Code3(packed);
                    }
                else
                    for (int p = 0; p < pairs; p++)
                    {
                        PrefetchWeights(row + p * 64);
                        var packed = Vector512.Load(row + p * 64);
                        var p4 = Avx512BW.ShiftRightLogical(packed.AsUInt16(), 4).AsByte();
                        acc ^= (p4 & m12) ^ (p4 & m3) ^ (packed & m12) ^ (packed & m3);
                    }
                if ((blocks & 1) != 0)
                {
                    var last = Vector256.Load(row + (blocks - 1) * 32);
                    var l4 = Avx2.ShiftRightLogical(last.AsUInt16(), 4).AsByte();
                    odd ^= (l4 & m12.GetLower()) ^ (l4 & m3.GetLower()) ^ (last & m12.GetLower()) ^ (last & m3.GetLower());
                }
            }
            *(int*)(y + n) = (acc.AsInt32() ^ Vector512.Create(odd, odd).AsInt32()).ToScalar(); // the checksum's bits, not a value
        }
    }
}
