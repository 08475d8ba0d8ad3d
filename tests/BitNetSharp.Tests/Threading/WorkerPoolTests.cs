using BitNetSharp.Threading;

namespace BitNetSharp.Tests.Threading;

public class WorkerPoolTests
{
    private sealed class MarkWork(int[] marks) : IParallelWork
    {
        public void Execute(int start, int end, int worker)
        {
            for (int i = start; i < end; i++) Interlocked.Increment(ref marks[i]);
        }
    }

    private sealed class FailingWork2 : IParallelWork
    {
        public void Execute(int start, int end, int worker) => throw new InvalidOperationException("boom");
    }

    private sealed class FailingWork : IParallelWork
    {
        public void Execute(int start, int end, int worker)
        {
            if (worker == 1) throw new InvalidOperationException("boom");
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(4)]
    public void EveryItemRunsExactlyOnceAcrossManyCalls(int threads)
    {
        using var pool = new WorkerPool(threads);
        foreach (int count in new[] { 1, 2, 3, 7, 640, 2561 })
        {
            var marks = new int[count];
            var work = new MarkWork(marks);
            for (int call = 0; call < 200; call++) pool.Run(work, count);
            Assert.All(marks, m => Assert.Equal(200, m));
        }
    }

    private sealed class NestedWork(WorkerPool pool, int[] marks) : IParallelWork
    {
        public Exception? Inner;

        public void Execute(int start, int end, int worker)
        {
            if (worker != 0) return;
            try
            {
                pool.Run(new MarkWork(marks), marks.Length);
            }
            catch (Exception e)
            {
                Inner = e;
            }
        }
    }

    /// <summary>
    /// A call made while another runs on the same pool is refused: it overwrote the running call's work and counters,
    /// so items went missing and the outer call then waited for ever.
    /// </summary>
    [Fact]
    public async Task ANestedCallIsRefusedAndTheOuterOneFinishes()
    {
        using var pool = new WorkerPool(2);
        var marks = new int[8];
        var nested = new NestedWork(pool, marks);
        await Task.Run(() => pool.Run(nested, 2), TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken);
        Assert.IsType<InvalidOperationException>(nested.Inner);
        Assert.All(marks, m => Assert.Equal(0, m));
        pool.Run(new MarkWork(marks), marks.Length); // the pool is usable afterwards
        Assert.All(marks, m => Assert.Equal(1, m));
    }

    /// <summary>Records every chunk it is given (thread-safe).</summary>
    private sealed class ChunkLog(int count, Func<int, int, int, bool>? before = null) : IParallelWork
    {
        public readonly int[] Marks = new int[count];
        public readonly System.Collections.Concurrent.ConcurrentBag<(int Start, int End, int Worker)> Chunks = new();

        public void Execute(int start, int end, int worker)
        {
            before?.Invoke(start, end, worker);
            Chunks.Add((start, end, worker));
            for (int i = start; i < end; i++) Interlocked.Increment(ref Marks[i]);
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(4)]
    public void ChunkedRunsEveryItemExactlyOnceInWholeChunks(int threads)
    {
        using var pool = new WorkerPool(threads);
        foreach (int count in new[] { 1, 2, 7, 640, 2561 })
            foreach (int grain in new[] { 1, 3, 64, 5000 })
            {
                var work = new ChunkLog(count);
                for (int call = 0; call < 20; call++) pool.Run(work, count, grain);
                Assert.All(work.Marks, m => Assert.Equal(20, m));
                if (threads == 1 || grain >= count)
                {
                    Assert.All(work.Chunks, c => Assert.Equal((0, count, 0), c)); // the whole range on the calling thread
                    continue;
                }
                foreach (var (start, end, worker) in work.Chunks)
                {
                    Assert.True(end - start <= grain, $"chunk [{start}, {end}) is longer than the grain {grain}");
                    Assert.Equal(0, start % grain); // chunks are cut at multiples of the grain
                    Assert.InRange(worker, 0, threads - 1);
                }
            }
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public void GuidedChunksShrinkToTheMinimumAndCoverEveryItemOnce(int threads)
    {
        using var pool = new WorkerPool(threads);
        foreach (int count in new[] { 300, 4097, 128256 })
        {
            const int grain = 8016, minGrain = 256;
            var log = new ChunkLog(count);
            pool.Run(log, count, grain, minGrain);
            Assert.All(log.Marks, m => Assert.Equal(1, m));
            var chunks = log.Chunks.OrderBy(c => c.Start).ToArray();
            for (int i = 0; i < chunks.Length; i++)
            {
                int size = chunks[i].End - chunks[i].Start;
                bool last = chunks[i].End == count;
                Assert.True(size <= grain, $"chunk {chunks[i]} is longer than the grain");
                if (!last) Assert.True(size >= minGrain && size % minGrain == 0, $"chunk {chunks[i]} is not a whole multiple of {minGrain}");
                // Each claim takes at most half of what is left per thread (or the minimum, or the rest).
                int left = count - chunks[i].Start;
                Assert.True(size <= Math.Max(minGrain, left / (2 * threads)) || size == left, $"chunk {chunks[i]} takes too much of the {left} items left");
                if (i > 0) Assert.True(size <= chunks[i - 1].End - chunks[i - 1].Start || last, "claims must not grow");
            }
            if (count == 128256)
            {
                Assert.Equal(grain / minGrain * minGrain, chunks[0].End - chunks[0].Start);
                Assert.Equal(minGrain, chunks[^2].End - chunks[^2].Start);
            }
        }
    }

    [Fact]
    public void ChunksGoToTheThreadThatIsFree()
    {
        using var pool = new WorkerPool(2);
        // The worker stalls on its first chunk until the calling thread has run every other one (a 300 ms sleep was the
        // stall, which a loaded host could outlast before the caller got going); the caller must not wait for it.
        int stalled = 0, byCallerSoFar = 0;
        using var release = new ManualResetEventSlim(false);
        var work = new ChunkLog(200, (start, end, worker) =>
        {
            if (worker == 1 && Interlocked.Exchange(ref stalled, 1) == 0) release.Wait(TimeSpan.FromSeconds(10));
            if (worker == 0 && Interlocked.Add(ref byCallerSoFar, end - start) >= 199) release.Set();
            return true;
        });
        pool.Run(work, 200, grain: 1);
        Assert.All(work.Marks, m => Assert.Equal(1, m));
        int byCaller = work.Chunks.Count(c => c.Worker == 0);
        Assert.True(byCaller >= 150, $"the calling thread ran {byCaller} of 200 chunks while the worker was stalled");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(4)]
    public void OwnedRunsEveryItemOnceInClaimsFromEitherEndOfOneRange(int threads)
    {
        using var pool = new WorkerPool(threads);
        var rng = new Random(5);
        foreach (int count in new[] { 0, 1, 7, 640, 2561 })
            foreach (int grain in new[] { 1, 3, 64, 5000 })
            {
                // Random owned ranges, some empty.
                var cuts = Enumerable.Range(0, threads - 1).Select(_ => rng.Next(count + 1)).Order().ToList();
                int[] bounds = [0, .. cuts, count];
                var work = new ChunkLog(count);
                for (int call = 0; call < 20; call++) pool.RunOwned(work, bounds, grain);
                Assert.All(work.Marks, m => Assert.Equal(20, m));
                if (threads == 1)
                {
                    Assert.All(work.Chunks, c => Assert.Equal((0, count, 0), c));
                    continue;
                }
                foreach (var (start, end, worker) in work.Chunks)
                {
                    int owner = Enumerable.Range(0, threads).Single(o => bounds[o] <= start && start < bounds[o + 1]);
                    Assert.True(end <= bounds[owner + 1], $"claim [{start}, {end}) crosses the end of owner {owner}'s range {bounds[owner + 1]}");
                    // The owner's claims from the front: half of what is left, at least a grain; the others' from the
                    // back: a grain.
                    if (worker == owner)
                        Assert.True(end - start <= Math.Max(grain, (bounds[owner + 1] - start + 1) / 2) || bounds[owner + 1] - end == 0,
                            $"owner's claim [{start}, {end}) of [{bounds[owner]}, {bounds[owner + 1]}) is more than half of what was left");
                    else
                        Assert.True(end - start <= grain && (bounds[owner + 1] - end) % grain == 0,
                            $"claim [{start}, {end}) by thread {worker} is not a grain ({grain}) from the back of [{bounds[owner]}, {bounds[owner + 1]})");
                    Assert.InRange(worker, 0, threads - 1);
                }
            }
    }

    /// <summary>
    /// A worker that has not joined a call by the time the caller has run out of items (it is queued behind other work on
    /// a busy machine) is not waited for when any thread may take any chunk (a grain, owned ranges): the caller ran every
    /// call of a decode step and then waited for the worker to be scheduled, ~4× slower than one thread beside one busy
    /// process. Calls of slices (no grain) still wait, since a slice belongs to its thread. Every item runs once either way.
    /// </summary>
    [Fact]
    public async Task ACallDoesNotWaitForAWorkerThatHasNotJoinedItUnlessItOwnsASlice()
    {
        using var pool = new WorkerPool(2);
        using var release = new ManualResetEventSlim(false);
        using var releaseSlices = new ManualResetEventSlim(false);
        var gate = release;
        int held = 0;
        pool.BeforeJoin = worker =>
        {
            if (Interlocked.Exchange(ref held, 1) == 0) Volatile.Read(ref gate).Wait(TimeSpan.FromSeconds(30));
        };
        var work = new ChunkLog(64);
        var calls = Task.Run(() =>
        {
            for (int call = 0; call < 50; call++)
            {
                pool.Run(work, 64, grain: 4);
                pool.Run(work, 64, grain: 16, minGrain: 4);
                pool.RunOwned(work, [0, 32, 64], grain: 4);
            }
        }, TestContext.Current.CancellationToken);
        bool finished = await Task.WhenAny(calls, Task.Delay(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken)) == calls;
        release.Set();
        await calls;
        Assert.True(finished, "150 calls waited for a worker held back before joining");
        Assert.All(work.Marks, m => Assert.Equal(150, m));
        Assert.All(work.Chunks, c => Assert.Equal(0, c.Worker)); // the held worker joined none of them

        // Slices: the call waits for the worker (its slice runs on it), then the pool goes on with both threads.
        Volatile.Write(ref gate, releaseSlices);
        Volatile.Write(ref held, 0);
        var slices = new ChunkLog(64);
        var sliced = Task.Run(() => pool.Run(slices, 64), TestContext.Current.CancellationToken);
        Assert.False(await Task.WhenAny(sliced, Task.Delay(200, TestContext.Current.CancellationToken)) == sliced, "a call of slices ended without its worker");
        releaseSlices.Set();
        await sliced;
        Assert.Contains(slices.Chunks, c => c.Worker == 1 && c.Start == 32 && c.End == 64);
        Assert.All(slices.Marks, m => Assert.Equal(1, m));
    }

    /// <summary>
    /// Four pools of four threads on whatever cores the host has (two in CI): workers are preempted, skipped by callers
    /// that ran out of items, and join later calls. Every item of every call runs exactly once, in every mode.
    /// </summary>
    [Fact]
    public async Task OversubscribedPoolsRunEveryItemOnceInEveryMode()
    {
        var failures = new System.Collections.Concurrent.ConcurrentQueue<string>();
        var runners = Enumerable.Range(0, 4).Select(p => Task.Run(() =>
        {
            using var pool = new WorkerPool(4);
            var random = new Random(p);
            for (int call = 0; call < 400; call++)
            {
                int count = random.Next(1, 300);
                var work = new ChunkLog(count);
                int q1 = random.Next(count + 1), q2 = random.Next(q1, count + 1), q3 = random.Next(q2, count + 1);
                switch (call % 4)
                {
                    case 0: pool.Run(work, count); break;
                    case 1: pool.Run(work, count, grain: random.Next(1, 20)); break;
                    case 2: pool.Run(work, count, grain: 16, minGrain: random.Next(1, 16)); break;
                    default: pool.RunOwned(work, [0, q1, q2, q3, count], grain: random.Next(1, 20), minGrain: random.Next(0, 4)); break;
                }
                for (int i = 0; i < count; i++)
                    if (work.Marks[i] != 1) failures.Enqueue($"pool {p}, call {call} (mode {call % 4}): item {i} of {count} ran {work.Marks[i]} times");
            }
        }, TestContext.Current.CancellationToken)).ToArray();
        await Task.WhenAll(runners).WaitAsync(TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken);
        Assert.Empty(failures);
    }

    [Fact]
    public void OwnedRangeOfAStalledThreadIsTakenByTheOther()
    {
        using var pool = new WorkerPool(2);
        // The worker stalls on its first claim (the first half of its range) until the calling thread has run 150 items;
        // the calling thread must finish its own range and then the rest of the worker's, from the back.
        int stalled = 0, byCallerSoFar = 0;
        using var release = new ManualResetEventSlim(false);
        var work = new ChunkLog(200, (start, end, worker) =>
        {
            if (worker == 1 && Interlocked.Exchange(ref stalled, 1) == 0) release.Wait(TimeSpan.FromSeconds(10));
            if (worker == 0 && Interlocked.Add(ref byCallerSoFar, end - start) >= 150) release.Set();
            return true;
        });
        pool.RunOwned(work, [0, 100, 200], grain: 1);
        Assert.All(work.Marks, m => Assert.Equal(1, m));
        var taken = work.Chunks.Where(c => c.Worker == 0 && c.Start >= 100).Select(c => c.Start).ToList();
        Assert.True(taken.Count >= 45, $"the calling thread ran {taken.Count} of the worker's 100 items while the worker was stalled");
        Assert.Contains(199, taken); // from the back
        Assert.All(work.Chunks.Where(c => c.Worker == 1), c => Assert.True(c.Start >= 100, $"the worker ran item {c.Start} of the caller's range"));
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void OwnedClaimsWithALeastClaimRunEveryItemOnceAndStayWithinTheirBounds(int threads)
    {
        using var pool = new WorkerPool(threads);
        var rng = new Random(9);
        foreach (int count in new[] { 1, 7, 640, 2561 })
            foreach (var (grain, least) in new[] { (64, 8), (300, 1), (5000, 40), (16, 16) })
            {
                var cuts = Enumerable.Range(0, threads - 1).Select(_ => rng.Next(count + 1)).Order().ToList();
                int[] bounds = [0, .. cuts, count];
                var work = new ChunkLog(count);
                for (int call = 0; call < 20; call++) pool.RunOwned(work, bounds, grain, least);
                Assert.All(work.Marks, m => Assert.Equal(20, m));
                foreach (var (start, end, worker) in work.Chunks)
                {
                    int owner = Enumerable.Range(0, threads).Single(o => bounds[o] <= start && start < bounds[o + 1]);
                    Assert.True(end <= bounds[owner + 1], $"claim [{start}, {end}) crosses the end of owner {owner}'s range");
                    // At most half of what can be left (the range from the claim's start), unless that is under the
                    // least claim; another thread's claims at most a grain.
                    int left = bounds[owner + 1] - start;
                    Assert.True(end - start <= Math.Max(least, (left + 1) / 2) || end - start == left,
                        $"claim [{start}, {end}) of [{bounds[owner]}, {bounds[owner + 1]}) by thread {worker} is more than half of what was left");
                    if (worker != owner) Assert.True(end - start <= grain, $"claim [{start}, {end}) by thread {worker} is more than a grain ({grain})");
                }
            }
    }

    [Fact]
    public void OwnedClaimsShrinkToTheLeastClaimAndATakerLeavesTheOwnerHalf()
    {
        using var pool = new WorkerPool(2);
        // The worker stalls in its first claim ([1000, 1500): half of its range), so the calling thread runs its own range
        // alone, then takes from the back of the worker's (its first claim waits until the worker holds its own).
        // The stall lasts until the calling thread has run 1500 items (its range and the 500 it takes), not 300 ms.
        int stalled = 0, byCallerSoFar = 0;
        using var release = new ManualResetEventSlim(false);
        var work = new ChunkLog(2000, (start, end, worker) =>
        {
            if (worker == 1 && Interlocked.Exchange(ref stalled, 1) == 0) release.Wait(TimeSpan.FromSeconds(10));
            if (worker == 0 && start == 0) SpinWait.SpinUntil(() => Volatile.Read(ref stalled) == 1, TimeSpan.FromSeconds(10));
            if (worker == 0 && Interlocked.Add(ref byCallerSoFar, end - start) >= 1500) release.Set();
            return true;
        });
        pool.RunOwned(work, [0, 1000, 2000], grain: 400, minGrain: 10);
        Assert.All(work.Marks, m => Assert.Equal(1, m));
        var own = work.Chunks.Where(c => c.Worker == 0 && c.Start < 1000).OrderBy(c => c.Start).Select(c => c.End - c.Start).ToList();
        // Half of what is left each time, down to the least claim (with the grain as the least, the last claims were 400, 100).
        Assert.Equal([500, 250, 125, 62, 31, 16, 10, 6], own);
        var taken = work.Chunks.Where(c => c.Worker == 0 && c.Start >= 1000).OrderByDescending(c => c.Start).Select(c => c.End - c.Start).ToList();
        // From the back of the 500 unclaimed: at most half of what is left (the grain, 400, took four fifths of it before).
        Assert.Equal(250, taken[0]);
        Assert.Equal(500, taken.Sum());
    }

    [Fact]
    public void OwnedBoundsAreChecked()
    {
        using var pool = new WorkerPool(2);
        var work = new MarkWork(new int[10]);
        Assert.Contains("3 bounds", Assert.Throws<ArgumentException>(() => pool.RunOwned(work, [0, 10], 1)).Message);
        Assert.Throws<ArgumentException>(() => pool.RunOwned(work, [1, 5, 10], 1));
        Assert.Contains("decrease", Assert.Throws<ArgumentException>(() => pool.RunOwned(work, [0, 6, 5], 1)).Message);
        var failing = new ChunkLog(50, (start, end, worker) => start <= 37 && 37 < end ? throw new InvalidOperationException("boom") : true);
        Assert.Equal("boom", Assert.Throws<InvalidOperationException>(() => pool.RunOwned(failing, [0, 25, 50], 4)).Message);
    }

    [Fact]
    public void ChunkedExceptionReachesTheCaller()
    {
        using var pool = new WorkerPool(2);
        var failing = new ChunkLog(50, (start, end, worker) => start <= 17 && 17 < end ? throw new InvalidOperationException("boom") : true);
        Assert.Equal("boom", Assert.Throws<InvalidOperationException>(() => pool.Run(failing, 50, grain: 4)).Message);
        var marks = new int[9];
        pool.Run(new MarkWork(marks), 9, grain: 2); // still usable
        Assert.All(marks, m => Assert.Equal(1, m));
    }

    [Fact]
    public void WorkersWakeAfterBlocking()
    {
        using var pool = new WorkerPool(2);
        var marks = new int[10];
        pool.Run(new MarkWork(marks), 10);
        Thread.Sleep(WorkerPool.SpinTime * 4); // the worker has gone to sleep
        pool.Run(new MarkWork(marks), 10);
        Assert.All(marks, m => Assert.Equal(2, m));
    }

    [Fact]
    public void WorkerExceptionReachesTheCaller()
    {
        // The work's own exception, at one thread and at two (two wrapped it in an AggregateException, whose message
        // "A worker thread failed" was what the scheduler reported), with the worker's frames in its stack.
        using var pool = new WorkerPool(2);
        var ex = Assert.Throws<InvalidOperationException>(() => pool.Run(new FailingWork(), 10));
        Assert.Equal("boom", ex.Message);
        Assert.Contains(nameof(FailingWork), ex.StackTrace);
        using var one = new WorkerPool(1);
        Assert.Equal("boom", Assert.Throws<InvalidOperationException>(() => one.Run(new FailingWork2(), 10)).Message);
        var marks = new int[4];
        pool.Run(new MarkWork(marks), 4); // still usable
        Assert.All(marks, m => Assert.Equal(1, m));
    }

    [Fact]
    public void SlicesCoverTheRangeContiguously()
    {
        for (int workers = 1; workers <= 5; workers++)
        {
            int next = 0;
            for (int w = 0; w < workers; w++)
            {
                var (s, e) = WorkerPool.Slice(w, 17, workers);
                Assert.Equal(next, s);
                next = e;
            }
            Assert.Equal(17, next);
        }
        Assert.True(WorkerPool.DefaultThreadCount() >= 1);
    }

    /// <summary>The default thread count counts the cores of the CPUs this process may use: two SMT siblings of one core
    /// (taskset -c 0,4 on a 4-core/8-thread machine) are one core; counted over the machine they gave two threads.</summary>
    [Fact]
    public void CoresAreCountedOverTheAllowedCpusOnly()
    {
        // 2 cores × 2 threads: processors 0,1 are cores 0,1; 2,3 their siblings.
        string[] cpuinfo =
        [
            "processor\t: 0", "physical id\t: 0", "core id\t\t: 0", "",
            "processor\t: 1", "physical id\t: 0", "core id\t\t: 1", "",
            "processor\t: 2", "physical id\t: 0", "core id\t\t: 0", "",
            "processor\t: 3", "physical id\t: 0", "core id\t\t: 1", "",
        ];
        Assert.Equal(2, WorkerPool.CountCores(cpuinfo, null));
        Assert.Equal(1, WorkerPool.CountCores(cpuinfo, new HashSet<int> { 0, 2 }));
        Assert.Equal(2, WorkerPool.CountCores(cpuinfo, new HashSet<int> { 0, 3 }));
        Assert.Equal(0, WorkerPool.CountCores(cpuinfo, new HashSet<int> { 9 }));
    }

    private sealed class CountWork : IParallelWork
    {
        public long Total;

        public void Execute(int start, int end, int worker) => Interlocked.Add(ref Total, (long)end - start);
    }

    /// <summary>
    /// A fixed grain up to int.MaxValue items runs every item: the last chunk's start + grain wrapped negative, and its
    /// items never ran while Run returned normally.
    /// </summary>
    [Fact]
    public void AFixedGrainRunsEveryItemUpToIntMaxValue()
    {
        using var pool = new WorkerPool(2);
        var work = new CountWork();
        pool.Run(work, int.MaxValue, grain: 1 << 20);
        Assert.Equal(int.MaxValue, work.Total);
    }
}
