using System.Diagnostics;
using BitNetSharp.Threading;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// `quick-wake [rounds] [trials]`: whether a two-thread <see cref="WorkerPool"/>'s worker takes part in short calls right
/// after it has slept (the pattern of a small model's decode after an idle moment: one 16-item call of ~2 µs items,
/// then ~100 µs of work on the caller alone, repeated). Per trial: the pool idles 50 ms (the worker blocks), then
/// <c>rounds</c> calls; prints 1 for each call where the worker ran an item, 0 where the caller did them all, the
/// trial's time, and the pool's <see cref="WorkerPool.Separations"/>.
/// </summary>
public static class QuickWorkerWake
{
    private sealed class Items : IParallelWork
    {
        public int ByWorker;

        public void Execute(int start, int end, int worker)
        {
            for (int i = start; i < end; i++)
            {
                long until = Stopwatch.GetTimestamp() + Stopwatch.Frequency / 500_000; // 2 µs
                while (Stopwatch.GetTimestamp() < until) { }
            }
            if (worker > 0) Interlocked.Increment(ref ByWorker);
        }
    }

    public static void Run(int rounds, int trials)
    {
        using var pool = new WorkerPool(2);
        var work = new Items();
        Console.WriteLine($"two threads; per trial: 50 ms idle, then {rounds} calls of 16 × 2 µs items, 100 µs of caller work between calls");
        for (int trial = 0; trial < trials; trial++)
        {
            Thread.Sleep(50);
            var marks = new char[rounds];
            var clock = Stopwatch.StartNew();
            for (int r = 0; r < rounds; r++)
            {
                work.ByWorker = 0;
                pool.Run(work, 16, 1);
                marks[r] = work.ByWorker > 0 ? '1' : '0';
                long until = Stopwatch.GetTimestamp() + Stopwatch.Frequency / 10_000;
                while (Stopwatch.GetTimestamp() < until) { }
            }
            int joined = marks.Count(c => c == '1');
            Console.WriteLine($"  trial {trial + 1}: {clock.Elapsed.TotalMilliseconds,6:F1} ms, worker in {joined}/{rounds} calls, separations so far {pool.Separations}: {new string(marks, 0, Math.Min(rounds, 100))}");
        }
    }
}
