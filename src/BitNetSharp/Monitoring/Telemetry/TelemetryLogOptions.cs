namespace BitNetSharp.Monitoring.Telemetry;

/// <summary>
/// Where and how a <see cref="TelemetryLogWriter"/> writes. <see cref="Path"/> is a file path ending in <c>.arrow</c>,
/// such as <c>logs/run.arrow</c>, whose directory and name without extension (<c>run</c>) are used as the directory
/// and prefix; anything else (<c>logs</c>, <c>logs/</c>, <c>logs/v1.2</c>) is a directory, whose files are then named
/// <c>telemetry-yyyyMMddTHHmmssZ-0001.arrow</c>. (A new folder named <c>v1.2</c> used to become the prefix
/// <c>v1</c> in its parent.)
/// </summary>
public sealed record TelemetryLogOptions
{
    public const string DefaultPrefix = "telemetry";

    public required string Path { get; init; }

    /// <summary>A file that has grown past this is closed (footer written) and the next one started.</summary>
    public long MaxFileBytes { get; init; } = 64L << 20;

    /// <summary>Cap on all files of this log (directory and prefix); the oldest are deleted, never the current one.</summary>
    public long MaxTotalBytes { get; init; } = 1L << 30;

    /// <summary>Rows buffered before a RecordBatch is written.</summary>
    public int BatchRows { get; init; } = 1024;

    /// <summary>A partial batch is written at least this often.</summary>
    public TimeSpan FlushInterval { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>The clock that names files (tests step it back); the system clock when null.</summary>
    public TimeProvider? Time { get; init; }

    /// <summary>Throws an <see cref="ArgumentException"/> naming the first invalid parameter.</summary>
    public void Validate()
    {
        if (string.IsNullOrWhiteSpace(Path))
            throw new ArgumentException("The telemetry log path is empty.", nameof(Path));
        if (MaxFileBytes <= 0)
            throw new ArgumentException($"MaxFileBytes must be positive (got {MaxFileBytes}).", nameof(MaxFileBytes));
        if (MaxTotalBytes < MaxFileBytes)
            throw new ArgumentException($"MaxTotalBytes ({MaxTotalBytes}) must be at least MaxFileBytes ({MaxFileBytes}).", nameof(MaxTotalBytes));
        if (BatchRows is < 1 or > 1 << 20)
            throw new ArgumentException($"BatchRows must be between 1 and {1 << 20} (got {BatchRows}).", nameof(BatchRows));
        if (FlushInterval <= TimeSpan.Zero || FlushInterval > TimeSpan.FromDays(1))
            throw new ArgumentException($"FlushInterval must be positive and at most one day (got {FlushInterval}).", nameof(FlushInterval));
    }

    /// <summary>The directory the files go to and the prefix of their names.</summary>
    public (string Directory, string Prefix) Resolve()
    {
        string full = System.IO.Path.GetFullPath(Path);
        bool isDirectory = Directory.Exists(full)
            || Path.EndsWith(System.IO.Path.DirectorySeparatorChar) || Path.EndsWith(System.IO.Path.AltDirectorySeparatorChar)
            || !System.IO.Path.GetExtension(full).Equals(TelemetryLogSchema.FileExtension, StringComparison.OrdinalIgnoreCase);
        if (isDirectory) return (full.TrimEnd(System.IO.Path.DirectorySeparatorChar, System.IO.Path.AltDirectorySeparatorChar), DefaultPrefix);
        return (System.IO.Path.GetDirectoryName(full)!, System.IO.Path.GetFileNameWithoutExtension(full));
    }
}
