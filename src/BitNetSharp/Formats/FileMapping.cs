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
        if (!_pointerAcquired || !OperatingSystem.IsLinux() || length <= 0) return;
        if (start < _pointer || start + length > _pointer + Length) throw new ArgumentOutOfRangeException(nameof(start), "The range is outside the file.");
        long page = Environment.SystemPageSize;
        long first = ((long)start + page - 1) / page * page, end = ((long)start + length) / page * page;
        if (end > first) madvise((void*)first, (nuint)(end - first), MadvDontNeed);
    }

    /// <summary>Maps <paramref name="path"/> read-only; I/O failures become <see cref="ModelFormatException"/> naming the file.</summary>
    public static FileMapping Open(string path)
    {
        FileStream stream;
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
        _pointer = null;
    }
}
