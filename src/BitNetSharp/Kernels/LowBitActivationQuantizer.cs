using BitNetSharp.Model;
using BitNetSharp.Quantization;

namespace BitNetSharp.Kernels;

/// <summary>
/// Per-token absmax activation quantization to b ∈ {6, 5, 4, 3, 2} bits (BitNet a4.8 / v2 use 4): with
/// m = 2^(b−1) − 1 and γ = max(max|x|, 1e−5) in double, s_x = (float)(m/γ) and q = round_half_even(x·m/γ) with x·m/γ
/// the exact real quotient, so the codes lie in [−m, m] and the int8 kernels run unchanged (they divide by s_x).
/// b = 8 is <see cref="Int8ActivationQuantizer"/> itself, bit for bit. The low widths are an experiment and a
/// calibration target, not the hot path: the loop is scalar, in double, exact by construction.
/// </summary>
public static class LowBitActivationQuantizer
{
    /// <summary>Quantizes one token into row <paramref name="token"/> of <paramref name="dst"/> at <paramref name="bits"/> bits.</summary>
    public static void Quantize(ReadOnlySpan<float> x, QuantizedActivations dst, int token, int bits)
    {
        if (bits == 8)
        {
            Int8ActivationQuantizer.Quantize(x, dst, token);
            return;
        }
        if (x.Length != dst.Cols)
            throw new ArgumentException($"Activation row has {x.Length} values; the quantized buffer expects {dst.Cols}.", nameof(x));
        if ((uint)token >= (uint)dst.MaxTokens) throw new ArgumentOutOfRangeException(nameof(token));
        Quantize(x, dst.RowSpan(token), out dst.Scales[token], out dst.Sums[token], bits);
    }

    /// <summary><paramref name="q"/> past x.Length is zeroed (kernel padding).</summary>
    public static void Quantize(ReadOnlySpan<float> x, Span<sbyte> q, out float scale, out int sum, int bits)
    {
        if (bits == 8)
        {
            Int8ActivationQuantizer.Quantize(x, q, out scale, out sum);
            return;
        }
        if (Array.IndexOf(ActivationBits.Allowed, bits) < 0) throw new ArgumentOutOfRangeException(nameof(bits), bits, $"Bit widths are {string.Join(", ", ActivationBits.Allowed)}.");
        if (q.Length < x.Length) throw new ArgumentException("Output is shorter than the input.", nameof(q));
        int max = ActivationBits.MaxCode(bits);
        double gamma = Math.Max((double)Int8ActivationQuantizer.AbsMax(x), Int8ActivationQuantizer.AbsMaxFloor);
        scale = (float)(max / gamma);
        int s = 0;
        for (int i = 0; i < x.Length; i++)
        {
            int v = Int8ActivationQuantizer.ExactCode(x[i], gamma, max);
            q[i] = (sbyte)v;
            s += v;
        }
        sum = s;
        q[x.Length..].Clear();
    }
    /// <summary>
    /// The trainer's fake quantizer at <paramref name="bits"/> bits: writes the codes as floats into <paramref name="q"/>
    /// and returns s_x, exactly what <see cref="Quantize(ReadOnlySpan{float}, Span{sbyte}, out float, out int, int)"/>
    /// gives the engine (b = 8 is <see cref="Int8ActivationQuantizer.QuantizeToFloatCodes"/> itself).
    /// </summary>
    public static float QuantizeToFloatCodes(ReadOnlySpan<float> x, Span<float> q, int bits)
    {
        if (bits == 8) return Int8ActivationQuantizer.QuantizeToFloatCodes(x, q);
        if (Array.IndexOf(ActivationBits.Allowed, bits) < 0) throw new ArgumentOutOfRangeException(nameof(bits), bits, $"Bit widths are {string.Join(", ", ActivationBits.Allowed)}.");
        if (q.Length < x.Length) throw new ArgumentException("Output is shorter than the input.", nameof(q));
        int max = ActivationBits.MaxCode(bits);
        double gamma = Math.Max((double)Int8ActivationQuantizer.AbsMax(x), Int8ActivationQuantizer.AbsMaxFloor);
        for (int i = 0; i < x.Length; i++) q[i] = Int8ActivationQuantizer.ExactCode(x[i], gamma, max);
        return (float)(max / gamma);
    }
}
