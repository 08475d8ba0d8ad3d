namespace BitNetSharp.Tests.Kernels;

/// <summary>Every inference hot loop lives under src/BitNetSharp/Kernels; Model/ holds the types that call them.</summary>
public class KernelHomeTests
{
    [Fact]
    public void ModelFolderHasNoSimdCode()
    {
        string model = RepositoryFiles.Path("src/BitNetSharp/Model");
        var offenders = Directory.EnumerateFiles(model, "*.cs", SearchOption.AllDirectories)
            .Where(f => File.ReadAllText(f).Contains("System.Runtime.Intrinsics", StringComparison.Ordinal))
            .Select(Path.GetFileName)
            .ToList();
        Assert.True(offenders.Count == 0, $"SIMD code belongs under Kernels/: {string.Join(", ", offenders)}");
    }
}
