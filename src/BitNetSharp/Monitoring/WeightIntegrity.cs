using System.IO.Hashing;
using System.Runtime.InteropServices;
using BitNetSharp.Model;
using BitNetSharp.Quantization;

namespace BitNetSharp.Monitoring;

/// <summary>One tensor's load-time checksum: GGUF-style name, bytes covered, XXH3-64 of those bytes.</summary>
public readonly record struct TensorChecksum(string Name, long Bytes, ulong Hash)
{
    public string HashHex => Hash.ToString("x16");
}

/// <summary>A full check's or a probe's result: the tensors whose bytes changed since load.</summary>
public sealed record IntegrityResult(IReadOnlyList<string> Mismatched, TimeSpan Elapsed, long BytesChecked)
{
    public bool Ok => Mismatched.Count == 0;
}

/// <summary>
/// Guards a loaded model's weights against silent corruption (a bad DIMM, a stray write through a pointer, a file
/// changed under a memory map). At construction it takes an XXH3-64 checksum (System.IO.Hashing) of every packed
/// ternary tensor, every per-row scale array, every norm and the embedding and head tables, and a snapshot of a fixed,
/// seeded sample of 8-byte words from each packed tensor. <see cref="Verify"/> re-hashes everything (the background
/// verifier runs it at low priority); <see cref="Probe"/> compares only the sampled words, cheap enough to run every
/// few hundred tokens. Both count what they find and remember the last tensor that mismatched.
/// </summary>
public sealed unsafe class WeightIntegrity
{
    private readonly Entry[] _entries;
    private readonly ModelWeights _weights;
    private readonly ProbeSet[] _probes;
    private long _verifications, _mismatches, _probes_, _probeMismatches;
    private volatile string? _lastMismatch;
    private volatile int _verified = 1;

    private sealed class Entry(string name, byte* data, long length, float[]? floats, bool derived = false)
    {
        public string Name { get; } = name;

        /// <summary>A kernel's load-time copy of a tensor (verified like the rest, but not part of the model checksum,
        /// which names the weights as stored whatever kernel runs them).</summary>
        public bool Derived { get; } = derived;
        public byte* Data { get; } = data;
        public long Length { get; } = floats is null ? length : (long)floats.Length * sizeof(float);
        public float[]? Floats { get; } = floats;
        public ulong Hash { get; set; }

        public ulong Compute()
        {
            if (Floats is not null) return XxHash3.HashToUInt64(MemoryMarshal.AsBytes(Floats.AsSpan()));
            var hasher = new XxHash3();
            const int Chunk = 1 << 30;
            for (long o = 0; o < Length; o += Chunk)
                hasher.Append(new ReadOnlySpan<byte>(Data + o, (int)Math.Min(Chunk, Length - o)));
            return hasher.GetCurrentHashAsUInt64();
        }
    }

    private sealed class ProbeSet(string name, byte* data, long[] offsets, ulong[] words)
    {
        public string Name { get; } = name;
        public byte* Data { get; } = data;
        public long[] Offsets { get; } = offsets;
        public ulong[] Words { get; } = words;
    }

    /// <param name="probeWords">8-byte words sampled per packed tensor for <see cref="Probe"/>.</param>
    public WeightIntegrity(ModelWeights weights, int probeWords = 32, int seed = 20261203)
    {
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentOutOfRangeException.ThrowIfNegative(probeWords);
        _weights = weights;
        var entries = new List<Entry>();
        var probes = new List<ProbeSet>();
        var rng = new Random(seed);
        entries.Add(new Entry("token_embd.weight", weights.TokenEmbedding.Data, weights.TokenEmbedding.ByteLength, null));
        if (!weights.TiedOutput) entries.Add(new Entry("output.weight", weights.Output.Data, weights.Output.ByteLength, null));
        entries.Add(new Entry("output_norm.weight", null, 0, weights.OutputNorm));
        for (int l = 0; l < weights.Layers.Length; l++)
        {
            var lw = weights.Layers[l];
            string p = $"blk.{l}.";
            entries.Add(new Entry(p + "attn_norm.weight", null, 0, lw.AttnNorm));
            entries.Add(new Entry(p + "ffn_norm.weight", null, 0, lw.FfnNorm));
            if (lw.AttnSubNorm is { } a) entries.Add(new Entry(p + "attn_sub_norm.weight", null, 0, a));
            if (lw.FfnSubNorm is { } f) entries.Add(new Entry(p + "ffn_sub_norm.weight", null, 0, f));
            foreach (var (name, m) in Projections(lw))
            {
                entries.Add(new Entry(p + name + ".weight", m.Data, m.ByteLength, null));
                entries.Add(new Entry(p + name + ".scale", null, 0, m.RowScales));
                Sample(p + name + ".weight", m.Data, m.ByteLength);
                if (m.KernelLayout is Kernels.LutTernaryKernel.Packed packed)
                {
                    // What the lookup kernel reads instead of the packed tensor: its repack is guarded too.
                    string derived = p + name + ".weight (avx512lut layout)";
                    entries.Add(new Entry(derived, (byte*)packed.Data, packed.ByteLength, null, derived: true));
                    Sample(derived, (byte*)packed.Data, packed.ByteLength);
                }
            }
        }

        // A seeded sample of 8-byte words of a packed tensor, for Probe.
        void Sample(string name, byte* data, long bytes)
        {
            long words = bytes / 8;
            int k = (int)Math.Min(probeWords, words);
            if (k == 0) return;
            // k distinct words (Floyd's sampling; drawn with replacement, a tensor of k words had about a third of them
            // never probed), in address order.
            var chosen = new HashSet<long>(k);
            for (long j = words - k; j < words; j++)
            {
                long t = rng.NextInt64(j + 1);
                chosen.Add(chosen.Contains(t) ? j : t);
            }
            var offsets = new long[k];
            var snapshot = new ulong[k];
            int n = 0;
            foreach (long word in chosen) offsets[n++] = word * 8;
            Array.Sort(offsets);
            for (int i = 0; i < k; i++) snapshot[i] = *(ulong*)(data + offsets[i]);
            probes.Add(new ProbeSet(name, data, offsets, snapshot));
        }
        _entries = [.. entries];
        _probes = [.. probes];
        var all = new XxHash3();
        Span<byte> h = stackalloc byte[8];
        foreach (var e in _entries)
        {
            e.Hash = e.Compute();
            TotalBytes += e.Length;
            if (e.Derived) continue;
            BitConverter.TryWriteBytes(h, e.Hash);
            all.Append(h);
        }
        ModelChecksum = all.GetCurrentHashAsUInt64();
    }

    /// <summary>The seven packed projections of a layer with their GGUF tensor-name stems, in <see cref="HealthNames.ProjectionLabels"/> order.</summary>
    public static (string Name, TernaryMatrix Matrix)[] Projections(LayerWeights lw) =>
    [
        ("attn_q", lw.Q), ("attn_k", lw.K), ("attn_v", lw.V), ("attn_output", lw.O), ("ffn_gate", lw.Gate), ("ffn_up", lw.Up), ("ffn_down", lw.Down),
    ];

    /// <summary>XXH3-64 over the per-tensor checksums, in order: one number that names this exact set of weights.</summary>
    public ulong ModelChecksum { get; }

    public string ModelChecksumHex => ModelChecksum.ToString("x16");

    public long TotalBytes { get; }

    public IReadOnlyList<TensorChecksum> Tensors => _entries.Select(e => new TensorChecksum(e.Name, e.Length, e.Hash)).ToArray();

    public long Verifications => Interlocked.Read(ref _verifications);
    public long Mismatches => Interlocked.Read(ref _mismatches);
    public long Probes => Interlocked.Read(ref _probes_);
    public long ProbeMismatches => Interlocked.Read(ref _probeMismatches);

    /// <summary>The last tensor a check or probe found changed (null: none ever).</summary>
    public string? LastMismatch => _lastMismatch;

    /// <summary>True until a check or probe finds a change (and again after a full check finds none).</summary>
    public bool Verified => _verified != 0;

    /// <summary>When the last full check finished (null: none yet). Stored as ticks so /health never reads a torn value.</summary>
    public DateTimeOffset? LastVerified
    {
        get
        {
            long ticks = Interlocked.Read(ref _lastVerifiedTicks);
            return ticks == 0 ? null : new DateTimeOffset(ticks, TimeSpan.Zero);
        }
    }

    private long _lastVerifiedTicks;

    /// <summary>Raised (on the checking thread) with the names of the tensors found changed, each once until a full check passes again.</summary>
    public event Action<IReadOnlyList<string>>? MismatchFound;

    /// <summary>The byte offset of a packed tensor's first sampled word (tests flip a bit there).</summary>
    internal long FirstProbeOffset(string tensor) => _probes.First(p => p.Name == tensor).Offsets[0];

    /// <summary>Re-hashes every tensor and compares with the load-time checksums.</summary>
    public IntegrityResult Verify(CancellationToken cancellation = default)
    {
        // A mapped file cut short: reading past its new end is SIGBUS, which ends the process (ModelFileChangedException instead).
        _weights.CheckFilesNotTruncated();
        var start = System.Diagnostics.Stopwatch.GetTimestamp();
        long reportsBefore = Interlocked.Read(ref _reports);
        List<string>? bad = null;
        long bytes = 0;
        foreach (var e in _entries)
        {
            cancellation.ThrowIfCancellationRequested();
            if (e.Compute() != e.Hash) (bad ??= []).Add(e.Name);
            bytes += e.Length;
            AfterHash?.Invoke(e.Name);
        }
        Interlocked.Increment(ref _verifications);
        Interlocked.Exchange(ref _lastVerifiedTicks, DateTimeOffset.UtcNow.UtcTicks);
        var result = new IntegrityResult(bad ?? (IReadOnlyList<string>)[], System.Diagnostics.Stopwatch.GetElapsedTime(start), bytes);
        // A clean pass clears the flag only if no probe found a change while it ran: the probe may have seen a tensor
        // this pass had already hashed, and "verified" would then read 1 over changed bytes until the next pass.
        if (bad is null)
        {
            lock (_reportLock)
                if (Interlocked.Read(ref _reports) == reportsBefore)
                {
                    _verified = 1;
                    _reported.Clear(); // a tensor that changes again is news
                    _countedByProbe.Clear();
                    _countedByCheck.Clear();
                }
        }
        else Report(bad, ref _mismatches, _countedByCheck);
        return result;
    }

    /// <summary>Compares the sampled words of every packed tensor with their load-time values.</summary>
    public IntegrityResult Probe()
    {
        _weights.CheckFilesNotTruncated();
        var start = System.Diagnostics.Stopwatch.GetTimestamp();
        List<string>? bad = null;
        long bytes = 0;
        foreach (var p in _probes)
        {
            var offsets = p.Offsets;
            var words = p.Words;
            for (int i = 0; i < offsets.Length; i++)
            {
                if (*(ulong*)(p.Data + offsets[i]) == words[i]) continue;
                (bad ??= []).Add(p.Name);
                break;
            }
            bytes += offsets.Length * 8L;
        }
        Interlocked.Increment(ref _probes_);
        var result = new IntegrityResult(bad ?? (IReadOnlyList<string>)[], System.Diagnostics.Stopwatch.GetElapsedTime(start), bytes);
        if (bad is not null) Report(bad, ref _probeMismatches, _countedByProbe);
        return result;
    }

    /// <summary>
    /// Marks the weights unverified, counts the tensors this kind of check had not found before, and reports those no
    /// check had: a tensor that stays changed is found again by every probe (every 256 steps) and every full check,
    /// which counted it (and logged it, and wrote a telemetry event) each time. Both lists reset when a full check
    /// passes; <see cref="Verified"/> stays false meanwhile, so the alert still fires.
    /// </summary>
    private void Report(List<string> bad, ref long counter, HashSet<string> counted)
    {
        _lastMismatch = bad[0];
        List<string>? fresh = null;
        int newlyCounted = 0;
        lock (_reportLock)
        {
            Interlocked.Increment(ref _reports);
            _verified = 0;
            foreach (var name in bad)
            {
                if (counted.Add(name)) newlyCounted++;
                if (_reported.Add(name)) (fresh ??= []).Add(name);
            }
        }
        Interlocked.Add(ref counter, newlyCounted);
        if (fresh is not null) MismatchFound?.Invoke(fresh);
    }

    // Under _reportLock, since the last clean full check: tensors reported, and those each kind of check counted.
    private readonly HashSet<string> _reported = new(StringComparer.Ordinal);
    private readonly HashSet<string> _countedByProbe = new(StringComparer.Ordinal);
    private readonly HashSet<string> _countedByCheck = new(StringComparer.Ordinal);

    /// <summary>Called by <see cref="Verify"/> after each tensor is hashed (tests interleave a probe there).</summary>
    internal Action<string>? AfterHash;

    private long _reports; // mismatch reports so far (checks and probes)
    private readonly Lock _reportLock = new();
}

/// <summary>
/// Re-runs <see cref="WeightIntegrity.Verify"/> every interval on a background thread of the lowest priority; stops on
/// dispose. A pass reads every weight byte (about 1 GB on a 2B model), and Linux gives a low-priority thread no less of a
/// shared core: the wait after a pass is at least <see cref="MaxShare"/>⁻¹ − 1 times the pass's own time, so checking
/// takes at most a tenth of one core whatever interval was asked (0.001 s ran 4,680 passes in 7 s on the bundled model
/// and slowed serving by 20 %).
/// </summary>
public sealed class WeightVerifier : IDisposable
{
    private readonly WeightIntegrity _integrity;
    private readonly TimeSpan _interval;
    private readonly CancellationTokenSource _stop = new();
    private readonly Thread _thread;

    public WeightVerifier(WeightIntegrity integrity, TimeSpan interval)
    {
        ArgumentNullException.ThrowIfNull(integrity);
        if (interval <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(interval), interval, "The verification interval must be positive (seconds).");
        // A timed wait takes at most int.MaxValue ms; a longer interval would kill the verifier thread (and the process) at its first wait.
        if (interval.TotalMilliseconds > int.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(interval), interval, $"The verification interval must be at most {int.MaxValue / 86_400_000.0:0.#} days.");
        _integrity = integrity;
        _interval = interval;
        _thread = new Thread(Run) { IsBackground = true, Priority = ThreadPriority.Lowest, Name = "bitnet-weight-verifier" };
        _thread.Start();
    }

    public TimeSpan Interval => _interval;

    /// <summary>The largest share of one core the checks may take: the wait after a pass is at least 9× its time.</summary>
    public const double MaxShare = 0.1;

    /// <summary>The wait before the next pass: the interval, or 9× the last pass's time when that is longer.</summary>
    public static TimeSpan NextWait(TimeSpan interval, TimeSpan lastPass)
    {
        var floor = lastPass * (1 / MaxShare - 1);
        var wait = floor > interval ? floor : interval;
        return wait.TotalMilliseconds > int.MaxValue ? TimeSpan.FromMilliseconds(int.MaxValue) : wait;
    }

    /// <summary>Full passes completed by this verifier.</summary>
    public long Passes => Interlocked.Read(ref _passes);

    private long _passes;

    private void Run()
    {
        var token = _stop.Token;
        var wait = _interval;
        while (!token.WaitHandle.WaitOne(wait))
        {
            try
            {
                long start = System.Diagnostics.Stopwatch.GetTimestamp();
                _integrity.Verify(token);
                Interlocked.Increment(ref _passes);
                wait = NextWait(_interval, System.Diagnostics.Stopwatch.GetElapsedTime(start));
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (Formats.ModelFileChangedException)
            {
                // Nothing left to verify until a restart (/health says why); the thread ended the process with it.
                wait = _interval;
            }
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _thread.Join();
        _stop.Dispose();
    }
}
