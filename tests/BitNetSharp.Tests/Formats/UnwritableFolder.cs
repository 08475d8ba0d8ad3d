namespace BitNetSharp.Tests.Formats;

/// <summary>
/// A folder this user cannot create files in, for tests of how outputs there are refused: a 0555 folder under the given
/// one, or, where that does not stop this user (root), /sys, which refuses new files even to root on Linux.
/// <see cref="Path"/> is null where neither refuses; the folder's mode is restored on disposal.
/// </summary>
internal sealed class UnwritableFolder : IDisposable
{
    private readonly string _locked;

    public UnwritableFolder(string parent)
    {
        _locked = Directory.CreateDirectory(System.IO.Path.Combine(parent, "locked")).FullName;
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(_locked, UnixFileMode.UserRead | UnixFileMode.UserExecute);
        Path = new[] { _locked, "/sys" }.FirstOrDefault(f => Directory.Exists(f) && !CanCreateFileIn(f));
    }

    /// <summary>The folder, or null where no folder here refuses this user a new file.</summary>
    public string? Path { get; }

    public const string None = "no folder here refuses this user a new file (root, and no read-only /sys)";

    public void Dispose()
    {
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(_locked, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
    }

    private static bool CanCreateFileIn(string folder)
    {
        try
        {
            using (new FileStream(System.IO.Path.Combine(folder, $".probe-{Guid.NewGuid():N}"), FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.DeleteOnClose)) { }
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }
}
