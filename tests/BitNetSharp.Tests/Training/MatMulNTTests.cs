using System.Runtime.Intrinsics;
using BitNetSharp.Threading;
using BitNetSharp.Training;

namespace BitNetSharp.Tests.Training;

/// <summary>
/// The trainer's fp32 product against its double-accumulating definition, for both register tiles (512-bit 4×4 and
/// 256-bit 2×4), on shapes whose m, n and k are not multiples of the tiles, with the epilogue (÷ div, × scale,
/// accumulate); integer-valued operands give the definition exactly; the result does not depend on the thread count.
/// </summary>
public sealed unsafe class MatMulNTTests
{
    public static TheoryData<int, int, int> Shapes => new()
    {
        { 1, 1, 1 }, { 3, 5, 7 }, { 4, 4, 16 }, { 7, 13, 37 }, { 9, 66, 130 }, { 33, 67, 384 }, { 130, 70, 15 },
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void BothTilesMatchTheDefinition(int m, int n, int k)
    {
        var rng = new Random(m * 1000 + n * 10 + k);
        float[] a = Random(m * k, rng), b = Random(n * k, rng), div = new float[m];
        for (int i = 0; i < m; i++) div[i] = 0.5f + (float)rng.NextDouble();
        float[] start = Random(m * n, rng);
        using var pool = new WorkerPool(2);
        var mm = new MatMulNT(pool);
        foreach (bool wide in Tiles())
        foreach (bool accumulate in new[] { false, true })
        foreach (bool withDiv in new[] { false, true })
        {
            mm.Use512 = wide;
            float[] got = (float[])start.Clone(), want = (float[])start.Clone();
            fixed (float* pa = a, pb = b, pg = got, pw = want, pd = div)
            {
                mm.Run(pa, pb, pg, m, n, k, accumulate, withDiv ? pd : null, 0.75f);
                MatMulNT.Reference(pa, pb, pw, m, n, k, accumulate, withDiv ? pd : null, 0.75f);
            }
            for (int i = 0; i < got.Length; i++)
                Assert.True(Math.Abs(got[i] - want[i]) <= 1e-5f * (1 + Math.Abs(want[i])) * Math.Sqrt(k),
                    $"tile {(wide ? "4x4/512" : "2x4/256")}, accumulate {accumulate}, div {withDiv}: element {i} is {got[i]}, the definition {want[i]}");
        }
    }

    [Fact]
    public void IntegerOperandsGiveTheDefinitionExactlyOnEveryTile()
    {
        // Int8 activation codes × ternary codes: partial sums are integers below 2^24, so every order is exact.
        const int m = 11, n = 9, k = 300;
        var rng = new Random(5);
        float[] a = new float[m * k], b = new float[n * k];
        for (int i = 0; i < a.Length; i++) a[i] = rng.Next(-127, 128);
        for (int i = 0; i < b.Length; i++) b[i] = rng.Next(-1, 2);
        using var pool = new WorkerPool(2);
        var mm = new MatMulNT(pool);
        float[] want = new float[m * n];
        fixed (float* pa = a, pb = b, pw = want) MatMulNT.Reference(pa, pb, pw, m, n, k, false, null, 1f);
        foreach (bool wide in Tiles())
        {
            mm.Use512 = wide;
            float[] got = new float[m * n];
            fixed (float* pa = a, pb = b, pg = got) mm.Run(pa, pb, pg, m, n, k);
            Assert.Equal(want, got);
        }
    }

    [Fact]
    public void TheResultDoesNotDependOnTheThreadCount()
    {
        const int m = 37, n = 70, k = 200;
        var rng = new Random(9);
        float[] a = Random(m * k, rng), b = Random(n * k, rng);
        float[]? first = null;
        foreach (int threads in new[] { 1, 2, 3 })
        {
            using var pool = new WorkerPool(threads);
            float[] c = new float[m * n];
            fixed (float* pa = a, pb = b, pc = c) new MatMulNT(pool).Run(pa, pb, pc, m, n, k);
            if (first is null) first = c;
            else Assert.Equal(first, c);
        }
    }

    private static IEnumerable<bool> Tiles() => Vector512.IsHardwareAccelerated ? [false, true] : [false];

    private static float[] Random(int count, Random rng)
    {
        var x = new float[count];
        for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        return x;
    }
}
