using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using BitNetSharp.Tests.Formats;

namespace BitNetSharp.Tests.Cli;

/// <summary>
/// `generate` run as a real process (a fresh runtime): Ctrl-C (SIGINT) writes what it has, whole, and exits 130 (it
/// exited 0, so a script could not tell a cut-off run from a finished one); the first prompt's compile time is said.
/// </summary>
public class GenerateProcessTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;
    private static readonly string Exe = Path.Combine(AppContext.BaseDirectory, "bitnet");

    /// <summary>
    /// A write that fails part way (a full disk; here the file-size limit, `ulimit -f`, with SIGXFSZ ignored so the write
    /// returns EFBIG as a full disk returns ENOSPC) names the output and says the old one is kept: it named the hidden
    /// temporary (".out.gguf.1234.….tmp"), a file the user never gave. The old output is untouched and no temporary stays.
    /// </summary>
    [Fact]
    public async Task AWriteThatFailsPartWayNamesTheOutput()
    {
        Assert.SkipUnless(File.Exists(Exe), $"the CLI's apphost is not next to the tests ({Exe})");
        Assert.SkipUnless(OperatingSystem.IsLinux(), "ulimit -f and SIGXFSZ as Linux has them");
        using var dir = new TestGguf.TempDirectory();
        string output = dir.File("out.gguf");
        File.WriteAllText(output, "the old output");
        // DOTNET_EnableWriteXorExecute=0: the runtime's double-mapped code file is itself past the limit.
        var (code, error) = await RunAsync("/bin/sh", ["-c", "trap '' XFSZ; ulimit -f 256; exec \"$0\" convert \"$1\" \"$2\" --type i2_s", Exe, RepositoryFiles.Path("models/bitnet-tinystories.gguf"), output],
            ("DOTNET_EnableWriteXorExecute", "0"));
        Assert.True(code == 1, $"exit {code}: {error}");
        Assert.Contains("cannot write " + output, error);
        Assert.Contains("the out.gguf already there is kept as it was", error);
        Assert.DoesNotContain(".tmp", error);
        Assert.DoesNotContain("   at ", error);
        Assert.Equal("the old output", File.ReadAllText(output));
        Assert.Equal(["out.gguf"], Directory.GetFiles(dir.Path).Select(Path.GetFileName));
    }

    /// <summary>
    /// `chat` started with its standard input closed (`&lt;&amp;-`) ends as at the end of input, exit 0: the runtime opened
    /// one of its own pipes as descriptor 0 and the chat waited on it for ever (chat sweep).
    /// </summary>
    [Fact]
    public async Task ChatWithStandardInputClosedEnds()
    {
        Assert.SkipUnless(File.Exists(Exe), $"the CLI's apphost is not next to the tests ({Exe})");
        Assert.SkipUnless(OperatingSystem.IsLinux(), "/proc/self/fdinfo as Linux has it");
        var (code, error) = await RunAsync("/bin/sh", ["-c", "exec \"$0\" chat -m \"$1\" -n 2 -t 1 <&-", Exe, RepositoryFiles.Path("models/bitnet-tinystories.gguf")]);
        Assert.True(code == 0, $"exit {code}: {error}");
    }

    /// <summary>Runs a process to its end (60 s at most: past that it is killed and the test fails) and returns its exit code and standard error.</summary>
    private static async Task<(int Code, string Error)> RunAsync(string file, string[] args, params (string Name, string Value)[] environment)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var (name, value) in environment) psi.Environment[name] = value;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync(Ct);
        var stderr = p.StandardError.ReadToEndAsync(Ct);
        try
        {
            await p.WaitForExitAsync(Ct).WaitAsync(TimeSpan.FromSeconds(60), Ct);
        }
        catch (TimeoutException)
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"{string.Join(' ', args)} did not end within 60 s");
        }
        await stdout;
        return (p.ExitCode, await stderr);
    }

    /// <summary>
    /// A process's first prompt includes compiling the forward pass (~0.1 s): the stats line says how much and the rate
    /// without it (a 1-token prompt read 9.7 tok/s on a model that reads thousands, with no word why).
    /// </summary>
    [Fact]
    public async Task TheFirstPromptSaysItsCompileTime()
    {
        Assert.SkipUnless(File.Exists(Exe), $"the CLI's apphost is not next to the tests ({Exe})");
        var (code, error) = await RunAsync(Exe, ["generate", "-m", RepositoryFiles.Path("models/bitnet-tinystories.gguf"), "-p", "Once", "-n", "2", "--temp", "0", "-t", "1"]);
        Assert.True(code == 0, error);
        Assert.Matches(@"prompt: 1 tokens, [0-9.]+ tok/s \(\d+ ms of it compiling code on first use; [0-9.]+ tok/s without\)", error);
    }

    /// <summary>
    /// The run is held at a known point without timing: --log-residual-stats writes ~150 KB to stderr over 250 tokens, and
    /// stderr is not read until the signal is sent, so the process blocks in a write once the pipe (64 KB) is full, well
    /// before its last token. Reading stderr then lets it go on; it sees the cancellation at its next token.
    /// </summary>
    [Fact]
    public async Task AnInterruptedGenerateWritesItsIdsAndExits130()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "sends SIGINT with kill(1)");
        Assert.SkipUnless(File.Exists(Exe), $"the CLI's apphost is not next to the tests ({Exe})");
        using var dir = new TestGguf.TempDirectory();
        string ids = dir.File("ids.json");
        var psi = new ProcessStartInfo(Exe) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in new[] { "generate", "-m", RepositoryFiles.Path("models/bitnet-tinystories.gguf"), "-p", "Once upon a time", "-n", "250",
                     "--ignore-eos", "--temp", "0", "-t", "1", "--log-residual-stats", "--health-every", "1", "--ids-out", ids })
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        // stdout is read as it comes: the CPU-time polls below start once generated text has arrived, so a process still
        // starting (starved on a loaded machine, its CPU time standing still) is not taken for one held in its write.
        var text = new System.Text.StringBuilder();
        var generating = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var stdout = Task.Run(async () =>
        {
            var buffer = new char[256];
            int n;
            while ((n = await p.StandardOutput.ReadAsync(buffer, Ct)) > 0)
            {
                lock (text)
                {
                    text.Append(buffer, 0, n);
                    if (text.Length > "Once upon a time".Length + 8) generating.TrySetResult();
                }
            }
            generating.TrySetResult();
        }, Ct);
        await generating.Task.WaitAsync(TimeSpan.FromSeconds(120), Ct);
        // Held: the process is blocked writing stderr (its CPU time stops moving) or, on a machine too slow to get there
        // in time, still generating; either way it has not finished.
        TimeSpan last = TimeSpan.MinValue;
        for (var until = DateTime.UtcNow.AddSeconds(60); DateTime.UtcNow < until && !p.HasExited; await Task.Delay(200, Ct))
        {
            p.Refresh();
            var cpu = p.TotalProcessorTime;
            if (cpu == last) break;
            last = cpu;
        }
        Assert.False(p.HasExited, "the run ended before the pipe filled");
        // Two signals while it is stopping, as `timeout -s INT` sends them (to the child, then its process group): the
        // second is said and ignored. System.CommandLine's handler died of it (exit 134, an unhandled exception).
        using (var kill = Process.Start("kill", ["-INT", p.Id.ToString(CultureInfo.InvariantCulture)])) await kill.WaitForExitAsync(Ct);
        using (var kill = Process.Start("kill", ["-INT", p.Id.ToString(CultureInfo.InvariantCulture)])) await kill.WaitForExitAsync(Ct);
        string error = await p.StandardError.ReadToEndAsync(Ct);
        await p.WaitForExitAsync(Ct).WaitAsync(TimeSpan.FromSeconds(60), Ct);
        await stdout;
        string tail = string.Join('\n', error.TrimEnd().Split('\n').TakeLast(3));
        Assert.True(p.ExitCode == 130, $"exit {p.ExitCode}: {tail}");
        Assert.DoesNotContain("Unhandled exception", error);
        Assert.Contains("bitnet generate: already stopping at its next step", error);
        Assert.Contains("interrupted after", error);
        using var written = JsonDocument.Parse(File.ReadAllText(ids));
        var generated = written.RootElement.GetProperty("ids").GetArrayLength();
        Assert.InRange(generated, 1, 249);
        Assert.Contains($"interrupted after {generated} generated tokens", error);
    }

    /// <summary>
    /// Ctrl-C (SIGINT) while chat encodes a message (a long paste takes seconds) does not end the chat: it killed the
    /// process there (the handler only held an answer's token once generation began), the conversation lost. Held at a
    /// known point: the signal is sent once a 5 MB line is taken, whose encoding takes seconds before it is refused as
    /// longer than the context (a message that fits and is stopped there is dropped, "[stopped before the answer began]").
    /// </summary>
    [Fact]
    public async Task CtrlCWhileAMessageIsEncodedAbandonsItAndTheChatGoesOn()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "sends SIGINT with kill(1)");
        Assert.SkipUnless(File.Exists(Exe), $"the CLI's apphost is not next to the tests ({Exe})");
        int abandoned = 0;
        for (int attempt = 0; attempt < 4 && abandoned == 0; attempt++)
        {
            var psi = new ProcessStartInfo(Exe) { RedirectStandardError = true, RedirectStandardOutput = true, RedirectStandardInput = true, UseShellExecute = false };
            foreach (var a in new[] { "chat", "-m", RepositoryFiles.Path("models/bitnet-tinystories.gguf"), "-n", "4", "--temp", "0", "-t", "1" })
                psi.ArgumentList.Add(a);
            using var p = Process.Start(psi)!;
            var error = new System.Text.StringBuilder();
            p.ErrorDataReceived += (_, e) => { lock (error) error.AppendLine(e.Data); };
            p.BeginErrorReadLine();
            var stdout = p.StandardOutput.ReadToEndAsync(Ct);
            string Error() { lock (error) return error.ToString(); }
            await p.StandardInput.WriteLineAsync("Hi".AsMemory(), Ct);
            await p.StandardInput.FlushAsync(Ct);
            for (var until = DateTime.UtcNow.AddSeconds(60); !Error().Contains(" generated, ") && !p.HasExited && DateTime.UtcNow < until;) await Task.Delay(20, Ct);
            Assert.True(Error().Contains(" generated, "), Error());
            await p.StandardInput.WriteLineAsync(string.Concat(Enumerable.Repeat("word ", 2_000_000)).AsMemory(), Ct);
            await p.StandardInput.FlushAsync(Ct);
            await Task.Delay(200, Ct);
            using (var kill = Process.Start("kill", ["-INT", p.Id.ToString(CultureInfo.InvariantCulture)])) await kill.WaitForExitAsync(Ct);
            // The chat goes on: one more message answered, then the end of input.
            try
            {
                await p.StandardInput.WriteLineAsync("Hello".AsMemory(), Ct);
                p.StandardInput.Close();
            }
            catch (IOException)
            {
                // the signal landed at the prompt, after the refusal (a very fast machine): the process is gone; again
            }
            await p.WaitForExitAsync(Ct).WaitAsync(TimeSpan.FromSeconds(60), Ct);
            await stdout;
            // 130: the signal came outside the message's encoding (after its refusal, at the prompt, or before the line was
            // taken on a loaded machine), where Ctrl-C ends the chat as documented: again.
            if (p.ExitCode == 130) continue;
            Assert.True(p.ExitCode == 0, $"exit {p.ExitCode}: {Error()}");
            Assert.Contains("it was not sent", Error()); // refused as longer than the context, once encoded
            Assert.Equal(2, System.Text.RegularExpressions.Regex.Matches(Error(), " generated, ").Count); // "Hi" and "Hello" answered
            abandoned++;
        }
        Assert.True(abandoned > 0, "the signal never landed while the long message was encoded");
    }
}
