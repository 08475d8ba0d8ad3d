using System.Globalization;
using System.Runtime.InteropServices;

namespace BitNetSharp.Threading;

/// <summary>
/// Pins each thread of a <see cref="WorkerPool"/> to one CPU (Linux sched_setaffinity): worker i to cpus[i mod n].
/// Each thread pins itself — a static-slice run of one item per thread hands worker i exactly item i — so no thread
/// ids are needed. The calling thread (worker 0) stays pinned afterwards.
/// </summary>
public static unsafe class ThreadPlacement
{
    /// <summary>"0,2,4-7" → [0, 2, 4, 5, 6, 7]; every CPU must exist on this machine.</summary>
    public static int[] ParseCpuList(string list, string option = "--cpus")
    {
        var cpus = new List<int>();
        foreach (var part in list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int dash = part.IndexOf('-');
            string a = dash < 0 ? part : part[..dash], b = dash < 0 ? part : part[(dash + 1)..];
            if (!int.TryParse(a, NumberStyles.None, CultureInfo.InvariantCulture, out int from) || !int.TryParse(b, NumberStyles.None, CultureInfo.InvariantCulture, out int to) || to < from)
                throw new ArgumentException($"{option}: '{part}' is not a CPU number or range (e.g. 0,2,4-7).");
            for (int c = from; c <= to; c++)
            {
                if (c >= Environment.ProcessorCount)
                    throw new ArgumentException($"{option}: CPU {c} does not exist here (this process sees CPUs 0–{Environment.ProcessorCount - 1}).");
                cpus.Add(c);
            }
        }
        if (cpus.Count == 0) throw new ArgumentException($"{option}: the list is empty; give CPU numbers such as 0,1 or 0-3.");
        return [.. cpus];
    }

    /// <summary>Pins worker i of <paramref name="pool"/> to <paramref name="cpus"/>[i mod cpus.Length].</summary>
    /// <exception cref="PlatformNotSupportedException">Not Linux.</exception>
    /// <exception cref="InvalidOperationException">The kernel refused (e.g. a CPU outside this container's cpuset).</exception>
    public static void Pin(WorkerPool pool, int[] cpus)
    {
        if (!OperatingSystem.IsLinux()) throw new PlatformNotSupportedException("--cpus pins threads with sched_setaffinity, which only Linux has.");
        var work = new PinWork(cpus);
        pool.Run(work, pool.ThreadCount);
        if (work.Error is { } e) throw new InvalidOperationException(e);
    }

    /// <summary>The CPU the calling thread runs on now (Linux), or −1.</summary>
    public static int CurrentCpu() => OperatingSystem.IsLinux() ? sched_getcpu() : -1;

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

    [DllImport("libc", SetLastError = true)]
    private static extern int sched_setaffinity(int pid, nint size, ulong* mask);

    [DllImport("libc")]
    private static extern int sched_getcpu();
}
