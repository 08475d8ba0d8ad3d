using System.Text.Json;
using System.Xml.Linq;

namespace BitNetSharp.Tests.Cli;

/// <summary>
/// The `bitnet` tool package stays small: no package with native runtimes (SkiaSharp and HarfBuzz once made it 193 MB
/// for one PNG). .ci/pack-test.sh checks the packed size itself; this catches the cause at test time.
/// </summary>
public class ToolPackageTests
{
    [Fact]
    public void CliReferencesNoNativeGraphicsPackages()
    {
        var csproj = XDocument.Load(RepositoryFiles.Path("src/BitNetSharp.Cli/BitNetSharp.Cli.csproj"));
        var references = csproj.Descendants("PackageReference").Select(p => (string?)p.Attribute("Include") ?? "").ToList();
        Assert.NotEmpty(references); // System.CommandLine, Spectre.Console: the parse found the references
        Assert.DoesNotContain(references, r => r.StartsWith("ScottPlot", StringComparison.OrdinalIgnoreCase)
            || r.StartsWith("SkiaSharp", StringComparison.OrdinalIgnoreCase) || r.StartsWith("HarfBuzzSharp", StringComparison.OrdinalIgnoreCase));
    }

    [Fact]
    public void NoPackageInTheCliDependencyGraphShipsNativeLibraries()
    {
        // The restore of this test project restored the CLI's graph too (project reference), transitive packages included.
        string assets = RepositoryFiles.Path("src/BitNetSharp.Cli/obj/project.assets.json");
        Assert.True(File.Exists(assets), $"{assets} is missing: restore the CLI project first");
        using var json = JsonDocument.Parse(File.ReadAllBytes(assets));
        var native = new List<string>();
        foreach (var library in json.RootElement.GetProperty("libraries").EnumerateObject())
        {
            if (library.Value.GetProperty("type").GetString() != "package" || !library.Value.TryGetProperty("files", out var files)) continue;
            foreach (var file in files.EnumerateArray())
                if (file.GetString() is { } f && f.StartsWith("runtimes/", StringComparison.Ordinal) && f.Contains("/native/", StringComparison.Ordinal))
                {
                    native.Add($"{library.Name}: {f}");
                    break;
                }
        }
        Assert.True(native.Count == 0, "packages with native libraries in the tool's graph:\n" + string.Join("\n", native));
    }

    [Fact]
    public void TheToolCompilesLoopsOptimizedAtTheirFirstCall()
    {
        // The runtimeconfig the CLI build writes (and the tool package ships), copied here by the project reference.
        // Without the setting every kernel starts in tier 0: the bundled model generated ~4x slower over 128 tokens.
        string path = Path.Combine(AppContext.BaseDirectory, "bitnet.runtimeconfig.json");
        Assert.True(File.Exists(path), $"{path} is missing: build the CLI project (the test project references it)");
        using var json = JsonDocument.Parse(File.ReadAllBytes(path));
        var properties = json.RootElement.GetProperty("runtimeOptions").GetProperty("configProperties");
        Assert.True(properties.TryGetProperty("System.Runtime.TieredCompilation.QuickJitForLoops", out var value),
            "bitnet.runtimeconfig.json has no System.Runtime.TieredCompilation.QuickJitForLoops: set <TieredCompilationQuickJitForLoops>false</...> in the CLI project");
        Assert.Equal(JsonValueKind.False, value.ValueKind);
    }
}
