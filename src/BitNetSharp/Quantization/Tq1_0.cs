using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace BitNetSharp.Quantization;

/// <summary>
/// ggml TQ1_0 (type 34, FORMATS.md §2.3): blocks of 256 weights, 54 bytes each — qs[48], qh[4], then the block
/// scale d as little-endian fp16. Five trits (t = value + 1) share a byte as v = Σ t_i·3^(4−i), t0 most
/// significant, stored as ⌈v·256/243⌉, so trit n comes back as ((b·3^n mod 256)·3) >> 8 with no division.
/// qh bytes hold four trits, multiplied by 3 first so they decode like the first four of five.
/// <para>
/// Weight layout in a block: e &lt; 160 is trit e/32 of qs[e%32]; 160 ≤ e &lt; 240 is trit (e−160)/16 of
/// qs[32 + (e−160)%16]; e ≥ 240 is trit (e−240)/4 of qh[(e−240)%4].
/// </para>
/// </summary>
public static unsafe class Tq1_0
{
    public const int BlockWeights = 256;
    public const int BlockBytes = 54;
    private const int QhOffset = 48;
    private const int DOffset = 52;

    /// <summary>Bytes of a rows × cols TQ1_0 tensor; cols must be a multiple of 256.</summary>
    public static long ByteLength(int rows, int cols)
    {
        RequireBlockColumns(cols);
        return (long)rows * (cols / BlockWeights) * BlockBytes;
    }

    /// <summary>Decodes a TQ1_0 tensor (ne1 = rows, ne0 = cols) into a fresh runtime matrix with one scale per row.</summary>
    /// <exception cref="InvalidDataException">A NaN/infinite block scale, or blocks of one row with different scales.</exception>
    [SkipLocalsInit]
    public static TernaryMatrix Decode(ReadOnlySpan<byte> data, int rows, int cols)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rows);
        long expected = ByteLength(rows, cols);
        if (data.Length != expected)
            throw new ArgumentException($"A {rows}×{cols} TQ1_0 tensor is {expected} bytes; got {data.Length}.", nameof(data));

        int blocksPerRow = cols / BlockWeights;
        int srcRowBytes = blocksPerRow * BlockBytes;
        var codes = new byte[cols]; // cols is a multiple of 256, so no runtime padding
        var scales = new BlockScaleCollector("TQ1_0", rows);
        var m = TernaryMatrix.Allocate(rows, cols);
        try
        {
            for (int r = 0; r < rows; r++)
            {
                scales.BeginRow(r);
                var src = data.Slice(r * srcRowBytes, srcRowBytes);
                for (int b = 0; b < blocksPerRow; b++)
                {
                    var block = src.Slice(b * BlockBytes, BlockBytes);
                    var blockCodes = codes.AsSpan(b * BlockWeights, BlockWeights);
                    ushort d = BinaryPrimitives.ReadUInt16LittleEndian(block[DOffset..]);
                    if (scales.IsZeroScale(d, b, BlockWeights))
                    {
                        blockCodes.Fill(1);
                        continue;
                    }
                    UnpackBlock(block, blockCodes);
                    if (blockCodes.ContainsAnyExcept((byte)1)) scales.NonzeroBlock(d, b, BlockWeights);
                }
                TernaryRowCodes.PackRow(codes, m.Row(r)); // trits are 0..2 by construction
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

    /// <summary>Writes <paramref name="matrix"/> as TQ1_0 into <paramref name="destination"/> (exactly <see cref="ByteLength"/> bytes).</summary>
    /// <exception cref="ArgumentException">K is not a multiple of 256, or a row scale does not fit in fp16.</exception>
    public static void Encode(TernaryMatrix matrix, Span<byte> destination)
    {
        long expected = ByteLength(matrix.Rows, matrix.Cols);
        if (destination.Length != expected)
            throw new ArgumentException($"A {matrix.Rows}×{matrix.Cols} TQ1_0 tensor is {expected} bytes; the destination has {destination.Length}.", nameof(destination));
        int blocksPerRow = matrix.Cols / BlockWeights;
        var codes = new byte[matrix.PaddedCols];
        for (int r = 0; r < matrix.Rows; r++)
        {
            ushort d = Tq2_0.ScaleToHalf("TQ1_0", matrix.RowScales[r], r);
            TernaryRowCodes.UnpackRow(matrix.Row(r), codes);
            for (int b = 0; b < blocksPerRow; b++)
            {
                var block = destination.Slice((r * blocksPerRow + b) * BlockBytes, BlockBytes);
                PackBlock(codes.AsSpan(b * BlockWeights, BlockWeights), block);
                BinaryPrimitives.WriteUInt16LittleEndian(block[DOffset..], d);
            }
        }
    }

    /// <summary>
    /// llama.cpp's reference TQ1_0 quantizer (same ternarization as TQ2_0: d = max|x| per block,
    /// code = round-half-away(x · (1/d)) + 1), for building fixtures and converting float weights.
    /// </summary>
    public static void QuantizeReference(ReadOnlySpan<float> x, Span<byte> destination)
    {
        if (x.Length % BlockWeights != 0)
            throw new ArgumentException($"TQ1_0 needs rows that are a multiple of {BlockWeights} weights; got {x.Length} values.", nameof(x));
        int blocks = x.Length / BlockWeights;
        if (destination.Length != (long)blocks * BlockBytes)
            throw new ArgumentException($"{blocks} TQ1_0 blocks are {(long)blocks * BlockBytes} bytes; the destination has {destination.Length}.", nameof(destination));
        Span<byte> codes = stackalloc byte[BlockWeights];
        for (int b = 0; b < blocks; b++)
        {
            var xb = x.Slice(b * BlockWeights, BlockWeights);
            float d = Tq2_0.ReferenceBlockScale(xb);
            // As Encode does: a scale fp16 cannot hold (a block's max past 65504, or NaN) wrote bytes Decode refuses.
            if (!float.IsFinite(d) || !float.IsFinite(HalfConversions.HalfToFloat(HalfConversions.FloatToHalf(d))))
                throw new ArgumentException($"TQ1_0 block {b}: its scale {d} is not a finite fp16 number (a value past 65504, or NaN or ±∞ in the block).", nameof(x));
            float id = d != 0f ? 1f / d : 0f;
            for (int e = 0; e < BlockWeights; e++) codes[e] = (byte)(Tq2_0.ReferenceTernary(xb[e], id) + 1);
            var yb = destination.Slice(b * BlockBytes, BlockBytes);
            PackBlock(codes, yb);
            BinaryPrimitives.WriteUInt16LittleEndian(yb[DOffset..], HalfConversions.FloatToHalf(d));
        }
    }

    /// <summary>
    /// The float values of TQ1_0 blocks straight from the format's definition (per-element index arithmetic,
    /// block scale by block scale) — the independent reference for tests.
    /// </summary>
    public static void Dequantize(ReadOnlySpan<byte> data, Span<float> destination)
    {
        if (data.Length % BlockBytes != 0 || destination.Length != data.Length / BlockBytes * BlockWeights)
            throw new ArgumentException($"{data.Length} bytes of TQ1_0 do not match {destination.Length} output values.", nameof(destination));
        for (int b = 0; b < data.Length / BlockBytes; b++)
        {
            var block = data.Slice(b * BlockBytes, BlockBytes);
            float d = HalfConversions.HalfToFloat(BinaryPrimitives.ReadUInt16LittleEndian(block[DOffset..]));
            for (int e = 0; e < BlockWeights; e++)
            {
                int n, at;
                if (e < 160) { n = e / 32; at = e % 32; }
                else if (e < 240) { n = (e - 160) / 16; at = 32 + (e - 160) % 16; }
                else { n = (e - 240) / 4; at = QhOffset + (e - 240) % 4; }
                destination[b * BlockWeights + e] = (Trit(block[at], n) - 1) * d;
            }
        }
    }

    /// <summary>Trit n (0 = most significant) of a stored byte.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Trit(byte stored, int n) => ((byte)(stored * Pow3(n)) * 3) >> 8;

    /// <summary>The stored byte of trits t0..t4 (each 0..2, t0 most significant): ⌈v·256/243⌉.</summary>
    public static byte PackTrits(int t0, int t1, int t2, int t3, int t4)
    {
        int v = (((t0 * 3 + t1) * 3 + t2) * 3 + t3) * 3 + t4;
        return (byte)((v * 256 + 242) / 243);
    }

    private static int Pow3(int n) => n switch { 0 => 1, 1 => 3, 2 => 9, 3 => 27, _ => 81 };

    /// <summary>Trits[n·256 + b] = trit n of stored byte b: decoding a block becomes 256 table reads.</summary>
    private static readonly byte[] Trits = BuildTritTable();

    private static byte[] BuildTritTable()
    {
        var t = new byte[5 * 256];
        for (int n = 0; n < 5; n++)
        for (int b = 0; b < 256; b++) t[n * 256 + b] = (byte)Trit((byte)b, n);
        return t;
    }

    private static void UnpackBlock(ReadOnlySpan<byte> block, Span<byte> codes)
    {
        fixed (byte* table = Trits)
        fixed (byte* src = block)
        fixed (byte* dst = codes)
        {
            for (int n = 0; n < 5; n++)
            {
                byte* trit = table + n * 256;
                for (int m = 0; m < 32; m++) dst[n * 32 + m] = trit[src[m]];
                for (int m = 0; m < 16; m++) dst[160 + n * 16 + m] = trit[src[32 + m]];
            }
            for (int n = 0; n < 4; n++)
            {
                byte* trit = table + n * 256;
                for (int j = 0; j < 4; j++) dst[240 + n * 4 + j] = trit[src[QhOffset + j]];
            }
        }
    }

    private static void PackBlock(ReadOnlySpan<byte> codes, Span<byte> block)
    {
        for (int m = 0; m < 32; m++)
            block[m] = PackTrits(codes[m], codes[32 + m], codes[64 + m], codes[96 + m], codes[128 + m]);
        for (int m = 0; m < 16; m++)
            block[32 + m] = PackTrits(codes[160 + m], codes[176 + m], codes[192 + m], codes[208 + m], codes[224 + m]);
        for (int j = 0; j < 4; j++)
            block[QhOffset + j] = PackTrits(codes[240 + j], codes[244 + j], codes[248 + j], codes[252 + j], 0);
    }

    private static void RequireBlockColumns(int cols)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(cols);
        if (cols % BlockWeights != 0)
            throw new ArgumentException(
                $"TQ1_0 needs rows that are a multiple of {BlockWeights} weights; this tensor has K={cols}. Store it as I2_S or keep it in a float type.",
                nameof(cols));
    }
}
