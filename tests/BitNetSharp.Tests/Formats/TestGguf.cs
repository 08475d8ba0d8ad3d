using BitNetSharp.Formats.Gguf;

namespace BitNetSharp.Tests.Formats;

/// <summary>Small, fully valid GGUF files built with <see cref="GgufWriter"/>, shared by the GGUF tests.</summary>
internal static class TestGguf
{
    public static byte[] RandomBytes(int count, int seed)
    {
        var bytes = new byte[count];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    /// <summary>
    /// A miniature "bitnet-b1.58" model: metadata of the shape a real one has, F32 norms, an F16 embedding and I2_S,
    /// TQ1_0 and TQ2_0 projections (random bytes of the right size). Every tensor is a multiple of 32 bytes so the
    /// file ends exactly at the last tensor's data.
    /// </summary>
    public static GgufWriter TinyBitNet(int alignment = GgufFile.DefaultAlignment)
    {
        var w = new GgufWriter(alignment);
        const string arch = "bitnet-b1.58";
        w.AddString("general.architecture", arch)
         .AddString("general.name", "tiny")
         .AddUInt32("general.file_type", 40)
         .AddUInt32(arch + ".vocab_size", 16)
         .AddUInt32(arch + ".context_length", 64)
         .AddUInt32(arch + ".embedding_length", 256)
         .AddUInt32(arch + ".block_count", 1)
         .AddUInt32(arch + ".feed_forward_length", 512)
         .AddUInt32(arch + ".attention.head_count", 4)
         .AddUInt32(arch + ".attention.head_count_kv", 2)
         .AddFloat32(arch + ".attention.layer_norm_rms_epsilon", 1e-5f)
         .AddFloat32(arch + ".rope.freq_base", 500000f)
         .AddString("tokenizer.ggml.model", "gpt2")
         .AddArray("tokenizer.ggml.tokens", Tokens(16))
         .AddArray("tokenizer.ggml.merges", new[] { "a b", "ab c" })
         .AddUInt32("tokenizer.ggml.bos_token_id", 1)
         .AddUInt32("tokenizer.ggml.eos_token_id", 2);
        int seed = 1;
        w.AddTensor("token_embd.weight", GgmlType.F16, [256, 16], RandomBytes(256 * 16 * 2, seed++));
        w.AddTensor("output_norm.weight", GgmlType.F32, [256], RandomBytes(256 * 4, seed++));
        w.AddTensor("blk.0.attn_norm.weight", GgmlType.F32, [256], RandomBytes(256 * 4, seed++));
        w.AddTensor("blk.0.attn_q.weight", GgmlType.I2_S, [256, 256], RandomBytes(256 * 256 / 4 + 32, seed++));
        w.AddTensor("blk.0.attn_k.weight", GgmlType.TQ2_0, [256, 128], RandomBytes(128 * 66, seed++));
        w.AddTensor("blk.0.attn_v.weight", GgmlType.TQ1_0, [256, 128], RandomBytes(128 * 54, seed++));
        w.AddTensor("blk.0.ffn_down.weight", GgmlType.BF16, [512, 256], RandomBytes(512 * 256 * 2, seed++));
        return w;
    }

    /// <summary>
    /// A file of about 1.3 KB with every part a parser has to get right (strings, arrays, nested arrays, tensors of
    /// five types, padding), small enough to cut at every length or mutate thousands of times.
    /// </summary>
    public static GgufWriter Small()
    {
        var w = new GgufWriter();
        w.AddString("general.architecture", "bitnet-b1.58")
         .AddUInt32("bitnet-b1.58.block_count", 1)
         .AddFloat32("bitnet-b1.58.rope.freq_base", 500000f)
         .AddBool("tokenizer.ggml.add_bos_token", true)
         .AddArray("tokenizer.ggml.tokens", new[] { "<s>", "</s>", "▁a", "é" })
         .AddArray("tokenizer.ggml.scores", new[] { 0f, -1f, -2f, -3f })
         .Add("nested", GgufValue.FromArray(GgufArray.Create(new[] { GgufArray.Create(new long[] { 1, -1 }), GgufArray.Create(Array.Empty<string>()) })));
        w.AddTensor("a.weight", GgmlType.F32, [8], RandomBytes(32, 11));
        w.AddTensor("b.weight", GgmlType.TQ2_0, [256], RandomBytes(66, 12));
        w.AddTensor("c.weight", GgmlType.I2_S, [128, 2], RandomBytes(96, 13));
        w.AddTensor("d.weight", GgmlType.TQ1_0, [256], RandomBytes(54, 14));
        w.AddTensor("e.weight", GgmlType.F16, [4, 4], RandomBytes(32, 15));
        return w;
    }

    public static string[] Tokens(int count)
    {
        var tokens = new string[count];
        for (int i = 0; i < count; i++) tokens[i] = "tok" + i;
        return tokens;
    }

    /// <summary>A temporary directory deleted on dispose.</summary>
    public sealed class TempDirectory : IDisposable
    {
        public TempDirectory()
        {
            Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "bitnet-tests-" + Guid.NewGuid().ToString("N"));
            Directory.CreateDirectory(Path);
        }

        public string Path { get; }

        public string File(string name) => System.IO.Path.Combine(Path, name);

        public void Dispose()
        {
            try { Directory.Delete(Path, recursive: true); } catch (IOException) { }
        }
    }
}
