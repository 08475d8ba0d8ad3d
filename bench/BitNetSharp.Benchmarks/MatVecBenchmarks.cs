using BenchmarkDotNet.Attributes;
using BitNetSharp.Kernels;
using BitNetSharp.Memory;
using BitNetSharp.Quantization;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// Single-threaded ternary mat-vec on the BitNet b1.58 2B4T projection shapes, one method per kernel variant,
/// against a dense fp32 mat-vec of the same shape. Each call reads the next of enough distinct weight copies
/// (≥ 256 MiB in all) that no cache holds them, as in real decoding, so the figures are memory-bound rates.
/// </summary>
[Config(typeof(KernelBenchConfig))]
public unsafe class MatVecBenchmarks : IBytesPerOperation
{
    private const long WorkingSetBytes = 256L << 20;

    /// <summary>K×N: in-features × out-features (q/o, k/v, gate/up, down).</summary>
    [Params("2560x2560", "2560x640", "2560x6912", "6912x2560")]
    public string Shape { get; set; } = "2560x2560";

    private int _k, _n, _next, _nextFloat;
    private TernaryMatrix[] _weights = [];
    private NativeBuffer[] _floatWeights = [];
    private QuantizedActivations _x = null!;
    private NativeBuffer _xFloat = null!;
    private NativeBuffer _y = null!;

    private static readonly TernaryKernel Reference = new ReferenceTernaryKernel();
    private static readonly TernaryKernel Avx2 = new Avx2TernaryKernel();
    private static readonly TernaryKernel AvxVnni = new AvxVnniTernaryKernel();
    private static readonly TernaryKernel Avx512 = new Avx512TernaryKernel();
    private static readonly TernaryKernel Avx512Gfni = new Avx512GfniTernaryKernel();
    private static readonly TernaryKernel Lookup = new LutTernaryKernel();
    private ActivationRows _lookupRows;
    private NativeBuffer? _lookupScratch;

    // The lookup kernel reads its own layout (2 bytes per 9 weights): the bytes its GB/s counts.
    public long BytesPerOperation(string method) =>
        method == nameof(Float32) ? (long)_k * _n * sizeof(float)
        : method == nameof(Avx512Lookup) ? Lookup.BytesRead(_weights[0], 1)
        : (long)_n * TernaryMatrix.PadCols(_k) / 4;

    [GlobalSetup]
    public void Setup()
    {
        var parts = Shape.Split('x');
        _k = int.Parse(parts[0]);
        _n = int.Parse(parts[1]);
        var rng = new Random(42);

        long packed = (long)_n * TernaryMatrix.PadCols(_k) / 4;
        _weights = new TernaryMatrix[(int)Math.Max(2, (WorkingSetBytes + packed - 1) / packed)];
        var codeBytes = new byte[81];
        for (int i = 0; i < 81; i++) codeBytes[i] = (byte)((i % 3) << 6 | (i / 3 % 3) << 4 | (i / 9 % 3) << 2 | (i / 27 % 3));
        for (int c = 0; c < _weights.Length; c++)
        {
            var w = TernaryMatrix.Allocate(_n, _k, scale: 0.7f);
            var bytes = new Span<byte>(w.Data, checked((int)w.ByteLength));
            for (int i = 0; i < bytes.Length; i++) bytes[i] = codeBytes[rng.Next(81)];
            _weights[c] = w;
        }

        long dense = (long)_n * _k * sizeof(float);
        _floatWeights = new NativeBuffer[(int)Math.Max(2, (WorkingSetBytes + dense - 1) / dense)];
        for (int c = 0; c < _floatWeights.Length; c++)
        {
            var f = new NativeBuffer(dense, zero: false);
            var span = f.AsSpan<float>();
            for (int i = 0; i < span.Length; i++) span[i] = (float)(rng.NextDouble() - 0.5);
            _floatWeights[c] = f;
        }

        var x = new float[_k];
        for (int i = 0; i < _k; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        _x = new QuantizedActivations(1, _k);
        Int8ActivationQuantizer.Quantize(x, _x, 0);
        _xFloat = new NativeBuffer((long)_k * sizeof(float));
        x.CopyTo(_xFloat.AsSpan<float>());
        _y = new NativeBuffer((long)_n * sizeof(float));
        if (Lookup.IsSupported)
        {
            // Its repack of every copy, and the activations' tables laid out once, as the engine does per layer input.
            foreach (var w in _weights) Lookup.PrepareWeights(w);
            _lookupRows = Lookup.Prepare(_x, ref _lookupScratch);
        }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var w in _weights) w.Dispose();
        foreach (var f in _floatWeights) f.Dispose();
        _x.Dispose();
        _xFloat.Dispose();
        _y.Dispose();
        _lookupScratch?.Dispose();
    }

    private void Run(TernaryKernel kernel)
    {
        var w = _weights[_next];
        _next = _next + 1 == _weights.Length ? 0 : _next + 1;
        kernel.MatMul(w, _x, (float*)_y.Pointer, _n, 0, _n);
    }

    [Benchmark(Baseline = true)]
    public void Scalar() => Run(Reference);

    [Benchmark]
    public void Avx2Maddubs() => Run(Avx2);

    [Benchmark]
    public void AvxVnni256() => Run(AvxVnni);

    [Benchmark]
    public void Avx512Maddubs() => Run(Avx512);

    [Benchmark]
    public void Avx512GfniSplit() => Run(Avx512Gfni);

    [Benchmark]
    public void Avx512Lookup()
    {
        var w = _weights[_next];
        _next = _next + 1 == _weights.Length ? 0 : _next + 1;
        Lookup.MatMul(w, _lookupRows, (float*)_y.Pointer, _n, 0, _n);
    }

    [Benchmark]
    public void Float32()
    {
        var w = _floatWeights[_nextFloat];
        _nextFloat = _nextFloat + 1 == _floatWeights.Length ? 0 : _nextFloat + 1;
        FloatMatVec.Compute((float*)w.Pointer, _n, _k, (float*)_xFloat.Pointer, (float*)_y.Pointer, 0, _n);
    }
}
