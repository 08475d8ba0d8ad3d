namespace BitNetSharp.Formats;

/// <summary>
/// Whether two paths name one file: outputs are checked against inputs with it, so that no spelling of an input (a
/// link to it or to a folder above it, another letter case where the file system folds case) lets a command replace it.
/// </summary>
public static class PathIdentity
{
    /// <summary>Whether two paths name the same file, however spelled: links resolved in every component, and case folded where the file system folds it.</summary>
    public static bool SameFile(string a, string b) =>
        string.Equals(Resolve(Path.GetFullPath(a)), Resolve(Path.GetFullPath(b)), Comparison);

    /// <summary>How paths compare here: case folded on Windows and macOS, whose file systems fold it by default.</summary>
    public static StringComparison Comparison =>
        OperatingSystem.IsWindows() || OperatingSystem.IsMacOS() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;

    /// <summary>
    /// The path with every symbolic link resolved, in the folders above it as well as the file itself (a link to the
    /// model's folder made the same file look like another: convert replaced its own input). Parts that do not exist
    /// yet are kept as written.
    /// </summary>
    public static string Resolve(string full)
    {
        try
        {
            string root = Path.GetPathRoot(full) ?? "";
            string current = root;
            int hops = 0;
            var parts = new Queue<string>(full[root.Length..].Split(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries));
            while (parts.Count > 0)
            {
                string next = Path.Combine(current, parts.Dequeue());
                FileSystemInfo info = Directory.Exists(next) ? new DirectoryInfo(next) : new FileInfo(next);
                if (info.Exists && info.LinkTarget is { } target && ++hops <= 40)
                {
                    // Resolve the target's own components too: it may be relative, or pass through other links.
                    string resolved = Path.GetFullPath(target, current);
                    string rest = string.Join(Path.DirectorySeparatorChar, parts);
                    parts.Clear();
                    string again = Path.GetPathRoot(resolved) ?? "";
                    foreach (var part in (rest.Length > 0 ? Path.Combine(resolved, rest) : resolved)[again.Length..]
                        .Split(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries))
                        parts.Enqueue(part);
                    current = again;
                    continue;
                }
                current = next;
            }
            return Path.GetFullPath(current);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            return full;
        }
    }
}
