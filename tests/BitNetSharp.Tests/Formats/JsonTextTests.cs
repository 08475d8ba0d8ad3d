using BitNetSharp.Formats;
using BitNetSharp.Formats.HuggingFace;
using BitNetSharp.Formats.Safetensors;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Tests.Formats;

/// <summary>
/// A JSON \u escape of half a UTF-16 surrogate pair (\uD800 without its partner) is valid JSON but no text:
/// System.Text.Json's GetString() and JsonProperty.Name throw InvalidOperationException when such a string is read,
/// so every model-file parser checks the document first and names the file and the place.
/// </summary>
public class JsonTextTests
{
    [Theory]
    [InlineData("""{"a\udc00":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}""", "a property name")]
    [InlineData("""{"__metadata__":{"k":"\ud800"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}""", "__metadata__.k")]
    [InlineData("""{"a":{"dtype":"\uDBFF","shape":[1],"data_offsets":[0,1]}}""", "a.dtype")]
    public void ASafetensorsHeaderWithHalfASurrogatePairIsAFormatError(string header, string where)
    {
        var e = Assert.Throws<ModelFormatException>(() => SafetensorsFile.Parse(TestSafetensors.Assemble(header, [0]), "x.safetensors"));
        Assert.StartsWith("x.safetensors", e.Message);
        Assert.Contains(where, e.Message);
        Assert.Contains("surrogate", e.Message);
    }

    [Fact]
    public void ConfigJsonWithHalfASurrogatePairIsAFormatError()
    {
        var json = """{"architectures":["\ud800"],"hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":32}"""u8.ToArray();
        var e = Assert.Throws<ModelFormatException>(() => HfConfig.Parse(json, "config.json"));
        Assert.Contains("architectures[0]", e.Message);
        // A paired escape is text and reads.
        var paired = """{"architectures":["BitNetForCausalLM"],"note":"\ud83d\ude00","hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":32}"""u8.ToArray();
        Assert.Equal(64, HfConfig.Parse(paired, "config.json").HiddenSize);
    }

    [Fact]
    public void ASafetensorsIndexWithHalfASurrogatePairIsAFormatError()
    {
        using var dir = new TestGguf.TempDirectory();
        File.WriteAllText(dir.File("model.safetensors.index.json"), """{"weight_map":{"a":"m\udfff.safetensors"}}""");
        var e = Assert.Throws<ModelFormatException>(() => SafetensorsCheckpoint.OpenIndex(dir.File("model.safetensors.index.json")));
        Assert.Contains("weight_map.a", e.Message);
    }

    [Fact]
    public void TokenizerConfigWithHalfASurrogatePairIsAFormatErrorNamingTheFile()
    {
        using var dir = new TestGguf.TempDirectory();
        File.Copy(SharedData.RequirePath("tokenizers/llama3_tokenizer.model"), dir.File("tokenizer.model"));
        File.WriteAllText(dir.File("tokenizer_config.json"), """{"bos_token":"\ud800"}""");
        var e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.FromHfDirectory(dir.Path));
        Assert.Contains("tokenizer_config.json", e.Message);
        Assert.Contains("bos_token", e.Message);
        // Raw bytes that are not UTF-8 (a Latin-1 é) too.
        File.WriteAllBytes(dir.File("tokenizer_config.json"), [.. "{\"bos_token\":\""u8, 0xE9, .. "\"}"u8]);
        e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.FromHfDirectory(dir.Path));
        Assert.Contains("UTF-8", e.Message);
    }

    /// <summary>
    /// Only a document that may hold half a pair is walked: a pair (an emoji as Python's json.dump escapes it) is text,
    /// and a tokenizer.json with one emoji token had every one of its strings read twice at each load.
    /// </summary>
    [Theory]
    [InlineData("""{"a":"\ud83d\ude00 and \uD83D\uDE00"}""", false)]
    [InlineData("""{"a":"\u00e9\u0041"}""", false)]
    [InlineData("""{"a":"\ud83d"}""", true)]
    [InlineData("""{"a":"\ude00"}""", true)]
    [InlineData("""{"a":"\ud83d\u0041"}""", true)]
    [InlineData("""{"a":"x\ud83d""", true)]
    [InlineData("""{"a":"\\uD83D\uDE00"}""", true)] // an escaped backslash, then a low half alone
    [InlineData("""{"a":"\\\ud83d\ude00 \\"}""", false)]
    public void OnlyAnUnpairedEscapeIsLookedInto(string json, bool expected) =>
        Assert.Equal(expected, JsonText.MayHoldLoneSurrogate(System.Text.Encoding.UTF8.GetBytes(json)));

    [Fact]
    public void TheWalkerNamesTheFirstUnreadableString()
    {
        using var doc = System.Text.Json.JsonDocument.Parse("""{"a":[1,"ok","\ud800"],"b":"\udc00"}""");
        Assert.Equal("a[2]", JsonText.FindLoneSurrogate(doc.RootElement));
        using var fine = System.Text.Json.JsonDocument.Parse("""{"a":"\\ud800 is escaped text","b":"\u00e9\ud83d\ude00"}""");
        Assert.Null(JsonText.FindLoneSurrogate(fine.RootElement));
        Assert.Null(JsonText.Check(fine.RootElement));
    }
}
