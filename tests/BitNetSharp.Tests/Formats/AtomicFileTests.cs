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
    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern int mkfifo([System.Runtime.InteropServices.MarshalAs(System.Runtime.InteropServices.UnmanagedType.LPUTF8Str)] string path, uint mode);

    /// <summary>
    /// A symbolic link at the output stays a link, its target replaced; it was replaced by a regular file, so the file
    /// it pointed to kept its old contents.
    /// </summary>
    [Fact]
    public void ALinkIsWrittenThroughAndStaysALink()
    {
        using var dir = new TestGguf.TempDirectory();
        string target = dir.File("real.json"), link = dir.File("link.json");
        File.WriteAllText(target, "old");
        File.CreateSymbolicLink(link, target);
        AtomicFile.Write(link, s => s.Write("new"u8));
        Assert.Equal(target, new FileInfo(link).LinkTarget);
        Assert.Equal("new", File.ReadAllText(target));
        Assert.Empty(Directory.GetFiles(dir.Path, ".*.tmp"));
    }

    /// <summary>
    /// A FIFO at the output is written into, and stays a FIFO: the rename replaced the node with a file, and its reader
    /// got nothing (as root, an output at /dev/full replaced the device node the same way).
    /// </summary>
    [Fact]
    public void AFifoIsWrittenInPlace()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "FIFOs are made with Linux's mkfifo here.");
        using var dir = new TestGguf.TempDirectory();
        string fifo = dir.File("ids.fifo");
        Assert.Equal(0, mkfifo(fifo, 0x180));
        string? read = null;
        var reader = new Thread(() => read = File.ReadAllText(fifo)) { IsBackground = true };
        reader.Start();
        AtomicFile.Write(fifo, s => s.Write("through the pipe"u8));
        Assert.True(reader.Join(TimeSpan.FromSeconds(30)), "the FIFO's reader got no end of file");
        Assert.Equal("through the pipe", read);
        Assert.True(PathIdentity.IsSpecialFile(fifo), "the FIFO was replaced by a regular file");
        Assert.False(PathIdentity.IsSpecialFile(dir.File("none")));
        Assert.False(PathIdentity.IsSpecialFile(dir.Path));

        // An output that seeks cannot go through a pipe: said, naming it (NotSupportedException before).
        var seeker = new Thread(() => { try { using var f = File.OpenRead(fifo); f.CopyTo(Stream.Null); } catch (IOException) { } }) { IsBackground = true };
        seeker.Start();
        var e = Assert.Throws<IOException>(() => AtomicFile.Write(fifo, s => { s.Write("x"u8); s.Seek(0, SeekOrigin.Begin); }));
        Assert.Contains(fifo, e.Message);
        Assert.Contains("pipe or device", e.Message);
        seeker.Join(TimeSpan.FromSeconds(30));
    }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern int open([System.Runtime.InteropServices.MarshalAs(System.Runtime.InteropServices.UnmanagedType.LPUTF8Str)] string path, int flags);

    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern int close(int fd);

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern int lchown([System.Runtime.InteropServices.MarshalAs(System.Runtime.InteropServices.UnmanagedType.LPUTF8Str)] string path, int owner, int group);

    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern int geteuid();

    /// <summary>
    /// A descriptor named as a path (/proc/self/fd/N, as /dev/stdout is): written through at its offset, the file it is
    /// open on kept. Resolved as a path, it led to that file, which the rename replaced (`--ids-out /dev/stdout &gt; out.txt`
    /// lost the text already in out.txt).
    /// </summary>
    [Fact]
    public void ADescriptorIsWrittenThrough()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "/proc/self/fd is Linux's.");
        using var dir = new TestGguf.TempDirectory();
        string file = dir.File("stdout.txt");
        File.WriteAllText(file, "generated text\n");
        var before = PathIdentity.FileId(file);
        int fd = open(file, 0x1 | 0x400 | 0x80000); // O_WRONLY | O_APPEND | O_CLOEXEC
        Assert.True(fd >= 0);
        try
        {
            AtomicFile.Write($"/proc/self/fd/{fd}", s => s.Write("{\"ids\":[1]}\n"u8));
        }
        finally
        {
            close(fd);
        }
        Assert.Equal("generated text\n{\"ids\":[1]}\n", File.ReadAllText(file));
        Assert.Equal(before, PathIdentity.FileId(file));
        Assert.True(AtomicFile.WritesInPlace("/dev/stdout"));
        Assert.False(AtomicFile.WritesInPlace(file));
    }

    /// <summary>A link to nowhere, and a loop of links, are said before anything is written (a loop replaced whichever link the resolution stopped on).</summary>
    [Fact]
    public void ALinkToNowhereOrALoopIsSaid()
    {
        using var dir = new TestGguf.TempDirectory();
        string dangling = dir.File("dangling.json");
        File.CreateSymbolicLink(dangling, dir.File("gone/out.json"));
        var e = Assert.Throws<IOException>(() => AtomicFile.Write(dangling, s => s.Write("x"u8)));
        Assert.Contains("which does not exist", e.Message);
        Assert.Equal(dir.File("gone/out.json"), new FileInfo(dangling).LinkTarget);
        string a = dir.File("a"), b = dir.File("b");
        File.CreateSymbolicLink(a, b);
        File.CreateSymbolicLink(b, a);
        e = Assert.Throws<IOException>(() => AtomicFile.Write(a, s => s.Write("x"u8)));
        Assert.Contains("loop", e.Message);
        Assert.Equal(b, new FileInfo(a).LinkTarget);
        Assert.Equal(a, new FileInfo(b).LinkTarget);
    }

    /// <summary>
    /// Another user's link in a sticky world-writable folder (a /tmp) is not followed, as the kernel would not follow it:
    /// read by hand, it let that user point our output at any file of ours (the write replaced the file it named).
    /// </summary>
    [Fact]
    public void AnotherUsersLinkInASharedFolderIsNotFollowed()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "Linux's protected_symlinks.");
        Assert.SkipUnless(File.Exists("/proc/sys/fs/protected_symlinks") && File.ReadAllText("/proc/sys/fs/protected_symlinks").Trim() == "1",
            "fs.protected_symlinks is off here, so the kernel follows such links too.");
        Assert.SkipUnless(geteuid() == 0, "making a link owned by another user needs root.");
        using var dir = new TestGguf.TempDirectory();
        string shared = Directory.CreateDirectory(dir.File("shared")).FullName;
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(shared, (UnixFileMode)0x3FF); // 1777: sticky, world-writable
        string precious = dir.File("authorized_keys"), link = Path.Combine(shared, "out.json");
        File.WriteAllText(precious, "keep me");
        File.CreateSymbolicLink(link, precious);
        Assert.Equal(0, lchown(link, 65534, 65534));
        var e = Assert.Throws<IOException>(() => AtomicFile.Write(link, s => s.Write("attacker's choice"u8)));
        Assert.Contains("does not follow", e.Message);
        Assert.Equal("keep me", File.ReadAllText(precious));
    }

    /// <summary>A folder that refuses the temporary file: the error names the output, not the hidden temporary.</summary>
    [Fact]
    public void AFailedWriteNamesTheOutputNotItsTemporary()
    {
        using var dir = new TestGguf.TempDirectory();
        using var unwritable = new UnwritableFolder(dir.Path);
        string? folder = unwritable.Path;
        Assert.SkipWhen(folder is null, UnwritableFolder.None);
        string output = Path.Combine(folder, "out.json");
        var e = Assert.ThrowsAny<IOException>(() => AtomicFile.Write(output, s => s.Write("x"u8)));
        Assert.Contains("cannot write " + output, e.Message);
        Assert.DoesNotContain(".tmp", e.Message);
    }
}

/// <summary>Whether two spellings name one file (outputs are checked against inputs with it).</summary>
public class PathIdentityTests
{
    /// <summary>
    /// A file's size through links is its target's (a linked model read as its link's 80 bytes); a link that leads
    /// nowhere a size can be read (dangling, a loop, a pipe's /proc/self/fd entry "pipe:[N]", as bash's &gt;(…) gives)
    /// is measured as the link, never an exception: the first version threw after a trace was written to a pipe.
    /// </summary>
    [Fact]
    public void LengthFollowsLinksAndNeverThrowsOnOnesThatLeadNowhere()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "symbolic links and /proc/self/fd");
        using var dir = new TestGguf.TempDirectory();
        File.WriteAllBytes(dir.File("target"), new byte[12345]);
        File.CreateSymbolicLink(dir.File("link"), "target");
        File.CreateSymbolicLink(dir.File("chain"), dir.File("link"));
        Assert.Equal(12345, PathIdentity.Length(dir.File("link")));
        Assert.Equal(12345, PathIdentity.Length(dir.File("chain")));
        File.CreateSymbolicLink(dir.File("dangling"), dir.File("gone"));
        Assert.Equal(new FileInfo(dir.File("dangling")).Length, PathIdentity.Length(dir.File("dangling")));
        File.CreateSymbolicLink(dir.File("loop-a"), dir.File("loop-b"));
        File.CreateSymbolicLink(dir.File("loop-b"), dir.File("loop-a"));
        PathIdentity.Length(dir.File("loop-a"));
        using var pipe = new System.IO.Pipes.AnonymousPipeServerStream(System.IO.Pipes.PipeDirection.Out);
        string fd = $"/proc/self/fd/{pipe.SafePipeHandle.DangerousGetHandle()}";
        Assert.StartsWith("pipe:", new FileInfo(fd).LinkTarget);
        PathIdentity.Length(fd);
    }

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

    /// <summary>
    /// A bind mount shows one folder under a second path that no link resolution joins: the string compare called the
    /// same file two files, so an output spelled through the mount replaced its input. A hard link is another entry
    /// (an output written to it is renamed over that name, and the input keeps its bytes), so it is not the same.
    /// </summary>
    [Fact]
    public void AFolderSeenThroughABindMountIsTheSameFolder()
    {
        using var dir = new TestGguf.TempDirectory();
        Directory.CreateDirectory(dir.File("real"));
        Directory.CreateDirectory(dir.File("view"));
        using var mount = BindMount.TryCreate(dir.File("real"), dir.File("view"));
        Assert.SkipWhen(mount is null, "bind mounts need root (mount --bind); this machine refused one");
        File.WriteAllText(dir.File("real/m.gguf"), "model");
        Assert.Equal("model", File.ReadAllText(dir.File("view/m.gguf")));
        Assert.True(PathIdentity.SameFile(dir.File("view/m.gguf"), dir.File("real/m.gguf")));
        Assert.True(PathIdentity.SameFolder(dir.File("view"), dir.File("real")));
        Assert.False(PathIdentity.SameFile(dir.File("view/other.gguf"), dir.File("real/m.gguf")));
        Assert.False(PathIdentity.SameFolder(dir.File("view"), dir.Path));
    }

    [Fact]
    public void AHardLinkIsAnotherEntry()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "ln");
        using var dir = new TestGguf.TempDirectory();
        File.WriteAllText(dir.File("m.gguf"), "model");
        using (var ln = System.Diagnostics.Process.Start("ln", [dir.File("m.gguf"), dir.File("h.gguf")])) ln.WaitForExit();
        Assert.Equal(PathIdentity.FileId(dir.File("m.gguf")), PathIdentity.FileId(dir.File("h.gguf")));
        Assert.NotNull(PathIdentity.FileId(dir.File("m.gguf")));
        // Two files are two ids, two folders two folders: a misread struct (zeros, padding) would make everything one.
        File.WriteAllText(dir.File("other.gguf"), "other");
        Assert.NotEqual(PathIdentity.FileId(dir.File("m.gguf")), PathIdentity.FileId(dir.File("other.gguf")));
        Directory.CreateDirectory(dir.File("x"));
        Directory.CreateDirectory(dir.File("y"));
        Assert.False(PathIdentity.SameFolder(dir.File("x"), dir.File("y")));
        Assert.True(PathIdentity.SameFolder(dir.File("x"), dir.File("x/../x")));
        Assert.False(PathIdentity.SameFile(dir.File("h.gguf"), dir.File("m.gguf")));
        AtomicFile.Write(dir.File("h.gguf"), s => s.Write("new"u8));
        Assert.Equal("model", File.ReadAllText(dir.File("m.gguf")));
    }
}

/// <summary>A bind mount of one folder onto another for a test, unmounted on dispose; null where mount is refused (not root).</summary>
internal sealed class BindMount : IDisposable
{
    private readonly string _target;
    private BindMount(string target) => _target = target;

    public static BindMount? TryCreate(string source, string target)
    {
        if (!OperatingSystem.IsLinux()) return null;
        try
        {
            using var p = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("mount", ["--bind", source, target])
                { RedirectStandardError = true, RedirectStandardOutput = true })!;
            p.WaitForExit();
            return p.ExitCode == 0 ? new BindMount(target) : null;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return null; // no mount binary
        }
    }

    public void Dispose()
    {
        using var p = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("umount", [_target])
            { RedirectStandardError = true, RedirectStandardOutput = true })!;
        p.WaitForExit();
    }
}
