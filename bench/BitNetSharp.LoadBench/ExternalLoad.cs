using System.Diagnostics;
using System.Globalization;
using System.Net.ServerSentEvents;
using System.Text;
using System.Text.Json;

namespace BitNetSharp.LoadBench;

/// <summary>
/// <c>--url http://host:port/</c>: load against a server that is already running (a replica, or a balancer in front
/// of several) instead of an in-process one. <c>--clients</c> loops each send one completion after another for
/// <c>--duration</c> seconds, a <c>--stream-ratio</c> share of them streaming, all with ignore_eos so every complete
/// answer has exactly <c>--max-tokens</c> tokens. Every request ends in exactly one outcome:
/// <list type="bullet">
/// <item><c>ok</c>: a complete answer (non-streaming: 200, finish_reason "length", completion_tokens = max_tokens;
/// streaming: 200, text events, a final usage of max_tokens, finish_reason "length", then [DONE]);</item>
/// <item><c>http_error</c>: a non-200 status (an explicit error);</item>
/// <item><c>sse_error</c>: a stream that ended with an error event (explicit);</item>
/// <item><c>io_error</c>: the connection failed or broke (refused, reset, a chunked body cut short): explicit to the client;</item>
/// <item><c>timeout</c>: no complete answer within <c>--request-timeout</c> seconds (120; headers and body together): a
/// server that sent its headers and then stalled held the client for ever;</item>
/// <item><c>silent_truncation</c>: a 200 whose body ended cleanly but is not a complete answer — a stream without
/// [DONE] or short of max_tokens, a usage of max_tokens with no text, an unparsable or short JSON body. A balancer
/// must never produce one.</item>
/// </list>
/// Prints a per-second timeline and a summary; <c>--log FILE</c> writes one JSON line per request. Exit 3 when a
/// request was silently truncated, 4 when none ended ok (a server or balancer that answers nothing), else 0. A client
/// whose connection failed outright (no status) waits before its next request, 0.1 s doubling to 2 s, so a dead server
/// is not hammered and the log stays small.
/// </summary>
internal static class ExternalLoad
{
    public static async Task<int> RunAsync(Dictionary<string, string> a, TextWriter? output = null, TextWriter? error = null)
    {
        var o = output ?? Console.Out;
        var e = error ?? Console.Error;
        var url = new Uri(a["url"].EndsWith('/') ? a["url"] : a["url"] + "/");
        int clients = Int(a, "clients", 6);
        double duration = double.Parse(a.GetValueOrDefault("duration", "30"), CultureInfo.InvariantCulture);
        double streamRatio = double.Parse(a.GetValueOrDefault("stream-ratio", "0.5"), CultureInfo.InvariantCulture);
        int maxTokens = Int(a, "max-tokens", 64);
        string prompt = a.GetValueOrDefault("prompt", "Once upon a time");
        string? logPath = a.GetValueOrDefault("log");
        var timeout = TimeSpan.FromSeconds(double.Parse(a.GetValueOrDefault("request-timeout", "120"), CultureInfo.InvariantCulture));
        if (timeout <= TimeSpan.Zero) throw new ArgumentException($"--request-timeout must be positive; got {timeout.TotalSeconds} s.");

        using var http = new HttpClient(new SocketsHttpHandler { PooledConnectionLifetime = TimeSpan.FromSeconds(30) })
        {
            BaseAddress = url,
            Timeout = Timeout.InfiniteTimeSpan, // OneAsync's timeout covers headers and body
        };
        var results = new List<Result>();
        var clock = Stopwatch.StartNew();
        e.WriteLine(string.Create(CultureInfo.InvariantCulture, $"loadbench-external: t0={DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0:F3}"));
        var end = TimeSpan.FromSeconds(duration);
        var workers = Enumerable.Range(0, clients).Select(c => Task.Run(async () =>
        {
            var rng = new Random(c + 1);
            var backoff = new Backoff();
            for (int i = 0; clock.Elapsed < end; i++)
            {
                bool stream = rng.NextDouble() < streamRatio;
                double start = clock.Elapsed.TotalSeconds;
                double unix = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0;
                var reply = await OneAsync(http, stream, prompt, maxTokens, timeout: timeout);
                lock (results) results.Add(new Result(c, i, stream, start, clock.Elapsed.TotalSeconds, unix, reply.Outcome, reply.Detail, reply.Tokens));
                if (backoff.After(reply) is { } wait)
                {
                    // A backoff that reaches past the run's end ends this client: it waited out the rest and, the timer
                    // firing a hair early, sent one more request at the very end (found by the backoff test's gaps).
                    var left = end - clock.Elapsed;
                    if (wait >= left) break;
                    await Task.Delay(wait);
                }
            }
        })).ToArray();
        await Task.WhenAll(workers);

        results.Sort((x, y) => x.Start.CompareTo(y.Start));
        if (logPath is not null)
            await File.WriteAllLinesAsync(logPath, results.Select(r => JsonSerializer.Serialize(r)));

        o.WriteLine($"# load against {url}");
        o.WriteLine();
        o.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{clients} clients for {duration:0.#} s, {streamRatio:P0} streaming, prompt \"{prompt}\", max_tokens {maxTokens} (ignore_eos: a complete answer has exactly that many tokens)"));
        o.WriteLine();
        o.WriteLine("| second | started | ok | http_error | sse_error | io_error | timeout | silent_truncation |");
        o.WriteLine("|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var g in results.GroupBy(r => (int)r.Start).OrderBy(g => g.Key))
            o.WriteLine($"| {g.Key} | {g.Count()} | {Count(g, "ok")} | {Count(g, "http_error")} | {Count(g, "sse_error")} | {Count(g, "io_error")} | {Count(g, "timeout")} | {Count(g, "silent_truncation")} |");
        o.WriteLine();
        foreach (var kind in new[] { false, true })
        {
            var k = results.Where(r => r.Stream == kind).ToList();
            o.WriteLine($"- {(kind ? "streaming" : "non-streaming")}: {k.Count} requests, {Count(k, "ok")} ok, {Count(k, "http_error")} http_error, {Count(k, "sse_error")} sse_error, {Count(k, "io_error")} io_error, {Count(k, "timeout")} timeout, {Count(k, "silent_truncation")} silent_truncation");
        }
        foreach (var r in results.Where(r => r.Outcome != "ok"))
            o.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  - t={r.Start:F2}–{r.End:F2} s client {r.Client} #{r.Index} {(r.Stream ? "stream" : "non-stream")}: {r.Outcome} ({r.Detail}; {r.Tokens} tokens received)"));
        o.WriteLine();
        o.WriteLine($"loadbench-external: total={results.Count} ok={Count(results, "ok")} http_error={Count(results, "http_error")} sse_error={Count(results, "sse_error")} io_error={Count(results, "io_error")} timeout={Count(results, "timeout")} silent_truncation={Count(results, "silent_truncation")}");
        if (Count(results, "silent_truncation") > 0) return 3;
        if (Count(results, "ok") == 0)
        {
            e.WriteLine($"loadbench-external: no request ended ok ({results.Count} sent): is the server at {url} up and serving?");
            return 4;
        }
        return 0;
    }

    /// <summary>What <see cref="OneAsync"/> saw: outcome, detail, tokens (text events for a stream), HTTP status (0: none), seconds to the first text event (NaN: none or not a stream).</summary>
    internal readonly record struct Reply(string Outcome, string Detail, int Tokens, int Status, double FirstTokenSeconds);

    private sealed record Result(int Client, int Index, bool Stream, double Start, double End, double StartUnix, string Outcome, string Detail, int Tokens);

    /// <summary>
    /// How long a client waits after a reply: after a connection that failed outright (io_error with no status: refused,
    /// unreachable) 0.1 s, doubling to 2 s while they go on; nothing after any other reply.
    /// </summary>
    internal sealed class Backoff
    {
        private TimeSpan _next = TimeSpan.FromMilliseconds(100);

        public TimeSpan? After(Reply reply)
        {
            if (reply.Outcome != "io_error" || reply.Status != 0)
            {
                _next = TimeSpan.FromMilliseconds(100);
                return null;
            }
            var wait = _next;
            _next = TimeSpan.FromTicks(Math.Min(_next.Ticks * 2, TimeSpan.FromSeconds(2).Ticks));
            return wait;
        }
    }

    private static int Count(IEnumerable<Result> rs, string outcome) => rs.Count(r => r.Outcome == outcome);

    private static int Int(Dictionary<string, string> a, string key, int fallback) =>
        a.TryGetValue(key, out var v) ? int.Parse(v, CultureInfo.InvariantCulture) : fallback;

    /// <summary>
    /// One completion (or, with <paramref name="chat"/>, a chat completion of one user message) and its outcome (see the
    /// class comment), with what it says, the tokens it received (text events for a stream), the HTTP status (0: none)
    /// and, for a stream, the seconds from sending to the first text event. With <paramref name="disconnectAfter"/> &gt; 0
    /// a stream is dropped after that many text events: outcome <c>disconnected</c>, or its real outcome if it ended
    /// sooner. The connection only closes mid-body, as a client that goes away, when <paramref name="http"/>'s handler
    /// has <c>MaxResponseDrainSize = 0</c>; otherwise the handler quietly reads the rest to reuse the connection.
    /// With <paramref name="timeout"/> &gt; 0 a request with no complete answer by then (headers and body: HttpClient's
    /// own Timeout covers the headers only when the body is read as it comes) ends as <c>timeout</c>.
    /// </summary>
    internal static async Task<Reply> OneAsync(HttpClient http, bool stream, string prompt, int maxTokens, bool chat = false, int disconnectAfter = 0,
        CancellationToken cancellation = default, TimeSpan timeout = default)
    {
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
        if (timeout > TimeSpan.Zero) limit.CancelAfter(timeout);
        var token = limit.Token;
        object? streamOptions = stream ? new { include_usage = true } : null;
        var body = chat
            ? JsonSerializer.Serialize(new { messages = new[] { new { role = "user", content = prompt } }, max_tokens = maxTokens, temperature = 0, ignore_eos = true, stream, stream_options = streamOptions })
            : JsonSerializer.Serialize(new { prompt, max_tokens = maxTokens, temperature = 0, ignore_eos = true, stream, stream_options = streamOptions });
        using var request = new HttpRequestMessage(HttpMethod.Post, chat ? "v1/chat/completions" : "v1/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
        int chunks = 0, status = 0;
        double firstToken = double.NaN;
        var clock = Stopwatch.StartNew();
        try
        {
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, token);
            status = (int)response.StatusCode;
            if (status != 200)
            {
                string text = await response.Content.ReadAsStringAsync(token);
                return new("http_error", $"HTTP {status} {Shorten(text)}", 0, status, firstToken);
            }
            if (!stream)
            {
                string text = await response.Content.ReadAsStringAsync(token);
                try
                {
                    var root = JsonDocument.Parse(text).RootElement;
                    int tokens = root.GetProperty("usage").GetProperty("completion_tokens").GetInt32();
                    var choice = root.GetProperty("choices")[0];
                    string? finish = choice.GetProperty("finish_reason").GetString();
                    string? answer = chat ? choice.GetProperty("message").GetProperty("content").GetString() : choice.GetProperty("text").GetString();
                    if (tokens == maxTokens && finish == "length" && string.IsNullOrEmpty(answer) && maxTokens >= 2)
                        return new("silent_truncation", $"200 with usage {tokens} but no text", tokens, status, firstToken);
                    return tokens == maxTokens && finish == "length"
                        ? new("ok", "", tokens, status, firstToken)
                        : new("silent_truncation", $"200 with {tokens} tokens, finish_reason {finish}", tokens, status, firstToken);
                }
                catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or IndexOutOfRangeException)
                {
                    return new("silent_truncation", $"200 with an incomplete body ({text.Length} chars): {e.GetType().Name}", 0, status, firstToken);
                }
            }
            await using var s = await response.Content.ReadAsStreamAsync(token);
            int usage = -1;
            string? finishReason = null;
            bool done = false;
            try
            {
                await foreach (var e in SseParser.Create(s).EnumerateAsync(token))
                {
                    if (e.Data == "[DONE]")
                    {
                        done = true;
                        break;
                    }
                    var root = JsonDocument.Parse(e.Data).RootElement;
                    if (root.TryGetProperty("error", out var error)) return new("sse_error", $"error event: {Shorten(error.ToString())}", chunks, status, firstToken);
                    if (root.TryGetProperty("usage", out var u) && u.ValueKind == JsonValueKind.Object) usage = u.GetProperty("completion_tokens").GetInt32();
                    var choices = root.GetProperty("choices");
                    if (choices.GetArrayLength() == 0) continue;
                    if (choices[0].TryGetProperty("finish_reason", out var f) && f.ValueKind == JsonValueKind.String) finishReason = f.GetString();
                    var part = chat ? (choices[0].TryGetProperty("delta", out var d) && d.TryGetProperty("content", out var c) ? c : default) : choices[0].GetProperty("text");
                    if (part.ValueKind == JsonValueKind.String && part.GetString() is { Length: > 0 })
                    {
                        if (chunks++ == 0) firstToken = clock.Elapsed.TotalSeconds;
                        if (disconnectAfter > 0 && chunks >= disconnectAfter) return new("disconnected", $"dropped after {chunks} text events", chunks, status, firstToken);
                    }
                }
            }
            catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or IndexOutOfRangeException)
            {
                return new("silent_truncation", $"an event that is not a completion chunk after {chunks} text events: {e.GetType().Name}", chunks, status, firstToken);
            }
            if (!done) return new("silent_truncation", $"the stream ended cleanly without [DONE] after {chunks} text events", chunks, status, firstToken);
            if (usage == maxTokens && finishReason == "length" && chunks == 0 && maxTokens >= 2)
                return new("silent_truncation", $"[DONE] after usage {usage} but no text event", chunks, status, firstToken);
            return usage == maxTokens && finishReason == "length"
                ? new("ok", "", usage, status, firstToken)
                : new("silent_truncation", $"[DONE] after usage {usage}, finish_reason {finishReason}", chunks, status, firstToken);
        }
        catch (OperationCanceledException) when (limit.IsCancellationRequested && !cancellation.IsCancellationRequested)
        {
            return new("timeout", string.Create(CultureInfo.InvariantCulture, $"no complete answer within {timeout.TotalSeconds:0.###} s ({chunks} text events)"), chunks, status, firstToken);
        }
        catch (Exception e) when ((e is HttpRequestException or IOException or TaskCanceledException) && !cancellation.IsCancellationRequested)
        {
            return new("io_error", Describe(e), chunks, status, firstToken);
        }
    }

    /// <summary>An exception and its innermost cause, shortened, for a one-line outcome detail.</summary>
    internal static string Describe(Exception e)
    {
        var inner = e;
        while (inner.InnerException is not null) inner = inner.InnerException;
        return $"{e.GetType().Name}: {Shorten(e.Message)}{(inner != e ? $" ({Shorten(inner.Message)})" : "")}";
    }

    internal static string Shorten(string s)
    {
        s = s.ReplaceLineEndings(" ");
        return s.Length <= 160 ? s : s[..160] + "…";
    }
}
