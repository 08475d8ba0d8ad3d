using System.Runtime.InteropServices;
using System.Runtime.CompilerServices;
using BitNetSharp.Kernels.FloatOps;

namespace BitNetSharp.Generation.Sampling;

/// <summary>
/// Picks one sequence's tokens. Create one per sequence: it owns its PRNG and every scratch buffer, sized once
/// for the vocabulary, so <see cref="Sample"/> allocates nothing.
/// <para>
/// Order (llama.cpp's default chain): logit bias → repetition, then frequency and presence penalties over the
/// last <see cref="SamplingParameters.PenaltyLastN"/> history tokens → (temperature 0: argmax, done) → top-k →
/// typical → top-p → min-p → temperature → softmax → draw. The filters therefore see the distribution at
/// temperature 1, and temperature only reshapes what survives them. Every filter keeps at least one token.
/// </para>
/// <para>
/// Log-probabilities (<see cref="SamplingParameters.LogProbs"/>) are log-softmax of the raw logits given to
/// <see cref="Sample"/>, before bias, penalties, filters and temperature: they describe the model, not the
/// sampler, as the OpenAI API and llama.cpp's server report them by default.
/// </para>
/// </summary>
public sealed class Sampler
{
    private const int NucleusFirstGuess = 64;
    internal const int Buckets = 4096;

    private readonly SamplingParameters _p;
    private readonly (int Token, float Bias)[] _bias;
    private readonly float[] _logits;   // the processed logits, by id
    private readonly int[] _ids;        // candidates
    private readonly float[] _cand;     // their logits
    private readonly int[] _tmpIds;
    private readonly float[] _tmpLogits;
    private readonly float[] _probs;
    private readonly int[] _counts;     // per-token occurrences in the penalty window; all zero between calls
    private readonly double[] _bucketMass;
    private readonly TokenLogProb[] _top;
    private readonly int[] _topIds;
    private readonly float[] _topLogits;
    private int _topCount;
    private int _candidateCount;
    private Xoshiro256StarStar _rng;

    /// <param name="buffers">
    /// Scratch arrays to use instead of allocating them (seven of the vocabulary's size: 3.6 MB on the large-object heap
    /// at 128k tokens, per sequence); one sampler at a time may use them, as a KV-cache slot hosts one sequence at a time.
    /// </param>
    public Sampler(SamplingParameters parameters, int vocabSize, SamplerBuffers? buffers = null)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        parameters.Validate(vocabSize);
        if (buffers is not null && buffers.VocabSize != vocabSize)
            throw new ArgumentException($"The buffers are sized for {buffers.VocabSize} tokens; the vocabulary has {vocabSize}.", nameof(buffers));
        _p = parameters;
        VocabSize = vocabSize;
        Seed = parameters.Seed ?? (ulong)Random.Shared.NextInt64();
        _rng = new Xoshiro256StarStar(Seed);
        _bias = parameters.LogitBias?.Select(kv => (kv.Key, kv.Value)).OrderBy(b => b.Key).ToArray() ?? [];
        buffers ??= new SamplerBuffers(vocabSize);
        _logits = buffers.Logits;
        _ids = buffers.Ids;
        _cand = buffers.Candidates;
        _tmpIds = buffers.TmpIds;
        _tmpLogits = buffers.TmpLogits;
        _probs = buffers.Probs;
        _counts = buffers.Counts;
        _bucketMass = buffers.BucketMass;
        int n = parameters.LogProbs ?? 0;
        _top = new TokenLogProb[n];
        _topIds = new int[n];
        _topLogits = new float[n];
    }

    public int VocabSize { get; }

    public SamplingParameters Parameters => _p;

    /// <summary>The seed in use (the chosen one when the parameters gave none), to replay a sequence.</summary>
    public ulong Seed { get; }

    /// <summary>The chosen token's log-probability from the last <see cref="Sample"/> (NaN when LogProbs is null).</summary>
    public float ChosenLogProb { get; private set; } = float.NaN;

    /// <summary>The most likely tokens and their log-probabilities from the last <see cref="Sample"/>, best first.</summary>
    public ReadOnlySpan<TokenLogProb> TopLogProbs => _top.AsSpan(0, _topCount);

    /// <summary>The logits after bias and penalties, from the last call (for tests).</summary>
    internal ReadOnlySpan<float> ProcessedLogits => _logits;

    /// <summary>The ids that survived the filters in the last non-greedy call, in the order drawn from (for tests).</summary>
    internal ReadOnlySpan<int> Candidates => _ids.AsSpan(0, _candidateCount);

    /// <summary>
    /// The next token for a sequence whose last logits row is <paramref name="logits"/> and whose tokens so far are
    /// <paramref name="history"/>, the first <paramref name="promptLength"/> of them its prompt: the repetition penalty
    /// counts them (llama.cpp, HF, vLLM), the presence and frequency penalties only where
    /// <see cref="SamplingParameters.PenalizePrompt"/> says so.
    /// </summary>
    /// <exception cref="InvalidOperationException">Every token's logit is −∞ after bias and penalties.</exception>
    public int Sample(ReadOnlySpan<float> logits, ReadOnlySpan<int> history, int promptLength = 0)
    {
        var work = Process(logits, history, promptLength);
        _candidateCount = 0;
        int chosen = _p.Temperature == 0f ? ArgMax.Of(work) : SampleFromFiltered(work);
        if (_p.LogProbs is not null) ComputeLogProbs(logits, chosen);
        return chosen;
    }

    /// <summary>
    /// The distribution <see cref="Sample"/> draws from for these logits and history, by token id, into
    /// <paramref name="probs"/>: after bias, penalties, filters and temperature (zero for every filtered token; at
    /// temperature 0 all mass on the argmax). Speculative decoding's acceptance rule needs it whole. Draws nothing.
    /// </summary>
    public void Distribution(ReadOnlySpan<float> logits, ReadOnlySpan<int> history, Span<float> probs, int promptLength = 0)
    {
        if (probs.Length != VocabSize)
            throw new ArgumentException($"The probability row has {probs.Length} values; the vocabulary has {VocabSize} tokens.", nameof(probs));
        var work = Process(logits, history, promptLength);
        _candidateCount = 0;
        probs.Clear();
        if (_p.Temperature == 0f)
        {
            probs[ArgMax.Of(work)] = 1f;
            return;
        }
        int n = FilteredProbabilities(work);
        for (int i = 0; i < n; i++) probs[_ids[i]] = _probs[i];
    }

    /// <summary>A uniform draw in [0, 1) from this sampler's PRNG (speculative decoding's acceptance test).</summary>
    public double NextUniform() => _rng.NextDouble();

    /// <summary>Draws a token id from <paramref name="weights"/> (by id, non-negative, not necessarily normalized) with this sampler's PRNG.</summary>
    /// <exception cref="InvalidOperationException">Every weight is zero.</exception>
    public int DrawFrom(ReadOnlySpan<float> weights)
    {
        if (weights.Length != VocabSize)
            throw new ArgumentException($"The weight row has {weights.Length} values; the vocabulary has {VocabSize} tokens.", nameof(weights));
        double total = 0;
        foreach (float w in weights) total += w;
        if (!(total > 0)) throw new InvalidOperationException("Every token has probability zero, so none can be drawn.");
        return Draw(weights);
    }

    /// <summary>Sets <see cref="ChosenLogProb"/> and <see cref="TopLogProbs"/> for <paramref name="chosen"/> under the raw logits (when LogProbs is set).</summary>
    public void SetLogProbs(ReadOnlySpan<float> logits, int chosen)
    {
        if (_p.LogProbs is not null) ComputeLogProbs(logits, chosen);
    }

    /// <summary>Copies the logits and applies bias and penalties; checks that some token can still be chosen.</summary>
    private Span<float> Process(ReadOnlySpan<float> logits, ReadOnlySpan<int> history, int promptLength)
    {
        if (logits.Length != VocabSize)
            throw new ArgumentException($"The logits row has {logits.Length} values; the vocabulary has {VocabSize} tokens.", nameof(logits));
        var work = _logits.AsSpan();
        logits.CopyTo(work);
        foreach (var (token, bias) in _bias) work[token] += bias;
        ApplyPenalties(work, history, promptLength);

        float max = ArgMax.Max(work);
        if (float.IsNegativeInfinity(max))
            throw new InvalidOperationException("Every token has a logit of −∞ after logit_bias and the penalties, so none can be sampled.");
        if (!float.IsFinite(max))
            throw new ArgumentException($"The logits contain {max}: the forward pass produced an invalid value.", nameof(logits));
        return work;
    }

    /// <summary>
    /// llama.cpp's penalties over the last <see cref="SamplingParameters.PenaltyLastN"/> history tokens: a positive logit
    /// is divided by the repetition penalty, a non-positive one multiplied; then count·frequency + presence is
    /// subtracted. Each token is penalized once however often it occurs. The repetition penalty sees the prompt too
    /// (llama.cpp, HF and vLLM alike); presence and frequency skip its first <paramref name="promptLength"/> tokens
    /// unless <see cref="SamplingParameters.PenalizePrompt"/> (OpenAI counts only the tokens sampled so far).
    /// </summary>
    private void ApplyPenalties(Span<float> work, ReadOnlySpan<int> history, int promptLength)
    {
        if (_p.RepetitionPenalty == 1f && _p.PresencePenalty == 0f && _p.FrequencyPenalty == 0f) return;
        int length = history.Length;
        int start = _p.PenaltyLastN < 0 ? 0 : length - Math.Min(_p.PenaltyLastN, length);
        int counted = _p.PenalizePrompt ? start : Math.Max(start, Math.Min(Math.Max(promptLength, 0), length));
        for (int i = start; i < length; i++)
        {
            int token = history[i];
            if ((uint)token >= (uint)VocabSize)
            {
                _counts.AsSpan().Clear();
                throw new ArgumentOutOfRangeException(nameof(history), token, $"History holds token {token}, outside the vocabulary of {VocabSize}.");
            }
            if (i >= counted) _counts[token]++;
        }
        bool repetition = _p.RepetitionPenalty != 1f;
        // -1 marks a token already penalized; every mark is cleared by the last pass.
        for (int i = repetition ? start : counted; i < length; i++)
        {
            int token = history[i];
            int count = _counts[token];
            if (count < 0) continue;
            _counts[token] = -1;
            float logit = work[token];
            if (repetition) logit = logit <= 0f ? logit * _p.RepetitionPenalty : logit / _p.RepetitionPenalty;
            if (count > 0) logit -= count * _p.FrequencyPenalty + _p.PresencePenalty;
            work[token] = logit;
        }
        for (int i = start; i < length; i++) _counts[history[i]] = 0;
    }

    private int SampleFromFiltered(ReadOnlySpan<float> work)
    {
        int n = FilteredProbabilities(work);
        return _ids[Draw(_probs.AsSpan(0, n))];
    }

    /// <summary>Runs the filters and temperature: the survivors' ids in _ids[..n] and their probabilities in _probs[..n].</summary>
    private int FilteredProbabilities(ReadOnlySpan<float> work)
    {
        int n;
        bool sorted;
        bool topK = _p.TopK > 0 && _p.TopK < VocabSize;
        if (topK)
        {
            n = TopKSelection.Select(work, [], _p.TopK, _ids, _cand);
            sorted = true;
        }
        else
        {
            n = VocabSize;
            for (int i = 0; i < n; i++) _ids[i] = i;
            work.CopyTo(_cand);
            sorted = false;
        }

        if (_p.TypicalP < 1f)
        {
            n = Typical(n);
            sorted = false;
        }
        if (_p.TopP < 1f)
        {
            // In "whichever keeps fewer" mode the nucleus is measured on the whole distribution, not the k survivors.
            bool whole = _p.TopKOrTopPWhicheverKeepsFewer && topK;
            n = TopP(n, ref sorted, whole ? work : _cand.AsSpan(0, n));
        }
        if (_p.MinP > 0f) n = MinP(n);
        _candidateCount = n;

        // (l − max)/T rather than l/T: a tiny temperature sends the others to −∞, never the top to +∞.
        var probs = _probs.AsSpan(0, n);
        float temperature = _p.Temperature;
        float top = ArgMax.Max(_cand.AsSpan(0, n));
        for (int i = 0; i < n; i++) probs[i] = (_cand[i] - top) / temperature;
        Softmax.InPlace(probs);
        return n;
    }

    /// <summary>Inverse-CDF draw; the first index whose running sum passes u·Σp (so zero-probability entries never win).</summary>
    private int Draw(ReadOnlySpan<float> probs)
    {
        double total = 0;
        foreach (float p in probs) total += p;
        double target = _rng.NextDouble() * total;
        double cumulative = 0;
        int last = 0;
        for (int i = 0; i < probs.Length; i++)
        {
            if (probs[i] <= 0f) continue;
            last = i;
            cumulative += probs[i];
            if (cumulative > target) return i;
        }
        return last;
    }

    /// <summary>Σ e^(x − max) and max over <paramref name="logits"/>, without touching them.</summary>
    private (float Max, double Sum) Normalizer(ReadOnlySpan<float> logits)
    {
        float max = ArgMax.Max(logits);
        var scratch = _probs.AsSpan(0, logits.Length);
        logits.CopyTo(scratch);
        double sum;
        unsafe
        {
            fixed (float* p = scratch) sum = Softmax.ExpAndSum<WidestVector>(p, scratch.Length, max);
        }
        return (max, sum);
    }

    /// <summary>
    /// Keeps the most likely candidates until their probability (relative to <paramref name="distribution"/>) reaches
    /// top_p. Unsorted candidates are never sorted whole: the best 64 are selected first (enough for a peaked
    /// distribution); if the nucleus is larger, a histogram of the logits finds the bucket where the mass crosses p,
    /// everything above it is kept unsorted, and only that bucket is sorted.
    /// </summary>
    private int TopP(int n, ref bool sorted, ReadOnlySpan<float> distribution)
    {
        var (max, sum) = Normalizer(distribution);
        double p = _p.TopP;
        if (sorted) return NucleusSize(_cand.AsSpan(0, n), max, sum, p);
        int count = TopKSelection.Select(_cand.AsSpan(0, n), _ids.AsSpan(0, n), Math.Min(n, NucleusFirstGuess), _tmpIds, _tmpLogits);
        int keep = NucleusSize(_tmpLogits.AsSpan(0, count), max, sum, p);
        if (keep < count || count == n)
        {
            _tmpIds.AsSpan(0, keep).CopyTo(_ids);
            _tmpLogits.AsSpan(0, keep).CopyTo(_cand);
            sorted = true;
            return keep;
        }
        // When the candidates are the distribution, _probs[i] still holds e^(cand_i − max) from Normalizer. In "whichever
        // keeps fewer" mode the distribution is the whole vocabulary in id order while the candidates are the top-k
        // survivors (reordered by typical-p): _probs[i] was token i's, not candidate i's.
        if (distribution.Length != n || !Unsafe.AreSame(ref MemoryMarshal.GetReference(distribution), ref _cand[0]))
            for (int i = 0; i < n; i++) _probs[i] = MathF.Exp(_cand[i] - max);
        return BucketedNucleus(n, max, sum, p);
    }

    private int BucketedNucleus(int n, float max, double sum, double p)
    {
        float min = max;
        for (int i = 0; i < n; i++)
            if (_cand[i] < min && !float.IsNegativeInfinity(_cand[i])) min = _cand[i];
        double scale = max > min ? (Buckets - 1) / ((double)max - min) : 0;
        var mass = _bucketMass.AsSpan();
        mass.Clear();
        for (int i = 0; i < n; i++) mass[Bucket(_cand[i], max, scale)] += _probs[i];

        double target = p * sum, above = 0;
        int boundary = Buckets - 1;
        for (int b = 0; b < Buckets; b++)
        {
            if (above + mass[b] >= target)
            {
                boundary = b;
                break;
            }
            above += mass[b];
        }

        int kept = 0, inBoundary = 0;
        for (int i = 0; i < n; i++)
        {
            int b = Bucket(_cand[i], max, scale);
            if (b < boundary)
            {
                _ids[kept] = _ids[i];
                _cand[kept++] = _cand[i];
            }
            else if (b == boundary)
            {
                _tmpIds[inBoundary] = _ids[i];
                _tmpLogits[inBoundary++] = _cand[i];
            }
        }
        int sortedCount = TopKSelection.Select(_tmpLogits.AsSpan(0, inBoundary), _tmpIds.AsSpan(0, inBoundary), inBoundary,
            _ids.AsSpan(kept), _cand.AsSpan(kept));
        double cumulative = above;
        for (int j = 0; j < sortedCount; j++)
        {
            cumulative += MathF.Exp(_cand[kept + j] - max);
            if (cumulative >= target) return kept + j + 1;
        }
        return kept + sortedCount;
    }

    /// <summary>Bucket 0 holds the largest logits; −∞ goes to the last.</summary>
    private static int Bucket(float logit, float max, double scale)
    {
        double b = ((double)max - logit) * scale;
        return b < Buckets - 1 ? (int)b : Buckets - 1;
    }

    /// <summary>Smallest prefix of best-first logits whose probability mass reaches p (all of them if it never does).</summary>
    private static int NucleusSize(ReadOnlySpan<float> bestFirst, float max, double sum, double p)
    {
        double cumulative = 0;
        for (int i = 0; i < bestFirst.Length; i++)
        {
            cumulative += Math.Exp(bestFirst[i] - max) / sum;
            if (cumulative >= p) return i + 1;
        }
        return bestFirst.Length;
    }

    /// <summary>p_i ≥ min_p · p_max, i.e. logit_i ≥ max + ln(min_p); keeps order.</summary>
    private int MinP(int n)
    {
        float max = ArgMax.Max(_cand.AsSpan(0, n));
        float threshold = max + MathF.Log(_p.MinP);
        int kept = 0;
        for (int i = 0; i < n; i++)
        {
            if (_cand[i] < threshold) continue;
            _cand[kept] = _cand[i];
            _ids[kept++] = _ids[i];
        }
        return kept;
    }

    /// <summary>
    /// Locally typical sampling: H = −Σ p log p; candidates ordered by |−log p − H| and kept until their mass
    /// exceeds typical_p (llama.cpp's rule). Sorts the candidate set, so it is O(n log n) without a top-k before it.
    /// </summary>
    private int Typical(int n)
    {
        var logits = _cand.AsSpan(0, n);
        var (max, sum) = Normalizer(logits);
        double logSum = Math.Log(sum);
        double entropy = 0;
        for (int i = 0; i < n; i++)
        {
            double logP = logits[i] - max - logSum;
            if (!double.IsNegativeInfinity(logP)) entropy -= Math.Exp(logP) * logP;
        }
        var keys = _probs.AsSpan(0, n);
        var order = _tmpIds.AsSpan(0, n);
        for (int i = 0; i < n; i++)
        {
            double logP = logits[i] - max - logSum;
            keys[i] = double.IsNegativeInfinity(logP) ? float.PositiveInfinity : (float)Math.Abs(-logP - entropy);
            order[i] = i;
        }
        keys.Sort(order);
        double cumulative = 0;
        int keep = n;
        for (int i = 0; i < n; i++)
        {
            cumulative += Math.Exp(logits[order[i]] - max - logSum);
            if (cumulative > _p.TypicalP)
            {
                keep = i + 1;
                break;
            }
        }
        // Gather the kept candidates in typical order (scratch first: the source is being overwritten).
        var ids = _ids.AsSpan(0, n);
        for (int i = 0; i < keep; i++)
        {
            _tmpLogits[i] = logits[order[i]];
            order[i] = ids[order[i]];
        }
        order[..keep].CopyTo(_ids);
        _tmpLogits.AsSpan(0, keep).CopyTo(_cand);
        return keep;
    }

    private void ComputeLogProbs(ReadOnlySpan<float> raw, int chosen)
    {
        var (max, sum) = Normalizer(raw);
        float logZ = max + (float)Math.Log(sum);
        ChosenLogProb = raw[chosen] - logZ;
        _topCount = TopKSelection.Select(raw, [], _top.Length, _topIds, _topLogits);
        for (int i = 0; i < _topCount; i++) _top[i] = new TokenLogProb(_topIds[i], _topLogits[i] - logZ);
    }
}

/// <summary>
/// A sampler's vocabulary-sized scratch arrays, to reuse from one sequence to the next (the batch scheduler keeps one set
/// per KV-cache slot): a new set per request allocated seven arrays of the vocabulary's size on the large-object heap,
/// which a busy server churned into full garbage collections. The penalty counts are all zero between calls.
/// </summary>
public sealed class SamplerBuffers
{
    public SamplerBuffers(int vocabSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(vocabSize);
        VocabSize = vocabSize;
        Logits = new float[vocabSize];
        Ids = new int[vocabSize];
        Candidates = new float[vocabSize];
        TmpIds = new int[vocabSize];
        TmpLogits = new float[vocabSize];
        Probs = new float[vocabSize];
        Counts = new int[vocabSize];
        BucketMass = new double[Sampler.Buckets];
    }

    public int VocabSize { get; }

    internal float[] Logits { get; }
    internal int[] Ids { get; }
    internal float[] Candidates { get; }
    internal int[] TmpIds { get; }
    internal float[] TmpLogits { get; }
    internal float[] Probs { get; }
    internal int[] Counts { get; }
    internal double[] BucketMass { get; }
}
