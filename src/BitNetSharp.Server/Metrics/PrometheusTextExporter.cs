using System.Diagnostics.Metrics;
using System.Globalization;
using System.Text;

namespace BitNetSharp.Server.Metrics;

/// <summary>
/// Renders the instruments of chosen <see cref="Meter"/>s in the Prometheus text exposition format (version 0.0.4).
/// <para>
/// Names: the instrument name with every character outside [a-zA-Z0-9_:] made '_', then the unit's base-unit
/// suffix (s → _seconds, By → _bytes, 1 → _ratio; {annotations} add nothing), then _total for counters.
/// Types: Counter and ObservableCounter → counter; UpDownCounter, ObservableUpDownCounter, Gauge and
/// ObservableGauge → gauge; Histogram → histogram with the instrument's advised bucket boundaries (or
/// <see cref="DefaultBuckets"/>). Every family gets HELP (the instrument's description) and TYPE.
/// </para>
/// <para>
/// Push instruments are aggregated as their measurements arrive (under one lock, off the engine thread: the
/// scheduler records histograms from its drain); observable ones are read when <see cref="Write"/> collects.
/// </para>
/// </summary>
internal sealed class PrometheusTextExporter : IDisposable
{
    public static readonly double[] DefaultBuckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

    private readonly HashSet<Meter> _meters;
    private readonly Action? _beforeCollect;
    private readonly Action<Action>? _around;
    private readonly MeterListener _listener = new();
    private readonly Lock _lock = new();
    private readonly Lock _collect = new(); // one collection at a time: each clears the observables' series, then reads them
    private readonly List<Family> _families = [];
    private readonly Dictionary<Instrument, Family> _byInstrument = [];

    /// <param name="meters">The meters to export (by instance, so two servers in one process do not mix).</param>
    /// <param name="beforeCollect">Runs before each collection, e.g. to flush buffered histogram samples.</param>
    /// <param name="around">Runs each collection of the observable instruments (the action it is given), e.g. with every
    /// health gauge reading one sampled step (<see cref="Monitoring.HealthMeters.OneSnapshot"/>).</param>
    public PrometheusTextExporter(IEnumerable<Meter> meters, Action? beforeCollect = null, Action<Action>? around = null)
    {
        _meters = [.. meters];
        _beforeCollect = beforeCollect;
        _around = around;
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (!_meters.Contains(instrument.Meter)) return;
            lock (_lock)
            {
                var family = new Family(instrument);
                _families.Add(family);
                _byInstrument[instrument] = family;
            }
            listener.EnableMeasurementEvents(instrument);
        };
        _listener.MeasurementsCompleted = (instrument, _) =>
        {
            lock (_lock)
            {
                if (_byInstrument.Remove(instrument, out var f)) _families.Remove(f);
            }
        };
        _listener.SetMeasurementEventCallback<double>((i, v, tags, _) => Record(i, v, tags));
        _listener.SetMeasurementEventCallback<float>((i, v, tags, _) => Record(i, v, tags));
        _listener.SetMeasurementEventCallback<long>((i, v, tags, _) => Record(i, v, tags));
        _listener.SetMeasurementEventCallback<int>((i, v, tags, _) => Record(i, v, tags));
        _listener.SetMeasurementEventCallback<short>((i, v, tags, _) => Record(i, v, tags));
        _listener.SetMeasurementEventCallback<byte>((i, v, tags, _) => Record(i, v, tags));
        _listener.SetMeasurementEventCallback<decimal>((i, v, tags, _) => Record(i, (double)v, tags));
        _listener.Start();
    }

    private void Record(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
    {
        lock (_lock)
        {
            if (_byInstrument.TryGetValue(instrument, out var family)) family.Record(value, tags);
        }
    }

    /// <summary>
    /// Collects the observable instruments and writes every family. An observable's series are what this collection
    /// reported: one it no longer reports (a gauge with nothing to measure) leaves /metrics instead of repeating its last
    /// value for ever.
    /// </summary>
    public void Write(StringBuilder output)
    {
        lock (_collect)
        {
            _beforeCollect?.Invoke();
            lock (_lock)
            {
                foreach (var f in _families) f.ClearIfObservable();
            }
            if (_around is { } around) around(_listener.RecordObservableInstruments);
            else _listener.RecordObservableInstruments();
            lock (_lock)
            {
                foreach (var f in _families) f.Write(output);
            }
        }
    }

    public string Write()
    {
        var sb = new StringBuilder();
        Write(sb);
        return sb.ToString();
    }

    public void Dispose() => _listener.Dispose();

    private enum Kind { Counter, Gauge, Histogram }

    /// <summary>One instrument: its Prometheus name, type, help, and one series per distinct label set.</summary>
    private sealed class Family
    {
        private readonly Kind _kind;
        private readonly bool _additive; // push counters and up-down counters add measurements; everything else reports a value
        private readonly bool _observable; // read at each collection: its series are that collection's
        private readonly double[] _bounds;
        private readonly Dictionary<string, Series> _series = new(StringComparer.Ordinal);

        public Family(Instrument instrument)
        {
            var type = instrument.GetType();
            var generic = type.IsGenericType ? type.GetGenericTypeDefinition() : type;
            _additive = generic == typeof(Counter<>) || generic == typeof(UpDownCounter<>);
            _observable = generic == typeof(ObservableCounter<>) || generic == typeof(ObservableGauge<>) || generic == typeof(ObservableUpDownCounter<>);
            _kind = generic == typeof(Counter<>) || generic == typeof(ObservableCounter<>) ? Kind.Counter
                : generic == typeof(Histogram<>) ? Kind.Histogram
                : Kind.Gauge;
            Name = PrometheusName(instrument.Name, instrument.Unit, _kind == Kind.Counter);
            Help = instrument.Description is { Length: > 0 } d ? d : instrument.Name;
            _bounds = _kind == Kind.Histogram ? Bounds(instrument) : [];
        }

        public string Name { get; }
        public string Help { get; }

        private static double[] Bounds(Instrument instrument) => instrument switch
        {
            Histogram<double> { Advice.HistogramBucketBoundaries: { Count: > 0 } b } => [.. b],
            Histogram<float> { Advice.HistogramBucketBoundaries: { Count: > 0 } b } => [.. b.Select(x => (double)x)],
            Histogram<long> { Advice.HistogramBucketBoundaries: { Count: > 0 } b } => [.. b.Select(x => (double)x)],
            Histogram<int> { Advice.HistogramBucketBoundaries: { Count: > 0 } b } => [.. b.Select(x => (double)x)],
            _ => DefaultBuckets,
        };

        public void Record(double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            string labels = Labels(tags);
            if (!_series.TryGetValue(labels, out var s)) _series[labels] = s = new Series(_bounds.Length);
            switch (_kind)
            {
                case Kind.Histogram:
                    int b = 0;
                    while (b < _bounds.Length && value > _bounds[b]) b++;
                    s.Buckets[b]++;
                    s.Count++;
                    s.Value += value;
                    break;
                default:
                    // Observable counters report their running total, gauges their current value.
                    if (_additive) s.Value += value;
                    else s.Value = value;
                    break;
            }
        }

        public void ClearIfObservable()
        {
            if (_observable) _series.Clear();
        }

        public void Write(StringBuilder o)
        {
            o.Append("# HELP ").Append(Name).Append(' ').Append(EscapeHelp(Help)).Append('\n');
            o.Append("# TYPE ").Append(Name).Append(' ').Append(_kind switch { Kind.Counter => "counter", Kind.Histogram => "histogram", _ => "gauge" }).Append('\n');
            if (_series.Count == 0 && _kind == Kind.Histogram) WriteHistogram(o, "", new Series(_bounds.Length));
            foreach (var (labels, s) in _series)
            {
                if (_kind == Kind.Histogram) WriteHistogram(o, labels, s);
                else o.Append(Name).Append(Braces(labels)).Append(' ').Append(Format(s.Value)).Append('\n');
            }
        }

        private void WriteHistogram(StringBuilder o, string labels, Series s)
        {
            long cumulative = 0;
            string sep = labels.Length > 0 ? labels + "," : "";
            for (int b = 0; b <= _bounds.Length; b++)
            {
                cumulative += s.Buckets[b];
                string le = b < _bounds.Length ? Format(_bounds[b]) : "+Inf";
                o.Append(Name).Append("_bucket{").Append(sep).Append("le=\"").Append(le).Append("\"} ").Append(cumulative.ToString(CultureInfo.InvariantCulture)).Append('\n');
            }
            o.Append(Name).Append("_sum").Append(Braces(labels)).Append(' ').Append(Format(s.Value)).Append('\n');
            o.Append(Name).Append("_count").Append(Braces(labels)).Append(' ').Append(s.Count.ToString(CultureInfo.InvariantCulture)).Append('\n');
        }

        private static string Braces(string labels) => labels.Length == 0 ? "" : "{" + labels + "}";
    }

    private sealed class Series(int bounds)
    {
        public readonly long[] Buckets = new long[bounds + 1];
        public long Count;
        public double Value; // counter/gauge value, or the histogram's sum
    }

    /// <summary>Prometheus name for an instrument (see the class remarks).</summary>
    public static string PrometheusName(string name, string? unit, bool counter)
    {
        var sb = new StringBuilder(name.Length + 16);
        foreach (char c in name) sb.Append(char.IsAsciiLetterOrDigit(c) || c is '_' or ':' ? c : '_');
        if (sb.Length > 0 && char.IsAsciiDigit(sb[0])) sb.Insert(0, '_');
        string suffix = unit switch
        {
            "s" => "_seconds",
            "By" => "_bytes",
            "1" => "_ratio",
            _ => "",
        };
        string n = sb.ToString();
        if (suffix.Length > 0 && !n.EndsWith(suffix, StringComparison.Ordinal)) n += suffix;
        if (counter && !n.EndsWith("_total", StringComparison.Ordinal)) n += "_total";
        return n;
    }

    private static string Labels(ReadOnlySpan<KeyValuePair<string, object?>> tags)
    {
        if (tags.Length == 0) return "";
        var pairs = new List<(string Key, string Value)>(tags.Length);
        foreach (var t in tags) pairs.Add((LabelName(t.Key), Convert.ToString(t.Value, CultureInfo.InvariantCulture) ?? ""));
        pairs.Sort((a, b) => string.CompareOrdinal(a.Key, b.Key));
        var sb = new StringBuilder();
        foreach (var (k, v) in pairs)
        {
            if (sb.Length > 0) sb.Append(',');
            sb.Append(k).Append("=\"");
            foreach (char c in v)
            {
                switch (c)
                {
                    case '\\': sb.Append("\\\\"); break;
                    case '"': sb.Append("\\\""); break;
                    case '\n': sb.Append("\\n"); break;
                    default: sb.Append(c); break;
                }
            }
            sb.Append('"');
        }
        return sb.ToString();
    }

    private static string LabelName(string key)
    {
        var sb = new StringBuilder(key.Length);
        foreach (char c in key) sb.Append(char.IsAsciiLetterOrDigit(c) || c == '_' ? c : '_');
        if (sb.Length == 0 || char.IsAsciiDigit(sb[0])) sb.Insert(0, '_');
        return sb.ToString();
    }

    private static string EscapeHelp(string help) => help.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal);

    public static string Format(double v) =>
        double.IsPositiveInfinity(v) ? "+Inf" : double.IsNegativeInfinity(v) ? "-Inf" : double.IsNaN(v) ? "NaN" : v.ToString("R", CultureInfo.InvariantCulture);
}
