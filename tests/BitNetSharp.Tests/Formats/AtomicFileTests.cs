using BitNetSharp.Formats;
using BitNetSharp.Tests.Formats;

namespace BitNetSharp.Tests.FormatsAtomic;

/// <summary>Which temporaries a writer's cleanup takes as a killed writer's.</summary>
public class AtomicFileTests
{
    /// <summary>
    /// A temporary a writer holds open is live whatever its PID says (a writer in another PID namespace sharing the
    /// folder looks dead here, and its temporary was deleted before its rename, which then lost the file); one nobody
    /// holds is a killed writer's and goes, even with this process's PID (a container's PID 1 after a restart: those
    /// were never removed).
    /// </summary>
    [Fact]
    public void AHeldTemporaryIsLiveAndAnUnheldOneGoesWhateverItsPid()
    {
        using var dir = new TestGguf.TempDirectory();
        const int missing = int.MaxValue - 7; // no such PID
        string Temp(int pid) => dir.File($".out.gguf.{pid}.{Guid.NewGuid():N}.tmp");
        string held = Temp(missing), dead = Temp(missing), mine = Temp(Environment.ProcessId);
        foreach (var f in new[] { held, dead, mine }) File.WriteAllText(f, "partial");
        using (new FileStream(held, FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
            Assert.Equal(2, AtomicFile.RemoveStaleTemporaries(dir.Path, "out.gguf"));
        Assert.True(File.Exists(held));
        Assert.False(File.Exists(dead));
        Assert.False(File.Exists(mine));
    }
}
