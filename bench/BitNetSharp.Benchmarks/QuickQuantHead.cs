using System.Diagnostics;
using System.Runtime.InteropServices;
using BitNetSharp.Kernels;
using BitNetSharp.Quantization;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// `quick-decode qhead [rounds] [seconds]`: the quantized output heads' row dots on one thread, the 256-bit kernels
/// (<see cref="HeadKernels.DotQ6_KQ8K"/>, <see cref="HeadKernels.DotQ8_0Q8"/> and their batched forms) against the
/// 512-bit ones (<see cref="HeadQ6K512"/>, <see cref="HeadQ8_0512"/>), rows one after another and four side by side, for
/// one, two and four tokens, on 256 rows (in cache) and on the 2B4T head (128,256 × 2,560, from memory), alternating in
/// one process. Prints the median GB/s of weights read. The Q6_K kernels are checked bit for bit against each other
/// first, the Q8_0 ones against each other (512-bit entry points) and against the 256-bit one within float rounding.
/// </summary>
public static unsafe class QuickQuantHead
{
    private const int Cols = 2560;

    public static void Run(int rounds, double seconds)
    {
        Console.WriteLine($"one thread; rows of {Cols} columns; {rounds} rounds of {seconds:F1} s per variant, median GB/s of weights");
        foreach (int rows in new[] { 256, 128256 })
        {
            Q6(rows, rounds, seconds);
            Q8(rows, rounds, seconds);
        }
    }

    private static void Q6(int rows, int rounds, double seconds)
    {
        int blocks = Cols / Q6K.BlockWeights;
        long rowBytes = (long)blocks * Q6K.BlockBytes;
        var rng = new Random(3);
        byte* w = RandomRows(rng, rows, rowBytes, Q6K.BlockBytes, Q6K.DOffset);
        const int tokens = 4;
        var x = Floats(rng, tokens * Cols);
        sbyte* q = (sbyte*)NativeMemory.AlignedAlloc(tokens * Cols, 64);
        float* d = (float*)NativeMemory.Alloc((nuint)(tokens * blocks * 4));
        short* s = (short*)NativeMemory.Alloc((nuint)(tokens * Cols / 16 * 2));
        fixed (float* px = x)
            for (int t = 0; t < tokens; t++) HeadKernels.QuantizeQ8KBlocks(px + t * Cols, Cols, q + t * Cols, d + t * blocks, s + t * Cols / 16);
        float* y = (float*)NativeMemory.Alloc((nuint)(tokens * rows * 4));
        float* r4 = stackalloc float[4];
        int g = Cols / 16, quarter = rows / 4;
        for (int r = 0; HeadQ6K512.IsSupported && r < Math.Min(rows, 4096); r++)
        {
            HeadQ6K512.Dot(w + r * rowBytes, q, Cols, d, s, blocks, tokens, r4);
            for (int t = 0; t < tokens; t++)
                if (BitConverter.SingleToInt32Bits(r4[t]) != BitConverter.SingleToInt32Bits(HeadKernels.DotQ6_KQ8K(w + r * rowBytes, q + t * Cols, d + t * blocks, s + t * g, blocks)))
                    throw new InvalidOperationException($"Q6_K 512-bit dot differs at row {r}, token {t}");
        }
        var variants = new (string Name, Action Run)[]
        {
            ("Q6_K 1 token, 256-bit", () => { for (int r = 0; r < rows; r++) y[r] = HeadKernels.DotQ6_KQ8K(w + r * rowBytes, q, d, s, blocks); }),
            ("Q6_K 1 token, 512-bit", () => { float* o = stackalloc float[4]; for (int r = 0; r < rows; r++) { HeadQ6K512.Dot(w + r * rowBytes, q, Cols, d, s, blocks, 1, o); y[r] = o[0]; } }),
            ("Q6_K 1 token, 512-bit, 4 rows side by side", () => { for (int r = 0; r < quarter; r++) HeadQ6K512.DotRows4(w + r * rowBytes, w + (r + quarter) * rowBytes, w + (r + 2 * quarter) * rowBytes, w + (r + 3 * quarter) * rowBytes, q, d, s, blocks, y + r, y + r + quarter, y + r + 2 * quarter, y + r + 3 * quarter); }),
            ("Q6_K 2 tokens, 256-bit", () => { for (int r = 0; r < rows; r++) { y[r] = HeadKernels.DotQ6_KQ8K(w + r * rowBytes, q, d, s, blocks); y[rows + r] = HeadKernels.DotQ6_KQ8K(w + r * rowBytes, q + Cols, d + blocks, s + g, blocks); } }),
            ("Q6_K 2 tokens, 512-bit", () => { float* o = stackalloc float[4]; for (int r = 0; r < rows; r++) { HeadQ6K512.Dot(w + r * rowBytes, q, Cols, d, s, blocks, 2, o); y[r] = o[0]; } }),
            ("Q6_K 4 tokens, 256-bit", () => { float* o = stackalloc float[4]; for (int r = 0; r < rows; r++) { HeadKernels.DotQ6_KQ8Kx4(w + r * rowBytes, q, Cols, d, s, blocks, o); y[r] = o[0]; } }),
            ("Q6_K 4 tokens, 512-bit", () => { float* o = stackalloc float[4]; for (int r = 0; r < rows; r++) { HeadQ6K512.Dot(w + r * rowBytes, q, Cols, d, s, blocks, 4, o); y[r] = o[0]; } }),
        };
        Report($"{rows} rows, {rows * rowBytes / 1e6:F1} MB", rows * rowBytes, Supported(variants, HeadQ6K512.IsSupported), rounds, seconds);
        NativeMemory.AlignedFree(w);
    }

    /// <summary>The 512-bit variants only where they run (DOTNET_EnableAVX512=0, AVX2-only cores): they threw PlatformNotSupportedException.</summary>
    private static (string Name, Action Run)[] Supported((string Name, Action Run)[] variants, bool wide) =>
        wide ? variants : Array.FindAll(variants, v => !v.Name.Contains("512-bit", StringComparison.Ordinal));

    private static void Q8(int rows, int rounds, double seconds)
    {
        int blocks = Cols / 32;
        long rowBytes = blocks * 34L;
        var rng = new Random(4);
        byte* w = RandomRows(rng, rows, rowBytes, 34, 0);
        const int tokens = 4;
        var x = Floats(rng, tokens * Cols);
        sbyte* q = (sbyte*)NativeMemory.AlignedAlloc(tokens * Cols, 64);
        short* x16 = (short*)NativeMemory.AlignedAlloc(tokens * Cols * 2, 64);
        float* d = (float*)NativeMemory.Alloc((nuint)(tokens * blocks * 4));
        fixed (float* px = x)
            for (int t = 0; t < tokens; t++) HeadKernels.QuantizeQ8Blocks(px + t * Cols, Cols, q + t * Cols, d + t * blocks);
        if (HeadQ8_0512.IsSupported) HeadQ8_0512.Widen(q, x16, tokens * Cols);
        float* y = (float*)NativeMemory.Alloc((nuint)(tokens * rows * 4));
        float* r4 = stackalloc float[4];
        float* one = stackalloc float[4];
        int quarter = rows / 4;
        for (int r = 0; HeadQ8_0512.IsSupported && r < Math.Min(rows, 4096); r++)
        {
            HeadQ8_0512.Dot(w + r * rowBytes, x16, Cols, d, blocks, tokens, r4);
            for (int t = 0; t < tokens; t++)
            {
                HeadQ8_0512.Dot(w + r * rowBytes, x16 + t * Cols, Cols, d + t * blocks, blocks, 1, one);
                float old = HeadKernels.DotQ8_0Q8(w + r * rowBytes, q + t * Cols, d + t * blocks, blocks);
                if (BitConverter.SingleToInt32Bits(r4[t]) != BitConverter.SingleToInt32Bits(one[0]) || Math.Abs(one[0] - old) > 1e-5f * (1 + Math.Abs(old)))
                    throw new InvalidOperationException($"Q8_0 512-bit dot differs at row {r}, token {t}: {r4[t]} / {one[0]} / {old}");
            }
        }
        var variants = new (string Name, Action Run)[]
        {
            ("Q8_0 1 token, 256-bit", () => { for (int r = 0; r < rows; r++) y[r] = HeadKernels.DotQ8_0Q8(w + r * rowBytes, q, d, blocks); }),
            ("Q8_0 1 token, 512-bit", () => { float* o = stackalloc float[4]; for (int r = 0; r < rows; r++) { HeadQ8_0512.Dot(w + r * rowBytes, x16, Cols, d, blocks, 1, o); y[r] = o[0]; } }),
            ("Q8_0 1 token, 512-bit, 4 rows side by side", () => { for (int r = 0; r < quarter; r++) HeadQ8_0512.DotRows4(w + r * rowBytes, w + (r + quarter) * rowBytes, w + (r + 2 * quarter) * rowBytes, w + (r + 3 * quarter) * rowBytes, x16, d, blocks, y + r, y + r + quarter, y + r + 2 * quarter, y + r + 3 * quarter); }),
            ("Q8_0 2 tokens, 256-bit (pairs)", () => { float* o = stackalloc float[4]; for (int r = 0; r < rows; r++) { HeadKernels.DotQ8_0Q8x2(w + r * rowBytes, q, q + Cols, d, d + blocks, blocks, o); y[r] = o[0]; } }),
            ("Q8_0 2 tokens, 512-bit", () => { float* o = stackalloc float[4]; for (int r = 0; r < rows; r++) { HeadQ8_0512.Dot(w + r * rowBytes, x16, Cols, d, blocks, 2, o); y[r] = o[0]; } }),
            ("Q8_0 4 tokens, 256-bit (two pairs)", () => { float* o = stackalloc float[4]; for (int r = 0; r < rows; r++) { HeadKernels.DotQ8_0Q8x2(w + r * rowBytes, q, q + Cols, d, d + blocks, blocks, o); HeadKernels.DotQ8_0Q8x2(w + r * rowBytes, q + 2 * Cols, q + 3 * Cols, d + 2 * blocks, d + 3 * blocks, blocks, o + 2); y[r] = o[0]; } }),
            ("Q8_0 4 tokens, 512-bit", () => { float* o = stackalloc float[4]; for (int r = 0; r < rows; r++) { HeadQ8_0512.Dot(w + r * rowBytes, x16, Cols, d, blocks, 4, o); y[r] = o[0]; } }),
        };
        Report($"{rows} rows, {rows * rowBytes / 1e6:F1} MB", rows * rowBytes, Supported(variants, HeadQ8_0512.IsSupported), rounds, seconds);
        NativeMemory.AlignedFree(w);
    }

    /// <summary>Random rows of blocks, each block's fp16 scale (at <paramref name="scaleOffset"/>) a small finite value.</summary>
    private static byte* RandomRows(Random rng, int rows, long rowBytes, int blockBytes, int scaleOffset)
    {
        byte* w = (byte*)NativeMemory.AlignedAlloc((nuint)(rows * rowBytes), 64);
        long total = rows * rowBytes, i = 0;
        for (; i + 8 <= total; i += 8) *(ulong*)(w + i) = (ulong)rng.NextInt64();
        for (; i < total; i++) w[i] = (byte)rng.Next(256);
        for (long r = 0; r < rows; r++)
            for (long b = 0; b < rowBytes / blockBytes; b++)
                *(ushort*)(w + r * rowBytes + b * blockBytes + scaleOffset) = HalfConversions.FloatToHalf((float)(rng.NextDouble() + 0.01) * 0.01f);
        return w;
    }

    private static float[] Floats(Random rng, int n)
    {
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        return x;
    }

    private static void Report(string title, long bytes, (string Name, Action Run)[] variants, int rounds, double seconds)
    {
        var results = variants.ToDictionary(v => v.Name, _ => new List<double>());
        for (int round = 0; round < rounds; round++)
            for (int i = 0; i < variants.Length; i++)
            {
                var (name, run) = variants[(i + round) % variants.Length];
                results[name].Add(QuickDecodeVariants.Time(bytes, seconds, run));
            }
        Console.WriteLine(title);
        foreach (var (name, _) in variants)
        {
            var r = results[name].Order().ToList();
            Console.WriteLine($"  {name,-46} {r[r.Count / 2],6:F1} GB/s  (min {r[0],5:F1}, max {r[^1],5:F1})");
        }
    }
}
