using System.Text;
using BitNetSharp.Formats;
using BitNetSharp.Formats.HuggingFace;
using BitNetSharp.Model;

namespace BitNetSharp.Tests.Formats;

public class HfModelDirectoryTests
{
    /// <summary>2B4T's config.json as its -bf16 repository publishes it, with the offline quantization block of the packed checkpoint.</summary>
    public const string BitNet2B4TConfig = """
        {
          "architectures": ["BitNetForCausalLM"],
          "attention_bias": false,
          "attention_dropout": 0.0,
          "bos_token_id": 128000,
          "eos_token_id": 128001,
          "hidden_act": "relu2",
          "hidden_size": 2560,
          "initializer_range": 0.02,
          "intermediate_size": 6912,
          "max_position_embeddings": 4096,
          "model_type": "bitnet",
          "rope_scaling": null,
          "num_attention_heads": 20,
          "num_hidden_layers": 30,
          "num_key_value_heads": 5,
          "rms_norm_eps": 1e-05,
          "rope_theta": 500000.0,
          "tie_word_embeddings": true,
          "torch_dtype": "bfloat16",
          "use_cache": true,
          "vocab_size": 128256,
          "quantization_config": {
            "quant_method": "bitnet",
            "linear_class": "autobitlinear",
            "quantization_mode": "offline"
          }
        }
        """;

    /// <summary>
    /// num_key_value_heads as transformers reads it: absent from a BitNetConfig (model_type "bitnet") is that class's
    /// default, 5; an explicit null is num_attention_heads. Absent read as the head count, and the 2B4T config without
    /// the key failed on k_proj's shape, blaming the weights.
    /// </summary>
    [Fact]
    public void KeyValueHeadsAbsentOrNullFollowTransformers()
    {
        static HfConfig Parse(string json) => HfConfig.Parse(Encoding.UTF8.GetBytes(json), "config.json");
        Assert.Equal(5, Parse(BitNet2B4TConfig.Replace("\"num_key_value_heads\": 5,", "")).NumKeyValueHeads);
        Assert.Equal(20, Parse(BitNet2B4TConfig.Replace("\"num_key_value_heads\": 5,", "\"num_key_value_heads\": null,")).NumKeyValueHeads);
        Assert.Equal(20, Parse(BitNet2B4TConfig.Replace("\"num_key_value_heads\": 5,", "").Replace("\"model_type\": \"bitnet\",", "\"model_type\": \"llama\",")).NumKeyValueHeads);
    }

    /// <summary>
    /// A config without "architectures" (BitNetConfig saved on its own) resolves by model_type as transformers' auto
    /// classes do: "bitnet" is BitNetForCausalLM; "llama" with quant_method bitnet the ternary Llama; another type is
    /// still refused. It was refused whatever model_type said.
    /// </summary>
    [Fact]
    public void ModelTypeStandsInForAMissingArchitecturesList()
    {
        static HfConfig Parse(string json) => HfConfig.Parse(Encoding.UTF8.GetBytes(json), "config.json");
        string bare = BitNet2B4TConfig.Replace("\"architectures\": [\"BitNetForCausalLM\"],", "");
        Assert.Empty(Parse(bare).Architectures);
        Assert.Equal(ModelFamily.BitNet158, ModelConfig.FromHf(Parse(bare)).Family);
        Assert.Equal(ModelFamily.TernaryLlama, ModelConfig.FromHf(Parse(bare.Replace("\"model_type\": \"bitnet\",", "\"model_type\": \"llama\","))).Family); // quant_method bitnet
        var e = Assert.Throws<BitNetSharp.Formats.ModelFormatException>(() => ModelConfig.FromHf(Parse(bare.Replace("\"model_type\": \"bitnet\",", "\"model_type\": \"gpt2\","))));
        Assert.Contains("'gpt2'", e.Message);
    }

    /// <summary>A quantization of another kind is refused naming the key: a BitNet config with quant_method "gptq"
    /// had its uint8 weights unpacked as ternary codes and generated nonsense, exit 0 (GGUF/HF fuzz sweep).</summary>
    [Fact]
    public void AnotherQuantizationMethodIsRefused()
    {
        static HfConfig Parse(string json) => HfConfig.Parse(Encoding.UTF8.GetBytes(json), "config.json");
        Assert.Contains("\"quant_method\": \"bitnet\"", BitNet2B4TConfig);
        foreach (var method in new[] { "gptq", "awq", "bitsandbytes" })
        {
            var e = Assert.Throws<BitNetSharp.Formats.ModelFormatException>(() => ModelConfig.FromHf(Parse(BitNet2B4TConfig.Replace("\"quant_method\": \"bitnet\"", $"\"quant_method\": \"{method}\""))));
            Assert.Contains($"'{method}' is not a quantization this runtime reads", e.Message);
            Assert.Contains("quantization_config.quant_method", e.Message);
        }
        Assert.Equal(ModelFamily.BitNet158, ModelConfig.FromHf(Parse(BitNet2B4TConfig.Replace("\"quant_method\": \"bitnet\"", "\"quant_method\": \"BitNet\""))).Family);
    }

    [Fact]
    public void ParsesTheBitNet2B4TConfig()
    {
        var c = HfConfig.Parse(Encoding.UTF8.GetBytes(BitNet2B4TConfig), "config.json");
        Assert.Equal(["BitNetForCausalLM"], c.Architectures);
        Assert.Equal("bitnet", c.ModelType);
        Assert.Equal(2560, c.HiddenSize);
        Assert.Equal(6912, c.IntermediateSize);
        Assert.Equal(30, c.NumHiddenLayers);
        Assert.Equal(20, c.NumAttentionHeads);
        Assert.Equal(5, c.NumKeyValueHeads);
        Assert.Equal(128256, c.VocabSize);
        Assert.Equal(1e-5, c.RmsNormEps);
        Assert.Equal(500000.0, c.RopeTheta);
        Assert.Equal(4096, c.MaxPositionEmbeddings);
        Assert.Equal("relu2", c.HiddenAct);
        Assert.True(c.TieWordEmbeddings);
        Assert.Equal(128000, c.BosTokenId);
        Assert.Equal([128001], c.EosTokenIds);
        Assert.Equal("bfloat16", c.TorchDType);
        Assert.Null(c.HeadDim);
        Assert.NotNull(c.Quantization);
        Assert.Equal("bitnet", c.Quantization.QuantMethod);
        Assert.Equal("autobitlinear", c.Quantization.LinearClass);
        Assert.Equal("offline", c.Quantization.QuantizationMode);
        Assert.Null(c.Quantization.UseRmsNorm);
        Assert.True(c.Quantization.WeightScaleMultiplies);
    }

    [Fact]
    public void DefaultsAndListsAreHandled()
    {
        var c = HfConfig.Parse(Encoding.UTF8.GetBytes("""
            {"hidden_size":8,"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":2,"vocab_size":16,
             "eos_token_id":[2,7],"head_dim":4,"quantization_config":{"quant_method":"bitnet","use_rms_norm":true}}
            """), "config.json");
        Assert.Equal(2, c.NumKeyValueHeads);
        Assert.Equal([2, 7], c.EosTokenIds);
        Assert.Equal(4, c.HeadDim);
        Assert.Empty(c.Architectures);
        Assert.True(c.Quantization!.UseRmsNorm);
        Assert.False(c.Quantization.WeightScaleMultiplies);
    }

    /// <summary>transformers 5.x writes the RoPE base inside rope_parameters (as the fixtures in tests/fixtures/hf-bitnet do).</summary>
    [Fact]
    public void RopeParametersOfTransformers5AreRead()
    {
        const string Sizes = "\"architectures\":[\"BitNetForCausalLM\"],\"hidden_size\":8,\"intermediate_size\":32,\"num_hidden_layers\":1,\"num_attention_heads\":2,\"vocab_size\":16";
        static HfConfig Config(string extra) => HfConfig.Parse(Encoding.UTF8.GetBytes("{" + Sizes + extra + "}"), "dir/config.json");
        var c = Config(""","rope_parameters":{"rope_theta":10000.0,"rope_type":"default"}""");
        Assert.Equal(10000.0, c.RopeTheta);
        Assert.Equal("default", c.RopeType);
        Assert.Equal(10000f, BitNetSharp.Model.ModelConfig.FromHf(c).RopeTheta);

        // No base anywhere: transformers' BitNetConfig default, 500000.
        var bare = Config("");
        Assert.Null(bare.RopeTheta);
        Assert.Equal(500000f, BitNetSharp.Model.ModelConfig.FromHf(bare).RopeTheta);

        // Frequency-rescaling RoPE types are refused by name instead of being run as plain RoPE.
        // The error names the field the type came from (it always said rope_parameters.rope_type).
        foreach (var (json, key) in new[]
        {
            (""","rope_parameters":{"rope_theta":500000.0,"rope_type":"llama3","factor":8.0}""", "rope_parameters.rope_type"),
            (""","rope_theta":500000.0,"rope_scaling":{"type":"linear","factor":2.0}""", "rope_scaling.type"),
            (""","rope_theta":500000.0,"rope_scaling":{"rope_type":"yarn","factor":2.0}""", "rope_scaling.rope_type"),
        })
        {
            var scaled = Config(json);
            var e = Assert.Throws<ModelFormatException>(() => BitNetSharp.Model.ModelConfig.FromHf(scaled));
            Assert.Equal(key, e.Item);
            Assert.Contains("does not implement", e.Message);
        }

        // As the GGUF path reads it: linear × 1 is a no-op and loads (it was refused here); a factor without a type
        // rescales in transformers and is refused (it ran as plain RoPE).
        Assert.Equal(500000f, BitNetSharp.Model.ModelConfig.FromHf(Config(""","rope_theta":500000.0,"rope_scaling":{"type":"linear","factor":1.0}""")).RopeTheta);
        Assert.Equal("rope_scaling.factor", Assert.Throws<ModelFormatException>(() => BitNetSharp.Model.ModelConfig.FromHf(Config(""","rope_scaling":{"factor":4.0}"""))).Item);
        Assert.Equal("rope_parameters.factor", Assert.Throws<ModelFormatException>(() => BitNetSharp.Model.ModelConfig.FromHf(Config(""","rope_parameters":{"rope_theta":10000.0,"factor":2.0}"""))).Item);

        var norm = Config(""","quantization_config":{"quant_method":"bitnet","use_rms_norm":true}""");
        Assert.Equal("quantization_config.use_rms_norm", Assert.Throws<ModelFormatException>(() => BitNetSharp.Model.ModelConfig.FromHf(norm)).Item);

        // A base of 1 or below, or a context past 2^24, loaded and then failed in the engine (the RoPE table refuses such a base).
        foreach (var (json, what) in new[] { (""","rope_theta":1.0""", "RoPE base"), (""","rope_theta":0.5""", "RoPE base"), (""","max_position_embeddings":2000000000""", "context length") })
            Assert.Contains(what, Assert.Throws<ModelFormatException>(() => BitNetSharp.Model.ModelConfig.FromHf(Config(json))).Message);
    }

    [Theory]
    [InlineData("""{"hidden_size":8,"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":2,"vocab_size":16,"rope_parameters":[1]}""", "rope_parameters", "expected an object")]
    [InlineData("""{"hidden_size":8,"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":2,"vocab_size":16,"rope_parameters":{"rope_theta":"big"}}""", "rope_parameters.rope_theta", "expected a number")]
    [InlineData("""{"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":2,"vocab_size":16}""", "hidden_size", "missing")]
    [InlineData("""{"hidden_size":"8","intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":2,"vocab_size":16}""", "hidden_size", "expected a non-negative integer")]
    [InlineData("""{"hidden_size":8,"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":2,"vocab_size":16,"eos_token_id":"x"}""", "eos_token_id", "expected an integer or a list")]
    [InlineData("""{"hidden_size":8,"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":2,"vocab_size":16,"quantization_config":{"use_rms_norm":1}}""", "quantization_config.use_rms_norm", "expected true or false")]
    [InlineData("""{"hidden_size":8,"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":2,"vocab_size":16,"bos_token_id":true}""", "bos_token_id", "found true, expected")] // "found true true" before
    public void BadFieldsNameTheField(string json, string field, string expected)
    {
        var e = Assert.Throws<ModelFormatException>(() => HfConfig.Parse(Encoding.UTF8.GetBytes(json), "dir/config.json"));
        Assert.Equal(field, e.Item);
        Assert.Contains(expected, e.Message);
        Assert.StartsWith("dir/config.json: ", e.Message);
    }

    [Fact]
    public void OpensADirectoryWithConfigWeightsAndTokenizerFiles()
    {
        using var dir = new TestGguf.TempDirectory();
        File.WriteAllText(dir.File("config.json"), BitNet2B4TConfig);
        File.WriteAllBytes(dir.File("model.safetensors"), TestSafetensors.Small().ToArray());
        File.WriteAllText(dir.File("tokenizer.json"), "{}");
        File.WriteAllText(dir.File("tokenizer_config.json"), "{}");
        using var m = HfModelDirectory.Open(dir.Path);
        Assert.Equal(2560, m.Config.HiddenSize);
        Assert.Equal(7, m.Weights.Tensors.Count);
        Assert.Equal(["tokenizer.json", "tokenizer_config.json"], m.TokenizerFiles);
        Assert.Equal(ModelPathKind.HuggingFaceDirectory, ModelPath.Detect(dir.Path));
    }

    /// <summary>
    /// model.safetensors is read before an index, as transformers' from_pretrained looks for them, and the index left
    /// unread is said: with both present the index won here, and other weights ran than transformers runs, without a word.
    /// A shard path that is a directory is said as such (it read "Access to the path is denied").
    /// </summary>
    [Fact]
    public void ASingleFileIsReadBeforeAnIndexAndTheIndexIsNoted()
    {
        using var dir = new TestGguf.TempDirectory();
        File.WriteAllText(dir.File("config.json"), BitNet2B4TConfig);
        File.WriteAllBytes(dir.File("model.safetensors"), TestSafetensors.Small().ToArray());
        Directory.CreateDirectory(dir.File("shard.safetensors"));
        File.WriteAllText(dir.File("model.safetensors.index.json"), """{"weight_map":{"a":"shard.safetensors"}}""");
        using (var m = HfModelDirectory.Open(dir.Path))
        {
            Assert.Equal(7, m.Weights.Tensors.Count);
            Assert.Contains("model.safetensors is read", m.Note);
        }
        File.Delete(dir.File("model.safetensors"));
        var shard = Assert.Throws<ModelFormatException>(() => HfModelDirectory.Open(dir.Path));
        Assert.Contains("is a directory", shard.Message);
    }

    [Fact]
    public void MissingPiecesAreNamed()
    {
        using var dir = new TestGguf.TempDirectory();
        var noConfig = Assert.Throws<ModelFormatException>(() => HfModelDirectory.Open(dir.Path));
        Assert.Contains("config.json", noConfig.Message);
        File.WriteAllText(dir.File("config.json"), BitNet2B4TConfig);
        var noWeights = Assert.Throws<ModelFormatException>(() => HfModelDirectory.Open(dir.Path));
        Assert.Contains("no weights found", noWeights.Message);
    }

    [Fact]
    public void ModelPathDetectsEachKindAndExplainsTheRest()
    {
        using var dir = new TestGguf.TempDirectory();
        var gguf = dir.File("m.bin");
        File.WriteAllBytes(gguf, TestGguf.Small().ToArray());
        Assert.Equal(ModelPathKind.Gguf, ModelPath.Detect(gguf));
        var st = dir.File("weights.data");
        File.WriteAllBytes(st, TestSafetensors.Small().ToArray());
        Assert.Equal(ModelPathKind.Safetensors, ModelPath.Detect(st));

        var text = dir.File("notes.txt");
        File.WriteAllText(text, "hello, world");
        Assert.Contains("not a model file", Assert.Throws<ModelFormatException>(() => ModelPath.Detect(text)).Message);
        var fakeGguf = dir.File("fake.gguf");
        File.WriteAllText(fakeGguf, "GGML....");
        Assert.Contains("GGUF magic", Assert.Throws<ModelFormatException>(() => ModelPath.Detect(fakeGguf)).Message);
        var missing = Assert.Throws<ModelFormatException>(() => ModelPath.Detect(dir.File("nope.gguf")));
        Assert.Contains("no such file or directory", missing.Message);
        Directory.CreateDirectory(dir.File("empty"));
        Assert.Contains("no config.json", Assert.Throws<ModelFormatException>(() => ModelPath.Detect(dir.File("empty"))).Message);
    }
}
