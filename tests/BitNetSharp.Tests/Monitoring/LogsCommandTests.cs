using System.Text.Json;
using System.Xml.Linq;
using BitNetSharp.Cli;
using BitNetSharp.Monitoring.Telemetry;
using BitNetSharp.Tests.Formats;
using static BitNetSharp.Tests.Monitoring.TelemetryLogTests;

namespace BitNetSharp.Tests.Monitoring;

/// <summary><c>bitnet logs</c> in-process through <see cref="Program.Run"/>.</summary>
public class LogsCommandTests
{
    private static (int ExitCode, string Output, string Error) Bitnet(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Program.Run(args, output, error);
        return (code, output.ToString(), error.ToString());
    }

    private static readonly long Start = (DateTimeOffset.UtcNow.AddMinutes(-5).ToUnixTimeMilliseconds()) * 1_000_000;

    /// <summary>
    /// Steps 1-4, each with a token of requests a and b and layers 0-2 (sat = 0.0625 × step, so mean 15.625 %, max 25 %),
    /// one second apart, and an alert event for request a.
    /// </summary>
    private static string WriteLog(TestGguf.TempDirectory dir, string a = "a", string b = "b", Dictionary<string, string>? context = null, long offsetNanos = 0)
    {
        using var writer = new TelemetryLogWriter(new TelemetryLogOptions { Path = dir.File("run.arrow") }, context ?? Context);
        for (int step = 1; step <= 4; step++)
        {
            long t = Start + offsetNanos + step * 1_000_000_000L;
            writer.Write(Step(t, step, a, sequence: 0));
            writer.Write(Step(t, step, b, sequence: 1));
            for (int layer = 0; layer < 3; layer++) writer.Write(Layer(t, step, layer));
        }
        writer.Write(new TelemetryEvent(Start + 5_000_000_000L, "alert_firing", a, null, "saturation qkv high"));
        writer.Flush();
        return writer.CurrentPath!;
    }

    /// <summary>
    /// A server logs step rows on every N-th engine step only (--health-every, 8 by default): the summary says its
    /// steps, tokens and requests are a sample and of what share (a log of 960 tokens served read "tokens: 240" bare).
    /// </summary>
    [Fact]
    public void ASampledLogSaysItsCountsAreASample()
    {
        using var dir = new TestGguf.TempDirectory();
        string path = WriteLog(dir, context: new Dictionary<string, string>(Context) { ["health.sample_every"] = "4" });
        var (code, output, error) = Bitnet("logs", path);
        Assert.True(code == 0, error);
        Assert.Contains("requests: 2 (with a logged step)", output);
        Assert.Contains("steps: 4 logged", output);
        Assert.Contains("tokens: 8 logged,", output);
        Assert.Contains("the server logs one engine step in 4 (--health-every 4, health.sample_every)", output);

        using var every = new TestGguf.TempDirectory();
        (code, output, error) = Bitnet("logs", WriteLog(every, context: new Dictionary<string, string>(Context) { ["health.sample_every"] = "1" }));
        Assert.True(code == 0, error);
        Assert.Contains("steps: 4\n", output.ReplaceLineEndings("\n"));
        Assert.DoesNotContain("sampled", output);

        // Two runs in one directory, one logging every step and one every 8th: a mixed sample, not "about 1/8".
        using var mixed = new TestGguf.TempDirectory();
        WriteLog(mixed, context: new Dictionary<string, string>(Context) { ["health.sample_every"] = "1" });
        WriteLog(mixed, "c", "d", new Dictionary<string, string>(Context) { ["health.sample_every"] = "8" });
        (code, output, error) = Bitnet("logs", mixed.Path);
        Assert.True(code == 0, error);
        Assert.Contains("health.sample_every differs by run", output);
        Assert.DoesNotContain("about 1/8", output);
    }

    /// <summary>
    /// A file cut off before its ARROW1 magic was whole (empty, or an interrupted copy's first bytes) holds no rows and
    /// leaves the rest of the directory readable (it made the whole directory fail, "not an Arrow IPC file"); a file
    /// whose first bytes are not the magic is still refused by name.
    /// </summary>
    [Fact]
    public void AFileCutBeforeItsMagicIsReadAsEmpty()
    {
        using var dir = new TestGguf.TempDirectory();
        WriteLog(dir);
        File.WriteAllBytes(dir.File("telemetry-empty.arrow"), []);
        File.WriteAllBytes(dir.File("telemetry-short.arrow"), "ARR"u8.ToArray());
        var (code, output, error) = Bitnet("logs", dir.Path);
        Assert.True(code == 0, error);
        Assert.Contains("rows: 21 (step 8, layer 12, event 1)", output);
        Assert.Contains("telemetry-empty.arrow", output);

        File.WriteAllBytes(dir.File("telemetry-junk.arrow"), "XYZ"u8.ToArray());
        (code, _, error) = Bitnet("logs", dir.Path);
        Assert.NotEqual(0, code);
        Assert.Contains("telemetry-junk.arrow: not an Arrow IPC file (no ARROW1 magic)", error);
    }

    /// <summary>
    /// A damaged row-kind name in a batch's dictionary is refused naming the file: "stepLayerevent" made every layer row a
    /// row of no kind, and the summary read 8 rows of 20 (the layer rows silently gone), exit 0.
    /// </summary>
    [Fact]
    public void ADamagedKindNameIsRefused()
    {
        using var dir = new TestGguf.TempDirectory();
        string path = WriteLog(dir);
        var bytes = File.ReadAllBytes(path);
        int at = bytes.AsSpan().IndexOf("steplayerevent"u8);
        Assert.True(at > 0, "the kinds' dictionary in the file");
        bytes[at + 4] = (byte)'L';
        File.WriteAllBytes(path, bytes);
        var (code, output, error) = Bitnet("logs", path);
        Assert.NotEqual(0, code);
        Assert.Contains(path, error);
        Assert.Contains("column kind: dictionary entry 1 is \"Layer\", none of step, layer, event", error);
        Assert.DoesNotContain("rows:", output);
    }

    /// <summary>
    /// A complete file whose messages hold more record batches than its footer lists (a batch copied once more) is
    /// refused: the duplicate's rows were counted twice, exit 0.
    /// </summary>
    [Fact]
    public void MoreBatchesThanTheFooterListsIsDamage()
    {
        using var dir = new TestGguf.TempDirectory();
        string path = WriteLog(dir);
        // The log's first batch written again by Arrow's own writer, once and twice: the twice file's messages with the
        // once file's footer.
        byte[] Written(int copies)
        {
            using var source = File.OpenRead(path);
            using var reader = new Apache.Arrow.Ipc.ArrowFileReader(source);
            using var batch = reader.ReadNextRecordBatch();
            using var m = new MemoryStream();
            using (var writer = new Apache.Arrow.Ipc.ArrowFileWriter(m, reader.Schema, leaveOpen: true))
            {
                for (int i = 0; i < copies; i++) writer.WriteRecordBatch(batch);
                writer.WriteEnd();
            }
            return m.ToArray();
        }
        static int FooterStart(byte[] b) => b.Length - 10 - BitConverter.ToInt32(b, b.Length - 10);
        byte[] once = Written(1), twice = Written(2);
        string good = dir.File("once.arrow"), bad = dir.File("spliced.arrow");
        File.WriteAllBytes(good, once);
        File.WriteAllBytes(bad, [.. twice.AsSpan(0, FooterStart(twice)), .. once.AsSpan(FooterStart(once))]);
        Assert.Equal(0, Bitnet("logs", good).Item1);
        var (code, _, error) = Bitnet("logs", bad);
        Assert.NotEqual(0, code);
        Assert.Contains($"{bad}: the file's footer lists 1 record batches, but its messages hold 2; the file is damaged.", error);
    }

    /// <summary>
    /// --out through a link to a log being read is refused like the log's own path: compared as text, the export went
    /// through the link and replaced the log (and other letter case did the same on macOS and Windows).
    /// </summary>
    [Fact]
    public void AnExportThroughALinkToAnInputLogIsRefused()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS(), "symbolic links without privileges");
        using var dir = new TestGguf.TempDirectory();
        string path = WriteLog(dir);
        using var elsewhere = new TestGguf.TempDirectory();
        string link = elsewhere.File("export.csv");
        File.CreateSymbolicLink(link, path);
        var before = File.ReadAllBytes(path);
        var (code, _, error) = Bitnet("logs", path, "--export", "csv", "--out", link);
        Assert.Equal(2, code);
        Assert.Contains("is one of the telemetry logs being read", error);
        Assert.Equal(before, File.ReadAllBytes(path));
    }

    [Fact]
    public void SummaryShowsContextCountsLayersLogitsAndEvents()
    {
        using var dir = new TestGguf.TempDirectory();
        string path = WriteLog(dir);
        var (code, output, error) = Bitnet("logs", path);
        Assert.Equal("", error);
        Assert.Equal(0, code);
        Assert.Contains(path, output);
        Assert.Contains("model = tiny", output);
        Assert.Contains("rows: 21 (step 8, layer 12, event 1)", output);
        Assert.Contains("requests: 2", output);
        Assert.Contains("steps: 4", output);
        Assert.Contains("(4 s)", output);
        Assert.Contains("15.625 / 25.000", output); // saturation mean / max in %
        Assert.Contains("50.000 / 50.000", output); // underflow
        Assert.Contains("7.00 / 7.00", output); // crest of the down input
        // The KV cache's rounding per layer, keys and values, in %.
        Assert.Contains("KV cache rounding % (||x - stored|| / ||x|| of the rows written), mean / max:", output);
        Assert.Matches(@"\n +2 +0\.700 / 0\.700 +0\.750 / 0\.750\n", output);
        Assert.Contains("logits: min -4.5, max 12.25, entropy mean 2.5; sequences ended by non-finite logits: 0", output);
        Assert.Contains("step time mean 20 ms over 4 steps", output);
        Assert.Contains("alert_firing  request a  saturation qkv high", output);
        Assert.Equal(output, Bitnet("logs", dir.Path, "--summary").Output);
    }

    /// <summary>
    /// A copy of a log file read beside the original (a live folder and a backup of it) is read once, said in a note: its
    /// rows, tokens and events were counted twice (rows 42, every event listed twice) while steps and requests were not.
    /// The longer of the two is read (a copy cut short loses nothing the original has).
    /// </summary>
    [Fact]
    public void ACopyOfAFileInAnotherFolderIsReadOnce()
    {
        using var dir = new TestGguf.TempDirectory();
        string path = WriteLog(dir);
        string backup = Path.Combine(dir.Path, "backup");
        Directory.CreateDirectory(backup);
        string copy = Path.Combine(backup, Path.GetFileName(path));
        File.Copy(path, copy);
        var (code, output, error) = Bitnet("logs", dir.Path, backup);
        Assert.True(code == 0, error);
        Assert.Contains("rows: 21 (step 8, layer 12, event 1)", output);
        Assert.Contains($"{copy}: a copy of {path} (the same run and file name), read once", output);
        var (exportCode, _, exportError) = Bitnet("logs", dir.Path, backup, "--export", "jsonl", "--out", dir.File("rows.jsonl"));
        Assert.True(exportCode == 0, exportError);
        Assert.Equal(21, File.ReadAllLines(dir.File("rows.jsonl")).Length);
        Assert.Contains("read once", exportError);

        // Three copies of one length: each note names the one read (the first named), not a copy a later one replaced.
        string third = Path.Combine(dir.Path, "third");
        Directory.CreateDirectory(third);
        File.Copy(path, Path.Combine(third, Path.GetFileName(path)));
        (code, output, error) = Bitnet("logs", dir.Path, backup, third);
        Assert.True(code == 0, error);
        Assert.Contains("rows: 21 (step 8, layer 12, event 1)", output);
        Assert.Contains($"{copy}: a copy of {path} (", output);
        Assert.Contains($"{Path.Combine(third, Path.GetFileName(path))}: a copy of {path} (", output);
        Directory.Delete(third, true);

        // A copy cut short: the whole original is read, whichever is named first.
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(copy, bytes[..(bytes.Length / 2)]);
        (code, output, error) = Bitnet("logs", backup, dir.Path);
        Assert.True(code == 0, error);
        Assert.Contains("rows: 21 (step 8, layer 12, event 1)", output);
        Assert.Contains($"{copy}: a copy of {path}", output);
    }

    /// <summary>
    /// Events are counted by kind and the first and last twenty printed (every one was kept and printed: thousands of
    /// alert transitions flooded the summary and were all held in memory).
    /// </summary>
    [Fact]
    public void SummaryCountsEventsByKindAndPrintsTheFirstAndLast()
    {
        using var dir = new TestGguf.TempDirectory();
        string path;
        using (var writer = new TelemetryLogWriter(new TelemetryLogOptions { Path = dir.File("run.arrow") }, Context))
        {
            for (int i = 0; i < 50; i++)
                writer.Write(new TelemetryEvent(Start + i * 1_000_000L, i % 2 == 0 ? "alert_firing" : "alert_resolved", null, null, $"transition {i}"));
            writer.Flush();
            path = writer.CurrentPath!;
        }
        var (code, output, error) = Bitnet("logs", path);
        Assert.True(code == 0, error);
        Assert.Contains("events: 50 (alert_firing 25, alert_resolved 25)", output);
        Assert.Contains("transition 0", output);
        Assert.Contains("transition 19", output);
        Assert.DoesNotContain("transition 20\n", output.Replace("\r", ""));
        Assert.Contains("... 10 more (--export jsonl lists every event) ...", output);
        Assert.Contains("transition 49", output);
        Assert.Equal(40, output.Split('\n').Count(l => l.Contains("  transition ", StringComparison.Ordinal)));
    }

    /// <summary>
    /// A request's non-finite logits: the step that produced them writes no step row for it (the check throws first), only
    /// the event, and that step's layer rows show the blow-up. The event carries that step, and `--request` keeps those
    /// layer rows (it dropped them; the event named the last step written, an earlier one).
    /// </summary>
    [Fact]
    public void RequestFilterKeepsTheLayerRowsOfTheStepWhoseLogitsWentNonFinite()
    {
        using var dir = new TestGguf.TempDirectory();
        string path;
        using (var writer = new TelemetryLogWriter(new TelemetryLogOptions { Path = dir.File("run.arrow") }, Context))
        {
            writer.Write(Step(Start + 8, 8, "a"));
            writer.Write(Layer(Start + 8, 8, 0));
            writer.Write(new TelemetryEvent(Start + 16, "nonfinite_logits", "a", null, "NaN in the logits") { Step = 16 });
            var blown = Layer(Start + 16, 16, 0);
            blown.ResidualChange = float.NaN;
            writer.Write(blown);
            writer.Flush();
            path = writer.CurrentPath!;
        }
        string jsonl = dir.File("a.jsonl");
        var (code, _, error) = Bitnet("logs", path, "--request", "a", "--export", "jsonl", "--out", jsonl);
        Assert.True(code == 0, error);
        var rows = File.ReadAllLines(jsonl).Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal([8L, 16L], rows.Where(r => r.GetProperty("kind").GetString() == "layer").Select(r => r.GetProperty("step").GetInt64()));
        Assert.Equal(16, rows.Single(r => r.GetProperty("kind").GetString() == "event").GetProperty("step").GetInt64());
    }

    /// <summary>
    /// An export of a file cut off at its end (here inside its footer) writes every row before the cut and says on stderr
    /// which file was cut off: it said only "wrote N rows", and before that the cut footer failed the whole command.
    /// </summary>
    [Fact]
    public void AnExportNamesAFileCutOff()
    {
        using var dir = new TestGguf.TempDirectory();
        string whole = WriteLog(dir);
        string cut = dir.File("cut-20250101T000000Z-0001.arrow");
        File.WriteAllBytes(cut, File.ReadAllBytes(whole)[..^3]);
        File.Delete(whole);
        string csv = dir.File("out.csv");
        var (code, output, error) = Bitnet("logs", cut, "--export", "csv", "--out", csv);
        Assert.True(code == 0, error);
        Assert.Contains("wrote 21 rows", error); // on stderr: `--out /dev/stdout` ended with it, not JSON
        Assert.DoesNotContain("wrote", output);
        Assert.Contains($"note: {cut}: cut off", error);
        Assert.Contains($"{cut}: cut off", Bitnet("logs", cut).Output);
    }

    /// <summary>
    /// A layer that went NaN or ∞ is named with its first step: the statistics skip non-finite values, so a layer that
    /// blew up read as its finite rows (and one whose every value was NaN read max 0).
    /// </summary>
    [Fact]
    public void SummaryNamesTheLayersThatWentNonFinite()
    {
        using var dir = new TestGguf.TempDirectory();
        using (var writer = new TelemetryLogWriter(new TelemetryLogOptions { Path = dir.File("run.arrow") }, Context))
        {
            writer.Write(Layer(Start + 1, 1, 3));
            writer.Write(Layer(Start + 1, 1, 4));
            var bad = Layer(Start + 2, 2, 3);
            bad.ResidualChange = float.NaN;
            bad.ResidualMaxAbs = float.PositiveInfinity;
            bad.CrestFactor[0] = float.NaN;
            writer.Write(bad);
            var all = Layer(Start + 2, 2, 4);
            all.ResidualChange = float.NaN;
            writer.Write(all);
            writer.Flush();
        }
        var (code, output, error) = Bitnet("logs", dir.Path);
        Assert.Equal("", error);
        Assert.Equal(0, code);
        Assert.Matches(@"layer 3: 1 of 2 rows, first at step 2, \S+ \(crest qkv, residual max\|x\|, residual change\)", output);
        Assert.Matches(@"layer 4: 1 of 2 rows, first at step 2, \S+ \(residual change\)", output);
        using var dir2 = new TestGguf.TempDirectory();
        string healthy = WriteLog(dir2);
        Assert.Contains("non-finite values (NaN, ±∞) in layer rows: none", Bitnet("logs", healthy).Output);
    }

    /// <summary>The path given to the writer (`serve --telemetry-log logs/run.arrow`) reads the files it wrote: it was
    /// "no such telemetry log file".</summary>
    [Fact]
    public void TheWritersPathReadsItsFiles()
    {
        using var dir = new TestGguf.TempDirectory();
        WriteLog(dir);
        var (code, output, error) = Bitnet("logs", dir.File("run.arrow"));
        Assert.Equal("", error);
        Assert.Equal(0, code);
        Assert.Contains("rows: 21", output);
        var (missing, _, message) = Bitnet("logs", dir.File("other.arrow"));
        Assert.Equal(1, missing);
        Assert.Contains("other-*.arrow", message);
    }

    [Fact]
    public void TwoRunsInOneDirectoryAreCountedApartAndListed()
    {
        // A restarted server logs into the same directory: its steps are numbered from the start again.
        using var dir = new TestGguf.TempDirectory();
        WriteLog(dir);
        WriteLog(dir, "c", "d", new Dictionary<string, string>(Context) { ["model"] = "other" });
        var (code, output, error) = Bitnet("logs", dir.Path);
        Assert.Equal("", error);
        Assert.Equal(0, code);
        Assert.Contains("rows: 42 (step 16, layer 24, event 2)", output);
        Assert.Contains("requests: 4", output);
        Assert.Contains("steps: 8", output); // 4 per run; keyed by step alone this read 4
        Assert.Contains("step time mean 20 ms over 8 steps", output);
        Assert.Contains("runs: 2", output);
        Assert.Contains("context (every run):\n  kernel = avx2", output.ReplaceLineEndings("\n"));
        Assert.Contains("    model = tiny", output);
        Assert.Contains("    model = other", output);
        var runs = TelemetryLogReader.Open(dir.Path).Runs;
        Assert.Equal(2, runs.Count);
        Assert.All(runs, r => Assert.Contains("run " + r.Id, output));
        // One run's summary keeps its plain context block.
        Assert.DoesNotContain("runs:", Bitnet("logs", runs[0].Files[0].Path).Output);
    }

    [Fact]
    public void RequestFilterKeepsOnlyItsOwnRunsLayerRows()
    {
        using var dir = new TestGguf.TempDirectory();
        WriteLog(dir);
        WriteLog(dir, "c", "d");
        // Request a's steps 1-4 are also steps 1-4 of the second run: keyed by step alone, its 12 layer rows came along.
        Assert.Contains("rows: 17 (step 4, layer 12, event 1)", Bitnet("logs", dir.Path, "--request", "a").Output);
        string jsonl = dir.File("a.jsonl");
        Assert.Equal(0, Bitnet("logs", dir.Path, "--request", "a", "--export", "jsonl", "--out", jsonl).ExitCode);
        var docs = File.ReadAllLines(jsonl).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal(17, docs.Count);
        string run = TelemetryLogReader.Open(dir.Path).Runs[0].Id!;
        Assert.All(docs, d => Assert.Equal(run, d.GetProperty("run").GetString()));
    }

    [Fact]
    public void FiltersSelectRequestLayerAndTime()
    {
        using var dir = new TestGguf.TempDirectory();
        string path = WriteLog(dir);
        string Summary(params string[] extra) => Bitnet(["logs", path, .. extra]).Output;

        Assert.Contains("rows: 17 (step 4, layer 12, event 1)", Summary("--request", "a"));
        Assert.Contains("rows: 13 (step 8, layer 4, event 1)", Summary("--layer", "1"));
        Assert.Contains("rows: 0", Summary("--request", "nobody"));
        Assert.Contains("rows: 21", Summary("--since", "1h"));
        Assert.Contains("rows: 0", Summary("--since", "1m"));
        Assert.Contains("rows: 0", Summary("--until", "2020-01-01T00:00:00Z"));
        string t2 = DateTimeOffset.UnixEpoch.AddTicks((Start + 2_000_000_000L) / 100).ToString("O");
        string t3 = DateTimeOffset.UnixEpoch.AddTicks((Start + 3_000_000_000L) / 100).ToString("O");
        Assert.Contains("rows: 10 (step 4, layer 6, event 0)", Summary("--since", t2, "--until", t3));
    }

    /// <summary>
    /// A step's layer rows are stamped when it is measured and its step rows as each token is delivered, later: a
    /// --since or --until between the two kept the step's tokens without its layers (or its layers alone). A step's
    /// rows go together, at its first row's time.
    /// </summary>
    [Fact]
    public void TimeFiltersKeepAStepsRowsTogether()
    {
        using var dir = new TestGguf.TempDirectory();
        string path;
        using (var writer = new TelemetryLogWriter(new TelemetryLogOptions { Path = dir.File("run.arrow") }, Context))
        {
            for (int step = 1; step <= 3; step++)
            {
                // As the server writes them: step rows as each token is delivered (2 and 4 ms after the measurement), then
                // the layer rows, stamped with the measurement's time.
                long t = Start + step * 1_000_000_000L;
                writer.Write(Step(t + 2_000_000, step, "a", sequence: 0));
                writer.Write(Step(t + 4_000_000, step, "b", sequence: 1));
                for (int layer = 0; layer < 3; layer++) writer.Write(Layer(t, step, layer));
            }
            writer.Flush();
            path = writer.CurrentPath!;
        }
        string At(long nanos) => DateTimeOffset.UnixEpoch.AddTicks(nanos / 100).ToString("O");
        string Summary(params string[] extra)
        {
            var (code, output, error) = Bitnet(["logs", path, .. extra]);
            Assert.True(code == 0, error);
            return output;
        }
        // Between step 2's layers and its tokens: step 2 is before --since, whole; step 3 after it, whole.
        Assert.Contains("rows: 5 (step 2, layer 3, event 0)", Summary("--since", At(Start + 2_001_000_000L)));
        // Between them on --until: step 2 is in (its time is its measurement's), tokens and layers.
        Assert.Contains("rows: 10 (step 4, layer 6, event 0)", Summary("--until", At(Start + 2_001_000_000L)));
        Assert.Contains("rows: 5 (step 2, layer 3, event 0)", Summary("--since", At(Start + 1_500_000_000L), "--until", At(Start + 2_003_000_000L)));

        string jsonl = dir.File("rows.jsonl");
        var (exit, _, err) = Bitnet("logs", path, "--since", At(Start + 2_001_000_000L), "--until", At(Start + 3_001_000_000L), "--export", "jsonl", "--out", jsonl);
        Assert.True(exit == 0, err);
        var steps = File.ReadAllLines(jsonl).Select(l => JsonDocument.Parse(l).RootElement.GetProperty("step").GetInt64()).ToArray();
        Assert.Equal([3, 3, 3, 3, 3], steps);
    }

    /// <summary>A log whose every served sequence ended by non-finite logits still counts them (the line went with the tokens line, absent without served tokens).</summary>
    [Fact]
    public void ASummaryCountsNonFiniteEndsWithoutServedTokens()
    {
        using var dir = new TestGguf.TempDirectory();
        string path;
        using (var writer = new TelemetryLogWriter(new TelemetryLogOptions { Path = dir.File("run.arrow") }, Context))
        {
            writer.Write(Layer(Start + 1_000_000_000L, 1, 0));
            writer.Write(new TelemetryEvent(Start + 1_000_000_001L, "nonfinite_logits", "a", null, "NaN from layer 0") { Step = 1 });
            // The warm-up's own (a load that failed so): not a served sequence.
            writer.Write(new TelemetryEvent(Start + 1_000_000_002L, "nonfinite_logits", TelemetryLogSchema.WarmupRequestIdPrefix + "1", null, "NaN from layer 0") { Step = 1 });
            writer.Flush();
            path = writer.CurrentPath!;
        }
        var (code, output, error) = Bitnet("logs", path);
        Assert.True(code == 0, error);
        Assert.Contains("sequences ended by non-finite logits: 1", output);
    }

    [Fact]
    public void ExportsCsvAndJsonLines()
    {
        using var dir = new TestGguf.TempDirectory();
        string path = WriteLog(dir);
        string csv = dir.File("rows.csv"), jsonl = dir.File("rows.jsonl");

        var (code, _, exportError) = Bitnet("logs", path, "--export", "csv", "--out", csv, "--layer", "2", "--request", "b");
        Assert.Equal(0, code);
        Assert.Contains("wrote 8 rows", exportError);
        var lines = File.ReadAllLines(csv);
        Assert.Equal(string.Join(',', TelemetryLogSchema.ColumnNames) + ",run", lines[0]);
        Assert.Equal(9, lines.Length);
        var header = lines[0].Split(',');
        var layerRow = lines.Skip(1).Select(l => l.Split(',')).First(c => c[1] == "layer");
        Assert.Equal("2", layerRow[Array.IndexOf(header, "layer")]);
        Assert.Equal("0.0625", layerRow[Array.IndexOf(header, "sat_qkv")]);
        Assert.Equal("", layerRow[Array.IndexOf(header, "request_id")]);
        var stepRow = lines.Skip(1).Select(l => l.Split(',')).First(c => c[1] == "step");
        Assert.Equal("b", stepRow[Array.IndexOf(header, "request_id")]);
        Assert.Equal("12.25", stepRow[Array.IndexOf(header, "logit_max")]);
        Assert.Equal(TelemetryLogReader.Open(path).Files[0].RunId, stepRow[Array.IndexOf(header, "run")]);

        (code, _, _) = Bitnet("logs", path, "--export", "jsonl", "--out", jsonl);
        Assert.Equal(0, code);
        var docs = File.ReadAllLines(jsonl).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal(21, docs.Count);
        var ev = docs.Single(d => d.GetProperty("kind").GetString() == "event");
        Assert.Equal("saturation qkv high", ev.GetProperty("message").GetString());
        Assert.Equal(4, ev.GetProperty("step").GetInt64());
        Assert.False(ev.TryGetProperty("layer", out _));
        var layer = docs.First(d => d.GetProperty("kind").GetString() == "layer");
        Assert.Equal(0.0625, layer.GetProperty("sat_qkv").GetDouble());
        Assert.EndsWith("Z", layer.GetProperty("time").GetString());
        Assert.Empty(Directory.GetFiles(dir.Path, ".*tmp*"));
    }

    /// <summary>
    /// Two runs whose files read in one order and whose rows lie in the other (a replica that started earlier, a clock
    /// stepped back): the plot's x axis starts at the earliest row and each line runs forward in time (the first row
    /// read was the origin, so x went negative, and the lines ran back and forth).
    /// </summary>
    [Fact]
    public void PlotLinesRunForwardInTimeAcrossRuns()
    {
        using var dir = new TestGguf.TempDirectory();
        WriteLog(dir);
        WriteLog(dir, "c", "d", offsetNanos: -30_000_000_000L);
        string svg = dir.File("sat.svg");
        var (code, _, error) = Bitnet("logs", dir.Path, "--plot", svg);
        Assert.True(code == 0, error);
        var doc = XDocument.Load(svg);
        XNamespace ns = "http://www.w3.org/2000/svg";
        var lines = doc.Descendants(ns + "polyline").ToList();
        Assert.Equal(3, lines.Count);
        foreach (var line in lines)
        {
            var xs = ((string)line.Attribute("points")!).Split(' ').Select(p => double.Parse(p.Split(',')[0], System.Globalization.CultureInfo.InvariantCulture)).ToList();
            Assert.Equal(8, xs.Count);
            Assert.Equal(xs.Order(), xs);
        }
    }

    /// <summary>
    /// A metric with no value in any row (the KV rounding of a log written before its columns existed reads NaN) drew
    /// empty axes without a word; it is said, and a log with values says nothing.
    /// </summary>
    [Fact]
    public void APlotOfAMetricTheLogsLackSaysSo()
    {
        using var dir = new TestGguf.TempDirectory();
        using (var writer = new TelemetryLogWriter(new TelemetryLogOptions { Path = dir.File("run.arrow") }, Context))
        {
            for (int step = 1; step <= 3; step++)
                for (int layer = 0; layer < 2; layer++)
                {
                    var row = TelemetryLogTests.Layer(Start + step * 1_000_000_000L, step, layer);
                    row.KvKeyError = float.NaN;
                    writer.Write(row);
                }
            writer.Flush();
        }
        string svg = dir.File("kv.svg");
        var (code, _, error) = Bitnet("logs", dir.Path, "--plot", svg, "--metric", "kv_err_k");
        Assert.True(code == 0, error);
        Assert.Contains("note: --metric kv_err_k: none of the 6 layer rows has a value", error);
        Assert.Contains("before the KV rounding columns existed", error);
        (code, _, error) = Bitnet("logs", dir.Path, "--plot", svg, "--metric", "kv_err_v");
        Assert.True(code == 0, error);
        Assert.DoesNotContain("note:", error);
    }

    /// <summary>
    /// Two replicas logging into one folder at the same time get a line per run and layer (their rows were merged into one
    /// line per layer, zig-zagging between the two models' values); a layer's ∞ is a gap in its line (it was dropped, and
    /// a layer that blew up was drawn as a clean line).
    /// </summary>
    [Fact]
    public void PlotSeparatesOverlappingRunsAndBreaksLinesAtNonFiniteValues()
    {
        using var dir = new TestGguf.TempDirectory();
        WriteLog(dir);
        WriteLog(dir, "c", "d", offsetNanos: 500_000_000L);
        string svg = dir.File("sat.svg");
        var (code, output, error) = Bitnet("logs", dir.Path, "--plot", svg);
        Assert.True(code == 0, error);
        Assert.Contains("wrote 6 layer series", error);
        XNamespace ns = "http://www.w3.org/2000/svg";
        var lines = XDocument.Load(svg).Descendants(ns + "polyline").ToList();
        Assert.Equal(6, lines.Count);
        Assert.All(lines, l => Assert.StartsWith("run ", (string)l.Attribute("data-series")!));
        Assert.All(lines, l => Assert.Equal(4, ((string)l.Attribute("points")!).Split(' ').Length));

        using var other = new TestGguf.TempDirectory();
        string path;
        using (var writer = new TelemetryLogWriter(new TelemetryLogOptions { Path = other.File("run.arrow") }, Context))
        {
            for (int step = 1; step <= 4; step++)
            {
                var layer = Layer(Start + step * 1_000_000_000L, step, 0);
                if (step == 2) layer.ResidualChange = float.PositiveInfinity;
                writer.Write(layer);
            }
            writer.Flush();
            path = writer.CurrentPath!;
        }
        svg = other.File("change.svg");
        (code, _, error) = Bitnet("logs", path, "--plot", svg, "--metric", "residual_change");
        Assert.True(code == 0, error);
        var runs = XDocument.Load(svg).Descendants(ns + "polyline").Select(l => ((string)l.Attribute("points")!).Split(' ').Length).ToList();
        Assert.Equal([1, 2], runs); // step 1 alone, the gap at step 2, steps 3-4
    }

    [Fact]
    public void PlotIsWellFormedSvgWithOneLinePerLayer()
    {
        using var dir = new TestGguf.TempDirectory();
        string path = WriteLog(dir);
        string svg = dir.File("sat.svg");
        var (code, output, error) = Bitnet("logs", path, "--plot", svg, "--metric", "saturation", "--input", "gate_up");
        Assert.Equal("", output);
        Assert.Equal(0, code);
        Assert.StartsWith("wrote 3 layer series", error); // the status alone on stderr
        var doc = XDocument.Load(svg);
        XNamespace ns = "http://www.w3.org/2000/svg";
        var lines = doc.Descendants(ns + "polyline").ToList();
        Assert.Equal(3, lines.Count);
        Assert.Equal(["layer 0", "layer 1", "layer 2"], lines.Select(l => (string)l.Attribute("data-series")!));
        Assert.All(lines, l => Assert.Equal(4, ((string)l.Attribute("points")!).Split(' ').Length));
        var texts = doc.Descendants(ns + "text").Select(t => t.Value).ToList();
        Assert.Contains(texts, t => t.Contains("saturation gate_up"));
        Assert.Contains("layer 2", texts);
        Assert.Contains("0.25", texts); // a y tick at the maximum

        (code, _, _) = Bitnet("logs", path, "--plot", dir.File("rms.svg"), "--metric", "residual_rms", "--layer", "1");
        Assert.Equal(0, code);
        Assert.Single(XDocument.Load(dir.File("rms.svg")).Descendants(ns + "polyline"));
        (code, _, _) = Bitnet("logs", path, "--plot", dir.File("kv.svg"), "--metric", "kv_err_v");
        Assert.Equal(0, code);
        Assert.Equal(3, XDocument.Load(dir.File("kv.svg")).Descendants(ns + "polyline").Count());
    }

    /// <summary>
    /// --follow with --until between a step's measurement and its tokens' delivery: the step's rows go together (its step
    /// rows are written before its layer rows, which date it), not the layer rows alone.
    /// </summary>
    [Fact]
    public async Task FollowKeepsAStepsRowsTogetherUnderATimeBound()
    {
        using var dir = new TestGguf.TempDirectory();
        var writer = new TelemetryLogWriter(new TelemetryLogOptions { Path = dir.File("live.arrow"), FlushInterval = TimeSpan.FromHours(1) }, Context);
        writer.Write(Step(Start, 1, "before"));
        writer.Flush();
        string path = writer.CurrentPath!;
        string until = DateTimeOffset.UnixEpoch.AddTicks((Start + 500_000_000L) / 100).ToString("O");
        var follow = Task.Run(() => Bitnet("logs", path, "--follow", "--follow-timeout", "5", "--until", until));
        for (int i = 0; !follow.IsCompleted; i++)
        {
            await Task.Delay(200, TestContext.Current.CancellationToken);
            // Measured at Start + 1 µs·i, delivered a second later: past --until, while the step is before it.
            writer.Write(Step(Start + 1_000_000_000L + i, 2 + i, "after"));
            writer.Write(Layer(Start + 1 + i, 2 + i, 5));
            writer.Flush();
        }
        var (code, output, error) = await follow;
        writer.Dispose();
        Assert.True(code == 0, error);
        var rows = output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.NotEmpty(rows);
        Assert.Equal(0, rows.Count % 2); // a step row and its layer row, never the layer alone
        for (int i = 0; i < rows.Count; i += 2)
        {
            Assert.Equal("after", rows[i].GetProperty("request_id").GetString());
            Assert.Equal(rows[i].GetProperty("step").GetInt64(), rows[i + 1].GetProperty("step").GetInt64());
        }
    }

    [Fact]
    public async Task FollowPrintsRowsAppendedAfterItStarted()
    {
        using var dir = new TestGguf.TempDirectory();
        var writer = new TelemetryLogWriter(new TelemetryLogOptions { Path = dir.File("live.arrow"), FlushInterval = TimeSpan.FromHours(1) }, Context);
        writer.Write(Step(Start, 1, "before"));
        writer.Flush();
        string path = writer.CurrentPath!;

        var follow = Task.Run(() => Bitnet("logs", path, "--follow", "--follow-timeout", "5"));
        // Rows keep coming until the follower stops, so however late it opens the file (a loaded machine: thread-pool
        // start and first-use JIT), some come after it; a fixed 3 s of writes could end before a late follower opened.
        for (int i = 0; !follow.IsCompleted; i++)
        {
            await Task.Delay(200, TestContext.Current.CancellationToken);
            writer.Write(Step(Start + 1 + i, 2 + i, "after"));
            writer.Write(Layer(Start + 1 + i, 2 + i, 5));
            writer.Flush();
        }
        var (code, output, error) = await follow;
        writer.Dispose();

        Assert.Equal("", error);
        Assert.Equal(0, code);
        var rows = output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.NotEmpty(rows);
        Assert.Equal(0, rows.Count % 2); // whole batches: a step and its layer
        for (int i = 0; i < rows.Count; i += 2)
        {
            Assert.Equal("after", rows[i].GetProperty("request_id").GetString());
            Assert.Equal(5, rows[i + 1].GetProperty("layer").GetInt32());
        }
        Assert.DoesNotContain("before", output);
    }

    /// <summary>
    /// Following a folder the server has not written to yet waits for its first file and prints it from the start: it
    /// exited at once ("no telemetry log files to follow"), so `serve & logs -f DIR` lost the race every time.
    /// </summary>
    [Fact]
    public async Task FollowingAnEmptyFolderWaitsForTheFirstFile()
    {
        using var dir = new TestGguf.TempDirectory();
        string logs = Directory.CreateDirectory(dir.File("logs")).FullName;
        // The file is made once the follower says it waits (a fixed delay could end before a late follower looked).
        var error = new NoticingWriter("waiting for the first one");
        var output = new StringWriter();
        var follow = Task.Run(() => Program.Run(["logs", logs, "--follow", "--follow-timeout", "8"], output, error));
        await error.Noticed.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        using (var writer = new TelemetryLogWriter(new TelemetryLogOptions { Path = logs, FlushInterval = TimeSpan.FromHours(1) }, Context))
        {
            writer.Write(Step(Start, 1, "first"));
            writer.Flush();
            for (int i = 0; !follow.IsCompleted; i++)
            {
                await Task.Delay(200, TestContext.Current.CancellationToken);
                writer.Write(Step(Start + 1 + i, 2 + i, "later"));
                writer.Flush();
            }
        }
        int code = await follow;
        Assert.Equal(0, code);
        Assert.Contains("\"first\"", output.ToString());
        Assert.Contains("\"later\"", output.ToString());
    }

    /// <summary>A writer that completes <see cref="Noticed"/> once a line containing the given text is written.</summary>
    private sealed class NoticingWriter(string text) : StringWriter
    {
        private readonly TaskCompletionSource _noticed = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public Task Noticed => _noticed.Task;

        public override void WriteLine(string? value)
        {
            lock (this) base.WriteLine(value);
            if (value?.Contains(text, StringComparison.Ordinal) == true) _noticed.TrySetResult();
        }
    }

    /// <summary>
    /// Following a directory starts at the newest file still being written: a second instance started beside a live
    /// one and stopped owned the newest name, and following read its finished file and never the live writer's rows.
    /// </summary>
    [Fact]
    public async Task FollowingADirectoryStartsAtTheLiveFile()
    {
        using var dir = new TestGguf.TempDirectory();
        var options = new TelemetryLogOptions { Path = dir.File("live.arrow"), FlushInterval = TimeSpan.FromHours(1) };
        using var live = new TelemetryLogWriter(options, Context);
        live.Write(Step(Start, 1, "a-before"));
        live.Flush();
        using (var stopped = new TelemetryLogWriter(options, Context))
        {
            stopped.Write(Step(Start, 1, "b"));
            stopped.Flush();
        }
        var follow = Task.Run(() => Bitnet("logs", dir.Path, "--follow", "--follow-timeout", "4"));
        // Rows keep coming until the follower stops, so however late it opens the file (a loaded machine) some come after.
        for (int i = 0; !follow.IsCompleted; i++)
        {
            await Task.Delay(200, TestContext.Current.CancellationToken);
            live.Write(Step(Start + 1 + i, 2 + i, "a-after"));
            live.Flush();
        }
        var (code, output, error) = await follow;
        Assert.Equal("", error);
        Assert.Equal(0, code);
        Assert.Contains("a-after", output);
    }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern int mkfifo([System.Runtime.InteropServices.MarshalAs(System.Runtime.InteropServices.UnmanagedType.LPUTF8Str)] string path, uint mode);

    /// <summary>
    /// An export into a named pipe reaches its reader, and a plot through a link lands in the link's target: both were
    /// renamed over the path (the FIFO replaced by a file nobody read, the link by a plain file).
    /// </summary>
    [Fact]
    public void ExportsGoThroughPipesAndLinks()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "FIFOs are made with Linux's mkfifo here.");
        using var dir = new TestGguf.TempDirectory();
        string path = WriteLog(dir), fifo = dir.File("rows.fifo");
        Assert.Equal(0, mkfifo(fifo, 0x180));
        string? read = null;
        var reader = new Thread(() => read = File.ReadAllText(fifo)) { IsBackground = true };
        reader.Start();
        var (code, _, error) = Bitnet("logs", path, "--export", "csv", "--out", fifo);
        Assert.True(code == 0, error);
        Assert.True(reader.Join(TimeSpan.FromSeconds(30)), "the pipe's reader got no end of file");
        Assert.StartsWith("time,kind,step,", read);
        Assert.True(read!.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length > 4, read);

        string target = dir.File("plot.svg"), link = dir.File("latest.svg");
        File.WriteAllText(target, "old");
        File.CreateSymbolicLink(link, target);
        (code, _, error) = Bitnet("logs", path, "--plot", link);
        Assert.True(code == 0, error);
        Assert.Equal(target, new FileInfo(link).LinkTarget);
        Assert.StartsWith("<svg", File.ReadAllText(target).TrimStart().Replace("<?xml", "<svg", StringComparison.Ordinal));
    }

    [Fact]
    public void BadInputGetsOneClearErrorAndNoOutputFile()
    {
        using var dir = new TestGguf.TempDirectory();
        string path = WriteLog(dir);
        string missing = dir.File("missing.arrow"), notArrow = dir.File("notes.arrow"), csv = dir.File("out.csv");
        File.WriteAllText(notArrow, "plain text");

        var (code, output, error) = Bitnet("logs", missing);
        Assert.Equal(1, code);
        Assert.Equal("", output);
        Assert.Contains(missing, error);
        Assert.Single(error.TrimEnd().Split('\n'));

        (code, _, error) = Bitnet("logs", path, notArrow, "--export", "csv", "--out", csv);
        Assert.Equal(1, code);
        Assert.StartsWith("error: " + notArrow + ": ", error);
        Assert.False(File.Exists(csv));

        (code, _, error) = Bitnet("logs", path, "--plot", dir.File("x.svg"), "--metric", "temperature");
        Assert.Equal(2, code);
        Assert.Contains("--metric 'temperature'", error);
        Assert.False(File.Exists(dir.File("x.svg")));

        (code, _, error) = Bitnet("logs", path, "--export", "csv");
        Assert.Equal(2, code);
        Assert.Contains("--out", error);

        (code, _, error) = Bitnet("logs", path, "--since", "yesterday-ish");
        Assert.Equal(2, code);
        Assert.Contains("--since", error);

        // A mistyped option is a usage error (it was read as a log path: "no such telemetry log", exit 1), and "-" is
        // no file name (it wrote a file named "-").
        (code, _, error) = Bitnet("logs", path, "--sinse", "1h");
        Assert.Equal(2, code);
        Assert.Contains("unrecognized option '--sinse'", error);
        (code, _, error) = Bitnet("logs", path, "--export", "csv", "--out", "-");
        Assert.Equal(2, code);
        Assert.Contains("--out /dev/stdout", error);

        // A negative layer matched nothing and said nothing.
        (code, output, error) = Bitnet("logs", path, "--layer", "-1");
        Assert.Equal(2, code);
        Assert.Contains("--layer must be a layer index, 0 or more; got -1", error);
        Assert.Equal("", output);

        // A layer past the logs' last matched nothing and said nothing.
        (code, _, error) = Bitnet("logs", path, "--layer", "99");
        Assert.Equal(0, code);
        Assert.Contains("note: --layer 99: no rows of that layer; these logs have layers 0 to 2.", error);
        (code, _, error) = Bitnet("logs", path, "--layer", "2");
        Assert.Equal(0, code);
        Assert.DoesNotContain("--layer", error);

        // A folder without logs printed an empty summary and exited 0, as if the run had logged nothing.
        string empty = Directory.CreateDirectory(dir.File("empty")).FullName;
        (code, output, error) = Bitnet("logs", empty, "--export", "csv", "--out", csv);
        Assert.Equal(1, code);
        Assert.Contains("no telemetry logs (*.arrow) found", error);
        Assert.Equal("", output);
        Assert.False(File.Exists(csv));

        (code, _, error) = Bitnet("logs", path, "--export", "csv", "--out", dir.File("no/such/dir/out.csv"));
        Assert.Equal(1, code);
        Assert.Contains("no/such/dir/out.csv", error);
        Assert.Empty(Directory.GetFiles(dir.Path, ".*tmp*"));
    }

    /// <summary>
    /// An output path naming a log being read (or a directory, or an .arrow name in the log directory) is refused before
    /// anything is written: before, --export/--plot renamed their result over the log and reported success.
    /// </summary>
    [Fact]
    public void OutputsNeverReplaceALogBeingRead()
    {
        using var dir = new TestGguf.TempDirectory();
        string path = WriteLog(dir);
        byte[] log = File.ReadAllBytes(path);
        foreach (var args in new[]
        {
            new[] { "logs", path, "--export", "csv", "--out", path },
            ["logs", path, "--plot", path],
            ["logs", dir.Path, "--export", "jsonl", "--out", path],
        })
        {
            var (code, output, error) = Bitnet(args);
            Assert.Equal(2, code);
            Assert.Contains("is one of the telemetry logs being read", error);
            Assert.Equal("", output);
            Assert.Equal(log, File.ReadAllBytes(path));
        }
        var (c, _, e) = Bitnet("logs", dir.Path, "--export", "csv", "--out", dir.File("export.arrow"));
        Assert.Equal(2, c);
        Assert.Contains("not a telemetry log into the log directory", e);
        Assert.False(File.Exists(dir.File("export.arrow")));
        (c, _, e) = Bitnet("logs", path, "--export", "csv", "--out", dir.Path);
        Assert.Equal(2, c);
        Assert.Contains("is a directory", e);
        Assert.Equal(log, File.ReadAllBytes(path));
        Assert.Empty(Directory.GetFiles(dir.Path, ".*tmp*"));
    }

    /// <summary>Huge durations are a clear error (--follow-timeout) or mean "everything" (--since), not an overflow's stack trace.</summary>
    [Fact]
    public void HugeDurationsDoNotOverflow()
    {
        using var dir = new TestGguf.TempDirectory();
        string path = WriteLog(dir);
        var (code, output, error) = Bitnet("logs", path, "--since", "1e9d");
        Assert.Equal(0, code);
        Assert.Equal("", error);
        Assert.Contains("rows: 21 (", output);
        (code, _, error) = Bitnet("logs", path, "-f", "--follow-timeout", "1e300");
        Assert.Equal(2, code);
        Assert.Contains("--follow-timeout must be a positive number of seconds, at most", error);
        // Times past 2262 wrapped around to negative nanoseconds and dropped every row.
        Assert.Contains("rows: 21 (", Bitnet("logs", path, "--until", "9999-12-31").Output);
        Assert.Contains("rows: 21 (", Bitnet("logs", path, "--since", "0001-01-01", "--until", "3000-01-01").Output);
        (code, _, error) = Bitnet("logs", path, "--since", "3000-01-01", "--until", "2020-01-01");
        Assert.Equal(2, code);
        Assert.Contains("--since is later than --until", error);
    }

    /// <summary>
    /// A log file cut off before its schema (the writer killed right after creating it) holds no rows and is listed as
    /// cut off; it made every read of its folder fail with "not a BitNetSharp telemetry log".
    /// </summary>
    [Fact]
    public void AFileCutOffBeforeItsSchemaDoesNotBlockItsFolder()
    {
        using var dir = new TestGguf.TempDirectory();
        WriteLog(dir);
        string torn = dir.File("zz-torn.arrow");
        File.WriteAllBytes(torn, "ARROW1\0\0"u8.ToArray());
        var (code, output, error) = Bitnet("logs", dir.Path);
        Assert.True(code == 0, error);
        Assert.Contains("rows: 21 (", output);
        Assert.Contains(torn, output + error);
        File.WriteAllBytes(torn, [.. "ARROW1\0\0"u8, 0xFF, 0xFF, 0xFF, 0xFF, 0x40, 0x00]); // torn inside the schema's length
        (code, output, error) = Bitnet("logs", dir.Path);
        Assert.True(code == 0, error);
        Assert.Contains("rows: 21 (", output);
    }

    /// <summary>The step time is a mean over steps (a 3-token step counted 3 times), and ended-by-NaN sequences are counted from their events.</summary>
    [Fact]
    public void StepTimeIsAMeanOverStepsAndNonFiniteSequencesAreCounted()
    {
        using var dir = new TestGguf.TempDirectory();
        string path;
        using (var writer = new TelemetryLogWriter(new TelemetryLogOptions { Path = dir.File("run.arrow") }, Context))
        {
            writer.Write(Step(Start, 1, "a") with { StepSeconds = 0.02f });
            for (int i = 0; i < 3; i++) writer.Write(Step(Start + 1000, 2, "a", sequence: i) with { StepSeconds = 0.06f });
            writer.Write(new TelemetryEvent(Start + 2000, "nonfinite_logits", "b", null, "NaN from layer 3"));
            writer.Flush();
            path = writer.CurrentPath!;
        }
        var output = Bitnet("logs", path).Output;
        Assert.Contains("step time mean 40 ms over 2 steps", output); // 50 ms when averaged per token row
        Assert.Contains("sequences ended by non-finite logits: 1", output);
    }

    /// <summary>
    /// The server's warm-up steps (request ids warmup-N; the JIT's first compilations make them slow) are counted apart:
    /// they were in the tokens, step time and latency of the traffic (a 78 ms warm-up step beside 1 ms served ones).
    /// </summary>
    [Fact]
    public void WarmupStepsAreKeptOutOfTheTrafficFigures()
    {
        using var dir = new TestGguf.TempDirectory();
        string path;
        using (var writer = new TelemetryLogWriter(new TelemetryLogOptions { Path = dir.File("run.arrow") }, Context))
        {
            writer.Write(Step(Start, 1, TelemetryLogSchema.WarmupRequestIdPrefix + "0") with { StepSeconds = 0.5f, LatencySeconds = 0.5f });
            writer.Write(Step(Start, 1, TelemetryLogSchema.WarmupRequestIdPrefix + "1", sequence: 1) with { StepSeconds = 0.5f, LatencySeconds = 0.5f });
            writer.Write(Layer(Start, 1, 0));
            writer.Write(new TelemetryEvent(Start, "request_started", TelemetryLogSchema.WarmupRequestIdPrefix + "0", null, "warm-up"));
            writer.Write(Step(Start + 1000, 2, "a") with { StepSeconds = 0.02f });
            writer.Write(Step(Start + 2000, 3, "a") with { StepSeconds = 0.04f });
            writer.Flush();
            path = writer.CurrentPath!;
        }
        var output = Bitnet("logs", path).Output;
        Assert.Contains("requests: 1", output);
        Assert.Contains("steps: 2", output); // the warm-up step's layer row does not count it among the served steps
        Assert.Contains("tokens: 2, step time mean 30 ms over 2 steps", output);
        Assert.DoesNotContain("max 500", output);
        Assert.Contains("warm-up: 2 tokens over 1 step, 500 ms", output); // "1 steps"
        Assert.Contains("but in the layer tables below", output); // the tables hold the warm-up rows: said, not silent
    }

    /// <summary>A --request id the logs do not have is said (it printed "rows: 0" or an empty chart and exit 0), and --input
    /// with a residual metric, which has no inputs, is refused (it was ignored).</summary>
    [Fact]
    public void ARequestNotInTheLogsIsSaidAndInputWithAResidualMetricIsRefused()
    {
        using var dir = new TestGguf.TempDirectory();
        string path = WriteLog(dir);
        var (code, _, error) = Bitnet("logs", path, "--request", "nosuch");
        Assert.Equal(0, code);
        Assert.Contains("note: --request nosuch: no request with that id in these logs", error);
        (code, _, error) = Bitnet("logs", path, "--request", "a");
        Assert.Equal(0, code);
        Assert.DoesNotContain("--request", error);
        (code, _, error) = Bitnet("logs", path, "--plot", dir.File("p.svg"), "--metric", "residual_rms", "--input", "down");
        Assert.Equal(2, code);
        Assert.Contains("Leave out --input", error);
        Assert.False(File.Exists(dir.File("p.svg")));
    }

    /// <summary>A file named twice, or by its folder and by name, is read once (its rows were counted twice).</summary>
    [Fact]
    public void AFileNamedTwiceIsReadOnce()
    {
        using var dir = new TestGguf.TempDirectory();
        string path = WriteLog(dir);
        Assert.Contains("rows: 21 (", Bitnet("logs", dir.Path, path).Output);
        Assert.Contains("rows: 21 (", Bitnet("logs", path, Path.GetRelativePath(Environment.CurrentDirectory, path)).Output);
    }

    /// <summary>A cancelled read throws (it ended quietly, so an export cut short was renamed into place and reported as written).</summary>
    [Fact]
    public void ACancelledReadThrowsInsteadOfEndingQuietly()
    {
        using var dir = new TestGguf.TempDirectory();
        string path = WriteLog(dir);
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        var reader = TelemetryLogReader.Open(path);
        Assert.Throws<OperationCanceledException>(() => reader.ReadRows(cts.Token).ToList());
        Assert.Equal(21, reader.ReadRows(TestContext.Current.CancellationToken).Count());
    }

    /// <summary>
    /// A bound with nine fractional digits, as the tool prints row times, is exact to the nanosecond (DateTimeOffset kept
    /// seven: a bound copied from the output let through a row up to 99 ns outside it).
    /// </summary>
    [Fact]
    public void TimeBoundsKeepTheirNanoseconds()
    {
        var now = DateTimeOffset.UtcNow;
        long seven = BitNetSharp.Cli.Commands.LogsCommand.ParseTime("2026-12-07T11:28:46.9799168Z", "--since", now)!.Value;
        Assert.Equal(seven + 1, BitNetSharp.Cli.Commands.LogsCommand.ParseTime("2026-12-07T11:28:46.979916801Z", "--since", now));
        Assert.Equal(seven + 10, BitNetSharp.Cli.Commands.LogsCommand.ParseTime("2026-12-07T11:28:46.97991681Z", "--since", now));
        Assert.Equal(seven + 1 + 3_600_000_000_000L, BitNetSharp.Cli.Commands.LogsCommand.ParseTime("2026-12-07T11:28:46.979916801-01:00", "--since", now));
        Assert.Equal(seven, BitNetSharp.Cli.Commands.LogsCommand.ParseTime(" 2026-12-07T11:28:46.9799168 ", "--since", now)); // no zone: UTC
    }
}
