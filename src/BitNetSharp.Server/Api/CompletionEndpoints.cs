using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using BitNetSharp.Generation;
using BitNetSharp.Generation.Scheduler;
using Microsoft.AspNetCore.Http;

namespace BitNetSharp.Server.Api;

/// <summary>
/// POST /v1/completions and /v1/chat/completions: parse and validate, submit one scheduler request per prompt
/// (each with n choices), then answer with one JSON body or stream SSE chunks as tokens arrive. The request's
/// abort token is the scheduler request's cancellation, so a client that goes away frees its sequences at the
/// engine's next step.
/// </summary>
internal sealed class CompletionEndpoints(ModelHost host, ServerOptions options)
{
    public Task Completions(HttpContext context) => Handle(context, chat: false);

    public Task ChatCompletions(HttpContext context) => Handle(context, chat: true);

    private sealed class Choice
    {
        public readonly StringBuilder Text = new();
        public List<TokenLogProbEntry>? LogProbs;
        public string? Finish;
        public int Tokens;
    }

    /// <summary>One Activity per completion request (source "BitNetSharp.Server"), a child of the request's HTTP activity,
    /// so OpenTelemetry tracing sees each generation with its model, token counts and finish.</summary>
    public static readonly System.Diagnostics.ActivitySource Activities = new("BitNetSharp.Server");

    private async Task Handle(HttpContext context, bool chat)
    {
        var model = host.EnterRequest();
        try
        {
            await Handle(context, chat, model);
        }
        finally
        {
            host.ExitRequest();
        }
    }

    private async Task Handle(HttpContext context, bool chat, ServedModel model)
    {
        using var activity = Activities.StartActivity(chat ? "chat.completions" : "completions");
        var aborted = context.RequestAborted;
        CompletionRequest request;
        var (doc, json) = await JsonRequest.ReadAsync(context.Request, aborted);
        using (doc) request = CompletionRequest.Parse(json, chat, model, options);

        string id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
        activity?.SetTag("gen_ai.request.model", model.Id);
        activity?.SetTag("bitnet.request_id", id);
        activity?.SetTag("bitnet.stream", request.Stream);
        var handles = Submit(model, request, id, TraceId(context.Request), aborted);
        try
        {
            var header = new ResponseHeader(id, DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
                model.Id, chat, request.LogProbs, model.Tokenizer);
            var choices = Enumerable.Range(0, handles.Length * request.Choices).Select(_ => new Choice()).ToArray();
            int promptTokens = request.Prompts.Sum(p => p.Length);
            activity?.SetTag("gen_ai.usage.input_tokens", promptTokens);
            Action stalled = () => host.NoteWriteTimeout("request " + id);
            if (request.Stream) await StreamAsync(context, request, header, handles, choices, promptTokens, options.WriteStallTimeout, stalled);
            else await RespondAsync(context, request, header, handles, choices, promptTokens, options.WriteStallTimeout, stalled);
            activity?.SetTag("gen_ai.usage.output_tokens", choices.Sum(c => c.Tokens));
            activity?.SetTag("gen_ai.response.finish_reasons", string.Join(',', choices.Select(c => c.Finish ?? "stop")));
        }
        catch (Exception e) when (activity is not null)
        {
            activity.SetStatus(System.Diagnostics.ActivityStatusCode.Error, e.Message);
            throw;
        }
        finally
        {
            // Nothing left to deliver to: stop whatever is still running (a no-op for finished requests). A client that
            // went away cancels; otherwise the server ended the response itself (one prompt of a list timed out or
            // failed, or the server's own error) and withdraws the others, which no client cancelled.
            foreach (var h in handles)
            {
                if (aborted.IsCancellationRequested) h.Cancel();
                else h.Withdraw();
            }
        }
    }

    /// <summary>
    /// The trace id of a W3C traceparent header ("00-{32 hex trace id}-{16 hex parent id}-{2 hex flags}"), or of the
    /// request's current Activity; null when neither is there or the header is malformed (an all-zero id is invalid).
    /// </summary>
    internal static string? TraceId(HttpRequest request)
    {
        string header = request.Headers["traceparent"].ToString().Trim();
        var parts = header.Split('-');
        if (parts.Length >= 4 && parts[0].Length == 2 && parts[1].Length == 32 && parts[2].Length == 16 && parts[3].Length == 2
            && parts[0] != "ff" && parts[1].All(char.IsAsciiHexDigitLower) && parts[1].Any(c => c != '0'))
            return parts[1];
        return System.Diagnostics.Activity.Current?.TraceId.ToHexString() is { } t && t != "00000000000000000000000000000000" ? t : null;
    }

    private GenerationHandle[] Submit(ServedModel model, CompletionRequest request, string id, string? traceId, CancellationToken aborted)
    {
        var handles = new List<GenerationHandle>(request.Prompts.Count);
        // Each prompt is its own scheduler request of n sequences: more than the queue and the sequences can ever hold
        // together would be refused with 429 however long the client retried.
        var limits = model.Scheduler.Options;
        long sequences = (long)request.Prompts.Count * request.Choices;
        if (sequences > limits.MaxQueue + limits.MaxSequences)
            throw ApiException.BadRequest($"The request needs {sequences} sequences ({request.Prompts.Count} prompts × n = {request.Choices}); this server takes at most " +
                $"{limits.MaxQueue + limits.MaxSequences} at once ({limits.MaxSequences} sequences plus a queue of {limits.MaxQueue}). Send fewer prompts or a smaller n per request.",
                "prompt", "too_many_prompts");
        try
        {
            foreach (var prompt in request.Prompts)
            {
                int choiceOffset = handles.Count * request.Choices; // the response's index of this prompt's first choice
                handles.Add(model.Scheduler.Submit(new GenerationRequest
                {
                    Prompt = prompt,
                    MaxTokens = request.MaxTokens,
                    Sampling = request.Sampling,
                    StopStrings = request.Stop,
                    IgnoreStopTokens = request.IgnoreEos,
                    StopTokenIds = request.StopTokens,
                    Speculate = request.Speculate,
                    Choices = request.Choices,
                    RequestId = id,
                    TraceId = traceId,
                    ChoiceOffset = choiceOffset,
                }, aborted));
            }
            return [.. handles];
        }
        catch (Exception e) when (e is SchedulerQueueFullException or ArgumentException or ObjectDisposedException)
        {
            // The server refuses the request: its prompts already queued are withdrawn, not counted as a client's cancellations.
            foreach (var h in handles) h.Withdraw();
            throw e switch
            {
                SchedulerQueueFullException => new ApiException(429, e.Message, "rate_limit_error", code: "queue_full") { RetryAfterSeconds = 1 },
                ObjectDisposedException => new ApiException(503, "The server is shutting down.", "server_error", code: "shutting_down") { RetryAfterSeconds = 1 },
                _ => ApiException.BadRequest(e.Message.Split(" (Parameter '")[0]),
            };
        }
    }

    /// <summary>Every event of every prompt's request, with the choice index OpenAI gives it: prompt × n + choice.</summary>
    internal static async IAsyncEnumerable<(int Index, GenerationEvent Event)> Events(GenerationHandle[] handles, int n, [EnumeratorCancellation] CancellationToken cancellation)
    {
        if (handles.Length == 1)
        {
            await foreach (var e in handles[0].Events.ReadAllAsync(cancellation)) yield return (e.Choice, e);
            yield break;
        }
        var merged = Channel.CreateUnbounded<(int, GenerationEvent)>(new UnboundedChannelOptions { SingleReader = true });
        var pumps = handles.Select((h, p) => Task.Run(async () =>
        {
            try
            {
                await foreach (var e in h.Events.ReadAllAsync(cancellation)) merged.Writer.TryWrite((p * n + e.Choice, e));
            }
            catch (Exception e)
            {
                // One prompt's failure ends the response now: waiting for the other prompts kept the client (and a
                // timeout's 504) waiting for their whole generations, which the caller then cancels anyway.
                merged.Writer.TryComplete(e);
            }
        }, cancellation)).ToArray();
        _ = Task.WhenAll(pumps).ContinueWith(t => merged.Writer.TryComplete(t.Exception?.InnerException ?? (t.IsCanceled ? new OperationCanceledException() : null)),
            CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        await foreach (var x in merged.Reader.ReadAllAsync(cancellation)) yield return x;
    }

    /// <summary>Folds one event into its choice; returns the log-probability entry it adds, if any.</summary>
    private static TokenLogProbEntry? Apply(Choice c, GenerationEvent e, LogProbFormat format)
    {
        TokenLogProbEntry? entry = null;
        if (e.StopToken >= 0) c.Tokens++; // usage counts the stop token, as llama-server and vLLM do; it has no text or logprobs entry
        if (e.Token >= 0)
        {
            c.Tokens++;
            if (format != LogProbFormat.None)
            {
                entry = new TokenLogProbEntry(e.Token, e.LogProb, e.TopLogProbs, e.TextOffset);
                (c.LogProbs ??= []).Add(entry.Value);
            }
        }
        c.Text.Append(e.Text);
        c.Finish = OpenAiJson.FinishReason(e.Finish) ?? c.Finish;
        return entry;
    }

    private static async Task RespondAsync(HttpContext context, CompletionRequest request, ResponseHeader header, GenerationHandle[] handles, Choice[] choices, int promptTokens, TimeSpan stallTimeout, Action stalled)
    {
        var aborted = context.RequestAborted;
        try
        {
            await foreach (var (index, e) in Events(handles, request.Choices, aborted)) Apply(choices[index], e, request.LogProbs);
        }
        catch (Exception e) when (EndsGeneration(e))
        {
            throw GenerationError(e, aborted) ?? (Exception)new OperationCanceledException(aborted); // null: the client went away
        }
        // Tokens held back for a stop string got their offsets before the cut: the ones past the final text (a token of the
        // stop text itself) were out of order and past the end (36 in a 32-character text). Capped at the text's end.
        foreach (var c in choices)
            if (c.LogProbs is { } entries)
                for (int i = 0; i < entries.Count; i++)
                    if (entries[i].TextOffset > c.Text.Length) entries[i] = entries[i] with { TextOffset = c.Text.Length };
        await OpenAiJson.WriteJsonAsync(context.Response, 200, w =>
        {
            OpenAiJson.Start(w, header, chunk: false);
            w.WriteStartArray("choices");
            for (int i = 0; i < choices.Length; i++)
            {
                var c = choices[i];
                w.WriteStartObject();
                w.WriteNumber("index", i);
                if (header.Chat)
                {
                    w.WriteStartObject("message");
                    w.WriteString("role", "assistant");
                    w.WriteString("content", c.Text.ToString());
                    w.WriteNull("refusal");
                    w.WriteEndObject();
                }
                else w.WriteString("text", c.Text.ToString());
                OpenAiJson.LogProbs(w, header, c.LogProbs ?? []);
                w.WriteString("finish_reason", c.Finish ?? "stop");
                w.WriteEndObject();
            }
            w.WriteEndArray();
            OpenAiJson.Usage(w, promptTokens, choices.Sum(c => c.Tokens));
            w.WriteEndObject();
        }, aborted, stallTimeout, stalled);
    }

    private static async Task StreamAsync(HttpContext context, CompletionRequest request, ResponseHeader header, GenerationHandle[] handles, Choice[] choices, int promptTokens, TimeSpan stallTimeout, Action stalled)
    {
        var aborted = context.RequestAborted;
        // The status line waits for the first event: a request that times out or is refused while it waits in the
        // queue gets its 504/503 (with Retry-After) like a non-streamed one, not a 200 whose stream holds an error.
        await using var events = Events(handles, request.Choices, aborted).GetAsyncEnumerator(aborted);
        bool more;
        try
        {
            more = await events.MoveNextAsync();
        }
        catch (Exception e) when (EndsGeneration(e))
        {
            throw GenerationError(e, aborted) ?? (Exception)new OperationCanceledException(aborted); // null: the client went away
        }
        var response = context.Response;
        response.StatusCode = 200;
        response.ContentType = "text/event-stream; charset=utf-8";
        response.Headers.CacheControl = "no-cache";
        response.Headers["X-Accel-Buffering"] = "no";
        using var sse = new SseWriter(response.BodyWriter, context, stallTimeout, stalled);
        try
        {
            if (header.Chat)
                for (int i = 0; i < choices.Length; i++)
                    await sse.SendAsync(w => Chunk(w, header, request, i, "", null, null, role: true), aborted);
            // A token whose text is held back (it may begin a stop string, or ends inside a character) keeps its logprobs
            // entry until its text goes out or the choice ends: sent at once, its text_offset pointed past text a stop
            // string then cut (the non-streamed answer caps them; the stream could not take them back).
            var held = new List<TokenLogProbEntry>?[choices.Length];
            for (; more; more = await events.MoveNextAsync())
            {
                var (index, e) = events.Current;
                var entry = Apply(choices[index], e, request.LogProbs);
                string? finish = OpenAiJson.FinishReason(e.Finish);
                if (entry is { } en) (held[index] ??= []).Add(en);
                // Entries go out once their token's text has begun to (offset within the text sent so far, this event's
                // included), in order; at the end all of them, capped at the final text.
                int delivered = choices[index].Text.Length;
                List<TokenLogProbEntry>? entries = null;
                if (held[index] is { Count: > 0 } waiting)
                {
                    int ready = 0;
                    while (ready < waiting.Count && (finish is not null || waiting[ready].TextOffset <= delivered)) ready++;
                    if (ready > 0)
                    {
                        entries = waiting.GetRange(0, ready);
                        waiting.RemoveRange(0, ready);
                        for (int k = 0; k < entries.Count; k++)
                            if (entries[k].TextOffset > delivered) entries[k] = entries[k] with { TextOffset = delivered };
                    }
                }
                if (e.Text.Length == 0 && entries is null && finish is null) continue;
                await sse.SendAsync(w => Chunk(w, header, request, index, e.Text, entries, finish, role: false), aborted);
            }
            if (request.IncludeUsage)
            {
                await sse.SendAsync(w =>
                {
                    OpenAiJson.Start(w, header, chunk: true);
                    w.WriteStartArray("choices");
                    w.WriteEndArray();
                    OpenAiJson.Usage(w, promptTokens, choices.Sum(c => c.Tokens));
                    w.WriteEndObject();
                }, aborted);
            }
        }
        catch (Exception e) when (EndsGeneration(e))
        {
            var api = GenerationError(e, aborted);
            if (api is null) return;
            try
            {
                await sse.SendAsync(w => OpenAiJson.Error(w, api), aborted);
            }
            catch (Exception) when (aborted.IsCancellationRequested)
            {
                return;
            }
        }
        try
        {
            await sse.DoneAsync(aborted);
        }
        catch (OperationCanceledException) when (aborted.IsCancellationRequested)
        {
        }
    }

    private static void Chunk(Utf8JsonWriter w, ResponseHeader header, CompletionRequest request, int index, string text, IReadOnlyList<TokenLogProbEntry>? entries, string? finish, bool role)
    {
        OpenAiJson.Start(w, header, chunk: true);
        w.WriteStartArray("choices");
        w.WriteStartObject();
        w.WriteNumber("index", index);
        if (header.Chat)
        {
            w.WriteStartObject("delta");
            if (role) w.WriteString("role", "assistant");
            if (role || text.Length > 0) w.WriteString("content", text);
            w.WriteEndObject();
        }
        else w.WriteString("text", text);
        OpenAiJson.LogProbs(w, header, entries);
        if (finish is null) w.WriteNull("finish_reason"); else w.WriteString("finish_reason", finish);
        w.WriteEndObject();
        w.WriteEndArray();
        if (request.IncludeUsage) w.WriteNull("usage");
        w.WriteEndObject();
    }

    /// <summary>The exceptions a scheduler channel completes with, and the I/O errors of a connection that went away.</summary>
    private static bool EndsGeneration(Exception e) =>
        e is OperationCanceledException or TimeoutException or ObjectDisposedException or InvalidOperationException or System.IO.IOException;

    /// <summary>What to tell the client about a generation that ended abnormally: null when the client itself went away (nobody to tell).</summary>
    private static ApiException? GenerationError(Exception e, CancellationToken aborted) => e switch
    {
        _ when aborted.IsCancellationRequested => null,
        OperationCanceledException => new ApiException(503, "The request was cancelled by the server.", "server_error", code: "cancelled"),
        // A request that timed out while it ran would run the whole timeout again on each of the client's retries; one that
        // timed out in the queue may find room later.
        RequestTimeoutException { Started: true } => new ApiException(504, e.Message, "server_error", code: "timeout") { ShouldRetry = false },
        TimeoutException => new ApiException(504, e.Message, "server_error", code: "timeout"),
        ObjectDisposedException => new ApiException(503, "The server is shutting down.", "server_error", code: "shutting_down") { RetryAfterSeconds = 1 },
        Monitoring.NonFiniteLogitsException => new ApiException(500, e.Message, "server_error", code: "non_finite_logits") { ShouldRetry = false },
        // An engine failure may be transient (memory, a batch-mate's failure): the clients' own rule stands.
        _ => new ApiException(500, e.Message, "server_error", code: "generation_failed"),
    };
}
