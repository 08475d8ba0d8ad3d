using System.Text.Json;
using System.Text.Json.Serialization;

namespace BitNetSharp.Monitoring.Alerts;

/// <summary>
/// One threshold rule over a signal: the series of <see cref="Metric"/> (Prometheus names, as /metrics exports them)
/// whose labels match <see cref="Match"/> are reduced by <see cref="Aggregate"/> (max, min, sum, avg; increase: the
/// summed counter's growth over the last WindowSeconds), optionally divided by another metric's sum, and compared
/// with <see cref="Threshold"/>. The alert fires when the condition has held for <see cref="For"/> consecutive
/// evaluations and at least <see cref="ForSeconds"/>; it resolves at the first evaluation where it does not hold.
/// <see cref="Metric"/> may name several metrics joined by " + ": each is reduced alone and the results are added.
/// </summary>
public sealed record AlertRule
{
    [JsonPropertyName("name")] public required string Name { get; init; }
    [JsonPropertyName("metric")] public required string Metric { get; init; }
    [JsonPropertyName("aggregate")] public string Aggregate { get; init; } = "max";
    /// <summary>Label → value; a value starting with '!' excludes it.</summary>
    [JsonPropertyName("match")] public Dictionary<string, string>? Match { get; init; }
    [JsonPropertyName("divide_by")] public string? DivideBy { get; init; }
    [JsonPropertyName("op")] public string Op { get; init; } = ">";
    /// <summary>Required in a rule file: without it a rule read "value &gt; 0", which a saturation rule always meets.</summary>
    [JsonPropertyName("threshold"), JsonRequired] public double Threshold { get; init; }
    [JsonPropertyName("for")] public int For { get; init; } = 1;
    [JsonPropertyName("for_seconds")] public double ForSeconds { get; init; }
    /// <summary>For "increase": the counter's growth over this many seconds (Prometheus' increase(x[5m]) is 300).</summary>
    [JsonPropertyName("window_seconds")] public double WindowSeconds { get; init; } = 300;
    /// <summary>
    /// Once firing, the alert stays firing until the condition has not held for this many seconds (Prometheus'
    /// keep_firing_for): a dip of one evaluation under sustained trouble neither resolves it nor fires it again.
    /// </summary>
    [JsonPropertyName("keep_firing_for_seconds")] public double KeepFiringForSeconds { get; init; }
    [JsonPropertyName("severity")] public string Severity { get; init; } = "warning";
    [JsonPropertyName("component")] public string Component { get; init; } = "model";
    [JsonPropertyName("summary")] public string? Summary { get; init; }
    [JsonPropertyName("description")] public string? Description { get; init; }

    internal static readonly string[] Aggregates = ["max", "min", "sum", "avg", "increase"];
    internal static readonly string[] Ops = [">", ">=", "<", "<=", "==", "!="];

    /// <summary>Throws <see cref="ArgumentException"/> naming the rule and the field that is wrong.</summary>
    public void Validate(string source)
    {
        string where = $"{source}: rule '{Name}'";
        if (string.IsNullOrWhiteSpace(Name)) throw new ArgumentException($"{source}: a rule has no \"name\".");
        if (string.IsNullOrWhiteSpace(Metric)) throw new ArgumentException($"{where} has no \"metric\".");
        foreach (var part in Metric.Split('+', StringSplitOptions.TrimEntries))
            if (!IsMetricName(part))
                throw new ArgumentException($"{where}: \"metric\" '{Metric}' has {(part.Length == 0 ? "an empty part" : $"'{part}', which is not a metric name")}; " +
                    "give one metric name (letters, digits, '_' and ':') or several joined by ' + '.");
        if (DivideBy is not null && string.IsNullOrWhiteSpace(DivideBy)) throw new ArgumentException($"{where}: \"divide_by\" is empty; name a metric or leave the field out.");
        if (DivideBy is not null && !IsMetricName(DivideBy.Trim()))
            throw new ArgumentException($"{where}: \"divide_by\" '{DivideBy}' is not a metric name; give one metric name (letters, digits, '_' and ':').");
        if (Match is not null)
            foreach (var (label, value) in Match)
                if (string.IsNullOrEmpty(label) || value is null) throw new ArgumentException($"{where}: \"match\" needs a label name and a string value for each entry (\"label\": \"value\" or \"!value\"); got '{label}': null.");
        if (Array.IndexOf(Aggregates, Aggregate) < 0) throw new ArgumentException($"{where}: \"aggregate\" must be one of {string.Join(", ", Aggregates)}; got {(Aggregate is null ? "null" : $"'{Aggregate}'")}.");
        if (Array.IndexOf(Ops, Op) < 0) throw new ArgumentException($"{where}: \"op\" must be one of {string.Join(" ", Ops)}; got {(Op is null ? "null" : $"'{Op}'")}.");
        if (!double.IsFinite(Threshold)) throw new ArgumentException($"{where}: \"threshold\" must be a finite number.");
        if (For < 1) throw new ArgumentException($"{where}: \"for\" must be ≥ 1 (consecutive evaluations); got {For}.");
        if (!(WindowSeconds > 0) || !double.IsFinite(WindowSeconds)) throw new ArgumentException($"{where}: \"window_seconds\" must be > 0; got {WindowSeconds}.");
        if (ForSeconds < 0 || !double.IsFinite(ForSeconds)) throw new ArgumentException($"{where}: \"for_seconds\" must be ≥ 0; got {ForSeconds}.");
        if (KeepFiringForSeconds < 0 || !double.IsFinite(KeepFiringForSeconds))
            throw new ArgumentException($"{where}: \"keep_firing_for_seconds\" must be ≥ 0; got {KeepFiringForSeconds}.");
        if (Severity is not ("info" or "warning" or "critical"))
            throw new ArgumentException($"{where}: \"severity\" must be info, warning or critical; got {(Severity is null ? "null" : $"'{Severity}'")}.");
        // A label value: Alertmanager's labels are strings (null reached the webhook as "component": null).
        if (string.IsNullOrWhiteSpace(Component))
            throw new ArgumentException($"{where}: \"component\" must be a non-empty string; got {(Component is null ? "null" : $"'{Component}'")} (what the alert is about: model, weights, serving, ...; leave it out for \"model\").");
    }

    /// <summary>A Prometheus metric name: [a-zA-Z_:][a-zA-Z0-9_:]*.</summary>
    internal static bool IsMetricName(string name)
    {
        if (name.Length == 0 || char.IsAsciiDigit(name[0])) return false;
        foreach (char c in name)
            if (!(char.IsAsciiLetterOrDigit(c) || c is '_' or ':')) return false;
        return true;
    }

    /// <summary>What the rule compares, as its messages name it: the metric, or the ratio for a <see cref="DivideBy"/> rule
    /// (the ratio's value was printed as the numerator's: "bitnet_prompt_tokens_total = 0.166667").</summary>
    [JsonIgnore]
    public string Quantity
    {
        get
        {
            // An increase rule compares the counter's increase over its window (its resolve read "… = 0" while the
            // counter stood at 2, as if it had gone back to 0).
            string metric = Aggregate == "increase" ? $"increase({Metric})" : Metric;
            if (DivideBy is null) return metric;
            return Aggregate == "increase" ? $"{metric} / increase({DivideBy.Trim()})" : $"{metric} / {DivideBy.Trim()}";
        }
    }

    public bool Holds(double value) => Op switch
    {
        ">" => value > Threshold,
        ">=" => value >= Threshold,
        "<" => value < Threshold,
        "<=" => value <= Threshold,
        "==" => value == Threshold,
        _ => value != Threshold,
    };
}

/// <summary>A set of rules as JSON: <c>{"rules": [ {...}, ... ]}</c>, or the built-in default set.</summary>
public static class AlertRules
{
    private sealed record RuleFile([property: JsonPropertyName("rules")] List<AlertRule>? Rules);

    // Duplicate keys are refused: the last one won, so a file ending in a stray "rules": [] loaded no rules at all (the
    // built-in ones replaced, and no alerting left) and "threshold": 1000, "threshold": -1 quietly became -1.
    private static readonly JsonSerializerOptions Json = new()
    {
        ReadCommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true, UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        AllowDuplicateProperties = false,
    };

    /// <summary>Reads a rule file; an unreadable file, bad JSON, an unknown field or a bad rule is an <see cref="ArgumentException"/> naming the file.</summary>
    public static IReadOnlyList<AlertRule> Load(string path)
    {
        string text;
        // A folder is not a permission problem ("Access to the path … is denied" was all it said).
        if (Directory.Exists(path)) throw new ArgumentException($"The alert rules file {path} is a directory; give the rules' JSON file.", nameof(path));
        try
        {
            text = File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ArgumentException($"Cannot read the alert rules file {path}: {e.Message}", nameof(path), e);
        }
        return Parse(text, path);
    }

    /// <summary>
    /// The serializer's message in the file's terms: where (rules[1], line 4) and what, without .NET type names
    /// ("missing required properties including: 'threshold'" for a rule, not for type 'BitNetSharp…AlertRule').
    /// </summary>
    private static string Describe(JsonException e)
    {
        string message = e.Message;
        int cut = message.IndexOf(" Path: ", StringComparison.Ordinal);
        if (cut >= 0) message = message[..cut];
        string? where = e.Path is { Length: > 1 } path ? path.TrimStart('$').TrimStart('.') : null;
        // Inside rules[i] the type is a rule; outside it (a top-level "rulez", a file that is a list), the rule file.
        bool inRule = where is not null && where.StartsWith("rules[", StringComparison.Ordinal) && where.Contains(']', StringComparison.Ordinal);
        foreach (var (pattern, replacement) in DotNetTerms)
            message = System.Text.RegularExpressions.Regex.Replace(message, pattern, inRule ? replacement : replacement.Replace("a rule", "the rule file ({\"rules\": [...]})", StringComparison.Ordinal));
        string at = e.LineNumber is { } line
            ? (where is { Length: > 0 } ? $"at {where}, line {line + 1}: " : $"at line {line + 1}: ")
            : where is { Length: > 0 } ? $"at {where}: " : "";
        return at + message.TrimEnd();
    }

    /// <summary>.NET's wording → the rule file's (type names mean nothing to someone writing JSON).</summary>
    private static readonly (string Pattern, string Replacement)[] DotNetTerms =
    [
        (@"could not be mapped to any \.NET member contained in type '[^']+'", "is not a field of a rule (a misspelling?)"),
        (@"JSON deserialization for type '[^']+' was missing required properties including: ", "a rule lacks the required field(s) "),
        (@"System\.Collections\.Generic\.List`1\[[^\]]+\]", "a list ([...])"),
        (@"System\.Collections\.Generic\.Dictionary`2\[[^\]]+\]", "an object ({...})"),
        (@"System\.(Double|Single)", "a number"),
        (@"System\.Int32", "an integer"),
        (@"System\.String", "a string"),
        (@"System\.Boolean", "true or false"),
        (@"type '[^']+'", "a rule"),
        (@"BitNetSharp\.[\w.+]+", "a rule"),
    ];

    public static IReadOnlyList<AlertRule> Parse(string json, string source = "alert rules")
    {
        RuleFile? file;
        try
        {
            file = JsonSerializer.Deserialize<RuleFile>(json, Json);
        }
        catch (JsonException e)
        {
            throw new ArgumentException($"{source} is not a valid rule file ({{\"rules\": [...]}}): {Describe(e)}", nameof(json), e);
        }
        var rules = file?.Rules ?? throw new ArgumentException($"{source} has no \"rules\" array.", nameof(json));
        for (int i = 0; i < rules.Count; i++)
            if (rules[i] is null) throw new ArgumentException($"{source}: rule #{i + 1} is null; each entry of \"rules\" must be an object.", nameof(json));
        Validate(rules, source);
        return rules;
    }

    /// <summary>
    /// Each rule's fields (<see cref="AlertRule.Validate"/>) and that no two share a name: both would export under one
    /// rule label (the later series hiding the other's firing state) and send the same webhook fingerprint, so one
    /// rule's "resolved" cleared the other's "firing".
    /// </summary>
    public static void Validate(IReadOnlyList<AlertRule> rules, string source = "alert rules")
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var r in rules)
        {
            ArgumentNullException.ThrowIfNull(r, nameof(rules));
            r.Validate(source);
            if (!names.Add(r.Name)) throw new ArgumentException($"{source}: the rule name '{r.Name}' is used twice.");
        }
    }

    /// <summary>
    /// What a label's values are when <paramref name="value"/> is not one of them (null when it is, or the label's values
    /// are open): a typo such as {"code": "1"} (exported as "+1") or {"input": "gate"} ("gate_up") loaded and never fired.
    /// </summary>
    private static string? LabelValueError(string label, string value, IReadOnlyList<AlertRule> rules)
    {
        string[]? values = label switch
        {
            "input" => HealthNames.InputLabels,
            "projection" => HealthNames.ProjectionLabels,
            "code" => ["-1", "0", "+1"],
            "tensor" => ["k", "v"], // bitnet_health_kv_error_ratio
            "finish_reason" => ["stop", "length"],
            "bits" => ["2", "3", "4", "5", "6", "8"], // ActivationBits.Allowed
            _ => null,
        };
        if (values is not null) return Array.IndexOf(values, value) >= 0 ? null : "one of " + string.Join(", ", values);
        if (label == "layer")
        {
            bool digits = value.Length > 0 && (value == "0" || value[0] != '0');
            foreach (char c in value) digits &= char.IsAsciiDigit(c);
            return digits ? null : "a layer index (0, 1, 2, ...)";
        }
        if (label == "rule")
        {
            foreach (var r in rules)
                if (r.Name == value) return null;
            var names = new List<string>();
            foreach (var r in rules) names.Add(r.Name);
            return "the name of a rule of this set: " + string.Join(", ", names);
        }
        return null;
    }

    /// <summary>The metric names a rule reads: each part of <see cref="AlertRule.Metric"/> (joined by " + ") and its <see cref="AlertRule.DivideBy"/>.</summary>
    public static IEnumerable<string> MetricsOf(AlertRule rule)
    {
        foreach (var part in rule.Metric.Split('+', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)) yield return part;
        if (rule.DivideBy is { Length: > 0 } d) yield return d.Trim();
    }

    /// <summary>
    /// Throws an <see cref="ArgumentException"/> naming the rule, the metric and the names it can use when a rule reads a
    /// metric outside <paramref name="known"/>: such a rule would load and never fire (its signal never has a value).
    /// </summary>
    /// <param name="labels">
    /// The label names each known metric's series carry (a metric not listed has none). When given, a rule whose
    /// "match" names a label that one of its metrics does not carry is refused: such a match never selects a series (or,
    /// negated, excludes nothing), so the rule would load and silently never fire or alert on everything.
    /// </param>
    public static void CheckMetrics(IReadOnlyList<AlertRule> rules, IReadOnlyCollection<string> known, string source = "alert rules",
        IReadOnlyDictionary<string, string[]>? labels = null)
    {
        foreach (var rule in rules)
        {
            if (labels is not null && rule.Match is { } match)
                foreach (var part in rule.Metric.Split('+', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
                {
                    if (!known.Contains(part)) continue; // reported below, with the names it could use
                    var have = labels.TryGetValue(part, out var l) ? l : [];
                    foreach (var label in match.Keys)
                        if (Array.IndexOf(have, label) < 0)
                            throw new ArgumentException($"{source}: rule '{rule.Name}': \"match\" names the label '{label}', which '{part}' does not carry, so the match " +
                                (match[label].StartsWith('!') ? "would exclude nothing" : "would select nothing and the rule never fire") +
                                $". Its labels: {(have.Length == 0 ? "none" : string.Join(", ", have))}.");
                    foreach (var (label, given) in match)
                    {
                        string value = given.StartsWith('!') ? given[1..] : given;
                        string? expected = LabelValueError(label, value, rules);
                        if (expected is not null)
                            throw new ArgumentException($"{source}: rule '{rule.Name}': \"match\" gives {label} '{value}', which no series of '{part}' has, so the match " +
                                (given.StartsWith('!') ? "would exclude nothing" : "would select nothing and the rule never fire") + $"; {label} is {expected}.");
                    }
                }
            foreach (var metric in MetricsOf(rule))
            {
                bool found = false;
                foreach (var k in known)
                    if (string.Equals(k, metric, StringComparison.Ordinal)) { found = true; break; }
                if (found) continue;
                var names = new List<string>(known);
                names.Sort(StringComparer.Ordinal);
                string field = rule.DivideBy is { } d && d.Trim() == metric ? "divide_by" : "metric";
                string? nearest = null;
                int best = int.MaxValue;
                foreach (var k in names)
                {
                    int distance = EditDistance(k, metric);
                    if (distance < best) (best, nearest) = (distance, k);
                }
                string hint = best <= Math.Max(2, metric.Length / 8) ? $" Did you mean '{nearest}'?" : "";
                throw new ArgumentException($"{source}: rule '{rule.Name}': \"{field}\" names '{metric}', which is not a signal alert rules can read, so the rule would never fire.{hint} " +
                    $"Histograms and metrics outside this list are not evaluated; use one of: {string.Join(", ", names)}.");
            }
        }
    }

    /// <summary>Levenshtein distance (insertions, deletions, substitutions), for "did you mean".</summary>
    private static int EditDistance(string a, string b)
    {
        var row = new int[b.Length + 1];
        for (int j = 0; j <= b.Length; j++) row[j] = j;
        for (int i = 1; i <= a.Length; i++)
        {
            int diagonal = row[0];
            row[0] = i;
            for (int j = 1; j <= b.Length; j++)
            {
                int above = row[j];
                row[j] = Math.Min(Math.Min(row[j] + 1, row[j - 1] + 1), diagonal + (a[i - 1] == b[j - 1] ? 0 : 1));
                diagonal = above;
            }
        }
        return row[b.Length];
    }

    /// <summary>
    /// The built-in rules, the same as deploy/prometheus/bitnet-alerts.yml. Thresholds: healthy BitNet models keep
    /// far fewer than 5 % of an input's codes at the clamp limits (absmax scaling puts only the largest entries
    /// there), lose well under 60 % of the q/k/v, o and gate/up inputs to zero codes (the down input follows relu²,
    /// sparse by design, and is left out), and change the residual by less than 8× its size per layer after layer 0
    /// (which writes onto the small raw embedding: 31× on the bundled model, healthy).
    /// </summary>
    public static IReadOnlyList<AlertRule> Default { get; } =
    [
        new() { Name = "BitNetNonFiniteLogits", Metric = "bitnet_health_nonfinite_sequences_total", Aggregate = "increase", Op = ">", Threshold = 0,
            Severity = "critical", Component = "model", Summary = "Sequences ended by NaN/Inf logits",
            Description = "The model produced non-finite logits; the affected sequences were ended with an error naming the layer." },
        new() { Name = "BitNetLogitRangeCollapse", Metric = "bitnet_health_logits_range", Aggregate = "min", Op = "<", Threshold = 0.5, For = 3,
            Severity = "warning", Component = "model", Summary = "Logits have gone flat",
            Description = "The flattest sampled logits row spans less than 0.5: the output distribution has collapsed." },
        new() { Name = "BitNetWeightChecksumMismatch", Metric = "bitnet_weights_verified", Aggregate = "min", Op = "<", Threshold = 1,
            Severity = "critical", Component = "weights", Summary = "Weights changed since load",
            Description = "A full checksum or a sampled probe found weight bytes that differ from their load-time values, and no full check has passed since; or a mapped model file was cut short under the server (/health says model_file_changed; restart it)." },
        // 8-bit inputs only: at fewer bits (a calibrated or a4.8-style model) healthy codes sit at 0 and at the limit far
        // more often (about half at 0 at 4 bits; every code at 0 or the limit at 2), and these thresholds fired on them.
        new() { Name = "BitNetActivationSaturation", Metric = "bitnet_health_activation_saturation_ratio", Aggregate = "max", Op = ">", Threshold = 0.05, For = 5,
            Match = new() { ["bits"] = "8" },
            Severity = "warning", Component = "model", Summary = "Activations pile up at the int8 limits",
            Description = "Over 5% of a BitLinear input's int8 codes sit at ±127." },
        new() { Name = "BitNetActivationUnderflow", Metric = "bitnet_health_activation_underflow_ratio", Aggregate = "max", Op = ">", Threshold = 0.6, For = 5,
            Match = new() { ["input"] = "!down", ["bits"] = "8" },
            Severity = "warning", Component = "model", Summary = "Activations underflow to zero codes",
            Description = "Over 60% of a BitLinear input's int8 codes are 0: its signal is below one quantization step." },
        new() { Name = "BitNetResidualBlowUp", Metric = "bitnet_health_residual_relative_change_ratio", Aggregate = "max", Op = ">", Threshold = 8, For = 2,
            Match = new() { ["layer"] = "!0" },
            Severity = "critical", Component = "model", Summary = "A layer blows up the residual stream",
            Description = "A layer changed the residual stream by more than 8 times its size." },
        new() { Name = "BitNetTokenLatencyJitter", Metric = "bitnet_health_token_latency_stddev_seconds", Aggregate = "max", Op = ">", Threshold = 0.25, For = 5,
            Severity = "warning", Component = "serving", Summary = "Token latency is jittery",
            Description = "The standard deviation of recent inter-token latencies is above 250 ms." },
        // Queued, not waiting: every request waits for the next step, so waiting ÷ max_queue read requests that free
        // sequences were about to take as queue use (+Inf with --max-queue 0 whenever anything arrived mid-step).
        // Held through dips for 10 s: a full queue drops below 90 % for an evaluation whenever a batch is admitted.
        new() { Name = "BitNetQueueSaturation", Metric = "bitnet_sequences_queued", DivideBy = "bitnet_requests_max_queue", Aggregate = "sum", Op = ">", Threshold = 0.9, For = 5,
            KeepFiringForSeconds = 10,
            Severity = "warning", Component = "serving", Summary = "The request queue is nearly full",
            Description = "More than 90% of the waiting queue is in use; new requests will be rejected." },
        // A hung forward pass (a deadlock, a stalled worker): requests stay running and steps stop. The gauge grows on
        // every evaluation while it lasts, so one evaluation past 30 s is enough; a single step is far shorter.
        new() { Name = "BitNetEngineStalled", Metric = "bitnet_engine_stall_seconds", Aggregate = "max", Op = ">", Threshold = 30, For = 1,
            Severity = "critical", Component = "serving", Summary = "The engine has stopped making progress",
            Description = "Requests are running or waiting and no engine step has finished for more than 30 s." },
    ];
}
