using System.Diagnostics;

namespace BitNetSharp.Threading;

/// <summary>One chunk of a <see cref="WorkerPool.Run"/> as one thread executed it: Stopwatch ticks, the items, and the
/// tag the timeline carried when the chunk started (the profiler's span it belongs to).</summary>
public readonly record struct ChunkSpan(long Start, long End, int ItemStart, int ItemEnd, int Tag);

/// <summary>
/// Records every chunk each worker of a <see cref="WorkerPool"/> executes (attach with <see cref="WorkerPool.Timeline"/>),
/// so a trace shows which thread ran what and where a thread waited. Each worker writes only its own preallocated
/// array; a full array drops further chunks and counts them (recording never allocates).
/// </summary>
public sealed class ChunkTimeline
{
    private const int Stride = 16; // per-worker counters a cache line apart: workers update them concurrently
    private readonly ChunkSpan[][] _spans;
    private readonly int[] _counts;
    private readonly long[] _dropped;

    public ChunkTimeline(int workers, int capacityPerWorker)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(workers);
        ArgumentOutOfRangeException.ThrowIfNegative(capacityPerWorker);
        _spans = new ChunkSpan[workers][];
        for (int i = 0; i < workers; i++) _spans[i] = new ChunkSpan[capacityPerWorker];
        _counts = new int[workers * Stride];
        _dropped = new long[workers * Stride];
    }

    public int Workers => _spans.Length;

    /// <summary>Stamped on each chunk that starts after it is set; written by the thread that calls Run, between calls.</summary>
    public int Tag { get; set; } = -1;

    public ReadOnlySpan<ChunkSpan> Spans(int worker) => _spans[worker].AsSpan(0, _counts[worker * Stride]);

    /// <summary>Chunks not recorded because a worker's array was full.</summary>
    public long Dropped
    {
        get
        {
            long d = 0;
            foreach (long x in _dropped) d += x;
            return d;
        }
    }

    internal static long Now() => Stopwatch.GetTimestamp();

    internal void Add(int worker, long start, int itemStart, int itemEnd)
    {
        long end = Stopwatch.GetTimestamp();
        if ((uint)worker >= (uint)_spans.Length) return;
        int c = _counts[worker * Stride];
        var spans = _spans[worker];
        if (c >= spans.Length)
        {
            _dropped[worker * Stride]++;
            return;
        }
        spans[c] = new ChunkSpan(start, end, itemStart, itemEnd, Tag);
        _counts[worker * Stride] = c + 1;
    }

    /// <summary>Forgets the recorded chunks (between runs, not during one).</summary>
    public void Clear()
    {
        Array.Clear(_counts);
        Array.Clear(_dropped);
    }

    /// <summary>Grows each worker's array to at least <paramref name="capacityPerWorker"/> (between runs).</summary>
    public void Reserve(int capacityPerWorker)
    {
        for (int i = 0; i < _spans.Length; i++)
            if (_spans[i].Length < capacityPerWorker) Array.Resize(ref _spans[i], capacityPerWorker);
    }

    /// <summary>The most chunks any worker has recorded.</summary>
    public int MaxCount
    {
        get
        {
            int m = 0;
            foreach (int c in _counts) m = Math.Max(m, c);
            return m;
        }
    }
}
