using System.Globalization;
using System.Runtime.InteropServices;

namespace BitNetSharp.Threading;

/// <summary>
/// Pins each thread of a <see cref="WorkerPool"/> to one CPU (Linux sched_setaffinity): worker i to cpus[i mod n].
/// Each thread pins itself — a static-slice run of one item per thread hands worker i exactly item i — so no thread
/// ids are needed. The calling thread (worker 0) stays pinned until the handle <see cref="Pin"/> returns is disposed.
/// </summary>
public static unsafe class ThreadPlacement
{
    /// <summary>"0,2,4-7" → [0, 2, 4, 5, 6, 7]; every CPU must be one this process may run on.</summary>
    public static int[] ParseCpuList(string list, string option = "--cpus")
    {
        // The CPUs the process may use (its affinity, a container's cpuset), by number: Environment.ProcessorCount is a
        // count, so in a cpuset of CPUs 2-3 it refused 2 and 3 and let 0 and 1 through to a refused pin.
        var allowed = ProcessCpus();
        var cpus = new List<int>();
        string[] parts = list.Split(',', StringSplitOptions.TrimEntries);
        if (parts.Length == 1 && parts[0].Length == 0) parts = [];
        for (int i = 0; i < parts.Length; i++)
        {
            string part = parts[i];
            // An empty entry (`--cpus 0,,2`: a typo, or an empty variable) ran as 0,2 without a word.
            if (part.Length == 0) throw new ArgumentException($"{option} '{list}': entry {i + 1} is empty; give CPU numbers or ranges separated by commas (e.g. 0,2,4-7).");
            int dash = part.IndexOf('-');
            string a = dash < 0 ? part : part[..dash], b = dash < 0 ? part : part[(dash + 1)..];
            if (!int.TryParse(a, NumberStyles.None, CultureInfo.InvariantCulture, out int from) || !int.TryParse(b, NumberStyles.None, CultureInfo.InvariantCulture, out int to) || to < from)
                throw new ArgumentException($"{option}: '{part}' is not a CPU number or range (e.g. 0,2,4-7).");
            for (int c = from; c <= to; c++)
            {
                if (allowed.Length > 0 ? Array.IndexOf(allowed, c) < 0 : c >= Environment.ProcessorCount)
                    throw new ArgumentException($"{option}: CPU {c} is not one this process may run on (it may use {Describe(allowed.Length > 0 ? allowed : [.. Enumerable.Range(0, Environment.ProcessorCount)])}).");
                cpus.Add(c);
            }
        }
        if (cpus.Count == 0) throw new ArgumentException($"{option}: the list is empty; give CPU numbers such as 0,1 or 0-3.");
        return [.. cpus];
    }

    /// <summary>
    /// Pins worker i of <paramref name="pool"/> to <paramref name="cpus"/>[i mod cpus.Length]. Worker 0 is the calling
    /// thread: dispose the result on that thread to give it back the CPUs it had (a command run in-process, as the tests
    /// run `bitnet profile --cpus 0`, left its caller pinned to CPU 0 for whatever ran on that thread next).
    /// </summary>
    /// <exception cref="PlatformNotSupportedException">Not Linux.</exception>
    /// <exception cref="InvalidOperationException">The kernel refused (e.g. a CPU outside this container's cpuset).</exception>
    public static CallerAffinity Pin(WorkerPool pool, int[] cpus)
    {
        if (!OperatingSystem.IsLinux()) throw new PlatformNotSupportedException("--cpus pins threads with sched_setaffinity, which only Linux has.");
        ArgumentNullException.ThrowIfNull(cpus);
        if (cpus.Length == 0) throw new ArgumentException("--cpus: no CPU given.", nameof(cpus));
        // The mask holds CPUs 0..1023: a number past it wrote outside the buffer, and −1 pinned to CPU 63.
        foreach (int cpu in cpus)
            if ((uint)cpu >= MaxCpus) throw new ArgumentOutOfRangeException(nameof(cpus), cpu, $"--cpus: CPU {cpu} is outside 0..{MaxCpus - 1}.");
        var caller = new CallerAffinity(AllowedCpus());
        var work = new PinWork(cpus);
        pool.Run(work, pool.ThreadCount);
        if (work.Error is { } e)
        {
            caller.Dispose();
            throw new InvalidOperationException(e);
        }
        return caller;
    }

    /// <summary>The calling thread's CPUs before <see cref="Pin"/>, given back on dispose (on that thread; once).</summary>
    public sealed class CallerAffinity : IDisposable
    {
        private readonly int[] _cpus;
        private readonly int _thread = Environment.CurrentManagedThreadId;
        private int _disposed;

        internal CallerAffinity(int[] cpus) => _cpus = cpus;

        public void Dispose()
        {
            // The thread first: a call from another thread does nothing and leaves the handle for the right one.
            if (Environment.CurrentManagedThreadId != _thread || _cpus.Length == 0 || Interlocked.Exchange(ref _disposed, 1) != 0) return;
            Allow(_cpus);
        }
    }

    /// <summary>The CPUs an affinity mask here can name (16 × 64 bits).</summary>
    public const int MaxCpus = 1024;

    /// <summary>The CPU the calling thread runs on now (Linux), or −1.</summary>
    public static int CurrentCpu() => OperatingSystem.IsLinux() ? sched_getcpu() : -1;

    /// <summary>
    /// Whether this process can ask the kernel which CPU a thread runs on and move it (Linux with a C library that has
    /// sched_getcpu, sched_getaffinity and sched_setaffinity); checked once, so a C library without them turns the
    /// worker pool's separation off instead of failing a worker thread.
    /// </summary>
    public static bool CanMoveThreads => s_canMove.Value;

    private static readonly Lazy<bool> s_canMove = new(() =>
    {
        if (!OperatingSystem.IsLinux()) return false;
        try
        {
            ulong* mask = stackalloc ulong[16];
            return sched_getcpu() >= 0 && sched_getaffinity(0, 16 * sizeof(ulong), mask) == 0;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return false;
        }
    });

    /// <summary>
    /// Moves the calling thread off <paramref name="cpu"/> without pinning it (Linux): its allowed set without that CPU
    /// for a moment (the kernel migrates it to another allowed CPU at once), then the allowed set as it was. Nothing
    /// happens when that CPU is the only one allowed or not allowed at all. Returns whether the thread was moved.
    /// </summary>
    public static bool MoveOff(int cpu)
    {
        if (!OperatingSystem.IsLinux() || cpu < 0 || cpu >= 16 * 64) return false;
        ulong* allowed = stackalloc ulong[16];
        ulong* without = stackalloc ulong[16];
        new Span<ulong>(allowed, 16).Clear();
        if (sched_getaffinity(0, 16 * sizeof(ulong), allowed) != 0) return false;
        ulong bit = 1UL << (cpu % 64);
        if ((allowed[cpu / 64] & bit) == 0) return false;
        bool others = false;
        for (int i = 0; i < 16; i++)
        {
            without[i] = i == cpu / 64 ? allowed[i] & ~bit : allowed[i];
            others |= without[i] != 0;
        }
        if (!others || sched_setaffinity(0, 16 * sizeof(ulong), without) != 0) return false;
        sched_setaffinity(0, 16 * sizeof(ulong), allowed);
        return true;
    }

    private sealed class PinWork(int[] cpus) : IParallelWork
    {
        public string? Error;

        public void Execute(int start, int end, int worker)
        {
            ulong* mask = stackalloc ulong[16]; // 1024 CPUs
            for (int item = start; item < end; item++)
            {
                int cpu = cpus[item % cpus.Length];
                new Span<ulong>(mask, 16).Clear();
                mask[cpu / 64] |= 1UL << (cpu % 64);
                if (sched_setaffinity(0, 16 * sizeof(ulong), mask) != 0)
                    Error ??= $"--cpus: the kernel refused to pin worker {item} to CPU {cpu} (errno {Marshal.GetLastPInvokeError()}; is it outside this container's cpuset?).";
            }
        }
    }

    /// <summary>The CPUs the calling thread may run on (Linux; empty elsewhere or if the kernel refuses).</summary>
    /// <summary>The CPUs the process (its main thread's affinity) may run on, Linux; empty elsewhere or when the kernel does not say.</summary>
    internal static int[] ProcessCpus()
    {
        if (!OperatingSystem.IsLinux()) return [];
        ulong* mask = stackalloc ulong[16];
        new Span<ulong>(mask, 16).Clear();
        if (sched_getaffinity(Environment.ProcessId, 16 * sizeof(ulong), mask) != 0) return [];
        var cpus = new List<int>();
        for (int c = 0; c < 16 * 64; c++)
            if ((mask[c / 64] & (1UL << (c % 64))) != 0) cpus.Add(c);
        return [.. cpus];
    }

    /// <summary>"0-3,6" for [0, 1, 2, 3, 6].</summary>
    internal static string Describe(int[] cpus)
    {
        var parts = new List<string>();
        for (int i = 0; i < cpus.Length;)
        {
            int j = i;
            while (j + 1 < cpus.Length && cpus[j + 1] == cpus[j] + 1) j++;
            parts.Add(j == i ? cpus[i].ToString(CultureInfo.InvariantCulture) : string.Create(CultureInfo.InvariantCulture, $"{cpus[i]}-{cpus[j]}"));
            i = j + 1;
        }
        return string.Join(',', parts);
    }

    internal static int[] AllowedCpus()
    {
        if (!OperatingSystem.IsLinux()) return [];
        ulong* mask = stackalloc ulong[16];
        new Span<ulong>(mask, 16).Clear();
        if (sched_getaffinity(0, 16 * sizeof(ulong), mask) != 0) return [];
        var cpus = new List<int>();
        for (int c = 0; c < 16 * 64; c++)
            if ((mask[c / 64] & (1UL << (c % 64))) != 0) cpus.Add(c);
        return [.. cpus];
    }

    /// <summary>Lets the calling thread run on <paramref name="cpus"/> only (Linux); false if the kernel refuses.</summary>
    internal static bool Allow(ReadOnlySpan<int> cpus)
    {
        if (!OperatingSystem.IsLinux()) return false;
        ulong* mask = stackalloc ulong[16];
        new Span<ulong>(mask, 16).Clear();
        foreach (int c in cpus)
        {
            if ((uint)c >= MaxCpus) return false;
            mask[c / 64] |= 1UL << (c % 64);
        }
        return sched_setaffinity(0, 16 * sizeof(ulong), mask) == 0;
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int sched_setaffinity(int pid, nint size, ulong* mask);

    [DllImport("libc", SetLastError = true)]
    private static extern int sched_getaffinity(int pid, nint size, ulong* mask);

    [DllImport("libc")]
    private static extern int sched_getcpu();
}
