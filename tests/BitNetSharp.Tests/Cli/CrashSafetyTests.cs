using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Json;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using System.Xml.Linq;
using BitNetSharp.Cli;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Monitoring.Telemetry;
using BitNetSharp.Tests.Formats;
using BitNetSharp.Threading;
using BitNetSharp.Training;

namespace BitNetSharp.Tests.Cli;

/// <summary>
/// Crash safety of the files the tool writes: `bitnet convert`, `bitnet train` (checkpoints, export, plot) and
/// `bitnet serve`'s rotating telemetry log run as real processes and are killed with SIGKILL at random moments, many
/// times. After every kill the file under each final name is absent or a complete version that loads (the previous
/// one or the new one), never a partial one; the temporaries a killed writer leaves are hidden names that the next
/// run removes; every telemetry file, rotated or cut off, is readable. Fixed seeds; about 20 s in all.
/// </summary>
public class CrashSafetyTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;
    private static readonly string Exe = Path.Combine(AppContext.BaseDirectory, "bitnet");
    private static readonly string Model = RepositoryFiles.Path("tests/fixtures/tinystories-4m/model.gguf");

    private static Process Start(params string[] args)
    {
        Assert.SkipUnless(File.Exists(Exe), $"the CLI's apphost is not next to the tests ({Exe})");
        var psi = new ProcessStartInfo(Exe) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        var p = Process.Start(psi)!;
        p.OutputDataReceived += (_, _) => { };
        p.ErrorDataReceived += (_, _) => { };
        return p;
    }

    /// <summary>Runs the CLI to its end; returns the elapsed time.</summary>
    private static async Task<TimeSpan> RunAsync(params string[] args)
    {
        var sw = Stopwatch.StartNew();
        using var p = Start(args);
        var stderr = p.StandardError.ReadToEndAsync(Ct);
        _ = p.StandardOutput.ReadToEndAsync(Ct);
        await p.WaitForExitAsync(Ct).WaitAsync(TimeSpan.FromSeconds(120), Ct);
        Assert.True(p.ExitCode == 0, $"bitnet {string.Join(' ', args)} exited {p.ExitCode}: {await stderr}");
        return sw.Elapsed;
    }

    /// <summary>Starts the CLI, waits <paramref name="delay"/>, kills it with SIGKILL; true when it was still running.</summary>
    private static Task<bool> KillAfterAsync(TimeSpan delay, params string[] args) => KillAfterAsync(delay, null, args);

    /// <summary>
    /// As above, the delay counted from when <paramref name="ready"/> holds (polled; at most a minute), so a kill lands
    /// past a milestone however slowly the process starts on a loaded machine.
    /// </summary>
    private static async Task<bool> KillAfterAsync(TimeSpan delay, Func<bool>? ready, params string[] args)
    {
        using var p = Start(args);
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        if (ready is not null)
            for (var until = DateTime.UtcNow.AddMinutes(1); !ready() && !p.HasExited && DateTime.UtcNow < until;) await Task.Delay(20, Ct);
        await Task.Delay(delay, Ct);
        bool running = !p.HasExited;
        if (running) p.Kill(); // SIGKILL on Unix
        await p.WaitForExitAsync(Ct).WaitAsync(TimeSpan.FromSeconds(30), Ct);
        return running;
    }

    private static string Hash(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path)));

    /// <summary>Files in <paramref name="dir"/> that are neither expected names nor a killed writer's hidden temporaries.</summary>
    private static void AssertOnly(string dir, IEnumerable<string> expected, string context)
    {
        var allowed = expected.ToHashSet();
        foreach (var f in Directory.GetFiles(dir).Select(Path.GetFileName))
            Assert.True(allowed.Contains(f!) || Regex.IsMatch(f!, @"^\..+\.\d+\.[0-9a-f]{32}\.tmp$"), $"{context}: unexpected file {f}");
    }

    private static string[] Temporaries(string dir) => Directory.GetFiles(dir, ".*.tmp");

    [Fact]
    public async Task ConvertKilledAnywhereLeavesThePreviousOrTheNewModel()
    {
        using var dir = new TestGguf.TempDirectory();
        string output = dir.File("out.gguf");
        // Two complete versions to alternate between, so "the previous file" and "the new file" differ.
        string[] types = ["tq2_0", "i2_s"];
        var complete = new Dictionary<string, string>();
        var elapsed = TimeSpan.Zero;
        foreach (var t in types)
        {
            elapsed = await RunAsync("convert", Model, output, "--type", t);
            complete[t] = Hash(output);
        }
        string current = complete["i2_s"];
        var rng = new Random(16_06);
        int killed = 0, leftTemporaries = 0;
        for (int i = 0; i < 14; i++)
        {
            string type = types[i % 2];
            // Most kills in the second half of a run, where the file is written.
            var delay = elapsed * (0.3 + 0.9 * rng.NextDouble());
            if (await KillAfterAsync(delay, "convert", Model, output, "--type", type)) killed++;
            Assert.True(File.Exists(output), $"kill {i} after {delay.TotalMilliseconds:F0} ms: the previous model is gone");
            string now = Hash(output);
            Assert.True(now == current || now == complete[type], $"kill {i} after {delay.TotalMilliseconds:F0} ms: {output} is neither the previous nor the new model");
            current = now;
            using (var gguf = GgufFile.Open(output)) Assert.NotEmpty(gguf.Tensors);
            AssertOnly(dir.Path, ["out.gguf"], $"kill {i}");
            if (Temporaries(dir.Path).Length > 0) leftTemporaries++;
        }
        TestContext.Current.TestOutputHelper?.WriteLine($"convert: {killed} of 14 runs killed mid-way, {leftTemporaries} left a temporary");
        // The next complete run removes what the killed ones left.
        await RunAsync("convert", Model, output, "--type", "tq2_0");
        Assert.Equal(complete["tq2_0"], Hash(output));
        Assert.Empty(Temporaries(dir.Path));
    }

    /// <summary>
    /// SIGINT or SIGTERM while convert writes stops it between tensors, removes its hidden temporary (the size of the
    /// model: it was left behind until the next convert to that name) and exits 130 with nothing under the name; the
    /// status line, on stderr, gives the bytes written (read back from the name, a /dev/stdout output read 15, its link).
    /// </summary>
    [Fact]
    public async Task ASignalWhileConvertWritesRemovesItsPartialFile()
    {
        using var dir = new TestGguf.TempDirectory();
        string output = dir.File("out.gguf");
        int cancelled = 0;
        for (int i = 0; i < 6 && cancelled < 2; i++)
        {
            using var p = Start("convert", Model, output, "--type", "f16", "--embedding-type", "f16");
            var stderr = p.StandardError.ReadToEndAsync(Ct);
            _ = p.StandardOutput.ReadToEndAsync(Ct);
            for (var until = DateTime.UtcNow.AddMinutes(1); Temporaries(dir.Path).Length == 0 && !p.HasExited && DateTime.UtcNow < until;) await Task.Delay(2, Ct);
            using (var kill = Process.Start("kill", [i % 2 == 0 ? "-INT" : "-TERM", p.Id.ToString(CultureInfo.InvariantCulture)])) await kill.WaitForExitAsync(Ct);
            await p.WaitForExitAsync(Ct).WaitAsync(TimeSpan.FromSeconds(60), Ct);
            string error = await stderr;
            if (p.ExitCode == 0)
            {
                // Finished before the signal landed: the whole file, its size said.
                Assert.Contains($"wrote {output} ({new FileInfo(output).Length.ToString("N0", CultureInfo.CurrentCulture)} bytes", error);
                File.Delete(output);
                continue;
            }
            Assert.True(p.ExitCode == 130, $"exit {p.ExitCode}: {error}");
            Assert.Contains("cancelled: nothing written.", error);
            Assert.False(File.Exists(output));
            Assert.Empty(Temporaries(dir.Path));
            cancelled++;
        }
        Assert.True(cancelled > 0, "no signal landed while convert was writing");
    }

    [Fact]
    public async Task TrainKilledAnywhereLeavesALoadableCheckpointAndExport()
    {
        using var dir = new TestGguf.TempDirectory();
        string data = dir.File("corpus.txt");
        File.WriteAllText(data, string.Concat(Enumerable.Repeat(Training.TrainingRunTests.Story, 12)));
        string model = dir.File("m.gguf"), checkpoint = model + ".ckpt", plot = dir.File("m.loss.svg");
        string[] args = ["train", "--data", data, "--out", model, "--vocab", "300", "--dim", "64", "--layers", "1", "--heads", "2", "--kv-heads", "1",
                         "--ff", "128", "--ctx", "16", "--batch", "2", "--tokens", "1600", "--val-every", "5", "--checkpoint-every", "1", "-t", "1", "--resume"];
        var rng = new Random(16_07);
        using var pool = new WorkerPool(1);
        int lastStep = -1, killed = 0, leftTemporaries = 0;
        for (int i = 0; i < 8; i++)
        {
            // Even runs are killed at a time from the start (before or after the first checkpoint, by chance), odd runs
            // at a time after a checkpoint exists: at least half the kills land mid-run, whatever the machine's speed.
            var delay = TimeSpan.FromMilliseconds(i % 2 == 0 ? 250 + rng.Next(900) : rng.Next(600));
            if (await KillAfterAsync(delay, i % 2 == 0 ? null : () => File.Exists(checkpoint), args)) killed++;
            string context = $"kill {i} after {delay.TotalMilliseconds:F0} ms{(i % 2 == 0 ? "" : " past a checkpoint")}";
            if (File.Exists(checkpoint))
            {
                var run = TrainingRun.Resume(checkpoint, pool);
                Assert.True(run.Step >= lastStep, $"{context}: the checkpoint went back from step {lastStep} to {run.Step}");
                lastStep = run.Step;
            }
            if (File.Exists(model))
                using (var gguf = GgufFile.Open(model)) Assert.NotEmpty(gguf.Tensors);
            if (File.Exists(plot)) XDocument.Load(plot);
            if (Temporaries(dir.Path).Length > 0) leftTemporaries++;
            AssertOnly(dir.Path, ["corpus.txt", "m.gguf", "m.gguf.ckpt", "m.loss.svg", "m.loss.svg.tmp"], context);
        }
        TestContext.Current.TestOutputHelper?.WriteLine($"train: {killed} of 8 runs killed mid-way, {leftTemporaries} times a temporary was left; checkpoint at step {lastStep}");
        Assert.True(lastStep > 0, "no kill came after the first checkpoint");
        await RunAsync(args);
        using (var gguf = GgufFile.Open(model)) Assert.NotEmpty(gguf.Tensors);
        Assert.Equal(50, TrainingRun.Resume(checkpoint, pool).Step);
        Assert.Empty(Temporaries(dir.Path));
    }

    /// <summary>
    /// Ctrl-C (SIGINT) or SIGTERM stops train after the step in progress with the run saved in its checkpoint, the model
    /// not written, exit 130 and the way on: it died at once (up to --checkpoint-every steps lost, no word). Resumed with
    /// the --tokens it names, the run ends there and exports the model as it was. With --val-every 1 the stop always falls
    /// on a validated step (the branch a stop at a --val-every step takes: its checkpoint kept the old length).
    /// </summary>
    [Theory]
    [InlineData("5")]
    [InlineData("1")]
    public async Task ASignalStopsTrainWithItsRunSavedInTheCheckpoint(string valEvery)
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "sends SIGTERM with kill(1)");
        using var dir = new TestGguf.TempDirectory();
        string data = dir.File("corpus.txt");
        File.WriteAllText(data, string.Concat(Enumerable.Repeat(Training.TrainingRunTests.Story, 12)));
        string model = dir.File("m.gguf"), checkpoint = model + ".ckpt";
        string[] args = ["train", "--data", data, "--out", model, "--vocab", "300", "--dim", "64", "--layers", "1", "--heads", "2", "--kv-heads", "1",
                         "--ff", "128", "--ctx", "16", "--batch", "2", "--tokens", "320000", "--val-every", valEvery, "--checkpoint-every", "100000", "-t", "1"];
        using var p = Start(args);
        var lines = new List<string>();
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (lines) lines.Add(e.Data); };
        var stderr = p.StandardError.ReadToEndAsync(Ct);
        p.BeginOutputReadLine();
        bool Past(int step) { lock (lines) return lines.Any(l => l.StartsWith($"step {step}/", StringComparison.Ordinal)); }
        for (var until = DateTime.UtcNow.AddMinutes(1); !Past(10) && !p.HasExited && DateTime.UtcNow < until;) await Task.Delay(20, Ct);
        Assert.True(Past(10), "train did not reach step 10");
        // SIGTERM (a test host may run with SIGINT ignored, which its children inherit); Ctrl-C takes the same path.
        using (var kill = Process.Start("kill", ["-TERM", p.Id.ToString(CultureInfo.InvariantCulture)])) await kill.WaitForExitAsync(Ct);
        await p.WaitForExitAsync(Ct).WaitAsync(TimeSpan.FromSeconds(60), Ct);
        string error = await stderr;
        Assert.True(p.ExitCode == 130, $"exit {p.ExitCode}: {error}");
        Assert.Contains("bitnet train: stopping (once training has begun: after the step in progress, with the run saved in its checkpoint).", error);
        var stopped = Regex.Match(error, @"stopped at step (\d+) of 10000: checkpoint .*m\.gguf\.ckpt saved, .*m\.gguf not written\. Resume with the same command and --resume; with --tokens (\d+) \(in place of the run's\)");
        Assert.True(stopped.Success, error);
        int step = int.Parse(stopped.Groups[1].Value, CultureInfo.InvariantCulture);
        Assert.InRange(step, 10, 9999);
        Assert.False(File.Exists(model));
        using (var pool = new WorkerPool(1)) Assert.Equal(step, TrainingRun.Resume(checkpoint, pool).Step);
        Assert.Empty(Temporaries(dir.Path));

        await RunAsync([.. args.Select(a => a == "320000" ? stopped.Groups[2].Value : a), "--resume"]);
        using (var gguf = GgufFile.Open(model)) Assert.NotEmpty(gguf.Tensors);
        using (var pool = new WorkerPool(1))
        {
            // Ended there, the run's weights as they are were validated (no step ran, so they never were: the best snapshot
            // was an earlier one, and the summary read the last validation as this step's), and the new length is kept.
            var ended = TrainingRun.Resume(checkpoint, pool);
            Assert.Equal(step, ended.Step);
            Assert.Equal(step, ended.ValidationLosses[^1].Step);
            Assert.Equal(step, ended.Options.TotalSteps);
        }
    }

    [Fact]
    public async Task ServeKilledWhileRotatingTelemetryLeavesEveryFileReadable()
    {
        using var dir = new TestGguf.TempDirectory();
        string log = dir.File("telemetry");
        var rng = new Random(16_08);
        int processes = 0;
        // A file rotates after a batch write (1024 rows or once a second) past 64 KiB: about once a second here, so
        // each process lives 1.3-3 s and the kills fall before, during and between rotations.
        for (int i = 0; i < 3; i++)
        {
            using var p = Start("serve", "-m", Model, "--port", "0", "-t", "1", "--health-every", "1",
                "--telemetry-log", log, "--telemetry-max-mb", "0.0625");
            processes++;
            var ready = new TaskCompletionSource<Uri>(TaskCreationOptions.RunContinuationsAsynchronously);
            p.ErrorDataReceived += (_, e) =>
            {
                var m = Regex.Match(e.Data ?? "", @"^ready: model '[^']*' at (http://[^ ]+/)v1");
                if (m.Success) ready.TrySetResult(new Uri(m.Groups[1].Value));
            };
            p.BeginErrorReadLine();
            p.BeginOutputReadLine();
            try
            {
                var address = await ready.Task.WaitAsync(TimeSpan.FromSeconds(60), Ct);
                Assert.Equal("127.0.0.1", address.Host); // serve binds loopback unless told otherwise
                using var http = new HttpClient { BaseAddress = address, Timeout = TimeSpan.FromSeconds(60) };
                var load = Enumerable.Range(0, 4).Select(_ => http.PostAsJsonAsync("v1/completions",
                    new { prompt = "Once upon a time", max_tokens = 240, n = 4, ignore_eos = true }, Ct)).ToArray();
                await Task.Delay(TimeSpan.FromMilliseconds(1300 + rng.Next(1700)), Ct);
                p.Kill(); // SIGKILL, rotation or not
                await p.WaitForExitAsync(Ct).WaitAsync(TimeSpan.FromSeconds(30), Ct);
                foreach (var t in load)
                    try { (await t).Dispose(); } catch (HttpRequestException) { }
            }
            finally
            {
                if (!p.HasExited) p.Kill();
            }

            var reader = TelemetryLogReader.Open(log);
            long rows = reader.ReadRows(Ct).LongCount();
            Assert.True(rows > 0, $"kill {i}: no rows");
            Assert.All(reader.Files, f => Assert.True(f.Bytes > 0, $"{f.Path} is empty"));
            // Only the file each killed process was writing lacks its footer; the rotated ones were closed.
            Assert.True(reader.Files.Count(f => !f.HasFooter) <= processes, $"kill {i}: {reader.Files.Count(f => !f.HasFooter)} files without footer after {processes} processes");
            foreach (var f in Directory.GetFiles(log))
            {
                string name = Path.GetFileName(f);
                Assert.True(name.EndsWith(".arrow", StringComparison.Ordinal) || Regex.IsMatch(name, @"^\..+\.arrow\.\d+\.[0-9a-f]{32}\.tmp$"), $"kill {i}: unexpected file {name}");
            }
            var error = new StringWriter();
            int code = Program.Run(["logs", log], new StringWriter(), error);
            Assert.True(code == 0, $"kill {i}: bitnet logs exited {code}: {error}");
            TestContext.Current.TestOutputHelper?.WriteLine(string.Create(CultureInfo.InvariantCulture, $"serve kill {i}: {reader.Files.Count} files, {rows} rows"));
        }
        Assert.True(Directory.GetFiles(log, "*.arrow").Length > processes, "the log never rotated");
    }
}
