using System.Runtime.Intrinsics;
using BenchmarkDotNet.Attributes;
using BitNetSharp.Memory;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// Single-core read bandwidth: sums a 512 MiB buffer with the widest vectors (4 independent accumulators), plain
/// and with the kernels' software prefetch (every line, 8 KiB ahead, into L2: TernaryKernel.PrefetchWeights); the better of the two (and of the fp32 mat-vec) is
/// the ceiling a memory-bound mat-vec on one core can reach. Reported in the same run as the kernels.
/// </summary>
[Config(typeof(KernelBenchConfig))]
public unsafe class MemoryBandwidthBenchmark : IBytesPerOperation
{
    private const long Bytes = 512L << 20;
    private NativeBuffer _buffer = null!;

    public long BytesPerOperation(string method) => Bytes;

    [GlobalSetup]
    public void Setup()
    {
        _buffer = new NativeBuffer(Bytes, zero: false);
        new Span<byte>(_buffer.Pointer, (int)Bytes).Fill(1);
    }

    [GlobalCleanup]
    public void Cleanup() => _buffer.Dispose();

    [Benchmark]
    public long ReadSingleCore()
    {
        byte* p = _buffer.Pointer;
        Vector512<long> a = default, b = default, c = default, d = default;
        for (long i = 0; i < Bytes; i += 256)
        {
            a += Vector512.Load((long*)(p + i));
            b += Vector512.Load((long*)(p + i + 64));
            c += Vector512.Load((long*)(p + i + 128));
            d += Vector512.Load((long*)(p + i + 192));
        }
        return Vector512.Sum((a + b) + (c + d));
    }

    [Benchmark]
    public long ReadSingleCorePrefetch()
    {
        byte* p = _buffer.Pointer;
        Vector512<long> a = default, b = default, c = default, d = default;
        for (long i = 0; i < Bytes; i += 256)
        {
            Kernels.TernaryKernel.PrefetchWeights(p + i);
            Kernels.TernaryKernel.PrefetchWeights(p + i + 64);
            Kernels.TernaryKernel.PrefetchWeights(p + i + 128);
            Kernels.TernaryKernel.PrefetchWeights(p + i + 192);
            a += Vector512.Load((long*)(p + i));
            b += Vector512.Load((long*)(p + i + 64));
            c += Vector512.Load((long*)(p + i + 128));
            d += Vector512.Load((long*)(p + i + 192));
        }
        return Vector512.Sum((a + b) + (c + d));
    }
}
