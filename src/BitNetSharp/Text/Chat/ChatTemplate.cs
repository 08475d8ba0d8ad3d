using System.Text;

namespace BitNetSharp.Tokenization;

/// <summary>
/// A prompt format: renders a conversation to text containing the model's special tokens (BOS included where the
/// format has one). Encode the result with <c>parseSpecial: true</c> and <c>addBos: tokenizer.AddBosToken</c>:
/// the template's BOS text becomes the BOS id and the tokenizer does not add a second one.
/// </summary>
public abstract class ChatTemplate
{
    /// <summary>The name <see cref="ChatTemplates.ByName"/> knows it by.</summary>
    public abstract string Name { get; }

    /// <param name="messages">The conversation so far, oldest first.</param>
    /// <param name="addGenerationPrompt">Whether to end with the opening of an assistant turn for the model to complete.</param>
    public string Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true)
    {
        ArgumentNullException.ThrowIfNull(messages);
        for (int i = 0; i < messages.Count; i++)
        {
            var m = messages[i] ?? throw new ArgumentException($"Message {i} is null.", nameof(messages));
            if (string.IsNullOrEmpty(m.Role)) throw new ArgumentException($"Message {i} has no role.", nameof(messages));
            // The role goes into the prompt outside the plain-text spans: "user<|eot_id|>..." would forge turns.
            foreach (char ch in m.Role)
                if (!(char.IsAsciiLetterOrDigit(ch) || ch is '_' or '-'))
                    throw new ArgumentException($"Message {i}'s role '{m.Role}' is not a name (ASCII letters, digits, '_' and '-' only).", nameof(messages));
            if (m.Content is null) throw new ArgumentException($"Message {i} ({m.Role}) has no content.", nameof(messages));
        }
        var text = new StringBuilder();
        Render(messages, addGenerationPrompt, text, null);
        return text.ToString();
    }

    /// <summary>
    /// <see cref="Render(IReadOnlyList{ChatMessage}, bool)"/>, with where each message's content landed in the text
    /// (<paramref name="contentSpans"/>, appended in order), so an encoder can read the template's markup as control
    /// tokens and the messages' own text as text (<see cref="Encode"/>).
    /// </summary>
    public string Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, List<Range> contentSpans)
    {
        ArgumentNullException.ThrowIfNull(contentSpans);
        Render(messages, addGenerationPrompt); // the checks
        var text = new StringBuilder();
        Render(messages, addGenerationPrompt, text, contentSpans);
        return text.ToString();
    }

    /// <summary>
    /// The conversation as prompt tokens: the template's markup (<c>&lt;|eot_id|&gt;</c>, headers, BOS text) as the
    /// model's control tokens, and the messages' content as ordinary text even where it spells a control token — as
    /// OpenAI's API treats it — so a message cannot end its own turn or forge another role's.
    /// </summary>
    public int[] Encode(BitNetTokenizer tokenizer, IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        var spans = new List<Range>();
        Render(messages, addGenerationPrompt); // the checks
        var builder = new StringBuilder();
        // A format that writes the tokenizer's eos_token (Falcon 3's Tulu) gets this vocabulary's.
        Render(messages, addGenerationPrompt, builder, spans, tokenizer.EosId >= 0 ? tokenizer.TokenText(tokenizer.EosId) : null);
        string text = builder.ToString();
        // The tokenizer's BOS rule, as llama-server tokenizes a rendered chat (add_special): a format without BOS text of
        // its own (ChatML) still starts with BOS on a vocabulary that adds one; one that writes it gets no second.
        return tokenizer.Encode(text, addBos: tokenizer.AddBosToken, parseSpecial: true, plainSpans: spans);
    }

    private protected abstract void Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, StringBuilder text, List<Range>? spans);

    /// <summary>The rendering with the tokenizer's eos_token text at hand (null: none), for formats that write it.</summary>
    private protected virtual void Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, StringBuilder text, List<Range>? spans, string? eosToken) =>
        Render(messages, addGenerationPrompt, text, spans);

    /// <summary>The markup that ends an assistant turn or starts the next one (<c>&lt;|im_end|&gt;</c>, <c>&lt;|eot_id|&gt;</c>, ...).</summary>
    private protected abstract string[] TurnMarkers { get; }

    /// <summary>
    /// Stop strings an answer needs with this tokenizer: the template's turn markers that are not one control token in
    /// the vocabulary. Such a marker (ChatML on a vocabulary without <c>&lt;|im_start|&gt;</c>) is written as plain
    /// text, so no stop token ends the turn, and a model that learnt the format writes it as text and would run on into
    /// the next turn. Markers that are control tokens need nothing: the stop token ends the answer.
    /// </summary>
    public IReadOnlyList<string> TextStops(BitNetTokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        var stops = new List<string>();
        foreach (var m in TurnMarkers)
            if (!tokenizer.TryGetTokenId(m, out _)) stops.Add(m);
        return stops;
    }

    /// <summary>
    /// Token ids that end an answer besides the tokenizer's stop tokens: the template's turn markers that are one token in
    /// this vocabulary but not a stop token (<c>&lt;|im_start|&gt;</c>, <c>&lt;|start_header_id|&gt;</c>). A model that opens
    /// the next turn without closing its own ran on into a made-up turn, hidden (control tokens decode to nothing)
    /// and ended by length.
    /// </summary>
    public IReadOnlyList<int> StopTokens(BitNetTokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        var ids = new List<int>();
        foreach (var m in TurnMarkers)
            if (tokenizer.TryGetTokenId(m, out int id) && !tokenizer.IsStopToken(id) && !ids.Contains(id)) ids.Add(id);
        return ids;
    }

    /// <summary>Appends a message's content, recording its span.</summary>
    private protected static StringBuilder Content(StringBuilder text, string content, List<Range>? spans)
    {
        int start = text.Length;
        text.Append(content);
        spans?.Add(start..text.Length);
        return text;
    }

    public override string ToString() => Name;

    /// <summary>
    /// Jinja's <c>trim</c> and Python's <c>str.strip()</c>: Unicode white space as <see cref="char.IsWhiteSpace(char)"/>
    /// has it, and also U+001C–U+001F (the information separators, white space to Python, not to .NET).
    /// </summary>
    private protected static string Strip(string s)
    {
        int start = 0, end = s.Length;
        while (start < end && IsPythonSpace(s[start])) start++;
        while (end > start && IsPythonSpace(s[end - 1])) end--;
        return start == 0 && end == s.Length ? s : s[start..end];
    }

    /// <summary>Python's <c>str.rstrip()</c> (see <see cref="Strip"/>).</summary>
    private protected static string StripEnd(string s)
    {
        int end = s.Length;
        while (end > 0 && IsPythonSpace(s[end - 1])) end--;
        return end == s.Length ? s : s[..end];
    }

    private static bool IsPythonSpace(char c) => char.IsWhiteSpace(c) || c is >= '\u001C' and <= '\u001F';

    /// <summary>Jinja's <c>capitalize</c>: first character upper case, the rest lower case.</summary>
    private protected static string Capitalize(string s) =>
        s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();
}

/// <summary>
/// The format BitNet b1.58 2B4T was trained with (its tokenizer_config.json, FORMATS.md §6.3):
/// <c>&lt;|begin_of_text|&gt;System: {s}&lt;|eot_id|&gt;User: {u}&lt;|eot_id|&gt;Assistant: {a}&lt;|eot_id|&gt;...Assistant: </c>.
/// Roles capitalized, contents trimmed. Not the GGUF-embedded "BITNETAssistant" template, which models loop on.
/// </summary>
public sealed class BitNetChatTemplate : ChatTemplate
{
    public override string Name => "bitnet";

    private protected override string[] TurnMarkers => ["<|eot_id|>"];

    private protected override void Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, StringBuilder text, List<Range>? spans)
    {
        text.Append("<|begin_of_text|>");
        foreach (var m in messages) Content(text.Append(Capitalize(m.Role)).Append(": "), Strip(m.Content), spans).Append("<|eot_id|>");
        if (addGenerationPrompt) text.Append("Assistant: ");
    }
}

/// <summary>Llama 3 Instruct: header tokens around each role, two newlines, trimmed content, <c>&lt;|eot_id|&gt;</c>.</summary>
public sealed class Llama3ChatTemplate : ChatTemplate
{
    public override string Name => "llama3";

    private protected override string[] TurnMarkers => ["<|eot_id|>", "<|start_header_id|>"];

    private protected override void Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, StringBuilder text, List<Range>? spans)
    {
        text.Append("<|begin_of_text|>");
        foreach (var m in messages)
            Content(text.Append("<|start_header_id|>").Append(m.Role).Append("<|end_header_id|>\n\n"), Strip(m.Content), spans).Append("<|eot_id|>");
        if (addGenerationPrompt) text.Append("<|start_header_id|>assistant<|end_header_id|>\n\n");
    }
}

/// <summary>
/// Llama 2 Chat: <c>&lt;s&gt;[INST] &lt;&lt;SYS&gt;&gt;\n{s}\n&lt;&lt;/SYS&gt;&gt;\n\n{u} [/INST] {a} &lt;/s&gt;&lt;s&gt;[INST] {u2} [/INST]</c>.
/// A system message is folded into the first user turn; the prompt already ends where the answer starts, so
/// there is nothing extra to add for the generation prompt.
/// </summary>
public sealed class Llama2ChatTemplate : ChatTemplate
{
    public override string Name => "llama2";

    private protected override string[] TurnMarkers => ["</s>", "[INST]"];

    private protected override void Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, StringBuilder text, List<Range>? spans)
    {
        // System messages not yet folded into a user turn: several (an OpenAI request's system and developer messages)
        // share one <<SYS>> block as paragraphs; the last one used to replace the others.
        var system = new List<string>();
        foreach (var m in messages)
        {
            switch (m.Role)
            {
                case "system":
                    system.Add(m.Content); // as Meta's template: the system text is not stripped
                    break;
                case "assistant":
                    Content(text.Append(' '), Strip(m.Content), spans).Append(" </s>");
                    break;
                default:
                    text.Append("<s>[INST] ");
                    // Meta's template strips "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + user as one string: after a system
                    // block only the user text's end is stripped (it trimmed the system text and the user text's start),
                    // and with no user text the block's own closing "\n\n" is what the strip takes.
                    bool afterSystem = system.Count > 0;
                    string user = afterSystem ? StripEnd(m.Content) : Strip(m.Content);
                    SystemBlock(text, system, spans, stripped: user.Length == 0);
                    Content(text, user, spans).Append(" [/INST]");
                    break;
            }
        }
        // A system message with no user turn after it still reaches the model.
        if (system.Count > 0) SystemBlock(text.Append("<s>[INST] "), system, spans, stripped: true).Append(" [/INST]");
    }

    private static StringBuilder SystemBlock(StringBuilder text, List<string> system, List<Range>? spans, bool stripped)
    {
        if (system.Count == 0) return text;
        text.Append("<<SYS>>\n");
        for (int i = 0; i < system.Count; i++) Content(i == 0 ? text : text.Append("\n\n"), system[i], spans);
        system.Clear();
        return text.Append(stripped ? "\n<</SYS>>" : "\n<</SYS>>\n\n");
    }
}

/// <summary>
/// Mistral Instruct v0.1/v0.2 and Mixtral: <c>&lt;s&gt;[INST] {u} [/INST]{a}&lt;/s&gt;[INST] {u2} [/INST]</c> — BOS once, no
/// space around an answer, no <c>&lt;&lt;SYS&gt;&gt;</c> block (Meta's Llama 2 format put those in, so a Mistral model's own
/// template was rendered with a second BOS per turn). Those templates refuse a system message; here it goes before the
/// first user message's text, a blank line between (as Mistral's later templates place it). Content is not stripped.
/// </summary>
public sealed class MistralChatTemplate(bool spaceAfterAnswer = false) : ChatTemplate
{
    /// <summary>"mistral" (v0.2, Mixtral: <c>{a}&lt;/s&gt;[INST]</c>) or "mistral-v0.1" (whose template writes <c>eos_token + ' '</c>: <c>{a}&lt;/s&gt; [INST]</c>).</summary>
    public override string Name => spaceAfterAnswer ? "mistral-v0.1" : "mistral";

    private protected override string[] TurnMarkers => ["</s>", "[INST]"];

    private protected override void Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, StringBuilder text, List<Range>? spans)
    {
        text.Append("<s>");
        var system = new List<string>();
        foreach (var m in messages)
        {
            switch (m.Role)
            {
                case "system":
                    system.Add(m.Content);
                    break;
                case "assistant":
                    Content(text, m.Content, spans).Append(spaceAfterAnswer ? "</s> " : "</s>");
                    break;
                default:
                    text.Append("[INST] ");
                    foreach (var s in system) Content(text, s, spans).Append("\n\n");
                    system.Clear();
                    Content(text, m.Content, spans).Append(" [/INST]");
                    break;
            }
        }
        // A system message with no user turn after it still reaches the model.
        if (system.Count > 0)
        {
            text.Append("[INST] ");
            for (int i = 0; i < system.Count; i++) Content(i == 0 ? text : text.Append("\n\n"), system[i], spans);
            text.Append(" [/INST]");
        }
    }
}

/// <summary>ChatML: <c>&lt;|im_start|&gt;{role}\n{content}&lt;|im_end|&gt;\n</c> per message, then <c>&lt;|im_start|&gt;assistant\n</c>. No BOS.</summary>
public sealed class ChatMlTemplate : ChatTemplate
{
    public override string Name => "chatml";

    private protected override string[] TurnMarkers => ["<|im_end|>", "<|im_start|>"];

    private protected override void Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, StringBuilder text, List<Range>? spans)
    {
        foreach (var m in messages) Content(text.Append("<|im_start|>").Append(m.Role).Append('\n'), m.Content, spans).Append("<|im_end|>\n");
        if (addGenerationPrompt) text.Append("<|im_start|>assistant\n");
    }
}

/// <summary>
/// Phi-3: <c>&lt;|{role}|&gt;\n{content}&lt;|end|&gt;\n</c> per system, user and assistant message (an empty system
/// message and other roles left out, as Microsoft's template does), then <c>&lt;|assistant|&gt;\n</c>; content as
/// written (Microsoft's template does not trim it). BOS comes from the tokenizer's rule.
/// </summary>
public sealed class Phi3ChatTemplate : ChatTemplate
{
    public override string Name => "phi3";

    private protected override string[] TurnMarkers => ["<|end|>", "<|user|>"];

    private protected override void Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, StringBuilder text, List<Range>? spans)
    {
        foreach (var m in messages)
        {
            // As Microsoft's template: an empty system message and roles it has no turn for (tool) are left out. They
            // were written as "<|system|>\n<|end|>" and "<|tool|>", which the vocabulary spells as text.
            if (m.Role is not ("system" or "user" or "assistant") || (m.Role == "system" && m.Content.Length == 0)) continue;
            Content(text.Append("<|").Append(m.Role).Append("|>\n"), m.Content, spans).Append("<|end|>\n");
        }
        if (addGenerationPrompt) text.Append("<|assistant|>\n");
    }
}

/// <summary>
/// Falcon 3 Instruct (Falcon3-1.58bit), as its Hugging Face template renders it (the Tulu format, which OLMo 2 shares):
/// <c>&lt;|system|&gt;\n{content}\n</c> and <c>&lt;|user|&gt;\n{content}\n</c>; an assistant turn
/// <c>&lt;|assistant|&gt;\n{content}{eos_token}</c> (the tokenizer's EOS text when encoding, Falcon 3's
/// <c>&lt;|endoftext|&gt;</c> when rendering alone), with <c>\n</c> after it unless it is the last message; other
/// roles left out; then <c>&lt;|assistant|&gt;\n</c>. llama.cpp's built-in falcon3 leaves
/// out the end of each answer (<c>A1\n&lt;|user|&gt;</c>), which the model was not trained on. A model that opens
/// the next user turn is stopped there.
/// </summary>
public sealed class Falcon3ChatTemplate : ChatTemplate
{
    public override string Name => "falcon3";

    /// <summary>Falcon 3's eos_token, which ends each assistant turn where no tokenizer says otherwise.</summary>
    public const string EndOfText = "<|endoftext|>";

    private protected override string[] TurnMarkers => ["<|user|>"];

    private protected override void Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, StringBuilder text, List<Range>? spans) =>
        Render(messages, addGenerationPrompt, text, spans, null);

    private protected override void Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, StringBuilder text, List<Range>? spans, string? eosToken)
    {
        string eos = string.IsNullOrEmpty(eosToken) ? EndOfText : eosToken;
        for (int i = 0; i < messages.Count; i++)
        {
            var m = messages[i];
            bool last = i == messages.Count - 1;
            if (m.Role is "system" or "user")
                Content(text.Append("<|").Append(m.Role).Append("|>\n"), m.Content, spans).Append('\n');
            else if (m.Role == "assistant")
            {
                Content(text.Append("<|assistant|>\n"), m.Content, spans).Append(eos);
                if (!last) text.Append('\n');
            }
            if (last && addGenerationPrompt) text.Append("<|assistant|>\n");
        }
    }
}
