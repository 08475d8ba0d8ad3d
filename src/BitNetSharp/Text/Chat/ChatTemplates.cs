namespace BitNetSharp.Tokenization;

/// <summary>The built-in chat templates and the rule that picks one for a model.</summary>
public static class ChatTemplates
{
    public static ChatTemplate BitNet { get; } = new BitNetChatTemplate();

    public static ChatTemplate Llama3 { get; } = new Llama3ChatTemplate();

    public static ChatTemplate Llama2 { get; } = new Llama2ChatTemplate();

    public static ChatTemplate ChatMl { get; } = new ChatMlTemplate();

    public static IReadOnlyList<ChatTemplate> All { get; } = [BitNet, Llama3, Llama2, ChatMl];

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
    /// The template for a model, from its architecture and vocabulary: a BitNet architecture ("bitnet", "bitnet-25",
    /// "bitnet-b1.58") with the Llama 3 vocabulary gets the format 2B4T was trained with (<see cref="BitNet"/>),
    /// never the GGUF-embedded one; other Llama 3 vocabularies get <see cref="Llama3"/>; a vocabulary with
    /// <c>&lt;|im_start|&gt;</c> gets <see cref="ChatMl"/>; a SentencePiece vocabulary with &lt;s&gt;/&lt;/s&gt; gets
    /// <see cref="Llama2"/>. Anything else falls back to <see cref="ChatMl"/>.
    /// </summary>
    public static ChatTemplate ForModel(string? architecture, BitNetTokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        bool llama3Vocabulary = tokenizer.TryGetTokenId("<|begin_of_text|>", out _) && tokenizer.TryGetTokenId("<|eot_id|>", out _);
        if (llama3Vocabulary)
            return architecture != null && architecture.StartsWith("bitnet", StringComparison.OrdinalIgnoreCase) ? BitNet : Llama3;
        if (tokenizer.TryGetTokenId("<|im_start|>", out _) && tokenizer.TryGetTokenId("<|im_end|>", out _)) return ChatMl;
        if (tokenizer is SentencePieceBpeTokenizer && tokenizer.TryGetTokenId("<s>", out _) && tokenizer.TryGetTokenId("</s>", out _)) return Llama2;
        return ChatMl;
    }
}
