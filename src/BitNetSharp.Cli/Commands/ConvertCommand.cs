using System.CommandLine;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Model;
using BitNetSharp.Tokenization;
using Spectre.Console;

namespace BitNetSharp.Cli.Commands;

/// <summary><c>bitnet convert IN OUT.gguf --type i2_s|tq2_0|tq1_0|f16</c>: an HF directory or a GGUF to a packed GGUF.</summary>
public static class ConvertCommand
{
    public static Command Create(CliConsole cli)
    {
        var input = new Argument<string>("input") { Description = "A Hugging Face model directory or a .gguf file." };
        var output = new Argument<string>("output") { Description = "The .gguf file to write (written to a temporary name, renamed when complete)." };
        var type = new Option<string>("--type") { Description = "Projection encoding: i2_s (bitnet.cpp's type), tq2_0 / tq1_0 (llama.cpp's types), f16. The architecture stays the source's: a 2B4T-style model is written as bitnet-b1.58, which bitnet.cpp and this runtime run and upstream llama.cpp does not know.", DefaultValueFactory = _ => "i2_s" };
        var embedding = new Option<string>("--embedding-type")
        {
            Description = "Token embedding / output head: keep (as stored), f32 (what calibrate --tune needs), f16, q8_0 or q6_k (q6_k: 3.1x fewer head bytes per token than f16).",
            DefaultValueFactory = _ => "keep",
        };
        var noTokenizer = new Option<bool>("--no-tokenizer")
        {
            Description = "Write the weights alone, without the source's tokenizer (one that cannot be read or stored in GGUF is otherwise an error).",
        };
        var command = new Command("convert", "Convert a model to a GGUF with packed ternary weights.") { input, output, type, embedding, noTokenizer };
        // With the cancellation token: Ctrl-C/SIGTERM stops between tensors and removes the partial output (a hidden
        // temporary of the model's size was left behind until the next convert to the same name).
        command.SetAction((result, cancellation) => Task.FromResult(cli.Guard(() =>
        {
            var packed = result.GetValue(type)!.Trim().ToLowerInvariant() switch
            {
                "i2_s" or "i2s" => PackedWeightType.I2_S,
                "tq2_0" => PackedWeightType.TQ2_0,
                "tq1_0" => PackedWeightType.TQ1_0,
                "f16" => PackedWeightType.F16,
                var other => throw new UsageException($"--type '{other}' is not one of i2_s, tq2_0, tq1_0, f16."),
            };
            GgmlType? embeddingType = result.GetValue(embedding)!.Trim().ToLowerInvariant() switch
            {
                "keep" => null,
                "f32" => GgmlType.F32,
                "f16" => GgmlType.F16,
                "q8_0" => GgmlType.Q8_0,
                "q6_k" => GgmlType.Q6_K,
                var other => throw new UsageException($"--embedding-type '{other}' is not one of keep, f32, f16, q8_0, q6_k."),
            };
            string outPath = result.GetRequiredValue(output);
            // `convert IN "$OUT"` with OUT unset failed with .NET's "The value cannot be an empty string".
            if (string.IsNullOrWhiteSpace(outPath)) throw new UsageException("the output path is empty; give a file path such as model.gguf.");
            if (Directory.Exists(outPath) || outPath.EndsWith('/') || outPath.EndsWith(Path.DirectorySeparatorChar))
                throw new UsageException($"the output {outPath} is a directory; give a file path such as {Path.Combine(outPath, "model.gguf")}.");
            string? dir = Path.GetDirectoryName(Path.GetFullPath(outPath));
            if (dir is not null && !Directory.Exists(dir)) throw new UsageException($"the output folder {dir} does not exist.");
            string inPath = result.GetRequiredValue(input);
            // On Linux the rename would replace the mapped source with its own re-encoding; on Windows it would fail after all the work.
            OutputFile.CheckNotInput("the output", outPath, ("input model", inPath));
            // Read once, tensor by tensor: mapped, never copied into huge pages.
            using var weights = ModelWeights.Load(inPath, new ModelLoadOptions { WeightPages = WeightPages.File });
            try
            {
                ModelConverter.CheckShapes(weights, packed, embeddingType);
            }
            catch (ArgumentException shape)
            {
                // A --type or --embedding-type this model's shapes cannot hold: the user's choice, exit 2 (as train's --packing).
                throw new UsageException(shape.Message.Split(" (Parameter '")[0]);
            }
            foreach (var warning in ModelConverter.CompatibilityWarnings(weights, packed)) cli.Error.WriteLine("warning: " + warning);
            if (weights.HfDirectory?.Note is { } note) cli.Error.WriteLine("note: " + note + ".");
            string tokenizerNote;
            BitNetTokenizer? tokenizer = null;
            IReadOnlyList<KeyValuePair<string, BitNetSharp.Formats.Gguf.GgufValue>> chatTemplates = [];
            bool withoutTokenizer = result.GetValue(noTokenizer);
            if (withoutTokenizer)
                tokenizerNote = "no tokenizer (--no-tokenizer)";
            else if (weights.Gguf is { } gguf)
            {
                // The vocabulary is copied key by key, as it is (nothing the source holds is lost). It is loaded first, so
                // one that every other command refuses (a BOS id outside the vocabulary, a malformed merge, a missing
                // tokenizer.ggml.model) is said rather than written into a new file without a word; as for a Hugging Face
                // directory's tokenizer, a warning, the weights converted all the same.
                string? tokenizerProblem = null;
                try
                {
                    if (ModelOptions.HasGgufTokenizer(gguf, inPath)
                        && ModelOptions.VocabularyWarning(weights, TokenizerLoader.FromGguf(gguf)) is { } mismatch) tokenizerProblem = mismatch;
                }
                catch (Exception refused) when (refused is BitNetSharp.Formats.ModelFormatException or ArgumentException or InvalidDataException or NotSupportedException)
                {
                    tokenizerProblem = refused.Message.Split(" (Parameter '")[0];
                }
                if (tokenizerProblem is not null)
                    cli.Error.WriteLine($"warning: the tokenizer is carried over as the source has it, and bitnet cannot read text with it: {tokenizerProblem} Fix the source's tokenizer keys, or give the output's prompts as --prompt-ids.");
                tokenizerNote = !gguf.Metadata.ContainsKey("tokenizer.ggml.model") && !gguf.Metadata.ContainsKey("tokenizer.ggml.tokens") ? "no tokenizer in the source"
                    : tokenizerProblem is null ? "tokenizer carried over" : "tokenizer carried over as it is (see the warning)";
            }
            else if (!Directory.Exists(inPath) || !HasTokenizerFiles(inPath))
                tokenizerNote = "no tokenizer in the source (tokenizer.json, tokenizer.model or vocab.json + merges.txt)";
            else
            {
                // A tokenizer that cannot be read or has no GGUF form stops the conversion: written without one (a warning,
                // exit 0), a script went on with a model that could not read text. --no-tokenizer converts the weights alone.
                const string WeightsAlone = "; pass --no-tokenizer to convert the weights alone";
                try
                {
                    tokenizer = TokenizerLoader.FromHfDirectory(inPath);
                }
                catch (BitNetSharp.Formats.ModelFormatException unreadable)
                {
                    throw new BitNetSharp.Formats.ModelFormatException(unreadable.FilePath, unreadable.Reason + WeightsAlone, unreadable.Item, unreadable);
                }
                catch (Exception refused) when (refused is ArgumentException or InvalidDataException or NotSupportedException)
                {
                    // The same refusals the GGUF branch reads as a bad tokenizer: a model file's problem (exit 1), with the way out.
                    throw new BitNetSharp.Formats.ModelFormatException(inPath, "the tokenizer cannot be read: " + refused.Message.Split(" (Parameter '")[0] + WeightsAlone, inner: refused);
                }
                if (GgufTokenizerWriter.CannotWrite(tokenizer) is { } reason)
                    throw new BitNetSharp.Formats.ModelFormatException(inPath, $"the tokenizer cannot be written to a GGUF: {reason}{WeightsAlone} (and keep the directory's tokenizer files to read text)");
                if (GgufTokenizerWriter.StopsNotWritten(tokenizer) is { Count: > 0 } lost)
                    cli.Error.WriteLine($"warning: the source's generation stops at token id(s) {string.Join(", ", lost)} (eos_token_id), which a GGUF cannot mark beside its EOS ({tokenizer.EosId}) and end-of-turn ({GgufTokenizerWriter.EotToWrite(tokenizer)}) tokens: the converted model runs on through them; pass --stop with their text when running it.");
                chatTemplates = GgufTokenizerWriter.ChatTemplates(inPath);
                int rows = weights.Config.VocabSize, known = tokenizer.VocabularySize;
                tokenizerNote = $"tokenizer written ({known:N0} tokens, {tokenizer.Description})"
                    + (rows > known ? $"; padded with {rows - known:N0} unused [PADn] tokens to the embedding's {rows:N0} rows" : "")
                    + (chatTemplates.Count > 0 ? ", chat template" : "");
            }
            // Each tensor is encoded as it is written (one in memory at a time), so the bar runs over the write.
            long written = 0;
            try
            {
                cli.Ansi.Progress().AutoClear(true).Start(ctx =>
                {
                    var task = ctx.AddTask($"packing {weights.Config.Layers} layers as {packed}");
                    var writer = ModelConverter.ToGguf(weights, packed, (done, total) => { task.MaxValue = total; task.Value = done; }, tokenizer, embeddingType, sourceTokenizer: !withoutTokenizer);
                    // The chat template comes along with the tokenizer (llama.cpp fell back to ChatML without it).
                    if (tokenizer is not null)
                        foreach (var (key, value) in chatTemplates)
                            if (!writer.Contains(key)) writer.Add(key, value);
                    written = writer.Write(outPath, cancellation);
                });
            }
            catch (OperationCanceledException) when (cancellation.IsCancellationRequested)
            {
                // A pipe or device is written in place: what went out cannot be taken back.
                cli.Error.WriteLine(BitNetSharp.Formats.AtomicFile.WritesInPlace(outPath)
                    ? $"cancelled: {outPath} (a pipe or device) may have received part of the GGUF, which is not a whole file."
                    : "cancelled: nothing written.");
                return 130;
            }
            string embeddingNote = embeddingType is { } e ? $"embedding {GgmlTypeInfo.Name(e)}" : $"embedding {GgmlTypeInfo.Name(weights.TokenEmbedding.Type)} (kept)";
            // On stderr, with the bytes written: `convert IN /dev/stdout | ...` ended its GGUF with this line, and the
            // size read back was the /dev/stdout link's.
            cli.Error.WriteLine($"wrote {outPath} ({written:N0} bytes, {packed}, {embeddingNote}, {tokenizerNote})");
            return 0;
        })));
        return command;
    }

    private static bool HasTokenizerFiles(string directory) => Formats.HuggingFace.HfModelDirectory.HasVocabulary(directory);
}
