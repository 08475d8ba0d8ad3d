namespace BitNetSharp.Tests;

/// <summary>Files committed to this repository (the bundled model, golden fixtures), found from the test binary.</summary>
public static class RepositoryFiles
{
    public static string Path(string relative)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(System.IO.Path.Combine(dir.FullName, "BitNetSharp.slnx"))) return System.IO.Path.Combine(dir.FullName, relative);
        throw new FileNotFoundException($"the repository root (BitNetSharp.slnx) was not found above {AppContext.BaseDirectory}");
    }
}
