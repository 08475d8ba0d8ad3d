using System.Text.Json;
using BitNetSharp.Cli;
using BitNetSharp.Evaluation;
using BitNetSharp.Model;
using BitNetSharp.Tests.Formats;
using BitNetSharp.Threading;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Tests.Evaluation;

/// <summary>KL statistics against hand-computed cases, the saved-logits file, and `bitnet eval --kl-*` on the bundled model.</summary>
public class KlEvaluationTests
{
    private const string Story =
        "Once upon a time, there was a little girl named Lily. She loved to play in the park with her dog, Max. One day, " +
        "Lily saw a big red ball under a tree. She ran to get it, but Max got there first. They laughed and played all day. " +
        "When the sun went down, Lily and Max went home. Her mom made soup, and they were happy. The next day it rained, " +
        "so Lily read a book about a brave bird who flew over the sea to find a new home for his family. ";

    private static string BundledModel => RepositoryFiles.Path("models/bitnet-tinystories.gguf");

    private static double[] LogSoftmax(params float[] z)
    {
        var lp = new double[z.Length];
        Distributions.LogSoftmax(z, lp);
        return lp;
    }

    /// <summary>
    /// A model that puts all but 2e-18 of its mass on the reference's top token: the coarse KL stays below the full one
    /// (1 − top mass cancelled to 0 and a 5e-324 floor made it ~7.4 nats against 0.35), and the rest mass a logits file
    /// saves is the other tokens' (it was ln 0).
    /// </summary>
    /// <summary>
    /// A cancelled evaluation (eval's Ctrl-C) stops before its next forward pass, and the --save-logits file it was
    /// writing leaves nothing behind once disposed (the process used to end at once, leaving the hidden temporary).
    /// </summary>
    [Fact]
    public void ACancelledEvaluationStopsAndItsSavedLogitsLeaveNothing()
    {
        using var tiny = BitNetSharp.Tests.Model.TransformerTests.TinyModel();
        using var engine = new Transformer(tiny, 8);
        var tokens = Enumerable.Range(0, 40).Select(i => i % tiny.Config.VocabSize).ToArray();
        using var dir = new TestGguf.TempDirectory();
        var header = new LogitsFileHeader(tiny.Config.VocabSize, 8, 8, -1, 0, LogitsFileHeader.HashTokens(tokens), QualityEvaluator.Plan(tokens.Length, 8, 8).Positions, "test");
        using var cancel = new CancellationTokenSource();
        int windows = 0;
        using (var writer = new LogitsFileWriter(dir.File("saved.bnlg"), header))
            Assert.ThrowsAny<OperationCanceledException>(() => QualityEvaluator.Evaluate(engine, tokens, 8, 8, save: writer,
                progress: (done, _) => { windows = done; if (done == 1) cancel.Cancel(); }, cancellation: cancel.Token));
        Assert.Equal(1, windows); // stopped at the next window, not at the end
        Assert.Empty(Directory.GetFiles(dir.Path, "*", SearchOption.AllDirectories));
    }

    [Fact]
    public void TopKKlHasNoCancellationWhenTheModelIsPeaked()
    {
        double[] q = [-2e-18, Math.Log(1e-18), Math.Log(1e-18)];
        double[] p = [Math.Log(0.99), Math.Log(0.005), Math.Log(0.005)];
        double full = Distributions.KlDivergence(p, q);
        double coarse = Distributions.KlDivergenceTopK([0], [(float)p[0]], Math.Log(0.01), q);
        Assert.InRange(coarse, 0, full + 1e-9);
        Assert.Equal(0.99 * Math.Log(0.99) + 0.01 * Math.Log(0.01 / 2e-18), coarse, 4);
        Assert.Equal(Math.Log(2e-18), Distributions.LogSumExpExcept(q, [0]), 9);
        Assert.Equal(Math.Log(2e-18), Distributions.LogSumExpExcept([Math.Log(1e-18), 0, -1e-300, Math.Log(1e-18)], [2, 1]), 9);
        Assert.Equal(double.NegativeInfinity, Distributions.LogSumExpExcept(q, [2, 0, 1]));
    }

    /// <summary>P = (1/2, 1/4, 1/4), Q = (1/4, 1/2, 1/4): KL(P‖Q) = ½ ln 2 − ¼ ln 2 = ¼ ln 2.</summary>
    [Fact]
    public void KlOfAHandComputedPair()
    {
        var p = LogSoftmax(MathF.Log(0.5f), MathF.Log(0.25f), MathF.Log(0.25f));
        var q = LogSoftmax(5 + MathF.Log(0.25f), 5 + MathF.Log(0.5f), 5 + MathF.Log(0.25f)); // a shift changes nothing
        Assert.Equal(0.25 * Math.Log(2), Distributions.KlDivergence(p, q), 6);
        Assert.Equal(0, Distributions.KlDivergence(p, p));
        // Coarsened to the top token and the rest: P = (1/2, 1/2), Q = (1/4, 3/4).
        double expected = 0.5 * Math.Log(2) + 0.5 * Math.Log(0.5 / 0.75);
        Assert.Equal(expected, Distributions.KlDivergenceTopK([0], [(float)p[0]], Math.Log(0.5), q), 6);
        // All tokens kept: the full KL; the coarse one is never above it.
        Assert.Equal(0.25 * Math.Log(2), Distributions.KlDivergenceTopK([0, 1, 2], [(float)p[0], (float)p[1], (float)p[2]], double.NegativeInfinity, q), 6);
        Assert.True(expected <= 0.25 * Math.Log(2) + 1e-12);
    }

    [Fact]
    public void TopKIsBestFirstWithLowerIndexOnTies()
    {
        var rng = new Random(3);
        var values = new double[1000];
        for (int i = 0; i < values.Length; i++) values[i] = Math.Round(rng.NextDouble() * 50); // many ties
        var ids = new int[37];
        Distributions.TopK(values, ids);
        var expected = Enumerable.Range(0, values.Length).OrderByDescending(i => values[i]).ThenBy(i => i).Take(37);
        Assert.Equal(expected, ids);
        Assert.Equal(Array.IndexOf(values, values.Max()), Distributions.ArgMax(values));
    }

    [Fact]
    public void QuantilesInterpolateBetweenRanks()
    {
        double[] sorted = [1, 2, 3, 4];
        Assert.Equal(2.5, KlResult.Quantile(sorted, 0.5));
        Assert.Equal(3.97, KlResult.Quantile(sorted, 0.99), 10);
        Assert.Equal(4, KlResult.Quantile(sorted, 1));
        Assert.True(double.IsNaN(KlResult.Quantile([], 0.5)));
    }

    private static (ModelWeights Weights, int[] Tokens, int Bos) Load()
    {
        var weights = ModelWeights.Load(BundledModel);
        var tokenizer = TokenizerLoader.FromGguf(weights.Gguf!);
        var tokens = tokenizer.Encode(string.Concat(Enumerable.Repeat(Story, 3)), addBos: false);
        return (weights, tokens, tokenizer.AddBosToken ? tokenizer.BosId : -1);
    }

    /// <summary>
    /// Against itself the KL is exactly 0 with full agreement; an int8 KV cache against f32 gives a small positive KL;
    /// a saved file of full rows reproduces the engine reference, and a top-k file gives a value at most that.
    /// </summary>
    /// <summary>
    /// The top-token agreement's standard error is llama-perplexity's √(a(1 − a)/(n − 1)) (perplexity.cpp's d_p_top), as the
    /// KL mean's divides by n − 1: it divided by n (0.0043917 for 632 of 640 where llama.cpp prints 0.0043951).
    /// </summary>
    [Fact]
    public void TopAgreementStdErrFollowsLlamaPerplexity()
    {
        var kl = Enumerable.Repeat(0.01, 640).ToList();
        var r = KlResult.From(kl, 632, new BitNetSharp.Training.PerplexityResult(1, 640, 640, 1), 0);
        double a = 632.0 / 640;
        Assert.Equal(Math.Sqrt(a * (1 - a) / 639), r.TopAgreementStdErr, 15);
        Assert.True(double.IsNaN(KlResult.From([0.5], 1, new BitNetSharp.Training.PerplexityResult(1, 1, 1, 1), 0).TopAgreementStdErr)); // one position: no spread
    }

    /// <summary>One scored position has no spread: the table shows the figures alone ("0 ± NaN nats", "100.00 ± NaN %").</summary>
    [Fact]
    public void OnePositionPrintsNoNaNSpread()
    {
        using var dir = new TestGguf.TempDirectory();
        string data = dir.File("three.txt"), model = RepositoryFiles.Path("models/bitnet-tinystories.gguf");
        File.WriteAllText(data, "Once upon a");
        var output = new StringWriter();
        var error = new StringWriter();
        Assert.True(Program.Run(["eval", "-m", model, "--data", data, "--ctx", "2", "--kl-reference", model], output, error) == 0, error.ToString());
        Assert.DoesNotContain("NaN", output.ToString());
        Assert.Contains("100.00 %", output.ToString());
    }

    [Fact]
    public void ReferencesAgreeWhetherEngineOrFile()
    {
        var (weights, tokens, bos) = Load();
        using var _ = weights;
        using var pool = new WorkerPool(2);
        using var engine = new Transformer(weights, 32, pool);
        using var refEngine = new Transformer(weights, 32, pool);
        const int ctx = 64, stride = 32;

        var (self, selfKl) = QualityEvaluator.Evaluate(engine, tokens, ctx, stride, bosId: bos, reference: KlReference.FromEngine(refEngine, KvCacheType.F32), cancellation: TestContext.Current.CancellationToken);
        Assert.NotNull(selfKl);
        Assert.Equal(0, selfKl.MeanKl);
        Assert.Equal(1, selfKl.TopAgreement);
        Assert.Equal(0, selfKl.TopAgreementStdErr);
        Assert.Equal(new DeltaPStatistics(0, 0, 0, 0, 0, 0, 0, 0, 0), selfKl.DeltaP); // Δp = p_model − p_ref of the next token
        Assert.Equal(self.Perplexity, selfKl.Reference.Perplexity, 12);
        Assert.Equal(QualityEvaluator.Plan(tokens.Length, ctx, stride).Positions, selfKl.Positions);

        var (int8, int8Kl) = QualityEvaluator.Evaluate(engine, tokens, ctx, stride, bosId: bos, kvType: KvCacheType.Int8,
            reference: KlReference.FromEngine(refEngine, KvCacheType.F32), cancellation: TestContext.Current.CancellationToken);
        Assert.InRange(int8Kl!.MeanKl, 1e-7, 0.05);
        Assert.True(int8Kl.MaxKl >= int8Kl.P99Kl && int8Kl.P99Kl >= int8Kl.MedianKl);
        Assert.InRange(int8Kl.TopAgreement, 0.8, 1);
        var dp = int8Kl.DeltaP!;
        Assert.True(dp.Rms > 0 && dp.Rms >= Math.Abs(dp.Mean));
        Assert.True(dp.Min <= dp.P01 && dp.P01 <= dp.P05 && dp.P05 <= dp.Median && dp.Median <= dp.P95 && dp.P95 <= dp.P99 && dp.P99 <= dp.Max);
        Assert.InRange(dp.Min, -1, 1);
        Assert.InRange(dp.Max, -1, 1);
        Assert.NotEqual(int8.Perplexity, self.Perplexity);

        using var dir = new TestGguf.TempDirectory();
        foreach (int top in new[] { 0, 16 })
        {
            string path = dir.File($"ref-{top}.bnlg");
            var header = new LogitsFileHeader(weights.Config.VocabSize, ctx, stride, bos, top, LogitsFileHeader.HashTokens(tokens),
                QualityEvaluator.Plan(tokens.Length, ctx, stride).Positions, "test");
            using (var writer = new LogitsFileWriter(path, header))
            {
                var (saved, _) = QualityEvaluator.Evaluate(engine, tokens, ctx, stride, bosId: bos, save: writer, cancellation: TestContext.Current.CancellationToken);
                Assert.Equal(self.Perplexity, saved.Perplexity, 12);
                writer.Complete();
            }
            Assert.True(LogitsFile.IsLogitsFile(path));
            // The file's own model reads no divergence: its rows are compared rounded to float as they were stored (they
            // read 1e-8 nats, which calibrate reported for a search that changed nothing).
            using (var own = new LogitsFileReader(path))
            {
                var (_, ownKl) = QualityEvaluator.Evaluate(engine, tokens, ctx, stride, bosId: bos, reference: KlReference.FromFile(own), cancellation: TestContext.Current.CancellationToken);
                if (top == 0) Assert.Equal((0.0, 0.0, 1.0), (ownKl!.MeanKl, ownKl.MaxKl, ownKl.TopAgreement));
                else Assert.InRange(ownKl!.MaxKl, 0, 1e-12);
                Assert.Equal(0.0, ownKl.DeltaP!.Rms);
                Assert.Equal(0.0, ownKl.DeltaPerplexity); // read at the file's precision (−6.6e-9 from the double perplexity)
            }
            using var reader = new LogitsFileReader(path);
            var (_, fileKl) = QualityEvaluator.Evaluate(engine, tokens, ctx, stride, bosId: bos, kvType: KvCacheType.Int8, reference: KlReference.FromFile(reader), cancellation: TestContext.Current.CancellationToken);
            Assert.Equal(top, fileKl!.TopK);
            Assert.Equal(int8Kl.Reference.Perplexity, fileKl.Reference.Perplexity, 4); // ln p(target) stored as f32
            Assert.Equal(int8Kl.DeltaP!.Mean, fileKl.DeltaP!.Mean, 5); // from the stored ln p(target), whatever the top-k
            Assert.Equal(int8Kl.DeltaP.Rms, fileKl.DeltaP.Rms, 5);
            if (top == 0)
            {
                Assert.Equal(int8Kl.MeanKl, fileKl.MeanKl, 5);
                Assert.Equal(int8Kl.TopAgreement, fileKl.TopAgreement);
            }
            else Assert.InRange(fileKl.MeanKl, 0, int8Kl.MeanKl + 1e-5);
        }
    }

    /// <summary>
    /// No plan scores a target twice, odd windows included (ctx 11 with stride 5 scored 6 positions a window while
    /// windows advanced 5), and a stride of ctx/2 still scores every target after the first window's first half.
    /// </summary>
    [Theory]
    [InlineData(10, 3, 1)]
    [InlineData(100, 11, 5)]
    [InlineData(100, 11, 6)]
    [InlineData(100, 11, 11)]
    [InlineData(100, 8, 4)]
    [InlineData(100, 8, 3)]
    [InlineData(57, 9, 2)]
    public void APlanScoresEachTargetAtMostOnce(int tokenCount, int ctx, int stride)
    {
        // Text shorter than one window (ctx + 1 tokens) plans no window: it was 1 window, and far shorter text a negative count.
        Assert.Equal((0, 0L), (QualityEvaluator.Plan(ctx, ctx, stride).Windows, QualityEvaluator.Plan(ctx, ctx, stride).Positions));
        Assert.Equal(0, QualityEvaluator.Plan(1, ctx, stride).Windows);
        Assert.Equal(1, QualityEvaluator.Plan(ctx + 1, ctx, stride).Windows);
        var (windows, first, positions) = QualityEvaluator.Plan(tokenCount, ctx, stride);
        var targets = new List<int>();
        for (int w = 0; w < windows; w++)
            for (int pos = first; pos < ctx; pos++) targets.Add(w * stride + pos + 1);
        Assert.Equal(positions, targets.Count);
        Assert.Equal(targets.Count, targets.Distinct().Count());
        Assert.True(targets.Max() < tokenCount);
        Assert.True(first >= ctx / 2, "every scored token has at least ctx/2 tokens of context");
        if (stride <= ctx - ctx / 2) // windows overlap by at least half: the scored targets are contiguous
            Assert.Equal(Enumerable.Range(first + 1, targets.Count), targets);
    }

    /// <summary>
    /// A model with a NaN scale: the evaluation stops with an error saying where the logits went non-finite (it returned
    /// a NaN perplexity, and `eval --json` then failed inside the JSON writer); an infinite value is written as null.
    /// </summary>
    [Fact]
    public void NonFiniteLogitsStopTheEvaluationNamingThePosition()
    {
        var (weights, tokens, bos) = Load();
        using var _ = weights;
        using var engine = new Transformer(weights, 32);
        weights.Layers[1].Q.RowScales[2] = float.NaN;
        // The engine's non-finite-logits error, so `bitnet eval` exits 3 as generate does (it exited 1, a bad file's code).
        var e = Assert.Throws<BitNetSharp.Monitoring.NonFiniteLogitsException>(() => QualityEvaluator.Evaluate(engine, tokens, 32, 32, bosId: bos, cancellation: TestContext.Current.CancellationToken));
        Assert.Contains("not finite", e.Message);
        Assert.Contains("window 1 of", e.Message);

        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream))
        {
            w.WriteStartObject();
            w.WriteMeasured("perplexity", double.PositiveInfinity);
            w.WriteMeasured("bits_per_byte", 1.5);
            w.WriteEndObject();
        }
        Assert.Equal("""{"perplexity":null,"bits_per_byte":1.5}""", System.Text.Encoding.UTF8.GetString(stream.ToArray()));
    }

    /// <summary>Windows given by their starts score exactly like the plan they spell out, and a subset like those windows alone.</summary>
    [Fact]
    public void ExplicitWindowStartsMatchThePlan()
    {
        var (weights, tokens, bos) = Load();
        using var _ = weights;
        using var engine = new Transformer(weights, 32);
        const int ctx = 32;
        var (plan, _) = QualityEvaluator.Evaluate(engine, tokens, ctx, ctx, bosId: bos, cancellation: TestContext.Current.CancellationToken);
        var starts = Enumerable.Range(0, plan.Windows).Select(w => w * ctx).ToList();
        var (explicitStarts, _) = QualityEvaluator.Evaluate(engine, tokens, ctx, ctx, bosId: bos, windowStarts: starts, cancellation: TestContext.Current.CancellationToken);
        Assert.Equal(plan.NegativeLogLikelihood, explicitStarts.NegativeLogLikelihood);
        Assert.Equal(plan.ScoredTokens, explicitStarts.ScoredTokens);
        var (second, _) = QualityEvaluator.Evaluate(engine, tokens[ctx..], ctx, ctx, bosId: bos, cancellation: TestContext.Current.CancellationToken);
        var (skipFirst, _) = QualityEvaluator.Evaluate(engine, tokens, ctx, ctx, bosId: bos, windowStarts: starts.Skip(1).Take(second.Windows).ToList(), cancellation: TestContext.Current.CancellationToken);
        Assert.Equal(second.NegativeLogLikelihood, skipFirst.NegativeLogLikelihood);
    }

    /// <summary>
    /// A row damaged inside (no checksum guards the rows) is refused when it contradicts itself: its probabilities no
    /// longer sum to 1, the stored ln p(target) is not the row's entry, top tokens repeat or are out of order. One
    /// flipped bit read as KL 0.0024 (max 3.7 nats) against the model's own file, exit 0.
    /// </summary>
    [Fact]
    public void RowsThatContradictThemselvesAreRefused()
    {
        var (weights, tokens, bos) = Load();
        using var _ = weights;
        using var engine = new Transformer(weights, 32);
        using var dir = new TestGguf.TempDirectory();
        int vocab = weights.Config.VocabSize;
        byte[] Save(int top)
        {
            string path = dir.File($"ref{top}.bnlg");
            var header = new LogitsFileHeader(vocab, 64, 64, bos, top, LogitsFileHeader.HashTokens(tokens), QualityEvaluator.Plan(tokens.Length, 64, 64).Positions, "");
            using (var writer = new LogitsFileWriter(path, header))
            {
                QualityEvaluator.Evaluate(engine, tokens, 64, 64, bosId: bos, save: writer, cancellation: TestContext.Current.CancellationToken);
                writer.Complete();
            }
            return File.ReadAllBytes(path);
        }
        // Refused by the evaluation that reads it (a full row's mass is summed there, in the KL's own pass).
        void Refused(byte[] bytes, string message)
        {
            string damaged = dir.File("damaged.bnlg");
            File.WriteAllBytes(damaged, bytes);
            using var reader = new LogitsFileReader(damaged);
            var e = Assert.Throws<InvalidDataException>(() => QualityEvaluator.Evaluate(engine, tokens, 64, 64, bosId: bos, reference: KlReference.FromFile(reader), cancellation: TestContext.Current.CancellationToken));
            Assert.Contains(message, e.Message);
            Assert.Contains("position 0", e.Message);
        }
        const int Row = 48; // no notes: the first row follows the fixed header
        float F(byte[] b, int at) => BitConverter.ToSingle(b, at);
        void Set(byte[] b, int at, float v) => BitConverter.TryWriteBytes(b.AsSpan(at), v);

        var full = Save(0);
        int target = BitConverter.ToInt32(full, Row);
        using (var reader = new LogitsFileReader(dir.File("ref0.bnlg"))) // the intact file reads to the end
            for (long i = 0; i < reader.Header.Positions; i++) reader.Next();
        // A whole file whose header's top-k was damaged: said as a possibly damaged header, not only as truncation.
        void Opened(byte[] bytes, string message)
        {
            string damaged = dir.File("header.bnlg");
            File.WriteAllBytes(damaged, bytes);
            Assert.Contains(message, Assert.Throws<InvalidDataException>(() => new LogitsFileReader(damaged).Dispose()).Message);
        }
        var k = (byte[])full.Clone();
        BitConverter.TryWriteBytes(k.AsSpan(24), 8); // full rows read as top-8: the file is longer than that promises
        Opened(k, "more than the");
        Opened(k, "or its header is damaged");
        Opened(full[..^1], "It was truncated or not written to the end, or its header is damaged");
        var b = (byte[])full.Clone();
        int other = (target + 1) % vocab;
        Set(b, Row + 8 + 4 * other, -1e-38f); // an entry's exponent flipped: the row's mass near 2
        Refused(b, "sum to");
        b = (byte[])full.Clone();
        Set(b, Row + 4, F(b, Row + 4) - 0.5f); // the stored ln p(target) alone
        Refused(b, "stores ln p(target)");

        var topFile = Save(8);
        b = (byte[])topFile.Clone();
        BitConverter.TryWriteBytes(b.AsSpan(Row + 8 + 8), BitConverter.ToInt32(b, Row + 8)); // entry 1 names entry 0's token
        Refused(b, "twice");
        b = (byte[])topFile.Clone();
        Set(b, Row + 8 + 4, -9.7e9f); // the best entry's exponent: out of order, the mass short
        Refused(b, "out of order");
        b = (byte[])topFile.Clone();
        Set(b, Row + 8 + 8 * 8, -1e-6f); // the rest's mass read as all of it
        Refused(b, "sum to");
    }

    /// <summary>
    /// --save-logits is checked before the text and the models load (a missing folder was found after them, or the data
    /// file's error came first), and a --kl-reference that is a pipe or device is refused by name (a pipe lost its first
    /// bytes to the logits-file check and then read "not a BitNetSharp logits file").
    /// </summary>
    [Fact]
    public void OutputsAndPipesAreCheckedFirst()
    {
        using var dir = new TestGguf.TempDirectory();
        var (code, _, error) = Cli("eval", "-m", dir.File("no-model.gguf"), "--data", dir.File("no-data.txt"), "--save-logits", dir.File("no-folder/x.bnlg"));
        Assert.Equal(2, code);
        Assert.Contains("--save-logits", error);
        Assert.Contains("does not exist", error);
        Assert.DoesNotContain("no-data.txt", error);
        if (OperatingSystem.IsLinux())
        {
            (code, _, error) = Cli("eval", "-m", BundledModel, "--data", dir.File("no-data.txt"), "--kl-reference", "/dev/null");
            Assert.Equal(2, code);
            Assert.Contains("--kl-reference /dev/null is a pipe or device", error);
        }
    }

    /// <summary>A saved file used with other text, other settings or truncated is refused with a message naming the file.</summary>
    [Fact]
    public void MismatchedOrDamagedLogitsFilesAreRefused()
    {
        var (weights, tokens, bos) = Load();
        using var _ = weights;
        using var engine = new Transformer(weights, 32);
        using var dir = new TestGguf.TempDirectory();
        string path = dir.File("ref.bnlg");
        var header = new LogitsFileHeader(weights.Config.VocabSize, 64, 64, bos, 8, LogitsFileHeader.HashTokens(tokens), QualityEvaluator.Plan(tokens.Length, 64, 64).Positions, "");
        using (var writer = new LogitsFileWriter(path, header))
        {
            QualityEvaluator.Evaluate(engine, tokens, 64, 64, bosId: bos, save: writer, cancellation: TestContext.Current.CancellationToken);
            writer.Complete();
        }
        Assert.False(File.Exists(path + ".partial"));

        using (var reader = new LogitsFileReader(path))
        {
            var e = Assert.Throws<ArgumentException>(() => QualityEvaluator.Evaluate(engine, tokens[1..], 64, 64, bosId: bos, reference: KlReference.FromFile(reader), cancellation: TestContext.Current.CancellationToken));
            Assert.Contains("other text", e.Message);
            Assert.Contains(path, e.Message);
        }
        using (var reader = new LogitsFileReader(path))
        {
            var e = Assert.Throws<ArgumentException>(() => QualityEvaluator.Evaluate(engine, tokens, 32, 32, bosId: bos, reference: KlReference.FromFile(reader), cancellation: TestContext.Current.CancellationToken));
            Assert.Contains("--ctx 64 --stride 64", e.Message);
        }
        string cut = dir.File("cut.bnlg");
        File.WriteAllBytes(cut, File.ReadAllBytes(path)[..^10]);
        Assert.Contains("truncated", Assert.Throws<InvalidDataException>(() => new LogitsFileReader(cut)).Message);
        File.WriteAllBytes(cut, File.ReadAllBytes(path)[..47]); // its magic, cut inside the header: "not a logits file" before
        Assert.Contains("ends inside its header (47 of 48 bytes)", Assert.Throws<InvalidDataException>(() => new LogitsFileReader(cut)).Message);
        // A NaN log-probability (no checksum guards the rows) is refused: it dropped out of the KL as zero mass.
        string flipped = dir.File("flipped.bnlg");
        var bytes = File.ReadAllBytes(path);
        int rowBytes = 8 * 8 + 12;
        BitConverter.TryWriteBytes(bytes.AsSpan(bytes.Length - rowBytes + 12), float.NaN); // the last position's top entry
        File.WriteAllBytes(flipped, bytes);
        using (var reader = new LogitsFileReader(flipped))
        {
            var e = Assert.Throws<InvalidDataException>(() => { for (long i = 0; i < reader.Header.Positions; i++) reader.Next(); });
            Assert.Contains("a log-probability that is NaN or above 0", e.Message);
        }
        // +∞ or a positive log-probability likewise (+∞ read as a KL of ∞ ± NaN with exit 0).
        BitConverter.TryWriteBytes(bytes.AsSpan(bytes.Length - rowBytes + 12), float.PositiveInfinity);
        File.WriteAllBytes(flipped, bytes);
        using (var reader = new LogitsFileReader(flipped))
            Assert.Contains("above 0", Assert.Throws<InvalidDataException>(() => { for (long i = 0; i < reader.Header.Positions; i++) reader.Next(); }).Message);
        // A stride past the window in the header is a corrupt header (it blamed a --stride the user never gave, exit 2).
        bytes = File.ReadAllBytes(path);
        BitConverter.TryWriteBytes(bytes.AsSpan(16), 320);
        File.WriteAllBytes(flipped, bytes);
        Assert.Contains("header is corrupt", Assert.Throws<InvalidDataException>(() => new LogitsFileReader(flipped)).Message);
        string notOurs = dir.File("model.gguf");
        File.WriteAllText(notOurs, "GGUF not really");
        Assert.False(LogitsFile.IsLogitsFile(notOurs));
        Assert.Contains("not a BitNetSharp logits file", Assert.Throws<InvalidDataException>(() => new LogitsFileReader(notOurs)).Message);

        // A writer disposed before completing leaves nothing behind.
        string abandoned = dir.File("abandoned.bnlg");
        using (var writer = new LogitsFileWriter(abandoned, header)) { }
        Assert.False(File.Exists(abandoned));
        Assert.False(File.Exists(abandoned + ".partial"));
    }

    /// <summary>Runs the CLI in process: exit code, stdout, stderr.</summary>
    /// <summary>A text shorter than one window names the --data file (with or without --save-logits), as the other data errors do.</summary>
    [Fact]
    public void ATextShorterThanAWindowNamesItsFile()
    {
        using var dir = new TestGguf.TempDirectory();
        string data = dir.File("short.txt");
        File.WriteAllText(data, "Once upon a time.");
        foreach (string[] extra in new[] { Array.Empty<string>(), ["--save-logits", dir.File("out.bnlg")] })
        {
            var (code, _, error) = Cli(["eval", "-m", BundledModel, "--data", data, "--ctx", "64", .. extra]);
            Assert.Equal(2, code);
            Assert.StartsWith($"error: {data}: the text is ", error);
        }
    }

    /// <summary>A bad --kl-activation-bits names that option (the message blamed --activation-bits, which was not given).</summary>
    [Theory]
    [InlineData("7")]
    [InlineData("9:qkv=4")]
    public void BadKlActivationBitsNameTheirOption(string spec)
    {
        using var dir = new TestGguf.TempDirectory();
        string data = dir.File("text.txt");
        File.WriteAllText(data, string.Concat(Enumerable.Repeat(Story, 3)));
        var (code, _, error) = Cli("eval", "-m", BundledModel, "--data", data, "--ctx", "64", "--kl-activation-bits", spec);
        Assert.Equal(2, code);
        Assert.StartsWith("error: --kl-activation-bits", error);
        (code, _, error) = Cli("eval", "-m", BundledModel, "--data", data, "--ctx", "64", "--kl-reference", BundledModel, "--kl-activation-bits", spec);
        Assert.Equal(2, code);
        Assert.StartsWith("error: --kl-activation-bits", error);
    }

    internal static (int Code, string Output, string Error) Cli(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Program.Run(args, output, error);
        return (code, output.ToString(), error.ToString());
    }

    /// <summary>The CLI: a settings variant of the same model, a saved run as reference, and clear errors.</summary>
    [Fact]
    public void EvalCommandComparesWithAVariantOrASavedRun()
    {
        using var dir = new TestGguf.TempDirectory();
        string data = dir.File("story.txt");
        File.WriteAllText(data, string.Concat(Enumerable.Repeat(Story, 3)));
        string saved = dir.File("f32.bnlg");

        var (code, output, error) = Cli("eval", "-m", BundledModel, "--data", data, "--ctx", "64", "--kv-type", "fp8", "--kl-kv-type", "f32", "--json", "-t", "2");
        Assert.True(code == 0, error);
        var kl = JsonDocument.Parse(output).RootElement.GetProperty("kl");
        Assert.Equal("this model with KV f32, activation bits 8", kl.GetProperty("reference").GetString());
        Assert.InRange(kl.GetProperty("mean").GetDouble(), 1e-7, 0.1);
        double fp8Mean = kl.GetProperty("mean").GetDouble();
        Assert.True(kl.GetProperty("delta_p").GetProperty("rms").GetDouble() > 0);
        Assert.InRange(kl.GetProperty("top_token_agreement_stderr").GetDouble(), 0, 0.5);

        (code, _, error) = Cli("eval", "-m", BundledModel, "--data", data, "--ctx", "64", "--save-logits", saved, "--save-logits-top", "0", "--json");
        Assert.True(code == 0, error);
        (code, output, error) = Cli("eval", "-m", BundledModel, "--data", data, "--kv-type", "fp8", "--kl-reference", saved, "--json", "-t", "1");
        Assert.True(code == 0, error);
        var r = JsonDocument.Parse(output).RootElement;
        Assert.Equal(64, r.GetProperty("ctx").GetInt32()); // taken from the file
        Assert.Equal(fp8Mean, r.GetProperty("kl").GetProperty("mean").GetDouble(), 5); // 1 thread or 2: the same numbers

        // A target changed inside the file (its header's token hash still matching the text): a damaged file, exit 1,
        // said as such (it read "the file was saved from other text", which the hash had just ruled out).
        string edited = dir.File("edited.bnlg");
        var bytes = File.ReadAllBytes(saved);
        int notes = BitConverter.ToInt32(bytes, 44), first = 48 + notes;
        BitConverter.TryWriteBytes(bytes.AsSpan(first), (BitConverter.ToInt32(bytes, first) + 1) % 4096);
        File.WriteAllBytes(edited, bytes);
        (code, _, error) = Cli("eval", "-m", BundledModel, "--data", data, "--kl-reference", edited);
        Assert.Equal(1, code);
        Assert.Contains("the file is damaged", error);

        // Other windows than the file's: named by the file and its settings (a --ctx below the file's stride was
        // blamed on a --stride never given: "--stride 64 is longer than the window (32)").
        (code, _, error) = Cli("eval", "-m", BundledModel, "--data", data, "--kl-reference", saved, "--ctx", "32");
        Assert.Equal(2, code);
        Assert.Contains($"{saved} was saved with --ctx 64 --stride 64; this run asks for --ctx 32. ", error); // not "--stride 64": the file's
        Assert.DoesNotContain("--stride 64 is longer", error);

        (code, _, error) = Cli("eval", "-m", BundledModel, "--data", data, "--kl-reference", saved, "--kl-kv-type", "f16");
        Assert.Equal(2, code); // a usage error
        Assert.Contains("--kl-kv-type applies to a reference model", error);
        (code, _, error) = Cli("eval", "-m", BundledModel, "--data", data, "--ctx", "64", "--save-logits", dir.File("no/such/dir/x.bnlg"));
        Assert.NotEqual(0, code);
        Assert.Contains("x.bnlg", error);
        (code, _, error) = Cli("eval", "-m", BundledModel, "--data", data, "--kv-type", "q4");
        Assert.Equal(2, code);
        Assert.Contains("--kv-type 'q4'", error);
        (code, _, error) = Cli("eval", "-m", BundledModel, "--data", data, "--kl-kv-type", "q4");
        Assert.Equal(2, code);
        Assert.Contains("--kl-kv-type 'q4'", error);
        // The saved logits replaced the corpus (or the reference file being read) and the run said nothing.
        string before = File.ReadAllText(data);
        (code, _, error) = Cli("eval", "-m", BundledModel, "--data", data, "--ctx", "64", "--save-logits", data);
        Assert.Equal(2, code);
        Assert.Contains("--save-logits", error);
        Assert.Contains("--data", error);
        Assert.Equal(before, File.ReadAllText(data));
        long savedLength = new FileInfo(saved).Length;
        (code, _, error) = Cli("eval", "-m", BundledModel, "--data", data, "--kl-reference", saved, "--save-logits", saved);
        Assert.Equal(2, code);
        Assert.Contains("--kl-reference", error);
        Assert.Equal(savedLength, new FileInfo(saved).Length);
        // Negative sizes were taken as "default" silently (and then failed with a window length the user never gave).
        foreach (var (option, value, message) in new[]
        {
            ("--ctx", "-512", "--ctx (-c) must be a window length"), ("--stride", "-1", "--stride must be a number of tokens"), ("-t", "-3", "--threads (-t) must be ≥ 0"),
            // A one-token window reached the library and exited 1 with a message naming no option.
            ("--ctx", "1", "--ctx (-c) must be a window length of at least 2"),
            // Ignored without --save-logits, even when out of range.
            ("--save-logits-top", "-5", "--save-logits-top only applies with --save-logits"),
        })
        {
            (code, _, error) = Cli("eval", "-m", BundledModel, "--data", data, option, value);
            Assert.Equal(2, code);
            Assert.Contains(message, error);
        }
    }
}
