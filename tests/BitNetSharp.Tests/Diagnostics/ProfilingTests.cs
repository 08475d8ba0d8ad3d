using System.Diagnostics;
using System.Diagnostics.Tracing;
using System.Text.Json;
using BitNetSharp.Cli;
using BitNetSharp.Diagnostics.Profiling;
using BitNetSharp.Model;
using BitNetSharp.Tests.Formats;
using BitNetSharp.Threading;

namespace BitNetSharp.Tests.Diagnostics;

/// <summary>The profiler: perf counters, the op timer and its trace, the EventSource, and <c>bitnet profile</c>'s options.</summary>
public class ProfilingTests
{
    private static (int ExitCode, string Output, string Error) Bitnet(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Program.Run(args, output, error);
        return (code, output.ToString(), error.ToString());
    }

    private static ModelWeights TinyWeights(TestGguf.TempDirectory dir)
    {
        string path = dir.File("tiny.gguf");
        SyntheticModel.Build(SyntheticShape.Tiny, 3).WriteFile(path);
        return ModelWeights.Load(path);
    }

    /// <summary>
    /// One rule names every row's bound: the larger share from 25 % of its limit. A row with both shares was labelled at
    /// any size ("compute" at 2 % of the MAC peak), one with a single share only from 50 % (an F16 head at 31 % of the
    /// bandwidth read "-").
    /// </summary>
    [Theory]
    [InlineData(0.31, null, "memory")]
    [InlineData(0.02, 0.03, "-")]
    [InlineData(0.02, 0.38, "compute")]
    [InlineData(0.40, 0.38, "memory")]
    [InlineData(null, 0.24, "-")]
    [InlineData(null, 0.25, "compute")]
    [InlineData(1.2, 0.9, "cache")]
    [InlineData(null, null, "-")]
    public void TheBoundIsTheLargerShareOnceItIsNear(double? bandwidthShare, double? macShare, string bound) =>
        Assert.Equal(bound, new ProfileRow("x", -1, 1, 1e-3, 0.1, 1, 1, null, bandwidthShare, null, macShare).Bound);

    /// <summary>
    /// A user without CAP_PERFMON under perf_event_paranoid 2 (most distributions' default) still gets task-clock and the
    /// fault counts, counted in user mode (all software events were refused, with advice to set the value it already had).
    /// Runs where that is the situation: `setpriv --reuid=65534 ... dotnet test` as root shows it.
    /// </summary>
    [Fact]
    public void SoftwareCountersWorkForAnUnprivilegedUserUnderParanoid2()
    {
        string paranoid = File.Exists("/proc/sys/kernel/perf_event_paranoid") ? File.ReadAllText("/proc/sys/kernel/perf_event_paranoid").Trim() : "";
        Assert.SkipUnless(OperatingSystem.IsLinux() && paranoid == "2" && !Environment.IsPrivilegedProcess,
            $"needs a non-root user and kernel.perf_event_paranoid 2 (here: {(Environment.IsPrivilegedProcess ? "root" : "not root")}, paranoid '{paranoid}')");
        using var counters = PerfCounters.Open();
        Assert.True(counters.IsAvailable(PerfEvent.TaskClock), counters.SoftwareUnavailableReason);
        Assert.False(counters.IsAvailable(PerfEvent.ContextSwitches)); // kernel-mode only: unavailable, not a false 0
    }

    /// <summary>A model loaded through a link (as Hugging Face hub snapshots are) has its resident mapped bytes found: smaps names the real file.</summary>
    [Fact]
    public void MappedResidentBytesAreFoundThroughALink()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "/proc/self/smaps is Linux's");
        using var dir = new TestGguf.TempDirectory();
        string real = dir.File("blob-0123");
        SyntheticModel.Build(SyntheticShape.Tiny, 3).WriteFile(real);
        string link = dir.File("model.gguf");
        File.CreateSymbolicLink(link, real);
        using var w = ModelWeights.Load(link);
        _ = w.Layers[0].Q.RowScales[0];
        var memory = ProcessMemory.Read(link);
        Assert.NotNull(memory.MappedFileBytes);
        Assert.Null(ProcessMemory.Read(dir.File("lob-0123")).MappedFileBytes); // a suffix of the real name is not the file
    }

    /// <summary>A model in a directory reached through a link (models -> /data/models): smaps names the real path, and
    /// only the last component's link was resolved, so the resident size read "-".</summary>
    [Fact]
    public void MappedResidentBytesAreFoundThroughALinkedDirectory()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "/proc/self/smaps is Linux's");
        using var dir = new TestGguf.TempDirectory();
        Directory.CreateDirectory(dir.File("real"));
        SyntheticModel.Build(SyntheticShape.Tiny, 3).WriteFile(Path.Combine(dir.File("real"), "m.gguf"));
        Directory.CreateSymbolicLink(dir.File("alias"), dir.File("real"));
        File.CreateSymbolicLink(dir.File("again.gguf"), Path.Combine("alias", "m.gguf")); // a relative link through the linked directory
        foreach (string path in new[] { Path.Combine(dir.File("alias"), "m.gguf"), dir.File("again.gguf") })
        {
            using var w = ModelWeights.Load(path);
            _ = w.Layers[0].Q.RowScales[0];
            Assert.True(ProcessMemory.Read(path).MappedFileBytes is not null, path);
        }
    }

    /// <summary>EACCES under paranoid 3 or 4 (Debian's, Ubuntu's) is that setting, not paranoid 2's user-mode-only limit.</summary>
    [Fact]
    public void PerfRefusalNamesTheParanoidSettingInForce()
    {
        Assert.Contains("paranoid is 3", PerfCounters.Describe(13, 3));
        Assert.DoesNotContain("which this event cannot do", PerfCounters.Describe(13, 4));
        Assert.Contains("user-mode counting only", PerfCounters.Describe(13, 2));
        Assert.Contains("user-mode counting only", PerfCounters.Describe(13, null));
    }

    [Fact]
    public void SoftwareCountersCountBusyWorkAndHardwareCountersReadOrSayWhy()
    {
        if (!OperatingSystem.IsLinux())
        {
            using var none = PerfCounters.Open();
            Assert.NotNull(none.SoftwareUnavailableReason);
            Assert.NotNull(none.HardwareUnavailableReason);
            return;
        }
        using var counters = PerfCounters.Open();
        Assert.Null(counters.SoftwareUnavailableReason);
        var before = counters.Read();
        var sw = Stopwatch.StartNew();
        double x = 1;
        // Busy until the counter shows 50 ms of CPU or 10 s have passed: 50 ms of wall time was not 20 ms of CPU for this
        // process when parallel tests' child processes held both cores.
        while (sw.ElapsedMilliseconds < 10_000 && !(counters.Read().Minus(before)[PerfEvent.TaskClock] > 50_000_000))
            for (int i = 0; i < 100_000; i++) x = Math.Sqrt(x + 1);
        // Fresh pages: a managed array may reuse heap pages an earlier test touched, and malloc may reuse freed memory
        // below its mmap threshold (at most 32 MiB on 64-bit glibc); 64 MiB is always a new mapping, so touching it faults.
        const int bytes = 64 << 20;
        unsafe
        {
            byte* buffer = (byte*)System.Runtime.InteropServices.NativeMemory.Alloc(bytes);
            try
            {
                for (int i = 0; i < bytes; i += 4096) buffer[i] = (byte)x;
            }
            finally
            {
                System.Runtime.InteropServices.NativeMemory.Free(buffer);
            }
        }
        var d = counters.Read().Minus(before);
        Assert.True(d[PerfEvent.TaskClock] > 20_000_000, $"task-clock {d[PerfEvent.TaskClock]} ns after {sw.ElapsedMilliseconds} ms of work");
        Assert.True(d[PerfEvent.PageFaults] > 0, "touching 64 MiB of new memory caused no page fault");
        Assert.NotNull(d[PerfEvent.ContextSwitches]);
        if (counters.HardwareUnavailableReason is { } why)
        {
            Assert.Contains("perf_event_open", why);
            Assert.Null(d[PerfEvent.Cycles]);
            Assert.Null(d.Ipc);
        }
        else
        {
            Assert.True(d[PerfEvent.Instructions] > 0);
        }
    }

    [Fact]
    public void ProcessSnapshotsCountWhatTheJitCompiles()
    {
        var before = ProcessMemory.Read();
        // A method that did not exist before: compiling it must show in the next snapshot.
        var method = new System.Reflection.Emit.DynamicMethod("fresh" + Guid.NewGuid().ToString("N"), typeof(int), [typeof(int)]);
        var il = method.GetILGenerator();
        il.Emit(System.Reflection.Emit.OpCodes.Ldarg_0);
        il.Emit(System.Reflection.Emit.OpCodes.Ldc_I4_3);
        il.Emit(System.Reflection.Emit.OpCodes.Mul);
        il.Emit(System.Reflection.Emit.OpCodes.Ret);
        Assert.Equal(21, ((Func<int, int>)method.CreateDelegate(typeof(Func<int, int>)))(7));
        var after = ProcessMemory.Read();
        Assert.True(after.JitMethods > before.JitMethods, $"{before.JitMethods} -> {after.JitMethods}");
        Assert.True(after.JitMilliseconds >= before.JitMilliseconds);
    }

    [Fact]
    public void JitSettleWaitsForAQuietSpellOrGivesUpAtItsLimit()
    {
        // Quiet wanted for 0.1 s: it cannot return sooner, nor much after its limit (parallel test classes compile
        // all the time, so the quiet spell may never come: then it returns at the limit).
        var watch = Stopwatch.StartNew();
        JitQuiet.Settle(quietSeconds: 0.1, maxSeconds: 2);
        Assert.InRange(watch.Elapsed.TotalSeconds, 0.1, 10);
        // A quiet spell longer than the limit: it gives up at the limit and says so.
        watch.Restart();
        Assert.False(JitQuiet.Settle(quietSeconds: 30, maxSeconds: 0.2));
        Assert.InRange(watch.Elapsed.TotalSeconds, 0.2, 10);
    }

    [Fact]
    public void LatencyQuantilesAreNearestRank()
    {
        var v = Enumerable.Range(1, 100).Select(i => (double)i).Reverse().ToArray();
        var s = LatencySummary.Of(v);
        Assert.Equal(50, s.P50);
        Assert.Equal(95, s.P95);
        Assert.Equal(99, s.P99);
        Assert.Equal(50.5, s.Mean, 9);
        Assert.Equal(Math.Sqrt(100 * 101 / 12.0), s.StdDev, 6);
    }

    /// <summary>
    /// With the lookup kernel, decode reads its repacked layout (2 bytes per 9 weights), and the profiler's bytes and
    /// bench's bound count that: they counted the 2-bit file layout, about 12 % more, so GB/s, "% of bound" and the
    /// memory/cache label read high.
    /// </summary>
    [Fact]
    public void BytesFollowTheLayoutTheKernelReads()
    {
        var lut = new BitNetSharp.Kernels.LutTernaryKernel();
        if (!lut.IsSupported) Assert.Skip("this CPU cannot run the lookup kernel (AVX-512 BW)");
        using var dir = new TestGguf.TempDirectory();
        using var w = TinyWeights(dir);
        using var pool = new WorkerPool(1);
        using var engine = new Transformer(w, 4, pool, lut);
        var c = w.Config;
        var stats = new OpStats(c.Layers);
        engine.Profiler = new OpProfiler(c.Layers, pool.ThreadCount) { Stats = stats };
        using var cache = new KvCache(c.Layers, c.KvHeads, c.HeadDim, 8);
        engine.Forward([new BatchToken(5, 0, 0, true)], [cache], new float[c.VocabSize]);
        var q = w.Layers[0].Q;
        long layout = BitNetSharp.Kernels.LutTernaryKernel.Layout(q).ByteLength;
        Assert.True(layout < q.ByteLength);
        Assert.Equal(layout, stats.Bytes[OpStats.Index(ProfileOp.Q, 0)]);
        Assert.Equal(q.ByteLength, lut.BytesRead(q, 64)); // prefill on the int8 tiles reads the packed matrix
        Assert.True(BitNetSharp.Diagnostics.ThroughputBenchmark.BytesPerToken(w, lut) < BitNetSharp.Diagnostics.ThroughputBenchmark.BytesPerToken(w));
        // A step of 8 sequences multiplies 8 tokens: past a few, the lookup kernel reads the packed matrices (bench's
        // bound counted its own layout for every sequence count).
        Assert.Equal(BitNetSharp.Diagnostics.ThroughputBenchmark.BytesPerToken(w), BitNetSharp.Diagnostics.ThroughputBenchmark.BytesPerToken(w, lut, tokens: 8));
    }

    [Fact]
    public void ProfilerDoesNotChangeLogitsAndTimesEveryProjection()
    {
        using var dir = new TestGguf.TempDirectory();
        using var w = TinyWeights(dir);
        using var pool = new WorkerPool(2);
        using var engine = new Transformer(w, 4, pool);
        var c = w.Config;
        var batch = new[] { new BatchToken(5, 0, 0), new BatchToken(9, 0, 1), new BatchToken(2, 0, 2, true) };
        float[] Run()
        {
            using var cache = new KvCache(c.Layers, c.KvHeads, c.HeadDim, 8);
            var logits = new float[c.VocabSize];
            engine.Forward(batch, [cache], logits);
            return logits;
        }
        var plain = Run();
        var stats = new OpStats(c.Layers);
        engine.Profiler = new OpProfiler(c.Layers, pool.ThreadCount) { Stats = stats };
        var profiled = Run();
        engine.Profiler = null;
        Assert.Equal(plain, profiled);
        foreach (var op in new[] { ProfileOp.Q, ProfileOp.K, ProfileOp.V, ProfileOp.O, ProfileOp.Gate, ProfileOp.Up, ProfileOp.Down, ProfileOp.Attention, ProfileOp.Norm, ProfileOp.Quantize, ProfileOp.Rope })
            for (int l = 0; l < c.Layers; l++)
                Assert.True(stats.Calls[OpStats.Index(op, l)] > 0, $"{op} of layer {l} was not timed");
        var q = OpStats.Index(ProfileOp.Q, 0);
        Assert.Equal(engine.Kernel.BytesRead(w.Layers[0].Q, 3), stats.Bytes[q]);
        Assert.Equal((long)c.QDim * c.Dim * 3, stats.Macs[q]);
        Assert.Equal(1, stats.Calls[OpStats.Index(ProfileOp.Head, -1)]);
        Assert.Throws<ArgumentException>(() => engine.Profiler = new OpProfiler(c.Layers + 1, 2));
    }

    /// <summary>A kernel whose activation layout takes 2 ms (as the lookup kernel's table build takes time), products by the reference.</summary>
    private sealed unsafe class SlowPrepareKernel : BitNetSharp.Kernels.TernaryKernel
    {
        private readonly BitNetSharp.Kernels.ReferenceTernaryKernel _reference = new();
        public override string Name => "slow-prepare";
        public override bool IsSupported => true;

        public override BitNetSharp.Kernels.ActivationRows Prepare(BitNetSharp.Quantization.QuantizedActivations x, ref BitNetSharp.Memory.NativeBuffer? scratch)
        {
            long end = Stopwatch.GetTimestamp() + Stopwatch.Frequency / 500;
            while (Stopwatch.GetTimestamp() < end) { }
            return base.Prepare(x, ref scratch);
        }

        protected override void MatMulCore(BitNetSharp.Quantization.TernaryMatrix w, in BitNetSharp.Kernels.ActivationRows x, float* y, int yStride, int rowStart, int rowEnd) =>
            _reference.MatMul(w, x, y, yStride, rowStart, rowEnd);
    }

    /// <summary>
    /// Every product's time includes laying out its input: q+k+v's and gate+up's layout ran outside every op (only o and
    /// down, whose product prepares its own, carried theirs), so a kernel with a costly layout made them read faster than
    /// o and down. And the norm row counts a sub-norm only where a layer has one: a model without them read four norm
    /// calls a layer for two norms.
    /// </summary>
    [Fact]
    public void ProductsIncludeTheirInputsLayoutAndNormsCountOnlyNormsThatRan()
    {
        using var dir = new TestGguf.TempDirectory();
        string path = dir.File("plain.gguf");
        SyntheticModel.Build(SyntheticShape.Tiny, 3, subNorms: false, architecture: "bitnet").WriteFile(path);
        using var w = ModelWeights.Load(path);
        using var pool = new WorkerPool(1);
        using var engine = new Transformer(w, 4, pool, new SlowPrepareKernel());
        var c = w.Config;
        var stats = new OpStats(c.Layers);
        engine.Profiler = new OpProfiler(c.Layers, pool.ThreadCount) { Stats = stats };
        using (var cache = new KvCache(c.Layers, c.KvHeads, c.HeadDim, 8))
            engine.Forward([new BatchToken(5, 0, 0, true)], [cache], new float[c.VocabSize]);
        engine.Profiler = null;
        long layout = Stopwatch.Frequency / 500;
        for (int l = 0; l < c.Layers; l++)
        {
            Assert.Equal(2, stats.Calls[OpStats.Index(ProfileOp.Norm, l)]);
            long qkv = stats.Ticks[OpStats.Index(ProfileOp.Q, l)] + stats.Ticks[OpStats.Index(ProfileOp.K, l)] + stats.Ticks[OpStats.Index(ProfileOp.V, l)];
            long gateUp = stats.Ticks[OpStats.Index(ProfileOp.Gate, l)] + stats.Ticks[OpStats.Index(ProfileOp.Up, l)];
            Assert.True(qkv >= layout, $"layer {l}: q+k+v took {qkv} ticks, less than its input's layout ({layout})");
            Assert.True(gateUp >= layout, $"layer {l}: gate+up took {gateUp} ticks, less than its input's layout ({layout})");
            Assert.True(stats.Ticks[OpStats.Index(ProfileOp.O, l)] >= layout);
        }
    }

    /// <summary>
    /// The trace streams to its file as it is written: unflushed, the JSON writer held the whole document in one growing
    /// array (gigabytes for a long profile, and a crash near 2 GB that took the report with it).
    /// </summary>
    [Fact]
    public void TheTraceStreamsToItsFile()
    {
        using var dir = new TestGguf.TempDirectory();
        using var w = TinyWeights(dir);
        using var pool = new WorkerPool(2);
        var report = ProfileSession.Run(w, pool, new ProfileOptions
        {
            Prompt = [1, 2, 3, 4, 5, 6, 7, 8], DecodeSteps = 96, BandwidthProbeBytes = 16 << 20, PeakSeconds = 0.02,
        });
        // A full span log drops what follows and says so (in the trace here; the CLI warns and its JSON counts them).
        while (report.Spans.Dropped < 3) report.Spans.Add(report.Spans.Spans[0]);
        var stream = new WriteRecordingStream();
        ChromeTraceWriter.Write(stream, report);
        Assert.True(stream.Length > 256 << 10, $"a trace of {stream.Length} bytes shows nothing");
        Assert.True(stream.LargestWrite < 96 << 10, $"one write of {stream.LargestWrite} bytes: the trace was buffered whole");
        using var doc = JsonDocument.Parse(stream.ToArray());
        Assert.True(doc.RootElement.GetProperty("traceEvents").GetArrayLength() > 1000);
        Assert.Equal(3, doc.RootElement.GetProperty("otherData").GetProperty("dropped_spans").GetInt64());
    }

    private sealed class WriteRecordingStream : MemoryStream
    {
        public long LargestWrite;

        public override void Write(byte[] buffer, int offset, int count)
        {
            LargestWrite = Math.Max(LargestWrite, count);
            base.Write(buffer, offset, count);
        }

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            LargestWrite = Math.Max(LargestWrite, buffer.Length);
            base.Write(buffer);
        }
    }

    /// <summary>
    /// The lookup kernel's spans name the layout their products read: its repacked indices at decode, the packed 2-bit
    /// matrix for prefill (every span named the repacked layout).
    /// </summary>
    [Fact]
    public void LookupKernelTraceNamesTheLayoutEachSpanRead()
    {
        var lut = new BitNetSharp.Kernels.LutTernaryKernel();
        Assert.SkipUnless(lut.IsSupported, "the lookup kernel needs AVX-512BW");
        using var dir = new TestGguf.TempDirectory();
        using var w = TinyWeights(dir);
        using var pool = new WorkerPool(1);
        var report = ProfileSession.Run(w, pool, new ProfileOptions
        {
            Prompt = [1, 2, 3, 4, 5, 6, 7, 8], DecodeSteps = 2, BandwidthProbeBytes = 16 << 20, PeakSeconds = 0.02, AbRepetitions = 1, Kernel = lut,
        });
        var ms = new MemoryStream();
        ChromeTraceWriter.Write(ms, report);
        using var doc = JsonDocument.Parse(ms.ToArray());
        var layouts = doc.RootElement.GetProperty("traceEvents").EnumerateArray()
            .Where(e => e.GetProperty("ph").GetString() == "X" && e.GetProperty("name").GetString() == "L0 q")
            .Select(e => (Tokens: e.GetProperty("args").GetProperty("tokens").GetInt32(), Layout: e.GetProperty("args").GetProperty("packed_layout").GetString()!))
            .ToList();
        Assert.Contains(layouts, l => l.Tokens == 8 && l.Layout.Contains("2-bit", StringComparison.Ordinal));
        Assert.Contains(layouts, l => l.Tokens == 1 && l.Layout.Contains("5-bit", StringComparison.Ordinal));
    }

    /// <summary>
    /// The MAC ceiling is taken over every projection input width, the feed-forward one included: measured at the model
    /// width alone, the wider down projection ran at 131 % of "peak" (found by a runtime sweep).
    /// </summary>
    [Fact]
    public void TheCeilingCoversEveryProjectionWidth()
    {
        using var dir = new TestGguf.TempDirectory();
        using var w = TinyWeights(dir);
        var c = w.Config;
        Assert.Equal(new[] { c.Dim, c.QDim, c.FeedForward }.Distinct().Order(), KernelPeak.ProjectionWidths(c));
        Assert.Contains(c.FeedForward, KernelPeak.ProjectionWidths(c));
        var shape = new BitNetSharp.Training.TrainingShape(300, 64, 1, 2, 1, 1024, 32, 10000f).ToModelConfig();
        Assert.Equal([64, 1024], KernelPeak.ProjectionWidths(shape));
    }

    [Fact]
    public void SessionTraceIsValidChromeJsonWithNestedSpansPerThread()
    {
        using var dir = new TestGguf.TempDirectory();
        using var w = TinyWeights(dir);
        using var pool = new WorkerPool(2);
        var report = ProfileSession.Run(w, pool, new ProfileOptions
        {
            Prompt = [1, 2, 3, 4, 5, 6, 7, 8], DecodeSteps = 4, BandwidthProbeBytes = 16 << 20, PeakSeconds = 0.02, AbRepetitions = 1,
        });
        Assert.Equal(8, report.Prefill.Stats.Tokens);
        Assert.Equal(4, report.Decode.Stats.Steps);
        Assert.True(report.BandwidthGBps > 0 && report.PeakGmacDecode > 0 && report.PeakGmacPrefill > 0);
        Assert.Equal(4, report.DecodeLatency.Count);
        Assert.True(report.TtftSeconds > 0);
        Assert.Equal(0, report.Spans.Dropped);
        Assert.Equal(0, report.Chunks.Dropped);
        Assert.True(report.AbOffTokensPerSecond![0] > 0 && report.AbOnTokensPerSecond![0] > 0);
        var rows = ProfileRow.ByOp(report.Decode, report.BandwidthGBps, report.PeakGmacDecode);
        // Both shares measured (the label they give, which may be "-" on a fast host, is TheBoundIsTheLargerShareOnceItIsNear's).
        Assert.Contains(rows, r => r.Name == "down" && r.GBps > 0 && r.BandwidthShare > 0 && r.MacShare > 0);
        Assert.InRange(rows.Sum(r => r.Share), 0.999, 1.001);

        var ms = new MemoryStream();
        ChromeTraceWriter.Write(ms, report);
        using var doc = JsonDocument.Parse(ms.ToArray());
        var events = doc.RootElement.GetProperty("traceEvents").EnumerateArray().ToList();
        var named = events.Where(e => e.GetProperty("ph").GetString() == "M" && e.GetProperty("name").GetString() == "thread_name")
            .Select(e => e.GetProperty("tid").GetInt32()).ToHashSet();
        var spans = events.Where(e => e.GetProperty("ph").GetString() == "X").ToList();
        Assert.NotEmpty(spans);
        var byThread = spans.GroupBy(e => e.GetProperty("tid").GetInt32()).ToList();
        Assert.Equal([0, 1], named.Order());
        // Which thread takes which chunk varies (a descheduled worker may get none on a loaded machine), so worker 1's
        // track is only checked when it has spans; ChunkTimelineRecordsEachWorkersSlice covers both workers for certain.
        Assert.Contains(byThread, g => g.Key == 0);
        foreach (var track in byThread)
        {
            Assert.Contains(track.Key, named);
            // Properly nested: sorted by start (longer first on ties), every span ends inside the span that encloses it.
            var stack = new Stack<double>();
            foreach (var (ts, end) in track.Select(e => (e.GetProperty("ts").GetDouble(), e.GetProperty("ts").GetDouble() + e.GetProperty("dur").GetDouble()))
                         .OrderBy(s => s.Item1).ThenByDescending(s => s.Item2))
            {
                while (stack.Count > 0 && stack.Peek() <= ts + 1e-3) stack.Pop();
                if (stack.Count > 0) Assert.True(end <= stack.Peek() + 1e-3, $"span [{ts}, {end}] crosses the end of its parent at {stack.Peek()}");
                stack.Push(end);
            }
        }
        var q = spans.First(e => e.GetProperty("name").GetString() == "L1 q");
        var args = q.GetProperty("args");
        Assert.Equal(1, args.GetProperty("layer").GetInt32());
        Assert.Equal("q", args.GetProperty("projection").GetString());
        Assert.Equal($"{w.Config.Dim}→{w.Config.QDim}", args.GetProperty("shape").GetString());
        Assert.Equal(8, args.GetProperty("tokens").GetInt32());
        Assert.Contains("ternary", args.GetProperty("packed_layout").GetString());
        Assert.Contains(spans, e => e.GetProperty("name").GetString() == "decode" && e.GetProperty("tid").GetInt32() == 0);
        Assert.Contains(spans, e => e.GetProperty("tid").GetInt32() == 0 && e.GetProperty("name").GetString()!.EndsWith(" chunk", StringComparison.Ordinal));
        // Every chunk is the profiled work's: the bandwidth probe after decode recorded its own pool runs as "sampling chunk" bars.
        var decode = spans.First(e => e.GetProperty("name").GetString() == "decode" && e.GetProperty("tid").GetInt32() == 0);
        double decodeEnd = decode.GetProperty("ts").GetDouble() + decode.GetProperty("dur").GetDouble();
        Assert.All(spans.Where(e => e.GetProperty("name").GetString()!.EndsWith(" chunk", StringComparison.Ordinal)),
            e => Assert.True(e.GetProperty("ts").GetDouble() <= decodeEnd + 1e-3, $"{e.GetProperty("name").GetString()} at {e.GetProperty("ts").GetDouble()} starts after decode ended at {decodeEnd}"));
    }

    [Fact]
    public void SessionWithSequencesDecodesOneTokenOfEachPerStep()
    {
        using var dir = new TestGguf.TempDirectory();
        using var w = TinyWeights(dir);
        using var pool = new WorkerPool(2);
        var c = w.Config;
        var report = ProfileSession.Run(w, pool, new ProfileOptions
        {
            Prompt = [1, 2, 3, 4], DecodeSteps = 3, Sequences = 3, BandwidthProbeBytes = 16 << 20, PeakSeconds = 0.02,
        });
        Assert.Equal(3, report.Sequences);
        Assert.Equal(12, report.Prefill.Tokens); // three prompts in one prefill batch
        Assert.Equal(12, report.Prefill.Stats.Tokens);
        Assert.Equal(9, report.Decode.Tokens); // three steps of three tokens
        Assert.Equal(9, report.Decode.Stats.Tokens);
        Assert.Equal(3, report.Decode.Stats.Steps);
        Assert.Equal(3, report.DecodeLatency.Count);
        // Each step is one forward pass of three tokens: one q product per layer and step, three tokens' multiply-adds each.
        var q = OpStats.Index(ProfileOp.Q, 0);
        Assert.Equal(3, report.Decode.Stats.Calls[q]);
        Assert.Equal((long)c.QDim * c.Dim * 9, report.Decode.Stats.Macs[q]);
        Assert.Equal(9, report.Decode.Stats.Calls[OpStats.Index(ProfileOp.Sampling, -1)]); // one sample per sequence and step
        Assert.Throws<ArgumentException>(() => ProfileSession.Run(w, pool, new ProfileOptions { Prompt = [1], DecodeSteps = 1, Sequences = 0 }));
    }

    private sealed class Spin : IParallelWork
    {
        public void Execute(int start, int end, int worker)
        {
            var sw = Stopwatch.StartNew();
            while (sw.Elapsed.TotalMilliseconds < 1) Thread.SpinWait(10);
        }
    }

    [Fact]
    public void ChunkTimelineRecordsEachWorkersSlice()
    {
        using var pool = new WorkerPool(2);
        var timeline = new ChunkTimeline(2, 4) { Tag = 7 };
        pool.Timeline = timeline;
        pool.Run(new Spin(), 10); // static slices: worker 0 gets [0, 5), worker 1 [5, 10)
        pool.Run(new Spin(), 10);
        pool.Run(new Spin(), 10);
        pool.Timeline = null;
        pool.Run(new Spin(), 10); // not recorded
        for (int w = 0; w < 2; w++)
        {
            var spans = timeline.Spans(w).ToArray();
            Assert.Equal(3, spans.Length);
            Assert.All(spans, s => Assert.Equal((w * 5, w * 5 + 5, 7), (s.ItemStart, s.ItemEnd, s.Tag)));
            Assert.All(spans, s => Assert.True(s.End - s.Start >= Stopwatch.Frequency / 2000, "a chunk of 1 ms of work lasted less than 0.5 ms"));
        }
        var full = new ChunkTimeline(2, 1);
        pool.Timeline = full;
        pool.Run(new Spin(), 10);
        pool.Run(new Spin(), 10);
        pool.Timeline = null;
        Assert.Equal(2, full.Dropped);
    }

    /// <summary>
    /// The unpack-only variant unpacks what the kernel does: 4-token tiles with the kernel's split, leftover tokens two
    /// at a time with decode's one-shift split, and the odd last block at 256 bits (it was skipped: at the tiny model's
    /// width of one block the variant did nothing, and its share read about 0).
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(4)]
    public unsafe void UnpackOnlyKernelFoldsEveryCodeAndSharesAreFractions(int tokens)
    {
        Assert.Equal((0, 1), UnpackOnlyKernel<BitNetSharp.Kernels.ShiftSplit>.Passes(1));
        Assert.Equal((0, 1), UnpackOnlyKernel<BitNetSharp.Kernels.ShiftSplit>.Passes(2));
        Assert.Equal((0, 2), UnpackOnlyKernel<BitNetSharp.Kernels.ShiftSplit>.Passes(3));
        Assert.Equal((1, 0), UnpackOnlyKernel<BitNetSharp.Kernels.ShiftSplit>.Passes(4));
        Assert.Equal((1, 2), UnpackOnlyKernel<BitNetSharp.Kernels.ShiftSplit>.Passes(7));
        using var pool = new WorkerPool(1);
        static byte Tile(byte b) => (byte)((b >> 6 & 3) ^ (b >> 4 & 3) ^ (b >> 2 & 3) ^ (b & 3));
        static byte Shift(byte b) => (byte)((b >> 4 & 15) ^ (b & 15));
        foreach (var name in new[] { "avx512", "avx512gfni" })
        {
            var real = BitNetSharp.Kernels.KernelRegistry.AllTernary.FirstOrDefault(k => k.Name == name);
            if (real is not { IsSupported: true }) continue;
            var unpack = KernelPeak.UnpackOnly(real)!;
            foreach (int cols in new[] { 128, 384, 512 })
            {
                const int rows = 3;
                using var w = BitNetSharp.Quantization.TernaryMatrix.Allocate(rows, cols);
                var rng = new Random(2);
                for (int r = 0; r < rows; r++)
                    for (int c = 0; c < cols; c++) w.Set(r, c, rng.Next(3) - 1);
                using var x = new BitNetSharp.Quantization.QuantizedActivations(tokens, cols) { Tokens = tokens };
                var y = new float[tokens * rows];
                fixed (float* py = y) unpack.MatMul(w, x, py, rows, 0, rows);
                int blocks = w.PaddedCols / 128;
                for (int r = 0; r < rows; r++)
                {
                    var acc = new byte[64];
                    byte* row = w.Row(r);
                    for (int p = 0; p < blocks / 2; p++)
                        for (int i = 0; i < 64; i++)
                        {
                            byte b = row[p * 64 + i];
                            acc[i] ^= tokens == 4 ? Tile(b) : Shift(b);
                        }
                    if (blocks % 2 == 1)
                        for (int i = 0; i < 32; i++) acc[i] ^= Shift(row[(blocks - 1) * 32 + i]);
                    Assert.True(BitConverter.ToInt32(acc) == BitConverter.SingleToInt32Bits(y[r]), $"{name}, {cols} columns, {tokens} tokens, row {r}");
                    Assert.NotEqual(0, BitConverter.ToInt32(acc));
                }
            }
            double? share = KernelPeak.UnpackShare(pool, real, 2560, tokens, 0.02);
            Assert.NotNull(share);
            Assert.InRange(share!.Value, 0.01, 1.0);
        }
    }

    [Fact]
    public void MlockLocksTheMappedFileOrNamesTheLimit()
    {
        using var dir = new TestGguf.TempDirectory();
        using var w = TinyWeights(dir);
        if (!OperatingSystem.IsLinux())
        {
            Assert.Throws<PlatformNotSupportedException>(() => BitNetSharp.Memory.WeightLock.Lock(w));
            return;
        }
        try
        {
            // The file's pages the model reads: all but the projections decoded into buffers of their own at load
            // (the tiny shape's rows are not I2_S-aligned), whose file bytes were released.
            long live = w.Gguf!.Mapping.LiveRanges().Sum(r => r.End - r.Start);
            Assert.True(live < new FileInfo(dir.File("tiny.gguf")).Length);
            Assert.Equal(live, BitNetSharp.Memory.WeightLock.Lock(w));
        }
        catch (InvalidOperationException e)
        {
            Assert.Contains("RLIMIT_MEMLOCK", e.Message);
        }
        // With the limit unlimited the refusal is memory, not the limit: the advice to raise it sent users after the wrong setting.
        Assert.Contains("Raise it", BitNetSharp.Memory.WeightLock.Message(1L << 30, 12, "64 KiB"));
        string unlimited = BitNetSharp.Memory.WeightLock.Message(1L << 30, 12, "unlimited");
        Assert.DoesNotContain("Raise it", unlimited);
        Assert.Contains("not enough free memory", unlimited);
    }

    /// <summary>
    /// --mlock after --head-type: the load re-encoded the tied F16 head and dropped its file pages; locking the whole map
    /// faulted them back in and pinned them for the life of the process (657 MB for 2B4T). Only the pages in use are locked.
    /// </summary>
    [Fact]
    public void MlockLeavesOutTheHeadPagesTheLoadReleased()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "mlock is Linux");
        using var dir = new TestGguf.TempDirectory();
        string path = dir.File("tiny256.gguf");
        SyntheticModel.Build(SyntheticShape.Tiny with { Name = "tiny256", Dim = 256 }, 3).WriteFile(path);
        using var w = ModelWeights.Load(path, new ModelLoadOptions { HeadType = BitNetSharp.Formats.Gguf.GgmlType.Q8_0 });
        long fileLength = new FileInfo(path).Length;
        long headBytes = (long)w.Config.VocabSize * w.Config.Dim * 2; // the stored F16 table
        long page = Environment.SystemPageSize;
        var live = w.Gguf!.Mapping.LiveRanges();
        long liveBytes = 0;
        foreach (var (start, end) in live) liveBytes += end - start;
        // The head's pages at least (besides them, projections decoded at load release theirs).
        Assert.InRange(fileLength - liveBytes, headBytes - 2 * page, fileLength);
        long headAt = w.Gguf.DataOffset + w.Gguf.GetTensor("token_embd.weight").Offset;
        foreach (var (start, end) in live) Assert.False(start < headAt + headBytes - page && end > headAt + page, "the head's pages are live");
        try
        {
            Assert.Equal(liveBytes, BitNetSharp.Memory.WeightLock.Lock(w));
        }
        catch (InvalidOperationException e)
        {
            Assert.Contains("RLIMIT_MEMLOCK", e.Message);
        }
    }

    private sealed class OpListener : EventListener
    {
        public int Starts, Stops;

        protected override void OnEventSourceCreated(EventSource source)
        {
            if (source.Name == "BitNetSharp-Profile") EnableEvents(source, EventLevel.Informational);
        }

        protected override void OnEventWritten(EventWrittenEventArgs e)
        {
            if (e.EventName == "OpStart") Interlocked.Increment(ref Starts);
            else if (e.EventName == "OpStop") Interlocked.Increment(ref Stops);
        }
    }

    [Fact]
    public void EventSourceEmitsOpSpansWithoutAProfilerAttached()
    {
        using var dir = new TestGguf.TempDirectory();
        using var w = TinyWeights(dir);
        using var pool = new WorkerPool(1);
        using var engine = new Transformer(w, 1, pool);
        var c = w.Config;
        using var cache = new KvCache(c.Layers, c.KvHeads, c.HeadDim, 4);
        var logits = new float[c.VocabSize];
        using var listener = new OpListener();
        engine.Forward([new BatchToken(3, 0, 0, true)], [cache], logits);
        // Other tests' engines may emit while the listener is on, so only a lower bound holds.
        Assert.True(listener.Starts >= c.Layers * 7, $"{listener.Starts} OpStart events for {c.Layers} layers");
        Assert.True(listener.Stops >= c.Layers * 7, $"{listener.Stops} OpStop events for {c.Layers} layers");
    }

    [Theory]
    [InlineData(new[] { "--synthetic", "huge" }, "--synthetic 'huge'")]
    [InlineData(new[] { "--synthetic", "tiny", "-n", "0" }, "--n-gen")]
    [InlineData(new[] { "--synthetic", "tiny", "--prompt-tokens", "0" }, "--prompt-tokens")]
    [InlineData(new[] { "--synthetic", "tiny", "-t", "0" }, "--threads")]
    [InlineData(new[] { "--synthetic", "tiny", "--ab", "-1" }, "--ab")]
    [InlineData(new[] { "--synthetic", "tiny", "--ab", "2147483647" }, "--ab must be from 0 to")] // OutOfMemoryException after the whole profile
    [InlineData(new[] { "--synthetic", "tiny", "--peak-ms", "2147483647" }, "--peak-ms must be from 1 to")]
    [InlineData(new[] { "--synthetic", "tiny", "-s", "0" }, "--sequences")]
    [InlineData(new[] { "--synthetic", "tiny", "--sequences", "257" }, "--sequences")]
    [InlineData(new[] { "--synthetic", "tiny", "--trace", "/nonexistent-folder/t.json" }, "--trace")]
    [InlineData(new[] { "--synthetic", "tiny", "--trace", "/tmp" }, "--trace /tmp is a directory")]
    [InlineData(new[] { "--synthetic", "tiny", "--trace", "/tmp/" }, "--trace /tmp/ is a directory")]
    [InlineData(new[] { "--synthetic", "tiny", "-m", "x.gguf" }, "not both")]
    [InlineData(new[] { "--synthetic", "tiny", "--cpus", "0,x" }, "--cpus: 'x'")]
    [InlineData(new[] { "--synthetic", "tiny", "--cpus", "4096" }, "--cpus: CPU 4096")]
    [InlineData(new[] { "--synthetic", "tiny", "--cpus", "0", "-t", "2" }, "--cpus lists 1 CPU(s) for 2 worker threads")]
    [InlineData(new[] { "--synthetic", "tiny", "-n", "2147483647" }, "-n")] // wrapped the context check after the probe ran
    [InlineData(new[] { "--synthetic", "tiny", "--prompt-tokens", "2147483647" }, "--prompt-tokens")] // OutOfMemoryException
    [InlineData(new[] { "--synthetic", "tiny", "--probe-mb", "100000000" }, "--probe-mb")]
    [InlineData(new[] { "--synthetic", "tiny", "-t", "100000" }, "--threads")] // started 99,999 threads; 2^31-1 overflowed the pool
    [InlineData(new[] { "--synthetic", "tiny", "--weight-pages", "bogus" }, "--weight-pages")]
    public void BadOptionsAreUsageErrorsNamingTheOption(string[] args, string expected)
    {
        var r = Bitnet(["profile", .. args]);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains(expected, r.Error);
    }

    /// <summary>
    /// A file of a Hugging Face model directory given as --trace (or as convert's output) is refused before the run; the
    /// check skipped directories, and the trace replaced model.safetensors. A new file in the directory is still fine.
    /// </summary>
    [Fact]
    public void TheTraceNeverReplacesAFileOfAModelDirectory()
    {
        using var dir = new TestGguf.TempDirectory();
        string model = Path.Combine(dir.Path, "hf");
        Directory.CreateDirectory(model);
        foreach (var f in Directory.GetFiles(RepositoryFiles.Path("tests/fixtures/hf-bitnet/autobitlinear-offline-gqa-f32")))
            File.Copy(f, Path.Combine(model, Path.GetFileName(f)));
        foreach (var name in new[] { "model.safetensors", "config.json" })
        {
            string victim = Path.Combine(model, name);
            var before = File.ReadAllBytes(victim);
            var r = Bitnet("profile", "-m", model + "/", "--trace", victim, "-n", "1", "--prompt-tokens", "2", "--probe-mb", "16", "--peak-ms", "1");
            Assert.Equal(2, r.ExitCode);
            Assert.Contains("--trace", r.Error);
            Assert.Equal(before, File.ReadAllBytes(victim));
        }
        var c = Bitnet("convert", model, Path.Combine(model, "config.json"));
        Assert.Equal(2, c.ExitCode);
        var ok = Bitnet("profile", "-m", model, "--trace", Path.Combine(model, "trace.json"), "-n", "1", "--prompt-tokens", "2", "--probe-mb", "16", "--peak-ms", "1");
        Assert.True(ok.ExitCode == 0, ok.Error);
    }

    /// <summary>--head-type with -m re-encodes the file's head at load, as bench does (it was ignored, a bad name too).</summary>
    [Fact]
    public void HeadTypeAppliesToAModelFile()
    {
        string model = RepositoryFiles.Path("models/bitnet-tinystories.gguf");
        var bad = Bitnet("profile", "-m", model, "--head-type", "bogus", "-n", "1", "--prompt-tokens", "2", "--probe-mb", "16", "--peak-ms", "1");
        Assert.Equal(2, bad.ExitCode);
        Assert.Contains("--head-type", bad.Error);
        var plain = Bitnet("profile", "-m", model, "-n", "1", "--prompt-tokens", "2", "--probe-mb", "16", "--peak-ms", "1");
        var q8 = Bitnet("profile", "-m", model, "--head-type", "q8_0", "-n", "1", "--prompt-tokens", "2", "--probe-mb", "16", "--peak-ms", "1");
        Assert.True(q8.ExitCode == 0, q8.Error);
        Assert.Contains("head Q8_0", q8.Output);
        Assert.DoesNotContain("head Q8_0", plain.Output);
    }

    /// <summary>--trace naming the model (or a link to it) is refused before the run; the trace replaced the model with JSON.</summary>
    [Fact]
    public void TheTraceNeverReplacesTheModel()
    {
        using var dir = new TestGguf.TempDirectory();
        string model = dir.File("m.gguf");
        SyntheticModel.Build(SyntheticShape.Tiny, 3).WriteFile(model);
        long length = new FileInfo(model).Length;
        string link = dir.File("link.json");
        File.CreateSymbolicLink(link, model);
        foreach (var trace in new[] { model, link })
        {
            var r = Bitnet("profile", "-m", model, "--trace", trace, "-n", "1", "--prompt-tokens", "2", "--probe-mb", "16", "--peak-ms", "1");
            Assert.Equal(2, r.ExitCode);
            Assert.Contains("--trace", r.Error);
            Assert.Equal(length, new FileInfo(model).Length);
        }
    }

    /// <summary>An output path under a file says so ("the folder does not exist" named a file that existed).</summary>
    [Fact]
    public void ATracePathUnderAFileSaysItIsAFile()
    {
        using var dir = new TestGguf.TempDirectory();
        File.WriteAllText(dir.File("exists.json"), "{}");
        var r = Bitnet("profile", "--synthetic", "tiny", "--trace", Path.Combine(dir.File("exists.json"), "t.json"));
        Assert.Equal(2, r.ExitCode);
        Assert.Contains($"'{dir.File("exists.json")}' is a file, not a folder", r.Error);
    }

    /// <summary>
    /// Without -t, --cpus gives the thread count, one worker per CPU listed (refused on a host of more cores than the
    /// list, where the default thread count exceeded it); a trace to a pipe or device has no size to tell (it read 0.00 MB
    /// for /dev/null, and a pipe's link threw after the trace was written).
    /// </summary>
    [Fact]
    public void CpusSetTheThreadCountAndADeviceTraceHasNoSize()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "CPU pinning and /dev/null as a special file");
        var before = BitNetSharp.Threading.ThreadPlacement.AllowedCpus();
        var r = Bitnet("profile", "--synthetic", "tiny", "--prompt-tokens", "2", "-n", "1", "--cpus", "0", "--json", "--trace", "/dev/null", "--probe-mb", "16", "--peak-ms", "1");
        Assert.True(r.ExitCode == 0, r.Error);
        using var doc = JsonDocument.Parse(r.Output);
        Assert.Equal(JsonValueKind.Null, doc.RootElement.GetProperty("trace_bytes").ValueKind);
        Assert.Equal(1, doc.RootElement.GetProperty("threads").GetInt32());
        // The calling thread (worker 0) has its CPUs back: it stayed pinned to CPU 0, and the thread-placement tests that
        // ran on it next skipped, "needs two allowed CPUs".
        Assert.Equal(before, BitNetSharp.Threading.ThreadPlacement.AllowedCpus());
        r = Bitnet("bench", "--synthetic", "tiny", "-p", "0", "-n", "2", "-r", "1", "--cpus", "0", "--json");
        Assert.True(r.ExitCode == 0, r.Error);
        Assert.Equal(before, BitNetSharp.Threading.ThreadPlacement.AllowedCpus());
    }

    /// <summary>A trace written through a link (the link kept, its target replaced) is reported at the target's size: it read the link's, 0.00 MB.</summary>
    [Fact]
    public void ATraceThroughALinkReportsItsOwnSize()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS(), "symbolic links without privileges");
        using var dir = new TestGguf.TempDirectory();
        string target = dir.File("target.json"), link = dir.File("link.json");
        File.WriteAllText(target, "{}");
        File.CreateSymbolicLink(link, target);
        var r = Bitnet("profile", "--synthetic", "tiny", "--prompt-tokens", "2", "-n", "1", "--json", "--trace", link, "--probe-mb", "16", "--peak-ms", "1");
        Assert.True(r.ExitCode == 0, r.Error);
        Assert.NotNull(new FileInfo(link).LinkTarget);
        long written = new FileInfo(target).Length;
        Assert.True(written > 1000, $"{written} bytes");
        using var doc = JsonDocument.Parse(r.Output);
        Assert.Equal(written, doc.RootElement.GetProperty("trace_bytes").GetInt64());
        Assert.Equal(written, BitNetSharp.Formats.PathIdentity.Length(link));
        Assert.Equal(written, BitNetSharp.Formats.PathIdentity.Length(target));
    }

    /// <summary>A head type the synthetic shape's rows cannot hold is a usage error (exit 2, as on a model file) before
    /// any file is written: it was exit 1 after "writing synthetic tiny model".</summary>
    [Fact]
    public void AHeadTypeTheSyntheticShapeCannotHoldIsAUsageError()
    {
        foreach (var command in new[] { "profile", "bench" })
        {
            var r = Bitnet(command, "--synthetic", "tiny", "--head-type", "q6_k");
            Assert.True(r.ExitCode == 2, $"{command}: exit {r.ExitCode}: {r.Error}");
            Assert.Contains("--head-type q6_k: q6_K stores rows in blocks of 256 values", r.Error);
            Assert.DoesNotContain("writing synthetic", r.Error);
        }
    }

    /// <summary>
    /// Every bandwidth pattern reads every byte of the probe's buffer once, for any split over threads: the four-stream
    /// patterns now start their quarters a page past a power of two apart (at exactly a quarter, a plain loop read 1.4×
    /// faster than the probe), and the gaps between them are read too.
    /// </summary>
    [Theory]
    [InlineData(1, 4)]
    [InlineData(2, 12)]
    [InlineData(3, 20)]
    public void EveryBandwidthPatternReadsEveryByteOnce(int threads, int megabytes)
    {
        using var probe = new BitNetSharp.Diagnostics.MemoryBandwidth((long)megabytes << 20);
        using var pool = new WorkerPool(threads);
        long expected = unchecked(probe.ByteLength / 8 * 0x0101010101010101L); // the buffer is filled with 1 bytes
        foreach (var pattern in Enum.GetValues<BitNetSharp.Diagnostics.BandwidthPattern>())
            Assert.True(expected == probe.SumOnce(pool, pattern), $"{pattern} on {threads} thread(s) read other bytes than the buffer's");
    }

    [Fact]
    public void ProfileCommandPrintsJsonAndWritesATrace()
    {
        using var dir = new TestGguf.TempDirectory();
        string trace = dir.File("trace.json");
        var both = Bitnet("profile", "--synthetic", "tiny", "-p", "hi", "--prompt-tokens", "3");
        Assert.Equal(2, both.ExitCode);
        var r = Bitnet("profile", "--synthetic", "tiny", "--prompt-tokens", "6", "-n", "3", "-t", "2", "--json", "--trace", trace, "--probe-mb", "16", "--peak-ms", "20");
        Assert.True(r.ExitCode == 0, r.Error);
        using var doc = JsonDocument.Parse(r.Output);
        var decode = doc.RootElement.GetProperty("decode");
        Assert.Equal(3, decode.GetProperty("tokens").GetInt32());
        // The settings the text report shows (the JSON lacked them): the synthetic model's F16 head, mapped pages.
        Assert.Equal("f16", doc.RootElement.GetProperty("head_type").GetString());
        // And the KV type, as bench's JSON names it (the attention rows depend on it), which --kv-type reads back.
        Assert.Equal("f16", doc.RootElement.GetProperty("kv_type").GetString());
        Assert.Equal(BitNetSharp.Model.KvCacheType.Fp8E4M3, BitNetSharp.Cli.Commands.ModelOptions.ParseKvType("Fp8E4M3"));
        Assert.Equal("file", doc.RootElement.GetProperty("weight_pages").GetString()); // as bench's (it held the description)
        Assert.StartsWith("file mapping", doc.RootElement.GetProperty("weights_in_memory").GetString());
        // An HF checkpoint's projections are decoded into memory: its report said "file mapping" and "file", whatever
        // --weight-pages asked (which acts on a GGUF's bytes).
        var hf = Bitnet("profile", "-m", RepositoryFiles.Path("tests/fixtures/hf-bitnet/autobitlinear-online-gqa-f32"), "--prompt-tokens", "4", "-n", "2", "-t", "1",
            "--json", "--probe-mb", "16", "--peak-ms", "20", "--weight-pages", "huge");
        Assert.True(hf.ExitCode == 0, hf.Error);
        using (var hfDoc = JsonDocument.Parse(hf.Output))
        {
            Assert.Equal("decoded", hfDoc.RootElement.GetProperty("weight_pages").GetString());
            Assert.Contains("--weight-pages applies to GGUF files", hfDoc.RootElement.GetProperty("weights_in_memory").GetString());
        }
        Assert.Contains(decode.GetProperty("ops").EnumerateArray(), o => o.GetProperty("name").GetString() == "gate");
        Assert.True(decode.GetProperty("counters").TryGetProperty("task-clock-ns", out _) || !OperatingSystem.IsLinux());
        Assert.True(doc.RootElement.GetProperty("decode_latency").GetProperty("p99").GetDouble() > 0);
        foreach (var phase in new[] { "prefill", "decode" })
        {
            Assert.True(doc.RootElement.GetProperty(phase).GetProperty("jit_methods_compiled").GetInt64() >= 0);
            Assert.True(doc.RootElement.GetProperty(phase).GetProperty("jit_milliseconds").GetDouble() >= 0);
        }
        if (KernelPeak.UnpackOnly(BitNetSharp.Kernels.KernelRegistry.Ternary) is { IsSupported: true })
            // A ratio of two timings: present and a fraction, but its size is not asserted (it was 0.0017 on a loaded CI host).
            Assert.All(doc.RootElement.GetProperty("kernel_unpack_share").EnumerateArray(), u => Assert.InRange(u.GetProperty("share").GetDouble(), 0.0, 1.0));
        Assert.True(new FileInfo(trace).Length > 0);
        using var t = JsonDocument.Parse(File.ReadAllText(trace));
        Assert.True(t.RootElement.GetProperty("traceEvents").GetArrayLength() > 10);
    }
}

/// <summary>The one-pass decode products, profiled; it sets the process-wide weight-stream count, so it runs in that collection.</summary>
[Collection(nameof(BitNetSharp.Tests.Kernels.WeightStreamsCollection))]
public class OnePassProfilingTests
{
    /// <summary>
    /// A decode step's q, k, v (and gate, up) run as one pass when two threads share products this large
    /// (<see cref="Kernels.TernaryMatMul.RunMany"/>): the logits equal one thread's (products one after another) bit for
    /// bit, for one to three sequences; profiled, each projection still has its row (its calls, its weight bytes, its
    /// MACs, a share of the pass's time by bytes) and the trace shows the pass as one span, "L0 q+k+v" / "L0 gate+up".
    /// </summary>
    [Fact]
    public void DecodeProductsOfOneInputRunAsOnePassAndProfileAsTheirParts()
    {
        var before = BitNetSharp.Kernels.TernaryKernel.WeightStreamsState;
        try
        {
            BitNetSharp.Kernels.TernaryKernel.WeightStreams = 4;
            using var dir = new TestGguf.TempDirectory();
            string path = dir.File("wide.gguf");
            // Every product 1024 × 1024 = 2^20 multiply-adds a token: large enough to share on two threads.
            SyntheticModel.Build(new SyntheticShape("wide", 1024, 1, 8, 8, 1024, 256, 64), 5).WriteFile(path);
            using var w = ModelWeights.Load(path);
            var c = w.Config;
            using var pool1 = new WorkerPool(1);
            using var pool2 = new WorkerPool(2);
            // A kernel on rows (not the lookup kernel's blocks, which a model this small gets on Zen 5 and which runs the
            // products one after another).
            var kernel = BitNetSharp.Kernels.KernelRegistry.SupportedTernary.First(k => k.RowAlignment <= 8);
            using var one = new Transformer(w, 8, pool1, kernel);
            using var two = new Transformer(w, 8, pool2, kernel);
            float[] Decode(Transformer engine, int sequences, OpProfiler? profiler)
            {
                var caches = Enumerable.Range(0, sequences).Select(_ => new KvCache(c.Layers, c.KvHeads, c.HeadDim, 8)).ToArray();
                try
                {
                    var logits = new float[sequences * c.VocabSize];
                    var prompt = Enumerable.Range(0, sequences).SelectMany(s => new[] { new BatchToken(3 + s, s, 0), new BatchToken(7, s, 1) }).ToArray();
                    engine.Forward(prompt, caches, new float[0]);
                    engine.Profiler = profiler;
                    var step = Enumerable.Range(0, sequences).Select(s => new BatchToken(11 + s, s, 2, true)).ToArray();
                    engine.Forward(step, caches, logits);
                    engine.Profiler = null;
                    return logits;
                }
                finally
                {
                    foreach (var cache in caches) cache.Dispose();
                }
            }
            for (int sequences = 1; sequences <= 3; sequences++)
                Assert.Equal(Decode(one, sequences, null), Decode(two, sequences, null));

            var stats = new OpStats(c.Layers);
            var trace = new SpanLog(256);
            Assert.Equal(Decode(one, 1, null), Decode(two, 1, new OpProfiler(c.Layers, 2) { Stats = stats, Trace = trace }));
            var lw = w.Layers[0];
            foreach (var (op, m) in new[] { (ProfileOp.Q, lw.Q), (ProfileOp.K, lw.K), (ProfileOp.V, lw.V), (ProfileOp.Gate, lw.Gate), (ProfileOp.Up, lw.Up) })
            {
                int i = OpStats.Index(op, 0);
                Assert.Equal(1, stats.Calls[i]);
                Assert.Equal(m.ByteLength, stats.Bytes[i]);
                Assert.Equal((long)m.Rows * m.Cols, stats.Macs[i]);
                Assert.True(stats.Ticks[i] > 0, $"{op} has no time");
            }
            var spans = trace.Spans.ToArray().ToList();
            var qkv = Assert.Single(spans, s => s.Kind == SpanKind.Products && s.Code == OpProfiler.GroupQkv);
            Assert.Single(spans, s => s.Kind == SpanKind.Products && s.Code == OpProfiler.GroupGateUp);
            Assert.DoesNotContain(spans, s => s.Kind == SpanKind.Op && (ProfileOp)s.Code is ProfileOp.Q or ProfileOp.K or ProfileOp.V or ProfileOp.Gate or ProfileOp.Up);
            // The pass's time shared by bytes: q, k and v have equal bytes here, so equal shares within a tick.
            long wall = qkv.End - qkv.Start;
            long sum = stats.Ticks[OpStats.Index(ProfileOp.Q, 0)] + stats.Ticks[OpStats.Index(ProfileOp.K, 0)] + stats.Ticks[OpStats.Index(ProfileOp.V, 0)];
            Assert.InRange(sum, wall - 3, wall);
            Assert.Equal(3 * 1024, qkv.Out);

            // The whole session: its trace names the passes.
            var report = ProfileSession.Run(w, pool2, new ProfileOptions
            {
                Prompt = [1, 2, 3, 4], DecodeSteps = 2, BandwidthProbeBytes = 16 << 20, PeakSeconds = 0.02, Kernel = kernel,
            });
            var ms = new MemoryStream();
            ChromeTraceWriter.Write(ms, report);
            using var doc = JsonDocument.Parse(ms.ToArray());
            var names = doc.RootElement.GetProperty("traceEvents").EnumerateArray().Where(e => e.GetProperty("ph").GetString() == "X")
                .Select(e => e.GetProperty("name").GetString()).ToHashSet();
            Assert.Contains("L0 q+k+v", names);
            Assert.Contains("L0 gate+up", names);
            var rows = ProfileRow.ByOp(report.Decode, report.BandwidthGBps, report.PeakGmacDecode);
            foreach (var name in new[] { "q", "k", "v", "gate", "up" })
                Assert.Contains(rows, r => r.Name == name && r.GBps > 0);
        }
        finally
        {
            BitNetSharp.Kernels.TernaryKernel.WeightStreamsState = before;
        }
    }

    /// <summary>
    /// The last-level cache read as `lscpu` counts it: the highest level's distinct instances summed, instruction caches
    /// and unreadable entries skipped; a probe under four times it is warned of (16 MiB on a 16 MiB L3 read 52 GB/s
    /// against 19.5 for 1 GiB, and every % BW figure was measured against that).
    /// </summary>
    [Fact]
    public void TheProbeIsWarnedOfWhenTheLastLevelCacheHoldsIt()
    {
        using var dir = new TestGguf.TempDirectory();
        void Cache(int cpu, int index, string level, string type, string size, string shared)
        {
            string d = Path.Combine(dir.Path, $"cpu{cpu}", "cache", $"index{index}");
            Directory.CreateDirectory(d);
            File.WriteAllText(Path.Combine(d, "level"), level + "\n");
            File.WriteAllText(Path.Combine(d, "type"), type + "\n");
            File.WriteAllText(Path.Combine(d, "size"), size + "\n");
            File.WriteAllText(Path.Combine(d, "shared_cpu_list"), shared + "\n");
        }
        for (int cpu = 0; cpu < 4; cpu++)
        {
            Cache(cpu, 0, "1", "Data", "32K", $"{cpu}");
            Cache(cpu, 1, "1", "Instruction", "32K", $"{cpu}");
            Cache(cpu, 2, "2", "Unified", "1024K", $"{cpu}");
            Cache(cpu, 3, "3", "Unified", "32768K", cpu < 2 ? "0-1" : "2-3"); // two L3s of 32 MiB
        }
        Directory.CreateDirectory(Path.Combine(dir.Path, "cpufreq")); // not a cpu: no cache folder
        Assert.Equal(64L << 20, BitNetSharp.Diagnostics.MemoryBandwidth.LastLevelCacheBytes(dir.Path));
        // What a probe's threads can fill: one thread its own L3, more the instances they spread over (the machine's sum
        // called a 1 GiB probe cache-sized on a 12-CCD EPYC).
        Assert.Equal(32L << 20, BitNetSharp.Diagnostics.MemoryBandwidth.ReachableCacheBytes(1, dir.Path));
        Assert.Equal(64L << 20, BitNetSharp.Diagnostics.MemoryBandwidth.ReachableCacheBytes(8, dir.Path));
        Assert.Null(BitNetSharp.Diagnostics.MemoryBandwidth.LastLevelCacheBytes(Path.Combine(dir.Path, "none")));
        Assert.Equal(16L << 20, BitNetSharp.Diagnostics.MemoryBandwidth.ParseCacheSize("16M"));
        Assert.Null(BitNetSharp.Diagnostics.MemoryBandwidth.ParseCacheSize("-5K"));

        var warning = BitNetSharp.Cli.Commands.ProfileCommand.ProbeInCache(16L << 20, 16L << 20);
        Assert.NotNull(warning);
        Assert.Contains("--probe-mb 16 is not far larger than the 16 MiB of last-level cache the probe's threads can fill", warning);
        Assert.Contains("at least 64", warning);
        Assert.Null(BitNetSharp.Cli.Commands.ProfileCommand.ProbeInCache(1024L << 20, 16L << 20));
        Assert.Null(BitNetSharp.Cli.Commands.ProfileCommand.ProbeInCache(16L << 20, null));
        // On this machine: warned exactly when its cache holds the 16 MiB probe.
        var output = new StringWriter();
        var error = new StringWriter();
        Assert.Equal(0, BitNetSharp.Cli.Program.Run(["profile", "--synthetic", "tiny", "-n", "1", "--prompt-tokens", "2", "--probe-mb", "16", "--peak-ms", "1"], output, error));
        Assert.Equal(BitNetSharp.Diagnostics.MemoryBandwidth.ReachableCacheBytes(BitNetSharp.Threading.WorkerPool.DefaultThreadCount()) is { } llc && (16L << 20) < 4 * llc,
            error.ToString().Contains("is not far larger than the", StringComparison.Ordinal));
    }
}
