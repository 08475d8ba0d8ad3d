using System.Runtime.InteropServices;

namespace BitNetSharp.Formats;

/// <summary>
/// Writes straight to a descriptor this process holds, with write(2): its offset and O_APPEND are the kernel's (a
/// FileStream keeps an offset of its own, and its output into a file shared with the shell was overwritten); never
/// closes it. Retried on EINTR, and after poll(2) on EAGAIN (a descriptor its parent left non-blocking). A reader gone
/// (EPIPE, or ECONNRESET from a socket) calls <c>onReaderGone</c> when given (stdout ends the command as SIGPIPE
/// would), else fails as any other error: an <see cref="IOException"/> naming <c>name</c>. Unix only.
/// </summary>
public sealed unsafe class DescriptorStream(int fd, string name, Action? onReaderGone = null) : Stream
{
    private const int Epipe = 32, Eintr = 4; // Linux and macOS alike
    private static readonly int Eagain = OperatingSystem.IsMacOS() ? 35 : 11, Econnreset = OperatingSystem.IsMacOS() ? 54 : 104;

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
                nint n = write(fd, p, (nint)left);
                if (n < 0)
                {
                    int errno = Marshal.GetLastPInvokeError();
                    if (errno == Eintr) continue;
                    if (errno == Eagain)
                    {
                        var pending = new PollFd { Fd = fd, Events = 4 }; // POLLOUT: until the descriptor takes more
                        poll(&pending, 1, -1);
                        continue;
                    }
                    if ((errno == Epipe || errno == Econnreset) && onReaderGone is not null) onReaderGone();
                    throw new IOException($"cannot write {name}: {Marshal.GetPInvokeErrorMessage(errno)}");
                }
                p += n;
                left -= n;
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
    private static extern int poll(PollFd* fds, nuint count, int timeout);
}
