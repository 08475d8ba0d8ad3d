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
    }
}
