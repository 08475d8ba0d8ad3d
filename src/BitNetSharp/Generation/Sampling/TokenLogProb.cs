namespace BitNetSharp.Generation.Sampling;

/// <summary>A token and its natural-log probability under the model's distribution.</summary>
public readonly record struct TokenLogProb(int Token, float LogProb);
