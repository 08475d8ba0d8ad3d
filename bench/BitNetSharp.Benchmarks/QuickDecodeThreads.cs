using System.Diagnostics;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using BitNetSharp.Kernels;
using BitNetSharp.Quantization;
using BitNetSharp.Threading;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// `quick-decode threads [threads] [layers] [rounds] [seconds]`: the decode mat-vecs of the 2B4T shape (q, k, v, o, gate,
/// up, down per layer; weights far larger than the caches) on several threads, one token (and two) at a time, with the
/// rows shared out in different ways — <see cref="TernaryMatMul"/>'s owned ranges (today), chunks from one shared counter
/// (the grain before, and coarser ones), one static slice per thread — and plain sums of the same bytes split the same
/// way, and the four-stream loops with other software prefetches (the kernel's own is prefetchnta 2 KiB ahead), alternated over rounds in one process. Prints the median GB/s of weights per variant. Every variant is checked
/// bit for bit against <see cref="TernaryMatMul"/> first.
/// </summary>
public static unsafe class QuickDecodeThreads
{
    private const int Hidden = 2560, Ffn = 6912;

    public static void Run(int threads, int layers, int rounds, double secondsPerRun)
    {
        var rng = new Random(7);
        var ws = QuickDecodeVariants.DecodeMatrices(layers, rng, out long bytes);
        var kernel = KernelRegistry.Ternary;
        using var pool = new WorkerPool(threads);
        using var op = new TernaryMatMul(pool);
        using var op2 = new TernaryMatMul(pool);
        var one = (Hidden: Prepared(kernel, rng, Hidden, 1), Ffn: Prepared(kernel, rng, Ffn, 1));
        var two = (Hidden: Prepared(kernel, rng, Hidden, 2), Ffn: Prepared(kernel, rng, Ffn, 2));
        var y = new float[2 * Ffn];
        var chunks = new ChunkWork { Kernel = kernel };
        var sums = new SumWork { Threads = threads };
        using var contiguous = new Memory.NativeBuffer(bytes / 256 * 256);
        var whole = new BufferSumWork { Data = contiguous.Pointer, Bytes = contiguous.ByteLength, Threads = threads };
        ActivationRows Rows((ActivationRows Hidden, ActivationRows Ffn) x, TernaryMatrix w) => w.Cols == Hidden ? x.Hidden : x.Ffn;

        void Production((ActivationRows, ActivationRows) x, TernaryMatMul m)
        {
            fixed (float* py = y) foreach (var w in ws) m.Run(kernel, w, Rows(x, w), py, w.Rows);
        }
        void With(TernaryKernel? variant, (ActivationRows, ActivationRows) x, TernaryMatMul m)
        {
            var k = variant ?? kernel;
            fixed (float* py = y) foreach (var w in ws) m.Run(k, w, Rows(x, w), py, w.Rows);
        }
        void Chunked((ActivationRows, ActivationRows) x, Func<TernaryMatrix, int> grain)
        {
            fixed (float* py = y)
                foreach (var w in ws)
                {
                    chunks.Set(w, Rows(x, w), py);
                    pool.Run(chunks, w.Rows, grain(w));
                }
        }
        void Summed(bool fourStreams)
        {
            sums.FourStreams = fourStreams;
            foreach (var w in ws)
            {
                sums.W = w;
                pool.Run(sums, threads, 1);
            }
        }
        int Before(TernaryMatrix w, int tokens) => op.Grain(w.Rows, w.Cols, tokens);
        var candidates = new (string Name, Action Run)[]
        {
            ($"1 token: owned ranges ({TernaryKernel.WeightStreams} stream(s))", () => Production(one, op)),
            ("1 token: streams prefetcht1 1 KiB (before)", () => With(FetchT1At1K, one, op)),
            ("1 token: streams prefetcht0 2 KiB", () => With(FetchT0At2K, one, op)),
            ("1 token: streams prefetchnta 1 KiB", () => With(FetchNtaAt1K, one, op)),
            ("1 token: streams prefetchnta 4 KiB", () => With(FetchNtaAt4K, one, op)),
            ("1 token: streams without prefetch", () => With(NoFetch, one, op)),
            ("1 token: chunks, grain before", () => Chunked(one, w => Before(w, 1))),
            ("1 token: chunks of rows/4", () => Chunked(one, w => (w.Rows / 4 + 15) / 16 * 16)),
            ("1 token: one slice per thread", () => Chunked(one, _ => 0)),
            ("2 tokens: owned ranges", () => Production(two, op2)),
            ("2 tokens: chunks, grain before", () => Chunked(two, w => Before(w, 2))),
            ("sum: one slice per thread", () => Summed(false)),
            ("sum: one slice per thread, 4 streams", () => Summed(true)),
            ("sum: the same bytes in one buffer, 4 streams", () => pool.Run(whole, threads, 1)),
        };
        // The prefetch rows need the avx512gfni kernel's loops (FetchVariantKernel); elsewhere they are left out.
        var variants = candidates.Where(v => NoFetch is not null || !v.Name.StartsWith("1 token: streams", StringComparison.Ordinal)).ToArray();

        // The share-outs must all give TernaryMatMul's floats (exact integer sums: the split cannot change them).
        var expect = new float[2 * Ffn];
        foreach (var (x, tokens) in new[] { (one, 1), (two, 2) })
            foreach (var w in ws.Take(7))
            {
                fixed (float* pe = expect) op.Run(kernel, w, Rows(x, w), pe, w.Rows);
                foreach (Func<TernaryMatrix, int> grain in new Func<TernaryMatrix, int>[] { v => Before(v, tokens), _ => 0 })
                {
                    Array.Clear(y);
                    fixed (float* py = y)
                    {
                        chunks.Set(w, Rows(x, w), py);
                        pool.Run(chunks, w.Rows, grain(w));
                    }
                    for (int n = 0; n < tokens * w.Rows; n++)
                        if (BitConverter.SingleToInt32Bits(expect[n]) != BitConverter.SingleToInt32Bits(y[n]))
                            throw new InvalidOperationException($"chunked run differs at output {n} of a {w.Rows}x{w.Cols} matrix ({tokens} token(s)): {expect[n]} vs {y[n]}");
                }
            }

        Console.WriteLine($"kernel {kernel.Name}, {TernaryKernel.WeightStreams} weight stream(s), {threads} threads; {ws.Length} matrices, {bytes / 1e6:F0} MB of packed weights; {rounds} rounds of {secondsPerRun:F1} s per variant, alternating");
        var results = variants.ToDictionary(v => v.Name, _ => new List<double>());
        for (int round = 0; round < rounds; round++)
            for (int i = 0; i < variants.Length; i++)
            {
                var (name, run) = variants[(i + round) % variants.Length];
                results[name].Add(QuickDecodeVariants.Time(bytes, secondsPerRun, run));
            }
        foreach (var (name, _) in variants)
        {
            var r = results[name].Order().ToList();
            Console.WriteLine($"  {name,-44} {r[r.Count / 2],6:F1} GB/s  (min {r[0],5:F1}, max {r[^1],5:F1})");
        }
        foreach (var w in ws) w.Dispose();
    }

    private static readonly List<IDisposable> KeptAlive = [];

    // The production kernel (BalancedSplit codes) with another prefetch in its four-stream loops; null without GFNI.
    private static readonly TernaryKernel? FetchT1At1K = Fetching<FetchT1<D1K>>(), FetchT0At2K = Fetching<FetchT0<D2K>>(),
        FetchNtaAt1K = Fetching<FetchNta<D1K>>(), FetchNtaAt4K = Fetching<FetchNta<D4K>>(), NoFetch = Fetching<FetchNone>();

    private static TernaryKernel? Fetching<TFetch>() where TFetch : IStreamFetch =>
        Avx512BW.IsSupported && Gfni.V512.IsSupported ? new FetchVariantKernel<FetchSplit<TFetch>>() : null;

    private static ActivationRows Prepared(TernaryKernel kernel, Random rng, int k, int tokens)
    {
        var x = new QuantizedActivations(tokens, k);
        var f = new float[k];
        for (int t = 0; t < tokens; t++)
        {
            for (int i = 0; i < k; i++) f[i] = (float)(rng.NextDouble() - 0.5);
            Int8ActivationQuantizer.Quantize(f, x, t);
        }
        Memory.NativeBuffer? scratch = null;
        var rows = kernel.Prepare(x, ref scratch);
        // Held for the process: the rows point into them, and an unreferenced buffer's finalizer frees its memory
        // (before, a GC between here and the check freed it and the check failed at random).
        KeptAlive.Add(x);
        if (scratch is not null) KeptAlive.Add(scratch);
        return rows;
    }

    /// <summary>Kernel over the rows it is handed (chunks or slices).</summary>
    private sealed class ChunkWork : IParallelWork
    {
        public TernaryKernel Kernel = null!;
        private TernaryMatrix? _w;
        private ActivationRows _x;
        private float* _y;

        public void Set(TernaryMatrix w, ActivationRows x, float* y)
        {
            _w = w;
            _x = x;
            _y = y;
        }

        public void Execute(int start, int end, int worker) => Kernel.MatMul(_w!, _x, _y, _w!.Rows, start, end);
    }

    /// <summary>Item t sums slice t of one buffer as long as all the matrices together, four streams per slice: the
    /// matrices' bytes without a restart of the streams or a call of the pool per matrix.</summary>
    private sealed class BufferSumWork : IParallelWork
    {
        public byte* Data;
        public long Bytes;
        public int Threads;

        public void Execute(int start, int end, int worker)
        {
            for (int t = start; t < end; t++)
            {
                long from = Bytes * t / Threads / 256 * 256, to = Bytes * (t + 1) / Threads / 256 * 256;
                SumWork.Four(Data + from, (to - from) / 4 / 64 * 64);
            }
        }
    }

    /// <summary>Item t sums slice t of <see cref="Threads"/> of the matrix's bytes: in address order, or its four
    /// quarters side by side.</summary>
    private sealed class SumWork : IParallelWork
    {
        public TernaryMatrix W = null!;
        public int Threads;
        public bool FourStreams;
        private static long s_sink;

        public void Execute(int start, int end, int worker)
        {
            for (int t = start; t < end; t++)
            {
                long from = W.ByteLength * t / Threads / 256 * 256, to = W.ByteLength * (t + 1) / Threads / 256 * 256;
                byte* p = W.Data + from;
                long n = to - from;
                if (FourStreams) Four(p, n / 4 / 64 * 64);
                else One(p, n);
            }
        }

        private static void One(byte* p, long n)
        {
            var a0 = Vector256<long>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
            for (long i = 0; i + 128 <= n; i += 128)
            {
                a0 += Vector256.Load((long*)(p + i)); a1 += Vector256.Load((long*)(p + i + 32));
                a2 += Vector256.Load((long*)(p + i + 64)); a3 += Vector256.Load((long*)(p + i + 96));
            }
            s_sink += Vector256.Sum(a0 + a1 + a2 + a3);
        }

        internal static void Four(byte* p, long quarter)
        {
            var a0 = Vector256<long>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
            for (long i = 0; i + 64 <= quarter; i += 64)
            {
                a0 += Vector256.Load((long*)(p + i)) + Vector256.Load((long*)(p + i + 32));
                a1 += Vector256.Load((long*)(p + quarter + i)) + Vector256.Load((long*)(p + quarter + i + 32));
                a2 += Vector256.Load((long*)(p + 2 * quarter + i)) + Vector256.Load((long*)(p + 2 * quarter + i + 32));
                a3 += Vector256.Load((long*)(p + 3 * quarter + i)) + Vector256.Load((long*)(p + 3 * quarter + i + 32));
            }
            s_sink += Vector256.Sum(a0 + a1 + a2 + a3);
        }
    }
}

public interface IFetchDistance { static abstract long Bytes { get; } }
public readonly struct D1K : IFetchDistance { public static long Bytes => 1024; }
public readonly struct D2K : IFetchDistance { public static long Bytes => 2048; }
public readonly struct D4K : IFetchDistance { public static long Bytes => 4096; }

public unsafe interface IStreamFetch { static abstract void Fetch(byte* line); }
public readonly unsafe struct FetchNta<TD> : IStreamFetch where TD : IFetchDistance { public static void Fetch(byte* line) => Sse.PrefetchNonTemporal(line + TD.Bytes); }
public readonly unsafe struct FetchT0<TD> : IStreamFetch where TD : IFetchDistance { public static void Fetch(byte* line) => Sse.Prefetch0(line + TD.Bytes); }
public readonly unsafe struct FetchT1<TD> : IStreamFetch where TD : IFetchDistance { public static void Fetch(byte* line) => Sse.Prefetch1(line + TD.Bytes); }
public readonly unsafe struct FetchNone : IStreamFetch { public static void Fetch(byte* line) { } }

/// <summary><see cref="BalancedSplit"/>'s codes with <typeparamref name="TFetch"/> as the four-stream loops' prefetch.</summary>
public readonly unsafe struct FetchSplit<TFetch> : ICodeSplit512 where TFetch : IStreamFetch
{
    public static Vector512<byte> Code0(Vector512<byte> packed) => BalancedSplit.Code0(packed);
    public static Vector512<byte> Code1(Vector512<byte> packed) => BalancedSplit.Code1(packed);
    public static Vector512<byte> Code2(Vector512<byte> packed) => BalancedSplit.Code2(packed);
    public static Vector512<byte> Code3(Vector512<byte> packed) => BalancedSplit.Code3(packed);
    public static void FetchStream(byte* line) => TFetch.Fetch(line);
}

/// <summary>The avx512gfni kernel with <typeparamref name="TSplit"/>'s prefetch (its activation layout, its drivers).</summary>
public sealed unsafe class FetchVariantKernel<TSplit> : TernaryKernel where TSplit : ICodeSplit512
{
    public override string Name => "avx512gfni (prefetch variant)";
    public override bool IsSupported => Avx512BW.IsSupported && Gfni.V512.IsSupported;
    protected override void MatMulCore(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int rowStart, int rowEnd) =>
        TernaryDriver.RunPairs<Avx512TernaryKernel.Dot512<TSplit>>(w, x, y, yStride, rowStart, rowEnd);
    protected override void MatVecQuartersCore(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int sliceStart, int quarter, int from, int to) =>
        TernaryDriver.Quarters<Avx512TernaryKernel.Dot512<TSplit>>(w, x, y, yStride, sliceStart, quarter, from, to);
    public override ActivationRows Prepare(QuantizedActivations x, ref Memory.NativeBuffer? scratch) => Avx512TernaryKernel.InterleavedRows(x, ref scratch);
}
