using BitNetSharp.Memory;

namespace BitNetSharp.Quantization;

/// <summary>
/// The runtime layout of a binary {−1, +1} weight matrix (the original BitNet: sign(W) with an absmean scale).
/// Each row is padded to a multiple of 128 columns and stored as PaddedCols/8 bytes; column c is bit c%8
/// (LSB first) of byte c/8, 1 meaning +1 and 0 meaning −1. Padding bits are 0, and the padded activations are
/// 0, so they add nothing. Σ s·q = 2·Σ_{bit=1} q − Σ q, which the kernels compute with u8×s8 instructions.
/// </summary>
public sealed unsafe class BinaryMatrix : IDisposable
{
    public const int BlockSize = 128;

    private readonly NativeBuffer _buffer;

    public BinaryMatrix(int rows, int cols, float scale = 1f)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rows);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(cols);
        Rows = rows;
        Cols = cols;
        PaddedCols = (cols + BlockSize - 1) / BlockSize * BlockSize;
        RowBytes = PaddedCols / 8;
        _buffer = new NativeBuffer((long)rows * RowBytes);
        RowScales = new float[rows];
        Array.Fill(RowScales, scale);
    }

    public int Rows { get; }
    public int Cols { get; }
    public int PaddedCols { get; }
    public int RowBytes { get; }
    public float[] RowScales { get; }
    public long ByteLength => (long)Rows * RowBytes;
    public byte* Data => _buffer.Pointer;
    public byte* Row(int row) => _buffer.Pointer + (long)row * RowBytes;

    /// <summary>+1 or −1 at (row, col).</summary>
    public int Get(int row, int col) => ((Row(row)[col >> 3] >> (col & 7)) & 1) * 2 - 1;

    public void Set(int row, int col, int value)
    {
        if (value != 1 && value != -1) throw new ArgumentOutOfRangeException(nameof(value), value, "A binary weight is -1 or +1.");
        byte* p = Row(row) + (col >> 3);
        int bit = 1 << (col & 7);
        *p = (byte)(value > 0 ? *p | bit : *p & ~bit);
    }

    public void Dispose() => _buffer.Dispose();
}
