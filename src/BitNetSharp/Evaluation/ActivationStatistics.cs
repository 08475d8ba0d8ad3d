using BitNetSharp.Model;
using BitNetSharp.Monitoring;

namespace BitNetSharp.Evaluation;

/// <summary>What one BitLinear input of one layer looked like over the calibration tokens.</summary>
/// <param name="AbsMaxP50">Median of the per-token absmax (the quantization range).</param>
/// <param name="Tokens">Tokens with every entry finite: the ones the distributions below describe.</param>
/// <param name="CrestMean">Mean absmax/RMS over the tokens that are not all zero: a typical entry uses about (2^(b−1)−1)/crest of the b-bit codes.</param>
/// <param name="OutlierChannels">Channels that are outliers (|x_c| ≥ 6·RMS of the token) in at least 5% of tokens.</param>
/// <param name="TopOutlierShare">The share of tokens in which the most frequent outlier channel is one.</param>
/// <param name="Histogram">Share of entries by |x|/absmax in <see cref="ActivationStatistics.Bins"/> equal bins over [0, 1].</param>
/// <param name="NonFiniteTokens">Tokens with a NaN or infinite entry, left out of everything above (a NaN absmax sorted
/// first and hid under a finite maximum, and its entries all landed in the histogram's first bin).</param>
public sealed record InputStatistics(int Layer, BitLinearInput Input, long Tokens, double AbsMaxP50, double AbsMaxP99, double AbsMaxMax,
    double CrestMean, int OutlierChannels, double TopOutlierShare, double[] Histogram, long NonFiniteTokens = 0);

/// <summary>
/// Collects per-layer, per-input activation statistics from the forward pass (set as <see cref="Transformer.Observer"/>):
/// per-token absmax (its distribution), crest factor, per-channel outlier frequency and a histogram of |x|/absmax.
/// Thread-safe (the engine quantizes tokens on several workers); meant for calibration runs, not serving.
/// </summary>
public sealed class ActivationStatistics
{
    public const int Bins = 20;
    public const double OutlierRms = 6;

    private readonly object _gate = new();
    private readonly int _layers;
    private readonly List<float>[] _absMax;
    private readonly List<double>[] _crest; // per token, summed in sorted order: the mean does not depend on which worker came first
    private readonly long[][] _outliers;
    private readonly long[][] _histogram;
    private readonly long[] _nonFinite;

    public ActivationStatistics(ModelConfig c)
    {
        _layers = c.Layers;
        int n = c.Layers * HealthNames.InputCount;
        _absMax = new List<float>[n];
        _crest = new List<double>[n];
        _outliers = new long[n][];
        _histogram = new long[n][];
        _nonFinite = new long[n];
        for (int l = 0; l < c.Layers; l++)
            for (int i = 0; i < HealthNames.InputCount; i++)
            {
                int k = l * HealthNames.InputCount + i;
                _absMax[k] = [];
                _crest[k] = [];
                _histogram[k] = new long[Bins];
                _outliers[k] = new long[(BitLinearInput)i switch
                {
                    BitLinearInput.Qkv or BitLinearInput.GateUp => c.Dim,
                    BitLinearInput.O => c.QDim,
                    _ => c.FeedForward,
                }];
            }
    }

    /// <summary>Called by the engine with one token's BitLinear input, before quantization.</summary>
    public void Observe(int layer, BitLinearInput input, ReadOnlySpan<float> x)
    {
        float absMax = 0;
        double ss = 0;
        foreach (float v in x)
        {
            absMax = MathF.Max(absMax, MathF.Abs(v));
            ss += (double)v * v;
        }
        int k = layer * HealthNames.InputCount + (int)input;
        if (!float.IsFinite(absMax))
        {
            lock (_gate) _nonFinite[k]++;
            return;
        }
        double rms = Math.Sqrt(ss / x.Length);
        Span<int> bins = stackalloc int[Bins];
        double inv = absMax > 0 ? Bins / (double)absMax : 0;
        for (int i = 0; i < x.Length; i++) bins[Math.Min(Bins - 1, (int)(Math.Abs(x[i]) * inv))]++;
        double threshold = OutlierRms * rms;
        lock (_gate)
        {
            _absMax[k].Add(absMax);
            if (rms > 0) _crest[k].Add(absMax / rms); // an all-zero token (relu² with every gate ≤ 0) has no crest; 0 pulled the mean down
            var h = _histogram[k];
            for (int b = 0; b < Bins; b++) h[b] += bins[b];
            if (rms > 0)
            {
                var o = _outliers[k];
                for (int c = 0; c < x.Length; c++)
                    if (Math.Abs(x[c]) >= threshold) o[c]++;
            }
        }
    }

    private static double SortedSum(List<double> values)
    {
        var sorted = values.ToArray();
        Array.Sort(sorted);
        double sum = 0;
        foreach (double v in sorted) sum += v;
        return sum;
    }

    public IReadOnlyList<InputStatistics> Summarize()
    {
        var result = new List<InputStatistics>();
        lock (_gate)
        {
            for (int l = 0; l < _layers; l++)
                for (int i = 0; i < HealthNames.InputCount; i++)
                {
                    int k = l * HealthNames.InputCount + i;
                    var values = _absMax[k].ToArray();
                    Array.Sort(values);
                    var sorted = Array.ConvertAll(values, v => (double)v);
                    long tokens = values.Length;
                    int outlierChannels = 0;
                    long top = 0;
                    foreach (long count in _outliers[k])
                    {
                        if (tokens > 0 && count >= 0.05 * tokens) outlierChannels++;
                        top = Math.Max(top, count);
                    }
                    long entries = 0;
                    foreach (long c in _histogram[k]) entries += c;
                    var hist = Array.ConvertAll(_histogram[k], c => entries > 0 ? (double)c / entries : 0);
                    result.Add(new InputStatistics(l, (BitLinearInput)i, tokens, KlResult.Quantile(sorted, 0.5), KlResult.Quantile(sorted, 0.99),
                        tokens > 0 ? sorted[^1] : double.NaN, _crest[k].Count > 0 ? SortedSum(_crest[k]) / _crest[k].Count : double.NaN, outlierChannels,
                        tokens > 0 ? (double)top / tokens : 0, hist, _nonFinite[k]));
                }
        }
        return result;
    }
}
