using System.CommandLine;
using System.Globalization;
using BitNetSharp.Generation;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Cli.Commands;

/// <summary>
/// <c>bitnet chat [-m MODEL] [--template NAME] [--system TEXT]</c>: interactive turns. The history is kept in the
/// chat template and in the KV cache (each turn prefills only what is new); Ctrl-C stops the current answer, not
/// the program; an empty line or end of input quits.
/// </summary>
public static class ChatCommand
{
    public static Command Create(CliConsole cli, TextReader? input = null)
    {
        var model = new ModelOptions();
        var sampling = new SamplingOptions();
        var speculation = new SpeculationOptions();
        var template = new Option<string?>("--template") { Description = $"Chat template: {string.Join(", ", ChatTemplates.Names)} (default: chosen by model)." };
        var system = new Option<string?>("--system") { Description = "A system prompt." };
        var count = new Option<int>("--n-predict", "-n") { Description = "Tokens per answer at most.", DefaultValueFactory = _ => 256 };
        var command = new Command("chat", "Chat with a model in the terminal.") { template, system, count };
        model.AddTo(command);
        sampling.AddTo(command);
        speculation.AddTo(command);
        command.SetAction(result => cli.Guard(() =>
        {
            var parameters = sampling.Parse(result);
            var (weights, tokenizer) = model.Load(result);
            using var _ = weights;
            if (tokenizer is null) throw new UsageException($"{weights.SourcePath} has no tokenizer, so it cannot chat.");
            var chatTemplate = result.GetValue(template) is { } name
                ? ChatTemplates.ByName(name)
                : ChatTemplates.ForModel(weights.Config.Architecture, tokenizer);
            var (speculative, draftWeights) = speculation.Parse(result, weights, tokenizer);
            using var __ = draftWeights;
            using var generator = new TextGenerator(weights, tokenizer, model.Generator(result) with { Speculation = speculative });
            var messages = new List<ChatMessage>();
            if (result.GetValue(system) is { Length: > 0 } s) messages.Add(ChatMessage.System(s));
            var reader = input ?? Console.In;
            CancellationTokenSource? answer = null;
            ConsoleCancelEventHandler onCancel = (_, e) =>
            {
                if (answer is { } a) { e.Cancel = true; a.Cancel(); }
            };
            Console.CancelKeyPress += onCancel;
            try
            {
                cli.Error.WriteLine($"chat template: {chatTemplate.Name}; empty line to quit, Ctrl-C stops an answer.");
                while (true)
                {
                    cli.Output.Write("> ");
                    cli.Output.Flush();
                    string? line = reader.ReadLine();
                    if (string.IsNullOrWhiteSpace(line)) return 0;
                    messages.Add(ChatMessage.User(line));
                    var prompt = tokenizer.Encode(chatTemplate.Render(messages, addGenerationPrompt: true), addBos: false, parseSpecial: true);
                    answer = new CancellationTokenSource();
                    var reply = new System.Text.StringBuilder();
                    foreach (var token in generator.Generate(prompt, Math.Min(result.GetValue(count), generator.ContextLength - prompt.Length), parameters, cancellation: answer.Token))
                    {
                        reply.Append(token.Text);
                        cli.Output.Write(token.Text);
                        cli.Output.Flush();
                    }
                    answer = null;
                    cli.Output.WriteLine();
                    messages.Add(ChatMessage.Assistant(reply.ToString()));
                    var st = generator.LastStats!;
                    cli.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"[{st.PromptTokens - st.ReusedPromptTokens} new prompt tokens ({st.ReusedPromptTokens} reused), {st.GeneratedTokens} generated, {st.GenerationTokensPerSecond:F1} tok/s]"));
                    if (speculative is not null && st.Speculative is { } spec) cli.Error.WriteLine("[" + SpeculationOptions.Describe(speculative, spec) + "]");
                }
            }
            finally
            {
                Console.CancelKeyPress -= onCancel;
            }
        }));
        return command;
    }
}
