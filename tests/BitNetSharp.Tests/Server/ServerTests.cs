using System.ClientModel;
using System.ClientModel.Primitives;
using System.Diagnostics;
using System.Net;
using System.Net.ServerSentEvents;
using System.Text;
using System.Text.Json;
using BitNetSharp.Server;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using OpenAI.Chat;

namespace BitNetSharp.Tests.Server;

/// <summary>One server shared by the tests that do not change its configuration.</summary>
public sealed class SharedServer : IAsyncLifetime
{
    internal TestServer Host { get; private set; } = null!;

    public async ValueTask InitializeAsync() => Host = await TestServer.StartAsync();

    public async ValueTask DisposeAsync() => await Host.DisposeAsync();
}

/// <summary>
/// The OpenAI-compatible server end to end over real loopback HTTP: the official OpenAI .NET client, raw HTTP and
/// SSE, concurrency, disconnects, malformed input, API keys and the Prometheus endpoint.
/// </summary>
public sealed class ServerTests(SharedServer shared) : IClassFixture<SharedServer>
{
    private TestServer S => shared.Host;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>
    /// An unhandled error in the server's own code is counted in bitnet_server_internal_errors_total, whether it became a
    /// 500 internal_error or, once the answer had begun, a closed connection: those 500s reached no counter, so neither
    /// /metrics nor an alert rule could see a server failing requests that way.
    /// </summary>
    [Fact]
    public async Task UnhandledErrorsAreCounted()
    {
        await using var s = await TestServer.StartAsync(o => o with
        {
            WarmupRequests = 0,
            TestRoutes = routes =>
            {
                routes.MapMethods("/test/throw", ["GET"], _ => throw new InvalidOperationException("a bug"));
                routes.MapMethods("/test/throw-late", ["GET"], async context =>
                {
                    await context.Response.WriteAsync("partial", Ct);
                    await context.Response.Body.FlushAsync(Ct);
                    throw new InvalidOperationException("a bug after the answer began");
                });
            },
        });
        static double Count(string metrics) =>
            double.Parse(metrics.Split('\n').Single(l => l.StartsWith("bitnet_server_internal_errors_total ", StringComparison.Ordinal)).Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture);
        Assert.Equal(0, Count(await s.Http.GetStringAsync("metrics", Ct)));
        var response = await s.Http.GetAsync("test/throw", Ct);
        Assert.Equal(HttpStatusCode.InternalServerError, response.StatusCode);
        Assert.Contains("internal_error", await response.Content.ReadAsStringAsync(Ct));
        await Assert.ThrowsAnyAsync<Exception>(async () => await (await s.Http.GetAsync("test/throw-late", HttpCompletionOption.ResponseContentRead, Ct)).Content.ReadAsStringAsync(Ct));
        string metrics = await s.Http.GetStringAsync("metrics", Ct);
        Assert.Equal(2, Count(metrics));
        Assert.Equal("counter", PrometheusText.Parse(metrics)["bitnet_server_internal_errors_total"]);
    }

    /// <summary>Hugging Face style ids ("org/name") are retrieved by GET /v1/models/{id}, as the SDK sends them (404 before).</summary>
    [Fact]
    public async Task AModelIdWithASlashIsRetrieved()
    {
        await using var s = await TestServer.StartAsync(o => o with { WarmupRequests = 0 }, load: () =>
        {
            var (weights, tokenizer) = TinyChatModel.Load();
            return new LoadedModel(weights, tokenizer, "microsoft/tiny-chat");
        });
        var one = (await s.OpenAi.GetOpenAIModelClient().GetModelAsync("microsoft/tiny-chat", Ct)).Value;
        Assert.Equal("microsoft/tiny-chat", one.Id);
        using var raw = await s.Http.GetAsync("v1/models/microsoft/tiny-chat", Ct);
        Assert.Equal(HttpStatusCode.OK, raw.StatusCode);
        using var other = await s.Http.GetAsync("v1/models/microsoft/other", Ct);
        Assert.Equal(HttpStatusCode.NotFound, other.StatusCode);
        Assert.Contains("model_not_found", await other.Content.ReadAsStringAsync(Ct));

        // An assistant turn with no content (it made tool calls) or refusal parts reads as OpenAI returns them.
        var (status, body, _) = await s.PostAsync("v1/chat/completions", """
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": null},
                          {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]}, {"role": "user", "content": "ok"}], "max_tokens": 2}
            """);
        Assert.True(status == HttpStatusCode.OK, body.ToString());
    }

    /// <summary>An id is decoded once: "a%41b" (sent as a%2541b) is found, and "aAb" is not it (both were looked up as
    /// "aAb": the route value, already decoded by Kestrel, was unescaped again).</summary>
    [Fact]
    public async Task AModelIdIsDecodedOnce()
    {
        await using var s = await TestServer.StartAsync(o => o with { WarmupRequests = 0 }, load: () =>
        {
            var (weights, tokenizer) = TinyChatModel.Load();
            return new LoadedModel(weights, tokenizer, "org/a%41b");
        });
        using var found = await s.Http.GetAsync("v1/models/org%2Fa%2541b", Ct);
        Assert.Equal(HttpStatusCode.OK, found.StatusCode);
        Assert.Contains("\"org/a%41b\"", await found.Content.ReadAsStringAsync(Ct));
        using var decodedTwice = await s.Http.GetAsync("v1/models/org/aAb", Ct);
        Assert.Equal(HttpStatusCode.NotFound, decodedTwice.StatusCode);
    }

    /// <summary>--timeout is for clients' requests: a server whose timeout is shorter than its warm-up starts (it refused
    /// to, every warm-up request timing out and the model blamed).</summary>
    [Fact]
    public async Task AShortRequestTimeoutDoesNotStopTheWarmup()
    {
        await using var s = await TestServer.StartAsync(o => o with { RequestTimeout = TimeSpan.FromTicks(1), WarmupRequests = 2 });
        Assert.Equal(ModelState.Ready, s.Server.State);
        var (status, body, _) = await s.PostAsync("v1/completions", new { prompt = "Once", max_tokens = 4, ignore_eos = true });
        Assert.Equal(HttpStatusCode.GatewayTimeout, status);
        Assert.Equal("timeout", body.GetProperty("error").GetProperty("code").GetString());
    }

    /// <summary>
    /// Legacy text_offset never passes the final text nor goes back when a stop string cuts it: the tokens held back for
    /// the stop kept offsets past the cut (36 in a 32-character text, then 32).
    /// </summary>
    [Fact]
    public async Task TextOffsetsStayInTheTextAStopStringCut()
    {
        // The bundled model: its BPE tokens span several characters (the tiny chat model's are bytes).
        await using var s = await TestServer.StartAsync(o => o with { WarmupRequests = 0 }, load: () =>
        {
            var (weights, tokenizer) = BitNetSharp.Cli.Commands.ModelOptions.Load(RepositoryFiles.Path("models/bitnet-tinystories.gguf"));
            return new LoadedModel(weights, tokenizer, TestServer.ModelId);
        });
        var (_, plain, _) = await s.PostAsync("v1/completions", new { prompt = "Once upon a time", max_tokens = 30, temperature = 0, ignore_eos = true, logprobs = 1 });
        string text = plain.GetProperty("choices")[0].GetProperty("text").GetString()!;
        int[] offsets = [.. plain.GetProperty("choices")[0].GetProperty("logprobs").GetProperty("text_offset").EnumerateArray().Select(e => e.GetInt32())];
        // A stop from inside one token (two characters or more) to the end of the one after next: the middle one is held
        // back (sent with its offset before the stop is known), then cut with the rest.
        int i = Enumerable.Range(1, offsets.Length - 4).First(k => offsets[k + 1] - offsets[k] >= 2 && offsets[k + 2] > offsets[k + 1] && offsets[k + 3] > offsets[k + 2]
            && text.IndexOf(text[(offsets[k] + 1)..offsets[k + 3]], StringComparison.Ordinal) == offsets[k] + 1);
        string stop = text[(offsets[i] + 1)..offsets[i + 3]];
        var (status, cut, _) = await s.PostAsync("v1/completions", new { prompt = "Once upon a time", max_tokens = 30, temperature = 0, ignore_eos = true, logprobs = 1, stop });
        Assert.Equal(HttpStatusCode.OK, status);
        var choice = cut.GetProperty("choices")[0];
        int length = choice.GetProperty("text").GetString()!.Length;
        Assert.Equal(offsets[i] + 1, length);
        int[] cutOffsets = [.. choice.GetProperty("logprobs").GetProperty("text_offset").EnumerateArray().Select(e => e.GetInt32())];
        Assert.All(cutOffsets, o => Assert.InRange(o, 0, length));
        Assert.Equal(cutOffsets.Order(), cutOffsets);

        // Streamed, the same: a held-back token's entry waits for its text or the end (it was sent at once, its offset
        // past the text the stop string then cut), and each chunk's entries start within the text sent so far.
        var events = await s.StreamAsync("v1/completions", new { prompt = "Once upon a time", max_tokens = 30, temperature = 0, ignore_eos = true, logprobs = 1, stop, stream = true });
        var sentText = new System.Text.StringBuilder();
        var streamed = new List<int>();
        foreach (var e in events.Where(e => e != "[DONE]"))
        {
            var c = JsonDocument.Parse(e).RootElement.GetProperty("choices")[0];
            sentText.Append(c.GetProperty("text").GetString());
            if (c.GetProperty("logprobs").ValueKind != JsonValueKind.Object) continue;
            foreach (var o in c.GetProperty("logprobs").GetProperty("text_offset").EnumerateArray())
            {
                Assert.InRange(o.GetInt32(), 0, sentText.Length);
                streamed.Add(o.GetInt32());
            }
        }
        Assert.Equal(choice.GetProperty("text").GetString(), sentText.ToString());
        Assert.Equal(cutOffsets, streamed);
    }

    [Fact]
    public async Task HealthModelsTokenizeAndDetokenize()
    {
        var health = await S.Http.GetAsync("health", Ct);
        Assert.Equal(HttpStatusCode.OK, health.StatusCode);
        Assert.Contains("\"ok\"", await health.Content.ReadAsStringAsync(Ct));

        var models = (await S.OpenAi.GetOpenAIModelClient().GetModelsAsync(Ct)).Value;
        var model = Assert.Single(models);
        Assert.Equal(TestServer.ModelId, model.Id);
        Assert.Equal("bitnetsharp", model.OwnedBy);
        // GET /v1/models/{id}, the SDK's models.retrieve (before: 404 "no route").
        var one = (await S.OpenAi.GetOpenAIModelClient().GetModelAsync(TestServer.ModelId, Ct)).Value;
        Assert.Equal(TestServer.ModelId, one.Id);
        Assert.Equal("bitnetsharp", one.OwnedBy);
        var missing = await S.Http.GetAsync("v1/models/gpt-4o", Ct);
        Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
        Assert.Contains("model_not_found", await missing.Content.ReadAsStringAsync(Ct));

        var (status, body, _) = await S.PostAsync("tokenize", new { content = " the cat", with_pieces = true });
        Assert.Equal(HttpStatusCode.OK, status);
        var tokens = body.GetProperty("tokens").EnumerateArray().ToArray();
        Assert.Equal(258, tokens[0].GetProperty("id").GetInt32()); // " the" is one merged token
        Assert.Equal(" the", tokens[0].GetProperty("piece").GetString());
        var ids = tokens.Select(t => t.GetProperty("id").GetInt32()).ToArray();
        (status, body, _) = await S.PostAsync("detokenize", new { tokens = ids });
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(" the cat", body.GetProperty("content").GetString());

        // Control tokens round-trip too, as in llama-server (tokenize parses them by default; detokenize dropped them).
        (status, body, _) = await S.PostAsync("tokenize", new { content = "<|endoftext|> the" });
        Assert.Equal(HttpStatusCode.OK, status);
        ids = body.GetProperty("tokens").EnumerateArray().Select(t => t.GetInt32()).ToArray();
        Assert.Equal(TinyChatModel.EndOfText, ids[0]);
        (status, body, _) = await S.PostAsync("detokenize", new { tokens = ids });
        Assert.Equal("<|endoftext|> the", body.GetProperty("content").GetString());
    }

    /// <summary>The official client's chat calls, streaming and not, agree with each other and report text, usage and a finish reason.</summary>
    [Fact]
    public async Task OpenAiClientChatStreamingAndNot()
    {
        var chat = S.OpenAi.GetChatClient(TestServer.ModelId);
        ChatMessage[] messages = [new SystemChatMessage("You are terse."), new UserChatMessage("Say something.")];
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 12, Temperature = 0f, IncludeLogProbabilities = true, TopLogProbabilityCount = 2 };
        ChatCompletion completion = (await chat.CompleteChatAsync(messages, options, Ct)).Value;
        Assert.Equal(ChatMessageRole.Assistant, completion.Role);
        Assert.Contains(completion.FinishReason, new[] { ChatFinishReason.Stop, ChatFinishReason.Length });
        Assert.True(completion.Usage.InputTokenCount > 10);
        Assert.InRange(completion.Usage.OutputTokenCount, 0, 12);
        Assert.Equal(completion.Usage.InputTokenCount + completion.Usage.OutputTokenCount, completion.Usage.TotalTokenCount);
        Assert.Equal(completion.Usage.OutputTokenCount, completion.ContentTokenLogProbabilities.Count);
        Assert.All(completion.ContentTokenLogProbabilities, t => Assert.Equal(2, t.TopLogProbabilities.Count));
        string text = completion.Content.Count == 0 ? "" : completion.Content[0].Text;

        var streamed = new StringBuilder();
        ChatFinishReason? finish = null;
        ChatTokenUsage? usage = null;
        await foreach (var update in chat.CompleteChatStreamingAsync(messages, options, Ct))
        {
            foreach (var part in update.ContentUpdate) streamed.Append(part.Text);
            finish ??= update.FinishReason;
            usage ??= update.Usage;
        }
        Assert.Equal(text, streamed.ToString());
        Assert.Equal(completion.FinishReason, finish);
        Assert.NotNull(usage);
        Assert.Equal(completion.Usage.OutputTokenCount, usage.OutputTokenCount);
        Assert.Equal(completion.Usage.InputTokenCount, usage.InputTokenCount);
    }

    /// <summary>
    /// Legacy top_logprobs always hold the sampled token (OpenAI: "up to logprobs+1 elements"): logprobs 0 lists just it,
    /// and a sampled token outside the top k is added with its own log-probability (before: left out, and logprobs 0 gave {}).
    /// </summary>
    [Fact]
    public async Task LegacyTopLogProbsIncludeTheSampledToken()
    {
        var (status, body, _) = await S.PostAsync("v1/completions", new { prompt = "Once upon a time", max_tokens = 6, temperature = 0, ignore_eos = true, logprobs = 0 });
        Assert.Equal(HttpStatusCode.OK, status);
        var lp = body.GetProperty("choices")[0].GetProperty("logprobs");
        for (int i = 0; i < 6; i++)
        {
            var only = Assert.Single(lp.GetProperty("top_logprobs")[i].EnumerateObject());
            Assert.Equal(lp.GetProperty("tokens")[i].GetString(), only.Name);
            Assert.Equal(lp.GetProperty("token_logprobs")[i].GetDouble(), only.Value.GetDouble());
        }

        (status, body, _) = await S.PostAsync("v1/completions", new { prompt = "Once upon a time", max_tokens = 24, temperature = 2.0, seed = 11, ignore_eos = true, logprobs = 1 });
        Assert.Equal(HttpStatusCode.OK, status);
        lp = body.GetProperty("choices")[0].GetProperty("logprobs");
        int extra = 0;
        for (int i = 0; i < 24; i++)
        {
            var top = lp.GetProperty("top_logprobs")[i].EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetDouble());
            string token = lp.GetProperty("tokens")[i].GetString()!;
            Assert.True(top.ContainsKey(token), $"position {i}: sampled '{token}' missing from top_logprobs");
            Assert.Equal(lp.GetProperty("token_logprobs")[i].GetDouble(), top[token]);
            Assert.InRange(top.Count, 1, 2);
            if (top.Count == 2) extra++;
        }
        Assert.True(extra > 0, "at temperature 2 some sampled token should fall outside the top 1");
    }

    /// <summary>/v1/completions through the official client's pipeline (auth, transport): non-streaming and SSE, with usage and finish reasons.</summary>
    [Fact]
    public async Task OpenAiClientPipelineCompletionsStreamingAndNot()
    {
        var request = new Dictionary<string, object> { ["model"] = TestServer.ModelId, ["prompt"] = "Once upon a time", ["max_tokens"] = 10, ["temperature"] = 0, ["ignore_eos"] = true, ["logprobs"] = 2 };
        using var doc = JsonDocument.Parse(await SendViaPipeline(request));
        var root = doc.RootElement;
        Assert.Equal("text_completion", root.GetProperty("object").GetString());
        Assert.StartsWith("cmpl-", root.GetProperty("id").GetString());
        var choice = root.GetProperty("choices")[0];
        Assert.Equal("length", choice.GetProperty("finish_reason").GetString());
        Assert.Equal(10, choice.GetProperty("logprobs").GetProperty("tokens").GetArrayLength());
        Assert.Equal(2, choice.GetProperty("logprobs").GetProperty("top_logprobs")[0].EnumerateObject().Count());
        Assert.Equal(10, root.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        var (_, tokenized, _) = await S.PostAsync("tokenize", new { content = "Once upon a time" });
        Assert.Equal(tokenized.GetProperty("tokens").GetArrayLength(), root.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        string text = choice.GetProperty("text").GetString()!;

        request["stream"] = true;
        request["stream_options"] = new { include_usage = true };
        var events = new List<string>();
        using (var stream = new MemoryStream(Encoding.UTF8.GetBytes(await SendViaPipeline(request))))
            await foreach (var e in SseParser.Create(stream).EnumerateAsync(Ct)) events.Add(e.Data);
        Assert.Equal("[DONE]", events[^1]);
        var chunks = events[..^1].Select(e => JsonDocument.Parse(e).RootElement).ToList();
        Assert.Equal(text, string.Concat(chunks.Where(c => c.GetProperty("choices").GetArrayLength() > 0).Select(c => c.GetProperty("choices")[0].GetProperty("text").GetString())));
        Assert.Equal("length", chunks[^2].GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        Assert.Equal(10, chunks[^1].GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        Assert.Equal(0, chunks[^1].GetProperty("choices").GetArrayLength());
    }

    private async Task<string> SendViaPipeline(object body)
    {
        var pipeline = S.OpenAi.GetChatClient(TestServer.ModelId).Pipeline;
        using var message = pipeline.CreateMessage();
        message.Request.Method = "POST";
        message.Request.Uri = new Uri(S.Server.Address, "v1/completions");
        message.Request.Headers.Set("Content-Type", "application/json");
        message.Request.Content = BinaryContent.Create(BinaryData.FromObjectAsJson(body));
        message.Apply(new RequestOptions { CancellationToken = Ct });
        await pipeline.SendAsync(message);
        Assert.Equal(200, message.Response!.Status);
        return message.Response.Content.ToString();
    }

    /// <summary>16 greedy streaming chat clients at once (8 run, 8 queue) each get exactly the tokens — bytes and log-probabilities — they get alone.</summary>
    [Fact]
    public async Task SixteenConcurrentStreamsEqualRunningAlone()
    {
        var chat = S.OpenAi.GetChatClient(TestServer.ModelId);
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 16, Temperature = 0f, IncludeLogProbabilities = true };
        async Task<List<(string Bytes, float LogProb)>> Run(int i)
        {
            var tokens = new List<(string, float)>();
            ChatFinishReason? finish = null;
            await foreach (var u in chat.CompleteChatStreamingAsync([new UserChatMessage($"Story number {i}: " + new string((char)('a' + i), i))], options, Ct))
            {
                foreach (var t in u.ContentTokenLogProbabilities) tokens.Add((Convert.ToHexString(t.Utf8Bytes?.ToArray() ?? []), t.LogProbability));
                finish ??= u.FinishReason;
            }
            Assert.NotNull(finish);
            return tokens;
        }
        var alone = new List<List<(string, float)>>();
        for (int i = 0; i < 16; i++) alone.Add(await Run(i));
        var together = await Task.WhenAll(Enumerable.Range(0, 16).Select(Run));
        for (int i = 0; i < 16; i++) Assert.Equal(alone[i], together[i]);
        Assert.True(alone.Sum(a => a.Count) > 16, "the greedy answers were (nearly) all empty; the comparison proves little");
    }

    /// <summary>
    /// Legacy text_offset is where each token's own text starts, also when a stop string that never completes holds
    /// a token's last char back: it arrives with the next token, whose offset used to point at the held char.
    /// </summary>
    [Fact]
    public async Task TextOffsetsIgnoreTextHeldBackForAStopString()
    {
        var request = new Dictionary<string, object> { ["prompt"] = "Once upon a time", ["max_tokens"] = 12, ["temperature"] = 0, ["ignore_eos"] = true, ["logprobs"] = 1 };
        var (_, plain, _) = await S.PostAsync("v1/completions", request);
        var logprobs = plain.GetProperty("choices")[0].GetProperty("logprobs");
        var tokens = logprobs.GetProperty("tokens").EnumerateArray().Select(t => t.GetString()!).ToArray();
        var offsets = logprobs.GetProperty("text_offset").EnumerateArray().Select(t => t.GetInt32()).ToArray();
        string text = plain.GetProperty("choices")[0].GetProperty("text").GetString()!;
        Assert.Equal(tokens.Length, offsets.Length);
        // A token k that ends some text, and a stop string starting with that text's last char, completed by a char
        // the model never writes: the char is held back after token k and delivered with token k + 1.
        int k = Enumerable.Range(0, offsets.Length - 1).First(i => offsets[i + 1] > 0);
        request["stop"] = text[offsets[k + 1] - 1] + "\u0001";
        var (_, held, _) = await S.PostAsync("v1/completions", request);
        var heldLogprobs = held.GetProperty("choices")[0].GetProperty("logprobs");
        Assert.Equal(text, held.GetProperty("choices")[0].GetProperty("text").GetString());
        Assert.Equal(offsets, heldLogprobs.GetProperty("text_offset").EnumerateArray().Select(t => t.GetInt32()).ToArray());

        request["stream"] = true;
        var events = await S.StreamAsync("v1/completions", request);
        var streamed = events.Where(e => e != "[DONE]").Select(e => JsonDocument.Parse(e).RootElement.GetProperty("choices")[0])
            .Where(c => c.GetProperty("logprobs").ValueKind == JsonValueKind.Object)
            .SelectMany(c => c.GetProperty("logprobs").GetProperty("text_offset").EnumerateArray().Select(t => t.GetInt32())).ToArray();
        Assert.Equal(offsets, streamed);
    }

    [Fact]
    public async Task SeveralChoicesStopStringsAndSeedsOverHttp()
    {
        var body = new { prompt = "abc", max_tokens = 12, n = 3, temperature = 1.2, seed = 7, ignore_eos = true };
        var (status, first, _) = await S.PostAsync("v1/completions", body);
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(3, first.GetProperty("choices").GetArrayLength());
        Assert.Equal(36, first.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        var (_, again, _) = await S.PostAsync("v1/completions", body);
        for (int i = 0; i < 3; i++)
            Assert.Equal(first.GetProperty("choices")[i].GetProperty("text").GetString(), again.GetProperty("choices")[i].GetProperty("text").GetString());

        string text = first.GetProperty("choices")[0].GetProperty("text").GetString()!;
        string stop = text.Substring(4, 2);
        var (_, stopped, _) = await S.PostAsync("v1/completions", new { prompt = "abc", max_tokens = 12, temperature = 1.2, seed = 7, ignore_eos = true, stop });
        Assert.Equal("stop", stopped.GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        Assert.Equal(text[..text.IndexOf(stop, StringComparison.Ordinal)], stopped.GetProperty("choices")[0].GetProperty("text").GetString());

        // Any 64-bit seed: 2^63 (what --seed and the library take) was a 400 "must be an integer"; its bits are −2^63's.
        string Seeded(string seed) => $$"""{"prompt": "abc", "max_tokens": 12, "temperature": 1.2, "ignore_eos": true, "seed": {{seed}}}""";
        var (big, high, _) = await S.PostAsync("v1/completions", Seeded("9223372036854775808"));
        Assert.Equal(HttpStatusCode.OK, big);
        var (_, low, _) = await S.PostAsync("v1/completions", Seeded("-9223372036854775808"));
        Assert.Equal(low.GetProperty("choices")[0].GetProperty("text").GetString(), high.GetProperty("choices")[0].GetProperty("text").GetString());
        var (tooBig, error, _) = await S.PostAsync("v1/completions", Seeded("18446744073709551616"));
        Assert.Equal(HttpStatusCode.BadRequest, tooBig);
        Assert.Contains("seed", error.GetProperty("error").GetProperty("message").GetString());

        // Several prompts: choices indexed prompt × n + choice, prompt tokens summed once per prompt.
        var (_, multi, _) = await S.PostAsync("v1/completions", new { prompt = new[] { new[] { 1, 2, 3 }, new[] { 4, 5 } }, max_tokens = 3, n = 2, temperature = 0, ignore_eos = true });
        Assert.Equal(4, multi.GetProperty("choices").GetArrayLength());
        Assert.Equal(5, multi.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        Assert.Equal(multi.GetProperty("choices")[0].GetProperty("text").GetString(), multi.GetProperty("choices")[1].GetProperty("text").GetString());
    }

    /// <summary>Every malformed request gets a 4xx with an OpenAI-shaped error naming the field, and the server keeps serving.</summary>
    [Fact]
    public async Task MalformedRequestsGetOpenAiShapedClientErrors()
    {
        string big = "{\"prompt\": \"" + new string('x', 70 * 1024) + "\"}";
        var overContext = JsonSerializer.Serialize(new { prompt = Enumerable.Range(0, 300).Select(i => i % 256).ToArray() });
        // Every token banned: before, a 500 generation_failed (which clients retry); now a 400 on logit_bias.
        var banAll = JsonSerializer.Serialize(new { prompt = "hi", logit_bias = Enumerable.Range(0, TinyChatModel.VocabSize).ToDictionary(i => i.ToString(), _ => -100) });
        var cases = new (string Path, string Body, int Status, string? Param, string? Code)[]
        {
            ("v1/completions", "{not json", 400, null, "invalid_json"),
            ("v1/completions", "[1, 2]", 400, null, "invalid_json"),
            ("v1/completions", "{\"prompt\": 5}", 400, "prompt", "invalid_type"),
            ("v1/completions", "{\"prompt\": \"hi\", \"max_tokens\": \"ten\"}", 400, "max_tokens", "invalid_type"),
            ("v1/completions", "{\"prompt\": \"hi\", \"max_tokens\": 100000}", 400, "max_tokens", "invalid_value"),
            ("v1/completions", "{\"prompt\": \"hi\", \"max_tokens\": 255}", 400, "max_tokens", "context_length_exceeded"),
            ("v1/completions", overContext, 400, "prompt", "context_length_exceeded"),
            ("v1/completions", "{\"prompt\": \"hi\", \"n\": 99}", 400, "n", "invalid_value"),
            ("v1/completions", "{\"prompt\": \"hi\", \"n\": 1.5}", 400, "n", "invalid_type"),
            ("v1/completions", "{\"prompt\": \"hi\", \"temperature\": -1}", 400, "temperature", "invalid_value"),
            ("v1/completions", "{\"prompt\": \"hi\", \"stream\": \"yes\"}", 400, "stream", "invalid_type"),
            ("v1/completions", "{\"prompt\": \"hi\", \"stop\": [1]}", 400, "stop[0]", "invalid_type"),
            ("v1/completions", "{\"prompt\": \"hi\", \"logit_bias\": {\"abc\": 1}}", 400, "logit_bias", "invalid_value"),
            ("v1/completions", banAll, 400, "logit_bias", "invalid_value"),
            ("v1/completions", "{\"prompt\": \"hi\", \"stream_options\": {\"include_usage\": true}}", 400, "stream_options", "invalid_value"),
            ("v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_completion_tokens\": 2, \"max_tokens\": \"x\"}", 400, "max_tokens", "invalid_type"),
            ("v1/completions", "{\"prompt\": [1, 2, 99999]}", 400, "prompt", "invalid_value"),
            ("v1/completions", "{\"prompt\": [\"a\", [1]]}", 400, "prompt", "invalid_type"),
            ("v1/completions", "{\"prompt\": []}", 400, "prompt", "empty_array"),
            ("v1/completions", "{\"max_tokens\": 5}", 400, "prompt", "missing_required_parameter"),
            ("v1/completions", "{\"prompt\": \"hi\", \"model\": \"gpt-4\"}", 404, "model", "model_not_found"),
            ("v1/completions", "{\"prompt\": \"hi\", \"model\": \"/etc/passwd\"}", 404, "model", "model_not_found"),
            ("v1/completions", big, 413, null, "request_too_large"),
            ("v1/chat/completions", "{\"messages\": []}", 400, "messages", "empty_array"),
            ("v1/chat/completions", "{\"messages\": \"hi\"}", 400, "messages", "invalid_type"),
            ("v1/chat/completions", "{}", 400, "messages", "missing_required_parameter"),
            ("v1/chat/completions", "{\"messages\": [{\"content\": \"hi\"}]}", 400, "messages[0].role", "missing_required_parameter"),
            ("v1/chat/completions", "{\"messages\": [{\"role\": \"wizard\", \"content\": \"hi\"}]}", 400, "messages[0].role", "invalid_value"),
            ("v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": 3}]}", 400, "messages[0].content", "invalid_type"),
            // Only an assistant message may leave content out (OpenAI's rule); the others were sent as empty turns.
            ("v1/chat/completions", "{\"messages\": [{\"role\": \"user\"}]}", 400, "messages[0].content", "missing_required_parameter"),
            ("v1/chat/completions", "{\"messages\": [{\"role\": \"system\", \"content\": null}, {\"role\": \"user\", \"content\": \"hi\"}]}", 400, "messages[0].content", "invalid_type"), // null: "is null", not "is required" (it was there)
            ("v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"refusal\", \"refusal\": \"no\"}]}]}", 400, "messages[0].content[0].type", "unsupported_content"),
            ("v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}", 400, "messages[0].content[0].type", "unsupported_content"),
            ("v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": []}]}", 400, "messages[0].content", "empty_array"), // an empty message, 200
            ("v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"top_logprobs\": 2}", 400, "top_logprobs", null),
            ("tokenize", "{\"content\": 5}", 400, "content", "invalid_type"),
            ("detokenize", "{\"tokens\": [1, -1]}", 400, "tokens", "invalid_value"),
        };
        foreach (var (path, body, expected, param, code) in cases)
        {
            var (status, json, response) = await S.PostAsync(path, body);
            string label = $"{path} {(body.Length > 80 ? body[..80] : body)}";
            Assert.True(expected == (int)status, $"{label}: {(int)status} {json}");
            var error = json.GetProperty("error");
            Assert.False(string.IsNullOrWhiteSpace(error.GetProperty("message").GetString()), label);
            Assert.Equal(JsonValueKind.String, error.GetProperty("type").ValueKind);
            Assert.True(param == (error.GetProperty("param").ValueKind == JsonValueKind.Null ? null : error.GetProperty("param").GetString()), $"{label}: {json}");
            if (code is not null) Assert.True(code == error.GetProperty("code").GetString(), $"{label}: {json}");
            Assert.Equal("application/json", response.Content.Headers.ContentType?.MediaType);
        }

        var tooLong = (await S.PostAsync("v1/completions", overContext)).Body.GetProperty("error").GetProperty("message").GetString();
        Assert.Matches(@"maximum context length is \d+ tokens, but the prompt is 300 tokens long; shorten it", tooLong);

        // A prompt far past the context is refused from its first characters (16 per token of the context, and 64
        // tokens more), before the whole of it is tokenized: a 1 MB body of "x x x …" was split and merged into 512K
        // tokens (~30 MB each; eight at once ran a 192 MiB pod out of memory) to be refused for them.
        string many = string.Concat(Enumerable.Repeat("x ", 20_000));
        var farPast = (await S.PostAsync("v1/completions", JsonSerializer.Serialize(new { prompt = many, max_tokens = 1 }))).Body.GetProperty("error");
        Assert.Equal("context_length_exceeded", farPast.GetProperty("code").GetString());
        Assert.Equal("prompt", farPast.GetProperty("param").GetString());
        Assert.Matches(@"maximum context length is \d+ tokens, but the first [\d,]+ characters of the prompt \(40,000 in all\) are already \d+ tokens", farPast.GetProperty("message").GetString());
        var chatFarPast = (await S.PostAsync("v1/chat/completions", JsonSerializer.Serialize(new { messages = new[] { new { role = "system", content = "hi" }, new { role = "user", content = many } } }))).Body.GetProperty("error");
        Assert.Equal("context_length_exceeded", chatFarPast.GetProperty("code").GetString());
        Assert.Matches(@"the first [\d,]+ characters of the messages \(40,0\d\d in all\) are already", chatFarPast.GetProperty("message").GetString());

        var wrongMethod = await S.Http.GetAsync("v1/completions", Ct);
        Assert.Equal(HttpStatusCode.MethodNotAllowed, wrongMethod.StatusCode);
        Assert.Contains("\"error\"", await wrongMethod.Content.ReadAsStringAsync(Ct));
        Assert.Equal(["POST"], wrongMethod.Content.Headers.Allow); // RFC 9110: a 405 says what the path takes
        using (var post = await S.Http.PostAsync("v1/models/tiny-chat", new StringContent("{}"), Ct))
        {
            Assert.Equal(HttpStatusCode.MethodNotAllowed, post.StatusCode);
            Assert.Equal(["GET", "HEAD"], post.Content.Headers.Allow);
        }
        // A dotted path is a route miss like any other: the JSON error, not an empty 404.
        using (var dotted = await S.Http.GetAsync("v2/models.json", Ct))
        {
            Assert.Equal(HttpStatusCode.NotFound, dotted.StatusCode);
            Assert.Contains("not_found", await dotted.Content.ReadAsStringAsync(Ct));
        }
        // Uptime checkers probe with HEAD: the status without a body (it was a 405).
        using (var head = await S.Http.SendAsync(new HttpRequestMessage(HttpMethod.Head, "health"), Ct))
        {
            Assert.Equal(HttpStatusCode.OK, head.StatusCode);
            Assert.Empty(await head.Content.ReadAsByteArrayAsync(Ct));
        }
        var noRoute = await S.Http.GetAsync("v2/nothing", Ct);
        Assert.Equal(HttpStatusCode.NotFound, noRoute.StatusCode);
        Assert.Contains("not_found", await noRoute.Content.ReadAsStringAsync(Ct));

        // Still serving.
        var (ok, done, _) = await S.PostAsync("v1/completions", new { prompt = "hi", max_tokens = 2 });
        Assert.Equal(HttpStatusCode.OK, ok);
        Assert.Equal("text_completion", done.GetProperty("object").GetString());
    }

    /// <summary>A body that is not UTF-8 (here Latin-1 "café") is the client's mistake: a 400 that says so, not a 500.</summary>
    [Fact]
    public async Task InvalidUtf8BodyIsA400NamingTheEncoding()
    {
        byte[] Latin1(string json) => Encoding.Latin1.GetBytes(json);
        var cases = new (string Path, byte[] Body)[]
        {
            ("v1/completions", Latin1("{\"prompt\": \"caf\u00e9\", \"max_tokens\": 2}")),
            ("v1/chat/completions", Latin1("{\"messages\": [{\"role\": \"user\", \"content\": \"caf\u00e9\"}]}")),
            ("v1/completions", Latin1("{\"prompt\": \"hi\", \"caf\u00e9\": 1}")), // in a property name
            ("tokenize", Latin1("{\"content\": \"caf\u00e9\"}")),
            ("v1/completions", [.. "{\"prompt\": \"a"u8, 0xF0, 0x9F, 0x98, .. "\"}"u8]), // a truncated 4-byte sequence
        };
        foreach (var (path, body) in cases)
        {
            var (status, json, _) = await S.PostAsync(path, body);
            string label = $"{path} {Encoding.Latin1.GetString(body)}";
            Assert.True(status == HttpStatusCode.BadRequest, $"{label}: {(int)status} {json}");
            var error = json.GetProperty("error");
            Assert.Equal("invalid_request_error", error.GetProperty("type").GetString());
            Assert.Equal("invalid_utf8", error.GetProperty("code").GetString());
            Assert.Contains("not valid UTF-8", error.GetProperty("message").GetString());
        }
        Assert.Contains("0xE9", (await S.PostAsync("tokenize", Latin1("{\"content\": \"caf\u00e9\"}"))).Body.GetProperty("error").GetProperty("message").GetString());

        var (ok, _, _) = await S.PostAsync("v1/completions", Encoding.UTF8.GetBytes("{\"prompt\": \"caf\u00e9\", \"max_tokens\": 2}"));
        Assert.Equal(HttpStatusCode.OK, ok);
    }

    /// <summary>
    /// Warm-up is not served traffic: after it, every request, token and latency count is 0, and the first real request
    /// counts once. Each rollout showed the warm-up's requests and a time-to-first-token p99 of the JIT's seconds.
    /// </summary>
    [Fact]
    public async Task WarmUpCountsInNoMetric()
    {
        await using var s = await TestServer.StartAsync(o => o with { WarmupRequests = 2 });
        // A histogram nothing was recorded in has no series yet: that reads 0 too.
        static double Value(string metrics, string series) =>
            metrics.Split('\n').Any(l => l.StartsWith(series + " ", StringComparison.Ordinal)) ? TestServer.Sample(metrics, series) : 0;
        string text = await s.MetricsAsync();
        foreach (var series in new[]
        {
            "bitnet_request_success_total{finish_reason=\"length\"}", "bitnet_generation_tokens_total", "bitnet_prompt_tokens_total",
            "bitnet_time_to_first_token_seconds_count", "bitnet_e2e_request_latency_seconds_count", "bitnet_engine_steps_total",
            "bitnet_engine_step_duration_seconds_count",
        })
            Assert.True(Value(text, series) == 0, $"{series} = {Value(text, series)} after warm-up alone");
        var (status, _, _) = await s.PostAsync("v1/completions", new { prompt = "counted", max_tokens = 3, ignore_eos = true });
        Assert.Equal(HttpStatusCode.OK, status);
        text = await s.MetricsAsync();
        Assert.Equal(1, TestServer.Sample(text, "bitnet_request_success_total{finish_reason=\"length\"}"));
        Assert.Equal(3, TestServer.Sample(text, "bitnet_generation_tokens_total"));
        Assert.Equal(1, TestServer.Sample(text, "bitnet_time_to_first_token_seconds_count"));
        Assert.True(s.Scheduler.Statistics.Steps >= 3);
    }

    /// <summary>/metrics is Prometheus text: every family has HELP and TYPE, every sample parses, the instruments the engine feeds are there, and promtool finds nothing to lint.</summary>
    [Fact]
    public async Task MetricsAreValidPrometheusText()
    {
        var (status, _, _) = await S.PostAsync("v1/completions", new { prompt = "metrics please", max_tokens = 4, ignore_eos = true });
        Assert.Equal(HttpStatusCode.OK, status);
        var response = await S.Http.GetAsync("metrics", Ct);
        Assert.Equal("text/plain", response.Content.Headers.ContentType?.MediaType);
        string text = await response.Content.ReadAsStringAsync(Ct);
        var families = PrometheusText.Parse(text);
        foreach (var name in new[]
        {
            "bitnet_requests_running", "bitnet_requests_waiting", "bitnet_sequences_running", "bitnet_kv_cache_usage_ratio", "bitnet_kv_cache_size_bytes",
            "bitnet_prompt_tokens_total", "bitnet_generation_tokens_total", "bitnet_request_success_total", "bitnet_requests_cancelled_total",
            "bitnet_requests_rejected_total", "bitnet_time_to_first_token_seconds", "bitnet_inter_token_latency_seconds", "bitnet_e2e_request_latency_seconds",
            "bitnet_request_queue_time_seconds", "bitnet_request_prompt_tokens", "bitnet_request_generation_tokens", "bitnet_engine_step_tokens",
            "bitnet_engine_step_duration_seconds",
        })
            Assert.True(families.ContainsKey(name), $"no family {name} in\n{text}");
        Assert.Equal("histogram", families["bitnet_time_to_first_token_seconds"]);
        Assert.Equal("counter", families["bitnet_generation_tokens_total"]);
        Assert.True(TestServer.Sample(text, "bitnet_request_success_total{finish_reason=\"length\"}") >= 1);
        Assert.True(TestServer.Sample(text, "bitnet_time_to_first_token_seconds_count") >= 1);
        Assert.True(TestServer.Sample(text, "bitnet_generation_tokens_total") >= 4);

        if (PrometheusText.FindPromtool() is not { } promtool)
        {
            Assert.Skip("promtool is not installed (Debian/Ubuntu: apt-get install -y prometheus); the Prometheus lint was not run.");
            return;
        }
        var (code, output) = await PrometheusText.RunPromtoolAsync(promtool, text);
        Assert.True(code == 0 && output.Trim().Length == 0, $"promtool check metrics (exit {code}):\n{output}\n---\n{text}");
    }

    /// <summary>A client that disconnects mid-stream frees its sequence: /metrics shows it gone and the request waiting for the only slot runs.</summary>
    [Fact]
    public async Task DisconnectMidStreamFreesTheSequence()
    {
        await using var s = await TestServer.StartAsync(o => o with { Scheduler = o.Scheduler with { MaxSequences = 1, MaxBatchedTokens = 16 }, MaxChoices = 1, MaxTokensLimit = 4000, WarmupRequests = 1 }, contextLength: 4096, layers: 24);
        using var abort = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions")
        {
            Content = new StringContent(JsonSerializer.Serialize(new { prompt = "a long one", max_tokens = 4000, ignore_eos = true, stream = true }), Encoding.UTF8, "application/json"),
        };
        var response = await s.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, abort.Token);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var stream = await response.Content.ReadAsStreamAsync(abort.Token);
        var first = new byte[64];
        Assert.True(await stream.ReadAsync(first, abort.Token) > 0);
        s.Scheduler.StepGate.Reset(); // hold the engine so the long request is certainly still running
        try
        {
            Assert.Equal(1, TestServer.Sample(await s.MetricsAsync(), "bitnet_sequences_running"));
            var waiting = s.PostAsync("v1/completions", new { prompt = "next", max_tokens = 3, ignore_eos = true });
            await TestServer.EventuallyAsync(async () => TestServer.Sample(await s.MetricsAsync(), "bitnet_requests_waiting") == 1, "the second request to queue");

            // Disconnect: cancel the read and drop the connection, then let the engine go on. The long request has
            // ~4000 tokens to go, far longer than Kestrel takes to see the connection close and cancel it.
            abort.Cancel();
            response.Dispose();
            s.Scheduler.StepGate.Set();
            var (status, body, _) = await waiting;
            Assert.Equal(HttpStatusCode.OK, status);
            Assert.Equal(3, body.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        }
        finally
        {
            s.Scheduler.StepGate.Set();
        }
        string metrics = await s.MetricsAsync();
        Assert.Equal(1, TestServer.Sample(metrics, "bitnet_requests_cancelled_total"));
        Assert.Equal(0, TestServer.Sample(metrics, "bitnet_sequences_running"));
        Assert.Equal(0, TestServer.Sample(metrics, "bitnet_requests_waiting"));
    }

    /// <summary>More prompts in one request than the sequences and the queue can ever hold together: 400, not a 429 no retry can cure.</summary>
    [Fact]
    public async Task MorePromptsThanTheServerCanHoldAre400()
    {
        await using var s = await TestServer.StartAsync(o => o with { Scheduler = o.Scheduler with { MaxSequences = 2, MaxBatchedTokens = 16, MaxQueue = 0 }, MaxChoices = 1, WarmupRequests = 0 });
        var (status, body, _) = await s.PostAsync("v1/completions", new { prompt = new[] { "a", "b", "c" }, max_tokens = 1 });
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("too_many_prompts", body.GetProperty("error").GetProperty("code").GetString());
        (status, body, _) = await s.PostAsync("v1/completions", new { prompt = new[] { "a", "b" }, max_tokens = 1 });
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(2, body.GetProperty("choices").GetArrayLength());
    }

    /// <summary>
    /// A streamed request that times out while it waits in the queue gets 504 with the OpenAI error body, as a
    /// non-streamed one does: the status line waits for the first event (it used to be 200 with an SSE error event).
    /// </summary>
    [Fact]
    public async Task AStreamTimingOutInTheQueueIs504()
    {
        await using var s = await TestServer.StartAsync(o => o with { RequestTimeout = TimeSpan.FromMilliseconds(300), WarmupRequests = 0 });
        s.Scheduler.StepGate.Reset(); // hold the engine: the request stays queued past its timeout
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions")
        {
            Content = new StringContent("""{"messages":[{"role":"user","content":"hi"}],"max_tokens":4,"stream":true}""", Encoding.UTF8, "application/json"),
        };
        var sent = s.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, Ct);
        // Past its deadline once it is queued (a fixed wait from sending could end before a slow request got there).
        await TestServer.EventuallyAsync(() => Task.FromResult(s.Scheduler.Statistics.WaitingRequests == 1), "the request is queued");
        await Task.Delay(450, Ct);
        s.Scheduler.StepGate.Set();
        using var response = await sent;
        Assert.Equal(HttpStatusCode.GatewayTimeout, response.StatusCode);
        using var body = JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct));
        Assert.Equal("timeout", body.RootElement.GetProperty("error").GetProperty("code").GetString());
        Assert.Contains("waiting in the queue", body.RootElement.GetProperty("error").GetProperty("message").GetString());
        // Queued: a retry may find room, so the clients' own rule stands (no x-should-retry).
        Assert.False(response.Headers.Contains(BitNetServer.ShouldRetryHeader));
    }

    /// <summary>
    /// A request that times out while it runs is 504 with x-should-retry: false, which the official OpenAI clients obey
    /// before their rule of retrying every 5xx twice (each retry would run the whole timeout again); so is a failed load.
    /// An engine failure (possibly transient) and a full queue's 429 keep no such header.
    /// </summary>
    [Fact]
    public async Task ErrorsARetryWouldRepeatSayShouldRetryFalse()
    {
        // 40 tokens take ≥ 10 s: admitted at once, past its timeout while it runs. The timeout leaves 2 s for admission
        // (300 ms could pass on a loaded 2-core machine before the engine took the request: a timeout "in the queue").
        await using var s = await TestServer.StartAsync(o => o with { RequestTimeout = TimeSpan.FromSeconds(2), WarmupRequests = 0 });
        s.Scheduler.BeforeForward = () => Thread.Sleep(250);
        var (status, body, response) = await s.PostAsync("v1/completions", new { prompt = "Once", max_tokens = 40, ignore_eos = true });
        Assert.Equal(HttpStatusCode.GatewayTimeout, status);
        Assert.Equal("timeout", body.GetProperty("error").GetProperty("code").GetString());
        Assert.DoesNotContain("queue", body.GetProperty("error").GetProperty("message").GetString());
        Assert.Equal("false", Assert.Single(response.Headers.GetValues(BitNetServer.ShouldRetryHeader)));

        s.Scheduler.BeforeForward = () => throw new InvalidOperationException("the forward pass failed (test)");
        (status, body, response) = await s.PostAsync("v1/completions", new { prompt = "Once", max_tokens = 2 });
        Assert.Equal(HttpStatusCode.InternalServerError, status);
        Assert.False(response.Headers.Contains(BitNetServer.ShouldRetryHeader));
    }

    /// <summary>usage carries OpenAI's prompt_tokens_details and completion_tokens_details (clients read them unchecked), zero here, in a response and in a stream's usage chunk.</summary>
    [Fact]
    public async Task UsageHasOpenAisTokenDetails()
    {
        await using var s = await TestServer.StartAsync(o => o with { WarmupRequests = 0 });
        var (status, body, _) = await s.PostAsync("v1/chat/completions", new { messages = new[] { new { role = "user", content = "hi" } }, max_tokens = 3 });
        Assert.Equal(HttpStatusCode.OK, status);
        AssertDetails(body.GetProperty("usage"));
        var events = await s.StreamAsync("v1/completions", new { prompt = "hi", max_tokens = 3, stream = true, stream_options = new { include_usage = true } });
        using var last = JsonDocument.Parse(events[^2]);
        AssertDetails(last.RootElement.GetProperty("usage"));

        static void AssertDetails(JsonElement usage)
        {
            Assert.Equal(0, usage.GetProperty("prompt_tokens_details").GetProperty("cached_tokens").GetInt32());
            Assert.Equal(0, usage.GetProperty("completion_tokens_details").GetProperty("reasoning_tokens").GetInt32());
            Assert.Equal(0, usage.GetProperty("completion_tokens_details").GetProperty("accepted_prediction_tokens").GetInt32());
        }
    }

    /// <summary>Two prompts with n = 2 need four sequences: a server of two sequences and no queue answers 400, not a 429 for ever.</summary>
    [Fact]
    public async Task PromptsTimesChoicesPastTheServerAre400()
    {
        await using var s = await TestServer.StartAsync(o => o with { Scheduler = o.Scheduler with { MaxSequences = 2, MaxBatchedTokens = 16, MaxQueue = 0 }, MaxChoices = 2, WarmupRequests = 0 });
        var (status, body, _) = await s.PostAsync("v1/completions", new { prompt = new[] { "a", "b" }, max_tokens = 1, n = 2 });
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("too_many_prompts", body.GetProperty("error").GetProperty("code").GetString());
        Assert.Contains("4 sequences", body.GetProperty("error").GetProperty("message").GetString());
        (status, body, _) = await s.PostAsync("v1/completions", new { prompt = "a", max_tokens = 1, n = 2 });
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(2, body.GetProperty("choices").GetArrayLength());
    }

    [Fact]
    public async Task FullQueueAnswers429WithRetryAfter()
    {
        await using var s = await TestServer.StartAsync(o => o with { Scheduler = o.Scheduler with { MaxSequences = 1, MaxBatchedTokens = 16, MaxQueue = 1 }, MaxChoices = 1, WarmupRequests = 0 });
        s.Scheduler.StepGate.Reset();
        try
        {
            // The engine is held: the first request is for the free sequence, the second may wait, the third is refused.
            var first = s.PostAsync("v1/completions", new { prompt = "first", max_tokens = 2 });
            await TestServer.EventuallyAsync(() => Task.FromResult(s.Scheduler.Statistics.WaitingRequests == 1), "the first request to queue");
            var queued = s.PostAsync("v1/completions", new { prompt = "queued", max_tokens = 2 });
            await TestServer.EventuallyAsync(() => Task.FromResult(s.Scheduler.Statistics.WaitingRequests == 2), "the second request to queue");
            var (status, body, response) = await s.PostAsync("v1/completions", new { prompt = "second", max_tokens = 2 });
            Assert.Equal((HttpStatusCode)429, status);
            Assert.Equal("queue_full", body.GetProperty("error").GetProperty("code").GetString());
            Assert.Equal("1", response.Headers.RetryAfter?.ToString());
            Assert.False(response.Headers.Contains(BitNetServer.ShouldRetryHeader));
            s.Scheduler.StepGate.Set();
            Assert.Equal(HttpStatusCode.OK, (await first).Status);
            Assert.Equal(HttpStatusCode.OK, (await queued).Status);
        }
        finally
        {
            s.Scheduler.StepGate.Set();
        }
        Assert.Equal(1, TestServer.Sample(await s.MetricsAsync(), "bitnet_requests_rejected_total"));
    }

    /// <summary>
    /// A list of prompts refused with 429 part-way (the first queued, the second past the queue) counts one rejection and
    /// no cancellation: the queued prompt the server withdrew was counted in bitnet_requests_cancelled_total, "a client
    /// that went away", though the client waited for its answer (found by a sweep of the metrics' accounting).
    /// </summary>
    [Fact]
    public async Task AMultiPromptRefusalCountsNoCancellation()
    {
        await using var s = await TestServer.StartAsync(o => o with { Scheduler = o.Scheduler with { MaxSequences = 1, MaxBatchedTokens = 16, MaxQueue = 1 }, MaxChoices = 1, WarmupRequests = 0 });
        s.Scheduler.StepGate.Reset();
        try
        {
            var first = s.PostAsync("v1/completions", new { prompt = "first", max_tokens = 2 });
            await TestServer.EventuallyAsync(() => Task.FromResult(s.Scheduler.Statistics.WaitingRequests == 1), "the first request to queue");
            var (status, body, _) = await s.PostAsync("v1/completions", new { prompt = new[] { "a", "b" }, max_tokens = 2 });
            Assert.Equal((HttpStatusCode)429, status);
            Assert.Equal("queue_full", body.GetProperty("error").GetProperty("code").GetString());
            s.Scheduler.StepGate.Set();
            Assert.Equal(HttpStatusCode.OK, (await first).Status);
        }
        finally
        {
            s.Scheduler.StepGate.Set();
        }
        await TestServer.EventuallyAsync(() => Task.FromResult(s.Scheduler.Statistics.WaitingRequests == 0), "the withdrawn prompt to leave the queue");
        var metrics = await s.MetricsAsync();
        Assert.Equal(1, TestServer.Sample(metrics, "bitnet_requests_rejected_total"));
        Assert.Equal(0, TestServer.Sample(metrics, "bitnet_requests_cancelled_total"));
    }

    /// <summary>
    /// GET /dashboard (and /) serves the live page; every metric family the page's script reads is one /metrics
    /// exports (so a renamed instrument breaks this test, not the page), and so are the endpoints it polls.
    /// </summary>
    [Fact]
    public async Task DashboardPageReadsOnlyMetricsTheServerExports()
    {
        var (status, _, _) = await S.PostAsync("v1/completions", new { prompt = "dashboard", max_tokens = 3, ignore_eos = true });
        Assert.Equal(HttpStatusCode.OK, status);
        foreach (var path in new[] { "dashboard", "" })
        {
            var response = await S.Http.GetAsync(path, Ct);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            Assert.Equal("text/html", response.Content.Headers.ContentType?.MediaType);
            string page = await response.Content.ReadAsStringAsync(Ct);
            Assert.Contains("<canvas id=\"chart\"", page);
            foreach (var endpoint in new[] { "\"/metrics\"", "\"/health?verbose\"", "\"/v1/models\"" }) Assert.Contains(endpoint, page);
            var families = PrometheusText.Parse(await (await S.Http.GetAsync("metrics", Ct)).Content.ReadAsStringAsync(Ct));
            var used = System.Text.RegularExpressions.Regex.Matches(page, @"""(bitnet_[a-z_]+)""").Select(m => m.Groups[1].Value).Distinct().ToList();
            Assert.True(used.Count >= 12, $"the page reads only {used.Count} metrics");
            foreach (var name in used)
            {
                string family = name.EndsWith("_bucket") || name.EndsWith("_count") || name.EndsWith("_sum") ? name[..name.LastIndexOf('_')] : name;
                Assert.True(families.ContainsKey(family) || families.ContainsKey(name), $"the dashboard reads {name}, which /metrics does not export");
            }
        }
    }

    [Fact]
    public async Task ApiKeyIsRequiredEverywhereButHealth()
    {
        await using var s = await TestServer.StartAsync(o => o with { ApiKey = "sekrit", WarmupRequests = 0 });
        using var anonymous = new HttpClient { BaseAddress = s.Server.Address };
        Assert.Equal(HttpStatusCode.OK, (await anonymous.GetAsync("health", Ct)).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await anonymous.GetAsync("dashboard", Ct)).StatusCode); // the page holds no data; it asks for the key
        foreach (var path in new[] { "v1/models", "metrics" })
        {
            var r = await anonymous.GetAsync(path, Ct);
            Assert.Equal(HttpStatusCode.Unauthorized, r.StatusCode);
            Assert.Contains("invalid_api_key", await r.Content.ReadAsStringAsync(Ct));
        }
        anonymous.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", "wrong");
        Assert.Equal(HttpStatusCode.Unauthorized, (await anonymous.PostAsync("v1/completions", new StringContent("{}"), Ct)).StatusCode);
        // The official client sends its key as a bearer token.
        var chat = await s.OpenAi.GetChatClient(TestServer.ModelId).CompleteChatAsync([new UserChatMessage("hi")], new ChatCompletionOptions { MaxOutputTokenCount = 2 }, Ct);
        Assert.NotNull(chat.Value.Usage);
    }

    [Fact]
    public async Task HealthIs503UntilTheModelIsLoaded()
    {
        using var release = new ManualResetEventSlim(false);
        await using var s = await TestServer.StartAsync(o => o with
        {
            LoadModel = () =>
            {
                release.Wait(TestServer.Bound);
                var (w, t) = TinyChatModel.Load();
                return new LoadedModel(w, t, TestServer.ModelId);
            },
        }, waitReady: false);
        var health = await s.Http.GetAsync("health", Ct);
        Assert.Equal(HttpStatusCode.ServiceUnavailable, health.StatusCode);
        Assert.Contains("loading", await health.Content.ReadAsStringAsync(Ct));
        var (status, body, response) = await s.PostAsync("v1/completions", new { prompt = "too early" });
        Assert.Equal(HttpStatusCode.ServiceUnavailable, status);
        Assert.Equal("model_loading", body.GetProperty("error").GetProperty("code").GetString());
        Assert.NotNull(response.Headers.RetryAfter);
        release.Set();
        await s.Server.Ready.WaitAsync(TestServer.Bound, Ct);
        Assert.Equal(HttpStatusCode.OK, (await s.Http.GetAsync("health", Ct)).StatusCode);
        Assert.Equal(ModelState.Ready, s.Server.State);
    }

    /// <summary>
    /// Stopping while the model loads does not wait for the load: SIGTERM to a starting replica waited for the whole load
    /// and warm-up, past the shutdown timeout. The load thread frees what it loaded when the loader returns.
    /// </summary>
    [Fact]
    public async Task StoppingWhileLoadingDoesNotWaitForTheLoad()
    {
        var release = new ManualResetEventSlim(false);
        var loaderReturned = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var s = await TestServer.StartAsync(o => o with
        {
            LoadModel = () =>
            {
                try
                {
                    release.Wait(TestServer.Bound);
                    var (w, t) = TinyChatModel.Load();
                    return new LoadedModel(w, t, TestServer.ModelId);
                }
                finally
                {
                    loaderReturned.TrySetResult();
                }
            },
        }, waitReady: false);
        try
        {
            var sw = Stopwatch.StartNew();
            await s.Server.StopAsync(Ct).WaitAsync(TimeSpan.FromSeconds(10), Ct);
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10));
            Assert.False(loaderReturned.Task.IsCompleted);
        }
        finally
        {
            release.Set();
        }
        await loaderReturned.Task.WaitAsync(TestServer.Bound, Ct);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => s.Server.Ready.WaitAsync(TestServer.Bound, Ct));
        Assert.Equal(ModelState.Failed, s.Server.State);
        await s.DisposeAsync();
        release.Dispose();
    }

    [Fact]
    public async Task AFailedLoadIsReportedByHealth()
    {
        await using var s = await TestServer.StartAsync(o => o with { LoadModel = () => throw new FileNotFoundException("no such model: nowhere.gguf") }, waitReady: false);
        await Assert.ThrowsAsync<FileNotFoundException>(() => s.Server.Ready.WaitAsync(TestServer.Bound, Ct));
        var health = await s.Http.GetAsync("health", Ct);
        Assert.Equal(HttpStatusCode.InternalServerError, health.StatusCode);
        Assert.Contains("nowhere.gguf", await health.Content.ReadAsStringAsync(Ct));
        var (status, body, response) = await s.PostAsync("v1/completions", new { prompt = "hi", max_tokens = 1 });
        Assert.Equal(HttpStatusCode.InternalServerError, status);
        Assert.Equal("model_load_failed", body.GetProperty("error").GetProperty("code").GetString());
        Assert.Equal("false", Assert.Single(response.Headers.GetValues(BitNetServer.ShouldRetryHeader)));
    }

    [Fact]
    public void LoopbackByDefaultAndHostsAreChecked()
    {
        Assert.Equal("127.0.0.1", new ServerOptions { LoadModel = () => throw new NotImplementedException() }.Host);
        Assert.True(IPAddress.IsLoopback(BitNetServer.ParseHost("localhost")));
        Assert.Throws<ArgumentException>(() => BitNetServer.ParseHost("example.com"));
        var sw = Stopwatch.StartNew();
        Assert.Throws<ArgumentException>(() => new ServerOptions { LoadModel = () => throw new NotImplementedException(), MaxChoices = 99 }.Validate());
        Assert.True(sw.Elapsed < TestServer.Bound);
        // A key no request can send (clients' keys are read trimmed): every request was a 401.
        foreach (var key in new[] { "key\n", " key", "" })
            Assert.Contains("API key", Assert.Throws<ArgumentException>(() => new ServerOptions { LoadModel = () => throw new NotImplementedException(), ApiKey = key }.Validate()).Message);
    }
}

/// <summary>Token texts in the legacy completions log-probabilities.</summary>
public class LegacyTokenTextTests
{
    /// <summary>Pieces of a multi-byte character are spelled as their bytes, each differently (before: all U+FFFD, one JSON key for all).</summary>
    [Fact]
    public void PartialUtf8TokensAreSpelledAsBytes()
    {
        var (weights, tokenizer) = TinyChatModel.Load();
        using var _ = weights;
        var ids = tokenizer.Encode("日本", addBos: false);
        var texts = ids.Distinct().Select(id => BitNetSharp.Server.Api.OpenAiJson.LegacyTokenText(tokenizer, id)).ToArray(); // "日本" holds the byte e6 twice
        Assert.All(texts, t => Assert.DoesNotContain('\uFFFD', t));
        Assert.Contains(@"bytes:\xe6", texts);
        Assert.Equal(texts.Length, texts.Distinct().Count());
        Assert.Equal(" the", BitNetSharp.Server.Api.OpenAiJson.LegacyTokenText(tokenizer, tokenizer.Encode(" the", addBos: false).Single()));
    }
}
