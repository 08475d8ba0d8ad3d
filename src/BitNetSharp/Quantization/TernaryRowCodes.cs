using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace BitNetSharp.Quantization;

/// <summary>
/// Moves one row between "one 2-bit code per byte" (c = t+1 ∈ {0,1,2}, PaddedCols bytes) and the packed
/// runtime row of <see cref="TernaryMatrix"/>. Every source layout whose bit order differs from the runtime one
/// goes through these two steps: unpacking a source row into codes is simple per format, and the one shared
/// packer keeps the runtime bit order in a single place.
/// </summary>
internal static unsafe class TernaryRowCodes
{
    /// <summary>
    /// Packs <paramref name="codes"/> (length = a multiple of 128; padding already set to 1) into
    /// codes.Length/4 bytes at <paramref name="dst"/>. Returns false when some code is above 2; the bytes are
    /// written regardless so the caller can report where.
    /// </summary>
    [SkipLocalsInit]
    public static bool PackRow(ReadOnlySpan<byte> codes, byte* dst)
    {
        if (codes.Length % TernaryMatrix.BlockSize != 0)
            throw new ArgumentException($"A code row must be padded to a multiple of {TernaryMatrix.BlockSize}; got {codes.Length}.", nameof(codes));
        fixed (byte* c = codes)
        {
            int blocks = codes.Length / TernaryMatrix.BlockSize;
            if (Vector128.IsHardwareAccelerated)
            {
                var max = Vector128<byte>.Zero;
                for (int b = 0; b < blocks; b++)
                {
                    byte* src = c + b * TernaryMatrix.BlockSize;
                    byte* o = dst + b * TernaryMatrix.BlockBytes;
                    for (int h = 0; h < 32; h += 16)
                    {
                        var g0 = Vector128.Load(src + h);
                        var g1 = Vector128.Load(src + 32 + h);
                        var g2 = Vector128.Load(src + 64 + h);
                        var g3 = Vector128.Load(src + 96 + h);
                        max = Vector128.Max(max, Vector128.Max(Vector128.Max(g0, g1), Vector128.Max(g2, g3)));
                        var packed = Vector128.ShiftLeft(g0, 6) | Vector128.ShiftLeft(g1 & Vector128.Create((byte)3), 4)
                            | Vector128.ShiftLeft(g2 & Vector128.Create((byte)3), 2) | (g3 & Vector128.Create((byte)3));
                        packed.Store(o + h);
                    }
                }
                return !Vector128.GreaterThanAny(max, Vector128.Create((byte)2));
            }

            for (int b = 0; b < blocks; b++)
            {
                byte* src = c + b * TernaryMatrix.BlockSize;
                byte* o = dst + b * TernaryMatrix.BlockBytes;
                for (int p = 0; p < 32; p++)
                    o[p] = (byte)((src[p] << 6) | ((src[p + 32] & 3) << 4) | ((src[p + 64] & 3) << 2) | (src[p + 96] & 3));
            }
            return IndexOfInvalid(codes) < 0;
        }
    }

    /// <summary>Unpacks <paramref name="codes"/>.Length (a multiple of 128) codes from the packed row at <paramref name="src"/>.</summary>
    [SkipLocalsInit]
    public static void UnpackRow(byte* src, Span<byte> codes)
    {
        if (codes.Length % TernaryMatrix.BlockSize != 0)
            throw new ArgumentException($"A code row must be padded to a multiple of {TernaryMatrix.BlockSize}; got {codes.Length}.", nameof(codes));
        fixed (byte* c = codes)
        {
            int blocks = codes.Length / TernaryMatrix.BlockSize;
            if (Vector128.IsHardwareAccelerated)
            {
                var three = Vector128.Create((byte)3);
                for (int b = 0; b < blocks; b++)
                {
                    byte* i = src + b * TernaryMatrix.BlockBytes;
                    byte* o = c + b * TernaryMatrix.BlockSize;
                    for (int h = 0; h < 32; h += 16)
                    {
                        var v = Vector128.Load(i + h);
                        Vector128.ShiftRightLogical(v, 6).Store(o + h);
                        (Vector128.ShiftRightLogical(v, 4) & three).Store(o + 32 + h);
                        (Vector128.ShiftRightLogical(v, 2) & three).Store(o + 64 + h);
                        (v & three).Store(o + 96 + h);
                    }
                }
                return;
            }

            for (int b = 0; b < blocks; b++)
            {
                byte* i = src + b * TernaryMatrix.BlockBytes;
                byte* o = c + b * TernaryMatrix.BlockSize;
                for (int p = 0; p < 32; p++)
                {
                    int v = i[p];
                    o[p] = (byte)(v >> 6);
                    o[p + 32] = (byte)((v >> 4) & 3);
                    o[p + 64] = (byte)((v >> 2) & 3);
                    o[p + 96] = (byte)(v & 3);
                }
            }
        }
    }

    /// <summary>True when a packed byte range holds a code 3 somewhere (both bits of some pair set).</summary>
    public static bool ContainsCode3(ReadOnlySpan<byte> packed)
    {
        int i = 0;
        if (Vector128.IsHardwareAccelerated && packed.Length >= 16)
        {
            var acc = Vector128<byte>.Zero;
            ref byte start = ref System.Runtime.InteropServices.MemoryMarshal.GetReference(packed);
            for (; i <= packed.Length - 16; i += 16)
            {
                var v = Vector128.LoadUnsafe(ref start, (nuint)i);
                acc |= v & Vector128.ShiftRightLogical(v, 1);
            }
            if ((acc & Vector128.Create((byte)0x55)) != Vector128<byte>.Zero) return true;
        }
        for (; i < packed.Length; i++)
        {
            int v = packed[i];
            if ((v & (v >> 1) & 0x55) != 0) return true;
        }
        return false;
    }

    /// <summary>Index of the first code above 2, or −1.</summary>
    public static int IndexOfInvalid(ReadOnlySpan<byte> codes) => codes.IndexOfAnyInRange((byte)3, (byte)255);
}
