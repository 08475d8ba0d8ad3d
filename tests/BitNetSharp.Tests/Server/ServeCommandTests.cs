using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using BitNetSharp.Cli;
using BitNetSharp.Cli.Commands;

namespace BitNetSharp.Tests.Server;

/// <summary>
/// <c>bitnet serve</c>'s command line: bad settings are one-line usage errors before anything loads or listens; the
/// BITNET_* environment variables stand in for absent flags (a container image sets them), and a flag wins.
/// </summary>
public class ServeCommandTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static (int ExitCode, string Error) Bitnet(params string[] args) => BitnetWith(new Dictionary<string, string>(), args);

    /// <summary>Runs the tool in-process with <paramref name="environment"/> as the only environment serve sees.</summary>
    private static (int ExitCode, string Error) BitnetWith(Dictionary<string, string> environment, params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Program.Run(args, output, error, environment: name => environment.GetValueOrDefault(name));
        return (code, error.ToString());
    }

    private static void AssertUsageError(int code, string error, string message)
    {
        Assert.Equal(2, code);
        Assert.StartsWith("error: ", error);
        Assert.Contains(message, error);
        Assert.Single(error.Trim().Split('\n'));
    }

    [Theory]
    [InlineData("--host", "example.com", "is not an IP address")]
    [InlineData("--max-batched-tokens", "2", "--max-batched-tokens (2) must be at least --max-seqs (8)")]
    [InlineData("--timeout", "0", "--timeout must be a positive number")]
    [InlineData("--timeout", "1e300", "--timeout must be a positive number of seconds, at most 31536000")]
    [InlineData("--timeout", "Infinity", "--timeout must be a positive number of seconds, at most 31536000")]
    [InlineData("--max-n", "99", "--max-n must be between 1 and --max-seqs (8)")]
    [InlineData("--max-n", "0", "--max-n must be between 1 and --max-seqs (8)")]
    [InlineData("--max-n", "-5", "--max-n must be between 1 and --max-seqs (8)")]
    [InlineData("--max-queue", "-1", "--max-queue must be 0 or more")]
    [InlineData("--max-tokens-limit", "0", "--max-tokens-limit must be at least 1")]
    [InlineData("--health-every", "-1", "--health-every must be 0 (off) or a number of engine steps")]
    [InlineData("--verify-weights", "0", "--verify-weights must be a positive number of seconds")]
    [InlineData("--verify-weights", "2592000", "--verify-weights must be a positive number of seconds, at most 2073600 (24 days)")]
    [InlineData("--port", "70000", "--port must be a port number (0-65535); got 70000")]
    // The flag meets the range its variable does, named by the flag (0 said "MaxSequences must be ≥ 1"; 5000 passed).
    [InlineData("--max-seqs", "0", "--max-seqs must be a number of sequences from 1 to 4096; got 0")]
    [InlineData("--max-seqs", "5000", "--max-seqs must be a number of sequences from 1 to 4096; got 5000")]
    // A size for a log not asked for was ignored without a word.
    [InlineData("--telemetry-max-mb", "-5", "--telemetry-max-mb only applies with --telemetry-log")]
    // Accepted and ignored without --speculate (generate refuses it).
    [InlineData("--draft-tokens", "8", "--draft-tokens applies with --speculate ngram; speculation is off")]
    // Served as model '' (an unset shell variable), which no request could name.
    [InlineData("--alias", "", "--alias is empty")]
    // "The value cannot be an empty string." and exit 1, no option named.
    [InlineData("--alert-rules", "", "--alert-rules: the rule file's path is empty")]
    public void BadSettingsAreUsageErrors(string flag, string value, string message)
    {
        var (code, error) = Bitnet("serve", "-m", "does-not-matter.gguf", flag, value);
        AssertUsageError(code, error, message);
    }

    /// <summary>
    /// A model path that names no model, and a port in use, are one-line errors (exit 1): the path was found by the load
    /// after the server listened, and logged with a stack trace; the port's failure came with the host's stack trace.
    /// </summary>
    [Fact]
    public void AMissingModelAndATakenPortAreOneLineErrors()
    {
        var (code, error) = Bitnet("serve", "-m", "/nonexistent/model.gguf", "--port", "0");
        Assert.Equal(1, code);
        Assert.Equal("error: /nonexistent/model.gguf: no such file or directory", error.Trim());
        // From the variable, named as its (a bare path said nothing of where it came from).
        (code, error) = BitnetWith(new() { ["BITNET_MODEL"] = "/nonexistent/model.gguf" }, "serve", "--port", "0");
        Assert.Equal(1, code);
        Assert.Equal("error: /nonexistent/model.gguf: no such file or directory (the path is BITNET_MODEL's; is the model's volume mounted, and can this user read its folders?)", error.Trim());

        var taken = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        try
        {
            int port = ((IPEndPoint)taken.LocalEndpoint).Port;
            var (code2, error2) = Bitnet("serve", "--port", port.ToString(CultureInfo.InvariantCulture));
            Assert.Equal(1, code2);
            Assert.Contains($"port {port} on 127.0.0.1 is in use (another server?): choose another --port, or --port 0 for a free one.", error2);
            Assert.DoesNotContain("   at ", error2); // no stack trace
        }
        finally
        {
            taken.Stop();
        }
    }

    /// <summary>
    /// Settings only the model file or the machine can refute are usage errors in one line too: --activation-bits failed the
    /// load (exit 1, a stack trace in the log; generate exits 2), and a --host no interface has threw Kestrel's stack trace.
    /// A CORS origin may be written in capitals, as URLs may (it was refused beside the message's own example).
    /// </summary>
    [Fact]
    public void SettingsTheModelOrMachineRefuteAreOneLineUsageErrors()
    {
        string model = RepositoryFiles.Path("models/bitnet-tinystories.gguf");
        foreach (var (bits, message) in new[] { ("9", "the bit width must be one of"), ("8,8", "lists 2 widths; the model has 6 layers"), ("99:down=6", "'99' is not a layer of this model (0 to 5)") })
        {
            var (code, error) = Bitnet("serve", "-m", model, "--port", "0", "--activation-bits", bits);
            AssertUsageError(code, error, message);
        }
        var (hostCode, hostError) = Bitnet("serve", "-m", model, "--port", "0", "--host", "192.0.2.1"); // TEST-NET-1: no machine's
        AssertUsageError(hostCode, hostError, "--host 192.0.2.1: this machine cannot listen on that address (no network interface has it)");
        // Given by the variable, named as the variable (a container sets it, not the flag).
        var (varCode, varError) = BitnetWith(new() { ["BITNET_HOST"] = "192.0.2.1" }, "serve", "-m", model, "--port", "0");
        AssertUsageError(varCode, varError, "BITNET_HOST=192.0.2.1: this machine cannot listen");
        new BitNetSharp.Server.ServerOptions { LoadModel = () => null!, CorsOrigins = ["https://App.Example.com", "HTTP://localhost:3000/"] }.Validate();
    }

    /// <summary>
    /// Kubernetes' service links put BITNET_PORT=tcp://IP:PORT (the address of a Service named "bitnet") over the
    /// image's BITNET_PORT=8080 in every pod of the namespace: serve warns and keeps its port (it exited 2, "not a port
    /// number", and the pod crash-looped). A value that is neither is still an error.
    /// </summary>
    [Fact]
    public void AServiceLinkAddressInBitnetPortIsIgnoredWithAWarning()
    {
        // --max-n 99 stops serve (a usage error) right after the port is settled, before it loads or listens.
        var (code, error) = BitnetWith(new() { ["BITNET_PORT"] = "tcp://10.96.0.12:80" }, "serve", "-m", "does-not-matter.gguf", "--max-n", "99");
        Assert.Equal(2, code);
        Assert.Contains("warning: BITNET_PORT='tcp://10.96.0.12:80' is the address Kubernetes gives pods for a Service named 'bitnet'", error);
        Assert.Contains("listening on port 8080", error);
        Assert.Contains("--max-n must be between 1 and --max-seqs (8)", error);
        var (code2, error2) = BitnetWith(new() { ["BITNET_PORT"] = "tcp://bitnet" }, "serve", "-m", "does-not-matter.gguf");
        AssertUsageError(code2, error2, "BITNET_PORT: 'tcp://bitnet' is not a port number (0-65535).");
    }

    /// <summary>An alert rule file whose rule reads a metric the server's alerts cannot (here a histogram) stops serve before it loads the model.</summary>
    [Fact]
    public void AlertRulesOnUnknownMetricsStopServe()
    {
        string path = Path.Combine(Path.GetTempPath(), $"bitnet-rules-{Guid.NewGuid():N}.json");
        File.WriteAllText(path, """{"rules": [{"name": "SlowStart", "metric": "bitnet_time_to_first_token_seconds", "threshold": 2}]}""");
        try
        {
            var (code, error) = Bitnet("serve", "-m", "does-not-matter.gguf", "--alert-rules", path);
            Assert.Equal(1, code);
            Assert.StartsWith($"error: {path}: rule 'SlowStart': \"metric\" names 'bitnet_time_to_first_token_seconds'", error);
            Assert.Contains("bitnet_requests_rejected_total", error);
            Assert.Single(error.Trim().Split('\n'));
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>A rule file of no rules turns alerting off (it replaces the built-in rules): the server says so at start.</summary>
    [Fact]
    public async Task ARuleFileOfNoRulesIsSaidAtStart()
    {
        Assert.SkipUnless(File.Exists(ServeProcess.Executable), $"the CLI's apphost is not next to the tests ({ServeProcess.Executable})");
        using var dir = new Formats.TestGguf.TempDirectory();
        string path = dir.File("none.json");
        File.WriteAllText(path, """{"rules": []}""");
        using var server = new ServeProcess("-m", RepositoryFiles.Path("models/bitnet-tinystories.gguf"), "--port", "0", "-t", "1", "--alert-rules", path);
        await server.ReadyAsync(TimeSpan.FromSeconds(120), TestContext.Current.CancellationToken);
        // The logger's line (on stdout), written during the load, before "ready:".
        await TestServer.EventuallyAsync(() => Task.FromResult(server.Output.Contains($"Alert rules: {path} lists no rules, so no alert is evaluated", StringComparison.Ordinal)),
            "the warning about an empty rule file");
    }

    /// <summary>
    /// A rule on a layer the model lacks (found at load, when the layers are known) is the rule file's error, naming it:
    /// serve said "the model could not be loaded: Alert rule a matches layer 99", blaming the model and naming no file.
    /// A directory given as the rule file says so (it read "Access to the path … is denied").
    /// </summary>
    [Fact]
    public void ARuleFileThatDoesNotFitTheModelIsNamedNotTheModel()
    {
        using var dir = new Formats.TestGguf.TempDirectory();
        string path = dir.File("rules.json");
        File.WriteAllText(path, """{"rules": [{"name": "Deep", "metric": "bitnet_health_residual_rms", "match": {"layer": "99"}, "op": ">", "threshold": 1}]}""");
        var (code, error) = Bitnet("serve", "-m", RepositoryFiles.Path("models/bitnet-tinystories.gguf"), "--port", "0", "-t", "1", "--alert-rules", path);
        Assert.Equal(1, code);
        Assert.Contains($"error: {path}: rule 'Deep' matches layer 99, but bitnet-tinystories has 6 layers (0 to 5): it could never fire.", error);
        Assert.DoesNotContain("could not be loaded", error);

        var (dirCode, dirError) = Bitnet("serve", "-m", "does-not-matter.gguf", "--alert-rules", dir.Path);
        Assert.Equal(1, dirCode);
        Assert.Contains($"The alert rules file {dir.Path} is a directory", dirError);

        File.WriteAllText(path, """{"rules": [{"name": "A", "metric": "bitnet_health_residual_rms", "op": null, "threshold": 1}]}""");
        var (nullCode, nullError) = Bitnet("serve", "-m", "does-not-matter.gguf", "--alert-rules", path);
        Assert.Equal(1, nullCode);
        Assert.Contains("got null.", nullError);
    }

    [Theory]
    [InlineData("BITNET_PORT", "abc", "BITNET_PORT: 'abc' is not a port number (0-65535).")]
    [InlineData("BITNET_PORT", "70000", "BITNET_PORT: '70000' is not a port number (0-65535).")]
    [InlineData("BITNET_HOST", "example.com", "BITNET_HOST: 'example.com' is not an IP address")]
    [InlineData("BITNET_THREADS", "-1", "BITNET_THREADS: '-1' is not a number of threads")]
    [InlineData("BITNET_MAX_SEQS", "0", "BITNET_MAX_SEQS: '0' is not a number of sequences")]
    [InlineData("BITNET_CTX", "2k", "BITNET_CTX: '2k' is not a context length")]
    [InlineData("BITNET_SHUTDOWN_TIMEOUT", "forever", "BITNET_SHUTDOWN_TIMEOUT: 'forever' is not a number of seconds from 0 to 3600.")]
    public void BadVariablesAreUsageErrorsNamingTheVariable(string variable, string value, string message)
    {
        var (code, error) = BitnetWith(new() { [variable] = value }, "serve", "-m", "does-not-matter.gguf");
        AssertUsageError(code, error, message);
    }

    /// <summary>
    /// Every variable holds a bad value, and every flag is given: the flags are used and the variables never read, so
    /// the only error is the one the --port flag's own value causes (a variable read would have failed first).
    /// </summary>
    [Fact]
    public void FlagsWinOverVariables()
    {
        var environment = ServeCommand.Variables.ToDictionary(v => v.Variable, _ => "not-a-value");
        var (code, error) = BitnetWith(environment, "serve", "-m", "does-not-matter.gguf", "--host", "127.0.0.1", "--port", "70000", "-t", "1",
            "--max-seqs", "2", "--ctx", "64", "--shutdown-timeout", "5", "--api-key", "k");
        AssertUsageError(code, error, "--port must be a port number (0-65535); got 70000");
    }

    /// <summary>A variable stands in for its absent flag (BITNET_MAX_SEQS=3 meets --max-batched-tokens 2); a blank one is not set.</summary>
    [Fact]
    public void VariablesStandInForAbsentFlags()
    {
        var (code, error) = BitnetWith(new() { ["BITNET_MAX_SEQS"] = "3", ["BITNET_PORT"] = " " }, "serve", "-m", "does-not-matter.gguf", "--max-batched-tokens", "2");
        AssertUsageError(code, error, "--max-batched-tokens (2) must be at least --max-seqs (3)");
        (code, error) = BitnetWith(new() { ["BITNET_MAX_SEQS"] = "" }, "serve", "-m", "does-not-matter.gguf", "--max-batched-tokens", "2");
        AssertUsageError(code, error, "--max-batched-tokens (2) must be at least --max-seqs (8)");
    }

    /// <summary>
    /// `bitnet serve` with no flags at all, configured by its process environment as a container runs it: the model,
    /// address, port, context, sequences and API key come from the variables, and SIGTERM drains for
    /// BITNET_SHUTDOWN_TIMEOUT seconds and exits 0.
    /// </summary>
    [Fact]
    public async Task VariablesConfigureAServeProcess()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "sends SIGTERM with kill(1); Linux only");
        string exe = Path.Combine(AppContext.BaseDirectory, "bitnet");
        Assert.SkipUnless(File.Exists(exe), $"the CLI's apphost is not next to the tests ({exe})");
        // A free port can be taken between the probe and the server's bind (an outgoing connection's ephemeral port):
        // serve then exits 1 saying the port is in use. Another port, twice at most.
        int port = 0;
        Process process = null!;
        var stderr = new StringBuilder();
        Task<Uri> ready = null!;
        for (int attempt = 1; ; attempt++)
        {
            port = FreePort();
            (process, ready) = StartServe(exe, port, stderr);
            var first = await Task.WhenAny(ready, process.WaitForExitAsync(Ct)).WaitAsync(TimeSpan.FromSeconds(60), Ct);
            if (first == ready || !process.HasExited) break;
            process.WaitForExit();
            string log;
            lock (stderr) log = stderr.ToString();
            int exit = process.ExitCode;
            process.Dispose();
            if (attempt == 3 || !log.Contains("is in use", StringComparison.Ordinal)) Assert.Fail($"serve exited {exit}:\n{log}");
            lock (stderr) stderr.Clear();
        }
        using var _ = process;
        try
        {
            var address = await ready.WaitAsync(TimeSpan.FromSeconds(60), Ct);
            Assert.Equal(new Uri($"http://127.0.0.1:{port}/"), address);
            // The ready line names the dashboard, as the README says (it named the API and /metrics only).
            lock (stderr) Assert.Contains($"dashboard: {address}dashboard)", stderr.ToString());
            using var http = new HttpClient { BaseAddress = address, Timeout = TimeSpan.FromSeconds(30) };
            using (var anonymous = await http.GetAsync("v1/models", Ct)) Assert.Equal(HttpStatusCode.Unauthorized, anonymous.StatusCode);
            using var request = new HttpRequestMessage(HttpMethod.Get, "v1/models") { Headers = { Authorization = new AuthenticationHeaderValue("Bearer", "variable-key") } };
            using var response = await http.SendAsync(request, Ct);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            var model = JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement.GetProperty("data")[0];
            Assert.Equal("model", model.GetProperty("id").GetString());
            Assert.Equal(96, model.GetProperty("meta").GetProperty("n_ctx").GetInt32());
            Assert.Equal(3, model.GetProperty("meta").GetProperty("max_sequences").GetInt32());
            Assert.Equal(BitNetSharp.Model.KvCacheType.F16, ModelOptions.ParseKvType(model.GetProperty("meta").GetProperty("kv_type").GetString()!));

            using (var kill = Process.Start("kill", ["-TERM", process.Id.ToString(CultureInfo.InvariantCulture)])) await kill.WaitForExitAsync(Ct);
            await process.WaitForExitAsync(Ct).WaitAsync(TimeSpan.FromSeconds(30), Ct);
            process.WaitForExit(); // flush the redirected stderr
            string log;
            lock (stderr) log = stderr.ToString();
            Assert.True(process.ExitCode == 0, $"exit code {process.ExitCode}:\n{log}");
            Assert.Contains("for up to 7 s", log);
            Assert.Contains("weights in memory: file mapping (4 KiB pages)", log); // a 5 MB model stays mapped under --weight-pages auto
        }
        finally
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
        }
    }

    /// <summary>A context past the model's is cut to it with a note, as generate and chat say it (serve said nothing).</summary>
    [Fact]
    public async Task AContextPastTheModelsIsNoted()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "sends SIGTERM with kill(1); Linux only");
        string exe = Path.Combine(AppContext.BaseDirectory, "bitnet");
        Assert.SkipUnless(File.Exists(exe), $"the CLI's apphost is not next to the tests ({exe})");
        var stderr = new StringBuilder();
        var (process, ready) = StartServe(exe, 0, stderr, ctx: "100000");
        using var _ = process;
        try
        {
            var address = await ready.WaitAsync(TimeSpan.FromSeconds(60), Ct);
            using var http = new HttpClient { BaseAddress = address };
            http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", "variable-key");
            using var response = await http.GetAsync("v1/models", Ct);
            int nCtx = JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement.GetProperty("data")[0].GetProperty("meta").GetProperty("n_ctx").GetInt32();
            Assert.InRange(nCtx, 2, 99_999);
            using (var kill = Process.Start("kill", ["-TERM", process.Id.ToString(CultureInfo.InvariantCulture)])) await kill.WaitForExitAsync(Ct);
            await process.WaitForExitAsync(Ct).WaitAsync(TimeSpan.FromSeconds(30), Ct);
            process.WaitForExit();
            string log;
            lock (stderr) log = stderr.ToString();
            Assert.Contains($"note: --ctx 100000 is more than the model's context of {nCtx} tokens (its positions end there); using {nCtx}.", log);
            // Before the ready line scripts wait for (it came after).
            Assert.True(log.IndexOf("note: --ctx 100000", StringComparison.Ordinal) < log.IndexOf("ready: ", StringComparison.Ordinal), log);
        }
        finally
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
        }
    }

    /// <summary>`bitnet serve` configured only by its environment, as a container runs it; the task ends with its ready address.</summary>
    private static (Process Process, Task<Uri> Ready) StartServe(string exe, int port, StringBuilder stderr, string ctx = "96")
    {
        var psi = new ProcessStartInfo(exe) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        psi.ArgumentList.Add("serve");
        foreach (var (variable, _) in ServeCommand.Variables) psi.Environment.Remove(variable);
        psi.Environment["BITNET_MODEL"] = RepositoryFiles.Path("tests/fixtures/tinystories-4m/model.gguf"); // id "model", not the bundled model's
        psi.Environment["BITNET_HOST"] = "127.0.0.1";
        psi.Environment["BITNET_PORT"] = port.ToString(CultureInfo.InvariantCulture);
        psi.Environment["BITNET_THREADS"] = "1";
        psi.Environment["BITNET_MAX_SEQS"] = "3";
        psi.Environment["BITNET_CTX"] = ctx;
        psi.Environment["BITNET_SHUTDOWN_TIMEOUT"] = "7";
        psi.Environment["BITNET_API_KEY"] = "variable-key\r\n"; // as a CRLF env file gives it: trimmed, as the client's key is
        var process = Process.Start(psi)!;
        var ready = new TaskCompletionSource<Uri>(TaskCreationOptions.RunContinuationsAsynchronously);
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (stderr) stderr.AppendLine(e.Data);
            var m = Regex.Match(e.Data, @"^ready: model '[^']*' at (http://[^ ]+/)v1");
            if (m.Success) ready.TrySetResult(new Uri(m.Groups[1].Value));
        };
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
        return (process, ready.Task);
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    [Fact]
    public void HelpListsTheServerFlags()
    {
        var output = new StringWriter();
        Program.Run(["serve", "--help"], output, new StringWriter());
        foreach (var flag in new[] { "--host", "--port", "--max-seqs", "--max-batched-tokens", "--max-queue", "--timeout", "--api-key", "--model" })
            Assert.Contains(flag, output.ToString());
        foreach (var (variable, flag) in ServeCommand.Variables)
            Assert.Contains($"{variable} ({flag})", output.ToString().ReplaceLineEndings(" ").Replace("  ", " ", StringComparison.Ordinal));
    }
}
