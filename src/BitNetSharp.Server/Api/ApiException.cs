namespace BitNetSharp.Server.Api;

/// <summary>
/// A request the server refuses, with everything the OpenAI error body carries:
/// <c>{"error":{"message","type","param","code"}}</c> and the HTTP status.
/// </summary>
internal sealed class ApiException(int status, string message, string type, string? param = null, string? code = null) : Exception(message)
{
    public int Status { get; } = status;
    public string Type { get; } = type;
    public string? Param { get; } = param;
    public string? Code { get; } = code;

    /// <summary>Seconds a client should wait before retrying (429 and 503), written as Retry-After.</summary>
    public int? RetryAfterSeconds { get; init; }

    /// <summary>
    /// Written as <c>x-should-retry: true|false</c>, the header the official OpenAI clients obey before their own rule
    /// (the Python and Node SDKs; they retry every 5xx, 408, 409 and 429 twice by default). False on errors that a retry
    /// would only repeat: a model that failed to load, weights giving non-finite logits, a request that timed out while it
    /// ran (three runs of up to the whole timeout each). Null: no header, the client's own rule.
    /// </summary>
    public bool? ShouldRetry { get; init; }

    /// <summary>The methods a 405's path does take, written as Allow (RFC 9110 requires it on a 405).</summary>
    public string? Allow { get; init; }

    public static ApiException BadRequest(string message, string? param = null, string? code = null) =>
        new(400, message, "invalid_request_error", param, code);
}
