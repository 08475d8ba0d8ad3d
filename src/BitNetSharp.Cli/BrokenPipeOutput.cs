using System.Text;
using Microsoft.Win32.SafeHandles;

namespace BitNetSharp.Cli;

/// <summary>
/// stdout for a command whose output is piped, on Unix: when the reader is gone (<c>| head</c>), the command ends as a
/// Unix tool does on SIGPIPE, exit 141, instead of running on. .NET's console stream drops EPIPE without a word, so
/// `bitnet logs --follow … | head -1` never ended and `generate | head -c 20` generated every token. Writes go through
/// a stream of descriptor 1, which reports EPIPE; any other failure (a full disk) is thrown to the command as before.
/// </summary>
internal sealed class BrokenPipeOutput : TextWriter
{
    private const int Epipe = 32; // Linux and macOS
    private const int ExitCode = 128 + 13; // killed by SIGPIPE, as the shell reports it
    private readonly StreamWriter _inner;

    private BrokenPipeOutput(StreamWriter inner) => _inner = inner;

    public override Encoding Encoding => _inner.Encoding;

    /// <summary>The writer for stdout: this one where stdout is redirected on Unix, else <see cref="Console.Out"/>.</summary>
    public static TextWriter ForStdout()
    {
        if (OperatingSystem.IsWindows() || !Console.IsOutputRedirected) return Console.Out;
        try
        {
            var stream = new FileStream(new SafeFileHandle(1, ownsHandle: false), FileAccess.Write, bufferSize: 0);
            return Synchronized(new BrokenPipeOutput(new StreamWriter(stream, new UTF8Encoding(false), 4096) { AutoFlush = true }));
        }
        catch (Exception e) when (e is IOException or ArgumentException or UnauthorizedAccessException)
        {
            return Console.Out; // a descriptor FileStream will not take: the console's writer, as before
        }
    }

    // Each write in its own try (no delegate per call: the generated text is written token by token).
    public override void Write(char value)
    {
        try { _inner.Write(value); } catch (IOException e) when (e.HResult == Epipe) { ReaderGone(); }
    }

    public override void Write(string? value)
    {
        try { _inner.Write(value); } catch (IOException e) when (e.HResult == Epipe) { ReaderGone(); }
    }

    public override void Write(char[] buffer, int index, int count)
    {
        try { _inner.Write(buffer, index, count); } catch (IOException e) when (e.HResult == Epipe) { ReaderGone(); }
    }

    public override void Write(ReadOnlySpan<char> buffer)
    {
        try { _inner.Write(buffer); } catch (IOException e) when (e.HResult == Epipe) { ReaderGone(); }
    }

    public override void WriteLine(string? value)
    {
        try { _inner.WriteLine(value); } catch (IOException e) when (e.HResult == Epipe) { ReaderGone(); }
    }

    public override void Flush()
    {
        try { _inner.Flush(); } catch (IOException e) when (e.HResult == Epipe) { ReaderGone(); }
    }

    private static void ReaderGone() => Environment.Exit(ExitCode);
}
