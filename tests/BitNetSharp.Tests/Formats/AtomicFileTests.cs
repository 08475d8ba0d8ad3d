using BitNetSharp.Formats;
using BitNetSharp.Tests.Formats;

namespace BitNetSharp.Tests.FormatsAtomic;

/// <summary>Which temporaries a writer's cleanup takes as a killed writer's.</summary>
public class AtomicFileTests
{
    /// <summary>
    /// A temporary whose PID is not running here is stale only once nobody holds it and nobody has written it for
    /// <see cref="AtomicFile.StaleAfter"/>: a writer in another PID namespace or on another host sharing the folder looks
    /// dead here, and its temporary was deleted before its rename (which then failed and lost the file).
    /// </summary>
    [Fact]
    public void OnlyAnUntouchedUnheldTemporaryOfAMissingProcessIsRemoved()
    {
        using var dir = new TestGguf.TempDirectory();
        const int missing = int.MaxValue - 7; // no such PID
        string Temp(string tag) => dir.File($".out.gguf.{missing}.{Guid.NewGuid():N}.tmp");
        string fresh = Temp("fresh"), old = Temp("old"), held = Temp("held");
        foreach (var f in new[] { fresh, old, held }) File.WriteAllText(f, "partial");
        var past = DateTime.UtcNow - AtomicFile.StaleAfter - TimeSpan.FromMinutes(1);
        File.SetLastWriteTimeUtc(old, past);
        File.SetLastWriteTimeUtc(held, past);
        using (new FileStream(held, FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
            Assert.Equal(1, AtomicFile.RemoveStaleTemporaries(dir.Path, "out.gguf"));
        Assert.True(File.Exists(fresh));
        Assert.False(File.Exists(old));
        Assert.True(File.Exists(held));
    }
}
