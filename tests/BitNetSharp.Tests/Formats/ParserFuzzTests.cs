using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Formats.Safetensors;

namespace BitNetSharp.Tests.Formats;

/// <summary>
/// Seeded mutation fuzzing of the model-file parsers (GGUF, safetensors, config.json, SentencePiece): every mutated file must either open (and then every tensor span and
/// value must be readable) or fail with <see cref="ModelFormatException"/>. Anything else — an index exception, an
/// out-of-memory from a trusted count, a hang — is a bug. Seeds are fixed so a failure reproduces exactly.
/// </summary>
public class ParserFuzzTests
{
    /// <summary>Values that hit the edges of count, length and offset checks when written over a u64 field.</summary>
    private static readonly ulong[] InterestingU64 =
    [
        0, 1, 2, 3, 7, 8, 31, 32, 33, 63, 64, 255, 256, 4096, 65535, 65536, int.MaxValue, uint.MaxValue,
        1UL << 32, 1UL << 40, 1UL << 60, long.MaxValue, ulong.MaxValue, ulong.MaxValue - 7,
    ];

    /// <summary>u32 values that are value-type ids, ggml type ids and dimension counts.</summary>
    private static readonly uint[] InterestingU32 = [0, 1, 2, 4, 5, 7, 8, 9, 10, 12, 13, 14, 30, 34, 35, 36, 37, 38, 39, 40, 255, uint.MaxValue];

    internal static byte[] Mutate(byte[] original, Random rng, int hotRegion)
    {
        var bytes = new List<byte>(original);
        Span<byte> field = stackalloc byte[8];
        int mutations = 1 + rng.Next(4);
        for (int m = 0; m < mutations && bytes.Count > 0; m++)
        {
            int region = Math.Min(hotRegion, bytes.Count);
            int at = rng.Next(region);
            switch (rng.Next(7))
            {
                case 0:
                    bytes[at] = (byte)rng.Next(256);
                    break;
                case 1:
                    bytes[at] ^= (byte)(1 << rng.Next(8));
                    break;
                case 2:
                {
                    var insert = new byte[1 + rng.Next(8)];
                    rng.NextBytes(insert);
                    bytes.InsertRange(at, insert);
                    break;
                }
                case 3:
                    bytes.RemoveRange(at, Math.Min(1 + rng.Next(16), bytes.Count - at));
                    break;
                case 4:
                    bytes.RemoveRange(at, bytes.Count - at);
                    break;
                case 5:
                    if (at + 8 <= bytes.Count)
                    {
                        BinaryPrimitives.WriteUInt64LittleEndian(field, InterestingU64[rng.Next(InterestingU64.Length)]);
                        for (int i = 0; i < 8; i++) bytes[at + i] = field[i];
                    }
                    break;
                default:
                    if (at + 4 <= bytes.Count)
                    {
                        BinaryPrimitives.WriteUInt32LittleEndian(field, InterestingU32[rng.Next(InterestingU32.Length)]);
                        for (int i = 0; i < 4; i++) bytes[at + i] = field[i];
                    }
                    break;
            }
        }
        return bytes.ToArray();
    }

    private static void AssertOpensOrFailsCleanly(byte[] bytes, Func<byte[], IDisposable> open, Action<IDisposable> touch, string context)
    {
        var clock = Stopwatch.StartNew();
        try
        {
            using var opened = open(bytes);
            touch(opened);
        }
        catch (ModelFormatException)
        {
        }
        catch (Exception e)
        {
            Assert.Fail($"{context}: {e.GetType().Name} instead of ModelFormatException: {e.Message}\n{e.StackTrace}");
        }
        // Parsing is linear in the input; a few megabytes take milliseconds, so seconds mean a pathology.
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"{context}: parsing took {clock.Elapsed}"); // a hang, not a slow host (one GC pause of a loaded CI machine could pass 5 s)
    }

    private static void TouchGguf(IDisposable d)
    {
        var f = (GgufFile)d;
        long sum = 0;
        foreach (var t in f.Tensors)
        {
            var data = f.GetTensorData(t);
            if (data.Length > 0) sum += data[0] + data[^1];
        }
        foreach (var (_, value) in f.Metadata.Entries) sum += value.ToString().Length;
        _ = f.Metadata.Architecture;
        GC.KeepAlive(sum);
    }

    private static void FuzzGguf(byte[] original, int iterations, int seed, int hotRegion)
    {
        var rng = new Random(seed);
        for (int i = 0; i < iterations; i++)
            AssertOpensOrFailsCleanly(Mutate(original, rng, hotRegion), b => GgufFile.Parse(b, "fuzz.gguf"), TouchGguf, $"GGUF seed {seed} iteration {i}");
    }

    [Fact]
    public void MutatedSmallGgufOpensOrFailsCleanly()
    {
        var original = TestGguf.Small().ToArray();
        FuzzGguf(original, 4000, seed: 1234, hotRegion: original.Length);
    }

    [Fact]
    public void MutatedBitNetGgufHeaderOpensOrFailsCleanly()
    {
        var original = TestGguf.TinyBitNet(alignment: 64).ToArray();
        int headerEnd;
        using (var f = GgufFile.Parse(original)) headerEnd = (int)f.DataOffset;
        FuzzGguf(original, 1500, seed: 99, hotRegion: headerEnd);
    }

    [Fact]
    public void MutatedTinyRandomLlamaOpensOrFailsCleanly()
    {
        var original = File.ReadAllBytes(SharedData.RequirePath("models/llama-2-tiny-random.gguf"));
        int headerEnd;
        using (var f = GgufFile.Parse(original)) headerEnd = (int)f.DataOffset;
        var rng = new Random(7);
        // Most of this header is 32000 token strings; half the mutations aim at the first and last few KB, where the
        // counts, types and tensor infos are.
        for (int i = 0; i < 300; i++)
        {
            byte[] mutated = rng.Next(2) == 0
                ? Mutate(original, rng, 4096)
                : MutateNear(original, rng, headerEnd - 1024, headerEnd);
            AssertOpensOrFailsCleanly(mutated, b => GgufFile.Parse(b, "fuzz.gguf"), TouchGguf, $"tiny-random iteration {i}");
        }
    }

    private static byte[] MutateNear(byte[] original, Random rng, int from, int to)
    {
        var copy = (byte[])original.Clone();
        int at = from + rng.Next(to - from - 8);
        BinaryPrimitives.WriteUInt64LittleEndian(copy.AsSpan(at), InterestingU64[rng.Next(InterestingU64.Length)]);
        return copy;
    }

    private static void TouchSafetensors(IDisposable d)
    {
        var f = (SafetensorsFile)d;
        foreach (var t in f.Tensors)
        {
            if (t.IsSupported && t.ElementCount < 1 << 20) _ = f.ReadFloat32(t);
            else if (!t.IsSupported) Assert.Throws<ModelFormatException>(() => f.GetTensorData(t).Length);
        }
        foreach (var (k, v) in f.Metadata) GC.KeepAlive(k + v);
    }

    [Fact]
    public void MutatedSafetensorsOpensOrFailsCleanly()
    {
        var builder = TestSafetensors.Small();
        var original = builder.ToArray();
        var header = builder.HeaderJson();
        var data = builder.DataBytes();
        var rng = new Random(4321);
        for (int i = 0; i < 4000; i++)
        {
            byte[] mutated = (i % 3) switch
            {
                0 => Mutate(original, rng, original.Length),
                1 => TestSafetensors.Assemble(MutateJsonNumbers(header, rng), data),
                _ => TestSafetensors.Assemble(MutateJsonStrings(header, rng), data),
            };
            AssertOpensOrFailsCleanly(mutated, b => SafetensorsFile.Parse(b, "fuzz.safetensors"), TouchSafetensors, $"safetensors seed 4321 iteration {i}");
        }
    }

    /// <summary>
    /// config.json (a real fixture's): every mutation of its numbers, strings and bytes parses or is a
    /// ModelFormatException naming the file (config.json had no fuzz test; half a surrogate pair threw
    /// InvalidOperationException here too).
    /// </summary>
    [Fact]
    public void MutatedConfigJsonParsesOrFailsCleanly()
    {
        string json = File.ReadAllText(RepositoryFiles.Path("tests/fixtures/hf-bitnet/bitlinear-offline-untied-f32/config.json"));
        var original = Encoding.UTF8.GetBytes(json);
        var rng = new Random(2468);
        for (int i = 0; i < 3000; i++)
        {
            byte[] mutated = (i % 3) switch
            {
                0 => Mutate(original, rng, original.Length),
                1 => Encoding.UTF8.GetBytes(MutateJsonNumbers(json, rng)),
                _ => Encoding.UTF8.GetBytes(MutateJsonStrings(json, rng)),
            };
            AssertOpensOrFailsCleanly(mutated, b =>
            {
                var config = BitNetSharp.Formats.HuggingFace.HfConfig.Parse(b, "config.json");
                _ = BitNetSharp.Model.ModelConfig.FromHf(config);
                return new MemoryStream();
            }, _ => { }, $"config.json seed 2468 iteration {i}");
        }
    }

    /// <summary>
    /// A SentencePiece tokenizer.model (Llama 2's) with its head mutated loads as a tokenizer that encodes, or is a
    /// ModelFormatException: the protobuf reader's lengths and varints come from the file.
    /// </summary>
    [Fact]
    public void MutatedSentencePieceModelLoadsOrFailsCleanly()
    {
        var original = File.ReadAllBytes(SharedData.RequirePath("tokenizers/llama2_tokenizer.model"));
        using var dir = new TestGguf.TempDirectory();
        var rng = new Random(1357);
        for (int i = 0; i < 150; i++)
        {
            var mutated = Mutate(original, rng, rng.Next(2) == 0 ? 4096 : original.Length);
            AssertOpensOrFailsCleanly(mutated, b =>
            {
                File.WriteAllBytes(dir.File("tokenizer.model"), b);
                var tokenizer = BitNetSharp.Tokenization.TokenizerLoader.FromHfDirectory(dir.Path);
                _ = tokenizer.Encode("Hello world, 𝟏𝟐 café", addBos: true);
                return new MemoryStream();
            }, _ => { }, $"tokenizer.model seed 1357 iteration {i}");
        }
    }

    /// <summary>
    /// Replaces the text of a few string literals (names, metadata keys and values, dtypes) with escapes and edge texts,
    /// keeping the JSON well-formed: half a surrogate pair (valid JSON, no text: GetString() threw
    /// InvalidOperationException, which byte and number mutations never reach), NUL, a pair, quotes, a name another
    /// entry has, a long run; or nests the header deep.
    /// </summary>
    internal static string MutateJsonStrings(string header, Random rng)
    {
        string[] texts = [@"\ud800", @"a\udc00", @"\uDBFF\u0041", @"\ud83d\ude00", @"\u0000", @"\\", @"\""", "", "__metadata__", "dtype", "a", new string('x', 5000), "\u00e9"];
        if (rng.Next(20) == 0)
        {
            int depth = 1 + rng.Next(40);
            return new string('[', depth) + header + new string(']', depth);
        }
        var sb = new StringBuilder(header);
        int changes = 1 + rng.Next(2);
        for (int c = 0; c < changes; c++)
        {
            var text = sb.ToString();
            int open = text.IndexOf('"', rng.Next(text.Length));
            if (open < 0) continue;
            int close = open + 1;
            while (close < text.Length && text[close] != '"') close += text[close] == '\\' ? 2 : 1;
            if (close >= text.Length) continue;
            sb.Remove(open + 1, close - open - 1).Insert(open + 1, texts[rng.Next(texts.Length)]);
        }
        return sb.ToString();
    }

    /// <summary>Replaces a few numbers or dtype strings in the header with edge values, keeping the JSON well-formed.</summary>
    internal static string MutateJsonNumbers(string header, Random rng)
    {
        string[] numbers = ["0", "-1", "1", "7", "8", "4294967296", "9223372036854775807", "18446744073709551615", "1e309", "0.5", "null", "\"x\"", "[]", "{}"];
        string[] dtypes = ["\"F32\"", "\"BF16\"", "\"U8\"", "\"F64\"", "\"Q4\"", "7", "\"\""];
        var sb = new StringBuilder(header);
        int changes = 1 + rng.Next(3);
        for (int c = 0; c < changes; c++)
        {
            var text = sb.ToString();
            if (rng.Next(4) == 0)
            {
                int at = text.IndexOf("\"dtype\":", rng.Next(text.Length), StringComparison.Ordinal);
                if (at < 0) continue;
                int start = at + 8, end = text.IndexOf(',', start);
                sb.Remove(start, end - start).Insert(start, dtypes[rng.Next(dtypes.Length)]);
                continue;
            }
            int pos = rng.Next(text.Length);
            while (pos < text.Length && !char.IsAsciiDigit(text[pos])) pos++;
            if (pos >= text.Length) continue;
            int stop = pos;
            while (stop < text.Length && char.IsAsciiDigit(text[stop])) stop++;
            sb.Remove(pos, stop - pos).Insert(pos, numbers[rng.Next(numbers.Length)]);
        }
        return sb.ToString();
    }
}
