using BitNetSharp.Generation.Sampling;

namespace BitNetSharp.Generation.Speculative;

/// <summary>
/// The rejection rule that keeps speculative sampling exact (Leviathan et al. 2023, Chen et al. 2023). With p the
/// model's final sampling distribution at a position and q the draft's: accept the draft token x with probability
/// min(1, p(x)/q(x)); on rejection draw from max(0, p − q) renormalized. The emitted token is then distributed as p.
/// A deterministic draft (n-gram lookup, or a greedy draft model) is a point mass at x: accept with probability p(x),
/// else draw from p with x removed. The engines take that rule as a draw: the row's token drawn as plain sampling draws
/// it, x accepted iff it is that token (P = p(x); a rejection leaves p conditioned on not x), which for a seed gives
/// the tokens of decoding without speculation, whatever the load. At temperature 0, p is one-hot on the argmax, so both reduce to "accept iff x is
/// the argmax, else emit the argmax", exactly plain greedy decoding.
/// </summary>
public static class SpeculativeAcceptance
{
    /// <summary>
    /// Point-mass draft. <paramref name="p"/> is overwritten on rejection. Returns whether <paramref name="x"/> is
    /// accepted; otherwise <paramref name="token"/> is the replacement drawn from p without x.
    /// </summary>
    public static bool AcceptPointMass(Sampler sampler, Span<float> p, int x, out int token)
    {
        token = x;
        if (sampler.NextUniform() < p[x]) return true;
        p[x] = 0f;
        if (!AnyPositive(p)) return true; // p was all on x but for rounding: x is the only choice
        token = sampler.DrawFrom(p);
        return false;
    }

    /// <summary>
    /// Sampled draft: <paramref name="x"/> was drawn from <paramref name="q"/>. <paramref name="p"/> is overwritten
    /// on rejection with max(0, p − q). Returns whether x is accepted; otherwise <paramref name="token"/> is drawn
    /// from the normalized residual.
    /// </summary>
    public static bool AcceptSampled(Sampler sampler, Span<float> p, ReadOnlySpan<float> q, int x, out int token)
    {
        token = x;
        // u < p/q without dividing (q(x) > 0 as x was drawn from q; q(x) = 0 < p(x) would accept too).
        if (sampler.NextUniform() * q[x] < p[x]) return true;
        // The residual; if rounding left it empty (p ≈ q), p itself is the right fallback (the rejection was a rounding event).
        double mass = 0;
        for (int i = 0; i < p.Length; i++) mass += Math.Max(0f, p[i] - q[i]);
        if (mass > 0)
            for (int i = 0; i < p.Length; i++) p[i] = Math.Max(0f, p[i] - q[i]);
        token = sampler.DrawFrom(p);
        return false;
    }

    private static bool AnyPositive(ReadOnlySpan<float> weights)
    {
        foreach (float w in weights)
            if (w > 0f) return true;
        return false;
    }
}
