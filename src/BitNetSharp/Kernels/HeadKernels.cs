using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Quantization;

namespace BitNetSharp.Kernels;

/// <summary>
/// Rows of a float matrix in a head encoding (F32, F16, BF16, Q8_0 or Q6_K), viewed in place: what
/// <see cref="HeadKernels"/> reads. <see cref="Model.EmbeddingTable"/> owns the memory and checks the shape.
/// </summary>
public readonly unsafe struct HeadMatrix(GgmlType type, byte* data, long rowBytes, int cols)
{
    public GgmlType Type { get; } = type;
    public byte* Data { get; } = data;
    public long RowBytes { get; } = rowBytes;
    public int Cols { get; } = cols;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public byte* Row(int row) => Data + row * RowBytes;
}

/// <summary>
/// The output head's kernels (and the embedding table's load-time scan): every row of a <see cref="HeadMatrix"/> dotted
/// with one hidden state (<see cref="MatVec"/>) or several (<see cref="MatMul"/>), per encoding — F16 with raw-half FMA
/// chains, Q8_0 and Q6_K against activations quantized once per call (as llama.cpp's head), F32 and BF16 plainly.
/// </summary>
public static unsafe class HeadKernels
{
    /// <summary>
    /// Whether the 512-bit Q8_0 and Q6_K heads read one token's rows four at a time, one from each quarter of the range
    /// (<see cref="HeadQ8_0512.DotRows4"/>, <see cref="HeadQ6K512.DotRows4"/>), rather than one row after another: where
    /// decode reads its ternary weights in four streams (<see cref="TernaryKernel.WeightStreams"/> = 4, Zen 5), and on
    /// Intel cores unless BITNET_WEIGHT_STREAMS=1 says otherwise. There four ternary streams read slower than one (9.2
    /// against 13.7 GB/s, Emerald Rapids) but the quantized heads' one-row loop is the slower one: `quick-decode qhead`
    /// (the 2B4T head from memory, one thread, alternating in one process) Q8_0 7.7 GB/s one row at a time against 12.2
    /// four side by side, Q6_K 8.1 against 11.6 (Emerald Rapids, bench/results/cpu-tables-intel-xeon-processor-emerald-rapids-2core.md);
    /// Ice Lake-SP 8.2 against 12.0 and 9.3 against 14.3. The F16 head keeps <see cref="TernaryKernel.WeightStreams"/>:
    /// its four-stream loop prefetches non-temporally, which read 6.2 GB/s there against 9.4 for prefetcht1.
    /// The sums are the same either way.
    /// </summary>
    /// <remarks>A <see cref="TernaryKernel.WeightStreams"/> of 1 set in code holds here as BITNET_WEIGHT_STREAMS=1 does (tests
    /// that ran both stream counts took the four-row path both times on Intel). Two tokens (two sequences decoding
    /// together) take four rows side by side with four ternary streams only: not measured on Intel.</remarks>
    public static bool QuantizedRowsSideBySide => TernaryKernel.WeightStreams == 4 || (IsIntel && !TernaryKernel.WeightStreamsGiven);

    private static readonly bool IsIntel = TernaryKernel.IsIntel();

    /// <summary>How decode reads weights, for bench and profile: "1 weight stream(s)", and where a Q8_0/Q6_K head reads
    /// four rows side by side while the ternary weights read one stream (Intel), that too (it read "1 weight stream(s)").</summary>
    public static string DescribeStreams(GgmlType head) =>
        $"{TernaryKernel.WeightStreams} weight stream(s)" +
        (TernaryKernel.WeightStreams == 1 && QuantizedRowsSideBySide
         && (head == GgmlType.Q8_0 && HeadQ8_0512.IsSupported || head == GgmlType.Q6_K && HeadQ6K512.IsSupported)
            ? $", {GgmlTypeInfo.Name(head)} head four rows side by side" : "");

    /// <summary>Index of the first half whose exponent is all ones (±inf, NaN), or −1. The fast F16 dot product relies on there being none.</summary>
    public static long FirstNonFiniteHalf(ushort* p, long n) => FirstAllOnes(p, n, 0x7C00);

    /// <summary>Index of the first bfloat16 whose exponent is all ones (±inf, NaN), or −1.</summary>
    public static long FirstNonFiniteBFloat16(ushort* p, long n) => FirstAllOnes(p, n, 0x7F80);

    /// <summary>Index of the first float that is ±inf or NaN, or −1.</summary>
    public static long FirstNonFiniteSingle(float* p, long n)
    {
        uint* u = (uint*)p;
        long i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var mask = Vector256.Create(0x7F800000u);
            for (; i <= n - 8; i += 8)
                if (Vector256.EqualsAny(Vector256.Load(u + i) & mask, mask)) break;
        }
        for (; i < n; i++)
            if ((u[i] & 0x7F800000u) == 0x7F800000u) return i;
        return -1;
    }

    /// <summary>Index of the first 16-bit value whose bits under <paramref name="exponent"/> are all set, or −1.</summary>
    private static long FirstAllOnes(ushort* p, long n, ushort exponent)
    {
        long i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var mask = Vector512.Create(exponent);
            for (; i <= n - 32; i += 32)
                if (Vector512.EqualsAny(Vector512.Load(p + i) & mask, mask)) break;
        }
        else if (Vector128.IsHardwareAccelerated)
        {
            var mask = Vector128.Create(exponent);
            for (; i <= n - 8; i += 8)
                if (Vector128.EqualsAny(Vector128.Load(p + i) & mask, mask)) break;
        }
        for (; i < n; i++)
            if ((p[i] & exponent) == exponent) return i;
        return -1;
    }

    /// <summary>
    /// Every F16 kernel reads a half's bits shifted into a float's fields and scaled (<see cref="ScaleForRawHalves"/>,
    /// <see cref="DotF16"/>), which is exact for finite halves and reads one whose exponent is all ones (±inf, NaN) as a
    /// large finite weight, ±65536 · (1 + mantissa). Tables with such halves are refused at load (<see cref="FirstNonFiniteHalf"/>),
    /// but a mapped file can change under a running process: then that row's logit came out huge and finite, won (or
    /// lost) every step, and no non-finite check saw anything. So after a pass, for each token, the rows of the largest
    /// and the smallest logit in [rowStart, rowEnd) are scanned (two rows, 2 · Cols bytes each, against a pass over every
    /// row) and a row holding a non-finite half gets NaN, which is what its dot product is, for the caller's non-finite
    /// check. A corrupted row whose logit is not an extreme does not win, and the weights' checksum probe (`--verify-weights`,
    /// the server's periodic check) sees it. Called once per head pass over every row (the engine does, after the threads'
    /// chunks): per chunk it cost the bundled model's head 5–10 % (64 µs a token, Zen 2), where rows are short (384 values).
    /// Q8_0 and Q6_K rows likewise by their blocks' fp16 scales (read as finite halves too: an infinite scale as 65536);
    /// F32 and BF16 kernels carry a NaN through, and are not checked.
    /// </summary>
    public static void GuardExtremeRows(HeadMatrix m, float* y, int tokens, long yStride, int rowStart, int rowEnd)
    {
        if (m.Type is not (GgmlType.F16 or GgmlType.Q8_0 or GgmlType.Q6_K)) return;
        if (rowEnd <= rowStart) return;
        for (int t = 0; t < tokens; t++)
        {
            float* yt = y + t * yStride;
            var (high, low) = Extremes(yt, rowStart, rowEnd);
            if (RowHoldsNonFiniteHalf(m, high)) yt[high] = float.NaN;
            if (low != high && RowHoldsNonFiniteHalf(m, low)) yt[low] = float.NaN;
        }
    }

    /// <summary>Whether row <paramref name="r"/> holds a half with an all-ones exponent: a weight (F16) or a block scale (Q8_0, Q6_K).</summary>
    private static bool RowHoldsNonFiniteHalf(HeadMatrix m, int r)
    {
        byte* row = m.Row(r);
        switch (m.Type)
        {
            case GgmlType.F16:
                return FirstNonFiniteHalf((ushort*)row, m.Cols) >= 0;
            case GgmlType.Q8_0:
                for (int b = 0; b < m.Cols / 32; b++)
                    if ((*(ushort*)(row + b * 34) & 0x7C00) == 0x7C00) return true;
                return false;
            case GgmlType.Q6_K:
                for (int b = 0; b < m.Cols / Q6K.BlockWeights; b++)
                    if ((*(ushort*)(row + b * Q6K.BlockBytes + Q6K.DOffset) & 0x7C00) == 0x7C00) return true;
                return false;
            default:
                return false;
        }
    }

    /// <summary>The indices of the largest and the smallest of y[start..end) (NaN never chosen; the first of equals), eight
    /// at a time where 256-bit vectors are accelerated.</summary>
    private static (int High, int Low) Extremes(float* y, int start, int end)
    {
        float max = float.NegativeInfinity, min = float.PositiveInfinity;
        int high = start, low = start, r = start;
        if (Vector256.IsHardwareAccelerated && end - start >= 16)
        {
            var maxV = Vector256.Create(float.NegativeInfinity);
            var minV = Vector256.Create(float.PositiveInfinity);
            var index = Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7) + Vector256.Create(start);
            Vector256<int> highI = index, lowI = index, eight = Vector256.Create(8);
            for (; r <= end - 8; r += 8, index += eight)
            {
                var v = Vector256.Load(y + r);
                var above = Vector256.GreaterThan(v, maxV);
                var below = Vector256.LessThan(v, minV);
                maxV = Vector256.ConditionalSelect(above, v, maxV);
                minV = Vector256.ConditionalSelect(below, v, minV);
                highI = Vector256.ConditionalSelect(above.AsInt32(), index, highI);
                lowI = Vector256.ConditionalSelect(below.AsInt32(), index, lowI);
            }
            for (int lane = 0; lane < 8; lane++)
            {
                float a = maxV.GetElement(lane), b = minV.GetElement(lane);
                int ai = highI.GetElement(lane), bi = lowI.GetElement(lane);
                if (a > max || (a == max && ai < high)) { max = a; high = ai; }
                if (b < min || (b == min && bi < low)) { min = b; low = bi; }
            }
        }
        for (; r < end; r++)
        {
            float v = y[r];
            if (v > max) { max = v; high = r; }
            if (v < min) { min = v; low = r; }
        }
        return (high, low);
    }

    /// <summary>y[r] = row r · x for r in [rowStart, rowEnd) — the output head (an F16 table's non-finite halves read as
    /// large finite weights: see <see cref="GuardExtremeRows"/>).</summary>
    public static void MatVec(HeadMatrix m, float* x, float* y, int rowStart, int rowEnd)
    {
        switch (m.Type)
        {
            case GgmlType.F32:
                for (int r = rowStart; r < rowEnd; r++) y[r] = FloatMatVec.Dot((float*)m.Row(r), x, m.Cols);
                break;
            case GgmlType.F16:
                float* scaled;
                bool wide = Vector512.IsHardwareAccelerated, avx2 = !wide && Avx2.IsSupported && Vector256.IsHardwareAccelerated;
                if ((wide || avx2) && m.Cols % 32 == 0 && (scaled = ScaleForRawHalves(x, m.Cols)) != null)
                {
                    // Four rows per pass, each its own FMA chain (one chain per row is latency-bound), on activations
                    // scaled for raw half bits. With four weight streams (TernaryKernel.WeightStreams) one row from each
                    // quarter of the range: four sequential streams far apart, which the hardware prefetchers follow, at
                    // 512 bits each also prefetched StreamPrefetchBytes ahead (prefetchnta: read once, kept out of L2);
                    // otherwise four adjacent rows, the same columns of the next four prefetched. The rows left over take DotF16, which gives the same sums.
                    int n = m.Cols;
                    int r = rowStart;
                    if (TernaryKernel.WeightStreams == 4)
                    {
                        int quarter = (rowEnd - rowStart) / 4;
                        for (; r < rowStart + quarter; r++)
                        {
                            int r1 = r + quarter, r2 = r1 + quarter, r3 = r2 + quarter;
                            ushort* w0 = (ushort*)m.Row(r), w1 = (ushort*)m.Row(r1), w2 = (ushort*)m.Row(r2), w3 = (ushort*)m.Row(r3);
                            if (wide) DotRawF16Rows4<LineNonTemporal>(w0, w1, w2, w3, n, scaled, y + r, y + r1, y + r2, y + r3, StreamPrefetchBytes);
                            else DotRawF16Rows4Avx2(w0, w1, w2, w3, n, scaled, y + r, y + r1, y + r2, y + r3, 0);
                        }
                        r = rowStart + 4 * quarter;
                    }
                    else
                    {
                        // Four adjacent rows alone defeat the hardware prefetcher (27 ms against 20 ms for one row at a
                        // time on the 2B4T head, Zen 4), so the same columns of the next four rows are prefetched.
                        for (; r + 4 <= rowEnd; r += 4)
                        {
                            ushort* w0 = (ushort*)m.Row(r);
                            if (wide) DotRawF16Rows4(w0, w0 + n, w0 + 2 * n, w0 + 3 * n, n, scaled, y + r, y + r + 1, y + r + 2, y + r + 3, 8L * n);
                            else DotRawF16Rows4Avx2(w0, w0 + n, w0 + 2 * n, w0 + 3 * n, n, scaled, y + r, y + r + 1, y + r + 2, y + r + 3, 8L * n);
                        }
                    }
                    for (; r < rowEnd; r++) y[r] = DotF16((ushort*)m.Row(r), x, n);
                }
                else
                {
                    for (int r = rowStart; r < rowEnd; r++) y[r] = DotF16((ushort*)m.Row(r), x, m.Cols);
                }
                break;
            case GgmlType.BF16:
                for (int r = rowStart; r < rowEnd; r++) y[r] = DotBF16((ushort*)m.Row(r), x, m.Cols);
                break;
            case GgmlType.Q8_0:
                if (Avx2.IsSupported)
                {
                    // The hidden state is quantized once per call to Q8_0 blocks (as llama.cpp's Q8_0 head does), then
                    // every row is an int8·int8 dot per block. m.Cols ≤ 64K keeps the scratch on the stack.
                    int blocks = m.Cols / 32;
                    sbyte* qx = stackalloc sbyte[m.Cols];
                    float* dx = stackalloc float[blocks];
                    QuantizeQ8Blocks(x, m.Cols, qx, dx);
                    int r = rowStart;
                    if (HeadQ8_0512.IsSupported)
                    {
                        // 512-bit on int16-widened activations (HeadQ8_0512); with four weight streams, one row from each
                        // quarter of the range side by side, as the F16 and Q6_K heads.
                        short* x16 = stackalloc short[m.Cols];
                        HeadQ8_0512.Widen(qx, x16, m.Cols);
                        if (QuantizedRowsSideBySide)
                        {
                            int quarter = (rowEnd - rowStart) / 4;
                            for (; r < rowStart + quarter; r++)
                            {
                                int r1 = r + quarter, r2 = r1 + quarter, r3 = r2 + quarter;
                                HeadQ8_0512.DotRows4(m.Row(r), m.Row(r1), m.Row(r2), m.Row(r3), x16, dx, blocks, y + r, y + r1, y + r2, y + r3);
                            }
                            r = rowStart + 4 * quarter;
                        }
                        float* one = stackalloc float[1];
                        for (; r < rowEnd; r++)
                        {
                            HeadQ8_0512.Dot(m.Row(r), x16, m.Cols, dx, blocks, 1, one);
                            y[r] = *one;
                        }
                    }
                    for (; r < rowEnd; r++) y[r] = DotQ8_0Q8(m.Row(r), qx, dx, blocks);
                }
                else
                {
                    // Without AVX2 (ARM64, old x86) the same function: activations quantized to Q8_0 blocks, integer
                    // dots per block. (The float activations were used here: logits differed from every other CPU's by
                    // the activation quantization error, enough to flip a greedy token at a near tie.)
                    int blocks = m.Cols / 32;
                    sbyte* qx = stackalloc sbyte[m.Cols];
                    float* dx = stackalloc float[blocks];
                    QuantizeQ8Blocks(x, m.Cols, qx, dx);
                    for (int r = rowStart; r < rowEnd; r++) y[r] = DotQ8_0Q8Portable(m.Row(r), qx, dx, blocks);
                }
                break;
            case GgmlType.Q6_K:
                if (Avx2.IsSupported)
                {
                    // As llama.cpp's Q6_K head: the hidden state is quantized once per call to int8 with one scale per
                    // 256 values (ggml's Q8_K) and per-16 sums, then every row is an integer dot per block.
                    int blocks = m.Cols / Q6K.BlockWeights;
                    sbyte* qx = stackalloc sbyte[m.Cols];
                    float* dx = stackalloc float[blocks];
                    short* sx = stackalloc short[m.Cols / 16];
                    QuantizeQ8KBlocks(x, m.Cols, qx, dx, sx);
                    int r = rowStart;
                    if (HeadQ6K512.IsSupported)
                    {
                        // 512-bit, the same sums (HeadQ6K512). With four weight streams, one row from each quarter of the
                        // range side by side: in `bitnet profile --head-type q6_k -t 2` (2B4T shape, Zen 5) the head took
                        // 4.6-5.0 ms against 5.1-6.1 for rows one after another and 6.2-6.5 for the 256-bit kernel.
                        if (QuantizedRowsSideBySide)
                        {
                            int quarter = (rowEnd - rowStart) / 4;
                            for (; r < rowStart + quarter; r++)
                            {
                                int r1 = r + quarter, r2 = r1 + quarter, r3 = r2 + quarter;
                                HeadQ6K512.DotRows4(m.Row(r), m.Row(r1), m.Row(r2), m.Row(r3), qx, dx, sx, blocks, y + r, y + r1, y + r2, y + r3);
                            }
                            r = rowStart + 4 * quarter;
                        }
                        float* one = stackalloc float[1];
                        for (; r < rowEnd; r++)
                        {
                            HeadQ6K512.Dot(m.Row(r), qx, m.Cols, dx, sx, blocks, 1, one);
                            y[r] = *one;
                        }
                    }
                    for (; r < rowEnd; r++) y[r] = DotQ6_KQ8K(m.Row(r), qx, dx, sx, blocks);
                }
                else
                {
                    // Without AVX2 the same function as above (Q8_K activations, integer dots per block), as for Q8_0.
                    int blocks = m.Cols / Q6K.BlockWeights;
                    sbyte* qx = stackalloc sbyte[m.Cols];
                    float* dx = stackalloc float[blocks];
                    short* sx = stackalloc short[m.Cols / 16];
                    QuantizeQ8KBlocks(x, m.Cols, qx, dx, sx);
                    for (int r = rowStart; r < rowEnd; r++) y[r] = DotQ6_KQ8KPortable(m.Row(r), qx, dx, sx, blocks);
                }
                break;
        }
    }

    /// <summary>
    /// Logits of several hidden states at once: y[t·yStride + r] = row r · x_t for rows [rowStart, rowEnd). Rows are the
    /// outer loop (in blocks), so the table streams from memory once per call however many sequences are batched
    /// (token-outer order read it once per sequence), and F16 rows are widened once for four or eight tokens at a time.
    /// </summary>
    public static void MatMul(HeadMatrix m, float* x, int tokens, float* y, long yStride, int rowStart, int rowEnd)
    {
        if (tokens == 1)
        {
            MatVec(m, x, y, rowStart, rowEnd);
            return;
        }
        if (m.Type == GgmlType.Q8_0 && Avx2.IsSupported)
        {
            int blocks = m.Cols / 32;
            sbyte* qx = stackalloc sbyte[m.Cols * Math.Min(tokens, 64)];
            float* dx = stackalloc float[blocks * Math.Min(tokens, 64)];
            float* sums = stackalloc float[HeadQ8_0512.MaxTokens]; // up to four tokens on the 512-bit path, pairs on the 256-bit one
            float* eight = stackalloc float[8];
            for (int t0 = 0; t0 < tokens; t0 += 64)
            {
                int n = Math.Min(64, tokens - t0);
                for (int t = 0; t < n; t++) QuantizeQ8Blocks(x + (long)(t0 + t) * m.Cols, m.Cols, qx + t * m.Cols, dx + t * blocks);
                if (HeadQ8_0512.IsSupported)
                {
                    // Up to four tokens per pass over a row (HeadQ8_0512.Dot), each token's sum as MatVec's.
                    int need = n * m.Cols;
                    if (t_x16 is null || t_x16.Length < need) t_x16 = new short[Math.Max(need, 4 * m.Cols)];
                    fixed (short* x16 = t_x16)
                    {
                        HeadQ8_0512.Widen(qx, x16, need);
                        int r0 = rowStart;
                        if (n == 2 && TernaryKernel.WeightStreams == 4)
                        {
                            // Two tokens (two sequences): four rows side by side, as one token's MatVec.
                            int quarter = (rowEnd - rowStart) / 4;
                            for (int r = rowStart; r < rowStart + quarter; r++)
                            {
                                int r1 = r + quarter, r2 = r1 + quarter, r3 = r2 + quarter;
                                HeadQ8_0512.DotRows4x2(m.Row(r), m.Row(r1), m.Row(r2), m.Row(r3), x16, m.Cols, dx, blocks, eight);
                                y[t0 * yStride + r] = eight[0]; y[(t0 + 1) * yStride + r] = eight[1];
                                y[t0 * yStride + r1] = eight[2]; y[(t0 + 1) * yStride + r1] = eight[3];
                                y[t0 * yStride + r2] = eight[4]; y[(t0 + 1) * yStride + r2] = eight[5];
                                y[t0 * yStride + r3] = eight[6]; y[(t0 + 1) * yStride + r3] = eight[7];
                            }
                            r0 = rowStart + 4 * quarter;
                        }
                        for (int r = r0; r < rowEnd; r++)
                            for (int t = 0; t < n; t += HeadQ8_0512.MaxTokens)
                            {
                                int k = Math.Min(HeadQ8_0512.MaxTokens, n - t);
                                HeadQ8_0512.Dot(m.Row(r), x16 + t * m.Cols, m.Cols, dx + t * blocks, blocks, k, sums);
                                for (int j = 0; j < k; j++) y[(t0 + t + j) * yStride + r] = sums[j];
                            }
                    }
                    continue;
                }
                for (int r = rowStart; r < rowEnd; r++)
                {
                    // Tokens in pairs: each block's weights loaded, made absolute and scaled once for both.
                    int t = 0;
                    for (; t + 2 <= n; t += 2)
                    {
                        DotQ8_0Q8x2(m.Row(r), qx + t * m.Cols, qx + (t + 1) * m.Cols, dx + t * blocks, dx + (t + 1) * blocks, blocks, sums);
                        y[(t0 + t) * yStride + r] = sums[0];
                        y[(t0 + t + 1) * yStride + r] = sums[1];
                    }
                    if (t < n) y[(t0 + t) * yStride + r] = DotQ8_0Q8(m.Row(r), qx + t * m.Cols, dx + t * blocks, blocks);
                }
            }
            return;
        }
        if (m.Type == GgmlType.Q6_K && Avx2.IsSupported)
        {
            int blocks = m.Cols / Q6K.BlockWeights, groups = m.Cols / 16;
            sbyte* qx = stackalloc sbyte[m.Cols * Math.Min(tokens, 64)];
            float* dx = stackalloc float[blocks * Math.Min(tokens, 64)];
            short* sx = stackalloc short[groups * Math.Min(tokens, 64)];
            float* four = stackalloc float[4];
            float* eight = stackalloc float[8];
            for (int t0 = 0; t0 < tokens; t0 += 64)
            {
                int n = Math.Min(64, tokens - t0);
                for (int t = 0; t < n; t++) QuantizeQ8KBlocks(x + (long)(t0 + t) * m.Cols, m.Cols, qx + t * m.Cols, dx + t * blocks, sx + t * groups);
                if (HeadQ6K512.IsSupported)
                {
                    int r0 = rowStart;
                    if (n == 2 && TernaryKernel.WeightStreams == 4)
                    {
                        // Two tokens (two sequences): four rows side by side, as one token's MatVec.
                        int quarter = (rowEnd - rowStart) / 4;
                        for (int r = rowStart; r < rowStart + quarter; r++)
                        {
                            int r1 = r + quarter, r2 = r1 + quarter, r3 = r2 + quarter;
                            HeadQ6K512.DotRows4x2(m.Row(r), m.Row(r1), m.Row(r2), m.Row(r3), qx, m.Cols, dx, sx, blocks, eight);
                            y[t0 * yStride + r] = eight[0]; y[(t0 + 1) * yStride + r] = eight[1];
                            y[t0 * yStride + r1] = eight[2]; y[(t0 + 1) * yStride + r1] = eight[3];
                            y[t0 * yStride + r2] = eight[4]; y[(t0 + 1) * yStride + r2] = eight[5];
                            y[t0 * yStride + r3] = eight[6]; y[(t0 + 1) * yStride + r3] = eight[7];
                        }
                        r0 = rowStart + 4 * quarter;
                    }
                    // Up to four tokens per pass over a row, 512-bit, each token's sums as DotQ6_KQ8K's.
                    for (int r = r0; r < rowEnd; r++)
                        for (int t = 0; t < n; t += HeadQ6K512.MaxTokens)
                        {
                            int k = Math.Min(HeadQ6K512.MaxTokens, n - t);
                            HeadQ6K512.Dot(m.Row(r), qx + t * m.Cols, m.Cols, dx + t * blocks, sx + t * groups, blocks, k, four);
                            for (int j = 0; j < k; j++) y[(t0 + t + j) * yStride + r] = four[j];
                        }
                    continue;
                }
                for (int r = rowStart; r < rowEnd; r++)
                {
                    int t = 0;
                    for (; t + 4 <= n; t += 4)
                    {
                        DotQ6_KQ8Kx4(m.Row(r), qx + t * m.Cols, m.Cols, dx + t * blocks, sx + t * groups, blocks, four);
                        for (int j = 0; j < 4; j++) y[(t0 + t + j) * yStride + r] = four[j];
                    }
                    for (; t < n; t++) y[(t0 + t) * yStride + r] = DotQ6_KQ8K(m.Row(r), qx + t * m.Cols, dx + t * blocks, sx + t * groups, blocks);
                }
            }
            return;
        }
        if (m.Type == GgmlType.F16 && tokens <= FewTokensMax && m.Cols % 32 == 0)
        {
            bool wide = Vector512.IsHardwareAccelerated;
            bool avx2 = !wide && Avx2.IsSupported && Vector256.IsHardwareAccelerated && tokens <= 3; // four: the 256-bit tiles below
            float* scaled = wide || avx2 ? ScaleForRawHalves(x, (long)tokens * m.Cols) : null;
            if (scaled != null)
            {
                if (wide) MatMulF16Few<Raw512, Vector512<float>>(m, x, scaled, tokens, y, yStride, rowStart, rowEnd);
                else MatMulF16Few<Raw256, Vector256<float>>(m, x, scaled, tokens, y, yStride, rowStart, rowEnd);
                return;
            }
        }
        // Row blocks outer, 4-token tiles inside: a tile's activations (4 · m.Cols floats) stay in L1 while the block's
        // rows (re-read from L2 for each tile) are swept. Rows outer with every tile inside (the previous order) let
        // 8 tokens' activations (8 · 1536 · 4 B = 48 KiB) evict each other from L1 and tripled the head's time at 8
        // sequences. Each (row, token) sum is computed exactly as before, so results are unchanged.
        if (m.Type == GgmlType.F16 && tokens >= 4)
        {
            bool wide = Vector512.IsHardwareAccelerated && m.Cols % 16 == 0;
            bool avx2 = !Vector512.IsHardwareAccelerated && Avx2.IsSupported && Vector256.IsHardwareAccelerated && m.Cols % 8 == 0;
            float* scaled = wide || avx2 ? ScaleForRawHalves(x, (long)tokens * m.Cols) : null;
            if (scaled != null)
            {
                if (wide) MatMulF16Pairs<F16Pairs512>(m, scaled, tokens, y, yStride, rowStart, rowEnd);
                else MatMulF16Pairs<F16Pairs256>(m, scaled, tokens, y, yStride, rowStart, rowEnd);
                return;
            }
        }
        if (m.Type is GgmlType.Q8_0 or GgmlType.Q6_K)
        {
            // Without AVX2: every token's activations quantized once (64 at a time), then row blocks outer and tokens
            // inner, so the table streams from memory once per call (token by token it streamed once per sequence);
            // each (row, token) sum is MatVec's portable dot, so the logits equal MatVec's.
            bool q8 = m.Type == GgmlType.Q8_0;
            int blocks = m.Cols / (q8 ? 32 : Q6K.BlockWeights), groups = m.Cols / 16;
            sbyte* qx = stackalloc sbyte[m.Cols * Math.Min(tokens, 64)];
            float* dx = stackalloc float[blocks * Math.Min(tokens, 64)];
            short* sx = stackalloc short[groups * Math.Min(tokens, 64)];
            for (int t0 = 0; t0 < tokens; t0 += 64)
            {
                int n = Math.Min(64, tokens - t0);
                for (int t = 0; t < n; t++)
                {
                    if (q8) QuantizeQ8Blocks(x + (long)(t0 + t) * m.Cols, m.Cols, qx + t * m.Cols, dx + t * blocks);
                    else QuantizeQ8KBlocks(x + (long)(t0 + t) * m.Cols, m.Cols, qx + t * m.Cols, dx + t * blocks, sx + t * groups);
                }
                for (int block = rowStart; block < rowEnd; block += HeadRowBlock)
                {
                    int blockEnd = Math.Min(rowEnd, block + HeadRowBlock);
                    for (int t = 0; t < n; t++)
                        for (int r = block; r < blockEnd; r++)
                            y[(t0 + t) * yStride + r] = q8
                                ? DotQ8_0Q8Portable(m.Row(r), qx + t * m.Cols, dx + t * blocks, blocks)
                                : DotQ6_KQ8KPortable(m.Row(r), qx + t * m.Cols, dx + t * blocks, sx + t * groups, blocks);
                }
            }
            return;
        }
        for (int block = rowStart; block < rowEnd; block += HeadRowBlock)
        {
            int blockEnd = Math.Min(rowEnd, block + HeadRowBlock);
            for (int t = 0; t < tokens; t++)
            {
                float* xt = x + (long)t * m.Cols;
                for (int r = block; r < blockEnd; r++)
                {
                    byte* row = m.Row(r);
                    y[t * yStride + r] = m.Type switch
                    {
                        GgmlType.F32 => FloatMatVec.Dot((float*)row, xt, m.Cols),
                        GgmlType.F16 => DotF16((ushort*)row, xt, m.Cols),
                        GgmlType.BF16 => DotBF16((ushort*)row, xt, m.Cols),
                        _ => throw new InvalidOperationException($"no head kernel for {m.Type}"),
                    };
                }
            }
        }
    }

    /// <summary>This thread's int16-widened Q8_0 activations for the batched Q8_0 head (up to 64 tokens; heap, not stack).</summary>
    [ThreadStatic] private static short[]? t_x16;

    /// <summary>This thread's copy of the activations scaled by 2^112 (see <see cref="ScaleForRawHalves"/>).</summary>
    [ThreadStatic] private static float[]? t_scaled;

    /// <summary>
    /// Copies <paramref name="n"/> activations into this thread's buffer multiplied by 2^112, or returns null when one of
    /// them is too large for that (|x| ≥ 2^16, inf or NaN). A half's bits shifted into a float's fields are the half times
    /// 2^−112 exactly, so FMA(raw, x·2^112, acc) = FMA(half, x, acc) bit for bit (both scalings are exact and the FMA
    /// rounds the same exact product), and the batched head skips the rebias multiply per weight vector.
    /// </summary>
    private static float* ScaleForRawHalves(float* x, long n)
    {
        var buffer = t_scaled;
        if (buffer is null || buffer.Length < n) t_scaled = buffer = GC.AllocateUninitializedArray<float>((int)n, pinned: true);
        float* scaled = (float*)Unsafe.AsPointer(ref buffer[0]);
        var limit = Vector256.Create(65536f);
        var factor = Vector256.Create(0x77800000).AsSingle();
        var ok = Vector256<int>.AllBitsSet;
        long i = 0;
        for (; i <= n - 8; i += 8)
        {
            var v = Vector256.Load(x + i);
            ok &= Vector256.LessThan(Vector256.Abs(v), limit).AsInt32(); // false for NaN
            (v * factor).Store(scaled + i);
        }
        bool fits = ok == Vector256<int>.AllBitsSet;
        for (; i < n; i++)
        {
            fits &= MathF.Abs(x[i]) < 65536f;
            scaled[i] = x[i] * BitConverter.Int32BitsToSingle(0x77800000);
        }
        return fits ? scaled : null;
    }

    /// <summary>Columns per chunk of the F16 batched head: eight tokens' chunk of activations (8 · 512 floats = 16 KiB)
    /// stays in L1 while a block's rows stream past it from L2.</summary>
    internal const int HeadChunk = 512;

    /// <summary>
    /// The F16 batched head on activations scaled by 2^112, for machines with 512-bit vectors. Row blocks (16 rows, 80 KiB
    /// at 2560 columns, in L2) are outer; inside, tiles of eight tokens (four when fewer than eight are batched); inside,
    /// column chunks; inside, row pairs (one accumulator, a 16-lane vector, per row and token: 16 or 8 independent
    /// FMA chains, enough to cover the FMA latency; four rows × four tokens measured 5-10 % slower than two × four, from
    /// memory). Each pair's accumulators are parked in L1 between chunks, so the activations a chunk reads stay in L1 (a whole 4-token tile,
    /// 40 KiB at 2560 columns, does not fit beside the streaming rows and was re-read from L2). While a block is computed,
    /// the next one is prefetched a few lines after each kernel call. Each accumulator takes the same FMAs in the same
    /// order as <see cref="DotF16"/>'s single accumulator, so every logit equals the single-token head's bit for bit.
    /// Eight tokens per pass convert each weight vector once for eight FMAs (a half's conversion is three vector
    /// operations, so at four tokens per row the conversions, not the FMAs, set the pace).
    /// </summary>
    private static void MatMulF16Pairs<TKernel>(HeadMatrix m, float* xs, int tokens, float* y, long yStride, int rowStart, int rowEnd)
        where TKernel : struct, IF16PairKernel
    {
        int tile = tokens >= 8 ? TKernel.MaxTile : 4;
        int lanes = 2 * tile; // accumulators per row pair
        int vectorBytes = TKernel.VectorBytes;
        byte* parkRaw = stackalloc byte[HeadRowBlock / 2 * 16 * 64 + 64];
        byte* park = (byte*)(((nint)parkRaw + 63) & ~(nint)63);
        int chunk = HeadChunk;
        int tiles = (tokens + tile - 1) / tile;
        for (int block = rowStart; block < rowEnd; block += HeadRowBlock)
        {
            int blockEnd = Math.Min(rowEnd, block + HeadRowBlock);
            int pairs = (blockEnd - block + 1) / 2;
            // The next block is prefetched into L2 a few lines after each kernel call, spread evenly over the block.
            int nextRows = Math.Min(rowEnd, blockEnd + HeadRowBlock) - blockEnd;
            byte* prefetch = m.Row(blockEnd), prefetchEnd = prefetch + nextRows * m.RowBytes;
            long calls = (long)tiles * ((m.Cols + chunk - 1) / chunk) * pairs;
            long linesPerCall = (nextRows * m.RowBytes / 64 + calls - 1) / calls;
            for (int t = 0; t < tokens; t += tile)
            {
                // A last tile of fewer tokens reuses the tile ending at the last token (its sums come out the same and
                // are stored again), so every tile is full.
                int t0 = Math.Min(t, tokens - tile);
                float* xt = xs + (long)t0 * m.Cols;
                new Span<byte>(park, pairs * lanes * vectorBytes).Clear();
                for (int c = 0; c < m.Cols; c += chunk)
                {
                    int n = Math.Min(chunk, m.Cols - c);
                    for (int p = 0; p < pairs; p++)
                    {
                        int r = block + 2 * p;
                        int r1 = r + 1 < blockEnd ? r + 1 : r; // an odd block's last row is paired with itself
                        TKernel.Dot((ushort*)m.Row(r) + c, (ushort*)m.Row(r1) + c, xt + c, m.Cols, n, park + p * lanes * vectorBytes, tile);
                        if (Sse.IsSupported)
                            for (long l = 0; l < linesPerCall && prefetch < prefetchEnd; l++, prefetch += 64) Sse.Prefetch1(prefetch);
                    }
                }
                for (int p = 0; p < pairs; p++)
                {
                    byte* acc = park + p * lanes * vectorBytes;
                    int r = block + 2 * p;
                    for (int j = 0; j < tile; j++) y[(t0 + j) * yStride + r] = TKernel.Sum(acc, j);
                    if (r + 1 < blockEnd)
                        for (int j = 0; j < tile; j++) y[(t0 + j) * yStride + r + 1] = TKernel.Sum(acc, tile + j);
                }
            }
        }
    }

    /// <summary>One vector width of the batched F16 head: the two-row kernel and the horizontal sum that ends a dot.</summary>
    private interface IF16PairKernel
    {
        static abstract int VectorBytes { get; }

        /// <summary>Tokens per tile when at least that many are batched (otherwise 4).</summary>
        static abstract int MaxTile { get; }

        static abstract void Dot(ushort* w0, ushort* w1, float* x, long stride, int n, byte* acc, int tile);

        static abstract float Sum(byte* acc, int index);
    }

    private readonly struct F16Pairs512 : IF16PairKernel
    {
        public static int VectorBytes => 64;
        public static int MaxTile => 8;

        public static void Dot(ushort* w0, ushort* w1, float* x, long stride, int n, byte* acc, int tile)
        {
            if (tile == 8) DotRawF16x2<EightTokens, Raw512, Vector512<float>>(w0, w1, x, stride, n, (Vector512<float>*)acc);
            else DotRawF16x2<FourTokens, Raw512, Vector512<float>>(w0, w1, x, stride, n, (Vector512<float>*)acc);
        }

        public static float Sum(byte* acc, int index) => Vector512.Sum(((Vector512<float>*)acc)[index]);
    }

    /// <summary>AVX2: two rows × four tokens (8 accumulators of the 16 ymm registers; 8 tokens would not fit).</summary>
    private readonly struct F16Pairs256 : IF16PairKernel
    {
        public static int VectorBytes => 32;
        public static int MaxTile => 4;

        public static void Dot(ushort* w0, ushort* w1, float* x, long stride, int n, byte* acc, int tile) =>
            DotRawF16x2<FourTokens, Raw256, Vector256<float>>(w0, w1, x, stride, n, (Vector256<float>*)acc);

        public static float Sum(byte* acc, int index) => Vector256.Sum(((Vector256<float>*)acc)[index]);
    }

    /// <summary>Eight halves widened to their raw float bits (the 256-bit <see cref="RawHalves"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> RawHalves256(ushort* w) =>
        (Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32(Vector128.Load((short*)w)), 13) & Vector256.Create(unchecked((int)0x8FFFE000))).AsSingle();

    /// <summary>
    /// <see cref="DotRawF16Rows4"/> for AVX2 (n a multiple of 32): four rows against one activation vector, one FMA chain
    /// each in <see cref="DotF16"/>'s 256-bit order.
    /// </summary>
    public static void DotRawF16Rows4Avx2(ushort* w0, ushort* w1, ushort* w2, ushort* w3, int n, float* x, float* y0, float* y1, float* y2, float* y3, long prefetchAhead)
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        for (int i = 0; i < n; i += 32)
        {
            if (prefetchAhead != 0) PrefetchRows4(w0 + i, w1 + i, w2 + i, w3 + i, prefetchAhead);
            for (int k = i; k < i + 32; k += 8)
            {
                var v = Vector256.Load(x + k);
                a0 = Vector256.FusedMultiplyAdd(RawHalves256(w0 + k), v, a0); a1 = Vector256.FusedMultiplyAdd(RawHalves256(w1 + k), v, a1);
                a2 = Vector256.FusedMultiplyAdd(RawHalves256(w2 + k), v, a2); a3 = Vector256.FusedMultiplyAdd(RawHalves256(w3 + k), v, a3);
            }
        }
        *y0 = Vector256.Sum(a0); *y1 = Vector256.Sum(a1); *y2 = Vector256.Sum(a2); *y3 = Vector256.Sum(a3);
    }

    /// <summary>Sixteen halves widened to their raw float bits: the half's sign in bit 31, its exponent and mantissa in
    /// bits 27..13, i.e. the half times 2^−112 exactly (subnormal halves included).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> RawHalves(ushort* w) =>
        (Vector512.ShiftLeft(Avx512BW.ConvertToVector512Int32(Vector256.Load((short*)w)), 13) & Vector512.Create(unchecked((int)0x8FFFE000))).AsSingle();

    /// <summary>Tokens per pass of <see cref="DotRawF16x2{TTile, TOps, TVec}"/>, a JIT-time constant.</summary>
    public interface IHeadTile { static abstract int Tokens { get; } }

    public readonly struct FourTokens : IHeadTile { public static int Tokens => 4; }

    public readonly struct EightTokens : IHeadTile { public static int Tokens => 8; }

    /// <summary>One vector width for <see cref="DotRawF16x2{TTile, TOps, TVec}"/>: raw halves, loads and FMA.</summary>
    public interface IRawHalfOps<TVec> where TVec : unmanaged
    {
        static abstract int Lanes { get; }
        static abstract TVec Raw(ushort* w);
        static abstract TVec Load(float* x);
        static abstract TVec Fma(TVec a, TVec b, TVec c);
        static abstract float Sum(TVec v);
    }

    public readonly struct Raw512 : IRawHalfOps<Vector512<float>>
    {
        public static int Lanes => 16;
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Raw(ushort* w) => RawHalves(w);
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Load(float* x) => Vector512.Load(x);
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Fma(Vector512<float> a, Vector512<float> b, Vector512<float> c) => Vector512.FusedMultiplyAdd(a, b, c);
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Sum(Vector512<float> v) => Vector512.Sum(v);
    }

    public readonly struct Raw256 : IRawHalfOps<Vector256<float>>
    {
        public static int Lanes => 8;
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Raw(ushort* w) => RawHalves256(w);
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Load(float* x) => Vector256.Load(x);
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Fma(Vector256<float> a, Vector256<float> b, Vector256<float> c) => Vector256.FusedMultiplyAdd(a, b, c);
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Sum(Vector256<float> v) => Vector256.Sum(v);
    }

    /// <summary>
    /// Two F16 rows against <typeparamref name="TTile"/>'s 4 or 8 activation vectors (token j at x + j·stride) scaled by
    /// 2^112, over n columns (a multiple of the vector's lanes), continuing the sums parked at <paramref name="acc"/>:
    /// acc[j] is row 0's for token j, acc[Tokens + j] row 1's. Lane k of each accumulator takes columns k, k+L, k+2L, …
    /// (L lanes) in order, as <see cref="DotF16"/>'s at the same width, so Sum(acc[j]) after the last columns equals
    /// <see cref="DotF16"/> on the unscaled activations bit for bit. One code for both widths and tile sizes: the JIT
    /// specializes it per struct argument and drops the second half for four tokens.
    /// </summary>
    public static void DotRawF16x2<TTile, TOps, TVec>(ushort* w0, ushort* w1, float* x, long stride, int n, TVec* acc)
        where TTile : struct, IHeadTile where TOps : struct, IRawHalfOps<TVec> where TVec : unmanaged
    {
        bool eight = TTile.Tokens == 8;
        TVec* row1 = acc + TTile.Tokens;
        TVec a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3], c0 = row1[0], c1 = row1[1], c2 = row1[2], c3 = row1[3];
        TVec a4 = default, a5 = default, a6 = default, a7 = default, c4 = default, c5 = default, c6 = default, c7 = default;
        if (eight) (a4, a5, a6, a7, c4, c5, c6, c7) = (acc[4], acc[5], acc[6], acc[7], row1[4], row1[5], row1[6], row1[7]);
        float* x0 = x, x1 = x + stride, x2 = x + 2 * stride, x3 = x + 3 * stride;
        float* x4 = x + 4 * stride, x5 = x + 5 * stride, x6 = x + 6 * stride, x7 = x + 7 * stride;
        for (int i = 0; i < n; i += TOps.Lanes)
        {
            var h0 = TOps.Raw(w0 + i);
            var h1 = TOps.Raw(w1 + i);
            var v = TOps.Load(x0 + i); a0 = TOps.Fma(h0, v, a0); c0 = TOps.Fma(h1, v, c0);
            v = TOps.Load(x1 + i); a1 = TOps.Fma(h0, v, a1); c1 = TOps.Fma(h1, v, c1);
            v = TOps.Load(x2 + i); a2 = TOps.Fma(h0, v, a2); c2 = TOps.Fma(h1, v, c2);
            v = TOps.Load(x3 + i); a3 = TOps.Fma(h0, v, a3); c3 = TOps.Fma(h1, v, c3);
            if (!eight) continue;
            v = TOps.Load(x4 + i); a4 = TOps.Fma(h0, v, a4); c4 = TOps.Fma(h1, v, c4);
            v = TOps.Load(x5 + i); a5 = TOps.Fma(h0, v, a5); c5 = TOps.Fma(h1, v, c5);
            v = TOps.Load(x6 + i); a6 = TOps.Fma(h0, v, a6); c6 = TOps.Fma(h1, v, c6);
            v = TOps.Load(x7 + i); a7 = TOps.Fma(h0, v, a7); c7 = TOps.Fma(h1, v, c7);
        }
        acc[0] = a0; acc[1] = a1; acc[2] = a2; acc[3] = a3; row1[0] = c0; row1[1] = c1; row1[2] = c2; row1[3] = c3;
        if (eight) { acc[4] = a4; acc[5] = a5; acc[6] = a6; acc[7] = a7; row1[4] = c4; row1[5] = c5; row1[6] = c6; row1[7] = c7; }
    }

    /// <summary>
    /// Four F16 rows (<paramref name="n"/> halves each, n a multiple of 32) against one activation vector scaled by 2^112:
    /// *y_k = row k · x, each row one FMA chain in <see cref="DotF16"/>'s order (so each equals <see cref="DotF16"/> on the
    /// unscaled activations), four chains so the single-token head is not bound by FMA latency. With four weight streams
    /// (<see cref="TernaryKernel.WeightStreams"/>) <see cref="MatVec"/> passes rows from the four quarters of its range:
    /// four sequential streams far apart in memory, each followed by the hardware prefetcher and prefetched
    /// <see cref="StreamPrefetchBytes"/> ahead (<paramref name="prefetchAhead"/>); otherwise four adjacent rows, each
    /// line's same columns <paramref name="prefetchAhead"/> bytes on (the next four rows) prefetched into L2. Bench
    /// `quick-decode head` (2B4T's 128256 × 2560 F16 head from memory, one thread, one process, alternating; Zen 5 EPYC):
    /// 31–36 GB/s for the four streams, 24–27 for four adjacent rows with the next four prefetched, 20–22 without that
    /// prefetch, 27–31 for eight streams and 24–25 for a plain one-stream sum of the same bytes.
    /// </summary>
    public static void DotRawF16Rows4(ushort* w0, ushort* w1, ushort* w2, ushort* w3, int n, float* x, float* y0, float* y1, float* y2, float* y3, long prefetchAhead) =>
        DotRawF16Rows4<LineToL2>(w0, w1, w2, w3, n, x, y0, y1, y2, y3, prefetchAhead);

    /// <summary><see cref="DotRawF16Rows4(ushort*, ushort*, ushort*, ushort*, int, float*, float*, float*, float*, float*, long)"/>
    /// with <typeparamref name="TFetch"/> as its prefetch (`quick-decode head` times the kinds against each other).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void DotRawF16Rows4<TFetch>(ushort* w0, ushort* w1, ushort* w2, ushort* w3, int n, float* x, float* y0, float* y1, float* y2, float* y3, long prefetchAhead)
        where TFetch : ILinePrefetch
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        for (int i = 0; i < n; i += 32)
        {
            if (prefetchAhead != 0)
            {
                TFetch.Line((byte*)(w0 + i) + prefetchAhead); TFetch.Line((byte*)(w1 + i) + prefetchAhead);
                TFetch.Line((byte*)(w2 + i) + prefetchAhead); TFetch.Line((byte*)(w3 + i) + prefetchAhead);
            }
            var v = Vector512.Load(x + i);
            a0 = Vector512.FusedMultiplyAdd(RawHalves(w0 + i), v, a0); a1 = Vector512.FusedMultiplyAdd(RawHalves(w1 + i), v, a1);
            a2 = Vector512.FusedMultiplyAdd(RawHalves(w2 + i), v, a2); a3 = Vector512.FusedMultiplyAdd(RawHalves(w3 + i), v, a3);
            v = Vector512.Load(x + i + 16);
            a0 = Vector512.FusedMultiplyAdd(RawHalves(w0 + i + 16), v, a0); a1 = Vector512.FusedMultiplyAdd(RawHalves(w1 + i + 16), v, a1);
            a2 = Vector512.FusedMultiplyAdd(RawHalves(w2 + i + 16), v, a2); a3 = Vector512.FusedMultiplyAdd(RawHalves(w3 + i + 16), v, a3);
        }
        *y0 = Vector512.Sum(a0); *y1 = Vector512.Sum(a1); *y2 = Vector512.Sum(a2); *y3 = Vector512.Sum(a3);
    }

    /// <summary>Most tokens <see cref="MatMulF16Few{TOps, TVec}"/> serves (512-bit: 16 accumulators; more take the tiles).</summary>
    private const int FewTokensMax = 4;

    /// <summary>
    /// Bytes ahead of each of four quarter streams that the F16 head prefetches for two to four tokens (prefetcht1, once
    /// per 64-byte line). On the Zen 5 EPYC (one thread, the 2B4T head from memory, four quarter streams, one process,
    /// alternating) 2 KiB ahead read 34.6 GB/s against 27.5 without for three tokens and 28 against 22 for four
    /// (prefetcht0; prefetcht1 the same within noise); 512 B and 1 KiB were no better than none, 3 KiB and more worse
    /// again. End to end (`bench -s 3,4`, 2 threads, alternating) 73–74 -> 76–85 and 78–83 -> 88–94 tok/s. One token
    /// (<see cref="MatVec"/>, 512-bit path) prefetches the same distance: the raw loop read 38–40 against 32–36 GB/s with
    /// it and `quick-decode head` 30.2 against 27.1, and once `bitnet profile` stopped timing the JIT's recompiles, its
    /// head row (`profile --synthetic 2b4t -n 16|32 --kv-type int8`, six alternating pairs, 2 threads) read 46.1, 60.8,
    /// 59.7, 56.7, 55.4, 59.3 GB/s against 42.2, 49.8, 51.0, 55.1, 51.5, 53.3 without (every pair up, mean +11 %); with
    /// one thread level within noise (mean 31.4 against 30.9, three pairs each way). The single token's stream loop
    /// prefetches non-temporally (<see cref="LineNonTemporal"/>, as the few-token loop's four streams): the lines go to L1
    /// without being installed in L2, or in the L3 that Zen fills with L2's victims, as the ternary kernels' stream loops
    /// (<see cref="Avx512TernaryKernel.Dot512{TSplit}.StreamPrefetchBytes"/>). `quick-decode head` (one thread, seven
    /// rounds) 34.8 GB/s at 2 KiB against 32.5 for prefetcht1; `bitnet profile --synthetic 2b4t --kv-type int8 -n 64 -t 2`
    /// (one build, a switch read at start, runs alternating), the head's median 8494, 8885, 9138 µs against 9064, 9230,
    /// 9725 for prefetcht1 (1 KiB non-temporal: 9145, 9404, 10271, worse than both).
    /// </summary>
    internal const long StreamPrefetchBytes = 2048;

    /// <summary>
    /// The F16 head for two to four tokens (a few sequences decoding together, short speculative checks): the
    /// single-token <see cref="MatVec"/>'s row order — with four weight streams one row from each quarter of the range
    /// per pass, each stream prefetched <see cref="StreamPrefetchBytes"/> ahead, else four adjacent rows with the next
    /// four's columns prefetched — and each group of four rows widened once for all the tokens
    /// (<see cref="DotRawF16Rows4xT{TOps, TVec, TTile}"/>; with 256-bit vectors, sixteen registers, tokens 0 and 1 and then
    /// a third from L1). The rows left over take <see cref="DotF16"/>. Each (row, token) sum is one FMA chain in
    /// <see cref="DotF16"/>'s order, so every logit equals <see cref="MatVec"/>'s bit for bit. Before, two and three tokens
    /// took the generic per-row loop: on the 2B4T head (Zen 5 EPYC, 2 threads) a two-sequence decode step spent 27 ms in the
    /// head against ~11 ms for one sequence, for the same 657 MB; four tokens took the tiles below (~20 ms).
    /// <para>The four streams prefetch non-temporally, as the single token's (they were prefetcht1, into L2). Zen 5 EPYC,
    /// `bitnet profile --synthetic 2b4t --kv-type int8 -n 24|32`, one build with the prefetch read from a switch at start,
    /// runs alternating, head median per step: 2 threads, 2 sequences: nta 11234, 11162, 11317 µs, t1 11672, 11442, 11411,
    /// t0 11081, 11239, 11220; 1 thread, 2 sequences: nta 21301, 21148, t1 21936, 22871, t0 21317, 21587; 2 threads, 4
    /// sequences: nta 15309, 14802, 14680, 18878, t1 16694, 15575, 19476, 20771, t0 14393, 14167, 15148, 18825. nta and t0
    /// are level within the host's noise and both ahead of t1; nta keeps one rule for every stream loop.</para>
    /// </summary>
    private static void MatMulF16Few<TOps, TVec>(HeadMatrix m, float* x, float* scaled, int tokens, float* y, long yStride, int rowStart, int rowEnd)
        where TOps : struct, IRawHalfOps<TVec> where TVec : unmanaged
    {
        int n = m.Cols;
        TVec* acc = stackalloc TVec[4 * FewTokensMax];
        int r = rowStart;
        if (TernaryKernel.WeightStreams == 4)
        {
            int quarter = (rowEnd - rowStart) / 4;
            for (; r < rowStart + quarter; r++)
                FewRows4<TOps, TVec, LineNonTemporal>(m, scaled, tokens, y, yStride, r, r + quarter, r + 2 * quarter, r + 3 * quarter, StreamPrefetchBytes, acc);
            r = rowStart + 4 * quarter;
        }
        else
        {
            for (; r + 4 <= rowEnd; r += 4) FewRows4<TOps, TVec, LineToL2>(m, scaled, tokens, y, yStride, r, r + 1, r + 2, r + 3, 8L * n, acc);
        }
        for (; r < rowEnd; r++)
            for (int t = 0; t < tokens; t++) y[t * yStride + r] = DotF16((ushort*)m.Row(r), x + (long)t * n, n);
    }

    /// <summary>Rows r0..r3 against the scaled tokens of <see cref="MatMulF16Few{TOps, TVec}"/>: one pass for all of them
    /// with 512-bit vectors; with 256-bit ones tokens 0 and 1 in one pass and a third in a second over the same rows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void FewRows4<TOps, TVec, TFetch>(HeadMatrix m, float* scaled, int tokens, float* y, long yStride, int r0, int r1, int r2, int r3, long prefetchAhead, TVec* acc)
        where TOps : struct, IRawHalfOps<TVec> where TVec : unmanaged where TFetch : ILinePrefetch
    {
        int n = m.Cols;
        ushort* w0 = (ushort*)m.Row(r0), w1 = (ushort*)m.Row(r1), w2 = (ushort*)m.Row(r2), w3 = (ushort*)m.Row(r3);
        int done = tokens;
        if (TOps.Lanes == 16 && tokens == 4) DotRawF16Rows4xT<TOps, TVec, FourTokens, TFetch>(w0, w1, w2, w3, n, scaled, n, prefetchAhead, acc);
        else if (TOps.Lanes == 16 && tokens == 3) DotRawF16Rows4xT<TOps, TVec, ThreeTokens, TFetch>(w0, w1, w2, w3, n, scaled, n, prefetchAhead, acc);
        else
        {
            DotRawF16Rows4xT<TOps, TVec, TwoTokens, TFetch>(w0, w1, w2, w3, n, scaled, n, prefetchAhead, acc);
            done = 2;
        }
        for (int t = 0; t < done; t++)
        {
            float* yt = y + t * yStride;
            yt[r0] = TOps.Sum(acc[4 * t]); yt[r1] = TOps.Sum(acc[4 * t + 1]); yt[r2] = TOps.Sum(acc[4 * t + 2]); yt[r3] = TOps.Sum(acc[4 * t + 3]);
        }
        if (done == tokens) return;
        float* y2 = y + 2 * yStride;
        DotRawF16Rows4Avx2(w0, w1, w2, w3, n, scaled + 2L * n, y2 + r0, y2 + r1, y2 + r2, y2 + r3, 0);
    }

    public readonly struct TwoTokens : IHeadTile { public static int Tokens => 2; }

    public readonly struct ThreeTokens : IHeadTile { public static int Tokens => 3; }

    /// <summary>
    /// Four F16 rows (n halves each, a multiple of 32) against <typeparamref name="TTile"/>'s two to four activation
    /// vectors scaled by 2^112 (token j at x + j·<paramref name="stride"/>): acc[4j + k] is row k's sums with token j, each
    /// one FMA chain in <see cref="DotF16"/>'s order (lane l takes columns l, l + L, l + 2L, …). Each weight vector is
    /// widened once for all the tokens. With <paramref name="prefetchAhead"/> ≠ 0 each row's line that many bytes on is
    /// prefetched by <typeparamref name="TFetch"/> once per 64 bytes read.
    /// </summary>
    public static void DotRawF16Rows4xT<TOps, TVec, TTile, TFetch>(ushort* w0, ushort* w1, ushort* w2, ushort* w3, int n, float* x, long stride, long prefetchAhead, TVec* acc)
        where TOps : struct, IRawHalfOps<TVec> where TVec : unmanaged where TTile : struct, IHeadTile where TFetch : ILinePrefetch
    {
        int tokens = TTile.Tokens;
        TVec a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
        TVec c0 = default, c1 = default, c2 = default, c3 = default, d0 = default, d1 = default, d2 = default, d3 = default;
        float* x1 = x + stride, x2 = x + 2 * stride, x3 = x + 3 * stride;
        for (int i = 0; i < n; i += TOps.Lanes)
        {
            if (prefetchAhead != 0 && (i & 31) == 0)
            {
                TFetch.Line((byte*)(w0 + i) + prefetchAhead); TFetch.Line((byte*)(w1 + i) + prefetchAhead);
                TFetch.Line((byte*)(w2 + i) + prefetchAhead); TFetch.Line((byte*)(w3 + i) + prefetchAhead);
            }
            var h0 = TOps.Raw(w0 + i);
            var h1 = TOps.Raw(w1 + i);
            var h2 = TOps.Raw(w2 + i);
            var h3 = TOps.Raw(w3 + i);
            var v = TOps.Load(x + i);
            a0 = TOps.Fma(h0, v, a0); a1 = TOps.Fma(h1, v, a1); a2 = TOps.Fma(h2, v, a2); a3 = TOps.Fma(h3, v, a3);
            v = TOps.Load(x1 + i);
            b0 = TOps.Fma(h0, v, b0); b1 = TOps.Fma(h1, v, b1); b2 = TOps.Fma(h2, v, b2); b3 = TOps.Fma(h3, v, b3);
            if (tokens < 3) continue;
            v = TOps.Load(x2 + i);
            c0 = TOps.Fma(h0, v, c0); c1 = TOps.Fma(h1, v, c1); c2 = TOps.Fma(h2, v, c2); c3 = TOps.Fma(h3, v, c3);
            if (tokens < 4) continue;
            v = TOps.Load(x3 + i);
            d0 = TOps.Fma(h0, v, d0); d1 = TOps.Fma(h1, v, d1); d2 = TOps.Fma(h2, v, d2); d3 = TOps.Fma(h3, v, d3);
        }
        acc[0] = a0; acc[1] = a1; acc[2] = a2; acc[3] = a3; acc[4] = b0; acc[5] = b1; acc[6] = b2; acc[7] = b3;
        if (tokens >= 3) { acc[8] = c0; acc[9] = c1; acc[10] = c2; acc[11] = c3; }
        if (tokens >= 4) { acc[12] = d0; acc[13] = d1; acc[14] = d2; acc[15] = d3; }
    }


    /// <summary>Prefetches into L2 the line <paramref name="ahead"/> bytes past each of four row positions.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PrefetchRows4(ushort* p0, ushort* p1, ushort* p2, ushort* p3, long ahead)
    {
        if (!Sse.IsSupported) return;
        Sse.Prefetch1((byte*)p0 + ahead); Sse.Prefetch1((byte*)p1 + ahead); Sse.Prefetch1((byte*)p2 + ahead); Sse.Prefetch1((byte*)p3 + ahead);
    }

    /// <summary>Vocabulary rows per block in <see cref="MatMul"/> (16 rows of a 2560-wide F16 table = 80 KiB, in L2).</summary>
    private const int HeadRowBlock = 16;

    /// <summary>Q8_0 quantization of activations: per 32-value block d = max|x|/127, q = round(x/d).</summary>
    public static void QuantizeQ8Blocks(float* x, int n, sbyte* q, float* d)
    {
        for (int b = 0; b < n / 32; b++)
        {
            float* xb = x + b * 32;
            float max = 0f;
            for (int i = 0; i < 32; i++) max = MathF.Max(max, MathF.Abs(xb[i]));
            float scale = max / 127f;
            float inv = max > 0f ? 127f / max : 0f;
            d[b] = scale;
            for (int i = 0; i < 32; i++) q[b * 32 + i] = (sbyte)MathF.Round(xb[i] * inv);
        }
    }

    /// <summary>
    /// A Q8_0 row against Q8_0-quantized activations: per block, vpmaddubsw on |w| and sign(w)·q (|w|·|q| ≤ 128·127,
    /// so the pair sums cannot saturate), vpmaddwd to int32, then one fused multiply-add by d_w·d_x.
    /// </summary>
    public static float DotQ8_0Q8(byte* w, sbyte* qx, float* dx, int blocks)
    {
        // Four independent accumulators: with one, every block waits for the previous block's FMA (4-cycle latency).
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        int b = 0;
        for (; b + 4 <= blocks; b += 4, w += 4 * 34)
        {
            a0 = Block(w, qx, dx, b, a0);
            a1 = Block(w + 34, qx, dx, b + 1, a1);
            a2 = Block(w + 68, qx, dx, b + 2, a2);
            a3 = Block(w + 102, qx, dx, b + 3, a3);
        }
        for (; b < blocks; b++, w += 34) a0 = Block(w, qx, dx, b, a0);
        return Vector256.Sum((a0 + a1) + (a2 + a3));
    }

    /// <summary>
    /// <see cref="DotQ8_0Q8"/> for two tokens' activations (qx0, dx0 and qx1, dx1): each block's weights are loaded,
    /// made absolute and their scale widened once for both, and each token's sums take the same operations in the same
    /// order as <see cref="DotQ8_0Q8"/>, so result[j] equals DotQ8_0Q8 of token j bit for bit.
    /// </summary>
    public static void DotQ8_0Q8x2(byte* w, sbyte* qx0, sbyte* qx1, float* dx0, float* dx1, int blocks, float* result)
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, c0 = default, c1 = default, c2 = default, c3 = default;
        int b = 0;
        for (; b + 4 <= blocks; b += 4, w += 4 * 34)
        {
            Block2(w, qx0, qx1, dx0, dx1, b, ref a0, ref c0);
            Block2(w + 34, qx0, qx1, dx0, dx1, b + 1, ref a1, ref c1);
            Block2(w + 68, qx0, qx1, dx0, dx1, b + 2, ref a2, ref c2);
            Block2(w + 102, qx0, qx1, dx0, dx1, b + 3, ref a3, ref c3);
        }
        for (; b < blocks; b++, w += 34) Block2(w, qx0, qx1, dx0, dx1, b, ref a0, ref c0);
        result[0] = Vector256.Sum((a0 + a1) + (a2 + a3));
        result[1] = Vector256.Sum((c0 + c1) + (c2 + c3));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Block2(byte* w, sbyte* qx0, sbyte* qx1, float* dx0, float* dx1, int b, ref Vector256<float> acc0, ref Vector256<float> acc1)
    {
        float dw = FiniteHalfToSingle(*(short*)w);
        var wv = Avx.LoadVector256((sbyte*)(w + 2));
        var aw = Avx2.Abs(wv);
        var ones = Vector256.Create((short)1);
        var dot = Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(aw, Avx2.Sign(Avx.LoadVector256(qx0 + b * 32), wv)), ones);
        acc0 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(dot), Vector256.Create(dw * dx0[b]), acc0);
        dot = Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(aw, Avx2.Sign(Avx.LoadVector256(qx1 + b * 32), wv)), ones);
        acc1 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(dot), Vector256.Create(dw * dx1[b]), acc1);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Block(byte* w, sbyte* qx, float* dx, int b, Vector256<float> acc)
    {
        float d = FiniteHalfToSingle(*(short*)w) * dx[b];
        var wv = Avx.LoadVector256((sbyte*)(w + 2));
        var xv = Avx.LoadVector256(qx + b * 32);
        var dot = Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(Avx2.Abs(wv), Avx2.Sign(xv, wv)), Vector256.Create((short)1));
        return Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(dot), Vector256.Create(d), acc);
    }

    /// <summary>The scalar form of <see cref="HalfToSingle(Vector256{int})"/> (a Q8_0 block scale is a finite half).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float FiniteHalfToSingle(short h) =>
        BitConverter.Int32BitsToSingle(((int)h << 13) & unchecked((int)0x8FFFE000)) * BitConverter.Int32BitsToSingle(0x77800000);

    /// <summary>
    /// Exact fp16 → fp32 for finite halves without F16C (which .NET does not expose): sign-extend the half to 32 bits
    /// (the widening of a <c>short</c>), shift the exponent and mantissa into the float's fields, keep bit 31 (the sign,
    /// still set by the extension) and bits 27..13, and multiply by 2^112 to rebias — which also turns subnormal halves
    /// into the right normal floats. Four operations per vector instead of ten for the general form; ±inf and NaN
    /// (exponent 31) would come out finite, so tables are checked for them at load.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> HalfToSingle(Vector256<int> signExtended) =>
        (Vector256.ShiftLeft(signExtended, 13) & Vector256.Create(unchecked((int)0x8FFFE000))).AsSingle() * Vector256.Create(0x77800000).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> HalfToSingle(Vector512<int> signExtended) =>
        (Vector512.ShiftLeft(signExtended, 13) & Vector512.Create(unchecked((int)0x8FFFE000))).AsSingle() * Vector512.Create(0x77800000).AsSingle();

    /// <summary>
    /// a·b + c on 128-bit vectors: fused where the CPU has it (ARM64; x86 with FMA), else a multiply and an add. Where
    /// only 128-bit vectors are accelerated on x86 (no AVX2) there is no FMA either, and Vector128.FusedMultiplyAdd is
    /// emulated one element at a time: the bundled model's F16 head took 11.9 ms a token that way (DOTNET_EnableAVX2=0,
    /// Ice Lake), against 5.0–6.7 ms for the scalar loop it replaced and 0.50–0.64 ms with a multiply and an add.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector128<float> MulAdd128(Vector128<float> a, Vector128<float> b, Vector128<float> c) =>
        Fma.IsSupported || System.Runtime.Intrinsics.Arm.AdvSimd.IsSupported ? Vector128.FusedMultiplyAdd(a, b, c) : a * b + c;

    /// <summary>a·b + c on scalars: fused where the CPU has it, else a multiply and an add (MathF.FusedMultiplyAdd is a library call there).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float MulAdd(float a, float b, float c) =>
        Fma.IsSupported || System.Runtime.Intrinsics.Arm.AdvSimd.IsSupported ? MathF.FusedMultiplyAdd(a, b, c) : a * b + c;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> HalfToSingle(Vector128<int> signExtended) =>
        (Vector128.ShiftLeft(signExtended, 13) & Vector128.Create(unchecked((int)0x8FFFE000))).AsSingle() * Vector128.Create(0x77800000).AsSingle();

    public static float DotF16(ushort* w, float* x, int n)
    {
        int i = 0;
        float sum = 0f;
        if (Vector512.IsHardwareAccelerated && n >= 16)
        {
            // One accumulator: lane k takes columns k, k+16, k+32, … in order. The batched head (eight tokens × two rows
            // per pass) keeps exactly this order, so a sequence's logits do not depend on what it is batched with.
            Vector512<float> a = default;
            for (; i <= n - 16; i += 16)
                a = Vector512.FusedMultiplyAdd(HalfToSingle(Avx512BW.ConvertToVector512Int32(Vector256.Load((short*)(w + i)))), Vector512.Load(x + i), a);
            sum = Vector512.Sum(a);
        }
        else if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            // The same single-accumulator order at 256 bits (lane k: columns k, k+8, …), kept by the AVX2 batched head.
            Vector256<float> a = default;
            for (; i <= n - 8; i += 8)
                a = Vector256.FusedMultiplyAdd(HalfToSingle(Vector256.WidenLower(Vector128.Load((short*)(w + i)).ToVector256Unsafe())), Vector256.Load(x + i), a);
            sum = Vector256.Sum(a);
        }
        else if (Vector128.IsHardwareAccelerated && n >= 8)
        {
            // 128-bit vectors only (ARM64's AdvSimd): two accumulators, lane k of the first taking columns k, k+8, …
            // and of the second k+4, k+12, … (one would wait on each FMA's latency); the batched head calls this per
            // token on such CPUs, so a sequence's logits still do not depend on its batch. Was a scalar loop there.
            Vector128<float> a = default, b = default;
            for (; i <= n - 8; i += 8)
            {
                var h = Vector128.Load((short*)(w + i));
                a = MulAdd128(HalfToSingle(Vector128.WidenLower(h)), Vector128.Load(x + i), a);
                b = MulAdd128(HalfToSingle(Vector128.WidenUpper(h)), Vector128.Load(x + i + 4), b);
            }
            sum = Vector128.Sum(a + b);
        }
        for (; i < n; i++) sum += HalfConversions.HalfToFloat(w[i]) * x[i];
        return sum;
    }

    public static float DotBF16(ushort* w, float* x, int n)
    {
        int i = 0;
        float sum = 0f;
        if (Vector512.IsHardwareAccelerated && n >= 32)
        {
            Vector512<float> a = default, b = default;
            for (; i <= n - 32; i += 32)
            {
                var h = Vector512.Load(w + i);
                a = Vector512.FusedMultiplyAdd(Vector512.ShiftLeft(Vector512.WidenLower(h), 16).AsSingle(), Vector512.Load(x + i), a);
                b = Vector512.FusedMultiplyAdd(Vector512.ShiftLeft(Vector512.WidenUpper(h), 16).AsSingle(), Vector512.Load(x + i + 16), b);
            }
            sum = Vector512.Sum(a + b);
        }
        else if (Vector256.IsHardwareAccelerated && n >= 16)
        {
            Vector256<float> a = default, b = default;
            for (; i <= n - 16; i += 16)
            {
                var h = Vector256.Load(w + i);
                a = Vector256.FusedMultiplyAdd(Vector256.ShiftLeft(Vector256.WidenLower(h), 16).AsSingle(), Vector256.Load(x + i), a);
                b = Vector256.FusedMultiplyAdd(Vector256.ShiftLeft(Vector256.WidenUpper(h), 16).AsSingle(), Vector256.Load(x + i + 8), b);
            }
            sum = Vector256.Sum(a + b);
        }
        else if (Vector128.IsHardwareAccelerated && n >= 8)
        {
            // 128-bit vectors only (ARM64): the same at 128 bits.
            Vector128<float> a = default, b = default;
            for (; i <= n - 8; i += 8)
            {
                var h = Vector128.Load(w + i);
                a = MulAdd128(Vector128.ShiftLeft(Vector128.WidenLower(h), 16).AsSingle(), Vector128.Load(x + i), a);
                b = MulAdd128(Vector128.ShiftLeft(Vector128.WidenUpper(h), 16).AsSingle(), Vector128.Load(x + i + 4), b);
            }
            sum = Vector128.Sum(a + b);
        }
        for (; i < n; i++) sum += HalfConversions.BFloat16ToFloat(w[i]) * x[i];
        return sum;
    }

    /// <summary>
    /// <see cref="DotQ8_0Q8"/> without AVX2 (ARM64, x86 before Haswell): the same int32 sum per block (exact), then one
    /// fused multiply-add by d_w·d_x per block in block order. Equal to DotQ8_0Q8 up to float summation order.
    /// </summary>
    public static float DotQ8_0Q8Portable(byte* w, sbyte* qx, float* dx, int blocks)
    {
        float sum = 0f;
        for (int b = 0; b < blocks; b++, w += 34)
        {
            sbyte* q = (sbyte*)(w + 2);
            sbyte* a = qx + b * 32;
            int isum = 0;
            for (int i = 0; i < 32; i++) isum += q[i] * a[i];
            sum = MulAdd(isum, FiniteHalfToSingle(*(short*)w) * dx[b], sum);
        }
        return sum;
    }

    /// <summary>
    /// ggml's Q8_K quantization of activations, the partner of Q6_K weights: per 256-value block d = max|x|/127 and
    /// q = round(x/d), plus the sum of the codes of every 16 values (for the −32 offset of the Q6_K codes).
    /// </summary>
    public static void QuantizeQ8KBlocks(float* x, int n, sbyte* q, float* d, short* sums)
    {
        for (int b = 0; b < n / Q6K.BlockWeights; b++)
        {
            float* xb = x + b * Q6K.BlockWeights;
            sbyte* qb = q + b * Q6K.BlockWeights;
            float max = 0f;
            for (int i = 0; i < Q6K.BlockWeights; i++) max = MathF.Max(max, MathF.Abs(xb[i]));
            d[b] = max / 127f;
            float inv = max > 0f ? 127f / max : 0f;
            for (int g = 0; g < 16; g++)
            {
                int sum = 0;
                for (int i = g * 16; i < g * 16 + 16; i++)
                {
                    int v = (int)MathF.Round(xb[i] * inv);
                    qb[i] = (sbyte)v;
                    sum += v;
                }
                sums[b * 16 + g] = (short)sum;
            }
        }
    }

    /// <summary>
    /// A Q6_K row against Q8_K-quantized activations (<see cref="QuantizeQ8KBlocks"/>). Per block and per 32 weights:
    /// the 6-bit codes q ∈ [0, 63] are assembled from ql and qh with 16-bit shifts and byte masks, vpmaddubsw
    /// multiplies them by the int8 activations (|pair sum| ≤ 2·63·127, no saturation), vpmaddwd weights each
    /// 16-value half by its int8 scale into int32; the −32 offset is subtracted once per block as 32·Σ scale·Σ q_x
    /// over the 16 groups. The block's int32 lanes (|lane| &lt; 2²⁶) become floats and take one fused multiply-add
    /// by d_w·d_x.
    /// </summary>
    public static float DotQ6_KQ8K(byte* w, sbyte* qx, float* dx, short* sums, int blocks)
    {
        Vector256<float> acc = default;
        for (int b = 0; b < blocks; b++, w += Q6K.BlockBytes)
        {
            var scales = Avx2.ConvertToVector256Int16(Vector128.Load((sbyte*)(w + Q6K.ScalesOffset)));
            var isum = -Vector256.ShiftLeft(Avx2.MultiplyAddAdjacent(scales, Vector256.Load(sums + b * 16)), 5);
            sbyte* xb = qx + b * Q6K.BlockWeights;
            for (int h = 0; h < 2; h++, xb += 128)
            {
                var half = new Q6Half(w, h, scales);
                isum += half.Dot(xb);
            }
            float d = HalfConversions.HalfToFloat(*(ushort*)(w + Q6K.DOffset)) * dx[b];
            acc = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(isum), Vector256.Create(d), acc);
        }
        return Vector256.Sum(acc);
    }

    /// <summary>
    /// The 6-bit code (0..63, before the −32 offset) of weight 128·h + 32·k + l of a Q6_K block: the low four bits from
    /// ql (the low or high nibble of its 32 + 32 bytes per half), the high two from qh (two bits per quarter).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Q6Code(byte* block, int h, int k, int l) =>
        (block[64 * h + 32 * (k & 1) + l] >> (k < 2 ? 0 : 4) & 0xF) | (block[Q6K.QhOffset + 32 * h + l] >> 2 * k & 3) << 4;

    /// <summary>
    /// <see cref="DotQ6_KQ8K"/> without AVX2: per block Σ scale·(code − 32)·q over the 16 groups as one exact int32
    /// (the −32 offset through the per-16 sums, as there), then one fused multiply-add by d_w·d_x. Equal to DotQ6_KQ8K up
    /// to float summation order.
    /// </summary>
    public static float DotQ6_KQ8KPortable(byte* w, sbyte* qx, float* dx, short* sums, int blocks)
    {
        float sum = 0f;
        for (int b = 0; b < blocks; b++, w += Q6K.BlockBytes)
        {
            sbyte* sc = (sbyte*)(w + Q6K.ScalesOffset);
            sbyte* xb = qx + b * Q6K.BlockWeights;
            int isum = 0;
            for (int g = 0; g < 16; g++) isum -= 32 * sc[g] * sums[b * 16 + g];
            for (int h = 0; h < 2; h++)
                for (int k = 0; k < 4; k++)
                    for (int g = 0; g < 2; g++)
                    {
                        int group = 0;
                        for (int l = 16 * g; l < 16 * g + 16; l++) group += Q6Code(w, h, k, l) * xb[128 * h + 32 * k + l];
                        isum += sc[8 * h + 2 * k + g] * group;
                    }
            sum = MulAdd(isum, HalfConversions.HalfToFloat(*(ushort*)(w + Q6K.DOffset)) * dx[b], sum);
        }
        return sum;
    }

    /// <summary>
    /// <see cref="DotQ6_KQ8K"/> for four tokens at once (activations <paramref name="qx"/> + j·<paramref name="stride"/>,
    /// scales <paramref name="dx"/> + j·blocks, sums <paramref name="sums"/> + j·16·blocks): each block's 6-bit codes
    /// are assembled and its scales spread once for the four. Per token the integer sums and the float accumulation
    /// are those of DotQ6_KQ8K in the same order, so the results are identical.
    /// </summary>
    public static void DotQ6_KQ8Kx4(byte* w, sbyte* qx, int stride, float* dx, short* sums, int blocks, float* result)
    {
        Vector256<float> acc0 = default, acc1 = default, acc2 = default, acc3 = default;
        int groups = blocks * 16;
        for (int b = 0; b < blocks; b++, w += Q6K.BlockBytes)
        {
            var scales = Avx2.ConvertToVector256Int16(Vector128.Load((sbyte*)(w + Q6K.ScalesOffset)));
            var i0 = -Vector256.ShiftLeft(Avx2.MultiplyAddAdjacent(scales, Vector256.Load(sums + b * 16)), 5);
            var i1 = -Vector256.ShiftLeft(Avx2.MultiplyAddAdjacent(scales, Vector256.Load(sums + groups + b * 16)), 5);
            var i2 = -Vector256.ShiftLeft(Avx2.MultiplyAddAdjacent(scales, Vector256.Load(sums + 2 * groups + b * 16)), 5);
            var i3 = -Vector256.ShiftLeft(Avx2.MultiplyAddAdjacent(scales, Vector256.Load(sums + 3 * groups + b * 16)), 5);
            sbyte* xb = qx + b * Q6K.BlockWeights;
            for (int h = 0; h < 2; h++, xb += 128)
            {
                var half = new Q6Half(w, h, scales);
                i0 += half.Dot(xb);
                i1 += half.Dot(xb + stride);
                i2 += half.Dot(xb + 2 * stride);
                i3 += half.Dot(xb + 3 * stride);
            }
            float dw = HalfConversions.HalfToFloat(*(ushort*)(w + Q6K.DOffset));
            acc0 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(i0), Vector256.Create(dw * dx[b]), acc0);
            acc1 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(i1), Vector256.Create(dw * dx[blocks + b]), acc1);
            acc2 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(i2), Vector256.Create(dw * dx[2 * blocks + b]), acc2);
            acc3 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(i3), Vector256.Create(dw * dx[3 * blocks + b]), acc3);
        }
        result[0] = Vector256.Sum(acc0);
        result[1] = Vector256.Sum(acc1);
        result[2] = Vector256.Sum(acc2);
        result[3] = Vector256.Sum(acc3);
    }

    /// <summary>
    /// One 128-weight half of a Q6_K block, unpacked for vpmaddubsw: the four 32-code quarters (6-bit, unsigned) and
    /// their int16 scales spread so that each 16-weight group meets its own scale.
    /// </summary>
    private readonly struct Q6Half
    {
        private readonly Vector256<byte> _q0, _q1, _q2, _q3;
        private readonly Vector256<short> _s0, _s1, _s2, _s3;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Q6Half(byte* block, int h, Vector256<short> scales)
        {
            var low4 = Vector256.Create((byte)0x0F);
            var bits45 = Vector256.Create((byte)0x30);
            var a = Vector256.Load(block + 64 * h);
            var c = Vector256.Load(block + 32 + 64 * h);
            var hi = Vector256.Load(block + Q6K.QhOffset + 32 * h).AsUInt16();
            _q0 = (a & low4) | (Vector256.ShiftLeft(hi, 4).AsByte() & bits45);
            _q1 = (c & low4) | (Vector256.ShiftLeft(hi, 2).AsByte() & bits45);
            _q2 = (Vector256.ShiftRightLogical(a.AsUInt16(), 4).AsByte() & low4) | (hi.AsByte() & bits45);
            _q3 = (Vector256.ShiftRightLogical(c.AsUInt16(), 4).AsByte() & low4) | (Vector256.ShiftRightLogical(hi, 2).AsByte() & bits45);
            // vpshufb patterns that spread the half's eight int16 scales (in both 128-bit lanes) so that quarter k gets
            // scale 2k in the low lane (its first 16 weights) and scale 2k+1 in the high lane.
            var s = (h == 0 ? Vector256.Create(scales.GetLower()) : Vector256.Create(scales.GetUpper())).AsByte();
            var spread = Vector256.Create((ushort)0x0100, 0x0100, 0x0100, 0x0100, 0x0100, 0x0100, 0x0100, 0x0100,
                0x0302, 0x0302, 0x0302, 0x0302, 0x0302, 0x0302, 0x0302, 0x0302).AsByte();
            _s0 = Avx2.Shuffle(s, spread).AsInt16();
            _s1 = Avx2.Shuffle(s, spread + Vector256.Create((byte)4)).AsInt16();
            _s2 = Avx2.Shuffle(s, spread + Vector256.Create((byte)8)).AsInt16();
            _s3 = Avx2.Shuffle(s, spread + Vector256.Create((byte)12)).AsInt16();
        }

        /// <summary>Σ scale · code · x over the half, as eight int32 partial sums (int8 activations at <paramref name="xb"/>).</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector256<int> Dot(sbyte* xb)
        {
            var p0 = Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(_q0, Vector256.Load(xb)), _s0);
            var p1 = Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(_q1, Vector256.Load(xb + 32)), _s1);
            var p2 = Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(_q2, Vector256.Load(xb + 64)), _s2);
            var p3 = Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(_q3, Vector256.Load(xb + 96)), _s3);
            return ((p0 + p1) + p2) + p3;
        }
    }

    /// <summary>
    /// Q6_K against float activations, without SIMD: per 16-weight group the codes are decoded and dotted in float, then
    /// scaled once by d·scale. The format's definition, a reference for the tests (the head quantizes its activations).
    /// </summary>
    public static float DotQ6_K(byte* w, float* x, int n)
    {
        float sum = 0f;
        for (int b = 0; b < n / Q6K.BlockWeights; b++, w += Q6K.BlockBytes)
        {
            float d = HalfConversions.HalfToFloat(*(ushort*)(w + Q6K.DOffset));
            sbyte* sc = (sbyte*)(w + Q6K.ScalesOffset);
            for (int h = 0; h < 2; h++, x += 128)
            {
                for (int k = 0; k < 4; k++)
                {
                    for (int g = 0; g < 2; g++)
                    {
                        float group = 0f;
                        for (int l = 16 * g; l < 16 * g + 16; l++) group += (Q6Code(w, h, k, l) - 32) * x[32 * k + l];
                        sum += d * sc[8 * h + 2 * k + g] * group;
                    }
                }
            }
        }
        return sum;
    }
}

/// <summary>A software prefetch of one cache line, as a type, so that a loop can be specialized on it.</summary>
public unsafe interface ILinePrefetch { static abstract void Line(byte* address); }

/// <summary>prefetcht1: into L2 (and L3).</summary>
public readonly unsafe struct LineToL2 : ILinePrefetch
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Line(byte* address) { if (Sse.IsSupported) Sse.Prefetch1(address); }
}

/// <summary>prefetcht0: into L1 and every level below.</summary>
public readonly unsafe struct LineToL1 : ILinePrefetch
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Line(byte* address) { if (Sse.IsSupported) Sse.Prefetch0(address); }
}

/// <summary>prefetchnta: into L1, not installed in the outer levels (data read once).</summary>
public readonly unsafe struct LineNonTemporal : ILinePrefetch
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Line(byte* address) { if (Sse.IsSupported) Sse.PrefetchNonTemporal(address); }
}
