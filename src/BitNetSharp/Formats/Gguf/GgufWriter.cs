using System.Buffers.Binary;
using System.Text;

namespace BitNetSharp.Formats.Gguf;

/// <summary>
/// Builds a GGUF v3 file: metadata in insertion order, then tensor infos, then the tensor data with every tensor
/// padded to the alignment (the last one too), byte for byte what llama.cpp's writers produce for the same input. Tensor bytes are taken already encoded and
/// checked against <see cref="GgmlTypeInfo.ByteSize"/>, so the writer can never produce a file its own reader or
/// llama.cpp would reject for size. Files are written to a temporary name and renamed, so a crash never leaves a
/// partial file under the final name.
/// </summary>
public sealed unsafe class GgufWriter
{
    /// <summary>ggml's GGML_MAX_NAME is 64 including the terminating NUL.</summary>
    public const int MaxTensorNameBytes = 63;

    /// <summary>gguf.md: keys are at most 65535 bytes.</summary>
    public const int MaxKeyBytes = 65535;

    public const uint Version = 3;

    private readonly List<KeyValuePair<string, GgufValue>> _metadata = [];
    private readonly HashSet<string> _keys = new(StringComparer.Ordinal);
    private readonly List<PendingTensor> _tensors = [];
    private readonly HashSet<string> _tensorNames = new(StringComparer.Ordinal);

    /// <summary>A tensor to write: its bytes in <see cref="Data"/>, or at <see cref="Pointer"/> (a mapped file's, which may pass 2 GiB).</summary>
    private sealed record PendingTensor(string Name, GgmlType Type, long[] Dims, ReadOnlyMemory<byte> Data, nint Pointer, long Length)
    {
        /// <summary>Makes the bytes when the file is written (then they are dropped): one tensor in memory at a time.</summary>
        public Func<ReadOnlyMemory<byte>>? Produce { get; init; }
    }

    /// <param name="alignment">
    /// Data alignment; written as <c>general.alignment</c> only when it differs from 32. It must be a multiple of 8 (the
    /// spec's rule, which the reader applies too, so any file it opens can be copied); note that llama.cpp also refuses
    /// an alignment that is not a power of two.
    /// </param>
    public GgufWriter(int alignment = GgufFile.DefaultAlignment)
    {
        // The reader's rule (the spec's multiple of 8): a file it opens can be copied (calibrate writes through GgufCopy).
        if (alignment < 8 || alignment % 8 != 0 || alignment > 1 << 30)
            throw new ArgumentOutOfRangeException(nameof(alignment), alignment, "The alignment must be a multiple of 8 between 8 and 2^30.");
        Alignment = alignment;
    }

    public int Alignment { get; }

    /// <summary>Adds a metadata entry; keys must be unique, and <c>general.alignment</c> comes from the constructor.</summary>
    public GgufWriter Add(string key, GgufValue value)
    {
        ArgumentException.ThrowIfNullOrEmpty(key);
        ArgumentNullException.ThrowIfNull(value);
        if (key == GgufFile.AlignmentKey)
            throw new ArgumentException("Set the alignment through the GgufWriter constructor, not as metadata.", nameof(key));
        if (Encoding.UTF8.GetByteCount(key) > MaxKeyBytes)
            throw new ArgumentException($"Metadata key is longer than {MaxKeyBytes} bytes.", nameof(key));
        if (!_keys.Add(key)) throw new ArgumentException($"Metadata key '{key}' was already added.", nameof(key));
        _metadata.Add(new(key, value));
        return this;
    }

    /// <summary>Whether <paramref name="key"/> was added.</summary>
    public bool Contains(string key) => _keys.Contains(key);

    public GgufWriter AddString(string key, string value) => Add(key, GgufValue.FromString(value));
    public GgufWriter AddUInt32(string key, uint value) => Add(key, GgufValue.FromUInt32(value));
    public GgufWriter AddInt32(string key, int value) => Add(key, GgufValue.FromInt32(value));
    public GgufWriter AddFloat32(string key, float value) => Add(key, GgufValue.FromFloat32(value));
    public GgufWriter AddBool(string key, bool value) => Add(key, GgufValue.FromBool(value));
    public GgufWriter AddArray<T>(string key, T[] values) => Add(key, GgufValue.FromArray(GgufArray.Create(values)));

    /// <summary>
    /// Adds a tensor whose bytes are already in <paramref name="type"/>'s encoding. <paramref name="dims"/> are ne0
    /// first. The bytes are referenced, not copied, until the file is written.
    /// </summary>
    public GgufWriter AddTensor(string name, GgmlType type, ReadOnlySpan<long> dims, ReadOnlyMemory<byte> data)
    {
        CheckTensor(name, type, dims, data.Length);
        _tensors.Add(new PendingTensor(name, type, dims.ToArray(), data, 0, data.Length));
        return this;
    }

    /// <summary>
    /// Adds a tensor whose bytes <paramref name="produce"/> makes when the file is written, and which are dropped once
    /// written: a converter holds one encoded tensor at a time, not the whole output (1.2 GB for 2B4T). They must be
    /// exactly the size <paramref name="type"/> and <paramref name="dims"/> give; an exception from it fails the write.
    /// </summary>
    public GgufWriter AddTensor(string name, GgmlType type, ReadOnlySpan<long> dims, Func<ReadOnlyMemory<byte>> produce)
    {
        ArgumentNullException.ThrowIfNull(produce);
        if (!GgmlTypeInfo.TryByteSize(type, dims, out long length, out var error))
            throw new ArgumentException($"Tensor '{name}': {error}.", nameof(dims));
        CheckTensor(name, type, dims, length);
        _tensors.Add(new PendingTensor(name, type, dims.ToArray(), default, 0, length) { Produce = produce });
        return this;
    }

    /// <summary>
    /// Adds a tensor whose <paramref name="length"/> bytes at <paramref name="data"/> (a mapped file's, for example) are
    /// already in <paramref name="type"/>'s encoding; they are read when the file is written, so the memory must stay
    /// valid until then. No size limit: a tensor past 2 GiB (a 152k × 4096 F32 embedding) is written in pieces.
    /// </summary>
    public GgufWriter AddTensor(string name, GgmlType type, ReadOnlySpan<long> dims, byte* data, long length)
    {
        if (data == null && length > 0) throw new ArgumentNullException(nameof(data));
        CheckTensor(name, type, dims, length);
        _tensors.Add(new PendingTensor(name, type, dims.ToArray(), default, (nint)data, length));
        return this;
    }

    private void CheckTensor(string name, GgmlType type, ReadOnlySpan<long> dims, long length)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (Encoding.UTF8.GetByteCount(name) > MaxTensorNameBytes)
            throw new ArgumentException($"Tensor name '{name}' is longer than {MaxTensorNameBytes} bytes, which ggml cannot load.", nameof(name));
        if (!GgmlTypeInfo.TryByteSize(type, dims, out long expected, out var error))
            throw new ArgumentException($"Tensor '{name}': {error}.", nameof(dims));
        if (length != expected)
            throw new ArgumentException($"Tensor '{name}' ({GgmlTypeInfo.Name(type)} [{string.Join(", ", dims.ToArray())}]) needs {expected} bytes, got {length}.", nameof(length));
        if (_tensorNames.Contains(name)) throw new ArgumentException($"Tensor '{name}' was already added.", nameof(name));
        _tensorNames.Add(name);
    }

    /// <summary>
    /// Writes to <paramref name="path"/> through a temporary file in the same directory, flushed to disk, then renamed
    /// into place (<see cref="AtomicFile"/>): a kill at any point leaves the previous file or the complete new one.
    /// </summary>
    public void WriteFile(string path) => AtomicFile.Write(path, WriteTo);

    /// <summary>
    /// <see cref="WriteFile(string)"/>, stopping between tensors when <paramref name="cancellation"/> is cancelled (the
    /// temporary file removed, the name left as it was); returns the bytes written (a pipe or device at the name has no
    /// length to read back).
    /// </summary>
    public long Write(string path, CancellationToken cancellation)
    {
        long written = 0;
        AtomicFile.Write(path, stream => written = WriteStream(stream, cancellation));
        return written;
    }

    /// <summary>The complete file as bytes (for tests and small files).</summary>
    public byte[] ToArray()
    {
        using var stream = new MemoryStream();
        WriteTo(stream);
        return stream.ToArray();
    }

    /// <summary>Writes the whole file to <paramref name="stream"/> from its current position.</summary>
    public void WriteTo(Stream stream) => WriteStream(stream, CancellationToken.None);

    /// <summary>Writes the whole file to <paramref name="stream"/>, checking <paramref name="cancellation"/> before each tensor; returns the bytes written.</summary>
    private long WriteStream(Stream stream, CancellationToken cancellation)
    {
        ArgumentNullException.ThrowIfNull(stream);
        var w = new Output(stream);
        var metadata = new List<KeyValuePair<string, GgufValue>>(_metadata);
        if (Alignment != GgufFile.DefaultAlignment)
            metadata.Add(new(GgufFile.AlignmentKey, GgufValue.FromUInt32((uint)Alignment)));

        w.UInt32(GgufFile.Magic);
        w.UInt32(Version);
        w.UInt64((ulong)_tensors.Count);
        w.UInt64((ulong)metadata.Count);
        foreach (var (key, value) in metadata)
        {
            w.String(key);
            w.UInt32((uint)value.Type);
            WriteValue(w, value.Value);
        }

        long offset = 0;
        foreach (var t in _tensors)
        {
            w.String(t.Name);
            w.UInt32((uint)t.Dims.Length);
            foreach (var d in t.Dims) w.UInt64((ulong)d);
            w.UInt32(GgmlTypeInfo.FileId(t.Type));
            w.UInt64((ulong)offset);
            offset += Pad(t.Length);
        }

        // A file without tensors ends right after its header, as llama.cpp's vocabulary-only files do.
        if (_tensors.Count > 0) w.Zeros(Pad(w.Written) - w.Written);
        foreach (var t in _tensors)
        {
            cancellation.ThrowIfCancellationRequested();
            if (t.Produce is { } produce)
            {
                var bytes = produce();
                if (bytes.Length != t.Length)
                    throw new InvalidOperationException($"Tensor '{t.Name}' was made {bytes.Length} bytes long; its type and shape need {t.Length}.");
                w.Bytes(bytes.Span);
            }
            else if (t.Pointer == 0) w.Bytes(t.Data.Span);
            else
                for (long done = 0; done < t.Length;)
                {
                    int piece = (int)Math.Min(t.Length - done, 1 << 30);
                    w.Bytes(new ReadOnlySpan<byte>((byte*)t.Pointer + done, piece));
                    done += piece;
                }
            w.Zeros(Pad(t.Length) - t.Length);
        }
        w.Flush();
        return w.Written;
    }

    private long Pad(long x) => x + (Alignment - x % Alignment) % Alignment;

    private static void WriteValue(Output w, object value)
    {
        switch (value)
        {
            case byte v: w.Byte(v); break;
            case sbyte v: w.Byte((byte)v); break;
            case ushort v: w.UInt16(v); break;
            case short v: w.UInt16((ushort)v); break;
            case uint v: w.UInt32(v); break;
            case int v: w.UInt32((uint)v); break;
            case float v: w.UInt32(BitConverter.SingleToUInt32Bits(v)); break;
            case bool v: w.Byte(v ? (byte)1 : (byte)0); break;
            case string v: w.String(v); break;
            case ulong v: w.UInt64(v); break;
            case long v: w.UInt64((ulong)v); break;
            case double v: w.UInt64(BitConverter.DoubleToUInt64Bits(v)); break;
            case GgufArray a:
                w.UInt32((uint)a.ElementType);
                w.UInt64((ulong)a.Count);
                foreach (var item in a.Items) WriteValue(w, item!);
                break;
            default:
                throw new InvalidOperationException($"Unexpected metadata value of type {value.GetType()}.");
        }
    }

    /// <summary>A little-endian writer that counts bytes, so padding needs no seekable stream.</summary>
    private sealed class Output(Stream stream)
    {
        private readonly Stream _stream = stream;
        private static readonly byte[] ZeroBlock = new byte[4096];
        private readonly byte[] _scratch = new byte[8];

        private Span<byte> Scratch => _scratch;

        public long Written { get; private set; }

        public void Byte(byte v) { _stream.WriteByte(v); Written++; }

        public void UInt16(ushort v) { BinaryPrimitives.WriteUInt16LittleEndian(Scratch, v); Bytes(Scratch[..2]); }

        public void UInt32(uint v) { BinaryPrimitives.WriteUInt32LittleEndian(Scratch, v); Bytes(Scratch[..4]); }

        public void UInt64(ulong v) { BinaryPrimitives.WriteUInt64LittleEndian(Scratch, v); Bytes(Scratch[..8]); }

        public void String(string s)
        {
            var bytes = Encoding.UTF8.GetBytes(s);
            UInt64((ulong)bytes.Length);
            Bytes(bytes);
        }

        public void Bytes(ReadOnlySpan<byte> bytes) { _stream.Write(bytes); Written += bytes.Length; }

        public void Zeros(long count)
        {
            while (count > 0)
            {
                int n = (int)Math.Min(count, ZeroBlock.Length);
                Bytes(ZeroBlock.AsSpan(0, n));
                count -= n;
            }
        }

        public void Flush() => _stream.Flush();
    }
}
