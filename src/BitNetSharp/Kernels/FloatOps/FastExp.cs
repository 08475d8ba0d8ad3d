using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace BitNetSharp.Kernels.FloatOps;

/// <summary>
/// e^x in fp32 for the softmax and SiLU loops, within 2 ulp of the exact value over the whole fp32 range, and the same
/// bits at every vector width and in the scalar form (the same IEEE operations in the same order: one rounding, two
/// fused multiply-adds for the reduction, six for the polynomial, two power-of-two scalings).
/// <para>
/// Why not <c>Vector512.Exp</c>: it is 1.36× slower in a throughput loop (BenchmarkDotNet, Zen 4: 7.5 against 5.5 µs
/// for 4 × 4096 values, `AttentionKernelBenchmarks`), far slower before the JIT tiers it up (~100 cycles per 16 values
/// in a cold loop), and its scalar counterpart <c>MathF.Exp</c> need not give the same bits, so a softmax's vector
/// body and scalar tail could round differently.
/// </para>
/// <para>
/// Method (Cody–Waite with a minimax polynomial, the classic single-precision scheme): n = round(x·log2 e),
/// r = x − n·ln2 with ln2 split in a short high part and a correction so r is exact to fp32, |r| ≤ ln2/2;
/// e^r ≈ 1 + r + r²·P(r) with the degree-5 minimax P from Cephes' expf; then · 2^⌊n/2⌋ · 2^(n−⌊n/2⌋), two factors
/// so that results that overflow become +∞ instead of wrapping. x is clamped to [−87, 89] first, and below −87 the
/// result is 0 (NaN stays NaN).
/// </para>
/// <para>
/// Why 0 below −87 (e^−87 ≈ 1.65e−38, just above the smallest normal fp32): a result in the subnormal range, or one
/// that underflows to 0 through it, costs a microcode assist. On the Zen 5 EPYC, 4096 values per loop, 512-bit: 0.22 ns
/// a value for normal results, 0.72 for subnormal or underflowing ones. A softmax over a long context is mostly such
/// values (every score ~90 below the maximum), so attention's exponentials ran ~3× slower in a real decode than on
/// benchmark data. The values lost are below 1.7e−38 next to a largest term of 1; only where a sum is already that
/// small could they show, and the clamp keeps every lane's arithmetic normal, so no assist is taken.
/// </para>
/// </summary>
public static class FastExp
{
    private const float Log2E = 1.44269504088896341f;
    private const float Ln2Hi = 0.693359375f;        // 8 significant bits: n·Ln2Hi is exact for |n| < 2^16
    private const float Ln2Lo = -2.12194440e-4f;     // ln 2 − Ln2Hi
    private const float Lowest = -87f, Highest = 89f;
    private const float P0 = 1.9875691500e-4f, P1 = 1.3981999507e-3f, P2 = 8.3334519073e-3f,
        P3 = 4.1665795894e-2f, P4 = 1.6666665459e-1f, P5 = 5.0000001201e-1f;

    /// <summary>e^x, the scalar form of the vector kernels (same bits).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Exp(float x)
    {
        if (float.IsNaN(x)) return x;
        if (x < Lowest) return 0f;
        float c = MathF.Min(x, Highest);
        float n = MathF.Round(c * Log2E);
        float r = MathF.FusedMultiplyAdd(n, -Ln2Hi, c);
        r = MathF.FusedMultiplyAdd(n, -Ln2Lo, r);
        float p = MathF.FusedMultiplyAdd(P0, r, P1);
        p = MathF.FusedMultiplyAdd(p, r, P2);
        p = MathF.FusedMultiplyAdd(p, r, P3);
        p = MathF.FusedMultiplyAdd(p, r, P4);
        p = MathF.FusedMultiplyAdd(p, r, P5);
        p = MathF.FusedMultiplyAdd(p, r * r, r + 1f);
        int k = (int)n, half = k >> 1;
        return p * BitConverter.Int32BitsToSingle((half + 127) << 23) * BitConverter.Int32BitsToSingle((k - half + 127) << 23);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Exp(Vector512<float> x)
    {
        var c = Vector512.Min(Vector512.Max(x, Vector512.Create(Lowest)), Vector512.Create(Highest));
        var n = Vector512.Round(c * Vector512.Create(Log2E));
        var r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2Hi), c);
        r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2Lo), r);
        var p = Vector512.FusedMultiplyAdd(Vector512.Create(P0), r, Vector512.Create(P1));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P2));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P3));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P4));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P5));
        p = Vector512.FusedMultiplyAdd(p, r * r, r + Vector512<float>.One);
        Vector512<float> e;
        if (Avx512F.IsSupported)
        {
            // One vscalefps: p·2^n rounded once. The two-factor form below is the same number: its first factor
            // (2^⌊n/2⌋, |⌊n/2⌋| ≤ 64) scales exactly, so only the second rounds, to the same correctly rounded p·2^n,
            // +∞ included. It replaces the saturating float→int conversion (four instructions in .NET 10), the shifts,
            // adds and the two multiplies: 11 of the ~40 instructions a vector. Zen 5 EPYC, EXP_SPLIT=1 quick-attn-variants,
            // ns a position of four heads: bare exponential 0.92 → 0.61, attention's exponentiate 1.75 → 1.48
            // (bench/results/attention-chunk-costs-amd-epyc-zen5-2core.md).
            e = Avx512F.Scale(p, n);
        }
        else
        {
            var k = Vector512.ConvertToInt32(n);
            var half = Vector512.ShiftRightArithmetic(k, 1);
            var bias = Vector512.Create(127);
            e = p * Vector512.ShiftLeft(half + bias, 23).AsSingle() * Vector512.ShiftLeft(k - half + bias, 23).AsSingle();
        }
        e &= Vector512.GreaterThanOrEqual(x, Vector512.Create(Lowest)); // 0 below the clamp (NaN too, restored next)
        return Vector512.ConditionalSelect(Vector512.Equals(x, x), e, x);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Exp(Vector256<float> x)
    {
        var c = Vector256.Min(Vector256.Max(x, Vector256.Create(Lowest)), Vector256.Create(Highest));
        var n = Vector256.Round(c * Vector256.Create(Log2E));
        var r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Hi), c);
        r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Lo), r);
        var p = Vector256.FusedMultiplyAdd(Vector256.Create(P0), r, Vector256.Create(P1));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P2));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P3));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P4));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P5));
        p = Vector256.FusedMultiplyAdd(p, r * r, r + Vector256<float>.One);
        var k = Vector256.ConvertToInt32(n);
        var half = Vector256.ShiftRightArithmetic(k, 1);
        var bias = Vector256.Create(127);
        var e = p * Vector256.ShiftLeft(half + bias, 23).AsSingle() * Vector256.ShiftLeft(k - half + bias, 23).AsSingle();
        e &= Vector256.GreaterThanOrEqual(x, Vector256.Create(Lowest)); // 0 below the clamp (NaN too, restored next)
        return Vector256.ConditionalSelect(Vector256.Equals(x, x), e, x);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Exp(Vector128<float> x)
    {
        var c = Vector128.Min(Vector128.Max(x, Vector128.Create(Lowest)), Vector128.Create(Highest));
        var n = Vector128.Round(c * Vector128.Create(Log2E));
        var r = Vector128.FusedMultiplyAdd(n, Vector128.Create(-Ln2Hi), c);
        r = Vector128.FusedMultiplyAdd(n, Vector128.Create(-Ln2Lo), r);
        var p = Vector128.FusedMultiplyAdd(Vector128.Create(P0), r, Vector128.Create(P1));
        p = Vector128.FusedMultiplyAdd(p, r, Vector128.Create(P2));
        p = Vector128.FusedMultiplyAdd(p, r, Vector128.Create(P3));
        p = Vector128.FusedMultiplyAdd(p, r, Vector128.Create(P4));
        p = Vector128.FusedMultiplyAdd(p, r, Vector128.Create(P5));
        p = Vector128.FusedMultiplyAdd(p, r * r, r + Vector128<float>.One);
        var k = Vector128.ConvertToInt32(n);
        var half = Vector128.ShiftRightArithmetic(k, 1);
        var bias = Vector128.Create(127);
        var e = p * Vector128.ShiftLeft(half + bias, 23).AsSingle() * Vector128.ShiftLeft(k - half + bias, 23).AsSingle();
        e &= Vector128.GreaterThanOrEqual(x, Vector128.Create(Lowest)); // 0 below the clamp (NaN too, restored next)
        return Vector128.ConditionalSelect(Vector128.Equals(x, x), e, x);
    }
}
