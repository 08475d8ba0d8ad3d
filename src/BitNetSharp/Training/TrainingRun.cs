using BitNetSharp.Formats;
using BitNetSharp.Model;
using BitNetSharp.Quantization;
using BitNetSharp.Threading;

namespace BitNetSharp.Training;

/// <summary>The hyper-parameters of a run (stored in its checkpoints; a resumed run keeps them).</summary>
public sealed record TrainingOptions
{
    public required TrainingShape Shape { get; init; }
    public required int Batch { get; init; }
    public required int TotalSteps { get; init; }
    public float LearningRate { get; init; } = 2e-3f;
    public int WarmupSteps { get; init; } = 50;
    public float WeightDecay { get; init; } = 0.1f;
    public float ClipNorm { get; init; } = 1f;
    public bool FullPrecision { get; init; }
    public ulong Seed { get; init; } = 1;

    /// <summary>
    /// The activation bit width of every BitLinear input in the quantized forward (null: 8 everywhere, the trainer as
    /// it always was); stored in the checkpoint and in the exported GGUF (<see cref="BitNetSharp.Model.ActivationBits.GgufKey"/>).
    /// </summary>
    public ActivationBits? ActivationBits { get; init; }

    /// <summary>At most this many held-out windows are scored by <see cref="TrainingRun.Validate"/>.</summary>
    public int MaxValidationWindows { get; init; } = 64;

    /// <summary>
    /// Warm-up, then cosine decay to the floor at <see cref="TotalSteps"/>. The warm-up takes at most half the run: one
    /// at least as long as the run (the default 50 steps and a 40-step trial) never decayed, and the weights were
    /// exported from a step at the peak rate.
    /// </summary>
    public LearningRateSchedule Schedule => new(LearningRate, EffectiveWarmupSteps, TotalSteps);

    /// <summary><see cref="WarmupSteps"/>, capped at half of <see cref="TotalSteps"/> (at least 1).</summary>
    public int EffectiveWarmupSteps => Math.Min(WarmupSteps, Math.Max(1, TotalSteps / 2)); // a one-step run: that step at the peak
}

/// <summary>
/// One training run: the model, AdamW, the token streams and the sampling RNG, advanced one optimizer step at a time.
/// Each step draws <see cref="TrainingOptions.Batch"/> windows of ctx+1 tokens at uniformly random offsets of the
/// training stream (the RNG state is the whole data position). Everything that influences the next step is in the
/// checkpoint, and every reduction is in a fixed order, so a resumed run continues bit-identically.
/// </summary>
public sealed class TrainingRun
{
    private readonly int[] _inputs, _targets;
    private readonly LearningRateSchedule _schedule;
    private SplitMix64 _rng;
    private sbyte[]? _lastCodes;

    private TrainingRun(TrainingOptions options, TrainedTokenizer tokenizer, int[] train, int[] validation, WorkerPool pool)
    {
        options.Shape.Validate();
        int T = options.Shape.ContextLength;
        if (train.Length < T + 1)
            throw new ArgumentException($"The training text is {train.Length} tokens; a context of {T} needs at least {T + 1}. Use more text or a smaller --ctx.");
        if (tokenizer.Count != options.Shape.VocabSize)
            throw new ArgumentException($"The tokenizer has {tokenizer.Count} tokens; the model's vocabulary is {options.Shape.VocabSize}.");
        Options = options;
        Tokenizer = tokenizer;
        Train = train;
        Validation = validation;
        Model = new TrainingModel(options.Shape, options.Batch, !options.FullPrecision, pool);
        if (options.ActivationBits is { } bits) Model.ActivationBits = bits;
        Optimizer = new AdamW(Model.Parameters, Model.Gradients, Model.Layout, pool) { WeightDecay = options.WeightDecay, ClipNorm = options.ClipNorm };
        _inputs = new int[options.Batch * T];
        _targets = new int[options.Batch * T];
        _rng = new SplitMix64(options.Seed ^ 0xD1B54A32D192ED03UL);
        _schedule = options.Schedule;
    }

    public TrainingOptions Options { get; }

    /// <summary>A resumed run's options as its checkpoint held them, before --tokens, --lr, --warmup or --weight-decay
    /// replaced any; null for a new run.</summary>
    public TrainingOptions? CheckpointOptions { get; private set; }
    public TrainedTokenizer Tokenizer { get; }
    public int[] Train { get; }
    public int[] Validation { get; }
    public TrainingModel Model { get; }
    public AdamW Optimizer { get; }

    /// <summary>Optimizer steps done.</summary>
    public int Step { get; private set; }

    public bool Done => Step >= Options.TotalSteps;
    public int TokensPerStep => Options.Batch * Options.Shape.ContextLength;
    public List<(int Step, float Loss)> TrainLosses { get; } = [];
    public List<(int Step, float Loss)> ValidationLosses { get; } = [];

    public static TrainingRun Start(TrainingOptions options, TrainedTokenizer tokenizer, int[] train, int[] validation, WorkerPool pool)
    {
        var run = new TrainingRun(options, tokenizer, train, validation, pool);
        run.Model.Initialize(options.Seed);
        run._lastCodes = run.TernaryCodes();
        return run;
    }

    /// <summary>Samples a batch, runs forward and backward, and updates the weights; returns the batch's mean loss.</summary>
    public float StepOnce()
    {
        int T = Options.Shape.ContextLength, B = Options.Batch;
        for (int b = 0; b < B; b++)
        {
            int start = _rng.NextInt(Train.Length - T);
            Train.AsSpan(start, T).CopyTo(_inputs.AsSpan(b * T));
            Train.AsSpan(start + 1, T).CopyTo(_targets.AsSpan(b * T));
        }
        float loss = Model.Forward(_inputs, _targets, B, T);
        // Checked before the update, so the weights and the optimizer's moments stay at the last good step: a NaN (from a
        // norm or the embedding, which the projections' check does not see) went through AdamW into every weight, and a
        // full-precision run, which has no other check, trained on NaN until its next checkpoint refused to save.
        if (!float.IsFinite(loss))
            throw new TrainingDivergedException($"the loss is {loss.ToString(System.Globalization.CultureInfo.InvariantCulture)} at step {Step + 1}: training diverged; the weights are left as they were after step {Step}. Lower --lr (or raise --warmup).");
        Model.Backward();
        int next = Step + 1;
        Optimizer.Step(next, _schedule.At(next));
        Step = next;
        TrainLosses.Add((Step, loss));
        return loss;
    }

    /// <summary>
    /// Mean loss over up to <see cref="TrainingOptions.MaxValidationWindows"/> held-out windows spread evenly over the
    /// whole held-out stream (NaN when it is shorter than one window). Consecutive windows from its start scored only
    /// the first file's held-out tail once that was longer than 64 windows, so the logged loss and --keep-best ignored
    /// every other file, and disagreed with `bitnet eval` on the --heldout text.
    /// </summary>
    public float Validate()
    {
        int T = Options.Shape.ContextLength, B = Options.Batch;
        long available = (Validation.Length - 1) / T;
        int windows = (int)Math.Min(Options.MaxValidationWindows, available);
        if (windows <= 0) return float.NaN;
        double sum = 0;
        for (int w0 = 0; w0 < windows; w0 += B)
        {
            int rows = Math.Min(B, windows - w0);
            for (int b = 0; b < rows; b++)
            {
                int start = (int)((w0 + b) * available / windows * T);
                Validation.AsSpan(start, T).CopyTo(_inputs.AsSpan(b * T));
                Validation.AsSpan(start + 1, T).CopyTo(_targets.AsSpan(b * T));
            }
            sum += (double)Model.Forward(_inputs.AsSpan(0, rows * T), _targets.AsSpan(0, rows * T), rows, T) * rows;
        }
        float loss = (float)(sum / windows);
        ValidationLosses.Add((Step, loss));
        if (float.IsFinite(loss) && loss < BestValidationLoss)
        {
            BestParameters ??= new float[Model.Parameters.Length];
            Model.Parameters.AsSpan().CopyTo(BestParameters);
            (BestStep, BestValidationLoss) = (Step, loss);
        }
        return loss;
    }

    /// <summary>The latent weights at the lowest validation loss so far (null before the first validation), its step and loss.</summary>
    public float[]? BestParameters { get; private set; }
    public int BestStep { get; private set; } = -1;

    /// <summary>
    /// The training text's <see cref="TrainingCorpus.Fingerprint"/>, kept in the checkpoint (null in one from before it
    /// was): a resume told --data that is not the run's text, which it never reads, can say so without tokenizing it.
    /// </summary>
    public UInt128? DataFingerprint { get; set; }
    public float BestValidationLoss { get; private set; } = float.PositiveInfinity;

    /// <summary>
    /// The weight-stability index: per layer, the share of its ternary codes (all seven projections) that differ from
    /// the codes at the previous call (or the start of this process's part of the run); then remembers the current codes.
    /// Meaningless (all 0) for a full-precision run, which has no codes.
    /// </summary>
    public double[] StabilityIndex()
    {
        var codes = TernaryCodes();
        var changed = new long[Options.Shape.Layers];
        var total = new long[Options.Shape.Layers];
        int k = 0;
        foreach (var t in Model.Layout.Tensors)
        {
            if (!t.IsProjection) continue;
            for (int i = 0; i < t.Length; i++, k++)
                if (_lastCodes![k] != codes[k]) changed[t.Layer]++;
            total[t.Layer] += t.Length;
        }
        _lastCodes = codes;
        return [.. changed.Select((c, l) => (double)c / total[l])];
    }

    private sbyte[] TernaryCodes()
    {
        var layout = Model.Layout;
        var codes = new sbyte[layout.Tensors.Where(t => t.IsProjection).Sum(t => t.Length)];
        int k = 0;
        foreach (var t in layout.Tensors)
        {
            if (!t.IsProjection) continue;
            var w = Model.Parameters.AsSpan(t.Offset, t.Length);
            float s;
            unsafe
            {
                fixed (float* p = w) s = 1f / Layers.BitLinear.Beta(p, t.Rows, t.Cols);
            }
            foreach (float v in w) codes[k++] = (sbyte)AbsmeanTernarizer.Ternary(v, s);
        }
        return codes;
    }

    /// <summary>
    /// Writes the model GGUF (temporary file + rename): with <paramref name="best"/>, the weights at the lowest
    /// validation loss seen (<see cref="BestStep"/>) when there was a validation, else the current ones.
    /// </summary>
    public void Export(string path, ProjectionPacking packing = ProjectionPacking.I2S, string? name = null, bool best = false) =>
        ModelExporter.Write(path, Options.Shape, best && BestParameters is { } b ? b : Model.Parameters, Tokenizer, name ?? Path.GetFileNameWithoutExtension(path), packing,
            activationBits: Options.ActivationBits);

    // ---- Checkpoints ----

    private const ulong Magic = 0x54504B4354544E42; // "BNTTCKPT"
    private const int Version = 5; // 5: an XXH3 of every byte before it, before the end marker; 4: the training text's fingerprint after the best snapshot; 3: the best-validation snapshot at the end; 2: the activation bit widths after MaxValidationWindows (1: none, i.e. all 8)

    /// <summary>
    /// Writes everything needed to continue: options, tokenizer, token streams, step, RNG state, loss history, latent
    /// weights and both Adam moments. Written through <see cref="AtomicFile"/> (temporary file, fsync, rename), so a kill during the write leaves the previous checkpoint.
    /// </summary>
    /// <exception cref="TrainingDivergedException">The latent weights are no longer finite; the checkpoint on disk (the last good one) is kept.</exception>
    public void SaveCheckpoint(string path)
    {
        // A diverged run must not replace the last good checkpoint: resuming it (with a lower --lr, or --tokens to end
        // early) is the way back. The full-precision twin has no other check on its weights.
        var p = Model.Parameters;
        for (int i = 0; i < p.Length; i++)
            if (!float.IsFinite(p[i]))
                throw new TrainingDivergedException($"the weights are no longer finite at step {Step}: training diverged. {DivergenceAdvice(path)}.");
        // The moments too (a library run without gradient clipping can overflow them with finite weights): Resume refuses
        // them as damage, so written they made a checkpoint no run could go on from.
        foreach (var moments in new[] { Optimizer.M, Optimizer.V })
            for (int i = 0; i < moments.Length; i++)
                if (!float.IsFinite(moments[i]))
                    throw new TrainingDivergedException($"the optimizer's moments are no longer finite at step {Step}: training diverged. {DivergenceAdvice(path)}.");
        // The default BinaryWriter encoding (UTF-8, no BOM, throwing on invalid text), kept open for the fsync.
        AtomicFile.Write(path, file =>
        {
            // Everything before the checksum goes through the hash: damage that stays finite (a weight of 1e30, a step
            // of -1, a best loss of NaN) resumed and overwrote the checkpoint, and only non-finite values were caught.
            using var stream = new HashingStream(file);
            using var w = new BinaryWriter(stream, new System.Text.UTF8Encoding(false, true), leaveOpen: true);
            w.Write(Magic);
            w.Write(Version);
            var s = Options.Shape;
            foreach (int v in new[] { s.VocabSize, s.Dim, s.Layers, s.Heads, s.KvHeads, s.FeedForward, s.ContextLength }) w.Write(v);
            w.Write(s.RopeTheta); w.Write(s.RmsEps);
            w.Write(Options.Batch); w.Write(Options.TotalSteps); w.Write(Options.LearningRate); w.Write(Options.WarmupSteps);
            w.Write(Options.WeightDecay); w.Write(Options.ClipNorm); w.Write(Options.FullPrecision); w.Write(Options.Seed);
            w.Write(Options.MaxValidationWindows);
            var widths = Model.ActivationBits.ToArray();
            w.Write(widths.Length);
            w.Write(widths);
            WriteStrings(w, Tokenizer.Tokens); WriteStrings(w, Tokenizer.Merges); WriteStrings(w, Tokenizer.SpecialTokens);
            w.Write(Tokenizer.BosId); w.Write(Tokenizer.EosId);
            WriteInts(w, Train); WriteInts(w, Validation);
            w.Write(Step); w.Write(_rng.State);
            WriteLosses(w, TrainLosses); WriteLosses(w, ValidationLosses);
            WriteFloats(w, Model.Parameters); WriteFloats(w, Optimizer.M); WriteFloats(w, Optimizer.V);
            w.Write(BestStep); w.Write(BestValidationLoss);
            if (BestParameters is { } best) WriteFloats(w, best);
            w.Write(DataFingerprint.HasValue);
            if (DataFingerprint is { } fp)
            {
                w.Write((ulong)(fp >> 64));
                w.Write((ulong)fp);
            }
            w.Flush();
            w.Write(stream.Hash);
            w.Write(Magic);
            w.Flush();
        });
        CheckpointStep = Step;
    }

    /// <summary>The step of the checkpoint this run last wrote, or resumed from; −1 for none.</summary>
    public int CheckpointStep { get; private set; } = -1;

    /// <summary>
    /// What to do after a divergence, about the checkpoint at <paramref name="path"/>: its step and validation loss, and
    /// whether resuming it is the way back. A checkpoint is written whatever the loss, so one taken while the validation
    /// loss was already far above the best (more than 1 nat a token: the run was diverging, e.g. 1.2e9 against 5.3) was
    /// called "the last good checkpoint", and resuming it with a lower rate stayed there.
    /// </summary>
    public string DivergenceAdvice(string path)
    {
        var ic = System.Globalization.CultureInfo.InvariantCulture;
        if (CheckpointStep < 0 || !File.Exists(path)) return "Lower --lr (or raise --warmup) and start again";
        float? val = null;
        foreach (var (step, loss) in ValidationLosses)
            if (step <= CheckpointStep) val = loss;
        string at = val is { } v ? string.Create(ic, $"step {CheckpointStep}, val {v:G4}") : string.Create(ic, $"step {CheckpointStep}");
        if (val is { } risen && BestStep >= 0 && BestStep < CheckpointStep && !(risen <= BestValidationLoss + 1f))
            return string.Create(ic, $"The last checkpoint, {path} ({at}), was kept, but its validation loss had already risen from {BestValidationLoss:F3} at step {BestStep}: ") +
                "the run was diverging before it, and resuming it keeps the damage. Start again with a lower --lr (or a longer --warmup)";
        return $"The last good checkpoint, {path} ({at}), was kept; resume it with --resume and a lower --lr (or raise --warmup)";
    }

    /// <summary>
    /// Continues a run from <paramref name="path"/>. When <paramref name="expectedShape"/> or <paramref name="expectedBits"/>
    /// is given and differs from the checkpoint's, throws <see cref="InvalidDataException"/> naming both. With
    /// <paramref name="totalSteps"/>, the run gets a new length: the cosine schedule aims at the new last step from the
    /// resumed step on (the learning rate moves to where the new schedule puts that step); below the steps already
    /// done it throws <see cref="InvalidOperationException"/>.
    /// </summary>
    /// <param name="totalTokens">A new run length in tokens, turned into steps with the checkpoint's own batch and context (not the command line's).</param>
    /// <summary>Steps that cover <paramref name="tokens"/> at batch × context tokens each (at least 1); more than int.MaxValue steps is an <see cref="InvalidOperationException"/>.</summary>
    public static int StepsFor(long tokens, int batch, int contextLength)
    {
        long steps = Math.Max(1, tokens / ((long)batch * contextLength));
        if (steps > int.MaxValue)
            throw new InvalidOperationException($"{tokens} tokens at {batch} × {contextLength} per step are {steps} steps, more than a run can count ({int.MaxValue}); give fewer --tokens.");
        return (int)steps;
    }

    /// <param name="learningRate">A new peak learning rate (the way back from a divergence: resume the last good checkpoint lower); null keeps the checkpoint's.</param>
    /// <param name="warmupSteps">New warm-up steps; null keeps the checkpoint's.</param>
    public static TrainingRun Resume(string path, WorkerPool pool, TrainingShape? expectedShape = null, ActivationBits? expectedBits = null, int? totalSteps = null,
        long? totalTokens = null, float? learningRate = null, int? warmupSteps = null, float? weightDecay = null)
    {
        if (weightDecay is { } wd && !(float.IsFinite(wd) && wd >= 0)) throw new ArgumentOutOfRangeException(nameof(weightDecay), wd, "The weight decay must be 0 or more and finite.");
        if (learningRate is { } lr && !(float.IsFinite(lr) && lr > 0)) throw new ArgumentOutOfRangeException(nameof(learningRate), lr, "The learning rate must be positive and finite.");
        if (warmupSteps is < 0) throw new ArgumentOutOfRangeException(nameof(warmupSteps), warmupSteps, "Warm-up steps must be 0 or more.");
        using var file = File.OpenRead(path);
        using var stream = new HashingStream(file);
        // Strict UTF-8: the default decoder turned a damaged token into U+FFFD without a word, and the exported model lost
        // that byte's token (text with it no longer encoded).
        using var r = new BinaryReader(stream, new System.Text.UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true));
        // Shorter than the magic and version (an empty or junk file at OUT.ckpt): not a checkpoint, rather than "truncated".
        if (stream.Length < sizeof(ulong) + sizeof(int))
            throw new InvalidDataException($"{path}: not a bitnet training checkpoint ({stream.Length} bytes); delete it to start a new run, or give --resume the run's own OUT.ckpt.");
        try
        {
            if (r.ReadUInt64() != Magic) throw new InvalidDataException($"{path}: not a bitnet training checkpoint.");
            int version = r.ReadInt32();
            if (version is not (1 or 2 or 3 or 4 or Version)) throw new InvalidDataException($"{path}: checkpoint version {version}; this build reads version {Version}.");
            var v = new int[7];
            for (int i = 0; i < 7; i++) v[i] = r.ReadInt32();
            var shape = new TrainingShape(v[0], v[1], v[2], v[3], v[4], v[5], v[6], r.ReadSingle(), r.ReadSingle());
            if (expectedShape is not null && expectedShape != shape)
                throw new CheckpointMismatchException($"{path}: the checkpoint is for a model of shape ({shape}); the command line asks for ({expectedShape}). Pass the same shape options, or start a new run without --resume.");
            var options = new TrainingOptions
            {
                Shape = shape, Batch = r.ReadInt32(), TotalSteps = r.ReadInt32(), LearningRate = r.ReadSingle(), WarmupSteps = r.ReadInt32(),
                WeightDecay = r.ReadSingle(), ClipNorm = r.ReadSingle(), FullPrecision = r.ReadBoolean(), Seed = r.ReadUInt64(),
                MaxValidationWindows = r.ReadInt32(),
            };
            if (DamagedSetting(options) is { } damaged)
                throw new InvalidDataException($"{path}: the checkpoint's settings are damaged ({damaged}); no run writes that. Start a new run without --resume.");
            var bits = version == 1 ? ActivationBits.Uniform(shape.Layers) : ReadBits(r, shape.Layers, path);
            if (expectedBits is not null && !expectedBits.Equals(bits))
                throw new CheckpointMismatchException($"{path}: the checkpoint trains with --activation-bits {bits}; the command line asks for {expectedBits}. " +
                    $"Pass --activation-bits {bits} to continue it, or start a new run without --resume.");
            if (!bits.AllEight) options = options with { ActivationBits = bits };
            string[] tokens, merges, specials;
            try
            {
                tokens = ReadStrings(r);
                merges = ReadStrings(r);
                specials = ReadStrings(r);
            }
            catch (System.Text.DecoderFallbackException e)
            {
                throw new InvalidDataException($"{path}: the checkpoint's tokenizer is damaged (a token is not valid UTF-8). Resume an intact copy, or start a new run without --resume.", e);
            }
            TrainedTokenizer tokenizer;
            try
            {
                tokenizer = new TrainedTokenizer(tokens, merges, specials, r.ReadInt32(), r.ReadInt32());
            }
            catch (Exception e) when (e is ArgumentException or KeyNotFoundException)
            {
                // A damaged merge list (a merge of tokens that are not in the vocabulary) threw KeyNotFoundException, and
                // the command printed a stack trace.
                throw new InvalidDataException($"{path}: the checkpoint's tokenizer is damaged ({e.Message}).", e);
            }
            int[] train = ReadInts(r), validation = ReadInts(r);
            foreach (var (ids, name) in new[] { (train, "training"), (validation, "validation") })
                for (int i = 0; i < ids.Length; i++)
                    if ((uint)ids[i] >= (uint)tokens.Length)
                        throw new InvalidDataException($"{path}: the checkpoint's {name} tokens are damaged (token {ids[i]} at position {i}; the vocabulary has {tokens.Length}).");
            int step = r.ReadInt32();
            var saved = options;
            if (totalTokens is { } tokenCount) totalSteps = StepsFor(tokenCount, options.Batch, shape.ContextLength);
            if (totalSteps is { } steps && steps != options.TotalSteps)
            {
                if (steps < Math.Max(step, 1))
                    throw new InvalidOperationException(
                        $"{path} is at step {step}; a new length of {steps} steps would end before it. Give more --tokens (at least {(long)step * options.Batch * shape.ContextLength}).");
                options = options with { TotalSteps = steps };
            }
            if (learningRate is { } newRate) options = options with { LearningRate = newRate };
            if (warmupSteps is { } newWarmup) options = options with { WarmupSteps = newWarmup };
            if (weightDecay is { } newDecay) options = options with { WeightDecay = newDecay };
            TrainingRun run;
            try
            {
                run = new TrainingRun(options, tokenizer, train, validation, pool);
            }
            catch (ArgumentException e)
            {
                // What the settings make (buffers past one array, a stream shorter than a window) said "lower the batch"
                // or "use more text" with no file named, of a checkpoint no run could have written.
                throw new InvalidDataException($"{path}: the checkpoint cannot be resumed: {e.Message}", e);
            }
            run.Step = step;
            run.CheckpointOptions = saved;
            run._rng.State = r.ReadUInt64();
            ReadLosses(r, run.TrainLosses);
            ReadLosses(r, run.ValidationLosses);
            ReadFloats(r, run.Model.Parameters);
            ReadFloats(r, run.Optimizer.M);
            ReadFloats(r, run.Optimizer.V);
            // A run never saves NaN/∞ weights (SaveCheckpoint refuses them) nor a negative second moment: such values are
            // damage, and resumed they read as a divergence at the next step, whose advice ("resume the last good
            // checkpoint with a lower --lr") pointed back at this very file.
            CheckValues(path, "weights", run.Model.Parameters, nonNegative: false);
            CheckValues(path, "Adam first moments", run.Optimizer.M, nonNegative: false);
            CheckValues(path, "Adam second moments", run.Optimizer.V, nonNegative: true);
            if (version >= 3)
            {
                run.BestStep = r.ReadInt32();
                run.BestValidationLoss = r.ReadSingle();
                if (run.BestStep >= 0)
                {
                    run.BestParameters = new float[run.Model.Parameters.Length];
                    ReadFloats(r, run.BestParameters);
                    CheckValues(path, "best-validation weights", run.BestParameters, nonNegative: false);
                }
            }
            if (version >= 4 && r.ReadBoolean()) run.DataFingerprint = ((UInt128)r.ReadUInt64() << 64) | r.ReadUInt64();
            if (version >= 5)
            {
                ulong computed = stream.Hash;
                if (r.ReadUInt64() != computed)
                    throw new InvalidDataException($"{path}: the checkpoint's checksum does not match its contents: the file is damaged. Resume an intact copy, or start a new run without --resume.");
            }
            // What a checksum cannot vouch for in an older checkpoint, and no run writes: a step outside the run or its
            // loss history, a best snapshot from a later step or with a loss that is not a loss.
            if (run.Step < 0 || run.Step > run.Options.TotalSteps || run.TrainLosses.Count > 0 && run.TrainLosses[^1].Step != run.Step
                || run.TrainLosses.Count == 0 && run.Step != 0)
                throw new InvalidDataException($"{path}: the checkpoint's step ({run.Step}) does not fit its run ({run.Options.TotalSteps} steps, losses to step {(run.TrainLosses.Count > 0 ? run.TrainLosses[^1].Step : 0)}): the file is damaged. Resume an intact copy, or start a new run without --resume.");
            if (run.BestStep > run.Step || run.BestStep >= 0 && !(float.IsFinite(run.BestValidationLoss) && run.BestValidationLoss >= 0))
                throw new InvalidDataException($"{path}: the checkpoint's best-validation snapshot (step {run.BestStep}, loss {run.BestValidationLoss}) does not fit its run at step {run.Step}: the file is damaged. Resume an intact copy, or start a new run without --resume.");
            if (r.ReadUInt64() != Magic) throw new InvalidDataException($"{path}: the checkpoint is truncated or corrupt (end marker missing).");
            run._lastCodes = run.TernaryCodes();
            run.CheckpointStep = run.Step;
            return run;
        }
        catch (EndOfStreamException e)
        {
            throw new InvalidDataException($"{path}: the checkpoint is truncated.", e);
        }
        catch (Exception e) when (e is IOException or FormatException && e is not InvalidDataException and not FileNotFoundException)
        {
            // BinaryReader.ReadString's length prefix: "invalid string length" (IOException) or a 7-bit encoding past
            // int (FormatException), with no file named.
            throw new InvalidDataException($"{path}: the checkpoint cannot be read ({e.Message}).", e);
        }
        catch (InvalidDataException e) when (!e.Message.StartsWith(path, StringComparison.Ordinal))
        {
            throw new InvalidDataException($"{path}: {e.Message}", e);
        }
    }

    private static void CheckValues(string path, string what, float[] values, bool nonNegative)
    {
        for (int i = 0; i < values.Length; i++)
        {
            float v = values[i];
            if (!float.IsFinite(v) || (nonNegative && v < 0))
                throw new InvalidDataException(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                    $"{path}: the checkpoint's {what} are damaged (value {i} of {values.Length} is {v}; no run saves that). Resume an intact copy, or start a new run without --resume."));
        }
    }

    /// <summary>The first stored setting no run could have (a batch below 1, a NaN learning rate, …), or null.</summary>
    private static string? DamagedSetting(TrainingOptions o) =>
        o.Batch < 1 ? $"batch {o.Batch}"
        : o.TotalSteps < 1 ? $"{o.TotalSteps} steps"
        : !(float.IsFinite(o.LearningRate) && o.LearningRate > 0) ? $"learning rate {o.LearningRate}"
        : o.WarmupSteps < 0 ? $"{o.WarmupSteps} warm-up steps"
        : !(float.IsFinite(o.WeightDecay) && o.WeightDecay >= 0) ? $"weight decay {o.WeightDecay}"
        : !(float.IsFinite(o.ClipNorm) && o.ClipNorm >= 0) ? $"clip norm {o.ClipNorm}"
        : o.MaxValidationWindows < 0 ? $"{o.MaxValidationWindows} validation windows"
        : null;

    private static ActivationBits ReadBits(BinaryReader r, int layers, string path)
    {
        int n = ReadCount(r);
        try
        {
            return ActivationBits.FromWidths(layers, r.ReadBytes(n));
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"{path}: the checkpoint's activation bit widths are corrupt: {e.Message}", e);
        }
    }

    private static void WriteStrings(BinaryWriter w, IReadOnlyList<string> items)
    {
        w.Write(items.Count);
        foreach (var s in items) w.Write(s);
    }

    private static string[] ReadStrings(BinaryReader r)
    {
        var items = new string[ReadCount(r)];
        for (int i = 0; i < items.Length; i++) items[i] = r.ReadString();
        return items;
    }

    private static void WriteInts(BinaryWriter w, int[] items)
    {
        w.Write(items.Length);
        foreach (int v in items) w.Write(v);
    }

    private static int[] ReadInts(BinaryReader r)
    {
        var items = new int[ReadCount(r)];
        for (int i = 0; i < items.Length; i++) items[i] = r.ReadInt32();
        return items;
    }

    private static void WriteFloats(BinaryWriter w, float[] items)
    {
        w.Write(items.Length);
        w.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(items.AsSpan()));
    }

    private static void ReadFloats(BinaryReader r, float[] into)
    {
        int n = r.ReadInt32();
        if (n != into.Length) throw new InvalidDataException($"The checkpoint holds {n} values where the model has {into.Length}.");
        var bytes = System.Runtime.InteropServices.MemoryMarshal.AsBytes(into.AsSpan());
        r.BaseStream.ReadExactly(bytes);
    }

    private static void WriteLosses(BinaryWriter w, List<(int Step, float Loss)> items)
    {
        w.Write(items.Count);
        foreach (var (step, loss) in items) { w.Write(step); w.Write(loss); }
    }

    private static void ReadLosses(BinaryReader r, List<(int Step, float Loss)> into)
    {
        int n = ReadCount(r);
        for (int i = 0; i < n; i++) into.Add((r.ReadInt32(), r.ReadSingle()));
    }

    private static int ReadCount(BinaryReader r)
    {
        int n = r.ReadInt32();
        if (n < 0 || n > r.BaseStream.Length) throw new InvalidDataException("The checkpoint is corrupt (impossible element count).");
        return n;
    }
}

/// <summary>A checkpoint that is sound but not the run the command line describes (another shape, other activation bits):
/// the options are the user's to change (an argument exception), where <see cref="InvalidDataException"/> says the file is bad.</summary>
public sealed class CheckpointMismatchException(string message) : ArgumentException(message);

/// <summary>
/// A pass-through stream that hashes (XXH3) every byte read or written through it: a checkpoint's checksum covers
/// what was written before it, and a resume compares it with what it read.
/// </summary>
internal sealed class HashingStream(Stream inner) : Stream
{
    private readonly System.IO.Hashing.XxHash3 _hash = new();

    /// <summary>The hash of the bytes so far.</summary>
    public ulong Hash => _hash.GetCurrentHashAsUInt64();

    public override bool CanRead => inner.CanRead;
    public override bool CanSeek => false;
    public override bool CanWrite => inner.CanWrite;
    public override long Length => inner.Length;

    public override long Position
    {
        get => inner.Position;
        set => throw new NotSupportedException();
    }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        int n = inner.Read(buffer);
        _hash.Append(buffer[..n]);
        return n;
    }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        _hash.Append(buffer);
        inner.Write(buffer);
    }

    public override void Flush() => inner.Flush();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();
}
