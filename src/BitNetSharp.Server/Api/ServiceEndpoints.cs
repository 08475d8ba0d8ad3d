using System.Text;
using Microsoft.AspNetCore.Http;

namespace BitNetSharp.Server.Api;

/// <summary>GET /v1/models, /health and /metrics.</summary>
internal sealed class ServiceEndpoints(ModelHost host)
{
    public async Task Models(HttpContext context)
    {
        var model = host.RequireReady();
        var c = model.Scheduler.Config;
        await OpenAiJson.WriteJsonAsync(context.Response, 200, w =>
        {
            w.WriteStartObject();
            w.WriteString("object", "list");
            w.WriteStartArray("data");
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
            w.WriteEndObject();
            w.WriteEndObject();
            w.WriteEndArray();
            w.WriteEndObject();
        }, context.RequestAborted);
    }

    /// <summary>200 {"status":"ok"} when ready; 503 while loading or warming up; 500 when loading failed.</summary>
    public Task Health(HttpContext context)
    {
        var state = host.State;
        int status = state switch { ModelState.Ready => 200, ModelState.Failed => 500, _ => 503 };
        if (status == 503) context.Response.Headers.RetryAfter = "1";
        return OpenAiJson.WriteJsonAsync(context.Response, status, w =>
        {
            w.WriteStartObject();
            w.WriteString("status", state switch { ModelState.Ready => "ok", ModelState.Loading => "loading", ModelState.WarmingUp => "warming_up", _ => "error" });
            if (state == ModelState.Failed) w.WriteString("error", host.Error);
            w.WriteEndObject();
        }, context.RequestAborted);
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
        context.Response.Headers["Content-Security-Policy"] = "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'";
        await context.Response.Body.WriteAsync(page, context.RequestAborted);
    }

    /// <summary>Prometheus text; empty until the model (and with it the scheduler's meters) exists.</summary>
    public async Task Metrics(HttpContext context)
    {
        var text = host.Served?.Exporter.Write() ?? "";
        context.Response.StatusCode = 200;
        context.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
        await context.Response.WriteAsync(text, Encoding.UTF8, context.RequestAborted);
    }
}
