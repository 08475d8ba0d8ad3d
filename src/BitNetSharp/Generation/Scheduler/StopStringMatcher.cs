using System.Text;

namespace BitNetSharp.Generation.Scheduler;

/// <summary>
/// Finds stop strings in a stream of text pieces. Text that could still be the start of a stop string is held back,
/// so a match split over several tokens is found and the caller never delivers any part of it.
/// </summary>
internal sealed class StopStringMatcher
{
    private readonly string[] _stops;
    private readonly int _longest;
    private readonly StringBuilder _held = new();

    public StopStringMatcher(IReadOnlyList<string> stops)
    {
        _stops = stops.Where(s => s.Length > 0).ToArray();
        _longest = _stops.Length == 0 ? 0 : _stops.Max(s => s.Length);
    }

    /// <summary>
    /// Adds <paramref name="text"/> and returns what can be delivered now. When a stop string appears,
    /// <paramref name="stopped"/> is set and only the text before it is returned.
    /// </summary>
    public string Push(string text, out bool stopped)
    {
        stopped = false;
        if (_longest == 0) return text;
        if (text.Length == 0 && _held.Length == 0) return text;
        _held.Append(text);
        string s = _held.ToString();
        int first = -1;
        foreach (var stop in _stops)
        {
            int i = s.IndexOf(stop, StringComparison.Ordinal);
            if (i >= 0 && (first < 0 || i < first)) first = i;
        }
        _held.Clear();
        if (first >= 0)
        {
            stopped = true;
            return s[..first];
        }
        int keep = 0;
        for (int k = Math.Min(_longest - 1, s.Length); k > 0 && keep == 0; k--)
            foreach (var stop in _stops)
                if (stop.Length > k && string.CompareOrdinal(s, s.Length - k, stop, 0, k) == 0) { keep = k; break; }
        _held.Append(s, s.Length - keep, keep);
        return s[..^keep];
    }

    /// <summary>The text held back, at the end of the stream (no stop string can complete any more).</summary>
    public string Flush()
    {
        var s = _held.ToString();
        _held.Clear();
        return s;
    }
}
