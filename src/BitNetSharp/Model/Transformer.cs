using System.Runtime.CompilerServices;
using BitNetSharp.Diagnostics.Profiling;
using BitNetSharp.Kernels;
using BitNetSharp.Kernels.FloatOps;
using BitNetSharp.Memory;
using BitNetSharp.Monitoring;
using BitNetSharp.Quantization;
using BitNetSharp.Threading;

namespace BitNetSharp.Model;

/// <summary>One token of a batch: which sequence it belongs to, its position there, and whether its logits are wanted.</summary>
public readonly record struct BatchToken(int Token, int Sequence, int Position, bool WantLogits = false);

/// <summary>
/// The BitNet transformer forward pass over a batch of tokens that may come from several sequences (FORMATS.md
/// §4.2): per layer RMSNorm → int8 quant (shared by q/k/v) → ternary q/k/v → RoPE → KV cache → attention →
/// [sub-norm] → quant → o → residual; RMSNorm → quant (shared by gate/up) → gate/up → relu² or SiLU gating →
/// [sub-norm] → quant → down → residual; then the final norm and the output head for the tokens that want logits.
/// Every buffer is allocated once for <see cref="MaxBatchTokens"/>; a forward call allocates nothing.
/// </summary>
public sealed unsafe class Transformer : IDisposable
{
    private readonly ModelWeights _w;
    private readonly ModelConfig _c;
    private readonly WorkerPool _pool;
    private readonly bool _ownsPool;
    private readonly TernaryKernel _kernel;
    private readonly TernaryMatMul _matmul;
    private readonly RopeTable _rope;

    // Activations, row-major [token][...].
    private readonly NativeBuffer _x, _xb, _q, _k, _v, _att, _tmp, _hb, _hb2, _logitsHidden;
    private readonly QuantizedActivations _qDim, _qAtt, _qFf;
    private readonly AttentionWork _attention;
    private readonly HeadWork _head;
    private readonly TokenStageWork _stages;

    public Transformer(ModelWeights weights, int maxBatchTokens = 64, WorkerPool? pool = null, TernaryKernel? kernel = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxBatchTokens);
        _w = weights;
        _c = weights.Config;
        // Activation rows are indexed token × width in int: past int.MaxValue the products wrapped (a negative size, or a
        // positive one too small that a batch then overran). Refused before any thread or buffer exists.
        long widest = Math.Max(Math.Max(_c.Dim, _c.QDim), Math.Max(_c.KvDim, _c.FeedForward));
        if ((long)maxBatchTokens * widest > int.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(maxBatchTokens), maxBatchTokens,
                $"A step of {maxBatchTokens} tokens (--max-batched-tokens) is more than this model's activation buffers can index: at most {int.MaxValue / widest} tokens.");
        // The kernel before the pool: BITNET_KERNEL naming one this CPU cannot run threw after the pool's threads
        // started, and they waited for work for the rest of the process.
        _kernel = kernel ?? KernelRegistry.ForModel(weights.TernaryBytes, weights.Config.Dim);
        _pool = pool ?? new WorkerPool();
        _ownsPool = pool is null;
        _matmul = new TernaryMatMul(_pool);
        try
        {
            foreach (var layer in weights.Layers)
                foreach (var m in (ReadOnlySpan<TernaryMatrix>)[layer.Q, layer.K, layer.V, layer.O, layer.Gate, layer.Up, layer.Down])
                    _kernel.PrepareWeights(m);
            // Computed as positions are reached (Forward): sized by the model's declared context, a 16M-position model
            // run with --ctx 16 computed 1 GiB of angles before its first token.
            _rope = new RopeTable(_c.HeadDim, _c.ContextLength, _c.RopeTheta, _c.Rope, initialPositions: 4096);
            MaxBatchTokens = maxBatchTokens;
            long t = maxBatchTokens;
            _x = Floats(t * _c.Dim);
            _xb = Floats(t * _c.Dim);
            _q = Floats(t * _c.QDim);
            _k = Floats(t * _c.KvDim);
            _v = Floats(t * _c.KvDim);
            _att = Floats(t * _c.QDim);
            _tmp = Floats(t * _c.Dim);
            _hb = Floats(t * _c.FeedForward);
            _hb2 = Floats(t * _c.FeedForward);
            _logitsHidden = Floats(t * _c.Dim);
            _qDim = new QuantizedActivations(maxBatchTokens, _c.Dim);
            _qAtt = new QuantizedActivations(maxBatchTokens, _c.QDim);
            _qFf = new QuantizedActivations(maxBatchTokens, _c.FeedForward);
            _attention = new AttentionWork(_c, _pool.ThreadCount);
            _head = new HeadWork(weights.Output);
            _stages = new TokenStageWork(this);
            ActivationBits = weights.ActivationBits ?? ActivationBits.Uniform(_c.Layers);
        }
        catch
        {
            // Anything after the pool started (the RoPE table, a buffer the machine cannot give): a pool this engine
            // owns would keep its threads for the life of the process.
            if (_ownsPool) _pool.Dispose();
            throw;
        }
    }

    public ModelConfig Config => _c;

    private ActivationBits? _bits; // null while every input is 8-bit: the quantizer call stays as it always was

    /// <summary>
    /// The activation bit width of every BitLinear input (default: the model file's <see cref="ActivationBits.GgufKey"/>,
    /// else 8 everywhere). Set it between forward calls.
    /// </summary>
    public ActivationBits ActivationBits
    {
        get => _bits ?? ActivationBits.Uniform(_c.Layers);
        set
        {
            ArgumentNullException.ThrowIfNull(value);
            if (value.Layers != _c.Layers) throw new ArgumentException($"Activation bit widths for {value.Layers} layers; the model has {_c.Layers}.", nameof(value));
            _bits = value.AllEight ? null : value;
        }
    }

    /// <summary>Sees every BitLinear input before it is quantized (calibration statistics); null in normal runs. Set between forward calls.</summary>
    public Evaluation.ActivationStatistics? Observer { get; set; }

    /// <summary>Quantizes one BitLinear input at its bit width; returns the largest code (127 at 8 bits).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private int QuantizeInput(int layer, BitLinearInput input, ReadOnlySpan<float> x, QuantizedActivations dst, int t)
    {
        Observer?.Observe(layer, input, x);
        if (_bits is not { } bits)
        {
            Int8ActivationQuantizer.Quantize(x, dst, t);
            return 127;
        }
        int b = bits[layer, input];
        LowBitActivationQuantizer.Quantize(x, dst, t, b);
        return ActivationBits.MaxCode(b);
    }
    public int MaxBatchTokens { get; }
    public WorkerPool Pool => _pool;

    /// <summary>
    /// Cached positions per attention chunk (default 256). A token that sees more positions than this has its
    /// attention computed chunk by chunk with a partial softmax each, merged in order; a single sequence's chunks are
    /// spread over the worker threads. Part of the arithmetic (a different chunk length rounds differently), so results
    /// are identical across thread counts and batchings for one chunk length. Set it between forward calls.
    /// </summary>
    public int AttentionChunk
    {
        get => _attention.Chunk;
        set => _attention.Chunk = value;
    }
    public TernaryKernel Kernel => _kernel;

    /// <summary>
    /// The model-health collector the forward pass reports to (null: none). Sized for at least
    /// <see cref="MaxBatchTokens"/> tokens and this model's layers. Set it between forward calls.
    /// </summary>
    public ModelHealthCollector? Health
    {
        get => _health;
        set
        {
            if (value is not null && (value.MaxTokens < MaxBatchTokens || value.Layers != _c.Layers))
                throw new ArgumentException($"The health collector is sized for {value.MaxTokens} tokens and {value.Layers} layers; this engine needs {MaxBatchTokens} and {_c.Layers}.", nameof(value));
            _health = value;
        }
    }

    private ModelHealthCollector? _health;

    /// <summary>The operation timer the forward pass reports to (null: none; then each operation costs one null check).
    /// Sized for this model's layers and the pool's threads. Set it between forward calls.</summary>
    public OpProfiler? Profiler
    {
        get => _profiler;
        set
        {
            if (value is not null && (value.Layers != _c.Layers || value.Threads < _pool.ThreadCount))
                throw new ArgumentException($"The profiler is sized for {value.Layers} layers and {value.Threads} threads; this engine has {_c.Layers} and {_pool.ThreadCount}.", nameof(value));
            _profiler = value;
            if (value is not null) value.BytesRead = _kernel.BytesRead;
        }
    }

    // _active: this call's profiler — the one set, or, while a ProfileEventSource listener is on, one that only emits events.
    private OpProfiler? _profiler, _active, _eventProfiler;

    private static NativeBuffer Floats(long count) => new(count * sizeof(float));

    private static Span<float> Row(NativeBuffer b, int row, int width) => new((float*)b.Pointer + (long)row * width, width);

    /// <summary>
    /// Runs <paramref name="batch"/> through the model. Tokens of one sequence must come in increasing position
    /// order and continue that sequence's cache without gaps. <paramref name="caches"/>[s] is sequence s's cache.
    /// <paramref name="logits"/> receives one vocab-sized row per token with WantLogits, in batch order.
    /// </summary>
    public void Forward(ReadOnlySpan<BatchToken> batch, IReadOnlyList<KvCache> caches, Span<float> logits)
    {
        // The pass's calls follow each other within microseconds: the pool's waits poll tight until it ends.
        _pool.BeginTight();
        try
        {
            ForwardPass(batch, caches, logits);
        }
        finally
        {
            _pool.EndTight();
        }
    }

    private void ForwardPass(ReadOnlySpan<BatchToken> batch, IReadOnlyList<KvCache> caches, Span<float> logits)
    {
        int n = batch.Length;
        if (n == 0) return;
        if (n > MaxBatchTokens) throw new ArgumentException($"The batch has {n} tokens; this engine was sized for at most {MaxBatchTokens}.", nameof(batch));
        int wanted = 0, lastPosition = 0;
        for (int t = 0; t < n; t++)
        {
            var bt = batch[t];
            lastPosition = Math.Max(lastPosition, bt.Position);
            if ((uint)bt.Token >= (uint)_c.VocabSize)
                throw new ArgumentOutOfRangeException(nameof(batch), bt.Token, $"Token id {bt.Token} is outside the vocabulary of {_c.VocabSize} tokens.");
            if ((uint)bt.Sequence >= (uint)caches.Count)
                throw new ArgumentOutOfRangeException(nameof(batch), bt.Sequence, $"Sequence {bt.Sequence} has no KV cache ({caches.Count} given).");
            var cache = caches[bt.Sequence];
            // Another model's cache: the same kv width in another head split ran without a word and gave garbage
            // attention; fewer layers threw midway, after earlier layers of every sequence were written.
            if (cache.Layers != _c.Layers || cache.KvHeads != _c.KvHeads || cache.HeadDim != _c.HeadDim)
                throw new ArgumentException($"Sequence {bt.Sequence}'s KV cache has {cache.Layers} layers of {cache.KvHeads} heads × {cache.HeadDim}; " +
                    $"this model needs {_c.Layers} layers of {_c.KvHeads} heads × {_c.HeadDim}.", nameof(caches));
            if ((uint)bt.Position >= (uint)Math.Min(_c.ContextLength, caches[bt.Sequence].ContextLength))
                throw new ArgumentOutOfRangeException(nameof(batch), bt.Position,
                    $"Position {bt.Position} is past the context of {Math.Min(_c.ContextLength, caches[bt.Sequence].ContextLength)} tokens.");
            if (bt.WantLogits) wanted++;
        }
        if (logits.Length < (long)wanted * _c.VocabSize)
            throw new ArgumentException($"The logits buffer holds {logits.Length} values; {wanted} rows of {_c.VocabSize} are needed.", nameof(logits));
        _rope.EnsurePositions(lastPosition + 1);
        // A mapped file cut short under the process: refused here rather than read (SIGBUS ended the process).
        _w.CheckFilesNotTruncated();

        var health = _health;
        var p = _active = _profiler ?? (ProfileEventSource.Log.IsEnabled() ? _eventProfiler ??= new OpProfiler(_c.Layers, _pool.ThreadCount) { BytesRead = _kernel.BytesRead } : null);
        health?.BeginForward(n);
        p?.Begin(ProfileOp.Embedding, -1, n);
        for (int t = 0; t < n; t++)
        {
            _w.TokenEmbedding.GetRow(batch[t].Token, Row(_x, t, _c.Dim));
            health?.MapToken(t, batch[t].Sequence, batch[t].Position, caches[batch[t].Sequence].NonFiniteOrigin);
        }
        p?.End();

        for (int l = 0; l < _c.Layers; l++) Layer(l, batch, caches);
        health?.EndForward();
        if (health is not null)
            for (int t = 0; t < n; t++)
                caches[batch[t].Sequence].NoteNonFinite(health.TokenOrigin(t), batch[t].Position);

        int r = 0;
        p?.Begin(ProfileOp.Norm, -1, wanted);
        for (int t = 0; t < n; t++)
        {
            if (!batch[t].WantLogits) continue;
            health?.MapRow(r, t);
            RmsNorm.Apply(Row(_x, t, _c.Dim), _w.OutputNorm, Row(_logitsHidden, r, _c.Dim), _c.RmsEps);
            r++;
        }
        p?.End();
        if (wanted > 0)
        {
            p?.BeginHead(_w.Output, wanted);
            fixed (float* pl = logits)
            {
                _head.Set((float*)_logitsHidden.Pointer, pl, wanted);
                // Chunks of whole 16-row blocks taken by whichever thread is free: about an eighth of a thread's share
                // at first, shrinking to 256 rows as the vocabulary runs out, so that no thread waits long at the end.
                _pool.Run(_head, _c.VocabSize, Math.Max(HeadMinRows, (_c.VocabSize / (_pool.ThreadCount * 8) + 15) / 16 * 16), HeadMinRows);
                _w.Output.GuardNonFiniteRows(pl, wanted, _c.VocabSize);
            }
            p?.End();
        }
    }

    /// <summary>Fewest vocabulary rows per chunk of the output head (16-row blocks; 1.3 MB of an F16 head at width 2560).</summary>
    private const int HeadMinRows = 256;



    private void Layer(int l, ReadOnlySpan<BatchToken> batch, IReadOnlyList<KvCache> caches)
    {
        int n = batch.Length, qDim = _c.QDim, kvDim = _c.KvDim, ff = _c.FeedForward;
        var p = _active;

        // Attention block: one int8 quantization of the normed input serves q, k and v.
        Stage(Stage_AttnIn, l, batch);
        _qDim.Tokens = n;
        var lw = _w.Layers[l];
        // A decode step's cache writes come after v: their lines are requested now (see KvCache.PrefetchWrite).
        if (n <= PrefetchWriteTokens)
            for (int t = 0; t < n; t++) caches[batch[t].Sequence].PrefetchWrite(l, batch[t].Position);
        Products(OpProfiler.GroupQkv, l, n, _qDim, ProfileOp.Q, lw.Q, (float*)_q.Pointer, qDim, ProfileOp.K, lw.K, (float*)_k.Pointer, kvDim,
            ProfileOp.V, lw.V, (float*)_v.Pointer, kvDim);

        Stage(Stage_Rope, l, batch);
        p?.Begin(ProfileOp.Attention, l, n);
        // Written in batch order: a cache takes a sequence's positions in increasing order, without gaps.
        for (int t = 0; t < n; t++) caches[batch[t].Sequence].Write(l, batch[t].Position, Row(_k, t, kvDim), Row(_v, t, kvDim));

        _attention.Set(l, batch, caches, (float*)_q.Pointer, (float*)_att.Pointer);
        // A pass this small runs on the calling thread (see AttentionInlineMacs). Chunks split across threads: each thread
        // owns a stretch of them and the first done takes single chunks from the other's end (see AttentionWork). Pairs
        // differ in cost (a prompt's later tokens see more positions), so one at a time.
        if (_attention.Macs <= AttentionInlineLimit) _pool.Run(_attention, _attention.Items, grain: _attention.Items);
        else if (_attention.Split) _pool.RunOwned(_attention, _attention.Bounds, grain: 1);
        else _pool.Run(_attention, _attention.Items, grain: 1);
        _attention.Clear();
        p?.End();
        // The KV cache's rounding, on sampled steps (outside the attention's profile: it is the health probe's cost). The
        // exact rows are still in _k/_v; the stored ones are read back.
        if (_health is { Sampling: true } health)
            for (int t = 0; t < n; t++)
                if (ModelHealthCollector.MeasuresKv(t, n) || batch[t].Position == 0) health.KvWritten(l, t, caches[batch[t].Sequence], batch[t].Position, Row(_k, t, kvDim), Row(_v, t, kvDim));

        Stage(Stage_AttnOut, l, batch);
        _qAtt.Tokens = n;
        p?.BeginLinear(ProfileOp.O, l, lw.O, n);
        _matmul.Run(_kernel, lw.O, _qAtt, (float*)_tmp.Pointer, _c.Dim);
        p?.End();

        // Feed-forward block: one quantization serves gate and up.
        Stage(Stage_ResidualFfnIn, l, batch);
        _qDim.Tokens = n;
        Products(OpProfiler.GroupGateUp, l, n, _qDim, ProfileOp.Gate, lw.Gate, (float*)_hb.Pointer, ff, ProfileOp.Up, lw.Up, (float*)_hb2.Pointer, ff);
        Stage(Stage_FfnAct, l, batch);
        _qFf.Tokens = n;
        p?.BeginLinear(ProfileOp.Down, l, lw.Down, n);
        _matmul.Run(_kernel, lw.Down, _qFf, (float*)_tmp.Pointer, _c.Dim);
        p?.End();
        Stage(Stage_Residual, l, batch);
    }

    /// <summary>
    /// Two or three projections of one quantized input (q, k, v; gate, up) through <see cref="TernaryMatMul.RunMany"/>:
    /// one pass over the pool for a decode step, the same floats as one product after another. Profiled as the pass
    /// (its time shared by weight bytes, <see cref="OpProfiler.BeginProducts"/>) when it is one, else product by product.
    /// </summary>
    private void Products(int group, int layer, int n, QuantizedActivations x, ProfileOp op0, TernaryMatrix w0, float* y0, int stride0,
        ProfileOp op1, TernaryMatrix w1, float* y1, int stride1, ProfileOp op2 = default, TernaryMatrix? w2 = null, float* y2 = null, int stride2 = 0)
    {
        var p = _active;
        int count = w2 is null ? 2 : 3;
        if (p is null)
        {
            _matmul.RunMany(_kernel, _matmul.Prepare(_kernel, x), count, w0, y0, stride0, w1, y1, stride1, w2, y2, stride2);
            return;
        }
        // The input laid out once for the products (the lookup kernel builds its tables here) is timed with them, as in
        // o and down's own product: it fell outside every op, so q+k+v and gate+up read faster than o and down.
        if (_matmul.RunsAsOnePass(_kernel, n, w0, w1, w2))
        {
            p.BeginProducts(group, layer, n, op0, w0, op1, w1, op2, w2);
            _matmul.RunMany(_kernel, _matmul.Prepare(_kernel, x), count, w0, y0, stride0, w1, y1, stride1, w2, y2, stride2);
            p.EndProducts();
            return;
        }
        p.BeginLinear(op0, layer, w0, n);
        var rows = _matmul.Prepare(_kernel, x);
        _matmul.Run(_kernel, w0, rows, y0, stride0);
        p.End();
        p.BeginLinear(op1, layer, w1, n);
        _matmul.Run(_kernel, w1, rows, y1, stride1);
        p.End();
        if (w2 is null) return;
        p.BeginLinear(op2, layer, w2, n);
        _matmul.Run(_kernel, w2, rows, y2, stride2);
        p.End();
    }

    /// <summary>
    /// Most multiply-adds (scores and weighted values over every cached position a pass reads) for which attention runs
    /// on the calling thread: waking the other threads costs more than they save. The bundled model's decode (two KV
    /// heads, ≤ 256 positions) spent 14 µs a layer in attention on two threads against 4.9 on one (`bitnet profile -t 2`);
    /// run on the caller, `bench -m models/bitnet-tinystories.gguf -n 128 -t 2 -r 5` went from a p50 of 0.174–0.180 ms to
    /// 0.159–0.167 ms a token, and the 2B4T shape at 32–64 positions (`profile --synthetic 2b4t -t 2 -n 32`) from
    /// 22–34 to 19–22 µs a layer (three alternating pairs each, Zen 5 EPYC).
    /// </summary>
    internal const long AttentionInlineMacs = 1L << 18;

    /// <summary>This engine's <see cref="AttentionInlineMacs"/> (tests set 0 so that small models take the threaded paths).</summary>
    internal long AttentionInlineLimit { get; set; } = AttentionInlineMacs;

    /// <summary>Batches of at most this many tokens (decode steps) prefetch their KV-cache write lines before the v product.</summary>
    private const int PrefetchWriteTokens = 8;

    private const int Stage_AttnIn = 0, Stage_Rope = 1, Stage_AttnOut = 2, Stage_ResidualFfnIn = 3, Stage_FfnAct = 4, Stage_Residual = 5;

    /// <summary>
    /// Runs one per-token stage (norms, activation quantization, RoPE, residuals) for every token of the batch: on the
    /// calling thread for a single token, spread over the pool for several (each token's work is independent, and
    /// at 8 sequences it was ~10 % of a decode step while the other worker waited).
    /// </summary>
    private void Stage(int stage, int layer, ReadOnlySpan<BatchToken> batch)
    {
        var p = _active;
        p?.BeginStage(stage, layer, batch.Length);
        _stages.Set(stage, layer, batch);
        if (batch.Length == 1) _stages.Execute(0, 1, 0);
        else _pool.Run(_stages, batch.Length, grain: 1);
        _stages.Clear();
        p?.EndStage();
    }

    private void TokenStage(int stage, int layer, int t, in BatchToken bt, int worker)
    {
        var lw = _w.Layers[layer];
        var health = _health;
        var p = _active;
        p?.LapStart(worker);
        int dim = _c.Dim, qDim = _c.QDim, kvDim = _c.KvDim, ff = _c.FeedForward, hd = _c.HeadDim;
        switch (stage)
        {
            case Stage_AttnIn:
                health?.LayerStart(layer, t, Row(_x, t, dim));
                p?.LapStart(worker);
                RmsNorm.Apply(Row(_x, t, dim), lw.AttnNorm, Row(_xb, t, dim), _c.RmsEps);
                p?.Lap(worker, ProfileOp.Norm);
                int qkvMax = QuantizeInput(layer, BitLinearInput.Qkv, Row(_xb, t, dim), _qDim, t);
                p?.Lap(worker, ProfileOp.Quantize);
                health?.Quantized(layer, BitLinearInput.Qkv, t, Row(_xb, t, dim), _qDim.RowSpan(t), qkvMax);
                break;
            case Stage_Rope:
            {
                var q = Row(_q, t, qDim);
                var k = Row(_k, t, kvDim);
                for (int h = 0; h < _c.Heads; h++) _rope.Apply(q.Slice(h * hd, hd), bt.Position);
                for (int h = 0; h < _c.KvHeads; h++) _rope.Apply(k.Slice(h * hd, hd), bt.Position);
                p?.Lap(worker, ProfileOp.Rope);
                break;
            }
            case Stage_AttnOut:
            {
                var a = Row(_att, t, qDim);
                if (lw.AttnSubNorm is { } sub)
                {
                    RmsNorm.Apply(a, sub, a, _c.RmsEps);
                    p?.Lap(worker, ProfileOp.Norm); // only when there is one: a model without sub-norms read 4 norm calls a layer
                }
                int oMax = QuantizeInput(layer, BitLinearInput.O, a, _qAtt, t);
                p?.Lap(worker, ProfileOp.Quantize);
                health?.Quantized(layer, BitLinearInput.O, t, a, _qAtt.RowSpan(t), oMax);
                break;
            }
            case Stage_ResidualFfnIn:
                ResidualAdd.Apply(Row(_x, t, dim), Row(_tmp, t, dim));
                p?.Lap(worker, ProfileOp.Residual);
                RmsNorm.Apply(Row(_x, t, dim), lw.FfnNorm, Row(_xb, t, dim), _c.RmsEps);
                p?.Lap(worker, ProfileOp.Norm);
                int gateupMax = QuantizeInput(layer, BitLinearInput.GateUp, Row(_xb, t, dim), _qDim, t);
                p?.Lap(worker, ProfileOp.Quantize);
                health?.Quantized(layer, BitLinearInput.GateUp, t, Row(_xb, t, dim), _qDim.RowSpan(t), gateupMax);
                break;
            case Stage_FfnAct:
            {
                var g = Row(_hb, t, ff);
                if (_c.Activation == FeedForwardActivation.ReluSquared) GatedActivation.ReluSquared(g, Row(_hb2, t, ff), g);
                else GatedActivation.Silu(g, Row(_hb2, t, ff), g);
                p?.Lap(worker, ProfileOp.Activation);
                if (lw.FfnSubNorm is { } sub)
                {
                    RmsNorm.Apply(g, sub, g, _c.RmsEps);
                    p?.Lap(worker, ProfileOp.Norm);
                }
                int downMax = QuantizeInput(layer, BitLinearInput.Down, g, _qFf, t);
                p?.Lap(worker, ProfileOp.Quantize);
                health?.Quantized(layer, BitLinearInput.Down, t, g, _qFf.RowSpan(t), downMax);
                break;
            }
            default:
                ResidualAdd.Apply(Row(_x, t, dim), Row(_tmp, t, dim));
                p?.Lap(worker, ProfileOp.Residual);
                health?.LayerEnd(layer, t, Row(_x, t, dim));
                break;
        }
    }

    /// <summary>The per-token stages as pool work: the call's arguments live in fields, so a call allocates nothing.</summary>
    private sealed class TokenStageWork(Transformer owner) : IParallelWork
    {
        private int _stage;
        private int _layer = -1;
        private BatchToken[] _batch = new BatchToken[16];

        public void Set(int stage, int layer, ReadOnlySpan<BatchToken> batch)
        {
            _stage = stage;
            _layer = layer;
            if (_batch.Length < batch.Length) _batch = new BatchToken[Math.Max(batch.Length, _batch.Length * 2)];
            batch.CopyTo(_batch);
        }

        public void Clear() => _layer = -1;

        public void Execute(int start, int end, int worker)
        {
            for (int t = start; t < end; t++) owner.TokenStage(_stage, _layer, t, _batch[t], worker);
        }
    }

    /// <summary>
    /// Causal attention for (token, KV head) pairs: the GQA group of query heads sharing that KV head is scored against
    /// the sequence's cached positions ≤ its own, softmaxed per head, and weighted over V, the group together (so each
    /// K and V row is read and widened once per group, not once per query head; results equal per-head attention).
    /// <para>
    /// A pair that sees more than <see cref="Chunk"/> positions is computed in chunks of that many positions with a
    /// partial softmax each, then merged (<see cref="PartialSoftmax"/>). When the batch has few pairs for the threads
    /// (a single sequence decoding: one pair per KV head), the chunks of all pairs, in pair order, are the parallel work
    /// items, so one sequence's long context is read by every thread: each thread owns an equal stretch of them and works
    /// through it front to back in a few long runs, and a thread done early takes single chunks from the back of another's
    /// stretch (<see cref="WorkerPool.RunOwned"/>); whichever thread computes a pair's last chunk merges that pair, so the
    /// merges overlap the other threads' chunks instead of following the pass on the calling thread. Otherwise each pair's chunks run in order on one thread. A run of
    /// consecutive chunks scores all its keys in one pass, then exponentiates and weighs the values chunk by chunk, so K
    /// and V each stream once per run instead of restarting at every chunk. The
    /// arithmetic is the same either way and the merge visits chunks in order, so the result depends on the positions
    /// and the chunk length only: not on the thread count, the batch or the schedule.
    /// </para>
    /// </summary>
    private sealed class AttentionWork : IParallelWork
    {
        /// <summary>Split chunks across threads while the batch has fewer pairs than this many per thread.</summary>
        private const int SplitPairsPerThread = 4;

        private readonly ModelConfig c;
        private readonly int _threads;
        private readonly float[][] _scores; // per worker: [group][stride] scores, then weights
        private readonly float _scale;
        private readonly int _partialSize; // one chunk's partial: [group × headDim outputs][group maxima][group sums]
        private float[][] _ownPartials = [];  // per worker: the chunks of the pair it computes whole
        private float[] _splitPartials = [];  // the chunks of every pair, when the chunks are the work items
        private int[] _chunkPair = [], _pairChunks = [], _pairFirst = []; // split: the pair of each chunk, in pair order
        private int[] _pairLeft = []; // split: a pair's chunks not yet computed; the thread that computes its last merges it
        private readonly int[] _bounds;
        private int _chunk, _pairs, _items;
        private bool _split;
        private int _layer;
        private BatchToken[] _batch = new BatchToken[16];
        private IReadOnlyList<KvCache>? _caches;
        private float* _q, _out;

        public AttentionWork(ModelConfig config, int threads)
        {
            c = config;
            _threads = threads;
            _scores = new float[threads][];
            for (int i = 0; i < threads; i++) _scores[i] = new float[c.GroupSize * c.ContextLength];
            _scale = 1f / MathF.Sqrt(c.HeadDim);
            _partialSize = c.GroupSize * (c.HeadDim + 2);
            _bounds = new int[threads + 1];
            Chunk = DefaultChunk;
        }

        public const int DefaultChunk = 256;

        /// <summary>Positions per chunk: a pair with at most this many is computed in one pass, as before chunking.</summary>
        public int Chunk
        {
            get => _chunk;
            set
            {
                if (value < 1) throw new ArgumentOutOfRangeException(nameof(value), value, "An attention chunk holds at least one position.");
                if (value == _chunk) return;
                _chunk = value;
                int maxChunks = (c.ContextLength + value - 1) / value;
                if ((long)maxChunks * _partialSize > Array.MaxLength || (long)SplitPairsPerThread * _threads * maxChunks > Array.MaxLength)
                    throw new ArgumentOutOfRangeException(nameof(value), value, $"Chunks of {value} positions over a context of {c.ContextLength} need more partial results than one array holds; use a longer chunk.");
                _ownPartials = new float[_threads][];
                for (int i = 0; i < _threads; i++) _ownPartials[i] = maxChunks > 1 ? new float[maxChunks * _partialSize] : [];
                _splitPartials = [];
                _chunkPair = new int[SplitPairsPerThread * _threads * maxChunks];
            }
        }

        /// <summary>Work items of the pass <see cref="Set"/> prepared: chunks when split, else pairs.</summary>
        public int Items => _items;

        /// <summary>Whether the pass <see cref="Set"/> prepared splits chunks across threads (then run over <see cref="Bounds"/>).</summary>
        public bool Split => _split;

        /// <summary>When <see cref="Split"/>: each thread's owned stretch of the chunks, for <see cref="WorkerPool.RunOwned"/>.</summary>
        public ReadOnlySpan<int> Bounds => _bounds;

        /// <summary>Multiply-adds of the pass <see cref="Set"/> prepared: per (token, KV head), the positions it sees
        /// × the group's query heads × head size × 2 (scores and values).</summary>
        public long Macs { get; private set; }

        public void Set(int layer, ReadOnlySpan<BatchToken> batch, IReadOnlyList<KvCache> caches, float* q, float* output)
        {
            _layer = layer;
            if (_batch.Length < batch.Length) _batch = new BatchToken[Math.Max(batch.Length, _batch.Length * 2)];
            batch.CopyTo(_batch);
            _caches = caches;
            _q = q;
            _out = output;
            _pairs = batch.Length * c.KvHeads;
            if (_pairChunks.Length < _pairs)
            {
                _pairChunks = new int[Math.Max(_pairs, 2 * _pairChunks.Length)];
                _pairFirst = new int[_pairChunks.Length];
                _pairLeft = new int[_pairChunks.Length];
            }
            int chunked = 0, total = 0;
            long macs = 0;
            for (int pair = 0; pair < _pairs; pair++)
            {
                int positions = batch[pair / c.KvHeads].Position + 1;
                macs += (long)positions * c.GroupSize * c.HeadDim * 2;
                int n = positions <= _chunk ? 1 : (positions + _chunk - 1) / _chunk;
                _pairChunks[pair] = n;
                _pairFirst[pair] = total;
                total += n;
                if (n > 1) chunked++;
            }
            Macs = macs;
            _split = _threads > 1 && chunked > 0 && _pairs < SplitPairsPerThread * _threads;
            if (!_split)
            {
                _items = _pairs;
                return;
            }
            if (_splitPartials.Length < (long)total * _partialSize)
                _splitPartials = new float[(long)SplitPairsPerThread * _threads * ((c.ContextLength + _chunk - 1) / _chunk) * _partialSize];
            // Every pair's chunks in pair order (a pair seeing at most one chunk's positions is one item, computed whole),
            // each thread owning an equal stretch.
            for (int pair = 0; pair < _pairs; pair++)
            {
                _pairLeft[pair] = _pairChunks[pair];
                for (int ch = 0; ch < _pairChunks[pair]; ch++) _chunkPair[_pairFirst[pair] + ch] = pair;
            }
            _items = total;
            for (int t = 0; t <= _threads; t++) _bounds[t] = (int)((long)total * t / _threads);
        }

        public void Clear() => _caches = null;

        public void Execute(int start, int end, int worker)
        {
            if (_split)
            {
                // [start, end) of the chunks in pair order: one run per pair it covers.
                fixed (float* partials = _splitPartials)
                    for (int item = start; item < end;)
                    {
                        int pair = _chunkPair[item], first = _pairFirst[pair];
                        int to = Math.Min(end, first + _pairChunks[pair]);
                        if (_pairChunks[pair] == 1) Whole(pair, worker);
                        else
                        {
                            ChunkRun(pair, item - first, to - first, worker, partials + (long)first * _partialSize);
                            // The pair's last chunks: merge them here, while the other threads still compute theirs. The
                            // interlocked update orders every thread's partials before the merge reads them, and the merge
                            // visits the chunks in order, whichever thread runs it.
                            if (Interlocked.Add(ref _pairLeft[pair], item - to) == 0) MergePair(pair, partials + (long)first * _partialSize, _pairChunks[pair]);
                        }
                        item = to;
                    }
                return;
            }
            for (int pair = start; pair < end; pair++)
            {
                int chunks = _pairChunks[pair];
                if (chunks == 1)
                {
                    Whole(pair, worker);
                    continue;
                }
                fixed (float* partials = _ownPartials[worker])
                {
                    ChunkRun(pair, 0, chunks, worker, partials);
                    MergePair(pair, partials, chunks);
                }
            }
        }

        /// <summary>One pair in one pass: scores, softmax, weighted V.</summary>
        private void Whole(int pair, int worker)
        {
            var scores = _scores[worker];
            int hd = c.HeadDim, group = c.GroupSize, stride = c.ContextLength;
            int t = pair / c.KvHeads, kvHead = pair % c.KvHeads;
            var bt = _batch[t];
            int positions = bt.Position + 1;
            var cache = _caches![bt.Sequence];
            long offset = (long)t * c.QDim + kvHead * group * hd;
            var q = new ReadOnlySpan<float>(_q + offset, group * hd);
            cache.ScoresGroup(_layer, kvHead, q, group, scores, stride, positions, _scale);
            for (int g = 0; g < group; g++) Softmax.AttentionInPlace(scores.AsSpan(g * stride, positions));
            var o = new Span<float>(_out + offset, group * hd);
            o.Clear();
            cache.AccumulateVGroup(_layer, kvHead, scores, group, stride, o, positions);
        }

        /// <summary>
        /// Chunks [<paramref name="from"/>, <paramref name="to"/>) of a pair's positions, chunk ch's unnormalized outputs,
        /// maxima and sums to partials + ch·partialSize. Per chunk: a partial softmax of its scores and the weighted sum
        /// of its values (a score depends on its position only, so scoring the run's keys in one call gives each chunk
        /// the scores it would get alone); the keys stream from memory once per run, then the values.
        /// </summary>
        private void ChunkRun(int pair, int from, int to, int worker, float* partials)
        {
            var scores = _scores[worker];
            int hd = c.HeadDim, group = c.GroupSize, stride = c.ContextLength;
            int t = pair / c.KvHeads, kvHead = pair % c.KvHeads;
            var bt = _batch[t];
            int positions = bt.Position + 1;
            int start = from * _chunk, end = Math.Min(to * _chunk, positions);
            var cache = _caches![bt.Sequence];
            var q = new ReadOnlySpan<float>(_q + (long)t * c.QDim + kvHead * group * hd, group * hd);
            cache.PrefetchValues(_layer, kvHead, start, Math.Min(_chunk, end - start));
            cache.ScoresGroupRange(_layer, kvHead, q, group, scores, stride, start, end - start, _scale);
            fixed (float* ps = scores)
                for (int ch = from; ch < to; ch++)
                {
                    int first = ch * _chunk, count = Math.Min(_chunk, positions - first);
                    float* pc = partials + (long)ch * _partialSize;
                    for (int g = 0; g < group; g++)
                        pc[group * hd + group + g] = PartialSoftmax.Exponentiate(ps + g * stride + first - start, count, out pc[group * hd + g]);
                }
            for (int ch = from; ch < to; ch++)
            {
                int first = ch * _chunk, count = Math.Min(_chunk, positions - first);
                var o = new Span<float>(partials + (long)ch * _partialSize, group * hd);
                o.Clear();
                cache.AccumulateVGroupRange(_layer, kvHead, scores.AsSpan(first - start), group, stride, o, first, count);
            }
        }

        private void MergePair(int pair, float* partials, int chunks)
        {
            int hd = c.HeadDim, group = c.GroupSize;
            int t = pair / c.KvHeads, kvHead = pair % c.KvHeads;
            float* output = _out + (long)t * c.QDim + kvHead * group * hd;
            for (int g = 0; g < group; g++)
                PartialSoftmax.Merge(partials + g * hd, chunks, _partialSize, group * hd - g * hd + g, group * hd - g * hd + group + g, hd, output + g * hd);
        }
    }

    /// <summary>The output head split over vocabulary rows: each thread owns a slice of the vocabulary for every wanted token.</summary>
    private sealed class HeadWork(EmbeddingTable output) : IParallelWork
    {
        private float* _hidden, _logits;
        private int _rows;

        public void Set(float* hidden, float* logits, int rows)
        {
            _hidden = hidden;
            _logits = logits;
            _rows = rows;
        }

        public void Execute(int start, int end, int worker) =>
            output.MatMul(_hidden, _rows, _logits, output.Rows, start, end);
    }

    public void Dispose()
    {
        foreach (var b in new[] { _x, _xb, _q, _k, _v, _att, _tmp, _hb, _hb2, _logitsHidden }) b.Dispose();
        _qDim.Dispose();
        _qAtt.Dispose();
        _qFf.Dispose();
        _matmul.Dispose();
        if (_ownsPool) _pool.Dispose();
    }
}
