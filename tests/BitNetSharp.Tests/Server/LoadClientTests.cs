using System.Text.Json;
using System.Diagnostics;
using System.Net;
using System.Text;
using BitNetSharp.LoadBench;
using BitNetSharp.Tests.Formats;

namespace BitNetSharp.Tests.Server;

/// <summary>
/// The load client of bench/BitNetSharp.LoadBench (ExternalLoad.OneAsync, used by `--url` and the soak) against canned
/// answers: a server that sends its headers and stalls, a 200 that reports max_tokens but carries no text, and no
/// server at all. Each is a way a broken server or balancer passed, or held the benchmark for ever.
/// </summary>
public sealed class LoadClientTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>A body whose first bytes arrive and whose rest never does (a stalled server or a frozen balancer).</summary>
    private sealed class StallingStream(byte[] first) : Stream
    {
        private int _sent;

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            if (_sent < first.Length)
            {
                int n = Math.Min(buffer.Length, first.Length - _sent);
                first.AsMemory(_sent, n).CopyTo(buffer);
                _sent += n;
                return n;
            }
            await Task.Delay(Timeout.Infinite, cancellationToken);
            return 0;
        }

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException("read asynchronously");
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }

    private sealed class CannedHandler(Func<HttpContent> content) : HttpMessageHandler
    {
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken) =>
            Task.FromResult(new HttpResponseMessage(HttpStatusCode.OK) { Content = content() });
    }

    private static HttpClient Client(Func<HttpContent> content) =>
        new(new CannedHandler(content)) { BaseAddress = new Uri("http://127.0.0.1:1/"), Timeout = Timeout.InfiniteTimeSpan };

    private static HttpContent Text(string body) => new StringContent(body, Encoding.UTF8, "application/json");

    /// <summary>
    /// Headers, one text event, then nothing: the request ends as <c>timeout</c> at the request timeout. HttpClient's
    /// own Timeout covers only the headers when the body is read as it comes, so this held the soak for ever.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task AStalledBodyEndsAsATimeout(bool stream)
    {
        var first = stream ? "data: {\"choices\":[{\"text\":\" Once\",\"finish_reason\":null}]}\n\n" : "{\"choices\":[";
        using var http = Client(() => new StreamContent(new StallingStream(Encoding.UTF8.GetBytes(first))));
        var clock = Stopwatch.StartNew();
        // 2 s: the first event must be parsed within the timeout (cold JIT on a loaded 2-core machine can take 300 ms).
        var reply = await ExternalLoad.OneAsync(http, stream, "Once upon a time", 8, cancellation: Ct, timeout: TimeSpan.FromSeconds(2))
            .WaitAsync(TimeSpan.FromSeconds(30), Ct);
        Assert.Equal("timeout", reply.Outcome);
        Assert.Contains("within 2 s", reply.Detail);
        Assert.Equal(stream ? 1 : 0, reply.Tokens);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20));
    }

    /// <summary>The caller's own cancellation is not a timeout: it propagates.</summary>
    [Fact]
    public async Task TheCallersCancellationIsNotATimeout()
    {
        using var http = Client(() => new StreamContent(new StallingStream([])));
        using var cancel = new CancellationTokenSource(TimeSpan.FromMilliseconds(200));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
            ExternalLoad.OneAsync(http, true, "x", 8, cancellation: cancel.Token, timeout: TimeSpan.FromMinutes(5)).WaitAsync(TimeSpan.FromSeconds(30), Ct));
    }

    /// <summary>A 200 that reports max_tokens and finish_reason "length" but carries no text is a silent truncation, streamed or not, completion or chat.</summary>
    [Fact]
    public async Task UsageWithoutTextIsASilentTruncation()
    {
        const string emptyStream = "data: {\"choices\":[{\"text\":\"\",\"finish_reason\":\"length\"}],\"usage\":{\"completion_tokens\":8}}\n\ndata: [DONE]\n\n";
        const string fullStream = "data: {\"choices\":[{\"text\":\" Once\",\"finish_reason\":null}]}\n\ndata: {\"choices\":[{\"text\":\"\",\"finish_reason\":\"length\"}],\"usage\":{\"completion_tokens\":8}}\n\ndata: [DONE]\n\n";
        const string emptyChatStream = "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}],\"usage\":{\"completion_tokens\":8}}\n\ndata: [DONE]\n\n";
        const string emptyBody = "{\"choices\":[{\"text\":\"\",\"finish_reason\":\"length\"}],\"usage\":{\"completion_tokens\":8}}";
        const string nullChat = "{\"choices\":[{\"message\":{\"role\":\"assistant\",\"content\":null},\"finish_reason\":\"length\"}],\"usage\":{\"completion_tokens\":8}}";
        const string fullBody = "{\"choices\":[{\"text\":\" Once upon\",\"finish_reason\":\"length\"}],\"usage\":{\"completion_tokens\":8}}";
        foreach (var (body, stream, chat, expected) in new[]
        {
            (emptyStream, true, false, "silent_truncation"), (emptyChatStream, true, true, "silent_truncation"),
            (emptyBody, false, false, "silent_truncation"), (nullChat, false, true, "silent_truncation"),
            (fullStream, true, false, "ok"), (fullBody, false, false, "ok"),
        })
        {
            using var http = Client(() => Text(body));
            var reply = await ExternalLoad.OneAsync(http, stream, "Once upon a time", 8, chat, cancellation: Ct, timeout: TimeSpan.FromSeconds(30));
            Assert.True(expected == reply.Outcome, $"{body} (stream {stream}, chat {chat}): {reply.Outcome} {reply.Detail}");
        }
    }

    /// <summary>
    /// `--url` against a port nothing listens on: every request is refused, so the run exits 4 (it exited 0: nothing
    /// was silently truncated), and each client backs off instead of sending thousands of refused requests a second.
    /// </summary>
    [Fact]
    public async Task NoServerExitsFourAndTheClientsBackOff()
    {
        using var dir = new TestGguf.TempDirectory();
        string log = dir.File("requests.jsonl");
        var args = new Dictionary<string, string> { ["url"] = "http://127.0.0.1:1/", ["clients"] = "2", ["duration"] = "1.5", ["log"] = log };
        var error = new StringWriter();
        int code = await ExternalLoad.RunAsync(args, TextWriter.Null, error).WaitAsync(TimeSpan.FromSeconds(60), Ct);
        Assert.Equal(4, code);
        Assert.Contains("no request ended ok", error.ToString());
        var lines = File.ReadAllLines(log);
        Assert.NotEmpty(lines);
        Assert.All(lines, l => Assert.Contains("\"io_error\"", l));
        // Each client waits 0.1 s doubling to 2 s after each refused connection before its next request: checked on the
        // log's own times (a count of requests in 1.5 s failed on a loaded 2-core CI host, 15 against at most 14), since
        // a slow machine only lengthens the gaps.
        var byClient = lines.Select(l => JsonDocument.Parse(l).RootElement)
            .GroupBy(r => r.GetProperty("Client").GetInt32());
        foreach (var client in byClient)
        {
            var runs = client.OrderBy(r => r.GetProperty("Index").GetInt32()).ToList();
            for (int i = 0; i + 1 < runs.Count; i++)
            {
                double gap = runs[i + 1].GetProperty("Start").GetDouble() - runs[i].GetProperty("End").GetDouble();
                double wait = Math.Min(0.1 * Math.Pow(2, i), 2);
                Assert.True(gap >= wait - 0.015, $"client {client.Key}: request {i + 1} started {gap:F3} s after request {i} ended; the backoff is {wait:F1} s");
            }
        }
    }

    [Fact]
    public void BackoffDoublesToTwoSecondsAfterRefusalsOnlyAndResets()
    {
        var b = new ExternalLoad.Backoff();
        var refused = new ExternalLoad.Reply("io_error", "Connection refused", 0, 0, double.NaN);
        var waits = Enumerable.Range(0, 7).Select(_ => b.After(refused)!.Value.TotalMilliseconds).ToArray();
        Assert.Equal([100, 200, 400, 800, 1600, 2000, 2000], waits);
        Assert.Null(b.After(new ExternalLoad.Reply("io_error", "reset mid-body", 3, 200, 0.1))); // a broken body is not a dead server
        Assert.Equal(100, b.After(refused)!.Value.TotalMilliseconds);
        Assert.Null(b.After(new ExternalLoad.Reply("ok", "", 8, 200, 0.1)));
    }
}
