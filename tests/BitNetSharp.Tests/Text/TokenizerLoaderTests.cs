using System.Text.Json;
using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Tests.Formats;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Tests.Text;

public class TokenizerLoaderTests
{
    /// <summary>
    /// GPT-NeoX's vocabularies (Pythia, MPT) have no tokens for 0xC0, 0xC1 and 0xF5–0xFF, bytes UTF-8 never holds: no
    /// warning (they were warned about as damaged). A byte text can hold and the vocabulary lacks is still named.
    /// </summary>
    [Theory]
    [InlineData("ggml-vocab-gpt-neox.gguf")]
    [InlineData("ggml-vocab-mpt.gguf")]
    public void BytesUtf8NeverHoldsAreNotMissing(string name)
    {
        using var file = GgufFile.Open(SharedData.RequirePath("llama.cpp-vocab/" + name));
        Assert.Null(TokenizerLoader.FromGguf(file).CoverageWarning);
    }

    [Fact]
    public void BertWordPieceIsRefusedByName()
    {
        using var file = GgufFile.Open(SharedData.RequirePath("llama.cpp-vocab/ggml-vocab-bert-bge.gguf"));
        var e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.FromGguf(file));
        Assert.Equal("tokenizer.ggml.model", e.Item);
        Assert.Contains("WordPiece (BERT) vocabularies are not supported", e.Message);
        Assert.Contains("ggml-vocab-bert-bge.gguf", e.Message);
    }

    [Fact]
    public void VocabularyGgufsWithoutVectorsLoadAndRoundTrip()
    {
        // gpt-neox has no tokenizer.ggml.pre (llama.cpp's "default" applies); baichuan is SentencePiece.
        foreach (var (name, description) in new[] { ("gpt-neox", "default pre-tokenizer"), ("baichuan", "SentencePiece") })
        {
            using var file = GgufFile.Open(SharedData.RequirePath($"llama.cpp-vocab/ggml-vocab-{name}.gguf"));
            var tokenizer = TokenizerLoader.FromGguf(file);
            Assert.Contains(description, tokenizer.Description);
            const string text = "Hello wörld, 123456 🦙 我想在apple工作";
            Assert.Equal(text, tokenizer.Decode(tokenizer.Encode(text, addBos: false)));
        }
    }

    private static GgufWriter Gpt2Style(string? pre, int tokenCount = 6)
    {
        var tokens = new[] { "a", "b", "ab", "Ġ", "<|endoftext|>", "c" }.Concat(TestGguf.Tokens(tokenCount - 6)).ToArray();
        var w = new GgufWriter()
            .AddString("general.architecture", "bitnet-b1.58")
            .AddString("tokenizer.ggml.model", "gpt2")
            .AddArray("tokenizer.ggml.tokens", tokens)
            .AddArray("tokenizer.ggml.token_type", tokens.Select((_, i) => i == 4 ? 3 : 1).ToArray())
            .AddArray("tokenizer.ggml.merges", new[] { "a b" })
            .AddUInt32("tokenizer.ggml.bos_token_id", 4)
            .AddUInt32("tokenizer.ggml.eos_token_id", 4);
        if (pre != null) w.AddString("tokenizer.ggml.pre", pre);
        return w;
    }

    [Fact]
    public void SmallGpt2VocabularyWithoutPreUsesLlamaCppDefault()
    {
        using var file = GgufFile.Parse(Gpt2Style(null).ToArray(), "small.gguf");
        var tokenizer = Assert.IsType<ByteLevelBpeTokenizer>(TokenizerLoader.FromGguf(file));
        Assert.Equal("default", tokenizer.PreTokenizer.Name);
        Assert.False(tokenizer.AddBosToken);
        Assert.Equal([2, 3, 2, 5], tokenizer.Encode("ab abc", addBos: false));
        Assert.Equal([4, 2], tokenizer.Encode("ab", addBos: true));
        Assert.Equal([4], tokenizer.StopTokenIds);
    }

    [Fact]
    public void UnknownPreTokenizerAndTokenizerModelAreNamed()
    {
        using (var file = GgufFile.Parse(Gpt2Style("klingon").ToArray(), "pre.gguf"))
        {
            var e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.FromGguf(file));
            Assert.Equal("tokenizer.ggml.pre", e.Item);
            Assert.Contains("\"klingon\" is not supported", e.Message);
            Assert.Contains("llama-bpe", e.Message);
        }
        var t5 = new GgufWriter().AddString("tokenizer.ggml.model", "t5").AddArray("tokenizer.ggml.tokens", new[] { "x" });
        using (var file = GgufFile.Parse(t5.ToArray(), "t5.gguf"))
        {
            var e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.FromGguf(file));
            Assert.Contains("\"t5\" is not supported", e.Message);
        }
        var badBos = Gpt2Style("gpt-2");
        badBos.AddUInt32("tokenizer.ggml.eot_token_id", 99);
        using (var file = GgufFile.Parse(badBos.ToArray(), "eot.gguf"))
        {
            var e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.FromGguf(file));
            Assert.Equal("tokenizer.ggml.eot_token_id", e.Item);
            Assert.Contains("token id 99 is outside the vocabulary of 6 tokens", e.Message);
        }
    }

    /// <summary>A Llama-2-style folder: a SentencePiece-style tokenizer.json beside tokenizer.model loads the .model (it failed).</summary>
    [Fact]
    public void HfDirectoryWithASentencePieceJsonUsesTokenizerModel()
    {
        using var dir = new TestGguf.TempDirectory();
        File.Copy(SharedData.RequirePath("tokenizers/llama2_tokenizer.model"), dir.File("tokenizer.model"));
        File.WriteAllText(dir.File("tokenizer.json"), """{"model":{"type":"BPE","vocab":{"a":0}},"decoder":{"type":"ByteFallback"}}""");
        Assert.IsType<SentencePieceBpeTokenizer>(TokenizerLoader.FromHfDirectory(dir.Path));
    }

    /// <summary>JSON of the wrong shape is a ModelFormatException naming the file (InvalidOperationException escaped as a crash).</summary>
    [Theory]
    [InlineData("[]")]
    [InlineData("""{"model":{"type":"BPE","vocab":{"a":"1"}},"pre_tokenizer":{"type":"ByteLevel"}}""")]
    [InlineData("""{"model":{"type":"BPE","vocab":{"a":0,"b":1},"merges":[[1,2]]},"pre_tokenizer":{"type":"ByteLevel"}}""")]
    [InlineData("""{"model":{"type":"BPE","vocab":{"a":0}},"pre_tokenizer":{"type":"ByteLevel"},"added_tokens":["x"]}""")]
    // Ids that wrapped the vocabulary size (IndexOutOfRangeException) or sized gigabytes of arrays from a tiny file.
    [InlineData("""{"model":{"type":"BPE","vocab":{"a":2147483647}},"pre_tokenizer":{"type":"ByteLevel"}}""")]
    [InlineData("""{"model":{"type":"BPE","vocab":{"a":1000000000}},"pre_tokenizer":{"type":"ByteLevel"}}""")]
    [InlineData("""{"model":{"type":"BPE","vocab":{"a":0}},"pre_tokenizer":{"type":"ByteLevel"},"added_tokens":[{"id":2147483647,"content":"x"}]}""")]
    // Two texts for one id: the second replaced the first, and every "a" of a prompt was dropped without a word.
    [InlineData("""{"model":{"type":"BPE","vocab":{"a":0,"b":1,"zz":0}},"pre_tokenizer":{"type":"ByteLevel"}}""")]
    public void WrongJsonShapesAreNamedErrors(string json)
    {
        using var dir = new TestGguf.TempDirectory();
        File.WriteAllText(dir.File("tokenizer.json"), json);
        var e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.FromHfDirectory(dir.Path));
        Assert.Contains("tokenizer.json", e.Message);
    }

    /// <summary>vocab.json with a string id escaped as InvalidOperationException (TryGetInt32 on a string).</summary>
    [Theory]
    [InlineData("""{"a":"1"}""")]
    [InlineData("""{"a":2147483647}""")]
    public void BadVocabJsonIdsAreNamedErrors(string json)
    {
        using var dir = new TestGguf.TempDirectory();
        File.WriteAllText(dir.File("vocab.json"), json);
        File.WriteAllText(dir.File("merges.txt"), "");
        var e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.FromHfDirectory(dir.Path));
        Assert.Contains("vocab.json", e.Message);
    }

    [Fact]
    public void HfDirectoryWithVocabJsonAndMergesTxtMatchesGpt2Vectors()
    {
        using var dir = new TestGguf.TempDirectory();
        File.Copy(SharedData.RequirePath("tokenizers/cs336_gpt2_vocab.json"), dir.File("vocab.json"));
        File.Copy(SharedData.RequirePath("tokenizers/cs336_gpt2_merges.txt"), dir.File("merges.txt"));
        var tokenizer = TokenizerLoader.FromHfDirectory(dir.Path);
        Assert.Equal(50257, tokenizer.VocabularySize);
        Assert.Equal(50256, tokenizer.EosId);
        Assert.False(tokenizer.AddBosToken);
        var cases = VocabVectors.Load("gpt-2");
        Assert.Empty(VocabVectors.Failures(tokenizer, cases));
    }

    [Fact]
    public void HfDirectoryWithTokenizerJsonMatchesGpt2Vectors()
    {
        using var dir = new TestGguf.TempDirectory();
        var vocab = JsonDocument.Parse(File.ReadAllText(SharedData.RequirePath("tokenizers/cs336_gpt2_vocab.json"))).RootElement;
        var merges = File.ReadAllLines(SharedData.RequirePath("tokenizers/cs336_gpt2_merges.txt")).Where(l => l.Length > 0 && !l.StartsWith("#version", StringComparison.Ordinal));
        var json = new Dictionary<string, object?>
        {
            ["added_tokens"] = new[] { new { id = 50256, content = "<|endoftext|>", special = true } },
            ["normalizer"] = null,
            ["pre_tokenizer"] = new { type = "ByteLevel", add_prefix_space = false, trim_offsets = true, use_regex = true },
            ["decoder"] = new { type = "ByteLevel" },
            // The newer [left, right] merge form.
            ["model"] = new { type = "BPE", vocab, merges = merges.Select(m => m.Split(' ')).ToArray() },
        };
        File.WriteAllText(dir.File("tokenizer.json"), JsonSerializer.Serialize(json));
        File.WriteAllText(dir.File("tokenizer_config.json"), """{"add_bos_token": true, "bos_token": "<|endoftext|>", "eos_token": {"content": "<|endoftext|>"}}""");
        var tokenizer = TokenizerLoader.FromHfDirectory(dir.Path);
        Assert.Equal("gpt-2", Assert.IsType<ByteLevelBpeTokenizer>(tokenizer).PreTokenizer.Name);
        Assert.True(tokenizer.AddBosToken);
        Assert.Equal(50256, tokenizer.BosId);
        Assert.True(tokenizer.IsSpecial(50256));
        Assert.Empty(VocabVectors.Failures(tokenizer, VocabVectors.Load("gpt-2")));
    }

    /// <summary>
    /// A tokenizer.json normalizer is refused by name (it was ignored: "e\u0301" got other ids than transformers, which
    /// NFC-normalizes it to "é"); none, or an empty Sequence, loads.
    /// </summary>
    [Fact]
    public void NormalizersAreRefusedByName()
    {
        using var dir = new TestGguf.TempDirectory();
        var doc = JsonSerializer.Deserialize<Dictionary<string, object?>>(Gpt2TokenizerJson(new { type = "ByteLevel", add_prefix_space = false, use_regex = true }))!;
        foreach (var (normalizer, name) in new (object, string)[]
        {
            (new { type = "NFC" }, "NFC"),
            (new { type = "Sequence", normalizers = new object[] { new { type = "NFKC" }, new { type = "Lowercase" } } }, "Sequence of NFKC, Lowercase"),
        })
        {
            doc["normalizer"] = normalizer;
            File.WriteAllText(dir.File("tokenizer.json"), JsonSerializer.Serialize(doc));
            var e = Assert.Throws<BitNetSharp.Formats.ModelFormatException>(() => TokenizerLoader.FromHfDirectory(dir.Path));
            Assert.Equal("normalizer", e.Item);
            Assert.Contains(name, e.Message);
        }
        doc["normalizer"] = new { type = "Sequence", normalizers = Array.Empty<object>() };
        File.WriteAllText(dir.File("tokenizer.json"), JsonSerializer.Serialize(doc));
        Assert.Equal(TestTokenizers.Gpt2.Encode("Hello world", addBos: false), TokenizerLoader.FromHfDirectory(dir.Path).Encode("Hello world", addBos: false));
    }

    private static string Gpt2TokenizerJson(object preTokenizer)
    {
        var vocab = JsonDocument.Parse(File.ReadAllText(SharedData.RequirePath("tokenizers/cs336_gpt2_vocab.json"))).RootElement;
        var merges = File.ReadAllLines(SharedData.RequirePath("tokenizers/cs336_gpt2_merges.txt")).Where(l => l.Length > 0 && !l.StartsWith("#version", StringComparison.Ordinal));
        return JsonSerializer.Serialize(new Dictionary<string, object?>
        {
            ["added_tokens"] = new[] { new { id = 50256, content = "<|endoftext|>", special = true } },
            ["pre_tokenizer"] = preTokenizer,
            ["model"] = new { type = "BPE", vocab, merges = merges.ToArray() },
        });
    }

    /// <summary>
    /// A tokenizer.json Split pattern is the model file's code: one that backtracks catastrophically ((a+)+$ on a run of
    /// a's and a '!') held the encoding thread for ever (a server worker, or `bitnet generate`). Its matches are timed
    /// out, and the error names the pattern and the file's pre-tokenizer.
    /// </summary>
    [Fact]
    public async Task ACatastrophicSplitPatternIsTimedOutNotHung()
    {
        using var dir = new TestGguf.TempDirectory();
        File.WriteAllText(dir.File("tokenizer.json"), Gpt2TokenizerJson(new
        {
            type = "Sequence",
            pretokenizers = new object[]
            {
                new { type = "Split", pattern = new { Regex = "(a+)+$" }, behavior = "Isolated", invert = false },
                new { type = "ByteLevel", add_prefix_space = false, use_regex = false },
            },
        }));
        var tokenizer = TokenizerLoader.FromHfDirectory(dir.Path);
        Assert.NotEmpty(tokenizer.Encode("aaa", addBos: false)); // an ordinary text encodes
        var encode = Task.Run(() => tokenizer.Encode(new string('a', 64) + "!", addBos: false), TestContext.Current.CancellationToken);
        var finished = await Task.WhenAny(encode, Task.Delay(TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken));
        Assert.True(finished == encode, "the encoding still runs after 60 s");
        var e = await Assert.ThrowsAsync<InvalidDataException>(() => encode);
        Assert.Contains("(a+)+$", e.Message);
        Assert.Contains("pre-tokenizer", e.Message);
        // The CLI says so as an error (exit 1), not a crash with a stack trace.
        File.WriteAllText(dir.File("config.json"), "{}"); // tokenize reads only the directory's tokenizer
        var output = new StringWriter();
        var error = new StringWriter();
        Assert.Equal(1, BitNetSharp.Cli.Program.Run(["tokenize", "-m", dir.Path, new string('a', 64) + "!"], output, error));
        Assert.StartsWith("error: ", error.ToString());
        Assert.Contains("(a+)+$", error.ToString(), StringComparison.Ordinal);
    }

    /// <summary>
    /// Every step of a tokenizer.json pre_tokenizer Sequence applies in order (only the first Split was read, the rest
    /// ignored): Digits with individual_digits splits "2024" into four digits before GPT-2's regex, as the tokenizers
    /// library does; a list of Splits applies each.
    /// </summary>
    [Fact]
    public void PreTokenizerSequenceAppliesEveryStep()
    {
        using var dir = new TestGguf.TempDirectory();
        File.WriteAllText(dir.File("tokenizer.json"), Gpt2TokenizerJson(new
        {
            type = "Sequence",
            pretokenizers = new object[] { new { type = "Digits", individual_digits = true }, new { type = "ByteLevel", add_prefix_space = false, use_regex = true } },
        }));
        var tokenizer = TokenizerLoader.FromHfDirectory(dir.Path);
        Assert.Equal([17, 15, 17, 19], tokenizer.Encode("2024", addBos: false)); // "2", "0", "2", "4"
        Assert.Equal(TestTokenizers.Gpt2.Encode("Hello world", addBos: false), tokenizer.Encode("Hello world", addBos: false));

        File.WriteAllText(dir.File("tokenizer.json"), Gpt2TokenizerJson(new
        {
            type = "Sequence",
            pretokenizers = new object[]
            {
                new { type = "Split", pattern = new { Regex = "[\\r\\n]" }, behavior = "Isolated", invert = false },
                new { type = "Split", pattern = new { Regex = "[0-9]" }, behavior = "Isolated", invert = false },
                new { type = "Split", pattern = new { String = "," }, behavior = "Isolated", invert = false },
                new { type = "ByteLevel", add_prefix_space = false, use_regex = false },
            },
        }));
        tokenizer = TokenizerLoader.FromHfDirectory(dir.Path);
        // The second Split cuts the digits apart (read alone, the first left "2024" one piece: 20 + 24).
        Assert.Equal([17, 15, 17, 19], tokenizer.Encode("2024", addBos: false));
        Assert.Equal(4, tokenizer.Encode("2\n,4", addBos: false).Length);

        // Falcon's steps: contiguous punctuation runs, GPT-2's regex, digit runs, threes.
        File.WriteAllText(dir.File("tokenizer.json"), Gpt2TokenizerJson(new
        {
            type = "Sequence",
            pretokenizers = new object[]
            {
                new { type = "Punctuation", behavior = "Contiguous" },
                new { type = "ByteLevel", add_prefix_space = false, use_regex = true },
                new { type = "Digits", individual_digits = false },
                new { type = "Split", pattern = new { Regex = "[0-9][0-9][0-9]" }, behavior = "Isolated", invert = false },
            },
        }));
        tokenizer = TokenizerLoader.FromHfDirectory(dir.Path);
        var falcon = new List<(int Start, int Length)>();
        string sample = "Hello!!! world 1234567";
        PreTokenizer.Falcon.Split(sample, 0, sample.Length, falcon);
        var expected = new List<int>();
        foreach (var (start, length) in falcon) expected.AddRange(TestTokenizers.Gpt2.Encode(sample.Substring(start, length), addBos: false));
        Assert.Equal(expected, tokenizer.Encode(sample, addBos: false));

        // ByteLevel without its regex alone: the text is one piece (no split), not GPT-2's.
        File.WriteAllText(dir.File("tokenizer.json"), Gpt2TokenizerJson(new { type = "ByteLevel", add_prefix_space = false, use_regex = false }));
        tokenizer = TokenizerLoader.FromHfDirectory(dir.Path);
        var pieces = new List<(int Start, int Length)>();
        ((ByteLevelBpeTokenizer)tokenizer).PreTokenizer.Split("a b, c", 0, 6, pieces);
        Assert.Single(pieces);
    }

    /// <summary>A string id in tokenizer.json's vocab names the token (an InvalidOperationException was wrapped without it).</summary>
    [Fact]
    public void AStringIdInTokenizerJsonNamesTheToken()
    {
        using var dir = new TestGguf.TempDirectory();
        File.WriteAllText(dir.File("tokenizer.json"), """{"model":{"type":"BPE","vocab":{"a":"0"},"merges":[]},"pre_tokenizer":{"type":"ByteLevel"}}""");
        var e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.FromHfDirectory(dir.Path));
        Assert.Contains("\"a\"", e.Message);
    }

    /// <summary>Marking Llama 2's &lt;unk&gt; special in tokenizer_config keeps it the unknown token (it became a control token).</summary>
    [Fact]
    public void AnAddedUnknownTokenKeepsItsKind()
    {
        using var dir = new TestGguf.TempDirectory();
        File.Copy(SharedData.RequirePath("tokenizers/llama2_tokenizer.model"), dir.File("tokenizer.model"));
        File.WriteAllText(dir.File("tokenizer_config.json"), """{"added_tokens_decoder": {"0": {"content": "<unk>", "special": true}}}""");
        var tokenizer = TokenizerLoader.FromHfDirectory(dir.Path);
        Assert.Equal(TokenKind.Unknown, tokenizer.KindOf(0));
    }

    /// <summary>A pre-tokenizer step this runtime cannot apply is refused naming it, not ignored.</summary>
    [Theory]
    [InlineData("""{"type":"Sequence","pretokenizers":[{"type":"Metaspace","replacement":"▁"},{"type":"ByteLevel","use_regex":false}]}""", "Metaspace")]
    [InlineData("""{"type":"Sequence","pretokenizers":[{"type":"Whitespace"},{"type":"ByteLevel"}]}""", "Whitespace")]
    [InlineData("""{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"x"},"behavior":"MergedWithPrevious"},{"type":"ByteLevel","use_regex":false}]}""", "MergedWithPrevious")]
    [InlineData("""{"type":"ByteLevel","add_prefix_space":true,"use_regex":true}""", "add_prefix_space")]
    // A class range past U+FFFF (deepseek-llm's Splits) cannot be a .NET class: refused naming the cause.
    [InlineData("""{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"[\uD801\uDC00-\uD801\uDC4F]+"},"behavior":"Isolated"},{"type":"ByteLevel","use_regex":false}]}""", "past U+FFFF")]
    public void UnsupportedPreTokenizerStepsAreRefused(string step, string named)
    {
        using var dir = new TestGguf.TempDirectory();
        File.WriteAllText(dir.File("tokenizer.json"), Gpt2TokenizerJson(JsonDocument.Parse(step).RootElement));
        var e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.FromHfDirectory(dir.Path));
        Assert.True(e.Message.Contains(named) && e.Message.Contains("pre_tokenizer"), e.Message);
    }

    /// <summary>
    /// A SentencePiece directory's added tokens (1bitLLM: &lt;pad&gt; = 32000 after Llama 2's 32000 pieces) join the
    /// vocabulary, and pad_token names the padding id; they were dropped.
    /// </summary>
    [Fact]
    public void SentencePieceDirectoryKeepsItsAddedTokens()
    {
        using var dir = new TestGguf.TempDirectory();
        File.Copy(SharedData.RequirePath("tokenizers/llama2_tokenizer.model"), dir.File("tokenizer.model"));
        File.WriteAllText(dir.File("tokenizer_config.json"), """
            {"added_tokens_decoder": {"32000": {"content": "<pad>", "special": true}}, "pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}
            """);
        var tokenizer = TokenizerLoader.FromHfDirectory(dir.Path);
        Assert.IsType<SentencePieceBpeTokenizer>(tokenizer);
        Assert.Equal(32001, tokenizer.VocabularySize);
        Assert.True(tokenizer.TryGetTokenId("<pad>", out int pad));
        Assert.Equal(32000, pad);
        Assert.Equal(32000, tokenizer.PaddingId);
        Assert.Contains(32000, tokenizer.Encode("Hello<pad>world", addBos: false, parseSpecial: true));
        Assert.Equal(TestTokenizers.LlamaSpm.Encode("Hello world", addBos: true), tokenizer.Encode("Hello world", addBos: true));
    }

    [Fact]
    public void HfDirectoryWithTiktokenModelTakesSpecialNamesFromTokenizerConfig()
    {
        using var dir = new TestGguf.TempDirectory();
        File.Copy(SharedData.RequirePath("tokenizers/llama3_tokenizer.model"), dir.File("tokenizer.model"));
        File.WriteAllText(dir.File("tokenizer_config.json"), """
            {"added_tokens_decoder": {"128008": {"content": "<|eom_id|>", "special": true}},
             "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
            """);
        var tokenizer = TokenizerLoader.FromHfDirectory(dir.Path);
        Assert.IsType<TiktokenBpeTokenizer>(tokenizer);
        Assert.Equal("<|eom_id|>", tokenizer.TokenText(128008));
        Assert.True(tokenizer.TryGetTokenId("<|eom_id|>", out var eom));
        Assert.Equal(128008, eom);
        Assert.False(tokenizer.TryGetTokenId("<|reserved_special_token_4|>", out _));
        Assert.Contains(128008, tokenizer.StopTokenIds);
        Assert.True(tokenizer.AddBosToken);
    }

    /// <summary>
    /// Phi-3's special tokens strip the whitespace after them: llama.cpp sets RSTRIP by the model's name (the GGUF does
    /// not store it), as Phi-3's tokenizer.json marks its chat tokens rstrip. A chat turn was 14 tokens where llama.cpp
    /// makes 8: [1, 32010, 317, 21554, 13, 17628, 32007, 32001]. A vocabulary of another name keeps its whitespace.
    /// </summary>
    [Fact]
    public void Phi3SpecialTokensStripTheWhitespaceAfterThem()
    {
        const string turn = "<|user|>\nSYS\nHI<|end|>\n<|assistant|>\n";
        using var file = GgufFile.Open(SharedData.RequirePath("llama.cpp-vocab/ggml-vocab-phi-3.gguf"));
        var phi3 = TokenizerLoader.FromGguf(file);
        Assert.Equal([1, 32010, 317, 21554, 13, 17628, 32007, 32001], phi3.Encode(turn, addBos: true, parseSpecial: true));
        Assert.Equal(phi3.Encode("<|user|>x", addBos: false, parseSpecial: true), phi3.Encode("<|user|> \n\tx", addBos: false, parseSpecial: true));
        // <s> keeps what follows it (llama.cpp's exemption).
        Assert.NotEqual(phi3.Encode("<s>x", addBos: false, parseSpecial: true), phi3.Encode("<s>\nx", addBos: false, parseSpecial: true));

        var renamed = new BitNetSharp.Formats.Gguf.GgufWriter();
        foreach (var (k, v) in file.Metadata.Entries)
            if (k.StartsWith("tokenizer.", StringComparison.Ordinal)) renamed.Add(k, v);
        renamed.AddString("general.name", "Llama");
        var other = TokenizerLoader.FromGguf(BitNetSharp.Formats.Gguf.GgufFile.Parse(renamed.ToArray(), "other.gguf").Metadata);
        Assert.Equal([1, 32010, 29871, 13, 14816, 29903, 13, 17628, 32007, 29871, 13, 32001, 29871, 13], other.Encode(turn, addBos: true, parseSpecial: true));
    }

    /// <summary>
    /// A SentencePiece vocabulary without &lt;0xNN&gt; pieces writes an unknown character as one &lt;unk&gt;, and a run of
    /// them as one, as SentencePiece does: it wrote one per UTF-8 byte ("€€" was six), filling the context with them.
    /// </summary>
    [Fact]
    public void UnknownCharactersWithoutByteFallbackAreOneUnk()
    {
        var w = new GgufWriter();
        w.AddString("tokenizer.ggml.model", "llama");
        w.AddArray("tokenizer.ggml.tokens", new[] { "<unk>", "<s>", "</s>", "\u2581", "a" });
        w.AddArray("tokenizer.ggml.token_type", new[] { 2, 3, 3, 1, 1 });
        w.AddArray("tokenizer.ggml.scores", new[] { 0f, 0f, 0f, -1f, -2f });
        var t = TokenizerLoader.FromGguf(GgufFile.Parse(w.ToArray(), "nobytes.gguf").Metadata);
        Assert.Equal([3, 4, 0], t.Encode("a€€", addBos: false));
        Assert.Equal([3, 4, 0, 4, 0], t.Encode("a€€a日", addBos: false));
    }

    /// <summary>
    /// A NaN SentencePiece score is refused naming the key, entry and token: it compares false with every other score,
    /// so merges went by position and text split otherwise than the vocabulary's own tokenizer splits it, without a word.
    /// </summary>
    [Fact]
    public void ANaNSentencePieceScoreIsRefused()
    {
        var w = new GgufWriter();
        w.AddString("tokenizer.ggml.model", "llama");
        w.AddArray("tokenizer.ggml.tokens", new[] { "<unk>", "<s>", "</s>", "\u2581", "a" });
        w.AddArray("tokenizer.ggml.token_type", new[] { 2, 3, 3, 1, 1 });
        w.AddArray("tokenizer.ggml.scores", new[] { 0f, 0f, 0f, -1f, float.NaN });
        var e = Assert.Throws<BitNetSharp.Formats.ModelFormatException>(() => TokenizerLoader.FromGguf(GgufFile.Parse(w.ToArray(), "nan.gguf").Metadata));
        Assert.Equal("nan.gguf: tokenizer.ggml.scores: entry 4 (token \"a\") is NaN; a merge score must be a number", e.Message);
    }

    /// <summary>A tokenizer.json added token's lstrip / rstrip: it takes the whitespace beside it (both were ignored).</summary>
    [Fact]
    public void HfAddedTokensStripAsMarked()
    {
        using var dir = new TestGguf.TempDirectory();
        var doc = JsonSerializer.Deserialize<Dictionary<string, object?>>(Gpt2TokenizerJson(new { type = "ByteLevel", add_prefix_space = false, use_regex = true }))!;
        doc["added_tokens"] = new object[]
        {
            new { id = 50256, content = "<|endoftext|>", special = true, lstrip = true, rstrip = true },
        };
        File.WriteAllText(dir.File("tokenizer.json"), JsonSerializer.Serialize(doc));
        var t = TokenizerLoader.FromHfDirectory(dir.Path);
        var gpt2 = TestTokenizers.Gpt2;
        int[] expected = [.. gpt2.Encode("a", addBos: false), 50256, .. gpt2.Encode("b", addBos: false)];
        Assert.Equal(expected, t.Encode("a \t<|endoftext|>\n b", addBos: false, parseSpecial: true));
        Assert.NotEqual(expected, gpt2.Encode("a \t<|endoftext|>\n b", addBos: false, parseSpecial: true)); // without the flags the spaces are text
        // Any Unicode whitespace, as the tokenizers library tests char::is_whitespace (an ideographic space after a chat token).
        Assert.Equal(expected, t.Encode("a\u3000<|endoftext|>\u00a0b", addBos: false, parseSpecial: true));

        // Through a converted GGUF (which has no strip flags of its own) the flags come back from this runtime's keys.
        var w = new GgufWriter();
        GgufTokenizerWriter.Write(t, w);
        var back = TokenizerLoader.FromGguf(GgufFile.Parse(w.ToArray(), "strip.gguf").Metadata);
        Assert.Equal(expected, back.Encode("a \t<|endoftext|>\n b", addBos: false, parseSpecial: true));
        Assert.Equal(expected, back.Encode("a\u3000<|endoftext|>\u00a0b", addBos: false, parseSpecial: true));
    }

    [Fact]
    public void HfDirectoryWithSentencePieceModelMatchesLlamaSpmVectors()
    {
        using var dir = new TestGguf.TempDirectory();
        File.Copy(SharedData.RequirePath("tokenizers/llama2_tokenizer.model"), dir.File("tokenizer.model"));
        var tokenizer = TokenizerLoader.FromHfDirectory(dir.Path);
        var spm = Assert.IsType<SentencePieceBpeTokenizer>(tokenizer);
        Assert.True(spm.AddSpacePrefix);
        Assert.Equal((32000, 1, 2, 0), (tokenizer.VocabularySize, tokenizer.BosId, tokenizer.EosId, tokenizer.UnknownId));
        Assert.Empty(VocabVectors.Failures(tokenizer, VocabVectors.Load("llama-spm")));
    }

    [Fact]
    public void HfDirectoryProblemsNameTheFile()
    {
        using var dir = new TestGguf.TempDirectory();
        var e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.FromHfDirectory(dir.Path));
        Assert.Contains("no tokenizer found", e.Message);
        Assert.Throws<ModelFormatException>(() => TokenizerLoader.FromHfDirectory(dir.File("missing")));

        File.WriteAllText(dir.File("tokenizer.json"), """{"model": {"type": "Unigram", "vocab": []}}""");
        e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.FromHfDirectory(dir.Path));
        Assert.Equal("model.type", e.Item);
        Assert.Contains("tokenizer.json", e.Message);

        File.WriteAllText(dir.File("tokenizer.json"), "{ not json");
        e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.FromHfDirectory(dir.Path));
        Assert.Contains("not valid JSON", e.Message);

        File.Delete(dir.File("tokenizer.json"));
        File.WriteAllText(dir.File("tokenizer.model"), "not base64 at all\n");
        e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.FromHfDirectory(dir.Path));
        Assert.Contains("tokenizer.model", e.Message);
    }

    [Fact]
    public void PreTokenizerOverrideReproducesBitNetCppDefaultSplitting()
    {
        using var file = GgufFile.Parse(TestTokenizersGguf(), "2b4t.gguf");
        var compat = Assert.IsType<ByteLevelBpeTokenizer>(TokenizerLoader.FromGguf(file, preTokenizer: "default"));
        Assert.Equal("default", compat.PreTokenizer.Name);
        Assert.False(compat.PreTokenizer.IgnoreMerges);
        // "default" splits every punctuation run off first, so "'s" no longer stays one piece and 1234 splits as 123|4.
        const string text = "Bob's 12345 items...";
        Assert.NotEqual(TestTokenizers.Llama3Gguf.Encode(text, addBos: false), compat.Encode(text, addBos: false));
        Assert.Equal(text, compat.Decode(compat.Encode(text, addBos: false)));
        Assert.Throws<ArgumentException>(() => TokenizerLoader.FromGguf(file, preTokenizer: "nope"));
    }

    private static byte[] TestTokenizersGguf() => TestTokenizers.Llama3GgufBytes;
}
