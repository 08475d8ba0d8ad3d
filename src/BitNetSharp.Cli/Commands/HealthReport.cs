using System.Globalization;
using BitNetSharp.Monitoring;

namespace BitNetSharp.Cli.Commands;

/// <summary>
/// The per-layer health table `bitnet generate --health` prints at the end (means over the measured steps; max |x|
/// and the largest relative change are maxima), and the one-line formats of --log-residual-stats and --log-logits.
/// </summary>
internal sealed class HealthReport(int layers)
{
    private readonly double[] _sat = new double[layers * HealthNames.InputCount];
    private readonly double[] _under = new double[layers * HealthNames.InputCount];
    private readonly double[] _crest = new double[layers * HealthNames.InputCount];
    private readonly double[] _rms = new double[layers];
    private readonly double[] _max = new double[layers];
    private readonly double[] _change = new double[layers];
    private readonly double[] _changeMax = new double[layers];
    private readonly double[] _kvKey = new double[layers], _kvValue = new double[layers];
    private readonly double[] _kvKeyMax = new double[layers], _kvValueMax = new double[layers];
    private readonly int[] _blowUpsIn = new int[layers];
    private bool _kvRounded; // a cache that rounds (not f32): the table shows its error
    private int _blowUps, _steps, _logitRows, _changeSteps;
    private double _entropy, _rangeMin = double.PositiveInfinity, _logitMin = double.PositiveInfinity, _logitMax = double.NegativeInfinity;

    public void Add(HealthSnapshot s)
    {
        _steps++;
        for (int i = 0; i < _sat.Length; i++)
        {
            _sat[i] += s.Saturation[i];
            _under[i] += s.Underflow[i];
            _crest[i] += s.CrestFactor[i];
        }
        // ‖Δ‖/‖x‖ is 0 in a step of sequence starts only (not measured there: a sequence's first token is left out, the
        // attention sink), in every layer; such a step is left out of the change's mean (a 1-token prompt's step read
        // 0.590 where the measured steps averaged 0.786).
        bool changeMeasured = false;
        for (int l = 0; l < _rms.Length; l++) changeMeasured |= s.ResidualChange[l] != 0;
        if (changeMeasured) _changeSteps++;
        for (int l = 0; l < _rms.Length; l++)
        {
            _rms[l] += s.ResidualRms[l];
            _max[l] = Math.Max(_max[l], s.ResidualMaxAbs[l]);
            if (changeMeasured) _change[l] += s.ResidualChange[l];
            _changeMax[l] = Math.Max(_changeMax[l], s.ResidualChange[l]);
            if (s.BlowUp[l])
            {
                _blowUps++;
                _blowUpsIn[l]++;
            }
            _kvKey[l] += s.KvKeyError[l];
            _kvValue[l] += s.KvValueError[l];
            _kvKeyMax[l] = Math.Max(_kvKeyMax[l], s.KvKeyError[l]); // NaN stays NaN
            _kvValueMax[l] = Math.Max(_kvValueMax[l], s.KvValueError[l]);
            _kvRounded |= s.KvKeyError[l] != 0 || s.KvValueError[l] != 0;
        }
        if (s.LogitRows > 0)
        {
            _logitRows++;
            _entropy += s.LogitEntropy;
            _rangeMin = Math.Min(_rangeMin, s.LogitRange);
            _logitMin = Math.Min(_logitMin, s.LogitMin);
            _logitMax = Math.Max(_logitMax, s.LogitMax);
        }
    }

    /// <summary>A relative change to N decimals; a blown-up one (1.7e31 printed 35 digits) to N + 1 significant digits.</summary>
    private static string Change(double v, int decimals = 3) =>
        v.ToString(Math.Abs(v) < 1e4 ? "F" + decimals : "G" + (decimals + 1), CultureInfo.InvariantCulture);

    /// <summary>Where the blow-ups were: "layer 3: 4" or "layer 3: 4, layer 5: 2".</summary>
    private string BlowUpLayers()
    {
        var parts = new List<string>();
        for (int l = 0; l < _blowUpsIn.Length; l++)
            if (_blowUpsIn[l] > 0) parts.Add(string.Create(CultureInfo.InvariantCulture, $"layer {l}: {_blowUpsIn[l]}"));
        return string.Join(", ", parts);
    }

    public void Write(TextWriter w)
    {
        var ic = CultureInfo.InvariantCulture;
        w.WriteLine(string.Create(ic, $"model health over {_steps} measured forward calls (saturation: share of codes at the clamp limit, ±127 at 8 bits; underflow: share of zero codes; crest: absmax/RMS)"));
        w.WriteLine("layer | sat qkv   o  g/u  down | under qkv   o  g/u  down | crest qkv    o   g/u  down | resid rms     max  change (max)");
        for (int l = 0; l < _rms.Length; l++)
        {
            int b = l * HealthNames.InputCount;
            string Pct(double[] a, int i) => (a[b + i] / _steps * 100).ToString("0.0", ic).PadLeft(5);
            string F(double[] a, int i) => (a[b + i] / _steps).ToString("0.0", ic).PadLeft(5);
            w.WriteLine(string.Create(ic,
                $"{l,5} | {Pct(_sat, 0)}{Pct(_sat, 1)}{Pct(_sat, 2)}{Pct(_sat, 3)}% | {Pct(_under, 0)}{Pct(_under, 1)}{Pct(_under, 2)}{Pct(_under, 3)}% | {F(_crest, 0)}{F(_crest, 1)}{F(_crest, 2)}{F(_crest, 3)} | {_rms[l] / _steps,9:G4} {_max[l],7:G4} {Change(_changeSteps > 0 ? _change[l] / _changeSteps : 0),6} ({Change(_changeMax[l])})"));
        }
        if (_logitRows > 0)
            w.WriteLine(string.Create(ic, $"logits: min {_logitMin:G5}, max {_logitMax:G5}, smallest range {_rangeMin:G5}, mean entropy {_entropy / _logitRows:F3} nats over {_logitRows} rows"));
        w.WriteLine(_blowUps == 0 ? "residual: no blow-up flagged" : string.Create(ic, $"residual: {_blowUps} layer-steps flagged as blow-ups ({BlowUpLayers()})"));
        // One line, not per-layer columns (they made the table ~150 characters wide, and the rounding hardly differs
        // between layers); the layers' own figures are in /metrics and the telemetry log.
        if (_kvRounded) w.WriteLine($"kv cache rounding (‖x − stored‖/‖x‖ of the rows written): keys {KvLine(_kvKey, _kvKeyMax)}; values {KvLine(_kvValue, _kvValueMax)}");
    }

    /// <summary>"mean 0.59 %, max 0.74 % (layer 2)": the mean over layers and steps, and the largest with its layer.</summary>
    private string KvLine(double[] sums, double[] maxima)
    {
        double mean = 0, max = double.NegativeInfinity;
        int at = 0;
        for (int l = 0; l < sums.Length; l++)
        {
            mean += sums[l] / _steps / sums.Length;
            if (double.IsNaN(maxima[l]) || maxima[l] > max)
            {
                max = maxima[l];
                at = l;
                if (double.IsNaN(max)) break;
            }
        }
        return string.Create(CultureInfo.InvariantCulture, $"mean {mean * 100:0.00} %, max {max * 100:0.00} % (layer {at})");
    }

    public static string LogitsLine(HealthSnapshot s) => string.Create(CultureInfo.InvariantCulture,
        $"logits step={s.Step} tokens={s.Tokens} min={s.LogitMin:G5} max={s.LogitMax:G5} range={s.LogitRange:G5} entropy={s.LogitEntropy:F4}");

    public static string LayerLine(HealthSnapshot s, int l)
    {
        int b = l * HealthNames.InputCount;
        return string.Create(CultureInfo.InvariantCulture,
            $"layer step={s.Step} layer={l} rms={s.ResidualRms[l]:G5} max={s.ResidualMaxAbs[l]:G5} change={Change(s.ResidualChange[l], 4)}{(s.BlowUp[l] ? " BLOWUP" : "")} " +
            $"sat={s.Saturation[b]:F4},{s.Saturation[b + 1]:F4},{s.Saturation[b + 2]:F4},{s.Saturation[b + 3]:F4} " +
            $"under={s.Underflow[b]:F4},{s.Underflow[b + 1]:F4},{s.Underflow[b + 2]:F4},{s.Underflow[b + 3]:F4}");
    }
}
