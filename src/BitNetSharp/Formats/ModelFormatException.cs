namespace BitNetSharp.Formats;

/// <summary>
/// The one exception every model-file parser throws for bad input. The message always names the file and,
/// where known, the tensor or metadata key, what was found and what was expected, so a user can act on it.
/// </summary>
public sealed class ModelFormatException : Exception
{
    public ModelFormatException(string path, string message, string? item = null, Exception? inner = null)
        : base(Compose(path, message, item), inner)
    {
        FilePath = path;
        Item = item;
        Reason = message;
    }

    /// <summary>What is wrong, without the file and item in front (<see cref="Exception.Message"/> has them).</summary>
    public string Reason { get; }

    /// <summary>The file (or directory) being read.</summary>
    public string FilePath { get; }

    /// <summary>The tensor name or metadata key at fault, if any.</summary>
    public string? Item { get; }

    private static string Compose(string path, string message, string? item) =>
        item is null ? $"{path}: {message}" : $"{path}: {item}: {message}";
}
