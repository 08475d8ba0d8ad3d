using System.Text.Json;
using BitNetSharp.Evaluation;
using BitNetSharp.Model;
using BitNetSharp.Tests.Formats;
using BitNetSharp.Tokenization;
using BitNetSharp.Training;

namespace BitNetSharp.Tests.Evaluation;

/// <summary>
/// `eval --llama-perplexity`: llama.cpp's perplexity plan (tools/perplexity: tokens with BOS, n_chunk = tokens / n_ctx,
/// each chunk's first token set to BOS, positions n_ctx/2 … n_ctx − 2 scored against the next token of the chunk),
/// so a figure compares with llama-perplexity's (2B4T's published 17.1090 on WikiText-2). Also: a broken reference
/// model is an error, not a KL of 0.
/// </summary>
public class LlamaPerplexityTests
{
    private const string Story =
        "Once upon a time, there was a little girl named Lily. She loved to play in the park with her dog, Max. One day, " +
        "Lily saw a big red ball under a tree. She ran to get it, but Max got there first. They laughed and played all day. ";

    private static string BundledModel => RepositoryFiles.Path("models/bitnet-tinystories.gguf");

    [Fact]
    public void PlanIsLlamaPerplexitys()
    {
        // 9 tokens, ctx 4: chunks [t0..t3], [t4..t7]; each scores position 2 (predicting t3, t7).
        Assert.Equal((2, 2, 2L), QualityEvaluator.Plan(9, 4, 4, llamaChunks: true));
        Assert.Equal((12, 4, 36L), QualityEvaluator.Plan(100, 8, 8, llamaChunks: true));
        Assert.Equal((0, 32, 0L), QualityEvaluator.Plan(63, 64, 64, llamaChunks: true));
        Assert.Throws<ArgumentOutOfRangeException>(() => QualityEvaluator.Plan(100, 8, 4, llamaChunks: true));
    }

    /// <summary>The evaluator's NLL equals a plain loop written from llama-perplexity's description.</summary>
    [Fact]
    public void NllEqualsAnIndependentLoopOverTheChunks()
    {
        using var weights = ModelWeights.Load(BundledModel);
        var tokenizer = TokenizerLoader.FromGguf(weights.Gguf!);
        bool addBos = tokenizer.AddBosToken && tokenizer.BosId >= 0;
        int bos = addBos ? tokenizer.BosId : -1;
        var tokens = tokenizer.Encode(string.Concat(Enumerable.Repeat(Story, 4)), addBos: addBos);
        const int ctx = 48;
        int chunks = tokens.Length / ctx;
        Assert.True(chunks >= 2);

        using var engine = new Transformer(weights, ctx);
        var (result, _) = QualityEvaluator.Evaluate(engine, tokens, ctx, ctx, bosId: bos, llamaChunks: true, cancellation: TestContext.Current.CancellationToken);

        using var plain = new Transformer(weights, ctx);
        int vocab = weights.Config.VocabSize;
        var logits = new float[ctx * vocab];
        double nll = 0;
        long count = 0;
        for (int i = 0; i < chunks; i++)
        {
            using var cache = new KvCache(weights.Config.Layers, weights.Config.KvHeads, weights.Config.HeadDim, ctx, KvCacheType.F32);
            var batch = new BatchToken[ctx];
            for (int j = 0; j < ctx; j++) batch[j] = new BatchToken(j == 0 && bos >= 0 ? bos : tokens[i * ctx + j], 0, j, true);
            plain.Forward(batch, [cache], logits);
            for (int j = ctx / 2; j < ctx - 1; j++)
            {
                var z = logits.AsSpan(j * vocab, vocab);
                double max = double.NegativeInfinity;
                foreach (float v in z) max = Math.Max(max, v);
                double sum = 0;
                foreach (float v in z) sum += Math.Exp(v - max);
                nll += Math.Log(sum) + max - z[tokens[i * ctx + j + 1]];
                count++;
            }
        }
        Assert.Equal(count, result.ScoredTokens);
        Assert.Equal((long)chunks * (ctx - 1 - ctx / 2), result.ScoredTokens);
        Assert.Equal(nll, result.NegativeLogLikelihood, 1e-9 * nll);
    }

    /// <summary>
    /// llama-perplexity refuses text shorter than 2 × n_ctx tokens ("you need at least 2*n_ctx tokens to evaluate
    /// perplexity", tools/perplexity); a one-chunk figure it would never print is refused here too.
    /// </summary>
    [Fact]
    public void TextShorterThanTwoChunksIsRefusedAsLlamaPerplexityDoes()
    {
        using var weights = ModelWeights.Load(BundledModel);
        var tokenizer = TokenizerLoader.FromGguf(weights.Gguf!);
        bool addBos = tokenizer.AddBosToken && tokenizer.BosId >= 0;
        var tokens = tokenizer.Encode(string.Concat(Enumerable.Repeat(Story, 2)), addBos: addBos);
        int ctx = tokens.Length / 2 + 1; // ctx ≤ tokens < 2·ctx: one chunk
        Assert.True(ctx >= 3 && ctx <= tokens.Length && ctx <= weights.Config.ContextLength);
        using var engine = new Transformer(weights, ctx);
        var e = Assert.Throws<ArgumentException>(() => QualityEvaluator.Evaluate(engine, tokens, ctx, ctx, llamaChunks: true, cancellation: TestContext.Current.CancellationToken));
        Assert.Contains($"at least 2 × --ctx = {2 * ctx}", e.Message);
        var (result, _) = QualityEvaluator.Evaluate(engine, tokens, tokens.Length / 2, tokens.Length / 2, llamaChunks: true, cancellation: TestContext.Current.CancellationToken); // exactly two chunks' worth
        Assert.Equal(2, result.Windows);

        using var dir = new TestGguf.TempDirectory();
        string data = dir.File("text.txt");
        File.WriteAllText(data, string.Concat(Enumerable.Repeat(Story, 2)));
        var (code, _, error) = KlEvaluationTests.Cli("eval", "-m", BundledModel, "--data", data, "--ctx", ctx.ToString(System.Globalization.CultureInfo.InvariantCulture), "--llama-perplexity");
        Assert.Equal(2, code);
        Assert.Contains($"{2 * ctx}", error);
    }

    /// <summary>No window, or one given twice: a perplexity of 1 and a KL of 0 read as perfect, or targets scored twice.</summary>
    [Fact]
    public void WindowStartsMustBeDistinctAndSomething()
    {
        using var weights = ModelWeights.Load(BundledModel);
        var tokenizer = TokenizerLoader.FromGguf(weights.Gguf!);
        var tokens = tokenizer.Encode(string.Concat(Enumerable.Repeat(Story, 2)), addBos: false);
        using var engine = new Transformer(weights, 32);
        Assert.Throws<ArgumentException>(() => QualityEvaluator.Evaluate(engine, tokens, 32, 32, windowStarts: [], cancellation: TestContext.Current.CancellationToken));
        var e = Assert.Throws<ArgumentException>(() => QualityEvaluator.Evaluate(engine, tokens, 32, 32, windowStarts: [0, 0], cancellation: TestContext.Current.CancellationToken));
        Assert.Contains("twice", e.Message);
        Assert.True(double.IsNaN(new PerplexityResult(0, 0, 0, 0).Perplexity));
    }

    [Fact]
    public void CliReportsTheScoringAndRefusesWhatDoesNotApply()
    {
        using var dir = new TestGguf.TempDirectory();
        string data = dir.File("text.txt");
        File.WriteAllText(data, string.Concat(Enumerable.Repeat(Story, 6)));
        var (code, output, error) = KlEvaluationTests.Cli("eval", "-m", BundledModel, "--data", data, "--ctx", "64", "--llama-perplexity", "--json");
        Assert.True(code == 0, error);
        var j = JsonDocument.Parse(output).RootElement;
        Assert.Equal("llama-perplexity", j.GetProperty("scoring").GetString());
        int tokens = j.GetProperty("tokens").GetInt32();
        Assert.Equal(tokens / 64 * 31, j.GetProperty("scored_tokens").GetInt64());

        var plain = JsonDocument.Parse(KlEvaluationTests.Cli("eval", "-m", BundledModel, "--data", data, "--ctx", "64", "--json").Output).RootElement;
        Assert.Equal("half-windows", plain.GetProperty("scoring").GetString());

        (code, _, error) = KlEvaluationTests.Cli("eval", "-m", BundledModel, "--data", data, "--ctx", "64", "--stride", "32", "--llama-perplexity");
        Assert.Equal(2, code);
        Assert.Contains("--stride", error);
        (code, _, error) = KlEvaluationTests.Cli("eval", "-m", BundledModel, "--data", data, "--ctx", "64", "--llama-perplexity", "--save-logits", dir.File("x.bnlg"));
        Assert.Equal(2, code);
        Assert.Contains("--save-logits", error);
        Assert.False(File.Exists(dir.File("x.bnlg")));
        // A chunk of 2 has no position from ctx/2 to ctx-2: it scored nothing and read a perplexity of 1.
        (code, _, error) = KlEvaluationTests.Cli("eval", "-m", BundledModel, "--data", data, "--ctx", "2", "--llama-perplexity");
        Assert.Equal(2, code);
        Assert.Contains("at least 3", error);
        Assert.Throws<ArgumentOutOfRangeException>(() => QualityEvaluator.Plan(100, 2, 2, llamaChunks: true));

        // --pre-tokenizer splits the text as that llama.cpp pre-tokenizer does (bitnet.cpp reads the official 2B4T GGUF,
        // which names none, as "default"); the report says which, and the head type the run had.
        (code, output, error) = KlEvaluationTests.Cli("eval", "-m", BundledModel, "--data", data, "--ctx", "64", "--llama-perplexity", "--pre-tokenizer", "default", "--json");
        Assert.True(code == 0, error);
        j = JsonDocument.Parse(output).RootElement;
        Assert.Equal("default", j.GetProperty("pre_tokenizer").GetString());
        Assert.False(string.IsNullOrEmpty(j.GetProperty("head_type").GetString()));
        using (var gguf = BitNetSharp.Formats.Gguf.GgufFile.Open(BundledModel))
        {
            var pre = TokenizerLoader.FromGguf(gguf, "default");
            Assert.Equal(pre.Encode(File.ReadAllText(data), addBos: pre.AddBosToken && pre.BosId >= 0).Length, j.GetProperty("tokens").GetInt32());
        }
        (code, _, error) = KlEvaluationTests.Cli("eval", "-m", BundledModel, "--data", data, "--pre-tokenizer", "nope");
        Assert.Equal(2, code);
        Assert.Contains("Unknown pre-tokenizer", error);
    }

    /// <summary>A reference with a NaN scale made every KL term NaN, skipped as zero mass: "KL 0, perfect agreement".</summary>
    [Fact]
    public void ABrokenReferenceIsAnErrorNotAZeroKl()
    {
        using var weights = ModelWeights.Load(BundledModel);
        using var broken = ModelWeights.Load(BundledModel);
        broken.Layers[1].Q.RowScales[2] = float.NaN;
        var tokenizer = TokenizerLoader.FromGguf(weights.Gguf!);
        var tokens = tokenizer.Encode(string.Concat(Enumerable.Repeat(Story, 3)), addBos: false);
        using var engine = new Transformer(weights, 32);
        using var reference = new Transformer(broken, 32);
        var e = Assert.Throws<BitNetSharp.Monitoring.NonFiniteLogitsException>(() => QualityEvaluator.Evaluate(engine, tokens, 32, 32, reference: KlReference.FromEngine(reference, KvCacheType.F32), cancellation: TestContext.Current.CancellationToken));
        Assert.Contains("reference", e.Message);
    }
}
