using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using BitNetSharp.Kernels.FloatOps;

namespace BitNetSharp.Kernels;

/// <summary>
/// Attention over int8 K/V rows in integers (<see cref="Int8Row"/>): the float side of each product is quantized to
/// int16 and the sums over dimensions (scores) or positions (the weighted sum of V) are exact int32 sums, which
/// <c>vpmaddwd</c> forms two products at a time where the float path needed one FMA per product and a conversion per
/// stored value.
/// <list type="bullet">
/// <item><b>Scores</b>: q is quantized once per call to q16 = round(q·Q/max|q|) with Q = 32767 (fewer for head
/// dimensions above 512, so no sum can overflow), then score = (float)(Σ_d q16_d·k_d) · rowScale · (qScale · scale).
/// The added error is at most qScale/2 · Σ_d |k_d| · rowScale · scale: about 1/65534 of max|q| per dimension, some 250
/// times below the int8 rounding of K itself (1/254 of max|k|).</item>
/// <item><b>Weighted sum of V</b>: per block of up to <see cref="Block"/> positions and per head, u_p = w_p · rowScale_p
/// is quantized to u16 = round(u·32767/max|u|) and out_d += (float)(Σ_p u16_p·v_{p,d}) · (max|u|/32767). Each weight
/// gains at most 1/65534 of the block's largest one.</item>
/// </list>
/// Every implementation (512-bit, 256-bit, scalar; one head or a GQA group of four) forms the same integers and then the
/// same float operations in the same order, so results are identical across widths, group sizes and thread counts.
/// A query or weight that is NaN or infinite takes the float kernels instead, so non-finite values propagate as before.
/// </summary>
internal static unsafe class Int8Attention
{
    /// <summary>Positions per integer block of the weighted sum: 256 · 32767 · 127 &lt; 2^31.</summary>
    public const int Block = 256;

    /// <summary>Largest head dimension served (the int16 query copies live on the stack).</summary>
    public const int MaxHeadDim = 4096;

    private const int WeightLevels = 32767;

    /// <summary>The int16 range a query is quantized to for <paramref name="n"/> dimensions: 128·Q·n must fit an int32 (any stored byte, −128 included).</summary>
    public static int QueryLevels(int n) => Math.Min(32767, int.MaxValue / (128 * Math.Max(n, 1)));

    /// <summary>
    /// q16 = round(q · Q / max|q|); returns the scale max|q| / Q (0 for an all-zero query), or NaN when q holds a
    /// non-finite value or is too small to scale in fp32 (the caller then takes the float kernels).
    /// </summary>
    public static float QuantizeQuery(float* q, int n, short* q16)
    {
        float max = MaxAbsProduct(q, null, n);
        if (!float.IsFinite(max)) return float.NaN;
        if (max == 0f)
        {
            new Span<short>(q16, n).Clear();
            return 0f;
        }
        int levels = QueryLevels(n);
        float inv = levels / max;
        if (!float.IsFinite(inv)) return float.NaN;
        RoundProducts(q, null, inv, n, q16);
        return max / levels;
    }

    /// <summary>
    /// u16[i] = round(w[i] · rowScales[i] · 32767 / max) over count ≤ <see cref="Block"/> weights; returns the scale
    /// max / 32767 (0 when every weight is zero: nothing to add), or NaN when a product is not finite.
    /// </summary>
    public static float QuantizeWeights(float* w, float* rowScales, int count, short* u16)
    {
        float max = MaxAbsProduct(w, rowScales, count);
        if (!float.IsFinite(max)) return float.NaN;
        if (max == 0f) return 0f;
        float inv = WeightLevels / max;
        if (!float.IsFinite(inv)) return float.NaN;
        RoundProducts(w, rowScales, inv, count, u16);
        return max / WeightLevels;
    }

    /// <summary>
    /// <see cref="QuantizeWeights"/> for the four heads of a group at once (weights + g·weightStride to u16 + g·uStride,
    /// scales to us[g]), with the same results bit for bit: each row scale is loaded once for the four heads, and each
    /// head's maximum is reduced across lanes by shuffles instead of sixteen scalar steps (a maximum does not depend on
    /// the order it is taken in). 512-bit vectors only.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void QuantizeWeights4(float* weights, int weightStride, float* rowScales, int count, short* u16, int uStride, float* us)
    {
        float* w0 = weights, w1 = weights + weightStride, w2 = weights + 2 * weightStride, w3 = weights + 3 * weightStride;
        var m0 = Vector512<float>.Zero; var m1 = m0; var m2 = m0; var m3 = m0;
        var bad = Vector512<float>.Zero;
        int i = 0;
        for (; i <= count - 16; i += 16)
        {
            var r = Vector512.Load(rowScales + i);
            var v0 = Vector512.Load(w0 + i) * r;
            var v1 = Vector512.Load(w1 + i) * r;
            var v2 = Vector512.Load(w2 + i) * r;
            var v3 = Vector512.Load(w3 + i) * r;
            m0 = Vector512.Max(m0, Vector512.Abs(v0));
            m1 = Vector512.Max(m1, Vector512.Abs(v1));
            m2 = Vector512.Max(m2, Vector512.Abs(v2));
            m3 = Vector512.Max(m3, Vector512.Abs(v3));
            bad |= ~(Vector512.Equals(v0, v0) & Vector512.Equals(v1, v1) & Vector512.Equals(v2, v2) & Vector512.Equals(v3, v3));
        }
        // NaN per head: a lane's NaN in any head marks all four here, so recheck per head only then (rare).
        bool anyNan = bad != Vector512<float>.Zero;
        float* max = stackalloc float[4] { MaxLane(m0), MaxLane(m1), MaxLane(m2), MaxLane(m3) };
        bool* nan = stackalloc bool[4];
        for (int g = 0; g < 4; g++)
        {
            float* w = weights + g * weightStride;
            bool isNan = false;
            if (anyNan)
                for (int j = 0; j < i; j += 16)
                {
                    var v = Vector512.Load(w + j) * Vector512.Load(rowScales + j);
                    isNan |= !Vector512.EqualsAll(v, v);
                }
            for (int j = i; j < count; j++)
            {
                float v = w[j] * rowScales[j];
                isNan |= float.IsNaN(v);
                max[g] = MathF.Max(max[g], MathF.Abs(v));
            }
            nan[g] = isNan;
        }
        for (int g = 0; g < 4; g++)
        {
            float m = max[g];
            if (nan[g] || !float.IsFinite(m)) { us[g] = float.NaN; continue; }
            if (m == 0f) { us[g] = 0f; continue; }
            float inv = WeightLevels / m;
            if (!float.IsFinite(inv)) { us[g] = float.NaN; continue; }
            RoundProducts(weights + g * weightStride, rowScales, inv, count, u16 + g * uStride);
            us[g] = m / WeightLevels;
        }
    }

    /// <summary>The largest of a vector's lanes (no NaN among them: the callers check separately).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float MaxLane(Vector512<float> m)
    {
        var h = Vector256.Max(m.GetLower(), m.GetUpper());
        var q = Vector128.Max(h.GetLower(), h.GetUpper());
        q = Vector128.Max(q, Vector128.Shuffle(q, Vector128.Create(2, 3, 0, 1)));
        q = Vector128.Max(q, Vector128.Shuffle(q, Vector128.Create(1, 0, 3, 2)));
        return q.ToScalar();
    }

    /// <summary>max_i |x[i] · y[i]| (y null: |x[i]|); NaN if any product is NaN.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float MaxAbsProduct(float* x, float* y, int n)
    {
        int i = 0;
        float max = 0f;
        bool nan = false;
        if (Vector512.IsHardwareAccelerated && n >= 16)
        {
            var m = Vector512<float>.Zero;
            var bad = Vector512<float>.Zero;
            for (; i <= n - 16; i += 16)
            {
                var v = Vector512.Load(x + i);
                if (y != null) v *= Vector512.Load(y + i);
                m = Vector512.Max(m, Vector512.Abs(v));
                bad |= ~Vector512.Equals(v, v);
            }
            nan = bad != Vector512<float>.Zero;
            for (int j = 0; j < 16; j++) max = MathF.Max(max, m.GetElement(j));
        }
        else if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            var m = Vector256<float>.Zero;
            var bad = Vector256<float>.Zero;
            for (; i <= n - 8; i += 8)
            {
                var v = Vector256.Load(x + i);
                if (y != null) v *= Vector256.Load(y + i);
                m = Vector256.Max(m, Vector256.Abs(v));
                bad |= ~Vector256.Equals(v, v);
            }
            nan = bad != Vector256<float>.Zero;
            for (int j = 0; j < 8; j++) max = MathF.Max(max, m.GetElement(j));
        }
        for (; i < n; i++)
        {
            float v = y != null ? x[i] * y[i] : x[i];
            nan |= float.IsNaN(v);
            max = MathF.Max(max, MathF.Abs(v));
        }
        return nan ? float.NaN : max;
    }

    /// <summary>out[i] = round_half_even(x[i] · y[i] · inv) (y null: x[i] · inv); |x·y·inv| ≤ 32767 by construction.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RoundProducts(float* x, float* y, float inv, int n, short* output)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated && Avx512F.IsSupported)
        {
            var f = Vector512.Create(inv);
            for (; i <= n - 16; i += 16)
            {
                var v = Vector512.Load(x + i);
                if (y != null) v *= Vector512.Load(y + i);
                // vcvtps2dq rounds to nearest even (the default MXCSR mode .NET keeps), as Round does, in one instruction;
                // |value| ≤ 32767, so neither needs the saturating conversion's fix-ups.
                Avx512F.ConvertToVector256Int16(Avx512F.ConvertToVector512Int32(v * f)).Store(output + i);
            }
        }
        else if (Vector256.IsHardwareAccelerated && Avx.IsSupported)
        {
            var f = Vector256.Create(inv);
            for (; i <= n - 16; i += 16)
            {
                var a = Vector256.Load(x + i);
                var b = Vector256.Load(x + i + 8);
                if (y != null)
                {
                    a *= Vector256.Load(y + i);
                    b *= Vector256.Load(y + i + 8);
                }
                // |value| ≤ 32767, so the narrowing keeps every value exactly.
                Vector256.Narrow(Avx.ConvertToVector256Int32(a * f), Avx.ConvertToVector256Int32(b * f)).Store(output + i);
            }
        }
        for (; i < n; i++)
        {
            float v = y != null ? x[i] * y[i] : x[i];
            output[i] = (short)(int)MathF.Round(v * inv);
        }
    }

    /// <summary>Whether the integer kernels serve rows of <paramref name="n"/> values.</summary>
    public static bool Serves(int n) => n > 0 && n <= MaxHeadDim;

    // ---------------------------------------------------------------- scores

    /// <summary>
    /// scores[p] = (float)(q16 · k_p) · rowScales[p] · factor for p in [0, positions), factor = qScale · scale. One query.
    /// </summary>
    [SkipLocalsInit]
    public static void Scores<TWidth>(byte* rows, float* rowScales, int stride, int n, short* q16, float* scores, int positions, float factor)
        where TWidth : struct, IVectorWidth
    {
        if (TWidth.Bits >= 512 && Avx512BW.IsSupported && n % 32 == 0)
        {
            var lanes = stackalloc Vector512<int>[16];
            float* tail = stackalloc float[16];
            var f = Vector512.Create(factor);
            for (int p0 = 0; p0 < positions; p0 += 16)
            {
                int m = Math.Min(16, positions - p0);
                for (int i = 0; i < m; i++)
                {
                    byte* row = rows + (long)(p0 + i) * stride;
                    AttentionKernels.Prefetch(row + AttentionKernels.PrefetchBytes, stride);
                    var a = Vector512<int>.Zero;
                    for (int d = 0; d < n; d += 32) a += Avx512BW.MultiplyAddAdjacent(Vector512.Load(q16 + d), Widen32(row, d));
                    lanes[i] = a;
                }
                for (int i = m; i < 16; i++) lanes[i] = default;
                var sums = Vector512.ConvertToSingle(LaneSums.Sums16(lanes));
                AttentionKernels.StoreScores(sums * AttentionKernels.LoadPartial(rowScales + p0, m, tail) * f, scores + p0, m);
            }
            return;
        }
        for (int p = 0; p < positions; p++)
        {
            byte* row = rows + (long)p * stride;
            scores[p] = (float)Dot<TWidth>(q16, (sbyte*)row, n) * rowScales[p] * factor;
        }
    }

    /// <summary>
    /// The scores of a GQA group of four queries (q16 + g·n, factors[g]) sharing one kv head's key rows, to
    /// scores + g·scoresStride: equal to four <see cref="Scores{TWidth}"/> calls, each key row widened once for the four.
    /// </summary>
    [SkipLocalsInit]
    public static void ScoresGroup4<TWidth>(byte* rows, float* rowScales, int stride, int n, short* q16, float* factors, float* scores, int scoresStride, int positions)
        where TWidth : struct, IVectorWidth
    {
        if (!(TWidth.Bits >= 512 && Avx512BW.IsSupported && n % 32 == 0))
        {
            for (int g = 0; g < 4; g++) Scores<TWidth>(rows, rowScales, stride, n, q16 + g * n, scores + g * scoresStride, positions, factors[g]);
            return;
        }
        var lanes = stackalloc Vector512<int>[64]; // [query][position in block]
        float* tail = stackalloc float[16];
        short* q1 = q16 + n, q2 = q16 + 2 * n, q3 = q16 + 3 * n;
        AttentionKernels.PrefetchStart(rows, stride, positions);
        for (int p0 = 0; p0 < positions; p0 += 16)
        {
            int m = Math.Min(16, positions - p0);
            int i = 0;
            for (; i + 2 <= m; i += 2)
            {
                byte* r0 = rows + (long)(p0 + i) * stride, r1 = r0 + stride;
                AttentionKernels.Prefetch(r0 + AttentionKernels.PrefetchBytes, 2 * stride);
                Vector512<int> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
                for (int d = 0; d < n; d += 32)
                {
                    var k0 = Widen32(r0, d);
                    var k1 = Widen32(r1, d);
                    var x = Vector512.Load(q16 + d);
                    a0 += Avx512BW.MultiplyAddAdjacent(x, k0);
                    b0 += Avx512BW.MultiplyAddAdjacent(x, k1);
                    x = Vector512.Load(q1 + d);
                    a1 += Avx512BW.MultiplyAddAdjacent(x, k0);
                    b1 += Avx512BW.MultiplyAddAdjacent(x, k1);
                    x = Vector512.Load(q2 + d);
                    a2 += Avx512BW.MultiplyAddAdjacent(x, k0);
                    b2 += Avx512BW.MultiplyAddAdjacent(x, k1);
                    x = Vector512.Load(q3 + d);
                    a3 += Avx512BW.MultiplyAddAdjacent(x, k0);
                    b3 += Avx512BW.MultiplyAddAdjacent(x, k1);
                }
                lanes[i] = a0; lanes[16 + i] = a1; lanes[32 + i] = a2; lanes[48 + i] = a3;
                lanes[i + 1] = b0; lanes[17 + i] = b1; lanes[33 + i] = b2; lanes[49 + i] = b3;
            }
            for (; i < m; i++)
            {
                byte* row = rows + (long)(p0 + i) * stride;
                Vector512<int> a0 = default, a1 = default, a2 = default, a3 = default;
                for (int d = 0; d < n; d += 32)
                {
                    var k = Widen32(row, d);
                    a0 += Avx512BW.MultiplyAddAdjacent(Vector512.Load(q16 + d), k);
                    a1 += Avx512BW.MultiplyAddAdjacent(Vector512.Load(q1 + d), k);
                    a2 += Avx512BW.MultiplyAddAdjacent(Vector512.Load(q2 + d), k);
                    a3 += Avx512BW.MultiplyAddAdjacent(Vector512.Load(q3 + d), k);
                }
                lanes[i] = a0; lanes[16 + i] = a1; lanes[32 + i] = a2; lanes[48 + i] = a3;
            }
            var rowScale = AttentionKernels.LoadPartial(rowScales + p0, m, tail);
            for (int g = 0; g < 4; g++)
            {
                for (int j = m; j < 16; j++) lanes[g * 16 + j] = default;
                var sums = Vector512.ConvertToSingle(LaneSums.Sums16(lanes + g * 16));
                AttentionKernels.StoreScores(sums * rowScale * Vector512.Create(factors[g]), scores + g * scoresStride + p0, m);
            }
        }
    }

    /// <summary>Σ_d q16_d · k_d, exact.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Dot<TWidth>(short* q16, sbyte* k, int n) where TWidth : struct, IVectorWidth
    {
        int d = 0, sum = 0;
        if (TWidth.Bits >= 256 && Avx2.IsSupported && n >= 16)
        {
            var a = Vector256<int>.Zero;
            for (; d <= n - 16; d += 16) a += Avx2.MultiplyAddAdjacent(Vector256.Load(q16 + d), Avx2.ConvertToVector256Int16(Vector128.Load(k + d)));
            sum = Vector256.Sum(a);
        }
        for (; d < n; d++) sum += q16[d] * k[d];
        return sum;
    }

    /// <summary>Stored values d..d+31 of a row, sign-extended to int16.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<short> Widen32(byte* row, int d) => Avx512BW.ConvertToVector512Int16(Vector256.Load((sbyte*)row + d));

    // ---------------------------------------------------------------- weighted sum of V

    /// <summary>
    /// output[d] += Σ_p weights[p] · rowScales[p] · v_{p,d} over [0, positions), in blocks of <see cref="Block"/>
    /// positions (see the class remarks). One head.
    /// </summary>
    [SkipLocalsInit]
    public static void Accumulate<TWidth>(byte* rows, float* rowScales, int stride, int n, float* weights, float* output, int positions)
        where TWidth : struct, IVectorWidth
    {
        short* u16 = stackalloc short[Block + 2];
        for (int p0 = 0; p0 < positions; p0 += Block)
        {
            int count = Math.Min(Block, positions - p0);
            byte* block = rows + (long)p0 * stride;
            float us = QuantizeWeights(weights + p0, rowScales + p0, count, u16);
            if (us == 0f) continue;
            if (float.IsNaN(us)) FloatBlock<TWidth>(block, stride, n, weights + p0, rowScales + p0, count, output);
            else
            {
                u16[count] = 0;
                AccumulateBlock1<TWidth>(block, stride, n, u16, count, us, output);
            }
        }
    }

    /// <summary>
    /// output + g·n += Σ_p weights[g·weightStride + p] · rowScales[p] · v_p for the four heads of a GQA group: equal to
    /// four <see cref="Accumulate{TWidth}"/> calls, each value row widened once for the four.
    /// </summary>
    [SkipLocalsInit]
    public static void AccumulateGroup4<TWidth>(byte* rows, float* rowScales, int stride, int n, float* weights, int weightStride, float* output, int positions)
        where TWidth : struct, IVectorWidth
    {
        bool wide = TWidth.Bits >= 512 && Avx512BW.IsSupported && n % 64 == 0;
        bool avx2 = !wide && TWidth.Bits >= 256 && Avx2.IsSupported && n % 16 == 0;
        if (!wide && !avx2)
        {
            for (int g = 0; g < 4; g++) Accumulate<TWidth>(rows, rowScales, stride, n, weights + g * weightStride, output + g * n, positions);
            return;
        }
        short* u16 = stackalloc short[4 * (Block + 2)];
        float* us = stackalloc float[4];
        bool stream = wide && AttentionKernels.StreamValues;
        if (stream) AttentionKernels.Prefetch(rows, (int)Math.Min((long)positions * stride, AttentionKernels.StreamAhead));
        else AttentionKernels.PrefetchStart(rows, stride, positions);
        for (int p0 = 0; p0 < positions; p0 += Block)
        {
            int count = Math.Min(Block, positions - p0);
            byte* block = rows + (long)p0 * stride;
            bool finite = true, any = false;
            AttentionKernels.Prefetch((byte*)(rowScales + p0 + Block), Block * sizeof(float)); // the next block's row scales
            if (wide) QuantizeWeights4(weights + p0, weightStride, rowScales + p0, count, u16, Block + 2, us);
            for (int g = 0; g < 4; g++)
            {
                short* u = u16 + g * (Block + 2);
                if (!wide) us[g] = QuantizeWeights(weights + g * weightStride + p0, rowScales + p0, count, u);
                finite &= !float.IsNaN(us[g]);
                any |= us[g] != 0f;
                if (us[g] == 0f) new Span<short>(u, count).Clear(); // a head with no weight here adds zeros
                u[count] = 0;
            }
            if (!any) continue;
            if (finite)
            {
                if (stream) AccumulateBlock4<StreamAheadOfBlock>(block, stride, n, u16, Block + 2, count, us, output);
                else if (wide) AccumulateBlock4<PrefetchInFirstPass>(block, stride, n, u16, Block + 2, count, us, output);
                else AccumulateBlock4Avx2(block, stride, n, u16, Block + 2, count, us, output);
                continue;
            }
            for (int g = 0; g < 4; g++) // a non-finite weight: one head at a time, that head in floats
            {
                if (us[g] == 0f) continue;
                if (float.IsNaN(us[g])) FloatBlock<TWidth>(block, stride, n, weights + g * weightStride + p0, rowScales + p0, count, output + g * n);
                else AccumulateBlock1<TWidth>(block, stride, n, u16 + g * (Block + 2), count, us[g], output + g * n);
            }
        }
    }

    /// <summary>The float weighted sum, for a block whose weights are not finite (their NaN or ∞ reaches the output as before).</summary>
    private static void FloatBlock<TWidth>(byte* rows, int stride, int n, float* weights, float* rowScales, int count, float* output)
        where TWidth : struct, IVectorWidth
    {
        for (int p = 0; p < count; p++) Int8Row.Axpy<TWidth>(weights[p] * rowScales[p], rows + (long)p * stride, output, n);
    }

    // Two positions share each vpmaddwd: the bytes of rows p and p+1 are interleaved (vpunpcklbw/vpunpckhbw) and
    // sign-extended, so int16 pair j of a register holds (v_p, v_p+1) of one dimension, and the weight pair
    // (u_p, u_p+1) is one int32 broadcast. On 256-bit rows the unpacks work within 128-bit lanes: the low unpack of a
    // 32-value block holds dimensions 0–7 and 16–23, the high one 8–15 and 24–31, which Store32 puts back in order.

    /// <summary>One head: output[d] += (float)(Σ_p u16[p] · v_p,d) · scale over one block; u16[count] must be 0.</summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void AccumulateBlock1<TWidth>(byte* rows, int stride, int n, short* u16, int count, float scale, float* output)
        where TWidth : struct, IVectorWidth
    {
        if (TWidth.Bits >= 512 && Avx512BW.IsSupported && n % 64 == 0)
        {
            var f = Vector512.Create(scale);
            for (int d = 0; d < n; d += 64)
            {
                Vector512<int> l0 = default, h0 = default, l1 = default, h1 = default;
                byte* row = rows + d;
                for (int p = 0; p < count; p += 2, row += 2 * stride)
                {
                    Vector512<short> x0, x1, x2, x3;
                    if (p + 2 <= count) Interleave(row, row + stride, out x0, out x1, out x2, out x3);
                    else InterleaveLast(row, out x0, out x1, out x2, out x3);
                    var u = Vector512.Create(*(int*)(u16 + p)).AsInt16();
                    l0 += Avx512BW.MultiplyAddAdjacent(x0, u); h0 += Avx512BW.MultiplyAddAdjacent(x1, u);
                    l1 += Avx512BW.MultiplyAddAdjacent(x2, u); h1 += Avx512BW.MultiplyAddAdjacent(x3, u);
                }
                Store32(l0, h0, f, output + d);
                Store32(l1, h1, f, output + d + 32);
            }
            return;
        }
        if (TWidth.Bits >= 256 && Avx2.IsSupported && n % 16 == 0)
        {
            var f = Vector256.Create(scale);
            for (int d = 0; d < n; d += 16)
            {
                Vector256<int> l = default, h = default;
                byte* row = rows + d;
                for (int p = 0; p < count; p += 2, row += 2 * stride)
                {
                    var a = Vector128.Load((sbyte*)row);
                    var b = p + 2 <= count ? Vector128.Load((sbyte*)(row + stride)) : Vector128<sbyte>.Zero;
                    var u = Vector256.Create(*(int*)(u16 + p)).AsInt16();
                    l += Avx2.MultiplyAddAdjacent(Avx2.ConvertToVector256Int16(Sse2.UnpackLow(a, b)), u);
                    h += Avx2.MultiplyAddAdjacent(Avx2.ConvertToVector256Int16(Sse2.UnpackHigh(a, b)), u);
                }
                (Vector256.Load(output + d) + Vector256.ConvertToSingle(l) * f).Store(output + d);
                (Vector256.Load(output + d + 8) + Vector256.ConvertToSingle(h) * f).Store(output + d + 8);
            }
            return;
        }
        int* acc = stackalloc int[n];
        new Span<int>(acc, n).Clear();
        for (int p = 0; p < count; p++)
        {
            int u = u16[p];
            sbyte* v = (sbyte*)(rows + (long)p * stride);
            for (int d = 0; d < n; d++) acc[d] += u * v[d];
        }
        for (int d = 0; d < n; d++) output[d] += acc[d] * scale;
    }

    /// <summary>How <see cref="AccumulateBlock4{TPrefetch}"/> hints the value rows ahead of it.</summary>
    internal interface IValuePrefetch { static abstract bool Steady { get; } }

    /// <summary>
    /// Two lines a row pair, in every dimension pass, of one stream running <see cref="AttentionKernels.StreamAhead"/> bytes ahead: a
    /// block of count rows takes n/64 passes of count/2 steps, each step 128 bytes on, so the stream covers count·n bytes
    /// (the block's own size) and the next call's first rows follow on without a gap. Memory then streams while the
    /// later passes compute from cache, where the first-pass hints left it idle; on the Zen 5 EPYC one kv head's
    /// weighted sum from memory took 4.4–4.8 ns a position against 4.9–5.2 (bench quick-attn-variants, 16–24 KiB best).
    /// </summary>
    internal readonly struct StreamAheadOfBlock : IValuePrefetch { public static bool Steady => true; }

    /// <summary>Both lines of each row pair <see cref="AttentionKernels.PrefetchBytes"/> ahead, in the first dimension pass only.</summary>
    internal readonly struct PrefetchInFirstPass : IValuePrefetch { public static bool Steady => false; }

    /// <summary>Four heads (weights at u16 + g·uStride, scales us[g]), each value row widened once for the four.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void AccumulateBlock4<TPrefetch>(byte* rows, int stride, int n, short* u16, int uStride, int count, float* us, float* output)
        where TPrefetch : struct, IValuePrefetch
    {
        short* ub = u16 + uStride, uc = u16 + 2 * uStride, ud = u16 + 3 * uStride;
        byte* stream = rows + AttentionKernels.StreamAhead;
        for (int d = 0; d < n; d += 64)
        {
            Vector512<int> al0 = default, ah0 = default, al1 = default, ah1 = default;
            Vector512<int> bl0 = default, bh0 = default, bl1 = default, bh1 = default;
            Vector512<int> cl0 = default, ch0 = default, cl1 = default, ch1 = default;
            Vector512<int> dl0 = default, dh0 = default, dl1 = default, dh1 = default;
            byte* row = rows + d;
            int p = 0;
            for (; p < count; p += 2, row += 2 * stride)
            {
                if (TPrefetch.Steady)
                {
                    AttentionKernels.PrefetchLine(stream);
                    AttentionKernels.PrefetchLine(stream + 64);
                    stream += 128;
                }
                else if (d == 0) AttentionKernels.Prefetch(row - d + AttentionKernels.PrefetchBytes, 2 * stride);
                Vector512<short> x0, x1, x2, x3;
                if (p + 2 <= count) Interleave(row, row + stride, out x0, out x1, out x2, out x3);
                else InterleaveLast(row, out x0, out x1, out x2, out x3);
                var u = Vector512.Create(*(int*)(u16 + p)).AsInt16();
                al0 += Avx512BW.MultiplyAddAdjacent(x0, u); ah0 += Avx512BW.MultiplyAddAdjacent(x1, u);
                al1 += Avx512BW.MultiplyAddAdjacent(x2, u); ah1 += Avx512BW.MultiplyAddAdjacent(x3, u);
                u = Vector512.Create(*(int*)(ub + p)).AsInt16();
                bl0 += Avx512BW.MultiplyAddAdjacent(x0, u); bh0 += Avx512BW.MultiplyAddAdjacent(x1, u);
                bl1 += Avx512BW.MultiplyAddAdjacent(x2, u); bh1 += Avx512BW.MultiplyAddAdjacent(x3, u);
                u = Vector512.Create(*(int*)(uc + p)).AsInt16();
                cl0 += Avx512BW.MultiplyAddAdjacent(x0, u); ch0 += Avx512BW.MultiplyAddAdjacent(x1, u);
                cl1 += Avx512BW.MultiplyAddAdjacent(x2, u); ch1 += Avx512BW.MultiplyAddAdjacent(x3, u);
                u = Vector512.Create(*(int*)(ud + p)).AsInt16();
                dl0 += Avx512BW.MultiplyAddAdjacent(x0, u); dh0 += Avx512BW.MultiplyAddAdjacent(x1, u);
                dl1 += Avx512BW.MultiplyAddAdjacent(x2, u); dh1 += Avx512BW.MultiplyAddAdjacent(x3, u);
            }
            Store32(al0, ah0, Vector512.Create(us[0]), output + d); Store32(al1, ah1, Vector512.Create(us[0]), output + d + 32);
            Store32(bl0, bh0, Vector512.Create(us[1]), output + n + d); Store32(bl1, bh1, Vector512.Create(us[1]), output + n + d + 32);
            Store32(cl0, ch0, Vector512.Create(us[2]), output + 2 * n + d); Store32(cl1, ch1, Vector512.Create(us[2]), output + 2 * n + d + 32);
            Store32(dl0, dh0, Vector512.Create(us[3]), output + 3 * n + d); Store32(dl1, dh1, Vector512.Create(us[3]), output + 3 * n + d + 32);
        }
    }

    /// <summary>
    /// <see cref="AccumulateBlock4"/> in 256-bit vectors (AVX2 without AVX-512): 16 dimensions of the four heads at a
    /// time in eight accumulators, each pair of value rows interleaved and sign-extended once for the four heads (four
    /// one-head calls did it four times). The same int32 sums and float operations as <see cref="AccumulateBlock1{TWidth}"/>'s
    /// 256-bit path per head.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void AccumulateBlock4Avx2(byte* rows, int stride, int n, short* u16, int uStride, int count, float* us, float* output)
    {
        short* ub = u16 + uStride, uc = u16 + 2 * uStride, ud = u16 + 3 * uStride;
        for (int d = 0; d < n; d += 16)
        {
            Vector256<int> al = default, ah = default, bl = default, bh = default, cl = default, ch = default, dl = default, dh = default;
            byte* row = rows + d;
            for (int p = 0; p < count; p += 2, row += 2 * stride)
            {
                if (d == 0) AttentionKernels.Prefetch(row + AttentionKernels.PrefetchBytes, 2 * stride);
                var a = Vector128.Load((sbyte*)row);
                var b = p + 2 <= count ? Vector128.Load((sbyte*)(row + stride)) : Vector128<sbyte>.Zero;
                var lo = Avx2.ConvertToVector256Int16(Sse2.UnpackLow(a, b));
                var hi = Avx2.ConvertToVector256Int16(Sse2.UnpackHigh(a, b));
                var u = Vector256.Create(*(int*)(u16 + p)).AsInt16();
                al += Avx2.MultiplyAddAdjacent(lo, u); ah += Avx2.MultiplyAddAdjacent(hi, u);
                u = Vector256.Create(*(int*)(ub + p)).AsInt16();
                bl += Avx2.MultiplyAddAdjacent(lo, u); bh += Avx2.MultiplyAddAdjacent(hi, u);
                u = Vector256.Create(*(int*)(uc + p)).AsInt16();
                cl += Avx2.MultiplyAddAdjacent(lo, u); ch += Avx2.MultiplyAddAdjacent(hi, u);
                u = Vector256.Create(*(int*)(ud + p)).AsInt16();
                dl += Avx2.MultiplyAddAdjacent(lo, u); dh += Avx2.MultiplyAddAdjacent(hi, u);
            }
            Store16(al, ah, us[0], output + d);
            Store16(bl, bh, us[1], output + n + d);
            Store16(cl, ch, us[2], output + 2 * n + d);
            Store16(dl, dh, us[3], output + 3 * n + d);
        }
    }

    /// <summary>output[0..16) += (float)sums · scale, lo = dimensions 0–7 and hi = 8–15 (the 256-bit path's order).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store16(Vector256<int> lo, Vector256<int> hi, float scale, float* output)
    {
        var f = Vector256.Create(scale);
        (Vector256.Load(output) + Vector256.ConvertToSingle(lo) * f).Store(output);
        (Vector256.Load(output + 8) + Vector256.ConvertToSingle(hi) * f).Store(output + 8);
    }

    /// <summary>64 values of rows r0 and r1 as (v0, v1) int16 pairs: dimensions 0–7,16–23 | 8–15,24–31 | 32–39,48–55 | 40–47,56–63.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Interleave(byte* r0, byte* r1, out Vector512<short> x0, out Vector512<short> x1, out Vector512<short> x2, out Vector512<short> x3)
    {
        var a = Vector256.Load((sbyte*)r0);
        var b = Vector256.Load((sbyte*)r1);
        x0 = Avx512BW.ConvertToVector512Int16(Avx2.UnpackLow(a, b));
        x1 = Avx512BW.ConvertToVector512Int16(Avx2.UnpackHigh(a, b));
        a = Vector256.Load((sbyte*)r0 + 32);
        b = Vector256.Load((sbyte*)r1 + 32);
        x2 = Avx512BW.ConvertToVector512Int16(Avx2.UnpackLow(a, b));
        x3 = Avx512BW.ConvertToVector512Int16(Avx2.UnpackHigh(a, b));
    }

    /// <summary><see cref="Interleave"/> with a zero second row (the odd last position of a block; reads only r0).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void InterleaveLast(byte* r0, out Vector512<short> x0, out Vector512<short> x1, out Vector512<short> x2, out Vector512<short> x3)
    {
        var a = Vector256.Load((sbyte*)r0);
        var z = Vector256<sbyte>.Zero;
        x0 = Avx512BW.ConvertToVector512Int16(Avx2.UnpackLow(a, z));
        x1 = Avx512BW.ConvertToVector512Int16(Avx2.UnpackHigh(a, z));
        a = Vector256.Load((sbyte*)r0 + 32);
        x2 = Avx512BW.ConvertToVector512Int16(Avx2.UnpackLow(a, z));
        x3 = Avx512BW.ConvertToVector512Int16(Avx2.UnpackHigh(a, z));
    }

    /// <summary>output[0..32) += (float)sums · scale, with lo = dimensions 0–7,16–23 and hi = 8–15,24–31.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store32(Vector512<int> lo, Vector512<int> hi, Vector512<float> scale, float* output)
    {
        var first = Avx512F.PermuteVar16x32x2(lo, Vector512.Create(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23), hi);
        var second = Avx512F.PermuteVar16x32x2(lo, Vector512.Create(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31), hi);
        (Vector512.Load(output) + Vector512.ConvertToSingle(first) * scale).Store(output);
        (Vector512.Load(output + 16) + Vector512.ConvertToSingle(second) * scale).Store(output + 16);
    }
}
