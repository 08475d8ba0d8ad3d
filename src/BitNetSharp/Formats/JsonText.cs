using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Unicode;

namespace BitNetSharp.Formats;

/// <summary>
/// Whether every string and property name of a parsed JSON document is text. System.Text.Json checks structure when
/// it parses, not what strings hold: bytes that are not UTF-8, or a <c>\u</c> escape of half a UTF-16 surrogate pair
/// (<c>\uD800</c> without its partner, valid JSON but no text), surface later as an InvalidOperationException from
/// whichever <c>GetString()</c> or <c>JsonProperty.Name</c> reads them. The parsers check once, up front.
/// </summary>
public static class JsonText
{
    /// <summary>Null when every string reads; else what is wrong and where (a path like <c>messages[0].content</c>).</summary>
    public static string? Check(JsonElement root)
    {
        var raw = JsonMarshal.GetRawUtf8Value(root);
        if (!Utf8.IsValid(raw))
        {
            int at = 0;
            while (at < raw.Length && System.Text.Rune.DecodeFromUtf8(raw[at..], out _, out int consumed) == System.Buffers.OperationStatus.Done) at += consumed;
            return $"bytes that are not UTF-8 text at byte {at} of the JSON (save the file as UTF-8)";
        }
        if (!MayHoldLoneSurrogate(raw)) return null;
        return FindLoneSurrogate(root) is { } where
            ? $"{(where.Length == 0 ? "the document" : where)} holds a \\u escape of half a UTF-16 surrogate pair (\\uD800-\\uDFFF without its partner), which is no text"
            : null;
    }

    /// <summary>As <see cref="Check"/>, throwing a <see cref="ModelFormatException"/> naming <paramref name="path"/>.</summary>
    public static void Require(JsonElement root, string path)
    {
        if (Check(root) is { } problem) throw new ModelFormatException(path, problem);
    }

    /// <summary>
    /// The path of the first string or property name holding half a surrogate pair ("a property name" or "a
    /// property name in PATH" for a name), or null. The document's UTF-8 must already be valid.
    /// </summary>
    public static string? FindLoneSurrogate(JsonElement root) => Walk(root);

    /// <summary>
    /// Whether a <c>\u</c> escape of half a surrogate pair may occur in <paramref name="raw"/>: a high one (D800-DBFF)
    /// not followed at once by a low one (DC00-DFFF), or a low one alone. A pair (an emoji as Python's json.dump writes
    /// it) is text and no reason to walk the document.
    /// </summary>
    public static bool MayHoldLoneSurrogate(ReadOnlySpan<byte> raw)
    {
        // Escapes are read in order, so an escaped backslash ("\\uD83D" is the text "\uD83D") is never taken for one.
        int i = 0;
        while (true)
        {
            int next = raw[i..].IndexOf((byte)'\\');
            if (next < 0) return false;
            i += next;
            if (SurrogateEscape(raw, i) is { } high)
            {
                if (!high || SurrogateEscape(raw, i + 6) != false) return true; // a low half alone, or a high one unpaired
                i += 12;
            }
            else i += 2; // any other escape: \\, \", \n, \u0041, ...
            if (i >= raw.Length) return false;
        }
    }

    /// <summary>True: a \uD800-\uDBFF escape at <paramref name="i"/>; false: \uDC00-\uDFFF; null: neither.</summary>
    private static bool? SurrogateEscape(ReadOnlySpan<byte> raw, int i)
    {
        if (i + 5 >= raw.Length || raw[i] != '\\' || raw[i + 1] != 'u' || (raw[i + 2] | 0x20) != 'd') return null;
        int third = raw[i + 3] | 0x20;
        if (third is >= '8' and <= '9' or 'a' or 'b') return true;
        if (third is >= 'c' and <= 'f') return false;
        return null;
    }

    // The path is built on the way back from a find, not for every element on the way down (tokenizer.json's
    // hundreds of thousands of strings).
    private const string NameMark = "\0name";

    private static string? Walk(JsonElement root)
    {
        if (Find(root) is not { } relative) return null;
        bool name = relative.EndsWith(NameMark, StringComparison.Ordinal);
        string path = (name ? relative[..^NameMark.Length] : relative).TrimStart('.');
        return !name ? path : path.Length == 0 ? "a property name" : $"a property name in {path}";
    }

    /// <summary>Null, "" (this string), a relative path like ".a[2]" or "[0].b", or a path ending in <see cref="NameMark"/>.</summary>
    private static string? Find(JsonElement e)
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.String:
                try
                {
                    e.GetString();
                    return null;
                }
                catch (InvalidOperationException)
                {
                    return "";
                }
            case JsonValueKind.Array:
                int i = 0;
                foreach (var item in e.EnumerateArray())
                {
                    if (Find(item) is { } found) return Join($"[{i}]", found);
                    i++;
                }
                return null;
            case JsonValueKind.Object:
                foreach (var p in e.EnumerateObject())
                {
                    string name;
                    try
                    {
                        name = p.Name;
                    }
                    catch (InvalidOperationException)
                    {
                        return NameMark;
                    }
                    if (Find(p.Value) is { } found) return Join("." + name, found);
                }
                return null;
            default:
                return null;
        }
    }

    private static string Join(string step, string rest) => step + rest;
}
