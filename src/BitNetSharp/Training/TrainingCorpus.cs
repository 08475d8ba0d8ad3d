using System.Text;

namespace BitNetSharp.Training;

/// <summary>
/// Training text: UTF-8 files read strictly, split into a training part and a held-out validation part, and (once a
/// tokenizer exists) encoded into token streams. Files are separate documents: an EOS token separates them in the
/// training stream, and no BPE pair crosses from one into the next.
/// </summary>
public sealed class TrainingCorpus
{
    private TrainingCorpus(IReadOnlyList<string> trainDocuments, string validationText)
    {
        TrainDocuments = trainDocuments;
        ValidationText = validationText;
    }

    public IReadOnlyList<string> TrainDocuments { get; }
    public string ValidationText { get; }

    /// <summary>
    /// Reads <paramref name="paths"/> and holds out the last <paramref name="validationFraction"/> of the characters
    /// (moved forward to the next line start, so no line is cut). Throws <see cref="InvalidDataException"/> for an
    /// empty file or one that is not valid UTF-8, naming the file and the byte offset.
    /// </summary>
    public static TrainingCorpus Load(IReadOnlyList<string> paths, double validationFraction = 0.05)
    {
        if (paths.Count == 0) throw new ArgumentException("No training data given; pass one or more UTF-8 text files with --data.", nameof(paths));
        return Split([.. paths.Select(ReadText)], validationFraction);
    }

    /// <summary>A whole file as text, strictly UTF-8 (a leading BOM is dropped); empty or whitespace-only and malformed files are errors.</summary>
    public static string ReadText(string path)
    {
        var strict = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);
        var bytes = File.ReadAllBytes(path);
        if (bytes.All(b => b is (byte)' ' or (byte)'\n' or (byte)'\r' or (byte)'\t'))
            throw new InvalidDataException($"{path}: the file is empty; it needs text.");
        try
        {
            int skip = bytes.AsSpan().StartsWith(Encoding.UTF8.Preamble) ? 3 : 0;
            return strict.GetString(bytes, skip, bytes.Length - skip);
        }
        catch (DecoderFallbackException e)
        {
            throw new InvalidDataException($"{path}: not valid UTF-8 (bad byte sequence at offset {e.Index}); convert the file to UTF-8 first.", e);
        }
    }

    /// <summary>Splits in-memory documents like <see cref="Load"/>.</summary>
    public static TrainingCorpus Split(IReadOnlyList<string> documents, double validationFraction = 0.05)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(validationFraction, 0.0);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(validationFraction, 1.0);
        long total = documents.Sum(d => (long)d.Length);
        long held = (long)Math.Round(total * validationFraction);
        var train = documents.ToList();
        var validation = new StringBuilder();
        while (held > 0 && train.Count > 0)
        {
            var last = train[^1];
            if (last.Length <= held && train.Count > 1)
            {
                validation.Insert(0, last);
                held -= last.Length;
                train.RemoveAt(train.Count - 1);
                continue;
            }
            int cut = (int)Math.Max(1, last.Length - held);
            int newline = last.IndexOf('\n', cut);
            if (newline >= 0 && newline + 1 < last.Length) cut = newline + 1;
            validation.Insert(0, last[cut..]);
            train[^1] = last[..cut];
            break;
        }
        return new TrainingCorpus(train, validation.ToString());
    }

    /// <summary>The training stream: the documents' tokens with EOS between documents.</summary>
    public int[] EncodeTrain(TrainedTokenizer tokenizer)
    {
        var ids = new List<int>();
        for (int i = 0; i < TrainDocuments.Count; i++)
        {
            if (i > 0) ids.Add(tokenizer.EosId);
            tokenizer.Encode(TrainDocuments[i], ids, parseSpecial: false);
        }
        return [.. ids];
    }

    public int[] EncodeValidation(TrainedTokenizer tokenizer) => tokenizer.Encode(ValidationText, parseSpecial: false);
}
