using BitNetSharp.Threading;

namespace BitNetSharp.Tests.Threading;

/// <summary>--cpus: parsing CPU lists and pinning each pool thread to its CPU.</summary>
public class ThreadPlacementTests
{
    [Fact]
    public void CpuListsParseRangesAndRejectBadOrMissingCpus()
    {
        Assert.Equal([0], ThreadPlacement.ParseCpuList("0"));
        if (Environment.ProcessorCount >= 2) Assert.Equal([0, 1, 0], ThreadPlacement.ParseCpuList("0-1, 0"));
        Assert.Contains("'x'", Assert.Throws<ArgumentException>(() => ThreadPlacement.ParseCpuList("x")).Message);
        Assert.Contains("'3-1'", Assert.Throws<ArgumentException>(() => ThreadPlacement.ParseCpuList("3-1")).Message);
        Assert.Contains("'-1'", Assert.Throws<ArgumentException>(() => ThreadPlacement.ParseCpuList("-1")).Message);
        Assert.Contains("does not exist", Assert.Throws<ArgumentException>(() => ThreadPlacement.ParseCpuList("4096")).Message);
        Assert.Contains("empty", Assert.Throws<ArgumentException>(() => ThreadPlacement.ParseCpuList(" , ")).Message);
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
