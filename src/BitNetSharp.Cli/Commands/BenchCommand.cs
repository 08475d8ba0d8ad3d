using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using BitNetSharp.Diagnostics;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Model;
using BitNetSharp.Threading;
using Spectre.Console;

namespace BitNetSharp.Cli.Commands;

/// <summary>
/// <c>bitnet bench [-m MODEL | --synthetic 2b4t|large|tiny] [-p 128] [-n 128] [-d 0,4096] [-t 1,2] [-r 5]</c>: llama-bench's pp and tg
/// tokens/s (mean ± stddev) per thread count and depth (tokens already in the KV cache), with attention's share of the step when -d is given, with model size, bits per weight, load time, peak RSS, and the
/// effective weight bandwidth next to this machine's read bandwidth measured in the same run.
/// </summary>
public static class BenchCommand
{
    /// <summary>The most --repetitions (each a full pass of every test).</summary>
    public const int MaxRepetitions = 10_000;

    /// <summary>
    /// A comma list of whole numbers (-t, -s, -d). An empty entry is refused: `-d 0,,4096` (a typo, or an empty shell
    /// variable) ran as `-d 0,4096` without a word. Digits only (`+2` was read as 2).
    /// </summary>
    internal static int[] ParseList(string flag, string text, int min, int max, string what, string example)
    {
        string[] items = text.Split(',', StringSplitOptions.TrimEntries);
        if (items.Length == 1 && items[0].Length == 0) throw new UsageException($"{flag}: give at least one {what} (e.g. {example}).");
        var values = new int[items.Length];
        for (int i = 0; i < items.Length; i++)
        {
            string t = items[i];
            if (t.Length == 0)
                throw new UsageException($"{flag} '{text}': entry {i + 1} is empty; give each {what} once, separated by commas (e.g. {example}).");
            // Digits past int's range: too large, not "not an integer of 0 or more" (--depth 99999999999).
            if (!int.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out values[i]) && t.AsSpan().IndexOfAnyExceptInRange('0', '9') < 0)
                throw new UsageException($"{flag}: '{t}' is too large (at most {max}).");
            if (!int.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out values[i]) || values[i] < min || values[i] > max)
                throw new UsageException(max == int.MaxValue
                    ? $"{flag}: '{t}' is not an integer of {min} or more."
                    : $"{flag}: '{t}' is not an integer from {min} to {max}.");
        }
        return values;
    }

    /// <summary>The largest --ctx: 16 Mi positions (a KV cache past that is terabytes for any real shape).</summary>
    public const int MaxContext = 1 << 24;

    public static Command Create(CliConsole cli)
    {
        var model = new Option<string?>("--model", "-m") { Description = "A .gguf file or Hugging Face model directory." };
        var synthetic = new Option<string?>("--synthetic") { Description = "Benchmark a random-weight model of a known shape instead: 2b4t, large or tiny." };
        var headType = new Option<string?>("--head-type")
        {
            Description = "Synthetic models: the embedding/head type the file is written with, f16 (default), q8_0, q6_k or f32. -m files: re-encode the head at load, f16, q8_0 or q6_k (default: as stored).",
        };
        var prompt = new Option<int>("--n-prompt", "-p") { Description = "Prompt tokens for pp (0 to skip).", DefaultValueFactory = _ => 128 };
        var gen = new Option<int>("--n-gen", "-n") { Description = "Generated tokens for tg (0 to skip).", DefaultValueFactory = _ => 128 };
        var threads = new Option<string?>("--threads", "-t") { Description = "Thread counts, comma-separated (default: physical cores)." };
        var sequences = new Option<string>("--sequences", "-s") { Description = "tg: sequences decoding together, comma-separated (e.g. 1,8); the figure is their aggregate tokens/s.", DefaultValueFactory = _ => "1" };
        var depths = new Option<string?>("--depth", "-d", "--n-depth") { Description = "Tokens already in the KV cache before each pp/tg test, comma-separated (e.g. 0,1024,4096; llama-bench's -d): a prefill of that many tokens, not timed. Giving it also reports each test's attention share (the median of three extra profiled passes). Decode runs every depth's repetition r before any depth's r + 1 (all depths' caches held at once), and each tg row past the first depth shows its ratio to the first, paired by repetition: a drifting host slows both sides of each pair alike." };
        var ctxSize = new Option<int>("--ctx", "-c") { Description = "Context to allocate (default: the model's). Larger than the model's extends it, as llama-bench does for -d + -p/-n beyond the trained context." };
        var reps = new Option<int>("--repetitions", "-r") { Description = "Repetitions per test.", DefaultValueFactory = _ => 5 };
        var kvType = new Option<string>("--kv-type") { Description = "KV-cache type: f32, f16, int8, fp8.", DefaultValueFactory = _ => "f16" };
        var json = new Option<bool>("--json") { Description = "Print JSON." };
        var csv = new Option<bool>("--csv") { Description = "Print CSV." };
        var mlock = new Option<bool>("--mlock") { Description = "Lock the model file's pages in RAM first (Linux mlock; needs RLIMIT_MEMLOCK)." };
        var bandwidthOnly = new Option<bool>("--bandwidth-only") { Description = "Only measure this machine's read bandwidth per thread count (each access pattern, and the best: the bound) and exit." };
        var hugePages = new Option<bool>("--hugepages") { Description = "Ask for transparent huge pages (madvise) on the runtime buffers ≥ 2 MiB: activations, KV cache, repacked weights (Linux). The model file's bytes: --weight-pages." };
        var weightPages = ModelOptions.NewWeightPagesOption();
        var cpus = new Option<string?>("--cpus") { Description = "Pin worker i to the i-th CPU of this list (e.g. 0,1 or 0-3; Linux)." };
        var profileAb = new Option<int?>("--profile-ab") { Description = "tg with the profiler (op timers, spans, chunk timeline) off and on, N alternating repetitions in one run; prints both and the ratio." };
        var healthAb = new Option<int?>("--health-ab") { Description = "tg with model-health collection off and on (measuring every N-th step, as `serve --health-every N`; 0: only the NaN/Inf check of every step's logits, the row 'health checks'), alternating repetitions in one run; prints both and the ratio." };
        var command = new Command("bench", "Measure prompt-processing and generation speed against the memory-bandwidth bound.")
        {
            model, synthetic, headType, prompt, gen, threads, sequences, depths, ctxSize, reps, kvType, json, csv, healthAb, profileAb, cpus, mlock, hugePages, weightPages, bandwidthOnly,
        };
        command.SetAction(result => cli.Guard(() =>
        {
            string? synth = result.GetValue(synthetic);
            if (synth is not null == result.GetValue(model) is not null && synth is not null)
                throw new UsageException("give either -m MODEL or --synthetic SHAPE, not both.");
            // The shape's name is checked now; its file is built (minutes for 2b4t) only once every option has passed.
            SyntheticShape? shape;
            try
            {
                shape = synth is null ? null : SyntheticShape.ByName(synth);
            }
            catch (ArgumentException e)
            {
                throw new UsageException($"--synthetic: {e.Message.Split(" (Parameter '")[0]}");
            }
            int[]? cpuList = result.GetValue(cpus) is { } cl ? ProfileCommand.ParseCpus(cl) : null;
            // Without -t, --cpus gives the thread count: one worker per CPU listed (`--cpus 0,1` on a host of more cores).
            int[] threadCounts = result.GetValue(threads) is { } list
                ? ParseList("--threads", list, 1, 4096, "thread count", "1,2,4")
                : cpuList is not null ? [cpuList.Length] : [WorkerPool.DefaultThreadCount()];
            int[] sequenceCounts = ParseList("--sequences", result.GetValue(sequences)!, 1, 256, "sequence count", "1,4");
            int repetitions = result.GetValue(reps);
            if (repetitions is < 1 or > MaxRepetitions) throw new UsageException($"--repetitions must be 1 to {MaxRepetitions}; got {repetitions}.");
            if (result.GetValue(prompt) < 0) throw new UsageException($"--n-prompt must be 0 (no pp test) or more; got {result.GetValue(prompt)}.");
            if (result.GetValue(gen) < 0) throw new UsageException($"--n-gen must be 0 (no tg test) or more; got {result.GetValue(gen)}.");
            if (result.GetValue(prompt) == 0 && result.GetValue(gen) == 0 && !result.GetValue(bandwidthOnly))
                throw new UsageException("-p and -n are both 0: there is no test to run (give -p for prefill, -n for decode, or --bandwidth-only).");
            bool depthGiven = result.GetValue(depths) is not null;
            int[] depthList = ParseList("--depth", result.GetValue(depths) ?? "0", 0, int.MaxValue, "depth", "0,4096");
            if (depthList.Max() > MaxContext) throw new UsageException($"--depth {depthList.Max()} is past the largest context bench allocates ({MaxContext} positions).");
            int ctxOption = result.GetValue(ctxSize);
            if (ctxOption is < 0 or > MaxContext) throw new UsageException($"--ctx must be 1 to {MaxContext} positions (0: the model's context); got {ctxOption}.");
            var kv = ModelOptions.ParseKvType(result.GetValue(kvType)!);
            ProfileCommand.CheckCpusCover(cpuList, threadCounts.Max());
            // A value given twice ran its tests twice (-d 0,0 printed depth 0's ratio to itself).
            foreach (var (flag, values) in new[] { ("--threads", threadCounts), ("--sequences", sequenceCounts), ("--depth", depthList) })
                if (values.GroupBy(v => v).FirstOrDefault(g => g.Count() > 1) is { } twice)
                    throw new UsageException($"{flag} lists {twice.Key} more than once; give each value once (-r repeats every test).");
            if (result.GetValue(json) && result.GetValue(csv)) throw new UsageException("--json and --csv: give one output format.");
            // Checked before any test runs (they were checked after the first thread count's tests, losing them).
            if (result.GetValue(healthAb) is { } healthEvery)
            {
                if (healthEvery < 0) throw new UsageException($"--health-ab must be ≥ 0 (0: only the NaN/Inf checks); got {healthEvery}.");
                // It runs at depth 0 on decode steps: anywhere else it was accepted and silently did nothing.
                if (result.GetValue(bandwidthOnly)) throw new UsageException("--health-ab measures decoding; it does not apply with --bandwidth-only.");
                if (result.GetValue(gen) < 1) throw new UsageException("--health-ab needs decode steps: -n must be at least 1.");
                if (Array.IndexOf(depthList, 0) < 0) throw new UsageException("--health-ab runs at depth 0: include 0 in --depth (e.g. -d 0,512).");
            }
            if (result.GetValue(profileAb) is { } abRuns)
            {
                // As --health-ab: accepted with --bandwidth-only, it silently did nothing.
                if (result.GetValue(bandwidthOnly)) throw new UsageException("--profile-ab measures decoding; it does not apply with --bandwidth-only.");
                if (abRuns is < 1 or > MaxRepetitions) throw new UsageException($"--profile-ab must be from 1 to {MaxRepetitions}; got {abRuns}.");
                if (result.GetValue(gen) < 1) throw new UsageException("--profile-ab needs decode steps: -n must be at least 1.");
            }
            if (result.GetValue(bandwidthOnly))
            {
                // It measures memory, not a model: flags about a model or its tests were accepted and ignored (a bad
                // --weight-pages passed, -r was replaced by 5).
                foreach (var option in new Option[] { model, synthetic, headType, prompt, gen, sequences, depths, ctxSize, kvType, mlock, weightPages })
                    if (result.GetResult(option) is { Implicit: false })
                        throw new UsageException($"{option.Name} does not apply with --bandwidth-only (it measures the machine's read bandwidth, not a model).");
                if (result.GetValue(hugePages)) ProfileCommand.EnableHugePages();
                var probes = new List<(int Threads, double Best, string Pattern, bool HugePages, Dictionary<string, double> ByPattern)>();
                foreach (int t in threadCounts)
                {
                    using var pool = new WorkerPool(t);
                    using var pinned = cpuList is not null ? ProfileCommand.Pin(pool, cpuList) : null;
                    using var probe = new MemoryBandwidth();
                    double best = probe.Measure(pool, repetitions: repetitions);
                    probes.Add((t, best, probe.BestPattern.ToString().ToLowerInvariant(), probe.InHugePages,
                        probe.ByPattern.ToDictionary(kv => kv.Key.ToString().ToLowerInvariant(), kv => kv.Value)));
                }
                if (result.GetValue(json))
                    cli.Output.WriteLine(JsonSerializer.Serialize(probes.Select(p => new { threads = p.Threads, bandwidth_gbps = p.Best, best_pattern = p.Pattern, huge_pages = p.HugePages, by_pattern_gbps = p.ByPattern }),
                        new JsonSerializerOptions { WriteIndented = true }));
                else if (result.GetValue(csv))
                {
                    // Each pattern's figure too, as the table and JSON give them (the CSV had the best alone).
                    var patterns = Enum.GetNames<BandwidthPattern>().Select(n => n.ToLowerInvariant()).ToArray();
                    cli.Output.WriteLine("threads,bandwidth_gbps,best_pattern,huge_pages," + string.Join(',', patterns.Select(n => n + "_gbps")));
                    foreach (var p in probes)
                        cli.Output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{p.Threads},{p.Best:F3},{p.Pattern},{(p.HugePages ? 1 : 0)},")
                            + string.Join(',', patterns.Select(n => p.ByPattern.TryGetValue(n, out double g) ? g.ToString("F3", CultureInfo.InvariantCulture) : "")));
                }
                else
                    foreach (var p in probes)
                        cli.Output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"threads {p.Threads}: {p.Best:F1} GB/s ({p.Pattern}, {(p.HugePages ? "2 MiB" : "4 KiB")} pages) — {string.Join(", ", p.ByPattern.Select(kv => $"{kv.Key} {kv.Value:F1}"))}"));
                return 0;
            }
            // Checked before the synthetic file is built (minutes for 2b4t): a bad value failed after it.
            var pages = ModelOptions.ParseWeightPages(result.GetValue(weightPages));
            if (result.GetValue(hugePages)) ProfileCommand.EnableHugePages();
            var headOnLoad = synth is null ? ModelOptions.ParseHeadType(result.GetValue(headType)) : null;
            string path = shape is not null
                ? SyntheticFile(shape, result.GetValue(headType) ?? "f16", cli)
                : ModelOptions.ResolveModel(result.GetValue(model));
            // After the synthetic model is built (in memory, then written): its build is not the benchmark's memory.
            ResetPeakRss();

            long t0 = Stopwatch.GetTimestamp();
            using var weights = ModelWeights.Load(path, new ModelLoadOptions { ContextLength = ctxOption, HeadType = headOnLoad, WeightPages = pages });
            double loadSeconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
            if (result.GetValue(mlock)) cli.Error.WriteLine($"locked {ProfileCommand.LockWeights(weights) / 1e9:F2} GB of weights in RAM");
            int context = weights.Config.ContextLength, maxDepth = depthList.Max();
            foreach (var (flag, count) in new[] { ("-p", result.GetValue(prompt)), ("-n", result.GetValue(gen)) })
            {
                long needed = (long)maxDepth + count, both = (long)maxDepth + Math.Max(result.GetValue(prompt), result.GetValue(gen));
                // long throughout: the message's sums wrapped to a negative count of positions.
                if (count > 0 && needed > context)
                    throw new UsageException(ctxOption > 0
                        ? $"-d {maxDepth} with {flag} {count} needs {needed} positions; --ctx {ctxOption} allocates {context}."
                        : both <= MaxContext
                            ? $"-d {maxDepth} with {flag} {count} needs {needed} positions; the model's context is {context} (pass --ctx {both} to allocate more)."
                            : $"-d {maxDepth} with {flag} {count} needs {needed} positions, more than bench allocates ({MaxContext}); lower -d or {flag}.");
            }
            // An HF directory's size is that of the safetensors files the loader read (it read 0 in JSON and CSV; then every
            // *.safetensors in it, a model.safetensors beside another's shards counted twice).
            long fileBytes = File.Exists(path) ? BitNetSharp.Formats.PathIdentity.Length(path) : Directory.Exists(path) ? HfWeightBytes(path) : 0;
            // As the engine's kernel reads them: the lookup kernel decodes from its own layout, 2 bytes per 9 weights.
            var kernel = Kernels.KernelRegistry.ForModel(weights.TernaryBytes, weights.Config.Dim);
            long perToken = ThroughputBenchmark.BytesPerToken(weights, kernel);
            long projectionParams = weights.Layers.Sum(l => (long)l.Q.Rows * l.Q.Cols + (long)l.K.Rows * l.K.Cols + (long)l.V.Rows * l.V.Cols
                + (long)l.O.Rows * l.O.Cols + (long)l.Gate.Rows * l.Gate.Cols + (long)l.Up.Rows * l.Up.Cols + (long)l.Down.Rows * l.Down.Cols);
            long projectionBytes = weights.Layers.Sum(l => l.PackedBytes);

            // The host's bandwidth drifts (shared memory controllers), so each thread count is bracketed by two
            // probes and bounded by the better one. The 1 GiB probe buffer must not count as the model's memory: the
            // peak-RSS watermark is read before each probe is allocated and reset after it is freed.
            long peakRss = 0;
            double Probe(WorkerPool pool)
            {
                peakRss = Math.Max(peakRss, ThroughputBenchmark.PeakResidentBytes() ?? 0);
                double gbps;
                using (var probe = new MemoryBandwidth())
                {
                    gbps = probe.Measure(pool);
                    cli.Error.WriteLine(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                        $"read bandwidth, {pool.ThreadCount} thread(s): {gbps:F1} GB/s — best of {string.Join(", ", probe.ByPattern.Select(kv => $"{kv.Key.ToString().ToLowerInvariant()} {kv.Value:F1}"))} ({(probe.InHugePages ? "2 MiB" : "4 KiB")} pages)"));
                }
                GC.Collect();
                ResetPeakRss();
                return gbps;
            }
            var rows = new List<Row>();
            var ratios = new Dictionary<ThroughputSample, PairedRatio>(ReferenceEqualityComparer.Instance);
            foreach (int t in threadCounts)
            {
                using var pool = new WorkerPool(t);
                using var pinned = cpuList is not null ? ProfileCommand.Pin(pool, cpuList) : null;
                double before = Probe(pool);
                var samples = new List<ThroughputSample>();
                int every = result.GetValue(healthAb) ?? -1;
                int p = result.GetValue(prompt), n = result.GetValue(gen);
                // One untimed fill per depth, shared by its pp and tg tests (each repetition truncates back to it). Every
                // depth's cache is held at once, so that decode can interleave the depths repetition by repetition.
                var prefixes = new KvCache?[depthList.Length];
                try
                {
                    for (int i = 0; i < depthList.Length; i++)
                    {
                        int d = depthList[i];
                        if (d == 0) continue;
                        long fillStart = Stopwatch.GetTimestamp();
                        prefixes[i] = ThroughputBenchmark.FillDepth(weights, pool, d, d + Math.Max(p, n), kv);
                        cli.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"depth {d}: cache filled in {Stopwatch.GetElapsedTime(fillStart).TotalSeconds:F1} s (not timed)"));
                    }
                    var byDepth = new List<ThroughputSample>[depthList.Length];
                    for (int i = 0; i < depthList.Length; i++)
                    {
                        byDepth[i] = [];
                        if (p > 0) byDepth[i].Add(ThroughputBenchmark.Prefill(weights, pool, p, repetitions, kv, prefixes[i], depthGiven));
                    }
                    if (n > 0)
                        foreach (int b in sequenceCounts)
                        {
                            if (every >= 0)
                            {
                                // Health A/B at depth 0; the other depths as plain decode tests.
                                for (int i = 0; i < depthList.Length; i++)
                                {
                                    if (depthList[i] > 0)
                                    {
                                        byDepth[i].Add(ThroughputBenchmark.Decode(weights, pool, n, repetitions, kv, b, prefixes[i], depthGiven));
                                        continue;
                                    }
                                    var (off, on) = ThroughputBenchmark.DecodeHealthAB(weights, pool, n, repetitions, every, kv, b);
                                    byDepth[i].Add(off);
                                    byDepth[i].Add(on);
                                    cli.Error.WriteLine(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                                        $"health A/B, {t} threads, {b} sequence(s): on/off = {on.Mean / off.Mean:F4} (median of per-pair ratios {Median(on.TokensPerSecond, off.TokensPerSecond):F4})"));
                                }
                                continue;
                            }
                            // Every depth's repetition r before any depth's r + 1: the depth ratios pair samples taken together.
                            var tg = ThroughputBenchmark.DecodeDepths(weights, pool, n, repetitions, prefixes, kv, b, depthGiven);
                            for (int i = 0; i < tg.Length; i++)
                            {
                                byDepth[i].Add(tg[i]);
                                if (i == 0) continue;
                                if (ThroughputBenchmark.Paired(tg[i], tg[0]) is { } ratio)
                                {
                                    ratios[tg[i]] = ratio;
                                    cli.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                                        $"{tg[i].Test} over depth {ratio.BaseDepth}, {t} thread(s), paired by repetition: {ratio.Median:F3} (range {ratio.Min:F3}–{ratio.Max:F3})"));
                                }
                            }
                        }
                    foreach (var atDepth in byDepth) samples.AddRange(atDepth);
                }
                finally
                {
                    foreach (var prefix in prefixes) prefix?.Dispose();
                }
                if (result.GetValue(profileAb) is { } pab)
                {
                    var (off, on) = ThroughputBenchmark.DecodeProfileAB(weights, pool, Math.Min(result.GetValue(gen), weights.Config.ContextLength - 1), pab, kv);
                    samples.Add(off);
                    samples.Add(on);
                    cli.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"profile A/B, {t} threads: on/off = {on.Mean / off.Mean:F4} (median of per-pair ratios {Median(on.TokensPerSecond, off.TokensPerSecond):F4})"));
                }
                double bandwidth = Math.Max(before, Probe(pool));
                // Per row: a step of n sequences multiplies n tokens, and the lookup kernel reads its own layout only up to a few.
                rows.AddRange(samples.Select(sample => new Row(sample, bandwidth, sample.Sequences == 1 ? perToken : ThroughputBenchmark.BytesPerToken(weights, kernel, sample.Sequences),
                    sample.KvBytesPerStep(weights.Config, kv), ratios.TryGetValue(sample, out var ratio) ? ratio : null)));
            }
            peakRss = Math.Max(peakRss, ThroughputBenchmark.PeakResidentBytes() ?? 0);
            var info = new Info(synth is not null ? $"synthetic {synth} ({result.GetValue(headType) ?? "f16"} head)" : headOnLoad is not null ? $"{path} (head re-encoded at load)" : path, weights.Config.Architecture, fileBytes,
                projectionBytes * 8.0 / projectionParams, loadSeconds, peakRss > 0 ? peakRss : null, perToken,
                $"{Kernels.KernelRegistry.ForModel(weights.TernaryBytes, weights.Config.Dim).Name}, {Kernels.HeadKernels.DescribeStreams(weights.Output.Type)}", kv.Name(), GgmlTypeInfo.Name(weights.Output.Type), weights.Output.ByteLength, ThroughputBenchmark.ResidentBytes(),
                ModelOptions.DescribeWeightPages(weights), ModelOptions.WeightPagesKind(weights));
            if (result.GetValue(json)) WriteJson(cli.Output, info, rows);
            else if (result.GetValue(csv)) WriteCsv(cli, info, rows);
            else WriteTable(cli, info, rows);
            if (result.GetValue(hugePages)) cli.Error.WriteLine(ProfileCommand.HugePagesReport());
            return 0;
        }));
        return command;
    }

    private static double Median(double[] on, double[] off)
    {
        var r = new double[on.Length];
        for (int i = 0; i < r.Length; i++) r[i] = on[i] / off[i];
        Array.Sort(r);
        return r.Length % 2 == 1 ? r[r.Length / 2] : (r[r.Length / 2 - 1] + r[r.Length / 2]) / 2;
    }

    /// <summary><paramref name="DepthRatio"/>: tg at this depth over tg at the first depth given, paired by repetition (null elsewhere).</summary>
    /// <summary>
    /// A decode step reads the weights once for all its sequences (<paramref name="WeightBytes"/>) and each sequence's
    /// KV cache up to its position (<paramref name="KvBytesPerStep"/>, all sequences): the bound counts both, so at depth
    /// it is not overstated by the cache (≈ 27 % at depth 4096 on the 2B4T shape with an f16 cache).
    /// </summary>
    private sealed record Row(ThroughputSample Sample, double BandwidthGBps, long WeightBytes, long KvBytesPerStep, PairedRatio? DepthRatio = null)
    {
        public bool IsGeneration => Sample.Test.StartsWith("tg", StringComparison.Ordinal);
        public long BytesPerStep => WeightBytes + KvBytesPerStep;
        private double StepsPerSecond => Sample.Mean / Sample.Sequences;
        /// <summary>Weights read per second.</summary>
        public double WeightGBps => StepsPerSecond * WeightBytes / 1e9;
        /// <summary>Weights and KV cache read per second.</summary>
        public double ReadGBps => StepsPerSecond * BytesPerStep / 1e9;
        public double BoundTokensPerSecond => Sample.Sequences * BandwidthGBps * 1e9 / BytesPerStep;
        public double PercentOfBound => 100 * Sample.Mean / BoundTokensPerSecond;
        /// <summary>A generation test past its memory bound: its weights came from the CPU caches (<see cref="AboveTheBound"/>).</summary>
        public bool FromCache => IsGeneration && AboveTheBound(PercentOfBound) && FitsInCache(BytesPerStep, Sample.Threads);
        /// <summary>Past its bound with more bytes a step than the caches its threads can fill hold: the probe under-measured.</summary>
        public bool AboveTheProbe => IsGeneration && AboveTheBound(PercentOfBound) && !FitsInCache(BytesPerStep, Sample.Threads);
    }

    /// <summary>
    /// Whether a test ran faster than its memory-bandwidth bound allows (over 105 %, as profile's "cache" label): its
    /// weights and KV cache were served from the CPU caches (a model of a few MB), and the bound, DRAM's, does not apply.
    /// The table said "156.3 %" without a word.
    /// </summary>
    public static bool AboveTheBound(double percentOfBound) => percentOfBound > 105;

    /// <summary>Whether <paramref name="bytes"/> a step could come from the last-level cache <paramref name="threads"/>
    /// threads fill, L2s and slack included (twice it); true where the cache size is unknown.</summary>
    public static bool FitsInCache(long bytes, int threads) =>
        BitNetSharp.Diagnostics.MemoryBandwidth.ReachableCacheBytes(threads) is not { } cache || bytes <= 2 * cache;

    private static long HfWeightBytes(string directory)
    {
        using var hf = BitNetSharp.Formats.HuggingFace.HfModelDirectory.Open(directory);
        return hf.Weights.TotalFileBytes;
    }

    private sealed record Info(string Model, string Architecture, long FileBytes, double ProjectionBitsPerWeight, double LoadSeconds,
        long? PeakRssBytes, long BytesPerToken, string Kernel, string KvType, string HeadType, long HeadBytes, long? RssEndBytes,
        string WeightPages, string WeightPagesKind);

    /// <summary>A synthetic model is written once to the temp folder and memory-mapped like a real file.</summary>
    internal static string SyntheticFile(SyntheticShape shape, string headType, CliConsole cli)
    {
        var type = headType.ToLowerInvariant() switch
        {
            "f16" => GgmlType.F16,
            "q8_0" => GgmlType.Q8_0,
            "q6_k" => GgmlType.Q6_K,
            "f32" => GgmlType.F32,
            _ => throw new UsageException($"--head-type '{headType}' is not one of f16, q8_0, q6_k, f32."),
        };
        // A head type the shape's rows cannot hold is the flag's fault, exit 2, as on a model file (it was exit 1, after
        // "writing synthetic ... model").
        if (type is GgmlType.Q6_K or GgmlType.Q8_0 && Quantization.EmbeddingEncoder.CannotEncode(type, shape.Dim) is { } reason)
            throw new UsageException($"--head-type {headType}: {reason} (--synthetic {shape.Name}); choose f16 or f32.");
        string dir = SyntheticCacheDirectory();
        // Keyed by every dimension of the shape and the generator's version, not the name alone: a shape or a generator
        // changed between versions found the old file and benchmarked it. Written under a temporary name and moved, so an
        // interrupted write leaves no file that a later run would take for the model.
        uint key = 2166136261;
        foreach (char ch in $"{shape} v{SyntheticModel.BuildVersion}") key = (key ^ ch) * 16777619;
        string path = Path.Combine(dir, $"{shape.Name}-{key:x8}-{headType.ToLowerInvariant()}.gguf");
        if (File.Exists(path) && !ReadsAsModel(path))
        {
            cli.Error.WriteLine($"{path} is not a readable model file; writing it again.");
            File.Delete(path);
        }
        if (!File.Exists(path))
        {
            cli.Error.WriteLine($"writing synthetic {shape.Name} model to {path} (once)...");
            // Unique per writer, not only per process: two commands in one process (a host running bench and profile,
            // the tests) wrote the same partial file, and one moved or deleted it under the other.
            string partial = $"{path}.{Environment.ProcessId}.{Guid.NewGuid():N}.partial";
            try
            {
                SyntheticModel.Build(shape, seed: 1, embeddingType: type).WriteFile(partial);
                File.Move(partial, path, overwrite: true);
            }
            finally
            {
                File.Delete(partial);
            }
            GC.Collect();
        }
        return path;
    }

    /// <summary>
    /// The user's own cache folder for synthetic models ($XDG_CACHE_HOME/bitnet/synthetic, else ~/.cache/bitnet/synthetic),
    /// created readable by its owner only: a fixed folder in the shared /tmp let another user plant the file bench loads.
    /// </summary>
    internal static string SyntheticCacheDirectory()
    {
        string? root = Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } x && Path.IsPathRooted(x) ? x : null;
        string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        root ??= home.Length > 0 ? Path.Combine(home, ".cache") : Path.Combine(Path.GetTempPath(), $"bitnet-{Environment.UserName}");
        string dir = Path.Combine(root, "bitnet", "synthetic");
        if (OperatingSystem.IsWindows()) Directory.CreateDirectory(dir);
        else
        {
            const UnixFileMode owner = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;
            Directory.CreateDirectory(dir, owner);
            try
            {
                if (File.GetUnixFileMode(dir) != owner) File.SetUnixFileMode(dir, owner); // one made earlier, more open
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // Another user's folder (say /tmp/bitnet-NAME made first by someone else): its files are not to be loaded.
                throw new IOException($"{dir}: the synthetic-model cache folder is not yours to keep private ({e.Message}); set XDG_CACHE_HOME to a folder of your own.", e);
            }
        }
        return dir;
    }

    private static bool ReadsAsModel(string path)
    {
        try
        {
            using var file = GgufFile.Open(path);
            return file.Tensors.Count > 0;
        }
        catch (Exception e) when (e is BitNetSharp.Formats.ModelFormatException or IOException or InvalidDataException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>Linux: writing 5 to clear_refs resets the peak-RSS watermark, so building a synthetic model does not count.</summary>
    internal static void ResetPeakRss()
    {
        try
        {
            if (OperatingSystem.IsLinux()) File.WriteAllText("/proc/self/clear_refs", "5");
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    private static string F(double v, string format = "F1") => v.ToString(format, CultureInfo.InvariantCulture);

    private static void WriteTable(CliConsole cli, Info info, List<Row> rows)
    {
        var facts = new Table().Border(TableBorder.Rounded).AddColumn("model").AddColumn("value");
        facts.AddRow("model", Markup.Escape(info.Model));
        facts.AddRow("architecture", info.Architecture);
        facts.AddRow("file size", info.FileBytes > 0 ? $"{info.FileBytes / 1e9:F3} GB" : "-");
        // As the kernels read them (rows padded to their blocks, no scales), which is what the bound counts; `inspect`'s
        // figure is the file's, and differs where rows are not whole blocks.
        facts.AddRow("bits per weight read (projections)", F(info.ProjectionBitsPerWeight, "F3"));
        facts.AddRow("weight bytes read per step", $"{info.BytesPerToken / 1e9:F3} GB (+ the KV cache at the depth)");
        facts.AddRow("load time", $"{F(info.LoadSeconds, "F3")} s");
        facts.AddRow("peak RSS", info.PeakRssBytes is { } rss ? $"{rss / 1e9:F3} GB" : "-");
        facts.AddRow("RSS after the tests", info.RssEndBytes is { } end ? $"{end / 1e9:F3} GB" : "-");
        facts.AddRow("kernel / KV cache", $"{info.Kernel} / {info.KvType}");
        facts.AddRow("head", $"{info.HeadType}, {info.HeadBytes / 1e6:F1} MB");
        facts.AddRow("weights in memory", Markup.Escape(info.WeightPages));
        cli.Ansi.Write(facts);
        var table = new Table().Border(TableBorder.Rounded)
            .AddColumn("test").AddColumn(new TableColumn("depth").RightAligned()).AddColumn("threads").AddColumn(new TableColumn("t/s").RightAligned())
            .AddColumn(new TableColumn("read GB/s (weights+KV)").RightAligned()).AddColumn(new TableColumn("read BW GB/s").RightAligned())
            .AddColumn(new TableColumn("BW bound t/s").RightAligned()).AddColumn(new TableColumn("% of bound").RightAligned())
            .AddColumn(new TableColumn("latency p50/p99 ms").RightAligned()).AddColumn(new TableColumn("attention %").RightAligned());
        bool anyRatio = rows.Any(r => r.DepthRatio is not null);
        if (anyRatio) table.AddColumn(new TableColumn("vs first depth").RightAligned());
        foreach (var r in rows)
        {
            var cells = new List<string>
            {
                r.Sample.Test, r.Sample.Depth.ToString(CultureInfo.InvariantCulture), r.Sample.Threads.ToString(CultureInfo.InvariantCulture), $"{F(r.Sample.Mean, "F2")} ± {F(r.Sample.StdDev, "F2")}",
                r.IsGeneration ? F(r.ReadGBps) : "-", F(r.BandwidthGBps), r.IsGeneration ? F(r.BoundTokensPerSecond) : "-",
                r.IsGeneration ? F(r.PercentOfBound) + (r.FromCache ? "% (cache)" : r.AboveTheProbe ? "% (above)" : "%") : "-",
                r.Sample.Latency is { Count: > 0 } l ? $"{F(l.P50 * 1e3, "F2")} / {F(l.P99 * 1e3, "F2")}" : "-",
                r.Sample.AttentionShare is { } share ? F(100 * share) + "%" : "-",
            };
            if (anyRatio) cells.Add(r.DepthRatio is { } q ? $"{F(q.Median, "F3")} ({F(q.Min, "F3")}–{F(q.Max, "F3")})" : "-");
            table.AddRow(cells.ToArray());
        }
        cli.Ansi.Write(table);
        if (rows.FirstOrDefault(r => r.FromCache) is { } cached)
            cli.Error.WriteLine($"note: {cached.Sample.Test} ran above the memory-bandwidth bound (cache): its {cached.BytesPerStep / 1e6:0.#} MB read per step fit in the CPU caches, so the bound, memory's, does not apply to it; it does to models larger than the caches.");
        if (rows.FirstOrDefault(r => r.AboveTheProbe) is { } above)
            cli.Error.WriteLine($"note: {above.Sample.Test} ran above the memory-bandwidth bound (above) with {above.BytesPerStep / 1e6:0.#} MB a step, more than the caches hold: the bandwidth probe read slower than the model did (a busy host while it ran?); rerun, or compare with --bandwidth-only.");
    }

    private static void WriteCsv(CliConsole cli, Info info, List<Row> rows)
    {
        cli.Output.WriteLine("model,test,threads,tokens_per_second,stddev,weight_gbps,bandwidth_gbps,bound_tokens_per_second,percent_of_bound,load_seconds,peak_rss_bytes,file_bytes,"
            + "latency_p50_ms,latency_p95_ms,latency_p99_ms,latency_stddev_ms,ttft_ms,depth,attention_share,depth_ratio,kv_bytes_per_step,read_gbps,from_cache,"
            + "sequences,depth_ratio_min,depth_ratio_max,depth_ratio_base");
        // RFC 4180: the model field quoted with its quotes doubled; the bound's cells are empty for prompt processing (as in JSON).
        // The columns JSON had and CSV lacked (sequences, the depth ratio's range and base) come last, so a reader of the
        // earlier columns by position reads them as before.
        string model = "\"" + info.Model.Replace("\"", "\"\"", StringComparison.Ordinal) + "\"";
        foreach (var r in rows)
            cli.Output.WriteLine(string.Join(',', model, r.Sample.Test, r.Sample.Threads, F(r.Sample.Mean, "F3"), F(r.Sample.StdDev, "F3"),
                r.IsGeneration ? F(r.WeightGBps, "F3") : "", F(r.BandwidthGBps, "F3"), r.IsGeneration ? F(r.BoundTokensPerSecond, "F3") : "", r.IsGeneration ? F(r.PercentOfBound, "F2") : "",
                F(info.LoadSeconds, "F3"), info.PeakRssBytes?.ToString(CultureInfo.InvariantCulture) ?? "", info.FileBytes,
                Lat(r, l => l.P50), Lat(r, l => l.P95), Lat(r, l => l.P99), Lat(r, l => l.StdDev), r.IsGeneration ? "" : Lat(r, l => l.Mean),
                r.Sample.Depth, r.Sample.AttentionShare is { } share ? F(share, "F4") : "", r.DepthRatio is { } q ? F(q.Median, "F4") : "",
                r.IsGeneration ? r.KvBytesPerStep.ToString(CultureInfo.InvariantCulture) : "", r.IsGeneration ? F(r.ReadGBps, "F3") : "",
                r.IsGeneration ? (r.FromCache ? "true" : "false") : "",
                r.Sample.Sequences, r.DepthRatio is { } q1 ? F(q1.Min, "F4") : "", r.DepthRatio is { } q2 ? F(q2.Max, "F4") : "",
                r.DepthRatio is { } q3 ? q3.BaseDepth.ToString(CultureInfo.InvariantCulture) : ""));
    }

    private static string Lat(Row r, Func<Diagnostics.Profiling.LatencySummary, double> pick) =>
        r.Sample.Latency is { Count: > 0 } l ? F(pick(l) * 1e3, "F3") : "";

    private static void WriteJson(TextWriter output, Info info, List<Row> rows)
    {
        var doc = new
        {
            model = info.Model,
            architecture = info.Architecture,
            file_bytes = info.FileBytes,
            projection_bits_per_weight = info.ProjectionBitsPerWeight,
            bytes_per_token = info.BytesPerToken,
            load_seconds = info.LoadSeconds,
            peak_rss_bytes = info.PeakRssBytes,
            rss_end_bytes = info.RssEndBytes,
            kernel = info.Kernel,
            kv_type = info.KvType,
            head_type = info.HeadType,
            head_bytes = info.HeadBytes,
            weight_pages = info.WeightPagesKind,
            weights_in_memory = info.WeightPages,
            results = rows.Select(r => new
            {
                test = r.Sample.Test,
                threads = r.Sample.Threads,
                depth = r.Sample.Depth,
                attention_share = r.Sample.AttentionShare,
                sequences = r.Sample.Sequences,
                tokens_per_second = r.Sample.Mean,
                stddev = r.Sample.StdDev,
                samples = r.Sample.TokensPerSecond,
                weight_gbps = r.IsGeneration ? r.WeightGBps : (double?)null,
                kv_bytes_per_step = r.IsGeneration ? r.KvBytesPerStep : (long?)null,
                read_gbps = r.IsGeneration ? r.ReadGBps : (double?)null,
                bandwidth_gbps = r.BandwidthGBps,
                bound_tokens_per_second = r.IsGeneration ? r.BoundTokensPerSecond : (double?)null,
                percent_of_bound = r.IsGeneration ? r.PercentOfBound : (double?)null,
                from_cache = r.IsGeneration ? r.FromCache : (bool?)null,
                latency_p50_ms = r.Sample.Latency is { Count: > 0 } l1 ? l1.P50 * 1e3 : (double?)null,
                latency_p95_ms = r.Sample.Latency is { Count: > 0 } l2 ? l2.P95 * 1e3 : (double?)null,
                latency_p99_ms = r.Sample.Latency is { Count: > 0 } l3 ? l3.P99 * 1e3 : (double?)null,
                latency_stddev_ms = r.Sample.Latency is { Count: > 0 } l4 ? l4.StdDev * 1e3 : (double?)null,
                ttft_ms = !r.IsGeneration && r.Sample.Latency is { Count: > 0 } l5 ? l5.Mean * 1e3 : (double?)null,
                depth_ratio = r.DepthRatio?.Median,
                depth_ratio_min = r.DepthRatio?.Min,
                depth_ratio_max = r.DepthRatio?.Max,
                depth_ratio_base = r.DepthRatio?.BaseDepth,
            }),
        };
        output.WriteLine(JsonSerializer.Serialize(doc, new JsonSerializerOptions { WriteIndented = true }));
    }
}
