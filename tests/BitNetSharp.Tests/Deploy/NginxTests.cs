using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.ServerSentEvents;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace BitNetSharp.Tests.Deploy;

/// <summary>
/// deploy/nginx/bitnet.conf: nginx accepts it (<c>nginx -t</c>), and, in front of two real <c>bitnet serve</c>
/// processes, one of which is killed with SIGKILL while it streams, non-streaming requests still succeed (passed on
/// to the survivor) and the killed replica's streams end with an error the client sees — never a clean end that
/// hides a truncation. Skipped where nginx is not installed. bench/replicas.sh is the long version.
/// </summary>
public sealed class NginxTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static string ConfFile => RepositoryFiles.Path(Path.Combine("deploy", "nginx", "bitnet.conf"));

    /// <summary>nginx -t on a harness that includes bitnet.conf unchanged in its http block (private prefix, pid, logs and temp paths).</summary>
    [Fact]
    public async Task NginxAcceptsTheConfig()
    {
        string nginx = RequireNginx();
        string dir = HarnessDir();
        try
        {
            string conf = WriteHarness(dir, ConfFile);
            var (code, output) = await ProcessTools.RunAsync(nginx, ["-t", "-p", dir, "-c", conf], TimeSpan.FromSeconds(30));
            Assert.True(code == 0, $"nginx -t (exit {code}):\n{output}");
            Assert.Contains("test is successful", output);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>The directives the retry and streaming behaviour rest on are there, with the values the comments promise.</summary>
    [Fact]
    public void ConfigHasTheBalancingRetryAndStreamingDirectives()
    {
        string text = Regex.Replace(File.ReadAllText(ConfFile), "#[^\n]*", "");
        Assert.Matches(@"upstream bitnet \{[^}]*least_conn;", text);
        var servers = Regex.Matches(text, @"^\s*server (\S+) ([^;]*);", RegexOptions.Multiline);
        Assert.True(servers.Count >= 2, "fewer than two replicas in the upstream block");
        foreach (Match s in servers)
            Assert.Matches(@"max_fails=\d+ fail_timeout=\d+s", s.Groups[2].Value);
        var next = Regex.Match(text, @"proxy_next_upstream ([^;]*);").Groups[1].Value.Split(' ');
        foreach (var condition in new[] { "error", "timeout", "http_503" }) Assert.Contains(condition, next);
        Assert.Contains("proxy_buffering off;", text);
        Assert.Contains("proxy_request_buffering on;", text); // a retried POST needs its whole body
        Assert.Contains("proxy_http_version 1.1;", text);
        Assert.Matches(@"location = /health \{[^}]*proxy_pass http://bitnet;", text);
        Assert.Matches(@"location = /metrics \{[^}]*proxy_pass http://bitnet;", text);
        var read = Regex.Match(text, @"\n\s*proxy_read_timeout (\d+)s;");
        Assert.True(int.Parse(read.Groups[1].Value, CultureInfo.InvariantCulture) > 600, "proxy_read_timeout must exceed the server's default --timeout (600 s)");
    }

    /// <summary>
    /// Two replicas behind bitnet.conf (only the upstream addresses and the listen port changed). Streams and
    /// non-streaming completions go through nginx; once every stream has its first event, the replica serving the
    /// first stream is killed with SIGKILL. Its streams must end with a broken connection or an error event (or be
    /// complete, had they finished first) and at least one must have been cut; the other replica's streams complete;
    /// every non-streaming request in flight and every one sent after the kill is answered completely, some of them
    /// after nginx passed them on from the dead replica.
    /// </summary>
    [Fact]
    public async Task KilledReplicaIsFailedOverWithoutSilentTruncation()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "runs nginx and kills a process with SIGKILL; Linux only");
        string nginx = RequireNginx();
        string exe = Path.Combine(AppContext.BaseDirectory, "bitnet");
        Assert.SkipUnless(File.Exists(exe), $"the CLI's apphost is not next to the tests ({exe})");
        string dir = HarnessDir();
        var processes = new List<Process>();
        try
        {
            var starts = new[] { StartReplica(exe), StartReplica(exe) };
            processes.AddRange(starts.Select(s => s.Process));
            var replicas = await Task.WhenAll(starts.Select(s => s.Ready.WaitAsync(TimeSpan.FromSeconds(60), Ct)));

            // A free port can be taken between the probe and nginx's bind (an outgoing connection's ephemeral port):
            // nginx then exits "Address already in use", and the test waited out its deadline and failed. Another port.
            int port = 0;
            HttpClient? client = null;
            for (int attempt = 1; client is null; attempt++)
            {
                port = ProcessTools.FreePort();
                string text = File.ReadAllText(ConfFile);
                int n = 0;
                text = Regex.Replace(text, @"^(\s*)server 127\.0\.0\.1:\d+ ", m => n < replicas.Length ? $"{m.Groups[1].Value}server {replicas[n++].Authority} " : $"{m.Groups[1].Value}# ", RegexOptions.Multiline);
                Assert.Equal(replicas.Length, n);
                text = Regex.Replace(text, @"listen 8080( default_server)?;", m => $"listen 127.0.0.1:{port}{m.Groups[1].Value};");
                string copy = Path.Combine(dir, "bitnet.conf");
                File.WriteAllText(copy, text);
                // Test instrumentation: which replica(s) each answer came from ("A, B": A failed, B answered).
                string conf = WriteHarness(dir, copy, "add_header X-Upstream $upstream_addr always;");
                var proxy = Process.Start(new ProcessStartInfo(nginx, ["-p", dir, "-c", conf]) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false })!;
                processes.Add(proxy);
                var candidate = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}/"), Timeout = TimeSpan.FromSeconds(30) };
                await WaitForAsync(async () => proxy.HasExited || (await candidate.GetAsync("health", Ct)).StatusCode == HttpStatusCode.OK, "nginx answering /health 200");
                if (!proxy.HasExited)
                {
                    client = candidate;
                    break;
                }
                candidate.Dispose();
                string error = await proxy.StandardError.ReadToEndAsync(Ct);
                if (attempt == 3 || !error.Contains("in use", StringComparison.Ordinal)) Assert.Fail($"nginx exited {proxy.ExitCode}: {error}");
            }
            using var http = client;

            // The replicas see Host: localhost whatever the client sent, so the proxy itself must turn away foreign names
            // (DNS rebinding): such a request's connection is closed. Before, nginx passed it on and the replica answered.
            using (var rebound = new HttpRequestMessage(HttpMethod.Get, "v1/models"))
            {
                rebound.Headers.Host = $"attacker.example:{port}";
                await Assert.ThrowsAsync<HttpRequestException>(() => http.SendAsync(rebound, Ct));
            }
            // A page of another site posting through an allowed name: its Origin is not the proxy's own name.
            using (var forged = new HttpRequestMessage(HttpMethod.Post, "tokenize") { Content = new StringContent("{\"content\":\"hi\"}", System.Text.Encoding.UTF8, "text/plain") })
            {
                forged.Headers.Add("Origin", $"http://attacker.example:{port}");
                Assert.Equal(HttpStatusCode.Forbidden, (await http.SendAsync(forged, Ct)).StatusCode);
            }

            // Streams first (each until its first event), non-streaming requests alongside, then SIGKILL.
            const int StreamTokens = 240, Tokens = 200;
            var streams = new List<(string Upstream, Task<string> Outcome)>();
            var started = new List<Task<(string Upstream, Task<string> Outcome)>>();
            for (int i = 0; i < 6; i++) started.Add(StartStreamAsync(http, StreamTokens));
            streams.AddRange(await Task.WhenAll(started));
            // The victim is frozen (SIGSTOP) the moment its streams are known: on a loaded machine they could all finish
            // between their first events and the kill, and the test then saw no stream cut. Frozen, it answers nothing
            // more, and the requests sent to it meanwhile are in flight when it dies.
            string killed = streams[0].Upstream;
            var victim = starts[Array.FindIndex(replicas, r => r.Authority == killed)].Process;
            Assert.Equal(0, Signal(victim.Id, SigStop));
            var inFlight = Enumerable.Range(0, 4).Select(_ => CompleteAsync(http, Tokens)).ToList();
            await Task.Delay(50, Ct);
            victim.Kill();
            await victim.WaitForExitAsync(Ct);

            var outcomes = new List<(string Upstream, string Outcome)>();
            foreach (var (upstream, outcome) in streams) outcomes.Add((upstream, await outcome));
            string report = string.Join('\n', outcomes.Select(o => $"  stream on {o.Upstream}: {o.Outcome}"));
            foreach (var (upstream, outcome) in outcomes)
            {
                if (upstream == killed) Assert.True(outcome is "complete" or "broken" or "error event", $"a stream on the killed replica: {outcome}\n{report}");
                else Assert.True(outcome == "complete", $"a stream on the surviving replica: {outcome}\n{report}");
            }
            Assert.True(outcomes.Any(o => o.Upstream == killed && o.Outcome != "complete"), $"no stream was cut by the kill (they finished first?)\n{report}");

            var answers = (await Task.WhenAll(inFlight)).ToList();
            for (int i = 0; i < 6; i++) answers.Add(await CompleteAsync(http, 16));
            string log = string.Join('\n', answers.Select(a => $"  {a.Status} via {a.Upstream}: {a.Tokens} tokens"));
            Assert.True(answers.All(a => a.Status == HttpStatusCode.OK && a.Complete), $"a non-streaming request failed or was incomplete:\n{log}");
            Assert.True(answers.Skip(inFlight.Count).All(a => a.Upstream.EndsWith(replicas.Single(r => r.Authority != killed).Authority, StringComparison.Ordinal)),
                $"an answer after the kill did not come from the survivor:\n{log}");
            Assert.True(answers.Any(a => a.Upstream.Contains(killed + ", ", StringComparison.Ordinal)), $"no request was passed on from the killed replica:\n{log}");
        }
        finally
        {
            foreach (var p in processes)
            {
                if (!p.HasExited) p.Kill(entireProcessTree: true);
                p.Dispose();
            }
            Directory.Delete(dir, recursive: true);
        }
    }

    private const int SigStop = 19; // Linux (x86-64, arm64)

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int Signal(int pid, int signal);

    // ------------------------------------------------------------------------------------------------ requests

    private static StringContent Body(int tokens, bool stream) => new(
        JsonSerializer.Serialize(new { prompt = "Once upon a time", max_tokens = tokens, ignore_eos = true, temperature = 0, stream }), Encoding.UTF8, "application/json");

    /// <summary>Sends a stream and reads its first event; the rest is read by the returned task: "complete" ([DONE] after a finish_reason "length"), "error event", "broken" (the connection failed), or "truncated" (a clean end without [DONE]).</summary>
    private static async Task<(string Upstream, Task<string> Outcome)> StartStreamAsync(HttpClient http, int tokens)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = Body(tokens, stream: true) };
        var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, Ct);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        string upstream = string.Join(", ", response.Headers.GetValues("X-Upstream"));
        var body = await response.Content.ReadAsStreamAsync(Ct);
        var events = SseParser.Create(body).EnumerateAsync(Ct).GetAsyncEnumerator(Ct);
        Assert.True(await events.MoveNextAsync(), "the stream ended before its first event");
        async Task<string> Rest()
        {
            using (request)
            using (response)
            {
                string? finish = null;
                try
                {
                    do
                    {
                        string data = events.Current.Data;
                        if (data == "[DONE]") return finish == "length" ? "complete" : $"truncated ([DONE] after finish_reason {finish})";
                        var root = JsonDocument.Parse(data).RootElement;
                        if (root.TryGetProperty("error", out _)) return "error event";
                        var choices = root.GetProperty("choices");
                        if (choices.GetArrayLength() > 0 && choices[0].TryGetProperty("finish_reason", out var f) && f.ValueKind == JsonValueKind.String) finish = f.GetString();
                    }
                    while (await events.MoveNextAsync());
                    return "truncated (a clean end without [DONE])";
                }
                catch (Exception e) when (e is HttpRequestException or IOException)
                {
                    return "broken";
                }
                finally
                {
                    await events.DisposeAsync();
                }
            }
        }
        return (upstream, Rest());
    }

    private static async Task<(HttpStatusCode Status, string Upstream, int Tokens, bool Complete)> CompleteAsync(HttpClient http, int tokens)
    {
        using var response = await http.PostAsync("v1/completions", Body(tokens, stream: false), Ct);
        string upstream = response.Headers.TryGetValues("X-Upstream", out var v) ? string.Join(", ", v) : "";
        string text = await response.Content.ReadAsStringAsync(Ct);
        if (response.StatusCode != HttpStatusCode.OK) return (response.StatusCode, upstream, 0, false);
        var root = JsonDocument.Parse(text).RootElement;
        int got = root.GetProperty("usage").GetProperty("completion_tokens").GetInt32();
        return (response.StatusCode, upstream, got, got == tokens && root.GetProperty("choices")[0].GetProperty("finish_reason").GetString() == "length");
    }

    // ------------------------------------------------------------------------------------------------ processes

    private static (Process Process, Task<Uri> Ready) StartReplica(string exe)
    {
        var psi = new ProcessStartInfo(exe) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in new[] { "serve", "-m", RepositoryFiles.Path("models/bitnet-tinystories.gguf"), "--port", "0", "-t", "1", "--max-seqs", "8" }) psi.ArgumentList.Add(a);
        var process = Process.Start(psi)!;
        var ready = new TaskCompletionSource<Uri>(TaskCreationOptions.RunContinuationsAsynchronously);
        var log = new StringBuilder();
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null)
            {
                lock (log) ready.TrySetException(new Xunit.Sdk.XunitException($"bitnet serve exited before it was ready:\n{log}"));
                return;
            }
            lock (log) log.AppendLine(e.Data);
            var m = Regex.Match(e.Data, @"^ready: model '[^']*' at (http://[^ ]+/)v1");
            if (m.Success) ready.TrySetResult(new Uri(m.Groups[1].Value));
        };
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
        return (process, ready.Task);
    }

    private static string RequireNginx()
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Append("/usr/sbin"))
            if (dir.Length > 0 && File.Exists(Path.Combine(dir, "nginx"))) return Path.Combine(dir, "nginx");
        Assert.Skip("nginx is not installed (Debian/Ubuntu: apt-get install -y --no-install-recommends nginx); deploy/nginx/bitnet.conf was not checked.");
        return null!;
    }

    /// <summary>A private prefix for nginx, readable by its workers (which run as nobody when the tests run as root).</summary>
    private static string HarnessDir()
    {
        string dir = Directory.CreateTempSubdirectory("bitnet-nginx-").FullName;
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute);
        Directory.CreateDirectory(Path.Combine(dir, "logs"));
        return dir;
    }

    /// <summary>nginx.conf in <paramref name="dir"/>: runs in the foreground, everything it writes under the prefix, the given file included in http {}.</summary>
    private static string WriteHarness(string dir, string include, string extra = "")
    {
        string conf = Path.Combine(dir, "nginx.conf");
        File.WriteAllText(conf, $$"""
            daemon off;
            worker_processes 1;
            pid {{dir}}/nginx.pid;
            error_log {{dir}}/logs/error.log warn;
            events { worker_connections 256; }
            http {
              client_body_temp_path {{dir}}/body;
              proxy_temp_path {{dir}}/proxy;
              fastcgi_temp_path {{dir}}/fastcgi;
              uwsgi_temp_path {{dir}}/uwsgi;
              scgi_temp_path {{dir}}/scgi;
              {{extra}}
              include {{include}};
              access_log {{dir}}/logs/access.log bitnet_upstream;
            }
            """);
        return conf;
    }

    private static async Task WaitForAsync(Func<Task<bool>> condition, string what)
    {
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < TimeSpan.FromSeconds(15))
        {
            try
            {
                if (await condition()) return;
            }
            catch (HttpRequestException)
            {
            }
            await Task.Delay(100, Ct);
        }
        throw new Xunit.Sdk.XunitException($"timed out waiting for {what}");
    }
}
