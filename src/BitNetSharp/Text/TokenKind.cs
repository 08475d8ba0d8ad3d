namespace BitNetSharp.Tokenization;

/// <summary>
/// What a vocabulary entry is, with the numeric values of GGUF's <c>tokenizer.ggml.token_type</c> (and of
/// llama.cpp's token types), so a GGUF array converts by a cast.
/// </summary>
public enum TokenKind
{
    /// <summary>Ordinary text produced by the tokenizer's model.</summary>
    Normal = 1,

    /// <summary>The unknown-token placeholder (<c>&lt;unk&gt;</c>); treated like a control token.</summary>
    Unknown = 2,

    /// <summary>A control token such as BOS, EOS or <c>&lt;|eot_id|&gt;</c>: never produced from plain text, hidden when decoding.</summary>
    Control = 3,

    /// <summary>An added token that is always matched as a whole in the input and decodes to its text.</summary>
    UserDefined = 4,

    /// <summary>A reserved slot; decodes to nothing.</summary>
    Unused = 5,

    /// <summary>A byte-fallback token <c>&lt;0xNN&gt;</c> standing for one raw byte.</summary>
    Byte = 6,
}
