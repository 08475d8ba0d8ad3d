namespace BitNetSharp.Diagnostics.Profiling;

/// <summary>
/// This process's memory at one moment (Linux /proc; null fields elsewhere): resident and peak resident set, the
/// anonymous part (heap, runtime buffers, KV cache) and the part of one file's mappings that is resident (the
/// memory-mapped weights); plus GC counts. (Page faults come from <see cref="PerfCounters"/>: reading smaps here faults
/// pages itself, so /proc's fault totals around a phase would count the measurement.) Also the JIT's running totals:
/// methods compiled and time spent compiling, on any thread (the runtime's background thread recompiles hot methods
/// optimized after their first ~30 calls; on a two-core machine it takes a core from the measured work while it does).
/// </summary>
public sealed record ProcessMemory(long? RssBytes, long? PeakRssBytes, long? AnonymousBytes, long? MappedFileBytes, int Gen0, int Gen1, int Gen2,
    long JitMethods = 0, double JitMilliseconds = 0)
{
    /// <summary>Reads the figures now; <paramref name="mappedFile"/>: the file whose resident mapped bytes to sum (the model).</summary>
    public static ProcessMemory Read(string? mappedFile = null)
    {
        // The managed counts first: reading /proc below allocates (and can set off a collection) and calls methods that
        // may be compiled, which belong to the reading, not to what ran before it.
        int gen0 = GC.CollectionCount(0), gen1 = GC.CollectionCount(1), gen2 = GC.CollectionCount(2);
        long jitMethods = System.Runtime.JitInfo.GetCompiledMethodCount();
        double jitMs = System.Runtime.JitInfo.GetCompilationTime().TotalMilliseconds;
        long? rss = null, hwm = null, anon = null, mapped = null;
        if (OperatingSystem.IsLinux())
        {
            try
            {
                foreach (var line in File.ReadLines("/proc/self/status"))
                {
                    if (line.StartsWith("VmRSS:", StringComparison.Ordinal)) rss = Kb(line);
                    else if (line.StartsWith("VmHWM:", StringComparison.Ordinal)) hwm = Kb(line);
                }
                foreach (var line in File.ReadLines("/proc/self/smaps_rollup"))
                    if (line.StartsWith("Anonymous:", StringComparison.Ordinal)) anon = Kb(line);
                if (mappedFile is not null) mapped = MappedResident(Resolve(mappedFile));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
            {
            }
        }
        return new ProcessMemory(rss, hwm, anon, mapped, gen0, gen1, gen2, jitMethods, jitMs);
    }

    /// <summary>Linux: resets the peak-RSS watermark (VmHWM) to the current RSS, so a probe buffer freed before does not count.</summary>
    public static void ResetPeak()
    {
        try
        {
            if (OperatingSystem.IsLinux()) File.WriteAllText("/proc/self/clear_refs", "5");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }

    /// <summary>The file's real path, every link along it resolved (as realpath): smaps names a mapping by it, so a model
    /// given through a link (a Hugging Face hub snapshot links to its blobs), or in a directory reached through one
    /// (models -> /data/models, a linked ~/.cache), matched nothing and the resident size read "-".</summary>
    private static string Resolve(string path) => Formats.PathIdentity.Resolve(Path.GetFullPath(path));

    /// <summary>Sum of Rss over the mappings of <paramref name="path"/> in /proc/self/smaps (the whole path after the
    /// header's fields, not a suffix that another file's path could share).</summary>
    private static long? MappedResident(string path)
    {
        long total = 0;
        bool inFile = false, found = false;
        foreach (var line in File.ReadLines("/proc/self/smaps"))
        {
            if (line.Length > 0 && IsMappingHeader(line))
            {
                inFile = line.EndsWith(path, StringComparison.Ordinal) && line.Length > path.Length && line[line.Length - path.Length - 1] == ' ';
                found |= inFile;
            }
            else if (inFile && line.StartsWith("Rss:", StringComparison.Ordinal)) total += Kb(line);
        }
        return found ? total : null;
    }

    // A mapping header starts with "start-end " in hex; field lines start with a capitalized name and a colon.
    private static bool IsMappingHeader(string line)
    {
        int dash = line.IndexOf('-');
        return dash > 0 && Uri.IsHexDigit(line[0]) && line.IndexOf(':') > dash && line.IndexOf(' ') > dash;
    }

    private static long Kb(string line)
    {
        var v = line.AsSpan(line.IndexOf(':') + 1).Trim();
        if (v.EndsWith("kB")) v = v[..^2].Trim();
        return long.Parse(v, System.Globalization.CultureInfo.InvariantCulture) * 1024;
    }
}

/// <summary>Per-token latencies summarized: quantiles (nearest rank), mean and sample standard deviation, in seconds.</summary>
public sealed record LatencySummary(int Count, double Mean, double StdDev, double P50, double P95, double P99, double Min, double Max)
{
    public static LatencySummary Of(ReadOnlySpan<double> seconds)
    {
        if (seconds.IsEmpty) return new LatencySummary(0, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN);
        var sorted = seconds.ToArray();
        Array.Sort(sorted);
        double mean = 0;
        foreach (double s in sorted) mean += s;
        mean /= sorted.Length;
        double var = 0;
        foreach (double s in sorted) var += (s - mean) * (s - mean);
        double sd = sorted.Length > 1 ? Math.Sqrt(var / (sorted.Length - 1)) : 0;
        return new LatencySummary(sorted.Length, mean, sd, Quantile(sorted, 0.50), Quantile(sorted, 0.95), Quantile(sorted, 0.99), sorted[0], sorted[^1]);
    }

    /// <summary>Nearest-rank quantile of sorted values: the smallest value with at least q of the values at or below it.</summary>
    public static double Quantile(double[] sorted, double q)
    {
        int rank = (int)Math.Ceiling(q * sorted.Length);
        return sorted[Math.Clamp(rank - 1, 0, sorted.Length - 1)];
    }
}
