using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using BitNetSharp.Memory;
using BitNetSharp.Quantization;

namespace BitNetSharp.Kernels;

/// <summary>
/// Ternary products by table lookup (the T-MAC idea, with exact 16-bit tables): three ternary weights take one of 27
/// values, so for each triple of activations (x₀, x₁, x₂) a table of the 27 sums Σ tₘ·xₘ is built once per token, and
/// the weights are stored as 5-bit indices into those tables. AVX-512BW's <c>vpermw</c> looks up 32 indices at once in a
/// 32-entry table of int16 held in one register, so 32 rows' indices for the same triple are one lookup.
/// <para>
/// Layout (<see cref="Packed"/>, repacked from <see cref="TernaryMatrix"/> at load): rows in blocks of
/// <see cref="BlockRows"/> = 32; per block, word g of every row side by side (64 bytes: 32 rows × 16 bits), g = 0 ..
/// <see cref="WordsPerRow"/> − 1. Word g of a row holds the indices of triples 3g, 3g+1, 3g+2 in bits 0–4, 5–9 and 10–14;
/// triple j covers weights 3j .. 3j+2, index = Σ_d (t_{3j+d} + 1)·3^d. Nine weights per 16 bits: 1.78 bits a weight
/// against the 2 of <see cref="TernaryMatrix"/>. <c>vpermw</c> reads only the low 5 bits of each index, so a word needs
/// two shifts and no masks: per 64 bytes (288 weights of 32 rows), one load, two shifts, three lookups and three adds,
/// where the int8 kernels spend 13 operations on 256 weights.
/// </para>
/// <para>
/// Sums are exact: a table entry is at most 3·128 in magnitude, a step adds three, and the int16 sums are widened to
/// int32 every <see cref="Int16Steps"/> steps; the epilogue is <see cref="TernaryKernel.Epilogue"/> on Σ t·q, so the floats are
/// those of every other variant.
/// </para>
/// </summary>
public sealed unsafe class LutTernaryKernel : TernaryKernel
{
    /// <param name="lookupPrefill">Products of more than <see cref="MaxLookupTokens"/> tokens by lookup too (see <see cref="LookupPrefill"/>).</param>
    public LutTernaryKernel(bool lookupPrefill = false) => LookupPrefill = lookupPrefill;

    /// <summary>
    /// Whether products of more than <see cref="MaxLookupTokens"/> tokens (prefill, four or more sequences decoding
    /// together) are computed by lookup too, rather than by the int8 tiles: split over threads by tokens, each thread
    /// building the tables of its own tokens (<see cref="TernaryMatMul"/>) and sweeping every block for one token at a time,
    /// so that token's tables stay in L1 while the blocks come from L2. For models small enough that every matrix's lookup
    /// layout sits in L2 — the ones <see cref="KernelRegistry.ForModel"/> gives this kernel by default.
    /// </summary>
    public bool LookupPrefill { get; }

    public override string Name => "avx512lut";
    public override bool IsSupported => Avx512BW.IsSupported;

    /// <summary>Rows per block of the packed layout (one 512-bit vector of 16-bit indices).</summary>
    public const int BlockRows = 32;

    /// <summary>Steps (words) accumulated in int16 before widening: 3 lookups × 384 × 28 = 32,256 ≤ 32,767.</summary>
    private const int Int16Steps = 28;

    /// <summary>Entries per triple's table (27 used, 5 zero): one 512-bit vector of int16.</summary>
    private const int TableEntries = 32;

    /// <summary>16-bit words per row: ⌈K/9⌉ for K padded to 128.</summary>
    public static int WordsPerRow(int paddedCols) => (paddedCols + 8) / 9;

    /// <summary>Bytes of one token's tables: three tables of 64 bytes per word.</summary>
    public static long TableBytes(int paddedCols) => (long)WordsPerRow(paddedCols) * 3 * TableEntries * sizeof(short);

    public override int RowAlignment => BlockRows;

    /// <summary>
    /// Most tokens a product takes by lookup from tables laid out by <see cref="Prepare"/> (decode of one to three sequences,
    /// short speculative checks). More tokens are prefill: by lookup with the tables built per thread (<see cref="LookupPrefill"/>,
    /// small models), else tiles of the int8 kernel on <see cref="TernaryMatrix"/>'s own layout, each unpacked weight reused
    /// for every token — for large models, where by lookup each token reads its own tables (55–147 KB each on the 2B4T
    /// shape) for every block: `bench --synthetic large -p 64` ran 298–305 tok/s against 432–519.
    /// </summary>
    public const int MaxLookupTokens = 3;

    /// <summary>Decode (and prefill by lookup) reads the repacked layout, 2 bytes per 9 weights; prefill on the tiles the packed matrix.</summary>
    public override long BytesRead(TernaryMatrix w, int tokens) => tokens <= MaxLookupTokens || LookupPrefill ? Layout(w).ByteLength : w.ByteLength;

    /// <summary>The int8 kernel for prefill tiles (AVX-512, GFNI when the CPU has it).</summary>
    private static TernaryKernel Tiles => s_tiles ??= Gfni.V512.IsSupported ? new Avx512GfniTernaryKernel() : new Avx512TernaryKernel();

    private static TernaryKernel? s_tiles;

    /// <summary>A matrix in the lookup layout (see the class summary); owned by its <see cref="TernaryMatrix"/>.</summary>
    public sealed class Packed : IDisposable
    {
        private readonly NativeBuffer _buffer;

        internal Packed(NativeBuffer buffer, int blocks, int words)
        {
            _buffer = buffer;
            Blocks = blocks;
            Words = words;
        }

        public int Blocks { get; }
        public int Words { get; }
        public short* Data => (short*)_buffer.Pointer;
        public long ByteLength => _buffer.ByteLength;
        public short* Block(int block) => Data + (long)block * Words * BlockRows;
        public void Dispose() => _buffer.Dispose();
    }

    private static readonly object s_packLock = new();

    /// <summary><paramref name="w"/> in the lookup layout, repacked on first use and kept with the matrix.</summary>
    public static Packed Layout(TernaryMatrix w)
    {
        if (w.KernelLayout is Packed p) return p;
        lock (s_packLock)
        {
            if (w.KernelLayout is Packed q) return q;
            var packed = Pack(w);
            w.KernelLayout = packed;
            return packed;
        }
    }

    public override void PrepareWeights(TernaryMatrix w) => Layout(w);

    /// <summary>Repacks <paramref name="w"/> (exact: every weight keeps its value; padding is zero weights).</summary>
    public static Packed Pack(TernaryMatrix w)
    {
        int words = WordsPerRow(w.PaddedCols), blocks = (w.Rows + BlockRows - 1) / BlockRows;
        var buffer = new NativeBuffer((long)blocks * words * BlockRows * sizeof(short), zero: false);
        var packed = new Packed(buffer, blocks, words);
        int padded = w.PaddedCols;
        Parallel.For(0, blocks, () => new byte[words * 9], (b, _, codes) =>
        {
            short* dst = packed.Block(b);
            for (int i = 0; i < BlockRows; i++)
            {
                int row = b * BlockRows + i;
                if (row < w.Rows) UnpackCodes(w.Row(row), padded, codes);
                else Array.Fill(codes, (byte)1, 0, padded);
                Array.Fill(codes, (byte)1, padded, codes.Length - padded); // zero weights past the padded width
                for (int g = 0; g < words; g++)
                {
                    int c = 9 * g;
                    int i0 = codes[c] + 3 * codes[c + 1] + 9 * codes[c + 2];
                    int i1 = codes[c + 3] + 3 * codes[c + 4] + 9 * codes[c + 5];
                    int i2 = codes[c + 6] + 3 * codes[c + 7] + 9 * codes[c + 8];
                    dst[(long)g * BlockRows + i] = (short)(i0 | i1 << 5 | i2 << 10);
                }
            }
            return codes;
        }, _ => { });
        return packed;
    }

    /// <summary>The codes t+1 of one packed row, in column order (see <see cref="TernaryMatrix"/>'s layout).</summary>
    private static void UnpackCodes(byte* row, int paddedCols, byte[] codes)
    {
        for (int block = 0; block < paddedCols / TernaryMatrix.BlockSize; block++)
        {
            byte* src = row + block * TernaryMatrix.BlockBytes;
            int col = block * TernaryMatrix.BlockSize;
            for (int i = 0; i < 32; i++)
            {
                int v = src[i];
                codes[col + i] = (byte)(v >> 6 & 3);
                codes[col + 32 + i] = (byte)(v >> 4 & 3);
                codes[col + 64 + i] = (byte)(v >> 2 & 3);
                codes[col + 96 + i] = (byte)(v & 3);
            }
        }
    }

    /// <summary>
    /// The tables of every token: for token t, triple j, entry e &lt; 27: Σ_d (digit_d(e) − 1)·q[3j+d] (0 past the padded
    /// width), entries 27–31 zero; token t's tables start at t·<see cref="TableBytes"/>. The returned rows carry the tables
    /// in place of the codes (their stride stays the padded width, which is what the products check).
    /// </summary>
    public override ActivationRows Prepare(QuantizedActivations x, ref NativeBuffer? scratch)
    {
        if (x.Tokens > MaxLookupTokens) return LookupPrefill ? ActivationRows.Of(x) : Tiles.Prepare(x, ref scratch);
        long perToken = TableBytes(x.PaddedCols), need = perToken * x.Tokens;
        if (scratch is null || scratch.ByteLength < need)
        {
            scratch?.Dispose();
            scratch = null; // a failed allocation must not leave the disposed buffer to pass the size check
            scratch = new NativeBuffer(Math.Max(need, 1 << 16), zero: false);
        }
        for (int t = 0; t < x.Tokens; t++) BuildTables(x.Row(t), x.PaddedCols, (short*)(scratch.Pointer + t * perToken));
        return new ActivationRows((sbyte*)scratch.Pointer, x.PaddedCols, x.Tokens, x.Scales, x.Sums, x.Cols);
    }

    private static readonly short[] s_coefficients = MakeCoefficients();

    private static short[] MakeCoefficients()
    {
        var c = new short[3 * TableEntries];
        for (int e = 0; e < 27; e++)
        {
            c[e] = (short)(e % 3 - 1);
            c[TableEntries + e] = (short)(e / 3 % 3 - 1);
            c[2 * TableEntries + e] = (short)(e / 9 - 1);
        }
        return c;
    }

    /// <summary>One token's tables (see <see cref="Prepare"/>).</summary>
    internal static void BuildTables(sbyte* q, int paddedCols, short* tables)
    {
        int triples = 3 * WordsPerRow(paddedCols);
        fixed (short* c = s_coefficients)
        {
            var c0 = Vector512.Load(c);
            var c1 = Vector512.Load(c + TableEntries);
            var c2 = Vector512.Load(c + 2 * TableEntries);
            int full = paddedCols / 3; // triples whose three activations all lie inside the padded width
            for (int j = 0; j < full; j++)
            {
                sbyte* a = q + 3 * j;
                var t = c0 * Vector512.Create((short)a[0]) + c1 * Vector512.Create((short)a[1]) + c2 * Vector512.Create((short)a[2]);
                t.Store(tables + (long)j * TableEntries);
            }
            for (int j = full; j < triples; j++)
            {
                int k = 3 * j;
                short x0 = k < paddedCols ? q[k] : (short)0, x1 = k + 1 < paddedCols ? q[k + 1] : (short)0, x2 = k + 2 < paddedCols ? q[k + 2] : (short)0;
                var t = c0 * Vector512.Create(x0) + c1 * Vector512.Create(x1) + c2 * Vector512.Create(x2);
                t.Store(tables + (long)j * TableEntries);
            }
        }
    }

    protected override void MatMulCore(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int rowStart, int rowEnd)
    {
        if (x.Tokens > MaxLookupTokens)
        {
            if (LookupPrefill) LookupRowsByToken(w, x, y, yStride, rowStart, rowEnd);
            else Tiles.MatMul(w, x, y, yStride, rowStart, rowEnd);
            return;
        }
        if (rowStart >= rowEnd) return;
        // Four far-apart streams (quarters of the range's whole blocks) read faster than four adjacent blocks: in one
        // process on the Zen 5 EPYC, 31–35 against 22–27 GB/s from memory on one thread.
        int a = (rowStart + BlockRows - 1) / BlockRows * BlockRows, quarter = (rowEnd - a) / 4 / BlockRows * BlockRows;
        if (quarter >= 2 * BlockRows)
        {
            Adjacent(w, x, y, yStride, rowStart, a);
            MatVecQuartersCore(w, x, y, yStride, a, quarter, 0, quarter);
            Adjacent(w, x, y, yStride, a + 4 * quarter, rowEnd);
        }
        else Adjacent(w, x, y, yStride, rowStart, rowEnd);
    }

    internal override bool SplitsByTokens(int tokens) => LookupPrefill && tokens > MaxLookupTokens;

    internal override long TokenScratchBytes(int paddedCols, int tokens) => TableBytes(paddedCols) * tokens;

    /// <summary>The tables of tokens [tokenStart, tokenEnd) of the int8 rows <paramref name="x"/>, one token's after another.</summary>
    internal override void PrepareTokens(in ActivationRows x, int tokenStart, int tokenEnd, byte* scratch)
    {
        long perToken = TableBytes(x.Stride);
        for (int t = tokenStart; t < tokenEnd; t++) BuildTables(x.Row(t), x.Stride, (short*)(scratch + (t - tokenStart) * perToken));
    }

    /// <summary>
    /// Every row for tokens [tokenStart, tokenEnd) from their tables in <paramref name="scratch"/>: blocks outer, tokens
    /// inner, so that each four-block group's weights stay in L1 while the slice's tables stream past (token by token over
    /// every block read 0.9–0.95× as fast: `bench -m models/bitnet-tinystories.gguf -p 64|240`, Zen 5 EPYC).
    /// </summary>
    internal override void MatMulTokens(TernaryMatrix w, in ActivationRows x, byte* scratch, float* y, int yStride, int tokenStart, int tokenEnd)
    {
        long perToken = TableBytes(w.PaddedCols);
        var packed = Layout(w);
        int words = packed.Words, blocks = packed.Blocks;
        long blockWords = (long)words * BlockRows;
        int* sums = stackalloc int[4 * BlockRows];
        fixed (float* rowScales = w.RowScales)
            for (int b = 0; b < blocks; b += 4)
            {
                int n = Math.Min(4, blocks - b);
                int from = b * BlockRows, to = Math.Min(w.Rows, (b + n) * BlockRows);
                for (int t = tokenStart; t < tokenEnd; t++)
                {
                    short* tables = (short*)(scratch + (t - tokenStart) * perToken);
                    if (n == 4) Dot4Blocks(packed.Block(b), blockWords, tables, words, sums);
                    else for (int k = 0; k < n; k++) DotBlock(packed.Block(b + k), tables, words, sums + k * BlockRows);
                    Epilogues(sums, to - from, x.Scales[t], rowScales + from, y + (long)t * yStride + from);
                }
            }
    }

    [ThreadStatic] private static NativeBuffer? t_tables;

    /// <summary>Rows [rowStart, rowEnd) for every token of the int8 rows <paramref name="x"/>: each token's tables built in turn.</summary>
    private static void LookupRowsByToken(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int rowStart, int rowEnd)
    {
        long perToken = TableBytes(w.PaddedCols);
        if (t_tables is null || t_tables.ByteLength < perToken)
        {
            t_tables?.Dispose();
            t_tables = null; // as above
            t_tables = new NativeBuffer(perToken, zero: false);
        }
        short* tables = (short*)t_tables.Pointer;
        for (int t = 0; t < x.Tokens; t++)
        {
            BuildTables(x.Row(t), w.PaddedCols, tables);
            TokenRows(w, tables, x.Scales[t], y + (long)t * yStride, rowStart, rowEnd);
        }
    }

    /// <summary>Rows [rowStart, rowEnd) of one token (its tables, its scale), four adjacent blocks at a time, into <paramref name="yt"/>.</summary>
    private static void TokenRows(TernaryMatrix w, short* tables, float scale, float* yt, int rowStart, int rowEnd)
    {
        if (rowStart >= rowEnd) return;
        var packed = Layout(w);
        int words = packed.Words;
        long blockWords = (long)words * BlockRows;
        int* sums = stackalloc int[4 * BlockRows];
        int first = rowStart / BlockRows, end = (rowEnd + BlockRows - 1) / BlockRows;
        float[] rowScales = w.RowScales;
        for (int b = first; b < end;)
        {
            int n = Math.Min(4, end - b);
            if (n == 4) Dot4Blocks(packed.Block(b), blockWords, tables, words, sums);
            else for (int k = 0; k < n; k++) DotBlock(packed.Block(b + k), tables, words, sums + k * BlockRows);
            int from = Math.Max(rowStart, b * BlockRows), to = Math.Min(rowEnd, (b + n) * BlockRows);
            fixed (float* rs = rowScales) Epilogues(sums + (from - b * BlockRows), to - from, scale, rs + from, yt + from);
            b += n;
        }
    }

    /// <summary>Rows [rowStart, rowEnd) four adjacent blocks at a time (whole blocks computed, the asked rows written).</summary>
    private static void Adjacent(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int rowStart, int rowEnd)
    {
        if (rowStart >= rowEnd) return;
        var packed = Layout(w);
        int words = packed.Words;
        long perToken = TableBytes(w.PaddedCols);
        long blockWords = (long)words * BlockRows;
        int* sums = stackalloc int[4 * BlockRows];
        int first = rowStart / BlockRows, end = (rowEnd + BlockRows - 1) / BlockRows;
        for (int b = first; b < end;)
        {
            int n = Math.Min(4, end - b);
            for (int t = 0; t < x.Tokens; t++)
            {
                short* tables = (short*)((byte*)x.Codes + t * perToken);
                if (n == 4) Dot4Blocks(packed.Block(b), blockWords, tables, words, sums);
                else for (int k = 0; k < n; k++) DotBlock(packed.Block(b + k), tables, words, sums + k * BlockRows);
                int from = Math.Max(rowStart, b * BlockRows), to = Math.Min(rowEnd, (b + n) * BlockRows);
                fixed (float* rs = w.RowScales) Epilogues(sums + (from - b * BlockRows), to - from, x.Scales[t], rs + from, y + (long)t * yStride + from);
            }
            b += n;
        }
    }

    /// <summary>
    /// Rows sliceStart + k·quarter + p for k = 0..3 and p ∈ [from, to): four streams, one per quarter, a block of each
    /// per <see cref="Dot4Blocks"/> call (the plan keeps sliceStart and quarter whole blocks; a range that cuts a block
    /// computes the block and writes the asked rows only).
    /// </summary>
    protected override void MatVecQuartersCore(TernaryMatrix w, in ActivationRows x, float* y, int yStride, int sliceStart, int quarter, int from, int to)
    {
        if (from >= to) return;
        if (sliceStart % BlockRows != 0 || quarter % BlockRows != 0 || x.Tokens > MaxLookupTokens)
        {
            base.MatVecQuartersCore(w, x, y, yStride, sliceStart, quarter, from, to);
            return;
        }
        var packed = Layout(w);
        int words = packed.Words;
        long perToken = TableBytes(w.PaddedCols);
        long stride = (long)(quarter / BlockRows) * words * BlockRows;
        int* sums = stackalloc int[4 * BlockRows];
        for (int p = from / BlockRows * BlockRows; p < to; p += BlockRows)
        {
            short* block = packed.Block((sliceStart + p) / BlockRows);
            int a = Math.Max(from, p), b = Math.Min(to, p + BlockRows);
            for (int t = 0; t < x.Tokens; t++)
            {
                Dot4Blocks(block, stride, (short*)((byte*)x.Codes + t * perToken), words, sums);
                float scale = x.Scales[t];
                float* yt = y + (long)t * yStride;
                fixed (float* rs = w.RowScales)
                    for (int k = 0; k < 4; k++)
                    {
                        int row0 = sliceStart + k * quarter;
                        Epilogues(sums + k * BlockRows + (a - p), b - a, scale, rs + row0 + a, yt + row0 + a);
                    }
            }
        }
    }

    /// <summary>
    /// y[i] = <see cref="TernaryKernel.Epilogue"/>(sums[i], 0, scale, rowScales[i]) for i &lt; count, sixteen rows per
    /// vector: the same IEEE operations in the same order (int → float, ÷ scale, × row scale), so the same floats. At the
    /// bundled model's width the scalar loop's divisions cost as much as the lookups.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Epilogues(int* sums, int count, float scale, float* rowScales, float* y)
    {
        int i = 0;
        var s = Vector512.Create(scale);
        for (; i + 16 <= count; i += 16)
            (Vector512.ConvertToSingle(Vector512.Load(sums + i)) / s * Vector512.Load(rowScales + i)).Store(y + i);
        for (; i < count; i++) y[i] = Epilogue(sums[i], 0, scale, rowScales[i]);
    }

    /// <summary>How far ahead of each block's current word <see cref="Dot4Blocks"/> prefetches (prefetcht1).</summary>
    private const int PrefetchBytes = 1024;

    /// <summary>
    /// Σ t·q for the 4 × 32 rows of four consecutive blocks (four memory streams a block apart) and one token's tables:
    /// sums[32k + i] for row i of block k. Each step's three tables are loaded once for the four blocks.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Dot4Blocks(short* w, long blockWords, short* tables, int words, int* sums)
    {
        short* w0 = w, w1 = w + blockWords, w2 = w1 + blockWords, w3 = w2 + blockWords;
        Vector512<int> l0 = default, h0 = default, l1 = default, h1 = default, l2 = default, h2 = default, l3 = default, h3 = default;
        for (int g = 0; g < words;)
        {
            int chunkEnd = Math.Min(words, g + Int16Steps);
            Vector512<short> s0 = default, s1 = default, s2 = default, s3 = default;
            for (; g < chunkEnd; g++)
            {
                long o = (long)g * BlockRows;
                Sse.Prefetch1((byte*)(w0 + o) + PrefetchBytes);
                Sse.Prefetch1((byte*)(w1 + o) + PrefetchBytes);
                Sse.Prefetch1((byte*)(w2 + o) + PrefetchBytes);
                Sse.Prefetch1((byte*)(w3 + o) + PrefetchBytes);
                short* tp = tables + (long)g * 3 * TableEntries;
                var t0 = Vector512.Load(tp);
                var t1 = Vector512.Load(tp + TableEntries);
                var t2 = Vector512.Load(tp + 2 * TableEntries);
                s0 = Step(Vector512.Load(w0 + o), t0, t1, t2, s0);
                s1 = Step(Vector512.Load(w1 + o), t0, t1, t2, s1);
                s2 = Step(Vector512.Load(w2 + o), t0, t1, t2, s2);
                s3 = Step(Vector512.Load(w3 + o), t0, t1, t2, s3);
            }
            Widen(s0, ref l0, ref h0);
            Widen(s1, ref l1, ref h1);
            Widen(s2, ref l2, ref h2);
            Widen(s3, ref l3, ref h3);
        }
        l0.Store(sums); h0.Store(sums + 16);
        l1.Store(sums + 32); h1.Store(sums + 48);
        l2.Store(sums + 64); h2.Store(sums + 80);
        l3.Store(sums + 96); h3.Store(sums + 112);
    }

    /// <summary>Σ t·q for the 32 rows of one block and one token's tables: sums[i] for row i.</summary>
    public static void DotBlock(short* w, short* tables, int words, int* sums)
    {
        Vector512<int> lo = default, hi = default;
        for (int g = 0; g < words;)
        {
            int chunkEnd = Math.Min(words, g + Int16Steps);
            Vector512<short> s = default;
            for (; g < chunkEnd; g++)
            {
                short* tp = tables + (long)g * 3 * TableEntries;
                s = Step(Vector512.Load(w + (long)g * BlockRows), Vector512.Load(tp), Vector512.Load(tp + TableEntries), Vector512.Load(tp + 2 * TableEntries), s);
            }
            Widen(s, ref lo, ref hi);
        }
        lo.Store(sums);
        hi.Store(sums + 16);
    }

    /// <summary>One word of 32 rows: three lookups (the word, then shifted by 5 and by 10; vpermw reads the low 5 bits).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<short> Step(Vector512<short> word, Vector512<short> t0, Vector512<short> t1, Vector512<short> t2, Vector512<short> s)
    {
        var a = Avx512BW.PermuteVar32x16(t0, word);
        var b = Avx512BW.PermuteVar32x16(t1, Avx512BW.ShiftRightLogical(word.AsUInt16(), 5).AsInt16());
        var c = Avx512BW.PermuteVar32x16(t2, Avx512BW.ShiftRightLogical(word.AsUInt16(), 10).AsInt16());
        return s + (a + b) + c;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Widen(Vector512<short> s, ref Vector512<int> lo, ref Vector512<int> hi)
    {
        lo += Avx512BW.ConvertToVector512Int32(s.GetLower());
        hi += Avx512BW.ConvertToVector512Int32(s.GetUpper());
    }
}
