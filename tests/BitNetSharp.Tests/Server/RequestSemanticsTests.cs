using System.Net;
using System.Text.Json;

namespace BitNetSharp.Tests.Server;

/// <summary>Request fields whose meaning the server honoured only in part: each case was a 200 that did not do what was asked.</summary>
public class RequestSemanticsTests
{
    /// <summary>
    /// A chat answer ends at the template's turn opener when the vocabulary spells it as one token (&lt;|im_start|&gt; in
    /// ChatML): it is not a stop token and decodes to nothing, so the answer ran on into a hidden made-up turn and
    /// ended by length. ignore_eos still runs past it.
    /// </summary>
    [Fact]
    public async Task AControlTokenTurnOpenerEndsTheChatAnswer()
    {
        await using var s = await TestServer.StartAsync(o => o with { WarmupRequests = 0 });
        var bias = new Dictionary<string, int> { [TinyChatModel.ImStart.ToString()] = 100 };
        var (status, body, _) = await s.PostAsync("v1/chat/completions", new
        {
            messages = new[] { new { role = "user", content = "hi" } }, max_tokens = 8, temperature = 0, logit_bias = bias,
        });
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("stop", body.GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        Assert.Equal("", body.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString());

        (status, body, _) = await s.PostAsync("v1/chat/completions", new
        {
            messages = new[] { new { role = "user", content = "hi" } }, max_tokens = 8, temperature = 0, logit_bias = bias, ignore_eos = true,
        });
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("length", body.GetProperty("choices")[0].GetProperty("finish_reason").GetString());
    }

    /// <summary>
    /// A message's text parts are joined by a newline, as vLLM and llama-server join them: they were glued together
    /// ("Hel" and "lo" read as "Hello"; two paragraphs sent as two parts ran into one line).
    /// </summary>
    [Fact]
    public async Task TextPartsAreJoinedByANewline()
    {
        await using var s = await TestServer.StartAsync(o => o with { WarmupRequests = 0 });
        async Task<int> PromptTokens(object content)
        {
            var (status, body, _) = await s.PostAsync("v1/chat/completions", new { messages = new[] { new { role = "user", content } }, max_tokens = 1 });
            Assert.Equal(HttpStatusCode.OK, status);
            return body.GetProperty("usage").GetProperty("prompt_tokens").GetInt32();
        }
        int parts = await PromptTokens(new[] { new { type = "text", text = "Hel" }, new { type = "text", text = "lo" } });
        Assert.Equal(await PromptTokens("Hel\nlo"), parts);
        Assert.Equal(await PromptTokens("Hello") + 1, parts); // the byte-level vocabulary: one token a byte
        Assert.Equal(await PromptTokens("Hello"), await PromptTokens(new[] { new { type = "text", text = "Hello" } }));
    }

    /// <summary>
    /// Usage counts the stop token that ended a choice, as llama-server and vLLM do: it was sampled from a forward step
    /// like any other. A completion that ended at once read 0 completion tokens, and the engine's counter missed it too.
    /// </summary>
    [Fact]
    public async Task UsageCountsTheStopToken()
    {
        await using var s = await TestServer.StartAsync(o => o with { WarmupRequests = 0 });
        long before = s.Scheduler.Statistics.GenerationTokens;
        var bias = new Dictionary<string, int> { [TinyChatModel.EndOfText.ToString()] = 100 };
        var (status, body, _) = await s.PostAsync("v1/completions", new { prompt = "hi", max_tokens = 8, temperature = 0, logit_bias = bias });
        Assert.Equal(HttpStatusCode.OK, status);
        var choice = body.GetProperty("choices")[0];
        Assert.Equal("stop", choice.GetProperty("finish_reason").GetString());
        Assert.Equal("", choice.GetProperty("text").GetString());
        Assert.Equal(1, body.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        Assert.Equal(before + 1, s.Scheduler.Statistics.GenerationTokens);
        // Streamed, the final usage chunk counts it too.
        var events = await s.StreamAsync("v1/completions", new { prompt = "hi", max_tokens = 8, temperature = 0, logit_bias = bias, stream = true,
            stream_options = new { include_usage = true } });
        Assert.Equal("[DONE]", events[^1]);
        Assert.Equal(1, JsonDocument.Parse(events[^2]).RootElement.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }

    /// <summary>The legacy default of 16 tokens is capped by the server's --max-tokens-limit, which an explicit 16 is refused by.</summary>
    [Fact]
    public async Task TheCompletionsDefaultKeepsTheServersLimit()
    {
        await using var s = await TestServer.StartAsync(o => o with { MaxTokensLimit = 4, WarmupRequests = 0 });
        var (status, body, _) = await s.PostAsync("v1/completions", new { prompt = "hi", ignore_eos = true, temperature = 0 });
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(4, body.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        (status, _, _) = await s.PostAsync("v1/completions", new { prompt = "hi", max_tokens = 16 });
        Assert.Equal(HttpStatusCode.BadRequest, status);
    }

    /// <summary>
    /// Parameters that were accepted and ignored, or refused without naming what to do: response_format json on
    /// /v1/completions (free text came back as a success), the chat endpoint's top_logprobs there, a message name that is
    /// not a string (OpenAI refuses it), a content part with no type (read as type ''), top_logprobs without logprobs (code null).
    /// </summary>
    [Theory]
    [InlineData("v1/completions", """{"prompt":"hi","max_tokens":2,"response_format":{"type":"json_object"}}""", "response_format", "unsupported_parameter")]
    [InlineData("v1/completions", """{"prompt":"hi","max_tokens":2,"top_logprobs":2}""", "top_logprobs", "unsupported_parameter")]
    [InlineData("v1/chat/completions", """{"messages":[{"role":"user","content":"hi","name":5}],"max_tokens":2}""", "messages[0].name", "invalid_type")]
    [InlineData("v1/chat/completions", """{"messages":[{"role":"user","content":[{"text":"hi"}]}],"max_tokens":2}""", "messages[0].content[0].type", "missing_required_parameter")]
    [InlineData("v1/chat/completions", """{"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"top_logprobs":2}""", "top_logprobs", "invalid_value")]
    public async Task IgnoredOrUnnamedParametersAreRefusedByName(string path, string json, string param, string code)
    {
        await using var s = await TestServer.StartAsync(o => o with { WarmupRequests = 0 });
        var (status, body, _) = await s.PostAsync(path, json);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal(param, body.GetProperty("error").GetProperty("param").GetString());
        Assert.Equal(code, body.GetProperty("error").GetProperty("code").GetString());
        (status, _, _) = await s.PostAsync("v1/chat/completions", """{"messages":[{"role":"user","content":"hi","name":"alice"}],"max_tokens":2,"response_format":{"type":"text"}}""");
        Assert.Equal(HttpStatusCode.OK, status);
    }

    /// <summary>
    /// A request's presence and frequency penalties count only the generated tokens (OpenAI's meaning); `generate
    /// --repeat-last-n -1 --no-penalize-prompt` replays them. README said --repeat-last-n -1 did, but the CLI counted the
    /// prompt too (llama.cpp's meaning): " little", in the prompt, was penalized by the CLI and not by the server.
    /// </summary>
    [Fact]
    public async Task GenerateReplaysARequestsPresenceAndFrequencyPenalties()
    {
        string path = RepositoryFiles.Path("models/bitnet-tinystories.gguf");
        const string Prompt = "Once upon a time, there was a little girl. Once upon a time, there was a";
        await using var s = await TestServer.StartAsync(o => o with { WarmupRequests = 0 }, load: () =>
        {
            var weights = BitNetSharp.Model.ModelWeights.Load(path);
            return new BitNetSharp.Server.LoadedModel(weights, BitNetSharp.Tokenization.TokenizerLoader.FromGguf(weights.Gguf!), TestServer.ModelId);
        });
        var (status, body, _) = await s.PostAsync("v1/completions", new { prompt = Prompt, temperature = 0, presence_penalty = 2, frequency_penalty = 2, max_tokens = 12, ignore_eos = true });
        Assert.Equal(HttpStatusCode.OK, status);
        string served = body.GetProperty("choices")[0].GetProperty("text").GetString()!;

        string Generate(params string[] extra)
        {
            var output = new StringWriter();
            var error = new StringWriter();
            int code = BitNetSharp.Cli.Program.Run(["generate", "-m", path, "-p", Prompt, "--no-echo", "--temp", "0", "--presence-penalty", "2", "--frequency-penalty", "2",
                "--repeat-last-n", "-1", "-n", "12", "--ignore-eos", "-t", "1", .. extra], output, error);
            Assert.True(code == 0, error.ToString());
            return output.ToString().TrimEnd('\n');
        }
        Assert.Equal(served, Generate("--no-penalize-prompt"));
        Assert.NotEqual(served, Generate()); // the prompt's tokens counted: llama.cpp's meaning, the CLI's default
    }

    /// <summary>/v1/models' meta names the activation widths the server runs at (only /metrics' bits label did).</summary>
    [Fact]
    public async Task ModelsMetaShowsTheActivationWidths()
    {
        await using var s = await TestServer.StartAsync(o => o with { WarmupRequests = 0 }, load: () =>
        {
            var (weights, tokenizer) = TinyChatModel.Load();
            weights.ActivationBits = BitNetSharp.Model.ActivationBits.Parse("qkv=4", weights.Config.Layers);
            return new BitNetSharp.Server.LoadedModel(weights, tokenizer, TestServer.ModelId);
        });
        var meta = JsonDocument.Parse(await s.Http.GetStringAsync("v1/models", TestContext.Current.CancellationToken)).RootElement.GetProperty("data")[0].GetProperty("meta");
        Assert.Equal("qkv=4", meta.GetProperty("activation_bits").GetString());
    }

    /// <summary>The deprecated functions / function_call ask for function calling as tools does, and are refused the same way.</summary>
    [Theory]
    [InlineData("""{"messages":[{"role":"user","content":"hi"}],"functions":[{"name":"f","parameters":{}}]}""", "functions")]
    [InlineData("""{"messages":[{"role":"user","content":"hi"}],"function_call":{"name":"f"}}""", "function_call")]
    [InlineData("""{"messages":[{"role":"user","content":"hi"}],"tool_choice":"required"}""", "tool_choice")] // answered with text
    [InlineData("""{"messages":[{"role":"user","content":"hi"}],"tool_choice":{"type":"function","function":{"name":"f"}}}""", "tool_choice")]
    [InlineData("""{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"auto"}""", "tools")]
    [InlineData("""{"messages":[{"role":"user","content":"hi"}],"modalities":["text","audio"],"audio":{"voice":"alloy","format":"wav"}}""", "modalities")] // answered 200 without audio
    [InlineData("""{"messages":[{"role":"user","content":"hi"}],"audio":{"voice":"alloy","format":"wav"}}""", "audio")]
    [InlineData("""{"messages":[{"role":"user","content":"hi"}],"web_search_options":{}}""", "web_search_options")]
    public async Task FunctionCallingIsRefusedInEitherSpelling(string json, string param)
    {
        await using var s = await TestServer.StartAsync(o => o with { WarmupRequests = 0 });
        var (status, body, _) = await s.PostAsync("v1/chat/completions", json);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal(param, body.GetProperty("error").GetProperty("param").GetString());
        Assert.Equal("unsupported_parameter", body.GetProperty("error").GetProperty("code").GetString());

        (status, _, _) = await s.PostAsync("v1/chat/completions", """{"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"function_call":"none","functions":[],"tool_choice":"auto","tools":[]}""");
        Assert.Equal(HttpStatusCode.OK, status);
        // Tools with tool_choice "none": a text turn an agent forces while sending its tool list (it was refused).
        (status, _, _) = await s.PostAsync("v1/chat/completions", """{"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"tool_choice":"none","tools":[{"type":"function","function":{"name":"f"}}],"modalities":["text"]}""");
        Assert.Equal(HttpStatusCode.OK, status);
        // Not an array: the wrong type (an object of one tool was taken as no tools, and answered with text).
        (status, body, _) = await s.PostAsync("v1/chat/completions", """{"messages":[{"role":"user","content":"hi"}],"tools":{"type":"function"}}""");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("tools", body.GetProperty("error").GetProperty("param").GetString());
    }

    /// <summary>
    /// A history with the deprecated "function" role (a function's result, still replayed by older LangChain and AutoGen
    /// code) is taken as a "tool" message, its content optional as in OpenAI's schema (it was a 400 invalid_value).
    /// </summary>
    [Fact]
    public async Task TheDeprecatedFunctionRoleReadsAsATool()
    {
        await using var s = await TestServer.StartAsync(o => o with { WarmupRequests = 0 });
        var (status, function, _) = await s.PostAsync("v1/chat/completions", """{"messages":[{"role":"user","content":"hi"},{"role":"function","name":"f","content":"42"}],"max_tokens":1}""");
        Assert.True(status == HttpStatusCode.OK, function.ToString());
        var (_, tool, _) = await s.PostAsync("v1/chat/completions", """{"messages":[{"role":"user","content":"hi"},{"role":"tool","tool_call_id":"c","content":"42"}],"max_tokens":1}""");
        Assert.Equal(tool.GetProperty("usage").GetProperty("prompt_tokens").GetInt32(), function.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        (status, var body, _) = await s.PostAsync("v1/chat/completions", """{"messages":[{"role":"user","content":"hi"},{"role":"function","name":"f","content":null}],"max_tokens":1}""");
        Assert.True(status == HttpStatusCode.OK, body.ToString());
        (status, body, _) = await s.PostAsync("v1/chat/completions", """{"messages":[{"role":"user","content":"hi"},{"role":"robot","content":"x"}],"max_tokens":1}""");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains("function", body.GetProperty("error").GetProperty("message").GetString());
    }

    /// <summary>Without a tokenizer nothing is decoded, so a stop string could never match: it is refused like a text prompt.</summary>
    [Fact]
    public async Task StopWithoutATokenizerIsRefused()
    {
        await using var s = await TestServer.StartAsync(o => o with { WarmupRequests = 0 },
            load: () => new BitNetSharp.Server.LoadedModel(TinyChatModel.Load().Weights, null, TestServer.ModelId));
        var (status, body, _) = await s.PostAsync("v1/completions", """{"prompt":[1,2,3],"stop":["a"],"max_tokens":4}""");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("stop", body.GetProperty("error").GetProperty("param").GetString());
        Assert.Equal("no_tokenizer", body.GetProperty("error").GetProperty("code").GetString());
        (status, _, _) = await s.PostAsync("v1/completions", """{"prompt":[1,2,3],"max_tokens":4}""");
        Assert.Equal(HttpStatusCode.OK, status);
    }

    /// <summary>A wrong type inside a message or stream_options names its full path, as OpenAI's errors do (it said "role").</summary>
    [Theory]
    [InlineData("""{"messages":[{"role":"user","content":"hi"},{"role":5,"content":"x"}]}""", "messages[1].role")]
    [InlineData("""{"messages":[{"role":"user","content":[{"type":3,"text":"x"}]}]}""", "messages[0].content[0].type")]
    [InlineData("""{"messages":[{"role":"user","content":[{"type":"text","text":7}]}]}""", "messages[0].content[0].text")]
    [InlineData("""{"messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":"yes"}}""", "stream_options.include_usage")]
    public async Task NestedFieldErrorsNameTheirPath(string json, string param)
    {
        await using var s = await TestServer.StartAsync(o => o with { WarmupRequests = 0 });
        var (status, body, _) = await s.PostAsync("v1/chat/completions", json);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal(param, body.GetProperty("error").GetProperty("param").GetString());
        Assert.StartsWith(param + " must be", body.GetProperty("error").GetProperty("message").GetString());
    }

    /// <summary>
    /// A number too large for its field is a range error: past 64 bits (or past double, 1e400) it was "must be an
    /// integer; got a number", code invalid_type, which says nothing a client can fix.
    /// </summary>
    [Theory]
    [InlineData("""{"prompt":"hi","max_tokens":1e20}""", "max_tokens", "1e20")]
    [InlineData("""{"prompt":"hi","n":9223372036854775808}""", "n", "9223372036854775808")]
    [InlineData("""{"prompt":"hi","temperature":1e400}""", "temperature", "1e400")]
    [InlineData("""{"prompt":"hi","max_tokens":-1e300}""", "max_tokens", "-1e300")]
    public async Task HugeNumbersAreRangeErrors(string json, string param, string raw)
    {
        await using var s = await TestServer.StartAsync(o => o with { WarmupRequests = 0 });
        var (status, body, _) = await s.PostAsync("v1/completions", json);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        var e = body.GetProperty("error");
        Assert.Equal(param, e.GetProperty("param").GetString());
        Assert.Equal("invalid_value", e.GetProperty("code").GetString());
        Assert.Equal($"{param} must be between", e.GetProperty("message").GetString()![..($"{param} must be between".Length)]);
        Assert.EndsWith($"got {raw}.", e.GetProperty("message").GetString());

        (status, body, _) = await s.PostAsync("v1/completions", """{"prompt":"hi","max_tokens":2.5}""");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("max_tokens must be an integer; got 2.5.", body.GetProperty("error").GetProperty("message").GetString());

        // A 5,000-digit number is shown cut (it came back whole: the request's size reflected in the answer).
        (status, body, _) = await s.PostAsync("v1/completions", "{\"prompt\":\"hi\",\"max_tokens\":" + new string('9', 5000) + "}");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        string message = body.GetProperty("error").GetProperty("message").GetString()!;
        Assert.EndsWith($"got {new string('9', 40)}… (5,000 characters).", message);
        Assert.True(message.Length < 200, message);
    }

    /// <summary>
    /// A prompt array whose first element is of no prompt kind was "prompt[0] is null, but prompt[0] is null"; a bad n
    /// beside best_of was held to 1..128 rather than the server's limit.
    /// </summary>
    [Fact]
    public async Task PromptArrayAndBestOfErrorsSayWhatIsWanted()
    {
        await using var s = await TestServer.StartAsync(o => o with { WarmupRequests = 0 });
        foreach (var (json, got) in new[] { ("""{"prompt":[null]}""", "null"), ("""{"prompt":[true,false]}""", "a boolean") })
        {
            var (status, body, _) = await s.PostAsync("v1/completions", json);
            Assert.Equal(HttpStatusCode.BadRequest, status);
            var e = body.GetProperty("error");
            Assert.Equal("prompt[0]", e.GetProperty("param").GetString());
            Assert.Equal($"prompt[0] must be a string, a token id or an array of token ids; got {got}.", e.GetProperty("message").GetString());
        }
        var (st, b, _) = await s.PostAsync("v1/completions", """{"prompt":"hi","best_of":3,"n":0}""");
        Assert.Equal(HttpStatusCode.BadRequest, st);
        Assert.Contains("n must be between 1 and 4", b.GetProperty("error").GetProperty("message").GetString());
    }
}
