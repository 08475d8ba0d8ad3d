using System.Diagnostics;
using BitNetSharp.Model;
using BitNetSharp.Quantization;
using BitNetSharp.Threading;

namespace BitNetSharp.Diagnostics.Profiling;

/// <summary>
/// The forward pass's timer (<see cref="Transformer.Profiler"/>): it times each operation on the thread that drives
/// the pass (one <see cref="Stopwatch.GetTimestamp"/> at each end, the weights' bytes and the multiply-accumulates of
/// a projection) into <see cref="Stats"/>, records the spans for a trace into <see cref="Trace"/>, and emits them
/// through <see cref="ProfileEventSource"/> when a listener is on. Nothing here allocates.
/// <para>
/// A per-token stage (norm + quantization, residual + norm + quantization, activation + sub-norm + quantization, RoPE)
/// runs its parts for every token, on the pool when there are several: each thread marks the end of each part
/// (<see cref="Lap"/>), and the stage's wall time is split between its parts in the ratio of their summed thread time.
/// With one token (decode) the stage runs on the calling thread and the split is exact.
/// </para>
/// </summary>
public sealed class OpProfiler
{
    private const int LapStride = 32; // a cache line and more per worker: workers mark laps concurrently
    private readonly long[] _lapStart;
    private readonly long[] _lapTicks;
    private readonly int _threads;

    private ProfileOp _op;
    private int _layer, _tokens, _in, _out;
    private long _start, _bytes, _macs;
    private long _stageStart;
    private int _stageLayer, _stageKind, _stageTokens;

    public OpProfiler(int layers, int threads)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(layers);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(threads);
        Layers = layers;
        _threads = threads;
        _lapStart = new long[threads * LapStride];
        _lapTicks = new long[threads * LapStride];
    }

    public int Layers { get; }

    /// <summary>Workers (the pool's thread count) the lap accumulators are sized for.</summary>
    public int Threads => _threads;

    /// <summary>Where timings accumulate (null: nowhere). Set between forward passes.</summary>
    public OpStats? Stats { get; set; }

    /// <summary>Where spans are recorded for a trace (null: not recorded). Set between forward passes.</summary>
    public SpanLog? Trace { get; set; }

    /// <summary>The pool's chunk timeline, tagged with the span each chunk belongs to (null: none).</summary>
    public ChunkTimeline? Timeline { get; set; }

    public void Begin(ProfileOp op, int layer, int tokens)
    {
        _op = op;
        _layer = layer;
        _tokens = tokens;
        _bytes = _macs = 0;
        _in = _out = 0;
        Started();
    }

    /// <summary>
    /// The bytes a product of a matrix over so many tokens reads (set by the engine from its kernel: the lookup kernel
    /// decodes from its own, smaller layout); the packed matrix's size when null.
    /// </summary>
    public Func<TernaryMatrix, int, long>? BytesRead { get; set; }

    private long Read(TernaryMatrix w, int tokens) => BytesRead?.Invoke(w, tokens) ?? w.ByteLength;

    /// <summary>A ternary projection: <paramref name="w"/> is read once (bytes), and each token costs rows × cols MACs.</summary>
    public void BeginLinear(ProfileOp op, int layer, TernaryMatrix w, int tokens)
    {
        _op = op;
        _layer = layer;
        _tokens = tokens;
        _bytes = Read(w, tokens);
        _macs = (long)w.Rows * w.Cols * tokens;
        _in = w.Cols;
        _out = w.Rows;
        Started();
    }

    /// <summary>
    /// Two or three ternary projections on the same activations run as one pass (<see cref="TernaryMatMul.RunMany"/>):
    /// <see cref="EndProducts"/> shares the pass's wall time between them in proportion to their weight bytes (they
    /// stream the same way through the same pass, so bytes are what their time follows) and the trace shows the pass as
    /// one span named by <see cref="ProductGroupNames"/>[<paramref name="group"/>]. Pass <paramref name="w2"/> null for two.
    /// </summary>
    public void BeginProducts(int group, int layer, int tokens, ProfileOp op0, TernaryMatrix w0, ProfileOp op1, TernaryMatrix w1,
        ProfileOp op2 = default, TernaryMatrix? w2 = null)
    {
        _group = group;
        _layer = layer;
        _tokens = tokens;
        _productCount = w2 is null ? 2 : 3;
        (_productOps[0], _productOps[1], _productOps[2]) = (op0, op1, op2);
        _productBytes[0] = Read(w0, tokens); _productBytes[1] = Read(w1, tokens); _productBytes[2] = w2 is null ? 0 : Read(w2, tokens);
        _productMacs[0] = (long)w0.Rows * w0.Cols * tokens; _productMacs[1] = (long)w1.Rows * w1.Cols * tokens;
        _productMacs[2] = w2 is null ? 0 : (long)w2.Rows * w2.Cols * tokens;
        _in = w0.Cols;
        _out = w0.Rows + w1.Rows + (w2?.Rows ?? 0);
        if (Trace is { } trace && Timeline is { } timeline) timeline.Tag = trace.Count;
        if (ProfileEventSource.Log.IsEnabled()) ProfileEventSource.Log.OpStart(ProductGroupNames[group], layer, tokens, _in, _out);
        _start = Stopwatch.GetTimestamp();
    }

    public void EndProducts()
    {
        long end = Stopwatch.GetTimestamp();
        long wall = end - _start, bytes = 0;
        for (int i = 0; i < _productCount; i++) bytes += _productBytes[i];
        if (Stats is { } stats)
            for (int i = 0; i < _productCount; i++)
                stats.Add(_productOps[i], _layer, bytes > 0 ? (long)((double)wall * _productBytes[i] / bytes) : wall / _productCount, _productBytes[i], _productMacs[i]);
        Trace?.Add(new TraceSpan(_start, end, SpanKind.Products, _group, _layer, _tokens, _in, _out));
        if (ProfileEventSource.Log.IsEnabled()) ProfileEventSource.Log.OpStop(ProductGroupNames[_group], _layer, bytes);
    }

    /// <summary>The product groups the engine runs as one pass (<see cref="BeginProducts"/>'s group).</summary>
    public static readonly string[] ProductGroupNames = ["q+k+v", "gate+up"];

    /// <summary><see cref="BeginProducts"/>'s groups: q, k and v; gate and up.</summary>
    public const int GroupQkv = 0, GroupGateUp = 1;

    private int _group, _productCount;
    private readonly ProfileOp[] _productOps = new ProfileOp[3];
    private readonly long[] _productBytes = new long[3], _productMacs = new long[3];

    /// <summary>The output head: every row of <paramref name="head"/> against each wanted token.</summary>
    public void BeginHead(EmbeddingTable head, int tokens)
    {
        _op = ProfileOp.Head;
        _layer = -1;
        _tokens = tokens;
        _bytes = head.ByteLength;
        _macs = (long)head.Rows * head.Cols * tokens;
        _in = head.Cols;
        _out = head.Rows;
        Started();
    }

    private void Started()
    {
        if (Trace is { } trace && Timeline is { } timeline) timeline.Tag = trace.Count;
        if (ProfileEventSource.Log.IsEnabled()) ProfileEventSource.Log.OpStart(ProfileOps.Name(_op), _layer, _tokens, _in, _out);
        _start = Stopwatch.GetTimestamp();
    }

    public void End()
    {
        long end = Stopwatch.GetTimestamp();
        Stats?.Add(_op, _layer, end - _start, _bytes, _macs);
        Trace?.Add(new TraceSpan(_start, end, SpanKind.Op, (int)_op, _layer, _tokens, _in, _out));
        if (ProfileEventSource.Log.IsEnabled()) ProfileEventSource.Log.OpStop(ProfileOps.Name(_op), _layer, _bytes);
    }

    /// <summary>A per-token stage of <paramref name="layer"/> starts (<paramref name="stage"/>: the engine's stage number, for the trace).</summary>
    public void BeginStage(int stage, int layer, int tokens)
    {
        _stageKind = stage;
        _stageLayer = layer;
        _stageTokens = tokens;
        Array.Clear(_lapTicks);
        if (Trace is { } trace && Timeline is { } timeline) timeline.Tag = trace.Count;
        if (ProfileEventSource.Log.IsEnabled()) ProfileEventSource.Log.OpStart(StageNames[stage], layer, tokens, 0, 0);
        _stageStart = Stopwatch.GetTimestamp();
    }

    /// <summary>Worker <paramref name="worker"/> starts a token's part of the stage.</summary>
    public void LapStart(int worker) => _lapStart[worker * LapStride] = Stopwatch.GetTimestamp();

    /// <summary>Worker <paramref name="worker"/> finished the part <paramref name="op"/> of a token.</summary>
    public void Lap(int worker, ProfileOp op)
    {
        long now = Stopwatch.GetTimestamp();
        int w = worker * LapStride;
        _lapTicks[w + (int)op] += now - _lapStart[w];
        _lapStart[w] = now;
    }

    public void EndStage()
    {
        long end = Stopwatch.GetTimestamp();
        long wall = end - _stageStart;
        if (Stats is { } stats)
        {
            long total = 0;
            for (int w = 0; w < _threads; w++)
                for (int op = 0; op < ProfileOps.Count; op++) total += _lapTicks[w * LapStride + op];
            for (int op = 0; op < ProfileOps.Count; op++)
            {
                long part = 0;
                for (int w = 0; w < _threads; w++) part += _lapTicks[w * LapStride + op];
                if (part == 0) continue;
                long share = total > 0 ? (long)((double)wall * part / total) : 0;
                stats.Add((ProfileOp)op, _stageLayer, share, 0, 0);
            }
        }
        Trace?.Add(new TraceSpan(_stageStart, end, SpanKind.Stage, _stageKind, _stageLayer, _stageTokens, 0, 0));
        if (ProfileEventSource.Log.IsEnabled()) ProfileEventSource.Log.OpStop(StageNames[_stageKind], _stageLayer, 0);
    }

    /// <summary>The engine's per-token stages by number (Transformer's Stage_* constants).</summary>
    public static readonly string[] StageNames = ["attn_norm+quantize", "rope", "attn_sub_norm+quantize", "residual+ffn_norm+quantize", "activation+ffn_sub_norm+quantize", "residual"];
}
