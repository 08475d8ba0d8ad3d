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
        using var pool = new WorkerPool(2);
        var ex = Assert.Throws<AggregateException>(() => pool.Run(new FailingWork(), 10));
        Assert.IsType<InvalidOperationException>(ex.InnerException);
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
}
