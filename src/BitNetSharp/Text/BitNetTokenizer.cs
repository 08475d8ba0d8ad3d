using System.Buffers;
using System.Text;

namespace BitNetSharp.Tokenization;

/// <summary>
/// A model's tokenizer: text to token ids and back, with the model's special tokens. Every implementation splits
/// special tokens out of the input the way llama.cpp does (longest token text first; user-defined tokens always,
/// control tokens only when asked with <c>parseSpecial</c>) and hands the plain text between them to its model
/// (byte-level BPE, SentencePiece BPE, tiktoken). Instances are immutable and safe to use from several threads.
/// </summary>
public abstract class BitNetTokenizer
{
    /// <summary>Token texts that end a turn or a document in the model families we load, matched by exact text.</summary>
    private static readonly string[] StopTokenTexts =
        ["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|endoftext|>", "<|im_end|>", "<|end|>", "<end_of_turn>"];

    private readonly string[] _texts;
    private readonly TokenKind[] _kinds;
    private readonly byte[][] _pieces;
    private readonly Dictionary<string, int> _idByText;
    private readonly int[] _partitionOrder;
    private readonly bool _hasUserDefined;
    private readonly HashSet<int> _stopIds;
    private readonly HashSet<int> _stripLeft, _stripRight;
    private readonly bool _stripUnicodeWhitespace;

    private protected BitNetTokenizer(TokenizerVocabulary vocabulary, Func<string, TokenKind, byte[]> pieceOf)
    {
        ArgumentNullException.ThrowIfNull(vocabulary);
        _texts = vocabulary.Texts;
        _kinds = vocabulary.Kinds;
        _idByText = vocabulary.IdByText;
        BosId = vocabulary.BosId;
        EosId = vocabulary.EosId;
        UnknownId = vocabulary.UnknownId;
        PaddingId = vocabulary.PaddingId;
        AddBosToken = vocabulary.AddBos && BosId >= 0;
        _stripLeft = [.. vocabulary.StripLeft];
        _stripRight = [.. vocabulary.StripRight];
        _stripUnicodeWhitespace = vocabulary.StripUnicodeWhitespace;

        _pieces = new byte[_texts.Length][];
        for (int id = 0; id < _texts.Length; id++)
        {
            _pieces[id] = _kinds[id] switch
            {
                TokenKind.Unused => [],
                TokenKind.Control or TokenKind.Unknown or TokenKind.UserDefined => Encoding.UTF8.GetBytes(_texts[id]),
                _ => pieceOf(_texts[id], _kinds[id]),
            };
        }

        var partition = new List<int>();
        for (int id = 0; id < _texts.Length; id++)
        {
            var kind = _kinds[id];
            if (_texts[id].Length == 0) continue;
            if (kind is TokenKind.Control or TokenKind.Unknown or TokenKind.UserDefined) partition.Add(id);
            if (kind == TokenKind.UserDefined) _hasUserDefined = true;
        }
        // Longest text first, ties by id: the order llama.cpp partitions in, so "<|eot_id|>" is never cut by a shorter token.
        partition.Sort((a, b) => _texts[a].Length != _texts[b].Length ? _texts[b].Length.CompareTo(_texts[a].Length) : a.CompareTo(b));
        _partitionOrder = [.. partition];

        _stopIds = [];
        if (EosId >= 0) _stopIds.Add(EosId);
        if (vocabulary.EotId >= 0) _stopIds.Add(vocabulary.EotId);
        foreach (var text in StopTokenTexts)
            if (_idByText.TryGetValue(text, out var id) && _kinds[id] != TokenKind.Byte) _stopIds.Add(id);
        EotId = vocabulary.EotId >= 0 ? vocabulary.EotId : (_idByText.TryGetValue("<|eot_id|>", out var eot) ? eot : -1);
    }

    /// <summary>Ids that take the whitespace before them when matched in text (tokenizer.json lstrip), sorted.</summary>
    public IReadOnlyList<int> StripsLeft => [.. _stripLeft.Order()];

    /// <summary>Ids that take the whitespace after them when matched in text (tokenizer.json rstrip; Phi-3's by name), sorted.</summary>
    public IReadOnlyList<int> StripsRight => [.. _stripRight.Order()];

    /// <summary>Whether stripping takes any Unicode whitespace (tokenizer.json's rule) rather than C's isspace set (llama.cpp's).</summary>
    public bool StripsUnicodeWhitespace => _stripUnicodeWhitespace;

    /// <summary>Number of token ids; every valid id is in [0, VocabularySize).</summary>
    public int VocabularySize => _texts.Length;

    /// <summary>Beginning-of-sequence token, or -1 when the vocabulary has none.</summary>
    public int BosId { get; }

    /// <summary>End-of-sequence token, or -1 when the vocabulary has none.</summary>
    public int EosId { get; }

    /// <summary>End-of-turn token (<c>&lt;|eot_id|&gt;</c> for Llama 3), or -1.</summary>
    public int EotId { get; }

    /// <summary>The unknown token, or -1.</summary>
    public int UnknownId { get; }

    /// <summary>The padding token, or -1.</summary>
    public int PaddingId { get; }

    /// <summary>Whether the model expects a BOS token in front of a prompt (GGUF <c>add_bos_token</c> / tokenizer_config.json).</summary>
    public bool AddBosToken { get; }

    /// <summary>Tokens that end generation: EOS, EOT, and end-of-turn tokens found by text (<c>&lt;|eot_id|&gt;</c>, <c>&lt;|im_end|&gt;</c>, ...).</summary>
    public IReadOnlySet<int> StopTokenIds => _stopIds;

    /// <summary>What algorithm and pre-tokenizer this is, for diagnostics (e.g. "byte-level BPE, llama3 pre-tokenizer").</summary>
    public abstract string Description { get; }

    /// <summary>
    /// The model's own chat template as its file stores it (Jinja source: GGUF <c>tokenizer.chat_template</c>, a
    /// Hugging Face directory's <c>chat_template.jinja</c> or <c>tokenizer_config.json</c> <c>chat_template</c>), or null.
    /// <see cref="ChatTemplates.ForModel"/> reads which built-in format it is.
    /// </summary>
    public string? EmbeddedChatTemplate { get; internal set; }

    /// <summary>
    /// Whether decoding drops one leading space from the first text piece and from the first one after each special
    /// token: SentencePiece models put a space in front of the text at exactly those places when encoding
    /// (<c>add_space_prefix</c>), so <c>Decode(Encode(x, parseSpecial: true), includeSpecial: true) == x</c>.
    /// </summary>
    public virtual bool StripsLeadingSpace => false;

    /// <summary>
    /// What this vocabulary cannot write, said once at load by the tools (null when it writes every text): a byte-level
    /// vocabulary without a token for some of the 256 byte symbols drops those bytes from any text, as llama.cpp does.
    /// </summary>
    public virtual string? CoverageWarning => null;

    public bool IsStopToken(int id) => _stopIds.Contains(id);

    private readonly List<int> _configuredStops = [];

    /// <summary>Stop tokens a Hugging Face directory's generation settings add (generation_config.json's, else config.json's
    /// <c>eos_token_id</c>, one id or a list, as transformers' generate stops on them), in their order.</summary>
    public IReadOnlyList<int> ConfiguredStopIds => _configuredStops;

    /// <summary>Whether <paramref name="id"/> ends generation by its text alone (<c>&lt;|eot_id|&gt;</c>, <c>&lt;|im_end|&gt;</c>, …),
    /// which a reloaded vocabulary finds again without being told.</summary>
    public bool IsStopByText(int id) =>
        (uint)id < (uint)_texts.Length && _kinds[id] != TokenKind.Byte && Array.IndexOf(StopTokenTexts, _texts[id]) >= 0;

    /// <summary>Adds <see cref="ConfiguredStopIds"/> (at load, before the tokenizer is shared).</summary>
    internal void AddConfiguredStops(IEnumerable<int> ids)
    {
        foreach (int id in ids)
        {
            CheckId(id);
            _stopIds.Add(id);
            if (!_configuredStops.Contains(id)) _configuredStops.Add(id);
        }
    }

    /// <summary>Control and unknown tokens: only produced from text with <c>parseSpecial</c>, omitted when decoding by default.</summary>
    public bool IsSpecial(int id) => _kinds[CheckId(id)] is TokenKind.Control or TokenKind.Unknown;

    public TokenKind KindOf(int id) => _kinds[CheckId(id)];

    /// <summary>The vocabulary entry as stored (byte-level BPE text such as "Ġhello", SentencePiece text such as "▁hello").</summary>
    public string TokenText(int id) => _texts[CheckId(id)];

    /// <summary>The UTF-8 bytes the token contributes to decoded text (for control tokens, their text; may be a partial character).</summary>
    public ReadOnlySpan<byte> TokenBytes(int id) => _pieces[CheckId(id)];

    /// <summary>The id whose vocabulary text is exactly <paramref name="tokenText"/>.</summary>
    public bool TryGetTokenId(string tokenText, out int id)
    {
        ArgumentNullException.ThrowIfNull(tokenText);
        return _idByText.TryGetValue(tokenText, out id);
    }

    /// <summary>
    /// Tokenizes <paramref name="text"/>. With <paramref name="addBos"/>, BOS is put in front unless the result
    /// already starts with it (a chat template that writes the BOS text, encoded with <paramref name="parseSpecial"/>),
    /// so a prompt never gets two. With <paramref name="parseSpecial"/>, the text of control tokens such as
    /// <c>&lt;|eot_id|&gt;</c> becomes that token; without it, such text is tokenized as ordinary characters.
    /// </summary>
    public int[] Encode(string text, bool addBos, bool parseSpecial = false)
    {
        ArgumentNullException.ThrowIfNull(text);
        var output = new List<int>(text.Length / 3 + 2);
        Encode(text, addBos, parseSpecial, output);
        return [.. output];
    }

    /// <summary>
    /// As <see cref="Encode(string, bool, bool)"/> with <paramref name="parseSpecial"/>, except that control-token text
    /// inside <paramref name="plainSpans"/> (a chat message's content) is tokenized as ordinary characters, as it would
    /// be without <paramref name="parseSpecial"/>. Text is split exactly where it would be otherwise.
    /// </summary>
    public int[] Encode(string text, bool addBos, bool parseSpecial, IReadOnlyList<Range>? plainSpans)
    {
        ArgumentNullException.ThrowIfNull(text);
        var output = new List<int>(text.Length / 3 + 2);
        Encode(text, addBos, parseSpecial, output, plainSpans);
        return [.. output];
    }

    /// <summary>As <see cref="Encode(string, bool, bool)"/>, appending to <paramref name="output"/>.</summary>
    public void Encode(string text, bool addBos, bool parseSpecial, List<int> output) => Encode(text, addBos, parseSpecial, output, null);

    private void Encode(string text, bool addBos, bool parseSpecial, List<int> output, IReadOnlyList<Range>? plainSpans)
    {
        ArgumentNullException.ThrowIfNull(text);
        ArgumentNullException.ThrowIfNull(output);
        int first = output.Count;
        bool atSegmentStart = true;
        foreach (var fragment in Partition(text, parseSpecial, plainSpans))
        {
            if (fragment.TokenId >= 0)
            {
                output.Add(fragment.TokenId);
                atSegmentStart = true;
            }
            else
            {
                EncodeText(text, fragment.Start, fragment.Length, atSegmentStart, output);
                atSegmentStart = false;
            }
        }
        if (addBos && BosId >= 0 && (output.Count == first || output[first] != BosId)) output.Insert(first, BosId);
    }

    /// <summary>
    /// Encodes plain text (no special tokens in it) with the tokenizer's model. <paramref name="afterSpecial"/> is true
    /// at the start of the input and right after a special token (SentencePiece adds its space prefix there).
    /// </summary>
    private protected abstract void EncodeText(string text, int start, int length, bool afterSpecial, List<int> output);

    /// <summary>
    /// Token ids to text. Bytes that do not form valid UTF-8 become U+FFFD. Control and unknown tokens are left
    /// out unless <paramref name="includeSpecial"/>.
    /// </summary>
    public string Decode(ReadOnlySpan<int> ids, bool includeSpecial = false)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(Math.Max(16, ids.Length * 4));
        try
        {
            int length = 0;
            bool strip = StripsLeadingSpace;
            foreach (var id in ids)
            {
                var piece = PieceForOutput(id, includeSpecial, ref strip);
                if (piece.IsEmpty) continue;
                if (length + piece.Length > buffer.Length)
                {
                    var bigger = ArrayPool<byte>.Shared.Rent(Math.Max(buffer.Length * 2, length + piece.Length));
                    buffer.AsSpan(0, length).CopyTo(bigger);
                    ArrayPool<byte>.Shared.Return(buffer);
                    buffer = bigger;
                }
                piece.CopyTo(buffer.AsSpan(length));
                length += piece.Length;
            }
            return Encoding.UTF8.GetString(buffer, 0, length);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    public string Decode(IEnumerable<int> ids, bool includeSpecial = false)
    {
        ArgumentNullException.ThrowIfNull(ids);
        return Decode(ids is int[] array ? array : [.. ids], includeSpecial);
    }

    /// <summary>
    /// The bytes <paramref name="id"/> adds to decoded text: empty for hidden special tokens, without the leading
    /// space SentencePiece added when <paramref name="stripSpace"/> is set (which it then clears, and which a special
    /// token that is written sets again when <see cref="StripsLeadingSpace"/>: the encoder adds that space after every
    /// special fragment). A hidden one leaves the text as if it were not there, as transformers decodes with
    /// skip_special_tokens: "▁Hello &lt;/s&gt; &lt;s&gt; ▁World" is "Hello World" (the space after it was dropped: "HelloWorld").
    /// </summary>
    internal ReadOnlySpan<byte> PieceForOutput(int id, bool includeSpecial, ref bool stripSpace)
    {
        CheckId(id);
        if (_kinds[id] is TokenKind.Control or TokenKind.Unknown)
        {
            if (!includeSpecial) return default;
            stripSpace = StripsLeadingSpace;
            return _pieces[id];
        }
        if (_kinds[id] == TokenKind.UserDefined)
        {
            // Always written as its text, and the encoder adds the space prefix after it as after a control token:
            // "a</s>b" (phi-3's user-defined </s>) decoded as "a</s> b".
            stripSpace = StripsLeadingSpace;
            return _pieces[id];
        }
        ReadOnlySpan<byte> piece = _pieces[id];
        if (stripSpace && !piece.IsEmpty)
        {
            stripSpace = false;
            if (piece[0] == (byte)' ') piece = piece[1..];
        }
        return piece;
    }

    /// <summary>Throws the error every public method gives for an id outside the vocabulary.</summary>
    public int CheckId(int id, string? paramName = "id")
    {
        if ((uint)id >= (uint)_texts.Length)
            throw new ArgumentOutOfRangeException(paramName, id,
                $"Token id {id} is outside the vocabulary of {_texts.Length} tokens (valid ids are 0 to {_texts.Length - 1}).");
        return id;
    }

    private protected bool TryGetTokenId(ReadOnlySpan<char> tokenText, out int id) =>
        _idByText.GetAlternateLookup<ReadOnlySpan<char>>().TryGetValue(tokenText, out id);

    private protected Dictionary<string, int> IdByText => _idByText;

    private readonly record struct Fragment(int Start, int Length, int TokenId);

    /// <summary>Whether [start, start + length) overlaps one of <paramref name="spans"/>.</summary>
    private static bool InPlainSpan(IReadOnlyList<Range>? spans, int textLength, int start, int length)
    {
        if (spans is null) return false;
        foreach (var r in spans)
        {
            var (s, n) = r.GetOffsetAndLength(textLength);
            if (start < s + n && s < start + length) return true;
        }
        return false;
    }

    /// <summary>
    /// The whitespace a stripping token absorbs: C's isspace for a GGUF, as llama.cpp tests it (space, \t, \n, \v, \f,
    /// \r); any Unicode whitespace for tokenizer.json's flags, as the tokenizers library tests them.
    /// </summary>
    private bool IsStrippedSpace(char c) => _stripUnicodeWhitespace ? char.IsWhiteSpace(c) : c is ' ' or '\t' or '\n' or '\v' or '\f' or '\r';

    /// <summary>
    /// Splits the input into plain-text runs and special tokens, one special token at a time in
    /// <see cref="_partitionOrder"/> (the order llama.cpp's tokenizer_st_partition uses).
    /// </summary>
    private List<Fragment> Partition(string text, bool parseSpecial, IReadOnlyList<Range>? plainSpans = null)
    {
        var fragments = new List<Fragment>();
        if (text.Length == 0) return fragments;
        fragments.Add(new Fragment(0, text.Length, -1));
        if (!parseSpecial && !_hasUserDefined) return fragments;

        var next = new List<Fragment>();
        foreach (var id in _partitionOrder)
        {
            if (!parseSpecial && _kinds[id] != TokenKind.UserDefined) continue;
            var special = _texts[id];
            if (!text.Contains(special, StringComparison.Ordinal)) continue;

            next.Clear();
            foreach (var f in fragments)
            {
                if (f.TokenId >= 0 || f.Length < special.Length)
                {
                    next.Add(f);
                    continue;
                }
                int pos = f.Start, end = f.Start + f.Length, run = f.Start; // run: where the pending text starts
                while (pos < end)
                {
                    int hit = text.AsSpan(pos, end - pos).IndexOf(special, StringComparison.Ordinal);
                    if (hit < 0) break;
                    int at = pos + hit;
                    if (_kinds[id] != TokenKind.UserDefined && InPlainSpan(plainSpans, text.Length, at, special.Length))
                    {
                        pos = at + 1; // a message's own text: stays text
                        continue;
                    }
                    // A token that strips whitespace takes the spaces beside it in its fragment with it (Phi-3's
                    // "<|user|>\nHi" is <|user|> ▁Hi, as llama.cpp and transformers tokenize it).
                    int left = at;
                    if (_stripLeft.Contains(id)) while (left > run && IsStrippedSpace(text[left - 1])) left--;
                    if (left > run) next.Add(new Fragment(run, left - run, -1));
                    next.Add(new Fragment(at, special.Length, id));
                    pos = run = at + special.Length;
                    if (_stripRight.Contains(id))
                    {
                        while (run < end && IsStrippedSpace(text[run])) run++;
                        pos = run;
                    }
                }
                if (run < end) next.Add(new Fragment(run, end - run, -1));
            }
            (fragments, next) = (next, fragments);
        }
        return fragments;
    }
}
