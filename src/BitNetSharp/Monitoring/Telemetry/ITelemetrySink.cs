namespace BitNetSharp.Monitoring.Telemetry;

/// <summary>Where the engine sends telemetry records (the Arrow log writer). Calls come from the engine thread and must not block.</summary>
public interface ITelemetrySink
{
    void Write(in TelemetryStepRecord record);

    void Write(TelemetryLayerRecord record);

    void Write(in TelemetryEvent record);
}
