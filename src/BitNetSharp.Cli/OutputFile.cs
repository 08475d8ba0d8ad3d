namespace BitNetSharp.Cli;

/// <summary>Checks an output path given on the command line before the work that produces the file.</summary>
internal static class OutputFile
{
    /// <summary>
    /// The full path; a <see cref="UsageException"/> naming <paramref name="option"/> when the path is a directory (or
    /// ends with a separator) or its folder does not exist, so a run is not spent before the write fails.
    /// </summary>
    public static string Check(string option, string path)
    {
        if (Directory.Exists(path) || path.EndsWith('/') || path.EndsWith(Path.DirectorySeparatorChar))
            throw new UsageException($"{option} {path} is a directory; give a file path such as {Path.Combine(path, "out.json")}.");
        string full = Path.GetFullPath(path);
        if (Path.GetDirectoryName(full) is { } dir && !Directory.Exists(dir))
            throw new UsageException($"{option} {path}: the folder '{dir}' does not exist.");
        return full;
    }
}
