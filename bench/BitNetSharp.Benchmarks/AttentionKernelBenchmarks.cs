using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BitNetSharp.Kernels;
using BitNetSharp.Kernels.FloatOps;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// The attention loops of one 2B4T kv head at depth 4096 (four queries, 4096 int8 rows of 128, in chunks of 256 as the
/// engine calls them; rows hot in cache, so this is the arithmetic side): scores and the weighted sum of V through the
/// float kernels (the path before Int8Attention) against the integer ones, and the softmax exponentials by
/// Vector512.Exp against FastExp. Each category's first method is its baseline (Ratio column).
/// <c>dotnet run -c Release --project bench/BitNetSharp.Benchmarks -- --filter '*AttentionKernelBenchmarks*'</c>
/// </summary>
[SimpleJob(warmupCount: 3, iterationCount: 12, id: "attention")]
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
[CategoriesColumn]
public unsafe class AttentionKernelBenchmarks
{
    private const int N = 128, Positions = 4096, Chunk = 256;
    private byte* _rows;
    private byte* _blocks;
    private float* _scales, _q, _w, _scores, _out, _exp;

    [GlobalSetup]
    public void Setup()
    {
        var rng = new Random(5);
        _rows = (byte*)NativeMemory.AlignedAlloc(Positions * N, 64);
        _blocks = (byte*)NativeMemory.AlignedAlloc(Positions * N, 64);
        _scales = Alloc(Positions);
        _q = Alloc(4 * N);
        _w = Alloc(4 * Positions);
        _scores = Alloc(4 * Positions);
        _out = Alloc(4 * N);
        _exp = Alloc(4 * Positions);
        var x = new float[N];
        for (int p = 0; p < Positions; p++)
        {
            for (int d = 0; d < N; d++) x[d] = (float)(rng.NextDouble() * 2 - 1);
            _scales[p] = Int8Row.Encode(x, _rows + (long)p * N);
            Int8KeyBlocks.Store(_rows + (long)p * N, _blocks, p, N);
        }
        for (int i = 0; i < 4 * N; i++) _q[i] = (float)(rng.NextDouble() * 2 - 1);
        for (int i = 0; i < 4 * Positions; i++) _w[i] = (float)rng.NextDouble();
        for (int i = 0; i < 4 * Positions; i++) _exp[i] = (float)(-rng.NextDouble() * 20);
    }

    private static float* Alloc(int floats) => (float*)NativeMemory.AlignedAlloc((nuint)floats * 4, 64);

    [GlobalCleanup]
    public void Cleanup()
    {
        NativeMemory.AlignedFree(_rows);
        NativeMemory.AlignedFree(_blocks);
        foreach (var p in new[] { (nint)_scales, (nint)_q, (nint)_w, (nint)_scores, (nint)_out, (nint)_exp }) NativeMemory.AlignedFree((void*)p);
    }

    [Benchmark(Baseline = true), BenchmarkCategory("scores")]
    public void ScoresFloat()
    {
        for (int c = 0; c < Positions; c += Chunk)
            AttentionKernels.ScoresGroup4<Int8FloatRow>(_rows + (long)c * N, _scales + c, N, N, _q, _scores + c, Positions, Chunk, 0.1f);
    }

    [Benchmark, BenchmarkCategory("scores")]
    public void ScoresInteger()
    {
        for (int c = 0; c < Positions; c += Chunk)
            AttentionKernels.ScoresGroup4<Int8Row>(_rows + (long)c * N, _scales + c, N, N, _q, _scores + c, Positions, Chunk, 0.1f);
    }

    /// <summary>The same keys in blocks of 16 positions (<see cref="Int8KeyBlocks"/>, what the cache stores since 2026-12-04), in the same chunks.</summary>
    [Benchmark, BenchmarkCategory("scores")]
    public void ScoresIntegerKeyBlocks()
    {
        for (int c = 0; c < Positions; c += Chunk)
            AttentionKernels.ScoresGroup4Int8Blocks(_blocks, _scales, N, _q, _scores + c, Positions, c, Chunk, 0.1f);
    }

    [Benchmark(Baseline = true), BenchmarkCategory("weighted V")]
    public void WeightedVFloat()
    {
        for (int c = 0; c < Positions; c += Chunk)
            AttentionKernels.AccumulateGroup4<Int8FloatRow>(_rows + (long)c * N, _scales + c, N, N, _w + c, Positions, _out, Chunk);
    }

    [Benchmark, BenchmarkCategory("weighted V")]
    public void WeightedVInteger()
    {
        for (int c = 0; c < Positions; c += Chunk)
            AttentionKernels.AccumulateGroup4<Int8Row>(_rows + (long)c * N, _scales + c, N, N, _w + c, Positions, _out, Chunk);
    }

    [Benchmark(Baseline = true), BenchmarkCategory("exp of 4 x 4096")]
    public float ExpVector512()
    {
        var a = Vector512<float>.Zero;
        for (int i = 0; i < 4 * Positions; i += 16) a += Vector512.Exp(Vector512.Load(_exp + i));
        return Vector512.Sum(a);
    }

    [Benchmark, BenchmarkCategory("exp of 4 x 4096")]
    public float ExpFast()
    {
        var a = Vector512<float>.Zero;
        for (int i = 0; i < 4 * Positions; i += 16) a += FastExp.Exp(Vector512.Load(_exp + i));
        return Vector512.Sum(a);
    }
}
