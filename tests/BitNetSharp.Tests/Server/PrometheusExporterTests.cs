using System.Diagnostics.Metrics;
using BitNetSharp.Server.Metrics;

namespace BitNetSharp.Tests.Server;

public class PrometheusExporterTests
{
    /// <summary>
    /// An observable gauge that stops reporting (nothing to measure) leaves the exposition; before, its last value stayed
    /// in /metrics for ever, and a labelled series of a finished thing stayed beside the live ones.
    /// </summary>
    [Fact]
    public void AnObservableSeriesNoLongerReportedLeavesTheExposition()
    {
        using var meter = new Meter("test.exporter." + Guid.NewGuid().ToString("N"));
        double? value = 0.75;
        bool second = true;
        meter.CreateObservableGauge("probe.share", () =>
        {
            var list = new List<Measurement<double>>();
            if (value is { } v) list.Add(new(v, new KeyValuePair<string, object?>("seq", "a")));
            if (second) list.Add(new(0.5, new KeyValuePair<string, object?>("seq", "b")));
            return list;
        }, "1", "A share.");
        var counter = meter.CreateCounter<long>("probe.events", "{event}", "Events.");
        counter.Add(3);
        using var exporter = new PrometheusTextExporter([meter]);
        counter.Add(2);
        string first = exporter.Write();
        Assert.Contains("probe_share_ratio{seq=\"a\"} 0.75\n", first);
        Assert.Contains("probe_share_ratio{seq=\"b\"} 0.5\n", first);
        Assert.Contains("probe_events_total 2\n", first);

        second = false;
        string next = exporter.Write();
        Assert.Contains("probe_share_ratio{seq=\"a\"} 0.75\n", next);
        Assert.DoesNotContain("seq=\"b\"", next);

        value = null;
        string last = exporter.Write();
        Assert.Contains("# TYPE probe_share_ratio gauge\n", last);
        Assert.DoesNotContain("probe_share_ratio{", last);
        Assert.Contains("probe_events_total 2\n", last); // push counters keep their totals
    }
}
