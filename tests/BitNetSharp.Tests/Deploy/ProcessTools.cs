using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace BitNetSharp.Tests.Deploy;

/// <summary>What the tests that run deploy tools (nginx, Alertmanager, amtool) share: a free port and a bounded run.</summary>
internal static class ProcessTools
{
    /// <summary>A loopback port free now (another process can take it before the child binds it: retry on that).</summary>
    public static int FreePort()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }

    /// <summary>Runs <paramref name="file"/> to its exit within <paramref name="timeout"/>: its exit code and stdout then stderr.</summary>
    public static async Task<(int ExitCode, string Output)> RunAsync(string file, string[] arguments, TimeSpan timeout)
    {
        var ct = TestContext.Current.CancellationToken;
        using var p = Process.Start(new ProcessStartInfo(file, arguments) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false })!;
        var stdout = p.StandardOutput.ReadToEndAsync(ct);
        var stderr = p.StandardError.ReadToEndAsync(ct);
        await p.WaitForExitAsync(ct).WaitAsync(timeout, ct);
        return (p.ExitCode, await stdout + await stderr);
    }
}
