using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using BitNetSharp.Kernels;
using BitNetSharp.Kernels.FloatOps;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// `quick-int8-cold [rounds]`: the int8 attention kernels of one 2B4T kv head (four queries, 4096 positions × 128) with
/// the K blocks and V rows hot in cache and from memory (64 sets rotated, 64 MiB, more than the L3), beside a plain read
/// of the same bytes: whether the kernels' memory time overlaps their arithmetic.
/// </summary>
internal static unsafe class QuickInt8AttentionCold
{
    private const int N = 128, Positions = 4096, Sets = 64, Chunk = 256;

    public static void Run(int rounds)
    {
        var rng = new Random(7);
        long bytes = (long)Positions * N;
        var blocks = new byte*[Sets];
        var values = new byte*[Sets];
        var kScales = new float*[Sets];
        var vScales = new float*[Sets];
        var x = new float[N];
        var row = stackalloc byte[N];
        for (int s = 0; s < Sets; s++)
        {
            blocks[s] = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
            values[s] = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
            kScales[s] = (float*)NativeMemory.AlignedAlloc(Positions * 4, 64);
            vScales[s] = (float*)NativeMemory.AlignedAlloc(Positions * 4, 64);
            for (int p = 0; p < Positions; p++)
            {
                for (int d = 0; d < N; d++) x[d] = (float)(rng.NextDouble() * 2 - 1);
                kScales[s][p] = Int8Row.Encode(x, row);
                Int8KeyBlocks.Store(row, blocks[s], p, N);
                for (int d = 0; d < N; d++) x[d] = (float)(rng.NextDouble() * 2 - 1);
                vScales[s][p] = Int8Row.Encode(x, values[s] + (long)p * N);
            }
        }
        float* q = (float*)NativeMemory.AlignedAlloc(4 * N * 4, 64);
        short* q16 = (short*)NativeMemory.AlignedAlloc(4 * N * 2, 64);
        float* fac = (float*)NativeMemory.AlignedAlloc(64, 64);
        float* scores = (float*)NativeMemory.AlignedAlloc(4 * Positions * 4, 64);
        float* output = (float*)NativeMemory.AlignedAlloc(4 * N * 4, 64);
        for (int i = 0; i < 4 * N; i++) q[i] = (float)(rng.NextDouble() * 2 - 1);
        for (int g = 0; g < 4; g++) fac[g] = Int8Attention.QuantizeQuery(q + g * N, N, q16 + g * N);
        for (int i = 0; i < 4 * Positions; i++) scores[i] = (float)rng.NextDouble();
        Console.WriteLine($"int8 attention kernels, one kv head x 4 queries, {Positions} x {N}; ns per position: hot (one set) | cold ({Sets} sets rotated, {Sets * 2 * bytes >> 20} MiB)");
        for (int r = 0; r < rounds; r++)
        {
            var (sh, sc) = Both(s => Int8KeyBlocks.ScoresGroup4<WidestVector>(blocks[s], kScales[s], N, q16, fac, scores, Positions, 0, Positions));
            var (vh, vc) = Both(s => { for (int c = 0; c < Positions; c += Chunk) Int8Attention.AccumulateGroup4<WidestVector>(values[s] + (long)c * N, vScales[s] + c, N, N, scores + c, Positions, output, Chunk); });
            var (rh, rc) = Both(s => Sum(blocks[s], bytes));
            var (bh, bc) = Both(s => { Int8KeyBlocks.ScoresGroup4<WidestVector>(blocks[s], kScales[s], N, q16, fac, scores, Positions, 0, Positions); for (int c = 0; c < Positions; c += Chunk) Int8Attention.AccumulateGroup4<WidestVector>(values[s] + (long)c * N, vScales[s] + c, N, N, scores + c, Positions, output, Chunk); });
            Console.WriteLine($"round {r + 1}: scores {sh:F2} | {sc:F2}   V {vh:F2} | {vc:F2}   both {bh:F2} | {bc:F2}   plain read of 128 B {rh:F2} | {rc:F2}");
        }
    }

    private static long _sink;

    private static long Sum(byte* p, long bytes)
    {
        var a = Vector512<long>.Zero;
        var b = Vector512<long>.Zero;
        for (long i = 0; i < bytes; i += 128)
        {
            a += Vector512.Load((long*)(p + i));
            b += Vector512.Load((long*)(p + i + 64));
        }
        return Vector512.Sum(a + b);
    }

    private static (double Hot, double Cold) Both(Action<int> run)
    {
        var sw = new Stopwatch();
        for (int s = 0; s < Sets; s++) run(s);
        double hot = double.MaxValue, cold = double.MaxValue;
        for (int i = 0; i < 50; i++)
        {
            sw.Restart();
            run(0);
            hot = Math.Min(hot, sw.Elapsed.TotalNanoseconds / Positions);
        }
        for (int round = 0; round < 4; round++)
        {
            sw.Restart();
            for (int s = 0; s < Sets; s++) run(s);
            cold = Math.Min(cold, sw.Elapsed.TotalNanoseconds / Positions / Sets);
        }
        _sink++;
        return (hot, cold);
    }
}

/// <summary>`quick-int8-cache [rounds]`: the same kv head through <see cref="BitNetSharp.Model.KvCache"/> exactly as the engine's chunk runs call it (hot).</summary>
internal static unsafe class QuickInt8CacheCalls
{
    public static void Run(int rounds)
    {
        const int n = 128, depth = 4097, chunk = 256;
        int layers = int.TryParse(Environment.GetEnvironmentVariable("QUICK_CACHE_LAYERS"), out int ls) ? ls : 8;
        var type = Enum.Parse<BitNetSharp.Model.KvCacheType>(Environment.GetEnvironmentVariable("QUICK_CACHE_TYPE") ?? "int8", ignoreCase: true);
        var rng = new Random(3);
        var cache = new BitNetSharp.Model.KvCache(layers, 1, n, depth + 15, type);
        var k = new float[n];
        var v = new float[n];
        for (int p = 0; p < depth; p++)
            for (int l = 0; l < layers; l++)
            {
                for (int d = 0; d < n; d++) { k[d] = (float)(rng.NextDouble() * 2 - 1); v[d] = (float)(rng.NextDouble() * 2 - 1); }
                cache.Write(l, p, k, v);
            }
        var q = new float[4 * n];
        for (int i = 0; i < q.Length; i++) q[i] = (float)(rng.NextDouble() * 2 - 1);
        int stride = cache.ContextLength;
        var scores = new float[4 * stride];
        var o = new float[4 * n];
        var sw = new Stopwatch();
        for (int r = 0; r < rounds; r++)
        {
            double be = double.MaxValue, bs = double.MaxValue, bv = double.MaxValue, bsc = double.MaxValue, bvc = double.MaxValue;
            for (int rep = 0; rep < 20 + Math.Max(20, 2 * layers); rep++)
            {
                int l = rep < 20 ? 0 : (rep * 7) % layers;
                sw.Restart();
                cache.ScoresGroupRange(l, 0, q, 4, scores, stride, 0, depth, 0.088f);
                double ts = sw.Elapsed.TotalNanoseconds / depth;
                sw.Restart();
                fixed (float* ps = scores)
                    for (int ch = 0; ch * chunk < depth; ch++)
                    {
                        int first = ch * chunk, count = Math.Min(chunk, depth - first);
                        for (int g = 0; g < 4; g++) PartialSoftmax.Exponentiate(ps + g * stride + first, count, out _);
                    }
                double te = sw.Elapsed.TotalNanoseconds / depth;
                sw.Restart();
                for (int ch = 0; ch * chunk < depth; ch++)
                {
                    int first = ch * chunk, count = Math.Min(chunk, depth - first);
                    cache.AccumulateVGroupRange(l, 0, scores.AsSpan(first), 4, stride, o, first, count);
                }
                double tv = sw.Elapsed.TotalNanoseconds / depth;
                if (rep < 20) { bs = Math.Min(bs, ts); bv = Math.Min(bv, tv); be = Math.Min(be, te); }
                else { bsc = Math.Min(bsc, ts); bvc = Math.Min(bvc, tv); }
            }
            Console.WriteLine($"round {r + 1}: {type} through KvCache, ns per position: scores hot {bs:F2} rotating {bsc:F2}   exp hot {be:F2}   V hot {bv:F2} rotating {bvc:F2}");
        }
    }
}
