using System.Diagnostics;

namespace BitNetSharp.Diagnostics.Profiling;

/// <summary>
/// One row of a profile table: an operation kind (summed over layers, or one layer's), its time against the phase, and
/// what it achieved against this machine's limits. <see cref="Bound"/> names the limit the row is closer to: weight
/// bytes per second over the measured read bandwidth versus int8 MACs per second over the measured kernel ceiling.
/// </summary>
public sealed record ProfileRow(string Name, int Layer, long Calls, double Seconds, double Share, long Bytes, long Macs,
    double? GBps, double? BandwidthShare, double? Gmacs, double? MacShare)
{
    public double MicrosPerCall => Calls > 0 ? Seconds * 1e6 / Calls : 0;

    /// <remarks>"cache": the weights came in faster than the measured DRAM read bandwidth, so they were (partly) served
    /// from the caches — small models whose weights fit in L2/L3. The larger share names the bound once it reaches
    /// <see cref="BoundShare"/> of its limit; below that on both, "-": neither limit is near (per-call overheads,
    /// latency). One rule for every row: a row with both shares was labelled at any size ("compute" at 2 % of the MAC
    /// peak), one with a single share only from 50 % (an F16 head at 31 % of the bandwidth read "-").</remarks>
    public string Bound => (BandwidthShare ?? 0, MacShare ?? 0) switch
    {
        (> 1.05, _) => "cache",
        (var b, var m) when Math.Max(b, m) < BoundShare => "-",
        (var b, var m) => b >= m ? "memory" : "compute",
    };

    /// <summary>The share of a limit from which a row is said to be bound by it.</summary>
    public const double BoundShare = 0.25;

    /// <summary>Rows per operation kind over all layers, in the order a layer runs them, then "other" (the phase's time
    /// no operation accounts for: activation layout copies, pool hand-offs, the loop itself).</summary>
    public static List<ProfileRow> ByOp(PhaseProfile phase, double bandwidthGBps, double peakGmac)
    {
        var rows = new List<ProfileRow>();
        var s = phase.Stats;
        long attributed = 0;
        for (int op = 0; op < ProfileOps.Count; op++)
        {
            long ticks = 0, calls = 0, bytes = 0, macs = 0;
            for (int layer = -1; layer < s.Layers; layer++)
            {
                int i = OpStats.Index((ProfileOp)op, layer);
                ticks += s.Ticks[i];
                calls += s.Calls[i];
                bytes += s.Bytes[i];
                macs += s.Macs[i];
            }
            if (calls == 0) continue;
            attributed += ticks;
            rows.Add(Make(ProfileOps.Name((ProfileOp)op), -1, (ProfileOp)op, calls, ticks, bytes, macs, phase.WallSeconds, bandwidthGBps, peakGmac));
        }
        long wall = (long)(phase.WallSeconds * Stopwatch.Frequency);
        rows.Add(new ProfileRow("other", -1, 0, Math.Max(0, wall - attributed) / (double)Stopwatch.Frequency,
            Math.Max(0, wall - attributed) / (double)Stopwatch.Frequency / phase.WallSeconds, 0, 0, null, null, null, null));
        return rows;
    }

    /// <summary>One row per layer: all its operations together (the projections give bytes and MACs).</summary>
    public static List<ProfileRow> ByLayer(PhaseProfile phase, double bandwidthGBps, double peakGmac)
    {
        var rows = new List<ProfileRow>();
        var s = phase.Stats;
        for (int layer = 0; layer < s.Layers; layer++)
        {
            long ticks = 0, calls = 0, bytes = 0, macs = 0;
            for (int op = 0; op < ProfileOps.Count; op++)
            {
                int i = OpStats.Index((ProfileOp)op, layer);
                ticks += s.Ticks[i];
                calls += s.Calls[i];
                bytes += s.Bytes[i];
                macs += s.Macs[i];
            }
            rows.Add(Make($"layer {layer}", layer, ProfileOp.Q, calls, ticks, bytes, macs, phase.WallSeconds, bandwidthGBps, peakGmac));
        }
        return rows;
    }

    /// <summary>Every (layer, operation) cell with calls, for tooling.</summary>
    public static List<ProfileRow> Cells(PhaseProfile phase, double bandwidthGBps, double peakGmac)
    {
        var rows = new List<ProfileRow>();
        var s = phase.Stats;
        for (int layer = -1; layer < s.Layers; layer++)
            for (int op = 0; op < ProfileOps.Count; op++)
            {
                int i = OpStats.Index((ProfileOp)op, layer);
                if (s.Calls[i] == 0) continue;
                rows.Add(Make(ProfileOps.Name((ProfileOp)op), layer, (ProfileOp)op, s.Calls[i], s.Ticks[i], s.Bytes[i], s.Macs[i], phase.WallSeconds, bandwidthGBps, peakGmac));
            }
        return rows;
    }

    private static ProfileRow Make(string name, int layer, ProfileOp op, long calls, long ticks, long bytes, long macs, double phaseSeconds,
        double bandwidthGBps, double peakGmac)
    {
        double seconds = (double)ticks / Stopwatch.Frequency;
        double? gbps = bytes > 0 && seconds > 0 ? bytes / seconds / 1e9 : null;
        // The head's products are float (F16/Q8_0/…), not int8 × ternary: the int8 ceiling says nothing about them.
        bool intMacs = op != ProfileOp.Head && macs > 0 && seconds > 0;
        double? gmacs = macs > 0 && seconds > 0 ? macs / seconds / 1e9 : null;
        return new ProfileRow(name, layer, calls, seconds, phaseSeconds > 0 ? seconds / phaseSeconds : 0, bytes, macs, gbps,
            gbps / bandwidthGBps, gmacs, intMacs ? gmacs / peakGmac : null);
    }
}
