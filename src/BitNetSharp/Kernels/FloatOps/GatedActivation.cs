using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace BitNetSharp.Kernels.FloatOps;

/// <summary>
/// The FFN gate m = act(g) ⊙ u (FORMATS.md §4.2 step 10): relu(g)² for 2B4T (ggml's relu → sqr → mul, so
/// (r·r)·u in that order), silu(g) = g / (1 + e^−g) for the 1bitLLM models (ggml's formula).
/// relu² is bit-exact at every width; SiLU's vector e^x differs from <see cref="MathF.Exp"/> by an ulp or so.
/// A NaN gate gives 0 under relu² (the comparison g &gt; 0 is false), at every width alike.
/// </summary>
public static class GatedActivation
{
    public static void ReluSquared(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> output) =>
        ReluSquared<WidestVector>(gate, up, output);

    public static void ReluSquared<TWidth>(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> output)
        where TWidth : struct, IVectorWidth => BinaryDriver.Run<ReluSquaredOp, TWidth>(gate, up, output);

    public static void Silu(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> output) =>
        Silu<WidestVector>(gate, up, output);

    public static void Silu<TWidth>(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> output)
        where TWidth : struct, IVectorWidth => BinaryDriver.Run<SiluOp, TWidth>(gate, up, output);

    public static void ReluSquaredReference(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> output)
    {
        CheckLengths(gate, up, output);
        for (int i = 0; i < output.Length; i++)
        {
            float r = gate[i] > 0f ? gate[i] : 0f;
            output[i] = r * r * up[i];
        }
    }

    public static void SiluReference(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> output)
    {
        CheckLengths(gate, up, output);
        for (int i = 0; i < output.Length; i++)
            output[i] = gate[i] / (1f + MathF.Exp(-gate[i])) * up[i];
    }

    private static void CheckLengths(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> output)
    {
        if (gate.Length != output.Length || up.Length != output.Length)
            throw new ArgumentException($"Operand lengths differ: gate {gate.Length}, up {up.Length}, output {output.Length}.", nameof(output));
    }

    private readonly struct ReluSquaredOp : IBinaryFloatOp
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float Invoke(float g, float u)
        {
            float r = g > 0f ? g : 0f;
            return r * r * u;
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector128<float> Invoke(Vector128<float> g, Vector128<float> u)
        {
            var r = Vector128.GreaterThan(g, Vector128<float>.Zero) & g;
            return r * r * u;
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Invoke(Vector256<float> g, Vector256<float> u)
        {
            var r = Vector256.GreaterThan(g, Vector256<float>.Zero) & g;
            return r * r * u;
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Invoke(Vector512<float> g, Vector512<float> u)
        {
            var r = Vector512.GreaterThan(g, Vector512<float>.Zero) & g;
            return r * r * u;
        }
    }

    private readonly struct SiluOp : IBinaryFloatOp
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float Invoke(float g, float u) => g / (1f + FastExp.Exp(-g)) * u;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector128<float> Invoke(Vector128<float> g, Vector128<float> u) =>
            g / (Vector128<float>.One + FastExp.Exp(-g)) * u;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Invoke(Vector256<float> g, Vector256<float> u) =>
            g / (Vector256<float>.One + FastExp.Exp(-g)) * u;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Invoke(Vector512<float> g, Vector512<float> u) =>
            g / (Vector512<float>.One + FastExp.Exp(-g)) * u;
    }
}
