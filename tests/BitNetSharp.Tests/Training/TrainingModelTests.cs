using BitNetSharp.Kernels;
using BitNetSharp.Model;
using BitNetSharp.Threading;
using BitNetSharp.Training;

namespace BitNetSharp.Tests.Training;

public class TrainingModelTests(ITestOutputHelper output)
{
    /// <summary>GQA (4 heads on 2 kv heads), odd-ish widths that exercise every kernel tail.</summary>
    internal static readonly TrainingShape Tiny = new(VocabSize: 37, Dim: 24, Layers: 2, Heads: 4, KvHeads: 2, FeedForward: 40, ContextLength: 8);

    internal static (int[] Inputs, int[] Targets) RandomBatch(int batch, int T, int vocab, ulong seed)
    {
        var rng = new SplitMix64(seed);
        var stream = Enumerable.Range(0, batch * T + 1).Select(_ => rng.NextInt(vocab)).ToArray();
        var inputs = new int[batch * T];
        var targets = new int[batch * T];
        for (int b = 0; b < batch; b++)
        for (int t = 0; t < T; t++)
        {
            inputs[b * T + t] = stream[b * T + t];
            targets[b * T + t] = stream[b * T + t + 1];
        }
        return (inputs, targets);
    }

    /// <summary>
    /// The full-precision twin's analytic gradient (fp32) against central differences (h = 1e−4) of an independent
    /// double-precision forward, on 6 random elements of every parameter tensor. Relative error per element:
    /// |analytic − numeric| / max(|analytic|, |numeric|, 1e−4) — the floor keeps elements whose gradient is ~0
    /// from reporting fp32 noise as a large ratio. Observed: max 2.6e−5 (blk.0.ffn_sub_norm), most tensors 1e−6..1e−5 (with a
    /// scalar exp in the cross-entropy it was 8.9e−5: the figure moves with fp32 rounding details);
    /// the bound 1e−3 leaves an order of magnitude for fp32 rounding and is far below the O(1) a wrong formula gives.
    /// Also checks the fp32 loss against the double loss.
    /// </summary>
    [Fact]
    public void FullPrecisionGradientsMatchFiniteDifferencesOfADoubleForward()
    {
        using var pool = new WorkerPool(2);
        var model = new TrainingModel(Tiny, 2, quantized: false, pool);
        model.Initialize(42);
        // Non-trivial norm weights so their gradients (and the sub-norm paths) are exercised away from 1.
        var rng = new SplitMix64(7);
        foreach (var t in model.Layout.Tensors)
        {
            if (t.IsMatrix) { for (int i = 0; i < t.Length; i++) model.Parameters[t.Offset + i] *= 10f; continue; }
            for (int i = 0; i < t.Length; i++) model.Parameters[t.Offset + i] = 0.5f + (float)rng.NextDouble();
        }
        var (inputs, targets) = RandomBatch(2, Tiny.ContextLength, Tiny.VocabSize, 3);
        float loss = model.Forward(inputs, targets, 2, Tiny.ContextLength);
        model.Backward();

        var naive = new NaiveTrainingForward(Tiny);
        var p = Array.ConvertAll(model.Parameters, v => (double)v);
        double reference = naive.Loss(p, inputs, targets, 2, Tiny.ContextLength);
        output.WriteLine($"loss fp32 {loss:R}  double {reference:R}");
        Assert.True(Math.Abs(loss - reference) < 1e-5 * Math.Abs(reference), $"loss {loss} vs {reference}");

        const double h = 1e-4;
        double worst = 0;
        foreach (var t in model.Layout.Tensors)
        {
            double tensorWorst = 0;
            for (int s = 0; s < 6; s++)
            {
                int i = t.Offset + rng.NextInt(t.Length);
                double saved = p[i];
                p[i] = saved + h;
                double up = naive.Loss(p, inputs, targets, 2, Tiny.ContextLength);
                p[i] = saved - h;
                double down = naive.Loss(p, inputs, targets, 2, Tiny.ContextLength);
                p[i] = saved;
                double numeric = (up - down) / (2 * h), analytic = model.Gradients[i];
                double rel = Math.Abs(analytic - numeric) / Math.Max(Math.Max(Math.Abs(analytic), Math.Abs(numeric)), 1e-4);
                tensorWorst = Math.Max(tensorWorst, rel);
            }
            output.WriteLine($"{t.Name,-26} max rel err {tensorWorst:E2}");
            worst = Math.Max(worst, tensorWorst);
        }
        output.WriteLine($"max over all tensors {worst:E2}");
        Assert.True(worst < 1e-3, $"max relative gradient error {worst:E2}");
    }

    /// <summary>A few dozen AdamW steps on one fixed batch (memorization) lower the loss well below its start, quantized and full precision.</summary>
    [Theory]
    [InlineData(true, "8")]
    [InlineData(false, "8")]
    [InlineData(true, "4")]
    [InlineData(true, "qkv=4,gate_up=4")]
    public void AFewDozenStepsLowerTheLoss(bool quantized, string activationBits)
    {
        var shape = new TrainingShape(VocabSize: 64, Dim: 64, Layers: 2, Heads: 4, KvHeads: 2, FeedForward: 128, ContextLength: 32);
        using var pool = new WorkerPool(2);
        var model = new TrainingModel(shape, 4, quantized, pool) { ActivationBits = ActivationBits.Parse(activationBits, shape.Layers) };
        model.Initialize(1);
        var adam = new AdamW(model.Parameters, model.Gradients, model.Layout, pool) { WeightDecay = 0f };
        var schedule = new LearningRateSchedule(1e-2f, 5, 40);
        var (inputs, targets) = RandomBatch(4, 32, 64, 9);
        float first = 0, last = 0;
        for (int step = 1; step <= 40; step++)
        {
            last = model.Forward(inputs, targets, 4, 32);
            if (step == 1) first = last;
            model.Backward();
            adam.Step(step, schedule.At(step));
        }
        output.WriteLine($"{(quantized ? "quantized, activation bits " + activationBits : "full precision")}: loss {first:F3} → {last:F3}");
        Assert.InRange(first, 3.9, 4.5); // ≈ ln 64 = 4.16 at init
        Assert.True(last < 0.6 * first, $"loss {first} → {last}");
    }

    /// <summary>
    /// The trainer's fake quantizer at every width gives the engine's codes and s_x bit for bit (random rows, rows
    /// with exact ties at every width, a zero row under the 1e−5 floor, a row with one outlier).
    /// </summary>
    [Fact]
    public void FakeQuantizerAtEveryWidthIsTheEnginesQuantizer()
    {
        var rng = new SplitMix64(21);
        var rows = new List<float[]>();
        for (int r = 0; r < 20; r++) rows.Add([.. Enumerable.Range(0, 67).Select(_ => (float)rng.NextGaussian() * (r + 1) * 0.3f)]);
        // max|x| = 7·2^k, so x·m/γ = m·(j/7)/… hits half-integers exactly for several widths.
        rows.Add([.. Enumerable.Range(-35, 71).Select(j => j * 0.1f), 7f]);
        rows.Add([.. Enumerable.Range(-28, 57).Select(j => j / 4f)]);
        rows.Add(new float[33]);
        rows.Add([.. Enumerable.Range(0, 40).Select(j => j == 17 ? 90f : (float)rng.NextGaussian())]);
        foreach (int bits in ActivationBits.Allowed)
            foreach (var x in rows)
            {
                var codes = new float[x.Length];
                float scale = LowBitActivationQuantizer.QuantizeToFloatCodes(x, codes, bits);
                var engine = new sbyte[x.Length + 5];
                LowBitActivationQuantizer.Quantize(x, engine, out float engineScale, out _, bits);
                Assert.Equal(engineScale, scale);
                int m = ActivationBits.MaxCode(bits);
                for (int i = 0; i < x.Length; i++)
                {
                    Assert.Equal(engine[i], codes[i]);
                    Assert.InRange(codes[i], -m - (bits == 8 ? 1 : 0), m);
                }
            }
    }

    /// <summary>
    /// Explicit 8-bit widths are the trainer as it was (same losses and weights bit for bit over a few steps, from one
    /// seed); 4 bits is a different forward from the first step.
    /// </summary>
    [Fact]
    public void EightBitWidthsAreTheDefaultTrainerBitForBit()
    {
        var shape = new TrainingShape(VocabSize: 64, Dim: 64, Layers: 2, Heads: 4, KvHeads: 2, FeedForward: 128, ContextLength: 16);
        using var pool = new WorkerPool(2);
        var (inputs, targets) = RandomBatch(2, 16, 64, 5);
        (float[] Losses, float[] Weights) Run(string? spec)
        {
            var model = new TrainingModel(shape, 2, quantized: true, pool);
            if (spec is not null) model.ActivationBits = ActivationBits.Parse(spec, shape.Layers);
            model.Initialize(3);
            var adam = new AdamW(model.Parameters, model.Gradients, model.Layout, pool);
            var losses = new float[4];
            for (int step = 1; step <= 4; step++)
            {
                losses[step - 1] = model.Forward(inputs, targets, 2, 16);
                model.Backward();
                adam.Step(step, 5e-3f);
            }
            return (losses, (float[])model.Parameters.Clone());
        }
        var today = Run(null);
        var eight = Run("8");
        var eightPerInput = Run("qkv=8,o=8,gate_up=8,down=8");
        var four = Run("4");
        Assert.Equal(today.Losses, eight.Losses);
        Assert.Equal(today.Weights, eight.Weights);
        Assert.Equal(today.Losses, eightPerInput.Losses);
        Assert.Equal(today.Weights, eightPerInput.Weights);
        Assert.NotEqual(today.Losses[0], four.Losses[0]);
        output.WriteLine($"losses a8 {string.Join(", ", today.Losses)}; a4 {string.Join(", ", four.Losses)}");
    }

    [Fact]
    public void WidthsForAnotherLayerCountAreRefused()
    {
        using var pool = new WorkerPool(1);
        var model = new TrainingModel(Tiny, 1, quantized: true, pool);
        var e = Assert.Throws<ArgumentException>(() => model.ActivationBits = ActivationBits.Uniform(3, 4));
        Assert.Contains("3 layers; the model has 2", e.Message);
    }
}

/// <summary>Counts process-wide allocations, so it runs alone (no other test allocating meanwhile).</summary>
[CollectionDefinition(nameof(AllocationTests), DisableParallelization = true)]
public class AllocationTestsCollection;

[Collection(nameof(AllocationTests))]
public class AllocationTests
{
    /// <summary>After warm-up, forward + backward + AdamW allocate nothing on the managed heap (all buffers are made once).</summary>
    [Fact]
    public void ATrainingStepAllocatesNothing()
    {
        var shape = new TrainingShape(VocabSize: 64, Dim: 64, Layers: 2, Heads: 4, KvHeads: 2, FeedForward: 128, ContextLength: 32);
        using var pool = new WorkerPool(2);
        var model = new TrainingModel(shape, 2, quantized: true, pool);
        model.Initialize(1);
        var adam = new AdamW(model.Parameters, model.Gradients, model.Layout, pool);
        var (inputs, targets) = TrainingModelTests.RandomBatch(2, 32, 64, 9);
        for (int step = 1; step <= 3; step++) { model.Forward(inputs, targets, 2, 32); model.Backward(); adam.Step(step, 1e-3f); }
        // The count is process-wide, so a timer or a host left running by an earlier test can allocate inside a window
        // (CI once saw 16 KB that way). A step that allocates does so in every window, so the least of four windows decides.
        long least = long.MaxValue;
        var windows = new long[4];
        int next = 4;
        for (int w = 0; w < windows.Length; w++)
        {
            long before = GC.GetTotalAllocatedBytes(precise: true);
            for (int i = 0; i < 5; i++, next++) { model.Forward(inputs, targets, 2, 32); model.Backward(); adam.Step(next, 1e-3f); }
            windows[w] = GC.GetTotalAllocatedBytes(precise: true) - before;
            least = Math.Min(least, windows[w]);
        }
        Assert.True(least < 1024, $"every window of 5 steps allocated: {string.Join(", ", windows)} bytes");
    }
}
