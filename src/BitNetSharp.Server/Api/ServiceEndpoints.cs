using System.Text;
using Microsoft.AspNetCore.Http;

namespace BitNetSharp.Server.Api;

/// <summary>GET /v1/models, /health and /metrics.</summary>
internal sealed class ServiceEndpoints(ModelHost host)
{
    public async Task Models(HttpContext context)
    {
        var model = host.RequireReady();
        await OpenAiJson.WriteJsonAsync(context.Response, 200, w =>
        {
            w.WriteStartObject();
            w.WriteString("object", "list");
            w.WriteStartArray("data");
            WriteModel(w, model);
            w.WriteEndArray();
            w.WriteEndObject();
        }, context.RequestAborted, host.WriteStallTimeout, host.WriteStalled(context));
    }

    /// <summary>GET /v1/models/{id} (the SDKs' models.retrieve): the served model, or 404 model_not_found naming it.</summary>
    public async Task Model(HttpContext context)
    {
        var model = host.RequireReady();
        // Kestrel has decoded every escape of the path but %2F (the OpenAI SDK sends "org/name" as org%2Fname): only that is
        // left to decode. Unescaping the whole value decoded twice (an id "a%41b", sent as a%2541b, was looked up as "aAb").
        string id = (context.Request.RouteValues["id"] as string ?? "").Replace("%2F", "/", StringComparison.OrdinalIgnoreCase);
        if (!string.Equals(id, model.Id, StringComparison.Ordinal))
            throw new ApiException(404, $"The model '{id}' does not exist; this server serves '{model.Id}' (see GET /v1/models).", "invalid_request_error", "model", "model_not_found");
        await OpenAiJson.WriteJsonAsync(context.Response, 200, w => WriteModel(w, model), context.RequestAborted, host.WriteStallTimeout, host.WriteStalled(context));
    }

    private static void WriteModel(System.Text.Json.Utf8JsonWriter w, ServedModel model)
    {
        var c = model.Scheduler.Config;
        w.WriteStartObject();
        w.WriteString("id", model.Id);
        w.WriteString("object", "model");
        w.WriteNumber("created", model.Created);
        w.WriteString("owned_by", "bitnetsharp");
        w.WriteStartObject("meta");
        w.WriteString("architecture", c.Architecture);
        w.WriteNumber("n_vocab", c.VocabSize);
        w.WriteNumber("n_ctx", model.ContextLength);
        w.WriteNumber("n_ctx_train", c.ContextLength);
        w.WriteNumber("n_embd", c.Dim);
        w.WriteNumber("n_layer", c.Layers);
        w.WriteNumber("max_sequences", model.Scheduler.Options.MaxSequences);
        // The KV cache's element type, as --kv-type reads it back: int8 and fp8 allocate the same bytes, so the size gauge
        // could not tell an operator which one a server ran.
        w.WriteString("kv_type", BitNetSharp.Model.KvCacheTypeNames.Name(model.Scheduler.Options.KvType));
        // The activation widths, in --activation-bits' form ("8" unless calibrated or overridden): only /metrics' bits
        // label said which a server ran.
        w.WriteString("activation_bits", model.Scheduler.ActivationBits.ToString());
        w.WriteEndObject();
        w.WriteEndObject();
    }

    /// <summary>
    /// 200 {"status":"ok"} when ready; 503 while loading, warming up or draining for shutdown ({"status":"draining"}), and
    /// while the engine is stalled ({"status":"stalled"}: work held past MonitoringOptions.EngineStallAfter without a
    /// finished step, so readiness fails and a balancer sends new work elsewhere) and when a mapped model file was cut
    /// short under the server ({"status":"model_file_changed","error":…}); 500 when loading failed. With <c>?verbose</c>,
    /// "components" says where each part stands — model loaded, warm, weights verified, model health sampling, alerts
    /// (firing ones listed) — and "status" is "degraded" (still 200: the process serves) while a critical alert fires
    /// or the weights failed a check.
    /// </summary>
    public Task Health(HttpContext context)
    {
        var state = host.State;
        double stall = state == ModelState.Ready ? host.Served?.Scheduler.Statistics.StallSeconds ?? 0 : 0;
        bool stalled = stall > host.EngineStallAfter.TotalSeconds;
        // A model file cut short under the server: every generation fails from then on (it ended the process before),
        // so readiness fails and says why; a restart loads the file as it is now.
        string? fileProblem = state == ModelState.Ready ? host.Served?.Scheduler.ModelFileProblem() : null;
        int status = host.Draining || stalled || fileProblem is not null ? 503 : state switch { ModelState.Ready => 200, ModelState.Failed => 500, _ => 503 };
        if (status == 503) context.Response.Headers.RetryAfter = "1";
        bool verbose = context.Request.Query.ContainsKey("verbose");
        var monitor = host.Served?.Monitor;
        var firing = monitor?.Alerts?.Firing ?? [];
        bool weightsOk = monitor?.Integrity is not { Verified: false };
        bool degraded = state == ModelState.Ready && (!weightsOk || firing.Any(a => a.Rule.Severity == "critical"));
        return OpenAiJson.WriteJsonAsync(context.Response, status, w =>
        {
            w.WriteStartObject();
            w.WriteString("status", host.Draining ? "draining" : state switch
            {
                ModelState.Ready when fileProblem is not null => "model_file_changed",
                ModelState.Ready when stalled => "stalled",
                ModelState.Ready => degraded && verbose ? "degraded" : "ok",
                ModelState.Loading => "loading",
                ModelState.WarmingUp => "warming_up",
                _ => "error",
            });
            if (state == ModelState.Failed) w.WriteString("error", host.Error);
            else if (fileProblem is not null) w.WriteString("error", fileProblem);
            if (verbose)
            {
                // Which process answered: behind a balancer successive polls reach different replicas, and a restart
                // starts every counter again; the dashboard tells them apart by this (and /metrics' start time).
                w.WriteString("started", host.Started);
                WriteComponents(w, state, monitor, firing, stall, stalled);
            }
            w.WriteEndObject();
        }, context.RequestAborted, host.WriteStallTimeout, host.WriteStalled(context));
    }

    private void WriteComponents(System.Text.Json.Utf8JsonWriter w, ModelState state, ModelMonitor? monitor, IReadOnlyList<Monitoring.Alerts.AlertState> firing,
        double stall, bool stalled)
    {
        var scheduler = host.Served?.Scheduler;
        w.WriteStartObject("components");
        w.WriteStartObject("model");
        w.WriteString("status", state is ModelState.Loading ? "loading" : state is ModelState.Failed ? "error" : "ok");
        if (host.Served is { } served) w.WriteString("id", served.Id);
        w.WriteEndObject();
        w.WriteStartObject("warmup");
        w.WriteString("status", state == ModelState.Ready ? "ok" : state == ModelState.Failed ? "error" : "pending");
        w.WriteEndObject();
        w.WriteStartObject("weights");
        if (monitor?.Integrity is { } integrity)
        {
            // A file cut short is the weights' problem too (the component read "ok" under a 503 model_file_changed).
            w.WriteString("status", host.Served?.Scheduler.ModelFileProblem() is not null ? "file_changed" : integrity.Verified ? "ok" : "mismatch");
            w.WriteString("checksum", integrity.ModelChecksumHex);
            w.WriteNumber("tensors", integrity.Tensors.Count);
            w.WriteNumber("verifications", integrity.Verifications);
            w.WriteNumber("probes", integrity.Probes);
            if (integrity.LastVerified is { } at) w.WriteString("last_verified", at);
            if (monitor.VerifyInterval is { } every) w.WriteNumber("verify_interval_seconds", every.TotalSeconds);
            if (integrity.LastMismatch is { } bad) w.WriteString("last_mismatch", bad);
        }
        else w.WriteString("status", state == ModelState.Ready ? "unchecked" : "pending");
        if (monitor?.Codes is { } codes) w.WriteNumber("degenerate_tensors", codes.Degenerate);
        w.WriteEndObject();
        w.WriteStartObject("engine");
        if (scheduler is not null)
        {
            var st = scheduler.Statistics;
            w.WriteString("status", stalled ? "stalled" : Worst(firing, "serving"));
            w.WriteNumber("stall_seconds", Math.Round(stall, 3));
            w.WriteNumber("stall_after_seconds", host.EngineStallAfter.TotalSeconds);
            w.WriteNumber("steps", st.Steps);
            w.WriteNumber("requests_running", st.RunningRequests);
            w.WriteNumber("requests_waiting", st.WaitingRequests);
        }
        else w.WriteString("status", "pending");
        w.WriteEndObject();
        w.WriteStartObject("health");
        if (scheduler is not null)
        {
            var h = scheduler.Health;
            // The model's health: what its alerts say (it read "ok" beside a firing BitNetNonFiniteLogits, the sampling
            // switch being the only thing it reported); whether steps are sampled at all is "sampling".
            string worst = Worst(firing, "model");
            w.WriteString("status", worst != "ok" ? worst : h.SampleEvery == 0 ? "off" : "ok");
            w.WriteString("sampling", h.SampleEvery == 0 ? "off" : "on");
            w.WriteNumber("sample_every", h.SampleEvery);
            w.WriteNumber("samples", h.Samples);
            w.WriteNumber("nonfinite_sequences", scheduler.Statistics.NonFiniteSequences);
        }
        else w.WriteString("status", "pending");
        w.WriteEndObject();
        w.WriteStartObject("alerts");
        w.WriteString("status", firing.Count == 0 ? "ok" : "firing");
        w.WriteNumber("rules", monitor?.Alerts?.Rules.Count ?? 0);
        w.WriteNumber("critical", firing.Count(a => a.Rule.Severity == "critical"));
        w.WriteStartArray("firing");
        foreach (var a in firing)
        {
            w.WriteStartObject();
            w.WriteString("name", a.Rule.Name);
            w.WriteString("severity", a.Rule.Severity);
            w.WriteString("component", a.Rule.Component);
            w.WriteString("since", a.Since);
            if (double.IsFinite(a.Value)) w.WriteNumber("value", a.Value);
            else w.WriteString("value", a.Value.ToString(System.Globalization.CultureInfo.InvariantCulture));
            // The series behind a max/min rule's value (which layer blew up, which input saturates).
            if (a.At is { Count: > 0 } at)
            {
                w.WriteStartObject("labels");
                for (int i = 0; i + 1 < at.Count; i += 2) w.WriteString(at[i], at[i + 1]);
                w.WriteEndObject();
            }
            w.WriteString("summary", a.Rule.Summary ?? a.Rule.Name);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
        w.WriteEndObject();
    }

    /// <summary>"degraded" while a critical alert of the component fires, "warning" while only lesser ones do, else "ok".</summary>
    private static string Worst(IReadOnlyList<Monitoring.Alerts.AlertState> firing, string component)
    {
        string worst = "ok";
        foreach (var a in firing)
        {
            if (a.Rule.Component != component) continue;
            if (a.Rule.Severity == "critical") return "degraded";
            worst = "warning";
        }
        return worst;
    }

    private static readonly Lazy<byte[]> DashboardPage = new(() =>
    {
        using var stream = typeof(ServiceEndpoints).Assembly.GetManifestResourceStream("BitNetSharp.Server.dashboard.html")
            ?? throw new InvalidOperationException("The dashboard page is missing from the server assembly.");
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return copy.ToArray();
    });

    /// <summary>
    /// GET /dashboard (and /): a self-contained page that polls /health and /metrics once a second in the browser and
    /// shows throughput, queue, KV-cache use and latency quantiles. It holds no data itself, so it is served without
    /// the API key; with one configured, the page asks for it before reading /metrics.
    /// </summary>
    public async Task Dashboard(HttpContext context)
    {
        var page = DashboardPage.Value;
        context.Response.StatusCode = 200;
        context.Response.ContentType = "text/html; charset=utf-8";
        context.Response.Headers.CacheControl = "no-cache";
        // No other site may frame the page (its key box could be overlaid: clickjacking), nor the body be read as another type.
        // No <base> or form target may send its requests elsewhere, and its address goes to no other site.
        context.Response.Headers["Content-Security-Policy"] = "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
        context.Response.Headers["Referrer-Policy"] = "no-referrer";
        context.Response.Headers.XFrameOptions = "DENY";
        context.Response.Headers.XContentTypeOptions = "nosniff";
        await OpenAiJson.WriteBodyAsync(context.Response, page, context.RequestAborted, host.WriteStallTimeout, host.WriteStalled(context));
    }

    /// <summary>
    /// Prometheus text; empty until the model (and with it the scheduler's meters) exists, and after a failed load or
    /// warm-up: a scheduler whose warm-up threw exported live-looking series beside /health's 500, so Prometheus' rule
    /// for a replica that never serves (BitNetNotServing: scraped, no bitnet series) could not fire.
    /// </summary>
    public async Task Metrics(HttpContext context)
    {
        var text = host.State == ModelState.Failed ? "" : host.Served?.Exporter.Write() ?? "";
        context.Response.StatusCode = 200;
        context.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
        await OpenAiJson.WriteBodyAsync(context.Response, Encoding.UTF8.GetBytes(text), context.RequestAborted, host.WriteStallTimeout, host.WriteStalled(context));
    }
}
