using System.Net;
using BitNetSharp.Monitoring;
using BitNetSharp.Monitoring.Alerts;
using BitNetSharp.Server;
using BitNetSharp.Tests.Formats;

namespace BitNetSharp.Tests.Server;

/// <summary>
/// Rule files are checked against what a server's signals really carry: a "match" on a label the metric does not have
/// is refused at load (it loaded and never fired, or excluded nothing), and the declared labels are the collected ones.
/// </summary>
public sealed class AlertRuleCheckTests
{
    private static string RuleFile(TestGguf.TempDirectory dir, string rule)
    {
        string path = dir.File("rules.json");
        File.WriteAllText(path, $"{{\"rules\": [{rule}]}}");
        return path;
    }

    [Theory]
    [InlineData("""{"name": "Flat0", "metric": "bitnet_health_logits_range", "match": {"layer": "0"}, "op": "<", "threshold": 0.5}""", "'layer'", "select nothing")]
    [InlineData("""{"name": "NoDown", "metric": "bitnet_health_residual_rms", "match": {"input": "!down"}, "op": ">", "threshold": 100}""", "'input'", "exclude nothing")]
    [InlineData("""{"name": "Q", "metric": "bitnet_requests_waiting", "match": {"instance": "a"}, "op": ">", "threshold": 1}""", "Its labels: none", "select nothing")]
    public void AMatchOnALabelTheMetricLacksIsRefusedAtLoad(string rule, string named, string consequence)
    {
        using var dir = new TestGguf.TempDirectory();
        string path = RuleFile(dir, rule);
        var e = Assert.Throws<ArgumentException>(() => BitNetServer.LoadAlertRules(path));
        Assert.Contains(path, e.Message);
        Assert.Contains(named, e.Message);
        Assert.Contains(consequence, e.Message);
    }

    /// <summary>A value no series has (the code is exported as "+1", the input as "gate_up") is refused at load: the rule
    /// loaded and never fired, or, negated, excluded nothing.</summary>
    [Theory]
    [InlineData("""{"name": "Ternary", "metric": "bitnet_weights_code_share_ratio", "match": {"code": "1"}, "op": "<", "threshold": 0.05}""", "code '1'", "-1, 0, +1")]
    [InlineData("""{"name": "Gate", "metric": "bitnet_health_activation_saturation_ratio", "match": {"input": "gate"}, "op": ">", "threshold": 0.05}""", "input 'gate'", "gate_up")]
    [InlineData("""{"name": "NotDown", "metric": "bitnet_health_activation_underflow_ratio", "match": {"input": "!Down"}, "op": ">", "threshold": 0.5}""", "exclude nothing", "qkv")]
    [InlineData("""{"name": "L", "metric": "bitnet_health_residual_rms", "match": {"layer": "one"}, "op": ">", "threshold": 100}""", "layer 'one'", "layer index")]
    [InlineData("""{"name": "K", "metric": "bitnet_health_kv_error_ratio", "match": {"tensor": "key"}, "op": ">", "threshold": 0.05}""", "tensor 'key'", "k, v")]
    [InlineData("""{"name": "F", "metric": "bitnet_request_success_total", "match": {"finish_reason": "eos"}, "aggregate": "increase", "op": ">", "threshold": 1}""", "finish_reason 'eos'", "stop, length")]
    [InlineData("""{"name": "A", "metric": "bitnet_alerts_firing", "match": {"rule": "Nope"}, "op": ">", "threshold": 0}""", "rule 'Nope'", "A")]
    public void AMatchOnAValueNoSeriesHasIsRefusedAtLoad(string rule, string named, string values)
    {
        using var dir = new TestGguf.TempDirectory();
        string path = RuleFile(dir, rule);
        var e = Assert.Throws<ArgumentException>(() => BitNetServer.LoadAlertRules(path));
        Assert.Contains(path, e.Message);
        Assert.Contains(named, e.Message);
        Assert.Contains(values, e.Message);
    }

    /// <summary>Two rules of one name are refused wherever rules come in, not only from a file: both exported under one
    /// rule label, and one's "resolved" cleared the other's "firing" at the webhook.</summary>
    [Fact]
    public void TwoRulesOfOneNameAreRefusedEverywhere()
    {
        var r = new AlertRule { Name = "X", Metric = "bitnet_health_residual_rms", Threshold = 1 };
        Assert.Contains("used twice", Assert.Throws<ArgumentException>(() => new AlertEngine([r, r with { Threshold = 5 }], _ => { })).Message);
        Assert.Contains("used twice", Assert.Throws<ArgumentException>(() => new MonitoringOptions { AlertRules = [r, r with { Threshold = 5 }] }.Validate()).Message);
    }

    [Fact]
    public void AMatchOnLabelsTheMetricCarriesLoads()
    {
        using var dir = new TestGguf.TempDirectory();
        string path = RuleFile(dir, """{"name": "Sat", "metric": "bitnet_health_activation_saturation_ratio", "match": {"input": "qkv", "layer": "!0"}, "op": ">", "threshold": 0.05}""");
        Assert.Single(BitNetServer.LoadAlertRules(path));
    }

    /// <summary>The declared label names are those of the series a serving model collects (every series, every metric).</summary>
    [Fact]
    public async Task TheDeclaredLabelsAreTheCollectedOnes()
    {
        await using var s = await TestServer.StartAsync(o => o with
        {
            Scheduler = o.Scheduler with { HealthSampleEvery = 1 },
            Monitoring = new MonitoringOptions { AlertInterval = TimeSpan.FromHours(1) },
        });
        var (status, _, _) = await s.PostAsync("v1/completions", new { model = TestServer.ModelId, prompt = "hello", max_tokens = 4, temperature = 0 });
        Assert.Equal(HttpStatusCode.OK, status);
        var set = new SignalSet();
        s.Server.Monitor!.CollectSignals(set);
        int labelled = 0;
        foreach (var (metric, labels) in set.AllSeries())
        {
            Assert.Contains(metric, ModelMonitor.AlertMetrics);
            var declared = ModelMonitor.AlertLabels.TryGetValue(metric, out var d) ? d : [];
            var names = Enumerable.Range(0, labels.Length / 2).Select(i => labels[2 * i]).Order(StringComparer.Ordinal).ToArray();
            Assert.Equal(declared.Order(StringComparer.Ordinal).ToArray(), names);
            if (names.Length > 0) labelled++;
            // Every value a series carries is one a rule may match.
            for (int i = 0; i < labels.Length; i += 2)
                if (labels[i] != "rule")
                    AlertRules.CheckMetrics([new AlertRule { Name = "R", Metric = metric, Match = new() { [labels[i]] = labels[i + 1] } }], ModelMonitor.AlertMetrics, labels: ModelMonitor.AlertLabels);
        }
        Assert.True(labelled > 10, $"only {labelled} labelled series were collected; the health sample did not run");
    }
}
