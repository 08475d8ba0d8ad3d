using System.Text.Json;
using BitNetSharp.Cli;
using BitNetSharp.Cli.Commands;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Model;
using BitNetSharp.Tests.Formats;

namespace BitNetSharp.Tests.Cli;

/// <summary><c>bitnet generate</c>, <c>tokenize</c> and <c>convert</c> in-process on synthetic models.</summary>
public class GenerateCommandTests
{
    private static (int ExitCode, string Output, string Error) Bitnet(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Program.Run(args, output, error);
        return (code, output.ToString(), error.ToString());
    }

    /// <summary>
    /// --ids-out and --logits-out replace their paths when written: over the model (or the draft) they destroyed it
    /// and exited 0 (found by a sweep of bad inputs); over each other the second lost the first. Refused before the
    /// model loads; the model's bytes are untouched.
    /// </summary>
    [Fact]
    public void OutputsThatWouldReplaceTheModelOrEachOtherAreRefused()
    {
        using var dir = new TestGguf.TempDirectory();
        string model = dir.File("m.gguf"), draft = dir.File("d.gguf");
        File.Copy(RepositoryFiles.Path("models/bitnet-tinystories.gguf"), model);
        File.Copy(model, draft);
        byte[] before = File.ReadAllBytes(model);
        File.CreateSymbolicLink(dir.File("link.gguf"), model);
        foreach (var (args, message) in new (string[], string)[]
        {
            (["--ids-out", model], "--ids-out " + model + " is the -m file"),
            (["--logits-out", model], "--logits-out " + model + " is the -m file"),
            (["--ids-out", dir.File("link.gguf")], "is the -m file"),
            (["--ids-out", draft, "--draft", draft], "is the --draft file"),
            (["--ids-out", dir.File("x.json"), "--logits-out", dir.File("x.json")], "--ids-out and --logits-out are the same file"),
        })
        {
            var (code, _, error) = Bitnet(["generate", "-m", model, "-p", "Once", "-n", "2", "-t", "1", .. args]);
            Assert.True(code == 2, $"{string.Join(' ', args)}: exit {code}, {error}");
            Assert.Contains(message, error);
        }
        Assert.Equal(before, File.ReadAllBytes(model));
        Assert.Equal(before, File.ReadAllBytes(draft));
        Assert.False(File.Exists(dir.File("x.json")));
        // A path beside the model is fine.
        var (ok, _, okError) = Bitnet("generate", "-m", model, "-p", "Once", "-n", "2", "-t", "1", "--ids-out", dir.File("ids.json"));
        Assert.True(ok == 0, okError);
        Assert.True(File.Exists(dir.File("ids.json")));
    }

    private static string TinyModel(TestGguf.TempDirectory dir, string? tokenizerFrom = null, int? rows = null)
    {
        var shape = SyntheticShape.Tiny;
        GgufFile? tok = tokenizerFrom is null ? null : GgufFile.Open(tokenizerFrom);
        if (tok is not null) shape = shape with { VocabSize = rows ?? tok.Metadata.GetStringArray("tokenizer.ggml.tokens").Length };
        var w = SyntheticModel.Build(shape, 5);
        if (tok is not null)
            foreach (var (k, v) in tok.Metadata.Entries)
                if (k.StartsWith("tokenizer.", StringComparison.Ordinal)) w.Add(k, v);
        tok?.Dispose();
        string path = dir.File(tokenizerFrom is null ? "tiny.gguf" : "tiny-tok.gguf");
        w.WriteFile(path);
        return path;
    }

    /// <summary>
    /// bitnet tokenize shows each token's own text: SentencePiece's "▁world" (3186) is " world", not "world" (11526),
    /// which it printed identically (each token was decoded alone, dropping the leading space as for a text's start).
    /// </summary>
    [Fact]
    public void TokenizeShowsSentencePiecePiecesWithTheirSpace()
    {
        using var dir = new TestGguf.TempDirectory();
        string model = TinyModel(dir, SharedData.RequirePath("llama.cpp-vocab/ggml-vocab-llama-spm.gguf"));
        var (code, output, error) = Bitnet("tokenize", "-m", model, "Hello world");
        Assert.True(code == 0, error);
        Assert.Contains("15043 \" Hello\"", output);
        Assert.Contains("3186 \" world\"", output);
    }

    /// <summary>
    /// tokenize reads the tokenizer alone: llama.cpp's vocab-only GGUFs (no tensors, architecture gpt2) work (they were
    /// refused as "not a BitNet model"), and pieces print as readable JSON strings ('s, &lt;, é were \uXXXX escapes).
    /// </summary>
    [Fact]
    public void TokenizeReadsVocabOnlyFilesAndPrintsReadablePieces()
    {
        string vocab = SharedData.RequirePath("llama.cpp-vocab/ggml-vocab-gpt-2.gguf");
        var (code, output, error) = Bitnet("tokenize", "-m", vocab, "Hello world", "--ids-only");
        Assert.True(code == 0, error);
        Assert.Equal("15496,995", output.Trim());
        (code, output, error) = Bitnet("tokenize", "-m", vocab, "it's <b> café a\u00A0b \"q\"");
        Assert.True(code == 0, error);
        Assert.Contains("\"'s\"", output);
        Assert.Contains("\" <\"", output);
        Assert.DoesNotContain("\\u00", output);
    }

    /// <summary>The run flags are checked before the model loads: with a model that does not exist the flag's error
    /// comes first (it waited out the load, and here reported the missing file instead).</summary>
    [Theory]
    [InlineData("generate", "--kv-type", "q4", "--kv-type 'q4'")]
    [InlineData("chat", "--kv-type", "q4", "--kv-type 'q4'")]
    [InlineData("generate", "-t", "-1", "--threads (-t)")]
    [InlineData("chat", "--ctx", "-5", "--ctx (-c)")]
    [InlineData("generate", "--speculate", "bogus", "--speculate 'bogus'")]
    [InlineData("chat", "--draft-tokens", "0", "--draft-tokens must be between")]
    [InlineData("generate", "--health-every", "0", "--health-every")]
    [InlineData("generate", "--health-every", "4", "--health-every sets how often")] // alone it measured nothing
    [InlineData("generate", "--draft", "", "--draft: the draft model's path is empty")] // failed after the load, naming no flag
    [InlineData("generate", "--stop", "", "--stop")] // checked after the load
    [InlineData("chat", "--stop", "", "--stop")]
    [InlineData("generate", "--repeat-penalty", "1e-38", "--repeat-penalty")] // logit / 1e-38 overflowed; the forward pass was blamed
    [InlineData("generate", "--presence-penalty", "5000", "--presence-penalty")]
    [InlineData("generate", "--top-p", "-0.5", "--top-p must be in [0, 1]")] // said "(0, 1]" though --top-p 0 is taken
    [InlineData("generate", "--health-every", "2", "--log-residual-stats")] // named a flag that does not exist
    public void RunFlagsAreCheckedBeforeTheModelLoads(string command, string option, string value, string message)
    {
        string[] args = command == "generate" ? ["generate", "-m", "no-such.gguf", "-p", "hi", option, value] : ["chat", "-m", "no-such.gguf", option, value];
        var (code, _, error) = Bitnet(args);
        Assert.Equal(2, code);
        Assert.Contains(message, error);
        Assert.DoesNotContain("no-such.gguf", error);
    }

    /// <summary>
    /// Values are literal: a prompt starting with @ was a System.CommandLine response file ("@home" failed with "Response
    /// file not found"; "@notes.txt" ran the file's lines as options).
    /// </summary>
    [Fact]
    public void AValueStartingWithAtIsLiteral()
    {
        using var dir = new TestGguf.TempDirectory();
        string rsp = dir.File("opts.txt");
        File.WriteAllText(rsp, "Hello\n--ids-out " + dir.File("injected.json") + "\n");
        string model = RepositoryFiles.Path("models/bitnet-tinystories.gguf");
        var (code, output, error) = Bitnet("tokenize", "-m", model, "@home is where");
        Assert.True(code == 0, error);
        Assert.Contains("@", output);
        (code, _, error) = Bitnet("generate", "-m", model, "-p", "@" + rsp, "-n", "2", "--temp", "0", "-t", "1");
        Assert.True(code == 0, error);
        Assert.False(File.Exists(dir.File("injected.json")), "the file's lines were read as options");
    }

    /// <summary>A tiny synthetic model with the bundled model's tokenizer keys, each passed through <paramref name="edit"/> (null drops it).</summary>
    private static string TinyModelWithBundledTokenizer(TestGguf.TempDirectory dir, string name, Func<string, GgufValue, GgufValue?> edit, int contextLength = 256)
    {
        using var tok = GgufFile.Open(RepositoryFiles.Path("models/bitnet-tinystories.gguf"));
        var shape = SyntheticShape.Tiny with { VocabSize = tok.Metadata.GetStringArray("tokenizer.ggml.tokens").Length, ContextLength = contextLength };
        var w = SyntheticModel.Build(shape, 5);
        foreach (var (k, v) in tok.Metadata.Entries)
            if (k.StartsWith("tokenizer.", StringComparison.Ordinal) && edit(k, v) is { } kept) w.Add(k, kept);
        string path = dir.File(name);
        w.WriteFile(path);
        return path;
    }

    /// <summary>
    /// A KV cache is checked against the memory available for what a run fills: generate's prompt and -n, not the whole
    /// context (its pages commit as positions fill; a 5-token run of a model whose full context's cache exceeded the free
    /// memory was refused naming --ctx). A -n past the memory is refused naming -n; chat without --ctx keeps to the
    /// positions that fit, with a note; a --ctx given past the memory is refused naming it. Sizes under a GB print in MB
    /// (a small cache read "0.0 GB").
    /// </summary>
    [Fact]
    public void KvCachesAreCheckedForWhatARunFills()
    {
        using var dir = new TestGguf.TempDirectory();
        // 2 layers × 2 KV heads × 32 × (K, V) × 4 bytes = 1 KB per position in f32: 134 MB for 131,072 positions.
        string model = TinyModelWithBundledTokenizer(dir, "long.gguf", (_, v) => v, contextLength: 1 << 17);
        KvCache.AvailableBytesForTests.Value = 20_000_000;
        try
        {
            var (code, _, error) = Bitnet("generate", "-m", model, "-p", "Once", "-n", "4", "--kv-type", "f32", "--temp", "0", "-t", "1");
            Assert.True(code == 0, error);
            (code, _, error) = Bitnet("generate", "-m", model, "-p", "Once", "-n", "30000", "--kv-type", "f32", "--temp", "0", "-t", "1");
            Assert.True(code == 1, error);
            Assert.Contains(" MB, more than this machine can give (20.0 MB available); generate fewer tokens (-n)", error);
            Assert.DoesNotContain("0.0 GB", error);

            var output = new StringWriter();
            var chatError = new StringWriter();
            code = Program.Run(["chat", "-m", model, "-n", "3", "--kv-type", "f32", "--temp", "0", "-t", "1"], output, chatError, new StringReader("hello\n\n"));
            Assert.True(code == 0, chatError.ToString());
            Assert.Contains("the model's context of 131,072 positions needs a 134.2 MB KV cache (f32), more than the 20.0 MB available; this chat keeps to 14,592 positions", chatError.ToString());

            chatError = new StringWriter();
            code = Program.Run(["chat", "-m", model, "--ctx", "131072", "--kv-type", "f32", "-t", "1"], new StringWriter(), chatError, new StringReader("hello\n\n"));
            Assert.True(code == 1, chatError.ToString());
            Assert.Contains("needs 134.2 MB, more than this machine can give (20.0 MB available); run with a shorter context (--ctx).", chatError.ToString());
        }
        finally
        {
            KvCache.AvailableBytesForTests.Value = null;
        }
        Assert.Equal("10.0 MB", KvCache.FormatBytes(10e6));
        Assert.Equal("2.5 GB", KvCache.FormatBytes(2.5e9));
    }

    /// <summary>
    /// A byte-level vocabulary without a token for some bytes drops them from any text (as llama.cpp does): said as a
    /// warning by tokenize, generate and eval, naming the bytes ("Hello world wow" lost every w without a word).
    /// </summary>
    [Fact]
    public void AVocabularyMissingByteTokensIsSaid()
    {
        using var dir = new TestGguf.TempDirectory();
        string model = TinyModelWithBundledTokenizer(dir, "now.gguf", (k, v) =>
        {
            if (k != "tokenizer.ggml.tokens") return v;
            string[] tokens = (string[])((GgufArray)v.Value).Items.Clone();
            int w = Array.IndexOf(tokens, "w");
            Assert.True(w >= 0);
            tokens[w] = "zzz_unused";
            return GgufValue.FromArray(GgufArray.Create(tokens));
        });
        File.WriteAllText(dir.File("text.txt"), string.Concat(Enumerable.Repeat("Hello world wow. ", 400)));
        foreach (string[] args in new[]
        {
            new[] { "tokenize", "-m", model, "Hello world wow" },
            ["generate", "-m", model, "-p", "wow", "-n", "1", "-t", "1"],
            ["eval", "-m", model, "--data", dir.File("text.txt"), "--ctx", "32", "-t", "1"],
        })
        {
            var (code, _, error) = Bitnet(args);
            Assert.True(code == 0, $"{args[0]}: exit {code}, {error}");
            Assert.Contains("warning: the vocabulary has no token for 1 of the 243 bytes UTF-8 text can hold (0x77 'w'): text holding them loses them", error);
        }
        var (_, _, bundledError) = Bitnet("tokenize", "Hello world wow");
        Assert.DoesNotContain("warning", bundledError);

        // serve says it at load too (here the load then fails on a rule file that does not fit, which ends the run).
        File.WriteAllText(dir.File("rules.json"), """{"rules": [{"name": "Deep", "metric": "bitnet_health_residual_rms", "match": {"layer": "99"}, "op": ">", "threshold": 1}]}""");
        var (serveCode, _, serveError) = Bitnet("serve", "-m", model, "--port", "0", "-t", "1", "--alert-rules", dir.File("rules.json"));
        Assert.Equal(1, serveCode);
        Assert.Contains("warning: the vocabulary has no token for 1 of the 243 bytes UTF-8 text can hold (0x77 'w')", serveError);
    }

    /// <summary>
    /// A GGUF's tokenizer that the commands refuse is said by convert, which carries it over as it is (a BOS id outside
    /// the vocabulary was copied into a new file without a word, which generate then refused). A vocabulary
    /// whose tokenizer.ggml.model key is gone (renamed, or its bytes damaged) is a damaged file, exit 1 naming both
    /// keys: it read as "has no tokenizer; pass --prompt-ids", a usage error (found by a sweep of crafted GGUFs).
    /// </summary>
    [Fact]
    public void ATokenizerTheCommandsRefuseIsRefusedByConvertAndAMissingModelKeyIsDamage()
    {
        using var dir = new TestGguf.TempDirectory();
        string Model(string name, Func<string, GgufValue, GgufValue?> edit) => TinyModelWithBundledTokenizer(dir, name, edit);
        string badBos = Model("bos.gguf", (k, v) => k == "tokenizer.ggml.bos_token_id" ? GgufValue.FromUInt32(99999) : v);
        string output = dir.File("out.gguf");
        var (code, stdout, error) = Bitnet("convert", badBos, output, "--type", "i2_s");
        Assert.True(code == 0, error);
        Assert.Contains("warning: the tokenizer is carried over as the source has it, and bitnet cannot read text with it:", error);
        Assert.Contains("tokenizer.ggml.bos_token_id", error);
        Assert.Contains("tokenizer carried over as it is (see the warning)", error); // the "wrote" line is on stderr
        using (var written = GgufFile.Open(output)) Assert.Equal(99999L, (long)(uint)written.Metadata.GetValue("tokenizer.ggml.bos_token_id").Value);
        File.Delete(output);

        string noKind = Model("nokind.gguf", (k, v) => k == "tokenizer.ggml.model" ? null : v);
        foreach (string[] args in new[] { new[] { "generate", "-m", noKind, "-p", "hi", "-n", "1" }, ["tokenize", "-m", noKind, "hi"] })
        {
            (code, _, error) = Bitnet(args);
            Assert.True(code == 1, $"{args[0]}: exit {code}, {error}");
            Assert.Contains("tokenizer.ggml.tokens is present but tokenizer.ggml.model, the kind of tokenizer, is missing", error);
        }
        (code, _, error) = Bitnet("convert", noKind, output, "--type", "i2_s");
        Assert.True(code == 0, error);
        Assert.Contains("tokenizer.ggml.model, the kind of tokenizer, is missing", error);

        // llama.cpp's marker for a model without a vocabulary is no tokenizer, not a damaged one.
        string none = Model("none.gguf", (k, v) => k == "tokenizer.ggml.model" ? GgufValue.FromString("none") : k == "tokenizer.ggml.tokens" || k.StartsWith("tokenizer.ggml.merges", StringComparison.Ordinal) ? null : v);
        (code, _, error) = Bitnet("generate", "-m", none, "-p", "hi", "-n", "1");
        Assert.Equal(2, code);
        Assert.Contains("has no tokenizer, so it cannot read text; pass the prompt as --prompt-ids", error);
    }

    /// <summary>
    /// tokenize: --no-parse-special reads a special token's text as text, as chat and serve encode a message's content
    /// (there was no way to see that split); an unknown option is refused, not tokenized as the text (`--bogus` printed
    /// the tokens of "--bogus", exit 0), while text after -- may start with a dash; one token is "1 token".
    /// </summary>
    [Fact]
    public void TokenizeReadsSpecialTokensAsTextOnRequestAndRefusesUnknownOptions()
    {
        string model = RepositoryFiles.Path("models/bitnet-tinystories.gguf");
        var (code, output, error) = Bitnet("tokenize", "-m", model, "<|endoftext|> hi", "--ids-only");
        Assert.True(code == 0, error);
        Assert.StartsWith("0,", output);
        (code, output, error) = Bitnet("tokenize", "-m", model, "<|endoftext|> hi", "--ids-only", "--no-parse-special");
        Assert.True(code == 0, error);
        Assert.DoesNotContain("0", output.Trim().Split(','));
        Assert.True(output.Split(',').Length > 3, output);

        (code, output, error) = Bitnet("tokenize", "-m", model, "--bogus");
        Assert.Equal(2, code);
        Assert.Equal("", output);
        Assert.Contains("'--bogus' is not an option of bitnet tokenize", error);
        (code, output, error) = Bitnet("tokenize", "-m", model, "--", "--bogus");
        Assert.True(code == 0, error);
        Assert.Contains("\"bo", output);

        (code, output, _) = Bitnet("tokenize", "-m", model, " hi");
        Assert.Equal(0, code);
        Assert.EndsWith("1 token" + Environment.NewLine, output);
    }

    /// <summary>
    /// The prompt checks made once the model is loaded (past --ctx, an id outside the vocabulary, an empty prompt) are
    /// usage errors, exit 2 as the README says (they exited 1, the code of a bad model file).
    /// </summary>
    [Theory]
    [InlineData("-p", "Once upon a time", "-n", "256", "exceeds the context")]
    [InlineData("--prompt-ids", "999999", "-n", "2", "is outside")]
    [InlineData("--prompt-ids", "1,4096", "-n", "2", "--prompt-ids: token id 4096 is outside")] // no flag named, no range
    [InlineData("--prompt-ids", "4096", "-n", "2", "vocabulary (ids 0 to 4095)")]
    [InlineData("--prompt-ids", "99999999999", "-n", "2", "'99999999999' is too large for a token id")] // "is not a non-negative integer"
    [InlineData("--prompt-ids", "++3", "-n", "2", "'++3' is not a token id")]
    [InlineData("-p", "", "-n", "2", "-p is empty and this model adds no BOS token")] // named neither -p nor how to give a BOS
    public void PromptErrorsAfterTheLoadAreUsageErrors(string promptOption, string prompt, string countOption, string count, string message)
    {
        var (code, output, error) = Bitnet("generate", "-m", RepositoryFiles.Path("models/bitnet-tinystories.gguf"), promptOption, prompt, countOption, count, "-t", "1");
        Assert.Equal(2, code);
        Assert.Contains(message, error);
        Assert.DoesNotContain("(Parameter", error);
        Assert.Equal("", output);
    }

    /// <summary>chat with a --ctx below its template's own tokens around a message refused every message, each time blaming
    /// it; now it says so at the start, naming --ctx (as an oversized --system already was).</summary>
    [Fact]
    public void ChatWithAContextTooSmallForItsTemplateIsRefusedAtTheStart()
    {
        var error = new StringWriter();
        int code = Program.Run(["chat", "-m", RepositoryFiles.Path("models/bitnet-tinystories.gguf"), "-n", "10", "-c", "20", "--template", "chatml", "-t", "1"],
            new StringWriter(), error, new StringReader("hi\n"));
        Assert.Equal(2, code);
        Assert.Contains("--ctx 20", error.ToString());
        Assert.Contains("chatml", error.ToString());
    }

    /// <summary>
    /// An empty id in --prompt-ids ("1,,2": an id lost from a pasted list) is refused, before the model loads; it was
    /// dropped and the rest ran.
    /// </summary>
    [Theory]
    [InlineData("1,,2", "an empty id after id 1 (1)")]
    [InlineData("1 2,,3", "an empty id after id 2 (2)")]
    [InlineData(",1", "starts with an empty id")]
    [InlineData("1,2,,", "an empty id after id 2 (2)")]
    [InlineData("", "--prompt-ids is empty")]
    [InlineData(" , ", "starts with an empty id")]
    public void AnEmptyPromptIdIsRefusedBeforeTheModelLoads(string ids, string message)
    {
        var (code, output, error) = Bitnet("generate", "-m", "no-such.gguf", "--prompt-ids", ids, "-n", "1");
        Assert.Equal(2, code);
        Assert.Contains(message, error);
        Assert.DoesNotContain("no-such.gguf", error);
        Assert.Equal("", output);
    }

    /// <summary>Commas, spaces, and both, still read as ids.</summary>
    [Fact]
    public void PromptIdsTakeCommasAndSpaces()
    {
        Assert.Equal([1, 2, 3], ModelOptions.ParseIds("1,2,3"));
        Assert.Equal([1, 2, 3], ModelOptions.ParseIds(" 1 2  3 "));
        Assert.Equal([1, 2, 3, 4], ModelOptions.ParseIds("1, 2,3 4"));
        Assert.Equal([1, 2, 3], ModelOptions.ParseIds("1\n2\n3\n"));   // jq -r '.ids[]'
        Assert.Equal([1, 2, 3], ModelOptions.ParseIds("1,2,3,"));      // printf '%s,'
        Assert.Equal([1, 2, 3], ModelOptions.ParseIds("1,2,3\r\n"));
    }

    /// <summary>
    /// A value that does not convert is said in words, naming the option: the parser's message named the .NET type
    /// ("as expected type 'System.Nullable`1[System.UInt64]'").
    /// </summary>
    [Theory]
    [InlineData("--seed", "abc", "--seed 'abc' is not a whole number from 0 to 18446744073709551615.")]
    [InlineData("--seed", "-1", "--seed '-1' is too small (no value below 0 is read")]
    [InlineData("--ctx", "99999999999", "--ctx '99999999999' is too large (no value past 2147483647 is read")] // "is not a whole number"
    [InlineData("--seed", "99999999999999999999", "--seed '99999999999999999999' is too large (no value past 18446744073709551615 is read")]
    [InlineData("-n", "lots", "--n-predict 'lots' is not a whole number.")]
    // A list, as llama-bench takes (-p 16,32), or a thousands separator: "is not a whole number" said neither.
    [InlineData("-n", "16,32", "--n-predict '16,32': this option takes one whole number, written without commas")]
    [InlineData("--temp", "hot", "--temp 'hot' is not a number.")]
    // A decimal comma was read as a thousands separator: temperature 8, a repeat penalty of 11, without a word.
    [InlineData("--temp", "0,8", "--temp '0,8' is not a number: write a decimal with a point")]
    [InlineData("--repeat-penalty", "1,1", "--repeat-penalty '1,1' is not a number")]
    [InlineData("--temp", "1,,5", "--temp '1,,5' is not a number")]
    public void AValueThatDoesNotConvertIsSaidInWords(string option, string value, string message)
    {
        var (code, output, error) = Bitnet("generate", "-m", "no-such.gguf", "-p", "hi", option, value);
        Assert.Equal(2, code);
        Assert.Contains(message, error);
        Assert.DoesNotContain("System.", error);
        Assert.DoesNotContain("expected type", error);
        Assert.Equal("", output);
    }

    /// <summary>An argument error from the library reaches the user without .NET's " (Parameter 'name')".</summary>
    [Fact]
    public void UsageErrorsCarryNoParameterSuffix()
    {
        Assert.Equal("the text is too short", new UsageException("the text is too short (Parameter 'tokens')").Message);
        Assert.Equal("no file at /tmp/a (Parameter 'x')/b.json", new UsageException("no file at /tmp/a (Parameter 'x')/b.json").Message);
    }

    /// <summary>
    /// An output in a folder this user cannot write is refused before the run, naming the output and the folder; it was
    /// found at the write, after the generation, in an error naming a hidden temporary file.
    /// </summary>
    [Fact]
    public void AnOutputInAFolderThatCannotBeWrittenIsRefusedFirst()
    {
        using var dir = new TestGguf.TempDirectory();
        string model = TinyModel(dir);
        using var unwritable = new UnwritableFolder(dir.Path);
        string? folder = unwritable.Path;
        Assert.SkipWhen(folder is null, UnwritableFolder.None);
        string ids = Path.Combine(folder, "ids.json");
        var (code, output, error) = Bitnet("generate", "-m", model, "--prompt-ids", "1", "-n", "2", "--ids-out", ids);
        Assert.Equal(2, code);
        Assert.Contains($"--ids-out {ids}: cannot write in the folder '{folder}'", error);
        Assert.DoesNotContain(".tmp", error);
        Assert.Equal("", output);
    }

    /// <summary>
    /// A GGUF whose tokenizer has fewer tokens than the model has vocabulary rows runs with a warning (it printed text
    /// from a vocabulary that was not the model's without a word); one with more tokens than rows is refused, naming the
    /// file and the field.
    /// </summary>
    [Fact]
    public void ATokenizerThatDoesNotFitTheModelIsSaid()
    {
        string vocab = SharedData.RequirePath("llama.cpp-vocab/ggml-vocab-gpt-2.gguf");
        using var dir = new TestGguf.TempDirectory();
        string padded = TinyModel(dir, vocab, rows: 50257 + 1000);
        var (code, output, error) = Bitnet("generate", "-m", padded, "-p", "Once", "-n", "2", "--seed", "1");
        Assert.Equal(0, code);
        Assert.Contains("warning: the tokenizer has 50257 tokens and the model 51257 vocabulary rows", error);
        Assert.StartsWith("Once", output);

        File.Move(padded, dir.File("padded.gguf"));
        string small = TinyModel(dir, vocab, rows: 1000);
        (code, output, error) = Bitnet("generate", "-m", small, "-p", "Once", "-n", "2");
        Assert.Equal(1, code);
        Assert.Contains("the tokenizer has 50257 tokens but the model's embedding only 1000 rows", error);
        Assert.Contains("tokenizer.ggml.tokens", error);
        Assert.Contains(small, error);
        Assert.Equal("", output);

        // The model's own tokenizer: no warning.
        File.Move(small, dir.File("small.gguf"));
        (code, _, error) = Bitnet("generate", "-m", TinyModel(dir, vocab), "-p", "Once", "-n", "2");
        Assert.Equal(0, code);
        Assert.DoesNotContain("warning", error);
    }

    /// <summary>
    /// A Hugging Face directory whose tokenizer has more tokens than the model has rows runs with a warning until text
    /// encodes to an id past the rows: then generate, chat and eval end with exit 1 naming the model and the mismatch (the
    /// engine's range check read as the user's usage error, exit 2, "Token id 322 is outside the vocabulary").
    /// </summary>
    [Fact]
    public void TextThatEncodesPastTheModelsRowsIsAModelTokenizerMismatch()
    {
        using var dir = new TestGguf.TempDirectory();
        string source = RepositoryFiles.Path(Path.Combine("tests", "fixtures", "hf-bitnet", "autobitlinear-offline-mha-bf16")); // 128 rows
        foreach (var name in new[] { "config.json", "model.safetensors" }) File.Copy(Path.Combine(source, name), dir.File(name));
        File.Copy(SharedData.RequirePath("tokenizers/cs336_gpt2_vocab.json"), dir.File("vocab.json"));
        File.Copy(SharedData.RequirePath("tokenizers/cs336_gpt2_merges.txt"), dir.File("merges.txt"));
        File.WriteAllText(dir.File("text.txt"), string.Concat(Enumerable.Repeat("Once upon a time there was a cat. ", 40)));
        foreach (var (args, input) in new[]
        {
            (new[] { "generate", "-m", dir.Path, "-p", "Once upon a time", "-n", "2" }, ""),
            (["chat", "-m", dir.Path, "-n", "2"], "Once upon a time\n"),
            (["eval", "-m", dir.Path, "--data", dir.File("text.txt"), "--ctx", "32"], ""),
        })
        {
            var output = new StringWriter();
            var error = new StringWriter();
            int code = Program.Run(args, output, error, new StringReader(input));
            Assert.True(code == 1, $"{args[0]}: exit {code}, {error}");
            Assert.Contains("the tokenizer does not belong to this model", error.ToString());
            Assert.Contains(dir.Path, error.ToString());
        }
    }

    /// <summary>An empty output path for convert (`convert IN "$OUT"` with OUT unset) is a usage error naming it; it leaked .NET's wording.</summary>
    [Fact]
    public void ConvertWithAnEmptyOutputIsAUsageError()
    {
        using var dir = new TestGguf.TempDirectory();
        var (code, output, error) = Bitnet("convert", TinyModel(dir), "");
        Assert.Equal(2, code);
        Assert.Contains("the output path is empty", error);
        Assert.Equal("", output);
    }

    /// <summary>An empty -m (`-m "$MODEL"` with MODEL unset) is a usage error; it ran the bundled model.</summary>
    [Fact]
    public void AnEmptyModelPathIsAUsageError()
    {
        foreach (string command in new[] { "tokenize", "generate" })
        {
            var (code, output, error) = command == "tokenize" ? Bitnet("tokenize", "-m", "", "hi", "--ids-only") : Bitnet("generate", "-m", " ", "-p", "hi", "-n", "1");
            Assert.Equal(2, code);
            Assert.Contains("--model (-m) is empty", error);
            Assert.Equal("", output);
        }
    }

    /// <summary>--stop ends the output where its text appears, without printing it (there was no way to stop at a text in the CLI).</summary>
    [Fact]
    public void StopTextEndsTheOutput()
    {
        string model = RepositoryFiles.Path("models/bitnet-tinystories.gguf");
        var (code, full, _) = Bitnet("generate", "-m", model, "-p", "Once upon a time", "-n", "40", "--temp", "0", "--no-echo", "--ignore-eos");
        Assert.Equal(0, code);
        full = full.TrimEnd('\n', '\r');
        // A word from the middle of the greedy continuation, at its first occurrence.
        var words = full.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        string stop = words.Skip(4).First(w => w.Length >= 3 && full.IndexOf(w, StringComparison.Ordinal) > 10);
        int at = full.IndexOf(stop, StringComparison.Ordinal);
        var (code2, cut, error) = Bitnet("generate", "-m", model, "-p", "Once upon a time", "-n", "40", "--temp", "0", "--no-echo", "--ignore-eos", "--stop", "zzqx", "--stop", stop);
        Assert.Equal(0, code2);
        Assert.Equal(full[..at], cut.TrimEnd('\n', '\r'));
        Assert.DoesNotContain("generation: 40 tokens", error);

        var (bad, _, message) = Bitnet("generate", "-m", model, "-p", "x", "--stop", "");
        Assert.Equal(2, bad);
        Assert.Contains("--stop", message);
    }

    /// <summary>The run whose logits go non-finite still prints the --health table (it was lost with the exception).</summary>
    [Fact]
    public void HealthTableIsPrintedWhenLogitsGoNonFinite()
    {
        using var dir = new TestGguf.TempDirectory();
        string model = TinyModel(dir);
        long offset;
        int dim;
        using (var file = GgufFile.Open(model))
        {
            var norm = file.GetTensor("blk.1.attn_norm.weight");
            offset = file.DataOffset + norm.Offset;
            dim = (int)norm.Dims[0];
        }
        void Fill(float value)
        {
            using var stream = new FileStream(model, FileMode.Open, FileAccess.Write);
            stream.Position = offset;
            for (int i = 0; i < dim; i++) stream.Write(BitConverter.GetBytes(value));
        }
        // A NaN gain is refused at load, naming the tensor; a finite gain large enough to overflow gets through the load
        // and blows up in the forward pass, where the health table names the layer.
        Fill(float.NaN);
        var (refused, _, why) = Bitnet("generate", "-m", model, "--prompt-ids", "1,2,3", "-n", "4", "--temp", "0", "--health");
        Assert.Equal(1, refused);
        Assert.Contains("blk.1.attn_norm.weight", why);
        Fill(3e38f);
        var (code, _, error) = Bitnet("generate", "-m", model, "--prompt-ids", "1,2,3", "-n", "4", "--temp", "0", "--health");
        Assert.NotEqual(0, code);
        Assert.Contains("model health over", error);
        Assert.Contains("layer 1", error);
        Assert.True(error.IndexOf("model health over", StringComparison.Ordinal) < error.LastIndexOf("layer 1", StringComparison.Ordinal), error);
    }

    [Fact]
    public void GreedyFromIdsIsReproducibleAndWritesIdsAndLogits()
    {
        using var dir = new TestGguf.TempDirectory();
        string model = TinyModel(dir);
        string ids = dir.File("ids.json"), logits = dir.File("logits.json");
        var first = Bitnet("generate", "-m", model, "--prompt-ids", "1,2,3", "-n", "6", "--temp", "0", "--ids-out", ids, "--logits-out", logits);
        Assert.Equal(0, first.ExitCode);
        Assert.Contains("generation: 6 tokens", first.Error);
        using (var doc = JsonDocument.Parse(File.ReadAllText(ids)))
        {
            Assert.Equal([1, 2, 3], doc.RootElement.GetProperty("prompt_ids").EnumerateArray().Select(e => e.GetInt32()));
            Assert.Equal(6, doc.RootElement.GetProperty("ids").GetArrayLength());
        }
        using (var doc = JsonDocument.Parse(File.ReadAllText(logits)))
        {
            var rows = doc.RootElement.GetProperty("logits");
            Assert.Equal(3, rows.GetArrayLength());
            Assert.Equal(SyntheticShape.Tiny.VocabSize, rows[0].GetArrayLength());
        }
        var second = Bitnet("generate", "-m", model, "--prompt-ids", "1,2,3", "-n", "6", "--temp", "0");
        Assert.Equal(first.Output, second.Output);
        // Seeded sampling is reproducible too.
        var a = Bitnet("generate", "-m", model, "--prompt-ids", "4", "-n", "8", "--seed", "42");
        var b = Bitnet("generate", "-m", model, "--prompt-ids", "4", "-n", "8", "--seed", "42");
        Assert.Equal(a.Output, b.Output);
    }

    /// <summary>
    /// At the context's end (context sweep): a prompt filling the context takes one new token (its last token is never
    /// fed back; it was refused); without -n, the default count is cut to what fits, with a note (the default 128 refused
    /// any prompt over 129 tokens on a 256-token context); a given -n that does not fit is refused naming what fits, and
    /// "raise --ctx" only where --ctx is below the model's context (it was advised at the model's whole context).
    /// </summary>
    [Fact]
    public void TheContextsEndTakesWhatFits()
    {
        using var dir = new TestGguf.TempDirectory();
        string model = TinyModel(dir);
        static string Ids(int n) => string.Join(",", Enumerable.Range(0, n).Select(i => (1 + i % 50).ToString(System.Globalization.CultureInfo.InvariantCulture)));
        int Generated(string path) => System.Text.Json.JsonDocument.Parse(File.ReadAllText(path)).RootElement.GetProperty("ids").GetArrayLength();

        var full = Bitnet("generate", "-m", model, "--prompt-ids", Ids(256), "-n", "1", "--temp", "0", "--ignore-eos", "--ids-out", dir.File("full.json"));
        Assert.True(full.ExitCode == 0, full.Error);
        Assert.Equal(1, Generated(dir.File("full.json")));

        var fits = Bitnet("generate", "-m", model, "--prompt-ids", Ids(200), "--temp", "0", "--ignore-eos", "--ids-out", dir.File("fits.json"));
        Assert.True(fits.ExitCode == 0, fits.Error);
        Assert.Contains("note: the prompt (200 tokens) leaves room for 57 new tokens in the context of 256", fits.Error);
        Assert.Equal(57, Generated(dir.File("fits.json")));

        var given = Bitnet("generate", "-m", model, "--prompt-ids", Ids(200), "-n", "128", "--temp", "0");
        Assert.Equal(2, given.ExitCode);
        Assert.Contains("at most 57 new tokens fit after this prompt; lower -n or shorten the prompt (this is the model's whole context).", given.Error);
        Assert.DoesNotContain("raise --ctx", given.Error);
        var shorter = Bitnet("generate", "-m", model, "--prompt-ids", Ids(200), "-n", "128", "--temp", "0", "--ctx", "210");
        Assert.Equal(2, shorter.ExitCode);
        Assert.Contains("at most 11 new tokens fit after this prompt; lower -n or shorten the prompt (even the model's whole context, 256 tokens, is too short for both).", shorter.Error);
        var raise = Bitnet("generate", "-m", model, "--prompt-ids", Ids(200), "-n", "20", "--temp", "0", "--ctx", "210");
        Assert.Contains("or raise --ctx to 219 or more (this model allows up to 256).", raise.Error);
        var past = Bitnet("generate", "-m", model, "--prompt-ids", Ids(257), "--temp", "0");
        Assert.Equal(2, past.ExitCode);
        Assert.Contains("exceeds the context of 256 tokens; the prompt alone is longer; shorten it (this is the model's whole context).", past.Error);
    }

    /// <summary>tokenize on a model without a tokenizer is a usage error, exit 2, whether a GGUF or a Hugging Face directory (the directory exited 1, a damaged file's code; matrix sweep).</summary>
    [Fact]
    public void TokenizeWithoutATokenizerIsAUsageErrorForEveryFormat()
    {
        using var dir = new TestGguf.TempDirectory();
        string gguf = TinyModel(dir);
        var (code, _, error) = Bitnet("tokenize", "-m", gguf, "hi");
        Assert.Equal(2, code);
        Assert.Contains("has no tokenizer", error);
        string hf = RepositoryFiles.Path(Path.Combine("tests", "fixtures", "hf-bitnet", "bitlinear-offline-untied-f32"));
        (code, _, error) = Bitnet("tokenize", "-m", hf, "hi");
        Assert.Equal(2, code);
        Assert.Contains("has no tokenizer (no tokenizer.json, tokenizer.model, or vocab.json with merges.txt)", error);
    }

    [Fact]
    public void BadInputIsAOneLineErrorBeforeAnyOutput()
    {
        using var dir = new TestGguf.TempDirectory();
        string model = TinyModel(dir);
        // The user's numbers, found once the model is loaded: usage errors, exit 2 (they exited 1).
        var tooLong = Bitnet("generate", "-m", model, "--prompt-ids", "1", "-n", "100000");
        Assert.Equal(2, tooLong.ExitCode);
        Assert.Equal("", tooLong.Output);
        Assert.Contains("exceeds the context of 256 tokens", tooLong.Error);
        // -n near int.MaxValue wrapped the check negative: the prompt was echoed and prefilled, then a bare error.
        var wrapped = Bitnet("generate", "-m", model, "--prompt-ids", "1", "-n", "2147483647");
        Assert.Equal(2, wrapped.ExitCode);
        Assert.Equal("", wrapped.Output);
        Assert.Contains("exceeds the context of 256 tokens", wrapped.Error);

        // A --ctx past the model's is said (it was cut to the model's without a word).
        var bigContext = Bitnet("generate", "-m", model, "--prompt-ids", "1", "-n", "1", "--ctx", "4096");
        Assert.Equal(0, bigContext.ExitCode);
        Assert.Contains("--ctx 4096 is more than the model's context of 256 tokens", bigContext.Error);

        var badId = Bitnet("generate", "-m", model, "--prompt-ids", "1,999999");
        Assert.Equal(2, badId.ExitCode);
        Assert.Contains("999999", badId.Error);

        var noTokenizer = Bitnet("generate", "-m", model, "-p", "hello");
        Assert.Equal(2, noTokenizer.ExitCode);
        Assert.Contains("no tokenizer", noTokenizer.Error);
        Assert.Contains("--prompt-ids", noTokenizer.Error);

        var kv = Bitnet("generate", "-m", model, "--prompt-ids", "1", "--kv-type", "q4");
        Assert.Equal(2, kv.ExitCode);
        Assert.Contains("--kv-type", kv.Error);

        var missing = Bitnet("generate", "-m", dir.File("nope.gguf"), "--prompt-ids", "1");
        Assert.Equal(1, missing.ExitCode);
        Assert.Contains("nope.gguf", missing.Error);
    }

    [Fact]
    public void TextPromptStreamsTextWithARealTokenizer()
    {
        string vocab = SharedData.RequirePath("llama.cpp-vocab/ggml-vocab-gpt-2.gguf");
        using var dir = new TestGguf.TempDirectory();
        string model = TinyModel(dir, vocab);
        var r = Bitnet("generate", "-m", model, "-p", "Once upon a time", "-n", "5", "--seed", "3");
        Assert.Equal(0, r.ExitCode);
        Assert.StartsWith("Once upon a time", r.Output);
        Assert.True(r.Output.TrimEnd().Length > "Once upon a time".Length);
        var t = Bitnet("tokenize", "-m", model, "Hello world", "--ids-only");
        Assert.Equal("15496,995", t.Output.Trim());
    }

    /// <summary>On a SentencePiece vocabulary the generated text keeps the space before its first word ("Once upon a" +
    /// "▁time" printed "Once upon atime"): what generate prints is the decoding of prompt and generated ids together.</summary>
    [Fact]
    public void SentencePieceOutputKeepsTheSpaceBeforeTheFirstGeneratedWord()
    {
        string vocab = SharedData.RequirePath("llama.cpp-vocab/ggml-vocab-llama-spm.gguf");
        using var dir = new TestGguf.TempDirectory();
        string model = TinyModel(dir, vocab);
        string ids = dir.File("ids.json");
        using var file = GgufFile.Open(model);
        var tokenizer = BitNetSharp.Tokenization.TokenizerLoader.FromGguf(file);
        // Sampled, seed by seed, until the first generated token starts a word (random weights pick any token).
        for (int seed = 1; ; seed++)
        {
            Assert.True(seed < 40, "no seed made a word-starting first token");
            var r = Bitnet("generate", "-m", model, "-p", "Once upon a", "-n", "6", "--seed", seed.ToString(), "--ignore-eos", "--ids-out", ids);
            Assert.Equal(0, r.ExitCode);
            using var doc = JsonDocument.Parse(File.ReadAllText(ids));
            int[] prompt = [.. doc.RootElement.GetProperty("prompt_ids").EnumerateArray().Select(e => e.GetInt32())];
            int[] generated = [.. doc.RootElement.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32())];
            if (!tokenizer.TokenText(generated[0]).StartsWith('\u2581') || tokenizer.IsSpecial(generated[0])) continue;
            Assert.Equal("Once upon a" + tokenizer.Decode([.. prompt, .. generated])[tokenizer.Decode(prompt).Length..], r.Output.TrimEnd('\n'));
            return;
        }
    }

    /// <summary>
    /// The server's engine and the CLI's decode the first generated token alike: after a prompt ending in BOS the
    /// SentencePiece space of "▁world" is the start of the text and goes (the scheduler kept it: " world" against the
    /// CLI's "world").
    /// </summary>
    [Fact]
    public async Task BothEnginesDecodeTheFirstTokenAfterBosAlike()
    {
        string vocab = SharedData.RequirePath("llama.cpp-vocab/ggml-vocab-llama-spm.gguf");
        using var dir = new TestGguf.TempDirectory();
        using var weights = ModelWeights.Load(TinyModel(dir, vocab));
        var tokenizer = BitNetSharp.Tokenization.TokenizerLoader.FromGguf(weights.Gguf!);
        int world = tokenizer.Encode(" world", addBos: false)[^1];
        Assert.Equal("\u2581world", tokenizer.TokenText(world));
        var sampling = BitNetSharp.Generation.Sampling.SamplingParameters.Greedy with { LogitBias = new Dictionary<int, float> { [world] = 1e4f } };
        foreach (int[] prompt in new[] { new[] { tokenizer.BosId }, tokenizer.Encode("Hello", addBos: true) })
        {
            using var generator = new BitNetSharp.Generation.TextGenerator(weights, tokenizer, new BitNetSharp.Generation.GeneratorOptions { Threads = 1 });
            string alone = string.Concat(generator.Generate(prompt, 1, sampling, ignoreStop: true, cancellation: TestContext.Current.CancellationToken).Select(t => t.Text));
            using var scheduler = new BitNetSharp.Generation.Scheduler.ContinuousBatchScheduler(weights, tokenizer,
                new BitNetSharp.Generation.Scheduler.SchedulerOptions { MaxSequences = 1, MaxBatchedTokens = 8, Threads = 1 });
            var handle = scheduler.Submit(new BitNetSharp.Generation.Scheduler.GenerationRequest { Prompt = prompt, MaxTokens = 1, Sampling = sampling, IgnoreStopTokens = true },
                TestContext.Current.CancellationToken);
            string served = "";
            await foreach (var e in handle.Events.ReadAllAsync(TestContext.Current.CancellationToken)) served += e.Text;
            Assert.Equal(prompt.Length == 1 ? "world" : " world", alone);
            Assert.Equal(alone, served);
        }
    }

    [Theory]
    [InlineData("i2_s")]
    [InlineData("tq2_0")]
    [InlineData("tq1_0")]
    [InlineData("f16")]
    public void ConvertKeepsTheLogits(string type)
    {
        using var dir = new TestGguf.TempDirectory();
        // A shape whose every row length is a multiple of 256, so every type can hold it.
        var shape = new SyntheticShape("conv", 256, 2, 4, 2, 512, 300, 64);
        string source = dir.File("src.gguf");
        SyntheticModel.Build(shape, 9).WriteFile(source);
        string converted = dir.File($"out-{type}.gguf");
        var r = Bitnet("convert", source, converted, "--type", type);
        Assert.Equal(0, r.ExitCode);
        Assert.Contains($"wrote {converted} ({new FileInfo(converted).Length:N0} bytes", r.Error); // on stderr, the bytes written
        Assert.Equal("", r.Output);

        float[] Logits(string path)
        {
            using var w = ModelWeights.Load(path);
            using var engine = new Transformer(w, 8, new BitNetSharp.Threading.WorkerPool(1));
            using var cache = new KvCache(w.Config.Layers, w.Config.KvHeads, w.Config.HeadDim, w.Config.ContextLength, KvCacheType.F32);
            var logits = new float[w.Config.VocabSize];
            engine.Forward([new BatchToken(7, 0, 0), new BatchToken(8, 0, 1), new BatchToken(9, 0, 2, true)], [cache], logits);
            return logits;
        }
        var expected = Logits(source);
        var actual = Logits(converted);
        if (type == "i2_s")
        {
            Assert.Equal(expected, actual); // same codes, same fp32 scale: bit-identical
        }
        else
        {
            // TQ and F16 keep the scale as fp16 (relative error ≤ 2^-11), which scales each projection's output.
            double range = expected.Max() - expected.Min();
            double worst = expected.Zip(actual, (e, a) => Math.Abs(e - a)).Max() / range;
            Assert.True(worst < 1e-2, $"max |Δ| / range = {worst:E2}");
            Assert.Equal(Array.IndexOf(expected, expected.Max()), Array.IndexOf(actual, actual.Max()));
        }
    }

    [Fact]
    public void ConvertRefusesAShapeTheTypeCannotHold()
    {
        using var dir = new TestGguf.TempDirectory();
        string model = TinyModel(dir); // dim 128: q_proj rows are 128 weights
        string output = dir.File("out.gguf");
        var r = Bitnet("convert", model, output, "--type", "tq2_0");
        Assert.Equal(2, r.ExitCode); // the user's --type: a usage error (it exited 1, the code of a bad file)
        Assert.Contains("256", r.Error);
        Assert.Contains("blk.0.attn_q.weight has rows of 128", r.Error);
        Assert.False(File.Exists(output));
    }
}

public class BenchCommandTests
{
    [Fact]
    public void SyntheticTinyBenchReportsBothTestsAsJson()
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Program.Run(["bench", "--synthetic", "tiny", "-p", "16", "-n", "8", "-s", "1,3", "-r", "2", "-t", "1", "--json"], output, error);
        Assert.Equal(0, code);
        using var doc = JsonDocument.Parse(output.ToString());
        var results = doc.RootElement.GetProperty("results");
        Assert.Equal(3, results.GetArrayLength());
        Assert.Equal("tg8×3", results[2].GetProperty("test").GetString());
        Assert.Equal(3, results[2].GetProperty("sequences").GetInt32());
        Assert.True(results[2].GetProperty("tokens_per_second").GetDouble() > 0);
        Assert.Equal("pp16", results[0].GetProperty("test").GetString());
        Assert.Equal("tg8", results[1].GetProperty("test").GetString());
        Assert.True(results[1].GetProperty("tokens_per_second").GetDouble() > 0);
        Assert.True(results[1].GetProperty("bandwidth_gbps").GetDouble() > 0);
        Assert.Equal(2, results[1].GetProperty("samples").GetArrayLength());
    }

    /// <summary>
    /// --health-ab where it cannot run (no depth 0, no decode steps, --bandwidth-only) and a negative value are usage
    /// errors before anything runs; they were ignored without a word, or refused after the model load and the probe.
    /// </summary>
    [Theory]
    [InlineData(new[] { "-p", "0", "-n", "2", "--health-ab", "-1" }, "--health-ab must be ≥ 0")]
    [InlineData(new[] { "-p", "0", "-n", "2", "--health-ab", "2", "-d", "8" }, "include 0 in --depth")]
    [InlineData(new[] { "-p", "4", "-n", "0", "--health-ab", "2" }, "-n must be at least 1")]
    [InlineData(new[] { "-p", "0", "-n", "2", "--health-ab", "2", "--bandwidth-only" }, "--bandwidth-only")]
    [InlineData(new[] { "-p", "0", "-n", "2", "--profile-ab", "2", "--bandwidth-only" }, "--profile-ab measures decoding")] // ran the probe, ignored it
    [InlineData(new[] { "-p", "0", "-n", "2", "--weight-pages", "bogus" }, "--weight-pages")]
    [InlineData(new[] { "--bandwidth-only", "--weight-pages", "bogus" }, "does not apply with --bandwidth-only")] // exit 0: a model's flags accepted and ignored
    [InlineData(new[] { "-p", "0", "-n", "128", "-d", "2147483600" }, "--depth 2147483600 is past the largest context")] // "needs -2147483568 positions"
    [InlineData(new[] { "-p", "0", "-n", "1000000", "-d", "16000000" }, "17000000 positions, more than bench allocates")] // advised a --ctx it refuses
    [InlineData(new[] { "-p", "0", "-n", "2", "-d", "0,8,0" }, "--depth lists 0 more than once")] // ran depth 0 twice, its ratio to itself printed
    [InlineData(new[] { "-p", "0", "-n", "2", "-s", "1,2,2" }, "--sequences lists 2 more than once")]
    [InlineData(new[] { "-p", "0", "-n", "2", "-t", "1,1" }, "--threads lists 1 more than once")]
    [InlineData(new[] { "-p", "0", "-n", "2", "-t", "1,2", "--cpus", "0" }, "--cpus lists 1 CPU(s) for 2 worker threads")] // both workers pinned to CPU 0, unsaid
    [InlineData(new[] { "-p", "0", "-n", "2", "-t", "2", "--cpus", "0,0" }, "--cpus lists CPU 0 more than once")]
    [InlineData(new[] { "-p", "0", "-n", "2", "-d", "0,,8" }, "--depth '0,,8': entry 2 is empty")] // ran as -d 0,8 without a word
    [InlineData(new[] { "-p", "0", "-n", "2", "-t", ",1" }, "--threads ',1': entry 1 is empty")]
    [InlineData(new[] { "-p", "0", "-n", "2", "-s", "1," }, "--sequences '1,': entry 2 is empty")]
    [InlineData(new[] { "-p", "0", "-n", "2", "-t", "+1" }, "--threads: '+1' is not an integer from 1 to 4096")] // read as 1
    [InlineData(new[] { "-p", "0", "-n", "2", "-d", "99999999999" }, "--depth: '99999999999' is too large")] // "not an integer of 0 or more"
    public void OptionsThatCannotApplyAreRefusedFirst(string[] extra, string message)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Program.Run(["bench", "--synthetic", "tiny", "-r", "1", .. (extra.Contains("-t") ? Array.Empty<string>() : ["-t", "1"]), .. extra], output, error);
        Assert.Equal(2, code);
        Assert.Contains(message, error.ToString());
        Assert.DoesNotContain("GB/s", error.ToString()); // no bandwidth probe ran
    }
}

/// <summary>A piped stdout whose reader is gone ends the command as SIGPIPE would.</summary>
public class BrokenPipeTests
{
    /// <summary>
    /// `bitnet tokenize LONG | head -1`: the command ends with 141 once the reader is gone. .NET's console stream drops EPIPE
    /// without a word, so the command ran on to the end (exit 0), and `logs --follow … | head -1` never ended.
    /// </summary>
    [Fact]
    public async Task AClosedPipeEndsTheCommand()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS(), "EPIPE is a Unix pipe's");
        string exe = Path.Combine(AppContext.BaseDirectory, "bitnet");
        Assert.SkipUnless(File.Exists(exe), $"the CLI's apphost is not next to the tests ({exe})");
        var psi = new System.Diagnostics.ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        // ~25,000 lines, far more than a pipe holds: the writer is still writing when the reader goes.
        foreach (var a in new[] { "tokenize", "-m", RepositoryFiles.Path("models/bitnet-tinystories.gguf"), string.Concat(Enumerable.Repeat("Once upon a time there was a girl. ", 2800)) })
            psi.ArgumentList.Add(a);
        using var p = System.Diagnostics.Process.Start(psi)!;
        try
        {
            var error = p.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
            Assert.NotNull(p.StandardOutput.ReadLine());
            p.StandardOutput.Dispose(); // the reader is gone
            using var bound = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
            bound.CancelAfter(TimeSpan.FromSeconds(60));
            await p.WaitForExitAsync(bound.Token); // ran on after its reader went: cancelled, the test fails
            Assert.Equal(141, p.ExitCode);
            Assert.DoesNotContain("error", await error);
        }
        finally
        {
            if (!p.HasExited) p.Kill(entireProcessTree: true);
        }
    }

    /// <summary>
    /// stdout into a file the shell shares with stderr and the next command keeps its place: a stream of descriptor 1
    /// with an offset of its own (FileStream) wrote over stderr's line and had its text overwritten by `echo after`.
    /// </summary>
    [Fact]
    public async Task AFileSharedWithTheShellKeepsEveryLineInOrder()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS(), "runs /bin/sh");
        string exe = Path.Combine(AppContext.BaseDirectory, "bitnet");
        Assert.SkipUnless(File.Exists(exe), $"the CLI's apphost is not next to the tests ({exe})");
        using var dir = new TestGguf.TempDirectory();
        string file = dir.File("out.txt"), model = RepositoryFiles.Path("models/bitnet-tinystories.gguf");
        var psi = new System.Diagnostics.ProcessStartInfo("/bin/sh") { UseShellExecute = false };
        foreach (var a in new[] { "-c", "{ echo before; \"$0\" tokenize -m \"$1\" 'hello world'; \"$0\" generate -m \"$1\" -p Once -n 2 --temp 0 -t 1; echo after; } > \"$2\" 2>&1", exe, model, file })
            psi.ArgumentList.Add(a);
        using var p = System.Diagnostics.Process.Start(psi)!;
        await p.WaitForExitAsync(TestContext.Current.CancellationToken);
        Assert.Equal(0, p.ExitCode);
        var lines = File.ReadAllLines(file);
        Assert.Equal("before", lines[0]);
        Assert.Contains(lines, l => l.Contains("\"he\"", StringComparison.Ordinal)); // tokenize's
        Assert.Contains(lines, l => l.StartsWith("prompt: ", StringComparison.Ordinal)); // generate's stats, on stderr
        Assert.Contains(lines, l => l.StartsWith("Once", StringComparison.Ordinal)); // generate's text, on stdout
        Assert.Equal("after", lines[^1]);
    }
}

public class GenerateArgumentTests
{
    /// <summary>stderr on a full disk (IOException) or closed (2>&amp;-: EBADF, which .NET throws as UnauthorizedAccessException).</summary>
    private sealed class FullWriter(bool closed = false) : TextWriter
    {
        public override System.Text.Encoding Encoding => System.Text.Encoding.UTF8;
        private Exception Fail() => closed ? new UnauthorizedAccessException("Access to the path is denied.", new IOException("Bad file descriptor")) : new IOException("No space left on device");
        public override void Write(char value) => throw Fail();
        public override void Write(string? value) => throw Fail();
        public override void WriteLine(string? value) => throw Fail();
    }

    /// <summary>
    /// A stderr that cannot be written (2>/dev/full, 2>&amp;-) loses the diagnostics, not the run: the first stats line
    /// threw, the handler's own report threw again, and the process aborted (exit 134) without writing --ids-out.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void AnUnwritableStderrLosesOnlyTheMessages(bool closed)
    {
        using var dir = new BitNetSharp.Tests.Formats.TestGguf.TempDirectory();
        var output = new StringWriter();
        int code = Program.Run(["generate", "-p", "Once upon a time", "-n", "4", "--temp", "0", "--ids-out", dir.File("ids.json"), "-t", "1"], output, new FullWriter(closed));
        Assert.Equal(0, code);
        Assert.StartsWith("Once upon a time", output.ToString());
        using var ids = System.Text.Json.JsonDocument.Parse(File.ReadAllText(dir.File("ids.json")));
        Assert.Equal(4, ids.RootElement.GetProperty("ids").GetArrayLength());
        // Errors keep their exit codes with nowhere to say them.
        Assert.Equal(2, Program.Run(["generate", "--bogus"], new StringWriter(), new FullWriter(closed)));
        Assert.Equal(2, Program.Run(["generate", "-p", "x", "--temp", "-1"], new StringWriter(), new FullWriter(closed)));
    }

    /// <summary>--log-logits prints the steps that have logits: a prompt longer than one chunk printed its first chunk
    /// as "min=NaN max=NaN", which reads as a numerical failure.</summary>
    [Fact]
    public void LogLogitsSkipsPromptChunksWithoutLogits()
    {
        var error = new StringWriter();
        string ids = string.Join(",", Enumerable.Range(0, 100).Select(i => 1 + i * 7 % 250));
        int code = Program.Run(["generate", "-m", RepositoryFiles.Path("models/bitnet-tinystories.gguf"), "--prompt-ids", ids, "-n", "2", "--temp", "0", "--log-logits", "-t", "1"],
            new StringWriter(), error);
        Assert.True(code == 0, error.ToString());
        var lines = error.ToString().Split('\n').Where(l => l.StartsWith("logits step=", StringComparison.Ordinal)).ToList();
        Assert.NotEmpty(lines);
        Assert.All(lines, l => Assert.DoesNotContain("NaN", l));
    }

    /// <summary>
    /// generate --health on a copy of the bundled model whose layer-3 down scale is multiplied by 1e30: the blow-up
    /// line names the layer (it gave only a count), and a change of ~1e31 prints in 4 significant digits (F3 printed
    /// 35 digits) in the table and in --log-residual-stats' lines.
    /// </summary>
    [Fact]
    public void HealthReportNamesTheLayerThatBlewUp()
    {
        using var dir = new TestGguf.TempDirectory();
        var bytes = File.ReadAllBytes(RepositoryFiles.Path("models/bitnet-tinystories.gguf"));
        long at;
        using (var file = GgufFile.Parse(bytes, "bitnet-tinystories.gguf"))
        {
            var down = file.GetTensor("blk.3.ffn_down.weight");
            Assert.Equal(GgmlType.I2_S, down.Type);
            at = file.DataOffset + down.Offset + down.ElementCount / 4; // the fp32 scale after the codes
        }
        var scale = BitConverter.ToSingle(bytes, (int)at) * 1e30f;
        BitConverter.TryWriteBytes(bytes.AsSpan((int)at, 4), scale);
        string model = dir.File("blown.gguf");
        File.WriteAllBytes(model, bytes);
        var error = new StringWriter();
        int code = Program.Run(["generate", "-m", model, "-p", "Once upon a time", "-n", "4", "--temp", "0", "--ignore-eos", "--health", "--log-residual-stats", "-t", "2"],
            new StringWriter(), error);
        string text = error.ToString();
        Assert.True(code == 0, text);
        Assert.Matches(@"residual: \d+ layer-steps flagged as blow-ups \(layer 3: \d+\)", text);
        Assert.Matches(@"layer step=\d+ layer=3 rms=\S+ max=\S+ change=\d(\.\d+)?E\+\d+ BLOWUP", text);
        Assert.DoesNotMatch(@"\d{20}", text);
    }

    /// <summary>generate --health on the bundled model: the per-layer table, then the repetition line (forced into a loop by a repetition-free greedy story, or not).</summary>
    [Fact]
    public void HealthReportEndsWithTheRepetitionShare()
    {
        var error = new StringWriter();
        int code = Program.Run(["generate", "-m", RepositoryFiles.Path("models/bitnet-tinystories.gguf"), "-p", "Once upon a time", "-n", "40", "--temp", "0", "--ignore-eos", "--health", "-t", "2"],
            new StringWriter(), error);
        Assert.True(code == 0, error.ToString());
        Assert.Matches(@"repetition: \d+% of the last 40 generated tokens repeat an earlier 4-gram", error.ToString());
        Assert.Equal("repetition: 100% of the last 64 generated tokens repeat an earlier 4-gram (a loop)",
            GenerateCommand.RepetitionLine([1, 2, 3], [.. Enumerable.Repeat(new[] { 4, 5 }, 50).SelectMany(x => x)]));
        Assert.Equal("repetition: fewer than 16 tokens generated", GenerateCommand.RepetitionLine([1, 2, 3], [4, 5]));
    }

    /// <summary>
    /// With a KV cache that rounds, the health report has a line for the rounding of the stored key and value rows (mean,
    /// and the largest with its layer): int8 on the bundled model reads a fraction of a percent; an f32 cache, exact,
    /// has none. One line: per-layer columns made the table ~150 characters wide.
    /// </summary>
    [Fact]
    public void TheHealthTableShowsTheKvCachesRounding()
    {
        string Table(string kv)
        {
            var error = new StringWriter();
            int code = Program.Run(["generate", "-m", RepositoryFiles.Path("models/bitnet-tinystories.gguf"), "-p", "Once upon a time", "-n", "8", "--temp", "0", "--health", "--kv-type", kv, "-t", "1"],
                new StringWriter(), error);
            Assert.True(code == 0, error.ToString());
            return error.ToString();
        }
        string int8 = Table("int8");
        var line = System.Text.RegularExpressions.Regex.Match(int8,
            @"\nkv cache rounding \(‖x − stored‖/‖x‖ of the rows written\): keys mean (\d+\.\d\d) %, max (\d+\.\d\d) % \(layer \d\); values mean (\d+\.\d\d) %, max (\d+\.\d\d) % \(layer \d\)\n");
        Assert.True(line.Success, int8);
        for (int g = 1; g <= 4; g++) Assert.InRange(double.Parse(line.Groups[g].Value, System.Globalization.CultureInfo.InvariantCulture), 0.1, 5);
        Assert.DoesNotContain("kv cache rounding", Table("f32"));
        Assert.All(int8.Split('\n').Where(l => l.Contains(" | ", StringComparison.Ordinal) && !l.StartsWith("prompt:", StringComparison.Ordinal)), l => Assert.True(l.Length <= 120, l)); // the table as wide as before
    }

    /// <summary>
    /// The health table's mean relative change leaves out steps of sequence starts only, where ‖Δ‖/‖x‖ is not measured
    /// (0): a 1-token prompt's first step pulled layer 1's mean from 0.786 to 0.590.
    /// </summary>
    [Fact]
    public void TheHealthTablesMeanChangeLeavesOutSequenceStartSteps()
    {
        var error = new StringWriter();
        int code = Program.Run(["generate", "-m", RepositoryFiles.Path("models/bitnet-tinystories.gguf"), "-p", "Hi", "-n", "4", "--temp", "0", "--log-residual-stats", "--health", "-t", "1"],
            new StringWriter(), error);
        Assert.True(code == 0, error.ToString());
        var changes = error.ToString().Split('\n').Where(l => l.StartsWith("layer step=", StringComparison.Ordinal) && l.Contains(" layer=1 ", StringComparison.Ordinal))
            .Select(l => double.Parse(System.Text.RegularExpressions.Regex.Match(l, @"change=([0-9.]+)").Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).ToList();
        Assert.Equal(0, changes[0]); // the prompt's single token: a sequence start
        var row = System.Text.RegularExpressions.Regex.Match(error.ToString(), @"\n\s+1 \|[^\n]*\|\s+\S+\s+\S+\s+([0-9.]+) \(([0-9.]+)\)");
        Assert.True(row.Success, error.ToString());
        double mean = double.Parse(row.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        Assert.Equal(changes.Skip(1).Average(), mean, 0.0011);
    }

    /// <summary>
    /// The sampling flags take llama.cpp's meanings, which they are named after: --top-p 0 keeps the most likely token
    /// (greedy, whatever the temperature) and --top-k -1 is off. Both were usage errors.
    /// </summary>
    [Fact]
    public void TopPZeroIsGreedyAndNegativeTopKIsOff()
    {
        static (int ExitCode, string Output, string Error) Bitnet(string[] args)
        {
            var output = new StringWriter();
            var error = new StringWriter();
            int code = Program.Run(args, output, error);
            return (code, output.ToString(), error.ToString());
        }
        string model = RepositoryFiles.Path("models/bitnet-tinystories.gguf");
        string[] Args(params string[] extra) => ["generate", "-m", model, "-p", "Once upon a time", "-n", "12", "--ignore-eos", "-t", "1", .. extra];
        var greedy = Bitnet(Args("--temp", "0"));
        Assert.True(greedy.ExitCode == 0, greedy.Error);
        var topP0 = Bitnet(Args("--temp", "1.5", "--top-p", "0", "--seed", "7"));
        Assert.True(topP0.ExitCode == 0, topP0.Error);
        Assert.Equal(greedy.Output, topP0.Output);
        var noTopK = Bitnet(Args("--top-k", "-1", "--seed", "7"));
        Assert.True(noTopK.ExitCode == 0, noTopK.Error);
        Assert.Equal(noTopK.Output, Bitnet(Args("--top-k", "0", "--seed", "7")).Output);
    }

    [Theory]
    [InlineData("-n", "-1", "--n-predict (-n) must be 0 or more")]
    [InlineData("--ctx", "-4", "--ctx (-c) must be 0 (the model's context) or more")]
    [InlineData("-t", "-2", "--threads (-t) must be 0 (physical cores) or more")]
    [InlineData("--temp", "-1", "--temp: temperature must be a finite number ≥ 0")]
    [InlineData("--top-p", "1.5", "--top-p must be in [0, 1]")]
    [InlineData("--repeat-last-n", "-5", "--repeat-last-n: penalty_last_n must be ≥ −1")]
    [InlineData("--logits-out", "/tmp", "--logits-out /tmp is a directory")]
    [InlineData("--ids-out", "/no/such/folder/ids.json", "--ids-out /no/such/folder/ids.json: the folder '/no/such/folder' does not exist")]
    [InlineData("--ids-out", "", "--ids-out is empty")]
    [InlineData("-t", "2147483647", "--threads (-t) must be at most 4096")]
    public void NegativeCountsAreRefusedByName(string option, string value, string message)
    {
        var error = new StringWriter();
        int code = Program.Run(["generate", "-m", RepositoryFiles.Path("models/bitnet-tinystories.gguf"), "-p", "hi", option, value], new StringWriter(), error);
        Assert.Equal(2, code);
        Assert.Contains(message, error.ToString());
        Assert.DoesNotContain("tok/s", error.ToString()); // refused before generating
        Assert.DoesNotContain("   at ", error.ToString());
    }
}

public class ChatCommandTests
{
    /// <summary>Input that ends once, then would block (a terminal's Ctrl-D ends only the read it interrupts).</summary>
    private sealed class EndsOnceReader(string text) : TextReader
    {
        private readonly StringReader _inner = new(text);
        private bool _ended;

        public override string? ReadLine()
        {
            if (_ended) throw new InvalidOperationException("read again after the end of input (a terminal would wait here)");
            string? line = _inner.ReadLine();
            _ended = line is null;
            return line;
        }
    }

    /// <summary>
    /// A message whose continued line is ended by the end of input (`hello \`, Enter, Ctrl-D on a terminal) is answered
    /// and then the chat ends: it read again and, on a terminal, waited for ever.
    /// </summary>
    [Fact]
    public void AMessageEndedByTheEndOfInputIsAnsweredAndTheChatEnds()
    {
        Assert.Equal((ChatCommand.ChatInput.LastMessage, "hello "), ChatCommand.ReadMessage(new StringReader("hello \\")));
        // A byte-order mark (a file saved with one, piped in) is not text: "\uFEFF/quit" was sent to the model.
        Assert.Equal(ChatCommand.ChatInput.Quit, ChatCommand.ReadMessage(new StringReader("\uFEFF/quit\nHello\n")).Kind);
        Assert.Equal((ChatCommand.ChatInput.Message, "Hello"), ChatCommand.ReadMessage(new StringReader("\uFEFFHello\n")));
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Program.Run(["chat", "-n", "3", "--temp", "0", "-t", "1"], output, error, new EndsOnceReader("hello \\\n"));
        Assert.True(code == 0, error.ToString());
        Assert.Contains("generated", error.ToString()); // answered

        // One too long for the context: refused, and the chat still ends (it went on to read again).
        error = new StringWriter();
        code = Program.Run(["chat", "-n", "3", "--ctx", "64", "-t", "1"], new StringWriter(), error, new EndsOnceReader(string.Concat(Enumerable.Repeat("the dog ran ", 40)) + "\\\n"));
        Assert.True(code == 0, error.ToString());
        Assert.Contains("it was not sent", error.ToString());
    }

    /// <summary>
    /// A directory given where a file goes is named with a file name that fits the option (every hint said out.json):
    /// the directory's own extension, else the option's.
    /// </summary>
    [Fact]
    public void ADirectoryForAnOutputSuggestsAFileOfItsKind()
    {
        using var dir = new BitNetSharp.Tests.Formats.TestGguf.TempDirectory();
        Directory.CreateDirectory(dir.File("m.gguf"));
        File.WriteAllText(dir.File("data.txt"), "Once upon a time.");
        var error = new StringWriter();
        Assert.Equal(2, Program.Run(["train", "--data", dir.File("data.txt"), "--out", dir.File("m.gguf")], new StringWriter(), error));
        Assert.Contains(Path.Combine(dir.File("m.gguf"), "out.gguf"), error.ToString());
        error = new StringWriter();
        Assert.Equal(2, Program.Run(["profile", "--trace", dir.Path, "-n", "1"], new StringWriter(), error));
        Assert.Contains(Path.Combine(dir.Path, "trace.json"), error.ToString());
    }

    /// <summary>
    /// A message goes on past a line ending with a backslash (blank lines included), /reset clears the conversation, and
    /// /quit ends it: each line was its own message, and a blank line inside a pasted paragraph ended the chat.
    /// </summary>
    [Fact]
    public void MessagesSpanLinesAndSlashCommandsResetOrQuit()
    {
        var reader = new StringReader("Summarize:\\\nline one\\\n\\\nline two\n/reset\n//quit is text\n/quit\nnever read\n");
        Assert.Equal((ChatCommand.ChatInput.Message, "Summarize:\nline one\n\nline two"), ChatCommand.ReadMessage(reader));
        Assert.Equal(ChatCommand.ChatInput.Reset, ChatCommand.ReadMessage(reader).Kind);
        Assert.Equal((ChatCommand.ChatInput.Message, "/quit is text"), ChatCommand.ReadMessage(reader));
        Assert.Equal(ChatCommand.ChatInput.Quit, ChatCommand.ReadMessage(reader).Kind);
        Assert.Equal(ChatCommand.ChatInput.Quit, ChatCommand.ReadMessage(new StringReader("")).Kind);
        // Only continuations: no message (an empty user turn was sent).
        Assert.Equal(ChatCommand.ChatInput.Quit, ChatCommand.ReadMessage(new StringReader("\\")).Kind);
        Assert.Equal(ChatCommand.ChatInput.Quit, ChatCommand.ReadMessage(new StringReader("\\\n  \n")).Kind);

        string model = RepositoryFiles.Path("models/bitnet-tinystories.gguf");
        var error = new StringWriter();
        int code = Program.Run(["chat", "-m", model, "-n", "4", "--temp", "0", "-t", "1", "--template", "chatml"], new StringWriter(), error,
            new StringReader("a cat\\\n\\\nand a dog\n/reset\nhi\n/quit\n"));
        Assert.Equal(0, code);
        var lines = error.ToString().Split('\n');
        Assert.Equal(2, lines.Count(l => l.StartsWith("[", StringComparison.Ordinal) && l.Contains("generated", StringComparison.Ordinal)));
        Assert.Contains("[conversation cleared]", lines);
    }


    /// <summary>
    /// A message with no older turn left to drop, which leaves less room than an answer is promised, is sent and the
    /// shortfall said (a one-token answer ended by length, without a word).
    /// </summary>
    [Fact]
    public void AMessageThatLeavesLittleRoomForTheAnswerIsSaid()
    {
        var log = new StringWriter();
        var prompt = ChatCommand.FitToContext([BitNetSharp.Tokenization.ChatMessage.User("x")], _ => new int[63], context: 64, answerTokens: 8, log);
        Assert.Equal(63, prompt!.Length);
        Assert.Contains("room for 1 answer token(s) of 8 (-n)", log.ToString());
        log = new StringWriter();
        ChatCommand.FitToContext([BitNetSharp.Tokenization.ChatMessage.User("x")], _ => new int[40], context: 64, answerTokens: 8, log);
        Assert.Equal("", log.ToString());
    }

    /// <summary>
    /// An answer cut by the context's end, not by -n, is said (an answer of the default -n, the context's length, stopped
    /// mid-sentence without a word); a message too long for the context advises a larger --ctx only below the model's
    /// own context (it did at the model's whole context, where --ctx cannot go higher) (context sweep).
    /// </summary>
    [Fact]
    public void AnAnswerCutByTheContextIsSaid()
    {
        string model = RepositoryFiles.Path("models/bitnet-tinystories.gguf");
        string Chat(params string[] extra)
        {
            var error = new StringWriter();
            int code = Program.Run(["chat", "-m", model, "--temp", "0", "-t", "1", "--kv-type", "f32", "--template", "chatml", .. extra], new StringWriter(), error,
                new StringReader("Tell me a story about a cat.\n/quit\n"));
            Assert.True(code == 0, error.ToString());
            return error.ToString();
        }
        // The chatml prompt is about 40 tokens: --ctx 48 leaves 8, far less than a story.
        var cut = Chat("--ctx", "48");
        Assert.Contains("[the answer reached the end of the context (48 tokens, --ctx) and was cut there, after ", cut);
        Assert.DoesNotContain("reached the end of the context", Chat("-n", "8"));

        var log = new StringWriter();
        Assert.Null(ChatCommand.FitToContext([BitNetSharp.Tokenization.ChatMessage.User("x")], _ => new int[70], context: 64, answerTokens: 8, log, modelContext: 64));
        Assert.Contains("Write a shorter one (the model's whole context is in use).", log.ToString());
        log = new StringWriter();
        Assert.Null(ChatCommand.FitToContext([BitNetSharp.Tokenization.ChatMessage.User("x")], _ => new int[70], context: 64, answerTokens: 8, log, modelContext: 256));
        Assert.Contains("or start chat with a larger --ctx (the model allows up to 256).", log.ToString());
        log = new StringWriter();
        Assert.Null(ChatCommand.FitToContext([BitNetSharp.Tokenization.ChatMessage.User("x")], _ => new int[300], context: 64, answerTokens: 8, log, modelContext: 256));
        Assert.Contains("(even the model's whole context, 256 tokens, is too short for it).", log.ToString());
    }

    /// <summary>
    /// One --seed gives each answer its own random stream, as llama.cpp's one sampler per session: every turn drew the same
    /// numbers, so the same message after /reset got the same answer. The session still replays with the seed.
    /// </summary>
    [Fact]
    public void ChatDrawsANewStreamEachTurnFromOneSeed()
    {
        string model = RepositoryFiles.Path("models/bitnet-tinystories.gguf");
        string[] Answers()
        {
            var output = new StringWriter();
            int code = Program.Run(["chat", "-m", model, "-n", "16", "--temp", "1", "--seed", "7", "-t", "1", "--template", "chatml"], output, new StringWriter(),
                new StringReader("Once upon a time\n/reset\nOnce upon a time\n/quit\n"));
            Assert.Equal(0, code);
            return output.ToString().Split("> ", StringSplitOptions.RemoveEmptyEntries).Select(a => a.Trim()).Where(a => a.Length > 0).ToArray();
        }
        var first = Answers();
        Assert.Equal(2, first.Length);
        Assert.NotEqual(first[0], first[1]);
        Assert.Equal(first, Answers());
    }

    [Fact]
    public void AConversationLongerThanTheContextDropsItsOldestTurnsAndAnOversizedMessageIsRefused()
    {
        string model = RepositoryFiles.Path("models/bitnet-tinystories.gguf");
        // Four turns in a 64-token context: the third and fourth only fit without the first turns. Before, the first turn
        // that did not fit ended the chat with "maxTokens ('-39') must be a non-negative value".
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Program.Run(["chat", "-m", model, "--ctx", "64", "-n", "8", "--temp", "0", "-t", "1", "--template", "chatml"], output, error,
            new StringReader("Tell me a story about a cat and a dog who lived in a big house near the sea\nhi\nwhat next\nand then\n\n"));
        Assert.Equal(0, code);
        var lines = error.ToString().Split('\n');
        Assert.Equal(4, lines.Count(l => l.StartsWith("[", StringComparison.Ordinal) && l.Contains("generated", StringComparison.Ordinal)));
        Assert.Contains(lines, l => l.StartsWith("[context full (64 tokens, --ctx): the oldest 2 message(s) are dropped", StringComparison.Ordinal));

        // A message that cannot fit even alone is not sent; the chat goes on, and the next message is answered.
        error = new StringWriter();
        code = Program.Run(["chat", "-m", model, "--ctx", "40", "-n", "4", "--temp", "0", "-t", "1", "--template", "chatml"], new StringWriter(), error,
            new StringReader("Tell me a long story about a cat and a dog who lived in a big house near the sea with many friends\nhi\n\n"));
        Assert.Equal(0, code);
        Assert.Contains("it was not sent", error.ToString());
        Assert.Contains("the context holds 40 (--ctx)", error.ToString());
        Assert.Single(error.ToString().Split('\n'), l => l.StartsWith("[", StringComparison.Ordinal) && l.Contains("generated", StringComparison.Ordinal));

        var badCount = new StringWriter();
        Assert.NotEqual(0, Program.Run(["chat", "-m", model, "-n", "0"], new StringWriter(), badCount, new StringReader("")));
        Assert.Contains("--n-predict (-n) must be at least 1", badCount.ToString());

        // An unknown template is named before the model loads (a missing model hid it; a large one made it wait).
        var badTemplate = new StringWriter();
        Assert.Equal(2, Program.Run(["chat", "-m", "no-such-model.gguf", "--template", "nope"], new StringWriter(), badTemplate, new StringReader("")));
        Assert.Contains("--template", badTemplate.ToString());
        Assert.Contains("nope", badTemplate.ToString());
    }

    /// <summary>
    /// A message too long to fit even alone is refused without touching the history: the turns dropped while trying
    /// to make room for it used to stay dropped, so one oversized paste wiped the whole conversation.
    /// </summary>
    [Fact]
    public void AnOversizedMessageLeavesTheHistoryAlone()
    {
        string model = RepositoryFiles.Path("models/bitnet-tinystories.gguf");
        string longMessage = string.Join(' ', Enumerable.Repeat("the cat and the dog went to the big house near the sea", 10));
        var error = new StringWriter();
        int code = Program.Run(["chat", "-m", model, "--ctx", "96", "-n", "4", "--temp", "0", "-t", "1", "--template", "chatml"], new StringWriter(), error,
            new StringReader($"hi\n{longMessage}\nok\n\n"));
        Assert.Equal(0, code);
        string log = error.ToString();
        Assert.Contains("it was not sent", log);
        Assert.DoesNotContain("are dropped", log);
        var stats = log.Split('\n').Where(l => l.StartsWith('[') && l.Contains("generated", StringComparison.Ordinal)).ToArray();
        Assert.Equal(2, stats.Length);
        Assert.DoesNotContain("(0 reused)", stats[1]); // "ok" continues the first turn, still in the history and the cache
    }

    /// <summary>A --system prompt that leaves no room for a message is a usage error naming --system; a blank one is no system prompt.</summary>
    [Fact]
    public void ASystemPromptMustLeaveRoomForAMessage()
    {
        string model = RepositoryFiles.Path("models/bitnet-tinystories.gguf");
        var error = new StringWriter();
        int code = Program.Run(["chat", "-m", model, "--ctx", "48", "-n", "4", "--template", "chatml", "--system", string.Join(' ', Enumerable.Repeat("be very kind and brief", 12))],
            new StringWriter(), error, new StringReader("hi\n\n"));
        Assert.Equal(2, code);
        Assert.Contains("--system", error.ToString());
        Assert.Contains("--ctx", error.ToString());

        var blank = new StringWriter();
        var withBlank = new StringWriter();
        Assert.Equal(0, Program.Run(["chat", "-m", model, "--ctx", "64", "-n", "4", "--temp", "0", "-t", "1", "--template", "chatml"], blank, new StringWriter(), new StringReader("hi\n\n")));
        Assert.Equal(0, Program.Run(["chat", "-m", model, "--ctx", "64", "-n", "4", "--temp", "0", "-t", "1", "--template", "chatml", "--system", "   "], withBlank, new StringWriter(), new StringReader("hi\n\n")));
        Assert.Equal(blank.ToString(), withBlank.ToString());
    }

    [Fact]
    public void TwoTurnsReuseTheCachedHistory()
    {
        string vocab = SharedData.RequirePath("llama.cpp-vocab/ggml-vocab-gpt-2.gguf");
        using var dir = new TestGguf.TempDirectory();
        var shape = SyntheticShape.Tiny with { VocabSize = 50257, ContextLength = 256 };
        var w = SyntheticModel.Build(shape, 5);
        using (var tok = GgufFile.Open(vocab))
            foreach (var (k, v) in tok.Metadata.Entries)
                if (k.StartsWith("tokenizer.", StringComparison.Ordinal)) w.Add(k, v);
        string model = dir.File("chat.gguf");
        w.WriteFile(model);
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Program.Run(["chat", "-m", model, "-n", "8", "--seed", "1", "--template", "chatml"], output, error,
            new StringReader("Hello there\nAnd again\n\n"));
        Assert.Equal(0, code);
        Assert.Contains("chat template: chatml", error.ToString());
        var stats = error.ToString().Split('\n').Where(l => l.StartsWith('[')).ToArray();
        Assert.Equal(2, stats.Length);
        Assert.Contains("(0 reused)", stats[0]);
        Assert.DoesNotContain("(0 reused)", stats[1]); // the second turn prefills only what is new

        var bad = Program.Run(["chat", "-m", model, "--template", "nope"], new StringWriter(), error = new StringWriter(), new StringReader(""));
        Assert.Equal(2, bad); // a usage error, found before the model loads
        Assert.Contains("chatml", error.ToString()); // the error lists the valid names
    }

    /// <summary>
    /// The kernel tuning variables are checked before a command that runs a model: BITNET_WEIGHT_STREAMS=3 and
    /// BITNET_PREFETCH_DISTANCE=100 fell back to the defaults without a word (a measurement of "3 streams" measured one),
    /// and an unknown BITNET_KERNEL exited 1, the code of a bad model file. Now usage errors (2) naming the variable and
    /// what it takes; valid values, and commands that run no model, are untouched.
    /// </summary>
    [Fact]
    public void BadKernelVariablesAreUsageErrorsNamingTheVariable()
    {
        foreach (var (name, value, message) in new[]
        {
            ("BITNET_KERNEL", "foo", "BITNET_KERNEL='foo' names no kernel"),
            ("BITNET_WEIGHT_STREAMS", "3", "BITNET_WEIGHT_STREAMS='3' is not 1 or 4"),
            ("BITNET_PREFETCH_DISTANCE", "100", "BITNET_PREFETCH_DISTANCE='100' is not a number of bytes that is a multiple of 64"),
            ("BITNET_PREFETCH_DISTANCE", "131072", "BITNET_PREFETCH_DISTANCE='131072'"),
            ("BITNET_PREFETCH_LEVEL", "l3", "BITNET_PREFETCH_LEVEL='l3' is not l1 or l2"),
        })
        {
            foreach (string[] args in new[] { new[] { "generate", "-p", "Once", "-n", "1", "-t", "1" }, ["bench", "-p", "0", "-n", "1", "-r", "1"] })
            {
                var output = new StringWriter();
                var error = new StringWriter();
                int code = Program.Run(args, output, error, environment: n => n == name ? value : null);
                Assert.True(code == 2, $"{name}={value} {args[0]}: exit {code}, {error}");
                Assert.Contains(message, error.ToString());
                Assert.Equal("", output.ToString());
            }
        }
        // Valid values (and blank ones) pass; inspect runs no kernel and is not stopped by a bad one.
        foreach (var (name, value) in new[] { ("BITNET_WEIGHT_STREAMS", " 4 "), ("BITNET_PREFETCH_DISTANCE", "4096"), ("BITNET_PREFETCH_LEVEL", "L1"), ("BITNET_KERNEL", "reference"), ("BITNET_KERNEL", " ") })
            Assert.Empty(BitNetSharp.Kernels.KernelRegistry.EnvironmentProblems(n => n == name ? value : null));
        var inspectOut = new StringWriter();
        var inspectError = new StringWriter();
        Assert.Equal(0, Program.Run(["inspect", RepositoryFiles.Path("models/bitnet-tinystories.gguf")], inspectOut, inspectError, environment: n => n == "BITNET_KERNEL" ? "foo" : null));
    }

    /// <summary>
    /// "-" as an output path made a file named "-" in the working directory, exit 0 (profile --trace -, and any other
    /// output): refused, naming /dev/stdout, before any work.
    /// </summary>
    [Fact]
    public void ADashOutputIsRefusedNotMadeAFile()
    {
        string model = RepositoryFiles.Path("models/bitnet-tinystories.gguf");
        string dash = Path.GetFullPath("-");
        Assert.False(File.Exists(dash), "a file named '-' is already in the working directory");
        foreach (var (args, expected) in new (string[], string)[]
        {
            (["profile", "-m", model, "-n", "1", "--prompt-tokens", "2", "--trace", "-"], "--trace -: give a file path (for standard output, --trace /dev/stdout)"),
            (["generate", "-m", model, "-p", "Hi", "-n", "1", "--ids-out", "-"], "--ids-out -: give a file path (for standard output, --ids-out /dev/stdout)"),
            (["convert", model, "-"], "the output -: give a file path (for standard output, /dev/stdout)"),
        })
        {
            var error = new StringWriter();
            int code = BitNetSharp.Cli.Program.Run(args, new StringWriter(), error);
            Assert.True(code == 2, $"{string.Join(' ', args)}: exit {code}: {error}");
            Assert.Contains(expected, error.ToString());
            Assert.False(File.Exists(dash), $"{string.Join(' ', args)} made a file named '-'");
        }
    }
}
