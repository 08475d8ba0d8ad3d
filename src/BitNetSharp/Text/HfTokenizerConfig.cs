using System.Globalization;
using System.Text.Json;
using BitNetSharp.Formats;

namespace BitNetSharp.Tokenization;

/// <summary>What the loaders use from a Hugging Face <c>tokenizer_config.json</c>: BOS/EOS texts, add_bos_token and added_tokens_decoder.</summary>
internal sealed class HfTokenizerConfig
{
    private static readonly HfTokenizerConfig Empty = new();

    public bool? AddBosToken { get; private init; }

    public string? BosToken { get; private init; }

    public string? EosToken { get; private init; }

    /// <summary><c>pad_token</c>'s text, when the configuration names one.</summary>
    public string? PadToken { get; private init; }

    public List<(int Id, string Content, bool Special)> AddedTokens { get; } = [];

    /// <summary>The parsed file, or an empty configuration when it does not exist.</summary>
    public static HfTokenizerConfig Load(string path)
    {
        if (!File.Exists(path)) return Empty;
        using var document = TokenizerLoader.ParseJson(path);
        var root = document.RootElement;
        if (root.ValueKind != JsonValueKind.Object) throw new ModelFormatException(path, "expected a JSON object");
        var config = new HfTokenizerConfig
        {
            AddBosToken = root.TryGetProperty("add_bos_token", out var add) && add.ValueKind is JsonValueKind.True or JsonValueKind.False ? add.GetBoolean() : null,
            BosToken = TokenContent(root, "bos_token"),
            EosToken = TokenContent(root, "eos_token"),
            PadToken = TokenContent(root, "pad_token"),
        };
        if (root.TryGetProperty("added_tokens_decoder", out var decoder) && decoder.ValueKind == JsonValueKind.Object)
        {
            foreach (var p in decoder.EnumerateObject())
            {
                if (!int.TryParse(p.Name, NumberStyles.None, CultureInfo.InvariantCulture, out var id) ||
                    p.Value.ValueKind != JsonValueKind.Object || TokenContent(p.Value, null) is not { } content)
                    throw new ModelFormatException(path, $"entry \"{p.Name}\" is not an id with a content string", "added_tokens_decoder");
                bool special = p.Value.TryGetProperty("special", out var s) && s.ValueKind == JsonValueKind.True;
                config.AddedTokens.Add((id, content, special));
            }
        }
        return config;
    }

    /// <summary>A token given as a string or as an object with "content" (AddedToken form); <paramref name="name"/> null reads the element itself.</summary>
    private static string? TokenContent(JsonElement parent, string? name)
    {
        var e = parent;
        if (name != null && !parent.TryGetProperty(name, out e)) return null;
        if (e.ValueKind == JsonValueKind.String) return e.GetString();
        if (e.ValueKind == JsonValueKind.Object && e.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String) return c.GetString();
        return null;
    }

    /// <summary>Names and kinds from added_tokens_decoder override the source's (ids outside the vocabulary are an error).</summary>
    public void ApplyAddedTokens(TokenizerVocabulary vocabulary, string path)
    {
        foreach (var (id, content, special) in AddedTokens)
        {
            if (id >= vocabulary.Count)
                throw new ModelFormatException(path, $"tokenizer_config.json adds token {id} (\"{content}\") beyond the vocabulary of {vocabulary.Count} tokens", "added_tokens_decoder");
            // The same text over an unknown-token or byte piece only says it is special: it keeps its own kind.
            if (vocabulary.Texts[id] == content && vocabulary.Kinds[id] is TokenKind.Unknown or TokenKind.Byte) continue;
            vocabulary.Rename(id, content, special ? TokenKind.Control : TokenKind.UserDefined);
        }
    }

    /// <summary>BOS/EOS by text (configuration first, then the given defaults; ids already set stay when neither is found) and the BOS rule.</summary>
    public void ApplySpecialIds(TokenizerVocabulary vocabulary, string? defaultBos, string? defaultEos, bool defaultAddBos)
    {
        int bos = vocabulary.Find(BosToken ?? defaultBos ?? "");
        if (bos >= 0) vocabulary.BosId = bos;
        int eos = vocabulary.Find(EosToken ?? defaultEos ?? "");
        if (eos >= 0) vocabulary.EosId = eos;
        vocabulary.AddBos = AddBosToken ?? defaultAddBos;
        if (PadToken is { } pad && vocabulary.Find(pad) is var padId and >= 0) vocabulary.PaddingId = padId;
    }
}
