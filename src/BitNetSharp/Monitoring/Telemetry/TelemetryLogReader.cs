using System.Text;
using Apache.Arrow;
using Apache.Arrow.Ipc;
using Apache.Arrow.Types;

namespace BitNetSharp.Monitoring.Telemetry;

/// <summary>One file of a telemetry log: its size, whether it was closed with a footer, and its context metadata.</summary>
/// <param name="NoSchema">The file ends before its schema (created, then cut off before the first batch was written): it holds no rows.</param>
/// <param name="RunId">The writer that made it (<see cref="TelemetryLogSchema.RunKey"/>); null for files written before run ids.</param>
public sealed record TelemetryLogFile(string Path, long Bytes, bool HasFooter, IReadOnlyDictionary<string, string> Context, bool NoSchema = false,
    string? RunId = null);

/// <summary>One writer's files (a server run) within a log, oldest first, and its context.</summary>
/// <param name="Id">The run id, or null for the files that have none (written before run ids existed).</param>
public sealed record TelemetryLogRun(string? Id, IReadOnlyList<TelemetryLogFile> Files, IReadOnlyDictionary<string, string> Context);

/// <summary>
/// One row of the log as the record it was written from: <see cref="StepRecord"/>, <see cref="LayerRecord"/> or
/// <see cref="Event"/>, by <see cref="Kind"/>.
/// </summary>
public readonly record struct TelemetryRow(
    TelemetryRowKind Kind,
    long TimeUnixNanos,
    long Step,
    TelemetryStepRecord StepRecord,
    TelemetryLayerRecord? LayerRecord,
    TelemetryEvent Event)
{
    /// <summary>The run (writer) the row comes from; null in files written before run ids. Steps are numbered per run.</summary>
    public string? Run { get; init; }

    /// <summary>The layer of a layer row, else -1.</summary>
    public int Layer => LayerRecord?.Layer ?? -1;

    /// <summary>The request of a step or event row, else null.</summary>
    public string? RequestId => Kind switch
    {
        TelemetryRowKind.Step => StepRecord.RequestId,
        TelemetryRowKind.Event => Event.RequestId,
        _ => null,
    };

    public DateTimeOffset Time => DateTimeOffset.UnixEpoch.AddTicks(TimeUnixNanos / 100);
}

/// <summary>
/// Reads telemetry log files written by <see cref="TelemetryLogWriter"/>, in time order. A file is read as the IPC
/// stream that follows its 8-byte magic, so a file without footer (writer killed, or still running) yields all its
/// complete batches; a torn final message is ignored and the file listed in <see cref="TruncatedFiles"/>.
/// </summary>
public sealed class TelemetryLogReader
{
    private static readonly byte[] Magic = "ARROW1\0\0"u8.ToArray();
    private readonly List<string> _truncated = [];
    private readonly List<string> _vanished = [];

    private TelemetryLogReader(List<TelemetryLogFile> files) => Files = files;

    /// <summary>The files, oldest first.</summary>
    public IReadOnlyList<TelemetryLogFile> Files { get; }

    /// <summary>The context of the first file (every file of one writer has the same; see <see cref="Runs"/> for the others).</summary>
    public IReadOnlyDictionary<string, string> Context => Files.Count > 0 ? Files[0].Context : new Dictionary<string, string>();

    /// <summary>
    /// The runs (writers) whose files were opened, in the order their first file appears; files cut off before their
    /// schema belong to none. Several runs share a directory when a server restarts or replicas log side by side.
    /// </summary>
    public IReadOnlyList<TelemetryLogRun> Runs
    {
        get
        {
            var runs = new List<TelemetryLogRun>();
            var files = new Dictionary<string, List<TelemetryLogFile>>(StringComparer.Ordinal);
            foreach (var f in Files)
            {
                if (f.NoSchema) continue;
                string key = f.RunId ?? "";
                if (!files.TryGetValue(key, out var list))
                {
                    files[key] = list = [];
                    runs.Add(new TelemetryLogRun(f.RunId, list, f.Context));
                }
                list.Add(f);
            }
            return runs;
        }
    }

    /// <summary>Files whose last message was torn, found while reading.</summary>
    public IReadOnlyList<string> TruncatedFiles => _truncated;

    /// <summary>Files <see cref="Open"/> left out as copies of another it reads (the same run id and file name; the longer is read).</summary>
    public IReadOnlyList<(string Skipped, string Kept)> DuplicateFiles => _duplicates;

    private readonly List<(string Skipped, string Kept)> _duplicates = [];

    /// <summary>Files listed by <see cref="Open"/> that were gone when read (a live writer's size cap deletes the oldest).</summary>
    public IReadOnlyList<string> VanishedFiles => _vanished;

    /// <summary>
    /// Opens log files (a directory stands for its <c>*.arrow</c> files) and checks each one's header and schema.
    /// </summary>
    /// <exception cref="FileNotFoundException">A path does not exist.</exception>
    /// <exception cref="InvalidDataException">A file is not an Arrow telemetry log of ours; the message names it.</exception>
    public static TelemetryLogReader Open(params IEnumerable<string> paths)
    {
        var all = new List<string>();
        var seen = new HashSet<string>(StringComparer.Ordinal); // a file named twice (or by its folder too) is read once
        foreach (var p in paths)
        {
            if (Directory.Exists(p))
            {
                foreach (var f in Directory.EnumerateFiles(p, "*" + TelemetryLogSchema.FileExtension))
                    if (seen.Add(Path.GetFullPath(f))) all.Add(Path.GetFullPath(f));
            }
            else if (File.Exists(p))
            {
                if (seen.Add(Path.GetFullPath(p))) all.Add(Path.GetFullPath(p));
            }
            else if (LogFilesOf(p) is { Count: > 0 } named)
            {
                // The path given to the writer (`serve --telemetry-log logs/run.arrow`), which writes run-<time>-NNNN.arrow
                // beside it: its files, as the server's help says to read them with `bitnet logs` (that was "no such file").
                foreach (var f in named)
                    if (seen.Add(f)) all.Add(f);
            }
            else
                throw new FileNotFoundException(p.EndsWith(TelemetryLogSchema.FileExtension, StringComparison.OrdinalIgnoreCase)
                    ? $"{p}: no such telemetry log file or directory (nor {Path.GetFileNameWithoutExtension(p)}-*{TelemetryLogSchema.FileExtension} files a writer given this path writes)."
                    : $"{p}: no such telemetry log file or directory.", p);
        }
        var files = new List<TelemetryLogFile>();
        var vanished = new List<string>();
        foreach (var p in TelemetryLogSchema.InTimeOrder(all))
        {
            try
            {
                files.Add(Describe(p));
            }
            catch (FileNotFoundException) when (!File.Exists(p))
            {
                // Listed, then deleted by a live writer's size cap before it was opened: the others still read.
                vanished.Add(p);
            }
        }
        // A copy of a file read beside it (a live folder and a backup of it: the same run id and file name) is read once,
        // the longer of the two (a copy cut short is the shorter; a live file grows): every row, token and event was
        // counted twice, while steps and requests, counted by (run, step), were not.
        var skipped = new List<(string Path, int KeptAt)>();
        var byName = new Dictionary<(string Run, string Name), int>();
        var kept = new List<TelemetryLogFile>();
        foreach (var f in files)
        {
            if (f.RunId is null) { kept.Add(f); continue; }
            var key = (f.RunId, Path.GetFileName(f.Path));
            if (byName.TryGetValue(key, out int at))
            {
                var first = kept[at];
                // Of two of one length, the one named first (the command line's order, not the time order's tie-break).
                if (f.Bytes > first.Bytes || f.Bytes == first.Bytes && all.IndexOf(f.Path) < all.IndexOf(first.Path)) { kept[at] = f; skipped.Add((first.Path, at)); }
                else skipped.Add((f.Path, at));
                continue;
            }
            byName[key] = kept.Count;
            kept.Add(f);
        }
        // Each note names the copy finally read (with three copies, not the one a later copy replaced).
        var duplicates = new List<(string Skipped, string Kept)>(skipped.Count);
        foreach (var (path, at) in skipped) duplicates.Add((path, kept[at].Path));
        var reader = new TelemetryLogReader(kept);
        reader._vanished.AddRange(vanished);
        reader._duplicates.AddRange(duplicates);
        return reader;
    }

    /// <summary>The files a writer given <paramref name="path"/> (NAME.arrow) writes: NAME-yyyyMMddTHHmmssZ-NNNN.arrow in its folder.</summary>
    private static List<string> LogFilesOf(string path)
    {
        var files = new List<string>();
        if (!path.EndsWith(TelemetryLogSchema.FileExtension, StringComparison.OrdinalIgnoreCase)) return files; // as the writer takes it
        string full = Path.GetFullPath(path);
        string? directory = Path.GetDirectoryName(full);
        string prefix = Path.GetFileNameWithoutExtension(full);
        if (directory is null || prefix.Length == 0 || !Directory.Exists(directory)) return files;
        foreach (var f in Directory.EnumerateFiles(directory, prefix + "-*" + TelemetryLogSchema.FileExtension))
            if (TelemetryLogSchema.TryParseFileName(f, prefix, out _, out _)) files.Add(Path.GetFullPath(f));
        return files;
    }

    /// <summary>
    /// Where `bitnet logs --follow` starts: the newest file a writer holds open (no footer, and an exclusive open fails),
    /// else the newest. The newest name may be a second instance's finished file beside a live one (following it never
    /// showed the live writer's rows); a footerless file nobody holds is a killed writer's, and starting there printed
    /// every later file from its start once it had been idle a while.
    /// </summary>
    public static string FollowStart(IReadOnlyList<TelemetryLogFile> files)
    {
        if (files.Count == 0) throw new ArgumentException("No telemetry log files to follow.", nameof(files));
        for (int i = files.Count - 1; i >= 0; i--)
            if (!files[i].HasFooter && TelemetryLogWriter.IsHeldByAWriter(files[i].Path)) return files[i].Path;
        return files[^1].Path;
    }


    /// <summary>Whether the file ends with the Arrow file footer's closing magic (a finished file); leaves the position anywhere.</summary>
    private static bool EndsWithFooter(Stream stream)
    {
        long length = stream.Length;
        if (length < 2 * Magic.Length) return false;
        var tail = new byte[6];
        stream.Position = length - tail.Length;
        return stream.ReadAtLeast(tail, tail.Length, throwOnEndOfStream: false) == tail.Length && tail.AsSpan().SequenceEqual(Magic.AsSpan(0, 6));
    }

    /// <summary>Checks one file's header and schema and reads its context.</summary>
    public static TelemetryLogFile Describe(string path)
    {
        using var stream = OpenShared(path);
        long length = stream.Length;
        var head = new byte[Magic.Length];
        int got = stream.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        // Cut off before its magic was whole (an empty file, an interrupted copy): no rows, as a file cut inside its
        // schema is, rather than one such file making the whole directory unreadable.
        if (got < Magic.Length && head.AsSpan(0, got).SequenceEqual(Magic.AsSpan(0, got)))
            return new TelemetryLogFile(path, length, false, new Dictionary<string, string>(), NoSchema: true);
        if (got < head.Length || !head.AsSpan().SequenceEqual(Magic))
            throw new InvalidDataException($"{path}: not an Arrow IPC file (no ARROW1 magic).");
        bool footer = EndsWithFooter(stream);
        stream.Position = Magic.Length;
        Schema? schema;
        try
        {
            using var reader = new ArrowStreamReader(stream, leaveOpen: true);
            schema = reader.Schema;
        }
        catch (Exception e)
        {
            // A file cut off inside its schema (killed right after it was created): no rows, not a reason to refuse the
            // whole directory. A complete file (with its footer) whose schema is unreadable is damaged. A corrupt length
            // makes Arrow ask for gigabytes: that OutOfMemoryException is the file's fault, not the machine's.
            if (!footer) return new TelemetryLogFile(path, length, false, new Dictionary<string, string>(), NoSchema: true);
            throw new InvalidDataException($"{path}: the schema (the message from byte {Magic.Length}) of a complete log file is damaged ({ArrowSaid(e)}); the file cannot be read.", e);
        }
        if (schema is null && !footer) return new TelemetryLogFile(path, length, false, new Dictionary<string, string>(), NoSchema: true);
        if (schema is null || !schema.HasMetadata || !schema.Metadata.ContainsKey(TelemetryLogSchema.MarkerKey))
            throw new InvalidDataException($"{path}: an Arrow file, but not a BitNetSharp telemetry log (no {TelemetryLogSchema.MarkerKey} metadata).");
        string version = schema.Metadata[TelemetryLogSchema.MarkerKey];
        if (version != TelemetryLogSchema.Version)
            throw new InvalidDataException(
                $"{path}: a telemetry log of schema version \"{version}\"; this bitnet reads version {TelemetryLogSchema.Version}. Read it with the bitnet that wrote it, or a newer one.");
        if (schema.GetFieldIndex("kind", StringComparer.Ordinal) < 0 || schema.GetFieldIndex("time", StringComparer.Ordinal) < 0)
            throw new InvalidDataException($"{path}: a telemetry log without kind or time column.");
        CheckColumnTypes(path, schema);
        var context = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (k, v) in schema.Metadata)
            if (!TelemetryLogSchema.IsReserved(k)) context[k] = v;
        return new TelemetryLogFile(path, length, footer, context, RunId: RunOf(schema));
    }

    /// <summary>
    /// A column of another type than the schema's (a file rewritten by another tool) read as absent: a layer column of
    /// int32 gave layer -1 on every row, a time of another type 1970. Refused naming the column; the time column may
    /// have any unit (read by it), the kind column plain strings.
    /// </summary>
    private static void CheckColumnTypes(string path, Schema schema)
    {
        // A column missing while the file holds one of a name this reader does not know is a renamed (damaged) column:
        // "sat_qkv" read as "sat_qkw" gave every row NaN saturation, summed up as non-finite values the model never had.
        // Older files lack the columns added since (all known ones); newer files add columns (none known missing).
        string? missing = null;
        for (int c = 0; c < TelemetryLogSchema.ColumnCount && missing is null; c++)
            if (schema.GetFieldIndex(TelemetryLogSchema.ColumnNames[c], StringComparer.Ordinal) < 0) missing = TelemetryLogSchema.ColumnNames[c];
        if (missing is not null)
            foreach (var f in schema.FieldsList)
                if (System.Array.IndexOf(TelemetryLogSchema.ColumnNames, f.Name) < 0)
                    throw new InvalidDataException($"{path}: the column {missing} is missing and the file has a column \"{f.Name}\" this reader does not know; the file is damaged (a column name overwritten) or was rewritten by another tool.");
        for (int c = 0; c < TelemetryLogSchema.ColumnCount; c++)
        {
            int index = schema.GetFieldIndex(TelemetryLogSchema.ColumnNames[c], StringComparer.Ordinal);
            if (index < 0) continue;
            var actual = schema.GetFieldByIndex(index).DataType;
            var expected = TelemetryLogSchema.TypeOf(c);
            bool ok = c switch
            {
                TelemetryLogSchema.Time => actual is TimestampType,
                TelemetryLogSchema.Kind => actual is StringType || (actual is DictionaryType d && d.ValueType is StringType && d.IndexType is Int8Type or Int16Type or Int32Type),
                _ => actual.TypeId == expected.TypeId,
            };
            if (!ok)
                throw new InvalidDataException(
                    $"{path}: column {TelemetryLogSchema.ColumnNames[c]} is {actual.Name}, where a telemetry log has {expected.Name}; the file was rewritten with other types, or is damaged.");
        }
    }

    /// <summary>
    /// The RecordBatches of every file in order; the caller owns (and may dispose) each. Cancellation throws
    /// <see cref="OperationCanceledException"/> (ending quietly made a cut-short read look complete: an export renamed
    /// into place and reported as written).
    /// </summary>
    public IEnumerable<RecordBatch> ReadBatches(CancellationToken cancellation = default)
    {
        foreach (var file in Files)
        {
            cancellation.ThrowIfCancellationRequested();
            if (file.NoSchema)
            {
                lock (_truncated) if (!_truncated.Contains(file.Path)) _truncated.Add(file.Path);
                continue;
            }
            FileStream stream;
            try
            {
                stream = OpenShared(file.Path);
            }
            catch (FileNotFoundException)
            {
                // Deleted since it was listed (a live writer's size cap removes the oldest files): the others still read.
                lock (_vanished) if (!_vanished.Contains(file.Path)) _vanished.Add(file.Path);
                continue;
            }
            using var _ = stream;
            // Where the messages end: before the footer of a finished file, at the end of a live or killed one. Looked at
            // now, not when listed: a live file closed since (rotation, shutdown) has its footer, and its end-of-stream
            // marker before it read as damage.
            bool hasFooter = EndsWithFooter(stream);
            long messagesEnd = hasFooter ? FooterStart(stream, file.Path) : stream.Length;
            int footerBatches = hasFooter ? FooterBatchCount(stream, file.Path) : -1;
            stream.Position = Magic.Length;
            using var reader = new ArrowStreamReader(stream, leaveOpen: true);
            // Where the schema ends: a footer (which repeats the schema) cut short is bounded by it.
            long schemaEnd;
            try
            {
                GC.KeepAlive(reader.Schema);
                schemaEnd = stream.Position;
            }
            catch (Exception)
            {
                schemaEnd = stream.Length;
            }
            int batches = 0;
            while (true)
            {
                cancellation.ThrowIfCancellationRequested();
                long at = stream.Position;
                // The messages this read takes are looked at first, without reading their bodies: a damaged body length
                // (2 GB) made Arrow allocate it (2 GB of RSS), and in a file without footer read as a write cut short,
                // the rows after it dropped with exit 0.
                var peeked = Peek(stream, at, stream.Length, out long where);
                if (peeked == Peeked.Damaged)
                    throw new InvalidDataException($"{file.Path}: damaged message at byte {where}: its body length disagrees with the buffers it lists; the rows from there on cannot be read.");
                if (peeked == Peeked.Cut)
                {
                    if (hasFooter)
                        throw new InvalidDataException($"{file.Path}: damaged message at byte {where} of a complete log file (it runs past the end of the file); the rows from there on cannot be read.");
                    MarkTruncated(file.Path); // a write cut short (kill -9, a full disk): every batch before it read
                    break;
                }
                stream.Position = at;
                if (!TryReadNext(reader, out var batch, out var error))
                {
                    // In a finished file an unreadable message is damage, and the rows after it must not vanish without a
                    // word. Without a footer, a message the end of the file cuts is a write cut short (kill -9, disk full,
                    // a copy interrupted); one that is whole is damage all the same, reported with what Arrow said (a
                    // file rewritten with compressed buffers was a "torn final batch" and its rows gone).
                    if (hasFooter)
                        throw new InvalidDataException($"{file.Path}: damaged message at byte {where} of a complete log file ({error}); the rows from there on cannot be read.");
                    // The end as it is now: a live file grows while it is read, and a batch half written past the length
                    // seen at open is a write in progress, not damage.
                    if (!CutByTheEnd(stream, at, stream.Length))
                        throw new InvalidDataException($"{file.Path}: unreadable message at byte {where} ({error}). The file has no footer, but the message is whole, so it was not cut short by a crash: the file is damaged there, and the rows from there on cannot be read.");
                    MarkTruncated(file.Path);
                    break;
                }
                if (batch is null)
                {
                    // The end-of-stream marker comes last; read earlier, it is a length overwritten with zeros. In a file
                    // without footer a footer cut short may follow it (disk full, a copy interrupted), or the zeros a host
                    // crash leaves: the rows before it are all there.
                    long after = stream.Position;
                    if (hasFooter)
                    {
                        if (after < messagesEnd)
                            throw new InvalidDataException($"{file.Path}: an end-of-stream marker at byte {at}, but the messages go on to byte {messagesEnd}; the file is damaged there.");
                        // The footer lists the batches the writer wrote: a batch copied once more (or one lost) in a
                        // complete file counted every row of it twice, exit 0.
                        if (batches != footerBatches)
                            throw new InvalidDataException($"{file.Path}: the file's footer lists {footerBatches} record batches, but its messages hold {batches}; the file is damaged.");
                        break;
                    }
                    long end = stream.Length;
                    // Fewer than 8 bytes (a length prefix cut short) read as the end too; a marker with nothing after it is
                    // a file closed without its footer: cut off either way, every batch before read.
                    if (end - at < 8 || after >= end)
                    {
                        if (end > at) MarkTruncated(file.Path);
                        break;
                    }
                    if (!IsCutFooter(stream, Math.Max(after, at + 8), end, schemaEnd, batches))
                        throw new InvalidDataException($"{file.Path}: an end-of-stream marker at byte {at}, but the messages go on to byte {end}; the file is damaged there.");
                    MarkTruncated(file.Path);
                    break;
                }
                batches++;
                try
                {
                    Validate(batch);
                }
                catch (InvalidDataException e)
                {
                    batch.Dispose();
                    throw new InvalidDataException($"{file.Path}: the record batch at byte {at} is damaged: {e.Message}", e);
                }
                yield return batch;
            }
        }
    }

    /// <summary>Every row of every file, in order.</summary>
    public IEnumerable<TelemetryRow> ReadRows(CancellationToken cancellation = default)
    {
        foreach (var batch in ReadBatches(cancellation))
            using (batch)
                foreach (var row in Rows(batch))
                    yield return row;
    }

    /// <summary>
    /// Tails the log file <paramref name="path"/>: yields the batches appended after the call (or all of them, with
    /// <paramref name="fromStart"/>), polling every <paramref name="poll"/>; when the file is closed and a newer file
    /// of the same log appears (rotation), goes on with that one. Ends when <paramref name="cancellation"/> fires.
    /// </summary>
    public static IEnumerable<RecordBatch> Follow(string path, TimeSpan poll, CancellationToken cancellation, bool fromStart = false) =>
        Follow(path, poll, cancellation, fromStart, opened: null);

    /// <summary>
    /// How long the followed file must have stopped growing before following moves to another run's newer file: the
    /// next file of the same run (rotation) is taken at once, but a newer file of another run (a replica logging into the
    /// same directory, or a server restarted after a kill) may sit beside a live file that is only between flushes.
    /// </summary>
    public static readonly TimeSpan OtherRunAfter = TimeSpan.FromSeconds(5);

    /// <param name="opened">Called once a file is open and, for the first, its length taken (tests append here).</param>
    /// <param name="otherRunAfter">Overrides <see cref="OtherRunAfter"/> (tests).</param>
    /// <param name="beforeOpen">Called with each file following moves on to, before it is opened (tests delete it here).</param>
    internal static IEnumerable<RecordBatch> Follow(string path, TimeSpan poll, CancellationToken cancellation, bool fromStart, Action? opened,
        TimeSpan? otherRunAfter = null, Action<string>? beforeOpen = null)
    {
        var patience = otherRunAfter ?? OtherRunAfter;
        Describe(path);
        string current = Path.GetFullPath(path);
        // Batches that begin before this offset of the first file were there when following began: skipped unless
        // fromStart. Batches appended while those are skipped begin past it, so they are printed (the end of the file
        // as first seen, not whenever the skip happens to catch up with the writer).
        long skipBefore = fromStart ? 0 : -1;
        string? previousRun = null;
        while (!cancellation.IsCancellationRequested)
        {
            // A file deleted before it was opened has no run id to read: keep the run followed so far (with none,
            // following took the next file of any run at once, another replica's).
            string? run = RunOfFile(current) ?? previousRun;
            long lastGrowth = System.Diagnostics.Stopwatch.GetTimestamp();
            FileStream? opening;
            if (skipBefore >= 0) beforeOpen?.Invoke(current);
            try
            {
                opening = OpenShared(current);
            }
            catch (FileNotFoundException) when (skipBefore >= 0 && !File.Exists(current))
            {
                // A later file listed, then deleted by the writer's size cap (or a cleanup) before it was opened: on to
                // the one after it (this ended following with "no such telemetry log file").
                opening = null;
            }
            if (opening is not null)
            using (var file = opening)
            {
                if (skipBefore < 0) skipBefore = file.Length;
                opened?.Invoke();
                TailStream? tail = null;
                // A file created but not yet given its schema has no run id to read: read it again when needed.
                tail = new TailStream(file, poll, cancellation, () => NextFile(current, run ??= RunOfFile(current), System.Diagnostics.Stopwatch.GetElapsedTime(tail!.LastGrowth), patience) is not null);
                // A file that never got its whole magic (an empty file, superseded by a newer one): on to the next file,
                // unless following was stopped (it ended there without a word, the newer file never read).
                bool whole = tail.ReadAtLeast(new byte[Magic.Length], Magic.Length, throwOnEndOfStream: false) == Magic.Length;
                if (!whole && cancellation.IsCancellationRequested) yield break;
                if (whole)
                {
                    using var reader = new ArrowStreamReader(tail, leaveOpen: true);
                    while (true)
                    {
                        bool skip = tail.Position < skipBefore;
                        long at = tail.Position;
                        if (!TryReadNext(reader, out var batch) || batch is null) break;
                        try
                        {
                            Validate(batch);
                        }
                        catch (InvalidDataException e)
                        {
                            batch.Dispose();
                            throw new InvalidDataException($"{current}: the record batch at byte {at} is damaged: {e.Message}", e);
                        }
                        if (skip) batch.Dispose();
                        else yield return batch;
                    }
                }
                lastGrowth = tail.LastGrowth;
            }
            skipBefore = 0;
            string? next;
            while ((next = NextFile(current, run ??= RunOfFile(current), System.Diagnostics.Stopwatch.GetElapsedTime(lastGrowth), patience)) is null)
                if (cancellation.WaitHandle.WaitOne(poll)) yield break;
            previousRun = run;
            current = next;
        }
    }

    /// <summary>The rows of one batch.</summary>
    public static IEnumerable<TelemetryRow> Rows(RecordBatch batch)
    {
        var view = new BatchView(batch);
        for (int i = 0; i < batch.Length; i++)
            if (view.TryRow(i, out var row)) yield return row;
    }

    /// <summary>How many record batches a finished file's footer lists (Arrow's file reader reads the footer alone).</summary>
    private static int FooterBatchCount(FileStream stream, string path)
    {
        try
        {
            stream.Position = 0;
            using var footer = new ArrowFileReader(stream, leaveOpen: true);
            return footer.RecordBatchCountAsync().AsTask().GetAwaiter().GetResult();
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            throw new InvalidDataException($"{path}: the footer of this complete log file is damaged ({ArrowSaid(e)}); the file cannot be read.", e);
        }
    }

    /// <summary>The offset of a finished file's footer (its length is the int32 before the closing magic).</summary>
    private static long FooterStart(FileStream stream, string path)
    {
        Span<byte> len = stackalloc byte[4];
        stream.Position = stream.Length - 10;
        stream.ReadExactly(len);
        long start = stream.Length - 10 - System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(len);
        if (start < Magic.Length || start > stream.Length - 10)
            throw new InvalidDataException($"{path}: the footer length is out of range; the end of the file is damaged.");
        return start;
    }

    /// <summary>
    /// Checks that a batch's buffers hold what its columns say (lengths, null bitmaps, string offsets within the data):
    /// Arrow reads strings through unchecked pointers, so a damaged offset read memory past the buffer (garbage in the
    /// export, or a crash no handler can catch).
    /// </summary>
    internal static void Validate(RecordBatch batch)
    {
        for (int c = 0; c < batch.ColumnCount; c++)
        {
            var data = batch.Column(c).Data;
            string name = batch.Schema.GetFieldByIndex(c).Name;
            if (data.Length != batch.Length)
                throw new InvalidDataException($"column {name} holds {data.Length} values in a batch of {batch.Length} rows.");
            Validate(data, name);
        }
        ValidateKinds(batch);
    }

    /// <summary>
    /// Every row is a step, layer or event row: a damaged kind name in the dictionary ("stepLayerevent") made every layer
    /// row one of no kind, and the reader skipped them all without a word (192 of 232 rows gone, exit 0).
    /// </summary>
    private static void ValidateKinds(RecordBatch batch)
    {
        int index = batch.Schema.GetFieldIndex("kind", StringComparer.Ordinal);
        if (index < 0) return;
        switch (batch.Column(index))
        {
            case DictionaryArray { Dictionary: StringArray names } dict:
                for (int i = 0; i < names.Length; i++)
                    if (System.Array.IndexOf(TelemetryLogSchema.KindNames, names.GetString(i)) < 0)
                        throw new InvalidDataException($"column kind: dictionary entry {i} is \"{Shown(names.GetString(i))}\", none of {string.Join(", ", TelemetryLogSchema.KindNames)}.");
                for (int i = 0; i < dict.Length; i++)
                    if (dict.IsNull(i)) throw new InvalidDataException($"column kind: row {i} has no kind.");
                break;
            case StringArray plain:
                for (int i = 0; i < plain.Length; i++)
                    if (System.Array.IndexOf(TelemetryLogSchema.KindNames, plain.GetString(i)) < 0)
                        throw new InvalidDataException($"column kind: row {i} is \"{Shown(plain.GetString(i))}\", none of {string.Join(", ", TelemetryLogSchema.KindNames)}.");
                break;
        }

        static string Shown(string? text) => text is null ? "(null)" : BitNetSharp.Formats.ModelFormatException.Printable(text, 40);
    }

    private static void Validate(ArrayData data, string name)
    {
        if (data.Length < 0 || data.Offset < 0 || data.Buffers is null || data.Buffers.Length == 0)
            throw new InvalidDataException($"column {name}: invalid length or offset.");
        long end = (long)data.Offset + data.Length;
        if (data.NullCount != 0 && data.Buffers[0].Length < (end + 7) / 8)
            throw new InvalidDataException($"column {name}: the null bitmap is shorter than its {data.Length} values.");
        switch (data.DataType)
        {
            case DictionaryType dict:
                if (data.Dictionary is null) throw new InvalidDataException($"column {name}: a dictionary column without its dictionary.");
                int indexWidth = ((FixedWidthType)dict.IndexType).BitWidth / 8;
                Fixed(data, name, indexWidth, end);
                Validate(data.Dictionary, name + " (dictionary)");
                DictionaryIndices(data, name, indexWidth, dict.IndexType is Int8Type or Int16Type or Int32Type or Int64Type, end);
                break;
            case StringType:
                if (data.Buffers.Length < 3) throw new InvalidDataException($"column {name}: missing string buffers.");
                if (data.Length == 0) break;
                var offsets = data.Buffers[1].Span;
                if (offsets.Length < (end + 1) * 4) throw new InvalidDataException($"column {name}: the offsets buffer is shorter than its {data.Length} values.");
                var values = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(offsets[..(int)((end + 1) * 4)]);
                int previous = values[data.Offset];
                if (previous < 0) throw new InvalidDataException($"column {name}: a negative string offset.");
                for (int i = data.Offset + 1; i <= end; i++)
                {
                    if (values[i] < previous) throw new InvalidDataException($"column {name}: string offsets go backwards at value {i - data.Offset}.");
                    previous = values[i];
                }
                if (previous > data.Buffers[2].Length)
                    throw new InvalidDataException($"column {name}: string offsets point past the {data.Buffers[2].Length}-byte data buffer.");
                break;
            case FixedWidthType fixedWidth when fixedWidth.BitWidth >= 8:
                Fixed(data, name, fixedWidth.BitWidth / 8, end);
                break;
        }
    }

    /// <summary>
    /// Every non-null index of a dictionary column names one of its values: a flipped byte in the row kinds' indices
    /// made a row of no kind, which the reader skipped without a word (a damaged log read one row short, exit 0).
    /// </summary>
    private static void DictionaryIndices(ArrayData data, string name, int width, bool signed, long end)
    {
        long count = data.Dictionary!.Length;
        var bytes = data.Buffers[1].Span;
        var validity = data.NullCount != 0 ? data.Buffers[0].Span : default;
        for (long i = data.Offset; i < end; i++)
        {
            if (!validity.IsEmpty && (validity[(int)(i >> 3)] & (1 << (int)(i & 7))) == 0) continue;
            long k = (width, signed) switch
            {
                (1, true) => (sbyte)bytes[(int)i],
                (1, false) => bytes[(int)i],
                (2, true) => System.Buffers.Binary.BinaryPrimitives.ReadInt16LittleEndian(bytes[(int)(i * 2)..]),
                (2, false) => System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(bytes[(int)(i * 2)..]),
                (4, true) => System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(bytes[(int)(i * 4)..]),
                (4, false) => System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(bytes[(int)(i * 4)..]),
                _ => System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(bytes[(int)(i * 8)..]) is var v && v >= 0 || signed ? System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(bytes[(int)(i * 8)..]) : long.MaxValue,
            };
            if (k < 0 || k >= count)
                throw new InvalidDataException($"column {name}: value {i - data.Offset} is dictionary entry {k}, but the dictionary holds {count}.");
        }
    }

    private static void Fixed(ArrayData data, string name, int width, long end)
    {
        if (data.Buffers.Length < 2 || data.Buffers[1].Length < end * width)
            throw new InvalidDataException($"column {name}: the values buffer is shorter than its {data.Length} values.");
    }

    private static bool TryReadNext(ArrowStreamReader reader, out RecordBatch? batch) => TryReadNext(reader, out batch, out _);

    private static bool TryReadNext(ArrowStreamReader reader, out RecordBatch? batch, out string error)
    {
        try
        {
            batch = reader.ReadNextRecordBatch();
            error = "";
            return true;
        }
        catch (Exception e)
        {
            // A torn last message (kill -9 mid-write, or a follow cancelled mid-message); or a corrupt length that made
            // Arrow ask for gigabytes (an OutOfMemoryException caused by the file, which crashed the command).
            batch = null;
            error = ArrowSaid(e);
            return false;
        }
    }

    /// <summary>
    /// What Arrow said about a damaged message, on one line and without .NET's parameter wording: its messages ran over
    /// lines ("minimumLength ('-256') must be a non-negative value. (Parameter 'minimumLength')\nActual value was -256.").
    /// </summary>
    private static string ArrowSaid(Exception e)
    {
        string text = e.Message.ReplaceLineEndings(" ");
        int at = text.IndexOf(" (Parameter '", StringComparison.Ordinal);
        if (at >= 0)
        {
            int close = text.IndexOf("')", at, StringComparison.Ordinal);
            text = close < 0 ? text[..at] : text[..at] + text[(close + 2)..];
        }
        return text.Trim().TrimEnd('.');
    }

    private void MarkTruncated(string path)
    {
        lock (_truncated) if (!_truncated.Contains(path)) _truncated.Add(path); // once, however many passes read it
    }

    private enum Peeked { Readable, Cut, Damaged }

    /// <summary>
    /// The messages one read from <paramref name="at"/> takes (dictionary batches, then a record batch), looked at without
    /// their bodies: Cut when one runs past <paramref name="end"/> (or its length prefix does), Damaged when a record
    /// batch's body length disagrees with the buffers its metadata lists (a writer pads each buffer to 8 bytes, so the
    /// body ends within 64 bytes after the last buffer), else Readable — Arrow then reads them and says what else is
    /// wrong. <paramref name="where"/> is the message's byte. Lengths Arrow would refuse anyway (negative, absurd metadata)
    /// read as Readable: its error says more.
    /// </summary>
    private static Peeked Peek(FileStream stream, long at, long end, out long where)
    {
        const int DictionaryBatch = 2, RecordBatch = 3, MaxMetadata = 16 << 20;
        Span<byte> prefix = stackalloc byte[8];
        long pos = at;
        where = at;
        for (int messages = 0; messages < 64; messages++)
        {
            where = pos;
            if (end - pos < 8) return end > pos ? Peeked.Cut : Peeked.Readable;
            stream.Position = pos;
            stream.ReadExactly(prefix);
            int first = System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(prefix);
            long metaStart = first == -1 ? pos + 8 : pos + 4;
            int metaLength = first == -1 ? System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(prefix[4..]) : first;
            if (metaLength <= 0 || metaLength > MaxMetadata) return Peeked.Readable;
            if (metaStart + metaLength > end) return Peeked.Cut;
            var meta = new byte[metaLength];
            stream.Position = metaStart;
            stream.ReadExactly(meta);
            if (!TryMessageHeader(meta, out byte header, out long body) || body < 0) return Peeked.Readable;
            if (header is RecordBatch or DictionaryBatch && TryBufferExtent(meta, header == DictionaryBatch, out long extent) && (body < extent || body > extent + 64))
                return Peeked.Damaged;
            if (metaStart + metaLength + body > end) return Peeked.Cut;
            if (header != DictionaryBatch) return Peeked.Readable;
            pos = metaStart + metaLength + body;
        }
        return Peeked.Readable;
    }

    /// <summary>
    /// Where the last buffer a record batch's (or a dictionary batch's) metadata lists ends in its body (the largest offset + length; 0 with no
    /// buffers), read from the flatbuffer: Message.header (field 2) → RecordBatch.buffers (field 2), structs of
    /// (offset, length) as longs. False when the metadata does not hold together.
    /// </summary>
    private static bool TryBufferExtent(ReadOnlySpan<byte> meta, bool dictionary, out long extent)
    {
        extent = 0;
        if (!TryField(meta, 0, 2, out int headerField)) return false;
        if (headerField < 0) return true;
        long table = headerField + (long)System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(meta[headerField..]);
        // A dictionary batch holds its values as a record batch (DictionaryBatch.data, field 1): a damaged body length
        // there read as a write cut short, every row after it dropped.
        if (dictionary)
        {
            if (table > meta.Length - 4 || !TryField(meta, (int)table, 1, out int dataField)) return false;
            if (dataField < 0) return true;
            table = dataField + (long)System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(meta[dataField..]);
        }
        if (table > meta.Length - 4 || !TryField(meta, (int)table, 2, out int buffersField)) return false;
        if (buffersField < 0) return true;
        long vector = buffersField + (long)System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(meta[buffersField..]);
        if (vector > meta.Length - 4) return false;
        long count = System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(meta[(int)vector..]);
        if (vector + 4 + 16 * count > meta.Length) return false;
        for (long i = 0; i < count; i++)
        {
            int b = (int)(vector + 4 + 16 * i);
            long offset = System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(meta[b..]);
            long length = System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(meta[(b + 8)..]);
            if (offset < 0 || length < 0 || offset > long.MaxValue - length) return false;
            extent = Math.Max(extent, offset + length);
        }
        return true;
    }

    /// <summary>
    /// The position of field <paramref name="field"/> of the flatbuffer table at <paramref name="table"/> (the root
    /// table's offset is read from byte 0 when <paramref name="table"/> is 0); −1 when the table omits it. False when
    /// the table or its vtable lies outside <paramref name="meta"/>.
    /// </summary>
    private static bool TryField(ReadOnlySpan<byte> meta, int table, int field, out int position)
    {
        position = -1;
        if (table == 0)
        {
            if (meta.Length < 8) return false;
            uint root = System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(meta);
            if (root > meta.Length - 4) return false;
            table = (int)root;
        }
        long vtable = table - (long)System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(meta[table..]);
        if (vtable < 0 || vtable > meta.Length - 4) return false;
        int vtableSize = System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(meta[(int)vtable..]);
        if (vtableSize < 4 || vtable + vtableSize > meta.Length) return false;
        int slot = 4 + 2 * field;
        int offset = slot + 2 > vtableSize ? 0 : System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(meta[(int)(vtable + slot)..]);
        if (offset == 0) return true;
        if (table + offset > meta.Length - 4) return false;
        position = table + offset;
        return true;
    }

    /// <summary>
    /// Whether the read that failed at <paramref name="at"/> failed because the end of the data (<paramref name="end"/>)
    /// cuts its messages: the dictionary batches and the record batch one read takes are followed by their length
    /// prefixes and metadata's body length until one is cut (true), or the record batch is whole, or a length is
    /// impossible (false: damage; whole batches after it must not vanish as a "cut"). A zero length (an end-of-stream
    /// marker) counts as cut only when nothing but zeros follows it (the tail a host crash leaves).
    /// </summary>
    private static bool CutByTheEnd(FileStream stream, long at, long end)
    {
        const int RecordBatch = 3, MaxMetadata = 16 << 20;
        Span<byte> prefix = stackalloc byte[8];
        long pos = at;
        while (true)
        {
            if (pos >= end) return false;
            if (end - pos < 8) return true;
            stream.Position = pos;
            stream.ReadExactly(prefix);
            int first = System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(prefix);
            long metaStart = first == -1 ? pos + 8 : pos + 4;
            int metaLength = first == -1 ? System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(prefix[4..]) : first;
            if (metaLength == 0) return AllZero(stream, pos, end);
            if (metaLength < 0) return false;
            // No telemetry batch has metadata this large: a damaged length, whatever follows (checked first: a 2 GiB
            // length read as a message the end cut short, and the rows after it were dropped with exit 0).
            if (metaLength > MaxMetadata) return false;
            if (metaStart + metaLength > end) return true;
            var meta = new byte[metaLength];
            stream.Position = metaStart;
            stream.ReadExactly(meta);
            if (!TryMessageHeader(meta, out byte header, out long body) || body < 0 || body % 8 != 0) return false;
            if (metaStart + metaLength + body > end) return true;
            if (header == RecordBatch) return false; // the batch the read ended on is whole: Arrow refused it
            pos = metaStart + metaLength + body;
        }
    }

    /// <summary>
    /// The bytes after an end-of-stream marker (its 8 bytes; Arrow stops after the first 4 when they are zero) in a file
    /// without footer are a footer cut short (or zeros) when they are
    /// no more than a footer could be (it repeats the schema and lists each batch's block) and do not start as a
    /// message does (a continuation marker: a length overwritten with zeros, and whole batches after it).
    /// </summary>
    private static bool IsCutFooter(FileStream stream, long after, long end, long schemaEnd, int batches)
    {
        if (AllZero(stream, after, end)) return true;
        if (end - after > 2 * schemaEnd + 64L * (batches + 4) + 4096) return false;
        var tail = new byte[end - after];
        stream.Position = after;
        if (stream.ReadAtLeast(tail, tail.Length, throwOnEndOfStream: false) < tail.Length) return true;
        // A message's continuation marker, or the metadata of a batch whose length prefix was zeroed (what reads as the
        // marker): a message goes on there, not a footer.
        if (tail.Length >= 4 && System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(tail) == -1) return false;
        return !(TryMessageHeader(tail, out byte header, out long body) && header is 2 or 3 && body >= 0 && body % 8 == 0 && body <= tail.Length);
    }

    private static bool AllZero(FileStream stream, long from, long end)
    {
        var buffer = new byte[64 * 1024];
        stream.Position = from;
        for (long pos = from; pos < end;)
        {
            int n = stream.Read(buffer, 0, (int)Math.Min(buffer.Length, end - pos));
            if (n <= 0) return true;
            if (buffer.AsSpan(0, n).ContainsAnyExcept((byte)0)) return false;
            pos += n;
        }
        return true;
    }

    /// <summary>
    /// The <c>header_type</c> (field 1: 2 a dictionary batch, 3 a record batch) and <c>bodyLength</c> (field 3; absent
    /// reads 0) of an Arrow IPC <c>Message</c> flatbuffer, with every offset checked against the buffer.
    /// </summary>
    private static bool TryMessageHeader(ReadOnlySpan<byte> meta, out byte header, out long body)
    {
        header = 0;
        body = 0;
        if (meta.Length < 8) return false;
        uint root = System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(meta);
        if (root > meta.Length - 4) return false;
        long vtable = root - (long)System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(meta[(int)root..]);
        if (vtable < 0 || vtable > meta.Length - 4) return false;
        int vtableSize = System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(meta[(int)vtable..]);
        if (vtableSize < 4 || vtable + vtableSize > meta.Length) return false;
        int headerAt = 4 + 2 * 1 + 2 > vtableSize ? 0 : System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(meta[(int)(vtable + 4 + 2 * 1)..]);
        int bodyAt = 4 + 2 * 3 + 2 > vtableSize ? 0 : System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(meta[(int)(vtable + 4 + 2 * 3)..]);
        if (headerAt != 0)
        {
            if (root + headerAt + 1 > meta.Length) return false;
            header = meta[(int)(root + headerAt)];
        }
        if (bodyAt != 0)
        {
            if (root + bodyAt + 8 > meta.Length) return false;
            body = System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(meta[(int)(root + bodyAt)..]);
        }
        return true;
    }

    private static FileStream OpenShared(string path)
    {
        try
        {
            return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, bufferSize: 1);
        }
        catch (FileNotFoundException e)
        {
            throw new FileNotFoundException($"{path}: no such telemetry log file.", path, e);
        }
    }

    /// <summary>
    /// Where following goes after <paramref name="current"/>, or null to stay: the oldest newer file of the same run (its
    /// rotation) at once; a newer file of another run only once current has not grown for <paramref name="patience"/>
    /// (a replica's files sat beside a live one between its flushes, and following left the live one for good). Files
    /// without a run id (written before run ids) follow each other as before.
    /// </summary>
    private static string? NextFile(string current, string? run, TimeSpan idle, TimeSpan patience)
    {
        var newer = NewerFiles(current);
        if (newer.Count == 0) return null;
        if (run is null) return newer[0];
        foreach (var f in newer)
            if (RunOfFile(f) == run) return f;
        return idle >= patience ? newer[0] : null;
    }

    /// <summary>A log file's run id; null when it has none, or cannot be read yet (created, schema not written) or any more.</summary>
    private static string? RunOfFile(string path)
    {
        try
        {
            return Describe(path).RunId;
        }
        catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    // The files of the same log (directory and prefix) that are newer than current, oldest first.
    private static List<string> NewerFiles(string current)
    {
        string? prefix = TelemetryLogSchema.PrefixOf(current);
        string? dir = Path.GetDirectoryName(current);
        if (prefix is null || dir is null || !Directory.Exists(dir)) return [];
        var candidates = new List<string>();
        foreach (var p in Directory.EnumerateFiles(dir, prefix + "-*" + TelemetryLogSchema.FileExtension))
            if (TelemetryLogSchema.TryParseFileName(p, prefix, out _, out _)) candidates.Add(p);
        if (!candidates.Contains(current)) candidates.Add(current);
        var ordered = TelemetryLogSchema.InTimeOrder(candidates);
        int at = ordered.IndexOf(current);
        return at < 0 ? [] : ordered.GetRange(at + 1, ordered.Count - at - 1);
    }

    /// <summary>A read-only view of a growing file: at its end, waits for more bytes instead of returning 0.</summary>
    private sealed class TailStream(FileStream inner, TimeSpan poll, CancellationToken cancellation, Func<bool> superseded) : Stream
    {
        public bool AtEnd => inner.Position >= inner.Length;

        /// <summary>When the last bytes were read (Stopwatch ticks): how long the file has not grown.</summary>
        public long LastGrowth { get; private set; } = System.Diagnostics.Stopwatch.GetTimestamp();

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            while (true)
            {
                int n = inner.Read(buffer);
                if (n > 0) LastGrowth = System.Diagnostics.Stopwatch.GetTimestamp();
                if (n > 0 || buffer.IsEmpty) return n;
                // A file that stopped growing while a newer one exists was abandoned (writer killed, then restarted).
                if (superseded()) return 0;
                if (cancellation.WaitHandle.WaitOne(poll)) return 0;
            }
        }

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => inner.Position; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }

    private static string? RunOf(Schema schema) =>
        schema.HasMetadata && schema.Metadata.TryGetValue(TelemetryLogSchema.RunKey, out var run) && run.Length > 0 ? run : null;

    /// <summary>Typed columns of one batch, found by name.</summary>
    private sealed class BatchView
    {
        private readonly RecordBatch _batch;
        private readonly string? _run;
        private readonly TimestampArray? _time;
        private readonly long _timeScale;
        private readonly TelemetryRowKind[] _kinds;
        private readonly IArrowArray? _kindIndices;
        private readonly Int64Array? _step;
        private readonly Int16Array? _layer;
        private readonly StringArray? _requestId, _traceId, _eventKind, _message;
        private readonly Int32Array? _sequence, _token, _batchTokens, _nonFinite;
        private readonly FloatArray?[] _floats = new FloatArray?[TelemetryLogSchema.ColumnCount];

        public BatchView(RecordBatch batch)
        {
            _batch = batch;
            _run = RunOf(batch.Schema);
            _time = Column<TimestampArray>(TelemetryLogSchema.Time);
            // Nanoseconds as written; a file rewritten in another unit (pyarrow keeps the metadata) read 1000× off.
            _timeScale = (_time?.Data.DataType as TimestampType)?.Unit switch
            {
                TimeUnit.Second => 1_000_000_000,
                TimeUnit.Millisecond => 1_000_000,
                TimeUnit.Microsecond => 1_000,
                _ => 1,
            };
            _step = Column<Int64Array>(TelemetryLogSchema.Step);
            _layer = Column<Int16Array>(TelemetryLogSchema.Layer);
            _requestId = Column<StringArray>(TelemetryLogSchema.RequestId);
            _traceId = Column<StringArray>(TelemetryLogSchema.TraceId);
            _eventKind = Column<StringArray>(TelemetryLogSchema.EventKind);
            _message = Column<StringArray>(TelemetryLogSchema.Message);
            _sequence = Column<Int32Array>(TelemetryLogSchema.Sequence);
            _token = Column<Int32Array>(TelemetryLogSchema.Token);
            _batchTokens = Column<Int32Array>(TelemetryLogSchema.BatchTokens);
            _nonFinite = Column<Int32Array>(TelemetryLogSchema.NonFinite);
            for (int c = TelemetryLogSchema.StepSeconds; c <= TelemetryLogSchema.ResidualChange; c++)
                if (c != TelemetryLogSchema.NonFinite) _floats[c] = Column<FloatArray>(c);
            _floats[TelemetryLogSchema.KvKeyError] = Column<FloatArray>(TelemetryLogSchema.KvKeyError); // absent in older files: NaN
            _floats[TelemetryLogSchema.KvValueError] = Column<FloatArray>(TelemetryLogSchema.KvValueError);

            var kind = _batch.Column("kind");
            if (kind is DictionaryArray dict && dict.Dictionary is StringArray names)
            {
                _kindIndices = dict.Indices;
                _kinds = new TelemetryRowKind[names.Length];
                for (int i = 0; i < names.Length; i++)
                    _kinds[i] = System.Array.IndexOf(TelemetryLogSchema.KindNames, names.GetString(i)) is >= 0 and var k ? (TelemetryRowKind)k : (TelemetryRowKind)(-1);
            }
            else if (kind is StringArray plain)
            {
                // A kind column re-encoded as plain strings by another tool.
                _kindIndices = plain;
                _kinds = [];
            }
            else _kinds = [];
        }

        private T? Column<T>(int column) where T : class, IArrowArray
        {
            int index = _batch.Schema.GetFieldIndex(TelemetryLogSchema.ColumnNames[column], StringComparer.Ordinal);
            return index >= 0 ? _batch.Column(index) as T : null;
        }

        private TelemetryRowKind KindOf(int i)
        {
            switch (_kindIndices)
            {
                case Int8Array idx when idx.GetValue(i) is { } k && k >= 0 && k < _kinds.Length: return _kinds[k];
                case Int16Array idx when idx.GetValue(i) is { } k && k >= 0 && k < _kinds.Length: return _kinds[k];
                case Int32Array idx when idx.GetValue(i) is { } k && k >= 0 && k < _kinds.Length: return _kinds[k];
                case StringArray s when s.GetString(i) is { } name:
                    return System.Array.IndexOf(TelemetryLogSchema.KindNames, name) is >= 0 and var kk ? (TelemetryRowKind)kk : (TelemetryRowKind)(-1);
                default: return (TelemetryRowKind)(-1);
            }
        }

        private float F(int column, int i) => _floats[column]?.GetValue(i) ?? float.NaN;

        private string? S(StringArray? column, int i) => column is null || column.IsNull(i) ? null : column.GetString(i, Encoding.UTF8);

        public bool TryRow(int i, out TelemetryRow row)
        {
            var kind = KindOf(i);
            long time = _time is null ? 0 : _time.Values[i] * _timeScale;
            long step = _step?.GetValue(i) ?? 0;
            switch (kind)
            {
                case TelemetryRowKind.Step:
                    var s = new TelemetryStepRecord(time, step, S(_requestId, i), S(_traceId, i), _sequence?.GetValue(i) ?? 0,
                        _token?.GetValue(i) ?? 0, _batchTokens?.GetValue(i) ?? 0, F(TelemetryLogSchema.StepSeconds, i),
                        F(TelemetryLogSchema.LatencySeconds, i), F(TelemetryLogSchema.LogitMin, i), F(TelemetryLogSchema.LogitMax, i),
                        F(TelemetryLogSchema.LogitEntropy, i), _nonFinite?.GetValue(i) ?? 0);
                    row = new TelemetryRow(kind, time, step, s, null, default) { Run = _run };
                    return true;
                case TelemetryRowKind.Layer:
                    var l = new TelemetryLayerRecord
                    {
                        TimeUnixNanos = time,
                        Step = step,
                        Layer = _layer?.GetValue(i) ?? -1,
                        Tokens = _batchTokens?.GetValue(i) ?? 0,
                        ResidualRms = F(TelemetryLogSchema.ResidualRms, i),
                        ResidualMaxAbs = F(TelemetryLogSchema.ResidualMaxAbs, i),
                        ResidualChange = F(TelemetryLogSchema.ResidualChange, i),
                        KvKeyError = F(TelemetryLogSchema.KvKeyError, i),
                        KvValueError = F(TelemetryLogSchema.KvValueError, i),
                    };
                    for (int k = 0; k < HealthNames.InputCount; k++)
                    {
                        l.Saturation[k] = F(TelemetryLogSchema.Saturation + k, i);
                        l.Underflow[k] = F(TelemetryLogSchema.Underflow + k, i);
                        l.CrestFactor[k] = F(TelemetryLogSchema.Crest + k, i);
                    }
                    row = new TelemetryRow(kind, time, step, default, l, default) { Run = _run };
                    return true;
                case TelemetryRowKind.Event:
                    var e = new TelemetryEvent(time, S(_eventKind, i) ?? "", S(_requestId, i), S(_traceId, i), S(_message, i) ?? "");
                    row = new TelemetryRow(kind, time, step, default, null, e) { Run = _run };
                    return true;
                default:
                    row = default;
                    return false;
            }
        }
    }
}
