using BitNetSharp.Monitoring;

namespace BitNetSharp.Tests.Monitoring;

public class RepetitionTrackerTests
{
    [Fact]
    public void ALoopReadsOneAndFreshTextZero()
    {
        var loop = new RepetitionTracker();
        for (int i = 0; i < RepetitionTracker.MinTokens - 1; i++) loop.AddGenerated(i % 3);
        Assert.True(double.IsNaN(loop.Share)); // too few tokens to say
        for (int i = RepetitionTracker.MinTokens - 1; i < 200; i++) loop.AddGenerated(i % 3);
        Assert.Equal(1.0, loop.Share); // the window is all repeats of "0 1 2 0"
        // Fresh tokens push the repeats out of the window, one by one.
        var fresh = new RepetitionTracker();
        for (int i = 0; i < 200; i++) fresh.AddGenerated(i);
        Assert.Equal(0.0, fresh.Share);
        for (int i = 0; i < RepetitionTracker.Window / 2; i++) loop.AddGenerated(1000 + i);
        Assert.InRange(loop.Share, 0.45, 0.55);
    }

    /// <summary>The prompt's n-grams count as seen: output copying the prompt reads as repetition; the prompt itself is not output.</summary>
    [Fact]
    public void CopyingThePromptCounts()
    {
        var t = new RepetitionTracker();
        for (int i = 0; i < 40; i++) t.AddPrompt(i);
        Assert.True(double.IsNaN(t.Share));
        Assert.Equal(0, t.Generated);
        for (int i = 0; i < 40; i++) t.AddGenerated(i);
        Assert.Equal((40 - 3) / 40.0, t.Share); // the first three generated tokens end 4-grams that straddle the prompt's end
    }
}
