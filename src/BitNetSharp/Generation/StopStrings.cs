using BitNetSharp.Generation.Scheduler;

namespace BitNetSharp.Generation;

/// <summary>Stop strings over <see cref="TextGenerator.Generate"/>'s token stream (the server's scheduler applies them itself).</summary>
public static class StopStrings
{
    /// <summary>
    /// <paramref name="tokens"/> until one of <paramref name="stops"/> appears in the text: the token that completes it
    /// carries only the text before it and <see cref="FinishReason.Stop"/>, and generation ends there (the enumerator is
    /// disposed). Text that may be the start of a stop string is held back and delivered with a later token, so no part
    /// of a stop string split over tokens is ever shown. No stops: the stream unchanged.
    /// </summary>
    public static IEnumerable<GeneratedToken> Apply(IEnumerable<GeneratedToken> tokens, IReadOnlyList<string>? stops)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        if (stops is null || stops.Count == 0) return tokens;
        foreach (var s in stops)
            if (string.IsNullOrEmpty(s)) throw new ArgumentException("A stop string is empty.", nameof(stops));
        return Run(tokens, stops);
    }

    private static IEnumerable<GeneratedToken> Run(IEnumerable<GeneratedToken> tokens, IReadOnlyList<string> stops)
    {
        var matcher = new StopStringMatcher(stops);
        foreach (var t in tokens)
        {
            string text = matcher.Push(t.Text, out bool stopped);
            if (stopped)
            {
                yield return t with { Text = text, Finish = FinishReason.Stop };
                yield break;
            }
            if (t.Finish != FinishReason.None)
            {
                yield return t with { Text = text + matcher.Flush() };
                yield break;
            }
            yield return t with { Text = text };
        }
        // A stream that ends without a final token still delivers what was held back.
        if (matcher.Flush() is { Length: > 0 } rest) yield return new GeneratedToken(-1, rest, float.NaN, null, FinishReason.None);
    }
}
