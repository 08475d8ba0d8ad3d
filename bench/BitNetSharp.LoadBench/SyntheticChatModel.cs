using BitNetSharp.Formats.Gguf;
using BitNetSharp.Model;

namespace BitNetSharp.LoadBench;

/// <summary>
/// A synthetic BitNet GGUF of any shape with a GPT-2-style byte-level vocabulary of exactly the shape's size:
/// ids 0-255 are the bytes, the rest two-to-four-letter ASCII words (so most sampled tokens decode to whole
/// characters and each streams as its own chunk), the last one "&lt;|endoftext|&gt;".
/// </summary>
internal static class SyntheticChatModel
{
    public static void Write(SyntheticShape shape, string path, GgmlType embedding = GgmlType.F16, int seed = 1)
    {
        var w = SyntheticModel.Build(shape, seed, embedding);
        var tokens = new string[shape.VocabSize];
        var seen = new HashSet<string>(StringComparer.Ordinal);
        for (int b = 0; b < 256; b++) seen.Add(tokens[b] = ByteChar((byte)b).ToString());
        int next = 0;
        for (int id = 256; id < shape.VocabSize - 1; id++)
        {
            string word;
            do word = Word(next++); while (!seen.Add(word));
            tokens[id] = word;
        }
        tokens[^1] = "<|endoftext|>";
        var types = tokens.Select((_, i) => i == tokens.Length - 1 ? 3 : 1).ToArray();
        w.AddString("tokenizer.ggml.model", "gpt2")
         .AddString("tokenizer.ggml.pre", "gpt-2")
         .AddArray("tokenizer.ggml.tokens", tokens)
         .AddArray("tokenizer.ggml.token_type", types)
         .AddArray("tokenizer.ggml.merges", Array.Empty<string>())
         .AddUInt32("tokenizer.ggml.bos_token_id", (uint)(shape.VocabSize - 1))
         .AddUInt32("tokenizer.ggml.eos_token_id", (uint)(shape.VocabSize - 1));
        w.WriteFile(path);
    }

    /// <summary>"Ġ" (a space) plus 1-3 lower-case letters, counting in base 26.</summary>
    private static string Word(int n)
    {
        var s = new System.Text.StringBuilder("\u0120");
        do
        {
            s.Append((char)('a' + n % 26));
            n /= 26;
        } while (n > 0);
        return s.ToString();
    }

    /// <summary>GPT-2's byte → character map: printable Latin-1 bytes stand for themselves, the other 68 move to U+0100 and up.</summary>
    private static char ByteChar(byte b)
    {
        int shifted = 0;
        for (int x = 0; x < 256; x++)
        {
            bool printable = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
            if (x == b) return printable ? (char)x : (char)(256 + shifted);
            if (!printable) shifted++;
        }
        throw new InvalidOperationException();
    }
}
