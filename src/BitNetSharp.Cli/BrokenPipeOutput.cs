using System.Runtime.InteropServices;
using System.Text;
using BitNetSharp.Formats;

namespace BitNetSharp.Cli;

/// <summary>
/// stdout for a command whose output is a pipe or socket, on Unix: when the reader is gone (<c>| head</c>), the command
/// ends as a Unix tool does on SIGPIPE, exit 141, instead of running on. .NET's console stream drops EPIPE without a
/// word, so `bitnet logs --follow … | head -1` never ended and `generate | head -c 20` generated every token. Bytes go
/// to descriptor 1 with write(2), as the console's do (<see cref="DescriptorStream"/>); any other failure (a full disk)
/// is thrown to the command as before. A regular file or a terminal keeps the console's writer: neither has a reader
/// that can go.
/// </summary>
internal static class BrokenPipeOutput
{
    private const int Espipe = 29; // Linux and macOS alike
    private const int ExitCode = 128 + 13; // killed by SIGPIPE, as the shell reports it

    /// <summary>The writer for stdout: a write(2) writer where stdout is a pipe or socket on Unix, else <see cref="Console.Out"/>.</summary>
    public static TextWriter ForStdout()
    {
        // 64-bit only: lseek is bound with a 64-bit off_t (32-bit glibc's is 32 bits).
        if (!(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS()) || !Environment.Is64BitProcess || !Console.IsOutputRedirected) return Console.Out;
        // A descriptor that cannot seek is a pipe, FIFO or socket; a regular file or a device such as /dev/null seeks.
        if (lseek(1, 0, 1) >= 0 || Marshal.GetLastPInvokeError() != Espipe) return Console.Out;
        var stream = new DescriptorStream(1, "standard output", static () => Environment.Exit(ExitCode));
        return TextWriter.Synchronized(new StreamWriter(stream, new UTF8Encoding(false), 4096) { AutoFlush = true });
    }

    [DllImport("libc", SetLastError = true)]
    private static extern long lseek(int fd, long offset, int whence);
}
