using System.Net;
using System.Text.Json;
using BitNetSharp.Server;
using BitNetSharp.Server.Api;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Tests.Server;

/// <summary>serve --template, and the turn markers a vocabulary spells as text as stop strings of chat requests.</summary>
public class ServeTemplateTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task ChosenTemplateRendersChatAndItsTextMarkersStopAnswers()
    {
        await using var s = await TestServer.StartAsync(o => o with { ChatTemplate = ChatTemplates.Llama3 });
        var (status, body, _) = await s.PostAsync("v1/chat/completions", new { messages = new[] { new { role = "user", content = "the cat" } }, max_tokens = 2, temperature = 0 });
        Assert.Equal(HttpStatusCode.OK, status);
        var served = s.Server.Served!;
        Assert.Same(ChatTemplates.Llama3, served.Template);
        int expected = ChatTemplates.Llama3.Encode(served.Tokenizer!, [ChatMessage.User("the cat")]).Length;
        Assert.Equal(expected, body.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());

        // The tiny vocabulary has no <|eot_id|>: the template writes it as text, so chat requests stop at it as text.
        var options = new ServerOptions { LoadModel = () => throw new NotSupportedException() };
        using var chat = JsonDocument.Parse("""{"messages":[{"role":"user","content":"hi"}],"stop":"zz"}""");
        var parsed = CompletionRequest.Parse(new JsonRequest(chat.RootElement), chat: true, served, options);
        Assert.Equal(["zz", "<|eot_id|>", "<|start_header_id|>"], parsed.Stop);
        using var ignoring = JsonDocument.Parse("""{"messages":[{"role":"user","content":"hi"}],"ignore_eos":true}""");
        Assert.Null(CompletionRequest.Parse(new JsonRequest(ignoring.RootElement), chat: true, served, options).Stop);
        using var legacy = JsonDocument.Parse("""{"prompt":"hi"}""");
        Assert.Null(CompletionRequest.Parse(new JsonRequest(legacy.RootElement), chat: false, served, options).Stop);
    }

    /// <summary>A template ChatML's tokens serve needs no text stops.</summary>
    [Fact]
    public async Task DefaultTemplateWithControlMarkersAddsNoStops()
    {
        await using var s = await TestServer.StartAsync();
        var options = new ServerOptions { LoadModel = () => throw new NotSupportedException() };
        using var chat = JsonDocument.Parse("""{"messages":[{"role":"user","content":"hi"}]}""");
        Assert.Null(CompletionRequest.Parse(new JsonRequest(chat.RootElement), chat: true, s.Server.Served!, options).Stop);
    }

    [Fact]
    public void UnknownTemplateIsAUsageError()
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = BitNetSharp.Cli.Program.Run(["serve", "-m", RepositoryFiles.Path("models/bitnet-tinystories.gguf"), "--template", "vicuna", "--port", "0"], output, error);
        Assert.Equal(2, code);
        Assert.Contains("--template", error.ToString());
        Assert.Contains("chatml", error.ToString());
    }
}

/// <summary>The monitor's background work ends before the weights it reads are freed.</summary>
public class ModelMonitorShutdownTests
{
    /// <summary>The per-tensor code count is waited for by Dispose (it was never awaited, and read unmapped weights at shutdown).</summary>
    [Fact]
    public async Task CodeStatisticsAreDoneWhenTheServerStops()
    {
        var s = await TestServer.StartAsync(layers: 24);
        var monitor = s.Server.Monitor!;
        await s.DisposeAsync();
        Assert.True(monitor.CodeStats.IsCompleted);
    }
}

/// <summary>The token-latency spread gauge needs a window worth the name.</summary>
public class JitterGaugeTests
{
    /// <summary>Two latencies made a spread (0.33 s for 0.05 and 0.7) that fired the jitter alert on an idle server.</summary>
    [Fact]
    public async Task TheSpreadIsAbsentUntilTheWindowHoldsEnoughLatencies()
    {
        await using var s = await TestServer.StartAsync();
        s.Scheduler.TokenLatency.Clear();
        s.Scheduler.TokenLatency.Add(0.05);
        s.Scheduler.TokenLatency.Add(0.7);
        Assert.DoesNotContain("\nbitnet_health_token_latency_stddev_seconds ", await s.MetricsAsync());
        for (int i = 0; i < BitNetSharp.Monitoring.HealthMeters.MinJitterWindow; i++) s.Scheduler.TokenLatency.Add(0.05);
        Assert.True(TestServer.Sample(await s.MetricsAsync(), "bitnet_health_token_latency_stddev_seconds") > 0.1);
    }

    /// <summary>The far-past-context check reads the rendered prompt: a template that strips messages (bitnet) makes
    /// trailing blank lines free, and they were counted raw and refused (review).</summary>
    [Fact]
    public async Task TheContextCheckReadsTheRenderedPrompt()
    {
        await using var s = await TestServer.StartAsync(o => o with { ChatTemplate = ChatTemplates.BitNet });
        var (status, body, _) = await s.PostAsync("v1/chat/completions", System.Text.Json.JsonSerializer.Serialize(new { messages = new[] { new { role = "user", content = "hi" + string.Concat(Enumerable.Repeat(" \n", 6000)) } }, max_tokens = 1 }));
        Assert.True(System.Net.HttpStatusCode.OK == status, body.ToString());
    }
}
