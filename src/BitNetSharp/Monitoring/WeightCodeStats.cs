using BitNetSharp.Model;
using BitNetSharp.Quantization;

namespace BitNetSharp.Monitoring;

/// <summary>
/// The share of −1, 0 and +1 codes in every packed projection ([layer·7 + projection], projections in
/// <see cref="HealthNames.ProjectionLabels"/> order). A trained BitNet b1.58 tensor has roughly a third of each (often
/// more zeros); a tensor with no −1 or no +1 codes ("all same sign", all zeros included) was almost certainly decoded
/// with the wrong layout or corrupted, and is counted in <see cref="Degenerate"/>.
/// </summary>
public sealed class WeightCodeStats
{
    private WeightCodeStats(int layers, TernaryCodeCounts[] counts)
    {
        Layers = layers;
        Counts = counts;
        foreach (var c in counts) if (IsDegenerate(c)) Degenerate++;
    }

    public int Layers { get; }

    public TernaryCodeCounts[] Counts { get; }

    public int Degenerate { get; }

    public static bool IsDegenerate(in TernaryCodeCounts c) => c.Minus == 0 || c.Plus == 0;

    public TernaryCodeCounts this[int layer, int projection] => Counts[layer * HealthNames.ProjectionLabels.Length + projection];

    /// <summary>Unpacks every tensor once (seconds for a 2B model: run it off the hot path).</summary>
    public static WeightCodeStats Compute(ModelWeights weights, CancellationToken cancellation = default)
    {
        int p = HealthNames.ProjectionLabels.Length;
        var counts = new TernaryCodeCounts[weights.Layers.Length * p];
        for (int l = 0; l < weights.Layers.Length; l++)
        {
            var projections = WeightIntegrity.Projections(weights.Layers[l]);
            for (int j = 0; j < p; j++)
            {
                cancellation.ThrowIfCancellationRequested();
                counts[l * p + j] = TernaryCodeCounts.Of(projections[j].Matrix);
            }
        }
        return new WeightCodeStats(weights.Layers.Length, counts);
    }
}
