using System.Buffers.Binary;
using System.IO.Hashing;
using System.Runtime.InteropServices;
using System.Text;

using BitNetSharp.Formats;

namespace BitNetSharp.Evaluation;

/// <summary>
/// What a saved-logits file was made from: the scoring plan (window, stride, BOS), the vocabulary, the token stream
/// (as an XXH3 hash of its ids) and how many positions it holds, plus free-form notes (model, data, settings).
/// A comparison against the file is valid only for the same plan, vocabulary and tokens.
/// </summary>
public sealed record LogitsFileHeader(int VocabSize, int Ctx, int Stride, int Bos, int TopK, ulong TokensHash, long Positions, string Notes)
{
    public static ulong HashTokens(ReadOnlySpan<int> tokens) => XxHash3.HashToUInt64(MemoryMarshal.AsBytes(tokens));
}

/// <summary>
/// Saved next-token distributions of one evaluation run (<c>bitnet eval --save-logits</c>), so a later run can be
/// compared with it without loading the reference model again. Little-endian binary:
/// <code>
/// "BNLG" u32 version=1, u32 vocab, u32 ctx, u32 stride, i32 bos, u32 topK (0 = full rows), u64 XXH3(tokens),
/// u64 positions, u32 notes length, notes (UTF-8)
/// per scored position: i32 target token, f32 ln p(target),
///   topK = 0: vocab × f32 ln p;   topK > 0: topK × (i32 id, f32 ln p) best first, then f32 ln(mass of the rest)
/// </code>
/// Full rows cost 4·vocab bytes per position; top-k rows 8k + 12 (k = 32: 268 bytes, whatever the vocabulary).
/// </summary>
public static class LogitsFile
{
    public const uint Magic = 0x474C4E42; // "BNLG" little-endian
    public const int Version = 1;
    internal const int FixedHeaderBytes = 4 + 4 * 6 + 8 + 8 + 4;

    /// <summary>True when the file starts with the saved-logits magic (so a path can be told from a model).</summary>
    public static bool IsLogitsFile(string path)
    {
        if (!File.Exists(path)) return false;
        Span<byte> head = stackalloc byte[4];
        using var f = File.OpenRead(path);
        return f.ReadAtLeast(head, 4, throwOnEndOfStream: false) == 4 && BinaryPrimitives.ReadUInt32LittleEndian(head) == Magic;
    }
}

/// <summary>Writes a saved-logits file to a temporary name beside it and renames it into place on <see cref="Complete"/>; disposed without completing, it leaves nothing behind.</summary>
public sealed class LogitsFileWriter : IDisposable
{
    private readonly string _path;
    private readonly AtomicFile.PendingFile _file;
    private readonly Stream _stream;
    private readonly LogitsFileHeader _header;
    private readonly byte[] _row;
    private readonly int[] _top;
    private long _written;
    private bool _done;

    public LogitsFileWriter(string path, LogitsFileHeader header)
    {
        if (header.TopK < 0 || header.TopK > header.VocabSize)
            throw new ArgumentOutOfRangeException(nameof(header), header.TopK, $"top-k must be 0 (full rows) to {header.VocabSize} (the vocabulary).");
        _path = Path.GetFullPath(path);
        _header = header;
        // Through AtomicFile: a link at the path keeps pointing at the new file, a FIFO is written in place (a rename
        // replaced either), and two writers of one path no longer share one ".partial" name.
        try
        {
            _file = AtomicFile.Begin(_path, 1 << 16);
        }
        catch (IOException e)
        {
            throw new IOException($"Cannot write the logits file {path}: {e.Message}", e);
        }
        _stream = _file.Stream;
        int rowBytes = 8 + (header.TopK == 0 ? 4 * header.VocabSize : 8 * header.TopK + 4);
        _row = new byte[rowBytes];
        _top = new int[header.TopK];
        byte[] notes = Encoding.UTF8.GetBytes(header.Notes);
        var head = new byte[LogitsFile.FixedHeaderBytes + notes.Length];
        var s = head.AsSpan();
        BinaryPrimitives.WriteUInt32LittleEndian(s, LogitsFile.Magic);
        BinaryPrimitives.WriteInt32LittleEndian(s[4..], LogitsFile.Version);
        BinaryPrimitives.WriteInt32LittleEndian(s[8..], header.VocabSize);
        BinaryPrimitives.WriteInt32LittleEndian(s[12..], header.Ctx);
        BinaryPrimitives.WriteInt32LittleEndian(s[16..], header.Stride);
        BinaryPrimitives.WriteInt32LittleEndian(s[20..], header.Bos);
        BinaryPrimitives.WriteInt32LittleEndian(s[24..], header.TopK);
        BinaryPrimitives.WriteUInt64LittleEndian(s[28..], header.TokensHash);
        BinaryPrimitives.WriteInt64LittleEndian(s[36..], header.Positions);
        BinaryPrimitives.WriteInt32LittleEndian(s[44..], notes.Length);
        notes.CopyTo(s[48..]);
        _stream.Write(head);
    }

    /// <summary>One scored position: its target token and the row's log-probabilities.</summary>
    public void Write(int target, ReadOnlySpan<double> logProbs)
    {
        if (logProbs.Length != _header.VocabSize) throw new ArgumentException($"A row of {logProbs.Length} log-probabilities for a vocabulary of {_header.VocabSize}.", nameof(logProbs));
        var s = _row.AsSpan();
        BinaryPrimitives.WriteInt32LittleEndian(s, target);
        BinaryPrimitives.WriteSingleLittleEndian(s[4..], (float)logProbs[target]);
        if (_header.TopK == 0)
        {
            for (int i = 0; i < logProbs.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(s[(8 + 4 * i)..], (float)logProbs[i]);
        }
        else
        {
            Distributions.TopK(logProbs, _top);
            for (int j = 0; j < _top.Length; j++)
            {
                BinaryPrimitives.WriteInt32LittleEndian(s[(8 + 8 * j)..], _top[j]);
                BinaryPrimitives.WriteSingleLittleEndian(s[(12 + 8 * j)..], (float)logProbs[_top[j]]);
            }
            // The rest's mass summed over the other tokens in log space (total − top mass lost it to rounding when the
            // top held nearly all, writing ln 0 for a mass of 1e-12).
            BinaryPrimitives.WriteSingleLittleEndian(s[(8 + 8 * _top.Length)..], (float)Distributions.LogSumExpExcept(logProbs, _top));
        }
        _stream.Write(_row);
        _written++;
    }

    /// <summary>Checks every planned position was written, flushes and renames the file into place.</summary>
    public void Complete()
    {
        if (_written != _header.Positions)
            throw new InvalidOperationException($"The logits file {_path} was planned for {_header.Positions} positions; {_written} were written.");
        _file.Commit();
        _done = true;
    }

    public void Dispose()
    {
        if (_done) return;
        _file.Dispose();
    }
}

/// <summary>Reads a saved-logits file position by position, in the order it was written.</summary>
public sealed class LogitsFileReader : IDisposable
{
    private readonly FileStream _stream;
    private readonly byte[] _row;
    private readonly bool[] _seen;
    private long _read;

    /// <summary>How far a row's probabilities may sum from 1 (float rounding of 128K entries moves it by ~1e-6).</summary>
    private const double MassTolerance = 1e-3;

    public LogitsFileHeader Header { get; }
    public string Path { get; }

    /// <summary>The current position's target token and ln p(target).</summary>
    public int Target { get; private set; }
    public double TargetLogProb { get; private set; }

    /// <summary>Full rows: the current row's log-probabilities. Top-k: the ids and ln p of the top tokens and ln(mass of the rest).</summary>
    public double[] LogProbs { get; }
    public int[] TopIds { get; }
    public float[] TopLogProbs { get; }
    public double LogRest { get; private set; }

    public LogitsFileReader(string path)
    {
        Path = System.IO.Path.GetFullPath(path);
        _stream = File.OpenRead(path);
        try
        {
            var head = new byte[LogitsFile.FixedHeaderBytes];
            int got = _stream.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
            if (got < 4 || BinaryPrimitives.ReadUInt32LittleEndian(head) != LogitsFile.Magic)
                throw new InvalidDataException($"{path} is not a BitNetSharp logits file (make one with `bitnet eval --save-logits`).");
            // Its magic, cut short: a truncated file, as the longer cuts are said to be (it read "not a logits file").
            if (got != head.Length)
                throw new InvalidDataException($"{path}: the logits file ends inside its header ({got} of {head.Length} bytes): it was truncated or not written to the end.");
            var s = head.AsSpan();
            int version = BinaryPrimitives.ReadInt32LittleEndian(s[4..]);
            if (version != LogitsFile.Version) throw new InvalidDataException($"{path}: logits file version {version}; this build reads version {LogitsFile.Version}.");
            int vocab = BinaryPrimitives.ReadInt32LittleEndian(s[8..]), ctx = BinaryPrimitives.ReadInt32LittleEndian(s[12..]);
            int stride = BinaryPrimitives.ReadInt32LittleEndian(s[16..]), bos = BinaryPrimitives.ReadInt32LittleEndian(s[20..]);
            int topK = BinaryPrimitives.ReadInt32LittleEndian(s[24..]);
            ulong hash = BinaryPrimitives.ReadUInt64LittleEndian(s[28..]);
            long positions = BinaryPrimitives.ReadInt64LittleEndian(s[36..]);
            int notesLength = BinaryPrimitives.ReadInt32LittleEndian(s[44..]);
            if (vocab <= 0 || vocab > 1 << 24 || ctx < 2 || stride <= 0 || stride > ctx || topK < 0 || topK > vocab || positions < 0 || notesLength < 0 || notesLength > 1 << 20)
                throw new InvalidDataException($"{path}: the logits file header is corrupt (vocab {vocab}, ctx {ctx}, stride {stride}, top-k {topK}, positions {positions}).");
            var notes = new byte[notesLength];
            if (_stream.ReadAtLeast(notes, notesLength, throwOnEndOfStream: false) != notesLength) throw new InvalidDataException($"{path}: the logits file ends inside its header.");
            Header = new LogitsFileHeader(vocab, ctx, stride, bos, topK, hash, positions, Encoding.UTF8.GetString(notes));
            long rowBytes = 8 + (topK == 0 ? 4L * vocab : 8L * topK + 4);
            // A damaged position count past what any file holds: said as such (the product overflowed to a negative size).
            if (positions > (long.MaxValue - LogitsFile.FixedHeaderBytes - notesLength) / rowBytes)
                throw new InvalidDataException($"{path}: the logits file header is corrupt ({positions} positions of {rowBytes} bytes is past any file's size).");
            long expected = LogitsFile.FixedHeaderBytes + notesLength + rowBytes * positions;
            if (_stream.Length != expected)
                // A damaged top-k or position count reads as a size mismatch too (a whole file whose top-k was zeroed was
                // said to be truncated).
                throw new InvalidDataException(_stream.Length < expected
                    ? $"{path}: the logits file is {_stream.Length} bytes; its header (top-k {topK}, {positions} positions) promises {expected}. It was truncated or not written to the end, or its header is damaged."
                    : $"{path}: the logits file is {_stream.Length} bytes, more than the {expected} its header (top-k {topK}, {positions} positions) promises: something was appended to it, or its header is damaged.");
            _row = new byte[rowBytes];
            LogProbs = topK == 0 ? new double[vocab] : [];
            _seen = topK == 0 ? [] : new bool[vocab];
            TopIds = new int[topK];
            TopLogProbs = new float[topK];
        }
        catch
        {
            _stream.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Reads the next position into the properties above, refusing a row that contradicts itself. A full row's total
    /// probability is the caller's to check with <see cref="CheckMass"/> (the KL's own pass computes every p of it).
    /// </summary>
    public void Next()
    {
        if (_read == Header.Positions) throw new InvalidDataException($"{Path}: asked for more than its {Header.Positions} positions.");
        _stream.ReadExactly(_row);
        _read++;
        var s = _row.AsSpan();
        Target = BinaryPrimitives.ReadInt32LittleEndian(s);
        TargetLogProb = BinaryPrimitives.ReadSingleLittleEndian(s[4..]);
        if (Header.TopK == 0)
        {
            bool nan = false;
            for (int i = 0; i < LogProbs.Length; i++)
            {
                double v = BinaryPrimitives.ReadSingleLittleEndian(s[(8 + 4 * i)..]);
                nan |= !(v <= 1e-6); // NaN, +∞ or a positive log-probability
                LogProbs[i] = v;
            }
            // A NaN entry (no checksum guards the rows) dropped out of the KL as zero mass and could be taken as the argmax.
            if (nan) throw new InvalidDataException($"{Path}: position {_read - 1} holds a log-probability that is NaN or above 0; the file is corrupt or was saved from a broken model.");
            // A row is a distribution, and its target's entry is the one stored beside it: one flipped bit in a row (a
            // ln p of −3.7 read as −1e-38, the row's mass 2) changed the KL and agreement without a word, exit 0.
            if ((uint)Target >= (uint)LogProbs.Length)
                throw new InvalidDataException($"{Path}: position {_read - 1} names target token {Target}, outside the vocabulary of {Header.VocabSize}; the file is damaged.");
            // The row's mass is checked by its reader (CheckMass), which computes every p of it for the KL anyway.
            if (TargetLogProb != LogProbs[Target])
                throw new InvalidDataException($"{Path}: position {_read - 1} stores ln p(target) = {TargetLogProb.ToString(System.Globalization.CultureInfo.InvariantCulture)} but its row holds {LogProbs[Target].ToString(System.Globalization.CultureInfo.InvariantCulture)} for token {Target}; the file is damaged (save it again with --save-logits).");
            return;
        }
        for (int j = 0; j < TopIds.Length; j++)
        {
            int id = BinaryPrimitives.ReadInt32LittleEndian(s[(8 + 8 * j)..]);
            if ((uint)id >= (uint)Header.VocabSize) throw new InvalidDataException($"{Path}: position {_read - 1} names token {id}, outside the vocabulary of {Header.VocabSize}.");
            TopIds[j] = id;
            TopLogProbs[j] = BinaryPrimitives.ReadSingleLittleEndian(s[(12 + 8 * j)..]);
            if (!(TopLogProbs[j] <= 1e-6f)) throw new InvalidDataException($"{Path}: position {_read - 1} holds a log-probability that is NaN or above 0 ({TopLogProbs[j].ToString(System.Globalization.CultureInfo.InvariantCulture)}); the file is corrupt or was saved from a broken model.");
        }
        LogRest = BinaryPrimitives.ReadSingleLittleEndian(s[(8 + 8 * TopIds.Length)..]);
        // The top tokens as written: distinct, best first, and with the rest a distribution; the target's ln p is its entry
        // when it is among them, else no more than the rest's. A flipped id or exponent read as a KL of 1.7 nats, exit 0.
        double topMass = 0;
        int targetAt = -1;
        try
        {
            for (int j = 0; j < TopIds.Length; j++)
            {
                if (_seen[TopIds[j]])
                    throw new InvalidDataException($"{Path}: position {_read - 1} names token {TopIds[j]} twice among its top {TopIds.Length}; the file is damaged (save it again with --save-logits).");
                _seen[TopIds[j]] = true;
                if (j > 0 && TopLogProbs[j] > TopLogProbs[j - 1])
                    throw new InvalidDataException($"{Path}: position {_read - 1}'s top tokens are out of order (entry {j} is likelier than entry {j - 1}); the file is damaged (save it again with --save-logits).");
                if (TopIds[j] == Target) targetAt = j;
                topMass += Math.Exp(TopLogProbs[j]);
            }
        }
        finally
        {
            foreach (int id in TopIds) _seen[id] = false;
        }
        if (!double.IsNaN(LogRest) && LogRest <= 1e-6) CheckMass(topMass + Math.Exp(LogRest)); // else the evaluator names it
        if (targetAt >= 0 ? TargetLogProb != TopLogProbs[targetAt] : !(TargetLogProb <= LogRest + 1e-6 || double.IsNaN(LogRest)))
            throw new InvalidDataException($"{Path}: position {_read - 1} stores ln p(target) = {TargetLogProb.ToString(System.Globalization.CultureInfo.InvariantCulture)} for token {Target}, which its top tokens and rest contradict; the file is damaged (save it again with --save-logits).");
    }

    /// <summary>Refuses the current row when its probabilities (summed by the caller, for a full row) are not a distribution.</summary>
    public void CheckMass(double mass)
    {
        if (!(Math.Abs(mass - 1) <= MassTolerance))
            throw new InvalidDataException($"{Path}: position {_read - 1}'s probabilities sum to {mass.ToString("G6", System.Globalization.CultureInfo.InvariantCulture)}, not 1; the file is damaged (save it again with --save-logits).");
    }

    public void Dispose() => _stream.Dispose();
}
