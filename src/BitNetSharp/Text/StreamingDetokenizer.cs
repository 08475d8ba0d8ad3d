using System.Text;

namespace BitNetSharp.Tokenization;

/// <summary>
/// Turns generated token ids into text one id at a time and returns only whole characters: a character whose UTF-8
/// bytes are spread over several byte tokens (an emoji as four &lt;0xNN&gt; tokens, a CJK character split by
/// byte-level BPE) is held back until its last byte arrives. Not thread-safe; one per generation stream.
/// </summary>
public sealed class StreamingDetokenizer
{
    private readonly BitNetTokenizer _tokenizer;
    private readonly bool _includeSpecial;
    private readonly bool _stripLeadingSpace;
    private byte[] _pending = new byte[16];
    private int _pendingLength;
    private bool _stripNext;

    /// <summary>
    /// Whether ids generated after <paramref name="prompt"/> start a text (the <c>atTextStart</c> of the constructor):
    /// no prompt, or one ending in a control token such as BOS, or in a padding id past the tokenizer (no text).
    /// The one rule both engines use, so the CLI and the server print the same text for the same ids.
    /// </summary>
    public static bool StartsText(BitNetTokenizer tokenizer, IReadOnlyList<int> prompt)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(prompt);
        if (prompt.Count == 0) return true;
        int last = prompt[prompt.Count - 1];
        return last >= tokenizer.VocabularySize || tokenizer.IsSpecial(last);
    }

    /// <param name="tokenizer">The tokenizer whose ids will be fed.</param>
    /// <param name="includeSpecial">Whether control tokens are written as their text (hidden by default).</param>
    /// <param name="atTextStart">
    /// True when the first id starts a text (SentencePiece's leading space on it is dropped, as <see cref="BitNetTokenizer.Decode(ReadOnlySpan{int}, bool)"/> does);
    /// false when the ids continue a prompt, so "▁world" after "Hello" keeps its space. Either way the space after a special token written as text (or a user-defined one) is dropped; a hidden one leaves the text as if it were not there.
    /// </param>
    public StreamingDetokenizer(BitNetTokenizer tokenizer, bool includeSpecial = false, bool atTextStart = true)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        _tokenizer = tokenizer;
        _includeSpecial = includeSpecial;
        _stripLeadingSpace = atTextStart && tokenizer.StripsLeadingSpace;
        _stripNext = _stripLeadingSpace;
    }

    /// <summary>Bytes received that do not yet form a whole character.</summary>
    public int PendingByteCount => _pendingLength;

    /// <summary>Adds one token and returns the text it completes (possibly empty).</summary>
    public string Append(int id)
    {
        var piece = _tokenizer.PieceForOutput(id, _includeSpecial, ref _stripNext);
        if (piece.IsEmpty) return string.Empty;
        if (_pendingLength + piece.Length > _pending.Length) Array.Resize(ref _pending, Math.Max(_pending.Length * 2, _pendingLength + piece.Length));
        piece.CopyTo(_pending.AsSpan(_pendingLength));
        _pendingLength += piece.Length;

        int complete = CompletePrefixLength(_pending.AsSpan(0, _pendingLength));
        if (complete == 0) return string.Empty;
        var text = Encoding.UTF8.GetString(_pending, 0, complete);
        _pending.AsSpan(complete, _pendingLength - complete).CopyTo(_pending);
        _pendingLength -= complete;
        return text;
    }

    /// <summary>Ends the stream: an unfinished character comes out as U+FFFD. The detokenizer can then be reused.</summary>
    public string Flush()
    {
        var text = _pendingLength == 0 ? string.Empty : Encoding.UTF8.GetString(_pending, 0, _pendingLength);
        _pendingLength = 0;
        _stripNext = _stripLeadingSpace; // reused, the next stream starts as a new one would
        return text;
    }

    /// <summary>Forgets pending bytes and starts over as if new.</summary>
    public void Reset()
    {
        _pendingLength = 0;
        _stripNext = _stripLeadingSpace;
    }

    /// <summary>
    /// The length of the longest prefix that does not end inside a UTF-8 sequence which later bytes could still
    /// complete. Bytes that can never become valid (a stray continuation byte, 0xF8-0xFF) are released at once and
    /// decode to U+FFFD, so garbage never stalls the stream.
    /// </summary>
    internal static int CompletePrefixLength(ReadOnlySpan<byte> bytes)
    {
        int n = bytes.Length;
        // A sequence is at most 4 bytes: look back at most 3 bytes for the lead byte of the last one.
        for (int back = 1; back <= Math.Min(3, n); back++)
        {
            byte b = bytes[n - back];
            if ((b & 0xC0) == 0x80) continue;
            int need = b < 0x80 ? 1 : (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : (b & 0xF8) == 0xF0 ? 4 : 1;
            if (back >= need) return n;
            // Held only while later bytes could still complete it: C0/C1, F5-F7, ED A0 (a surrogate), E0 80 (overlong)
            // and F4 90 (past U+10FFFF) never can, and waited for more bytes before.
            return System.Text.Rune.DecodeFromUtf8(bytes[(n - back)..], out _, out _) == System.Buffers.OperationStatus.NeedMoreData ? n - back : n;
        }
        return n;
    }
}
