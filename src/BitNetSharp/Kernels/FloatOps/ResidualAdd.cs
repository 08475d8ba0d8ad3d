using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace BitNetSharp.Kernels.FloatOps;

/// <summary>The residual stream update h = h + x (FORMATS.md §4.2 steps 7 and 12).</summary>
public static class ResidualAdd
{
    public static void Apply(Span<float> h, ReadOnlySpan<float> x) => Apply<WidestVector>(h, x);

    public static void Apply<TWidth>(Span<float> h, ReadOnlySpan<float> x) where TWidth : struct, IVectorWidth =>
        BinaryDriver.Run<Op, TWidth>(h, x, h);

    public static void Reference(Span<float> h, ReadOnlySpan<float> x)
    {
        if (h.Length != x.Length) throw new ArgumentException($"Operand lengths differ: {h.Length} and {x.Length}.", nameof(x));
        for (int i = 0; i < h.Length; i++) h[i] += x[i];
    }

    private readonly struct Op : IBinaryFloatOp
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Invoke(float a, float b) => a + b;
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<float> Invoke(Vector128<float> a, Vector128<float> b) => a + b;
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Invoke(Vector256<float> a, Vector256<float> b) => a + b;
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Invoke(Vector512<float> a, Vector512<float> b) => a + b;
    }
}
