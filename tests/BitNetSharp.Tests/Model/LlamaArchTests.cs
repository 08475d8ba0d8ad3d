using BitNetSharp.Formats.Gguf;
using BitNetSharp.Model;
using BitNetSharp.Quantization;

namespace BitNetSharp.Tests.Model;

/// <summary>
/// Ternary llama-arch GGUFs (Llama3-8B-1.58, Falcon3-1.58bit via bitnet.cpp) store q/k rows permuted by the
/// llama.cpp converter — within each head, row a·(hd/2)+i moves to 2i+a — and run NORM (interleaved-pair) RoPE.
/// Permuting a model's q/k that way and writing it as arch "llama" must give the logits of the same weights
/// written as arch "bitnet" (HF layout, NEOX RoPE, SiLU, no sub-norms).
/// </summary>
public class LlamaArchTests
{
    private static byte[] PermuteRows(byte[] i2s, int rows, int cols, int heads)
    {
        using var m = I2S.Decode(i2s, rows, cols);
        using var p = TernaryMatrix.Allocate(rows, cols, m.RowScales[0]);
        int hd = rows / heads, half = hd / 2;
        for (int h = 0; h < heads; h++)
        for (int a = 0; a < 2; a++)
        for (int i = 0; i < half; i++)
        {
            int from = h * hd + a * half + i, to = h * hd + 2 * i + a;
            for (int c = 0; c < cols; c++) p.Set(to, c, m.Get(from, c));
        }
        return I2S.Encode(p);
    }

    /// <summary>Layer 0's k projection as ternary values row by row, whatever its packed type.</summary>
    private static int[] FirstKeyProjection(byte[] file, string name)
    {
        using var w = ModelWeights.FromGguf(GgufFile.Parse(file, name), ownsFile: true);
        var k = w.Layers[0].K;
        var values = new int[k.Rows * k.Cols];
        for (int r = 0; r < k.Rows; r++)
        for (int c = 0; c < k.Cols; c++) values[r * k.Cols + c] = k.Get(r, c);
        return values;
    }

    [Fact]
    public void PermutedQkWithNormRopeEqualsNeoxLayout()
    {
        var shape = SyntheticShape.Tiny;
        var bitnetBytes = SyntheticModel.Build(shape, 21, GgmlType.F32, subNorms: false, architecture: "bitnet").ToArray();
        using var source = GgufFile.Parse(bitnetBytes, "bitnet.gguf");
        var llama = new GgufWriter();
        foreach (var (key, value) in source.Metadata.Entries)
        {
            if (key == "general.architecture") llama.AddString(key, "llama");
            else llama.Add(key.StartsWith("bitnet.", StringComparison.Ordinal) ? "llama." + key["bitnet.".Length..] : key, value);
        }
        int hd = shape.Dim / shape.Heads;
        foreach (var t in source.Tensors)
        {
            var data = source.GetTensorData(t).ToArray();
            if (t.Name.EndsWith("attn_q.weight", StringComparison.Ordinal)) data = PermuteRows(data, shape.Heads * hd, shape.Dim, shape.Heads);
            if (t.Name.EndsWith("attn_k.weight", StringComparison.Ordinal)) data = PermuteRows(data, shape.KvHeads * hd, shape.Dim, shape.KvHeads);
            llama.AddTensor(t.Name, t.Type, t.Dims, data);
        }

        float[] Run(byte[] file, string name, out ModelConfig config)
        {
            using var w = ModelWeights.FromGguf(GgufFile.Parse(file, name), ownsFile: true);
            config = w.Config;
            using var engine = new Transformer(w, 8, new BitNetSharp.Threading.WorkerPool(1));
            using var cache = new KvCache(w.Config.Layers, w.Config.KvHeads, w.Config.HeadDim, w.Config.ContextLength, KvCacheType.F32);
            var logits = new float[w.Config.VocabSize];
            int[] tokens = [3, 1, 4, 1, 5, 9, 2, 6];
            engine.Forward(tokens.Select((tk, i) => new BatchToken(tk, 0, i, i == tokens.Length - 1)).ToArray(), [cache], logits);
            return logits;
        }

        var neox = Run(bitnetBytes, "bitnet.gguf", out var c1);
        var norm = Run(llama.ToArray(), "llama.gguf", out var c2);
        Assert.Equal(ModelFamily.BitNetLlama, c1.Family);
        Assert.Equal(ModelFamily.TernaryLlama, c2.Family);
        Assert.Equal(BitNetSharp.Kernels.FloatOps.RopeStyle.Norm, c2.Rope);
        Assert.False(c2.HasSubNorms);
        // The same products summed in another order inside the q·k dot: equal to fp32 rounding.
        double range = neox.Max() - neox.Min();
        for (int i = 0; i < neox.Length; i++) Assert.True(Math.Abs(neox[i] - norm[i]) <= 1e-5 * range, $"logit {i}: {neox[i]} vs {norm[i]}");
        // Converted, the llama-arch model stays llama (NORM RoPE over its permuted rows): as "bitnet" it reloaded
        // with NEOX RoPE and gave other logits.
        byte[] converted;
        using (var w = ModelWeights.FromGguf(GgufFile.Parse(llama.ToArray(), "llama.gguf"), ownsFile: true))
            converted = ModelConverter.ToGguf(w, PackedWeightType.I2_S).ToArray();
        var again = Run(converted, "converted.gguf", out var c3);
        Assert.Equal(ModelFamily.TernaryLlama, c3.Family);
        for (int i = 0; i < neox.Length; i++) Assert.True(Math.Abs(neox[i] - again[i]) <= 1e-5 * range, $"converted logit {i}: {neox[i]} vs {again[i]}");

        // A ternary Llama in HF layout (NEOX order, no sub-norms) converts to llama with its q/k rows permuted to
        // NORM order, as llama.cpp's converter writes it; as "bitnet" llama.cpp refused it for the missing sub-norms.
        using (var w = ModelWeights.FromGguf(GgufFile.Parse(bitnetBytes, "bitnet.gguf"), ownsFile: true))
            converted = ModelConverter.ToGguf(w, PackedWeightType.I2_S).ToArray();
        using (var file = GgufFile.Parse(converted, "from-neox.gguf"))
            Assert.Equal("llama", file.Metadata.GetString("general.architecture"));
        Assert.Equal(FirstKeyProjection(llama.ToArray(), "llama.gguf"), FirstKeyProjection(converted, "from-neox.gguf"));
        var fromNeox = Run(converted, "from-neox.gguf", out var c4);
        Assert.Equal(BitNetSharp.Kernels.FloatOps.RopeStyle.Norm, c4.Rope);
        for (int i = 0; i < neox.Length; i++) Assert.True(Math.Abs(neox[i] - fromNeox[i]) <= 1e-5 * range, $"NEOX-converted logit {i}: {neox[i]} vs {fromNeox[i]}");
    }

    /// <summary>
    /// A BitNetForCausalLM with hidden_act silu keeps SiLU through convert: bitnet-b1.58 readers assume relu², and the
    /// converter wrote the activation key only for other archs, so the GGUF reloaded as relu² with other logits.
    /// </summary>
    [Fact]
    public void ConvertingASiluBitNet158KeepsTheActivation()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"bitnet-silu-{Environment.ProcessId}");
        Directory.CreateDirectory(dir);
        try
        {
            string fixture = RepositoryFiles.Path(Path.Combine("tests", "fixtures", "hf-bitnet", "bitlinear-offline-untied-f32"));
            File.Copy(Path.Combine(fixture, "model.safetensors"), Path.Combine(dir, "model.safetensors"), overwrite: true);
            string config = File.ReadAllText(Path.Combine(fixture, "config.json"));
            Assert.Contains("\"hidden_act\": \"relu2\"", config);
            File.WriteAllText(Path.Combine(dir, "config.json"), config.Replace("\"hidden_act\": \"relu2\"", "\"hidden_act\": \"silu\""));

            float[] Logits(ModelWeights w)
            {
                using var engine = new Transformer(w, 8, new BitNetSharp.Threading.WorkerPool(1));
                using var cache = new KvCache(w.Config.Layers, w.Config.KvHeads, w.Config.HeadDim, w.Config.ContextLength, KvCacheType.F32);
                var logits = new float[w.Config.VocabSize];
                int[] tokens = [3, 1, 4, 1, 5, 9];
                engine.Forward(tokens.Select((tk, i) => new BatchToken(tk, 0, i, i == tokens.Length - 1)).ToArray(), [cache], logits);
                return logits;
            }

            float[] expected;
            byte[] converted;
            using (var hf = ModelWeights.Load(dir))
            {
                Assert.Equal(FeedForwardActivation.Silu, hf.Config.Activation);
                expected = Logits(hf);
                converted = ModelConverter.ToGguf(hf, PackedWeightType.I2_S).ToArray();
                // bitnet.cpp's bitnet-b1.58 graph ignores the key and runs relu²: convert says so.
                Assert.Contains(ModelConverter.CompatibilityWarnings(hf, PackedWeightType.I2_S), w => w.Contains("always runs relu²"));
                Assert.Contains(ModelConverter.CompatibilityWarnings(hf, PackedWeightType.TQ2_0), w => w.Contains("always runs relu²"));
            }
            using var gguf = ModelWeights.FromGguf(GgufFile.Parse(converted, "silu.gguf"), ownsFile: true);
            Assert.Equal("bitnet-b1.58", gguf.Config.Architecture);
            Assert.Equal(FeedForwardActivation.Silu, gguf.Config.Activation);
            Assert.Equal(expected, Logits(gguf));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
