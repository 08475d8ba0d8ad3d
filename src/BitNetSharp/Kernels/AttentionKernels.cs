using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using BitNetSharp.Kernels.FloatOps;
using BitNetSharp.Model;
using BitNetSharp.Quantization;

namespace BitNetSharp.Kernels;

/// <summary>
/// One element type's K/V row: how a row of headDim floats is stored, and the two attention reads that use it
/// in place (q·row and out += w·row) so scores and outputs never go through a float copy of the cache.
/// Static abstract members let <see cref="KvCache"/> be specialized per type by the JIT.
/// </summary>
internal unsafe interface IKvRow
{
    static abstract int ElementSize { get; }

    /// <summary>Whether rows carry an fp32 scale (the dot and axpy results are then in units of it).</summary>
    static abstract bool HasScale { get; }

    /// <summary>Stores <paramref name="x"/>; returns the row's scale (1 for unscaled types).</summary>
    static abstract float Encode(ReadOnlySpan<float> x, byte* row);

    static abstract void Decode(byte* row, float scale, Span<float> x);

    /// <summary>Σ q_i · stored_i (not yet multiplied by the row scale).</summary>
    static abstract float Dot<TWidth>(float* q, byte* row, int n) where TWidth : struct, IVectorWidth;

    /// <summary>out_i += w · stored_i (w already includes the row scale).</summary>
    static abstract void Axpy<TWidth>(float w, byte* row, float* output, int n) where TWidth : struct, IVectorWidth;

    /// <summary>
    /// Whether every stored value is finite (int8 and fp8 codes as written, F16 rows known finite). Then a zero weight is
    /// not skipped in the weighted sum of V (0 · v adds nothing), so the per-head loop and the group kernels, which keep
    /// their sums in registers, run the same fused multiply-adds; types that may hold ±∞ or NaN skip zero weights, so
    /// a masked-out corrupt row cannot turn the output into NaN.
    /// </summary>
    static virtual bool AlwaysFinite => false;

    /// <summary>Whether <see cref="Widen16"/> is implemented (every row type on a machine with 512-bit vectors).</summary>
    static virtual bool HasLanes => false;

    /// <summary>
    /// Stored values i..i+15 of <paramref name="row"/> as floats (not yet multiplied by the row scale), exactly the
    /// values <see cref="Decode"/> gives, for the 512-bit lane kernels of <see cref="AttentionKernels"/>: one load and
    /// two or three operations, no table.
    /// </summary>
    static virtual Vector512<float> Widen16(byte* row, int i) => throw new NotSupportedException();
}

/// <summary>How the 512-bit lane kernels turn sixteen stored values into floats, and the unit their other operand
/// (the query or the weight) must be in for the products to be the row type's own.</summary>
internal unsafe interface ILaneWidening
{
    static abstract Vector512<float> Widen16(byte* row, int i);

    /// <summary>Stored values i..i+7 as floats in 256 bits (the AVX2 lane kernels; F16 rows only).</summary>
    static virtual Vector256<float> Widen8(byte* row, int i) => throw new NotSupportedException();

    /// <summary>A weight of the weighted sum of V in this widening's unit.</summary>
    static abstract float Weight(float w);

    /// <summary>The magnitude a query value or a weight must stay below for <see cref="Weight"/> (and the query's scaling)
    /// to be exact; infinite for widenings that do not scale.</summary>
    static virtual float Limit => float.PositiveInfinity;
}

/// <summary>The row type's own values (<see cref="IKvRow.Widen16"/>); weights as they are.</summary>
internal readonly unsafe struct RowLanes<TRow> : ILaneWidening where TRow : IKvRow
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Widen16(byte* row, int i) => TRow.Widen16(row, i);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Widen8(byte* row, int i) =>
        typeof(TRow) == typeof(F16FiniteRow) ? FiniteHalfWidening.Widen(Avx2.ConvertToVector256Int32((short*)row + i))
        : typeof(TRow) == typeof(Fp8Row) ? Fp8Row.Widen8(row, i)
        : throw new NotSupportedException();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Weight(float w) => w;
}

/// <summary>
/// Finite F16 values times 2^−112, in three operations (sign-extend, shift, mask: <see cref="FiniteHalfWidening"/>
/// without its multiply), for the group kernels, whose other operand then carries the 2^112 instead: the query
/// (<see cref="TryScale"/>) or the weight (<see cref="Weight"/>). Both scalings are exact (a power of two, no
/// overflow — the callers check — and a scaled-down half is at worst an fp32 subnormal, which the FMA reads exactly),
/// so each product (2^112·a)·(2^−112·h) is the same real number a·h, the fused multiply-add rounds it the same way, and
/// scores and outputs equal <see cref="F16FiniteRow"/>'s bit for bit. One multiply of five operations per sixteen
/// values is gone.
/// </summary>
internal readonly unsafe struct ScaledHalfLanes : ILaneWidening
{
    /// <summary>2^112.</summary>
    public const float Up = 5.192296858534828e33f;

    /// <summary>Largest head dimension scaled (the scaled query copies live on the stack: 16 KiB for a group of four); larger heads keep the four-operation widening.</summary>
    public const int MaxHeadDim = 1024;

    /// <summary>The largest magnitude whose product with 2^112 is finite with room for the FMA: 2^16 exclusive.</summary>
    public const float Bound = 65536f;

    public static float Limit => Bound;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Widen16(byte* row, int i) =>
        (Vector512.ShiftLeft(Avx512BW.ConvertToVector512Int32(Vector256.Load((short*)row + i)), 13) & Vector512.Create(unchecked((int)0x8FFFE000))).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Widen8(byte* row, int i) =>
        (Vector256.ShiftLeft(Avx2.ConvertToVector256Int32((short*)row + i), 13) & Vector256.Create(unchecked((int)0x8FFFE000))).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Weight(float w) => w * Up;

    /// <summary>scaled[i] = x[i] · 2^112 when every |x[i]| is below <see cref="Bound"/> (NaN is not); false otherwise.</summary>
    public static bool TryScale(float* x, int count, float* scaled) => LaneScaling.TryScale(x, count, scaled, Up, Bound);

    /// <summary>Whether every weight of the <paramref name="heads"/> heads (weights + g·stride, positions each; a GQA group of four unless told) is below <see cref="Bound"/> in magnitude.</summary>
    public static bool CanScale(float* weights, int stride, int positions, int heads = 4) => LaneScaling.AllBelow(weights, stride, positions, heads, Bound);
}

/// <summary>
/// Fp8 (E4M3) codes times 2^−120, in two operations after the sign-extending load (shift, mask: <see cref="Fp8Row.Widen16"/>
/// without its multiply), for the group kernels, whose query or weight carries the 2^120 instead — as
/// <see cref="ScaledHalfLanes"/> for F16: both scalings exact (the smallest code, 2^−9, becomes 2^−129, an fp32
/// subnormal the FMA reads exactly), so every product and sum is <see cref="Fp8Row"/>'s, bit for bit.
/// </summary>
internal readonly unsafe struct ScaledFp8Lanes : ILaneWidening
{
    /// <summary>2^120.</summary>
    public const float Up = 1.329227995784916e36f;

    /// <summary>Magnitudes below 2^8 stay finite times 2^120.</summary>
    public const float Bound = 256f;

    public static float Limit => Bound;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Widen16(byte* row, int i) =>
        (Vector512.ShiftLeft(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)row + i)), 20) & Vector512.Create(unchecked((int)0x87F00000))).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Weight(float w) => w * Up;

    /// <summary>scaled[i] = x[i] · 2^120 when every |x[i]| is below <see cref="Bound"/> (NaN is not); false otherwise.</summary>
    public static bool TryScale(float* x, int count, float* scaled) => LaneScaling.TryScale(x, count, scaled, Up, Bound);
}

/// <summary>The checks and copies of the scaled lane widenings (<see cref="ScaledHalfLanes"/>, <see cref="ScaledFp8Lanes"/>).</summary>
internal static unsafe class LaneScaling
{
    /// <summary>scaled[i] = x[i] · <paramref name="up"/> when every |x[i]| is below <paramref name="limit"/> (NaN is not); false otherwise.</summary>
    public static bool TryScale(float* x, int count, float* scaled, float up, float limit)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var l = Vector512.Create(limit);
            var u = Vector512.Create(up);
            for (; i + 16 <= count; i += 16)
            {
                var v = Vector512.Load(x + i);
                if (!Vector512.LessThanAll(Vector512.Abs(v), l)) return false;
                (v * u).Store(scaled + i);
            }
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            var l = Vector256.Create(limit);
            var u = Vector256.Create(up);
            for (; i + 8 <= count; i += 8)
            {
                var v = Vector256.Load(x + i);
                if (!Vector256.LessThanAll(Vector256.Abs(v), l)) return false;
                (v * u).Store(scaled + i);
            }
        }
        for (; i < count; i++)
        {
            if (!(MathF.Abs(x[i]) < limit)) return false;
            scaled[i] = x[i] * up;
        }
        return true;
    }

    /// <summary>Whether every value of the <paramref name="heads"/> rows (values + g·stride, count each) is below <paramref name="limit"/> in magnitude (NaN is not).</summary>
    public static bool AllBelow(float* values, int stride, int count, int heads, float limit)
    {
        for (int g = 0; g < heads; g++)
        {
            float* w = values + (long)g * stride;
            int i = 0;
            if (Vector512.IsHardwareAccelerated)
            {
                for (; i + 16 <= count; i += 16)
                    if (!Vector512.LessThanAll(Vector512.Abs(Vector512.Load(w + i)), Vector512.Create(limit))) return false;
            }
            else if (Vector256.IsHardwareAccelerated)
            {
                for (; i + 8 <= count; i += 8)
                    if (!Vector256.LessThanAll(Vector256.Abs(Vector256.Load(w + i)), Vector256.Create(limit))) return false;
            }
            for (; i < count; i++)
                if (!(MathF.Abs(w[i]) < limit)) return false;
        }
        return true;
    }
}

/// <summary>
/// The attention loops over cached positions, for one kv head's contiguous rows (<paramref name="rows"/>, one every
/// <paramref name="stride"/> bytes, n values each; <see cref="KvCache"/> finds them and checks the bounds): the scores
/// q·K_p and the weighted sum of V_p, per row type.
/// </summary>
internal static unsafe class AttentionKernels
{
    /// <summary>
    /// scores[p] = scale · (q · row p) (times the row's scale for scaled types) for p in [0, positions). With 512-bit
    /// vectors (<see cref="HasLanePath{TRow}"/>), sixteen positions at a time: each key row's products
    /// folded into one vector, the sixteen summed together.
    /// </summary>
    [SkipLocalsInit] // the lane and tail buffers are written before every read
    public static void Scores<TRow, TWidth>(byte* rows, float* rowScales, int stride, int n, float* q, float* scores, int positions, float scale)
        where TRow : IKvRow where TWidth : struct, IVectorWidth
    {
        if (typeof(TRow) == typeof(Int8Row) && Int8Attention.Serves(n))
        {
            short* q16 = stackalloc short[n];
            float qScale = Int8Attention.QuantizeQuery(q, n, q16);
            if (!float.IsNaN(qScale))
            {
                Int8Attention.Scores<TWidth>(rows, rowScales, stride, n, q16, scores, positions, qScale * scale);
                return;
            }
        }
        if (TWidth.Bits >= 512 && HasLanePath<TRow>(n))
        {
            if (typeof(TRow) == typeof(F16FiniteRow) && n <= ScaledHalfLanes.MaxHeadDim)
            {
                float* scaled = stackalloc float[n];
                if (ScaledHalfLanes.TryScale(q, n, scaled))
                {
                    ScoresLanes<TRow, ScaledHalfLanes>(rows, rowScales, stride, n, scaled, scores, positions, scale);
                    return;
                }
            }
            ScoresLanes<TRow, RowLanes<TRow>>(rows, rowScales, stride, n, q, scores, positions, scale);
            return;
        }
        for (int p = 0; p < positions; p++)
        {
            float dot = TRow.Dot<TWidth>(q, rows + (long)p * stride, n);
            scores[p] = TRow.HasScale ? dot * rowScales[p] * scale : dot * scale;
        }
    }

    /// <summary>The 512-bit lane loop of <see cref="Scores{TRow, TWidth}"/>, key values widened by <typeparamref name="TLanes"/>
    /// (whose unit the query is already in).</summary>
    [SkipLocalsInit]
    private static void ScoresLanes<TRow, TLanes>(byte* rows, float* rowScales, int stride, int n, float* q, float* scores, int positions, float scale)
        where TRow : IKvRow where TLanes : ILaneWidening
    {
        var lanes = stackalloc Vector512<float>[16];
        float* tail = stackalloc float[16];
        var factor = Vector512.Create(scale);
        for (int p0 = 0; p0 < positions; p0 += 16)
        {
            int m = Math.Min(16, positions - p0);
            for (int i = 0; i < m; i++)
            {
                Prefetch(rows + (long)(p0 + i) * stride + PrefetchBytes, stride);
                lanes[i] = DotLanes<TLanes>(q, rows + (long)(p0 + i) * stride, n);
            }
            for (int i = m; i < 16; i++) lanes[i] = default;
            var sums = LaneSums.Sums16(lanes);
            if (TRow.HasScale) sums *= LoadPartial(rowScales + p0, m, tail);
            StoreScores(sums * factor, scores + p0, m);
        }
    }

    /// <summary>
    /// <see cref="Scores{TRow, TWidth}"/> for int8 keys in blocks (<see cref="Int8KeyBlocks"/>): scores[i] for position
    /// start + i of the head whose blocks start at <paramref name="blocks"/> (rowScales indexed from that head's
    /// position 0). The same bits as the row layout. A non-finite query takes the float kernel on the gathered rows.
    /// </summary>
    [SkipLocalsInit]
    public static void ScoresInt8Blocks<TWidth>(byte* blocks, float* rowScales, int n, float* q, float* scores, int start, int count, float scale)
        where TWidth : struct, IVectorWidth
    {
        short* q16 = stackalloc short[n];
        float qScale = Int8Attention.QuantizeQuery(q, n, q16);
        if (!float.IsNaN(qScale)) Int8KeyBlocks.Scores<TWidth>(blocks, rowScales, n, q16, scores, start, count, qScale * scale);
        else FloatScoresOfBlocks<TWidth>(blocks, rowScales, n, q, scores, start, count, scale);
    }

    /// <summary><see cref="ScoresGroup4{TRow}"/> for int8 keys in blocks (see <see cref="ScoresInt8Blocks{TWidth}"/>).</summary>
    [SkipLocalsInit]
    public static void ScoresGroup4Int8Blocks(byte* blocks, float* rowScales, int n, float* q, float* scores, int scoresStride, int start, int count, float scale)
    {
        short* q16 = stackalloc short[4 * n];
        float* factors = stackalloc float[4];
        bool finite = true;
        for (int g = 0; g < 4; g++)
        {
            float qScale = Int8Attention.QuantizeQuery(q + g * n, n, q16 + g * n);
            finite &= !float.IsNaN(qScale);
            factors[g] = qScale * scale;
        }
        if (finite)
        {
            Int8KeyBlocks.ScoresGroup4<WidestVector>(blocks, rowScales, n, q16, factors, scores, scoresStride, start, count);
            return;
        }
        for (int g = 0; g < 4; g++) ScoresInt8Blocks<WidestVector>(blocks, rowScales, n, q + g * n, scores + g * scoresStride, start, count, scale);
    }

    /// <summary>The float score kernel over block-stored int8 keys, one gathered row at a time (non-finite queries only).</summary>
    private static void FloatScoresOfBlocks<TWidth>(byte* blocks, float* rowScales, int n, float* q, float* scores, int start, int count, float scale)
        where TWidth : struct, IVectorWidth
    {
        byte[] row = new byte[n];
        fixed (byte* r = row)
            for (int i = 0; i < count; i++)
            {
                Int8KeyBlocks.Load(blocks, start + i, n, r);
                Scores<Int8Row, ScalarWidth>(r, rowScales + start + i, n, n, q, scores + i, 1, scale);
            }
    }

    /// <summary>output[d] += Σ_p weights[p] · row p (times the row's scale for scaled types); zero weights are skipped
    /// unless the type is <see cref="IKvRow.AlwaysFinite"/>.</summary>
    public static void Accumulate<TRow, TWidth>(byte* rows, float* rowScales, int stride, int n, float* weights, float* output, int positions)
        where TRow : IKvRow where TWidth : struct, IVectorWidth
    {
        if (typeof(TRow) == typeof(Int8Row) && Int8Attention.Serves(n))
        {
            Int8Attention.Accumulate<TWidth>(rows, rowScales, stride, n, weights, output, positions);
            return;
        }
        if (TWidth.Bits >= 512 && TRow.AlwaysFinite && HasLanePath<TRow>(n))
        {
            if (typeof(TRow) == typeof(F16FiniteRow) && ScaledHalfLanes.CanScale(weights, 0, positions, heads: 1))
                AccumulateLanes<TRow, ScaledHalfLanes>(rows, rowScales, stride, n, weights, output, positions);
            else
                AccumulateLanes<TRow, RowLanes<TRow>>(rows, rowScales, stride, n, weights, output, positions);
            return;
        }
        for (int p = 0; p < positions; p++)
        {
            float w = weights[p];
            if (w == 0f && !TRow.AlwaysFinite) continue;
            TRow.Axpy<TWidth>(TRow.HasScale ? w * rowScales[p] : w, rows + (long)p * stride, output, n);
        }
    }

    /// <summary>
    /// The register-resident weighted sum of one head for <see cref="IKvRow.AlwaysFinite"/> types: 128 (then 64, then 16)
    /// dimensions at a time in accumulators that stay in registers across every position, so each value row is read
    /// once per pass and nothing is stored until the end. The position-by-position axpy it replaces loaded and stored the
    /// output for every position, a store-to-load chain that cost ~5× as much (F16, head dim 64, 132 positions: 0.59 →
    /// 0.12 µs a head on the Zen 5 EPYC). Each output value takes the same FMAs in the same order as the axpy (weight ×
    /// row scale, then one FMA per position), so the results are the same bit for bit.
    /// </summary>
    private static void AccumulateLanes<TRow, TLanes>(byte* rows, float* rowScales, int stride, int n, float* weights, float* output, int positions)
        where TRow : IKvRow where TLanes : ILaneWidening
    {
        PrefetchStart(rows, stride, positions);
        int d = 0;
        for (; d + 128 <= n; d += 128)
        {
            float* o = output + d;
            Vector512<float> a0 = Vector512.Load(o), a1 = Vector512.Load(o + 16), a2 = Vector512.Load(o + 32), a3 = Vector512.Load(o + 48);
            Vector512<float> a4 = Vector512.Load(o + 64), a5 = Vector512.Load(o + 80), a6 = Vector512.Load(o + 96), a7 = Vector512.Load(o + 112);
            byte* row = rows;
            for (int p = 0; p < positions; p++, row += stride)
            {
                if (d == 0) Prefetch(row + PrefetchBytes, stride);
                var x = Vector512.Create(TLanes.Weight(TRow.HasScale ? weights[p] * rowScales[p] : weights[p]));
                a0 = Vector512.FusedMultiplyAdd(x, TLanes.Widen16(row, d), a0);
                a1 = Vector512.FusedMultiplyAdd(x, TLanes.Widen16(row, d + 16), a1);
                a2 = Vector512.FusedMultiplyAdd(x, TLanes.Widen16(row, d + 32), a2);
                a3 = Vector512.FusedMultiplyAdd(x, TLanes.Widen16(row, d + 48), a3);
                a4 = Vector512.FusedMultiplyAdd(x, TLanes.Widen16(row, d + 64), a4);
                a5 = Vector512.FusedMultiplyAdd(x, TLanes.Widen16(row, d + 80), a5);
                a6 = Vector512.FusedMultiplyAdd(x, TLanes.Widen16(row, d + 96), a6);
                a7 = Vector512.FusedMultiplyAdd(x, TLanes.Widen16(row, d + 112), a7);
            }
            a0.Store(o); a1.Store(o + 16); a2.Store(o + 32); a3.Store(o + 48);
            a4.Store(o + 64); a5.Store(o + 80); a6.Store(o + 96); a7.Store(o + 112);
        }
        for (; d + 64 <= n; d += 64)
        {
            float* o = output + d;
            Vector512<float> a0 = Vector512.Load(o), a1 = Vector512.Load(o + 16), a2 = Vector512.Load(o + 32), a3 = Vector512.Load(o + 48);
            byte* row = rows;
            for (int p = 0; p < positions; p++, row += stride)
            {
                if (d == 0) Prefetch(row + PrefetchBytes, stride);
                var x = Vector512.Create(TLanes.Weight(TRow.HasScale ? weights[p] * rowScales[p] : weights[p]));
                a0 = Vector512.FusedMultiplyAdd(x, TLanes.Widen16(row, d), a0);
                a1 = Vector512.FusedMultiplyAdd(x, TLanes.Widen16(row, d + 16), a1);
                a2 = Vector512.FusedMultiplyAdd(x, TLanes.Widen16(row, d + 32), a2);
                a3 = Vector512.FusedMultiplyAdd(x, TLanes.Widen16(row, d + 48), a3);
            }
            a0.Store(o); a1.Store(o + 16); a2.Store(o + 32); a3.Store(o + 48);
        }
        for (; d < n; d += 16)
        {
            var a = Vector512.Load(output + d);
            byte* row = rows;
            for (int p = 0; p < positions; p++, row += stride)
            {
                if (d == 0) Prefetch(row + PrefetchBytes, stride);
                a = Vector512.FusedMultiplyAdd(Vector512.Create(TLanes.Weight(TRow.HasScale ? weights[p] * rowScales[p] : weights[p])), TLanes.Widen16(row, d), a);
            }
            a.Store(output + d);
        }
    }

    /// <summary>Whether the 512-bit lane kernels serve <typeparamref name="TRow"/> rows of <paramref name="n"/> values here.</summary>
    public static bool HasLanePath<TRow>(int n) where TRow : IKvRow => TRow.HasLanes && Vector512.IsHardwareAccelerated && n % 16 == 0;

    /// <summary>
    /// The dot before its horizontal sum (512-bit vectors, n a multiple of 16): lane j holds Σ q_d · stored_d over
    /// d ≡ j (mod 16), one FMA per 16 dimensions in increasing order. The scores of 16 positions are then summed
    /// together (<see cref="LaneSums"/>), which costs ~3 operations a position instead of ~23.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> DotLanes<TLanes>(float* q, byte* row, int n) where TLanes : ILaneWidening
    {
        var a = Vector512<float>.Zero;
        for (int i = 0; i < n; i += 16) a = Vector512.FusedMultiplyAdd(Vector512.Load(q + i), TLanes.Widen16(row, i), a);
        return a;
    }

    /// <summary>
    /// The scores of a GQA group of four queries (q + g·n) sharing one kv head's key rows, to scores + g·scoresStride:
    /// as four <see cref="Scores{TRow, TWidth}"/> calls on the lane path, bit for bit (each query's accumulator takes
    /// the same FMAs in the same order), each key row loaded and widened once for the four.
    /// Requires <see cref="HasLanePath{TRow}"/>.
    /// </summary>
    [SkipLocalsInit] // the lane and tail buffers are written before every read
    public static void ScoresGroup4<TRow>(byte* rows, float* rowScales, int stride, int n, float* q, float* scores, int scoresStride, int positions, float scale)
        where TRow : IKvRow
    {
        if (typeof(TRow) == typeof(Int8Row) && Int8Attention.Serves(n))
        {
            short* q16 = stackalloc short[4 * n];
            float* factors = stackalloc float[4];
            bool finite = true;
            for (int g = 0; g < 4; g++)
            {
                float qScale = Int8Attention.QuantizeQuery(q + g * n, n, q16 + g * n);
                finite &= !float.IsNaN(qScale);
                factors[g] = qScale * scale;
            }
            if (finite)
            {
                Int8Attention.ScoresGroup4<WidestVector>(rows, rowScales, stride, n, q16, factors, scores, scoresStride, positions);
                return;
            }
            for (int g = 0; g < 4; g++) Scores<TRow, WidestVector>(rows, rowScales, stride, n, q + g * n, scores + g * scoresStride, positions, scale);
            return;
        }
        if (typeof(TRow) == typeof(F16FiniteRow) && n <= ScaledHalfLanes.MaxHeadDim)
        {
            float* scaled = stackalloc float[4 * n];
            if (ScaledHalfLanes.TryScale(q, 4 * n, scaled))
            {
                ScoresGroup4Lanes<TRow, ScaledHalfLanes>(rows, rowScales, stride, n, scaled, scores, scoresStride, positions, scale);
                return;
            }
        }
        if (typeof(TRow) == typeof(Fp8Row) && n <= ScaledHalfLanes.MaxHeadDim)
        {
            float* scaled = stackalloc float[4 * n];
            if (ScaledFp8Lanes.TryScale(q, 4 * n, scaled))
            {
                ScoresGroup4Lanes<TRow, ScaledFp8Lanes>(rows, rowScales, stride, n, scaled, scores, scoresStride, positions, scale);
                return;
            }
        }
        ScoresGroup4Lanes<TRow, RowLanes<TRow>>(rows, rowScales, stride, n, q, scores, scoresStride, positions, scale);
    }

    /// <summary>The lane loop of <see cref="ScoresGroup4{TRow}"/>, key values widened by <typeparamref name="TLanes"/>
    /// (whose unit the queries are already in).</summary>
    [SkipLocalsInit]
    private static void ScoresGroup4Lanes<TRow, TLanes>(byte* rows, float* rowScales, int stride, int n, float* q, float* scores, int scoresStride, int positions, float scale)
        where TRow : IKvRow where TLanes : ILaneWidening
    {
        var lanes = stackalloc Vector512<float>[64]; // [query][position in block]
        float* tail = stackalloc float[16];
        var factor = Vector512.Create(scale);
        float* q1 = q + n, q2 = q + 2 * n, q3 = q + 3 * n;
        PrefetchStart(rows, stride, positions);
        for (int p0 = 0; p0 < positions; p0 += 16)
        {
            int m = Math.Min(16, positions - p0);
            int i = 0;
            // Four key rows per pass: each query block is loaded once for the four and the loop's own work is shared
            // (16 accumulators, 4 widened rows and a query block: 21 of the 32 registers).
            for (; i + 4 <= m; i += 4)
            {
                byte* r0 = rows + (long)(p0 + i) * stride, r1 = r0 + stride, r2 = r1 + stride, r3 = r2 + stride;
                Prefetch(r0 + PrefetchBytes, 4 * stride);
                Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
                Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default, e0 = default, e1 = default, e2 = default, e3 = default;
                for (int d = 0; d < n; d += 16)
                {
                    var k0 = TLanes.Widen16(r0, d);
                    var k1 = TLanes.Widen16(r1, d);
                    var k2 = TLanes.Widen16(r2, d);
                    var k3 = TLanes.Widen16(r3, d);
                    var x = Vector512.Load(q + d);
                    a0 = Vector512.FusedMultiplyAdd(x, k0, a0);
                    b0 = Vector512.FusedMultiplyAdd(x, k1, b0);
                    c0 = Vector512.FusedMultiplyAdd(x, k2, c0);
                    e0 = Vector512.FusedMultiplyAdd(x, k3, e0);
                    x = Vector512.Load(q1 + d);
                    a1 = Vector512.FusedMultiplyAdd(x, k0, a1);
                    b1 = Vector512.FusedMultiplyAdd(x, k1, b1);
                    c1 = Vector512.FusedMultiplyAdd(x, k2, c1);
                    e1 = Vector512.FusedMultiplyAdd(x, k3, e1);
                    x = Vector512.Load(q2 + d);
                    a2 = Vector512.FusedMultiplyAdd(x, k0, a2);
                    b2 = Vector512.FusedMultiplyAdd(x, k1, b2);
                    c2 = Vector512.FusedMultiplyAdd(x, k2, c2);
                    e2 = Vector512.FusedMultiplyAdd(x, k3, e2);
                    x = Vector512.Load(q3 + d);
                    a3 = Vector512.FusedMultiplyAdd(x, k0, a3);
                    b3 = Vector512.FusedMultiplyAdd(x, k1, b3);
                    c3 = Vector512.FusedMultiplyAdd(x, k2, c3);
                    e3 = Vector512.FusedMultiplyAdd(x, k3, e3);
                }
                lanes[i] = a0; lanes[16 + i] = a1; lanes[32 + i] = a2; lanes[48 + i] = a3;
                lanes[i + 1] = b0; lanes[17 + i] = b1; lanes[33 + i] = b2; lanes[49 + i] = b3;
                lanes[i + 2] = c0; lanes[18 + i] = c1; lanes[34 + i] = c2; lanes[50 + i] = c3;
                lanes[i + 3] = e0; lanes[19 + i] = e1; lanes[35 + i] = e2; lanes[51 + i] = e3;
            }
            for (; i + 2 <= m; i += 2)
            {
                byte* r0 = rows + (long)(p0 + i) * stride, r1 = r0 + stride;
                Prefetch(r0 + PrefetchBytes, 2 * stride);
                Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
                for (int d = 0; d < n; d += 16)
                {
                    var k0 = TLanes.Widen16(r0, d);
                    var k1 = TLanes.Widen16(r1, d);
                    var x0 = Vector512.Load(q + d);
                    a0 = Vector512.FusedMultiplyAdd(x0, k0, a0);
                    b0 = Vector512.FusedMultiplyAdd(x0, k1, b0);
                    var x1 = Vector512.Load(q1 + d);
                    a1 = Vector512.FusedMultiplyAdd(x1, k0, a1);
                    b1 = Vector512.FusedMultiplyAdd(x1, k1, b1);
                    var x2 = Vector512.Load(q2 + d);
                    a2 = Vector512.FusedMultiplyAdd(x2, k0, a2);
                    b2 = Vector512.FusedMultiplyAdd(x2, k1, b2);
                    var x3 = Vector512.Load(q3 + d);
                    a3 = Vector512.FusedMultiplyAdd(x3, k0, a3);
                    b3 = Vector512.FusedMultiplyAdd(x3, k1, b3);
                }
                lanes[i] = a0; lanes[16 + i] = a1; lanes[32 + i] = a2; lanes[48 + i] = a3;
                lanes[i + 1] = b0; lanes[17 + i] = b1; lanes[33 + i] = b2; lanes[49 + i] = b3;
            }
            for (; i < m; i++)
            {
                byte* row = rows + (long)(p0 + i) * stride;
                Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
                for (int d = 0; d < n; d += 16)
                {
                    var k = TLanes.Widen16(row, d);
                    a0 = Vector512.FusedMultiplyAdd(Vector512.Load(q + d), k, a0);
                    a1 = Vector512.FusedMultiplyAdd(Vector512.Load(q1 + d), k, a1);
                    a2 = Vector512.FusedMultiplyAdd(Vector512.Load(q2 + d), k, a2);
                    a3 = Vector512.FusedMultiplyAdd(Vector512.Load(q3 + d), k, a3);
                }
                lanes[i] = a0; lanes[16 + i] = a1; lanes[32 + i] = a2; lanes[48 + i] = a3;
            }
            var rowScale = TRow.HasScale ? LoadPartial(rowScales + p0, m, tail) : default;
            for (int g = 0; g < 4; g++)
            {
                for (int j = m; j < 16; j++) lanes[g * 16 + j] = default;
                var sums = LaneSums.Sums16(lanes + g * 16);
                if (TRow.HasScale) sums *= rowScale;
                StoreScores(sums * factor, scores + g * scoresStride + p0, m);
            }
        }
    }

    /// <summary>
    /// output + g·n += Σ_p weights[g·weightStride + p] · row p (times the row's scale) for the four heads of a GQA group
    /// sharing one kv head's value rows: as four <see cref="Accumulate{TRow, TWidth}"/> calls bit for bit (the axpy is
    /// elementwise, one FMA per value in position order), each value row widened once. For
    /// <see cref="IKvRow.AlwaysFinite"/> types the sums stay in registers across positions, 64 dimensions of the four
    /// heads at a time (16 accumulators), so the loop loads each value row once and stores nothing until the end;
    /// other types go position by position, skipping each head's zero weights. Requires <see cref="HasLanePath{TRow}"/>.
    /// </summary>
    public static void AccumulateGroup4<TRow>(byte* rows, float* rowScales, int stride, int n, float* weights, int weightStride, float* output, int positions)
        where TRow : IKvRow
    {
        if (typeof(TRow) == typeof(Int8Row) && Int8Attention.Serves(n))
        {
            Int8Attention.AccumulateGroup4<WidestVector>(rows, rowScales, stride, n, weights, weightStride, output, positions);
            return;
        }
        if (TRow.AlwaysFinite)
        {
            if (typeof(TRow) == typeof(F16FiniteRow)) AccumulateGroup4Blocks<TRow, ScaledHalfLanes>(rows, rowScales, stride, n, weights, weightStride, output, positions);
            else if (typeof(TRow) == typeof(Fp8Row)) AccumulateGroup4Blocks<TRow, ScaledFp8Lanes>(rows, rowScales, stride, n, weights, weightStride, output, positions);
            else AccumulateGroup4Blocks<TRow, RowLanes<TRow>>(rows, rowScales, stride, n, weights, weightStride, output, positions);
            return;
        }
        float* o1 = output + n, o2 = output + 2 * n, o3 = output + 3 * n;
        float* w1 = weights + weightStride, w2 = weights + 2 * weightStride, w3 = weights + 3 * weightStride;
        PrefetchStart(rows, stride, positions);
        for (int p = 0; p < positions; p++)
        {
            float x0 = weights[p], x1 = w1[p], x2 = w2[p], x3 = w3[p];
            bool u0 = x0 != 0f, u1 = x1 != 0f, u2 = x2 != 0f, u3 = x3 != 0f;
            if (!(u0 | u1 | u2 | u3)) continue;
            if (TRow.HasScale)
            {
                float s = rowScales[p];
                x0 *= s; x1 *= s; x2 *= s; x3 *= s;
            }
            byte* row = rows + (long)p * stride;
            Prefetch(row + PrefetchBytes, stride);
            Vector512<float> v0 = Vector512.Create(x0), v1 = Vector512.Create(x1), v2 = Vector512.Create(x2), v3 = Vector512.Create(x3);
            for (int d = 0; d < n; d += 16)
            {
                var v = TRow.Widen16(row, d);
                if (u0) Vector512.FusedMultiplyAdd(v0, v, Vector512.Load(output + d)).Store(output + d);
                if (u1) Vector512.FusedMultiplyAdd(v1, v, Vector512.Load(o1 + d)).Store(o1 + d);
                if (u2) Vector512.FusedMultiplyAdd(v2, v, Vector512.Load(o2 + d)).Store(o2 + d);
                if (u3) Vector512.FusedMultiplyAdd(v3, v, Vector512.Load(o3 + d)).Store(o3 + d);
            }
        }
    }

    /// <summary>
    /// The register-resident weighted sum of <see cref="AccumulateGroup4{TRow}"/> for <see cref="IKvRow.AlwaysFinite"/>
    /// types, in blocks of 64 positions: the block's four rows of weights (times the row scales) are put in the lane
    /// unit once, into a buffer each pass over the dimensions broadcasts from, and the passes after the first read the
    /// block's rows from L1. <typeparamref name="TScaled"/> widens without a multiply where the block's weights allow
    /// it (below its <see cref="ILaneWidening.Limit"/>), <see cref="RowLanes{TRow}"/> otherwise; the products are the
    /// same reals either way, so the sums are the same bits, block by block.
    /// </summary>
    [SkipLocalsInit] // the block's weights are written before they are read
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void AccumulateGroup4Blocks<TRow, TScaled>(byte* rows, float* rowScales, int stride, int n, float* weights, int weightStride, float* output, int positions)
        where TRow : IKvRow where TScaled : ILaneWidening
    {
        const int Block = 64;
        float* w = stackalloc float[4 * Block];
        if (StreamValues && n % 64 == 0) Prefetch(rows, (int)Math.Min((long)positions * stride, StreamAhead));
        else PrefetchStart(rows, stride, positions);
        for (int p0 = 0; p0 < positions; p0 += Block)
        {
            int count = Math.Min(Block, positions - p0);
            byte* block = rows + (long)p0 * stride;
            if (BlockWeights<TRow, TScaled>(weights + p0, weightStride, TRow.HasScale ? rowScales + p0 : null, w, count))
                AccumulateGroup4Block<TScaled>(block, stride, n, w, output, count);
            else
            {
                BlockWeights<TRow, RowLanes<TRow>>(weights + p0, weightStride, TRow.HasScale ? rowScales + p0 : null, w, count);
                AccumulateGroup4Block<RowLanes<TRow>>(block, stride, n, w, output, count);
            }
        }
    }

    /// <summary>
    /// w[g·64 + j] = <typeparamref name="TLanes"/>'s weight of weights[g·stride + j] (times rowScales[j] for scaled
    /// types), j &lt; count, for the four heads; false (w partly written) when one is not below its limit.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool BlockWeights<TRow, TLanes>(float* weights, int weightStride, float* rowScales, float* w, int count)
        where TRow : IKvRow where TLanes : ILaneWidening
    {
        bool limited = TLanes.Limit != float.PositiveInfinity;
        var limit = Vector512.Create(TLanes.Limit);
        for (int g = 0; g < 4; g++)
        {
            float* source = weights + (long)g * weightStride, destination = w + g * 64;
            int j = 0;
            for (; j + 16 <= count; j += 16)
            {
                var x = Vector512.Load(source + j);
                if (TRow.HasScale) x *= Vector512.Load(rowScales + j);
                if (limited && !Vector512.LessThanAll(Vector512.Abs(x), limit)) return false;
                // Weight(x) is x times the widening's unit, so Weight(1) is that unit (1 for RowLanes: x as it is).
                (limited ? x * Vector512.Create(TLanes.Weight(1f)) : x).Store(destination + j);
            }
            for (; j < count; j++)
            {
                float x = TRow.HasScale ? source[j] * rowScales[j] : source[j];
                if (limited && !(MathF.Abs(x) < TLanes.Limit)) return false;
                destination[j] = TLanes.Weight(x);
            }
        }
        return true;
    }

    /// <summary>One block of <see cref="AccumulateGroup4Blocks{TRow, TScaled}"/>: output + g·n += Σ_p w[g·64 + p] · row p, widened by <typeparamref name="TLanes"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AccumulateGroup4Block<TLanes>(byte* rows, int stride, int n, float* w, float* output, int positions)
        where TLanes : ILaneWidening
    {
        float* o1 = output + n, o2 = output + 2 * n, o3 = output + 3 * n;
        // The steady value stream (see StreamValues): n/64 passes of one step a position, each step stride·64/n bytes.
        bool steady = StreamValues && n % 64 == 0;
        byte* stream = rows + StreamAhead;
        int step = steady ? stride / (n / 64) : 0;
        int d = 0;
        for (; d + 64 <= n; d += 64)
        {
            Vector512<float> a0 = Vector512.Load(output + d), a1 = Vector512.Load(output + d + 16), a2 = Vector512.Load(output + d + 32), a3 = Vector512.Load(output + d + 48);
            Vector512<float> b0 = Vector512.Load(o1 + d), b1 = Vector512.Load(o1 + d + 16), b2 = Vector512.Load(o1 + d + 32), b3 = Vector512.Load(o1 + d + 48);
            Vector512<float> c0 = Vector512.Load(o2 + d), c1 = Vector512.Load(o2 + d + 16), c2 = Vector512.Load(o2 + d + 32), c3 = Vector512.Load(o2 + d + 48);
            Vector512<float> e0 = Vector512.Load(o3 + d), e1 = Vector512.Load(o3 + d + 16), e2 = Vector512.Load(o3 + d + 32), e3 = Vector512.Load(o3 + d + 48);
            byte* row = rows;
            for (int p = 0; p < positions; p++, row += stride)
            {
                if (steady)
                {
                    Prefetch(stream, step);
                    stream += step;
                }
                else if (d == 0) Prefetch(row + PrefetchBytes, stride);
                var v0 = TLanes.Widen16(row, d);
                var v1 = TLanes.Widen16(row, d + 16);
                var v2 = TLanes.Widen16(row, d + 32);
                var v3 = TLanes.Widen16(row, d + 48);
                var x = Vector512.Create(w[p]);
                a0 = Vector512.FusedMultiplyAdd(x, v0, a0); a1 = Vector512.FusedMultiplyAdd(x, v1, a1); a2 = Vector512.FusedMultiplyAdd(x, v2, a2); a3 = Vector512.FusedMultiplyAdd(x, v3, a3);
                x = Vector512.Create(w[64 + p]);
                b0 = Vector512.FusedMultiplyAdd(x, v0, b0); b1 = Vector512.FusedMultiplyAdd(x, v1, b1); b2 = Vector512.FusedMultiplyAdd(x, v2, b2); b3 = Vector512.FusedMultiplyAdd(x, v3, b3);
                x = Vector512.Create(w[128 + p]);
                c0 = Vector512.FusedMultiplyAdd(x, v0, c0); c1 = Vector512.FusedMultiplyAdd(x, v1, c1); c2 = Vector512.FusedMultiplyAdd(x, v2, c2); c3 = Vector512.FusedMultiplyAdd(x, v3, c3);
                x = Vector512.Create(w[192 + p]);
                e0 = Vector512.FusedMultiplyAdd(x, v0, e0); e1 = Vector512.FusedMultiplyAdd(x, v1, e1); e2 = Vector512.FusedMultiplyAdd(x, v2, e2); e3 = Vector512.FusedMultiplyAdd(x, v3, e3);
            }
            a0.Store(output + d); a1.Store(output + d + 16); a2.Store(output + d + 32); a3.Store(output + d + 48);
            b0.Store(o1 + d); b1.Store(o1 + d + 16); b2.Store(o1 + d + 32); b3.Store(o1 + d + 48);
            c0.Store(o2 + d); c1.Store(o2 + d + 16); c2.Store(o2 + d + 32); c3.Store(o2 + d + 48);
            e0.Store(o3 + d); e1.Store(o3 + d + 16); e2.Store(o3 + d + 32); e3.Store(o3 + d + 48);
        }
        for (; d < n; d += 16)
        {
            Vector512<float> a = Vector512.Load(output + d), b = Vector512.Load(o1 + d), c = Vector512.Load(o2 + d), e = Vector512.Load(o3 + d);
            byte* row = rows;
            for (int p = 0; p < positions; p++, row += stride)
            {
                if (d == 0) Prefetch(row + PrefetchBytes, stride);
                var v = TLanes.Widen16(row, d);
                a = Vector512.FusedMultiplyAdd(Vector512.Create(w[p]), v, a);
                b = Vector512.FusedMultiplyAdd(Vector512.Create(w[64 + p]), v, b);
                c = Vector512.FusedMultiplyAdd(Vector512.Create(w[128 + p]), v, c);
                e = Vector512.FusedMultiplyAdd(Vector512.Create(w[192 + p]), v, e);
            }
            a.Store(output + d); b.Store(o1 + d); c.Store(o2 + d); e.Store(o3 + d);
        }
    }

    /// <summary>
    /// The scores of four queries sharing finite F16 key rows without 512-bit vectors: as <see cref="Scores{TRow, TWidth}"/>
    /// for <see cref="F16FiniteRow"/> at the widest width, bit for bit, each key row widened once for the four.
    /// </summary>
    public static void ScoresF16Group4(byte* rows, int stride, int n, float* q, float* scores, int scoresStride, int positions, float scale)
    {
        if (!Vector512.IsHardwareAccelerated && Avx2.IsSupported && n % 8 == 0)
        {
            if (n <= ScaledHalfLanes.MaxHeadDim)
            {
                float* scaled = stackalloc float[4 * n];
                if (ScaledHalfLanes.TryScale(q, 4 * n, scaled))
                {
                    ScoresF16Group4Lanes<ScaledHalfLanes>(rows, stride, n, scaled, scores, scoresStride, positions, scale);
                    return;
                }
            }
            ScoresF16Group4Lanes<RowLanes<F16FiniteRow>>(rows, stride, n, q, scores, scoresStride, positions, scale);
            return;
        }
        float* r = stackalloc float[4];
        for (int p = 0; p < positions; p++)
        {
            F16FiniteRow.Dot4(q, q + n, q + 2 * n, q + 3 * n, rows + (long)p * stride, n, r);
            scores[p] = r[0] * scale; scores[scoresStride + p] = r[1] * scale; scores[2 * scoresStride + p] = r[2] * scale; scores[3 * scoresStride + p] = r[3] * scale;
        }
    }

    /// <summary>
    /// <see cref="ScoresF16Group4"/> in 256-bit lanes, eight positions at a time: per position and query one vector of
    /// eight partial sums (the FMAs of <see cref="F16FiniteRow.Dot4"/>, in its order), two key rows per pass so each
    /// query vector is loaded once for both, and the eight positions' vectors summed together by
    /// <see cref="LaneSums.Sums8"/> (the tree of <see cref="LaneSums.Sum8"/>). Bit for bit the per-position scores.
    /// Requires AVX2 and <paramref name="n"/> % 8 == 0.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ScoresF16Group4Lanes<TLanes>(byte* rows, int stride, int n, float* q, float* scores, int scoresStride, int positions, float scale)
        where TLanes : ILaneWidening =>
        ScoresGroup4Lanes256<F16FiniteRow, TLanes>(rows, null, stride, n, q, scores, scoresStride, positions, scale);

    /// <summary>
    /// The scores of four queries sharing fp8 key rows without 512-bit vectors: as four <see cref="Scores{TRow, TWidth}"/>
    /// calls for <see cref="Fp8Row"/> at the widest width, bit for bit, in 256-bit lanes (<see cref="ScoresF16Group4"/>'s
    /// kernel, times each row's scale). Requires AVX2 and <paramref name="n"/> % 8 == 0.
    /// </summary>
    public static void ScoresFp8Group4(byte* rows, float* rowScales, int stride, int n, float* q, float* scores, int scoresStride, int positions, float scale) =>
        ScoresGroup4Lanes256<Fp8Row, RowLanes<Fp8Row>>(rows, rowScales, stride, n, q, scores, scoresStride, positions, scale);

    /// <summary>Whether <see cref="ScoresFp8Group4"/> and <see cref="AccumulateFp8Group4"/> serve rows of <paramref name="n"/> values here
    /// (AVX2 without 512-bit vectors, n a multiple of 16).</summary>
    public static bool HasFp8Group256(int n) => !Vector512.IsHardwareAccelerated && Avx2.IsSupported && n % 16 == 0;

    /// <summary>
    /// output + g·n += Σ_p weights[g·weightStride + p] · rowScales[p] · row p for four heads sharing fp8 value rows, sums
    /// in registers (<see cref="F16FiniteRow.Accumulate4Registers"/>'s loop): as four <see cref="Accumulate{TRow, TWidth}"/>
    /// calls bit for bit (each weight times its row's scale, then one FMA per value in position order). Requires
    /// <see cref="HasFp8Group256"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    [SkipLocalsInit]
    public static void AccumulateFp8Group4(byte* rows, float* rowScales, int stride, int n, float* weights, int weightStride, float* output, int positions)
    {
        const int Block = 64;
        PrefetchStart(rows, stride, positions);
        float* scaled = stackalloc float[4 * Block];
        for (int p0 = 0; p0 < positions; p0 += Block)
        {
            int count = Math.Min(Block, positions - p0);
            for (int g = 0; g < 4; g++)
                for (int j = 0; j < count; j++) scaled[g * Block + j] = weights[g * weightStride + p0 + j] * rowScales[p0 + j];
            F16FiniteRow.Accumulate4Block<RowLanes<Fp8Row>>(rows + (long)p0 * stride, stride, n, scaled, Block, output, count);
        }
    }

    /// <summary>The 256-bit lane loop of the group-of-four scores (<see cref="ScoresF16Group4"/>, <see cref="ScoresFp8Group4"/>),
    /// times the rows' scales for scaled types.</summary>
    [SkipLocalsInit] // the lane buffer is written before every read
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ScoresGroup4Lanes256<TRow, TLanes>(byte* rows, float* rowScales, int stride, int n, float* q, float* scores, int scoresStride, int positions, float scale)
        where TRow : IKvRow where TLanes : ILaneWidening
    {
        var lanes = stackalloc Vector256<float>[32]; // [query][position in block]
        float* tail = stackalloc float[8];
        var factor = Vector256.Create(scale);
        float* q1 = q + n, q2 = q + 2 * n, q3 = q + 3 * n;
        PrefetchStart(rows, stride, positions);
        for (int p0 = 0; p0 < positions; p0 += 8)
        {
            int m = Math.Min(8, positions - p0);
            int i = 0;
            for (; i + 2 <= m; i += 2)
            {
                byte* r0 = rows + (long)(p0 + i) * stride, r1 = r0 + stride;
                Prefetch(r0 + PrefetchBytes, 2 * stride);
                Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
                for (int d = 0; d < n; d += 8)
                {
                    var k0 = TLanes.Widen8(r0, d);
                    var k1 = TLanes.Widen8(r1, d);
                    var x = Vector256.Load(q + d);
                    a0 = Vector256.FusedMultiplyAdd(x, k0, a0);
                    b0 = Vector256.FusedMultiplyAdd(x, k1, b0);
                    x = Vector256.Load(q1 + d);
                    a1 = Vector256.FusedMultiplyAdd(x, k0, a1);
                    b1 = Vector256.FusedMultiplyAdd(x, k1, b1);
                    x = Vector256.Load(q2 + d);
                    a2 = Vector256.FusedMultiplyAdd(x, k0, a2);
                    b2 = Vector256.FusedMultiplyAdd(x, k1, b2);
                    x = Vector256.Load(q3 + d);
                    a3 = Vector256.FusedMultiplyAdd(x, k0, a3);
                    b3 = Vector256.FusedMultiplyAdd(x, k1, b3);
                }
                lanes[i] = a0; lanes[8 + i] = a1; lanes[16 + i] = a2; lanes[24 + i] = a3;
                lanes[i + 1] = b0; lanes[9 + i] = b1; lanes[17 + i] = b2; lanes[25 + i] = b3;
            }
            if (i < m)
            {
                byte* row = rows + (long)(p0 + i) * stride;
                Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
                for (int d = 0; d < n; d += 8)
                {
                    var k = TLanes.Widen8(row, d);
                    a0 = Vector256.FusedMultiplyAdd(Vector256.Load(q + d), k, a0);
                    a1 = Vector256.FusedMultiplyAdd(Vector256.Load(q1 + d), k, a1);
                    a2 = Vector256.FusedMultiplyAdd(Vector256.Load(q2 + d), k, a2);
                    a3 = Vector256.FusedMultiplyAdd(Vector256.Load(q3 + d), k, a3);
                }
                lanes[i] = a0; lanes[8 + i] = a1; lanes[16 + i] = a2; lanes[24 + i] = a3;
            }
            var rowScale = default(Vector256<float>);
            if (TRow.HasScale)
            {
                for (int j = 0; j < 8; j++) tail[j] = j < m ? rowScales[p0 + j] : 0f;
                rowScale = Vector256.Load(tail);
            }
            for (int g = 0; g < 4; g++)
            {
                for (int j = m; j < 8; j++) lanes[g * 8 + j] = default;
                // Dot4 adds each sum to a running total that starts at +0: no change, as a sum of FMAs started at +0 is never −0.
                var sums = LaneSums.Sums8(lanes + g * 8);
                if (TRow.HasScale) sums *= rowScale;
                sums *= factor;
                float* destination = scores + g * scoresStride + p0;
                if (m == 8) sums.Store(destination);
                else
                {
                    sums.Store(tail);
                    for (int j = 0; j < m; j++) destination[j] = tail[j];
                }
            }
        }
    }

    /// <summary>
    /// output + g·n += Σ_p weights[g·weightStride + p] · row p for four heads sharing finite F16 value rows: as four
    /// <see cref="Accumulate{TRow, TWidth}"/> calls bit for bit, each value row widened once.
    /// </summary>
    public static void AccumulateF16Group4(byte* rows, int stride, int n, float* weights, int weightStride, float* output, int positions)
    {
        if (!Vector512.IsHardwareAccelerated && Vector256.IsHardwareAccelerated && n % 16 == 0)
        {
            F16FiniteRow.Accumulate4Registers(rows, stride, n, weights, weightStride, output, positions);
            return;
        }
        float* w = stackalloc float[4];
        for (int p = 0; p < positions; p++)
        {
            w[0] = weights[p]; w[1] = weights[weightStride + p]; w[2] = weights[2 * weightStride + p]; w[3] = weights[3 * weightStride + p];
            F16FiniteRow.Axpy4(w, rows + (long)p * stride, output, output + n, output + 2 * n, output + 3 * n, n);
        }
    }

    /// <summary>
    /// How far ahead of the row being read the attention kernels prefetch K and V: the weights' distance
    /// (<see cref="TernaryKernel.PrefetchDistance"/>, 8 KiB; <c>BITNET_PREFETCH_DISTANCE</c> sets both). Like the weights,
    /// the hints go to L2 (prefetcht1; <c>BITNET_PREFETCH_LEVEL=l1</c> makes both prefetcht0), for the reason found there:
    /// a hint into L1 holds one of its few miss buffers for the whole trip to memory, so the lines in flight were capped
    /// and a longer distance changed nothing. On the 2-core Zen 4 EPYC, 2B4T attention at depth 4096 from memory
    /// (<c>quick-attention 4096 1 2</c>, 30 layers, three alternating rounds): f16 0.74–0.90 → 0.69–0.74 ms a layer on one
    /// thread and 0.46–0.53 → 0.42–0.48 on two; int8 0.49–0.50 → 0.46–0.54 (within the host's spread). The old setting
    /// was twelve rows into L1.
    /// </summary>
    internal static int PrefetchBytes => TernaryKernel.PrefetchDistance;

    /// <summary>
    /// Whether the group kernels of the weighted sum of V (int8's 512-bit <c>Int8Attention.AccumulateBlock4</c>, and the
    /// f16/fp8/f32 <see cref="AccumulateGroup4Block{TLanes}"/>, head dimensions a multiple of 64) hint the value rows as
    /// one steady stream <see cref="StreamAhead"/> bytes ahead, spread over every pass over the dimensions (the default),
    /// or only in their first pass, <see cref="PrefetchBytes"/> ahead (before). Those kernels read a block's rows in
    /// several passes over the dimensions, the later ones from cache: with first-pass hints memory sat idle while they
    /// computed, and the stream keeps it busy. A field, not a constant, so a benchmark can compare both in one process
    /// (<c>QUICK_ATTENTION_AB=values</c>); results are identical either way (hints only). Zen 5 EPYC, 2B4T at depth
    /// 4096 from memory, int8: 5–8 % less attention time on one and two threads.
    /// </summary>
    internal static bool StreamValues = true;

    /// <summary>How far ahead of a block's first row the steady value stream runs (16 KiB; 16–24 KiB read fastest on the Zen 5 EPYC).</summary>
    internal const int StreamAhead = 16384;

    /// <summary>
    /// Hints for the first <see cref="PrefetchBytes"/> of a run of rows at once, so a new chunk's first misses overlap
    /// instead of waiting one row at a time until the loop's own look-ahead takes over.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void PrefetchStart(byte* rows, int stride, int positions) =>
        Prefetch(rows, (int)Math.Min((long)positions * stride, PrefetchBytes));

    /// <summary>A prefetch hint for the cache line of <paramref name="p"/> (see <see cref="PrefetchBytes"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void PrefetchLine(byte* p)
    {
        if (!Sse.IsSupported) return; // a hint only: on ARM64 the x86 intrinsic throws (a decode past 256 positions crashed)
        if (TernaryKernel.PrefetchIntoL1) Sse.Prefetch0(p);
        else Sse.Prefetch1(p);
    }

    /// <summary>A prefetch hint for the cache lines of [p, p + bytes); past the end of the rows it is a harmless hint.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Prefetch(byte* p, int bytes)
    {
        if (!Sse.IsSupported) return; // a hint only: on ARM64 the x86 intrinsic throws PlatformNotSupportedException
        if (TernaryKernel.PrefetchIntoL1)
            for (int i = 0; i < bytes; i += 64) Sse.Prefetch0(p + i);
        else
            for (int i = 0; i < bytes; i += 64) Sse.Prefetch1(p + i);
    }

    /// <summary>The first <paramref name="count"/> (≤ 16) floats at <paramref name="source"/>, zeros after; reads no further.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> LoadPartial(float* source, int count, float* tail)
    {
        if (count == 16) return Vector512.Load(source);
        for (int i = 0; i < 16; i++) tail[i] = i < count ? source[i] : 0f;
        return Vector512.Load(tail);
    }

    /// <summary>The first <paramref name="count"/> (≤ 16) lanes of <paramref name="s"/> to <paramref name="destination"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void StoreScores(Vector512<float> s, float* destination, int count)
    {
        if (count == 16) s.Store(destination);
        else for (int i = 0; i < count; i++) destination[i] = s.GetElement(i);
    }
}

/// <summary>
/// Horizontal sums of sixteen 512-bit float vectors at once (transposed: ~46 operations where sixteen Vector512.Sum
/// calls take ~370), each vector by the same fixed tree: lanes k and k+8 first, then k and k+4, k and k+2, k and k+1.
/// </summary>
internal static unsafe class LaneSums
{
    /// <summary>
    /// The sum of a 256-bit vector's eight lanes by a fixed tree, ((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7)):
    /// the order of the 256-bit F16 dot, which <see cref="Sums8"/> reproduces for eight vectors at once.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sum8(Vector256<float> v)
    {
        var pairs = Avx.HorizontalAdd(v, v);
        var quads = Avx.HorizontalAdd(pairs, pairs);
        return quads.ToScalar() + quads.GetUpper().ToScalar();
    }

    /// <summary>
    /// <see cref="Sum8"/> of v[0..7], in order, as one vector (transposed: six horizontal adds, two lane permutes and
    /// one add, where eight separate sums take about forty operations).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Sums8(Vector256<float>* v)
    {
        // Per 128-bit half: [v_a pairs, v_b pairs], then each of four vectors' half folded to one lane.
        var g0123 = Avx.HorizontalAdd(Avx.HorizontalAdd(v[0], v[1]), Avx.HorizontalAdd(v[2], v[3]));
        var g4567 = Avx.HorizontalAdd(Avx.HorizontalAdd(v[4], v[5]), Avx.HorizontalAdd(v[6], v[7]));
        return Avx.Permute2x128(g0123, g4567, 0x20) + Avx.Permute2x128(g0123, g4567, 0x31);
    }

    /// <summary>The sums of v[0..15], in order, as one vector.</summary>
    public static Vector512<float> Sums16(Vector512<float>* v) => Sums16Core(v);

    /// <summary>The integer sums of v[0..15], in order, as one vector (exact unless a sum overflows).</summary>
    public static Vector512<int> Sums16(Vector512<int>* v) => Sums16Core(v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<T> Sums16Core<T>(Vector512<T>* v)
    {
        // Step 1: two vectors per register, lanes k + (k+8): [v_2j folded to 8 | v_2j+1 folded to 8].
        var s0 = Halves(v[0], v[1]);
        var s1 = Halves(v[2], v[3]);
        var s2 = Halves(v[4], v[5]);
        var s3 = Halves(v[6], v[7]);
        var s4 = Halves(v[8], v[9]);
        var s5 = Halves(v[10], v[11]);
        var s6 = Halves(v[12], v[13]);
        var s7 = Halves(v[14], v[15]);
        // Step 2: quarter m of t_j holds vector 4j+m folded to 4 (lanes k + (k+4)).
        var t0 = Quarters(s0, s1);
        var t1 = Quarters(s2, s3);
        var t2 = Quarters(s4, s5);
        var t3 = Quarters(s6, s7);
        // Step 3: quarter m of u_j: [vector 8j+m folded to 2 | vector 8j+4+m folded to 2] (lanes k + (k+2)).
        var u0 = Avx512F.UnpackLow(t0.AsDouble(), t1.AsDouble()).As<double, T>() + Avx512F.UnpackHigh(t0.AsDouble(), t1.AsDouble()).As<double, T>();
        var u1 = Avx512F.UnpackLow(t2.AsDouble(), t3.AsDouble()).As<double, T>() + Avx512F.UnpackHigh(t2.AsDouble(), t3.AsDouble()).As<double, T>();
        // Step 4: quarter m: the sums of vectors m, 4+m, 8+m, 12+m (lanes k + (k+1)).
        var w = Avx512F.Shuffle(u0.AsSingle(), u1.AsSingle(), 0x88).As<float, T>() + Avx512F.Shuffle(u0.AsSingle(), u1.AsSingle(), 0xDD).As<float, T>();
        return Avx512F.PermuteVar16x32(w.AsSingle(), Vector512.Create(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15)).As<float, T>();

        static Vector512<T> Halves(Vector512<T> a, Vector512<T> b) =>
            Avx512F.Shuffle4x128(a.AsSingle(), b.AsSingle(), 0x44).As<float, T>() + Avx512F.Shuffle4x128(a.AsSingle(), b.AsSingle(), 0xEE).As<float, T>();

        static Vector512<T> Quarters(Vector512<T> a, Vector512<T> b) =>
            Avx512F.Shuffle4x128(a.AsSingle(), b.AsSingle(), 0x88).As<float, T>() + Avx512F.Shuffle4x128(a.AsSingle(), b.AsSingle(), 0xDD).As<float, T>();
    }
}

internal readonly unsafe struct F32Row : IKvRow
{
    public static int ElementSize => 4;
    public static bool HasScale => false;
    public static bool HasLanes => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Widen16(byte* row, int i) => Vector512.Load((float*)row + i);

    public static float Encode(ReadOnlySpan<float> x, byte* row)
    {
        x.CopyTo(new Span<float>(row, x.Length));
        return 1f;
    }

    public static void Decode(byte* row, float scale, Span<float> x) => new ReadOnlySpan<float>(row, x.Length).CopyTo(x);

    public static float Dot<TWidth>(float* q, byte* row, int n) where TWidth : struct, IVectorWidth
    {
        float* k = (float*)row;
        int i = 0;
        float sum = 0f;
        if (TWidth.Bits >= 512 && Vector512.IsHardwareAccelerated && n >= 16)
        {
            Vector512<float> a0 = default, a1 = default;
            for (; i <= n - 32; i += 32)
            {
                a0 = Vector512.FusedMultiplyAdd(Vector512.Load(q + i), Vector512.Load(k + i), a0);
                a1 = Vector512.FusedMultiplyAdd(Vector512.Load(q + i + 16), Vector512.Load(k + i + 16), a1);
            }
            for (; i <= n - 16; i += 16) a0 = Vector512.FusedMultiplyAdd(Vector512.Load(q + i), Vector512.Load(k + i), a0);
            sum = Vector512.Sum(a0 + a1);
        }
        else if (TWidth.Bits >= 256 && Vector256.IsHardwareAccelerated && n >= 8)
        {
            Vector256<float> a0 = default, a1 = default;
            for (; i <= n - 16; i += 16)
            {
                a0 = Vector256.FusedMultiplyAdd(Vector256.Load(q + i), Vector256.Load(k + i), a0);
                a1 = Vector256.FusedMultiplyAdd(Vector256.Load(q + i + 8), Vector256.Load(k + i + 8), a1);
            }
            for (; i <= n - 8; i += 8) a0 = Vector256.FusedMultiplyAdd(Vector256.Load(q + i), Vector256.Load(k + i), a0);
            sum = Vector256.Sum(a0 + a1);
        }
        for (; i < n; i++) sum += q[i] * k[i];
        return sum;
    }

    public static void Axpy<TWidth>(float w, byte* row, float* output, int n) where TWidth : struct, IVectorWidth
    {
        float* v = (float*)row;
        int i = 0;
        if (TWidth.Bits >= 512 && Vector512.IsHardwareAccelerated)
        {
            var vw = Vector512.Create(w);
            for (; i <= n - 16; i += 16)
                Vector512.FusedMultiplyAdd(vw, Vector512.Load(v + i), Vector512.Load(output + i)).Store(output + i);
        }
        if (TWidth.Bits >= 256 && Vector256.IsHardwareAccelerated)
        {
            var vw = Vector256.Create(w);
            for (; i <= n - 8; i += 8)
                Vector256.FusedMultiplyAdd(vw, Vector256.Load(v + i), Vector256.Load(output + i)).Store(output + i);
        }
        for (; i < n; i++) output[i] += w * v[i];
    }
}

/// <summary>IEEE half. Widening is exact bit placement (no F16C intrinsic is exposed to .NET): the 15 magnitude bits
/// shifted under the fp32 exponent field and rebiased by integer add; subnormals take the magic-number route and
/// exponent 31 a second rebias to 255, so no fp32 denormal is formed in the hot loop.</summary>
internal readonly unsafe struct F16Row : IKvRow
{
    public static int ElementSize => 2;
    public static bool HasScale => false;

    public static float Encode(ReadOnlySpan<float> x, byte* row)
    {
        KvEncoding.ToHalf(x, (ushort*)row);
        return 1f;
    }

    public static void Decode(byte* row, float scale, Span<float> x)
    {
        ushort* h = (ushort*)row;
        for (int i = 0; i < x.Length; i++) x[i] = HalfConversions.HalfToFloat(h[i]);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> Widen(Vector256<uint> h)
    {
        var magnitude = h & Vector256.Create(0x7FFFu);
        var normal = Vector256.ShiftLeft(magnitude, 13) + Vector256.Create(112u << 23);
        var subnormal = ((normal + Vector256.Create(1u << 23)).AsSingle() - Vector256.Create(6.10351562e-05f)).AsUInt32();
        var exponent = magnitude & Vector256.Create(0x7C00u);
        var result = Vector256.ConditionalSelect(Vector256.Equals(exponent, Vector256<uint>.Zero), subnormal, normal);
        result += Vector256.Equals(exponent, Vector256.Create(0x7C00u)) & Vector256.Create(112u << 23);
        return (result | Vector256.ShiftLeft(h & Vector256.Create(0x8000u), 16)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> Widen(Vector512<uint> h)
    {
        var magnitude = h & Vector512.Create(0x7FFFu);
        var normal = Vector512.ShiftLeft(magnitude, 13) + Vector512.Create(112u << 23);
        var subnormal = ((normal + Vector512.Create(1u << 23)).AsSingle() - Vector512.Create(6.10351562e-05f)).AsUInt32();
        var exponent = magnitude & Vector512.Create(0x7C00u);
        var result = Vector512.ConditionalSelect(Vector512.Equals(exponent, Vector512<uint>.Zero), subnormal, normal);
        result += Vector512.Equals(exponent, Vector512.Create(0x7C00u)) & Vector512.Create(112u << 23);
        return (result | Vector512.ShiftLeft(h & Vector512.Create(0x8000u), 16)).AsSingle();
    }

    public static float Dot<TWidth>(float* q, byte* row, int n) where TWidth : struct, IVectorWidth =>
        HalfRowMath.Dot<ExactHalfWidening, TWidth>(q, row, n);

    public static bool HasLanes => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Widen16(byte* row, int i) => HalfRowMath.Widen16<ExactHalfWidening>(row, i);

    public static void Axpy<TWidth>(float w, byte* row, float* output, int n) where TWidth : struct, IVectorWidth =>
        HalfRowMath.Axpy<ExactHalfWidening, TWidth>(w, row, output, n);
}

/// <summary>How <see cref="HalfRowMath"/> widens sign-extended halves to floats.</summary>
internal interface IHalfWidening
{
    static abstract Vector512<float> Widen(Vector512<int> signExtended);
    static abstract Vector256<float> Widen(Vector256<int> signExtended);
}

/// <summary>Every half, inf and NaN included (<see cref="F16Row.Widen(Vector512{uint})"/>; it reads only the low 16 bits).</summary>
internal readonly struct ExactHalfWidening : IHalfWidening
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Widen(Vector512<int> signExtended) => F16Row.Widen(signExtended.AsUInt32());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Widen(Vector256<int> signExtended) => F16Row.Widen(signExtended.AsUInt32());
}

/// <summary>Finite halves only, in four operations: sign-extend, shift, mask, × 2^112 (exact, subnormals included).</summary>
internal readonly struct FiniteHalfWidening : IHalfWidening
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Widen(Vector512<int> signExtended) =>
        (Vector512.ShiftLeft(signExtended, 13) & Vector512.Create(unchecked((int)0x8FFFE000))).AsSingle() * Vector512.Create(0x77800000).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Widen(Vector256<int> signExtended) =>
        (Vector256.ShiftLeft(signExtended, 13) & Vector256.Create(unchecked((int)0x8FFFE000))).AsSingle() * Vector256.Create(0x77800000).AsSingle();
}

/// <summary>The dot and axpy loops of the F16 row types, one implementation for both widenings.</summary>
internal static unsafe class HalfRowMath
{
    /// <summary><see cref="IKvRow.Widen16"/> for F16 rows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Widen16<TWiden>(byte* row, int i) where TWiden : IHalfWidening =>
        TWiden.Widen(Avx512BW.ConvertToVector512Int32(Vector256.Load((short*)row + i)));

    public static float Dot<TWiden, TWidth>(float* q, byte* row, int n) where TWiden : IHalfWidening where TWidth : struct, IVectorWidth
    {
        short* k = (short*)row;
        int i = 0;
        float sum = 0f;
        if (TWidth.Bits >= 512 && Vector512.IsHardwareAccelerated && n >= 32)
        {
            Vector512<float> a0 = default, a1 = default;
            for (; i <= n - 32; i += 32)
            {
                var h = Vector512.Load(k + i);
                a0 = Vector512.FusedMultiplyAdd(Vector512.Load(q + i), TWiden.Widen(Vector512.WidenLower(h)), a0);
                a1 = Vector512.FusedMultiplyAdd(Vector512.Load(q + i + 16), TWiden.Widen(Vector512.WidenUpper(h)), a1);
            }
            sum = Vector512.Sum(a0 + a1);
        }
        if (TWidth.Bits >= 256 && Avx2.IsSupported && n - i >= 8)
        {
            // One accumulator, eight dimensions per FMA, summed by LaneSums.Sum8: the order the 256-bit lane kernel
            // (AttentionKernels.ScoresF16Group4) reproduces for eight positions at once.
            var a = Vector256<float>.Zero;
            for (; i <= n - 8; i += 8)
                a = Vector256.FusedMultiplyAdd(Vector256.Load(q + i), TWiden.Widen(Avx2.ConvertToVector256Int32(k + i)), a);
            sum += LaneSums.Sum8(a);
        }
        for (; i < n; i++) sum += q[i] * HalfConversions.HalfToFloat((ushort)k[i]);
        return sum;
    }

    public static void Axpy<TWiden, TWidth>(float w, byte* row, float* output, int n) where TWiden : IHalfWidening where TWidth : struct, IVectorWidth
    {
        short* v = (short*)row;
        int i = 0;
        if (TWidth.Bits >= 512 && Vector512.IsHardwareAccelerated)
        {
            var vw = Vector512.Create(w);
            for (; i <= n - 32; i += 32)
            {
                var h = Vector512.Load(v + i);
                Vector512.FusedMultiplyAdd(vw, TWiden.Widen(Vector512.WidenLower(h)), Vector512.Load(output + i)).Store(output + i);
                Vector512.FusedMultiplyAdd(vw, TWiden.Widen(Vector512.WidenUpper(h)), Vector512.Load(output + i + 16)).Store(output + i + 16);
            }
        }
        if (TWidth.Bits >= 256 && Vector256.IsHardwareAccelerated)
        {
            var vw = Vector256.Create(w);
            for (; i <= n - 16; i += 16)
            {
                var h = Vector256.Load(v + i);
                Vector256.FusedMultiplyAdd(vw, TWiden.Widen(Vector256.WidenLower(h)), Vector256.Load(output + i)).Store(output + i);
                Vector256.FusedMultiplyAdd(vw, TWiden.Widen(Vector256.WidenUpper(h)), Vector256.Load(output + i + 8)).Store(output + i + 8);
            }
        }
        for (; i < n; i++) output[i] += w * HalfConversions.HalfToFloat((ushort)v[i]);
    }
}

/// <summary>
/// F16 rows known to hold only finite halves (the cache tracks it at write time): widened with the four-operation
/// form of <see cref="HeadKernels"/> (sign-extend, shift, mask, × 2^112), which is exact for every finite half,
/// subnormals included, instead of <see cref="F16Row.Widen(Vector512{uint})"/>'s eleven. Same values, so the same
/// scores and outputs as <see cref="F16Row"/>; attention on a short context was dominated by this conversion.
/// </summary>
internal readonly unsafe struct F16FiniteRow : IKvRow
{
    public static int ElementSize => 2;
    public static bool HasScale => false;
    public static bool AlwaysFinite => true;
    public static float Encode(ReadOnlySpan<float> x, byte* row) => F16Row.Encode(x, row);
    public static void Decode(byte* row, float scale, Span<float> x) => F16Row.Decode(row, scale, x);

    public static float Dot<TWidth>(float* q, byte* row, int n) where TWidth : struct, IVectorWidth =>
        HalfRowMath.Dot<FiniteHalfWidening, TWidth>(q, row, n);

    public static bool HasLanes => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Widen16(byte* row, int i) => HalfRowMath.Widen16<FiniteHalfWidening>(row, i);

    public static void Axpy<TWidth>(float w, byte* row, float* output, int n) where TWidth : struct, IVectorWidth =>
        HalfRowMath.Axpy<FiniteHalfWidening, TWidth>(w, row, output, n);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Widen(Vector512<int> signExtended) => FiniteHalfWidening.Widen(signExtended);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Widen(Vector256<int> signExtended) => FiniteHalfWidening.Widen(signExtended);

    /// <summary>
    /// Four queries (a GQA group sharing this key row) against one row: each 32-half chunk is widened once. Each
    /// query's accumulators see exactly the FMAs of <see cref="Dot{TWidth}"/> at the widest width, in the same order,
    /// so the four results equal four Dot calls bit for bit.
    /// </summary>
    public static void Dot4(float* q0, float* q1, float* q2, float* q3, byte* row, int n, float* result)
    {
        short* k = (short*)row;
        int i = 0;
        float s0 = 0f, s1 = 0f, s2 = 0f, s3 = 0f;
        if (Vector512.IsHardwareAccelerated && n >= 32)
        {
            Vector512<float> a0 = default, b0 = default, a1 = default, b1 = default, a2 = default, b2 = default, a3 = default, b3 = default;
            for (; i <= n - 32; i += 32)
            {
                var h = Vector512.Load(k + i);
                var lo = Widen(Vector512.WidenLower(h));
                var hi = Widen(Vector512.WidenUpper(h));
                a0 = Vector512.FusedMultiplyAdd(Vector512.Load(q0 + i), lo, a0); b0 = Vector512.FusedMultiplyAdd(Vector512.Load(q0 + i + 16), hi, b0);
                a1 = Vector512.FusedMultiplyAdd(Vector512.Load(q1 + i), lo, a1); b1 = Vector512.FusedMultiplyAdd(Vector512.Load(q1 + i + 16), hi, b1);
                a2 = Vector512.FusedMultiplyAdd(Vector512.Load(q2 + i), lo, a2); b2 = Vector512.FusedMultiplyAdd(Vector512.Load(q2 + i + 16), hi, b2);
                a3 = Vector512.FusedMultiplyAdd(Vector512.Load(q3 + i), lo, a3); b3 = Vector512.FusedMultiplyAdd(Vector512.Load(q3 + i + 16), hi, b3);
            }
            s0 = Vector512.Sum(a0 + b0); s1 = Vector512.Sum(a1 + b1); s2 = Vector512.Sum(a2 + b2); s3 = Vector512.Sum(a3 + b3);
        }
        if (Avx2.IsSupported && n - i >= 8)
        {
            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (; i <= n - 8; i += 8)
            {
                var x = Widen(Avx2.ConvertToVector256Int32(k + i));
                a0 = Vector256.FusedMultiplyAdd(Vector256.Load(q0 + i), x, a0);
                a1 = Vector256.FusedMultiplyAdd(Vector256.Load(q1 + i), x, a1);
                a2 = Vector256.FusedMultiplyAdd(Vector256.Load(q2 + i), x, a2);
                a3 = Vector256.FusedMultiplyAdd(Vector256.Load(q3 + i), x, a3);
            }
            s0 += LaneSums.Sum8(a0); s1 += LaneSums.Sum8(a1); s2 += LaneSums.Sum8(a2); s3 += LaneSums.Sum8(a3);
        }
        for (; i < n; i++)
        {
            float v = HalfConversions.HalfToFloat((ushort)k[i]);
            s0 += q0[i] * v; s1 += q1[i] * v; s2 += q2[i] * v; s3 += q3[i] * v;
        }
        result[0] = s0; result[1] = s1; result[2] = s2; result[3] = s3;
    }

    /// <summary>
    /// o_g += w_g · row for the four outputs of a GQA group (zero weights included: finite rows, as
    /// <see cref="AttentionKernels.Accumulate{TRow, TWidth}"/> does for them): one widening per chunk, the same FMAs per
    /// output as four Axpy calls.
    /// </summary>
    public static void Axpy4(float* w, byte* row, float* o0, float* o1, float* o2, float* o3, int n)
    {
        short* v = (short*)row;
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            Vector512<float> w0 = Vector512.Create(w[0]), w1 = Vector512.Create(w[1]), w2 = Vector512.Create(w[2]), w3 = Vector512.Create(w[3]);
            for (; i <= n - 32; i += 32)
            {
                var h = Vector512.Load(v + i);
                var lo = Widen(Vector512.WidenLower(h));
                var hi = Widen(Vector512.WidenUpper(h));
                Vector512.FusedMultiplyAdd(w0, lo, Vector512.Load(o0 + i)).Store(o0 + i); Vector512.FusedMultiplyAdd(w0, hi, Vector512.Load(o0 + i + 16)).Store(o0 + i + 16);
                Vector512.FusedMultiplyAdd(w1, lo, Vector512.Load(o1 + i)).Store(o1 + i); Vector512.FusedMultiplyAdd(w1, hi, Vector512.Load(o1 + i + 16)).Store(o1 + i + 16);
                Vector512.FusedMultiplyAdd(w2, lo, Vector512.Load(o2 + i)).Store(o2 + i); Vector512.FusedMultiplyAdd(w2, hi, Vector512.Load(o2 + i + 16)).Store(o2 + i + 16);
                Vector512.FusedMultiplyAdd(w3, lo, Vector512.Load(o3 + i)).Store(o3 + i); Vector512.FusedMultiplyAdd(w3, hi, Vector512.Load(o3 + i + 16)).Store(o3 + i + 16);
            }
        }
        if (Vector256.IsHardwareAccelerated)
        {
            Vector256<float> w0 = Vector256.Create(w[0]), w1 = Vector256.Create(w[1]), w2 = Vector256.Create(w[2]), w3 = Vector256.Create(w[3]);
            for (; i <= n - 16; i += 16)
            {
                var h = Vector256.Load(v + i);
                var lo = Widen(Vector256.WidenLower(h));
                var hi = Widen(Vector256.WidenUpper(h));
                Vector256.FusedMultiplyAdd(w0, lo, Vector256.Load(o0 + i)).Store(o0 + i); Vector256.FusedMultiplyAdd(w0, hi, Vector256.Load(o0 + i + 8)).Store(o0 + i + 8);
                Vector256.FusedMultiplyAdd(w1, lo, Vector256.Load(o1 + i)).Store(o1 + i); Vector256.FusedMultiplyAdd(w1, hi, Vector256.Load(o1 + i + 8)).Store(o1 + i + 8);
                Vector256.FusedMultiplyAdd(w2, lo, Vector256.Load(o2 + i)).Store(o2 + i); Vector256.FusedMultiplyAdd(w2, hi, Vector256.Load(o2 + i + 8)).Store(o2 + i + 8);
                Vector256.FusedMultiplyAdd(w3, lo, Vector256.Load(o3 + i)).Store(o3 + i); Vector256.FusedMultiplyAdd(w3, hi, Vector256.Load(o3 + i + 8)).Store(o3 + i + 8);
            }
        }
        for (; i < n; i++)
        {
            float x = HalfConversions.HalfToFloat((ushort)v[i]);
            o0[i] += w[0] * x;
            o1[i] += w[1] * x;
            o2[i] += w[2] * x;
            o3[i] += w[3] * x;
        }
    }

    /// <summary>
    /// <see cref="Axpy4"/> over <paramref name="positions"/> rows in 256-bit vectors with the sums kept in registers:
    /// 16 dimensions of the four outputs at a time (eight accumulators) across every position, so the outputs are loaded
    /// and stored once per call instead of once per position. Each output value takes the same FMAs in the same
    /// (position) order as the per-position Axpy4 calls at 256 bits, so the results are the same bits.
    /// Requires <paramref name="n"/> % 16 == 0.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    [SkipLocalsInit] // the scaled weights are written before they are read
    public static void Accumulate4Registers(byte* rows, int stride, int n, float* weights, int weightStride, float* output, int positions)
    {
        // Blocks of 64 positions (16 KiB of a 128-wide head), so the passes over the dimensions after the first read
        // their rows from L1 however many positions the call covers.
        const int Block = 64;
        AttentionKernels.PrefetchStart(rows, stride, positions);
        // The weights times 2^112 when they allow it, so the widening drops its multiply (ScaledHalfLanes: the same
        // products, so the same sums).
        bool scaled = ScaledHalfLanes.CanScale(weights, weightStride, positions);
        float* up = stackalloc float[4 * Block];
        for (int p0 = 0; p0 < positions; p0 += Block)
        {
            int count = Math.Min(Block, positions - p0);
            if (scaled)
            {
                for (int g = 0; g < 4; g++)
                    for (int j = 0; j < count; j++) up[g * Block + j] = weights[g * weightStride + p0 + j] * ScaledHalfLanes.Up;
                Accumulate4Block<ScaledHalfLanes>(rows + (long)p0 * stride, stride, n, up, Block, output, count);
            }
            else Accumulate4Block<RowLanes<F16FiniteRow>>(rows + (long)p0 * stride, stride, n, weights + p0, weightStride, output, count);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Accumulate4Block<TLanes>(byte* rows, int stride, int n, float* weights, int weightStride, float* output, int positions)
        where TLanes : ILaneWidening
    {
        float* o1 = output + n, o2 = output + 2 * n, o3 = output + 3 * n;
        float* w1 = weights + weightStride, w2 = weights + 2 * weightStride, w3 = weights + 3 * weightStride;
        for (int d = 0; d < n; d += 16)
        {
            Vector256<float> a0 = Vector256.Load(output + d), a1 = Vector256.Load(output + d + 8);
            Vector256<float> b0 = Vector256.Load(o1 + d), b1 = Vector256.Load(o1 + d + 8);
            Vector256<float> c0 = Vector256.Load(o2 + d), c1 = Vector256.Load(o2 + d + 8);
            Vector256<float> e0 = Vector256.Load(o3 + d), e1 = Vector256.Load(o3 + d + 8);
            byte* row = rows;
            for (int p = 0; p < positions; p++, row += stride)
            {
                if (d == 0) AttentionKernels.Prefetch(row + AttentionKernels.PrefetchBytes, stride);
                var lo = TLanes.Widen8(row, d);
                var hi = TLanes.Widen8(row, d + 8);
                var x = Vector256.Create(weights[p]);
                a0 = Vector256.FusedMultiplyAdd(x, lo, a0); a1 = Vector256.FusedMultiplyAdd(x, hi, a1);
                x = Vector256.Create(w1[p]);
                b0 = Vector256.FusedMultiplyAdd(x, lo, b0); b1 = Vector256.FusedMultiplyAdd(x, hi, b1);
                x = Vector256.Create(w2[p]);
                c0 = Vector256.FusedMultiplyAdd(x, lo, c0); c1 = Vector256.FusedMultiplyAdd(x, hi, c1);
                x = Vector256.Create(w3[p]);
                e0 = Vector256.FusedMultiplyAdd(x, lo, e0); e1 = Vector256.FusedMultiplyAdd(x, hi, e1);
            }
            a0.Store(output + d); a1.Store(output + d + 8);
            b0.Store(o1 + d); b1.Store(o1 + d + 8);
            c0.Store(o2 + d); c1.Store(o2 + d + 8);
            e0.Store(o3 + d); e1.Store(o3 + d + 8);
        }
    }

    /// <summary>Whether any of the <paramref name="n"/> halves at <paramref name="row"/> is ±inf or NaN (exponent 31).</summary>
    public static bool HasNonFinite(byte* row, int n)
    {
        ushort* h = (ushort*)row;
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var exponent = Vector256.Create((ushort)0x7C00);
            for (; i <= n - 16; i += 16)
                if (Vector256.EqualsAny(Vector256.Load(h + i) & exponent, exponent)) return true;
        }
        for (; i < n; i++)
            if ((h[i] & 0x7C00) == 0x7C00) return true;
        return false;
    }
}

/// <summary>Symmetric int8 per head row: scale = max|x|/127, q = round_half_even(x·127/max|x|), so |x − q·scale| ≤ scale/2
/// (up to one fp32 rounding of the reciprocal). An all-zero row stores scale 0.</summary>
internal readonly unsafe struct Int8Row : IKvRow
{
    public static int ElementSize => 1;
    public static bool HasScale => true;
    public static bool AlwaysFinite => true;
    public static bool HasLanes => true;

    /// <summary>Sign-extend and convert: two operations for sixteen values.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Widen16(byte* row, int i) =>
        Vector512.ConvertToSingle(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)row + i)));

    public static float Encode(ReadOnlySpan<float> x, byte* row)
    {
        float max = KvEncoding.AbsMax(x);
        sbyte* q = (sbyte*)row;
        if (max == 0f || float.IsNaN(max))
        {
            new Span<byte>(row, x.Length).Clear();
            return max == 0f ? 0f : float.NaN;
        }
        float inv = 127f / max;
        if (float.IsInfinity(inv)) // max below ~3.7e-37: scale through double so 0·∞ never makes a NaN
            for (int i = 0; i < x.Length; i++) q[i] = (sbyte)Math.Clamp((int)Math.Round(x[i] * 127.0 / max), -127, 127);
        else
            KvEncoding.RoundScaled(x, inv, q);
        return max / 127f;
    }

    public static void Decode(byte* row, float scale, Span<float> x)
    {
        sbyte* q = (sbyte*)row;
        for (int i = 0; i < x.Length; i++) x[i] = q[i] * scale;
    }

    public static float Dot<TWidth>(float* q, byte* row, int n) where TWidth : struct, IVectorWidth
    {
        sbyte* k = (sbyte*)row;
        int i = 0;
        float sum = 0f;
        if (TWidth.Bits >= 512 && Vector512.IsHardwareAccelerated && n >= 32)
        {
            Vector512<float> a0 = default, a1 = default;
            for (; i <= n - 32; i += 32)
            {
                var s = Vector512.WidenLower(Vector256.Load(k + i).ToVector512Unsafe());
                a0 = Vector512.FusedMultiplyAdd(Vector512.Load(q + i), Vector512.ConvertToSingle(Vector512.WidenLower(s)), a0);
                a1 = Vector512.FusedMultiplyAdd(Vector512.Load(q + i + 16), Vector512.ConvertToSingle(Vector512.WidenUpper(s)), a1);
            }
            sum = Vector512.Sum(a0 + a1);
        }
        if (TWidth.Bits >= 256 && Vector256.IsHardwareAccelerated && n - i >= 16)
        {
            Vector256<float> a0 = default, a1 = default;
            for (; i <= n - 16; i += 16)
            {
                var s = Vector256.WidenLower(Vector128.Load(k + i).ToVector256Unsafe());
                a0 = Vector256.FusedMultiplyAdd(Vector256.Load(q + i), Vector256.ConvertToSingle(Vector256.WidenLower(s)), a0);
                a1 = Vector256.FusedMultiplyAdd(Vector256.Load(q + i + 8), Vector256.ConvertToSingle(Vector256.WidenUpper(s)), a1);
            }
            sum += Vector256.Sum(a0 + a1);
        }
        for (; i < n; i++) sum += q[i] * k[i];
        return sum;
    }

    public static void Axpy<TWidth>(float w, byte* row, float* output, int n) where TWidth : struct, IVectorWidth
    {
        sbyte* v = (sbyte*)row;
        int i = 0;
        if (TWidth.Bits >= 512 && Vector512.IsHardwareAccelerated)
        {
            var vw = Vector512.Create(w);
            for (; i <= n - 32; i += 32)
            {
                var s = Vector512.WidenLower(Vector256.Load(v + i).ToVector512Unsafe());
                Vector512.FusedMultiplyAdd(vw, Vector512.ConvertToSingle(Vector512.WidenLower(s)), Vector512.Load(output + i)).Store(output + i);
                Vector512.FusedMultiplyAdd(vw, Vector512.ConvertToSingle(Vector512.WidenUpper(s)), Vector512.Load(output + i + 16)).Store(output + i + 16);
            }
        }
        if (TWidth.Bits >= 256 && Vector256.IsHardwareAccelerated)
        {
            var vw = Vector256.Create(w);
            for (; i <= n - 16; i += 16)
            {
                var s = Vector256.WidenLower(Vector128.Load(v + i).ToVector256Unsafe());
                Vector256.FusedMultiplyAdd(vw, Vector256.ConvertToSingle(Vector256.WidenLower(s)), Vector256.Load(output + i)).Store(output + i);
                Vector256.FusedMultiplyAdd(vw, Vector256.ConvertToSingle(Vector256.WidenUpper(s)), Vector256.Load(output + i + 8)).Store(output + i + 8);
            }
        }
        for (; i < n; i++) output[i] += w * v[i];
    }
}

/// <summary>FP8 E4M3 per head row with scale = max|x|/448, so the largest value lands on 448 and the row uses the
/// whole range; values below max|x|·2^−6/448 fall into subnormals (absolute error ≤ scale·2^−10).</summary>
internal readonly unsafe struct Fp8Row : IKvRow
{
    public static int ElementSize => 1;
    public static bool HasScale => true;
    public static bool AlwaysFinite => true;
    public static bool HasLanes => true;

    /// <summary>
    /// Sixteen codes in three operations (sign-extend, shift-and-mask, × 2^120): the sign lands on bit 31 and the seven
    /// exponent/mantissa bits under fp32's exponent and mantissa, so the product is the code's value exactly, subnormals
    /// included (fp32 subnormal × 2^120). Only the NaN codes (0x7F, 0xFF) would read as ±480; <see cref="Encode"/>
    /// never writes them (a row holding NaN or ±∞ is stored as zeros with a NaN scale), so a cache holds none.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Widen16(byte* row, int i) =>
        (Vector512.ShiftLeft(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)row + i)), 20) & Vector512.Create(unchecked((int)0x87F00000))).AsSingle()
        * Vector512.Create(0x7B800000).AsSingle();

    /// <summary><see cref="Widen16"/> for eight codes in 256 bits (AVX2): the dot and axpy loops' widening without
    /// AVX-512, exact on every code a cache holds, where <see cref="Fp8E4M3.Decode(Vector256{uint})"/> takes ~13
    /// operations (its unsigned compare is emulated on AVX2).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Widen8(byte* row, int i) =>
        (Vector256.ShiftLeft(Avx2.ConvertToVector256Int32((sbyte*)row + i), 20) & Vector256.Create(unchecked((int)0x87F00000))).AsSingle()
        * Vector256.Create(0x7B800000).AsSingle();

    public static float Encode(ReadOnlySpan<float> x, byte* row)
    {
        float max = KvEncoding.AbsMax(x);
        if (max == 0f || float.IsNaN(max) || float.IsInfinity(max))
        {
            new Span<byte>(row, x.Length).Clear();
            return max == 0f ? 0f : float.NaN;
        }
        float inv = Fp8E4M3.MaxValue / max;
        if (float.IsInfinity(inv)) // max below ~1.3e-36: scale through double so 0·∞ never makes a NaN code
            for (int i = 0; i < x.Length; i++) row[i] = Fp8E4M3.FromFloat((float)(x[i] * (double)Fp8E4M3.MaxValue / max));
        else
            fixed (float* px = x) Fp8E4M3.Encode(px, inv, row, x.Length);
        return max / Fp8E4M3.MaxValue;
    }

    public static void Decode(byte* row, float scale, Span<float> x)
    {
        for (int i = 0; i < x.Length; i++) x[i] = Fp8E4M3.ToFloat(row[i]) * scale;
    }

    public static float Dot<TWidth>(float* q, byte* row, int n) where TWidth : struct, IVectorWidth
    {
        int i = 0;
        float sum = 0f;
        if (TWidth.Bits >= 512 && Vector512.IsHardwareAccelerated && n >= 32)
        {
            Vector512<float> a0 = default, a1 = default;
            for (; i <= n - 32; i += 32)
            {
                var s = Vector512.WidenLower(Vector256.Load(row + i).ToVector512Unsafe());
                a0 = Vector512.FusedMultiplyAdd(Vector512.Load(q + i), Fp8E4M3.Decode(Vector512.WidenLower(s)), a0);
                a1 = Vector512.FusedMultiplyAdd(Vector512.Load(q + i + 16), Fp8E4M3.Decode(Vector512.WidenUpper(s)), a1);
            }
            sum = Vector512.Sum(a0 + a1);
        }
        if (TWidth.Bits >= 256 && Avx2.IsSupported && n - i >= 8)
        {
            // One accumulator and LaneSums.Sum8, the order the 256-bit group kernel (ScoresFp8Group4) reproduces.
            var a = Vector256<float>.Zero;
            for (; i <= n - 8; i += 8)
                a = Vector256.FusedMultiplyAdd(Vector256.Load(q + i), Widen8(row, i), a);
            sum += LaneSums.Sum8(a);
        }
        for (; i < n; i++) sum += q[i] * Fp8E4M3.ToFloat(row[i]);
        return sum;
    }

    public static void Axpy<TWidth>(float w, byte* row, float* output, int n) where TWidth : struct, IVectorWidth
    {
        int i = 0;
        if (TWidth.Bits >= 512 && Vector512.IsHardwareAccelerated)
        {
            var vw = Vector512.Create(w);
            for (; i <= n - 32; i += 32)
            {
                var s = Vector512.WidenLower(Vector256.Load(row + i).ToVector512Unsafe());
                Vector512.FusedMultiplyAdd(vw, Fp8E4M3.Decode(Vector512.WidenLower(s)), Vector512.Load(output + i)).Store(output + i);
                Vector512.FusedMultiplyAdd(vw, Fp8E4M3.Decode(Vector512.WidenUpper(s)), Vector512.Load(output + i + 16)).Store(output + i + 16);
            }
        }
        if (TWidth.Bits >= 256 && Avx2.IsSupported)
        {
            var vw = Vector256.Create(w);
            for (; i <= n - 16; i += 16)
            {
                Vector256.FusedMultiplyAdd(vw, Widen8(row, i), Vector256.Load(output + i)).Store(output + i);
                Vector256.FusedMultiplyAdd(vw, Widen8(row, i + 8), Vector256.Load(output + i + 8)).Store(output + i + 8);
            }
        }
        for (; i < n; i++) output[i] += w * Fp8E4M3.ToFloat(row[i]);
    }
}
