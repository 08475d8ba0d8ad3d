using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Headers;
using System.Text.Json;

namespace BitNetSharp.LoadBench;

/// <summary>What a soak run does and how it is judged (see <see cref="Soak"/>).</summary>
internal sealed record SoakOptions
{
    public required Uri Url { get; init; }
    public TimeSpan Duration { get; init; } = TimeSpan.FromMinutes(30);
    public int Clients { get; init; } = 16;
    public TimeSpan SampleInterval { get; init; } = TimeSpan.FromSeconds(5);
    public int MaxTokens { get; init; } = 48;

    /// <summary>The server's process id: RSS from /proc/PID/status (otherwise from bitnet_process_resident_memory_bytes).</summary>
    public int? Pid { get; init; }

    /// <summary>Excluded from the RSS and latency verdicts; null: 10 % of the duration, at least 20 s.</summary>
    public TimeSpan? Warmup { get; init; }

    /// <summary>How long, after the load stops and the last request ends, sequences, queue and KV use may take to reach 0.</summary>
    public TimeSpan IdleTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>RSS may grow this much (a fraction) over its post-warm-up baseline.</summary>
    public double RssTolerance { get; init; } = 0.05;

    /// <summary>The last third's P50 and P99 latency may be this many times the first third's; 0: reported, not judged.</summary>
    public double LatencyTolerance { get; init; } = 1.5;

    /// <summary>The server's request body limit (ServerOptions.MaxRequestBodyBytes; 1 MiB in `bitnet serve`).</summary>
    public long BodyLimit { get; init; } = 1 << 20;

    public SoakMix Mix { get; init; } = SoakMix.Parse(SoakMix.Default);
    public int Seed { get; init; } = 1;
    public string? ApiKey { get; init; }

    /// <summary>A request with no complete answer by then (headers and body) ends as <c>timeout</c>, a failure.</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromMinutes(10);

    public TimeSpan EffectiveWarmup => Warmup ?? TimeSpan.FromSeconds(Math.Max(20, Duration.TotalSeconds * 0.1));

    public void Validate()
    {
        if (Duration <= TimeSpan.Zero) throw new ArgumentException($"--duration must be positive; got {Duration.TotalSeconds} s.");
        if (Clients < 1 || Clients > 4096) throw new ArgumentException($"--clients must be 1 to 4096; got {Clients}.");
        if (SampleInterval < TimeSpan.FromMilliseconds(100)) throw new ArgumentException($"--sample must be at least 0.1 s; got {SampleInterval.TotalSeconds} s.");
        if (MaxTokens < 2) throw new ArgumentException($"--max-tokens must be at least 2 (a client disconnects after 1-3 text events); got {MaxTokens}.");
        if (EffectiveWarmup >= Duration) throw new ArgumentException($"the warm-up ({EffectiveWarmup.TotalSeconds} s) must be shorter than --duration ({Duration.TotalSeconds} s).");
        if (Warmup is { } w && w < TimeSpan.Zero) throw new ArgumentException($"--warmup must be ≥ 0; got {w.TotalSeconds} s.");
        if (IdleTimeout <= TimeSpan.Zero) throw new ArgumentException($"--idle-timeout must be positive; got {IdleTimeout.TotalSeconds} s.");
        if (!(RssTolerance > 0 && RssTolerance < 10)) throw new ArgumentException($"--rss-tolerance must be a fraction > 0 (0.05 is 5 %); got {RssTolerance}.");
        if (!(LatencyTolerance == 0 || LatencyTolerance >= 1)) throw new ArgumentException($"--latency-tolerance must be 0 (not judged) or ≥ 1; got {LatencyTolerance}.");
        if (BodyLimit < 1024 || BodyLimit > 256L << 20) throw new ArgumentException($"--body-limit must be 1024 bytes to 256 MiB; got {BodyLimit}.");
        if (RequestTimeout <= TimeSpan.Zero) throw new ArgumentException($"--request-timeout must be positive; got {RequestTimeout.TotalSeconds} s.");
        if (Pid is { } p && !File.Exists($"/proc/{p}/status")) throw new ArgumentException($"--pid {p}: /proc/{p}/status does not exist (no such process, or not Linux).");
    }
}

/// <summary>One request of a soak: when (seconds from the start), what, and how it ended.</summary>
internal sealed record SoakRequest(double Start, double End, int Client, SoakKind Kind, string Case, int Status, string Outcome, string Detail, double FirstTokenSeconds)
{
    public bool Valid => Kind is SoakKind.Completion or SoakKind.CompletionStream or SoakKind.Chat or SoakKind.ChatStream or SoakKind.Disconnect;

    /// <summary>Null when the request went as it must; otherwise why it is a failure (worked out once: every sample counts them).</summary>
    public string? Failure { get; } = Kind is SoakKind.Malformed or SoakKind.Oversized
        ? Status is >= 400 and < 500 ? null : Status == 0 ? $"no HTTP status ({Outcome}: {Detail})" : $"HTTP {Status}, not a 4xx ({Detail})"
        : Outcome is "ok" or "disconnected" ? null : $"{Outcome}: {Detail}";
}

/// <summary>One sample of the time series; NaN where the server does not export the metric or the interval had no request.</summary>
internal sealed record SoakSample(double T, string Phase, double RssBytes, double GcHeapBytes, double GcCommittedBytes, double Gen2Collections,
    double SequencesRunning, double MaxSequences, double RequestsRunning, double RequestsWaiting, double InFlight, double KvUsage,
    int Completed, double RequestsPerSecond, double GenerationTokensPerSecond, double TtftP50, double TtftP99, double LatencyP50, double LatencyP99, int FailuresSoFar,
    double Gen0Collections = double.NaN)
{
    public bool Idle => SequencesRunning == 0 && RequestsRunning == 0 && RequestsWaiting == 0 && KvUsage == 0 && !(InFlight > 0);
}

/// <summary>
/// A soak: <see cref="SoakOptions.Clients"/> loops, each sending one request after another (no think time, so the
/// server stays saturated) for <see cref="SoakOptions.Duration"/>, drawn from <see cref="SoakOptions.Mix"/>:
/// completions and chat completions, streaming or not (all ignore_eos, so a complete answer has exactly max_tokens
/// tokens; classified by <see cref="ExternalLoad.OneAsync"/>), streams dropped after 1-3 text events, malformed
/// and oversized requests (<see cref="SoakMix.BadRequests"/>). Every <see cref="SoakOptions.SampleInterval"/> a
/// sample reads /metrics (and /proc/PID/status) and the requests that ended in the interval. When the time is up
/// the clients finish the request they are in, then /metrics is polled until the server is idle. The verdicts are
/// in <see cref="SoakReport"/>.
/// </summary>
internal static class Soak
{
    /// <summary>The server's generation-0 collections: the RSS verdict's baseline waits for the first under load.</summary>
    public const string Gen0Series = "bitnet_process_gc_collections_total{generation=\"0\"}";

    public static async Task<SoakReport> RunAsync(SoakOptions options, TextWriter progress, CancellationToken cancellation = default)
    {
        options.Validate();
        var url = options.Url.AbsoluteUri.EndsWith('/') ? options.Url : new Uri(options.Url.AbsoluteUri + "/");
        // MaxResponseDrainSize 0: a dropped stream closes its connection, as a client that goes away does. (By default the
        // handler would read up to 1 MB of the rest to reuse the connection, and the server would never see the drop.)
        using var http = new HttpClient(new SocketsHttpHandler { PooledConnectionLifetime = TimeSpan.FromMinutes(2), MaxResponseDrainSize = 0 })
        {
            BaseAddress = url,
            Timeout = options.RequestTimeout, // SendBadAsync reads whole answers under it; OneAsync's own limit covers a streamed body too
        };
        using var probe = new HttpClient { BaseAddress = url, Timeout = TimeSpan.FromSeconds(15) };
        if (options.ApiKey is { } key)
        {
            http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
            probe.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
        }

        // The server must be up and ready; the model's context length sizes the oversized prompts.
        var ready = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                using var health = await probe.GetAsync("health", cancellation);
                if (health.IsSuccessStatusCode) break;
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException && !cancellation.IsCancellationRequested) { } // refused, or the probe's 15 s
            if (ready.Elapsed > TimeSpan.FromSeconds(120)) throw new InvalidOperationException($"{url}health did not answer 200 within 120 s: is the server running and ready?");
            await Task.Delay(250, cancellation);
        }
        var meta = JsonDocument.Parse(await probe.GetStringAsync("v1/models", cancellation)).RootElement.GetProperty("data")[0];
        string modelId = meta.GetProperty("id").GetString() ?? "";
        int contextLength = meta.GetProperty("meta").GetProperty("n_ctx").GetInt32();
        int maxSequences = meta.GetProperty("meta").GetProperty("max_sequences").GetInt32();
        if (options.MaxTokens + 32 > contextLength)
            throw new ArgumentException($"--max-tokens {options.MaxTokens} leaves no room for the prompts in the model's context of {contextLength} tokens.");
        var bad = SoakMix.BadRequests(contextLength, options.BodyLimit);
        int disconnectMaxTokens = Math.Max(options.MaxTokens, Math.Min(1024, contextLength - 48));
        var before = await ScrapeAsync(probe, cancellation);
        if (before.Count == 0) throw new InvalidOperationException($"{url}metrics is empty: the server exports no metrics yet.");

        var requests = new List<SoakRequest>();
        int failuresSoFar = 0; // under requests' lock
        var samples = new List<SoakSample>();
        var clock = Stopwatch.StartNew();
        string phase = "load";
        int scrapeErrors = 0;
        var scrapeErrorDetails = new List<string>();
        double lastSampleT = 0, lastTokens = Metric(before, "bitnet_generation_tokens_total"), lastTokensT = 0;
        progress.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"soak: {options.Clients} clients for {options.Duration.TotalSeconds:0.#} s against {url} (model {modelId}, ctx {contextLength}, {maxSequences} sequences); mix {options.Mix}; sampling every {options.SampleInterval.TotalSeconds:0.##} s"));

        async Task<SoakSample> SampleAsync()
        {
            Dictionary<string, double> m;
            try
            {
                m = await ScrapeAsync(probe, cancellation);
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException or IOException && !cancellation.IsCancellationRequested)
            {
                m = [];
                lock (scrapeErrorDetails)
                {
                    scrapeErrors++;
                    if (scrapeErrorDetails.Count < 10) scrapeErrorDetails.Add(string.Create(CultureInfo.InvariantCulture, $"t={clock.Elapsed.TotalSeconds:F1} s: {ExternalLoad.Describe(e)}"));
                }
            }
            double t = clock.Elapsed.TotalSeconds, dt = Math.Max(1e-3, t - lastSampleT);
            double rss = options.Pid is { } pid ? ProcRss(pid) : Metric(m, "bitnet_process_resident_memory_bytes");
            double tokens = Metric(m, "bitnet_generation_tokens_total");
            List<SoakRequest> window;
            int failures;
            lock (requests)
            {
                window = requests.Where(r => r.End > lastSampleT && r.End <= t).ToList();
                failures = failuresSoFar;
            }
            var latency = window.Where(r => r.Valid && r.Outcome == "ok").Select(r => r.End - r.Start).ToList();
            var ttft = window.Where(r => r.Valid && double.IsFinite(r.FirstTokenSeconds)).Select(r => r.FirstTokenSeconds).ToList();
            var sample = new SoakSample(t, phase, rss, Metric(m, "bitnet_process_gc_heap_bytes"), Metric(m, "bitnet_process_gc_committed_bytes"),
                Metric(m, "bitnet_process_gc_collections_total{generation=\"2\"}"), Metric(m, "bitnet_sequences_running"), maxSequences,
                Metric(m, "bitnet_requests_running"), Metric(m, "bitnet_requests_waiting"), Metric(m, "bitnet_server_requests_in_flight"), Metric(m, "bitnet_kv_cache_usage_ratio"),
                window.Count, window.Count / dt, (tokens - lastTokens) / Math.Max(1e-3, t - lastTokensT), Percentile(ttft, 50), Percentile(ttft, 99), Percentile(latency, 50), Percentile(latency, 99), failures,
                Metric(m, Gen0Series));
            lastSampleT = t;
            if (double.IsFinite(tokens)) (lastTokens, lastTokensT) = (tokens, t); // after a failed scrape the rate spans both intervals (it doubled)
            lock (samples) samples.Add(sample);
            return sample;
        }

        using var stopSampling = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
        var sampler = Task.Run(async () =>
        {
            using var timer = new PeriodicTimer(options.SampleInterval);
            double nextReport = 0;
            try
            {
                while (await timer.WaitForNextTickAsync(stopSampling.Token))
                {
                    var s = await SampleAsync();
                    if (s.T >= nextReport)
                    {
                        progress.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"  t={s.T,6:F0} s {s.Phase,-5} rss {s.RssBytes / Mi,7:F1} MiB  gc heap {s.GcHeapBytes / Mi,6:F1} MiB  seqs {s.SequencesRunning,2} waiting {s.RequestsWaiting,3} kv {s.KvUsage:P0}  {s.RequestsPerSecond,5:F1} req/s  p50/p99 {s.LatencyP50 * 1000,6:F0}/{s.LatencyP99 * 1000,6:F0} ms  failures {s.FailuresSoFar}"));
                        nextReport = s.T + Math.Max(options.SampleInterval.TotalSeconds, options.Duration.TotalSeconds / 30);
                    }
                }
            }
            catch (OperationCanceledException) when (stopSampling.IsCancellationRequested) { }
        }, cancellation);

        var end = options.Duration;
        // The load stops early when the server's process has gone (--pid): the clients would only collect refusals.
        using var stopLoad = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
        string? serverGone = null;
        var workers = Enumerable.Range(0, options.Clients).Select(c => Task.Run(async () =>
        {
            var rng = new Random(options.Seed * 7919 + c);
            var backoff = new ExternalLoad.Backoff();
            while (clock.Elapsed < end && !stopLoad.IsCancellationRequested)
            {
                cancellation.ThrowIfCancellationRequested();
                var kind = options.Mix.Pick(rng);
                double start = clock.Elapsed.TotalSeconds;
                SoakRequest r;
                if (kind is SoakKind.Malformed or SoakKind.Oversized)
                {
                    var candidates = bad.Where(b => b.Kind == kind).ToList();
                    var b = candidates[rng.Next(candidates.Count)];
                    var (status, outcome, detail) = await SendBadAsync(http, b, cancellation);
                    r = new SoakRequest(start, clock.Elapsed.TotalSeconds, c, kind, b.Name, status, outcome, detail, double.NaN);
                }
                else
                {
                    bool chat = kind is SoakKind.Chat or SoakKind.ChatStream || (kind == SoakKind.Disconnect && rng.Next(2) == 0);
                    bool stream = kind is SoakKind.CompletionStream or SoakKind.ChatStream or SoakKind.Disconnect;
                    int disconnectAfter = kind == SoakKind.Disconnect ? 1 + rng.Next(Math.Min(3, options.MaxTokens - 1)) : 0;
                    string prompt = SoakMix.Prompts[rng.Next(SoakMix.Prompts.Length)];
                    // A dropped stream asks for a long answer, so the server is certainly still generating when the client goes.
                    int maxTokens = kind == SoakKind.Disconnect ? disconnectMaxTokens : options.MaxTokens;
                    var reply = await ExternalLoad.OneAsync(http, stream, prompt, maxTokens, chat, disconnectAfter, cancellation, options.RequestTimeout);
                    r = new SoakRequest(start, clock.Elapsed.TotalSeconds, c, kind, chat ? "chat" : "completion", reply.Status, reply.Outcome, reply.Detail, reply.FirstTokenSeconds);
                }
                lock (requests)
                {
                    requests.Add(r);
                    if (r.Failure is not null) failuresSoFar++;
                }
                // A connection that failed outright (a dead or restarting server): wait before the next, 0.1 s doubling to 2 s.
                if (backoff.After(new ExternalLoad.Reply(r.Outcome, r.Detail, 0, r.Status, double.NaN)) is { } wait)
                {
                    if (options.Pid is { } pid && !File.Exists($"/proc/{pid}/status"))
                    {
                        serverGone ??= string.Create(CultureInfo.InvariantCulture, $"the server's process {pid} ended at t={clock.Elapsed.TotalSeconds:F1} s");
                        await stopLoad.CancelAsync();
                        break;
                    }
                    try
                    {
                        await Task.Delay(wait, stopLoad.Token);
                    }
                    catch (OperationCanceledException) when (!cancellation.IsCancellationRequested) { }
                }
            }
        }, cancellation)).ToArray();
        var drainWatch = Task.Run(async () =>
        {
            var left = end - clock.Elapsed;
            try
            {
                if (left > TimeSpan.Zero) await Task.Delay(left, stopLoad.Token);
            }
            catch (OperationCanceledException) when (!cancellation.IsCancellationRequested) { } // the server's process ended
            phase = "drain";
        }, cancellation);
        await Task.WhenAll(workers);
        await drainWatch;
        double loadEnded = clock.Elapsed.TotalSeconds;
        await stopSampling.CancelAsync();
        await sampler;
        phase = "idle";

        // Idle: every request has had its answer; the server must let go of every sequence, queue entry and KV position.
        SoakSample? idle = null;
        var idleDeadline = clock.Elapsed + options.IdleTimeout;
        while (idle is null && serverGone is null && clock.Elapsed <= idleDeadline)
        {
            await Task.Delay(250, cancellation);
            var s = await SampleAsync();
            if (s.Idle) idle = s;
        }
        double idleAfter = clock.Elapsed.TotalSeconds - loadEnded;
        Dictionary<string, double> after;
        try
        {
            after = await ScrapeAsync(probe, cancellation);
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException or IOException && !cancellation.IsCancellationRequested)
        {
            after = []; // the counters' verdicts read NaN and fail
            scrapeErrors++;
            if (scrapeErrorDetails.Count < 10) scrapeErrorDetails.Add($"the final scrape: {ExternalLoad.Describe(e)}");
        }

        if (serverGone is null && options.Pid is { } gone && !File.Exists($"/proc/{gone}/status"))
            serverGone = $"the server's process {gone} had ended by the end of the soak";

        List<SoakSample> series;
        lock (samples) series = [.. samples.OrderBy(s => s.T)];
        lock (requests) requests.Sort((x, y) => x.Start.CompareTo(y.Start));
        return new SoakReport(options, url, modelId, contextLength, maxSequences, requests, series, idle, idleAfter, loadEnded, before, after, scrapeErrors, scrapeErrorDetails, serverGone).Judge();
    }

    private const double Mi = 1024.0 * 1024;

    /// <summary>Sends one request that must be refused: its status (0: none), an outcome (rejected: a 4xx) and the start of what it said.</summary>
    private static async Task<(int Status, string Outcome, string Detail)> SendBadAsync(HttpClient http, BadRequest b, CancellationToken cancellation)
    {
        using var request = new HttpRequestMessage(b.Method, b.Path);
        if (b.Body is not null)
        {
            request.Content = new ByteArrayContent(b.Body);
            request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
            // As curl does for large bodies: the server can refuse by the headers alone, before the body is sent. Without
            // it a server that answers 413 and closes while the client is still writing leaves the client a broken pipe.
            if (b.Body.Length > 64 * 1024) request.Headers.ExpectContinue = true;
        }
        try
        {
            using var response = await http.SendAsync(request, cancellation);
            int status = (int)response.StatusCode;
            string text = await response.Content.ReadAsStringAsync(cancellation);
            return (status, status is >= 400 and < 500 ? "rejected" : "not_rejected", $"{status} {ExternalLoad.Shorten(text)}");
        }
        catch (Exception e) when ((e is HttpRequestException or IOException or TaskCanceledException) && !cancellation.IsCancellationRequested)
        {
            return (0, "io_error", ExternalLoad.Describe(e));
        }
    }

    /// <summary>GET /metrics: every sample line, keyed by its name with labels as written.</summary>
    internal static async Task<Dictionary<string, double>> ScrapeAsync(HttpClient http, CancellationToken cancellation)
    {
        using var response = await http.GetAsync("metrics", cancellation);
        if (!response.IsSuccessStatusCode) throw new HttpRequestException($"GET /metrics answered {(int)response.StatusCode}", null, response.StatusCode);
        var text = await response.Content.ReadAsStringAsync(cancellation);
        var values = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (var line in text.Split('\n'))
        {
            if (line.Length == 0 || line[0] == '#') continue;
            int space = line.LastIndexOf(' ');
            if (space > 0 && double.TryParse(line.AsSpan(space + 1), NumberStyles.Float, CultureInfo.InvariantCulture, out double v)) values[line[..space]] = v;
        }
        return values;
    }

    internal static double Metric(Dictionary<string, double> m, string series) => m.TryGetValue(series, out double v) ? v : double.NaN;

    /// <summary>VmRSS of a process in bytes, NaN when it cannot be read (the process ended).</summary>
    internal static double ProcRss(int pid)
    {
        try
        {
            foreach (var line in File.ReadLines($"/proc/{pid}/status"))
                if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                    return double.Parse(line[6..].Trim().Split(' ')[0], CultureInfo.InvariantCulture) * 1024;
        }
        catch (IOException) { }
        return double.NaN;
    }

    /// <summary>Linear interpolation between closest ranks; NaN for no values.</summary>
    internal static double Percentile(IReadOnlyCollection<double> values, double p)
    {
        if (values.Count == 0) return double.NaN;
        var sorted = values.Order().ToArray();
        double rank = p / 100 * (sorted.Length - 1);
        int lo = (int)Math.Floor(rank), hi = (int)Math.Ceiling(rank);
        return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo);
    }

    /// <summary>
    /// <c>--soak --url URL</c>: runs a soak and writes PREFIX.md, PREFIX.csv (the time series) and PREFIX.svg (with
    /// <c>--out PREFIX</c>), one JSON line per request with <c>--log FILE</c>; prints the summary; exit 0 when every
    /// verdict passes, 1 when one fails, 2 for bad arguments or a server that is not there.
    /// </summary>
    public static async Task<int> RunCliAsync(Dictionary<string, string> a)
    {
        SoakOptions options;
        string? prefix = a.GetValueOrDefault("out");
        try
        {
            string[] known = ["soak", "url", "duration", "clients", "sample", "max-tokens", "pid", "warmup", "idle-timeout", "rss-tolerance", "latency-tolerance", "body-limit", "mix", "seed", "api-key", "out", "log", "request-timeout"];
            foreach (var k in a.Keys)
                if (!known.Contains(k)) throw new ArgumentException($"--soak does not take --{k}; it takes {string.Join(", ", known.Skip(1).Select(x => "--" + x))}.");
            if (!a.TryGetValue("url", out var u) || !Uri.TryCreate(u, UriKind.Absolute, out var url) || url.Scheme is not ("http" or "https"))
                throw new ArgumentException("--soak needs --url http://HOST:PORT/ of a running server.");
            options = new SoakOptions
            {
                Url = url,
                Duration = Seconds(a, "duration") ?? TimeSpan.FromMinutes(30),
                Clients = Integer(a, "clients") ?? 16,
                SampleInterval = Seconds(a, "sample") ?? TimeSpan.FromSeconds(5),
                MaxTokens = Integer(a, "max-tokens") ?? 48,
                Pid = Integer(a, "pid"),
                Warmup = Seconds(a, "warmup"),
                IdleTimeout = Seconds(a, "idle-timeout") ?? TimeSpan.FromSeconds(60),
                RssTolerance = Number(a, "rss-tolerance") ?? 0.05,
                LatencyTolerance = Number(a, "latency-tolerance") ?? 1.5,
                BodyLimit = Integer(a, "body-limit") ?? 1 << 20,
                Mix = SoakMix.Parse(a.GetValueOrDefault("mix", SoakMix.Default)),
                Seed = Integer(a, "seed") ?? 1,
                ApiKey = a.GetValueOrDefault("api-key") ?? Environment.GetEnvironmentVariable("BITNET_API_KEY"),
                RequestTimeout = Seconds(a, "request-timeout") ?? TimeSpan.FromMinutes(10),
            };
            options.Validate();
            if (prefix is not null && Path.GetDirectoryName(Path.GetFullPath(prefix)) is { } dir && !Directory.Exists(dir))
                throw new ArgumentException($"--out {prefix}: the directory {dir} does not exist.");
        }
        catch (ArgumentException e)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 2;
        }

        using var interrupt = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) =>
        {
            e.Cancel = true;
            interrupt.Cancel();
        };
        SoakReport report;
        try
        {
            report = await RunAsync(options, Console.Error, interrupt.Token);
        }
        catch (OperationCanceledException) when (interrupt.IsCancellationRequested)
        {
            Console.Error.WriteLine("soak: interrupted (Ctrl-C); no verdict and no report.");
            return 130;
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or HttpRequestException or TaskCanceledException)
        {
            Console.Error.WriteLine($"error: {(e is TaskCanceledException ? $"{options.Url} did not answer within 15 s ({e.Message})" : e.Message)}");
            return 2;
        }
        if (prefix is not null)
        {
            report.WriteFiles(prefix);
            Console.Error.WriteLine($"soak: wrote {prefix}.md, {prefix}.csv, {prefix}.svg");
        }
        if (a.GetValueOrDefault("log") is { } log)
        {
            using var w = new StreamWriter(log);
            report.WriteRequests(w);
            Console.Error.WriteLine($"soak: wrote one JSON line per request to {log}");
        }
        Console.WriteLine(report.Markdown(prefix is null ? null : Path.GetFileName(prefix) + ".svg"));
        return report.Passed ? 0 : 1;
    }

    private static double? Number(Dictionary<string, string> a, string key)
    {
        if (!a.TryGetValue(key, out var v)) return null;
        if (!double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out double d) || !double.IsFinite(d))
            throw new ArgumentException($"--{key} must be a number; got '{v}'.");
        return d;
    }

    private static int? Integer(Dictionary<string, string> a, string key)
    {
        if (!a.TryGetValue(key, out var v)) return null;
        return int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) ? n : throw new ArgumentException($"--{key} must be an integer; got '{v}'.");
    }

    private static TimeSpan? Seconds(Dictionary<string, string> a, string key) => Number(a, key) is { } s ? TimeSpan.FromSeconds(s) : null;
}
