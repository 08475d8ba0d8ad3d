using System.Diagnostics;
using System.Globalization;
using BitNetSharp.Threading;
using BitNetSharp.Training;

namespace BitNetSharp.Cli.Commands;

/// <summary>
/// <c>bitnet calibrate --tune -m MODEL --data DOMAIN.txt [--steps N] [--lr X] [--ctx N] [--seed S] --out OUT.gguf</c>:
/// domain adaptation without retraining (<see cref="NormScaleTuner"/>): every ternary code stays as it is; only the
/// RMSNorm gains and the per-tensor weight scales are tuned on the first 90% of the text (cut at a line start), and
/// the last 10% is held out to report the loss before and after. OUT.gguf is the input file with those values replaced.
/// </summary>
internal static class CalibrateTune
{
    public static int Run(CliConsole cli, string? modelPath, string dataPath, int ctxOption, int steps, float lr, int seed, string outPath, int threads,
        CancellationToken cancellation = default)
    {
        if (steps < 1) throw new UsageException($"--steps must be at least 1; got {steps}.");
        if (ctxOption < 0) throw new UsageException($"--ctx must be a window length in tokens (0: the default); got {ctxOption}.");
        if (threads < 0) throw new UsageException($"--threads must be ≥ 0 (0: every physical core); got {threads}.");
        if (!(lr > 0) || !float.IsFinite(lr)) throw new UsageException($"--lr must be a positive number; got {lr.ToString(CultureInfo.InvariantCulture)}.");
        if (string.IsNullOrWhiteSpace(dataPath)) throw new UsageException("--data: the path is empty; give the domain text file.");
        if (string.IsNullOrWhiteSpace(outPath)) throw new UsageException("--out is empty; give a file path.");
        if (!outPath.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase)) throw new UsageException($"--out {outPath}: the tuned model is a GGUF; give a path ending in .gguf.");
        // A directory, a missing folder, the text itself (through a link too): refused before the run, which the rename
        // at its end would otherwise fail after every step.
        string outFull = OutputFile.CheckNotInput("--out", outPath, ("--data", dataPath));

        var corpus = TrainingCorpus.Split([TrainingCorpus.ReadText(dataPath, cancellation, m => cli.Error.WriteLine(m))], 0.1);
        var (weights, tokenizer) = ModelOptions.Load(ModelOptions.ResolveModel(modelPath));
        using var _ = weights;
        if (weights.Gguf is not { } gguf)
            throw new UsageException($"{weights.SourcePath} is not a GGUF; --tune writes a copy of a GGUF. Convert it first: bitnet convert {weights.SourcePath} model.gguf --type i2_s");
        OutputFile.CheckNotInput("--out", outPath, ("--model", gguf.FilePath));
        if (tokenizer is null) throw new UsageException($"{weights.SourcePath} has no tokenizer; --tune needs one to turn the text into tokens.");
        int window = ctxOption > 0 ? ctxOption : Math.Min(weights.Config.ContextLength, 256);
        if (window < 2 || window > weights.Config.ContextLength) throw new UsageException($"--ctx {window} must be 2 to {weights.Config.ContextLength} (the model's context).");

        // The trainer's streams (TrainingCorpus.EncodeTrain): documents joined by EOS, a special token's text in them
        // (TinyStories' <|endoftext|>) read as that token; as plain text it became a dozen ids the model never saw.
        int[] Stream(IReadOnlyList<string> documents)
        {
            var ids = new List<int>();
            for (int i = 0; i < documents.Count; i++)
            {
                if (i > 0 && tokenizer.EosId >= 0) ids.Add(tokenizer.EosId);
                ids.AddRange(tokenizer.Encode(documents[i], addBos: false, parseSpecial: true));
            }
            return [.. ids];
        }
        var train = Stream(corpus.TrainDocuments);
        var held = Stream(corpus.ValidationDocuments);
        if (train.Length < window + 1 || held.Length < window + 1)
            throw new UsageException($"{dataPath} is too short: {train.Length:N0} tuning and {held.Length:N0} held-out tokens, each needs at least one window of {window + 1} (give more text or a smaller --ctx).");

        using var pool = new WorkerPool(threads);
        NormScaleTuner tuner;
        try
        {
            tuner = NormScaleTuner.Load(gguf, 8, window, pool);
        }
        catch (ArgumentException e)
        {
            throw new UsageException(e.Message);
        }
        var ic = CultureInfo.InvariantCulture;
        const int heldWindows = 64;
        double before = tuner.Loss(held, heldWindows, () => cancellation.IsCancellationRequested);
        // What the loss is over: the first 64 windows of the held-out tokens, not all of them.
        long scored = (long)Math.Min(heldWindows, (held.Length - 1) / window) * window;
        cli.Output.WriteLine(string.Create(ic,
            $"tuning {tuner.TunableCount:N0} values (RMSNorm gains and per-tensor scales; ternary codes fixed, activation bits {tuner.Model.ActivationBits}) " +
            $"on {train.Length:N0} tokens of {Path.GetFileName(dataPath)}: {steps} steps of 8×{window}, lr {lr:G3}; held-out loss {before:F4} (ppl {PerplexityEvaluator.Format(Math.Exp(before))}) over {scored:N0} of its {held.Length:N0} tokens"));
        var clock = Stopwatch.StartNew();
        float smoothed = float.NaN;
        int every = Math.Max(1, steps / 10);
        try
        {
            tuner.Tune(train, steps, lr, (ulong)seed, (step, loss) =>
            {
                cancellation.ThrowIfCancellationRequested(); // Ctrl-C: stop between steps, nothing written
                smoothed = float.IsNaN(smoothed) ? loss : 0.9f * smoothed + 0.1f * loss;
                if (step % every == 0 || step == steps)
                    cli.Output.WriteLine(string.Create(ic, $"step {step}/{steps} training loss (moving average) {smoothed:F4}  elapsed {clock.Elapsed:hh\\:mm\\:ss}"));
            });
        }
        catch (TrainingDivergedException e)
        {
            cli.Error.WriteLine($"error: {e.Message} Nothing was written.");
            return 1;
        }
        double after = tuner.Loss(held, heldWindows, () => cancellation.IsCancellationRequested);
        // A tuned model no better on the held-out text than the input is not written (it was, with exit 0): the user
        // keeps the input, and is told what to change. An equal loss is no better (it was written).
        if (!(after < before))
        {
            cli.Error.WriteLine(string.Create(ic,
                $"error: the held-out loss went from {before:F4} to {after:F4} nats/token: the tuned model is no better than the input, so it was not written. Lower --lr, change --steps, or give more --data."));
            return 1;
        }
        tuner.Write(outFull);
        cli.Output.WriteLine(string.Create(ic,
            $"held-out loss {before:F4} → {after:F4} nats/token (ppl {PerplexityEvaluator.Format(Math.Exp(before))} → {PerplexityEvaluator.Format(Math.Exp(after))}); wrote {outFull}{(BitNetSharp.Formats.PathIdentity.IsSpecialFile(outFull) ? "" : $" ({BitNetSharp.Formats.PathIdentity.Length(outFull):N0} bytes, as the input)")}"));
        return 0;
    }
}
