using System.Runtime.InteropServices;
using BitNetSharp.Model;

namespace BitNetSharp.Memory;

/// <summary>
/// Locks a model's memory-mapped GGUF file in RAM (Linux mlock): every page is faulted in now and none is evicted or
/// re-faulted later. The lock lasts until the process exits. Unprivileged processes may lock only RLIMIT_MEMLOCK bytes
/// (often 64 KiB–8 MiB), so a refusal says which limit to raise.
/// </summary>
public static unsafe class WeightLock
{
    /// <summary>
    /// Locks the mapped file of <paramref name="weights"/>, but for the pages the load released (a head re-encoded by
    /// --head-type); returns the bytes locked.
    /// </summary>
    /// <exception cref="PlatformNotSupportedException">Not Linux.</exception>
    /// <exception cref="InvalidOperationException">Not a GGUF model, or the kernel refused (the message names RLIMIT_MEMLOCK).</exception>
    public static long Lock(ModelWeights weights)
    {
        if (!OperatingSystem.IsLinux()) throw new PlatformNotSupportedException("--mlock uses Linux mlock(2); this is not Linux.");
        var gguf = weights.Gguf ?? throw new InvalidOperationException("--mlock locks a memory-mapped GGUF file; this model was loaded from a Hugging Face directory.");
        var mapping = gguf.Mapping;
        // Only the pages in use: a head re-encoded at load (--head-type) had its file pages dropped, and locking the
        // whole map faulted them back in and pinned them for the life of the process.
        long locked = 0;
        int errno = 0;
        foreach (var (start, end) in mapping.LiveRanges())
        {
            if (mlock(mapping.Pointer + start, (nuint)(end - start)) != 0)
            {
                errno = Marshal.GetLastPInvokeError();
                break;
            }
            locked += end - start;
        }
        if (errno == 0) return locked;
        if (locked > 0) munlock(mapping.Pointer, (nuint)mapping.Length); // all or nothing
        long wanted = 0;
        foreach (var (start, end) in mapping.LiveRanges()) wanted += end - start;
        var limit = stackalloc ulong[2];
        string current = getrlimit(8 /* RLIMIT_MEMLOCK */, limit) == 0
            ? limit[0] == ulong.MaxValue ? "unlimited" : $"{limit[0] / 1024} KiB"
            : "unknown";
        throw new InvalidOperationException(Message(wanted, errno, current));
    }

    /// <summary>
    /// The refusal explained: with the limit already unlimited (or the capability held) the cause is memory, not the limit,
    /// and advice to raise it sent the user after the wrong setting.
    /// </summary>
    internal static string Message(long bytes, int errno, string limit) =>
        limit == "unlimited"
            ? $"--mlock: the kernel refused to lock the {bytes / 1e9:F2} GB model in RAM (errno {errno}) although RLIMIT_MEMLOCK is unlimited: "
              + "there is not enough free memory (or a cgroup memory limit) to hold it locked. Free memory, raise the container's memory limit, or run without --mlock."
            : $"--mlock: the kernel refused to lock the {bytes / 1e9:F2} GB model in RAM (errno {errno}): RLIMIT_MEMLOCK is {limit}. "
              + "Raise it (`ulimit -l unlimited`, LimitMEMLOCK=infinity under systemd, --ulimit memlock=-1 in Docker) or grant CAP_IPC_LOCK.";

    [DllImport("libc", SetLastError = true)]
    private static extern int mlock(void* address, nuint length);

    [DllImport("libc")]
    private static extern int munlock(void* address, nuint length);

    [DllImport("libc")]
    private static extern int getrlimit(int resource, ulong* limit);
}
