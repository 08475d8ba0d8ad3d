using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BitNetSharp.Tokenization;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// Encoding 256 KiB of text with Llama 3's vocabulary (2B4T's: ../shared/data/tokenizers/llama3_tokenizer.model):
/// ordinary ASCII, and runs of one repeated character, whose pairs once all fell into one chain of the merge table's
/// hash (long's hash is hi ^ lo: every token-with-itself merge hashed to 0). A served prompt is encoded before its
/// length can be checked against the context, so this time is spent on every request, refused or not.
/// <c>dotnet run -c Release --project bench/BitNetSharp.Benchmarks -- --filter '*TokenizerBenchmarks*'</c>
/// </summary>
[Config(typeof(Config))]
public class TokenizerBenchmarks
{
    private sealed class Config : ManualConfig
    {
        public Config() => AddJob(Job.Default.WithWarmupCount(2).WithIterationCount(8).WithId("tokenizer"));
    }

    private const int Length = 256 << 10;
    private BitNetTokenizer _llama3 = null!;
    private string _text = "";

    [Params("ascii", "spaces", "tabs", "letter a", "NUL")]
    public string Input { get; set; } = "ascii";

    [GlobalSetup]
    public void Setup()
    {
        string path = SharedFile("data/tokenizers/llama3_tokenizer.model");
        _llama3 = TokenizerLoader.FromTokenizerModel(path);
        var rng = new Random(5);
        _text = Input switch
        {
            "spaces" => new string(' ', Length),
            "tabs" => new string('\t', Length),
            "letter a" => new string('a', Length),
            "NUL" => new string('\0', Length),
            _ => string.Create(Length, rng, static (s, r) =>
            {
                for (int i = 0; i < s.Length; i++) s[i] = (char)r.Next(32, 127);
            }),
        };
    }

    [Benchmark]
    public int EncodeLlama3() => _llama3.Encode(_text, addBos: false).Length;

    /// <summary>../shared beside the repository (found from the working directory up), as the tests find it.</summary>
    private static string SharedFile(string relative)
    {
        for (var dir = new DirectoryInfo(Directory.GetCurrentDirectory()); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "shared", relative);
            if (File.Exists(candidate)) return candidate;
        }
        throw new FileNotFoundException($"../shared/{relative} is missing: this benchmark needs the shared data beside the repository.");
    }
}
