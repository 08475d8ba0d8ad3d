using BitNetSharp.Formats.Gguf;
using BitNetSharp.Model;
using BitNetSharp.Tests.Formats;
using BitNetSharp.Threading;
using BitNetSharp.Training;

namespace BitNetSharp.Tests.Training;

public class TrainingRunTests
{
    internal const string Story = "Once upon a time there was a little cat. The cat liked to play in the sun. " +
        "One day the cat saw a big dog. The dog said, \"Hello, cat!\" The cat was happy and they played all day.\n" +
        "Tom had a red ball. He threw the ball to his friend Sue, and Sue threw it back. They laughed and laughed.\n";

    internal static (TrainingOptions Options, TrainedTokenizer Tokenizer, int[] Train, int[] Validation) Setup(int steps, bool fullPrecision = false, string? activationBits = null)
    {
        var corpus = TrainingCorpus.Split([string.Concat(Enumerable.Repeat(Story, 8))], 0.2);
        var tokenizer = BpeTrainer.Train(corpus.TrainDocuments, 300, [BpeTrainer.EndOfText]);
        var shape = new TrainingShape(tokenizer.Count, Dim: 64, Layers: 2, Heads: 4, KvHeads: 2, FeedForward: 128, ContextLength: 16);
        var options = new TrainingOptions { Shape = shape, Batch = 2, TotalSteps = steps, LearningRate = 5e-3f, WarmupSteps = 2, FullPrecision = fullPrecision, Seed = 11,
            ActivationBits = activationBits is null ? null : ActivationBits.Parse(activationBits, shape.Layers) };
        return (options, tokenizer, corpus.EncodeTrain(tokenizer), corpus.EncodeValidation(tokenizer));
    }

    /// <summary>Six steps straight equal three steps, a checkpoint, a fresh process state resumed from it, and three more: weights, Adam moments and losses bit for bit.</summary>
    [Theory]
    [InlineData(null)]
    [InlineData("qkv=4,gate_up=4")]
    public void ResumingFromACheckpointContinuesBitIdentically(string? activationBits)
    {
        var (options, tokenizer, train, validation) = Setup(6, activationBits: activationBits);
        using var pool = new WorkerPool(2);
        var straight = TrainingRun.Start(options, tokenizer, train, validation, pool);
        while (!straight.Done) straight.StepOnce();

        using var dir = new TestGguf.TempDirectory();
        var path = dir.File("run.ckpt");
        var first = TrainingRun.Start(options, tokenizer, train, validation, pool);
        for (int i = 0; i < 3; i++) first.StepOnce();
        first.Validate();
        first.SaveCheckpoint(path);

        using var otherPool = new WorkerPool(1); // a different thread count must not matter either
        var resumed = TrainingRun.Resume(path, otherPool, options.Shape, options.ActivationBits ?? ActivationBits.Uniform(options.Shape.Layers));
        Assert.Equal(3, resumed.Step);
        Assert.Equal(options.ActivationBits, resumed.Options.ActivationBits);
        Assert.Equal(options.ActivationBits ?? ActivationBits.Uniform(options.Shape.Layers), resumed.Model.ActivationBits);
        while (!resumed.Done) resumed.StepOnce();

        Assert.Equal(straight.Model.Parameters, resumed.Model.Parameters);
        Assert.Equal(straight.Optimizer.M, resumed.Optimizer.M);
        Assert.Equal(straight.Optimizer.V, resumed.Optimizer.V);
        Assert.Equal(straight.TrainLosses, resumed.TrainLosses);
        Assert.Single(resumed.ValidationLosses);
        Assert.Empty(Directory.GetFiles(dir.Path, "*.tmp"));
    }

    /// <summary>
    /// A damaged checkpoint is an InvalidDataException naming the file: a merge of tokens not in the vocabulary threw
    /// KeyNotFoundException (the command printed a stack trace), and a token id outside the vocabulary in the stored
    /// streams only failed at the first forward, naming no file.
    /// </summary>
    [Fact]
    public void ADamagedCheckpointIsAnErrorNamingIt()
    {
        var (options, tokenizer, train, validation) = Setup(2);
        using var pool = new WorkerPool(1);
        using var dir = new TestGguf.TempDirectory();
        string path = dir.File("run.ckpt");
        TrainingRun.Start(options, tokenizer, train, validation, pool).SaveCheckpoint(path);
        var good = File.ReadAllBytes(path);

        // A merge whose right half becomes a character no token is made of with its left half.
        string merge = tokenizer.Merges.First(m => m.Length == 3 && m[1] == ' ' && m[0] < 128 && m[2] < 128);
        int at = good.AsSpan().IndexOf(System.Text.Encoding.UTF8.GetBytes(merge));
        Assert.True(at > 0);
        var bad = (byte[])good.Clone();
        bad[at + 2] = (byte)'\u007f';
        File.WriteAllBytes(path, bad);
        var e = Assert.Throws<InvalidDataException>(() => TrainingRun.Resume(path, pool));
        Assert.StartsWith(path, e.Message);

        // A stored training token past the vocabulary: the int32 just after the streams' length prefix.
        bad = (byte[])good.Clone();
        var ids = new byte[8];
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(ids, train[0]);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(ids.AsSpan(4), train[1]);
        int stream = bad.AsSpan().IndexOf(ids);
        Assert.True(stream > 0);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(bad.AsSpan(stream), 1_000_000);
        File.WriteAllBytes(path, bad);
        e = Assert.Throws<InvalidDataException>(() => TrainingRun.Resume(path, pool));
        Assert.StartsWith(path, e.Message);
        Assert.Contains("1000000", e.Message);

        // A one-byte token turned into a byte that is not UTF-8: the default decoder read it as U+FFFD without a word,
        // and the exported model lost that byte's token.
        bad = (byte[])good.Clone();
        int brace = bad.AsSpan().IndexOf(new byte[] { 1, (byte)'}' }); // the string's length prefix 1, then '}'
        Assert.True(brace > 0);
        bad[brace + 1] = 0xC3;
        File.WriteAllBytes(path, bad);
        e = Assert.Throws<InvalidDataException>(() => TrainingRun.Resume(path, pool));
        Assert.StartsWith(path, e.Message);
        Assert.Contains("not valid UTF-8", e.Message);

        // NaN weights, an infinite first moment, a negative second moment: damage no run saves, refused by name (resumed,
        // they read as a divergence whose advice pointed back at this very file). Each is found in the file by a marker
        // value saved in its place.
        var run = TrainingRun.Start(options, tokenizer, train, validation, pool);
        foreach (var (what, values, value) in new[] { ("weights", run.Model.Parameters, float.NaN), ("Adam first moments", run.Optimizer.M, float.PositiveInfinity), ("Adam second moments", run.Optimizer.V, -1f) })
        {
            float saved = values[7];
            values[7] = 1234.5678f;
            run.SaveCheckpoint(path);
            values[7] = saved;
            var marked = File.ReadAllBytes(path);
            int offset = marked.AsSpan().IndexOf(BitConverter.GetBytes(1234.5678f));
            Assert.True(offset > 0);
            BitConverter.GetBytes(value).CopyTo(marked, offset);
            File.WriteAllBytes(path, marked);
            e = Assert.Throws<InvalidDataException>(() => TrainingRun.Resume(path, pool));
            Assert.StartsWith(path, e.Message);
            Assert.Contains($"the checkpoint's {what} are damaged", e.Message);
        }
    }


    /// <summary>
    /// The run's settings after the shape (batch at byte 48, then steps, learning rate, warm-up, weight decay, clip norm,
    /// the full-precision flag, the seed and the validation windows) are checked as read: a batch of 0 or -1 was an
    /// ArgumentOutOfRangeException without the file, 2^20 advised "lower the context, batch…", a NaN learning rate
    /// trained on. Every damaged value here resumes or is an InvalidDataException naming the file.
    /// </summary>
    [Fact]
    public void DamagedSettingsInACheckpointAreAnErrorNamingIt()
    {
        var (options, tokenizer, train, validation) = Setup(2);
        using var pool = new WorkerPool(1);
        using var dir = new TestGguf.TempDirectory();
        string path = dir.File("run.ckpt");
        TrainingRun.Start(options, tokenizer, train, validation, pool).SaveCheckpoint(path);
        var good = File.ReadAllBytes(path);
        var bits = options.ActivationBits ?? ActivationBits.Uniform(options.Shape.Layers);
        int refused = 0;
        foreach (int offset in new[] { 48, 52, 56, 60, 64, 68, 81 })
            foreach (uint value in new uint[] { 0, uint.MaxValue, 1u << 20, 0x7FC00000u, 0xFF800000u })
            {
                var bad = (byte[])good.Clone();
                System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(bad.AsSpan(offset), value);
                File.WriteAllBytes(path, bad);
                try
                {
                    var run = TrainingRun.Resume(path, pool, options.Shape, bits);
                    Assert.True(run.Options.Batch >= 1 && run.Options.TotalSteps >= 1 && float.IsFinite(run.Options.LearningRate) && run.Options.LearningRate > 0
                        && run.Options.WarmupSteps >= 0 && float.IsFinite(run.Options.WeightDecay) && run.Options.WeightDecay >= 0
                        && float.IsFinite(run.Options.ClipNorm) && run.Options.ClipNorm >= 0 && run.Options.MaxValidationWindows >= 0,
                        $"byte {offset} = 0x{value:X8} resumed with {run.Options}");
                }
                catch (InvalidDataException e)
                {
                    Assert.StartsWith(path, e.Message);
                    refused++;
                }
            }
        Assert.True(refused > 20, $"{refused} refused");
    }

    /// <summary>
    /// A NaN outside the projections (here the output norm) is refused before the update: one step went through AdamW
    /// (a NaN gradient norm is not above the clip norm) into every weight and moment, and a full-precision run, with no
    /// other check, trained on NaN until its next checkpoint. The weights, moments and step stay as they were.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void ANonFiniteLossStopsTheRunBeforeTheUpdate(bool fullPrecision)
    {
        var (options, tokenizer, train, validation) = Setup(6, fullPrecision);
        using var pool = new WorkerPool(2);
        var run = TrainingRun.Start(options, tokenizer, train, validation, pool);
        run.StepOnce();
        run.Model.Parameters[run.Model.Layout.OutputNorm] = float.NaN;
        var before = (float[])run.Model.Parameters.Clone();
        var m = (float[])run.Optimizer.M.Clone();
        Assert.Throws<TrainingDivergedException>(() => run.StepOnce());
        Assert.Equal(1, run.Step);
        Assert.Equal(before, run.Model.Parameters);
        Assert.Equal(m, run.Optimizer.M);
    }

    /// <summary>
    /// A NaN that reaches the attention scores (here a layer's input norm) is a non-finite loss like any other: the
    /// training attention's softmax threw "Softmax input contains NaN" (an ArgumentException, which the CLI printed
    /// as is: `calibrate --tune` at a moderate --lr ended so, naming no flag), before the loss check could say what to do.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void ANonFiniteAttentionScoreIsADivergenceNotACrash(bool fullPrecision)
    {
        var (options, tokenizer, train, validation) = Setup(6, fullPrecision);
        using var pool = new WorkerPool(2);
        var run = TrainingRun.Start(options, tokenizer, train, validation, pool);
        run.StepOnce();
        run.Model.Parameters[run.Model.Layout.Layers[0].AttnNorm] = float.NaN;
        var before = (float[])run.Model.Parameters.Clone();
        var e = Assert.Throws<TrainingDivergedException>(() => run.StepOnce());
        Assert.Contains("Lower --lr", e.Message);
        Assert.Equal(1, run.Step);
        Assert.Equal(before, run.Model.Parameters);
        Assert.True(float.IsNaN(run.Validate()));
    }

    /// <summary>
    /// Validation scores windows spread over the whole held-out stream: it scored the first windows only, so with
    /// more held-out text than the window budget, the second half (the other files' held-out tails) never counted.
    /// </summary>
    [Fact]
    public void ValidationCoversTheWholeHeldOutStream()
    {
        var (options, tokenizer, train, _) = Setup(1);
        options = options with { MaxValidationWindows = 2 };
        int T = options.Shape.ContextLength;
        int[] Stream(bool changeSecondHalf) =>
            [.. Enumerable.Repeat(5, 2 * T + 1), .. Enumerable.Range(0, 2 * T + 1).Select(i => changeSecondHalf ? 7 : 9 + i % 50)];
        using var pool = new WorkerPool(1);
        float a = TrainingRun.Start(options, tokenizer, train, Stream(false), pool).Validate();
        float b = TrainingRun.Start(options, tokenizer, train, Stream(true), pool).Validate();
        Assert.NotEqual(a, b);
    }

    /// <summary>A warm-up as long as the run is capped at half of it, so the rate still decays to its floor at the end
    /// (the whole run was warm-up and the weights came from a step at the peak rate).</summary>
    [Fact]
    public void AWarmupAsLongAsTheRunStillEndsAtTheFloor()
    {
        var options = new TrainingOptions { Shape = new TrainingShape(300, 64, 2, 4, 2, 128, 16), Batch = 2, TotalSteps = 4, WarmupSteps = 50, LearningRate = 2e-3f };
        Assert.Equal(2, options.EffectiveWarmupSteps);
        Assert.Equal(2e-4f, options.Schedule.At(4), 6);
        Assert.Equal(2e-3f, options.Schedule.At(2), 6);
        Assert.Equal(10, (options with { TotalSteps = 1000, WarmupSteps = 10 }).EffectiveWarmupSteps);
        Assert.Equal(2e-3f, (options with { TotalSteps = 1 }).Schedule.At(1), 6); // a one-step run: that step at the peak
    }

    [Fact]
    public void ResumingWithAnotherShapeIsRefused()
    {
        var (options, tokenizer, train, validation) = Setup(2);
        using var pool = new WorkerPool(2);
        using var dir = new TestGguf.TempDirectory();
        var path = dir.File("run.ckpt");
        TrainingRun.Start(options, tokenizer, train, validation, pool).SaveCheckpoint(path);
        var e = Assert.Throws<CheckpointMismatchException>(() => TrainingRun.Resume(path, pool, options.Shape with { Layers = 3 }));
        Assert.Contains("layers 3", e.Message);
        Assert.Contains("layers 2", e.Message);
        // The RoPE base is part of the shape: the refusal showed two identical descriptions.
        e = Assert.Throws<CheckpointMismatchException>(() => TrainingRun.Resume(path, pool, options.Shape with { RopeTheta = 500000f }));
        Assert.Contains("rope theta 500000", e.Message);
        Assert.Single(System.Text.RegularExpressions.Regex.Matches(e.Message, "rope theta"));
    }

    /// <summary>A version-1 checkpoint (before activation bit widths) resumes as 8 bits everywhere.</summary>
    [Fact]
    public void VersionOneCheckpointsResumeAtEightBits()
    {
        var (options, tokenizer, train, validation) = Setup(2);
        using var pool = new WorkerPool(2);
        using var dir = new TestGguf.TempDirectory();
        var path = dir.File("run.ckpt");
        var run = TrainingRun.Start(options, tokenizer, train, validation, pool);
        run.StepOnce();
        run.SaveCheckpoint(path);
        // Version 5 = version 1 + (int32 count, widths) after the 85-byte header of options + (int32 best step = −1,
        // float32 best loss), (bool: no data fingerprint, a library run's) and the 8-byte checksum before the 8-byte end
        // marker when no validation ran.
        var v4 = File.ReadAllBytes(path);
        const int header = 85;
        int count = BitConverter.ToInt32(v4, header);
        Assert.Equal(options.Shape.Layers * ActivationBits.Inputs, count);
        Assert.Equal(-1, BitConverter.ToInt32(v4, v4.Length - 25));
        Assert.Equal(0, v4[^17]);
        Assert.Equal(System.IO.Hashing.XxHash3.HashToUInt64(v4.AsSpan(0, v4.Length - 16)), BitConverter.ToUInt64(v4, v4.Length - 16));
        var v1 = v4[..header].Concat(v4[(header + 4 + count)..^25]).Concat(v4[^8..]).ToArray();
        BitConverter.GetBytes(1).CopyTo(v1, 8);
        File.WriteAllBytes(path, v1);
        var resumed = TrainingRun.Resume(path, pool, options.Shape, ActivationBits.Uniform(options.Shape.Layers));
        Assert.Null(resumed.Options.ActivationBits);
        Assert.True(resumed.Model.ActivationBits.AllEight);
        Assert.Equal(run.Model.Parameters, resumed.Model.Parameters);

        // Version 3 (no fingerprint byte) resumes with no fingerprint; version 4 (no checksum) resumes; version 5 keeps
        // the fingerprint the run was given.
        var four = v4[..^16].Concat(v4[^8..]).ToArray();
        BitConverter.GetBytes(4).CopyTo(four, 8);
        File.WriteAllBytes(path, four);
        Assert.Equal(run.Model.Parameters, TrainingRun.Resume(path, pool).Model.Parameters);
        var v3 = v4[..^17].Concat(v4[^8..]).ToArray();
        BitConverter.GetBytes(3).CopyTo(v3, 8);
        File.WriteAllBytes(path, v3);
        Assert.Null(TrainingRun.Resume(path, pool).DataFingerprint);
        run.DataFingerprint = ((UInt128)0x0123456789ABCDEF << 64) | 0xFEDCBA9876543210;
        run.SaveCheckpoint(path);
        Assert.Equal(run.DataFingerprint, TrainingRun.Resume(path, pool).DataFingerprint);
    }

    /// <summary>
    /// Damage that stays finite is caught: a weight of 1e30 in a version-4 checkpoint fails its checksum (it resumed,
    /// trained at loss 2e28 and overwrote the checkpoint); in an older one without a checksum, a step outside the run or
    /// its loss history and a best loss that is not a loss are refused by name.
    /// </summary>
    [Fact]
    public void FiniteDamageInACheckpointIsRefused()
    {
        var (options, tokenizer, train, validation) = Setup(4);
        using var pool = new WorkerPool(2);
        using var dir = new TestGguf.TempDirectory();
        var path = dir.File("run.ckpt");
        var run = TrainingRun.Start(options, tokenizer, train, validation, pool);
        run.StepOnce();
        run.StepOnce();
        run.SaveCheckpoint(path);
        var good = File.ReadAllBytes(path);
        // The first latent weight: the float after the parameter count that equals the model's size, near the end.
        int n = run.Model.Parameters.Length;
        int firstWeights = -1;
        for (int at = 0; at + 4 <= good.Length; at++)
            if (BitConverter.ToInt32(good, at) == n && BitConverter.ToSingle(good, at + 4) == run.Model.Parameters[0]) { firstWeights = at + 4; break; }
        Assert.True(firstWeights > 0, "the weights' place in the checkpoint");
        var damaged = (byte[])good.Clone();
        BitConverter.GetBytes(1e30f).CopyTo(damaged, firstWeights);
        File.WriteAllBytes(path, damaged);
        var e = Assert.Throws<InvalidDataException>(() => TrainingRun.Resume(path, pool));
        Assert.Contains("checksum does not match its contents", e.Message);

        // Version 3 (no fingerprint flag, no checksum) with its step set to -1, then to one past the run.
        var v3 = good[..^17].Concat(good[^8..]).ToArray();
        BitConverter.GetBytes(3).CopyTo(v3, 8);
        foreach (int bad in new[] { -1, options.TotalSteps + 1 })
        {
            var copy = (byte[])v3.Clone();
            int at = FindStep(copy, 2, firstWeights);
            BitConverter.GetBytes(bad).CopyTo(copy, at);
            File.WriteAllBytes(path, copy);
            e = Assert.Throws<InvalidDataException>(() => TrainingRun.Resume(path, pool));
            Assert.Contains($"the checkpoint's step ({bad}) does not fit its run", e.Message);
        }
        File.WriteAllBytes(path, v3);
        Assert.Equal(2, TrainingRun.Resume(path, pool).Step);

        // The step is the int32 before the RNG state and the loss history (count 2, entries (1, loss), (2, loss)).
        static int FindStep(byte[] bytes, int step, int before)
        {
            for (int at = before - 4; at >= 0; at--)
                if (BitConverter.ToInt32(bytes, at) == step && BitConverter.ToInt32(bytes, at + 12) == 2 && BitConverter.ToInt32(bytes, at + 16) == 1 && BitConverter.ToInt32(bytes, at + 24) == 2)
                    return at;
            throw new InvalidOperationException("no step field found");
        }
    }

    /// <summary>
    /// The best validation checkpoint is kept: after a validation and then a worse one, exporting with best gives the
    /// file the first moment's weights give, and the snapshot survives a checkpoint and resume.
    /// </summary>
    [Fact]
    public void TheBestValidationWeightsAreKeptAndExported()
    {
        var (options, tokenizer, train, validation) = Setup(4);
        using var pool = new WorkerPool(2);
        using var dir = new TestGguf.TempDirectory();
        var run = TrainingRun.Start(options, tokenizer, train, validation, pool);
        for (int i = 0; i < 3; i++) run.StepOnce();
        float good = run.Validate();
        run.Export(dir.File("at-best.gguf"), name: "m");
        // Wreck the weights: every latent weight ×50 saturates the model and its validation loss rises.
        foreach (ref float w in run.Model.Parameters.AsSpan()) w *= 50;
        float bad = run.Validate();
        Assert.True(bad > good, $"validation {bad} after wrecking vs {good}");
        Assert.Equal((3, good), (run.BestStep, run.BestValidationLoss));

        run.Export(dir.File("best.gguf"), name: "m", best: true);
        run.Export(dir.File("last.gguf"), name: "m", best: false);
        Assert.Equal(File.ReadAllBytes(dir.File("at-best.gguf")), File.ReadAllBytes(dir.File("best.gguf")));
        Assert.NotEqual(File.ReadAllBytes(dir.File("at-best.gguf")), File.ReadAllBytes(dir.File("last.gguf")));

        run.SaveCheckpoint(dir.File("run.ckpt"));
        var resumed = TrainingRun.Resume(dir.File("run.ckpt"), pool, options.Shape);
        Assert.Equal((3, good), (resumed.BestStep, resumed.BestValidationLoss));
        resumed.Export(dir.File("resumed-best.gguf"), name: "m", best: true);
        Assert.Equal(File.ReadAllBytes(dir.File("at-best.gguf")), File.ReadAllBytes(dir.File("resumed-best.gguf")));
    }

    [Fact]
    public void ResumingWithOtherActivationBitsIsRefused()
    {
        var (options, tokenizer, train, validation) = Setup(2, activationBits: "qkv=4,gate_up=4");
        using var pool = new WorkerPool(2);
        using var dir = new TestGguf.TempDirectory();
        var path = dir.File("run.ckpt");
        TrainingRun.Start(options, tokenizer, train, validation, pool).SaveCheckpoint(path);
        var e = Assert.Throws<CheckpointMismatchException>(() => TrainingRun.Resume(path, pool, options.Shape, ActivationBits.Uniform(2)));
        Assert.Contains("the checkpoint trains with --activation-bits qkv=4,gate_up=4; the command line asks for 8", e.Message);
        Assert.Equal(options.ActivationBits, TrainingRun.Resume(path, pool, options.Shape, options.ActivationBits).Options.ActivationBits);
    }

    [Fact]
    public void StabilityIndexIsTheShareOfChangedCodesPerLayer()
    {
        var (options, tokenizer, train, validation) = Setup(4);
        using var pool = new WorkerPool(2);
        var run = TrainingRun.Start(options, tokenizer, train, validation, pool);
        Assert.All(run.StabilityIndex(), s => Assert.Equal(0, s));
        run.StepOnce();
        run.StepOnce();
        var index = run.StabilityIndex();
        Assert.Equal(2, index.Length);
        Assert.All(index, s => Assert.InRange(s, 1e-4, 0.9));
        Assert.All(run.StabilityIndex(), s => Assert.Equal(0, s));
    }

    /// <summary>
    /// The evaluator over the engine equals a direct computation: the trainer's own forward on the same windows gives
    /// the same NLL for the scored positions (within the engine-vs-trainer tolerance), and bits per byte follow.
    /// </summary>
    [Fact]
    public void PerplexityEvaluatorScoresTheSecondHalfOfEachWindow()
    {
        var (options, tokenizer, train, _) = Setup(3);
        options = options with { Shape = options.Shape with { Dim = 128, FeedForward = 256 } };
        using var pool = new WorkerPool(2);
        var run = TrainingRun.Start(options, tokenizer, train, [], pool);
        while (!run.Done) run.StepOnce();
        using var weights = ModelWeights.FromGguf(GgufFile.Parse(ModelExporter.Build(options.Shape, run.Model.Parameters, tokenizer, "t").ToArray(), "t.gguf"), ownsFile: true);
        using var engine = new Transformer(weights, 8, pool);
        var tokens = train.AsSpan(0, 16 * 3 + 1).ToArray();
        var result = PerplexityEvaluator.Evaluate(engine, tokens, 16, tokenByteCount: id => System.Text.Encoding.UTF8.GetByteCount(tokenizer.Decode([id])));
        Assert.Equal(3, result.Windows);
        Assert.Equal(3 * 8, result.ScoredTokens);

        double expected = 0;
        long bytes = 0;
        for (int w = 0; w < 3; w++)
        {
            run.Model.Forward(tokens.AsSpan(w * 16, 16), tokens.AsSpan(w * 16 + 1, 16), 1, 16);
            for (int t = 8; t < 16; t++)
            {
                expected += run.Model.TokenLosses[t];
                bytes += System.Text.Encoding.UTF8.GetByteCount(tokenizer.Decode([tokens[w * 16 + t + 1]]));
            }
        }
        Assert.Equal(expected, result.NegativeLogLikelihood, 1e-3);
        Assert.Equal(bytes, result.ScoredBytes);
        Assert.Equal(expected / Math.Log(2) / bytes, result.BitsPerByte, 1e-4);

        var half = PerplexityEvaluator.Evaluate(engine, tokens, 16, stride: 8);
        Assert.Equal(5, half.Windows);
        Assert.Equal(5 * 8, half.ScoredTokens); // every token after the first 8, once
    }

    [Fact]
    public void CorpusSplitHoldsOutTheTailAtALineStartAndRejectsBadFiles()
    {
        var corpus = TrainingCorpus.Split(["line one\nline two\nline three\nline four\n"], 0.3);
        Assert.Equal("line one\nline two\nline three\n", corpus.TrainDocuments.Single());
        Assert.Equal("line four\n", corpus.ValidationText);

        // Several files: each gives up its own tail, so every source is in validation in proportion to its size.
        var two = TrainingCorpus.Split(["a1\na2\na3\na4\n", "b1 long line\nb2 long line\nb3 long line\nb4 long line\n"], 0.25);
        Assert.Equal(["a1\na2\na3\n", "b1 long line\nb2 long line\nb3 long line\n"], two.TrainDocuments);
        Assert.Equal(["a4\n", "b4 long line\n"], two.ValidationDocuments);
        Assert.Equal("a4\nb4 long line\n", two.ValidationText);

        using var dir = new TestGguf.TempDirectory();
        var empty = dir.File("empty.txt");
        File.WriteAllBytes(empty, []);
        Assert.Contains("empty", Assert.Throws<InvalidDataException>(() => TrainingCorpus.Load([empty], cancellation: TestContext.Current.CancellationToken)).Message);
        var binary = dir.File("bad.txt");
        File.WriteAllBytes(binary, [0x61, 0x62, 0xC3, 0x28, 0x63]);
        var e = Assert.Throws<InvalidDataException>(() => TrainingCorpus.Load([binary], cancellation: TestContext.Current.CancellationToken));
        Assert.Contains("not valid UTF-8", e.Message);
        Assert.Contains("offset", e.Message);
    }
}
