using System.Text.RegularExpressions;

namespace BitNetSharp.Tokenization;

/// <summary>Regexes shared between pre-tokenizers.</summary>
internal static partial class PreTokenizerRegex
{
    /// <summary>Meta's Llama 3 pattern with the case-insensitive contractions spelled out (same matches, no culture lookup).</summary>
    [GeneratedRegex(@"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+", RegexOptions.CultureInvariant)]
    public static partial Regex Llama3();
}
