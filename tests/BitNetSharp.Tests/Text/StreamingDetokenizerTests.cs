using System.Text;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Tests.Text;

public class StreamingDetokenizerTests
{
    [Fact]
    public void EmojiSplitIntoByteTokensComesOutWhole()
    {
        var tokenizer = TestTokenizers.LlamaSpm;
        var ids = tokenizer.Encode("🦙", addBos: false);
        // "▁" then the four byte-fallback tokens of U+1F999.
        Assert.Equal(["▁", "<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"], ids.Select(tokenizer.TokenText));
        var stream = new StreamingDetokenizer(tokenizer);
        var pieces = ids.Select(stream.Append).ToArray();
        Assert.Equal(["", "", "", "", "🦙"], pieces);
        Assert.Equal(0, stream.PendingByteCount);
    }

    /// <summary>After Flush, a reused detokenizer strips SentencePiece's leading space again, as a new one does.</summary>
    [Fact]
    public void AFlushedDetokenizerStartsTheNextStreamAsANewOne()
    {
        var tokenizer = TestTokenizers.LlamaSpm;
        int world = tokenizer.Encode("world", addBos: false).Single();
        var stream = new StreamingDetokenizer(tokenizer);
        Assert.Equal("world", stream.Append(world));
        Assert.Equal(" world", stream.Append(world));
        stream.Flush();
        Assert.Equal("world", stream.Append(world));
    }

    /// <summary>
    /// A hidden control token leaves the text as if it were not there (transformers' skip_special_tokens): the space of
    /// "▁World" after "&lt;/s&gt;&lt;s&gt;" stays ("HelloWorld" before); written as text, the space after it goes, as
    /// the encoder added it. A lone surrogate encodes as the "�" piece, as U+FFFD does (it fell back to three bytes).
    /// </summary>
    [Fact]
    public void SentencePieceSpacesAroundHiddenSpecialsAndLoneSurrogates()
    {
        var t = TestTokenizers.LlamaSpm;
        int hello = t.Encode("Hello", addBos: false).Single(), world = t.Encode("World", addBos: false).Single();
        int[] ids = [t.BosId, hello, t.EosId, t.BosId, world];
        Assert.Equal("Hello World", t.Decode(ids));
        Assert.Equal("<s>Hello</s><s>World", t.Decode(ids, includeSpecial: true));
        var stream = new StreamingDetokenizer(t, atTextStart: false);
        Assert.Equal(" Hello World", string.Concat(ids[1..].Select(stream.Append)));
        Assert.Equal(t.Encode("a\uFFFDb", addBos: false), t.Encode("a\uD800b", addBos: false));
        Assert.Equal(t.Encode("a\uFFFDb", addBos: false), t.Encode("a\uDC00b", addBos: false));
        Assert.Equal(t.Encode("a🦙b", addBos: false), t.Encode("a\uD83E\uDD99b", addBos: false)); // a pair stays one character

        // A user-defined token (phi-3's "</s>") is text, and the encoder adds the space prefix after it as after a control
        // token: decoding dropped nothing, so "a</s>b" came back as "a</s> b".
        using var phi3 = BitNetSharp.Formats.Gguf.GgufFile.Open(SharedData.RequirePath("llama.cpp-vocab/ggml-vocab-phi-3.gguf"));
        var p = TokenizerLoader.FromGguf(phi3);
        Assert.Equal("a</s>b", p.Decode(p.Encode("a</s>b", addBos: false), includeSpecial: true));
    }

    [Fact]
    public void CjkSplitAcrossByteLevelTokensComesOutWhole()
    {
        var tokenizer = TestTokenizers.Gpt2;
        var ids = tokenizer.Encode("我想在", addBos: false);
        Assert.True(ids.Length > 3, "GPT-2 has no whole tokens for these characters, so they are split into byte tokens");
        var stream = new StreamingDetokenizer(tokenizer);
        var pieces = ids.Select(stream.Append).Where(p => p.Length > 0).ToArray();
        Assert.All(pieces, p => Assert.DoesNotContain('\uFFFD', p));
        Assert.Equal("我想在", string.Concat(pieces));
    }

    public static TheoryData<string> Texts => new()
    {
        "Grüße 🦙🚀😶‍🌫️✅ 我想在apple工作1314151天～ こんにちは 한국어 нещо ∑∫√ 😁",
        " leading space and\nnew lines\n",
    };

    [Theory]
    [MemberData(nameof(Texts))]
    public void StreamedTextEqualsDecodedTextForEveryTokenizer(string text)
    {
        foreach (var tokenizer in TestTokenizers.All)
        {
            var ids = tokenizer.Encode(text, addBos: tokenizer.AddBosToken);
            var stream = new StreamingDetokenizer(tokenizer);
            var sb = new StringBuilder();
            foreach (var id in ids)
            {
                var piece = stream.Append(id);
                Assert.DoesNotContain('\uFFFD', piece);
                sb.Append(piece);
            }
            sb.Append(stream.Flush());
            Assert.Equal(tokenizer.Decode(ids), sb.ToString());
            Assert.Equal(text, sb.ToString());
        }
    }

    [Fact]
    public void ContinuingAPromptKeepsTheSentencePieceSpace()
    {
        var tokenizer = TestTokenizers.LlamaSpm;
        var world = tokenizer.Encode(" world", addBos: false)[^1];
        Assert.Equal("▁world", tokenizer.TokenText(world));
        Assert.Equal("world", new StreamingDetokenizer(tokenizer).Append(world));
        Assert.Equal(" world", new StreamingDetokenizer(tokenizer, atTextStart: false).Append(world));
    }

    [Fact]
    public void SpecialTokensAreHiddenUnlessIncluded()
    {
        var tokenizer = TestTokenizers.Llama3Gguf;
        Assert.Equal("", new StreamingDetokenizer(tokenizer).Append(128009));
        Assert.Equal("<|eot_id|>", new StreamingDetokenizer(tokenizer, includeSpecial: true).Append(128009));
    }

    [Fact]
    public void FlushReleasesAnUnfinishedCharacterAsReplacement()
    {
        var tokenizer = TestTokenizers.LlamaSpm;
        Assert.True(tokenizer.TryGetTokenId("<0xF0>", out var f0));
        Assert.True(tokenizer.TryGetTokenId("<0x9F>", out var x9f));
        Assert.True(tokenizer.TryGetTokenId("<0x41>", out var a));
        var stream = new StreamingDetokenizer(tokenizer);
        Assert.Equal("", stream.Append(f0));
        Assert.Equal("", stream.Append(x9f));
        Assert.Equal(2, stream.PendingByteCount);
        // A byte that cannot continue the sequence releases it as U+FFFD instead of stalling the stream.
        Assert.Equal("\uFFFDA", stream.Append(a));
        Assert.Equal("", stream.Append(f0));
        Assert.Equal("\uFFFD", stream.Flush());
        Assert.Equal(0, stream.PendingByteCount);
    }

    [Theory]
    [InlineData(new byte[] { }, 0)]
    [InlineData(new byte[] { 0x41 }, 1)]
    [InlineData(new byte[] { 0x41, 0xC3 }, 1)]
    [InlineData(new byte[] { 0xC3, 0xA9 }, 2)]
    [InlineData(new byte[] { 0xE4, 0xB8 }, 0)]
    [InlineData(new byte[] { 0xF0, 0x9F, 0xA6 }, 0)]
    [InlineData(new byte[] { 0xF0, 0x9F, 0xA6, 0x99 }, 4)]
    [InlineData(new byte[] { 0x80, 0x80, 0x80, 0x80 }, 4)]
    [InlineData(new byte[] { 0x41, 0xFF }, 2)]
    // Lead bytes no later byte can complete (held before, delaying the text for nothing).
    [InlineData(new byte[] { 0xC0 }, 1)]
    [InlineData(new byte[] { 0xC1 }, 1)]
    [InlineData(new byte[] { 0xF5 }, 1)]
    [InlineData(new byte[] { 0xED, 0xA0 }, 2)]
    [InlineData(new byte[] { 0xE0, 0x80 }, 2)]
    [InlineData(new byte[] { 0xF4, 0x90 }, 2)]
    // Valid prefixes still wait.
    [InlineData(new byte[] { 0xED, 0x9F }, 0)]
    [InlineData(new byte[] { 0xF4, 0x8F, 0xBF }, 0)]
    public void CompletePrefixStopsBeforeAnUnfinishedSequence(byte[] bytes, int expected) =>
        Assert.Equal(expected, StreamingDetokenizer.CompletePrefixLength(bytes));
}
