using BitNetSharp.Formats.Gguf;
using BitNetSharp.Model;
using BitNetSharp.Quantization;

namespace BitNetSharp.Tests.Quantization;

/// <summary>Re-encoding an embedding or head table refuses what the target type cannot hold.</summary>
public class EmbeddingEncoderTests
{
    /// <summary>
    /// A value past fp16's range for F16, or a block whose Q8_0 scale fp16 cannot hold, is refused naming the row: F16
    /// wrote ±∞ (a table this engine's loader then refused), and Q8_0 wrote an ∞ scale whose table loaded and gave NaN
    /// logits.
    /// </summary>
    [Theory]
    [InlineData(GgmlType.F16, 70000f, "F16 cannot hold")]
    [InlineData(GgmlType.F16, float.NaN, "F16 cannot hold")]
    [InlineData(GgmlType.Q8_0, 1e7f, "fp16 cannot hold")]
    public unsafe void ValuesTheTargetCannotHoldAreRefusedNamingTheRow(GgmlType type, float bad, string message)
    {
        const int rows = 3, cols = 64;
        var values = new float[rows * cols];
        for (int i = 0; i < values.Length; i++) values[i] = (i % 7 - 3) * 0.25f;
        fixed (float* p = values)
        {
            var table = new EmbeddingTable(GgmlType.F32, (byte*)p, values.Length * 4L, rows, cols, values, "t.gguf", "token_embd.weight");
            values[cols + 5] = bad; // after load, which refuses a non-finite F32 table itself
            var destination = new byte[EmbeddingEncoder.RowBytes(type, cols) * rows];
            var e = Assert.Throws<ArgumentException>(() => EmbeddingEncoder.EncodeRows(table, type, 0, rows, destination));
            Assert.Contains("Row 1", e.Message);
            Assert.Contains(message, e.Message);
        }
    }

    /// <summary>Q6_K too: NaN, or a block too large for its fp16 super-block scale, wrote a NaN or ∞ d that loaded.</summary>
    [Theory]
    [InlineData(1e10f, "fp16 scale")]
    [InlineData(float.NaN, "finite numbers only")]
    [InlineData(float.NegativeInfinity, "finite numbers only")]
    public unsafe void Q6KRefusesWhatItsScaleCannotHold(float bad, string message)
    {
        const int rows = 3, cols = 256;
        var values = new float[rows * cols];
        for (int i = 0; i < values.Length; i++) values[i] = (i % 7 - 3) * 0.25f;
        fixed (float* p = values)
        {
            var table = new EmbeddingTable(GgmlType.F32, (byte*)p, values.Length * 4L, rows, cols, values, "t.gguf", "token_embd.weight");
            values[2 * cols + 9] = bad; // after load, which refuses a non-finite F32 table itself
            var destination = new byte[EmbeddingEncoder.RowBytes(GgmlType.Q6_K, cols) * rows];
            var e = Assert.Throws<ArgumentException>(() => EmbeddingEncoder.EncodeRows(table, GgmlType.Q6_K, 0, rows, destination));
            Assert.Contains("Row 2", e.Message);
            Assert.Contains(message, e.Message);
            EmbeddingEncoder.EncodeRows(table, GgmlType.Q6_K, 0, 2, destination); // the good rows encode
        }
    }

    /// <summary>
    /// A Q8_0 or Q6_K table (a third-party file) with an infinite or NaN block scale is refused at load naming the row:
    /// the vector head kernels read such a scale as a finite number (∞ as 65536), so the logits were finite there and
    /// ∞/NaN on the other paths.
    /// </summary>
    [Theory]
    [InlineData(GgmlType.Q8_0, (ushort)0x7C00)]
    [InlineData(GgmlType.Q8_0, (ushort)0x7E00)]
    [InlineData(GgmlType.Q6_K, (ushort)0xFC00)]
    public unsafe void AQuantizedTableWithANonFiniteScaleIsRefused(GgmlType type, ushort scale)
    {
        int cols = type == GgmlType.Q8_0 ? 64 : Q6K.BlockWeights, blockBytes = type == GgmlType.Q8_0 ? 34 : Q6K.BlockBytes;
        int blocks = 2 * cols / (type == GgmlType.Q8_0 ? 32 : Q6K.BlockWeights); // two rows
        var data = new byte[blocks * blockBytes];
        int last = (blocks - 1) * blockBytes + (type == GgmlType.Q8_0 ? 0 : Q6K.DOffset);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(data.AsSpan(last), scale);
        fixed (byte* p = data)
        {
            byte* ptr = p;
            var e = Assert.Throws<BitNetSharp.Formats.ModelFormatException>(() => new EmbeddingTable(type, ptr, data.Length, 2, cols, data, "t.gguf", "output.weight"));
            Assert.Contains("row 1", e.Message);
            Assert.Contains("output.weight", e.Message);
        }
    }
}
