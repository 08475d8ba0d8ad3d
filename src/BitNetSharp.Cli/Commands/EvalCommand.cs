using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using BitNetSharp.Evaluation;
using BitNetSharp.Model;
using BitNetSharp.Threading;
using BitNetSharp.Training;
using Spectre.Console;

namespace BitNetSharp.Cli.Commands;

/// <summary>
/// <c>bitnet eval -m MODEL --data FILE [--ctx N] [--stride S] [--kv-type T] [--head-type T] [--kl-reference REF] [--kl-kv-type T]
/// [--save-logits FILE] [--json]</c>: perplexity and bits per byte of a text under a model (windows of ctx tokens every
/// stride tokens, positions from max(ctx/2, ctx − stride) of each scored), and with a reference — another model, the same model with other
/// settings, or a saved-logits file — the KL divergence of the model's next-token distributions from the
/// reference's (mean, median, p99, max), top-token agreement and Δppl, llama-perplexity --kl-divergence style.
/// </summary>
public static class EvalCommand
{
    public static Command Create(CliConsole cli)
    {
        var model = new Option<string?>("--model", "-m") { Description = "A .gguf file or a Hugging Face model directory (default: the bundled model)." };
        var data = new Option<string>("--data") { Description = "A UTF-8 text file to score.", Required = true };
        var parseSpecial = new Option<bool>("--parse-special")
        {
            Description = "Read special-token text in the file (<|endoftext|> between documents, as `train --heldout` writes it) as the tokens, as train and calibrate do. "
                + "Off by default, as in llama-perplexity: text such as WikiText's <unk> stays text.",
        };
        var ctx = new Option<int>("--ctx", "-c") { Description = "Window length in tokens (default: the model's context)." };
        var stride = new Option<int>("--stride") { Description = "Tokens between window starts (default: the window length). Each window scores its positions from max(ctx/2, ctx - stride) on, "
            + "so every scored token has at least ctx/2 of context and none is scored twice: a stride of ctx/2 scores every token after the first window's first half; a shorter one "
            + "scores only the last stride positions of each window (the first window's positions ctx/2 to ctx - stride are skipped); a longer one skips the first half of each window." };
        var llama = new Option<bool>("--llama-perplexity")
        {
            Description = "Score exactly as llama.cpp's llama-perplexity does, so figures compare with its published ones: the text tokenized with BOS when the model adds one, "
                + "tokens/ctx chunks of ctx tokens (each starting with BOS), scoring positions ctx/2 to ctx-2 of each chunk. Without it every window also scores its last "
                + "position (the next window's first token) and the stream has no BOS of its own.",
        };
        var preTokenizer = new Option<string?>("--pre-tokenizer")
        {
            Description = "Split text with this llama.cpp pre-tokenizer (a tokenizer.ggml.pre name) instead of the file's. The official 2B4T GGUF has none: "
                + "BitNetSharp reads it as Llama 3's (as the model was trained), while bitnet.cpp's llama-perplexity falls back to \"default\"; "
                + "give --pre-tokenizer default to score its token stream.",
        };
        var json = new Option<bool>("--json") { Description = "Print one JSON document." };
        var threads = new Option<int>("--threads", "-t") { Description = "Worker threads (default: physical cores)." };
        var kvType = new Option<string>("--kv-type") { Description = "KV-cache type of the evaluated model: f32, f16, int8, fp8.", DefaultValueFactory = _ => "f32" };
        var klReference = new Option<string?>("--kl-reference")
        {
            Description = "Compare with a reference: a model (.gguf or HF directory, same vocabulary) or a logits file saved by --save-logits.",
        };
        var klKvType = new Option<string?>("--kl-kv-type")
        {
            Description = "The reference's KV-cache type; without --kl-reference the reference is this model with that KV type.",
        };
        var bits = ModelOptions.NewActivationBitsOption();
        var headType = ModelOptions.NewHeadTypeOption();
        var weightPages = ModelOptions.NewWeightPagesOption();
        var klBits = ModelOptions.NewActivationBitsOption("--kl-activation-bits");
        klBits.Description = "The reference's activation bit widths (same syntax as --activation-bits, over the reference model's own); without --kl-reference the reference is this model with them.";
        var saveLogits = new Option<string?>("--save-logits") { Description = "Save this model's next-token distributions to FILE, to be a later --kl-reference." };
        var saveTop = new Option<int>("--save-logits-top")
        {
            Description = "Keep each position's top K tokens and the rest's mass (0: full rows, 4 bytes per vocabulary entry).", DefaultValueFactory = _ => 32,
        };
        var command = new Command("eval", "Perplexity and bits per byte of a text file under a model, and KL divergence against a reference.")
        {
            model, data, ctx, stride, json, threads, kvType, bits, headType, weightPages, klReference, klKvType, klBits, saveLogits, saveTop, llama, parseSpecial, preTokenizer,
        };
        // With the cancellation token: Ctrl-C stops between forward passes and a --save-logits file in progress is removed
        // (the process ended at once, leaving its hidden temporary, which on a large vocabulary with full rows is gigabytes).
        command.SetAction((r, cancellation) => Task.FromResult(cli.Guard(() =>
        {
            try
            {
                if (r.GetValue(ctx) is var badCtx && badCtx is < 0 or 1) throw new UsageException($"--ctx (-c) must be a window length of at least 2 tokens (0: the model's context); got {badCtx}.");
                // Without --save-logits the top-K setting has nothing to apply to: an accepted, ignored flag misleads.
                if (r.GetResult(saveTop) is { Implicit: false } && r.GetValue(saveLogits) is null)
                    throw new UsageException("--save-logits-top only applies with --save-logits FILE.");
                if (r.GetValue(stride) is < 0 and var badStride) throw new UsageException($"--stride must be a number of tokens (0: the window length); got {badStride}.");
                if (r.GetValue(threads) is < 0 and var badThreads) throw new UsageException($"--threads (-t) must be ≥ 0 (0: every physical core); got {badThreads}.");
                // A pipe (`--kl-reference <(cat run.bnlg)`) is read once: the check for a logits file took its first bytes, and
                // the file then read "is not a BitNetSharp logits file". A model is mapped, which a pipe cannot be either.
                if (r.GetValue(klReference) is { } pipePath && BitNetSharp.Formats.PathIdentity.IsSpecialFile(pipePath))
                    throw new UsageException($"--kl-reference {pipePath} is a pipe or device, not a file: a saved logits file or model is read by its path (a pipe's bytes can be read only once); save it to a file and give that.");
                // Checked before the text, the model and the reference load (seconds for 2B4T), as every output is.
                if (r.GetValue(saveLogits) is { } earlySave) OutputFile.Check("--save-logits", earlySave);
                bool llamaChunks = r.GetValue(llama);
                if (llamaChunks && r.GetValue(ctx) == 2)
                    throw new UsageException("--llama-perplexity scores positions ctx/2 to ctx-2 of each chunk: --ctx 2 scores none; give at least 3.");
                if (llamaChunks && r.GetValue(saveLogits) is not null)
                    throw new UsageException("--llama-perplexity cannot be combined with --save-logits: a saved logits file follows this tool's own windows.");
                if (llamaChunks && r.GetValue(klReference) is { } rp && LogitsFile.IsLogitsFile(rp))
                    throw new UsageException($"--llama-perplexity cannot compare with a saved logits file ({rp}); give a reference model or run without --llama-perplexity.");
                string dataPath = r.GetRequiredValue(data);
                string text = TrainingCorpus.ReadText(dataPath, cancellation, m => cli.Error.WriteLine(m));
                var (weights, tokenizer) = ModelOptions.Load(ModelOptions.ResolveModel(r.GetValue(model)),
                    new ModelLoadOptions { HeadType = ModelOptions.ParseHeadType(r.GetValue(headType)), WeightPages = ModelOptions.ParseWeightPages(r.GetValue(weightPages)) },
                    r.GetValue(preTokenizer));
                using var _ = weights;
                if (tokenizer is null) throw new UsageException($"{weights.SourcePath} has no tokenizer; eval needs one to turn the text into tokens.");
                if (ModelOptions.VocabularyWarning(weights, tokenizer) is { } vocabularyWarning) cli.Error.WriteLine("warning: " + vocabularyWarning);
                if (tokenizer.CoverageWarning is { } coverage) cli.Error.WriteLine("warning: " + coverage);
                var fileBits = weights.ActivationBits;
                ModelOptions.ApplyActivationBits(weights, r.GetValue(bits));
                int window = r.GetValue(ctx) is > 0 and var c ? c : weights.Config.ContextLength;
                if (window > weights.Config.ContextLength)
                    throw new UsageException($"--ctx {window} is longer than the model's context of {weights.Config.ContextLength} tokens.");
                int step = r.GetValue(stride) is > 0 and var s ? s : window;
                if (step > window) throw new UsageException($"--stride {step} is longer than the window ({window}).");
                if (llamaChunks && step != window) throw new UsageException($"--llama-perplexity scores chunks that do not overlap; leave --stride out (it was {step}, the window {window}).");

                // llama-perplexity tokenizes with the model's BOS in front (and then sets each chunk's first token to BOS).
                bool streamBos = llamaChunks && tokenizer.AddBosToken && tokenizer.BosId >= 0;
                // --parse-special: special-token text (<|endoftext|> between documents, as `train --heldout` writes it) is
                // read as the token, as train and calibrate read it; as plain text it is a dozen byte tokens the model
                // never saw there. Off by default, as llama-perplexity tokenizes: WikiText's <unk> must stay text.
                bool special = r.GetValue(parseSpecial);
                if (special && llamaChunks) throw new UsageException("--parse-special: llama-perplexity reads special-token text as text; drop one of the two.");
                var tokens = tokenizer.Encode(text, addBos: streamBos, parseSpecial: special);
                ModelOptions.CheckEncoded(weights, tokens, dataPath);
                var kv = ModelOptions.ParseKvType(r.GetValue(kvType) ?? "f32");
                int bos = tokenizer.AddBosToken ? tokenizer.BosId : -1;
                using var pool = new WorkerPool(r.GetValue(threads));
                using var engine = new Transformer(weights, Math.Min(window, 128), pool);

                // The reference: a saved-logits file, another model, or this model with other settings.
                string? refPath = r.GetValue(klReference);
                string? refKvText = r.GetValue(klKvType);
                string? refBitsText = r.GetValue(klBits);
                LogitsFileReader? refFile = null;
                ModelWeights? refWeights = null;
                Transformer? refEngine = null;
                string? refDescription = null;
                LogitsFileWriter? writer = null;
                KlReference? reference = null;
                (PerplexityResult Model, KlResult? Kl) outcome = default;
                try
                {
                    if (refPath is not null && LogitsFile.IsLogitsFile(refPath))
                    {
                        if (refKvText is not null || refBitsText is not null)
                            throw new UsageException($"{(refKvText is not null ? "--kl-kv-type" : "--kl-activation-bits")} applies to a reference model, not to a saved logits file.");
                        refFile = new LogitsFileReader(refPath);
                        refDescription = $"{refPath} (saved logits, {(refFile.Header.TopK == 0 ? "full rows" : $"top {refFile.Header.TopK}")}; {refFile.Header.Notes})";
                        // A saved run fixes the windows: take its settings unless given.
                        if (r.GetValue(ctx) <= 0) window = refFile.Header.Ctx;
                        if (r.GetValue(stride) <= 0) step = refFile.Header.Stride;
                        // Windows other than the file's cannot be compared with it; say so by the file (a --ctx below the
                        // file's stride was blamed on a --stride the user never gave).
                        if (window != refFile.Header.Ctx || step != refFile.Header.Stride)
                        {
                            // Only what the user gave: "asks for --ctx 32 --stride 8" named a stride taken from the file.
                            var asked = new List<string>(2);
                            if (r.GetValue(ctx) > 0) asked.Add($"--ctx {window}");
                            if (r.GetValue(stride) > 0) asked.Add($"--stride {step}");
                            throw new UsageException($"{refPath} was saved with --ctx {refFile.Header.Ctx} --stride {refFile.Header.Stride}; this run asks for {string.Join(" ", asked)}. "
                                + "KL against saved logits needs the file's windows: leave out --ctx and --stride, or save the reference again with these.");
                        }
                        if (window > weights.Config.ContextLength)
                            throw new UsageException($"{refPath} was saved with --ctx {window}, longer than this model's context of {weights.Config.ContextLength} tokens.");
                    }
                    else if (refPath is not null || refKvText is not null || refBitsText is not null)
                    {
                        var refKv = refKvText is null ? KvCacheType.F32 : ModelOptions.ParseKvType(refKvText, "--kl-kv-type");
                        if (refPath is not null)
                        {
                            var (w2, t2) = ModelOptions.Load(refPath, new ModelLoadOptions { WeightPages = ModelOptions.ParseWeightPages(r.GetValue(weightPages)) }, r.GetValue(preTokenizer));
                            refWeights = w2;
                            if (w2.Config.VocabSize != weights.Config.VocabSize)
                                throw new UsageException($"--kl-reference {refPath} has a vocabulary of {w2.Config.VocabSize} tokens; {weights.SourcePath} has {weights.Config.VocabSize}. KL needs the same vocabulary.");
                            if (t2 is not null && !t2.Encode(text, addBos: streamBos, parseSpecial: special).AsSpan().SequenceEqual(tokens))
                                throw new UsageException($"--kl-reference {refPath} tokenizes the text differently from {weights.SourcePath}; KL needs the same tokens.");
                            ModelOptions.ApplyActivationBits(w2, refBitsText, "--kl-activation-bits");
                            refEngine = new Transformer(w2, Math.Min(window, 128), pool);
                            refDescription = $"{refPath} (KV {refKv.Name()}, activation bits {refEngine.ActivationBits})";
                        }
                        else
                        {
                            refEngine = new Transformer(weights, Math.Min(window, 128), pool);
                            // Without --kl-activation-bits the variant keeps the file's widths (not this run's override).
                            refEngine.ActivationBits = (refBitsText is null ? fileBits : ActivationBits.Parse(refBitsText, weights.Config.Layers, fileBits, "--kl-activation-bits"))
                                ?? ActivationBits.Uniform(weights.Config.Layers);
                            refDescription = $"this model with KV {refKv.Name()}, activation bits {refEngine.ActivationBits}";
                        }
                        reference = KlReference.FromEngine(refEngine, refKv);
                    }
                    if (refFile is not null) reference = KlReference.FromFile(refFile);
                    if (step > window) throw new UsageException($"--stride {step} is longer than the window ({window}).");
                    if (r.GetValue(saveLogits) is { } savePath)
                    {
                        OutputFile.CheckNotInput("--save-logits", savePath, ("--data", dataPath), ("-m", weights.SourcePath), ("--kl-reference", refPath));
                        int top = r.GetValue(saveTop);
                        if (top < 0 || top > weights.Config.VocabSize)
                            throw new UsageException($"--save-logits-top {top} must be 0 (full rows) to {weights.Config.VocabSize} (the vocabulary).");
                        if (tokens.Length < window + 1)
                            throw new UsageException($"{dataPath}: the text is {tokens.Length} tokens; one window of {window} needs {window + 1}. Use a smaller --ctx or more text.");
                        var header = new LogitsFileHeader(weights.Config.VocabSize, window, step, bos, top, LogitsFileHeader.HashTokens(tokens),
                            QualityEvaluator.Plan(tokens.Length, window, step).Positions,
                            $"model {Path.GetFileName(weights.SourcePath)}, data {Path.GetFileName(dataPath)}, KV {kv.Name()}");
                        writer = new LogitsFileWriter(savePath, header);
                    }

                    (PerplexityResult Model, KlResult? Kl) Run(Action<int, int>? progress) =>
                        QualityEvaluator.Evaluate(engine, tokens, window, step, id => tokenizer.TokenBytes(id).Length, bos, progress, kv, reference, writer, llamaChunks: llamaChunks, cancellation: cancellation);
                    if (!r.GetValue(json) && ReferenceEquals(cli.Output, Console.Out) && !Console.IsOutputRedirected)
                    {
                        AnsiConsole.Progress()
                            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                            .Start(context =>
                            {
                                var task = context.AddTask("scoring windows");
                                outcome = Run((done, total) => { task.MaxValue = total; task.Value = done; });
                            });
                    }
                    else if (cli.ErrorIsConsole)
                    {
                        // --json or stdout piped: the bar cannot go there; progress on stderr instead.
                        var lines = new ProgressLines(cli.Error, "eval: windows scored", terminal: !Console.IsErrorRedirected);
                        try
                        {
                            outcome = Run(lines.Report);
                        }
                        finally
                        {
                            lines.Done();
                        }
                    }
                    else outcome = Run(null);
                    writer?.Complete();
                }
                catch (ArgumentException e) when (e is not ArgumentOutOfRangeException)
                {
                    // A text too short for the windows: named, as the other data errors name their file.
                    throw new UsageException(e.Message.StartsWith("The text is ", StringComparison.Ordinal) ? $"{dataPath}: the{e.Message[3..]}" : e.Message);
                }
                finally
                {
                    writer?.Dispose();
                    refEngine?.Dispose();
                    refWeights?.Dispose();
                    refFile?.Dispose();
                }
                var result = outcome.Model ?? throw new InvalidOperationException("The evaluation did not run.");
                var kl = outcome.Kl;
                string F(double v, string format = "F4") => v.ToString(format, CultureInfo.InvariantCulture);
                if (r.GetValue(json))
                {
                    using var stream = new MemoryStream();
                    using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
                    {
                        w.WriteStartObject();
                        w.WriteString("model", weights.SourcePath);
                        w.WriteString("data", Path.GetFullPath(dataPath));
                        w.WriteString("kv_type", kv.Name());
                        w.WriteString("head_type", Formats.Gguf.GgmlTypeInfo.Name(weights.Output.Type)); // --head-type re-encodes it: runs differ by it
                        if (r.GetValue(preTokenizer) is { } pre) w.WriteString("pre_tokenizer", pre);
                        w.WriteString("activation_bits", engine.ActivationBits.ToString());
                        w.WriteNumber("tokens", tokens.Length);
                        w.WriteNumber("ctx", window);
                        w.WriteNumber("stride", step);
                        w.WriteString("scoring", llamaChunks ? "llama-perplexity" : "half-windows");
                        w.WriteNumber("windows", result.Windows);
                        w.WriteNumber("scored_tokens", result.ScoredTokens);
                        w.WriteNumber("scored_bytes", result.ScoredBytes);
                        w.WriteMeasured("nll_nats_per_token", result.MeanNll);
                        w.WriteMeasured("perplexity", result.Perplexity);
                        w.WriteMeasured("bits_per_byte", result.BitsPerByte);
                        if (kl is not null)
                        {
                            w.WriteStartObject("kl");
                            w.WriteString("reference", refDescription);
                            w.WriteMeasured("reference_perplexity", kl.Reference.Perplexity);
                            w.WriteMeasured("reference_bits_per_byte", kl.Reference.BitsPerByte);
                            w.WriteMeasured("delta_perplexity", kl.DeltaPerplexity);
                            w.WriteNumber("positions", kl.Positions);
                            w.WriteMeasured("mean", kl.MeanKl);
                            if (double.IsFinite(kl.MeanKlStdErr)) w.WriteNumber("mean_stderr", kl.MeanKlStdErr);
                            w.WriteMeasured("median", kl.MedianKl);
                            w.WriteMeasured("p99", kl.P99Kl);
                            w.WriteMeasured("max", kl.MaxKl);
                            w.WriteMeasured("top_token_agreement", kl.TopAgreement);
                            if (double.IsFinite(kl.TopAgreementStdErr)) w.WriteNumber("top_token_agreement_stderr", kl.TopAgreementStdErr);
                            if (kl.DeltaP is { } dp)
                            {
                                // llama-perplexity --kl-divergence's Δp: p(next token) under the model minus under the reference.
                                w.WriteStartObject("delta_p");
                                w.WriteMeasured("mean", dp.Mean);
                                w.WriteMeasured("rms", dp.Rms);
                                w.WriteMeasured("min", dp.Min);
                                w.WriteMeasured("p01", dp.P01);
                                w.WriteMeasured("p05", dp.P05);
                                w.WriteMeasured("median", dp.Median);
                                w.WriteMeasured("p95", dp.P95);
                                w.WriteMeasured("p99", dp.P99);
                                w.WriteMeasured("max", dp.Max);
                                w.WriteEndObject();
                            }
                            w.WriteNumber("reference_top_k", kl.TopK);
                            w.WriteEndObject();
                        }
                        if (r.GetValue(saveLogits) is { } saved) w.WriteString("saved_logits", Path.GetFullPath(saved));
                        w.WriteEndObject();
                    }
                    cli.Output.WriteLine(System.Text.Encoding.UTF8.GetString(stream.ToArray()));
                    return 0;
                }
                var table = new Table().Border(TableBorder.Rounded).AddColumn("Property").AddColumn("Value");
                void Row(string k, string v) => table.AddRow(new Text(k), new Text(v));
                Row("model", $"{weights.SourcePath} (KV {kv.Name()}, head {Formats.Gguf.GgmlTypeInfo.Name(weights.Output.Type)}, activation bits {engine.ActivationBits})");
                Row("data", $"{dataPath} ({tokens.Length:N0} tokens)");
                Row("windows", string.Create(CultureInfo.InvariantCulture, $"{result.Windows} × {window} tokens, stride {step}{(llamaChunks ? " (llama-perplexity chunks)" : "")}"));
                Row("scored", $"{result.ScoredTokens:N0} tokens, {result.ScoredBytes:N0} bytes");
                Row("perplexity", F(result.Perplexity));
                Row("bits per byte", F(result.BitsPerByte));
                if (kl is not null)
                {
                    Row("reference", refDescription!);
                    Row("reference perplexity / bits per byte", $"{F(kl.Reference.Perplexity)} / {F(kl.Reference.BitsPerByte)}");
                    Row("Δppl", $"{F(kl.DeltaPerplexity, "+0.0000;-0.0000;0.0000")} ({F(100 * kl.DeltaPerplexity / kl.Reference.Perplexity, "+0.00;-0.00;0.00")} %)");
                    Row(kl.TopK == 0 ? "KL divergence, mean ± s.e." : $"KL divergence (reference's top {kl.TopK} + rest), mean ± s.e.",
                        double.IsFinite(kl.MeanKlStdErr) ? $"{F(kl.MeanKl, "G4")} ± {F(kl.MeanKlStdErr, "G2")} nats" : $"{F(kl.MeanKl, "G4")} nats");
                    Row(kl.TopK == 0 ? "KL median / p99 / max" : "KL median / p99 / max (lower bounds too)", $"{F(kl.MedianKl, "G4")} / {F(kl.P99Kl, "G4")} / {F(kl.MaxKl, "G4")}");
                    // One position has no spread (NaN): the share alone.
                    Row("same top token", double.IsFinite(kl.TopAgreementStdErr) ? $"{F(100 * kl.TopAgreement, "F2")} ± {F(100 * kl.TopAgreementStdErr, "F2")} %" : $"{F(100 * kl.TopAgreement, "F2")} %");
                    if (kl.DeltaP is { } dp)
                    {
                        Row("Δp of the next token, mean / RMS", $"{F(100 * dp.Mean, "+0.000;-0.000;0.000")} % / {F(100 * dp.Rms, "F3")} %");
                        Row("Δp min / p1 / p5 / median / p95 / p99 / max",
                            string.Join(" / ", new[] { dp.Min, dp.P01, dp.P05, dp.Median, dp.P95, dp.P99, dp.Max }.Select(v => F(100 * v, "+0.000;-0.000;0.000") + " %")));
                    }
                }
                if (r.GetValue(saveLogits) is { } savedPath) Row("saved logits", BitNetSharp.Formats.PathIdentity.IsSpecialFile(savedPath) ? savedPath : $"{savedPath} ({BitNetSharp.Formats.PathIdentity.Length(savedPath):N0} bytes)");
                cli.Ansi.Write(table);
                return 0;
            }
            catch (OperationCanceledException) when (cancellation.IsCancellationRequested)
            {
                cli.Error.WriteLine("cancelled: nothing written.");
                return 130;
            }
            catch (InvalidDataException e)
            {
                // A bad data file or checkpoint is the user's file, not a bug: one line and exit 1, like the model errors.
                throw new IOException(e.Message, e);
            }
        })));
        return command;
    }
}
