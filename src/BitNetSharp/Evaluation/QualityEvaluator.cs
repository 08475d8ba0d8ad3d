using BitNetSharp.Model;
using BitNetSharp.Training;

namespace BitNetSharp.Evaluation;

/// <summary>KL divergence and top-token agreement of a model against a reference, over the same scored positions.</summary>
/// <param name="MeanKl">Mean KL(reference ‖ model) per position, nats.</param>
/// <param name="MeanKlStdErr">Standard error of that mean (sample std-dev / √positions).</param>
/// <param name="TopAgreement">Share of positions where both put the same token first.</param>
/// <param name="TopK">0 when the reference rows were full; k when only the reference's top k were kept (KL then
/// compares the distributions coarsened to those k tokens and the rest: a lower bound on the full KL).</param>
/// <param name="DeltaP">Δp = p_model(next token) − p_reference(next token) per position, as llama-perplexity
/// --kl-divergence reports it: how much probability the model moved off (or onto) the token that came.</param>
/// <param name="TopAgreementStdErr">Standard error of <see cref="TopAgreement"/>: √(a(1 − a)/(positions − 1)), as llama-perplexity computes it.</param>
public sealed record KlResult(long Positions, double MeanKl, double MeanKlStdErr, double MedianKl, double P99Kl, double MaxKl,
    double TopAgreement, PerplexityResult Reference, int TopK, DeltaPStatistics? DeltaP = null, double TopAgreementStdErr = double.NaN)
{
    /// <summary>
    /// The model's perplexity minus <see cref="Reference"/>'s, both read at one precision: against a saved file (float
    /// log-probabilities) the model's own are rounded as the file's were, so a model against its own file reads 0
    /// (it read −6.6e-9 from the double-precision perplexity).
    /// </summary>
    public double DeltaPerplexity { get; init; } = double.NaN;

    /// <summary>Sorted per-position values to the q-quantile, linear between ranks (numpy's default).</summary>
    public static double Quantile(ReadOnlySpan<double> sorted, double q)
    {
        if (sorted.Length == 0) return double.NaN;
        double rank = q * (sorted.Length - 1);
        int lo = (int)Math.Floor(rank), hi = Math.Min(lo + 1, sorted.Length - 1);
        return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo);
    }

    internal static KlResult From(List<double> kl, long agree, PerplexityResult reference, int topK, List<double>? deltaP = null)
    {
        var values = kl.ToArray();
        Array.Sort(values);
        double mean = 0;
        foreach (double v in values) mean += v;
        mean = values.Length > 0 ? mean / values.Length : double.NaN; // no position: no mean (it read a KL of 0)
        double ss = 0;
        foreach (double v in values) ss += (v - mean) * (v - mean);
        double stderr = values.Length > 1 ? Math.Sqrt(ss / (values.Length - 1) / values.Length) : double.NaN;
        double agreement = values.Length > 0 ? (double)agree / values.Length : double.NaN;
        return new KlResult(values.Length, mean, stderr, Quantile(values, 0.5), Quantile(values, 0.99),
            values.Length > 0 ? values[^1] : double.NaN, agreement, reference, topK,
            // llama-perplexity's √(a(1 − a)/(n − 1)), as the KL mean's error divides by n − 1 (it divided by n).
            deltaP is null ? null : DeltaPStatistics.From(deltaP), values.Length > 1 ? Math.Sqrt(agreement * (1 - agreement) / (values.Length - 1)) : double.NaN);
    }
}

/// <summary>Δp = p_model(next token) − p_reference(next token) over the scored positions: mean, RMS and quantiles.</summary>
public sealed record DeltaPStatistics(double Mean, double Rms, double Min, double P01, double P05, double Median, double P95, double P99, double Max)
{
    internal static DeltaPStatistics From(List<double> dp)
    {
        var v = dp.ToArray();
        Array.Sort(v);
        double sum = 0, ss = 0;
        foreach (double x in v) { sum += x; ss += x * x; }
        int n = Math.Max(1, v.Length);
        return new DeltaPStatistics(v.Length > 0 ? sum / n : double.NaN, v.Length > 0 ? Math.Sqrt(ss / n) : double.NaN,
            v.Length > 0 ? v[0] : double.NaN, KlResult.Quantile(v, 0.01), KlResult.Quantile(v, 0.05), KlResult.Quantile(v, 0.5),
            KlResult.Quantile(v, 0.95), KlResult.Quantile(v, 0.99), v.Length > 0 ? v[^1] : double.NaN);
    }
}

/// <summary>Where the reference distributions come from: a second engine run on the same windows, or a saved-logits file.</summary>
public sealed class KlReference
{
    internal Transformer? Engine { get; private init; }
    internal KvCacheType KvType { get; private init; }
    internal LogitsFileReader? File { get; private init; }

    /// <summary>An engine (another model, or the same weights with other settings) run beside the evaluated one, with its own KV cache of <paramref name="kvType"/>.</summary>
    public static KlReference FromEngine(Transformer engine, KvCacheType kvType) => new() { Engine = engine, KvType = kvType };

    /// <summary>A saved-logits file; its plan, vocabulary and token hash must match the run.</summary>
    public static KlReference FromFile(LogitsFileReader file) => new() { File = file };
}

/// <summary>
/// Scores a token stream under a model the way <see cref="PerplexityEvaluator"/> describes (windows of ctx tokens every
/// stride tokens, each from an empty KV cache, positions ≥ ctx/2 scored), and at every scored position optionally
/// compares the model's next-token distribution with a reference's (KL, top-token agreement, the reference's own
/// perplexity) and saves the distribution to a logits file. Deterministic: the same input gives the same numbers
/// whatever the thread count (the engine's sums are exact integers; the statistics are summed in order, in double).
/// </summary>
public static class QualityEvaluator
{
    /// <summary>
    /// How many positions a plan scores: windows × (ctx − first scored position). The first scored position is ctx/2,
    /// or ctx − stride when windows overlap more than that, so no target is scored twice (with an odd ctx and stride
    /// ctx/2 rounded down, positions from ctx/2 scored one target in two windows).
    /// </summary>
    /// <param name="llamaChunks">
    /// llama-perplexity's own plan instead: tokenCount / ctx chunks of ctx tokens, each scoring positions ctx/2 to
    /// ctx − 2 (the targets inside the chunk: ctx − 1 − ctx/2 a chunk); the stride must be ctx.
    /// </param>
    public static (int Windows, int FirstScored, long Positions) Plan(int tokenCount, int ctx, int stride, bool llamaChunks = false)
    {
        if (ctx < 2) throw new ArgumentOutOfRangeException(nameof(ctx), ctx, "The window must be at least 2 tokens.");
        if (stride < 1 || stride > ctx) throw new ArgumentOutOfRangeException(nameof(stride), stride, $"The stride must be 1 to the window ({ctx}).");
        if (llamaChunks)
        {
            if (stride != ctx) throw new ArgumentOutOfRangeException(nameof(stride), stride, $"llama-perplexity's chunks do not overlap: the stride must be the window ({ctx}).");
            // Positions ctx/2 to ctx-2: none in a chunk of 2, which scored nothing and read a perfect perplexity of 1.
            if (ctx < 3) throw new ArgumentOutOfRangeException(nameof(ctx), ctx, "llama-perplexity's chunks score positions ctx/2 to ctx-2: the window must be at least 3 tokens.");
            int chunks = Math.Max(0, tokenCount) / ctx;
            return (chunks, ctx / 2, (long)chunks * (ctx - 1 - ctx / 2));
        }
        int firstScored = Math.Max(ctx / 2, ctx - stride);
        // A window needs ctx + 1 tokens; text shorter than one window scores nothing (integer division toward zero
        // made that 1 window, and far shorter text a negative count).
        int windows = tokenCount < ctx + 1 ? 0 : (tokenCount - 1 - ctx) / stride + 1;
        return (windows, firstScored, (long)windows * (ctx - firstScored));
    }

    /// <param name="windowStarts">Token offsets of the windows to score, in place of one every <paramref name="stride"/> tokens
    /// (calibration scores a seeded sample of windows); each needs ctx + 1 tokens from its start.</param>
    public static (PerplexityResult Model, KlResult? Kl) Evaluate(Transformer engine, ReadOnlySpan<int> tokens, int ctx, int stride = 0,
        Func<int, int>? tokenByteCount = null, int bosId = -1, Action<int, int>? progress = null,
        KvCacheType kvType = KvCacheType.F32, KlReference? reference = null, LogitsFileWriter? save = null, IReadOnlyList<int>? windowStarts = null,
        bool llamaChunks = false, CancellationToken cancellation = default)
    {
        var c = engine.Config;
        if (ctx < 2 || ctx > c.ContextLength) throw new ArgumentOutOfRangeException(nameof(ctx), ctx, $"The window must be 2 to {c.ContextLength} tokens (the model's context).");
        if (stride <= 0) stride = ctx;
        if (stride > ctx) throw new ArgumentOutOfRangeException(nameof(stride), stride, $"The stride must be at most the window ({ctx}).");
        // llama-perplexity refuses text shorter than two chunks ("you need at least 2*n_ctx tokens"): a figure it would
        // never print is not one to compare with its published ones.
        int needed = llamaChunks ? 2 * ctx : ctx + 1;
        if (tokens.Length < needed)
            throw new ArgumentException(llamaChunks
                ? $"The text is {tokens.Length} tokens; llama-perplexity's chunks need at least 2 × --ctx = {needed} (llama.cpp refuses less). Use a smaller --ctx or more text."
                : $"The text is {tokens.Length} tokens; one window of {ctx} needs {needed}. Use a smaller --ctx or more text.", nameof(tokens));
        if (llamaChunks && (windowStarts is not null || save is not null || reference?.File is not null))
            throw new ArgumentException("llama-perplexity's chunks are a plan of their own: they take no window starts or logits files.", nameof(llamaChunks));
        var (windows, firstScored, _) = Plan(tokens.Length, ctx, stride, llamaChunks);
        // The last position's target lies outside a llama chunk, which llama-perplexity does not score.
        int scoredEnd = llamaChunks ? ctx - 1 : ctx;
        if (windowStarts is not null)
        {
            windows = windowStarts.Count;
            // None scores nothing (a perplexity of 1, a KL of 0 read as perfect); one twice scores its targets twice.
            if (windows == 0) throw new ArgumentException("No window starts were given: nothing would be scored.", nameof(windowStarts));
            var seen = new HashSet<int>();
            foreach (int ws in windowStarts)
            {
                if (ws < 0 || ws + ctx >= tokens.Length)
                    throw new ArgumentOutOfRangeException(nameof(windowStarts), ws, $"A window at {ws} needs {ctx + 1} tokens; the text has {tokens.Length}.");
                if (!seen.Add(ws)) throw new ArgumentException($"The window at {ws} is given twice; its targets would be scored twice.", nameof(windowStarts));
            }
        }
        int vocab = c.VocabSize;
        var refEngine = reference?.Engine;
        var refFile = reference?.File;
        if (refEngine is not null)
        {
            if (refEngine.Config.VocabSize != vocab)
                throw new ArgumentException($"The reference model's vocabulary has {refEngine.Config.VocabSize} tokens and the evaluated model's {vocab}; KL needs the same vocabulary.", nameof(reference));
            if (ctx > refEngine.Config.ContextLength)
                throw new ArgumentException($"The window of {ctx} tokens is longer than the reference model's context of {refEngine.Config.ContextLength}.", nameof(reference));
        }
        if (refFile is not null) CheckFile(refFile, vocab, ctx, stride, bosId, tokens, (long)windows * (ctx - firstScored));

        using var cache = new KvCache(c.Layers, c.KvHeads, c.HeadDim, ctx, kvType);
        using var refCache = refEngine is null ? null : new KvCache(refEngine.Config.Layers, refEngine.Config.KvHeads, refEngine.Config.HeadDim, ctx, reference!.KvType);
        int chunk = refEngine is null ? engine.MaxBatchTokens : Math.Min(engine.MaxBatchTokens, refEngine.MaxBatchTokens);
        var batch = new BatchToken[chunk];
        var logits = new float[(long)chunk * vocab];
        var refLogits = refEngine is null ? null : new float[(long)chunk * vocab];
        bool needRows = reference is not null || save is not null;
        var logQ = needRows ? new double[vocab] : [];
        var logP = refEngine is not null ? new double[vocab] : [];
        var kl = reference is null ? null : new List<double>();
        var deltaP = reference is null ? null : new List<double>();
        double nll = 0, refNll = 0, nllAsStored = 0;
        long scored = 0, bytes = 0, agree = 0;
        for (int w = 0; w < windows; w++)
        {
            int start = windowStarts?[w] ?? w * stride;
            cache.Clear();
            refCache?.Clear();
            for (int p0 = 0; p0 < ctx; p0 += chunk)
            {
                int n = Math.Min(chunk, ctx - p0);
                for (int i = 0; i < n; i++)
                {
                    int pos = p0 + i;
                    int token = pos == 0 && bosId >= 0 ? bosId : tokens[start + pos];
                    batch[i] = new BatchToken(token, 0, pos, pos >= firstScored && pos < scoredEnd);
                }
                // Checked before each forward (a chunk of the window): Ctrl-C stops within one chunk, so the callers'
                // cleanup runs (a scratch reference file, a partial --save-logits) before the process ends.
                cancellation.ThrowIfCancellationRequested();
                engine.Forward(batch.AsSpan(0, n), [cache], logits);
                refEngine?.Forward(batch.AsSpan(0, n), [refCache!], refLogits);
                int row = 0;
                for (int i = 0; i < n; i++)
                {
                    if (!batch[i].WantLogits) continue;
                    int target = tokens[start + p0 + i + 1];
                    var z = logits.AsSpan(row * vocab, vocab);
                    double tokenNll;
                    if (!needRows) tokenNll = PerplexityEvaluator.NegativeLogProbability(z, target);
                    else
                    {
                        Distributions.LogSoftmax(z, logQ);
                        tokenNll = -logQ[target];
                    }
                    // NaN or ±Inf logits make a NaN score (a perplexity of NaN, which JSON cannot even hold): say where.
                    if (double.IsNaN(tokenNll))
                        throw new Monitoring.NonFiniteLogitsException($"The model's logits are not finite (NaN or ±Inf) in window {w + 1} of {windows} at position {p0 + i} " +
                            $"(token {target}): its weights or scales are broken; `bitnet generate --health` names the layer where values first go non-finite.");
                    nll += tokenNll;
                    if (needRows)
                    {
                        save?.Write(target, logQ);
                        if (refEngine is not null)
                        {
                            Distributions.LogSoftmax(refLogits.AsSpan(row * vocab, vocab), logP);
                            // One NaN or +Inf logit makes the whole row NaN, whose KL terms all read as 0: say so instead.
                            if (double.IsNaN(logP[target]))
                                throw new Monitoring.NonFiniteLogitsException($"The reference model's logits are not finite (NaN or ±Inf) in window {w + 1} of {windows} at position {p0 + i}: " +
                                    "its weights or scales are broken, and a KL against it would read as 0.");
                            refNll -= logP[target];
                            deltaP!.Add(Math.Exp(logQ[target]) - Math.Exp(logP[target]));
                            kl!.Add(Distributions.KlDivergence(logP, logQ));
                            if (Distributions.ArgMax(logP) == Distributions.ArgMax(logQ)) agree++;
                        }
                        else if (refFile is not null)
                        {
                            refFile.Next();
                            if (refFile.Target != target)
                                throw new InvalidDataException($"{refFile.Path}: position {scored} predicts token {refFile.Target}, this run {target}, though the file's token hash matches this text: the file is damaged (or was edited); save it again with --save-logits.");
                            // A log-probability is at most 0 (a finite rest mass too): NaN, ±∞ or a positive value is a damaged file
                            // (+∞ read as a KL of ∞ ± NaN, exit 0).
                            if (!(refFile.TargetLogProb <= 1e-6 && double.IsFinite(refFile.TargetLogProb)) || (refFile.Header.TopK > 0 && !(refFile.LogRest <= 1e-6 && !double.IsNaN(refFile.LogRest))))
                                throw new InvalidDataException($"{refFile.Path}: position {scored} holds non-finite log-probabilities; the file is corrupt or was saved from a broken model.");
                            refNll -= refFile.TargetLogProb;
                            // The file holds each log-probability as float: this run's are compared rounded the same way, so
                            // the file's own model reads exactly 0 (its double rows read 1e-8 nats: calibrate's search with no
                            // step taken reported that).
                            double targetAsStored = (float)logQ[target];
                            nllAsStored -= targetAsStored;
                            deltaP!.Add(Math.Exp(targetAsStored) - Math.Exp(refFile.TargetLogProb));
                            if (refFile.Header.TopK == 0)
                            {
                                kl!.Add(Distributions.KlDivergenceAsStored(refFile.LogProbs, logQ, out double mass));
                                refFile.CheckMass(mass);
                                if (Distributions.ArgMax(refFile.LogProbs) == Distributions.ArgMaxAsStored(logQ)) agree++;
                            }
                            else
                            {
                                kl!.Add(Distributions.KlDivergenceTopK(refFile.TopIds, refFile.TopLogProbs, refFile.LogRest, logQ,
                                    (float)Distributions.LogSumExpExcept(logQ, refFile.TopIds), roundQ: true));
                                // The file's top token was chosen in double (ties to the lower id), as ArgMax chooses.
                                if (refFile.TopIds[0] == Distributions.ArgMax(logQ)) agree++;
                            }
                        }
                    }
                    scored++;
                    if (tokenByteCount is not null) bytes += tokenByteCount(target);
                    row++;
                }
            }
            progress?.Invoke(w + 1, windows);
        }
        var model = new PerplexityResult(nll, scored, bytes, windows);
        var referencePpl = new PerplexityResult(refNll, scored, bytes, windows);
        KlResult? result = kl is null ? null : KlResult.From(kl, agree, referencePpl, refFile?.Header.TopK ?? 0, deltaP) with
        {
            DeltaPerplexity = (refFile is not null ? new PerplexityResult(nllAsStored, scored, bytes, windows) : model).Perplexity - referencePpl.Perplexity,
        };
        return (model, result);
    }

    private static void CheckFile(LogitsFileReader file, int vocab, int ctx, int stride, int bos, ReadOnlySpan<int> tokens, long positions)
    {
        var h = file.Header;
        if (h.VocabSize != vocab)
            throw new ArgumentException($"{file.Path} holds distributions over {h.VocabSize} tokens; this model's vocabulary has {vocab}. KL needs the same vocabulary.");
        if (h.Ctx != ctx || h.Stride != stride || h.Bos != bos)
            throw new ArgumentException($"{file.Path} was saved with --ctx {h.Ctx} --stride {h.Stride} (BOS {h.Bos}); this run uses --ctx {ctx} --stride {stride} (BOS {bos}). Use the file's settings.");
        if (h.TokensHash != LogitsFileHeader.HashTokens(tokens))
            throw new ArgumentException($"{file.Path} was saved from other text (or another tokenizer): its token stream's hash differs from this run's.");
        if (h.Positions != positions)
            throw new ArgumentException($"{file.Path} holds {h.Positions} positions; this run scores {positions}.");
    }
}
