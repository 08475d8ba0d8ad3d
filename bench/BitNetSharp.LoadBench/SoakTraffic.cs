using System.Globalization;
using System.Text;
using System.Text.Json;

namespace BitNetSharp.LoadBench;

/// <summary>The kinds of request a soak sends; the first four are valid generations, the last two must each get a 4xx.</summary>
internal enum SoakKind { Completion, CompletionStream, Chat, ChatStream, Disconnect, Malformed, Oversized }

/// <summary>A request that must be refused with a 4xx: its name (for the report), method, path and raw body (null: none).</summary>
internal sealed record BadRequest(string Name, SoakKind Kind, HttpMethod Method, string Path, byte[]? Body);

/// <summary>
/// The soak's traffic: how often each <see cref="SoakKind"/> is sent (<see cref="Parse"/> reads
/// <c>completion=30,chat_stream=15,…</c>), the prompts of the valid requests, and the malformed and oversized
/// requests, built once the model's context length is known.
/// </summary>
internal sealed class SoakMix
{
    public static readonly string[] Names = ["completion", "completion_stream", "chat", "chat_stream", "disconnect", "malformed", "oversized"];

    /// <summary>Weights: valid generations dominate (saturation); every other kind shows up several times a minute.</summary>
    public const string Default = "completion=25,completion_stream=25,chat=10,chat_stream=15,disconnect=9,malformed=10,oversized=6";

    private readonly double[] _weights;

    private SoakMix(double[] weights) => _weights = weights;

    public double Weight(SoakKind kind) => _weights[(int)kind];

    public static SoakMix Parse(string spec)
    {
        var weights = new double[Names.Length];
        foreach (var part in spec.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var kv = part.Split('=');
            int index = Array.IndexOf(Names, kv[0]);
            if (kv.Length != 2 || index < 0)
                throw new ArgumentException($"--mix: '{part}' is not KIND=WEIGHT with KIND one of {string.Join(", ", Names)}.");
            if (!double.TryParse(kv[1], NumberStyles.Float, CultureInfo.InvariantCulture, out double w) || !(w >= 0) || double.IsInfinity(w))
                throw new ArgumentException($"--mix: the weight of {kv[0]} must be a number ≥ 0; got '{kv[1]}'.");
            weights[index] = w;
        }
        if (weights.Sum() <= 0) throw new ArgumentException("--mix: at least one weight must be positive.");
        if (weights[..4].Sum() <= 0) throw new ArgumentException("--mix: give at least one valid generation kind (completion, completion_stream, chat, chat_stream) a positive weight.");
        return new SoakMix(weights);
    }

    public SoakKind Pick(Random rng)
    {
        double x = rng.NextDouble() * _weights.Sum();
        for (int i = 0; i < _weights.Length; i++)
        {
            if (x < _weights[i]) return (SoakKind)i;
            x -= _weights[i];
        }
        return SoakKind.Completion;
    }

    public override string ToString() => string.Join(",", Names.Select((n, i) => string.Create(CultureInfo.InvariantCulture, $"{n}={_weights[i]:0.##}")));

    /// <summary>Short prompts of different lengths, so prefill varies; every one fits the smallest context with room to answer.</summary>
    public static readonly string[] Prompts =
    [
        "Once upon a time",
        "The little dog",
        "Lily wanted to play in the park with her friends, but it was raining.",
        "Tom and Sam found a big red ball under the tree. They",
    ];

    /// <summary>
    /// Requests a server must refuse with a 4xx: broken or mistyped JSON, invalid UTF-8, out-of-range values,
    /// refused fields, wrong routes and methods (<see cref="SoakKind.Malformed"/>); prompts over the context and a
    /// body over the size limit (<see cref="SoakKind.Oversized"/>).
    /// </summary>
    public static List<BadRequest> BadRequests(int contextLength, long bodyLimit)
    {
        var post = HttpMethod.Post;
        const string completions = "v1/completions", chat = "v1/chat/completions";
        static byte[] Utf8(string s) => Encoding.UTF8.GetBytes(s);
        static byte[] Json(object o) => JsonSerializer.SerializeToUtf8Bytes(o);
        var m = SoakKind.Malformed;
        var list = new List<BadRequest>
        {
            new("truncated_json", m, post, completions, Utf8("{\"prompt\": \"Once upon a time\", \"max_tokens\": ")),
            new("not_json", m, post, completions, Utf8("prompt=Once upon a time&max_tokens=8")),
            new("empty_body", m, post, completions, []),
            new("array_body", m, post, completions, Utf8("[{\"prompt\": \"Once upon a time\"}]")),
            new("prompt_wrong_type", m, post, completions, Utf8("{\"prompt\": {\"text\": \"Once\"}, \"max_tokens\": 8}")),
            new("max_tokens_wrong_type", m, post, completions, Utf8("{\"prompt\": \"Once\", \"max_tokens\": \"ten\"}")),
            new("max_tokens_negative", m, post, completions, Utf8("{\"prompt\": \"Once\", \"max_tokens\": -5}")),
            new("max_tokens_over_limit", m, post, completions, Utf8("{\"prompt\": \"Once\", \"max_tokens\": 1000000000}")),
            new("max_tokens_not_finite", m, post, completions, Utf8("{\"prompt\": \"Once\", \"max_tokens\": 1e400}")),
            new("temperature_out_of_range", m, post, completions, Utf8("{\"prompt\": \"Once\", \"max_tokens\": 4, \"temperature\": -1}")),
            new("stream_wrong_type", m, post, completions, Utf8("{\"prompt\": \"Once\", \"max_tokens\": 4, \"stream\": \"yes\"}")),
            new("n_too_large", m, post, completions, Utf8("{\"prompt\": \"Once\", \"max_tokens\": 4, \"n\": 100000}")),
            new("invalid_utf8", m, post, completions, [.. Utf8("{\"prompt\": \"caf"), 0xE9, 0xFF, .. Utf8(" au lait\", \"max_tokens\": 4}")]),
            new("missing_prompt", m, post, completions, Utf8("{\"max_tokens\": 4}")),
            new("token_id_out_of_vocabulary", m, post, completions, Utf8("{\"prompt\": [1, 2, 2147483647], \"max_tokens\": 4}")),
            new("unknown_model", m, post, completions, Utf8("{\"model\": \"no-such-model\", \"prompt\": \"Once\", \"max_tokens\": 4}")),
            new("refused_field_echo", m, post, completions, Utf8("{\"prompt\": \"Once\", \"max_tokens\": 4, \"echo\": true}")),
            new("deep_nesting", m, post, completions, Utf8("{\"prompt\": " + new string('[', 200) + "1" + new string(']', 200) + "}")),
            new("chat_messages_wrong_type", m, post, chat, Utf8("{\"messages\": \"hello\", \"max_tokens\": 4}")),
            new("chat_bad_role", m, post, chat, Utf8("{\"messages\": [{\"role\": \"wizard\", \"content\": \"hi\"}], \"max_tokens\": 4}")),
            new("chat_missing_messages", m, post, chat, Utf8("{\"max_tokens\": 4}")),
            new("chat_refused_field_tools", m, post, chat, Utf8("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 4, \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}]}")),
            new("wrong_method", m, HttpMethod.Get, completions, null),
            new("no_such_route", m, post, "v1/embeddings", Utf8("{\"input\": \"Once\"}")),
        };

        // Over the context: as text (several tokens a word), as token ids, prompt + max_tokens, a chat conversation; and a body over the limit.
        var o = SoakKind.Oversized;
        string words = string.Concat(Enumerable.Repeat("once upon a time there was ", contextLength));
        var ids = Enumerable.Range(0, contextLength + 1).Select(i => 1 + i % 200).ToArray();
        list.Add(new("prompt_text_over_context", o, post, completions, Json(new { prompt = words, max_tokens = 4 })));
        list.Add(new("prompt_ids_over_context", o, post, completions, Json(new { prompt = ids, max_tokens = 4 })));
        list.Add(new("prompt_plus_max_tokens_over_context", o, post, completions, Json(new { prompt = ids[..Math.Max(1, contextLength - 2)], max_tokens = 64 })));
        list.Add(new("chat_over_context", o, post, chat, Json(new { messages = new[] { new { role = "user", content = words } }, max_tokens = 4 })));
        // A syntactically valid body just over the limit (a prompt of 'a's), so only its size is wrong.
        long size = bodyLimit + 4096;
        var prefix = Utf8("{\"max_tokens\": 4, \"prompt\": \"");
        var suffix = Utf8("\"}");
        var body = new byte[size];
        prefix.CopyTo(body, 0);
        body.AsSpan(prefix.Length, (int)size - prefix.Length - suffix.Length).Fill((byte)'a');
        suffix.CopyTo(body, size - suffix.Length);
        list.Add(new("body_over_limit", o, post, completions, body));
        return list;
    }
}
