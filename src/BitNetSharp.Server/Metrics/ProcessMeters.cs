using System.Diagnostics.Metrics;

namespace BitNetSharp.Server.Metrics;

/// <summary>
/// The server process as /metrics shows it: resident memory, the managed heap, garbage collections, the JIT's work and
/// the generation requests being handled. A soak test reads these to tell a leak from a warm-up; they are observable,
/// so nothing is measured between scrapes.
/// </summary>
internal sealed class ProcessMeters : IDisposable
{
    public const string MeterName = "BitNetSharp.Server";

    public ProcessMeters(Func<int> requestsInFlight, DateTimeOffset started, Func<(long Draining, long Loading)>? refused = null, Func<long>? writeTimeouts = null,
        Func<bool>? ready = null, Func<long>? internalErrors = null)
    {
        Meter = new Meter(MeterName);
        double startSeconds = started.ToUnixTimeMilliseconds() / 1000.0;
        Meter.CreateObservableGauge("bitnet.server.start_time", () => startSeconds, "s",
            "When this server started (Unix time). Another value means another process answered: a restart, or another " +
            "replica behind the same address; counters are not comparable across it.");
        if (ready is not null)
            Meter.CreateObservableGauge("bitnet.server.ready", () => ready() ? 1 : 0, "{state}",
                "1 when the model is loaded and warmed up and requests are served; 0 while it warms up (the series appear then: " +
                "/metrics is empty while the model loads). A warm-up that never ends reads 0, which BitNetNotServing alerts on.");
        Meter.CreateObservableGauge("bitnet.process.resident_memory", () => Environment.WorkingSet, "By",
            "Resident set size of the server process.");
        // Before the first collection the runtime's figures of the last one are all 0; the heap is then everything
        // allocated so far, and its commitment is not known (the series is left out). A CPU with a large cache gets a
        // large allocation budget (~90 MiB on a 260 MiB L3), so a server can run a while before its first collection.
        Meter.CreateObservableGauge("bitnet.process.gc_heap", () => GC.GetGCMemoryInfo() is { Index: > 0 } info ? info.HeapSizeBytes : GC.GetTotalMemory(false), "By",
            "Managed heap size after the last garbage collection, fragmentation included (before the first: all that was allocated).");
        Meter.CreateObservableGauge("bitnet.process.gc_committed", () => GC.GetGCMemoryInfo() is { Index: > 0 } info
                ? [new Measurement<long>(info.TotalCommittedBytes)] : Array.Empty<Measurement<long>>(), "By",
            "Memory the garbage collector had committed for the managed heap at the last collection (absent before the first).");
        Meter.CreateObservableCounter("bitnet.process.gc_collections", () => new[]
        {
            new Measurement<long>(GC.CollectionCount(0), new KeyValuePair<string, object?>("generation", "0")),
            new Measurement<long>(GC.CollectionCount(1), new KeyValuePair<string, object?>("generation", "1")),
            new Measurement<long>(GC.CollectionCount(2), new KeyValuePair<string, object?>("generation", "2")),
        }, "{collection}", "Garbage collections by generation (a generation-2 collection counts in 0 and 1 too).");
        Meter.CreateObservableCounter("bitnet.process.jit_compiled_methods", () => System.Runtime.JitInfo.GetCompiledMethodCount(), "{method}",
            "Methods the JIT has compiled, on any thread. After start-up it still rises while hot methods are recompiled optimized " +
            "(after ~30 calls) on a background thread, which on a machine with few cores takes one from decoding.");
        Meter.CreateObservableCounter("bitnet.process.jit_compilation_time", () => System.Runtime.JitInfo.GetCompilationTime().TotalSeconds, "s",
            "Time the JIT has spent compiling, on any thread.");
        Meter.CreateObservableGauge("bitnet.server.requests_in_flight", requestsInFlight, "{request}",
            "Generation requests the HTTP server is handling, from routing to the last byte written.");
        if (refused is not null)
            Meter.CreateObservableCounter("bitnet.server.requests_refused", () =>
            {
                var (draining, loading) = refused();
                return new[]
                {
                    new Measurement<long>(draining, new KeyValuePair<string, object?>("reason", "shutting_down")),
                    new Measurement<long>(loading, new KeyValuePair<string, object?>("reason", "model_loading")),
                };
            }, "{request}",
            "Generation requests answered 503 before reaching the engine: while draining for shutdown (a balancer still sending " +
            "here after SIGTERM), or while the model was loading or warming up (counted from the load on; /metrics is empty before it).");
        if (writeTimeouts is not null) WriteTimeouts(writeTimeouts);
        if (internalErrors is not null)
            Meter.CreateObservableCounter("bitnet.server.internal_errors", internalErrors, "{request}",
                "Requests that met an unhandled error in the server's own code (a bug; each logged with its stack trace): " +
                "answered 500 internal_error, or, once the answer had begun, their connection closed. The engine's failures " +
                "count in bitnet_requests_failed_total; these never reached it or failed outside it.");
    }

    public Meter Meter { get; }

    private void WriteTimeouts(Func<long> count) =>
        Meter.CreateObservableCounter("bitnet.server.write_timeouts", count, "{connection}",
            "Connections closed because a write of the answer waited --write-timeout on a client that read nothing. The engine " +
            "runs ahead of the writer, so such a request's choices may already count as successes: this says the client " +
            "never received them.");

    public void Dispose() => Meter.Dispose();
}
