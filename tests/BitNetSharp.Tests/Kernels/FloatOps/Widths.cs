using BitNetSharp.Kernels.FloatOps;

namespace BitNetSharp.Tests.Kernels.FloatOps;

/// <summary>Runs a generic check at every vector width by name (a width the CPU lacks falls back to a narrower loop).</summary>
internal interface IWidthCheck
{
    void Run<TWidth>() where TWidth : struct, IVectorWidth;
}

internal static class Widths
{
    public static TheoryData<string> All() => new("widest", "256", "128", "scalar");

    public static void Run(string width, IWidthCheck check)
    {
        switch (width)
        {
            case "widest": check.Run<WidestVector>(); break;
            case "256": check.Run<Vector256Width>(); break;
            case "128": check.Run<Vector128Width>(); break;
            case "scalar": check.Run<ScalarWidth>(); break;
            default: throw new ArgumentException(width);
        }
    }

    public static readonly int[] Lengths = [1, 3, 4, 7, 8, 15, 16, 17, 31, 33, 100, 2560, 6913];

    public static float[] Random(Random rng, int n, float scale = 1f) =>
        Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1) * scale).ToArray();

    public static void AssertBitwise(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(actual[i]))
                Assert.Fail($"{what}: element {i}: reference {expected[i]:R}, vector {actual[i]:R}");
    }

    public static void AssertClose(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, float relative, float absolute, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            float diff = MathF.Abs(expected[i] - actual[i]);
            if (!(diff <= absolute + relative * MathF.Abs(expected[i])))
                Assert.Fail($"{what}: element {i}: reference {expected[i]:R}, vector {actual[i]:R} (|Δ| = {diff:G3})");
        }
    }
}
