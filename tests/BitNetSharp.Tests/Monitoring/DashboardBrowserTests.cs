using System.Globalization;
using System.Net;
using System.Text.Json;
using System.Text.RegularExpressions;
using BitNetSharp.Monitoring.Alerts;
using BitNetSharp.Monitoring.Telemetry;
using BitNetSharp.Server;
using BitNetSharp.Tests.Server;
using Microsoft.Playwright;

namespace BitNetSharp.Tests.Monitoring;

/// <summary>
/// The /dashboard page in a real browser (Playwright driving Debian's chromium): the per-layer health heatmap and the
/// alerts table show exactly what /metrics exports. Skips, saying how to install it, where chromium is absent.
/// </summary>
public sealed partial class DashboardBrowserTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>BITNET_CHROMIUM, else Debian's /usr/bin/chromium (Playwright cannot download its own browsers here).</summary>
    internal static string? FindChromium()
    {
        foreach (var path in new[] { Environment.GetEnvironmentVariable("BITNET_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser" })
            if (!string.IsNullOrEmpty(path) && File.Exists(path)) return path;
        return null;
    }

    private sealed record Cell(string Metric, string Layer, string Input, string Text);

    private sealed record AlertRow(string Rule, string State, string Times);

    [GeneratedRegex(@"^(?<name>[a-z_]+)(\{(?<labels>[^}]*)\})? (?<value>\S+)$", RegexOptions.Multiline)]
    private static partial Regex SampleLine();

    [GeneratedRegex(@"(?<k>[a-z_]+)=""(?<v>[^""]*)""")]
    private static partial Regex LabelPair();

    /// <summary>(name, layer, input, rule) → value for every sample in /metrics text.</summary>
    private static Dictionary<(string, string, string, string), double> Samples(string metrics)
    {
        var result = new Dictionary<(string, string, string, string), double>();
        foreach (Match m in SampleLine().Matches(metrics.Replace("\r", "")))
        {
            var labels = LabelPair().Matches(m.Groups["labels"].Value).ToDictionary(p => p.Groups["k"].Value, p => p.Groups["v"].Value);
            var key = (m.Groups["name"].Value, labels.GetValueOrDefault("layer", ""), labels.GetValueOrDefault("input", labels.GetValueOrDefault("tensor", "")), labels.GetValueOrDefault("rule", ""));
            string v = m.Groups["value"].Value;
            result[key] = v switch { "NaN" => double.NaN, "+Inf" => double.PositiveInfinity, "-Inf" => double.NegativeInfinity, _ => double.Parse(v, CultureInfo.InvariantCulture) };
        }
        return result;
    }

    /// <summary>
    /// While the model loads /metrics is empty: the page said "unreachable: /metrics holds no bitnet samples (a proxy's
    /// page?)" in red for the whole load. It shows /health's "loading", then the figures once the model is up.
    /// </summary>
    [Fact]
    public async Task DashboardSaysLoadingWhileTheModelLoads()
    {
        string? chromium = FindChromium();
        Assert.SkipWhen(chromium is null,
            "chromium is not installed, so the dashboard browser test cannot run: `apt-get install chromium` (Debian; .ci/run does it), or set BITNET_CHROMIUM to a Chromium executable.");
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
        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new() { ExecutablePath = chromium, Headless = true, Args = ["--no-sandbox"] });
        var page = await browser.NewPageAsync();
        await page.GotoAsync(new Uri(s.Server.Address, "dashboard").ToString());
        await page.WaitForFunctionAsync("() => Number(document.body.dataset.polls || 0) >= 2", null, new() { Timeout = 30_000 });
        Assert.Equal("loading", await page.InnerTextAsync("#status"));
        release.Set();
        await s.Server.Ready.WaitAsync(TestServer.Bound, Ct);
        await page.WaitForFunctionAsync("() => document.getElementById('status').textContent === 'ok'", null, new() { Timeout = 30_000 });
    }

    /// <summary>
    /// A key a header cannot carry (a pasted zero-width space) is refused by the page, not stored, and the key box stays
    /// open: it was saved, the box hidden, and every poll then failed inside fetch ("unreachable"), across reloads. A
    /// server gone away leaves its last figures dimmed and dated, not shown as live; they come back live with the server.
    /// The KV tile says a small cache in KiB ("0.0 % of 0 MiB").
    /// </summary>
    [Fact]
    public async Task AnUnsendableKeyIsRefusedAndFiguresOfAServerGoneAreMarkedStale()
    {
        string? chromium = FindChromium();
        Assert.SkipWhen(chromium is null,
            "chromium is not installed, so the dashboard browser test cannot run: `apt-get install chromium` (Debian; .ci/run does it), or set BITNET_CHROMIUM to a Chromium executable.");
        await using var s = await TestServer.StartAsync(o => o with { ApiKey = "k1", Scheduler = o.Scheduler with { ContextLength = 64 } }); // a KV cache under 1 MiB
        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new() { ExecutablePath = chromium, Headless = true, Args = ["--no-sandbox"] });
        var page = await browser.NewPageAsync();
        await page.GotoAsync(new Uri(s.Server.Address, "dashboard").ToString());
        await page.WaitForFunctionAsync("() => document.getElementById('auth').style.display === 'block'", null, new() { Timeout = 30_000 });
        await page.FillAsync("#key", "k1\u200b");
        await page.ClickAsync("#save");
        Assert.Contains("cannot carry", await page.InnerTextAsync("#status"));
        Assert.True(await page.IsVisibleAsync("#key"));
        Assert.Null(await page.EvaluateAsync<string?>("() => localStorage.getItem('bitnet.apiKey')"));
        // The reason stays (the next poll's "API key required" replaced it within half a second); no poll runs meanwhile
        // (a 401 a second while no key is given).
        int healthRequests = 0;
        page.Request += (_, request) => { if (request.Url.Contains("/health", StringComparison.Ordinal)) Interlocked.Increment(ref healthRequests); };
        await Task.Delay(2500, Ct);
        Assert.Contains("cannot carry", await page.InnerTextAsync("#status"));
        Assert.Equal(0, Volatile.Read(ref healthRequests));

        // A wrong key, used with Enter (the box is a form; Enter did nothing): refused, and not kept for the next visit.
        await page.FillAsync("#key", "wrong");
        await page.PressAsync("#key", "Enter");
        await page.WaitForFunctionAsync("() => document.getElementById('status').textContent.startsWith('the API key was refused')", null, new() { Timeout = 30_000 });
        Assert.Null(await page.EvaluateAsync<string?>("() => localStorage.getItem('bitnet.apiKey')"));

        await page.FillAsync("#key", "k1");
        await page.PressAsync("#key", "Enter");
        await page.WaitForFunctionAsync("() => document.getElementById('status').textContent === 'ok' && Number(document.body.dataset.polls || 0) >= 2", null, new() { Timeout = 30_000 });
        Assert.Equal("k1", await page.EvaluateAsync<string?>("() => localStorage.getItem('bitnet.apiKey')")); // kept once accepted
        // The live status region is written only when it changes (it was rewritten every poll: "ok" announced each second).
        await page.EvaluateAsync("() => { window.statusWrites = 0; new MutationObserver(() => window.statusWrites++).observe(document.getElementById('status'), { childList: true, characterData: true, subtree: true }); }");
        await Task.Delay(2500, Ct);
        if (await page.InnerTextAsync("#status") == "ok") Assert.Equal(0, await page.EvaluateAsync<int>("() => window.statusWrites"));
        Assert.Equal("API key", await page.GetAttributeAsync("#key", "aria-label"));
        Assert.Equal("img", await page.GetAttributeAsync("#chart", "role"));
        Assert.Matches(@"^\d+\.\d % of \d+(\.\d)? KiB$", await page.InnerTextAsync("#kv"));
        string sequences = await page.InnerTextAsync("#sequences");
        Assert.False(await page.EvaluateAsync<bool>("() => document.body.classList.contains('stale')"));

        // The server gone: every request fails at the network.
        await page.RouteAsync("**/*", r => r.AbortAsync());
        await page.WaitForFunctionAsync("() => document.body.classList.contains('stale')", null, new() { Timeout = 30_000 });
        Assert.Matches(@"^unreachable: .*\(figures as of .+\)$", await page.InnerTextAsync("#status"));
        Assert.Equal(sequences, await page.InnerTextAsync("#sequences")); // kept, dimmed
        await page.UnrouteAllAsync();
        await page.WaitForFunctionAsync("() => !document.body.classList.contains('stale') && document.getElementById('status').textContent === 'ok'", null, new() { Timeout = 30_000 });

        // A stored key can be forgotten (there was no way to clear it): the key box opens again.
        await page.ClickAsync("#forget");
        Assert.Null(await page.EvaluateAsync<string?>("() => localStorage.getItem('bitnet.apiKey')"));
        await page.WaitForFunctionAsync("() => document.getElementById('status').textContent.startsWith('API key required')", null, new() { Timeout = 30_000 });
        Assert.True(await page.IsVisibleAsync("#key"));
    }

    /// <summary>
    /// A server restarted behind the page (the same address, now loading, /metrics empty): the previous process's
    /// figures are cleared, not shown beside "loading" as if current.
    /// </summary>
    [Fact]
    public async Task DashboardClearsTheFiguresOfAProcessThatRestarted()
    {
        string? chromium = FindChromium();
        Assert.SkipWhen(chromium is null,
            "chromium is not installed, so the dashboard browser test cannot run: `apt-get install chromium` (Debian; .ci/run does it), or set BITNET_CHROMIUM to a Chromium executable.");
        await using var s = await TestServer.StartAsync();
        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new() { ExecutablePath = chromium, Headless = true, Args = ["--no-sandbox"] });
        var page = await browser.NewPageAsync();
        await page.GotoAsync(new Uri(s.Server.Address, "dashboard").ToString());
        await page.WaitForFunctionAsync("() => Number(document.body.dataset.polls || 0) >= 2", null, new() { Timeout = 30_000 });
        Assert.NotEqual("–", await page.InnerTextAsync("#sequences"));
        // The restarted process while it loads: /health 503 "loading", /metrics with no samples.
        await page.RouteAsync("**/health*", r => r.FulfillAsync(new() { Status = 503, ContentType = "application/json", Body = "{\"status\":\"loading\"}" }));
        await page.RouteAsync("**/metrics", r => r.FulfillAsync(new() { Status = 200, ContentType = "text/plain", Body = "" }));
        int polls = int.Parse(await page.EvaluateAsync<string>("() => document.body.dataset.polls"), CultureInfo.InvariantCulture);
        await page.WaitForFunctionAsync($"() => Number(document.body.dataset.polls || 0) >= {polls + 2}", null, new() { Timeout = 30_000 });
        Assert.Equal("loading", await page.InnerTextAsync("#status"));
        Assert.Equal("–", await page.InnerTextAsync("#sequences"));
        Assert.Equal("–", await page.InnerTextAsync("#gen_total"));
    }

    [Fact]
    public async Task DashboardShowsPerLayerHealthAndAlertsAsMetricsSay()
    {
        string? chromium = FindChromium();
        Assert.SkipWhen(chromium is null,
            "chromium is not installed, so the dashboard browser test cannot run: `apt-get install chromium` (Debian; .ci/run does it), or set BITNET_CHROMIUM to a Chromium executable.");

        // Health measured on every step; besides the defaults, one rule that fires as soon as a step was measured.
        var rules = AlertRules.Default.Append(new AlertRule
        {
            Name = "HealthSampled", Metric = "bitnet_health_samples_total", Op = ">", Threshold = 0, Severity = "warning",
            Summary = "The engine measured model health.",
        }).ToList();
        await using var s = await TestServer.StartAsync(o => o with
        {
            Scheduler = o.Scheduler with { HealthSampleEvery = 1 },
            Monitoring = new MonitoringOptions { AlertInterval = TimeSpan.FromMilliseconds(50), AlertRules = rules },
        });
        var (status, _, _) = await s.PostAsync("v1/completions", new { model = TestServer.ModelId, prompt = "Once upon a time", max_tokens = 6, temperature = 0, ignore_eos = true });
        Assert.Equal(HttpStatusCode.OK, status);
        await TestServer.EventuallyAsync(async () => Regex.IsMatch(await s.MetricsAsync(), "bitnet_alerts_firing\\{rule=\"HealthSampled\",severity=\"warning\"\\} 1"), "the HealthSampled alert to fire");

        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new() { ExecutablePath = chromium, Headless = true, Args = ["--no-sandbox"] });
        var page = await browser.NewPageAsync();
        var consoleErrors = new List<string>();
        page.Console += (_, m) => { if (m.Type == "error") consoleErrors.Add(m.Text + " " + m.Location); };
        page.PageError += (_, e) => consoleErrors.Add(e);
        await page.GotoAsync(new Uri(s.Server.Address, "dashboard").ToString());
        // Two polls: rates and the heatmap need a second snapshot; the server is idle, so /metrics no longer changes.
        await page.WaitForFunctionAsync("() => Number(document.body.dataset.polls || 0) >= 2", null, new() { Timeout = 30_000 });

        var web = new JsonSerializerOptions(JsonSerializerDefaults.Web);
        var cells = JsonSerializer.Deserialize<Cell[]>(await page.EvalOnSelectorAllAsync<string>("#heatmap td[data-metric]",
            "els => JSON.stringify(els.map(e => ({ metric: e.dataset.metric, layer: e.dataset.layer, input: e.dataset.input || e.dataset.tensor || '', text: e.textContent })))"), web)!;
        var alertRows = JsonSerializer.Deserialize<AlertRow[]>(await page.EvalOnSelectorAllAsync<string>("#alerts tr[data-rule]",
            "els => JSON.stringify(els.map(e => ({ rule: e.dataset.rule, state: e.querySelector('[data-field=state]').textContent, times: e.querySelector('[data-field=times]').textContent })))"), web)!;
        string statusText = await page.InnerTextAsync("#status");
        string firingSummary = await page.InnerTextAsync("#alerts tr[data-rule=HealthSampled]");
        var samples = Samples(await s.MetricsAsync());
        Assert.Empty(consoleErrors);

        // Every layer × (4 inputs × saturation and underflow + residual change and RMS + KV rounding of k and v), each equal to /metrics.
        int layers = JsonDocument.Parse(await s.Http.GetStringAsync("v1/models", Ct)).RootElement.GetProperty("data")[0].GetProperty("meta").GetProperty("n_layer").GetInt32();
        Assert.Equal(layers * 12, cells.Length);
        foreach (var c in cells)
        {
            double expected = samples[(c.Metric, c.Layer, c.Input, "")];
            double shown = double.Parse(c.Text, CultureInfo.InvariantCulture);
            string what = $"{c.Metric} layer {c.Layer} {c.Input}: page shows {c.Text}, /metrics says {expected}";
            if (c.Metric.EndsWith("_ratio", StringComparison.Ordinal) && c.Input != "")
                Assert.True(Math.Abs(shown - expected * 100) <= 0.005 + 1e-9, what); // percent with two decimals
            else
                Assert.True(Math.Abs(shown - expected) <= 0.005 * Math.Abs(expected) + 1e-12, what); // three significant digits
        }
        Assert.Contains(cells, c => c.Metric == "bitnet_health_residual_rms" && double.Parse(c.Text, CultureInfo.InvariantCulture) > 0);
        Assert.Contains(cells, c => c.Metric == "bitnet_health_activation_underflow_ratio" && c.Input == "down");
        Assert.Contains(cells, c => c.Metric == "bitnet_health_kv_error_ratio" && c.Input == "v" && double.Parse(c.Text, CultureInfo.InvariantCulture) > 0); // the default f16 cache rounds

        // One row per rule, its state and count as /metrics has them; the firing rule's details come from /health?verbose.
        Assert.Equal(rules.Count, alertRows.Length);
        foreach (var r in alertRows)
        {
            Assert.Equal(samples[("bitnet_alerts_firing", "", "", r.Rule)] == 1 ? "firing" : "ok", r.State);
            Assert.Equal(samples[("bitnet_alerts_total", "", "", r.Rule)], double.Parse(r.Times, CultureInfo.InvariantCulture));
        }
        Assert.Equal("firing", alertRows.Single(r => r.Rule == "HealthSampled").State);
        Assert.Contains("The engine measured model health.", firingSummary);
        Assert.Contains("warning", firingSummary);
        Assert.Equal("ok", statusText); // a warning does not make the server degraded; a critical alert would

        // Repetition, as /metrics has it (0 on this idle server: no running sequence loops).
        Assert.Equal(samples[("bitnet_health_repetition_ratio", "", "", "")] * 100, double.Parse(await page.InnerTextAsync("#repetition"), CultureInfo.InvariantCulture), 2);
        // Label values holding "}" or escapes are parsed (the rule vanished from the table or never matched /health), -Inf is a number,
        // and a restart's negative bucket differences give no quantile (they showed "-248500000.0 ms").
        Assert.Equal("a}b\"c\nd|-Infinity|2", await page.EvaluateAsync<string>("""
            () => { const f = parse('x{rule="a}b\\"c\\nd",le="1"} -Inf\ny 2'); const x = f.get('x')[0];
                    return [x.labels.rule, String(x.value), String(f.get('y')[0].value)].join('|'); }
            """));
        Assert.Equal("NaN", await page.EvaluateAsync<string>("() => String(quantile(0.5, new Map([[0.001, 0], [Infinity, 3]]), new Map([[0.001, 100], [Infinity, 500]])))"));
        // A NaN health gauge reads "NaN" in the heatmap (it read "–", as a missing series does); a rule that resolved between
        // the /health and /metrics fetches shows no firing details beside its "ok".
        Assert.Equal("NaN", await page.EvaluateAsync<string>("""
            () => { drawHeatmap(parse('bitnet_health_residual_rms{layer="0"} NaN\n'));
                    return document.querySelector('#heatmap td[data-metric="bitnet_health_residual_rms"][data-layer="0"]').textContent; }
            """));
        // The logits tiles too: a NaN sample reads "NaN" (it read "– / –", as before any sample), a missing series "–".
        Assert.Equal("NaN / NaN|NaN / –", await page.EvaluateAsync<string>("""
            () => { drawHealth(parse('bitnet_health_logits_entropy NaN\nbitnet_health_logits_range NaN\nbitnet_health_logits_min NaN\n'), null, 0);
                    return document.getElementById('logits').textContent + '|' + document.getElementById('logits_minmax').textContent; }
            """));
        // Weights that failed a check: the tile names what changed, as /health?verbose does, in the alert colour (a plain "NO").
        Assert.Equal("NO (blk.2.ffn_up.weight) / 0|var(--bad)|NO (the model file changed) / 0", await page.EvaluateAsync<string>("""
            () => { const m = parse('bitnet_weights_verified 0\nbitnet_weights_degenerate_tensors 0\n');
                    drawHealth(m, { weights: { status: "mismatch", last_mismatch: "blk.2.ffn_up.weight" } }, 0);
                    const a = document.getElementById('weights').textContent + '|' + document.getElementById('weights').style.color;
                    drawHealth(m, { weights: { status: "file_changed" } }, 0);
                    return a + '|' + document.getElementById('weights').textContent; }
            """));
        // A 4-bit input's shares are shown marked and not coloured (the thresholds are 8-bit ones: a healthy 4-bit input
        // has about half its codes at 0, and drew full red); an 8-bit one at the same share is.
        Assert.Equal("55.00 (4b)||55.00|rgb", await page.EvaluateAsync<string>("""
            () => { drawHeatmap(parse('bitnet_health_activation_underflow_ratio{bits="4",input="qkv",layer="0"} 0.55\n' +
                                      'bitnet_health_activation_underflow_ratio{bits="8",input="qkv",layer="1"} 0.55\n'));
                    const cell = l => document.querySelector('#heatmap td[data-metric="bitnet_health_activation_underflow_ratio"][data-layer="' + l + '"][data-input="qkv"]');
                    return [cell(0).textContent, cell(0).style.background, cell(1).textContent, cell(1).style.background.slice(0, 3)].join('|'); }
            """));
        // The down input's underflow (relu² makes it 80–95 % by design, and no default rule reads it) is shown, not
        // coloured: measured against 100 % a healthy model's column was drawn dark red.
        Assert.Equal("93.00|", await page.EvaluateAsync<string>("""
            () => { drawHeatmap(parse('bitnet_health_activation_underflow_ratio{bits="8",input="down",layer="0"} 0.93\n'));
                    const c = document.querySelector('#heatmap td[data-metric="bitnet_health_activation_underflow_ratio"][data-layer="0"][data-input="down"]');
                    return c.textContent + '|' + c.style.background; }
            """));
        // A healthy repetition reads in a light colour on the dark panel (the cells' 16 % lightness made "0.00" unreadable).
        Assert.Matches(@"^rgb\((\d+), (\d+), (\d+)\)$", await page.EvaluateAsync<string>("() => getComputedStyle(document.getElementById('repetition')).color"));
        Assert.True(await page.EvaluateAsync<bool>("""
            () => { const [r, g, b] = getComputedStyle(document.getElementById('repetition')).color.match(/\d+/g).map(Number);
                    return (0.2126 * r + 0.7152 * g + 0.0722 * b) > 100; }
            """), "the repetition figure is too dark to read");
        string resolved = await page.EvaluateAsync<string>("""
            () => { drawAlerts(parse('bitnet_alerts_firing{rule="R"} 0\n'), { firing: [{ name: "R", severity: "critical", since: 0, value: 3, summary: "stale details" }] });
                    return document.querySelector('#alerts tr[data-rule="R"]').innerText; }
            """);
        Assert.Contains("ok", resolved);
        Assert.DoesNotContain("stale details", resolved);
        Assert.DoesNotContain("critical", resolved);
        // A max rule's value names the series behind it (/health?verbose's labels): which layer blew up.
        Assert.Equal("12.5 at layer 3", await page.EvaluateAsync<string>("""
            () => { drawAlerts(parse('bitnet_alerts_firing{rule="R"} 1\n'), { firing: [{ name: "R", severity: "critical", since: 0, value: 12.5, labels: { layer: "3" }, summary: "s" }] });
                    return document.querySelector('#alerts tr[data-rule="R"] [data-field="value"]').textContent; }
            """));
        // The header's model line is read again (every 30 polls, and after a restart): it kept the first model for the page's life.
        await page.EvaluateAsync("() => { document.getElementById('model').textContent = 'model: stale'; modelAge = MODEL_POLLS; }");
        await page.WaitForFunctionAsync("() => document.getElementById('model').textContent.includes('tiny-chat')", null, new() { Timeout = 15_000 });

        // A server that stops answering: the page says so within seconds (it kept "ok"), and polls do not pile up behind it.
        int metricsRequests = 0;
        page.Request += (_, r) => { if (r.Url.Contains("/metrics", StringComparison.Ordinal)) Interlocked.Increment(ref metricsRequests); };
        await page.RouteAsync("**/metrics", _ => Task.CompletedTask); // never answered
        await page.WaitForFunctionAsync("() => document.getElementById('status').textContent.startsWith('unreachable')", null, new() { Timeout = 15_000 });
        Assert.Contains("no answer in 3 s", await page.InnerTextAsync("#status"));
        int atUnreachable = Volatile.Read(ref metricsRequests);
        await Task.Delay(4500, Ct);
        Assert.InRange(Volatile.Read(ref metricsRequests) - atUnreachable, 0, 2); // one poll at a time: ≤ 2 in 4.5 s, not 4-5
        Assert.Empty(consoleErrors);

        // An error page instead of metrics (a proxy's 502 while this replica is down): an error on the page, the tiles
        // kept, and no rate spike after it. It read as every counter 0 under a green status, and the next good poll's
        // rate was the lifetime token count per second.
        await page.UnrouteAsync("**/metrics");
        await page.WaitForFunctionAsync("() => document.getElementById('status').textContent === 'ok'", null, new() { Timeout = 15_000 });
        string total = await page.InnerTextAsync("#gen_total");
        Assert.NotEqual("0", total);
        await page.RouteAsync("**/metrics", r => r.FulfillAsync(new() { Status = 502, ContentType = "text/html", Body = "<html><body>502 Bad Gateway</body></html>" }));
        await page.WaitForFunctionAsync("() => document.getElementById('status').textContent.includes('HTTP 502')", null, new() { Timeout = 15_000 });
        Assert.Equal(total, await page.InnerTextAsync("#gen_total"));
        await page.UnrouteAsync("**/metrics");
        await page.WaitForFunctionAsync("n => Number(document.body.dataset.polls) >= n", await page.EvaluateAsync<int>("() => Number(document.body.dataset.polls) + 2"), new() { Timeout = 15_000 });
        double spike = await page.EvaluateAsync<double>("() => Math.max(0, ...rates.slice(-3))");
        Assert.True(spike < double.Parse(total, NumberStyles.Any, CultureInfo.InvariantCulture) / 2, $"a rate spike of {spike} tok/s after the error page ({total} tokens in all)");
        Assert.Equal("polite", await page.GetAttributeAsync("#status", "aria-live"));

        // A /v1/models that keeps failing (warm-up; a proxy passing only /metrics): the model line's reads, started every
        // MODEL_POLLS polls, share one retry chain instead of stacking one per start.
        int modelRequests = 0;
        await page.RouteAsync("**/v1/models", r => { Interlocked.Increment(ref modelRequests); return r.FulfillAsync(new() { Status = 503, Body = "{}" }); });
        await page.EvaluateAsync("() => { for (let i = 0; i < 5; i++) model(); }");
        await Task.Delay(4500, Ct);
        Assert.InRange(Volatile.Read(ref modelRequests), 1, 4); // one chain: every 2 s (five chains: 15)
    }
}

/// <summary>The server's telemetry as the engine writes it, collected in memory.</summary>
public sealed class ServerTelemetryTests
{
    private sealed class CollectingSink : ITelemetrySink
    {
        public readonly List<TelemetryStepRecord> Steps = [];
        public int Layers;

        public void Write(in TelemetryStepRecord record)
        {
            lock (Steps) Steps.Add(record);
        }

        public void Write(TelemetryLayerRecord record) => Interlocked.Increment(ref Layers);

        public void Write(in TelemetryEvent record) { }
    }

    /// <summary>
    /// The telemetry log's run context names the activation bits (the layer rows' saturation and underflow mean other
    /// things at fewer bits; a reader of the log could not tell).
    /// </summary>
    [Fact]
    public async Task TheTelemetryContextNamesTheActivationBits()
    {
        IReadOnlyDictionary<string, string>? context = null;
        await using var s = await TestServer.StartAsync(o => o with
        {
            Monitoring = new MonitoringOptions { TelemetryLog = c => { context = c; return new CollectingSink(); } },
        });
        Assert.NotNull(context);
        Assert.Equal("8", context["activation.bits"]);
    }

    /// <summary>The warm-up's step records carry the request ids warmup-N (`bitnet logs` keeps them out of the traffic's
    /// figures); a served request's do not.</summary>
    [Fact]
    public async Task WarmupStepRecordsAreNamedAsWarmup()
    {
        var sink = new CollectingSink();
        await using var s = await TestServer.StartAsync(o => o with
        {
            WarmupRequests = 2,
            Scheduler = o.Scheduler with { HealthSampleEvery = 1 },
            Monitoring = new MonitoringOptions { TelemetryLog = _ => sink },
        });
        string[] warmup;
        lock (sink.Steps) warmup = [.. sink.Steps.Select(r => r.RequestId!).Distinct().Order(StringComparer.Ordinal)];
        Assert.Equal([TelemetryLogSchema.WarmupRequestIdPrefix + "0", TelemetryLogSchema.WarmupRequestIdPrefix + "1"], warmup);
        lock (sink.Steps) sink.Steps.Clear();
        var (status, _, _) = await s.PostAsync("v1/completions", new { model = TestServer.ModelId, prompt = "Once", max_tokens = 2 });
        Assert.Equal(HttpStatusCode.OK, status);
        lock (sink.Steps) Assert.All(sink.Steps, r => Assert.DoesNotContain("warmup", r.RequestId));
    }

    /// <summary>Each step record carries the token sampled from its logits: one request's records, detokenized, are its completion.</summary>
    [Fact]
    public async Task StepRecordsCarryTheSampledTokens()
    {
        var sink = new CollectingSink();
        await using var s = await TestServer.StartAsync(o => o with
        {
            Scheduler = o.Scheduler with { HealthSampleEvery = 1 },
            Monitoring = new MonitoringOptions { TelemetryLog = _ => sink },
        });
        lock (sink.Steps) sink.Steps.Clear(); // warm-up requests
        var (status, body, _) = await s.PostAsync("v1/completions", new { model = TestServer.ModelId, prompt = "Once upon a time", max_tokens = 7, temperature = 0, ignore_eos = true });
        Assert.Equal(HttpStatusCode.OK, status);
        string text = body.GetProperty("choices")[0].GetProperty("text").GetString()!;
        TelemetryStepRecord[] steps;
        lock (sink.Steps) steps = [.. sink.Steps];
        Assert.Equal(7, steps.Length);
        Assert.Single(steps.Select(r => r.RequestId).Distinct());
        Assert.Equal(steps.Select(r => r.Step).Order(), steps.Select(r => r.Step));
        var (dstatus, detok, _) = await s.PostAsync("detokenize", new { tokens = steps.Select(r => r.Token).ToArray() });
        Assert.Equal(HttpStatusCode.OK, dstatus);
        Assert.Equal(text, detok.GetProperty("content").GetString());
        Assert.True(sink.Layers >= 7 * 2, $"{sink.Layers} layer records");
    }
}
