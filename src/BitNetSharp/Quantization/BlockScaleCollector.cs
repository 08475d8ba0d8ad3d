namespace BitNetSharp.Quantization;

/// <summary>
/// Turns the per-block fp16 scales of TQ1_0/TQ2_0 into the one scale per row that <see cref="TernaryMatrix"/>
/// keeps. A ternarized BitNet weight quantized to a TQ type has d = β (as fp16) in every block that holds a
/// nonzero weight, so only those blocks are compared; blocks of zeros say nothing about the scale, and blocks
/// with d = 0 are zeros whatever their codes (the caller clears them). Any other disagreement means the tensor
/// is a general float tensor quantized to TQ, which one scale per row cannot represent, and is refused.
/// Rows made only of zeros take the tensor's scale so a per-tensor kernel still sees one value.
/// </summary>
internal sealed class BlockScaleCollector
{
    private readonly string _typeName;
    private readonly float[] _scales;
    private readonly bool[] _known;
    private int _row = -1;
    private int _rowBits = -1;
    private int _rowBlock;

    public BlockScaleCollector(string typeName, int rows)
    {
        _typeName = typeName;
        _scales = new float[rows];
        _known = new bool[rows];
    }

    public void BeginRow(int row)
    {
        _row = row;
        _rowBits = -1;
    }

    /// <summary>Rejects NaN and infinite block scales; returns true when d is ±0 (the block is all zeros).</summary>
    public bool IsZeroScale(ushort dBits, int block, int blockWeights)
    {
        if ((dBits & 0x7C00) == 0x7C00)
            throw new InvalidDataException(
                $"{_typeName} block scale at row {_row}, columns {block * blockWeights}..{block * blockWeights + blockWeights - 1} is {HalfConversions.HalfToFloat(dBits)}; the tensor is corrupt.");
        return (dBits & 0x7FFF) == 0;
    }

    /// <summary>Records the scale of a block of the current row that holds at least one nonzero weight.</summary>
    public void NonzeroBlock(ushort dBits, int block, int blockWeights)
    {
        if (_rowBits < 0)
        {
            _rowBits = dBits;
            _rowBlock = block;
            _scales[_row] = HalfConversions.HalfToFloat(dBits);
            _known[_row] = true;
            return;
        }
        if (_rowBits != dBits)
            throw new InvalidDataException(
                $"{_typeName} row {_row} mixes block scales {HalfConversions.HalfToFloat((ushort)_rowBits)} (columns from {_rowBlock * blockWeights}) and "
                + $"{HalfConversions.HalfToFloat(dBits)} (columns from {block * blockWeights}). BitNetSharp keeps one scale per row, which every "
                + "ternarized BitNet weight satisfies; this tensor looks like a general float tensor quantized to "
                + $"{_typeName}. Convert it from its float source instead.");
    }

    /// <summary>The row scales, zero rows filled with the first known scale (0 if the whole tensor is zero).</summary>
    public float[] Finish()
    {
        float fill = 0f;
        for (int r = 0; r < _scales.Length; r++)
        {
            if (_known[r]) { fill = _scales[r]; break; }
        }
        for (int r = 0; r < _scales.Length; r++)
        {
            if (!_known[r]) _scales[r] = fill;
        }
        return _scales;
    }
}
