namespace BitNetSharp.Formats;

/// <summary>
/// The one exception every model-file parser throws for bad input. The message always names the file and,
/// where known, the tensor or metadata key, what was found and what was expected, so a user can act on it.
/// </summary>
public sealed class ModelFormatException : Exception
{
    public ModelFormatException(string path, string message, string? item = null, Exception? inner = null)
        : base(Compose(path, message, item), inner)
    {
        FilePath = path;
        Item = item;
        Reason = message;
    }

    /// <summary>What is wrong, without the file and item in front (<see cref="Exception.Message"/> has them).</summary>
    public string Reason { get; }

    /// <summary>The file (or directory) being read.</summary>
    public string FilePath { get; }

    /// <summary>The tensor name or metadata key at fault, if any.</summary>
    public string? Item { get; }

    /// <summary>
    /// The item and the reason come from the file (a tensor name, a key): shown with control characters escaped and cut
    /// to a readable length. A damaged name length printed a 5.6 MB error of raw binary, and a name holding terminal
    /// escape sequences was written to the terminal as they were.
    /// </summary>
    private static string Compose(string path, string message, string? item) =>
        item is null ? $"{path}: {Printable(message, MaxMessage)}" : $"{path}: {Printable(item, MaxItem)}: {Printable(message, MaxMessage)}";

    private const int MaxItem = 120, MaxMessage = 2000;

    /// <summary><paramref name="text"/> with C0/C1 control characters as \uXXXX (line breaks included: one line), cut to <paramref name="max"/> characters.</summary>
    internal static string Printable(string text, int max)
    {
        bool clean = text.Length <= max;
        foreach (char ch in text) clean &= !Hidden(ch);
        if (clean) return text;
        var sb = new System.Text.StringBuilder(Math.Min(text.Length, max) + 40);
        int i = 0;
        for (; i < text.Length && sb.Length < max; i++)
        {
            char ch = text[i];
            if (Hidden(ch)) sb.Append("\\u").Append(((int)ch).ToString("x4", System.Globalization.CultureInfo.InvariantCulture));
            else if (char.IsHighSurrogate(ch) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1])) sb.Append(ch).Append(text[++i]); // never half a pair
            else sb.Append(ch);
        }
        if (i < text.Length) sb.Append(System.Globalization.CultureInfo.InvariantCulture, $"… ({text.Length:N0} characters in all)");
        return sb.ToString();
    }

    /// <summary>Control characters, and those that move or hide text on a terminal: bidi overrides, zero-width and line/paragraph separators.</summary>
    private static bool Hidden(char ch) => char.IsControl(ch) || char.GetUnicodeCategory(ch) is
        System.Globalization.UnicodeCategory.Format or System.Globalization.UnicodeCategory.LineSeparator or System.Globalization.UnicodeCategory.ParagraphSeparator;
}

/// <summary>
/// A load setting the model cannot take (a head type its rows do not fit): the file is sound, the choice is not. The CLI
/// reports it as a usage error (exit 2), where a <see cref="ModelFormatException"/> is a bad file (exit 1).
/// </summary>
public sealed class UnsuitableSettingException(string message) : Exception(message);
