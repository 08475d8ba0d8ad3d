namespace BitNetSharp.Kernels;

/// <summary>
/// The one dispatch point for the integer kernels. Lists every variant (in order of preference) and picks the
/// best one this CPU supports, unless BITNET_KERNEL names one: reference | avx2 | avxvnni | avx512 | avx512gfni | avx512lut | neon | neondot
/// (the binary family has no VNNI/dot variants; for those names it falls back to the nearest one it has).
/// </summary>
public static class KernelRegistry
{
    public const string EnvironmentVariable = "BITNET_KERNEL";

    /// <summary>All ternary variants, best first, whether or not this CPU supports them.</summary>
    public static IReadOnlyList<TernaryKernel> AllTernary { get; } =
    [
        new Avx512GfniTernaryKernel(),
        new Avx512TernaryKernel(),
        new AvxVnniTernaryKernel(),
        new Avx2TernaryKernel(),
        new NeonDotProdTernaryKernel(),
        new NeonTernaryKernel(),
        new LutTernaryKernel(),
        new ReferenceTernaryKernel(),
    ];

    /// <summary>All binary variants, best first.</summary>
    public static IReadOnlyList<BinaryKernel> AllBinary { get; } =
    [
        new Avx512BinaryKernel(),
        new Avx2BinaryKernel(),
        new NeonBinaryKernel(),
        new ReferenceBinaryKernel(),
    ];

    public static IEnumerable<TernaryKernel> SupportedTernary => AllTernary.Where(k => k.IsSupported);

    public static IEnumerable<BinaryKernel> SupportedBinary => AllBinary.Where(k => k.IsSupported);

    private static readonly Lazy<TernaryKernel> DefaultTernary = new(() => SelectTernary(Environment.GetEnvironmentVariable(EnvironmentVariable)));
    private static readonly Lazy<BinaryKernel> DefaultBinary = new(() => SelectBinary(Environment.GetEnvironmentVariable(EnvironmentVariable)));

    /// <summary>The ternary kernel for this process (BITNET_KERNEL honoured).</summary>
    public static TernaryKernel Ternary => DefaultTernary.Value;

    /// <summary>The binary kernel for this process (BITNET_KERNEL honoured).</summary>
    public static BinaryKernel Binary => DefaultBinary.Value;

    /// <summary>
    /// Most packed ternary bytes (all layers' projections) for which <see cref="ForModel"/> picks the lookup kernel: weights
    /// this small are read from the caches, where its arithmetic (8 operations per 288 weights against 13 per 256) is what
    /// counts. Measured on the Zen 5 EPYC (bench/results/lut-kernel-amd-epyc-zen5-2core.md): the bundled 2.4 MB model
    /// generates 1.39–1.47× faster; one 2B4T layer (17 MB, `quick-decode 1`) 1.06×; from memory (the 700M shape, 2B4T) it
    /// reads 0.8–0.97× as fast, its tables (21 bytes per weight column) competing with the weight streams for L1.
    /// Past this size the int8 kernel stays the default also where the lookup kernel reads faster from memory: its
    /// repack is a second resident copy of the weights (prefill reads the original through the int8 tiles). Ice Lake-SP,
    /// 2B4T shape, alternating runs: tg32 11.3–12.3 t/s against avx512gfni's 10.0–10.2 on one thread (92–101 % of the
    /// read bound against 82–86 %), 20.8–21.5 against 19.5–19.8 on two, for 1.67 GB resident against 1.21 GB;
    /// BITNET_KERNEL=avx512lut takes that trade.
    /// </summary>
    public const long LookupMaxBytes = 16L << 20;

    private static readonly TernaryKernel Lookup = AllTernary.First(k => k is LutTernaryKernel);

    /// <summary>The lookup kernel as <see cref="ForModel"/> gives it to a small, narrow model: prefill by lookup too (<see cref="LutTernaryKernel.LookupPrefill"/>).</summary>
    private static readonly TernaryKernel LookupWithPrefill = new LutTernaryKernel(lookupPrefill: true);

    /// <summary>
    /// Widest model (embedding length) that <see cref="ForModel"/> has prefill by lookup. `quick-prefill` (BitNetSharp.Benchmarks;
    /// 64-token prefill of whole synthetic models, one process, Zen 5 EPYC), lookup against the int8 tiles on one / two threads:
    /// width 384 1.88 / 1.98, 768 1.10 / 1.35, 1024 1.01 / 1.18, 1536 0.89 / 0.97, 2560 0.82 / 0.79.
    /// </summary>
    public const int LookupPrefillMaxWidth = 1024;

    /// <summary>
    /// The ternary kernel for a model whose projections hold <paramref name="ternaryBytes"/> packed bytes: BITNET_KERNEL
    /// when set (avx512lut with prefill by lookup for a model at most <see cref="LookupPrefillMaxWidth"/> wide); else the lookup kernel for a model small enough to run from the caches (<see cref="LookupMaxBytes"/>)
    /// on a CPU where it was measured faster (<see cref="LookupByDefault"/>), prefilling by lookup too when the model is at
    /// most <see cref="LookupPrefillMaxWidth"/> wide (<paramref name="width"/>: its embedding length); else <see cref="Ternary"/>.
    /// </summary>
    public static TernaryKernel ForModel(long ternaryBytes, int width = int.MaxValue)
    {
        // Forced: that kernel; the lookup kernel still prefills by lookup where that was measured faster (narrow models).
        if (!string.IsNullOrWhiteSpace(Environment.GetEnvironmentVariable(EnvironmentVariable)))
            return Ternary is LutTernaryKernel && width <= LookupPrefillMaxWidth ? LookupWithPrefill : Ternary;
        if (!LookupByDefault || ternaryBytes > LookupMaxBytes) return Ternary;
        return width <= LookupPrefillMaxWidth ? LookupWithPrefill : Lookup;
    }

    /// <summary>
    /// Whether <see cref="ForModel"/> may pick the lookup kernel here: AMD family 1Ah (Zen 5) and later, and Intel cores
    /// with AVX-512 VBMI (Ice Lake and later), where it was measured. Its cost rests on <c>vpermw</c>, whose throughput
    /// differs from core to core (Zen 4 runs 512-bit operations as two halves; Skylake-X splits vpermw), so elsewhere it
    /// is BITNET_KERNEL=avx512lut until measured. Ice Lake-SP, 2 vCPUs (bench/results/cpu-tables-intel-xeon-processor-2-80ghz-2core.md):
    /// the bundled model generates 1.06× (1 thread) and 1.96× (2 threads) as fast as with avx512gfni, and prefills 1.31× / 1.69×;
    /// larger models: see <see cref="LookupMaxBytes"/>.
    /// </summary>
    public static bool LookupByDefault { get; } = Lookup.IsSupported && (TernaryKernel.AmdFamily() >= 0x1A || TernaryKernel.IsIntelWithVbmi());


    /// <summary>
    /// What is wrong with the kernel tuning variables in <paramref name="environment"/> (BITNET_KERNEL, BITNET_WEIGHT_STREAMS,
    /// BITNET_PREFETCH_DISTANCE, BITNET_PREFETCH_LEVEL), one message per variable, empty when all are unset or valid. The kernels
    /// read them once, falling back to their defaults on a value they cannot use; a tool checks them first so that a typo
    /// (BITNET_WEIGHT_STREAMS=3) is said rather than measured as the default without a word.
    /// </summary>
    public static IReadOnlyList<string> EnvironmentProblems(Func<string, string?> environment)
    {
        var problems = new List<string>();
        string? kernel = environment(EnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(kernel))
        {
            try { SelectTernary(kernel); }
            catch (ArgumentException e) { problems.Add(e.Message); }
        }
        string? streams = environment(TernaryKernel.WeightStreamsVariable);
        if (!string.IsNullOrWhiteSpace(streams) && streams.Trim() is not ("1" or "4"))
            problems.Add($"{TernaryKernel.WeightStreamsVariable}='{streams}' is not 1 or 4 (weight streams a decode reads; unset it for this CPU's default, {TernaryKernel.DefaultWeightStreams()}).");
        string? distance = environment(TernaryKernel.PrefetchDistanceVariable);
        if (!string.IsNullOrWhiteSpace(distance) && TernaryKernel.ParsePrefetchDistance(distance) is null)
            problems.Add($"{TernaryKernel.PrefetchDistanceVariable}='{distance}' is not a number of bytes that is a multiple of 64 from 0 to 65536 (unset it for the default, 8192).");
        string? level = environment(TernaryKernel.PrefetchLevelVariable);
        if (!string.IsNullOrWhiteSpace(level) && !level.Trim().Equals("l1", StringComparison.OrdinalIgnoreCase) && !level.Trim().Equals("l2", StringComparison.OrdinalIgnoreCase))
            problems.Add($"{TernaryKernel.PrefetchLevelVariable}='{level}' is not l1 or l2 (the cache level weights are prefetched into; unset it for the default, l2).");
        return problems;
    }

    /// <summary>The named ternary variant, or the best supported one when <paramref name="name"/> is empty.</summary>
    /// <exception cref="ArgumentException">Unknown name, or a variant this CPU cannot run.</exception>
    public static TernaryKernel SelectTernary(string? name)
    {
        if (string.IsNullOrWhiteSpace(name)) return SupportedTernary.First();
        var kernel = AllTernary.FirstOrDefault(k => k.Name.Equals(name.Trim(), StringComparison.OrdinalIgnoreCase))
            ?? throw new ArgumentException($"{EnvironmentVariable}='{name}' names no kernel; use one of: {string.Join(", ", AllTernary.Select(k => k.Name))}.");
        if (!kernel.IsSupported)
            throw new ArgumentException($"{EnvironmentVariable}='{name}': this CPU cannot run it; supported here: {string.Join(", ", SupportedTernary.Select(k => k.Name))}.");
        return kernel;
    }

    public static BinaryKernel SelectBinary(string? name)
    {
        if (string.IsNullOrWhiteSpace(name)) return SupportedBinary.First();
        string n = name.Trim().ToLowerInvariant() switch
        {
            "avxvnni" => "avx2",
            "avx512gfni" or "avx512lut" => "avx512",
            "neondot" => "neon",
            var other => other,
        };
        var kernel = AllBinary.FirstOrDefault(k => k.Name == n)
            ?? throw new ArgumentException($"{EnvironmentVariable}='{name}' names no kernel; use one of: {string.Join(", ", AllTernary.Select(k => k.Name))}.");
        if (!kernel.IsSupported)
            throw new ArgumentException($"{EnvironmentVariable}='{name}': this CPU cannot run it; supported here: {string.Join(", ", SupportedBinary.Select(k => k.Name))}.");
        return kernel;
    }
}
