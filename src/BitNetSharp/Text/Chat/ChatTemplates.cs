namespace BitNetSharp.Tokenization;

/// <summary>The built-in chat templates and the rule that picks one for a model.</summary>
public static partial class ChatTemplates
{
    public static ChatTemplate BitNet { get; } = new BitNetChatTemplate();

    public static ChatTemplate Llama3 { get; } = new Llama3ChatTemplate();

    public static ChatTemplate Llama2 { get; } = new Llama2ChatTemplate();

    public static ChatTemplate ChatMl { get; } = new ChatMlTemplate();

    public static ChatTemplate Mistral { get; } = new MistralChatTemplate();

    public static ChatTemplate MistralV01 { get; } = new MistralChatTemplate(spaceAfterAnswer: true);

    public static ChatTemplate Phi3 { get; } = new Phi3ChatTemplate();

    public static ChatTemplate Falcon3 { get; } = new Falcon3ChatTemplate();

    public static IReadOnlyList<ChatTemplate> All { get; } = [BitNet, Llama3, Llama2, ChatMl, Phi3, Falcon3, Mistral, MistralV01];

    /// <summary>The names <see cref="ByName"/> accepts.</summary>
    public static IReadOnlyList<string> Names { get; } = [.. All.Select(t => t.Name)];

    /// <summary>A template by name (case-insensitive); an unknown name is an error that lists the valid ones.</summary>
    public static ChatTemplate ByName(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        foreach (var t in All)
            if (string.Equals(t.Name, name.Trim(), StringComparison.OrdinalIgnoreCase)) return t;
        throw new ArgumentException($"Unknown chat template \"{name}\"; valid names are: {string.Join(", ", Names)}.", nameof(name));
    }

    /// <summary>
    /// The template for a model. A BitNet architecture ("bitnet", "bitnet-25", "bitnet-b1.58") with the Llama 3
    /// vocabulary gets the format 2B4T was trained with (<see cref="BitNet"/>), never the GGUF-embedded one (models loop
    /// on it). Otherwise the model's own template (<see cref="BitNetTokenizer.EmbeddedChatTemplate"/>) names the format
    /// when it is one of the built-in ones (<see cref="Detect"/>). Without one that is: a Llama 3 vocabulary gets
    /// <see cref="Llama3"/>; a vocabulary with <c>&lt;|im_start|&gt;</c> gets <see cref="ChatMl"/>; a SentencePiece
    /// vocabulary with &lt;s&gt;/&lt;/s&gt; gets <see cref="Llama2"/>; anything else <see cref="ChatMl"/>.
    /// </summary>
    public static ChatTemplate ForModel(string? architecture, BitNetTokenizer tokenizer) => ForModel(architecture, tokenizer, out _);

    /// <summary><see cref="ForModel(string?, BitNetTokenizer)"/>, saying how the template was chosen (for the chat banner and logs).</summary>
    public static ChatTemplate ForModel(string? architecture, BitNetTokenizer tokenizer, out string reason)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        bool llama3Vocabulary = tokenizer.TryGetTokenId("<|begin_of_text|>", out _) && tokenizer.TryGetTokenId("<|eot_id|>", out _);
        if (llama3Vocabulary && architecture != null && architecture.StartsWith("bitnet", StringComparison.OrdinalIgnoreCase))
        {
            reason = "the format BitNet b1.58 2B4T was trained with";
            return BitNet;
        }
        string embedded = tokenizer.EmbeddedChatTemplate is { Length: > 0 } ? "the model's chat template" : "";
        if (tokenizer.EmbeddedChatTemplate is { Length: > 0 } text && Detect(text) is { } detected)
        {
            reason = embedded;
            return detected;
        }
        string fallback = embedded.Length > 0 ? "the model's chat template is none of the built-in formats; by its vocabulary" : "by the model's vocabulary";
        reason = fallback;
        if (llama3Vocabulary) return Llama3;
        if (tokenizer.TryGetTokenId("<|im_start|>", out _) && tokenizer.TryGetTokenId("<|im_end|>", out _)) return ChatMl;
        if (tokenizer is SentencePieceBpeTokenizer && tokenizer.TryGetTokenId("<s>", out _) && tokenizer.TryGetTokenId("</s>", out _)) return Llama2;
        return ChatMl;
    }

    /// <summary>
    /// Which built-in format a Jinja chat template renders, by the markers in its source, in llama.cpp's order
    /// (<c>llm_chat_detect_template</c>), or null when it is another format (Phi-4, Mistral's, Gemma, GLM, ...) or not
    /// recognisable. A template name (<c>"chatml"</c>, <c>"phi3"</c>) is read as that template.
    /// </summary>
    public static ChatTemplate? Detect(string template)
    {
        ArgumentNullException.ThrowIfNull(template);
        foreach (var t in All)
            if (t != BitNet && string.Equals(t.Name, template.Trim(), StringComparison.Ordinal)) return t;
        bool Has(string marker) => template.Contains(marker, StringComparison.Ordinal);
        if (Has("<|im_start|>")) return Has("<|im_sep|>") || Has("<end_of_utterance>") ? null : ChatMl;
        if (template.StartsWith("mistral", StringComparison.Ordinal) || Has("[INST]"))
            // Mistral's v1/v3/v7 formats (other spacing, tools, [SYSTEM_PROMPT]) are neither; one with a <<SYS>> block is
            // Meta's Llama 2 (and its variants), one without is Mistral Instruct v0.1/v0.2's (llama.cpp's plain "llama2":
            // BOS once, no space around answers), which Meta's format gave a BOS per turn and spaced answers.
            // (Meta-style markers without <<SYS>>, a BOS per turn or stripped content, are llama.cpp's llama2 variants too;
            // another "mistral-..." name is one of the later formats.)
            return template.StartsWith("mistral", StringComparison.Ordinal) || Has("[SYSTEM_PROMPT]") || Has("' [INST] ' + system_message") || Has("[AVAILABLE_TOOLS]") ? null
                : Has("<<SYS>>") || Has("bos_token + '[INST]") || Has("content.strip()") ? Llama2
                : Has("eos_token + ' '") ? MistralV01 : Mistral;
        if (Has("<|assistant|>") && Has("<|end|>")) return Phi3;
        if (Has("[gMASK]<sop>")) return null;
        // llama.cpp's rule ("</s>"), and the Tulu source itself (Falcon 3's and OLMo 2's Hugging Face template: a user turn
        // ends in '\n', an assistant turn in eos_token), which names no "</s>" and was read as no built-in format.
        if (Has("<|assistant|>") && Has("<|user|>")) return Has("</s>") || (Has("eos_token") && TuluUserTurn().IsMatch(template)) ? Falcon3 : null;
        if (Has("<|{{ item['role'] }}|>") && Has("<|begin_of_image|>")) return null;
        if (Has("<|user|>") && Has("<|endoftext|>")) return null; // Zephyr
        if (Has("bos_token + message['role']") || Has("<start_of_turn>") || Has("'\\n\\nAssistant: ' + eos_token") || Has("GPT4 Correct ")
            || (Has("USER: ") && Has("ASSISTANT: ")) || (Has("### Instruction:") && Has("<|EOT|>"))
            || (Has("<|START_OF_TURN_TOKEN|>") && Has("<|USER_TOKEN|>"))) return null;
        if (Has("<|start_header_id|>") && Has("<|end_header_id|>")) return Llama3;
        return null;
    }

    /// <summary>A Tulu user turn in a template's source: <c>'&lt;|user|&gt;\n' + message['content'] + '\n'</c> (the newline escaped or literal).</summary>
    [System.Text.RegularExpressions.GeneratedRegex(@"'<\|user\|>(?:\\n|\n)'\s*\+\s*message\[['""]content['""]\]\s*\+\s*'(?:\\n|\n)'")]
    private static partial System.Text.RegularExpressions.Regex TuluUserTurn();
}
