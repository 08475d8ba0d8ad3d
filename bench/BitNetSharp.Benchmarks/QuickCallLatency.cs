using System.Diagnostics;
using BitNetSharp.Threading;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// `quick-call-latency [gap µs]`: a two-thread <see cref="WorkerPool"/>'s round trip for a call of two empty items after
/// the caller worked alone for gap µs (a decode step's serial stages between products), with the waits polling through
/// <see cref="SpinWait"/> (yielding) and with <c>pause</c> alone (tight, <see cref="WorkerPool.TightSpin"/>, inside a
/// <see cref="WorkerPool.BeginTight"/> stretch as a forward pass is), alternating.
/// </summary>
internal static class QuickCallLatency
{
    private sealed class Empty : IParallelWork
    {
        public void Execute(int start, int end, int worker) { }
    }

    public static void Run(double gapMicros)
    {
        using var pool = new WorkerPool(2);
        var work = new Empty();
        long gap = (long)(gapMicros * Stopwatch.Frequency / 1e6);
        for (int round = 0; round < 5; round++)
            foreach (bool tight in new[] { false, true })
            {
                WorkerPool.TightSpin = tight;
                pool.BeginTight(); // as inside a forward pass
                var samples = new double[4000];
                for (int i = 0; i < samples.Length; i++)
                {
                    long until = Stopwatch.GetTimestamp() + gap;
                    while (Stopwatch.GetTimestamp() < until) { }
                    long t0 = Stopwatch.GetTimestamp();
                    pool.Run(work, 2, 1);
                    samples[i] = Stopwatch.GetElapsedTime(t0).TotalNanoseconds;
                }
                pool.EndTight();
                Array.Sort(samples);
                Console.WriteLine($"round {round + 1} {(tight ? "tight   " : "yielding")}: call ns p50 {samples[2000]:F0} p90 {samples[3600]:F0} p99 {samples[3960]:F0}");
            }
        WorkerPool.TightSpin = false;
    }
}

/// <summary>`quick-spin-ab MODEL|2b4t [tokens] [rounds]`: decode tok/s on two threads with the pool's waits yielding and spinning tight, alternating blocks in one process.</summary>
internal static class QuickSpinAb
{
    public static void Run(string model, int tokens, int rounds)
    {
        using var weights = model == "2b4t"
            ? BitNetSharp.Model.ModelWeights.FromGguf(BitNetSharp.Formats.Gguf.GgufFile.Parse(BitNetSharp.Model.SyntheticModel.Build(BitNetSharp.Model.SyntheticShape.BitNet2B4T, 1, BitNetSharp.Formats.Gguf.GgmlType.F16).ToArray(), "2b4t.gguf"), ownsFile: true)
            : BitNetSharp.Model.ModelWeights.Load(model);
        using var pool = new WorkerPool(2);
        var off = new List<double>(); var on = new List<double>();
        for (int r = 0; r < rounds; r++)
            foreach (bool tight in new[] { false, true })
            {
                WorkerPool.TightSpin = tight;
                var s = BitNetSharp.Diagnostics.ThroughputBenchmark.Decode(weights, pool, tokens, 3, BitNetSharp.Model.KvCacheType.F16);
                (tight ? on : off).Add(s.TokensPerSecond.Max());
            }
        WorkerPool.TightSpin = false;
        var ratios = off.Select((o, i) => on[i] / o).OrderBy(x => x).ToArray();
        Console.WriteLine($"yielding {string.Join(" ", off.Select(v => v.ToString("F1")))}");
        Console.WriteLine($"tight    {string.Join(" ", on.Select(v => v.ToString("F1")))}");
        Console.WriteLine($"tight/yielding per round: median {ratios[ratios.Length / 2]:F3} (range {ratios[0]:F3}-{ratios[^1]:F3})");
    }
}
