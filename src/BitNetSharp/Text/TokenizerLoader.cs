using System.Text;
using System.Text.Json;
using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;

namespace BitNetSharp.Tokenization;

/// <summary>Builds the right <see cref="BitNetTokenizer"/> from a GGUF file's metadata or a Hugging Face model directory.</summary>
public static class TokenizerLoader
{
    /// <summary>Token count of the Llama 3 vocabulary (128000 BPE ranks + 256 special tokens), as in BitNet b1.58 2B4T.</summary>
    public const int Llama3VocabularySize = 128256;

    private const string Llama3SplitPattern = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    private const string Qwen2SplitPattern = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    public static BitNetTokenizer FromGguf(GgufFile file, string? preTokenizer = null)
    {
        ArgumentNullException.ThrowIfNull(file);
        return FromGguf(file.Metadata, preTokenizer);
    }

    /// <summary>
    /// <c>tokenizer.ggml.model</c> "gpt2" gives byte-level BPE (pre-tokenizer from <c>tokenizer.ggml.pre</c>; when
    /// that is missing a 128256-token vocabulary is Llama 3's, as in the official BitNet 2B4T GGUF, and anything else
    /// gets llama.cpp's "default"), "llama" gives SentencePiece BPE. Other tokenizer models are refused.
    /// </summary>
    /// <param name="metadata">The GGUF metadata.</param>
    /// <param name="preTokenizer">
    /// Overrides the byte-level pre-tokenizer by its <c>tokenizer.ggml.pre</c> name (see <see cref="PreTokenizer.ByGgufName"/>):
    /// "default" reproduces what bitnet.cpp does with the official 2B4T GGUF, for parity tests.
    /// </param>
    public static BitNetTokenizer FromGguf(GgufMetadata metadata, string? preTokenizer = null)
    {
        ArgumentNullException.ThrowIfNull(metadata);
        var tokenizer = FromGgufVocabulary(metadata, preTokenizer);
        // Read leniently: a key of another type (TryGetString throws on one) is no template, not a model that cannot load.
        if (metadata.TryGetValue("tokenizer.chat_template", out var template) && template.Value is string { Length: > 0 } text) tokenizer.EmbeddedChatTemplate = text;
        return tokenizer;
    }

    private static BitNetTokenizer FromGgufVocabulary(GgufMetadata metadata, string? preTokenizer)
    {
        var path = metadata.FilePath;
        var model = metadata.GetString("tokenizer.ggml.model");
        var texts = metadata.GetStringArray("tokenizer.ggml.tokens");
        if (texts.Length == 0) throw new ModelFormatException(path, "the vocabulary is empty", "tokenizer.ggml.tokens");

        var kinds = new TokenKind[texts.Length];
        Array.Fill(kinds, TokenKind.Normal);
        if (metadata.TryGetInt32Array("tokenizer.ggml.token_type", out var types))
        {
            if (types.Length < texts.Length)
                throw new ModelFormatException(path, $"has {types.Length} entries for {texts.Length} tokens", "tokenizer.ggml.token_type");
            for (int i = 0; i < texts.Length; i++)
                if (types[i] is >= 1 and <= 6) kinds[i] = (TokenKind)types[i];
        }
        var vocabulary = new TokenizerVocabulary(texts, kinds);
        ApplyGgufStripRules(metadata, vocabulary);

        switch (model)
        {
            case "gpt2":
            {
                var merges = metadata.GetStringArray("tokenizer.ggml.merges");
                PreTokenizer pre;
                if (preTokenizer != null)
                {
                    if (!PreTokenizer.ByGgufName.TryGetValue(preTokenizer, out pre!))
                        throw new ArgumentException(
                            $"Unknown pre-tokenizer \"{preTokenizer}\"; valid names are: {string.Join(", ", PreTokenizer.ByGgufName.Keys)}.", nameof(preTokenizer));
                }
                else if (!metadata.TryGetString("tokenizer.ggml.pre", out var preName) || preName.Length == 0)
                    pre = texts.Length == Llama3VocabularySize ? PreTokenizer.Llama3 : PreTokenizer.Default;
                else if (!PreTokenizer.ByGgufName.TryGetValue(preName, out pre!))
                    throw new ModelFormatException(path,
                        $"pre-tokenizer \"{preName}\" is not supported; supported: {string.Join(", ", PreTokenizer.ByGgufName.Keys)}",
                        "tokenizer.ggml.pre");
                ApplyGgufSpecialIds(metadata, vocabulary, defaultAddBos: pre == PreTokenizer.Llama3);
                return new ByteLevelBpeTokenizer(vocabulary, merges, pre, path, "tokenizer.ggml.merges");
            }
            case "llama":
            {
                float[] scores = metadata.TryGetFloat32Array("tokenizer.ggml.scores", out var s) ? s : new float[texts.Length];
                if (scores.Length < texts.Length)
                    throw new ModelFormatException(path, $"has {scores.Length} entries for {texts.Length} tokens", "tokenizer.ggml.scores");
                // A NaN score compares false with every other, so merges went by which pair came first: text split
                // differently from the vocabulary's own tokenizer, without a word.
                CheckScores(scores, texts, path, "tokenizer.ggml.scores");
                vocabulary.UnknownId = vocabulary.InRange(0);
                vocabulary.BosId = vocabulary.InRange(1);
                vocabulary.EosId = vocabulary.InRange(2);
                ApplyGgufSpecialIds(metadata, vocabulary, defaultAddBos: true);
                bool addSpacePrefix = !metadata.TryGetBool("tokenizer.ggml.add_space_prefix", out var prefix) || prefix;
                return new SentencePieceBpeTokenizer(vocabulary, scores, addSpacePrefix);
            }
            case "bert":
                throw new ModelFormatException(path,
                    "WordPiece (BERT) vocabularies are not supported: they belong to encoder models, and this runtime generates text with byte-level BPE (\"gpt2\") or SentencePiece (\"llama\") vocabularies",
                    "tokenizer.ggml.model");
            default:
                throw new ModelFormatException(path,
                    $"tokenizer model \"{model}\" is not supported; supported: \"gpt2\" (byte-level BPE) and \"llama\" (SentencePiece BPE)",
                    "tokenizer.ggml.model");
        }
    }

    /// <summary>
    /// Whitespace stripping that a GGUF does not store and llama.cpp sets by the model's name: a model whose
    /// general.name contains "phi-3" or "phi3" (any case) has every control, user-defined and unknown token and
    /// &lt;/s&gt; strip the whitespace after it, except &lt;unk&gt;, &lt;s&gt; and &lt;|endoftext|&gt; (Phi-3's
    /// tokenizer.json marks its chat tokens rstrip). Without it a Phi-3 turn was 14 tokens where llama.cpp makes 8.
    /// </summary>
    private static void ApplyGgufStripRules(GgufMetadata metadata, TokenizerVocabulary vocabulary)
    {
        // Flags a tokenizer.json gave, kept by our converter under its own keys.
        foreach (var (key, set) in new[] { (GgufTokenizerWriter.StripLeftKey, vocabulary.StripLeft), (GgufTokenizerWriter.StripRightKey, vocabulary.StripRight) })
            if (metadata.TryGetInt32Array(key, out var ids))
                foreach (int id in ids)
                    set.Add(vocabulary.InRange(id) is >= 0 and var inRange ? inRange : throw new ModelFormatException(metadata.FilePath, $"token {id} is outside the vocabulary of {vocabulary.Count}", key));
        if (metadata.TryGetBool(GgufTokenizerWriter.StripUnicodeKey, out bool unicode)) vocabulary.StripUnicodeWhitespace = unicode;
        if (!metadata.TryGetString("general.name", out var name)) return;
        string lower = name.ToLowerInvariant();
        if (!lower.Contains("phi-3", StringComparison.Ordinal) && !lower.Contains("phi3", StringComparison.Ordinal)) return;
        for (int id = 0; id < vocabulary.Count; id++)
            if (vocabulary.Kinds[id] is TokenKind.Control or TokenKind.UserDefined or TokenKind.Unknown) vocabulary.StripRight.Add(id);
        if (vocabulary.Find("</s>") is >= 0 and var eos) vocabulary.StripRight.Add(eos);
        foreach (var kept in new[] { "<unk>", "<s>", "<|endoftext|>" })
            if (vocabulary.Find(kept) is >= 0 and var id) vocabulary.StripRight.Remove(id);
    }

    private static void ApplyGgufSpecialIds(GgufMetadata metadata, TokenizerVocabulary vocabulary, bool defaultAddBos)
    {
        vocabulary.BosId = IdOrDefault(metadata, vocabulary, "tokenizer.ggml.bos_token_id", vocabulary.BosId);
        vocabulary.EosId = IdOrDefault(metadata, vocabulary, "tokenizer.ggml.eos_token_id", vocabulary.EosId);
        vocabulary.EotId = IdOrDefault(metadata, vocabulary, "tokenizer.ggml.eot_token_id", -1);
        vocabulary.UnknownId = IdOrDefault(metadata, vocabulary, "tokenizer.ggml.unknown_token_id", vocabulary.UnknownId);
        vocabulary.PaddingId = IdOrDefault(metadata, vocabulary, "tokenizer.ggml.padding_token_id", -1);
        vocabulary.AddBos = metadata.TryGetBool("tokenizer.ggml.add_bos_token", out var add) ? add : defaultAddBos;
    }

    private static int IdOrDefault(GgufMetadata metadata, TokenizerVocabulary vocabulary, string key, int fallback)
    {
        if (!metadata.TryGetInteger(key, out var id)) return fallback;
        if (id < 0 || id >= vocabulary.Count)
            throw new ModelFormatException(metadata.FilePath, $"token id {id} is outside the vocabulary of {vocabulary.Count} tokens", key);
        return (int)id;
    }

    /// <summary>
    /// The tokenizer of a Hugging Face model directory, from the first of: tokenizer.json (byte-level BPE),
    /// tokenizer.model (tiktoken, i.e. Llama 3, or SentencePiece BPE), vocab.json + merges.txt (GPT-2 style).
    /// tokenizer_config.json, when present, supplies the BOS/EOS texts, add_bos_token and added tokens.
    /// </summary>
    public static BitNetTokenizer FromHfDirectory(string directory)
    {
        ArgumentNullException.ThrowIfNull(directory);
        if (!Directory.Exists(directory)) throw new ModelFormatException(directory, "no such directory");
        var config = HfTokenizerConfig.Load(Path.Combine(directory, "tokenizer_config.json"));
        var tokenizerJson = Path.Combine(directory, "tokenizer.json");
        var tokenizerModel = Path.Combine(directory, "tokenizer.model");
        var vocabJson = Path.Combine(directory, "vocab.json");
        var mergesTxt = Path.Combine(directory, "merges.txt");
        var tokenizer = FromHfFiles(directory, config, tokenizerJson, tokenizerModel, vocabJson, mergesTxt);
        tokenizer.EmbeddedChatTemplate = EmbeddedChatTemplate(directory);
        // What transformers' generate stops on (generation_config.json, else config.json): a model whose stop id is not
        // the tokenizer's EOS nor a known end-of-turn text ran on through it.
        var (stops, source) = BitNetSharp.Formats.HuggingFace.HfConfig.GenerationStopIds(directory);
        foreach (int id in stops)
            if (id >= tokenizer.VocabularySize)
                throw new ModelFormatException(source!, $"token {id} is outside the tokenizer's vocabulary of {tokenizer.VocabularySize} tokens", "eos_token_id");
        tokenizer.AddConfiguredStops(stops);
        return tokenizer;
    }

    /// <summary>
    /// The directory's default chat template (what convert writes as <c>tokenizer.chat_template</c>), or null. A
    /// malformed one reads as none: a template only picks the chat format, and the model still generates without it.
    /// </summary>
    private static string? EmbeddedChatTemplate(string directory)
    {
        try
        {
            foreach (var (key, value) in GgufTokenizerWriter.ChatTemplates(directory))
                if (key == "tokenizer.chat_template" && value.Value is string { Length: > 0 } text) return text;
        }
        catch (Exception e) when (e is ModelFormatException or IOException or UnauthorizedAccessException)
        {
        }
        return null;
    }

    private static BitNetTokenizer FromHfFiles(string directory, HfTokenizerConfig config, string tokenizerJson, string tokenizerModel, string vocabJson, string mergesTxt)
    {
        // Llama-2-style folders ship a SentencePiece-style tokenizer.json (ByteFallback, no ByteLevel) beside the
        // tokenizer.model it was made from: that one is read instead of failing on the JSON.
        if (File.Exists(tokenizerJson) && !(File.Exists(tokenizerModel) && !JsonUsesByteLevel(tokenizerJson))) return FromTokenizerJson(tokenizerJson, config);
        if (File.Exists(tokenizerModel)) return FromTokenizerModel(tokenizerModel, config);
        if (File.Exists(vocabJson) && File.Exists(mergesTxt)) return FromVocabAndMerges(vocabJson, mergesTxt, config);
        throw new ModelFormatException(directory, "no tokenizer found: expected tokenizer.json, tokenizer.model, or vocab.json with merges.txt");
    }

    /// <summary>
    /// A <c>tokenizer.model</c> file: a tiktoken vocabulary (text lines "base64 rank"; read as Llama 3 with its 256
    /// special tokens) or a SentencePiece BPE model (protobuf).
    /// </summary>
    public static BitNetTokenizer FromTokenizerModel(string path) => FromTokenizerModel(path, HfTokenizerConfig.Load(SiblingConfig(path)));

    /// <summary>A Hugging Face <c>tokenizer.json</c> with a byte-level BPE model.</summary>
    public static BitNetTokenizer FromTokenizerJson(string path) => FromTokenizerJson(path, HfTokenizerConfig.Load(SiblingConfig(path)));

    /// <summary>GPT-2-style <c>vocab.json</c> and <c>merges.txt</c>.</summary>
    public static BitNetTokenizer FromVocabAndMerges(string vocabJsonPath, string mergesTxtPath) =>
        FromVocabAndMerges(vocabJsonPath, mergesTxtPath, HfTokenizerConfig.Load(SiblingConfig(vocabJsonPath)));

    private static string SiblingConfig(string path) =>
        Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path)) ?? ".", "tokenizer_config.json");

    private static BitNetTokenizer FromTokenizerModel(string path, HfTokenizerConfig config)
    {
        if (!File.Exists(path)) throw new ModelFormatException(path, "no such file");
        PathIdentity.RequireRegularFile(path, Path.GetFileName(path));
        Span<byte> head = stackalloc byte[16];
        int n;
        using (var probe = File.OpenRead(path)) n = probe.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        if (SentencePieceModelFile.LooksLikeModelProto(head[..n])) return FromSentencePieceModel(path, config);

        var specials = TiktokenBpeTokenizer.Llama3SpecialTokens();
        return TiktokenBpeTokenizer.Create(File.ReadAllBytes(path), specials, vocabulary =>
        {
            if (vocabulary.Count != Llama3VocabularySize)
                throw new ModelFormatException(path,
                    $"has {vocabulary.Count - specials.Length} ranks; only the Llama 3 tiktoken vocabulary (128000 ranks) is supported, since its special tokens and pre-tokenizer are implied rather than stored");
            config.ApplyAddedTokens(vocabulary, path);
            config.ApplySpecialIds(vocabulary, "<|begin_of_text|>", "<|end_of_text|>", defaultAddBos: true);
        }, path);
    }

    /// <summary>
    /// A NaN SentencePiece score (of a token the vocabulary holds; entries past it are not read) is refused naming the
    /// entry: it compares false with every other score, so merges went by position and text split otherwise than the
    /// vocabulary's own tokenizer splits it, without a word.
    /// </summary>
    private static void CheckScores(float[] scores, IReadOnlyList<string> texts, string path, string item)
    {
        int nan = Array.FindIndex(scores, 0, Math.Min(scores.Length, texts.Count), float.IsNaN);
        if (nan >= 0)
            throw new ModelFormatException(path, $"entry {nan} (token \"{texts[nan]}\") is NaN; a merge score must be a number", item);
    }

    private static BitNetTokenizer FromSentencePieceModel(string path, HfTokenizerConfig config)
    {
        var model = SentencePieceModelFile.Read(path);
        if (model.ModelType != SentencePieceModelFile.ModelTypeBpe)
            throw new ModelFormatException(path,
                $"SentencePiece model type {(model.ModelType == SentencePieceModelFile.ModelTypeUnigram ? "unigram" : model.ModelType.ToString(System.Globalization.CultureInfo.InvariantCulture))} is not supported; only BPE (Llama 2 style) is");
        // Tokens tokenizer_config.json adds after the model's pieces (1bitLLM's <pad> = 32000): the vocabulary grows to
        // hold them (they were dropped: "<pad>" unknown, no padding id, never split out of text).
        var pieces = new List<string>(model.Pieces);
        var kinds = new List<TokenKind>(model.Kinds);
        var scores = new List<float>(model.Scores);
        int last = -1;
        foreach (var (id, _, _) in config.AddedTokens) last = Math.Max(last, id);
        if (last >= pieces.Count + MaxVocabularyHoles)
            throw new ModelFormatException(path, $"tokenizer_config.json adds token {last} to a model of {pieces.Count} pieces; ids that far apart mean a corrupt file", "added_tokens_decoder");
        while (pieces.Count <= last)
        {
            pieces.Add("");
            kinds.Add(TokenKind.Unused);
            scores.Add(0f);
        }
        CheckScores([.. scores], pieces, path, "piece scores");
        var vocabulary = new TokenizerVocabulary([.. pieces], [.. kinds]);
        config.ApplyAddedTokens(vocabulary, path);
        vocabulary.UnknownId = vocabulary.InRange(model.UnknownId);
        vocabulary.BosId = vocabulary.InRange(model.BosId);
        vocabulary.EosId = vocabulary.InRange(model.EosId);
        vocabulary.PaddingId = vocabulary.InRange(model.PadId);
        config.ApplySpecialIds(vocabulary, null, null, defaultAddBos: true);
        return new SentencePieceBpeTokenizer(vocabulary, [.. scores], model.AddDummyPrefix);
    }

    private static bool JsonUsesByteLevel(string path)
    {
        try
        {
            using var document = ParseJson(path);
            return document.RootElement.ValueKind == JsonValueKind.Object && UsesByteLevel(document.RootElement);
        }
        catch (Exception e) when (e is ModelFormatException or InvalidOperationException)
        {
            return true; // let the full read report what is wrong with it
        }
    }

    private static BitNetTokenizer FromTokenizerJson(string path, HfTokenizerConfig config)
    {
        try
        {
            return ReadTokenizerJson(path, config);
        }
        catch (InvalidOperationException e)
        {
            // JsonElement's accessors throw this when a value has another kind than the format's (a vocab id given as
            // a string, a merge as numbers, the whole file an array).
            throw new ModelFormatException(path, $"a value has the wrong JSON type for a Hugging Face tokenizer.json ({e.Message})", null, e);
        }
    }

    private static BitNetTokenizer ReadTokenizerJson(string path, HfTokenizerConfig config)
    {
        using var document = ParseJson(path);
        var root = document.RootElement;
        if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
            throw new ModelFormatException(path, "has no \"model\" object", "model");
        var type = model.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
        if (type != "BPE")
            throw new ModelFormatException(path, $"model type \"{type}\" is not supported; only BPE is", "model.type");
        if (!UsesByteLevel(root))
            throw new ModelFormatException(path,
                "is a SentencePiece-style BPE (no ByteLevel step); load the model's tokenizer.model instead", "pre_tokenizer");
        CheckNoNormalizer(root, path);
        if (!model.TryGetProperty("vocab", out var vocab) || vocab.ValueKind != JsonValueKind.Object)
            throw new ModelFormatException(path, "has no vocab object", "model.vocab");

        var entries = new List<(string Text, int Id, TokenKind Kind)>();
        foreach (var p in vocab.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out var id) || id < 0)
                throw new ModelFormatException(path, $"token \"{p.Name}\" has id {p.Value.GetRawText()}, expected a non-negative integer", "model.vocab");
            entries.Add((p.Name, id, TokenKind.Normal));
        }
        var stripLeft = new List<int>();
        var stripRight = new List<int>();
        if (root.TryGetProperty("added_tokens", out var added) && added.ValueKind == JsonValueKind.Array)
        {
            foreach (var token in added.EnumerateArray())
            {
                if (!token.TryGetProperty("id", out var idElement) || idElement.ValueKind != JsonValueKind.Number || !idElement.TryGetInt32(out var id) || id < 0 ||
                    !token.TryGetProperty("content", out var content) || content.ValueKind != JsonValueKind.String)
                    throw new ModelFormatException(path, $"an added token lacks an id or content: {token}", "added_tokens");
                bool special = token.TryGetProperty("special", out var sp) && sp.ValueKind == JsonValueKind.True;
                entries.Add((content.GetString()!, id, special ? TokenKind.Control : TokenKind.UserDefined));
                if (token.TryGetProperty("lstrip", out var ls) && ls.ValueKind == JsonValueKind.True) stripLeft.Add(id);
                if (token.TryGetProperty("rstrip", out var rs) && rs.ValueKind == JsonValueKind.True) stripRight.Add(id);
            }
        }
        var vocabulary = BuildVocabulary(entries, path);
        // An added token's lstrip/rstrip: it takes the whitespace beside it when matched (they were read as nothing).
        vocabulary.StripLeft.UnionWith(stripLeft);
        vocabulary.StripRight.UnionWith(stripRight);
        vocabulary.StripUnicodeWhitespace = true;

        var merges = new List<string>();
        if (model.TryGetProperty("merges", out var mergeArray) && mergeArray.ValueKind == JsonValueKind.Array)
        {
            foreach (var merge in mergeArray.EnumerateArray())
            {
                // Older files write "a b"; newer ones write ["a", "b"]. Byte-level tokens never contain a literal space.
                if (merge.ValueKind == JsonValueKind.String) merges.Add(merge.GetString()!);
                else if (merge.ValueKind == JsonValueKind.Array && merge.GetArrayLength() == 2)
                    merges.Add(merge[0].GetString() + " " + merge[1].GetString());
                else throw new ModelFormatException(path, $"merge {merges.Count} is {merge}, expected \"a b\" or [\"a\", \"b\"]", "model.merges");
            }
        }

        bool ignoreMerges = model.TryGetProperty("ignore_merges", out var im) && im.ValueKind == JsonValueKind.True;
        var steps = PreTokenizerSteps(root, path);
        var pre = steps switch
        {
            null => PreTokenizer.Gpt2,
            [] => PreTokenizer.FromPatterns([], ignoreMerges: false), // ByteLevel without its regex: the text is one piece
            [Llama3SplitPattern] => PreTokenizer.Llama3,
            [Qwen2SplitPattern] => PreTokenizer.Qwen2,
            [PreTokenizer.Gpt2RegexPattern] => PreTokenizer.Gpt2,
            _ => CompilePatterns(steps, path),
        };
        pre = pre.WithIgnoreMerges(ignoreMerges);

        string? bosText = FirstTemplateSpecialToken(root);
        config.ApplyAddedTokens(vocabulary, path);
        config.ApplySpecialIds(vocabulary,
            bosText ?? (vocabulary.Find("<|begin_of_text|>") >= 0 ? "<|begin_of_text|>" : "<|endoftext|>"),
            vocabulary.Find("<|end_of_text|>") >= 0 ? "<|end_of_text|>" : "<|endoftext|>",
            defaultAddBos: bosText != null);
        return new ByteLevelBpeTokenizer(vocabulary, merges, pre, path, "model.merges");
    }

    /// <summary>
    /// tokenizer.json's normalizer: none is the only one this runtime applies. Any other (NFC, Lowercase, Replace, ...)
    /// is refused by name: it was ignored, and text it changes (such as "e\u0301", which NFC makes "é") got other ids than
    /// transformers gives it. (The runtime is built with invariant globalization, which has no Unicode normalization tables.)
    /// </summary>
    private static void CheckNoNormalizer(JsonElement root, string path)
    {
        if (!root.TryGetProperty("normalizer", out var n) || n.ValueKind == JsonValueKind.Null) return;
        static string? TypeOf(JsonElement e) => e.ValueKind == JsonValueKind.Object && e.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
        if (TypeOf(n) == "Sequence" && n.TryGetProperty("normalizers", out var list) && list.ValueKind == JsonValueKind.Array && list.GetArrayLength() == 0) return;
        string what = TypeOf(n) == "Sequence" && n.TryGetProperty("normalizers", out var steps) && steps.ValueKind == JsonValueKind.Array
            ? "Sequence of " + string.Join(", ", steps.EnumerateArray().Select(e => TypeOf(e) ?? "?"))
            : TypeOf(n) ?? n.ValueKind.ToString();
        throw new ModelFormatException(path, $"normalizer \"{what}\" is not applied by this runtime (text it changes would get other ids than transformers gives it); only tokenizers without a normalizer load", "normalizer");
    }

    private static BitNetTokenizer FromVocabAndMerges(string vocabPath, string mergesPath, HfTokenizerConfig config)
    {
        using var document = ParseJson(vocabPath);
        if (document.RootElement.ValueKind != JsonValueKind.Object) throw new ModelFormatException(vocabPath, "expected a JSON object of token → id");
        var entries = new List<(string Text, int Id, TokenKind Kind)>();
        foreach (var p in document.RootElement.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out var id) || id < 0)
                throw new ModelFormatException(vocabPath, $"token \"{p.Name}\" has id {p.Value.GetRawText()}, expected a non-negative integer");
            entries.Add((p.Name, id, p.Name == "<|endoftext|>" ? TokenKind.Control : TokenKind.Normal));
        }
        var vocabulary = BuildVocabulary(entries, vocabPath);

        var merges = new List<string>();
        PathIdentity.RequireRegularFile(mergesPath, "merges.txt");
        foreach (var line in File.ReadLines(mergesPath, Encoding.UTF8))
        {
            if (line.Length == 0 || (merges.Count == 0 && line.StartsWith("#version", StringComparison.Ordinal))) continue;
            merges.Add(line);
        }
        config.ApplyAddedTokens(vocabulary, vocabPath);
        config.ApplySpecialIds(vocabulary, "<|endoftext|>", "<|endoftext|>", defaultAddBos: false);
        return new ByteLevelBpeTokenizer(vocabulary, merges, PreTokenizer.Gpt2, mergesPath, "merges");
    }

    /// <summary>Unused ids a vocabulary may leave between its tokens (models pad to multiples of 64 or 128; 2B4T's has none).</summary>
    private const int MaxVocabularyHoles = 1 << 20;

    private static TokenizerVocabulary BuildVocabulary(List<(string Text, int Id, TokenKind Kind)> entries, string path)
    {
        // Ids may leave holes (unused slots), but not more than a real vocabulary has: an id of 2^31 − 1 wrapped the
        // count to 0 (IndexOutOfRangeException), and 10^9 from a 60-byte file sized gigabytes of arrays.
        long maxId = -1;
        foreach (var e in entries) maxId = Math.Max(maxId, e.Id);
        if (maxId >= entries.Count + MaxVocabularyHoles)
            throw new ModelFormatException(path, $"token ids run to {maxId:N0} for {entries.Count:N0} tokens; ids that far apart mean a corrupt file");
        int count = (int)(maxId + 1);
        var texts = new string[count];
        var kinds = new TokenKind[count];
        Array.Fill(texts, "");
        Array.Fill(kinds, TokenKind.Unused);
        var seen = new bool[count];
        foreach (var (text, id, kind) in entries)
        {
            // An added token repeating a vocabulary entry (same id) only upgrades its kind; two texts for one id are a
            // corrupt vocabulary (the second replaced the first, and every "a" of a prompt was dropped without a word).
            if (seen[id] && texts[id] != text)
                throw new ModelFormatException(path, $"token id {id} is given twice, as {Quote(texts[id])} and as {Quote(text)}; each id names one token", "model.vocab");
            seen[id] = true;
            texts[id] = text;
            if (kind != TokenKind.Normal || kinds[id] == TokenKind.Unused) kinds[id] = kind;
        }
        if (count == 0) throw new ModelFormatException(path, "the vocabulary is empty");
        return new TokenizerVocabulary(texts, kinds);
    }

    private static string Quote(string text) => System.Text.Json.JsonSerializer.Serialize(text);

    private static PreTokenizer CompilePatterns(List<string> patterns, string path)
    {
        try
        {
            return PreTokenizer.FromPatterns(patterns, ignoreMerges: false);
        }
        catch (ArgumentException e)
        {
            throw new ModelFormatException(path, $"a pre_tokenizer regex cannot be compiled by .NET ({e.Message}); a character range past U+FFFF, which .NET classes cannot express, is the usual cause. Use a GGUF of this model, whose tokenizer.ggml.pre names the split", "pre_tokenizer", e);
        }
    }

    private static bool UsesByteLevel(JsonElement root)
    {
        foreach (var name in (string[])["pre_tokenizer", "decoder"])
            if (root.TryGetProperty(name, out var step) && ContainsType(step, "ByteLevel")) return true;
        return false;
    }

    private static bool ContainsType(JsonElement element, string type)
    {
        switch (element.ValueKind)
        {
            case JsonValueKind.Object:
                foreach (var p in element.EnumerateObject())
                {
                    if (p.Name == "type" && p.Value.ValueKind == JsonValueKind.String && p.Value.GetString() == type) return true;
                    if (ContainsType(p.Value, type)) return true;
                }
                return false;
            case JsonValueKind.Array:
                foreach (var item in element.EnumerateArray())
                    if (ContainsType(item, type)) return true;
                return false;
            default:
                return false;
        }
    }

    /// <summary>The regex of the first <c>Split</c> pre-tokenizer step, or null (then ByteLevel's own GPT-2 regex applies).</summary>
    /// <summary>
    /// The pre_tokenizer as regex steps in order: Split (a Regex or String pattern, behavior Isolated, not inverted),
    /// Digits (runs, or single digits), Punctuation (Isolated) and ByteLevel with use_regex (GPT-2's regex; the
    /// default) each become one step; ByteLevel without use_regex adds none. Null when there is no pre_tokenizer.
    /// Anything else (Metaspace, Whitespace, BertPreTokenizer, another behavior) is refused naming it: only the first
    /// Split was read, the rest ignored, and the ids came out wrong without a word (deepseek-llm's list of Splits,
    /// Falcon's Digits and Punctuation).
    /// </summary>
    private static List<string>? PreTokenizerSteps(JsonElement root, string path)
    {
        if (!root.TryGetProperty("pre_tokenizer", out var pre) || pre.ValueKind == JsonValueKind.Null) return null;
        var steps = new List<string>();
        Walk(pre, "pre_tokenizer");
        return steps;

        void Walk(JsonElement e, string where)
        {
            if (e.ValueKind != JsonValueKind.Object)
                throw new ModelFormatException(path, $"found a JSON {e.ValueKind}, expected a pre-tokenizer object", where);
            string? type = e.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
            switch (type)
            {
                case "Sequence":
                    if (!e.TryGetProperty("pretokenizers", out var list) || list.ValueKind != JsonValueKind.Array)
                        throw new ModelFormatException(path, "a Sequence needs a pretokenizers array", where);
                    int i = 0;
                    foreach (var item in list.EnumerateArray()) Walk(item, $"{where}.pretokenizers[{i++}]");
                    break;
                case "ByteLevel":
                    // add_prefix_space puts a space before the text (RoBERTa): a different encoding this reader does not make.
                    if (e.TryGetProperty("add_prefix_space", out var prefixSpace) && prefixSpace.ValueKind == JsonValueKind.True)
                        throw new ModelFormatException(path, "a ByteLevel step with add_prefix_space: true is not supported by this runtime", where);
                    if (!e.TryGetProperty("use_regex", out var useRegex) || useRegex.ValueKind != JsonValueKind.False) steps.Add(PreTokenizer.Gpt2RegexPattern);
                    break;
                case "Split":
                    if (e.TryGetProperty("invert", out var invert) && invert.ValueKind == JsonValueKind.True)
                        throw new ModelFormatException(path, "a Split with invert: true is not supported", where);
                    if (e.TryGetProperty("behavior", out var behavior) && behavior.ValueKind == JsonValueKind.String && behavior.GetString() != "Isolated")
                        throw new ModelFormatException(path, $"a Split with behavior {behavior.GetString()} is not supported (only Isolated)", where);
                    if (e.TryGetProperty("pattern", out var pattern) && pattern.ValueKind == JsonValueKind.Object)
                    {
                        if (pattern.TryGetProperty("Regex", out var regex) && regex.ValueKind == JsonValueKind.String) { steps.Add(regex.GetString()!); break; }
                        if (pattern.TryGetProperty("String", out var literal) && literal.ValueKind == JsonValueKind.String) { steps.Add(System.Text.RegularExpressions.Regex.Escape(literal.GetString()!)); break; }
                    }
                    throw new ModelFormatException(path, "a Split needs a pattern {\"Regex\": ...} or {\"String\": ...}", where);
                case "Digits":
                    steps.Add(e.TryGetProperty("individual_digits", out var single) && single.ValueKind == JsonValueKind.True ? @"\p{N}" : @"\p{N}+");
                    break;
                case "Punctuation":
                {
                    // The tokenizers library's is_punc: Unicode punctuation and ASCII's punctuation symbols; Isolated
                    // makes each its own piece, Contiguous each run (Falcon's).
                    string behaviorName = e.TryGetProperty("behavior", out var pb) && pb.ValueKind == JsonValueKind.String ? pb.GetString()! : "Isolated";
                    if (behaviorName is not ("Isolated" or "Contiguous"))
                        throw new ModelFormatException(path, $"Punctuation with behavior {behaviorName} is not supported (Isolated and Contiguous are)", where);
                    steps.Add(behaviorName == "Contiguous" ? @"[\p{P}\$\+<=>\^`\|~]+" : @"[\p{P}\$\+<=>\^`\|~]");
                    break;
                }
                default:
                    throw new ModelFormatException(path, $"the pre-tokenizer step {type ?? "(no type)"} is not supported by this runtime (Split, Digits, Punctuation, ByteLevel and Sequences of them are)", where);
            }
        }
    }

    /// <summary>The special token a TemplateProcessing post-processor puts in front of a single sequence (the BOS it adds), or null.</summary>
    private static string? FirstTemplateSpecialToken(JsonElement root)
    {
        if (!root.TryGetProperty("post_processor", out var post)) return null;
        return Find(post);

        static string? Find(JsonElement e)
        {
            if (e.ValueKind == JsonValueKind.Array)
            {
                foreach (var item in e.EnumerateArray())
                    if (Find(item) is { } found) return found;
                return null;
            }
            if (e.ValueKind != JsonValueKind.Object) return null;
            if (e.TryGetProperty("type", out var type) && type.GetString() == "TemplateProcessing" &&
                e.TryGetProperty("single", out var single) && single.ValueKind == JsonValueKind.Array && single.GetArrayLength() > 0 &&
                single[0].TryGetProperty("SpecialToken", out var special) && special.TryGetProperty("id", out var id))
                return id.GetString();
            return e.TryGetProperty("processors", out var list) ? Find(list) : null;
        }
    }

    internal static JsonDocument ParseJson(string path)
    {
        if (!File.Exists(path)) throw new ModelFormatException(path, "no such file");
        PathIdentity.RequireRegularFile(path, Path.GetFileName(path));
        try
        {
            using var stream = File.OpenRead(path);
            var document = JsonDocument.Parse(stream, new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
            if (JsonText.Check(document.RootElement) is { } problem)
            {
                document.Dispose();
                throw new ModelFormatException(path, problem);
            }
            return document;
        }
        catch (JsonException e)
        {
            throw new ModelFormatException(path, $"not valid JSON: {e.Message}", inner: e);
        }
    }
}
