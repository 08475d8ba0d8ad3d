namespace BitNetSharp.Monitoring.Telemetry;

/// <summary>The timestamps telemetry records carry: Unix time in nanoseconds (100 ns resolution).</summary>
public static class TelemetryClock
{
    public static long UnixNanos() => (DateTime.UtcNow.Ticks - DateTime.UnixEpoch.Ticks) * 100;
}
