using System.Globalization;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using BitNetSharp.Monitoring.Alerts;
using BitNetSharp.Server.Api;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace BitNetSharp.Server;

/// <summary>
/// The OpenAI-compatible server: Kestrel and minimal-API routes over one <see cref="Generation.Scheduler.ContinuousBatchScheduler"/>.
/// <see cref="StartAsync"/> returns once the port is bound; the model loads and warms up in the background while
/// /health answers 503, and every model route answers 503 with Retry-After until it is ready.
/// <para>
/// Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /v1/models/{id}, GET /health, GET /metrics, GET /dashboard,
/// POST /tokenize, POST /detokenize. Errors are OpenAI-shaped <c>{"error":{"message","type","param","code"}}</c>.
/// Secure by default: loopback only, no CORS headers unless origins are allowed, with an API key every route but
/// /health and the dashboard page needs it (compared in constant time), and limits on body size, max_tokens, prompt
/// length (the context) and open connections.
/// No request field is ever used as a file path: the model is chosen when the server starts.
/// </para>
/// </summary>
public sealed class BitNetServer : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly ModelHost _host;
    private int _disposed;

    private BitNetServer(WebApplication app, ModelHost host, Uri address)
    {
        _app = app;
        _host = host;
        Address = address;
    }

    /// <summary>The bound address, e.g. http://127.0.0.1:8080/ (with the real port when 0 was asked for).</summary>
    public Uri Address { get; }

    public ModelState State => _host.State;

    /// <summary>The engine, once the model is loaded (tests hold it between steps).</summary>
    internal Generation.Scheduler.ContinuousBatchScheduler? Scheduler => _host.Served?.Scheduler;

    internal ModelMonitor? Monitor => _host.Served?.Monitor;

    internal ServedModel? Served => _host.Served;

    /// <summary>Completes when the model is loaded and warmed up; faults if that failed.</summary>
    public Task Ready => _host.Ready;

    public static async Task<BitNetServer> StartAsync(ServerOptions options, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var ip = ParseHost(options.Host);

        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            ApplicationName = typeof(BitNetServer).Assembly.GetName().Name,
            ContentRootPath = AppContext.BaseDirectory,
            Args = [],
        });
        builder.Logging.ClearProviders();
        if (options.ConsoleLogLevel is { } level)
        {
            builder.Logging.AddSimpleConsole(o => o.SingleLine = true);
            builder.Logging.SetMinimumLevel(level);
            // The host logs a failed start (a port in use) with its stack trace before StartAsync throws the same
            // exception to the caller, which says it (`bitnet serve`: one line); only once, then.
            builder.Logging.AddFilter("Microsoft.Extensions.Hosting.Internal.Host", Microsoft.Extensions.Logging.LogLevel.None);
        }
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Listen(ip, options.Port, listen => listen.Use(next => connection => FirstByteAsync(connection, next, options.FirstByteTimeout)));
            k.AddServerHeader = false;
            k.Limits.MaxRequestBodySize = options.MaxRequestBodyBytes;
            k.Limits.MaxConcurrentConnections = options.MaxConcurrentConnections;
            k.Limits.MaxConcurrentUpgradedConnections = options.MaxConcurrentConnections;
        });
        // The embedding program owns shutdown (bitnet serve drains on SIGTERM): no console lifetime stopping Kestrel on a signal.
        builder.Services.AddSingleton<Microsoft.Extensions.Hosting.IHostLifetime, EmbeddedLifetime>();
        var app = builder.Build();
        var host = new ModelHost(options, app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("BitNetSharp.Server"));
        Map(app, host, options, IPAddress.IsLoopback(ip));
        // Generations in flight end at once (503 or an SSE error event) instead of holding shutdown until they finish.
        app.Lifetime.ApplicationStopping.Register(host.Dispose);
        try
        {
            await app.StartAsync(cancellation);
        }
        catch
        {
            await app.DisposeAsync();
            throw;
        }
        var bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()?.Addresses.FirstOrDefault()
                    ?? throw new InvalidOperationException("Kestrel reported no bound address.");
        var address = new Uri(bound.EndsWith('/') ? bound : bound + "/");
        host.Start(address);
        return new BitNetServer(app, host, address);
    }

    /// <summary>
    /// Reads an alert rule file for <see cref="MonitoringOptions.AlertRules"/> and checks that every metric its rules
    /// name is one a served model's alerts can read; otherwise an <see cref="ArgumentException"/> names the file, the
    /// rule and the metric, and lists the names that work (a rule on any other name would load and never fire).
    /// </summary>
    public static IReadOnlyList<AlertRule> LoadAlertRules(string path)
    {
        var rules = AlertRules.Load(path);
        AlertRules.CheckMetrics(rules, ModelMonitor.AlertMetrics, path, ModelMonitor.AlertLabels);
        return rules;
    }


    /// <summary>An IP address, "localhost" (IPv4 loopback) or "*" (all interfaces).</summary>
    public static IPAddress ParseHost(string host) => host.Trim() switch
    {
        "localhost" => IPAddress.Loopback,
        "*" => IPAddress.IPv6Any,
        var h when IPAddress.TryParse(h.Trim('[', ']'), out var ip) => ip,
        var h => throw new ArgumentException($"--host '{h}' is not an IP address; use 127.0.0.1 (the default), ::1, 0.0.0.0 or localhost.", nameof(host)),
    };

    /// <summary>
    /// Closes a connection that sends nothing within <paramref name="timeout"/> (<see cref="ServerOptions.FirstByteTimeout"/>);
    /// the first bytes are left in the pipe for the HTTP parser.
    /// </summary>
    private static async Task FirstByteAsync(Microsoft.AspNetCore.Connections.ConnectionContext connection, Microsoft.AspNetCore.Connections.ConnectionDelegate next, TimeSpan timeout)
    {
        var input = connection.Transport.Input;
        // Also ended by the server's stop (ConnectionClosedRequested): a silent socket held a graceful stop for the whole timeout.
        var stopping = connection.Features.Get<Microsoft.AspNetCore.Connections.Features.IConnectionLifetimeNotificationFeature>()?.ConnectionClosedRequested ?? CancellationToken.None;
        using (var silent = CancellationTokenSource.CreateLinkedTokenSource(connection.ConnectionClosed, stopping))
        {
            silent.CancelAfter(timeout);
            try
            {
                var first = await input.ReadAsync(silent.Token);
                input.AdvanceTo(first.Buffer.Start); // nothing consumed or examined: the parser reads these bytes
                if (first.IsCompleted && first.Buffer.IsEmpty) return; // closed without a byte
            }
            catch (Exception e) when (e is OperationCanceledException or IOException)
            {
                // Silent past the timeout, or reset by the peer (a port scan, a TCP health check): Kestrel logged the
                // reset as an unhandled exception with its stack trace.
                connection.Abort();
                return;
            }
        }
        await next(connection);
    }

    /// <summary>The request's X-Request-Id when it is 1–128 printable ASCII characters, else a new "req_" and 32 hex digits.</summary>
    internal static string RequestId(HttpRequest request)
    {
        string given = request.Headers["X-Request-Id"].ToString();
        if (given.Length is > 0 and <= 128 && given.AsSpan().IndexOfAnyExceptInRange('\x21', '\x7e') < 0) return given;
        return "req_" + Guid.NewGuid().ToString("N");
    }

    private static void Map(WebApplication app, ModelHost host, ServerOptions options, bool loopbackBind)
    {
        byte[]? key = options.ApiKey is null ? null : HashApiKey(options.ApiKey);
        var cors = options.CorsOrigins.Count == 0 ? null : new HashSet<string>(options.CorsOrigins.Select(o => o.TrimEnd('/')), StringComparer.OrdinalIgnoreCase);
        // Host names answered: on a loopback bind the loopback names and those listed; elsewhere any, unless some are listed.
        string[]? hosts = loopbackBind || options.AllowedHosts.Count > 0 ? [.. options.AllowedHosts] : null;
        if (hosts is not null && hosts.Contains("*")) hosts = null;
        app.Use(async (context, next) =>
        {
            // Draining: every answer closes its connection, so a client's retry of the 503 (and a keep-alive pool's next
            // request) opens a new one, which the balancer sends to another replica; kube-proxy leaves established
            // connections where they are, and a pooled client retried on the draining replica until it stopped.
            // (Decided as the headers go out: an error answer clears the headers set before it, and a request admitted
            // before the drain began can still be answered 503 by it.)
            // Every answer names its request (x-request-id, as OpenAI's API does and its SDKs read into _request_id): the
            // id a proxy or client sent, when it is a short printable one, else a new one. Set as the headers go out, so
            // an error answer (which clears the headers set before it) carries it too.
            string requestId = RequestId(context.Request);
            context.Response.OnStarting(static state =>
            {
                var (response, served, id) = ((HttpResponse, ModelHost, string))state;
                if (served.Draining) response.Headers.Connection = "close";
                response.Headers["x-request-id"] = id;
                return Task.CompletedTask;
            }, (context.Response, host, requestId));
            try
            {
                // DNS rebinding: a page at http://evil.example:8080/ whose name now resolves to 127.0.0.1 is the same
                // origin as this server in the browser's eyes, so only the Host header shows what it is.
                if (hosts is not null && !HostAllowed(context.Request.Host.Host, hosts))
                    throw new ApiException(403, $"This server does not answer requests for host '{context.Request.Host.Host}': it listens on {(loopbackBind ? "a loopback address and answers localhost names and IP addresses" : "names given with --allowed-host (and IP addresses)")}. "
                        + "Start it with --allowed-host NAME to answer that name too (a reverse proxy can instead send 'Host: localhost').", "invalid_request_error", code: "host_not_allowed");
                // CORS first: a browser's preflight carries no Authorization header.
                if (cors is not null && Cors(context, cors)) return;
                // Cross-site request forgery: a page on another site can POST a "simple" request (text/plain, no
                // preflight) to a keyless server. Browsers name the page's origin on every such request.
                if (!HttpMethods.IsGet(context.Request.Method) && !HttpMethods.IsHead(context.Request.Method) && !HttpMethods.IsOptions(context.Request.Method)
                    && context.Request.Headers.Origin.ToString() is { Length: > 0 } origin && !OriginAllowed(context.Request, origin, cors))
                    throw new ApiException(403, $"This server does not accept {context.Request.Method} requests from pages at {origin}. Start it with --cors {origin} to let that page call the API.",
                        "invalid_request_error", code: "origin_not_allowed");
                if (key is not null && !IsPublic(context.Request) && !Authorized(context.Request, key))
                    throw new ApiException(401, "Missing or invalid API key: send it as 'Authorization: Bearer YOUR_KEY'.", "invalid_request_error", code: "invalid_api_key");
                await next(context);
            }
            catch (ApiException e) when (!context.Response.HasStarted)
            {
                await WriteError(context, host, e);
            }
            catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
            {
                // The client went away; there is nobody to answer.
            }
            catch (BadHttpRequestException e) when (!context.Response.HasStarted)
            {
                // Kestrel's verdict on the request itself while the body was read (it ended before its Content-Length,
                // broken chunked framing, too slow): the client's fault, with Kestrel's 4xx status.
                await WriteError(context, host, new ApiException(e.StatusCode is >= 400 and < 500 ? e.StatusCode : 400,
                    $"Bad request: {e.Message}", "invalid_request_error", code: "bad_request"));
            }
            catch (BadHttpRequestException)
            {
                // The same once the response has begun: nothing more can be said on this connection.
            }
            catch (Exception e) when (!context.Response.HasStarted)
            {
                // Counted (bitnet_server_internal_errors_total): a 500 here reached no other counter.
                host.NoteInternalError();
                app.Logger.LogError(e, "Unhandled error on {Method} {Path}", context.Request.Method, context.Request.Path);
                await WriteError(context, host, new ApiException(500, $"Internal server error: {e.Message}", "server_error", code: "internal_error"));
            }
            catch (Exception e) when (e is not (OperationCanceledException or ApiException))
            {
                // The same once the answer has begun: nothing can be said on this connection, which Kestrel aborts.
                host.NoteInternalError();
                throw;
            }
        });

        var completions = new CompletionEndpoints(host, options);
        var tokenize = new TokenizeEndpoints(host);
        var service = new ServiceEndpoints(host);
        var routes = new (string Method, string Path, RequestDelegate Handler)[]
        {
            ("POST", "/v1/completions", completions.Completions),
            ("POST", "/v1/chat/completions", completions.ChatCompletions),
            ("GET", "/v1/models", service.Models),
            ("GET", "/v1/models/{**id}", service.Model), // ids such as "org/model" hold slashes
            ("GET", "/health", service.Health),
            ("GET", "/metrics", service.Metrics),
            ("GET", "/dashboard", service.Dashboard),
            ("GET", "/", service.Dashboard),
            ("POST", "/tokenize", tokenize.Tokenize),
            ("POST", "/detokenize", tokenize.Detokenize),
        };
        // GET routes answer HEAD too (uptime checkers probe /health with HEAD; Kestrel sends no body for it).
        foreach (var (method, path, handler) in routes) app.MapMethods(path, method == "GET" ? ["GET", "HEAD"] : [method], handler);
        options.TestRoutes?.Invoke(app);
        string list = string.Join(", ", routes.Select(r => $"{r.Method} {r.Path}"));
        // "{**path}": every path, dotted ones included (the default fallback pattern skips "file" paths such as
        // /v2/x.json, which then got an empty 404).
        app.MapFallback("{**path}", context =>
        {
            string path = context.Request.Path.Value?.TrimEnd('/') is { Length: > 0 } p ? p : "/";
            var route = routes.FirstOrDefault(r => RouteMatches(r.Path, path));
            if (route.Path is not null)
                throw new ApiException(405, $"{context.Request.Method} is not allowed on {route.Path}; use {route.Method}.", "invalid_request_error", code: "method_not_allowed")
                    { Allow = route.Method == "GET" ? "GET, HEAD" : route.Method };
            throw new ApiException(404, $"There is no route {context.Request.Method} {context.Request.Path}. Routes: {list}.", "invalid_request_error", code: "not_found");
        });
    }

    /// <summary>Whether a path is one a route pattern takes: literally, or with a "{**name}" tail standing for any non-empty rest.</summary>
    private static bool RouteMatches(string pattern, string path)
    {
        int tail = pattern.IndexOf("{**", StringComparison.Ordinal);
        return tail < 0 ? string.Equals(pattern, path, StringComparison.OrdinalIgnoreCase)
            : path.Length > tail && path.StartsWith(pattern.AsSpan(0, tail), StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>
    /// Adds CORS headers when the request's Origin is allowed; answers a preflight (OPTIONS with
    /// Access-Control-Request-Method) with 204 itself. Returns true when the request has been answered. A request from
    /// another origin gets no CORS headers, so the browser does not let that page read the answer.
    /// </summary>
    private static bool Cors(HttpContext context, HashSet<string> allowed)
    {
        var origin = context.Request.Headers.Origin.ToString();
        if (origin.Length == 0) return false;
        bool any = allowed.Contains("*");
        if (!any && !allowed.Contains(origin)) return false;
        var headers = context.Response.Headers;
        headers.AccessControlAllowOrigin = any ? "*" : origin;
        if (!any) headers.Vary = "Origin";
        headers.AccessControlExposeHeaders = "Retry-After, x-should-retry";
        if (!HttpMethods.IsOptions(context.Request.Method) || !context.Request.Headers.ContainsKey("Access-Control-Request-Method")) return false;
        headers.AccessControlAllowMethods = "GET, POST";
        // The headers the page asks for, when they are header names: OpenAI's JS SDK sends its own x-stainless-* on
        // every call, and a fixed list made the browser block each one.
        string asked = context.Request.Headers.AccessControlRequestHeaders.ToString();
        headers.AccessControlAllowHeaders = asked.Length > 0 && asked.Length <= 4096 && IsHeaderList(asked) ? asked : "Authorization, Content-Type";
        headers.AccessControlMaxAge = "600";
        context.Response.StatusCode = StatusCodes.Status204NoContent;
        return true;
    }

    /// <summary>
    /// Whether a Host header's name (port removed) is a loopback name, an IP address, or matches one of
    /// <paramref name="allowed"/>. DNS rebinding needs a name the attacker controls: a browser sends an address as the
    /// Host only for a page whose origin is that address, so an address is answered whatever the list. (Refusing
    /// addresses other than loopback turned the kubelet's probes, Host podIP:8080, and Prometheus scraping a replica
    /// by its address into 403s on a server started with --allowed-host, as deploy/README suggests behind nginx.)
    /// </summary>
    internal static bool HostAllowed(string host, string[] allowed)
    {
        if (host.Length == 0) return true; // HTTP/1.0 without Host: no browser sends that
        host = host.TrimEnd('.');
        if (host.Equals("localhost", StringComparison.OrdinalIgnoreCase) || host.EndsWith(".localhost", StringComparison.OrdinalIgnoreCase)) return true;
        if (IPAddress.TryParse(host.Trim('[', ']'), out _) && (host.Contains(':') || IsDottedQuad(host))) return true;
        foreach (var pattern in allowed)
        {
            if (pattern.StartsWith("*.", StringComparison.Ordinal)
                    ? host.EndsWith(pattern[1..], StringComparison.OrdinalIgnoreCase) && host.Length > pattern.Length - 1
                    : host.Trim('[', ']').Equals(pattern.Trim('[', ']'), StringComparison.OrdinalIgnoreCase))
                return true;
        }
        return false;
    }

    /// <summary>Four decimal parts, as a browser writes an IPv4 host (IPAddress.TryParse also reads "1", "0x7f.1" and the like, which are names to a resolver).</summary>
    private static bool IsDottedQuad(string host)
    {
        var parts = host.Split('.');
        if (parts.Length != 4) return false;
        foreach (var p in parts)
            if (p.Length is 0 or > 3 || !p.All(char.IsAsciiDigit)) return false;
        return true;
    }

    /// <summary>
    /// Whether a state-changing request from a page at <paramref name="origin"/> is let through: an origin allowed
    /// by --cors, or the server's own (the origin's host and port are those the request was sent to, or those a
    /// reverse proxy names in X-Forwarded-Host; a cross-site page cannot set that header without a preflight,
    /// which only --cors origins pass).
    /// </summary>
    internal static bool OriginAllowed(HttpRequest request, string origin, HashSet<string>? cors)
    {
        if (cors is not null && (cors.Contains("*") || cors.Contains(origin.TrimEnd('/')))) return true;
        if (!Uri.TryCreate(origin, UriKind.Absolute, out var page) || page.Scheme is not ("http" or "https")) return false; // "null": sandboxed frames, files
        if (SameAuthority(page, request.Host)) return true;
        string forwarded = request.Headers["X-Forwarded-Host"].ToString();
        int comma = forwarded.IndexOf(',');
        if (comma >= 0) forwarded = forwarded[..comma];
        return forwarded.Trim() is { Length: > 0 } f && SameAuthority(page, new HostString(f));
    }

    private static bool SameAuthority(Uri page, HostString target) =>
        target.HasValue && string.Equals(page.IdnHost.Trim('[', ']'), target.Host.Trim('[', ']'), StringComparison.OrdinalIgnoreCase)
        && page.Port == (target.Port ?? (page.Scheme == "https" ? 443 : 80));

    /// <summary>A comma-separated list of HTTP header names (RFC 9110 tokens), nothing else.</summary>
    private static bool IsHeaderList(string value)
    {
        foreach (char ch in value)
            if (!(char.IsAsciiLetterOrDigit(ch) || ch is '-' or '_' or '.' or '!' or '#' or '$' or '%' or '&' or '\'' or '*' or '+' or '^' or '`' or '|' or '~' or ',' or ' '))
                return false;
        return true;
    }

    /// <summary>Every endpoint the app maps (routes and the fallback), for tests that must cover each one.</summary>
    internal IReadOnlyList<Endpoint> Endpoints =>
        ((Microsoft.AspNetCore.Routing.IEndpointRouteBuilder)_app).DataSources.SelectMany(d => d.Endpoints).ToArray();

    /// <summary>
    /// Requests served without the API key: the plain health probe and the dashboard page (which holds no data).
    /// <c>/health?verbose</c> needs the key: it names the model, its checksum and the firing alerts with their values.
    /// </summary>
    private static bool IsPublic(HttpRequest request)
    {
        // As routing matches them: any case, and with a trailing slash (a probe set to /health/ got 401).
        string path = (request.Path.Value ?? "").TrimEnd('/');
        return path.Equals("/health", StringComparison.OrdinalIgnoreCase) ? !request.Query.ContainsKey("verbose")
            : path.Length == 0 || path.Equals("/dashboard", StringComparison.OrdinalIgnoreCase);
    }

    private static bool Authorized(HttpRequest request, byte[] key) => ApiKeyMatches(request.Headers.Authorization.ToString(), key);

    /// <summary>
    /// Whether an Authorization header carries the key whose SHA-256 is <paramref name="keyHash"/> as a bearer token.
    /// The hashes are compared in constant time (FixedTimeEquals on equal lengths), so the answer's timing tells
    /// neither how much of a guess was right nor how long the key is.
    /// </summary>
    internal static bool ApiKeyMatches(string header, byte[] keyHash)
    {
        const string bearer = "Bearer ";
        if (!header.StartsWith(bearer, StringComparison.OrdinalIgnoreCase)) return false;
        var given = SHA256.HashData(Encoding.UTF8.GetBytes(header[bearer.Length..].Trim()));
        return CryptographicOperations.FixedTimeEquals(given, keyHash);
    }

    /// <summary>The form of the API key <see cref="ApiKeyMatches"/> compares against.</summary>
    internal static byte[] HashApiKey(string key) => SHA256.HashData(Encoding.UTF8.GetBytes(key));

    /// <summary>The header the official OpenAI clients read before deciding to retry (<see cref="ApiException.ShouldRetry"/>).</summary>
    internal const string ShouldRetryHeader = "x-should-retry";

    private static Task WriteError(HttpContext context, ModelHost host, ApiException e)
    {
        // Clear() drops every header; an allowed origin's CORS headers stay, so the page can read the error.
        var allowOrigin = context.Response.Headers.AccessControlAllowOrigin;
        var vary = context.Response.Headers.Vary;
        context.Response.Clear();
        if (allowOrigin.Count > 0)
        {
            context.Response.Headers.AccessControlAllowOrigin = allowOrigin;
            context.Response.Headers.AccessControlExposeHeaders = "Retry-After, x-should-retry";
            if (vary.Count > 0) context.Response.Headers.Vary = vary;
        }
        if (e.RetryAfterSeconds is { } s) context.Response.Headers.RetryAfter = s.ToString(CultureInfo.InvariantCulture);
        if (e.ShouldRetry is { } retry) context.Response.Headers[ShouldRetryHeader] = retry ? "true" : "false";
        if (e.Status == 401) context.Response.Headers.WWWAuthenticate = "Bearer";
        // A body past the limit is not read to its end: the connection closes (Kestrel would drain a chunked one up to its
        // raised bound, about 8 MB at the default 1 MB).
        if (e.Status == 413) context.Response.Headers.Connection = "close";
        if (e.Allow is { } allow) context.Response.Headers.Allow = allow;
        return OpenAiJson.WriteJsonAsync(context.Response, e.Status, w => OpenAiJson.Error(w, e), CancellationToken.None, host.WriteStallTimeout, host.WriteStalled(context));
    }

    /// <summary>Generation requests being handled now.</summary>
    public int InFlightRequests => _host.InFlight;

    /// <summary>The context each sequence gets (the requested one, cut to the model's), once <see cref="Ready"/> has completed.</summary>
    public int ContextLength => _host.Served?.ContextLength ?? 0;

    /// <summary>
    /// The first half of a graceful shutdown: from now on /health answers 503 {"status":"draining"} (a balancer stops
    /// sending) and new generations get 503 shutting_down; waits until the requests in flight have finished or
    /// <paramref name="timeout"/> has passed. Returns how many were still running (0: drained). <see cref="StopAsync"/>
    /// then ends any left with a clean error (503, or an SSE error event for a stream) and flushes logs.
    /// </summary>
    public async Task<int> DrainAsync(TimeSpan timeout, CancellationToken cancellation = default)
    {
        _host.BeginDrain();
        var deadline = DateTime.UtcNow + timeout;
        while (_host.InFlight > 0 && DateTime.UtcNow < deadline)
            await Task.Delay(20, cancellation);
        return _host.InFlight;
    }

    /// <summary>Stops accepting connections, ends requests in flight, stops the engine and frees the model.</summary>
    public async Task StopAsync(CancellationToken cancellation = default)
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        try
        {
            await _app.StopAsync(cancellation);
        }
        finally
        {
            _host.Dispose();
            await _app.DisposeAsync();
        }
    }

    public async ValueTask DisposeAsync() => await StopAsync();
}

/// <summary>A host lifetime that ignores process signals: <see cref="BitNetServer.DrainAsync"/> and <see cref="BitNetServer.StopAsync"/> decide when the server stops.</summary>
internal sealed class EmbeddedLifetime : Microsoft.Extensions.Hosting.IHostLifetime
{
    public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
