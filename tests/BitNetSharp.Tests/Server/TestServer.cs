using System.ClientModel;
using System.Net;
using System.Net.ServerSentEvents;
using System.Text;
using System.Text.Json;
using BitNetSharp.Generation.Scheduler;
using BitNetSharp.Server;
using OpenAI;

namespace BitNetSharp.Tests.Server;

/// <summary>
/// A <see cref="BitNetServer"/> on a free loopback port serving <see cref="TinyChatModel"/>, with a raw HTTP client
/// and the official OpenAI client pointed at it.
/// </summary>
internal sealed class TestServer : IAsyncDisposable
{
    public const string ModelId = "tiny-chat";
    public static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    private TestServer(BitNetServer server, string? apiKey)
    {
        Server = server;
        Http = new HttpClient { BaseAddress = server.Address, Timeout = Bound };
        if (apiKey is not null) Http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", apiKey);
        OpenAi = new OpenAIClient(new ApiKeyCredential(apiKey ?? "unused"),
            new OpenAIClientOptions { Endpoint = new Uri(server.Address, "v1"), NetworkTimeout = Bound, RetryPolicy = new System.ClientModel.Primitives.ClientRetryPolicy(0) });
    }

    public BitNetServer Server { get; }
    public HttpClient Http { get; }
    public OpenAIClient OpenAi { get; }
    public ContinuousBatchScheduler Scheduler => Server.Scheduler!;

    public static async Task<TestServer> StartAsync(Func<ServerOptions, ServerOptions>? configure = null, int contextLength = 256, int layers = 2, bool waitReady = true, Func<LoadedModel>? load = null)
    {
        var options = new ServerOptions
        {
            Host = "127.0.0.1",
            Port = 0,
            LoadModel = load ?? (() =>
            {
                var (weights, tokenizer) = TinyChatModel.Load(contextLength: contextLength, layers: layers);
                return new LoadedModel(weights, tokenizer, ModelId);
            }),
            Scheduler = new SchedulerOptions { MaxSequences = 8, MaxBatchedTokens = 64, MaxQueue = 32, Threads = 2 },
            MaxTokensLimit = 1000,
            MaxChoices = 4,
            MaxRequestBodyBytes = 64 * 1024,
            WarmupRequests = 2,
            ConsoleLogLevel = null,
        };
        if (configure is not null) options = configure(options);
        var server = await BitNetServer.StartAsync(options, TestContext.Current.CancellationToken);
        if (waitReady) await server.Ready.WaitAsync(Bound, TestContext.Current.CancellationToken);
        return new TestServer(server, options.ApiKey);
    }

    public Task<(HttpStatusCode Status, JsonElement Body, HttpResponseMessage Response)> PostAsync(string path, string json) =>
        PostAsync(path, new StringContent(json, Encoding.UTF8, "application/json"));

    /// <summary>POSTs raw bytes as application/json: bodies a client cannot build from a .NET string (invalid UTF-8).</summary>
    public Task<(HttpStatusCode Status, JsonElement Body, HttpResponseMessage Response)> PostAsync(string path, byte[] body)
    {
        var content = new ByteArrayContent(body);
        content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
        return PostAsync(path, content);
    }

    private async Task<(HttpStatusCode Status, JsonElement Body, HttpResponseMessage Response)> PostAsync(string path, HttpContent body)
    {
        var response = await Http.PostAsync(path, body, TestContext.Current.CancellationToken);
        var text = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        return (response.StatusCode, text.Length == 0 ? default : JsonDocument.Parse(text).RootElement.Clone(), response);
    }

    public Task<(HttpStatusCode Status, JsonElement Body, HttpResponseMessage Response)> PostAsync(string path, object body) =>
        PostAsync(path, JsonSerializer.Serialize(body));

    /// <summary>POSTs a streaming request and returns the data of every SSE event, [DONE] included.</summary>
    public async Task<List<string>> StreamAsync(string path, object body)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json") };
        using var response = await Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, TestContext.Current.CancellationToken);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        await using var stream = await response.Content.ReadAsStreamAsync(TestContext.Current.CancellationToken);
        var events = new List<string>();
        await foreach (var item in SseParser.Create(stream).EnumerateAsync(TestContext.Current.CancellationToken)) events.Add(item.Data);
        return events;
    }

    public async Task<string> MetricsAsync() => await Http.GetStringAsync("metrics", TestContext.Current.CancellationToken);

    /// <summary>The value of one sample line (exact name with labels) in /metrics text.</summary>
    public static double Sample(string metrics, string series)
    {
        foreach (var line in metrics.Split('\n'))
            if (line.StartsWith(series + " ", StringComparison.Ordinal))
                return double.Parse(line[(series.Length + 1)..], System.Globalization.CultureInfo.InvariantCulture);
        throw new Xunit.Sdk.XunitException($"No sample '{series}' in:\n{metrics}");
    }

    /// <summary>Polls until <paramref name="condition"/> holds, failing after <see cref="Bound"/>.</summary>
    public static async Task EventuallyAsync(Func<Task<bool>> condition, string what)
    {
        var deadline = DateTime.UtcNow + Bound;
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline) throw new Xunit.Sdk.XunitException($"Timed out waiting for: {what}");
            await Task.Delay(20, TestContext.Current.CancellationToken);
        }
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await Server.DisposeAsync();
    }
}
