using System.Globalization;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.Arm;
using System.Runtime.Intrinsics.X86;

namespace BitNetSharp.Monitoring.Telemetry;

/// <summary>
/// The facts about a run that go into every telemetry file's schema metadata: engine version, CPU, instruction sets,
/// the caller's kernel, threads, model and types, and the pairs of <see cref="EnvironmentVariable"/>.
/// </summary>
public static class TelemetryContext
{
    /// <summary>Extra <c>key=value</c> pairs, separated by commas or semicolons (e.g. <c>host=a1;experiment=kv-f16</c>).</summary>
    public const string EnvironmentVariable = "BITNET_LOG_CONTEXT";

    /// <summary>
    /// Builds the context. Null or empty parameters are left out; pairs from <see cref="EnvironmentVariable"/> are added
    /// last and override built-in keys. Malformed pairs are skipped and described in <paramref name="warnings"/>.
    /// </summary>
    public static IReadOnlyDictionary<string, string> Create(
        out IReadOnlyList<string> warnings,
        string? kernel = null,
        int threads = 0,
        string? model = null,
        string? modelChecksum = null,
        string? projectionType = null,
        string? kvType = null,
        string? activationBits = null)
    {
        var context = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["engine.version"] = EngineVersion(),
            ["dotnet.version"] = RuntimeInformation.FrameworkDescription,
            ["os"] = RuntimeInformation.OSDescription,
            ["cpu.model"] = CpuModel(),
            ["cpu.count"] = Environment.ProcessorCount.ToString(CultureInfo.InvariantCulture),
            ["cpu.isa"] = Isa(),
        };
        void Add(string key, string? value)
        {
            if (!string.IsNullOrEmpty(value)) context[key] = value;
        }
        Add("kernel", kernel);
        if (threads > 0) Add("threads", threads.ToString(CultureInfo.InvariantCulture));
        Add("model", model);
        Add("model.checksum", modelChecksum);
        Add("projection.type", projectionType);
        Add("kv.type", kvType);
        // The layer rows' saturation and underflow mean other things at fewer bits: a reader needs the widths.
        Add("activation.bits", activationBits);
        var list = new List<string>();
        ParsePairs(Environment.GetEnvironmentVariable(EnvironmentVariable), context, list);
        warnings = list;
        return context;
    }

    /// <summary>
    /// Adds the <c>key=value</c> pairs of <paramref name="text"/> (comma- or semicolon-separated, blanks trimmed) to
    /// <paramref name="into"/>; a pair without '=' or with an empty key is skipped with a warning.
    /// </summary>
    public static void ParsePairs(string? text, IDictionary<string, string> into, IList<string> warnings)
    {
        if (string.IsNullOrWhiteSpace(text)) return;
        foreach (var raw in text.Split([',', ';'], StringSplitOptions.RemoveEmptyEntries))
        {
            string pair = raw.Trim();
            if (pair.Length == 0) continue;
            int eq = pair.IndexOf('=');
            string key = eq < 0 ? "" : pair[..eq].Trim();
            if (key.Length == 0)
            {
                warnings.Add($"{EnvironmentVariable}: skipped '{pair}' (expected key=value).");
                continue;
            }
            into[key] = pair[(eq + 1)..].Trim();
        }
    }

    /// <summary>The informational version of the engine assembly (e.g. <c>0.1.0+abc123</c>).</summary>
    public static string EngineVersion()
    {
        var assembly = typeof(TelemetryContext).Assembly;
        return assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion
            ?? assembly.GetName().Version?.ToString() ?? "unknown";
    }

    /// <summary>The "model name" of /proc/cpuinfo where there is one, else the OS and architecture.</summary>
    public static string CpuModel()
    {
        try
        {
            if (File.Exists("/proc/cpuinfo"))
                foreach (var line in File.ReadLines("/proc/cpuinfo"))
                    if (line.StartsWith("model name", StringComparison.Ordinal) && line.IndexOf(':') is > 0 and var colon)
                        return line[(colon + 1)..].Trim();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        return $"{RuntimeInformation.ProcessArchitecture} ({RuntimeInformation.OSDescription})";
    }

    /// <summary>
    /// The instruction sets the process sees that matter to the kernels, space-separated. .NET has no separate flag for
    /// AVX-512 VNNI; it is reported where AVX10.1, which includes it, is supported.
    /// </summary>
    public static string Isa()
    {
        var names = new List<string>();
        if (Avx2.IsSupported) names.Add("AVX2");
        if (Avx512F.IsSupported) names.Add("AVX-512F");
        if (Avx512BW.IsSupported) names.Add("AVX-512BW");
        if (Avx10v1.IsSupported) names.Add("AVX-512VNNI");
        if (AvxVnni.IsSupported) names.Add("AVX-VNNI");
        if (Gfni.IsSupported) names.Add("GFNI");
        if (AdvSimd.IsSupported) names.Add("AdvSimd");
        if (Dp.IsSupported) names.Add("AdvSimd.Dp");
        return names.Count == 0 ? "none" : string.Join(' ', names);
    }
}
