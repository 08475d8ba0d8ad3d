using System.Text.Json;

namespace BitNetSharp.Cli;

/// <summary>JSON numbers for measured values, which may be infinite (a perplexity past e^709) or NaN: JSON has no such numbers, so they are written as null.</summary>
public static class JsonNumbers
{
    public static void WriteMeasured(this Utf8JsonWriter w, string name, double value)
    {
        if (double.IsFinite(value)) w.WriteNumber(name, value);
        else w.WriteNull(name);
    }
}
