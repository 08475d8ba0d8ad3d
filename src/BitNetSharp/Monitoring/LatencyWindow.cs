namespace BitNetSharp.Monitoring;

/// <summary>
/// The last <see cref="Capacity"/> inter-token latencies (seconds), for their standard deviation: a jittery engine
/// (a noisy neighbour, swapping, a throttled core) shows here before it shows in the mean. One writer (the engine
/// thread) adds without allocating; readers take a consistent view under a lock.
/// </summary>
public sealed class LatencyWindow(int capacity = 256)
{
    private readonly double[] _values = new double[capacity > 0 ? capacity
        : throw new ArgumentOutOfRangeException(nameof(capacity), capacity, "A latency window holds at least one value.")];
    private readonly Lock _lock = new();
    private int _next, _count;

    public int Capacity => _values.Length;

    public void Add(double seconds)
    {
        lock (_lock)
        {
            _values[_next] = seconds;
            _next = (_next + 1) % _values.Length;
            if (_count < _values.Length) _count++;
        }
    }

    /// <summary>Empties the window (a server clears it after warm-up, whose first, JIT-compiling steps are not service).</summary>
    public void Clear()
    {
        lock (_lock) _next = _count = 0;
    }

    public int Count
    {
        get
        {
            lock (_lock) return _count;
        }
    }

    /// <summary>(mean, population standard deviation) of the window; NaN with fewer than two values.</summary>
    public (double Mean, double StdDev) Statistics()
    {
        lock (_lock)
        {
            if (_count < 2) return (double.NaN, double.NaN);
            double mean = 0;
            for (int i = 0; i < _count; i++) mean += _values[i];
            mean /= _count;
            double v = 0;
            for (int i = 0; i < _count; i++) v += (_values[i] - mean) * (_values[i] - mean);
            return (mean, Math.Sqrt(v / _count));
        }
    }
}
