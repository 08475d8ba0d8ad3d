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
    }

    /// <summary>A file past what one string holds is refused naming it and the limit (it failed without naming the file).</summary>
    [Fact]
    public void AFileTooLargeForOneStringIsRefusedByName()
    {
        using var dir = new TestGguf.TempDirectory();
        string path = dir.File("huge.txt");
        using (var f = File.Create(path)) f.SetLength((1L << 30) + 1); // sparse: no disk used
        var e = Assert.Throws<InvalidDataException>(() => TrainingCorpus.ReadText(path));
        Assert.Contains("huge.txt", e.Message);
        Assert.Contains("1 GiB", e.Message);
    }
}
