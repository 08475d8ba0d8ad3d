using BitNetSharp.Cli;
using BitNetSharp.Tests.Monitoring;

namespace BitNetSharp.Tests.Cli;

/// <summary>Progress on stderr where the bar cannot go (eval --json ran 12 minutes without a word).</summary>
public class ProgressLinesTests
{
    [Fact]
    public void ALogGetsALineEveryThirtySecondsWithTheTimeLeft()
    {
        var clock = new AlertEngineTests.ManualTime();
        var error = new StringWriter();
        var lines = new ProgressLines(error, "eval: windows scored", terminal: false, clock);
        lines.Report(0, 100);
        clock.Advance(10);
        lines.Report(10, 100);
        Assert.Equal("", error.ToString()); // under 30 s: nothing yet
        clock.Advance(20);
        lines.Report(25, 100);
        Assert.Equal("eval: windows scored: 25 of 100 (25%), about 90 s left" + Environment.NewLine, error.ToString());
        clock.Advance(60);
        lines.Report(50, 100);
        Assert.EndsWith("eval: windows scored: 50 of 100 (50%), about 90 s left" + Environment.NewLine, error.ToString());
        clock.Advance(600);
        lines.Report(100, 100); // the end is said by the result, not by a 100 % line
        lines.Done();
        Assert.Equal(2, error.ToString().Split(Environment.NewLine, StringSplitOptions.RemoveEmptyEntries).Length);
    }

    [Fact]
    public void ATerminalGetsOneLineRedrawnAndCleared()
    {
        var clock = new AlertEngineTests.ManualTime();
        var error = new StringWriter();
        var lines = new ProgressLines(error, "eval: windows scored", terminal: true, clock);
        lines.Report(0, 4000);
        clock.Advance(1);
        lines.Report(1000, 4000);
        clock.Advance(1);
        lines.Report(2000, 4000);
        lines.Done();
        string text = error.ToString();
        Assert.DoesNotContain('\n', text);
        Assert.Contains("\reval: windows scored: 1,000 of 4,000 (25%), about 3 s left", text);
        Assert.Contains("\reval: windows scored: 2,000 of 4,000 (50%), about 2 s left", text);
        Assert.EndsWith("\r", text); // cleared for what follows
    }
}
