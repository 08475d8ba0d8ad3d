using System.Diagnostics;
using BitNetSharp.Generation.Sampling;
using BitNetSharp.Generation.Speculative;
using BitNetSharp.Model;
using BitNetSharp.Monitoring;
using BitNetSharp.Tokenization;
using BitNetSharp.Threading;

namespace BitNetSharp.Generation;

/// <summary>Why a generation ended (OpenAI's finish_reason).</summary>
public enum FinishReason { None, Stop, Length, Cancelled }

/// <summary>One generated token: its id, the text it completes (empty while a UTF-8 character is still partial), and its log-probabilities.</summary>
public readonly record struct GeneratedToken(int Id, string Text, float LogProb, TokenLogProb[]? TopLogProbs, FinishReason Finish);

public sealed record GeneratorOptions
{
    /// <summary>Threads for the worker pool (≤ 0: physical cores).</summary>
    public int Threads { get; init; }

    /// <summary>KV-cache positions to allocate (≤ 0: the model's context length).</summary>
    public int ContextLength { get; init; }

    public KvCacheType KvType { get; init; } = KvCacheType.F16;

    /// <summary>KV-cache positions checked against the memory available when the cache is allocated (≤ 0: the whole
    /// context). The cache's pages commit as positions fill, so a run that knows it will use fewer (generate: the prompt
    /// and -n) is checked for those.</summary>
    public int MemoryCheckPositions { get; init; }

    /// <summary>Prompt tokens per forward call during prefill.</summary>
    public int PrefillChunk { get; init; } = 64;

    /// <summary>Measure the model's numerical health every N forward calls (0: only the always-on NaN/Inf check); see <see cref="TextGenerator.Health"/>.</summary>
    public int HealthSampleEvery { get; init; }

    /// <summary>Speculative decoding (null: off): a draft proposes tokens that one batched forward verifies.</summary>
    public SpeculativeOptions? Speculation { get; init; }
}

/// <summary>Timing of the last <see cref="TextGenerator.Generate"/> call.</summary>
public sealed record GenerationStats(int PromptTokens, int ReusedPromptTokens, double PromptSeconds, int GeneratedTokens, double GenerationSeconds,
    SpeculativeStats? Speculative = null)
{
    /// <summary>Of <see cref="PromptSeconds"/>, the time the runtime spent compiling code (all threads, at most the
    /// prompt's time): a process's first prompt compiles the forward pass, ~0.1 s, which on a short prompt is most of it
    /// (1 token read as 9.7 tok/s on a model that reads 5,000).</summary>
    public double PromptCompileSeconds { get; init; }

    public double PromptTokensPerSecond => PromptSeconds > 0 ? (PromptTokens - ReusedPromptTokens) / PromptSeconds : 0;
    public double GenerationTokensPerSecond => GenerationSeconds > 0 ? GeneratedTokens / GenerationSeconds : 0;
}

/// <summary>
/// One sequence's generation: chunked prefill, then one token per forward call, sampled and streamed as text.
/// The KV cache persists between calls and a new prompt that starts with the tokens already cached (a chat's
/// history) only prefills the rest. Buffers are allocated once here; the decode loop allocates nothing per
/// token except the yielded record and its text.
/// </summary>
public sealed partial class TextGenerator : IDisposable
{
    private readonly ModelWeights _weights;
    private readonly Transformer _engine;
    private readonly KvCache _cache;
    private readonly KvCache[] _caches;
    private readonly float[] _logits;
    private readonly BatchToken[] _batch;
    private readonly List<int> _cached = [];
    private readonly WorkerPool _pool;

    public TextGenerator(ModelWeights weights, BitNetTokenizer? tokenizer, GeneratorOptions? options = null)
    {
        options ??= new GeneratorOptions();
        _weights = weights;
        Tokenizer = tokenizer;
        var c = weights.Config;
        ContextLength = options.ContextLength > 0 ? Math.Min(options.ContextLength, c.ContextLength) : c.ContextLength;
        int chunk = Math.Clamp(options.PrefillChunk, 1, ContextLength);
        // Settings checked before the pool starts its threads; anything that throws after, frees what was built (the
        // pool's threads waited for work for the rest of the process: 7 threads per failed construction at -t 8).
        // A context of one position has nothing to verify a draft against; speculation never changes the output, so it
        // is left off (a run that worked without --speculate was refused with it, naming the prefill chunk).
        if (ContextLength < 2 && options.Speculation is { } unused)
        {
            unused.Validate();
            options = options with { Speculation = null };
        }
        if (options.Speculation is { } settings)
        {
            settings.Validate();
            if (chunk < 2) throw new ArgumentException($"Speculative decoding verifies several tokens per forward; the prefill chunk ({chunk}) must be at least 2.", nameof(options));
            if (settings.Source == DraftSource.Model)
                SpeculativeOptions.CheckSameVocabulary(c, tokenizer, settings.DraftModel!.Config,
                    settings.DraftTokenizer ?? DraftTokenizer(weights, settings.DraftModel, tokenizer));
        }
        Speculation = options.Speculation;
        _pool = new WorkerPool(options.Threads);
        try
        {
            _engine = new Transformer(weights, chunk, _pool);
            Health = new ModelHealthCollector(c, chunk) { SampleEvery = options.HealthSampleEvery };
            _engine.Health = Health;
            _cache = new KvCache(c.Layers, c.KvHeads, c.HeadDim, ContextLength, options.KvType, options.MemoryCheckPositions);
            _caches = [_cache];
            _logits = new float[(long)chunk * c.VocabSize];
            _batch = new BatchToken[chunk];
        }
        catch
        {
            _engine?.Dispose();
            Health?.Dispose();
            _cache?.Dispose();
            _pool.Dispose();
            throw;
        }
        if (options.Speculation is { } spec)
        {
            _p = []; // only a sampled draft model's p/q rule needs the row's distribution (point-mass drafts draw)
            if (spec.Source == DraftSource.Model)
            {
                _p = new float[c.VocabSize];
                var dw = spec.DraftModel!;
                try
                {
                    int draftContext = Math.Min(ContextLength, dw.Config.ContextLength);
                    _draftEngine = new Transformer(dw, chunk, _pool);
                    _draftCache = new KvCache(dw.Config.Layers, dw.Config.KvHeads, dw.Config.HeadDim, draftContext, options.KvType, options.MemoryCheckPositions);
                    _draftCaches = [_draftCache];
                    _draftLogits = new float[(long)chunk * c.VocabSize];
                    _q = new float[(long)SpeculativeOptions.MaxDraftTokens * c.VocabSize];
                }
                catch
                {
                    Dispose(); // the draft's engine and cache too, when built
                    throw;
                }
            }
        }
    }

    /// <summary>The speculative-decoding settings (null: plain decoding).</summary>
    public SpeculativeOptions? Speculation { get; }

    // Speculative decoding: the model's distribution at a verified position, the draft model's engine, cache
    // (holding _draftTokens) and logits, and the draft's distributions at the drafted positions.
    private readonly float[]? _p;
    private readonly Transformer? _draftEngine;
    private readonly KvCache? _draftCache;
    private readonly KvCache[]? _draftCaches;
    private readonly float[]? _draftLogits;
    private readonly float[]? _q;
    private readonly List<int> _draftTokens = [];

    /// <summary>Tokens the draft model's cache holds (tests).</summary>
    internal int DraftCachedTokens => _draftTokens.Count;

    public BitNetTokenizer? Tokenizer { get; }
    public ModelConfig Config => _weights.Config;
    public int ContextLength { get; }

    /// <summary>
    /// Token ids that end a generation besides the tokenizer's stop tokens (a chat template's turn openers, see
    /// <see cref="BitNetSharp.Tokenization.ChatTemplate.StopTokens"/>); ignored with ignoreStop like the others.
    /// </summary>
    public IReadOnlyList<int> StopTokenIds { get; set; } = [];

    internal bool IsStop(int token) => (Tokenizer is not null && Tokenizer.IsStopToken(token)) || (StopTokenIds.Count > 0 && StopTokenIds.Contains(token));
    public int Threads => _pool.ThreadCount;
    public GenerationStats? LastStats { get; private set; }

    /// <summary>
    /// The forward pass's health collector. Sampled steps are published with the statistics of the logits row they
    /// sample from (subscribe to <see cref="ModelHealthCollector.Published"/>); a row with NaN/Inf ends the generation
    /// with <see cref="NonFiniteLogitsException"/> naming where the values first appeared.
    /// </summary>
    public ModelHealthCollector Health { get; }

    /// <summary>
    /// The draft model's own tokenizer, to compare token by token with the target's (the size alone let a draft whose
    /// ids meant other tokens through); null when there is nothing to compare: no target tokenizer, a draft cut from
    /// the target's own file (--draft-layers), or a draft file without a readable vocabulary.
    /// </summary>
    private static BitNetTokenizer? DraftTokenizer(ModelWeights target, ModelWeights draft, BitNetTokenizer? tokenizer)
    {
        if (tokenizer is null || draft.Gguf is not { } file || ReferenceEquals(file, target.Gguf)) return null;
        try
        {
            return TokenizerLoader.FromGguf(file);
        }
        catch (Formats.ModelFormatException)
        {
            return null;
        }
    }

    /// <summary>Checks the row a token will be sampled from, adds it to a sampled step and publishes the step.</summary>
    private void Inspect(ReadOnlySpan<float> row, int rowIndex)
    {
        // The tokens only: ids past the tokenizer (a padded embedding's untrained rows) are never sampled, and their
        // logits widened the range so that a collapse of the real ones went unseen.
        if (Tokenizer is not null && Tokenizer.VocabularySize < row.Length) row = row[..Tokenizer.VocabularySize];
        int bad = LogitStats.CountNonFinite(row);
        if (bad > 0)
        {
            int origin = Health.NonFiniteOrigin(rowIndex);
            // The failing step's logits figures are NaN, as the server records them (the step published none: no
            // --log-logits line for it, and no logits line in --health when the first step failed).
            if (Health.Sampling) Health.AddLogits(new LogitStats(float.NaN, float.NaN, float.NaN, bad));
            Health.Publish();
            throw new NonFiniteLogitsException(bad, row.Length, origin);
        }
        if (Health.Sampling) Health.AddLogits(LogitStats.Compute(row));
        Health.Publish();
    }

    /// <summary>Forgets the cached prefix (a new conversation).</summary>
    public void Reset()
    {
        _cache.Clear();
        _cached.Clear();
        _draftCache?.Clear();
        _draftTokens.Clear();
    }

    /// <summary>
    /// Generates up to <paramref name="maxTokens"/> tokens after <paramref name="prompt"/>, stopping at a stop token
    /// (unless <paramref name="ignoreStop"/>). <paramref name="promptLogits"/>, when given, receives the logits of every
    /// prompt position (for comparing engines).
    /// </summary>
    public IEnumerable<GeneratedToken> Generate(IReadOnlyList<int> prompt, int maxTokens, SamplingParameters sampling,
        bool ignoreStop = false, List<float[]>? promptLogits = null, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        if (prompt.Count == 0) throw new ArgumentException("The prompt is empty: give at least one token (a BOS token will do).", nameof(prompt));
        ArgumentOutOfRangeException.ThrowIfNegative(maxTokens);
        // The last new token is never fed back, so n new tokens take n − 1 positions after the prompt (a prompt filling
        // the context with -n 1 was refused). long: -n 2147483647 wrapped and passed, then failed after the prefill.
        if ((long)prompt.Count + Math.Max(maxTokens, 1) - 1 > ContextLength)
            throw new ArgumentException(
                $"The prompt ({prompt.Count} tokens) plus up to {maxTokens} new tokens exceeds the context of {ContextLength} tokens; " +
                Advice(prompt.Count, maxTokens));
        int vocab = Config.VocabSize;
        foreach (int id in prompt)
            if ((uint)id >= (uint)vocab)
                throw new ArgumentOutOfRangeException(nameof(prompt), id, $"Token id {id} is outside the vocabulary of {vocab} tokens.");
        sampling.Validate(vocab);
        return Run(prompt, maxTokens, sampling, ignoreStop, promptLogits, cancellation);
    }

    /// <summary>
    /// What to change when a prompt and <paramref name="maxTokens"/> do not fit: only fixes that can work (it advised
    /// lowering -n for a prompt longer than the context alone, and a larger --ctx the model's context could not give).
    /// </summary>
    private string Advice(int promptTokens, int maxTokens)
    {
        int model = Config.ContextLength;
        if (promptTokens > ContextLength)
            return "the prompt alone is longer; shorten it" + (ContextLength < model
                ? promptTokens <= model ? $", or raise --ctx (this model allows up to {model})." : $" (even the model's whole context, {model} tokens, is too short for it)."
                : " (this is the model's whole context).");
        int fit = ContextLength - promptTokens + 1;
        long needed = (long)promptTokens + maxTokens - 1;
        return $"at most {fit} new token{(fit == 1 ? "" : "s")} fit{(fit == 1 ? "s" : "")} after this prompt; lower -n or shorten the prompt" + (ContextLength < model
            ? needed <= model ? $", or raise --ctx to {needed} or more (this model allows up to {model})." : $" (even the model's whole context, {model} tokens, is too short for both)."
            : " (this is the model's whole context).");
    }

    private IEnumerable<GeneratedToken> Run(IReadOnlyList<int> prompt, int maxTokens, SamplingParameters sampling, bool ignoreStop,
        List<float[]>? promptLogits, CancellationToken cancellation)
    {
        int vocab = Config.VocabSize;
        var sw = Stopwatch.StartNew();
        var compiled = System.Runtime.JitInfo.GetCompilationTime(currentThread: false);

        // Reuse the cached prefix; at least the last prompt token is run again to get its logits.
        int reuse = 0;
        int limit = Math.Min(_cached.Count, prompt.Count - 1);
        if (promptLogits is null)
            while (reuse < limit && _cached[reuse] == prompt[reuse]) reuse++;
        _cache.Truncate(reuse);
        _cached.RemoveRange(reuse, _cached.Count - reuse);

        var last = new float[vocab];
        for (int start = reuse; start < prompt.Count;)
        {
            // Cancelled while the prompt is read: the same final Cancelled token as during decoding (it threw, and the
            // chat command's Ctrl-C ended the program instead of the answer). The cache keeps the chunks already run.
            if (cancellation.IsCancellationRequested)
            {
                LastStats = new GenerationStats(start, reuse, sw.Elapsed.TotalSeconds, 0, 0);
                yield return new GeneratedToken(-1, "", float.NaN, null, FinishReason.Cancelled);
                yield break;
            }
            int n = Math.Min(_batch.Length, prompt.Count - start);
            int wanted = 0;
            for (int i = 0; i < n; i++)
            {
                bool want = promptLogits is not null || start + i == prompt.Count - 1;
                _batch[i] = new BatchToken(prompt[start + i], 0, start + i, want);
                if (want) wanted++;
            }
            _engine.Forward(_batch.AsSpan(0, n), _caches, _logits);
            for (int i = 0; i < n; i++) _cached.Add(prompt[start + i]);
            if (promptLogits is not null)
                for (int r = 0; r < wanted; r++) promptLogits.Add(_logits.AsSpan(r * vocab, vocab).ToArray());
            start += n;
            if (wanted == 0)
            {
                Health.Publish(); // a chunk before the last: no logits to check
                continue;
            }
            Inspect(_logits.AsSpan((wanted - 1) * vocab, vocab), wanted - 1);
            _logits.AsSpan((wanted - 1) * vocab, vocab).CopyTo(last);
        }
        double promptSeconds = sw.Elapsed.TotalSeconds;
        double promptCompile = Math.Min(promptSeconds, (System.Runtime.JitInfo.GetCompilationTime(currentThread: false) - compiled).TotalSeconds);
        sw.Restart();

        var sampler = new Sampler(sampling, vocab);
        // The generated ids continue the prompt: SentencePiece's leading space is stripped only at the start of text
        // (no prompt, or a prompt ending in a control token such as BOS); "Once upon a" + "▁time" printed "atime".
        var detok = Tokenizer is null ? null : new StreamingDetokenizer(Tokenizer, includeSpecial: false,
            atTextStart: StreamingDetokenizer.StartsText(Tokenizer, prompt));
        var history = new List<int>(prompt.Count + maxTokens);
        history.AddRange(prompt);
        int generated = 0;
        // maxTokens 0 yields nothing, as plain decoding does: the speculative run samples its first token before any
        // length check, never met Generated == 0 again, and ran to the end of the context.
        if (Speculation is not null && maxTokens > 0)
        {
            var spec = new SpeculativeRun(this, sampling, sampler, detok, history, prompt.Count, maxTokens, ignoreStop, cancellation);
            try
            {
                foreach (var t in spec.Run(last)) yield return t;
            }
            finally
            {
                LastStats = new GenerationStats(prompt.Count, reuse, promptSeconds, spec.Generated, sw.Elapsed.TotalSeconds, spec.Stats) { PromptCompileSeconds = promptCompile };
            }
            yield break;
        }
        try
        {
            while (generated < maxTokens)
            {
                if (cancellation.IsCancellationRequested)
                {
                    yield return new GeneratedToken(-1, detok?.Flush() ?? "", float.NaN, null, FinishReason.Cancelled);
                    yield break;
                }
                // Ids past the tokenizer (a padded embedding) cannot be detokenized: never sample them.
                if (Tokenizer is not null && Tokenizer.VocabularySize < vocab) last.AsSpan(Tokenizer.VocabularySize).Fill(float.NegativeInfinity);
                int token = sampler.Sample(last, System.Runtime.InteropServices.CollectionsMarshal.AsSpan(history), prompt.Count);
                generated++;
                bool stop = !ignoreStop && IsStop(token);
                TokenLogProb[]? top = sampling.LogProbs is > 0 ? sampler.TopLogProbs.ToArray() : null;
                if (stop)
                {
                    yield return new GeneratedToken(token, detok?.Flush() ?? "", sampler.ChosenLogProb, top, FinishReason.Stop);
                    yield break;
                }
                string text = detok?.Append(token) ?? "";
                if (generated == maxTokens)
                {
                    text += detok?.Flush() ?? "";
                    yield return new GeneratedToken(token, text, sampler.ChosenLogProb, top, FinishReason.Length);
                    yield break;
                }
                yield return new GeneratedToken(token, text, sampler.ChosenLogProb, top, FinishReason.None);

                history.Add(token);
                _batch[0] = new BatchToken(token, 0, _cached.Count, true);
                _engine.Forward(_batch.AsSpan(0, 1), _caches, _logits);
                _cached.Add(token);
                Inspect(_logits.AsSpan(0, vocab), 0);
                _logits.AsSpan(0, vocab).CopyTo(last);
            }
        }
        finally
        {
            LastStats = new GenerationStats(prompt.Count, reuse, promptSeconds, generated, sw.Elapsed.TotalSeconds) { PromptCompileSeconds = promptCompile };
        }
    }

    public void Dispose()
    {
        _draftEngine?.Dispose();
        _draftCache?.Dispose();
        _engine.Dispose();
        Health.Dispose();
        _cache.Dispose();
        _pool.Dispose();
    }
}
