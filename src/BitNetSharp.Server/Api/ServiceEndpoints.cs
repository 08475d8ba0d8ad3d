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

    /// <summary>Prometheus text; empty until the model (and with it the scheduler's meters) exists.</summary>
    public async Task Metrics(HttpContext context)
    {
        var text = host.Served?.Exporter.Write() ?? "";
        context.Response.StatusCode = 200;
        context.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
        await context.Response.WriteAsync(text, Encoding.UTF8, context.RequestAborted);
    }
}
