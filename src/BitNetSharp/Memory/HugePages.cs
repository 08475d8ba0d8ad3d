using System.Runtime.InteropServices;

namespace BitNetSharp.Memory;

/// <summary>
/// Transparent huge pages for the runtime buffers (<c>--hugepages</c>, Linux): while <see cref="Enabled"/>, every
/// <see cref="NativeBuffer"/> of at least 2 MiB is allocated 2 MiB-aligned and advised MADV_HUGEPAGE, so the kernel
/// can back activations, KV cache and repacked weights with 2 MiB pages (fewer TLB misses). The model file's mapping
/// is page cache, which transparent huge pages do not cover. Whether the kernel honoured it shows in
/// <see cref="AnonHugePagesBytes"/>.
/// </summary>
public static unsafe class HugePages
{
    public const long PageBytes = 2 << 20;
    private const int MadvHugePage = 14;

    /// <summary>Advise huge pages for buffers allocated from now on.</summary>
    public static bool Enabled { get; set; }

    /// <summary>Bytes of buffers advised so far, and advice the kernel refused (errno of the last refusal, 0 when none).</summary>
    public static long AdvisedBytes => Interlocked.Read(ref _advised);
    public static int LastError { get; private set; }

    private static long _advised, _peakAnon = -1;

    /// <summary>The largest AnonHugePages seen when an advised buffer was freed (−1: none freed yet) — the buffers are gone by the time a run reports.</summary>
    public static long PeakAnonHugePagesBytes => Interlocked.Read(ref _peakAnon);

    internal static void NoteBeforeFree()
    {
        long now = AnonHugePagesBytes();
        long seen;
        while (now > (seen = Interlocked.Read(ref _peakAnon)) && Interlocked.CompareExchange(ref _peakAnon, now, seen) != seen) { }
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int madvise(void* address, nuint length, int advice);

    /// <summary>/sys/kernel/mm/transparent_hugepage/enabled, e.g. "always [madvise] never" (null off Linux or unreadable).</summary>
    public static string? SystemSetting()
    {
        try
        {
            return OperatingSystem.IsLinux() ? File.ReadAllText("/sys/kernel/mm/transparent_hugepage/enabled").Trim() : null;
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>Throws a clear error when huge pages cannot be asked for here (not Linux, or THP set to never).</summary>
    public static void Require()
    {
        if (!OperatingSystem.IsLinux()) throw new PlatformNotSupportedException("--hugepages uses Linux transparent huge pages (madvise MADV_HUGEPAGE); this is not Linux.");
        if (SystemSetting() is { } s && s.Contains("[never]", StringComparison.Ordinal))
            throw new InvalidOperationException($"--hugepages: transparent huge pages are off on this machine (/sys/kernel/mm/transparent_hugepage/enabled: {s}); enable 'madvise' or 'always' to use them.");
    }

    /// <summary>Huge-page-backed anonymous memory of this process now (AnonHugePages in /proc/self/smaps_rollup), or −1 when unreadable.</summary>
    public static long AnonHugePagesBytes()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/smaps_rollup"))
                if (line.StartsWith("AnonHugePages:", StringComparison.Ordinal))
                    return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) * 1024;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
        {
        }
        return -1;
    }

    /// <summary>Whether huge pages can be asked for here: Linux with transparent huge pages not set to never.</summary>
    public static bool Available => OperatingSystem.IsLinux() && SystemSetting() is { } s && !s.Contains("[never]", StringComparison.Ordinal);

    /// <summary>
    /// <paramref name="byteLength"/> bytes (rounded up to whole 2 MiB pages, <paramref name="rounded"/>), 2 MiB-aligned
    /// and advised MADV_HUGEPAGE whatever <see cref="Enabled"/> says; <paramref name="advised"/> is false where the
    /// kernel refused the advice. Not zeroed. Free with <see cref="NativeMemory.AlignedFree"/>; null when the memory
    /// cannot be had.
    /// </summary>
    internal static void* AllocateAdvised(long byteLength, out long rounded, out bool advised)
    {
        advised = false;
        rounded = (Math.Max(byteLength, 1) + PageBytes - 1) / PageBytes * PageBytes;
        void* p;
        try
        {
            p = NativeMemory.AlignedAlloc((nuint)rounded, (nuint)PageBytes);
        }
        catch (OutOfMemoryException)
        {
            return null;
        }
        // The model file's copy: not one of the runtime buffers the report's "advised N MiB of runtime buffers" counts
        // (the whole model was added to it), and a refusal here is said by the weights' own report, not as theirs.
        advised = OperatingSystem.IsLinux() && madvise(p, (nuint)rounded, MadvHugePage) == 0;
        return p;
    }

    /// <summary>
    /// Memory this process can take without swapping or meeting its container's limit: MemAvailable of /proc/meminfo,
    /// or the cgroup's headroom (<see cref="CgroupHeadroomBytes"/>) where that is less; null where neither is known.
    /// MemAvailable is the host's: in a pod limited to 192 MiB on a 64 GiB node, `--weight-pages auto` went by the
    /// node's free memory.
    /// </summary>
    public static long? AvailableMemoryBytes() =>
        OperatingSystem.IsLinux() ? AvailableMemoryBytes("/proc/meminfo", "/sys/fs/cgroup", "/proc/self/cgroup") : null;

    /// <summary><see cref="AvailableMemoryBytes()"/> from the given files (tests lay them out).</summary>
    internal static long? AvailableMemoryBytes(string meminfo, string cgroupRoot, string selfCgroup)
    {
        long? host = null;
        try
        {
            if (File.Exists(meminfo))
                foreach (var line in File.ReadLines(meminfo))
                    if (line.StartsWith("MemAvailable:", StringComparison.Ordinal))
                    {
                        host = long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) * 1024;
                        break;
                    }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or OverflowException or IndexOutOfRangeException)
        {
        }
        return (host, CgroupHeadroomBytes(cgroupRoot, selfCgroup)) switch
        {
            ({ } h, { } c) => Math.Min(h, c),
            (var h, var c) => h ?? c,
        };
    }

    /// <summary>
    /// What this process's memory cgroup may still charge before a limit: the limit less the usage, plus the inactive
    /// file pages in the usage (page cache the kernel reclaims before it would kill). cgroup v2: the process's cgroup
    /// and every ancestor with a memory.max (a limit on a parent slice binds too), the least headroom; v1: its
    /// memory.limit_in_bytes or the hierarchical_memory_limit of memory.stat (ancestors included), whichever is less.
    /// Found through <paramref name="selfCgroup"/> under <paramref name="root"/>, or at the root where a container sees
    /// its own cgroup there. Null without a limit or where the files cannot be read.
    /// </summary>
    internal static long? CgroupHeadroomBytes(string root = "/sys/fs/cgroup", string selfCgroup = "/proc/self/cgroup")
    {
        try
        {
            if (!File.Exists(selfCgroup)) return null;
            string? v2 = null, v1 = null;
            foreach (var line in File.ReadLines(selfCgroup))
            {
                var parts = line.Split(':', 3);
                if (parts.Length != 3) continue;
                if (parts[0] == "0" && parts[1].Length == 0) v2 = parts[2];
                else if (parts[1].Split(',').Contains("memory")) v1 = parts[2];
            }
            if (v1 is not null)
                foreach (var dir in new[] { Path.Join(root, "memory", v1), Path.Join(root, "memory") })
                    if (Headroom(dir, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file", "hierarchical_memory_limit") is { } h1)
                        return h1 < 0 ? null : h1;
            if (v2 is not null)
            {
                // From the process's cgroup up to the root: the least headroom of the levels with a limit.
                long? least = null;
                bool found = false;
                for (string level = v2.TrimEnd('/'); ; level = level[..Math.Max(0, level.LastIndexOf('/'))])
                {
                    if (Headroom(Path.Join(root, level), "memory.max", "memory.current", "inactive_file", null) is { } h2)
                    {
                        found = true;
                        if (h2 >= 0) least = least is { } l ? Math.Min(l, h2) : h2;
                    }
                    if (level.Length == 0) break;
                }
                if (found) return least;
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or OverflowException)
        {
        }
        return null;

        // The headroom in a cgroup directory; −1 for no limit; null where its files are not there.
        static long? Headroom(string dir, string limitFile, string usageFile, string inactiveKey, string? hierarchicalKey)
        {
            string limitPath = Path.Join(dir, limitFile), usagePath = Path.Join(dir, usageFile);
            if (!File.Exists(limitPath) || !File.Exists(usagePath)) return null;
            string limitText = File.ReadAllText(limitPath).Trim();
            long limit = limitText == "max" ? long.MaxValue : long.Parse(limitText, System.Globalization.CultureInfo.InvariantCulture);
            long inactive = 0;
            string statPath = Path.Join(dir, "memory.stat");
            if (File.Exists(statPath))
                foreach (var line in File.ReadLines(statPath))
                {
                    if (line.StartsWith(inactiveKey + " ", StringComparison.Ordinal))
                        inactive = long.Parse(line.AsSpan(inactiveKey.Length + 1), System.Globalization.CultureInfo.InvariantCulture);
                    else if (hierarchicalKey is not null && line.StartsWith(hierarchicalKey + " ", StringComparison.Ordinal))
                        limit = Math.Min(limit, long.Parse(line.AsSpan(hierarchicalKey.Length + 1), System.Globalization.CultureInfo.InvariantCulture));
                }
            if (limit >= 1L << 60) return -1; // no limit ("max"; v1 writes it as a page-rounded 2^63 − 1)
            long usage = long.Parse(File.ReadAllText(usagePath).Trim(), System.Globalization.CultureInfo.InvariantCulture);
            return Math.Max(0, limit - usage + Math.Min(inactive, usage));
        }
    }

    /// <summary>
    /// Huge-page-backed bytes of [p, p + length) now, or −1 when unreadable: per mapping of /proc/self/smaps that overlaps
    /// the range, its AnonHugePages capped at the overlap. Adjacent advised buffers can share one mapping, so where they
    /// do this is an upper bound.
    /// </summary>
    public static long BackedBytes(void* p, long length)
    {
        if (!OperatingSystem.IsLinux()) return -1;
        try
        {
            ulong start = (ulong)p, end = start + (ulong)length, sum = 0, overlap = 0;
            bool inside = false, any = false;
            foreach (var line in File.ReadLines("/proc/self/smaps"))
            {
                int dash = line.IndexOf('-');
                int space = line.IndexOf(' ');
                if (dash > 0 && space > dash && ulong.TryParse(line.AsSpan(0, dash), System.Globalization.NumberStyles.HexNumber, null, out ulong lo)
                    && ulong.TryParse(line.AsSpan(dash + 1, space - dash - 1), System.Globalization.NumberStyles.HexNumber, null, out ulong hi))
                {
                    inside = lo < end && hi > start; // a mapping header line
                    overlap = inside ? Math.Min(hi, end) - Math.Max(lo, start) : 0;
                    any |= inside;
                    continue;
                }
                if (inside && line.StartsWith("AnonHugePages:", StringComparison.Ordinal))
                    sum += Math.Min(overlap, ulong.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) * 1024);
            }
            return any ? (long)sum : -1;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or OverflowException)
        {
            return -1;
        }
    }

    /// <summary>Allocates for <see cref="NativeBuffer"/>: 2 MiB-aligned and advised when enabled and large enough, else null.</summary>
    internal static void* TryAllocate(long byteLength, out bool advised, bool force = false)
    {
        advised = false;
        if (!(Enabled || force) || byteLength < PageBytes || !OperatingSystem.IsLinux()) return null;
        long rounded = (byteLength + PageBytes - 1) / PageBytes * PageBytes;
        void* p = NativeMemory.AlignedAlloc((nuint)rounded, (nuint)PageBytes);
        if (madvise(p, (nuint)rounded, MadvHugePage) == 0)
        {
            // A forced buffer is a tool's own (the bandwidth probe's 1 GiB): not a runtime buffer the report counts.
            if (!force) Interlocked.Add(ref _advised, rounded);
            advised = true;
        }
        else if (!force) LastError = Marshal.GetLastPInvokeError(); // a tool's own buffer's refusal is not the runtime's
        return p;
    }
}
