using System.Text;

namespace BitNetSharp.Tokenization;

/// <summary>
/// GPT-2's reversible byte → character map used by byte-level BPE vocabularies: the 188 printable Latin-1 bytes stand
/// for themselves and the other 68 (controls, space, 0x7F-0xA0, 0xAD) are shifted to U+0100 and up, so that
/// every vocabulary entry is a printable string ("Ġ" is the space byte 0x20, "Ċ" the newline 0x0A).
/// </summary>
internal static class ByteLevelEncoding
{
    /// <summary>Characters 0 to 0x143 can be byte characters; 256 + 68 - 1 is the highest.</summary>
    private const int CharLimit = 256 + 68;

    private static readonly char[] ByteToCharTable = BuildByteToChar();
    private static readonly short[] CharToByteTable = BuildCharToByte();

    private static char[] BuildByteToChar()
    {
        var map = new char[256];
        int shifted = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            map[b] = printable ? (char)b : (char)(256 + shifted++);
        }
        return map;
    }

    private static short[] BuildCharToByte()
    {
        var map = new short[CharLimit];
        Array.Fill(map, (short)-1);
        for (int b = 0; b < 256; b++) map[ByteToCharTable[b]] = (short)b;
        return map;
    }

    public static char ByteToChar(byte b) => ByteToCharTable[b];

    /// <summary>The byte a character stands for, or -1 when it is not a byte character.</summary>
    public static int CharToByte(char c) => c < CharLimit ? CharToByteTable[c] : -1;

    /// <summary>Bytes → their byte-level string (the form tokens are stored in).</summary>
    public static string Encode(ReadOnlySpan<byte> bytes)
    {
        return string.Create(bytes.Length, bytes.ToArray(), static (chars, b) =>
        {
            for (int i = 0; i < b.Length; i++) chars[i] = ByteToCharTable[b[i]];
        });
    }

    /// <summary>
    /// A byte-level token's text → the bytes it stands for. A character outside the map (found in some converted
    /// vocabularies' added tokens) contributes its own UTF-8, so nothing is lost.
    /// </summary>
    public static byte[] Decode(string text)
    {
        var bytes = new List<byte>(text.Length);
        Span<byte> utf8 = stackalloc byte[4];
        foreach (var rune in text.EnumerateRunes())
        {
            int b = rune.IsBmp ? CharToByte((char)rune.Value) : -1;
            if (b >= 0)
            {
                bytes.Add((byte)b);
                continue;
            }
            int n = rune.EncodeToUtf8(utf8);
            for (int i = 0; i < n; i++) bytes.Add(utf8[i]);
        }
        return [.. bytes];
    }

    /// <summary>UTF-8 of <paramref name="text"/> in byte-level form.</summary>
    public static string EncodeText(string text) => Encode(Encoding.UTF8.GetBytes(text));
}
