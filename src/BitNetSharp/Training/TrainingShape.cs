using BitNetSharp.Kernels.FloatOps;
using BitNetSharp.Model;

namespace BitNetSharp.Training;

/// <summary>
/// The hyper-parameters of a BitNet b1.58 model to train: the engine's graph (FORMATS.md §4.2) with sub-norms,
/// relu² FFN, NEOX RoPE and a tied head. Query width = <see cref="Dim"/> (heads · head dim).
/// </summary>
public sealed record TrainingShape(int VocabSize, int Dim, int Layers, int Heads, int KvHeads, int FeedForward, int ContextLength,
    float RopeTheta = 10000f, float RmsEps = 1e-5f)
{
    public int HeadDim => Dim / Heads;
    public int QDim => Heads * HeadDim;
    public int KvDim => KvHeads * HeadDim;
    public int GroupSize => Heads / KvHeads;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first inconsistent value and what to change.</summary>
    public void Validate()
    {
        void Require(bool ok, string message)
        {
            if (!ok) throw new ArgumentException(message);
        }
        Require(VocabSize > 0, $"The vocabulary size (--vocab) must be positive (got {VocabSize}).");
        // One message per size, naming the train option that sets it (a shared message listed them all and named none).
        Require(Dim > 0, $"The model width (--dim) must be positive (got {Dim}).");
        Require(Layers > 0, $"The number of transformer blocks (--layers) must be positive (got {Layers}).");
        Require(Heads > 0, $"The number of attention heads (--heads) must be positive (got {Heads}).");
        Require(KvHeads > 0, $"The number of KV heads (--kv-heads) must be positive (got {KvHeads}).");
        Require(FeedForward > 0, $"The feed-forward width (--ff) must be positive (got {FeedForward}).");
        Require(ContextLength > 1, $"The context length (--ctx) must be at least 2: a training window predicts each token from the ones before it (got {ContextLength}).");
        Require(Dim % Heads == 0, $"{Heads} heads do not divide the model dimension {Dim}; choose --heads so that --dim / --heads is a whole number.");
        Require(Heads % KvHeads == 0, $"{KvHeads} KV heads do not divide the {Heads} attention heads; choose a --kv-heads that divides --heads.");
        Require(HeadDim % 2 == 0, $"The head dimension {HeadDim} (--dim / --heads) must be even for RoPE.");
        Require(float.IsFinite(RopeTheta) && RopeTheta > 1f, $"The RoPE base (--rope-theta) {RopeTheta} must be a finite number above 1.");
        Require(float.IsFinite(RmsEps) && RmsEps > 0f && RmsEps <= 1f, $"The RMSNorm epsilon {RmsEps} must be positive and at most 1 (models use about 1e-5; the loader refuses more).");
    }

    /// <summary>The engine's view of this shape (what <see cref="ModelConfig.FromGguf"/> reads back from an export).</summary>
    public ModelConfig ToModelConfig() => new()
    {
        Architecture = ModelExporter.Architecture,
        Family = ModelFamily.BitNet158,
        Dim = Dim,
        Layers = Layers,
        Heads = Heads,
        KvHeads = KvHeads,
        HeadDim = HeadDim,
        FeedForward = FeedForward,
        VocabSize = VocabSize,
        ContextLength = ContextLength,
        RmsEps = RmsEps,
        RopeTheta = RopeTheta,
        Activation = FeedForwardActivation.ReluSquared,
        Rope = RopeStyle.Neox,
        HasSubNorms = true,
    };

    /// <summary>
    /// The shape in words; the RoPE base and norm epsilon only when they are not the defaults (they are part of the
    /// shape: a resume with another --rope-theta was refused with two identical descriptions).
    /// </summary>
    public override string ToString() =>
        string.Create(System.Globalization.CultureInfo.InvariantCulture, $"vocab {VocabSize}, dim {Dim}, layers {Layers}, heads {Heads}/{KvHeads}, ff {FeedForward}, ctx {ContextLength}")
        + (RopeTheta != 10000f ? string.Create(System.Globalization.CultureInfo.InvariantCulture, $", rope theta {RopeTheta:R}") : "")
        + (RmsEps != 1e-5f ? string.Create(System.Globalization.CultureInfo.InvariantCulture, $", norm eps {RmsEps:R}") : "");
}
