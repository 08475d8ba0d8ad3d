using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace BitNetSharp.Server.Api;

/// <summary>
/// POST /tokenize and /detokenize in llama-server's shapes:
/// <c>{"content", "add_special"=false, "parse_special"=true, "with_pieces"=false}</c> → <c>{"tokens": [ids]}</c>
/// (or <c>[{"id", "piece"}]</c>, the piece a string when it is valid UTF-8 and its bytes otherwise), and
/// <c>{"tokens": [ids]}</c> → <c>{"content"}</c>.
/// </summary>
internal sealed class TokenizeEndpoints(ModelHost host)
{
    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    public async Task Tokenize(HttpContext context)
    {
        var model = host.RequireReady();
        var tokenizer = model.Tokenizer ?? throw ApiException.BadRequest($"The model '{model.Id}' has no tokenizer.", code: "no_tokenizer");
        var (doc, r) = await JsonRequest.ReadAsync(context.Request, context.RequestAborted);
        int[] ids;
        bool pieces;
        using (doc)
        {
            CompletionRequest.CheckModel(r, model);
            var content = r.String("content") ?? throw ApiException.BadRequest("content is required: the text to tokenize.", "content", "missing_required_parameter");
            bool addSpecial = r.Bool("add_special") ?? false;
            ids = tokenizer.Encode(content, addBos: addSpecial && tokenizer.AddBosToken, parseSpecial: r.Bool("parse_special") ?? true);
            pieces = r.Bool("with_pieces") ?? false;
        }
        await OpenAiJson.WriteJsonAsync(context.Response, 200, w =>
        {
            w.WriteStartObject();
            w.WriteStartArray("tokens");
            foreach (int id in ids)
            {
                if (!pieces)
                {
                    w.WriteNumberValue(id);
                    continue;
                }
                w.WriteStartObject();
                w.WriteNumber("id", id);
                var bytes = tokenizer.TokenBytes(id);
                string? text = null;
                try { text = StrictUtf8.GetString(bytes); } catch (DecoderFallbackException) { }
                if (text is not null) w.WriteString("piece", text);
                else
                {
                    w.WriteStartArray("piece");
                    foreach (byte b in bytes) w.WriteNumberValue(b);
                    w.WriteEndArray();
                }
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }, context.RequestAborted, host.WriteStallTimeout, host.WriteStalled(context));
    }

    public async Task Detokenize(HttpContext context)
    {
        var model = host.RequireReady();
        var tokenizer = model.Tokenizer ?? throw ApiException.BadRequest($"The model '{model.Id}' has no tokenizer.", code: "no_tokenizer");
        var (doc, r) = await JsonRequest.ReadAsync(context.Request, context.RequestAborted);
        var ids = new List<int>();
        using (doc)
        {
            CompletionRequest.CheckModel(r, model);
            if (!r.TryGet("tokens", out var tokens)) throw ApiException.BadRequest("tokens is required: the token ids to turn into text.", "tokens", "missing_required_parameter");
            if (tokens.ValueKind != JsonValueKind.Array) throw JsonRequest.WrongType("tokens", "an array of token ids", tokens);
            int i = 0;
            foreach (var e in tokens.EnumerateArray())
            {
                if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt32(out int id))
                    throw ApiException.BadRequest($"tokens[{i}] must be a token id (an integer); got {JsonRequest.Describe(e)}.", "tokens", "invalid_type");
                if ((uint)id >= (uint)tokenizer.VocabularySize)
                    throw ApiException.BadRequest($"tokens[{i}] = {id} is outside the vocabulary of {tokenizer.VocabularySize} tokens.", "tokens", "invalid_value");
                ids.Add(id);
                i++;
            }
        }
        // Control tokens as their text, as llama-server gives them (and as /tokenize parses them by default): the round
        // trip kept "hi" of "<|im_start|>hi".
        string text = tokenizer.Decode(ids, includeSpecial: true);
        await OpenAiJson.WriteJsonAsync(context.Response, 200, w =>
        {
            w.WriteStartObject();
            w.WriteString("content", text);
            w.WriteEndObject();
        }, context.RequestAborted, host.WriteStallTimeout, host.WriteStalled(context));
    }
}
