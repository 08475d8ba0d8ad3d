using System.Buffers;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using System.Text.Unicode;
using Microsoft.AspNetCore.Http;

namespace BitNetSharp.Server.Api;

/// <summary>
/// Typed access to the fields of a JSON request body. Every accessor treats a missing field and JSON null alike
/// (absent) and turns a value of the wrong type or range into a 400 that names the field — so a client learns
/// which field to fix, not where a deserializer gave up.
/// </summary>
internal readonly struct JsonRequest(JsonElement root, string prefix = "")
{
    public JsonElement Root => root;

    /// <summary>Reads the body as one JSON object, with the server's size limit applied by Kestrel.</summary>
    public static async Task<(JsonDocument Document, JsonRequest Request)> ReadAsync(HttpRequest request, CancellationToken cancellation)
    {
        JsonDocument doc;
        var sizeFeature = request.HttpContext.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpMaxRequestBodySizeFeature>();
        long? limit = sizeFeature?.MaxRequestBodySize;
        var body = request.Body;
        // Kestrel counts a chunked body's framing against the limit: 200 KB sent in 1-byte chunks got 413 "larger than
        // 1048576 bytes". The body is what is limited: Kestrel's bound is raised past any framing of a body that size
        // (1-byte chunks take 6 bytes a byte), and the decoded bytes are counted here.
        if (limit is { } max && request.ContentLength is null && sizeFeature is { IsReadOnly: false })
        {
            sizeFeature.MaxRequestBodySize = max * 8 + (64 << 10);
            body = new DecodedLengthLimit(body, max);
        }
        try
        {
            doc = await JsonDocument.ParseAsync(body, new JsonDocumentOptions { MaxDepth = 32 }, cancellation);
        }
        catch (JsonException e)
        {
            throw ApiException.BadRequest($"The request body is not valid JSON: {e.Message}", code: "invalid_json");
        }
        catch (Exception e) when (e is BadHttpRequestException { StatusCode: StatusCodes.Status413PayloadTooLarge } or BodyTooLargeException)
        {
            throw new ApiException(413, $"The request body is larger than this server accepts ({limit} bytes).",
                "invalid_request_error", code: "request_too_large");
        }
        if (doc.RootElement.ValueKind != JsonValueKind.Object)
        {
            var kind = Describe(doc.RootElement);
            doc.Dispose();
            throw ApiException.BadRequest($"The request body must be a JSON object; got {kind}.", code: "invalid_json");
        }
        // The parser checks JSON structure, not the UTF-8 inside strings and names: a Latin-1 "é" would surface later
        // as an InvalidOperationException (a 500) wherever a field is read. One vectorized pass over the raw bytes here.
        var raw = JsonMarshal.GetRawUtf8Value(doc.RootElement);
        if (!Utf8.IsValid(raw))
        {
            string where = DescribeInvalidUtf8(raw);
            doc.Dispose();
            throw ApiException.BadRequest($"The request body is not valid UTF-8: {where}. JSON must be sent encoded as UTF-8.", code: "invalid_utf8");
        }
        // Likewise a \uD800 escape without its other half is valid JSON but no text: GetString() throws
        // InvalidOperationException wherever such a field is read. Only bodies with such an escape are walked.
        if (BitNetSharp.Formats.JsonText.MayHoldLoneSurrogate(raw) && BitNetSharp.Formats.JsonText.FindLoneSurrogate(doc.RootElement) is { } at)
        {
            doc.Dispose();
            bool field = at.Length > 0 && !at.StartsWith("a property name", StringComparison.Ordinal);
            throw ApiException.BadRequest($"{(at.Length == 0 ? "The body" : at)} holds a \\u escape of half a UTF-16 surrogate pair (\\uD800-\\uDFFF without its partner), which is no text.",
                field ? at : null, "invalid_unicode");
        }
        return (doc, new JsonRequest(doc.RootElement));
    }

    private static string DescribeInvalidUtf8(ReadOnlySpan<byte> utf8)
    {
        int at = 0;
        while (at < utf8.Length && Rune.DecodeFromUtf8(utf8[at..], out _, out int consumed) == OperationStatus.Done) at += consumed;
        if (at >= utf8.Length) return "an invalid byte sequence";
        string before = Encoding.UTF8.GetString(utf8[Math.Max(0, at - 24)..at]).TrimStart('\uFFFD');
        var bytes = new StringBuilder();
        for (int i = at; i < Math.Min(utf8.Length, at + 4); i++) bytes.Append(bytes.Length == 0 ? "" : " ").Append(CultureInfo.InvariantCulture, $"0x{utf8[i]:X2}");
        return $"bytes {bytes} after \"{before}\" (byte {at} of the JSON object)";
    }

    private sealed class BodyTooLargeException : Exception;

    /// <summary>A request body read through, failing once more than <paramref name="max"/> bytes have come.</summary>
    private sealed class DecodedLengthLimit(Stream inner, long max) : Stream
    {
        private long _read;

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => _read; set => throw new NotSupportedException(); }

        private int Count(int n)
        {
            _read += n;
            if (_read > max) throw new BodyTooLargeException();
            return n;
        }

        public override int Read(byte[] buffer, int offset, int count) => Count(inner.Read(buffer, offset, count));

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
            Count(await inner.ReadAsync(buffer, cancellationToken));

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }

    /// <summary>The field's full path in the request ("messages[1].role"), as errors name it (and OpenAI's do).</summary>
    private string Path(string name) => prefix + name;

    /// <summary>A value as the request wrote it, cut at 40 characters: a 5,000-digit max_tokens came back whole in the error.</summary>
    private static string Shown(JsonElement v)
    {
        string raw = v.GetRawText();
        return raw.Length <= 40 ? raw : string.Concat(raw.AsSpan(0, 40), string.Create(CultureInfo.InvariantCulture, $"… ({raw.Length:N0} characters)"));
    }

    public bool TryGet(string name, out JsonElement value)
    {
        if (root.TryGetProperty(name, out value) && value.ValueKind != JsonValueKind.Null) return true;
        value = default;
        return false;
    }

    public bool Has(string name) => TryGet(name, out _);

    /// <summary>Whether the field is written as null (<see cref="TryGet"/> reads that as absent).</summary>
    public bool IsNull(string name) => root.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.Null;

    public string? String(string name)
    {
        if (!TryGet(name, out var v)) return null;
        return v.ValueKind == JsonValueKind.String ? v.GetString() : throw WrongType(Path(name), "a string", v);
    }

    public bool? Bool(string name)
    {
        if (!TryGet(name, out var v)) return null;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw WrongType(Path(name), "true or false", v),
        };
    }

    public long? Integer(string name, long min, long max)
    {
        if (!TryGet(name, out var v)) return null;
        if (v.ValueKind != JsonValueKind.Number) throw WrongType(Path(name), "an integer", v);
        if (!v.TryGetInt64(out long n))
        {
            bool finite = v.TryGetDouble(out double d) && double.IsFinite(d);
            // 2.0 is an integer too, as JSON writers of some languages send it.
            if (finite && d == Math.Floor(d) && Math.Abs(d) < 1e15) n = (long)d;
            // A fraction is not an integer; a whole number past 64 bits (1e20, 2^63, 1e400) is out of range, not of
            // another type ("must be an integer; got a number" said nothing a client could act on).
            else if (finite && d != Math.Floor(d))
                throw ApiException.BadRequest($"{Path(name)} must be an integer; got {Shown(v)}.", Path(name), "invalid_type");
            else throw OutOfRange(name, min, max, Shown(v));
        }
        if (n < min || n > max) throw OutOfRange(name, min, max, n.ToString(CultureInfo.InvariantCulture));
        return n;
    }

    /// <summary>
    /// A seed: any 64-bit integer, signed or not (−2^63 to 2^64 − 1), as the bits of the sampler's unsigned seed. A seed
    /// of 2^63 or more (what `--seed` and the library take) was refused as "an integer; got a number".
    /// </summary>
    public ulong? Seed(string name)
    {
        if (!TryGet(name, out var v)) return null;
        if (v.ValueKind == JsonValueKind.Number)
        {
            if (v.TryGetInt64(out long signed)) return unchecked((ulong)signed);
            if (v.TryGetUInt64(out ulong unsigned)) return unsigned;
            if (v.TryGetDouble(out double d) && d == Math.Floor(d) && Math.Abs(d) < 1e15) return unchecked((ulong)(long)d);
            throw ApiException.BadRequest($"{Path(name)} must be an integer from {long.MinValue} to {ulong.MaxValue} written in digits; got {Shown(v)}.", Path(name), "invalid_value");
        }
        throw WrongType(Path(name), "an integer", v);
    }

    public float? Number(string name, double min, double max)
    {
        if (!TryGet(name, out var v)) return null;
        if (v.ValueKind != JsonValueKind.Number) throw WrongType(Path(name), "a number", v);
        // A number past double's range (1e400) is a number out of range, not "a number; got a number".
        if (!v.TryGetDouble(out double d) || !(d >= min && d <= max)) throw OutOfRange(name, min, max, Shown(v));
        return (float)d;
    }

    private ApiException OutOfRange(string name, double min, double max, string got) =>
        ApiException.BadRequest(string.Create(CultureInfo.InvariantCulture, $"{Path(name)} must be between {min} and {max}; got {got}."), Path(name), "invalid_value");

    public static ApiException WrongType(string name, string expected, JsonElement v) =>
        ApiException.BadRequest($"{name} must be {expected}; got {Describe(v)}.", name, "invalid_type");

    public static string Describe(JsonElement v) => v.ValueKind switch
    {
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Array => "an array",
        JsonValueKind.Object => "an object",
        _ => "null",
    };
}
