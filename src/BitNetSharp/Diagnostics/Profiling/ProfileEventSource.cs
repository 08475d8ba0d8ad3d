using System.Diagnostics.Tracing;

namespace BitNetSharp.Diagnostics.Profiling;

/// <summary>
/// The forward pass's operation spans as EventSource Start/Stop pairs, so <c>dotnet-trace collect --providers
/// BitNetSharp-Profile</c> or PerfView record them next to the runtime's own events. While no listener is enabled the
/// forward pass checks <see cref="EventSource.IsEnabled()"/> once per step and emits nothing.
/// </summary>
[EventSource(Name = "BitNetSharp-Profile")]
public sealed class ProfileEventSource : EventSource
{
    public static readonly ProfileEventSource Log = new();

    private ProfileEventSource()
    {
    }

    /// <summary>An operation starts: its kind (<see cref="ProfileOps.Name"/>), layer (−1 outside the layers), tokens,
    /// and for a projection its shape in → out (0 otherwise).</summary>
    [Event(1, Level = EventLevel.Informational, Opcode = EventOpcode.Start, Task = Tasks.Op)]
    public void OpStart(string op, int layer, int tokens, int inFeatures, int outFeatures) => WriteEvent(1, op, layer, tokens, inFeatures, outFeatures);

    [Event(2, Level = EventLevel.Informational, Opcode = EventOpcode.Stop, Task = Tasks.Op)]
    public void OpStop(string op, int layer, long weightBytes) => WriteEvent(2, op, layer, weightBytes);

    public static class Tasks
    {
        public const EventTask Op = (EventTask)1;
    }
}
