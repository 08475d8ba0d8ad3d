using System.Text.Json;
using BitNetSharp.Cli;
using BitNetSharp.Diagnostics;
using BitNetSharp.Model;
using BitNetSharp.Tests.Formats;
using BitNetSharp.Threading;

namespace BitNetSharp.Tests.Diagnostics;

/// <summary><c>bitnet bench -d</c>: pp and tg on top of a KV cache already holding d tokens.</summary>
public class DepthBenchTests
{
    private static string TinyModel(TestGguf.TempDirectory dir)
    {
        string path = dir.File("tiny.gguf");
        SyntheticModel.Build(SyntheticShape.Tiny, 5).WriteFile(path);
        return path;
    }

    [Fact]
    public void TestsRunOnTopOfTheFilledCacheAndLeaveItAtTheDepth()
    {
        using var dir = new TestGguf.TempDirectory();
        using var weights = ModelWeights.Load(TinyModel(dir));
        using var pool = new WorkerPool(1);
        using var prefix = ThroughputBenchmark.FillDepth(weights, pool, 40, 40 + 16, KvCacheType.Int8);
        Assert.Equal(40, prefix.Length);
        for (int l = 0; l < weights.Config.Layers; l++) Assert.Equal(40, prefix.LayerLength(l));

        var pp = ThroughputBenchmark.Prefill(weights, pool, 16, 2, KvCacheType.Int8, prefix, attentionShare: true);
        Assert.Equal("pp16 @ d40", pp.Test);
        Assert.Equal(40, pp.Depth);
        Assert.InRange(pp.AttentionShare!.Value, 1e-6, 1);
        Assert.Equal(40, prefix.Length); // truncated back for the next test
        // Warmed past the runtime's ~30-call promotion to optimized code (two passes timed a small model's first pp test in
        // unoptimized code, 1.6-3x low): a tiny model's passes take far less than the warm-up's time limit.
        Assert.Equal(ThroughputBenchmark.WarmupPasses + 2, pp.WarmupRuns); // the first, the two rounds, the last

        var tg = ThroughputBenchmark.Decode(weights, pool, 8, 2, KvCacheType.Int8, sequences: 2, prefix, attentionShare: true);
        Assert.Equal("tg8×2 @ d40", tg.Test);
        Assert.Equal(40, tg.Depth);
        Assert.InRange(tg.AttentionShare!.Value, 1e-6, 1);
        Assert.All(tg.TokensPerSecond, v => Assert.True(v > 0));
        Assert.Equal(40, prefix.Length);
        // Decode warmed as prefill is: two untimed runs (16 steps) left the tier-up to the first timed test (one 2.4-4.5 ms
        // step; that test at ~1,750 tok/s against ~3,400 for the same test run after it on the bundled model).
        Assert.Equal(ThroughputBenchmark.WarmupPasses + 8, tg.WarmupRuns); // two rounds of 32 steps, the last run's 8

        var plain = ThroughputBenchmark.Decode(weights, pool, 8, 1);
        Assert.Equal("tg8", plain.Test);
        Assert.Equal(0, plain.Depth);
        Assert.Null(plain.AttentionShare);
    }

    [Fact]
    public void DepthsInterleaveRepetitionByRepetitionAndPairTheirSamples()
    {
        using var dir = new TestGguf.TempDirectory();
        using var weights = ModelWeights.Load(TinyModel(dir));
        using var pool = new WorkerPool(1);
        using var d24 = ThroughputBenchmark.FillDepth(weights, pool, 24, 40, KvCacheType.Int8);
        using var d8 = ThroughputBenchmark.FillDepth(weights, pool, 8, 40, KvCacheType.Int8);
        var order = new List<(int Depth, int Repetition)>();
        var results = ThroughputBenchmark.DecodeDepths(weights, pool, 6, 3, [null, d24, d8], KvCacheType.Int8, sequences: 2, attentionShare: true,
            onTimedRun: (d, r) => order.Add((d, r)));
        Assert.Equal([(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (2, 2)], order);
        Assert.Equal(["tg6×2", "tg6×2 @ d24", "tg6×2 @ d8"], results.Select(r => r.Test));
        Assert.Equal([0, 24, 8], results.Select(r => r.Depth));
        Assert.All(results, r => Assert.Equal(3, r.TokensPerSecond.Length));
        Assert.All(results, r => Assert.Equal(18, r.Latency!.Count)); // 6 steps x 3 repetitions each
        Assert.All(results, r => Assert.InRange(r.AttentionShare!.Value, 1e-6, 1));
        Assert.Equal(24, d24.Length); // truncated back: the prefixes are reusable
        Assert.Equal(8, d8.Length);

        // The paired ratio is the median of sample-by-sample ratios, with their range; no pairing across unequal counts.
        var a = new ThroughputSample("tg", 1, [10, 20, 40]) { Depth = 4096 };
        var b = new ThroughputSample("tg", 1, [20, 25, 50]) { Depth = 0 };
        var q = ThroughputBenchmark.Paired(a, b)!.Value;
        Assert.Equal(0.8, q.Median, 12);
        Assert.Equal(0.5, q.Min, 12);
        Assert.Equal(0.8, q.Max, 12);
        Assert.Equal(0, q.BaseDepth);
        Assert.Null(ThroughputBenchmark.Paired(a, new ThroughputSample("tg", 1, [1, 2])));
        Assert.Equal(0.85, ThroughputBenchmark.Paired(new ThroughputSample("tg", 1, [5, 8, 9, 40]), new ThroughputSample("tg", 1, [10, 10, 10, 10]))!.Value.Median, 12);
    }

    [Fact]
    public void FillDepthEqualsTheSameTokensRunAsOnePrompt()
    {
        // The fill runs in batches of up to 512; a depth under that is one batch, so it must equal a plain prefill of
        // the same seeded tokens, and a copy (what tg×B gives its other sequences) must equal the original.
        using var dir = new TestGguf.TempDirectory();
        using var weights = ModelWeights.Load(TinyModel(dir));
        using var pool = new WorkerPool(1);
        var c = weights.Config;
        using var filled = ThroughputBenchmark.FillDepth(weights, pool, 20, 32);
        using var copy = new KvCache(c.Layers, c.KvHeads, c.HeadDim, 32);
        copy.CopyFrom(filled);
        using var reference = new KvCache(c.Layers, c.KvHeads, c.HeadDim, 32);
        using (var engine = new Transformer(weights, 20, pool))
        {
            var rng = new Random(2);
            var batch = Enumerable.Range(0, 20).Select(i => new BatchToken(rng.Next(c.VocabSize), 0, i)).ToArray();
            engine.Forward(batch, [reference], Span<float>.Empty);
        }
        float[] k1 = new float[c.KvDim], v1 = new float[c.KvDim], k2 = new float[c.KvDim], v2 = new float[c.KvDim], k3 = new float[c.KvDim], v3 = new float[c.KvDim];
        for (int l = 0; l < c.Layers; l++)
            for (int p = 0; p < 20; p++)
            {
                filled.Read(l, p, k1, v1);
                reference.Read(l, p, k2, v2);
                copy.Read(l, p, k3, v3);
                Assert.Equal(k2, k1);
                Assert.Equal(v2, v1);
                Assert.Equal(k1, k3);
                Assert.Equal(v1, v3);
            }
        Assert.Equal(20, copy.Length);
    }

    /// <summary>
    /// Synthetic models are cached in the user's own folder (owner-only), keyed by the generator's version; a cached file
    /// that does not read as a model is written again. It was a fixed folder in the shared /tmp, loaded without a check
    /// (another user could plant the file; a damaged one failed every bench run until deleted by hand).
    /// </summary>
    [Fact]
    public void TheSyntheticModelCacheIsTheUsersAndRebuildsAnUnreadableFile()
    {
        // The f32 head: no other test uses that file, so damaging it races with nothing.
        var first = Bench("--head-type", "f32", "-p", "0", "-n", "1");
        Assert.True(first.Code == 0, first.Error);
        string? xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        string dir = Path.Combine(xdg is { Length: > 0 } && Path.IsPathRooted(xdg) ? xdg : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache"), "bitnet", "synthetic");
        var files = Directory.GetFiles(dir, "tiny-*-f32.gguf");
        Assert.NotEmpty(files);
        if (!OperatingSystem.IsWindows())
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(dir));
        // Every such file (a warm cache may hold another generator version's too): the current one among them.
        foreach (var file in files) File.WriteAllText(file, "not a model");
        var again = Bench("--head-type", "f32", "-p", "0", "-n", "1");
        Assert.True(again.Code == 0, again.Error);
        Assert.Contains("not a readable model file; writing it again", again.Error);
    }

    /// <summary>The library's benchmark entry points refuse no tokens or no repetitions (a sample with none threw later, in Mean).</summary>
    [Fact]
    public void BenchmarkEntryPointsRefuseNoTokensOrRepetitions()
    {
        using var dir = new TestGguf.TempDirectory();
        using var weights = ModelWeights.Load(TinyModel(dir));
        using var pool = new WorkerPool(1);
        Assert.Throws<ArgumentOutOfRangeException>(() => ThroughputBenchmark.Prefill(weights, pool, 8, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => ThroughputBenchmark.Prefill(weights, pool, 0, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => ThroughputBenchmark.DecodeProfileAB(weights, pool, 0, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => ThroughputBenchmark.DecodeHealthAB(weights, pool, 4, 0, 1));
    }

    /// <summary>--health-ab 0 (the NaN/Inf checks alone, as serve --health-every 0) names its row so; it read "health 1/0".</summary>
    [Fact]
    public void HealthAbZeroNamesTheChecksRow()
    {
        using var dir = new TestGguf.TempDirectory();
        using var weights = ModelWeights.Load(TinyModel(dir));
        using var pool = new WorkerPool(1);
        var (off, on) = ThroughputBenchmark.DecodeHealthAB(weights, pool, 2, 1, 0);
        Assert.Equal(("tg2 health off", "tg2 health checks"), (off.Test, on.Test));
        Assert.Equal("tg2 health 1/4", ThroughputBenchmark.DecodeHealthAB(weights, pool, 2, 1, 4).On.Test);
    }

    [Fact]
    public void ContextOptionExtendsThePositionsTheModelRuns()
    {
        using var dir = new TestGguf.TempDirectory();
        string path = TinyModel(dir);
        using var weights = ModelWeights.Load(path, new ModelLoadOptions { ContextLength = 300 });
        Assert.Equal(300, weights.Config.ContextLength); // the file says 256
        using var pool = new WorkerPool(1);
        using var prefix = ThroughputBenchmark.FillDepth(weights, pool, 280, 290);
        var tg = ThroughputBenchmark.Decode(weights, pool, 10, 1, prefix: prefix);
        Assert.Equal(280, tg.Depth);
    }

    private static (int Code, string Output, string Error) Bench(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Program.Run(["bench", "--synthetic", "tiny", "-t", "1", "-r", "1", .. args], output, error);
        return (code, output.ToString(), error.ToString());
    }

    [Fact]
    public void CliReportsDepthAndAttentionShareAndRejectsBadDepths()
    {
        var r = Bench("-p", "8", "-n", "4", "-d", "0,32", "--json");
        Assert.Equal(0, r.Code);
        using (var doc = JsonDocument.Parse(r.Output))
        {
            var results = doc.RootElement.GetProperty("results");
            Assert.Equal(["pp8", "tg4", "pp8 @ d32", "tg4 @ d32"], results.EnumerateArray().Select(e => e.GetProperty("test").GetString()));
            Assert.Equal([0, 0, 32, 32], results.EnumerateArray().Select(e => e.GetProperty("depth").GetInt32()));
            Assert.All(results.EnumerateArray(), e => Assert.InRange(e.GetProperty("attention_share").GetDouble(), 1e-6, 1));
            // The tg row past the first depth carries its ratio to the first, paired by repetition; the others none.
            var deep = results[3];
            double ratio = deep.GetProperty("depth_ratio").GetDouble();
            Assert.Equal(0, deep.GetProperty("depth_ratio_base").GetInt32());
            Assert.Equal(deep.GetProperty("samples")[0].GetDouble() / results[1].GetProperty("samples")[0].GetDouble(), ratio, 12); // one repetition: its own pair
            Assert.Equal(ratio, deep.GetProperty("depth_ratio_min").GetDouble());
            Assert.Equal(JsonValueKind.Null, results[1].GetProperty("depth_ratio").ValueKind);
            Assert.Equal(JsonValueKind.Null, results[2].GetProperty("depth_ratio").ValueKind);
            // The bound counts the KV cache a step reads (depth + the tokens generated so far, 2.5 on average for tg4):
            // it was the weights alone, the same at every depth.
            var c = BitNetSharp.Model.SyntheticShape.ByName("tiny");
            long perToken = doc.RootElement.GetProperty("bytes_per_token").GetInt64();
            var kvType = BitNetSharp.Cli.Commands.ModelOptions.ParseKvType(doc.RootElement.GetProperty("kv_type").GetString()!);
            // The mean over the four steps' 1..4 positions (past the depth): 2.5, where the integer mean counted 2.
            foreach (var (row, depth) in new[] { (results[1], 0), (results[3], 32) })
            {
                long kvBytes = row.GetProperty("kv_bytes_per_step").GetInt64();
                double mean = Enumerable.Range(depth + 1, 4).Average(p => (double)BitNetSharp.Model.KvCache.BytesFor(c.Layers, c.KvHeads, c.Dim / c.Heads, p, kvType));
                Assert.Equal((long)Math.Round(mean), kvBytes);
                Assert.Equal(row.GetProperty("bandwidth_gbps").GetDouble() * 1e9 / (perToken + kvBytes), row.GetProperty("bound_tokens_per_second").GetDouble(), 6);
            }
            Assert.Equal(JsonValueKind.Null, results[0].GetProperty("kv_bytes_per_step").ValueKind);
            // A tg row past its bound says it ran from the caches (the 4M model read "156.3 %" of a bound it cannot be held to).
            foreach (var row in new[] { results[1], results[3] })
                Assert.Equal(BitNetSharp.Cli.Commands.BenchCommand.AboveTheBound(row.GetProperty("percent_of_bound").GetDouble())
                    && BitNetSharp.Cli.Commands.BenchCommand.FitsInCache(perToken + row.GetProperty("kv_bytes_per_step").GetInt64(), row.GetProperty("threads").GetInt32()),
                    row.GetProperty("from_cache").GetBoolean());
            Assert.Equal(JsonValueKind.Null, results[0].GetProperty("from_cache").ValueKind);
        }
        Assert.Contains("tg4 @ d32 over depth 0, 1 thread(s), paired by repetition:", r.Error);
        var csv = Bench("-p", "8", "-n", "0", "-d", "16", "--csv");
        Assert.Equal(0, csv.Code);
        var lines = csv.Output.Trim().Split('\n');
        Assert.EndsWith(",depth,attention_share,depth_ratio,kv_bytes_per_step,read_gbps,from_cache,sequences,depth_ratio_min,depth_ratio_max,depth_ratio_base", lines[0]);
        Assert.Contains(",16,", lines[1]);
        Assert.EndsWith(",1,,,", lines[1]); // one sequence; no ratio at a single depth (CSV lacked what JSON had)
        var ppCells = lines[1].Split(',');
        Assert.Equal(["", "", ""], new[] { ppCells[5], ppCells[7], ppCells[8] }); // no weight rate or bound for prompt processing (it read "550 GB/s")

        // --profile-ab is checked before the tests run (it failed after them, losing their results).
        var ab = Bench("-p", "8", "-n", "4", "--profile-ab", "0");
        Assert.Equal(2, ab.Code);
        Assert.Contains("--profile-ab must be from 1 to", ab.Error);
        // Past the array limit it threw OutOfMemoryException (a stack trace) after every test had run.
        Assert.Contains("--profile-ab must be from 1 to", Bench("-p", "8", "-n", "4", "--profile-ab", "2147483647").Error);
        Assert.DoesNotContain("read bandwidth", ab.Error);
        var both = Bench("--json", "--csv");
        Assert.Equal(2, both.Code);
        Assert.Contains("give one output format", both.Error);
        var probeOutput = new StringWriter();
        var probeError = new StringWriter();
        Assert.True(Program.Run(["bench", "--bandwidth-only", "--json", "-t", "1", "-r", "1"], probeOutput, probeError) == 0, probeError.ToString());
        using (var doc = JsonDocument.Parse(probeOutput.ToString()))
            Assert.True(doc.RootElement[0].GetProperty("bandwidth_gbps").GetDouble() > 0);
        // The CSV has each pattern's figure, as the table and JSON do (it had the best alone).
        var csvOutput = new StringWriter();
        Assert.True(Program.Run(["bench", "--bandwidth-only", "--csv", "-t", "1", "-r", "1"], csvOutput, probeError) == 0, probeError.ToString());
        var csvLines = csvOutput.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal("threads,bandwidth_gbps,best_pattern,huge_pages,prefetch_gbps,plain_gbps,multistream_gbps,multistreamnontemporal_gbps", csvLines[0].TrimEnd('\r'));
        var cells = csvLines[1].TrimEnd('\r').Split(',');
        Assert.Equal(8, cells.Length);
        Assert.Equal(double.Parse(cells[1], System.Globalization.CultureInfo.InvariantCulture), cells[4..].Max(c => double.Parse(c, System.Globalization.CultureInfo.InvariantCulture)), 3);

        foreach (var (args, what) in new (string[], string)[]
        {
            (["-n", "-1"], "--n-gen"), (["-p", "-3"], "--n-prompt"), (["-p", "0", "-n", "0"], "both 0"),
        })
        {
            var wrong = Bench(args);
            Assert.NotEqual(0, wrong.Code);
            Assert.Contains(what, wrong.Error);
        }
        var noReps = new StringWriter();
        Assert.NotEqual(0, Program.Run(["bench", "--synthetic", "tiny", "-t", "1", "-r", "0"], new StringWriter(), noReps));
        Assert.Contains("--repetitions must be 1 to", noReps.ToString());
        // Each a usage error (exit 2) naming its option, before any model is built: empty lists ran nothing and said
        // nothing, a depth near int.MaxValue wrapped past the context check, and an unknown shape exited 1.
        foreach (var (args, what) in new (string[], string)[]
        {
            (["--synthetic", "tiny", "-t", ","], "--threads"), (["--synthetic", "tiny", "-t", "1", "-s", ","], "--sequences"),
            (["--synthetic", "tiny", "-t", "1", "-r", "2000000000"], "--repetitions"), (["--synthetic", "tiny", "-t", "1", "--ctx", "2000000000"], "--ctx"),
            (["--synthetic", "tiny", "-t", "1", "-p", "0", "-n", "8", "-d", "2147483647"], "--depth 2147483647"), (["--synthetic", "huge", "-t", "1"], "--synthetic"),
        })
        {
            var error = new StringWriter();
            Assert.Equal(2, Program.Run(["bench", .. args], new StringWriter(), error));
            Assert.Contains(what, error.ToString());
        }
        var bad = Bench("-d", "x");
        Assert.NotEqual(0, bad.Code);
        Assert.Contains("--depth", bad.Error);
        var tooDeep = Bench("-p", "16", "-n", "8", "-d", "250");
        Assert.NotEqual(0, tooDeep.Code);
        Assert.Contains("--ctx 266", tooDeep.Error); // the model's context is 256
        var tooDeepForCtx = Bench("-p", "16", "-n", "8", "-d", "250", "--ctx", "260");
        Assert.NotEqual(0, tooDeepForCtx.Code);
        Assert.Contains("--ctx 260", tooDeepForCtx.Error);
    }
}
