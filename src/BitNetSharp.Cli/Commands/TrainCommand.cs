using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using BitNetSharp.Formats;
using BitNetSharp.Model;
using BitNetSharp.Threading;
using BitNetSharp.Training;
using Spectre.Console;

namespace BitNetSharp.Cli.Commands;

/// <summary>
/// <c>bitnet train --data FILE... --out model.gguf [shape and run options]</c>: trains a byte-level BPE tokenizer and a
/// BitNet b1.58 model on text (quantization-aware; <c>--full-precision</c> for the fp twin), with held-out validation,
/// atomic checkpoints next to the output (<c>OUT.ckpt</c>, continued by <c>--resume</c>), the weight-stability index,
/// and at the end the GGUF (written through a temporary file) and a loss-curve SVG (<c>--plot</c>, default <c>OUT.loss.svg</c>).
/// </summary>
public static class TrainCommand
{
    public static Command Create(CliConsole cli)
    {
        var data = new Option<string[]>("--data") { Description = "UTF-8 text files to train on (each a document).", Required = true, AllowMultipleArgumentsPerToken = true };
        var output = new Option<string>("--out", "-o") { Description = "The model .gguf to write.", Required = true };
        var vocab = new Option<int>("--vocab") { Description = "Tokenizer vocabulary size (1 special + 256 bytes + merges).", DefaultValueFactory = _ => 4096 };
        var dim = new Option<int>("--dim") { Description = "Model width.", DefaultValueFactory = _ => 256 };
        var layers = new Option<int>("--layers") { Description = "Transformer blocks.", DefaultValueFactory = _ => 4 };
        var heads = new Option<int>("--heads") { Description = "Attention heads (must divide --dim).", DefaultValueFactory = _ => 4 };
        var kvHeads = new Option<int>("--kv-heads") { Description = "KV heads (must divide --heads; default: --heads)." };
        var ff = new Option<int>("--ff") { Description = "Feed-forward width (default: 8/3·dim rounded up to a multiple of 128)." };
        var ctx = new Option<int>("--ctx") { Description = "Context length (training window).", DefaultValueFactory = _ => 256 };
        var tokens = new Option<long>("--tokens") { Description = "Training tokens in total (steps = tokens / (batch·ctx)). With --resume, a new length for the run: the cosine schedule then ends at the new last step.", DefaultValueFactory = _ => 1_000_000 };
        var batch = new Option<int>("--batch") { Description = "Sequences per step.", DefaultValueFactory = _ => 8 };
        var lr = new Option<float>("--lr") { Description = "Peak learning rate (warm-up then cosine to 10%).", DefaultValueFactory = _ => 2e-3f };
        var warmup = new Option<int>("--warmup") { Description = "Warm-up steps.", DefaultValueFactory = _ => 50 };
        var weightDecay = new Option<float>("--weight-decay") { Description = "AdamW weight decay on matrices.", DefaultValueFactory = _ => 0.1f };
        var ropeTheta = new Option<float>("--rope-theta") { Description = "RoPE base.", DefaultValueFactory = _ => 10000f };
        var fullPrecision = new Option<bool>("--full-precision") { Description = "Train the full-precision twin (quantizers off); the export is still ternarized." };
        var resume = new Option<bool>("--resume") { Description = "Continue from OUT.ckpt: the shape options must match; tokenizer, token streams, batch, seed and hyper-parameters come from the checkpoint (--tokens, --lr, --warmup and --weight-decay given replace its own)." };
        var seed = new Option<ulong>("--seed") { Description = "Initialization and data-sampling seed.", DefaultValueFactory = _ => 1UL };
        var valEvery = new Option<int>("--val-every") { Description = "Validation interval in steps.", DefaultValueFactory = _ => 50 };
        var checkpointEvery = new Option<int>("--checkpoint-every") { Description = "Checkpoint interval in steps.", DefaultValueFactory = _ => 100 };
        var packing = new Option<string>("--packing") { Description = "Projection type in the GGUF: i2_s or tq2_0.", DefaultValueFactory = _ => "i2_s" };
        var threads = new Option<int>("--threads", "-t") { Description = "Worker threads (default: physical cores)." };
        var keepBest = new Option<bool>("--keep-best")
        {
            Description = "Export the weights at the lowest validation loss seen (checked every --val-every steps), not the last step's; --keep-best false exports the last.",
            DefaultValueFactory = _ => true,
        };
        var activationBits = new Option<string>("--activation-bits")
        {
            Description = "Activation bit widths the quantized forward trains at (the engine's quantizer, straight-through backward): " +
                "one width for all (8, 6, 5, 4, 3, 2), one per layer (8,8,4,4), or per input (qkv=4,gate_up=4: BitNet a4.8-style; inputs qkv, o, gate_up, down). " +
                "Written into the GGUF, so generate/eval use them.",
            DefaultValueFactory = _ => "8",
        };
        var plotPath = new Option<string?>("--plot") { Description = "The loss-curve SVG to write at the end (default: OUT with .loss.svg for its extension: m.gguf → m.loss.svg)." };
        var heldOut = new Option<string?>("--heldout")
        {
            Description = "Also write the held-out validation text (the last 5% of each --data file, cut at a line start, or a word's start inside a long last line) to this file, " +
                "so `bitnet eval --data FILE --parse-special` scores the model on text it never trained on (the files' slices are joined by <|endoftext|>, read as the token).",
        };
        var command = new Command("train", "Train a BPE tokenizer and a ternary BitNet b1.58 model on text, and write it as GGUF.")
        {
            data, output, vocab, dim, layers, heads, kvHeads, ff, ctx, tokens, batch, lr, warmup, weightDecay, ropeTheta,
            fullPrecision, resume, seed, valEvery, checkpointEvery, packing, threads, plotPath, activationBits, keepBest, heldOut,
        };
        // With the cancellation token: Ctrl-C/SIGTERM stops after the step in progress and saves a checkpoint to resume
        // (the process died at once, losing up to --checkpoint-every steps).
        command.SetAction((r, cancellation) => Task.FromResult(cli.Guard(() =>
        {
            TrainingRun? current = null; // for the advice after a divergence
            try
            {
                string outPath = OutputFile.Check("--out", r.GetRequiredValue(output));
                // The checkpoint and the loss plot go beside --out (OUT.ckpt, OUT.loss.svg): for --out /dev/null they were made as
                // files in /dev, and the next run was refused for the checkpoint it left there.
                if (BitNetSharp.Formats.PathIdentity.IsSpecialFile(outPath))
                    throw new UsageException($"--out {r.GetRequiredValue(output)} is not a file: train writes its checkpoint beside --out ({outPath}.ckpt) and resumes from it, and its loss plot too. Give a file path (the model can be copied anywhere afterwards).");
                CheckSettings(r, lr, warmup, weightDecay, threads, ff, kvHeads, vocab);
                int d = r.GetValue(dim), h = r.GetValue(heads);
                var shape = new TrainingShape(r.GetValue(vocab), d, r.GetValue(layers), h, r.GetValue(kvHeads) is > 0 and var kv ? kv : h,
                    r.GetValue(ff) is > 0 and var f ? f : (8 * d / 3 + 127) / 128 * 128, r.GetValue(ctx), r.GetValue(ropeTheta));
                var pack = r.GetValue(packing)?.ToLowerInvariant() switch
                {
                    "i2_s" or "i2s" => ProjectionPacking.I2S,
                    "tq2_0" or "tq2" => ProjectionPacking.Tq2_0,
                    var other => throw new UsageException($"--packing '{other}' is not one of i2_s, tq2_0."),
                };
                try
                {
                    // The shape is the user's flags (--dim 64 --heads 3, --rope-theta 0, --packing tq2_0 at --dim 64): a
                    // usage error, exit 2 (it exited 1, the code of a bad file).
                    shape.Validate();
                    ModelExporter.CheckPackable(shape, pack);
                }
                catch (ArgumentException e)
                {
                    throw new UsageException(e.Message.Split(" (Parameter '")[0]);
                }
                // As convert warns: I2_S rows that are not whole 128-weight blocks load in bitnet.cpp and compute wrong
                // there (its kernel reads n/128 blocks a row); the run wrote them without a word.
                if (pack == ProjectionPacking.I2S && (shape.Dim % 128 != 0 || shape.FeedForward % 128 != 0))
                    cli.Error.WriteLine($"note: rows of {string.Join(" and ", new[] { shape.Dim % 128 != 0 ? $"{shape.Dim} weights (--dim)" : null, shape.FeedForward % 128 != 0 ? $"{shape.FeedForward} weights (--ff)" : null }.Where(x => x is not null))} are not whole 128-weight blocks: "
                        + "this runtime reads such I2_S tensors, bitnet.cpp reads them wrong (each row's last weights dropped). For bitnet.cpp, use --dim and --ff multiples of 128.");
                ActivationBits bits;
                try
                {
                    bits = ActivationBits.Parse(r.GetValue(activationBits) ?? "8", shape.Layers);
                }
                catch (ArgumentException e)
                {
                    throw new UsageException(e.Message);
                }
                if (r.GetValue(fullPrecision) && !bits.AllEight)
                    throw new UsageException($"--activation-bits {bits} with --full-precision: the full-precision twin has no activation quantizer; drop one of the two.");
                int batchSize = r.GetValue(batch);
                if (batchSize < 1) throw new UsageException("--batch must be at least 1.");
                // A resumed run keeps its checkpoint's batch: its step count and buffers are checked once it is read (the
                // command line's --batch, default 8, refused a resume whose own batch fitted).
                // The checkpoint's path is derived from --out: a directory there failed at the first checkpoint, the run
                // so far lost (and --resume said "no checkpoint", starting a new run).
                if (Directory.Exists(outPath + ".ckpt"))
                    throw new UsageException($"{outPath}.ckpt, where the checkpoint goes, is a directory; move it or give another --out.");
                bool resuming = r.GetValue(resume) && File.Exists(outPath + ".ckpt");
                if (!resuming)
                {
                    if (r.GetValue(tokens) < (long)batchSize * shape.ContextLength) throw new UsageException($"--tokens must be at least one step (batch·ctx = {(long)batchSize * shape.ContextLength}).");
                    Steps(r.GetValue(tokens), batchSize, shape.ContextLength); // a count of steps past int is refused before any work
                    // Without --resume a new run would replace the checkpoint at its first checkpoint step: forgetting
                    // --resume lost a long run.
                    if (File.Exists(outPath + ".ckpt"))
                        throw new UsageException($"{outPath}.ckpt exists: a run that can be continued. Add --resume to continue it, or delete it to start a new run.");
                }
                if (r.GetValue(valEvery) < 1 || r.GetValue(checkpointEvery) < 1) throw new UsageException("--val-every and --checkpoint-every must be at least 1.");
                RequireWritable(outPath);
                string plot = Path.GetFullPath(r.GetValue(plotPath) ?? Path.ChangeExtension(outPath, ".loss.svg"));
                if (!plot.EndsWith(".svg", StringComparison.OrdinalIgnoreCase))
                    throw new UsageException($"--plot {r.GetValue(plotPath)}: the loss curve is written as SVG (no native graphics libraries in the tool); " +
                        $"give a path ending in .svg, e.g. {Path.ChangeExtension(r.GetValue(plotPath), ".svg")}.");
                if (r.GetValue(plotPath) is { } plotGiven) OutputFile.Check("--plot", plotGiven);
                else if (Directory.Exists(plot)) throw new UsageException($"{plot}, the default --plot (OUT.loss.svg), is a directory; give --plot FILE.svg.");
                if (Path.GetDirectoryName(plot) != Path.GetDirectoryName(outPath)) RequireWritable(plot);
                string? heldOutPath = r.GetValue(heldOut) is { } h2 ? OutputFile.Check("--heldout", h2) : null;
                if (heldOutPath is not null && Path.GetDirectoryName(heldOutPath) != Path.GetDirectoryName(outPath)) RequireWritable(heldOutPath);
                CheckOutputsAreNotInputs(r.GetRequiredValue(data), ("--out", outPath), ("--plot", plot), ("the checkpoint", outPath + ".ckpt"), ("--heldout", heldOutPath));
                CheckOutputsDiffer(("--out", outPath), ("--plot", plot), ("the checkpoint (OUT.ckpt)", outPath + ".ckpt"), ("--heldout", heldOutPath));
                if (!resuming) CheckBuffersFit(shape, batchSize);

                if (r.GetValue(threads) is var asked && asked > Environment.ProcessorCount)
                    cli.Error.WriteLine($"note: -t {asked} is more than this machine's {Environment.ProcessorCount} logical CPUs: the workers share CPUs and each step waits for the slowest, so training runs far slower than with -t {Environment.ProcessorCount} or fewer.");
                using var pool = new WorkerPool(r.GetValue(threads));
                string checkpoint = outPath + ".ckpt";
                TrainingRun run;
                if (r.GetValue(resume) && File.Exists(checkpoint))
                {
                    // --tokens on a resume re-plans the run's length (e.g. a run slower than planned); otherwise the checkpoint's stands.
                    // Counted in steps of the checkpoint's batch, which the run keeps (the command line's --batch is not used on a resume).
                    long? newTokens = r.GetResult(tokens) is { Implicit: false } ? r.GetValue(tokens) : null;
                    bool newSteps = newTokens is not null;
                    // --lr and --warmup given on a resume replace the checkpoint's: after a divergence the advice is to
                    // resume the last good checkpoint with a lower rate, which used to replay the same steps into the same NaN.
                    float? newRate = r.GetResult(lr) is { Implicit: false } ? r.GetValue(lr) : null;
                    int? newWarmup = r.GetResult(warmup) is { Implicit: false } ? r.GetValue(warmup) : null;
                    // --weight-decay too (the b1.58 recipe's second stage turns it off); it was parsed and dropped.
                    float? newDecay = r.GetResult(weightDecay) is { Implicit: false } ? r.GetValue(weightDecay) : null;
                    try
                    {
                        // The widths are the checkpoint's unless given (as --batch and --seed): a 4-bit run resumed without the
                        // flag was refused, "the command line asks for 8", which it never did.
                        var expectedBits = r.GetResult(activationBits) is { Implicit: false } ? bits : null;
                        run = TrainingRun.Resume(checkpoint, pool, shape, expectedBits, totalTokens: newTokens, learningRate: newRate, warmupSteps: newWarmup, weightDecay: newDecay);
                    }
                    catch (InvalidOperationException e)
                    {
                        throw new UsageException($"--tokens {r.GetValue(tokens)}: {e.Message}");
                    }
                    // The batch and the seed are the run's (its step count and data order): one given that differs was dropped without a word.
                    if (r.GetResult(batch) is { Implicit: false } && batchSize != run.Options.Batch)
                        throw new UsageException($"--batch {batchSize}: {checkpoint} trains with batch {run.Options.Batch}, which a resumed run keeps; drop --batch, or start a new run.");
                    if (r.GetResult(seed) is { Implicit: false } && r.GetValue(seed) != run.Options.Seed)
                        throw new UsageException($"--seed {r.GetValue(seed)}: {checkpoint} was started with seed {run.Options.Seed}, and its data order goes on from where it stopped; drop --seed, or start a new run.");
                    CheckBuffersFit(shape, run.Options.Batch);
                    if (r.GetValue(fullPrecision) != run.Options.FullPrecision)
                    {
                        throw new UsageException(run.Options.FullPrecision
                            ? $"{checkpoint} is a full-precision run; add --full-precision to continue it, or start a new run without --resume."
                            : $"{checkpoint} is a ternary (QAT) run; drop --full-precision to continue it, or start a new run without --resume.");
                    }
                    if (heldOutPath is not null) WriteHeldOut(cli, heldOutPath, run.Tokenizer.Decode(run.Validation));
                    // What the command line changed, not what it repeated: the same command with --resume (as the stop
                    // message says to run) listed --tokens and --warmup as replacing values they equalled.
                    var changed = new List<string>();
                    var before = run.CheckpointOptions!;
                    if (newSteps && run.Options.TotalSteps != before.TotalSteps) changed.Add("run length from --tokens");
                    if (newRate is not null && run.Options.LearningRate != before.LearningRate) changed.Add(string.Create(CultureInfo.InvariantCulture, $"peak learning rate {run.Options.LearningRate:0.###e0} from --lr"));
                    if (newWarmup is not null && run.Options.WarmupSteps != before.WarmupSteps) changed.Add($"warm-up {run.Options.WarmupSteps} steps from --warmup");
                    if (newDecay is not null && run.Options.WeightDecay != before.WeightDecay) changed.Add(string.Create(CultureInfo.InvariantCulture, $"weight decay {run.Options.WeightDecay:0.###} from --weight-decay"));
                    cli.Output.WriteLine($"resuming {checkpoint} at step {run.Step}/{run.Options.TotalSteps}" +
                        (changed.Count > 0 ? $" ({string.Join("; ", changed)})" : ""));
                    if (DataDiffers(r.GetRequiredValue(data), run, cancellation) is { } note) cli.Error.WriteLine(note);
                }
                else
                {
                    if (r.GetValue(resume)) cli.Output.WriteLine($"no checkpoint at {checkpoint}; starting a new run");
                    var corpus = TrainingCorpus.Load(r.GetRequiredValue(data), waiting: m => cli.Error.WriteLine(m), cancellation: cancellation);
                    cli.Output.WriteLine($"training a {shape.VocabSize}-token BPE vocabulary on {corpus.TrainDocuments.Sum(x => (long)x.Length):N0} characters ({corpus.ValidationText.Length:N0} held out)");
                    TrainedTokenizer tokenizer;
                    try
                    {
                        tokenizer = BpeTrainer.Train(corpus.TrainDocuments, shape.VocabSize, [BpeTrainer.EndOfText], cancellation: cancellation);
                    }
                    catch (ArgumentException e) when (e.ParamName == "vocabSize")
                    {
                        // More --vocab than the text has merges for: the user's flag, a usage error (it exited 1, a bad file's code).
                        throw new UsageException(e.Message.Split(" (Parameter '")[0]);
                    }
                    var train = corpus.EncodeTrain(tokenizer, cancellation);
                    var validation = corpus.EncodeValidation(tokenizer, cancellation);
                    // Shorter than one window, validation scored nothing: "val NaN" every time, and --keep-best kept nothing.
                    if (validation.Length < shape.ContextLength + 1)
                        throw new UsageException($"the held-out text ({corpus.ValidationText.Length:N0} characters, {validation.Length:N0} tokens) is shorter than one validation window of --ctx {shape.ContextLength} ({shape.ContextLength + 1} tokens); give more text or a smaller --ctx.");
                    var options = new TrainingOptions
                    {
                        Shape = shape, Batch = batchSize, TotalSteps = Steps(r.GetValue(tokens), batchSize, shape.ContextLength),
                        LearningRate = r.GetValue(lr), WarmupSteps = r.GetValue(warmup), WeightDecay = r.GetValue(weightDecay),
                        FullPrecision = r.GetValue(fullPrecision), Seed = r.GetValue(seed),
                        ActivationBits = bits.AllEight ? null : bits,
                    };
                    run = TrainingRun.Start(options, tokenizer, train, validation, pool);
                    run.DataFingerprint = corpus.Fingerprint;
                    // A signal while the run was set up: nothing written (the held-out file was, beside "nothing written").
                    cancellation.ThrowIfCancellationRequested();
                    // Written once the run has started (the vocabulary and the corpus passed their checks), so a refused
                    // run leaves no file behind.
                    // The validation stream's text (slices with <|endoftext|> between them, as a resumed run writes it):
                    // `bitnet eval --parse-special` reads that marker as the token, so it scores the tokens validation scores.
                    if (heldOutPath is not null) WriteHeldOut(cli, heldOutPath, corpus.ValidationTextWith(tokenizer.Tokens[tokenizer.EosId]));
                    cli.Output.WriteLine($"{train.Length:N0} training tokens, {validation.Length:N0} validation tokens; model {shape}, " +
                        $"{run.Model.Layout.Count:N0} parameters, {(options.FullPrecision ? "full precision" : bits.AllEight ? "ternary (QAT)" : $"ternary (QAT), activation bits {bits}")}; {options.TotalSteps} steps of {run.TokensPerStep} tokens");
                }

                current = run;
                if (run.Options.EffectiveWarmupSteps < run.Options.WarmupSteps)
                    cli.Output.WriteLine($"warm-up: {run.Options.EffectiveWarmupSteps} steps, half the run's {run.Options.TotalSteps} (--warmup {run.Options.WarmupSteps} would leave no decay)");
                int startStep = run.Step;
                Loop(cli, run, checkpoint, r.GetValue(valEvery), r.GetValue(checkpointEvery), cancellation);
                if (!run.Done && run.Step == startStep && run.CheckpointStep < 0)
                {
                    // Stopped before a first step (the signal came while the tokenizer was trained or the text encoded): a
                    // step-0 checkpoint would only block a new run with other settings ("add --resume or delete it").
                    cli.Error.WriteLine("cancelled before the first step: no checkpoint or model written.");
                    return 130;
                }
                if (!run.Done)
                {
                    // Stopped by a signal between steps: the run so far is in the checkpoint, nothing else is written.
                    if (run.CheckpointStep != run.Step) run.SaveCheckpoint(checkpoint);
                    long tokensSoFar = (long)run.Step * run.TokensPerStep;
                    cli.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"stopped at step {run.Step} of {run.Options.TotalSteps}: checkpoint {checkpoint} saved, {outPath} not written. Resume with the same command and --resume; with --tokens {tokensSoFar} (in place of the run's) it ends there: its weights as they are are validated, and exported if their loss is the run's best, else the best snapshot is (with --keep-best false, they are exported whatever their loss)."));
                    return 130;
                }

                // A run ended by `--resume --tokens <tokens so far>` takes no step: its weights were never validated, so the
                // best snapshot was an earlier one (exported in place of "the model as it is now"), and the summary read
                // the last validation's loss as this step's. Validated here, and the checkpoint records the new length.
                if (run.ValidationLosses.Count == 0 || run.ValidationLosses[^1].Step != run.Step)
                {
                    float val = run.Validate();
                    if (!float.IsNaN(val)) // NaN: no validation windows (a setting), nothing measured
                        cli.Output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"step {run.Step}/{run.Options.TotalSteps}  val {val:F3} (the run's end)"));
                }
                // No step ran (the run ended where it stood): its checkpoint takes the new length, and the validation, as a
                // step's end would have written them (a stop at a --val-every step left the old length in it).
                if (run.Step == startStep) run.SaveCheckpoint(checkpoint);
                bool best = r.GetValue(keepBest) && run.BestStep >= 0;
                run.Export(outPath, pack, best: best);
                LossPlot.Write(plot, run);
                float last = run.ValidationLosses.Count > 0 ? run.ValidationLosses[^1].Loss : float.NaN;
                cli.Output.WriteLine(best
                    ? string.Create(CultureInfo.InvariantCulture, $"exported the best validation checkpoint: step {run.BestStep}, val {run.BestValidationLoss:F3} (last step {run.Step}: val {last:F3})")
                    : string.Create(CultureInfo.InvariantCulture, $"exported the last step's weights (step {run.Step})"));
                // --full-precision validates the float weights; the file holds them ternarized, which scores otherwise.
                if (run.Options.FullPrecision)
                    cli.Output.WriteLine("the validation losses are the full-precision weights'; the exported model is their ternarization (absmean), which `bitnet eval` scores as it is.");
                cli.Output.WriteLine($"wrote {outPath} and {plot}");
                return 0;
            }
            catch (TrainingDivergedException e)
            {
                cli.Error.WriteLine($"error: {e.Message}");
                // The check inside a step cannot know of the checkpoint; the way back is the same.
                string checkpointPath = r.GetRequiredValue(output) + ".ckpt";
                string advice = current?.DivergenceAdvice(checkpointPath) ?? $"The last checkpoint, {checkpointPath}, was kept: resume it with --resume and a lower --lr (or a longer --warmup)";
                // Only advice about the checkpoint: the exception's message already says to lower the rate.
                if (!e.Message.Contains("was kept", StringComparison.Ordinal) && File.Exists(checkpointPath) && advice.Contains(checkpointPath, StringComparison.Ordinal))
                    cli.Error.WriteLine(advice + ".");
                return 1;
            }
            catch (CheckpointMismatchException e)
            {
                // Options that do not match the checkpoint (its shape, its activation bits): a usage error, exit 2, as a
                // --batch or --seed other than the run's is.
                throw new UsageException(e.Message);
            }
            catch (InvalidDataException e)
            {
                // A bad data file or checkpoint is the user's file, not a bug: one line and exit 1, like the model errors.
                throw new IOException(e.Message, e);
            }
            catch (OperationCanceledException) when (cancellation.IsCancellationRequested)
            {
                // Stopped before the run began (reading the data, training the tokenizer): nothing written.
                cli.Error.WriteLine("cancelled before the first step: nothing written.");
                return 130;
            }
        })));
        return command;
    }

    /// <summary>
    /// A note when --data on a resume is not the text the run was started on: the run goes on over the token streams in
    /// its checkpoint, and a new corpus given to "fine-tune" was ignored without a word. Compared by the fingerprint the
    /// checkpoint keeps (its text read and split, not tokenized); regular files only (a pipe cannot be read twice, and a
    /// run whose text was moved or deleted still resumes); null when they match, cannot be read, or the checkpoint
    /// predates fingerprints.
    /// </summary>
    private static string? DataDiffers(IReadOnlyList<string> paths, TrainingRun run, CancellationToken cancellation)
    {
        if (run.DataFingerprint is not { } started) return null;
        try
        {
            // File.Exists is true for a FIFO too; its length reads 0 (as an empty file's, which has nothing to compare).
            foreach (var p in paths)
                if (!File.Exists(p) || PathIdentity.IsSpecialFile(p) || PathIdentity.Length(p) <= 0) return null;
            if (TrainingCorpus.Load(paths, cancellation: cancellation).Fingerprint == started) return null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or InvalidDataException or FormatException)
        {
            return null;
        }
        return $"note: --data {string.Join(" ", paths)} is not the text this run was started on: a resumed run goes on over the token streams in its checkpoint ({run.Train.Length:N0} training tokens) and does not read --data. To train on this text, start a new run (another -o, or delete the checkpoint).";
    }

    /// <summary>The training hyper-parameters by their flags: a negative or non-finite value was taken silently (or as "default").</summary>
    private static void CheckSettings(ParseResult r, Option<float> lr, Option<int> warmup, Option<float> weightDecay, Option<int> threads, Option<int> ff,
        Option<int> kvHeads, Option<int> vocab)
    {
        if (r.GetValue(lr) is var rate && !(float.IsFinite(rate) && rate > 0)) throw new UsageException($"--lr must be a positive learning rate; got {rate}.");
        if (r.GetValue(warmup) is < 0 and var w) throw new UsageException($"--warmup must be 0 or more steps; got {w}.");
        if (r.GetValue(weightDecay) is var decay && !(float.IsFinite(decay) && decay >= 0)) throw new UsageException($"--weight-decay must be 0 or more; got {decay}.");
        if (r.GetValue(threads) is < 0 and var t) throw new UsageException($"--threads (-t) must be ≥ 0 (0: every physical core); got {t}.");
        // As generate's: -t 9999 ran without a word, hundreds of times slower (workers sharing 2 CPUs wait on each other every step).
        if (r.GetValue(threads) is > ModelOptions.MaxThreads and var tt) throw new UsageException($"--threads (-t) must be at most {ModelOptions.MaxThreads}; got {tt}.");
        if (r.GetValue(ff) is < 0 and var f) throw new UsageException($"--ff must be a positive width (0 or absent: 8/3·dim); got {f}.");
        if (r.GetValue(kvHeads) is < 0 and var kv) throw new UsageException($"--kv-heads must be a positive number dividing --heads (0 or absent: --heads); got {kv}.");
        if (r.GetValue(vocab) is < 257 and var v)
            throw new UsageException($"--vocab {v} cannot hold the end-of-text token and the 256 byte tokens; use at least 257 (merges come on top).");
    }

    /// <summary>
    /// No file train writes may be one of its --data files, by any name (a link to it included): the text would be
    /// replaced (by the model, the plot, or its own last 5 %).
    /// </summary>
    /// <summary>
    /// The run's outputs are different files: --heldout over --out (or the plot, or the checkpoint) was replaced by the
    /// model when it was written, and the run still pointed `bitnet eval` at it.
    /// </summary>
    private static void CheckOutputsDiffer(params (string Option, string? Path)[] outputs)
    {
        for (int i = 0; i < outputs.Length; i++)
            for (int j = i + 1; j < outputs.Length; j++)
            {
                if (outputs[i].Path is not { } a || outputs[j].Path is not { } b) continue;
                if (string.Equals(Path.GetFullPath(a), Path.GetFullPath(b), PathIdentity.Comparison) || OutputFile.SameFile(a, b))
                    throw new UsageException($"{outputs[i].Option} and {outputs[j].Option} are the same file ({a}); one would replace the other. Give another path.");
            }
    }

    private static void CheckOutputsAreNotInputs(string[] data, params (string Option, string? Path)[] outputs)
    {
        foreach (var (option, path) in outputs)
        {
            if (path is null) continue;
            foreach (var input in data)
                if (OutputFile.SameFile(path, input))
                    throw new UsageException($"{option} {path} is the --data file {input}; writing it would replace the training text. Give another path.");
        }
    }

    /// <summary>
    /// Every activation buffer of the run must fit one array (the attention probabilities, batch·heads·ctx², and the
    /// logits, batch·ctx·vocab, first of all): a run that cannot start used to fail with an OverflowException (a stack
    /// trace) only after the tokenizer was trained.
    /// </summary>
    private static void CheckBuffersFit(TrainingShape shape, int batch)
    {
        if (TrainingModel.BufferTooLarge(shape, batch) is { } tooLarge)
            throw new UsageException($"--ctx {shape.ContextLength} with --batch {batch}, --heads {shape.Heads}, --vocab {shape.VocabSize}: {tooLarge}. " +
                "Lower --ctx, --batch, --vocab or --heads.");
    }

    private static void WriteHeldOut(CliConsole cli, string path, string text)
    {
        AtomicFile.Write(path, stream =>
        {
            var bytes = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false).GetBytes(text);
            stream.Write(bytes);
        });
        cli.Output.WriteLine($"wrote the held-out text to {path} (score it with `bitnet eval --data {path} --parse-special`)");
    }

    private static int Steps(long tokens, int batch, int contextLength)
    {
        try
        {
            return TrainingRun.StepsFor(tokens, batch, contextLength);
        }
        catch (InvalidOperationException e)
        {
            throw new UsageException($"--tokens: {e.Message}");
        }
    }

    private static void RequireWritable(string path)
    {
        var directory = Path.GetDirectoryName(path) ?? ".";
        if (!Directory.Exists(directory)) throw new IOException($"cannot write {path}: the directory {directory} does not exist.");
        var probe = Path.Combine(directory, $".{Path.GetFileName(path)}.{Environment.ProcessId}.probe");
        try
        {
            File.WriteAllBytes(probe, []);
            File.Delete(probe);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"cannot write {path}: {e.Message}", e);
        }
    }

    private static void Loop(CliConsole cli, TrainingRun run, string checkpoint, int valEvery, int checkpointEvery, CancellationToken cancellation)
    {
        bool terminal = ReferenceEquals(cli.Output, Console.Out) && !Console.IsOutputRedirected;
        var clock = Stopwatch.StartNew();
        int startStep = run.Step;
        // The console's loss is a moving average (0.95); a resumed run rebuilds it from the checkpoint's loss history, so it
        // reads as the uninterrupted run's (it restarted from the first loss after the resume: different for ~100 steps).
        float smoothed = float.NaN;
        foreach (var (_, past) in run.TrainLosses) smoothed = float.IsNaN(smoothed) ? past : 0.95f * smoothed + 0.05f * past;

        void Log(string line)
        {
            if (terminal) AnsiConsole.MarkupLine(Markup.Escape(line));
            else cli.Output.WriteLine(line);
        }

        string Status()
        {
            double tps = (run.Step - startStep) * (double)run.TokensPerStep / Math.Max(clock.Elapsed.TotalSeconds, 1e-9);
            return string.Create(CultureInfo.InvariantCulture, $"step {run.Step}/{run.Options.TotalSteps} loss {smoothed:F3} {tps:F0} tok/s");
        }

        void StepAndReport(Action<string>? describe)
        {
            float loss = run.StepOnce();
            smoothed = float.IsNaN(smoothed) ? loss : 0.95f * smoothed + 0.05f * loss;
            describe?.Invoke(Status());
            if (run.Step % valEvery == 0 || run.Done)
            {
                float val = run.Validate();
                Log(string.Create(CultureInfo.InvariantCulture,
                    $"{Status()}  val {val:F3}  lr {run.Options.Schedule.At(run.Step):0.###e0}  |g| {run.Optimizer.LastGradNorm:F2}  elapsed {clock.Elapsed:hh\\:mm\\:ss}"));
            }
            if (run.Step % checkpointEvery == 0 || run.Done)
            {
                run.SaveCheckpoint(checkpoint);
                var stability = run.StabilityIndex();
                Log($"checkpoint {Path.GetFileName(checkpoint)} at step {run.Step}; codes changed since the last checkpoint: " +
                    string.Join(", ", stability.Select((s, l) => string.Create(CultureInfo.InvariantCulture, $"L{l} {s:P2}"))));
            }
        }

        if (!terminal)
        {
            while (!run.Done && !cancellation.IsCancellationRequested) StepAndReport(null);
            return;
        }
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn(), new SpinnerColumn())
            .Start(context =>
            {
                var task = context.AddTask(Status(), maxValue: run.Options.TotalSteps);
                task.Value = run.Step;
                while (!run.Done && !cancellation.IsCancellationRequested)
                {
                    StepAndReport(s => task.Description = Markup.Escape(s));
                    task.Value = run.Step;
                }
            });
    }
}

/// <summary>The loss curve (training loss per step, its moving average, validation loss) as an SVG.</summary>
internal static class LossPlot
{
    public static void Write(string path, TrainingRun run)
    {
        var plot = new SvgLinePlot
        {
            Title = $"{Path.GetFileNameWithoutExtension(path)}: {run.Options.Shape}, {(run.Options.FullPrecision ? "full precision" : "ternary")}",
            XLabel = "optimizer step",
            YLabel = "cross-entropy (nats / token)",
        };
        if (run.TrainLosses.Count > 0)
        {
            var raw = new List<(double X, double Y)>(run.TrainLosses.Count);
            var avg = new List<(double X, double Y)>(run.TrainLosses.Count);
            double m = run.TrainLosses[0].Loss;
            foreach (var p in run.TrainLosses)
            {
                raw.Add((p.Step, p.Loss));
                avg.Add((p.Step, m = 0.95 * m + 0.05 * p.Loss));
            }
            plot.Series.Add(new("train (per step)", raw) { Color = "#b0c4de", Width = 1 });
            plot.Series.Add(new("train (average)", avg) { Color = "#4682b4", Width = 2 });
        }
        if (run.ValidationLosses.Count > 0)
        {
            var val = new List<(double X, double Y)>(run.ValidationLosses.Count);
            foreach (var p in run.ValidationLosses) val.Add((p.Step, p.Loss));
            plot.Series.Add(new("validation", val) { Color = "#ff4500", Width = 2, Markers = true });
        }
        // A unique hidden temporary, removed on failure (a fixed "path.tmp" was left behind, and shared by two runs).
        BitNetSharp.Formats.AtomicFile.Write(path, stream =>
        {
            using var w = new StreamWriter(stream, new System.Text.UTF8Encoding(false), leaveOpen: true);
            plot.Write(w);
        });
    }
}
