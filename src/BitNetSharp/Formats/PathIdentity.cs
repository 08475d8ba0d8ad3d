using System.Runtime.InteropServices;

namespace BitNetSharp.Formats;

/// <summary>
/// Whether two paths name one file: outputs are checked against inputs with it, so that no spelling of an input (a
/// link to it or to a folder above it, another letter case where the file system folds case) lets a command replace it.
/// </summary>
public static unsafe class PathIdentity
{
    /// <summary>
    /// The size of the file a path names, through any symbolic links: <see cref="FileInfo.Length"/> is the link's own
    /// (the length of its target's name), so a model reached by a link (a Hugging Face cache snapshot is links into its
    /// blobs) read as 80 bytes — never large enough for huge pages — and a trace written through one as 0.00 MB.
    /// </summary>
    /// <remarks>A link that leads nowhere (dangling, a loop, a pipe such as /dev/fd/63's "pipe:[N]") is measured as the link itself.</remarks>
    public static long Length(string path)
    {
        var info = new FileInfo(path);
        try
        {
            if (info.LinkTarget is not null && info.ResolveLinkTarget(returnFinalTarget: true) is FileInfo { Exists: true } target) return target.Length;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
        return info.Length;
    }

    /// <summary>
    /// Whether two paths name the same file, however spelled: links resolved in every component, case folded where the
    /// file system folds it, and on Linux one folder reached through two mount points (a bind mount, or the same file
    /// system mounted twice) recognised by its device and inode. What is compared is the directory entry, not the file's
    /// contents: a hard link is another entry, and since every output is written to a temporary file renamed over its
    /// name, writing to a hard link of an input leaves the input as it was.
    /// </summary>
    public static bool SameFile(string a, string b)
    {
        string ra = Resolve(Path.GetFullPath(a)), rb = Resolve(Path.GetFullPath(b));
        if (string.Equals(ra, rb, Comparison)) return true;
        return string.Equals(Path.GetFileName(ra), Path.GetFileName(rb), Comparison)
            && Path.GetDirectoryName(ra) is { } da && Path.GetDirectoryName(rb) is { } db && SameFolder(da, db);
    }

    /// <summary>
    /// Whether two existing folders are one, by (device, inode) on Linux, where a bind mount shows one folder under two
    /// paths that no link resolution joins; elsewhere, and when either cannot be read, by their resolved paths.
    /// </summary>
    public static bool SameFolder(string a, string b)
    {
        string ra = Resolve(Path.TrimEndingDirectorySeparator(Path.GetFullPath(a)));
        string rb = Resolve(Path.TrimEndingDirectorySeparator(Path.GetFullPath(b)));
        if (string.Equals(ra, rb, Comparison)) return true;
        return FileId(ra) is { } ia && FileId(rb) is { } ib && ia == ib;
    }

    /// <summary>
    /// (device, inode) of an existing path, links followed; null where it does not exist, cannot be read, or the
    /// platform has no statx (not Linux, a libc older than glibc 2.28).
    /// </summary>
    public static (uint Major, uint Minor, ulong Inode)? FileId(string path)
    {
        if (!OperatingSystem.IsLinux() || !_statxAvailable) return null;
        // struct statx has one layout on every Linux architecture: 256 bytes, stx_ino at 32, stx_dev_major/minor at 136/140.
        byte* buffer = stackalloc byte[256];
        try
        {
            if (statx(AtFdCwd, path, 0, StatxIno, buffer) != 0 || (*(uint*)buffer & StatxIno) == 0) return null;
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            _statxAvailable = false;
            return null;
        }
        return (*(uint*)(buffer + 136), *(uint*)(buffer + 140), *(ulong*)(buffer + 32));
    }

    /// <summary>
    /// Whether the path exists (links followed) and is neither a regular file nor a folder: a FIFO, a device or a socket
    /// (/dev/null, /dev/stdout, bash's &gt;(…) pipes). Such outputs are written in place, never renamed over. Linux only;
    /// elsewhere, or where statx is missing, false.
    /// </summary>
    public static bool IsSpecialFile(string path)
    {
        if (!OperatingSystem.IsLinux() || !_statxAvailable) return false;
        // stx_mode: a 16-bit field at offset 28 of struct statx; S_IFMT 0xF000, regular 0x8000, folder 0x4000.
        byte* buffer = stackalloc byte[256];
        try
        {
            if (statx(AtFdCwd, path, 0, StatxType, buffer) != 0 || (*(uint*)buffer & StatxType) == 0) return false;
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            _statxAvailable = false;
            return false;
        }
        int type = *(ushort*)(buffer + 28) & 0xF000;
        return type is not (0x8000 or 0x4000);
    }

    /// <summary>
    /// Refuses a path that is a named pipe, a device or a socket where a file is read whole or mapped (a model, its
    /// config.json): opening a pipe waits for a writer, and `bitnet generate -m FIFO` hung there, the first SIGTERM not
    /// ending it. <paramref name="what"/> names what the file was to be.
    /// </summary>
    /// <exception cref="ModelFormatException">It is one.</exception>
    public static void RequireRegularFile(string path, string what)
    {
        if (IsSpecialFile(path))
            throw new ModelFormatException(path, $"is not a regular file (a named pipe, a device or a socket); {what} is mapped or read whole, so save it to a file and pass that");
    }

    private const uint StatxType = 0x1;
    private const int AtFdCwd = -100;
    private const uint StatxIno = 0x100;
    private static volatile bool _statxAvailable = true;

    [DllImport("libc", SetLastError = true)]
    private static extern int statx(int dirfd, [MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags, uint mask, byte* buffer);

    /// <summary>How paths compare here: case folded on Windows and macOS, whose file systems fold it by default.</summary>
    public static StringComparison Comparison =>
        OperatingSystem.IsWindows() || OperatingSystem.IsMacOS() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;

    /// <summary>
    /// The path with every symbolic link resolved, in the folders above it as well as the file itself (a link to the
    /// model's folder made the same file look like another: convert replaced its own input). Parts that do not exist
    /// yet are kept as written.
    /// </summary>
    public static string Resolve(string full)
    {
        try
        {
            string root = Path.GetPathRoot(full) ?? "";
            string current = root;
            int hops = 0;
            var parts = new Queue<string>(full[root.Length..].Split(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries));
            while (parts.Count > 0)
            {
                string next = Path.Combine(current, parts.Dequeue());
                FileSystemInfo info = Directory.Exists(next) ? new DirectoryInfo(next) : new FileInfo(next);
                if (info.Exists && info.LinkTarget is { } target && ++hops <= 40)
                {
                    // Resolve the target's own components too: it may be relative, or pass through other links.
                    string resolved = Path.GetFullPath(target, current);
                    string rest = string.Join(Path.DirectorySeparatorChar, parts);
                    parts.Clear();
                    string again = Path.GetPathRoot(resolved) ?? "";
                    foreach (var part in (rest.Length > 0 ? Path.Combine(resolved, rest) : resolved)[again.Length..]
                        .Split(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries))
                        parts.Enqueue(part);
                    current = again;
                    continue;
                }
                current = next;
            }
            return Path.GetFullPath(current);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            return full;
        }
    }
}
