using System.Text.Json;
using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Cli;
using BitNetSharp.Tests.Formats;

namespace BitNetSharp.Tests.Cli;

/// <summary>Runs <c>bitnet inspect</c> in-process through <see cref="Program.Run"/>, capturing both streams.</summary>
public class InspectCommandTests
{
    private static (int ExitCode, string Output, string Error) Bitnet(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Program.Run(args, output, error);
        return (code, output.ToString(), error.ToString());
    }

    /// <summary>
    /// A vocabulary-only GGUF (llama.cpp's ggml-vocab-*.gguf) is said to be one: convert and generate said
    /// "token_embd.weight: required tensor is missing" (or an architecture complaint), inspect nothing at all.
    /// </summary>
    [Fact]
    public void AVocabularyOnlyGgufIsSaidToBeOne()
    {
        using var dir = new TestGguf.TempDirectory();
        var path = dir.File("vocab.gguf");
        var w = new GgufWriter();
        w.AddString("general.architecture", "llama");
        w.AddUInt32("llama.block_count", 2);
        w.AddString("tokenizer.ggml.model", "gpt2");
        w.WriteFile(path);
        var (code, _, error) = Bitnet("inspect", path);
        Assert.Equal(0, code);
        Assert.Contains("no tensors (a vocabulary-only GGUF)", error);
        (code, _, error) = Bitnet("convert", path, dir.File("out.gguf"), "--type", "i2_s");
        Assert.Equal(1, code);
        Assert.Contains($"{path}: the file holds no tensors (a vocabulary-only GGUF)", error);
        Assert.False(File.Exists(dir.File("out.gguf")));
        (code, _, error) = Bitnet("generate", "-m", path, "--prompt-ids", "1", "-n", "1");
        Assert.Equal(1, code);
        Assert.Contains("no tensors (a vocabulary-only GGUF)", error);
    }

    /// <summary>
    /// The tokenizer is loaded as generate loads it: a BOS id outside the vocabulary, which generate refuses, was shown
    /// in the table with no word (exit 0); and generate's warnings about the pair are said too.
    /// </summary>
    [Fact]
    public void ATokenizerGenerateRefusesIsWarnedAbout()
    {
        using var dir = new TestGguf.TempDirectory();
        string bad = dir.File("bos.gguf"), good = dir.File("good.gguf");
        BitNetSharp.Tests.Server.TinyChatModel.Build(bos: 999_999).WriteFile(bad);
        BitNetSharp.Tests.Server.TinyChatModel.Build().WriteFile(good);
        var (code, _, error) = Bitnet("generate", "-m", bad, "-p", "a", "-n", "1");
        Assert.Equal(1, code);
        Assert.Contains("bos_token_id", error);
        (code, _, error) = Bitnet("inspect", bad);
        Assert.Equal(0, code);
        Assert.StartsWith($"warning: bitnet generate would refuse this file: {bad}: ", error);
        Assert.Contains("tokenizer.ggml.bos_token_id", error);
        Assert.Contains("999999", error);
        (code, _, error) = Bitnet("inspect", good);
        Assert.Equal(0, code);
        Assert.Equal("", error);
        // A token list shorter than the embedding: generate's warning, said by inspect too.
        string padded = dir.File("padded.gguf");
        BitNetSharp.Tests.Server.TinyChatModel.Build(modelVocab: 300).WriteFile(padded);
        (code, _, error) = Bitnet("inspect", padded);
        Assert.Equal(0, code);
        Assert.StartsWith("warning: ", error);
        Assert.Contains("300", error);
    }

    [Fact]
    public void InspectShowsArchitectureAndTensorCountOfAWrittenGguf()
    {
        using var dir = new TestGguf.TempDirectory();
        var path = dir.File("tiny.gguf");
        TestGguf.TinyBitNet().WriteFile(path);

        var (code, output, error) = Bitnet("inspect", path, "--tensors");
        Assert.Equal(0, code);
        // Not a model the engine runs (one layer's worth of tensors of every type): described, and said so, exit 0 (it
        // said nothing; a file every other command refuses looked fine).
        Assert.StartsWith($"warning: bitnet generate would refuse this file: {path}: ", error);
        Assert.Single(error.Trim().Split('\n'));
        Assert.Contains("bitnet-b1.58", output);
        Assert.Contains("GGUF v3", output);
        Assert.Contains("7 (f16: 1, f32: 2, i2_s: 1, tq2_0: 1, tq1_0: 1, bf16: 1)", output);
        Assert.Contains("blk.0.attn_q.weight", output);
        Assert.Contains("[256, 256]", output);
        Assert.Contains("16,416", output); // I2_S bytes: 256·256/4 + 32
    }

    /// <summary>A long metadata value is cut in the table, with its length (a 20 MiB name took 20 s and printed 26 MB); --json keeps it whole.</summary>
    /// <summary>The file type is named for the types convert writes (only 40, I2_S, was; TQ2_0's 37 read as a bare number).</summary>
    [Fact]
    public void FileTypesAreNamed()
    {
        using var dir = new TestGguf.TempDirectory();
        string tq2 = dir.File("tq2.gguf");
        var (code, _, error) = Bitnet("convert", RepositoryFiles.Path("tests/fixtures/tinystories-4m/model.gguf"), tq2, "--type", "tq2_0");
        Assert.True(code == 0, error);
        (code, var output, error) = Bitnet("inspect", tq2);
        Assert.True(code == 0, error);
        Assert.Matches(@"file type\s*│?\s*37 \(mostly TQ2_0\)", output);
        Assert.Equal("mostly I2_S", BitNetSharp.Cli.Commands.InspectCommand.FileTypeName(40));
        Assert.Null(BitNetSharp.Cli.Commands.InspectCommand.FileTypeName(99));
    }

    [Fact]
    public void LongValuesAreCutInTheTableAndWholeInJson()
    {
        using var dir = new TestGguf.TempDirectory();
        var path = dir.File("long.gguf");
        string name = new('A', 100_000);
        var w = new GgufWriter();
        w.AddString("general.architecture", "llama").AddString("general.name", name).WriteFile(path);
        var (code, output, _) = Bitnet("inspect", path);
        Assert.Equal(0, code);
        Assert.Contains("… (100,000 characters; --json has it whole)", output);
        Assert.True(output.Length < 10_000, $"{output.Length} characters");
        (code, output, _) = Bitnet("inspect", path, "--json");
        Assert.Equal(0, code);
        Assert.Contains(name, output);
    }

    /// <summary>A model the engine runs gets no warning, in tables or JSON.</summary>
    [Fact]
    public void InspectOfARunnableModelWarnsOfNothing()
    {
        foreach (string[] extra in new[] { Array.Empty<string>(), ["--json"] })
        {
            var (code, _, error) = Bitnet(["inspect", RepositoryFiles.Path("models/bitnet-tinystories.gguf"), .. extra]);
            Assert.Equal(0, code);
            Assert.Equal("", error);
        }
    }

    /// <summary>
    /// inspect describes a file whose keys the engine would refuse (it is the tool for finding out why): a per-layer
    /// array of head counts and an activation-bits array of the wrong length aborted the whole summary.
    /// </summary>
    [Fact]
    public void InspectDescribesAFileWithKeysOfUnexpectedShapes()
    {
        using var dir = new TestGguf.TempDirectory();
        var path = dir.File("odd.gguf");
        var w = new GgufWriter();
        w.AddString("general.architecture", "llama").AddString("general.name", "odd")
         .AddUInt32("llama.block_count", 2).AddUInt32("llama.embedding_length", 64)
         .AddArray("llama.attention.head_count_kv", new[] { 2, 4 })
         .AddArray(BitNetSharp.Model.ActivationBits.GgufKey, new byte[] { 8, 8, 8 });
        w.AddTensor("w", GgmlType.F32, [4], new byte[16]).WriteFile(path);
        var (code, output, error) = Bitnet("inspect", path);
        Assert.Equal(1, code); // the key the engine refuses is still the error ...
        Assert.Contains(BitNetSharp.Model.ActivationBits.GgufKey, error);
        Assert.Contains("odd", output); // ... after the rest of the file is described
        Assert.Contains("invalid", output);
        Assert.Contains("[4]", Bitnet("inspect", path, "--tensors").Output);
        var json = Bitnet("inspect", path, "--json");
        Assert.Equal(1, json.ExitCode);
        Assert.Contains(BitNetSharp.Model.ActivationBits.GgufKey, JsonDocument.Parse(json.Output).RootElement.GetProperty("activation_bits_error").GetString());
        // With --codes the model load fails: the document is still printed, the reason under "codes" (stdout was empty).
        var codes = Bitnet("inspect", path, "--json", "--codes");
        Assert.Equal(1, codes.ExitCode);
        var root = JsonDocument.Parse(codes.Output).RootElement;
        Assert.Equal("odd", root.GetProperty("name").GetString());
        Assert.False(string.IsNullOrEmpty(root.GetProperty("codes").GetProperty("error").GetString()));
        Assert.StartsWith("error: ", codes.Error);
    }

    [Fact]
    public void InspectCodesShowsEachProjectionsShares()
    {
        using var dir = new TestGguf.TempDirectory();
        var path = dir.File("tiny.gguf");
        File.WriteAllBytes(path, BitNetSharp.Model.SyntheticModel.Build(BitNetSharp.Model.SyntheticShape.Tiny, 3).ToArray());
        var (code, output, error) = Bitnet("inspect", path, "--codes");
        Assert.Equal(0, code);
        Assert.Equal("", error);
        Assert.Contains("model checksum", output);
        Assert.Contains("blk.1.down", output);
        Assert.Contains("degenerate tensors: 0", output);
        Assert.DoesNotContain("ALL ONE SIGN", output);
    }

    /// <summary>
    /// --json --codes is one document (it once printed the codes as text after the JSON), and its per-tensor checksums
    /// tell exactly which tensors a convert changed: re-encoding the embedding leaves every projection's bytes alone.
    /// </summary>
    [Fact]
    public void InspectJsonCodesIsOneDocumentWhoseChecksumsShowWhatAConvertChanged()
    {
        using var dir = new TestGguf.TempDirectory();
        var path = dir.File("tiny.gguf");
        var converted = dir.File("tiny-q8.gguf");
        File.WriteAllBytes(path, BitNetSharp.Model.SyntheticModel.Build(BitNetSharp.Model.SyntheticShape.Tiny, 3).ToArray());
        var (cc, _, ce) = Bitnet("convert", path, converted, "--embedding-type", "q8_0");
        Assert.True(cc == 0, ce);

        JsonElement Codes(string file)
        {
            var (code, output, error) = Bitnet("inspect", file, "--json", "--codes");
            Assert.Equal(0, code);
            Assert.Equal("", error);
            using var doc = JsonDocument.Parse(output);
            Assert.Equal("bitnet-b1.58", doc.RootElement.GetProperty("architecture").GetString());
            return doc.RootElement.GetProperty("codes").Clone();
        }
        var a = Codes(path);
        var b = Codes(converted);
        Assert.Equal(0, a.GetProperty("degenerate").GetInt32());
        Assert.Equal(BitNetSharp.Model.SyntheticShape.Tiny.Layers * 7, a.GetProperty("projections").GetArrayLength());
        var first = a.GetProperty("projections")[0];
        Assert.Equal("blk.0.q", first.GetProperty("name").GetString());
        Assert.Equal(1.0, first.GetProperty("minus").GetDouble() + first.GetProperty("zero").GetDouble() + first.GetProperty("plus").GetDouble(), 6);
        static Dictionary<string, string> Sums(JsonElement codes) =>
            codes.GetProperty("tensor_checksums").EnumerateArray().ToDictionary(t => t.GetProperty("name").GetString()!, t => t.GetProperty("xxh3").GetString()!);
        var sa = Sums(a);
        var sb = Sums(b);
        Assert.Equal(sa.Keys.Order(), sb.Keys.Order());
        Assert.Equal(["token_embd.weight"], sa.Keys.Where(k => sa[k] != sb[k]).ToArray());
        Assert.Contains(sa.Keys, k => k.Contains("ffn_down"));
        Assert.NotEqual(a.GetProperty("model_checksum").GetString(), b.GetProperty("model_checksum").GetString());
    }

    [Fact]
    public void InspectShowsAQ6KEmbedding()
    {
        using var dir = new TestGguf.TempDirectory();
        var path = dir.File("q6k.gguf");
        var shape = BitNetSharp.Model.SyntheticShape.Tiny with { Dim = 256 };
        BitNetSharp.Model.SyntheticModel.Build(shape, 3, BitNetSharp.Formats.Gguf.GgmlType.Q6_K).WriteFile(path);

        var (code, output, error) = Bitnet("inspect", path, "--tensors");
        Assert.Equal(0, code);
        Assert.Equal("", error);
        Assert.Contains("q6_K: 1", output);
        Assert.Matches(@"token_embd\.weight\s+│?\s*q6_K", output);
        Assert.Contains("53,760", output); // 256 rows × one 210-byte block

        (code, output, _) = Bitnet("inspect", path, "--json", "--tensors");
        Assert.Equal(0, code);
        using var doc = JsonDocument.Parse(output);
        var embd = doc.RootElement.GetProperty("tensors").EnumerateArray().Single(t => t.GetProperty("name").GetString() == "token_embd.weight");
        Assert.Equal("q6_K", embd.GetProperty("type").GetString());
        Assert.Equal(53_760, embd.GetProperty("bytes").GetInt64());
    }

    [Fact]
    public void InspectJsonIsOneParsableDocumentWithTheSameFacts()
    {
        using var dir = new TestGguf.TempDirectory();
        var path = dir.File("tiny.gguf");
        TestGguf.TinyBitNet().WriteFile(path);

        var (code, output, _) = Bitnet("inspect", path, "--json", "--tensors");
        Assert.Equal(0, code);
        using var doc = JsonDocument.Parse(output);
        var root = doc.RootElement;
        Assert.Equal("gguf", root.GetProperty("format").GetString());
        Assert.Equal("bitnet-b1.58", root.GetProperty("architecture").GetString());
        Assert.Equal(7, root.GetProperty("tensor_count").GetInt32());
        Assert.Equal(7, root.GetProperty("tensors").GetArrayLength());
        Assert.Equal(new FileInfo(path).Length, root.GetProperty("file_bytes").GetInt64());
        var h = root.GetProperty("hyperparameters");
        Assert.Equal(256, h.GetProperty("embedding_length").GetInt32());
        Assert.Equal(4, h.GetProperty("head_count").GetInt32());
        Assert.Equal(2, h.GetProperty("head_count_kv").GetInt32());
        Assert.Equal(500000, h.GetProperty("rope_theta").GetDouble());
        Assert.Equal(1e-5, h.GetProperty("rms_norm_eps").GetDouble());
        Assert.Equal("gpt2", root.GetProperty("tokenizer").GetProperty("model").GetString());
        Assert.Equal(2, root.GetProperty("tokenizer").GetProperty("merge_count").GetInt32());
        // Projections: I2_S 256×256, TQ2_0 256×128, TQ1_0 256×128 and the BF16 ffn_down 512×256.
        long projectionParams = 256 * 256 + 2 * 256 * 128 + 512 * 256;
        Assert.Equal(projectionParams, root.GetProperty("parameters").GetProperty("projection").GetInt64());
        long projectionBytes = 16416 + 128 * 66 + 128 * 54 + 512 * 256 * 2;
        Assert.Equal(projectionBytes * 8.0 / projectionParams, root.GetProperty("bits_per_weight").GetProperty("projection").GetDouble(), 9);
    }

    [Fact]
    public void InspectReadsAHuggingFaceDirectory()
    {
        using var dir = new TestGguf.TempDirectory();
        File.WriteAllText(dir.File("config.json"), HfModelDirectoryTests.BitNet2B4TConfig);
        File.WriteAllBytes(dir.File("model.safetensors"), TestSafetensors.Small().ToArray());
        File.WriteAllText(dir.File("tokenizer.json"), "{}");

        var (code, output, _) = Bitnet("inspect", dir.Path, "--json");
        Assert.Equal(0, code);
        using var doc = JsonDocument.Parse(output);
        var root = doc.RootElement;
        Assert.Equal("hf-directory", root.GetProperty("format").GetString());
        Assert.Equal("BitNetForCausalLM", root.GetProperty("architecture").GetString());
        Assert.Equal(30, root.GetProperty("hyperparameters").GetProperty("block_count").GetInt32());
        Assert.Equal("tokenizer.json", root.GetProperty("tokenizer").GetProperty("files")[0].GetString());
        // The packed U8 q_proj [2, 8] holds 4 ternary weights per byte.
        Assert.Equal(64, root.GetProperty("parameters").GetProperty("projection").GetInt64());
        Assert.Equal(2.0, root.GetProperty("bits_per_weight").GetProperty("projection").GetDouble());

        // The stop ids are generation's: generation_config.json's when it exists (config.json's alone were shown; HF sweep).
        File.WriteAllText(dir.File("generation_config.json"), """{"eos_token_id": [128001, 128009]}""");
        (code, output, _) = Bitnet("inspect", dir.Path, "--json");
        Assert.Equal(0, code);
        using var withGeneration = JsonDocument.Parse(output);
        Assert.Equal([128001, 128009], withGeneration.RootElement.GetProperty("tokenizer").GetProperty("eos_token_ids").EnumerateArray().Select(e => e.GetInt32()));
        // The table shows them too, beside the files (the files' list replaced the ids and counts there).
        var (tableCode, table, _) = Bitnet("inspect", dir.Path);
        Assert.Equal(0, tableCode);
        Assert.Contains("eos 128001/128009", table);
        Assert.Contains("generation_config.json", table);
        // A config setting generate refuses is warned of, as for a GGUF (it was not), and the directory still described.
        var config = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(dir.File("config.json")))!.AsObject();
        config["partial_rotary_factor"] = 0.5;
        File.WriteAllText(dir.File("config.json"), config.ToJsonString());
        var (warnedCode, warnedOutput, warning) = Bitnet("inspect", dir.Path);
        Assert.Equal(0, warnedCode);
        Assert.Contains("warning: bitnet generate would refuse this directory:", warning);
        Assert.Contains("partial_rotary_factor", warning);
        Assert.Contains("BitNetForCausalLM", warnedOutput);
        config.Remove("partial_rotary_factor");
        File.WriteAllText(dir.File("config.json"), config.ToJsonString());

        // A damaged generation_config.json leaves the rest described (review: inspect failed outright on it).
        File.WriteAllText(dir.File("generation_config.json"), "{bad");
        (code, output, _) = Bitnet("inspect", dir.Path, "--json");
        Assert.Equal(0, code);
        using var damaged = JsonDocument.Parse(output);
        Assert.Equal([128001], damaged.RootElement.GetProperty("tokenizer").GetProperty("eos_token_ids").EnumerateArray().Select(e => e.GetInt32()));
    }

    [Fact]
    public void InspectOfTheTinyRandomLlamaListsItsTwelveTensors()
    {
        var path = SharedData.RequirePath("models/llama-2-tiny-random.gguf");
        var (code, output, _) = Bitnet("inspect", path, "--json");
        Assert.Equal(0, code);
        using var doc = JsonDocument.Parse(output);
        Assert.Equal("llama", doc.RootElement.GetProperty("architecture").GetString());
        Assert.Equal(12, doc.RootElement.GetProperty("tensor_count").GetInt32());
        Assert.Equal(8, doc.RootElement.GetProperty("hyperparameters").GetProperty("embedding_length").GetInt32());
    }

    [Fact]
    public void MissingPathFailsWithOneLineNamingIt()
    {
        var missing = Path.Combine(Path.GetTempPath(), "no-such-model-" + Guid.NewGuid().ToString("N") + ".gguf");
        var (code, output, error) = Bitnet("inspect", missing);
        Assert.NotEqual(0, code);
        Assert.Equal("", output);
        Assert.Contains(missing, error);
        Assert.Single(error.TrimEnd().Split('\n'));
        Assert.DoesNotContain("   at ", error);
    }

    /// <summary>
    /// Keys of another type than the spec's read as absent, as inspect already did for the hyper-parameters: a string
    /// general.file_type (the runtime never reads it), a numeric general.name or tokenizer model threw out of inspect,
    /// the tool for finding out what a file holds.
    /// </summary>
    [Fact]
    public void KeysOfAnotherTypeReadAsAbsent()
    {
        using var dir = new TestGguf.TempDirectory();
        var path = dir.File("odd.gguf");
        var w = TestGguf.Small();
        w.AddString("general.file_type", "40");
        w.AddInt32("general.name", 7);
        w.AddUInt32("tokenizer.ggml.model", 2);
        w.AddInt32("tokenizer.ggml.merges", 3);
        w.WriteFile(path);
        using (var f = GgufFile.Open(path))
        {
            var summary = ModelSummary.FromGguf(f);
            Assert.Null(summary.FileType);
            Assert.Null(summary.Name);
            Assert.Null(summary.Tokenizer.Model);
            Assert.Null(summary.Tokenizer.MergeCount);
            Assert.Equal(4, summary.Tokenizer.TokenCount);
        }
        var (code, output, error) = Bitnet("inspect", path);
        Assert.True(code == 0, error);
        Assert.Contains("bitnet-b1.58", output);
    }

    [Fact]
    public void CorruptFileFailsWithOneLine()
    {
        using var dir = new TestGguf.TempDirectory();
        var path = dir.File("broken.gguf");
        var bytes = TestGguf.Small().ToArray();
        File.WriteAllBytes(path, bytes.AsSpan(0, bytes.Length / 2).ToArray());
        var (code, _, error) = Bitnet("inspect", path);
        Assert.Equal(1, code);
        Assert.StartsWith("error: " + path + ": ", error);
        Assert.Single(error.TrimEnd().Split('\n'));
    }

    /// <summary>
    /// A malformed activation-width key is a one-line error naming the file and key (exit 1) for every command that
    /// reads it; it used to escape the CLI as an InvalidDataException stack trace.
    /// </summary>
    [Theory]
    [InlineData("inspect")]
    [InlineData("generate")]
    public void MalformedActivationBitsKeyIsAnErrorNamingFileAndKey(string command)
    {
        using var dir = new TestGguf.TempDirectory();
        var path = dir.File("badbits.gguf");
        var w = BitNetSharp.Model.SyntheticModel.Build(BitNetSharp.Model.SyntheticShape.Tiny, 3);
        w.AddArray(BitNetSharp.Model.ActivationBits.GgufKey, new byte[] { 8, 8, 8, 7 });
        w.WriteFile(path);
        string[] args = command == "inspect" ? ["inspect", path] : ["generate", "-m", path, "--prompt-ids", "1,2", "-n", "2"];
        var (code, _, error) = Bitnet(args);
        Assert.Equal(1, code);
        Assert.StartsWith("error: ", error);
        Assert.Contains("badbits.gguf", error);
        Assert.Contains(BitNetSharp.Model.ActivationBits.GgufKey, error);
        Assert.Single(error.TrimEnd().Split('\n'));
    }

    /// <summary>--codes on a lone .safetensors file is a usage error before any output (the table came out, then the
    /// load failed with exit 1).</summary>
    [Fact]
    public void CodesOfALoneSafetensorsFileIsRefusedBeforeAnyOutput()
    {
        using var dir = new TestGguf.TempDirectory();
        string file = dir.File("model.safetensors");
        File.WriteAllBytes(file, TestSafetensors.Small().ToArray());
        var (code, output, error) = Bitnet("inspect", file, "--codes");
        Assert.Equal(2, code);
        Assert.Contains("--codes", error);
        Assert.Equal("", output);
        Assert.Equal(0, Bitnet("inspect", file).ExitCode);
    }

    [Fact]
    public void MissingArgumentIsAUsageError()
    {
        var (code, output, error) = Bitnet("inspect");
        Assert.Equal(2, code);
        Assert.Contains("path", error);
        Assert.Equal("", output);
        // An unknown flag too: exit 2 (it was 1, the code of a bad model file) and nothing on stdout (the help text went
        // there, into `| jq`).
        (code, output, error) = Bitnet("inspect", "m.gguf", "--jsn");
        Assert.Equal(2, code);
        Assert.Contains("--jsn", error);
        Assert.Contains("bitnet inspect --help", error);
        Assert.Equal("", output);
    }

    /// <summary>A mistyped option is a usage error (exit 2), not a missing file (exit 1), on inspect and convert.</summary>
    [Fact]
    public void AMistypedOptionIsAUsageError()
    {
        foreach (var args in new[] { new[] { "inspect", "--bogus" }, ["convert", "--bogus", "x.gguf"], ["convert", "in.gguf", "--typ"] })
        {
            var (code, output, error) = Bitnet(args);
            Assert.Equal(2, code);
            Assert.Contains("is not an option of bitnet " + args[0], error);
            Assert.Equal("", output);
        }
        // After --, a path that starts with -- is a path: missing, exit 1 naming it.
        var (missing, _, why) = Bitnet("inspect", "--", "--no-such-model.gguf");
        Assert.Equal(1, missing);
        Assert.Contains("--no-such-model.gguf", why);
    }
}
