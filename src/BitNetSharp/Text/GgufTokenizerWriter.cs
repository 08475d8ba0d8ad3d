using BitNetSharp.Formats.Gguf;

namespace BitNetSharp.Tokenization;

/// <summary>
/// Writes a loaded tokenizer as GGUF <c>tokenizer.ggml.*</c> metadata, the way llama.cpp's converter lays it out, so
/// that a model converted from a Hugging Face directory carries its tokenizer (and <see cref="TokenizerLoader.FromGguf(GgufMetadata, string?)"/>
/// reads back the same tokenizer): byte-level BPE and tiktoken as model "gpt2" with byte-level token texts, merges
/// and the pre-tokenizer's llama.cpp name; SentencePiece as model "llama" with scores and add_space_prefix.
/// </summary>
public static class GgufTokenizerWriter
{
    /// <summary>The end-of-turn id written: the tokenizer's, else the first configured stop id (generation_config.json)
    /// that a reloaded vocabulary would not find again (not the EOS, not a known end-of-turn text).</summary>
    public static int EotToWrite(BitNetTokenizer tokenizer)
    {
        if (tokenizer.EotId >= 0) return tokenizer.EotId;
        foreach (int id in tokenizer.ConfiguredStopIds)
            if (id != tokenizer.EosId && !tokenizer.IsStopByText(id)) return id;
        return -1;
    }

    /// <summary>Configured stop ids a GGUF cannot mark (it keeps one EOS and one EOT id): a converted model does not stop on them.</summary>
    public static IReadOnlyList<int> StopsNotWritten(BitNetTokenizer tokenizer)
    {
        int eot = EotToWrite(tokenizer);
        var lost = new List<int>();
        foreach (int id in tokenizer.ConfiguredStopIds)
            if (id != tokenizer.EosId && id != eot && !tokenizer.IsStopByText(id)) lost.Add(id);
        return lost;
    }

    /// <summary>Why <paramref name="tokenizer"/> cannot be written as GGUF metadata, or null when it can.</summary>
    public static string? CannotWrite(BitNetTokenizer tokenizer) => tokenizer switch
    {
        ByteLevelBpeTokenizer b when GgufPreName(b.PreTokenizer) is null =>
            $"its pre-tokenizer is a custom regex from tokenizer.json, which has no tokenizer.ggml.pre name",
        ByteLevelBpeTokenizer or TiktokenBpeTokenizer or SentencePieceBpeTokenizer => null,
        _ => $"{tokenizer.GetType().Name} has no GGUF form",
    };

    /// <summary>
    /// The chat templates of a Hugging Face directory as GGUF keys, as gguf-py's converter writes them:
    /// <c>chat_template.jinja</c> when present, else <c>tokenizer_config.json</c>'s <c>chat_template</c> — a string is
    /// <c>tokenizer.chat_template</c>; a list of {name, template} puts "default" there, each other one in
    /// <c>tokenizer.chat_template.NAME</c>, and their names in <c>tokenizer.chat_templates</c>. Empty when the directory
    /// has none. Without it a converted model had no template, and llama.cpp fell back to ChatML for it.
    /// </summary>
    public static IReadOnlyList<KeyValuePair<string, GgufValue>> ChatTemplates(string directory)
    {
        ArgumentNullException.ThrowIfNull(directory);
        var keys = new List<KeyValuePair<string, GgufValue>>();
        string jinja = Path.Combine(directory, "chat_template.jinja");
        if (File.Exists(jinja))
        {
            Formats.PathIdentity.RequireRegularFile(jinja, "chat_template.jinja");
            keys.Add(new("tokenizer.chat_template", GgufValue.FromString(File.ReadAllText(jinja))));
            return keys;
        }
        string path = Path.Combine(directory, "tokenizer_config.json");
        if (!File.Exists(path)) return keys;
        using var document = TokenizerLoader.ParseJson(path);
        if (document.RootElement.ValueKind != System.Text.Json.JsonValueKind.Object
            || !document.RootElement.TryGetProperty("chat_template", out var template)
            || template.ValueKind == System.Text.Json.JsonValueKind.Null) return keys;
        if (template.ValueKind == System.Text.Json.JsonValueKind.String)
        {
            keys.Add(new("tokenizer.chat_template", GgufValue.FromString(template.GetString()!)));
            return keys;
        }
        if (template.ValueKind != System.Text.Json.JsonValueKind.Array)
            throw new Formats.ModelFormatException(path, "chat_template is neither a string nor a list of {name, template}", "chat_template");
        var names = new List<string>();
        foreach (var entry in template.EnumerateArray())
        {
            if (entry.ValueKind != System.Text.Json.JsonValueKind.Object
                || !entry.TryGetProperty("name", out var name) || name.ValueKind != System.Text.Json.JsonValueKind.String
                || !entry.TryGetProperty("template", out var text) || text.ValueKind != System.Text.Json.JsonValueKind.String)
                throw new Formats.ModelFormatException(path, "a chat_template entry is not {\"name\": string, \"template\": string}", "chat_template");
            string n = name.GetString()!;
            if (n == "default") keys.Add(new("tokenizer.chat_template", GgufValue.FromString(text.GetString()!)));
            else
            {
                names.Add(n);
                keys.Add(new("tokenizer.chat_template." + n, GgufValue.FromString(text.GetString()!)));
            }
        }
        if (names.Count > 0) keys.Add(new("tokenizer.chat_templates", GgufValue.FromArray(GgufArray.Create(names.ToArray()))));
        return keys;
    }

    /// <summary>Adds the tokenizer keys to <paramref name="writer"/>.</summary>
    /// <param name="vocabularySize">
    /// The model's embedding rows, when more than the tokenizer's ids (models pad their vocabulary, e.g. to a multiple
    /// of 64): the extra ids, and ids the source left without a text, are written as unused "[PADn]" tokens, as
    /// llama.cpp's converter does. llama.cpp takes the vocabulary size from the token list and refuses a token
    /// embedding of another shape.
    /// </param>
    /// <exception cref="NotSupportedException">The tokenizer has no GGUF form (<see cref="CannotWrite"/> says why).</exception>
    public static void Write(BitNetTokenizer tokenizer, GgufWriter writer, int vocabularySize = 0)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(writer);
        if (CannotWrite(tokenizer) is { } reason) throw new NotSupportedException($"The tokenizer cannot be stored in GGUF: {reason}.");

        int known = tokenizer.VocabularySize;
        int n = Math.Max(known, vocabularySize);
        var tokens = new string[n];
        var types = new int[n];
        for (int id = 0; id < n; id++)
        {
            var kind = id < known ? tokenizer.KindOf(id) : TokenKind.Unused;
            string text = id < known ? tokenizer.TokenText(id) : "";
            // An unused slot without a text would be one of many "" tokens, which llama.cpp's vocabulary cannot tell apart.
            if (kind == TokenKind.Unused && text.Length == 0) text = $"[PAD{id}]";
            tokens[id] = text;
            types[id] = (int)kind;
        }

        switch (tokenizer)
        {
            case ByteLevelBpeTokenizer b:
                writer.AddString("tokenizer.ggml.model", "gpt2");
                writer.AddString("tokenizer.ggml.pre", GgufPreName(b.PreTokenizer)!);
                writer.AddArray("tokenizer.ggml.tokens", tokens);
                writer.AddArray("tokenizer.ggml.token_type", types);
                writer.AddArray("tokenizer.ggml.merges", b.MergeTexts());
                break;
            case TiktokenBpeTokenizer t:
                writer.AddString("tokenizer.ggml.model", "gpt2");
                writer.AddString("tokenizer.ggml.pre", "llama-bpe");
                writer.AddArray("tokenizer.ggml.tokens", tokens);
                writer.AddArray("tokenizer.ggml.token_type", types);
                writer.AddArray("tokenizer.ggml.merges", t.DeriveMerges());
                break;
            case SentencePieceBpeTokenizer s:
                var scores = new float[n];
                for (int id = 0; id < n; id++) scores[id] = id < known ? s.Score(id) : -10000f;
                writer.AddString("tokenizer.ggml.model", "llama");
                writer.AddArray("tokenizer.ggml.tokens", tokens);
                writer.AddArray("tokenizer.ggml.scores", scores);
                writer.AddArray("tokenizer.ggml.token_type", types);
                writer.AddBool("tokenizer.ggml.add_space_prefix", s.AddSpacePrefix);
                break;
        }
        void Id(string key, int id)
        {
            if (id >= 0) writer.AddUInt32(key, (uint)id);
        }
        Id("tokenizer.ggml.bos_token_id", tokenizer.BosId);
        Id("tokenizer.ggml.eos_token_id", tokenizer.EosId);
        Id("tokenizer.ggml.eot_token_id", EotToWrite(tokenizer));
        Id("tokenizer.ggml.unknown_token_id", tokenizer.UnknownId);
        Id("tokenizer.ggml.padding_token_id", tokenizer.PaddingId);
        writer.AddBool("tokenizer.ggml.add_bos_token", tokenizer.AddBosToken);
        // GGUF has no per-token strip flags (llama.cpp sets them by model name only): tokenizer.json's lstrip/rstrip go
        // under this runtime's keys, so the converted file tokenizes as the directory did (they were lost).
        if (tokenizer.StripsLeft.Count > 0 || tokenizer.StripsRight.Count > 0)
        {
            writer.AddArray(StripLeftKey, tokenizer.StripsLeft.ToArray());
            writer.AddArray(StripRightKey, tokenizer.StripsRight.ToArray());
            writer.AddBool(StripUnicodeKey, tokenizer.StripsUnicodeWhitespace);
        }
    }

    /// <summary>Token ids that strip the whitespace before / after them, and whether any Unicode whitespace: this runtime's keys.</summary>
    public const string StripLeftKey = "bitnetsharp.tokenizer.lstrip", StripRightKey = "bitnetsharp.tokenizer.rstrip", StripUnicodeKey = "bitnetsharp.tokenizer.strip_unicode_whitespace";

    /// <summary>
    /// The <c>tokenizer.ggml.pre</c> name that selects <paramref name="pre"/> in llama.cpp and in our loader, or null
    /// for a custom regex. Llama 3 is written "llama-bpe" (llama.cpp's name); its whole-word rule comes with the name.
    /// </summary>
    private static string? GgufPreName(PreTokenizer pre)
    {
        if (pre.Name == PreTokenizer.Llama3.Name) return pre.IgnoreMerges ? "llama-bpe" : null;
        foreach (var (name, preset) in PreTokenizer.ByGgufName)
            if (preset.Name == pre.Name && preset.IgnoreMerges == pre.IgnoreMerges) return name;
        return null;
    }
}
