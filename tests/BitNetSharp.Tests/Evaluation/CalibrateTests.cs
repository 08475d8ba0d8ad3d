using System.Text.Json;
using BitNetSharp.Evaluation;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Model;
using BitNetSharp.Monitoring;
using BitNetSharp.Tests.Formats;

namespace BitNetSharp.Tests.Evaluation;

/// <summary>`bitnet calibrate`: statistics, the budgeted search, the written model and report, and bad input.</summary>
public class CalibrateTests
{
    private static string BundledModel => RepositoryFiles.Path("tests/fixtures/tinystories-4m/model.gguf");

    private const string Story =
        "Once upon a time, there was a little girl named Lily. She loved to play in the park with her dog, Max. One day, " +
        "Lily saw a big red ball under a tree. She ran to get it, but Max got there first. They laughed and played all day. " +
        "When the sun went down, Lily and Max went home. Her mom made soup, and they were happy. The next day it rained, " +
        "so Lily read a book about a brave bird who flew over the sea to find a new home for his family. Tom was sad because " +
        "his toy car was broken. His dad said, \"Let's fix it together.\" They worked hard, and soon the car could zoom again. ";

    private static (int Code, string Output, string Error) Cli(params string[] args) => KlEvaluationTests.Cli(args);

    [Fact]
    public void StatisticsOfAHandMadeToken()
    {
        using var tiny = BitNetSharp.Tests.Model.TransformerTests.TinyModel();
        var c = tiny.Config;
        var stats = new ActivationStatistics(c);
        var x = new float[c.Dim];
        for (int i = 0; i < x.Length; i++) x[i] = (i % 2 == 0 ? 1 : -1) * 0.1f;
        x[3] = 10f; // |x| far above 6·RMS: an outlier channel
        stats.Observe(1, BitLinearInput.O, x);
        stats.Observe(1, BitLinearInput.O, x);
        var s = stats.Summarize().Single(r => r.Layer == 1 && r.Input == BitLinearInput.O);
        Assert.Equal(2, s.Tokens);
        Assert.Equal(10, s.AbsMaxP50, 6);
        double rms = Math.Sqrt((100 + 0.01 * (x.Length - 1)) / x.Length);
        Assert.Equal(10 / rms, s.CrestMean, 3);
        Assert.Equal(1, s.OutlierChannels);
        Assert.Equal(1.0, s.TopOutlierShare);
        // |x|/absmax: 0.01 for all but one entry (first bin), 1 for the outlier (last bin).
        Assert.Equal((x.Length - 1.0) / x.Length, s.Histogram[0], 9);
        Assert.Equal(1.0 / x.Length, s.Histogram[^1], 9);
        Assert.Equal(0, stats.Summarize().Single(r => r.Layer == 0 && r.Input == BitLinearInput.Qkv).Tokens);
    }

    /// <summary>
    /// A token with a NaN entry is counted apart and left out of the distributions (its NaN absmax sorted first and hid
    /// under a finite maximum, and its entries all went to the first bin); an all-zero token has no crest (0 pulled the
    /// mean down).
    /// </summary>
    [Fact]
    public void NonFiniteAndZeroTokensDoNotHideInTheStatistics()
    {
        using var tiny = BitNetSharp.Tests.Model.TransformerTests.TinyModel();
        var c = tiny.Config;
        var stats = new ActivationStatistics(c);
        var ones = Enumerable.Repeat(1f, c.Dim).ToArray();
        var bad = (float[])ones.Clone();
        bad[5] = float.NaN;
        var inf = (float[])ones.Clone();
        inf[0] = float.PositiveInfinity;
        stats.Observe(0, BitLinearInput.Qkv, ones);
        stats.Observe(0, BitLinearInput.Qkv, bad);
        stats.Observe(0, BitLinearInput.Qkv, inf);
        stats.Observe(0, BitLinearInput.Qkv, new float[c.Dim]);
        var s = stats.Summarize().Single(r => r.Layer == 0 && r.Input == BitLinearInput.Qkv);
        Assert.Equal(2, s.NonFiniteTokens);
        Assert.Equal(2, s.Tokens);
        Assert.Equal(1, s.AbsMaxMax);
        Assert.Equal(1, s.CrestMean, 9);
        // The ones token's entries all sit in the last bin; the zero token's in the first.
        Assert.Equal(0.5, s.Histogram[^1], 9);
        Assert.Equal(0.5, s.Histogram[0], 9);
    }

    /// <summary>With no held-out window every KL read 0 and the search lowered every input to 2 bits.</summary>
    [Fact]
    public void TheSearchNeedsAHeldOutWindow()
    {
        using var tiny = BitNetSharp.Tests.Model.TransformerTests.TinyModel();
        using var dir = new TestGguf.TempDirectory();
        using var engine = new Transformer(tiny, 8);
        var tokens = Enumerable.Range(0, 40).Select(i => i % tiny.Config.VocabSize).ToArray();
        var e = Assert.Throws<ArgumentException>(() => BitWidthSearch.Run(engine, tokens, 8, [], -1, 0.01, dir.Path, cancellation: TestContext.Current.CancellationToken));
        Assert.Contains("held-out window", e.Message);
    }

    /// <summary>
    /// Ctrl-C (the command's cancellation token) stops the search before its next forward pass and leaves no scratch
    /// reference behind (the process used to end at once, keeping it); a search's reference is held open while it runs,
    /// so another search in the folder does not take it for a killed run's.
    /// </summary>
    [Fact]
    public void ACancelledSearchStopsAndLeavesNoScratch()
    {
        using var tiny = BitNetSharp.Tests.Model.TransformerTests.TinyModel();
        using var dir = new TestGguf.TempDirectory();
        using var engine = new Transformer(tiny, 8);
        var tokens = Enumerable.Range(0, 40).Select(i => i % tiny.Config.VocabSize).ToArray();
        using var cancel = new CancellationTokenSource();
        cancel.Cancel();
        Assert.ThrowsAny<OperationCanceledException>(() => BitWidthSearch.Run(engine, tokens, 8, [0, 8], -1, 0.01, dir.Path, cancellation: cancel.Token));
        Assert.Empty(Directory.GetFiles(dir.Path, "*", SearchOption.AllDirectories));

        // Cancelled from the log of its first step: the reference was written and is removed.
        using var later = new CancellationTokenSource();
        bool sawReference = false;
        Assert.ThrowsAny<OperationCanceledException>(() => BitWidthSearch.Run(engine, tokens, 8, [0, 8, 16], -1, 10, dir.Path, log: _ =>
        {
            string scratch = Assert.Single(Directory.GetFiles(dir.Path, ".calibrate-reference.bnlg.*.tmp"));
            // Held: the stale-scratch rule would not delete it (it is this process's and nobody else's to remove).
            Assert.Equal(0, BitNetSharp.Formats.AtomicFile.RemoveStaleTemporaries(dir.Path, "calibrate-reference.bnlg"));
            sawReference = File.Exists(scratch);
            later.Cancel();
        }, cancellation: later.Token));
        Assert.True(sawReference, "the search logged no step before it was cancelled");
        Assert.Empty(Directory.GetFiles(dir.Path, "*", SearchOption.AllDirectories));
    }

    /// <summary>
    /// The lazy search (each round re-measures candidates in order of their last KL and accepts the first still smallest)
    /// starts as the full search does (every candidate measured every round), keeps the budget at every step, lowers as
    /// much, and needs far fewer evaluations: every round measured every candidate, 1,652 evaluations (~15 minutes on two
    /// cores) for the bundled model's default search. Its path may part from the full one where KLs are not monotone.
    /// </summary>
    [Fact]
    public void TheLazySearchKeepsTheBudgetWithFewerEvaluations()
    {
        using var w = ModelWeights.Load(BundledModel);
        var tokenizer = BitNetSharp.Tokenization.TokenizerLoader.FromGguf(w.Gguf!);
        var tokens = tokenizer.Encode(string.Concat(Enumerable.Repeat(Story, 3)), addBos: false);
        const int ctx = 32;
        int[] starts = [0, 64, 128];
        using var dir = new TestGguf.TempDirectory();
        using var engine = new Transformer(w, ctx);
        var full = BitWidthSearch.Run(engine, tokens, ctx, starts, -1, 0.05, dir.Path, cancellation: TestContext.Current.CancellationToken, lazy: false);
        engine.ActivationBits = ActivationBits.Uniform(w.Config.Layers);
        var lazy = BitWidthSearch.Run(engine, tokens, ctx, starts, -1, 0.05, dir.Path, cancellation: TestContext.Current.CancellationToken);
        Assert.True(full.Steps.Count >= 10, $"{full.Steps.Count} steps");
        Assert.Equal(full.Steps.Take(5), lazy.Steps.Take(5)); // where the KLs grow as assumed, the same steps
        Assert.All(lazy.Steps, s => Assert.InRange(s.MeanKl, 0, 0.05));
        Assert.InRange(lazy.Kl.MeanKl, 0, 0.05);
        Assert.True(lazy.Steps.Count >= full.Steps.Count * 9 / 10, $"lazy {lazy.Steps.Count} steps, full {full.Steps.Count}");
        Assert.True(lazy.Evaluations * 2 < full.Evaluations, $"lazy {lazy.Evaluations} evaluations, full {full.Evaluations}");
    }

    /// <summary>A writer killed while it wrote the scratch reference leaves AtomicFile's temporary of the scratch name, one
    /// level deeper: the next search removes that too.</summary>
    [Fact]
    public void AKilledReferenceWritersTemporaryIsRemovedByTheNextSearch()
    {
        using var tiny = BitNetSharp.Tests.Model.TransformerTests.TinyModel();
        using var dir = new TestGguf.TempDirectory();
        using var engine = new Transformer(tiny, 8);
        var tokens = Enumerable.Range(0, 40).Select(i => i % tiny.Config.VocabSize).ToArray();
        string nested = dir.File($"..calibrate-reference.bnlg.{int.MaxValue}.{Guid.NewGuid():N}.tmp.{int.MaxValue}.{Guid.NewGuid():N}.tmp");
        File.WriteAllBytes(nested, new byte[1024]);
        BitWidthSearch.Run(engine, tokens, 8, [0, 8], -1, 0.01, dir.Path, maxSteps: 1, cancellation: TestContext.Current.CancellationToken);
        Assert.Empty(Directory.GetFiles(dir.Path, "*", SearchOption.AllDirectories));
    }

    /// <summary>The crest mean is the same bits whatever order the workers reported tokens in (a running sum depended on it).</summary>
    [Fact]
    public void CrestMeanDoesNotDependOnTheOrderTokensArrive()
    {
        using var tiny = BitNetSharp.Tests.Model.TransformerTests.TinyModel();
        var c = tiny.Config;
        var rng = new Random(7);
        // Crest factors spread from ~1 to ~sqrt(dim): a random spike on random noise.
        var tokens = Enumerable.Range(0, 400).Select(_ =>
        {
            var x = Enumerable.Range(0, c.Dim).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
            x[rng.Next(c.Dim)] = (float)(rng.NextDouble() * 40);
            return x;
        }).ToList();
        double Crest(IEnumerable<float[]> order)
        {
            var stats = new ActivationStatistics(c);
            foreach (var x in order) stats.Observe(0, BitLinearInput.Qkv, x);
            return stats.Summarize().Single(r => r.Layer == 0 && r.Input == BitLinearInput.Qkv).CrestMean;
        }
        double forward = Crest(tokens);
        Assert.Equal(BitConverter.DoubleToInt64Bits(forward), BitConverter.DoubleToInt64Bits(Crest(Enumerable.Reverse(tokens))));
        Assert.Equal(BitConverter.DoubleToInt64Bits(forward), BitConverter.DoubleToInt64Bits(Crest(tokens.OrderBy(_ => rng.Next()))));
    }

    /// <summary>
    /// The search stays within the budget on its held-out windows, the written file carries exactly the chosen widths
    /// and otherwise equals the input byte for byte in every tensor, the report is written, and one thread or two
    /// choose the same widths.
    /// </summary>
    [Fact]
    public void CalibrationHonoursTheBudgetAndWritesTheModel()
    {
        using var dir = new TestGguf.TempDirectory();
        string data = dir.File("text.txt");
        File.WriteAllText(data, string.Concat(Enumerable.Repeat(Story, 8)));
        const double budget = 0.01;
        JsonElement Calibrate(string name, string threads)
        {
            var (code, output, error) = Cli("calibrate", "-m", BundledModel, "--data", data, "--ctx", "64", "--samples", "4", "--kl-budget", "0.01",
                "--out", dir.File(name), "--json", "-t", threads);
            Assert.True(code == 0, error);
            return JsonDocument.Parse(output).RootElement.Clone();
        }
        var one = Calibrate("one.gguf", "1");
        var two = Calibrate("two.gguf", "2");
        Assert.Equal(one.GetProperty("activation_bits").GetString(), two.GetProperty("activation_bits").GetString());
        Assert.Equal(one.GetProperty("kl_mean").GetDouble(), two.GetProperty("kl_mean").GetDouble(), 9);
        Assert.InRange(one.GetProperty("kl_mean").GetDouble(), 0, budget);
        Assert.True(one.GetProperty("steps").GetArrayLength() > 0, "a budget of 0.01 nats lowers at least one input");
        Assert.NotEqual("8", one.GetProperty("activation_bits").GetString());

        using var source = GgufFile.Open(BundledModel);
        using var written = GgufFile.Open(dir.File("one.gguf"));
        var bits = ActivationBits.FromGguf(written, 4);
        Assert.NotNull(bits);
        Assert.Equal(one.GetProperty("activation_bits").GetString(), bits.ToString());
        Assert.Equal(source.Tensors.Select(t => t.Name), written.Tensors.Select(t => t.Name));
        foreach (var t in source.Tensors) Assert.True(source.GetTensorData(t).SequenceEqual(written.GetTensorData(t.Name)), t.Name);
        Assert.Equal(source.Metadata.Count + 1, written.Metadata.Count);
        Assert.Contains("| layer | input | tokens |", File.ReadAllText(dir.File("one.calibration.md")));
        Assert.True(File.Exists(dir.File("one.calibration-crest.svg")));
        // The scratch reference is gone (a hidden temporary while it lives), and one a killed run left is deleted by the next.
        Assert.DoesNotContain(Directory.GetFiles(dir.Path), f => f.Contains("calibrate-reference"));

        // The calibrated model evaluates at its widths, and calibrating it again keeps them as the starting point's reference.
        var (code, output, error) = Cli("eval", "-m", dir.File("one.gguf"), "--data", data, "--ctx", "64", "--json");
        Assert.True(code == 0, error);
        Assert.Equal(bits.ToString(), JsonDocument.Parse(output).RootElement.GetProperty("activation_bits").GetString());
    }

    /// <summary>
    /// The search's scratch reference (the full-row distributions, 263 MB on 2B4T) is a hidden temporary in AtomicFile's
    /// form: one left by a killed run (its process gone) is deleted by the next search in the folder; it was a visible
    /// calibrate-reference-PID-GUID.bnlg that no later run removed.
    /// </summary>
    [Fact]
    public void AKilledSearchsScratchIsRemovedByTheNext()
    {
        using var dir = new TestGguf.TempDirectory();
        string data = dir.File("text.txt");
        File.WriteAllText(data, string.Concat(Enumerable.Repeat(Story, 4)));
        // No process has a PID this high (Linux caps PIDs at 2^22).
        string stale = dir.File($".calibrate-reference.bnlg.{int.MaxValue}.{Guid.NewGuid():N}.tmp");
        File.WriteAllBytes(stale, new byte[4096]);
        var (code, _, error) = Cli("calibrate", "-m", BundledModel, "--data", data, "--ctx", "64", "--samples", "2", "--max-steps", "1", "--out", dir.File("out.gguf"), "-t", "1");
        Assert.True(code == 0, error);
        Assert.False(File.Exists(stale), "the stale scratch file is still there");
        Assert.Equal(["out.calibration-crest.svg", "out.calibration-histogram.svg", "out.calibration.md", "out.gguf", "text.txt"],
            Directory.GetFiles(dir.Path).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    /// <summary>The full-row reference is sized before any work: 2B4T's defaults are 0.26 GB, --ctx 4096 --samples 16 is refused.</summary>
    [Fact]
    public void TheReferenceSizeIsBoundedUpFront()
    {
        var (positions, bytes) = BitNetSharp.Cli.Commands.CalibrateCommand.ReferenceSize(8, 256, 128_256);
        Assert.Equal(512, positions);
        Assert.InRange(bytes, 0.26e9, 0.27e9);
        Assert.True(BitNetSharp.Cli.Commands.CalibrateCommand.ReferenceSize(16, 4096, 128_256).Bytes > BitNetSharp.Cli.Commands.CalibrateCommand.MaxReferenceBytes);
    }

    /// <summary>
    /// On a vocabulary above 32k the search's reference kept only the top 64 tokens and one "rest" bucket, a lower bound on
    /// the KL: the widths it accepted could break the budget, and the KL it reported was not the model's. The KL it
    /// reports is now the full-row KL an engine reference measures, and that one is within the budget.
    /// </summary>
    [Fact]
    public void LargeVocabularySearchKeepsTheBudgetOnTheFullKl()
    {
        using var dir = new TestGguf.TempDirectory();
        string path = dir.File("wide.gguf");
        SyntheticModel.Build(SyntheticShape.Tiny with { Name = "wide", VocabSize = 40_000 }, 3).WriteFile(path);
        using var w = ModelWeights.Load(path);
        const int ctx = 32;
        int[] tokens = [.. Enumerable.Range(0, 4 * ctx + 1).Select(i => i * 7919 % 40_000)];
        int[] starts = [0, 32, 64, 96];
        const double budget = 0.02;
        using var engine = new Transformer(w, ctx);
        var r = BitWidthSearch.Run(engine, tokens, ctx, starts, -1, budget, dir.Path, cancellation: TestContext.Current.CancellationToken);
        Assert.NotEmpty(r.Steps);
        using var reference = new Transformer(w, ctx); // the starting widths: 8 everywhere
        engine.ActivationBits = r.Bits;
        var (_, full) = QualityEvaluator.Evaluate(engine, tokens, ctx, ctx, reference: KlReference.FromEngine(reference, KvCacheType.F32), windowStarts: starts, cancellation: TestContext.Current.CancellationToken);
        Assert.NotNull(full);
        Assert.InRange(full.MeanKl, 0, budget);
        Assert.Equal(full.MeanKl, r.Kl.MeanKl, 1e-6); // the file keeps float rows; the top-64 bound was 3e-4 low here
        Assert.Empty(Directory.GetFiles(dir.Path, "*.bnlg"));
    }

    [Theory]
    [InlineData("--kl-budget", "0", "--kl-budget must be a positive number")]
    [InlineData("--kl-budget", "-1", "--kl-budget must be a positive number")]
    [InlineData("--samples", "1", "--samples must be at least 2")]
    [InlineData("--samples", "400", "fewer than --samples 400")]
    [InlineData("--ctx", "100000", "--ctx 100000 must be 4 to")]
    [InlineData("--ctx", "-512", "--ctx must be a window length in tokens")]
    [InlineData("--threads", "-3", "--threads must be ≥ 0")]
    [InlineData("--max-steps", "0", "--max-steps must be at least 1")] // ran the whole search
    [InlineData("--seed", "-3", "--seed must be 0 to")] // drew --seed 3's windows
    [InlineData("--report", "", "--report: the path is empty")] // exit 1, "The value cannot be an empty string."
    [InlineData("--report", "y.svg", "give a path ending in .md")] // wrote Markdown into y.svg, plots as y.svg-crest.svg
    public void BadSettingsAreUsageErrorsAndWriteNothing(string option, string value, string message)
    {
        using var dir = new TestGguf.TempDirectory();
        string data = dir.File("text.txt");
        File.WriteAllText(data, string.Concat(Enumerable.Repeat(Story, 4)));
        string[] ctx = option == "--ctx" ? [] : ["--ctx", "64"];
        var (code, _, error) = Cli(["calibrate", "-m", BundledModel, "--data", data, .. ctx, option, value, "--out", dir.File("out.gguf")]);
        Assert.Equal(2, code);
        Assert.Contains(message, error);
        Assert.Equal([data], Directory.GetFiles(dir.Path));
    }

    /// <summary>
    /// A search that takes no step reports the starting model exactly: KL 0 and the same perplexity (it read KL 9e-9 and
    /// "(-+0.00 %)": the live rows were compared with the reference's float copies, and the baseline read back from them).
    /// </summary>
    [Fact]
    public void ASearchThatTakesNoStepReportsNoChange()
    {
        using var dir = new TestGguf.TempDirectory();
        string data = dir.File("text.txt");
        File.WriteAllText(data, string.Concat(Enumerable.Repeat(Story, 8)));
        var (code, output, error) = Cli("calibrate", "-m", BundledModel, "--data", data, "--ctx", "64", "--samples", "2", "--kl-budget", "1e-300",
            "--out", dir.File("z.gguf"), "--json");
        Assert.True(code == 0, error);
        var r = JsonDocument.Parse(output).RootElement;
        Assert.Equal(0, r.GetProperty("steps").GetArrayLength());
        Assert.Equal("8", r.GetProperty("activation_bits").GetString());
        Assert.Equal(0.0, r.GetProperty("kl_mean").GetDouble());
        Assert.Equal(0.0, r.GetProperty("kl_max").GetDouble());
        Assert.Equal(r.GetProperty("perplexity_8bit").GetDouble(), r.GetProperty("perplexity").GetDouble());
        (code, output, error) = Cli("calibrate", "-m", BundledModel, "--data", data, "--ctx", "64", "--samples", "2", "--kl-budget", "1e-300",
            "--out", dir.File("z2.gguf"));
        Assert.True(code == 0, error);
        Assert.Contains("(0.00 %); KL mean 0, median 0, p99 0, max 0 nats", output);
        Assert.Contains("calibration: 1 window of 64 tokens for statistics, 1 held out", output); // "1 windows"
        Assert.Contains("(0 steps, ", output);
        Assert.Equal("0.00", BitNetSharp.Cli.Commands.CalibrateCommand.SignedPercent(-1e-7));
        Assert.Equal("+0.01", BitNetSharp.Cli.Commands.CalibrateCommand.SignedPercent(0.006));
        Assert.Equal("-1.50", BitNetSharp.Cli.Commands.CalibrateCommand.SignedPercent(-1.5));
    }

    /// <summary>
    /// Calibrating a model that already holds activation widths says they are replaced (it was silent); the report gives
    /// the split as made (it said "half and half" for 3 samples) and says when --max-steps, not the budget, ended the search.
    /// </summary>
    [Fact]
    public void CalibrationSaysWhatItReplacesAndHowTheSearchEnded()
    {
        using var dir = new TestGguf.TempDirectory();
        string data = dir.File("text.txt");
        File.WriteAllText(data, string.Concat(Enumerable.Repeat(Story, 8)));
        string stored = dir.File("m4.gguf");
        using (var source = GgufFile.Open(BundledModel))
            GgufCopy.WithMetadata(source, stored, [new(ActivationBits.GgufKey, GgufValue.FromArray(GgufArray.Create(ActivationBits.Uniform(4, 6).ToArray())))]);
        var (code, _, error) = Cli("calibrate", "-m", stored, "--data", data, "--ctx", "64", "--samples", "3", "--kl-budget", "1", "--max-steps", "1",
            "--out", dir.File("c.gguf"), "-t", "1");
        Assert.True(code == 0, error);
        Assert.Contains("holds activation bits 6", error);
        string report = File.ReadAllText(dir.File("c.calibration.md"));
        Assert.Contains("3 windows of 64 tokens (seed 1): 2 for the statistics, 1 held out", report);
        Assert.Contains("stopped at --max-steps 1", report);
    }

    /// <summary>An empty --data (`--data "$TEXT"` with the variable unset) names the option (exit 1 with .NET's "The value cannot be an empty string.").</summary>
    [Fact]
    public void AnEmptyDataPathNamesTheOption()
    {
        using var dir = new TestGguf.TempDirectory();
        foreach (var tune in new[] { false, true })
        {
            var (code, _, error) = Cli(["calibrate", "-m", BundledModel, "--data", "", .. tune ? new[] { "--tune" } : [], "--out", dir.File("out.gguf")]);
            Assert.Equal(2, code);
            Assert.Contains("--data: the path is empty", error);
        }
    }

    /// <summary>No output may land on the --data text: the report (or an SVG beside it) or --out replaced it after the search.</summary>
    [Fact]
    public void OutputsNeverReplaceTheText()
    {
        using var dir = new TestGguf.TempDirectory();
        string text = string.Concat(Enumerable.Repeat(Story, 8));
        foreach (var (name, args) in new (string, string[])[]
        {
            ("notes.md", ["--report", "notes.md", "--out", "o.gguf"]),
            ("x-crest.svg", ["--report", "x.md", "--out", "o.gguf"]),
            ("data.gguf", ["--out", "data.gguf"]),
        })
        {
            string data = dir.File(name);
            File.WriteAllText(data, text);
            var (code, _, error) = Cli(["calibrate", "-m", BundledModel, "--data", data, "--ctx", "64", "--samples", "4", .. args.Select(a => a.Contains('.') ? dir.File(a) : a)]);
            Assert.Equal(2, code);
            Assert.Contains("--data", error);
            Assert.Equal(text, File.ReadAllText(data));
        }
    }

    [Fact]
    public void BadFilesAreClearErrors()
    {
        using var dir = new TestGguf.TempDirectory();
        string empty = dir.File("empty.txt"), binary = dir.File("binary.txt"), good = dir.File("good.txt");
        File.WriteAllText(empty, "  \n");
        File.WriteAllBytes(binary, [0x41, 0xC3, 0x28, 0x42]);
        File.WriteAllText(good, string.Concat(Enumerable.Repeat(Story, 4)));
        var (code, _, error) = Cli("calibrate", "-m", BundledModel, "--data", empty, "--out", dir.File("o.gguf"));
        Assert.Equal(1, code);
        Assert.Contains("empty.txt: the file holds only blank space", error);
        (code, _, error) = Cli("calibrate", "-m", BundledModel, "--data", binary, "--out", dir.File("o.gguf"));
        Assert.Equal(1, code);
        Assert.Contains("not valid UTF-8", error);
        (code, _, error) = Cli("calibrate", "-m", BundledModel, "--data", good, "--out", dir.File("no/such/dir/o.gguf"));
        Assert.Equal(2, code);
        Assert.Contains($"--out {dir.File("no/such/dir/o.gguf")}: the folder", error); // "Cannot write ...": no flag named
        Assert.Contains("does not exist", error);
        (code, _, error) = Cli("calibrate", "-m", BundledModel, "--data", good, "--out", dir.File("o.gguf"), "--report", dir.File("no/r.md"));
        Assert.Equal(2, code);
        Assert.Contains($"--report {dir.File("no/r.md")}: the folder", error);
        Directory.CreateDirectory(dir.File("busy.calibration.md")); // the default report's path is a folder
        (code, _, error) = Cli("calibrate", "-m", BundledModel, "--data", good, "--out", dir.File("busy.gguf"));
        Assert.Equal(2, code);
        Assert.Contains("the report beside --out", error);
        foreach (var tune in new[] { false, true })
        {
            (code, _, error) = Cli(["calibrate", "-m", BundledModel, "--data", good, .. tune ? new[] { "--tune" } : [], "--out", ""]);
            Assert.Equal(2, code);
            Assert.Contains("--out is empty; give a file path", error); // "--out : the calibrated model is a GGUF"
        }
        if (OperatingSystem.IsLinux())
        {
            // /proc exists and takes no new files (ENOENT): it read "(Could not find file '/proc'.)".
            (code, _, error) = Cli("calibrate", "-m", BundledModel, "--data", good, "--out", "/proc/o.gguf");
            Assert.Equal(2, code);
            Assert.Contains("--out /proc/o.gguf: cannot write in the folder '/proc' (", error);
            Assert.DoesNotContain("Could not find", error);
        }
        (code, _, error) = Cli("calibrate", "-m", BundledModel, "--data", good, "--out", dir.File("o.bin"));
        Assert.Equal(2, code);
        Assert.Contains("ending in .gguf", error);
        Assert.False(File.Exists(dir.File("o.gguf")));
        // A report path that is a directory (before: the whole search ran, then the report and the model were lost), or
        // that would overwrite the model, is refused before anything runs.
        Directory.CreateDirectory(dir.File("reports"));
        (code, _, error) = Cli("calibrate", "-m", BundledModel, "--data", good, "--out", dir.File("o.gguf"), "--report", dir.File("reports") + "/");
        Assert.Equal(2, code);
        Assert.Contains("is a directory", error);
        (code, _, error) = Cli("calibrate", "-m", BundledModel, "--data", good, "--out", dir.File("o.gguf"), "--report", dir.File("o.gguf"));
        Assert.Equal(2, code);
        Assert.Contains("give a path ending in .md", error); // a report must be Markdown, so it cannot land on a model
        Assert.False(File.Exists(dir.File("o.gguf")));
    }
}
