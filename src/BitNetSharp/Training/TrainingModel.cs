using BitNetSharp.Kernels.FloatOps;
using BitNetSharp.Model;
using BitNetSharp.Monitoring;
using BitNetSharp.Threading;
using BitNetSharp.Training.Layers;

namespace BitNetSharp.Training;

/// <summary>
/// The BitNet b1.58 graph the engine runs (FORMATS.md §4.2), trainable: embedding → per block RMSNorm → BitLinear
/// q/k/v → NEOX RoPE → causal GQA attention → attn sub-norm → BitLinear o → residual; RMSNorm → BitLinear gate, up →
/// relu(g)²·u → ffn sub-norm → BitLinear down → residual; final RMSNorm; logits = h·Eᵀ with the (unquantized)
/// embedding matrix E as the tied head. fp32 latent weights in one flat array (<see cref="Parameters"/>,
/// <see cref="Gradients"/>, carved by <see cref="Layout"/>).
/// <para>
/// <see cref="Forward"/> and <see cref="Backward"/> are written block by block, the backward in mirror order right
/// below the forward, with every activation the backward needs kept from the forward. All buffers are allocated
/// once for <see cref="MaxBatch"/> rows of up to the context length; a step allocates nothing.
/// </para>
/// </summary>
public sealed unsafe class TrainingModel
{
    private readonly TrainingShape _s;
    private readonly ParameterLayout _layout;
    private readonly WorkerPool _pool;
    private readonly MatMulNT _matmul;
    private readonly Transpose _transpose;
    private readonly RmsNormLayer _norm;
    private readonly BitLinear _linear;
    private readonly RopeLayer _rope;
    private readonly CausalAttention _attention;
    private readonly ReluSquaredGate _gate;
    private readonly CrossEntropy _loss;

    private readonly float[] _params, _grads;
    private readonly float* _p, _g;

    // Quantized projections, refreshed from the latent weights by every Forward: codes (rows, cols) and their transposes.
    private readonly float[] _codesArray, _codesTArray;
    private readonly float* _codes, _codesT;
    private readonly int[] _codeOffset; // per parameter tensor index → offset in _codes (projections only)
    private readonly float[] _beta;     // per parameter tensor index

    private readonly LayerActivations[] _acts;
    private readonly List<float[]> _buffers = []; // pinned; held so the pointers stay valid
    private readonly float* _resFinal, _rstdFinal, _xFinal, _logits;
    private readonly float* _scratchNorm, _xT, _dyT, _dres, _dxn, _dq, _dk, _dv, _datt, _datt2, _dff, _dm, _dg, _du, _embT, _dlogitsT;
    private readonly int[] _inputs, _targets;
    private readonly float[] _tokenLosses;
    private int _batch, _seqLen;
    private bool _hasTargets;

    /// <summary>One block's saved activations (pointers into the arena), [tokens, width] row-major.</summary>
    private sealed class LayerActivations
    {
        public float* ResIn, Rstd1, Xq1, Sx1, Q, K, V, Probs, Att, Rstd2, Xq2, Sx2, ResMid, Rstd3, Xq3, Sx3, G, U, M, Rstd4, Xq4, Sx4;
    }

    /// <summary>
    /// The largest buffer a model of this shape and batch allocates that one array cannot hold (past
    /// <see cref="Array.MaxLength"/> elements), named with its size formula and the values it would need; null when all fit.
    /// Checked before any work: a run that cannot start used to fail with an OverflowException after its tokenizer was trained.
    /// </summary>
    public static string? BufferTooLarge(TrainingShape shape, int maxBatch)
    {
        double n = (double)maxBatch * shape.ContextLength;
        (string Name, double Count)[] buffers =
        [
            ("attention probabilities, batch·heads·ctx²", n * shape.Heads * shape.ContextLength),
            ("logits, batch·ctx·vocab", n * shape.VocabSize),
            ("feed-forward activations, batch·ctx·ff", n * shape.FeedForward),
            ("activations, batch·ctx·dim", n * Math.Max(shape.Dim, shape.QDim)),
            ("transposed embedding, dim·vocab", (double)shape.Dim * shape.VocabSize),
        ];
        foreach (var (name, count) in buffers)
            if (count > Array.MaxLength)
                return string.Create(System.Globalization.CultureInfo.InvariantCulture, $"the {name} buffer would hold {count:N0} values, more than one array can ({Array.MaxLength:N0})");
        return null;
    }

    public TrainingModel(TrainingShape shape, int maxBatch, bool quantized, WorkerPool pool)
    {
        shape.Validate();
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxBatch);
        if (BufferTooLarge(shape, maxBatch) is { } tooLarge)
            throw new ArgumentException($"Batch {maxBatch} of shape {shape}: {tooLarge}. Lower the context, batch or vocabulary.", nameof(maxBatch));
        _s = shape;
        _layout = new ParameterLayout(shape);
        _pool = pool;
        MaxBatch = maxBatch;
        Quantized = quantized;
        _matmul = new MatMulNT(pool);
        _transpose = new Transpose(pool);
        _norm = new RmsNormLayer(pool);
        _linear = new BitLinear(pool, _matmul, _transpose, quantized);
        _rope = new RopeLayer(pool, shape);
        _attention = new CausalAttention(pool, shape);
        _gate = new ReluSquaredGate(pool);
        _loss = new CrossEntropy(pool);

        _params = PinnedFloats.Allocate(_layout.Count);
        _grads = PinnedFloats.Allocate(_layout.Count);
        _p = PinnedFloats.Pointer(_params);
        _g = PinnedFloats.Pointer(_grads);

        _codeOffset = new int[_layout.Tensors.Count];
        _beta = new float[_layout.Tensors.Count];
        int codes = 0;
        for (int i = 0; i < _layout.Tensors.Count; i++)
        {
            if (!_layout.Tensors[i].IsProjection) { _codeOffset[i] = -1; continue; }
            _codeOffset[i] = codes;
            codes += _layout.Tensors[i].Length;
        }
        _codesArray = PinnedFloats.Allocate(codes);
        _codesTArray = PinnedFloats.Allocate(codes);
        _codes = PinnedFloats.Pointer(_codesArray);
        _codesT = PinnedFloats.Pointer(_codesTArray);

        int T = shape.ContextLength, d = shape.Dim, q = shape.QDim, kv = shape.KvDim, ff = shape.FeedForward, V = shape.VocabSize;
        long n = (long)maxBatch * T;
        long probs = (long)maxBatch * shape.Heads * T * T;
        int widest = Math.Max(Math.Max(d, q), ff);
        float* Take(long count)
        {
            var array = PinnedFloats.Allocate(count);
            _buffers.Add(array);
            return PinnedFloats.Pointer(array);
        }
        _acts = new LayerActivations[shape.Layers];
        for (int l = 0; l < shape.Layers; l++)
        {
            _acts[l] = new LayerActivations
            {
                ResIn = Take(n * d), Rstd1 = Take(n), Xq1 = Take(n * d), Sx1 = Take(n),
                Q = Take(n * q), K = Take(n * kv), V = Take(n * kv), Probs = Take(probs),
                Att = Take(n * q), Rstd2 = Take(n), Xq2 = Take(n * q), Sx2 = Take(n),
                ResMid = Take(n * d), Rstd3 = Take(n), Xq3 = Take(n * d), Sx3 = Take(n),
                G = Take(n * ff), U = Take(n * ff), M = Take(n * ff), Rstd4 = Take(n), Xq4 = Take(n * ff), Sx4 = Take(n),
            };
        }
        _resFinal = Take(n * d); _xFinal = Take(n * d); _dres = Take(n * d); _rstdFinal = Take(n); _logits = Take(n * V);
        _scratchNorm = Take(n * widest); _xT = Take(widest * n); _dyT = Take(widest * n);
        _dxn = Take(n * d); _dq = Take(n * q); _dk = Take(n * kv); _dv = Take(n * kv); _datt = Take(n * q); _datt2 = Take(n * q);
        _dff = Take(n * ff); _dm = Take(n * ff); _dg = Take(n * ff); _du = Take(n * ff);
        _embT = Take((long)d * V); _dlogitsT = Take((long)V * n);
        _inputs = GC.AllocateArray<int>((int)n, pinned: true);
        _targets = GC.AllocateArray<int>((int)n, pinned: true);
        _tokenLosses = new float[n];
        _activationBits = ActivationBits.Uniform(shape.Layers);
    }

    public TrainingShape Shape => _s;
    public ParameterLayout Layout => _layout;
    public int MaxBatch { get; }
    public bool Quantized { get; }
    public WorkerPool Pool => _pool;

    /// <summary>
    /// The activation bit width of every BitLinear input the forward fake-quantizes at (default 8 everywhere: the
    /// trainer as it always was); ignored in full precision.
    /// </summary>
    public ActivationBits ActivationBits
    {
        get => _activationBits;
        set
        {
            ArgumentNullException.ThrowIfNull(value);
            if (value.Layers != _s.Layers)
                throw new ArgumentException($"The bit widths are for {value.Layers} layers; the model has {_s.Layers}.", nameof(value));
            _activationBits = value;
        }
    }

    private ActivationBits _activationBits = null!;

    /// <summary>The fp32 latent weights (the optimizer updates these in place).</summary>
    public float[] Parameters => _params;

    /// <summary>∂loss/∂parameters from the last <see cref="Backward"/>.</summary>
    public float[] Gradients => _grads;

    /// <summary>Per-token losses of the last forward with targets ([batch·seqLen]).</summary>
    public ReadOnlySpan<float> TokenLosses => _tokenLosses.AsSpan(0, _batch * _seqLen);

    /// <summary>
    /// Initializes like GPT-2 / llm.c: every matrix N(0, 0.02²), the two residual-output projections (o, down) scaled by
    /// 1/√(2·layers), norm weights 1. Box–Muller over <see cref="SplitMix64"/>, so a seed gives the same model everywhere.
    /// </summary>
    public void Initialize(ulong seed)
    {
        var rng = new SplitMix64(seed);
        foreach (var t in _layout.Tensors)
        {
            var w = _params.AsSpan(t.Offset, t.Length);
            if (!t.IsMatrix) { w.Fill(1f); continue; }
            double std = 0.02;
            if (t.Name.EndsWith("attn_output.weight", StringComparison.Ordinal) || t.Name.EndsWith("ffn_down.weight", StringComparison.Ordinal))
                std /= Math.Sqrt(2.0 * _s.Layers);
            for (int i = 0; i < w.Length; i++) w[i] = (float)(rng.NextGaussian() * std);
        }
    }

    /// <summary>
    /// Runs the model on <paramref name="batch"/> rows of <paramref name="seqLen"/> tokens (inputs row-major). With
    /// targets (same shape), returns the mean next-token cross-entropy; without, returns NaN and only the logits are
    /// computed. Re-quantizes the projections from the current latent weights first.
    /// </summary>
    public float Forward(ReadOnlySpan<int> inputs, ReadOnlySpan<int> targets, int batch, int seqLen)
    {
        if (batch < 1 || batch > MaxBatch) throw new ArgumentOutOfRangeException(nameof(batch), batch, $"The batch must be 1 to {MaxBatch} rows.");
        if (seqLen < 1 || seqLen > _s.ContextLength) throw new ArgumentOutOfRangeException(nameof(seqLen), seqLen, $"A row must be 1 to {_s.ContextLength} tokens.");
        int n = batch * seqLen;
        if (inputs.Length != n) throw new ArgumentException($"{inputs.Length} input tokens for {batch}×{seqLen}.", nameof(inputs));
        if (targets.Length != 0 && targets.Length != n) throw new ArgumentException($"{targets.Length} targets for {batch}×{seqLen}.", nameof(targets));
        for (int i = 0; i < n; i++)
        {
            if ((uint)inputs[i] >= (uint)_s.VocabSize) throw new ArgumentOutOfRangeException(nameof(inputs), inputs[i], $"Token id outside the vocabulary of {_s.VocabSize}.");
            if (targets.Length != 0 && (uint)targets[i] >= (uint)_s.VocabSize) throw new ArgumentOutOfRangeException(nameof(targets), targets[i], $"Token id outside the vocabulary of {_s.VocabSize}.");
        }
        _batch = batch;
        _seqLen = seqLen;
        _hasTargets = targets.Length != 0;
        inputs.CopyTo(_inputs);
        if (_hasTargets) targets.CopyTo(_targets);

        QuantizeWeights();
        int d = _s.Dim, V = _s.VocabSize;

        // Embedding.
        float* x = _acts.Length > 0 ? _acts[0].ResIn : _resFinal;
        for (int t = 0; t < n; t++)
            new ReadOnlySpan<float>(_p + _layout.Embedding + (long)_inputs[t] * d, d).CopyTo(new Span<float>(x + (long)t * d, d));

        for (int l = 0; l < _s.Layers; l++)
            LayerForward(l, n, batch, seqLen, l + 1 < _s.Layers ? _acts[l + 1].ResIn : _resFinal);

        // Final norm and tied head (fp32, not quantized).
        _norm.Forward(_resFinal, _p + _layout.OutputNorm, _xFinal, _rstdFinal, n, d, _s.RmsEps);
        _matmul.Run(_xFinal, _p + _layout.Embedding, _logits, n, V, d);
        if (!_hasTargets) return float.NaN;
        fixed (int* tg = _targets) _loss.Forward(_logits, tg, _tokenLosses, n, V);
        double sum = 0;
        for (int t = 0; t < n; t++) sum += _tokenLosses[t];
        return (float)(sum / n);
    }

    /// <summary>Gradients of the last Forward's mean loss into <see cref="Gradients"/> (overwritten).</summary>
    public void Backward()
    {
        if (!_hasTargets) throw new InvalidOperationException("Backward needs a Forward with targets.");
        int n = _batch * _seqLen, d = _s.Dim, V = _s.VocabSize;

        // Cross-entropy and tied head: dz over the logits; dE = dzᵀ·x_final (written), dx_final = dz·E.
        fixed (int* tg = _targets) _loss.Backward(_logits, tg, n, V);
        _transpose.Run(_logits, n, V, _dlogitsT);
        _transpose.Run(_xFinal, n, d, _xT);
        _matmul.Run(_dlogitsT, _xT, _g + _layout.Embedding, V, d, n);
        _transpose.Run(_p + _layout.Embedding, V, d, _embT);
        float* dxFinal = _dxn;
        _matmul.Run(_logits, _embT, dxFinal, n, d, V);

        // Final norm: the residual gradient starts here.
        new Span<float>(_dres, n * d).Clear();
        _norm.Backward(_resFinal, _p + _layout.OutputNorm, _rstdFinal, dxFinal, _dres, _g + _layout.OutputNorm, n, d);

        for (int l = _s.Layers - 1; l >= 0; l--) LayerBackward(l, n, _batch, _seqLen);

        // Embedding: scatter-add into the rows the head already wrote.
        for (int t = 0; t < n; t++)
        {
            float* dst = _g + _layout.Embedding + (long)_inputs[t] * d, src = _dres + (long)t * d;
            for (int i = 0; i < d; i++) dst[i] += src[i];
        }
    }

    private void LayerForward(int l, int n, int batch, int T, float* resOut)
    {
        var a = _acts[l];
        var o = _layout.Layers[l];
        int d = _s.Dim, q = _s.QDim, kv = _s.KvDim, ff = _s.FeedForward;
        float eps = _s.RmsEps;
        var bits = _activationBits;

        // Attention block.
        _norm.Forward(a.ResIn, _p + o.AttnNorm, _scratchNorm, a.Rstd1, n, d, eps);
        _linear.QuantizeActivations(_scratchNorm, n, d, a.Xq1, a.Sx1, bits[l, BitLinearInput.Qkv]);
        _linear.Forward(a.Xq1, a.Sx1, Codes(o.Q), Beta(o.Q), a.Q, n, q, d);
        _linear.Forward(a.Xq1, a.Sx1, Codes(o.K), Beta(o.K), a.K, n, kv, d);
        _linear.Forward(a.Xq1, a.Sx1, Codes(o.V), Beta(o.V), a.V, n, kv, d);
        _rope.Forward(a.Q, a.K, n, T, q, kv);
        _attention.Forward(a.Q, a.K, a.V, a.Probs, a.Att, batch, T);
        _norm.Forward(a.Att, _p + o.AttnSubNorm, _scratchNorm, a.Rstd2, n, q, eps);
        _linear.QuantizeActivations(_scratchNorm, n, q, a.Xq2, a.Sx2, bits[l, BitLinearInput.O]);
        _linear.Forward(a.Xq2, a.Sx2, Codes(o.O), Beta(o.O), a.ResMid, n, d, q);
        Add(a.ResMid, a.ResIn, (long)n * d);

        // Feed-forward block.
        _norm.Forward(a.ResMid, _p + o.FfnNorm, _scratchNorm, a.Rstd3, n, d, eps);
        _linear.QuantizeActivations(_scratchNorm, n, d, a.Xq3, a.Sx3, bits[l, BitLinearInput.GateUp]);
        _linear.Forward(a.Xq3, a.Sx3, Codes(o.Gate), Beta(o.Gate), a.G, n, ff, d);
        _linear.Forward(a.Xq3, a.Sx3, Codes(o.Up), Beta(o.Up), a.U, n, ff, d);
        _gate.Forward(a.G, a.U, a.M, n, ff);
        _norm.Forward(a.M, _p + o.FfnSubNorm, _scratchNorm, a.Rstd4, n, ff, eps);
        _linear.QuantizeActivations(_scratchNorm, n, ff, a.Xq4, a.Sx4, bits[l, BitLinearInput.Down]);
        _linear.Forward(a.Xq4, a.Sx4, Codes(o.Down), Beta(o.Down), resOut, n, d, ff);
        Add(resOut, a.ResMid, (long)n * d);
    }

    /// <summary>The mirror of <see cref="LayerForward"/>: _dres holds ∂L/∂(block output) on entry, ∂L/∂(block input) on exit.</summary>
    private void LayerBackward(int l, int n, int batch, int T)
    {
        var a = _acts[l];
        var o = _layout.Layers[l];
        int d = _s.Dim, q = _s.QDim, kv = _s.KvDim, ff = _s.FeedForward;

        // Feed-forward block, last op first. resOut = resMid + down(x̃4): the residual passes _dres through unchanged.
        _linear.TransposeInput(a.Xq4, a.Sx4, _xT, n, ff);
        _linear.Backward(_dres, _xT, CodesT(o.Down), Beta(o.Down), _dff, false, _g + o.Down, _dyT, n, d, ff);
        new Span<float>(_dm, n * ff).Clear();
        _norm.Backward(a.M, _p + o.FfnSubNorm, a.Rstd4, _dff, _dm, _g + o.FfnSubNorm, n, ff);
        _gate.Backward(a.G, a.U, _dm, _dg, _du, n, ff);
        _linear.TransposeInput(a.Xq3, a.Sx3, _xT, n, d);
        _linear.Backward(_dg, _xT, CodesT(o.Gate), Beta(o.Gate), _dxn, false, _g + o.Gate, _dyT, n, ff, d);
        _linear.Backward(_du, _xT, CodesT(o.Up), Beta(o.Up), _dxn, true, _g + o.Up, _dyT, n, ff, d);
        _norm.Backward(a.ResMid, _p + o.FfnNorm, a.Rstd3, _dxn, _dres, _g + o.FfnNorm, n, d);

        // Attention block. resMid = resIn + o(x̃2).
        _linear.TransposeInput(a.Xq2, a.Sx2, _xT, n, q);
        _linear.Backward(_dres, _xT, CodesT(o.O), Beta(o.O), _datt, false, _g + o.O, _dyT, n, d, q);
        new Span<float>(_datt2, n * q).Clear();
        _norm.Backward(a.Att, _p + o.AttnSubNorm, a.Rstd2, _datt, _datt2, _g + o.AttnSubNorm, n, q);
        _attention.Backward(a.Q, a.K, a.V, a.Probs, _datt2, _dq, _dk, _dv, batch, T);
        _rope.Backward(_dq, _dk, n, T, q, kv);
        _linear.TransposeInput(a.Xq1, a.Sx1, _xT, n, d);
        _linear.Backward(_dq, _xT, CodesT(o.Q), Beta(o.Q), _dxn, false, _g + o.Q, _dyT, n, q, d);
        _linear.Backward(_dk, _xT, CodesT(o.K), Beta(o.K), _dxn, true, _g + o.K, _dyT, n, kv, d);
        _linear.Backward(_dv, _xT, CodesT(o.V), Beta(o.V), _dxn, true, _g + o.V, _dyT, n, kv, d);
        _norm.Backward(a.ResIn, _p + o.AttnNorm, a.Rstd1, _dxn, _dres, _g + o.AttnNorm, n, d);
    }

    /// <summary>Logits of row b, position t of the last Forward (valid until Backward, which overwrites them).</summary>
    public ReadOnlySpan<float> Logits(int b, int t) => new(_logits + ((long)b * _seqLen + t) * _s.VocabSize, _s.VocabSize);

    /// <summary>The absmean scale β each projection used in the last Forward (1 in full precision), by tensor name.</summary>
    public float BetaOf(string name) => _beta[IndexOf(_layout[name].Offset)];

    private bool _frozenCodes;

    /// <summary>
    /// True once <see cref="FreezeProjection"/> has set codes: the forward then keeps every projection's ternary codes and
    /// β as set (<see cref="SetBeta"/>) instead of re-quantizing the latent weights, and the gradient of a projection in
    /// <see cref="Gradients"/> is ∂L/∂W̃ (straight-through), from which ∂L/∂β = Σ ∂L/∂W̃ ⊙ T.
    /// </summary>
    public bool FrozenCodes => _frozenCodes;

    /// <summary>
    /// Fixes projection <paramref name="name"/> to ternary <paramref name="codes"/> (row-major [rows, cols], each −1, 0 or 1)
    /// with scale <paramref name="beta"/>; see <see cref="FrozenCodes"/>. Every projection must be frozen before a Forward.
    /// </summary>
    public void FreezeProjection(string name, ReadOnlySpan<sbyte> codes, float beta)
    {
        if (!Quantized) throw new InvalidOperationException("Only the quantized model has ternary codes to freeze.");
        var t = _layout[name];
        if (!t.IsProjection) throw new ArgumentException($"{name} is not a projection.", nameof(name));
        if (codes.Length != t.Length) throw new ArgumentException($"{codes.Length} codes for {name} of {t.Rows}×{t.Cols}.", nameof(codes));
        int i = IndexOf(t.Offset);
        float* c = _codes + _codeOffset[i];
        for (int k = 0; k < codes.Length; k++)
        {
            if (codes[k] is < -1 or > 1) throw new ArgumentException($"{name}: code {codes[k]} at {k} is not ternary.", nameof(codes));
            c[k] = codes[k];
        }
        _transpose.Run(c, t.Rows, t.Cols, _codesT + _codeOffset[i]);
        _frozenCodes = true;
        SetBeta(name, beta);
    }

    /// <summary>Sets the scale β of a frozen projection (see <see cref="FreezeProjection"/>).</summary>
    public void SetBeta(string name, float beta)
    {
        if (!_frozenCodes) throw new InvalidOperationException("SetBeta needs frozen codes (FreezeProjection); otherwise β is the latent weights' absmean.");
        if (!(beta > 0) || !float.IsFinite(beta)) throw new ArgumentOutOfRangeException(nameof(beta), beta, "β must be positive and finite.");
        _beta[IndexOf(_layout[name].Offset)] = beta;
    }

    /// <summary>The frozen codes of a projection (valid while <see cref="FrozenCodes"/>), row-major as floats.</summary>
    public ReadOnlySpan<float> CodesOf(string name)
    {
        var t = _layout[name];
        return new ReadOnlySpan<float>(_codes + _codeOffset[IndexOf(t.Offset)], t.Length);
    }

    private void QuantizeWeights()
    {
        if (_frozenCodes) return;
        for (int i = 0; i < _layout.Tensors.Count; i++)
        {
            var t = _layout.Tensors[i];
            if (!t.IsProjection) continue;
            _beta[i] = _linear.QuantizeWeights(_p + t.Offset, t.Rows, t.Cols, _codes + _codeOffset[i], _codesT + _codeOffset[i]);
        }
    }

    private int IndexOf(int offset)
    {
        for (int i = 0; i < _layout.Tensors.Count; i++) if (_layout.Tensors[i].Offset == offset) return i;
        throw new InvalidOperationException($"No tensor at offset {offset}.");
    }

    private float* Codes(int offset) => _codes + _codeOffset[IndexOf(offset)];
    private float* CodesT(int offset) => _codesT + _codeOffset[IndexOf(offset)];
    private float Beta(int offset) => _beta[IndexOf(offset)];

    /// <summary>y += x, the engine's residual add (same fp32 sums: addition commutes).</summary>
    private static void Add(float* y, float* x, long count) =>
        ResidualAdd.Apply(new Span<float>(y, checked((int)count)), new ReadOnlySpan<float>(x, checked((int)count)));
}
