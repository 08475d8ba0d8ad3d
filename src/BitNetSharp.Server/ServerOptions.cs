using BitNetSharp.Generation.Scheduler;
using BitNetSharp.Model;
using BitNetSharp.Monitoring.Alerts;
using BitNetSharp.Monitoring.Telemetry;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Server;

/// <summary>A loaded model as the server serves it: weights (the server disposes them), the tokenizer if the file has one, and its public id.</summary>
public sealed record LoadedModel(ModelWeights Weights, BitNetTokenizer? Tokenizer, string Id);

/// <summary>What <see cref="BitNetServer"/> listens on, what it serves and the limits it enforces.</summary>
public sealed record ServerOptions
{
    /// <summary>An IP address or "localhost"; loopback unless told otherwise.</summary>
    public string Host { get; init; } = "127.0.0.1";

    /// <summary>TCP port; 0 picks a free one (see <see cref="BitNetServer.Address"/>).</summary>
    public int Port { get; init; } = 8080;

    /// <summary>When set, every route but /health and the dashboard page needs <c>Authorization: Bearer KEY</c>.</summary>
    public string? ApiKey { get; init; }

    /// <summary>
    /// Origins (<c>https://app.example.com</c>) whose browser pages may call the API; <c>*</c> for any. Empty (the
    /// default): no CORS headers at all, so browsers keep other sites' pages from reading the answers.
    /// </summary>
    public IReadOnlyList<string> CorsOrigins { get; init; } = [];

    /// <summary>
    /// Host names (the Host header, port ignored; <c>*.example.com</c> for its subdomains, <c>*</c> for any) this
    /// server answers besides the loopback names (localhost, *.localhost, 127.x.y.z, [::1]). On a loopback bind only
    /// those loopback names are answered unless more are listed here, so a web page that rebinds its own DNS name to
    /// 127.0.0.1 cannot drive a keyless local server. On other binds any Host is answered unless this list is set.
    /// </summary>
    public IReadOnlyList<string> AllowedHosts { get; init; } = [];

    /// <summary>Open TCP connections Kestrel accepts at once; further ones are closed at once (null: no limit).</summary>
    public long? MaxConcurrentConnections { get; init; } = 256;

    /// <summary>
    /// How long a new connection may stay silent before its first byte: past it the connection is closed. Kestrel waits
    /// its keep-alive timeout (130 s) there, which let a few hundred silent sockets hold every --max-connections slot,
    /// /health included, for two minutes at a time. Idle time between requests keeps Kestrel's 130 s: a proxy or load
    /// balancer keeping connections to the server idle for 60 s (nginx's keepalive_timeout in deploy/, an AWS ALB) must
    /// not find them closed under it.
    /// </summary>
    public TimeSpan FirstByteTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Loads the model; runs on a background thread after the server is listening, while /health answers 503.</summary>
    public required Func<LoadedModel> LoadModel { get; init; }

    /// <summary>Tests add routes behind the server's own middleware (to reach its handling of errors no route should raise).</summary>
    internal Action<Microsoft.AspNetCore.Routing.IEndpointRouteBuilder>? TestRoutes { get; init; }

    public SchedulerOptions Scheduler { get; init; } = new();

    /// <summary>Per request, waiting included.</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromSeconds(600);

    /// <summary>
    /// How long one write of a response may wait on a client that reads nothing before its connection is closed (the
    /// request cancelled as a client that went away): see <see cref="Api.WriteStallWatch"/>.
    /// </summary>
    public TimeSpan WriteStallTimeout { get; init; } = Api.WriteStallWatch.DefaultTimeout;

    /// <summary>The longest <see cref="WriteStallTimeout"/>: a timer's limit, 2³² − 2 ms (about 49.7 days).</summary>
    public static TimeSpan MaxWriteStallTimeout => Api.WriteStallWatch.MaxTimeout;

    /// <summary>The largest max_tokens a request may ask for.</summary>
    public int MaxTokensLimit { get; init; } = 4096;

    /// <summary>The largest n (choices per prompt); at most the scheduler's MaxSequences.</summary>
    public int MaxChoices { get; init; } = 8;

    /// <summary>The largest number of prompts in one completions request.</summary>
    public int MaxPrompts { get; init; } = 16;

    /// <summary>The largest logprobs / top_logprobs.</summary>
    public int MaxLogProbs { get; init; } = 20;

    /// <summary>Request bodies larger than this get 413.</summary>
    public long MaxRequestBodyBytes { get; init; } = 1 << 20;

    /// <summary>Short generations run before /health reports ready, so the first client does not pay for JIT compilation.</summary>
    public int WarmupRequests { get; init; } = 2;

    /// <summary>Logs at this level and above go to the console (Kestrel's own included); null for none.</summary>
    public Microsoft.Extensions.Logging.LogLevel? ConsoleLogLevel { get; init; } = Microsoft.Extensions.Logging.LogLevel.Warning;

    /// <summary>Weight checks, alerts and the telemetry log.</summary>
    public MonitoringOptions Monitoring { get; init; } = new();

    /// <summary>The chat template for /v1/chat/completions (serve --template); null: chosen from the model (<see cref="BitNetSharp.Tokenization.ChatTemplates.ForModel"/>).</summary>
    public BitNetSharp.Tokenization.ChatTemplate? ChatTemplate { get; init; }

    /// <summary>Throws <see cref="ArgumentException"/> naming the first setting that makes no sense.</summary>
    public void Validate()
    {
        Monitoring.Validate();
        ArgumentNullException.ThrowIfNull(LoadModel);
        Scheduler.Validate();
        BitNetServer.ParseHost(Host);
        if (Port is < 0 or > 65535) throw new ArgumentException($"The port must be 0-65535; got {Port}.", nameof(Port));
        if (RequestTimeout <= TimeSpan.Zero) throw new ArgumentException($"The request timeout must be positive; got {RequestTimeout}.", nameof(RequestTimeout));
        // A timer takes at most 2^32 - 2 ms: past it every answer failed with a 500 (the body already in the pipe before it).
        if (WriteStallTimeout <= TimeSpan.Zero || WriteStallTimeout > Api.WriteStallWatch.MaxTimeout)
            throw new ArgumentException($"The write timeout must be positive and at most {Api.WriteStallWatch.MaxTimeout.TotalSeconds:F0} s (about 49 days); got {WriteStallTimeout}.", nameof(WriteStallTimeout));
        if (MaxTokensLimit < 1) throw new ArgumentException($"MaxTokensLimit must be ≥ 1; got {MaxTokensLimit}.", nameof(MaxTokensLimit));
        if (MaxChoices < 1 || MaxChoices > Scheduler.MaxSequences)
            throw new ArgumentException($"MaxChoices must be between 1 and MaxSequences ({Scheduler.MaxSequences}); got {MaxChoices}.", nameof(MaxChoices));
        if (MaxPrompts < 1) throw new ArgumentException($"MaxPrompts must be ≥ 1; got {MaxPrompts}.", nameof(MaxPrompts));
        if (MaxLogProbs < 0) throw new ArgumentException($"MaxLogProbs must be ≥ 0; got {MaxLogProbs}.", nameof(MaxLogProbs));
        if (MaxRequestBodyBytes < 1024) throw new ArgumentException($"MaxRequestBodyBytes must be ≥ 1024; got {MaxRequestBodyBytes}.", nameof(MaxRequestBodyBytes));
        if (WarmupRequests < 0) throw new ArgumentException($"WarmupRequests must be ≥ 0; got {WarmupRequests}.", nameof(WarmupRequests));
        if (ApiKey is { Length: 0 }) throw new ArgumentException("The API key is empty; leave it unset for none.", nameof(ApiKey));
        // A client's key is read trimmed (and a header cannot carry CR/LF): "key\n" from `echo key > secret` never matched.
        if (ApiKey is { } key && key.Trim().Length != key.Length)
            throw new ArgumentException("The API key starts or ends with white space (a line break from the file it came from?), which no request can send; trim it.", nameof(ApiKey));
        // A browser sends a header's non-ASCII characters as Latin-1 bytes (Kestrel then answers 400) or refuses to send
        // them, and the dashboard could not use such a key: keys are printable ASCII, as bearer tokens are.
        if (ApiKey is { } ascii && ascii.AsSpan().IndexOfAnyExceptInRange('\x20', '\x7e') is >= 0 and var at)
            throw new ArgumentException($"The API key holds a character outside printable ASCII (U+{(int)ascii[at]:X4} at position {at + 1}), which HTTP clients and browsers cannot all send; use letters, digits, punctuation and spaces only.", nameof(ApiKey));
        if (FirstByteTimeout <= TimeSpan.Zero) throw new ArgumentException($"FirstByteTimeout must be positive; got {FirstByteTimeout}.", nameof(FirstByteTimeout));
        if (MaxConcurrentConnections is < 1) throw new ArgumentException($"MaxConcurrentConnections must be ≥ 1; got {MaxConcurrentConnections}.", nameof(MaxConcurrentConnections));
        foreach (var origin in CorsOrigins ?? throw new ArgumentNullException(nameof(CorsOrigins)))
            if (!IsCorsOrigin(origin))
                throw new ArgumentException($"The CORS origin '{origin}' is not * or an origin such as https://app.example.com (scheme, host and optional port; no path).", nameof(CorsOrigins));
        foreach (var name in AllowedHosts ?? throw new ArgumentNullException(nameof(AllowedHosts)))
            if (!IsHostPattern(name))
                throw new ArgumentException($"The allowed host '{name}' is not *, a host name (api.example.com), *.example.com or an IP address (no scheme, port or path).", nameof(AllowedHosts));
    }

    /// <summary>"*", a DNS name or IP address, or "*." and a DNS name.</summary>
    private static bool IsHostPattern(string name)
    {
        if (name == "*") return true;
        string host = name.StartsWith("*.", StringComparison.Ordinal) ? name[2..] : name;
        if (System.Net.IPAddress.TryParse(host.Trim('[', ']'), out _)) return !name.StartsWith('*');
        return host.Length is > 0 and <= 253 && Uri.CheckHostName(host) == UriHostNameType.Dns;
    }

    /// <summary>"*", or scheme://host[:port] of http or https with nothing after it; scheme and host in any case, as in
    /// URLs (https://App.example.com was refused beside the message's own example; the server matches origins ignoring case).</summary>
    private static bool IsCorsOrigin(string origin) =>
        origin == "*" || (Uri.TryCreate(origin, UriKind.Absolute, out var u) && u.Scheme is "http" or "https"
                          && string.Equals(origin.TrimEnd('/'), u.GetLeftPart(UriPartial.Authority), StringComparison.OrdinalIgnoreCase) && u.UserInfo.Length == 0);
}

/// <summary>How the server watches the model it serves (the forward pass's sampling rate is <see cref="SchedulerOptions.HealthSampleEvery"/>).</summary>
public sealed record MonitoringOptions
{
    /// <summary>Checksum every tensor at load (XXH3, about a second per GB) so probes and re-checks can find corrupted weights.</summary>
    public bool Checksums { get; init; } = true;

    /// <summary>Re-check every checksum this often on a low-priority thread (null: never; probes still run).</summary>
    public TimeSpan? VerifyWeightsInterval { get; init; }

    /// <summary>Alert rules (null: <see cref="AlertRules.Default"/>; empty: no alerts).</summary>
    public IReadOnlyList<AlertRule>? AlertRules { get; init; }

    /// <summary>The file <see cref="AlertRules"/> came from, named by the errors only the model can show (a layer match past its layers).</summary>
    public string? AlertRulesFile { get; init; }

    /// <summary>How often the alert rules are evaluated.</summary>
    public TimeSpan AlertInterval { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>POST firing and resolved alerts here in Alertmanager's webhook JSON.</summary>
    public Uri? AlertWebhook { get; init; }

    /// <summary>
    /// /health answers 503 "stalled" (readiness fails, so a balancer sends new work elsewhere) while the engine has had
    /// requests running or waiting this long without finishing a step (bitnet_engine_stall_seconds); a step of any
    /// model this runs takes seconds at most. The default alert rule BitNetEngineStalled fires at the same 30 s.
    /// </summary>
    public TimeSpan EngineStallAfter { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Opens the telemetry log once the model is loaded, given the log's context metadata (null: no log).</summary>
    public Func<IReadOnlyDictionary<string, string>, ITelemetrySink>? TelemetryLog { get; init; }

    public void Validate()
    {
        if (VerifyWeightsInterval is { } v && v <= TimeSpan.Zero)
            throw new ArgumentException($"The weight verification interval must be positive; got {v.TotalSeconds} s.", nameof(VerifyWeightsInterval));
        if (VerifyWeightsInterval is not null && !Checksums)
            throw new ArgumentException("Verifying the weights needs the load-time checksums; do not turn checksums off.", nameof(VerifyWeightsInterval));
        if (AlertInterval <= TimeSpan.Zero) throw new ArgumentException($"The alert interval must be positive; got {AlertInterval}.", nameof(AlertInterval));
        if (EngineStallAfter <= TimeSpan.Zero) throw new ArgumentException($"The engine stall threshold must be positive; got {EngineStallAfter}.", nameof(EngineStallAfter));
        if (AlertWebhook is { } u && u.Scheme is not ("http" or "https"))
            throw new ArgumentException($"The alert webhook must be an http(s) URL; got {BitNetSharp.Monitoring.Alerts.AlertEngine.ShownUrl(u)}.", nameof(AlertWebhook));
        if (VerifyWeightsInterval is { } w && w > MaxVerifyInterval)
            throw new ArgumentException($"The weight verification interval must be at most {MaxVerifyInterval.TotalDays:0} days ({MaxVerifyInterval.TotalSeconds:0} s); got {w.TotalSeconds} s.", nameof(VerifyWeightsInterval));
        if (AlertRules is { } all) BitNetSharp.Monitoring.Alerts.AlertRules.Validate(all);
        if (AlertRules is { } rules) BitNetSharp.Monitoring.Alerts.AlertRules.CheckMetrics(rules, ModelMonitor.AlertMetrics, labels: ModelMonitor.AlertLabels);
    }

    /// <summary>The longest weight re-check interval (a timed wait takes at most 2^31 − 1 ms, about 24.8 days).</summary>
    public static readonly TimeSpan MaxVerifyInterval = TimeSpan.FromDays(24);
}
