using BitNetSharp.Formats.Gguf;
using BitNetSharp.Model;
using BitNetSharp.Threading;
using BitNetSharp.Tokenization;
using BitNetSharp.Training;

namespace BitNetSharp.Tests.Training;

public class ModelExporterTests(ITestOutputHelper output)
{
    private const string Text = "Once upon a time there was a little cat. The cat liked to play in the sun. " +
        "One day the cat saw a big dog. The dog said, \"Hello, cat!\" The cat was happy and they played all day.\n\n" +
        "Tom had a red ball. He threw the ball to his friend Sue, and Sue threw it back. They laughed and laughed.\n";

    /// <summary>
    /// Train a tiny quantized model a few steps, export it (I2_S + tokenizer), load it with ModelWeights and run the
    /// engine's Transformer over one sequence: its logits must equal the trainer's quantized forward. The projections
    /// are bit-identical by construction (same β, codes, int8 activation codes and epilogue); what differs is only
    /// float summation order in attention (scores, softmax, weighted V) and in the head's dot products, i.e. a few
    /// fp32 ulps of values of size ~1. Observed: max |Δ| = 3.6e−7 on a logit range of 4.0, 58% of the logits bit-identical.
    /// Bound: max |Δ| ≤ 1e−4 · (logit range). That is loose enough for one int8
    /// activation code moved by such an ulp at a rounding boundary (one step of 1/127 of a row's max in one column),
    /// and orders of magnitude below a real mismatch (a wrong RoPE pair, scale, norm or code flips logits by ~range).
    /// <para>
    /// The same with the model trained at lower activation widths (<c>bitnet train --activation-bits</c>): the export
    /// carries the widths, the engine starts with them, and its logits are the trainer's to the same bound (a code moved
    /// at a boundary would be a step of 1/7 of the max at 4 bits, but with 7 boundaries instead of 127 such a flip is
    /// correspondingly rarer).
    /// </para>
    /// </summary>
    [Theory]
    [InlineData("8")]
    [InlineData("qkv=4,gate_up=4")]
    [InlineData("4")]
    [InlineData("1:down=3,0:o=2,qkv=5")]
    public void ExportedModelRunsInTheEngineWithTheTrainersLogits(string activationBits)
    {
        var tokenizer = BpeTrainer.Train([Text], 320, [BpeTrainer.EndOfText], cancellation: TestContext.Current.CancellationToken);
        var shape = new TrainingShape(tokenizer.Count, Dim: 128, Layers: 2, Heads: 4, KvHeads: 2, FeedForward: 256, ContextLength: 32);
        var ids = tokenizer.Encode(Text);
        using var pool = new WorkerPool(2);
        var bits = ActivationBits.Parse(activationBits, shape.Layers);
        var model = new TrainingModel(shape, 2, quantized: true, pool) { ActivationBits = bits };
        model.Initialize(5);
        var adam = new AdamW(model.Parameters, model.Gradients, model.Layout, pool);
        var inputs = new int[2 * 32];
        var targets = new int[2 * 32];
        for (int i = 0; i < 64; i++) { inputs[i] = ids[i % (ids.Length - 1)]; targets[i] = ids[i % (ids.Length - 1) + 1]; }
        for (int step = 1; step <= 5; step++)
        {
            model.Forward(inputs, targets, 2, 32);
            model.Backward();
            adam.Step(step, 3e-3f);
        }

        var sequence = ids.AsSpan(3, 20).ToArray();
        model.Forward(sequence, [], 1, sequence.Length);

        var bytes = ModelExporter.Build(shape, model.Parameters, tokenizer, "tiny-trained", activationBits: bits).ToArray();
        var file = GgufFile.Parse(bytes, "tiny-trained.gguf");
        Assert.Equal(!bits.AllEight, file.Metadata.ContainsKey(ActivationBits.GgufKey)); // 8 bits: the file as before
        using var weights = ModelWeights.FromGguf(file, ownsFile: true);
        Assert.Equal(shape.ToModelConfig() with { }, weights.Config);
        using var engine = new Transformer(weights, 32, pool);
        Assert.Equal(bits, engine.ActivationBits);
        using var cache = new KvCache(shape.Layers, shape.KvHeads, shape.HeadDim, shape.ContextLength, KvCacheType.F32);
        var batch = sequence.Select((t, i) => new BatchToken(t, 0, i, true)).ToArray();
        var logits = new float[sequence.Length * shape.VocabSize];
        engine.Forward(batch, [cache], logits);

        double worst = 0, range = 0;
        int exact = 0;
        for (int t = 0; t < sequence.Length; t++)
        {
            var expected = model.Logits(0, t);
            var actual = logits.AsSpan(t * shape.VocabSize, shape.VocabSize);
            range = Math.Max(range, expected.ToArray().Max() - expected.ToArray().Min());
            for (int i = 0; i < shape.VocabSize; i++)
            {
                worst = Math.Max(worst, Math.Abs(expected[i] - actual[i]));
                if (expected[i] == actual[i]) exact++;
            }
            Assert.Equal(ArgMax(expected), ArgMax(actual));
        }
        output.WriteLine($"{bits}: max |Δlogit| {worst:E2}, logit range {range:F3}, bit-identical {exact}/{sequence.Length * shape.VocabSize}");
        Assert.True(worst <= 1e-4 * range, $"max |Δ| {worst:E2} vs range {range:F3}");
    }

    /// <summary>The GGUF's tokenizer, loaded by the runtime (src/BitNetSharp/Text), tokenizes like the trainer's encoder.</summary>
    [Fact]
    public void EmbeddedTokenizerLoadsAndAgreesWithTheTrainersEncoder()
    {
        string corpus = File.ReadAllText(SharedData.RequirePath("corpora/tinystories_val_subset.txt"))[..60_000];
        var tokenizer = BpeTrainer.Train([corpus], 1024, [BpeTrainer.EndOfText], cancellation: TestContext.Current.CancellationToken);
        var shape = new TrainingShape(tokenizer.Count, Dim: 128, Layers: 1, Heads: 2, KvHeads: 1, FeedForward: 128, ContextLength: 16);
        var parameters = new float[new ParameterLayout(shape).Count];
        for (int i = 0; i < parameters.Length; i++) parameters[i] = (i % 7 - 3) * 0.01f;
        var bytes = ModelExporter.Build(shape, parameters, tokenizer, "tok").ToArray();
        using var file = GgufFile.Parse(bytes, "tok.gguf");
        var runtime = TokenizerLoader.FromGguf(file);
        Assert.Equal(tokenizer.Count, runtime.VocabularySize);
        Assert.Equal(0, runtime.EosId);
        Assert.False(runtime.AddBosToken);

        string sample = File.ReadAllText(SharedData.RequirePath("corpora/tinystories_val_subset.txt"))[60_000..90_000] + " 123  tabs\tand\nnewlines\r\n  end ";
        var ours = tokenizer.Encode(sample);
        var theirs = runtime.Encode(sample, addBos: false);
        Assert.Equal(ours, theirs);
        Assert.Equal(sample, runtime.Decode(theirs));
    }

    /// <summary>
    /// The trainer's encoder (a priority queue over the symbols) gives the runtime tokenizer's ids on text made to
    /// catch a wrong merge order: long words without spaces, runs of one letter (overlapping pairs), repeats.
    /// </summary>
    [Theory]
    [InlineData(1, "ab")]
    [InlineData(2, "abc")]
    [InlineData(3, "aab ")]
    public void TrainerAndRuntimeEncodeLongWordsAlike(int seed, string alphabet)
    {
        var random = new Random(seed);
        string Text(int length) => string.Concat(Enumerable.Range(0, length).Select(_ => alphabet[random.Next(alphabet.Length)]));
        var tokenizer = BpeTrainer.Train([Text(20_000) + " " + new string('a', 500) + " " + Text(20_000)], 257 + 200, [BpeTrainer.EndOfText], cancellation: TestContext.Current.CancellationToken);
        var shape = new TrainingShape(tokenizer.Count, Dim: 128, Layers: 1, Heads: 2, KvHeads: 1, FeedForward: 128, ContextLength: 16);
        var bytes = ModelExporter.Build(shape, new float[new ParameterLayout(shape).Count], tokenizer, "tok").ToArray();
        using var file = GgufFile.Parse(bytes, "tok.gguf");
        var runtime = TokenizerLoader.FromGguf(file);
        foreach (string sample in new[] { Text(5_000), new string('a', 1_001), Text(37) + " " + new string('b', 64) + " " + Text(3), "a", "" })
        {
            var ours = tokenizer.Encode(sample);
            Assert.Equal(runtime.Encode(sample, addBos: false), ours);
            Assert.Equal(sample, tokenizer.Decode(ours));
        }
    }

    /// <summary>
    /// Letters and digits outside the BMP are split by code point in training as at run time: the trainer's regex saw
    /// two "other" surrogates, merged "(𝐀)" into one token, and trained on ids the runtime never gives for that text.
    /// </summary>
    [Fact]
    public void TrainerAndRuntimeSplitSupplementaryLettersAlike()
    {
        var tokenizer = BpeTrainer.Train([string.Concat(Enumerable.Repeat("(𝐀) 𝟏𝟐 x𠀀y ", 200))], 268, [BpeTrainer.EndOfText], cancellation: TestContext.Current.CancellationToken);
        var shape = new TrainingShape(tokenizer.Count, Dim: 128, Layers: 1, Heads: 2, KvHeads: 1, FeedForward: 128, ContextLength: 16);
        var bytes = ModelExporter.Build(shape, new float[new ParameterLayout(shape).Count], tokenizer, "tok").ToArray();
        using var file = GgufFile.Parse(bytes, "tok.gguf");
        var runtime = TokenizerLoader.FromGguf(file);
        foreach (string sample in new[] { "(𝐀)", " 𝟏𝟐", "x𠀀y", "(𝐀) 𝟏𝟐 x𠀀y (𝐀)." })
        {
            var ours = tokenizer.Encode(sample);
            Assert.Equal(runtime.Encode(sample, addBos: false), ours);
            Assert.Equal(sample, runtime.Decode(ours));
        }
        // "(", "𝐀", ")" are three pieces on both sides: no merge may span them.
        Assert.True(tokenizer.Encode("(𝐀)").Length >= 3);
    }

    [Fact]
    public void ShapesThatI2SCannotPackAreRefusedByName()
    {
        var shape = new TrainingShape(300, Dim: 24, Layers: 1, Heads: 4, KvHeads: 2, FeedForward: 40, ContextLength: 8);
        var e = Assert.Throws<ArgumentException>(() => ModelExporter.CheckPackable(shape, ProjectionPacking.I2S));
        Assert.Contains("blk.0.attn_q.weight", e.Message);
        Assert.Contains("multiple of 128", e.Message);
    }

    private static int ArgMax(ReadOnlySpan<float> x)
    {
        int best = 0;
        for (int i = 1; i < x.Length; i++) if (x[i] > x[best]) best = i;
        return best;
    }
}
