using System.Globalization;
using System.Net;
using System.Text.RegularExpressions;
using BitNetSharp.Server;
using BitNetSharp.Tests.Server;
using Microsoft.Playwright;

namespace BitNetSharp.Tests.Monitoring;

/// <summary>
/// The dashboard page against the processes behind its address: replicas behind a balancer, a restart, a failed load,
/// an API key. Same browser as <see cref="DashboardBrowserTests"/>; skips where chromium is absent.
/// </summary>
public sealed partial class DashboardBrowserTests
{
    private const string NoChromium =
        "chromium is not installed, so the dashboard browser test cannot run: `apt-get install chromium` (Debian; .ci/run does it), or set BITNET_CHROMIUM to a Chromium executable.";

    private static async Task<(IPlaywright Playwright, IBrowser Browser, IPage Page)> OpenAsync(TestServer s)
    {
        string? chromium = FindChromium();
        Assert.SkipWhen(chromium is null, NoChromium);
        var playwright = await Playwright.CreateAsync();
        var browser = await playwright.Chromium.LaunchAsync(new() { ExecutablePath = chromium, Headless = true, Args = ["--no-sandbox"] });
        var page = await browser.NewPageAsync();
        await page.GotoAsync(new Uri(s.Server.Address, "dashboard").ToString());
        return (playwright, browser, page);
    }

    private static async Task WaitPollsAsync(IPage page, int more)
    {
        int now = await page.EvaluateAsync<int>("() => Number(document.body.dataset.polls || 0)");
        await page.WaitForFunctionAsync($"() => Number(document.body.dataset.polls || 0) >= {now + more}", null, new() { Timeout = 30_000 });
    }

    [GeneratedRegex(@"^(bitnet_server_start_time_seconds) (\S+)$", RegexOptions.Multiline)]
    private static partial Regex StartTimeLine();

    [GeneratedRegex(@"^(bitnet_generation_tokens_total) (\S+)$", RegexOptions.Multiline)]
    private static partial Regex TokensLine();

    /// <summary>
    /// Two processes answering one address in turn (replicas behind a balancer): /metrics' start time tells them apart, so
    /// no rate is taken across them and the page says what it sees. It took one replica's larger counters minus the
    /// other's as tokens generated in a second (a spike of thousands of tokens/s on an idle server).
    /// </summary>
    [Fact]
    public async Task DashboardTakesNoRateAcrossTwoProcesses()
    {
        await using var s = await TestServer.StartAsync();
        var (status, _, _) = await s.PostAsync("v1/completions", new { model = TestServer.ModelId, prompt = "Once upon a time", max_tokens = 6, temperature = 0, ignore_eos = true });
        Assert.Equal(HttpStatusCode.OK, status);
        var (playwright, browser, page) = await OpenAsync(s);
        using var _ = playwright;
        await using var __ = browser;
        await WaitPollsAsync(page, 2);
        Assert.StartsWith("process started ", await page.InnerTextAsync("#instance"));

        // Every other scrape from "another replica": started 1000 s later, ten times the tokens (both idle).
        int calls = 0;
        await page.RouteAsync("**/metrics", async route =>
        {
            var response = await route.FetchAsync();
            string text = await response.TextAsync();
            if (Interlocked.Increment(ref calls) % 2 == 0)
            {
                text = StartTimeLine().Replace(text, m => m.Groups[1].Value + " " + (double.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture) + 1000).ToString("R", CultureInfo.InvariantCulture));
                text = TokensLine().Replace(text, m => m.Groups[1].Value + " " + (double.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture) * 10 + 1000).ToString("R", CultureInfo.InvariantCulture));
            }
            await route.FulfillAsync(new() { Response = response, Body = text });
        });
        int modelReads = 0;
        page.Request += (_, r) => { if (r.Url.Contains("/v1/models", StringComparison.Ordinal)) Interlocked.Increment(ref modelReads); };
        await WaitPollsAsync(page, 6);
        Assert.Contains("several replicas answer at this address", await page.InnerTextAsync("#instance"));
        // The model line is not read again at every change of replica (it was: /v1/models every poll).
        Assert.InRange(Volatile.Read(ref modelReads), 0, 2);
        double spike = await page.EvaluateAsync<double>("() => Math.max(0, ...rates)");
        Assert.True(spike < 1, $"a rate of {spike} tok/s on an idle server, taken across two processes");
        string rate = await page.InnerTextAsync("#gen_rate");
        Assert.True(rate == "–" || double.Parse(rate, CultureInfo.InvariantCulture) < 1, $"generation tokens/s shows {rate}");

        // An alert's start as an age (a time of day could not tell this morning from a week ago), the exact time as its title.
        Assert.Equal("3 d 2 h ago|true", await page.EvaluateAsync<string>("""
            () => { drawAlerts(parse('bitnet_alerts_firing{rule="R"} 1\n'),
                      { firing: [{ name: "R", severity: "critical", since: new Date(Date.now() - (3 * 86400 + 2 * 3600 + 60) * 1000).toISOString(), value: 1, summary: "s" }] });
                    const cell = document.querySelector('#alerts tr[data-rule="R"] [data-field="since"]');
                    return cell.textContent + "|" + (cell.title.length > 0); }
            """));
    }

    /// <summary>
    /// A restarted process, loading: the header's model line says so, and is read again as soon as the new process serves
    /// (it stayed "–" until the next scheduled read, 30 polls later).
    /// </summary>
    [Fact]
    public async Task DashboardReadsTheModelAgainAfterARestart()
    {
        await using var s = await TestServer.StartAsync();
        var (playwright, browser, page) = await OpenAsync(s);
        using var _ = playwright;
        await using var __ = browser;
        await page.WaitForFunctionAsync("() => document.getElementById('model').textContent.includes('tiny-chat')", null, new() { Timeout = 30_000 });
        await page.RouteAsync("**/health*", r => r.FulfillAsync(new() { Status = 503, ContentType = "application/json", Body = "{\"status\":\"loading\"}" }));
        await page.RouteAsync("**/metrics", r => r.FulfillAsync(new() { Status = 200, ContentType = "text/plain", Body = "" }));
        await WaitPollsAsync(page, 2);
        Assert.Equal("model: (restarting)", await page.InnerTextAsync("#model"));
        await page.UnrouteAsync("**/health*");
        await page.UnrouteAsync("**/metrics");
        await page.WaitForFunctionAsync("() => document.getElementById('model').textContent.includes('tiny-chat')", null, new() { Timeout = 8_000 });
    }

    /// <summary>A model that failed to load: the page shows /health's reason beside "error" (it showed "error" alone).</summary>
    [Fact]
    public async Task DashboardShowsWhyTheModelFailedToLoad()
    {
        await using var s = await TestServer.StartAsync(o => o with
        {
            LoadModel = () => throw new InvalidDataException("model.gguf: tensor blk.3.attn_q.weight is truncated"),
        }, waitReady: false);
        var (playwright, browser, page) = await OpenAsync(s);
        using var _ = playwright;
        await using var __ = browser;
        await page.WaitForFunctionAsync("() => document.getElementById('status').textContent.startsWith('error')", null, new() { Timeout = 30_000 });
        Assert.Equal("error: model.gguf: tensor blk.3.attn_q.weight is truncated", await page.InnerTextAsync("#status"));
        Assert.Equal("model: (load failed)", await page.InnerTextAsync("#model"));

        // A proxy's HTML page in place of /health: its status, not a JSON parser's complaint about '<'.
        await page.RouteAsync("**/health*", r => r.FulfillAsync(new() { Status = 502, ContentType = "text/html", Body = "<html><body>502 Bad Gateway</body></html>" }));
        await page.WaitForFunctionAsync("() => document.getElementById('status').textContent.includes('HTTP 502')", null, new() { Timeout = 15_000 });
        Assert.StartsWith("unreachable: /health answered HTTP 502", await page.InnerTextAsync("#status"));
    }

    /// <summary>
    /// A server with an API key and a page without one: "API key required" and the key box (it said "unreachable", as
    /// for a server that is down), and no read of /v1/models every 2 s while no key is given.
    /// </summary>
    [Fact]
    public async Task DashboardAsksForTheKeyInsteadOfCallingTheServerUnreachable()
    {
        await using var s = await TestServer.StartAsync(o => o with { ApiKey = "sesame" });
        string? chromium = FindChromium();
        Assert.SkipWhen(chromium is null, NoChromium);
        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new() { ExecutablePath = chromium, Headless = true, Args = ["--no-sandbox"] });
        var page = await browser.NewPageAsync();
        int modelRequests = 0;
        page.Request += (_, r) => { if (r.Url.Contains("/v1/models", StringComparison.Ordinal)) Interlocked.Increment(ref modelRequests); };
        await page.GotoAsync(new Uri(s.Server.Address, "dashboard").ToString());
        await page.WaitForFunctionAsync("() => document.getElementById('status').textContent === 'API key required'", null, new() { Timeout = 15_000 });
        Assert.True(await page.IsVisibleAsync("#auth"));
        await Task.Delay(4500, Ct);
        Assert.InRange(Volatile.Read(ref modelRequests), 1, 1);
        Assert.Equal("API key required", await page.InnerTextAsync("#status"));

        await page.FillAsync("#key", "sesame");
        await page.ClickAsync("#save");
        await page.WaitForFunctionAsync("() => document.getElementById('status').textContent === 'ok'", null, new() { Timeout = 15_000 });
        await page.WaitForFunctionAsync("() => document.getElementById('model').textContent.includes('tiny-chat')", null, new() { Timeout = 15_000 });
    }
}
