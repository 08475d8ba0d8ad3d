using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using BitNetSharp.Formats;
using Spectre.Console;

namespace BitNetSharp.Cli.Commands;

/// <summary><c>bitnet inspect PATH [--json] [--tensors]</c>: what a model file contains, without loading it.</summary>
public static class InspectCommand
{
    public static Command Create(CliConsole cli)
    {
        var path = new Argument<string>("path") { Description = "A .gguf file, a .safetensors file, or a Hugging Face model directory." };
        var json = new Option<bool>("--json") { Description = "Print one JSON document instead of tables." };
        var tensors = new Option<bool>("--tensors") { Description = "List every tensor with its type, shape and size." };
        var codes = new Option<bool>("--codes") { Description = "Load the model and show each packed projection's share of -1/0/+1 codes (flagging tensors with no -1 or no +1) and the weight checksums' model checksum (with --json: under \"codes\", with every tensor's XXH3 checksum)." };
        var command = new Command("inspect", "Show a model's architecture, hyper-parameters, tokenizer, tensors and bits per weight.")
        {
            path, json, tensors, codes,
        };
        command.SetAction(result => cli.Guard(() =>
        {
            // --codes loads the model: a lone .safetensors file cannot be (it has no config), and the table came out
            // before the load failed with exit 1.
            if (result.GetValue(codes) && ModelPath.Detect(result.GetRequiredValue(path)) == ModelPathKind.Safetensors)
                throw new UsageException("--codes loads the model, and a lone .safetensors file has no config.json to load it with; inspect its model directory.");
            var summary = ModelSummary.Load(result.GetRequiredValue(path));
            string? codesError = null;
            if (result.GetValue(json)) codesError = WriteJson(cli.Output, summary, result.GetValue(tensors), result.GetValue(codes) ? result.GetRequiredValue(path) : null);
            else
            {
                WriteTables(cli.Ansi, summary, result.GetValue(tensors));
                if (result.GetValue(codes)) WriteCodes(cli.Output, result.GetRequiredValue(path));
            }
            // The rest of the file is described (this is the tool for finding out what is wrong), and the key the
            // engine would refuse is the error.
            if (summary.ActivationBitsError is { } problem)
            {
                cli.Error.WriteLine("error: " + problem);
                return 1;
            }
            if (codesError is not null)
            {
                cli.Error.WriteLine("error: " + codesError);
                return 1;
            }
            // The table shows what the file says, right or wrong (a NaN norm epsilon, a missing tensor, three layers
            // named beside four layers' tensors), with no word: a file every other command refuses looked fine. It is
            // loaded as generate loads it (the file mapped, never copied to huge pages; --codes already loaded it) and the reason said, as a warning:
            // inspect also reads files this runtime does not run (other architectures, parts of models), exit 0.
            // A Hugging Face directory is not loaded for this: its latent weights would be quantized, a whole load's cost.
            if (!result.GetValue(codes) && summary.Tensors.Count > 0 && ModelPath.Detect(result.GetRequiredValue(path)) == ModelPathKind.Gguf)
            {
                try
                {
                    // With its tokenizer, as generate loads it (a BOS id outside the vocabulary was refused there, unsaid here),
                    // and generate's warnings about the pair.
                    var (weights, tokenizer) = ModelOptions.Load(result.GetRequiredValue(path), MappedOnly);
                    using (weights)
                    {
                        if (ModelOptions.VocabularyWarning(weights, tokenizer) is { } vocabulary) cli.Error.WriteLine("warning: " + vocabulary);
                        if (tokenizer?.CoverageWarning is { } coverage) cli.Error.WriteLine("warning: " + coverage);
                    }
                }
                catch (Exception e) when (e is ModelFormatException or InvalidDataException or ArgumentException or NotSupportedException)
                {
                    cli.Error.WriteLine($"warning: bitnet generate would refuse this file: {e.Message.Split(" (Parameter '")[0]}");
                }
            }
            // A directory's config is checked as generate checks it (cheap: no weights loaded), so a setting this runtime
            // refuses (partial rotary, RoPE scaling, a bias) is warned of here as for a GGUF (it was not).
            else if (!result.GetValue(codes) && ModelPath.Detect(result.GetRequiredValue(path)) == ModelPathKind.HuggingFaceDirectory)
            {
                try
                {
                    Model.ModelConfig.FromHf(BitNetSharp.Formats.HuggingFace.HfConfig.Load(Path.Combine(result.GetRequiredValue(path), BitNetSharp.Formats.HuggingFace.HfConfig.FileName)));
                }
                catch (ModelFormatException e)
                {
                    cli.Error.WriteLine($"warning: bitnet generate would refuse this directory: {e.Message}");
                }
            }
            else if (summary.Tensors.Count == 0 && ModelPath.Detect(result.GetRequiredValue(path)) == ModelPathKind.Gguf)
                cli.Error.WriteLine("note: the file holds no tensors (a vocabulary-only GGUF): no model to run or convert; `bitnet tokenize -m` reads its tokenizer.");
            return 0;
        }));
        return command;
    }

    /// <summary>Loads for inspection map the file and copy nothing (the default copies a large file to huge pages when memory allows).</summary>
    private static readonly Model.ModelLoadOptions MappedOnly = new() { WeightPages = Model.WeightPages.File };

    /// <summary>The code histogram of every packed projection (a load and one unpacking pass: seconds on a 2B model).</summary>
    private static void WriteCodes(TextWriter output, string path)
    {
        using var weights = Model.ModelWeights.Load(path, MappedOnly);
        var stats = Monitoring.WeightCodeStats.Compute(weights);
        var integrity = new Monitoring.WeightIntegrity(weights, probeWords: 0);
        var ic = CultureInfo.InvariantCulture;
        output.WriteLine(string.Create(ic, $"weight codes (share of -1 / 0 / +1 per packed projection); model checksum (XXH3 of {integrity.Tensors.Count} tensor checksums): {integrity.ModelChecksumHex}"));
        var names = Monitoring.HealthNames.ProjectionLabels;
        for (int l = 0; l < stats.Layers; l++)
            for (int j = 0; j < names.Length; j++)
            {
                var c = stats[l, j];
                string flag = Monitoring.WeightCodeStats.IsDegenerate(c) ? "  ALL ONE SIGN (no -1 or no +1: wrong layout or corrupt?)" : "";
                output.WriteLine(string.Create(ic, $"  blk.{l}.{names[j],-5} {c.MinusShare,7:P1} {c.ZeroShare,7:P1} {c.PlusShare,7:P1}{flag}"));
            }
        output.WriteLine(string.Create(ic, $"degenerate tensors: {stats.Degenerate}"));
    }

    /// <summary>
    /// One JSON document: the summary, and with <paramref name="codesOf"/> (the model's path) a "codes" object with the
    /// model checksum, every tensor's checksum (so two files can be compared tensor by tensor, e.g. after a convert) and
    /// each packed projection's code shares.
    /// </summary>
    /// <returns>Why the model could not be loaded for its codes (the document then says so under "codes"), or null.</returns>
    private static string? WriteJson(TextWriter output, ModelSummary summary, bool includeTensors, string? codesOf)
    {
        string? codesError = null;
        using var stream = new MemoryStream();
        using (var writer = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            if (codesOf is null) summary.WriteJson(writer, includeTensors);
            else
            {
                using var summaryStream = new MemoryStream();
                using (var inner = new Utf8JsonWriter(summaryStream)) summary.WriteJson(inner, includeTensors);
                using var document = JsonDocument.Parse(summaryStream.ToArray());
                writer.WriteStartObject();
                foreach (var property in document.RootElement.EnumerateObject()) property.WriteTo(writer);
                codesError = WriteCodesJson(writer, codesOf);
                writer.WriteEndObject();
            }
        }
        output.WriteLine(System.Text.Encoding.UTF8.GetString(stream.ToArray()));
        return codesError;
    }

    private static string? WriteCodesJson(Utf8JsonWriter w, string path)
    {
        Model.ModelWeights weights;
        try
        {
            weights = Model.ModelWeights.Load(path, MappedOnly);
        }
        catch (Exception e) when (e is ModelFormatException or InvalidDataException or IOException or UnauthorizedAccessException or NotSupportedException)
        {
            // The engine refuses the file: the summary is still printed (this is the tool for finding out why; the whole
            // document was lost), with the reason where the codes would be.
            w.WriteStartObject("codes");
            w.WriteString("error", e.Message);
            w.WriteEndObject();
            return e.Message;
        }
        using var _ = weights;
        var stats = Monitoring.WeightCodeStats.Compute(weights);
        var integrity = new Monitoring.WeightIntegrity(weights, probeWords: 0);
        w.WriteStartObject("codes");
        w.WriteString("model_checksum", integrity.ModelChecksumHex);
        w.WriteString("checksum", "XXH3-64 of each tensor's bytes as loaded; the model checksum is XXH3-64 of the tensor checksums in order");
        w.WriteStartArray("tensor_checksums");
        foreach (var t in integrity.Tensors)
        {
            w.WriteStartObject();
            w.WriteString("name", t.Name);
            w.WriteNumber("bytes", t.Bytes);
            w.WriteString("xxh3", t.HashHex);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteStartArray("projections");
        var names = Monitoring.HealthNames.ProjectionLabels;
        for (int l = 0; l < stats.Layers; l++)
            for (int j = 0; j < names.Length; j++)
            {
                var c = stats[l, j];
                w.WriteStartObject();
                w.WriteString("name", $"blk.{l}.{names[j]}");
                w.WriteNumber("minus", c.MinusShare);
                w.WriteNumber("zero", c.ZeroShare);
                w.WriteNumber("plus", c.PlusShare);
                w.WriteBoolean("degenerate", Monitoring.WeightCodeStats.IsDegenerate(c));
                w.WriteEndObject();
            }
        w.WriteEndArray();
        w.WriteNumber("degenerate", stats.Degenerate);
        w.WriteEndObject();
        return null;
    }

    private static void WriteTables(IAnsiConsole console, ModelSummary s, bool includeTensors)
    {
        var facts = new Table().Border(TableBorder.Rounded).AddColumn("Property").AddColumn("Value");
        // A value past 200 characters is cut, with its length: a 20 MiB general.name took 20 s and 632 MB to lay out as
        // a table and printed 26 MB. --json keeps every value whole.
        void Row(string name, string? value) => facts.AddRow(new Text(name), new Text(value is null ? "-"
            : value.Length <= 200 ? value : string.Create(CultureInfo.InvariantCulture, $"{value[..(char.IsHighSurrogate(value[199]) ? 199 : 200)]}… ({value.Length:N0} characters; --json has it whole)")));
        var h = s.HyperParameters;

        Row("path", s.Path);
        Row("format", s.FormatDescription);
        Row("file size", FormatBytes(s.FileBytes));
        Row("architecture", s.Architecture);
        Row("name", s.Name);
        if (s.FileType is { } ft) Row("file type", ft.ToString(CultureInfo.InvariantCulture) + (FileTypeName(ft) is { } ftName ? $" ({ftName})" : ""));
        if (s.Quantization is not null) Row("quantization", s.Quantization);
        Row("activation bits", s.ActivationBitsError is not null ? "invalid (see the error below)"
            : s.ActivationBits is { } bits ? $"{bits} (from the file; --activation-bits overrides)" : "8 (every BitLinear input)");
        Row("embedding length", Int(h.EmbeddingLength));
        Row("layers", Int(h.BlockCount));
        Row("heads / kv heads", $"{Int(h.HeadCount)} / {Int(h.HeadCountKv)}");
        Row("feed-forward length", Int(h.FeedForwardLength));
        Row("vocabulary", Int(h.VocabSize));
        Row("context length", Int(h.ContextLength));
        Row("rope theta", Real(h.RopeTheta));
        Row("rms norm eps", Real(h.RmsNormEps));
        Row("tokenizer", TokenizerText(s.Tokenizer));
        Row("tensors", $"{s.Tensors.Count} ({string.Join(", ", s.TypeCounts.Select(c => $"{c.Key}: {c.Value}"))})");
        Row("parameters", $"{Count(s.TotalParameters)} total, {Count(s.ProjectionParameters)} in projections");
        Row("tensor bytes", $"{FormatBytes(s.TensorBytes)} total, {FormatBytes(s.ProjectionTensorBytes)} in projections");
        Row("bits per weight", $"{Bits(s.BitsPerWeight)} overall, {Bits(s.ProjectionBitsPerWeight)} in projections");
        console.Write(facts);

        if (!includeTensors) return;
        var table = new Table().Border(TableBorder.Simple)
            .AddColumn("Name")
            .AddColumn("Type")
            .AddColumn("Shape")
            .AddColumn(new TableColumn("Bytes").RightAligned());
        foreach (var t in s.Tensors)
            table.AddRow(new Text(t.Name), new Text(t.Type), new Text("[" + string.Join(", ", t.Shape) + "]"), new Text(t.Bytes.ToString("N0", CultureInfo.InvariantCulture)));
        console.Write(table);
    }

    private static string TokenizerText(TokenizerSummary t)
    {
        if (t.Model is null && t.TokenCount is null && t.Files.Count == 0) return "none";
        var parts = new List<string> { t.Model ?? "unknown" };
        if (t.Pre is not null) parts.Add($"pre {t.Pre}");
        if (t.TokenCount is { } n) parts.Add($"{n:N0} tokens");
        if (t.MergeCount is { } m) parts.Add($"{m:N0} merges");
        if (t.BosTokenId is { } bos) parts.Add($"bos {bos}");
        if (t.EosTokenIds.Count > 0) parts.Add($"eos {string.Join("/", t.EosTokenIds)}");
        // A directory's files beside what is known of them (they replaced the counts and ids, so the stop ids read
        // from generation_config.json were never shown in the table).
        if (t.Files.Count > 0) parts.Add($"files: {string.Join(", ", t.Files)}");
        return string.Join(", ", parts);
    }

    private static string Int(int? value) => value?.ToString("N0", CultureInfo.InvariantCulture) ?? "-";

    private static string Real(double? value) => value?.ToString("G", CultureInfo.InvariantCulture) ?? "-";

    private static string Bits(double? value) => value?.ToString("0.####", CultureInfo.InvariantCulture) ?? "-";

    private static string Count(long value) => value switch
    {
        >= 1_000_000_000 => $"{value / 1e9:0.###}B ({value:N0})",
        >= 1_000_000 => $"{value / 1e6:0.###}M ({value:N0})",
        _ => value.ToString("N0", CultureInfo.InvariantCulture),
    };

    private static string FormatBytes(long bytes) => bytes switch
    {
        >= 1L << 30 => $"{bytes / (double)(1L << 30):0.##} GiB ({bytes:N0} B)",
        >= 1L << 20 => $"{bytes / (double)(1L << 20):0.##} MiB ({bytes:N0} B)",
        >= 1L << 10 => $"{bytes / 1024.0:0.##} KiB ({bytes:N0} B)",
        _ => $"{bytes} B",
    };

    /// <summary>llama.cpp's name for a general.file_type (its llama_ftype; 40 is bitnet.cpp's I2_S), for the types this
    /// runtime reads or writes, else null (only 40 was named: the TQ1_0/TQ2_0/F16 files convert writes read as bare numbers).</summary>
    public static string? FileTypeName(uint fileType) => fileType switch
    {
        0 => "all F32",
        1 => "mostly F16",
        7 => "mostly Q8_0",
        18 => "mostly Q6_K",
        32 => "mostly BF16",
        36 => "mostly TQ1_0",
        37 => "mostly TQ2_0",
        40 => "mostly I2_S",
        _ => null,
    };
}
