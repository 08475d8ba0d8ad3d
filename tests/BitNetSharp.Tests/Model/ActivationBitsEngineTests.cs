using BitNetSharp.Formats.Gguf;
using BitNetSharp.Kernels;
using BitNetSharp.Model;
using BitNetSharp.Monitoring;
using BitNetSharp.Threading;

namespace BitNetSharp.Tests.Model;

/// <summary>Lower-precision activations: the b-bit quantizer against exact rationals, and the engine against the naive forward.</summary>
public class ActivationBitsEngineTests
{
    private static readonly int[] Prompt = [5, 17, 200, 3, 3, 99, 42, 7, 128, 255, 0, 64];

    /// <summary>Random rows and rows full of exact ties (x = γ·k/(2m), odd k, and bf16-like values) at every width.</summary>
    [Fact]
    public void LowBitCodesAreTheExactRoundingOfTheRealQuotient()
    {
        var rng = new Random(11);
        foreach (int bits in new[] { 6, 5, 4, 3, 2 })
        {
            int m = ActivationBits.MaxCode(bits);
            for (int trial = 0; trial < 60; trial++)
            {
                int n = 1 + rng.Next(300);
                var x = new float[n];
                float gamma = trial % 3 == 0 ? 1f : (float)Math.Exp(rng.NextDouble() * 10 - 5);
                for (int i = 0; i < n; i++)
                {
                    x[i] = (trial % 4) switch
                    {
                        // exact ties: γ·k/(2m) for odd k, representable when γ is a power of two times a small integer
                        0 => (float)(gamma * (2 * rng.Next(-m, m) + 1) / (2.0 * m)),
                        // bf16-valued inputs (8 significant bits)
                        1 => BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits((float)(rng.NextDouble() * 2 - 1) * gamma) & unchecked((int)0xFFFF0000)),
                        _ => (float)((rng.NextDouble() * 2 - 1) * gamma),
                    };
                }
                x[rng.Next(n)] = trial % 2 == 0 ? gamma : -gamma;
                var q = new sbyte[n + 5];
                LowBitActivationQuantizer.Quantize(x, q, out float scale, out int sum, bits);
                double g = Math.Max(x.Max(v => (double)Math.Abs(v)), 1e-5);
                Assert.Equal((float)(m / g), scale);
                int expectedSum = 0;
                for (int i = 0; i < n; i++)
                {
                    int expected = NaiveForward.ExactLowBit(x[i], g, m);
                    Assert.True(expected == q[i], $"b={bits} x={x[i]:R} γ={g:R}: expected {expected}, got {q[i]}");
                    Assert.InRange(q[i], -m, m);
                    expectedSum += expected;
                }
                Assert.Equal(expectedSum, sum);
                Assert.All(q[n..], v => Assert.Equal(0, v));
            }
        }
        // 8 bits is the int8 quantizer itself.
        var row = Enumerable.Range(0, 100).Select(i => MathF.Sin(i)).ToArray();
        var a = new sbyte[100];
        var b = new sbyte[100];
        LowBitActivationQuantizer.Quantize(row, a, out float sa, out int suma, 8);
        Int8ActivationQuantizer.Quantize(row, b, out float sb, out int sumb);
        Assert.Equal(b, a);
        Assert.Equal((sb, sumb), (sa, suma));
        // A tie at b = 4: x = γ/14 → x·7/γ = 0.5 → 0 (even); 3γ/14 → 1.5 → 2.
        Assert.Equal(2, NaiveForward.ExactLowBit(3f, 14.0, 7));
        Assert.Equal(2, Int8ActivationQuantizer.ExactCode(3f, 14.0, 7));
        Assert.Equal(0, Int8ActivationQuantizer.ExactCode(1f, 14.0, 7));
    }

    /// <summary>
    /// The engine with mixed widths (4-bit q/k/v and gate/up, one layer's down at 5, the rest 8) matches the naive
    /// double forward quantizing each input at the same width — so each input is quantized at its own width — and
    /// differs from the all-8 engine; all-8 widths set explicitly give bit-identical logits to the engine as it was.
    /// </summary>
    [Fact]
    public void EngineHonoursEachInputsWidth()
    {
        using var w = TransformerTests.TinyModel();
        var bits = ActivationBits.Parse("qkv=4,gate_up=4,1:down=5", w.Config.Layers);
        var naive = new NaiveForward(w) { Bits = bits };
        using var pool = new WorkerPool(2);
        using var engine = new Transformer(w, 16, pool) { ActivationBits = bits };
        using var plain = new Transformer(w, 16, pool);
        using var eights = new Transformer(w, 16, pool) { ActivationBits = ActivationBits.Parse("8," + string.Join(",", Enumerable.Repeat("8", w.Config.Layers - 1)), w.Config.Layers) };
        var c = w.Config;
        using var cache = new KvCache(c.Layers, c.KvHeads, c.HeadDim, c.ContextLength, KvCacheType.F32);
        using var plainCache = new KvCache(c.Layers, c.KvHeads, c.HeadDim, c.ContextLength, KvCacheType.F32);
        using var eightCache = new KvCache(c.Layers, c.KvHeads, c.HeadDim, c.ContextLength, KvCacheType.F32);
        var logits = new float[c.VocabSize];
        var plainLogits = new float[c.VocabSize];
        var eightLogits = new float[c.VocabSize];
        double worst = 0, apart = 0;
        int compared = 0;
        string where = "";
        for (int pos = 0; pos < Prompt.Length; pos++)
        {
            engine.Forward([new BatchToken(Prompt[pos], 0, pos, true)], [cache], logits);
            plain.Forward([new BatchToken(Prompt[pos], 0, pos, true)], [plainCache], plainLogits);
            eights.Forward([new BatchToken(Prompt[pos], 0, pos, true)], [eightCache], eightLogits);
            Assert.Equal(plainLogits, eightLogits);
            var expected = naive.Step(Prompt[pos], pos);
            double range = expected.Max() - expected.Min();
            for (int i = 0; i < expected.Length; i++) apart = Math.Max(apart, Math.Abs(plainLogits[i] - logits[i]) / range);
            // A low-bit code is a step of γ/m: an input within fp32 rounding (1e-4 of a step; observed 5e-5 at one
            // position, ≥ 3e-4 at the others) of a rounding boundary may round either way in the engine, a discontinuity of the model itself.
            if (naive.LowBitMargin < 1e-4) continue;
            compared++;
            for (int i = 0; i < expected.Length; i++)
            {
                double d = Math.Abs(expected[i] - logits[i]) / range;
                if (d > worst) (worst, where) = (d, $"position {pos}, token {i}");
            }
        }
        Assert.True(compared >= Prompt.Length - 2, $"only {compared} positions were clear of rounding boundaries");
        Assert.True(worst < 1e-5, $"engine vs naive at mixed widths: max |Δ| / range = {worst:E2} at {where}");
        Assert.True(apart > 1e-3, $"4-bit inputs changed the logits by only {apart:E2} of the range");
        Assert.Equal(bits, engine.ActivationBits);
        Assert.Throws<ArgumentException>(() => engine.ActivationBits = ActivationBits.Uniform(c.Layers + 1));
    }

    /// <summary>Widths written to a GGUF are what an engine on the loaded file uses; converting keeps them.</summary>
    [Fact]
    public void WidthsTravelInTheFile()
    {
        using var w = TransformerTests.TinyModel();
        var bits = ActivationBits.Parse("o=5,0:qkv=4", w.Config.Layers);
        w.ActivationBits = bits;
        var writer = ModelConverter.ToGguf(w, PackedWeightType.I2_S);
        using var file = GgufFile.Parse(writer.ToArray(), "bits.gguf");
        using var loaded = ModelWeights.FromGguf(file, ownsFile: false);
        Assert.Equal(bits, loaded.ActivationBits);
        using var engine = new Transformer(loaded, 4);
        Assert.Equal(bits, engine.ActivationBits);
        // A converted copy carries the key over.
        using var copy = GgufFile.Parse(ModelConverter.ToGguf(loaded, PackedWeightType.F16).ToArray(), "copy.gguf");
        Assert.Equal(bits, ActivationBits.FromGguf(copy, w.Config.Layers));
    }

    [Fact]
    public void SaturationCountsTheWidthsLimit()
    {
        sbyte[] codes = [7, -7, 6, 0, 0, -8, 1, 127];
        ModelHealthCollector.CountCodes(codes, out int sat4, out int zeros, maxCode: 7);
        Assert.Equal((4, 2), (sat4, zeros)); // 7, −7, −8 and 127 are at or past ±7
        ModelHealthCollector.CountCodes(codes, out int sat8, out _);
        Assert.Equal(1, sat8);
    }
}
