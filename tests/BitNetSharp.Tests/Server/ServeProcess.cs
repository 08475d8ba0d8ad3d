using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;

namespace BitNetSharp.Tests.Server;

/// <summary>
/// `bitnet serve` as a real process (the CLI's apphost copied next to the tests): its stderr collected, the address it
/// announces on its "ready:" line, killed with its children on dispose if still running.
/// </summary>
internal sealed class ServeProcess : IDisposable
{
    private readonly StringBuilder _stderr = new();
    private readonly TaskCompletionSource<Uri> _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>The apphost's path; tests skip when it is missing.</summary>
    public static string Executable => Path.Combine(AppContext.BaseDirectory, "bitnet");

    public ServeProcess(params string[] serveArguments)
    {
        var psi = new ProcessStartInfo(Executable) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        psi.ArgumentList.Add("serve");
        foreach (var a in serveArguments) psi.ArgumentList.Add(a);
        Process = Process.Start(psi)!;
        Process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (_stderr) _stderr.AppendLine(e.Data);
            var m = Regex.Match(e.Data, @"^ready: model '[^']*' at (http://[^ ]+/)v1");
            if (m.Success) _ready.TrySetResult(new Uri(m.Groups[1].Value));
        };
        Process.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (_stdout) _stdout.AppendLine(e.Data);
        };
        Process.BeginErrorReadLine();
        Process.BeginOutputReadLine();
    }

    public Process Process { get; }

    private readonly System.Text.StringBuilder _stdout = new();

    /// <summary>What the server wrote to stderr so far.</summary>
    public string Log
    {
        get { lock (_stderr) return _stderr.ToString(); }
    }

    /// <summary>What the server wrote to stdout so far (its logger's lines: warn:, fail:).</summary>
    public string Output
    {
        get { lock (_stdout) return _stdout.ToString(); }
    }

    /// <summary>The server's base address (http://127.0.0.1:PORT/) once it says it is ready.</summary>
    public Task<Uri> ReadyAsync(TimeSpan timeout, CancellationToken ct) => _ready.Task.WaitAsync(timeout, ct);

    public void Dispose()
    {
        if (!Process.HasExited) Process.Kill(entireProcessTree: true);
        Process.Dispose();
    }
}
