namespace BitNetSharp.Tests;

/// <summary>
/// Locates ../shared/data (the team's fetched corpora, tokenizers and vocab GGUFs, never committed here).
/// Tests that need it call <see cref="RequirePath"/>, which skips them with a message saying what is missing
/// and where it was looked for; every other test runs on a fresh clone alone.
/// </summary>
public static class SharedData
{
    private static readonly Lazy<string?> Root = new(Find);

    /// <summary>The shared/data directory, or null. BITNET_SHARED_DATA overrides the search.</summary>
    public static string? Directory => Root.Value;

    private static string? Find()
    {
        var env = Environment.GetEnvironmentVariable("BITNET_SHARED_DATA");
        if (!string.IsNullOrEmpty(env)) return System.IO.Directory.Exists(env) ? env : null;
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "shared", "data");
            if (System.IO.Directory.Exists(candidate) && dir.GetDirectories("src").Length == 0) return candidate;
            var sibling = Path.Combine(dir.FullName, "..", "shared", "data");
            if (File.Exists(Path.Combine(dir.FullName, "BitNetSharp.slnx")) && System.IO.Directory.Exists(sibling))
                return Path.GetFullPath(sibling);
        }
        return null;
    }

    /// <summary>Full path of a file under shared/data; skips the calling test, saying why, when it is absent.</summary>
    public static string RequirePath(string relative)
    {
        if (Directory is null)
            Assert.Skip($"../shared/data is missing (looked beside the repository root; set BITNET_SHARED_DATA to override): this test needs shared/data/{relative}.");
        var full = Path.Combine(Directory!, relative);
        if (!File.Exists(full) && !System.IO.Directory.Exists(full))
            Assert.Skip($"shared/data/{relative} is missing from {Directory}: this test needs it.");
        return full;
    }
}
