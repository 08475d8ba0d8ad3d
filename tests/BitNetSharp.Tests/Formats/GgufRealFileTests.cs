using BitNetSharp.Formats.Gguf;

namespace BitNetSharp.Tests.Formats;

/// <summary>Files made by llama.cpp's own tools (shared/data), so the reader is checked against the real thing.</summary>
public class GgufRealFileTests
{
    [Fact]
    public void LlamaSpmVocabularyReadsAsLlama2SentencePiece()
    {
        using var f = GgufFile.Open(SharedData.RequirePath("llama.cpp-vocab/ggml-vocab-llama-spm.gguf"));
        var m = f.Metadata;
        Assert.Equal(3u, f.Version);
        Assert.Equal(22, m.Count);
        Assert.Empty(f.Tensors);
        Assert.Equal("llama", m.Architecture);
        Assert.Equal("llama-spm", m.GetString("general.name"));
        Assert.Equal("llama", m.GetString("tokenizer.ggml.model"));
        Assert.Equal("default", m.GetString("tokenizer.ggml.pre"));
        var tokens = m.GetStringArray("tokenizer.ggml.tokens");
        Assert.Equal(32000, tokens.Length);
        Assert.Equal(["<unk>", "<s>", "</s>", "<0x00>"], tokens[..4]);
        Assert.Equal(32000, m.GetFloat32Array("tokenizer.ggml.scores").Length);
        var types = m.GetInt32Array("tokenizer.ggml.token_type");
        Assert.Equal([2, 3, 3, 6], types[..4]);
        Assert.Equal(1u, m.GetUInt32("tokenizer.ggml.bos_token_id"));
        Assert.Equal(2u, m.GetUInt32("tokenizer.ggml.eos_token_id"));
        Assert.Equal(0u, m.GetUInt32("tokenizer.ggml.unknown_token_id"));
        Assert.True(m.GetBool("tokenizer.ggml.add_bos_token"));
        Assert.False(m.GetBool("tokenizer.ggml.add_eos_token"));
        Assert.Equal(32000u, m.GetUInt32(m.ArchitectureKey("vocab_size")));
        Assert.Equal(4096u, m.GetUInt32(m.ArchitectureKey("embedding_length")));
        Assert.Equal(32u, m.GetUInt32(m.ArchitectureKey("block_count")));
        Assert.Equal(11008u, m.GetUInt32(m.ArchitectureKey("feed_forward_length")));
        Assert.Equal(1e-5f, m.GetFloat32(m.ArchitectureKey("attention.layer_norm_rms_epsilon")));
    }

    [Fact]
    public void TinyRandomLlamaReadsWithItsTensorTable()
    {
        using var f = GgufFile.Open(SharedData.RequirePath("models/llama-2-tiny-random.gguf"));
        var m = f.Metadata;
        Assert.Equal(18, m.Count);
        Assert.Equal("llama", m.Architecture);
        Assert.Equal("LLaMA v2", m.GetString("general.name"));
        Assert.Equal(4096u, m.GetUInt32("llama.context_length"));
        Assert.Equal(8u, m.GetUInt32("llama.embedding_length"));
        Assert.Equal(1u, m.GetUInt32("llama.block_count"));
        Assert.Equal(32u, m.GetUInt32("llama.feed_forward_length"));
        Assert.Equal(4u, m.GetUInt32("llama.rope.dimension_count"));
        Assert.Equal(2u, m.GetUInt32("llama.attention.head_count"));
        Assert.Equal(2u, m.GetUInt32("llama.attention.head_count_kv"));
        Assert.Equal(1u, m.GetUInt32("general.file_type"));
        Assert.Equal(32000, m.GetStringArray("tokenizer.ggml.tokens").Length);
        Assert.Equal(32, f.Alignment);
        Assert.Equal(724416, f.DataOffset); // header ends at 724398, padded to 32

        (string Name, GgmlType Type, long[] Dims, long Offset)[] expected =
        [
            ("token_embd.weight", GgmlType.F16, [8, 32000], 0),
            ("blk.0.attn_q.weight", GgmlType.F16, [8, 8], 512000),
            ("blk.0.attn_k.weight", GgmlType.F16, [8, 8], 512128),
            ("blk.0.attn_v.weight", GgmlType.F16, [8, 8], 512256),
            ("blk.0.attn_output.weight", GgmlType.F16, [8, 8], 512384),
            ("blk.0.ffn_gate.weight", GgmlType.F16, [8, 32], 512512),
            ("blk.0.ffn_up.weight", GgmlType.F16, [8, 32], 513024),
            ("blk.0.ffn_down.weight", GgmlType.F16, [32, 8], 513536),
            ("blk.0.attn_norm.weight", GgmlType.F32, [8], 514048),
            ("blk.0.ffn_norm.weight", GgmlType.F32, [8], 514080),
            ("output_norm.weight", GgmlType.F32, [8], 514112),
            ("output.weight", GgmlType.F16, [8, 32000], 514144),
        ];
        Assert.Equal(expected.Length, f.Tensors.Count);
        for (int i = 0; i < expected.Length; i++)
        {
            var t = f.Tensors[i];
            Assert.Equal(expected[i].Name, t.Name);
            Assert.Equal(expected[i].Type, t.Type);
            Assert.Equal(expected[i].Dims, t.Dims.ToArray());
            Assert.Equal(expected[i].Offset, t.Offset);
        }
        var last = f.Tensors[^1];
        Assert.Equal(f.FileLength, f.DataOffset + last.Offset + last.ByteSize);
        Assert.Equal(8 * 4, f.GetTensorData("output_norm.weight").Length);
    }

    public static TheoryData<string> VocabFiles()
    {
        var data = new TheoryData<string>();
        foreach (var name in new[] { "baichuan", "bert-bge", "deepseek-coder", "deepseek-llm", "falcon", "gpt-2", "gpt-neox", "llama-spm", "mpt", "phi-3", "refact", "starcoder" })
            data.Add($"llama.cpp-vocab/ggml-vocab-{name}.gguf");
        return data;
    }

    [Theory]
    [MemberData(nameof(VocabFiles))]
    public void EveryVocabularyFileParses(string relative)
    {
        using var f = GgufFile.Open(SharedData.RequirePath(relative));
        var m = f.Metadata;
        Assert.NotNull(m.Architecture);
        var tokens = m.GetStringArray("tokenizer.ggml.tokens");
        Assert.True(tokens.Length > 1000);
        var model = m.GetString("tokenizer.ggml.model");
        Assert.Contains(model, new[] { "llama", "gpt2", "bert" });
        if (model == "gpt2") Assert.NotEmpty(m.GetStringArray("tokenizer.ggml.merges"));
    }

    [Fact]
    public void GptTwoVocabularyHasTheKnownCounts()
    {
        using var f = GgufFile.Open(SharedData.RequirePath("llama.cpp-vocab/ggml-vocab-gpt-2.gguf"));
        var m = f.Metadata;
        Assert.Equal("gpt2", m.Architecture);
        Assert.Equal(50257, m.GetStringArray("tokenizer.ggml.tokens").Length);
        Assert.Equal(50000, m.GetStringArray("tokenizer.ggml.merges").Length);
        Assert.Equal(50256u, m.GetUInt32("tokenizer.ggml.bos_token_id"));
        Assert.Equal(50256u, m.GetUInt32("tokenizer.ggml.eos_token_id"));
    }
}
