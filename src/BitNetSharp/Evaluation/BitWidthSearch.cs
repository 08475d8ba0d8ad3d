using BitNetSharp.Model;
using BitNetSharp.Monitoring;
using BitNetSharp.Training;

namespace BitNetSharp.Evaluation;

/// <summary>One accepted step of the search: an input lowered by one width, and the mean KL the whole configuration then had.</summary>
public sealed record BitWidthStep(int Layer, BitLinearInput Input, int FromBits, int ToBits, double MeanKl, double Perplexity);

public sealed record BitWidthSearchResult(ActivationBits Bits, IReadOnlyList<BitWidthStep> Steps, KlResult Kl, PerplexityResult Model, int Evaluations);

/// <summary>
/// Greedy per-layer activation precision search: starting from the engine's widths (normally 8 everywhere), every
/// round tries lowering each BitLinear input of each layer by one step (8 → 6 → 5 → 4 → 3 → 2), measures the mean
/// KL of the whole configuration from the starting one on held-out windows, and accepts the cheapest step while the
/// KL stays within the budget. An input whose step alone went over the budget is not tried again (lowering others
/// only adds error). Deterministic: fixed order, ties to the first candidate, exact integer kernels.
/// </summary>
public static class BitWidthSearch
{
    public static BitWidthSearchResult Run(Transformer engine, int[] tokens, int ctx, IReadOnlyList<int> windowStarts, int bosId, double klBudget,
        string scratchDirectory, Func<int, int>? tokenByteCount = null, int maxSteps = int.MaxValue, Action<string>? log = null,
        CancellationToken cancellation = default)
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
            using (var writer = new LogitsFileWriter(refPath, header))
            {
                QualityEvaluator.Evaluate(engine, tokens, ctx, ctx, tokenByteCount, bosId, save: writer, windowStarts: windowStarts, cancellation: cancellation);
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
            var exhausted = new bool[c.Layers * HealthNames.InputCount];
            while (steps.Count < maxSteps)
            {
                (int Layer, int Input, int Bits, double Kl, double Ppl)? best = null;
                for (int l = 0; l < c.Layers; l++)
                    for (int i = 0; i < HealthNames.InputCount; i++)
                    {
                        int k = l * HealthNames.InputCount + i;
                        if (exhausted[k]) continue;
                        int from = current[l, (BitLinearInput)i];
                        int at = Array.IndexOf(ActivationBits.Allowed, from);
                        if (at < 0 || at == ActivationBits.Allowed.Length - 1)
                        {
                            exhausted[k] = true;
                            continue;
                        }
                        int to = ActivationBits.Allowed[at + 1];
                        var (model, kl) = Measure(current.With(l, (BitLinearInput)i, to));
                        if (!(kl.MeanKl <= klBudget)) exhausted[k] = true; // NaN is over any budget
                        else if (best is null || kl.MeanKl < best.Value.Kl) best = (l, i, to, kl.MeanKl, model.Perplexity);
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
            return new BitWidthSearchResult(current, steps, final.Kl, final.Model, evaluations);
        }
        finally
        {
            File.Delete(refPath);
        }
    }
}
