using System.Buffers.Binary;
using System.Text;
using System.Text.Json;

namespace BitNetSharp.Tests.Formats;

/// <summary>Builds safetensors files the way the reference writer does (header padded with spaces to 8 bytes).</summary>
internal sealed class TestSafetensors
{
    private readonly List<(string Name, string DType, long[] Shape, byte[] Data)> _tensors = [];
    private readonly Dictionary<string, string> _metadata = [];

    public TestSafetensors Add(string name, string dtype, long[] shape, byte[] data)
    {
        _tensors.Add((name, dtype, shape, data));
        return this;
    }

    public TestSafetensors Meta(string key, string value)
    {
        _metadata[key] = value;
        return this;
    }

    /// <summary>The header JSON text (for tests that then corrupt it).</summary>
    public string HeaderJson()
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            if (_metadata.Count > 0)
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in _metadata) w.WriteString(k, v);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var (name, dtype, shape, data) in _tensors)
            {
                w.WriteStartObject(name);
                w.WriteString("dtype", dtype);
                w.WriteStartArray("shape");
                foreach (var d in shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + data.Length);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += data.Length;
            }
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(ms.ToArray());
    }

    public byte[] ToArray() => Assemble(HeaderJson(), DataBytes());

    public byte[] DataBytes()
    {
        using var ms = new MemoryStream();
        foreach (var t in _tensors) ms.Write(t.Data);
        return ms.ToArray();
    }

    /// <summary>Length prefix + header (space-padded to a multiple of 8) + data.</summary>
    public static byte[] Assemble(string header, byte[] data)
    {
        var headerBytes = Encoding.UTF8.GetBytes(header);
        int padded = (headerBytes.Length + 7) / 8 * 8;
        var result = new byte[8 + padded + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(result, (ulong)padded);
        headerBytes.CopyTo(result, 8);
        result.AsSpan(8 + headerBytes.Length, padded - headerBytes.Length).Fill((byte)' ');
        data.CopyTo(result, 8 + padded);
        return result;
    }

    /// <summary>A small 2B4T-shaped checkpoint: packed U8 projections with BF16 scales, BF16 norms and embedding, one F32 and an F8 tensor.</summary>
    public static TestSafetensors Small() => new TestSafetensors()
        .Meta("format", "pt")
        .Add("model.embed_tokens.weight", "BF16", [16, 8], TestGguf.RandomBytes(16 * 8 * 2, 21))
        .Add("model.layers.0.self_attn.q_proj.weight", "U8", [2, 8], TestGguf.RandomBytes(16, 22))
        .Add("model.layers.0.self_attn.q_proj.weight_scale", "BF16", [1], [0x80, 0x3F])
        .Add("model.layers.0.input_layernorm.weight", "F32", [8], TestGguf.RandomBytes(32, 23))
        .Add("model.norm.weight", "F16", [8], TestGguf.RandomBytes(16, 24))
        .Add("model.extra.fp8", "F8_E4M3", [4], TestGguf.RandomBytes(4, 25))
        .Add("model.scalar", "I8", [], [0xFE]);
}
