using System.Net;
using BitNetSharp.Formats;
using BitNetSharp.Model;
using BitNetSharp.Monitoring.Telemetry;
using BitNetSharp.Server;
using BitNetSharp.Tests.Formats;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Tests.Server;

/// <summary>
/// A served model file cut short in place (truncated, or `cp` over it, which truncates first): reading a mapped page
/// past the new end is SIGBUS, and the server died with "Fatal error. System.AccessViolationException" at the next
/// forward pass, with no log line or alert (weight-integrity sweep). Now each forward pass, weight probe and full check
/// looks first: generations fail with the reason, /health answers 503 model_file_changed (readiness fails and says why),
/// and the process lives to be restarted.
/// </summary>
public sealed class ModelFileChangedTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task ATruncatedModelFileFailsRequestsAndReadinessInsteadOfTheProcess()
    {
        using var dir = new TestGguf.TempDirectory();
        string path = dir.File("served.gguf");
        TinyChatModel.Build().WriteFile(path);
        long length = new FileInfo(path).Length;
        var events = new EventSink();
        await using var s = await TestServer.StartAsync(o => o with { WarmupRequests = 0, Monitoring = new MonitoringOptions { TelemetryLog = _ => events } }, load: () =>
        {
            var weights = ModelWeights.Load(path, new ModelLoadOptions { WeightPages = WeightPages.File });
            return new LoadedModel(weights, TokenizerLoader.FromGguf(weights.Gguf!), "served");
        });
        var (status, body, _) = await s.PostAsync("v1/completions", """{"prompt": "hi", "max_tokens": 4}""");
        Assert.True(status == HttpStatusCode.OK, body.ToString());
        Assert.Contains("\nbitnet_weights_verified 1", await s.Http.GetStringAsync("metrics", Ct));

        // (No full checks here: one hashing the file while the test truncates it would end the test process; the
        // engine test below calls Verify on a truncated file.)
        using (var f = new FileStream(path, FileMode.Open, FileAccess.Write)) f.SetLength(length / 2);

        (status, body, _) = await s.PostAsync("v1/completions", """{"prompt": "hi", "max_tokens": 4}""");
        Assert.Equal(HttpStatusCode.InternalServerError, status);
        Assert.Contains("the model file was cut to", body.ToString());
        Assert.Contains("rename a new file over it", body.ToString());
        // The server says so itself (a log line, and an event in the telemetry log): it failed every request with no word.
        // One event per request it failed, with the request's id as its step rows carry it (so `bitnet logs --request`
        // finds it), written before the request hears of the failure.
        lock (events.Events) Assert.Contains(events.Events, e => e.Kind == "engine_failed" && e.RequestId is { } id && id.StartsWith("cmpl-", StringComparison.Ordinal)
            && e.Message.Contains("the model file was cut to", StringComparison.Ordinal));
        using var health = await s.Http.GetAsync("health", Ct);
        Assert.Equal(HttpStatusCode.ServiceUnavailable, health.StatusCode);
        string text = await health.Content.ReadAsStringAsync(Ct);
        Assert.Contains("\"model_file_changed\"", text);
        Assert.Contains("shorter than the", text);
        // The weights gauge says so too, so the critical BitNetWeightChecksumMismatch alert fires (it read 1: no probe or
        // check runs once every forward pass fails).
        string metrics = await s.Http.GetStringAsync("metrics", Ct);
        Assert.Contains("\nbitnet_weights_verified 0", metrics);

        // The same length again (a copy finished writing, maybe another model's bytes): still refused until a restart
        // maps the file anew (review: readiness came back over whatever the copy wrote).
        using (var f = new FileStream(path, FileMode.Open, FileAccess.Write)) f.SetLength(length);
        using var again = await s.Http.GetAsync("health", Ct);
        Assert.Equal(HttpStatusCode.ServiceUnavailable, again.StatusCode);
        (status, _, _) = await s.PostAsync("v1/completions", """{"prompt": "hi", "max_tokens": 4}""");
        Assert.Equal(HttpStatusCode.InternalServerError, status);
    }

    /// <summary>The engine refuses to read a file cut short under it (the CLI's path: an IOException naming the file).</summary>
    [Fact]
    public void TheEngineRefusesATruncatedFile()
    {
        using var dir = new TestGguf.TempDirectory();
        string path = dir.File("m.gguf");
        TinyChatModel.Build().WriteFile(path);
        using var w = ModelWeights.Load(path, new ModelLoadOptions { WeightPages = WeightPages.File });
        using var engine = new Transformer(w, 4, new BitNetSharp.Threading.WorkerPool(1));
        using var cache = new KvCache(w.Config.Layers, w.Config.KvHeads, w.Config.HeadDim, 16, KvCacheType.F32);
        var logits = new float[w.Config.VocabSize];
        engine.Forward([new BatchToken(1, 0, 0, true)], [cache], logits);
        var integrity = new BitNetSharp.Monitoring.WeightIntegrity(w);
        using (var f = new FileStream(path, FileMode.Open, FileAccess.Write)) f.SetLength(100);
        var e = Assert.Throws<ModelFileChangedException>(() => engine.Forward([new BatchToken(2, 0, 1, true)], [cache], logits));
        Assert.Equal(path, e.FilePath);
        // A draft cut from the model's first layers reads the same file: checked through it (review: it read unchecked).
        using (var first = w.FirstLayers(1))
        using (var draft = new Transformer(first, 4, new BitNetSharp.Threading.WorkerPool(1)))
        using (var draftCache = new KvCache(1, w.Config.KvHeads, w.Config.HeadDim, 16, KvCacheType.F32))
            Assert.Throws<ModelFileChangedException>(() => draft.Forward([new BatchToken(2, 0, 0, true)], [draftCache], logits));
        Assert.Throws<ModelFileChangedException>(() => integrity.Probe());
        Assert.Throws<ModelFileChangedException>(() => integrity.Verify(TestContext.Current.CancellationToken));
    }

    private sealed class EventSink : ITelemetrySink
    {
        public readonly List<TelemetryEvent> Events = [];
        public void Write(in TelemetryStepRecord record) { }
        public void Write(TelemetryLayerRecord record) { }
        public void Write(in TelemetryEvent record)
        {
            lock (Events) Events.Add(record);
        }
    }
}
