using System.Buffers.Binary;
using System.Text;
using BitNetSharp.Formats;

namespace BitNetSharp.Tokenization;

/// <summary>
/// Reads the parts of a SentencePiece <c>tokenizer.model</c> (a protobuf ModelProto) that tokenizing needs:
/// pieces with scores and types (field 1), the model type and special ids of the trainer spec (field 2) and
/// add_dummy_prefix of the normalizer spec (field 3). A minimal wire-format reader, so no generated code is needed.
/// </summary>
internal sealed class SentencePieceModelFile
{
    public const int ModelTypeUnigram = 1;
    public const int ModelTypeBpe = 2;

    public List<string> Pieces { get; } = [];
    public List<float> Scores { get; } = [];
    public List<TokenKind> Kinds { get; } = [];
    public int ModelType { get; private set; } = ModelTypeUnigram;
    public int UnknownId { get; private set; }
    public int BosId { get; private set; } = 1;
    public int EosId { get; private set; } = 2;
    public int PadId { get; private set; } = -1;
    public bool AddDummyPrefix { get; private set; } = true;

    /// <summary>Whether <paramref name="head"/> looks like a serialized ModelProto (it starts with field 1, a length-delimited piece).</summary>
    public static bool LooksLikeModelProto(ReadOnlySpan<byte> head) => head.Length > 2 && head[0] == 0x0A;

    public static SentencePieceModelFile Read(string path)
    {
        var bytes = File.ReadAllBytes(path);
        var model = new SentencePieceModelFile();
        try
        {
            var reader = new Reader(bytes);
            while (reader.More)
            {
                var (field, wire) = reader.Tag();
                if (field == 1 && wire == 2) model.ReadPiece(reader.Bytes());
                else if (field == 2 && wire == 2) model.ReadTrainerSpec(reader.Bytes());
                else if (field == 3 && wire == 2) model.ReadNormalizerSpec(reader.Bytes());
                else reader.Skip(wire);
            }
        }
        catch (FormatException e)
        {
            throw new ModelFormatException(path, $"not a SentencePiece model: {e.Message}", inner: e);
        }
        if (model.Pieces.Count == 0) throw new ModelFormatException(path, "the SentencePiece model has no pieces");
        return model;
    }

    private void ReadPiece(ReadOnlySpan<byte> bytes)
    {
        var reader = new Reader(bytes);
        string piece = "";
        float score = 0;
        var kind = TokenKind.Normal;
        while (reader.More)
        {
            var (field, wire) = reader.Tag();
            if (field == 1 && wire == 2) piece = Encoding.UTF8.GetString(reader.Bytes());
            else if (field == 2 && wire == 5) score = BitConverter.Int32BitsToSingle((int)reader.Fixed32());
            else if (field == 3 && wire == 0)
            {
                long type = reader.Varint();
                kind = type is >= 1 and <= 6 ? (TokenKind)type : TokenKind.Normal;
            }
            else reader.Skip(wire);
        }
        Pieces.Add(piece);
        Scores.Add(score);
        Kinds.Add(kind);
    }

    private void ReadTrainerSpec(ReadOnlySpan<byte> bytes)
    {
        var reader = new Reader(bytes);
        while (reader.More)
        {
            var (field, wire) = reader.Tag();
            if (wire != 0) { reader.Skip(wire); continue; }
            long value = reader.Varint();
            switch (field)
            {
                case 3: ModelType = (int)value; break;
                case 40: UnknownId = (int)value; break;
                case 41: BosId = (int)value; break;
                case 42: EosId = (int)value; break;
                case 43: PadId = (int)value; break;
            }
        }
    }

    private void ReadNormalizerSpec(ReadOnlySpan<byte> bytes)
    {
        var reader = new Reader(bytes);
        while (reader.More)
        {
            var (field, wire) = reader.Tag();
            if (field == 3 && wire == 0) AddDummyPrefix = reader.Varint() != 0;
            else reader.Skip(wire);
        }
    }

    private ref struct Reader(ReadOnlySpan<byte> data)
    {
        private readonly ReadOnlySpan<byte> _data = data;
        private int _pos;

        public readonly bool More => _pos < _data.Length;

        public (int Field, int Wire) Tag()
        {
            long tag = Varint();
            return ((int)(tag >> 3), (int)(tag & 7));
        }

        public long Varint()
        {
            ulong result = 0;
            for (int shift = 0; shift < 64; shift += 7)
            {
                if (_pos >= _data.Length) throw new FormatException("truncated varint");
                byte b = _data[_pos++];
                result |= (ulong)(b & 0x7F) << shift;
                if (b < 0x80) return (long)result;
            }
            throw new FormatException("varint longer than 10 bytes");
        }

        public uint Fixed32()
        {
            if (_pos + 4 > _data.Length) throw new FormatException("truncated fixed32");
            uint v = BinaryPrimitives.ReadUInt32LittleEndian(_data[_pos..]);
            _pos += 4;
            return v;
        }

        public ReadOnlySpan<byte> Bytes()
        {
            long length = Varint();
            if (length < 0 || length > _data.Length - _pos) throw new FormatException($"field length {length} runs past the end");
            var span = _data.Slice(_pos, (int)length);
            _pos += (int)length;
            return span;
        }

        public void Skip(int wire)
        {
            switch (wire)
            {
                case 0: Varint(); break;
                case 1: if (_pos + 8 > _data.Length) throw new FormatException("truncated fixed64"); _pos += 8; break;
                case 2: Bytes(); break;
                case 5: Fixed32(); break;
                default: throw new FormatException($"unsupported wire type {wire}");
            }
        }
    }
}
