using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace BitNetSharp.Kernels.FloatOps;

/// <summary>An element-wise dst[i] = f(a[i], b[i]) at every width, so one driver serves residual add and the gates.</summary>
public interface IBinaryFloatOp
{
    static abstract float Invoke(float a, float b);
    static abstract Vector128<float> Invoke(Vector128<float> a, Vector128<float> b);
    static abstract Vector256<float> Invoke(Vector256<float> a, Vector256<float> b);
    static abstract Vector512<float> Invoke(Vector512<float> a, Vector512<float> b);
}

/// <summary>
/// The loop around an <see cref="IBinaryFloatOp"/>: widest vectors first, then narrower ones, then scalar.
/// dst may alias a or b (each element is read before it is written, and no vector overlaps another), which
/// in-place residual adds rely on.
/// </summary>
public static unsafe class BinaryDriver
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Run<TOp, TWidth>(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> dst)
        where TOp : IBinaryFloatOp where TWidth : struct, IVectorWidth
    {
        int n = dst.Length;
        if (a.Length != n || b.Length != n)
            throw new ArgumentException($"Operand lengths differ: {a.Length}, {b.Length} and output {n}.", nameof(dst));
        fixed (float* pa = a)
        fixed (float* pb = b)
        fixed (float* pd = dst)
            Run<TOp, TWidth>(pa, pb, pd, n);
    }

    public static void Run<TOp, TWidth>(float* a, float* b, float* dst, int n)
        where TOp : IBinaryFloatOp where TWidth : struct, IVectorWidth
    {
        int i = 0;
        if (TWidth.Bits >= 512 && Vector512.IsHardwareAccelerated)
        {
            for (; i <= n - 16; i += 16)
                TOp.Invoke(Vector512.Load(a + i), Vector512.Load(b + i)).Store(dst + i);
        }
        if (TWidth.Bits >= 256 && Vector256.IsHardwareAccelerated)
        {
            for (; i <= n - 8; i += 8)
                TOp.Invoke(Vector256.Load(a + i), Vector256.Load(b + i)).Store(dst + i);
        }
        if (TWidth.Bits >= 128 && Vector128.IsHardwareAccelerated)
        {
            for (; i <= n - 4; i += 4)
                TOp.Invoke(Vector128.Load(a + i), Vector128.Load(b + i)).Store(dst + i);
        }
        for (; i < n; i++) dst[i] = TOp.Invoke(a[i], b[i]);
    }
}
