using System.Runtime.InteropServices;
using System.Text;
using Apache.Arrow;
using Apache.Arrow.Ipc;
using BitNetSharp.Formats;

namespace BitNetSharp.Monitoring.Telemetry;

/// <summary>
/// Appends telemetry records to a compact binary log: Arrow IPC files (<see cref="TelemetryLogSchema"/>) that
/// pandas.read_feather, polars.read_ipc and DuckDB open directly, and <see cref="TelemetryLogReader"/> reads even
/// without a footer (after kill -9).
/// <para>
/// <c>Write</c> is thread-safe and only copies the record into preallocated column buffers under a short lock. A full
/// buffer (<see cref="TelemetryLogOptions.BatchRows"/>) is handed to a background thread, which also writes the
/// partial buffer every <see cref="TelemetryLogOptions.FlushInterval"/>; each batch is one RecordBatch, flushed to the
/// OS. Files rotate past <see cref="TelemetryLogOptions.MaxFileBytes"/> and the oldest files of the log are deleted
/// past <see cref="TelemetryLogOptions.MaxTotalBytes"/>. Write errors (disk full, unwritable directory) never reach
/// the caller: the batch's rows are counted in <see cref="DroppedRecords"/>, <see cref="LastError"/> is set, and the
/// next batch starts a new file.
/// </para>
/// <para>
/// Size, measured by <c>TelemetryLogTests.BytesPerRowOfARealisticRun</c> (10 000 steps × 30 layers, 1024-row
/// batches, uncompressed): 134 bytes per layer row, so 4.0 KB per engine step of a 30-layer model; 192 bytes per
/// step row (one logged token) with a 25-character request id and a 32-character trace id (65 of those bytes).
/// Every row carries a slot for each fixed-width column, also for the null ones of the other kinds.
/// </para>
/// </summary>
public sealed class TelemetryLogWriter : ITelemetrySink, IDisposable
{
    // Rows in full batches waiting for the background thread beyond which the oldest are dropped instead of
    // buffered (a stalled disk must not grow memory without bound): about 45 MB of column buffers.
    private const int MaxPendingRows = 1 << 18;

    private readonly TelemetryLogOptions _options;
    private readonly string _directory;
    private readonly string _prefix;
    private readonly Schema _schema;
    private readonly StringArray _kindDictionary;

    private readonly Lock _gate = new();
    private ColumnBatch _current;
    private readonly Queue<ColumnBatch> _pending = new();
    private readonly Stack<ColumnBatch> _free = new();
    private long _lastStep;
    private bool _closed;

    private readonly Lock _io = new();
    private readonly AutoResetEvent _signal = new(false);
    private readonly Thread _flusher;
    private volatile bool _stopping;

    // Owned under _io.
    private FileStream? _stream;
    private ArrowFileWriter? _arrow;
    private string? _currentPath;
    private long _currentLength;
    private readonly List<(string Path, long Bytes)> _olderFiles = [];
    private int _fileCounter;
    private DateTime _lastFileTime;

    private long _bytesWritten;
    private long _rowsWritten;
    private long _dropped;
    private long _filesWritten;
    private Exception? _lastError;

    public TelemetryLogWriter(TelemetryLogOptions options, IReadOnlyDictionary<string, string> context)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(context);
        options.Validate();
        _options = options;
        (_directory, _prefix) = options.Resolve();
        RunId = Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(8));
        _schema = TelemetryLogSchema.Create(context, RunId);
        // Managed buffers: disposing each written RecordBatch also disposes this shared dictionary, which must survive.
        var offsets = new int[TelemetryLogSchema.KindNames.Length + 1];
        var text = new List<byte>();
        for (int i = 0; i < TelemetryLogSchema.KindNames.Length; i++)
        {
            text.AddRange(Encoding.UTF8.GetBytes(TelemetryLogSchema.KindNames[i]));
            offsets[i + 1] = text.Count;
        }
        _kindDictionary = new StringArray(offsets.Length - 1, new ArrowBuffer(MemoryMarshal.AsBytes(offsets.AsSpan()).ToArray()),
            new ArrowBuffer(text.ToArray()), ArrowBuffer.Empty, 0, 0);
        _current = new ColumnBatch(options.BatchRows);
        _flusher = new Thread(FlushLoop) { IsBackground = true, Name = "telemetry-log" };
        _flusher.Start();
    }

    /// <summary>This writer's run id (<see cref="TelemetryLogSchema.RunKey"/>), written into every file it makes.</summary>
    public string RunId { get; }

    /// <summary>Bytes written to the log's files so far (headers, batches and footers).</summary>
    public long BytesWritten => Interlocked.Read(ref _bytesWritten);

    /// <summary>Rows written and flushed to the OS.</summary>
    public long RowsWritten => Interlocked.Read(ref _rowsWritten);

    /// <summary>Rows lost to write errors, to a writer too far behind, or written after <see cref="Dispose"/>.</summary>
    public long DroppedRecords => Interlocked.Read(ref _dropped);

    /// <summary>The most recent write error, or null.</summary>
    public Exception? LastError => Volatile.Read(ref _lastError);

    /// <summary>
    /// Raised (on the writer's thread) when a batch is lost to a write error after the previous one was written (or
    /// the first batch fails), and with null when writing works again: a server logs it, so a log that cannot be
    /// written is not silent. Handlers must not throw.
    /// </summary>
    public event Action<Exception?>? FailureChanged;

    /// <summary>
    /// Raised (on the writer's thread) with the path of the file being written when it was found removed or replaced
    /// (its folder deleted, a log rotation tool moving it): the writer goes on in a new file. Rows went into the unlinked
    /// file until its size cap, with nothing said and none counted as dropped.
    /// </summary>
    public event Action<string>? FileLost;

    private bool _failing;

    // Rows dropped because the writer fell behind, since the last batch written (set under _gate, taken by the writer).
    private Exception? _behind;

    private void SetFailing(Exception? error)
    {
        bool failing = error is not null;
        if (failing == _failing) return;
        _failing = failing;
        try
        {
            FailureChanged?.Invoke(error);
        }
        catch (Exception)
        {
            // A handler's bug must not end the writer thread (or the process).
        }
    }

    /// <summary>Called with a new file's name just before it is claimed (tests take the name first, as a racing writer would).</summary>
    internal Action<string>? BeforeClaim;

    /// <summary>The file being written, or null between files.</summary>
    public string? CurrentPath { get { lock (_io) return _currentPath; } }

    /// <summary>Files started so far.</summary>
    public long FilesWritten => Interlocked.Read(ref _filesWritten);

    public void Write(in TelemetryStepRecord record)
    {
        lock (_gate)
        {
            if (!TryAppend(out var b, out int i)) return;
            b.Kind[i] = (sbyte)TelemetryRowKind.Step;
            b.Time[i] = record.TimeUnixNanos;
            b.Step[i] = record.Step;
            _lastStep = record.Step;
            b.RequestId[i] = record.RequestId;
            b.TraceId[i] = record.TraceId;
            b.Sequence[i] = record.Sequence;
            b.Token[i] = record.Token;
            b.BatchTokens[i] = record.BatchTokens;
            b.Floats[ColumnBatch.FloatIndex(TelemetryLogSchema.StepSeconds), i] = record.StepSeconds;
            b.Floats[ColumnBatch.FloatIndex(TelemetryLogSchema.LatencySeconds), i] = record.LatencySeconds;
            b.Floats[ColumnBatch.FloatIndex(TelemetryLogSchema.LogitMin), i] = record.LogitMin;
            b.Floats[ColumnBatch.FloatIndex(TelemetryLogSchema.LogitMax), i] = record.LogitMax;
            b.Floats[ColumnBatch.FloatIndex(TelemetryLogSchema.LogitEntropy), i] = record.LogitEntropy;
            b.NonFinite[i] = record.NonFinite;
            Appended(b);
        }
    }

    public void Write(TelemetryLayerRecord record)
    {
        ArgumentNullException.ThrowIfNull(record);
        lock (_gate)
        {
            if (!TryAppend(out var b, out int i)) return;
            b.Kind[i] = (sbyte)TelemetryRowKind.Layer;
            b.Time[i] = record.TimeUnixNanos;
            b.Step[i] = record.Step;
            _lastStep = record.Step;
            b.Layer[i] = (short)record.Layer;
            b.BatchTokens[i] = record.Tokens;
            for (int k = 0; k < HealthNames.InputCount; k++)
            {
                b.Floats[ColumnBatch.FloatIndex(TelemetryLogSchema.Saturation + k), i] = record.Saturation[k];
                b.Floats[ColumnBatch.FloatIndex(TelemetryLogSchema.Underflow + k), i] = record.Underflow[k];
                b.Floats[ColumnBatch.FloatIndex(TelemetryLogSchema.Crest + k), i] = record.CrestFactor[k];
            }
            b.Floats[ColumnBatch.FloatIndex(TelemetryLogSchema.ResidualRms), i] = record.ResidualRms;
            b.Floats[ColumnBatch.FloatIndex(TelemetryLogSchema.ResidualMaxAbs), i] = record.ResidualMaxAbs;
            b.Floats[ColumnBatch.FloatIndex(TelemetryLogSchema.ResidualChange), i] = record.ResidualChange;
            b.Kv[0, i] = record.KvKeyError;
            b.Kv[1, i] = record.KvValueError;
            Appended(b);
        }
    }

    public void Write(in TelemetryEvent record)
    {
        lock (_gate)
        {
            if (!TryAppend(out var b, out int i)) return;
            b.Kind[i] = (sbyte)TelemetryRowKind.Event;
            b.Time[i] = record.TimeUnixNanos;
            b.Step[i] = record.Step ?? _lastStep;
            b.RequestId[i] = record.RequestId;
            b.TraceId[i] = record.TraceId;
            b.EventKind[i] = record.Kind;
            b.Message[i] = record.Message;
            Appended(b);
        }
    }

    /// <summary>Writes every buffered row now, on the calling thread.</summary>
    public void Flush()
    {
        lock (_io)
        {
            lock (_gate) Seal();
            WritePending();
        }
    }

    /// <summary>Writes every buffered row, closes the current file with its footer and stops the background thread.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            if (_closed) return;
            _closed = true;
        }
        _stopping = true;
        _signal.Set();
        _flusher.Join();
        lock (_io)
        {
            lock (_gate) Seal();
            WritePending();
            CloseFile();
        }
        _signal.Dispose();
    }

    private bool TryAppend(out ColumnBatch batch, out int row)
    {
        batch = _current;
        row = batch.Count;
        if (_closed)
        {
            Interlocked.Increment(ref _dropped);
            return false;
        }
        batch.Count = row + 1;
        return true;
    }

    private void Appended(ColumnBatch batch)
    {
        if (batch.Count < batch.Capacity) return;
        Seal();
        _signal.Set();
    }

    // Under _gate: moves the current batch, if it has rows, to the pending queue.
    private void Seal()
    {
        if (_current.Count == 0) return;
        if (_pending.Count >= Math.Max(4, MaxPendingRows / _options.BatchRows))
        {
            // The disk is not keeping up: drop the oldest waiting batch rather than grow without bound.
            var oldest = _pending.Dequeue();
            Interlocked.Add(ref _dropped, oldest.Count);
            var behind = new IOException($"Telemetry log writer is {_pending.Count} batches behind; dropped {oldest.Count} rows.");
            Volatile.Write(ref _lastError, behind);
            // Reported from the writer's thread with its next write (FailureChanged is raised there): a disk too slow
            // to keep up dropped rows without the warning the server logs for a failing one.
            Volatile.Write(ref _behind, behind);
            oldest.Clear();
            _free.Push(oldest);
        }
        _pending.Enqueue(_current);
        _current = _free.Count > 0 ? _free.Pop() : new ColumnBatch(_options.BatchRows);
    }

    private void FlushLoop()
    {
        long lastFlush = Environment.TickCount64;
        long interval = (long)_options.FlushInterval.TotalMilliseconds;
        while (!_stopping)
        {
            long wait = Math.Max(1, lastFlush + interval - Environment.TickCount64);
            _signal.WaitOne(TimeSpan.FromMilliseconds(wait));
            if (_stopping) break;
            lock (_io)
            {
                if (Environment.TickCount64 - lastFlush >= interval)
                {
                    lock (_gate) Seal();
                    lastFlush = Environment.TickCount64;
                }
                WritePending();
            }
        }
    }

    // Under _io: writes the pending batches in order.
    private void WritePending()
    {
        while (true)
        {
            ColumnBatch? batch;
            lock (_gate) if (!_pending.TryDequeue(out batch)) return;
            WriteBatch(batch);
            batch.Clear();
            lock (_gate) _free.Push(batch);
        }
    }

    private void WriteBatch(ColumnBatch batch)
    {
        try
        {
            if (_arrow is not null && _currentPath is { } open && !StillThere(open))
            {
                AbandonFile();
                try { FileLost?.Invoke(open); } catch (Exception) { } // a handler's bug must not end the writer thread
            }
            OpenFileIfNeeded();
            using (var recordBatch = batch.ToRecordBatch(_schema, _kindDictionary))
                _arrow!.WriteRecordBatch(recordBatch);
            _stream!.Flush();
            Account(_stream.Position);
            Interlocked.Add(ref _rowsWritten, batch.Count);
            EnforceTotalCap();
            if (_currentLength >= _options.MaxFileBytes) CloseFile();
            SetFailing(Interlocked.Exchange(ref _behind, null));
        }
        catch (Exception e)
        {
            // Runs on the background thread or in Flush/Dispose: an escaping exception would end the process.
            Interlocked.Add(ref _dropped, batch.Count);
            Volatile.Write(ref _lastError, e);
            AbandonFile();
            SetFailing(e);
        }
    }

    private void Account(long position)
    {
        Interlocked.Add(ref _bytesWritten, position - _currentLength);
        _currentLength = position;
    }

    private void OpenFileIfNeeded()
    {
        if (_arrow is not null) return;
        Directory.CreateDirectory(_directory);
        // Names order a log's files (reader, --follow, the size cap): a clock stepped back (NTP, a VM resumed) must not
        // name a newer file older than the last, or the cap deleted this run's newest file and --follow stopped at it.
        var now = (_options.Time ?? TimeProvider.System).GetUtcNow().UtcDateTime;
        now = new DateTime(now.Ticks - now.Ticks % TimeSpan.TicksPerSecond, DateTimeKind.Utc);
        if (now < _lastFileTime) now = _lastFileTime;
        // The same holds across runs: a server restarted within the second of the last run's newest file (or on a
        // clock behind it) named its first file -0001 of that second, which sorts before the old run's -0004, so the
        // reader interleaved the two runs and the cap deleted the new run's file first. Names follow the newest one.
        ScanOlderFiles(null);
        if (_olderFiles.Count > 0
            && TelemetryLogSchema.TryParseFileName(_olderFiles[^1].Path, _prefix, out var newest, out int newestCounter))
        {
            if (now < newest) now = newest;
            if (now == newest && _fileCounter < newestCounter) _fileCounter = newestCounter;
        }
        _lastFileTime = now;
        string path;
        do path = Path.Combine(_directory, TelemetryLogSchema.FileName(_prefix, now, ++_fileCounter));
        while (File.Exists(path));
        AtomicFile.RemoveStaleTemporaries(_directory, _prefix + "-*" + TelemetryLogSchema.FileExtension);
        // The file gets its name only once its header and schema are written: a kill between creating it and the
        // first flush would otherwise leave an empty or torn .arrow file that no reader can open. Renaming the open
        // file keeps the handle. Readers (bitnet logs --follow) open the file while it grows; rotation may delete it
        // under them.
        var temp = AtomicFile.TemporaryPath(path);
        var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.ReadWrite | FileShare.Delete, 1 << 16);
        try
        {
            var arrow = new ArrowFileWriter(stream, _schema, leaveOpen: true);
            arrow.WriteStart();
            stream.Flush();
            // The name was free when chosen, but another writer of the same prefix (a replica starting its first file in
            // the same second) may take it before the rename, which fails then (no overwrite): the whole batch was lost.
            // Take the next free name instead.
            for (int attempt = 0; ; attempt++)
            {
                BeforeClaim?.Invoke(path);
                try
                {
                    File.Move(temp, path);
                    break;
                }
                catch (IOException) when (attempt < 64 && File.Exists(path))
                {
                    do path = Path.Combine(_directory, TelemetryLogSchema.FileName(_prefix, now, ++_fileCounter));
                    while (File.Exists(path));
                }
            }
            _stream = stream;
            _arrow = arrow;
        }
        catch
        {
            stream.Dispose();
            try { File.Delete(temp); } catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
            throw;
        }
        _currentPath = path;
        _currentId = PathIdentity.FileId(path);
        _currentLength = 0;
        Interlocked.Increment(ref _filesWritten);
    }

    private (uint Major, uint Minor, ulong Inode)? _currentId;

    /// <summary>Whether the open file is still at its path (the same file, where its identity can be read).</summary>
    private bool StillThere(string path)
    {
        if (!File.Exists(path)) return false;
        return _currentId is not { } id || PathIdentity.FileId(path) is not { } now || now == id;
    }

    private void ScanOlderFiles(string? current)
    {
        _olderFiles.Clear();
        var paths = new List<string>();
        foreach (var p in Directory.EnumerateFiles(_directory, _prefix + "-*" + TelemetryLogSchema.FileExtension))
            if (p != current && TelemetryLogSchema.TryParseFileName(p, _prefix, out _, out _)) paths.Add(p);
        foreach (var p in TelemetryLogSchema.InTimeOrder(paths))
        {
            try { _olderFiles.Add((p, new FileInfo(p).Length)); }
            catch (IOException) { }
        }
    }

    private void EnforceTotalCap()
    {
        long total = _currentLength;
        foreach (var f in _olderFiles) total += f.Bytes;
        while (total > _options.MaxTotalBytes && _olderFiles.Count > 0)
        {
            var (path, bytes) = _olderFiles[0];
            _olderFiles.RemoveAt(0);
            // Another process's current file (a second server on the same folder, or an old one still draining): it
            // keeps writing into a deleted file and its rows vanish. Its bytes still count; ours go instead.
            if (HeldByAnotherWriter(path, LocksWork())) continue;
            total -= bytes;
            try { File.Delete(path); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { Volatile.Write(ref _lastError, e); }
        }
    }

    /// <summary>
    /// Whether a file without footer is open elsewhere: every open .NET FileStream but FileShare.None holds a shared
    /// lock (flock on Unix, share modes on Windows), so an exclusive open fails while its writer (or a reader) has it.
    /// Such a file is left for a later rotation; a killed writer's file (no footer, nobody holding it) is deleted.
    /// </summary>
    private static bool HeldByAnotherWriter(string path, bool locksWork)
    {
        try
        {
            // Where locks are not enforced (NFS, SMB/CIFS: .NET takes no lock for a writable handle there; or
            // DOTNET_SYSTEM_IO_DISABLEFILELOCKING), the exclusive open below succeeds on a replica's live file too, and
            // the cap deleted it under the replica. There, a file without footer written to in the last hour is taken as
            // live; a killed writer's file goes once it is older.
            if (!locksWork && DateTime.UtcNow - File.GetLastWriteTimeUtc(path) < UnlockedLiveWindow)
                return !HasFooter(path);
            // A finished file (footer written) has no writer: delete it even while a reader follows it.
            return !HasFooter(path) && IsHeldByAWriter(path);
        }
        catch (FileNotFoundException)
        {
            return false;
        }
        catch (IOException)
        {
            return true;
        }
        catch (UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>Whether a writer (this process's or another's) holds <paramref name="path"/> open: an exclusive open of
    /// it fails. False where locks are not enforced.</summary>
    internal static bool IsHeldByAWriter(string path)
    {
        try
        {
            using var probe = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.None, 1);
            return false;
        }
        catch (FileNotFoundException)
        {
            return false;
        }
        catch (IOException)
        {
            return true;
        }
        catch (UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>How long a footerless file counts as live where locks are not enforced (see <see cref="HeldByAnotherWriter"/>).</summary>
    internal static readonly TimeSpan UnlockedLiveWindow = TimeSpan.FromHours(1);

    private static bool HasFooter(string path)
    {
        using var read = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, 1);
        Span<byte> tail = stackalloc byte[6];
        if (read.Length < 14) return false;
        read.Position = read.Length - 6;
        read.ReadExactly(tail);
        return tail.SequenceEqual("ARROW1"u8);
    }

    /// <summary>Tests set this to act as on a file system without locks.</summary>
    internal bool? LocksWorkOverride;

    private bool? _locksWork;

    /// <summary>
    /// Whether an exclusive open fails on this writer's own open file, as it does wherever .NET's shared locks hold (a
    /// second open of a file whose lock conflicts fails in the same process too); measured once per writer.
    /// </summary>
    private bool LocksWork()
    {
        if (LocksWorkOverride is { } forced) return forced;
        if (_locksWork is { } known) return known;
        if (_currentPath is null) return true;
        try
        {
            using var probe = new FileStream(_currentPath, FileMode.Open, FileAccess.Read, FileShare.None, 1);
            _locksWork = false;
        }
        catch (IOException)
        {
            _locksWork = true;
        }
        catch (UnauthorizedAccessException)
        {
            return true;
        }
        return _locksWork.Value;
    }

    private void CloseFile()
    {
        if (_arrow is null || _stream is null) return;
        try
        {
            _arrow.WriteEnd();
            _stream.Flush();
            Account(_stream.Position);
            EnforceTotalCap();
            _olderFiles.Add((_currentPath!, _currentLength));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidOperationException)
        {
            Volatile.Write(ref _lastError, e);
        }
        AbandonFile();
    }

    // Drops the current file without a footer (after an error its end may be torn; readers stop at the last whole batch).
    private void AbandonFile()
    {
        try { _arrow?.Dispose(); } catch (Exception e) when (e is IOException or ObjectDisposedException) { }
        try { _stream?.Dispose(); } catch (Exception e) when (e is IOException or ObjectDisposedException) { }
        _arrow = null;
        _stream = null;
        _currentPath = null;
        _currentLength = 0;
    }

    /// <summary>Column buffers of one batch; fixed-width columns are plain arrays, strings are kept as references.</summary>
    private sealed class ColumnBatch
    {
        public const int FirstFloat = TelemetryLogSchema.StepSeconds;
        public const int FloatColumns = TelemetryLogSchema.ResidualChange - FirstFloat + 1;

        public readonly int Capacity;
        public int Count;
        public readonly sbyte[] Kind;
        public readonly long[] Time, Step;
        public readonly short[] Layer;
        public readonly int[] Sequence, Token, BatchTokens, NonFinite;
        public readonly string?[] RequestId, TraceId, EventKind, Message;

        /// <summary>The float32 columns step_seconds … residual_change (NonFinite's slot unused), column-major.</summary>
        public readonly float[,] Floats;

        /// <summary>kv_err_k and kv_err_v (layer rows), after the string columns.</summary>
        public readonly float[,] Kv;

        public ColumnBatch(int capacity)
        {
            Capacity = capacity;
            Kind = new sbyte[capacity];
            Time = new long[capacity];
            Step = new long[capacity];
            Layer = new short[capacity];
            Sequence = new int[capacity];
            Token = new int[capacity];
            BatchTokens = new int[capacity];
            NonFinite = new int[capacity];
            RequestId = new string?[capacity];
            TraceId = new string?[capacity];
            EventKind = new string?[capacity];
            Message = new string?[capacity];
            Floats = new float[FloatColumns, capacity];
            Kv = new float[2, capacity];
        }

        public static int FloatIndex(int column) => column - FirstFloat;

        /// <summary>Forgets the rows: string references are released, stale values of null slots zeroed.</summary>
        public void Clear()
        {
            System.Array.Clear(Layer, 0, Count);
            System.Array.Clear(Sequence, 0, Count);
            System.Array.Clear(Token, 0, Count);
            System.Array.Clear(BatchTokens, 0, Count);
            System.Array.Clear(NonFinite, 0, Count);
            System.Array.Clear(RequestId, 0, Count);
            System.Array.Clear(TraceId, 0, Count);
            System.Array.Clear(EventKind, 0, Count);
            System.Array.Clear(Message, 0, Count);
            System.Array.Clear(Floats);
            System.Array.Clear(Kv);
            Count = 0;
        }

        public RecordBatch ToRecordBatch(Schema schema, StringArray kindDictionary)
        {
            int n = Count;
            var columns = new IArrowArray[TelemetryLogSchema.ColumnCount];
            columns[TelemetryLogSchema.Time] = new TimestampArray(TelemetryLogSchema.TimeType, Bytes(Time, n), ArrowBuffer.Empty, n, 0, 0);
            columns[TelemetryLogSchema.Kind] = new DictionaryArray(TelemetryLogSchema.KindType,
                new Int8Array(Bytes(Kind, n), ArrowBuffer.Empty, n, 0, 0), kindDictionary);
            columns[TelemetryLogSchema.Step] = new Int64Array(Bytes(Step, n), ArrowBuffer.Empty, n, 0, 0);

            var step = Validity(TelemetryRowKind.Step, null, out int stepNulls);
            var layer = Validity(TelemetryRowKind.Layer, null, out int layerNulls);
            var stepOrLayer = Validity(TelemetryRowKind.Step, TelemetryRowKind.Layer, out int stepOrLayerNulls);
            columns[TelemetryLogSchema.Layer] = new Int16Array(Bytes(Layer, n), layer, n, layerNulls, 0);
            columns[TelemetryLogSchema.RequestId] = Strings(RequestId, n);
            columns[TelemetryLogSchema.TraceId] = Strings(TraceId, n);
            columns[TelemetryLogSchema.Sequence] = new Int32Array(Bytes(Sequence, n), step, n, stepNulls, 0);
            columns[TelemetryLogSchema.Token] = new Int32Array(Bytes(Token, n), step, n, stepNulls, 0);
            columns[TelemetryLogSchema.BatchTokens] = new Int32Array(Bytes(BatchTokens, n), stepOrLayer, n, stepOrLayerNulls, 0);
            columns[TelemetryLogSchema.NonFinite] = new Int32Array(Bytes(NonFinite, n), step, n, stepNulls, 0);
            for (int c = FirstFloat; c <= TelemetryLogSchema.ResidualChange; c++)
            {
                if (c == TelemetryLogSchema.NonFinite) continue;
                bool isStep = c <= TelemetryLogSchema.LogitEntropy;
                var values = new byte[n * sizeof(float)];
                MemoryMarshal.AsBytes(MemoryMarshal.CreateReadOnlySpan(ref Floats[FloatIndex(c), 0], n)).CopyTo(values);
                columns[c] = new FloatArray(new ArrowBuffer(values), isStep ? step : layer, n, isStep ? stepNulls : layerNulls, 0);
            }
            columns[TelemetryLogSchema.EventKind] = Strings(EventKind, n);
            columns[TelemetryLogSchema.Message] = Strings(Message, n);
            for (int k = 0; k < 2; k++)
            {
                var values = new byte[n * sizeof(float)];
                MemoryMarshal.AsBytes(MemoryMarshal.CreateReadOnlySpan(ref Kv[k, 0], n)).CopyTo(values);
                columns[TelemetryLogSchema.KvKeyError + k] = new FloatArray(new ArrowBuffer(values), layer, n, layerNulls, 0);
            }
            return new RecordBatch(schema, columns, n);
        }

        private static ArrowBuffer Bytes<T>(T[] values, int n) where T : struct =>
            new(MemoryMarshal.AsBytes(values.AsSpan(0, n)).ToArray());

        private ArrowBuffer Validity(TelemetryRowKind kind, TelemetryRowKind? orKind, out int nulls)
        {
            var bits = new byte[(Count + 7) / 8];
            nulls = 0;
            for (int i = 0; i < Count; i++)
            {
                var k = (TelemetryRowKind)Kind[i];
                if (k == kind || k == orKind) bits[i >> 3] |= (byte)(1 << (i & 7));
                else nulls++;
            }
            return nulls == 0 ? ArrowBuffer.Empty : new ArrowBuffer(bits);
        }

        private static StringArray Strings(string?[] values, int n)
        {
            var offsets = new int[n + 1];
            var bits = new byte[(n + 7) / 8];
            int nulls = 0, total = 0;
            for (int i = 0; i < n; i++)
            {
                if (values[i] is { } s) { total += Encoding.UTF8.GetByteCount(s); bits[i >> 3] |= (byte)(1 << (i & 7)); }
                else nulls++;
                offsets[i + 1] = total;
            }
            var data = new byte[total];
            for (int i = 0; i < n; i++)
                if (values[i] is { } s) Encoding.UTF8.GetBytes(s, data.AsSpan(offsets[i]));
            return new StringArray(n, new ArrowBuffer(MemoryMarshal.AsBytes(offsets.AsSpan()).ToArray()), new ArrowBuffer(data),
                nulls == 0 ? ArrowBuffer.Empty : new ArrowBuffer(bits), nulls, 0);
        }
    }
}
