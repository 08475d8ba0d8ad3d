using System.Buffers.Binary;
using System.Runtime.Intrinsics;

namespace BitNetSharp.Quantization;

/// <summary>
/// ggml Q6_K (type 14): super-blocks of 256 weights, 210 bytes each — ql[128] (the low 4 bits of each 6-bit code),
/// qh[64] (the high 2 bits), scales[16] (int8, one per 16 weights), then d, the super-block scale, as little-endian
/// fp16. Weight e of a block, with h = e/128 (which half), k = (e%128)/32 (which quarter of it), l = e%32:
/// <code>
///   low  = ql[64h + 32(k &amp; 1) + l], low nibble for k &lt; 2, high nibble for k ≥ 2
///   high = (qh[32h + l] &gt;&gt; 2k) &amp; 3
///   q    = low | high &lt;&lt; 4                      (0..63)
///   w    = (d · scales[8h + 2k + l/16]) · (q − 32)
/// </code>
/// The float32 evaluation order (d times the scale first, then times q − 32) is that of ggml's
/// dequantize_row_q6_K and of gguf-py, so <see cref="DequantizeBlock"/> reproduces them bit for bit.
/// </summary>
public static unsafe class Q6K
{
    public const int BlockWeights = 256;
    public const int BlockBytes = 210;
    public const int QhOffset = 128;
    public const int ScalesOffset = 192;
    public const int DOffset = 208;

    /// <summary>Decodes one 210-byte block into 256 floats.</summary>
    public static void DequantizeBlock(byte* block, float* y)
    {
        float d = HalfConversions.HalfToFloat(BinaryPrimitives.ReadUInt16LittleEndian(new ReadOnlySpan<byte>(block + DOffset, 2)));
        sbyte* sc = (sbyte*)(block + ScalesOffset);
        for (int h = 0; h < 2; h++)
        {
            byte* ql = block + 64 * h;
            byte* qh = block + QhOffset + 32 * h;
            sbyte* s = sc + 8 * h;
            float* yh = y + 128 * h;
            for (int l = 0; l < 32; l++)
            {
                int g = l / 16;
                int a = ql[l], b = ql[l + 32], c = qh[l];
                yh[l] = d * s[g] * ((a & 0xF | (c & 3) << 4) - 32);
                yh[l + 32] = d * s[g + 2] * ((b & 0xF | (c >> 2 & 3) << 4) - 32);
                yh[l + 64] = d * s[g + 4] * ((a >> 4 | (c >> 4 & 3) << 4) - 32);
                yh[l + 96] = d * s[g + 6] * ((b >> 4 | (c >> 6) << 4) - 32);
            }
        }
    }

    /// <summary>
    /// Encodes <paramref name="values"/> (a multiple of 256) as Q6_K blocks into <paramref name="destination"/>.
    /// A simple rounding quantizer, not llama.cpp's make_qx_quants (which searches for the scale that minimizes the
    /// squared error and also uses the code −32, so it is somewhat more accurate); both write the same format, which
    /// every Q6_K reader decodes alike. Per 16-weight group the wanted step is s = max|x|/31. The super-block scale
    /// d is the smallest fp16 with 127·d ≥ max s, each group's int8 scale is ⌈s/d⌉ ≤ 127 (rounded up, so the
    /// step d·scale the file holds is at least s and no code needs clamping), and each code is round(x/(d·scale))
    /// ∈ [−31, 31]. Hence every decoded weight is within d·scale/2 ≤ (s + d)/2 of its input (plus float32
    /// rounding of the decode).
    /// </summary>
    /// <exception cref="ArgumentException">A length that is not a multiple of 256, a short destination, a NaN or
    /// infinite value, or a block whose d does not fit in fp16 (|x| above about 2.5·10⁸).</exception>
    public static void Encode(ReadOnlySpan<float> values, Span<byte> destination)
    {
        if (values.Length % BlockWeights != 0)
            throw new ArgumentException($"Q6_K encodes whole blocks of {BlockWeights} values; got {values.Length}.", nameof(values));
        int blocks = values.Length / BlockWeights;
        if (destination.Length < (long)blocks * BlockBytes)
            throw new ArgumentException($"{blocks} Q6_K blocks need {(long)blocks * BlockBytes} bytes; the destination has {destination.Length}.", nameof(destination));
        Span<float> steps = stackalloc float[16];
        Span<sbyte> scales = stackalloc sbyte[16];
        for (int b = 0; b < blocks; b++)
        {
            var x = values.Slice(b * BlockWeights, BlockWeights);
            var block = destination.Slice(b * BlockBytes, BlockBytes);
            float maxStep = 0f;
            for (int g = 0; g < 16; g++)
            {
                float max = 0f;
                for (int i = 0; i < 16; i++)
                {
                    float v = x[g * 16 + i];
                    if (!float.IsFinite(v)) throw new ArgumentException($"Value {b * BlockWeights + g * 16 + i} is {v}; Q6_K holds finite numbers only.", nameof(values));
                    max = MathF.Max(max, MathF.Abs(v));
                }
                steps[g] = max / 31f;
                maxStep = MathF.Max(maxStep, steps[g]);
            }
            // The fp16 nearest maxStep/127, moved up (at most a few ulps) until 127·d covers every group's step.
            ushort dBits = HalfConversions.FloatToHalf(maxStep / 127f);
            while (maxStep > 0f && (double)HalfConversions.HalfToFloat(dBits) * 127 < maxStep) dBits++;
            double d = HalfConversions.HalfToFloat(dBits);
            if (!double.IsFinite(d))
                throw new ArgumentException($"Block {b} needs a super-block scale of {maxStep / 127f}, beyond fp16.", nameof(values));
            for (int g = 0; g < 16; g++)
                scales[g] = d > 0 ? (sbyte)Math.Ceiling(steps[g] / d) : (sbyte)0;

            block.Slice(0, ScalesOffset).Clear();
            for (int e = 0; e < BlockWeights; e++)
            {
                int h = e / 128, k = e % 128 / 32, l = e % 32;
                double step = d * scales[8 * h + 2 * k + l / 16];
                int q = step > 0 ? (int)Math.Clamp(Math.Round(x[e] / step, MidpointRounding.AwayFromZero), -32, 31) + 32 : 32;
                block[64 * h + 32 * (k & 1) + l] |= (byte)(k < 2 ? q & 0xF : (q & 0xF) << 4);
                block[QhOffset + 32 * h + l] |= (byte)((q >> 4) << (2 * k));
            }
            for (int g = 0; g < 16; g++) block[ScalesOffset + g] = (byte)scales[g];
            BinaryPrimitives.WriteUInt16LittleEndian(block.Slice(DOffset, 2), dBits);
        }
    }

    /// <summary>
    /// ggml's reference Q6_K quantizer (quantize_row_q6_K_ref, what llama-quantize writes without an importance
    /// matrix), formula for formula in float32: per 16 weights, make_qx_quants(16, 32, x, rmse_type 1) — the scale of
    /// the largest |x| mapped to −32, then 18 nearby scales tried, keeping the one that maximizes (Σ w·x·l)² / Σ w·l²
    /// with weights w = x² — gives a group scale; d = fp16(max group scale / −128), each group's int8 scale is
    /// min(127, round(group scale / d)), and each code is clamp(round(x / (d·scale)), −32, 31) + 32 (a group whose scale
    /// rounds to 0 keeps make_qx_quants' codes, as ggml does). Rounding is ggml's nearest_int (to even). Unlike
    /// <see cref="Encode"/> it minimizes a weighted error instead of bounding each weight's.
    /// </summary>
    /// <exception cref="ArgumentException">A length that is not a multiple of 256, a short destination, or a NaN or infinite value.</exception>
    public static void EncodeReference(ReadOnlySpan<float> values, Span<byte> destination) =>
        EncodeReference(values, destination, Vector512.IsHardwareAccelerated);

    /// <summary><see cref="EncodeReference(ReadOnlySpan{float}, Span{byte})"/>, the sixteen groups' scale searches together on
    /// 512-bit vectors or one group at a time (the same bytes; tests compare the two).</summary>
    internal static void EncodeReference(ReadOnlySpan<float> values, Span<byte> destination, bool vectorSearch)
    {
        if (values.Length % BlockWeights != 0)
            throw new ArgumentException($"Q6_K encodes whole blocks of {BlockWeights} values; got {values.Length}.", nameof(values));
        int blocks = values.Length / BlockWeights;
        if (destination.Length < (long)blocks * BlockBytes)
            throw new ArgumentException($"{blocks} Q6_K blocks need {(long)blocks * BlockBytes} bytes; the destination has {destination.Length}.", nameof(destination));
        Span<sbyte> codes = stackalloc sbyte[BlockWeights];
        Span<float> groupScales = stackalloc float[16];
        Span<float> columns = stackalloc float[BlockWeights];
        for (int b = 0; b < blocks; b++)
        {
            var x = values.Slice(b * BlockWeights, BlockWeights);
            foreach (float v in x)
                if (!float.IsFinite(v)) throw new ArgumentException($"Block {b} holds {v}; Q6_K holds finite numbers only.", nameof(values));
            var block = destination.Slice(b * BlockBytes, BlockBytes);
            if (vectorSearch) MakeQxQuants16(x, columns, codes, groupScales);
            else
                for (int g = 0; g < 16; g++) groupScales[g] = MakeQxQuants(x.Slice(16 * g, 16), codes.Slice(16 * g, 16));
            float maxScale = 0f, maxAbsScale = 0f;
            for (int g = 0; g < 16; g++)
            {
                float scale = groupScales[g];
                if (MathF.Abs(scale) > maxAbsScale)
                {
                    maxAbsScale = MathF.Abs(scale);
                    maxScale = scale;
                }
            }
            block.Clear();
            if (maxAbsScale < GroupMaxEps) continue; // all zero: d = 0, every byte 0
            float iscale = -128f / maxScale;
            ushort dBits = HalfConversions.FloatToHalf(1 / iscale);
            float d = HalfConversions.HalfToFloat(dBits);
            for (int g = 0; g < 16; g++)
            {
                sbyte sc = (sbyte)Math.Min(127, NearestInt(iscale * groupScales[g]));
                block[ScalesOffset + g] = (byte)sc;
                float step = d * sc;
                if (step == 0f) continue;
                for (int i = 16 * g; i < 16 * g + 16; i++)
                    codes[i] = (sbyte)(Math.Clamp(NearestInt(x[i] / step), -32, 31) + 32);
            }
            for (int h = 0; h < 2; h++)
                for (int l = 0; l < 32; l++)
                {
                    int e = 128 * h + l;
                    block[64 * h + l] = (byte)((codes[e] & 0xF) | (codes[e + 64] & 0xF) << 4);
                    block[64 * h + 32 + l] = (byte)((codes[e + 32] & 0xF) | (codes[e + 96] & 0xF) << 4);
                    block[QhOffset + 32 * h + l] = (byte)(codes[e] >> 4 | (codes[e + 32] >> 4) << 2 | (codes[e + 64] >> 4) << 4 | (codes[e + 96] >> 4) << 6);
                }
            BinaryPrimitives.WriteUInt16LittleEndian(block.Slice(DOffset, 2), dBits);
        }
    }

    private const float GroupMaxEps = 1e-15f;

    /// <summary>
    /// <see cref="MakeQxQuants"/> for the sixteen groups of a block at once, one group per vector lane: the block is
    /// transposed (lane g of column i = x[16g + i]) so each lane runs its group's float operations in the scalar order —
    /// same products, same sequential sums, same comparisons, no fused multiply-adds — and the results (codes and group
    /// scales) are the scalar ones bit for bit, ~16 times fewer instructions (the 2B4T head's re-encode, 328 M weights,
    /// is this loop).
    /// </summary>
    private static void MakeQxQuants16(ReadOnlySpan<float> x, Span<float> columns, Span<sbyte> codes, Span<float> scales)
    {
        const int NMax = 32;
        for (int g = 0; g < 16; g++)
            for (int i = 0; i < 16; i++) columns[16 * i + g] = x[16 * g + i];
        ref float c0 = ref columns[0];
        Vector512<float> max = Vector512<float>.Zero, amax = Vector512<float>.Zero;
        for (int i = 0; i < 16; i++)
        {
            var xi = Vector512.LoadUnsafe(ref c0, (nuint)(16 * i));
            var ax = Vector512.Abs(xi);
            var larger = Vector512.GreaterThan(ax, amax);
            amax = Vector512.ConditionalSelect(larger, ax, amax);
            max = Vector512.ConditionalSelect(larger, xi, max);
        }
        var low = Vector512.Create((float)-NMax);
        var high = Vector512.Create((float)(NMax - 1));
        var iscale = Vector512.Create((float)-NMax) / max;
        Sums(ref c0, iscale, low, high, out var sumlx, out var suml2);
        var scale = Vector512.ConditionalSelect(Vector512.Equals(suml2, Vector512<float>.Zero), Vector512<float>.Zero, sumlx / suml2);
        var best = scale * sumlx;
        var bestIscale = iscale;
        for (int step = -9; step <= 9; step++)
        {
            if (step == 0) continue;
            iscale = Vector512.Create(-(NMax + 0.1f * step)) / max;
            Sums(ref c0, iscale, low, high, out sumlx, out suml2);
            var better = Vector512.GreaterThan(suml2, Vector512<float>.Zero) & Vector512.GreaterThan(sumlx * sumlx, best * suml2);
            scale = Vector512.ConditionalSelect(better, sumlx / suml2, scale);
            best = Vector512.ConditionalSelect(better, scale * sumlx, best);
            bestIscale = Vector512.ConditionalSelect(better, iscale, bestIscale);
        }
        // Groups whose largest |x| is under GroupMaxEps: codes 0, scale 0 (their lanes above ran on nonsense).
        var zero = Vector512.LessThan(amax, Vector512.Create(GroupMaxEps));
        Vector512.ConditionalSelect(zero, Vector512<float>.Zero, scale).CopyTo(scales);
        Span<float> chosen = stackalloc float[16];
        Vector512.ConditionalSelect(zero, Vector512<float>.Zero, bestIscale).CopyTo(chosen);
        Span<int> isZero = stackalloc int[16];
        zero.AsInt32().CopyTo(isZero);
        for (int g = 0; g < 16; g++)
            for (int i = 16 * g; i < 16 * g + 16; i++)
                codes[i] = isZero[g] != 0 ? (sbyte)0 : (sbyte)(NMax + Math.Clamp(NearestInt(chosen[g] * x[i]), -NMax, NMax - 1));
    }

    /// <summary>Σ w·x·l and Σ w·l·l (w = x²) per lane, sequentially over the 16 columns, for codes l = clamp(round(iscale·x)).</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    private static void Sums(ref float c0, Vector512<float> iscale, Vector512<float> low, Vector512<float> high, out Vector512<float> sumlx, out Vector512<float> suml2)
    {
        sumlx = Vector512<float>.Zero;
        suml2 = Vector512<float>.Zero;
        for (int i = 0; i < 16; i++)
        {
            var xi = Vector512.LoadUnsafe(ref c0, (nuint)(16 * i));
            var l = Vector512.Min(Vector512.Max(Vector512.Round(iscale * xi), low), high);
            var w = xi * xi;
            sumlx += w * xi * l;
            suml2 += w * l * l;
        }
    }

    /// <summary>ggml's nearest_int: round to nearest, ties to even (its magic-number form, for |v| ≤ 2^22).</summary>
    private static int NearestInt(float v) => (int)MathF.Round(v);

    /// <summary>ggml's make_qx_quants(16, nmax 32, x, L, rmse_type 1, no importance weights): codes L ∈ [0, 63] and the group scale.</summary>
    private static float MakeQxQuants(ReadOnlySpan<float> x, Span<sbyte> codes)
    {
        const int NMax = 32;
        float max = 0f, amax = 0f;
        for (int i = 0; i < x.Length; i++)
        {
            float ax = MathF.Abs(x[i]);
            if (ax > amax)
            {
                amax = ax;
                max = x[i];
            }
        }
        if (amax < GroupMaxEps)
        {
            codes.Clear();
            return 0f;
        }
        float iscale = -NMax / max;
        float sumlx = 0f, suml2 = 0f;
        for (int i = 0; i < x.Length; i++)
        {
            int l = Math.Clamp(NearestInt(iscale * x[i]), -NMax, NMax - 1);
            codes[i] = (sbyte)(l + NMax);
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        float scale = suml2 != 0f ? sumlx / suml2 : 0f;
        float best = scale * sumlx;
        for (int step = -9; step <= 9; step++)
        {
            if (step == 0) continue;
            iscale = -(NMax + 0.1f * step) / max;
            sumlx = suml2 = 0f;
            for (int i = 0; i < x.Length; i++)
            {
                int l = Math.Clamp(NearestInt(iscale * x[i]), -NMax, NMax - 1);
                float w = x[i] * x[i];
                sumlx += w * x[i] * l;
                suml2 += w * l * l;
            }
            if (suml2 > 0f && sumlx * sumlx > best * suml2)
            {
                for (int i = 0; i < x.Length; i++) codes[i] = (sbyte)(NMax + Math.Clamp(NearestInt(iscale * x[i]), -NMax, NMax - 1));
                scale = sumlx / suml2;
                best = scale * sumlx;
            }
        }
        return scale;
    }
}
