using BitNetSharp.Formats;

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
        // An empty path (`--ids-out "$OUT"` with OUT unset) failed with "The value cannot be an empty string", no flag named.
        if (string.IsNullOrWhiteSpace(path)) throw new UsageException($"{option} is empty; give a file path.");
        // "-" made a file named "-" in the working directory (profile --trace -, convert IN -, ...), exit 0.
        if (path == "-") throw new UsageException($"{option} -: give a file path (for standard output, {(option.StartsWith("--", StringComparison.Ordinal) ? option + " " : "")}/dev/stdout).");
        if (Directory.Exists(path) || path.EndsWith('/') || path.EndsWith(Path.DirectorySeparatorChar))
            throw new UsageException($"{option} {path} is a directory; give a file path such as {Path.Combine(path, ExampleName(option, path))}.");
        string full = Path.GetFullPath(path);
        if (Path.GetDirectoryName(full) is { } dir && !Directory.Exists(dir))
            throw new UsageException(File.Exists(dir)
                ? $"{option} {path}: '{dir}' is a file, not a folder."
                : $"{option} {path}: the folder '{dir}' does not exist.");
        // A pipe, device or open descriptor is written in place (AtomicFile); anything else needs a file created beside
        // its target, and a folder this user cannot write was found only at the end of the run, in an error naming a
        // temporary file. The probe has the temporary's own name, so a probe left by a killed run is cleaned up like one.
        if (!AtomicFile.WritesInPlace(full))
        {
            string target;
            try
            {
                target = AtomicFile.Target(full);
            }
            catch (IOException e)
            {
                throw new UsageException($"{option} {path}: {e.Message}");
            }
            if (Path.GetDirectoryName(target) is { } folder && Directory.Exists(folder))
            {
                string probe = AtomicFile.TemporaryPath(target);
                try
                {
                    using (new FileStream(probe, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.DeleteOnClose)) { }
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    // ENOENT on a folder that exists (/proc) read "Could not find file '/proc'".
                    string reason = e switch
                    {
                        UnauthorizedAccessException => "permission denied",
                        FileNotFoundException or DirectoryNotFoundException => "it does not take new files",
                        _ => e.Message.Replace(probe, folder, StringComparison.Ordinal),
                    };
                    throw new UsageException($"{option} {path}: cannot write in the folder '{folder}' ({reason}); give a folder this user can write.");
                }
            }
            else if (target != full)
                throw new UsageException($"{option} {path} is a link to {target}, whose folder does not exist; give the file itself, or remove the link.");
        }
        return full;
    }

    /// <summary>
    /// A file name for the hint when <paramref name="path"/> is a directory: with the directory's own extension when it has
    /// one (a folder named model.gguf), else the one the option writes (every option's hint said out.json).
    /// </summary>
    internal static string ExampleName(string option, string path)
    {
        string extension = Path.GetExtension(Path.TrimEndingDirectorySeparator(path));
        if (extension.Length is > 1 and <= 8 && extension.AsSpan(1).IndexOfAnyExceptInRange('a', 'z') < 0) return "out" + extension; // not "v1.2"'s ".2"
        return option switch
        {
            "--out" or "the output" => "model.gguf",
            "--plot" => "loss.svg",
            "--heldout" => "heldout.txt",
            "--report" => "report.md",
            "--trace" => "trace.json",
            "--save-logits" => "logits.bin",
            _ => "out.json",
        };
    }

    /// <summary>
    /// <see cref="Check"/>, and a <see cref="UsageException"/> when the path is one of the command's inputs (a link to it
    /// included), which the finished output would replace.
    /// </summary>
    public static string CheckNotInput(string option, string path, params (string Option, string? Path)[] inputs)
    {
        string full = Check(option, path);
        string resolved = Resolve(full);
        foreach (var (inputOption, input) in inputs)
        {
            if (input is null) continue;
            if (Directory.Exists(input))
            {
                // A model directory (Hugging Face): a new file beside its files is fine, replacing one of them is not
                // (a trace over model.safetensors destroyed the weights).
                string folder = Resolve(Path.TrimEndingDirectorySeparator(Path.GetFullPath(input))) + Path.DirectorySeparatorChar;
                if (File.Exists(resolved) && (resolved.StartsWith(folder, PathComparison) || full.StartsWith(folder, PathComparison)
                    || IsUnder(resolved, folder)))
                    throw new UsageException($"{option} {path} is a file of the {inputOption} directory {input}; the output would replace it. Give another path.");
                continue;
            }
            if (PathIdentity.SameFile(input, full))
                throw new UsageException($"{option} {path} is the {inputOption} file; the output would replace it. Give another path.");
        }
        return full;
    }

    /// <summary>
    /// Whether a folder above <paramref name="path"/> is <paramref name="folder"/> by identity: a bind mount of the model
    /// folder shows its files, nested ones included (original/params.json), under paths no string compare joins.
    /// </summary>
    private static bool IsUnder(string path, string folder)
    {
        for (string? dir = Path.GetDirectoryName(path); !string.IsNullOrEmpty(dir); dir = Path.GetDirectoryName(dir))
            if (PathIdentity.SameFolder(dir, folder)) return true;
        return false;
    }

    /// <summary>Whether two paths name the same file, however spelled (see <see cref="PathIdentity"/>).</summary>
    public static bool SameFile(string a, string b) => PathIdentity.SameFile(a, b);

    private static StringComparison PathComparison => PathIdentity.Comparison;

    private static string Resolve(string full) => PathIdentity.Resolve(full);
}
