using System.CommandLine;
using System.Net;
using BitNetSharp.Formats;
using BitNetSharp.Generation.Scheduler;
using BitNetSharp.Server;

namespace BitNetSharp.Cli.Commands;

/// <summary>
/// <c>bitnet serve [-m MODEL] [--host 127.0.0.1] [--port 8080] [--max-seqs 8] [--max-batched-tokens 256]
/// [--max-queue 64] [--timeout 600] [--api-key KEY] [--cors ORIGIN] [--allowed-host NAME] [--max-connections 256] [--max-body-mb 1]</c>: the
/// OpenAI-compatible server until Ctrl-C. The model, address, port, threads, sequences, context, drain timeout and API
/// key may also come from environment variables (<see cref="Variables"/>; what a container image or a Kubernetes pod
/// sets); a flag on the command line wins over its variable.
/// </summary>
public static partial class ServeCommand
{
    public const string ApiKeyVariable = "BITNET_API_KEY";
    public const string ModelVariable = "BITNET_MODEL";
    public const string HostVariable = "BITNET_HOST";
    public const string PortVariable = "BITNET_PORT";
    public const string ThreadsVariable = "BITNET_THREADS";
    public const string MaxSeqsVariable = "BITNET_MAX_SEQS";
    public const string ContextVariable = "BITNET_CTX";
    public const string ShutdownTimeoutVariable = "BITNET_SHUTDOWN_TIMEOUT";

    /// <summary>Each variable serve reads, with the flag it stands in for.</summary>
    public static IReadOnlyList<(string Variable, string Flag)> Variables { get; } =
    [
        (ModelVariable, "--model"), (HostVariable, "--host"), (PortVariable, "--port"), (ThreadsVariable, "--threads"),
        (MaxSeqsVariable, "--max-seqs"), (ContextVariable, "--ctx"), (ShutdownTimeoutVariable, ShutdownTimeoutOption), (ApiKeyVariable, "--api-key"),
    ];

    /// <summary>serve's --speculate: prompt lookup only (a draft model would need its own batched engine and cache slots).</summary>
    private static Generation.Speculative.SpeculativeOptions? ParseSpeculation(string? mode, int draftTokens, bool draftTokensGiven)
    {
        if (draftTokens < 1 || draftTokens > Generation.Speculative.SpeculativeOptions.MaxDraftTokens)
            throw new UsageException($"--draft-tokens must be between 1 and {Generation.Speculative.SpeculativeOptions.MaxDraftTokens}; got {draftTokens}.");
        return mode?.Trim().ToLowerInvariant() switch
        {
            // Accepted and ignored, as if --draft-tokens turned speculation on (generate refuses it too).
            null or "none" or "off" when draftTokensGiven => throw new UsageException("--draft-tokens applies with --speculate ngram; speculation is off."),
            null or "none" or "off" => null,
            "ngram" or "prompt-lookup" => new Generation.Speculative.SpeculativeOptions { DraftTokens = draftTokens },
            "draft" or "model" => throw new UsageException("serve speculates by prompt lookup only (--speculate ngram); a draft model runs with generate."),
            _ => throw new UsageException($"--speculate '{mode}' is not one of ngram, none."),
        };
    }

    /// <summary>The variable's value (trimmed) when the option is not on the command line and the variable is set and not blank; null: use the option's value.</summary>
    private static string? VariableFor(ParseResult result, Option option, Func<string, string?> environment, string variable) =>
        result.GetResult(option) is { Implicit: false } ? null
        : environment(variable) is { } raw && !string.IsNullOrWhiteSpace(raw) ? raw.Trim()
        : null;

    [System.Text.RegularExpressions.GeneratedRegex(@"^(tcp|udp|sctp)://[^/\s]+:[0-9]{1,5}$")]
    private static partial System.Text.RegularExpressions.Regex ServiceLinkAddress();

    private static UsageException BadVariable(string variable, string value, string expected) => new($"{variable}: '{value}' is not {expected}.");

    private static int IntSetting(ParseResult result, Option<int> option, Func<string, string?> environment, string variable, int min, int max, string expected)
    {
        if (VariableFor(result, option, environment, variable) is not { } raw)
        {
            // The flag meets the same range as its variable (--max-seqs 0 failed later naming "MaxSequences", 5000 passed).
            int value = result.GetValue(option);
            if (value < min || value > max)
                throw new UsageException(string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{option.Name} must be {expected}; got {value}."));
            return value;
        }
        return int.TryParse(raw, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out int v) && v >= min && v <= max
            ? v : throw BadVariable(variable, raw, expected);
    }

    /// <summary>--shutdown-timeout from the command line, else BITNET_SHUTDOWN_TIMEOUT, else the default (Program sizes the process termination timeout with it before serve runs).</summary>
    internal static double ShutdownSeconds(ParseResult result, Option<double> option, Func<string, string?> environment)
    {
        if (VariableFor(result, option, environment, ShutdownTimeoutVariable) is not { } raw) return result.GetValue(option);
        return double.TryParse(raw, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double v) && v >= 0 && v <= 3600
            ? v : throw BadVariable(ShutdownTimeoutVariable, raw, "a number of seconds from 0 to 3600");
    }

    public static Command Create(CliConsole cli, Func<string, string?>? environment = null)
    {
        var env = environment ?? Environment.GetEnvironmentVariable;
        var model = new ModelOptions();
        var host = new Option<string>("--host") { Description = "Address to listen on (loopback by default; 0.0.0.0 for every interface).", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "TCP port (0 picks a free one).", DefaultValueFactory = _ => 8080 };
        var maxSeqs = new Option<int>("--max-seqs") { Description = "Sequences decoded together; each holds one KV cache of --ctx positions.", DefaultValueFactory = _ => 8 };
        var maxBatched = new Option<int>("--max-batched-tokens") { Description = "Tokens per engine step (decode tokens plus prompt chunks).", DefaultValueFactory = _ => 256 };
        var maxQueue = new Option<int>("--max-queue") { Description = "Requests that may wait for a free sequence (a request with n choices counts n); beyond it the server answers 429.", DefaultValueFactory = _ => 64 };
        var timeout = new Option<double>("--timeout") { Description = "Seconds a request may take, waiting included.", DefaultValueFactory = _ => 600 };
        var writeTimeout = new Option<double>("--write-timeout")
        {
            Description = "Seconds one write of a response may wait on a client that reads nothing before the connection is closed (the request ends as cancelled).",
            DefaultValueFactory = _ => 30,
        };
        var apiKey = new Option<string?>("--api-key") { Description = $"Require 'Authorization: Bearer KEY' on every route but /health and the dashboard page (or set {ApiKeyVariable})." };
        var maxTokens = new Option<int>("--max-tokens-limit") { Description = "The largest max_tokens a request may ask for.", DefaultValueFactory = _ => 4096 };
        var maxN = new Option<int>("--max-n") { Description = "The largest n (choices per prompt); at most --max-seqs." };
        var alias = new Option<string?>("--alias") { Description = "The model id clients use (default: the model file's name)." };
        var healthEvery = new Option<int>("--health-every") { Description = "Measure the model's numerical health (activations, residual stream, logits) every N engine steps; 0 turns it off (the NaN/Inf check always runs).", DefaultValueFactory = _ => 8 };
        var verifyWeights = new Option<double?>("--verify-weights") { Description = "Re-check every weight checksum this many seconds apart on a low-priority thread, and at least nine times a pass's own time apart, so checks take at most a tenth of a core (a sampled probe runs every 256 steps regardless)." };
        var alertRules = new Option<string?>("--alert-rules") { Description = "A JSON alert rule file ({\"rules\": [...]}) to use instead of the built-in rules." };
        var telemetryLog = new Option<string?>("--telemetry-log") { Description = "Write sampled steps, per-layer health and events to Arrow IPC files in this directory, or as NAME-*.arrow for a path ending in .arrow (read them with `bitnet logs`)." };
        var telemetryMax = new Option<double>("--telemetry-max-mb") { Description = "Rotate telemetry files past this size (MB; a file closes after the 1,024-row batch that crosses it, ~160 KB, so small sizes are exceeded); the log keeps at most 16 files' worth.", DefaultValueFactory = _ => 64 };
        var shutdownTimeout = new Option<double>(ShutdownTimeoutOption)
        {
            Description = "On SIGTERM or Ctrl-C: report not-ready and refuse new generations, let those in flight finish for up to this many seconds, then end the rest cleanly and exit 0.",
            DefaultValueFactory = _ => DefaultShutdownSeconds,
        };
        var cors = new Option<string[]>("--cors")
        {
            Description = "Let browser pages from this origin (https://app.example.com; * for any) call the API; repeat for several. Off by default: no CORS headers.",
            AllowMultipleArgumentsPerToken = true,
        };
        var allowedHosts = new Option<string[]>("--allowed-host")
        {
            Description = "Also answer requests whose Host header names this host (api.example.com, *.example.com; * for any); repeat for several. "
                + "On a loopback --host only localhost names and IP addresses are answered by default (a guard against DNS rebinding, which needs a name); on other addresses, any name unless this is given. IP addresses (probes, scrapes by address) are always answered.",
            AllowMultipleArgumentsPerToken = true,
        };
        var template = new Option<string?>("--template") { Description = $"Chat template for /v1/chat/completions: {string.Join(", ", BitNetSharp.Tokenization.ChatTemplates.Names)} (default: chosen by model)." };
        var maxConnections = new Option<long>("--max-connections") { Description = "Open TCP connections accepted at once; more are closed at once.", DefaultValueFactory = _ => 256 };
        var maxBody = new Option<double>("--max-body-mb") { Description = "Request bodies larger than this (MB) get 413.", DefaultValueFactory = _ => 1 };
        var alertWebhook = new Option<string?>("--alert-webhook") { Description = "POST firing and resolved alerts to this URL in Alertmanager's webhook JSON (user:password@ in the URL is sent as basic auth)." };
        var speculate = new Option<string?>("--speculate")
        {
            Description = "Speculative decoding for every request: 'ngram' (prompt lookup; drafts verified in the same batched step, "
                + "greedy output unchanged, sampling keeps its distribution). Counters: bitnet_speculative_*_total in /metrics.",
        };
        var draftTokens = new Option<int>("--draft-tokens") { Description = "Draft tokens per sequence and step at most (with --speculate).", DefaultValueFactory = _ => 5 };
        var command = new Command("serve", "Serve a model over an OpenAI-compatible HTTP API with continuous batching. Without the flag, these come from "
            + "environment variables when set: " + string.Join(", ", Variables.Select(v => $"{v.Variable} ({v.Flag})")) + ".")
        {
            host, port, maxSeqs, maxBatched, maxQueue, timeout, writeTimeout, apiKey, maxTokens, maxN, alias, healthEvery, verifyWeights, alertRules, alertWebhook, telemetryLog, telemetryMax, shutdownTimeout,
            speculate, draftTokens, template,
            cors, allowedHosts, maxConnections, maxBody,
        };
        model.AddTo(command);
        command.SetAction((result, cancellation) => Task.FromResult(cli.Guard(() =>
        {
            string? modelFromVariable = VariableFor(result, model.Model, env, ModelVariable);
            string path = ModelOptions.ResolveModel(modelFromVariable ?? result.GetValue(model.Model));
            // Named as the variable's (a container's BITNET_MODEL pointing at an unmounted volume read as a bare path).
            if (modelFromVariable is not null && !File.Exists(path) && !Directory.Exists(path))
                throw new BitNetSharp.Formats.ModelFormatException(path, $"no such file or directory (the path is {ModelVariable}'s; is the model's volume mounted, and can this user read its folders?)");
            string? bitsSpec = result.GetValue(model.ActivationBitsSpec);
            // Checked against the file's layer count before the server starts, as generate checks it: a bad width failed the
            // load instead, exit 1 with a stack trace in the log.
            if (bitsSpec is not null) CheckActivationBits(path, bitsSpec);
            var loadOptions = model.LoadOptions(result);
            string? weightsNote = null;
            var generator = model.Generator(result) with
            {
                Threads = IntSetting(result, model.Threads, env, ThreadsVariable, 0, 4096, "a number of threads (0: physical cores)"),
                ContextLength = IntSetting(result, model.Context, env, ContextVariable, 0, int.MaxValue, "a context length (0: the model's)"),
            };
            int seqs = IntSetting(result, maxSeqs, env, MaxSeqsVariable, 1, 4096, "a number of sequences from 1 to 4096");
            string listenHost = result.GetValue(host) ?? "127.0.0.1";
            if (VariableFor(result, host, env, HostVariable) is { } hostVariable)
            {
                try
                {
                    BitNetServer.ParseHost(hostVariable);
                }
                catch (ArgumentException)
                {
                    throw BadVariable(HostVariable, hostVariable, "an IP address (0.0.0.0, ::, 127.0.0.1, ::1) or localhost");
                }
                listenHost = hostVariable;
            }
            // Kubernetes' service links give every pod in a namespace with a Service named "bitnet" BITNET_PORT=tcp://IP:PORT,
            // over the image's BITNET_PORT=8080: that is the Service's address, not a port for this server to listen on.
            string? serviceLink = null;
            int listenPort = IntSetting(result, port, name =>
            {
                string? raw = env(name);
                if (name != PortVariable || raw is null || !ServiceLinkAddress().IsMatch(raw.Trim())) return raw;
                serviceLink = raw.Trim();
                return null;
            }, PortVariable, 0, 65535, "a port number (0-65535)");
            if (serviceLink is not null)
                cli.Error.WriteLine($"warning: {PortVariable}='{serviceLink}' is the address Kubernetes gives pods for a Service named 'bitnet' (service links), not a port; ignored, listening on port {listenPort}. Set enableServiceLinks: false or {PortVariable} in the pod spec.");
            CheckServingFlags(result, seqs, maxBatched, maxQueue, maxTokens, maxN, healthEvery, maxConnections);
            var scheduler = new SchedulerOptions
            {
                MaxSequences = seqs,
                MaxBatchedTokens = result.GetValue(maxBatched),
                MaxQueue = result.GetValue(maxQueue),
                ContextLength = generator.ContextLength,
                KvType = generator.KvType,
                Threads = generator.Threads,
                HealthSampleEvery = result.GetValue(healthEvery),
                Speculation = ParseSpeculation(result.GetValue(speculate), result.GetValue(draftTokens), result.GetResult(draftTokens) is { Implicit: false }),
            };
            double drainSeconds = ShutdownSeconds(result, shutdownTimeout, env);
            if (!(drainSeconds >= 0) || drainSeconds > 3600) throw new UsageException($"{ShutdownTimeoutOption} must be 0 to 3600 seconds; got {drainSeconds}.");
            double? verify = result.GetValue(verifyWeights);
            double maxVerify = MonitoringOptions.MaxVerifyInterval.TotalSeconds;
            if (verify is { } v && (!(v > 0) || v > maxVerify))
                throw new UsageException($"--verify-weights must be a positive number of seconds, at most {maxVerify} ({MonitoringOptions.MaxVerifyInterval.TotalDays:0} days); got {v}.");
            Uri? webhook = null;
            if (result.GetValue(alertWebhook) is { } hook && (!Uri.TryCreate(hook, UriKind.Absolute, out webhook) || webhook.Scheme is not ("http" or "https")))
                throw new UsageException($"--alert-webhook must be an http:// or https:// URL; got '{(webhook is not null ? BitNetSharp.Monitoring.Alerts.AlertEngine.ShownUrl(webhook) : MaskUserInfo(hook))}'.");
            var monitoring = new MonitoringOptions
            {
                VerifyWeightsInterval = verify is { } s ? TimeSpan.FromSeconds(s) : null,
                AlertRules = result.GetValue(alertRules) is { } rulesPath
                    ? string.IsNullOrWhiteSpace(rulesPath)
                        ? throw new UsageException("--alert-rules: the rule file's path is empty; give a JSON rule file, or leave the option out for the built-in rules.")
                        : BitNetServer.LoadAlertRules(rulesPath)
                    : null,
                AlertRulesFile = result.GetValue(alertRules),
                AlertWebhook = webhook,
                TelemetryLog = TelemetrySink(result.GetValue(telemetryLog), result.GetValue(telemetryMax), result.GetResult(telemetryMax) is { Implicit: false }),
            };
            double seconds = result.GetValue(timeout);
            if (!(seconds > 0) || seconds > MaxTimeoutSeconds)
                throw new UsageException($"--timeout must be a positive number of seconds, at most {MaxTimeoutSeconds} (a year); got {seconds}.");
            double writeSeconds = result.GetValue(writeTimeout);
            double maxWrite = Math.Floor(BitNetSharp.Server.ServerOptions.MaxWriteStallTimeout.TotalSeconds);
            if (!(writeSeconds > 0) || writeSeconds > maxWrite)
                throw new UsageException($"--write-timeout must be a positive number of seconds, at most {maxWrite} (about 49 days: a timer's limit); got {writeSeconds}.");
            // Given on the command line, an empty key is an error: `--api-key "$KEY"` with KEY unset served without one.
            // The variable, like every BITNET_* one, counts only when not blank. Both are trimmed: a key read from a file
            // keeps its line break, and a client's key is read trimmed, so it never matched.
            // Unlike the other BITNET_* variables, a blank key variable is an error too: a Secret made from an unset
            // shell variable, or a file holding only a line break, served with no key at all.
            string? key = result.GetResult(apiKey) is { Implicit: false } ? result.GetValue(apiKey)?.Trim() : env(ApiKeyVariable)?.Trim();
            if (key is { Length: 0 })
                throw new UsageException(result.GetResult(apiKey) is { Implicit: false }
                    ? "--api-key is empty (an unset shell variable?); give the key, or leave the option out to serve without one."
                    : $"{ApiKeyVariable} is set but empty; give the key, or unset the variable to serve without one.");
            // Before the model loads: a key a browser cannot send (see ServerOptions) is the user's to change.
            if (key is not null && key.AsSpan().IndexOfAnyExceptInRange('\x20', '\x7e') is >= 0 and var at)
                throw new UsageException($"{(result.GetResult(apiKey) is { Implicit: false } ? "--api-key" : ApiKeyVariable)} holds a character outside printable ASCII (U+{(int)key[at]:X4} at position {at + 1}), which browsers and HTTP clients cannot all send in a header; use letters, digits, punctuation and spaces only.");
            if (result.GetValue(alias) is { } givenAlias && string.IsNullOrWhiteSpace(givenAlias))
                throw new UsageException("--alias is empty (an unset shell variable?); give the model id clients will send, or leave it out for the file's name.");
            string id = result.GetValue(alias) ?? ModelId(path);
            BitNetSharp.Tokenization.ChatTemplate? chatTemplate = null;
            if (result.GetValue(template) is { } templateName)
            {
                try
                {
                    chatTemplate = BitNetSharp.Tokenization.ChatTemplates.ByName(templateName);
                }
                catch (ArgumentException e)
                {
                    throw new UsageException("--template: " + e.Message.Split(" (Parameter '")[0]);
                }
            }
            double bodyMb = result.GetValue(maxBody);
            if (!(bodyMb >= 1.0 / 1024) || bodyMb > 1024) throw new UsageException($"--max-body-mb must be between 0.001 and 1024; got {bodyMb}.");
            var options = new ServerOptions
            {
                Host = listenHost,
                Port = listenPort,
                ApiKey = key,
                CorsOrigins = result.GetValue(cors) ?? [],
                AllowedHosts = result.GetValue(allowedHosts) ?? [],
                MaxConcurrentConnections = result.GetValue(maxConnections),
                MaxRequestBodyBytes = (long)(bodyMb * 1024 * 1024),
                Scheduler = scheduler,
                Monitoring = monitoring,
                ChatTemplate = chatTemplate,
                RequestTimeout = TimeSpan.FromSeconds(seconds),
                WriteStallTimeout = TimeSpan.FromSeconds(writeSeconds),
                MaxTokensLimit = result.GetValue(maxTokens),
                MaxChoices = result.GetResult(maxN) is { Implicit: false } ? result.GetValue(maxN) : Math.Max(1, seqs),
                LoadModel = () =>
                {
                    var (weights, tokenizer) = ModelOptions.Load(path, loadOptions);
                    weightsNote = ModelOptions.DescribeWeightPages(weights);
                    // What generate and eval warn of at load (a tokenizer that does not fit the model, bytes with no token).
                    foreach (var warning in new[] { ModelOptions.VocabularyWarning(weights, tokenizer), tokenizer?.CoverageWarning })
                        if (warning is not null) cli.Error.WriteLine("warning: " + warning);
                    if (weights.HfDirectory?.Note is { } note) cli.Error.WriteLine("note: " + note + ".");
                    try
                    {
                        ModelOptions.ApplyActivationBits(weights, bitsSpec);
                    }
                    catch
                    {
                        weights.Dispose();
                        throw;
                    }
                    return new LoadedModel(weights, tokenizer, id);
                },
            };
            try
            {
                options.Validate();
            }
            catch (ArgumentException e)
            {
                throw new UsageException(e.Message.Split(" (Parameter '")[0]);
            }
            // A path that names no model fails here, one line, after the flags and before the server listens (it was
            // found by the load after the listen, and logged with a stack trace).
            BitNetSharp.Formats.ModelPath.Detect(path);
            using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
            using var signals = ServeSignals.Register(stop, cli.Error, StopDeadline(drainSeconds, webhook is not null));
            // How the listen address was given, for the error a bind failure names (a container sets the variable, not the flag).
            string hostSource = VariableFor(result, host, env, HostVariable) is not null ? $"{HostVariable}={listenHost}" : $"--host {listenHost}";
            return Run(cli, options, path, id, hostSource, TimeSpan.FromSeconds(drainSeconds), () => weightsNote, stop.Token).GetAwaiter().GetResult();
        })));
        return command;
    }

    /// <summary>The longest --timeout, in seconds (a year).</summary>
    public const double MaxTimeoutSeconds = 365 * 24 * 3600;

    /// <summary>
    /// The serving limits by their flags, before they become options whose errors would name properties
    /// (MaxBatchedTokens, MaxChoices) the user never typed.
    /// </summary>
    private static void CheckServingFlags(ParseResult result, int seqs, Option<int> maxBatched, Option<int> maxQueue, Option<int> maxTokens, Option<int> maxN,
        Option<int> healthEvery, Option<long> maxConnections)
    {
        int batched = result.GetValue(maxBatched);
        if (batched < seqs)
            throw new UsageException($"--max-batched-tokens ({batched}) must be at least --max-seqs ({seqs}): every running sequence puts its next token into each engine step.");
        if (result.GetValue(maxQueue) is < 0 and var queue)
            throw new UsageException($"--max-queue must be 0 or more (0: refuse a request when every sequence is busy); got {queue}.");
        if (result.GetValue(maxTokens) is < 1 and var limit) throw new UsageException($"--max-tokens-limit must be at least 1; got {limit}.");
        if (result.GetResult(maxN) is { Implicit: false } && result.GetValue(maxN) is var n && (n < 1 || n > seqs))
            throw new UsageException($"--max-n must be between 1 and --max-seqs ({seqs}): each choice runs as its own sequence; got {n}.");
        if (result.GetValue(healthEvery) is < 0 and var every)
            throw new UsageException($"--health-every must be 0 (off) or a number of engine steps; got {every}.");
        if (result.GetValue(maxConnections) is < 1 and var connections)
            throw new UsageException($"--max-connections must be at least 1; got {connections}.");
    }

    /// <summary>Whether binding failed because the address is taken (Kestrel's AddressInUseException over a SocketException).</summary>
    private static System.Net.Sockets.SocketError? SocketError(Exception e)
    {
        for (Exception? x = e; x is not null; x = x.InnerException)
            if (x is System.Net.Sockets.SocketException s) return s.SocketErrorCode;
        return null;
    }

    /// <summary>An --activation-bits spec against the model file's layer count (read from its header), before anything starts.</summary>
    private static void CheckActivationBits(string path, string spec)
    {
        int? layers;
        try
        {
            layers = BitNetSharp.Formats.ModelSummary.Load(path).HyperParameters.BlockCount;
        }
        catch (Exception e) when (e is BitNetSharp.Formats.ModelFormatException or InvalidDataException or IOException or UnauthorizedAccessException or NotSupportedException or ArgumentException)
        {
            return; // the load says what is wrong with the file
        }
        if (layers is not (> 0 and <= 4096)) return;
        try
        {
            BitNetSharp.Model.ActivationBits.Parse(spec, layers.Value);
        }
        catch (ArgumentException e)
        {
            throw new UsageException(e.Message);
        }
    }

    private static bool AddressInUse(Exception e)
    {
        for (Exception? x = e; x is not null; x = x.InnerException)
            if (x is System.Net.Sockets.SocketException { SocketErrorCode: System.Net.Sockets.SocketError.AddressAlreadyInUse } || x.GetType().Name == "AddressInUseException")
                return true;
        return false;
    }

    /// <summary>
    /// How long a stop may take before serve exits 1: the drain, 10 s to close the server and its logs, and with a
    /// webhook the alert flush (<see cref="BitNetSharp.Monitoring.Alerts.AlertEngine.MaxShutdownFlush"/>), which runs after
    /// the drain. Without it a receiver that was down cut a short drain's stop at drain + 10 s: exit 1, and the
    /// telemetry log was left without its footer.
    /// </summary>
    public static TimeSpan StopDeadline(double drainSeconds, bool webhook) =>
        TimeSpan.FromSeconds(drainSeconds + 10) + (webhook ? BitNetSharp.Monitoring.Alerts.AlertEngine.MaxShutdownFlush : TimeSpan.Zero);

    /// <summary>A URL-like text with anything between "://" and an '@' masked: a password in a mistyped URL stays out of the logs.</summary>
    public static string MaskUserInfo(string text)
    {
        int scheme = text.IndexOf("://", StringComparison.Ordinal);
        int start = scheme >= 0 ? scheme + 3 : 0;
        int at = text.IndexOf('@', start);
        int slash = text.IndexOf('/', start);
        return at >= 0 && (slash < 0 || at < slash) ? text[..start] + "…@" + text[(at + 1)..] : text;
    }

    public const string ShutdownTimeoutOption = "--shutdown-timeout";
    public const double DefaultShutdownSeconds = 25;

    private static async Task<int> Run(CliConsole cli, ServerOptions options, string path, string id, string hostSource, TimeSpan drain, Func<string?> weightsNote, CancellationToken cancellation)
    {
        BitNetServer started;
        try
        {
            started = await BitNetServer.StartAsync(options, cancellation);
        }
        catch (IOException e) when (AddressInUse(e))
        {
            throw new IOException($"port {options.Port} on {options.Host} is in use (another server?): choose another --port, or --port 0 for a free one.", e);
        }
        catch (Exception e) when (SocketError(e) is System.Net.Sockets.SocketError.AddressNotAvailable or System.Net.Sockets.SocketError.InvalidArgument
                                      or System.Net.Sockets.SocketError.AddressFamilyNotSupported)
        {
            // An address this machine cannot listen on: a stack trace before.
            var address = BitNetServer.ParseHost(options.Host);
            bool v6 = address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6;
            string instead = v6 ? ":: (every interface) or ::1" : "0.0.0.0 (every IPv4 interface) or 127.0.0.1";
            throw new UsageException(SocketError(e) switch
            {
                System.Net.Sockets.SocketError.AddressFamilyNotSupported => $"{hostSource}: this machine has no {(v6 ? "IPv6" : "IPv4")} networking; listen on {(v6 ? "0.0.0.0 or 127.0.0.1" : ":: or ::1")} instead.",
                _ when v6 && address.IsIPv6LinkLocal && address.ScopeId == 0 => $"{hostSource}: a link-local IPv6 address needs its interface, as in {address}%eth0; or give {instead}.",
                _ => $"{hostSource}: this machine cannot listen on that address (no network interface has it); give one of its addresses, {instead}.",
            });
        }
        await using var server = started;
        bool loopback = IPAddress.IsLoopback(BitNetServer.ParseHost(options.Host));
        cli.Error.WriteLine($"bitnet serve: listening on {server.Address} (loading {path}; /health answers 503 until ready)");
        if (!loopback && options.ApiKey is null)
            cli.Error.WriteLine($"warning: listening on {options.Host} without an API key: anyone who can reach this port can use the model (set --api-key or {ApiKeyVariable}).");
        try
        {
            await server.Ready.WaitAsync(cancellation);
            // Before the ready line, which scripts wait for (the notes came after it).
            if (weightsNote() is { } note) cli.Error.WriteLine($"weights in memory: {note} (--weight-pages)");
            // As generate and chat say it: the context was cut to the model's without a word (/v1/models read n_ctx 256
            // for --ctx 1000).
            if (options.Scheduler.ContextLength > server.ContextLength)
                cli.Error.WriteLine($"note: --ctx {options.Scheduler.ContextLength} is more than the model's context of {server.ContextLength} tokens (its positions end there); using {server.ContextLength}.");
            cli.Error.WriteLine($"ready: model '{id}' at {server.Address}v1 (chat: POST {server.Address}v1/chat/completions, metrics: {server.Address}metrics, dashboard: {server.Address}dashboard); Ctrl-C stops.");
            await Task.Delay(Timeout.Infinite, cancellation);
        }
        catch (OperationCanceledException) when (cancellation.IsCancellationRequested)
        {
        }
        catch (Exception e) when (server.Ready.IsFaulted)
        {
            // A rule file that does not fit the model (a layer match past its layers) is the rule file's error, not the model's.
            cli.Error.WriteLine(e is BitNetSharp.Monitoring.Alerts.AlertRulesException || e.InnerException is BitNetSharp.Monitoring.Alerts.AlertRulesException
                ? $"error: {(e as BitNetSharp.Monitoring.Alerts.AlertRulesException ?? e.InnerException)!.Message}"
                : e is UnsuitableSettingException || e.InnerException is UnsuitableSettingException ? $"error: {(e as UnsuitableSettingException ?? e.InnerException)!.Message}"
                : $"error: the model could not be loaded: {e.Message}");
            // A setting the sound file cannot take (--head-type q6_k on rows of 384) is a usage error, as on every command.
            return e is UnsuitableSettingException || e.InnerException is UnsuitableSettingException ? 2 : 1;
        }
        // Graceful shutdown (SIGTERM, Ctrl-C): not ready and refusing new generations, in-flight ones get up to `drain`
        // to finish; whatever is left ends with a clean error when the server stops; the logs are flushed on the way out.
        int inFlight = server.InFlightRequests;
        cli.Error.WriteLine(string.Create(System.Globalization.CultureInfo.InvariantCulture,
            $"stopping: draining {inFlight} request(s) in flight for up to {drain.TotalSeconds:0.#} s (/health now answers 503 draining)"));
        int left = await server.DrainAsync(drain, CancellationToken.None);
        await server.StopAsync(CancellationToken.None);
        cli.Error.WriteLine(left == 0 ? "stopped: every request in flight finished." : $"stopped: {left} request(s) were still running at the deadline and ended with a shutting_down error.");
        return 0;
    }

    /// <summary>Opens the Arrow telemetry log at <paramref name="path"/> once the model is loaded (null: no log); bad sizes are usage errors now, not at load.</summary>
    private static Func<IReadOnlyDictionary<string, string>, Monitoring.Telemetry.ITelemetrySink>? TelemetrySink(string? path, double maxMb, bool maxGiven)
    {
        // A size for a log never asked for was accepted and ignored without a word (even -5).
        if (path is null && maxGiven) throw new UsageException("--telemetry-max-mb only applies with --telemetry-log PATH; give the log's path too.");
        if (path is null) return null;
        if (!(maxMb >= 1.0 / 16 && maxMb <= 65536)) throw new UsageException($"--telemetry-max-mb must be from 0.0625 (64 KiB) to 65536 (64 GiB) per file; got {maxMb}.");
        long file = (long)(maxMb * 1024 * 1024);
        var options = new Monitoring.Telemetry.TelemetryLogOptions { Path = path, MaxFileBytes = file, MaxTotalBytes = file * 16 };
        try
        {
            options.Validate();
        }
        catch (ArgumentException e)
        {
            throw new UsageException($"--telemetry-log: {e.Message.Split(" (Parameter '")[0]}");
        }
        // The writer drops rows it cannot write rather than stop the server; a folder it can never write is a usage
        // error now, before the model loads, instead of a log that silently stays empty.
        var (directory, _) = options.Resolve();
        string probe = Path.Combine(directory, $".bitnet-write-check-{Environment.ProcessId}");
        try
        {
            Directory.CreateDirectory(directory);
            File.WriteAllBytes(probe, []);
            File.Delete(probe);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new UsageException($"--telemetry-log {path}: cannot write to the folder '{directory}' ({e.Message}). Give a folder this user can write.");
        }
        return context => new Monitoring.Telemetry.TelemetryLogWriter(options, context);
    }

    /// <summary>A file's name without its extension, a directory's name.</summary>
    internal static string ModelId(string path)
    {
        var full = Path.GetFullPath(path).TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar);
        return Directory.Exists(full) ? Path.GetFileName(full) : Path.GetFileNameWithoutExtension(full);
    }
}
