using System.Diagnostics;
using System.Runtime.Intrinsics;
using BitNetSharp.Memory;
using BitNetSharp.Threading;

namespace BitNetSharp.Diagnostics;

/// <summary>
/// Read bandwidth of this machine with a given number of threads: each thread sums its slice of a buffer far larger
/// than the caches with the widest vectors. It is the ceiling for memory-bound decoding, measured in the same run as
/// the numbers it bounds (a shared or throttled machine moves both together, so their ratio holds).
/// </summary>
public sealed unsafe class MemoryBandwidth : IParallelWork, IDisposable
{
    private readonly NativeBuffer _buffer;
    private readonly long[] _sink;

    public MemoryBandwidth(long bytes = 1L << 30)
    {
        _buffer = new NativeBuffer(bytes / 256 * 256, zero: false);
        for (long i = 0; i < _buffer.ByteLength; i += 1 << 20)
            new Span<byte>(_buffer.Pointer + i, (int)Math.Min(1 << 20, _buffer.ByteLength - i)).Fill(1);
        _sink = new long[64];
    }

    /// <summary>GB/s (1e9 bytes) of the best of <paramref name="repetitions"/> full reads on <paramref name="pool"/>.</summary>
    public double Measure(WorkerPool pool, int repetitions = 5)
    {
        double best = 0;
        int chunks = (int)(_buffer.ByteLength / (1 << 20));
        for (int r = 0; r < repetitions; r++)
        {
            long start = Stopwatch.GetTimestamp();
            pool.Run(this, chunks);
            double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
            best = Math.Max(best, _buffer.ByteLength / seconds / 1e9);
        }
        return best;
    }

    /// <summary>The same access pattern as the weight kernels: 64-byte loads streamed in order with a software
    /// prefetch <see cref="Kernels.TernaryKernel.PrefetchDistance"/> ahead (the plain loop reads 15–40% slower here,
    /// and a probe slower than the kernels bounds nothing).</summary>
    void IParallelWork.Execute(int start, int end, int worker)
    {
        byte* p = _buffer.Pointer + ((long)start << 20);
        long n = (long)(end - start) << 20;
        long sum = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            Vector512<long> a = default, b = default, c = default, d = default;
            for (long i = 0; i < n; i += 256)
            {
                if (System.Runtime.Intrinsics.X86.Sse.IsSupported)
                {
                    System.Runtime.Intrinsics.X86.Sse.Prefetch0(p + i + Kernels.TernaryKernel.PrefetchDistance);
                    System.Runtime.Intrinsics.X86.Sse.Prefetch0(p + i + 128 + Kernels.TernaryKernel.PrefetchDistance);
                }
                a += Vector512.Load((long*)(p + i));
                b += Vector512.Load((long*)(p + i + 64));
                c += Vector512.Load((long*)(p + i + 128));
                d += Vector512.Load((long*)(p + i + 192));
            }
            sum = Vector512.Sum((a + b) + (c + d));
        }
        else
        {
            Vector128<long> a = default, b = default, c = default, d = default;
            for (long i = 0; i < n; i += 64)
            {
                a += Vector128.Load((long*)(p + i));
                b += Vector128.Load((long*)(p + i + 16));
                c += Vector128.Load((long*)(p + i + 32));
                d += Vector128.Load((long*)(p + i + 48));
            }
            sum = Vector128.Sum((a + b) + (c + d));
        }
        _sink[worker % _sink.Length] += sum;
    }

    public void Dispose() => _buffer.Dispose();
}
