using System.Runtime.InteropServices;

namespace BitNetSharp.Diagnostics.Profiling;

/// <summary>A hardware or software event counted through Linux perf_event_open.</summary>
public enum PerfEvent
{
    // Hardware (PERF_TYPE_HARDWARE).
    Cycles,
    Instructions,
    CacheReferences,
    CacheMisses,
    BranchMisses,
    // Software (PERF_TYPE_SOFTWARE).
    TaskClock,
    PageFaults,
    MinorFaults,
    MajorFaults,
    ContextSwitches,
    CpuMigrations,
}

/// <summary>Counter values at one moment (or the difference of two): null where the event could not be counted.</summary>
public sealed class PerfSample
{
    private readonly long?[] _values = new long?[PerfCounters.EventCount];

    public long? this[PerfEvent e]
    {
        get => _values[(int)e];
        internal set => _values[(int)e] = value;
    }

    public PerfSample Minus(PerfSample earlier)
    {
        var d = new PerfSample();
        for (int i = 0; i < _values.Length; i++)
            if (_values[i] is { } a && earlier._values[i] is { } b) d._values[i] = a - b;
        return d;
    }

    /// <summary>Instructions per cycle, where both were counted.</summary>
    public double? Ipc => this[PerfEvent.Cycles] is > 0 and { } c && this[PerfEvent.Instructions] is { } i ? (double)i / c : null;

    public double? CacheMissRate => this[PerfEvent.CacheReferences] is > 0 and { } r && this[PerfEvent.CacheMisses] is { } m ? (double)m / r : null;
}

/// <summary>
/// Counts cycles, instructions, cache references and misses, branch misses (hardware) and task-clock, page faults,
/// context switches and CPU migrations (software) for every thread of this process, through perf_event_open(2)
/// (a raw syscall through libc: the runtime has no binding). One counter per event per thread that exists when the
/// set is opened, so open it after the worker pool has started; <see cref="Read"/> sums them.
/// <para>
/// Virtual machines rarely expose the PMU: the hardware events then fail (ENOENT, EOPNOTSUPP) and
/// <see cref="HardwareUnavailableReason"/> says why, while the software events, which the kernel counts itself, still
/// work. perf_event_paranoid ≥ 2 allows only user-space counting of one's own process, which is what this asks for.
/// </para>
/// </summary>
public sealed unsafe class PerfCounters : IDisposable
{
    public const int EventCount = (int)PerfEvent.CpuMigrations + 1;

    private const uint TypeHardware = 0, TypeSoftware = 1;
    private const ulong ReadTotalTimeEnabled = 1, ReadTotalTimeRunning = 2;

    private readonly List<int>[] _fds = new List<int>[EventCount];

    private PerfCounters()
    {
        for (int i = 0; i < EventCount; i++) _fds[i] = [];
    }

    /// <summary>Why no hardware event could be opened (null when at least one was).</summary>
    public string? HardwareUnavailableReason { get; private set; }

    /// <summary>Why no software event could be opened (null when they were): not Linux, a seccomp filter, paranoid 3…</summary>
    public string? SoftwareUnavailableReason { get; private set; }

    /// <summary>Threads the counters were opened on.</summary>
    public int Threads { get; private set; }

    public bool IsAvailable(PerfEvent e) => _fds[(int)e].Count > 0;

    public static bool IsHardware(PerfEvent e) => e < PerfEvent.TaskClock;

    public static string Name(PerfEvent e) => e switch
    {
        PerfEvent.Cycles => "cycles",
        PerfEvent.Instructions => "instructions",
        PerfEvent.CacheReferences => "cache-references",
        PerfEvent.CacheMisses => "cache-misses",
        PerfEvent.BranchMisses => "branch-misses",
        PerfEvent.TaskClock => "task-clock-ns",
        PerfEvent.PageFaults => "page-faults",
        PerfEvent.MinorFaults => "minor-faults",
        PerfEvent.MajorFaults => "major-faults",
        PerfEvent.ContextSwitches => "context-switches",
        _ => "cpu-migrations",
    };

    /// <summary>Opens every event on every current thread of this process; never throws for an event that cannot be
    /// counted (its reason is kept instead).</summary>
    public static PerfCounters Open()
    {
        var counters = new PerfCounters();
        if (!OperatingSystem.IsLinux() || !(RuntimeInformation.ProcessArchitecture is Architecture.X64 or Architecture.Arm64))
        {
            counters.HardwareUnavailableReason = counters.SoftwareUnavailableReason =
                $"perf_event_open is Linux-only (x64, arm64); this is {RuntimeInformation.OSDescription} on {RuntimeInformation.ProcessArchitecture}";
            return counters;
        }
        var tids = new List<int>();
        try
        {
            foreach (var dir in Directory.EnumerateDirectories("/proc/self/task"))
                if (int.TryParse(Path.GetFileName(dir), out int tid)) tids.Add(tid);
        }
        catch (IOException)
        {
        }
        if (tids.Count == 0) tids.Add(0);
        counters.Threads = tids.Count;
        string? hwError = null, swError = null;
        for (int e = 0; e < EventCount; e++)
        {
            var ev = (PerfEvent)e;
            bool userOnly = false;
            foreach (int tid in tids)
            {
                int fd = OpenEvent(ev, tid, out int errno, userOnly);
                // perf_event_paranoid 2 (the usual default) refuses any event that counts kernel mode to a non-root user,
                // software ones included: count user mode, where task-clock and faults still mean what they say. Context
                // switches and migrations happen only in kernel mode, so they stay unavailable rather than read 0.
                if (fd < 0 && errno == Eacces && !IsHardware(ev) && ev is not (PerfEvent.ContextSwitches or PerfEvent.CpuMigrations))
                {
                    userOnly = true;
                    fd = OpenEvent(ev, tid, out errno, userOnly);
                }
                if (fd >= 0)
                {
                    counters._fds[e].Add(fd);
                    continue;
                }
                // A thread that exited since the listing (ESRCH) is skipped; anything else ends this event.
                if (errno == Esrch) continue;
                string why = $"perf_event_open({Name(ev)}) failed: {Describe(errno)}";
                if (IsHardware(ev)) hwError ??= why;
                else swError ??= why;
                foreach (int open in counters._fds[e]) close(open);
                counters._fds[e].Clear();
                break;
            }
        }
        bool anyHw = false, anySw = false;
        for (int e = 0; e < EventCount; e++)
        {
            if (counters._fds[e].Count == 0) continue;
            if (IsHardware((PerfEvent)e)) anyHw = true;
            else anySw = true;
        }
        if (!anyHw) counters.HardwareUnavailableReason = hwError ?? "no hardware event could be opened";
        if (!anySw) counters.SoftwareUnavailableReason = swError ?? "no software event could be opened";
        return counters;
    }

    /// <summary>The sums over all threads now; events not counted are null. Values are scaled by enabled/running time
    /// when the kernel multiplexed a hardware counter.</summary>
    public PerfSample Read()
    {
        var s = new PerfSample();
        long* buf = stackalloc long[3];
        for (int e = 0; e < EventCount; e++)
        {
            var fds = _fds[e];
            if (fds.Count == 0) continue;
            long total = 0;
            bool ok = false;
            foreach (int fd in fds)
            {
                if (read(fd, buf, 24) != 24) continue;
                long value = buf[0], enabled = buf[1], running = buf[2];
                total += running > 0 && running < enabled ? (long)((double)value * enabled / running) : value;
                ok = true;
            }
            if (ok) s[(PerfEvent)e] = total;
        }
        return s;
    }

    private static int OpenEvent(PerfEvent e, int tid, out int errno, bool userOnly = false)
    {
        // struct perf_event_attr, PERF_ATTR_SIZE_VER5 (112 bytes, Linux ≥ 4.1): type, size, config, sample_period,
        // sample_type, read_format, then the flag bits (bit 5 exclude_kernel, bit 6 exclude_hv).
        byte* attr = stackalloc byte[112];
        new Span<byte>(attr, 112).Clear();
        bool hw = IsHardware(e);
        *(uint*)attr = hw ? TypeHardware : TypeSoftware;
        *(uint*)(attr + 4) = 112;
        *(ulong*)(attr + 8) = e switch
        {
            PerfEvent.Cycles => 0,
            PerfEvent.Instructions => 1,
            PerfEvent.CacheReferences => 2,
            PerfEvent.CacheMisses => 3,
            PerfEvent.BranchMisses => 5,
            PerfEvent.TaskClock => 1,
            PerfEvent.PageFaults => 2,
            PerfEvent.ContextSwitches => 3,
            PerfEvent.CpuMigrations => 4,
            PerfEvent.MinorFaults => 5,
            _ => 6, // major faults
        };
        *(ulong*)(attr + 32) = ReadTotalTimeEnabled | ReadTotalTimeRunning;
        // User space only for the hardware events (what perf_event_paranoid 2 allows), and for the software ones when
        // the kernel refused them in every mode.
        *(ulong*)(attr + 40) = hw || userOnly ? (1UL << 5) | (1UL << 6) : 0;
        long nr = RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? 241 : 298;
        const ulong PerfFlagFdCloexec = 8;
        int fd = (int)syscall(nr, attr, tid, -1, -1, PerfFlagFdCloexec);
        errno = fd < 0 ? Marshal.GetLastPInvokeError() : 0;
        return fd;
    }

    private const int Esrch = 3, Eacces = 13;

    private static string Describe(int errno) => Describe(errno, Paranoid());

    /// <summary>kernel.perf_event_paranoid, or null where it cannot be read.</summary>
    private static int? Paranoid()
    {
        try
        {
            return int.TryParse(File.ReadAllText("/proc/sys/kernel/perf_event_paranoid").Trim(), System.Globalization.NumberStyles.AllowLeadingSign,
                System.Globalization.CultureInfo.InvariantCulture, out int v) ? v : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>
    /// Why perf_event_open failed with <paramref name="errno"/> under <paramref name="paranoid"/>. Debian's and Ubuntu's
    /// paranoid 3 and 4 refuse every unprivileged open with EACCES, user-only ones included: that was described as
    /// paranoid 2's user-mode-only limit, wrong for the events already opened user-only.
    /// </summary>
    internal static string Describe(int errno, int? paranoid) => errno switch
    {
        2 => "ENOENT (this CPU or hypervisor does not expose the event)",
        95 => "EOPNOTSUPP (the PMU is not exposed, as in most virtual machines)",
        13 when paranoid >= 3 => $"EACCES (kernel.perf_event_paranoid is {paranoid}: no perf events at all without CAP_PERFMON; `sysctl kernel.perf_event_paranoid=2` allows user-mode counting, 1 kernel-mode too)",
        13 => "EACCES (kernel.perf_event_paranoid forbids it: 2 allows user-mode counting only, which this event cannot do; `sysctl kernel.perf_event_paranoid=1` or CAP_PERFMON allows it)",
        1 => "EPERM (perf_event_open is blocked, e.g. by a container's seccomp profile, or perf_event_paranoid is 3+)",
        38 => "ENOSYS (the kernel has no perf events)",
        19 => "ENODEV (no such PMU)",
        22 => "EINVAL",
        _ => $"errno {errno}",
    };

    public void Dispose()
    {
        foreach (var list in _fds)
        {
            foreach (int fd in list) close(fd);
            list.Clear();
        }
    }

    [DllImport("libc", SetLastError = true)]
    private static extern long syscall(long number, byte* attr, int pid, int cpu, int groupFd, ulong flags);

    [DllImport("libc", SetLastError = true)]
    private static extern nint read(int fd, long* buffer, nint count);

    [DllImport("libc")]
    private static extern int close(int fd);
}
