using System.CommandLine;
using System.Globalization;
using BitNetSharp.Generation.Speculative;
using BitNetSharp.Model;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Cli.Commands;

/// <summary>
/// Speculative-decoding flags: --speculate ngram|draft, --draft MODEL, --draft-layers N, --draft-tokens K. A draft
/// model (or the first N layers of the model itself) must share the model's vocabulary.
/// </summary>
public sealed class SpeculationOptions
{
    public Option<string?> Speculate { get; } = new("--speculate")
    {
        Description = "Speculative decoding: 'ngram' (prompt lookup: drafts copied from earlier context, no second model) or 'draft' "
            + "(a smaller model, --draft or --draft-layers); 'none' (the default) is off. Greedy output is unchanged; sampling keeps its distribution.",
    };
    public Option<string?> Draft { get; } = new("--draft") { Description = "A draft model with the same vocabulary (.gguf or HF directory); implies --speculate draft." };
    public Option<int?> DraftLayers { get; } = new("--draft-layers") { Description = "Draft with the model's own first N layers (early exit); implies --speculate draft." };
    public Option<int> DraftTokens { get; } = new("--draft-tokens") { Description = "Tokens drafted per verification step at most.", DefaultValueFactory = _ => 5 };

    public void AddTo(Command command)
    {
        command.Options.Add(Speculate);
        command.Options.Add(Draft);
        command.Options.Add(DraftLayers);
        command.Options.Add(DraftTokens);
    }

    /// <summary>The flags' usage errors, before the model loads (a typo was reported after loading gigabytes).</summary>
    public void Check(ParseResult r) => Validate(r);

    /// <summary>
    /// The speculative settings (null when off) and the draft weights they hold, which the caller disposes
    /// (after the generator). Refuses a draft whose vocabulary or tokenizer differs from the model's.
    /// </summary>
    /// <param name="notes">Where a check that could not be made is said (stderr).</param>
    public (SpeculativeOptions? Options, ModelWeights? DraftWeights) Parse(ParseResult r, ModelWeights target, BitNetTokenizer? tokenizer, TextWriter? notes = null)
    {
        var (ngram, needsDraft) = Validate(r);
        if (!needsDraft) return (ngram, null);
        return ParseDraft(r, target, tokenizer, r.GetValue(Draft), r.GetValue(DraftLayers), r.GetValue(DraftTokens), notes);
    }

    /// <summary>Speculation off (null, false), n-gram (its options, false), or a draft model to load (null, true).</summary>
    private (SpeculativeOptions? NGram, bool NeedsDraft) Validate(ParseResult r)
    {
        string? mode = r.GetValue(Speculate)?.Trim().ToLowerInvariant();
        string? draftPath = r.GetValue(Draft);
        // --draft "$DRAFT" with the variable unset: named here, before the main model loads (it failed after, saying
        // only "The value cannot be an empty string").
        if (draftPath is not null && string.IsNullOrWhiteSpace(draftPath))
            throw new UsageException("--draft: the draft model's path is empty; give a .gguf file or HF directory, or leave --draft out.");
        int? layers = r.GetValue(DraftLayers);
        int k = r.GetValue(DraftTokens);
        if (k < 1 || k > SpeculativeOptions.MaxDraftTokens)
            throw new UsageException($"--draft-tokens must be between 1 and {SpeculativeOptions.MaxDraftTokens}; got {k}.");
        if (draftPath is not null && layers is not null) throw new UsageException("give one of --draft MODEL or --draft-layers N, not both.");
        bool model = draftPath is not null || layers is not null;
        if (mode is "none" or "off")
        {
            if (model) throw new UsageException($"--speculate {mode} turns speculation off; drop --draft/--draft-layers, or use --speculate draft.");
            mode = null;
        }
        switch (mode)
        {
            case null when !model:
                // Accepted and ignored, --draft-tokens read as if it turned speculation on.
                if (r.GetResult(DraftTokens) is { Implicit: false })
                    throw new UsageException("--draft-tokens applies with --speculate ngram or a draft (--draft MODEL, --draft-layers N); speculation is off.");
                return (null, false);
            case null or "draft" or "model" when model:
                return (null, true);
            case "draft" or "model":
                throw new UsageException("--speculate draft needs --draft MODEL or --draft-layers N.");
            case "ngram" or "prompt-lookup" when !model:
                return (new SpeculativeOptions { Source = DraftSource.NGram, DraftTokens = k }, false);
            case "ngram" or "prompt-lookup":
                throw new UsageException("--speculate ngram drafts from the context; drop --draft/--draft-layers, or use --speculate draft.");
            default:
                throw new UsageException($"--speculate '{r.GetValue(Speculate)}' is not one of ngram, draft, none.");
        }
    }

    private static (SpeculativeOptions? Options, ModelWeights? DraftWeights) ParseDraft(ParseResult r, ModelWeights target, BitNetTokenizer? tokenizer, string? draftPath, int? layers, int k, TextWriter? notes)
    {
        ModelWeights draft;
        BitNetTokenizer? draftVocabulary = null;
        if (layers is { } n)
        {
            // A one-layer model has no shorter draft ("must be between 1 and 0 (the model has 1 layers)").
            if (target.Config.Layers < 2)
                throw new UsageException($"--draft-layers needs a model of at least 2 layers (a draft is its first layers, fewer than all); this one has 1. Use --speculate ngram or --draft MODEL.");
            if (n < 1 || n >= target.Config.Layers)
                throw new UsageException(target.Config.Layers == 2
                    ? $"--draft-layers must be 1 (the model has 2 layers); got {n}."
                    : $"--draft-layers must be between 1 and {target.Config.Layers - 1} (the model has {target.Config.Layers} layers); got {n}.");
            draft = target.FirstLayers(n);
        }
        else
        {
            var (weights, draftTokenizer) = ModelOptions.Load(draftPath!);
            try
            {
                SpeculativeOptions.CheckSameVocabulary(target.Config, tokenizer, weights.Config, draftTokenizer, $"the draft model {draftPath}");
            }
            catch (ArgumentException e)
            {
                weights.Dispose();
                throw new UsageException(e.Message);
            }
            // Only the sizes could be compared (a draft converted with --no-tokenizer): another vocabulary of the same size
            // was taken without a word, and drafted tokens that were rarely accepted.
            if (tokenizer is null || draftTokenizer is null)
                notes?.WriteLine($"note: {(draftTokenizer is null ? $"the draft model {draftPath}" : "the model")} carries no tokenizer, so only the vocabulary sizes ({weights.Config.VocabSize}) could be compared; a draft of another vocabulary of that size drafts tokens that are rarely accepted (the output is the model's either way).");
            draft = weights;
            draftVocabulary = draftTokenizer;
        }
        return (new SpeculativeOptions { Source = DraftSource.Model, DraftTokens = k, DraftModel = draft, DraftTokenizer = draftVocabulary }, draft);
    }

    /// <summary>"speculative (ngram, k=5): 40 steps, acceptance 63.2% (126/200), 3.15 tokens/step".</summary>
    public static string Describe(SpeculativeOptions options, SpeculativeStats s) => string.Create(CultureInfo.InvariantCulture,
        $"speculative ({(options.Source == DraftSource.NGram ? "ngram" : "draft model")}, k={options.DraftTokens}): {s.Steps} steps, "
        + $"acceptance {100 * s.AcceptanceRate:F1}% ({s.Accepted}/{s.Drafted}), {s.TokensPerStep:F2} tokens/step");
}
