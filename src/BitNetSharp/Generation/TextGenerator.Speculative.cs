using System.Runtime.InteropServices;
using BitNetSharp.Generation.Sampling;
using BitNetSharp.Generation.Speculative;
using BitNetSharp.Model;
using BitNetSharp.Monitoring;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Generation;

public sealed partial class TextGenerator
{
    /// <summary>
    /// One speculative generation after prefill. Each step feeds the pending token (sampled, not yet in the cache)
    /// and up to k draft tokens in one forward with logits at every position; row i is the model's distribution
    /// after draft i. Drafts are accepted left to right by <see cref="SpeculativeAcceptance"/>; the first rejection
    /// draws the replacement, and if all k pass, the last row gives a bonus token. Either becomes the next pending
    /// token, and the cache forgets the rejected drafts' positions.
    /// </summary>
    private sealed class SpeculativeRun(TextGenerator g, SamplingParameters sampling, Sampler sampler, StreamingDetokenizer? detok,
        List<int> history, int promptLength, int maxTokens, bool ignoreStop, CancellationToken cancellation)
    {

        private readonly int[] _drafts = new int[SpeculativeOptions.MaxDraftTokens];
        private readonly Sampler? _draftSampler = g._draftEngine is null ? null
            // The draft's stream must not overlap the target's: the xoshiro state is four SplitMix64 outputs, which step by
            // 0x9E3779B97F4A7C15, so a seed offset by that constant shared three of the four state words with the target's.
            // A mixed seed, not an offset one: with seed + C, a request seeded s + C drew its tokens from seed s's draft stream.
            : new Sampler(sampling with { Seed = SamplingParameters.StreamSeed(sampler.Seed ^ 0x5851F42D4C957F2DUL, 1), LogProbs = null }, g.Config.VocabSize);

        public int Generated;
        public SpeculativeStats Stats;

        /// <summary>Whether draft tokens were drawn from a distribution q (a sampling draft model) rather than chosen deterministically.</summary>
        private bool SampledDraft => _draftSampler is not null && sampling.Temperature != 0f;

        public IEnumerable<GeneratedToken> Run(float[] last)
        {
            int vocab = g.Config.VocabSize;
            var spec = g.Speculation!;
            MaskPadding(last);
            int pending = sampler.Sample(last, CollectionsMarshal.AsSpan(history), promptLength);
            bool pendingFromStep = false; // the first token comes from the prompt's forward, not from a verification step
            while (true)
            {
                if (cancellation.IsCancellationRequested)
                {
                    yield return new GeneratedToken(-1, detok?.Flush() ?? "", float.NaN, null, FinishReason.Cancelled);
                    yield break;
                }
                // Counted when emitted: a step's replacement or bonus token that a cancellation kept back is not.
                if (pendingFromStep) Stats = Stats with { Emitted = Stats.Emitted + 1 };
                var token = Emit(pending, out bool end);
                yield return token;
                if (end) yield break;
                history.Add(pending);

                int position = g._cached.Count; // the pending token's
                int k = Math.Min(spec.DraftTokens, maxTokens - Generated - 1);
                k = Math.Min(k, Math.Min(g._batch.Length - 1, g.ContextLength - 1 - position));
                k = k > 0 ? Propose(k) : 0;

                g._batch[0] = new BatchToken(pending, 0, position, true);
                for (int i = 0; i < k; i++) g._batch[i + 1] = new BatchToken(_drafts[i], 0, position + 1 + i, true);
                g._engine.Forward(g._batch.AsSpan(0, k + 1), g._caches, g._logits);
                g._cached.Add(pending);
                for (int i = 0; i < k; i++) g._cached.Add(_drafts[i]);
                Stats = Stats with { Steps = Stats.Steps + 1 };

                // Each row is checked (and the first one's statistics taken) when it is used: a row after a rejected
                // draft is conditioned on a token plain decoding never feeds, and its NaN (a draft that overflowed
                // the model) ended a generation that plain decoding finishes. The health statistics came from the
                // last row, not from the row the step's first token was sampled from.
                int accepted = 0, next = -1;
                for (int i = 0; i < k; i++)
                {
                    var row = g._logits.AsSpan(i * vocab, vocab);
                    g.Inspect(row, i); // throws on NaN/Inf, naming the origin
                    // Counted as verified only when reached: drafts after a stop in an accepted one were never verified.
                    Stats = Stats with { Drafted = Stats.Drafted + 1 };
                    MaskPadding(row);
                    int draft = _drafts[i];
                    int chosen;
                    bool ok;
                    if (SampledDraft)
                    {
                        sampler.Distribution(row, CollectionsMarshal.AsSpan(history), g._p, promptLength);
                        ok = SpeculativeAcceptance.AcceptSampled(sampler, g._p, g._q.AsSpan(i * vocab, vocab), draft, out chosen);
                        sampler.SetLogProbs(row, chosen);
                    }
                    else
                    {
                        // A point-mass draft (n-gram, greedy draft model): the row sampled as plain decoding samples it,
                        // the draft accepted iff it is that token (SpeculativeAcceptance's rule as a draw): a seed
                        // gives plain decoding's tokens.
                        chosen = sampler.Sample(row, CollectionsMarshal.AsSpan(history), promptLength);
                        ok = chosen == draft;
                    }
                    if (!ok)
                    {
                        next = chosen;
                        break;
                    }
                    accepted++;
                    if (cancellation.IsCancellationRequested)
                    {
                        // As plain decoding: nothing past the cancellation (all of a step's accepted drafts came out).
                        KeepCache(position + accepted);
                        yield return new GeneratedToken(-1, detok?.Flush() ?? "", float.NaN, null, FinishReason.Cancelled);
                        yield break;
                    }
                    Stats = Stats with { Accepted = Stats.Accepted + 1, Emitted = Stats.Emitted + 1 };
                    token = Emit(draft, out end);
                    yield return token;
                    if (end) yield break;
                    history.Add(draft);
                }
                if (next < 0)
                {
                    var row = g._logits.AsSpan(k * vocab, vocab);
                    g.Inspect(row, k);
                    MaskPadding(row);
                    next = sampler.Sample(row, CollectionsMarshal.AsSpan(history), promptLength);
                }
                KeepCache(position + 1 + accepted);
                pending = next;
                pendingFromStep = true;
            }
        }

        /// <summary>Drops the cached positions from <paramref name="keep"/> on (rejected or never-emitted drafts).</summary>
        private void KeepCache(int keep)
        {
            g._cache.Truncate(keep);
            g._cached.RemoveRange(keep, g._cached.Count - keep);
        }

        /// <summary>Counts and detokenizes one generated token; <paramref name="end"/> when it ends the generation.</summary>
        private GeneratedToken Emit(int token, out bool end)
        {
            Generated++;
            end = true;
            TokenLogProb[]? top = sampling.LogProbs is > 0 ? sampler.TopLogProbs.ToArray() : null;
            if (!ignoreStop && g.IsStop(token))
                return new GeneratedToken(token, detok?.Flush() ?? "", sampler.ChosenLogProb, top, FinishReason.Stop);
            string text = detok?.Append(token) ?? "";
            if (Generated == maxTokens)
                return new GeneratedToken(token, text + (detok?.Flush() ?? ""), sampler.ChosenLogProb, top, FinishReason.Length);
            end = false;
            return new GeneratedToken(token, text, sampler.ChosenLogProb, top, FinishReason.None);
        }

        /// <summary>Ids past the tokenizer (a padded embedding) cannot be detokenized: never sample them.</summary>
        private void MaskPadding(Span<float> row)
        {
            if (g.Tokenizer is { } t && t.VocabularySize < row.Length) row[t.VocabularySize..].Fill(float.NegativeInfinity);
        }

        /// <summary>Writes up to <paramref name="k"/> draft tokens continuing the history to _drafts; returns how many.</summary>
        private int Propose(int k)
        {
            var spec = g.Speculation!;
            if (spec.Source == DraftSource.NGram)
                return NGramDraft.Propose(CollectionsMarshal.AsSpan(history), spec.MaxNGram, spec.MinNGram, _drafts.AsSpan(0, k));
            return ProposeFromModel(k);
        }

        /// <summary>
        /// Runs the draft model ahead: its cache keeps the longest prefix it shares with the history, the rest of the
        /// history is fed (at least the last token, for its logits), then k tokens are drafted one forward each, each
        /// chosen from the draft's own sampling distribution q (kept in _q for the acceptance rule).
        /// </summary>
        private int ProposeFromModel(int k)
        {
            var cache = g._draftCache!;
            var engine = g._draftEngine!;
            var logits = g._draftLogits!;
            var cached = g._draftTokens;
            var drafter = _draftSampler!;
            int vocab = g.Config.VocabSize;
            int count = history.Count;
            k = Math.Min(k, cache.ContextLength - count);
            if (k <= 0) return 0;

            int common = 0, limit = Math.Min(cached.Count, count - 1);
            while (common < limit && cached[common] == history[common]) common++;
            cache.Truncate(common);
            cached.RemoveRange(common, cached.Count - common);
            var batch = g._batch;
            for (int start = common; start < count;)
            {
                // The draft reads the prompt here, in the first step, chunk by chunk: a Ctrl-C waited for all of it.
                // What it has read stays cached; the step goes on without drafts and the run sees the cancellation.
                if (cancellation.IsCancellationRequested) return 0;
                int n = Math.Min(batch.Length, count - start);
                for (int i = 0; i < n; i++) batch[i] = new BatchToken(history[start + i], 0, start + i, start + i == count - 1);
                engine.Forward(batch.AsSpan(0, n), g._draftCaches!, logits);
                for (int i = 0; i < n; i++) cached.Add(history[start + i]);
                start += n;
            }
            try
            {
                for (int i = 0; i < k; i++)
                {
                    var row = logits.AsSpan(0, vocab);
                    // A draft gone bad only costs speed: draft nothing more.
                    if (LogitStats.CountNonFinite(row) > 0) return i;
                    MaskPadding(row);
                    var q = g._q.AsSpan(i * vocab, vocab);
                    drafter.Distribution(row, CollectionsMarshal.AsSpan(history), q, promptLength);
                    int d = drafter.DrawFrom(q);
                    _drafts[i] = d;
                    history.Add(d); // the draft's penalties see its own drafts, as the model's will
                    if (i == k - 1) break;
                    batch[0] = new BatchToken(d, 0, count + i, true);
                    engine.Forward(batch.AsSpan(0, 1), g._draftCaches!, logits);
                    cached.Add(d);
                }
                return k;
            }
            finally
            {
                history.RemoveRange(count, history.Count - count);
            }
        }
    }
}
