using BitNetSharp.Monitoring;

namespace BitNetSharp.Tests.Monitoring;

public class LatencyWindowTests
{
    /// <summary>A window of no values is refused when made: it threw DivideByZeroException at its first value.</summary>
    [Theory]
    [InlineData(0)]
    [InlineData(-3)]
    public void AnEmptyWindowIsRefused(int capacity) =>
        Assert.Contains("at least one", Assert.Throws<ArgumentOutOfRangeException>(() => new LatencyWindow(capacity)).Message);

    /// <summary>The spread is of the last Capacity values: older ones drop out.</summary>
    [Fact]
    public void TheWindowKeepsTheLastValues()
    {
        var w = new LatencyWindow(3);
        foreach (var v in new[] { 100.0, 1, 2, 3 }) w.Add(v);
        var (mean, sd) = w.Statistics();
        Assert.Equal(3, w.Count);
        Assert.Equal(2, mean, 12);
        Assert.Equal(Math.Sqrt(2.0 / 3), sd, 12);
    }
}
