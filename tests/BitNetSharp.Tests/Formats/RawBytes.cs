using System.Buffers.Binary;
using System.Text;

namespace BitNetSharp.Tests.Formats;

/// <summary>
/// Writes arbitrary little-endian fields, so tests can build files that no well-behaved writer would produce
/// (wrong versions, lying lengths, misaligned offsets).
/// </summary>
internal sealed class RawBytes
{
    private readonly MemoryStream _stream = new();

    public long Length => _stream.Length;

    public RawBytes U8(byte v) { _stream.WriteByte(v); return this; }

    public RawBytes U32(uint v)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, v);
        _stream.Write(b);
        return this;
    }

    public RawBytes U64(ulong v)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, v);
        _stream.Write(b);
        return this;
    }

    public RawBytes Str(string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        U64((ulong)bytes.Length);
        _stream.Write(bytes);
        return this;
    }

    public RawBytes Bytes(ReadOnlySpan<byte> bytes) { _stream.Write(bytes); return this; }

    public RawBytes Zeros(int count) { _stream.Write(new byte[count]); return this; }

    public RawBytes PadTo(int alignment)
    {
        while (_stream.Length % alignment != 0) _stream.WriteByte(0);
        return this;
    }

    /// <summary>GGUF header: magic, version, tensor count, metadata count.</summary>
    public RawBytes GgufHeader(uint version, ulong tensors, ulong kvs) =>
        U32(0x46554747).U32(version).U64(tensors).U64(kvs);

    /// <summary>A string-valued metadata entry.</summary>
    public RawBytes KvString(string key, string value) => Str(key).U32(8).Str(value);

    /// <summary>A uint32-valued metadata entry.</summary>
    public RawBytes KvU32(string key, uint value) => Str(key).U32(4).U32(value);

    /// <summary>A tensor info record.</summary>
    public RawBytes TensorInfo(string name, uint type, ulong offset, params ulong[] dims)
    {
        Str(name).U32((uint)dims.Length);
        foreach (var d in dims) U64(d);
        return U32(type).U64(offset);
    }

    public byte[] ToArray() => _stream.ToArray();
}
