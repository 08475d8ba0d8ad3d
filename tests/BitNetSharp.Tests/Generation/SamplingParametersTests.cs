using BitNetSharp.Generation.Sampling;

namespace BitNetSharp.Tests.Generation;

public class SamplingParametersTests
{
    public static TheoryData<string, SamplingParameters> Invalid() => new()
    {
        { nameof(SamplingParameters.Temperature), new() { Temperature = -0.1f } },
        { nameof(SamplingParameters.Temperature), new() { Temperature = float.NaN } },
        { nameof(SamplingParameters.Temperature), new() { Temperature = float.PositiveInfinity } },
        { nameof(SamplingParameters.TopK), new() { TopK = -1 } },
        { nameof(SamplingParameters.TopP), new() { TopP = 0f } },
        { nameof(SamplingParameters.TopP), new() { TopP = 1.01f } },
        { nameof(SamplingParameters.MinP), new() { MinP = -0.1f } },
        { nameof(SamplingParameters.MinP), new() { MinP = 1.5f } },
        { nameof(SamplingParameters.TypicalP), new() { TypicalP = 0f } },
        { nameof(SamplingParameters.RepetitionPenalty), new() { RepetitionPenalty = 0f } },
        { nameof(SamplingParameters.PresencePenalty), new() { PresencePenalty = float.NaN } },
        { nameof(SamplingParameters.FrequencyPenalty), new() { FrequencyPenalty = float.NegativeInfinity } },
        { nameof(SamplingParameters.PenaltyLastN), new() { PenaltyLastN = -2 } },
        { nameof(SamplingParameters.LogProbs), new() { LogProbs = -1 } },
        { nameof(SamplingParameters.LogProbs), new() { LogProbs = 11 } },
        { nameof(SamplingParameters.LogitBias), new() { LogitBias = new Dictionary<int, float> { [10] = 1f } } },
        { nameof(SamplingParameters.LogitBias), new() { LogitBias = new Dictionary<int, float> { [-1] = 1f } } },
        { nameof(SamplingParameters.LogitBias), new() { LogitBias = new Dictionary<int, float> { [2] = float.NaN } } },
        { nameof(SamplingParameters.LogitBias), new() { LogitBias = new Dictionary<int, float> { [2] = float.PositiveInfinity } } },
    };

    [Theory, MemberData(nameof(Invalid))]
    public void RejectsOutOfRangeSettingsNamingThem(string parameter, SamplingParameters p)
    {
        var e = Assert.Throws<ArgumentException>(() => new Sampler(p, 10));
        Assert.Equal(parameter, e.ParamName);
    }

    [Fact]
    public void AcceptsTheEdges()
    {
        new SamplingParameters { Temperature = 0f, TopP = 1f, MinP = 1f, TypicalP = 1f, PenaltyLastN = -1, LogProbs = 10,
            LogitBias = new Dictionary<int, float> { [9] = float.NegativeInfinity } }.Validate(10);
        new SamplingParameters().Validate(1);
        SamplingParameters.Greedy.Validate();
    }
}
