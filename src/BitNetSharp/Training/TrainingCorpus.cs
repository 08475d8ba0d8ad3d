using System.Text;

namespace BitNetSharp.Training;

/// <summary>
/// Training text: UTF-8 files read strictly, split into a training part and a held-out validation part, and (once a
/// tokenizer exists) encoded into token streams. Files are separate documents: an EOS token separates them in the
/// training stream, and no BPE pair crosses from one into the next.
/// </summary>
public sealed class TrainingCorpus
{
    private TrainingCorpus(IReadOnlyList<string> trainDocuments, IReadOnlyList<string> validationDocuments)
    {
        TrainDocuments = trainDocuments;
        ValidationDocuments = validationDocuments;
    }

    public IReadOnlyList<string> TrainDocuments { get; }

    private UInt128? _fingerprint;

    /// <summary>
    /// An XXH128 of the documents as split (training parts, then held-out parts, each with its length): equal for the
    /// same text under any file name, so a resumed training run can tell whether --data is the text it was started on.
    /// </summary>
    public UInt128 Fingerprint => _fingerprint ??= ComputeFingerprint();

    private UInt128 ComputeFingerprint()
    {
        var hash = new System.IO.Hashing.XxHash128();
        Span<byte> length = stackalloc byte[8];
        foreach (var part in new[] { TrainDocuments, ValidationDocuments })
        {
            System.Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(length, part.Count);
            hash.Append(length);
            foreach (var document in part)
            {
                System.Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(length, document.Length);
                hash.Append(length);
                hash.Append(System.Runtime.InteropServices.MemoryMarshal.AsBytes(document.AsSpan()));
            }
        }
        return hash.GetCurrentHashAsUInt128();
    }

    /// <summary>The held-out slice of each document that gave one, in document order.</summary>
    public IReadOnlyList<string> ValidationDocuments { get; }

    /// <summary>
    /// The held-out slices as the text of the validation stream (what `bitnet train --heldout FILE` writes for `bitnet
    /// eval`): the slices with <paramref name="separator"/> (the end-of-text token's text) between them, as
    /// <see cref="EncodeValidation"/> puts EOS there. Joined with nothing, two files' slices ran together ("everyday.Once").
    /// </summary>
    public string ValidationTextWith(string separator) => string.Join(separator, ValidationDocuments);

    /// <summary>The held-out slices joined with nothing between them (their size, for the log line).</summary>
    public string ValidationText => string.Concat(ValidationDocuments);

    /// <summary>
    /// Reads <paramref name="paths"/> and holds out the last <paramref name="validationFraction"/> of each file's
    /// characters (moved forward to the next line start, so no line is cut). Throws <see cref="InvalidDataException"/> for an
    /// empty file or one that is not valid UTF-8, naming the file and the byte offset.
    /// </summary>
    public static TrainingCorpus Load(IReadOnlyList<string> paths, double validationFraction = 0.05, Action<string>? waiting = null, CancellationToken cancellation = default)
    {
        if (paths.Count == 0) throw new ArgumentException("No training data given; pass one or more UTF-8 text files with --data.", nameof(paths));
        return Split([.. paths.Select(p => ReadText(p, cancellation, waiting))], validationFraction);
    }

    /// <summary>
    /// The largest text file read whole: .NET's longest string (0x3FFFFFDF characters). It was 2^30 bytes, 33 more: an ASCII
    /// file of that size passed the check and failed decoding with an OutOfMemoryException.
    /// </summary>
    public const long MaxFileBytes = 0x3FFFFFDF;

    /// <summary>
    /// A whole file as text, strictly UTF-8 (a leading BOM is dropped); empty or whitespace-only and malformed files are
    /// errors. A pipe (`--data &lt;(zcat corpus.gz)`, a FIFO) is read to its end; one with no writer blocks in the open,
    /// so after <see cref="WaitNotice"/> <paramref name="waiting"/> is told, and <paramref name="cancellation"/> ends the
    /// wait (OperationCanceledException): `eval --data FIFO` hung silently and ignored the signal that asked it to stop.
    /// </summary>
    public static string ReadText(string path, CancellationToken cancellation = default, Action<string>? waiting = null)
    {
        var strict = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);
        if (Directory.Exists(path)) throw new InvalidDataException($"{path} is a directory; give a UTF-8 text file.");
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no such file; give a UTF-8 text file.", path);
        // One .NET string holds about 2^30 characters: a larger file failed with a message that did not name it.
        long size = Formats.PathIdentity.Length(path);
        if (size > MaxFileBytes)
            throw new InvalidDataException($"{path}: {size:N0} bytes; one text file may hold at most {MaxFileBytes:N0} (just under 1 GiB). Split it into several files and pass each with --data.");
        var bytes = ReadBytes(path, size, cancellation, waiting);
        int skip = bytes.AsSpan().StartsWith(Encoding.UTF8.Preamble) ? 3 : 0;
        // After the byte-order mark: a file of a BOM and blank lines passed, and failed later naming no file.
        if (bytes.Length == skip)
            throw new InvalidDataException($"{path}: the file is empty; it needs text.");
        // A UTF-16 file (Windows' "Unicode") by its byte-order mark: "bad byte sequence at offset 0" did not say what it was.
        if (bytes.AsSpan().StartsWith((ReadOnlySpan<byte>)[0xFF, 0xFE, 0, 0]) || bytes.AsSpan().StartsWith((ReadOnlySpan<byte>)[0, 0, 0xFE, 0xFF]))
            throw new InvalidDataException($"{path}: the file is UTF-32 (its byte-order mark says so); convert it to UTF-8 first (iconv -f UTF-32 -t UTF-8).");
        if (bytes.AsSpan().StartsWith((ReadOnlySpan<byte>)[0xFF, 0xFE]) || bytes.AsSpan().StartsWith((ReadOnlySpan<byte>)[0xFE, 0xFF]))
            throw new InvalidDataException($"{path}: the file is UTF-16 (its byte-order mark says so); convert it to UTF-8 first (iconv -f UTF-16 -t UTF-8).");
        // Without the mark: NUL is valid UTF-8, so UTF-16 text read as 4,000 tokens of letters and NULs (perplexity 11,714
        // against 22 for the same text as UTF-8) and calibrate wrote a model tuned on it. Every other byte 0 says UTF-16.
        if (LooksLikeUtf16(bytes.AsSpan(skip)) is { } order)
            throw new InvalidDataException($"{path}: the file looks like UTF-16{order} without a byte-order mark (every other byte is 0); convert it to UTF-8 first (iconv -f UTF-16{order} -t UTF-8).");
        if (bytes.AsSpan(skip).IndexOfAnyExcept(" \n\r\t\v\f"u8) < 0)
            throw new InvalidDataException($"{path}: the file holds only blank space; it needs text.");
        try
        {
            return strict.GetString(bytes, skip, bytes.Length - skip);
        }
        catch (DecoderFallbackException e)
        {
            // The decoder counts from where it started, after the byte-order mark: the offset in the file is 3 more.
            long at = e.Index + skip;
            // A character cut at the end (a file cut short, or still being written) is not an encoding problem.
            if (CutCharacterAt(bytes) == at)
                throw new InvalidDataException($"{path}: ends in the middle of a UTF-8 character (offset {at} of {bytes.Length}): the file was cut short, or is still being written.", e);
            throw new InvalidDataException($"{path}: not valid UTF-8 (bad byte sequence at offset {at}); convert the file to UTF-8 first.", e);
        }
    }

    /// <summary>
    /// The file's bytes: a regular file at once (its size checked), one of no known size (a pipe: `&lt;(zcat ...)`) read
    /// in blocks up to <see cref="MaxFileBytes"/>, past which it is refused by name (read whole, a pipe past the limit
    /// failed with an OutOfMemoryException and a stack trace).
    /// </summary>
    internal static byte[] ReadAll(string path, long size, long max = MaxFileBytes)
    {
        if (size > 0) return File.ReadAllBytes(path);
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, bufferSize: 1);
        using var all = new MemoryStream();
        var block = new byte[1 << 20];
        int n;
        while ((n = stream.Read(block, 0, block.Length)) > 0)
        {
            if (all.Length + n > max)
                throw new InvalidDataException($"{path}: more than {max:N0} bytes; one text file may hold at most that (just under 1 GiB). Split it into several files and pass each with --data.");
            all.Write(block, 0, n);
        }
        return all.ToArray();
    }

    /// <summary>Whether the bytes end with the start of a multi-byte UTF-8 character whose continuation is missing.</summary>
    internal static bool EndsInsideACharacter(ReadOnlySpan<byte> bytes) => CutCharacterAt(bytes) >= 0;

    /// <summary>The offset of a multi-byte UTF-8 character cut by the end of <paramref name="bytes"/>, else -1.</summary>
    internal static long CutCharacterAt(ReadOnlySpan<byte> bytes)
    {
        // Back over up to three continuation bytes to a lead byte; cut when the lead promises more than follow.
        for (int back = 1; back <= Math.Min(4, bytes.Length); back++)
        {
            byte b = bytes[^back];
            if ((b & 0xC0) == 0x80) continue;
            int need = b >= 0xF0 && b <= 0xF4 ? 4 : b >= 0xE0 && b < 0xF0 ? 3 : b >= 0xC2 && b < 0xE0 ? 2 : 0;
            return need > back ? bytes.Length - back : -1;
        }
        return -1;
    }

    /// <summary>"LE" or "BE" when the first 4 KiB hold at least 16 byte pairs and 90 % of their odd (LE) or even (BE)
    /// bytes are 0 while the other half are not mostly 0 (text in UTF-16); else null.</summary>
    internal static string? LooksLikeUtf16(ReadOnlySpan<byte> text)
    {
        var head = text[..(Math.Min(text.Length, 4096) & ~1)];
        int pairs = head.Length / 2;
        if (pairs < 16) return null;
        int evenZeros = 0, oddZeros = 0;
        for (int i = 0; i < head.Length; i += 2)
        {
            if (head[i] == 0) evenZeros++;
            if (head[i + 1] == 0) oddZeros++;
        }
        if (oddZeros >= 0.9 * pairs && evenZeros < 0.5 * pairs) return "LE";
        if (evenZeros >= 0.9 * pairs && oddZeros < 0.5 * pairs) return "BE";
        return null;
    }

    /// <summary>How long a read may block before the caller is told it is waiting (a pipe with no writer).</summary>
    public static readonly TimeSpan WaitNotice = TimeSpan.FromSeconds(2);

    private static byte[] ReadBytes(string path, long size, CancellationToken cancellation, Action<string>? waiting)
    {
        if (!cancellation.CanBeCanceled && waiting is null) return ReadAll(path, size);
        // On a pool thread: the open of a FIFO blocks in the kernel until a writer comes, past any cancellation; the
        // caller stops waiting for it (the thread is left blocked, and the process exits without it).
        var read = Task.Run(() => ReadAll(path, size), CancellationToken.None);
        try
        {
            if (!read.Wait((int)WaitNotice.TotalMilliseconds, cancellation))
            {
                waiting?.Invoke($"{path}: waiting for data (a pipe with no writer yet?); Ctrl-C stops.");
                read.Wait(cancellation);
            }
        }
        catch (AggregateException)
        {
            // the read's own error, rethrown as itself below
        }
        return read.GetAwaiter().GetResult();
    }

    /// <summary>
    /// Splits in-memory documents like <see cref="Load"/>: every document gives up its own last
    /// <paramref name="validationFraction"/> (so each source is represented in validation in proportion to its size),
    /// the cut moved forward to the next line start so no line is split (in a long last line, or text without line
    /// breaks, to the next word's start). A document too short to give anything keeps it all for training.
    /// </summary>
    public static TrainingCorpus Split(IReadOnlyList<string> documents, double validationFraction = 0.05)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(validationFraction, 0.0);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(validationFraction, 1.0);
        var train = new List<string>(documents.Count);
        var validation = new List<string>(documents.Count);
        foreach (var document in documents)
        {
            long held = (long)Math.Round(document.Length * validationFraction);
            if (held <= 0 || document.Length < 2) { train.Add(document); continue; }
            int cut = (int)Math.Max(1, document.Length - held);
            int newline = document.IndexOf('\n', cut);
            if (newline >= 0 && newline + 1 < document.Length) cut = newline + 1;
            // No line starts after the cut (the held-out part lies in the last line): take the start of that line
            // instead, so no line is split, unless it is the only one or would hold out more than twice the share.
            else if (document.LastIndexOf('\n', cut - 1) is var before and > 0 && document.Length - (before + 1) <= 2 * held) cut = before + 1;
            // Cut inside the line: at the next word's start, where there is one (a long last line, a file without line
            // breaks: "word word" was cut to "…wo" | "rd word …", a fragment on each side), and never between the halves
            // of a surrogate pair (each half encoded as U+FFFD's bytes, text the corpus does not have).
            // The move is at most half the held-out share (a long run without spaces near the end held out a few characters).
            if (!char.IsWhiteSpace(document[cut - 1]) && !char.IsWhiteSpace(document[cut]))
            {
                int next = cut;
                while (next < document.Length && !char.IsWhiteSpace(document[next])) next++;
                while (next < document.Length && char.IsWhiteSpace(document[next])) next++;
                if (next < document.Length && next - cut <= held / 2) cut = next;
            }
            if (char.IsLowSurrogate(document[cut]) && char.IsHighSurrogate(document[cut - 1])) cut = cut + 1 < document.Length ? cut + 1 : cut - 1;
            if (cut <= 0) { train.Add(document); continue; }
            train.Add(document[..cut]);
            validation.Add(document[cut..]);
        }
        return new TrainingCorpus(train, validation);
    }

    /// <summary>
    /// The training stream: the documents' tokens with EOS between documents. A special token's text inside a document
    /// (TinyStoriesV2 separates its stories with &lt;|endoftext|&gt;) is that token, as <see cref="BpeTrainer"/> cut it
    /// out when it learnt the merges: encoded as text it became a dozen byte-level ids the trainer never saw, and a
    /// model trained on it learnt to spell the marker instead of ending the story.
    /// </summary>
    public int[] EncodeTrain(TrainedTokenizer tokenizer, CancellationToken cancellation = default)
    {
        var ids = new List<int>();
        for (int i = 0; i < TrainDocuments.Count; i++)
        {
            if (i > 0) ids.Add(tokenizer.EosId);
            tokenizer.Encode(TrainDocuments[i], ids, parseSpecial: true, cancellation);
        }
        return [.. ids];
    }

    /// <summary>The validation stream: the held-out slices' tokens with EOS between slices, like the training stream.</summary>
    public int[] EncodeValidation(TrainedTokenizer tokenizer, CancellationToken cancellation = default)
    {
        var ids = new List<int>();
        for (int i = 0; i < ValidationDocuments.Count; i++)
        {
            if (i > 0) ids.Add(tokenizer.EosId);
            tokenizer.Encode(ValidationDocuments[i], ids, parseSpecial: true, cancellation);
        }
        return [.. ids];
    }
}
