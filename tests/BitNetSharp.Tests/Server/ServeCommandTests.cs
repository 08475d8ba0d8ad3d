using BitNetSharp.Cli;

namespace BitNetSharp.Tests.Server;

/// <summary><c>bitnet serve</c>'s command line: bad settings are one-line usage errors before anything loads or listens.</summary>
public class ServeCommandTests
{
    private static (int ExitCode, string Error) Bitnet(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Program.Run(args, output, error);
        return (code, error.ToString());
    }

    [Theory]
    [InlineData("--host", "example.com", "is not an IP address")]
    [InlineData("--max-batched-tokens", "2", "must be at least MaxSequences")]
    [InlineData("--timeout", "0", "--timeout must be a positive number")]
    [InlineData("--max-n", "99", "MaxChoices must be between 1 and MaxSequences")]
    [InlineData("--port", "70000", "The port must be 0-65535")]
    public void BadSettingsAreUsageErrors(string flag, string value, string message)
    {
        var (code, error) = Bitnet("serve", "-m", "does-not-matter.gguf", flag, value);
        Assert.Equal(2, code);
        Assert.StartsWith("error: ", error);
        Assert.Contains(message, error);
        Assert.Single(error.Trim().Split('\n'));
    }

    [Fact]
    public void HelpListsTheServerFlags()
    {
        var output = new StringWriter();
        Program.Run(["serve", "--help"], output, new StringWriter());
        foreach (var flag in new[] { "--host", "--port", "--max-seqs", "--max-batched-tokens", "--max-queue", "--timeout", "--api-key", "--model" })
            Assert.Contains(flag, output.ToString());
    }
}
