using System.Runtime.CompilerServices;

namespace BitNetSharp.Quantization;

/// <summary>
/// Float latent weights in the three dtypes checkpoints use, read as fp32 exactly as PyTorch's <c>.float()</c>
/// does, so the ternarizer and binarizer are written once over <see cref="ILatentElement{T}"/>.
/// </summary>
internal interface ILatentElement<T>
{
    static abstract float ToFloat(T value);
}

internal readonly struct Float32Element : ILatentElement<float>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToFloat(float value) => value;
}

internal readonly struct Float16Element : ILatentElement<ushort>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToFloat(ushort value) => HalfConversions.HalfToFloat(value);
}

internal readonly struct BFloat16Element : ILatentElement<ushort>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToFloat(ushort value) => HalfConversions.BFloat16ToFloat(value);
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

    /// <summary>mean |w| in double (four partial sums), then rounded once to fp32; throws on NaN or infinity.</summary>
    public static float MeanAbs<T, TElement>(ReadOnlySpan<T> w) where TElement : ILatentElement<T>
    {
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        int i = 0;
        for (; i <= w.Length - 4; i += 4)
        {
            s0 += MathF.Abs(TElement.ToFloat(w[i]));
            s1 += MathF.Abs(TElement.ToFloat(w[i + 1]));
            s2 += MathF.Abs(TElement.ToFloat(w[i + 2]));
            s3 += MathF.Abs(TElement.ToFloat(w[i + 3]));
        }
        for (; i < w.Length; i++) s0 += MathF.Abs(TElement.ToFloat(w[i]));
        double mean = (s0 + s1 + s2 + s3) / w.Length;
        if (!double.IsFinite(mean))
            throw new ArgumentException("The weights contain NaN or infinity; the checkpoint is corrupt.", nameof(w));
        return (float)mean;
    }

    /// <summary>mean w in double, rounded once to fp32.</summary>
    public static float Mean<T, TElement>(ReadOnlySpan<T> w) where TElement : ILatentElement<T>
    {
        double sum = 0;
        foreach (var v in w) sum += TElement.ToFloat(v);
        return (float)(sum / w.Length);
    }
}
