using System.Globalization;
using System.Text;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Monitoring;

namespace BitNetSharp.Model;

/// <summary>
/// The activation precision of every BitLinear input — per layer, for q/k/v, o, gate/up and down — as a bit width
/// b ∈ {8, 6, 5, 4, 3, 2}: each token is scaled by its absmax to [−(2^(b−1)−1), 2^(b−1)−1] and rounded, so the
/// same int8 kernels run at any b, and b = 8 is today's quantizer exactly (BitNet a4.8 uses 4 bits into attention
/// and FFN inputs, 8 elsewhere). Stored in GGUF metadata under <see cref="GgufKey"/> (uint8 per layer and input,
/// layer-major), honoured at load, overridden by <c>--activation-bits</c>.
/// </summary>
public sealed class ActivationBits : IEquatable<ActivationBits>
{
    public const string GgufKey = "bitnetsharp.activation_bits";
    public const int Inputs = HealthNames.InputCount;
    public static readonly int[] Allowed = [8, 6, 5, 4, 3, 2];

    private readonly byte[] _bits;

    private ActivationBits(int layers, byte[] bits)
    {
        Layers = layers;
        _bits = bits;
    }

    public int Layers { get; }

    public int this[int layer, BitLinearInput input] => _bits[layer * Inputs + (int)input];

    /// <summary>True when every input uses 8 bits (the engine as it was before bit widths existed).</summary>
    public bool AllEight => Array.TrueForAll(_bits, b => b == 8);

    /// <summary>The largest quantized magnitude for b bits: 2^(b−1) − 1 (127 for 8 bits, 7 for 4, 1 for 2).</summary>
    public static int MaxCode(int bits) => (1 << (bits - 1)) - 1;

    public static ActivationBits Uniform(int layers, int bits = 8)
    {
        CheckBits(bits, "bit width");
        var b = new byte[layers * Inputs];
        Array.Fill(b, (byte)bits);
        return new ActivationBits(layers, b);
    }

    /// <summary>A copy with one input of one layer changed.</summary>
    public ActivationBits With(int layer, BitLinearInput input, int bits)
    {
        CheckBits(bits, "bit width");
        if ((uint)layer >= (uint)Layers) throw new ArgumentOutOfRangeException(nameof(layer), layer, $"The model has layers 0 to {Layers - 1}.");
        var b = (byte[])_bits.Clone();
        b[layer * Inputs + (int)input] = (byte)bits;
        return new ActivationBits(Layers, b);
    }

    private static void CheckBits(int bits, string what)
    {
        if (Array.IndexOf(Allowed, bits) < 0) throw new ArgumentException($"{what} {bits} is not one of {string.Join(", ", Allowed)}.");
    }

    private static bool TryInput(string name, out BitLinearInput input)
    {
        int i = Array.IndexOf(HealthNames.InputLabels, name.Trim().ToLowerInvariant().Replace('-', '_'));
        input = (BitLinearInput)Math.Max(i, 0);
        return i >= 0;
    }

    /// <summary>
    /// Parses a bit-width spec for a model of <paramref name="layers"/> layers, on top of <paramref name="start"/> (default all 8):
    /// <c>4</c> (every input), <c>8,8,4,4</c> (one width per layer, all its inputs), or items
    /// <c>qkv=4,gate_up=4</c> (that input in every layer) and <c>2:down=6</c> / <c>2=6</c> (one layer's input / all of
    /// one layer's inputs), applied left to right. Inputs: qkv, o, gate_up, down. A bad item is an
    /// <see cref="ArgumentException"/> naming it.
    /// </summary>
    public static ActivationBits Parse(string spec, int layers, ActivationBits? start = null, string option = "--activation-bits")
    {
        if (string.IsNullOrWhiteSpace(spec)) throw new ArgumentException($"{option} is empty; give e.g. 4, 8,8,4,4 or qkv=4,gate_up=4.");
        var bits = (byte[])(start ?? Uniform(layers))._bits.Clone();
        var items = spec.Split(',', StringSplitOptions.TrimEntries);
        int Number(string text, string item)
        {
            if (!int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out int b) || Array.IndexOf(Allowed, b) < 0)
                throw new ArgumentException($"{option}: '{item}': the bit width must be one of {string.Join(", ", Allowed)}.");
            return b;
        }
        // An empty item (`qkv=4,`, `,4`, two commas) was blamed on mixing forms or on the count of widths.
        if (Array.IndexOf(items, "") >= 0)
            throw new ArgumentException($"{option} '{spec}' has an empty item (a comma at an end, or two in a row); give e.g. 4, 8,8,4,4 or qkv=4,gate_up=4.");
        // A layer without an input (`0:8`) read as a bad width, though 8 is one.
        if (Array.Find(items, i => !i.Contains('=') && i.Contains(':')) is { } layerOnly)
            throw new ArgumentException($"{option}: '{layerOnly}': a layer's item names an input and a width, as 0:qkv=8 (or 0=8 for all of its inputs).");
        if (Array.TrueForAll(items, i => !i.Contains('=')))
        {
            // An input without its width (`qkv`) was blamed on the width: "the bit width must be one of ...".
            if (Array.Find(items, i => TryInput(i, out _)) is { } bare)
                throw new ArgumentException($"{option}: '{bare}' names an input without a width; write e.g. {bare}=4.");
            if (items.Length == 1)
            {
                Array.Fill(bits, (byte)Number(items[0], items[0]));
                return new ActivationBits(layers, bits);
            }
            if (items.Length != layers)
                throw new ArgumentException($"{option} lists {items.Length} widths; the model has {layers} layers (give one per layer, or one for all).");
            for (int l = 0; l < layers; l++) bits.AsSpan(l * Inputs, Inputs).Fill((byte)Number(items[l], items[l]));
            return new ActivationBits(layers, bits);
        }
        // The same target twice (`qkv=4,qkv=6`) is a typo the later item silently won; a general item under a layer's
        // own (`down=4,2:down=8`) is layering and stays.
        var targets = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var item in items)
        {
            int eq = item.IndexOf('=');
            if (eq < 0 && TryInput(item, out _)) throw new ArgumentException($"{option}: '{item}' names an input without a width; write e.g. {item.Trim()}=4.");
            if (eq < 0) throw new ArgumentException($"{option}: '{item}' mixes a bare width with input=width items; write e.g. qkv=4,down=8.");
            string target = item[..eq].Trim();
            int b = Number(item[(eq + 1)..].Trim(), item);
            int colon = target.IndexOf(':');
            // White space around the colon as around = and , (`1 : qkv=4` read "'1 ' is not a layer").
            string layerText = colon >= 0 ? target[..colon].Trim() : target;
            string inputText = colon >= 0 ? target[(colon + 1)..].Trim() : target;
            string key = (colon >= 0 ? layerText.TrimStart('0') + ":" : "") + inputText.ToLowerInvariant().Replace('-', '_');
            if (colon < 0 && int.TryParse(target, NumberStyles.None, CultureInfo.InvariantCulture, out int whole)) key = whole.ToString(CultureInfo.InvariantCulture) + "=";
            if (!targets.TryAdd(key, item))
                throw new ArgumentException($"{option}: '{item}' sets what '{targets[key]}' already set; give each input once.");
            if (colon < 0 && int.TryParse(target, NumberStyles.None, CultureInfo.InvariantCulture, out int onlyLayer))
            {
                if (onlyLayer >= layers) throw new ArgumentException($"{option}: '{item}': the model has layers 0 to {layers - 1}.");
                bits.AsSpan(onlyLayer * Inputs, Inputs).Fill((byte)b);
                continue;
            }
            // A negative layer (`-1=4`) was named "not one of qkv, o, gate_up, down".
            if (colon < 0 && target.StartsWith('-') && int.TryParse(target, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out _))
                throw new ArgumentException($"{option}: '{item}': '{target}' is not a layer of this model (0 to {layers - 1}).");
            if (!TryInput(inputText, out var input))
                throw new ArgumentException($"{option}: '{item}': '{inputText}' is not one of {string.Join(", ", HealthNames.InputLabels)}.");
            if (colon < 0)
            {
                for (int l = 0; l < layers; l++) bits[l * Inputs + (int)input] = (byte)b;
                continue;
            }
            if (!int.TryParse(layerText, NumberStyles.None, CultureInfo.InvariantCulture, out int layer) || layer >= layers)
                throw new ArgumentException($"{option}: '{item}': '{layerText}' is not a layer of this model (0 to {layers - 1}).");
            bits[layer * Inputs + (int)input] = (byte)b;
        }
        return new ActivationBits(layers, bits);
    }

    /// <summary>The widths stored in a GGUF (null when the key is absent); a malformed value names the file and key.</summary>
    public static ActivationBits? FromGguf(GgufFile file, int layers)
    {
        if (!file.Metadata.TryGetValue(GgufKey, out var value)) return null;
        if (value.Value is not GgufArray array || array.Count != (long)layers * Inputs || !array.TryGetInt64s(out var values))
            throw new Formats.ModelFormatException(file.FilePath, $"must be an array of {(long)layers * Inputs} integer bit widths ({layers} layers × qkv, o, gate_up, down); recalibrate with `bitnet calibrate` (its --out writes the key) or convert from the uncalibrated model.", GgufKey);
        var bits = new byte[layers * Inputs];
        for (int i = 0; i < bits.Length; i++)
        {
            long b = values[i];
            if (b is < 2 or > 8 || Array.IndexOf(Allowed, (int)b) < 0)
                throw new Formats.ModelFormatException(file.FilePath, $"[{i}] is {b}; bit widths are {string.Join(", ", Allowed)}.", GgufKey);
            bits[i] = (byte)b;
        }
        return new ActivationBits(layers, bits);
    }

    /// <summary>The widths, layer-major (qkv, o, gate_up, down per layer), as <see cref="FromWidths"/> reads them back.</summary>
    public byte[] ToArray() => (byte[])_bits.Clone();

    /// <summary>Widths from <see cref="ToArray"/>'s layout; a wrong length or a width outside the set is an <see cref="ArgumentException"/>.</summary>
    public static ActivationBits FromWidths(int layers, ReadOnlySpan<byte> widths)
    {
        if (widths.Length != layers * Inputs)
            throw new ArgumentException($"{widths.Length} bit widths for {layers} layers; expected {layers * Inputs} ({layers} layers × qkv, o, gate_up, down).");
        foreach (byte b in widths) CheckBits(b, "bit width");
        return new ActivationBits(layers, widths.ToArray());
    }

    /// <summary>Adds the widths to a GGUF being written (uint8 array, layer-major).</summary>
    public void WriteTo(GgufWriter writer) => writer.AddArray(GgufKey, (byte[])_bits.Clone());

    /// <summary>The shortest spec <see cref="Parse"/> reads back: "8", "qkv=4,gate_up=4", or one item per differing input.</summary>
    public override string ToString()
    {
        if (Array.TrueForAll(_bits, b => b == _bits[0])) return _bits[0].ToString(CultureInfo.InvariantCulture);
        // Per input, the width most layers use; then the layers that differ from it.
        var sb = new StringBuilder();
        var common = new int[Inputs];
        for (int i = 0; i < Inputs; i++)
        {
            int best = 8, bestCount = -1;
            foreach (int b in Allowed)
            {
                int count = 0;
                for (int l = 0; l < Layers; l++) if (_bits[l * Inputs + i] == b) count++;
                if (count > bestCount) (best, bestCount) = (b, count);
            }
            common[i] = best;
            if (best != 8) sb.Append(sb.Length > 0 ? "," : "").Append(HealthNames.InputLabels[i]).Append('=').Append(best);
        }
        for (int l = 0; l < Layers; l++)
            for (int i = 0; i < Inputs; i++)
                if (_bits[l * Inputs + i] != common[i])
                    sb.Append(sb.Length > 0 ? "," : "").Append(l).Append(':').Append(HealthNames.InputLabels[i]).Append('=').Append(_bits[l * Inputs + i]);
        return sb.Length == 0 ? "8" : sb.ToString();
    }

    public bool Equals(ActivationBits? other) => other is not null && other.Layers == Layers && other._bits.AsSpan().SequenceEqual(_bits);

    public override bool Equals(object? obj) => Equals(obj as ActivationBits);

    public override int GetHashCode() => HashCode.Combine(Layers, _bits.Length > 0 ? _bits[0] : 0);
}
