using System.Globalization;
using System.Text;
using System.Text.Json;
using BitNetSharp.Cli;

namespace BitNetSharp.LoadBench;

/// <summary>One pass/fail criterion: what it demands, what was measured, and whether it held (null: reported, not judged).</summary>
internal sealed record SoakVerdict(string Name, string Criterion, string Measured, bool? Pass);

/// <summary>
/// A finished soak: the requests, the time series, the verdicts and the files (markdown summary, CSV time series,
/// SVG plot, one JSON line per request).
/// <para>Verdicts (all must pass):</para>
/// <list type="bullet">
/// <item>server alive (with <c>--pid</c>): the server's process did not end during the soak (the load stops early
/// when it does, instead of collecting refusals);</item>
/// <item>traffic: every kind in the mix ran at least once (a soak that skipped malformed requests proves nothing);</item>
/// <item>no 5xx: no response of any request had a 5xx status;</item>
/// <item>malformed → 4xx: every malformed and oversized request got a 4xx (a 2xx, a 5xx or a broken connection fails);</item>
/// <item>valid requests complete: every valid generation ended ok (or was dropped by the client as planned) — no HTTP
/// error, SSE error event, broken connection or silent truncation;</item>
/// <item>disconnects cancel: the server's bitnet_requests_cancelled_total grew by at least 90 % of the streams the
/// clients dropped (each asked for up to 1024 tokens, so the server was still generating when the client went);</item>
/// <item>engine: the server's bitnet_requests_failed_total and bitnet_requests_timed_out_total did not grow;</item>
/// <item>/metrics: every scrape answered;</item>
/// <item>idle at the end: within the idle timeout after the last request, running and waiting requests, running
/// sequences, KV use and HTTP requests in flight are all 0;</item>
/// <item>RSS flat: samples after the warm-up, and after the server's first garbage collection after it, are cut
/// into windows of a tenth of them (at least 3 samples); the baseline is the first window's median; no window's median
/// may exceed it by more than the tolerance (5 %). Until the first collection the heap's allocation budget is still
/// filling with garbage, which is growth a leak cannot be told from: the runtime sizes that budget from the CPU's cache
/// (~90 MiB of RSS on a 260 MiB L3, where a 20 s warm-up was not enough), so a run with no collection after the warm-up
/// fails with that reason (see <see cref="FirstCollection"/>);</item>
/// <item>latency stable: the valid requests that start after the warm-up are split into thirds by start time; the
/// last third's P50 and P99 end-to-end latency may be at most the tolerance (1.5×) times the first third's.</item>
/// </list>
/// </summary>
internal sealed class SoakReport(SoakOptions options, Uri url, string modelId, int contextLength, int maxSequences, List<SoakRequest> requests,
    List<SoakSample> samples, SoakSample? idle, double idleAfterSeconds, double loadEndedSeconds, Dictionary<string, double> before,
    Dictionary<string, double> after, int scrapeErrors, List<string> scrapeErrorDetails, string? serverGone = null)
{
    private const double Mi = 1024.0 * 1024;

    public SoakOptions Options => options;
    public IReadOnlyList<SoakRequest> Requests => requests;
    public IReadOnlyList<SoakSample> Samples => samples;
    private readonly List<SoakVerdict> _verdicts = [];

    public IReadOnlyList<SoakVerdict> Verdicts => _verdicts;

    public bool Passed => Verdicts.All(v => v.Pass != false);

    /// <summary>Requests that did not go as they must, with why.</summary>
    public IEnumerable<SoakRequest> Failures => requests.Where(r => r.Failure is not null);

    private double Warmup => options.EffectiveWarmup.TotalSeconds;

    private double Delta(string series) => Soak.Metric(after, series) - Soak.Metric(before, series);

    /// <summary>Computes the verdicts (again) from the requests and samples.</summary>
    public SoakReport Judge()
    {
        var v = _verdicts;
        v.Clear();

        if (options.Pid is not null)
            v.Add(new("server alive", "the server's process (--pid) lived through the load", serverGone ?? "yes", serverGone is null));

        var missing = Enum.GetValues<SoakKind>().Where(k => options.Mix.Weight(k) > 0 && !requests.Any(r => r.Kind == k)).ToList();
        v.Add(new("traffic", "every kind with a weight in the mix ran at least once",
            string.Join(", ", Enum.GetValues<SoakKind>().Select(k => $"{Name(k)} {requests.Count(r => r.Kind == k)}")), missing.Count == 0));

        var fivexx = requests.Where(r => r.Status >= 500).ToList();
        v.Add(new("no 5xx", "no response with a 5xx status", fivexx.Count == 0 ? $"0 of {requests.Count}" : $"{fivexx.Count}: {Examples(fivexx)}", fivexx.Count == 0));

        var bad = requests.Where(r => r.Kind is SoakKind.Malformed or SoakKind.Oversized).ToList();
        var badFailed = bad.Where(r => r.Failure is not null).ToList();
        v.Add(new("malformed → 4xx", "every malformed and oversized request answered with a 4xx",
            badFailed.Count == 0 ? $"{bad.Count} of {bad.Count} ({bad.Select(r => r.Case).Distinct().Count()} cases)" : $"{badFailed.Count} of {bad.Count} not: {Examples(badFailed)}",
            badFailed.Count == 0));

        var valid = requests.Where(r => r.Valid).ToList();
        var validFailed = valid.Where(r => r.Failure is not null).ToList();
        int truncations = valid.Count(r => r.Outcome == "silent_truncation");
        v.Add(new("valid requests complete", "every valid generation complete (or dropped by the client as planned); no silent truncation",
            validFailed.Count == 0 ? $"{valid.Count(r => r.Outcome == "ok")} ok, {valid.Count(r => r.Outcome == "disconnected")} dropped by the client, 0 failed"
                : $"{validFailed.Count} of {valid.Count} failed ({truncations} silent truncations): {Examples(validFailed)}",
            validFailed.Count == 0));

        int drops = requests.Count(r => r.Outcome == "disconnected");
        double cancelled = Delta("bitnet_requests_cancelled_total");
        v.Add(new("disconnects cancel", "the server cancels at least 90 % of the streams clients dropped (each asked for a long answer, so it was still generating)",
            string.Create(CultureInfo.InvariantCulture, $"{drops} dropped, {cancelled:0} cancelled by the server"), drops == 0 ? null : cancelled >= 0.9 * drops));

        double failed = Delta("bitnet_requests_failed_total"), timedOut = Delta("bitnet_requests_timed_out_total");
        v.Add(new("engine", "bitnet_requests_failed_total and bitnet_requests_timed_out_total do not grow",
            string.Create(CultureInfo.InvariantCulture, $"failed +{failed:0}, timed out +{timedOut:0}"), failed == 0 && timedOut == 0));

        v.Add(new("/metrics", "every scrape answered", scrapeErrors == 0 ? $"{samples.Count} scrapes" : $"{scrapeErrors} failed: {string.Join("; ", scrapeErrorDetails)}", scrapeErrors == 0));

        var last = samples.Count > 0 ? samples[^1] : null;
        v.Add(new("idle at the end", $"requests running and waiting, sequences, KV use and requests in flight all 0 within {options.IdleTimeout.TotalSeconds:0.#} s of the last answer",
            idle is not null
                ? string.Create(CultureInfo.InvariantCulture, $"all 0, {idleAfterSeconds:0.0} s after the load ended")
                : last is null ? "no sample" : string.Create(CultureInfo.InvariantCulture,
                    $"after {idleAfterSeconds:0.0} s: requests running {last.RequestsRunning}, waiting {last.RequestsWaiting}, sequences {last.SequencesRunning}, KV {last.KvUsage:P2}, in flight {last.InFlight}"),
            idle is not null));

        v.Add(RssVerdict());
        v.Add(LatencyVerdict());
        return this;
    }

    /// <summary>Load-phase samples after the warm-up with a resident-memory reading.</summary>
    private List<SoakSample> SteadySamples() => samples.Where(s => s.Phase != "idle" && s.T >= Warmup && s.T <= options.Duration.TotalSeconds && double.IsFinite(s.RssBytes)).ToList();

    private static List<double[]> Windows(List<SoakSample> steady, Func<SoakSample, double> value)
    {
        int w = Math.Max(3, steady.Count / 10);
        var windows = new List<double[]>();
        for (int i = 0; i + w <= steady.Count; i += w)
        {
            int to = steady.Count - (i + w) < w ? steady.Count : i + w; // the remainder joins the last window
            windows.Add(steady.Skip(i).Take(to - i).Select(value).Where(double.IsFinite).ToArray());
            if (to == steady.Count) break;
        }
        return windows;
    }

    /// <summary>
    /// When the server first collected garbage after the warm-up (seconds from the start): the first load sample whose
    /// generation-0 count exceeds that of the first sample taken at or after the warm-up's end. Null when the server does
    /// not export the count (judged from the warm-up alone); +∞ when it did not collect.
    /// </summary>
    /// <remarks>A count compared with the last sample before the warm-up's end took a collection inside the warm-up,
    /// between that sample and the next, for one after it: its budget then filled within the judged samples.</remarks>
    /// <remarks>
    /// Not the first collection under load: the runtime sizes the next budget from what survived, so a collection early in
    /// the load can be followed by a budget of ~90 MiB that fills for the next 25 s (measured: a gen-0 collection at 6 s,
    /// RSS climbing 122 → 197 MiB until the next at 30 s, flat after it).
    /// </remarks>
    private double? FirstCollection()
    {
        var load = samples.Where(s => s.Phase == "load" && s.T <= options.Duration.TotalSeconds).ToList();
        if (!load.Any(s => double.IsFinite(s.Gen0Collections))) return null;
        double count = double.NaN;
        foreach (var s in load)
        {
            if (!double.IsFinite(s.Gen0Collections) || s.T < Warmup) continue;
            if (!double.IsFinite(count)) count = s.Gen0Collections; // the first sample from the warm-up's end on
            else if (s.Gen0Collections > count) return s.T;
        }
        return double.PositiveInfinity;
    }

    private SoakVerdict RssVerdict()
    {
        var inv = CultureInfo.InvariantCulture;
        double? collected = FirstCollection();
        double start = Math.Max(Warmup, collected ?? 0);
        string criterion = string.Create(inv,
            $"after the warm-up ({Warmup:0} s){(collected is null ? "" : " and the server's first garbage collection after it")}: no window median (windows of a tenth of the samples, ≥ 3) more than {options.RssTolerance:P0} above the first window's");
        var afterWarmup = SteadySamples();
        // With no RSS samples at all, the count's message below says why (this one printed "NaN–NaN MiB").
        if (collected is double.PositiveInfinity && afterWarmup.Count > 0)
            return new("RSS flat", criterion, string.Create(inv,
                $"not judged: the server collected no garbage after the warm-up, so RSS ({afterWarmup.Min(s => s.RssBytes) / Mi:F1}–{afterWarmup.Max(s => s.RssBytes) / Mi:F1} MiB after the warm-up) may still be the heap's allocation budget filling, which a leak cannot be told from; run longer (--duration)"), false);
        var steady = afterWarmup.Where(s => s.T >= start).ToList();
        if (steady.Count < 6)
            return new("RSS flat", criterion, string.Create(inv, $"only {steady.Count} samples with RSS after the warm-up{(collected is { } c && double.IsFinite(c) && c > Warmup ? $" and the first garbage collection ({c:0} s)" : "")} (need 6; {(options.Pid is null ? "the server exports no bitnet_process_resident_memory_bytes and no --pid was given" : "sample more often or run longer")})"), false);
        var windows = Windows(steady, s => s.RssBytes);
        var medians = windows.Select(x => Soak.Percentile(x, 50)).ToList();
        double baseline = medians[0], top = medians.Max();
        double growth = top / baseline - 1;
        var (slope, _) = Fit(steady.Select(s => (s.T, s.RssBytes)).ToList());
        string measured = string.Create(CultureInfo.InvariantCulture,
            $"baseline {baseline / Mi:F1} MiB, highest window {top / Mi:F1} MiB ({growth:+0.0%;-0.0%}), last window {medians[^1] / Mi:F1} MiB, samples {steady.Min(s => s.RssBytes) / Mi:F1}–{steady.Max(s => s.RssBytes) / Mi:F1} MiB; trend {slope * 3600 / Mi:+0.0;-0.0} MiB/h ({windows.Count} windows of {windows[0].Length})");
        if (collected > Warmup) measured += string.Create(inv, $"; from {collected:0} s, the first garbage collection after the warm-up");
        return new("RSS flat", criterion, measured, growth <= options.RssTolerance);
    }

    private List<SoakRequest> SteadyLatencyRequests() =>
        requests.Where(r => r.Valid && r.Outcome == "ok" && r.Start >= Warmup && r.Start < options.Duration.TotalSeconds).ToList();

    private SoakVerdict LatencyVerdict()
    {
        double tol = options.LatencyTolerance;
        string criterion = tol > 0
            ? string.Create(CultureInfo.InvariantCulture, $"after the warm-up, the last third's P50 and P99 end-to-end latency ≤ {tol:0.##}× the first third's")
            : "reported, not judged (--latency-tolerance 0)";
        var (first, lastThird) = Thirds();
        if (first.Count < 20 || lastThird.Count < 20)
            return new("latency stable", criterion, $"too few complete requests to compare ({first.Count} in the first third, {lastThird.Count} in the last; need 20)", tol > 0 ? false : null);
        double p50a = Soak.Percentile(first, 50), p99a = Soak.Percentile(first, 99), p50b = Soak.Percentile(lastThird, 50), p99b = Soak.Percentile(lastThird, 99);
        string measured = string.Create(CultureInfo.InvariantCulture,
            $"P50 {p50a * 1000:F0} → {p50b * 1000:F0} ms ({p50b / p50a:0.00}×), P99 {p99a * 1000:F0} → {p99b * 1000:F0} ms ({p99b / p99a:0.00}×); {first.Count} and {lastThird.Count} requests");
        return new("latency stable", criterion, measured, tol > 0 ? p50b <= tol * p50a && p99b <= tol * p99a : null);
    }

    private (List<double> First, List<double> Last) Thirds()
    {
        double span = (options.Duration.TotalSeconds - Warmup) / 3;
        var steady = SteadyLatencyRequests();
        return (steady.Where(r => r.Start < Warmup + span).Select(r => r.End - r.Start).ToList(),
                steady.Where(r => r.Start >= Warmup + 2 * span).Select(r => r.End - r.Start).ToList());
    }

    /// <summary>Least-squares slope and intercept.</summary>
    private static (double Slope, double Intercept) Fit(List<(double X, double Y)> points)
    {
        double n = points.Count, mx = points.Average(p => p.X), my = points.Average(p => p.Y);
        double sxx = points.Sum(p => (p.X - mx) * (p.X - mx)), sxy = points.Sum(p => (p.X - mx) * (p.Y - my));
        double slope = sxx > 0 ? sxy / sxx : 0;
        return (slope, my - slope * mx);
    }

    private static string Examples(List<SoakRequest> rs)
    {
        var groups = rs.GroupBy(r => $"{Name(r.Kind)}/{r.Case}: {r.Failure}").ToList();
        return string.Join("; ", groups.Take(5).Select(g => string.Create(CultureInfo.InvariantCulture, $"{g.Count()}× {g.Key} (first at t={g.First().Start:F1} s)")))
            + (groups.Count > 5 ? $"; and {groups.Count - 5} more kinds" : "");
    }

    private static string Name(SoakKind k) => SoakMix.Names[(int)k];

    private static string Cpu()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/cpuinfo"))
                if (line.StartsWith("model name", StringComparison.Ordinal)) return line[(line.IndexOf(':') + 1)..].Trim();
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture.ToString();
    }

    public string Markdown(string? svgName)
    {
        var inv = CultureInfo.InvariantCulture;
        var o = new StringBuilder();
        var steady = SteadySamples();
        o.AppendLine($"# Soak: {(Passed ? "PASS" : "FAIL")}");
        o.AppendLine();
        o.AppendLine(string.Create(inv, $"{DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC; server {url} serving `{modelId}` (context {contextLength}, {maxSequences} sequences); client on {Cpu()}, {Environment.ProcessorCount} logical CPUs, .NET {Environment.Version}."));
        o.AppendLine();
        o.AppendLine(string.Create(inv,
            $"{options.Clients} clients back to back (no think time) for {options.Duration.TotalSeconds:0.#} s, max_tokens {options.MaxTokens} (ignore_eos), mix `{options.Mix}`; a sample every {options.SampleInterval.TotalSeconds:0.##} s; warm-up {Warmup:0.#} s (10 % of the run, at least 20 s, unless --warmup); RSS from {(options.Pid is { } pid ? $"/proc/{pid}/status" : "bitnet_process_resident_memory_bytes")}."));
        o.AppendLine();
        o.AppendLine("| verdict | criterion | measured | |");
        o.AppendLine("|---|---|---|---|");
        foreach (var v in Verdicts)
            o.AppendLine($"| {v.Name} | {v.Criterion} | {v.Measured.Replace("|", "\\|", StringComparison.Ordinal)} | {(v.Pass switch { true => "pass", false => "**FAIL**", null => "info" })} |");
        o.AppendLine();
        if (svgName is not null)
        {
            o.AppendLine($"![memory, latency, sequences, KV use and throughput over time]({svgName})");
            o.AppendLine();
        }

        double duration = options.Duration.TotalSeconds;
        var valid = requests.Where(r => r.Valid && r.Outcome == "ok").ToList();
        var saturated = steady.Count == 0 ? double.NaN : steady.Count(s => s.RequestsWaiting > 0 || s.SequencesRunning >= maxSequences) / (double)steady.Count;
        o.AppendLine("## Load");
        o.AppendLine();
        o.AppendLine(string.Create(inv, $"- {requests.Count} requests in {loadEndedSeconds:0.#} s ({requests.Count / loadEndedSeconds:0.0}/s); {valid.Count} complete generations ({valid.Count / loadEndedSeconds:0.00}/s), {Delta("bitnet_generation_tokens_total") / loadEndedSeconds:0.0} generated tokens/s (server)."));
        o.AppendLine(string.Create(inv, $"- Saturation: {saturated:P0} of the samples after the warm-up had requests waiting or every sequence busy; mean {Mean(steady, s => s.SequencesRunning):0.0} of {maxSequences} sequences running, {Mean(steady, s => s.RequestsWaiting):0.0} requests waiting, KV use {Mean(steady, s => s.KvUsage):P1}."));
        if (steady.Count > 0)
        {
            var heap = Windows(steady, s => s.GcHeapBytes).Select(x => Soak.Percentile(x, 50)).ToList();
            o.AppendLine(string.Create(inv, $"- GC heap after the warm-up (window medians): first {heap[0] / Mi:F1} MiB, highest {heap.Max() / Mi:F1} MiB, last {heap[^1] / Mi:F1} MiB; {Delta("bitnet_process_gc_collections_total{generation=\"2\"}"):0} generation-2 collections during the run."));
        }
        var (first, lastThird) = Thirds();
        var ttft = requests.Where(r => r.Valid && double.IsFinite(r.FirstTokenSeconds) && r.Start >= Warmup).Select(r => r.FirstTokenSeconds).ToList();
        var e2e = requests.Where(r => r.Valid && r.Outcome == "ok" && r.Start >= Warmup).Select(r => r.End - r.Start).ToList();
        o.AppendLine(string.Create(inv, $"- Latency after the warm-up: TTFT (streams) P50 {Soak.Percentile(ttft, 50) * 1000:F0} ms, P99 {Soak.Percentile(ttft, 99) * 1000:F0} ms; end to end P50 {Soak.Percentile(e2e, 50) * 1000:F0} ms, P99 {Soak.Percentile(e2e, 99) * 1000:F0} ms."));
        o.AppendLine();

        o.AppendLine("## Requests by kind");
        o.AppendLine();
        o.AppendLine("| kind | requests | ok / 4xx as required | dropped by client | failed | statuses |");
        o.AppendLine("|---|---:|---:|---:|---:|---|");
        foreach (var k in Enum.GetValues<SoakKind>())
        {
            var rs = requests.Where(r => r.Kind == k).ToList();
            if (rs.Count == 0 && options.Mix.Weight(k) == 0) continue;
            string statuses = string.Join(", ", rs.GroupBy(r => r.Status).OrderBy(g => g.Key).Select(g => $"{(g.Key == 0 ? "none" : g.Key.ToString(inv))}: {g.Count()}"));
            o.AppendLine($"| {Name(k)} | {rs.Count} | {rs.Count(r => r.Failure is null && r.Outcome != "disconnected")} | {rs.Count(r => r.Outcome == "disconnected")} | {rs.Count(r => r.Failure is not null)} | {statuses} |");
        }
        o.AppendLine();
        o.AppendLine("Malformed and oversized cases (status: count):");
        o.AppendLine();
        foreach (var g in requests.Where(r => r.Kind is SoakKind.Malformed or SoakKind.Oversized).GroupBy(r => r.Case).OrderBy(g => g.Key, StringComparer.Ordinal))
            o.AppendLine($"- `{g.Key}`: {string.Join(", ", g.GroupBy(r => r.Status).OrderBy(x => x.Key).Select(x => $"{(x.Key == 0 ? "none" : x.Key.ToString(inv))}: {x.Count()}"))}");
        o.AppendLine();

        var failures = Failures.ToList();
        if (failures.Count > 0)
        {
            o.AppendLine("## Failures (first 20)");
            o.AppendLine();
            foreach (var r in failures.Take(20))
                o.AppendLine(string.Create(inv, $"- t={r.Start:F2}–{r.End:F2} s client {r.Client} {Name(r.Kind)}/{r.Case}: {r.Failure}"));
            o.AppendLine();
        }

        o.AppendLine("## Time series (every tenth of the run; all samples in the CSV)");
        o.AppendLine();
        o.AppendLine("| t s | phase | RSS MiB | GC heap MiB | sequences | waiting | KV use | req/s | gen tok/s | TTFT P50/P99 ms | e2e P50/P99 ms | failures |");
        o.AppendLine("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        double next = 0;
        for (int i = 0; i < samples.Count; i++)
        {
            var s = samples[i];
            if (s.T < next && i != samples.Count - 1) continue;
            next = s.T + duration / 10;
            o.AppendLine(string.Create(inv,
                $"| {s.T:F0} | {s.Phase} | {s.RssBytes / Mi:F1} | {s.GcHeapBytes / Mi:F1} | {s.SequencesRunning} | {s.RequestsWaiting} | {s.KvUsage:P1} | {s.RequestsPerSecond:F1} | {s.GenerationTokensPerSecond:F0} | {s.TtftP50 * 1000:F0}/{s.TtftP99 * 1000:F0} | {s.LatencyP50 * 1000:F0}/{s.LatencyP99 * 1000:F0} | {s.FailuresSoFar} |"));
        }
        return o.ToString();
    }

    private static double Mean(List<SoakSample> s, Func<SoakSample, double> f)
    {
        var xs = s.Select(f).Where(double.IsFinite).ToList();
        return xs.Count == 0 ? double.NaN : xs.Average();
    }

    public void WriteCsv(TextWriter w)
    {
        w.WriteLine("t_seconds,phase,rss_bytes,gc_heap_bytes,gc_committed_bytes,gc_gen0_collections,gc_gen2_collections,sequences_running,max_sequences,requests_running,requests_waiting,requests_in_flight,kv_cache_usage_ratio,completed,requests_per_second,generation_tokens_per_second,ttft_p50_seconds,ttft_p99_seconds,latency_p50_seconds,latency_p99_seconds,failures");
        foreach (var s in samples)
            w.WriteLine(string.Join(",", new object[] { s.T, s.Phase, s.RssBytes, s.GcHeapBytes, s.GcCommittedBytes, s.Gen0Collections, s.Gen2Collections, s.SequencesRunning, s.MaxSequences, s.RequestsRunning, s.RequestsWaiting, s.InFlight, s.KvUsage, s.Completed, s.RequestsPerSecond, s.GenerationTokensPerSecond, s.TtftP50, s.TtftP99, s.LatencyP50, s.LatencyP99, s.FailuresSoFar }
                .Select(x => x is double d ? (double.IsFinite(d) ? d.ToString("0.######", CultureInfo.InvariantCulture) : "") : Convert.ToString(x, CultureInfo.InvariantCulture))));
    }

    /// <summary>Five charts stacked in one SVG: memory, latency, sequences and queue, KV use, throughput; a grey line marks the end of the warm-up.</summary>
    public void WriteSvg(TextWriter w)
    {
        List<(double, double)> Series(Func<SoakSample, double> f, double scale = 1) =>
            [.. samples.Where(s => double.IsFinite(f(s))).Select(s => (s.T, f(s) * scale))];
        List<(double, double)> Warm(IEnumerable<List<(double X, double Y)>> all)
        {
            var ys = all.SelectMany(p => p).Select(p => p.Y).DefaultIfEmpty(0).ToList();
            return [(Warmup, ys.Min()), (Warmup, ys.Max())];
        }
        SvgLinePlot Plot(string title, string y, params (string Name, List<(double, double)> Points, string Color)[] series)
        {
            var p = new SvgLinePlot { Title = title, XLabel = "seconds since the start", YLabel = y };
            foreach (var s in series) p.Series.Add(new SvgSeries(s.Name, s.Points) { Color = s.Color });
            p.Series.Add(new SvgSeries("warm-up end", Warm(series.Select(s => s.Points))) { Color = "#999999", Width = 1 });
            return p;
        }
        var plots = new[]
        {
            Plot("Memory", "MiB",
                ("RSS", Series(s => s.RssBytes, 1 / Mi), "#1f77b4"), ("GC heap", Series(s => s.GcHeapBytes, 1 / Mi), "#ff7f0e"), ("GC committed", Series(s => s.GcCommittedBytes, 1 / Mi), "#2ca02c")),
            Plot($"Client latency per {options.SampleInterval.TotalSeconds:0.##} s interval", "ms",
                ("e2e P50", Series(s => s.LatencyP50, 1000), "#1f77b4"), ("e2e P99", Series(s => s.LatencyP99, 1000), "#aec7e8"), ("TTFT P50", Series(s => s.TtftP50, 1000), "#d62728"), ("TTFT P99", Series(s => s.TtftP99, 1000), "#ff9896")),
            Plot("Sequences and queue", "count",
                ("sequences running", Series(s => s.SequencesRunning), "#1f77b4"), ("requests waiting", Series(s => s.RequestsWaiting), "#ff7f0e"), ("HTTP in flight", Series(s => s.InFlight), "#9467bd")),
            Plot("KV cache use", "% of positions", ("KV use", Series(s => s.KvUsage, 100), "#8c564b")),
            Plot("Throughput", "per second", ("requests/s", Series(s => s.RequestsPerSecond), "#2ca02c"), ("gen tok/s ÷ 10", Series(s => s.GenerationTokensPerSecond, 0.1), "#17becf")),
        };
        const int height = 560;
        w.WriteLine("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
        w.WriteLine($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1000\" height=\"{height * plots.Length}\" viewBox=\"0 0 1000 {height * plots.Length}\">");
        for (int i = 0; i < plots.Length; i++)
        {
            var one = new StringWriter();
            plots[i].Write(one);
            var lines = one.ToString().Split('\n').Where(l => !l.StartsWith("<?xml", StringComparison.Ordinal)).ToList();
            w.WriteLine(string.Join("\n", lines).Replace("<svg xmlns=\"http://www.w3.org/2000/svg\"", $"<svg y=\"{i * height}\"", StringComparison.Ordinal).TrimEnd());
        }
        w.WriteLine("</svg>");
    }

    public void WriteRequests(TextWriter w)
    {
        foreach (var r in requests)
            w.WriteLine(JsonSerializer.Serialize(new
            {
                start = Math.Round(r.Start, 4), end = Math.Round(r.End, 4), client = r.Client, kind = Name(r.Kind), @case = r.Case, status = r.Status, outcome = r.Outcome,
                first_token_seconds = double.IsFinite(r.FirstTokenSeconds) ? Math.Round(r.FirstTokenSeconds, 4) : (double?)null, failure = r.Failure, detail = r.Detail.Length > 0 ? r.Detail : null,
            }));
    }

    /// <summary>PREFIX.md, PREFIX.csv and PREFIX.svg.</summary>
    public void WriteFiles(string prefix)
    {
        using (var md = new StreamWriter(prefix + ".md")) md.Write(Markdown(Path.GetFileName(prefix) + ".svg"));
        using (var csv = new StreamWriter(prefix + ".csv")) WriteCsv(csv);
        using (var svg = new StreamWriter(prefix + ".svg")) WriteSvg(svg);
    }
}
