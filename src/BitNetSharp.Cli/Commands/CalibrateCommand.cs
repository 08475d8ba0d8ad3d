using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using BitNetSharp.Evaluation;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Model;
using BitNetSharp.Monitoring;
using BitNetSharp.Threading;
using BitNetSharp.Training;

namespace BitNetSharp.Cli.Commands;

/// <summary>
/// <c>bitnet calibrate -m MODEL --data FILE [--samples N] [--ctx N] [--kl-budget X] [--seed S] --out OUT.gguf</c>: runs
/// calibration text through the model, reports per-layer, per-input activation statistics (table and SVG plots),
/// searches per-layer activation bit widths greedily within a mean-KL budget on held-out windows
/// (<see cref="BitWidthSearch"/>), and writes OUT.gguf — the input file with the widths in its metadata.
/// </summary>
public static class CalibrateCommand
{
    /// <summary>The most the bit-width search's reference distributions may take on disk (2B4T: 512 positions are 0.26 GB).</summary>
    public const long MaxReferenceBytes = 4L << 30;

    /// <summary>A change in percent with its sign, two decimals; one that rounds to zero reads 0.00 (a tiny negative read "-+0.00").</summary>
    public static string SignedPercent(double percent)
    {
        double r = Math.Round(percent, 2);
        return r == 0 ? "0.00" : r.ToString("+0.00;-0.00", CultureInfo.InvariantCulture);
    }

    /// <summary>Scored positions of the held-out windows and the bytes of their full distributions (float per token).</summary>
    public static (long Positions, long Bytes) ReferenceSize(int samples, int window, int vocab)
    {
        long positions = (long)(samples - (samples + 1) / 2) * (window - window / 2);
        return (positions, positions * vocab * 4);
    }

    public static Command Create(CliConsole cli)
    {
        var model = new Option<string?>("--model", "-m") { Description = "A .gguf model (default: the bundled model). Hugging Face directories: convert to GGUF first." };
        var data = new Option<string>("--data") { Description = "UTF-8 calibration text.", Required = true };
        var samples = new Option<int>("--samples") { Description = "Windows of --ctx tokens drawn from the text (seeded): the first half for statistics, the rest held out for the search.", DefaultValueFactory = _ => 8 };
        var ctx = new Option<int>("--ctx", "-c") { Description = "Window length in tokens, 4 to the model's context (default, or 0: min(model context, 256))." };
        var budget = new Option<double>("--kl-budget") { Description = "Largest mean KL divergence (nats per position) from the 8-bit model the chosen widths may cost.", DefaultValueFactory = _ => 0.01 };
        var seed = new Option<int>("--seed") { Description = "Seed for drawing the windows (0 or more).", DefaultValueFactory = _ => 1 };
        var maxSteps = new Option<int>("--max-steps") { Description = "Stop after this many accepted steps (default: until the budget is spent)." };
        var fullSearch = new Option<bool>("--full-search")
        {
            Description = "Measure every candidate every round (the exact greedy path; several times slower). By default each round re-measures candidates in order of their last KL and takes the first still cheapest.",
        };
        var output = new Option<string>("--out", "-o") { Description = "The calibrated .gguf to write (the input with bitnetsharp.activation_bits set).", Required = true };
        var report = new Option<string?>("--report") { Description = "Markdown report to write (default: OUT without .gguf + .calibration.md, with -crest.svg and -histogram.svg beside it)." };
        var threads = new Option<int>("--threads", "-t") { Description = "Worker threads (default: physical cores); the result does not depend on it." };
        var json = new Option<bool>("--json") { Description = "Print the result as one JSON document." };
        var tune = new Option<bool>("--tune") { Description = "Instead: domain adaptation. Keep every ternary code, tune only the RMSNorm gains and per-tensor weight scales on --data (I2_S models), write OUT.gguf of the same size." };
        var tuneSteps = new Option<int>("--steps") { Description = "With --tune: optimizer steps (batches of 8 windows of --ctx tokens).", DefaultValueFactory = _ => 200 };
        var tuneLr = new Option<float>("--lr") { Description = "With --tune: peak learning rate (on the gains and on log scale).", DefaultValueFactory = _ => 2e-3f };
        var command = new Command("calibrate", "Activation statistics and a per-layer activation bit-width search within a KL budget; writes a calibrated GGUF. With --tune: tunes norm gains and scales on domain text.")
        {
            model, data, samples, ctx, budget, seed, maxSteps, fullSearch, output, report, threads, json, tune, tuneSteps, tuneLr,
        };
        // With the cancellation token: Ctrl-C stops the search between forward passes, so its scratch reference file (263 MB
        // on 2B4T) is deleted; without it the process ended at once and left the file.
        command.SetAction((r, cancellation) => Task.FromResult(cli.Guard(() =>
        {
            try
            {
                // An option of the other mode was ignored without a word (--tune --json printed text, breaking scripts).
                bool tuning = r.GetValue(tune);
                // System.Random(int) draws from |seed|: --seed -3 drew the windows of --seed 3.
                if (r.GetValue(seed) < 0) throw new UsageException($"--seed must be 0 to {int.MaxValue}; got {r.GetValue(seed)}.");
                foreach (var option in tuning ? new Option[] { samples, budget, maxSteps, fullSearch, report, json } : [tuneSteps, tuneLr])
                    if (r.GetResult(option) is { Implicit: false })
                        throw new UsageException(tuning
                            ? $"{option.Name} applies to the bit-width search, not to --tune (which takes --data, --ctx, --steps, --lr, --seed, --out, -t)."
                            : $"{option.Name} applies to --tune only.");
                if (tuning)
                    return CalibrateTune.Run(cli, r.GetValue(model), r.GetRequiredValue(data), r.GetValue(ctx), r.GetValue(tuneSteps), r.GetValue(tuneLr),
                        r.GetValue(seed), r.GetRequiredValue(output), r.GetValue(threads), cancellation);
                return Run(cli, r.GetValue(model), r.GetRequiredValue(data), r.GetValue(samples), r.GetValue(ctx), r.GetValue(budget), r.GetValue(seed),
                    r.GetResult(maxSteps) is { Implicit: false } ? r.GetValue(maxSteps) : null, r.GetRequiredValue(output), r.GetValue(report), r.GetValue(threads), r.GetValue(json), cancellation,
                    r.GetValue(fullSearch));
            }
            catch (OperationCanceledException) when (cancellation.IsCancellationRequested)
            {
                cli.Error.WriteLine("cancelled: nothing written.");
                return 130;
            }
            catch (InvalidDataException e)
            {
                throw new IOException(e.Message, e);
            }
        })));
        return command;
    }

    private static int Run(CliConsole cli, string? modelPath, string dataPath, int samples, int ctxOption, double budget, int seed, int? maxSteps,
        string outPath, string? reportPath, int threads, bool json, CancellationToken cancellation = default, bool fullSearch = false)
    {
        if (!(budget > 0) || !double.IsFinite(budget)) throw new UsageException($"--kl-budget must be a positive number of nats; got {budget.ToString(CultureInfo.InvariantCulture)}.");
        if (samples < 2) throw new UsageException($"--samples must be at least 2 (one window for statistics, one held out); got {samples}.");
        // 0 ran the whole search (0 stood for "not given"), which may take hours and lowers widths the user asked to keep.
        if (maxSteps < 1) throw new UsageException($"--max-steps must be at least 1; got {maxSteps}. Leave it out to search until the budget is spent.");
        if (ctxOption < 0) throw new UsageException($"--ctx must be a window length in tokens (0: the default); got {ctxOption}.");
        if (threads < 0) throw new UsageException($"--threads must be ≥ 0 (0: every physical core); got {threads}.");
        if (string.IsNullOrWhiteSpace(dataPath)) throw new UsageException("--data: the path is empty; give the calibration text file.");
        if (reportPath is not null && string.IsNullOrWhiteSpace(reportPath)) throw new UsageException("--report: the path is empty; give a Markdown file path, or leave --report out.");
        if (reportPath is not null && (Directory.Exists(reportPath) || reportPath.EndsWith('/') || reportPath.EndsWith(Path.DirectorySeparatorChar)))
            throw new UsageException($"--report {reportPath} is a directory; give a file path such as {Path.Combine(reportPath, "calibration.md")}.");
        // An empty --out read "--out : the calibrated model is a GGUF"; said as every output option says it.
        if (string.IsNullOrWhiteSpace(outPath)) throw new UsageException("--out is empty; give a file path.");
        if (!outPath.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase)) throw new UsageException($"--out {outPath}: the calibrated model is a GGUF; give a path ending in .gguf.");
        // The report is Markdown with its plots beside it (REPORT-crest.svg, ...): --report y.svg wrote Markdown into y.svg.
        if (reportPath is not null && !reportPath.EndsWith(".md", StringComparison.OrdinalIgnoreCase))
            throw new UsageException($"--report {reportPath}: the report is Markdown (its plots are written beside it); give a path ending in .md.");
        string outFull = Path.GetFullPath(outPath);
        string stem = outFull[..^".gguf".Length];
        string? reportGiven = reportPath;
        reportPath = reportPath is null ? stem + ".calibration.md" : Path.GetFullPath(reportPath);
        string reportStem = reportPath.EndsWith(".md", StringComparison.OrdinalIgnoreCase) ? reportPath[..^3] : reportPath;
        // Checked as every output option is (a missing or unwritable folder named with its flag: "Cannot write X: the
        // directory ... does not exist" named none). The default report lies beside --out.
        OutputFile.Check("--out", outPath);
        // The default report is beside --out: a directory of that name is named as the report, not as a flag not given.
        if (reportGiven is not null) OutputFile.Check("--report", reportGiven);
        else if (Directory.Exists(reportPath))
            throw new UsageException($"the report beside --out, {reportPath}, is a directory; give --report FILE.md, or another --out.");
        // The text is read first and the outputs are moved into place after the search: one of them on --data replaced it.
        OutputFile.CheckNotInput("--out", outFull, ("--data", dataPath));
        foreach (var written in new[] { reportPath, reportStem + "-crest.svg", reportStem + "-histogram.svg" })
            OutputFile.CheckNotInput("--report", written, ("--data", dataPath));

        string text = TrainingCorpus.ReadText(dataPath, cancellation, m => cli.Error.WriteLine(m));
        var (weights, tokenizer) = ModelOptions.Load(ModelOptions.ResolveModel(modelPath));
        using var _ = weights;
        if (weights.Gguf is not { } gguf)
            throw new UsageException($"{weights.SourcePath} is not a GGUF; calibrate writes a copy of a GGUF. Convert it first: bitnet convert {weights.SourcePath} model.gguf");
        OutputFile.CheckNotInput("--out", outPath, ("--model", gguf.FilePath));
        foreach (var written in new[] { reportPath, reportStem + "-crest.svg", reportStem + "-histogram.svg" })
            if (OutputFile.SameFile(written, outFull) || OutputFile.SameFile(written, gguf.FilePath))
                throw new UsageException($"--report {reportPath} would overwrite {written}, the {(OutputFile.SameFile(written, outFull) ? "calibrated" : "input")} model; give another report path.");
        if (tokenizer is null) throw new UsageException($"{weights.SourcePath} has no tokenizer; calibrate needs one to turn the text into tokens.");
        var c = weights.Config;
        int window = ctxOption > 0 ? ctxOption : Math.Min(c.ContextLength, 256);
        if (window < 4 || window > c.ContextLength) throw new UsageException($"--ctx {window} must be 4 to {c.ContextLength} (the model's context), or 0 for the default ({Math.Min(c.ContextLength, 256)}).");
        // Special tokens' text (TinyStories' <|endoftext|>) as those tokens, as the trainer and --tune read it.
        var tokens = tokenizer.Encode(text, addBos: false, parseSpecial: true);
        int available = (tokens.Length - 1) / window;
        if (available < samples)
            throw new UsageException($"{dataPath} is {tokens.Length:N0} token{(tokens.Length == 1 ? "" : "s")}: {available} window{(available == 1 ? "" : "s")} of {window} (windows of {window} share their boundary token: k of them need k·{window} + 1), fewer than --samples {samples}. Give more text, fewer samples or a smaller --ctx.");
        // The search keeps the held-out windows' full next-token distributions on disk beside --out (the exact KL the
        // budget promises): refuse a size that would not stay in the page cache, before any work.
        var (heldPositions, referenceBytes) = ReferenceSize(samples, window, c.VocabSize);
        if (referenceBytes > MaxReferenceBytes)
            throw new UsageException(string.Create(CultureInfo.InvariantCulture,
                $"--samples {samples} --ctx {window} would keep {referenceBytes / 1e9:F1} GB of reference distributions ({heldPositions:N0} positions × {c.VocabSize:N0} tokens × 4 B); the limit is {MaxReferenceBytes / 1e9:F1} GB. Use fewer --samples or a smaller --ctx."));
        int bos = tokenizer.AddBosToken ? tokenizer.BosId : -1;

        // Seeded draw of non-overlapping windows: the first half for statistics, the rest held out.
        var order = Enumerable.Range(0, available).ToArray();
        new Random(seed).Shuffle(order);
        int statCount = (samples + 1) / 2;
        var statStarts = order.Take(statCount).Select(w => w * window).Order().ToList();
        var heldStarts = order.Skip(statCount).Take(samples - statCount).Select(w => w * window).Order().ToList();

        // The search starts from 8 bits and measures against the 8-bit model: widths the input already holds (a model
        // trained with --activation-bits) are replaced by what it finds. Said, not done silently.
        if (ActivationBits.FromGguf(gguf, c.Layers) is { AllEight: false } stored)
            cli.Error.WriteLine($"note: {gguf.FilePath} holds activation bits {stored}; the search starts from 8 bits everywhere against the 8-bit model, and the widths it writes replace them.");
        using var pool = new WorkerPool(threads);
        using var engine = new Transformer(weights, Math.Min(window, 128), pool) { ActivationBits = ActivationBits.Uniform(c.Layers) };
        var stats = new ActivationStatistics(c);
        engine.Observer = stats;
        Func<int, int> bytes = id => tokenizer.TokenBytes(id).Length;
        QualityEvaluator.Evaluate(engine, tokens, window, window, bytes, bos, windowStarts: statStarts, cancellation: cancellation);
        engine.Observer = null;
        var summary = stats.Summarize();

        var log = json ? null : new Action<string>(line => cli.Output.WriteLine(line));
        log?.Invoke(string.Create(CultureInfo.InvariantCulture,
            $"calibration: {Count(statStarts.Count, "window")} of {window} tokens for statistics, {heldStarts.Count} held out; KL budget {budget:G4} nats; searching…"));
        var result = BitWidthSearch.Run(engine, tokens, window, heldStarts, bos, budget, Path.GetDirectoryName(outFull) ?? ".", bytes,
            maxSteps ?? int.MaxValue, log, cancellation, lazy: !fullSearch);
        var baseline = result.Start;

        // Outputs: the model (what the search was for), then the report (Markdown + SVG); each written whole or not at
        // all, and a report that cannot be written does not take the model with it.
        GgufCopy.WithMetadata(gguf, outFull, [new(ActivationBits.GgufKey, GgufValue.FromArray(GgufArray.Create(BitsArray(result.Bits, c.Layers))))]);
        try
        {
            WriteReport(reportPath, reportStem, weights.SourcePath, dataPath, window, statStarts.Count, heldStarts.Count, seed, budget, summary, result, maxSteps, fullSearch);
        }
        catch (IOException e)
        {
            throw new IOException($"{e.Message} The calibrated model was written to {outFull}.", e);
        }

        var ic = CultureInfo.InvariantCulture;
        if (json)
        {
            using var stream = new MemoryStream();
            using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
            {
                w.WriteStartObject();
                w.WriteString("model", weights.SourcePath);
                w.WriteString("out", outFull);
                w.WriteString("report", reportPath);
                w.WriteString("activation_bits", result.Bits.ToString());
                w.WriteNumber("kl_budget", budget);
                w.WriteMeasured("kl_mean", result.Kl.MeanKl);
                w.WriteMeasured("kl_median", result.Kl.MedianKl);
                w.WriteMeasured("kl_p99", result.Kl.P99Kl);
                w.WriteMeasured("kl_max", result.Kl.MaxKl);
                w.WriteMeasured("top_token_agreement", result.Kl.TopAgreement);
                w.WriteMeasured("perplexity_8bit", baseline.Perplexity);
                w.WriteMeasured("perplexity", result.Model.Perplexity);
                w.WriteString("search", fullSearch ? "full" : "lazy");
                w.WriteNumber("evaluations", result.Evaluations);
                w.WriteStartArray("steps");
                foreach (var s in result.Steps)
                {
                    w.WriteStartObject();
                    w.WriteNumber("layer", s.Layer);
                    w.WriteString("input", HealthNames.InputLabels[(int)s.Input]);
                    w.WriteNumber("from", s.FromBits);
                    w.WriteNumber("to", s.ToBits);
                    w.WriteMeasured("kl_mean", s.MeanKl);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            cli.Output.WriteLine(Encoding.UTF8.GetString(stream.ToArray()));
            return 0;
        }
        cli.Output.WriteLine(string.Create(ic, $"activation bits: {result.Bits}  ({Count(result.Steps.Count, "step")}, {Count(result.Evaluations, "evaluation")})"));
        cli.Output.WriteLine(string.Create(ic,
            $"held-out: perplexity {baseline.Perplexity:F4} (8-bit) → {result.Model.Perplexity:F4} ({SignedPercent(100 * (result.Model.Perplexity / baseline.Perplexity - 1))} %); KL mean {result.Kl.MeanKl:G4}, median {result.Kl.MedianKl:G4}, p99 {result.Kl.P99Kl:G4}, max {result.Kl.MaxKl:G4} nats; same top token {100 * result.Kl.TopAgreement:F2} %"));
        cli.Output.WriteLine($"wrote {outFull} and {reportPath}");
        return 0;
    }

    /// <summary>"1 window", "2 windows" ("1 windows" was printed for --samples 2).</summary>
    private static string Count(int n, string noun) => string.Create(CultureInfo.InvariantCulture, $"{n} {noun}{(n == 1 ? "" : "s")}");

    private static byte[] BitsArray(ActivationBits bits, int layers)
    {
        var b = new byte[layers * HealthNames.InputCount];
        for (int l = 0; l < layers; l++)
            for (int i = 0; i < HealthNames.InputCount; i++) b[l * HealthNames.InputCount + i] = (byte)bits[l, (BitLinearInput)i];
        return b;
    }

    private static void WriteReport(string path, string stem, string model, string data, int ctx, int statWindows, int heldWindows, int seed, double budget,
        IReadOnlyList<InputStatistics> stats, BitWidthSearchResult result, int? maxSteps, bool fullSearch)
    {
        var ic = CultureInfo.InvariantCulture;
        var md = new StringBuilder();
        md.Append(ic, $"# Calibration of {Path.GetFileName(model)}\n\n");
        // The split as made ("half and half" was printed for an odd --samples too), and the held-out KL for what it is:
        // measured on the windows the search chose with, so an in-sample figure.
        md.Append(ic, $"Text `{data}`, {Count(statWindows + heldWindows, "window")} of {ctx} tokens (seed {seed}): {statWindows} for the statistics, {heldWindows} held out for the bit-width search (its KL figures are measured on those windows, the ones it chose with). KL budget {budget:G4} nats (mean per position, against the 8-bit model).\n\n");
        if (maxSteps is { } limit && result.Steps.Count >= limit)
            md.Append(ic, $"The search stopped at --max-steps {limit}, not at the budget.\n\n");
        md.Append(ic, $"Result: activation bits `{result.Bits}` — held-out perplexity {result.Start.Perplexity:F4} (8-bit) → {result.Model.Perplexity:F4}; KL mean {result.Kl.MeanKl:G4}, median {result.Kl.MedianKl:G4}, p99 {result.Kl.P99Kl:G4}, max {result.Kl.MaxKl:G4} nats; same top token {100 * result.Kl.TopAgreement:F2} %.\n\n");
        md.Append("## Activation statistics (per token, before quantization)\n\n");
        md.Append("Outlier channel: |x_c| ≥ 6·RMS of the token in ≥ 5 % of tokens. Crest = absmax/RMS: an 8-bit code gives a typical entry about 127/crest levels.\n\n");
        foreach (var s in stats)
            if (s.NonFiniteTokens > 0)
                md.Append(ic, $"**Layer {s.Layer} {HealthNames.InputLabels[(int)s.Input]}: {s.NonFiniteTokens} token(s) with NaN or ±∞ entries**, left out of the row below.\n\n");
        md.Append("| layer | input | tokens | absmax p50 | absmax p99 | absmax max | crest mean | outlier channels | top channel's share | bits |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        foreach (var s in stats)
            md.Append(ic, $"| {s.Layer} | {HealthNames.InputLabels[(int)s.Input]} | {s.Tokens} | {s.AbsMaxP50:G4} | {s.AbsMaxP99:G4} | {s.AbsMaxMax:G4} | {s.CrestMean:F2} | {s.OutlierChannels} | {100 * s.TopOutlierShare:F1} % | {result.Bits[s.Layer, s.Input]} |\n");
        md.Append("\n## Search (greedy: a one-step lowering each round, the cheapest found, while the mean KL stays within the budget)\n\n");
        md.Append(ic, $"{(fullSearch ? "Every candidate measured every round (--full-search)" : "Lazy rounds: candidates re-measured in order of their last KL, the first still cheapest taken")}; {result.Evaluations} evaluations.\n\n");
        if (result.Steps.Count == 0) md.Append("No step fit the budget: every input stays at 8 bits.\n");
        else
        {
            md.Append("| step | layer | input | bits | mean KL after | perplexity after |\n|---:|---:|---|---|---:|---:|\n");
            for (int i = 0; i < result.Steps.Count; i++)
            {
                var s = result.Steps[i];
                md.Append(ic, $"| {i + 1} | {s.Layer} | {HealthNames.InputLabels[(int)s.Input]} | {s.FromBits} → {s.ToBits} | {s.MeanKl:G4} | {s.Perplexity:F4} |\n");
            }
        }
        string crestSvg = stem + "-crest.svg", histSvg = stem + "-histogram.svg";
        md.Append(ic, $"\n![crest factor per layer]({Path.GetFileName(crestSvg)})\n\n![histogram of |x|/absmax]({Path.GetFileName(histSvg)})\n");

        var crest = new SvgLinePlot { Title = "Crest factor (absmax/RMS) per layer", XLabel = "layer", YLabel = "mean absmax/RMS" };
        var hist = new SvgLinePlot { Title = "Share of entries by |x|/absmax (all layers)", XLabel = "|x| / absmax", YLabel = "share of entries" };
        for (int i = 0; i < HealthNames.InputCount; i++)
        {
            var rows = stats.Where(s => (int)s.Input == i).ToList();
            crest.Series.Add(new SvgSeries(HealthNames.InputLabels[i], rows.Select(s => ((double)s.Layer, s.CrestMean)).ToList()) { Markers = true });
            var h = new double[ActivationStatistics.Bins];
            foreach (var s in rows) for (int b = 0; b < h.Length; b++) h[b] += s.Histogram[b] / rows.Count;
            hist.Series.Add(new SvgSeries(HealthNames.InputLabels[i], h.Select((v, b) => ((b + 0.5) / h.Length, v)).ToList()) { Markers = true });
        }
        WriteAtomically(crestSvg, w => crest.Write(w));
        WriteAtomically(histSvg, w => hist.Write(w));
        WriteAtomically(path, w => w.Write(md.ToString()));
    }

    private static void WriteAtomically(string path, Action<TextWriter> write) =>
        BitNetSharp.Formats.AtomicFile.Write(path, stream =>
        {
            using var w = new StreamWriter(stream, new UTF8Encoding(false), 1 << 16, leaveOpen: true);
            write(w);
        }, 1 << 16);
}
