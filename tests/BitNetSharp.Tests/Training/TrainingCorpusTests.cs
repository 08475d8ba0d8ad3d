using BitNetSharp.Tests.Formats;
using BitNetSharp.Training;

namespace BitNetSharp.Tests.Training;

/// <summary>How a corpus is read and split into training and held-out text.</summary>
public class TrainingCorpusTests
{
    /// <summary>When the held-out share falls inside the last line, the cut moves back to that line's start (it split the line).</summary>
    [Fact]
    public void TheHeldOutCutNeverSplitsTheLastLine()
    {
        string text = string.Concat(Enumerable.Repeat("a short line of text here\n", 9)) + "the last line, a little longer than the others";
        var corpus = TrainingCorpus.Split([text], 0.1);
        Assert.Equal("the last line, a little longer than the others", corpus.ValidationDocuments.Single());
        Assert.Equal(text, corpus.TrainDocuments.Single() + corpus.ValidationDocuments.Single());

        // A last line far longer than the share stays cut inside it (it would hold out most of the text).
        string longLast = "first line\n" + new string('x', 1000);
        var c2 = TrainingCorpus.Split([longLast], 0.1);
        Assert.InRange(c2.ValidationDocuments.Single().Length, 90, 110);
        // One line only: cut inside it.
        Assert.Single(TrainingCorpus.Split([new string('y', 100)], 0.1).ValidationDocuments);
        // ... at a word's start where the line has words: "word word …" was cut to "…wo" | "rd word …".
        string words = string.Join('\n', Enumerable.Range(0, 30).Select(i => $"line number {i:00} of the story.")) + "\n" + string.Concat(Enumerable.Repeat("word ", 60));
        var c3 = TrainingCorpus.Split([words], 0.05);
        Assert.StartsWith("word ", c3.ValidationDocuments.Single());
        Assert.EndsWith("word ", c3.TrainDocuments.Single());
        Assert.Equal(words, c3.TrainDocuments.Single() + c3.ValidationDocuments.Single());
    }

    /// <summary>A file past what one string holds is refused naming it and the limit (it failed without naming the file).</summary>
    [Fact]
    public void AFileTooLargeForOneStringIsRefusedByName()
    {
        using var dir = new TestGguf.TempDirectory();
        string path = dir.File("huge.txt");
        // One byte past .NET's longest string (0x3FFFFFDF characters), 33 bytes under 1 GiB: the limit was 1 GiB, so a file
        // this size was read and failed decoding with an OutOfMemoryException.
        using (var f = File.Create(path)) f.SetLength(0x3FFFFFDF + 1); // sparse: no disk used
        var e = Assert.Throws<InvalidDataException>(() => TrainingCorpus.ReadText(path, TestContext.Current.CancellationToken));
        Assert.Contains("huge.txt", e.Message);
        Assert.Contains("1,073,741,791", e.Message);
    }

    /// <summary>A cut inside a line never falls between the halves of a surrogate pair (both halves encoded as U+FFFD).</summary>
    [Fact]
    public void TheHeldOutCutNeverSplitsASurrogatePair()
    {
        string text = string.Concat(Enumerable.Repeat("😀", 110));
        var corpus = TrainingCorpus.Split([text], 0.05);
        string train = corpus.TrainDocuments.Single(), held = corpus.ValidationDocuments.Single();
        Assert.Equal(text, train + held);
        Assert.False(char.IsHighSurrogate(train[^1]));
        Assert.False(char.IsLowSurrogate(held[0]));
    }

    /// <summary>A file of a byte-order mark and blank lines is empty by name; a bad byte's offset counts the mark.</summary>
    [Fact]
    public void ByteOrderMarksNeitherHideAnEmptyFileNorShiftAnOffset()
    {
        using var dir = new TestGguf.TempDirectory();
        string empty = dir.File("a.txt"), bad = dir.File("b.txt");
        File.WriteAllBytes(empty, [0xEF, 0xBB, 0xBF, (byte)'\n', (byte)' ']);
        var e = Assert.Throws<InvalidDataException>(() => TrainingCorpus.ReadText(empty, TestContext.Current.CancellationToken));
        Assert.Contains("a.txt", e.Message);
        Assert.Contains("holds only blank space", e.Message); // not "empty": the file has bytes
        File.WriteAllBytes(empty, [0xEF, 0xBB, 0xBF]);
        Assert.Contains("a.txt: the file is empty", Assert.Throws<InvalidDataException>(() => TrainingCorpus.ReadText(empty, TestContext.Current.CancellationToken)).Message);
        File.WriteAllBytes(empty, "\v\f \t\r\n"u8.ToArray()); // vertical tab and form feed are blank space too
        Assert.Contains("holds only blank space", Assert.Throws<InvalidDataException>(() => TrainingCorpus.ReadText(empty, TestContext.Current.CancellationToken)).Message);
        File.WriteAllBytes(bad, [0xEF, 0xBB, 0xBF, (byte)'a', (byte)'b', 0xC3, 0x28]);
        File.WriteAllBytes(bad, [0xFF, 0xFE, (byte)'a', 0, (byte)'b', 0]);
        Assert.Contains("b.txt: the file is UTF-16", Assert.Throws<InvalidDataException>(() => TrainingCorpus.ReadText(bad, TestContext.Current.CancellationToken)).Message);
        // UTF-16 without its mark: NULs are valid UTF-8, and the text read as letters and NULs (eval: perplexity 11,714).
        File.WriteAllBytes(bad, System.Text.Encoding.Unicode.GetBytes("Once upon a time, there was a little girl named Lily."));
        Assert.Contains("b.txt: the file looks like UTF-16LE without a byte-order mark", Assert.Throws<InvalidDataException>(() => TrainingCorpus.ReadText(bad, TestContext.Current.CancellationToken)).Message);
        File.WriteAllBytes(bad, System.Text.Encoding.BigEndianUnicode.GetBytes("Once upon a time, there was a little girl named Lily."));
        Assert.Contains("UTF-16BE", Assert.Throws<InvalidDataException>(() => TrainingCorpus.ReadText(bad, TestContext.Current.CancellationToken)).Message);
        File.WriteAllBytes(bad, [.. "Once upon a time\0 a few NULs\0 in text are\0 byte tokens, as before\n"u8]);
        Assert.Contains("a few NULs", TrainingCorpus.ReadText(bad, TestContext.Current.CancellationToken));
        File.WriteAllBytes(bad, [0xFF, 0xFE, 0, 0, (byte)'a', 0, 0, 0]);
        Assert.Contains("b.txt: the file is UTF-32", Assert.Throws<InvalidDataException>(() => TrainingCorpus.ReadText(bad, TestContext.Current.CancellationToken)).Message);
        // A character cut at the end is a file cut short (or still being written), not another encoding.
        File.WriteAllBytes(bad, [(byte)'a', (byte)'b', 0xF0, 0x9F, 0x98]);
        Assert.Contains("b.txt: ends in the middle of a UTF-8 character (offset 2 of 5)", Assert.Throws<InvalidDataException>(() => TrainingCorpus.ReadText(bad, TestContext.Current.CancellationToken)).Message);
        Assert.False(TrainingCorpus.EndsInsideACharacter([(byte)'a', 0xC3, 0xA9]));
        Assert.False(TrainingCorpus.EndsInsideACharacter([(byte)'a', 0x80]));
        Assert.True(TrainingCorpus.EndsInsideACharacter([(byte)'a', 0xE6, 0x97]));
        File.WriteAllBytes(bad, [(byte)'a', 0xFF, (byte)'b', 0xE6, 0x97]); // a bad byte before the cut one: that is the error
        Assert.Contains("not valid UTF-8 (bad byte sequence at offset 1)", Assert.Throws<InvalidDataException>(() => TrainingCorpus.ReadText(bad, TestContext.Current.CancellationToken)).Message);
        File.WriteAllBytes(bad, [0xEF, 0xBB, 0xBF, (byte)'a', (byte)'b', 0xC3, 0x28]);
        Assert.Contains("offset 5", Assert.Throws<InvalidDataException>(() => TrainingCorpus.ReadText(bad, TestContext.Current.CancellationToken)).Message);
    }

    /// <summary>
    /// A pipe with no writer (a FIFO nobody opened): the reader is told it waits, and a cancellation ends the wait
    /// (`eval --data FIFO` hung silently, and the signal that asked it to stop waited for a step that never came). A pipe
    /// with a writer is read to its end, as `--data &lt;(zcat corpus.gz)` needs.
    /// </summary>
    [Fact]
    public async Task APipeWithNoWriterCanBeCancelledAndOneWithAWriterIsRead()
    {
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS()) return;
        using var dir = new TestGguf.TempDirectory();
        string fifo = dir.File("fifo"), piped = dir.File("piped");
        using (var mk = System.Diagnostics.Process.Start("mkfifo", [fifo, piped]))
        {
            await mk.WaitForExitAsync(TestContext.Current.CancellationToken);
            Assert.Equal(0, mk.ExitCode);
        }
        using var cts = new CancellationTokenSource();
        using var told = new SemaphoreSlim(0);
        string? notice = null;
        var reading = Task.Run(() => TrainingCorpus.ReadText(fifo, cts.Token, m => { notice = m; told.Release(); }), TestContext.Current.CancellationToken);
        Assert.True(await told.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken));
        Assert.Contains("fifo: waiting for data", notice);
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => reading.WaitAsync(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken));
        // Release the reader left blocked in its open: a writer comes and goes, the read sees an empty pipe.
        await using (var unblock = new FileStream(fifo, FileMode.Open, FileAccess.Write)) { }

        // Another pipe: on the first, the released reader's close could come between a new writer's open and its write.
        var second = Task.Run(() => TrainingCorpus.ReadText(piped, CancellationToken.None, _ => { }), TestContext.Current.CancellationToken);
        await using (var writer = new FileStream(piped, FileMode.Open, FileAccess.Write))
            await writer.WriteAsync("Once upon a time\n"u8.ToArray(), TestContext.Current.CancellationToken);
        Assert.Equal("Once upon a time\n", await second.WaitAsync(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken));

        // A pipe has no size to check first: it is read in blocks and refused by name past the limit (read whole, one
        // past the 1 GiB string limit failed with an OutOfMemoryException).
        var capped = Task.Run(() => TrainingCorpus.ReadAll(piped, 0, max: 3 << 20), TestContext.Current.CancellationToken);
        await using (var writer = new FileStream(piped, FileMode.Open, FileAccess.Write))
        {
            try
            {
                for (int i = 0; i < 8; i++) await writer.WriteAsync(new byte[1 << 20], TestContext.Current.CancellationToken);
            }
            catch (IOException)
            {
                // the reader gave up and closed the pipe: a broken pipe here
            }
        }
        var tooLong = await Assert.ThrowsAsync<InvalidDataException>(() => capped.WaitAsync(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken));
        Assert.Contains("piped: more than 3,145,728 bytes", tooLong.Message);
    }

    /// <summary>The trainer's encoder is linear in a long run of one character (it removed each merged symbol from a
    /// list: a megabyte of 'a' took minutes), and gives the runtime tokenizer's ids for it.</summary>
    [Fact]
    public void ALongRunOfOneCharacterEncodesQuickly()
    {
        var tokenizer = BpeTrainer.Train([string.Concat(Enumerable.Repeat("aaaa bbb aa a\n", 50))], 262, [BpeTrainer.EndOfText], cancellation: TestContext.Current.CancellationToken);
        string run = new('a', 1 << 20);
        var watch = System.Diagnostics.Stopwatch.StartNew();
        var ids = new List<int>();
        tokenizer.Encode(run, ids, true, TestContext.Current.CancellationToken);
        TestContext.Current.TestOutputHelper?.WriteLine($"{run.Length:N0} characters in {watch.Elapsed.TotalSeconds:F2} s, {ids.Count:N0} ids");
        Assert.Equal(run, tokenizer.Decode(ids.ToArray()));
        Assert.True(ids.Count < run.Length / 2, $"{ids.Count} ids: the merges were not applied");
    }
}
