using System.Buffers;

namespace BitNetSharp.Memory;

/// <summary>Exposes a span of unmanaged memory (a memory-mapped tensor) as <see cref="Memory{T}"/> so writers that take
/// <see cref="ReadOnlyMemory{T}"/> can copy straight from a map without a managed copy. The owner must outlive it.</summary>
public sealed unsafe class UnmanagedMemory(byte* pointer, int length) : MemoryManager<byte>
{
    public override Span<byte> GetSpan() => new(pointer, length);

    public override MemoryHandle Pin(int elementIndex = 0) => new(pointer + elementIndex);

    public override void Unpin()
    {
    }

    protected override void Dispose(bool disposing)
    {
    }
}
