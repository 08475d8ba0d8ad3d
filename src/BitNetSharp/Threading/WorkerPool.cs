using System.Diagnostics;

namespace BitNetSharp.Threading;

/// <summary>One unit of parallel work: process items [start, end). Implemented by reusable objects, not lambdas,
/// so a call to <see cref="WorkerPool.Run"/> allocates nothing.</summary>
public interface IParallelWork
{
    void Execute(int start, int end, int worker);
}

/// <summary>
/// A persistent pool of worker threads that splits a range of items (typically output rows of a mat-mul) into
/// one contiguous slice per thread, or, given a grain, hands out chunks of that many items to whichever thread is
/// free (so a core slowed by the host or a slice with more work does not leave the other cores waiting). The calling
/// thread takes part. Workers spin on a generation counter
/// between calls — a decode step issues hundreds of small ops back to back, and waking a blocked thread costs
/// more than one op — and fall back to blocking after <see cref="SpinTime"/> of idleness so an idle process
/// does not burn the cores. No Task, delegate or array is created per call.
/// </summary>
public sealed class WorkerPool : IDisposable
{
    /// <summary>How long an idle worker spins before it blocks.</summary>
    public static readonly TimeSpan SpinTime = TimeSpan.FromMilliseconds(5);

    /// <summary>
    /// Inside a stretch of back-to-back calls (<see cref="BeginTight"/>: the engine marks each forward pass), for
    /// <see cref="TightSpinTime"/> after a call a waiting thread (an idle worker, or the caller waiting for the workers)
    /// polls with <c>pause</c> alone; otherwise it polls through <see cref="SpinWait"/>, whose spins turn into
    /// <c>sched_yield</c> system calls after ten rounds, which left a decode step's next call waiting about 0.7 µs longer
    /// for its worker. Between forward passes the waits yield as before, so other threads (a server's request handlers,
    /// on a machine whose cores all compute) get a core between steps. Zen 5 EPYC, two threads, `quick-call-latency 3`
    /// (an empty call after 3 µs of caller-only work): round trip p50 1.1 µs yielding, 0.4 µs tight; the bundled model's
    /// decode on two threads (`quick-spin-ab`) +2.7 % median, the 2B4T shape level. A field so that a benchmark compares
    /// both in one process.
    /// </summary>
    internal static bool TightSpin = true;

    /// <summary>How long a waiting thread polls with <c>pause</c> alone, inside a <see cref="BeginTight"/> stretch, before it polls through <see cref="SpinWait"/> (50 µs).</summary>
    public static readonly TimeSpan TightSpinTime = TimeSpan.FromMicroseconds(50);

    private int _tight;

    /// <summary>
    /// Starts a stretch of calls that follow each other closely (a forward pass: products, attention, the head), in
    /// which the pool's waits poll tight (see <see cref="TightSpin"/>); pair with <see cref="EndTight"/>. Nests.
    /// </summary>
    public void BeginTight() => Interlocked.Increment(ref _tight);

    /// <summary>Ends a stretch begun by <see cref="BeginTight"/>.</summary>
    public void EndTight() => Interlocked.Decrement(ref _tight);

    private bool Tight => TightSpin && Volatile.Read(ref _tight) > 0;

    private static readonly long TightTicks = (long)(TightSpinTime.TotalSeconds * Stopwatch.Frequency);

    private readonly Thread[] _threads;
    private readonly SemaphoreSlim[] _wake;
    private readonly int[] _sleeping;
    private readonly long _spinTicks;
    private IParallelWork? _work;
    private int _itemCount;
    private int _grain;
    private int _nextItem;
    private readonly long[] _ranges; // per thread: what is left of its range, back << 32 | front; 64 bytes apart
    private readonly long[] _accounted; // per worker: the last call it joined or was skipped in (see StartInFlight); 64 bytes apart
    private bool _owned;
    private long _generation;
    private int _pending;
    private volatile bool _disposed;
    private Exception? _failure;
    private int _callerCpu = -1;
    private static readonly bool s_linux = ThreadPlacement.CanMoveThreads; // Linux, and the C library has the calls

    /// <summary>Workers moved off the caller's CPU so far (see <see cref="StartInFlight"/>).</summary>
    public long Separations => Interlocked.Read(ref _separations);

    private long _separations;

    /// <param name="threadCount">Total threads including the caller; ≤ 0 means <see cref="DefaultThreadCount"/>.</param>
    public WorkerPool(int threadCount = 0)
    {
        ThreadCount = threadCount > 0 ? threadCount : DefaultThreadCount();
        _threads = new Thread[ThreadCount - 1];
        _wake = new SemaphoreSlim[ThreadCount - 1];
        _sleeping = new int[ThreadCount - 1];
        _ranges = new long[ThreadCount * RangeStride];
        _accounted = new long[ThreadCount * RangeStride];
        _spinTicks = (long)(SpinTime.TotalSeconds * Stopwatch.Frequency);
        int started = 0;
        try
        {
            for (int i = 0; i < _threads.Length; i++)
            {
                _wake[i] = new SemaphoreSlim(0);
                int worker = i + 1;
                _threads[i] = new Thread(() => WorkerLoop(worker))
                {
                    IsBackground = true,
                    Name = $"bitnet-worker-{worker}",
                    Priority = ThreadPriority.AboveNormal,
                };
                _threads[i].Start();
                started++;
            }
        }
        catch
        {
            // A thread that cannot start (a container's pids.max, RLIMIT_NPROC): the ones started would wait on their
            // semaphores for ever, holding their thread slots, with no pool left to dispose. Stopped before rethrowing.
            _disposed = true;
            for (int i = 0; i < started; i++) _wake[i].Release();
            for (int i = 0; i < started; i++) _threads[i].Join();
            foreach (var w in _wake) w?.Dispose();
            throw;
        }
    }

    public int ThreadCount { get; }

    /// <summary>Records every chunk executed while set (null: nothing recorded, one null check per chunk). Set between calls.</summary>
    public ChunkTimeline? Timeline { get; set; }

    /// <summary>
    /// Runs <paramref name="work"/> over [0, itemCount) on all threads and returns when every item is done. With
    /// <paramref name="grain"/> ≤ 0 each thread executes one contiguous slice (<see cref="Slice"/>); with a grain, the
    /// threads take chunks of <paramref name="grain"/> items in order from a shared counter until none are left, so a
    /// thread may execute several chunks, and which thread executes which chunk varies from call to call (work whose
    /// results depend only on the items, not on the thread, is unaffected). With one thread, one item, or a grain that
    /// covers every item, the calling thread executes the whole range in one call. An exception thrown by any slice is
    /// rethrown here. Not reentrant: one Run at a time per pool.
    /// </summary>
    public void Run(IParallelWork work, int itemCount, int grain = 0) => Run(work, itemCount, grain, 0);

    /// <summary>
    /// As <see cref="Run(IParallelWork, int, int)"/> with a grain, but chunks shrink as the range runs out (guided
    /// scheduling): each claim takes half of what is left per thread (left / (2 · threads)), at most
    /// <paramref name="grain"/> and at least <paramref name="minGrain"/> items, rounded down to a multiple of
    /// <paramref name="minGrain"/> (the last claim takes what remains). Long chunks at the start, and at the end
    /// short ones, so a thread that runs out of work waits for at most about one <paramref name="minGrain"/> chunk of
    /// another: with fixed chunks of an eighth of a thread's share, the F16 output head left one of two threads idle
    /// ~0.55 ms of its ~10.6 ms (median over decode steps, `bitnet profile --trace`, Zen 5 EPYC). With
    /// <paramref name="minGrain"/> ≤ 0 or ≥ <paramref name="grain"/>, fixed chunks of <paramref name="grain"/>.
    /// </summary>
    public void Run(IParallelWork work, int itemCount, int grain, int minGrain)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (itemCount <= 0) return;
        if (ThreadCount == 1 || itemCount == 1 || (grain > 0 && grain >= itemCount && (minGrain <= 0 || minGrain >= grain)))
        {
            RunHere(work, itemCount);
            return;
        }

        // The pool is claimed before the call's settings are written: checked and then written, a call from another
        // thread could claim it in between and run over these settings (another call's ranges, items past its count).
        Claim();
        try
        {
            _owned = false;
            _minGrain = grain > 0 && minGrain > 0 && minGrain < grain ? minGrain : 0;
            StartInFlight(work, itemCount, Math.Max(0, grain));
        }
        finally
        {
            Volatile.Write(ref _inFlight, 0);
        }
    }

    private int _minGrain;

    /// <summary>Called on a worker thread when it has seen a new call, before it joins it (tests hold a worker back with it).</summary>
    internal Action<int>? BeforeJoin { get; set; }

    /// <summary>Whether <see cref="RunOwned"/> honours its least claim (else the grain is the least, as before it had one):
    /// a field so that a benchmark compares the two in one process (`quick-least-claims`).</summary>
    internal static bool LeastClaims = true;

    /// <summary>The least claim of the current <see cref="RunOwned"/> call.</summary>
    private int _ownedMinGrain;

    /// <summary>Longs between two threads' range words: 64 bytes, one cache line each.</summary>
    private const int RangeStride = 8;

    /// <summary>
    /// Runs <paramref name="work"/> over [0, bounds[^1]) where thread i owns the items [bounds[i], bounds[i + 1]): each
    /// thread takes from the front of its own range, in order, half of what is left at a time, and when that is used up
    /// takes from the back of the other threads' ranges, round the pool, half of what is left of the range at a time up to
    /// <paramref name="grain"/> items, until no items are left. No claim is under <paramref name="minGrain"/> items (or,
    /// without one, under <paramref name="grain"/>) unless that is all that is left. The owner's claims shrink as its
    /// range runs out, so a thread that finishes first finds something to take until about one least claim before the
    /// end: with the least claim at a grain (an eighth of a slice), one of two threads on the 2B4T shape's gate waited
    /// 2.5–5 µs (median) for the other at the end of each product. So as long as
    /// the threads keep pace each one reads one long stretch of memory from start to end (decode's mat-vec: the hardware
    /// prefetchers stay on their streams, where chunks handed out from one counter restart them at every chunk), and a
    /// thread slowed by the host is helped from the far end of its range without breaking its streams.
    /// <paramref name="bounds"/> has <see cref="ThreadCount"/> + 1 non-decreasing entries from 0. Which thread executes
    /// an item varies, as with a grain in <see cref="Run"/>. Not reentrant.
    /// </summary>
    /// <exception cref="ArgumentException">Bounds of the wrong length, not starting at 0, or decreasing.</exception>
    public void RunOwned(IParallelWork work, ReadOnlySpan<int> bounds, int grain, int minGrain = 0)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (bounds.Length != ThreadCount + 1 || bounds[0] != 0)
            throw new ArgumentException($"Owned ranges need {ThreadCount + 1} bounds starting at 0; got {bounds.Length}.", nameof(bounds));
        for (int i = 0; i < ThreadCount; i++)
            if (bounds[i + 1] < bounds[i]) throw new ArgumentException($"Owned range bounds decrease at {i + 1}.", nameof(bounds));
        int itemCount = bounds[ThreadCount];
        if (itemCount <= 0) return;
        if (ThreadCount == 1)
        {
            RunHere(work, itemCount);
            return;
        }
        Claim(); // before the ranges are written (see Run)
        try
        {
            for (int i = 0; i < ThreadCount; i++) _ranges[i * RangeStride] = (long)bounds[i + 1] << 32 | (uint)bounds[i];
            _owned = true;
            _ownedMinGrain = LeastClaims && minGrain > 0 && minGrain < grain ? minGrain : Math.Max(1, grain);
            StartInFlight(work, itemCount, Math.Max(1, grain));
        }
        finally
        {
            Volatile.Write(ref _inFlight, 0);
        }
    }

    /// <summary>The whole range on the calling thread, in one call.</summary>
    private void RunHere(IParallelWork work, int itemCount)
    {
        var timeline = Timeline;
        long started = timeline is null ? 0 : ChunkTimeline.Now();
        work.Execute(0, itemCount, 0);
        timeline?.Add(0, started, 0, itemCount);
    }

    private int _inFlight;

    private static InvalidOperationException Reentered() =>
        new("A WorkerPool runs one call at a time: this one was made while another was running on it (from its work, or from another thread). Use another pool.");

    /// <summary>Whether a worker thread still runs (only asked once the pool is disposed: the caller must not return
    /// while one may still execute the call's work).</summary>
    private bool AnyWorkerAlive()
    {
        foreach (var t in _threads)
            if (t.IsAlive) return true;
        return false;
    }

    /// <summary>
    /// Takes the pool for one call (the caller releases <see cref="_inFlight"/>). A second call while one runs overwrote
    /// its work, count and pending counter: items went missing, then the outer call waited for ever.
    /// </summary>
    private void Claim()
    {
        if (Interlocked.CompareExchange(ref _inFlight, 1, 0) != 0) throw Reentered();
    }

    /// <summary>Publishes a call to the workers, takes part, and waits for them (the pool claimed).</summary>
    private void StartInFlight(IParallelWork work, int itemCount, int grain)
    {
        _work = work;
        _itemCount = itemCount;
        _grain = grain;
        _nextItem = 0;
        _failure = null;
        if (s_linux) _callerCpu = ThreadPlacement.CurrentCpu();
        Volatile.Write(ref _pending, _threads.Length);
        long generation = Interlocked.Increment(ref _generation);
        for (int i = 0; i < _sleeping.Length; i++)
            // The flag is cleared as the worker is woken: now that a call may skip a worker, one woken but not yet on a
            // CPU saw a release per call and woke that many times later, spinning SpinTime at each idle period.
            if (Interlocked.Exchange(ref _sleeping[i], 0) != 0) _wake[i].Release();

        Participate(work, 0);

        // With chunks any thread may take (a grain, or owned ranges), the caller's share ends when no item is left, so a
        // worker that has not yet joined this call has nothing to do in it: the caller counts it done instead of waiting
        // for it to be scheduled (one compare-exchange on the worker's word decides which of the two got there first; the
        // worker then skips the call). Without this, a machine with a core busy elsewhere made every call of a decode
        // step wait for a worker queued behind that work: the bundled model's two-thread decode fell from ~2100 to
        // 520–620 tokens/s beside one busy process on 2 vCPUs (one thread: ~1940). Slices (no grain) belong to their
        // thread (ThreadPlacement.Pin, the bandwidth probe), so those calls still wait for every worker.
        if (grain > 0)
            for (int i = 0; i < _threads.Length; i++)
                if (Interlocked.CompareExchange(ref _accounted[i * RangeStride], generation, generation - 1) == generation - 1)
                    Interlocked.Decrement(ref _pending);

        var spinner = new SpinWait();
        if (Tight)
        {
            long t0 = Stopwatch.GetTimestamp();
            while (Volatile.Read(ref _pending) != 0)
            {
                if (_disposed && !AnyWorkerAlive()) throw new ObjectDisposedException(nameof(WorkerPool), "The worker pool was disposed while a call was running on it.");
                if (Stopwatch.GetTimestamp() - t0 < TightTicks) Thread.SpinWait(1);
                else spinner.SpinOnce(sleep1Threshold: -1);
            }
        }
        else
            while (Volatile.Read(ref _pending) != 0)
            {
                // Disposed during the call: a worker that had not taken the call left without counting itself done, and
                // this loop spun for ever.
                if (_disposed && !AnyWorkerAlive()) throw new ObjectDisposedException(nameof(WorkerPool), "The worker pool was disposed while a call was running on it.");
                spinner.SpinOnce(sleep1Threshold: -1);
            }
        _work = null;
        // The work's own exception, its worker's stack kept, as the one-thread path throws it: wrapped, callers that
        // report e.Message (the scheduler's "The engine failed: ...") said "A worker thread failed" at two threads.
        if (_failure is { } failure) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(failure).Throw();
    }

    /// <summary>The slice of [0, count) that worker <paramref name="worker"/> of <paramref name="workers"/> owns.</summary>
    public static (int Start, int End) Slice(int worker, int count, int workers) =>
        ((int)((long)count * worker / workers), (int)((long)count * (worker + 1) / workers));

    private void WorkerLoop(int worker)
    {
        long seen = 0, lastMove = 0;
        int index = worker - 1;
        while (true)
        {
            long started = Stopwatch.GetTimestamp();
            var spinner = new SpinWait();
            while (Volatile.Read(ref _generation) == seen && !_disposed)
            {
                long idle = Stopwatch.GetTimestamp() - started;
                if (idle < TightTicks && Tight)
                {
                    Thread.SpinWait(1);
                    continue;
                }
                if (idle < _spinTicks)
                {
                    spinner.SpinOnce(sleep1Threshold: -1);
                    continue;
                }
                // Announce the sleep before the last check: Run bumps the generation before it reads the flag,
                // so either we see the new generation here or Run sees the flag and releases us.
                Interlocked.Exchange(ref _sleeping[index], 1);
                if (Volatile.Read(ref _generation) == seen && !_disposed) _wake[index].Wait();
                Interlocked.Exchange(ref _sleeping[index], 0);
                started = Stopwatch.GetTimestamp();
            }
            if (_disposed) return;
            seen = Volatile.Read(ref _generation);

            // A worker woken from its semaphore is often placed on the waker's CPU (Linux wake-affine), and where the CPUs
            // do not share a last-level cache the balancer may leave it there for tens of milliseconds: the caller then
            // does every chunk itself and waits for this thread to get the CPU (`bitnet profile --trace`, bundled model, two
            // threads on the Zen 5 EPYC: 83 decode steps in a row with no chunk on the worker, heads 72 µs against 34).
            // So a worker that finds itself on the caller's CPU moves off it (not pinned), at most once a millisecond.
            if (s_linux && ThreadPlacement.CurrentCpu() == Volatile.Read(ref _callerCpu) && Stopwatch.GetTimestamp() - lastMove > Stopwatch.Frequency / 1000)
            {
                lastMove = Stopwatch.GetTimestamp();
                if (ThreadPlacement.MoveOff(_callerCpu)) Interlocked.Increment(ref _separations);
            }

            BeforeJoin?.Invoke(worker);
            // Joined, unless the caller has already counted this call done without us (see StartInFlight).
            if (Interlocked.CompareExchange(ref _accounted[index * RangeStride], seen, seen - 1) != seen - 1) continue;
            Participate(_work!, worker);
            Interlocked.Decrement(ref _pending);
        }
    }

    /// <summary>One thread's share of the current call: its slice, or chunks until the counter passes the end.</summary>
    private void Participate(IParallelWork work, int worker)
    {
        try
        {
            int count = _itemCount, grain = _grain;
            var timeline = Timeline;
            if (_owned)
            {
                for (int k = 0; k < ThreadCount; k++)
                {
                    ref long range = ref _ranges[(worker + k) % ThreadCount * RangeStride];
                    while (Volatile.Read(ref _failure) is null)
                    {
                        // Own range: from the front; another's: from the back. A compare-exchange on the two ends at once.
                        long seen = Volatile.Read(ref range);
                        int front = (int)seen, back = (int)(seen >> 32);
                        if (front >= back) break;
                        // The owner takes half of what is left, others half of what is left of that range up to a grain;
                        // neither less than the least claim (a grain without one). Few claims on the owner's stretch, and
                        // still half a slice for another thread to take should the owner stall in its first claim; and as
                        // the range runs out the claims shrink, so that the threads finish within about one least claim
                        // of each other (see RunOwned).
                        int left = back - front;
                        int half = Math.Max(_ownedMinGrain, left / 2);
                        int take = Math.Min(left, k == 0 ? half : Math.Min(grain, half));
                        int start = k == 0 ? front : back - take;
                        long next = k == 0 ? seen + take : (long)(back - take) << 32 | (uint)front;
                        if (Interlocked.CompareExchange(ref range, next, seen) != seen) continue;
                        long started = timeline is null ? 0 : ChunkTimeline.Now();
                        work.Execute(start, start + take, worker);
                        timeline?.Add(worker, started, start, start + take);
                    }
                }
                return;
            }
            if (grain == 0)
            {
                var (start, end) = Slice(worker, count, ThreadCount);
                if (start >= end) return;
                long started = timeline is null ? 0 : ChunkTimeline.Now();
                work.Execute(start, end, worker);
                timeline?.Add(worker, started, start, end);
                return;
            }
            int minGrain = _minGrain;
            if (minGrain > 0)
            {
                // Guided: a CAS per claim (the claim's size depends on what is left when it is taken).
                int perClaim = 2 * ThreadCount;
                while (Volatile.Read(ref _failure) is null)
                {
                    int start = Volatile.Read(ref _nextItem);
                    if (start >= count) break;
                    int left = count - start;
                    int take = Math.Min(left, Math.Clamp(left / perClaim, minGrain, grain) / minGrain * minGrain);
                    if (Interlocked.CompareExchange(ref _nextItem, start + take, start) != start) continue;
                    long started = timeline is null ? 0 : ChunkTimeline.Now();
                    work.Execute(start, start + take, worker);
                    timeline?.Add(worker, started, start, start + take);
                }
                return;
            }
            while (Volatile.Read(ref _failure) is null)
            {
                int start = Interlocked.Add(ref _nextItem, grain) - grain;
                if (start >= count || start < 0) break; // < 0: the counter wrapped past int.MaxValue
                long started = timeline is null ? 0 : ChunkTimeline.Now();
                // long: the last chunk's start + grain passed int.MaxValue, wrapped negative, and its items never ran.
                int end = (int)Math.Min(count, (long)start + grain);
                work.Execute(start, end, worker);
                timeline?.Add(worker, started, start, end);
            }
        }
        catch (Exception e)
        {
            Interlocked.CompareExchange(ref _failure, e, null);
        }
    }

    /// <summary>Physical cores available to this process (hyper-threads share a core's SIMD units, so using them
    /// for memory-bound mat-vec only adds contention). Falls back to the logical processor count.</summary>
    public static int DefaultThreadCount()
    {
        int logical = Environment.ProcessorCount;
        try
        {
            if (OperatingSystem.IsLinux() && File.Exists("/proc/cpuinfo"))
            {
                var allowed = ThreadPlacement.ProcessCpus();
                int cores = CountCores(File.ReadLines("/proc/cpuinfo"), allowed.Length > 0 ? new HashSet<int>(allowed) : null);
                if (cores > 0) return Math.Clamp(cores, 1, logical);
            }
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
        return Math.Max(1, logical);
    }

    /// <summary>
    /// Distinct (physical id, core id) pairs of /proc/cpuinfo's processors in <paramref name="allowed"/> (all when null):
    /// counted over the whole machine, a process allowed two SMT siblings of one core (taskset -c 0,4) got two threads
    /// on that core.
    /// </summary>
    internal static int CountCores(IEnumerable<string> cpuinfo, IReadOnlySet<int>? allowed)
    {
        var cores = new HashSet<(string, string)>();
        string physical = "0";
        int processor = -1;
        foreach (var line in cpuinfo)
        {
            int colon = line.IndexOf(':');
            if (colon < 0) continue;
            var key = line.AsSpan(0, colon).Trim();
            var value = line[(colon + 1)..].Trim();
            if (key.SequenceEqual("processor"))
            {
                processor = int.TryParse(value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int p) ? p : -1;
                physical = "0";
            }
            else if (key.SequenceEqual("physical id")) physical = value;
            else if (key.SequenceEqual("core id") && (allowed is null || allowed.Contains(processor))) cores.Add((physical, value));
        }
        return cores.Count;
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var w in _wake) w.Release();
        foreach (var t in _threads) t.Join();
        foreach (var w in _wake) w.Dispose();
    }
}
