using Apache.Arrow;
using Apache.Arrow.Ipc;
using Apache.Arrow.Types;
using BitNetSharp.Monitoring;
using BitNetSharp.Monitoring.Telemetry;
using BitNetSharp.Tests.Formats;

namespace BitNetSharp.Tests.Monitoring;

/// <summary>The Arrow telemetry log: writer, reader, rotation, kill -9 recovery, context.</summary>
public class TelemetryLogTests(ITestOutputHelper output)
{
    internal static readonly Dictionary<string, string> Context = new() { ["model"] = "tiny", ["kernel"] = "avx2" };

    internal static TelemetryStepRecord Step(long time, long step, string? request, int sequence = 0, int token = 7) =>
        new(time, step, request, request is null ? null : "trace-" + request, sequence, token, 3, 0.02f, 0.05f, -4.5f, 12.25f, 2.5f, 0);

    internal static TelemetryLayerRecord Layer(long time, long step, int layer)
    {
        var l = new TelemetryLayerRecord { TimeUnixNanos = time, Step = step, Layer = layer, Tokens = 3, ResidualRms = 1.5f + layer, ResidualMaxAbs = 20f, ResidualChange = 0.125f * step,
            KvKeyError = 0.005f + 0.001f * layer, KvValueError = 0.0075f };
        for (int k = 0; k < HealthNames.InputCount; k++)
        {
            l.Saturation[k] = 0.0625f * step;
            l.Underflow[k] = 0.5f;
            l.CrestFactor[k] = 4f + k;
        }
        return l;
    }

    private static List<TelemetryRow> ReadAll(string path) => [.. TelemetryLogReader.Open(path).ReadRows(TestContext.Current.CancellationToken)];

    /// <summary>
    /// A damaged string offset is an error naming the file and the batch's byte (Arrow read past the buffer: garbage in
    /// the export, or a crash), and a zeroed length in the middle of a complete file is an error, not a quiet end.
    /// </summary>
    [Fact]
    public void DamageInsideAFileIsAnErrorNamingIt()
    {
        using var dir = new TestGguf.TempDirectory();
        string path;
        long firstBatchEnd;
        using (var writer = new TelemetryLogWriter(new TelemetryLogOptions { Path = dir.File("run.arrow"), FlushInterval = TimeSpan.FromHours(1) }, Context))
        {
            writer.Write(new TelemetryEvent(1, "k", null, null, "ZZZZZZZZ"));
            writer.Flush();
            firstBatchEnd = writer.BytesWritten;
            for (int batch = 1; batch < 3; batch++)
            {
                for (int i = 0; i < 10; i++) writer.Write(Step(batch * 10 + i, batch, "r", token: i));
                writer.Flush();
            }
            path = writer.CurrentPath!;
        }
        Assert.Equal(21, ReadAll(path).Count);
        var good = File.ReadAllBytes(path);

        var bad = (byte[])good.Clone();
        int text = bad.AsSpan().IndexOf("ZZZZZZZZ"u8);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(bad.AsSpan(text - 4), 4096); // the message's end offset
        File.WriteAllBytes(path, bad);
        var e = Assert.Throws<InvalidDataException>(() => ReadAll(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("offsets", e.Message);

        // The schema damaged (its continuation marker read as a length of −256): one line naming the file and the
        // schema's byte, without .NET's wording (it ran over two lines with "(Parameter 'minimumLength')").
        bad = (byte[])good.Clone();
        bad[8] = 0;
        File.WriteAllBytes(path, bad);
        e = Assert.Throws<InvalidDataException>(() => ReadAll(path));
        Assert.StartsWith($"{path}: the schema (the message from byte 8) of a complete log file is damaged (", e.Message);
        Assert.DoesNotContain("\n", e.Message);
        Assert.DoesNotContain("(Parameter", e.Message);

        bad = (byte[])good.Clone();
        bad.AsSpan((int)firstBatchEnd, 8).Fill(0); // the second batch's continuation and length: an end-of-stream marker
        File.WriteAllBytes(path, bad);
        Assert.True(TelemetryLogReader.Open(path).Files[0].HasFooter);
        e = Assert.Throws<InvalidDataException>(() => ReadAll(path));
        Assert.Contains(path, e.Message);
        Assert.Contains($"byte {firstBatchEnd}", e.Message);
    }

    /// <summary>Two writers on one folder: rotation never deletes the other's live file (its rows went into a deleted file).</summary>
    /// <summary>
    /// The log's folder removed while the server writes: the writer says so and goes on in a new file in the folder made
    /// again. It wrote to the unlinked file until its size cap: every later row lost, none counted, nothing said.
    /// </summary>
    [Fact]
    public void AFileRemovedUnderTheWriterIsSaidAndANewOneStarted()
    {
        using var dir = new TestGguf.TempDirectory();
        string logs = Path.Combine(dir.Path, "logs");
        var o = new TelemetryLogOptions { Path = logs, FlushInterval = TimeSpan.FromHours(1) };
        var lost = new List<string>();
        using (var w = new TelemetryLogWriter(o, Context))
        {
            w.FileLost += lost.Add;
            w.Write(Step(0, 0, "before"));
            w.Flush();
            string first = w.CurrentPath!;
            Directory.Delete(logs, recursive: true);
            w.Write(Step(1, 1, "after"));
            w.Flush();
            Assert.Equal([first], lost);
            Assert.NotNull(w.CurrentPath);
            Assert.True(File.Exists(w.CurrentPath), "no new file");
            Assert.Equal(0, w.DroppedRecords);
        }
        var requests = TelemetryLogReader.Open(logs).ReadRows(TestContext.Current.CancellationToken).Select(r => r.RequestId).ToList();
        Assert.Equal(["after"], requests);
    }

    [Fact]
    public void RotationSparesAnotherWritersLiveFile()
    {
        using var dir = new TestGguf.TempDirectory();
        var o = new TelemetryLogOptions { Path = dir.Path, MaxFileBytes = 16 << 10, MaxTotalBytes = 48 << 10, BatchRows = 50, FlushInterval = TimeSpan.FromHours(1) };
        string first;
        using (var a = new TelemetryLogWriter(o, Context))
        {
            a.Write(Step(0, 0, "a1"));
            a.Flush();
            first = a.CurrentPath!;
            using (var b = new TelemetryLogWriter(o, Context))
            {
                for (int s = 0; s < 400; s++)
                    for (int l = 0; l < 4; l++) b.Write(Layer(s, s, l));
                b.Flush();
                Assert.True(b.FilesWritten > 3, "the second writer should have rotated");
            }
            Assert.True(File.Exists(first));
            a.Write(Step(1, 1, "a2"));
        }
        var requests = TelemetryLogReader.Open(dir.Path).ReadRows(TestContext.Current.CancellationToken).Select(r => r.RequestId).ToList();
        Assert.Contains("a1", requests);
        Assert.Contains("a2", requests);
    }

    /// <summary>
    /// Where locks are not enforced (NFS, SMB, DOTNET_SYSTEM_IO_DISABLEFILELOCKING) the exclusive-open probe succeeds on a
    /// replica's live file, and the cap deleted it: there a footerless file written in the last hour is spared, and an
    /// older one (a killed writer's) still goes. With locks, an unheld footerless file goes at once, as before.
    /// </summary>
    [Theory]
    [InlineData(false, 0.0, true)]
    [InlineData(false, 2.0, false)]
    [InlineData(true, 0.0, false)]
    public void WithoutLocksARecentlyWrittenFootlessFileIsSpared(bool locksWork, double hoursOld, bool kept)
    {
        using var dir = new TestGguf.TempDirectory();
        var o = new TelemetryLogOptions { Path = dir.Path, MaxFileBytes = 16 << 10, MaxTotalBytes = 48 << 10, BatchRows = 50, FlushInterval = TimeSpan.FromHours(1) };
        // A replica's live file, as another process holds it (no footer, unheld here: its lock did not reach us).
        string replica;
        using (var other = new TelemetryLogWriter(o, Context))
        {
            other.Write(Step(0, 0, "replica"));
            other.Flush();
            replica = other.CurrentPath!;
            File.Copy(replica, dir.File("copy.tmp"));
        }
        File.Delete(replica);
        File.Move(dir.File("copy.tmp"), replica);
        File.SetLastWriteTimeUtc(replica, DateTime.UtcNow.AddHours(-hoursOld));
        using (var w = new TelemetryLogWriter(o, Context) { LocksWorkOverride = locksWork })
        {
            for (int s = 0; s < 400; s++)
                for (int l = 0; l < 4; l++) w.Write(Layer(s, s, l));
            w.Flush();
            Assert.True(w.FilesWritten > 3);
        }
        Assert.Equal(kept, File.Exists(replica));
    }

    /// <summary>
    /// A live file listed without its footer and closed before it is read (rotation, server shutdown) reads normally:
    /// its end-of-stream marker before the new footer was taken for damage, and the whole command failed.
    /// </summary>
    [Fact]
    public void AFileClosedAfterListingReadsNormally()
    {
        using var dir = new TestGguf.TempDirectory();
        var w = new TelemetryLogWriter(new TelemetryLogOptions { Path = dir.File("run.arrow"), FlushInterval = TimeSpan.FromHours(1) }, Context);
        w.Write(Step(1, 1, "r"));
        w.Flush();
        var reader = TelemetryLogReader.Open(dir.Path);
        Assert.False(reader.Files[0].HasFooter);
        w.Dispose(); // writes the end-of-stream marker and the footer, as rotation does
        Assert.Single(reader.ReadRows(TestContext.Current.CancellationToken));
        Assert.Empty(reader.TruncatedFiles);
    }

    /// <summary>A file deleted after listing (a live writer's size cap) is skipped and reported; the rest still read.</summary>
    [Fact]
    public void AFileDeletedAfterListingIsSkipped()
    {
        using var dir = new TestGguf.TempDirectory();
        foreach (var name in new[] { "a.arrow", "b.arrow" })
            using (var w = new TelemetryLogWriter(new TelemetryLogOptions { Path = dir.File(name) }, Context))
            {
                w.Write(Step(1, 1, name));
                w.Flush();
            }
        var reader = TelemetryLogReader.Open(dir.Path);
        Assert.Equal(2, reader.Files.Count);
        File.Delete(reader.Files[0].Path);
        Assert.Single(reader.ReadRows(TestContext.Current.CancellationToken));
        Assert.Equal([reader.Files[0].Path], reader.VanishedFiles);
    }

    [Fact]
    public void AllThreeKindsRoundTripWithTheirContext()
    {
        using var dir = new TestGguf.TempDirectory();
        var options = new TelemetryLogOptions { Path = dir.File("run.arrow") };
        string path;
        using (var writer = new TelemetryLogWriter(options, Context))
        {
            writer.Write(Step(1_000_000_123, 5, "req-1", sequence: 2, token: 42));
            writer.Write(Layer(1_000_000_200, 5, 17));
            writer.Write(new TelemetryEvent(1_000_000_300, "alert_firing", "req-1", null, "saturation qkv > 1 %"));
            writer.Write(Step(1_000_000_400, 6, null) with { NonFinite = 3, LogitMax = float.NaN });
            writer.Flush();
            path = writer.CurrentPath!;
            Assert.Equal(4, writer.RowsWritten);
        }
        Assert.StartsWith(dir.File("run-"), path);
        Assert.EndsWith("-0001.arrow", path);

        var reader = TelemetryLogReader.Open(dir.Path);
        Assert.Single(reader.Files);
        Assert.True(reader.Files[0].HasFooter);
        Assert.Equal("tiny", reader.Context["model"]);
        Assert.Equal("avx2", reader.Context["kernel"]);
        Assert.False(reader.Context.ContainsKey(TelemetryLogSchema.MarkerKey));
        var rows = reader.ReadRows(TestContext.Current.CancellationToken).ToList();
        Assert.Equal([TelemetryRowKind.Step, TelemetryRowKind.Layer, TelemetryRowKind.Event, TelemetryRowKind.Step], rows.Select(r => r.Kind));

        Assert.Equal(Step(1_000_000_123, 5, "req-1", sequence: 2, token: 42), rows[0].StepRecord);
        var l = rows[1].LayerRecord!;
        var expected = Layer(1_000_000_200, 5, 17);
        Assert.Equal((expected.TimeUnixNanos, expected.Step, expected.Layer, expected.Tokens), (l.TimeUnixNanos, l.Step, l.Layer, l.Tokens));
        Assert.Equal(expected.Saturation, l.Saturation);
        Assert.Equal(expected.Underflow, l.Underflow);
        Assert.Equal(expected.CrestFactor, l.CrestFactor);
        Assert.Equal((expected.ResidualRms, expected.ResidualMaxAbs, expected.ResidualChange), (l.ResidualRms, l.ResidualMaxAbs, l.ResidualChange));
        Assert.Equal((expected.KvKeyError, expected.KvValueError), (l.KvKeyError, l.KvValueError));
        Assert.Equal(new TelemetryEvent(1_000_000_300, "alert_firing", "req-1", null, "saturation qkv > 1 %"), rows[2].Event);
        Assert.Equal(5, rows[2].Step); // the last step logged before the event
        Assert.Null(rows[3].StepRecord.RequestId);
        Assert.Equal(3, rows[3].StepRecord.NonFinite);
        Assert.True(float.IsNaN(rows[3].StepRecord.LogitMax));

        // The schema other tools see: one timestamp[ns, UTC] time column, a dictionary kind, nulls where a kind has no field.
        using var file = new ArrowFileReader(File.OpenRead(path));
        Assert.Equal(TelemetryLogSchema.ColumnNames, file.Schema.FieldsList.Select(f => f.Name));
        Assert.Equal("UTC", ((TimestampType)file.Schema.GetFieldByName("time").DataType).Timezone);
        using var batch = file.ReadNextRecordBatch();
        Assert.True(batch.Column("layer").IsNull(0));
        Assert.False(batch.Column("layer").IsNull(1));
        Assert.True(batch.Column("sat_qkv").IsNull(0));
        Assert.True(batch.Column("logit_min").IsNull(1));
        Assert.True(batch.Column("message").IsNull(0));
        Assert.True(batch.Column("kv_err_k").IsNull(0)); // a step row has no KV rounding
        Assert.Equal(expected.KvKeyError, ((FloatArray)batch.Column("kv_err_k")).GetValue(1));
        Assert.Equal((short)17, ((Int16Array)batch.Column("layer")).GetValue(1));
    }

    [Fact]
    public async Task RowsAreBatchedAndNoneIsLostOnDispose()
    {
        using var dir = new TestGguf.TempDirectory();
        var options = new TelemetryLogOptions { Path = dir.Path, BatchRows = 1000, FlushInterval = TimeSpan.FromHours(1) };
        using (var writer = new TelemetryLogWriter(options, Context))
        {
            for (int i = 0; i < 2500; i++) writer.Write(Step(i, i, "r", token: i));
            // Two full batches go out on the background thread; the last 500 rows wait for Dispose.
            for (int t = 0; t < 3000 && writer.RowsWritten < 2000; t++) Thread.Sleep(10); // waits up to 30 s: a loaded machine
            Assert.Equal(2000, writer.RowsWritten);
        }
        var rows = ReadAll(dir.Path);
        Assert.Equal(Enumerable.Range(0, 2500), rows.Select(r => r.StepRecord.Token));
        using var file = new ArrowFileReader(File.OpenRead(Directory.GetFiles(dir.Path).Single()));
        Assert.Equal(3, await file.RecordBatchCountAsync());
    }

    [Fact]
    public void ATimerWritesAPartialBatch()
    {
        using var dir = new TestGguf.TempDirectory();
        using var writer = new TelemetryLogWriter(new TelemetryLogOptions { Path = dir.Path, FlushInterval = TimeSpan.FromMilliseconds(50) }, Context);
        writer.Write(Step(1, 1, "r"));
        for (int t = 0; t < 3000 && writer.RowsWritten == 0; t++) Thread.Sleep(10); // waits up to 30 s: a loaded machine
        Assert.Equal(1, writer.RowsWritten);
        Assert.Single(ReadAll(dir.Path));
    }

    [Fact]
    public void FilesRotateBySizeAndTheOldestAreDeletedPastTheTotalCap()
    {
        using var dir = new TestGguf.TempDirectory();
        var options = new TelemetryLogOptions { Path = dir.Path, MaxFileBytes = 16 << 10, MaxTotalBytes = 48 << 10, BatchRows = 50 };
        int written = 0;
        long files;
        using (var writer = new TelemetryLogWriter(options, Context))
        {
            for (int step = 0; step < 400; step++)
                for (int layer = 0; layer < 4; layer++, written++)
                    writer.Write(Layer(step, step, layer));
            writer.Flush();
            files = writer.FilesWritten;
            Assert.Equal(0, writer.DroppedRecords);
        }
        var left = TelemetryLogReader.Open(dir.Path).Files;
        Assert.True(files > 4, $"{files} files");
        Assert.True(left.Count < files, $"{left.Count} of {files} files left");
        Assert.True(left.Sum(f => f.Bytes) <= options.MaxTotalBytes, $"{left.Sum(f => f.Bytes)} bytes left");
        Assert.All(left, f => Assert.True(f.HasFooter));
        // The newest files survive: their counters are the last ones, and the rows end with the last step.
        Assert.EndsWith($"-{files:D4}.arrow", left[^1].Path);
        var rows = TelemetryLogReader.Open(dir.Path).ReadRows(TestContext.Current.CancellationToken).ToList();
        Assert.Equal(399, rows[^1].Step);
        Assert.True(rows[0].Step > 0);
        int first = (int)rows.First(r => r.Layer == 0).Step;
        Assert.Equal(Enumerable.Range(first, 400 - first), rows.Where(r => r.Layer == 0).Select(r => (int)r.Step));
    }

    [Fact]
    public void EveryFileOfAWriterCarriesItsRunId()
    {
        using var dir = new TestGguf.TempDirectory();
        var options = new TelemetryLogOptions { Path = dir.Path, MaxFileBytes = 16 << 10, MaxTotalBytes = 1 << 30, BatchRows = 50 };
        // The context cannot set the log's own keys (BITNET_LOG_CONTEXT=bitnet.telemetry.run=... would merge two runs).
        var context = new Dictionary<string, string>(Context) { [TelemetryLogSchema.RunKey] = "spoof" };
        string first, second;
        using (var writer = new TelemetryLogWriter(options, context))
        {
            first = writer.RunId;
            for (int step = 0; step < 200; step++)
                for (int layer = 0; layer < 4; layer++)
                    writer.Write(Layer(step, step, layer));
            writer.Flush();
            Assert.True(writer.FilesWritten > 2, $"{writer.FilesWritten} files");
        }
        using (var writer = new TelemetryLogWriter(options, Context))
        {
            second = writer.RunId;
            writer.Write(Step(1, 0, "r"));
            writer.Flush();
        }
        Assert.Matches("^[0-9a-f]{16}$", first);
        Assert.NotEqual(first, second);
        var reader = TelemetryLogReader.Open(dir.Path);
        Assert.Equal([first, second], reader.Runs.Select(r => r.Id));
        Assert.Single(reader.Runs[1].Files);
        Assert.Equal(reader.Files.Count - 1, reader.Runs[0].Files.Count);
        Assert.DoesNotContain(reader.Context.Keys, TelemetryLogSchema.IsReserved);
        Assert.Equal("tiny", reader.Context["model"]);
        var rows = reader.ReadRows(TestContext.Current.CancellationToken).ToList();
        Assert.Equal(801, rows.Count);
        Assert.All(rows.Take(800), r => Assert.Equal(first, r.Run));
        Assert.Equal(second, rows[^1].Run);
    }

    /// <summary>
    /// A name another writer takes between the check and the rename (two replicas starting a file in the same second)
    /// moves this writer on to the next name: the rename failed, and the whole batch was dropped.
    /// </summary>
    [Fact]
    public void ANameTakenByAnotherWriterMovesOnToTheNext()
    {
        using var dir = new TestGguf.TempDirectory();
        string? taken = null, written;
        using (var writer = new TelemetryLogWriter(new TelemetryLogOptions { Path = dir.File("run.arrow") }, Context))
        {
            writer.BeforeClaim = path =>
            {
                if (taken is not null) return;
                taken = path;
                File.WriteAllBytes(path, []); // the other writer's file
            };
            writer.Write(Step(1, 1, "r"));
            writer.Flush();
            Assert.Equal(0, writer.DroppedRecords);
            Assert.NotNull(taken);
            Assert.NotEqual(taken, writer.CurrentPath);
            Assert.EndsWith("-0002.arrow", writer.CurrentPath);
            written = writer.CurrentPath!;
        }
        Assert.Equal(0, new FileInfo(taken!).Length); // the other writer's file is left alone
        Assert.Single(ReadAll(written));
    }

    [Fact]
    public void AClockSteppedBackKeepsARunsFilesInOrder()
    {
        using var dir = new TestGguf.TempDirectory();
        var clock = new AlertEngineTests.ManualTime();
        var options = new TelemetryLogOptions { Path = dir.Path, MaxFileBytes = 16 << 10, MaxTotalBytes = 1 << 30, BatchRows = 50, Time = clock };
        using (var writer = new TelemetryLogWriter(options, Context))
        {
            for (int step = 0; step < 400; step++)
            {
                if (step == 200)
                {
                    writer.Flush();
                    clock.Advance(-3600); // NTP or a resumed VM: the files from here on must still sort after the earlier ones
                }
                for (int layer = 0; layer < 4; layer++) writer.Write(Layer(step, step, layer));
            }
            writer.Flush();
        }
        var rows = TelemetryLogReader.Open(dir.Path).ReadRows(TestContext.Current.CancellationToken).ToList();
        Assert.Equal(Enumerable.Range(0, 400), rows.Where(r => r.Layer == 0).Select(r => (int)r.Step));
    }

    /// <summary>
    /// A run that starts in the second of the last run's newest file, or on a clock behind it, names its files after
    /// that one: its first file was -0001 of that second and sorted before the old run's -0004 (CI saw it as a
    /// flaky EveryFileOfAWriterCarriesItsRunId when the first writer's rotations crossed a second).
    /// </summary>
    [Theory]
    [InlineData(0.0)]
    [InlineData(-3600.0)]
    public void ANewRunsFilesSortAfterThePreviousRuns(double secondRunClock)
    {
        using var dir = new TestGguf.TempDirectory();
        var clock = new AlertEngineTests.ManualTime();
        var options = new TelemetryLogOptions { Path = dir.Path, MaxFileBytes = 16 << 10, MaxTotalBytes = 1 << 30, BatchRows = 50, Time = clock };
        string first, second;
        using (var writer = new TelemetryLogWriter(options, Context))
        {
            first = writer.RunId;
            for (int step = 0; step < 200; step++)
            {
                if (step == 100)
                {
                    writer.Flush();
                    clock.Advance(1); // rotations cross a second: -0001..-0003 in the first, -0004.. in the next
                }
                for (int layer = 0; layer < 4; layer++) writer.Write(Layer(step, step, layer));
            }
            writer.Flush();
            Assert.True(writer.FilesWritten > 3, $"{writer.FilesWritten} files");
        }
        clock.Advance(secondRunClock);
        using (var writer = new TelemetryLogWriter(options, Context))
        {
            second = writer.RunId;
            writer.Write(Step(1, 0, "r"));
            writer.Flush();
        }
        var reader = TelemetryLogReader.Open(dir.Path);
        Assert.Equal([first, second], reader.Runs.Select(r => r.Id));
        var rows = reader.ReadRows(TestContext.Current.CancellationToken).ToList();
        Assert.Equal(801, rows.Count);
        Assert.All(rows.Take(800), r => Assert.Equal(first, r.Run));
        Assert.Equal(second, rows[^1].Run);
    }

    [Fact]
    public void AFileWithoutFooterYieldsAllCompleteBatches()
    {
        using var dir = new TestGguf.TempDirectory();
        string killed = dir.File("killed-20250101T000000Z-0001.arrow"), torn = dir.File("torn-20250101T000000Z-0001.arrow");
        var options = new TelemetryLogOptions { Path = dir.File("live.arrow"), FlushInterval = TimeSpan.FromHours(1) };
        using (var writer = new TelemetryLogWriter(options, Context))
        {
            for (int batch = 0; batch < 3; batch++)
            {
                for (int i = 0; i < 10; i++) writer.Write(Step(batch * 10 + i, batch, "r", token: batch * 10 + i));
                writer.Flush();
            }
            // What kill -9 leaves: the bytes flushed so far, no footer.
            byte[] bytes = File.ReadAllBytes(writer.CurrentPath!);
            File.WriteAllBytes(killed, bytes);
            // Killed in the middle of writing the third batch.
            File.WriteAllBytes(torn, bytes.AsSpan(0, bytes.Length - 40).ToArray());
        }

        var reader = TelemetryLogReader.Open(killed);
        Assert.False(reader.Files[0].HasFooter);
        Assert.Equal("tiny", reader.Context["model"]);
        Assert.Equal(Enumerable.Range(0, 30), reader.ReadRows(TestContext.Current.CancellationToken).Select(r => r.StepRecord.Token));
        Assert.Empty(reader.TruncatedFiles);

        reader = TelemetryLogReader.Open(torn);
        Assert.Equal(Enumerable.Range(0, 20), reader.ReadRows(TestContext.Current.CancellationToken).Select(r => r.StepRecord.Token));
        Assert.Equal([torn], reader.TruncatedFiles);
        // A second pass (bitnet logs --request reads twice) lists the file once, not once per pass.
        Assert.Equal(20, reader.ReadRows(TestContext.Current.CancellationToken).Count());
        Assert.Equal([torn], reader.TruncatedFiles);
    }

    /// <summary>Three batches of ten step rows; the bytes a kill -9 leaves (no footer), where each batch ends, and the finished file.</summary>
    private static (byte[] Killed, long[] BatchEnds, byte[] Finished) ThreeBatches(TestGguf.TempDirectory dir)
    {
        var ends = new long[3];
        byte[] killed;
        string path;
        using (var writer = new TelemetryLogWriter(new TelemetryLogOptions { Path = dir.File("src.arrow"), FlushInterval = TimeSpan.FromHours(1) }, Context))
        {
            for (int batch = 0; batch < 3; batch++)
            {
                for (int i = 0; i < 10; i++) writer.Write(Step(batch * 10 + i, batch, "r", token: batch * 10 + i));
                writer.Flush();
                ends[batch] = writer.BytesWritten;
            }
            path = writer.CurrentPath!;
            killed = File.ReadAllBytes(path);
        }
        return (killed, ends, File.ReadAllBytes(path));
    }

    /// <summary>
    /// A file whose footer was cut short (disk full while closing, a copy interrupted), or whose tail a host crash left as
    /// zeros, holds every row before the cut: they are read and the file listed as cut off. It stopped the whole command
    /// ("an end-of-stream marker ... the file is damaged there"), so no other file of the directory was read either.
    /// </summary>
    [Fact]
    public void AFileCutInsideItsFooterOrEndingInZerosReadsAllItsRows()
    {
        using var dir = new TestGguf.TempDirectory();
        var (killed, _, finished) = ThreeBatches(dir);
        var cases = new Dictionary<string, byte[]>
        {
            ["footer-20250101T000000Z-0001.arrow"] = finished[..^3],
            ["half-20250101T000000Z-0001.arrow"] = finished[..(killed.Length + (finished.Length - killed.Length) / 2)],
            ["zeros-20250101T000000Z-0001.arrow"] = [.. killed, .. new byte[4096]],
            ["marker-zeros-20250101T000000Z-0001.arrow"] = [.. finished[..(killed.Length + 8)], .. new byte[100_000]],
        };
        foreach (var (name, bytes) in cases)
        {
            string path = dir.File(name);
            File.WriteAllBytes(path, bytes);
            var reader = TelemetryLogReader.Open(path);
            Assert.Equal(Enumerable.Range(0, 30), reader.ReadRows(TestContext.Current.CancellationToken).Select(r => r.StepRecord.Token));
            if (name.StartsWith("zeros", StringComparison.Ordinal)) Assert.Equal([path], reader.TruncatedFiles);
        }
    }

    /// <summary>
    /// In a file without footer only a message the end of the file cuts is a torn write. A whole message Arrow cannot read,
    /// with whole ones after it, is damage: an error naming the file and byte (it read as a "torn final batch" and the
    /// third batch was gone without a word). A message cut by the end is still a torn write.
    /// </summary>
    [Fact]
    public void DamageInAFileWithoutFooterIsAnErrorNotATornWrite()
    {
        using var dir = new TestGguf.TempDirectory();
        var (killed, ends, _) = ThreeBatches(dir);
        string path = dir.File("damaged-20250101T000000Z-0001.arrow");
        var bad = (byte[])killed.Clone();
        bad.AsSpan((int)ends[1] + 8, 16).Fill(0xFF); // inside the third batch's metadata, its length prefix intact
        File.WriteAllBytes(path, bad);
        var e = Assert.Throws<InvalidDataException>(() => TelemetryLogReader.Open(path).ReadRows(TestContext.Current.CancellationToken).Count());
        Assert.Contains(path, e.Message);
        Assert.Contains($"byte {ends[1]}", e.Message);

        // The same bytes cut inside that message's metadata: a torn write, the batches before it read.
        File.WriteAllBytes(path, bad[..((int)ends[1] + 24)]);
        var reader = TelemetryLogReader.Open(path);
        Assert.Equal(20, reader.ReadRows(TestContext.Current.CancellationToken).Count());
        Assert.Equal([path], reader.TruncatedFiles);

        // A metadata length past any telemetry batch's (2 GiB, with the file going on for batches after it): damage,
        // not a write cut short (it read as "cut off" and two batches' rows were dropped, exit 0; logs sweep).
        var huge = (byte[])killed.Clone();
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(huge.AsSpan((int)ends[0] + 4), int.MaxValue);
        File.WriteAllBytes(path, huge);
        e = Assert.Throws<InvalidDataException>(() => TelemetryLogReader.Open(path).ReadRows(TestContext.Current.CancellationToken).Count());
        Assert.Contains($"byte {ends[0]}", e.Message);
    }

    /// <summary>
    /// A record batch whose body length is damaged (2 GB, the file going on after it) is damage, said without reading the
    /// claimed body: Arrow allocated the claimed length (2 GB of RSS), and in a file without footer the message read as a
    /// write cut short, the rows after it dropped with exit 0 (logs sweep). The body length is checked against the
    /// buffers the batch's metadata lists.
    /// </summary>
    [Fact]
    public void ADamagedBodyLengthIsSaidWithoutReadingIt()
    {
        using var dir = new TestGguf.TempDirectory();
        var (killed, ends, finished) = ThreeBatches(dir);
        // The messages from byte 8 (after "ARROW1" and padding): schema, dictionary, record batch, ...; each one's body
        // length is the int64 in its metadata that reaches the next message's continuation marker (or the given end).
        static List<(long At, long BodyField)> Messages(byte[] file, long end)
        {
            var list = new List<(long, long)>();
            long pos = 8;
            while (pos < end)
            {
                int metaLength = System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(file.AsSpan((int)pos + 4));
                long metaEnd = pos + 8 + metaLength, next = -1, field = -1;
                if (metaEnd == end || System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(file.AsSpan((int)metaEnd)) == -1) next = metaEnd; // no body (the schema)
                for (long i = pos + 8; i + 8 <= metaEnd && field < 0; i++)
                {
                    long v = System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(file.AsSpan((int)i));
                    if (v <= 0 || v % 8 != 0 || metaEnd + v > end) continue;
                    if (metaEnd + v == end || System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(file.AsSpan((int)(metaEnd + v))) == -1) { field = i; next = metaEnd + v; }
                }
                Assert.True(next > 0, $"no message structure found at {pos}");
                list.Add((pos, field));
                pos = next;
            }
            return list;
        }
        var messages = Messages(killed, ends[1]);
        Assert.True(messages.Count >= 4, $"{messages.Count} messages");
        // The second flush's record batch (the message that ends at ends[1]), and the first flush's dictionary batch.
        var (batchAt, batchField) = messages[^1];
        var (dictionaryAt, dictionaryField) = messages[1];
        foreach (var (name, source, pos, field) in new[]
        {
            ("killed-20250101T000000Z-0001.arrow", killed, batchAt, batchField), ("finished-20250101T000000Z-0001.arrow", finished, batchAt, batchField),
            ("dictionary-20250101T000000Z-0001.arrow", killed, dictionaryAt, dictionaryField),
        })
        {
            var bad = (byte[])source.Clone();
            System.Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(bad.AsSpan((int)field), 2_000_000_000);
            string path = dir.File(name);
            File.WriteAllBytes(path, bad);
            // Arrow allocates bodies in native memory through its default allocator, whose statistics count them.
            long before = Apache.Arrow.Memory.MemoryAllocator.Default.Value.Statistics.BytesAllocated;
            var e = Assert.Throws<InvalidDataException>(() => TelemetryLogReader.Open(path).ReadRows(TestContext.Current.CancellationToken).Count());
            Assert.True(Apache.Arrow.Memory.MemoryAllocator.Default.Value.Statistics.BytesAllocated - before < 100_000_000, "the claimed body was allocated");
            Assert.Contains($"{path}: damaged message at byte {pos}: its body length disagrees with the buffers it lists", e.Message);
        }
    }

    /// <summary>
    /// A column whose name was overwritten ("sat_qkv" as "sat_qkw") is damage: it read as absent, every row's value NaN,
    /// summed up as non-finite values the model never had. Older files without the newest columns still read.
    /// </summary>
    [Fact]
    public void ARenamedColumnIsDamage()
    {
        using var dir = new TestGguf.TempDirectory();
        var (_, _, finished) = ThreeBatches(dir);
        var bad = (byte[])finished.Clone();
        int at = bad.AsSpan().IndexOf("sat_qkv"u8);
        Assert.True(at > 0);
        bad[at + 6] = (byte)'w';
        string path = dir.File("renamed-20250101T000000Z-0001.arrow");
        File.WriteAllBytes(path, bad);
        var e = Assert.Throws<InvalidDataException>(() => TelemetryLogReader.Open(path).ReadRows(TestContext.Current.CancellationToken).Count());
        Assert.Contains("the column sat_qkv is missing and the file has a column \"sat_qkw\"", e.Message);
    }

    /// <summary>A log file of one event row written by hand with <paramref name="fields"/> and the marker set to <paramref name="version"/>.</summary>
    /// <summary>
    /// A file still being written, read past the length it had when opened: a batch half written there is a write in
    /// progress (cut off), not damage (the end seen at open made it "whole", and the command failed).
    /// </summary>
    [Fact]
    public void ALiveFileThatGrowsWhileReadIsNotDamaged()
    {
        using var dir = new TestGguf.TempDirectory();
        var (killed, ends, _) = ThreeBatches(dir);
        string path = dir.File("live-20250101T000000Z-0001.arrow");
        File.WriteAllBytes(path, killed[..(int)ends[0]]);
        var reader = TelemetryLogReader.Open(path);
        using var batches = reader.ReadBatches(TestContext.Current.CancellationToken).GetEnumerator();
        Assert.True(batches.MoveNext());
        batches.Current.Dispose();
        using (var append = new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.ReadWrite))
            append.Write(killed.AsSpan((int)ends[0], (int)(ends[1] - ends[0]) + 100));
        int more = 0;
        while (batches.MoveNext()) { batches.Current.Dispose(); more++; }
        Assert.Equal(1, more);
        Assert.Equal([path], reader.TruncatedFiles);
    }

    /// <summary>
    /// Cuts and damage in a file without footer, each told apart: a file cut inside a length prefix is listed as cut off
    /// (it was not listed); a zeroed length prefix with a whole batch after it is damage (read as a cut footer, the batch
    /// gone); a batch Arrow refuses, with whole batches after it and a crash's zeros at the end, is damage (the walk to the
    /// zeros made it a cut).
    /// </summary>
    [Fact]
    public void CutsAndDamageWithoutAFooterAreToldApart()
    {
        using var dir = new TestGguf.TempDirectory();
        var (killed, ends, _) = ThreeBatches(dir);
        string path = dir.File("x-20250101T000000Z-0001.arrow");

        File.WriteAllBytes(path, killed[..((int)ends[1] + 6)]);
        var reader = TelemetryLogReader.Open(path);
        Assert.Equal(20, reader.ReadRows(TestContext.Current.CancellationToken).Count());
        Assert.Equal([path], reader.TruncatedFiles);

        var zeroed = (byte[])killed.Clone();
        zeroed.AsSpan((int)ends[1], 8).Clear();
        File.WriteAllBytes(path, zeroed);
        var e = Assert.Throws<InvalidDataException>(() => TelemetryLogReader.Open(path).ReadRows(TestContext.Current.CancellationToken).Count());
        Assert.Contains($"byte {ends[1]}", e.Message);

        // The second batch's first buffer made longer than its body: Arrow refuses the batch, its lengths still whole.
        var refused = (byte[])killed.Clone();
        SetFirstBufferLength(refused.AsSpan((int)ends[0]), 1 << 30);
        File.WriteAllBytes(path, [.. refused, .. new byte[4096]]);
        e = Assert.Throws<InvalidDataException>(() => TelemetryLogReader.Open(path).ReadRows(TestContext.Current.CancellationToken).Count());
        Assert.Contains($"byte {ends[0]}", e.Message);
    }

    /// <summary>
    /// Sets the length of the first buffer of the record batch message at the start of <paramref name="message"/>
    /// (continuation, length, then the Message flatbuffer: header → RecordBatch, its field 2 the buffers vector of
    /// 16-byte (offset, length) structs).
    /// </summary>
    private static void SetFirstBufferLength(Span<byte> message, long length)
    {
        static int I32(Span<byte> b, int at) => System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(b[at..]);
        static int U16(Span<byte> b, int at) => System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(b[at..]);
        Assert.Equal(-1, I32(message, 0));
        var meta = message[8..];
        static int Field(Span<byte> meta, int table, int id) { int vt = table - I32(meta, table); return 4 + 2 * id + 2 > U16(meta, vt) ? 0 : U16(meta, vt + 4 + 2 * id); }
        int root = I32(meta, 0);
        Assert.Equal(3, meta[root + Field(meta, root, 1)]); // a record batch
        int headerField = root + Field(meta, root, 2);
        int batch = headerField + I32(meta, headerField);
        int buffersField = batch + Field(meta, batch, 2);
        int buffers = buffersField + I32(meta, buffersField);
        Assert.True(I32(meta, buffers) > 0);
        System.Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(meta[(buffers + 4 + 8)..], length);
    }

    private static string HandWrittenLog(TestGguf.TempDirectory dir, string name, Field[] fields, string version = TelemetryLogSchema.Version, string kind = "event")
    {
        var b = new Schema.Builder();
        foreach (var f in fields) b.Field(f);
        foreach (var (k, v) in TelemetryLogSchema.Create(Context).Metadata) b.Metadata(k, k == TelemetryLogSchema.MarkerKey ? version : v);
        var schema = b.Build();
        var columns = new List<IArrowArray>();
        foreach (var f in fields)
            columns.Add(f.Name switch
            {
                "time" => new TimestampArray.Builder((TimestampType)f.DataType).Append(DateTimeOffset.FromUnixTimeMilliseconds(1_700_000_000_123)).Build(),
                "kind" => new StringArray.Builder().Append(kind).Build(),
                "message" => new StringArray.Builder().Append("hello").Build(),
                "layer" when f.DataType is Int16Type => new Int16Array.Builder().Append(3).Build(),
                "layer" => new Int32Array.Builder().Append(3).Build(),
                "residual_rms" => new FloatArray.Builder().Append(2.5f).Build(),
                _ => new StringArray.Builder().Append("note").Build(),
            });
        string path = dir.File(name);
        using var stream = File.Create(path);
        using var w = new ArrowFileWriter(stream, schema);
        w.WriteRecordBatch(new RecordBatch(schema, columns, 1));
        w.WriteEnd();
        return path;
    }

    /// <summary>
    /// A row kind whose dictionary index names no entry (one flipped byte) is damage, refused naming the file, byte and
    /// column: the row was skipped without a word (a damaged log read one row short, exit 0).
    /// </summary>
    [Fact]
    public void AKindIndexOutsideItsDictionaryIsDamage()
    {
        using var dir = new TestGguf.TempDirectory();
        var b = new Schema.Builder();
        b.Field(new Field("time", TelemetryLogSchema.TimeType, false));
        b.Field(new Field("kind", TelemetryLogSchema.KindType, false));
        b.Field(new Field("message", StringType.Default, true));
        foreach (var (k, v) in TelemetryLogSchema.Create(Context).Metadata) b.Metadata(k, v);
        var schema = b.Build();
        var names = new StringArray.Builder().AppendRange(TelemetryLogSchema.KindNames).Build();
        string Write(string name, sbyte secondKind)
        {
            var time = new TimestampArray.Builder(TelemetryLogSchema.TimeType).Append(DateTimeOffset.FromUnixTimeMilliseconds(1_700_000_000_123)).Append(DateTimeOffset.FromUnixTimeMilliseconds(1_700_000_000_124)).Build();
            var kinds = new DictionaryArray(TelemetryLogSchema.KindType, new Int8Array.Builder().Append(2).Append(secondKind).Build(), names);
            var message = new StringArray.Builder().Append("one").Append("two").Build();
            string path = dir.File(name);
            using var stream = File.Create(path);
            using var w = new ArrowFileWriter(stream, schema);
            w.WriteRecordBatch(new RecordBatch(schema, [time, kinds, message], 2));
            w.WriteEnd();
            return path;
        }
        Assert.Equal(["one", "two"], ReadAll(Write("good.arrow", 2)).Select(r => r.Event.Message));
        string bad = Write("bad.arrow", 7);
        var e = Assert.Throws<InvalidDataException>(() => ReadAll(bad));
        Assert.Contains(bad, e.Message);
        Assert.Contains("column kind: value 1 is dictionary entry 7, but the dictionary holds 3", e.Message);
    }

    /// <summary>
    /// A newer schema version is refused saying so (it was read as version 1); a column of another type is refused by
    /// name (a layer column of int32 read as absent: layer -1 on every row); a time in microseconds (a file rewritten by
    /// pyarrow) reads in its unit (it read 1000× too small).
    /// </summary>
    [Fact]
    public void SchemaVersionColumnTypesAndTimeUnitsAreChecked()
    {
        using var dir = new TestGguf.TempDirectory();
        var nanos = new Field("time", TelemetryLogSchema.TimeType, false);
        var kind = new Field("kind", StringType.Default, false);
        var message = new Field("message", StringType.Default, true);
        string v2 = HandWrittenLog(dir, "v2.arrow", [nanos, kind, message], version: "2");
        var e = Assert.Throws<InvalidDataException>(() => TelemetryLogReader.Open(v2));
        Assert.Contains("schema version \"2\"", e.Message);
        Assert.Contains(v2, e.Message);

        string int32Layer = HandWrittenLog(dir, "layer32.arrow", [nanos, kind, new Field("layer", Int32Type.Default, true)]);
        e = Assert.Throws<InvalidDataException>(() => TelemetryLogReader.Open(int32Layer));
        Assert.Contains("column layer is int32", e.Message);

        // A layer row of a log written before the KV rounding columns existed: read, its KV rounding NaN (not recorded).
        string old = HandWrittenLog(dir, "old.arrow", [nanos, kind, new Field("layer", Int16Type.Default, true), new Field("residual_rms", FloatType.Default, true)], kind: "layer");
        var layerRow = Assert.Single(TelemetryLogReader.Open(old).ReadRows(TestContext.Current.CancellationToken)).LayerRecord!;
        Assert.Equal((3, 2.5f), (layerRow.Layer, layerRow.ResidualRms));
        Assert.True(float.IsNaN(layerRow.KvKeyError) && float.IsNaN(layerRow.KvValueError));

        string micro = HandWrittenLog(dir, "micro.arrow", [new Field("time", new TimestampType(TimeUnit.Microsecond, "UTC"), false), kind, message]);
        var row = Assert.Single(TelemetryLogReader.Open(micro).ReadRows(TestContext.Current.CancellationToken));
        Assert.Equal(1_700_000_000_123L * 1_000_000, row.TimeUnixNanos);
        Assert.Equal("hello", row.Event.Message);
    }

    [Fact]
    public void ConcurrentWritersLoseNothing()
    {
        using var dir = new TestGguf.TempDirectory();
        const int threads = 6, perThread = 4000;
        using (var writer = new TelemetryLogWriter(new TelemetryLogOptions { Path = dir.Path, BatchRows = 97 }, Context))
        {
            var workers = Enumerable.Range(0, threads).Select(t => new Thread(() =>
            {
                var layer = Layer(0, 0, t);
                for (int i = 0; i < perThread; i++)
                {
                    if (i % 3 == 0) writer.Write(Step(i, i, "thread-" + t, sequence: t, token: i));
                    else if (i % 3 == 1) { layer.Step = i; writer.Write(layer); }
                    else writer.Write(new TelemetryEvent(i, "e", "thread-" + t, null, "m"));
                }
            })).ToList();
            workers.ForEach(w => w.Start());
            workers.ForEach(w => w.Join());
            writer.Flush();
            Assert.Equal(0, writer.DroppedRecords);
        }
        var rows = ReadAll(dir.Path);
        Assert.Equal(threads * perThread, rows.Count);
        for (int t = 0; t < threads; t++)
        {
            Assert.Equal(Enumerable.Range(0, perThread).Where(i => i % 3 == 0), rows.Where(r => r.Kind == TelemetryRowKind.Step && r.StepRecord.Sequence == t).Select(r => r.StepRecord.Token));
            Assert.Equal(Enumerable.Range(0, perThread).Where(i => i % 3 == 1).Select(i => (long)i), rows.Where(r => r.Layer == t).Select(r => r.Step));
        }
    }

    [Fact]
    public void AnUnwritableDirectoryCountsDroppedRowsInsteadOfThrowing()
    {
        using var dir = new TestGguf.TempDirectory();
        File.WriteAllText(dir.File("not-a-directory"), "x");
        var options = new TelemetryLogOptions { Path = Path.Combine(dir.File("not-a-directory"), "logs") + "/" };
        var writer = new TelemetryLogWriter(options, Context);
        var changes = new List<Exception?>();
        writer.FailureChanged += e => { lock (changes) changes.Add(e); };
        for (int i = 0; i < 10; i++) writer.Write(Step(i, i, "r"));
        writer.Flush();
        writer.Write(Layer(1, 1, 1));
        writer.Flush();
        lock (changes) Assert.Single(changes); // said once when rows started being lost, not once per batch
        Assert.NotNull(changes[0]);
        // The obstacle goes away: the next batch is written, and that is said too.
        File.Delete(dir.File("not-a-directory"));
        writer.Write(Step(20, 20, "r"));
        writer.Flush();
        lock (changes) Assert.Equal(2, changes.Count);
        Assert.Null(changes[1]);
        writer.Dispose();
        writer.Write(Step(2, 2, "after dispose"));
        Assert.Equal(12, writer.DroppedRecords);
        Assert.Equal(1, writer.RowsWritten);
        Assert.NotNull(writer.LastError);
    }

    /// <summary>
    /// A disk too slow to keep up (the writer thread stalled, batches piling up) drops the oldest batches and says so
    /// through <see cref="TelemetryLogWriter.FailureChanged"/>, which the server logs as a warning: nothing was raised
    /// (only write errors were), though the README promised the warning. A batch written later without drops says
    /// writing works again.
    /// </summary>
    [Fact]
    public void RowsDroppedBecauseTheWriterFellBehindAreReported()
    {
        using var dir = new TestGguf.TempDirectory();
        using var gate = new ManualResetEventSlim();
        const int batch = 1 << 16;
        using var writer = new TelemetryLogWriter(new TelemetryLogOptions { Path = dir.File("run.arrow"), BatchRows = batch, FlushInterval = TimeSpan.FromHours(1) }, Context);
        var changes = new List<Exception?>();
        writer.FailureChanged += e => { lock (changes) changes.Add(e); };
        writer.BeforeClaim = _ => gate.Wait(TestContext.Current.CancellationToken); // the writer thread stalls holding the file lock
        for (int i = 0; i < 7 * batch; i++) writer.Write(Step(i, i, "r"));
        Assert.True(writer.DroppedRecords > 0);
        gate.Set();
        writer.Flush();
        // Said once the stalled write went through, then "writing again" with the next batch written without drops.
        lock (changes) Assert.Equal(2, changes.Count);
        Assert.Contains("behind", changes[0]!.Message);
        Assert.Null(changes[1]);
    }

    [Fact]
    public void OptionsAreValidatedNamingTheParameter()
    {
        var ok = new TelemetryLogOptions { Path = "/tmp/x" };
        Assert.Equal("MaxFileBytes", Assert.Throws<ArgumentException>(() => (ok with { MaxFileBytes = 0 }).Validate()).ParamName);
        Assert.Equal("MaxTotalBytes", Assert.Throws<ArgumentException>(() => (ok with { MaxTotalBytes = 1 }).Validate()).ParamName);
        Assert.Equal("BatchRows", Assert.Throws<ArgumentException>(() => (ok with { BatchRows = 0 }).Validate()).ParamName);
        Assert.Equal("FlushInterval", Assert.Throws<ArgumentException>(() => (ok with { FlushInterval = TimeSpan.Zero }).Validate()).ParamName);
        Assert.Equal("Path", Assert.Throws<ArgumentException>(() => new TelemetryLogWriter(ok with { Path = " " }, Context)).ParamName);
        Assert.Equal(("/var/log/bitnet", "run"), new TelemetryLogOptions { Path = "/var/log/bitnet/run.arrow" }.Resolve());
        Assert.Equal(("/var/log/bitnet", TelemetryLogOptions.DefaultPrefix), new TelemetryLogOptions { Path = "/var/log/bitnet/" }.Resolve());
        // A new folder with a dot in its name is a folder, not a prefix in its parent.
        Assert.Equal(("/var/log/bitnet/v1.2", TelemetryLogOptions.DefaultPrefix), new TelemetryLogOptions { Path = "/var/log/bitnet/v1.2" }.Resolve());
    }

    [Fact]
    public void FilesThatAreNotOurLogsAreRejectedNamingTheFile()
    {
        using var dir = new TestGguf.TempDirectory();
        string text = dir.File("notes.arrow");
        File.WriteAllText(text, "hello, this is not arrow");
        var e = Assert.Throws<InvalidDataException>(() => TelemetryLogReader.Open(text));
        Assert.Contains(text, e.Message);

        string foreign = dir.File("foreign.arrow");
        var schema = new Schema.Builder().Field(f => f.Name("x").DataType(Int32Type.Default)).Build();
        using (var stream = File.Create(foreign))
        using (var w = new ArrowFileWriter(stream, schema))
        {
            w.WriteRecordBatch(new RecordBatch(schema, [new Int32Array.Builder().Append(1).Build()], 1));
            w.WriteEnd();
        }
        e = Assert.Throws<InvalidDataException>(() => TelemetryLogReader.Open(foreign));
        Assert.Contains(foreign, e.Message);
        Assert.Contains("not a BitNetSharp telemetry log", e.Message);

        Assert.Throws<FileNotFoundException>(() => TelemetryLogReader.Open(dir.File("missing.arrow")));
    }

    [Fact]
    public void ContextHasTheMachineTheCallerAndTheEnvironmentVariable()
    {
        var into = new Dictionary<string, string>();
        var warnings = new List<string>();
        TelemetryContext.ParsePairs("host=a1; experiment = kv-f16 ,broken,=x;;empty=", into, warnings);
        Assert.Equal(new Dictionary<string, string> { ["host"] = "a1", ["experiment"] = "kv-f16", ["empty"] = "" }, into);
        Assert.Equal(2, warnings.Count);
        Assert.Contains("'broken'", warnings[0]);

        string? before = Environment.GetEnvironmentVariable(TelemetryContext.EnvironmentVariable);
        try
        {
            Environment.SetEnvironmentVariable(TelemetryContext.EnvironmentVariable, "site=lab,bad");
            var context = TelemetryContext.Create(out var w, kernel: "avx512-gfni", threads: 8, model: "m.gguf", modelChecksum: "xxh3:1234",
                projectionType: "i2_s", kvType: "f16", activationBits: "qkv=4,gate_up=4");
            Assert.Equal("lab", context["site"]);
            Assert.Single(w);
            Assert.Equal("avx512-gfni", context["kernel"]);
            Assert.Equal("8", context["threads"]);
            Assert.Equal("xxh3:1234", context["model.checksum"]);
            Assert.Equal("i2_s", context["projection.type"]);
            Assert.Equal("f16", context["kv.type"]);
            Assert.Equal("qkv=4,gate_up=4", context["activation.bits"]);
            Assert.False(string.IsNullOrEmpty(context["engine.version"]));
            Assert.False(string.IsNullOrEmpty(context["cpu.model"]));
            if (System.Runtime.Intrinsics.X86.Avx2.IsSupported) Assert.Contains("AVX2", context["cpu.isa"]);
        }
        finally
        {
            Environment.SetEnvironmentVariable(TelemetryContext.EnvironmentVariable, before);
        }
    }

    [Fact]
    public void BytesPerRowOfARealisticRun()
    {
        using var dir = new TestGguf.TempDirectory();
        const int steps = 10_000, layers = 30;
        long layerBytes, stepBytes;
        using (var writer = new TelemetryLogWriter(new TelemetryLogOptions { Path = dir.File("layers.arrow") }, TelemetryContext.Create(out _)))
        {
            var record = new TelemetryLayerRecord();
            for (int s = 0; s < steps; s++)
                for (int l = 0; l < layers; l++)
                {
                    record.TimeUnixNanos = 1_700_000_000_000_000_000 + s * 50_000_000L;
                    record.Step = s;
                    record.Layer = l;
                    record.Tokens = 4;
                    for (int k = 0; k < HealthNames.InputCount; k++)
                    {
                        record.Saturation[k] = (s * 7 + l) % 13 * 1e-4f;
                        record.Underflow[k] = 0.3f + l * 1e-3f;
                        record.CrestFactor[k] = 8f + k;
                    }
                    record.ResidualRms = 1 + l * 0.1f;
                    record.ResidualMaxAbs = 40;
                    record.ResidualChange = 0.05f;
                    writer.Write(record);
                    // An engine logs a step every few milliseconds; a tight loop must not outrun the disk past the bound.
                    if (l == layers - 1 && s % 100 == 99) writer.Flush();
                }
            writer.Dispose();
            layerBytes = writer.BytesWritten;
            Assert.Equal(steps * layers, writer.RowsWritten);
            Assert.Equal(0, writer.DroppedRecords);
        }
        using (var writer = new TelemetryLogWriter(new TelemetryLogOptions { Path = dir.File("steps.arrow") }, TelemetryContext.Create(out _)))
        {
            var request = "chatcmpl-0123456789abcdef";
            var trace = "4bf92f3577b34da6a3ce929d0e0e4736";
            for (int s = 0; s < steps; s++)
                writer.Write(new TelemetryStepRecord(1_700_000_000_000_000_000 + s * 50_000_000L, s, request, trace, 0, 1000 + s % 5000, 4,
                    0.05f, 0.05f, -12f, 18f, 3.2f, 0));
            writer.Dispose();
            stepBytes = writer.BytesWritten;
        }
        double perLayer = (double)layerBytes / (steps * layers), perStep = (double)stepBytes / steps;
        output.WriteLine($"layer rows: {layerBytes:N0} bytes / {steps * layers:N0} = {perLayer:F1} B per row, {perLayer * layers:F0} B per 30-layer step");
        output.WriteLine($"step rows (one logged token, 25-char request id, 32-char trace id): {stepBytes:N0} bytes / {steps:N0} = {perStep:F1} B per row");
        Assert.InRange(perLayer, 100, 200);
        Assert.InRange(perStep, 100, 260);
    }
    private static List<TelemetryRow> FollowUntil(string path, string request, Action? opened, bool fromStart = false, TimeSpan? otherRunAfter = null,
        Action<string>? beforeOpen = null)
    {
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        stop.CancelAfter(TimeSpan.FromSeconds(10));
        var rows = new List<TelemetryRow>();
        foreach (var batch in TelemetryLogReader.Follow(path, TimeSpan.FromMilliseconds(20), stop.Token, fromStart, opened, otherRunAfter, beforeOpen))
            using (batch)
            {
                rows.AddRange(TelemetryLogReader.Rows(batch));
                if (rows.Any(r => r.RequestId == request)) return rows;
            }
        Assert.Fail($"following {path} never showed request {request} ({rows.Count} rows)");
        return rows;
    }

    /// <summary>
    /// A file that following moves on to, deleted before it is opened (the writer's size cap, a cleanup), is passed over
    /// for the one after it: following ended with "no such telemetry log file".
    /// </summary>
    [Fact]
    public void FollowPassesOverAFileDeletedBeforeItIsOpened()
    {
        using var dir = new TestGguf.TempDirectory();
        var options = new TelemetryLogOptions { Path = dir.Path, MaxFileBytes = 16 << 10, MaxTotalBytes = 1 << 30, BatchRows = 50 };
        using (var writer = new TelemetryLogWriter(options, Context))
        {
            for (int step = 0; step < 200; step++)
                for (int layer = 0; layer < 4; layer++) writer.Write(Layer(step, step, layer));
            writer.Write(Step(1, 200, "last"));
            writer.Flush();
            Assert.True(writer.FilesWritten >= 3, $"{writer.FilesWritten} files");
        }
        var files = TelemetryLogReader.Open(dir.Path).Files.Select(f => f.Path).ToList();
        string deleted = files[1];
        var rows = FollowUntil(files[0], "last", null, fromStart: true, beforeOpen: p =>
        {
            if (p == deleted) File.Delete(p);
        });
        Assert.False(File.Exists(deleted));
        Assert.Contains(rows, r => r.Step == 0);
        Assert.Equal("last", rows[^1].RequestId);
    }

    /// <summary>
    /// A deleted file keeps following on its run: with no run id to read from it, following took the next file of any
    /// run at once (another replica's, printed from its start).
    /// </summary>
    [Fact]
    public void FollowKeepsItsRunPastADeletedFile()
    {
        using var dir = new TestGguf.TempDirectory();
        var clock = new AlertEngineTests.ManualTime(); // one second for every file: the counters interleave the runs
        var o = new TelemetryLogOptions { Path = dir.Path, MaxFileBytes = 16 << 10, MaxTotalBytes = 1 << 30, BatchRows = 50, Time = clock, FlushInterval = TimeSpan.FromHours(1) };
        using var a = new TelemetryLogWriter(o, Context);
        int step = 0;
        void Until(int files)
        {
            while (a.FilesWritten < files)
            {
                for (int l = 0; l < 4; l++) a.Write(Layer(step, step, l));
                step++;
                a.Flush();
            }
        }
        Until(2);
        string first = TelemetryLogReader.Open(dir.Path).Files[0].Path, deleted = a.CurrentPath!;
        using (var b = new TelemetryLogWriter(o, Context))
        {
            b.Write(Step(1, 1, "b"));
            b.Flush();
        }
        Until(3);
        a.Write(Step(2, step, "a-last"));
        a.Flush();
        var names = TelemetryLogReader.Open(dir.Path).Files.Select(f => Path.GetFileName(f.Path)).ToList();
        Assert.Equal(4, names.Count); // a, a (deleted below), b, a
        var rows = FollowUntil(first, "a-last", null, fromStart: true, beforeOpen: p =>
        {
            if (p == deleted) File.Delete(p);
        });
        Assert.DoesNotContain(rows, r => r.RequestId == "b");
    }

    /// <summary>Following a directory starts at a file a writer holds, not at a killed writer's footerless one (from
    /// there it printed every later file from its start once idle).</summary>
    [Fact]
    public void FollowStartsAtAHeldFileNotAKilledOne()
    {
        using var dir = new TestGguf.TempDirectory();
        var o = new TelemetryLogOptions { Path = dir.Path, FlushInterval = TimeSpan.FromHours(1) };
        string killed;
        using (var k = new TelemetryLogWriter(o, Context))
        {
            k.Write(Step(0, 0, "killed"));
            k.Flush();
            killed = k.CurrentPath!;
            File.Copy(killed, dir.File("copy.tmp"));
        }
        File.Delete(killed);
        File.Move(dir.File("copy.tmp"), killed); // footerless, held by nobody
        string finished;
        using (var f = new TelemetryLogWriter(o, Context))
        {
            f.Write(Step(1, 1, "finished"));
            f.Flush();
            finished = f.CurrentPath!;
        }
        Assert.Equal(finished, TelemetryLogReader.FollowStart(TelemetryLogReader.Open(dir.Path).Files));
        using var live = new TelemetryLogWriter(o, Context);
        live.Write(Step(2, 2, "live"));
        live.Flush();
        using var after = new TelemetryLogWriter(o, Context);
        after.Write(Step(3, 3, "after"));
        after.Flush();
        after.Dispose(); // finished, newer than the live one
        Assert.Equal(live.CurrentPath, TelemetryLogReader.FollowStart(TelemetryLogReader.Open(dir.Path).Files));
    }

    /// <summary>
    /// Two runs logging into one directory (replicas): following one run's live file stays with it when the other run
    /// starts a newer file; it left for the newer file at the first idle poll, and the live run's later rows were lost.
    /// </summary>
    [Fact]
    public void FollowStaysWithItsRunBesideAnotherRunsNewerFile()
    {
        using var dir = new TestGguf.TempDirectory();
        var options = new TelemetryLogOptions { Path = dir.File("run.arrow"), FlushInterval = TimeSpan.FromHours(1) };
        using var a = new TelemetryLogWriter(options, Context);
        a.Write(Step(1, 1, "a1"));
        a.Flush();
        using var b = new TelemetryLogWriter(options, Context);
        bool started = false;
        var rows = FollowUntil(a.CurrentPath!, "a2", () =>
        {
            if (started) return;
            started = true;
            b.Write(Step(1, 1, "b1"));
            b.Flush();
            Assert.NotEqual(a.CurrentPath, b.CurrentPath);
            Task.Run(() =>
            {
                Thread.Sleep(300); // many polls at the end of a's file, beside b's newer one
                a.Write(Step(2, 2, "a2"));
                a.Flush();
            }, TestContext.Current.CancellationToken);
        }, fromStart: true, otherRunAfter: TimeSpan.FromMinutes(1)); // not the 5 s default: a late thread must not make a idle
        Assert.Equal(["a1", "a2"], rows.Select(r => r.RequestId));
    }

    /// <summary>A run that stopped writing (killed, no footer) is left for another run's newer file once it has been idle a while.</summary>
    [Fact]
    public void FollowLeavesAnIdleRunForAnotherRunsNewerFile()
    {
        using var dir = new TestGguf.TempDirectory();
        var options = new TelemetryLogOptions { Path = dir.File("run.arrow"), FlushInterval = TimeSpan.FromHours(1) };
        using var killed = new TelemetryLogWriter(options, Context);
        killed.Write(Step(1, 1, "old"));
        killed.Flush();
        using var restarted = new TelemetryLogWriter(options, Context);
        restarted.Write(Step(1, 1, "new"));
        restarted.Flush();
        var rows = FollowUntil(killed.CurrentPath!, "new", null, fromStart: true, otherRunAfter: TimeSpan.FromMilliseconds(300));
        Assert.Equal(["old", "new"], rows.Select(r => r.RequestId));
    }

    /// <summary>Following skips what the file held when it began, and only that: a batch appended while the skip is
    /// still reading the old ones is printed (it used to be skipped along with them).</summary>
    [Fact]
    public void FollowPrintsBatchesAppendedWhileItSkipsTheOldOnes()
    {
        using var dir = new TestGguf.TempDirectory();
        using var writer = new TelemetryLogWriter(new TelemetryLogOptions { Path = dir.File("live.arrow"), FlushInterval = TimeSpan.FromHours(1) }, Context);
        for (int batch = 0; batch < 3; batch++)
        {
            writer.Write(Step(batch, batch, "old"));
            writer.Flush();
        }
        bool appended = false;
        var rows = FollowUntil(writer.CurrentPath!, "new", () =>
        {
            if (appended) return;
            appended = true;
            writer.Write(Step(9, 9, "new"));
            writer.Flush();
        });
        Assert.Equal(["new"], rows.Select(r => r.RequestId));
    }

    /// <summary>The followed file deleted by the total-size cap before the follower reached its end: following goes on
    /// in the next file (it used to wait for ever, the deleted file's name not being among the files listed).</summary>
    [Fact]
    public void FollowMovesOnWhenTheFollowedFileIsDeleted()
    {
        using var dir = new TestGguf.TempDirectory();
        var options = new TelemetryLogOptions { Path = dir.Path, MaxFileBytes = 16 << 10, MaxTotalBytes = 48 << 10, BatchRows = 50, FlushInterval = TimeSpan.FromHours(1) };
        using var writer = new TelemetryLogWriter(options, Context);
        writer.Write(Step(0, 0, "first"));
        writer.Flush();
        string first = writer.CurrentPath!;
        bool rotated = false;
        var rows = FollowUntil(first, "last", () =>
        {
            if (rotated) return;
            rotated = true;
            for (int step = 1; step < 400; step++)
                for (int layer = 0; layer < 4; layer++)
                    writer.Write(Layer(step, step, layer));
            writer.Write(Step(400, 400, "last"));
            writer.Flush();
            Assert.False(File.Exists(first), "the cap should have deleted the first file");
        }, fromStart: true);
        Assert.Equal("first", rows[0].RequestId);
        Assert.Equal(400, rows[^1].Step);
    }
}
