using System.Text.RegularExpressions;

namespace BitNetSharp.Tokenization;

/// <summary>
/// Splits text into the words byte-level BPE merges within, with llama.cpp's semantics: each regex in turn runs
/// inside every piece the previous ones produced, and both its matches and the text between them become pieces.
/// The presets are the regexes llama.cpp uses per <c>tokenizer.ggml.pre</c> value, written for .NET (where \s and
/// \p{..} have the Unicode meaning the originals assume).
/// </summary>
/// <remarks>
/// .NET regexes see UTF-16 code units; <see cref="Split"/> matches text with characters outside the BMP through a
/// stand-in string of one BMP character of the same category per code point, so U+1D400 is \p{L} as in llama.cpp.
/// </remarks>
public sealed partial class PreTokenizer
{
    private readonly Regex[] _stages;

    private PreTokenizer(string name, bool ignoreMerges, params Regex[] stages)
    {
        Name = name;
        IgnoreMerges = ignoreMerges;
        _stages = stages;
    }

    /// <summary>
    /// Whether a stage matches llama.cpp's explicit list of cased letters (deepseek-llm): a supplementary code point is
    /// a letter of that list only inside its seven supplementary ranges (Deseret, Osage, Old Hungarian, Warang Citi,
    /// Adlam), whatever its Unicode category.
    /// </summary>
    private bool CasedLettersAreListed => Name == "deepseek-llm";

    /// <summary>The supplementary ranges of llama.cpp's deepseek-llm letter list.</summary>
    private static readonly (int First, int Last)[] DeepSeekSupplementaryLetters =
        [(0x10400, 0x1044F), (0x104B0, 0x104D3), (0x104D8, 0x104FB), (0x10C80, 0x10CB2), (0x10CC0, 0x10CF2), (0x118A0, 0x118DF), (0x1E900, 0x1E943)];

    /// <summary>The llama.cpp pre-tokenizer name this implements ("llama3", "gpt-2", ...).</summary>
    public string Name { get; }

    /// <summary>A word that is itself a vocabulary entry is emitted whole without merging (Llama 3's <c>ignore_merges</c>).</summary>
    public bool IgnoreMerges { get; }

    /// <summary>Llama 3 (tiktoken cl100k-style) with the case-insensitive contractions spelled out.</summary>
    public static PreTokenizer Llama3 { get; } = new("llama3", ignoreMerges: true, PreTokenizerRegex.Llama3());

    /// <summary>The original GPT-2 pattern.</summary>
    public static PreTokenizer Gpt2 { get; } = new("gpt-2", ignoreMerges: false, Gpt2Regex());

    /// <summary>What llama.cpp uses when <c>tokenizer.ggml.pre</c> is missing or "default".</summary>
    public static PreTokenizer Default { get; } = new("default", ignoreMerges: false,
        DefaultPunctuationRegex(), Gpt2Regex(), NumberRunRegex(), ThreeDigitsRegex());

    public static PreTokenizer Falcon { get; } = new("falcon", ignoreMerges: false,
        FalconPunctuationRegex(), Gpt2Regex(), ThreeDigitsRegex());

    /// <summary>StarCoder, Refact, Command-R, SmolLM: every digit alone, then GPT-2.</summary>
    public static PreTokenizer StarCoder { get; } = new("starcoder", ignoreMerges: false, SingleDigitRegex(), Gpt2Regex());

    public static PreTokenizer Qwen2 { get; } = new("qwen2", ignoreMerges: false, Qwen2Regex());

    public static PreTokenizer DeepSeekCoder { get; } = new("deepseek-coder", ignoreMerges: false,
        LineBreakRegex(), SpaceLetterRunRegex(), SpacePunctuationRunRegex(), CjkHangulRunRegex(), SingleDigitRegex());

    public static PreTokenizer DeepSeekLlm { get; } = new("deepseek-llm", ignoreMerges: false,
        LineBreakRegex(), SpaceCasedLetterRunRegex(), DeepSeekPunctuationRegex(), TrailingSpaceRegex(), CjkHangulRunRegex(), NumberRunRegex());

    /// <summary><c>tokenizer.ggml.pre</c> values we implement, each with the preset it selects (llama.cpp's grouping).</summary>
    public static IReadOnlyDictionary<string, PreTokenizer> ByGgufName { get; } = new Dictionary<string, PreTokenizer>(StringComparer.Ordinal)
    {
        ["default"] = Default,
        ["llama3"] = Llama3, ["llama-v3"] = Llama3, ["llama-bpe"] = Llama3, ["falcon3"] = Llama3,
        ["gpt-2"] = Gpt2, ["phi-2"] = Gpt2, ["mpt"] = Gpt2, ["olmo"] = Gpt2, ["jina-es"] = Gpt2, ["jina-de"] = Gpt2, ["roberta-bpe"] = Gpt2,
        ["falcon"] = Falcon,
        ["starcoder"] = StarCoder, ["refact"] = StarCoder, ["command-r"] = StarCoder, ["smollm"] = StarCoder, ["codeshell"] = StarCoder,
        ["qwen2"] = Qwen2, ["deepseek-r1-qwen"] = Qwen2, ["stablelm2"] = Qwen2,
        ["deepseek-coder"] = DeepSeekCoder,
        ["deepseek-llm"] = DeepSeekLlm,
    };

    /// <summary>The same splitting with <see cref="IgnoreMerges"/> set as given.</summary>
    public PreTokenizer WithIgnoreMerges(bool ignoreMerges) =>
        ignoreMerges == IgnoreMerges ? this : new PreTokenizer(Name, ignoreMerges, _stages);

    /// <summary>A pre-tokenizer from one regex given by a tokenizer.json <c>Split</c> step (compiled at load).</summary>
    public static PreTokenizer FromPattern(string pattern, bool ignoreMerges) =>
        new("custom", ignoreMerges, Custom(pattern));

    /// <summary>
    /// How long one match of a model file's own pattern may run. The built-in patterns are linear; a file's may
    /// backtrack catastrophically ((a+)+$ on "aaaa…!") and would hold the encoding thread for ever.
    /// </summary>
    public static readonly TimeSpan CustomMatchTimeout = TimeSpan.FromSeconds(2);

    private static Regex Custom(string pattern) => new(pattern, RegexOptions.CultureInvariant | RegexOptions.Compiled, CustomMatchTimeout);

    /// <summary>
    /// A pre-tokenizer from a tokenizer.json sequence of steps, each a regex whose matches and the text between them
    /// become pieces (a Split with behavior Isolated; Digits, Punctuation and ByteLevel's own regex read the same way),
    /// applied in order to the pieces of the one before, as the tokenizers library's Sequence does.
    /// </summary>
    public static PreTokenizer FromPatterns(IReadOnlyList<string> patterns, bool ignoreMerges) =>
        new("custom", ignoreMerges, [.. patterns.Select(Custom)]);

    /// <summary>GPT-2's regex, the one a tokenizer.json ByteLevel step with use_regex applies.</summary>
    internal const string Gpt2RegexPattern = Gpt2Pattern;

    /// <summary>Appends the pieces of text[start..start+length) to <paramref name="pieces"/> as (start, length) pairs.</summary>
    /// <remarks>
    /// The patterns are matched over code points, as llama.cpp's and tiktoken's splitters do: .NET's regexes see
    /// UTF-16 units, where a letter or digit outside the BMP (𝐀, 𝟏, CJK extension B) is two surrogates of category Cs,
    /// "other", so "Call 𝟏𝟐𝟑𝟒" split differently and gave other ids. Text with surrogates is matched through a stand-in
    /// with one BMP character of the same Unicode category per code point, and the pieces mapped back.
    /// </remarks>
    public void Split(string text, int start, int length, List<(int Start, int Length)> pieces)
    {
        ArgumentNullException.ThrowIfNull(text);
        ArgumentNullException.ThrowIfNull(pieces);
        if (length > 0 && text.AsSpan(start, length).ContainsAnyInRange('\uD800', '\uDFFF'))
        {
            SplitByCodePoint(text, start, length, pieces);
            return;
        }
        SplitUnits(text, start, length, pieces);
    }

    private void SplitByCodePoint(string text, int start, int length, List<(int Start, int Length)> pieces)
    {
        var proxy = new char[length];
        var offset = new int[length + 1]; // proxy index → text index
        int n = 0;
        for (int i = start; i < start + length; n++)
        {
            offset[n] = i;
            if (char.IsHighSurrogate(text[i]) && i + 1 < start + length && char.IsLowSurrogate(text[i + 1]))
            {
                int cp = char.ConvertToUtf32(text[i], text[i + 1]);
                var category = System.Globalization.CharUnicodeInfo.GetUnicodeCategory(cp);
                if (CasedLettersAreListed)
                {
                    bool listed = false;
                    foreach (var (first, last) in DeepSeekSupplementaryLetters) listed |= cp >= first && cp <= last;
                    // U+0100 is in the list (and no other stage's class); a cased letter the list leaves out is a letter
                    // to the other stages only.
                    proxy[n] = listed ? '\u0100' : category is System.Globalization.UnicodeCategory.UppercaseLetter or System.Globalization.UnicodeCategory.LowercaseLetter
                        or System.Globalization.UnicodeCategory.TitlecaseLetter ? StandIn(System.Globalization.UnicodeCategory.OtherLetter) : StandIn(category);
                }
                else proxy[n] = StandIn(category);
                i += 2;
            }
            else proxy[n] = text[i++];
        }
        offset[n] = start + length;
        var local = new List<(int Start, int Length)>();
        SplitUnits(new string(proxy, 0, n), 0, n, local);
        foreach (var (s, l) in local) pieces.Add((offset[s], offset[s + l] - offset[s]));
    }

    /// <summary>
    /// A BMP character of <paramref name="category"/> that no pattern names literally: not ASCII, and outside the CJK
    /// and Hangul ranges the deepseek patterns list (U+0800-U+9FA5, U+AC00-U+D7FF).
    /// </summary>
    private static char StandIn(System.Globalization.UnicodeCategory category) => category switch
    {
        System.Globalization.UnicodeCategory.UppercaseLetter => '\u00C0',
        System.Globalization.UnicodeCategory.LowercaseLetter => '\u00DF',
        System.Globalization.UnicodeCategory.TitlecaseLetter => '\u01C5',
        System.Globalization.UnicodeCategory.ModifierLetter => '\u02B0',
        System.Globalization.UnicodeCategory.OtherLetter => '\u00AA',
        System.Globalization.UnicodeCategory.NonSpacingMark => '\u0300',
        System.Globalization.UnicodeCategory.SpacingCombiningMark => '\uA823',
        System.Globalization.UnicodeCategory.EnclosingMark => '\uA670',
        System.Globalization.UnicodeCategory.DecimalDigitNumber => '\u0660',
        System.Globalization.UnicodeCategory.LetterNumber => '\uA6E6',
        System.Globalization.UnicodeCategory.OtherNumber => '\u00B2',
        System.Globalization.UnicodeCategory.Format => '\u00AD',
        System.Globalization.UnicodeCategory.PrivateUse => '\uE000',
        System.Globalization.UnicodeCategory.MathSymbol => '\u00AC',
        System.Globalization.UnicodeCategory.CurrencySymbol => '\u00A2',
        System.Globalization.UnicodeCategory.ModifierSymbol => '\u00A8',
        System.Globalization.UnicodeCategory.OtherSymbol => '\u00A9',
        System.Globalization.UnicodeCategory.ConnectorPunctuation => '\uFE33',
        System.Globalization.UnicodeCategory.DashPunctuation => '\uFE58',
        System.Globalization.UnicodeCategory.OpenPunctuation => '\uFE59',
        System.Globalization.UnicodeCategory.ClosePunctuation => '\uFE5A',
        System.Globalization.UnicodeCategory.InitialQuotePunctuation => '\u00AB',
        System.Globalization.UnicodeCategory.FinalQuotePunctuation => '\u00BB',
        System.Globalization.UnicodeCategory.OtherPunctuation => '\u00A1',
        _ => '\u0378', // unassigned
    };

    private void SplitUnits(string text, int start, int length, List<(int Start, int Length)> pieces)
    {
        int first = pieces.Count;
        if (length == 0) return;
        pieces.Add((start, length));
        List<(int Start, int Length)>? scratch = null;
        foreach (var regex in _stages)
        {
            scratch ??= [];
            scratch.Clear();
            for (int i = first; i < pieces.Count; i++)
            {
                var (pieceStart, pieceLength) = pieces[i];
                int pos = 0;
                var piece = text.AsSpan(pieceStart, pieceLength);
                try
                {
                    foreach (var m in regex.EnumerateMatches(piece))
                    {
                        if (m.Length == 0) continue;
                        if (m.Index > pos) scratch.Add((pieceStart + pos, m.Index - pos));
                        scratch.Add((pieceStart + m.Index, m.Length));
                        pos = m.Index + m.Length;
                    }
                }
                catch (RegexMatchTimeoutException e)
                {
                    // InvalidDataException: the model file's content is at fault (the CLI says so as an error, not a bug).
                    throw new InvalidDataException(
                        $"The model's pre-tokenizer pattern /{e.Pattern}/ (its tokenizer.json Split step) ran over {e.MatchTimeout.TotalSeconds:0.#} s on one match of a " +
                        $"{pieceLength}-character piece of this text: it backtracks catastrophically. Fix the pattern in tokenizer.json, or convert the model to GGUF with a named pre-tokenizer.", e);
                }
                if (pos < pieceLength) scratch.Add((pieceStart + pos, pieceLength - pos));
            }
            pieces.RemoveRange(first, pieces.Count - first);
            pieces.AddRange(scratch);
        }
    }

    public override string ToString() => Name;

    private const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

    [GeneratedRegex(Gpt2Pattern, RegexOptions.CultureInvariant)]
    private static partial Regex Gpt2Regex();

    [GeneratedRegex(@"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+", RegexOptions.CultureInvariant)]
    private static partial Regex Qwen2Regex();

    [GeneratedRegex(@"[\p{P}\$\+<=>\^~\|]+", RegexOptions.CultureInvariant)]
    private static partial Regex DefaultPunctuationRegex();

    [GeneratedRegex(@"[\p{P}\$\+<=>\^~\|`]+", RegexOptions.CultureInvariant)]
    private static partial Regex FalconPunctuationRegex();

    [GeneratedRegex(@"\p{N}+", RegexOptions.CultureInvariant)]
    private static partial Regex NumberRunRegex();

    [GeneratedRegex(@"\p{N}", RegexOptions.CultureInvariant)]
    private static partial Regex SingleDigitRegex();

    [GeneratedRegex(@"[0-9][0-9][0-9]", RegexOptions.CultureInvariant)]
    private static partial Regex ThreeDigitsRegex();

    [GeneratedRegex(@"[\r\n]", RegexOptions.CultureInvariant)]
    private static partial Regex LineBreakRegex();

    [GeneratedRegex(@"\s?\p{L}+", RegexOptions.CultureInvariant)]
    private static partial Regex SpaceLetterRunRegex();

    [GeneratedRegex(@"\s?\p{P}+", RegexOptions.CultureInvariant)]
    private static partial Regex SpacePunctuationRunRegex();

    /// <summary>CJK unified ideographs U+4E00-U+9FA5, U+0800-U+4E00 and Hangul U+AC00-U+D7FF, as DeepSeek's tokenizer.json lists them.</summary>
    [GeneratedRegex(@"[\u4E00-\u9FA5\u0800-\u4E00\uAC00-\uD7FF]+", RegexOptions.CultureInvariant)]
    private static partial Regex CjkHangulRunRegex();

    /// <summary>
    /// DeepSeek LLM's letters as llama.cpp lists them range by range (its BMP part here; the supplementary ranges go
    /// through the proxy): the cased letters of an older Unicode, not today's categories, which also hold Armenian
    /// small letters U+0560-0588, Georgian Mkhedruli, Latin Extended-D/E and others that llama.cpp splits apart.
    /// </summary>
    [GeneratedRegex(@"\s?[\u0041-\u005A\u0061-\u007A\u00B5\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u01BA\u01BC-\u01BF\u01C4-\u0293\u0295-\u02AF\u0370-\u0373\u0376\u0377\u037B-\u037D\u037F\u0386\u0388-\u038A\u038C\u038E-\u03A1\u03A3-\u03F5\u03F7-\u0481\u048A-\u052F\u0531-\u0556\u10A0-\u10C5\u13A0-\u13F5\u13F8-\u13FD\u1C90-\u1CBA\u1CBD-\u1CBF\u1D00-\u1D2B\u1D6B-\u1D77\u1D79-\u1D9A\u1E00-\u1F15\u1F18-\u1F1D\u1F20-\u1F45\u1F48-\u1F4D\u1F50-\u1F57\u1F59\u1F5B\u1F5D\u1F5F-\u1F7D\u1F80-\u1FB4\u1FB6-\u1FBC\u1FBE\u1FC2-\u1FC4\u1FC6-\u1FCC\u1FD0-\u1FD3\u1FD6-\u1FDB\u1FE0-\u1FEC\u1FF2-\u1FF4\u1FF6-\u1FFC\u2102\u2107\u210A-\u2113\u2115\u2119-\u211D\u2124\u2126\u2128\u212A-\u212D\u212F-\u2134\u2139\u213C-\u213F\u2145-\u2149\u214E\u2183\u2184\u2C00-\u2C7B\u2C7E-\u2CE4\u2CEB-\u2CEE\u2CF2\u2CF3\uA640-\uA66D\uA680-\uA69B\uA722-\uA76F\uA771-\uA787\uA78B-\uA78E\uAB70-\uABBF\uFB00-\uFB06\uFB13-\uFB17\uFF21-\uFF3A\uFF41-\uFF5A]+", RegexOptions.CultureInvariant)]
    private static partial Regex SpaceCasedLetterRunRegex();

    [GeneratedRegex(@"\s?[!-/:-~\uFF01-\uFF0F\uFF1A-\uFF5E\u2018-\u201F\u3000-\u3002]+", RegexOptions.CultureInvariant)]
    private static partial Regex DeepSeekPunctuationRegex();

    [GeneratedRegex(@"\s+\z", RegexOptions.CultureInvariant)]
    private static partial Regex TrailingSpaceRegex();
}
