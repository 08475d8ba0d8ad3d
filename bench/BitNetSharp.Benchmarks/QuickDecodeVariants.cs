using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using BitNetSharp.Kernels;
using BitNetSharp.Quantization;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// `quick-decode` mode: the single-thread decode mat-vec of the 2B4T shape (q, k, v, o, gate, up, down per layer, enough
/// layers that the weights are far larger than the caches), one token at a time, for each kernel variant and for a
/// plain streaming sum over the same bytes, alternated over several rounds in one process so that the ratios are
/// measured under the same conditions. Prints the median GB/s of weights per variant and its ratio to the plain sum.
/// </summary>
public static unsafe class QuickDecodeVariants
{
    private const int Hidden = 2560, Ffn = 6912;

    public static void Run(int layers, int rounds, double secondsPerRun)
    {
        var shapes = new List<(int K, int N)>();
        for (int l = 0; l < layers; l++)
            shapes.AddRange([(Hidden, Hidden), (Hidden, 640), (Hidden, 640), (Hidden, Hidden), (Hidden, Ffn), (Hidden, Ffn), (Ffn, Hidden)]);
        var rng = new Random(7);
        var ws = new TernaryMatrix[shapes.Count];
        long bytes = 0;
        for (int i = 0; i < shapes.Count; i++)
        {
            ws[i] = TernaryMatrix.Allocate(shapes[i].N, shapes[i].K);
            var span = new Span<byte>(ws[i].Data, (int)ws[i].ByteLength);
            rng.NextBytes(span);
            for (int j = 0; j < span.Length; j++)
            {
                int b = span[j];
                for (int s = 0; s < 8; s += 2) if (((b >> s) & 3) == 3) b &= ~(1 << s);
                span[j] = (byte)b;
            }
            bytes += ws[i].ByteLength;
        }
        using var xh = Activations(rng, Hidden);
        using var xf = Activations(rng, Ffn);
        Memory.NativeBuffer? sh = null, sf = null;
        var rh = Avx512TernaryKernel.InterleavedRows(xh, ref sh);
        var rf = Avx512TernaryKernel.InterleavedRows(xf, ref sf);
        var y = new float[Ffn];

        var variants = new (string Name, Action<TernaryMatrix, ActivationRows, float[]> Run)[]
        {
            ("gfni kernel (MatMul)", (w, x, o) => Production(GfniKernel, w, x, o)),
            ("shift kernel (MatMul)", (w, x, o) => Production(ShiftKernel, w, x, o)),
            ("gfni t1@4K", (w, x, o) => Rows<Gfni<T1At4K>>(w, x, o)),
            ("gfni t1@8K", (w, x, o) => Rows<Gfni<T1At8K>>(w, x, o)),
            ("gfni t1@16K", (w, x, o) => Rows<Gfni<T1At16K>>(w, x, o)),
            ("gfni t1@32K", (w, x, o) => Rows<Gfni<T1At32K>>(w, x, o)),
            ("gfni t2@8K", (w, x, o) => Rows<Gfni<T2At8K>>(w, x, o)),
            ("gfni t1@8K every 2nd", (w, x, o) => Rows<GfniHalf<T1At8K>>(w, x, o)),
            ("masked t1@8K", (w, x, o) => Rows<Masked<T1At8K>>(w, x, o)),
        };

        // Every variant must give the production kernel's exact integers before it is timed.
        foreach (var (name, run) in variants)
        {
            var expect = new float[Ffn];
            var got = new float[Ffn];
            for (int i = 0; i < 7; i++)
            {
                var w = ws[i];
                var x = w.Cols == Hidden ? rh : rf;
                Rows<Today<GfniSplit>>(w, x, expect);
                run(w, x, got);
                for (int n = 0; n < w.Rows; n++)
                    if (BitConverter.SingleToInt32Bits(expect[n]) != BitConverter.SingleToInt32Bits(got[n]))
                        throw new InvalidOperationException($"{name}: row {n} of matrix {i} differs ({got[n]} vs {expect[n]}).");
            }
        }

        var results = new Dictionary<string, List<double>>();
        var names = variants.Select(v => v.Name).Append("plain sum").ToArray();
        foreach (var n in names) results[n] = [];
        Console.WriteLine($"{shapes.Count} matrices, {bytes / 1e6:F0} MB of packed weights; {rounds} rounds of {secondsPerRun:F1} s per variant, alternating");
        for (int round = 0; round < rounds; round++)
        {
            foreach (var (name, run) in variants)
                results[name].Add(Time(bytes, secondsPerRun, () => { foreach (var w in ws) run(w, w.Cols == Hidden ? rh : rf, y); }));
            results["plain sum"].Add(Time(bytes, secondsPerRun, () => { foreach (var w in ws) PlainSum(w.Data, w.ByteLength); }));
        }
        double plain = Median(results["plain sum"]);
        foreach (var n in names)
        {
            var r = results[n];
            Console.WriteLine($"  {n,-22} {Median(r),6:F1} GB/s  (min {r.Min(),5:F1}, max {r.Max(),5:F1})  {Median(r) / plain,5:F2} of plain");
        }
        sh?.Dispose();
        sf?.Dispose();
        foreach (var w in ws) w.Dispose();
    }

    private static readonly TernaryKernel GfniKernel = new Avx512GfniTernaryKernel(), ShiftKernel = new Avx512TernaryKernel();

    private static void Production(TernaryKernel kernel, TernaryMatrix w, ActivationRows x, float[] y)
    {
        fixed (float* py = y) kernel.MatMul(w, x, py, w.Rows, 0, w.Rows);
    }

    private static QuantizedActivations Activations(Random rng, int k)
    {
        var x = new QuantizedActivations(1, k);
        var f = new float[k];
        for (int i = 0; i < k; i++) f[i] = (float)(rng.NextDouble() - 0.5);
        Int8ActivationQuantizer.Quantize(f, x, 0);
        return x;
    }

    private static double Median(List<double> v)
    {
        var s = v.Order().ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }

    private static double Time(long bytes, double seconds, Action pass)
    {
        pass();
        int passes = 0;
        var sw = Stopwatch.StartNew();
        do { pass(); passes++; } while (sw.Elapsed.TotalSeconds < seconds);
        return bytes * (double)passes / sw.Elapsed.TotalSeconds / 1e9;
    }

    private static long s_sink;

    private static void PlainSum(byte* p, long n)
    {
        var a0 = Vector512<long>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        long i = 0;
        for (; i + 256 <= n; i += 256)
        {
            a0 += Vector512.Load((long*)(p + i)); a1 += Vector512.Load((long*)(p + i + 64));
            a2 += Vector512.Load((long*)(p + i + 128)); a3 += Vector512.Load((long*)(p + i + 192));
        }
        s_sink += Vector512.Sum(a0 + a1 + a2 + a3);
    }

    public interface IRowDot { static abstract int Dot(byte* w, sbyte* q, int blocks); }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Rows<TDot>(TernaryMatrix w, ActivationRows x, float[] y) where TDot : IRowDot
    {
        int blocks = w.PaddedCols / TernaryMatrix.BlockSize;
        float[] scales = w.RowScales;
        sbyte* q = x.Row(0);
        int sum = x.Sums[0];
        float s = x.Scales[0];
        for (int n = 0; n < w.Rows; n++)
            y[n] = TernaryKernel.Epilogue(TDot.Dot(w.Row(n), q, blocks), sum, s, scales[n]);
    }

    public readonly struct Today<TSplit> : IRowDot where TSplit : ICodeSplit512
    {
        public static int Dot(byte* w, sbyte* q, int blocks) => Avx512TernaryKernel.Dot512<TSplit>.Dot(w, q, blocks);
    }

    public interface IFetch { static abstract void Fetch(byte* p); }
    public readonly struct NoFetch : IFetch { public static void Fetch(byte* p) { } }
    public readonly struct T0At4K : IFetch { public static void Fetch(byte* p) => Sse.Prefetch0(p + 4096); }
    public readonly struct T0At8K : IFetch { public static void Fetch(byte* p) => Sse.Prefetch0(p + 8192); }
    public readonly struct T0At16K : IFetch { public static void Fetch(byte* p) => Sse.Prefetch0(p + 16384); }
    public readonly struct T1At4K : IFetch { public static void Fetch(byte* p) => Sse.Prefetch1(p + 4096); }
    public readonly struct T1At8K : IFetch { public static void Fetch(byte* p) => Sse.Prefetch1(p + 8192); }
    public readonly struct T1At16K : IFetch { public static void Fetch(byte* p) => Sse.Prefetch1(p + 16384); }
    public readonly struct T1At32K : IFetch { public static void Fetch(byte* p) => Sse.Prefetch1(p + 32768); }
    public readonly struct T2At8K : IFetch { public static void Fetch(byte* p) => Sse.Prefetch2(p + 8192); }
    public readonly struct NtaAt8K : IFetch { public static void Fetch(byte* p) => Sse.PrefetchNonTemporal(p + 8192); }

    /// <summary>Today's GFNI loop with a pluggable prefetch (even block counts only, as the 2B4T shapes have).</summary>
    public readonly struct Gfni<TFetch> : IRowDot where TFetch : IFetch
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static int Dot(byte* w, sbyte* q, int blocks)
        {
            var ones = Vector512.Create((short)1);
            var acc = Vector512<int>.Zero;
            int pairs = blocks >> 1;
            for (int p = 0; p < pairs;)
            {
                int end = Math.Min(pairs, p + 16);
                var acc16 = Vector512<short>.Zero;
                for (; p < end; p++)
                {
                    TFetch.Fetch(w + p * 64);
                    var packed = Vector512.Load(w + p * 64);
                    sbyte* qb = q + p * 256;
                    var s01 = Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(GfniSplit.Code0(packed), Vector512.Load(qb)), Avx512BW.MultiplyAddAdjacent(GfniSplit.Code1(packed), Vector512.Load(qb + 64)));
                    var s23 = Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(GfniSplit.Code2(packed), Vector512.Load(qb + 128)), Avx512BW.MultiplyAddAdjacent(GfniSplit.Code3(packed), Vector512.Load(qb + 192)));
                    acc16 = Avx512BW.Add(acc16, Avx512BW.Add(s01, s23));
                }
                acc = Avx512F.Add(acc, Avx512BW.MultiplyAddAdjacent(acc16, ones));
            }
            return Vector512.Sum(acc);
        }
    }

    /// <summary>As <see cref="Gfni{TFetch}"/>, one prefetch per 128 bytes (even steps, lines of the 128-byte pair).</summary>
    public readonly struct GfniHalf<TFetch> : IRowDot where TFetch : IFetch
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static int Dot(byte* w, sbyte* q, int blocks)
        {
            var ones = Vector512.Create((short)1);
            var acc = Vector512<int>.Zero;
            int pairs = blocks >> 1;
            for (int p = 0; p < pairs;)
            {
                int end = Math.Min(pairs, p + 16);
                var acc16 = Vector512<short>.Zero;
                for (; p < end; p++)
                {
                    if ((p & 1) == 0) { TFetch.Fetch(w + p * 64); TFetch.Fetch(w + p * 64 + 64); }
                    var packed = Vector512.Load(w + p * 64);
                    sbyte* qb = q + p * 256;
                    var s01 = Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(GfniSplit.Code0(packed), Vector512.Load(qb)), Avx512BW.MultiplyAddAdjacent(GfniSplit.Code1(packed), Vector512.Load(qb + 64)));
                    var s23 = Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(GfniSplit.Code2(packed), Vector512.Load(qb + 128)), Avx512BW.MultiplyAddAdjacent(GfniSplit.Code3(packed), Vector512.Load(qb + 192)));
                    acc16 = Avx512BW.Add(acc16, Avx512BW.Add(s01, s23));
                }
                acc = Avx512F.Add(acc, Avx512BW.MultiplyAddAdjacent(acc16, ones));
            }
            return Vector512.Sum(acc);
        }
    }

    /// <summary>
    /// Codes masked in place, not shifted: (packed &amp; 3·4^k) = 4^k·c, so vpmaddubsw gives 4^k × the pair sums. Codes at
    /// bits 0–1 and (after an exact arithmetic shift by 6) bits 6–7 share an int16 accumulator, bits 2–3 (×4) and 4–5
    /// (×16) have their own; every 4 steps they are widened with weights 16, 4, 1 into one int32 sum of 16 × the dot.
    /// One shift and four ANDs per 64 bytes instead of three shifts and four ANDs (or four GFNI ops on the multiply ports).
    /// </summary>
    public readonly struct Masked<TFetch> : IRowDot where TFetch : IFetch
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static int Dot(byte* w, sbyte* q, int blocks)
        {
            var w16 = Vector512.Create((short)16);
            var w4 = Vector512.Create((short)4);
            var ones = Vector512.Create((short)1);
            var m0 = Vector512.Create((byte)0xC0);
            var m1 = Vector512.Create((byte)0x30);
            var m2 = Vector512.Create((byte)0x0C);
            var m3 = Vector512.Create((byte)0x03);
            var acc = Vector512<int>.Zero;
            int pairs = blocks >> 1;
            for (int p = 0; p < pairs;)
            {
                int end = Math.Min(pairs, p + 4);
                Vector512<short> a = default, b = default, c = default;
                for (; p < end; p++)
                {
                    TFetch.Fetch(w + p * 64);
                    var packed = Vector512.Load(w + p * 64);
                    sbyte* qb = q + p * 256;
                    var top = Avx512BW.ShiftRightArithmetic(Avx512BW.MultiplyAddAdjacent(packed & m0, Vector512.Load(qb)), 6);
                    a = Avx512BW.Add(a, Avx512BW.Add(top, Avx512BW.MultiplyAddAdjacent(packed & m3, Vector512.Load(qb + 192))));
                    c = Avx512BW.Add(c, Avx512BW.MultiplyAddAdjacent(packed & m1, Vector512.Load(qb + 64)));
                    b = Avx512BW.Add(b, Avx512BW.MultiplyAddAdjacent(packed & m2, Vector512.Load(qb + 128)));
                }
                acc = Avx512F.Add(acc, Avx512F.Add(Avx512BW.MultiplyAddAdjacent(a, w16), Avx512F.Add(Avx512BW.MultiplyAddAdjacent(b, w4), Avx512BW.MultiplyAddAdjacent(c, ones))));
            }
            return Vector512.Sum(acc) >> 4;
        }
    }
}
