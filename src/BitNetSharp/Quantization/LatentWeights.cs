using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace BitNetSharp.Quantization;

/// <summary>
/// Float latent weights in the three dtypes checkpoints use, read as fp32 exactly as PyTorch's <c>.float()</c>
/// does, so the ternarizer and binarizer are written once over <see cref="ILatentElement{T}"/>.
/// </summary>
internal interface ILatentElement<T> where T : unmanaged
{
    static abstract float ToFloat(T value);

    /// <summary>dst[i] = ToFloat(src[i]), vectorized where the dtype allows.</summary>
    static abstract void ToFloat(ReadOnlySpan<T> src, Span<float> dst);
}

internal readonly struct Float32Element : ILatentElement<float>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToFloat(float value) => value;

    public static void ToFloat(ReadOnlySpan<float> src, Span<float> dst) => src.CopyTo(dst);
}

internal readonly struct Float16Element : ILatentElement<ushort>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToFloat(ushort value) => HalfConversions.HalfToFloat(value);

    /// <summary>
    /// Exact fp16 → fp32 by bit placement: (h &amp; 0x7FFF) &lt;&lt; 13 read as fp32 and multiplied by 2^112 rescales
    /// normals and subnormals alike (an exact multiply); exponent 31 (inf/NaN) is restored by setting all fp32
    /// exponent bits; the sign is copied.
    /// </summary>
    public static void ToFloat(ReadOnlySpan<ushort> src, Span<float> dst)
    {
        int i = 0;
        if (Vector128.IsHardwareAccelerated)
        {
            ref ushort s = ref MemoryMarshal.GetReference(src);
            ref float d = ref MemoryMarshal.GetReference(dst);
            for (; i <= src.Length - 8; i += 8)
            {
                var h = Vector128.LoadUnsafe(ref s, (nuint)i);
                Convert(Vector128.WidenLower(h)).StoreUnsafe(ref d, (nuint)i);
                Convert(Vector128.WidenUpper(h)).StoreUnsafe(ref d, (nuint)(i + 4));
            }
        }
        for (; i < src.Length; i++) dst[i] = ToFloat(src[i]);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> Convert(Vector128<uint> h)
    {
        var magnitude = (Vector128.ShiftLeft(h & Vector128.Create(0x7FFFu), 13).AsSingle() * Vector128.Create(0x77800000u).AsSingle() /* 2^112 */).AsUInt32();
        var special = Vector128.Equals(h & Vector128.Create(0x7C00u), Vector128.Create(0x7C00u));
        magnitude |= special & Vector128.Create(0x7F800000u);
        return (magnitude | Vector128.ShiftLeft(h & Vector128.Create(0x8000u), 16)).AsSingle();
    }
}

internal readonly struct BFloat16Element : ILatentElement<ushort>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToFloat(ushort value) => HalfConversions.BFloat16ToFloat(value);

    public static void ToFloat(ReadOnlySpan<ushort> src, Span<float> dst)
    {
        int i = 0;
        if (Vector128.IsHardwareAccelerated)
        {
            ref ushort s = ref MemoryMarshal.GetReference(src);
            ref float d = ref MemoryMarshal.GetReference(dst);
            for (; i <= src.Length - 8; i += 8)
            {
                var b = Vector128.LoadUnsafe(ref s, (nuint)i);
                Vector128.ShiftLeft(Vector128.WidenLower(b), 16).AsSingle().StoreUnsafe(ref d, (nuint)i);
                Vector128.ShiftLeft(Vector128.WidenUpper(b), 16).AsSingle().StoreUnsafe(ref d, (nuint)(i + 4));
            }
        }
        for (; i < src.Length; i++) dst[i] = ToFloat(src[i]);
    }
}

internal static class LatentWeights
{
    public static void RequireShape(int length, int rows, int cols, string paramName)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rows);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(cols);
        if ((long)rows * cols != length)
            throw new ArgumentException($"A {rows}×{cols} weight has {(long)rows * cols} values; got {length}.", paramName);
    }

    /// <summary>Row <paramref name="row"/> as fp32: the weights themselves for F32, else converted into <paramref name="buffer"/>.</summary>
    public static ReadOnlySpan<float> Row<T, TElement>(ReadOnlySpan<T> weights, int row, int cols, float[] buffer)
        where T : unmanaged where TElement : ILatentElement<T>
    {
        var src = weights.Slice(row * cols, cols);
        if (typeof(T) == typeof(float)) return MemoryMarshal.Cast<T, float>(src);
        TElement.ToFloat(src, buffer);
        return buffer;
    }

    /// <summary>mean |w| summed in double, rounded once to fp32; throws on NaN or infinity.</summary>
    public static float MeanAbs<T, TElement>(ReadOnlySpan<T> weights, int rows, int cols)
        where T : unmanaged where TElement : ILatentElement<T>
    {
        var buffer = new float[cols];
        double sum = 0;
        for (int r = 0; r < rows; r++) sum += SumAbs(Row<T, TElement>(weights, r, cols, buffer));
        double mean = sum / ((double)rows * cols);
        if (!double.IsFinite(mean))
            throw new ArgumentException("The weights contain NaN or infinity; the checkpoint is corrupt.", nameof(weights));
        return (float)mean;
    }

    /// <summary>mean w summed in double, rounded once to fp32.</summary>
    public static float Mean<T, TElement>(ReadOnlySpan<T> weights, int rows, int cols)
        where T : unmanaged where TElement : ILatentElement<T>
    {
        var buffer = new float[cols];
        double sum = 0;
        for (int r = 0; r < rows; r++)
        {
            foreach (float v in Row<T, TElement>(weights, r, cols, buffer)) sum += v;
        }
        return (float)(sum / ((double)rows * cols));
    }

    /// <summary>Σ|x| in double (two-lane double vectors where available).</summary>
    public static double SumAbs(ReadOnlySpan<float> x)
    {
        int i = 0;
        double sum = 0;
        if (Vector128.IsHardwareAccelerated)
        {
            var acc0 = Vector128<double>.Zero;
            var acc1 = Vector128<double>.Zero;
            ref float start = ref MemoryMarshal.GetReference(x);
            for (; i <= x.Length - 4; i += 4)
            {
                var v = Vector128.Abs(Vector128.LoadUnsafe(ref start, (nuint)i));
                acc0 += Vector128.WidenLower(v);
                acc1 += Vector128.WidenUpper(v);
            }
            sum = Vector128.Sum(acc0 + acc1);
        }
        for (; i < x.Length; i++) sum += MathF.Abs(x[i]);
        return sum;
    }

    /// <summary>
    /// codes[i] = clamp(round_half_even(x[i]·s), −1, 1) + 1. For finite y, clamp(round_half_even(y), −1, 1) is
    /// exactly (y &gt; 0.5) − (y &lt; −0.5): ±0.5 are ties that go to 0, anything beyond rounds to ±1 or further and
    /// clamps back — so two compares replace the rounding.
    /// </summary>
    public static void TernaryCodes(ReadOnlySpan<float> x, float s, Span<byte> codes)
    {
        int i = 0;
        if (Vector128.IsHardwareAccelerated)
        {
            ref float src = ref MemoryMarshal.GetReference(x);
            ref byte dst = ref MemoryMarshal.GetReference(codes);
            var vs = Vector128.Create(s);
            for (; i <= x.Length - 16; i += 16)
            {
                var c0 = Codes(Vector128.LoadUnsafe(ref src, (nuint)i) * vs);
                var c1 = Codes(Vector128.LoadUnsafe(ref src, (nuint)(i + 4)) * vs);
                var c2 = Codes(Vector128.LoadUnsafe(ref src, (nuint)(i + 8)) * vs);
                var c3 = Codes(Vector128.LoadUnsafe(ref src, (nuint)(i + 12)) * vs);
                Vector128.Narrow(Vector128.Narrow(c0, c1), Vector128.Narrow(c2, c3)).StoreUnsafe(ref dst, (nuint)i);
            }
        }
        for (; i < x.Length; i++) codes[i] = (byte)(Ternary(x[i] * s) + 1);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Ternary(float y) => (y > 0.5f ? 1 : 0) - (y < -0.5f ? 1 : 0);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<uint> Codes(Vector128<float> y)
    {
        var above = Vector128.GreaterThan(y, Vector128.Create(0.5f)).AsUInt32();  // all ones = −1
        var below = Vector128.LessThan(y, Vector128.Create(-0.5f)).AsUInt32();
        return Vector128<uint>.One - above + below;
    }
}
