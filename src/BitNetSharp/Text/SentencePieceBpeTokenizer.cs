namespace BitNetSharp.Tokenization;

/// <summary>
/// SentencePiece BPE (Llama 2, the 1bitLLM BitNet models): spaces become "▁", a "▁" is put in front of the text and
/// after every special token (<c>add_space_prefix</c>), the text starts as one symbol per character, and the
/// adjacent pair whose concatenation is the highest-scoring vocabulary entry merges first (ties: leftmost), as in
/// llama.cpp's llm_tokenizer_spm. A character that ends up in no token is written as its UTF-8 bytes through the
/// <c>&lt;0xNN&gt;</c> byte-fallback tokens.
/// </summary>
public sealed class SentencePieceBpeTokenizer : BitNetTokenizer
{
    private const char SpaceMark = '\u2581';

    private readonly float[] _scores;
    private readonly int[] _byteTokens = new int[256];
    private readonly bool[] _hasByteToken = new bool[256];

    internal SentencePieceBpeTokenizer(TokenizerVocabulary vocabulary, float[] scores, bool addSpacePrefix)
        : base(vocabulary, PieceOf)
    {
        if (scores.Length < vocabulary.Count) throw new ArgumentException("One score per token is required.", nameof(scores));
        _scores = scores;
        AddSpacePrefix = addSpacePrefix;
        for (int b = 0; b < 256; b++)
        {
            int id = vocabulary.Find($"<0x{b:X2}>");
            // Vocabularies without byte tokens fall back to a token of that single character, then to <unk>.
            if (id < 0 && b < 0x80) id = vocabulary.Find(((char)b).ToString());
            _byteTokens[b] = id >= 0 ? id : vocabulary.UnknownId;
            _hasByteToken[b] = id >= 0;
        }
    }

    /// <summary>The score of token <paramref name="id"/> (higher merges first).</summary>
    public float Score(int id) => _scores[CheckId(id)];

    /// <summary>Whether a space is put in front of the text and after each special token before tokenizing.</summary>
    public bool AddSpacePrefix { get; }

    public override bool StripsLeadingSpace => AddSpacePrefix;

    public override string Description => $"SentencePiece BPE with byte fallback{(AddSpacePrefix ? ", space prefix" : "")}";

    private static byte[] PieceOf(string text, TokenKind kind)
    {
        if (kind == TokenKind.Byte && text.Length == 6 && text.StartsWith("<0x", StringComparison.Ordinal) && text[5] == '>' &&
            byte.TryParse(text.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out var b))
            return [b];
        return System.Text.Encoding.UTF8.GetBytes(text.Replace(SpaceMark, ' '));
    }

    private protected override void EncodeText(string text, int start, int length, bool afterSpecial, List<int> output)
    {
        bool prefix = AddSpacePrefix && afterSpecial;
        var escaped = string.Create(length + (prefix ? 1 : 0), (text, start, length, prefix), static (dst, s) =>
        {
            int o = 0;
            if (s.prefix) dst[o++] = SpaceMark;
            var src = s.text.AsSpan(s.start, s.length);
            for (int i = 0; i < src.Length; i++)
            {
                char c = src[i];
                // A lone surrogate is U+FFFD, as its UTF-8 (and the byte-level path) has it: alone it matched no piece
                // and fell back to the three bytes EF BF BD instead of the "�" token.
                if (char.IsSurrogate(c) && !(char.IsHighSurrogate(c) && i + 1 < src.Length && char.IsLowSurrogate(src[i + 1])))
                {
                    if (!(char.IsLowSurrogate(c) && i > 0 && char.IsHighSurrogate(src[i - 1]))) c = '\uFFFD';
                }
                dst[o++] = c == ' ' ? SpaceMark : c;
            }
        });
        new MergeSession(this, escaped).Run(output);
    }

    /// <summary>One run of the merge loop over one text: symbols are (offset, length) slices of the escaped string.</summary>
    private readonly struct MergeSession
    {
        private readonly SentencePieceBpeTokenizer _owner;
        private readonly string _text;
        private readonly int[] _start, _length, _prev, _next;
        private readonly PriorityQueue<(int Left, int Right, int Size), (float Score, int Left)> _queue;

        private static readonly Comparer<(float Score, int Left)> HighestScoreThenLeftmost =
            Comparer<(float Score, int Left)>.Create(static (a, b) => a.Score != b.Score ? b.Score.CompareTo(a.Score) : a.Left.CompareTo(b.Left));

        public MergeSession(SentencePieceBpeTokenizer owner, string text)
        {
            _owner = owner;
            _text = text;
            int count = 0;
            for (int i = 0; i < text.Length; i += char.IsSurrogatePair(text, i) ? 2 : 1) count++;
            _start = new int[count];
            _length = new int[count];
            _prev = new int[count];
            _next = new int[count];
            for (int i = 0, c = 0; c < count; c++)
            {
                int len = char.IsSurrogatePair(text, i) ? 2 : 1;
                _start[c] = i;
                _length[c] = len;
                _prev[c] = c - 1;
                _next[c] = c + 1 < count ? c + 1 : -1;
                i += len;
            }
            _queue = new PriorityQueue<(int, int, int), (float, int)>(HighestScoreThenLeftmost);
        }

        public void Run(List<int> output)
        {
            int count = _start.Length;
            for (int i = 1; i < count; i++) TryQueue(i - 1, i);
            while (_queue.TryDequeue(out var pair, out _))
            {
                // Stale entry: a side was merged away, or grew, since the pair was queued.
                if (_length[pair.Left] == 0 || _length[pair.Right] == 0 || _length[pair.Left] + _length[pair.Right] != pair.Size) continue;
                _length[pair.Left] += _length[pair.Right];
                _length[pair.Right] = 0;
                int after = _next[pair.Right];
                _next[pair.Left] = after;
                if (after >= 0) _prev[after] = pair.Left;
                if (_prev[pair.Left] >= 0) TryQueue(_prev[pair.Left], pair.Left);
                if (after >= 0) TryQueue(pair.Left, after);
            }
            bool afterUnknown = false;
            for (int i = 0; i >= 0 && count > 0; i = _next[i]) afterUnknown = Emit(i, output, afterUnknown);
        }

        private void TryQueue(int left, int right)
        {
            int size = _length[left] + _length[right];
            if (!_owner.TryGetTokenId(_text.AsSpan(_start[left], size), out var id)) return;
            _queue.Enqueue((left, right, size), (_owner._scores[id], left));
        }

        /// <summary>Emits a final symbol; returns whether it was written as &lt;unk&gt;.</summary>
        private bool Emit(int symbol, List<int> output, bool afterUnknown)
        {
            var piece = _text.AsSpan(_start[symbol], _length[symbol]);
            if (_owner.TryGetTokenId(piece, out var id))
            {
                output.Add(id);
                return false;
            }
            Span<byte> utf8 = stackalloc byte[4];
            int n = System.Text.Encoding.UTF8.GetBytes(piece, utf8);
            bool bytes = true;
            for (int i = 0; i < n; i++)
                if (!_owner._hasByteToken[utf8[i]]) bytes = false;
            if (bytes)
            {
                for (int i = 0; i < n; i++) output.Add(_owner._byteTokens[utf8[i]]);
                return false;
            }
            // No byte fallback for this character: one <unk> for it, and one for a run of such characters, as
            // SentencePiece writes them (it was one <unk> per UTF-8 byte: "€€" took six).
            if (!afterUnknown && _owner.UnknownId >= 0) output.Add(_owner.UnknownId);
            return true;
        }
    }
}
