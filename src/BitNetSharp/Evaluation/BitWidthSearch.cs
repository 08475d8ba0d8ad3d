using BitNetSharp.Model;
using BitNetSharp.Monitoring;
using BitNetSharp.Training;

namespace BitNetSharp.Evaluation;

/// <summary>One accepted step of the search: an input lowered by one width, and the mean KL the whole configuration then had.</summary>
public sealed record BitWidthStep(int Layer, BitLinearInput Input, int FromBits, int ToBits, double MeanKl, double Perplexity);

/// <param name="Start">The starting widths on the held-out windows, in double (<see cref="KlResult.Reference"/> is read back
/// from the reference's float log-probabilities: an unchanged model read 1e-8 apart from it).</param>
public sealed record BitWidthSearchResult(ActivationBits Bits, IReadOnlyList<BitWidthStep> Steps, KlResult Kl, PerplexityResult Model, int Evaluations, PerplexityResult Start);

/// <summary>
/// Greedy per-layer activation precision search: starting from the engine's widths (normally 8 everywhere), each
/// round accepts the cheapest one-step lowering (8 → 6 → 5 → 4 → 3 → 2) of a BitLinear input of a layer, by the mean
/// KL of the whole configuration from the starting one on held-out windows, while the KL stays within the budget (with
/// <c>lazy: false</c> every round measures every candidate; lazily, see below). An input whose step alone went over the budget is not tried again (lowering others
/// only adds error). Deterministic: fixed order, ties to the first candidate, exact integer kernels.
/// <para>Lazily (the default; <c>lazy: false</c> measures every candidate every round): on the same assumption, a
/// candidate's KL measured in an earlier round is a lower bound on its KL now, so each round re-measures candidates in
/// order of their last KL (ties to the first) and accepts the first whose fresh KL is still the smallest — the step the
/// full round would accept where the assumption holds, without measuring the rest. It does not always hold (errors of
/// two inputs can cancel, and a candidate's KL then falls), so the lazy path may differ from the full one; every step
/// it accepts is measured under the widths it joins and within the budget. The 4M fixture at a 0.05 budget: full 40
/// steps in 612 evaluations (KL 0.035), lazy 43 steps in 267 (KL 0.046). Every round measured every candidate: the
/// bundled model's default search took 1,652 evaluations (~15 minutes on two Zen 2 cores) for 71 steps.</para>
/// </summary>
public static class BitWidthSearch
{

    public static BitWidthSearchResult Run(Transformer engine, int[] tokens, int ctx, IReadOnlyList<int> windowStarts, int bosId, double klBudget,
        string scratchDirectory, Func<int, int>? tokenByteCount = null, int maxSteps = int.MaxValue, Action<string>? log = null,
        CancellationToken cancellation = default, bool lazy = true)
    {
        if (!(klBudget > 0) || !double.IsFinite(klBudget)) throw new ArgumentOutOfRangeException(nameof(klBudget), klBudget, "The KL budget must be a positive number of nats.");
        // No held-out positions: every KL read 0 and every step down to 2 bits was "within budget".
        if (windowStarts.Count == 0) throw new ArgumentException("The search needs at least one held-out window to measure the KL on.", nameof(windowStarts));
        var start = engine.ActivationBits;
        var c = engine.Config;
        // A hidden temporary in AtomicFile's form (.calibrate-reference.bnlg.PID.GUID.tmp): one a killed run left (263 MB on
        // 2B4T, under a visible name no later run removed) is deleted by the next search in the folder.
        // The writer's own temporary of that name (killed while the reference was written) is one level deeper.
        const string scratchName = "calibrate-reference.bnlg";
        BitNetSharp.Formats.AtomicFile.RemoveStaleTemporaries(scratchDirectory, scratchName);
        BitNetSharp.Formats.AtomicFile.RemoveStaleTemporaries(scratchDirectory, "." + scratchName + ".*" + ".tmp");
        string refPath = BitNetSharp.Formats.AtomicFile.TemporaryPath(Path.Combine(scratchDirectory, scratchName));
        try
        {
            // The reference: the starting widths' distributions, full rows on every vocabulary. Top 64 + rest (as eval
            // --save-logits-top keeps) is a lower bound on the KL: a budget checked against it let the search pick
            // widths over the budget. On 2B4T 512 positions take 512 × 128,256 × 4 B = 263 MB of scratch disk,
            // read back from the page cache in a fraction of one evaluation's forward passes.
            const int topK = 0;
            long positions = (long)windowStarts.Count * (ctx - QualityEvaluator.Plan(ctx + 1, ctx, ctx).FirstScored);
            var header = new LogitsFileHeader(c.VocabSize, ctx, ctx, bosId, topK, LogitsFileHeader.HashTokens(tokens), positions, "calibration reference");
            PerplexityResult startModel;
            using (var writer = new LogitsFileWriter(refPath, header))
            {
                (startModel, _) = QualityEvaluator.Evaluate(engine, tokens, ctx, ctx, tokenByteCount, bosId, save: writer, windowStarts: windowStarts, cancellation: cancellation);
                writer.Complete();
            }
            // Held open for the whole search (each evaluation opens it again): another search in this folder, in this
            // process or another PID namespace, reads a file nobody holds as a killed run's and would delete it.
            using var hold = new FileStream(refPath, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete);
            int evaluations = 0;
            (PerplexityResult Model, KlResult Kl) Measure(ActivationBits bits)
            {
                engine.ActivationBits = bits;
                using var reader = new LogitsFileReader(refPath);
                var (model, kl) = QualityEvaluator.Evaluate(engine, tokens, ctx, ctx, tokenByteCount, bosId, reference: KlReference.FromFile(reader), windowStarts: windowStarts, cancellation: cancellation);
                evaluations++;
                return (model, kl!);
            }

            var current = start;
            var steps = new List<BitWidthStep>();
            int candidates = c.Layers * HealthNames.InputCount;
            var exhausted = new bool[candidates];
            // Each candidate's last measured KL (−∞ before the first round: measured first) and the step it was measured at.
            var lastKl = new double[candidates];
            var lastPpl = new double[candidates];
            var measuredAt = new int[candidates];
            Array.Fill(lastKl, double.NegativeInfinity);
            Array.Fill(measuredAt, -1);
            // The next lower width of candidate k under the current widths, or −1 when it has none (it is exhausted).
            int Lower(int k)
            {
                int at = Array.IndexOf(ActivationBits.Allowed, current[k / HealthNames.InputCount, (BitLinearInput)(k % HealthNames.InputCount)]);
                return at < 0 || at == ActivationBits.Allowed.Length - 1 ? -1 : ActivationBits.Allowed[at + 1];
            }
            bool Remeasure(int k)
            {
                int to = Lower(k);
                if (to < 0)
                {
                    exhausted[k] = true;
                    return false;
                }
                var (model, kl) = Measure(current.With(k / HealthNames.InputCount, (BitLinearInput)(k % HealthNames.InputCount), to));
                if (!(kl.MeanKl <= klBudget)) // NaN is over any budget
                {
                    exhausted[k] = true;
                    return false;
                }
                lastKl[k] = kl.MeanKl;
                lastPpl[k] = model.Perplexity;
                measuredAt[k] = steps.Count;
                return true;
            }
            while (steps.Count < maxSteps)
            {
                (int Layer, int Input, int Bits, double Kl, double Ppl)? best = null;
                if (lazy)
                {
                    while (true)
                    {
                        int next = -1;
                        for (int k = 0; k < candidates; k++)
                            if (!exhausted[k] && (next < 0 || lastKl[k] < lastKl[next])) next = k;
                        if (next < 0) break;
                        if (measuredAt[next] == steps.Count)
                        {
                            best = (next / HealthNames.InputCount, next % HealthNames.InputCount, Lower(next), lastKl[next], lastPpl[next]);
                            break;
                        }
                        Remeasure(next);
                    }
                }
                else
                {
                    for (int k = 0; k < candidates; k++)
                        if (!exhausted[k] && Remeasure(k) && (best is null || lastKl[k] < best.Value.Kl))
                            best = (k / HealthNames.InputCount, k % HealthNames.InputCount, Lower(k), lastKl[k], lastPpl[k]);
                }
                if (best is not { } b) break;
                var input = (BitLinearInput)b.Input;
                steps.Add(new BitWidthStep(b.Layer, input, current[b.Layer, input], b.Bits, b.Kl, b.Ppl));
                current = current.With(b.Layer, input, b.Bits);
                log?.Invoke(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                    $"step {steps.Count}: layer {b.Layer} {HealthNames.InputLabels[b.Input]} {steps[^1].FromBits} → {b.Bits} bits, mean KL {b.Kl:G4} nats (budget {klBudget:G4})"));
            }
            var final = Measure(current);
            engine.ActivationBits = current;
            return new BitWidthSearchResult(current, steps, final.Kl, final.Model, evaluations, startModel);
        }
        finally
        {
            File.Delete(refPath);
        }
    }
}
