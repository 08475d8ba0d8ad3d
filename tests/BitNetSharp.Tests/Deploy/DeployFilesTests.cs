using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using BitNetSharp.Tests.Server;

namespace BitNetSharp.Tests.Deploy;

/// <summary>
/// deploy/: the Prometheus alerting rules, their promtool unit tests and scrape config, and the Grafana dashboard.
/// promtool checks the Prometheus files; the dashboard is checked for shape; and every metric any alert or
/// dashboard query reads must be one a running server exports, so a renamed instrument breaks this test rather
/// than a production alert.
/// </summary>
public sealed partial class DeployFilesTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static string PrometheusDir => RepositoryFiles.Path(Path.Combine("deploy", "prometheus"));
    private static string AlertsFile => Path.Combine(PrometheusDir, "bitnet-alerts.yml");
    private static string DashboardFile => RepositoryFiles.Path(Path.Combine("deploy", "grafana", "bitnet-dashboard.json"));

    /// <summary>The server's built-in rules, which the Prometheus rules mirror by name.</summary>
    private static readonly string[] AlertNames =
    [
        "BitNetNonFiniteLogits", "BitNetLogitRangeCollapse", "BitNetWeightChecksumMismatch", "BitNetActivationSaturation",
        "BitNetActivationUnderflow", "BitNetResidualBlowUp", "BitNetTokenLatencyJitter", "BitNetQueueSaturation",
        "BitNetEngineStalled",
    ];

    /// <summary>The file's rule beyond the server's that forwards the server's own evaluation (bitnet_alerts_firing).</summary>
    private const string ForwardingRule = "BitNetServerRuleFiring";

    /// <summary>The file's rule on Prometheus' own `up`: a replica it cannot scrape, for which no other rule can fire.</summary>
    private const string ScrapeRule = "BitNetScrapeFailing";

    /// <summary>The file's rule for a replica that answers scrapes but exports nothing: its model never loaded.</summary>
    private const string NotServingRule = "BitNetNotServing";

    // ------------------------------------------------------------------------------------------------ promtool

    /// <summary>promtool accepts the rules, passes their unit tests (every rule firing and not, at its <c>for:</c> boundary) and accepts the scrape config with the rules it loads.</summary>
    [Theory]
    [InlineData("check rules", "bitnet-alerts.yml")]
    [InlineData("test rules", "bitnet-alerts.test.yml")]
    [InlineData("check config", "prometheus.yml")]
    public async Task PromtoolAcceptsTheFile(string command, string file)
    {
        string promtool = RequirePromtool();
        var (code, output) = await RunPromtoolAsync(promtool, PrometheusDir, [.. command.Split(' '), file]);
        Assert.True(code == 0, $"promtool {command} {file} (exit {code}):\n{output}");
        Assert.Contains("SUCCESS", output);
        if (command != "test rules") Assert.Contains($"{AlertNames.Length + 3} rules found", output); // the server's, the forwarding, scrape and not-serving rules
    }

    /// <summary>Every dashboard query is valid PromQL: promtool checks them as recording rules (Grafana's variables replaced by values).</summary>
    [Fact]
    public async Task DashboardQueriesArePromQl()
    {
        string promtool = RequirePromtool();
        // Panel queries only: a query variable's label_values(…) is Grafana's, not PromQL.
        var queries = DashboardQueries(JsonDocument.Parse(File.ReadAllText(DashboardFile)).RootElement, variables: false);
        var yaml = new StringBuilder("groups:\n  - name: dashboard\n    rules:\n");
        for (int i = 0; i < queries.Count; i++)
        {
            string expr = queries[i].Expr.Replace("$__rate_interval", "1m", StringComparison.Ordinal).Replace("$instance", ".*", StringComparison.Ordinal);
            Assert.DoesNotContain("$", expr);
            yaml.Append("      - record: dashboard:query_").Append(i).Append('\n');
            yaml.Append("        expr: '").Append(expr.Replace("'", "''", StringComparison.Ordinal)).Append("'\n");
        }
        string dir = Directory.CreateTempSubdirectory("bitnet-dashboard-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "dashboard.yml"), yaml.ToString());
            var (code, output) = await RunPromtoolAsync(promtool, dir, ["check", "rules", "dashboard.yml"]);
            Assert.True(code == 0, $"promtool check rules on the dashboard's queries (exit {code}):\n{output}\n---\n{yaml}");
            Assert.Contains($"{queries.Count} rules found", output);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static string RequirePromtool()
    {
        if (PrometheusText.FindPromtool() is { } promtool) return promtool;
        Assert.Skip("promtool is not on PATH (Debian/Ubuntu: apt-get install -y --no-install-recommends prometheus); the deploy/prometheus files were not checked.");
        return null!;
    }

    private static async Task<(int ExitCode, string Output)> RunPromtoolAsync(string promtool, string workingDirectory, string[] arguments)
    {
        var psi = new ProcessStartInfo(promtool, arguments)
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync(Ct);
        var stderr = p.StandardError.ReadToEndAsync(Ct);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(60));
        try
        {
            await p.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            p.Kill();
            throw new Xunit.Sdk.XunitException($"promtool {string.Join(' ', arguments)} did not finish within 60 s.");
        }
        return (p.ExitCode, await stdout + await stderr);
    }

    // ------------------------------------------------------------------------------------------------ dashboard

    /// <summary>The dashboard is JSON Grafana imports: a recent schema, a Prometheus data-source variable and an instance variable, unique panel ids, and every panel (rows aside) reading that data source with at least one query.</summary>
    [Fact]
    public void DashboardIsWellFormed()
    {
        var root = JsonDocument.Parse(File.ReadAllText(DashboardFile)).RootElement;
        Assert.True(root.GetProperty("schemaVersion").GetInt32() >= 38);
        Assert.False(string.IsNullOrWhiteSpace(root.GetProperty("title").GetString()));
        Assert.False(string.IsNullOrWhiteSpace(root.GetProperty("uid").GetString()));

        var variables = root.GetProperty("templating").GetProperty("list").EnumerateArray().ToDictionary(v => v.GetProperty("name").GetString()!);
        Assert.Equal("datasource", variables["datasource"].GetProperty("type").GetString());
        Assert.Equal("prometheus", variables["datasource"].GetProperty("query").GetString());
        Assert.Equal("query", variables["instance"].GetProperty("type").GetString());
        Assert.Equal("${datasource}", variables["instance"].GetProperty("datasource").GetProperty("uid").GetString());
        // "All" is every instance, not the list the variable's query found: a replica that exports no bitnet series (the
        // case BitNetNotServing and BitNetScrapeFailing are for) is not in that list, and the ALERTS table hid its alerts.
        Assert.Equal(".*", variables["instance"].GetProperty("allValue").GetString());

        var panels = AllPanels(root).ToList();
        var ids = panels.Select(p => p.GetProperty("id").GetInt32()).ToList();
        Assert.Equal(ids.Count, ids.Distinct().Count());
        var rows = panels.Where(p => p.GetProperty("type").GetString() == "row").Select(p => p.GetProperty("title").GetString()).ToList();
        Assert.Equal(new[] { "Serving", "Model health", "Weights", "Alerts" }, rows);

        int data = 0;
        foreach (var panel in panels.Where(p => p.GetProperty("type").GetString() != "row"))
        {
            data++;
            string title = panel.GetProperty("title").GetString()!;
            Assert.True(panel.TryGetProperty("datasource", out var ds) && ds.GetProperty("type").GetString() == "prometheus" && ds.GetProperty("uid").GetString() == "${datasource}",
                $"panel '{title}' does not read the ${{datasource}} Prometheus data source");
            var grid = panel.GetProperty("gridPos");
            Assert.True(grid.GetProperty("x").GetInt32() + grid.GetProperty("w").GetInt32() <= 24, $"panel '{title}' is wider than the grid");
            Assert.True(panel.TryGetProperty("targets", out var targets) && targets.GetArrayLength() > 0, $"panel '{title}' has no query");
            var refIds = new HashSet<string>();
            foreach (var target in targets.EnumerateArray())
            {
                Assert.False(string.IsNullOrWhiteSpace(target.GetProperty("expr").GetString()), $"panel '{title}' has an empty query");
                Assert.True(refIds.Add(target.GetProperty("refId").GetString()!), $"panel '{title}' repeats a refId");
                Assert.Equal("${datasource}", target.GetProperty("datasource").GetProperty("uid").GetString());
            }
        }
        Assert.True(data >= 16, $"only {data} panels");
    }

    /// <summary>
    /// The token-latency spread is a window of the last 256 tokens, frozen while none flow: every panel query of it is
    /// gated on tokens flowing, as both alert rules are (an idle replica drew a flat, stale line, possibly in the red).
    /// </summary>
    [Fact]
    public void LatencySpreadPanelsShowOnlyWhileTokensFlow()
    {
        var root = JsonDocument.Parse(File.ReadAllText(DashboardFile)).RootElement;
        var spread = DashboardQueries(root, variables: false).Where(q => q.Expr.Contains("bitnet_health_token_latency_stddev_seconds", StringComparison.Ordinal)).ToList();
        Assert.True(spread.Count >= 2, $"{spread.Count} queries of the latency spread");
        foreach (var (_, expr) in spread)
            Assert.Matches(@"\band on\(instance, job\) \(rate\(bitnet_generation_tokens_total\{[^}]*\}\[\$__rate_interval\]\) > 0\)", expr);
    }

    /// <summary>
    /// "Weights verified" says what the flag is: 1 from load on until a check or a probe finds changed bytes, compared
    /// with the checksums taken at load. It said "matched the model file" after "the last full checksum", none of which holds.
    /// </summary>
    [Fact]
    public void WeightsVerifiedSaysWhatTheFlagMeans()
    {
        var root = JsonDocument.Parse(File.ReadAllText(DashboardFile)).RootElement;
        string description = AllPanels(root).Single(p => p.GetProperty("title").GetString() == "Weights verified").GetProperty("description").GetString()!;
        Assert.Contains("probe", description);
        Assert.Contains("checksums taken at load", description);
        Assert.Contains("before any check", description);
        Assert.DoesNotContain("matched the model file", description);
        // The flags it names exist.
        Assert.Contains("--verify-weights SECONDS", description);
        Assert.Contains("--verify-weights", File.ReadAllText(RepositoryFiles.Path(Path.Combine("src", "BitNetSharp.Cli", "Commands", "ServeCommand.cs"))));
    }

    /// <summary>Panels at the top level and inside collapsed rows.</summary>
    private static IEnumerable<JsonElement> AllPanels(JsonElement root)
    {
        foreach (var panel in root.GetProperty("panels").EnumerateArray())
        {
            yield return panel;
            if (panel.TryGetProperty("panels", out var nested))
                foreach (var inner in nested.EnumerateArray()) yield return inner;
        }
    }

    /// <summary>Every query of the dashboard, with where it is: panel targets (PromQL) and, unless told not to, query variables.</summary>
    private static List<(string Where, string Expr)> DashboardQueries(JsonElement root, bool variables = true)
    {
        var queries = new List<(string, string)>();
        foreach (var panel in AllPanels(root))
            if (panel.TryGetProperty("targets", out var targets))
                foreach (var target in targets.EnumerateArray())
                    queries.Add(($"dashboard panel '{panel.GetProperty("title").GetString()}'", target.GetProperty("expr").GetString()!));
        foreach (var variable in root.GetProperty("templating").GetProperty("list").EnumerateArray())
            if (variables && variable.GetProperty("type").GetString() == "query")
                queries.Add(($"dashboard variable ${variable.GetProperty("name").GetString()}", variable.GetProperty("definition").GetString()!));
        return queries;
    }

    // ------------------------------------------------------------------------------------------------ metric names

    /// <summary>
    /// The activation bars colour by the 8-bit thresholds only the 8-bit inputs: a calibrated model's healthy 4-bit input
    /// (far more codes at 0 and at its limits) was drawn red with no alert behind it. An override by display name
    /// ("… (N-bit)") gives the other widths one neutral colour, as the built-in dashboard leaves them uncoloured.
    /// </summary>
    [Fact]
    public void ActivationBarsColourOnlyEightBitInputsByTheThresholds()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(DashboardFile));
        int checkedPanels = 0;
        foreach (var panel in doc.RootElement.GetProperty("panels").EnumerateArray())
        {
            if (panel.GetProperty("type").GetString() != "bargauge") continue;
            var exprs = panel.GetProperty("targets").EnumerateArray().Select(t => t.GetProperty("expr").GetString()!).ToList();
            if (!exprs.Any(e => e.Contains("activation_saturation_ratio") || e.Contains("activation_underflow_ratio"))) continue;
            checkedPanels++;
            string title = panel.GetProperty("title").GetString()!;
            var legends = panel.GetProperty("targets").EnumerateArray().Select(t => t.GetProperty("legendFormat").GetString()!).ToList();
            Assert.All(legends, l => Assert.EndsWith("({{bits}}-bit)", l));
            var overrides = panel.GetProperty("fieldConfig").GetProperty("overrides").EnumerateArray()
                .Where(o => o.GetProperty("matcher").GetProperty("id").GetString() == "byRegexp").ToList();
            var neutral = Assert.Single(overrides);
            var regex = new System.Text.RegularExpressions.Regex(neutral.GetProperty("matcher").GetProperty("options").GetString()!);
            foreach (var bits in new[] { "2", "3", "4", "6" }) Assert.Matches(regex, $"L3 qkv ({bits}-bit)");
            Assert.DoesNotMatch(regex, "L3 qkv (8-bit)");
            Assert.DoesNotMatch(regex, "L13 gate_up (8-bit)");
            var steps = neutral.GetProperty("properties").EnumerateArray().Single(p => p.GetProperty("id").GetString() == "thresholds")
                .GetProperty("value").GetProperty("steps");
            Assert.True(steps.GetArrayLength() == 1, $"{title}: the low-bit override has {steps.GetArrayLength()} colours, not one");
        }
        Assert.Equal(2, checkedPanels);
    }

    /// <summary>The rules file holds exactly the server's rules, each with an expression that reads bitnet metrics.</summary>
    [Fact]
    public void AlertRulesAreTheServersRules()
    {
        var rules = AlertExpressions(File.ReadAllText(AlertsFile));
        Assert.Equal(AlertNames.Append(ForwardingRule).Append(ScrapeRule).Append(NotServingRule).Order(StringComparer.Ordinal), rules.Select(r => r.Alert).Order(StringComparer.Ordinal));
        foreach (var (alert, expr) in rules)
            if (alert != ScrapeRule) Assert.True(MetricNames(expr).Any(), $"{alert}: no bitnet metric found in '{expr}'");
        // The rules on `up` cover both scrape jobs: prometheus.yml's and the Kubernetes pod-discovery job.
        foreach (var rule in new[] { ScrapeRule, NotServingRule })
        {
            string scrape = rules.Single(r => r.Alert == rule).Expr;
            var jobs = System.Text.RegularExpressions.Regex.Match(scrape, "job=~\"([^\"]+)\"").Groups[1].Value;
            Assert.Matches($"^(?:{jobs})$", "bitnet");
            Assert.Matches($"^(?:{jobs})$", "bitnet-kubernetes-pods");
            Assert.DoesNotMatch($"^(?:{jobs})$", "node");
        }
    }

    /// <summary>
    /// Every aggregation keeps the replica's namespace and pod (the Kubernetes scrape job's labels): five rules
    /// aggregated by (instance, job) only, so their alerts named a pod IP and escaped routing by namespace.
    /// </summary>
    [Fact]
    public void EveryAggregationKeepsThePodLabels()
    {
        foreach (var (alert, expr) in AlertExpressions(File.ReadAllText(AlertsFile)))
            foreach (System.Text.RegularExpressions.Match m in System.Text.RegularExpressions.Regex.Matches(expr, @"\bby\s*\(([^)]*)\)"))
            {
                var labels = m.Groups[1].Value.Split(',', StringSplitOptions.TrimEntries);
                Assert.True(labels.Contains("namespace") && labels.Contains("pod"), $"{alert}: '{m.Value}' drops namespace or pod");
            }
    }

    /// <summary>The extractor finds metric names and only them: not label names, label values, regexes, functions, keywords, Grafana variables or ALERTS.</summary>
    [Fact]
    public void MetricNamesAreExtractedFromPromQl()
    {
        const string expr = """
            histogram_quantile(0.9, sum by (le, bitnet_label) (rate(bitnet_a_seconds_bucket{input!="bitnet_value", job=~'bitnet_.*'}[$__rate_interval])))
              / on (instance) group_left (bitnet_other) bitnet_b_total{bitnet_c="x"} offset 5m
              + ignoring(bitnet_d) max without(bitnet_e) (bitnet_f) + count(ALERTS{alertname="bitnet_g"}) + $bitnet_var
            """;
        Assert.Equal(new[] { "bitnet_a_seconds_bucket", "bitnet_b_total", "bitnet_f" }, MetricNames(expr).Order(StringComparer.Ordinal));
        Assert.Equal(new[] { "bitnet_engine_steps_total" }, MetricNames("label_values(bitnet_engine_steps_total, instance)"));
    }

    /// <summary>
    /// Every metric family an alert expression or a dashboard query reads is on a running server's /metrics
    /// (histogram series by their family: _bucket, _sum and _count stripped), after two completions so the
    /// histograms have samples.
    /// </summary>
    [Fact]
    public async Task EveryReferencedMetricIsExported()
    {
        var references = new List<(string Where, string Expr)>();
        references.AddRange(AlertExpressions(File.ReadAllText(AlertsFile)).Select(r => ($"alert {r.Alert}", r.Expr)));
        references.AddRange(DashboardQueries(JsonDocument.Parse(File.ReadAllText(DashboardFile)).RootElement));
        var used = new SortedDictionary<string, SortedSet<string>>(StringComparer.Ordinal);
        foreach (var (where, expr) in references)
            foreach (var name in MetricNames(expr))
            {
                if (!used.TryGetValue(name, out var places)) used[name] = places = new SortedSet<string>(StringComparer.Ordinal);
                places.Add(where);
            }
        Assert.True(used.Count >= 30, $"only {used.Count} metric names found in the alerts and the dashboard");

        await using var s = await TestServer.StartAsync();
        foreach (var prompt in new[] { "deploy one", "deploy two" })
        {
            var (status, _, _) = await s.PostAsync("v1/completions", new { prompt, max_tokens = 4, ignore_eos = true });
            Assert.Equal(HttpStatusCode.OK, status);
        }
        string text = await s.MetricsAsync();
        var families = PrometheusText.Parse(text);
        Assert.True(TestServer.Sample(text, "bitnet_time_to_first_token_seconds_count") >= 2);

        var missing = used.Where(u => !Exported(u.Key, families)).ToList();
        Assert.True(missing.Count == 0,
            $"{missing.Count} of {used.Count} referenced metrics are not on /metrics:\n"
            + string.Join('\n', missing.Select(m => $"  {m.Key}  (read by {string.Join("; ", m.Value)})")));
    }

    private static bool Exported(string name, Dictionary<string, string> families)
    {
        if (families.ContainsKey(name)) return true;
        foreach (var suffix in (string[])["_bucket", "_sum", "_count"])
            if (name.EndsWith(suffix, StringComparison.Ordinal) && families.TryGetValue(name[..^suffix.Length], out var type))
                return suffix != "_bucket" ? type is "histogram" or "summary" : type == "histogram";
        return false;
    }

    /// <summary>
    /// The metric names a PromQL expression reads: string literals (label values, regexes) removed, then label
    /// matchers in braces, then the label lists of by/without/on/ignoring/group_left/group_right; what is left of
    /// the form bitnet_… and is not a Grafana variable or a function call is a metric name.
    /// </summary>
    internal static IEnumerable<string> MetricNames(string promql)
    {
        string s = StringLiteral().Replace(promql, "\"\"");
        s = Matchers().Replace(s, "{}");
        s = LabelList().Replace(s, "$1()");
        return MetricName().Matches(s).Select(m => m.Value).Distinct();
    }

    [GeneratedRegex(@"""(?:\\.|[^""\\])*""|'(?:\\.|[^'\\])*'|`[^`]*`")]
    private static partial Regex StringLiteral();

    [GeneratedRegex(@"\{[^{}]*\}")]
    private static partial Regex Matchers();

    [GeneratedRegex(@"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")]
    private static partial Regex LabelList();

    [GeneratedRegex(@"(?<![A-Za-z0-9_:$])bitnet_[a-z0-9_]+(?![A-Za-z0-9_:]|\s*\()")]
    private static partial Regex MetricName();

    /// <summary>
    /// (alert, expr) of each rule in a hand-written rules file: <c>- alert: NAME</c> lines and the <c>expr:</c>
    /// that follows, either inline (optionally quoted) or a block scalar (<c>|</c> or <c>&gt;</c>) of the lines
    /// indented deeper than the key.
    /// </summary>
    internal static List<(string Alert, string Expr)> AlertExpressions(string yaml)
    {
        var rules = new List<(string, string)>();
        var lines = yaml.Replace("\r", "", StringComparison.Ordinal).Split('\n');
        string? alert = null;
        for (int i = 0; i < lines.Length; i++)
        {
            string trimmed = lines[i].TrimStart();
            if (trimmed.StartsWith("- alert:", StringComparison.Ordinal))
            {
                alert = trimmed["- alert:".Length..].Trim();
                continue;
            }
            if (!trimmed.StartsWith("expr:", StringComparison.Ordinal)) continue;
            Assert.True(alert is not null, $"line {i + 1}: an expr before any alert");
            string value = trimmed["expr:".Length..].Trim();
            if (value.Length > 0 && value[0] is '|' or '>')
            {
                int indent = lines[i].Length - trimmed.Length;
                var block = new StringBuilder();
                while (i + 1 < lines.Length && (lines[i + 1].Trim().Length == 0 || lines[i + 1].Length - lines[i + 1].TrimStart().Length > indent))
                    block.Append(lines[++i].Trim()).Append('\n');
                value = block.ToString().Trim();
            }
            else if (value.Length >= 2 && value[0] is '"' or '\'' && value[^1] == value[0])
            {
                value = value[1..^1];
            }
            Assert.False(value.Length == 0, $"{alert}: empty expr");
            rules.Add((alert!, value));
            alert = null;
        }
        return rules;
    }
}
