using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using BitNetSharp.Generation;
using BitNetSharp.Model;
using BitNetSharp.Monitoring;

namespace BitNetSharp.Cli.Commands;

/// <summary>
/// <c>bitnet generate [-m MODEL] -p PROMPT | --prompt-ids 1,2,3 [-n N] [sampling flags]</c>: streams the continuation as
/// it is generated, then one line of prompt and generation speed on stderr.
/// </summary>
public static class GenerateCommand
{
    public static Command Create(CliConsole cli)
    {
        var model = new ModelOptions();
        var sampling = new SamplingOptions();
        var speculation = new SpeculationOptions();
        var prompt = new Option<string?>("--prompt", "-p") { Description = "The text to continue." };
        var promptIds = new Option<string?>("--prompt-ids") { Description = "The prompt as token ids (\"1,2,3\"); works without a tokenizer." };
        var count = new Option<int>("--n-predict", "-n") { Description = "Tokens to generate at most.", DefaultValueFactory = _ => 128 };
        var ignoreEos = new Option<bool>("--ignore-eos") { Description = "Keep going past end-of-sequence tokens." };
        var noEcho = new Option<bool>("--no-echo") { Description = "Do not print the prompt before the continuation." };
        var logitsOut = new Option<string?>("--logits-out") { Description = "Write the logits of every prompt position as JSON {\"logits\": [[...], ...]}." };
        var idsOut = new Option<string?>("--ids-out") { Description = "Write the prompt and generated token ids as JSON (every token generated: with --stop, the last is the one that completed the stop text, whose text is not printed)." };
        var health = new Option<bool>("--health") { Description = "Measure the model's numerical health on every forward call and print a per-layer table at the end (stderr)." };
        var healthEvery = new Option<int?>("--health-every") { Description = "Measure every N forward calls instead of every one (with --health or the --log-* flags)." };
        var logResidual = new Option<bool>("--log-residual-stats") { Description = "Print one line per layer and measured step: residual RMS, max |x|, relative change, and the saturation/underflow of each BitLinear input's codes (stderr)." };
        var logLogits = new Option<bool>("--log-logits") { Description = "Print one line per measured step: logits min, max, range and entropy (stderr)." };
        var stop = StopOption();
        var command = new Command("generate", "Generate text from a prompt, streamed as it comes.")
        {
            prompt, promptIds, count, ignoreEos, noEcho, stop, logitsOut, idsOut, health, healthEvery, logResidual, logLogits,
        };
        model.AddTo(command);
        sampling.AddTo(command);
        speculation.AddTo(command);
        command.SetAction((result, cancellation) => Task.FromResult(cli.Guard(() =>
        {
            string? text = result.GetValue(prompt);
            string? ids = result.GetValue(promptIds);
            if (text is null == ids is null)
                throw new UsageException("give exactly one of --prompt TEXT or --prompt-ids 1,2,3.");
            var parameters = sampling.Parse(result);
            if (result.GetValue(count) < 0) throw new UsageException($"--n-predict (-n) must be 0 or more; got {result.GetValue(count)}.");
            // The outputs replace their paths: never the model or the draft run here (an --ids-out over the model file
            // exited 0 and left 37 bytes of JSON where the weights were), nor each other.
            if (result.GetValue(logitsOut) is not null || result.GetValue(idsOut) is not null)
            {
                (string, string?)[] inputs = [("-m", ModelOptions.ResolveModel(result.GetValue(model.Model))), ("--draft", result.GetValue(speculation.Draft))];
                string? logitsFull = result.GetValue(logitsOut) is { } logitsPath ? OutputFile.CheckNotInput("--logits-out", logitsPath, inputs) : null;
                if (result.GetValue(idsOut) is { } idsPath)
                {
                    string idsFull = OutputFile.CheckNotInput("--ids-out", idsPath, inputs);
                    if (logitsFull is not null && (idsFull == logitsFull || OutputFile.SameFile(idsFull, logitsFull)))
                        throw new UsageException($"--ids-out and --logits-out are the same file ({idsPath}); the second would replace the first. Give two paths.");
                }
            }
            // Flags checked before the model loads (a typo waited out a multi-gigabyte load, or reported the file instead).
            var generatorOptions = model.Generator(result);
            speculation.Check(result);
            if (result.GetValue(healthEvery) is < 1 and var badEvery) throw new UsageException($"--health-every must be ≥ 1; got {badEvery}.");
            if (result.GetValue(healthEvery) is not null && !(result.GetValue(health) || result.GetValue(logResidual) || result.GetValue(logLogits)))
                throw new UsageException("--health-every sets how often --health, --log-residual-stats or --log-logits measure; give one of them (alone it was accepted and measured nothing).");
            var stops = Stops(result, stop);
            int[]? givenIds = ids is not null ? ModelOptions.ParseIds(ids) : null;
            var (weights, tokenizer) = model.Load(result);
            using var _ = weights;
            model.NoteModel(result, weights, tokenizer, cli.Error);
            int[] promptTokens;
            if (givenIds is not null)
            {
                // Named as the flag's (it read "Token id 4096 is outside the vocabulary of 4096 tokens", no flag, no range).
                foreach (int id in givenIds)
                    if (id >= weights.Config.VocabSize)
                        throw new UsageException($"--prompt-ids: token id {id} is outside {weights.SourcePath}'s vocabulary (ids 0 to {weights.Config.VocabSize - 1}).");
                promptTokens = givenIds;
            }
            else if (tokenizer is null)
                throw new UsageException($"{weights.SourcePath} has no tokenizer, so it cannot read text; pass the prompt as --prompt-ids 1,2,3.");
            else
            {
                promptTokens = tokenizer.Encode(text!, addBos: tokenizer.AddBosToken, parseSpecial: true);
                if (promptTokens.Length == 0 && text!.Length > 0)
                    // A vocabulary that cannot spell the text (damaged: its token strings empty) read as "-p is empty".
                    throw new Formats.ModelFormatException(weights.SourcePath, $"the prompt ({text.Length} characters) encodes to no tokens with this model's vocabulary; the vocabulary is damaged or cannot spell it");
                if (promptTokens.Length == 0)
                    throw new UsageException("-p is empty and this model adds no BOS token, so there is nothing to continue: give some text"
                        + (tokenizer.BosId >= 0 ? $", or --prompt-ids {tokenizer.BosId.ToString(System.Globalization.CultureInfo.InvariantCulture)} to start from its BOS token." : "."));
                ModelOptions.CheckEncoded(weights, promptTokens, "the prompt");
            }
            if (stops.Length > 0 && tokenizer is null) throw new UsageException($"--stop needs text, and {weights.SourcePath} has no tokenizer.");

            bool wantHealth = result.GetValue(health), wantResidual = result.GetValue(logResidual), wantLogits = result.GetValue(logLogits);
            int every = result.GetValue(healthEvery) ?? 1;
            if (every < 1) throw new UsageException($"--health-every must be ≥ 1; got {every}.");
            bool measuring = wantHealth || wantResidual || wantLogits;
            // The KV cache is checked against the memory available for the positions this run fills, the prompt and -n,
            // not the whole context: its pages commit as positions fill (a 5-token run of a model whose full context's
            // cache exceeded the free memory was refused, naming --ctx).
            var config = weights.Config;
            int contextLength = generatorOptions.ContextLength > 0 ? Math.Min(generatorOptions.ContextLength, config.ContextLength) : config.ContextLength;
            int positions = (int)Math.Clamp((long)promptTokens.Length + result.GetValue(count), 1, contextLength);
            KvCache.EnsureFits(config.Layers, config.KvHeads, config.HeadDim, positions, generatorOptions.KvType,
                advice: "generate fewer tokens (-n), shorten the prompt or use a smaller --kv-type");
            generatorOptions = generatorOptions with { MemoryCheckPositions = positions };
            var (speculative, draftWeights) = speculation.Parse(result, weights, tokenizer, cli.Error);
            using var __ = draftWeights;
            using var generator = new TextGenerator(weights, tokenizer,
                generatorOptions with { HealthSampleEvery = measuring ? every : 0, Speculation = speculative });
            var report = wantHealth ? new HealthReport(weights.Config.Layers) : null;
            if (measuring)
                generator.Health.Published += snap =>
                {
                    report?.Add(snap);
                    // A prompt chunk before the last has no logits rows: its NaN fields read as a numerical failure.
                    if (wantLogits && snap.LogitRows > 0) cli.Error.WriteLine(HealthReport.LogitsLine(snap));
                    if (wantResidual)
                        for (int l = 0; l < snap.Layers; l++) cli.Error.WriteLine(HealthReport.LayerLine(snap, l));
                };
            var promptLogits = result.GetValue(logitsOut) is null ? null : new List<float[]>();
            var generated = new List<int>();
            var repetitionIds = new List<int>(); // as the server's gauge: without the stop token that ended the text
            bool ignoringEos = result.GetValue(ignoreEos);
            var output = cli.Output;
            // Generate validates (context, token ids) before the first token, so errors come before any output; they are
            // the user's (a prompt past --ctx, an id outside the vocabulary, an empty prompt): usage errors, exit 2.
            IEnumerable<GeneratedToken> tokens;
            try
            {
                int maxTokens = result.GetValue(count);
                // -n not given: as many as fit, up to the default (the default 128 refused every prompt over 129 tokens on
                // the bundled model's 256-token context; llama.cpp generates until the context ends). A given -n that
                // does not fit is refused before any work, as before.
                if (result.GetResult(count) is not { Implicit: false } && promptTokens.Length <= generator.ContextLength
                    && promptTokens.Length + maxTokens - 1 > generator.ContextLength)
                {
                    maxTokens = generator.ContextLength - promptTokens.Length + 1;
                    cli.Error.WriteLine($"note: the prompt ({promptTokens.Length} tokens) leaves room for {maxTokens} new token{(maxTokens == 1 ? "" : "s")} in the context of {generator.ContextLength}; generating at most that many (-n sets the number).");
                }
                tokens = StopStrings.Apply(generator.Generate(promptTokens, maxTokens, parameters, result.GetValue(ignoreEos), promptLogits, cancellation), stops);
            }
            catch (ArgumentException e)
            {
                // Without .NET's " (Parameter 'prompt')" and, for a range error, its "Actual value was …" line after it.
                throw new UsageException(e.Message.Split(" (Parameter '")[0]);
            }
            bool interrupted = false;
            if (!result.GetValue(noEcho))
                output.Write(tokenizer is not null && text is not null ? text : string.Join(' ', promptTokens) + " |");
            output.Flush();
            try
            {
                foreach (var token in tokens)
                {
                    if (token.Id >= 0) generated.Add(token.Id);
                    if (token.Finish == FinishReason.Cancelled) interrupted = true;
                    if (token.Id >= 0 && !(token.Finish == FinishReason.Stop && !ignoringEos && tokenizer is not null && tokenizer.IsStopToken(token.Id)))
                        repetitionIds.Add(token.Id);
                    if (tokenizer is null && token.Id >= 0) output.Write(" " + token.Id.ToString(CultureInfo.InvariantCulture));
                    else output.Write(token.Text);
                    output.Flush();
                }
            }
            catch (NonFiniteLogitsException)
            {
                // The run that most needs the health table is the one whose logits went bad: print it, then the error.
                output.WriteLine();
                report?.Write(cli.Error);
                throw;
            }
            output.WriteLine();
            var s = generator.LastStats!;
            // The first prompt of a process includes compiling the forward pass (~0.1 s): said, where it is a tenth of the
            // prompt's time or more, with the rate without it (a 1-token prompt read 9.7 tok/s on a model reading 5,000).
            string compiling = s.PromptCompileSeconds >= 0.1 * s.PromptSeconds && s.PromptSeconds - s.PromptCompileSeconds > 0
                ? string.Create(CultureInfo.InvariantCulture,
                    $" ({s.PromptCompileSeconds * 1e3:F0} ms of it compiling code on first use; {(s.PromptTokens - s.ReusedPromptTokens) / (s.PromptSeconds - s.PromptCompileSeconds):F1} tok/s without)")
                : "";
            cli.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"prompt: {s.PromptTokens} tokens, {s.PromptTokensPerSecond:F1} tok/s{compiling} | generation: {s.GeneratedTokens} tokens, {s.GenerationTokensPerSecond:F1} tok/s | {generator.Threads} threads"));
            if (speculative is not null && s.Speculative is { } spec) cli.Error.WriteLine(SpeculationOptions.Describe(speculative, spec));
            report?.Write(cli.Error);
            if (report is not null) cli.Error.WriteLine(RepetitionLine(promptTokens, repetitionIds));
            if (result.GetValue(logitsOut) is { } lp) WriteLogits(lp, promptLogits!);
            if (result.GetValue(idsOut) is { } ip) WriteIds(ip, promptTokens, generated);
            if (interrupted)
            {
                // Written whole up to the interruption, but not what was asked: a script must tell it from a finished run.
                cli.Error.WriteLine($"interrupted after {generated.Count} generated tokens.");
                return 130;
            }
            return 0;
        })));
        return command;
    }

    /// <summary>--stop TEXT, repeatable (OpenAI's "stop"; llama.cpp's reverse prompt).</summary>
    internal static Option<string[]> StopOption() => new("--stop")
    {
        Description = "End the output where this text appears (repeatable); the text itself is not printed.",
        AllowMultipleArgumentsPerToken = false,
    };

    /// <summary>The --stop texts; an empty one is a usage error.</summary>
    internal static string[] Stops(ParseResult result, Option<string[]> option)
    {
        var stops = result.GetValue(option) ?? [];
        foreach (var s in stops)
            if (string.IsNullOrEmpty(s)) throw new UsageException("--stop: a stop text is empty; give the text the output should end at.");
        return stops;
    }

    /// <summary>--health's repetition line: the server's bitnet_health_repetition_ratio, for this one generation.</summary>
    public static string RepetitionLine(IReadOnlyList<int> prompt, IReadOnlyList<int> generated)
    {
        var tracker = new Monitoring.RepetitionTracker();
        foreach (int t in prompt) tracker.AddPrompt(t);
        foreach (int t in generated) tracker.AddGenerated(t);
        return double.IsNaN(tracker.Share)
            ? $"repetition: fewer than {Monitoring.RepetitionTracker.MinTokens} tokens generated"
            : string.Create(CultureInfo.InvariantCulture,
                $"repetition: {tracker.Share * 100:0}% of the last {Math.Min(generated.Count, Monitoring.RepetitionTracker.Window)} generated tokens repeat an earlier {Monitoring.RepetitionTracker.N}-gram{(tracker.Share > 0.9 ? " (a loop)" : "")}");
    }

    private static void WriteLogits(string path, List<float[]> rows) => WriteJson(path, w =>
    {
        w.WriteStartObject();
        w.WriteStartArray("logits");
        foreach (var row in rows)
        {
            w.WriteStartArray();
            foreach (float v in row) w.WriteNumberValue(v);
            w.WriteEndArray();
        }
        w.WriteEndArray();
        w.WriteEndObject();
    });

    private static void WriteIds(string path, int[] prompt, List<int> generated) => WriteJson(path, w =>
    {
        w.WriteStartObject();
        w.WriteStartArray("prompt_ids");
        foreach (int id in prompt) w.WriteNumberValue(id);
        w.WriteEndArray();
        w.WriteStartArray("ids");
        foreach (int id in generated) w.WriteNumberValue(id);
        w.WriteEndArray();
        w.WriteEndObject();
    });

    /// <summary>Writes to a temporary name and renames, so a reader never sees half a file.</summary>
    internal static void WriteJson(string path, Action<Utf8JsonWriter> write)
    {
        BitNetSharp.Formats.AtomicFile.Write(path, stream =>
        {
            using var writer = new Utf8JsonWriter(stream);
            write(writer);
        });
    }
}
