using BitNetSharp.Quantization;
using BitNetSharp.Threading;

namespace BitNetSharp.Kernels;

/// <summary>
/// Runs a ternary (or binary) kernel over a <see cref="WorkerPool"/>, each thread taking a contiguous slice
/// of output rows. One instance is reused for every call (its fields are the call's arguments), so a call
/// allocates nothing.
/// </summary>
public sealed unsafe class TernaryMatMul : IParallelWork
{
    private readonly WorkerPool _pool;
    private TernaryKernel? _kernel;
    private BinaryKernel? _binaryKernel;
    private TernaryMatrix? _w;
    private BinaryMatrix? _bw;
    private QuantizedActivations? _x;
    private float* _y;
    private int _yStride;

    public TernaryMatMul(WorkerPool pool) => _pool = pool;

    /// <summary>y[t·yStride + n] = (W·x_t)[n] for every token in <paramref name="x"/>, all rows, in parallel.</summary>
    public void Run(TernaryKernel kernel, TernaryMatrix w, QuantizedActivations x, float* y, int yStride)
    {
        (_kernel, _binaryKernel, _w, _bw, _x) = (kernel, null, w, null, x);
        _y = y;
        _yStride = yStride;
        try
        {
            _pool.Run(this, w.Rows);
        }
        finally
        {
            (_kernel, _w, _x) = (null, null, null);
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
            _pool.Run(this, w.Rows);
        }
        finally
        {
            (_binaryKernel, _bw, _x) = (null, null, null);
            _y = null;
        }
    }

    void IParallelWork.Execute(int start, int end, int worker)
    {
        if (_kernel is not null) _kernel.MatMul(_w!, _x!, _y, _yStride, start, end);
        else _binaryKernel!.MatMul(_bw!, _x!, _y, _yStride, start, end);
    }
}
