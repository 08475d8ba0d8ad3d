using System.Globalization;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Threading.Channels;

namespace BitNetSharp.Monitoring.Alerts;

/// <summary>
/// The current value of every signal an alert rule may name, as labelled series (Prometheus names and labels, the
/// same as /metrics). Filled anew for each evaluation by the engine's collector callback.
/// </summary>
public sealed class SignalSet
{
    private readonly Dictionary<string, List<(string[] Labels, double Value)>> _series = new(StringComparer.Ordinal);

    public void Clear()
    {
        foreach (var list in _series.Values) list.Clear();
    }

    /// <param name="labels">Alternating label names and values.</param>
    public void Add(string metric, double value, params string[] labels)
    {
        if (!_series.TryGetValue(metric, out var list)) _series[metric] = list = [];
        list.Add((labels, value));
    }

    public bool Has(string metric) => _series.TryGetValue(metric, out var l) && l.Count > 0;

    /// <summary>Every series held (tests compare their label names with the declared ones).</summary>
    internal IEnumerable<(string Metric, string[] Labels)> AllSeries()
    {
        foreach (var (metric, list) in _series)
            foreach (var (labels, _) in list) yield return (metric, labels);
    }

    /// <summary>Reduces the matching series; null when the metric has none (the rule is then not evaluated).</summary>
    public double? Reduce(string metric, string aggregate, IReadOnlyDictionary<string, string>? match) => Reduce(metric, aggregate, match, out _);

    /// <summary>
    /// Reduces the matching series; for max and min, <paramref name="at"/> is the label set (alternating names and
    /// values) of the series that gave the value — the first NaN one when the result is NaN — so an alert can say which
    /// layer or input tripped it; null for the other aggregates.
    /// </summary>
    public double? Reduce(string metric, string aggregate, IReadOnlyDictionary<string, string>? match, out string[]? at)
    {
        at = null;
        string[]? firstNaN = null;
        if (!_series.TryGetValue(metric, out var list)) return null;
        double acc = aggregate switch { "max" => double.NegativeInfinity, "min" => double.PositiveInfinity, _ => 0 };
        int count = 0;
        bool nan = false;
        foreach (var (labels, value) in list)
        {
            if (!Matches(labels, match)) continue;
            count++;
            // NaN (a layer whose values are not finite) makes the whole reduction NaN, which trips every threshold
            // rule, whatever its direction (it used to become +Inf for max, so a "max < x" rule never saw it).
            if (double.IsNaN(value) && !nan) firstNaN = labels;
            nan |= double.IsNaN(value);
            switch (aggregate)
            {
                case "max":
                    if (value > acc || at is null) (acc, at) = (Math.Max(acc, value), labels);
                    break;
                case "min":
                    if (value < acc || at is null) (acc, at) = (Math.Min(acc, value), labels);
                    break;
                default:
                    acc += value;
                    break;
            }
        }
        if (count == 0) return null;
        if (nan)
        {
            if (at is not null) at = firstNaN;
            return double.NaN;
        }
        return aggregate == "avg" ? acc / count : acc;
    }

    /// <summary>The matching series of <paramref name="metric"/>, each with a key naming its label set.</summary>
    internal IEnumerable<(string Key, double Value)> Series(string metric, IReadOnlyDictionary<string, string>? match)
    {
        if (!_series.TryGetValue(metric, out var list)) yield break;
        foreach (var (labels, value) in list)
            if (Matches(labels, match)) yield return (metric + "\u0001" + string.Join('\u0001', labels), value);
    }

    private static bool Matches(string[] labels, IReadOnlyDictionary<string, string>? match)
    {
        if (match is null) return true;
        foreach (var (name, want) in match)
        {
            string? have = null;
            for (int i = 0; i + 1 < labels.Length; i += 2)
                if (labels[i] == name) have = labels[i + 1];
            bool negate = want.StartsWith('!');
            string v = negate ? want[1..] : want;
            if (negate ? have == v : have != v) return false;
        }
        return true;
    }
}

/// <summary>An alert's state change or current state.</summary>
public sealed record AlertState(AlertRule Rule, bool Firing, double Value, DateTimeOffset Since, long TimesFired)
{
    /// <summary>
    /// For a max or min rule over one metric: the labels of the series that gave <see cref="Value"/> (alternating names
    /// and values, without those the rule's match fixes to one value), e.g. layer 3 of a residual blow-up; null otherwise.
    /// </summary>
    public IReadOnlyList<string>? At { get; init; }

    /// <summary><see cref="At"/> as Prometheus writes a label set (<c>{layer="3",input="qkv"}</c>); "" when there is none.</summary>
    public string AtText => At is { Count: > 0 } a ? "{" + string.Join(",", Enumerable.Range(0, a.Count / 2).Select(i => a[2 * i] + "=\"" + a[2 * i + 1] + "\"")) + "}" : "";

    /// <summary>" at {layer=\"3\"}" for messages, or "".</summary>
    internal string AtSuffix => AtText is { Length: > 0 } t ? " at " + t : "";

    /// <summary>When a resolved alert stopped firing, on the engine's clock (as <see cref="Since"/>); null while firing.</summary>
    public DateTimeOffset? Ended { get; init; }

    /// <summary>Why a resolved alert ended when its condition did not clear ("the server stopped"); null otherwise.</summary>
    public string? Reason { get; init; }
}

public sealed record AlertEngineOptions
{
    /// <summary>How often the rules are evaluated ("for: N" means N consecutive evaluations).</summary>
    public TimeSpan Interval { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>When set, firing and resolved alerts are POSTed here in Alertmanager's webhook JSON (version 4).</summary>
    public Uri? WebhookUrl { get; init; }

    /// <summary>
    /// A notification the webhook refused or could not take (an error status, a refused connection, a timeout) is
    /// sent again after this delay, doubling each time, <see cref="WebhookAttempts"/> times in all; only then is it
    /// counted in <see cref="AlertEngine.WebhookFailures"/> and dropped.
    /// </summary>
    public TimeSpan WebhookRetryDelay { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>Tries per notification, the first included (5: about 15 s of retries at the default delay).</summary>
    public int WebhookAttempts { get; init; } = 5;

    /// <summary>The externalURL / generatorURL the webhook payload carries (the server's address).</summary>
    public string? ExternalUrl { get; init; }

    /// <summary>Extra labels on every alert (e.g. instance).</summary>
    public IReadOnlyDictionary<string, string>? Labels { get; init; }

    /// <summary>
    /// Every metric name the collector can supply. When set, a rule naming any other metric is refused at construction
    /// (<see cref="AlertRules.CheckMetrics"/>) instead of loading and never firing.
    /// </summary>
    public IReadOnlyCollection<string>? KnownMetrics { get; init; }

    /// <summary>The clock "for_seconds" and increase windows are measured on (its timestamps; null: the system's). Tests pass a manual one.</summary>
    public TimeProvider? Time { get; init; }

    /// <summary>The label names each of <see cref="KnownMetrics"/> carries (unlisted: none); a "match" on a label a metric lacks is refused.</summary>
    public IReadOnlyDictionary<string, string[]>? KnownLabels { get; init; }

    /// <summary>Where state changes are written (the server's logger, the CLI's stderr).</summary>
    public Action<string>? Log { get; init; }

    /// <summary>
    /// Gauges that change only when the engine measures a step (the last sampled step's health). A rule that reads
    /// only these, not as an increase, counts "for" in new samples, seen through <see cref="SampleCounter"/> growing:
    /// an idle server's frozen value is not counted again each evaluation, so one bad sample cannot fire a "for: 2" rule
    /// (it used to, after two seconds of silence), and a firing alert keeps its state until the next sample.
    /// </summary>
    public IReadOnlyCollection<string>? SampledMetrics { get; init; }

    /// <summary>The counter of samples for <see cref="SampledMetrics"/> (the server's bitnet_health_samples_total).</summary>
    public string? SampleCounter { get; init; }

    /// <summary>
    /// More gauges that change only when a counter grows, each with its counter (the token-latency spread, which
    /// changes only as tokens are delivered: bitnet_generation_tokens_total). Rules over them count "for" as
    /// <see cref="SampledMetrics"/> rules do, so an idle server's frozen value cannot fire or hold an alert. A metric may be
    /// in both: a rule reading only metrics of one counter here waits on that counter, one mixing them with other sampled
    /// metrics on <see cref="SampleCounter"/>.
    /// </summary>
    public IReadOnlyDictionary<string, string>? CountedMetrics { get; init; }
}

/// <summary>
/// Evaluates alert rules over the signals a collector callback supplies: on a timer (<see cref="Start"/>) or when
/// called (<see cref="Evaluate"/>). A rule that starts firing is logged, counted (<see cref="TimesFired"/>; the server
/// exports bitnet_alerts_total{rule} and bitnet_alerts_firing{rule,severity}), raised as <see cref="Changed"/>, and POSTed to the
/// webhook when one is set; so is its resolution. Webhook delivery runs on its own task and never blocks evaluation;
/// failures are counted in <see cref="WebhookFailures"/>.
/// </summary>
public sealed class AlertEngine : IDisposable
{
    private readonly AlertRule[] _rules;
    private readonly Action<SignalSet> _collect;
    private readonly AlertEngineOptions _options;
    private readonly SignalSet _signals = new();
    private readonly Lock _lock = new();
    // Held through an evaluation and the publication of its changes, so changes reach Changed handlers and the webhook
    // in the order they happened (two overlapping timer callbacks could publish "resolved" before "firing").
    private readonly Lock _evaluation = new();
    // "for_seconds" and increase windows are measured on a monotonic clock (the wall clock at start plus elapsed
    // time): an NTP step or a manual clock change no longer fires or resets a rule.
    private readonly DateTimeOffset _origin;
    private readonly long _originTicks;
    private readonly TimeProvider _time;
    private readonly string?[] _gate; // the counter whose growth a rule's evaluation waits for, or null
    private readonly State[] _state;
    private readonly Channel<JsonObject>? _outbox;
    private readonly HttpClient? _http;
    private readonly Task? _sender;
    private readonly CancellationTokenSource _stopping = new();
    // Cancelled when Dispose starts the flush: a retry waiting out its back-off is sent at once, and from then on each
    // notification gets at most ShutdownTries tries (a dead receiver held every stop for its full back-off, 15 s).
    private readonly CancellationTokenSource _flushing = new();
    private readonly string _shownUrl = "";
    private Timer? _timer;
    private long _webhookSent, _webhookFailures, _evaluations;
    private bool _disposed;

    private sealed class State
    {
        public int Consecutive;
        public DateTimeOffset ConditionSince;
        public bool Firing;
        public DateTimeOffset FiringSince;
        /// <summary>While firing: the first evaluation since which the condition has not held (keep_firing_for_seconds).</summary>
        public DateTimeOffset? ClearSince;
        /// <summary>The value of the last evaluation (<see cref="Value"/> holds the firing value through a hold).</summary>
        public double Latest = double.NaN;
        public double Value = double.NaN;
        /// <summary>The series that gave <see cref="Latest"/> and <see cref="Value"/> (max and min rules).</summary>
        public string[]? LatestAt, At;
        // One window per series (metric and label set): increase is taken per series, then summed, as Prometheus'
        // sum(increase(...)) does; over the sum, a series that vanished made the rest read as a reset and count again.
        public readonly Dictionary<string, CounterWindow> Counters = new(StringComparer.Ordinal);
        public readonly Dictionary<string, CounterWindow> DenominatorCounters = new(StringComparer.Ordinal);
        public long TimesFired;
        public double SamplesSeen = double.NaN;
    }

    public AlertEngine(IReadOnlyList<AlertRule> rules, Action<SignalSet> collect, AlertEngineOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(rules);
        ArgumentNullException.ThrowIfNull(collect);
        AlertRules.Validate(rules);
        _rules = [.. rules];
        _collect = collect;
        _options = options ?? new AlertEngineOptions();
        _time = _options.Time ?? TimeProvider.System;
        _origin = _time.GetUtcNow();
        _originTicks = _time.GetTimestamp();
        if (_options.KnownMetrics is { } known) AlertRules.CheckMetrics(_rules, known, labels: _options.KnownLabels);
        if (_options.Interval <= TimeSpan.Zero) throw new ArgumentException($"The alert evaluation interval must be positive; got {_options.Interval}.", nameof(options));
        _state = _rules.Select(_ => new State()).ToArray();
        _gate = _rules.Select(Gate).ToArray();
        if (_options.WebhookUrl is { } url)
        {
            if (url.Scheme is not ("http" or "https")) throw new ArgumentException($"The alert webhook must be an http(s) URL; got {ShownUrl(url)}.", nameof(options));
            if (_options.WebhookAttempts < 1) throw new ArgumentException($"WebhookAttempts must be at least 1; got {_options.WebhookAttempts}.", nameof(options));
            if (_options.WebhookRetryDelay < TimeSpan.Zero) throw new ArgumentException($"WebhookRetryDelay must not be negative; got {_options.WebhookRetryDelay}.", nameof(options));
            _http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
            _http.DefaultRequestHeaders.UserAgent.Add(new System.Net.Http.Headers.ProductInfoHeaderValue("BitNetSharp",
                typeof(AlertEngine).Assembly.GetName().Version?.ToString(3) ?? "0"));
            // user:password@ in the URL is sent as basic auth, as curl and Alertmanager's receivers expect (HttpClient
            // sends none of it, so such a receiver refused every notification); the logs show the URL without it.
            if (url.UserInfo.Length > 0)
                _http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Basic",
                    Convert.ToBase64String(System.Text.Encoding.UTF8.GetBytes(BasicCredentials(url.UserInfo))));
            _shownUrl = ShownUrl(url);
            // A notification pushed out of a full queue is lost: counted as a failure, like one the webhook refused.
            _outbox = Channel.CreateBounded<JsonObject>(new BoundedChannelOptions(256) { FullMode = BoundedChannelFullMode.DropOldest },
                _ => Interlocked.Increment(ref _webhookFailures));
            _sender = Task.Run(SendLoop);
        }
    }

    public IReadOnlyList<AlertRule> Rules => _rules;

    /// <summary>True when notifications are POSTed to a webhook.</summary>
    public bool HasWebhook => _outbox is not null;

    /// <summary>Tries each notification gets once the shutdown flush has begun (one more after a failure, then dropped).</summary>
    public const int ShutdownTries = 2;

    /// <summary>The longest <see cref="Dispose"/> waits for queued notifications (20 s) and for the sender to stop (2 s):
    /// a process's stop deadline must allow for it, or the flush is cut by the deadline and the logs lose their ends.</summary>
    public static readonly TimeSpan MaxShutdownFlush = TimeSpan.FromSeconds(22);

    /// <summary>
    /// A webhook URL as logs may show it: no user info (a password), the path's first segment only (Slack, Discord and
    /// Teams keep their secret in the path) and no query (a token): "https://hooks.slack.com/services/…".
    /// </summary>
    public static string ShownUrl(Uri url)
    {
        string shown = url.GetComponents(UriComponents.Scheme | UriComponents.Host | UriComponents.Port, UriFormat.UriEscaped).TrimEnd('/');
        string path = url.AbsolutePath;
        // (A URL with no path, such as mailto:x, had IndexOf start past its end: an exception instead of the refusal.)
        int second = path.Length > 1 ? path.IndexOf('/', 1) : -1;
        shown += second >= 0 && second < path.Length - 1 ? path[..(second + 1)] + "…" : path;
        return url.Query.Length > 1 ? shown + "?…" : shown;
    }

    /// <summary>RFC 7617's user-id ":" password from a URL's user info ("user" alone is "user:", as curl sends it).</summary>
    internal static string BasicCredentials(string userInfo)
    {
        string plain = Uri.UnescapeDataString(userInfo);
        return plain.Contains(':') ? plain : plain + ":";
    }

    public long Evaluations => Interlocked.Read(ref _evaluations);
    public long WebhookSent => Interlocked.Read(ref _webhookSent);
    /// <summary>Notifications lost: refused on every try, or pushed out of a full queue (256 waiting).</summary>
    public long WebhookFailures => Interlocked.Read(ref _webhookFailures);

    /// <summary>Raised (on the evaluating thread) when a rule starts or stops firing.</summary>
    public event Action<AlertState>? Changed;

    private long _notifyFailures;

    /// <summary>Notifications (log lines, <see cref="Changed"/> handlers) that threw; each change still reached the others.</summary>
    public long NotifyFailures => Interlocked.Read(ref _notifyFailures);

    /// <summary>
    /// Evaluates once now (so counters have their baseline before anything can happen: an increase rule compares
    /// with it), then every <see cref="AlertEngineOptions.Interval"/> on a timer thread.
    /// </summary>
    public void Start()
    {
        if (_timer is not null) return;
        Evaluate();
        _timer = new Timer(static s => ((AlertEngine)s!).Evaluate(), this, _options.Interval, _options.Interval);
    }

    /// <summary>Every rule's state now.</summary>
    public IReadOnlyList<AlertState> States
    {
        get
        {
            lock (_lock)
                return _rules.Select((r, i) => new AlertState(r, _state[i].Firing, _state[i].Value, _state[i].Firing ? _state[i].FiringSince : _state[i].ConditionSince, _state[i].TimesFired)
                {
                    At = At(r, _state[i].At),
                }).ToArray();
        }
    }

    public IReadOnlyList<AlertState> Firing => States.Where(s => s.Firing).ToArray();

    public long TimesFired(string rule)
    {
        lock (_lock)
        {
            for (int i = 0; i < _rules.Length; i++) if (_rules[i].Name == rule) return _state[i].TimesFired;
        }
        throw new ArgumentException($"No alert rule is named '{rule}'.", nameof(rule));
    }

    /// <summary>Collects the signals and evaluates every rule once.</summary>
    public void Evaluate()
    {
        lock (_evaluation) EvaluateAndPublish();
    }

    private static void Resolve(AlertRule rule, State st, DateTimeOffset now, ref List<AlertState>? changes)
    {
        st.ClearSince = null;
        st.Firing = false;
        (changes ??= []).Add(new AlertState(rule, false, st.Value, st.FiringSince, st.TimesFired) { Ended = now, At = At(rule, st.At) });
    }

    private void EvaluateAndPublish()
    {
        List<AlertState>? changes = null;
        lock (_lock)
        {
            var now = _origin + _time.GetElapsedTime(_originTicks);
            _signals.Clear();
            try
            {
                _collect(_signals);
            }
            catch (Exception e)
            {
                _options.Log?.Invoke($"alert signals could not be collected: {e.Message}");
                return;
            }
            Interlocked.Increment(ref _evaluations);
            for (int i = 0; i < _rules.Length; i++)
            {
                var rule = _rules[i];
                var st = _state[i];
                if (_gate[i] is { } counter)
                {
                    // No new sample since this rule last counted: its gauges hold the same step's values; keep the state.
                    // A firing alert whose condition has been clear since a good sample still resolves when its hold
                    // (keep_firing_for_seconds) runs out: an idle server sends no further sample to end it.
                    if (_signals.Reduce(counter, "sum", null) is not { } n || n == st.SamplesSeen)
                    {
                        if (st.Firing && st.ClearSince is { } clear && Lasted(now - clear, rule.KeepFiringForSeconds))
                        {
                            (st.Value, st.At) = (st.Latest, st.LatestAt); // resolved on the good sample's value, as a resolve on a new sample is
                            Resolve(rule, st, now, ref changes);
                        }
                        continue;
                    }
                    st.SamplesSeen = n;
                }
                double? value = Value(rule, st, now, out bool undefined, out var at);
                if (value is null) continue; // no such signal yet (e.g. no sampled step): keep the state
                (double last, var lastAt) = (st.Value, st.At);
                st.Value = st.Latest = value.Value;
                st.At = st.LatestAt = at;
                // NaN from the model trips every threshold rule; 0/0 of a ratio (nothing drafted, no queue) holds no
                // condition, as in Prometheus, where the division gives NaN and the comparison drops the series.
                bool holds = !undefined && (rule.Holds(value.Value) || (double.IsNaN(value.Value) && rule.Op is ">" or ">=" or "<" or "<="));
                if (holds)
                {
                    st.ClearSince = null;
                    if (st.Consecutive++ == 0) st.ConditionSince = now;
                    if (!st.Firing && st.Consecutive >= rule.For && Lasted(now - st.ConditionSince, rule.ForSeconds))
                    {
                        st.Firing = true;
                        st.FiringSince = now;
                        st.TimesFired++;
                        (changes ??= []).Add(new AlertState(rule, true, st.Value, now, st.TimesFired) { At = At(rule, st.At) });
                    }
                }
                else
                {
                    st.Consecutive = 0;
                    // keep_firing_for_seconds: a firing alert resolves once the condition has been clear that long; held,
                    // it shows the value it last fired on (as Prometheus does), not the dip's.
                    if (st.Firing)
                    {
                        if (Lasted(now - (st.ClearSince ??= now), rule.KeepFiringForSeconds)) Resolve(rule, st, now, ref changes);
                        else (st.Value, st.At) = (last, lastAt);
                    }
                }
            }
        }
        if (changes is null) return;
        // The state change is committed: every change reaches the webhook, the log and every handler, whatever one of
        // them throws (a throwing handler lost the rest of the batch, and on the timer thread ended the process).
        foreach (var c in changes)
        {
            _outbox?.Writer.TryWrite(WebhookPayload(c));
            Notify(() => _options.Log?.Invoke(c.Firing
                ? string.Create(CultureInfo.InvariantCulture, $"alert {c.Rule.Name} FIRING ({c.Rule.Severity}): {c.Rule.Quantity} = {c.Value:G6}{c.AtSuffix} {c.Rule.Op} {c.Rule.Threshold:G6}.{(c.Rule.Description is { } d ? " " + d : "")}")
                : string.Create(CultureInfo.InvariantCulture, $"alert {c.Rule.Name} resolved: {c.Rule.Quantity} = {c.Value:G6}{c.AtSuffix}")), c, "the log");
            if (Changed is { } handlers)
                foreach (var h in handlers.GetInvocationList())
                    Notify(() => ((Action<AlertState>)h)(c), c, "a Changed handler");
        }
    }

    /// <summary>The counter a rule waits on: every metric it reads is sampled, or counted by one same counter; not for increase rules.</summary>
    private string? Gate(AlertRule r)
    {
        if (r.Aggregate == "increase") return null;
        var metrics = AlertRules.MetricsOf(r).ToList();
        if (metrics.Count == 0) return null;
        // A counter of its own first (the logits, counted only on samples that had them); a rule mixing such a metric
        // with other sampled ones waits on the samples counter, as before.
        if (_options.CountedMetrics is { } counted && counted.TryGetValue(metrics[0], out var counter)
            && metrics.All(m => counted.TryGetValue(m, out var c) && c == counter)) return counter;
        if (_options.SampleCounter is { } samples && _options.SampledMetrics is { } sampled && metrics.All(sampled.Contains)) return samples;
        return null;
    }

    /// <summary>Runs one notification; a failure is logged (if the log itself works) and goes no further.</summary>
    private void Notify(Action notify, AlertState c, string what)
    {
        try
        {
            notify();
        }
        catch (Exception e)
        {
            Interlocked.Increment(ref _notifyFailures);
            try
            {
                _options.Log?.Invoke($"alert {c.Rule.Name}: {what} failed: {e.GetType().Name}: {e.Message}");
            }
            catch (Exception)
            {
                // The log is what failed: nothing left to report it to.
            }
        }
    }

    private double? Value(AlertRule rule, State st, DateTimeOffset now, out bool undefined, out string[]? at)
    {
        undefined = false;
        at = null;
        double? total = null;
        bool increase = rule.Aggregate == "increase";
        var parts = rule.Metric.Split('+', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        foreach (var part in parts)
        {
            var v = increase ? SumOfIncreases(st.Counters, part, rule.Match, now, Window(rule.WindowSeconds)) : _signals.Reduce(part, rule.Aggregate, rule.Match, out at);
            if (v is null) continue;
            total = (total ?? 0) + v.Value;
        }
        if (parts.Length != 1) at = null; // a sum of metrics has no one series behind it
        if (total is null) return null;
        if (rule.DivideBy is { } d)
        {
            // An increase over a counter's lifetime total mixed a window's growth with everything since start: a
            // counter denominator (named *_total) of an increase rule is taken over the same window, as
            // increase(a[w]) / increase(b[w]) in Prometheus; a gauge denominator is read as it is.
            var denominator = increase && d.Trim().EndsWith("_total", StringComparison.Ordinal)
                ? SumOfIncreases(st.DenominatorCounters, d.Trim(), null, now, Window(rule.WindowSeconds))
                : _signals.Reduce(d.Trim(), "sum", null);
            if (denominator is null) return null;
            undefined = total.Value == 0 && denominator.Value == 0;
            total = total.Value / denominator.Value; // x/0 is ±Inf, as in Prometheus
        }
        return total;
    }

    /// <summary>
    /// The labels of <paramref name="labels"/> worth naming: those the rule's match does not fix to one value (a rule
    /// matching bits="8" need not say it), and none for a series with no other label.
    /// </summary>
    private static string[]? At(AlertRule rule, string[]? labels)
    {
        if (labels is null) return null;
        var kept = new List<string>(labels.Length);
        for (int i = 0; i + 1 < labels.Length; i += 2)
        {
            if (rule.Match is { } m && m.TryGetValue(labels[i], out var want) && !want.StartsWith('!')) continue;
            kept.Add(labels[i]);
            kept.Add(labels[i + 1]);
        }
        return kept.Count == 0 ? null : [.. kept];
    }

    /// <summary>The sum over <paramref name="metric"/>'s matching series of each one's <see cref="Increase"/>; null when it has none.</summary>
    private double? SumOfIncreases(Dictionary<string, CounterWindow> windows, string metric, IReadOnlyDictionary<string, string>? match, DateTimeOffset now, double windowSeconds)
    {
        double? sum = null;
        foreach (var (key, value) in _signals.Series(metric, match))
        {
            if (!windows.TryGetValue(key, out var w)) windows[key] = w = new CounterWindow();
            sum = (sum ?? 0) + Increase(w, value, now, windowSeconds);
        }
        return sum;
    }

    /// <summary>
    /// A counter's growth since the last value taken at or before the window's start (the oldest one when the window
    /// reaches further back than the history). Keeping that baseline, rather than only values inside the window, lets
    /// a window no longer than the evaluation interval see growth: with only values inside it, the baseline was always
    /// the new value itself. A counter that went down was reset (a restart) and
    /// counted up from 0 to its new value, as Prometheus reads it (per series: see <see cref="SumOfIncreases"/>): starting over threw that growth away, so the
    /// events that came right after a reset never fired an increase rule.
    /// </summary>
    private static double Increase(CounterWindow w, double value, DateTimeOffset now, double windowSeconds)
    {
        if (w.Samples.Count > 0 && value < w.LastRaw) w.Offset += w.LastRaw;
        w.LastRaw = value; // tracked: Queue.Last() walked every sample of a day-long window on each evaluation
        double adjusted = value + w.Offset;
        w.Samples.Enqueue((now, adjusted));
        while (w.Samples.Count > 1 && (now - w.Samples.ElementAt(1).At).TotalSeconds >= windowSeconds) w.Samples.Dequeue();
        return adjusted - w.Samples.Peek().Value;
    }

    /// <summary>
    /// Whether <paramref name="elapsed"/> reaches a hold of <paramref name="seconds"/> as evaluations see it: the hold is
    /// met at the first evaluation at or past it (a hold of 2.2 s at 1 s intervals: the third), and that evaluation is
    /// taken to have come when it is within a quarter interval (<see cref="Due"/>). The timer ticks a little early or late:
    /// a gap of 4.999 s against for_seconds 5 waited a whole evaluation more, so the same rule fired or resolved one
    /// interval apart from run to run (Prometheus aligns its evaluation times instead).
    /// </summary>
    private bool Lasted(TimeSpan elapsed, double seconds) => elapsed.TotalSeconds >= Due(seconds);

    /// <summary>An increase window as evaluations see it (<see cref="Due"/>): a sample 2.999 s old stayed the baseline of a 3 s window.</summary>
    private double Window(double seconds) => Due(seconds);

    /// <summary>
    /// A duration of an interval or more rounded up to whole evaluation intervals, less a quarter interval: jitter up to a quarter interval is
    /// absorbed, and no hold is met an evaluation early (review: a flat 0.1 s was too little for a loaded machine's
    /// timer, and a quarter interval off the hold itself met 2.2 s at 2).
    /// </summary>
    private double Due(double seconds)
    {
        double interval = _options.Interval.TotalSeconds;
        // Shorter than an interval: as it is (the next evaluation is past it anyway; and Evaluate called more often than
        // the timer, as a host or a test may, keeps a sub-interval window's meaning).
        if (seconds < interval) return Math.Min(seconds, 0.75 * interval); // never stricter than a whole interval's
        return Math.Ceiling(seconds / interval - 1e-9) * interval - interval / 4;
    }

    /// <summary>A counter's recent samples (reset-adjusted values) for <see cref="Increase"/>.</summary>
    internal sealed class CounterWindow
    {
        public readonly Queue<(DateTimeOffset At, double Value)> Samples = new();
        public double LastRaw, Offset;
    }

    /// <summary>A label value quoted as Go's %q would: \" and \\ escaped, other text as it is.</summary>
    private static readonly JsonSerializerOptions QuotedLabel = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>One alert in Alertmanager's webhook format (version 4), with the rule's labels and annotations.</summary>
    public JsonObject WebhookPayload(AlertState s)
    {
        var labels = new JsonObject { ["alertname"] = s.Rule.Name, ["severity"] = s.Rule.Severity, ["component"] = s.Rule.Component };
        if (_options.Labels is { } extra) foreach (var (k, v) in extra) labels[k] = v;
        var annotations = new JsonObject
        {
            ["summary"] = s.Rule.Summary ?? s.Rule.Name,
            ["description"] = (s.Rule.Description is { } d ? d + " " : "") + string.Create(CultureInfo.InvariantCulture, $"Value: {s.Value:G6}{s.AtSuffix} ({s.Rule.Quantity} {s.Rule.Op} {s.Rule.Threshold:G6})."),
        };
        if (s.AtText is { Length: > 0 } where) annotations["series"] = where;
        string status = s.Firing ? "firing" : "resolved";
        string external = _options.ExternalUrl ?? "";
        var alert = new JsonObject
        {
            ["status"] = status,
            ["labels"] = labels.DeepClone(),
            ["annotations"] = annotations.DeepClone(),
            ["startsAt"] = s.Since.ToString("O", CultureInfo.InvariantCulture),
            // The end on the clock that gave the start: the wall clock's "now" (stepped back, or a test's clock) could
            // put endsAt before startsAt.
            ["endsAt"] = s.Firing ? "0001-01-01T00:00:00Z" : (s.Ended ?? _origin + _time.GetElapsedTime(_originTicks)).ToString("O", CultureInfo.InvariantCulture),
            ["generatorURL"] = external,
            ["fingerprint"] = Convert.ToHexStringLower(System.IO.Hashing.XxHash3.Hash(System.Text.Encoding.UTF8.GetBytes(labels.ToJsonString()))),
        };
        return new JsonObject
        {
            ["version"] = "4",
            // The label value quoted as Alertmanager writes it (Go's %q): a quote or newline in a rule's name broke the key.
            ["groupKey"] = $"{{}}:{{alertname={JsonSerializer.Serialize(s.Rule.Name, QuotedLabel)}}}",
            ["truncatedAlerts"] = 0,
            ["status"] = status,
            ["receiver"] = "bitnet",
            ["groupLabels"] = new JsonObject { ["alertname"] = s.Rule.Name },
            ["commonLabels"] = labels,
            ["commonAnnotations"] = annotations,
            ["externalURL"] = external,
            ["alerts"] = new JsonArray(alert),
        };
    }

    private async Task SendLoop()
    {
        await foreach (var payload in _outbox!.Reader.ReadAllAsync())
        {
            var delay = _options.WebhookRetryDelay;
            int flushTries = 0;
            for (int attempt = 1; ; attempt++)
            {
                if (_flushing.IsCancellationRequested) flushTries++;
                bool stoppedBefore = _stopping.IsCancellationRequested;
                var (error, final) = await TrySend(payload);
                if (error is null)
                {
                    Interlocked.Increment(ref _webhookSent);
                    break;
                }
                // A try under way when the flush began counts as one of its two.
                if (flushTries == 0 && _flushing.IsCancellationRequested) flushTries = 1;
                if (final || attempt >= _options.WebhookAttempts || _stopping.IsCancellationRequested || flushTries >= ShutdownTries)
                {
                    Interlocked.Increment(ref _webhookFailures);
                    // One still queued when the stop's time for notifications ran out was never sent: "gave up after 1
                    // tries" said it had been tried.
                    if (stoppedBefore && attempt == 1)
                    {
                        _options.Log?.Invoke($"alert webhook {_shownUrl}: a notification still queued when the server's time for them ran out was not sent; the notification is lost (bitnet_alerts_webhook_failures_total counts these)");
                        break;
                    }
                    string why = final ? "not tried again (the receiver will not take it there)"
                        : flushTries >= ShutdownTries ? $"gave up after {attempt} tries, the server is stopping"
                        : $"gave up after {attempt} tries";
                    _options.Log?.Invoke($"alert webhook {_shownUrl}: {error}; {why}; the notification is lost (bitnet_alerts_webhook_failures_total counts these)");
                    break;
                }
                // Once the flush has begun, one short wait (the first back-off) and no doubling. The flag is read once: read
                // again after the log line, a flush begun in between left a full back-off (8 s) uncut, past the budget.
                bool flushing = _flushing.IsCancellationRequested;
                var wait = flushing ? _options.WebhookRetryDelay : delay;
                _options.Log?.Invoke($"alert webhook {_shownUrl}: {error}; trying again in {wait.TotalSeconds:G3} s");
                try
                {
                    using var waiting = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token, flushing ? CancellationToken.None : _flushing.Token);
                    await Task.Delay(wait, waiting.Token);
                }
                catch (Exception e) when (e is OperationCanceledException)
                {
                }
                catch (ObjectDisposedException)
                {
                    return; // the engine is gone (its sender outlived the flush's wait)
                }
                delay *= 2;
            }
        }
    }

    /// <returns>Error: null when the webhook took the notification, else what went wrong; final: a client error (4xx
    /// but 408 and 429) that sending again cannot mend.</returns>
    private async Task<(string? Error, bool Final)> TrySend(JsonObject payload)
    {
        try
        {
            // Serialized first and sent with a Content-Length: as a chunked body some receivers (Python's http.server)
            // read nothing and still answered 200, and the alert was counted as delivered.
            using var content = new ByteArrayContent(System.Text.Json.JsonSerializer.SerializeToUtf8Bytes(payload));
            content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
            using var request = new HttpRequestMessage(HttpMethod.Post, _options.WebhookUrl) { Content = content };
            // The status is all that counts: the body is never read (a receiver's 200 MB answer was buffered in memory).
            using var response = await _http!.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, _stopping.Token);
            int code = (int)response.StatusCode;
            // A 301, 302 or 303 is followed with a GET that carries no alert (RFC 9110 lets clients, and HttpClient does):
            // the receiver's 200 to that GET counted the notification as delivered, and it was lost without a word.
            // (307 and 308 keep the POST and its body, and are fine.)
            if (response.RequestMessage is { } final && final.Method != HttpMethod.Post)
                return ($"redirected to {(final.RequestUri is { } to ? ShownUrl(to) : "another URL")}, which takes a GET without the alert (a 301, 302 or 303 answer); give --alert-webhook the URL the receiver takes POSTs at", true);
            if (response.IsSuccessStatusCode) return (null, false);
            // A 307/308 is followed with the POST but without the URL's user:password (HttpClient drops credentials on a
            // redirect): a receiver that then answered 401 was logged as refusing, with no word of the redirect.
            if (code is >= 400 and < 500 && response.RequestMessage?.RequestUri is { } landed && landed != _options.WebhookUrl && _options.WebhookUrl!.UserInfo.Length > 0)
                return ($"answered {code} after a redirect to {ShownUrl(landed)}, which is sent without the URL's credentials; give --alert-webhook the URL the receiver takes POSTs at", code is not 408 and not 429);
            // A redirect not followed (to another scheme, or too many) will not change by sending again.
            if (code is >= 300 and < 400)
                return ($"answered {code}, a redirect{(response.Headers.Location is { } location ? " to " + (location.IsAbsoluteUri ? ShownUrl(location) : "a relative URL") : "")} not followed; give --alert-webhook the URL the receiver takes POSTs at", true);
            return ($"answered {code}", code is >= 400 and < 500 and not 408 and not 429);
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException or OperationCanceledException or JsonException)
        {
            return ($"failed: {e.Message}", false);
        }
        catch (ObjectDisposedException)
        {
            // The engine was disposed while the sender still ran (its flush wait ran out): nothing more can be sent.
            return ("failed: the alert engine stopped", true);
        }
    }

    private int _disposeCalls;

    public void Dispose()
    {
        // Once (a second call threw ObjectDisposedException from the disposed token source).
        if (Interlocked.Exchange(ref _disposeCalls, 1) != 0) return;
        _timer?.Dispose();
        // Under the evaluation lock: a timer evaluation in progress finishes (and queues its changes) first.
        lock (_evaluation)
        {
            if (!_disposed)
            {
                // A firing alert ends with this process: send it resolved, or a receiver holds the incident open for
                // ever (its instance label names this pod, and no later process resolves it). The log and the Changed
                // handlers (the telemetry log) hear of it too: only the webhook did, so a log's last word on the alert
                // was "firing", and without a webhook nothing said it ended.
                List<AlertState>? ended = null;
                lock (_lock)
                {
                    var now = _origin + _time.GetElapsedTime(_originTicks);
                    for (int i = 0; i < _rules.Length; i++)
                    {
                        var st = _state[i];
                        if (!st.Firing) continue;
                        st.Firing = false;
                        // The last value measured (through a keep_firing hold, not the one it fired with), and why it ended:
                        // the telemetry log's resolution did not say the server stopped.
                        double last = double.IsNaN(st.Latest) ? st.Value : st.Latest;
                        var state = new AlertState(_rules[i], false, last, st.FiringSince, st.TimesFired)
                        {
                            Ended = now, Reason = "the server stopped", At = At(_rules[i], double.IsNaN(st.Latest) ? st.At : st.LatestAt),
                        };
                        (ended ??= []).Add(state);
                        if (_outbox is null) continue;
                        var payload = WebhookPayload(state);
                        // In commonAnnotations too (one alert per payload: they are its annotations): receivers that
                        // template on .CommonAnnotations (Slack's default) lost the reason.
                        foreach (var annotations in payload["alerts"]!.AsArray().Select(a => a!["annotations"]!).Append(payload["commonAnnotations"]!))
                            annotations["description"] = annotations["description"]!.GetValue<string>() + " Resolved because the server stopped.";
                        if (!_outbox.Writer.TryWrite(payload)) Interlocked.Increment(ref _webhookFailures);
                    }
                }
                foreach (var c in ended ?? [])
                {
                    Notify(() => _options.Log?.Invoke(string.Create(CultureInfo.InvariantCulture,
                        $"alert {c.Rule.Name} resolved: the server stopped; {c.Rule.Quantity} = {c.Value:G6}{c.AtSuffix}")), c, "the log");
                    if (Changed is { } handlers)
                        foreach (var h in handlers.GetInvocationList())
                            Notify(() => ((Action<AlertState>)h)(c), c, "a Changed handler");
                }
            }
            _disposed = true;
        }
        // Queued notifications (a shutdown's last resolutions) get 5 s and 3.5 s more each, up to 20 s; then retries and
        // sends stop. A fixed 5 s lost the third of three resolutions to a receiver answering in 3 s (sent one at a
        // time, in order, so a resolution never overtakes its alert's firing), and it stayed firing there for ever.
        int pending = _outbox is { } box && box.Reader.CanCount ? box.Reader.Count : 0;
        var flush = TimeSpan.FromSeconds(Math.Min(20, 5 + 3.5 * pending));
        _outbox?.Writer.TryComplete();
        _flushing.Cancel();
        try
        {
            if (_sender?.Wait(flush) == false)
            {
                _stopping.Cancel();
                _sender.Wait(TimeSpan.FromSeconds(2));
            }
        }
        catch (AggregateException)
        {
        }
        _stopping.Cancel();
        _http?.Dispose();
        _stopping.Dispose();
    }
}
