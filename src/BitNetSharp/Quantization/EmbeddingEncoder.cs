using BitNetSharp.Formats.Gguf;
using BitNetSharp.Model;

namespace BitNetSharp.Quantization;

/// <summary>
/// Re-encodes a token-embedding / output-head table into another GGUF type for `bitnet convert --embedding-type`:
/// F32 (the values as decoded: what `calibrate --tune` needs of a file that stores F16), F16, Q8_0 (llama.cpp's reference rule: per 32 values d = max|x|/127 stored as fp16, q = round(x / d) with the
/// unrounded d) or Q6_K (<see cref="Q6K.EncodeReference"/>: ggml's quantize_row_q6_K_ref, the error-minimizing
/// scale search llama-quantize runs without an importance matrix). A Q6_K or Q8_0 head streams 3.1× or 1.9× fewer bytes per token than
/// F16, which is what bounds single-sequence decoding of BitNet 2B4T (its F16 head is 657 MB next to 0.5 GB of
/// ternary weights).
/// </summary>
public static class EmbeddingEncoder
{
    /// <summary>The types a table can be re-encoded into.</summary>
    public static readonly GgmlType[] Targets = [GgmlType.F32, GgmlType.F16, GgmlType.Q8_0, GgmlType.Q6_K];

    /// <summary>Why <paramref name="cols"/>-wide rows cannot be stored as <paramref name="type"/>, or null.</summary>
    public static string? CannotEncode(GgmlType type, int cols) => type switch
    {
        GgmlType.Q8_0 when cols % 32 != 0 => $"q8_0 stores rows in blocks of 32 values, but the embedding rows have {cols}",
        GgmlType.Q6_K when cols % Q6K.BlockWeights != 0 => $"q6_K stores rows in blocks of {Q6K.BlockWeights} values, but the embedding rows have {cols}",
        GgmlType.F32 or GgmlType.F16 or GgmlType.Q8_0 or GgmlType.Q6_K => null,
        _ => $"{GgmlTypeInfo.Name(type)} is not an embedding type the converter writes; use f32, f16, q8_0 or q6_k",
    };

    /// <summary>Bytes of one <paramref name="cols"/>-wide row stored as <paramref name="type"/> (an encodable one).</summary>
    public static long RowBytes(GgmlType type, int cols) => type switch
    {
        GgmlType.F32 => cols * 4L,
        GgmlType.F16 => cols * 2L,
        GgmlType.Q8_0 => cols / 32 * 34L,
        _ => cols / Q6K.BlockWeights * (long)Q6K.BlockBytes,
    };

    /// <summary>The whole table, row by row, in <paramref name="type"/>.</summary>
    public static byte[] Encode(EmbeddingTable table, GgmlType type)
    {
        ArgumentNullException.ThrowIfNull(table);
        if (CannotEncode(type, table.Cols) is { } reason) throw new ArgumentException(reason + ".", nameof(type));
        var output = new byte[checked(RowBytes(type, table.Cols) * table.Rows)];
        EncodeRows(table, type, 0, table.Rows, output);
        return output;
    }

    /// <summary>
    /// Rows [<paramref name="rowStart"/>, <paramref name="rowEnd"/>) of <paramref name="table"/> in <paramref name="type"/>,
    /// to <paramref name="destination"/> (which starts with row <paramref name="rowStart"/>). Each row is decoded to floats
    /// and encoded on its own, so any split of the rows gives the same bytes as <see cref="Encode"/>.
    /// </summary>
    public static void EncodeRows(EmbeddingTable table, GgmlType type, int rowStart, int rowEnd, Span<byte> destination)
    {
        ArgumentNullException.ThrowIfNull(table);
        if (CannotEncode(type, table.Cols) is { } reason) throw new ArgumentException(reason + ".", nameof(type));
        long rowBytes = RowBytes(type, table.Cols);
        var row = new float[table.Cols];
        for (int r = rowStart; r < rowEnd; r++)
        {
            table.GetRow(r, row);
            var dst = destination.Slice((int)((r - rowStart) * rowBytes), (int)rowBytes);
            switch (type)
            {
                case GgmlType.F32:
                    System.Runtime.InteropServices.MemoryMarshal.AsBytes(row.AsSpan()).CopyTo(dst);
                    break;
                case GgmlType.F16:
                    for (int i = 0; i < row.Length; i++)
                    {
                        // Past fp16's range it wrote ±∞ (NaN passed as is): a table this engine's loader then refused.
                        var h = HalfConversions.FloatToHalf(row[i]);
                        if (!float.IsFinite(row[i]) || !float.IsFinite(HalfConversions.HalfToFloat(h)))
                            throw new ArgumentException($"Row {r} value {i} is {row[i]}, which F16 cannot hold (finite, |x| ≤ 65504); use --embedding-type q6_k or keep the source type.", nameof(table));
                        BitConverter.TryWriteBytes(dst[(2 * i)..], h);
                    }
                    break;
                case GgmlType.Q8_0:
                    try
                    {
                        EncodeQ8_0(row, dst);
                    }
                    catch (ArgumentException e)
                    {
                        throw new ArgumentException($"Row {r}: {e.Message.Split(" (Parameter '")[0]}", nameof(table), e);
                    }
                    break;
                default:
                    // NaN or a magnitude whose super-block scale passes fp16 (≈ 65504 · 128 in a group) wrote an infinite
                    // or NaN d: a table that loaded and gave NaN logits, as Q8_0's did.
                    for (int i = 0; i < row.Length; i++)
                        if (!float.IsFinite(row[i]))
                            throw new ArgumentException($"Row {r} value {i} is {row[i]}; Q6_K holds finite numbers only.", nameof(table));
                    Q6K.EncodeReference(row, dst);
                    for (int b = 0; b < row.Length / Q6K.BlockWeights; b++)
                    {
                        float d = HalfConversions.HalfToFloat(System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(dst.Slice(b * Q6K.BlockBytes + Q6K.DOffset, 2)));
                        if (!float.IsFinite(d))
                            throw new ArgumentException($"Row {r} block {b}: its values are too large for Q6_K's fp16 scale (the block would hold an infinite scale); keep the source type or f32.", nameof(table));
                    }
                    break;
            }
        }
    }

    /// <summary>llama.cpp's quantize_row_q8_0_ref: per 32 values d = max|x|/127 (fp16 in the file), q = round(x · 1/d).</summary>
    public static void EncodeQ8_0(ReadOnlySpan<float> x, Span<byte> destination)
    {
        if (x.Length % 32 != 0) throw new ArgumentException($"Q8_0 encodes whole blocks of 32 values; got {x.Length}.", nameof(x));
        for (int b = 0; b < x.Length / 32; b++)
        {
            var block = x.Slice(b * 32, 32);
            float amax = 0f;
            foreach (float v in block)
            {
                if (!float.IsFinite(v)) throw new ArgumentException($"Value {b * 32} block holds {v}; Q8_0 holds finite numbers only.", nameof(x));
                amax = MathF.Max(amax, MathF.Abs(v));
            }
            float d = amax / 127f;
            float id = d != 0f ? 1f / d : 0f;
            var dst = destination.Slice(b * 34, 34);
            var hd = HalfConversions.FloatToHalf(d);
            // A block scale past fp16's range was written as ∞: the table loaded and gave NaN logits.
            if (!float.IsFinite(HalfConversions.HalfToFloat(hd)))
                throw new ArgumentException($"Block {b} has max |x| = {amax}, whose Q8_0 scale ({d}) fp16 cannot hold; keep the source type.", nameof(x));
            BitConverter.TryWriteBytes(dst, hd);
            for (int i = 0; i < 32; i++) dst[2 + i] = (byte)(sbyte)MathF.Round(block[i] * id, MidpointRounding.AwayFromZero);
        }
    }
}
