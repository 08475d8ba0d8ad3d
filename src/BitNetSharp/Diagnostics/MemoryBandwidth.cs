using System.Diagnostics;
using System.Runtime.Intrinsics;
using BitNetSharp.Memory;
using BitNetSharp.Threading;

namespace BitNetSharp.Diagnostics;

/// <summary>The access patterns the bandwidth probe tries (the bound is the best of them).</summary>
public enum BandwidthPattern
{
    /// <summary>64-byte loads streamed in order, each line prefetched <see cref="Kernels.TernaryKernel.PrefetchDistance"/> ahead as the kernels do (<see cref="Kernels.TernaryKernel.PrefetchWeights"/>).</summary>
    Prefetch,

    /// <summary>The plain streaming sum: widest loads in order, the hardware prefetcher alone.</summary>
    Plain,

    /// <summary>Four interleaved streams per thread (four quarters of its slice read side by side, spaced off a power of two): more lines in flight.</summary>
    MultiStream,

    /// <summary>Four streams per thread as <see cref="MultiStream"/>, each line prefetched non-temporally 2 KiB ahead, as the
    /// ternary kernels' and the F16 head's stream loops do (prefetchnta: into L1, not installed in L2 or L3).</summary>
    MultiStreamNonTemporal,
}

/// <summary>
/// Read bandwidth of this machine with a given number of threads: each thread sums its contiguous slice of a buffer far
/// larger than the caches, in each of the <see cref="BandwidthPattern"/>s, and the bound is the best — so no simple
/// loop reads faster than it says (issue #17: a probe slower than a plain loop made "percent of bound" flattering).
/// It is the ceiling for memory-bound decoding, measured in the same run as the numbers it bounds.
/// </summary>
public sealed unsafe class MemoryBandwidth : IParallelWork, IDisposable
{
    private readonly NativeBuffer _buffer;
    private readonly long[] _sink;
    private BandwidthPattern _pattern;

    /// <summary>
    /// The last-level cache of this machine in bytes (Linux: the highest cache level in
    /// <paramref name="cpuRoot"/>/cpu*/cache/index*, its distinct instances summed, as `lscpu` counts them); null where
    /// it cannot be read. A probe buffer not far larger than it reads the cache, not memory.
    /// </summary>
    public static long? LastLevelCacheBytes(string cpuRoot = "/sys/devices/system/cpu") =>
        LastLevelCache(cpuRoot) is { } c ? c.InstanceBytes * c.Instances : null;

    /// <summary>
    /// The last-level cache <paramref name="threads"/> threads can fill: one instance's size times the instances they
    /// can spread over (an EPYC's L3 is one per CCX or CCD; a thread reaches its own). The sum over the machine (384 MiB
    /// on a 12-CCD part) called a 1 GiB probe cache-sized there.
    /// </summary>
    public static long? ReachableCacheBytes(int threads, string cpuRoot = "/sys/devices/system/cpu") =>
        LastLevelCache(cpuRoot) is { } c ? c.InstanceBytes * Math.Min(c.Instances, Math.Max(1, threads)) : null;

    /// <summary>The highest cache level's largest instance size and its number of distinct instances; null where unknown.</summary>
    public static (long InstanceBytes, int Instances)? LastLevelCache(string cpuRoot = "/sys/devices/system/cpu")
    {
        try
        {
            if (!Directory.Exists(cpuRoot)) return null;
            int best = 0;
            var instances = new Dictionary<string, long>(StringComparer.Ordinal);
            foreach (var cpu in Directory.EnumerateDirectories(cpuRoot, "cpu*"))
            {
                string caches = Path.Combine(cpu, "cache");
                if (!Directory.Exists(caches)) continue;
                foreach (var index in Directory.EnumerateDirectories(caches, "index*"))
                {
                    string levelFile = Path.Combine(index, "level"), sizeFile = Path.Combine(index, "size");
                    if (!File.Exists(levelFile) || !File.Exists(sizeFile)) continue;
                    if (File.Exists(Path.Combine(index, "type")) && File.ReadAllText(Path.Combine(index, "type")).Trim() == "Instruction") continue;
                    if (!int.TryParse(File.ReadAllText(levelFile).Trim(), System.Globalization.CultureInfo.InvariantCulture, out int level)) continue;
                    if (ParseCacheSize(File.ReadAllText(sizeFile).Trim()) is not { } bytes) continue;
                    if (level < best) continue;
                    if (level > best)
                    {
                        best = level;
                        instances.Clear();
                    }
                    string shared = Path.Combine(index, "shared_cpu_list");
                    string key = File.Exists(shared) ? File.ReadAllText(shared).Trim() : cpu;
                    instances[key] = bytes;
                }
            }
            long largest = 0;
            foreach (var v in instances.Values) largest = Math.Max(largest, v);
            return largest > 0 ? (largest, instances.Count) : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>sysfs's cache size ("16384K", "32M", "512"), in bytes; null when it is not one.</summary>
    internal static long? ParseCacheSize(string text)
    {
        if (text.Length == 0) return null;
        long unit = char.ToUpperInvariant(text[^1]) switch { 'K' => 1L << 10, 'M' => 1L << 20, 'G' => 1L << 30, _ => 1 };
        var digits = unit == 1 ? text : text[..^1];
        return long.TryParse(digits, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long n) && n > 0 ? n * unit : null;
    }

    /// <exception cref="ArgumentOutOfRangeException">Under 4 MiB: the probe reads whole 4 MiB blocks (it measured 0 bytes and reported 0 GB/s).</exception>
    public MemoryBandwidth(long bytes = 1L << 30)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(bytes, 4L << 20);
        // In 2 MiB pages where Linux offers them: a plain loop over huge pages reads faster than over 4 KiB pages (fewer
        // TLB misses; 72–77 against 56–63 GB/s on two Zen 5 threads), and the model's weights load into them too.
        _buffer = new NativeBuffer(bytes / (4 << 20) * (4 << 20), zero: false, hugePages: Memory.HugePages.Available);
        for (long i = 0; i < _buffer.ByteLength; i += 1 << 20)
            new Span<byte>(_buffer.Pointer + i, (int)Math.Min(1 << 20, _buffer.ByteLength - i)).Fill(1);
        _sink = new long[64];
    }

    /// <summary>The pattern that gave the last <see cref="Measure"/>'s result, and every pattern's best GB/s.</summary>
    public BandwidthPattern BestPattern { get; private set; }

    /// <summary>Whether the probe's buffer is in 2 MiB pages (advised; Linux with transparent huge pages available).</summary>
    public bool InHugePages => _buffer.InHugePages;

    public IReadOnlyDictionary<BandwidthPattern, double> ByPattern => _byPattern;

    private readonly Dictionary<BandwidthPattern, double> _byPattern = [];

    /// <summary>GB/s (1e9 bytes): the best over every pattern of the best of <paramref name="repetitions"/> full reads on <paramref name="pool"/>.</summary>
    public double Measure(WorkerPool pool, int repetitions = 5)
    {
        double best = 0;
        foreach (var pattern in Enum.GetValues<BandwidthPattern>())
        {
            double gbps = Measure(pool, pattern, repetitions);
            _byPattern[pattern] = gbps;
            if (gbps > best) (best, BestPattern) = (gbps, pattern);
        }
        return best;
    }

    /// <summary>The sum of the buffer's 8-byte words as one read in <paramref name="pattern"/> computes it: every pattern
    /// must read every byte once (a rate over bytes some pattern skipped or read twice would be wrong).</summary>
    internal long SumOnce(WorkerPool pool, BandwidthPattern pattern)
    {
        _pattern = pattern;
        Array.Clear(_sink);
        pool.Run(this, (int)(_buffer.ByteLength / (1 << 20)));
        long total = 0;
        foreach (long x in _sink) total = unchecked(total + x);
        return total;
    }

    internal long ByteLength => _buffer.ByteLength;

    /// <summary>GB/s of one pattern: the best of <paramref name="repetitions"/> full reads.</summary>
    public double Measure(WorkerPool pool, BandwidthPattern pattern, int repetitions)
    {
        _pattern = pattern;
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

    /// <summary>Each worker reads its contiguous slice of 1 MiB chunks (static slicing) in the current pattern.</summary>
    void IParallelWork.Execute(int start, int end, int worker)
    {
        byte* p = _buffer.Pointer + ((long)start << 20);
        long n = (long)(end - start) << 20;
        long sum = _pattern switch
        {
            BandwidthPattern.Prefetch => Stream(p, n, prefetch: true),
            BandwidthPattern.Plain => Stream(p, n, prefetch: false),
            BandwidthPattern.MultiStream => FourStreams(p, n, nonTemporal: false),
            _ => FourStreams(p, n, nonTemporal: true),
        };
        _sink[worker % _sink.Length] += sum;
    }

    private static long Stream(byte* p, long n, bool prefetch)
    {
        if (Vector512.IsHardwareAccelerated)
        {
            Vector512<long> a = default, b = default, c = default, d = default;
            for (long i = 0; i < n; i += 256)
            {
                if (prefetch && System.Runtime.Intrinsics.X86.Sse.IsSupported)
                {
                    Kernels.TernaryKernel.PrefetchWeights(p + i);
                    Kernels.TernaryKernel.PrefetchWeights(p + i + 64);
                    Kernels.TernaryKernel.PrefetchWeights(p + i + 128);
                    Kernels.TernaryKernel.PrefetchWeights(p + i + 192);
                }
                a += Vector512.Load((long*)(p + i));
                b += Vector512.Load((long*)(p + i + 64));
                c += Vector512.Load((long*)(p + i + 128));
                d += Vector512.Load((long*)(p + i + 192));
            }
            return Vector512.Sum((a + b) + (c + d));
        }
        if (Vector256.IsHardwareAccelerated)
        {
            Vector256<long> a = default, b = default, c = default, d = default;
            for (long i = 0; i < n; i += 128)
            {
                if (prefetch && System.Runtime.Intrinsics.X86.Sse.IsSupported)
                {
                    Kernels.TernaryKernel.PrefetchWeights(p + i);
                    Kernels.TernaryKernel.PrefetchWeights(p + i + 64);
                }
                a += Vector256.Load((long*)(p + i));
                b += Vector256.Load((long*)(p + i + 32));
                c += Vector256.Load((long*)(p + i + 64));
                d += Vector256.Load((long*)(p + i + 96));
            }
            return Vector256.Sum((a + b) + (c + d));
        }
        Vector128<long> e = default, f = default, g = default, h = default;
        for (long i = 0; i < n; i += 64)
        {
            e += Vector128.Load((long*)(p + i));
            f += Vector128.Load((long*)(p + i + 16));
            g += Vector128.Load((long*)(p + i + 32));
            h += Vector128.Load((long*)(p + i + 48));
        }
        return Vector128.Sum((e + f) + (g + h));
    }

    /// <summary>Four streams, one per quarter of the slice, one 64-byte line of each per iteration; with
    /// <paramref name="nonTemporal"/> each stream's line <see cref="StreamPrefetchBytes"/> ahead prefetched non-temporally.
    /// The quarters are shortened by <see cref="StreamStagger"/> each, so they start n/4 + 1 KiB apart rather than exactly a
    /// quarter (a power of two: 256 MiB on one thread): there the four streams hit the same cache sets and DRAM banks at
    /// once, and a C loop spaced so read 1.4× faster than this probe on a Zen 2 (15.9 against 24.6 GB/s), so the bound
    /// flattered every figure. The gaps between the quarters are read after them.</summary>
    private static long FourStreams(byte* p, long n, bool nonTemporal)
    {
        long q = (n - 3 * StreamStagger) / 4 / 64 * 64;
        if (q <= 0) return Stream(p, n, prefetch: false);
        long g = StreamStagger;
        byte* p0 = p, p1 = p + q + g, p2 = p + 2 * (q + g), p3 = p + 3 * (q + g);
        long sum = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            Vector512<long> a = default, b = default, c = default, d = default;
            for (long i = 0; i < q; i += 64)
            {
                if (nonTemporal) PrefetchNonTemporal(p0 + i, p1 + i, p2 + i, p3 + i);
                a += Vector512.Load((long*)(p0 + i));
                b += Vector512.Load((long*)(p1 + i));
                c += Vector512.Load((long*)(p2 + i));
                d += Vector512.Load((long*)(p3 + i));
            }
            sum = Vector512.Sum((a + b) + (c + d));
        }
        else
        {
            Vector256<long> a = default, b = default, c = default, d = default;
            for (long i = 0; i < q; i += 64)
            {
                if (nonTemporal) PrefetchNonTemporal(p0 + i, p1 + i, p2 + i, p3 + i);
                a += Vector256.Load((long*)(p0 + i)) + Vector256.Load((long*)(p0 + i + 32));
                b += Vector256.Load((long*)(p1 + i)) + Vector256.Load((long*)(p1 + i + 32));
                c += Vector256.Load((long*)(p2 + i)) + Vector256.Load((long*)(p2 + i + 32));
                d += Vector256.Load((long*)(p3 + i)) + Vector256.Load((long*)(p3 + i + 32));
            }
            sum = Vector256.Sum((a + b) + (c + d));
        }
        // The gaps between the quarters and the tail: every byte of the slice is read once, as the rate counts them.
        for (int k = 1; k <= 3; k++)
            for (long i = k * q + (k - 1) * g; i < k * (q + g); i += 8) sum += *(long*)(p + i);
        for (long i = 4 * q + 3 * g; i < n; i += 8) sum += *(long*)(p + i);
        return sum;
    }

    /// <summary>The gap after each of <see cref="FourStreams"/>' first three quarters (4 KiB), which moves their starts off a power-of-two spacing.</summary>
    private const long StreamStagger = 4096;

    /// <summary>How far ahead <see cref="BandwidthPattern.MultiStreamNonTemporal"/> prefetches each stream (the kernels' distance).</summary>
    private const long StreamPrefetchBytes = Kernels.Avx512TernaryKernel.Dot512<Kernels.ShiftSplit>.StreamPrefetchBytes;

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    private static void PrefetchNonTemporal(byte* p0, byte* p1, byte* p2, byte* p3)
    {
        if (!System.Runtime.Intrinsics.X86.Sse.IsSupported) return;
        System.Runtime.Intrinsics.X86.Sse.PrefetchNonTemporal(p0 + StreamPrefetchBytes);
        System.Runtime.Intrinsics.X86.Sse.PrefetchNonTemporal(p1 + StreamPrefetchBytes);
        System.Runtime.Intrinsics.X86.Sse.PrefetchNonTemporal(p2 + StreamPrefetchBytes);
        System.Runtime.Intrinsics.X86.Sse.PrefetchNonTemporal(p3 + StreamPrefetchBytes);
    }

    public void Dispose() => _buffer.Dispose();
}
