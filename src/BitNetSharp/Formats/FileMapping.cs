using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;

namespace BitNetSharp.Formats;

/// <summary>
/// A whole file (or a byte array) seen as one read-only pointer and length. Model files are mapped, never read
/// into managed memory, so opening a 1.2 GB GGUF costs page-table entries rather than copies, and tensors can be
/// handed to kernels in place. One view over the whole file keeps pointer arithmetic trivial; parsers bound every
/// access by <see cref="Length"/>.
/// </summary>
internal sealed unsafe class FileMapping : IDisposable
{
    private MemoryMappedFile? _file;
    private MemoryMappedViewAccessor? _view;
    private GCHandle _pin;
    private byte* _pointer;
    private bool _pointerAcquired;
    private void* _copy; // InHugePages: the 2 MiB-aligned private copy
    private Microsoft.Win32.SafeHandles.SafeFileHandle? _handle; // a mapped file's (the map owns its stream)
    private string? _path;
    private bool _disposed;

    private FileMapping() { }

    public long Length { get; private set; }

    public byte* Pointer
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _pointer;
        }
    }

    public bool IsDisposed => _disposed;

    /// <summary>
    /// Throws <see cref="ModelFileChangedException"/> when a mapped file is now shorter than its map (one fstat): a read
    /// of a page past the new end is SIGBUS, which .NET cannot catch — the process died with "Fatal error.
    /// System.AccessViolationException" when a served model was truncated or copied over in place. Copies (huge pages)
    /// and arrays are unaffected. Checked before each forward pass; a truncation during one can still end the process.
    /// </summary>
    public void CheckNotTruncated()
    {
        // Latched: once cut short, the bytes at the mapped offsets may be anything (a cp of another model grows the file
        // back to its length with other weights), so the file stays refused until a restart maps it anew.
        if (Volatile.Read(ref _cutTo) is >= 0 and var seen) throw new ModelFileChangedException(_path!, Length, seen);
        if (_handle is not { IsClosed: false } handle || _disposed) return;
        long now;
        try
        {
            now = RandomAccess.GetLength(handle);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            return;
        }
        if (now < Length)
        {
            Interlocked.CompareExchange(ref _cutTo, now, -1); // the first length seen short; read by the engine, scrapes and /health
            throw new ModelFileChangedException(_path!, Length, now);
        }
    }

    private long _cutTo = -1;

    /// <summary>
    /// Whether the file was read into a private copy in 2 MiB-aligned memory advised for transparent huge pages
    /// (<see cref="Open(string, bool)"/> with hugePages), instead of mapped.
    /// </summary>
    public bool InHugePages => _copy != null;

    /// <summary>Whether ranges were released from a private copy (they read as zeros now; <see cref="CheckNotReleased"/> refuses them).</summary>
    public bool CopyHasReleasedRanges => _copy != null && _released.Count > 0;

    /// <summary>Bytes of the copy the kernel backs with huge pages now (−1: not a copy, or unknown).</summary>
    public long HugePageBackedBytes => _copy != null ? Memory.HugePages.BackedBytes(_copy, Length) : -1;

    private const int MadvDontNeed = 4;

    [DllImport("libc", SetLastError = true)]
    private static extern int madvise(void* address, nuint length, int advice);

    /// <summary>
    /// Drops the whole pages inside [<paramref name="start"/>, +<paramref name="length"/>) from this process's memory
    /// (Linux madvise MADV_DONTNEED on the read-only file map; the page cache keeps them and a later read faults them in
    /// again from the file). Nothing happens for an in-memory array or off Linux. For data no longer used, e.g. a head
    /// re-encoded at load.
    /// </summary>
    public void ReleasePages(byte* start, long length)
    {
        if (!(_pointerAcquired || _copy != null) || !OperatingSystem.IsLinux() || length <= 0) return;
        if (start < _pointer || start + length > _pointer + Length) throw new ArgumentOutOfRangeException(nameof(start), "The range is outside the file.");
        long page = Environment.SystemPageSize;
        long first = ((long)start + page - 1) / page * page, end = ((long)start + length) / page * page;
        if (end <= first) return;
        // A mapping's dropped pages fault back in from the file; a copy's read as zeros from now on, so the range is
        // remembered and a later request for a tensor inside it fails instead of returning zeros. Both are remembered
        // for LiveRanges (--mlock must not fault back in what was dropped).
        _released.Add((first - (long)_pointer, end - (long)_pointer));
        madvise((void*)first, (nuint)(end - first), MadvDontNeed);
    }

    private readonly List<(long Start, long End)> _released = [];

    /// <summary>
    /// The byte ranges [Start, End) of the file still in use: all of it but what <see cref="ReleasePages"/> dropped
    /// (a head re-encoded at load), sorted and merged. What --mlock locks: locking the whole map faulted the dropped
    /// pages back in and pinned them (657 MB for 2B4T's tied F16 head re-encoded to Q6_K).
    /// </summary>
    public IReadOnlyList<(long Start, long End)> LiveRanges()
    {
        var released = new List<(long Start, long End)>(_released);
        released.Sort();
        var live = new List<(long Start, long End)>();
        long at = 0;
        foreach (var (start, end) in released)
        {
            if (start > at) live.Add((at, start));
            at = Math.Max(at, end);
        }
        if (at < Length) live.Add((at, Length));
        return live;
    }

    /// <summary>Throws when [offset, offset + length) of a copy overlaps bytes <see cref="ReleasePages"/> discarded.</summary>
    public void CheckNotReleased(long offset, long length, string what)
    {
        if (_copy == null) return; // a mapping's dropped pages read back from the file
        foreach (var (start, end) in _released)
            if (offset < end && offset + length > start)
                throw new InvalidOperationException(
                    $"{what}: its bytes were released from memory after the model decoded or re-encoded it at load into memory of its own (a projection not in I2_S, or --head-type); open the file again to read it.");
    }

    /// <summary>Maps <paramref name="path"/> read-only; I/O failures become <see cref="ModelFormatException"/> naming the file.</summary>
    public static FileMapping Open(string path) => Open(path, hugePages: false);

    /// <summary>
    /// <paramref name="path"/> as one pointer: mapped read-only, or with <paramref name="hugePages"/> (and a file of at
    /// least 2 MiB) read into a private copy in 2 MiB-aligned memory advised MADV_HUGEPAGE, where Linux backs it with
    /// 2 MiB pages: a decode step streams every weight once, and with 4 KiB pages that is a TLB miss every 4 KiB
    /// (bench/results/weight-pages-amd-epyc-zen5-2core.md). The copy is private memory (not the shared page cache) and
    /// costs a read of the file at open. I/O failures become <see cref="ModelFormatException"/> naming the file; memory
    /// the copy cannot get is an <see cref="InsufficientMemoryException"/> saying so.
    /// </summary>
    public static FileMapping Open(string path, bool hugePages)
    {
        FileStream stream;
        PathIdentity.RequireRegularFile(path, "a model file");
        try
        {
            stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new ModelFormatException(path, "no such file", inner: e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // .NET says "Access to the path is denied" for a directory: said as what it is.
            if (Directory.Exists(path)) throw new ModelFormatException(path, "is a directory, not a file", inner: e);
            throw new ModelFormatException(path, $"cannot open the file: {e.Message}", inner: e);
        }

        var mapping = new FileMapping();
        try
        {
            mapping.Length = stream.Length;
            // Mapping an empty file is an error on every OS; an empty pinned array gives the parser a 0-byte view.
            if (mapping.Length == 0)
            {
                stream.Dispose();
                mapping.PinArray([]);
                return mapping;
            }
            if (hugePages && mapping.Length >= Memory.HugePages.PageBytes)
            {
                using (stream) mapping.ReadCopy(stream, path);
                return mapping;
            }
            mapping._handle = stream.SafeFileHandle;
            mapping._path = path;
            mapping._file = MemoryMappedFile.CreateFromFile(stream, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
            mapping._view = mapping._file.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* p = null;
            mapping._view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            mapping._pointerAcquired = true;
            mapping._pointer = p + mapping._view.PointerOffset;
            return mapping;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            stream.Dispose();
            mapping.Dispose();
            throw new ModelFormatException(path, $"cannot map the file: {e.Message}", inner: e);
        }
        catch
        {
            stream.Dispose();
            mapping.Dispose();
            throw;
        }
    }

    /// <summary>Bytes each reader of <see cref="ReadCopy"/> takes at a time.</summary>
    private const long CopyChunk = 64L << 20;

    /// <summary>
    /// Reads the whole file into a new huge-page-advised copy, a few chunks at once: first touches of fresh memory are
    /// the slow part (the kernel, and under a hypervisor the host, back each new page), and they proceed in parallel.
    /// </summary>
    private void ReadCopy(FileStream stream, string path)
    {
        _copy = Memory.HugePages.AllocateAdvised(Length, out _, out _);
        if (_copy == null)
            throw new InsufficientMemoryException(
                $"{path}: no {Length / 1e9:F2} GB of memory for a private copy of the model in huge pages; map the file instead (--weight-pages file).");
        _pointer = (byte*)_copy;
        nint start = (nint)_copy;
        long length = Length;
        var handle = stream.SafeFileHandle;
        int chunks = (int)((length + CopyChunk - 1) / CopyChunk);
        try
        {
            Parallel.For(0, chunks, new ParallelOptions { MaxDegreeOfParallelism = Math.Clamp(Environment.ProcessorCount, 1, 8) }, c =>
            {
                long at = c * CopyChunk, end = Math.Min(length, at + CopyChunk);
                while (at < end)
                {
                    int n = RandomAccess.Read(handle, new Span<byte>((byte*)start + at, (int)(end - at)), at);
                    if (n <= 0) throw new ModelFormatException(path, $"the file ended at byte {at} of {length} while it was read (was it truncated meanwhile?)");
                    at += n;
                }
            });
        }
        catch (AggregateException e)
        {
            var first = e.Flatten().InnerExceptions[0];
            if (first is IOException io) throw new ModelFormatException(path, $"cannot read the file: {io.Message}", inner: io);
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(first).Throw();
            throw;
        }
    }

    /// <summary>Pins <paramref name="bytes"/> (not copied) so in-memory parsing runs the same code as a mapped file.</summary>
    public static FileMapping FromArray(byte[] bytes)
    {
        var mapping = new FileMapping { Length = bytes.Length };
        mapping.PinArray(bytes);
        return mapping;
    }

    private void PinArray(byte[] bytes)
    {
        _pin = GCHandle.Alloc(bytes, GCHandleType.Pinned);
        _pointer = (byte*)_pin.AddrOfPinnedObject();
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_pointerAcquired) _view!.SafeMemoryMappedViewHandle.ReleasePointer();
        _view?.Dispose();
        _file?.Dispose();
        if (_pin.IsAllocated) _pin.Free();
        if (_copy != null)
        {
            System.Runtime.InteropServices.NativeMemory.AlignedFree(_copy);
            _copy = null;
        }
        _pointer = null;
    }
}

/// <summary>
/// A memory-mapped model file became shorter than when it was mapped (truncated, or copied over in place), so its
/// weights can no longer be read; restart to load the file as it is now. Replace a model file that is in use by
/// renaming a new file over it (mv), which leaves the mapped one intact, or load it with --weight-pages huge (a copy).
/// </summary>
public sealed class ModelFileChangedException(string path, long mappedBytes, long nowBytes)
    : IOException($"{path}: the model file was cut to {nowBytes:N0} bytes, shorter than the {mappedBytes:N0} mapped at load (truncated or copied over while in use), so its weights can no longer be read. Restart to load it as it is now; to replace a model file in use, rename a new file over it (mv) instead of writing into it, or load with --weight-pages huge (a private copy).")
{
    public string FilePath { get; } = path;
}
