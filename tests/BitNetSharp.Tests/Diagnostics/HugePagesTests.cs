using BitNetSharp.Memory;

namespace BitNetSharp.Tests.Diagnostics;

public class HugePagesTests
{
    /// <summary>
    /// The memory `--weight-pages auto` may use is bounded by the container's cgroup limit as well as by the host's
    /// MemAvailable (which alone let a pod limited to 192 MiB copy a model it could not hold): cgroup v2 and v1 files
    /// laid out as a container sees them, with page cache (inactive file pages) counted as reclaimable.
    /// </summary>
    [Fact]
    public void CgroupHeadroomIsTheLimitLessTheUsageThatCannotBeReclaimed()
    {
        var root = Directory.CreateTempSubdirectory("bitnet-cgroup-").FullName;
        try
        {
            string self = Path.Join(root, "self-cgroup");
            void Write(string relative, string text)
            {
                string path = Path.Join(root, relative);
                Directory.CreateDirectory(Path.GetDirectoryName(path)!);
                File.WriteAllText(path, text);
            }

            // v2, the process's own cgroup path under the root (a host or a container without a cgroup namespace).
            File.WriteAllText(self, "0::/kubepods/pod1/c1\n");
            Write("kubepods/pod1/c1/memory.max", "201326592\n"); // 192 MiB
            Write("kubepods/pod1/c1/memory.current", "150000000\n");
            Write("kubepods/pod1/c1/memory.stat", "anon 100000000\nfile 50000000\ninactive_file 30000000\nactive_file 20000000\n");
            Assert.Equal(201326592L - 150000000 + 30000000, HugePages.CgroupHeadroomBytes(root, self));
            // No limit on the process's cgroup, none above it: none from the cgroup.
            Write("kubepods/pod1/c1/memory.max", "max\n");
            Assert.Null(HugePages.CgroupHeadroomBytes(root, self));
            // A limit on a parent (a pod's, a systemd slice's) binds the process too: the least headroom of the levels.
            Write("kubepods/pod1/memory.max", "300000000\n");
            Write("kubepods/pod1/memory.current", "280000000\n");
            Assert.Equal(20000000L, HugePages.CgroupHeadroomBytes(root, self));
            Write("kubepods/pod1/c1/memory.max", "160000000\n");
            Assert.Equal(20000000L, HugePages.CgroupHeadroomBytes(root, self)); // 160M − 150M + 30M = 40M at the leaf: the parent's is less
            Write("kubepods/pod1/memory.max", "max\n");
            Assert.Equal(40000000L, HugePages.CgroupHeadroomBytes(root, self));
            // Page cache counts as reclaimable up to the usage (an inactive_file above it is clamped).
            Write("kubepods/pod1/c1/memory.stat", "inactive_file 900000000\n");
            Assert.Equal(160000000L, HugePages.CgroupHeadroomBytes(root, self));
            // With MemAvailable: the lesser of the host's and the cgroup's.
            Write("meminfo", "MemTotal:       65536000 kB\nMemAvailable:   60000000 kB\n");
            Assert.Equal(160000000L, HugePages.AvailableMemoryBytes(Path.Join(root, "meminfo"), root, self));
            Write("kubepods/pod1/c1/memory.max", "max\n");
            Assert.Equal(60000000L * 1024, HugePages.AvailableMemoryBytes(Path.Join(root, "meminfo"), root, self));
            // A container with its own cgroup namespace sees "0::/" and its files at the root.
            File.WriteAllText(self, "0::/\n");
            Write("memory.max", "1073741824\n");
            Write("memory.current", "1100000000\n"); // over the limit (reclaim pending): no headroom, not negative
            Assert.Equal(0L, HugePages.CgroupHeadroomBytes(root, self));

            // v1: the memory controller's line, its directory under memory/ (here only the root one exists).
            File.WriteAllText(self, "12:pids:/x\n4:memory:/docker/abc\n0::/\n");
            Write("memory/memory.limit_in_bytes", "536870912\n");
            Write("memory/memory.usage_in_bytes", "100000000\n");
            Write("memory/memory.stat", "cache 60000000\ntotal_inactive_file 40000000\n");
            Assert.Equal(536870912L - 100000000 + 40000000, HugePages.CgroupHeadroomBytes(root, self));
            Write("memory/memory.limit_in_bytes", "9223372036854771712\n"); // v1's "no limit"
            Assert.Null(HugePages.CgroupHeadroomBytes(root, self));
            // The process's own v1 cgroup first (limited), not the unlimited root beside it; an ancestor's limit through
            // hierarchical_memory_limit.
            Write("memory/docker/abc/memory.limit_in_bytes", "268435456\n");
            Write("memory/docker/abc/memory.usage_in_bytes", "68435456\n");
            Write("memory/docker/abc/memory.stat", "total_inactive_file 0\nhierarchical_memory_limit 9223372036854771712\n");
            Assert.Equal(200000000L, HugePages.CgroupHeadroomBytes(root, self));
            Write("memory/docker/abc/memory.stat", "hierarchical_memory_limit 168435456\ntotal_inactive_file 0\n");
            Assert.Equal(100000000L, HugePages.CgroupHeadroomBytes(root, self));

            // Nothing readable: unknown.
            Assert.Null(HugePages.CgroupHeadroomBytes(Path.Join(root, "absent"), Path.Join(root, "absent-self")));
            File.WriteAllText(self, "0::/\n");
            File.WriteAllText(Path.Join(root, "memory.max"), "garbage\n");
            Assert.Null(HugePages.CgroupHeadroomBytes(root, self));
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

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
