using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using BitNetSharp.Diagnostics.Profiling;
using BitNetSharp.Model;
using BitNetSharp.Threading;
using Spectre.Console;

namespace BitNetSharp.Cli.Commands;

/// <summary>
/// <c>bitnet profile [-m MODEL | --synthetic SHAPE] [-p TEXT | --prompt-tokens N] [-n N] [-t N] [--layers] [--json]
/// [--trace FILE.json] [--ab N]</c>: a prefill and decode steps with the operation timer on; per phase, where the time
/// went per operation kind (and per layer), each row against this machine's read bandwidth and int8 MAC ceiling, the
/// perf counters, memory and allocations, and the per-token latency distribution.
/// </summary>
public static class ProfileCommand
{
    /// <summary>The most prompt tokens or decode steps a profile takes (a context of 2^24).</summary>
    private const int MaxTokens = 1 << 24;

    /// <summary>A warning when a probe of <paramref name="probeBytes"/> is not at least four times the last-level cache its
    /// threads can fill (<paramref name="cacheBytes"/>, <see cref="BitNetSharp.Diagnostics.MemoryBandwidth.ReachableCacheBytes"/>;
    /// null: unknown, no warning), else null.</summary>
    public static string? ProbeInCache(long probeBytes, long? cacheBytes) =>
        cacheBytes is { } llc && probeBytes < 4 * llc
            ? $"--probe-mb {probeBytes >> 20} is not far larger than the {llc / (1024.0 * 1024):0.#} MiB of last-level cache the probe's threads can fill: it reads the cache, not memory, so the read bandwidth and every % BW and memory/cache label are too flattering. Give at least {(4 * llc + (1 << 20) - 1) >> 20}."
            : null;

    /// <summary>The largest bandwidth probe buffer, in MB.</summary>
    private const int MaxProbeMb = 1 << 16;
    /// <summary>The longest --peak-ms: each of the ceiling measurements runs this long (10 minutes is far past useful).</summary>
    public const int MaxPeakMs = 600_000;

    /// <summary>The most worker threads, as bench and serve allow (more started a thread each, or overflowed the pool).</summary>
    private const int MaxThreads = 4096;

    public static Command Create(CliConsole cli)
    {
        var model = new Option<string?>("--model", "-m") { Description = "A .gguf file or Hugging Face model directory (default: the bundled model)." };
        var synthetic = new Option<string?>("--synthetic") { Description = "Profile a random-weight model of a known shape instead: 2b4t, large or tiny." };
        // No default in the help: a synthetic model's is f16, a -m file's head is kept as stored ("[default: f16]" read as
        // if every model's head were re-encoded to f16).
        var headType = new Option<string>("--head-type") { Description = "Synthetic models: the embedding/head type the file is written with, f16 (default), q8_0, q6_k or f32. -m files: re-encode the head at load, f16, q8_0 or q6_k (default: as stored), as bench does." };
        var prompt = new Option<string?>("--prompt", "-p") { Description = "Prompt text (needs the model's tokenizer)." };
        var promptTokens = new Option<int?>("--prompt-tokens") { Description = "Prompt of N token ids instead of text (default 32)." };
        var gen = new Option<int>("--n-gen", "-n") { Description = "Decode steps after the prompt.", DefaultValueFactory = _ => 16 };
        var threads = new Option<int?>("--threads", "-t") { Description = "Worker threads (default: physical cores)." };
        var sequences = new Option<int>("--sequences", "-s") { Description = "Sequences decoding together, each the same prompt with its own KV cache (as `serve` batches concurrent requests); tok/s is their aggregate.", DefaultValueFactory = _ => 1 };
        var kvType = new Option<string>("--kv-type") { Description = "KV-cache type: f32, f16, int8, fp8.", DefaultValueFactory = _ => "f16" };
        var layers = new Option<bool>("--layers") { Description = "Also a table per layer." };
        var json = new Option<bool>("--json") { Description = "Print JSON (every layer × operation cell included)." };
        var trace = new Option<string?>("--trace") { Description = "Write a Chrome Trace Event file (open it in ui.perfetto.dev): one track per worker thread." };
        var ab = new Option<int>("--ab") { Description = "Afterwards, decode N times with profiling off and on, alternating, and print the cost of profiling." };
        var peakMs = new Option<int>("--peak-ms") { Description = "Milliseconds each kernel-ceiling and unpack-split measurement runs.", DefaultValueFactory = _ => 250 };
        var mlock = new Option<bool>("--mlock") { Description = "Lock the model file's pages in RAM first (Linux mlock; needs RLIMIT_MEMLOCK)." };
        var hugePages = new Option<bool>("--hugepages") { Description = "Ask for transparent huge pages (madvise) on the runtime buffers ≥ 2 MiB: activations, KV cache, repacked weights (Linux). The model file's bytes: --weight-pages." };
        var weightPages = ModelOptions.NewWeightPagesOption();
        var cpus = new Option<string?>("--cpus") { Description = "Pin worker i to the i-th CPU of this list (e.g. 0,1 or 0-3; Linux)." };
        var probeMb = new Option<int>("--probe-mb") { Description = "Size of the read-bandwidth probe buffer, MiB.", DefaultValueFactory = _ => 1024 };
        var command = new Command("profile", "Where each microsecond of prefill and decode goes, per operation and layer, against this machine's limits.")
        {
            model, synthetic, headType, prompt, promptTokens, gen, threads, sequences, kvType, layers, json, trace, ab, probeMb, cpus, peakMs, mlock, hugePages, weightPages,
        };
        command.SetAction(result => cli.Guard(() =>
        {
            string? synth = result.GetValue(synthetic);
            if (synth is not null && result.GetValue(model) is not null)
                throw new UsageException("give either -m MODEL or --synthetic SHAPE, not both.");
            SyntheticShape? shape = null;
            if (synth is not null)
            {
                try
                {
                    shape = SyntheticShape.ByName(synth);
                }
                catch (ArgumentException)
                {
                    throw new UsageException($"--synthetic '{synth}' is not a known shape; use 2b4t, large or tiny.");
                }
            }
            int steps = result.GetValue(gen);
            if (steps < 1 || steps > MaxTokens) throw new UsageException($"--n-gen (-n) must be from 1 to {MaxTokens}; got {steps}.");
            string? text = result.GetValue(prompt);
            int? nPrompt = result.GetValue(promptTokens);
            if (text is not null && nPrompt is not null) throw new UsageException("give either --prompt (-p) TEXT or --prompt-tokens N, not both.");
            if (nPrompt is < 1 or > MaxTokens) throw new UsageException($"--prompt-tokens must be from 1 to {MaxTokens}; got {nPrompt}.");
            if (result.GetValue(threads) is (< 1 or > MaxThreads) and var t) throw new UsageException($"--threads (-t) must be from 1 to {MaxThreads}; got {t}.");
            int[]? cpuList = result.GetValue(cpus) is { } cl ? ParseCpus(cl) : null;
            // Without -t, --cpus gives the thread count: one worker per CPU listed (`--cpus 0,1` on a host of more cores).
            int threadCount = result.GetValue(threads) ?? cpuList?.Length ?? 0;
            CheckCpusCover(cpuList, threadCount > 0 ? threadCount : WorkerPool.DefaultThreadCount());
            int seqs = result.GetValue(sequences);
            if (seqs is < 1 or > ProfileOptions.MaxSequences) throw new UsageException($"--sequences (-s) must be from 1 to {ProfileOptions.MaxSequences}; got {seqs}.");
            int abReps = result.GetValue(ab);
            // A value past the array limit threw OutOfMemoryException (a stack trace) only after the whole profile.
            if (abReps is < 0 or > BenchCommand.MaxRepetitions) throw new UsageException($"--ab must be from 0 to {BenchCommand.MaxRepetitions}; got {abReps}.");
            int probe = result.GetValue(probeMb);
            if (probe < 16 || probe > MaxProbeMb) throw new UsageException($"--probe-mb must be from 16 (the probe must be far larger than the caches) to {MaxProbeMb}; got {probe}.");
            // A probe the last-level cache holds reads the cache: 16 MiB on a 16 MiB L3 read 52 GB/s against 19.5 for 1 GiB,
            // and every "% BW" and memory/cache label was measured against that.
            if (ProbeInCache((long)probe << 20, BitNetSharp.Diagnostics.MemoryBandwidth.ReachableCacheBytes(threadCount > 0 ? threadCount : WorkerPool.DefaultThreadCount())) is { } probeNote)
                cli.Error.WriteLine($"warning: {probeNote}");
            int peak = result.GetValue(peakMs);
            if (peak is < 1 or > MaxPeakMs) throw new UsageException($"--peak-ms must be from 1 to {MaxPeakMs}; got {peak}.");
            string? tracePath = result.GetValue(trace);
            if (tracePath is not null) OutputFile.Check("--trace", tracePath);
            var kv = ModelOptions.ParseKvType(result.GetValue(kvType)!);

            // Checked before the synthetic file is built (minutes for 2b4t): a bad value failed after it.
            var pages = ModelOptions.ParseWeightPages(result.GetValue(weightPages));
            if (result.GetValue(hugePages)) EnableHugePages();
            // --head-type on a model file re-encodes its head at load, as bench does (it was ignored without a word).
            var headOnLoad = shape is null && result.GetResult(headType) is { Implicit: false } ? ModelOptions.ParseHeadType(result.GetValue(headType)) : null;
            string path = shape is not null ? BenchCommand.SyntheticFile(shape, (result.GetValue(headType) ?? "f16"), cli) : ModelOptions.ResolveModel(result.GetValue(model));
            // The trace replaces its path when written: never the model (a synthetic one included) it profiles.
            if (tracePath is not null) OutputFile.CheckNotInput("--trace", tracePath, (shape is not null ? "synthetic model" : "-m model", path));
            var (weights, tokenizer) = ModelOptions.Load(path, new ModelLoadOptions { WeightPages = pages, HeadType = headOnLoad });
            using var _ = weights;
            if (result.GetValue(mlock)) cli.Error.WriteLine($"locked {LockWeights(weights) / 1e9:F2} GB of weights in RAM");
            int[] ids;
            if (text is not null)
            {
                if (tokenizer is null) throw new UsageException($"--prompt: {path} has no tokenizer; use --prompt-tokens N instead.");
                ids = tokenizer.Encode(text, addBos: tokenizer.AddBosToken, parseSpecial: true);
                if (ids.Length == 0) throw new UsageException("--prompt: the text encodes to no tokens.");
            }
            else
            {
                int count = nPrompt ?? 32;
                var rng = new Random(1);
                ids = new int[count];
                for (int i = 0; i < count; i++) ids[i] = rng.Next(weights.Config.VocabSize);
            }
            if ((long)ids.Length + steps > weights.Config.ContextLength)
                throw new UsageException($"{ids.Length} prompt tokens + {steps} decode steps (-n) exceed the model's context of {weights.Config.ContextLength}.");

            using var pool = new WorkerPool(threadCount);
            using var pinned = cpuList is not null ? Pin(pool, cpuList) : null;
            cli.Error.WriteLine($"profiling {(shape is not null ? $"synthetic {shape.Name}" : path)}: {ids.Length} prompt tokens, {steps} decode steps{(seqs > 1 ? $" × {seqs} sequences" : "")}, {pool.ThreadCount} threads...");
            var report = ProfileSession.Run(weights, pool, new ProfileOptions
            {
                Prompt = ids,
                DecodeSteps = steps,
                KvType = kv,
                AbRepetitions = abReps,
                ModelPath = File.Exists(path) ? path : null,
                BandwidthProbeBytes = (long)probe << 20,
                PeakSeconds = peak / 1000.0,
                Sequences = seqs,
            });
            long? traceBytes = null;
            string? traceError = null;
            if (tracePath is not null)
            {
                // After minutes of profiling, a trace that cannot be written must not take the report with it.
                try
                {
                    ChromeTraceWriter.Write(tracePath, report);
                    // A pipe or device (`--trace >(gzip > t.gz)`) has no size to tell.
                    if (!BitNetSharp.Formats.PathIdentity.IsSpecialFile(tracePath)) traceBytes = BitNetSharp.Formats.PathIdentity.Length(tracePath);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException or OutOfMemoryException or OverflowException)
                {
                    traceError = $"error: the trace could not be written to {tracePath}: {e.Message}";
                    tracePath = null;
                }
            }
            string name = shape is not null ? $"synthetic {shape.Name} ({result.GetValue(headType) ?? "f16"} head)" : path;
            if (result.GetValue(json)) WriteJson(cli.Output, name, report, tracePath, traceBytes, ModelOptions.DescribeWeightPages(weights),
                BitNetSharp.Formats.Gguf.GgmlTypeInfo.Name(weights.Output.Type), ModelOptions.WeightPagesKind(weights));
            else WriteText(cli, name, report, result.GetValue(layers), tracePath, traceBytes, ModelOptions.DescribeWeightPages(weights));
            if (result.GetValue(hugePages)) cli.Error.WriteLine(HugePagesReport());
            if (traceError is not null)
            {
                cli.Error.WriteLine(traceError);
                return 1;
            }
            return 0;
        }));
        return command;
    }

    /// <summary>--hugepages: a usage error where transparent huge pages cannot be asked for, else on for the buffers allocated from now.</summary>
    internal static void EnableHugePages()
    {
        try
        {
            Memory.HugePages.Require();
        }
        catch (Exception e) when (e is PlatformNotSupportedException or InvalidOperationException)
        {
            throw new UsageException(e.Message);
        }
        Memory.HugePages.Enabled = true;
    }

    /// <summary>What --hugepages achieved: bytes advised, how much the kernel backed with huge pages, the THP setting.</summary>
    internal static string HugePagesReport()
    {
        long backed = Math.Max(Memory.HugePages.PeakAnonHugePagesBytes, Memory.HugePages.AnonHugePagesBytes());
        string refused = Memory.HugePages.LastError != 0 ? $" (madvise refused some: errno {Memory.HugePages.LastError})" : "";
        return string.Create(CultureInfo.InvariantCulture,
            $"huge pages: advised {Memory.HugePages.AdvisedBytes / 1048576.0:F0} MiB of runtime buffers{refused}; huge-page-backed while they lived (AnonHugePages, peak seen at release) {backed / 1048576.0:F0} MiB; THP setting: {Memory.HugePages.SystemSetting() ?? "unknown"}");
    }

    /// <summary>One CPU per worker thread: with fewer, workers past the list's end shared its CPUs without a word (--cpus 0 -t 2 ran both on CPU 0).</summary>
    internal static void CheckCpusCover(int[]? cpuList, int threads)
    {
        if (cpuList is null) return;
        if (cpuList.GroupBy(c => c).FirstOrDefault(g => g.Count() > 1) is { } twice)
            throw new UsageException($"--cpus lists CPU {twice.Key} more than once: worker i runs on the list's i-th CPU, so each worker gets a CPU of its own; list each once.");
        if (cpuList.Length < threads)
            throw new UsageException($"--cpus lists {cpuList.Length} CPU(s) for {threads} worker threads: worker i runs on the list's i-th CPU, so give one per thread (e.g. --cpus 0-{threads - 1}) or fewer threads (-t {cpuList.Length}).");
    }

    internal static int[] ParseCpus(string list)
    {
        try
        {
            return ThreadPlacement.ParseCpuList(list);
        }
        catch (ArgumentException e)
        {
            throw new UsageException(e.Message);
        }
    }

    internal static long LockWeights(ModelWeights weights)
    {
        try
        {
            return Memory.WeightLock.Lock(weights);
        }
        catch (Exception e) when (e is PlatformNotSupportedException or InvalidOperationException)
        {
            throw new UsageException(e.Message);
        }
    }

    /// <summary>Pins the pool's workers; dispose to give the calling thread (worker 0) its CPUs back.</summary>
    internal static IDisposable Pin(WorkerPool pool, int[] cpus)
    {
        try
        {
            return ThreadPlacement.Pin(pool, cpus);
        }
        catch (Exception e) when (e is PlatformNotSupportedException or InvalidOperationException)
        {
            throw new UsageException(e.Message);
        }
    }

    private static string F(double v, string format = "F1") => v.ToString(format, CultureInfo.InvariantCulture);

    private static string Pct(double? v) => v is { } x ? F(100 * x) + "%" : "-";

    private static string Ms(double seconds) => F(seconds * 1e3, "F2");

    private static void WriteText(CliConsole cli, string name, ProfileReport r, bool layers, string? tracePath, long? traceBytes, string weightPages)
    {
        var o = cli.Output;
        var c = r.Config;
        o.WriteLine($"model: {name} — {c.Architecture}, {c.Layers} layers, dim {c.Dim}, ff {c.FeedForward}, vocab {c.VocabSize}, head {r.HeadType}, KV cache {r.KvType.Name()}");
        o.WriteLine($"kernel {r.Kernel} ({r.WeightStreams}), {r.Threads} threads; limits measured in this run: read bandwidth {F(r.BandwidthGBps)} GB/s, "
            + $"int8×ternary peak {F(r.PeakGmacPrefill)} GMAC/s at {r.Prefill.Tokens} tokens, {F(r.PeakGmacDecode)} GMAC/s at {r.Sequences} token{(r.Sequences == 1 ? "" : "s")} (cache-resident weights, best of the projection widths)");
        o.WriteLine(r.KernelUnpackShares.Count == 0
            ? $"ternary kernel split: no unpack-only variant of {r.Kernel} (the AVX-512 kernels have one)"
            : "ternary kernel time unpacking codes (rest: multiply-accumulate), cache-resident weights: "
              + string.Join(", ", r.KernelUnpackShares.Select(u => $"{Pct(u.Share)} at width {u.Cols}, {u.Tokens} token{(u.Tokens == 1 ? "" : "s")}")));
        var lat = r.DecodeLatency;
        o.WriteLine($"prefill: {r.Prefill.Tokens} tokens in {Ms(r.Prefill.WallSeconds)} ms ({F(r.Prefill.Tokens / r.Prefill.WallSeconds)} tok/s); TTFT {Ms(r.TtftSeconds)} ms");
        string decodeHead = r.Sequences == 1
            ? $"decode: {r.Decode.Tokens} steps, {F(r.Decode.Tokens / r.Decode.WallSeconds, "F2")} tok/s; per-token latency"
            : $"decode: {r.Decode.Tokens / r.Sequences} steps × {r.Sequences} sequences, {F(r.Decode.Tokens / r.Decode.WallSeconds, "F2")} tok/s in all; per-step latency";
        o.WriteLine($"{decodeHead} p50 {Ms(lat.P50)} ms, p95 {Ms(lat.P95)}, p99 {Ms(lat.P99)}, sd {Ms(lat.StdDev)}, min {Ms(lat.Min)}, max {Ms(lat.Max)}");
        // The recorder's buffers are sized from the warm-up; a run that outgrew them lost the rest silently.
        if (r.Spans.Dropped > 0 || r.Chunks.Dropped > 0)
            cli.Error.WriteLine($"warning: the recorder dropped {r.Spans.Dropped} spans and {r.Chunks.Dropped} pool chunks (its buffers filled): the trace misses them and \"threads busy\" reads low.");
        foreach (var (phase, peak) in new[] { (r.Prefill, r.PeakGmacPrefill), (r.Decode, r.PeakGmacDecode) })
        {
            o.WriteLine();
            o.WriteLine($"{phase.Name} by operation ({Ms(phase.WallSeconds)} ms):");
            cli.Ansi.Write(OpTable(ProfileRow.ByOp(phase, r.BandwidthGBps, peak), "op"));
            if (layers)
            {
                o.WriteLine($"{phase.Name} by layer:");
                cli.Ansi.Write(OpTable(ProfileRow.ByLayer(phase, r.BandwidthGBps, peak), "layer"));
            }
            WriteCounters(o, phase, r);
        }
        o.WriteLine();
        if (r.HardwareCountersUnavailable is { } hw) o.WriteLine($"hardware counters not available: {hw}");
        if (r.SoftwareCountersUnavailable is { } sw) o.WriteLine($"software counters not available: {sw}");
        o.WriteLine($"memory: peak RSS {Gb(r.PeakRssBytes)}, file-mapped resident {Gb(r.Decode.After.MappedFileBytes)}, anonymous {Gb(r.Decode.After.AnonymousBytes)}; weights: {weightPages}");
        if (r.AbOffTokensPerSecond is { } off && r.AbOnTokensPerSecond is { } on)
        {
            double mOff = off.Average(), mOn = on.Average();
            var ratios = on.Select((v, i) => v / off[i]).Order().ToArray();
            double median = ratios.Length % 2 == 1 ? ratios[ratios.Length / 2] : (ratios[ratios.Length / 2 - 1] + ratios[ratios.Length / 2]) / 2;
            o.WriteLine($"profiling cost (decode, {off.Length} alternating pairs): off {F(mOff, "F2")} tok/s, on {F(mOn, "F2")} tok/s, on/off {F(mOn / mOff, "F4")} (median of per-pair ratios {F(median, "F4")})");
        }
        if (tracePath is not null) o.WriteLine($"trace: {tracePath} ({(traceBytes is { } tb ? F(tb / 1e6, "F2") + " MB, " : "")}{r.Spans.Count} op spans, {TotalChunks(r)} chunk spans) — open in ui.perfetto.dev");
    }

    private static long TotalChunks(ProfileReport r)
    {
        long n = 0;
        for (int w = 0; w < r.Chunks.Workers; w++) n += r.Chunks.Spans(w).Length;
        return n;
    }

    private static string Gb(long? bytes) => bytes is { } b ? $"{F(b / 1e9, "F3")} GB" : "-";

    private static void WriteCounters(TextWriter o, PhaseProfile p, ProfileReport r)
    {
        var k = p.Counters;
        double perToken = p.Tokens;
        var parts = new List<string>();
        if (k[PerfEvent.TaskClock] is { } tc) parts.Add($"task-clock {F(tc / 1e6)} ms ({F(tc / 1e9 / p.WallSeconds, "F2")} CPUs)");
        if (k[PerfEvent.ContextSwitches] is { } cs) parts.Add($"context switches {cs}");
        if (k[PerfEvent.CpuMigrations] is { } mig) parts.Add($"migrations {mig}");
        if (k[PerfEvent.MinorFaults] is { } mn) parts.Add($"minor faults {mn} ({F(mn / perToken)}/token)");
        if (k[PerfEvent.MajorFaults] is { } mj) parts.Add($"major faults {mj}");
        if (k.Ipc is { } ipc) parts.Add($"IPC {F(ipc, "F2")}");
        if (k[PerfEvent.Cycles] is { } cyc) parts.Add($"cycles {F(cyc / 1e6)} M");
        if (k.CacheMissRate is { } miss) parts.Add($"cache misses {Pct(miss)} of refs");
        if (k[PerfEvent.BranchMisses] is { } bm) parts.Add($"branch misses {bm}");
        o.WriteLine($"  counters: {(parts.Count > 0 ? string.Join(", ", parts) : "none")}");
        o.WriteLine($"  managed: {p.AllocatedBytes} B allocated ({F(p.AllocatedBytes / perToken)} B/token), GC gen0/1/2 {p.After.Gen0 - p.Before.Gen0}/{p.After.Gen1 - p.Before.Gen1}/{p.After.Gen2 - p.Before.Gen2}, JIT {p.After.JitMethods - p.Before.JitMethods} methods ({F(p.After.JitMilliseconds - p.Before.JitMilliseconds)} ms)");
        o.WriteLine($"  threads busy in pool chunks: {string.Join(", ", p.ThreadBusySeconds.Select((b, i) => $"w{i} {Pct(b / p.WallSeconds)}"))}");
    }

    private static Table OpTable(List<ProfileRow> rows, string first)
    {
        var t = new Table().Border(TableBorder.Rounded).AddColumn(first);
        foreach (var h in new[] { "calls", "total ms", "µs/call", "% phase", "weights MB", "GB/s", "% BW", "GMAC/s", "% MAC peak", "bound" })
            t.AddColumn(new TableColumn(h).RightAligned());
        foreach (var r in rows)
            t.AddRow(r.Name, r.Calls > 0 ? r.Calls.ToString(CultureInfo.InvariantCulture) : "-", Ms(r.Seconds), r.Calls > 0 ? F(r.MicrosPerCall) : "-", Pct(r.Share),
                r.Bytes > 0 ? F(r.Bytes / 1e6) : "-", r.GBps is { } g ? F(g) : "-", Pct(r.BandwidthShare), r.Gmacs is { } m ? F(m) : "-", Pct(r.MacShare), r.Bound);
        return t;
    }

    private static void WriteJson(TextWriter output, string name, ProfileReport r, string? tracePath, long? traceBytes, string weightPages, string headType, string weightPagesKind)
    {
        object Phase(PhaseProfile p, double peak) => new
        {
            tokens = p.Tokens,
            wall_seconds = p.WallSeconds,
            tokens_per_second = p.Tokens / p.WallSeconds,
            peak_gmacs = peak,
            ops = ProfileRow.ByOp(p, r.BandwidthGBps, peak).Select(Row),
            layers = ProfileRow.ByLayer(p, r.BandwidthGBps, peak).Select(Row),
            cells = ProfileRow.Cells(p, r.BandwidthGBps, peak).Select(Row),
            counters = Enum.GetValues<PerfEvent>().Where(e => p.Counters[e] is not null).ToDictionary(PerfCounters.Name, e => p.Counters[e]),
            ipc = p.Counters.Ipc,
            cache_miss_rate = p.Counters.CacheMissRate,
            allocated_bytes = p.AllocatedBytes,
            allocated_bytes_per_token = (double)p.AllocatedBytes / p.Tokens,
            gc_collections = new[] { p.After.Gen0 - p.Before.Gen0, p.After.Gen1 - p.Before.Gen1, p.After.Gen2 - p.Before.Gen2 },
            jit_methods_compiled = p.After.JitMethods - p.Before.JitMethods,
            jit_milliseconds = p.After.JitMilliseconds - p.Before.JitMilliseconds,
            thread_busy_seconds = p.ThreadBusySeconds,
        };
        object Row(ProfileRow x) => new
        {
            name = x.Name,
            layer = x.Layer >= 0 ? x.Layer : (int?)null,
            calls = x.Calls,
            seconds = x.Seconds,
            micros_per_call = x.MicrosPerCall,
            share = x.Share,
            weight_bytes = x.Bytes,
            macs = x.Macs,
            gbps = x.GBps,
            bandwidth_share = x.BandwidthShare,
            gmacs = x.Gmacs,
            mac_peak_share = x.MacShare,
            bound = x.Bound,
        };
        var lat = r.DecodeLatency;
        var doc = new
        {
            model = name,
            architecture = r.Config.Architecture,
            kernel = r.Kernel,
            // The settings the text report shows, so a JSON run says what it measured.
            head_type = headType,
            // As bench's: the attention rows depend on it (an int8 profile could not be told from an f16 one).
            kv_type = r.KvType.Name(),
            // As bench's JSON: "huge" or "file", and the description beside it (profile put the description in
            // weight_pages, so one field meant two things across the two commands).
            weight_pages = weightPagesKind,
            weights_in_memory = weightPages,
            threads = r.Threads,
            sequences = r.Sequences,
            bandwidth_gbps = r.BandwidthGBps,
            ttft_seconds = r.TtftSeconds,
            kernel_unpack_share = r.KernelUnpackShares.Select(u => new { cols = u.Cols, tokens = u.Tokens, share = u.Share }),
            decode_latency = new { p50 = lat.P50, p95 = lat.P95, p99 = lat.P99, mean = lat.Mean, stddev = lat.StdDev, min = lat.Min, max = lat.Max },
            hardware_counters_unavailable = r.HardwareCountersUnavailable,
            software_counters_unavailable = r.SoftwareCountersUnavailable,
            peak_rss_bytes = r.PeakRssBytes,
            weights_mapped_resident_bytes = r.Decode.After.MappedFileBytes,
            anonymous_bytes = r.Decode.After.AnonymousBytes,
            prefill = Phase(r.Prefill, r.PeakGmacPrefill),
            decode = Phase(r.Decode, r.PeakGmacDecode),
            ab = r.AbOffTokensPerSecond is null ? null : new { off_tokens_per_second = r.AbOffTokensPerSecond, on_tokens_per_second = r.AbOnTokensPerSecond },
            trace = tracePath,
            trace_bytes = traceBytes,
            dropped_spans = r.Spans.Dropped,
            dropped_chunks = r.Chunks.Dropped,
        };
        output.WriteLine(JsonSerializer.Serialize(doc, new JsonSerializerOptions { WriteIndented = true }));
    }
}
