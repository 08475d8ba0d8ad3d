using System.Buffers;
using System.IO.Pipelines;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using BitNetSharp.Generation;
using BitNetSharp.Generation.Sampling;
using BitNetSharp.Tokenization;
using Microsoft.AspNetCore.Http;

namespace BitNetSharp.Server.Api;

/// <summary>One generated token's log-probabilities, as the response reports them.</summary>
internal readonly record struct TokenLogProbEntry(int Token, float LogProb, TokenLogProb[]? Top, int TextOffset);

/// <summary>The parts every completion response and chunk share.</summary>
internal sealed record ResponseHeader(string Id, long Created, string Model, bool Chat, LogProbFormat LogProbs, BitNetTokenizer? Tokenizer)
{
    public string CompletionObject => Chat ? "chat.completion" : "text_completion";
    public string ChunkObject => Chat ? "chat.completion.chunk" : "text_completion";
}

/// <summary>The OpenAI response shapes, written straight to the response with <see cref="Utf8JsonWriter"/>.</summary>
internal static class OpenAiJson
{
    /// <summary>Non-ASCII text stays readable; this JSON is never embedded in HTML.</summary>
    public static readonly JsonWriterOptions WriterOptions = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>OpenAI reports a log-probability of −∞ as −9999.</summary>
    private static float Finite(float lp) => float.IsFinite(lp) ? lp : -9999f;

    public static string? FinishReason(Generation.FinishReason f) => f switch
    {
        Generation.FinishReason.Stop => "stop",
        Generation.FinishReason.Length => "length",
        _ => null,
    };

    /// <summary>
    /// Writes a JSON answer as <see cref="WriteBodyAsync"/> does: every answer, not only a generation's, can outgrow the
    /// socket's buffers (/tokenize with pieces for a 1 MB text is MBs).
    /// </summary>
    public static async Task WriteJsonAsync(HttpResponse response, int status, Action<Utf8JsonWriter> body, CancellationToken cancellation,
        TimeSpan stallTimeout, Action? stalled)
    {
        response.StatusCode = status;
        response.ContentType = "application/json";
        var buffer = new ArrayBufferWriter<byte>(4096);
        using (var w = new Utf8JsonWriter(buffer, WriterOptions)) body(w);
        await WriteBodyAsync(response, buffer.WrittenMemory, cancellation, stallTimeout, stalled);
    }

    /// <summary>
    /// Writes bytes as the answer's body (status and headers set by the caller) in slices each flushed under a
    /// <see cref="WriteStallWatch"/>. One flush of the whole body was handed to Kestrel at once and returned while the
    /// socket still held MBs back: a client that read none of it kept its connection for hours under Kestrel's minimum
    /// data rate, out of the watch's sight. No Content-Length: the answer stays chunked, so its end reaches the client
    /// only when the request's handler has finished (its activity stopped, its counters updated), as before; with one,
    /// a client could read the whole answer before them, and a test that read the activity at once saw none.
    /// </summary>
    public static async Task WriteBodyAsync(HttpResponse response, ReadOnlyMemory<byte> body, CancellationToken cancellation, TimeSpan stallTimeout, Action? stalled)
    {
        const int Slice = 16 * 1024;
        using var watch = new WriteStallWatch(response.HttpContext, stallTimeout, stalled);
        for (int at = 0; at < body.Length || at == 0; at += Slice)
        {
            response.BodyWriter.Write(body.Span.Slice(at, Math.Min(Slice, body.Length - at)));
            watch.Arm();
            await response.BodyWriter.FlushAsync(cancellation);
            watch.Disarm();
            if (body.Length == 0) break;
        }
    }

    public static void Error(Utf8JsonWriter w, ApiException e)
    {
        w.WriteStartObject();
        w.WriteStartObject("error");
        w.WriteString("message", e.Message);
        w.WriteString("type", e.Type);
        if (e.Param is null) w.WriteNull("param"); else w.WriteString("param", e.Param);
        if (e.Code is null) w.WriteNull("code"); else w.WriteString("code", e.Code);
        w.WriteEndObject();
        w.WriteEndObject();
    }

    public static void Usage(Utf8JsonWriter w, int prompt, int completion)
    {
        w.WriteStartObject("usage");
        w.WriteNumber("prompt_tokens", prompt);
        w.WriteNumber("completion_tokens", completion);
        w.WriteNumber("total_tokens", prompt + completion);
        // OpenAI's breakdowns, always present there (clients written against it read them without a check). This server
        // keeps no prompt cache and has no reasoning, audio or predicted-output tokens: all zero, and true.
        w.WriteStartObject("prompt_tokens_details");
        w.WriteNumber("cached_tokens", 0);
        w.WriteNumber("audio_tokens", 0);
        w.WriteEndObject();
        w.WriteStartObject("completion_tokens_details");
        w.WriteNumber("reasoning_tokens", 0);
        w.WriteNumber("audio_tokens", 0);
        w.WriteNumber("accepted_prediction_tokens", 0);
        w.WriteNumber("rejected_prediction_tokens", 0);
        w.WriteEndObject();
        w.WriteEndObject();
    }

    public static void Start(Utf8JsonWriter w, ResponseHeader h, bool chunk)
    {
        w.WriteStartObject();
        w.WriteString("id", h.Id);
        w.WriteString("object", chunk ? h.ChunkObject : h.CompletionObject);
        w.WriteNumber("created", h.Created);
        w.WriteString("model", h.Model);
        w.WriteNull("system_fingerprint");
    }

    /// <summary>The text a token stands for, for log-probability entries (invalid UTF-8 shows as U+FFFD; "bytes" has the exact bytes).</summary>
    public static string TokenText(BitNetTokenizer? t, int id) =>
        t is null ? id.ToString(System.Globalization.CultureInfo.InvariantCulture) : Encoding.UTF8.GetString(t.TokenBytes(id));

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>
    /// A token's text for the legacy completions log-probabilities, whose top_logprobs are objects keyed by it: a token
    /// that is not whole UTF-8 (a piece of a multi-byte character) is spelled "bytes:\xe6\x97" as OpenAI spells it,
    /// so such tokens no longer all become the one key U+FFFD (JSON clients kept only the last of the duplicates).
    /// </summary>
    public static string LegacyTokenText(BitNetTokenizer? t, int id)
    {
        if (t is null) return id.ToString(System.Globalization.CultureInfo.InvariantCulture);
        var bytes = t.TokenBytes(id);
        try
        {
            return StrictUtf8.GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            var text = new StringBuilder("bytes:", 6 + 4 * bytes.Length);
            foreach (byte b in bytes) text.Append("\\x").Append(b.ToString("x2", System.Globalization.CultureInfo.InvariantCulture));
            return text.ToString();
        }
    }

    /// <summary>The "logprobs" member of a choice: the legacy completions shape or the chat shape, or null.</summary>
    public static void LogProbs(Utf8JsonWriter w, ResponseHeader h, IReadOnlyList<TokenLogProbEntry>? entries)
    {
        if (h.LogProbs == LogProbFormat.None || entries is null)
        {
            w.WriteNull("logprobs");
            return;
        }
        w.WriteStartObject("logprobs");
        if (h.LogProbs == LogProbFormat.Chat)
        {
            w.WriteStartArray("content");
            foreach (var e in entries)
            {
                w.WriteStartObject();
                ChatToken(w, h.Tokenizer, e.Token, e.LogProb);
                w.WriteStartArray("top_logprobs");
                foreach (var t in e.Top ?? [])
                {
                    w.WriteStartObject();
                    ChatToken(w, h.Tokenizer, t.Token, t.LogProb);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteNull("refusal");
        }
        else
        {
            w.WriteStartArray("tokens");
            foreach (var e in entries) w.WriteStringValue(LegacyTokenText(h.Tokenizer, e.Token));
            w.WriteEndArray();
            w.WriteStartArray("token_logprobs");
            foreach (var e in entries) w.WriteNumberValue(Finite(e.LogProb));
            w.WriteEndArray();
            w.WriteStartArray("top_logprobs");
            var keys = new HashSet<string>(StringComparer.Ordinal);
            foreach (var e in entries)
            {
                w.WriteStartObject();
                keys.Clear();
                // Keys are token texts; two tokens with one text (rare once partial UTF-8 is spelled as bytes) keep the first, the likelier.
                foreach (var t in e.Top ?? [])
                    if (keys.Add(LegacyTokenText(h.Tokenizer, t.Token))) w.WriteNumber(LegacyTokenText(h.Tokenizer, t.Token), Finite(t.LogProb));
                // OpenAI's rule: the sampled token is always listed, so there may be logprobs + 1 entries (logprobs: 0 gives just it).
                string chosen = LegacyTokenText(h.Tokenizer, e.Token);
                if (keys.Add(chosen)) w.WriteNumber(chosen, Finite(e.LogProb));
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartArray("text_offset");
            foreach (var e in entries) w.WriteNumberValue(e.TextOffset);
            w.WriteEndArray();
        }
        w.WriteEndObject();
    }

    private static void ChatToken(Utf8JsonWriter w, BitNetTokenizer? t, int id, float logProb)
    {
        w.WriteString("token", TokenText(t, id));
        w.WriteNumber("logprob", Finite(logProb));
        w.WriteStartArray("bytes");
        if (t is not null) foreach (byte b in t.TokenBytes(id)) w.WriteNumberValue(b);
        w.WriteEndArray();
    }
}

/// <summary>
/// Closes a connection whose client has stopped reading: a flush that has waited the timeout with no byte of the answer
/// acknowledged meanwhile (see <see cref="Elapsed"/>) aborts the connection, which cancels what the request still
/// generates (as a client that went away does). Kestrel's minimum data rate lets each write's bytes buy time (240 B/s),
/// so a client that took a few MB into its socket buffers and then stopped held its connection slot, and the answer the
/// engine had run ahead to produce, for hours: three such clients shut out a server with --max-connections 3 past its
/// --timeout. One timer a response, re-armed per flush.
/// </summary>
internal sealed class WriteStallWatch : IDisposable
{
    /// <summary>How long a write may wait on a client that reads nothing unless --write-timeout says (nginx's send_timeout is 60 s).</summary>
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(30);

    /// <summary>The longest timeout a timer takes (2³² − 2 ms, about 49.7 days).</summary>
    public static readonly TimeSpan MaxTimeout = TimeSpan.FromMilliseconds(uint.MaxValue - 1);

    private readonly HttpContext _context;
    private readonly Action? _stalled;
    private readonly TimeSpan _timeout;
    private readonly Timer _timer;
    private readonly System.Net.Sockets.Socket? _socket;
    private readonly Lock _lock = new();
    private bool _armed, _disposed;
    private long _acked;

    /// <param name="stalled">Called (on a timer thread) when the watch closes the connection, before it does.</param>
    public WriteStallWatch(HttpContext context, TimeSpan timeout, Action? stalled = null)
    {
        _context = context;
        _stalled = stalled;
        _timeout = timeout;
        _socket = context.Features.Get<Microsoft.AspNetCore.Connections.Features.IConnectionSocketFeature>()?.Socket;
        _timer = new Timer(static s => ((WriteStallWatch)s!).Elapsed(), this, System.Threading.Timeout.Infinite, System.Threading.Timeout.Infinite);
    }

    /// <summary>Starts the clock for the flush about to be awaited.</summary>
    public void Arm()
    {
        lock (_lock)
        {
            if (_disposed) return;
            _armed = true;
            _acked = Acked();
            _timer.Change(_timeout, System.Threading.Timeout.InfiniteTimeSpan);
        }
    }

    /// <summary>Stops it once the flush completed.</summary>
    public void Disarm()
    {
        lock (_lock)
        {
            _armed = false;
            if (!_disposed) _timer.Change(System.Threading.Timeout.Infinite, System.Threading.Timeout.Infinite);
        }
    }

    /// <summary>
    /// The flush has waited the timeout. A client still reading, only slowly, keeps its connection: one flush waits for
    /// the kernel to free a third of a send buffer that grows to MBs, which a 15 KB/s reader took 40 s to do. Where the
    /// socket says how many bytes the client has acknowledged (Linux's TCP_INFO), any progress since the last look
    /// starts the clock again; a client that took nothing is cut off. Elsewhere the wait alone decides.
    /// </summary>
    private void Elapsed()
    {
        lock (_lock)
        {
            if (!_armed || _disposed) return; // disarmed (the flush completed) as the timer fired
            long acked = Acked();
            if (acked >= 0 && acked != _acked)
            {
                _acked = acked;
                _timer.Change(_timeout, System.Threading.Timeout.InfiniteTimeSpan);
                return;
            }
            _armed = false;
            _stalled?.Invoke();
            _context.Abort(); // under the lock: Dispose waits, so a recycled context is never aborted
        }
    }

    /// <summary>Bytes of the answer the client has acknowledged (tcpi_bytes_acked), or −1 where the socket cannot say.</summary>
    private long Acked()
    {
        if (_socket is null || !OperatingSystem.IsLinux()) return -1;
        try
        {
            Span<byte> info = stackalloc byte[256];
            int n = _socket.GetRawSocketOption(6 /* IPPROTO_TCP */, 11 /* TCP_INFO */, info);
            return n >= 128 ? System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(info[120..]) : -1;
        }
        catch (Exception e) when (e is System.Net.Sockets.SocketException or ObjectDisposedException or PlatformNotSupportedException)
        {
            return -1;
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed) return;
            _disposed = true;
            _timer.Dispose();
        }
    }
}

/// <summary>Server-sent events on a response: <c>data: {json}\n\n</c> per event, flushed at once, and the final <c>data: [DONE]</c>.</summary>
internal sealed class SseWriter(PipeWriter pipe, HttpContext context, TimeSpan stallTimeout, Action? stalled = null) : IDisposable
{
    private readonly Utf8JsonWriter _json = new(pipe, OpenAiJson.WriterOptions);
    private readonly WriteStallWatch _watch = new(context, stallTimeout, stalled);

    public async Task SendAsync(Action<Utf8JsonWriter> body, CancellationToken cancellation)
    {
        pipe.Write("data: "u8);
        _json.Reset(pipe);
        body(_json);
        _json.Flush();
        pipe.Write("\n\n"u8);
        await FlushAsync(cancellation);
    }

    public async Task DoneAsync(CancellationToken cancellation)
    {
        pipe.Write("data: [DONE]\n\n"u8);
        await FlushAsync(cancellation);
    }

    private async ValueTask FlushAsync(CancellationToken cancellation)
    {
        _watch.Arm();
        await pipe.FlushAsync(cancellation);
        _watch.Disarm();
    }

    public void Dispose()
    {
        _json.Dispose();
        _watch.Dispose();
    }
}
