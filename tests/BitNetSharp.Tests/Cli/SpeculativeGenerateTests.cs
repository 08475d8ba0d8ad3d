using System.Text.Json;
using BitNetSharp.Cli;
using BitNetSharp.Model;
using BitNetSharp.Tests.Formats;

namespace BitNetSharp.Tests.Cli;

/// <summary><c>bitnet generate --speculate ngram | --draft MODEL | --draft-layers N</c> on the bundled model.</summary>
public class SpeculativeGenerateTests
{
    private static (int ExitCode, string Output, string Error) Bitnet(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Program.Run(args, output, error);
        return (code, output.ToString(), error.ToString());
    }

    private static int[] Ids(string path)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        return doc.RootElement.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
    }

    [Fact]
    public void SpeculativeGreedyPrintsItsStatsAndTheSameTokens()
    {
        using var dir = new TestGguf.TempDirectory();
        string model = RepositoryFiles.Path("tests/fixtures/tinystories-4m/model.gguf");
        const string Prompt = "Tom had a red ball. Tom loved the red ball. One day, Tom lost the red ball. Tom";
        string[] common = ["generate", "-m", model, "-p", Prompt, "-n", "24", "--temp", "0", "--ignore-eos", "-t", "1"];
        var plain = Bitnet([.. common, "--ids-out", dir.File("plain.json")]);
        Assert.True(plain.ExitCode == 0, plain.Error);
        Assert.DoesNotContain("speculative", plain.Error);
        foreach (var (name, extra) in new (string, string[])[]
        {
            ("ngram", ["--speculate", "ngram", "--draft-tokens", "4"]),
            ("layers", ["--draft-layers", "2", "--draft-tokens", "3"]),
            ("self", ["--draft", model]),
        })
        {
            var r = Bitnet([.. common, "--ids-out", dir.File(name + ".json"), .. extra]);
            Assert.True(r.ExitCode == 0, r.Error);
            Assert.Equal(plain.Output, r.Output);
            Assert.Equal(Ids(dir.File("plain.json")), Ids(dir.File(name + ".json")));
            Assert.Matches(@"speculative \((ngram|draft model), k=\d+\): \d+ steps, acceptance [\d.]+% \(\d+/\d+\), [\d.]+ tokens/step", r.Error);
        }
        Assert.Contains("acceptance 100.0%", Bitnet([.. common, "--draft", model]).Error);
    }

    /// <summary>chat takes the same flags: two greedy turns answer as without speculation, each with its speculative line.</summary>
    [Fact]
    public void ChatSpeculatesToo()
    {
        string model = RepositoryFiles.Path("tests/fixtures/tinystories-4m/model.gguf");
        (int, string, string) Chat(params string[] extra)
        {
            var output = new StringWriter();
            var error = new StringWriter();
            int code = Program.Run(["chat", "-m", model, "-n", "16", "--temp", "0", "-t", "1", "--template", "chatml", .. extra], output, error,
                new StringReader("Tom had a red ball. Tom\nThe red ball\n\n"));
            return (code, output.ToString(), error.ToString());
        }
        var (code, plain, _) = Chat();
        Assert.Equal(0, code);
        var (code2, speculative, error) = Chat("--speculate", "ngram", "--draft-tokens", "3");
        Assert.True(code2 == 0, error);
        Assert.Equal(plain, speculative);
        Assert.Equal(2, error.Split('\n').Count(l => l.StartsWith("[speculative (ngram, k=3)", StringComparison.Ordinal)));
    }

    [Fact]
    public void MismatchedDraftsAndBadFlagsAreClearErrors()
    {
        using var dir = new TestGguf.TempDirectory();
        string model = RepositoryFiles.Path("tests/fixtures/tinystories-4m/model.gguf");
        string other = dir.File("tiny.gguf");
        SyntheticModel.Build(SyntheticShape.Tiny, 3).WriteFile(other);
        string[] common = ["generate", "-m", model, "-p", "Once upon a time", "-n", "4", "--temp", "0"];
        var r = Bitnet([.. common, "--draft", other]);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("256", r.Error);
        Assert.Contains("4096", r.Error);
        Assert.Contains("vocabulary", r.Error);
        // A draft without a tokenizer: only the sizes compare, and that is said (it was taken without a word).
        string bare = dir.File("bare.gguf");
        Assert.Equal(0, Bitnet("convert", model, bare, "--type", "i2_s", "--no-tokenizer").ExitCode);
        r = Bitnet([.. common, "--draft", bare]);
        Assert.True(r.ExitCode == 0, r.Error);
        Assert.Contains($"note: the draft model {bare} carries no tokenizer, so only the vocabulary sizes (4096) could be compared", r.Error);
        r = Bitnet([.. common, "--draft-layers", "4"]);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("--draft-layers must be between 1 and 3", r.Error);
        // A one-layer model has no shorter draft: said so (it read "between 1 and 0 (the model has 1 layers)"; matrix sweep).
        string single = dir.File("single.gguf");
        BitNetSharp.Model.SyntheticModel.Build(BitNetSharp.Model.SyntheticShape.Tiny with { Layers = 1 }, 3).WriteFile(single);
        r = Bitnet("generate", "-m", single, "--prompt-ids", "1,2,3", "-n", "2", "--draft-layers", "1");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("--draft-layers needs a model of at least 2 layers", r.Error);
        r = Bitnet([.. common, "--speculate", "magic"]);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("not one of ngram, draft, none", r.Error);
        r = Bitnet([.. common, "--speculate", "ngram", "--draft-tokens", "0"]);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("--draft-tokens must be between 1 and", r.Error);
        r = Bitnet([.. common, "--speculate", "draft"]);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("needs --draft MODEL or --draft-layers N", r.Error);
        r = Bitnet([.. common, "--draft-tokens", "4"]); // without speculation it was accepted and ignored
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("speculation is off", r.Error);
        // "none" and "off" turn it off, as serve's --speculate does (generate refused them as unknown).
        r = Bitnet([.. common, "--speculate", "none"]);
        Assert.Equal(0, r.ExitCode);
        Assert.DoesNotContain("acceptance", r.Error);
        r = Bitnet([.. common, "--speculate", "off", "--draft-tokens", "4"]);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("speculation is off", r.Error);
        r = Bitnet([.. common, "--speculate", "none", "--draft-layers", "2"]);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("--speculate none", r.Error);
    }
}
