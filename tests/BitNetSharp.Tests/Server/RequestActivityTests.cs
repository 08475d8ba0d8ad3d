using System.Diagnostics;
using System.Net;
using BitNetSharp.Server.Api;

namespace BitNetSharp.Tests.Server;

/// <summary>Each completion request is one Activity of the "BitNetSharp.Server" source, with its token counts.</summary>
public sealed class RequestActivityTests(SharedServer shared) : IClassFixture<SharedServer>
{
    [Fact]
    public async Task CompletionIsOneActivityWithTokenCounts()
    {
        var stopped = new List<Activity>();
        using var listener = new ActivityListener
        {
            ShouldListenTo = s => s.Name == "BitNetSharp.Server",
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = a => { lock (stopped) stopped.Add(a); },
        };
        ActivitySource.AddActivityListener(listener);
        var (status, body, _) = await shared.Host.PostAsync("v1/completions", new { model = TestServer.ModelId, prompt = "the cat", max_tokens = 3, temperature = 0 });
        Assert.Equal(HttpStatusCode.OK, status);
        string id = body.GetProperty("id").GetString()!;
        Activity a;
        lock (stopped) a = Assert.Single(stopped, x => (string?)x.GetTagItem("bitnet.request_id") == id);
        Assert.Equal("completions", a.OperationName);
        Assert.Equal(body.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), (int)a.GetTagItem("gen_ai.usage.output_tokens")!);
        Assert.Equal(body.GetProperty("usage").GetProperty("prompt_tokens").GetInt32(), (int)a.GetTagItem("gen_ai.usage.input_tokens")!);
        Assert.Equal(ActivityStatusCode.Unset, a.Status);
        Assert.NotNull(CompletionEndpoints.Activities);
    }
}
