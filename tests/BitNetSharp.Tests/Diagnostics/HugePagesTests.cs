using BitNetSharp.Memory;

namespace BitNetSharp.Tests.Diagnostics;

public class HugePagesTests
{
    /// <summary>With --hugepages a large runtime buffer is 2 MiB-aligned and advised; small ones and the default path are untouched.</summary>
    [Fact]
    public unsafe void LargeBuffersAreAlignedAndAdvised()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "transparent huge pages are Linux-only");
        Assert.SkipWhen(HugePages.SystemSetting() is { } s && s.Contains("[never]"), "transparent huge pages are set to never on this machine");
        long before = HugePages.AdvisedBytes;
        HugePages.Enabled = true;
        try
        {
            using var big = new NativeBuffer(3 * HugePages.PageBytes + 5);
            using var small = new NativeBuffer(4096);
            Assert.Equal(0, (long)big.Pointer % HugePages.PageBytes);
            Assert.Equal(0, HugePages.LastError);
            Assert.True(HugePages.AdvisedBytes - before >= 4 * HugePages.PageBytes, $"advised {HugePages.AdvisedBytes - before} bytes");
            big.AsSpan<byte>().Fill(1); // usable to its end
            Assert.Equal(0, (long)small.Pointer % NativeBuffer.Alignment);
        }
        finally
        {
            HugePages.Enabled = false;
        }
        Assert.True(HugePages.AnonHugePagesBytes() >= 0);

        // The bandwidth probe's buffer is the tool's own, not a runtime buffer: `bench --hugepages` reported 4 GiB
        // "advised" and a huge-page peak of its 1 GiB probes.
        long beforeProbe = HugePages.AdvisedBytes;
        using (var probe = new BitNetSharp.Diagnostics.MemoryBandwidth(8L << 20)) Assert.Equal(HugePages.Available, probe.InHugePages);
        Assert.Equal(beforeProbe, HugePages.AdvisedBytes);
    }
}

public class BandwidthProbeTests
{
    /// <summary>The probe measures every pattern and reports the best of them as the bound.</summary>
    [Fact]
    public void TheBoundIsTheBestPattern()
    {
        using var pool = new BitNetSharp.Threading.WorkerPool(2);
        using var probe = new BitNetSharp.Diagnostics.MemoryBandwidth(64L << 20);
        double best = probe.Measure(pool, repetitions: 1);
        Assert.Equal(Enum.GetValues<BitNetSharp.Diagnostics.BandwidthPattern>().Length, probe.ByPattern.Count);
        Assert.All(probe.ByPattern.Values, v => Assert.True(v > 0 && v <= best));
        Assert.Equal(best, probe.ByPattern[probe.BestPattern]);
        // A plain loop over 2 MiB pages reads faster than over 4 KiB pages, so where they exist the probe reads them.
        Assert.Equal(HugePages.Available, probe.InHugePages);
    }

    /// <summary>Under one 4 MiB block the probe read nothing and reported 0 GB/s; it is refused naming the size.</summary>
    [Fact]
    public void AProbeUnderOneBlockIsRefused()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new BitNetSharp.Diagnostics.MemoryBandwidth(1L << 20));
        Assert.Equal("bytes", e.ParamName);
        using var ok = new BitNetSharp.Diagnostics.MemoryBandwidth(4L << 20);
    }
}
