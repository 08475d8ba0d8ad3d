using System.CommandLine;
using System.Globalization;
using BitNetSharp.Generation;
using BitNetSharp.Model;
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
        var stop = GenerateCommand.StopOption();
        var command = new Command("chat", "Chat with a model in the terminal.") { template, system, count, stop };
        model.AddTo(command);
        sampling.AddTo(command);
        speculation.AddTo(command);
        command.SetAction(result => cli.Guard(() =>
        {
            var parameters = sampling.Parse(result);
            int answerTokens = result.GetValue(count);
            if (answerTokens < 1) throw new UsageException($"--n-predict (-n) must be at least 1; got {answerTokens}.");
            // The template's name is checked before the model loads (a typo was reported after loading gigabytes).
            ChatTemplate? named = null;
            if (result.GetValue(template) is { } name)
            {
                try
                {
                    named = ChatTemplates.ByName(name);
                }
                catch (ArgumentException e)
                {
                    throw new UsageException("--template: " + e.Message.Split(" (Parameter '")[0]);
                }
            }
            var generatorOptions = model.Generator(result); // the flags before the model loads, as the template
            speculation.Check(result);
            var userStops = GenerateCommand.Stops(result, stop);
            var (weights, tokenizer) = model.Load(result);
            using var _ = weights;
            model.NoteModel(result, weights, tokenizer, cli.Error);
            if (tokenizer is null) throw new UsageException($"{weights.SourcePath} has no tokenizer, so it cannot chat.");
            string how = "--template";
            var chatTemplate = named ?? ChatTemplates.ForModel(weights.Config.Architecture, tokenizer, out how);
            // The template's turn markers that this vocabulary spells as text end an answer too (no stop token would).
            var stops = userStops.Concat(chatTemplate.TextStops(tokenizer)).Distinct(StringComparer.Ordinal).ToArray();
            generatorOptions = FitContextToMemory(generatorOptions, weights.Config, cli.Error);
            var (speculative, draftWeights) = speculation.Parse(result, weights, tokenizer, cli.Error);
            using var __ = draftWeights;
            using var generator = new TextGenerator(weights, tokenizer, generatorOptions with { Speculation = speculative });
            // ... and so do the markers that are tokens but not stop tokens: a turn opener such as <|im_start|>.
            generator.StopTokenIds = chatTemplate.StopTokens(tokenizer);
            var messages = new List<ChatMessage>();
            if (result.GetValue(system) is { } s && !string.IsNullOrWhiteSpace(s))
            {
                messages.Add(ChatMessage.System(s));
                // A system prompt that leaves no room for any message would refuse every one, each time blaming the message.
                int systemTokens = chatTemplate.Encode(tokenizer, messages, addGenerationPrompt: true).Length;
                if (systemTokens + Math.Max(1, Math.Min(answerTokens, generator.ContextLength / 2)) >= generator.ContextLength)
                    throw new UsageException($"--system: the system prompt takes {systemTokens} tokens with the {chatTemplate.Name} template, which leaves no room for a message and an answer "
                        + $"in the context of {generator.ContextLength} tokens (--ctx). Shorten it, or {RoomAdvice(generator.ContextLength, weights.Config.ContextLength)}.");
            }
            else
            {
                // Likewise the template's own tokens around one message: with --ctx at or below them every message was
                // refused (a shorter --ctx than -n asks for is sent anyway, with a note, so only a full frame is refused here).
                int frame = chatTemplate.Encode(tokenizer, [ChatMessage.User("")], addGenerationPrompt: true).Length;
                if (frame + 1 >= generator.ContextLength)
                    throw new UsageException($"--ctx {generator.ContextLength}: the {chatTemplate.Name} template takes {frame} tokens around a message, which leaves no room "
                        + $"for a message and an answer; {RoomAdvice(generator.ContextLength, weights.Config.ContextLength)}.");
            }
            var reader = input ?? (StandardInputClosedAtLaunch() ? TextReader.Null : Console.In);
            CancellationTokenSource? answer = null;
            ConsoleCancelEventHandler onCancel = (_, e) =>
            {
                if (answer is { } a) { e.Cancel = true; a.Cancel(); }
            };
            Console.CancelKeyPress += onCancel;
            try
            {
                cli.Error.WriteLine($"chat template: {chatTemplate.Name} ({how}); end a line with \\ to go on to the next, /reset starts over, an empty line or /quit ends; Ctrl-C stops an answer.");
                int turn = 0;
                while (true)
                {
                    cli.Output.Write("> ");
                    cli.Output.Flush();
                    var (kind, line) = ReadMessage(reader);
                    if (kind == ChatInput.Quit) return 0;
                    if (kind == ChatInput.Reset)
                    {
                        messages.RemoveAll(m => m.Role != "system");
                        cli.Error.WriteLine("[conversation cleared]");
                        continue;
                    }
                    // Ctrl-C belongs to this message from the moment it is read: while the conversation is encoded (a long
                    // paste takes a second or more) it abandons the message; it killed the chat there, the conversation lost.
                    var pending = new CancellationTokenSource();
                    answer = pending;
                    var before = new List<ChatMessage>(messages);
                    messages.Add(ChatMessage.User(line!));
                    // Its notes (older turns dropped, little room left) are said once the message is sent: a Ctrl-C while
                    // it was encoded put the turns back after "the oldest 2 message(s) are dropped" had been printed.
                    var notes = new StringWriter();
                    var prompt = FitToContext(messages, m => chatTemplate.Encode(tokenizer, m, addGenerationPrompt: true),
                        generator.ContextLength, answerTokens, notes, weights.Config.ContextLength);
                    if (prompt is null)
                    {
                        cli.Error.Write(notes.ToString());
                        answer = null; // refused (said), so a Ctrl-C meanwhile has nothing left to stop
                        if (kind == ChatInput.LastMessage) return 0; // the input has ended: no further read (a terminal's would wait)
                        continue;
                    }
                    if (pending.IsCancellationRequested)
                    {
                        answer = null;
                        messages.Clear();
                        messages.AddRange(before); // the turns a long message pushed out come back with it gone
                        cli.Output.WriteLine();
                        cli.Error.WriteLine("[stopped before the answer began: the message was not sent]");
                        if (kind == ChatInput.LastMessage) return 0;
                        continue;
                    }
                    cli.Error.Write(notes.ToString());
                    ModelOptions.CheckEncoded(weights, prompt, "the conversation");
                    var reply = new System.Text.StringBuilder();
                    // One --seed, a different stream each answer (as llama.cpp's one sampler for the session): the same
                    // seed every turn made each answer draw the same random numbers (after /reset, the same answer again).
                    var turnParameters = parameters.Seed is { } seed ? parameters with { Seed = BitNetSharp.Generation.Sampling.SamplingParameters.StreamSeed(seed, turn) } : parameters;
                    turn++;
                    int limit = Math.Min(answerTokens, generator.ContextLength - prompt.Length);
                    var finish = FinishReason.None;
                    foreach (var token in StopStrings.Apply(generator.Generate(prompt, limit, turnParameters, cancellation: pending.Token), stops))
                    {
                        finish = token.Finish;
                        reply.Append(token.Text);
                        cli.Output.Write(token.Text);
                        cli.Output.Flush();
                    }
                    answer = null;
                    cli.Output.WriteLine();
                    var st = generator.LastStats!;
                    // Ctrl-C during the prompt pass (a long paste: the seconds a user waits): no answer began, so the message
                    // is dropped as before the pass. It was kept with an empty answer, both sent with every later prompt.
                    if (pending.IsCancellationRequested && st.GeneratedTokens == 0 && reply.Length == 0)
                    {
                        messages.Clear();
                        messages.AddRange(before);
                        turn--; // a --seed's next answer draws the stream this one would have
                        cli.Error.WriteLine("[stopped before the answer began: the message was not sent]");
                        if (kind == ChatInput.LastMessage) return 0;
                        continue;
                    }
                    messages.Add(ChatMessage.Assistant(reply.ToString()));
                    cli.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"[{st.PromptTokens - st.ReusedPromptTokens} new prompt tokens ({st.ReusedPromptTokens} reused), {st.GeneratedTokens} generated, {st.GenerationTokensPerSecond:F1} tok/s]"));
                    if (speculative is not null && st.Speculative is { } spec) cli.Error.WriteLine("[" + SpeculationOptions.Describe(speculative, spec) + "]");
                    // Cut by the context, not by -n: said (an answer of the default -n, the context's length, stopped
                    // mid-sentence where the context ended without a word).
                    if (finish == FinishReason.Length && limit < answerTokens)
                        cli.Error.WriteLine($"[the answer reached the end of the context ({generator.ContextLength} tokens, --ctx) and was cut there, after {st.GeneratedTokens} of up to {answerTokens} tokens (-n); the oldest turns make room for the next message]");
                    if (kind == ChatInput.LastMessage) return 0;
                }
            }
            finally
            {
                Console.CancelKeyPress -= onCancel;
            }
        }));
        return command;
    }

    /// <summary>
    /// Whether this process was started with its standard input closed (`chat <&-`): the runtime then opens one of its own
    /// pipes as descriptor 0, and the chat waited on it for ever (end of input ends a chat, as with &lt; /dev/null). An
    /// inherited descriptor survived exec, so it lacks close-on-exec; the runtime opens its own with it (O_CLOEXEC,
    /// 02000000 in /proc's octal flags). Linux only; elsewhere false.
    /// </summary>
    internal static bool StandardInputClosedAtLaunch()
    {
        if (!OperatingSystem.IsLinux() || !Directory.Exists("/proc/self/fdinfo")) return false;
        try
        {
            if (!File.Exists("/proc/self/fdinfo/0")) return true; // nothing at all open as descriptor 0
            foreach (var line in File.ReadLines("/proc/self/fdinfo/0"))
                if (line.StartsWith("flags:", StringComparison.Ordinal))
                    return (Convert.ToInt64(line[6..].Trim(), 8) & 0x80000) != 0;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or ArgumentException)
        {
        }
        return false;
    }

    /// <summary>
    /// Without --ctx, a model context whose KV cache would outgrow the memory available is shortened to what fits in
    /// three quarters of it, with a note: a conversation fills its cache as it goes, and past its context the oldest
    /// turns are dropped, so the chat runs where the whole cache was refused (a 32K-context model in f16 on a machine
    /// with less free than its 5 GB cache). A --ctx given is kept, and the cache's own check refuses it if too large.
    /// </summary>
    internal static GeneratorOptions FitContextToMemory(GeneratorOptions options, ModelConfig config, TextWriter error)
    {
        if (options.ContextLength > 0 || KvCache.AvailableBytes() is not { } free) return options;
        long whole = KvCache.BytesFor(config.Layers, config.KvHeads, config.HeadDim, config.ContextLength, options.KvType);
        if (whole <= free) return options;
        int fits = KvCache.FittingPositions(config.Layers, config.KvHeads, config.HeadDim, config.ContextLength, options.KvType, free / 4 * 3) / 256 * 256;
        if (fits < 256) return options; // not even a short chat: the cache's check refuses it, naming --ctx
        var inv = System.Globalization.CultureInfo.InvariantCulture;
        error.WriteLine(string.Create(inv,
            $"note: the model's context of {config.ContextLength:N0} positions needs a {KvCache.FormatBytes(whole)} KV cache ({options.KvType.Name()}), more than the {KvCache.FormatBytes(free)} available; ") +
            string.Create(inv, $"this chat keeps to {fits:N0} positions, dropping its oldest turns past them (--ctx sets the context") +
            (options.KvType is KvCacheType.F16 or KvCacheType.F32 ? "; --kv-type int8 takes less)." : ")."));
        return options with { ContextLength = fits };
    }

    /// <summary>How to get more room: a larger --ctx while the model allows one, else a template with fewer tokens around a
    /// turn (it said "raise --ctx" on a model of 32 positions used whole, where a larger --ctx is cut back to 32).</summary>
    private static string RoomAdvice(int context, int modelContext) => context < modelContext
        ? $"raise --ctx (the model allows up to {modelContext})"
        : $"use a template with fewer tokens around a turn (--template; the model's context of {modelContext} tokens is used whole)";

    /// <summary>What <see cref="ReadMessage"/> read: a message, /reset, the end, or a message the input ended inside (a
    /// continued line, then Ctrl-D): answered, then the chat ends, for a terminal's Ctrl-D ends only the read it
    /// interrupts, and the next read waited for more.</summary>
    public enum ChatInput { Message, Reset, Quit, LastMessage }

    /// <summary>
    /// The next message from <paramref name="reader"/>: lines ending with a backslash go on to the next line (the message
    /// keeps the line breaks, blank lines included), "/reset" clears the conversation, "/quit", "/exit", an empty line or
    /// the end of the input ends the chat, and "//" starts a message that begins with "/". Before, every line was its own
    /// message, and a blank line inside a pasted paragraph ended the chat.
    /// </summary>
    public static (ChatInput Kind, string? Text) ReadMessage(TextReader reader)
    {
        string? line = reader.ReadLine();
        // A byte-order mark (a file saved by Notepad, piped in) is no text: "\uFEFF/quit" was sent to the model as a message.
        if (line is { Length: > 0 } && line[0] == '\uFEFF') line = line[1..];
        if (line is null || string.IsNullOrWhiteSpace(line)) return (ChatInput.Quit, null);
        switch (line.Trim())
        {
            case "/quit" or "/exit": return (ChatInput.Quit, null);
            case "/reset": return (ChatInput.Reset, null);
        }
        var text = new System.Text.StringBuilder();
        bool ended = false;
        while (true)
        {
            bool more = line.EndsWith('\\');
            text.Append(more ? line[..^1] : line);
            if (!more) break;
            line = reader.ReadLine();
            if (line is null)
            {
                ended = true;
                break;
            }
            text.Append('\n');
        }
        string message = text.ToString();
        // Nothing but continuations ("\" then the end of input, or blank lines): an empty message ends the chat as an
        // empty line does (it was sent to the model as an empty user turn).
        if (string.IsNullOrWhiteSpace(message)) return (ChatInput.Quit, null);
        return (ended ? ChatInput.LastMessage : ChatInput.Message, message.StartsWith("//", StringComparison.Ordinal) ? message[1..] : message);
    }

    /// <summary>
    /// The conversation's prompt (<paramref name="encode"/> of <paramref name="messages"/>), made to fit a context of
    /// <paramref name="context"/> tokens with room for an answer of min(<paramref name="answerTokens"/>, context / 2): the
    /// oldest messages after a system prompt are dropped from <paramref name="messages"/> (said on <paramref name="log"/>)
    /// until it fits. When the newest message does not fit even alone, it is taken out again, the reason is said, null
    /// is returned, and the conversation goes on without it, its history untouched (the turns tried out of it are kept).
    /// </summary>
    /// <param name="modelContext">The model's own context: a larger --ctx is advised only below it (0: not known).</param>
    public static int[]? FitToContext(List<ChatMessage> messages, Func<List<ChatMessage>, int[]> encode, int context, int answerTokens, TextWriter log, int modelContext = 0)
    {
        int room = Math.Max(1, Math.Min(answerTokens, context / 2));
        int first = messages.Count > 0 && messages[0].Role == "system" ? 1 : 0;
        int dropped = 0;
        // Turns are dropped from a copy: only a prompt that fits makes the drop real (an oversized message used to wipe
        // the whole history on its way to being refused).
        var trial = new List<ChatMessage>(messages);
        var prompt = encode(trial);
        while (prompt.Length + room > context && trial.Count - first > 1)
        {
            // A turn at a time: a user message with the answer to it, so the conversation still starts with a question.
            trial.RemoveAt(first);
            dropped++;
            if (trial.Count - first > 1 && trial[first].Role == "assistant")
            {
                trial.RemoveAt(first);
                dropped++;
            }
            prompt = encode(trial);
        }
        if (prompt.Length < context)
        {
            if (dropped > 0)
            {
                messages.Clear();
                messages.AddRange(trial);
                log.WriteLine($"[context full ({context} tokens, --ctx): the oldest {dropped} message(s) are dropped from the conversation]");
            }
            // Sent, but with less room than an answer is promised (no older turn left to drop): said, not a silent
            // one-token answer ended by length.
            if (prompt.Length + room > context)
                log.WriteLine($"[context nearly full ({context} tokens, --ctx): this message leaves room for {context - prompt.Length} answer token(s) of {answerTokens} (-n)]");
            return prompt;
        }
        messages.RemoveAt(messages.Count - 1);
        // The system prompt with the template's frame around a turn (an assistant opener included): counted alone it read as the prompt's own tokens.
        string system = first == 1 ? $" ({encode([messages[0]]).Length} of them the --system prompt in the template's frame)" : "";
        log.WriteLine($"error: this message takes {prompt.Length} tokens with the chat template{system}, and the context holds {context} (--ctx); it was not sent. Write a shorter one" +
            (modelContext > 0 && modelContext <= context ? " (the model's whole context is in use)."
                : modelContext > context ? prompt.Length < modelContext ? $", or start chat with a larger --ctx (the model allows up to {modelContext})." : $" (even the model's whole context, {modelContext} tokens, is too short for it)."
                : ", or start chat with a larger --ctx."));
        return null;
    }
}
