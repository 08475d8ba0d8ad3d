using System.Globalization;
using System.Text;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Tests.Text;

/// <summary>
/// llama.cpp's tokenizer test vectors (models/ggml-vocab-*.gguf.inp/.out, read as tests/test-tokenizer-0.cpp reads
/// them): the .inp cases are separated by "\n__ggml_vocab_test__\n", each .out line holds the expected ids of one
/// case, encoded without BOS and without parsing special tokens.
/// </summary>
internal static class VocabVectors
{
    private const string Separator = "\n__ggml_vocab_test__\n";

    public static List<(string Input, int[] Expected)> Load(string name)
    {
        var inp = SharedData.RequirePath($"llama.cpp-vocab/ggml-vocab-{name}.gguf.inp");
        var outp = SharedData.RequirePath($"llama.cpp-vocab/ggml-vocab-{name}.gguf.out");
        var inputs = File.ReadAllText(inp, Encoding.UTF8).Split(Separator);
        var outputs = File.ReadAllText(outp, Encoding.UTF8).Split('\n');
        // Both files end with a terminator, leaving one empty element after the last case.
        Assert.Equal(inputs.Length, outputs.Length);
        var cases = new List<(string, int[])>();
        for (int i = 0; i < inputs.Length - 1; i++)
        {
            var ids = outputs[i].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            cases.Add((inputs[i], Array.ConvertAll(ids, s => int.Parse(s, CultureInfo.InvariantCulture))));
        }
        return cases;
    }

    /// <summary>Every case the tokenizer gets wrong, as readable lines (empty when all pass).</summary>
    public static List<string> Failures(BitNetTokenizer tokenizer, List<(string Input, int[] Expected)> cases)
    {
        var failures = new List<string>();
        for (int i = 0; i < cases.Count; i++)
        {
            var (input, expected) = cases[i];
            var actual = tokenizer.Encode(input, addBos: false);
            if (!actual.AsSpan().SequenceEqual(expected))
                failures.Add($"case {i} {Escape(input)}: expected [{string.Join(' ', expected)}], got [{string.Join(' ', actual)}]");
        }
        return failures;
    }

    public static string Escape(string s)
    {
        var e = s.Replace("\n", "\\n").Replace("\t", "\\t");
        return "\"" + (e.Length > 60 ? e[..60] + "..." : e) + "\"";
    }
}
