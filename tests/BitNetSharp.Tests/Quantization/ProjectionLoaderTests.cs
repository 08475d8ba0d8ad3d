using System.Runtime.InteropServices;
using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Formats.HuggingFace;
using BitNetSharp.Formats.Safetensors;
using BitNetSharp.Kernels;
using BitNetSharp.Quantization;
using BitNetSharp.Tests.Formats;

namespace BitNetSharp.Tests.Quantization;

/// <summary>One ternary matrix, written in every form a file can hold it, must load back to the same runtime matrix.</summary>
public unsafe class ProjectionLoaderTests
{
    private static TernaryMatrix RandomTernary(int rows, int cols, float scale, int seed)
    {
        var rng = new Random(seed);
        var m = TernaryMatrix.Allocate(rows, cols, scale);
        for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            m.Set(r, c, rng.Next(3) - 1);
        return m;
    }

    private static void AssertSameValues(TernaryMatrix expected, TernaryMatrix actual, float scaleTolerance = 0f)
    {
        Assert.Equal(expected.Rows, actual.Rows);
        Assert.Equal(expected.Cols, actual.Cols);
        for (int r = 0; r < expected.Rows; r++)
        {
            Assert.InRange(actual.RowScales[r], expected.RowScales[r] * (1 - scaleTolerance), expected.RowScales[r] * (1 + scaleTolerance));
            for (int c = 0; c < expected.Cols; c++)
                if (expected.Get(r, c) != actual.Get(r, c))
                    Assert.Fail($"({r}, {c}): expected {expected.Get(r, c)}, loaded {actual.Get(r, c)}");
        }
    }

    private static byte[] FloatBytes(TernaryMatrix m, Func<float, byte[]> encode)
    {
        var bytes = new List<byte>();
        for (int r = 0; r < m.Rows; r++)
        for (int c = 0; c < m.Cols; c++)
            bytes.AddRange(encode(m.GetFloat(r, c)));
        return [.. bytes];
    }

    [Theory]
    [InlineData(256, true)]
    [InlineData(200, false)]
    public void EveryGgufFormOfOneMatrixLoadsTheSame(int cols, bool multipleOf256)
    {
        const int rows = 16; // rows·cols must be a multiple of 128 for I2_S (200·16 = 3200)
        const float scale = 0.8125f; // exact in fp16 and bf16
        using var original = RandomTernary(rows, cols, scale, cols);
        var w = new GgufWriter();
        w.AddString("general.architecture", "bitnet-b1.58");
        long[] dims = [cols, rows];
        w.AddTensor("i2s.weight", GgmlType.I2_S, dims, I2S.Encode(original));
        if (multipleOf256)
        {
            w.AddTensor("tq2.weight", GgmlType.TQ2_0, dims, Tq2_0.Encode(original));
            w.AddTensor("tq1.weight", GgmlType.TQ1_0, dims, Tq1_0.Encode(original));
        }
        w.AddTensor("f32.weight", GgmlType.F32, dims, FloatBytes(original, BitConverter.GetBytes));
        w.AddTensor("f16.weight", GgmlType.F16, dims, FloatBytes(original, v => BitConverter.GetBytes(HalfConversions.FloatToHalf(v))));
        w.AddTensor("bf16.weight", GgmlType.BF16, dims, FloatBytes(original, v => BitConverter.GetBytes(HalfConversions.FloatToBFloat16(v))));
        using var dir = new TestGguf.TempDirectory();
        string path = dir.File("m.gguf");
        w.WriteFile(path);
        using var file = GgufFile.Open(path);

        using (var i2s = ProjectionLoader.LoadTernary(file, "i2s.weight"))
        {
            AssertSameValues(original, i2s);
            // I2_S is the runtime layout when K % 128 == 0: the matrix points into the file map.
            bool inPlace = i2s.Data >= file.GetTensorPointer(file.GetTensor("i2s.weight")) && !i2s.OwnsOwner;
            Assert.Equal(cols % 128 == 0, inPlace);
        }
        if (multipleOf256)
        {
            using var tq2 = ProjectionLoader.LoadTernary(file, "tq2.weight");
            AssertSameValues(original, tq2);
            using var tq1 = ProjectionLoader.LoadTernary(file, "tq1.weight");
            AssertSameValues(original, tq1);
        }
        // Latent float weights are re-ternarized by absmean: codes survive, the scale becomes mean|W| (≈ 2/3 · scale
        // for a uniform −1/0/+1 draw), so only the codes are compared.
        foreach (var name in new[] { "f32.weight", "f16.weight", "bf16.weight" })
        {
            using var m = ProjectionLoader.LoadTernary(file, name);
            for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                Assert.Equal(original.Get(r, c), m.Get(r, c));
        }
    }

    [Fact]
    public void LoadedMatrixMultipliesLikeItsDequantizedFloats()
    {
        using var original = RandomTernary(40, 384, 0.5f, 3);
        var w = new GgufWriter();
        w.AddTensor("w", GgmlType.I2_S, [384, 40], I2S.Encode(original));
        using var file = GgufFile.Parse(w.ToArray(), "mem.gguf");
        using var m = ProjectionLoader.LoadTernary(file, "w");
        var rng = new Random(8);
        var x = Enumerable.Range(0, 384).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        using var qa = new QuantizedActivations(1, 384);
        Int8ActivationQuantizer.Quantize(x, qa, 0);
        var y = new float[40];
        fixed (float* py = y) KernelRegistry.Ternary.MatMul(m, qa, py, 40, 0, 40);
        var dense = Dequantizer.ToFloat(m);
        for (int r = 0; r < 40; r++)
        {
            double expected = 0;
            for (int c = 0; c < 384; c++) expected += dense[r * 384 + c] * (qa.RowSpan(0)[c] / (double)qa.Scales[0]);
            Assert.Equal(expected, y[r], 4);
        }
    }

    [Fact]
    public void BinaryWeightsRoundTripThroughGguf()
    {
        var rng = new Random(4);
        using var b = new BinaryMatrix(9, 300, 0.375f);
        for (int r = 0; r < 9; r++) for (int c = 0; c < 300; c++) b.Set(r, c, rng.Next(2) * 2 - 1);
        var w = new GgufWriter();
        w.AddTensor("b", GgmlType.B1_128, [300, 9], B1.Encode(b));
        var bytes = w.ToArray();
        using var file = GgufFile.Parse(bytes, "b.gguf");
        var info = file.GetTensor("b");
        Assert.Equal(GgmlType.B1_128, info.Type);
        Assert.Equal(9 * 3 * 16 + 32, info.ByteSize);
        using var loaded = ProjectionLoader.LoadBinary(file, info);
        Assert.Equal(0.375f, loaded.RowScales[5]);
        for (int r = 0; r < 9; r++) for (int c = 0; c < 300; c++) Assert.Equal(b.Get(r, c), loaded.Get(r, c));
    }

    [Fact]
    public void UnsupportedTypeAndCorruptCodesNameTheTensor()
    {
        var w = new GgufWriter();
        w.AddTensor("blk.0.attn_q.weight", GgmlType.Q8_0, [64, 2], new byte[2 * 2 * 34]);
        var corrupt = new byte[I2S.ByteLength(2, 128)];
        corrupt[0] = 0xFF; // code 3
        BitConverter.GetBytes(1f).CopyTo(corrupt, corrupt.Length - 32);
        w.AddTensor("blk.0.attn_k.weight", GgmlType.I2_S, [128, 2], corrupt);
        using var file = GgufFile.Parse(w.ToArray(), "bad.gguf");
        var e1 = Assert.Throws<ModelFormatException>(() => ProjectionLoader.LoadTernary(file, "blk.0.attn_q.weight"));
        Assert.Contains("blk.0.attn_q.weight", e1.Message);
        Assert.Contains("q8_0", e1.Message);
        var e2 = Assert.Throws<ModelFormatException>(() => ProjectionLoader.LoadTernary(file, "blk.0.attn_k.weight"));
        Assert.Contains("bad.gguf", e2.Message);
        Assert.Contains("blk.0.attn_k.weight", e2.Message);
    }

    [Theory]
    [InlineData("autobitlinear")]
    [InlineData("bitlinear")]
    public void HfPackedWeightsApplyTheScaleRule(string linearClass)
    {
        using var original = RandomTernary(16, 200, 1f, 11);
        var packed = HfPackedTernary.Encode(original);
        const float ws = 2.5f;
        var st = new TestSafetensors()
            .Add("model.layers.0.mlp.up_proj.weight", "U8", [4, 200], packed)
            .Add("model.layers.0.mlp.up_proj.weight_scale", "F32", [1], BitConverter.GetBytes(ws));
        using var dir = new TestGguf.TempDirectory();
        string path = dir.File("model.safetensors");
        File.WriteAllBytes(path, st.ToArray());
        using var checkpoint = SafetensorsCheckpoint.OpenFile(path);
        var quant = new HfQuantizationConfig { QuantMethod = "bitnet", LinearClass = linearClass };
        using var m = ProjectionLoader.LoadTernary(checkpoint, "model.layers.0.mlp.up_proj.weight", 16, quant);
        Assert.Equal(linearClass == "autobitlinear" ? ws : 1f / ws, m.RowScales[0]);
        for (int r = 0; r < 16; r++) for (int c = 0; c < 200; c++) Assert.Equal(original.Get(r, c), m.Get(r, c));

        var missing = new TestSafetensors().Add("w.weight", "U8", [4, 200], packed);
        string path2 = dir.File("missing.safetensors");
        File.WriteAllBytes(path2, missing.ToArray());
        using var c2 = SafetensorsCheckpoint.OpenFile(path2);
        var e = Assert.Throws<ModelFormatException>(() => ProjectionLoader.LoadTernary(c2, "w.weight", 16, quant));
        Assert.Contains("w.weight_scale", e.Message);
    }

    /// <summary>
    /// Float weights that are the codes, with a weight_scale beside them (transformers' AutoBitLinear in offline mode
    /// keeps an unpacked weight of the model's dtype and still applies weight_scale in forward): the scale is applied as
    /// the linear class says. It was never read, and every output was off by it. Float weights beside a weight_scale
    /// that are not codes are refused by name.
    /// </summary>
    [Theory]
    [InlineData("autobitlinear", "BF16")]
    [InlineData("bitlinear", "F32")]
    public void FloatCodesWithAWeightScaleApplyIt(string linearClass, string dtype)
    {
        using var original = RandomTernary(16, 200, 1f, 12);
        var values = new float[16 * 200];
        for (int r = 0; r < 16; r++) for (int c = 0; c < 200; c++) values[r * 200 + c] = original.Get(r, c);
        byte[] bytes = dtype == "F32"
            ? System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()).ToArray()
            : values.SelectMany(v => BitConverter.GetBytes((ushort)(BitConverter.SingleToInt32Bits(v) >>> 16))).ToArray();
        const float ws = 1.5f;
        var st = new TestSafetensors()
            .Add("model.layers.0.self_attn.q_proj.weight", dtype, [16, 200], bytes)
            .Add("model.layers.0.self_attn.q_proj.weight_scale", "F32", [1], BitConverter.GetBytes(ws));
        using var dir = new TestGguf.TempDirectory();
        string path = dir.File("model.safetensors");
        File.WriteAllBytes(path, st.ToArray());
        using var checkpoint = SafetensorsCheckpoint.OpenFile(path);
        var quant = new HfQuantizationConfig { QuantMethod = "bitnet", LinearClass = linearClass };
        using var m = ProjectionLoader.LoadTernary(checkpoint, "model.layers.0.self_attn.q_proj.weight", 16, quant);
        Assert.All(m.RowScales, v => Assert.Equal(linearClass == "autobitlinear" ? ws : 1f / ws, v));
        for (int r = 0; r < 16; r++) for (int c = 0; c < 200; c++) Assert.Equal(original.Get(r, c), m.Get(r, c));

        values[5] = 0.5f;
        var latent = new TestSafetensors()
            .Add("w.weight", "F32", [16, 200], System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()).ToArray())
            .Add("w.weight_scale", "F32", [1], BitConverter.GetBytes(ws));
        string path2 = dir.File("latent.safetensors");
        File.WriteAllBytes(path2, latent.ToArray());
        using var c2 = SafetensorsCheckpoint.OpenFile(path2);
        var e = Assert.Throws<ModelFormatException>(() => ProjectionLoader.LoadTernary(c2, "w.weight", 16, quant));
        Assert.Contains("codes", e.Message);
        Assert.Contains("w.weight", e.Message);
    }

    /// <summary>
    /// HF latent weights are quantized as transformers' forward quantizes them (AutoBitLinear online, 1bitLLM's BitLinear):
    /// β = mean|W| over the tensor, whatever the values. Weights that happened to be 0 and ±a per row were taken with
    /// scale a (and per-row scales kept), where transformers computes a·(share of non-zeros) for the whole tensor: one
    /// weight changed by 0.2 % halved every scale. In offline mode AutoBitLinear multiplies the weights as they are, so
    /// there they keep their exact codes and per-row scales (as GGUF float tensors do: EveryGgufFormOfOneMatrixLoadsTheSame).
    /// </summary>
    [Fact]
    public void HfLatentWeightsAreQuantizedByAbsmeanEvenWhenAlreadyTernary()
    {
        const int Rows = 8, Cols = 64;
        var values = new float[Rows * Cols];
        var rng = new Random(5);
        double sumAbs = 0;
        for (int r = 0; r < Rows; r++)
        {
            float a = r < 4 ? 0.05f : 0.08f; // two row scales
            for (int c = 0; c < Cols; c++)
            {
                int code = rng.Next(4) switch { 0 => -1, 1 => 1, _ => 0 }; // about half zeros
                values[r * Cols + c] = code * a;
                sumAbs += Math.Abs(code * a);
            }
        }
        byte[] bytes = System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()).ToArray();
        using var dir = new TestGguf.TempDirectory();
        string path = dir.File("model.safetensors");
        File.WriteAllBytes(path, new TestSafetensors().Add("w.weight", "F32", [Rows, Cols], bytes).ToArray());
        using var checkpoint = SafetensorsCheckpoint.OpenFile(path);
        var online = new HfQuantizationConfig { QuantMethod = "bitnet", LinearClass = "autobitlinear", QuantizationMode = "online" };
        foreach (var quant in new[] { online, null })
        {
            using var m = ProjectionLoader.LoadTernary(checkpoint, "w.weight", Rows, quant);
            float beta = (float)(sumAbs / values.Length);
            Assert.All(m.RowScales, v => Assert.Equal(beta, v, 6));
            for (int r = 0; r < Rows; r++)
                for (int c = 0; c < Cols; c++) Assert.Equal(Math.Sign(values[r * Cols + c]), m.Get(r, c));
        }
        var offline = new HfQuantizationConfig { QuantMethod = "bitnet", LinearClass = "autobitlinear", QuantizationMode = "offline" };
        using var exact = ProjectionLoader.LoadTernary(checkpoint, "w.weight", Rows, offline);
        for (int r = 0; r < Rows; r++) Assert.Equal(r < 4 ? 0.05f : 0.08f, exact.RowScales[r]);
    }
}
