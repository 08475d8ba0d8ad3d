using BitNetSharp.Formats.Gguf;
using BitNetSharp.Quantization;

namespace BitNetSharp.Model;

/// <summary>The projection encodings <see cref="ModelConverter"/> writes.</summary>
public enum PackedWeightType { I2_S, TQ2_0, TQ1_0, F16 }

/// <summary>
/// Writes a loaded model as a GGUF with its ternary projections packed as I2_S (bitnet.cpp), TQ2_0 / TQ1_0
/// (llama.cpp) or F16 (the ternary values ±β as halves, which both runtimes read as already-ternarized weights).
/// Embeddings and the head keep their encoding, norms are F32, and the source GGUF's tokenizer keys are carried
/// over. The architecture name follows the graph: bitnet-b1.58 (relu² + sub-norms) or bitnet (SiLU, with the
/// activation written explicitly), whose q/k use NEOX RoPE — the HF layout — so nothing is permuted.
/// </summary>
public static class ModelConverter
{
    /// <summary>Checks every projection can be held by <paramref name="type"/>; the message names the first that cannot.</summary>
    public static void CheckShapes(ModelWeights weights, PackedWeightType type, GgmlType? embeddingType = null)
    {
        if (embeddingType is { } e && EmbeddingEncoder.CannotEncode(e, weights.Config.Dim) is { } reason)
            throw new ArgumentException($"--embedding-type: {reason}.");
        // A re-encoded table is made in one array: past .NET's array limit (an F32 table of 152k × 4096 is 2.5 GB) it
        // failed halfway through the written file. Refused before any byte is written.
        // (Only a table that changes type is re-encoded; one kept as it is is written in place, whatever its size.)
        if (embeddingType is { } t && (t != weights.TokenEmbedding.Type || (!weights.TiedOutput && t != weights.Output.Type))
            && EmbeddingEncoder.RowBytes(t, weights.Config.Dim) * weights.Config.VocabSize is var bytes && bytes > Array.MaxLength)
            throw new ArgumentException($"--embedding-type {GgmlTypeInfo.Name(t)}: the table would take {bytes:N0} bytes, more than convert can re-encode at once ({Array.MaxLength:N0}); keep the source type, or use f16, q8_0 or q6_k.");
        foreach (var (name, m) in Projections(weights))
        {
            if (type is PackedWeightType.TQ2_0 or PackedWeightType.TQ1_0 && m.Cols % 256 != 0)
                throw new ArgumentException($"{type} packs rows in blocks of 256 weights, but {name} has rows of {m.Cols}; use --type {(I2SPackable(weights) ? "i2_s or f16" : "f16")} for this model.");
            if (type == PackedWeightType.I2_S && (long)m.Rows * m.Cols % 128 != 0)
                throw new ArgumentException($"I2_S packs the tensor in blocks of 128 weights, but {name} has {m.Rows}×{m.Cols} = {(long)m.Rows * m.Cols}; use --type f16 for this model.");
            // TQ2_0/TQ1_0 keep a d per 256-block (so per row) and F16 stores ±β_r; only I2_S has one scale per tensor.
            if (type == PackedWeightType.I2_S)
                for (int r = 1; r < m.Rows; r++)
                    if (Math.Abs(m.RowScales[r]) != Math.Abs(m.RowScales[0])) // a negative row is written with its codes negated
                        throw new ArgumentException($"{name} has a scale per row, which I2_S cannot store (one per tensor); use --type tq2_0, tq1_0 or f16.");
        }
    }

    /// <summary>
    /// What a reader other than this runtime would get wrong in the file <paramref name="type"/> makes of these weights.
    /// bitnet.cpp's I2_S product starts each row at a fresh 128-weight block and drops a row's last cols % 128 weights,
    /// so a tensor whose rows are not whole blocks (1bitLLM 3B's ffn_down, 8640 wide) loads there and computes wrong
    /// outputs; this runtime reads the blocks across rows as written.
    /// </summary>
    public static IEnumerable<string> CompatibilityWarnings(ModelWeights weights, PackedWeightType type)
    {
        // The activation key is this runtime's: bitnet.cpp's bitnet-b1.58 graph runs relu² and llama.cpp's llama graph
        // SiLU whatever it says, so such a file computes other logits there without a word.
        var c = weights.Config;
        string arch = ArchitectureOf(c);
        if (arch == "bitnet-b1.58" && c.Activation == FeedForwardActivation.Silu)
            yield return "this model's feed-forward is SiLU: the file records it (bitnet-b1.58.hidden_activation = silu), which this runtime reads, "
                + "but bitnet.cpp's bitnet-b1.58 graph always runs relu² and would compute other logits.";
        if (arch == "llama" && c.Activation == FeedForwardActivation.ReluSquared)
            yield return "this model's feed-forward is relu²: the file records it (llama.hidden_activation = relu2), which this runtime reads, "
                + "but llama.cpp's llama graph always runs SiLU and would compute other logits.";
        if (type != PackedWeightType.I2_S)
        {
            // Under fp16's normal range (6.1e-5) a scale is stored as a subnormal, with fewer bits: 1e-5 (the absmean
            // ternarizer's floor) moved by 0.14 %, 3e-8 by 99 %, where the README promises at most 2^-11, without a word.
            foreach (var (name, m) in Projections(weights))
                for (int r = 0; r < m.Rows; r++)
                {
                    float scale = Math.Abs(m.RowScales[r]);
                    if (scale == 0f || scale >= MinNormalHalf || !float.IsFinite(scale)) continue;
                    float stored = (float)(Half)scale;
                    if (stored == 0f) break; // refused by the conversion itself, naming the tensor
                    yield return string.Create(System.Globalization.CultureInfo.InvariantCulture,
                        $"{name}: scale {scale:G6} (row {r}) is below fp16's normal range (6.1e-5), so {OutputTypeName(type)} stores it as {stored:G6}, off by {Math.Abs(stored - scale) / scale:P2} (2^-11 = 0.05 % in the normal range); --type i2_s keeps an fp32 scale.");
                    break;
                }
            yield break;
        }
        foreach (var (name, m) in Projections(weights))
            if (m.Cols % 128 != 0)
            {
                yield return $"{name} has rows of {m.Cols} weights, not whole 128-weight blocks: bitnet.cpp reads such an I2_S tensor wrong (each row from a block's start, "
                    + "its last weights dropped). This runtime reads it; for bitnet.cpp use --type f16.";
                yield break;
            }
    }

    /// <summary>fp16's smallest normal value, 2^-14.</summary>
    private const float MinNormalHalf = 6.103515625e-5f;

    private static bool ToNorm(ModelConfig c) => c.Family != ModelFamily.BitNet158 && !c.HasSubNorms && c.Rope == Kernels.FloatOps.RopeStyle.Neox;

    /// <summary>The GGUF architecture a converted file is written as (see <see cref="ToGguf"/>).</summary>
    private static string ArchitectureOf(ModelConfig c) =>
        c.Family == ModelFamily.BitNet158 ? "bitnet-b1.58" : c.Rope == Kernels.FloatOps.RopeStyle.Norm || ToNorm(c) ? "llama" : "bitnet";

    /// <summary>I2_S's size rule below (the whole tensor in blocks of 128 weights, not each row): a model of 64-wide rows
    /// packs as I2_S, and the TQ2_0 error told it to use f16 only.</summary>
    private static bool I2SPackable(ModelWeights weights)
    {
        foreach (var (_, m) in Projections(weights))
            if ((long)m.Rows * m.Cols % 128 != 0) return false;
        return true;
    }

    public static IEnumerable<(string Name, TernaryMatrix Matrix)> Projections(ModelWeights weights)
    {
        for (int l = 0; l < weights.Layers.Length; l++)
        {
            var w = weights.Layers[l];
            string p = $"blk.{l}.";
            yield return (p + "attn_q.weight", w.Q);
            yield return (p + "attn_k.weight", w.K);
            yield return (p + "attn_v.weight", w.V);
            yield return (p + "attn_output.weight", w.O);
            yield return (p + "ffn_gate.weight", w.Gate);
            yield return (p + "ffn_up.weight", w.Up);
            yield return (p + "ffn_down.weight", w.Down);
        }
    }

    /// <param name="progress">Called after each tensor with (done, total).</param>
    /// <param name="tokenizer">
    /// Written as <c>tokenizer.ggml.*</c> keys when the source is not a GGUF (whose tokenizer keys are copied as they
    /// are); see <see cref="GgufTokenizerWriter"/>. Its vocabulary may not be larger than the model's.
    /// </param>
    /// <param name="embeddingType">Re-encode the token embedding and output head into this type (F16, Q8_0, Q6_K;
    /// see <see cref="EmbeddingEncoder"/>); null keeps them as they are.</param>
    /// <param name="sourceTokenizer">Whether a GGUF source's <c>tokenizer.*</c> keys are copied (false: the weights alone).</param>
    public static GgufWriter ToGguf(ModelWeights weights, PackedWeightType type, Action<int, int>? progress = null, BitNetSharp.Tokenization.BitNetTokenizer? tokenizer = null,
        GgmlType? embeddingType = null, bool sourceTokenizer = true)
    {
        CheckShapes(weights, type, embeddingType);
        var c = weights.Config;
        // A model with NORM RoPE (a llama-arch GGUF: q/k rows stored permuted, kept so) is written as llama again; as
        // "bitnet" it reloaded with NEOX RoPE over the permuted rows and gave other logits without a word. A ternary
        // Llama in HF layout (NEOX order, no sub-norms: LlamaForCausalLM + bitnet) is written as llama too, its q/k
        // rows permuted to NORM order as llama.cpp's converter does: llama.cpp's "bitnet" requires sub-norms.
        bool toNorm = ToNorm(c);
        string arch = ArchitectureOf(c);
        var w = new GgufWriter();
        var source = weights.Gguf?.Metadata;
        string? name = source?.TryGetString("general.name", out var n) == true ? n : null;
        uint fileType = type switch
        {
            PackedWeightType.I2_S => GgufModelMetadata.FileTypeI2S,
            PackedWeightType.TQ2_0 => GgufModelMetadata.FileTypeTq2_0,
            PackedWeightType.TQ1_0 => GgufModelMetadata.FileTypeTq1_0,
            _ => GgufModelMetadata.FileTypeF16,
        };
        // The activation key whenever it differs from what a reader assumes for the arch (relu² for bitnet-b1.58, SiLU
        // otherwise; always for bitnet): a SiLU BitNetForCausalLM lost it and reloaded as relu².
        var assumed = arch == "bitnet-b1.58" ? FeedForwardActivation.ReluSquared : FeedForwardActivation.Silu;
        GgufModelMetadata.Write(w, c, arch, name, fileType,
            arch == "bitnet" || c.Activation != assumed ? (c.Activation == FeedForwardActivation.Silu ? "silu" : "relu2") : null);
        if (source is not null)
        {
            foreach (var (key, value) in source.Entries)
                if ((sourceTokenizer && key.StartsWith("tokenizer.", StringComparison.Ordinal))
                    || (key.StartsWith("bitnetsharp.", StringComparison.Ordinal) && key != ActivationBits.GgufKey)
                    // The model card's keys (license, basename, size_label, tags, source.*) were dropped; the ones this
                    // file describes anew (architecture, name, file_type, quantization_version) are written above.
                    || (key.StartsWith("general.", StringComparison.Ordinal) && key != GgufFile.AlignmentKey && !w.Contains(key))) w.Add(key, value);
        }
        else if (tokenizer is not null)
        {
            if (tokenizer.VocabularySize > c.VocabSize)
                throw new ArgumentException($"{weights.SourcePath}: the tokenizer has {tokenizer.VocabularySize} tokens but the model's embedding only {c.VocabSize} rows; they do not belong together (a tokenizer file from another model?). Give the model's own tokenizer, or --no-tokenizer to write the weights alone.");
            BitNetSharp.Tokenization.GgufTokenizerWriter.Write(tokenizer, w, c.VocabSize);
        }

        // No vocabulary: llama.cpp's marker for a model without one (its loader requires tokenizer.ggml.model and
        // refused a --no-tokenizer file: "key not found"; with "none" it loads the weights).
        // (Not beside a vocabulary whose model key is lost: that stays damaged, as the source is, not "no vocabulary".)
        if (!w.Contains("tokenizer.ggml.model") && !w.Contains("tokenizer.ggml.tokens")) w.AddString("tokenizer.ggml.model", "none");

        // The widths the weights carry now (the file's, or an override set on them).
        weights.ActivationBits?.WriteTo(w);

        int total = 2 + (weights.TiedOutput ? 0 : 1) + c.Layers * (c.HasSubNorms ? 11 : 9), done = 0;
        void Step() => progress?.Invoke(++done, total);
        // Every tensor is made when the file is written, one at a time (the encoded output was all held in memory
        // first: 1.2 GB for 2B4T); progress counts tensors as they are written. The weights must stay open until then.
        void Lazy(string name, GgmlType t, long[] dims, Func<ReadOnlyMemory<byte>> make) =>
            w.AddTensor(name, t, dims, () => { var bytes = make(); Step(); return bytes; });
        void Table(string name, EmbeddingTable table)
        {
            if (embeddingType is { } target && target != table.Type)
                Lazy(name, target, [c.Dim, c.VocabSize], () =>
                {
                    try
                    {
                        return EmbeddingEncoder.Encode(table, target);
                    }
                    catch (ArgumentException e)
                    {
                        // "Row 3 value 232 is 1000000, which F16 cannot hold": named the tensor (embedding or head) and file too.
                        throw new ArgumentException($"{weights.SourcePath}, {name}: {e.Message.Split(" (Parameter '")[0]}", e);
                    }
                });
            else if (table.ByteLength <= int.MaxValue) Lazy(name, table.Type, [c.Dim, c.VocabSize], () => table.Bytes);
            else
            {
                // In place by pointer: a table of 2 GiB or more (an F32 152k × 4096 head) overflowed the span of Bytes.
                unsafe { w.AddTensor(name, table.Type, [c.Dim, c.VocabSize], table.Data, table.ByteLength); }
                Step();
            }
        }
        void Vector(string name, float[] values) => Lazy(name, GgmlType.F32, [values.Length], () => F32(values));
        void Matrix(string name, TernaryMatrix m, Func<TernaryMatrix, TernaryMatrix>? reorder = null)
        {
            // Scales are checked now, before any byte is written: a scale fp16 cannot hold fails here, naming the tensor.
            if (type != PackedWeightType.I2_S)
            {
                try
                {
                    for (int r = 0; r < m.Rows; r++) Tq2_0.ScaleToHalf(OutputTypeName(type), m.RowScales[r], r);
                }
                catch (ArgumentException e)
                {
                    throw new ArgumentException($"{name}: {e.Message} fp16 holds scales of about 6e-8 to 65504, in full precision from 6.1e-5 (TQ2_0, TQ1_0 and F16 all store fp16); --type i2_s keeps an fp32 scale, one per tensor.", e);
                }
            }
            Lazy(name, OutputType(type), [m.Cols, m.Rows], () =>
            {
                if (reorder is null) return Projection(name, m, type);
                using var reordered = reorder(m);
                return Projection(name, reordered, type);
            });
        }
        Table("token_embd.weight", weights.TokenEmbedding);
        Vector("output_norm.weight", weights.OutputNorm);
        if (!weights.TiedOutput) Table("output.weight", weights.Output);
        for (int l = 0; l < c.Layers; l++)
        {
            var lw = weights.Layers[l];
            string p = $"blk.{l}.";
            Vector(p + "attn_norm.weight", lw.AttnNorm);
            Matrix(p + "attn_q.weight", lw.Q, toNorm ? m => NormRopeOrder(m, c.Heads) : null);
            Matrix(p + "attn_k.weight", lw.K, toNorm ? m => NormRopeOrder(m, c.KvHeads) : null);
            Matrix(p + "attn_v.weight", lw.V);
            if (lw.AttnSubNorm is { } asn) Vector(p + "attn_sub_norm.weight", asn);
            Matrix(p + "attn_output.weight", lw.O);
            Vector(p + "ffn_norm.weight", lw.FfnNorm);
            Matrix(p + "ffn_gate.weight", lw.Gate);
            Matrix(p + "ffn_up.weight", lw.Up);
            if (lw.FfnSubNorm is { } fsn) Vector(p + "ffn_sub_norm.weight", fsn);
            Matrix(p + "ffn_down.weight", lw.Down);
        }
        return w;
    }

    private static string OutputTypeName(PackedWeightType type) => GgmlTypeInfo.Name(OutputType(type)).ToUpperInvariant();

    private static GgmlType OutputType(PackedWeightType type) => type switch
    {
        PackedWeightType.I2_S => GgmlType.I2_S,
        PackedWeightType.TQ2_0 => GgmlType.TQ2_0,
        PackedWeightType.TQ1_0 => GgmlType.TQ1_0,
        _ => GgmlType.F16,
    };

    /// <summary>
    /// q or k rows from rotate-half (NEOX) order to llama.cpp's interleaved-pair (NORM) order: within each head, row
    /// a·(hd/2)+i moves to 2i+a, so NORM RoPE over the new rows rotates the pairs NEOX RoPE rotated over the old.
    /// </summary>
    internal static unsafe TernaryMatrix NormRopeOrder(TernaryMatrix m, int heads)
    {
        int hd = m.Rows / heads, half = hd / 2;
        var p = TernaryMatrix.Allocate(m.Rows, m.Cols);
        for (int h = 0; h < heads; h++)
        for (int a = 0; a < 2; a++)
        for (int i = 0; i < half; i++)
        {
            int from = h * hd + a * half + i, to = h * hd + 2 * i + a;
            Buffer.MemoryCopy(m.Row(from), p.Row(to), p.RowBytes, m.RowBytes);
            p.RowScales[to] = m.RowScales[from];
        }
        return p;
    }

    private static byte[] Projection(string name, TernaryMatrix m, PackedWeightType type)
    {
        try
        {
            return Encode(m, type);
        }
        catch (ArgumentException e)
        {
            // The codecs name the row ("Row 3 has scale 1e9, which fp16 cannot hold"); the user needs the tensor.
            throw new ArgumentException($"{name}: {e.Message} fp16 holds scales of about 6e-8 to 65504 (TQ2_0, TQ1_0 and F16 all store fp16); --type i2_s keeps an fp32 scale, one per tensor.", e);
        }
    }

    private static byte[] Encode(TernaryMatrix m, PackedWeightType type)
    {
        switch (type)
        {
            case PackedWeightType.I2_S: return I2S.Encode(m);
            case PackedWeightType.TQ2_0: return Tq2_0.Encode(m);
            case PackedWeightType.TQ1_0: return Tq1_0.Encode(m);
            default:
                // ±β_r as halves: a scale fp16 cannot hold became ±Inf (or 0), which reloaded as garbage or was refused.
                for (int r = 0; r < m.Rows; r++)
                    if (m.RowScales[r] != 0f && HalfConversions.HalfToFloat(HalfConversions.FloatToHalf(m.RowScales[r])) is var h && (!float.IsFinite(h) || h == 0f))
                        throw new ArgumentException($"Row {r} has scale {m.RowScales[r]}, which fp16 cannot hold (F16 stores ±scale as halves).");
                var halves = new byte[(long)m.Rows * m.Cols * 2];
                for (int r = 0; r < m.Rows; r++)
                for (int col = 0; col < m.Cols; col++)
                    BitConverter.TryWriteBytes(halves.AsSpan((int)(((long)r * m.Cols + col) * 2)), HalfConversions.FloatToHalf(m.GetFloat(r, col)));
                return halves;
        }
    }

    private static byte[] F32(float[] values)
    {
        var bytes = new byte[values.Length * 4];
        Buffer.BlockCopy(values, 0, bytes, 0, bytes.Length);
        return bytes;
    }
}
