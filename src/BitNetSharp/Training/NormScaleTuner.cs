using System.Buffers.Binary;
using System.Runtime.InteropServices;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Model;
using BitNetSharp.Quantization;
using BitNetSharp.Threading;

namespace BitNetSharp.Training;

/// <summary>
/// Domain adaptation without retraining (<c>bitnet calibrate --tune</c>): loads a ternary GGUF of the trainer's graph
/// into a <see cref="TrainingModel"/> with every projection's codes frozen, and tunes only the RMSNorm gains and the
/// per-tensor weight scales β on domain text — the trainer's forward and backward (straight-through through the
/// activation quantizer at the model's activation bit widths), Adam on the gains and on log β (∂L/∂β = Σ ∂L/∂W̃ ⊙ T),
/// warm-up then cosine. <see cref="Write"/> copies the input file byte for byte and overwrites only the norm tensors
/// and the I2_S scales, so the output has the same size, codes, embedding, tokenizer and metadata.
/// <para>
/// Tunable: I2_S projections (one fp32 scale per tensor). TQ1_0/TQ2_0 carry an fp16 scale per 256-weight block,
/// baked into the packed tensor, and are refused with the conversion to do first.
/// </para>
/// </summary>
public sealed class NormScaleTuner
{
    private readonly GgufFile _file;
    private readonly List<ParameterTensor> _norms = [];
    private readonly List<ParameterTensor> _projections = [];
    private readonly float[] _theta, _grad, _m, _v; // gains, then log β per projection
    private readonly int _normCount;

    private NormScaleTuner(GgufFile file, TrainingShape shape, ActivationBits bits, int batch, WorkerPool pool)
    {
        _file = file;
        Shape = shape;
        Model = new TrainingModel(shape, batch, quantized: true, pool) { ActivationBits = bits };
        var p = Model.Parameters;
        foreach (var t in Model.Layout.Tensors)
        {
            var info = file.GetTensor(t.Name);
            if (t.IsProjection)
            {
                // A .scale tensor multiplies the product at inference: tuned without it and written beside it, the tuned
                // β would be scaled again on load.
                if (t.Name.EndsWith(".weight", StringComparison.Ordinal) && file.TryGetTensor(t.Name[..^".weight".Length] + ".scale", out var scale))
                    throw new ArgumentException($"{file.FilePath}: {scale.Name} scales {t.Name} at inference; --tune works on models without per-projection scale tensors.");
                var data = file.GetTensorData(info);
                using var m = I2S.Decode(data, t.Rows, t.Cols);
                var codes = new sbyte[t.Length];
                for (int r = 0, k = 0; r < t.Rows; r++)
                    for (int c = 0; c < t.Cols; c++) codes[k++] = (sbyte)m.Get(r, c);
                Model.FreezeProjection(t.Name, codes, m.RowScales[0]);
                _projections.Add(t);
            }
            else
            {
                MemoryMarshal.Cast<byte, float>(file.GetTensorData(info)).CopyTo(p.AsSpan(t.Offset, t.Length));
                if (!t.IsMatrix) _norms.Add(t);
            }
        }
        foreach (var t in _norms) _normCount += t.Length;
        int n = _normCount + _projections.Count;
        _theta = new float[n];
        _grad = new float[n];
        _m = new float[n];
        _v = new float[n];
        int j = 0;
        foreach (var t in _norms) { p.AsSpan(t.Offset, t.Length).CopyTo(_theta.AsSpan(j)); j += t.Length; }
        foreach (var t in _projections) _theta[j++] = MathF.Log(Model.BetaOf(t.Name));
    }

    public TrainingShape Shape { get; }
    public TrainingModel Model { get; }

    /// <summary>Gains (every RMSNorm weight) plus one scale per projection: the values tuning may change.</summary>
    public int TunableCount => _theta.Length;

    /// <summary>
    /// Checks that <paramref name="file"/> is a model of the trainer's graph with tunable projections, and loads it.
    /// Anything else is an <see cref="ArgumentException"/> saying what and why.
    /// </summary>
    public static NormScaleTuner Load(GgufFile file, int batch, int contextLength, WorkerPool pool)
    {
        var c = ModelConfig.FromGguf(file);
        var shape = new TrainingShape(c.VocabSize, c.Dim, c.Layers, c.Heads, c.KvHeads, c.FeedForward, contextLength, c.RopeTheta, c.RmsEps);
        if (contextLength < 2 || contextLength > c.ContextLength)
            throw new ArgumentException($"The tuning window of {contextLength} tokens must be 2 to {c.ContextLength} (the model's context).");
        var expected = shape.ToModelConfig() with { Architecture = c.Architecture, ContextLength = c.ContextLength };
        if (c != expected || c.HeadDim * c.Heads != c.Dim)
            throw new ArgumentException($"{file.FilePath}: --tune handles the trainer's graph (bitnet-b1.58: relu², sub-norms, NEOX RoPE, head dim = dim/heads, " +
                $"tied embedding); this model is {c.Architecture} ({c.Activation}, sub-norms {c.HasSubNorms}, RoPE {c.Rope}, head dim {c.HeadDim}).");
        if (file.TryGetTensor("output.weight", out _))
            throw new ArgumentException($"{file.FilePath}: the model has a separate output head (output.weight); --tune handles models whose head is the token embedding.");
        var layout = new ParameterLayout(shape);
        // What the file needs converting for, all at once: a TQ2_0 file with an F16 embedding (llama.cpp's usual) was
        // refused for its embedding first, which hid the projections' refusal and the conversion that fixes both.
        string? packedProblem = null, floatProblem = null;
        foreach (var t in layout.Tensors)
        {
            if (!file.TryGetTensor(t.Name, out var info))
                throw new ArgumentException($"{file.FilePath}: tensor {t.Name} is missing.");
            if (info.ElementCount != t.Length)
                throw new ArgumentException($"{file.FilePath}: {t.Name} has {info.ElementCount} values; the model's shape needs {t.Length}.");
            string type = GgmlTypeInfo.Name(info.Type).ToUpperInvariant();
            if (t.IsProjection && info.Type != GgmlType.I2_S)
                packedProblem ??= info.Type is GgmlType.TQ1_0 or GgmlType.TQ2_0
                    ? $"{t.Name} is {type}, whose scales are one fp16 per 256-weight block baked into the packed codes; --tune tunes one scale per tensor (I2_S)"
                    : $"{t.Name} is {type}; --tune keeps ternary codes fixed and needs I2_S projections";
            else if (!t.IsProjection && info.Type != GgmlType.F32)
                floatProblem ??= $"{t.Name} is {type}; --tune needs the norms and the embedding in F32";
        }
        if (packedProblem is not null || floatProblem is not null)
        {
            // Beside the input (a bare name wrote into the working directory).
            string target = Path.Combine(Path.GetDirectoryName(file.FilePath) ?? "", Path.GetFileNameWithoutExtension(file.FilePath) + "-tune.gguf");
            string fix = $"bitnet convert {file.FilePath} {target} --type i2_s --embedding-type f32";
            throw new ArgumentException($"{file.FilePath}: {string.Join("; and ", new[] { packedProblem, floatProblem }.Where(p => p is not null))}. " +
                $"Convert it first ({fix}), tune that{(packedProblem is null ? "" : ", and convert back if needed")}.");
        }
        var bits = ActivationBits.FromGguf(file, c.Layers) ?? ActivationBits.Uniform(c.Layers);
        return new NormScaleTuner(file, shape, bits, batch, pool);
    }

    /// <summary>Mean next-token cross-entropy (nats) over consecutive windows of <see cref="Shape"/>'s context (at most <paramref name="maxWindows"/>).</summary>
    public double Loss(ReadOnlySpan<int> tokens, int maxWindows = int.MaxValue) => Loss(tokens, maxWindows, null);

    /// <summary><see cref="Loss(ReadOnlySpan{int}, int)"/>, stopping with <see cref="OperationCanceledException"/> before a
    /// batch once <paramref name="cancelled"/> says so (calibrate --tune's Ctrl-C: 64 windows of 2B4T take a while).</summary>
    public double Loss(ReadOnlySpan<int> tokens, int maxWindows, Func<bool>? cancelled)
    {
        int T = Shape.ContextLength, B = Model.MaxBatch;
        int windows = Math.Min(maxWindows, (tokens.Length - 1) / T);
        if (windows < 1) throw new ArgumentException($"The text is {tokens.Length} tokens; one window needs {T + 1}.");
        var inputs = new int[B * T];
        var targets = new int[B * T];
        double sum = 0;
        for (int w0 = 0; w0 < windows; w0 += B)
        {
            if (cancelled?.Invoke() == true) throw new OperationCanceledException("The loss was cancelled.");
            int rows = Math.Min(B, windows - w0);
            for (int b = 0; b < rows; b++)
            {
                tokens.Slice((w0 + b) * T, T).CopyTo(inputs.AsSpan(b * T));
                tokens.Slice((w0 + b) * T + 1, T).CopyTo(targets.AsSpan(b * T));
            }
            sum += (double)Model.Forward(inputs.AsSpan(0, rows * T), targets.AsSpan(0, rows * T), rows, T) * rows;
        }
        return sum / windows;
    }

    /// <summary>
    /// <paramref name="steps"/> Adam steps (β 0.9/0.95, no weight decay, gradient norm clipped to 1) of batches of
    /// windows drawn at seeded random offsets of <paramref name="tokens"/>; peak rate <paramref name="learningRate"/>
    /// with a warm-up of a tenth of the steps, then cosine to 10%. <paramref name="progress"/> gets (step, batch loss).
    /// </summary>
    public void Tune(int[] tokens, int steps, float learningRate, ulong seed, Action<int, float>? progress = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(steps);
        int T = Shape.ContextLength, B = Model.MaxBatch;
        if (tokens.Length < T + 1) throw new ArgumentException($"The domain text is {tokens.Length} tokens; one window needs {T + 1}.");
        var schedule = new LearningRateSchedule(learningRate, Math.Max(1, steps / 10), steps);
        var rng = new SplitMix64(seed);
        var inputs = new int[B * T];
        var targets = new int[B * T];
        var g = Model.Gradients;
        for (int step = 1; step <= steps; step++)
        {
            for (int b = 0; b < B; b++)
            {
                int start = rng.NextInt(tokens.Length - T);
                tokens.AsSpan(start, T).CopyTo(inputs.AsSpan(b * T));
                tokens.AsSpan(start + 1, T).CopyTo(targets.AsSpan(b * T));
            }
            float loss = Model.Forward(inputs, targets, B, T);
            // A NaN gradient norm is not above 1, so it was not clipped, and β went NaN or overflowed: the run failed at
            // the end with "β must be positive and finite", naming no flag. Stopped at the step, saying what to change.
            if (!float.IsFinite(loss))
                throw new TrainingDivergedException($"the loss is {loss.ToString(System.Globalization.CultureInfo.InvariantCulture)} at tuning step {step}: tuning diverged; lower --lr.");
            Model.Backward();

            int j = 0;
            foreach (var t in _norms) { g.AsSpan(t.Offset, t.Length).CopyTo(_grad.AsSpan(j)); j += t.Length; }
            foreach (var t in _projections)
            {
                var codes = Model.CodesOf(t.Name);
                var dw = g.AsSpan(t.Offset, t.Length);
                double dBeta = 0;
                for (int k = 0; k < dw.Length; k++) dBeta += dw[k] * codes[k];
                _grad[j++] = (float)(dBeta * Model.BetaOf(t.Name)); // ∂L/∂log β = β·∂L/∂β
            }
            double norm2 = 0;
            foreach (float v in _grad) norm2 += (double)v * v;
            if (!double.IsFinite(norm2))
                throw new TrainingDivergedException($"the gradient is not finite at tuning step {step}: tuning diverged; lower --lr.");
            float clip = norm2 > 1 ? (float)(1 / Math.Sqrt(norm2)) : 1f;

            float lr = schedule.At(step);
            const float b1 = 0.9f, b2 = 0.95f, eps = 1e-8f;
            float c1 = 1 - MathF.Pow(b1, step), c2 = 1 - MathF.Pow(b2, step);
            for (int k = 0; k < _theta.Length; k++)
            {
                float gk = _grad[k] * clip;
                _m[k] = b1 * _m[k] + (1 - b1) * gk;
                _v[k] = b2 * _v[k] + (1 - b2) * gk * gk;
                _theta[k] -= lr * (_m[k] / c1) / (MathF.Sqrt(_v[k] / c2) + eps);
            }
            Apply();
            progress?.Invoke(step, loss);
        }
    }

    private void Apply()
    {
        var p = Model.Parameters;
        int j = 0;
        foreach (var t in _norms) { _theta.AsSpan(j, t.Length).CopyTo(p.AsSpan(t.Offset)); j += t.Length; }
        foreach (var t in _projections)
        {
            float beta = MathF.Exp(_theta[j++]);
            if (!(float.IsFinite(beta) && beta > 0))
                throw new TrainingDivergedException($"the scale of {t.Name} left float's range ({beta.ToString(System.Globalization.CultureInfo.InvariantCulture)}): tuning diverged; lower --lr.");
            Model.SetBeta(t.Name, beta);
        }
    }

    /// <summary>
    /// Writes the tuned model to <paramref name="path"/> (temporary file + rename): the input file's bytes with only the
    /// norm tensors and the I2_S scales replaced.
    /// </summary>
    public void Write(string path)
    {
        string full = Path.GetFullPath(path);
        if (Formats.PathIdentity.SameFile(full, _file.FilePath)) throw new ArgumentException($"The output {path} is the input model; write to another file.", nameof(path));
        var p = Model.Parameters;
        // Streamed: the input copied through a 1 MiB buffer, then the tuned values written over it in place. It was read
        // whole into one array, which doubled the memory and failed (checked int offsets) for a model of 2 GiB or more,
        // after the whole tuning run.
        Formats.AtomicFile.Write(full, stream =>
        {
            using (var source = new FileStream(_file.FilePath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, 1 << 20))
            {
                if (source.Length != _file.FileLength) throw new IOException($"{_file.FilePath} changed while it was being tuned.");
                source.CopyTo(stream, 1 << 20);
            }
            foreach (var t in _norms)
            {
                stream.Position = _file.DataOffset + _file.GetTensor(t.Name).Offset;
                stream.Write(MemoryMarshal.AsBytes(p.AsSpan(t.Offset, t.Length)));
            }
            Span<byte> beta = stackalloc byte[4];
            foreach (var t in _projections)
            {
                stream.Position = _file.DataOffset + _file.GetTensor(t.Name).Offset + (long)t.Rows * t.Cols / 4;
                BinaryPrimitives.WriteSingleLittleEndian(beta, Model.BetaOf(t.Name));
                stream.Write(beta);
            }
        });
    }
}
