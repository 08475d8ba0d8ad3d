using BitNetSharp.Generation;
using BitNetSharp.Generation.Sampling;
using BitNetSharp.Tests.Server;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Tests.Generation;

/// <summary>
/// A chat answer ends at the template's turn opener when it is one token that is not a stop token (ChatML's
/// &lt;|im_start|&gt;): ChatTemplate.StopTokens names it, and TextGenerator (bitnet chat) and the scheduler stop there.
/// </summary>
public class TurnOpenerStopTests
{
    [Fact]
    public void ChatMlNamesItsTurnOpener()
    {
        var (weights, tokenizer) = TinyChatModel.Load();
        using var _ = weights;
        Assert.Equal([TinyChatModel.ImStart], ChatTemplates.ChatMl.StopTokens(tokenizer));
        Assert.False(tokenizer.IsStopToken(TinyChatModel.ImStart));
    }

    [Fact]
    public void TextGeneratorStopsAtAnExtraStopToken()
    {
        var (weights, tokenizer) = TinyChatModel.Load();
        using var _ = weights;
        using var generator = new TextGenerator(weights, tokenizer, new GeneratorOptions { Threads = 1 });
        int[] prompt = [1, 2, 3];
        var free = generator.Generate(prompt, 6, SamplingParameters.Greedy, ignoreStop: true, cancellation: TestContext.Current.CancellationToken).ToList();
        int third = free[2].Id;
        generator.Reset();
        generator.StopTokenIds = [third];
        var stopped = generator.Generate(prompt, 6, SamplingParameters.Greedy, cancellation: TestContext.Current.CancellationToken).ToList();
        int at = free.FindIndex(t => t.Id == third);
        Assert.Equal(at + 1, stopped.Count);
        Assert.Equal(FinishReason.Stop, stopped[^1].Finish);
        generator.Reset();
        Assert.Equal(6, generator.Generate(prompt, 6, SamplingParameters.Greedy, ignoreStop: true, cancellation: TestContext.Current.CancellationToken).Count());
    }
}
