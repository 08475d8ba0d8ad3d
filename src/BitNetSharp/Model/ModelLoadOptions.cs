using BitNetSharp.Formats.Gguf;

namespace BitNetSharp.Model;

/// <summary>What <see cref="ModelWeights.Load(string, ModelLoadOptions?)"/> may change about a model as it loads it.</summary>
public sealed record ModelLoadOptions
{
    /// <summary>
    /// Positions the model runs to (0: the file's context length). Larger than the file's extends it: RoPE is a fixed
    /// function of the position, so positions past the trained context are computed the same way (as llama.cpp's
    /// <c>-c</c> beyond <c>n_ctx_train</c>), only without the training's guarantee of quality there.
    /// </summary>
    public int ContextLength { get; init; }

    /// <summary>
    /// Re-encode the output head into this type as the model loads (F16, Q8_0 or Q6_K, by
    /// <see cref="Quantization.EmbeddingEncoder"/>: the bytes <c>bitnet convert --embedding-type</c> would write), or
    /// null to use it as stored; a head already of this type is used as stored. A tied token embedding is the same
    /// table, so it is re-encoded with it (as in a converted file); an untied embedding stays as stored. The file's
    /// pages of the replaced table are dropped from this process's memory (Linux), so the process holds the new encoding
    /// only. A Q6_K head streams 3.1× and a Q8_0 head 1.9× fewer bytes per token than F16.
    /// </summary>
    public GgmlType? HeadType { get; init; }

    /// <summary>
    /// Where a GGUF model's bytes live while it runs: the file's page-cache mapping, or a private copy in 2 MiB pages
    /// (see <see cref="Model.WeightPages"/>). Default <see cref="WeightPages.Auto"/>.
    /// </summary>
    public WeightPages WeightPages { get; init; }

    /// <summary>Files from this size up are copied into huge pages under <see cref="WeightPages.Auto"/> (64 MiB).</summary>
    public const long AutoHugePagesMinBytes = 64L << 20;

    /// <summary>Whether a file of <paramref name="fileBytes"/> is read into huge pages under these options.</summary>
    internal bool UseHugePages(long fileBytes) => WeightPages switch
    {
        WeightPages.Huge => true,
        WeightPages.File => false,
        _ => fileBytes >= AutoHugePagesMinBytes && Memory.HugePages.Available
            && Memory.HugePages.AvailableMemoryBytes() is { } free && free >= fileBytes + fileBytes / 4,
    };

    /// <summary>The file's own config with these options applied.</summary>
    internal ModelConfig Apply(ModelConfig c)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(ContextLength);
        return ContextLength > 0 && ContextLength != c.ContextLength ? c with { ContextLength = ContextLength } : c;
    }
}

/// <summary>Where a model file's bytes live while it runs (<see cref="ModelLoadOptions.WeightPages"/>).</summary>
public enum WeightPages
{
    /// <summary><see cref="Huge"/> for files of at least <see cref="ModelLoadOptions.AutoHugePagesMinBytes"/> where
    /// Linux offers transparent huge pages (not set to never) and the memory available holds the copy with a quarter to
    /// spare (MemAvailable, or the memory cgroup's headroom where that is less: a container's limit, not the host's memory),
    /// else <see cref="File"/>.</summary>
    Auto,

    /// <summary>The file mapped read-only: nothing copied, pages shared with every process that maps the same file.</summary>
    File,

    /// <summary>
    /// A private copy read into 2 MiB-aligned memory advised MADV_HUGEPAGE (Linux transparent huge pages): a decode
    /// step streams every weight once, and 2 MiB pages spare it a TLB miss every 4 KiB. Costs reading the file at load
    /// and private memory of the file's size. Where the system offers no huge pages the copy still loads, on small pages.
    /// </summary>
    Huge,
}
