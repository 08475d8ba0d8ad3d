namespace BitNetSharp.Generation.Scheduler;

/// <summary>The per-event observations the engine makes, each of which becomes one histogram measurement.</summary>
internal enum MetricKind : byte
{
    TimeToFirstToken,
    InterTokenLatency,
    EndToEndLatency,
    QueueTime,
    PromptLength,
    GenerationLength,
    StepTokens,
    StepDuration,
}

internal readonly record struct MetricSample(MetricKind Kind, double Value);

/// <summary>
/// A single-producer ring of observations: the engine thread writes one slot and a volatile index, never locking
/// or allocating; a consumer drains it between steps into the histograms. When the consumer falls a whole ring
/// behind, new samples are dropped and counted rather than making the engine wait.
/// </summary>
internal sealed class MetricSampleRing
{
    private readonly MetricSample[] _items;
    private readonly Lock _drain = new();
    private long _head; // next slot the producer writes
    private long _tail; // next slot a consumer reads
    private long _dropped;

    public MetricSampleRing(int capacity)
    {
        if (capacity <= 0 || (capacity & (capacity - 1)) != 0) throw new ArgumentOutOfRangeException(nameof(capacity), capacity, "The capacity must be a power of two.");
        _items = new MetricSample[capacity];
    }

    public long Dropped => Volatile.Read(ref _dropped);

    /// <summary>Producer side (the engine thread only).</summary>
    public void Write(MetricKind kind, double value)
    {
        long head = _head;
        if (head - Volatile.Read(ref _tail) >= _items.Length)
        {
            Volatile.Write(ref _dropped, _dropped + 1);
            return;
        }
        _items[head & (_items.Length - 1)] = new MetricSample(kind, value);
        Volatile.Write(ref _head, head + 1);
    }

    /// <summary>Consumer side: hands every sample written so far to <paramref name="sink"/>, oldest first.</summary>
    public void Drain<TSink>(ref TSink sink) where TSink : struct, IMetricSink
    {
        lock (_drain)
        {
            long head = Volatile.Read(ref _head);
            for (long i = _tail; i < head; i++) sink.Record(_items[i & (_items.Length - 1)]);
            Volatile.Write(ref _tail, head);
        }
    }
}

internal interface IMetricSink
{
    void Record(MetricSample sample);
}
