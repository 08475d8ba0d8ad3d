using System.Diagnostics;

namespace BitNetSharp.Diagnostics.Profiling;

/// <summary>
/// Waits for the JIT to go quiet before something is timed. The runtime recompiles a method optimized on a background
/// thread once it has been called ~30 times and 100 ms have passed without new code; on a two-core machine that thread
/// takes a core from the timed work while it compiles.
/// </summary>
public static class JitQuiet
{
    /// <summary>
    /// Sleeps (leaving the cores to the JIT's background thread) until no method has been compiled for
    /// <paramref name="quietSeconds"/>, or <paramref name="maxSeconds"/> have passed: the recompiles that the calls made
    /// just before set off then happen now, not in what is timed next. Returns whether it went quiet.
    /// </summary>
    public static bool Settle(double quietSeconds = 0.25, double maxSeconds = 3.0)
    {
        long start = Stopwatch.GetTimestamp(), lastChange = start;
        long methods = System.Runtime.JitInfo.GetCompiledMethodCount();
        while (true)
        {
            Thread.Sleep(25);
            long now = Stopwatch.GetTimestamp();
            long m = System.Runtime.JitInfo.GetCompiledMethodCount();
            if (m != methods) (methods, lastChange) = (m, now);
            if (Stopwatch.GetElapsedTime(lastChange, now).TotalSeconds >= quietSeconds) return true;
            if (Stopwatch.GetElapsedTime(start, now).TotalSeconds >= maxSeconds) return false;
        }
    }
}
