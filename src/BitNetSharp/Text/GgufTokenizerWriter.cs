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
    /// <summary>Why <paramref name="tokenizer"/> cannot be written as GGUF metadata, or null when it can.</summary>
    public static string? CannotWrite(BitNetTokenizer tokenizer) => tokenizer switch
    {
        ByteLevelBpeTokenizer b when GgufPreName(b.PreTokenizer) is null =>
            $"its pre-tokenizer is a custom regex from tokenizer.json, which has no tokenizer.ggml.pre name",
        ByteLevelBpeTokenizer or TiktokenBpeTokenizer or SentencePieceBpeTokenizer => null,
        _ => $"{tokenizer.GetType().Name} has no GGUF form",
    };

    /// <summary>Adds the tokenizer keys to <paramref name="writer"/>.</summary>
    /// <exception cref="NotSupportedException">The tokenizer has no GGUF form (<see cref="CannotWrite"/> says why).</exception>
    public static void Write(BitNetTokenizer tokenizer, GgufWriter writer)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(writer);
        if (CannotWrite(tokenizer) is { } reason) throw new NotSupportedException($"The tokenizer cannot be stored in GGUF: {reason}.");

        int n = tokenizer.VocabularySize;
        var tokens = new string[n];
        var types = new int[n];
        for (int id = 0; id < n; id++)
        {
            tokens[id] = tokenizer.TokenText(id);
            types[id] = (int)tokenizer.KindOf(id);
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
                for (int id = 0; id < n; id++) scores[id] = s.Score(id);
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
        Id("tokenizer.ggml.eot_token_id", tokenizer.EotId);
        Id("tokenizer.ggml.unknown_token_id", tokenizer.UnknownId);
        Id("tokenizer.ggml.padding_token_id", tokenizer.PaddingId);
        writer.AddBool("tokenizer.ggml.add_bos_token", tokenizer.AddBosToken);
    }

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
