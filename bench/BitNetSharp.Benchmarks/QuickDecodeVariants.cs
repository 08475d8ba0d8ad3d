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

    /// <summary>The decode matrices of <paramref name="layers"/> 2B4T layers (q, k, v, o, gate, up, down), random valid
    /// codes; <paramref name="bytes"/>: their packed size.</summary>
    internal static TernaryMatrix[] DecodeMatrices(int layers, Random rng, out long bytes)
    {
        var shapes = new List<(int K, int N)>();
        for (int l = 0; l < layers; l++)
            shapes.AddRange([(Hidden, Hidden), (Hidden, 640), (Hidden, 640), (Hidden, Hidden), (Hidden, Ffn), (Hidden, Ffn), (Ffn, Hidden)]);
        var ws = new TernaryMatrix[shapes.Count];
        bytes = 0;
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
        return ws;
    }

    public static void Run(int layers, int rounds, double secondsPerRun)
    {
        var rng = new Random(7);
        var ws = DecodeMatrices(layers, rng, out long bytes);
        using var xh = Activations(rng, Hidden);
        using var xf = Activations(rng, Ffn);
        Memory.NativeBuffer? sh = null, sf = null;
        var rh = Avx512TernaryKernel.InterleavedRows(xh, ref sh);
        var rf = Avx512TernaryKernel.InterleavedRows(xf, ref sf);
        ActivationRows nh = ActivationRows.Of(xh), nf = ActivationRows.Of(xf);
        Memory.NativeBuffer? slh = null, slf = null;
        bool lut = LutKernel.IsSupported;
        ActivationRows lh = lut ? LutKernel.Prepare(xh, ref slh) : default, lf = lut ? LutKernel.Prepare(xf, ref slf) : default;
        if (lut) foreach (var w in ws) LutKernel.PrepareWeights(w);
        var y = new float[Ffn];

        // The variants this CPU can run: without AVX-512 (Zen 2/3, Intel client cores) only the AVX2 ones.
        bool avx512 = Avx512BW.IsSupported, gfni = avx512 && Gfni.V512.IsSupported, vbmi = Avx512Vbmi.IsSupported;
        int defaultStreams = TernaryKernel.WeightStreams;
        var candidates = new (string Name, bool Runs, Action<TernaryMatrix, ActivationRows, float[]> Run)[]
        {
            ("avx512lut kernel (MatMul), consecutive blocks", lut, (w, x, o) => Production(LutKernel, w, w.Cols == Hidden ? lh : lf, o)),
            ("avx512lut, 4 quarter streams", lut, (w, x, o) => LutQuarters(w, w.Cols == Hidden ? lh : lf, o)),
            ($"avx512gfni kernel (MatMul), {defaultStreams} stream(s)", gfni, (w, x, o) => Production(GfniKernel, w, x, o)),
            ("avx512gfni, 4 streams", gfni, (w, x, o) => Streams(4, () => Production(GfniKernel, w, x, o))),
            ("avx512gfni, 8 eighths (not used)", gfni, (w, x, o) => QuickEightStreams.Run(w, x, o)),
            ("avx512gfni, 1 stream", gfni, (w, x, o) => Streams(1, () => Production(GfniKernel, w, x, o))),
            ("balanced split (before), 1 stream", gfni, (w, x, o) => Streams(1, () => Driver<BalancedSplit>(w, x, o))),
            ("all-GFNI split, 1 stream", gfni, (w, x, o) => Streams(1, () => Driver<GfniSplit>(w, x, o))),
            ("shift split, 1 stream", avx512, (w, x, o) => Streams(1, () => Driver<ShiftSplit>(w, x, o))),
            ($"avx512 kernel (MatMul), {defaultStreams} stream(s)", avx512, (w, x, o) => Production(ShiftKernel, w, x, o)),
            ($"avx2 kernel (MatMul), {defaultStreams} stream(s)", true, (w, x, o) => Production(Avx2Kernel, w, w.Cols == Hidden ? nh : nf, o)),
            ("avx2, 4 streams", true, (w, x, o) => Streams(4, () => Production(Avx2Kernel, w, w.Cols == Hidden ? nh : nf, o))),
            ("avx2, 1 stream", true, (w, x, o) => Streams(1, () => Production(Avx2Kernel, w, w.Cols == Hidden ? nh : nf, o))),
            ("avx2 per-row (before)", true, (w, x, o) => Avx2Before(w, w.Cols == Hidden ? nh : nf, o)),
            ("LUT inner loop only (not exact)", vbmi, (w, x, o) => LutInnerLoop(w, x, o)),
            ("mix: gfni x3 + and, 1 stream", gfni, (w, x, o) => Streams(1, () => Driver<MixGfni3>(w, x, o))),
            ("mix: shift x2 + gfni + and, 1 stream", gfni, (w, x, o) => Streams(1, () => Driver<MixShift2Gfni>(w, x, o))),
            ("gfni per-row t0@8K (old)", gfni, (w, x, o) => Rows<Gfni<T0At8K>>(w, x, o)),
            ("gfni per-row no prefetch", gfni, (w, x, o) => Rows<Gfni<NoFetch>>(w, x, o)),
            ("gfni per-row t1@4K", gfni, (w, x, o) => Rows<Gfni<T1At4K>>(w, x, o)),
            ("gfni per-row t1@8K", gfni, (w, x, o) => Rows<Gfni<T1At8K>>(w, x, o)),
            ("gfni per-row t1@16K", gfni, (w, x, o) => Rows<Gfni<T1At16K>>(w, x, o)),
            ("gfni per-row t1@32K", gfni, (w, x, o) => Rows<Gfni<T1At32K>>(w, x, o)),
            ("gfni per-row t2@8K", gfni, (w, x, o) => Rows<Gfni<T2At8K>>(w, x, o)),
            ("gfni per-row nta@8K", gfni, (w, x, o) => Rows<Gfni<NtaAt8K>>(w, x, o)),
            ("gfni per-row t1 per 128B", gfni, (w, x, o) => Rows<GfniHalf<T1At8K>>(w, x, o)),
            ("masked per-row t1@8K", gfni, (w, x, o) => Rows<Masked<T1At8K>>(w, x, o)),
        };
        var variants = candidates.Where(v => v.Runs).Select(v => (v.Name, v.Run)).ToArray();
        Console.WriteLine($"kernels here: {string.Join(", ", KernelRegistry.SupportedTernary.Select(k => k.Name))}; 512-bit sums: {Vector512.IsHardwareAccelerated}; weight streams by default: {defaultStreams}");

        // Every variant must give the reference kernel's exact floats before it is timed.
        s_tables = new Memory.NativeBuffer((long)Ffn / 4 * 256, zero: false);
        new Span<byte>(s_tables.Pointer, Ffn / 4 * 256).Fill(1);
        foreach (var (name, run) in variants)
        {
            if (name.StartsWith("LUT", StringComparison.Ordinal)) continue;
            var expect = new float[Ffn];
            var got = new float[Ffn];
            for (int i = 0; i < 7; i++)
            {
                var w = ws[i];
                var x = w.Cols == Hidden ? rh : rf;
                fixed (float* pe = expect) Reference.MatMul(w, w.Cols == Hidden ? xh : xf, pe, w.Rows, 0, w.Rows);
                run(w, x, got);
                for (int n = 0; n < w.Rows; n++)
                    if (BitConverter.SingleToInt32Bits(expect[n]) != BitConverter.SingleToInt32Bits(got[n]))
                        throw new InvalidOperationException($"{name}: row {n} of matrix {i} differs ({got[n]} vs {expect[n]}).");
            }
        }

        var results = new Dictionary<string, List<double>>();
        var names = variants.Select(v => v.Name).Append("plain sum").Append("sum, prefetcht1 8K").Append("sum, 4 streams").Append("sum, 8 streams").ToArray();
        foreach (var n in names) results[n] = [];
        Console.WriteLine($"{ws.Length} matrices, {bytes / 1e6:F0} MB of packed weights; {rounds} rounds of {secondsPerRun:F1} s per variant, alternating");
        for (int round = 0; round < rounds; round++)
        {
            // Each round starts one variant further on, so that no variant always runs first or after the same one.
            for (int i = 0; i < variants.Length; i++)
            {
                var (name, run) = variants[(i + round) % variants.Length];
                results[name].Add(Time(bytes, secondsPerRun, () => { foreach (var w in ws) run(w, w.Cols == Hidden ? rh : rf, y); }));
            }
            results["plain sum"].Add(Time(bytes, secondsPerRun, () => { foreach (var w in ws) PlainSum(w.Data, w.ByteLength); }));
            results["sum, prefetcht1 8K"].Add(Time(bytes, secondsPerRun, () => { foreach (var w in ws) PrefetchSum(w.Data, w.ByteLength); }));
            results["sum, 4 streams"].Add(Time(bytes, secondsPerRun, () => { foreach (var w in ws) FourStreamSum(w.Data, w.ByteLength); }));
            results["sum, 8 streams"].Add(Time(bytes, secondsPerRun, () => { foreach (var w in ws) QuickEightStreams.EightStreamSum(w.Data, w.ByteLength); }));
        }
        double plain = Median(results["plain sum"]);
        foreach (var n in names)
        {
            var r = results[n];
            Console.WriteLine($"  {n,-40} {Median(r),6:F1} GB/s  (min {r.Min(),5:F1}, max {r.Max(),5:F1})  {Median(r) / plain,5:F2} of plain");
        }
        sh?.Dispose();
        slh?.Dispose();
        slf?.Dispose();
        sf?.Dispose();
        s_tables.Dispose();
        foreach (var w in ws) w.Dispose();
    }

    /// <summary>`quick-decode head`: the single-token F16 head of the 2B4T shape (128256 × 2560), today's
    /// <see cref="HeadKernels.MatVec"/> against other row orders and prefetches, and a plain sum of the same bytes,
    /// alternated in one process. QUICK_DECODE_HUGEPAGES=1: the table in transparent huge pages.</summary>
    public static void RunHead(int rounds, double secondsPerRun)
    {
        if (!Vector512.IsHardwareAccelerated)
        {
            Console.WriteLine("quick-decode head times 512-bit head loops only; this CPU has no AVX-512.");
            return;
        }
        const int rows = 128256, n = Hidden;
        long bytes = (long)rows * n * 2;
        if (Environment.GetEnvironmentVariable("QUICK_DECODE_HUGEPAGES") == "1") Memory.HugePages.Enabled = true;
        using var table = new Memory.NativeBuffer(bytes, zero: false);
        var rng = new Random(3);
        ushort* w = (ushort*)table.Pointer;
        for (long i = 0; i < (long)rows * n; i++) w[i] = (ushort)(BitConverter.HalfToUInt16Bits((Half)(rng.NextDouble() - 0.5)));
        var x = new float[n];
        var scaled = new float[n]; // x · 2^112, what the raw-half loops multiply (exact)
        for (int i = 0; i < n; i++) { x[i] = (float)(rng.NextDouble() - 0.5); scaled[i] = x[i] * MathF.ScaleB(1f, 112); }
        var y = new float[4 * rows]; // four tokens' logits for the batched variants (token 0 first, as the single-token ones)
        var check = new float[rows];
        var head = new HeadMatrix(Formats.Gguf.GgmlType.F16, (byte*)w, 2L * n, n);
        var x3 = new float[4 * n];
        x.CopyTo(x3, 0);
        for (int i = n; i < 4 * n; i++) x3[i] = (float)(rng.NextDouble() - 0.5);
        var scaled3 = new float[4 * n]; // the four tokens scaled as the raw-half loops take them
        for (int i = 0; i < 4 * n; i++) scaled3[i] = x3[i] * MathF.ScaleB(1f, 112);
        var variants = new (string Name, Action Run)[]
        {
            ($"MatVec, {TernaryKernel.WeightStreams} weight stream(s)", () => { fixed (float* px = x, py = y) HeadKernels.MatVec(head, px, py, 0, rows); }),
            ("4 adjacent rows, next 4 prefetched (before)", () => HeadAdjacent(w, rows, n, scaled, y, 8L * n)),
            ("4 adjacent rows, no prefetch", () => HeadAdjacent(w, rows, n, scaled, y, -1)),
            ("4 quarter streams, prefetch 1 row on", () => HeadQuarters(w, rows, n, scaled, y, 4, 1)),
            ("4 quarter streams, prefetcht1 2 KiB on (before)", () => HeadQuarters(w, rows, n, scaled, y, 4, 0, 2048)),
            ("4 quarter streams, prefetchnta 2 KiB on", () => HeadQuartersFetch<LineNonTemporal>(w, rows, n, scaled, y, 2048)),
            ("4 quarter streams, prefetchnta 1 KiB on", () => HeadQuartersFetch<LineNonTemporal>(w, rows, n, scaled, y, 1024)),
            ("4 quarter streams, prefetchnta 4 KiB on", () => HeadQuartersFetch<LineNonTemporal>(w, rows, n, scaled, y, 4096)),
            ("4 quarter streams, prefetcht0 2 KiB on", () => HeadQuartersFetch<LineToL1>(w, rows, n, scaled, y, 2048)),
            ("2 half streams x 2 rows, prefetch 2 rows on", () => HeadQuarters(w, rows, n, scaled, y, 2, 2)),
            ("8 eighth streams, no prefetch", () => HeadEighths(w, rows, n, scaled, y)),
            ("MatMul, 2 tokens (weights GB/s)", () => { fixed (float* px = x3, py = y) HeadKernels.MatMul(head, px, 2, py, rows, 0, rows); }),
            ("MatMul, 3 tokens (weights GB/s)", () => { fixed (float* px = x3, py = y) HeadKernels.MatMul(head, px, 3, py, rows, 0, rows); }),
            ("MatMul, 4 tokens (weights GB/s)", () => { fixed (float* px = x3, py = y) HeadKernels.MatMul(head, px, 4, py, rows, 0, rows); }),
            ("2 tokens, quarter streams, prefetcht1 2 KiB (before)", () => HeadFewFetch<HeadKernels.TwoTokens, LineToL2>(w, rows, n, scaled3, y, 2048)),
            ("2 tokens, quarter streams, prefetcht0 2 KiB", () => HeadFewFetch<HeadKernels.TwoTokens, LineToL1>(w, rows, n, scaled3, y, 2048)),
            ("2 tokens, quarter streams, prefetchnta 1 KiB", () => HeadFewFetch<HeadKernels.TwoTokens, LineNonTemporal>(w, rows, n, scaled3, y, 1024)),
            ("4 tokens, quarter streams, prefetcht1 2 KiB (before)", () => HeadFewFetch<HeadKernels.FourTokens, LineToL2>(w, rows, n, scaled3, y, 2048)),
        };
        fixed (float* px = x, pc = check)
            for (int r = 0; r < rows; r++) pc[r] = HeadKernels.DotF16(w + (long)r * n, px, n);
        foreach (var (name, run) in variants)
        {
            run();
            for (int r = 0; r < rows; r++)
                if (BitConverter.SingleToInt32Bits(y[r]) != BitConverter.SingleToInt32Bits(check[r]))
                    throw new InvalidOperationException($"{name}: row {r} differs.");
        }
        var results = variants.ToDictionary(v => v.Name, _ => new List<double>());
        results["plain sum"] = [];
        Console.WriteLine($"F16 head {rows} x {n}, {bytes / 1e6:F0} MB; {rounds} rounds of {secondsPerRun:F1} s per variant, alternating");
        for (int round = 0; round < rounds; round++)
        {
            foreach (var (name, run) in variants) results[name].Add(Time(bytes, secondsPerRun, run));
            results["plain sum"].Add(Time(bytes, secondsPerRun, () => PlainSum((byte*)w, bytes)));
        }
        double plain = Median(results["plain sum"]);
        foreach (var (name, r) in results)
            Console.WriteLine($"  {name,-44} {Median(r),6:F1} GB/s  (min {r.Min(),5:F1}, max {r.Max(),5:F1})  {Median(r) / plain,5:F2} of plain");
    }

    /// <summary>The layout before: four adjacent rows per pass, the same columns of the next four prefetched
    /// <paramref name="ahead"/> bytes on (none when negative).</summary>
    private static void HeadAdjacent(ushort* w, int rows, int n, float[] x, float[] y, long ahead)
    {
        fixed (float* px = x, py = y)
            for (int r = 0; r < rows; r += 4)
            {
                ushort* w0 = w + (long)r * n;
                HeadKernels.DotRawF16Rows4(w0, w0 + n, w0 + 2 * n, w0 + 3 * n, n, px, py + r, py + r + 1, py + r + 2, py + r + 3, ahead < 0 ? 0 : ahead);
            }
    }

    /// <summary>Rows in <paramref name="streams"/> far-apart parts of the table read side by side (4: one row from each
    /// quarter per pass; 2: two adjacent rows from each half), each part sequential in memory; prefetch
    /// <paramref name="rowsAhead"/> rows on in each part (none when 0).</summary>
    private static void HeadQuarters(ushort* w, int rows, int n, float[] x, float[] y, int streams, int rowsAhead, long bytesAhead = 0)
    {
        int part = rows / 4 * 4 / streams; // rows per part; a multiple of 4 / streams
        fixed (float* px = x, py = y)
        {
            if (streams == 4)
                for (int r = 0; r < part; r++)
                    HeadKernels.DotRawF16Rows4(w + (long)r * n, w + (long)(r + part) * n, w + (long)(r + 2 * part) * n, w + (long)(r + 3 * part) * n, n, px,
                        py + r, py + r + part, py + r + 2 * part, py + r + 3 * part, 2L * n * rowsAhead + bytesAhead);
            else
                for (int r = 0; r < part; r += 2)
                    HeadKernels.DotRawF16Rows4(w + (long)r * n, w + (long)(r + 1) * n, w + (long)(r + part) * n, w + (long)(r + part + 1) * n, n, px,
                        py + r, py + r + 1, py + r + part, py + r + part + 1, 2L * n * rowsAhead);
        }
    }

    /// <summary>The few-token head's loop (HeadKernels.MatMul, two to four tokens, four weight streams) with
    /// <typeparamref name="TFetch"/> as its prefetch, <paramref name="bytesAhead"/> on: one row from each quarter per pass,
    /// each widened once for <typeparamref name="TTile"/>'s tokens; y holds token 0's sums (what the check compares).</summary>
    private static void HeadFewFetch<TTile, TFetch>(ushort* w, int rows, int n, float[] scaled, float[] y, long bytesAhead)
        where TTile : struct, HeadKernels.IHeadTile where TFetch : ILinePrefetch
    {
        int part = rows / 4;
        var acc = stackalloc Vector512<float>[16];
        fixed (float* px = scaled, py = y)
            for (int r = 0; r < part; r++)
            {
                HeadKernels.DotRawF16Rows4xT<HeadKernels.Raw512, Vector512<float>, TTile, TFetch>(w + (long)r * n, w + (long)(r + part) * n,
                    w + (long)(r + 2 * part) * n, w + (long)(r + 3 * part) * n, n, px, n, bytesAhead, acc);
                py[r] = Vector512.Sum(acc[0]); py[r + part] = Vector512.Sum(acc[1]); py[r + 2 * part] = Vector512.Sum(acc[2]); py[r + 3 * part] = Vector512.Sum(acc[3]);
            }
    }

    /// <summary>Four quarter streams, each prefetched <paramref name="bytesAhead"/> on by <typeparamref name="TFetch"/>.</summary>
    private static void HeadQuartersFetch<TFetch>(ushort* w, int rows, int n, float[] x, float[] y, long bytesAhead) where TFetch : ILinePrefetch
    {
        int part = rows / 4;
        fixed (float* px = x, py = y)
            for (int r = 0; r < part; r++)
                HeadKernels.DotRawF16Rows4<TFetch>(w + (long)r * n, w + (long)(r + part) * n, w + (long)(r + 2 * part) * n, w + (long)(r + 3 * part) * n, n, px,
                    py + r, py + r + part, py + r + 2 * part, py + r + 3 * part, bytesAhead);
    }

    /// <summary>Eight streams: one row from each eighth of the table per pass, eight FMA chains.</summary>
    private static void HeadEighths(ushort* w, int rows, int n, float[] x, float[] y)
    {
        int part = rows / 8;
        fixed (float* px = x, py = y)
        {
            for (int r = 0; r < part; r++)
            {
                ushort* p0 = w + (long)r * n; long s = (long)part * n;
                Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
                for (int i = 0; i < n; i += 16)
                {
                    var v = Vector512.Load(px + i);
                    ushort* q = p0 + i;
                    a0 = Vector512.FusedMultiplyAdd(HeadKernels.RawHalves(q), v, a0); a1 = Vector512.FusedMultiplyAdd(HeadKernels.RawHalves(q + s), v, a1);
                    a2 = Vector512.FusedMultiplyAdd(HeadKernels.RawHalves(q + 2 * s), v, a2); a3 = Vector512.FusedMultiplyAdd(HeadKernels.RawHalves(q + 3 * s), v, a3);
                    a4 = Vector512.FusedMultiplyAdd(HeadKernels.RawHalves(q + 4 * s), v, a4); a5 = Vector512.FusedMultiplyAdd(HeadKernels.RawHalves(q + 5 * s), v, a5);
                    a6 = Vector512.FusedMultiplyAdd(HeadKernels.RawHalves(q + 6 * s), v, a6); a7 = Vector512.FusedMultiplyAdd(HeadKernels.RawHalves(q + 7 * s), v, a7);
                }
                py[r] = Vector512.Sum(a0); py[r + part] = Vector512.Sum(a1); py[r + 2 * part] = Vector512.Sum(a2); py[r + 3 * part] = Vector512.Sum(a3);
                py[r + 4 * part] = Vector512.Sum(a4); py[r + 5 * part] = Vector512.Sum(a5); py[r + 6 * part] = Vector512.Sum(a6); py[r + 7 * part] = Vector512.Sum(a7);
            }
        }
    }

    private static readonly TernaryKernel GfniKernel = new Avx512GfniTernaryKernel(), ShiftKernel = new Avx512TernaryKernel(), Avx2Kernel = new Avx2TernaryKernel(),
        Reference = new ReferenceTernaryKernel();

    private static readonly TernaryKernel LutKernel = new LutTernaryKernel();

    /// <summary>The lookup kernel over four quarter streams (whole blocks), the rest of the rows by MatMul.</summary>
    private static void LutQuarters(TernaryMatrix w, ActivationRows x, float[] y)
    {
        int quarter = w.Rows / 4 / LutTernaryKernel.BlockRows * LutTernaryKernel.BlockRows;
        fixed (float* py = y)
        {
            LutKernel.MatVecQuarters(w, x, py, w.Rows, 0, quarter, 0, quarter);
            if (4 * quarter < w.Rows) LutKernel.MatMul(w, x, py, w.Rows, 4 * quarter, w.Rows);
        }
    }

    /// <summary>The kernel's own MatMul (on activations already in its layout).</summary>
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

    internal static double Time(long bytes, double seconds, Action pass)
    {
        pass();
        int passes = 0;
        var sw = Stopwatch.StartNew();
        do { pass(); passes++; } while (sw.Elapsed.TotalSeconds < seconds);
        return bytes * (double)passes / sw.Elapsed.TotalSeconds / 1e9;
    }

    private static long s_sink;

    /// <summary>The plain sums with 256-bit loads (eight per 256 bytes), for CPUs without AVX-512, where 512-bit vectors
    /// are emulated.</summary>
    private static void PlainSum256(byte* p, long n, bool prefetch)
    {
        var a0 = Vector256<long>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        long i = 0;
        for (; i + 256 <= n; i += 256)
        {
            if (prefetch)
            {
                TernaryKernel.PrefetchWeights(p + i); TernaryKernel.PrefetchWeights(p + i + 64);
                TernaryKernel.PrefetchWeights(p + i + 128); TernaryKernel.PrefetchWeights(p + i + 192);
            }
            a0 += Vector256.Load((long*)(p + i)) + Vector256.Load((long*)(p + i + 32));
            a1 += Vector256.Load((long*)(p + i + 64)) + Vector256.Load((long*)(p + i + 96));
            a2 += Vector256.Load((long*)(p + i + 128)) + Vector256.Load((long*)(p + i + 160));
            a3 += Vector256.Load((long*)(p + i + 192)) + Vector256.Load((long*)(p + i + 224));
        }
        s_sink += Vector256.Sum(a0 + a1 + a2 + a3);
    }

    private static void PlainSum(byte* p, long n)
    {
        if (!Vector512.IsHardwareAccelerated)
        {
            PlainSum256(p, n, prefetch: false);
            return;
        }
        var a0 = Vector512<long>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        long i = 0;
        for (; i + 256 <= n; i += 256)
        {
            a0 += Vector512.Load((long*)(p + i)); a1 += Vector512.Load((long*)(p + i + 64));
            a2 += Vector512.Load((long*)(p + i + 128)); a3 += Vector512.Load((long*)(p + i + 192));
        }
        s_sink += Vector512.Sum(a0 + a1 + a2 + a3);
    }

    /// <summary>
    /// The inner loop a 4-weights-per-byte lookup-table kernel would run (weights stored as one base-3 byte per four
    /// weights, 81 ≤ 128 entries, so one vpermi2b indexes a two-register table; int16 sums split into a low-byte and a
    /// high-byte table; 256 rows per pass so each group's tables serve four index vectors): two vpermi2b, two unpacks and
    /// two adds per 64 weight bytes, against about thirteen operations today. Not a kernel — the tables are not built
    /// and the sums are not the dot — only a measure of whether Zen 4 runs that loop fast enough to be worth the new
    /// layout. Reads the same bytes as the kernels (the matrix rows as [group][256 rows] tiles).
    /// </summary>
    private static void LutInnerLoop(TernaryMatrix w, ActivationRows x, float[] y)
    {
        int groups = w.PaddedCols / 4;
        byte* tables = (byte*)s_tables!.Pointer;
        byte* data = w.Data;
        var sink = Vector512<short>.Zero;
        for (int rb = 0; rb + 256 <= w.Rows; rb += 256)
        {
            byte* tile = data + (long)rb * groups;
            Vector512<short> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
            for (int g = 0; g < groups; g++)
            {
                byte* t = tables + (long)g * 256;
                var lo0 = Vector512.Load(t); var lo1 = Vector512.Load(t + 64); var hi0 = Vector512.Load(t + 128); var hi1 = Vector512.Load(t + 192);
                byte* ix = tile + (long)g * 256;
                TernaryKernel.PrefetchWeights(ix); TernaryKernel.PrefetchWeights(ix + 64); TernaryKernel.PrefetchWeights(ix + 128); TernaryKernel.PrefetchWeights(ix + 192);
                Lookup(Vector512.Load(ix), lo0, lo1, hi0, hi1, ref a0, ref a1);
                Lookup(Vector512.Load(ix + 64), lo0, lo1, hi0, hi1, ref a2, ref a3);
                Lookup(Vector512.Load(ix + 128), lo0, lo1, hi0, hi1, ref a4, ref a5);
                Lookup(Vector512.Load(ix + 192), lo0, lo1, hi0, hi1, ref a6, ref a7);
            }
            sink += a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
        }
        if (w.Rows % 256 >= 128)
        {
            // k and v (640 rows): the last 128 rows as a half tile.
            byte* tile = data + (long)(w.Rows / 256 * 256) * groups;
            Vector512<short> a0 = default, a1 = default, a2 = default, a3 = default;
            for (int g = 0; g < groups; g++)
            {
                byte* t = tables + (long)g * 256;
                var lo0 = Vector512.Load(t); var lo1 = Vector512.Load(t + 64); var hi0 = Vector512.Load(t + 128); var hi1 = Vector512.Load(t + 192);
                byte* ix = tile + (long)g * 128;
                TernaryKernel.PrefetchWeights(ix); TernaryKernel.PrefetchWeights(ix + 64);
                Lookup(Vector512.Load(ix), lo0, lo1, hi0, hi1, ref a0, ref a1);
                Lookup(Vector512.Load(ix + 64), lo0, lo1, hi0, hi1, ref a2, ref a3);
            }
            sink += a0 + a1 + a2 + a3;
        }
        y[0] = sink.ToScalar();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Lookup(Vector512<byte> idx, Vector512<byte> lo0, Vector512<byte> lo1, Vector512<byte> hi0, Vector512<byte> hi1, ref Vector512<short> a, ref Vector512<short> b)
    {
        var lo = Avx512Vbmi.PermuteVar64x8x2(lo0, idx, lo1);
        var hi = Avx512Vbmi.PermuteVar64x8x2(hi0, idx, hi1);
        a += Avx512BW.UnpackLow(lo, hi).AsInt16();
        b += Avx512BW.UnpackHigh(lo, hi).AsInt16();
    }

    private static Memory.NativeBuffer? s_tables;

    /// <summary>The plain sum with the kernels' prefetch (every line 8 KiB ahead into L2): the probe's best pattern here.</summary>
    private static void PrefetchSum(byte* p, long n)
    {
        if (!Vector512.IsHardwareAccelerated)
        {
            PlainSum256(p, n, prefetch: true);
            return;
        }
        var a0 = Vector512<long>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        long i = 0;
        for (; i + 256 <= n; i += 256)
        {
            TernaryKernel.PrefetchWeights(p + i); TernaryKernel.PrefetchWeights(p + i + 64);
            TernaryKernel.PrefetchWeights(p + i + 128); TernaryKernel.PrefetchWeights(p + i + 192);
            a0 += Vector512.Load((long*)(p + i)); a1 += Vector512.Load((long*)(p + i + 64));
            a2 += Vector512.Load((long*)(p + i + 128)); a3 += Vector512.Load((long*)(p + i + 192));
        }
        s_sink += Vector512.Sum(a0 + a1 + a2 + a3);
    }

    private static void Avx2Before(TernaryMatrix w, ActivationRows x, float[] y)
    {
        fixed (float* py = y) TernaryDriver.Run<Avx2PerRowBefore>(w, x, py, w.Rows, 0, w.Rows);
    }

    /// <summary>The production decode driver (eight rows, one vector epilogue) over the AVX-512 decode loop before the
    /// one-shift split (5cf22b4): four code vectors from a split of one's choosing, one int16 sum.</summary>
    /// <summary>Runs <paramref name="run"/> with <see cref="TernaryKernel.WeightStreams"/> set to <paramref name="streams"/>.</summary>
    private static void Streams(int streams, Action run)
    {
        int before = TernaryKernel.WeightStreams;
        TernaryKernel.WeightStreams = streams;
        try { run(); }
        finally { TernaryKernel.WeightStreams = before; }
    }

    /// <summary>A plain sum reading the four quarters of the bytes side by side (the bandwidth probe's multistream pattern).</summary>
    private static void FourStreamSum(byte* p, long n)
    {
        long quarter = n / 4 / 64 * 64;
        var a0 = Vector256<long>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        for (long i = 0; i < quarter; i += 64)
        {
            a0 += Vector256.Load((long*)(p + i)) + Vector256.Load((long*)(p + i + 32));
            a1 += Vector256.Load((long*)(p + quarter + i)) + Vector256.Load((long*)(p + quarter + i + 32));
            a2 += Vector256.Load((long*)(p + 2 * quarter + i)) + Vector256.Load((long*)(p + 2 * quarter + i + 32));
            a3 += Vector256.Load((long*)(p + 3 * quarter + i)) + Vector256.Load((long*)(p + 3 * quarter + i + 32));
        }
        for (long i = 4 * quarter; i < n; i++) a0 += Vector256.Create((long)p[i]);
        s_sink += Vector256.Sum(a0 + a1 + a2 + a3);
    }

    private static void Driver<TSplit>(TernaryMatrix w, ActivationRows x, float[] y) where TSplit : ICodeSplit512
    {
        fixed (float* py = y) TernaryDriver.RunPairs<SplitRows8<TSplit>>(w, x, py, w.Rows, 0, w.Rows);
    }

    // Code splits mixing GFNI (multiply ports, with vpmaddubsw) with shifts and ANDs (other ports), to balance them.
    // BalancedSplit (the avx512gfni kernel's) is one shift + two GFNI + one AND.
    public readonly struct MixGfni3 : ICodeSplit512
    {
        public static Vector512<byte> Code0(Vector512<byte> p) => GfniSplit.Code0(p);
        public static Vector512<byte> Code1(Vector512<byte> p) => GfniSplit.Code1(p);
        public static Vector512<byte> Code2(Vector512<byte> p) => GfniSplit.Code2(p);
        public static Vector512<byte> Code3(Vector512<byte> p) => ShiftSplit.Code3(p);
    }

    public readonly struct MixShift2Gfni : ICodeSplit512
    {
        public static Vector512<byte> Code0(Vector512<byte> p) => ShiftSplit.Code0(p);
        public static Vector512<byte> Code1(Vector512<byte> p) => ShiftSplit.Code1(p);
        public static Vector512<byte> Code2(Vector512<byte> p) => GfniSplit.Code2(p);
        public static Vector512<byte> Code3(Vector512<byte> p) => ShiftSplit.Code3(p);
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
    public readonly struct T0At8K : IFetch { public static void Fetch(byte* p) => Sse.Prefetch0(p + 8192); }
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

/// <summary>The AVX2 kernel's row dot before its eight-row decode path (5cf22b4): one row, one horizontal sum, its own
/// epilogue; run by <see cref="TernaryDriver.Run{TDot}(TernaryMatrix, in ActivationRows, float*, int, int, int)"/>.</summary>
public readonly unsafe struct Avx2PerRowBefore : ITernaryRowDot
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Dot(byte* w, sbyte* q, int blocks)
    {
        var mask = Vector256.Create((byte)3);
        var ones = Vector256.Create((short)1);
        var acc = Vector256<int>.Zero;
        for (int b = 0; b < blocks;)
        {
            int end = Math.Min(blocks, b + Avx2TernaryKernel.Int16Blocks);
            var acc16 = Vector256<short>.Zero;
            for (; b < end; b++)
            {
                if ((b & 1) == 0) TernaryKernel.PrefetchWeights(w + b * 32);
                var packed = Avx.LoadVector256(w + b * 32);
                sbyte* qb = q + b * 128;
                var c0 = Avx2.ShiftRightLogical(packed.AsUInt16(), 6).AsByte() & mask;
                var c1 = Avx2.ShiftRightLogical(packed.AsUInt16(), 4).AsByte() & mask;
                var c2 = Avx2.ShiftRightLogical(packed.AsUInt16(), 2).AsByte() & mask;
                var c3 = packed & mask;
                var s01 = Avx2.Add(Avx2.MultiplyAddAdjacent(c0, Avx.LoadVector256(qb)), Avx2.MultiplyAddAdjacent(c1, Avx.LoadVector256(qb + 32)));
                var s23 = Avx2.Add(Avx2.MultiplyAddAdjacent(c2, Avx.LoadVector256(qb + 64)), Avx2.MultiplyAddAdjacent(c3, Avx.LoadVector256(qb + 96)));
                acc16 = Avx2.Add(acc16, Avx2.Add(s01, s23));
            }
            acc = Avx2.Add(acc, Avx2.MultiplyAddAdjacent(acc16, ones));
        }
        return Vector256.Sum(acc);
    }

    /// <summary>Unchanged in production (prefill's four-token tile).</summary>
    public static void Dot4(byte* w, sbyte* q0, sbyte* q1, sbyte* q2, sbyte* q3, int blocks, int* result) =>
        Avx2TernaryKernel.Dot256.Dot4(w, q0, q1, q2, q3, blocks, result);
}

/// <summary>The AVX-512 one-token decode as it was before the one-shift split (5cf22b4): each 64 bytes split into four code
/// vectors by <typeparamref name="TSplit"/>, one int16 sum per row; everything else is the production kernel's.</summary>
public readonly unsafe struct SplitRows8<TSplit> : ITernaryRowPairDot where TSplit : ICodeSplit512
{
    public static int Dot(byte* w, sbyte* q, int blocks) => Avx512TernaryKernel.Dot512<TSplit>.Dot(w, q, blocks);
    public static void Dot4(byte* w, sbyte* q0, sbyte* q1, sbyte* q2, sbyte* q3, int blocks, int* result) => Avx512TernaryKernel.Dot512<TSplit>.Dot4(w, q0, q1, q2, q3, blocks, result);
    public static void Dot2x4(byte* w0, byte* w1, sbyte* q0, sbyte* q1, sbyte* q2, sbyte* q3, int blocks, int* result) => Avx512TernaryKernel.Dot512<TSplit>.Dot2x4(w0, w1, q0, q1, q2, q3, blocks, result);
    public static void DotRows8x2(byte* w, long rowBytes, sbyte* q0, sbyte* q1, int blocks, int* result) => Avx512TernaryKernel.Dot512<TSplit>.DotRows8x2(w, rowBytes, q0, q1, blocks, result);
    public static void DotRows4Streams(byte* w, long streamBytes, sbyte* q, int blocks, int* result) => Avx512TernaryKernel.Dot512<TSplit>.DotRows4Streams(w, streamBytes, q, blocks, result);
    public static void DotRows4Streams2(byte* w, long streamBytes, sbyte* q0, sbyte* q1, int blocks, int* result) => Avx512TernaryKernel.Dot512<TSplit>.DotRows4Streams2(w, streamBytes, q0, q1, blocks, result);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<int> DotLanes(byte* w, sbyte* q, int blocks)
    {
        var ones = Vector512.Create((short)1);
        var acc = Vector512<int>.Zero;
        int pairs = blocks >> 1;
        for (int p = 0; p < pairs;)
        {
            int end = Math.Min(pairs, p + Avx2TernaryKernel.Int16Blocks);
            var acc16 = Vector512<short>.Zero;
            for (; p < end; p++)
            {
                TernaryKernel.PrefetchWeights(w + p * 64);
                var packed = Vector512.Load(w + p * 64);
                sbyte* qb = q + p * 256;
                var s01 = Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(TSplit.Code0(packed), Vector512.Load(qb)), Avx512BW.MultiplyAddAdjacent(TSplit.Code1(packed), Vector512.Load(qb + 64)));
                var s23 = Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(TSplit.Code2(packed), Vector512.Load(qb + 128)), Avx512BW.MultiplyAddAdjacent(TSplit.Code3(packed), Vector512.Load(qb + 192)));
                acc16 = Avx512BW.Add(acc16, Avx512BW.Add(s01, s23));
            }
            acc = Avx512F.Add(acc, Avx512BW.MultiplyAddAdjacent(acc16, ones));
        }
        return acc;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void DotRows8(byte* w, long rowBytes, sbyte* q, int blocks, int* result)
    {
        var v0 = DotLanes(w, q, blocks);
        var v1 = DotLanes(w + rowBytes, q, blocks);
        var v2 = DotLanes(w + 2 * rowBytes, q, blocks);
        var v3 = DotLanes(w + 3 * rowBytes, q, blocks);
        var v4 = DotLanes(w + 4 * rowBytes, q, blocks);
        var v5 = DotLanes(w + 5 * rowBytes, q, blocks);
        var v6 = DotLanes(w + 6 * rowBytes, q, blocks);
        var v7 = DotLanes(w + 7 * rowBytes, q, blocks);
        Avx512TernaryKernel.Dot512<TSplit>.LaneSums(v0, v1, v2, v3, v4, v5, v6, v7).Store(result);
        if ((blocks & 1) != 0)
            for (int r = 0; r < 8; r++)
                result[r] += Avx2TernaryKernel.Dot256.Dot(w + r * rowBytes + (blocks - 1) * 32, q + (blocks - 1) * 128, 1);
    }
}
