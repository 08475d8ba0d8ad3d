using System.Diagnostics;
using BitNetSharp.Cli;

namespace BitNetSharp.Tests.Formats;

/// <summary>
/// A named pipe where a model or its config.json is expected is refused by name: opening one waits for a writer, and
/// `generate -m FIFO` hung there (the first SIGTERM did not end it; GGUF fuzz sweep).
/// </summary>
public sealed class SpecialFileTests
{
    private static void MakeFifo(string path)
    {
        using var p = Process.Start(new ProcessStartInfo("mkfifo", [path]) { RedirectStandardError = true })!;
        p.WaitForExit();
        Assert.Equal(0, p.ExitCode);
    }

    [Fact]
    public async Task ANamedPipeIsRefusedAsAModelOrConfig()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "named pipes via mkfifo; the check reads statx (Linux)");
        using var dir = new TestGguf.TempDirectory();
        string fifo = dir.File("model.gguf");
        MakeFifo(fifo);
        string hf = dir.File("hf");
        Directory.CreateDirectory(hf);
        MakeFifo(Path.Combine(hf, "config.json"));
        // A model directory whose merges.txt, or chat_template.jinja, is a pipe (review: both were read without the check).
        string fixture = RepositoryFiles.Path("tests/fixtures/hf-bitnet/autobitlinear-offline-gqa-f32");
        string merges = dir.File("merges"), jinja = dir.File("jinja");
        foreach (var d in new[] { merges, jinja })
        {
            Directory.CreateDirectory(d);
            foreach (var f in Directory.GetFiles(fixture)) File.Copy(f, Path.Combine(d, Path.GetFileName(f)));
            File.WriteAllText(Path.Combine(d, "vocab.json"), "{\"a\": 0, \"b\": 1, \"ab\": 2}");
        }
        MakeFifo(Path.Combine(merges, "merges.txt"));
        File.WriteAllText(Path.Combine(jinja, "merges.txt"), "#version: 0.2\na b\n");
        MakeFifo(Path.Combine(jinja, "chat_template.jinja"));
        foreach (var args in new[]
        {
            new[] { "inspect", fifo },
            ["generate", "-m", fifo, "-p", "hi", "-n", "2", "-t", "1"],
            ["convert", fifo, dir.File("out.gguf")],
            ["inspect", hf],
            ["generate", "-m", merges, "-p", "ab", "-n", "1", "-t", "1"],
            ["convert", jinja, dir.File("out.gguf")],
        })
        {
            var output = new StringWriter();
            var error = new StringWriter();
            // On the old code this waited for a writer forever: bounded here, so a regression fails rather than hangs.
            var run = Task.Run(() => Program.Run(args, output, error), TestContext.Current.CancellationToken);
            int code = await run.WaitAsync(TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken);
            Assert.True(code is 1 or 2, $"{string.Join(' ', args)}: exit {code}\n{error}");
            Assert.Contains("is not a regular file (a named pipe, a device or a socket)", error.ToString());
            Assert.False(File.Exists(dir.File("out.gguf")));
        }
    }
}
