using BitNetSharp.Memory;

namespace BitNetSharp.Quantization;

/// <summary>
/// The runtime layout of a ternary weight matrix, the one every ternary kernel reads.
/// <para>
/// Shape: <see cref="Rows"/> output features (N) × <see cref="Cols"/> input features (K). Each row is padded
/// to <see cref="PaddedCols"/> = K rounded up to <see cref="BlockSize"/> (128) and stored in
/// <see cref="RowBytes"/> = PaddedCols/4 bytes. Inside a row, block b (128 weights) occupies bytes
/// [32b, 32b+32); weight j of the block sits in byte 32b + j%32 at bit shift 6 − 2·(j/32), as the 2-bit code
/// t+1 ∈ {0,1,2}. Padding weights hold code 1 (zero).
/// </para>
/// <para>
/// Why this layout: it is bit-for-bit bitnet.cpp's I2_S layout (FORMATS.md §2.5) whenever K is a multiple of
/// 128, so the official 2B4T GGUF is used in place, zero-copy; and one 32-byte load followed by four
/// shift-and-mask steps yields codes for four contiguous 32-activation spans, which maps onto AVX2 (32 lanes),
/// AVX-512 (two blocks per 64-byte load) and NEON (16-byte halves) without any shuffle. Codes are unsigned so
/// the u8×s8 instructions (vpmaddubsw, vpdpbusd) apply directly: Σ t·q = Σ c·q − Σ q.
/// </para>
/// One fp32 scale per output row (<see cref="RowScales"/>); BitNet b1.58 has one per tensor, repeated.
/// </summary>
public sealed unsafe class TernaryMatrix : IDisposable
{
    public const int BlockSize = 128;
    public const int BlockBytes = 32;

    private readonly object? _owner;
    private readonly byte* _data;

    /// <param name="data">Rows × RowBytes bytes in the layout above; must stay valid while <paramref name="owner"/> lives.</param>
    /// <param name="owner">Keeps <paramref name="data"/> alive (a <see cref="NativeBuffer"/> or a memory-mapped file); disposed with this matrix if it is a <see cref="NativeBuffer"/> created for it.</param>
    public TernaryMatrix(int rows, int cols, byte* data, float[] rowScales, object? owner, bool ownsOwner)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rows);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(cols);
        if (rowScales.Length != rows)
            throw new ArgumentException($"rowScales has {rowScales.Length} entries, expected one per row ({rows}).", nameof(rowScales));
        Rows = rows;
        Cols = cols;
        PaddedCols = PadCols(cols);
        RowBytes = PaddedCols / 4;
        _data = data;
        RowScales = rowScales;
        _owner = owner;
        OwnsOwner = ownsOwner;
    }

    /// <summary>Output features (N).</summary>
    public int Rows { get; }

    /// <summary>Input features (K) as in the model.</summary>
    public int Cols { get; }

    /// <summary>K rounded up to a multiple of 128.</summary>
    public int PaddedCols { get; }

    /// <summary>Bytes per row: PaddedCols / 4.</summary>
    public int RowBytes { get; }

    public float[] RowScales { get; }

    /// <summary>True when the packed bytes are owned by this matrix (repacked), false when used in place from a file.</summary>
    public bool OwnsOwner { get; }

    public long ByteLength => (long)Rows * RowBytes;

    public byte* Data => _data;

    public byte* Row(int row) => _data + (long)row * RowBytes;

    public static int PadCols(int cols) => (cols + BlockSize - 1) / BlockSize * BlockSize;

    /// <summary>Allocates a zero-weight matrix (all codes 1) to be filled by <see cref="SetCode"/> or a packer.</summary>
    public static TernaryMatrix Allocate(int rows, int cols, float scale = 1f)
    {
        int rowBytes = PadCols(cols) / 4;
        var buffer = new NativeBuffer((long)rows * rowBytes, zero: false);
        new Span<byte>(buffer.Pointer, checked((int)buffer.ByteLength)).Fill(0x55); // code 1 in every slot
        var scales = new float[rows];
        Array.Fill(scales, scale);
        return new TernaryMatrix(rows, cols, buffer.Pointer, scales, buffer, ownsOwner: true);
    }

    /// <summary>Byte offset within a row and bit shift of column <paramref name="col"/>.</summary>
    public static (int ByteIndex, int Shift) Locate(int col)
    {
        int block = col >> 7, j = col & 127;
        return (block * BlockBytes + (j & 31), 6 - 2 * (j >> 5));
    }

    /// <summary>The ternary value (−1, 0 or +1) at (row, col).</summary>
    public int Get(int row, int col)
    {
        var (b, s) = Locate(col);
        return ((Row(row)[b] >> s) & 3) - 1;
    }

    /// <summary>Sets the ternary value (−1, 0 or +1) at (row, col). For packers and tests, not hot loops.</summary>
    public void Set(int row, int col, int value)
    {
        if ((uint)(value + 1) > 2) throw new ArgumentOutOfRangeException(nameof(value), value, "A ternary weight is -1, 0 or +1.");
        var (b, s) = Locate(col);
        byte* p = Row(row) + b;
        *p = (byte)((*p & ~(3 << s)) | ((value + 1) << s));
    }

    /// <summary>Dequantized weight value t·scale — for tests and export.</summary>
    public float GetFloat(int row, int col) => Get(row, col) * RowScales[row];

    /// <summary>A kernel's own copy of these weights in another layout (see <see cref="Kernels.TernaryKernel.PrepareWeights"/>),
    /// disposed with this matrix.</summary>
    public IDisposable? KernelLayout { get; set; }

    public void Dispose()
    {
        KernelLayout?.Dispose();
        KernelLayout = null;
        if (OwnsOwner && _owner is IDisposable d) d.Dispose();
    }
}
