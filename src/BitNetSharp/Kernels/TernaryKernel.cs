using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using BitNetSharp.Quantization;

namespace BitNetSharp.Kernels;

/// <summary>
/// One instruction-set variant of the ternary × int8 matrix product. All variants compute the exact integer
/// D = Σ_k c_k·q_k over the padded row (c = t+1 ∈ {0,1,2}), then the same fp32 epilogue
/// y = (float)(D − Σq) / s_x · scale_row, so every variant equals <see cref="ReferenceTernaryKernel"/>
/// bit for bit. Token tiles of four share each unpacked weight block (prefill and batched decode).
/// </summary>
public abstract unsafe class TernaryKernel
{
    /// <summary>
    /// How far ahead of the current weight load the x86 variants prefetch. Rows are contiguous, so it runs on into
    /// the next rows. Measured on a Zen 5 class EPYC (bench quick mode, 2B4T shapes, cold weights, prefetcht0): 0 B →
    /// 19–28 GB/s, 1 KiB → 18–25, 4 KiB → 21–32, 8 KiB → 25–38, 16 KiB → 22–38 (single-core read ≈ 38 GB/s); on a Zen 4
    /// class EPYC with prefetcht1 (bench `quick-decode`): 4 KiB → 14.0–16.9 GB/s, 8 KiB → 16.6–20.3, 16 KiB → 17.6–19.2,
    /// 32 KiB → 16.8–18.5 (plain sum 19.9–20.4). The hardware prefetcher alone leaves a one-row stream short of enough
    /// loads in flight.
    /// </summary>
    public static readonly int PrefetchDistance = ReadPrefetchDistance();

    /// <summary>
    /// The x86 kernels' software prefetch of the weight line <see cref="PrefetchDistance"/> bytes ahead of
    /// <paramref name="line"/>, into L2 (prefetcht1), not L1. On the 2-core Zen 4 EPYC, single-thread decode of the 2B4T
    /// shape (bench `quick-decode`, one process, alternating) read 12.0–13.0 GB/s with prefetcht0 and 17.4–17.5 with
    /// prefetcht1 at the same distance, against 20.9–21.3 for a plain streaming sum of the same bytes: prefetches into L1
    /// hold its few miss buffers for the whole trip to memory, which capped the lines in flight; into L2 they do not.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void PrefetchWeights(byte* line)
    {
        if (!System.Runtime.Intrinsics.X86.Sse.IsSupported) return; // folded by the JIT; the intrinsic throws off x86
        if (PrefetchIntoL1) System.Runtime.Intrinsics.X86.Sse.Prefetch0(line + PrefetchDistance);
        else System.Runtime.Intrinsics.X86.Sse.Prefetch1(line + PrefetchDistance);
    }

    /// <summary>BITNET_PREFETCH_LEVEL=l1 makes <see cref="PrefetchWeights"/> (and the attention kernels' K/V hints) use prefetcht0 (the old behaviour), for
    /// comparing the two on a given CPU; anything else, or unset, is l2 (prefetcht1). Read once: the JIT folds it.</summary>
    public static readonly bool PrefetchIntoL1 = string.Equals(Environment.GetEnvironmentVariable(PrefetchLevelVariable)?.Trim(), "l1", StringComparison.OrdinalIgnoreCase);

    public const string PrefetchLevelVariable = "BITNET_PREFETCH_LEVEL";

    public const string PrefetchDistanceVariable = "BITNET_PREFETCH_DISTANCE";

    /// <summary>BITNET_PREFETCH_DISTANCE overrides the distance (bytes, a multiple of 64 up to 64 KiB; the attention kernels use it too) for experiments on a given CPU; default 8192.</summary>
    private static int ReadPrefetchDistance()
    {
        return ParsePrefetchDistance(Environment.GetEnvironmentVariable(PrefetchDistanceVariable)) ?? 8192;
    }

    /// <summary>A prefetch distance as BITNET_PREFETCH_DISTANCE gives it (bytes, a multiple of 64 from 0 to 64 KiB), or null.</summary>
    public static int? ParsePrefetchDistance(string? text) =>
        int.TryParse(text?.Trim(), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int d) && d % 64 == 0 && d <= 65536 ? d : null;

    /// <summary>
    /// How many far-apart sequential streams decode reads weights in: 4 (one row from each quarter of a worker's row
    /// range per pass, <see cref="ITernaryRowPairDot.DotRows4Streams"/>; the single-token F16 head likewise) or 1 (rows
    /// in address order, each line prefetched <see cref="PrefetchDistance"/> ahead). Results are the same either way
    /// (exact integer sums per row); only the memory access pattern differs, and which one streams faster depends on
    /// the core's hardware prefetchers. On the Zen 5 EPYC (bench `quick-decode`, one process, one thread, 278 MB of
    /// weights from memory) four streams read 31–35 GB/s against 25–28 for one, as the bandwidth probe's four-stream
    /// pattern reads 39–42 GB/s against 24–34 for a plain one; on the Zen 4 EPYC that probe read four streams slower
    /// than one (21.4 against 25.9 GB/s), so the default is 4 on AMD family 1Ah (Zen 5) and later and on Zen 3 (measured
    /// there too, <see cref="DefaultWeightStreams"/>), 1 elsewhere until measured. BITNET_WEIGHT_STREAMS=1|4 overrides it.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Not 1 or 4.</exception>
    public static int WeightStreams
    {
        get => s_weightStreams;
        set
        {
            s_weightStreams = value is 1 or 4 ? value : throw new ArgumentOutOfRangeException(nameof(value), value, "Weight streams are 1 or 4.");
            WeightStreamsGiven = true;
        }
    }

    private static int s_weightStreams = ReadWeightStreams();

    /// <summary>Whether <see cref="WeightStreams"/> was chosen (BITNET_WEIGHT_STREAMS, or set in code) rather than left
    /// at the CPU's default: a choice of 1 holds for the quantized heads too (<see cref="HeadKernels.QuantizedRowsSideBySide"/>).</summary>
    /// <summary>The count and whether it was given, for a test to put back as it found them (the setter marks it given).</summary>
    internal static (int Streams, bool Given) WeightStreamsState
    {
        get => (s_weightStreams, WeightStreamsGiven);
        set
        {
            s_weightStreams = value.Streams is 1 or 4 ? value.Streams : throw new ArgumentOutOfRangeException(nameof(value), value.Streams, "Weight streams are 1 or 4.");
            WeightStreamsGiven = value.Given;
        }
    }

    internal static bool WeightStreamsGiven { get; private set; } = Environment.GetEnvironmentVariable(WeightStreamsVariable)?.Trim() is "1" or "4";

    public const string WeightStreamsVariable = "BITNET_WEIGHT_STREAMS";

    private static int ReadWeightStreams()
    {
        string? text = Environment.GetEnvironmentVariable(WeightStreamsVariable)?.Trim();
        if (text == "1") return 1;
        if (text == "4") return 4;
        return DefaultWeightStreams();
    }

    /// <summary>4 on AMD CPUs of family 1Ah (Zen 5) or later and on Zen 3, else 1 (see <see cref="WeightStreams"/>).</summary>
    /// <remarks>Zen 3 (family 19h, models 00h-0Fh and 20h-5Fh; the EPYC Milan of bench/results/weight-streams-amd-epyc-zen3-2core.md):
    /// the 2B4T shape end to end, 8 alternating pairs, four streams 12.11 tok/s against 11.02 on one thread (faster in 8 of
    /// 8 pairs) and 19.54 against 18.55 on two (5 of 8); `quick-decode` from memory 11.4 against 9.4 GB/s. Zen 4 (models
    /// 10h-1Fh, 60h-7Fh, A0h-AFh) stays at 1: its probe read four streams slower (21.4 against 25.9 GB/s); Zen 2 too
    /// (15.5 against 16.4 GB/s in quick-decode).</remarks>
    public static int DefaultWeightStreams() => AmdFamily() >= 0x1A || IsZen3(AmdFamily(), AmdModel()) ? 4 : 1;

    /// <summary>Whether an AMD family 19h CPU of model <paramref name="model"/> is a Zen 3 (the others of the family are Zen 4).</summary>
    public static bool IsZen3(int family, int model) => family == 0x19 && model is (>= 0x00 and <= 0x0F) or (>= 0x20 and <= 0x5F);

    /// <summary>The CPU model of an AMD x86 CPU (extended model included), or −1 for any other CPU.</summary>
    public static int AmdModel()
    {
        if (AmdFamily() < 0) return -1;
        int eax = System.Runtime.Intrinsics.X86.X86Base.CpuId(1, 0).Eax;
        int model = (eax >> 4) & 0xF;
        if (((eax >> 8) & 0xF) == 0xF) model |= ((eax >> 16) & 0xF) << 4;
        return model;
    }

    /// <summary>The CPU family of an AMD x86 CPU (0x19 Zen 3/4, 0x1A Zen 5), or −1 for any other CPU: the defaults
    /// measured on one family apply to it and its successors only.</summary>
    public static int AmdFamily()
    {
        if (!System.Runtime.Intrinsics.X86.X86Base.IsSupported) return -1;
        var (_, ebx, ecx, edx) = System.Runtime.Intrinsics.X86.X86Base.CpuId(0, 0);
        bool amd = ebx == 0x68747541 && edx == 0x69746E65 && ecx == 0x444D4163; // "AuthenticAMD"
        if (!amd) return -1;
        int eax = System.Runtime.Intrinsics.X86.X86Base.CpuId(1, 0).Eax;
        int family = (eax >> 8) & 0xF;
        if (family == 0xF) family += (eax >> 20) & 0xFF;
        return family;
    }

    /// <summary>
    /// Whether this is an Intel x86 CPU with AVX-512 VBMI: Ice Lake and its successors (Skylake-X lacks VBMI), whose
    /// 512-bit <c>vpermw</c> is one operation; the lookup kernel's defaults here were measured on Ice Lake-SP.
    /// </summary>
    public static bool IsIntelWithVbmi() => System.Runtime.Intrinsics.X86.Avx512Vbmi.IsSupported && IsIntel();

    /// <summary>Whether this is an Intel x86 CPU ("GenuineIntel").</summary>
    public static bool IsIntel()
    {
        if (!System.Runtime.Intrinsics.X86.X86Base.IsSupported) return false;
        var (_, ebx, ecx, edx) = System.Runtime.Intrinsics.X86.X86Base.CpuId(0, 0);
        return ebx == 0x756E6547 && edx == 0x49656E69 && ecx == 0x6C65746E; // "GenuineIntel"
    }

    /// <summary>The name BITNET_KERNEL selects it by.</summary>
    public abstract string Name { get; }

    /// <summary>Whether this CPU (and runtime) can execute it.</summary>
    public abstract bool IsSupported { get; }

    /// <summary>Rows a caller's row ranges should be whole multiples of (a variant that reads rows in blocks computes a
    /// whole block for a range that cuts one). <see cref="TernaryMatMul"/> plans its slices and chunks in these units.</summary>
    public virtual int RowAlignment => 8;

    /// <summary>
    /// Bytes of <paramref name="w"/> a product of <paramref name="tokens"/> tokens reads: the packed matrix, or the
    /// variant's own layout where it reads that (the profiler's GB/s and bench's bound count what is read).
    /// </summary>
    public virtual long BytesRead(TernaryMatrix w, int tokens) => w.ByteLength;

    /// <summary>Lays <paramref name="w"/> out as this variant reads it, ahead of the first product (a load-time repack);
    /// nothing for the variants that read <see cref="TernaryMatrix"/>'s own layout.</summary>
    public virtual void PrepareWeights(TernaryMatrix w) { }

    /// <summary>
    /// y[t·yStride + n] = Σ_k W[n,k]·x[t,k] for tokens t ∈ [0, x.Tokens) and rows n ∈ [rowStart, rowEnd).
    /// </summary>
    public void MatMul(TernaryMatrix w, QuantizedActivations x, float* y, int yStride, int rowStart, int rowEnd)
    {
        // The widths themselves: two that pad to one multiple of 128 (100 and 120) passed, the extra inputs dropped or read as 0.
        if (w.Cols != x.Cols)
            throw new ArgumentException($"Weight rows have {w.Cols} inputs but the activations have {x.Cols}.", nameof(x));
        if (!IsSupported) throw new PlatformNotSupportedException($"Ternary kernel '{Name}' is not supported on this CPU.");
        MatMul(w, Prepare(x, ref t_scratch), y, yStride, rowStart, rowEnd);
    }

    /// <summary>
    /// The same product on activations already in this variant's layout (<see cref="Prepare"/>): a caller that splits
    /// one product into many row ranges, or multiplies several matrices by the same activations, lays them out once.
    /// </summary>
    public void MatMul(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int rowStart, int rowEnd)
    {
        if (w.PaddedCols != x.Stride)
            throw new ArgumentException($"Weight rows have {w.PaddedCols} padded inputs but the activation rows have {x.Stride}.", nameof(x));
        if (rowStart < 0 || rowEnd > w.Rows || rowStart > rowEnd)
            throw new ArgumentOutOfRangeException(nameof(rowEnd), $"Row range [{rowStart}, {rowEnd}) is outside [0, {w.Rows}).");
        if (x.Tokens > 1 && yStride < rowEnd)
            throw new ArgumentOutOfRangeException(nameof(yStride), "Output rows overlap: yStride is smaller than the row range.");
        if (!IsSupported) throw new PlatformNotSupportedException($"Ternary kernel '{Name}' is not supported on this CPU.");
        MatMulCore(w, x, y, yStride, rowStart, rowEnd);
    }

    /// <summary>
    /// One token (row 0 of <paramref name="x"/>, in this variant's layout) against the rows sliceStart + k·quarter + p for
    /// k = 0..3 and p ∈ [<paramref name="from"/>, <paramref name="to"/>): part of a four-stream pass over the slice
    /// [sliceStart, sliceStart + 4·quarter), so that threads sharing out one slice's positions (<see cref="TernaryMatMul"/>
    /// with <see cref="WeightStreams"/> = 4) keep reading four long streams. y[n] is written for those rows only. The same
    /// floats as <see cref="MatMul(TernaryMatrix, in ActivationRows, float*, int, int, int)"/> (exact integer sums).
    /// </summary>
    public void MatVecQuarters(TernaryMatrix w, in ActivationRows x, float* y, int sliceStart, int quarter, int from, int to) =>
        MatVecQuarters(w, x, y, w.Rows, sliceStart, quarter, from, to);

    /// <summary>
    /// <see cref="MatVecQuarters(TernaryMatrix, in ActivationRows, float*, int, int, int, int)"/> for every token of
    /// <paramref name="x"/> (decode of two or three sequences together): y[t·<paramref name="yStride"/> + n], each four-row
    /// pass's weights unpacked once for two tokens. The same floats as <see cref="MatMul(TernaryMatrix, in ActivationRows, float*, int, int, int)"/>.
    /// </summary>
    public void MatVecQuarters(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int sliceStart, int quarter, int from, int to)
    {
        if (x.Tokens > 1 && yStride < w.Rows)
            throw new ArgumentOutOfRangeException(nameof(yStride), $"An output stride of {yStride} is less than the {w.Rows} rows of one token's outputs.");
        if (w.PaddedCols != x.Stride)
            throw new ArgumentException($"Weight rows have {w.PaddedCols} padded inputs but the activation rows have {x.Stride}.", nameof(x));
        if (x.Tokens < 1) throw new ArgumentException("No token to multiply.", nameof(x));
        if (sliceStart < 0 || quarter < 0 || (long)sliceStart + 4L * quarter > w.Rows)
            throw new ArgumentOutOfRangeException(nameof(quarter), $"Slice of four quarters of {quarter} rows from row {sliceStart} is outside [0, {w.Rows}).");
        if (from < 0 || to > quarter || from > to)
            throw new ArgumentOutOfRangeException(nameof(to), $"Positions [{from}, {to}) are outside a quarter of {quarter} rows.");
        if (!IsSupported) throw new PlatformNotSupportedException($"Ternary kernel '{Name}' is not supported on this CPU.");
        MatVecQuartersCore(w, x, y, yStride, sliceStart, quarter, from, to);
    }

    /// <summary>Variants with a four-stream row dot override this; by default each quarter's rows in one range.</summary>
    protected virtual void MatVecQuartersCore(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int sliceStart, int quarter, int from, int to)
    {
        for (int k = 0; k < 4; k++)
            MatMulCore(w, x, y, yStride, sliceStart + k * quarter + from, sliceStart + k * quarter + to);
    }

    /// <summary>
    /// Whether <see cref="TernaryMatMul"/> should split a product of <paramref name="tokens"/> tokens over threads by
    /// tokens (each thread every row for its tokens, from per-thread <see cref="PrepareTokens"/> scratch) rather than by
    /// rows: the lookup kernel's prefill, whose per-token tables each thread builds for its own tokens.
    /// </summary>
    internal virtual bool SplitsByTokens(int tokens) => false;

    /// <summary>Bytes of per-thread scratch <see cref="PrepareTokens"/> fills for <paramref name="tokens"/> tokens.</summary>
    internal virtual long TokenScratchBytes(int paddedCols, int tokens) => 0;

    /// <summary>Lays out tokens [tokenStart, tokenEnd) of <paramref name="x"/> (as <see cref="Prepare"/> returned it) into one thread's scratch.</summary>
    internal virtual void PrepareTokens(in ActivationRows x, int tokenStart, int tokenEnd, byte* scratch) { }

    /// <summary>Every row of <paramref name="w"/> for tokens [tokenStart, tokenEnd), from <see cref="PrepareTokens"/>' scratch of those tokens.</summary>
    internal virtual void MatMulTokens(TernaryMatrix w, in ActivationRows x, byte* scratch, float* y, int yStride, int tokenStart, int tokenEnd) =>
        throw new NotSupportedException($"Kernel '{Name}' does not split products by tokens.");

    /// <summary>
    /// The activation rows as this variant reads them: <paramref name="x"/>'s own rows, or (for variants that read
    /// another order, such as AVX-512's pair interleave) a copy in <paramref name="scratch"/>, which is grown as
    /// needed and stays the caller's. The result is valid until the scratch is next used or <paramref name="x"/> changes.
    /// </summary>
    public virtual ActivationRows Prepare(QuantizedActivations x, ref Memory.NativeBuffer? scratch) => ActivationRows.Of(x);

    /// <summary>Scratch for the activation copies of <see cref="MatMul(TernaryMatrix, QuantizedActivations, float*, int, int, int)"/>.</summary>
    [ThreadStatic] private static Memory.NativeBuffer? t_scratch;

    protected abstract void MatMulCore(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int rowStart, int rowEnd);

    /// <summary>The shared epilogue (FORMATS.md §2.6): integer dot first, then ÷ s_x, then × weight scale, in fp32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Epilogue(int codeDot, int activationSum, float activationScale, float weightScale) =>
        (float)(codeDot - activationSum) / activationScale * weightScale;

    public override string ToString() => Name;
}

/// <summary>An instruction-set-specific inner product of one packed ternary row with int8 activations.
/// Static abstract members let <see cref="TernaryDriver"/> be specialized per variant by the JIT (no virtual
/// call per row).</summary>
public unsafe interface ITernaryRowDot
{
    /// <summary>Σ c·q over <paramref name="blocks"/> 128-weight blocks.</summary>
    static abstract int Dot(byte* w, sbyte* q, int blocks);

    /// <summary>Four tokens against one row: each weight block is unpacked once and used four times.</summary>
    static abstract void Dot4(byte* w, sbyte* q0, sbyte* q1, sbyte* q2, sbyte* q3, int blocks, int* result);
}

/// <summary>
/// A row dot that can also take two rows against four tokens at once: each token's activations are loaded once
/// for both rows (halving activation loads per multiply, the other co-bottleneck of the compute-bound mat-mat).
/// </summary>
public unsafe interface ITernaryRowPairDot : ITernaryRowDot
{
    /// <summary>result[2j + r] = Σ c·q for row r ∈ {0, 1} (<paramref name="w0"/>, <paramref name="w1"/>) and token j:
    /// the two rows of a token side by side, as they are stored in the output.</summary>
    static abstract void Dot2x4(byte* w0, byte* w1, sbyte* q0, sbyte* q1, sbyte* q2, sbyte* q3, int blocks, int* result);

    /// <summary>result[r] = Σ c·q for the eight consecutive rows at <paramref name="w"/> + r·<paramref name="rowBytes"/>
    /// and one token (decode's mat-vec).</summary>
    static abstract void DotRows8(byte* w, long rowBytes, sbyte* q, int blocks, int* result);

    /// <summary><see cref="DotRows8"/> for two tokens, each weight unpacked once: result[r] with <paramref name="q0"/>,
    /// result[8 + r] with <paramref name="q1"/>.</summary>
    static abstract void DotRows8x2(byte* w, long rowBytes, sbyte* q0, sbyte* q1, int blocks, int* result);

    /// <summary>result[k] = Σ c·q for the four rows at <paramref name="w"/> + k·<paramref name="streamBytes"/> and one
    /// token, read side by side (four memory streams; each activation vector loaded once for the four rows).</summary>
    static abstract void DotRows4Streams(byte* w, long streamBytes, sbyte* q, int blocks, int* result);

    /// <summary><see cref="DotRows4Streams"/> for two tokens, each weight unpacked once for both: result[k] with
    /// <paramref name="q0"/>, result[4 + k] with <paramref name="q1"/> (two or three sequences decoding together).</summary>
    static abstract void DotRows4Streams2(byte* w, long streamBytes, sbyte* q0, sbyte* q1, int blocks, int* result);

    /// <summary>Whether <see cref="DotRows8x3"/> is implemented (else three tokens run as two, then one).</summary>
    static virtual bool HasDotRows8x3 => false;

    /// <summary><see cref="DotRows8"/> for three tokens, each weight unpacked once for all three: result[r], result[8 + r]
    /// and result[16 + r] with <paramref name="q0"/>, <paramref name="q1"/> and <paramref name="q2"/> (three sequences
    /// decoding together, one weight stream).</summary>
    static virtual void DotRows8x3(byte* w, long rowBytes, sbyte* q0, sbyte* q1, sbyte* q2, int blocks, int* result) =>
        throw new NotSupportedException("This row dot has no three-token form; check HasDotRows8x3.");
}

/// <summary>Int8 activation rows as the kernels read them: a base pointer and a row stride, so a variant may
/// hand the driver a re-ordered copy (see <see cref="Avx512TernaryKernel"/>) instead of the original rows.</summary>
/// <param name="cols">The activations' own width (<see cref="QuantizedActivations.Cols"/>), which the weights' must equal; 0
/// where unknown, and then only the padded widths (<paramref name="stride"/>) are compared.</param>
public readonly unsafe struct ActivationRows(sbyte* codes, int stride, int tokens, float[] scales, int[] sums, int cols = 0)
{
    public int Cols { get; } = cols;
    public sbyte* Codes { get; } = codes;
    public int Stride { get; } = stride;
    public int Tokens { get; } = tokens;
    public float[] Scales { get; } = scales;
    public int[] Sums { get; } = sums;

    public sbyte* Row(int t) => Codes + (long)t * Stride;

    public static ActivationRows Of(QuantizedActivations x) => new(x.Row(0), x.PaddedCols, x.Tokens, x.Scales, x.Sums, x.Cols);

    /// <summary>Refuses weights of another width: widths that pad alike (100 and 120) passed the stride check, the extra inputs dropped or read as 0.</summary>
    /// <param name="product">The product's index among several (RunMany), or −1 for one; the message is built only on failure (per step, no allocation).</param>
    internal void CheckWidth(int weightCols, int product = -1)
    {
        if (Cols > 0 && Cols != weightCols)
            throw new ArgumentException($"Weight rows{(product >= 0 ? $" of product {product}" : "")} have {weightCols} inputs but the activations have {Cols}.", "x");
    }
}

/// <summary>The loops around a row dot: row blocks × token tiles × rows, and the epilogue.</summary>
public static unsafe class TernaryDriver
{
    /// <summary>
    /// Rows per block in the mat-mat loop (256 rows of a 2560-wide matrix = 160 KiB of weights, in L2; a 4-token tile,
    /// 10 KiB, stays in L1 while they are swept). Measured against 16-row blocks (weights in L1, each tile re-read from
    /// L2), one thread, both builds in one process: +2–5 % at 64 tokens, +1–10 % at 8 tokens.
    /// </summary>
    public const int RowBlock = 256;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run<TDot>(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int rowStart, int rowEnd)
        where TDot : ITernaryRowDot
    {
        int blocks = w.PaddedCols / TernaryMatrix.BlockSize;
        int tokens = x.Tokens;
        float[] rowScales = w.RowScales;
        float[] xs = x.Scales;
        int[] sums = x.Sums;
        int* d = stackalloc int[4];
        int fullTiles = tokens / 4 * 4;
        // Rows in blocks, token tiles inside: a 4-token tile of activations (4·K bytes) stays in L1 while the block's
        // rows (RowBlock·K/4 bytes, in L2) are swept, instead of every row re-reading all T tokens from L2 (which
        // bounded prefill). Weights of a block are read from memory once and re-read from L2 for each tile.
        for (int block = rowStart; block < rowEnd; block += RowBlock)
        {
            int blockEnd = Math.Min(rowEnd, block + RowBlock);
            for (int t = 0; t < fullTiles; t += 4)
            {
                sbyte* q0 = x.Row(t), q1 = x.Row(t + 1), q2 = x.Row(t + 2), q3 = x.Row(t + 3);
                for (int n = block; n < blockEnd; n++)
                {
                    TDot.Dot4(w.Row(n), q0, q1, q2, q3, blocks, d);
                    float scale = rowScales[n];
                    for (int j = 0; j < 4; j++)
                        y[(long)(t + j) * yStride + n] = TernaryKernel.Epilogue(d[j], sums[t + j], xs[t + j], scale);
                }
            }
            for (int t = fullTiles; t < tokens; t++)
            {
                sbyte* q = x.Row(t);
                for (int n = block; n < blockEnd; n++)
                    y[(long)t * yStride + n] = TernaryKernel.Epilogue(TDot.Dot(w.Row(n), q, blocks), sums[t], xs[t], rowScales[n]);
            }
        }
    }

    public static void Run<TDot>(TernaryMatrix w, QuantizedActivations x, float* y, int yStride, int rowStart, int rowEnd)
        where TDot : ITernaryRowDot => Run<TDot>(w, ActivationRows.Of(x), y, yStride, rowStart, rowEnd);

    /// <summary><see cref="Run{TDot}(TernaryMatrix, in ActivationRows, float*, int, int, int)"/> with 4-token tiles taken two rows at a time.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RunPairs<TDot>(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int rowStart, int rowEnd)
        where TDot : ITernaryRowPairDot
    {
        int tokens = x.Tokens;
        if (tokens < 4)
        {
            RunRows8<TDot>(w, x, y, yStride, rowStart, rowEnd);
            return;
        }
        int blocks = w.PaddedCols / TernaryMatrix.BlockSize;
        float[] rowScales = w.RowScales;
        float[] xs = x.Scales;
        int[] sums = x.Sums;
        int* d = stackalloc int[24]; // SingleTokens: three tokens' eight rows
        int fullTiles = tokens / 4 * 4;
        for (int block = rowStart; block < rowEnd; block += RowBlock)
        {
            int blockEnd = Math.Min(rowEnd, block + RowBlock);
            for (int t = 0; t < fullTiles; t += 4)
            {
                sbyte* q0 = x.Row(t), q1 = x.Row(t + 1), q2 = x.Row(t + 2), q3 = x.Row(t + 3);
                // The epilogue of a row pair in eight lanes ordered as Dot2x4's results (token-major, the pair's two
                // rows side by side): the same int subtraction, conversion, division and multiplication per lane as
                // TernaryKernel.Epilogue, so the same floats; each token's two outputs go out as one 8-byte store.
                var tileSums = Vector256.Create(sums[t], sums[t], sums[t + 1], sums[t + 1], sums[t + 2], sums[t + 2], sums[t + 3], sums[t + 3]);
                var tileScales = Vector256.Create(xs[t], xs[t], xs[t + 1], xs[t + 1], xs[t + 2], xs[t + 2], xs[t + 3], xs[t + 3]);
                float* y0 = y + (long)t * yStride, y1 = y0 + yStride, y2 = y1 + yStride, y3 = y2 + yStride;
                int n = block;
                for (; n + 2 <= blockEnd; n += 2)
                {
                    TDot.Dot2x4(w.Row(n), w.Row(n + 1), q0, q1, q2, q3, blocks, d);
                    var rowPair = Vector256.Create(Vector64.Create(rowScales[n], rowScales[n + 1]).AsInt64().ToScalar()).AsSingle();
                    var outputs = (Vector256.ConvertToSingle(Vector256.Load(d) - tileSums) / tileScales * rowPair).AsInt64();
                    *(long*)(y0 + n) = outputs.GetElement(0);
                    *(long*)(y1 + n) = outputs.GetElement(1);
                    *(long*)(y2 + n) = outputs.GetElement(2);
                    *(long*)(y3 + n) = outputs.GetElement(3);
                }
                if (n < blockEnd)
                {
                    TDot.Dot4(w.Row(n), q0, q1, q2, q3, blocks, d);
                    for (int j = 0; j < 4; j++)
                        y[(long)(t + j) * yStride + n] = TernaryKernel.Epilogue(d[j], sums[t + j], xs[t + j], rowScales[n]);
                }
            }
            SingleTokens<TDot>(w, x, fullTiles, y, yStride, block, blockEnd, d);
        }
    }

    /// <summary>Fewer than four tokens (decode): each token against the rows eight at a time (<see cref="OneToken{TDot}"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RunRows8<TDot>(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int rowStart, int rowEnd)
        where TDot : ITernaryRowPairDot
    {
        int* d = stackalloc int[24]; // SingleTokens: three tokens' eight rows
        if (x.Tokens == 1)
        {
            // One token: the whole range in one call, so that four weight streams span it (not one row block).
            OneToken<TDot>(w, x.Row(0), x.Sums[0], x.Scales[0], y, rowStart, rowEnd, d);
            return;
        }
        if (TernaryKernel.WeightStreams == 4 && rowEnd - rowStart >= 4 * StreamMinRows)
        {
            // As one token: a row from each quarter of the range per pass, every token against those four rows (pairs
            // of tokens sharing each weight's unpacking), then the rows past the last full quarter in blocks below.
            // One thread, 2B4T shape (Zen 5 EPYC, `bench -s 2,3 -t 1`): 30 -> 41-43 tok/s at two sequences, 33-35 -> 40-43
            // at three, against the blocks with eight consecutive rows per pass.
            int quarter = (rowEnd - rowStart) / 4;
            fixed (float* scales = w.RowScales)
                QuarterRowsTokens<TDot>(w, x, y, yStride, scales, rowStart, quarter, 0, quarter, d);
            rowStart += 4 * quarter;
        }
        // Rows in blocks, tokens inside (as Run): with two or three tokens a block's weights come from memory once
        // and from L2 for the other tokens; two tokens at a time share each weight's unpacking.
        for (int block = rowStart; block < rowEnd; block += RowBlock)
        {
            int blockEnd = Math.Min(rowEnd, block + RowBlock);
            SingleTokens<TDot>(w, x, 0, y, yStride, block, blockEnd, d);
        }
    }

    /// <summary>Tokens [<paramref name="firstToken"/>, x.Tokens) against rows [rowStart, rowEnd) by the mat-vec path: two
    /// at a time, then the last one alone. <paramref name="d"/>: sixteen ints of scratch.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SingleTokens<TDot>(TernaryMatrix w, in ActivationRows x, int firstToken, float* y, int yStride, int rowStart, int rowEnd, int* d)
        where TDot : ITernaryRowPairDot
    {
        int t = firstToken;
        if (TDot.HasDotRows8x3 && x.Tokens - t == 3)
        {
            ThreeTokens<TDot>(w, x, t, y + (long)t * yStride, yStride, rowStart, rowEnd, d);
            return;
        }
        for (; t + 2 <= x.Tokens; t += 2)
            TwoTokens<TDot>(w, x, t, y + (long)t * yStride, yStride, rowStart, rowEnd, d);
        if (t < x.Tokens)
            OneToken<TDot>(w, x.Row(t), x.Sums[t], x.Scales[t], y + (long)t * yStride, rowStart, rowEnd, d);
    }

    /// <summary>Tokens <paramref name="t"/> and t + 1 against rows [<paramref name="rowStart"/>, <paramref name="rowEnd"/>),
    /// eight at a time with <see cref="ITernaryRowPairDot.DotRows8x2"/>, then each token's epilogue on eight lanes. Not
    /// inlined, as <see cref="OneToken{TDot}"/>.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void TwoTokens<TDot>(TernaryMatrix w, in ActivationRows x, int t, float* y0, int yStride, int rowStart, int rowEnd, int* d)
        where TDot : ITernaryRowPairDot
    {
        int blocks = w.PaddedCols / TernaryMatrix.BlockSize;
        long rowBytes = w.RowBytes;
        sbyte* q0 = x.Row(t), q1 = x.Row(t + 1);
        int sum0 = x.Sums[t], sum1 = x.Sums[t + 1];
        float scale0 = x.Scales[t], scale1 = x.Scales[t + 1];
        var sums0 = Vector256.Create(sum0);
        var sums1 = Vector256.Create(sum1);
        var activationScale0 = Vector256.Create(scale0);
        var activationScale1 = Vector256.Create(scale1);
        float* y1 = y0 + yStride;
        int n = rowStart;
        fixed (float* scales = w.RowScales)
        {
            for (; n + 8 <= rowEnd; n += 8)
            {
                TDot.DotRows8x2(w.Row(n), rowBytes, q0, q1, blocks, d);
                var rowScale = Vector256.Load(scales + n);
                (Vector256.ConvertToSingle(Vector256.Load(d) - sums0) / activationScale0 * rowScale).Store(y0 + n);
                (Vector256.ConvertToSingle(Vector256.Load(d + 8) - sums1) / activationScale1 * rowScale).Store(y1 + n);
            }
            for (; n < rowEnd; n++)
            {
                y0[n] = TernaryKernel.Epilogue(TDot.Dot(w.Row(n), q0, blocks), sum0, scale0, scales[n]);
                y1[n] = TernaryKernel.Epilogue(TDot.Dot(w.Row(n), q1, blocks), sum1, scale1, scales[n]);
            }
        }
    }

    /// <summary>Tokens <paramref name="t"/> to t + 2 against rows [<paramref name="rowStart"/>, <paramref name="rowEnd"/>),
    /// eight at a time with <see cref="ITernaryRowPairDot.DotRows8x3"/> (each weight unpacked once for the three, where two
    /// and then one unpacked it twice), then each token's epilogue on eight lanes. <paramref name="d"/>: 24 ints.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void ThreeTokens<TDot>(TernaryMatrix w, in ActivationRows x, int t, float* y0, int yStride, int rowStart, int rowEnd, int* d)
        where TDot : ITernaryRowPairDot
    {
        int blocks = w.PaddedCols / TernaryMatrix.BlockSize;
        long rowBytes = w.RowBytes;
        sbyte* q0 = x.Row(t), q1 = x.Row(t + 1), q2 = x.Row(t + 2);
        int sum0 = x.Sums[t], sum1 = x.Sums[t + 1], sum2 = x.Sums[t + 2];
        float scale0 = x.Scales[t], scale1 = x.Scales[t + 1], scale2 = x.Scales[t + 2];
        var sums0 = Vector256.Create(sum0);
        var sums1 = Vector256.Create(sum1);
        var sums2 = Vector256.Create(sum2);
        var activationScale0 = Vector256.Create(scale0);
        var activationScale1 = Vector256.Create(scale1);
        var activationScale2 = Vector256.Create(scale2);
        float* y1 = y0 + yStride, y2 = y1 + yStride;
        int n = rowStart;
        fixed (float* scales = w.RowScales)
        {
            for (; n + 8 <= rowEnd; n += 8)
            {
                TDot.DotRows8x3(w.Row(n), rowBytes, q0, q1, q2, blocks, d);
                var rowScale = Vector256.Load(scales + n);
                (Vector256.ConvertToSingle(Vector256.Load(d) - sums0) / activationScale0 * rowScale).Store(y0 + n);
                (Vector256.ConvertToSingle(Vector256.Load(d + 8) - sums1) / activationScale1 * rowScale).Store(y1 + n);
                (Vector256.ConvertToSingle(Vector256.Load(d + 16) - sums2) / activationScale2 * rowScale).Store(y2 + n);
            }
            for (; n < rowEnd; n++)
            {
                y0[n] = TernaryKernel.Epilogue(TDot.Dot(w.Row(n), q0, blocks), sum0, scale0, scales[n]);
                y1[n] = TernaryKernel.Epilogue(TDot.Dot(w.Row(n), q1, blocks), sum1, scale1, scales[n]);
                y2[n] = TernaryKernel.Epilogue(TDot.Dot(w.Row(n), q2, blocks), sum2, scale2, scales[n]);
            }
        }
    }

    /// <summary>Fewest rows per stream for <see cref="OneToken{TDot}"/> to read four streams (below it, one).</summary>
    private const int StreamMinRows = 8;

    /// <summary>One token against rows [<paramref name="rowStart"/>, <paramref name="rowEnd"/>): with
    /// <see cref="TernaryKernel.WeightStreams"/> = 4, four rows at a time from the range's four quarters
    /// (<see cref="ITernaryRowPairDot.DotRows4Streams"/>); otherwise, and for the rows left over, eight consecutive rows
    /// at a time (<see cref="ITernaryRowPairDot.DotRows8"/>), then <see cref="TernaryKernel.Epilogue"/>'s operations on
    /// four or eight lanes (the same floats), the last few one by one. <paramref name="d"/>: eight ints of scratch.
    /// <para>Compiled on its own, not inlined into the drivers: inlined there (with the eight-row dot's eight loops, the
    /// two-token path and the prefill tiles) it exhausted the JIT's inlining budget for the caller, which then called
    /// <c>Vector256.Load</c>/<c>Store</c>, <c>TernaryMatrix.Row</c> and the lane reduction as functions (vectors passed
    /// through memory). One call per 256-row block costs nothing. Bench `quick-decode` (one process, Zen 4): the AVX-512
    /// kernels' decode from memory went from 0.88–0.97 of a plain sum to 0.98–1.03, level with the same loop driven
    /// from the benchmark's own (smaller) instantiation.</para></summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void OneToken<TDot>(TernaryMatrix w, sbyte* q, int sum, float scale, float* yt, int rowStart, int rowEnd, int* d)
        where TDot : ITernaryRowPairDot
    {
        int blocks = w.PaddedCols / TernaryMatrix.BlockSize;
        long rowBytes = w.RowBytes;
        float[] rowScales = w.RowScales;
        var sums = Vector256.Create(sum);
        var activationScale = Vector256.Create(scale);
        int n = rowStart;
        fixed (float* scales = rowScales)
        {
            if (TernaryKernel.WeightStreams == 4 && rowEnd - rowStart >= 4 * StreamMinRows)
            {
                // One row from each quarter of the range per pass, four far-apart streams. The rows past the last full
                // quarter follow.
                int quarter = (rowEnd - rowStart) / 4;
                QuarterRows<TDot>(w, q, sum, scale, yt, scales, rowStart, quarter, 0, quarter, d);
                n = rowStart + 4 * quarter;
            }
            for (; n + 8 <= rowEnd; n += 8)
            {
                TDot.DotRows8(w.Row(n), rowBytes, q, blocks, d);
                (Vector256.ConvertToSingle(Vector256.Load(d) - sums) / activationScale * Vector256.Load(scales + n)).Store(yt + n);
            }
            for (; n < rowEnd; n++)
                yt[n] = TernaryKernel.Epilogue(TDot.Dot(w.Row(n), q, blocks), sum, scale, scales[n]);
        }
    }

    /// <summary>One token against the rows at positions [<paramref name="from"/>, <paramref name="to"/>) of each quarter of
    /// [<paramref name="sliceStart"/>, sliceStart + 4·<paramref name="quarter"/>): row sliceStart + k·quarter + p for k = 0..3,
    /// four far-apart streams read side by side (<see cref="ITernaryRowPairDot.DotRows4Streams"/>), then the epilogue on
    /// four lanes (the same operations as <see cref="TernaryKernel.Epilogue"/>, so the same floats).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void QuarterRows<TDot>(TernaryMatrix w, sbyte* q, int sum, float scale, float* yt, float* scales, int sliceStart, int quarter, int from, int to, int* d)
        where TDot : ITernaryRowPairDot
    {
        int blocks = w.PaddedCols / TernaryMatrix.BlockSize;
        long streamBytes = quarter * w.RowBytes;
        var sums4 = Vector128.Create(sum);
        var activationScale4 = Vector128.Create(scale);
        for (int r = sliceStart + from; r < sliceStart + to; r++)
        {
            TDot.DotRows4Streams(w.Row(r), streamBytes, q, blocks, d);
            int r1 = r + quarter, r2 = r1 + quarter, r3 = r2 + quarter;
            var outputs = Vector128.ConvertToSingle(Vector128.Load(d) - sums4) / activationScale4 * Vector128.Create(scales[r], scales[r1], scales[r2], scales[r3]);
            yt[r] = outputs.GetElement(0); yt[r1] = outputs.GetElement(1); yt[r2] = outputs.GetElement(2); yt[r3] = outputs.GetElement(3);
        }
    }

    /// <summary><see cref="TernaryKernel.MatVecQuarters(TernaryMatrix, in ActivationRows, float*, int, int, int, int, int)"/>
    /// for a row-pair dot: every token of <paramref name="x"/> against positions [from, to) of the slice's four quarters.
    /// Not inlined, as <see cref="OneToken{TDot}"/>.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    public static void Quarters<TDot>(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int sliceStart, int quarter, int from, int to)
        where TDot : ITernaryRowPairDot
    {
        int* d = stackalloc int[8];
        fixed (float* scales = w.RowScales)
        {
            if (x.Tokens == 1) QuarterRows<TDot>(w, x.Row(0), x.Sums[0], x.Scales[0], y, scales, sliceStart, quarter, from, to, d);
            else QuarterRowsTokens<TDot>(w, x, y, yStride, scales, sliceStart, quarter, from, to, d);
        }
    }

    /// <summary>
    /// <see cref="QuarterRows{TDot}"/> for several tokens: per position, tokens in pairs against the four rows
    /// (<see cref="ITernaryRowPairDot.DotRows4Streams2"/>: each weight vector unpacked once for the pair), an odd last token
    /// alone (<see cref="ITernaryRowPairDot.DotRows4Streams"/>, its rows then in L1), each followed by the epilogue on four
    /// lanes. The weights stream from memory once however many tokens there are.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void QuarterRowsTokens<TDot>(TernaryMatrix w, in ActivationRows x, float* y, int yStride, float* scales, int sliceStart, int quarter, int from, int to, int* d)
        where TDot : ITernaryRowPairDot
    {
        int blocks = w.PaddedCols / TernaryMatrix.BlockSize, tokens = x.Tokens;
        long streamBytes = quarter * w.RowBytes;
        for (int r = sliceStart + from; r < sliceStart + to; r++)
        {
            int r1 = r + quarter, r2 = r1 + quarter, r3 = r2 + quarter;
            var rowScales = Vector128.Create(scales[r], scales[r1], scales[r2], scales[r3]);
            byte* row = w.Row(r);
            int t = 0;
            for (; t + 2 <= tokens; t += 2)
            {
                TDot.DotRows4Streams2(row, streamBytes, x.Row(t), x.Row(t + 1), blocks, d);
                Store4(Vector128.ConvertToSingle(Vector128.Load(d) - Vector128.Create(x.Sums[t])) / Vector128.Create(x.Scales[t]) * rowScales, y + (long)t * yStride, r, r1, r2, r3);
                Store4(Vector128.ConvertToSingle(Vector128.Load(d + 4) - Vector128.Create(x.Sums[t + 1])) / Vector128.Create(x.Scales[t + 1]) * rowScales, y + (long)(t + 1) * yStride, r, r1, r2, r3);
            }
            if (t < tokens)
            {
                TDot.DotRows4Streams(row, streamBytes, x.Row(t), blocks, d);
                Store4(Vector128.ConvertToSingle(Vector128.Load(d) - Vector128.Create(x.Sums[t])) / Vector128.Create(x.Scales[t]) * rowScales, y + (long)t * yStride, r, r1, r2, r3);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store4(Vector128<float> outputs, float* yt, int r0, int r1, int r2, int r3)
    {
        yt[r0] = outputs.GetElement(0); yt[r1] = outputs.GetElement(1); yt[r2] = outputs.GetElement(2); yt[r3] = outputs.GetElement(3);
    }
}

/// <summary>The portable scalar reference: one weight byte holds four codes for activations p, p+32, p+64, p+96.</summary>
public sealed unsafe class ReferenceTernaryKernel : TernaryKernel
{
    public override string Name => "reference";
    public override bool IsSupported => true;

    protected override void MatMulCore(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int rowStart, int rowEnd) =>
        TernaryDriver.Run<ScalarDot>(w, x, y, yStride, rowStart, rowEnd);

    public readonly struct ScalarDot : ITernaryRowDot
    {
        public static int Dot(byte* w, sbyte* q, int blocks)
        {
            int d = 0;
            for (int b = 0; b < blocks; b++, w += 32, q += 128)
            {
                for (int p = 0; p < 32; p++)
                {
                    int v = w[p];
                    d += (v >> 6) * q[p] + ((v >> 4) & 3) * q[p + 32] + ((v >> 2) & 3) * q[p + 64] + (v & 3) * q[p + 96];
                }
            }
            return d;
        }

        public static void Dot4(byte* w, sbyte* q0, sbyte* q1, sbyte* q2, sbyte* q3, int blocks, int* result)
        {
            result[0] = Dot(w, q0, blocks);
            result[1] = Dot(w, q1, blocks);
            result[2] = Dot(w, q2, blocks);
            result[3] = Dot(w, q3, blocks);
        }
    }
}
