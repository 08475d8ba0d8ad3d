using BitNetSharp.Tokenization;

namespace BitNetSharp.Tests.Text;

public class TokenizerBehaviorTests
{
    private const string Multilingual =
        "Hello, world! Grüße aus Köln. нещо на Български. 我想在apple工作1314151天～ こんにちは世界 한국어 텍스트 " +
        "emoji 🦙🚀😶‍🌫️✅ math ∑∫√ tabs\tand\nnewlines\r\n  double  spaces  ' quotes \"x\" ``` code {x: 1} ...!!! 3.14159 😁";

    public static TheoryData<string> Names => new() { "gpt-2", "llama-spm", "llama3-tiktoken", "llama3-gguf" };

    /// <summary>
    /// The merge table's hash spreads the pairs a vocabulary merges: long's own hash (hi ^ lo = left ^ right) put every
    /// token-with-itself pair in one bucket (548 of Llama 3's merges) and pairs of small ids in a few, so 1 MB of spaces
    /// took 8.3 s to encode (0.48 s spread; TokenizerBenchmarks). Every such pair, and the first 64 × 64 id pairs,
    /// now hash apart (a few collisions at most), and encoding is unchanged (the vocab vectors).
    /// </summary>
    [Fact]
    public void TheMergeTablesHashSpreadsPairs()
    {
        var comparer = ByteLevelBpeTokenizer.PairComparer.Instance;
        static long Pair(int left, int right) => ((long)left << 32) | (uint)right;
        var same = new HashSet<int>();
        for (int id = 0; id < 4096; id++) same.Add(comparer.GetHashCode(Pair(id, id)) & 0xFFFF);
        Assert.True(same.Count > 3500, $"{same.Count} of 4096 token-with-itself pairs in distinct buckets of 65,536");
        var small = new HashSet<int>();
        for (int a = 0; a < 64; a++)
            for (int b = 0; b < 64; b++) small.Add(comparer.GetHashCode(Pair(a, b)) & 0xFFFF);
        Assert.True(small.Count > 3500, $"{small.Count} of 4096 small-id pairs in distinct buckets of 65,536");
        Assert.True(comparer.Equals(Pair(3, 7), Pair(3, 7)) && !comparer.Equals(Pair(3, 7), Pair(7, 3)));
        Assert.Equal(TestTokenizers.Llama3Tiktoken.Encode(new string(' ', 5000), addBos: false), TestTokenizers.Llama3Gguf.Encode(new string(' ', 5000), addBos: false));
    }

    /// <summary>
    /// Letters and digits outside the BMP are letters and digits to the Llama 3 splitter, as to llama.cpp's and
    /// tiktoken's (code points): .NET's UTF-16 regex saw surrogates ("other"), so " 𝟏" became one piece with its space
    /// and "𝐉𝐨𝐡𝐧's" lost its 's contraction. Expected ids: tiktoken's rank merge over code-point pieces.
    /// </summary>
    [Theory]
    [InlineData("Call \U0001D7CF\U0001D7D0\U0001D7D1\U0001D7D2 now", new[] { 7368, 220, 57352, 253, 237, 57352, 253, 238, 57352, 253, 239, 57352, 253, 240, 1457 })]
    public void SupplementaryLettersAndDigitsSplitByCodePoint(string text, int[] expected)
    {
        Assert.Equal(expected, TestTokenizers.Llama3Gguf.Encode(text, addBos: false));
        Assert.Equal(expected, TestTokenizers.Llama3Tiktoken.Encode(text, addBos: false));
        var pieces = new List<(int Start, int Length)>();
        PreTokenizer.Llama3.Split(text, 0, text.Length, pieces);
        Assert.Equal(["Call", " ", "\U0001D7CF\U0001D7D0\U0001D7D1", "\U0001D7D2", " now"], pieces.Select(p => text.Substring(p.Start, p.Length)));
    }

    /// <summary>
    /// The stand-ins keep llama.cpp's deepseek splits: a supplementary cased letter is in its explicit letter list only
    /// inside the list's own supplementary ranges, and a supplementary mark is not in its CJK ranges (stand-ins inside U+0800-U+4E00 joined CJK runs).
    /// </summary>
    [Theory]
    [InlineData("x\U0001D409", new[] { "x", "\U0001D409" })]
    [InlineData("\u4E2D\U00011000", new[] { "\u4E2D", "\U00011000" })]
    // llama.cpp's list, not today's categories: Armenian small letters U+0560-0588 and Georgian Mkhedruli are out of it
    // (they joined the word before them); Deseret and Adlam, supplementary, are in it (they were split off).
    [InlineData("\u0532\u0561\u0580\u0565\u0582", new[] { "\u0532", "\u0561\u0580\u0565\u0582" })]
    [InlineData("\u10A0\u2D00", new[] { "\u10A0", "\u2D00" })]
    [InlineData("\u00E9\U00010400", new[] { "\u00E9\U00010400" })]
    [InlineData(" \u00E9\U0001E900\u00FC", new[] { " \u00E9\U0001E900\u00FC" })]
    public void DeepSeekSplitsOfSupplementaryCharactersFollowLlamaCpp(string text, string[] expected)
    {
        var pieces = new List<(int Start, int Length)>();
        PreTokenizer.DeepSeekLlm.Split(text, 0, text.Length, pieces);
        Assert.Equal(expected, pieces.Select(p => text.Substring(p.Start, p.Length)));
    }

    [Fact]
    public void SupplementaryLettersKeepTheirContraction()
    {
        string text = "\U0001D409\U0001D428\U0001D421\U0001D427's";
        var pieces = new List<(int Start, int Length)>();
        PreTokenizer.Llama3.Split(text, 0, text.Length, pieces);
        Assert.Equal(["\U0001D409\U0001D428\U0001D421\U0001D427", "'s"], pieces.Select(p => text.Substring(p.Start, p.Length)));
        Assert.Equal(596, TestTokenizers.Llama3Gguf.Encode(text, addBos: false)[^1]);
        // A lone surrogate is still its own "other" character.
        pieces.Clear();
        PreTokenizer.Llama3.Split("a\uD800b", 0, 3, pieces);
        Assert.Equal(3, pieces.Sum(p => p.Length));
    }

    /// <summary>
    /// A lone surrogate is U+FFFD's bytes on both Llama 3 paths (as tiktoken itself replaces it); a valid pair is
    /// untouched. (A review suspected the tiktoken path of writing CESU-8 bytes; this pins that it does not.)
    /// </summary>
    [Theory]
    [InlineData("a\uD800b")]
    [InlineData("x\uDC00")]
    [InlineData("pair \uD83D\uDE00 and lone \uD83D end")]
    public void LoneSurrogatesEncodeAlikeOnBothLlama3Paths(string text)
    {
        var gguf = TestTokenizers.Llama3Gguf.Encode(text, addBos: false);
        Assert.Equal(gguf, TestTokenizers.Llama3Tiktoken.Encode(text, addBos: false));
        Assert.Equal(TestTokenizers.Llama3Gguf.Decode(gguf), TestTokenizers.Llama3Tiktoken.Decode(gguf));
    }

    private static BitNetTokenizer Get(string name) => name switch
    {
        "gpt-2" => TestTokenizers.Gpt2,
        "llama-spm" => TestTokenizers.LlamaSpm,
        "llama3-tiktoken" => TestTokenizers.Llama3Tiktoken,
        "llama3-gguf" => TestTokenizers.Llama3Gguf,
        _ => throw new ArgumentOutOfRangeException(nameof(name)),
    };

    [Theory]
    [MemberData(nameof(Names))]
    public void DecodeInvertsEncodeOnUnicodeText(string name)
    {
        var tokenizer = Get(name);
        foreach (var text in new[] { Multilingual, " leading space", "  two leading", "trailing ", "", "\n", "a", "🦙" })
        {
            var ids = tokenizer.Encode(text, addBos: tokenizer.AddBosToken);
            Assert.Equal(text, tokenizer.Decode(ids));
        }
    }

    [Theory]
    [MemberData(nameof(Names))]
    public void BosIsAddedOnceAndOnlyWhenAsked(string name)
    {
        var tokenizer = Get(name);
        var plain = tokenizer.Encode("Hi there", addBos: false);
        var withBos = tokenizer.Encode("Hi there", addBos: true);
        Assert.NotEqual(tokenizer.BosId, plain[0]);
        Assert.Equal(tokenizer.BosId, withBos[0]);
        Assert.Equal(plain, withBos[1..]);

        var bosText = tokenizer.TokenText(tokenizer.BosId);
        var parsed = tokenizer.Encode(bosText + "Hi there", addBos: true, parseSpecial: true);
        Assert.Equal(1, parsed.Count(id => id == tokenizer.BosId));
        Assert.Equal(tokenizer.BosId, parsed[0]);
    }

    [Fact]
    public void Llama3SpecialTokensAreParsedOnlyWhenAsked()
    {
        var tokenizer = TestTokenizers.Llama3Gguf;
        const string text = "<|begin_of_text|>User: Hi<|eot_id|>Assistant: ";
        var parsed = tokenizer.Encode(text, addBos: true, parseSpecial: true);
        Assert.Equal(128000, parsed[0]);
        Assert.Equal(1, parsed.Count(id => id == 128000));
        Assert.Contains(128009, parsed);
        Assert.Equal(tokenizer.Encode("User: Hi", addBos: false), parsed[1..Array.IndexOf(parsed, 128009)]);
        Assert.Equal("User: Hi", tokenizer.Decode(parsed[..Array.IndexOf(parsed, 128009)]));
        Assert.Equal(text, tokenizer.Decode(parsed, includeSpecial: true));

        var literal = tokenizer.Encode(text, addBos: false, parseSpecial: false);
        Assert.DoesNotContain(128000, literal);
        Assert.DoesNotContain(128009, literal);
        Assert.Equal(text, tokenizer.Decode(literal));

        // The tiktoken-backed tokenizer splits specials the same way.
        Assert.Equal(parsed, TestTokenizers.Llama3Tiktoken.Encode(text, addBos: true, parseSpecial: true));
        Assert.Equal(literal, TestTokenizers.Llama3Tiktoken.Encode(text, addBos: false, parseSpecial: false));
    }

    [Fact]
    public void Llama3SpecialTokenNamesAndStopSet()
    {
        foreach (var tokenizer in new[] { TestTokenizers.Llama3Gguf, TestTokenizers.Llama3Tiktoken })
        {
            Assert.Equal("<|begin_of_text|>", tokenizer.TokenText(128000));
            Assert.Equal("<|end_of_text|>", tokenizer.TokenText(128001));
            Assert.Equal("<|reserved_special_token_0|>", tokenizer.TokenText(128002));
            Assert.Equal("<|reserved_special_token_3|>", tokenizer.TokenText(128005));
            Assert.Equal("<|start_header_id|>", tokenizer.TokenText(128006));
            Assert.Equal("<|end_header_id|>", tokenizer.TokenText(128007));
            Assert.Equal("<|reserved_special_token_4|>", tokenizer.TokenText(128008));
            Assert.Equal("<|eot_id|>", tokenizer.TokenText(128009));
            Assert.Equal("<|reserved_special_token_250|>", tokenizer.TokenText(128255));
            Assert.Equal(128000, tokenizer.BosId);
            Assert.Equal(128001, tokenizer.EosId);
            Assert.Equal(128009, tokenizer.EotId);
            Assert.Equal(new HashSet<int> { 128001, 128009 }, tokenizer.StopTokenIds.ToHashSet());
            Assert.True(tokenizer.IsSpecial(128009));
            Assert.False(tokenizer.IsSpecial(1000));
            Assert.Equal("Ġthe", tokenizer.TokenText(279));
        }
    }

    [Fact]
    public void SentencePieceSpecialsAndSpacePrefix()
    {
        var tokenizer = TestTokenizers.LlamaSpm;
        Assert.Equal((1, 2, 0), (tokenizer.BosId, tokenizer.EosId, tokenizer.UnknownId));
        Assert.Equal(new HashSet<int> { 2 }, tokenizer.StopTokenIds.ToHashSet());
        // "<s>" parsed, then the text after it gets the space prefix again: "▁Hello", as Llama 2's reference encodes it.
        var ids = tokenizer.Encode("<s>Hello</s>", addBos: true, parseSpecial: true);
        Assert.Equal([1, tokenizer.Encode("Hello", addBos: false)[0], 2], ids);
        Assert.Equal("▁Hello", tokenizer.TokenText(ids[1]));
        Assert.Equal("Hello", tokenizer.Decode(ids));
        Assert.Equal("<s>Hello</s>", tokenizer.Decode(ids, includeSpecial: true));
    }

    [Fact]
    public void UserDefinedTokensAreAlwaysMatchedWhole()
    {
        // mpt (GPT-NeoX vocabulary) adds runs of spaces as user-defined tokens; llama.cpp splits them out even without parseSpecial.
        using var file = BitNetSharp.Formats.Gguf.GgufFile.Open(SharedData.RequirePath("llama.cpp-vocab/ggml-vocab-mpt.gguf"));
        var tokenizer = TokenizerLoader.FromGguf(file);
        var spaces = new string(' ', 24);
        Assert.True(tokenizer.TryGetTokenId(spaces, out var id));
        Assert.Equal(TokenKind.UserDefined, tokenizer.KindOf(id));
        Assert.Equal([id], tokenizer.Encode(spaces, addBos: false));
        Assert.Equal("x" + spaces + "y", tokenizer.Decode(tokenizer.Encode("x" + spaces + "y", addBos: false)));
    }

    [Theory]
    [MemberData(nameof(Names))]
    public void IdsOutsideTheVocabularyAreRejectedWithTheIdAndSize(string name)
    {
        var tokenizer = Get(name);
        int n = tokenizer.VocabularySize;
        foreach (var bad in new[] { n, -1, int.MaxValue })
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => tokenizer.Decode([5, bad]));
            Assert.Contains($"Token id {bad} ", e.Message);
            Assert.Contains($"vocabulary of {n} tokens", e.Message);
            Assert.Throws<ArgumentOutOfRangeException>(() => tokenizer.TokenText(bad));
            Assert.Throws<ArgumentOutOfRangeException>(() => tokenizer.IsSpecial(bad));
            Assert.Throws<ArgumentOutOfRangeException>(() => new StreamingDetokenizer(tokenizer).Append(bad));
        }
    }

    /// <summary>
    /// The best of five encodings of each text, in milliseconds, the two texts taking turns: the growth tests compare
    /// the two, not a wall-clock bound. Taking turns keeps a change of load (other tests' processes starting) from
    /// landing on one text's runs only, which measuring all of one, then all of the other, allowed.
    /// </summary>
    private static (double Small, double Large) BestMilliseconds(BitNetTokenizer tokenizer, string small, string large, bool addBos)
    {
        double bestSmall = double.MaxValue, bestLarge = double.MaxValue;
        for (int i = 0; i < 5; i++)
        {
            long start = System.Diagnostics.Stopwatch.GetTimestamp();
            tokenizer.Encode(small, addBos);
            bestSmall = Math.Min(bestSmall, System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalMilliseconds);
            start = System.Diagnostics.Stopwatch.GetTimestamp();
            tokenizer.Encode(large, addBos);
            bestLarge = Math.Min(bestLarge, System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalMilliseconds);
        }
        return (bestSmall, bestLarge);
    }

    [Fact]
    public void EncodingIsFastEnoughForPrompts()
    {
        // Catches an accidental quadratic by the growth, not a wall-clock bound (which a loaded machine can break): ten
        // times the text (200 KB through the 2B4T path) may take at most 30 times as long (quadratic: 100 times).
        var text = File.ReadAllText(SharedData.RequirePath("corpora/tinyshakespeare.txt"))[..200_000];
        var tokenizer = TestTokenizers.Llama3Gguf;
        tokenizer.Encode(text[..1000], addBos: true);
        var (small, large) = BestMilliseconds(tokenizer, text[..20_000], text, addBos: true);
        Assert.True(large < 30 * small + 50, $"200 KB took {large:F1} ms, 20 KB {small:F1} ms: encoding grows faster than linearly");
        var ids = tokenizer.Encode(text, addBos: true);
        Assert.Equal(text, tokenizer.Decode(ids));
        var longWord = new string('x', 20_000);
        Assert.Equal(longWord, tokenizer.Decode(tokenizer.Encode(longWord, addBos: false)));
    }

    /// <summary>
    /// One long piece (a word of one letter) grows linearly on both Llama 3 paths: the tiktoken file's encoder rescanned
    /// the piece on every merge (Microsoft.ML.Tokenizers), about 0.4·n² steps — seconds at 100 K characters, minutes at
    /// 1 MB, a cheap way to stall a server. Ten times the word may take at most 30 times as long.
    /// </summary>
    [Theory]
    [InlineData("llama3-tiktoken")]
    [InlineData("llama3-gguf")]
    public void ALongPieceEncodesInNearLinearTime(string name)
    {
        var tokenizer = Get(name);
        tokenizer.Encode("warm up", addBos: false);
        var (small, large) = BestMilliseconds(tokenizer, new string('x', 5_000), new string('x', 50_000), addBos: false);
        Assert.True(large < 30 * small + 50, $"50 K letters took {large:F1} ms, 5 K {small:F1} ms: encoding one piece grows faster than linearly");
    }
}
