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

    public TernaryMatMul(WorkerPool pool) => _pool = pool;

    /// <summary>
    /// Rows per chunk: about eight chunks per thread, but at least 2^19 multiply-adds (a few microseconds, so taking a
    /// chunk costs little: at one token on a 1536-wide model, 96-row chunks made decode ~5 % slower) and at least 64
    /// rows, in whole 16-row blocks so the kernels' row pairs are not split.
    /// </summary>
    public int Grain(int rows, int cols, int tokens)
    {
        long minimum = ((1L << 19) + (long)cols * tokens - 1) / ((long)cols * tokens);
        long grain = Math.Max(Math.Max(64, rows / (_pool.ThreadCount * 8)), minimum);
        return (int)Math.Min(int.MaxValue - 15, grain + 15) / 16 * 16;
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
        return kernel.Prepare(x, ref _scratch);
    }

    /// <summary>As <see cref="Run(TernaryKernel, TernaryMatrix, QuantizedActivations, float*, int)"/> on activations from <see cref="Prepare"/>.</summary>
    public void Run(TernaryKernel kernel, TernaryMatrix w, in ActivationRows x, float* y, int yStride)
    {
        if (w.PaddedCols != x.Stride)
            throw new ArgumentException($"Weight rows have {w.PaddedCols} padded inputs but the activation rows have {x.Stride}.", nameof(x));
        (_kernel, _binaryKernel, _w, _bw, _x) = (kernel, null, w, null, null);
        _rows = x;
        _y = y;
        _yStride = yStride;
        try
        {
            _pool.Run(this, w.Rows, Grain(w.Rows, w.Cols, x.Tokens));
        }
        finally
        {
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
    }

    void IParallelWork.Execute(int start, int end, int worker)
    {
        if (_kernel is not null) _kernel.MatMul(_w!, _rows, _y, _yStride, start, end);
        else _binaryKernel!.MatMul(_bw!, _x!, _y, _yStride, start, end);
    }
}
