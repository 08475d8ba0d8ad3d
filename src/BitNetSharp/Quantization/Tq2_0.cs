using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace BitNetSharp.Quantization;

/// <summary>
/// ggml TQ2_0 (type 35, FORMATS.md §2.2): blocks of 256 weights, 66 bytes each — qs[64] of 2-bit codes, then
/// the block scale d as little-endian fp16. Weight e of a block is code (qs[(e/128)·32 + e%32] >> 2·((e%128)/32)) & 3,
/// value (code − 1)·d.
/// <para>
/// Each half block (128 weights, 32 bytes) is one runtime block of <see cref="TernaryMatrix"/> with the four
/// bit pairs of every byte in the opposite order (TQ2_0 puts the first 32 weights in the low pair, the runtime
/// layout in the high pair), so decoding is a per-byte pair reversal through a 256-entry table.
/// </para>
/// </summary>
public static unsafe class Tq2_0
{
    public const int BlockWeights = 256;
    public const int BlockBytes = 66;
    private const int QsBytes = 64;

    /// <summary>Byte b with its four 2-bit pairs in reverse order; its own inverse.</summary>
    private static readonly byte[] PairReversed = BuildPairReversal();

    /// <summary>Bytes of a rows × cols TQ2_0 tensor; cols must be a multiple of 256.</summary>
    public static long ByteLength(int rows, int cols)
    {
        RequireBlockColumns(cols);
        return (long)rows * (cols / BlockWeights) * BlockBytes;
    }

    /// <summary>Decodes a TQ2_0 tensor (ne1 = rows, ne0 = cols) into a fresh runtime matrix with one scale per row.</summary>
    /// <exception cref="InvalidDataException">A code 3, a NaN/infinite block scale, or blocks of one row with different scales.</exception>
    public static TernaryMatrix Decode(ReadOnlySpan<byte> data, int rows, int cols)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rows);
        long expected = ByteLength(rows, cols);
        if (data.Length != expected)
            throw new ArgumentException($"A {rows}×{cols} TQ2_0 tensor is {expected} bytes; got {data.Length}.", nameof(data));

        int blocksPerRow = cols / BlockWeights;
        int srcRowBytes = blocksPerRow * BlockBytes;
        var scales = new BlockScaleCollector("TQ2_0", rows);
        var m = TernaryMatrix.Allocate(rows, cols);
        try
        {
            fixed (byte* table = PairReversed)
            fixed (byte* src0 = data)
            {
                for (int r = 0; r < rows; r++)
                {
                    scales.BeginRow(r);
                    byte* src = src0 + (long)r * srcRowBytes;
                    byte* dst = m.Row(r);
                    for (int b = 0; b < blocksPerRow; b++, src += BlockBytes, dst += QsBytes)
                    {
                        var qs = new ReadOnlySpan<byte>(src, QsBytes);
                        if (TernaryRowCodes.ContainsCode3(qs))
                            throw Code3(r, b, qs);
                        ushort d = BinaryPrimitives.ReadUInt16LittleEndian(new ReadOnlySpan<byte>(src + QsBytes, 2));
                        if (scales.IsZeroScale(d, b, BlockWeights)) continue; // already all code 1
                        if (qs.ContainsAnyExcept((byte)0x55)) scales.NonzeroBlock(d, b, BlockWeights);
                        for (int j = 0; j < QsBytes; j++) dst[j] = table[src[j]];
                    }
                }
            }
            scales.Finish().CopyTo(m.RowScales, 0);
            return m;
        }
        catch
        {
            m.Dispose();
            throw;
        }
    }

    /// <summary>Bytes of <see cref="Encode(TernaryMatrix)"/>: d of every block = that row's scale rounded to fp16.</summary>
    public static byte[] Encode(TernaryMatrix matrix)
    {
        var bytes = new byte[ByteLength(matrix.Rows, matrix.Cols)];
        Encode(matrix, bytes);
        return bytes;
    }

    /// <summary>Writes <paramref name="matrix"/> as TQ2_0 into <paramref name="destination"/> (exactly <see cref="ByteLength"/> bytes).</summary>
    /// <exception cref="ArgumentException">K is not a multiple of 256, or a row scale does not fit in fp16.</exception>
    public static void Encode(TernaryMatrix matrix, Span<byte> destination)
    {
        long expected = ByteLength(matrix.Rows, matrix.Cols);
        if (destination.Length != expected)
            throw new ArgumentException($"A {matrix.Rows}×{matrix.Cols} TQ2_0 tensor is {expected} bytes; the destination has {destination.Length}.", nameof(destination));
        int blocksPerRow = matrix.Cols / BlockWeights;
        fixed (byte* table = PairReversed)
        fixed (byte* dst0 = destination)
        {
            byte* dst = dst0;
            for (int r = 0; r < matrix.Rows; r++)
            {
                ushort d = ScaleToHalf("TQ2_0", matrix.RowScales[r], r);
                byte* src = matrix.Row(r);
                for (int b = 0; b < blocksPerRow; b++, src += QsBytes, dst += BlockBytes)
                {
                    for (int j = 0; j < QsBytes; j++) dst[j] = table[src[j]];
                    BinaryPrimitives.WriteUInt16LittleEndian(new Span<byte>(dst + QsBytes, 2), d);
                }
            }
        }
    }

    /// <summary>
    /// llama.cpp's reference TQ2_0 quantizer for float weights (rows of length a multiple of 256, flattened):
    /// per block d = max|x|, code = round-half-away-from-zero(x · (1/d)) + 1 (0 when d = 0), d stored as fp16.
    /// </summary>
    public static void QuantizeReference(ReadOnlySpan<float> x, Span<byte> destination)
    {
        if (x.Length % BlockWeights != 0)
            throw new ArgumentException($"TQ2_0 needs rows that are a multiple of {BlockWeights} weights; got {x.Length} values.", nameof(x));
        int blocks = x.Length / BlockWeights;
        if (destination.Length != (long)blocks * BlockBytes)
            throw new ArgumentException($"{blocks} TQ2_0 blocks are {(long)blocks * BlockBytes} bytes; the destination has {destination.Length}.", nameof(destination));
        for (int b = 0; b < blocks; b++)
        {
            var xb = x.Slice(b * BlockWeights, BlockWeights);
            var yb = destination.Slice(b * BlockBytes, BlockBytes);
            float d = ReferenceBlockScale(xb);
            // As Encode does: a scale fp16 cannot hold (a block's max past 65504, or NaN) wrote bytes Decode refuses.
            if (!float.IsFinite(d) || !float.IsFinite(HalfConversions.HalfToFloat(HalfConversions.FloatToHalf(d))))
                throw new ArgumentException($"TQ2_0 block {b}: its scale {d} is not a finite fp16 number (a value past 65504, or NaN or ±∞ in the block).", nameof(x));
            float id = d != 0f ? 1f / d : 0f;
            yb[..QsBytes].Clear();
            for (int e = 0; e < BlockWeights; e++)
            {
                int code = ReferenceTernary(xb[e], id) + 1;
                yb[(e / 128) * 32 + e % 32] |= (byte)((code & 3) << (2 * ((e % 128) / 32)));
            }
            BinaryPrimitives.WriteUInt16LittleEndian(yb[QsBytes..], HalfConversions.FloatToHalf(d));
        }
    }

    /// <summary>The TQ2_0 bytes of <paramref name="x"/> (rows × cols floats, row-major) by <see cref="QuantizeReference(ReadOnlySpan{float}, Span{byte})"/>.</summary>
    public static byte[] QuantizeReference(ReadOnlySpan<float> x, int rows, int cols)
    {
        if ((long)rows * cols != x.Length)
            throw new ArgumentException($"{rows}×{cols} is {(long)rows * cols} values; got {x.Length}.", nameof(x));
        var bytes = new byte[ByteLength(rows, cols)];
        QuantizeReference(x, bytes);
        return bytes;
    }

    /// <summary>
    /// The float values of TQ2_0 blocks straight from the format's definition, block scale by block scale —
    /// the independent reference that tests compare <see cref="Decode"/> against.
    /// </summary>
    public static void Dequantize(ReadOnlySpan<byte> data, Span<float> destination)
    {
        if (data.Length % BlockBytes != 0 || destination.Length != data.Length / BlockBytes * BlockWeights)
            throw new ArgumentException($"{data.Length} bytes of TQ2_0 do not match {destination.Length} output values.", nameof(destination));
        for (int b = 0; b < data.Length / BlockBytes; b++)
        {
            var block = data.Slice(b * BlockBytes, BlockBytes);
            float d = HalfConversions.HalfToFloat(BinaryPrimitives.ReadUInt16LittleEndian(block[QsBytes..]));
            for (int e = 0; e < BlockWeights; e++)
            {
                int half = e / 128, l = (e % 128) / 32, m = e % 32;
                int code = (block[half * 32 + m] >> (2 * l)) & 3;
                destination[b * BlockWeights + e] = (code - 1) * d;
            }
        }
    }

    internal static void RequireBlockColumns(int cols)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(cols);
        if (cols % BlockWeights != 0)
            throw new ArgumentException(
                $"TQ2_0 needs rows that are a multiple of {BlockWeights} weights; this tensor has K={cols}. Store it as I2_S or keep it in a float type.",
                nameof(cols));
    }

    /// <summary>max|x| over a block, as ggml's reference quantizers compute it.</summary>
    internal static float ReferenceBlockScale(ReadOnlySpan<float> block)
    {
        float amax = 0f;
        foreach (float v in block) amax = MathF.Max(amax, MathF.Abs(v));
        return amax;
    }

    /// <summary>C lroundf(x · id): round half away from zero.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static int ReferenceTernary(float x, float id) => (int)MathF.Round(x * id, MidpointRounding.AwayFromZero);

    internal static ushort ScaleToHalf(string typeName, float scale, int row)
    {
        ushort d = HalfConversions.FloatToHalf(scale);
        if ((d & 0x7C00) == 0x7C00)
            throw new ArgumentException($"Row {row} has scale {scale}, which fp16 cannot hold ({typeName} stores its scales as fp16).");
        // A nonzero scale under fp16's smallest subnormal (about 3e-8) became 0: the row reloaded as all zeros, silently.
        if ((d & 0x7FFF) == 0 && scale != 0f)
            throw new ArgumentException($"Row {row} has scale {scale}, which fp16 rounds to 0 ({typeName} stores its scales as fp16).");
        return d;
    }

    private static InvalidDataException Code3(int row, int block, ReadOnlySpan<byte> qs)
    {
        for (int e = 0; e < BlockWeights; e++)
        {
            int half = e / 128, l = (e % 128) / 32, m = e % 32;
            if (((qs[half * 32 + m] >> (2 * l)) & 3) == 3)
                return new InvalidDataException(
                    $"TQ2_0 weight at row {row}, column {block * BlockWeights + e} has code 3, which no ternary quantizer writes; the tensor is corrupt or not TQ2_0.");
        }
        return new InvalidDataException($"TQ2_0 block {block} of row {row} has a code 3.");
    }

    private static byte[] BuildPairReversal()
    {
        var t = new byte[256];
        for (int b = 0; b < 256; b++)
            t[b] = (byte)(((b & 3) << 6) | (((b >> 2) & 3) << 4) | (((b >> 4) & 3) << 2) | ((b >> 6) & 3));
        return t;
    }
}
