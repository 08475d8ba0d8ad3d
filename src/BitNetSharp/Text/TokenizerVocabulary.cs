namespace BitNetSharp.Tokenization;

/// <summary>
/// The model-independent part of a tokenizer as the loaders assemble it: id → text and kind, the special ids and
/// whether a prompt starts with BOS. Ids not given a text by the source become <see cref="TokenKind.Unused"/>.
/// </summary>
internal sealed class TokenizerVocabulary
{
    public TokenizerVocabulary(string[] texts, TokenKind[] kinds)
    {
        if (texts.Length != kinds.Length) throw new ArgumentException("One kind per token text is required.", nameof(kinds));
        Texts = texts;
        Kinds = kinds;
        IdByText = new Dictionary<string, int>(texts.Length, StringComparer.Ordinal);
        for (int id = 0; id < texts.Length; id++)
        {
            // A text listed twice keeps its first id, as the model never produces the second from text.
            if (texts[id].Length > 0) IdByText.TryAdd(texts[id], id);
        }
    }

    public string[] Texts { get; }

    public TokenKind[] Kinds { get; }

    public Dictionary<string, int> IdByText { get; }

    public int BosId { get; set; } = -1;

    public int EosId { get; set; } = -1;

    public int EotId { get; set; } = -1;

    public int UnknownId { get; set; } = -1;

    public int PaddingId { get; set; } = -1;

    public bool AddBos { get; set; }

    /// <summary>Ids that absorb the whitespace before them when matched in text (HF lstrip, llama.cpp LSTRIP).</summary>
    public HashSet<int> StripLeft { get; } = [];

    /// <summary>Ids that absorb the whitespace after them when matched in text (HF rstrip, llama.cpp RSTRIP).</summary>
    public HashSet<int> StripRight { get; } = [];

    /// <summary>
    /// Whether stripping takes any Unicode whitespace (tokenizer.json flags: the tokenizers library tests
    /// char::is_whitespace, so U+3000 goes too) rather than C's isspace set (llama.cpp's rule for GGUFs).
    /// </summary>
    public bool StripUnicodeWhitespace { get; set; }

    public int Count => Texts.Length;

    /// <summary>Gives <paramref name="id"/> a new text and kind (tokenizer_config.json naming the special tokens).</summary>
    public void Rename(int id, string text, TokenKind kind)
    {
        if (IdByText.TryGetValue(Texts[id], out var old) && old == id) IdByText.Remove(Texts[id]);
        Texts[id] = text;
        Kinds[id] = kind;
        if (text.Length > 0) IdByText[text] = id;
    }

    /// <summary>The id of <paramref name="text"/>, or -1.</summary>
    public int Find(string text) => IdByText.TryGetValue(text, out var id) ? id : -1;

    /// <summary><paramref name="id"/> when it is inside the vocabulary, otherwise -1 (a loader's "not set").</summary>
    public int InRange(long id) => id >= 0 && id < Texts.Length ? (int)id : -1;
}
