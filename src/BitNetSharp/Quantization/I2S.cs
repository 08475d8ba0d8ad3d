using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;

namespace BitNetSharp.Quantization;

/// <summary>
/// bitnet.cpp I2_S (fork type 36, FORMATS.md §2.5), the format of the official 2B4T GGUF. The whole tensor is one
/// flat row-major array of n = ne0·ne1 codes (c = t+1) cut into blocks of 128 weights / 32 bytes; weight j of a
/// block is in byte j%32 at shift 6 − 2·(j/32) (most significant pair first). After the n/4 code bytes comes a
/// 32-byte tail whose first 4 bytes are the tensor's one fp32 scale (little-endian).
/// <para>
/// When ne0 is a multiple of 128 every row starts on a block boundary and the code bytes are exactly
/// <see cref="TernaryMatrix"/>'s layout, so <see cref="TryWrapInPlace"/> uses the file's bytes as they are.
/// Otherwise blocks straddle rows and <see cref="Decode"/> repacks each row onto its own padded blocks.
/// </para>
/// The layout is always the 128/32 one: bitnet.cpp's ARM builds since late 2025 write a 64/16 variant, which
/// the official files do not use and this class does not read.
/// </summary>
public static unsafe class I2S
{
    public const int BlockWeights = 128;
    public const int BlockBytes = 32;
    public const int TailBytes = 32;

    /// <summary>n/4 + 32 bytes for n = rows·cols weights; n must be a multiple of 128.</summary>
    public static long ByteLength(int rows, int cols)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rows);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(cols);
        long n = (long)rows * cols;
        if (n % BlockWeights != 0)
            throw new ArgumentException(
                $"I2_S packs whole blocks of {BlockWeights} weights, so rows·cols must be a multiple of {BlockWeights}; this tensor is {rows}×{cols} = {n}.");
        return n / 4 + TailBytes;
    }

    /// <summary>The tensor scale from the tail (rejects NaN and infinity).</summary>
    public static float ReadScale(ReadOnlySpan<byte> data, int rows, int cols)
    {
        RequireLength(data.Length, rows, cols);
        return ScaleFromTail(data[(int)((long)rows * cols / 4)..]);
    }

    private static float ScaleFromTail(ReadOnlySpan<byte> tail)
    {
        float scale = BinaryPrimitives.ReadSingleLittleEndian(tail);
        // bitnet.cpp writes max|w| (≥ 0); a negative one flipped the sign of every product of the layer and ran.
        if (!float.IsFinite(scale) || scale < 0f)
            throw new InvalidDataException($"The I2_S tensor scale is {scale}; the tensor is corrupt (a scale is a finite number ≥ 0).");
        return scale;
    }

    /// <summary>
    /// Wraps I2_S bytes (e.g. inside a memory-mapped GGUF) as a <see cref="TernaryMatrix"/> without copying when
    /// cols is a multiple of 128; returns false otherwise (use <see cref="Decode"/>). Every row scale is the tail
    /// scale. The matrix does not own <paramref name="owner"/>, which must keep <paramref name="data"/> valid.
    /// </summary>
    /// <param name="validateCodes">Scan for code 3 first (a vector pass over the bytes, which also faults every mapped page in).</param>
    /// <exception cref="InvalidDataException">A code 3 or a non-finite scale.</exception>
    public static bool TryWrapInPlace(byte* data, long length, int rows, int cols, object owner,
        [NotNullWhen(true)] out TernaryMatrix? matrix, bool validateCodes = true)
    {
        ArgumentNullException.ThrowIfNull(owner);
        matrix = null;
        RequireLength(length, rows, cols);
        if (cols % BlockWeights != 0) return false;
        long codeBytes = (long)rows * cols / 4;
        float scale = ScaleFromTail(new ReadOnlySpan<byte>(data + codeBytes, TailBytes));
        if (validateCodes) ThrowOnCode3(data, rows, cols);
        var scales = new float[rows];
        Array.Fill(scales, scale);
        matrix = new TernaryMatrix(rows, cols, data, scales, owner, ownsOwner: false);
        return true;
    }

    /// <summary>Wraps in place when possible (<see cref="TryWrapInPlace"/>), else repacks into owned memory (<see cref="Decode"/>).</summary>
    public static TernaryMatrix WrapOrDecode(byte* data, long length, int rows, int cols, object owner, bool validateCodes = true)
    {
        if (TryWrapInPlace(data, length, rows, cols, owner, out var wrapped, validateCodes)) return wrapped;
        return Decode(new ReadOnlySpan<byte>(data, checked((int)length)), rows, cols);
    }

    /// <summary>Copies I2_S bytes into a fresh runtime matrix (any ne0), every row scale = the tail scale.</summary>
    /// <exception cref="InvalidDataException">A code 3 or a non-finite scale.</exception>
    public static TernaryMatrix Decode(ReadOnlySpan<byte> data, int rows, int cols)
    {
        float scale = ReadScale(data, rows, cols);
        var m = TernaryMatrix.Allocate(rows, cols, scale);
        try
        {
            fixed (byte* src = data)
            {
                if (cols % BlockWeights == 0)
                {
                    ThrowOnCode3(src, rows, cols);
                    Buffer.MemoryCopy(src, m.Data, m.ByteLength, m.ByteLength);
                    return m;
                }

                // Rows straddle blocks: gather each row's codes from the flat array, then pack onto padded blocks.
                var codes = new byte[m.PaddedCols];
                codes.AsSpan().Fill(1);
                for (int r = 0; r < rows; r++)
                {
                    long k = (long)r * cols;
                    for (int c = 0; c < cols; c++, k++)
                        codes[c] = (byte)((src[(k >> 7) * BlockBytes + (k & 31)] >> (6 - 2 * (int)((k & 127) >> 5))) & 3);
                    if (!TernaryRowCodes.PackRow(codes, m.Row(r)))
                        throw Code3At(r, TernaryRowCodes.IndexOfInvalid(codes));
                }
                return m;
            }
        }
        catch
        {
            m.Dispose();
            throw;
        }
    }

    /// <summary>The I2_S bytes of <paramref name="matrix"/>, whose rows must all have one scale.</summary>
    public static byte[] Encode(TernaryMatrix matrix)
    {
        var bytes = new byte[ByteLength(matrix.Rows, matrix.Cols)];
        Encode(matrix, bytes);
        return bytes;
    }

    /// <summary>Writes <paramref name="matrix"/> as I2_S (codes, then the scale and 28 zero bytes).</summary>
    /// <exception cref="ArgumentException">Row scales differ (I2_S has one per tensor), or rows·cols is not a multiple of 128.</exception>
    public static void Encode(TernaryMatrix matrix, Span<byte> destination)
    {
        long expected = ByteLength(matrix.Rows, matrix.Cols);
        if (destination.Length != expected)
            throw new ArgumentException($"A {matrix.Rows}×{matrix.Cols} I2_S tensor is {expected} bytes; the destination has {destination.Length}.", nameof(destination));
        // One magnitude per tensor, written ≥ 0 (the loader refuses a negative one): a row whose scale is negative (a
        // TQ1_0/TQ2_0 block scale may be) is written with its codes negated, the same weights (such a file converted to
        // an I2_S the loader then refused).
        float scale = Math.Abs(matrix.RowScales[0]);
        bool anyNegative = false;
        for (int r = 0; r < matrix.Rows; r++)
        {
            if (BitConverter.SingleToInt32Bits(Math.Abs(matrix.RowScales[r])) != BitConverter.SingleToInt32Bits(scale))
                throw new ArgumentException(
                    $"I2_S stores one scale per tensor, but row 0 has {matrix.RowScales[0]} and row {r} has {matrix.RowScales[r]}. Use TQ1_0/TQ2_0 (one scale per 256 weights) or rescale.",
                    nameof(matrix));
            anyNegative |= float.IsNegative(matrix.RowScales[r]) && scale != 0f;
        }

        int cols = matrix.Cols;
        long codeBytes = (long)matrix.Rows * cols / 4;
        fixed (byte* dst = destination)
        {
            if (cols % BlockWeights == 0)
            {
                Buffer.MemoryCopy(matrix.Data, dst, codeBytes, codeBytes);
                // Whole blocks: row r is bytes [r·cols/4, (r+1)·cols/4), each 2-bit code c (weight c − 1) read as 2 − c.
                if (anyNegative)
                    for (int r = 0; r < matrix.Rows; r++)
                        if (float.IsNegative(matrix.RowScales[r]))
                            for (long b = (long)r * (cols / 4), end = b + cols / 4; b < end; b++)
                                dst[b] = NegatedCodes(dst[b]);
            }
            else
            {
                new Span<byte>(dst, (int)codeBytes).Clear();
                var codes = new byte[matrix.PaddedCols];
                for (int r = 0; r < matrix.Rows; r++)
                {
                    TernaryRowCodes.UnpackRow(matrix.Row(r), codes);
                    int flip = anyNegative && float.IsNegative(matrix.RowScales[r]) ? 2 : 0;
                    long k = (long)r * cols;
                    for (int c = 0; c < cols; c++, k++)
                    {
                        int code = codes[c] & 3;
                        if (flip != 0 && code <= 2) code = 2 - code;
                        dst[(k >> 7) * BlockBytes + (k & 31)] |= (byte)(code << (6 - 2 * (int)((k & 127) >> 5)));
                    }
                }
            }
        }
        var tail = destination[(int)codeBytes..];
        tail.Clear();
        BinaryPrimitives.WriteSingleLittleEndian(tail, scale);
    }

    /// <summary>Four 2-bit codes with each weight negated (code c → 2 − c; 3, invalid, kept).</summary>
    private static byte NegatedCodes(byte b)
    {
        int result = 0;
        for (int shift = 0; shift < 8; shift += 2)
        {
            int c = (b >> shift) & 3;
            result |= (c == 3 ? 3 : 2 - c) << shift;
        }
        return (byte)result;
    }

    /// <summary>
    /// The float values of an I2_S tensor straight from the format's definition (flat index arithmetic) —
    /// the independent reference for tests.
    /// </summary>
    public static void Dequantize(ReadOnlySpan<byte> data, int rows, int cols, Span<float> destination)
    {
        float scale = ReadScale(data, rows, cols);
        long n = (long)rows * cols;
        if (destination.Length != n)
            throw new ArgumentException($"A {rows}×{cols} tensor has {n} values; the destination has {destination.Length}.", nameof(destination));
        for (int k = 0; k < n; k++)
        {
            int b = k / BlockWeights, j = k % BlockWeights;
            int code = (data[b * BlockBytes + j % 32] >> (6 - 2 * (j / 32))) & 3;
            destination[k] = (code - 1) * scale;
        }
    }

    private static void RequireLength(long length, int rows, int cols)
    {
        long expected = ByteLength(rows, cols);
        if (length != expected)
            throw new ArgumentException($"A {rows}×{cols} I2_S tensor is {rows}·{cols}/4 + {TailBytes} = {expected} bytes; got {length}.");
    }

    private static void ThrowOnCode3(byte* data, int rows, int cols)
    {
        // One row at a time keeps each span well under 2 GiB whatever the tensor size.
        int rowBytes = cols / 4;
        for (int r = 0; r < rows; r++)
        {
            var row = new ReadOnlySpan<byte>(data + (long)r * rowBytes, rowBytes);
            if (!TernaryRowCodes.ContainsCode3(row)) continue;
            var codes = new byte[TernaryMatrix.PadCols(cols)];
            TernaryRowCodes.UnpackRow(data + (long)r * rowBytes, codes);
            throw Code3At(r, TernaryRowCodes.IndexOfInvalid(codes));
        }
    }

    private static InvalidDataException Code3At(int row, int col) =>
        new($"I2_S weight at row {row}, column {col} has code 3, which bitnet.cpp never writes; the tensor is corrupt or not I2_S.");
}
