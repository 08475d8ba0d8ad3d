using System.Runtime.InteropServices;

namespace BitNetSharp.Memory;

/// <summary>
/// 64-byte aligned unmanaged memory: weights repacked at load time and kernel scratch live here so the
/// GC never moves or scans them and every SIMD width sees aligned rows.
/// </summary>
public sealed unsafe class NativeBuffer : IDisposable
{
    public const int Alignment = 64;

    private void* _pointer;
    private readonly bool _hugePages;
    private readonly bool _counted; // advised as a runtime buffer (HugePages.Enabled), not forced: the huge-page report counts it

    public NativeBuffer(long byteLength, bool zero = true) : this(byteLength, zero, hugePages: false)
    {
    }

    /// <param name="hugePages">Advise huge pages for this buffer (≥ 2 MiB, Linux) even while <see cref="HugePages.Enabled"/> is off.</param>
    public NativeBuffer(long byteLength, bool zero, bool hugePages)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(byteLength);
        ByteLength = byteLength;
        _pointer = HugePages.TryAllocate(byteLength, out _hugePages, force: hugePages);
        _counted = _hugePages && !hugePages;
        if (_pointer == null) _pointer = NativeMemory.AlignedAlloc((nuint)Math.Max(byteLength, 1), Alignment);
        if (zero) NativeMemory.Clear(_pointer, (nuint)Math.Max(byteLength, 1));
        if (byteLength > 0) GC.AddMemoryPressure(byteLength);
    }

    public long ByteLength { get; }

    /// <summary>Whether the buffer is 2 MiB-aligned and advised for transparent huge pages.</summary>
    public bool InHugePages => _hugePages;

    public byte* Pointer
    {
        get
        {
            ObjectDisposedException.ThrowIf(_pointer == null, this);
            return (byte*)_pointer;
        }
    }

    public Span<T> AsSpan<T>() where T : unmanaged =>
        new(Pointer, checked((int)(ByteLength / sizeof(T))));

    public void Dispose()
    {
        if (_pointer == null) return;
        // The peak huge-page use is read before a runtime buffer goes; a forced one (the bandwidth probe's) is not one,
        // and reading then counted its 1 GiB as the model's.
        if (_counted) HugePages.NoteBeforeFree();
        NativeMemory.AlignedFree(_pointer);
        _pointer = null;
        if (ByteLength > 0) GC.RemoveMemoryPressure(ByteLength);
        GC.SuppressFinalize(this);
    }

    ~NativeBuffer()
    {
        if (_pointer != null)
        {
            NativeMemory.AlignedFree(_pointer);
            if (ByteLength > 0) GC.RemoveMemoryPressure(ByteLength); // added in the constructor: a leaked buffer kept it for ever
        }
    }
}
