using BitNetSharp.Quantization;
using BitNetSharp.Threading;

namespace BitNetSharp.Kernels;

/// <summary>
/// Runs a ternary (or binary) kernel over a <see cref="WorkerPool"/>: output rows are handed out in chunks to whichever
/// thread is free (a static half each left one core waiting whenever the host slowed the other), and activations that
/// a variant reads in another layout are laid out once per product, not once per chunk. One instance is reused for
/// every call (its fields are the call's arguments), so a call allocates nothing.
/// </summary>
public sealed unsafe class TernaryMatMul : IParallelWork, IDisposable
{
    private readonly WorkerPool _pool;
    private TernaryKernel? _kernel;
    private BinaryKernel? _binaryKernel;
    private TernaryMatrix? _w;
    private BinaryMatrix? _bw;
    private QuantizedActivations? _x;
    private ActivationRows _rows;
    private Memory.NativeBuffer? _scratch;
    private float* _y;
    private int _yStride;

    // The owned-range plan of a one-token product (see PlanOwned): per thread, its slice of rows and, with four weight
    // streams, the slice's quarter; the item bounds handed to WorkerPool.RunOwned.
    private readonly int[] _bounds, _sliceStart, _sliceEnd, _quarter;
    private bool _ownedPlan, _ownedStreams;

    // Products split by tokens (TernaryKernel.SplitsByTokens): per thread, its tokens' scratch (the lookup kernel's
    // tables), kept for the next product on the same activations (q, k and v; gate and up) — which token slice, of which
    // Prepare, it holds.
    private bool _tokenPlan;
    private readonly Memory.NativeBuffer?[] _tokenScratch;
    private readonly long[] _tokenScratchOf, _tokenScratchSlice;
    private long _prepared;
    private sbyte* _preparedCodes;

    public TernaryMatMul(WorkerPool pool)
    {
        _pool = pool;
        _bounds = new int[pool.ThreadCount + 1];
        _sliceStart = new int[pool.ThreadCount];
        _sliceEnd = new int[pool.ThreadCount];
        _quarter = new int[pool.ThreadCount];
        _tokenScratch = new Memory.NativeBuffer?[pool.ThreadCount];
        _tokenScratchOf = new long[pool.ThreadCount];
        _tokenScratchSlice = new long[pool.ThreadCount];
        _manyStart = new int[MaxProducts * pool.ThreadCount];
        _manyEnd = new int[MaxProducts * pool.ThreadCount];
        _manyQuarter = new int[MaxProducts * pool.ThreadCount];
        _manyFirstItem = new int[MaxProducts * pool.ThreadCount];
    }

    /// <summary>Most tokens per product planned over owned ranges (decode of one to three sequences, short speculative
    /// checks): weights read once for all the tokens, as in the one-token case. Four tokens and more are compute-bound
    /// tiles, where the shared-counter chunks balance the load.</summary>
    private const int OwnedMaxTokens = 3;

    /// <summary>Fewest rows per quarter of a thread's slice for the four-stream plan (below it, the shared-counter chunks).</summary>
    private const int StreamMinRows = 8;

    /// <summary>
    /// Plans a decode product (one to three tokens) over owned ranges: each thread owns one contiguous slice of the rows
    /// and works through it front to back — with <see cref="TernaryKernel.WeightStreams"/> = 4 as one four-stream pass
    /// over the slice's quarters, every token against each four rows (items are quarter positions;
    /// <see cref="TernaryKernel.MatVecQuarters(TernaryMatrix, in ActivationRows, float*, int, int, int, int, int)"/>; for two
    /// and three tokens this replaced rows in address order: `bench -s 2` 51-53 -> 65-72 tok/s, `-s 3` 58-60 -> 70-73 on the
    /// 2B4T shape, Zen 5 EPYC, 2 threads), with 1 as rows in address order — taking work from the other slices once its own is done (<see cref="WorkerPool.RunOwned"/>). The
    /// chunks of <see cref="Grain"/>, handed out from one counter, each start new streams: on the Zen 5 EPYC (2 threads,
    /// 16 layers of the 2B4T decode mat-vecs from memory, one process, alternating) one half per thread read 58.5 GB/s against
    /// 52.0, 46.5 and 43.8 for chunks of a quarter, an eighth and a sixteenth of the rows, and 45.4 for <see cref="Grain"/>'s.
    /// Returns false (use the chunks) when the slices are too small to split this way. Not used for products under 2^19
    /// multiply-adds per thread, which <see cref="Grain"/> keeps on one thread (a small model's decode is dispatch-bound:
    /// the bundled model's `generate` fell from ~1600 to ~620 tok/s when its tiny products were shared out).
    /// </summary>
    private bool PlanOwned(int rows, long rowBytes, bool streams, int alignment)
    {
        int threads = _pool.ThreadCount;
        int items = 0, smallest = int.MaxValue;
        int align = Math.Max(8, alignment);
        bool blocked = align > 8; // a blocked layout (TernaryKernel.RowAlignment): slices and quarters in whole blocks
        _bounds[0] = 0;
        for (int t = 0; t < threads; t++)
        {
            var (start, end) = WorkerPool.Slice(t, rows, threads);
            if (!streams || blocked)
            {
                // Slices in whole row groups (8 rows: the kernels' eight-row dots; or a blocked layout's blocks), so
                // that claims of whole groups keep them.
                start = t == 0 ? 0 : start / align * align;
                end = t == threads - 1 ? rows : end / align * align;
            }
            int length = end - start;
            int quarter = blocked ? length / 4 / align * align : length / 4;
            if (streams && quarter < StreamMinRows) return false;
            if (!streams && length < Math.Max(64, 2 * align)) return false;
            _sliceStart[t] = start;
            _sliceEnd[t] = end;
            _quarter[t] = quarter;
            items += streams ? quarter + (length > 4 * quarter ? 1 : 0) : length;
            _bounds[t + 1] = items;
            smallest = Math.Min(smallest, streams ? quarter : length);
        }
        _ownedStreams = streams;
        // At most Claims claims per slice, of at least MinClaimBytes: few enough that claiming costs next to nothing, small
        // enough that a thread done early takes a useful share of a slower one's slice.
        long minimum = (MinClaimBytes + 4 * rowBytes - 1) / (4 * rowBytes); // positions (4 rows each), or rows / 4
        long grain = streams ? Math.Max(minimum, smallest / Claims) : Math.Max(4 * minimum, smallest / Claims);
        _ownedGrain = (int)(streams && !blocked ? grain : (grain + align - 1) / align * align);
        _ownedMinGrain = (int)(streams && !blocked ? minimum : (4 * minimum + align - 1) / align * align);
        return true;
    }

    private int _ownedGrain;

    /// <summary>The least claim of the owned plan (<see cref="MinClaimBytes"/> of weights): the claims shrink to it at the end of each slice.</summary>
    private int _ownedMinGrain;

    /// <summary>Claims per owned slice (at most; see <see cref="MinClaimBytes"/>).</summary>
    private const int Claims = 8;

    /// <summary>Fewest weight bytes per claim (64 KiB: about 2 µs of reading). Each claim costs an interlocked add and a
    /// kernel call: with 64 claims per slice (13 KB each on the 2B4T shape's 640-row k and v) the same benchmark as
    /// <see cref="PlanOwned"/>'s read 36.7 GB/s against 41.6–44.1 with 1 to 16.</summary>
    private const long MinClaimBytes = 65536;

    /// <summary>
    /// Rows per chunk: about eight chunks per thread, but at least 2^19 multiply-adds (a few microseconds, so taking a
    /// chunk costs little: at one token on a 1536-wide model, 96-row chunks made decode ~5 % slower) and at least 64
    /// rows, in whole 16-row blocks so the kernels' row pairs are not split (or in whole blocks of <paramref name="alignment"/> rows).
    /// </summary>
    public int Grain(int rows, int cols, int tokens, int alignment = 16)
    {
        long minimum = ((1L << 19) + (long)cols * tokens - 1) / ((long)cols * tokens);
        long grain = Math.Max(Math.Max(64, rows / (_pool.ThreadCount * 8)), minimum);
        int unit = Math.Max(16, alignment); // whole 16-row blocks (the kernels' row pairs), or a blocked layout's blocks
        return (int)(Math.Min(int.MaxValue - unit, grain + unit - 1) / unit * unit);
    }

    /// <summary>y[t·yStride + n] = (W·x_t)[n] for every token in <paramref name="x"/>, all rows, in parallel.</summary>
    public void Run(TernaryKernel kernel, TernaryMatrix w, QuantizedActivations x, float* y, int yStride) =>
        Run(kernel, w, Prepare(kernel, x), y, yStride);

    /// <summary>
    /// <paramref name="x"/> in <paramref name="kernel"/>'s layout, for several <see cref="Run(TernaryKernel, TernaryMatrix, in ActivationRows, float*, int)"/>
    /// calls with the same activations (q, k and v; gate and up). Valid until the next Prepare or Run with activations.
    /// </summary>
    public ActivationRows Prepare(TernaryKernel kernel, QuantizedActivations x)
    {
        if (!kernel.IsSupported) throw new PlatformNotSupportedException($"Ternary kernel '{kernel.Name}' is not supported on this CPU.");
        var rows = kernel.Prepare(x, ref _scratch);
        _prepared++; // new activations: the token scratch kept from the last ones is stale
        _preparedCodes = rows.Codes;
        return rows;
    }

    /// <summary>
    /// Several products on the same activations (q, k and v; gate and up): y_i = W_i·x for each of the
    /// <paramref name="count"/> (≤ <see cref="MaxProducts"/>) products, the same floats as one
    /// <see cref="Run(TernaryKernel, TernaryMatrix, in ActivationRows, float*, int)"/> per product. When
    /// <see cref="RunsAsOnePass"/> says so (a decode step: one to three tokens, four weight streams, two threads or more)
    /// they are one pass over owned ranges: each thread owns its slice of every product and works through them in turn,
    /// so the threads meet once instead of once per product and the small products (2B4T's 640-row k and v) do not each
    /// pay a start and an end. On the Zen 5 EPYC (2 threads, synthetic 2B4T, steps alternated in one process) q+k+v took
    /// ~44 µs a layer against 29.4 + 10.7 + 10.4 as three products, gate+up ~127 against 68 + 68, and a decode step
    /// 1.9–2.5 % less. Otherwise the products run one after another.
    /// </summary>
    public void RunMany(TernaryKernel kernel, in ActivationRows x, int count,
        TernaryMatrix w0, float* y0, int yStride0, TernaryMatrix? w1 = null, float* y1 = null, int yStride1 = 0,
        TernaryMatrix? w2 = null, float* y2 = null, int yStride2 = 0)
    {
        if ((uint)(count - 1) >= MaxProducts) throw new ArgumentOutOfRangeException(nameof(count), count, $"RunMany takes 1 to {MaxProducts} products.");
        ArgumentNullException.ThrowIfNull(w0);
        if (count > 1) ArgumentNullException.ThrowIfNull(w1);
        if (count > 2) ArgumentNullException.ThrowIfNull(w2);
        _manyW[0] = w0; _manyY[0] = y0; _manyStride[0] = yStride0;
        _manyW[1] = w1; _manyY[1] = y1; _manyStride[1] = yStride1;
        _manyW[2] = w2; _manyY[2] = y2; _manyStride[2] = yStride2;
        try
        {
            for (int i = 0; i < count; i++)
            {
                if (_manyW[i]!.PaddedCols != x.Stride)
                    throw new ArgumentException($"Weight rows of product {i} have {_manyW[i]!.PaddedCols} padded inputs but the activation rows have {x.Stride}.", nameof(x));
                x.CheckWidth(_manyW[i]!.Cols, i);
            }
            if (OnePass(kernel, x.Tokens, count) && PlanMany(count))
            {
                (_kernel, _binaryKernel, _w, _bw, _x) = (kernel, null, null, null, null);
                _rows = x;
                _manyCount = count;
                try
                {
                    _pool.RunOwned(this, _bounds, _ownedGrain, _ownedMinGrain);
                }
                finally
                {
                    _manyCount = 0;
                    _kernel = null;
                    _rows = default;
                }
                return;
            }
            for (int i = 0; i < count; i++) Run(kernel, _manyW[i]!, x, _manyY[i], _manyStride[i]);
        }
        finally
        {
            Array.Clear(_manyW);
            _manyY[0] = _manyY[1] = _manyY[2] = null;
        }
    }

    /// <summary>Whether <see cref="RunMany"/> runs these products (w2 null for two) on <paramref name="x"/> as one pass.</summary>
    public bool RunsAsOnePass(TernaryKernel kernel, in ActivationRows x, TernaryMatrix w0, TernaryMatrix w1, TernaryMatrix? w2 = null) =>
        RunsAsOnePass(kernel, x.Tokens, w0, w1, w2);

    /// <summary><see cref="RunsAsOnePass(TernaryKernel, in ActivationRows, TernaryMatrix, TernaryMatrix, TernaryMatrix?)"/> for
    /// activations of <paramref name="tokens"/> tokens, before they are prepared.</summary>
    public bool RunsAsOnePass(TernaryKernel kernel, int tokens, TernaryMatrix w0, TernaryMatrix w1, TernaryMatrix? w2 = null)
    {
        _manyW[0] = w0; _manyW[1] = w1; _manyW[2] = w2;
        try
        {
            return OnePass(kernel, tokens, w2 is null ? 2 : 3);
        }
        finally
        {
            Array.Clear(_manyW);
        }
    }

    /// <summary>Most products <see cref="RunMany"/> takes in one pass.</summary>
    public const int MaxProducts = 3;

    // RunMany's products, and its plan: per product and thread ([product · threads + thread]), the slice's first row,
    // end and quarter, and the first item (within the thread's owned range) of the product's part.
    private readonly TernaryMatrix?[] _manyW = new TernaryMatrix?[MaxProducts];
    private readonly float*[] _manyY = new float*[MaxProducts];
    private readonly int[] _manyStride = new int[MaxProducts];
    private readonly int[] _manyStart, _manyEnd, _manyQuarter, _manyFirstItem;
    private int _manyCount;

    /// <summary>
    /// The one-pass conditions on _manyW[0..count): several products, a decode-sized batch, four weight streams in rows
    /// (not a blocked layout or a token split), two threads or more, and every product large enough to share
    /// (<see cref="Run(TernaryKernel, TernaryMatrix, in ActivationRows, float*, int)"/>'s threshold) with slices of at least
    /// <see cref="StreamMinRows"/> rows per quarter.
    /// </summary>
    private bool OnePass(TernaryKernel kernel, int tokens, int count)
    {
        int threads = _pool.ThreadCount;
        if (count < 2 || tokens > OwnedMaxTokens || threads < 2 || TernaryKernel.WeightStreams != 4 || kernel.RowAlignment > 8
            || !kernel.IsSupported || kernel.SplitsByTokens(tokens))
            return false;
        for (int i = 0; i < count; i++)
        {
            var w = _manyW[i]!;
            if ((long)w.Rows * w.Cols * tokens < (long)threads << 19) return false;
            if (w.Rows / threads / 4 < StreamMinRows) return false;
        }
        return true;
    }

    /// <summary>
    /// <see cref="PlanOwned"/> for several products: thread t owns, one after another, its four-stream slice of each
    /// product (its items: the quarter's positions, then one for the rows past four quarters). Claims are at least
    /// <see cref="MinClaimBytes"/> and about <see cref="Claims"/> per product and slice.
    /// </summary>
    private bool PlanMany(int count)
    {
        int threads = _pool.ThreadCount;
        long minimum = long.MaxValue;
        int items = 0, smallest = int.MaxValue;
        for (int i = 0; i < count; i++)
            minimum = Math.Min(minimum, (MinClaimBytes + 4 * _manyW[i]!.RowBytes - 1) / (4 * _manyW[i]!.RowBytes));
        _bounds[0] = 0;
        for (int t = 0; t < threads; t++)
        {
            int own = 0;
            for (int i = 0; i < count; i++)
            {
                var (start, end) = WorkerPool.Slice(t, _manyW[i]!.Rows, threads);
                int quarter = (end - start) / 4;
                if (quarter < StreamMinRows) return false;
                int k = i * threads + t;
                _manyStart[k] = start; _manyEnd[k] = end; _manyQuarter[k] = quarter; _manyFirstItem[k] = own;
                own += quarter + (end - start > 4 * quarter ? 1 : 0);
            }
            items += own;
            _bounds[t + 1] = items;
            smallest = Math.Min(smallest, own);
        }
        _ownedGrain = (int)Math.Max(minimum, smallest / (Claims * count));
        _ownedMinGrain = (int)minimum;
        return true;
    }

    /// <summary>Items [start, end) of RunMany's plan, all within one thread's owned range, product by product.</summary>
    private void ExecuteMany(int start, int end)
    {
        int threads = _pool.ThreadCount, t = 0;
        while (start >= _bounds[t + 1]) t++;
        int from = start - _bounds[t], to = end - _bounds[t];
        var kernel = _kernel!;
        for (int i = 0; i < _manyCount; i++)
        {
            int k = i * threads + t;
            int first = _manyFirstItem[k], quarter = _manyQuarter[k];
            int items = quarter + (_manyEnd[k] - _manyStart[k] > 4 * quarter ? 1 : 0);
            int a = Math.Max(from, first) - first, b = Math.Min(to, first + items) - first;
            if (a >= b) continue;
            var w = _manyW[i]!;
            if (a < quarter) kernel.MatVecQuarters(w, _rows, _manyY[i], _manyStride[i], _manyStart[k], quarter, a, Math.Min(b, quarter));
            if (b > quarter) kernel.MatMul(w, _rows, _manyY[i], _manyStride[i], _manyStart[k] + 4 * quarter, _manyEnd[k]);
        }
    }

    /// <summary>As <see cref="Run(TernaryKernel, TernaryMatrix, QuantizedActivations, float*, int)"/> on activations from <see cref="Prepare"/>.</summary>
    public void Run(TernaryKernel kernel, TernaryMatrix w, in ActivationRows x, float* y, int yStride)
    {
        if (w.PaddedCols != x.Stride)
            throw new ArgumentException($"Weight rows have {w.PaddedCols} padded inputs but the activation rows have {x.Stride}.", nameof(x));
        x.CheckWidth(w.Cols);
        (_kernel, _binaryKernel, _w, _bw, _x) = (kernel, null, w, null, null);
        _rows = x;
        _y = y;
        _yStride = yStride;
        try
        {
            if (kernel.SplitsByTokens(x.Tokens))
            {
                // Rows from elsewhere than this instance's last Prepare: nothing kept may be reused.
                if (x.Codes != _preparedCodes)
                {
                    _prepared++;
                    _preparedCodes = x.Codes;
                }
                _tokenPlan = true;
                // One slice of tokens per thread (the same slices for every product on these activations, so each thread's
                // scratch serves them all); a product too small to share stays on the calling thread.
                if (_pool.ThreadCount > 1 && (long)w.Rows * w.Cols * x.Tokens >= (long)_pool.ThreadCount << 19) _pool.Run(this, x.Tokens);
                else ((IParallelWork)this).Execute(0, x.Tokens, 0);
            }
            else if (x.Tokens <= OwnedMaxTokens && _pool.ThreadCount > 1 && (long)w.Rows * w.Cols * x.Tokens >= (long)_pool.ThreadCount << 19 && PlanOwned(w.Rows, w.RowBytes, TernaryKernel.WeightStreams == 4, kernel.RowAlignment))
            {
                _ownedPlan = true;
                _pool.RunOwned(this, _bounds, _ownedGrain, _ownedMinGrain);
            }
            else _pool.Run(this, w.Rows, Grain(w.Rows, w.Cols, x.Tokens, kernel.RowAlignment));
        }
        finally
        {
            _tokenPlan = false;
            _ownedPlan = false;
            (_kernel, _w) = (null, null);
            _rows = default;
            _y = null;
        }
    }

    public void Run(BinaryKernel kernel, BinaryMatrix w, QuantizedActivations x, float* y, int yStride)
    {
        (_kernel, _binaryKernel, _w, _bw, _x) = (null, kernel, null, w, x);
        _y = y;
        _yStride = yStride;
        try
        {
            _pool.Run(this, w.Rows, Grain(w.Rows, w.Cols, x.Tokens));
        }
        finally
        {
            (_binaryKernel, _bw, _x) = (null, null, null);
            _y = null;
        }
    }

    public void Dispose()
    {
        _scratch?.Dispose();
        _scratch = null;
        for (int i = 0; i < _tokenScratch.Length; i++)
        {
            _tokenScratch[i]?.Dispose();
            _tokenScratch[i] = null;
        }
    }

    void IParallelWork.Execute(int start, int end, int worker)
    {
        if (_manyCount != 0) ExecuteMany(start, end);
        else if (_tokenPlan) ExecuteTokens(start, end, worker);
        else if (_ownedPlan) ExecuteOwned(start, end);
        else if (_kernel is not null) _kernel.MatMul(_w!, _rows, _y, _yStride, start, end);
        else _binaryKernel!.MatMul(_bw!, _x!, _y, _yStride, start, end);
    }

    /// <summary>Tokens [start, end) of a product split by tokens, on <paramref name="worker"/>'s scratch (laid out once per Prepare and slice).</summary>
    private void ExecuteTokens(int start, int end, int worker)
    {
        var kernel = _kernel!;
        var w = _w!;
        long slice = (long)start << 32 | (uint)end;
        ref var scratch = ref _tokenScratch[worker];
        if (scratch is null || _tokenScratchOf[worker] != _prepared || _tokenScratchSlice[worker] != slice)
        {
            long need = kernel.TokenScratchBytes(w.PaddedCols, end - start);
            if (scratch is null || scratch.ByteLength < need)
            {
                scratch?.Dispose();
                scratch = null; // a failed allocation must not leave the disposed buffer to pass the size check
                scratch = new Memory.NativeBuffer(Math.Max(need, 1 << 16), zero: false);
            }
            kernel.PrepareTokens(_rows, start, end, scratch.Pointer);
            _tokenScratchOf[worker] = _prepared;
            _tokenScratchSlice[worker] = slice;
        }
        kernel.MatMulTokens(w, _rows, scratch.Pointer, _y, _yStride, start, end);
    }

    /// <summary>Items [start, end) of the owned plan, all within one slice (claims never cross an owner's bounds).</summary>
    private void ExecuteOwned(int start, int end)
    {
        if (!_ownedStreams)
        {
            _kernel!.MatMul(_w!, _rows, _y, _yStride, start, end);
            return;
        }
        int t = 0;
        while (start >= _bounds[t + 1]) t++;
        int from = start - _bounds[t], to = end - _bounds[t], quarter = _quarter[t];
        if (from < quarter) _kernel!.MatVecQuarters(_w!, _rows, _y, _yStride, _sliceStart[t], quarter, from, Math.Min(to, quarter));
        if (to > quarter) _kernel!.MatMul(_w!, _rows, _y, _yStride, _sliceStart[t] + 4 * quarter, _sliceEnd[t]);
    }
}
