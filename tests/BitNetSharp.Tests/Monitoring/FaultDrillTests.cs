using System.Net;
using System.Text.Json;
using BitNetSharp.Generation.Scheduler;
using BitNetSharp.Model;
using BitNetSharp.Monitoring;
using BitNetSharp.Monitoring.Alerts;
using BitNetSharp.Server;
using BitNetSharp.Server.Metrics;
using BitNetSharp.Tests.Server;

namespace BitNetSharp.Tests.Monitoring;

/// <summary>
/// Fault drills against a running server: each injects one fault into the served model and checks that the right
/// signal sees it, the right alert fires, and the server keeps answering.
/// </summary>
public class FaultDrillTests
{
    private static async Task<(TestServer Server, ModelWeights Weights)> StartAsync(Func<MonitoringOptions, MonitoringOptions>? monitoring = null, bool untied = false,
        KvCacheType kvType = KvCacheType.F16)
    {
        ModelWeights? weights = null;
        var server = await TestServer.StartAsync(o => o with
        {
            Scheduler = o.Scheduler with { HealthSampleEvery = 1, WeightProbeEvery = 1, KvType = kvType },
            // Counter rules look back 1 s instead of 5 min, so a drill can also see them resolve.
            Monitoring = (monitoring ?? (m => m))(new MonitoringOptions
            {
                AlertInterval = TimeSpan.FromMilliseconds(40),
                AlertRules = AlertRules.Default.Select(r => r.Aggregate == "increase" ? r with { WindowSeconds = 1 } : r).ToList(),
            }),
        }, load: () =>
        {
            var writer = TinyChatModel.Build();
            if (untied) HealthCollectorBatchTests.AddOutputHead(writer, TinyChatModel.Shape.Dim, TinyChatModel.VocabSize);
            var file = BitNetSharp.Formats.Gguf.GgufFile.Parse(writer.ToArray(), "tiny-chat.gguf");
            var tokenizer = BitNetSharp.Tokenization.TokenizerLoader.FromGguf(file);
            var w = ModelWeights.FromGguf(file, ownsFile: true);
            weights = w;
            return new LoadedModel(w, tokenizer, TestServer.ModelId);
        });
        return (server, weights!);
    }

    private static object Completion(string prompt, int maxTokens = 4) => new { model = TestServer.ModelId, prompt, max_tokens = maxTokens, temperature = 0 };

    private static async Task<JsonElement> VerboseHealthAsync(TestServer s)
    {
        var text = await s.Http.GetStringAsync("health?verbose", TestContext.Current.CancellationToken);
        return JsonDocument.Parse(text).RootElement.Clone();
    }

    private static async Task<bool> FiringAsync(TestServer s, string rule) =>
        (await VerboseHealthAsync(s)).GetProperty("components").GetProperty("alerts").GetProperty("firing").EnumerateArray()
            .Any(a => a.GetProperty("name").GetString() == rule);

    /// <summary>A token whose embedding row is NaN: only the request that uses it fails, with an error naming the embedding; the other request in the same batch finishes.</summary>
    [Fact]
    public async Task NaNInOneSequenceEndsOnlyThatSequence()
    {
        var (s, w) = await StartAsync(untied: true); // with a tied head the poisoned row would be every sequence's head row
        await using var owned = s;
        // 'Z' is byte token 90 in the tiny model's byte-level vocabulary: make its F16 embedding row NaN.
        unsafe
        {
            var row = (ushort*)(w.TokenEmbedding.Data + 90 * w.TokenEmbedding.RowBytes);
            row[3] = 0x7E00;
        }
        s.Scheduler.StepGate.Reset(); // hold the engine so both requests share one batch
        var bad = s.PostAsync("v1/completions", Completion("ZZ"));
        var good = s.PostAsync("v1/completions", Completion("hello", 8));
        await TestServer.EventuallyAsync(() => Task.FromResult(s.Scheduler.Statistics.WaitingRequests + s.Scheduler.Statistics.RunningRequests == 2), "both requests queued");
        s.Scheduler.StepGate.Set();
        var (badStatus, badBody, badResponse) = await bad;
        var (goodStatus, goodBody, _) = await good;
        Assert.Equal(HttpStatusCode.InternalServerError, badStatus);
        Assert.Equal("non_finite_logits", badBody.GetProperty("error").GetProperty("code").GetString());
        // The same weights give the same NaN: the official clients are told not to retry (they retry every 5xx twice).
        Assert.Equal("false", Assert.Single(badResponse.Headers.GetValues(BitNetSharp.Server.BitNetServer.ShouldRetryHeader)));
        Assert.Contains("token embedding", badBody.GetProperty("error").GetProperty("message").GetString());
        Assert.True(goodStatus == HttpStatusCode.OK, goodBody.ToString());
        Assert.Equal("length", goodBody.GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        Assert.Equal(1, s.Scheduler.Statistics.NonFiniteSequences);
        Assert.Equal(1, TestServer.Sample(await s.MetricsAsync(), "bitnet_health_nonfinite_sequences_total"));
        await TestServer.EventuallyAsync(() => FiringAsync(s, "BitNetNonFiniteLogits"), "the non-finite alert fires");
    }

    /// <summary>A NaN in layer 1's q scale: requests end with a 500 naming layer 1, streams with an error event; /health and /metrics keep answering; restoring the scale heals it.</summary>
    [Fact]
    public async Task NaNInALayerScaleIsNamedAndTheServerKeepsAnswering()
    {
        var (s, w) = await StartAsync();
        await using var owned = s;
        var scales = w.Layers[1].Q.RowScales;
        float saved = scales[2];
        scales[2] = float.NaN;
        var (status, body, _) = await s.PostAsync("v1/completions", Completion("hello"));
        Assert.Equal(HttpStatusCode.InternalServerError, status);
        Assert.Contains("layer 1", body.GetProperty("error").GetProperty("message").GetString());

        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions")
        {
            Content = new StringContent(JsonSerializer.Serialize(new { model = TestServer.ModelId, prompt = "hi", max_tokens = 3, stream = true }), System.Text.Encoding.UTF8, "application/json"),
        };
        using var response = await s.Http.SendAsync(request, TestContext.Current.CancellationToken);
        string stream = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        Assert.Contains("non_finite_logits", stream);

        var health = await s.Http.GetAsync("health", TestContext.Current.CancellationToken);
        Assert.Equal(HttpStatusCode.OK, health.StatusCode);
        await TestServer.EventuallyAsync(() => FiringAsync(s, "BitNetNonFiniteLogits"), "the non-finite alert fires");
        var verbose = await VerboseHealthAsync(s);
        Assert.Equal("degraded", verbose.GetProperty("status").GetString());
        // The component the alert is about says so too (it read "ok", the sampling switch being all it reported).
        var components = verbose.GetProperty("components");
        Assert.Equal("degraded", components.GetProperty("health").GetProperty("status").GetString());
        Assert.Equal("on", components.GetProperty("health").GetProperty("sampling").GetString());
        Assert.True(components.GetProperty("alerts").GetProperty("critical").GetInt32() >= 1);
        var metrics = await s.MetricsAsync();
        Assert.True(TestServer.Sample(metrics, "bitnet_alerts_total{rule=\"BitNetNonFiniteLogits\"}") >= 1);
        Assert.Equal(1, TestServer.Sample(metrics, "bitnet_health_residual_blowup{layer=\"1\"}"));
        // The sampled step's logit figures are NaN, as its logits were: they kept the warm-up's healthy values, which no
        // threshold rule on them could see through.
        Assert.True(double.IsNaN(TestServer.Sample(metrics, "bitnet_health_logits_range")), "logits_range " + TestServer.Sample(metrics, "bitnet_health_logits_range"));
        Assert.True(double.IsNaN(TestServer.Sample(metrics, "bitnet_health_logits_entropy")));

        scales[2] = saved;
        (status, _, _) = await s.PostAsync("v1/completions", Completion("hello"));
        Assert.Equal(HttpStatusCode.OK, status);
        await TestServer.EventuallyAsync(async () => !await FiringAsync(s, "BitNetNonFiniteLogits"), "the alert resolves once no new sequence fails");
        await TestServer.EventuallyAsync(async () =>
        {
            var c = (await VerboseHealthAsync(s)).GetProperty("components");
            return c.GetProperty("health").GetProperty("status").GetString() == "ok" && c.GetProperty("alerts").GetProperty("critical").GetInt32() == 0;
        }, "the model's component back to ok once no critical alert fires");
    }

    /// <summary>A flipped bit in a packed weight in memory: the background verifier names the tensor, the alert fires, /health says so, and requests are still served.</summary>
    [Fact]
    public async Task AFlippedWeightBitIsFoundByTheVerifier()
    {
        var (s, w) = await StartAsync(m => m with { VerifyWeightsInterval = TimeSpan.FromMilliseconds(50) });
        await using var owned = s;
        var gate = w.Layers[0].Gate;
        unsafe { gate.Data[gate.ByteLength / 2] ^= 0x10; }
        try
        {
            await TestServer.EventuallyAsync(() => FiringAsync(s, "BitNetWeightChecksumMismatch"), "the checksum alert fires");
            var weights = (await VerboseHealthAsync(s)).GetProperty("components").GetProperty("weights");
            Assert.Equal("mismatch", weights.GetProperty("status").GetString());
            Assert.Equal("blk.0.ffn_gate.weight", weights.GetProperty("last_mismatch").GetString());
            var metrics = await s.MetricsAsync();
            Assert.True(TestServer.Sample(metrics, "bitnet_weights_checksum_mismatches_total") >= 1);
            Assert.Equal(0, TestServer.Sample(metrics, "bitnet_weights_verified"));
            var (status, _, _) = await s.PostAsync("v1/completions", Completion("hello"));
            Assert.Equal(HttpStatusCode.OK, status);
        }
        finally
        {
            unsafe { gate.Data[gate.ByteLength / 2] ^= 0x10; }
        }
    }

    /// <summary>Zeroed attention-norm gains in layer 0: every q/k/v input code of that layer is 0, the underflow signal shows 1, and the underflow alert fires.</summary>
    [Fact]
    public async Task ZeroedNormGainsShowAsUnderflow()
    {
        var (s, w) = await StartAsync();
        await using var owned = s;
        Array.Clear(w.Layers[0].AttnNorm);
        var (status, _, _) = await s.PostAsync("v1/completions", Completion("hello", 6));
        Assert.Equal(HttpStatusCode.OK, status);
        var metrics = await s.MetricsAsync();
        Assert.Equal(1, TestServer.Sample(metrics, "bitnet_health_activation_underflow_ratio{bits=\"8\",input=\"qkv\",layer=\"0\"}"));
        Assert.True(TestServer.Sample(metrics, "bitnet_health_activation_underflow_ratio{bits=\"8\",input=\"qkv\",layer=\"1\"}") < 0.6);
        // The rule counts "for: 5" in evaluations that see a new sample: traffic goes on until it fires.
        await TestServer.EventuallyAsync(async () =>
        {
            await s.PostAsync("v1/completions", Completion("hello", 6));
            return await FiringAsync(s, "BitNetActivationUnderflow");
        }, "the underflow alert fires");
        // /health?verbose names the series behind the value: layer 0 (its q/k/v input, or its o input, all 0 after v).
        var alert = (await VerboseHealthAsync(s)).GetProperty("components").GetProperty("alerts").GetProperty("firing").EnumerateArray()
            .Single(a => a.GetProperty("name").GetString() == "BitNetActivationUnderflow");
        var labels = alert.GetProperty("labels");
        Assert.Equal("0", labels.GetProperty("layer").GetString());
        Assert.Contains(labels.GetProperty("input").GetString(), new[] { "qkv", "o" });
        Assert.False(labels.TryGetProperty("bits", out _)); // fixed by the rule's match
    }

    /// <summary>Injected latency jitter (steps alternately delayed): the token-latency std-dev rises and the jitter rule fires.</summary>
    /// <summary>Warm-up generates tokens, but its JIT-slowed gaps are not left in the jitter window an idle server's alert reads.</summary>
    [Fact]
    public async Task WarmUpLeavesTheJitterWindowEmpty()
    {
        var (s, _) = await StartAsync();
        await using var owned = s;
        // Warm-up ran forwards (the health collector counts every one), and counts in no serving statistic.
        Assert.True(s.Scheduler.Health.Steps > 2, "the warm-up requests ran");
        Assert.Equal(0, s.Scheduler.Statistics.GenerationTokens);
        Assert.Equal(0, s.Scheduler.TokenLatency.Count);
    }

    [Fact]
    public async Task LatencyJitterRaisesTheStdDevAlert()
    {
        var rule = new AlertRule { Name = "Jitter", Metric = "bitnet_health_token_latency_stddev_seconds", Op = ">", Threshold = 0.02, For = 2, Component = "serving" };
        var (s, _) = await StartAsync(m => m with { AlertRules = [rule] });
        await using var owned = s;
        int step = 0;
        var alerts = s.Server.Monitor!.Alerts!;
        // The engine evaluates the rules itself before each step, so every evaluation sees new tokens: the 40 ms timer
        // alone could miss the short stretch between the 32nd latency and the answer's end on a loaded machine.
        s.Scheduler.BeforeForward = () =>
        {
            if (step++ % 2 == 0) Thread.Sleep(100);
            alerts.Evaluate();
        };
        // The spread needs 32 latencies, and the rule counts only while tokens are delivered: a longer answer.
        var (status, _, _) = await s.PostAsync("v1/completions", new { model = TestServer.ModelId, prompt = "hello", max_tokens = 56, temperature = 0, ignore_eos = true });
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.True(TestServer.Sample(await s.MetricsAsync(), "bitnet_health_token_latency_stddev_seconds") > 0.02);
        await TestServer.EventuallyAsync(() => FiringAsync(s, "Jitter"), "the jitter alert fires");
        Assert.Equal(1, s.Server.Monitor!.Alerts!.TimesFired("Jitter"));
    }

    /// <summary>
    /// A sequence stuck in a loop (one token forced by logit_bias): the repetition share reads 1 while it runs, a rule on
    /// it fires, and a sequence that never repeats itself (a large frequency penalty) reads 0.
    /// </summary>
    [Fact]
    public async Task ALoopingSequenceRaisesTheRepetitionShareAndItsAlert()
    {
        var rule = new AlertRule { Name = "Looping", Metric = "bitnet_health_repetition_ratio", Op = ">", Threshold = 0.9, For = 2, Component = "model" };
        var (s, _) = await StartAsync(m => m with { AlertRules = [rule] });
        await using var owned = s;
        double highest = double.NaN;
        var alerts = s.Server.Monitor!.Alerts!;
        s.Scheduler.BeforeForward = () =>
        {
            if (s.Scheduler.RepetitionShare is var r && !(r <= highest)) highest = r;
            alerts.Evaluate(); // each step, not only on the 40 ms timer, which a loaded machine can starve through the whole loop
        };
        var (status, _, _) = await s.PostAsync("v1/completions", new { model = TestServer.ModelId, prompt = "hello", max_tokens = 150, temperature = 0, ignore_eos = true, logit_bias = new Dictionary<string, int> { ["7"] = 100 } });
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(1.0, highest);
        await TestServer.EventuallyAsync(async () => s.Server.Monitor!.Alerts!.TimesFired("Looping") > 0 || await FiringAsync(s, "Looping"), "the repetition alert fires");
        // The loop ended: the gauge reads 0 on the idle server and the rule resolves (it stayed firing on the last value).
        await TestServer.EventuallyAsync(async () => !await FiringAsync(s, "Looping"), "the repetition alert resolves once the loop ended");
        Assert.Contains("bitnet_health_repetition_ratio 0\n", await s.Http.GetStringAsync("metrics", TestContext.Current.CancellationToken));

        highest = double.NaN;
        (status, _, _) = await s.PostAsync("v1/completions", new { model = TestServer.ModelId, prompt = "hello", max_tokens = 60, temperature = 0, ignore_eos = true, frequency_penalty = 2, presence_penalty = 2 });
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.True(highest < 0.2, $"repetition {highest} with penalties that forbid repeats");
    }

    /// <summary>
    /// The KV cache's rounding is a gauge per layer and tensor: an int8 cache's keys and values read about 0.5 % (127
    /// levels over a row's absmax), and a rule over the key rows fires on it.
    /// </summary>
    [Fact]
    public async Task KvRoundingIsAGaugeARuleCanRead()
    {
        var rule = new AlertRule { Name = "KvRounding", Metric = "bitnet_health_kv_error_ratio", Match = new() { ["tensor"] = "k" }, Op = ">", Threshold = 0.001, Component = "model" };
        var (s, _) = await StartAsync(m => m with { AlertRules = [rule] }, kvType: KvCacheType.Int8);
        await using var owned = s;
        var (status, _, _) = await s.PostAsync("v1/completions", Completion("hello", 8));
        Assert.Equal(HttpStatusCode.OK, status);
        var metrics = await s.MetricsAsync();
        foreach (var series in new[] { "bitnet_health_kv_error_ratio{layer=\"0\",tensor=\"k\"}", "bitnet_health_kv_error_ratio{layer=\"1\",tensor=\"v\"}" })
            Assert.InRange(TestServer.Sample(metrics, series), 0.001, 0.05);
        await TestServer.EventuallyAsync(async () => s.Server.Monitor!.Alerts!.TimesFired("KvRounding") > 0 || await FiringAsync(s, "KvRounding"), "the KV rounding rule fires");
    }

    /// <summary>Every health instrument's declared Prometheus name is what the exporter makes of its name and unit, and /metrics has them.</summary>
    [Fact]
    public async Task DeclaredPrometheusNamesMatchTheExporter()
    {
        var (s, _) = await StartAsync();
        await using var server = s;
        var (status, _, _) = await s.PostAsync("v1/completions", Completion("hello"));
        Assert.Equal(HttpStatusCode.OK, status);
        var families = PrometheusText.Parse(await s.MetricsAsync());
        foreach (var signal in s.Server.Monitor!.Meters.Signals)
        {
            Assert.Equal(signal.PrometheusName, PrometheusTextExporter.PrometheusName(signal.Instrument, signal.Unit, signal.Counter));
            Assert.True(families.ContainsKey(signal.PrometheusName), $"{signal.PrometheusName} is not in /metrics");
        }
        Assert.True(families.ContainsKey("bitnet_requests_max_queue"));
        // Every name an alert rule may read is a /metrics family under the same name (the health ones checked above).
        foreach (var name in ModelMonitor.AlertMetrics)
            Assert.True(families.ContainsKey(name), $"alert signal {name} is not in /metrics");
        foreach (var rule in AlertRules.Default)
            foreach (var metric in AlertRules.MetricsOf(rule))
                Assert.Contains(metric, ModelMonitor.AlertMetrics);
    }

    /// <summary>
    /// A rule on a serving counter /metrics exports (requests refused with 429): before, the alert engine had no such
    /// signal, and the rule loaded and never fired.
    /// </summary>
    [Fact]
    public async Task RejectedRequestsFireARuleOnTheRejectedCounter()
    {
        var rule = new AlertRule { Name = "Rejecting", Metric = "bitnet_requests_rejected_total", Aggregate = "increase", WindowSeconds = 60, Op = ">", Threshold = 0, Component = "serving" };
        // One sequence, no queue: with the engine held, the first request takes the sequence and the second is refused
        // (the warm-up requests run first: the queue limit leaves room for free sequences).
        await using var s = await TestServer.StartAsync(o => o with
        {
            Scheduler = o.Scheduler with { MaxSequences = 1, MaxBatchedTokens = 16, MaxQueue = 0 },
            MaxChoices = 1,
            Monitoring = new MonitoringOptions { AlertInterval = TimeSpan.FromMilliseconds(40), AlertRules = [rule] },
        });
        Assert.False(await FiringAsync(s, "Rejecting"));
        s.Scheduler.StepGate.Reset();
        HttpStatusCode status;
        try
        {
            var first = s.PostAsync("v1/completions", Completion("hello"));
            await TestServer.EventuallyAsync(() => Task.FromResult(s.Scheduler.Statistics.WaitingRequests == 1), "the first request to queue");
            (status, _, _) = await s.PostAsync("v1/completions", Completion("again"));
            s.Scheduler.StepGate.Set();
            Assert.Equal(HttpStatusCode.OK, (await first).Status);
        }
        finally
        {
            s.Scheduler.StepGate.Set();
        }
        Assert.Equal(HttpStatusCode.TooManyRequests, status);
        Assert.Equal(1, TestServer.Sample(await s.MetricsAsync(), "bitnet_requests_rejected_total"));
        await TestServer.EventuallyAsync(() => FiringAsync(s, "Rejecting"), "the rejection alert fires");
    }

    /// <summary>A server's rules on a metric its alerts cannot read (a typo, a histogram) are refused before it starts.</summary>
    [Fact]
    public void ServerOptionsRefuseRulesOnUnknownMetrics()
    {
        var histogram = new AlertRule { Name = "Slow", Metric = "bitnet_time_to_first_token_seconds", Threshold = 1 };
        var e = Assert.Throws<ArgumentException>(() => new ServerOptions { LoadModel = () => throw new NotImplementedException(), Monitoring = new MonitoringOptions { AlertRules = [histogram] } }.Validate());
        Assert.Contains("rule 'Slow'", e.Message);
        Assert.Contains("bitnet_requests_rejected_total", e.Message); // the list of names that work
    }
}
