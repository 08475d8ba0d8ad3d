using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using BitNetSharp.Model;
using BitNetSharp.Threading;
using BitNetSharp.Training;
using Spectre.Console;

namespace BitNetSharp.Cli.Commands;

/// <summary>
/// <c>bitnet eval -m MODEL --data FILE [--ctx N] [--stride S] [--json]</c>: perplexity and bits per byte of a text under
/// a model (<see cref="PerplexityEvaluator"/>: windows of ctx tokens every stride tokens, the second half of each scored).
/// </summary>
public static class EvalCommand
{
    public static Command Create(CliConsole cli)
    {
        var model = new Option<string?>("--model", "-m") { Description = "A .gguf file or a Hugging Face model directory (default: the bundled model)." };
        var data = new Option<string>("--data") { Description = "A UTF-8 text file to score.", Required = true };
        var ctx = new Option<int>("--ctx", "-c") { Description = "Window length in tokens (default: the model's context)." };
        var stride = new Option<int>("--stride") { Description = "Tokens between window starts (default: the window length)." };
        var json = new Option<bool>("--json") { Description = "Print one JSON document." };
        var threads = new Option<int>("--threads", "-t") { Description = "Worker threads (default: physical cores)." };
        var command = new Command("eval", "Perplexity and bits per byte of a text file under a model.") { model, data, ctx, stride, json, threads };
        command.SetAction(r => cli.Guard(() =>
        {
            try
            {
                string dataPath = r.GetRequiredValue(data);
                string text = TrainingCorpus.ReadText(dataPath);
                var (weights, tokenizer) = ModelOptions.Load(ModelOptions.ResolveModel(r.GetValue(model)));
                using var _ = weights;
                if (tokenizer is null) throw new UsageException($"{weights.SourcePath} has no tokenizer; eval needs one to turn the text into tokens.");
                int window = r.GetValue(ctx) is > 0 and var c ? c : weights.Config.ContextLength;
                if (window > weights.Config.ContextLength)
                    throw new UsageException($"--ctx {window} is longer than the model's context of {weights.Config.ContextLength} tokens.");
                int step = r.GetValue(stride) is > 0 and var s ? s : window;
                if (step > window) throw new UsageException($"--stride {step} is longer than the window ({window}).");

                var tokens = tokenizer.Encode(text, addBos: false);
                using var pool = new WorkerPool(r.GetValue(threads));
                using var engine = new Transformer(weights, Math.Min(window, 128), pool);
                int bos = tokenizer.AddBosToken ? tokenizer.BosId : -1;
                PerplexityResult result;
                if (!r.GetValue(json) && ReferenceEquals(cli.Output, Console.Out) && !Console.IsOutputRedirected)
                {
                    result = null!;
                    AnsiConsole.Progress()
                        .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                        .Start(context =>
                        {
                            var task = context.AddTask("scoring windows");
                            result = PerplexityEvaluator.Evaluate(engine, tokens, window, step, id => tokenizer.TokenBytes(id).Length, bos,
                                (done, total) => { task.MaxValue = total; task.Value = done; });
                        });
                }
                else result = PerplexityEvaluator.Evaluate(engine, tokens, window, step, id => tokenizer.TokenBytes(id).Length, bos);

                if (r.GetValue(json))
                {
                    using var stream = new MemoryStream();
                    using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
                    {
                        w.WriteStartObject();
                        w.WriteString("model", weights.SourcePath);
                        w.WriteString("data", Path.GetFullPath(dataPath));
                        w.WriteNumber("tokens", tokens.Length);
                        w.WriteNumber("ctx", window);
                        w.WriteNumber("stride", step);
                        w.WriteNumber("windows", result.Windows);
                        w.WriteNumber("scored_tokens", result.ScoredTokens);
                        w.WriteNumber("scored_bytes", result.ScoredBytes);
                        w.WriteNumber("nll_nats_per_token", result.MeanNll);
                        w.WriteNumber("perplexity", result.Perplexity);
                        w.WriteNumber("bits_per_byte", result.BitsPerByte);
                        w.WriteEndObject();
                    }
                    cli.Output.WriteLine(System.Text.Encoding.UTF8.GetString(stream.ToArray()));
                    return 0;
                }
                var table = new Table().Border(TableBorder.Rounded).AddColumn("Property").AddColumn("Value");
                void Row(string k, string v) => table.AddRow(new Text(k), new Text(v));
                Row("model", weights.SourcePath);
                Row("data", $"{dataPath} ({tokens.Length:N0} tokens)");
                Row("windows", string.Create(CultureInfo.InvariantCulture, $"{result.Windows} × {window} tokens, stride {step}"));
                Row("scored", $"{result.ScoredTokens:N0} tokens, {result.ScoredBytes:N0} bytes");
                Row("perplexity", result.Perplexity.ToString("F4", CultureInfo.InvariantCulture));
                Row("bits per byte", result.BitsPerByte.ToString("F4", CultureInfo.InvariantCulture));
                cli.Ansi.Write(table);
                return 0;
            }
            catch (InvalidDataException e)
            {
                // A bad data file or checkpoint is the user's file, not a bug: one line and exit 1, like the model errors.
                throw new IOException(e.Message, e);
            }
        }));
        return command;
    }
}
