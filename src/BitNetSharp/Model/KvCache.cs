using System.Runtime.CompilerServices;
using BitNetSharp.Kernels;
using BitNetSharp.Kernels.FloatOps;
using BitNetSharp.Memory;

namespace BitNetSharp.Model;

/// <summary>
/// One sequence's keys and values for every layer, allocated once for <see cref="ContextLength"/> positions.
/// <para>
/// Layout: for each layer and kv head, the rows of consecutive positions are contiguous
/// ([layer][kvHead][position][headDim]), so attention for one head streams one block of memory. A Write scatters
/// the kvDim = kvHeads × headDim values of one token into its kvHeads rows. Int8 and FP8 rows carry one fp32
/// scale per (layer, kv head, position): per-head rather than per-token, so one head's outlier does not
/// coarsen the other heads' rows, at 4 bytes per 128 values (3%).
/// </para>
/// <para>
/// Int8 caches whose head dimension is a multiple of 32 store each head's keys in blocks of 16 positions transposed by
/// dimension pairs (<see cref="Int8KeyBlocks"/>, each head's region rounded up to whole blocks): the same bytes, ordered
/// so the integer score kernel needs no horizontal sums. Single positions are read and written through that layout;
/// scores equal the row layout's bit for bit.
/// </para>
/// <para>
/// Each layer has its own length (positions written without gaps): a batch writes layer 0 for all its tokens
/// before layer 1, and <see cref="Length"/> is the number of positions every layer holds.
/// </para>
/// </summary>
public sealed unsafe class KvCache : IDisposable
{
    private readonly NativeBuffer _keys;
    private readonly NativeBuffer _values;
    private readonly NativeBuffer _scales; // [K|V][layer][kvHead][position], empty for unscaled types
    private readonly int[] _layerLength;
    // An F16 cache that has never stored ±inf or NaN is read with the short widening (F16FiniteRow); sticky until Clear.
    private bool _nonFiniteF16;
    // [origin code + 1] (Embedding = −1 first, then each layer): the earliest position whose residual first went
    // non-finite there; int.MaxValue for none. Allocated at the first non-finite value.
    private int[]? _nonFiniteAt;

    /// <summary>
    /// Where the first non-finite residual among the positions this cache holds appeared (a
    /// <see cref="Monitoring.ModelHealthCollector.NonFiniteOrigin"/> code; Finite when none), kept by a forward pass
    /// with health collection. A prompt read in chunks has no logits before its last: a NaN made in an earlier chunk
    /// reached the last one only through this cache, and was named as the first layer that read it.
    /// </summary>
    public int NonFiniteOrigin
    {
        get
        {
            if (_nonFiniteAt is { } at)
                for (int i = 0; i < at.Length; i++)
                    if (at[i] != int.MaxValue) return i - 1;
            return Monitoring.ModelHealthCollector.Finite;
        }
    }

    /// <summary>Records a non-finite residual of the token at <paramref name="position"/> that first appeared at <paramref name="origin"/>.</summary>
    internal void NoteNonFinite(int origin, int position)
    {
        if (origin == Monitoring.ModelHealthCollector.Finite || (uint)(origin + 1) > (uint)Layers) return;
        if (_nonFiniteAt is null)
        {
            _nonFiniteAt = new int[Layers + 1];
            Array.Fill(_nonFiniteAt, int.MaxValue);
        }
        _nonFiniteAt[origin + 1] = Math.Min(_nonFiniteAt[origin + 1], position);
    }
    private readonly int _rowBytes;
    // Int8 keys of a head dimension the block kernels serve are stored in blocks of 16 positions (Int8KeyBlocks), each
    // head's region rounded up to whole blocks; every other type and the values are rows.
    private readonly bool _keyBlocks;
    private readonly int _keyPositions;

    /// <param name="checkedPositions">Positions checked against the memory available before the buffers are allocated
    /// (≤ 0: the whole context). Pages commit as positions fill, so a run that will use fewer positions than the context
    /// (generate: its prompt and -n) is checked for those; a full context past the machine's memory refused a 20-token
    /// run of a 32K-context model.</param>
    public KvCache(int layers, int kvHeads, int headDim, int contextLength, KvCacheType type = KvCacheType.F16, int checkedPositions = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(layers);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(kvHeads);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(headDim);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(contextLength);
        if (!Enum.IsDefined(type)) throw new ArgumentOutOfRangeException(nameof(type), type, "Unknown KV cache type.");
        Layers = layers;
        KvHeads = kvHeads;
        HeadDim = headDim;
        ContextLength = contextLength;
        Type = type;
        _rowBytes = headDim * ElementSize(type);
        long rows = RowCount(layers, kvHeads, contextLength);
        _keyBlocks = KeyBlocks(type, headDim);
        _keyPositions = _keyBlocks ? Int8KeyBlocks.RoundUp(contextLength) : contextLength;
        long keyBytes = RowCount(layers, kvHeads, _keyPositions) * _rowBytes, valueBytes = rows * _rowBytes,
            scaleBytes = HasScale(type) ? 2 * rows * sizeof(float) : 0;
        int check = checkedPositions > 0 ? Math.Min(checkedPositions, contextLength) : contextLength;
        if (BytesFor(layers, kvHeads, headDim, check, type) >= CheckedBytes) EnsureFits(layers, kvHeads, headDim, check, type);
        try
        {
            _keys = new NativeBuffer(keyBytes, zero: false);
            _values = new NativeBuffer(valueBytes, zero: false);
            _scales = new NativeBuffer(scaleBytes, zero: false);
        }
        catch (OutOfMemoryException e)
        {
            // A model declaring a context of millions of positions, run without --ctx: a stack trace from here.
            _keys?.Dispose();
            _values?.Dispose();
            throw new InsufficientMemoryException(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"A KV cache of {contextLength:N0} positions ({layers} layers, {kvHeads} KV heads × {headDim}, {type.Name()}) needs {FormatBytes(keyBytes + valueBytes + scaleBytes)}, more than this machine can give; run with a shorter context (--ctx)."), e);
        }
        _layerLength = new int[layers];
    }

    public int Layers { get; }
    public int KvHeads { get; }
    public int HeadDim { get; }
    public int KvDim => KvHeads * HeadDim;
    public int ContextLength { get; }
    public KvCacheType Type { get; }

    /// <summary>Positions that every layer holds.</summary>
    public int Length
    {
        get
        {
            int min = int.MaxValue;
            foreach (int n in _layerLength) min = Math.Min(min, n);
            return min;
        }
    }

    /// <summary>Positions layer <paramref name="layer"/> holds.</summary>
    public int LayerLength(int layer) => _layerLength[CheckLayer(layer)];

    /// <summary>Bytes allocated (K, V and scales), all of it at creation.</summary>
    public long ByteLength => _keys.ByteLength + _values.ByteLength + _scales.ByteLength;

    /// <summary>Bytes holding the <see cref="Length"/> positions written so far.</summary>
    public long BytesInUse
    {
        get
        {
            // Int8 keys in 16-position blocks hold whole blocks; spreading the rounded-up allocation over the context
            // (the old ByteLength / ContextLength · Length) miscounted any context not a multiple of 16.
            int length = Length;
            long keyPositions = _keyBlocks ? Math.Min(Int8KeyBlocks.RoundUp(length), _keyPositions) : length;
            return (RowCount(Layers, KvHeads, length) + RowCount(Layers, KvHeads, (int)keyPositions)) * _rowBytes
                   + (HasScale(Type) ? 2 * RowCount(Layers, KvHeads, length) * sizeof(float) : 0);
        }
    }

    /// <summary>Caches this large or larger are checked against the memory available before they are allocated.</summary>
    private const long CheckedBytes = 64L << 20;

    /// <summary>
    /// Refuses <paramref name="caches"/> KV caches (a server's sequences) that need more memory than this process can
    /// take (<see cref="Memory.HugePages.AvailableMemoryBytes()"/>), naming the sizes and what to change. The buffers are
    /// committed lazily, page by page as positions fill, so an allocation past the machine's memory succeeded for an
    /// int8 or fp8 cache (one buffer under the machine's size; f16 and f32 failed at the allocation): a server started
    /// with 109.5 GB of KV caches on 23 GB and would have been killed once its contexts filled.
    /// </summary>
    /// <exception cref="InsufficientMemoryException">They do not fit.</exception>
    /// <param name="advice">What to change, ending the message (null: a shorter context, and fewer sequences for several).</param>
    public static void EnsureFits(int layers, int kvHeads, int headDim, int contextLength, KvCacheType type, int caches = 1, string? advice = null) =>
        EnsureFits(layers, kvHeads, headDim, contextLength, type, caches, AvailableBytes(), advice);

    /// <summary>The memory KV caches are measured against: <see cref="Memory.HugePages.AvailableMemoryBytes()"/> (null:
    /// unknown), or what a test set for its own flow in <see cref="AvailableBytesForTests"/>.</summary>
    public static long? AvailableBytes() => AvailableBytesForTests.Value ?? Memory.HugePages.AvailableMemoryBytes();

    /// <summary>A test's stand-in for the machine's available memory, seen only by the code its own flow runs.</summary>
    internal static readonly AsyncLocal<long?> AvailableBytesForTests = new();

    internal static void EnsureFits(int layers, int kvHeads, int headDim, int contextLength, KvCacheType type, int caches, long? available, string? advice = null)
    {
        if (available is not { } free) return;
        long one = BytesFor(layers, kvHeads, headDim, contextLength, type);
        double all = (double)one * caches;
        if (all <= free) return;
        var inv = System.Globalization.CultureInfo.InvariantCulture;
        throw new InsufficientMemoryException(string.Create(inv,
            $"A KV cache of {contextLength:N0} positions ({layers} layers, {kvHeads} KV heads × {headDim}, {type.Name()}) needs {FormatBytes(one)}") +
            (caches > 1 ? $", {FormatBytes(all)} for {caches.ToString(inv)} sequences" : "") +
            $", more than this machine can give ({FormatBytes(free)} available); " +
            (advice ?? "run with a shorter context (--ctx)" + (caches > 1 ? " or fewer sequences (--max-seqs)" : "")) + ".");
    }

    /// <summary>
    /// The most positions whose cache (<see cref="BytesFor"/>) fits in <paramref name="available"/> bytes, at most
    /// <paramref name="contextLength"/>; 0 when not even one does.
    /// </summary>
    public static int FittingPositions(int layers, int kvHeads, int headDim, int contextLength, KvCacheType type, long available)
    {
        if (BytesFor(layers, kvHeads, headDim, contextLength, type) <= available) return contextLength;
        int lo = 0, hi = contextLength; // BytesFor(lo) fits (or lo = 0), BytesFor(hi) does not
        while (hi - lo > 1)
        {
            int mid = lo + (hi - lo) / 2;
            if (BytesFor(layers, kvHeads, headDim, mid, type) <= available) lo = mid;
            else hi = mid;
        }
        return lo;
    }

    /// <summary>A byte count for messages: GB from 1 GB on, else MB (a 10 MB cache read "0.0 GB").</summary>
    public static string FormatBytes(double bytes) => bytes >= 1e9
        ? string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{bytes / 1e9:F1} GB")
        : string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{bytes / 1e6:F1} MB");

    /// <summary>What a cache of this shape will allocate, for planning memory before creating one.</summary>
    public static long BytesFor(int layers, int kvHeads, int headDim, int contextLength, KvCacheType type)
    {
        long rows = RowCount(layers, kvHeads, contextLength);
        long keyRows = RowCount(layers, kvHeads, KeyBlocks(type, headDim) ? Int8KeyBlocks.RoundUp(contextLength) : contextLength);
        return (rows + keyRows) * headDim * (long)ElementSize(type) + (HasScale(type) ? 2 * rows * sizeof(float) : 0);
    }

    /// <summary>Bytes per value of <paramref name="type"/> (scales not counted).</summary>
    public static int ElementSize(KvCacheType type) => type switch
    {
        KvCacheType.F32 => F32Row.ElementSize,
        KvCacheType.F16 => F16Row.ElementSize,
        KvCacheType.Int8 => Int8Row.ElementSize,
        KvCacheType.Fp8E4M3 => Fp8Row.ElementSize,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "Unknown KV cache type."),
    };

    private static bool HasScale(KvCacheType type) => type is KvCacheType.Int8 or KvCacheType.Fp8E4M3;

    private static bool KeyBlocks(KvCacheType type, int headDim) => type == KvCacheType.Int8 && Int8KeyBlocks.Serves(headDim);

    /// <summary>The first key block of (layer, kvHead) when keys are in blocks.</summary>
    private byte* KeyBlockBase(int layer, int kvHead) => _keys.Pointer + ((long)layer * KvHeads + kvHead) * _keyPositions * _rowBytes;

    private static long RowCount(int layers, int kvHeads, int contextLength) => (long)layers * kvHeads * contextLength;

    /// <summary>Stores one token's keys and values (kvDim values each, head-major) at <paramref name="position"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">position ≥ ContextLength, or it would leave a gap in this layer.</exception>
    public void Write(int layer, int position, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
    {
        CheckLayer(layer);
        CheckCapacity(position);
        if (position > _layerLength[layer])
            throw new ArgumentOutOfRangeException(nameof(position), position,
                $"Position {position} would leave a gap: layer {layer} holds positions 0..{_layerLength[layer] - 1}.");
        if (k.Length != KvDim || v.Length != KvDim)
            throw new ArgumentException($"K and V rows must have kvDim = {KvDim} values; got {k.Length} and {v.Length}.", nameof(k));
        switch (Type)
        {
            case KvCacheType.F32: WriteRows<F32Row>(layer, position, k, v); break;
            case KvCacheType.F16: WriteRows<F16Row>(layer, position, k, v); break;
            case KvCacheType.Int8: WriteRows<Int8Row>(layer, position, k, v); break;
            default: WriteRows<Fp8Row>(layer, position, k, v); break;
        }
        _layerLength[layer] = Math.Max(_layerLength[layer], position + 1);
    }

    /// <summary>The stored (rounded) keys and values of one position, as floats: for tests and inspection, not attention.</summary>
    public void Read(int layer, int position, Span<float> k, Span<float> v)
    {
        CheckLayer(layer);
        if ((uint)position >= (uint)_layerLength[layer])
            throw new ArgumentOutOfRangeException(nameof(position), position, $"Layer {layer} holds positions 0..{_layerLength[layer] - 1}.");
        if (k.Length != KvDim || v.Length != KvDim)
            throw new ArgumentException($"K and V outputs must have kvDim = {KvDim} values; got {k.Length} and {v.Length}.", nameof(k));
        switch (Type)
        {
            case KvCacheType.F32: ReadRows<F32Row>(layer, position, k, v); break;
            case KvCacheType.F16: ReadRows<F16Row>(layer, position, k, v); break;
            case KvCacheType.Int8: ReadRows<Int8Row>(layer, position, k, v); break;
            default: ReadRows<Fp8Row>(layer, position, k, v); break;
        }
    }

    /// <summary>
    /// scores[p] = scale · (q · K[layer, kvHead, p]) for p in [0, positions): the attention logits of one query
    /// head (headDim values) against its kv head, read in place from the stored type.
    /// </summary>
    public void Scores(int layer, int kvHead, ReadOnlySpan<float> q, Span<float> scores, int positions, float scale = 1f)
    {
        CheckHead(layer, kvHead, positions);
        if (scores.Length < positions) throw new ArgumentException($"Room for {scores.Length} scores; {positions} positions asked for.", nameof(scores));
        ScoresRange(layer, kvHead, q, scores, 0, positions, scale);
    }

    private void ScoresRange(int layer, int kvHead, ReadOnlySpan<float> q, Span<float> scores, int start, int count, float scale)
    {
        if (q.Length != HeadDim) throw new ArgumentException($"The query has {q.Length} values; the head dimension is {HeadDim}.", nameof(q));
        switch (Type)
        {
            case KvCacheType.F32: ScoresCore<F32Row, WidestVector>(layer, kvHead, q, scores, start, count, scale); break;
            case KvCacheType.F16 when !_nonFiniteF16: ScoresCore<F16FiniteRow, WidestVector>(layer, kvHead, q, scores, start, count, scale); break;
            case KvCacheType.F16: ScoresCore<F16Row, WidestVector>(layer, kvHead, q, scores, start, count, scale); break;
            case KvCacheType.Int8: ScoresCore<Int8Row, WidestVector>(layer, kvHead, q, scores, start, count, scale); break;
            default: ScoresCore<Fp8Row, WidestVector>(layer, kvHead, q, scores, start, count, scale); break;
        }
    }

    /// <summary>
    /// The scores of the <paramref name="group"/> query heads that share <paramref name="kvHead"/> (GQA): head g's query
    /// is q[g·HeadDim ..], its scores go to scores[g·stride ..]. Equal, bit for bit, to one <see cref="Scores"/> call per
    /// head; a group of four widens each key row once for the four.
    /// </summary>
    public void ScoresGroup(int layer, int kvHead, ReadOnlySpan<float> q, int group, Span<float> scores, int stride, int positions, float scale = 1f) =>
        ScoresGroupRange(layer, kvHead, q, group, scores, stride, 0, positions, scale);

    /// <summary>
    /// <see cref="ScoresGroup"/> over the cached positions [start, start + count) only: position start + i scores to
    /// scores[g·stride + i]. A chunk of a long context, for attention split across threads.
    /// </summary>
    public void ScoresGroupRange(int layer, int kvHead, ReadOnlySpan<float> q, int group, Span<float> scores, int stride, int start, int count, float scale = 1f)
    {
        CheckRange(layer, kvHead, start, count);
        if (group <= 0 || q.Length < group * HeadDim) throw new ArgumentException($"{group} queries of {HeadDim} values need {group * HeadDim}; got {q.Length}.", nameof(q));
        if (stride < count || scores.Length < (long)(group - 1) * stride + count) throw new ArgumentException("The scores buffer is too small for the group.", nameof(scores));
        // Four heads at a time through the group kernels (each key row read and widened once for the four); for the float
        // types that gain (PadsGroups), a remainder of three heads padded to four with a zero query, whose scores are
        // dropped; the rest head by head.
        int g0 = 0;
        while (group - g0 >= 4 && Group4Scores(layer, kvHead, q.Slice(g0 * HeadDim), scores.Slice(g0 * stride), stride, start, count, scale)) g0 += 4;
        if (group - g0 == 3 && PadsGroups && PaddedScores(layer, kvHead, q.Slice(g0 * HeadDim), group - g0, scores.Slice(g0 * stride), stride, start, count, scale)) g0 = group;
        for (int g = g0; g < group; g++) ScoresRange(layer, kvHead, q.Slice(g * HeadDim, HeadDim), scores.Slice(g * stride, count), start, count, scale);
    }

    /// <summary>
    /// Whether a GQA group's remainder of three heads goes through the group-of-four kernels with a zero fourth query: for
    /// F16 and FP8 rows, whose widening the heads then share. `quick-gqa` (BitNetSharp.Benchmarks; head dim 64, two kv
    /// heads, 132 positions, µs a layer; the bundled model's shape) on the Zen 5 EPYC, before → after, with the one-head
    /// sums in registers too: F16 group 3 8.05 → 4.26, FP8 8.91 → 4.38. A remainder of two gains nothing (F16 scores
    /// 2.27 padded against 2.5 for two heads, sums 1.48 against 1.34), and int8 rows none (their one-head kernels are
    /// integer and cheap: group 3 scores 1.34 either way), nor F32 sums.
    /// </summary>
    private bool PadsGroups => Type is KvCacheType.F16 or KvCacheType.Fp8E4M3;

    /// <summary>Positions per piece of a padded group call (a multiple of the int8 weighted sum's block, so blocks fall where one call would put them).</summary>
    private const int PaddedPositions = 2 * Int8Attention.Block;

    /// <summary>Largest head dimension padded (the padded query and output copies live on the stack).</summary>
    private const int PaddedMaxHeadDim = 512;

    /// <summary>The group-of-four score kernel for this cache's type, if this machine has one (false: per-head calls).</summary>
    private bool Group4Scores(int layer, int kvHead, ReadOnlySpan<float> q, Span<float> scores, int stride, int start, int count, float scale) => Type switch
    {
        KvCacheType.F32 => ScoresGroup4<F32Row>(layer, kvHead, q, scores, stride, start, count, scale),
        KvCacheType.F16 when !_nonFiniteF16 => ScoresGroup4<F16FiniteRow>(layer, kvHead, q, scores, stride, start, count, scale),
        KvCacheType.F16 => ScoresGroup4<F16Row>(layer, kvHead, q, scores, stride, start, count, scale),
        KvCacheType.Int8 => ScoresGroup4<Int8Row>(layer, kvHead, q, scores, stride, start, count, scale),
        _ => ScoresGroup4<Fp8Row>(layer, kvHead, q, scores, stride, start, count, scale),
    };

    /// <summary>
    /// The scores of <paramref name="heads"/> (fewer than four) queries through the group-of-four kernel, the missing queries zero;
    /// each real query's scores are the kernel's, which equal a per-head call's bit for bit. False (nothing written) when
    /// this type has no group kernel here or the head is too wide to pad on the stack.
    /// </summary>
    [SkipLocalsInit] // the kernel writes every score of the piece that is read back (zeroing 8 KiB a call cost ~0.1 µs)
    private bool PaddedScores(int layer, int kvHead, ReadOnlySpan<float> q, int heads, Span<float> scores, int stride, int start, int count, float scale)
    {
        if (HeadDim > PaddedMaxHeadDim) return false;
        Span<float> padded = stackalloc float[4 * HeadDim];
        padded.Clear();
        q[..(heads * HeadDim)].CopyTo(padded);
        int width = Math.Min(PaddedPositions, count);
        Span<float> piece = stackalloc float[4 * width];
        for (int s = 0; s < count; s += PaddedPositions)
        {
            int c = Math.Min(PaddedPositions, count - s);
            if (!Group4Scores(layer, kvHead, padded, piece, width, start + s, c, scale)) return false; // decided by the type: the first piece
            for (int g = 0; g < heads; g++) piece.Slice(g * width, c).CopyTo(scores.Slice(g * stride + s, c));
        }
        return true;
    }

    /// <summary>
    /// output[g·HeadDim + d] += Σ_p weights[g·stride + p] · V[layer, kvHead, p, d] for the group's heads: equal, bit for bit,
    /// to one <see cref="AccumulateV"/> call per head; a group of four widens each value row once.
    /// </summary>
    public void AccumulateVGroup(int layer, int kvHead, ReadOnlySpan<float> weights, int group, int stride, Span<float> output, int positions) =>
        AccumulateVGroupRange(layer, kvHead, weights, group, stride, output, 0, positions);

    /// <summary><see cref="AccumulateVGroup"/> over the cached positions [start, start + count): weights[g·stride + i] weighs position start + i.</summary>
    public void AccumulateVGroupRange(int layer, int kvHead, ReadOnlySpan<float> weights, int group, int stride, Span<float> output, int start, int count)
    {
        CheckRange(layer, kvHead, start, count);
        if (group <= 0 || output.Length < group * HeadDim) throw new ArgumentException($"{group} outputs of {HeadDim} values need {group * HeadDim}; got {output.Length}.", nameof(output));
        if (stride < count || weights.Length < (group - 1) * stride + count) throw new ArgumentException("The weights buffer is too small for the group.", nameof(weights));
        // As ScoresGroupRange: fours through the group kernels, a remainder of three padded with zero weights (the fourth
        // output dropped) where that gains, the rest head by head.
        int g0 = 0;
        while (group - g0 >= 4 && Group4Accumulate(layer, kvHead, weights.Slice(g0 * stride), output.Slice(g0 * HeadDim), stride, start, count)) g0 += 4;
        if (group - g0 == 3 && PadsGroups && PaddedAccumulate(layer, kvHead, weights.Slice(g0 * stride), group - g0, stride, output.Slice(g0 * HeadDim), start, count)) g0 = group;
        for (int g = g0; g < group; g++) AccumulateVRange(layer, kvHead, weights.Slice(g * stride, count), output.Slice(g * HeadDim, HeadDim), start, count);
    }

    /// <summary>The group-of-four weighted-sum kernel for this cache's type, if this machine has one (false: per-head calls).</summary>
    private bool Group4Accumulate(int layer, int kvHead, ReadOnlySpan<float> weights, Span<float> output, int stride, int start, int count) => Type switch
    {
        KvCacheType.F32 => AccumulateGroup4<F32Row>(layer, kvHead, weights, output, stride, start, count),
        KvCacheType.F16 when !_nonFiniteF16 => AccumulateGroup4<F16FiniteRow>(layer, kvHead, weights, output, stride, start, count),
        KvCacheType.F16 => AccumulateGroup4<F16Row>(layer, kvHead, weights, output, stride, start, count),
        KvCacheType.Int8 => AccumulateGroup4<Int8Row>(layer, kvHead, weights, output, stride, start, count),
        _ => AccumulateGroup4<Fp8Row>(layer, kvHead, weights, output, stride, start, count),
    };

    /// <summary>
    /// The weighted sums of <paramref name="heads"/> (fewer than four) heads through the group-of-four kernel, the missing heads'
    /// weights zero and their outputs dropped; each real head's output equals a per-head call's bit for bit (pieces of
    /// <see cref="PaddedPositions"/> positions continue the same per-position sums, and the int8 blocks start where one
    /// call would start them). False (nothing changed) when this type has no group kernel here or the head is too wide.
    /// </summary>
    [SkipLocalsInit] // the real heads' weights are copied in before each use and the padding head's row is cleared once
    private bool PaddedAccumulate(int layer, int kvHead, ReadOnlySpan<float> weights, int heads, int stride, Span<float> output, int start, int count)
    {
        if (HeadDim > PaddedMaxHeadDim) return false;
        Span<float> padded = stackalloc float[4 * HeadDim];
        padded.Clear();
        output[..(heads * HeadDim)].CopyTo(padded);
        int width = Math.Min(PaddedPositions, count);
        Span<float> piece = stackalloc float[4 * width];
        piece[(heads * width)..].Clear();
        for (int s = 0; s < count; s += PaddedPositions)
        {
            int c = Math.Min(PaddedPositions, count - s);
            for (int g = 0; g < heads; g++) weights.Slice(g * stride + s, c).CopyTo(piece.Slice(g * width, c));
            if (!Group4Accumulate(layer, kvHead, piece, padded, width, start + s, c)) return false; // decided by the type: the first piece
        }
        padded[..(heads * HeadDim)].CopyTo(output);
        return true;
    }

    /// <summary>
    /// Asks for the cache lines that <see cref="Write"/> of <paramref name="position"/> in <paramref name="layer"/> will store
    /// to (every head's key row or, for int8 keys in blocks, the lines of its block that the position's bytes fall in;
    /// its value row; its scales), so that the write does not wait on memory for each line. Decoding a long context, a
    /// layer's write otherwise missed on about 35 lines per head — the block was last touched 16 positions (a whole pass
    /// over the weights) earlier. A hint only: no effect on results; out-of-range arguments are ignored.
    /// </summary>
    public void PrefetchWrite(int layer, int position)
    {
        if ((uint)layer >= (uint)Layers || (uint)position >= (uint)ContextLength) return;
        for (int h = 0; h < KvHeads; h++)
        {
            long row = Row(layer, h, position);
            if (_keyBlocks)
                KvEncoding.PrefetchLines(KeyBlockBase(layer, h) + Int8KeyBlocks.BlockOffset(position, HeadDim), (long)Int8KeyBlocks.Rows * HeadDim);
            else KvEncoding.PrefetchLines(_keys.Pointer + row * _rowBytes, _rowBytes);
            KvEncoding.PrefetchLines(_values.Pointer + row * _rowBytes, _rowBytes);
            if (_scales.ByteLength > 0)
            {
                KvEncoding.PrefetchLines((byte*)(KeyScales + row), sizeof(float));
                KvEncoding.PrefetchLines((byte*)(ValueScales + row), sizeof(float));
            }
        }
    }

    /// <summary>
    /// Asks the CPU to start loading the value rows of positions [start, start + count) (a hint: nothing is checked or
    /// read). Attention over a chunk calls it before scoring the chunk's keys, so the values arrive while it computes.
    /// </summary>
    public void PrefetchValues(int layer, int kvHead, int start, int count)
    {
        if ((uint)layer >= (uint)Layers || (uint)kvHead >= (uint)KvHeads || start < 0 || count <= 0 || start >= ContextLength) return;
        AttentionKernels.PrefetchStart(_values.Pointer + Row(layer, kvHead, start) * _rowBytes, _rowBytes, Math.Min(count, ContextLength - start));
    }

    /// <summary>One head's scores over [start, start + count) by the per-head kernels (tests compare the group paths with it).</summary>
    internal void ScoresRangeForTest(int layer, int kvHead, ReadOnlySpan<float> q, Span<float> scores, int start, int count, float scale)
    {
        CheckRange(layer, kvHead, start, count);
        ScoresRange(layer, kvHead, q, scores, start, count, scale);
    }

    /// <summary>One head's weighted sum over [start, start + count) by the per-head kernels (tests compare the group paths with it).</summary>
    internal void AccumulateVRangeForTest(int layer, int kvHead, ReadOnlySpan<float> weights, Span<float> output, int start, int count)
    {
        CheckRange(layer, kvHead, start, count);
        AccumulateVRange(layer, kvHead, weights, output, start, count);
    }

    /// <summary>The group-of-four score kernels for <typeparamref name="TRow"/>, if this machine has one; false to fall back to per-head calls.</summary>
    private bool ScoresGroup4<TRow>(int layer, int kvHead, ReadOnlySpan<float> q, Span<float> scores, int stride, int start, int count, float scale) where TRow : IKvRow
    {
        long first = Row(layer, kvHead, start);
        fixed (float* pq = q)
        fixed (float* ps = scores)
        {
            if (typeof(TRow) == typeof(Int8Row) && _keyBlocks)
                AttentionKernels.ScoresGroup4Int8Blocks(KeyBlockBase(layer, kvHead), KeyScales + Row(layer, kvHead, 0), HeadDim, pq, ps, stride, start, count, scale);
            else if (AttentionKernels.HasLanePath<TRow>(HeadDim))
                AttentionKernels.ScoresGroup4<TRow>(_keys.Pointer + first * _rowBytes, TRow.HasScale ? KeyScales + first : null, _rowBytes, HeadDim, pq, ps, stride, count, scale);
            else if (typeof(TRow) == typeof(F16FiniteRow))
                AttentionKernels.ScoresF16Group4(_keys.Pointer + first * _rowBytes, _rowBytes, HeadDim, pq, ps, stride, count, scale);
            else if (typeof(TRow) == typeof(Fp8Row) && AttentionKernels.HasFp8Group256(HeadDim))
                AttentionKernels.ScoresFp8Group4(_keys.Pointer + first * _rowBytes, KeyScales + first, _rowBytes, HeadDim, pq, ps, stride, count, scale);
            else return false;
        }
        return true;
    }

    private bool AccumulateGroup4<TRow>(int layer, int kvHead, ReadOnlySpan<float> weights, Span<float> output, int stride, int start, int count) where TRow : IKvRow
    {
        long first = Row(layer, kvHead, start);
        fixed (float* pw = weights)
        fixed (float* po = output)
        {
            if (AttentionKernels.HasLanePath<TRow>(HeadDim))
                AttentionKernels.AccumulateGroup4<TRow>(_values.Pointer + first * _rowBytes, TRow.HasScale ? ValueScales + first : null, _rowBytes, HeadDim, pw, stride, po, count);
            else if (typeof(TRow) == typeof(F16FiniteRow))
                AttentionKernels.AccumulateF16Group4(_values.Pointer + first * _rowBytes, _rowBytes, HeadDim, pw, stride, po, count);
            else if (typeof(TRow) == typeof(Fp8Row) && AttentionKernels.HasFp8Group256(HeadDim))
                AttentionKernels.AccumulateFp8Group4(_values.Pointer + first * _rowBytes, ValueScales + first, _rowBytes, HeadDim, pw, stride, po, count);
            else return false;
        }
        return true;
    }

    /// <summary>output[d] += Σ_p weights[p] · V[layer, kvHead, p, d] for p in [0, positions); zero weights are skipped.</summary>
    public void AccumulateV(int layer, int kvHead, ReadOnlySpan<float> weights, Span<float> output, int positions)
    {
        CheckHead(layer, kvHead, positions);
        if (weights.Length < positions) throw new ArgumentException($"{weights.Length} weights for {positions} positions.", nameof(weights));
        AccumulateVRange(layer, kvHead, weights, output, 0, positions);
    }

    private void AccumulateVRange(int layer, int kvHead, ReadOnlySpan<float> weights, Span<float> output, int start, int count)
    {
        if (output.Length != HeadDim) throw new ArgumentException($"The output has {output.Length} values; the head dimension is {HeadDim}.", nameof(output));
        switch (Type)
        {
            case KvCacheType.F32: AccumulateCore<F32Row, WidestVector>(layer, kvHead, weights, output, start, count); break;
            case KvCacheType.F16 when !_nonFiniteF16: AccumulateCore<F16FiniteRow, WidestVector>(layer, kvHead, weights, output, start, count); break;
            case KvCacheType.F16: AccumulateCore<F16Row, WidestVector>(layer, kvHead, weights, output, start, count); break;
            case KvCacheType.Int8: AccumulateCore<Int8Row, WidestVector>(layer, kvHead, weights, output, start, count); break;
            default: AccumulateCore<Fp8Row, WidestVector>(layer, kvHead, weights, output, start, count); break;
        }
    }

    /// <summary>Forgets every position from <paramref name="length"/> on (a shorter shared prefix, a rejected draft).</summary>
    public void Truncate(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        for (int l = 0; l < Layers; l++) _layerLength[l] = Math.Min(_layerLength[l], length);
        if (length == 0) _nonFiniteF16 = false;
        // Each origin is kept while a position it was recorded at is held (the earliest is enough).
        if (_nonFiniteAt is { } at)
            for (int i = 0; i < at.Length; i++)
                if (at[i] >= length) at[i] = int.MaxValue;
    }

    /// <summary>
    /// Makes this cache hold exactly what <paramref name="source"/> holds (every layer's positions, bit for bit): a
    /// prefix computed once, given to several sequences. Both caches must have the same shape and type.
    /// </summary>
    public void CopyFrom(KvCache source)
    {
        ArgumentNullException.ThrowIfNull(source);
        if (source.Layers != Layers || source.KvHeads != KvHeads || source.HeadDim != HeadDim || source.ContextLength != ContextLength || source.Type != Type)
            throw new ArgumentException("The source cache has a different shape or type.", nameof(source));
        Buffer.MemoryCopy(source._keys.Pointer, _keys.Pointer, _keys.ByteLength, _keys.ByteLength);
        Buffer.MemoryCopy(source._values.Pointer, _values.Pointer, _values.ByteLength, _values.ByteLength);
        if (_scales.ByteLength > 0) Buffer.MemoryCopy(source._scales.Pointer, _scales.Pointer, _scales.ByteLength, _scales.ByteLength);
        source._layerLength.CopyTo(_layerLength, 0);
        _nonFiniteF16 = source._nonFiniteF16;
        if (source._nonFiniteAt is { } sourceAt) sourceAt.CopyTo(_nonFiniteAt ??= new int[Layers + 1], 0);
        else if (_nonFiniteAt is { } at) Array.Fill(at, int.MaxValue);
    }

    /// <summary>Empties the cache for reuse by another sequence; nothing is freed or zeroed.</summary>
    public void Clear() => Truncate(0);

    public void Dispose()
    {
        _keys.Dispose();
        _values.Dispose();
        _scales.Dispose();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private long Row(int layer, int kvHead, int position) => ((long)layer * KvHeads + kvHead) * ContextLength + position;

    private float* KeyScales => (float*)_scales.Pointer;

    private float* ValueScales => (float*)_scales.Pointer + RowCount(Layers, KvHeads, ContextLength);

    [SkipLocalsInit]
    private void WriteRows<TRow>(int layer, int position, ReadOnlySpan<float> k, ReadOnlySpan<float> v) where TRow : IKvRow
    {
        byte* encoded = stackalloc byte[_keyBlocks ? _rowBytes : 0];
        for (int h = 0; h < KvHeads; h++)
        {
            long row = Row(layer, h, position);
            float ks;
            if (_keyBlocks)
            {
                ks = TRow.Encode(k.Slice(h * HeadDim, HeadDim), encoded);
                Int8KeyBlocks.Store(encoded, KeyBlockBase(layer, h), position, HeadDim);
            }
            else ks = TRow.Encode(k.Slice(h * HeadDim, HeadDim), _keys.Pointer + row * _rowBytes);
            float vs = TRow.Encode(v.Slice(h * HeadDim, HeadDim), _values.Pointer + row * _rowBytes);
            if (typeof(TRow) == typeof(F16Row) && !_nonFiniteF16 &&
                (F16FiniteRow.HasNonFinite(_keys.Pointer + row * _rowBytes, HeadDim) || F16FiniteRow.HasNonFinite(_values.Pointer + row * _rowBytes, HeadDim)))
                _nonFiniteF16 = true;
            if (TRow.HasScale)
            {
                KeyScales[row] = ks;
                ValueScales[row] = vs;
            }
        }
    }

    [SkipLocalsInit]
    private void ReadRows<TRow>(int layer, int position, Span<float> k, Span<float> v) where TRow : IKvRow
    {
        byte* gathered = stackalloc byte[_keyBlocks ? _rowBytes : 0];
        for (int h = 0; h < KvHeads; h++)
        {
            long row = Row(layer, h, position);
            byte* key = _keys.Pointer + row * _rowBytes;
            if (_keyBlocks)
            {
                Int8KeyBlocks.Load(KeyBlockBase(layer, h), position, HeadDim, gathered);
                key = gathered;
            }
            TRow.Decode(key, TRow.HasScale ? KeyScales[row] : 1f, k.Slice(h * HeadDim, HeadDim));
            TRow.Decode(_values.Pointer + row * _rowBytes, TRow.HasScale ? ValueScales[row] : 1f, v.Slice(h * HeadDim, HeadDim));
        }
    }

    internal void ScoresCore<TRow, TWidth>(int layer, int kvHead, ReadOnlySpan<float> q, Span<float> scores, int start, int count, float scale)
        where TRow : IKvRow where TWidth : struct, IVectorWidth
    {
        long first = Row(layer, kvHead, start);
        fixed (float* pq = q)
        fixed (float* ps = scores)
        {
            if (typeof(TRow) == typeof(Int8Row) && _keyBlocks)
                AttentionKernels.ScoresInt8Blocks<TWidth>(KeyBlockBase(layer, kvHead), KeyScales + Row(layer, kvHead, 0), HeadDim, pq, ps, start, count, scale);
            else
                AttentionKernels.Scores<TRow, TWidth>(_keys.Pointer + first * _rowBytes, TRow.HasScale ? KeyScales + first : null, _rowBytes, HeadDim, pq, ps, count, scale);
        }
    }

    internal void AccumulateCore<TRow, TWidth>(int layer, int kvHead, ReadOnlySpan<float> weights, Span<float> output, int start, int count)
        where TRow : IKvRow where TWidth : struct, IVectorWidth
    {
        long first = Row(layer, kvHead, start);
        fixed (float* pw = weights)
        fixed (float* po = output)
            AttentionKernels.Accumulate<TRow, TWidth>(_values.Pointer + first * _rowBytes, TRow.HasScale ? ValueScales + first : null, _rowBytes, HeadDim, pw, po, count);
    }

    private int CheckLayer(int layer)
    {
        if ((uint)layer >= (uint)Layers)
            throw new ArgumentOutOfRangeException(nameof(layer), layer, $"Layer {layer} is outside [0, {Layers}).");
        return layer;
    }

    private void CheckCapacity(int position)
    {
        if (position < 0) throw new ArgumentOutOfRangeException(nameof(position), position, "Positions start at 0.");
        if (position >= ContextLength)
            throw new ArgumentOutOfRangeException(nameof(position), position,
                $"Position {position} is beyond the KV cache's capacity of {ContextLength} positions (0..{ContextLength - 1}).");
    }

    private void CheckWritten(int layer, int positions)
    {
        if (positions < 0 || positions > _layerLength[layer])
            throw new ArgumentOutOfRangeException(nameof(positions), positions,
                $"Layer {layer} holds {_layerLength[layer]} positions; {positions} asked for.");
    }

    private void CheckRange(int layer, int kvHead, int start, int count)
    {
        CheckHead(layer, kvHead, 0);
        if (start < 0 || count < 0 || start > _layerLength[layer] - count)
            throw new ArgumentOutOfRangeException(nameof(start), start,
                $"Positions [{start}, {start + (long)count}) asked for; layer {layer} holds {_layerLength[layer]}.");
    }

    private void CheckHead(int layer, int kvHead, int positions)
    {
        CheckLayer(layer);
        if ((uint)kvHead >= (uint)KvHeads)
            throw new ArgumentOutOfRangeException(nameof(kvHead), kvHead, $"KV head {kvHead} is outside [0, {KvHeads}).");
        CheckWritten(layer, positions);
    }
}
