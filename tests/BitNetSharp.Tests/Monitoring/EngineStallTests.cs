using System.Net;
using System.Text.Json;
using BitNetSharp.Monitoring.Alerts;
using BitNetSharp.Tests.Server;

namespace BitNetSharp.Tests.Monitoring;

/// <summary>
/// A hung engine (a forward pass that never ends): requests stay running or waiting and steps stop. /health answered
/// 200 "ok", nothing in /metrics moved, and request timeouts are reaped by the engine thread itself, so nothing showed
/// it. Now bitnet_engine_stall_seconds grows, /health answers 503 "stalled" past MonitoringOptions.EngineStallAfter
/// (readiness fails: a balancer sends new work elsewhere), /health?verbose says where the engine stands, and the
/// BitNetEngineStalled rule fires; all of it clears when the engine moves again.
/// </summary>
public sealed class EngineStallTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task AHeldEngineIsReportedStalledAndRecovers()
    {
        // The default rules with the stall threshold at 0.5 s (the default 30 s is a long time in a test).
        var rules = AlertRules.Default.Select(r => r.Name == "BitNetEngineStalled" ? r with { Threshold = 0.5 } : r).ToList();
        await using var s = await TestServer.StartAsync(o => o with
        {
            Monitoring = o.Monitoring with { EngineStallAfter = TimeSpan.FromSeconds(0.5), AlertRules = rules, AlertInterval = TimeSpan.FromMilliseconds(100) },
        });
        // Idle long after its last step (warm-up): no stall.
        await Task.Delay(700, Ct);
        Assert.Equal(0, TestServer.Sample(await s.MetricsAsync(), "bitnet_engine_stall_seconds"));
        using (var idle = await s.Http.GetAsync("health", Ct)) Assert.Equal(HttpStatusCode.OK, idle.StatusCode);

        s.Scheduler.StepGate.Reset(); // the engine holds before its next step, as a hung forward pass would
        Task<List<string>>? stream = null;
        try
        {
            stream = s.StreamAsync("v1/completions", new { model = TestServer.ModelId, prompt = "Once upon a time", max_tokens = 3, stream = true, ignore_eos = true, temperature = 0 });
            await TestServer.EventuallyAsync(async () =>
            {
                using var r = await s.Http.GetAsync("health", Ct);
                return r.StatusCode == HttpStatusCode.ServiceUnavailable && (await r.Content.ReadAsStringAsync(Ct)).Contains("\"stalled\"");
            }, "/health to answer 503 stalled");
            Assert.True(TestServer.Sample(await s.MetricsAsync(), "bitnet_engine_stall_seconds") > 0.5);
            using (var verbose = await s.Http.GetAsync("health?verbose", Ct))
            {
                var engine = JsonDocument.Parse(await verbose.Content.ReadAsStringAsync(Ct)).RootElement.GetProperty("components").GetProperty("engine");
                Assert.Equal("stalled", engine.GetProperty("status").GetString());
                Assert.True(engine.GetProperty("stall_seconds").GetDouble() > 0.5);
                Assert.Equal(1, engine.GetProperty("requests_running").GetInt32() + engine.GetProperty("requests_waiting").GetInt32());
            }
            await TestServer.EventuallyAsync(() => Task.FromResult(s.Server.Monitor!.Alerts!.Firing.Any(a => a.Rule.Name == "BitNetEngineStalled")),
                "BitNetEngineStalled to fire");
        }
        finally
        {
            s.Scheduler.StepGate.Set();
        }
        var events = await stream!;
        Assert.Equal("[DONE]", events[^1]);
        await TestServer.EventuallyAsync(async () =>
        {
            using var r = await s.Http.GetAsync("health", Ct);
            return r.StatusCode == HttpStatusCode.OK;
        }, "/health to answer 200 again");
        Assert.Equal(0, TestServer.Sample(await s.MetricsAsync(), "bitnet_engine_stall_seconds"));
        await TestServer.EventuallyAsync(() => Task.FromResult(!s.Server.Monitor!.Alerts!.Firing.Any(a => a.Rule.Name == "BitNetEngineStalled")),
            "BitNetEngineStalled to resolve");
    }
}
