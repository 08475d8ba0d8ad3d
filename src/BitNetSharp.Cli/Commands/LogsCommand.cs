using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using BitNetSharp.Formats;
using BitNetSharp.Monitoring;
using BitNetSharp.Monitoring.Telemetry;

namespace BitNetSharp.Cli.Commands;

/// <summary>
/// <c>bitnet logs FILE… [--summary] [--request ID] [--layer N] [--since T] [--until T] [--follow] [--export csv|jsonl
/// --out PATH] [--plot PATH.svg --metric M [--input I]]</c>: reads telemetry logs (<see cref="TelemetryLogReader"/>).
/// Without --export, --plot or --follow it prints a summary. Filters apply to every output: --request keeps that
/// request's step and event rows and the layer rows of its steps; --layer keeps one layer's rows (step and event rows
/// stay); --since/--until bound the time, a step's rows judged together at the step's time (its earliest row).
/// </summary>
public static class LogsCommand
{
    public static readonly string[] Metrics = ["saturation", "underflow", "crest", "residual_rms", "residual_change", "kv_err_k", "kv_err_v"];

    public static Command Create(CliConsole cli)
    {
        var files = new Argument<string[]>("files") { Description = "Telemetry log files (.arrow) or directories of them.", Arity = ArgumentArity.OneOrMore };
        var summary = new Option<bool>("--summary") { Description = "Print the summary (the default when nothing else is asked)." };
        var request = new Option<string?>("--request") { Description = "Only this request id (its steps, events and the layer rows of its engine steps)." };
        var layer = new Option<int?>("--layer") { Description = "Of the per-layer rows, only this layer's (step and event rows are kept)." };
        var since = new Option<string?>("--since") { Description = "Only rows at or after T: ISO-8601 or a duration ago (30s, 10m, 2h, 1d). A step's layer and step rows are kept or left together, by the step's time (its first row's)." };
        var until = new Option<string?>("--until") { Description = "Only rows at or before T: ISO-8601 or a duration ago (a step by its time, as for --since)." };
        var follow = new Option<bool>("--follow", "-f") { Description = "Tail the newest file: print new rows as JSON lines until Ctrl-C." };
        var followTimeout = new Option<double?>("--follow-timeout") { Description = "Stop following after this many seconds." };
        var export = new Option<string?>("--export") { Description = "Write the rows as csv or jsonl to --out." };
        var output = new Option<string?>("--out", "-o") { Description = "The export file." };
        var plot = new Option<string?>("--plot") { Description = "Write an SVG chart of --metric per layer over time to this path." };
        var metric = new Option<string?>("--metric") { Description = "saturation, underflow, crest, residual_rms, residual_change, kv_err_k or kv_err_v (the KV cache's rounding of keys and values) (default saturation)." };
        var input = new Option<string?>("--input") { Description = "BitLinear input of saturation, underflow and crest: qkv, o, gate_up or down (default qkv)." };
        var command = new Command("logs", "Summarize, filter, export, plot or follow telemetry logs (Arrow IPC files).")
        {
            files, summary, request, layer, since, until, follow, followTimeout, export, output, plot, metric, input,
        };
        command.SetAction((r, cancellation) => Task.FromResult(cli.Guard(() =>
        {
            var now = DateTimeOffset.UtcNow;
            var settings = new Settings
            {
                Files = r.GetRequiredValue(files),
                Summary = r.GetValue(summary),
                Request = r.GetValue(request),
                Layer = r.GetValue(layer),
                Since = ParseTime(r.GetValue(since), "--since", now),
                Until = ParseTime(r.GetValue(until), "--until", now),
                Follow = r.GetValue(follow),
                FollowTimeout = r.GetValue(followTimeout),
                Export = r.GetValue(export),
                Out = r.GetValue(output),
                Plot = r.GetValue(plot),
                Metric = r.GetValue(metric),
                Input = r.GetValue(input),
            };
            try
            {
                return Run(cli, settings, cancellation);
            }
            catch (OperationCanceledException) when (cancellation.IsCancellationRequested)
            {
                // Ctrl-C while reading: no export or plot is renamed into place (an existing --out is kept).
                cli.Error.WriteLine("cancelled: nothing written.");
                return 130;
            }
            catch (InvalidDataException e)
            {
                // A file that is not a telemetry log is the user's file, not a bug: one line and exit 1.
                throw new IOException(e.Message, e);
            }
        })));
        return command;
    }

    private sealed class Settings
    {
        public required string[] Files;
        public bool Summary, Follow;
        public string? Request, Export, Out, Plot, Metric, Input;
        public int? Layer;
        public long? Since, Until;
        public double? FollowTimeout;
    }

    private static int Run(CliConsole cli, Settings s, CancellationToken cancellation)
    {
        Validate(s);
        if (s.Follow) return Follow(cli, s, cancellation);

        var reader = TelemetryLogReader.Open(s.Files);
        // A folder with no logs in it printed an empty report and exited 0, as if the run had logged nothing.
        if (reader.Files.Count == 0)
            throw new IOException($"{string.Join(", ", s.Files)}: no telemetry logs (*{TelemetryLogSchema.FileExtension}) found; give the folder serve --telemetry-log wrote to.");
        CheckOutputs(s, reader);
        HashSet<(string?, long)>? requestSteps = null;
        if (s.Request is not null)
        {
            requestSteps = [];
            foreach (var row in reader.ReadRows(cancellation))
                if (IsRequestStep(row, s.Request)) requestSteps.Add((row.Run, row.Step));
        }
        // A step's layer rows are stamped when it is measured and its step rows as each token is delivered, a little
        // later (and written first): a --since or --until between the two kept a step's tokens without its layers, or
        // its layers alone.
        StepTimes? stepTimes = null;
        if (s.Since is not null || s.Until is not null)
        {
            stepTimes = new StepTimes();
            foreach (var row in reader.ReadRows(cancellation)) stepTimes.See(row);
        }

        var stats = s.Summary || (s.Export is null && s.Plot is null) ? new Summary() : null;
        // Through AtomicFile: a link at --out or --plot keeps pointing at the new file and a FIFO is written in place
        // (the rename replaced either).
        var exportFile = s.Export is null ? null : AtomicFile.Begin(s.Out!);
        StreamWriter? exportWriter = null;
        try
        {
            if (exportFile is not null)
            {
                // Lines end in \n on every OS (CSV and JSONL tools expect it; WriteLine wrote \r\n on Windows).
                exportWriter = new StreamWriter(exportFile.Stream, new UTF8Encoding(false), 1 << 16, leaveOpen: true) { NewLine = "\n" };
                if (s.Export == "csv") exportWriter.WriteLine(string.Join(',', TelemetryLogSchema.ColumnNames) + ",run");
            }
            var plot = s.Plot is null ? null : new PlotData(s.Metric ?? "saturation", InputIndex(s.Input));
            long exported = 0;
            var jsonBuffer = new System.Buffers.ArrayBufferWriter<byte>();
            int topLayer = -1;
            bool layerFound = false, requestFound = false;
            foreach (var row in reader.ReadRows(cancellation))
            {
                // Step rows appended by a live writer since the first pass: their layer rows come after them.
                if (requestSteps is not null && IsRequestStep(row, s.Request)) requestSteps.Add((row.Run, row.Step));
                if (row.Kind == TelemetryRowKind.Layer)
                {
                    topLayer = Math.Max(topLayer, row.Layer);
                    layerFound |= row.Layer == s.Layer;
                }
                requestFound |= s.Request is not null && row.RequestId == s.Request;
                stepTimes?.See(row);
                if (!Keep(row, s, requestSteps, stepTimes)) continue;
                stats?.Add(row);
                plot?.Add(row);
                if (exportWriter is not null)
                {
                    if (s.Export == "csv") WriteCsv(exportWriter, row);
                    else WriteJsonLine(exportWriter, row, jsonBuffer);
                    exported++;
                }
            }
            if (exportWriter is not null)
            {
                exportWriter.Dispose();
                exportWriter = null;
                exportFile!.Commit();
                // On stderr, as the notes: `--out /dev/stdout` ended with this line, which is not JSON or CSV.
                cli.Error.WriteLine($"wrote {exported:N0} rows to {s.Out}");
            }
            if (plot is not null)
            {
                AtomicFile.Write(s.Plot!, stream =>
                {
                    using var w = new StreamWriter(stream, new UTF8Encoding(false), 1 << 16, leaveOpen: true);
                    plot.Write(w, reader.Files);
                }, 1 << 16);
                cli.Error.WriteLine($"wrote {plot.SeriesCount} layer series of {plot.Title} to {s.Plot}");
                // Rows whose metric is all NaN drew axes and nothing else, without a word: a log written before the
                // column existed (kv_err_k, kv_err_v read NaN there) or a metric never measured.
                if (plot.Points > 0 && plot.FinitePoints == 0)
                    cli.Error.WriteLine($"note: --metric {plot.Metric}: none of the {plot.Points:N0} layer rows has a value (all NaN), so the chart is empty: "
                        + (plot.Metric is "kv_err_k" or "kv_err_v" ? "these logs were written before the KV rounding columns existed, or by a server that did not measure them." : "the metric was not measured in these rows."));
            }
            // A layer the logs do not have (past the model's last) matched nothing and said nothing.
            if (s.Layer is { } wanted && !layerFound)
                cli.Error.WriteLine(topLayer < 0 ? $"note: --layer {wanted}: these logs have no layer rows (serve --health-every writes them)."
                    : $"note: --layer {wanted}: no rows of that layer; these logs have layers 0 to {topLayer}.");
            // Likewise a request id that is not in the logs (a typo, another server's logs): it printed "rows: 0" or drew an
            // empty chart, as if the request had run without a step.
            if (s.Request is { } id && !requestFound)
                cli.Error.WriteLine($"note: --request {id}: no request with that id in these logs (the ids are in --export's request_id column).");
            if (stats is not null) stats.Write(cli.Output, reader);
            else
                // An export or a plot names what it left out too (it said "wrote N rows" and nothing of a file cut off or
                // deleted by the writer's size cap while it read).
                foreach (var line in FileNotes(reader)) cli.Error.WriteLine("note: " + line);
            return 0;
        }
        finally
        {
            exportWriter?.Dispose();
            exportFile?.Dispose();
        }
    }

    /// <summary>What the reader could not read whole: files cut off at the end, files deleted while reading.</summary>
    private static IEnumerable<string> FileNotes(TelemetryLogReader reader)
    {
        foreach (var t in reader.TruncatedFiles) yield return $"{t}: cut off (a write or a copy cut short); the batches before the cut were read";
        foreach (var t in reader.VanishedFiles) yield return $"{t}: deleted while reading (the writer's size cap), skipped";
        foreach (var (skipped, kept) in reader.DuplicateFiles) yield return $"{skipped}: a copy of {kept} (the same run and file name), read once";
    }

    /// <summary>
    /// --out and --plot must not replace a log being read (the rows are read first and the result renamed over the
    /// path, so the log would be lost), nor add a non-log file that a later read of the directory would take for one.
    /// </summary>
    private static void CheckOutputs(Settings s, TelemetryLogReader reader)
    {
        foreach (var (option, path) in new[] { ("--out", s.Out), ("--plot", s.Plot) })
        {
            if (path is null) continue;
            string full = Path.GetFullPath(path);
            // However spelled: through a link, or in other letter case where the file system folds it (macOS, Windows).
            foreach (var f in reader.Files)
                if (PathIdentity.SameFile(f.Path, full))
                    throw new UsageException($"{option} {path} is one of the telemetry logs being read; writing it would replace the log. Give another path.");
            if (full.EndsWith(TelemetryLogSchema.FileExtension, StringComparison.OrdinalIgnoreCase))
                foreach (var input in s.Files)
                    if (Directory.Exists(input) && Path.GetDirectoryName(full) is { } folder && Directory.Exists(folder) && PathIdentity.SameFolder(input, folder))
                        throw new UsageException($"{option} {path} would put a {TelemetryLogSchema.FileExtension} file that is not a telemetry log into the log directory {input}. Give another name or directory.");
        }
    }

    /// <summary>The longest --follow-timeout (a cancellation timer takes at most about 49 days; 24 days is plenty).</summary>
    internal const double MaxFollowSeconds = 24 * 86400;

    private static void Validate(Settings s)
    {
        // A mistyped option (--sinse 1h) was read as a log path: "no such telemetry log file", exit 1 as for a missing log.
        foreach (var f in s.Files)
            if (f.StartsWith("--", StringComparison.Ordinal) && f.Length > 2 && !File.Exists(f) && !Directory.Exists(f))
                throw new UsageException($"unrecognized option '{f}' (see bitnet logs --help); a log path that starts with -- goes after ./ or --.");
        if (s.Export is not null && s.Export is not ("csv" or "jsonl"))
            throw new UsageException($"unknown --export format '{s.Export}': expected csv or jsonl.");
        if (s.Export is not null && string.IsNullOrEmpty(s.Out))
            throw new UsageException("--export needs --out PATH.");
        if (s.Out is not null && s.Export is null)
            throw new UsageException("--out needs --export csv|jsonl.");
        if (s.Metric is not null && Array.IndexOf(Metrics, s.Metric) < 0)
            throw new UsageException($"unknown --metric '{s.Metric}': expected {string.Join(", ", Metrics)}.");
        if ((s.Metric is not null || s.Input is not null) && s.Plot is null)
            throw new UsageException("--metric and --input need --plot PATH.svg.");
        if (s.Input is not null && Array.IndexOf(HealthNames.InputLabels, s.Input) < 0)
            throw new UsageException($"unknown --input '{s.Input}': expected {string.Join(", ", HealthNames.InputLabels)}.");
        // The residual-stream metrics are one per layer, not per projection input: --input was ignored without a word.
        if (s.Input is not null && s.Metric is "residual_rms" or "residual_change" or "kv_err_k" or "kv_err_v")
            throw new UsageException($"--input picks a projection input for saturation, underflow and crest; --metric {s.Metric} has one value per layer. Leave out --input.");
        if (s.Follow && (s.Export is not null || s.Plot is not null || s.Summary))
            throw new UsageException("--follow prints rows as they arrive; it cannot be combined with --summary, --export or --plot.");
        if (s.Since is { } from && s.Until is { } to && from > to)
            throw new UsageException("--since is later than --until: no row can match; swap them.");
        if (s.Layer is < 0 and var badLayer)
            throw new UsageException($"--layer must be a layer index, 0 or more; got {badLayer}.");
        if (s.FollowTimeout is not null && !s.Follow)
            throw new UsageException("--follow-timeout needs --follow.");
        if (s.FollowTimeout is <= 0 or double.NaN or > MaxFollowSeconds)
            throw new UsageException($"--follow-timeout must be a positive number of seconds, at most {MaxFollowSeconds} (24 days); got {s.FollowTimeout}.");
        foreach (var (option, path) in new[] { ("--out", s.Out), ("--plot", s.Plot) })
        {
            if (path is null) continue;
            // "-" made a file named "-" in the working directory.
            if (path == "-")
                throw new UsageException($"{option} -: give a file path (for standard output, {option} /dev/stdout).");
            if (Directory.Exists(path) || path.EndsWith('/') || path.EndsWith(Path.DirectorySeparatorChar))
                throw new UsageException($"{option} {path} is a directory; give a file path.");
            if (Path.GetDirectoryName(Path.GetFullPath(path)) is { } dir && !Directory.Exists(dir))
                throw new IOException($"{path}: directory {dir} does not exist.");
        }
    }

    /// <summary>Layer rows belong to a request through its steps, numbered per run: (run, step) names one engine step.</summary>
    /// <summary>
    /// A step of the request: its step rows, and its non-finite-logits event's step (that step wrote no step row for the
    /// request, so the layer rows showing the blow-up were filtered out of `--request`).
    /// </summary>
    private static bool IsRequestStep(in TelemetryRow row, string? request) =>
        request is not null && row.RequestId == request
        && (row.Kind == TelemetryRowKind.Step || (row.Kind == TelemetryRowKind.Event && row.Event.Kind == "nonfinite_logits"));

    private static bool Keep(in TelemetryRow row, Settings s, HashSet<(string?, long)>? requestSteps, StepTimes? stepTimes)
    {
        long time = stepTimes?.TimeOf(row) ?? row.TimeUnixNanos;
        if (s.Since is { } since && time < since) return false;
        if (s.Until is { } until && time > until) return false;
        if (s.Layer is { } layer && row.Kind == TelemetryRowKind.Layer && row.Layer != layer) return false;
        if (s.Request is { } request)
            return row.Kind == TelemetryRowKind.Layer ? requestSteps!.Contains((row.Run, row.Step)) : row.RequestId == request;
        return true;
    }

    private static int Follow(CliConsole cli, Settings s, CancellationToken cancellation)
    {
        var reader = TelemetryLogReader.Open(s.Files);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
        if (s.FollowTimeout is { } seconds) stop.CancelAfter(TimeSpan.FromSeconds(seconds));
        bool fromStart = false;
        if (reader.Files.Count == 0)
        {
            // A folder the server has not written to yet (the follower started first, as in `serve & logs -f DIR`): wait
            // for its first file and read it from the start, every row in it being newer than the follower. It exited at once.
            if (!s.Files.All(Directory.Exists)) throw new IOException($"{string.Join(", ", s.Files)}: no telemetry log files to follow.");
            cli.Error.WriteLine($"note: no telemetry log in {string.Join(", ", s.Files)} yet; waiting for the first one.");
            while (reader.Files.Count == 0)
            {
                if (stop.Token.WaitHandle.WaitOne(200)) return 0;
                reader = TelemetryLogReader.Open(s.Files);
            }
            fromStart = true;
        }
        var buffer = new System.Buffers.ArrayBufferWriter<byte>();
        // The layer rows of a followed request's steps arrive in the same batch as, or after, its step rows.
        var requestSteps = s.Request is null ? null : new HashSet<(string?, long)>();
        // A step's rows are dated by the earliest of them: its step rows are written first (as tokens are delivered), its
        // layer rows, stamped earlier, after them, in the same batch; each batch is seen whole before its rows are judged
        // (bounded: a step's rows are close together). A step whose rows two writes split is judged in two parts.
        var stepTimes = s.Since is null && s.Until is null ? null : new StepTimes(bound: 1 << 16);
        foreach (var batch in TelemetryLogReader.Follow(TelemetryLogReader.FollowStart(reader.Files), TimeSpan.FromMilliseconds(200), stop.Token, fromStart))
        {
            using (batch)
            {
                if (stepTimes is not null)
                    foreach (var row in TelemetryLogReader.Rows(batch)) stepTimes.See(row);
                foreach (var row in TelemetryLogReader.Rows(batch))
                {
                    if (requestSteps is not null && IsRequestStep(row, s.Request)) requestSteps.Add((row.Run, row.Step));
                    if (!Keep(row, s, requestSteps, stepTimes)) continue;
                    WriteJsonLine(cli.Output, row, buffer);
                }
            }
            cli.Output.Flush();
        }
        return 0;
    }

    /// <summary>
    /// The time --since and --until judge a step's layer and step rows by: the earliest of them, when it was measured
    /// (its layer rows are stamped then, its step rows as each token is delivered). Event rows keep their own time.
    /// </summary>
    private sealed class StepTimes(int bound = int.MaxValue)
    {
        private readonly Dictionary<(string?, long), long> _first = [];

        public void See(in TelemetryRow row)
        {
            // Files from before run ids have none, and each restart numbered its steps from 0 again: (null, step) would
            // join one run's step to another's, so such rows keep their own times.
            if (row.Kind is not (TelemetryRowKind.Step or TelemetryRowKind.Layer) || row.Run is null) return;
            var key = (row.Run, row.Step);
            if (_first.TryGetValue(key, out long t) && t <= row.TimeUnixNanos) return;
            if (_first.Count >= bound) _first.Clear();
            _first[key] = row.TimeUnixNanos;
        }

        public long TimeOf(in TelemetryRow row) =>
            row.Kind is TelemetryRowKind.Step or TelemetryRowKind.Layer && row.Run is not null && _first.TryGetValue((row.Run, row.Step), out long t) ? t : row.TimeUnixNanos;
    }

    /// <summary>ISO-8601 (UTC unless it says otherwise) or a duration before now: 90s, 10m, 2h, 1d, 500ms.</summary>
    public static long? ParseTime(string? text, string option, DateTimeOffset now)
    {
        if (string.IsNullOrWhiteSpace(text)) return null;
        text = text.Trim();
        (string Suffix, double Seconds)[] units = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)];
        foreach (var (suffix, unit) in units)
            if (text.EndsWith(suffix, StringComparison.Ordinal)
                && double.TryParse(text.AsSpan(0, text.Length - suffix.Length), NumberStyles.Float, CultureInfo.InvariantCulture, out double amount)
                && amount >= 0)
            {
                // Longer ago than the Unix epoch (1e9d, ∞): every row; TimeSpan would overflow.
                double seconds = amount * unit;
                return seconds < (now - DateTimeOffset.UnixEpoch).TotalSeconds ? ToUnixNanos(now - TimeSpan.FromSeconds(seconds)) : 0;
            }
        // The rows' times are in nanoseconds and printed with nine digits; DateTimeOffset keeps seven (100 ns): the last
        // two digits are added back, so a bound copied from the tool's own output is exact.
        long extra = 0;
        var fraction = System.Text.RegularExpressions.Regex.Match(text, @"\.(\d{8,9})(?!\d)");
        if (fraction.Success)
        {
            string digits = fraction.Groups[1].Value;
            extra = long.Parse(digits[7..].PadRight(2, '0'), CultureInfo.InvariantCulture);
            text = text.Remove(fraction.Index + 8, digits.Length - 7);
        }
        if (DateTimeOffset.TryParse(text, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var t))
            return ToUnixNanos(t) is var nanos && nanos is long.MaxValue or long.MinValue ? nanos : nanos + extra;
        throw new UsageException($"{option} '{text}' is neither an ISO-8601 time nor a duration like 10m.");
    }

    /// <summary>Nanoseconds since the epoch, clamped: years past 2262 (or before 1677) wrapped around into times that dropped every row.</summary>
    private static long ToUnixNanos(DateTimeOffset t)
    {
        long ticks = t.UtcTicks - DateTimeOffset.UnixEpoch.UtcTicks;
        return ticks > long.MaxValue / 100 ? long.MaxValue : ticks < long.MinValue / 100 ? long.MinValue : ticks * 100;
    }

    private static int InputIndex(string? input) => input is null ? 0 : Array.IndexOf(HealthNames.InputLabels, input);

    /// <summary>ISO-8601 UTC with nanoseconds.</summary>
    internal static string FormatTime(long unixNanos)
    {
        var t = DateTimeOffset.UnixEpoch.AddTicks(unixNanos / 100);
        long ns = ((unixNanos % 1_000_000_000) + 1_000_000_000) % 1_000_000_000;
        return string.Create(CultureInfo.InvariantCulture, $"{t:yyyy-MM-dd'T'HH:mm:ss}.{ns:D9}Z");
    }

    private static string F(float v) => v.ToString(CultureInfo.InvariantCulture);

    // The values of a row in schema order, null where the column is null for its kind.
    private static string?[] Cells(in TelemetryRow row)
    {
        var c = new string?[TelemetryLogSchema.ColumnCount];
        c[TelemetryLogSchema.Time] = FormatTime(row.TimeUnixNanos);
        c[TelemetryLogSchema.Kind] = TelemetryLogSchema.KindNames[(int)row.Kind];
        c[TelemetryLogSchema.Step] = row.Step.ToString(CultureInfo.InvariantCulture);
        switch (row.Kind)
        {
            case TelemetryRowKind.Step:
                var s = row.StepRecord;
                c[TelemetryLogSchema.RequestId] = s.RequestId;
                c[TelemetryLogSchema.TraceId] = s.TraceId;
                c[TelemetryLogSchema.Sequence] = s.Sequence.ToString(CultureInfo.InvariantCulture);
                c[TelemetryLogSchema.Token] = s.Token.ToString(CultureInfo.InvariantCulture);
                c[TelemetryLogSchema.BatchTokens] = s.BatchTokens.ToString(CultureInfo.InvariantCulture);
                c[TelemetryLogSchema.StepSeconds] = F(s.StepSeconds);
                c[TelemetryLogSchema.LatencySeconds] = F(s.LatencySeconds);
                c[TelemetryLogSchema.LogitMin] = F(s.LogitMin);
                c[TelemetryLogSchema.LogitMax] = F(s.LogitMax);
                c[TelemetryLogSchema.LogitEntropy] = F(s.LogitEntropy);
                c[TelemetryLogSchema.NonFinite] = s.NonFinite.ToString(CultureInfo.InvariantCulture);
                break;
            case TelemetryRowKind.Layer:
                var l = row.LayerRecord!;
                c[TelemetryLogSchema.Layer] = l.Layer.ToString(CultureInfo.InvariantCulture);
                c[TelemetryLogSchema.BatchTokens] = l.Tokens.ToString(CultureInfo.InvariantCulture);
                for (int k = 0; k < HealthNames.InputCount; k++)
                {
                    c[TelemetryLogSchema.Saturation + k] = F(l.Saturation[k]);
                    c[TelemetryLogSchema.Underflow + k] = F(l.Underflow[k]);
                    c[TelemetryLogSchema.Crest + k] = F(l.CrestFactor[k]);
                }
                c[TelemetryLogSchema.ResidualRms] = F(l.ResidualRms);
                c[TelemetryLogSchema.ResidualMaxAbs] = F(l.ResidualMaxAbs);
                c[TelemetryLogSchema.ResidualChange] = F(l.ResidualChange);
                c[TelemetryLogSchema.KvKeyError] = F(l.KvKeyError);
                c[TelemetryLogSchema.KvValueError] = F(l.KvValueError);
                break;
            case TelemetryRowKind.Event:
                c[TelemetryLogSchema.RequestId] = row.Event.RequestId;
                c[TelemetryLogSchema.TraceId] = row.Event.TraceId;
                c[TelemetryLogSchema.EventKind] = row.Event.Kind;
                c[TelemetryLogSchema.Message] = row.Event.Message;
                break;
        }
        return c;
    }

    private static void WriteCsv(TextWriter w, in TelemetryRow row)
    {
        var cells = Cells(row);
        for (int i = 0; i < cells.Length; i++)
        {
            if (i > 0) w.Write(',');
            if (cells[i] is not { } v) continue;
            if (v.AsSpan().IndexOfAny(",\"\r\n") >= 0) w.Write("\"" + v.Replace("\"", "\"\"") + "\"");
            else w.Write(v);
        }
        // The run the row's step belongs to (steps restart at 0 in each run), after the schema's columns.
        w.Write(',');
        if (row.Run is { } run) w.Write(run);
        w.WriteLine();
    }

    private static bool IsNumeric(int column) => column is not (TelemetryLogSchema.Time or TelemetryLogSchema.Kind
        or TelemetryLogSchema.RequestId or TelemetryLogSchema.TraceId or TelemetryLogSchema.EventKind or TelemetryLogSchema.Message);

    /// <summary>One JSON object per row; null columns are left out, non-finite floats written as strings.</summary>
    private static void WriteJsonLine(TextWriter w, in TelemetryRow row, System.Buffers.ArrayBufferWriter<byte> buffer)
    {
        var cells = Cells(row);
        buffer.ResetWrittenCount();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            for (int i = 0; i < cells.Length; i++)
            {
                if (cells[i] is not { } v) continue;
                string name = TelemetryLogSchema.ColumnNames[i];
                if (IsNumeric(i) && double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out double d) && double.IsFinite(d))
                    json.WritePropertyName(name);
                else
                {
                    json.WriteString(name, v);
                    continue;
                }
                json.WriteRawValue(v);
            }
            if (row.Run is { } run) json.WriteString("run", run);
            json.WriteEndObject();
        }
        w.WriteLine(Encoding.UTF8.GetString(buffer.WrittenSpan));
    }

    /// <summary>Running totals for the summary.</summary>
    private sealed class Summary
    {
        private readonly long[] _rowsByKind = new long[3];
        private long _first = long.MaxValue, _last = long.MinValue;
        private readonly HashSet<string> _requests = [];
        // Steps are numbered per run (a restarted server starts at 0 again): (run, step) names one engine step.
        // Every step seen (step or layer rows), with its duration once a step row gave one (NaN until then): one entry a
        // step, where a set of steps and a map of durations held two. A batched step has a row per token.
        private readonly Dictionary<(string?, long), float> _steps = [];
        private long _timedSteps;
        private readonly SortedDictionary<int, LayerStats> _layers = [];
        // Events: counted by kind, the first and the last ShownEvents kept to print (every one was kept and printed: a
        // log of 10,000 alert transitions printed 10,000 lines and held them all).
        private const int ShownEvents = 20;
        private readonly SortedDictionary<string, long> _eventKinds = new(StringComparer.Ordinal);
        private readonly List<TelemetryEvent> _firstEvents = [];
        private readonly Queue<TelemetryEvent> _lastEvents = new();
        private long _eventCount;
        private long _servedNonFinite; // nonfinite_logits events of served requests (not the warm-up's)
        private long _stepRows, _finiteLogitRows;
        private float _logitMin = float.PositiveInfinity, _logitMax = float.NegativeInfinity;
        private double _entropySum, _stepSecondsSum, _latencySum;
        private float _latencyMax;
        private long _latencyRows; // a sequence's first token has no previous token: its latency is NaN
        private long _warmupRows;
        private double _warmupSeconds;
        private readonly HashSet<(string?, long)> _warmupSteps = [];

        public void Add(in TelemetryRow row)
        {
            _rowsByKind[(int)row.Kind]++;
            _first = Math.Min(_first, row.TimeUnixNanos);
            _last = Math.Max(_last, row.TimeUnixNanos);
            switch (row.Kind)
            {
                case TelemetryRowKind.Step:
                    var s = row.StepRecord;
                    if (s.RequestId is not null && s.RequestId.StartsWith(TelemetryLogSchema.WarmupRequestIdPrefix, StringComparison.Ordinal))
                    {
                        // The server's warm-up: its steps include the JIT's first compilations (one took 78 ms where
                        // served steps took 1), so they are counted apart from the traffic's tokens, step times and latencies.
                        _warmupRows++;
                        if (_warmupSteps.Add((row.Run, row.Step))) _warmupSeconds += s.StepSeconds;
                        break;
                    }
                    if (s.RequestId is not null) _requests.Add(s.RequestId);
                    _stepRows++;
                    ref float seconds = ref System.Runtime.InteropServices.CollectionsMarshal.GetValueRefOrAddDefault(_steps, (row.Run, row.Step), out bool seen);
                    if (!seen || float.IsNaN(seconds))
                    {
                        seconds = s.StepSeconds;
                        _stepSecondsSum += s.StepSeconds;
                        _timedSteps++;
                    }
                    if (float.IsFinite(s.LatencySeconds))
                    {
                        _latencySum += s.LatencySeconds;
                        _latencyMax = Math.Max(_latencyMax, s.LatencySeconds);
                        _latencyRows++;
                    }
                    if (float.IsFinite(s.LogitMin) && float.IsFinite(s.LogitMax) && float.IsFinite(s.LogitEntropy))
                    {
                        _finiteLogitRows++;
                        _logitMin = Math.Min(_logitMin, s.LogitMin);
                        _logitMax = Math.Max(_logitMax, s.LogitMax);
                        _entropySum += s.LogitEntropy;
                    }
                    break;
                case TelemetryRowKind.Layer:
                    var l = row.LayerRecord!;
                    _steps.TryAdd((row.Run, row.Step), float.NaN);
                    if (!_layers.TryGetValue(l.Layer, out var stats)) _layers[l.Layer] = stats = new LayerStats();
                    stats.Add(l, row.Run);
                    break;
                case TelemetryRowKind.Event:
                    _eventCount++;
                    _eventKinds[row.Event.Kind] = _eventKinds.GetValueOrDefault(row.Event.Kind) + 1;
                    if (_firstEvents.Count < ShownEvents) _firstEvents.Add(row.Event);
                    else
                    {
                        _lastEvents.Enqueue(row.Event);
                        if (_lastEvents.Count > ShownEvents) _lastEvents.Dequeue();
                    }
                    if (row.Event.RequestId is not null && !row.Event.RequestId.StartsWith(TelemetryLogSchema.WarmupRequestIdPrefix, StringComparison.Ordinal))
                    {
                        _requests.Add(row.Event.RequestId);
                        if (row.Event.Kind == "nonfinite_logits") _servedNonFinite++;
                    }
                    break;
            }
        }

        /// <summary>
        /// One run: its context, as always. Several (a restarted server, replicas sharing a directory): each run with its
        /// files, the context every run shares, then what differs, run by run.
        /// </summary>
        private static void WriteContext(TextWriter w, IReadOnlyList<TelemetryLogRun> runs)
        {
            if (runs.Count <= 1)
            {
                w.WriteLine("context:");
                if (runs.Count == 1)
                    foreach (var (k, v) in runs[0].Context.OrderBy(p => p.Key, StringComparer.Ordinal)) w.WriteLine($"  {k} = {v}");
                return;
            }
            w.WriteLine($"runs: {runs.Count} (steps are numbered per run)");
            foreach (var r in runs)
                w.WriteLine($"  {RunName(r.Id)}  {r.Files.Count} file{(r.Files.Count == 1 ? "" : "s")}, first {Path.GetFileName(r.Files[0].Path)}");
            var keys = new SortedSet<string>(StringComparer.Ordinal);
            foreach (var r in runs) keys.UnionWith(r.Context.Keys);
            var shared = new List<string>();
            var differing = new List<string>();
            foreach (var k in keys)
            {
                string? first = runs[0].Context.GetValueOrDefault(k);
                bool same = first is not null;
                foreach (var r in runs) same &= r.Context.TryGetValue(k, out var v) && v == first;
                (same ? shared : differing).Add(k);
            }
            w.WriteLine("context (every run):");
            foreach (var k in shared) w.WriteLine($"  {k} = {runs[0].Context[k]}");
            if (differing.Count == 0) return;
            w.WriteLine("context (by run):");
            foreach (var r in runs)
            {
                w.WriteLine($"  {RunName(r.Id)}:");
                foreach (var k in differing) w.WriteLine($"    {k} = {r.Context.GetValueOrDefault(k) ?? "(absent)"}");
            }
        }

        /// <summary>
        /// What the runs' health.sample_every says about the step rows: null when every step was logged (1, or a log
        /// without the key); else that the counts are a sample, and of what share.
        /// </summary>
        private static string? SamplingNote(IReadOnlyList<TelemetryLogRun> runs)
        {
            // Every run's value (a log without the key counts as every step logged): one run at 1 beside one at 8 is a
            // mixed log, not "about 1/8" of everything.
            var every = new SortedSet<int>();
            foreach (var r in runs)
                every.Add(r.Context.TryGetValue("health.sample_every", out var v) && int.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out int n) ? n : 1);
            if (every.Count == 0 || every is { Count: 1, Min: 1 }) return null;
            if (every.Count == 1 && every.Min > 1)
                return $"(sampled: the server logs one engine step in {every.Min} (--health-every {every.Min}, health.sample_every), so steps, tokens and requests here are about 1/{every.Min} of those served; /metrics counts them all, `serve --health-every 1` logs every step)";
            return "(sampled: health.sample_every differs by run or is 0 (see context), so steps, tokens and requests here are a sample of those served; /metrics counts them all)";
        }

        private static string RunName(string? id) => id is null ? "run (no run id: written before run ids)" : "run " + id;

        public void Write(TextWriter w, TelemetryLogReader reader)
        {
            w.WriteLine("files:");
            foreach (var f in reader.Files)
                w.WriteLine($"  {f.Path}  {f.Bytes:N0} bytes{(f.HasFooter ? "" : "  (no footer: still being written, or the writer was killed)")}");
            foreach (var line in FileNotes(reader)) w.WriteLine("  " + line);
            WriteContext(w, reader.Runs);
            long total = _rowsByKind[0] + _rowsByKind[1] + _rowsByKind[2];
            if (total == 0)
            {
                w.WriteLine("rows: 0");
                return;
            }
            double span = (_last - _first) / 1e9;
            w.WriteLine($"time: {FormatTime(_first)} .. {FormatTime(_last)} ({span.ToString("0.###", CultureInfo.InvariantCulture)} s)");
            w.WriteLine($"rows: {total:N0} (step {_rowsByKind[0]:N0}, layer {_rowsByKind[1]:N0}, event {_rowsByKind[2]:N0})");
            // A server logs step rows on sampled steps only (--health-every N, 8 by default): the counts are a sample,
            // and nothing said so (a log of 960 tokens served read "tokens: 240").
            string? sampling = SamplingNote(reader.Runs);
            string logged = sampling is null ? "" : " logged";
            w.WriteLine($"requests: {_requests.Count:N0}{(sampling is null ? "" : " (with a logged step)")}");
            // Warm-up steps are counted on the warm-up line (their layer rows, the model's numbers, stay in the tables below).
            int servedSteps = 0;
            foreach (var key in _steps.Keys) if (!_warmupSteps.Contains(key)) servedSteps++;
            w.WriteLine($"steps: {servedSteps:N0}{logged}");
            if (sampling is not null) w.WriteLine("  " + sampling);
            if (_stepRows > 0)
            {
                w.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"tokens: {_stepRows:N0}{logged}, step time mean {_stepSecondsSum / _timedSteps * 1e3:0.###} ms over {_timedSteps:N0} step{(_timedSteps == 1 ? "" : "s")}, {(_latencyRows == 0 ? "no token latencies" : $"latency mean {_latencySum / _latencyRows * 1e3:0.###} ms, max {_latencyMax * 1e3:0.###} ms")}"));
                string logits = _finiteLogitRows == 0 ? "no finite rows"
                    : string.Create(CultureInfo.InvariantCulture, $"min {_logitMin:0.####}, max {_logitMax:0.####}, entropy mean {_entropySum / _finiteLogitRows:0.####}");
                // A sequence whose logits went non-finite ends before its token is logged: the events count them.
                // (Served sequences: a warm-up's own are the load's failure, not a request's.)
                w.WriteLine($"logits: {logits}; sequences ended by non-finite logits: {_servedNonFinite:N0}");
            }
            // Every served sequence ended so (no served token logged): the count went with the tokens line.
            else if (_servedNonFinite > 0)
                w.WriteLine($"tokens: none logged; sequences ended by non-finite logits: {_servedNonFinite:N0}");
            if (_warmupRows > 0)
                w.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"warm-up: {_warmupRows:N0} token{(_warmupRows == 1 ? "" : "s")} over {_warmupSteps.Count:N0} step{(_warmupSteps.Count == 1 ? "" : "s")}, {_warmupSeconds * 1e3:0.###} ms (the server's own requests before serving; not in the figures above{(_layers.Count > 0 ? ", but in the layer tables below, which are the model's numbers: their means can differ from one request's `generate --health`" : "")})"));
            if (_layers.Count > 0)
            {
                WriteTable(w, "saturation % (share of codes at the clamp, ±127 at 8 bits), mean / max", l => l.Saturation, 100, "0.000");
                WriteTable(w, "underflow % (share of zero codes), mean / max", l => l.Underflow, 100, "0.000");
                WriteTable(w, "crest factor (max|x| / rms), mean / max", l => l.Crest, 1, "0.00");
                w.WriteLine("residual stream:");
                w.WriteLine($"  {"layer",5} {"rows",8} {"rms mean",10} {"rms max",10} {"max|x|",10} {"change mean",12} {"change max",11}");
                foreach (var (layer, s) in _layers)
                    w.WriteLine($"  {layer,5} {s.Rows,8:N0} {G(s.Rms.Mean, s.Rms),10} {G(s.Rms.Max, s.Rms),10} {G(s.MaxAbs.Max, s.MaxAbs),10} {G(s.Change.Mean, s.Change),12} {G(s.Change.Max, s.Change),11}");
                // The KV cache's rounding, where the rows have it (a log written before the columns existed has none) and
                // the cache rounds (an f32 cache's is 0 throughout).
                bool kv = false;
                foreach (var (_, s) in _layers) kv |= s.KvKey.Count > 0 && s.KvKey.Max > 0;
                if (kv)
                {
                    w.WriteLine("KV cache rounding % (||x - stored|| / ||x|| of the rows written), mean / max:");
                    w.WriteLine($"  {"layer",5} {"keys",17} {"values",17}");
                    foreach (var (layer, s) in _layers)
                        w.WriteLine($"  {layer,5} {Percent(s.KvKey),17} {Percent(s.KvValue),17}");
                }
                // The statistics above are over finite values: the rows where a layer blew up (NaN or ±∞, which the
                // engine logs as they are) are named here, with the first step, as what to look at first.
                bool any = false;
                foreach (var (_, s) in _layers) any |= s.NonFiniteRows > 0;
                if (!any) w.WriteLine("non-finite values (NaN, ±∞) in layer rows: none");
                else
                {
                    w.WriteLine("non-finite values (NaN, ±∞) in layer rows (left out of the statistics above):");
                    foreach (var (layer, s) in _layers)
                        if (s.NonFiniteRows > 0)
                            w.WriteLine($"  layer {layer}: {s.NonFiniteRows:N0} of {s.Rows:N0} rows, first at step {s.FirstNonFiniteStep}{(reader.Runs.Count > 1 && s.FirstNonFiniteRun is { } run ? " of run " + run : "")}, {FormatTime(s.FirstNonFiniteTime)} ({s.FirstNonFiniteFields})");
                }
            }
            w.WriteLine(_eventCount == 0 ? "events: 0" : $"events: {_eventCount:N0} ({string.Join(", ", _eventKinds.Select(k => $"{k.Key} {k.Value:N0}"))})");
            void Line(in TelemetryEvent e) => w.WriteLine($"  {FormatTime(e.TimeUnixNanos)}  {e.Kind}{(e.RequestId is null ? "" : "  request " + e.RequestId)}  {e.Message}");
            foreach (var e in _firstEvents) Line(e);
            long between = _eventCount - _firstEvents.Count - _lastEvents.Count;
            if (between > 0) w.WriteLine($"  ... {between:N0} more (--export jsonl lists every event) ...");
            foreach (var e in _lastEvents) Line(e);
        }

        private void WriteTable(TextWriter w, string title, Func<LayerStats, Stat[]> pick, double scale, string format)
        {
            w.WriteLine(title + ":");
            var header = new StringBuilder($"  {"layer",5}");
            foreach (var label in HealthNames.InputLabels) header.Append($" {label,17}");
            w.WriteLine(header.ToString());
            foreach (var (layer, s) in _layers)
            {
                var line = new StringBuilder($"  {layer,5}");
                foreach (var stat in pick(s))
                {
                string cell = stat.Count == 0 ? "-" // every value non-finite: no statistic (the max read 0)
                    : (stat.Mean * scale).ToString(format, CultureInfo.InvariantCulture) + " / " + (stat.Max * scale).ToString(format, CultureInfo.InvariantCulture);
                    line.Append($" {cell,17}");
                }
                w.WriteLine(line.ToString());
            }
        }

        private static string G(double v, in Stat of) => of.Count == 0 ? "-" : v.ToString("G5", CultureInfo.InvariantCulture);
    }

    /// <summary>Mean and max over the finite values (the non-finite ones are counted by the layer's row).</summary>
    private struct Stat
    {
        private double _sum;
        private long _count;
        public double Max;

        public readonly long Count => _count;

        public readonly double Mean => _count == 0 ? double.NaN : _sum / _count;

        public void Add(float v)
        {
            if (!float.IsFinite(v)) return;
            Max = _count == 0 ? v : Math.Max(Max, v);
            _sum += v;
            _count++;
        }
    }

    private static string Percent(Stat s) => s.Count == 0 ? "-"
        : (s.Mean * 100).ToString("0.000", CultureInfo.InvariantCulture) + " / " + (s.Max * 100).ToString("0.000", CultureInfo.InvariantCulture);

    private sealed class LayerStats
    {
        public long Rows;
        public readonly Stat[] Saturation = new Stat[HealthNames.InputCount], Underflow = new Stat[HealthNames.InputCount], Crest = new Stat[HealthNames.InputCount];
        public Stat Rms, MaxAbs, Change, KvKey, KvValue;
        public long NonFiniteRows, FirstNonFiniteStep = -1, FirstNonFiniteTime = long.MaxValue;
        public string FirstNonFiniteFields = "";
        public string? FirstNonFiniteRun;

        public void Add(TelemetryLayerRecord l, string? run)
        {
            Rows++;
            List<string>? bad = null;
            for (int k = 0; k < HealthNames.InputCount; k++)
            {
                if (!float.IsFinite(l.Saturation[k])) (bad ??= []).Add("saturation " + HealthNames.InputLabels[k]);
                if (!float.IsFinite(l.Underflow[k])) (bad ??= []).Add("underflow " + HealthNames.InputLabels[k]);
                if (!float.IsFinite(l.CrestFactor[k])) (bad ??= []).Add("crest " + HealthNames.InputLabels[k]);
            }
            if (!float.IsFinite(l.ResidualRms)) (bad ??= []).Add("residual rms");
            if (!float.IsFinite(l.ResidualMaxAbs)) (bad ??= []).Add("residual max|x|");
            if (!float.IsFinite(l.ResidualChange)) (bad ??= []).Add("residual change");
            if (bad is not null)
            {
                NonFiniteRows++;
                // The earliest by time: steps restart in each run of a directory, so the smallest step named another run.
                if (l.TimeUnixNanos < FirstNonFiniteTime)
                {
                    FirstNonFiniteTime = l.TimeUnixNanos;
                    FirstNonFiniteStep = l.Step;
                    FirstNonFiniteRun = run;
                    FirstNonFiniteFields = string.Join(", ", bad);
                }
            }
            for (int k = 0; k < HealthNames.InputCount; k++)
            {
                Saturation[k].Add(l.Saturation[k]);
                Underflow[k].Add(l.Underflow[k]);
                Crest[k].Add(l.CrestFactor[k]);
            }
            Rms.Add(l.ResidualRms);
            MaxAbs.Add(l.ResidualMaxAbs);
            Change.Add(l.ResidualChange);
            KvKey.Add(l.KvKeyError); // NaN (not recorded, or a non-finite row: said above by the residual) is left out
            KvValue.Add(l.KvValueError);
        }
    }

    /// <summary>The points of one metric per layer, x in seconds since the first row.</summary>
    private sealed class PlotData(string metric, int input)
    {
        // Raw times: files are read run by run, not in time order (replicas overlap, a clock stepped back), so the origin
        // is the earliest row and each series is drawn in time order; the first row read as origin gave negative times
        // and lines that ran back and forth.
        // One series per (run, layer): two replicas logging into one folder at once drew each layer's line zig-zagging
        // between the two models' values.
        private readonly SortedDictionary<(string Run, int Layer), List<(long T, double Y)>> _series = new(
            Comparer<(string Run, int Layer)>.Create((a, b) => string.CompareOrdinal(a.Run, b.Run) is var c && c != 0 ? c : a.Layer.CompareTo(b.Layer)));
        private long _origin = long.MaxValue;

        /// <summary>The lines drawn (set by <see cref="Write"/>).</summary>
        public int SeriesCount { get; private set; }

        /// <summary>Points with a finite value: none means every line is a gap, an empty chart.</summary>
        public long FinitePoints { get; private set; }

        /// <summary>Points in all.</summary>
        public long Points { get; private set; }

        public string Metric => metric;

        public string Title => metric is "saturation" or "underflow" or "crest" ? $"{metric} {HealthNames.InputLabels[input]}" : metric;

        public void Add(in TelemetryRow row)
        {
            if (row.Kind != TelemetryRowKind.Layer) return;
            var l = row.LayerRecord!;
            float y = metric switch
            {
                "saturation" => l.Saturation[input],
                "underflow" => l.Underflow[input],
                "crest" => l.CrestFactor[input],
                "residual_rms" => l.ResidualRms,
                "kv_err_k" => l.KvKeyError,
                "kv_err_v" => l.KvValueError,
                _ => l.ResidualChange,
            };
            var key = (row.Run ?? "", l.Layer);
            if (!_series.TryGetValue(key, out var points)) _series[key] = points = [];
            // A NaN or ∞ is kept: the plot draws it as a gap (dropped, a layer that blew up was drawn as a clean line).
            points.Add((row.TimeUnixNanos, y));
            Points++;
            if (float.IsFinite(y)) FinitePoints++;
            _origin = Math.Min(_origin, row.TimeUnixNanos);
        }

        public void Write(TextWriter w, IReadOnlyList<TelemetryLogFile> files)
        {
            var plot = new SvgLinePlot
            {
                Title = $"{Title} per layer ({(files.Count == 1 ? Path.GetFileName(files[0].Path) : files.Count + " files")})",
                XLabel = _origin == long.MaxValue ? "time (s)" : $"time since {FormatTime(_origin)[..19]}Z (s)",
                YLabel = metric switch
                {
                    "saturation" or "underflow" => $"{metric} (share of codes)",
                    "crest" => "crest factor (max|x| / rms)",
                    "residual_rms" => "residual rms",
                    "kv_err_k" or "kv_err_v" => "KV rounding ||x - stored|| / ||x||",
                    _ => "residual change (relative)",
                },
            };
            // Runs one after another (a restarted server) continue each layer's line; runs that overlap in time (replicas
            // logging into one folder) get a line each per layer, named by run.
            var spans = new Dictionary<string, (long First, long Last)>(StringComparer.Ordinal);
            foreach (var ((run, _), points) in _series)
                foreach (var (t, _) in points)
                    spans[run] = spans.TryGetValue(run, out var sp) ? (Math.Min(sp.First, t), Math.Max(sp.Last, t)) : (t, t);
            var ordered = spans.Values.OrderBy(sp => sp.First).ToList();
            bool overlap = false;
            for (int i = 1; i < ordered.Count; i++) overlap |= ordered[i].First <= ordered[i - 1].Last;
            var lines = new SortedDictionary<(string Run, int Layer), List<(long T, double Y)>>(_series.Comparer);
            foreach (var ((run, layer), points) in _series)
            {
                var key = overlap ? (run, layer) : ("", layer);
                if (!lines.TryGetValue(key, out var line)) lines[key] = line = [];
                line.AddRange(points);
            }
            foreach (var ((run, layer), points) in lines)
            {
                points.Sort((a, b) => a.T.CompareTo(b.T));
                var xy = new List<(double X, double Y)>(points.Count);
                foreach (var (t, y) in points) xy.Add(((t - _origin) / 1e9, y));
                plot.Series.Add(new(overlap ? $"run {(run.Length == 0 ? "(no id)" : run)} layer {layer}" : $"layer {layer}", xy));
            }
            SeriesCount = lines.Count;
            plot.Write(w);
        }
    }
}
