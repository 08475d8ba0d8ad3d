using System.Globalization;

namespace BitNetSharp.Cli;

/// <summary>
/// Progress of a long run on stderr where the progress bar cannot go (stdout is JSON or a pipe): on a terminal one line
/// redrawn in place at most twice a second; into a file or pipe (a CI log) a line every <see cref="LogEvery"/>. An eval
/// of 10 MB ran 12 minutes without a word under --json.
/// </summary>
public sealed class ProgressLines(TextWriter error, string what, bool terminal, TimeProvider? time = null)
{
    /// <summary>How often a line is written into a log (not a terminal).</summary>
    public static readonly TimeSpan LogEvery = TimeSpan.FromSeconds(30);

    private static readonly TimeSpan RedrawEvery = TimeSpan.FromSeconds(0.5);
    private readonly TimeProvider _time = time ?? TimeProvider.System;
    private long _start = -1, _last = -1;
    private bool _drawn;

    /// <summary>The callback for <paramref name="done"/> of <paramref name="total"/> units.</summary>
    public void Report(int done, int total)
    {
        long now = _time.GetTimestamp();
        if (_start < 0) _start = _last = now;
        if (_time.GetElapsedTime(_last, now) < (terminal ? RedrawEvery : LogEvery) || total <= 0 || done >= total) return;
        _last = now;
        double share = (double)done / total;
        var elapsed = _time.GetElapsedTime(_start, now);
        string left = done > 0 ? $", about {Duration(elapsed.TotalSeconds * (1 / share - 1))} left" : "";
        string line = string.Create(CultureInfo.InvariantCulture, $"{what}: {done:N0} of {total:N0} ({100 * share:0}%){left}");
        if (terminal)
        {
            error.Write("\r" + line.PadRight(72));
            _drawn = true;
        }
        else error.WriteLine(line);
        error.Flush();
    }

    /// <summary>Clears the terminal line, when one was drawn.</summary>
    public void Done()
    {
        if (!_drawn) return;
        error.Write("\r" + new string(' ', 72) + "\r");
        error.Flush();
        _drawn = false;
    }

    private static string Duration(double seconds) => seconds switch
    {
        < 120 => $"{seconds:0} s",
        < 5400 => $"{seconds / 60:0} min",
        _ => $"{seconds / 3600:0.#} h",
    };
}
