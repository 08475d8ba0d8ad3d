using System.Diagnostics;
using System.Numerics;
using System.Runtime.Intrinsics;
using BitNetSharp.Memory;
using BitNetSharp.Model;

namespace BitNetSharp.Monitoring;

/// <summary>
/// What one sampled engine step looked like inside the model, per layer: for each BitLinear input the share of codes at
/// the clamp limits (|q| ≥ 127 at 8 bits, 2^(b−1) − 1 at b: the token's signal is dominated by its largest entries;
/// <see cref="HealthSnapshot.Bits"/>), the share of codes
/// that are 0 (entries below half a quantization step: signal lost), and the crest factor absmax/RMS (how many of the
/// 127 levels a typical entry really uses is about 127/crest); and the residual stream after the layer: RMS, max |x|,
/// and ‖x_after − x_before‖/‖x_before‖. Token-level values are averaged over the step's tokens, except max |x| (the
/// largest). Logits statistics cover the sequences whose logits the step produced.
/// </summary>
public sealed class HealthSnapshot
{
    public HealthSnapshot(int layers)
    {
        Layers = layers;
        Saturation = new float[layers * HealthNames.InputCount];
        Underflow = new float[layers * HealthNames.InputCount];
        CrestFactor = new float[layers * HealthNames.InputCount];
        Bits = new byte[layers * HealthNames.InputCount];
        Array.Fill(Bits, (byte)8);
        ResidualRms = new float[layers];
        ResidualMaxAbs = new float[layers];
        ResidualChange = new float[layers];
        BlowUp = new bool[layers];
        KvKeyError = new float[layers];
        KvValueError = new float[layers];
    }

    public int Layers { get; }

    /// <summary>Sampled steps so far (this snapshot is the latest); 0 before the first.</summary>
    public long Samples { get; internal set; }

    /// <summary>
    /// Sampled steps so far that had logits rows (a prompt chunk alone has none): what tells a new logits value from
    /// the one carried over, for rules over the logits gauges.
    /// </summary>
    public long LogitSamples { get; internal set; }

    /// <summary>The engine step (forward pass) this snapshot comes from.</summary>
    public long Step { get; internal set; }

    /// <summary>When the step ran, Unix time in nanoseconds.</summary>
    public long TimeUnixNanos { get; internal set; }

    public int Tokens { get; internal set; }

    /// <summary>[layer·4 + input] (input: <see cref="BitLinearInput"/>).</summary>
    public float[] Saturation { get; }

    public float[] Underflow { get; }

    public float[] CrestFactor { get; }

    /// <summary>
    /// [layer·4 + input]: the bits the input is quantized to (8 unless a model's activation bits say less). Saturation and
    /// underflow mean other things at fewer bits: a healthy 4-bit input has about half its codes at 0, and at 2 bits
    /// every code is 0 or at the limit; the default alert rules read 8-bit inputs only (the metrics' "bits" label).
    /// </summary>
    public byte[] Bits { get; }

    public float[] ResidualRms { get; }

    public float[] ResidualMaxAbs { get; }

    /// <summary>
    /// The layer's relative change ‖after − before‖/‖before‖, the largest over the step's tokens (NaN if any was not
    /// finite): the mean divided one diverging sequence's blow-up by the batch's tokens, below the threshold. A
    /// sequence's first token counts only when the step has no other (it is the attention sink, which many models blow up
    /// on purpose).
    /// </summary>
    public float[] ResidualChange { get; }

    /// <summary>Layers where a token's relative change crossed <see cref="ModelHealthCollector.BlowUpThreshold"/> (or was not finite).</summary>
    public bool[] BlowUp { get; }

    /// <summary>
    /// [layer]: the KV cache's rounding of the key rows the step wrote, ‖k − k̂‖/‖k‖ with k̂ the row read back from the
    /// cache (int8 and fp8 with their per-head scales, f16; exactly 0 for an f32 cache), the largest over the step's
    /// measured tokens (all of them up to 16, else at most 16 spread evenly, and a sequence's first row: <see cref="ModelHealthCollector.MeasuresKv"/>; NaN
    /// if a row was not finite). What every later token's attention reads in place of the key.
    /// </summary>
    public float[] KvKeyError { get; }

    /// <summary>[layer]: <see cref="KvKeyError"/> for the value rows.</summary>
    public float[] KvValueError { get; }

    /// <summary>Logits rows analysed in this step (0: the logits fields are NaN; a prompt chunk alone has none).</summary>
    public int LogitRows { get; internal set; }

    public float LogitMin { get; internal set; } = float.NaN;
    public float LogitMax { get; internal set; } = float.NaN;

    /// <summary>The smallest max − min among the step's rows: a collapsing output shows in its flattest row.</summary>
    public float LogitRange { get; internal set; } = float.NaN;

    /// <summary>Mean softmax entropy of the step's rows, nats.</summary>
    public float LogitEntropy { get; internal set; } = float.NaN;

    /// <summary>
    /// The logits fields of the last published step that had logits rows (this one when it has any; NaN before the
    /// first): what /metrics shows through prompt-only steps. Kept by the collector at publication, so a step with logits
    /// that no reader saw before a prompt chunk replaced it still counts.
    /// </summary>
    public float LastLogitMin { get; internal set; } = float.NaN;
    public float LastLogitMax { get; internal set; } = float.NaN;
    public float LastLogitRange { get; internal set; } = float.NaN;
    public float LastLogitEntropy { get; internal set; } = float.NaN;

    public int Index(int layer, BitLinearInput input) => layer * HealthNames.InputCount + (int)input;

    internal void CopyTo(HealthSnapshot other)
    {
        other.Samples = Samples;
        other.LogitSamples = LogitSamples;
        other.Step = Step;
        other.TimeUnixNanos = TimeUnixNanos;
        other.Tokens = Tokens;
        Saturation.CopyTo(other.Saturation, 0);
        Underflow.CopyTo(other.Underflow, 0);
        CrestFactor.CopyTo(other.CrestFactor, 0);
        Bits.CopyTo(other.Bits, 0);
        ResidualRms.CopyTo(other.ResidualRms, 0);
        ResidualMaxAbs.CopyTo(other.ResidualMaxAbs, 0);
        ResidualChange.CopyTo(other.ResidualChange, 0);
        BlowUp.CopyTo(other.BlowUp, 0);
        KvKeyError.CopyTo(other.KvKeyError, 0);
        KvValueError.CopyTo(other.KvValueError, 0);
        other.LogitRows = LogitRows;
        other.LogitMin = LogitMin;
        other.LogitMax = LogitMax;
        other.LogitRange = LogitRange;
        other.LogitEntropy = LogitEntropy;
        other.LastLogitMin = LastLogitMin;
        other.LastLogitMax = LastLogitMax;
        other.LastLogitRange = LastLogitRange;
        other.LastLogitEntropy = LastLogitEntropy;
    }

    public HealthSnapshot Clone()
    {
        var c = new HealthSnapshot(Layers);
        CopyTo(c);
        return c;
    }
}

/// <summary>
/// Measures the numerical health of a <see cref="Transformer"/>'s forward pass (attach with
/// <see cref="Transformer.Health"/>). The forward pass only calls it; everything it measures is read from buffers
/// the pass computes anyway.
/// <para>
/// Every step, whatever the sampling rate, each token's residual stream is checked for NaN/±∞ after the embedding
/// and after every layer (one vector compare per element), so when a sequence's logits are not finite
/// <see cref="NonFiniteOrigin"/> names where its non-finite values first appeared. Every
/// <see cref="SampleEvery"/>-th step (0: never) it also measures each BitLinear input's int8 codes and the residual
/// stream (<see cref="HealthSnapshot"/>). Per-token values go to per-token slots, so the pool's threads write without
/// locks; <see cref="EndForward"/> reduces them on the calling thread, and <see cref="Publish"/> (after the caller
/// has added its logits rows) makes the step the <see cref="Latest"/> snapshot. Nothing here allocates per step.
/// </para>
/// </summary>
public sealed unsafe class ModelHealthCollector : IDisposable
{
    /// <summary>Origin codes: finite everywhere, or non-finite from the token embedding on.</summary>
    public const int Finite = -2, Embedding = -1;

    private readonly int _layers, _maxTokens, _dim;
    private readonly float[] _sat, _under, _crest;      // [token][layer][input]
    private readonly byte[] _bits;                       // [layer][input]: the width each input was last quantized to
    private readonly float[] _rms, _maxAbs, _change;    // [token][layer]
    private readonly float[] _kvError;                  // [token][layer][K|V]
    private readonly float[] _kvRead;                   // [K|V][kvDim]: a row read back from the cache (calling thread)
    private readonly int[] _origin;                     // [token]: Finite, Embedding, or the first layer
    private readonly int[] _prior;                      // [token]: its sequence's origin from earlier steps (its KV cache's)
    private readonly int[] _rowToken;                   // logits row → batch token
    private readonly int[] _sequence;                   // [token]: its sequence
    private readonly bool[] _atStart;                   // [token]: at position 0 of its sequence
    private readonly NativeBuffer _before;              // [token][dim]: the residual at the layer's start (sampled steps)
    private readonly HealthSnapshot _pending, _latest;
    private readonly Lock _lock = new();
    private long _steps, _samples;
    private int _tokens;
    private double _entropySum;
    private int _sampleEvery = 1;
    private volatile bool _disposed;

    public ModelHealthCollector(ModelConfig config, int maxTokens)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxTokens);
        _layers = config.Layers;
        _maxTokens = maxTokens;
        _dim = config.Dim;
        int cells = maxTokens * _layers * HealthNames.InputCount;
        _sat = new float[cells];
        _under = new float[cells];
        _crest = new float[cells];
        _bits = new byte[_layers * HealthNames.InputCount];
        Array.Fill(_bits, (byte)8);
        _rms = new float[maxTokens * _layers];
        _maxAbs = new float[maxTokens * _layers];
        _change = new float[maxTokens * _layers];
        _kvError = new float[maxTokens * _layers * 2];
        _kvRead = new float[2 * config.KvDim];
        _origin = new int[maxTokens];
        _prior = new int[maxTokens];
        _rowToken = new int[maxTokens];
        _sequence = new int[maxTokens];
        _atStart = new bool[maxTokens];
        _before = new NativeBuffer((long)maxTokens * _dim * sizeof(float));
        _pending = new HealthSnapshot(_layers);
        _latest = new HealthSnapshot(_layers);
    }

    public int Layers => _layers;

    public int MaxTokens => _maxTokens;

    /// <summary>Measure every N-th forward pass (1: every one; 0: none, only the non-finite check runs).</summary>
    public int SampleEvery
    {
        get => _sampleEvery;
        set
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value);
            _sampleEvery = value;
        }
    }

    /// <summary>A layer (after layer 0) whose relative change ‖Δ‖/‖x‖ is above this is flagged as a blow-up (or sign collapse: a layer that flips the residual's direction changes it by about 2).</summary>
    public float BlowUpThreshold { get; set; } = 8f;

    /// <summary>Whether the forward pass in progress is measured.</summary>
    public bool Sampling { get; private set; }

    /// <summary>Forward passes seen.</summary>
    public long Steps => Volatile.Read(ref _steps);

    /// <summary>Forward passes measured and published.</summary>
    public long Samples => Volatile.Read(ref _samples);

    /// <summary>Raised on the engine thread after each <see cref="Publish"/> of a sampled step, with the published snapshot (read it there or copy it: the next publish overwrites it).</summary>
    public event Action<HealthSnapshot>? Published;

    /// <summary>A copy of the latest published sampled step (allocates; for readers off the engine thread).</summary>
    public HealthSnapshot Latest
    {
        get
        {
            lock (_lock) return _latest.Clone();
        }
    }

    /// <summary>Reads the latest snapshot under the lock without copying it.</summary>
    public T Read<T>(Func<HealthSnapshot, T> reader)
    {
        lock (_lock) return reader(_latest);
    }

    // ---- Called by the forward pass ------------------------------------------------------------------------------

    internal void BeginForward(int tokens)
    {
        if (tokens > _maxTokens) throw new ArgumentException($"The batch has {tokens} tokens; the health collector was sized for {_maxTokens}.", nameof(tokens));
        long step = _steps;
        Volatile.Write(ref _steps, step + 1);
        _tokens = tokens;
        Sampling = _sampleEvery > 0 && step % _sampleEvery == 0;
        _origin.AsSpan(0, tokens).Fill(Finite);
        _atStart.AsSpan(0, tokens).Clear();
    }

    /// <summary>Batch token <paramref name="token"/> belongs to sequence <paramref name="sequence"/>, at <paramref name="position"/>.</summary>
    /// <param name="prior">Where its sequence's earlier positions first went non-finite (<see cref="KvCache.NonFiniteOrigin"/>).</param>
    internal void MapToken(int token, int sequence, int position = -1, int prior = Finite)
    {
        _sequence[token] = sequence;
        _atStart[token] = position == 0;
        _prior[token] = prior;
    }

    /// <summary>Where batch token <paramref name="token"/>'s residual first went non-finite in this step (Finite: it did not).</summary>
    internal int TokenOrigin(int token) => _origin[token];

    /// <summary>Logits row <paramref name="row"/> belongs to batch token <paramref name="token"/>.</summary>
    internal void MapRow(int row, int token) => _rowToken[row] = token;

    /// <summary>At a layer's start: the embedding's finiteness (layer 0) and, when sampling, the residual for the change.</summary>
    internal void LayerStart(int layer, int token, ReadOnlySpan<float> x)
    {
        if (layer == 0 && _origin[token] == Finite && !AllFinite(x)) _origin[token] = Embedding;
        if (Sampling) x.CopyTo(new Span<float>((float*)_before.Pointer + (long)token * _dim, _dim));
    }

    /// <summary>A BitLinear input <paramref name="x"/> and its int8 codes (the first x.Length of <paramref name="codes"/>).</summary>
    internal void Quantized(int layer, BitLinearInput input, int token, ReadOnlySpan<float> x, ReadOnlySpan<sbyte> codes, int maxCode = 127)
    {
        if (!Sampling) return;
        int cell = (token * _layers + layer) * HealthNames.InputCount + (int)input;
        CountCodes(codes[..x.Length], out int saturated, out int zeros, maxCode);
        SumSquaresAndMax(x, out double sumSquares, out float absMax);
        // NaN or ∞ in the input: the codes are what NaN quantized to (0), not a measure of it; saturation 0 and
        // underflow 1 read as a healthy input and a wrong diagnosis. NaN instead, which trips the rules.
        bool finite = double.IsFinite(sumSquares);
        _sat[cell] = finite ? (float)saturated / x.Length : float.NaN;
        _under[cell] = finite ? (float)zeros / x.Length : float.NaN;
        double rms = Math.Sqrt(sumSquares / x.Length);
        // NaN in the input stays NaN (the rules trip on it); `rms > 0` turned it into a healthy-looking 0.
        _crest[cell] = !finite ? float.NaN : rms > 0 ? (float)(absMax / rms) : 0f;
        _bits[layer * HealthNames.InputCount + (int)input] = (byte)(System.Numerics.BitOperations.Log2((uint)maxCode + 1) + 1); // 2^(b−1) − 1 → b
    }

    /// <summary>Tokens of a step whose KV rounding is measured, at most (spread evenly, the first included).</summary>
    public const int KvTokensMeasured = 16;

    /// <summary>
    /// Whether batch token <paramref name="token"/> of a step of <paramref name="tokens"/> has its KV rounding measured:
    /// every one up to <see cref="KvTokensMeasured"/>, else every ⌈tokens/16⌉-th from the first. Reading back and comparing
    /// every row of a 512-token prefill chunk took 75–250 ms on 2B4T's shape, a stall of every sequence in that step.
    /// </summary>
    internal static bool MeasuresKv(int token, int tokens) =>
        tokens <= KvTokensMeasured || token % ((tokens + KvTokensMeasured - 1) / KvTokensMeasured) == 0;

    /// <summary>
    /// After batch token <paramref name="token"/>'s key and value rows <paramref name="k"/>, <paramref name="v"/> were
    /// written to <paramref name="cache"/> at <paramref name="position"/>: when sampling, how far the stored rows are from
    /// them (relative RMS error; an f32 cache stores them exactly). Called on the thread that writes the cache.
    /// </summary>
    internal void KvWritten(int layer, int token, KvCache cache, int position, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
    {
        if (!Sampling) return;
        int cell = (token * _layers + layer) * 2;
        if (cache.Type == KvCacheType.F32)
        {
            _kvError[cell] = _kvError[cell + 1] = 0f;
            return;
        }
        var kHat = _kvRead.AsSpan(0, k.Length);
        var vHat = _kvRead.AsSpan(k.Length, v.Length);
        cache.Read(layer, position, kHat, vHat);
        _kvError[cell] = RelativeError(k, kHat);
        _kvError[cell + 1] = RelativeError(v, vHat);
    }

    /// <summary>‖x − y‖/‖x‖ (0 when both are 0, ∞ when only x is; NaN when either holds NaN/∞).</summary>
    internal static float RelativeError(ReadOnlySpan<float> x, ReadOnlySpan<float> y)
    {
        double diff = 0, norm = 0;
        for (int i = 0; i < x.Length; i++)
        {
            double d = (double)x[i] - y[i];
            diff += d * d;
            norm += (double)x[i] * x[i];
        }
        if (!double.IsFinite(diff) || !double.IsFinite(norm)) return float.NaN;
        if (norm == 0) return diff == 0 ? 0f : float.PositiveInfinity;
        return (float)Math.Sqrt(diff / norm);
    }

    /// <summary>At a layer's end: finiteness always, the residual statistics when sampling.</summary>
    internal void LayerEnd(int layer, int token, ReadOnlySpan<float> x)
    {
        if (_origin[token] == Finite && !AllFinite(x)) _origin[token] = layer;
        if (!Sampling) return;
        var before = new ReadOnlySpan<float>((float*)_before.Pointer + (long)token * _dim, _dim);
        ResidualStats(x, before, out double sumSquares, out float absMax, out double diffSquares, out double beforeSquares);
        int cell = token * _layers + layer;
        _rms[cell] = (float)Math.Sqrt(sumSquares / x.Length);
        _maxAbs[cell] = absMax;
        _change[cell] = (float)Math.Sqrt(diffSquares / Math.Max(beforeSquares, 1e-30));
    }

    /// <summary>After the forward pass: reduces the sampled step's per-token values into the pending snapshot.</summary>
    internal void EndForward()
    {
        if (!Sampling) return;
        int n = _tokens, l4 = _layers * HealthNames.InputCount;
        var p = _pending;
        float inv = 1f / n;
        for (int c = 0; c < l4; c++)
        {
            float s = 0, u = 0, k = 0;
            for (int t = 0; t < n; t++)
            {
                int cell = t * l4 + c;
                s += _sat[cell];
                u += _under[cell];
                k += _crest[cell];
            }
            p.Saturation[c] = s * inv;
            p.Underflow[c] = u * inv;
            p.CrestFactor[c] = k * inv;
        }
        _bits.CopyTo(p.Bits, 0);
        for (int l = 0; l < _layers; l++)
        {
            // The change is the largest over the step's tokens, except a sequence's first token (unless it is not
            // finite): the attention sink, whose residual many models grow by orders of magnitude in an
            // early layer by design ("massive activations"), would flag every prefill that starts a sequence.
            float r = 0, m = 0, d = 0;
            bool others = false;
            for (int t = 0; t < n; t++)
            {
                int cell = t * _layers + l;
                r += _rms[cell];
                m = MathF.Max(m, _maxAbs[cell]);
                float change = _change[cell];
                if (_atStart[t] && float.IsFinite(change)) continue; // the sink
                d = MathF.Max(d, change); // NaN propagates
                others = true;
            }
            p.ResidualRms[l] = r * inv;
            p.ResidualMaxAbs[l] = m;
            // A step of sequence starts only (a prompt of just BOS) measures nothing but the sink: its change is reported
            // as 0 and not flagged. Reported, the alert rule over the gauge counted the sink's designed-in growth.
            p.ResidualChange[l] = others ? d : 0f;
            // NaN counts as a blow-up. Layer 0 writes onto the raw token embedding, whose norm is small in trained models
            // (the bundled model's layer 0 changes it by ~31×), so only its non-finite values are flagged.
            p.BlowUp[l] = l == 0 ? !float.IsFinite(p.ResidualChange[l]) : !(p.ResidualChange[l] <= BlowUpThreshold);
            // The KV rounding: the largest over the step's measured tokens, the first included (every later token
            // attends to the sink's row, so its rounding matters most). NaN propagates.
            float ek = 0, ev = 0;
            for (int t = 0; t < n; t++)
            {
                if (!MeasuresKv(t, n) && !_atStart[t]) continue; // its cell holds an earlier step's value (a sequence's first row is always measured)
                int cell = (t * _layers + l) * 2;
                ek = MathF.Max(ek, _kvError[cell]);
                ev = MathF.Max(ev, _kvError[cell + 1]);
            }
            p.KvKeyError[l] = ek;
            p.KvValueError[l] = ev;
        }
        p.Step = _steps - 1;
        p.Tokens = n;
        p.TimeUnixNanos = Telemetry.TelemetryClock.UnixNanos();
        p.LogitRows = 0;
        p.LogitMin = p.LogitMax = p.LogitRange = p.LogitEntropy = float.NaN;
        _entropySum = 0;
    }

    // ---- Called by the consumer of the logits -------------------------------------------------------------------

    /// <summary>
    /// Where logits row <paramref name="row"/>'s token first had non-finite values: <see cref="Finite"/> (the residual
    /// stream stayed finite: the final norm or the output head made them), <see cref="Embedding"/>, or a layer index.
    /// </summary>
    /// <remarks>
    /// Non-finite values reach a token's residual from its own computation or, through attention, from an earlier
    /// token of its sequence: when the row's token is not finite, the answer is the earliest origin among the tokens of
    /// its sequence in this step (a NaN embedding two positions back is reported as the embedding, not as layer 0,
    /// where attention carried it over). Values already in the KV cache from an earlier step (a prompt's earlier chunk,
    /// which has no logits row) count by where they first appeared then, as the cache recorded it.
    /// </remarks>
    public int NonFiniteOrigin(int row)
    {
        int token = _rowToken[row], origin = _origin[token];
        if (origin == Finite) return origin;
        int sequence = _sequence[token];
        if (_prior[token] != Finite && _prior[token] < origin) origin = _prior[token];
        for (int t = 0; t < _tokens; t++)
            if (_sequence[t] == sequence && _origin[t] != Finite && _origin[t] < origin) origin = _origin[t];
        return origin;
    }

    /// <summary>Words for <see cref="NonFiniteOrigin"/>, for error messages.</summary>
    public static string DescribeOrigin(int origin) => origin switch
    {
        Finite => "in the output norm or head (the residual stream was finite after the last layer)",
        Embedding => "in the token embedding (before layer 0)",
        _ => $"in layer {origin} (its residual output is the first with NaN/Inf)",
    };

    /// <summary>Adds one logits row's statistics to the sampled step (call between the forward pass and <see cref="Publish"/>).</summary>
    public void AddLogits(in LogitStats stats)
    {
        if (!Sampling) return;
        var p = _pending;
        if (float.IsNaN(stats.Max))
        {
            // A row with no finite logits (a sequence failing on NaN): the step's logit figures are NaN, as a threshold
            // rule reads it. The row was skipped, so the gauges kept the last healthy step's values while every request
            // failed, and no rule on them could fire.
            p.LogitMin = p.LogitMax = p.LogitRange = p.LogitEntropy = float.NaN;
            _entropySum = double.NaN;
            p.LogitRows++;
            return;
        }
        if (p.LogitRows == 0)
        {
            p.LogitMin = stats.Min;
            p.LogitMax = stats.Max;
            p.LogitRange = stats.Range;
        }
        else
        {
            p.LogitMin = MathF.Min(p.LogitMin, stats.Min);
            p.LogitMax = MathF.Max(p.LogitMax, stats.Max);
            p.LogitRange = MathF.Min(p.LogitRange, stats.Range);
        }
        _entropySum += stats.Entropy;
        p.LogitRows++;
        p.LogitEntropy = (float)(_entropySum / p.LogitRows);
    }

    /// <summary>Makes a sampled step the latest snapshot and raises <see cref="Published"/>; does nothing for a step that was not sampled.</summary>
    public void Publish()
    {
        if (!Sampling || _disposed) return;
        Sampling = false;
        lock (_lock)
        {
            _pending.Samples = ++_samples;
            if (_pending.LogitRows > 0)
            {
                _pending.LogitSamples++;
                _pending.LastLogitMin = _pending.LogitMin;
                _pending.LastLogitMax = _pending.LogitMax;
                _pending.LastLogitRange = _pending.LogitRange;
                _pending.LastLogitEntropy = _pending.LogitEntropy;
            }
            _pending.CopyTo(_latest);
        }
        Published?.Invoke(_latest);
    }

    // ---- Vector helpers --------------------------------------------------------------------------------------

    /// <summary>True when every element is finite (x − x = 0 exactly for finite x, NaN otherwise).</summary>
    public static bool AllFinite(ReadOnlySpan<float> x)
    {
        int n = x.Length, i = 0;
        fixed (float* p = x)
        {
            if (Vector256.IsHardwareAccelerated && n >= 8)
            {
                var acc = Vector256<float>.Zero;
                for (; i <= n - 8; i += 8)
                {
                    var v = Vector256.Load(p + i);
                    acc += v - v;
                }
                if (!Vector256.EqualsAll(acc, Vector256<float>.Zero)) return false;
            }
            for (; i < n; i++) if (!float.IsFinite(p[i])) return false;
        }
        return true;
    }

    /// <summary>Codes at the clamp limits (|q| ≥ <paramref name="maxCode"/>: 127 for 8-bit activations, 2^(b−1) − 1 for b bits) and codes equal to 0.</summary>
    public static void CountCodes(ReadOnlySpan<sbyte> codes, out int saturated, out int zeros, int maxCode = 127)
    {
        int n = codes.Length, i = 0, sat = 0, zero = 0;
        fixed (sbyte* p = codes)
        {
            if (Vector256.IsHardwareAccelerated && n >= 32)
            {
                var hi = Vector256.Create((sbyte)maxCode);
                var lo = Vector256.Create((sbyte)-maxCode);
                for (; i <= n - 32; i += 32)
                {
                    var v = Vector256.Load(p + i);
                    zero += BitOperations.PopCount(Vector256.Equals(v, Vector256<sbyte>.Zero).ExtractMostSignificantBits());
                    sat += BitOperations.PopCount((Vector256.GreaterThanOrEqual(v, hi) | Vector256.LessThanOrEqual(v, lo)).ExtractMostSignificantBits());
                }
            }
            for (; i < n; i++)
            {
                int v = p[i];
                if (v == 0) zero++;
                else if (v >= maxCode || v <= -maxCode) sat++;
            }
        }
        saturated = sat;
        zeros = zero;
    }

    private static void SumSquaresAndMax(ReadOnlySpan<float> x, out double sumSquares, out float absMax)
    {
        int n = x.Length, i = 0;
        double s = 0;
        float m = 0;
        fixed (float* p = x)
        {
            if (Vector256.IsHardwareAccelerated && n >= 8)
            {
                // Squares are summed in double lanes: float lanes overflowed to ∞ at |x| ≈ 1e18 (a blow-up the
                // monitor must still measure), where the scalar tail, in double, did not.
                var acc = Vector256<double>.Zero;
                var mx = Vector256<float>.Zero;
                for (; i <= n - 8; i += 8)
                {
                    var v = Vector256.Load(p + i);
                    var (v0, v1) = Vector256.Widen(v);
                    acc += v0 * v0 + v1 * v1;
                    mx = Vector256.Max(mx, Vector256.Abs(v));
                }
                s = Vector256.Sum(acc);
                for (int k = 0; k < 8; k++) m = MathF.Max(m, mx[k]);
            }
            for (; i < n; i++)
            {
                s += (double)p[i] * p[i];
                m = MathF.Max(m, MathF.Abs(p[i]));
            }
        }
        sumSquares = s;
        absMax = m;
    }

    private static void ResidualStats(ReadOnlySpan<float> x, ReadOnlySpan<float> before, out double sumSquares, out float absMax,
        out double diffSquares, out double beforeSquares)
    {
        int n = x.Length, i = 0;
        double s = 0, d = 0, b = 0;
        float m = 0;
        fixed (float* p = x)
        fixed (float* q = before)
        {
            if (Vector256.IsHardwareAccelerated && n >= 8)
            {
                // In double lanes, as the scalar tail: float sums overflowed at |x| ≈ 1e18, giving an RMS of ∞ and
                // changes of 0 or NaN exactly in the blow-up range this measures.
                Vector256<double> vs = default, vd = default, vb = default;
                Vector256<float> mx = default;
                for (; i <= n - 8; i += 8)
                {
                    var v = Vector256.Load(p + i);
                    var (v0, v1) = Vector256.Widen(v);
                    var (w0, w1) = Vector256.Widen(Vector256.Load(q + i));
                    var d0 = v0 - w0;
                    var d1 = v1 - w1;
                    vs += v0 * v0 + v1 * v1;
                    vd += d0 * d0 + d1 * d1;
                    vb += w0 * w0 + w1 * w1;
                    mx = Vector256.Max(mx, Vector256.Abs(v));
                }
                s = Vector256.Sum(vs);
                d = Vector256.Sum(vd);
                b = Vector256.Sum(vb);
                for (int k = 0; k < 8; k++) m = MathF.Max(m, mx[k]);
            }
            for (; i < n; i++)
            {
                double v = p[i], w = q[i];
                s += v * v;
                d += (v - w) * (v - w);
                b += w * w;
                m = MathF.Max(m, MathF.Abs(p[i]));
            }
        }
        sumSquares = s;
        absMax = m;
        diffSquares = d;
        beforeSquares = b;
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _before.Dispose();
    }
}
