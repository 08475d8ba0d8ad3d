using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;

namespace BitNetSharp.Formats;

/// <summary>
/// Writes a whole file so that its name only ever holds a complete version: the bytes go to a hidden temporary file in
/// the same directory (<c>.NAME.PID.GUID.tmp</c>, so the rename never crosses file systems), which is flushed to disk
/// and renamed over <c>NAME</c>; on Linux the directory is then synced so the rename survives a power cut too. A kill
/// at any point leaves either the previous file or the new one. The temporary file of a writer that was killed is
/// removed by the next write to the same name (only when its process is gone). A symbolic link at the name stays a link:
/// the file it points to is the one replaced. A FIFO, device or socket at the name (/dev/null, /dev/stdout, a pipe) is
/// written in place: a rename would replace the node itself (as root, an output at /dev/full replaced the device).
/// </summary>
public static class AtomicFile
{
    private const string TempSuffix = ".tmp";

    /// <summary>Writes <paramref name="path"/> with <paramref name="write"/> through a temporary file and a rename.</summary>
    public static void Write(string path, Action<Stream> write, int bufferSize = 1 << 20)
    {
        ArgumentNullException.ThrowIfNull(write);
        using var file = Begin(path, bufferSize);
        try
        {
            write(file.Stream);
        }
        catch (NotSupportedException e) when (file.InPlace)
        {
            throw new IOException($"{file.Path} is a pipe or device, and this output is written out of order (it seeks); give a regular file.", e);
        }
        file.Commit();
    }

    /// <summary>
    /// Starts writing <paramref name="path"/> for a writer that streams its output over a while (a logits file, an
    /// export): write <see cref="PendingFile.Stream"/>, then <see cref="PendingFile.Commit"/>; disposed without the
    /// commit, it leaves the previous file as it was and no temporary behind.
    /// </summary>
    public static PendingFile Begin(string path, int bufferSize = 1 << 20)
    {
        var full = Path.GetFullPath(path);
        // A descriptor this process holds (/dev/stdout, /dev/fd/N): written through it at its offset, as a shell would.
        // Resolved as a path it led to the file stdout was redirected to, which the rename then replaced (the text
        // already written to it lost).
        if (OpenDescriptor(full) is int fd)
            return new PendingFile(full, null, new DescriptorStream(fd, full));
        if (IsDeviceOrPipe(full))
        {
            try
            {
                return new PendingFile(full, null, new FileStream(full, FileMode.Open, FileAccess.Write, FileShare.ReadWrite, bufferSize));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new IOException($"cannot write {full}: {e.Message}", e);
            }
        }
        full = Target(full);
        var directory = Path.GetDirectoryName(full) ?? ".";
        RemoveStaleTemporaries(directory, Path.GetFileName(full));
        var temp = TemporaryPath(full);
        try
        {
            return new PendingFile(full, temp, new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, bufferSize));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // The error named the hidden temporary (".out.json.1234.9f3c….tmp"), not the file the user asked for.
            throw new IOException($"cannot write {full}: {(e is UnauthorizedAccessException ? $"permission denied in the folder {directory}" : e.Message.Replace(temp, full, StringComparison.Ordinal))}", e);
        }
    }

    /// <summary>
    /// Whether a write to <paramref name="path"/> goes into it as it stands, with no temporary and rename: a descriptor
    /// this process holds (/dev/stdout, /dev/fd/N), a FIFO, a device or a socket.
    /// </summary>
    public static bool WritesInPlace(string path)
    {
        var full = Path.GetFullPath(path);
        return OpenDescriptor(full) is not null || IsDeviceOrPipe(full);
    }

    /// <summary>
    /// A FIFO, device or socket (Linux, by its file type), or on other Unix systems, where the type is not read, a path
    /// under /dev/: written in place. On macOS /dev/null went the temporary-and-rename way, "permission denied in the
    /// folder /dev" (and as root it would have replaced the device).
    /// </summary>
    private static bool IsDeviceOrPipe(string full) =>
        PathIdentity.IsSpecialFile(full) || (!OperatingSystem.IsLinux() && !OperatingSystem.IsWindows() && full.StartsWith("/dev/", StringComparison.Ordinal));

    /// <summary>
    /// The file a write to <paramref name="full"/> replaces: the path itself, or where a symbolic link at it leads, as
    /// the kernel follows it (so its protections hold: Linux refuses to follow another user's link in a sticky
    /// world-writable folder such as /tmp, where reading the link ourselves would have let that user point an output at
    /// any file of ours). A link that leads nowhere, or in a loop, or that the system will not follow is an
    /// <see cref="IOException"/> saying so.
    /// </summary>
    public static string Target(string full)
    {
        FileInfo info;
        try
        {
            info = new FileInfo(full);
            if (info.LinkTarget is null) return full;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return full;
        }
        if (!OperatingSystem.IsLinux())
        {
            FileSystemInfo? final;
            try
            {
                final = info.ResolveLinkTarget(returnFinalTarget: true);
            }
            catch (IOException e)
            {
                throw new IOException($"cannot follow the link {full}: {e.Message}", e);
            }
            return final is { Exists: true } ? final.FullName
                : throw new IOException($"{full} is a link to {info.LinkTarget}, which does not exist; give the file itself, or remove the link.");
        }
        int fd = open(full, OPath | OCloexec);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IOException(errno switch
            {
                2 => $"{full} is a link to {info.LinkTarget}, which does not exist; give the file itself, or remove the link.",
                13 => $"{full} is a link that the system does not follow for this user (one another user made in a shared folder such as /tmp); give another path.",
                40 => $"{full} is a loop of links; give the file itself.",
                _ => $"cannot follow the link {full}: {Marshal.GetPInvokeErrorMessage(errno)}.",
            });
        }
        try
        {
            string? target = new FileInfo($"/proc/self/fd/{fd.ToString(CultureInfo.InvariantCulture)}").LinkTarget;
            return target is not null && target.StartsWith('/') ? target : full;
        }
        finally
        {
            close(fd);
        }
    }

    /// <summary>The descriptor a path names in this process (/dev/stdout, /dev/stderr, /dev/fd/N, /proc/self/fd/N), or null.</summary>
    internal static int? OpenDescriptor(string full)
    {
        if (OperatingSystem.IsWindows()) return null;
        if (full == "/dev/stdout") return 1;
        if (full == "/dev/stderr") return 2;
        string self = "/proc/" + Environment.ProcessId.ToString(CultureInfo.InvariantCulture) + "/fd/";
        foreach (var prefix in new[] { "/dev/fd/", "/proc/self/fd/", "/proc/thread-self/fd/", self })
            if (full.StartsWith(prefix, StringComparison.Ordinal)
                && int.TryParse(full.AsSpan(prefix.Length), NumberStyles.None, CultureInfo.InvariantCulture, out int fd) && fd >= 0)
                return fd;
        return null;
    }

    private const int OPath = 0x200000, OCloexec = 0x80000;

    /// <summary>A temporary's stream whose I/O errors name the output (<see cref="PendingFile.Named"/>). .NET reports
    /// EFBIG (past the file-size limit, `ulimit -f`) as an ArgumentOutOfRangeException, "Specified file length was too
    /// large for the file system": an I/O error here too.</summary>
    private sealed class NamedErrors(Stream inner, PendingFile owner) : Stream
    {
        public override bool CanRead => false;
        public override bool CanSeek => inner.CanSeek;
        public override bool CanWrite => inner.CanWrite;
        public override long Length => inner.Length;

        public override long Position
        {
            get => inner.Position;
            set
            {
                try { inner.Position = value; }
                catch (Exception e) when (e is IOException or ArgumentOutOfRangeException) { throw owner.Named(e); }
            }
        }

        public override void Flush()
        {
            try { inner.Flush(); }
            catch (Exception e) when (e is IOException or ArgumentOutOfRangeException) { throw owner.Named(e); }
        }

        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            try { inner.Write(buffer); }
            catch (Exception e) when (e is IOException or ArgumentOutOfRangeException) { throw owner.Named(e); }
        }

        public override void WriteByte(byte value)
        {
            try { inner.WriteByte(value); }
            catch (Exception e) when (e is IOException or ArgumentOutOfRangeException) { throw owner.Named(e); }
        }

        public override long Seek(long offset, SeekOrigin origin)
        {
            try { return inner.Seek(offset, origin); }
            catch (Exception e) when (e is IOException or ArgumentOutOfRangeException) { throw owner.Named(e); }
        }

        public override void SetLength(long value)
        {
            try { inner.SetLength(value); }
            catch (Exception e) when (e is IOException or ArgumentOutOfRangeException) { throw owner.Named(e); }
        }

        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        protected override void Dispose(bool disposing)
        {
            if (disposing) inner.Dispose();
            base.Dispose(disposing);
        }
    }

    /// <summary>An output being written: a temporary beside it, or (a FIFO or device) the path itself.</summary>
    public sealed class PendingFile : IDisposable
    {
        private readonly string? _temp;
        private bool _committed, _disposed;

        internal PendingFile(string path, string? temp, Stream stream)
        {
            Path = path;
            _temp = temp;
            _file = stream as FileStream;
            // Errors while writing the temporary name the output (a full disk read "No space left on device :
            // '/d/.m.gguf.1234.….tmp'", a file the user never named).
            Stream = temp is null ? stream : new NamedErrors(stream, this);
        }

        private readonly FileStream? _file;

        /// <summary>An I/O error with the temporary's name replaced by the output's, saying the old output is kept.</summary>
        internal IOException Named(Exception e) => new(
            $"cannot write {Path}: {(e is ArgumentOutOfRangeException ? "the file reached the largest size this process may write (EFBIG: the file-size limit, ulimit -f, or the file system's largest file)" : _temp is null ? e.Message : e.Message.Replace(_temp, Path, StringComparison.Ordinal))}"
            + (_temp is not null && File.Exists(Path) ? $"; the {System.IO.Path.GetFileName(Path)} already there is kept as it was" : ""), e);

        /// <summary>The output's full path (a link's target).</summary>
        public string Path { get; }

        /// <summary>Where the bytes go: the temporary file, or the FIFO, device or descriptor itself.</summary>
        public Stream Stream { get; }

        /// <summary>A FIFO or device, written in place: nothing to rename, and the output cannot seek.</summary>
        public bool InPlace => _temp is null;

        /// <summary>Flushes the bytes to disk and renames the temporary over the path (then syncs the folder on Linux).</summary>
        public void Commit()
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_temp is null)
            {
                Stream.Flush();
                Stream.Dispose();
                _committed = true;
                return;
            }
            try
            {
                _file!.Flush(flushToDisk: true);
                _file.Dispose();
            }
            catch (Exception e) when (e is IOException or ArgumentOutOfRangeException)
            {
                throw Named(e);
            }
            try
            {
                File.Move(_temp, Path, overwrite: true);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new IOException($"cannot replace {Path}: {e.Message.Replace(_temp, Path, StringComparison.Ordinal)}", e);
            }
            _committed = true;
            SyncDirectory(System.IO.Path.GetDirectoryName(Path) ?? ".");
        }

        /// <summary>Without <see cref="Commit"/>: the temporary is deleted and the path left as it was.</summary>
        public void Dispose()
        {
            if (_disposed) return;
            _disposed = true;
            // Closing flushes what is buffered, which fails again on a full disk (EFBIG, past the file-size limit, is an
            // ArgumentOutOfRangeException, which left the temporary behind): the temporary goes whatever the close says.
            try { Stream.Dispose(); } catch (Exception e) when (e is IOException or ArgumentOutOfRangeException) { }
            if (!_committed && _temp is not null)
                try { File.Delete(_temp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    /// <summary>The hidden temporary name <see cref="Write"/> uses for <paramref name="path"/> in this process.</summary>
    public static string TemporaryPath(string path)
    {
        var full = Path.GetFullPath(path);
        return Path.Combine(Path.GetDirectoryName(full) ?? ".",
            $".{Path.GetFileName(full)}.{Environment.ProcessId.ToString(CultureInfo.InvariantCulture)}.{Guid.NewGuid():N}{TempSuffix}");
    }

    /// <summary>
    /// Deletes the temporary files that writers of <paramref name="name"/> (a file name, or a pattern with * such as
    /// <c>telemetry-*.arrow</c>) left behind when they were killed: those whose process is no longer running.
    /// Returns how many were deleted.
    /// </summary>
    public static int RemoveStaleTemporaries(string directory, string name)
    {
        int removed = 0;
        string[] candidates;
        try
        {
            candidates = Directory.GetFiles(directory, "." + name + ".*" + TempSuffix);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return 0;
        }
        foreach (var file in candidates)
        {
            // .NAME.PID.GUID.tmp: the PID is the field before the GUID.
            var rest = Path.GetFileName(file).AsSpan()[..^TempSuffix.Length];
            int guidDot = rest.LastIndexOf('.');
            if (guidDot <= 0) continue;
            rest = rest[..guidDot];
            int pidDot = rest.LastIndexOf('.');
            if (pidDot < 0 || !int.TryParse(rest[(pidDot + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out int pid)) continue;
            // A writer holds its temporary open (a shared lock on Linux, a share mode on Windows): one held is live,
            // whatever its PID says (a writer in another PID namespace sharing the folder looks dead here, and its
            // temporary was deleted before its rename). One nobody holds is a killed writer's, even with this process's
            // PID (a container's PID 1 after a restart: those were never removed), unless that PID runs another
            // process, which on a file system without locks may still be writing it.
            if (Held(file)) continue;
            if (pid != Environment.ProcessId && IsRunning(pid)) continue;
            try
            {
                File.Delete(file);
                removed++;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        }
        return removed;
    }

    private static bool Held(string file)
    {
        try
        {
            using var probe = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.None, 1);
            return false;
        }
        catch (FileNotFoundException)
        {
            return true; // gone already: nothing to delete
        }
        catch (IOException)
        {
            return true; // held open: a writer's lock
        }
        catch (UnauthorizedAccessException)
        {
            return false; // unreadable (another user's 0600 file): deleting needs only the folder's permission
        }
    }

    private static bool IsRunning(int pid)
    {
        try
        {
            using var process = Process.GetProcessById(pid);
            return !process.HasExited;
        }
        catch (ArgumentException)
        {
            return false; // no such process
        }
        catch (InvalidOperationException)
        {
            return false;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            // Windows: the PID now belongs to a process this user may not query (an elevated one, after PID reuse):
            // taken as running, its temporary kept, rather than every write of this output failing with a stack trace.
            return true;
        }
    }

    /// <summary>fsync on the directory, so the rename itself is on disk (Linux; elsewhere a no-op).</summary>
    private static void SyncDirectory(string directory)
    {
        if (!OperatingSystem.IsLinux()) return;
        int fd = open(directory, 0 /* O_RDONLY */);
        if (fd < 0) return; // best effort: the file is complete either way
        try { fsync(fd); }
        finally { close(fd); }
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);

    [DllImport("libc", SetLastError = true)]
    private static extern int fsync(int fd);

    [DllImport("libc")]
    private static extern int close(int fd);
}
