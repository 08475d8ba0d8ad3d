using System.Runtime.InteropServices;
using System.Text;

namespace BitNetSharp.Cli;

/// <summary>
/// stdout for a command whose output is a pipe or socket, on Unix: when the reader is gone (<c>| head</c>), the command
/// ends as a Unix tool does on SIGPIPE, exit 141, instead of running on. .NET's console stream drops EPIPE without a
/// word, so `bitnet logs --follow … | head -1` never ended and `generate | head -c 20` generated every token. Bytes go
/// to descriptor 1 with write(2), as the console's do (a FileStream kept an offset of its own, and its output into a
/// file shared with stderr or the shell was overwritten), retried on EINTR and, for a descriptor left non-blocking by
/// the parent, after poll(2) on EAGAIN; any other failure (a full disk) is thrown to the command as before. A regular
/// file or a terminal keeps the console's writer: neither has a reader that can go.
/// </summary>
internal static unsafe class BrokenPipeOutput
{
    private const int Epipe = 32, Eintr = 4, Espipe = 29; // Linux and macOS alike
    private static readonly int Eagain = OperatingSystem.IsMacOS() ? 35 : 11, Econnreset = OperatingSystem.IsMacOS() ? 54 : 104;
    private const int ExitCode = 128 + 13; // killed by SIGPIPE, as the shell reports it

    /// <summary>The writer for stdout: a write(2) writer where stdout is a pipe or socket on Unix, else <see cref="Console.Out"/>.</summary>
    public static TextWriter ForStdout()
    {
        // 64-bit only: lseek is bound with a 64-bit off_t (32-bit glibc's is 32 bits).
        if (!(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS()) || !Environment.Is64BitProcess || !Console.IsOutputRedirected) return Console.Out;
        // A descriptor that cannot seek is a pipe, FIFO or socket; a regular file or a device such as /dev/null seeks.
        if (lseek(1, 0, 1) >= 0 || Marshal.GetLastPInvokeError() != Espipe) return Console.Out;
        return TextWriter.Synchronized(new StreamWriter(new Stdout(), new UTF8Encoding(false), 4096) { AutoFlush = true });
    }

    private sealed class Stdout : Stream
    {
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            fixed (byte* start = buffer)
            {
                byte* p = start;
                long left = buffer.Length;
                while (left > 0)
                {
                    nint n = write(1, p, (nint)left);
                    if (n < 0)
                    {
                        int errno = Marshal.GetLastPInvokeError();
                        if (errno == Eintr) continue;
                        if (errno == Epipe || errno == Econnreset) Environment.Exit(ExitCode); // the reader is gone
                        if (errno == Eagain)
                        {
                            var fd = new PollFd { Fd = 1, Events = 4 }; // POLLOUT: wait until the pipe takes more
                            poll(&fd, 1, -1);
                            continue;
                        }
                        throw new IOException(Marshal.GetPInvokeErrorMessage(errno));
                    }
                    p += n;
                    left -= n;
                }
            }
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [DllImport("libc", SetLastError = true)]
    private static extern nint write(int fd, byte* buffer, nint count);

    [DllImport("libc", SetLastError = true)]
    private static extern long lseek(int fd, long offset, int whence);

    [DllImport("libc", SetLastError = true)]
    private static extern int poll(PollFd* fds, nuint count, int timeout);
}
