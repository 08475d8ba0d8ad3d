using BitNetSharp.Threading;

namespace BitNetSharp.Tests.Threading;

/// <summary>--cpus: parsing CPU lists and pinning each pool thread to its CPU.</summary>
public class ThreadPlacementTests
{
    [Fact]
    public void CpuListsParseRangesAndRejectBadOrMissingCpus()
    {
        var allowed = ThreadPlacement.ProcessCpus();
        int first = allowed.Length > 0 ? allowed[0] : 0;
        Assert.Equal([first], ThreadPlacement.ParseCpuList(first.ToString(System.Globalization.CultureInfo.InvariantCulture)));
        if (allowed is [0, 1, ..] || allowed.Length == 0 && Environment.ProcessorCount >= 2) Assert.Equal([0, 1, 0], ThreadPlacement.ParseCpuList("0-1, 0"));
        Assert.Contains("'x'", Assert.Throws<ArgumentException>(() => ThreadPlacement.ParseCpuList("x")).Message);
        Assert.Contains("'3-1'", Assert.Throws<ArgumentException>(() => ThreadPlacement.ParseCpuList("3-1")).Message);
        Assert.Contains("'-1'", Assert.Throws<ArgumentException>(() => ThreadPlacement.ParseCpuList("-1")).Message);
        Assert.Contains("not one this process may run on", Assert.Throws<ArgumentException>(() => ThreadPlacement.ParseCpuList("4096")).Message);
        Assert.Contains("empty", Assert.Throws<ArgumentException>(() => ThreadPlacement.ParseCpuList(" , ")).Message);
        // An empty entry ran as the list without it (`--cpus 0,,2` as 0,2).
        Assert.Contains("entry 2 is empty", Assert.Throws<ArgumentException>(() => ThreadPlacement.ParseCpuList($"{first},,{first}")).Message);
    }

    /// <summary>Pin refuses CPU numbers outside its 1024-CPU mask: 1024 wrote past the stack buffer, and −1 pinned to CPU 63.</summary>
    [Fact]
    public void PinRefusesCpusOutsideItsMask()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "sched_setaffinity is Linux's");
        using var pool = new WorkerPool(1);
        Assert.Throws<ArgumentOutOfRangeException>(() => ThreadPlacement.Pin(pool, [1024]));
        Assert.Throws<ArgumentOutOfRangeException>(() => ThreadPlacement.Pin(pool, [-1]));
        Assert.Throws<ArgumentException>(() => ThreadPlacement.Pin(pool, []));
    }

    /// <summary>
    /// A process limited to CPU 1 (taskset; a container's cpuset) may name CPU 1: the check counted CPUs
    /// (Environment.ProcessorCount is 1 there) and refused it as "does not exist".
    /// </summary>
    [Fact]
    public void TheCpusAProcessMayUseAreTheOnesItMayName()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux() && Environment.ProcessorCount >= 2 && ThreadPlacement.ProcessCpus().Contains(1), "needs Linux and CPU 1");
        string exe = Path.Combine(AppContext.BaseDirectory, "bitnet");
        string? taskset = new[] { "/usr/bin/taskset", "/bin/taskset" }.FirstOrDefault(File.Exists);
        Assert.SkipUnless(File.Exists(exe) && taskset is not null, "needs the CLI's apphost and taskset (util-linux)");
        var psi = new System.Diagnostics.ProcessStartInfo(taskset!) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        // --json --csv is refused right after --cpus is read: the error says which check came first.
        foreach (var a in new[] { "-c", "1", exe, "bench", "--bandwidth-only", "--cpus", "1", "--json", "--csv" }) psi.ArgumentList.Add(a);
        using var p = System.Diagnostics.Process.Start(psi)!;
        string error = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.Equal(2, p.ExitCode);
        Assert.Contains("--json and --csv", error);
    }

    private sealed class WhereAmI(int threads) : IParallelWork
    {
        public readonly int[] Cpus = new int[threads];

        public void Execute(int start, int end, int worker)
        {
            var until = DateTime.UtcNow.AddMilliseconds(2); // long enough for a migration to have happened if allowed
            while (DateTime.UtcNow < until) Thread.SpinWait(20);
            Cpus[worker] = ThreadPlacement.CurrentCpu();
        }
    }

    [Fact]
    public void PinnedWorkersRunOnTheirCpu()
    {
        if (!OperatingSystem.IsLinux())
        {
            using var p = new WorkerPool(2);
            Assert.Throws<PlatformNotSupportedException>(() => ThreadPlacement.Pin(p, [0]));
            return;
        }
        int last = Environment.ProcessorCount - 1;
        // Pin in a thread of its own: worker 0 is the calling thread, which stays pinned.
        int[]? seen = null;
        var thread = new Thread(() =>
        {
            using var pool = new WorkerPool(2);
            ThreadPlacement.Pin(pool, [last, 0]);
            var work = new WhereAmI(2);
            pool.Run(work, 2);
            seen = work.Cpus;
        });
        thread.Start();
        thread.Join();
        Assert.Equal([last, 0], seen!);
    }
}

/// <summary>
/// A worker that finds itself on the calling thread's CPU moves off it (WorkerPool, Linux): after a sleep the kernel
/// often wakes a worker on its waker's CPU, and across last-level caches leaves it there, so the caller did all the work.
/// </summary>
public class WorkerSeparationTests
{
    private sealed class Allow(int[] cpus) : IParallelWork
    {
        public readonly int[] Ran = [-1, -1];
        public bool Refused;

        public void Execute(int start, int end, int worker)
        {
            if (worker == 1 && !ThreadPlacement.Allow(cpus)) Refused = true;
            Ran[worker] = ThreadPlacement.CurrentCpu();
        }
    }

    [Fact]
    public void MoveOffLeavesTheCpuAndKeepsTheAllowedSet()
    {
        var allowed = ThreadPlacement.AllowedCpus();
        Assert.SkipUnless(OperatingSystem.IsLinux() && allowed.Length >= 2, "needs Linux and two allowed CPUs");
        int[] after = [];
        int from = -1, to = -1, attempts = 0;
        bool moved = false;
        var t = new Thread(() =>
        {
            // MoveOff restores the allowed set before it returns, so the scheduler may put the thread back on the CPU
            // it left before the next read (a GC suspension, a preemption): an attempt counts when the read saw it away.
            for (attempts = 1; attempts <= 20; attempts++)
            {
                from = ThreadPlacement.CurrentCpu();
                moved = ThreadPlacement.MoveOff(from);
                to = ThreadPlacement.CurrentCpu();
                if (!moved || to != from) break;
            }
            after = ThreadPlacement.AllowedCpus();
        });
        t.Start();
        t.Join();
        Assert.True(moved);
        Assert.True(from != to, $"back on CPU {from} after each of {attempts - 1} moves");
        Assert.Equal(allowed, after); // moved, not pinned
        Assert.False(ThreadPlacement.MoveOff(99999)); // no such CPU: nothing done
    }

    [Fact]
    public void AWorkerOnTheCallersCpuMovesOffIt()
    {
        var allowed = ThreadPlacement.AllowedCpus();
        Assert.SkipUnless(OperatingSystem.IsLinux() && allowed.Length >= 2, "needs Linux and two allowed CPUs");
        int x = allowed[0], y = allowed[1];
        int[] ran = [];
        long separations = 0;
        bool refused = false;
        int attempts = 0;
        // A woken thread goes to an idle CPU where one shares the cache (the kernel's select_idle_sibling): with y idle the
        // worker often woke on y, never on the caller's CPU, so there was nothing to move (CI: "separations: 0" at the first
        // attempt). A thread spinning on y keeps y busy, so the worker wakes where it last ran and where its waker is: x.
        bool stop = false;
        var spinner = new Thread(() =>
        {
            ThreadPlacement.Allow([y]);
            while (!Volatile.Read(ref stop)) Thread.SpinWait(64);
        }) { IsBackground = true };
        spinner.Start();
        var t = new Thread(() =>
        {
            Assert.True(ThreadPlacement.Allow([x])); // the caller on x (this thread only)
            using var pool = new WorkerPool(2);
            // On a loaded machine the scheduler may still wake the worker elsewhere, or put it back on x right after it
            // moved off, before it reads its CPU: an attempt counts when the worker was moved and then ran off x.
            for (attempts = 1; attempts <= 20; attempts++)
            {
                var onX = new Allow([x]);
                pool.Run(onX, 2); // static slices: item 1 on the worker, which now may run on x only
                var widen = new Allow([x, y]);
                pool.Run(widen, 2); // may run on x or y, still on x: widening does not migrate a thread
                Thread.Sleep(3);    // past the worker's once-a-millisecond limit
                long before = pool.Separations;
                var probe = new Allow([x, y]);
                pool.Run(probe, 2);
                ran = probe.Ran;
                refused |= onX.Refused || widen.Refused || probe.Refused;
                if (pool.Separations > before && ran[1] != x) break;
            }
            separations = pool.Separations;
        });
        t.Start();
        t.Join();
        Volatile.Write(ref stop, true);
        spinner.Join();
        Assert.False(refused, "the kernel refused an affinity change");
        Assert.Equal(x, ran[0]);
        Assert.True(ran[1] != x, $"the worker stayed on the caller's CPU in {attempts - 1} attempts"); // it left the caller's CPU
        Assert.True(separations >= 1, $"separations: {separations}");
    }
}
