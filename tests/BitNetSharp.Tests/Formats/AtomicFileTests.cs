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

/// <summary>Whether two spellings name one file (outputs are checked against inputs with it).</summary>
public class PathIdentityTests
{
    /// <summary>
    /// ".." is read as .NET reads it, by spelling before any link (File APIs make a path full first): link/../m.gguf
    /// opens the m.gguf beside the link, and is that file, not the one beside the link's target (the kernel's reading,
    /// which a review proposed; .NET never opens that one through this spelling).
    /// </summary>
    [Fact]
    public void DotDotIsReadAsDotNetOpensIt()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS(), "symbolic links without privileges");
        using var dir = new TestGguf.TempDirectory();
        Directory.CreateDirectory(Path.Combine(dir.Path, "x", "y"));
        Directory.CreateDirectory(Path.Combine(dir.Path, "a"));
        Directory.CreateSymbolicLink(Path.Combine(dir.Path, "a", "link"), Path.Combine(dir.Path, "x", "y"));
        string besideTarget = Path.Combine(dir.Path, "x", "m.gguf"), besideLink = Path.Combine(dir.Path, "a", "m.gguf");
        File.WriteAllText(besideTarget, "target's");
        File.WriteAllText(besideLink, "link's");
        string spelled = Path.Combine(dir.Path, "a", "link", "..", "m.gguf");
        Assert.Equal("link's", File.ReadAllText(spelled));
        Assert.True(PathIdentity.SameFile(spelled, besideLink));
        Assert.False(PathIdentity.SameFile(spelled, besideTarget));
        Assert.True(PathIdentity.SameFile(Path.Combine(dir.Path, "a", "link", "..", "link", "z", "..", "..", "m.gguf"), besideLink));
    }
}
