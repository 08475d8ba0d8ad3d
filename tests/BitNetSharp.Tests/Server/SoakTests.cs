using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using BitNetSharp.LoadBench;

namespace BitNetSharp.Tests.Server;

[CollectionDefinition(nameof(SoakTests), DisableParallelization = true)]
public sealed class SoakCollection;

/// <summary>
/// The soak of bench/soak.sh (the driver's source is compiled into the tests) for 60 s against `bitnet serve` as a
/// process, plus the verdict logic on made-up runs and the process metrics it reads. Runs alone: the soak saturates
/// the CPU, and other tests' load would make its server slower for no reason of its own.
/// </summary>
[Collection(nameof(SoakTests))]
public class SoakTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>
    /// 60 s (BITNET_SOAK_SECONDS overrides it for a quick local run) at saturation: 8 clients against 4 sequences, every
    /// kind of traffic. Judged as in the 30-minute soak — no 5xx, every malformed or oversized request a 4xx, every
    /// valid generation complete, dropped streams cancelled, sequences/queue/KV/in-flight back to 0, RSS within 5 % of
    /// its post-warm-up baseline — except latency stability, which is reported only: 40 s after a 20 s warm-up is too
    /// short, and a shared CI host too noisy, for thirds to say anything about drift.
    /// </summary>
    [Fact]
    public async Task SixtySecondsAtSaturationAgainstABitnetServeProcess()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "reads the server's RSS from /proc/PID/status; Linux only");
        Assert.SkipUnless(File.Exists(ServeProcess.Executable), $"the CLI's apphost is not next to the tests ({ServeProcess.Executable})");
        double seconds = Environment.GetEnvironmentVariable("BITNET_SOAK_SECONDS") is { Length: > 0 } s ? double.Parse(s, CultureInfo.InvariantCulture) : 60;

        using var server = new ServeProcess("-m", RepositoryFiles.Path("models/bitnet-tinystories.gguf"), "--port", "0", "--max-seqs", "4", "-t", "1");
        var process = server.Process;
        {
            var address = await server.ReadyAsync(TimeSpan.FromSeconds(60), Ct);
            var options = new SoakOptions
            {
                Url = address,
                Duration = TimeSpan.FromSeconds(seconds),
                Clients = 8,
                SampleInterval = TimeSpan.FromSeconds(2),
                MaxTokens = 32,
                Pid = process.Id,
                Warmup = TimeSpan.FromSeconds(Math.Min(20, seconds / 3)),
                LatencyTolerance = 0,
            };
            var progress = new StringWriter();
            var report = await Soak.RunAsync(options, progress, Ct);
            string summary = report.Markdown(null);
            string dir = Path.Combine(Path.GetTempPath(), "bitnet-soak-test");
            Directory.CreateDirectory(dir);
            report.WriteFiles(Path.Combine(dir, "soak"));
            TestContext.Current.TestOutputHelper?.WriteLine($"{summary}\n(files in {dir})");

            Assert.True(report.Passed, $"{summary}\n{progress}");
            foreach (var name in new[] { "traffic", "no 5xx", "malformed → 4xx", "valid requests complete", "disconnects cancel", "engine", "/metrics", "idle at the end", "RSS flat" })
                Assert.True(report.Verdicts.Single(v => v.Name == name).Pass, $"{name} was not judged:\n{summary}");
            Assert.Null(report.Verdicts.Single(v => v.Name == "latency stable").Pass);
            // Saturated: the queue was rarely empty, and enough happened to mean something.
            var steady = report.Samples.Where(x => x.Phase == "load" && x.T >= options.EffectiveWarmup.TotalSeconds).ToList();
            Assert.True(steady.Count(x => x.RequestsWaiting > 0 || x.SequencesRunning >= 4) >= 0.8 * steady.Count, $"not saturated:\n{summary}");
            Assert.True(report.Requests.Count(r => r.Kind is SoakKind.Malformed or SoakKind.Oversized) >= 20, summary);
            Assert.Contains(report.Requests, r => r.Case == "body_over_limit" && r.Status == 413);
        }
    }

    private static SoakRequest Ok(double start, double seconds = 0.1, SoakKind kind = SoakKind.Completion) =>
        new(start, start + seconds, 0, kind, "completion", 200, "ok", "", double.NaN);

    private static SoakSample Sample(double t, double rssMiB, string phase = "load", double sequences = 4, double kv = 0.2, double gen0 = double.NaN) =>
        new(t, phase, rssMiB * 1024 * 1024, 8e6, 3e7, 1, sequences, 4, sequences, phase == "idle" ? 0 : 2, sequences, kv, 10, 5, 100, 0.05, 0.1, 0.1, 0.2, 0, gen0);

    private static SoakReport Report(List<SoakRequest> requests, List<SoakSample> samples, bool idle = true, double cancelled = 0, double latencyTolerance = 1.5, double gen0Before = double.NaN)
    {
        var options = new SoakOptions
        {
            Url = new Uri("http://127.0.0.1:1/"),
            Duration = TimeSpan.FromSeconds(100),
            Warmup = TimeSpan.FromSeconds(10),
            Mix = SoakMix.Parse("completion=1"),
            LatencyTolerance = latencyTolerance,
        };
        var before = new Dictionary<string, double> { ["bitnet_requests_cancelled_total"] = 0, ["bitnet_requests_failed_total"] = 0, ["bitnet_requests_timed_out_total"] = 0 };
        if (double.IsFinite(gen0Before)) before[Soak.Gen0Series] = gen0Before;
        var after = new Dictionary<string, double> { ["bitnet_requests_cancelled_total"] = cancelled, ["bitnet_requests_failed_total"] = 0, ["bitnet_requests_timed_out_total"] = 0 };
        return new SoakReport(options, options.Url, "m", 256, 4, requests, samples, idle ? samples[^1] : null, 0.5, 100, before, after, 0, []).Judge();
    }

    private static List<SoakSample> Flat(Func<double, double>? rss = null) =>
        [.. Enumerable.Range(1, 50).Select(i => Sample(i * 2, rss?.Invoke(i * 2) ?? 100 + i % 3)), Sample(101, 100, "idle", 0, 0)];

    private static List<SoakRequest> Steady() => [.. Enumerable.Range(0, 900).Select(i => Ok(10 + i * 0.1))];

    private static bool? Verdict(SoakReport r, string name) => r.Verdicts.Single(v => v.Name == name).Pass;

    /// <summary>The verdicts on made-up runs: a clean one passes, and each kind of trouble fails the verdict meant to catch it (and only that one).</summary>
    [Fact]
    public void EachVerdictFailsOnWhatItIsMeantToCatch()
    {
        var clean = Report(Steady(), Flat());
        Assert.True(clean.Passed, string.Join("\n", clean.Verdicts));

        // RSS: +4 % stays within 5 %; a steady climb of 10 % over the run does not, nor does a level step of +8 %.
        Assert.True(Verdict(Report(Steady(), Flat(t => 100 + 4 * t / 100)), "RSS flat"));
        var leak = Report(Steady(), Flat(t => 100 + 10 * t / 100));
        Assert.False(Verdict(leak, "RSS flat"));
        Assert.Equal(["RSS flat"], leak.Verdicts.Where(v => v.Pass == false).Select(v => v.Name));
        Assert.False(Verdict(Report(Steady(), Flat(t => t < 60 ? 100 : 108)), "RSS flat"));
        // Growth during the warm-up is not judged.
        Assert.True(Verdict(Report(Steady(), Flat(t => t < 10 ? 50 + 5 * t : 101)), "RSS flat"));

        // The heap's allocation budget filling until the server's first collection after the warm-up (here at 40 s, past
        // the 10 s warm-up: a CPU with a large cache gets a large budget, and one collection at 6 s, inside the warm-up,
        // does not end the filling) is not judged; after it, a leak still is. With no collection after the warm-up the
        // verdict cannot tell and fails saying so.
        static List<SoakSample> Budget(Func<double, double> rss, double firstGc) =>
            [.. Enumerable.Range(1, 50).Select(i => Sample(i * 2, rss(i * 2), gen0: i * 2 >= firstGc ? 8 : i * 2 >= 6 ? 7 : 6)), Sample(101, 100, "idle", 0, 0, 9)];
        Func<double, double> fill = t => t < 40 ? 50 + 2.5 * t : 150 + t % 3;
        Assert.False(Verdict(Report(Steady(), Flat(fill)), "RSS flat")); // the old judgement: +60 % from the warm-up on
        var filled = Report(Steady(), Budget(fill, 40), gen0Before: 6);
        Assert.True(Verdict(filled, "RSS flat"), string.Join("\n", filled.Verdicts));
        Assert.Contains("from 40 s, the first garbage collection after the warm-up", filled.Verdicts.Single(v => v.Name == "RSS flat").Measured);
        Assert.False(Verdict(Report(Steady(), Budget(t => t < 40 ? 50 + 2.5 * t : 150 + (t - 40) / 4, 40), gen0Before: 6), "RSS flat"));
        var never = Report(Steady(), Budget(fill, 1000), gen0Before: 6).Verdicts.Single(v => v.Name == "RSS flat");
        Assert.False(never.Pass);
        Assert.Contains("collected no garbage after the warm-up", never.Measured);
        Assert.True(Verdict(Report(Steady(), Budget(t => 100 + t % 3, 12), gen0Before: 6), "RSS flat")); // collected just after the warm-up
        Assert.True(Verdict(Report(Steady(), Budget(t => 100 + t % 3, 12)), "RSS flat")); // no count before the load: counted from the first sample
        // A collection between the last sample inside the warm-up (8 s) and the first after it (10 s) may be the warm-up's,
        // whose budget then fills: counted from the 10 s sample on, not against the 8 s one (which judged from 10 s).
        var ambiguous = Report(Steady(), Budget(t => t < 40 ? 50 + 2.5 * t : 150 + t % 3, 9), gen0Before: 6).Verdicts.Single(v => v.Name == "RSS flat");
        Assert.False(ambiguous.Pass);
        Assert.Contains("collected no garbage after the warm-up", ambiguous.Measured);
        // No RSS at all (no bitnet_process_resident_memory_bytes, no --pid): said, with no NaN sizes.
        static List<SoakSample> NoRss() => [.. Enumerable.Range(1, 50).Select(i => Sample(i * 2, double.NaN, gen0: 6)), Sample(101, double.NaN, "idle", 0, 0, 6)];
        var blind = Report(Steady(), NoRss(), gen0Before: 6).Verdicts.Single(v => v.Name == "RSS flat");
        Assert.False(blind.Pass);
        Assert.Contains("only 0 samples with RSS", blind.Measured);
        Assert.DoesNotContain("NaN", blind.Measured);
        Assert.DoesNotContain("Infinity", blind.Measured);

        // A 5xx fails "no 5xx" and "valid requests complete"; a malformed request answered 200, or with a broken connection, fails "malformed → 4xx".
        var fivexx = Report([.. Steady(), new SoakRequest(50, 50.1, 1, SoakKind.Completion, "completion", 500, "http_error", "HTTP 500", double.NaN)], Flat());
        Assert.False(Verdict(fivexx, "no 5xx"));
        Assert.False(Verdict(fivexx, "valid requests complete"));
        var accepted = Report([.. Steady(), new SoakRequest(50, 50.1, 1, SoakKind.Malformed, "unknown_field", 200, "not_rejected", "200 {}", double.NaN)], Flat());
        Assert.False(Verdict(accepted, "malformed → 4xx"));
        Assert.True(Verdict(accepted, "no 5xx"));
        var reset = Report([.. Steady(), new SoakRequest(50, 50.1, 1, SoakKind.Oversized, "body_over_limit", 0, "io_error", "Broken pipe", double.NaN)], Flat());
        Assert.False(Verdict(reset, "malformed → 4xx"));
        Assert.True(Verdict(Report([.. Steady(), new SoakRequest(50, 50.1, 1, SoakKind.Oversized, "body_over_limit", 413, "rejected", "413", double.NaN)], Flat()), "malformed → 4xx"));

        // A silent truncation; a server that never got back to idle; dropped streams the server did not cancel.
        Assert.False(Verdict(Report([.. Steady(), new SoakRequest(50, 50.1, 1, SoakKind.ChatStream, "chat", 200, "silent_truncation", "no [DONE]", 0.01)], Flat()), "valid requests complete"));
        Assert.False(Verdict(Report(Steady(), Flat(), idle: false), "idle at the end"));
        var drops = Enumerable.Range(0, 10).Select(i => new SoakRequest(20 + i, 20.05 + i, 2, SoakKind.Disconnect, "completion", 200, "disconnected", "", 0.01)).ToList();
        Assert.False(Verdict(Report([.. Steady(), .. drops], Flat(), cancelled: 5), "disconnects cancel"));
        Assert.True(Verdict(Report([.. Steady(), .. drops], Flat(), cancelled: 10), "disconnects cancel"));

        // Latency: the last third twice as slow fails at 1.5×, is only reported at 0.
        var slower = Enumerable.Range(0, 900).Select(i => Ok(10 + i * 0.1, i >= 600 ? 0.2 : 0.1)).ToList();
        Assert.False(Verdict(Report(slower, Flat()), "latency stable"));
        Assert.Null(Verdict(Report(slower, Flat(), latencyTolerance: 0), "latency stable"));
        Assert.True(Report(slower, Flat(), latencyTolerance: 0).Passed);

        // A mix kind that never ran fails "traffic" (a soak that sent no malformed request proves nothing about them).
        var options = new SoakOptions { Url = new Uri("http://127.0.0.1:1/"), Duration = TimeSpan.FromSeconds(100), Warmup = TimeSpan.FromSeconds(10), Mix = SoakMix.Parse("completion=1,malformed=1") };
        var noBad = new SoakReport(options, options.Url, "m", 256, 4, Steady(), Flat(), Flat()[^1], 0.5, 100, [], [], 0, []).Judge();
        Assert.False(Verdict(noBad, "traffic"));

        // The files: a CSV row per sample, one SVG with five charts, the verdict table in the markdown.
        var csv = new StringWriter();
        clean.WriteCsv(csv);
        Assert.Equal(52, csv.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);
        var svg = new StringWriter();
        clean.WriteSvg(svg);
        Assert.Equal(6, Regex.Matches(svg.ToString(), "<svg").Count);
        Assert.Contains("| RSS flat |", clean.Markdown("x.svg"));
        Assert.StartsWith("# Soak: FAIL", leak.Markdown(null));
    }

    [Fact]
    public void BadMixesAndOptionsAreRefusedWithTheirReason()
    {
        Assert.Contains("KIND=WEIGHT", Assert.Throws<ArgumentException>(() => SoakMix.Parse("completions=1")).Message);
        Assert.Contains("≥ 0", Assert.Throws<ArgumentException>(() => SoakMix.Parse("chat=-1")).Message);
        Assert.Contains("valid generation", Assert.Throws<ArgumentException>(() => SoakMix.Parse("malformed=1")).Message);
        var ok = new SoakOptions { Url = new Uri("http://127.0.0.1:1/") };
        ok.Validate();
        Assert.Contains("--clients", Assert.Throws<ArgumentException>(() => (ok with { Clients = 0 }).Validate()).Message);
        Assert.Contains("warm-up", Assert.Throws<ArgumentException>(() => (ok with { Duration = TimeSpan.FromSeconds(30), Warmup = TimeSpan.FromSeconds(30) }).Validate()).Message);
        Assert.Contains("--latency-tolerance", Assert.Throws<ArgumentException>(() => (ok with { LatencyTolerance = 0.5 }).Validate()).Message);
        Assert.Contains("/proc/", Assert.Throws<ArgumentException>(() => (ok with { Pid = int.MaxValue }).Validate()).Message);
    }

    /// <summary>
    /// Every malformed and oversized request of the soak gets a 4xx from the in-process server (not only "no 5xx"):
    /// one of each, so a case the server starts accepting shows up here by name.
    /// </summary>
    [Fact]
    public async Task EveryBadRequestOfTheSoakIsA4xx()
    {
        await using var s = await TestServer.StartAsync();
        foreach (var b in SoakMix.BadRequests(256, 64 * 1024))
        {
            using var request = new HttpRequestMessage(b.Method, b.Path);
            if (b.Body is not null)
            {
                request.Content = new ByteArrayContent(b.Body);
                request.Content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
                request.Headers.ExpectContinue = b.Body.Length > 64 * 1024;
            }
            using var response = await s.Http.SendAsync(request, Ct);
            string body = await response.Content.ReadAsStringAsync(Ct);
            Assert.True((int)response.StatusCode is >= 400 and < 500, $"{b.Name}: {(int)response.StatusCode} {body}");
            Assert.True(JsonDocument.Parse(body).RootElement.TryGetProperty("error", out _), $"{b.Name}: not an OpenAI error: {body}");
            if (b.Name == "body_over_limit") Assert.Equal(HttpStatusCode.RequestEntityTooLarge, response.StatusCode);
            if (b.Name.Contains("over_context", StringComparison.Ordinal)) Assert.Contains("context_length_exceeded", body);
        }
    }

    /// <summary>
    /// A warm-up that fails (here: a context too short for the warm-up's prompt and answer) leaves /health at 500 with its
    /// reason and /metrics empty: the scheduler, created before the warm-up, exported series beside the 500, so the
    /// Prometheus rule for a replica that never serves (answers scrapes, no bitnet series) could not fire.
    /// </summary>
    [Fact]
    public async Task AFailedWarmupExportsNothing()
    {
        await using var s = await TestServer.StartAsync(contextLength: 1, waitReady: false);
        await TestServer.EventuallyAsync(async () => (await s.Http.GetAsync("health", Ct)).StatusCode == HttpStatusCode.InternalServerError, "the warm-up to fail");
        using var health = await s.Http.GetAsync("health", Ct);
        string body = await health.Content.ReadAsStringAsync(Ct);
        Assert.Contains("\"error\"", body);
        Assert.NotNull(s.Server.Scheduler); // the load passed and made the scheduler: the warm-up failed
        Assert.Equal("", await s.MetricsAsync());
    }

    /// <summary>The process gauges the soak reads: RSS agrees with /proc/self/status, the GC heap is there, requests in flight count a held stream.</summary>
    [Fact]
    public async Task ProcessMetricsShowMemoryAndRequestsInFlight()
    {
        await using var s = await TestServer.StartAsync();
        // The GC's figures are those of its last collection, and on a CPU with a large cache (a large allocation budget)
        // this test process may not have collected yet: the committed series is absent until then, and the heap is what
        // was allocated. Collect, so both are the last collection's.
        bool collectedBefore = GC.GetGCMemoryInfo().Index > 0;
        string text = await s.MetricsAsync();
        bool collectedAfter = GC.GetGCMemoryInfo().Index > 0;
        bool committedSample = Regex.IsMatch(text, "^bitnet_process_gc_committed_bytes ", RegexOptions.Multiline);
        if (collectedBefore) Assert.True(committedSample, "the committed bytes of the last collection");
        if (!collectedAfter) Assert.False(committedSample, "committed bytes before any collection");
        Assert.True(TestServer.Sample(text, "bitnet_process_gc_heap_bytes") > 0);
        GC.Collect();
        text = await s.MetricsAsync();
        var families = PrometheusText.Parse(text);
        Assert.Equal("gauge", families["bitnet_process_resident_memory_bytes"]);
        Assert.Equal("gauge", families["bitnet_process_gc_heap_bytes"]);
        Assert.Equal("gauge", families["bitnet_process_gc_committed_bytes"]);
        Assert.Equal("counter", families["bitnet_process_gc_collections_total"]);
        Assert.Equal("gauge", families["bitnet_server_requests_in_flight"]);
        Assert.Equal("counter", families["bitnet_process_jit_compiled_methods_total"]);
        Assert.Equal("counter", families["bitnet_process_jit_compilation_time_seconds_total"]);
        // Which server answered: its start time, in /metrics and /health?verbose alike (the dashboard tells replicas and
        // restarts apart by it).
        Assert.Equal("gauge", families["bitnet_server_start_time_seconds"]);
        Assert.Equal(1, TestServer.Sample(text, "bitnet_server_ready")); // warmed up: served
        double started = TestServer.Sample(text, "bitnet_server_start_time_seconds");
        Assert.InRange(DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0 - started, 0, 600);
        using (var verbose = System.Text.Json.JsonDocument.Parse(await s.Http.GetStringAsync("health?verbose", TestContext.Current.CancellationToken)))
            Assert.Equal(started, verbose.RootElement.GetProperty("started").GetDateTimeOffset().ToUnixTimeMilliseconds() / 1000.0, 3);
        // The server has compiled its own routes by now: both totals are positive, and the count is at least what this
        // process had compiled before the scrape (it only grows).
        long compiledBefore = System.Runtime.JitInfo.GetCompiledMethodCount();
        text = await s.MetricsAsync();
        Assert.True(TestServer.Sample(text, "bitnet_process_jit_compiled_methods_total") >= compiledBefore);
        Assert.True(TestServer.Sample(text, "bitnet_process_jit_compilation_time_seconds_total") > 0);
        double rss = TestServer.Sample(text, "bitnet_process_resident_memory_bytes");
        if (OperatingSystem.IsLinux())
        {
            double proc = Soak.ProcRss(Environment.ProcessId);
            Assert.InRange(rss, proc * 0.8, proc * 1.25);
        }
        Assert.InRange(rss, 10e6, 64e9);
        Assert.True(TestServer.Sample(text, "bitnet_process_gc_heap_bytes") > 0);
        Assert.True(TestServer.Sample(text, "bitnet_process_gc_collections_total{generation=\"0\"}") >= TestServer.Sample(text, "bitnet_process_gc_collections_total{generation=\"2\"}"));
        Assert.Equal(0, TestServer.Sample(text, "bitnet_server_requests_in_flight"));

        s.Scheduler.StepGate.Reset();
        try
        {
            var stream = s.StreamAsync("v1/completions", new { prompt = "Once upon a time", max_tokens = 3, stream = true, ignore_eos = true });
            await TestServer.EventuallyAsync(async () => TestServer.Sample(await s.MetricsAsync(), "bitnet_server_requests_in_flight") == 1, "the held stream to count as in flight");
            s.Scheduler.StepGate.Set();
            Assert.Equal("[DONE]", (await stream)[^1]);
            await TestServer.EventuallyAsync(async () => TestServer.Sample(await s.MetricsAsync(), "bitnet_server_requests_in_flight") == 0, "in flight back to 0");
        }
        finally
        {
            s.Scheduler.StepGate.Set();
        }
    }
}
