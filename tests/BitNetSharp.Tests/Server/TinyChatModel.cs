using BitNetSharp.Formats.Gguf;
using BitNetSharp.Model;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Tests.Server;

/// <summary>
/// A tiny synthetic BitNet GGUF that carries its own GPT-2-style byte-level tokenizer, so scheduler and server tests
/// need no data from ../shared: ids 0-255 are the 256 bytes (in GPT-2's byte → character form), then three merged
/// tokens and three control tokens, and the model's vocabulary is exactly that size.
/// </summary>
internal static class TinyChatModel
{
    public const int EndOfText = 259;
    public const int ImStart = 260;
    public const int ImEnd = 261;
    public const int VocabSize = 262;

    public static SyntheticShape Shape { get; } = SyntheticShape.Tiny with { Name = "tiny-chat", VocabSize = VocabSize, ContextLength = 256 };

    /// <param name="layers">More layers make each token slower, for tests that need a generation to outlast something.</param>
    /// <param name="modelVocab">The embedding's rows: more than the tokenizer's 262 makes a padded vocabulary.</param>
    /// <param name="bos">tokenizer.ggml.bos_token_id (one outside the vocabulary makes a file generate refuses).</param>
    public static GgufWriter Build(int seed = 11, int contextLength = 256, int layers = 2, int modelVocab = VocabSize, uint bos = EndOfText)
    {
        var w = SyntheticModel.Build(Shape with { ContextLength = contextLength, Layers = layers, VocabSize = modelVocab }, seed);
        var tokens = new List<string>();
        for (int b = 0; b < 256; b++) tokens.Add(ByteLevelEncoding.ByteToChar((byte)b).ToString());
        tokens.AddRange(["Ġt", "he", "Ġthe", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]);
        var types = tokens.Select((_, i) => i >= EndOfText ? 3 : 1).ToArray();
        w.AddString("tokenizer.ggml.model", "gpt2")
         .AddString("tokenizer.ggml.pre", "gpt-2")
         .AddArray("tokenizer.ggml.tokens", tokens.ToArray())
         .AddArray("tokenizer.ggml.token_type", types)
         .AddArray("tokenizer.ggml.merges", new[] { "Ġ t", "h e", "Ġt he" })
         .AddUInt32("tokenizer.ggml.bos_token_id", bos)
         .AddUInt32("tokenizer.ggml.eos_token_id", EndOfText);
        return w;
    }

    /// <summary>The model in memory, with its tokenizer.</summary>
    public static (ModelWeights Weights, BitNetTokenizer Tokenizer) Load(int seed = 11, int contextLength = 256, int layers = 2, int modelVocab = VocabSize)
    {
        var file = GgufFile.Parse(Build(seed, contextLength, layers, modelVocab).ToArray(), "tiny-chat.gguf");
        var tokenizer = TokenizerLoader.FromGguf(file);
        return (ModelWeights.FromGguf(file, ownsFile: true), tokenizer);
    }
}
