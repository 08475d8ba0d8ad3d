using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using BitNetSharp.Monitoring.Alerts;
using BitNetSharp.Tests.Formats;
using YamlDotNet.RepresentationModel;

namespace BitNetSharp.Tests.Deploy;

/// <summary>
/// deploy/prometheus/alertmanager.yml: amtool accepts it, and a real Alertmanager running it quiets the forwarded copy
/// of a server rule (BitNetServerRuleFiring) while the Prometheus rule of the same name fires for the same replica,
/// and only then. The alerts posted carry the labels bitnet-alerts.yml gives each rule, so a rule that lost its
/// <c>rule</c> label, or an inhibit rule that matches on a label the alerts lack, fails here. Skipped without
/// Debian's prometheus-alertmanager (amtool and prometheus-alertmanager on PATH).
/// </summary>
public sealed class AlertmanagerTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;
    private static string PrometheusDir => RepositoryFiles.Path(Path.Combine("deploy", "prometheus"));
    private static string ConfigFile => Path.Combine(PrometheusDir, "alertmanager.yml");
    private const string ForwardingRule = "BitNetServerRuleFiring";

    [Fact]
    public async Task AmtoolAcceptsTheConfig()
    {
        string amtool = Require("amtool");
        var (code, output) = await ProcessTools.RunAsync(amtool, ["check-config", ConfigFile], TimeSpan.FromSeconds(60));
        Assert.True(code == 0, $"amtool check-config {ConfigFile} (exit {code}):\n{output}");
        Assert.Contains("1 inhibit rules", output);
    }

    [Fact]
    public async Task TheForwardedCopyIsQuietOnlyWhileThePrometheusRuleFiresForTheSameReplica()
    {
        string alertmanager = Require("prometheus-alertmanager");
        var rules = PrometheusRules();
        Assert.Contains(rules, r => r.Alert == ForwardingRule);
        var serverRules = rules.Where(r => r.Alert != ForwardingRule).ToList();
        Assert.NotEmpty(serverRules);

        using var dir = new TestGguf.TempDirectory();
        var (process, http, _) = await StartAsync(alertmanager, dir.Path);
        using var started = process;
        using var client = http;
        try
        {
            // Replica a: every Prometheus rule fires, and the server forwards each of its own rules (the same names).
            // Replica b: only the forwarded copies (its traffic too sparse for scrape-based for:). Replica a also
            // forwards a custom rule of an --alert-rules file, which no Prometheus rule mirrors.
            var alerts = new JsonArray();
            foreach (var rule in serverRules)
                alerts.Add(Alert(rule.Labels.Append(new("alertname", rule.Alert)), "a"));
            foreach (var rule in AlertRules.Default) // the server's rules, as bitnet_alerts_firing{rule, severity} names them
            {
                Assert.Contains(serverRules, r => r.Alert == rule.Name);
                foreach (var instance in new[] { "a", "b" })
                    alerts.Add(Alert(ForwardedLabels(rules, rule.Name, rule.Severity), instance));
            }
            alerts.Add(Alert(ForwardedLabels(rules, "MyCustomRule", "warning"), "a"));
            using (var post = await http.PostAsync("/api/v2/alerts", new StringContent(alerts.ToJsonString(), Encoding.UTF8, "application/json"), Ct))
                Assert.True(post.IsSuccessStatusCode, $"POST /api/v2/alerts: {(int)post.StatusCode} {await post.Content.ReadAsStringAsync(Ct)}");

            // The inhibitor learns of the source alerts in its own goroutine after the POST returns: poll until every
            // alert is listed and every expected suppression shows (or 15 s pass), then judge the states.
            var states = new Dictionary<(string Alert, string Rule, string Instance), string>();
            var clock = Stopwatch.StartNew();
            do
            {
                if (states.Count > 0) await Task.Delay(100, Ct);
                states.Clear();
                using var doc = JsonDocument.Parse(await http.GetStringAsync("/api/v2/alerts", Ct));
                foreach (var a in doc.RootElement.EnumerateArray())
                {
                    var labels = a.GetProperty("labels");
                    string Label(string name) => labels.TryGetProperty(name, out var v) ? v.GetString()! : "";
                    states[(Label("alertname"), Label("rule"), Label("instance"))] = a.GetProperty("status").GetProperty("state").GetString()!;
                }
            }
            while (clock.Elapsed < TimeSpan.FromSeconds(15)
                   && (states.Count < alerts.Count || AlertRules.Default.Any(r => states.GetValueOrDefault((ForwardingRule, r.Name, "a")) != "suppressed")));
            Assert.Equal(alerts.Count, states.Count);
            foreach (var rule in serverRules) Assert.Equal("active", states[(rule.Alert, rule.Alert, "a")]);
            foreach (var rule in AlertRules.Default)
            {
                Assert.True(states[(ForwardingRule, rule.Name, "a")] == "suppressed", $"the forwarded {rule.Name} on replica a, where the Prometheus rule fires, was not inhibited");
                Assert.True(states[(ForwardingRule, rule.Name, "b")] == "active", $"the forwarded {rule.Name} on replica b, where no Prometheus rule fires, was inhibited");
            }
            Assert.Equal("active", states[(ForwardingRule, "MyCustomRule", "a")]);
        }
        finally
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync(Ct).WaitAsync(TimeSpan.FromSeconds(10), Ct);
        }
    }

    private sealed record PrometheusRule(string Alert, List<KeyValuePair<string, string>> Labels);

    /// <summary>The alerting rules of bitnet-alerts.yml with their static labels.</summary>
    private static List<PrometheusRule> PrometheusRules()
    {
        var yaml = new YamlStream();
        using (var reader = new StreamReader(Path.Combine(PrometheusDir, "bitnet-alerts.yml"))) yaml.Load(reader);
        var rules = new List<PrometheusRule>();
        var root = (YamlMappingNode)yaml.Documents[0].RootNode;
        foreach (YamlMappingNode group in (YamlSequenceNode)root["groups"])
            foreach (YamlMappingNode rule in (YamlSequenceNode)group["rules"])
            {
                if (!rule.Children.TryGetValue("alert", out var alert)) continue;
                var labels = new List<KeyValuePair<string, string>>();
                if (rule.Children.TryGetValue("labels", out var node))
                    foreach (var (k, v) in (YamlMappingNode)node) labels.Add(new(((YamlScalarNode)k).Value!, ((YamlScalarNode)v).Value!));
                rules.Add(new PrometheusRule(((YamlScalarNode)alert).Value!, labels));
            }
        return rules;
    }

    /// <summary>BitNetServerRuleFiring's labels for a server rule: the file's static labels, and bitnet_alerts_firing's rule and severity.</summary>
    private static IEnumerable<KeyValuePair<string, string>> ForwardedLabels(List<PrometheusRule> rules, string rule, string severity) =>
        rules.Single(r => r.Alert == ForwardingRule).Labels
            .Concat([new("alertname", ForwardingRule), new("rule", rule), new("severity", severity)]);

    private static JsonObject Alert(IEnumerable<KeyValuePair<string, string>> labels, string instance)
    {
        var set = new JsonObject { ["instance"] = instance, ["job"] = "bitnet" };
        foreach (var (k, v) in labels) set[k] = v;
        return new JsonObject { ["labels"] = set };
    }

    /// <summary>
    /// Alertmanager with the config on a free port, ready. A port found free can be taken by another test before the
    /// child binds it: an exit saying so is retried on another port (three tries).
    /// </summary>
    private static async Task<(Process Process, HttpClient Http, StringBuilder Log)> StartAsync(string alertmanager, string storage)
    {
        for (int attempt = 1; ; attempt++)
        {
            int port = ProcessTools.FreePort();
            var psi = new ProcessStartInfo(alertmanager,
            [
                $"--config.file={ConfigFile}", $"--storage.path={storage}", $"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=", // no gossip port
            ])
            { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
            var process = Process.Start(psi)!;
            var log = new StringBuilder();
            process.ErrorDataReceived += (_, e) => { lock (log) log.AppendLine(e.Data); };
            process.OutputDataReceived += (_, e) => { lock (log) log.AppendLine(e.Data); };
            process.BeginErrorReadLine();
            process.BeginOutputReadLine();
            var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(10) };
            try
            {
                await WaitReadyAsync(http, process, log);
                return (process, http, log);
            }
            catch (Xunit.Sdk.XunitException) when (attempt < 3 && process.HasExited && log.ToString().Contains("address already in use", StringComparison.OrdinalIgnoreCase))
            {
                http.Dispose();
                process.Dispose();
            }
        }
    }

    private static async Task WaitReadyAsync(HttpClient http, Process process, StringBuilder log)
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromSeconds(30))
        {
            if (process.HasExited)
                lock (log) throw new Xunit.Sdk.XunitException($"prometheus-alertmanager exited ({process.ExitCode}):\n{log}");
            try
            {
                using var r = await http.GetAsync("/-/ready", Ct);
                if (r.IsSuccessStatusCode) return;
            }
            catch (HttpRequestException)
            {
            }
            await Task.Delay(100, Ct);
        }
        lock (log) throw new Xunit.Sdk.XunitException($"prometheus-alertmanager was not ready within 30 s:\n{log}");
    }

    private static string Require(string tool)
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator))
            if (dir.Length > 0 && File.Exists(Path.Combine(dir, tool))) return Path.Combine(dir, tool);
        Assert.Skip($"{tool} is not on PATH (Debian/Ubuntu: apt-get install -y --no-install-recommends prometheus-alertmanager); deploy/prometheus/alertmanager.yml was not checked.");
        return "";
    }
}
