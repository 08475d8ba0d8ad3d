using System.CommandLine;
using System.Globalization;

namespace BitNetSharp.Cli.Commands;

/// <summary><c>bitnet tokenize [-m MODEL] TEXT [--ids-only] [--no-bos]</c>: the model's token ids and pieces for a text.</summary>
public static class TokenizeCommand
{
    /// <summary>
    /// <paramref name="text"/> as a JSON string that reads as the text: only quotes, backslashes and control characters
    /// escaped. The default encoder printed &lt;|begin_of_text|&gt; as \u003C|begin_of_text|\u003E, 's as \u0027s and
    /// every non-ASCII letter as \uXXXX; the relaxed one still escapes emoji and a list of other characters.
    /// </summary>
    internal static string Quoted(string text)
    {
        var b = new System.Text.StringBuilder(text.Length + 2).Append('"');
        foreach (char c in text)
        {
            switch (c)
            {
                case '"': b.Append("\\\""); break;
                case '\\': b.Append("\\\\"); break;
                case '\n': b.Append("\\n"); break;
                case '\r': b.Append("\\r"); break;
                case '\t': b.Append("\\t"); break;
                default:
                    if (c < 0x20 || c == 0x7F) b.Append(CultureInfo.InvariantCulture, $"\\u{(int)c:X4}");
                    else b.Append(c);
                    break;
            }
        }
        return b.Append('"').ToString();
    }

    public static Command Create(CliConsole cli)
    {
        var model = new Option<string?>("--model", "-m") { Description = "A .gguf file or a Hugging Face model directory (default: the bundled model)." };
        var text = new Argument<string>("text") { Description = "The text to tokenize (special tokens such as <|eot_id|> are recognized unless --no-parse-special; text starting with '-' goes after --)." };
        var idsOnly = new Option<bool>("--ids-only") { Description = "Print only the ids, comma-separated." };
        var noBos = new Option<bool>("--no-bos") { Description = "Do not add the beginning-of-sequence token." };
        var noSpecial = new Option<bool>("--no-parse-special")
        {
            Description = "Read special-token strings such as <|eot_id|> as plain text, as chat and serve encode a message's content (and /tokenize with \"parse_special\": false).",
        };
        var command = new Command("tokenize", "Show how the model's tokenizer splits a text.") { text, model, idsOnly, noBos, noSpecial };
        command.SetAction(result => cli.Guard(() =>
        {
            string input = result.GetRequiredValue(text);
            // An option the command does not have was taken as the text to tokenize (`bitnet tokenize --bogus` printed
            // the tokens of "--bogus", exit 0); text that starts with a dash goes after --, as with other tools.
            if (input.Length > 1 && input[0] == '-' && !result.Tokens.Any(t => t.Type == System.CommandLine.Parsing.TokenType.DoubleDash))
                throw new UsageException($"'{(input.Length > 40 ? input[..40] + "…" : input)}' is not an option of bitnet tokenize; to tokenize text that starts with '-', put -- before it (bitnet tokenize [options] -- TEXT).");
            var tokenizer = ModelOptions.LoadTokenizer(ModelOptions.ResolveModel(result.GetValue(model)));
            if (tokenizer.CoverageWarning is { } coverage) cli.Error.WriteLine("warning: " + coverage);
            var ids = tokenizer.Encode(input, addBos: tokenizer.AddBosToken && !result.GetValue(noBos), parseSpecial: !result.GetValue(noSpecial));
            if (result.GetValue(idsOnly))
            {
                cli.Output.WriteLine(string.Join(',', ids.Select(i => i.ToString(CultureInfo.InvariantCulture))));
                return 0;
            }
            // Each token's own bytes (SentencePiece's "▁world" is " world": decoding it alone dropped the space, so it
            // printed the same as "world"); a piece that is part of a character shows as its bytes.
            foreach (int id in ids)
            {
                var bytes = tokenizer.TokenBytes(id);
                string piece = System.Text.Unicode.Utf8.IsValid(bytes)
                    ? Quoted(System.Text.Encoding.UTF8.GetString(bytes))
                    : "bytes " + string.Join(' ', bytes.ToArray().Select(b => $"0x{b:X2}"));
                cli.Output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{id,8} {piece}"));
            }
            cli.Output.WriteLine(ids.Length == 1 ? "1 token" : $"{ids.Length} tokens");
            return 0;
        }));
        return command;
    }
}
