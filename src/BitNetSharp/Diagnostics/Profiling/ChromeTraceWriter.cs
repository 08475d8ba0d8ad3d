using System.Diagnostics;
using System.Text.Json;
using BitNetSharp.Threading;

namespace BitNetSharp.Diagnostics.Profiling;

/// <summary>
/// Writes a profile's timeline in Chrome's Trace Event format (a JSON object with "traceEvents"; opens in
/// ui.perfetto.dev and chrome://tracing): complete events (ph "X", ts and dur in µs) on one track per pool thread.
/// Track 0, the thread that drives the forward pass, nests phase ⊃ step ⊃ operation ⊃ the chunks it ran itself; the
/// other workers' tracks hold the chunks they ran, each named after the operation it belongs to, so load imbalance
/// and idle waits show as gaps.
/// </summary>
public static class ChromeTraceWriter
{
    public static void Write(Stream stream, ProfileReport report)
    {
        var spans = report.Spans.Spans;
        var chunks = report.Chunks;
        long origin = long.MaxValue;
        foreach (var s in spans) origin = Math.Min(origin, s.Start);
        for (int w = 0; w < chunks.Workers; w++)
            foreach (var s in chunks.Spans(w)) origin = Math.Min(origin, s.Start);
        if (origin == long.MaxValue) origin = 0;
        double Us(long ticks) => Math.Round((ticks - origin) * 1e6 / Stopwatch.Frequency, 3);

        int pid = Environment.ProcessId;
        using var j = new Utf8JsonWriter(stream);
        j.WriteStartObject();
        j.WriteString("displayTimeUnit", "ms");
        j.WriteStartObject("otherData");
        j.WriteString("kernel", report.Kernel);
        j.WriteNumber("threads", report.Threads);
        j.WriteString("architecture", report.Config.Architecture);
        j.WriteNumber("dropped_spans", report.Spans.Dropped); // events the recorder's full buffers could not hold
        j.WriteNumber("dropped_chunks", report.Chunks.Dropped);
        j.WriteEndObject();
        j.WriteStartArray("traceEvents");

        Meta(j, pid, 0, "process_name", "bitnet profile");
        for (int w = 0; w < chunks.Workers; w++)
            Meta(j, pid, w, "thread_name", w == 0 ? "caller (worker 0)" : $"bitnet-worker-{w}");

        // The lookup kernel reads its repacked layout up to a few tokens and the packed matrix past them (prefill): each
        // span names what its products read (every span read as the repacked layout).
        string lookup = $"ternary 5-bit indices of weight triples, 32-row blocks (repacked at load), kernel {report.Kernel}";
        string packed = $"ternary 2-bit codes, 128-weight blocks (I2_S order), kernel {report.Kernel}";
        string Layout(int tokens) => tokens <= report.LookupLayoutTokens ? lookup : packed;
        // Parents before children at equal start, so viewers nest them: sort by start, then longer first.
        var ordered = spans.ToArray();
        Array.Sort(ordered, (a, b) => a.Start != b.Start ? a.Start.CompareTo(b.Start) : b.End.CompareTo(a.End));
        foreach (var s in ordered)
        {
            j.WriteStartObject();
            j.WriteString("name", SpanName(s));
            j.WriteString("cat", s.Kind switch { SpanKind.Phase => "phase", SpanKind.Step => "step", SpanKind.Stage => "stage", _ => "op" });
            j.WriteString("ph", "X");
            double ts = Us(s.Start);
            j.WriteNumber("ts", ts);
            j.WriteNumber("dur", Math.Max(0, Math.Round(Us(s.End) - ts, 3)));
            j.WriteNumber("pid", pid);
            j.WriteNumber("tid", 0);
            j.WriteStartObject("args");
            if (s.Layer >= 0) j.WriteNumber("layer", s.Layer);
            j.WriteNumber("tokens", s.Tokens);
            if (s.Kind == SpanKind.Op && s.In > 0)
            {
                var op = (ProfileOp)s.Code;
                j.WriteString("projection", ProfileOps.Name(op));
                j.WriteString("shape", $"{s.In}→{s.Out}");
                j.WriteString("packed_layout", op == ProfileOp.Head ? "output head (" + report.HeadType + ")" : Layout(s.Tokens));
            }
            else if (s.Kind == SpanKind.Products)
            {
                j.WriteString("projection", OpProfiler.ProductGroupNames[s.Code]);
                j.WriteString("shape", $"{s.In}→{s.Out}");
                j.WriteString("packed_layout", Layout(s.Tokens));
            }
            j.WriteEndObject();
            j.WriteEndObject();
            FlushSometimes(j);
        }

        for (int w = 0; w < chunks.Workers; w++)
            foreach (var c in chunks.Spans(w))
            {
                j.WriteStartObject();
                string owner = c.Tag >= 0 && c.Tag < spans.Length ? SpanName(spans[c.Tag]) : "pool work";
                j.WriteString("name", owner + " chunk");
                j.WriteString("cat", "chunk");
                j.WriteString("ph", "X");
                double ts = Us(c.Start);
                j.WriteNumber("ts", ts);
                j.WriteNumber("dur", Math.Max(0, Math.Round(Us(c.End) - ts, 3)));
                j.WriteNumber("pid", pid);
                j.WriteNumber("tid", w);
                j.WriteStartObject("args");
                j.WriteNumber("items_start", c.ItemStart);
                j.WriteNumber("items_end", c.ItemEnd);
                j.WriteEndObject();
                j.WriteEndObject();
                FlushSometimes(j);
            }
        j.WriteEndArray();
        j.WriteEndObject();
    }

    /// <summary>
    /// Hands the writer's buffer to the stream every 64 KiB: unflushed, a Utf8JsonWriter keeps the whole document in one
    /// growing array, so a long profile's trace (tens of millions of events) needed gigabytes and failed near 2 GB.
    /// </summary>
    private static void FlushSometimes(Utf8JsonWriter j)
    {
        if (j.BytesPending >= 1 << 16) j.Flush();
    }

    /// <summary>Writes the trace whole or not at all (<see cref="Formats.AtomicFile"/>: a temporary file beside it, renamed over the path when complete).</summary>
    public static void Write(string path, ProfileReport report) => Formats.AtomicFile.Write(path, f => Write(f, report), 1 << 16);

    private static void Meta(Utf8JsonWriter j, int pid, int tid, string kind, string name)
    {
        j.WriteStartObject();
        j.WriteString("name", kind);
        j.WriteString("ph", "M");
        j.WriteNumber("pid", pid);
        j.WriteNumber("tid", tid);
        j.WriteStartObject("args");
        j.WriteString("name", name);
        j.WriteEndObject();
        j.WriteEndObject();
    }

    private static string SpanName(in TraceSpan s) => s.Kind switch
    {
        SpanKind.Phase => s.Code == 0 ? "prefill" : "decode",
        SpanKind.Step => s.Code == 0 ? $"prefill step ({s.Tokens} tokens)" : $"decode step {s.Code}",
        SpanKind.Stage => $"L{s.Layer} {OpProfiler.StageNames[s.Code]}",
        SpanKind.Products => $"L{s.Layer} {OpProfiler.ProductGroupNames[s.Code]}",
        _ => s.Layer >= 0 ? $"L{s.Layer} {ProfileOps.Name((ProfileOp)s.Code)}" : ProfileOps.Name((ProfileOp)s.Code),
    };
}
