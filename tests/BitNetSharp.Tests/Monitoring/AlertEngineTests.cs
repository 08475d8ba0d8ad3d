using System.Net;
using System.Text.Json;
using BitNetSharp.Generation.Scheduler;
using BitNetSharp.Monitoring.Alerts;

namespace BitNetSharp.Tests.Monitoring;

public class AlertEngineTests
{
    private static AlertEngine Engine(AlertRule rule, Func<double> value, AlertEngineOptions? options = null, string metric = "m") =>
        new([rule], s => s.Add(metric, value()), options);

    /// <summary>
    /// The built-in checksum rule fires while the weights read unverified, however long ago the mismatch was counted
    /// (it read the mismatch counters' 5-minute increase, and resolved on an idle server while bitnet_weights_verified
    /// still read 0), and resolves once a full check passes.
    /// </summary>
    [Fact]
    public void TheChecksumRuleFiresWhileTheWeightsReadUnverified()
    {
        double verified = 1;
        var rule = AlertRules.Default.Single(r => r.Name == "BitNetWeightChecksumMismatch");
        using var e = new AlertEngine([rule], s =>
        {
            s.Add("bitnet_weights_verified", verified);
            s.Add("bitnet_weights_checksum_mismatches_total", 1); // counted long ago: no increase in any window
            s.Add("bitnet_weights_probe_mismatches_total", 0);
        });
        e.Evaluate();
        Assert.Empty(e.Firing);
        verified = 0;
        e.Evaluate();
        Assert.Single(e.Firing);
        e.Evaluate();
        Assert.Single(e.Firing);
        verified = 1;
        e.Evaluate();
        Assert.Empty(e.Firing);
    }

    /// <summary>
    /// The built-in queue rule reads queued sequences against the queue limit, which counts sequences: one request
    /// with n = 8 fills a queue of 8 (waiting requests read 1/8 while the queue refused more).
    /// </summary>
    [Fact]
    public void TheQueueRuleCountsQueuedSequences()
    {
        var rule = AlertRules.Default.Single(r => r.Name == "BitNetQueueSaturation") with { For = 1 };
        using var e = new AlertEngine([rule], s =>
        {
            s.Add("bitnet_requests_waiting", 1);
            s.Add("bitnet_sequences_waiting", 10);
            s.Add("bitnet_sequences_queued", 8);
            s.Add("bitnet_requests_max_queue", 8);
        });
        e.Evaluate();
        Assert.Single(e.Firing);
    }

    /// <summary>
    /// Requests that free sequences take at the next step are not queue use: every request waits for the next step, so
    /// waiting ÷ max_queue fired with --max-queue 0 (+Inf) whenever anything arrived mid-step, on an idle server.
    /// </summary>
    [Fact]
    public void TheQueueRuleIgnoresRequestsFreeSequencesWillTake()
    {
        var rule = AlertRules.Default.Single(r => r.Name == "BitNetQueueSaturation") with { For = 1 };
        var stats = new SchedulerStatistics(RunningRequests: 1, WaitingRequests: 2, RunningSequences: 1, MaxSequences: 8, KvPositionsInUse: 0,
            KvPositionsCapacity: 1, PromptTokens: 0, GenerationTokens: 0, Steps: 0, StepTokens: 0, FinishedStop: 0, FinishedLength: 0, Cancelled: 0,
            TimedOut: 0, Failed: 0, Rejected: 0, WaitingSequences: 2);
        Assert.Equal(0, stats.QueuedSequences);
        Assert.Equal(3, (stats with { WaitingSequences = 10 }).QueuedSequences); // 7 free slots take 7 of the 10
        using var e = new AlertEngine([rule], s =>
        {
            s.Add("bitnet_sequences_waiting", stats.WaitingSequences);
            s.Add("bitnet_sequences_queued", stats.QueuedSequences);
            s.Add("bitnet_requests_max_queue", 0);
        });
        e.Evaluate();
        Assert.Empty(e.Firing);
    }

    /// <summary>A "metric" with an empty part ("+", "a +") or a non-name ("a - b") is refused naming the rule (it loaded and read nothing, or only part).</summary>
    [Theory]
    [InlineData("+", "an empty part")]
    [InlineData("m_total +", "an empty part")]
    [InlineData("a - b", "'a - b', which is not a metric name")]
    public void AMetricThatIsNotNamesIsRefused(string metric, string expected)
    {
        var e = Assert.Throws<ArgumentException>(() => AlertRules.Parse($"{{\"rules\": [{{\"name\": \"R\", \"metric\": \"{metric}\", \"threshold\": 1}}]}}", "rules.json"));
        Assert.Contains("rule 'R'", e.Message);
        Assert.Contains(expected, e.Message);
    }

    /// <summary>
    /// An increase rule's counter denominator is taken over the same window (failures per request in the window); it
    /// divided by the lifetime total, so 5 failures of the last 10 requests read 5/1010 after 1000 earlier requests.
    /// </summary>
    [Fact]
    public void AnIncreaseRuleDividesByTheCountersIncreaseOverTheSameWindow()
    {
        double failed = 0, requests = 1000;
        using var e = new AlertEngine([new AlertRule { Name = "FailShare", Metric = "failed_total", Aggregate = "increase", DivideBy = "requests_total", Op = ">", Threshold = 0.1 }],
            s => { s.Add("failed_total", failed); s.Add("requests_total", requests); });
        e.Evaluate();
        failed = 5;
        requests = 1010;
        e.Evaluate();
        var firing = Assert.Single(e.Firing);
        Assert.Equal(0.5, firing.Value, 9);
    }

    /// <summary>
    /// A divide_by rule's messages name the ratio it compares (its value was printed as the numerator's:
    /// "bitnet_prompt_tokens_total = 0.166667"), and a rule without a description logs no stray space.
    /// </summary>
    [Fact]
    public void ARatioRuleNamesTheRatioItCompares()
    {
        var lines = new List<string>();
        double a = 1, b = 6;
        using var e = new AlertEngine([new AlertRule { Name = "Share", Metric = "a_total", DivideBy = "b_total", Op = ">", Threshold = 0.1 }],
            s => { s.Add("a_total", a); s.Add("b_total", b); }, new AlertEngineOptions { Log = lines.Add });
        e.Evaluate();
        Assert.Equal("alert Share FIRING (warning): a_total / b_total = 0.166667 > 0.1.", Assert.Single(lines));
        a = 0;
        e.Evaluate();
        Assert.Equal("alert Share resolved: a_total / b_total = 0", lines[^1]);

        // An increase rule names the increase it compares, not the counter (its resolve read "n_total = 0" at 2).
        Assert.Equal("increase(n_total)", new AlertRule { Name = "N", Metric = "n_total", Aggregate = "increase", Threshold = 0 }.Quantity);
        Assert.Equal("increase(f_total) / increase(r_total)", new AlertRule { Name = "F", Metric = "f_total", Aggregate = "increase", DivideBy = "r_total", Threshold = 0 }.Quantity);
    }

    /// <summary>A throwing Changed handler (a telemetry sink) neither escapes Evaluate nor keeps the batch's other changes from the other handlers.</summary>
    [Fact]
    public void AThrowingHandlerLosesNoChanges()
    {
        var lines = new List<string>();
        using var e = new AlertEngine([new AlertRule { Name = "A", Metric = "m", Op = ">", Threshold = 0 }, new AlertRule { Name = "B", Metric = "m", Op = ">", Threshold = 0 }],
            s => s.Add("m", 1), new AlertEngineOptions { Log = lines.Add });
        var seen = new List<string>();
        e.Changed += c => { if (c.Rule.Name == "A") throw new IOException("sink full"); };
        e.Changed += c => seen.Add(c.Rule.Name);
        e.Evaluate();
        Assert.Equal(["A", "B"], seen);
        Assert.Equal(2, e.Firing.Count);
        Assert.Equal(1, e.NotifyFailures);
        Assert.Contains(lines, l => l.Contains("sink full", StringComparison.Ordinal));
    }

    [Fact]
    public void FiresAfterForConsecutiveEvaluationsAndResolves()
    {
        double v = 0;
        using var e = Engine(new AlertRule { Name = "R", Metric = "m", Op = ">", Threshold = 1, For = 3 }, () => v);
        var changes = new List<AlertState>();
        e.Changed += changes.Add;
        e.Evaluate();
        v = 2;
        e.Evaluate();
        e.Evaluate();
        Assert.Empty(e.Firing);
        e.Evaluate();
        Assert.Single(e.Firing);
        Assert.Equal(1, e.TimesFired("R"));
        e.Evaluate();
        Assert.Equal(1, e.TimesFired("R")); // still the same firing
        v = 0.5;
        e.Evaluate();
        Assert.Empty(e.Firing);
        Assert.Equal([true, false], changes.Select(c => c.Firing));
        v = 2;
        e.Evaluate();
        e.Evaluate();
        Assert.Empty(e.Firing); // the count restarted
    }

    /// <summary>
    /// keep_firing_for_seconds holds a firing alert through short dips (Prometheus' keep_firing_for): under sustained
    /// overload the queue dips from 64 to 56 of 64 whenever a batch is admitted, and the queue rule resolved and fired
    /// again around every dip, flooding the webhook and the log.
    /// </summary>
    [Fact]
    public void KeepFiringForHoldsAnAlertThroughShortDips()
    {
        double queued = 64;
        var clock = new ManualTime();
        var rule = AlertRules.Default.Single(r => r.Name == "BitNetQueueSaturation");
        Assert.True(rule.KeepFiringForSeconds > 0); // the built-in queue rule holds through dips
        using var e = new AlertEngine([rule], s =>
        {
            s.Add("bitnet_sequences_queued", queued);
            s.Add("bitnet_requests_max_queue", 64);
        }, new AlertEngineOptions { Time = clock });
        var changes = new List<AlertState>();
        e.Changed += changes.Add;
        for (int round = 0; round < 3; round++)
        {
            queued = 64;
            for (int i = 0; i < 6; i++)
            {
                e.Evaluate();
                clock.Advance(1);
            }
            queued = 56; // a batch admitted: one evaluation below 90 %
            e.Evaluate();
            clock.Advance(1);
            if (round > 0)
            {
                // Held, it shows the value it last fired on (as Prometheus does), not the dip's 87.5 %.
                Assert.Equal(1.0, Assert.Single(e.Firing).Value);
                Assert.Single(changes); // and has not resolved on the way
            }
        }
        Assert.Equal([true], changes.Select(c => c.Firing));
        Assert.Equal(1, e.TimesFired("BitNetQueueSaturation"));
        // A lasting recovery resolves it once the hold has passed, not before.
        queued = 0;
        for (int i = 0; i < rule.KeepFiringForSeconds; i++)
        {
            e.Evaluate();
            clock.Advance(1);
        }
        e.Evaluate();
        Assert.Equal([true, false], changes.Select(c => c.Firing));
        Assert.Empty(e.Firing);

        // Validated like the other durations.
        var bad = Assert.Throws<ArgumentException>(() => AlertRules.Parse("""{"rules":[{"name":"A","metric":"bitnet_sequences_queued","threshold":1,"keep_firing_for_seconds":-1}]}"""));
        Assert.Contains("keep_firing_for_seconds", bad.Message);
    }

    /// <summary>
    /// The server's logits rule counts "for" in samples that had logits (bitnet_health_logit_samples_total), as the
    /// Prometheus rule in deploy/ does: it counted every health sample, so one bad logits value followed by sampled
    /// prompt-only steps (which leave the logits gauges as they were) fired BitNetLogitRangeCollapse on a stale value.
    /// </summary>
    [Fact]
    public void TheServersLogitsRuleCountsOnlySamplesWithLogits()
    {
        double range = 0.1, samples = 1, logitSamples = 1;
        var rule = AlertRules.Default.Single(r => r.Name == "BitNetLogitRangeCollapse");
        using var e = new AlertEngine([rule],
            s => { s.Add("bitnet_health_logits_range", range); s.Add("bitnet_health_samples_total", samples); s.Add("bitnet_health_logit_samples_total", logitSamples); },
            new AlertEngineOptions { SampledMetrics = BitNetSharp.Server.ModelMonitor.GatedSamples, SampleCounter = "bitnet_health_samples_total", CountedMetrics = BitNetSharp.Server.ModelMonitor.GatedCounts });
        for (int i = 0; i < 6; i++)
        {
            samples++; // prompt-only sampled steps: no new logits
            e.Evaluate();
        }
        Assert.Empty(e.Firing);
        for (int i = 0; i < rule.For + 1; i++)
        {
            samples++;
            logitSamples++; // steps with logits, still flat
            e.Evaluate();
        }
        Assert.Single(e.Firing);

        // A rule mixing a logits gauge with an activation gauge still waits on new samples (it was ungated for a while:
        // an idle server's last values counted again every second).
        double saturation = 0.5;
        using var mixed = new AlertEngine([new AlertRule { Name = "Mixed", Metric = "bitnet_health_logits_range", DivideBy = "bitnet_health_activation_saturation_ratio", Op = "<", Threshold = 1, For = 3 }],
            s => { s.Add("bitnet_health_logits_range", range); s.Add("bitnet_health_activation_saturation_ratio", saturation); s.Add("bitnet_health_samples_total", samples); s.Add("bitnet_health_logit_samples_total", logitSamples); },
            new AlertEngineOptions { SampledMetrics = BitNetSharp.Server.ModelMonitor.GatedSamples, SampleCounter = "bitnet_health_samples_total", CountedMetrics = BitNetSharp.Server.ModelMonitor.GatedCounts });
        for (int i = 0; i < 10; i++) mixed.Evaluate(); // idle: no new samples
        Assert.Empty(mixed.Firing);
    }

    /// <summary>
    /// The evaluation timer ticks a little early or late: at 0.999 s intervals a 3 s for_seconds waited for a 4th
    /// interval (2.997 s &lt; 3), a 3 s hold resolved one interval late, and a 3 s increase window reached back 4
    /// intervals, so the same rule fired or resolved a second apart from run to run. A hold of N intervals takes N.
    /// </summary>
    [Fact]
    public void HoldsTakeTheirIntervalsWhateverTheTimersJitter()
    {
        // Each evaluation comes at its whole second give or take the timer's drift (a tick 1 ms short, as measured) or jitter;
        // two evaluations' errors together within a quarter interval are absorbed.
        var random = new Random(5);
        foreach (Func<int, double> jitter in new Func<int, double>[] { _ => 0, k => -0.001 * k, k => 0.001 * k, k => k % 2 == 0 ? 0.1 : -0.1, k => k % 2 == 0 ? -0.1 : 0.1, _ => random.NextDouble() * 0.2 - 0.1 })
        {
            double value = 5, total = 0;
            var clock = new ManualTime();
            using var e = new AlertEngine(
                [
                    new AlertRule { Name = "Held", Metric = "m", Threshold = 1, ForSeconds = 3, KeepFiringForSeconds = 3 },
                    new AlertRule { Name = "Grew", Metric = "c_total", Aggregate = "increase", Op = ">", Threshold = 0, WindowSeconds = 3 },
                ],
                s => { s.Add("m", value); s.Add("c_total", total); }, new AlertEngineOptions { Time = clock });
            var fired = new List<(string Rule, bool Firing, int At)>();
            int evaluation = 0;
            e.Changed += c => fired.Add((c.Rule.Name, c.Firing, evaluation));
            double at = 0;
            for (; evaluation < 12; evaluation++)
            {
                double next = evaluation + jitter(evaluation);
                clock.Advance(next - at);
                at = next;
                if (evaluation == 1) total = 1; // one increase, seen at evaluation 1: the 3 s window holds it at 1, 2 and 3
                if (evaluation == 5) value = 0; // the condition clears at evaluation 5: held through 6 and 7
                e.Evaluate();
            }
            // Held: holds from 0, fires at 3 (3 intervals on), clear from 5, resolves at 8. Grew: 1 to 4 (3 evaluations on).
            Assert.Equal([("Grew", true, 1), ("Held", true, 3), ("Grew", false, 4), ("Held", false, 8)], fired.OrderBy(f => f.At).ThenBy(f => f.Rule).ToList());
        }

        // The slack absorbs jitter only: a hold of 2.2 s is 3 intervals, not 2 (review: a quarter interval of slack fired it at 2 s).
        var time = new ManualTime();
        using var partial = new AlertEngine([new AlertRule { Name = "P", Metric = "m", Threshold = 1, ForSeconds = 2.2 }], s => s.Add("m", 5), new AlertEngineOptions { Time = time });
        int firedAt = -1;
        partial.Changed += c => { if (c.Firing && firedAt < 0) firedAt = (int)Math.Round((time.GetUtcNow() - new DateTimeOffset(2026, 1, 1, 0, 0, 1, TimeSpan.Zero)).TotalSeconds); };
        for (int i = 0; i < 5; i++)
        {
            partial.Evaluate();
            time.Advance(1);
        }
        Assert.Equal(3, firedAt);

        // A hold under an interval is never stricter than one of a whole interval: 0.9 s met by an evaluation 0.8 s on.
        var early = new ManualTime();
        using var shortHold = new AlertEngine([new AlertRule { Name = "S", Metric = "m", Threshold = 1, ForSeconds = 0.9 }], s => s.Add("m", 5), new AlertEngineOptions { Time = early });
        shortHold.Evaluate();
        early.Advance(0.8);
        shortHold.Evaluate();
        Assert.Single(shortHold.Firing);
    }

    /// <summary>
    /// A held rule over sampled gauges resolves when its hold runs out after a good sample, though no further sample
    /// comes: a rule skips evaluations without a new sample, so after one good sample and silence it stayed firing.
    /// </summary>
    [Fact]
    public void AHeldSampledRuleResolvesWhenItsHoldRunsOutOnAnIdleServer()
    {
        double change = 9, samples = 1;
        var clock = new ManualTime();
        using var e = new AlertEngine([new AlertRule { Name = "BlowUp", Metric = "change", Op = ">", Threshold = 8, KeepFiringForSeconds = 5 }],
            s => { s.Add("change", change); s.Add("samples_total", samples); },
            new AlertEngineOptions { Time = clock, SampledMetrics = ["change"], SampleCounter = "samples_total" });
        var changes = new List<AlertState>();
        e.Changed += changes.Add;
        e.Evaluate();
        Assert.Single(e.Firing);
        change = 1;
        samples = 2; // one good sample, then the server goes idle
        e.Evaluate();
        Assert.Single(e.Firing); // held
        clock.Advance(60);
        e.Evaluate();
        Assert.Empty(e.Firing);
        Assert.Equal(1, changes[^1].Value); // resolved on the good sample's value (it said "resolved: change = 9")
    }

    /// <summary>
    /// Seeded mutations of a rule file (bytes, numbers, strings: half surrogate pairs, NUL, quotes, deep nesting) load or
    /// are an ArgumentException naming the file; the file is read at serve's start, and anything else was a stack trace.
    /// </summary>
    [Fact]
    public void MutatedRuleFilesLoadOrFailCleanly()
    {
        const string json = """
            {"rules": [
              {"name": "Hot", "metric": "bitnet_health_residual_relative_change_ratio", "match": {"layer": "!0"}, "op": ">", "threshold": 8, "for": 2, "severity": "critical"},
              {"name": "Queue", "metric": "bitnet_sequences_queued", "divide_by": "bitnet_requests_max_queue", "aggregate": "sum", "threshold": 0.9, "for_seconds": 5, "keep_firing_for_seconds": 10},
              {"name": "Nan", "metric": "bitnet_health_nonfinite_sequences_total", "aggregate": "increase", "window_seconds": 300, "threshold": 0, "component": "model"}
            ]}
            """;
        var original = System.Text.Encoding.UTF8.GetBytes(json);
        var rng = new Random(97531);
        for (int i = 0; i < 3000; i++)
        {
            string text = (i % 3) switch
            {
                0 => System.Text.Encoding.UTF8.GetString(BitNetSharp.Tests.Formats.ParserFuzzTests.Mutate(original, rng, original.Length)),
                1 => BitNetSharp.Tests.Formats.ParserFuzzTests.MutateJsonNumbers(json, rng),
                _ => BitNetSharp.Tests.Formats.ParserFuzzTests.MutateJsonStrings(json, rng),
            };
            try
            {
                var rules = AlertRules.Parse(text, "rules.json");
                using var e = new AlertEngine(rules, s => s.Add("bitnet_sequences_queued", 1));
                e.Evaluate();
            }
            catch (ArgumentException e)
            {
                Assert.Contains("rules.json", e.Message);
            }
            catch (Exception e)
            {
                Assert.Fail($"iteration {i}: {e.GetType().Name} instead of ArgumentException: {e.Message}\n{text}");
            }
        }
    }

    /// <summary>A rule file's error names the rule by its place in the file and the line (.NET's message names neither).</summary>
    [Fact]
    public void ARuleFileErrorNamesTheRuleAndLine()
    {
        var e = Assert.Throws<ArgumentException>(() => AlertRules.Parse("""
            {"rules": [
              {"name": "A", "metric": "bitnet_sequences_queued", "threshold": 1},
              {"name": "B", "metric": "bitnet_sequences_queued"}
            ]}
            """, "rules.json"));
        Assert.Contains("rules.json", e.Message);
        Assert.Contains("rules[1]", e.Message);
        Assert.Contains("line 3", e.Message);
        Assert.Contains("threshold", e.Message);
        Assert.DoesNotContain("BitNetSharp.Monitoring", e.Message);
        var unknown = Assert.Throws<ArgumentException>(() => AlertRules.Parse("""{"rules": [{"name": "A", "metric": "m", "threshold": 1, "treshold": 2}]}""", "rules.json"));
        Assert.Contains("rules[0]", unknown.Message);
        Assert.Contains("'treshold' is not a field of a rule", unknown.Message);
        foreach (var (json, expected) in new[]
        {
            ("""{"rules": {}}""", "a list ([...])"),
            ("""{"rules": [{"name": "A", "metric": "m", "threshold": "x"}]}""", "a number"),
            ("""{"rules": [{"name": "A", "metric": "m", "threshold": 1, "match": []}]}""", "an object ({...})"),
            ("""{"rulez": []}""", "'rulez' is not a field of the rule file"),
            ("""[]""", "the rule file"),
        })
        {
            var m = Assert.Throws<ArgumentException>(() => AlertRules.Parse(json, "rules.json")).Message;
            Assert.Contains(expected, m);
            Assert.DoesNotContain("System.", m);
            Assert.DoesNotContain("BitNetSharp.", m);
        }
    }

    [Fact]
    public void CountersAlertOnTheirIncrease()
    {
        double total = 5;
        var clock = new ManualTime();
        using var e = Engine(new AlertRule { Name = "C", Metric = "c_total", Aggregate = "increase", Op = ">", Threshold = 0, WindowSeconds = 0.3 }, () => total,
            new AlertEngineOptions { Time = clock }, metric: "c_total");
        e.Evaluate(); // first look: the baseline, no increase
        Assert.Empty(e.Firing);
        total = 6;
        clock.Advance(0.1);
        e.Evaluate();
        Assert.Single(e.Firing);
        clock.Advance(0.1);
        e.Evaluate();
        Assert.Single(e.Firing); // still inside the window (a wall-clock test lost this to a 0.3 s stall)
        clock.Advance(0.4);
        e.Evaluate();
        Assert.Empty(e.Firing); // the growth left the window
        total = 0; // a restart: the counter starts over, no negative growth
        e.Evaluate();
        Assert.Empty(e.Firing);
        total = 2;
        e.Evaluate();
        Assert.Single(e.Firing);
    }

    /// <summary>
    /// Increase is taken per series, then summed, as sum(increase(...)) in Prometheus: over the sum, a series that vanished
    /// (a label value no longer reported) made the others read as a reset and count their whole value again.
    /// </summary>
    [Fact]
    public void IncreaseIsPerSeriesSoAVanishedSeriesIsNoGrowth()
    {
        bool both = true;
        double a = 50;
        var clock = new ManualTime();
        using var e = new AlertEngine([new AlertRule { Name = "C", Metric = "c_total", Aggregate = "increase", Op = ">", Threshold = 0, WindowSeconds = 10 }],
            s =>
            {
                s.Add("c_total", a, "code", "a");
                if (both) s.Add("c_total", 100, "code", "b");
            }, new AlertEngineOptions { Time = clock });
        e.Evaluate();
        both = false; // "b" is no longer reported; "a" did not move
        clock.Advance(1);
        e.Evaluate();
        Assert.Empty(e.Firing); // it read 50 of growth
        a = 52;
        clock.Advance(1);
        e.Evaluate();
        Assert.Equal(2, Assert.Single(e.Firing).Value, 9);
    }

    /// <summary>
    /// A counter that went down was reset and counted up again: 5, then 3, is an increase of 3, as Prometheus reads it.
    /// Starting over read 0, so the events right after a reset never fired.
    /// </summary>
    [Fact]
    public void ACounterResetCountsItsNewValueAsGrowth()
    {
        double total = 5;
        var clock = new ManualTime();
        using var e = Engine(new AlertRule { Name = "C", Metric = "c_total", Aggregate = "increase", Op = ">", Threshold = 2, WindowSeconds = 10 }, () => total,
            new AlertEngineOptions { Time = clock }, metric: "c_total");
        e.Evaluate();
        total = 3;
        clock.Advance(1);
        e.Evaluate();
        Assert.Single(e.Firing); // 3 > 2
        total = 4;
        clock.Advance(1);
        e.Evaluate();
        Assert.Single(e.Firing); // 4 in the window
        clock.Advance(20);
        e.Evaluate();
        Assert.Empty(e.Firing);
    }

    [Fact]
    public void MatchExcludesSeriesAndSumsAddMetrics()
    {
        var rule = new AlertRule { Name = "U", Metric = "u", Aggregate = "max", Op = ">", Threshold = 0.6, Match = new() { ["input"] = "!down" } };
        using var e = new AlertEngine([rule, new AlertRule { Name = "Q", Metric = "w", DivideBy = "cap", Aggregate = "sum", Op = ">", Threshold = 0.9 },
            new AlertRule { Name = "S", Metric = "a + b", Aggregate = "sum", Op = ">=", Threshold = 3 }], s =>
        {
            s.Add("u", 0.95, "layer", "0", "input", "down");
            s.Add("u", 0.2, "layer", "0", "input", "qkv");
            s.Add("w", 10);
            s.Add("cap", 10);
            s.Add("a", 1);
            s.Add("b", 2);
        });
        e.Evaluate();
        Assert.Equal(["Q", "S"], e.Firing.Select(f => f.Rule.Name).Order());
    }

    /// <summary>
    /// A max or min rule names the series behind its value: the built-in blow-up rule read "... = 7643.35 > 8" with no
    /// layer, and the layer was only in /metrics' labels. The log, the webhook (description and a "series" annotation)
    /// and the state say it, without the labels the rule's match fixes (bits="8"); the first NaN series is the one
    /// named when the value is NaN; a sum names none.
    /// </summary>
    [Fact]
    public void AMaxRuleNamesTheSeriesBehindItsValue()
    {
        var lines = new List<string>();
        double layer4 = 2;
        var blowUp = AlertRules.Default.Single(r => r.Name == "BitNetResidualBlowUp") with { For = 1 };
        var saturation = AlertRules.Default.Single(r => r.Name == "BitNetActivationSaturation") with { For = 1 };
        var total = new AlertRule { Name = "Total", Metric = "bitnet_health_residual_relative_change_ratio", Aggregate = "sum", Op = ">", Threshold = 8 };
        using var e = new AlertEngine([blowUp, saturation, total], s =>
        {
            s.Add("bitnet_health_residual_relative_change_ratio", 30, "layer", "0"); // excluded by the rule's match
            s.Add("bitnet_health_residual_relative_change_ratio", 7643.35, "layer", "3");
            s.Add("bitnet_health_residual_relative_change_ratio", layer4, "layer", "4");
            s.Add("bitnet_health_activation_saturation_ratio", 0.01, "layer", "1", "input", "qkv", "bits", "8");
            s.Add("bitnet_health_activation_saturation_ratio", 0.2, "layer", "2", "input", "down", "bits", "8");
            s.Add("bitnet_health_activation_saturation_ratio", 0.9, "layer", "5", "input", "o", "bits", "4"); // not 8 bits
        }, new AlertEngineOptions { Log = lines.Add });
        e.Evaluate();
        Assert.Contains(lines, l => l.StartsWith("alert BitNetResidualBlowUp FIRING (critical): bitnet_health_residual_relative_change_ratio = 7643.35 at {layer=\"3\"} > 8.", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.Contains("= 0.2 at {layer=\"2\",input=\"down\"} > 0.05.", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("alert Total FIRING (warning): bitnet_health_residual_relative_change_ratio = 7675.35 > 8.", StringComparison.Ordinal));
        var firing = e.Firing.ToDictionary(f => f.Rule.Name);
        Assert.Equal(["layer", "3"], firing["BitNetResidualBlowUp"].At);
        Assert.Null(firing["Total"].At);
        var annotations = e.WebhookPayload(firing["BitNetResidualBlowUp"])["alerts"]![0]!["annotations"]!;
        Assert.Equal("{layer=\"3\"}", annotations["series"]!.GetValue<string>());
        Assert.Contains("Value: 7643.35 at {layer=\"3\"} (", annotations["description"]!.GetValue<string>());
        Assert.Null(e.WebhookPayload(firing["Total"])["alerts"]![0]!["annotations"]!["series"]);

        layer4 = double.NaN; // NaN from layer 4 on: the value is NaN, and layer 4 is named
        e.Evaluate();
        Assert.Equal(["layer", "4"], e.States.Single(x => x.Rule.Name == "BitNetResidualBlowUp").At);
        Assert.True(double.IsNaN(e.States.Single(x => x.Rule.Name == "BitNetResidualBlowUp").Value));
    }

    [Fact]
    public void NaNTripsThresholdRules()
    {
        using var e = Engine(new AlertRule { Name = "N", Metric = "m", Op = ">", Threshold = 8 }, () => double.NaN);
        e.Evaluate();
        Assert.Single(e.Firing);
    }

    [Fact]
    public void MissingSignalsKeepTheState()
    {
        using var e = new AlertEngine([new AlertRule { Name = "R", Metric = "absent", Threshold = 0 }], _ => { });
        e.Evaluate();
        Assert.Empty(e.Firing);
        Assert.Equal(1, e.Evaluations);
    }

    /// <summary>With the collector's names known, a rule on any other name (a typo, a histogram) is refused instead of never firing.</summary>
    [Fact]
    public void RulesOnUnknownMetricsAreRefusedWhenTheNamesAreKnown()
    {
        string[] known = ["a_total", "b", "cap"];
        var options = new AlertEngineOptions { KnownMetrics = known };
        using (new AlertEngine([new AlertRule { Name = "Ok", Metric = "a_total + b", DivideBy = "cap", Threshold = 0 }], _ => { }, options)) { }
        var e = Assert.Throws<ArgumentException>(() => new AlertEngine([new AlertRule { Name = "Typo", Metric = "a_totl", Threshold = 0 }], _ => { }, options));
        Assert.Contains("rule 'Typo'", e.Message);
        Assert.Contains("\"metric\" names 'a_totl'", e.Message);
        Assert.Contains("Did you mean 'a_total'?", e.Message);
        Assert.Contains("a_total, b, cap", e.Message);
        e = Assert.Throws<ArgumentException>(() => new AlertEngine([new AlertRule { Name = "Sum", Metric = "a_total + nope", Threshold = 0 }], _ => { }, options));
        Assert.Contains("'nope'", e.Message);
        Assert.DoesNotContain("Did you mean", e.Message);
        e = Assert.Throws<ArgumentException>(() => new AlertEngine([new AlertRule { Name = "Ratio", Metric = "b", DivideBy = "capacity", Threshold = 0 }], _ => { }, options));
        Assert.Contains("\"divide_by\" names 'capacity'", e.Message);
        // Without the names (a collector of the caller's own), any name is taken, as before.
        using (new AlertEngine([new AlertRule { Name = "Any", Metric = "whatever", Threshold = 0 }], _ => { })) { }
    }

    [Theory]
    [InlineData("{", "not a valid rule file")]
    [InlineData("{\"rules\": [{\"name\": \"a\", \"metric\": \"m\", \"threshold\": 1, \"op\": \"=>\"}]}", "\"op\"")]
    [InlineData("{\"rules\": [{\"name\": \"a\", \"metric\": \"m\", \"threshold\": 1, \"for\": 0}]}", "\"for\"")]
    [InlineData("{\"rules\": [{\"name\": \"a\", \"metric\": \"m\", \"threshold\": 1, \"aggregate\": \"p99\"}]}", "\"aggregate\"")]
    [InlineData("{\"rules\": [{\"name\": \"a\", \"metric\": \"m\", \"threshold\": 1}, {\"name\": \"a\", \"metric\": \"n\", \"threshold\": 1}]}", "used twice")]
    [InlineData("{\"rules\": [{\"name\": \"a\", \"metric\": \"m\"}]}", "threshold")] // it read "m > 0"
    [InlineData("{\"rules\": [{\"name\": \"a\", \"metric\": \"m\", \"treshold\": 1}]}", "not a valid rule file")]
    [InlineData("{}", "no \"rules\"")]
    public void BadRuleFilesAreRefusedClearly(string json, string expected)
    {
        var ex = Assert.Throws<ArgumentException>(() => AlertRules.Parse(json, "rules.json"));
        Assert.Contains("rules.json", ex.Message);
        Assert.Contains(expected, ex.Message);
    }

    [Fact]
    public void RuleFilesLoadAndTheDefaultsAreValid()
    {
        string path = Path.Combine(Path.GetTempPath(), $"bitnet-rules-{Guid.NewGuid():N}.json");
        File.WriteAllText(path, """
            // comments and trailing commas are fine
            {"rules": [{"name": "Sat", "metric": "bitnet_health_activation_saturation_ratio", "op": ">", "threshold": 0.1, "for": 2, "severity": "critical", "match": {"input": "qkv"},},]}
            """);
        try
        {
            var rules = AlertRules.Load(path);
            Assert.Equal("Sat", Assert.Single(rules).Name);
            Assert.Equal(2, rules[0].For);
        }
        finally
        {
            File.Delete(path);
        }
        Assert.Throws<ArgumentException>(() => AlertRules.Load(path));
        Assert.Equal(9, AlertRules.Default.Count);
        foreach (var r in AlertRules.Default) r.Validate("defaults");
    }

    /// <summary>
    /// A key given twice is refused, naming the file: the last one won, so a stray "rules": [] at the end loaded no rule
    /// at all (the built-in ones replaced: no alerting) and a second "threshold" quietly replaced the first.
    /// </summary>
    [Theory]
    [InlineData("""{"rules":[{"name":"a","metric":"bitnet_requests_running","threshold":1}], "rules": []}""")]
    [InlineData("""{"rules":[{"name":"a","metric":"bitnet_requests_running","threshold":1000,"threshold":-1}]}""")]
    public void ARuleFileWithAKeyGivenTwiceIsRefused(string json)
    {
        string path = Path.Combine(Path.GetTempPath(), $"bitnet-rules-{Guid.NewGuid():N}.json");
        File.WriteAllText(path, json);
        try
        {
            var e = Assert.Throws<ArgumentException>(() => AlertRules.Load(path));
            Assert.Contains(path, e.Message);
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>A firing and a resolved alert reach a webhook in Alertmanager's JSON shape.</summary>
    [Fact]
    public async Task WebhookGetsAlertmanagerJson()
    {
        using var listener = ListenForHook(out int port);
        double v = 5;
        // A clock far from the wall clock: endsAt came from DateTimeOffset.UtcNow and startsAt from the engine's clock,
        // so a resolved alert could end before it started.
        var clock = new ManualTime();
        clock.Advance(75.0 * 365 * 86400);
        using var e = Engine(new AlertRule { Name = "Hot", Metric = "m", Op = ">", Threshold = 1, Severity = "critical", Component = "model", Summary = "too hot" }, () => v,
            new AlertEngineOptions { WebhookUrl = new Uri($"http://127.0.0.1:{port}/hook/"), Labels = new Dictionary<string, string> { ["instance"] = "test" }, Time = clock });
        e.Evaluate();
        v = 0;
        clock.Advance(3);
        e.Evaluate();
        var bodies = new List<JsonDocument>();
        for (int i = 0; i < 2; i++)
        {
            var ctx = await listener.GetContextAsync().WaitAsync(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken);
            Assert.Equal("POST", ctx.Request.HttpMethod);
            // A Content-Length, not a chunked body: some receivers read nothing of a chunked one and still answer 200.
            Assert.True(ctx.Request.ContentLength64 > 0, $"Content-Length {ctx.Request.ContentLength64}, Transfer-Encoding '{ctx.Request.Headers["Transfer-Encoding"]}'");
            Assert.Null(ctx.Request.Headers["Transfer-Encoding"]);
            bodies.Add(await JsonDocument.ParseAsync(ctx.Request.InputStream, cancellationToken: TestContext.Current.CancellationToken));
            ctx.Response.StatusCode = 200;
            ctx.Response.Close();
        }
        var firing = bodies[0].RootElement;
        Assert.Equal("4", firing.GetProperty("version").GetString());
        Assert.Equal("firing", firing.GetProperty("status").GetString());
        var alert = firing.GetProperty("alerts")[0];
        Assert.Equal("Hot", alert.GetProperty("labels").GetProperty("alertname").GetString());
        Assert.Equal("critical", alert.GetProperty("labels").GetProperty("severity").GetString());
        Assert.Equal("test", alert.GetProperty("labels").GetProperty("instance").GetString());
        Assert.Equal("too hot", alert.GetProperty("annotations").GetProperty("summary").GetString());
        Assert.True(DateTimeOffset.TryParse(alert.GetProperty("startsAt").GetString(), out _));
        Assert.Equal("resolved", bodies[1].RootElement.GetProperty("status").GetString());
        var resolved = bodies[1].RootElement.GetProperty("alerts")[0];
        var started = DateTimeOffset.Parse(resolved.GetProperty("startsAt").GetString()!, System.Globalization.CultureInfo.InvariantCulture);
        var ended = DateTimeOffset.Parse(resolved.GetProperty("endsAt").GetString()!, System.Globalization.CultureInfo.InvariantCulture);
        Assert.Equal(TimeSpan.FromSeconds(3), ended - started);
        for (int i = 0; i < 600 && e.WebhookSent < 2; i++) await Task.Delay(50, TestContext.Current.CancellationToken);
        Assert.Equal(2, e.WebhookSent);
    }

    /// <summary>
    /// Two servers on one machine are two instances in their alerts (the machine's name and the port), and each alert
    /// links to its server's dashboard: both carried the machine's name alone, so a receiver deduplicating on the
    /// labels let one server's "resolved" clear the other's "firing", and externalURL was empty.
    /// </summary>
    [Fact]
    public async Task ServersOnOneMachineAreTwoInstancesInTheirAlerts()
    {
        using var listener = ListenForHook(out int port);
        var rule = new AlertRule { Name = "Always", Metric = "bitnet_requests_running", Op = ">=", Threshold = 0, Severity = "info", Component = "serving" };
        var configure = (BitNetSharp.Server.ServerOptions o) => o with
        {
            Monitoring = new BitNetSharp.Server.MonitoringOptions { AlertInterval = TimeSpan.FromMilliseconds(50), AlertRules = [rule], AlertWebhook = new Uri($"http://127.0.0.1:{port}/hook/") },
        };
        await using var a = await Server.TestServer.StartAsync(configure);
        await using var b = await Server.TestServer.StartAsync(configure);
        var seen = new Dictionary<string, string>();
        while (seen.Count < 2)
        {
            var ctx = await listener.GetContextAsync().WaitAsync(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken);
            using var body = await JsonDocument.ParseAsync(ctx.Request.InputStream, cancellationToken: TestContext.Current.CancellationToken);
            ctx.Response.StatusCode = 200;
            ctx.Response.Close();
            var alert = body.RootElement.GetProperty("alerts")[0];
            seen[alert.GetProperty("labels").GetProperty("instance").GetString()!] = body.RootElement.GetProperty("externalURL").GetString()!;
        }
        foreach (var s in new[] { a, b })
        {
            string instance = $"{Environment.MachineName}:{s.Server.Address.Port}";
            Assert.True(seen.ContainsKey(instance), $"no alert from {instance}: {string.Join(", ", seen.Keys)}");
            Assert.Equal($"http://127.0.0.1:{s.Server.Address.Port}/dashboard", seen[instance]);
        }
    }

    /// <summary>
    /// A rule matching a layer the served model does not have fails the load, saying so in /health's error: it loaded
    /// (the file is read before the model is known) and could never fire.
    /// </summary>
    [Fact]
    public async Task ARuleOnALayerTheModelLacksFailsTheLoad()
    {
        var rule = new AlertRule { Name = "SatLayer99", Metric = "bitnet_health_activation_saturation_ratio", Match = new() { ["layer"] = "99" }, Op = ">=", Threshold = 0 };
        await using var s = await Server.TestServer.StartAsync(o => o with { Monitoring = new BitNetSharp.Server.MonitoringOptions { AlertRules = [rule] } }, waitReady: false);
        string body = "";
        await Server.TestServer.EventuallyAsync(async () =>
        {
            using var health = await s.Http.GetAsync("health", TestContext.Current.CancellationToken);
            body = await health.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
            return health.StatusCode == HttpStatusCode.InternalServerError;
        }, "the load to fail");
        Assert.Contains("alert rules: rule 'SatLayer99' matches layer 99", body);
        Assert.Contains("2 layers (0 to 1)", body);
    }

    /// <summary>
    /// Given rules whose bits match no input of this model, or whose negation excludes nothing or keeps nothing, are
    /// warned about with the rule named ("!99" kept every layer and "bits": "4" on an 8-bit model loaded without a word
    /// and could never fire); a rule file shared with other models still loads. A layer the model lacks fails the load.
    /// </summary>
    [Theory]
    [InlineData("layer", "!99", 2, "matches \"!99\" (every layer but 99), but tiny has 2 layers (0 to 1): the match excludes nothing here.")]
    [InlineData("layer", "!0", 1, "matches \"!0\" (every layer but 0), but tiny has 1 layers (0 to 0): it cannot fire on this model.")]
    [InlineData("bits", "4", 2, "matches bits 4, but tiny's inputs run at 8 bits (its activation bits): it cannot fire on this model.")]
    [InlineData("bits", "!4", 2, "matches \"!4\" (every width but 4), but tiny's inputs run at 8 bits (its activation bits): the match excludes nothing here.")]
    [InlineData("bits", "!8", 2, "matches \"!8\" (every width but 8), but tiny's inputs run at 8 bits (its activation bits): it cannot fire on this model.")]
    [InlineData("layer", "1", 2, null)]
    [InlineData("layer", "!1", 2, null)]
    [InlineData("bits", "8", 2, null)]
    public void ALayerOrBitsMatchTheModelCannotMeetIsWarned(string label, string value, int layers, string? expected)
    {
        AlertRule[] rules = [new() { Name = "R", Metric = "bitnet_health_activation_saturation_ratio", Match = new() { [label] = value }, Op = ">", Threshold = 0 }];
        var warnings = BitNetSharp.Server.ModelMonitor.CheckRulesFitModel(rules, "rules.json", "tiny", layers, BitNetSharp.Model.ActivationBits.Uniform(layers));
        if (expected is null) Assert.Empty(warnings);
        else Assert.Equal("rules.json: rule 'R' " + expected, Assert.Single(warnings));
        // A model at mixed widths: a 4-bit input makes "bits": "4" a match that can fire.
        Assert.Empty(BitNetSharp.Server.ModelMonitor.CheckRulesFitModel([new() { Name = "F", Metric = "bitnet_health_activation_saturation_ratio", Match = new() { ["bits"] = "4" }, Op = ">", Threshold = 0 }],
            "rules.json", "tiny", 2, BitNetSharp.Model.ActivationBits.Parse("qkv=4", 2)));
    }

    /// <summary>
    /// The built-in rules (bits="8", layers after 0) are not held to the model: a model whose every input runs at 4 bits,
    /// or of one layer, serves (both failed their load once given rules were checked against the model).
    /// </summary>
    [Theory]
    [InlineData(2, "4")]
    [InlineData(1, "8")]
    public async Task TheBuiltInRulesServeAnyModel(int layers, string bits)
    {
        await using var s = await Server.TestServer.StartAsync(o => o, layers: layers, load: () =>
        {
            var (w, tokenizer) = Server.TinyChatModel.Load(layers: layers);
            w.ActivationBits = BitNetSharp.Model.ActivationBits.Parse(bits, layers);
            return new BitNetSharp.Server.LoadedModel(w, tokenizer, Server.TestServer.ModelId);
        });
        var (status, _, _) = await s.PostAsync("v1/completions", new { model = Server.TestServer.ModelId, prompt = "hi", max_tokens = 2 });
        Assert.Equal(HttpStatusCode.OK, status);
    }

    /// <summary>
    /// An alert still firing when the engine stops ends in the log and for every Changed handler (the telemetry log) too,
    /// with or without a webhook: only the webhook heard of it, so a log's last word on the alert was "firing".
    /// </summary>
    [Fact]
    public void AnAlertFiringAtShutdownEndsInTheLogAndForTheHandlers()
    {
        var logs = new List<string>();
        var changes = new List<bool>();
        var e = Engine(new AlertRule { Name = "Hot", Metric = "m", Op = ">", Threshold = 1 }, () => 5, new AlertEngineOptions { Log = logs.Add });
        e.Changed += c => changes.Add(c.Firing);
        e.Evaluate();
        e.Dispose();
        e.Dispose();
        Assert.Equal([true, false], changes);
        Assert.Contains(logs, l => l.Contains("alert Hot resolved: the server stopped; m = 5", StringComparison.Ordinal)); // with the last value
    }

    /// <summary>
    /// An alert still firing when the engine stops is sent resolved: its instance label names this process, so no later
    /// one would resolve it, and the receiver held the incident open for ever.
    /// </summary>
    [Fact]
    public async Task AnAlertFiringAtShutdownIsSentResolved()
    {
        using var listener = ListenForHook(out int port);
        var e = Engine(new AlertRule { Name = "Hot", Metric = "m", Op = ">", Threshold = 1 }, () => 5,
            new AlertEngineOptions { WebhookUrl = new Uri($"http://127.0.0.1:{port}/hook/") });
        e.Evaluate();
        var statuses = new List<(string Status, string Description)>();
        async Task Receive()
        {
            var ctx = await listener.GetContextAsync().WaitAsync(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken);
            using var body = await JsonDocument.ParseAsync(ctx.Request.InputStream, cancellationToken: TestContext.Current.CancellationToken);
            var alert = body.RootElement.GetProperty("alerts")[0];
            statuses.Add((alert.GetProperty("status").GetString()!, alert.GetProperty("annotations").GetProperty("description").GetString()!));
            // One alert per payload: the common annotations are its own (they lacked the shutdown's reason).
            Assert.Equal(alert.GetProperty("annotations").GetProperty("description").GetString(),
                body.RootElement.GetProperty("commonAnnotations").GetProperty("description").GetString());
            ctx.Response.StatusCode = 200;
            ctx.Response.Close();
        }
        await Receive();
        var disposing = Task.Run(e.Dispose, TestContext.Current.CancellationToken);
        await Receive();
        await disposing.WaitAsync(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken);
        Assert.Equal("firing", statuses[0].Status);
        Assert.Equal("resolved", statuses[1].Status);
        Assert.Contains("server stopped", statuses[1].Description);
        Assert.Equal(0, e.WebhookFailures);
    }

    /// <summary>A resolution at shutdown says why (the telemetry log's read as if the condition had cleared).</summary>
    [Fact]
    public void AShutdownResolutionSaysTheServerStopped()
    {
        double v = 5;
        var e = Engine(new AlertRule { Name = "Hot", Metric = "m", Threshold = 1 }, () => v);
        var changes = new List<AlertState>();
        e.Changed += changes.Add;
        e.Evaluate();
        v = 0;
        e.Evaluate();
        v = 7;
        e.Evaluate();
        e.Dispose();
        Assert.Equal([true, false, true, false], changes.Select(c => c.Firing));
        Assert.Null(changes[1].Reason); // cleared
        Assert.Equal("the server stopped", changes[3].Reason);
        Assert.Equal(7, changes[3].Value);
    }

    /// <summary>
    /// Three alerts firing at shutdown reach a receiver that answers each POST in 2.5 s: the flush waits for them (a
    /// fixed 5 s cancelled the third, which stayed firing at the receiver for ever).
    /// </summary>
    [Fact]
    public async Task ShutdownResolutionsReachASlowReceiver()
    {
        using var listener = ListenForHook(out int port);
        var e = new AlertEngine([new AlertRule { Name = "A", Metric = "m", Op = ">", Threshold = 1 }, new AlertRule { Name = "B", Metric = "m", Op = ">", Threshold = 1 }, new AlertRule { Name = "C", Metric = "m", Op = ">", Threshold = 1 }],
            s => s.Add("m", 5), new AlertEngineOptions { WebhookUrl = new Uri($"http://127.0.0.1:{port}/hook/") });
        e.Evaluate();
        var received = new List<(string Name, string Status)>();
        async Task Receive(TimeSpan delay)
        {
            var ctx = await listener.GetContextAsync().WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
            using var body = await JsonDocument.ParseAsync(ctx.Request.InputStream, cancellationToken: TestContext.Current.CancellationToken);
            var alert = body.RootElement.GetProperty("alerts")[0];
            lock (received) received.Add((alert.GetProperty("labels").GetProperty("alertname").GetString()!, alert.GetProperty("status").GetString()!));
            await Task.Delay(delay, TestContext.Current.CancellationToken);
            ctx.Response.StatusCode = 200;
            ctx.Response.Close();
        }
        for (int i = 0; i < 3; i++) await Receive(TimeSpan.Zero);
        var disposing = Task.Run(e.Dispose, TestContext.Current.CancellationToken);
        for (int i = 0; i < 3; i++) await Receive(TimeSpan.FromSeconds(2.5));
        await disposing.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        Assert.Equal(["A", "B", "C"], received.Where(r => r.Status == "resolved").Select(r => r.Name).Order());
        Assert.Equal(0, e.WebhookFailures);
    }

    [Fact]
    public async Task AnUnreachableWebhookIsCountedNotThrown()
    {
        double v = 5;
        using var e = Engine(new AlertRule { Name = "Hot", Metric = "m", Threshold = 1 }, () => v,
            new AlertEngineOptions { WebhookUrl = new Uri($"http://127.0.0.1:{FreePort()}/nobody/"), WebhookRetryDelay = TimeSpan.FromMilliseconds(10) });
        e.Evaluate();
        for (int i = 0; i < 600 && e.WebhookFailures == 0; i++) await Task.Delay(50, TestContext.Current.CancellationToken);
        Assert.Equal(1, e.WebhookFailures);
        Assert.Single(e.Firing);
    }

    /// <summary>
    /// A receiver that answers 500 to everything holds a stop for two tries a notification once the flush begins: the
    /// alert's last resolution is still sent and the stop ends. The back-off ran on (1, 2, 4 s...) and the flush's budget
    /// ran out before the resolution was tried: a dead receiver held every stop 12-16 s, and cut short drains at the
    /// serve deadline (exit 1, the telemetry log without its footer).
    /// </summary>
    [Fact]
    public async Task AStopGivesAFailingReceiverTwoTriesANotification()
    {
        using var listener = ListenForHook(out int port);
        var seen = new List<string>();
        var serving = ServeHook(listener, async ctx =>
        {
            using (var body = await JsonDocument.ParseAsync(ctx.Request.InputStream))
                lock (seen) seen.Add(body.RootElement.GetProperty("status").GetString()!);
            ctx.Response.StatusCode = 500;
            ctx.Response.Close();
        });
        var log = new List<string>();
        var e = Engine(new AlertRule { Name = "Hot", Metric = "m", Threshold = 1 }, () => 5,
            new AlertEngineOptions { WebhookUrl = new Uri($"http://127.0.0.1:{port}/hook/"), Log = l => { lock (log) log.Add(l); } });
        e.Evaluate();
        for (int i = 0; i < 400 && Count() == 0; i++) await Task.Delay(25, TestContext.Current.CancellationToken);
        Assert.InRange(Count(), 1, 2); // a second try comes after the 1 s back-off, should this thread run that late
        await Task.Run(e.Dispose, TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken);
        listener.Stop();
        await serving.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        lock (seen)
        {
            // The firing: its first try (and a second or third, should the stop come after its 1 s and 2 s back-offs on
            // a loaded machine), then two in the flush; the resolution: two.
            Assert.InRange(seen.Count(x => x == "firing"), 3, 5);
            Assert.Equal(["resolved", "resolved"], seen.Skip(seen.Count - 2));
            Assert.Equal(seen.Count - 2, seen.Count(x => x == "firing"));
        }
        Assert.Equal(2, e.WebhookFailures);
        lock (log) Assert.Contains(log, l => l.Contains("the server is stopping", StringComparison.Ordinal));
        int Count() { lock (seen) return seen.Count; }
    }

    /// <summary>A client error (404: a wrong path) is not sent again: five tries only delayed every later notification.</summary>
    [Fact]
    public async Task AClientErrorIsNotRetried()
    {
        using var listener = ListenForHook(out int port);
        int requests = 0;
        var serving = ServeHook(listener, ctx =>
        {
            Interlocked.Increment(ref requests);
            ctx.Response.StatusCode = 404;
            ctx.Response.Close();
            return Task.CompletedTask;
        });
        var log = new List<string>();
        using var e = Engine(new AlertRule { Name = "Hot", Metric = "m", Threshold = 1 }, () => 5,
            new AlertEngineOptions { WebhookUrl = new Uri($"http://127.0.0.1:{port}/hook/"), WebhookRetryDelay = TimeSpan.FromMilliseconds(20), Log = l => { lock (log) log.Add(l); } });
        e.Evaluate();
        for (int i = 0; i < 400 && e.WebhookFailures == 0; i++) await Task.Delay(25, TestContext.Current.CancellationToken);
        Assert.Equal(1, e.WebhookFailures);
        Assert.Equal(1, Volatile.Read(ref requests));
        lock (log) Assert.Contains(log, l => l.Contains("answered 404", StringComparison.Ordinal) && l.Contains("not tried again", StringComparison.Ordinal));
        listener.Stop();
        await serving.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
    }

    /// <summary>
    /// A receiver that answers 302 had its redirect followed with a GET that carries no alert: the 200 to that GET
    /// counted the notification as delivered, and it was lost without a word. It is a failure, logged with where it
    /// pointed, not sent again; a 307 keeps the POST and its body, and is delivered.
    /// </summary>
    [Theory]
    [InlineData(302, false)]
    [InlineData(301, false)]
    [InlineData(303, false)]
    [InlineData(307, true)]
    public async Task ARedirectThatDropsTheAlertIsAFailure(int status, bool delivered)
    {
        using var listener = ListenForHook(out int port);
        var seen = new List<string>();
        var serving = ServeHook(listener, async ctx =>
        {
            string body = await new StreamReader(ctx.Request.InputStream).ReadToEndAsync();
            lock (seen) seen.Add($"{ctx.Request.HttpMethod} {ctx.Request.Url!.AbsolutePath} {body.Length}");
            if (ctx.Request.Url!.AbsolutePath == "/hook/")
            {
                ctx.Response.StatusCode = status;
                ctx.Response.RedirectLocation = $"http://127.0.0.1:{port}/hook/moved";
            }
            ctx.Response.Close();
        });
        var log = new List<string>();
        using var e = Engine(new AlertRule { Name = "Hot", Metric = "m", Threshold = 1 }, () => 5,
            new AlertEngineOptions { WebhookUrl = new Uri($"http://127.0.0.1:{port}/hook/"), WebhookRetryDelay = TimeSpan.FromMilliseconds(20), Log = l => { lock (log) log.Add(l); } });
        e.Evaluate();
        for (int i = 0; i < 400 && e.WebhookFailures + e.WebhookSent == 0; i++) await Task.Delay(25, TestContext.Current.CancellationToken);
        await Task.Delay(100, TestContext.Current.CancellationToken);
        lock (seen)
        {
            Assert.Equal(2, seen.Count);
            Assert.StartsWith("POST /hook/ ", seen[0]);
            Assert.StartsWith(delivered ? "POST /hook/moved " : "GET /hook/moved 0", seen[1]);
        }
        Assert.Equal(delivered ? 0 : 1, e.WebhookFailures);
        Assert.Equal(delivered ? 1 : 0, e.WebhookSent);
        if (!delivered)
            lock (log) Assert.Contains(log, l => l.Contains($"redirected to http://127.0.0.1:{port}/hook/…", StringComparison.Ordinal) && l.Contains("not tried again", StringComparison.Ordinal));
        listener.Stop();
        await serving.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
    }

    /// <summary>
    /// user:password@ in the webhook URL is sent as basic auth (HttpClient sent nothing, so a receiver that asks for it
    /// refused every notification), with a User-Agent; the logs show the URL without the password or the query's token.
    /// </summary>
    [Fact]
    public async Task WebhookUserInfoIsBasicAuthAndNeverLogged()
    {
        using var listener = ListenForHook(out int port);
        var log = new List<string>();
        using var e = Engine(new AlertRule { Name = "Hot", Metric = "m", Threshold = 1 }, () => 5,
            new AlertEngineOptions
            {
                WebhookUrl = new Uri($"http://alice:s3cr%40t@127.0.0.1:{port}/hook/?token=abc"),
                WebhookRetryDelay = TimeSpan.FromMilliseconds(20),
                Log = l => { lock (log) log.Add(l); },
            });
        e.Evaluate();
        var headers = new List<(string? Auth, string? Agent)>();
        foreach (int code in new[] { 503, 200 })
        {
            var ctx = await listener.GetContextAsync().WaitAsync(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken);
            headers.Add((ctx.Request.Headers["Authorization"], ctx.Request.Headers["User-Agent"]));
            ctx.Response.StatusCode = code;
            ctx.Response.Close();
        }
        for (int i = 0; i < 600 && e.WebhookSent < 1; i++) await Task.Delay(50, TestContext.Current.CancellationToken);
        Assert.Equal(1, e.WebhookSent);
        Assert.All(headers, h => Assert.Equal("Basic " + Convert.ToBase64String("alice:s3cr@t"u8.ToArray()), h.Auth));
        Assert.All(headers, h => Assert.StartsWith("BitNetSharp/", h.Agent));
        lock (log)
        {
            var retry = Assert.Single(log, l => l.Contains("answered 503", StringComparison.Ordinal));
            Assert.Contains($"http://127.0.0.1:{port}/hook/?…", retry);
            Assert.DoesNotContain("s3cr", retry);
            Assert.DoesNotContain("alice", retry);
            Assert.DoesNotContain("token", retry);
        }
        listener.Stop();
        // A user alone is "user:" (RFC 7617), as curl sends it; a Slack-style secret path is cut after its first segment.
        Assert.Equal("alice:", AlertEngine.BasicCredentials("alice"));
        Assert.Equal("https://hooks.slack.com/services/…", AlertEngine.ShownUrl(new Uri("https://hooks.slack.com/services/T0/B0/XXXXSECRET")));
        Assert.Equal("http://host:9093/api/…?…", AlertEngine.ShownUrl(new Uri("http://u:p@host:9093/api/v2/alerts?k=v")));
        Assert.Equal("htps://…@host/x", BitNetSharp.Cli.Commands.ServeCommand.MaskUserInfo("htps://a:s3cret@host/x"));
        Assert.Equal("not a url", BitNetSharp.Cli.Commands.ServeCommand.MaskUserInfo("not a url"));
        // A URL without a path ended serve with "Index was out of range", exit 1, instead of the refusal naming it.
        Assert.Equal("mailto:x", AlertEngine.ShownUrl(new Uri("mailto:x")));
        var error = new StringWriter();
        Assert.Equal(2, BitNetSharp.Cli.Program.Run(["serve", "--alert-webhook", "mailto:x", "--port", "1"], new StringWriter(), error));
        Assert.Contains("--alert-webhook must be an http:// or https:// URL", error.ToString());
    }

    /// <summary>
    /// Only the status counts: a receiver whose answer's body never ends has still taken the notification (the body was
    /// read to its end, so a 200 with a slow or endless body timed out and was sent again, and a huge one was held in
    /// memory: 200 MB raised the server's RSS by 465 MB).
    /// </summary>
    [Fact]
    public async Task AReceiversBodyIsNeverRead()
    {
        using var listener = ListenForHook(out int port);
        using var e = Engine(new AlertRule { Name = "Hot", Metric = "m", Threshold = 1 }, () => 5,
            new AlertEngineOptions { WebhookUrl = new Uri($"http://127.0.0.1:{port}/hook/") });
        e.Evaluate();
        var ctx = await listener.GetContextAsync().WaitAsync(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken);
        ctx.Response.StatusCode = 200;
        ctx.Response.ContentLength64 = 1L << 30;
        await ctx.Response.OutputStream.WriteAsync(new byte[4096], TestContext.Current.CancellationToken);
        await ctx.Response.OutputStream.FlushAsync(TestContext.Current.CancellationToken);
        for (int i = 0; i < 1200 && e.WebhookSent < 1; i++) await Task.Delay(25, TestContext.Current.CancellationToken);
        Assert.Equal(1, e.WebhookSent);
        Assert.Equal(0, e.WebhookFailures);
        ctx.Response.Abort();
        listener.Stop(); // the engine's shutdown resolution then fails at once instead of waiting out the flush
    }

    /// <summary>The group key quotes the rule's name as Alertmanager does: a quote in it made a malformed key.</summary>
    [Fact]
    public void TheGroupKeyQuotesTheRuleName()
    {
        using var e = Engine(new AlertRule { Name = "Hot \"x\"", Metric = "m", Threshold = 1 }, () => 5);
        e.Evaluate();
        var payload = e.WebhookPayload(Assert.Single(e.Firing));
        Assert.Equal("{}:{alertname=\"Hot \\\"x\\\"\"}", payload["groupKey"]!.GetValue<string>());
    }

    [Fact]
    public void StopDeadlineAllowsTheAlertFlush()
    {
        Assert.Equal(TimeSpan.FromSeconds(11), BitNetSharp.Cli.Commands.ServeCommand.StopDeadline(1, webhook: false));
        Assert.True(BitNetSharp.Cli.Commands.ServeCommand.StopDeadline(1, webhook: true) >= TimeSpan.FromSeconds(11) + AlertEngine.MaxShutdownFlush);
    }

    /// <summary>Rule files with nulls or an empty divide_by are refused naming the rule (they crashed the server, or loaded and never fired).</summary>
    [Theory]
    [InlineData("{\"rules\": [null]}", "rule #1 is null")]
    [InlineData("{\"rules\": [{\"name\": \"a\", \"metric\": \"m\", \"threshold\": 1, \"match\": {\"input\": null}}]}", "\"match\"")]
    [InlineData("{\"rules\": [{\"name\": \"a\", \"metric\": \"m\", \"threshold\": 1, \"divide_by\": \" \"}]}", "\"divide_by\" is empty")]
    [InlineData("{\"rules\": [{\"name\": \"a\", \"metric\": \"m\", \"threshold\": 1, \"component\": null}]}", "\"component\" must be a non-empty string; got null")]
    [InlineData("{\"rules\": [{\"name\": \"a\", \"metric\": \"m\", \"threshold\": 1, \"severity\": null}]}", "\"severity\" must be info, warning or critical; got null")]
    public void NullsAndEmptyFieldsAreRefusedNamingTheRule(string json, string expected)
    {
        var ex = Assert.Throws<ArgumentException>(() => AlertRules.Parse(json, "rules.json"));
        Assert.Contains("rules.json", ex.Message);
        Assert.Contains(expected, ex.Message);
    }

    [Fact]
    public void DivideByIsReadTrimmedAndZeroOverZeroHoldsNoCondition()
    {
        double w = 10, cap = 10, accepted = 0, drafted = 0;
        using var e = new AlertEngine([
            new AlertRule { Name = "Q", Metric = "w", DivideBy = " cap", Aggregate = "sum", Op = ">", Threshold = 0.5 },
            new AlertRule { Name = "Accept", Metric = "accepted", DivideBy = "drafted", Aggregate = "sum", Op = "<", Threshold = 0.2 }],
            s => { s.Add("w", w); s.Add("cap", cap); s.Add("accepted", accepted); s.Add("drafted", drafted); },
            new AlertEngineOptions { KnownMetrics = ["w", "cap", "accepted", "drafted"] });
        e.Evaluate();
        // Nothing drafted (no --speculate): 0/0 is no acceptance rate, not a rate of 0 that fires for ever.
        Assert.Equal(["Q"], e.Firing.Select(f => f.Rule.Name));
        accepted = 1;
        drafted = 10;
        e.Evaluate();
        Assert.Equal(["Accept", "Q"], e.Firing.Select(f => f.Rule.Name).Order());
        accepted = drafted = 0;
        e.Evaluate();
        Assert.Equal(["Q"], e.Firing.Select(f => f.Rule.Name));
        w = 1;
        cap = 0; // x/0 is +Inf: over any threshold
        e.Evaluate();
        Assert.Equal(["Q"], e.Firing.Select(f => f.Rule.Name));
    }

    [Theory]
    [InlineData("max", "<")]
    [InlineData("min", ">")]
    [InlineData("max", ">")]
    [InlineData("avg", "<")]
    public void NaNInAnySeriesTripsTheRuleWhateverItsDirection(string aggregate, string op)
    {
        using var e = new AlertEngine([new AlertRule { Name = "N", Metric = "m", Aggregate = aggregate, Op = op, Threshold = 0.1 }], s =>
        {
            s.Add("m", 0.5, "layer", "0");
            s.Add("m", double.NaN, "layer", "1");
            s.Add("m", 0.05, "layer", "2");
        });
        e.Evaluate();
        Assert.True(double.IsNaN(Assert.Single(e.Firing).Value));
    }

    /// <summary>An increase window no longer than the evaluation interval still sees growth (its baseline used to be the new value itself).</summary>
    [Fact]
    public void AnIncreaseWindowShorterThanTheIntervalSeesGrowth()
    {
        double total = 0;
        using var e = Engine(new AlertRule { Name = "C", Metric = "c_total", Aggregate = "increase", Op = ">", Threshold = 0, WindowSeconds = 0.05 }, () => total, metric: "c_total");
        e.Evaluate();
        total = 1;
        Thread.Sleep(100);
        e.Evaluate();
        Assert.Single(e.Firing);
        Thread.Sleep(100);
        e.Evaluate();
        Assert.Empty(e.Firing);
    }

    /// <summary>
    /// Rules over sampled-step gauges count "for" in new samples: one bad sample followed by silence does not fire a
    /// "for: 2" rule however long the server idles, and a firing alert keeps its state until a new sample says otherwise.
    /// </summary>
    [Fact]
    public void SampledGaugesCountForInSamplesNotEvaluations()
    {
        double change = 1, samples = 0, latency = 1;
        using var e = new AlertEngine([
            new AlertRule { Name = "BlowUp", Metric = "change", Op = ">", Threshold = 8, For = 2 },
            new AlertRule { Name = "Jitter", Metric = "latency", Op = ">", Threshold = 0.5, For = 2 }],
            s => { s.Add("change", change); s.Add("samples_total", samples); s.Add("latency", latency); },
            new AlertEngineOptions { SampledMetrics = ["change"], SampleCounter = "samples_total" });
        samples = 1;
        change = 9; // one bad sample, then nothing new
        for (int i = 0; i < 5; i++) e.Evaluate();
        Assert.Equal(["Jitter"], e.Firing.Select(f => f.Rule.Name)); // a rule on other signals counts evaluations, as before
        samples = 2; // a second bad sample
        e.Evaluate();
        Assert.Equal(["BlowUp", "Jitter"], e.Firing.Select(f => f.Rule.Name).Order());
        change = 1; // the gauge moved without a new sample: not looked at
        e.Evaluate();
        Assert.Contains(e.Firing, f => f.Rule.Name == "BlowUp");
        samples = 3;
        e.Evaluate();
        Assert.DoesNotContain(e.Firing, f => f.Rule.Name == "BlowUp");
    }

    /// <summary>
    /// A gauge counted by its own counter (the latency spread, by delivered tokens) counts "for" only as the counter
    /// grows: an idle server's frozen jittery window no longer fires (it did, 5 s after one burst, and stayed firing).
    /// </summary>
    [Fact]
    public void CountedGaugesCountForOnlyAsTheirCounterGrows()
    {
        double tokens = 100, latency = 0.4;
        using var e = new AlertEngine([new AlertRule { Name = "Jitter", Metric = "latency", Op = ">", Threshold = 0.25, For = 3 }],
            s => { s.Add("latency", latency); s.Add("tokens_total", tokens); },
            new AlertEngineOptions { CountedMetrics = new Dictionary<string, string> { ["latency"] = "tokens_total" } });
        for (int i = 0; i < 10; i++) e.Evaluate();
        Assert.Empty(e.Firing); // one window, evaluated ten times: one observation
        for (int i = 0; i < 3; i++)
        {
            tokens += 5;
            e.Evaluate();
        }
        Assert.Single(e.Firing);
        latency = 0.01; // the spread fell without new tokens: not looked at
        e.Evaluate();
        Assert.Single(e.Firing);
        tokens++;
        e.Evaluate();
        Assert.Empty(e.Firing);
    }

    /// <summary>A notification the webhook refuses is sent again (it used to be dropped after one try).</summary>
    [Fact]
    public async Task ARefusedNotificationIsRetried()
    {
        using var listener = ListenForHook(out int port);
        using var e = Engine(new AlertRule { Name = "Hot", Metric = "m", Threshold = 1 }, () => 5,
            new AlertEngineOptions { WebhookUrl = new Uri($"http://127.0.0.1:{port}/hook/"), WebhookRetryDelay = TimeSpan.FromMilliseconds(20) });
        e.Evaluate();
        var statuses = new List<string>();
        foreach (int code in new[] { 503, 200 })
        {
            var ctx = await listener.GetContextAsync().WaitAsync(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken);
            using var body = await JsonDocument.ParseAsync(ctx.Request.InputStream, cancellationToken: TestContext.Current.CancellationToken);
            statuses.Add(body.RootElement.GetProperty("status").GetString()!);
            ctx.Response.StatusCode = code;
            ctx.Response.Close();
        }
        Assert.Equal(["firing", "firing"], statuses);
        for (int i = 0; i < 600 && e.WebhookSent < 1; i++) await Task.Delay(50, TestContext.Current.CancellationToken);
        Assert.Equal(1, e.WebhookSent);
        Assert.Equal(0, e.WebhookFailures);
    }

    /// <summary>Changes reach Changed handlers in the order they happened, even when evaluations overlap.</summary>
    [Fact]
    public async Task OverlappingEvaluationsPublishInOrder()
    {
        double v = 5;
        using var e = Engine(new AlertRule { Name = "Hot", Metric = "m", Threshold = 1 }, () => v);
        var order = new List<bool>();
        using var gate = new ManualResetEventSlim();
        using var inHandler = new ManualResetEventSlim();
        e.Changed += c =>
        {
            if (c.Firing)
            {
                inHandler.Set();
                gate.Wait(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
            }
            lock (order) order.Add(c.Firing);
        };
        var first = Task.Run(e.Evaluate, TestContext.Current.CancellationToken);
        Assert.True(inHandler.Wait(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken));
        v = 0;
        var second = Task.Run(e.Evaluate, TestContext.Current.CancellationToken);
        await Task.Delay(200, TestContext.Current.CancellationToken);
        gate.Set();
        await Task.WhenAll(first, second);
        Assert.Equal([true, false], order);
    }

    /// <summary>Answers every request to <paramref name="listener"/> with <paramref name="answer"/> until it stops.</summary>
    private static Task ServeHook(HttpListener listener, Func<HttpListenerContext, Task> answer) => Task.Run(async () =>
    {
        while (true)
        {
            HttpListenerContext ctx;
            try { ctx = await listener.GetContextAsync(); }
            catch (Exception ex) when (ex is HttpListenerException or ObjectDisposedException) { return; }
            await answer(ctx);
        }
    }, TestContext.Current.CancellationToken);

    /// <summary>
    /// An HttpListener on http://127.0.0.1:PORT/hook/ at a free port: another port when the probed one was taken before
    /// the listener bound it (an outgoing connection's ephemeral port), which failed the test.
    /// </summary>
    private static HttpListener ListenForHook(out int port)
    {
        for (int attempt = 1; ; attempt++)
        {
            var listener = new HttpListener();
            port = FreePort();
            listener.Prefixes.Add($"http://127.0.0.1:{port}/hook/");
            try
            {
                listener.Start();
                return listener;
            }
            catch (HttpListenerException) when (attempt < 5)
            {
                listener.Close();
            }
        }
    }

    internal static int FreePort()
    {
        var l = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    /// <summary>A clock the test moves.</summary>
    internal sealed class ManualTime : TimeProvider
    {
        private long _ticks = 1_000_000;
        public override long TimestampFrequency => 1_000_000;
        public override long GetTimestamp() => _ticks;
        public override DateTimeOffset GetUtcNow() => new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero).AddTicks(_ticks * 10);
        public void Advance(double seconds) => _ticks += (long)(seconds * TimestampFrequency);
    }
}
