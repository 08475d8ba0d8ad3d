using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Formats.HuggingFace;
using BitNetSharp.Formats.Safetensors;

namespace BitNetSharp.Quantization;

/// <summary>
/// Turns a linear layer's weight tensor, in whatever form a file holds it, into the runtime layout the kernels
/// read — once, at load. I2_S with K % 128 = 0 is used in place (zero-copy, the file map stays the owner);
/// TQ1_0, TQ2_0, I2_S with other K, and HF packed uint8 are repacked; float latent weights (F32/F16/BF16) are
/// ternarized by absmean (FORMATS.md §4.4), except GGUF floats that are already ternary (taken exactly). Codec errors become <see cref="ModelFormatException"/>s naming the
/// file and the tensor.
/// </summary>
public static unsafe class ProjectionLoader
{
    /// <summary>A GGUF linear weight (ne0 = in-features, ne1 = out-features) as a ternary matrix.</summary>
    /// <param name="latentFloats">
    /// Whether float weights that are not already ternary may be ternarized by absmean (latent weights of a BitNet
    /// checkpoint). False for arch "llama", whose ternary files hold I2_S or exact ±a values: non-ternary floats there
    /// are an ordinary Llama, which ternarizing turns into noise.
    /// </param>
    public static TernaryMatrix LoadTernary(GgufFile file, GgufTensorInfo tensor, bool latentFloats = true)
    {
        var (rows, cols) = MatrixShape(file.FilePath, tensor.Name, tensor.Dims);
        try
        {
            var data = file.GetTensorData(tensor);
            var matrix = tensor.Type switch
            {
                GgmlType.I2_S => I2S.WrapOrDecode(file.GetTensorPointer(tensor), tensor.ByteSize, rows, cols, file),
                GgmlType.TQ2_0 => Tq2_0.Decode(data, rows, cols),
                GgmlType.TQ1_0 => Tq1_0.Decode(data, rows, cols),
                GgmlType.F32 => Floats(Cast<float>(data).ToArray()),
                GgmlType.F16 => Floats(Widen(Cast<ushort>(data), HalfConversions.HalfToFloat)),
                GgmlType.BF16 => Floats(Widen(Cast<ushort>(data), HalfConversions.BFloat16ToFloat)),
                _ => throw new ModelFormatException(file.FilePath,
                    $"type {GgmlTypeInfo.Name(tensor.Type)} cannot be read as ternary weights; expected i2_s, tq2_0, tq1_0, f32, f16 or bf16", tensor.Name),
            };
            // Decoded into a buffer of its own (all but I2_S wrapped in place): the file's bytes are never read again.
            // They stayed resident (with a private 2 MiB-page copy of the file, unreclaimable: a TQ2_0 model held the file
            // and its decoded weights), and --mlock locked them.
            byte* stored = file.GetTensorPointer(tensor);
            if (matrix.Data != stored) file.Mapping.ReleasePages(stored, tensor.ByteSize);
            return matrix;
        }
        catch (Exception e) when (e is ArgumentException or InvalidDataException)
        {
            throw new ModelFormatException(file.FilePath, e.Message, tensor.Name, e);
        }

        TernaryMatrix Floats(float[] w)
        {
            var (rows, cols) = MatrixShape(file.FilePath, tensor.Name, tensor.Dims);
            if (TryExactTernary(w, rows, cols) is { } exact) return exact;
            if (!latentFloats)
                throw new ModelFormatException(file.FilePath, $"holds full-precision {GgmlTypeInfo.Name(tensor.Type)} weights, not ternary ones (0 and ±a per row): "
                    + "this is an ordinary Llama, which BitNetSharp does not run (ternarizing it would give noise). Use a ternary model (BitNet b1.58, Llama3-8B-1.58, Falcon3-1.58bit)", tensor.Name);
            return AbsmeanTernarizer.FromFloat32(w, rows, cols);
        }
    }

    public static TernaryMatrix LoadTernary(GgufFile file, string name) => LoadTernary(file, file.GetTensor(name));

    /// <summary>A GGUF linear weight as a binary {−1,+1} matrix: B1_128 is copied; float weights are binarized by sign with an absmean scale.</summary>
    public static BinaryMatrix LoadBinary(GgufFile file, GgufTensorInfo tensor)
    {
        var (rows, cols) = MatrixShape(file.FilePath, tensor.Name, tensor.Dims);
        try
        {
            var data = file.GetTensorData(tensor);
            return tensor.Type switch
            {
                GgmlType.B1_128 => B1.Decode(data, rows, cols),
                GgmlType.F32 => SignBinarizer.FromFloat32(Cast<float>(data), rows, cols),
                GgmlType.F16 => SignBinarizer.FromFloat16(Cast<ushort>(data), rows, cols),
                GgmlType.BF16 => SignBinarizer.FromBFloat16(Cast<ushort>(data), rows, cols),
                _ => throw new ModelFormatException(file.FilePath,
                    $"type {GgmlTypeInfo.Name(tensor.Type)} cannot be read as binary weights; expected b1_128, f32, f16 or bf16", tensor.Name),
            };
        }
        catch (Exception e) when (e is ArgumentException or InvalidDataException)
        {
            throw new ModelFormatException(file.FilePath, e.Message, tensor.Name, e);
        }
    }

    /// <summary>
    /// An HF linear weight: packed uint8 [out/4, in] with its <c>.weight_scale</c> (multiplied for
    /// <c>autobitlinear</c>, divided otherwise, FORMATS.md §5.2), or float latent weights [out, in].
    /// </summary>
    /// <param name="weightName">e.g. <c>model.layers.0.self_attn.q_proj.weight</c>.</param>
    /// <param name="outFeatures">Needed for packed weights, whose stored shape is out/4.</param>
    public static TernaryMatrix LoadTernary(SafetensorsCheckpoint weights, string weightName, int outFeatures, HfQuantizationConfig? quantization)
    {
        var tensor = weights.GetTensor(weightName);
        string path = tensor.File.FilePath;
        var shape = tensor.Shape;
        if (shape.Length != 2)
            throw new ModelFormatException(path, $"a linear weight must be 2-D, found shape {tensor.ShapeText}", weightName);
        try
        {
            var data = weights.GetTensorData(tensor);
            switch (tensor.DType)
            {
                case SafetensorsDType.U8:
                {
                    int inFeatures = checked((int)shape[1]);
                    if (shape[0] * 4 != outFeatures)
                        throw new ModelFormatException(path, $"packed ternary weights have shape [out/4, in]; expected [{outFeatures / 4}, {inFeatures}] for {outFeatures} outputs, found {tensor.ShapeText}", weightName);
                    string scaleName = ScaleName(weightName);
                    if (!weights.TryGetTensor(scaleName, out var scaleTensor))
                        throw new ModelFormatException(path, $"packed ternary weights need their scale tensor '{scaleName}', which is missing", weightName);
                    if (scaleTensor.ElementCount != 1)
                        throw new ModelFormatException(scaleTensor.File.FilePath, $"expected one scale value, found shape {scaleTensor.ShapeText}", scaleName);
                    float scale = scaleTensor.File.ReadFloat32(scaleTensor)[0];
                    var rule = HfPackedTernary.RuleForLinearClass(quantization?.LinearClass);
                    return HfPackedTernary.Decode(data, outFeatures, inFeatures, scale, rule);
                }
                case SafetensorsDType.F32:
                case SafetensorsDType.F16:
                case SafetensorsDType.BF16:
                {
                    int rows = checked((int)shape[0]), cols = checked((int)shape[1]);
                    if (rows != outFeatures)
                        throw new ModelFormatException(path, $"expected {outFeatures} output rows, found shape {tensor.ShapeText}", weightName);
                    var floats = tensor.DType switch
                    {
                        SafetensorsDType.F32 => Cast<float>(data).ToArray(),
                        SafetensorsDType.F16 => Widen(Cast<ushort>(data), HalfConversions.HalfToFloat),
                        _ => Widen(Cast<ushort>(data), HalfConversions.BFloat16ToFloat),
                    };
                    // Unpacked codes with their weight_scale (transformers' AutoBitLinear skips unpacking a weight that
                    // already has the model's dtype, and its forward still applies weight_scale): the scale was never read,
                    // and every output was off by it.
                    if (weights.TryGetTensor(ScaleName(weightName), out var codeScale))
                        return FromCodes(floats, rows, cols, codeScale, quantization, weightName);
                    // Latent weights, quantized as transformers' forward does (AutoBitLinear online, 1bitLLM's BitLinear):
                    // absmean over the tensor, whatever the values. Weights that happened to be 0 and ±a per row were
                    // taken with scale a, where transformers computes a·(share of non-zeros): changing one weight in
                    // 65,536 by 0.2 % halved every scale. In offline mode AutoBitLinear multiplies the weights as they
                    // are (weight_scale 1): already-ternary ones are taken exactly.
                    if (string.Equals(quantization?.QuantizationMode, "offline", StringComparison.OrdinalIgnoreCase)
                        && TryExactTernary(floats, rows, cols) is { } offline) return offline;
                    return AbsmeanTernarizer.FromFloat32(floats, rows, cols);
                }
                default:
                    throw new ModelFormatException(path, $"dtype {tensor.DTypeName} cannot hold linear weights; expected U8 (packed ternary), F32, F16 or BF16", weightName);
            }
        }
        catch (Exception e) when (e is ArgumentException or InvalidDataException or OverflowException)
        {
            // Without .NET's " (Parameter 'weights')" and what follows it: the message is the user's.
            throw new ModelFormatException(path, e.Message.Split(" (Parameter '")[0], weightName, e);
        }
    }

    private static string ScaleName(string weightName) => weightName.EndsWith(".weight", StringComparison.Ordinal)
        ? weightName[..^".weight".Length] + ".weight_scale"
        : weightName + "_scale";

    /// <summary>Float weights that are the codes −1, 0, +1, with the weight_scale applied as the linear class says.</summary>
    private static TernaryMatrix FromCodes(float[] w, int rows, int cols, SafetensorsTensorInfo scaleTensor, HfQuantizationConfig? quantization, string weightName)
    {
        if (scaleTensor.ElementCount != 1)
            throw new ArgumentException($"expected one value in {scaleTensor.Name}, found shape {scaleTensor.ShapeText}");
        foreach (float v in w)
            if (v is not (-1f or 0f or 1f))
                throw new ArgumentException($"{weightName} has a weight_scale beside it, so its values must be the codes -1, 0, +1; found {v}");
        float scale = HfPackedTernary.RowScale(scaleTensor.File.ReadFloat32(scaleTensor)[0], HfPackedTernary.RuleForLinearClass(quantization?.LinearClass));
        var m = TernaryMatrix.Allocate(rows, cols, scale);
        for (int r = 0, k = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) m.Set(r, c, (int)w[k++]);
        return m;
    }

    /// <summary>
    /// The codes and per-row scales of GGUF float weights already ternary (0 and ±a_r in every row: a converter
    /// ternarized them, as llama.cpp's, bitnet.cpp's and ours write F16/F32 "ternary" tensors, which llama.cpp multiplies
    /// as they are), else null. Re-running absmean on them would keep the codes but shrink the scale to a·(share of
    /// non-zeros), and merge per-row scales into one, changing every output. Not for HF latent weights, which
    /// transformers quantizes by absmean in every forward.
    /// </summary>
    private static TernaryMatrix? TryExactTernary(float[] w, int rows, int cols)
    {
        var scales = new float[rows];
        float any = 0f;
        for (int r = 0; r < rows; r++)
        {
            float a = 0f;
            var row = w.AsSpan((int)((long)r * cols), cols);
            foreach (float v in row)
            {
                float m = MathF.Abs(v);
                if (m == 0f) continue;
                if (!float.IsFinite(m) || (a != 0f && m != a)) return null;
                a = m;
            }
            scales[r] = a;
            if (any == 0f) any = a;
        }
        // All zero: exactly ternary too (a pruned projection); its outputs are 0 whatever the scale.
        if (any == 0f) return TernaryMatrix.Allocate(rows, cols, 1f);
        var matrix = TernaryMatrix.Allocate(rows, cols, any);
        for (int r = 0; r < rows; r++)
        {
            // An all-zero row outputs 0 whatever its scale; it takes the first row's, so a per-tensor model stays one.
            matrix.RowScales[r] = scales[r] == 0f ? any : scales[r];
            for (int c = 0; c < cols; c++)
            {
                float v = w[(long)r * cols + c];
                if (v != 0f) matrix.Set(r, c, v > 0 ? 1 : -1);
            }
        }
        return matrix;
    }

    private static float[] Widen(ReadOnlySpan<ushort> bits, Func<ushort, float> convert)
    {
        var result = new float[bits.Length];
        for (int i = 0; i < bits.Length; i++) result[i] = convert(bits[i]);
        return result;
    }

    private static (int Rows, int Cols) MatrixShape(string path, string name, ReadOnlySpan<long> dims)
    {
        if (dims.Length != 2 || dims[0] <= 0 || dims[1] <= 0 || dims[0] > int.MaxValue || dims[1] > int.MaxValue)
            throw new ModelFormatException(path, $"a linear weight must be 2-D [in, out] with positive sizes, found [{string.Join(", ", dims.ToArray())}]", name);
        return ((int)dims[1], (int)dims[0]);
    }

    /// <summary>Little-endian reinterpretation (the file formats are little-endian; so is every CPU .NET runs on here).</summary>
    private static ReadOnlySpan<T> Cast<T>(ReadOnlySpan<byte> data) where T : unmanaged =>
        System.Runtime.InteropServices.MemoryMarshal.Cast<byte, T>(data);
}
