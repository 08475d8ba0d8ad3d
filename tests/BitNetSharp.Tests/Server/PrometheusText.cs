using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;

namespace BitNetSharp.Tests.Server;

/// <summary>A strict reader of the Prometheus text format (0.0.4) for tests, and promtool when it is installed.</summary>
internal static partial class PrometheusText
{
    [GeneratedRegex(@"^(?<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?<labels>[a-zA-Z_][a-zA-Z0-9_]*=""(\\.|[^""\\])*""(,[a-zA-Z_][a-zA-Z0-9_]*=""(\\.|[^""\\])*"")*)\})? (?<value>\S+)$")]
    private static partial Regex SampleLine();

    /// <summary>Family name → type. Throws on any line that is not HELP, TYPE or a well-formed sample of a declared family.</summary>
    public static Dictionary<string, string> Parse(string text)
    {
        var types = new Dictionary<string, string>();
        var help = new HashSet<string>();
        foreach (var line in text.Split('\n'))
        {
            if (line.Length == 0) continue;
            if (line.StartsWith("# HELP ", StringComparison.Ordinal))
            {
                help.Add(line.Split(' ')[2]);
                continue;
            }
            if (line.StartsWith("# TYPE ", StringComparison.Ordinal))
            {
                var parts = line.Split(' ');
                Assert.True(parts.Length == 4 && parts[3] is "counter" or "gauge" or "histogram" or "summary" or "untyped", $"bad TYPE line: {line}");
                Assert.True(types.TryAdd(parts[2], parts[3]), $"TYPE given twice: {line}");
                Assert.Contains(parts[2], help);
                continue;
            }
            var m = SampleLine().Match(line);
            Assert.True(m.Success, $"not a sample line: {line}");
            var value = m.Groups["value"].Value;
            Assert.True(value is "+Inf" or "-Inf" or "NaN" || double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out _), $"bad value: {line}");
            string name = m.Groups["name"].Value;
            string family = types.ContainsKey(name) ? name
                : new[] { "_bucket", "_sum", "_count" }.Where(name.EndsWith).Select(sfx => name[..^sfx.Length]).FirstOrDefault(types.ContainsKey) ?? "";
            Assert.True(family.Length > 0, $"sample of an undeclared family: {line}");
        }
        return types;
    }

    public static string? FindPromtool()
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator))
        {
            if (dir.Length == 0) continue;
            var path = Path.Combine(dir, "promtool");
            if (File.Exists(path)) return path;
        }
        return null;
    }

    /// <summary>Runs <c>promtool check metrics</c> on <paramref name="text"/> (stdin), bounded to 30 s.</summary>
    public static async Task<(int ExitCode, string Output)> RunPromtoolAsync(string promtool, string text)
    {
        var psi = new ProcessStartInfo(promtool, ["check", "metrics"])
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        await p.StandardInput.WriteAsync(text);
        p.StandardInput.Close();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        try
        {
            await p.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            p.Kill();
            throw new Xunit.Sdk.XunitException("promtool did not finish within 30 s.");
        }
        return (p.ExitCode, await stdout + await stderr);
    }
}
