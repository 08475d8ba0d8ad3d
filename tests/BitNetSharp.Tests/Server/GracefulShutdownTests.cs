using System.Diagnostics;
using System.Net;
using System.Net.ServerSentEvents;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace BitNetSharp.Tests.Server;

/// <summary>Graceful shutdown: draining (not ready, new generations refused, in-flight ones finish), the deadline, and SIGTERM on a real process.</summary>
public class GracefulShutdownTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static object Stream(int maxTokens) => new { model = TestServer.ModelId, prompt = "Once upon a time", max_tokens = maxTokens, stream = true, ignore_eos = true, temperature = 0 };

    [Fact]
    public async Task DrainingLetsInFlightStreamsFinishAndRefusesNewWork()
    {
        await using var s = await TestServer.StartAsync();
        s.Scheduler.StepGate.Reset(); // hold the engine: the stream stays in flight
        try
        {
            var stream = s.StreamAsync("v1/completions", Stream(5));
            await TestServer.EventuallyAsync(() => Task.FromResult(s.Server.InFlightRequests == 1), "the stream to be in flight");
            var drain = s.Server.DrainAsync(TimeSpan.FromSeconds(30), Ct);

            var health = await s.Http.GetAsync("health", Ct);
            Assert.Equal(HttpStatusCode.ServiceUnavailable, health.StatusCode);
            Assert.Contains("\"draining\"", await health.Content.ReadAsStringAsync(Ct));
            var (status, body, response) = await s.PostAsync("v1/completions", new { model = TestServer.ModelId, prompt = "x", max_tokens = 2 });
            Assert.Equal(HttpStatusCode.ServiceUnavailable, status);
            Assert.Equal("shutting_down", body.GetProperty("error").GetProperty("code").GetString());
            Assert.Equal("1", response.Headers.RetryAfter?.ToString());
            Assert.True(response.Headers.ConnectionClose, "the 503 keeps its connection: a pooled client retries on this replica");
            Assert.True(health.Headers.ConnectionClose, "the draining /health keeps its connection");
            // Counted: refusals while draining were in no counter (a balancer still sending here after SIGTERM was invisible).
            string metrics = await s.MetricsAsync();
            Assert.Equal(1, TestServer.Sample(metrics, "bitnet_server_requests_refused_total{reason=\"shutting_down\"}"));
            Assert.Equal(0, TestServer.Sample(metrics, "bitnet_server_requests_refused_total{reason=\"model_loading\"}"));
            Assert.False(drain.IsCompleted);

            s.Scheduler.StepGate.Set();
            var events = await stream;
            Assert.Equal("[DONE]", events[^1]);
            Assert.DoesNotContain(events, e => e.Contains("\"error\""));
            Assert.Equal("length", JsonDocument.Parse(events[^2]).RootElement.GetProperty("choices")[0].GetProperty("finish_reason").GetString());
            Assert.Equal(0, await drain);
        }
        finally
        {
            s.Scheduler.StepGate.Set();
        }
    }

    /// <summary>
    /// While draining, a keep-alive client's next request goes out on a new connection (which a balancer can send to
    /// another replica): the draining server closes each connection after its answer. Counted at the client's connect.
    /// </summary>
    [Fact]
    public async Task DrainingClosesEachConnectionAfterItsAnswer()
    {
        await using var s = await TestServer.StartAsync();
        int connects = 0;
        using var http = new HttpClient(new SocketsHttpHandler
        {
            MaxConnectionsPerServer = 1,
            ConnectCallback = async (context, token) =>
            {
                Interlocked.Increment(ref connects);
                var socket = new System.Net.Sockets.Socket(System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp) { NoDelay = true };
                await socket.ConnectAsync(context.DnsEndPoint, token);
                return new System.Net.Sockets.NetworkStream(socket, ownsSocket: true);
            },
        }) { BaseAddress = s.Http.BaseAddress };
        using (var warm = await http.GetAsync("health", Ct)) Assert.Equal(HttpStatusCode.OK, warm.StatusCode);
        using (var again = await http.GetAsync("health", Ct)) Assert.Equal(HttpStatusCode.OK, again.StatusCode);
        Assert.Equal(1, connects); // kept alive before the drain
        s.Scheduler.StepGate.Reset();
        try
        {
            var stream = s.StreamAsync("v1/completions", Stream(3));
            await TestServer.EventuallyAsync(() => Task.FromResult(s.Server.InFlightRequests == 1), "the stream to be in flight");
            var drain = s.Server.DrainAsync(TimeSpan.FromSeconds(30), Ct);
            for (int i = 0; i < 3; i++)
            {
                using var refused = await http.PostAsync("v1/completions", new StringContent("{\"prompt\":\"x\",\"max_tokens\":2}", Encoding.UTF8, "application/json"), Ct);
                Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);
            }
            Assert.Equal(3, connects); // the first 503 on the kept-alive connection, which it closes; each later one on a new one
            s.Scheduler.StepGate.Set();
            await stream;
            Assert.Equal(0, await drain);
        }
        finally
        {
            s.Scheduler.StepGate.Set();
        }
    }

    [Fact]
    public async Task AtTheDeadlineTheRestEndWithACleanError()
    {
        await using var s = await TestServer.StartAsync();
        s.Scheduler.StepGate.Reset();
        var stream = s.StreamAsync("v1/completions", Stream(100));
        await TestServer.EventuallyAsync(() => Task.FromResult(s.Server.InFlightRequests == 1), "the stream to be in flight");
        var sw = Stopwatch.StartNew();
        Assert.Equal(1, await s.Server.DrainAsync(TimeSpan.FromMilliseconds(300), Ct));
        Assert.InRange(sw.Elapsed, TimeSpan.FromMilliseconds(250), TimeSpan.FromSeconds(10));
        await s.Server.StopAsync(Ct); // opens the gate and stops the engine
        var events = await stream;
        Assert.Equal("[DONE]", events[^1]);
        Assert.Equal("shutting_down", JsonDocument.Parse(events[^2]).RootElement.GetProperty("error").GetProperty("code").GetString());
    }

    [Fact]
    public void ShutdownTimeoutIsValidated()
    {
        var error = new StringWriter();
        int code = BitNetSharp.Cli.Program.Run(["serve", "-m", "x.gguf", "--shutdown-timeout", "-1"], new StringWriter(), error);
        Assert.Equal(2, code);
        Assert.Contains("--shutdown-timeout must be 0 to 3600 seconds", error.ToString());
    }

    /// <summary>
    /// The real thing: `bitnet serve` as a process, a stream in flight, SIGTERM. The stream runs to its end (no error
    /// event), /health says draining meanwhile, and the process exits 0 saying every request finished.
    /// </summary>
    [Fact]
    public async Task SigtermDrainsAndExitsZero()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "sends SIGTERM with kill(1); Linux only");
        Assert.SkipUnless(File.Exists(ServeProcess.Executable), $"the CLI's apphost is not next to the tests ({ServeProcess.Executable})");
        using var server = new ServeProcess("-m", RepositoryFiles.Path("models/bitnet-tinystories.gguf"), "--port", "0", "--shutdown-timeout", "20", "-t", "1");
        var process = server.Process;
        {
            var address = await server.ReadyAsync(TimeSpan.FromSeconds(60), Ct);
            using var http = new HttpClient { BaseAddress = address, Timeout = TimeSpan.FromSeconds(60) };
            using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions")
            {
                Content = new StringContent(JsonSerializer.Serialize(new { prompt = "Once upon a time", max_tokens = 240, stream = true, ignore_eos = true }), Encoding.UTF8, "application/json"),
            };
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, Ct);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            using (var kill = Process.Start("kill", ["-TERM", process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])) await kill.WaitForExitAsync(Ct);
            await using var body = await response.Content.ReadAsStreamAsync(Ct);
            var events = new List<string>();
            await foreach (var item in SseParser.Create(body).EnumerateAsync(Ct)) events.Add(item.Data);
            Assert.Equal("[DONE]", events[^1]);
            Assert.DoesNotContain(events, e => e.Contains("\"error\""));
            Assert.Equal("length", JsonDocument.Parse(events[^2]).RootElement.GetProperty("choices")[0].GetProperty("finish_reason").GetString());
            await process.WaitForExitAsync(Ct).WaitAsync(TimeSpan.FromSeconds(30), Ct);
            process.WaitForExit(); // flush the redirected stderr
            string log = server.Log;
            Assert.True(process.ExitCode == 0, $"exit code {process.ExitCode}:\n{log}");
            Assert.Contains("stopping: draining", log);
            Assert.Contains("stopped: every request in flight finished.", log);
        }
    }

    /// <summary>A serve process of the bundled model with one stream of <paramref name="maxTokens"/> tokens in flight.</summary>
    private static async Task<(ServeProcess Server, HttpClient Http, HttpResponseMessage Response)> ServeWithStreamAsync(int maxTokens)
    {
        var server = new ServeProcess("-m", RepositoryFiles.Path("models/bitnet-tinystories.gguf"), "--port", "0", "--shutdown-timeout", "20", "-t", "1");
        var address = await server.ReadyAsync(TimeSpan.FromSeconds(60), Ct);
        var http = new HttpClient { BaseAddress = address, Timeout = TimeSpan.FromSeconds(60) };
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions")
        {
            Content = new StringContent(JsonSerializer.Serialize(new { prompt = "Once upon a time", max_tokens = maxTokens, stream = true, ignore_eos = true }), Encoding.UTF8, "application/json"),
        };
        var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, Ct);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        return (server, http, response);
    }

    /// <summary>
    /// One SIGTERM delivered twice at once (GNU timeout signals the child and then its process group) is one stop: the
    /// second copy cut the drain short as a "second signal", with requests in flight cut and logs unflushed. (50 ms
    /// apart here: sent back to back, the kernel often merges the two into one pending signal.)
    /// </summary>
    [Fact]
    public async Task ASignalDeliveredTwiceAtOnceIsOneStop()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "sends signals with kill(1); Linux only");
        Assert.SkipUnless(File.Exists(ServeProcess.Executable), $"the CLI's apphost is not next to the tests ({ServeProcess.Executable})");
        var (server, http, response) = await ServeWithStreamAsync(64);
        using var serverScope = server;
        using var httpScope = http;
        using var responseScope = response;
        var process = server.Process;
        string pid = process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture);
        using (var kill = Process.Start("sh", ["-c", $"kill -TERM {pid}; sleep 0.05; kill -TERM {pid}"])) await kill.WaitForExitAsync(Ct);
        string body = await response.Content.ReadAsStringAsync(Ct);
        await process.WaitForExitAsync(Ct).WaitAsync(TimeSpan.FromSeconds(30), Ct);
        process.WaitForExit();
        string log = server.Log;
        Assert.True(process.ExitCode == 0, $"exit code {process.ExitCode}:\n{log}");
        Assert.DoesNotContain("second signal", log);
        Assert.Contains("[DONE]", body); // the stream in flight finished
    }

    /// <summary>
    /// A second Ctrl-C or SIGTERM while serve drains: the command-line library's termination handler completed its task
    /// a second time on the signal thread, and the process died of an unhandled InvalidOperationException (exit 134,
    /// logs not flushed). Now serve handles the signals itself: the second one says so and exits at once with 128 +
    /// the signal's number, as a second Ctrl-C does in other servers.
    /// </summary>
    [Fact]
    public async Task ASecondSignalWhileDrainingExitsCleanly()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "sends signals with kill(1); Linux only");
        Assert.SkipUnless(File.Exists(ServeProcess.Executable), $"the CLI's apphost is not next to the tests ({ServeProcess.Executable})");
        var (server, http, response) = await ServeWithStreamAsync(240);
        using var serverScope = server;
        using var httpScope = http;
        using var responseScope = response;
        var process = server.Process;
        string pid = process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture);
        using (var kill = Process.Start("kill", ["-INT", pid])) await kill.WaitForExitAsync(Ct);
        await TestServer.EventuallyAsync(() => Task.FromResult(server.Log.Contains("stopping: draining")), "serve to start draining");
        using (var kill = Process.Start("kill", ["-INT", pid])) await kill.WaitForExitAsync(Ct);
        await process.WaitForExitAsync(Ct).WaitAsync(TimeSpan.FromSeconds(30), Ct);
        process.WaitForExit();
        string log = server.Log;
        Assert.DoesNotContain("Unhandled exception", log);
        if (process.ExitCode == 0) Assert.Contains("stopped: every request in flight finished.", log); // the stream ended before the second signal
        else
        {
            Assert.True(process.ExitCode == 130, $"exit code {process.ExitCode}:\n{log}");
            Assert.Contains("second signal", log);
        }
    }
}
