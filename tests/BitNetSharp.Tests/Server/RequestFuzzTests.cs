using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using CsCheck;

namespace BitNetSharp.Tests.Server;

/// <summary>
/// Request fuzzing over real sockets (CsCheck generators): valid requests of every route, mutated (bit flips,
/// truncation, inserted bytes, any JSON value swapped for another type, huge numbers, NaN strings, deep nesting,
/// invalid UTF-8, duplicate keys), sent with random headers (content types, Content-Length too short or too long,
/// chunked framing good and broken, bad authorization, traceparent garbage), paths and methods. Every answer must be
/// below 500 and arrive within <see cref="CaseTimeout"/>, and afterwards the server still answers /health and a
/// completion. CI runs <see cref="DefaultCases"/> cases from a fixed seed; BITNET_FUZZ_CASES=N runs N more from
/// random seeds with shrinking (BITNET_FUZZ_SEED replays a reported seed first).
/// </summary>
public class RequestFuzzTests
{
    private const string Key = "fuzz-key";
    private const int DefaultCases = 500;
    private static readonly TimeSpan CaseTimeout = TimeSpan.FromSeconds(15);
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static readonly (string Path, string Json)[] Bases =
    [
        ("/v1/completions", """{"model":"tiny-chat","prompt":"Once upon a time","max_tokens":3,"temperature":0.7,"top_p":0.9,"top_k":20,"min_p":0.05,"stop":["\n","zz"],"seed":7,"logprobs":2,"n":2,"echo":false,"logit_bias":{"5":1.5,"7":-100},"repetition_penalty":1.1,"user":"u1"}"""),
        ("/v1/completions", """{"prompt":["hi",[1,2,3]],"max_tokens":2,"stream":true,"stream_options":{"include_usage":true},"ignore_eos":true}"""),
        ("/v1/chat/completions", """{"model":"tiny-chat","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_tokens":3,"logprobs":true,"top_logprobs":2,"stop":"x","presence_penalty":0.5,"frequency_penalty":0.1,"response_format":{"type":"text"}}"""),
        ("/v1/chat/completions", """{"messages":[{"role":"user","content":"hello"},{"role":"assistant","content":"hi"},{"role":"user","content":"more"}],"max_completion_tokens":2,"stream":true,"temperature":0}"""),
        ("/tokenize", """{"content":"Once upon a time","add_special":true,"parse_special":false,"with_pieces":true}"""),
        ("/detokenize", """{"tokens":[1,2,3,200,259]}"""),
    ];

    /// <summary>JSON values swapped in anywhere: every type, extremes, and text parsers trip over.</summary>
    private static readonly string[] Values =
    [
        "null", "true", "false", "0", "-0", "1", "-1", "1.5", "2.0", "1e400", "-1e400", "1e-400", "9223372036854775807", "9223372036854775808",
        "-9223372036854775809", "4294967296", "2147483648", "123456789012345678901234567890", "\"\"", "\"NaN\"", "\"Infinity\"", "\"-Infinity\"",
        "\"1e400\"", "\"\\ud800\"", "\"\\udc00\\ud800\"", "\"\\u0000\"", "\"😀 émoji ∑ 中文\"", "\"<|endoftext|>\"", "\"<|im_start|>\"", "[]", "{}", "[null]", "[{}]",
        "{\"type\":\"text\",\"text\":\"x\"}", "[{\"type\":\"image_url\",\"image_url\":{\"url\":\"file:///etc/passwd\"}}]", "\"/etc/passwd\"",
        "[1,2,3]", "[-1]", "[262]", "[2147483647]", "[1.5]", "[\"a\",\"b\"]", "{\"role\":\"user\",\"content\":\"x\"}", "\"tiny-chat\"",
        "\"" + new string('x', 20_000) + "\"", "[" + string.Join(",", Enumerable.Range(0, 3000).Select(i => i % 250)) + "]",
        new string('[', 40) + new string(']', 40), new string('[', 5000) + new string(']', 5000),
    ];

    private static readonly string[] Methods = ["POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "FOO", "TRACE"];

    private static readonly string[] OtherPaths =
    [
        "/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize", "/v1/models", "/health", "/metrics", "/dashboard", "/",
        "/v1/completions/", "/V1/COMPLETIONS", "//v1//completions", "/v1/completions/../models", "/v1/%2e%2e/models", "/v1/completions%00",
        "/v1/completions?stream=true&x=%zz", "/nothing/here", "/v1/models/tiny-chat", "/metrics?format=%FF%FE", "/dashboard/../../etc/passwd",
        "/" + new string('a', 9000), "*", "/%C0%AE%C0%AE/", "/v1/completions#frag",
    ];

    private static readonly string[] Traceparents =
    [
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01", "--", "00-0AF7651916CD43DD8448EB211C80319C-x-01", new string('-', 4000), "é-ü-ß-∑",
    ];

    /// <summary>How the body is framed on the wire.</summary>
    private enum Framing { ContentLength, NoLength, ShortLength, LongLength, Chunked, BrokenChunked, DuplicateLength }

    private sealed record FuzzCase(string Method, string Path, string[] Headers, byte[] Body, Framing Framing, string Mutation)
    {
        public override string ToString()
        {
            string body = Encoding.UTF8.GetString(Body);
            return $"{Method} {(Path.Length > 120 ? Path[..120] + "…" : Path)} [{Framing}; {Mutation}] headers: {string.Join(" | ", Headers.Select(h => h.Length > 100 ? h[..100] + "…" : h))} body ({Body.Length} bytes): {(body.Length > 300 ? body[..300] + "…" : body)}";
        }
    }

    private static readonly Gen<FuzzCase> Cases =
        Gen.Select(Gen.Int[0, Bases.Length - 1], Gen.Int[0, 12], Gen.Int[0, 1 << 20], Gen.Int[0, Values.Length - 1], Gen.Byte.Array[1, 12],
                   Gen.Int[0, 23], Gen.Int[0, 12], Gen.Int[0, 11], Gen.Int[0, 1 << 20], Build);

    [Fact]
    public async Task MutatedRequestsGetClientErrorsNeverServerErrorsAndTheServerKeepsServing()
    {
        // A low max_tokens limit keeps the generations short (a request without max_tokens gets the limit in chat).
        await using var s = await TestServer.StartAsync(o => o with { ApiKey = Key, WarmupRequests = 0, MaxTokensLimit = 8 });
        var endpoint = new IPEndPoint(IPAddress.Loopback, s.Server.Address.Port);
        var statuses = new Dictionary<int, int>();
        var slowest = new List<(TimeSpan Time, string Case)>();
        async Task Check(FuzzCase c)
        {
            var sw = System.Diagnostics.Stopwatch.StartNew();
            var (status, response) = await SendForAnswerAsync(endpoint, c);
            lock (slowest)
            {
                slowest.Add((sw.Elapsed, c.ToString()));
                if (slowest.Count > 3) slowest.Remove(slowest.MinBy(x => x.Time));
            }
            lock (statuses) statuses[status] = statuses.GetValueOrDefault(status) + 1;
            if (status >= 500) throw new Xunit.Sdk.XunitException($"{status} for {c}");
            // A stream's 200 is sent before generation ends: an exception after it aborts the connection, which the status
            // alone cannot show. A stream must end as the protocol says: [DONE], then the chunked body's end.
            int head = response.IndexOf("\r\n\r\n", StringComparison.Ordinal);
            if (status == 200 && head > 0 && response[..head].Contains("text/event-stream", StringComparison.OrdinalIgnoreCase)
                && !(response.Contains("data: [DONE]", StringComparison.Ordinal) && response.EndsWith("\r\n0\r\n\r\n", StringComparison.Ordinal)))
                throw new Xunit.Sdk.XunitException($"a stream cut short (no [DONE] and end of body) for {c}:\n{response[Math.Max(0, response.Length - 400)..]}");
        }

        // The fixed-seed run: the same cases on every machine. Every failure is reported, not just the first.
        var pcg = new PCG(1, 20261203);
        var failures = new List<string>();
        for (int i = 0; i < DefaultCases; i++)
        {
            var c = Cases.Generate(pcg, null, out _);
            try
            {
                await Check(c);
            }
            catch (Exception e)
            {
                failures.Add($"case {i}: {(e is Xunit.Sdk.XunitException ? "" : e.GetType().Name + " ")}{e.Message}");
            }
        }
        Assert.True(failures.Count == 0, $"{failures.Count} of {DefaultCases} cases failed:\n" + string.Join("\n", failures));
        // More from random seeds, with CsCheck's shrinking to a smallest failing case.
        if (int.TryParse(Environment.GetEnvironmentVariable("BITNET_FUZZ_CASES"), CultureInfo.InvariantCulture, out int more) && more > 0)
            await Cases.SampleAsync(Check, seed: Environment.GetEnvironmentVariable("BITNET_FUZZ_SEED"), iter: more, threads: 1, print: c => c.ToString());

        foreach (var (time, c) in slowest.OrderByDescending(x => x.Time)) TestContext.Current.TestOutputHelper?.WriteLine($"{time.TotalMilliseconds:F0} ms: {c}");
        TestContext.Current.TestOutputHelper?.WriteLine("fuzz statuses: " + string.Join(", ", statuses.OrderBy(p => p.Key).Select(p => $"{(p.Key < 0 ? "closed" : p.Key)}×{p.Value}")));
        Assert.Contains(statuses.Keys, k => k == 200); // the valid cases really were served
        Assert.Equal(HttpStatusCode.OK, (await s.Http.GetAsync("health", Ct)).StatusCode);
        var (ok, body, _) = await s.PostAsync("v1/completions", new { prompt = "Once upon a time", max_tokens = 3 });
        Assert.Equal(HttpStatusCode.OK, ok);
        Assert.Equal("text_completion", body.GetProperty("object").GetString());
    }

    /// <summary>What the fuzzer found answered with 500, each now a 400 naming the field.</summary>
    [Theory]
    [InlineData("v1/completions", """{"prompt":["hi"],"max_tokens":2,"prompt":"\ud800"}""", "prompt")] // a lone surrogate escape (the fuzzer's first find)
    [InlineData("v1/chat/completions", """{"messages":[{"role":"user","content":"a\udc00b"}],"max_tokens":2}""", "messages[0].content")]
    [InlineData("v1/completions", """{"prompt":"hi","stop":["x","\udfff\ud800"],"max_tokens":2}""", "stop[1]")]
    [InlineData("tokenize", """{"content":"x","\ud800":1}""", null)]
    public async Task LoneSurrogateEscapesAreA400(string path, string body, string? param)
    {
        await using var s = await TestServer.StartAsync(o => o with { WarmupRequests = 0 });
        var (status, json, _) = await s.PostAsync(path, body);
        Assert.True(status == HttpStatusCode.BadRequest, $"{(int)status} {json}");
        var error = json.GetProperty("error");
        Assert.Equal("invalid_unicode", error.GetProperty("code").GetString());
        Assert.Equal(param, error.GetProperty("param").GetString());
        Assert.Contains("surrogate", error.GetProperty("message").GetString());
        // A valid pair is text.
        var (ok, _, _) = await s.PostAsync("v1/completions", """{"prompt":"smile \ud83d\ude00","max_tokens":2}""");
        Assert.Equal(HttpStatusCode.OK, ok);
    }

    /// <summary>
    /// Broken chunked framing (a chunk size that is no hex number): Kestrel throws BadHttpRequestException from the
    /// body read, which the catch-all turned into a 500; it is the client's 400.
    /// </summary>
    [Fact]
    public async Task BrokenChunkedFramingIsA400()
    {
        await using var s = await TestServer.StartAsync(o => o with { WarmupRequests = 0 });
        var c = new FuzzCase("POST", "/v1/completions", ["Content-Type: application/json"], "{\"prompt\":\"hi\"}"u8.ToArray(), Framing.BrokenChunked, "chunk size zz");
        var (status, response) = await SendForAnswerAsync(new IPEndPoint(IPAddress.Loopback, s.Server.Address.Port), c);
        Assert.True(status == 400, $"{status}: {response}");
        Assert.Contains("\"bad_request\"", response);
        Assert.Equal(HttpStatusCode.OK, (await s.Http.GetAsync("health", Ct)).StatusCode);
    }

    /// <summary>
    /// The body limit counts the body, not a chunked body's framing: 40 KB sent in 1-byte chunks (240 KB on the wire)
    /// got 413 from a 64 KiB limit, while the same body with a Content-Length was taken. A decoded body past the limit is
    /// still a 413, chunked or not.
    /// </summary>
    [Fact]
    public async Task TheBodyLimitCountsTheDecodedBodyOfAChunkedRequest()
    {
        await using var s = await TestServer.StartAsync(o => o with { WarmupRequests = 0 });
        var endpoint = new IPEndPoint(IPAddress.Loopback, s.Server.Address.Port);
        async Task<string> Chunked(int textLength, int chunk, bool close = true)
        {
            byte[] body = Encoding.UTF8.GetBytes("{\"content\":\"" + new string('a', textLength) + "\"}");
            using var client = new TcpClient();
            await client.ConnectAsync(endpoint, Ct);
            var stream = client.GetStream();
            var wire = new MemoryStream();
            wire.Write(Encoding.ASCII.GetBytes("POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n" + (close ? "Connection: close\r\n" : "") + "\r\n"));
            for (int i = 0; i < body.Length; i += chunk)
            {
                int n = Math.Min(chunk, body.Length - i);
                wire.Write(Encoding.ASCII.GetBytes(n.ToString("x", CultureInfo.InvariantCulture) + "\r\n"));
                wire.Write(body, i, n);
                wire.Write("\r\n"u8);
            }
            wire.Write("0\r\n\r\n"u8);
            await stream.WriteAsync(wire.ToArray(), Ct);
            using var reader = new StreamReader(stream);
            return await reader.ReadToEndAsync(Ct);
        }
        string small = await Chunked(40_000, 1);
        Assert.StartsWith("HTTP/1.1 200", small);
        // Asked to keep the connection, the server still closes it after a 413 (the rest of the body is not read; Kestrel
        // drained a chunked one up to its raised bound, 8× the limit): the read ends.
        string large = await Chunked(70_000, 65_536, close: false).WaitAsync(TimeSpan.FromSeconds(30), Ct);
        Assert.StartsWith("HTTP/1.1 413", large);
        Assert.Contains("Connection: close", large, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("request_too_large", large);
        Assert.Contains("(65536 bytes)", large);
    }

    /// <summary>
    /// A connection that sends nothing is closed after the first-byte timeout (10 s by default): Kestrel's 130 s let a
    /// few hundred silent sockets hold every --max-connections slot, /health included. A connection that has made a
    /// request may idle between requests for Kestrel's keep-alive time, as proxies expect.
    /// </summary>
    [Fact]
    public async Task ASilentConnectionIsClosedAfterTheFirstByteTimeout()
    {
        Assert.Equal(TimeSpan.FromSeconds(10), new BitNetSharp.Server.ServerOptions { LoadModel = () => throw new NotSupportedException() }.FirstByteTimeout);
        await using var s = await TestServer.StartAsync(o => o with { WarmupRequests = 0, FirstByteTimeout = TimeSpan.FromSeconds(2) });
        // A kept-alive connection idle past the first-byte timeout still serves its next request.
        using (var kept = new TcpClient())
        {
            await kept.ConnectAsync(new IPEndPoint(IPAddress.Loopback, s.Server.Address.Port), Ct);
            var stream = kept.GetStream();
            byte[] get = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"u8.ToArray();
            var reader = new StreamReader(stream);
            await stream.WriteAsync(get, Ct);
            Assert.StartsWith("HTTP/1.1 200", await reader.ReadLineAsync(Ct));
            await Task.Delay(TimeSpan.FromSeconds(4), Ct);
            await stream.WriteAsync(get, Ct);
            string? line;
            do line = await reader.ReadLineAsync(Ct); while (line is not null && !line.StartsWith("HTTP/1.1", StringComparison.Ordinal));
            Assert.StartsWith("HTTP/1.1 200", line);
        }
        using var client = new TcpClient();
        await client.ConnectAsync(new IPEndPoint(IPAddress.Loopback, s.Server.Address.Port), Ct);
        var watch = System.Diagnostics.Stopwatch.StartNew();
        var buffer = new byte[64];
        int read;
        try
        {
            read = await client.GetStream().ReadAsync(buffer, Ct).AsTask().WaitAsync(TimeSpan.FromSeconds(60), Ct);
        }
        catch (IOException)
        {
            read = 0; // reset rather than closed: closed all the same
        }
        Assert.Equal(0, read);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(30), $"closed after {watch.Elapsed.TotalSeconds:F1} s");

        // A silent socket does not hold the server's stop for its timeout (the middleware heard only the socket's close).
        var patient = await TestServer.StartAsync(o => o with { WarmupRequests = 0, FirstByteTimeout = TimeSpan.FromSeconds(120) });
        using var silent = new TcpClient();
        await silent.ConnectAsync(new IPEndPoint(IPAddress.Loopback, patient.Server.Address.Port), Ct);
        await Task.Delay(300, Ct);
        var stop = System.Diagnostics.Stopwatch.StartNew();
        await patient.DisposeAsync();
        Assert.True(stop.Elapsed < TimeSpan.FromSeconds(15), $"the stop took {stop.Elapsed.TotalSeconds:F1} s with a silent socket open");
    }

    private static FuzzCase Build(int baseIndex, int mutation, int position, int value, byte[] noise, int headerKind, int pathKind, int methodKind, int extra)
    {
        var (path, json) = Bases[baseIndex];
        var (body, described) = Mutate(Encoding.UTF8.GetBytes(json), mutation, position, value, noise, extra);
        // Mostly the base's own route and POST, so most mutations reach the handlers.
        if (pathKind >= 9) path = OtherPaths[(position ^ extra) % OtherPaths.Length];
        string method = methodKind >= 9 ? Methods[(extra + methodKind) % Methods.Length] : "POST";
        var headers = new List<string>();
        var framing = Framing.ContentLength;
        string contentType = "application/json";
        string? authorization = "Bearer " + Key;
        switch (headerKind) // 16 and up: the right headers
        {
            case 1: contentType = ""; break;
            case 2: contentType = "text/plain"; break;
            case 3: contentType = "application/json; charset=iso-8859-1"; break;
            case 4: contentType = "%%%/;;;=\u00e9"; break;
            case 5: authorization = "Bearer wrong"; break;
            case 6: authorization = null; break;
            case 7: authorization = (extra % 2 == 0 ? "Basic " : "Bearer ") + new string('k', 1 + extra % 9000); break;
            case 8: framing = Framing.ShortLength; break;
            case 9: framing = Framing.LongLength; break;
            case 10: framing = Framing.Chunked; break;
            case 11: framing = Framing.BrokenChunked; break;
            case 12: headers.Add("traceparent: " + Traceparents[extra % Traceparents.Length]); headers.Add("Accept: text/event-stream"); break;
            case 13: framing = Framing.DuplicateLength; break;
            case 14: framing = Framing.NoLength; break;
            case 15: headers.Add("Expect: 100-continue"); headers.Add("X-Request-Id: " + new string('r', extra % 3000)); break;
        }
        if (contentType.Length > 0) headers.Add("Content-Type: " + contentType);
        if (authorization is not null) headers.Add("Authorization: " + authorization);
        return new FuzzCase(method, path, [.. headers], body, framing, described);
    }

    private static (byte[] Body, string Mutation) Mutate(byte[] body, int mutation, int position, int value, byte[] noise, int extra)
    {
        int at = body.Length == 0 ? 0 : position % body.Length;
        switch (mutation)
        {
            case 0:
            case 1:
                return (body, "valid");
            case 2:
                body[at] ^= (byte)(1 << (extra % 8));
                return (body, $"bit {extra % 8} of byte {at} flipped");
            case 3:
                return (body[..at], $"truncated at {at}");
            case 4:
                return ([.. body[..at], .. noise, .. body[at..]], $"{noise.Length} random bytes at {at}");
            case 5:
                return (Encoding.UTF8.GetBytes(SwapNode(body, position, Values[value], out string where)), $"{where} = {Short(Values[value])}");
            case 6:
                return (Encoding.UTF8.GetBytes(SwapNode(body, position, null, out string removed)), $"{removed} removed");
            case 7:
            {
                // A duplicate key: System.Text.Json keeps the last one.
                string text = Encoding.UTF8.GetString(body);
                return (Encoding.UTF8.GetBytes(text[..^1] + ",\"" + FirstKey(text) + "\":" + Values[value] + "}"), $"duplicate key = {Short(Values[value])}");
            }
            case 8:
            {
                int depth = 1 + position % 3000;
                return (Encoding.UTF8.GetBytes("{\"prompt\":" + new string('[', depth) + "1" + new string(']', depth) + ",\"messages\":" + new string('[', depth) + new string(']', depth) + "}"), $"nesting {depth}");
            }
            case 9:
            {
                // Invalid UTF-8 inside the JSON text (overlong, lone continuation, surrogate half, truncated sequence).
                byte[][] bad = [[0xC0, 0xAE], [0x80], [0xED, 0xA0, 0x80], [0xF0, 0x9F, 0x98], [0xFF], [0xC3]];
                int quote = Array.IndexOf(body, (byte)'"', at);
                int insertAt = quote < 0 ? at : quote + 1;
                var b = bad[extra % bad.Length];
                return ([.. body[..insertAt], .. b, .. body[insertAt..]], $"invalid UTF-8 {Convert.ToHexString(b)} at {insertAt}");
            }
            case 10:
            {
                var node = JsonNode.Parse(body)!.AsObject();
                node["x" + (extra % 100).ToString(CultureInfo.InvariantCulture)] = Placeholder;
                return (Encoding.UTF8.GetBytes(node.ToJsonString().Replace(PlaceholderJson, Values[value], StringComparison.Ordinal)), $"unknown field = {Short(Values[value])}");
            }
            case 11:
                return (Encoding.UTF8.GetBytes(Values[value]), $"body = {Short(Values[value])}");
            default:
                return ([], "empty body");
        }
    }

    /// <summary>Replaces (or with null, removes) one node of the JSON tree, chosen by <paramref name="pick"/>, by <paramref name="value"/>.</summary>
    private static string SwapNode(byte[] json, int pick, string? value, out string where)
    {
        var root = JsonNode.Parse(json)!;
        var nodes = new List<JsonNode>();
        void Walk(JsonNode? n)
        {
            if (n is null) return;
            if (n != root) nodes.Add(n);
            if (n is JsonObject o) foreach (var p in o) Walk(p.Value);
            else if (n is JsonArray a) foreach (var e in a) Walk(e);
        }
        Walk(root);
        var target = nodes[pick % nodes.Count];
        where = target.GetPath();
        switch (target.Parent)
        {
            case JsonObject o:
                string name = target.GetPropertyName();
                if (value is null) o.Remove(name);
                else o[name] = Placeholder;
                break;
            case JsonArray a:
                int i = target.GetElementIndex();
                if (value is null) a.RemoveAt(i);
                else a[i] = Placeholder;
                break;
        }
        // The value goes in as text: JsonNode would refuse the deepest nestings and rewrite the extreme numbers.
        return value is null ? root.ToJsonString() : root.ToJsonString().Replace(PlaceholderJson, value, StringComparison.Ordinal);
    }

    private const string Placeholder = "@@fuzz@@";
    private const string PlaceholderJson = "\"@@fuzz@@\"";

    private static string FirstKey(string json)
    {
        int a = json.IndexOf('"') + 1;
        return json[a..json.IndexOf('"', a)];
    }

    private static string Short(string s) => s.Length > 40 ? s[..40] + $"…({s.Length} chars)" : s;

    /// <summary>The response after any interim 1xx answers (100 Continue).</summary>
    private static string FinalResponse(string text)
    {
        while (text.StartsWith("HTTP/1.1 1", StringComparison.Ordinal) && text.IndexOf("\r\n\r\n", StringComparison.Ordinal) is > 0 and var end)
            text = text[(end + 4)..];
        return text;
    }

    /// <summary>Whether the bytes so far hold a whole final answer: headers and a body as long as its Content-Length or chunked to its end.</summary>
    private static bool Complete(MemoryStream response)
    {
        string text = FinalResponse(Encoding.Latin1.GetString(response.GetBuffer(), 0, (int)response.Length));
        int end = text.IndexOf("\r\n\r\n", StringComparison.Ordinal);
        if (end < 0 || text.StartsWith("HTTP/1.1 1", StringComparison.Ordinal)) return false;
        string head = text[..end];
        int bodyLength = text.Length - end - 4;
        var length = System.Text.RegularExpressions.Regex.Match(head, @"(?im)^content-length: *(\d+)");
        if (length.Success) return bodyLength >= long.Parse(length.Groups[1].Value, CultureInfo.InvariantCulture);
        if (System.Text.RegularExpressions.Regex.IsMatch(head, @"(?im)^transfer-encoding: *chunked")) return text.EndsWith("\r\n0\r\n\r\n", StringComparison.Ordinal);
        return false;
    }

    /// <summary>
    /// Sends the case on a fresh connection (Connection: close) and reads the answer to its end: the status and the
    /// answer's text, or status -1 when the server closed the connection without one (only allowed where the request
    /// itself was cut short).
    /// </summary>
    private static async Task<(int Status, string Response)> SendForAnswerAsync(IPEndPoint endpoint, FuzzCase c)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        timeout.CancelAfter(CaseTimeout);
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            await socket.ConnectAsync(endpoint, timeout.Token);
            var head = new StringBuilder();
            head.Append(CultureInfo.InvariantCulture, $"{c.Method} {c.Path} HTTP/1.1\r\nHost: 127.0.0.1:{endpoint.Port}\r\nConnection: close\r\n");
            foreach (var h in c.Headers) head.Append(h).Append("\r\n");
            byte[] body = c.Body;
            bool halfClose = false;
            switch (c.Framing)
            {
                case Framing.ContentLength: head.Append(CultureInfo.InvariantCulture, $"Content-Length: {body.Length}\r\n"); break;
                case Framing.ShortLength: head.Append(CultureInfo.InvariantCulture, $"Content-Length: {body.Length / 2}\r\n"); break;
                case Framing.LongLength: head.Append(CultureInfo.InvariantCulture, $"Content-Length: {body.Length + 100}\r\n"); halfClose = true; break;
                case Framing.DuplicateLength: head.Append(CultureInfo.InvariantCulture, $"Content-Length: {body.Length}\r\nContent-Length: {body.Length + 1}\r\n"); break;
                case Framing.Chunked:
                case Framing.BrokenChunked:
                    head.Append("Transfer-Encoding: chunked\r\n");
                    var chunked = new MemoryStream();
                    int half = body.Length / 2;
                    foreach (var part in new[] { body[..half], body[half..] })
                    {
                        if (part.Length == 0) continue;
                        chunked.Write(Encoding.ASCII.GetBytes(part.Length.ToString("x", CultureInfo.InvariantCulture) + "\r\n"));
                        chunked.Write(part);
                        chunked.Write("\r\n"u8);
                    }
                    if (c.Framing == Framing.Chunked) chunked.Write("0\r\n\r\n"u8);
                    else chunked.Write("zz\r\n"u8);
                    body = chunked.ToArray();
                    break;
            }
            head.Append("\r\n");
            await socket.SendAsync(Encoding.UTF8.GetBytes(head.ToString()), SocketFlags.None, timeout.Token);
            try
            {
                await socket.SendAsync(body, SocketFlags.None, timeout.Token);
                if (halfClose) socket.Shutdown(SocketShutdown.Send);
            }
            catch (SocketException)
            {
                // The server answered (e.g. 413 or 431) and closed before reading everything: read that answer.
            }
            var response = new MemoryStream();
            var buffer = new byte[16 * 1024];
            while (true)
            {
                int n;
                try
                {
                    n = await socket.ReceiveAsync(buffer, SocketFlags.None, timeout.Token);
                }
                catch (SocketException) when (response.Length > 0 || halfClose || c.Framing is Framing.ShortLength or Framing.NoLength)
                {
                    break; // reset after the answer, or a request the client cut short
                }
                if (n == 0) break;
                if (response.Length < 1 << 20) response.Write(buffer, 0, n);
                // A complete answer is enough: when the handler left a body unread (a 404 for a chunked upload whose
                // framing never ends), Kestrel keeps the connection to drain it until its body timeout.
                if (Complete(response)) break;
            }
            if (response.Length == 0)
            {
                if (halfClose) return (-1, "");
                throw new Xunit.Sdk.XunitException($"no answer for {c}");
            }
            string text = FinalResponse(Encoding.Latin1.GetString(response.GetBuffer(), 0, (int)response.Length));
            // The first answer on the connection (a short Content-Length leaves the rest to be parsed as a second request).
            if (!text.StartsWith("HTTP/1.1 ", StringComparison.Ordinal) || !int.TryParse(text.AsSpan(9, 3), CultureInfo.InvariantCulture, out int status))
                throw new Xunit.Sdk.XunitException($"not an HTTP answer ({text}) for {c}");
            return (status, Encoding.UTF8.GetString(response.GetBuffer(), 0, (int)response.Length));
        }
        catch (OperationCanceledException) when (!Ct.IsCancellationRequested)
        {
            throw new Xunit.Sdk.XunitException($"no complete answer within {CaseTimeout.TotalSeconds} s for {c}");
        }
    }
}
