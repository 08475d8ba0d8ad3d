using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using BitNetSharp.Tests.Formats;

namespace BitNetSharp.Tests.Cli;

/// <summary>
/// Ctrl-C (SIGINT) on the CLI run as a real process: an interrupted `generate` writes what it has, whole, and exits 130
/// (it exited 0, so a script could not tell a cut-off run from a finished one).
/// </summary>
public class InterruptTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;
    private static readonly string Exe = Path.Combine(AppContext.BaseDirectory, "bitnet");

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
        var stdout = p.StandardOutput.ReadToEndAsync(Ct);
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
        using (var kill = Process.Start("kill", ["-INT", p.Id.ToString(CultureInfo.InvariantCulture)])) await kill.WaitForExitAsync(Ct);
        string error = await p.StandardError.ReadToEndAsync(Ct);
        await p.WaitForExitAsync(Ct).WaitAsync(TimeSpan.FromSeconds(60), Ct);
        await stdout;
        string tail = string.Join('\n', error.TrimEnd().Split('\n').TakeLast(3));
        Assert.True(p.ExitCode == 130, $"exit {p.ExitCode}: {tail}");
        Assert.Contains("interrupted after", error);
        using var written = JsonDocument.Parse(File.ReadAllText(ids));
        var generated = written.RootElement.GetProperty("ids").GetArrayLength();
        Assert.InRange(generated, 1, 249);
        Assert.Contains($"interrupted after {generated} generated tokens", error);
    }
}
