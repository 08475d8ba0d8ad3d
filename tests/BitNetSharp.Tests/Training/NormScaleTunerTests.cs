using BitNetSharp.Cli;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Model;
using BitNetSharp.Tests.Formats;
using BitNetSharp.Threading;
using BitNetSharp.Training;

namespace BitNetSharp.Tests.Training;

/// <summary><c>bitnet calibrate --tune</c>: codes fixed, only gains and scales change, and the domain loss goes down.</summary>
public class NormScaleTunerTests(ITestOutputHelper output)
{
    private const string Domain = "The ship sailed across the cold grey sea. The captain looked at the map and said, \"We turn north at dawn.\" " +
        "The sailors pulled the ropes, the wind filled the sails, and the old ship creaked as it climbed each wave.\n";

    private static (TrainingRun Run, WorkerPool Pool) TrainTiny()
    {
        var (options, tokenizer, train, validation) = TrainingRunTests.Setup(6);
        var pool = new WorkerPool(2);
        var run = TrainingRun.Start(options, tokenizer, train, validation, pool);
        while (!run.Done) run.StepOnce();
        return (run, pool);
    }

    /// <summary>
    /// A tiny trained model, tuned 30 steps on another text: the tuner's loss and the engine's perplexity on the written
    /// file are lower on that text; the file has the same size and header, every I2_S tensor the same codes, the embedding
    /// the same bytes; only norm tensors and I2_S scales differ (and some of each do).
    /// </summary>
    [Fact]
    public void TuningChangesOnlyGainsAndScalesAndLowersTheDomainLoss()
    {
        var (run, pool) = TrainTiny();
        using var _ = pool;
        using var dir = new TestGguf.TempDirectory();
        string source = dir.File("m.gguf"), tuned = dir.File("m-tuned.gguf");
        run.Export(source);
        var domain = run.Tokenizer.Encode(string.Concat(Enumerable.Repeat(Domain, 4)));
        double before, after;
        using (var file = GgufFile.Open(source))
        {
            var tuner = NormScaleTuner.Load(file, 2, 16, pool);
            Assert.True(tuner.Model.FrozenCodes);
            before = tuner.Loss(domain);
            // calibrate --tune's Ctrl-C reaches the held-out loss too (64 windows of 2B4T take a while): it stops before a batch.
            int asked = 0;
            Assert.Throws<OperationCanceledException>(() => tuner.Loss(domain, int.MaxValue, () => ++asked > 0));
            Assert.Equal(1, asked);
            Assert.Equal(before, tuner.Loss(domain, int.MaxValue, () => false));
            tuner.Tune(domain, 30, 1e-2f, 7);
            after = tuner.Loss(domain);
            tuner.Write(tuned);
        }
        output.WriteLine($"tuner loss {before:F4} → {after:F4}");
        Assert.True(after < before - 0.05, $"loss {before} → {after}");

        byte[] a = File.ReadAllBytes(source), b = File.ReadAllBytes(tuned);
        Assert.Equal(a.Length, b.Length);
        using var fa = GgufFile.Open(source);
        using var fb = GgufFile.Open(tuned);
        Assert.Equal(a.AsSpan(0, (int)fa.DataOffset).ToArray(), b.AsSpan(0, (int)fa.DataOffset).ToArray());
        int scalesChanged = 0, normsChanged = 0;
        foreach (var t in fa.Tensors)
        {
            var x = fa.GetTensorData(t);
            var y = fb.GetTensorData(fb.GetTensor(t.Name));
            if (t.Type == GgmlType.I2_S)
            {
                int codeBytes = (int)(t.ElementCount / 4);
                Assert.True(x[..codeBytes].SequenceEqual(y[..codeBytes]), $"{t.Name}: codes changed");
                Assert.True(x[(codeBytes + 4)..].SequenceEqual(y[(codeBytes + 4)..]), $"{t.Name}: padding changed");
                if (!x.Slice(codeBytes, 4).SequenceEqual(y.Slice(codeBytes, 4))) scalesChanged++;
            }
            else if (t.Name.Contains("norm", StringComparison.Ordinal)) { if (!x.SequenceEqual(y)) normsChanged++; }
            else Assert.True(x.SequenceEqual(y), $"{t.Name} changed");
        }
        Assert.True(scalesChanged > 0 && normsChanged > 0, $"{scalesChanged} scales and {normsChanged} norm tensors changed");

        double Perplexity(string path)
        {
            using var weights = ModelWeights.Load(path);
            using var engine = new Transformer(weights, 16, pool);
            return PerplexityEvaluator.Evaluate(engine, domain, 16).Perplexity;
        }
        double pplBefore = Perplexity(source), pplAfter = Perplexity(tuned);
        output.WriteLine($"engine perplexity on the domain text {pplBefore:F3} → {pplAfter:F3}");
        Assert.True(pplAfter < pplBefore, $"perplexity {pplBefore} → {pplAfter}");
    }

    /// <summary>--tune's perplexities: an untrained model's (e^119) was printed with all 52 of its digits.</summary>
    [Fact]
    public void PerplexitiesPastAMillionReadWithAnExponent()
    {
        Assert.Equal("7.39", PerplexityEvaluator.Format(Math.Exp(2)));
        Assert.Equal("999999.00", PerplexityEvaluator.Format(999_999));
        Assert.Equal("4.798e+51", PerplexityEvaluator.Format(Math.Exp(119)));
        Assert.Equal("Infinity", PerplexityEvaluator.Format(double.PositiveInfinity));
    }

    /// <summary>TQ2_0 projections (a scale per 256-weight block, baked into the codes) are refused with the conversion to do.</summary>
    [Fact]
    public void BlockScaledProjectionsAreRefusedWithWhatToDo()
    {
        var (_, tokenizer, _, _) = TrainingRunTests.Setup(1);
        var shape = new TrainingShape(tokenizer.Count, Dim: 256, Layers: 1, Heads: 4, KvHeads: 4, FeedForward: 256, ContextLength: 16);
        using var pool = new WorkerPool(1);
        var model = new TrainingModel(shape, 1, quantized: true, pool);
        model.Initialize(2);
        using var dir = new TestGguf.TempDirectory();
        var path = dir.File("tq2.gguf");
        ModelExporter.Write(path, shape, model.Parameters, tokenizer, "tq2", ProjectionPacking.Tq2_0);
        using var file = GgufFile.Open(path);
        var e = Assert.Throws<ArgumentException>(() => NormScaleTuner.Load(file, 1, 16, pool));
        output.WriteLine(e.Message);
        Assert.Contains("TQ2_0", e.Message);
        Assert.Contains("--type i2_s", e.Message);
        file.Dispose();

        // llama.cpp's usual TQ2_0 file has an F16 embedding: the refusal named the embedding alone (F32 needed, and no
        // way to get it), hiding the projections' refusal. Both are named, with one conversion that fixes both, and it does.
        string f16 = dir.File("tq2-f16.gguf"), fixedPath = dir.File("tune-me.gguf");
        using (var source = ModelWeights.Load(path)) ModelConverter.ToGguf(source, PackedWeightType.TQ2_0, embeddingType: GgmlType.F16).WriteFile(f16);
        using (var f16File = GgufFile.Open(f16))
        {
            e = Assert.Throws<ArgumentException>(() => NormScaleTuner.Load(f16File, 1, 16, pool));
            output.WriteLine(e.Message);
            Assert.Contains("TQ2_0", e.Message);
            Assert.Contains("token_embd.weight is F16", e.Message);
            Assert.Contains($"{dir.File("tq2-f16-tune.gguf")} --type i2_s --embedding-type f32", e.Message); // beside the input
        }
        using (var source = ModelWeights.Load(f16)) ModelConverter.ToGguf(source, PackedWeightType.I2_S, embeddingType: GgmlType.F32).WriteFile(fixedPath);
        using var fixedFile = GgufFile.Open(fixedPath);
        Assert.NotNull(NormScaleTuner.Load(fixedFile, 1, 16, pool));
    }

    /// <summary>
    /// --tune reads the domain text as the trainer does: a special token's text (TinyStories' &lt;|endoftext|&gt;) is
    /// that token, not a dozen byte-level ids the model never saw.
    /// </summary>
    [Fact]
    public void CalibrateTuneReadsSpecialTokensAsTheTrainerDoes()
    {
        var (run, pool) = TrainTiny();
        using var _ = pool;
        using var dir = new TestGguf.TempDirectory();
        string source = dir.File("m.gguf"), tuned = dir.File("t.gguf"), data = dir.File("domain.txt");
        run.Export(source);
        string text = string.Concat(Enumerable.Repeat(Domain + "\n<|endoftext|>\n", 12));
        File.WriteAllText(data, text);
        BitNetSharp.Tokenization.BitNetTokenizer tokenizer;
        using (var sourceFile = GgufFile.Open(source)) tokenizer = BitNetSharp.Tokenization.TokenizerLoader.FromGguf(sourceFile);
        Assert.True(tokenizer.TryGetTokenId("<|endoftext|>", out int _));
        var corpus = TrainingCorpus.Split([TrainingCorpus.ReadText(data, TestContext.Current.CancellationToken)], 0.1);
        int expected = tokenizer.Encode(string.Concat(corpus.TrainDocuments), addBos: false, parseSpecial: true).Length;
        Assert.True(expected < tokenizer.Encode(string.Concat(corpus.TrainDocuments), addBos: false).Length);
        var (code, stdout, error) = Bitnet("calibrate", "--tune", "-m", source, "--data", data, "--steps", "1", "--ctx", "16", "-t", "1", "--out", tuned);
        Assert.True(code == 0, error);
        Assert.Contains($"on {expected:N0} tokens", stdout);
    }

    /// <summary>The command end to end (a few steps), and its refusals: exit ≠ 0, one line, no output file.</summary>
    [Fact]
    public void CalibrateTuneWritesAModelOfTheSameSizeAndRefusesBadInput()
    {
        var (run, pool) = TrainTiny();
        using var _ = pool;
        using var dir = new TestGguf.TempDirectory();
        string source = dir.File("m.gguf"), tuned = dir.File("t.gguf"), data = dir.File("domain.txt");
        run.Export(source);
        File.WriteAllText(data, string.Concat(Enumerable.Repeat(Domain, 12)));
        var (code, stdout, error) = Bitnet("calibrate", "--tune", "-m", source, "--data", data, "--steps", "3", "--ctx", "16", "-t", "1", "--out", tuned);
        Assert.True(code == 0, error);
        Assert.Contains("held-out loss", stdout);
        Assert.Equal(new FileInfo(source).Length, new FileInfo(tuned).Length);

        File.Delete(tuned);
        foreach (var (args, message) in new[]
        {
            (new[] { "--steps", "0" }, "--steps must be at least 1"),
            (new[] { "--lr", "-1" }, "--lr must be a positive number"),
            (new[] { "--ctx", "4096" }, "must be 2 to"),
            // Taken silently before: a negative --ctx as the default, -t -3 as every core, the search's options ignored.
            (new[] { "--ctx", "-5" }, "--ctx must be a window length"),
            (new[] { "-t", "-3" }, "--threads must be ≥ 0"),
            (new[] { "--json" }, "--json applies to the bit-width search"),
            (new[] { "--kl-budget", "0.1" }, "--kl-budget applies to the bit-width search"),
            (new[] { "--seed", "-3" }, "--seed must be 0 to"),
            // A rate that blows the scales up: a NaN-poisoned run failed at the end with "β must be positive and finite",
            // and a worse model was written with exit 0.
            (new[] { "--lr", "1e6", "--steps", "4", "--ctx", "16" }, "--lr"),
        })
        {
            string[] threads = args.Contains("-t") ? [] : ["-t", "1"];
            var (badCode, _, badError) = Bitnet(["calibrate", "--tune", "-m", source, "--data", data, "--out", tuned, .. threads, .. args]);
            Assert.NotEqual(0, badCode);
            Assert.Contains(message, badError);
            Assert.False(File.Exists(tuned));
        }

        // An --out the final rename cannot take (a directory), or the model itself through a link: refused before the
        // first step (both failed after every step, the run lost).
        Directory.CreateDirectory(dir.File("d.gguf"));
        string link = dir.File("link.gguf");
        File.CreateSymbolicLink(link, source);
        foreach (var (outPath, message) in new[] { (dir.File("d.gguf"), "is a directory"), (link, "is the --model file") })
        {
            var (badCode, badOut, badError) = Bitnet("calibrate", "--tune", "-m", source, "--data", data, "--steps", "1", "--ctx", "16", "-t", "1", "--out", outPath);
            Assert.Equal(2, badCode);
            Assert.Contains(message, badError);
            Assert.DoesNotContain("held-out loss", badOut);
        }
        Assert.Equal(new FileInfo(source).Length, File.ReadAllBytes(link).Length);
    }

    [Fact]
    public void TheSearchRefusesTuneOnlyOptions()
    {
        var (code, _, error) = Bitnet("calibrate", "--data", "whatever.txt", "--out", "x.gguf", "--steps", "5");
        Assert.Equal(2, code);
        Assert.Contains("--steps applies to --tune only", error);
    }

    private static (int ExitCode, string Output, string Error) Bitnet(params string[] args)
    {
        var stdout = new StringWriter();
        var error = new StringWriter();
        int code = Program.Run(args, stdout, error);
        return (code, stdout.ToString(), error.ToString());
    }
}
