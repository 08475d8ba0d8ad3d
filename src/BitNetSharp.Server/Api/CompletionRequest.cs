using System.Text.Json;
using BitNetSharp.Generation.Sampling;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Server.Api;

/// <summary>How the response reports log-probabilities: not at all, in the legacy completions shape, or in the chat shape.</summary>
internal enum LogProbFormat { None, Completion, Chat }

/// <summary>
/// A validated /v1/completions or /v1/chat/completions request, tokenized and ready for the scheduler. Parsing
/// checks everything a client can get wrong before anything is queued, each failure a 4xx naming the field.
/// </summary>
internal sealed record CompletionRequest(
    bool Chat,
    bool Stream,
    bool IncludeUsage,
    IReadOnlyList<int[]> Prompts,
    int Choices,
    int MaxTokens,
    SamplingParameters Sampling,
    IReadOnlyList<string>? Stop,
    bool IgnoreEos,
    LogProbFormat LogProbs,
    bool? Speculate = null,
    IReadOnlyList<int>? StopTokens = null)
{
    /// <summary>The message roles taken: "developer" is read as "system", and the deprecated "function" (a function's
    /// result, which older LangChain and AutoGen histories still replay) as "tool".</summary>
    private static readonly HashSet<string> Roles = ["system", "developer", "user", "assistant", "tool", "function"];

    public static CompletionRequest Parse(JsonRequest r, bool chat, ServedModel model, ServerOptions options)
    {
        CheckModel(r, model);
        bool stream = r.Bool("stream") ?? false;
        bool includeUsage = false;
        if (r.TryGet("stream_options", out var so))
        {
            if (so.ValueKind != JsonValueKind.Object) throw JsonRequest.WrongType("stream_options", "an object", so);
            includeUsage = new JsonRequest(so, "stream_options.").Bool("include_usage") ?? false;
            if (!stream) throw ApiException.BadRequest("stream_options is only allowed when stream is true.", "stream_options", "invalid_value");
        }
        Unsupported(r, chat, options);
        r.String("user"); // accepted for OpenAI compatibility (an end-user id); only its type is checked

        int[][] prompts = chat ? [ChatPrompt(r, model)] : CompletionPrompts(r, model, options);
        int longest = prompts.Max(p => p.Length);
        int ctx = model.ContextLength;
        if (longest >= ctx)
            throw ApiException.BadRequest(
                $"This model's maximum context length is {ctx} tokens, but {(chat ? "the messages are" : prompts.Length > 1 ? "the longest prompt is" : "the prompt is")} {longest} tokens long; shorten {(chat ? "them" : "it")} to leave room for the answer.",
                chat ? "messages" : "prompt", "context_length_exceeded");

        int n = (int)(r.Integer("n", 1, options.MaxChoices) ?? 1);
        // Both are read (each checked), so a bad max_tokens is not hidden by a max_completion_tokens beside it; the newer one wins.
        long? legacyMax = r.Integer("max_tokens", 1, options.MaxTokensLimit);
        long? requested = r.Integer("max_completion_tokens", 1, options.MaxTokensLimit) ?? legacyMax;
        int maxTokens;
        if (requested is { } m)
        {
            if (longest + m > ctx)
                throw ApiException.BadRequest(
                    $"This model's maximum context length is {ctx} tokens; you asked for {longest + m} ({longest} in the {(chat ? "messages" : "prompt")}, {m} for the completion). Lower max_tokens or shorten the input.",
                    r.Has("max_completion_tokens") ? "max_completion_tokens" : "max_tokens", "context_length_exceeded");
            maxTokens = (int)m;
        }
        else
        {
            // OpenAI's defaults: 16 for legacy completions, as much as fits for chat (capped by the server's limit).
            maxTokens = Math.Min(chat ? options.MaxTokensLimit : Math.Min(16, options.MaxTokensLimit), ctx - longest);
        }

        // On both endpoints (on /v1/completions a JSON format was ignored and free text came back as a success).
        if (r.TryGet("response_format", out var rf) && !(rf.ValueKind == JsonValueKind.Object && rf.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String && t.GetString() == "text"))
            throw ApiException.BadRequest("Only response_format {\"type\": \"text\"} is supported.", "response_format", "unsupported_parameter");
        var logProbs = LogProbFormat.None;
        int? topLogProbs = null;
        if (chat)
        {
            bool want = r.Bool("logprobs") ?? false;
            long? top = r.Integer("top_logprobs", 0, options.MaxLogProbs);
            if (top is not null && !want) throw ApiException.BadRequest("top_logprobs needs logprobs: true.", "top_logprobs", "invalid_value");
            if (want) (logProbs, topLogProbs) = (LogProbFormat.Chat, (int)(top ?? 0));
        }
        else if (r.Integer("logprobs", 0, options.MaxLogProbs) is { } lp)
        {
            (logProbs, topLogProbs) = (LogProbFormat.Completion, (int)lp);
        }

        var sampling = ParseSampling(r, model) with { LogProbs = topLogProbs };
        // Speculative decoding (serve --speculate): false turns it off for this request; true asks for it.
        bool? speculate = r.Bool("speculate");
        if (speculate == true && options.Scheduler.Speculation is null)
            throw ApiException.BadRequest("speculate: true needs a server started with --speculate ngram.", "speculate");
        bool ignoreEos = r.Bool("ignore_eos") ?? false;
        IReadOnlyList<string>? stops = ParseStop(r);
        // Without a tokenizer no text is decoded, so a stop string could never match: refuse it, as text prompts are.
        if (stops is { Count: > 0 } && model.Tokenizer is null) RequireTokenizer(model, "stop");
        // A chat answer also ends at the template's turn markers that this vocabulary spells as text (ChatML on a
        // vocabulary without <|im_start|>): no stop token would end it, and it would run on into a made-up next turn.
        // ignore_eos, which ignores the stop tokens, ignores these too.
        if (chat && !ignoreEos && model.Tokenizer is { } tk && model.Template is { } tpl && tpl.TextStops(tk) is { Count: > 0 } markers)
            stops = [.. (stops ?? []).Concat(markers).Distinct(StringComparer.Ordinal)];
        // ... and at the markers that are tokens but not stop tokens (a turn opener such as <|im_start|>).
        IReadOnlyList<int>? stopTokens = chat && !ignoreEos && model.Tokenizer is { } tk2 && model.Template is { } tpl2 && tpl2.StopTokens(tk2) is { Count: > 0 } ids ? ids : null;
        return new CompletionRequest(chat, stream, includeUsage, prompts, n, maxTokens, sampling, stops, ignoreEos, logProbs, speculate, stopTokens);
    }

    public static void CheckModel(JsonRequest r, ServedModel model)
    {
        var name = r.String("model");
        if (name is not null && !string.Equals(name, model.Id, StringComparison.Ordinal))
            throw new ApiException(404, $"The model '{name}' does not exist; this server serves '{model.Id}' (see GET /v1/models).", "invalid_request_error", "model", "model_not_found");
    }

    /// <summary>Options we do not implement are refused rather than silently ignored when they would change the answer.</summary>
    private static void Unsupported(JsonRequest r, bool chat, ServerOptions options)
    {
        if (chat)
        {
            // Not an array is the wrong type (an object or a string passed as if none were asked for).
            if (r.TryGet("tools", out var tools) && tools.ValueKind != JsonValueKind.Array) throw JsonRequest.WrongType("tools", "an array of tools", tools);
            // With tool_choice "none" the answer is text whatever the tools are (agent frameworks send the list every turn
            // and force a text turn so): accepted, the tools not shown to the model. Otherwise a call may be asked for.
            bool noToolCall = r.TryGet("tool_choice", out var choice) && choice.ValueKind == JsonValueKind.String && choice.GetString() == "none";
            if (r.TryGet("tools", out tools) && tools.GetArrayLength() > 0 && !noToolCall)
                throw ApiException.BadRequest("Tools (function calling) are not supported by this server (with tool_choice \"none\" the tools are accepted and not used).", "tools", "unsupported_parameter");
            // The deprecated spelling of the same (still sent by older clients).
            if (r.TryGet("functions", out var functions) && functions.ValueKind != JsonValueKind.Array) throw JsonRequest.WrongType("functions", "an array of functions", functions);
            bool noFunctionCall = r.TryGet("function_call", out var fcNone) && fcNone.ValueKind == JsonValueKind.String && fcNone.GetString() == "none";
            if (r.TryGet("functions", out functions) && functions.GetArrayLength() > 0 && !noFunctionCall)
                throw ApiException.BadRequest("Functions (function calling) are not supported by this server.", "functions", "unsupported_parameter");
            // tool_choice "required" or naming a function demands a call this server never makes (it was answered with text).
            if (r.TryGet("tool_choice", out var tc) && !(tc.ValueKind == JsonValueKind.String && tc.GetString() is "none" or "auto"))
                throw ApiException.BadRequest("tool_choice other than \"none\" or \"auto\" asks for a tool call, which this server does not support.", "tool_choice", "unsupported_parameter");
            if (r.TryGet("function_call", out var fc) && !(fc.ValueKind == JsonValueKind.String && fc.GetString() is "none" or "auto") && fc.ValueKind != JsonValueKind.Null)
                throw ApiException.BadRequest("function_call other than \"none\" or \"auto\" asks for a function call, which this server does not support.", "function_call", "unsupported_parameter");
            // Audio output and web search change what the answer is; an answer without them looked like success.
            if (r.TryGet("modalities", out var modalities) && (modalities.ValueKind != JsonValueKind.Array
                || modalities.EnumerateArray().Any(m => m.ValueKind != JsonValueKind.String || m.GetString() != "text")))
                throw ApiException.BadRequest("Only the \"text\" modality is supported by this server.", "modalities", "unsupported_parameter");
            if (r.TryGet("audio", out _)) throw ApiException.BadRequest("Audio output is not supported by this server.", "audio", "unsupported_parameter");
            if (r.TryGet("web_search_options", out _)) throw ApiException.BadRequest("Web search is not supported by this server.", "web_search_options", "unsupported_parameter");
        }
        else
        {
            // The chat endpoint's spelling: accepted and ignored here, the answer carried no alternatives a client asked for.
            if (r.TryGet("top_logprobs", out _))
                throw ApiException.BadRequest("top_logprobs is /v1/chat/completions' parameter; here logprobs: N asks for the N most likely tokens at each position.", "top_logprobs", "unsupported_parameter");
            if (r.Bool("echo") == true) throw ApiException.BadRequest("echo is not supported by this server.", "echo", "unsupported_parameter");
            if (r.String("suffix") is { Length: > 0 }) throw ApiException.BadRequest("suffix (insertion) is not supported by this server.", "suffix", "unsupported_parameter");
            // n is checked against the server's own limit (a bad n beside best_of was held to a range of 1 to 128).
            if (r.Integer("best_of", 1, 128) is { } bestOf && bestOf != (r.Integer("n", 1, options.MaxChoices) ?? 1))
                throw ApiException.BadRequest("best_of other than n is not supported by this server.", "best_of", "unsupported_parameter");
        }
    }

    private static int[] ChatPrompt(JsonRequest r, ServedModel model)
    {
        if (!r.TryGet("messages", out var messages)) throw ApiException.BadRequest("messages is required: the conversation so far, e.g. [{\"role\": \"user\", \"content\": \"Hello\"}].", "messages", "missing_required_parameter");
        if (messages.ValueKind != JsonValueKind.Array) throw JsonRequest.WrongType("messages", "an array of messages", messages);
        if (messages.GetArrayLength() == 0) throw ApiException.BadRequest("messages is empty; give at least one message.", "messages", "empty_array");
        var (tokenizer, template) = (RequireTokenizer(model, "messages"), model.Template!);
        var list = new List<ChatMessage>();
        int i = 0;
        foreach (var m in messages.EnumerateArray())
        {
            string p = $"messages[{i}]";
            if (m.ValueKind != JsonValueKind.Object) throw JsonRequest.WrongType(p, "an object with role and content", m);
            var mr = new JsonRequest(m, p + ".");
            var role = mr.String("role") ?? throw ApiException.BadRequest($"{p}.role is required.", $"{p}.role", "missing_required_parameter");
            if (!Roles.Contains(role)) throw ApiException.BadRequest($"{p}.role '{role}' is not one of: {string.Join(", ", Roles)}.", $"{p}.role", "invalid_value");
            _ = mr.String("name"); // a participant's name, which the templates do not show: checked to be a string as OpenAI checks it
            list.Add(new ChatMessage(role switch { "developer" => "system", "function" => "tool", _ => role }, Content(mr, p, role)));
            i++;
        }
        // Checked on the rendered prompt: templates trim contents and drop some roles (a check of the raw contents refused
        // "Once upon a time" followed by 6,000 blank lines, 34 tokens once the bitnet template stripped it; review).
        long total = 0;
        foreach (var m in list) total += m.Content.Length;
        if (total > PrefixChars(model)) RefuseFarPastContext(template.Render(list, addGenerationPrompt: true), tokenizer, model, chat: true);
        return template.Encode(tokenizer, list, addGenerationPrompt: true);
    }

    /// <summary>How much of a long prompt <see cref="RefuseFarPastContext"/> tokenizes: 16 characters per token of the
    /// context (and 64 more), past what a real text takes per token (~4).</summary>
    private static long PrefixChars(ServedModel model) => 16L * (model.ContextLength + 64);

    /// <summary>
    /// A prompt whose first <see cref="PrefixChars"/> characters alone are more tokens than the context holds is refused
    /// from them, before the whole of it is tokenized: a body of 1 MB (the default limit) of "x x x …" took ~30 MB while
    /// it was split and merged into 512K tokens, only to be refused for them; eight at once ran a server limited to
    /// 192 MiB (deploy/kubernetes) out of memory (HTTP 500, OutOfMemoryException in the pre-tokenizer). The prefix's
    /// count is within a few tokens of what the whole text has up to there (only the unit cut at the end differs), so
    /// the check allows 16 more.
    /// </summary>
    private static void RefuseFarPastContext(string text, BitNetTokenizer tokenizer, ServedModel model, bool chat)
    {
        long limit = PrefixChars(model);
        if (text.Length <= limit) return;
        int cut = (int)limit;
        if (char.IsHighSurrogate(text[cut - 1])) cut--;
        int tokens = tokenizer.Encode(text[..cut], addBos: false, parseSpecial: true).Length;
        int ctx = model.ContextLength;
        if (tokens > ctx + 16)
            throw ApiException.BadRequest(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"This model's maximum context length is {ctx} tokens, but the first {cut:N0} characters of the {(chat ? "messages" : "prompt")} ({text.Length:N0} in all) are already {tokens} tokens; shorten {(chat ? "them" : "it")} to leave room for the answer."),
                chat ? "messages" : "prompt", "context_length_exceeded");
    }

    /// <summary>
    /// A message's content: a string, or an array of {"type": "text", "text": ...} parts joined (an assistant's
    /// {"type": "refusal", "refusal": ...} parts too, as OpenAI returns them). Only an assistant message may leave it
    /// out or null (OpenAI's rule: one that made tool calls has none), and a "function" message (its content is optional
    /// in OpenAI's schema); for any other role that is a 400.
    /// </summary>
    private static string Content(JsonRequest m, string p, string role)
    {
        if (!m.TryGet("content", out var c))
            return role is "assistant" or "function" ? ""
                // Sent as null, it was told "is required", though it was there.
                : m.IsNull("content") ? throw ApiException.BadRequest($"{p}.content is null; a {role} message needs a string or an array of text parts (only an assistant's may be null).", $"{p}.content", "invalid_type")
                : throw ApiException.BadRequest($"{p}.content is required for a {role} message: a string or an array of text parts.", $"{p}.content", "missing_required_parameter");
        if (c.ValueKind == JsonValueKind.String) return c.GetString()!;
        if (c.ValueKind != JsonValueKind.Array) throw JsonRequest.WrongType($"{p}.content", "a string or an array of text parts", c);
        // OpenAI's schema gives a parts array at least one item; [] rendered an empty message and answered 200.
        if (c.GetArrayLength() == 0)
            throw ApiException.BadRequest($"{p}.content is an empty array; give a string or at least one text part.", $"{p}.content", "empty_array");
        // Parts joined by a newline, as vLLM and llama-server join them (glued together, "Hel" and "lo" read "Hello").
        var text = new System.Text.StringBuilder();
        int k = 0;
        foreach (var part in c.EnumerateArray())
        {
            string pp = $"{p}.content[{k++}]";
            if (k > 1) text.Append('\n');
            if (part.ValueKind != JsonValueKind.Object) throw JsonRequest.WrongType(pp, "an object", part);
            var pr = new JsonRequest(part, pp + ".");
            var type = pr.String("type") ?? throw ApiException.BadRequest($"{pp}.type is required: \"text\" for a text part.", $"{pp}.type", "missing_required_parameter");
            if (type == "refusal" && role == "assistant")
            {
                text.Append(pr.String("refusal") ?? throw ApiException.BadRequest($"{pp}.refusal is required.", $"{pp}.refusal", "missing_required_parameter"));
                continue;
            }
            if (type != "text") throw ApiException.BadRequest($"{pp}.type '{type}' is not supported; this model reads text parts only.", $"{pp}.type", "unsupported_content");
            text.Append(pr.String("text") ?? throw ApiException.BadRequest($"{pp}.text is required.", $"{pp}.text", "missing_required_parameter"));
        }
        return text.ToString();
    }

    /// <summary>prompt: a string, an array of strings, an array of token ids, or an array of token-id arrays.</summary>
    private static int[][] CompletionPrompts(JsonRequest r, ServedModel model, ServerOptions options)
    {
        if (!r.TryGet("prompt", out var prompt)) throw ApiException.BadRequest("prompt is required: a string, an array of strings, token ids, or an array of token-id arrays.", "prompt", "missing_required_parameter");
        if (prompt.ValueKind == JsonValueKind.String) return [EncodeText(prompt.GetString()!, model)];
        if (prompt.ValueKind != JsonValueKind.Array) throw JsonRequest.WrongType("prompt", "a string, an array of strings, token ids, or an array of token-id arrays", prompt);
        int count = prompt.GetArrayLength();
        if (count == 0) throw ApiException.BadRequest("prompt is an empty array.", "prompt", "empty_array");
        var first = prompt[0];
        if (first.ValueKind == JsonValueKind.Number) return [TokenIds(prompt, "prompt", model)];
        // What the first element is decides what the others must be; a first that is none of the kinds ("prompt[0] is
        // null, but prompt[0] is null") is named as such.
        if (first.ValueKind is not (JsonValueKind.String or JsonValueKind.Array))
            throw JsonRequest.WrongType("prompt[0]", "a string, a token id or an array of token ids", first);
        if (count > options.MaxPrompts) throw ApiException.BadRequest($"prompt holds {count} prompts; this server takes at most {options.MaxPrompts} per request.", "prompt", "invalid_value");
        var result = new int[count][];
        int i = 0;
        foreach (var p in prompt.EnumerateArray())
        {
            result[i] = (p.ValueKind, first.ValueKind) switch
            {
                (JsonValueKind.String, JsonValueKind.String) => EncodeText(p.GetString()!, model),
                (JsonValueKind.Array, JsonValueKind.Array) => TokenIds(p, $"prompt[{i}]", model),
                _ => throw ApiException.BadRequest($"prompt[{i}] is {JsonRequest.Describe(p)}, but prompt[0] is {JsonRequest.Describe(first)}; a prompt array holds only strings, only token ids, or only token-id arrays.", "prompt", "invalid_type"),
            };
            i++;
        }
        return result;
    }

    private static int[] EncodeText(string text, ServedModel model)
    {
        var tokenizer = RequireTokenizer(model, "prompt");
        RefuseFarPastContext(text, tokenizer, model, chat: false);
        var ids = tokenizer.Encode(text, addBos: tokenizer.AddBosToken, parseSpecial: true);
        if (ids.Length > 0) return ids;
        // An empty prompt starts a document, as OpenAI's models start from <|endoftext|>.
        if (tokenizer.BosId >= 0) return [tokenizer.BosId];
        throw ApiException.BadRequest("The prompt is empty and this model's vocabulary has no BOS token to start from.", "prompt", "empty_prompt");
    }

    private static int[] TokenIds(JsonElement array, string param, ServedModel model)
    {
        if (array.GetArrayLength() == 0) throw ApiException.BadRequest($"{param} is an empty array of token ids.", param, "empty_prompt");
        var ids = new int[array.GetArrayLength()];
        int i = 0;
        foreach (var e in array.EnumerateArray())
        {
            if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt32(out int id))
                throw ApiException.BadRequest($"{param}[{i}] must be a token id (an integer); got {JsonRequest.Describe(e)}.", param, "invalid_type");
            if ((uint)id >= (uint)model.VocabSize)
                throw ApiException.BadRequest($"{param}[{i}] = {id} is outside the vocabulary of {model.VocabSize} tokens.", param, "invalid_value");
            ids[i++] = id;
        }
        return ids;
    }

    private static BitNetTokenizer RequireTokenizer(ServedModel model, string param) =>
        model.Tokenizer ?? throw ApiException.BadRequest($"The model '{model.Id}' has no tokenizer, so it cannot read text; send the prompt as token ids.", param, "no_tokenizer");

    private static SamplingParameters ParseSampling(JsonRequest r, ServedModel model)
    {
        var p = new SamplingParameters
        {
            Temperature = r.Number("temperature", 0, 2) ?? 1f,
            TopP = r.Number("top_p", 0, 1) ?? 1f,
            TopK = (int)Math.Max(0, r.Integer("top_k", -1, model.VocabSize) ?? 0),
            MinP = r.Number("min_p", 0, 1) ?? 0f,
            TypicalP = r.Number("typical_p", 1e-6, 1) ?? 1f,
            RepetitionPenalty = r.Number("repetition_penalty", 1e-3, 100) ?? 1f,
            PresencePenalty = r.Number("presence_penalty", -2, 2) ?? 0f,
            FrequencyPenalty = r.Number("frequency_penalty", -2, 2) ?? 0f,
            // OpenAI's penalties count the tokens sampled so far in this completion, not the prompt, and not only the last 64.
            PenaltyLastN = -1,
            PenalizePrompt = false,
            Seed = r.Seed("seed"),
            LogitBias = LogitBias(r, model),
        };
        // top_p 0 keeps only the most likely token, which the sampler expresses as top-k 1.
        if (p.TopP == 0f) p = p with { TopP = 1f, TopK = 1 };
        return p;
    }

    /// <summary>logit_bias: {"token id": bias in [−100, 100]}; −100 bans the token, as OpenAI documents.</summary>
    private static Dictionary<int, float>? LogitBias(JsonRequest r, ServedModel model)
    {
        if (!r.TryGet("logit_bias", out var lb)) return null;
        if (lb.ValueKind != JsonValueKind.Object) throw JsonRequest.WrongType("logit_bias", "an object mapping token ids to biases", lb);
        var bias = new Dictionary<int, float>();
        foreach (var prop in lb.EnumerateObject())
        {
            if (!int.TryParse(prop.Name, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int id) || id >= model.VocabSize)
                throw ApiException.BadRequest($"logit_bias key '{prop.Name}' is not a token id of this model (0..{model.VocabSize - 1}).", "logit_bias", "invalid_value");
            if (prop.Value.ValueKind != JsonValueKind.Number || !prop.Value.TryGetDouble(out double v) || v < -100 || v > 100)
                throw ApiException.BadRequest($"logit_bias for token {id} must be a number between -100 and 100.", "logit_bias", "invalid_value");
            bias[id] = v <= -100 ? float.NegativeInfinity : (float)v;
        }
        // Every token banned: nothing could be sampled, and the sampler's failure would reach the client as a 500.
        int usable = Math.Min(model.VocabSize, model.Tokenizer?.VocabularySize ?? model.VocabSize), banned = 0;
        foreach (var (id, v) in bias)
            if (id < usable && float.IsNegativeInfinity(v)) banned++;
        if (banned >= usable)
            throw ApiException.BadRequest($"logit_bias bans every one of the {usable} tokens (-100 each), so none could be sampled; leave at least one.", "logit_bias", "invalid_value");
        return bias;
    }

    private static string[]? ParseStop(JsonRequest r)
    {
        if (!r.TryGet("stop", out var stop)) return null;
        string[] stops = stop.ValueKind switch
        {
            JsonValueKind.String => [stop.GetString()!],
            JsonValueKind.Array => [.. stop.EnumerateArray().Select((e, i) => e.ValueKind == JsonValueKind.String ? e.GetString()! : throw JsonRequest.WrongType($"stop[{i}]", "a string", e))],
            _ => throw JsonRequest.WrongType("stop", "a string or an array of strings", stop),
        };
        if (stops.Length > 16) throw ApiException.BadRequest($"stop holds {stops.Length} strings; at most 16 are allowed.", "stop", "invalid_value");
        if (stops.Any(s => s.Length == 0)) throw ApiException.BadRequest("stop strings must not be empty.", "stop", "invalid_value");
        return stops.Length == 0 ? null : stops;
    }
}
