using System.Text.Json;
using System.Xml.Linq;
using BitNetSharp.Cli;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Model;
using BitNetSharp.Tests.Formats;

namespace BitNetSharp.Tests.Training;

/// <summary><c>bitnet train</c> and <c>bitnet eval</c> in-process: a tiny end-to-end run, resume, and every bad input.</summary>
public class TrainCommandTests
{
    private static (int ExitCode, string Output, string Error) Bitnet(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Program.Run(args, output, error);
        return (code, output.ToString(), error.ToString());
    }

    private static string[] TinyArgs(string data, string output, params string[] extra) =>
        ["train", "--data", data, "--out", output, "--vocab", "300", "--dim", "128", "--layers", "1", "--heads", "2", "--kv-heads", "1",
         "--ff", "128", "--ctx", "16", "--batch", "2", "--tokens", "128", "--val-every", "2", "--checkpoint-every", "2", "-t", "2", .. extra];

    private static string Corpus(TestGguf.TempDirectory dir)
    {
        var path = dir.File("corpus.txt");
        File.WriteAllText(path, string.Concat(Enumerable.Repeat(TrainingRunTests.Story, 6)));
        return path;
    }

    /// <summary>
    /// The run's outputs are distinct files, and its derived paths (OUT.ckpt, OUT.loss.svg) are not directories:
    /// --heldout over --out was replaced by the model (and the run told `bitnet eval` to score it), a directory at
    /// OUT.ckpt failed at the first checkpoint with the run lost. Refused before any work (found by a bad-input sweep).
    /// </summary>
    [Fact]
    public void OutputsThatCollideOrDerivedPathsThatAreDirectoriesAreRefused()
    {
        using var dir = new TestGguf.TempDirectory();
        string data = Corpus(dir), model = dir.File("m.gguf");
        foreach (var (extra, message) in new (string[], string)[]
        {
            (["--heldout", model], "--out and --heldout are the same file"),
            (["--heldout", dir.File("p.svg"), "--plot", dir.File("p.svg")], "--plot and --heldout are the same file"),
            (["--heldout", model + ".ckpt"], "the checkpoint (OUT.ckpt) and --heldout are the same file"),
            (["--plot", model + ".ckpt.svg", "--heldout", dir.File("./m.gguf.ckpt.svg")], "--plot and --heldout are the same file"),
        })
        {
            var (code, _, error) = Bitnet(TinyArgs(data, model, extra));
            Assert.True(code == 2, $"{string.Join(' ', extra)}: exit {code}, {error}");
            Assert.Contains(message, error);
        }
        Directory.CreateDirectory(model + ".ckpt");
        var (ckptCode, _, ckptError) = Bitnet(TinyArgs(data, model, "--resume"));
        Assert.Equal(2, ckptCode);
        Assert.Contains("m.gguf.ckpt, where the checkpoint goes, is a directory", ckptError);
        Directory.Delete(model + ".ckpt");
        Directory.CreateDirectory(dir.File("m.loss.svg"));
        var (plotCode, _, plotError) = Bitnet(TinyArgs(data, model));
        Assert.Equal(2, plotCode);
        Assert.Contains("the default --plot (OUT.loss.svg), is a directory", plotError);
        Assert.False(File.Exists(model));
    }

    [Fact]
    public void TrainsExportsPlotsAndEvaluates()
    {
        using var dir = new TestGguf.TempDirectory();
        var data = Corpus(dir);
        var model = dir.File("tiny.gguf");
        var heldOut = dir.File("held-out.txt");
        var (code, output, error) = Bitnet(TinyArgs(data, model, "--heldout", heldOut));
        Assert.True(code == 0, error);
        Assert.Contains("4 steps of 32 tokens", output);
        Assert.Equal(BitNetSharp.Training.TrainingCorpus.Load([data], cancellation: TestContext.Current.CancellationToken).ValidationText, File.ReadAllText(heldOut));
        Assert.NotEmpty(File.ReadAllText(heldOut));
        Assert.Contains("val ", output);
        Assert.Contains("codes changed since the last checkpoint: L0 ", output);
        Assert.True(File.Exists(model));
        var plot = XDocument.Load(dir.File("tiny.loss.svg"));
        XNamespace svg = "http://www.w3.org/2000/svg";
        Assert.Equal(["train (per step)", "train (average)", "validation"],
            plot.Descendants(svg + "polyline").Select(l => (string)l.Attribute("data-series")!));
        Assert.Equal(2, plot.Descendants(svg + "circle").Count(c => (string?)c.Attribute("data-series") == "validation")); // steps 2 and 4
        Assert.All(plot.Descendants(svg + "polyline").Take(2), l => Assert.Equal(4, ((string)l.Attribute("points")!).Split(' ').Length));
        Assert.True(File.Exists(model + ".ckpt"));
        Assert.Empty(Directory.GetFiles(dir.Path, "*.tmp*"));

        var (evalCode, evalOutput, evalError) = Bitnet("eval", "-m", model, "--data", data, "--ctx", "16", "--json");
        Assert.True(evalCode == 0, evalError);
        using var json = JsonDocument.Parse(evalOutput);
        double ppl = json.RootElement.GetProperty("perplexity").GetDouble();
        Assert.InRange(ppl, 1.0, 300.0);
        Assert.True(json.RootElement.GetProperty("bits_per_byte").GetDouble() > 0);
        Assert.Equal(8, json.RootElement.GetProperty("ctx").GetInt32() / 2);
    }

    [Fact]
    public void ResumeContinuesAFinishedCheckpointAndRefusesAnotherShape()
    {
        using var dir = new TestGguf.TempDirectory();
        var data = Corpus(dir);
        var model = dir.File("m.gguf");
        Assert.Equal(0, Bitnet(TinyArgs(data, model)).ExitCode);
        var first = File.ReadAllBytes(model);

        var (code, output, error) = Bitnet(TinyArgs(data, model, "--resume"));
        Assert.True(code == 0, error);
        Assert.Contains("resuming", output);
        Assert.Equal(first, File.ReadAllBytes(model));

        File.Delete(model);
        var (badCode, _, badError) = Bitnet([.. TinyArgs(data, model, "--resume").Select(a => a == "1" ? "2" : a)]); // --layers 1 → 2
        Assert.Equal(2, badCode); // the options, not the file: a usage error
        Assert.Contains("the checkpoint is for a model of shape", badError);
        Assert.False(File.Exists(model));
    }

    /// <summary>
    /// A resumed run's console loss is the moving average over the whole run (rebuilt from the checkpoint's loss
    /// history), not restarted from the first step after the resume; --data that is not the run's text is named in a
    /// note (the run goes on over its checkpoint's tokens), the same text under another name is not; -t past 4096 is
    /// refused as generate's is.
    /// </summary>
    [Fact]
    public void AResumedRunKeepsItsLossAverageAndNotesOtherData()
    {
        using var dir = new TestGguf.TempDirectory();
        var data = Corpus(dir);
        var model = dir.File("avg.gguf");
        Assert.Equal(0, Bitnet(TinyArgs(data, model)).ExitCode); // 4 steps
        var copy = dir.File("same-text.txt");
        File.Copy(data, copy);
        var longer = TinyArgs(copy, model, "--resume");
        longer[Array.IndexOf(longer, "--tokens") + 1] = "192"; // 6 steps
        var (code, output, error) = Bitnet(longer);
        Assert.True(code == 0, error);
        Assert.DoesNotContain("note: --data", error);
        var printed = double.Parse(System.Text.RegularExpressions.Regex.Match(output, @"step 6/6 loss (\S+)").Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        double expected = double.NaN;
        using (var pool = new BitNetSharp.Threading.WorkerPool(1))
        {
            var run = BitNetSharp.Training.TrainingRun.Resume(model + ".ckpt", pool);
            Assert.Equal(6, run.TrainLosses.Count);
            float m = float.NaN;
            foreach (var (_, loss) in run.TrainLosses) m = float.IsNaN(m) ? loss : 0.95f * m + 0.05f * loss;
            expected = m;
        }
        Assert.Equal(expected, printed, 3);

        var other = dir.File("other.txt");
        File.WriteAllText(other, File.ReadAllText(data)[..^200]);
        longer[Array.IndexOf(longer, "--data") + 1] = other;
        (code, _, error) = Bitnet(longer);
        Assert.True(code == 0, error);
        Assert.Contains($"note: --data {other} is not the text this run was started on", error);

        var many = TinyArgs(data, dir.File("t.gguf"));
        many[Array.IndexOf(many, "-t") + 1] = "9999";
        var (tCode, _, tError) = Bitnet(many);
        Assert.Equal(2, tCode);
        Assert.Contains("--threads (-t) must be at most 4096; got 9999", tError);
    }

    /// <summary>
    /// <c>--resume --tokens N</c> gives a run in flight a new length (4 → 6 steps here: the run continues to step 6 and
    /// the checkpoint remembers it); a length below the steps done is refused naming --tokens; without --tokens the
    /// checkpoint's length stands.
    /// </summary>
    [Fact]
    public void ResumeWithTokensGivesTheRunANewLength()
    {
        using var dir = new TestGguf.TempDirectory();
        var data = Corpus(dir);
        var model = dir.File("len.gguf");
        Assert.Equal(0, Bitnet(TinyArgs(data, model)).ExitCode);
        string[] WithTokens(string tokens, params string[] extra)
        {
            var args = TinyArgs(data, model, extra);
            args[Array.IndexOf(args, "--tokens") + 1] = tokens;
            return args;
        }

        var (shortCode, _, shortError) = Bitnet(WithTokens("64", "--resume"));
        Assert.Equal(2, shortCode);
        Assert.Contains("--tokens 64", shortError);
        Assert.Contains("at step 4", shortError);

        var (code, output, error) = Bitnet(WithTokens("192", "--resume"));
        Assert.True(code == 0, error);
        Assert.Contains("resuming", output);
        Assert.Contains("at step 4/6 (run length from --tokens)", output);
        Assert.Contains("step 6/6", output);

        var withoutTokens = TinyArgs(data, model, "--resume").ToList();
        withoutTokens.RemoveRange(withoutTokens.IndexOf("--tokens"), 2); // no --tokens: the checkpoint's length stands
        var (again, againOutput, againError) = Bitnet([.. withoutTokens]);
        Assert.True(again == 0, againError);
        Assert.Contains("at step 6/6", againOutput);

        // --tokens on a resume counts in the checkpoint's batch (2), not the command line's default of 8: 256 tokens
        // are 8 steps, where the default batch made 2, "before step 6", and refused the resume.
        var defaultBatch = WithTokens("256", "--resume").ToList();
        defaultBatch.RemoveRange(defaultBatch.IndexOf("--batch"), 2);
        (code, output, error) = Bitnet([.. defaultBatch]);
        Assert.True(code == 0, error);
        Assert.Contains("at step 6/8 (run length from --tokens)", output);

        // The same --tokens again (the stop message's "the same command and --resume"): nothing is replaced, nothing said.
        (code, output, error) = Bitnet([.. defaultBatch]);
        Assert.True(code == 0, error);
        Assert.Contains("at step 8/8\n", output.ReplaceLineEndings("\n"));
    }

    /// <summary>
    /// --out /dev/null made /dev/null.ckpt and /dev/null.loss.svg as files in /dev (the checkpoint and plot go beside
    /// --out), and the next run was refused for that checkpoint. A device is refused before any work.
    /// </summary>
    [Fact]
    public void ADeviceOutIsRefusedBeforeItsCheckpointIsMadeBesideIt()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "/dev/null as a character device (statx)");
        using var dir = new TestGguf.TempDirectory();
        var (code, _, error) = Bitnet(TinyArgs(Corpus(dir), "/dev/null"));
        Assert.Equal(2, code);
        Assert.Contains("--out /dev/null is not a file", error);
        Assert.False(File.Exists("/dev/null.ckpt"));
        Assert.False(File.Exists("/dev/null.loss.svg"));
    }

    /// <summary>
    /// On a resume --weight-decay replaces the checkpoint's, as --lr does (it was parsed and dropped: the b1.58 recipe's
    /// second stage, without weight decay, kept 0.1); a --batch or --seed that differs from the run's is refused (dropped
    /// without a word); and without --resume an existing checkpoint is not replaced (forgetting --resume lost the run).
    /// </summary>
    [Fact]
    public void ResumeTakesWeightDecayRefusesAnotherBatchOrSeedAndANewRunKeepsTheCheckpoint()
    {
        using var dir = new TestGguf.TempDirectory();
        var data = Corpus(dir);
        var model = dir.File("wd.gguf");
        var args = TinyArgs(data, model);
        args[Array.IndexOf(args, "--tokens") + 1] = "64"; // 2 steps, checkpointed at step 2
        Assert.Equal(0, Bitnet(args).ExitCode);
        string checkpoint = model + ".ckpt";
        var saved = File.ReadAllBytes(checkpoint);

        var (code, _, error) = Bitnet(args);
        Assert.Equal(2, code);
        Assert.Contains("--resume", error);
        Assert.Equal(saved, File.ReadAllBytes(checkpoint));

        var otherBatch = TinyArgs(data, model, "--resume");
        otherBatch[Array.IndexOf(otherBatch, "--batch") + 1] = "4";
        (code, _, error) = Bitnet(otherBatch);
        Assert.Equal(2, code);
        Assert.Contains("--batch 4", error);
        (code, _, error) = Bitnet(TinyArgs(data, model, "--resume", "--seed", "99"));
        Assert.Equal(2, code);
        Assert.Contains("--seed 99", error);

        // Without --batch, 96 tokens are 3 steps of the checkpoint's batch 2; the up-front check counted them in the
        // default batch of 8 ("--tokens must be at least one step (batch·ctx = 128)").
        var resumed = TinyArgs(data, model, "--resume", "--weight-decay", "0").ToList();
        resumed[resumed.IndexOf("--tokens") + 1] = "96";
        resumed.RemoveRange(resumed.IndexOf("--batch"), 2);
        (code, var output, error) = Bitnet([.. resumed]);
        Assert.True(code == 0, error);
        Assert.Contains("at step 2/3", output);
        Assert.Contains("weight decay 0 from --weight-decay", output);
        using var pool = new BitNetSharp.Threading.WorkerPool(1);
        Assert.Equal(0f, BitNetSharp.Training.TrainingRun.Resume(checkpoint, pool).Options.WeightDecay);
    }

    /// <summary>A step count past int wrapped to 0 or below, and the run "finished" at once, exporting random weights.</summary>
    [Fact]
    public void TokensThatOverflowTheStepCountAreRefused()
    {
        using var dir = new TestGguf.TempDirectory();
        var args = TinyArgs(Corpus(dir), dir.File("huge.gguf"));
        args[Array.IndexOf(args, "--tokens") + 1] = "137438953472";
        var (code, _, error) = Bitnet(args);
        Assert.Equal(2, code);
        Assert.Contains("more than a run can count", error);
        Assert.False(File.Exists(dir.File("huge.gguf")));
    }

    /// <summary>
    /// <c>--activation-bits</c>: the run trains at the widths, the GGUF carries them (so eval uses them), and a resume
    /// that asks for other widths is refused naming both, as a usage error (exit 2, as another --batch or --seed is; it
    /// exited 1, the code of a bad file). A resume that gives no widths takes the checkpoint's, as it takes its --batch
    /// and --seed (it was refused: "the command line asks for 8", which it never did).
    /// </summary>
    [Fact]
    public void TrainsAtLowerActivationBitsAndExportsThem()
    {
        using var dir = new TestGguf.TempDirectory();
        var data = Corpus(dir);
        var model = dir.File("a4.gguf");
        var (code, output, error) = Bitnet(TinyArgs(data, model, "--activation-bits", "qkv=4,gate_up=4"));
        Assert.True(code == 0, error);
        Assert.Contains("activation bits qkv=4,gate_up=4", output);
        using (var file = GgufFile.Open(model))
            Assert.Equal(ActivationBits.Parse("qkv=4,gate_up=4", 1), ActivationBits.FromGguf(file, 1));

        File.Delete(model);
        var (badCode, _, badError) = Bitnet(TinyArgs(data, model, "--resume", "--activation-bits", "8"));
        Assert.Equal(2, badCode);
        Assert.Contains("the checkpoint trains with --activation-bits qkv=4,gate_up=4; the command line asks for 8", badError);
        Assert.False(File.Exists(model));

        (code, _, error) = Bitnet(TinyArgs(data, model, "--resume"));
        Assert.True(code == 0, error);
        using (var file = GgufFile.Open(model))
            Assert.Equal(ActivationBits.Parse("qkv=4,gate_up=4", 1), ActivationBits.FromGguf(file, 1));
    }

    /// <summary>
    /// I2_S rows that are not whole 128-weight blocks are said, as convert says them: bitnet.cpp loads such a file and
    /// computes it wrong (the run wrote them without a word; GGUF sweep). Whole blocks say nothing.
    /// </summary>
    [Fact]
    public void I2SRowsOfPartBlocksAreSaid()
    {
        using var dir = new TestGguf.TempDirectory();
        var data = Corpus(dir);
        var (code, _, error) = Bitnet(Replace(TinyArgs(data, dir.File("narrow.gguf")), "--dim", "64"));
        Assert.True(code == 0, error);
        Assert.Contains("note: rows of 64 weights (--dim) are not whole 128-weight blocks", error);
        (code, _, error) = Bitnet(TinyArgs(data, dir.File("whole.gguf")));
        Assert.True(code == 0, error);
        Assert.DoesNotContain("128-weight blocks", error);
    }

    [Theory]
    [InlineData("bits", "the bit width must be one of 8, 6, 5, 4, 3, 2")]
    [InlineData("fpbits", "the full-precision twin has no activation quantizer")]
    [InlineData("empty", "empty")]
    [InlineData("latin1", "not valid UTF-8")]
    [InlineData("dir", "is a directory; give a UTF-8 text file")]
    [InlineData("missing", "no such file; give a UTF-8 text file")]
    [InlineData("heads", "heads do not divide the model dimension")]
    [InlineData("kvheads", "KV heads do not divide")]
    [InlineData("vocab", "supports at most")]
    [InlineData("unwritable", "does not exist")]
    [InlineData("i2s", "multiple of 128")]
    [InlineData("png", "the loss curve is written as SVG")]
    [InlineData("lr", "--lr must be a positive learning rate")]
    [InlineData("lrnan", "--lr must be a positive learning rate")]
    [InlineData("warmup", "--warmup must be 0 or more")]
    [InlineData("decay", "--weight-decay must be 0 or more")]
    [InlineData("threads", "--threads (-t) must be ≥ 0")]
    [InlineData("ff", "--ff must be a positive width")]
    [InlineData("smallvocab", "use at least 257")]
    [InlineData("heldout-is-data", "writing it would replace the training text")]
    [InlineData("out-is-data", "writing it would replace the training text")]
    [InlineData("heldout-links-data", "--heldout")]
    [InlineData("out-through-linked-folder", "writing it would replace the training text")]
    [InlineData("out-is-folder", "--out")]
    [InlineData("heldout-is-folder", "--heldout")]
    [InlineData("vocab-with-heldout", "supports at most")]
    [InlineData("attention-too-big", "more than one array can")]
    [InlineData("logits-too-big", "the logits, batch·ctx·vocab buffer would hold")]
    [InlineData("short-validation", "is shorter than one validation window of --ctx 128")]
    [InlineData("ctx1", "The context length (--ctx) must be at least 2")]
    [InlineData("layers0", "(--layers) must be positive (got 0)")]
    [InlineData("heads0", "(--heads) must be positive (got 0)")]
    public void BadInputIsAClearErrorWithNoOutputFile(string scenario, string message)
    {
        using var dir = new TestGguf.TempDirectory();
        var data = Corpus(dir);
        var model = dir.File("out.gguf");
        string[] args = scenario switch
        {
            "empty" => TinyArgs(Write(dir, "empty.txt", []), model),
            "latin1" => TinyArgs(Write(dir, "latin1.txt", [0x63, 0x61, 0x66, 0xE9, 0x20, 0x6F, 0x6B]), model),
            "dir" => TinyArgs(Directory.CreateDirectory(Path.Combine(dir.Path, "texts")).FullName, model),
            "missing" => TinyArgs(dir.File("nowhere.txt"), model),
            "heads" => Replace(TinyArgs(data, model), "--heads", "3"),
            "kvheads" => Replace(Replace(TinyArgs(data, model), "--heads", "4"), "--kv-heads", "3"),
            "vocab" => Replace(TinyArgs(data, model), "--vocab", "5000"),
            "unwritable" => TinyArgs(data, dir.File("missing/dir/out.gguf")),
            "png" => TinyArgs(data, model, "--plot", dir.File("loss.png")),
            "bits" => TinyArgs(data, model, "--activation-bits", "qkv=7"),
            "fpbits" => TinyArgs(data, model, "--activation-bits", "4", "--full-precision"),
            "lr" => TinyArgs(data, model, "--lr", "-1"),
            "lrnan" => TinyArgs(data, model, "--lr", "NaN"),
            "warmup" => TinyArgs(data, model, "--warmup", "-1"),
            "decay" => TinyArgs(data, model, "--weight-decay", "-0.5"),
            "threads" => Replace(TinyArgs(data, model), "-t", "-2"),
            "ff" => Replace(TinyArgs(data, model), "--ff", "-5"),
            "smallvocab" => Replace(TinyArgs(data, model), "--vocab", "10"),
            // Before: the corpus was replaced by its own last 5 % (--heldout) or by the model (--out) with no word.
            "heldout-is-data" => TinyArgs(data, model, "--heldout", data),
            "out-is-data" => TinyArgs(data, data),
            // A link to the corpus, or to its folder, was another file to the check: the corpus became its own last 5 %, or the model.
            "heldout-links-data" => TinyArgs(data, model, "--heldout", File.CreateSymbolicLink(dir.File("held.txt"), data).FullName),
            "out-through-linked-folder" => TinyArgs(data, Path.Combine(Directory.CreateSymbolicLink(dir.File("alias.txt"), dir.Path).FullName, "corpus.txt")),
            // A folder as --out trained every step before the export failed; as --heldout the error named no option.
            "out-is-folder" => TinyArgs(data, Directory.CreateDirectory(dir.File("models.txt")).FullName),
            "heldout-is-folder" => TinyArgs(data, model, "--heldout", Directory.CreateDirectory(dir.File("held.txt")).FullName),
            // The held-out text was written before the vocabulary check refused the run, and left behind.
            "vocab-with-heldout" => Replace(TinyArgs(data, model, "--heldout", dir.File("held.out")), "--vocab", "5000"),
            // batch·heads·ctx² past one array: an OverflowException after the tokenizer was trained.
            "attention-too-big" => Replace(Replace(Replace(Replace(TinyArgs(data, model), "--ctx", "23200"), "--tokens", "46400"), "--heads", "2"), "--batch", "2"),
            // batch·ctx·vocab past one array: an OverflowException (a stack trace) after the whole BPE vocabulary was trained.
            // Less held-out text than one window: every validation said "val NaN" and the run went on.
            "short-validation" => Replace(Replace(TinyArgs(data, model, "--heldout", dir.File("held.out")), "--ctx", "128"), "--tokens", "256"),
            "logits-too-big" => Replace(Replace(Replace(Replace(TinyArgs(data, model), "--ctx", "2048"), "--tokens", "32768"), "--batch", "16"), "--vocab", "65536"),
            // One message listed every size and named no flag.
            "ctx1" => Replace(Replace(TinyArgs(data, model), "--ctx", "1"), "--tokens", "64"),
            "layers0" => Replace(TinyArgs(data, model), "--layers", "0"),
            "heads0" => Replace(TinyArgs(data, model), "--heads", "0"),
            _ => Replace(TinyArgs(data, model), "--dim", "72"),
        };
        var (code, _, error) = Bitnet(args);
        Assert.NotEqual(0, code);
        // The shape is the user's flags: a usage error (they exited 1, the code of a bad file).
        if (scenario is "heads" or "kvheads" or "i2s" or "ctx1" or "layers0" or "heads0" or "vocab" or "vocab-with-heldout") Assert.Equal(2, code);
        Assert.Contains(message, error);
        Assert.StartsWith("error: ", error);
        Assert.DoesNotContain("   at ", error);
        Assert.DoesNotContain(Directory.GetFiles(dir.Path), f => !f.EndsWith(".txt", StringComparison.Ordinal));
        Assert.Equal(string.Concat(Enumerable.Repeat(TrainingRunTests.Story, 6)), File.ReadAllText(data)); // the corpus untouched
    }

    /// <summary>
    /// --resume with --heldout writes the held-out text (it was silently skipped), and a resume that switches between
    /// ternary and --full-precision is refused (the run went on in its old mode without a word).
    /// </summary>
    [Fact]
    public void ResumeWritesTheHeldOutTextAndRefusesAnotherMode()
    {
        using var dir = new TestGguf.TempDirectory();
        var data = Corpus(dir);
        var model = dir.File("tiny.gguf");
        Assert.Equal(0, Bitnet(TinyArgs(data, model)).ExitCode);
        var held = dir.File("held.txt");
        var (code, _, error) = Bitnet(TinyArgs(data, model, "--resume", "--heldout", held));
        Assert.True(code == 0, error);
        Assert.Equal(BitNetSharp.Training.TrainingCorpus.Load([data], cancellation: TestContext.Current.CancellationToken).ValidationText, File.ReadAllText(held));

        var (badCode, _, badError) = Bitnet(TinyArgs(data, model, "--resume", "--full-precision"));
        Assert.Equal(2, badCode);
        Assert.Contains("is a ternary (QAT) run; drop --full-precision", badError);
    }

    /// <summary>
    /// The held-out file is the validation stream's text whether the run is fresh or resumed: a fresh run joined two
    /// files' slices with nothing between them ("everyday.Once"), a resumed one with &lt;|endoftext|&gt;, where the
    /// validation stream has EOS; and eval reads that marker as the token, so it scores the tokens validation does.
    /// </summary>
    [Fact]
    public void TheHeldOutTextIsTheValidationStreamFreshOrResumed()
    {
        using var dir = new TestGguf.TempDirectory();
        var data = Corpus(dir);
        var second = dir.File("second.txt");
        File.WriteAllText(second, string.Concat(Enumerable.Repeat(TrainingRunTests.Story, 4)).TrimEnd('\n'));
        var model = dir.File("tiny.gguf");
        string fresh = dir.File("fresh.txt"), resumed = dir.File("resumed.txt");
        var (code, _, error) = Bitnet([.. TinyArgs(data, model, "--heldout", fresh), "--data", second]);
        Assert.True(code == 0, error);
        (code, _, error) = Bitnet([.. TinyArgs(data, model, "--resume", "--heldout", resumed), "--data", second]);
        Assert.True(code == 0, error);
        string text = File.ReadAllText(fresh);
        Assert.Equal(text, File.ReadAllText(resumed));
        var corpus = BitNetSharp.Training.TrainingCorpus.Load([data, second], cancellation: TestContext.Current.CancellationToken);
        Assert.Equal(string.Join("<|endoftext|>", corpus.ValidationDocuments), text);

        // eval --parse-special scores exactly the validation stream's tokens (the marker as EOS); without it the marker
        // is text. A reference model must tokenize it the same way (it was compared without --parse-special).
        using var pool = new BitNetSharp.Threading.WorkerPool(1);
        var run = BitNetSharp.Training.TrainingRun.Resume(model + ".ckpt", pool);
        int Tokens(params string[] extra)
        {
            var (c, o, e) = Bitnet(["eval", "-m", model, "--data", fresh, "--json", "-t", "1", .. extra]);
            Assert.True(c == 0, e);
            return JsonDocument.Parse(o).RootElement.GetProperty("tokens").GetInt32();
        }
        Assert.Equal(run.Validation.Length, Tokens("--parse-special"));
        Assert.True(Tokens() > run.Validation.Length);
        Assert.Equal(run.Validation.Length, Tokens("--parse-special", "--kl-reference", model));
    }

    /// <summary>
    /// --lr and --warmup on a resume replace the checkpoint's: the divergence message says to resume the last good
    /// checkpoint with a lower --lr, and the resume ignored it, replaying the same steps into the same divergence.
    /// </summary>
    [Fact]
    public void AResumeTakesANewLearningRate()
    {
        using var dir = new TestGguf.TempDirectory();
        var data = Corpus(dir);
        var model = dir.File("tiny.gguf");
        Assert.Equal(0, Bitnet(TinyArgs(data, model)).ExitCode);
        var (code, output, error) = Bitnet(Replace(TinyArgs(data, model, "--resume", "--lr", "5e-4", "--warmup", "3"), "--tokens", "256"));
        Assert.True(code == 0, error);
        Assert.Contains("peak learning rate 5e-4 from --lr; warm-up 3 steps from --warmup", output);
        using var pool = new BitNetSharp.Threading.WorkerPool(1);
        var run = BitNetSharp.Training.TrainingRun.Resume(model + ".ckpt", pool);
        Assert.Equal(5e-4f, run.Options.LearningRate);
        Assert.Equal(3, run.Options.WarmupSteps);
    }

    /// <summary>A diverging run keeps its last good checkpoint (the non-finite weights replaced it before the check ran).</summary>
    [Fact]
    public void ADivergedRunKeepsTheLastGoodCheckpoint()
    {
        using var dir = new TestGguf.TempDirectory();
        var data = Corpus(dir);
        var model = dir.File("tiny.gguf");
        var (code, _, error) = Bitnet(Replace(Replace(TinyArgs(data, model, "--full-precision", "--lr", "1e30", "--warmup", "0"), "--checkpoint-every", "1"), "--val-every", "100"));
        Assert.Equal(1, code);
        Assert.Contains("diverged", error);
        Assert.True(File.Exists(model + ".ckpt"), "no checkpoint was written before the weights went non-finite: " + error);
        using var pool = new BitNetSharp.Threading.WorkerPool(1);
        var run = BitNetSharp.Training.TrainingRun.Resume(model + ".ckpt", pool);
        Assert.All(run.Model.Parameters, p => Assert.True(float.IsFinite(p)));
        Assert.Contains("was kept", error);
    }

    /// <summary>
    /// A run whose validation loss had blown up before its last checkpoint (checkpoints are written whatever the loss) is not
    /// told that checkpoint is "the last good" one to resume: the advice names its step and validation loss against the
    /// best, and says to start again (resuming a checkpoint at val 1.2e9 with a lower rate stayed there).
    /// </summary>
    [Fact]
    public void ADivergenceAfterTheValidationLossRoseSaysToStartAgain()
    {
        using var dir = new TestGguf.TempDirectory();
        var data = Corpus(dir);
        var model = dir.File("tiny.gguf");
        var args = Replace(Replace(Replace(TinyArgs(data, model, "--full-precision", "--lr", "300", "--warmup", "40"), "--tokens", "1280"), "--checkpoint-every", "4"), "-t", "1");
        var (code, _, error) = Bitnet(args);
        Assert.Equal(1, code);
        Assert.Contains("diverged", error);
        Assert.Contains("had already risen from", error);
        Assert.Contains("Start again with a lower --lr", error);
        Assert.DoesNotContain("last good checkpoint", error);
        Assert.Matches(@"\(step \d+, val [0-9.E+]+\)", error);
    }

    /// <summary>An empty or junk OUT.ckpt given to --resume is "not a checkpoint" (it said "truncated"), naming what to do.</summary>
    [Fact]
    public void AJunkCheckpointIsNotCalledTruncated()
    {
        using var dir = new TestGguf.TempDirectory();
        var data = Corpus(dir);
        var model = dir.File("tiny.gguf");
        File.WriteAllBytes(model + ".ckpt", [1, 2, 3, 4, 5]);
        var (code, _, error) = Bitnet(TinyArgs(data, model, "--resume"));
        Assert.Equal(1, code);
        Assert.Contains("not a bitnet training checkpoint (5 bytes); delete it", error);
    }

    /// <summary>
    /// A model of 64-wide rows cannot be TQ2_0 (blocks of 256 per row) but packs as I2_S (blocks of 128 over the whole
    /// tensor): convert's error offers i2_s (it said f16 only, checking each row against 128).
    /// </summary>
    [Fact]
    public void ConvertOffersI2SForRowsNarrowerThanABlock()
    {
        using var dir = new TestGguf.TempDirectory();
        var data = Corpus(dir);
        var model = dir.File("narrow.gguf");
        var (code, _, error) = Bitnet(Replace(Replace(TinyArgs(data, model, "--packing", "i2_s"), "--dim", "64"), "--ff", "128"));
        Assert.True(code == 0, error);
        (code, _, error) = Bitnet("convert", model, dir.File("tq2.gguf"), "--type", "tq2_0");
        Assert.Equal(2, code); // the user's --type: a usage error, as train's --packing
        Assert.Contains("use --type i2_s or f16", error);
        (code, _, error) = Bitnet("convert", model, dir.File("i2s.gguf"), "--type", "i2_s");
        Assert.True(code == 0, error);
    }

    private static string[] Replace(string[] args, string option, string value)
    {
        var copy = (string[])args.Clone();
        copy[Array.IndexOf(copy, option) + 1] = value;
        return copy;
    }

    private static string Write(TestGguf.TempDirectory dir, string name, byte[] bytes)
    {
        var path = dir.File(name);
        File.WriteAllBytes(path, bytes);
        return path;
    }
}
