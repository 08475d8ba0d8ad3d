using System.Globalization;
using Apache.Arrow;
using Apache.Arrow.Types;

namespace BitNetSharp.Monitoring.Telemetry;

/// <summary>What a row of the telemetry log is; the <c>kind</c> column holds <see cref="KindNames"/>.</summary>
public enum TelemetryRowKind : sbyte { Step = 0, Layer = 1, Event = 2 }

/// <summary>
/// The one Arrow schema of the telemetry log, shared by the three record kinds. Every row has <c>time</c>
/// (timestamp[ns, UTC]), <c>kind</c> (dictionary int8 → utf8: "step", "layer", "event") and <c>step</c> (int64; for an
/// event the engine step most recently logged). The other columns are null where the kind has no such field:
/// <list type="bullet">
/// <item>step rows: request_id, trace_id (utf8), sequence, token, batch_tokens, nonfinite (int32), step_seconds,
/// latency_seconds, logit_min, logit_max, logit_entropy (float32);</item>
/// <item>layer rows: layer (int16), batch_tokens (int32, the tokens the step averaged over), sat_*, under_*, crest_*
/// per BitLinear input (float32, shares in [0, 1] and crest factor max|x|/rms), residual_rms, residual_max_abs,
/// residual_change (float32, ‖after − before‖/‖before‖, the largest over the step's tokens), kv_err_k, kv_err_v (float32,
/// the KV cache's rounding of the key and value rows, ‖x − stored‖/‖x‖, the largest over the step's measured tokens; columns added
/// after the first files were written: a file without them reads NaN there, and older readers skip them);</item>
/// <item>event rows: event_kind, message (utf8), request_id and trace_id where the event has them.</item>
/// </list>
/// The schema's custom metadata holds the run's context (<see cref="TelemetryContext"/>), <see cref="MarkerKey"/> and <see cref="RunKey"/>.
/// </summary>
public static class TelemetryLogSchema
{
    /// <summary>Metadata key that marks a file as one of ours; its value is the schema version.</summary>
    public const string MarkerKey = "bitnet.telemetry.schema";

    public const string Version = "1";

    /// <summary>
    /// Metadata key holding the id of the writer that made the file (random, 16 hex digits): every file of one writer
    /// has the same, so the files of several runs in one directory (a restarted server, replicas) are told apart. Step
    /// numbers restart at 0 in each run; (run, step) names one engine step. Files written before the key existed have none.
    /// </summary>
    public const string RunKey = "bitnet.telemetry.run";

    /// <summary>Keys the log itself writes (marker, run id); a run's context cannot set them.</summary>
    public static bool IsReserved(string key) => key.StartsWith("bitnet.telemetry.", StringComparison.Ordinal);

    public const string FileExtension = ".arrow";

    /// <summary>The request ids of a server's warm-up generations ("warmup-0", ...): the server's own, before serving, and
    /// whatever their steps cost (the JIT's first compilations) is not traffic (<c>bitnet logs</c> keeps them apart).</summary>
    public const string WarmupRequestIdPrefix = "warmup-";

    public static readonly string[] KindNames = ["step", "layer", "event"];

    public static readonly TimestampType TimeType = new(TimeUnit.Nanosecond, "UTC");

    public static readonly DictionaryType KindType = new(Int8Type.Default, StringType.Default, false);

    /// <summary>Column indices, in schema order.</summary>
    public const int Time = 0, Kind = 1, Step = 2, Layer = 3, RequestId = 4, TraceId = 5, Sequence = 6, Token = 7,
        BatchTokens = 8, StepSeconds = 9, LatencySeconds = 10, LogitMin = 11, LogitMax = 12, LogitEntropy = 13,
        NonFinite = 14, Saturation = 15, Underflow = 19, Crest = 23, ResidualRms = 27, ResidualMaxAbs = 28,
        ResidualChange = 29, EventKind = 30, Message = 31, KvKeyError = 32, KvValueError = 33, ColumnCount = 34;

    /// <summary>Column names in schema order.</summary>
    public static readonly string[] ColumnNames = BuildNames();

    private static string[] BuildNames()
    {
        var names = new string[ColumnCount];
        string[] fixedNames = ["time", "kind", "step", "layer", "request_id", "trace_id", "sequence", "token", "batch_tokens",
            "step_seconds", "latency_seconds", "logit_min", "logit_max", "logit_entropy", "nonfinite"];
        fixedNames.CopyTo(names, 0);
        for (int i = 0; i < HealthNames.InputCount; i++)
        {
            names[Saturation + i] = "sat_" + HealthNames.InputLabels[i];
            names[Underflow + i] = "under_" + HealthNames.InputLabels[i];
            names[Crest + i] = "crest_" + HealthNames.InputLabels[i];
        }
        names[ResidualRms] = "residual_rms";
        names[ResidualMaxAbs] = "residual_max_abs";
        names[ResidualChange] = "residual_change";
        names[EventKind] = "event_kind";
        names[Message] = "message";
        names[KvKeyError] = "kv_err_k";
        names[KvValueError] = "kv_err_v";
        return names;
    }

    internal static IArrowType TypeOf(int column) => column switch
    {
        Time => TimeType,
        Kind => KindType,
        Step => Int64Type.Default,
        Layer => Int16Type.Default,
        RequestId or TraceId or EventKind or Message => StringType.Default,
        Sequence or Token or BatchTokens or NonFinite => Int32Type.Default,
        _ => FloatType.Default,
    };

    /// <summary>The schema with <paramref name="context"/> (plus the marker and the run id, when given) as custom metadata.</summary>
    public static Schema Create(IReadOnlyDictionary<string, string> context, string? runId = null)
    {
        var builder = new Schema.Builder();
        for (int c = 0; c < ColumnCount; c++)
        {
            bool nullable = c is not (Time or Kind or Step);
            builder.Field(new Field(ColumnNames[c], TypeOf(c), nullable));
        }
        foreach (var (key, value) in context)
            if (!IsReserved(key)) builder.Metadata(key, value);
        builder.Metadata(MarkerKey, Version);
        if (runId is not null) builder.Metadata(RunKey, runId);
        return builder.Build();
    }

    /// <summary><c>PREFIX-yyyyMMddTHHmmssZ-NNNN.arrow</c>.</summary>
    internal static string FileName(string prefix, DateTime utc, int counter) =>
        string.Create(CultureInfo.InvariantCulture, $"{prefix}-{utc:yyyyMMdd'T'HHmmss'Z'}-{counter:D4}{FileExtension}");

    /// <summary>
    /// Whether <paramref name="path"/> is a file of the log <paramref name="prefix"/>, and its creation time and
    /// counter, which order the files of a log.
    /// </summary>
    internal static bool TryParseFileName(string path, string prefix, out DateTime utc, out int counter)
    {
        utc = default;
        counter = 0;
        string name = System.IO.Path.GetFileName(path);
        if (!name.StartsWith(prefix + "-", StringComparison.Ordinal) || !name.EndsWith(FileExtension, StringComparison.Ordinal)) return false;
        var rest = name.AsSpan(prefix.Length + 1, name.Length - prefix.Length - 1 - FileExtension.Length);
        // yyyyMMddTHHmmssZ-N...
        if (rest.Length < 18 || rest[16] != '-') return false;
        return DateTime.TryParseExact(rest[..16], "yyyyMMdd'T'HHmmss'Z'", CultureInfo.InvariantCulture,
                   DateTimeStyles.AdjustToUniversal | DateTimeStyles.AssumeUniversal, out utc)
               && int.TryParse(rest[17..], NumberStyles.None, CultureInfo.InvariantCulture, out counter);
    }

    /// <summary>The prefix of a log file name, or null when the name does not follow the pattern.</summary>
    internal static string? PrefixOf(string path)
    {
        string name = System.IO.Path.GetFileName(path);
        // PREFIX-yyyyMMddTHHmmssZ-N.arrow: the prefix ends 18 characters before the counter's digits.
        int dash = name.LastIndexOf('-');
        if (dash < 18 || name[dash - 17] != '-') return null;
        string prefix = name[..(dash - 17)];
        return TryParseFileName(path, prefix, out _, out _) ? prefix : null;
    }

    /// <summary>Sorts log files oldest first: by the time and counter in their names, else by last write time.</summary>
    internal static List<string> InTimeOrder(IEnumerable<string> paths)
    {
        var keyed = new List<(DateTime Time, int Counter, string Path)>();
        foreach (var p in paths)
        {
            string? prefix = PrefixOf(p);
            if (prefix is not null && TryParseFileName(p, prefix, out var t, out int n)) keyed.Add((t, n, p));
            else keyed.Add((File.Exists(p) ? File.GetLastWriteTimeUtc(p) : DateTime.MinValue, 0, p));
        }
        keyed.Sort((a, b) =>
        {
            int c = a.Time.CompareTo(b.Time);
            if (c == 0) c = a.Counter.CompareTo(b.Counter);
            return c != 0 ? c : string.CompareOrdinal(a.Path, b.Path);
        });
        var result = new List<string>(keyed.Count);
        foreach (var k in keyed) result.Add(k.Path);
        return result;
    }
}
