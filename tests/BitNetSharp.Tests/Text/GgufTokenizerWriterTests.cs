using System.Text.Json;
using BitNetSharp.Cli;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Tests.Text;

/// <summary>A tokenizer written as GGUF metadata (what `bitnet convert` does for HF directories) reads back as the same tokenizer.</summary>
public class GgufTokenizerWriterTests
{
    private const string Multilingual = "Hello world! It's 2026: ümlauts, 日本語, emoji 🚀, tabs\tand\nnew lines   spaces. <|eot_id|>";

    private static BitNetTokenizer RoundTrip(BitNetTokenizer tokenizer)
    {
        var writer = new GgufWriter().AddString("general.architecture", "bitnet-b1.58");
        GgufTokenizerWriter.Write(tokenizer, writer);
        using var file = GgufFile.Parse(writer.ToArray(), "roundtrip.gguf");
        return TokenizerLoader.FromGguf(file);
    }

    private static void AssertSameTokenizer(BitNetTokenizer expected, BitNetTokenizer actual, string text)
    {
        Assert.Equal(expected.VocabularySize, actual.VocabularySize);
        Assert.Equal(expected.BosId, actual.BosId);
        Assert.Equal(expected.EosId, actual.EosId);
        Assert.Equal(expected.EotId, actual.EotId);
        Assert.Equal(expected.AddBosToken, actual.AddBosToken);
        Assert.Equal(expected.StopTokenIds.Order(), actual.StopTokenIds.Order());
        var ids = expected.Encode(text, addBos: true, parseSpecial: true);
        Assert.Equal(ids, actual.Encode(text, addBos: true, parseSpecial: true));
        Assert.Equal(expected.Decode(ids), actual.Decode(ids));
    }

    private static string Sample()
    {
        string corpus = SharedData.RequirePath("corpora/tinyshakespeare.txt");
        var text = File.ReadAllText(corpus);
        return text[..20_000] + Multilingual;
    }

    [Fact]
    public void Gpt2VocabularyRoundTrips() => AssertSameTokenizer(TestTokenizers.Gpt2, RoundTrip(TestTokenizers.Gpt2), Sample());

    [Fact]
    public void SentencePieceVocabularyRoundTrips() => AssertSameTokenizer(TestTokenizers.LlamaSpm, RoundTrip(TestTokenizers.LlamaSpm), Sample());

    /// <summary>
    /// Llama 3's tiktoken tokenizer.model (what 2B4T's HF directory ships) becomes a "gpt2" GGUF vocabulary with merges
    /// derived from the ranks: the same 280,147 merges as the test suite's own derivation (and the official GGUF), and
    /// the same ids as the tiktoken tokenizer on 20 KB of text.
    /// </summary>
    [Fact]
    public void Llama3TiktokenBecomesAGgufVocabularyWithTheOfficialMerges()
    {
        var tiktoken = (TiktokenBpeTokenizer)TestTokenizers.Llama3Tiktoken;
        var merges = tiktoken.DeriveMerges();
        Assert.Equal(280_147, merges.Length);
        Assert.Equal(TestTokenizers.Llama3VocabularyWithMerges(SharedData.RequirePath("tokenizers/llama3_tokenizer.model")).Merges, merges);
        var back = RoundTrip(tiktoken);
        Assert.IsType<ByteLevelBpeTokenizer>(back);
        Assert.Contains("llama3", back.Description);
        AssertSameTokenizer(tiktoken, back, Sample());
    }

    /// <summary>
    /// A model's embedding padded past its tokenizer (GPT-2's 50,257 ids in 50,304 rows): the GGUF token list covers
    /// every row, the extra ids as unused "[PADn]" tokens (llama.cpp refuses a token_embd of another size than the
    /// list), and the text still encodes to the same ids.
    /// </summary>
    [Theory]
    [InlineData("gpt2")]
    [InlineData("spm")]
    public void VocabularyIsPaddedToTheModelsRows(string which)
    {
        var tokenizer = which == "gpt2" ? TestTokenizers.Gpt2 : TestTokenizers.LlamaSpm;
        int rows = tokenizer.VocabularySize + 47;
        var writer = new GgufWriter();
        GgufTokenizerWriter.Write(tokenizer, writer, rows);
        using var file = GgufFile.Parse(writer.ToArray(), "padded.gguf");
        var tokens = file.Metadata.GetStringArray("tokenizer.ggml.tokens");
        Assert.Equal(rows, tokens.Length);
        Assert.Equal(rows, tokens.Distinct().Count());
        Assert.Equal($"[PAD{rows - 1}]", tokens[^1]);
        var back = TokenizerLoader.FromGguf(file);
        Assert.Equal(rows, back.VocabularySize);
        Assert.Equal(TokenKind.Unused, back.KindOf(rows - 1));
        Assert.Equal("", back.Decode([rows - 1]));
        string text = Sample();
        Assert.Equal(tokenizer.Encode(text, addBos: true, parseSpecial: true), back.Encode(text, addBos: true, parseSpecial: true));
    }

    [Fact]
    public void CustomRegexIsReportedNotWritten()
    {
        using var dir = new TempDirectory();
        File.WriteAllText(Path.Combine(dir.Path, "tokenizer.json"), TinyTokenizerJson(@"\\p{L}+|\\s+"));
        var tokenizer = TokenizerLoader.FromHfDirectory(dir.Path);
        Assert.Contains("custom regex", GgufTokenizerWriter.CannotWrite(tokenizer));
        Assert.Throws<NotSupportedException>(() => GgufTokenizerWriter.Write(tokenizer, new GgufWriter()));
    }

    /// <summary>
    /// A tokenizer.json small enough for the 128-token fixture models: the byte-level letters a–z and space, and merges
    /// for "th", "he", "the", " the". With no Split step the pre-tokenizer is ByteLevel's own GPT-2 regex.
    /// </summary>
    internal static string TinyTokenizerJson(string? splitRegex = null)
    {
        var vocab = new List<string>();
        for (char ch = 'a'; ch <= 'z'; ch++) vocab.Add(ch.ToString());
        vocab.AddRange(["Ġ", "th", "he", "the", "Ġt", "Ġthe"]);
        string vocabJson = string.Join(",", vocab.Select((t, i) => $"\"{t}\":{i}"));
        string pre = splitRegex is null
            ? """{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}"""
            : $$"""{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"{{splitRegex}}"},"behavior":"Isolated","invert":false},{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]}""";
        return $$$"""
            {"version":"1.0","added_tokens":[{"id":{{{vocab.Count}}},"content":"<|endoftext|>","special":true}],
             "pre_tokenizer":{{{pre}}},
             "decoder":{"type":"ByteLevel"},
             "model":{"type":"BPE","vocab":{ {{{vocabJson}}} },"merges":["t h","h e","th e","Ġ t","Ġt he"]}}
            """;
    }

    /// <summary>`bitnet convert` of an HF directory with a tokenizer.json writes the tokenizer; `generate -p` then runs from the GGUF alone.</summary>
    [Fact]
    public void ConvertWritesTheHfTokenizerIntoTheGguf()
    {
        using var dir = new TempDirectory();
        string source = RepositoryFiles.Path(Path.Combine("tests", "fixtures", "hf-bitnet", "autobitlinear-offline-gqa-f32"));
        foreach (var name in new[] { "config.json", "model.safetensors" }) File.Copy(Path.Combine(source, name), Path.Combine(dir.Path, name));
        File.WriteAllText(Path.Combine(dir.Path, "tokenizer.json"), TinyTokenizerJson());
        string gguf = Path.Combine(dir.Path, "out.gguf");

        var output = new StringWriter();
        var error = new StringWriter();
        Assert.True(Program.Run(["convert", dir.Path, gguf, "--type", "i2_s"], output, error) == 0, error.ToString());
        Assert.Contains("tokenizer written (33 tokens", error.ToString());
        Assert.Contains("padded with 95 unused [PADn] tokens to the embedding's 128 rows", error.ToString());

        var fromDir = TokenizerLoader.FromHfDirectory(dir.Path);
        using (var file = GgufFile.Open(gguf))
        {
            var fromGguf = TokenizerLoader.FromGguf(file);
            Assert.Equal([29, 26, 29, 26, 2, 0, 19], fromGguf.Encode("the the cat", addBos: false)); // the, Ġ the, Ġ c a t: no "Ġ the" merge fires
            Assert.Equal(128, fromGguf.VocabularySize); // every embedding row has a token, as llama.cpp requires
            Assert.Equal("[PAD127]", fromGguf.TokenText(127));
            string text = "the theme then other bathe <|endoftext|>";
            var ids = fromDir.Encode(text, addBos: true, parseSpecial: true);
            Assert.Equal(ids, fromGguf.Encode(text, addBos: true, parseSpecial: true));
            Assert.Equal(fromDir.Decode(ids), fromGguf.Decode(ids));
            Assert.Equal(fromDir.EosId, fromGguf.EosId);
        }

        output = new StringWriter();
        error = new StringWriter();
        Assert.True(Program.Run(["generate", "-m", gguf, "-p", "the cat", "-n", "4", "--temp", "0", "--ignore-eos"], output, error) == 0, error.ToString());
        Assert.StartsWith("the cat", output.ToString());
    }

    /// <summary>
    /// A Hugging Face directory's generation stops where transformers' does: on generation_config.json's eos_token_id
    /// (else config.json's), not only the tokenizer's EOS (it ran on through them); convert writes such an id as the GGUF's
    /// end-of-turn token, so the converted model stops there too (its padded vocabulary samples other ids here, so the
    /// file's key is checked), and says which ids a GGUF cannot mark; an id outside
    /// the vocabulary is refused naming the file and the field.
    /// </summary>
    [Fact]
    public void GenerationConfigStopIdsEndGenerationAndSurviveConvert()
    {
        using var dir = new TempDirectory();
        string source = RepositoryFiles.Path(Path.Combine("tests", "fixtures", "hf-bitnet", "autobitlinear-offline-gqa-f32"));
        foreach (var name in new[] { "config.json", "model.safetensors" }) File.Copy(Path.Combine(source, name), Path.Combine(dir.Path, name));
        File.WriteAllText(Path.Combine(dir.Path, "tokenizer.json"), TinyTokenizerJson());
        using var outputs = new TempDirectory(); // outside the model directory, which generate will not write into
        string ids = Path.Combine(outputs.Path, "ids.json");
        int[] Generated(string model, params string[] extra)
        {
            var error = new StringWriter();
            Assert.True(Program.Run(["generate", "-m", model, "-p", "the cat", "-n", "8", "--temp", "0", "--ids-out", ids, .. extra], new StringWriter(), error) == 0, error.ToString());
            using var json = JsonDocument.Parse(File.ReadAllText(ids));
            return [.. json.RootElement.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32())];
        }
        var free = Generated(dir.Path, "--ignore-eos");
        int stop = free[2];
        int first = Array.IndexOf(free, stop);
        File.WriteAllText(Path.Combine(dir.Path, "generation_config.json"), "{\"eos_token_id\": [" + stop + ", 7]}");
        var tokenizer = TokenizerLoader.FromHfDirectory(dir.Path);
        Assert.Equal([stop, 7], tokenizer.ConfiguredStopIds);
        var stopped = Generated(dir.Path);
        Assert.True(stopped.Length <= first + 1, $"ran on past {stop}: {string.Join(",", stopped)}");
        Assert.Equal(free[..first], stopped[..first]);

        string gguf = Path.Combine(outputs.Path, "out.gguf");
        var output = new StringWriter();
        var convertError = new StringWriter();
        Assert.True(Program.Run(["convert", dir.Path, gguf], output, convertError) == 0, convertError.ToString());
        Assert.Contains("stops at token id(s) 7 (eos_token_id), which a GGUF cannot mark", convertError.ToString());
        using (var file = GgufFile.Open(gguf))
        {
            Assert.True(file.Metadata.TryGetInt32("tokenizer.ggml.eot_token_id", out int eot));
            Assert.Equal(stop, eot);
            Assert.True(TokenizerLoader.FromGguf(file).IsStopToken(stop));
        }

        File.WriteAllText(Path.Combine(dir.Path, "generation_config.json"), "{\"eos_token_id\": 500}");
        var e = Assert.Throws<BitNetSharp.Formats.ModelFormatException>(() => TokenizerLoader.FromHfDirectory(dir.Path));
        Assert.Contains("generation_config.json", e.Message);
        Assert.Equal("eos_token_id", e.Item);
    }

    /// <summary>
    /// The chat template comes along, as gguf-py writes it: tokenizer_config.json's string as tokenizer.chat_template; a
    /// list of named templates as the default one there, the others under their names; chat_template.jinja first.
    /// It was dropped, and llama.cpp served the converted model with ChatML.
    /// </summary>
    [Fact]
    public void ConvertCarriesTheChatTemplate()
    {
        using var dir = new TempDirectory();
        string source = RepositoryFiles.Path(Path.Combine("tests", "fixtures", "hf-bitnet", "autobitlinear-offline-gqa-f32"));
        foreach (var name in new[] { "config.json", "model.safetensors" }) File.Copy(Path.Combine(source, name), Path.Combine(dir.Path, name));
        File.WriteAllText(Path.Combine(dir.Path, "tokenizer.json"), TinyTokenizerJson());
        const string template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}";
        File.WriteAllText(Path.Combine(dir.Path, "tokenizer_config.json"), JsonSerializer.Serialize(new { chat_template = template }));
        string gguf = Path.Combine(dir.Path, "out.gguf");
        var output = new StringWriter();
        var error = new StringWriter();
        Assert.True(Program.Run(["convert", dir.Path, gguf, "--type", "i2_s"], output, error) == 0, error.ToString());
        Assert.Contains("chat template", error.ToString());
        using (var file = GgufFile.Open(gguf)) Assert.Equal(template, file.Metadata.GetString("tokenizer.chat_template"));

        File.WriteAllText(Path.Combine(dir.Path, "tokenizer_config.json"), JsonSerializer.Serialize(new
        {
            chat_template = new[] { new { name = "default", template }, new { name = "tool_use", template = "{{ tools }}" } },
        }));
        var keys = GgufTokenizerWriter.ChatTemplates(dir.Path).ToDictionary(k => k.Key, k => k.Value.Value);
        Assert.Equal(template, keys["tokenizer.chat_template"]);
        Assert.Equal("{{ tools }}", keys["tokenizer.chat_template.tool_use"]);
        Assert.Equal(["tool_use"], ((GgufArray)keys["tokenizer.chat_templates"]!).Items.Cast<string>());

        File.WriteAllText(Path.Combine(dir.Path, "chat_template.jinja"), "{{ jinja }}");
        Assert.Equal("{{ jinja }}", GgufTokenizerWriter.ChatTemplates(dir.Path).Single().Value.Value);
    }

    /// <summary>
    /// A tokenizer the runtime cannot read (WordPiece) stops the conversion, naming the file and --no-tokenizer (it was a
    /// warning and exit 0: a script went on with a GGUF that could not read text), and nothing is written; with
    /// --no-tokenizer the weights convert alone.
    /// </summary>
    [Fact]
    public void UnreadableTokenizerStopsTheConversionUnlessNoTokenizerIsGiven()
    {
        using var dir = new TempDirectory();
        string source = RepositoryFiles.Path(Path.Combine("tests", "fixtures", "hf-bitnet", "autobitlinear-offline-mha-bf16"));
        foreach (var name in new[] { "config.json", "model.safetensors" }) File.Copy(Path.Combine(source, name), Path.Combine(dir.Path, name));
        File.WriteAllText(Path.Combine(dir.Path, "tokenizer.json"), """{"model":{"type":"WordPiece","vocab":{"a":0}}}""");
        string gguf = Path.Combine(dir.Path, "out.gguf");
        var output = new StringWriter();
        var error = new StringWriter();
        Assert.Equal(1, Program.Run(["convert", dir.Path, gguf], output, error));
        Assert.Contains("tokenizer.json", error.ToString());
        Assert.Contains("WordPiece", error.ToString());
        Assert.Contains("--no-tokenizer", error.ToString());
        Assert.False(File.Exists(gguf));
        error = new StringWriter();
        Assert.True(Program.Run(["convert", dir.Path, gguf, "--no-tokenizer"], output, error) == 0, error.ToString());
        Assert.Contains("no tokenizer (--no-tokenizer)", error.ToString());
        // llama.cpp's marker for no vocabulary (its loader requires the key: the file was refused there; GGUF sweep).
        using (var file = GgufFile.Open(gguf))
        {
            Assert.Equal("none", file.Metadata.GetString("tokenizer.ggml.model"));
            Assert.False(BitNetSharp.Cli.Commands.ModelOptions.HasGgufTokenizer(file, gguf));
        }

        // A GGUF source's tokenizer keys are left out too.
        string again = Path.Combine(dir.Path, "again.gguf");
        Assert.True(Program.Run(["convert", RepositoryFiles.Path("models/bitnet-tinystories.gguf"), again, "--no-tokenizer"], output, error) == 0, error.ToString());
        using (var file = GgufFile.Open(again))
            Assert.Equal(["tokenizer.ggml.model"], file.Metadata.Entries.Where(e => e.Key.StartsWith("tokenizer.", StringComparison.Ordinal)).Select(e => e.Key));
        error = new StringWriter();
        Assert.True(Program.Run(["generate", "-m", again, "--prompt-ids", "1,2", "-n", "2", "--temp", "0"], new StringWriter(), error) == 0, error.ToString());
    }

    private sealed class TempDirectory : IDisposable
    {
        public string Path { get; } = Directory.CreateTempSubdirectory("bitnet-tok-").FullName;
        public void Dispose() => Directory.Delete(Path, recursive: true);
    }
}
