namespace BitNetSharp.Diagnostics.Profiling;

/// <summary>What a <see cref="TraceSpan"/> is: <see cref="TraceSpan.Code"/> is a <see cref="ProfileOp"/> for Op, the
/// engine's stage number for Stage, the step index for Step, 0 (prefill) or 1 (decode) for Phase, and for Products
/// (several projections run as one pass) the index in <see cref="OpProfiler.ProductGroupNames"/>.</summary>
public enum SpanKind : byte { Phase, Step, Op, Stage, Products }

/// <summary>One span on the thread that drives the forward pass, in Stopwatch ticks; In/Out are a projection's shape.</summary>
public readonly record struct TraceSpan(long Start, long End, SpanKind Kind, int Code, int Layer, int Tokens, int In, int Out);

/// <summary>A preallocated list of spans written by one thread; a full log drops further spans and counts them.</summary>
public sealed class SpanLog(int capacity)
{
    private TraceSpan[] _spans = new TraceSpan[capacity];

    public int Count { get; private set; }

    public long Dropped { get; private set; }

    public ReadOnlySpan<TraceSpan> Spans => _spans.AsSpan(0, Count);

    public void Add(in TraceSpan span)
    {
        if (Count >= _spans.Length)
        {
            Dropped++;
            return;
        }
        _spans[Count++] = span;
    }

    public void Clear()
    {
        Count = 0;
        Dropped = 0;
    }

    /// <summary>Grows the log to at least <paramref name="capacity"/> spans (between runs).</summary>
    public void Reserve(int capacity)
    {
        if (_spans.Length < capacity) Array.Resize(ref _spans, capacity);
    }
}
