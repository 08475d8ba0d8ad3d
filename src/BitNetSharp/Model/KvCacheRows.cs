using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using BitNetSharp.Kernels.FloatOps;
using BitNetSharp.Quantization;

namespace BitNetSharp.Model;

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
}

internal readonly unsafe struct F32Row : IKvRow
{
    public static int ElementSize => 4;
    public static bool HasScale => false;

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
        ushort* h = (ushort*)row;
        for (int i = 0; i < x.Length; i++) h[i] = HalfConversions.FloatToHalf(x[i]);
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
        if (TWidth.Bits >= 256 && Vector256.IsHardwareAccelerated && n - i >= 16)
        {
            Vector256<float> a0 = default, a1 = default;
            for (; i <= n - 16; i += 16)
            {
                var h = Vector256.Load(k + i);
                a0 = Vector256.FusedMultiplyAdd(Vector256.Load(q + i), TWiden.Widen(Vector256.WidenLower(h)), a0);
                a1 = Vector256.FusedMultiplyAdd(Vector256.Load(q + i + 8), TWiden.Widen(Vector256.WidenUpper(h)), a1);
            }
            sum += Vector256.Sum(a0 + a1);
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
/// form of <see cref="EmbeddingTable"/> (sign-extend, shift, mask, × 2^112), which is exact for every finite half,
/// subnormals included, instead of <see cref="F16Row.Widen(Vector512{uint})"/>'s eleven. Same values, so the same
/// scores and outputs as <see cref="F16Row"/>; attention on a short context was dominated by this conversion.
/// </summary>
internal readonly unsafe struct F16FiniteRow : IKvRow
{
    public static int ElementSize => 2;
    public static bool HasScale => false;
    public static float Encode(ReadOnlySpan<float> x, byte* row) => F16Row.Encode(x, row);
    public static void Decode(byte* row, float scale, Span<float> x) => F16Row.Decode(row, scale, x);

    public static float Dot<TWidth>(float* q, byte* row, int n) where TWidth : struct, IVectorWidth =>
        HalfRowMath.Dot<FiniteHalfWidening, TWidth>(q, row, n);

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
        if (Vector256.IsHardwareAccelerated && n - i >= 16)
        {
            Vector256<float> a0 = default, b0 = default, a1 = default, b1 = default, a2 = default, b2 = default, a3 = default, b3 = default;
            for (; i <= n - 16; i += 16)
            {
                var h = Vector256.Load(k + i);
                var lo = Widen(Vector256.WidenLower(h));
                var hi = Widen(Vector256.WidenUpper(h));
                a0 = Vector256.FusedMultiplyAdd(Vector256.Load(q0 + i), lo, a0); b0 = Vector256.FusedMultiplyAdd(Vector256.Load(q0 + i + 8), hi, b0);
                a1 = Vector256.FusedMultiplyAdd(Vector256.Load(q1 + i), lo, a1); b1 = Vector256.FusedMultiplyAdd(Vector256.Load(q1 + i + 8), hi, b1);
                a2 = Vector256.FusedMultiplyAdd(Vector256.Load(q2 + i), lo, a2); b2 = Vector256.FusedMultiplyAdd(Vector256.Load(q2 + i + 8), hi, b2);
                a3 = Vector256.FusedMultiplyAdd(Vector256.Load(q3 + i), lo, a3); b3 = Vector256.FusedMultiplyAdd(Vector256.Load(q3 + i + 8), hi, b3);
            }
            s0 += Vector256.Sum(a0 + b0); s1 += Vector256.Sum(a1 + b1); s2 += Vector256.Sum(a2 + b2); s3 += Vector256.Sum(a3 + b3);
        }
        for (; i < n; i++)
        {
            float v = HalfConversions.HalfToFloat((ushort)k[i]);
            s0 += q0[i] * v; s1 += q1[i] * v; s2 += q2[i] * v; s3 += q3[i] * v;
        }
        result[0] = s0; result[1] = s1; result[2] = s2; result[3] = s3;
    }

    /// <summary>
    /// o_g += w_g · row for the four outputs of a GQA group (each skipped when its weight is 0, as
    /// <see cref="KvCache.AccumulateV"/> skips): one widening per chunk, the same FMAs per output as four Axpy calls.
    /// </summary>
    public static void Axpy4(float* w, byte* row, float* o0, float* o1, float* o2, float* o3, int n)
    {
        short* v = (short*)row;
        bool u0 = w[0] != 0f, u1 = w[1] != 0f, u2 = w[2] != 0f, u3 = w[3] != 0f;
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            Vector512<float> w0 = Vector512.Create(w[0]), w1 = Vector512.Create(w[1]), w2 = Vector512.Create(w[2]), w3 = Vector512.Create(w[3]);
            for (; i <= n - 32; i += 32)
            {
                var h = Vector512.Load(v + i);
                var lo = Widen(Vector512.WidenLower(h));
                var hi = Widen(Vector512.WidenUpper(h));
                if (u0) { Vector512.FusedMultiplyAdd(w0, lo, Vector512.Load(o0 + i)).Store(o0 + i); Vector512.FusedMultiplyAdd(w0, hi, Vector512.Load(o0 + i + 16)).Store(o0 + i + 16); }
                if (u1) { Vector512.FusedMultiplyAdd(w1, lo, Vector512.Load(o1 + i)).Store(o1 + i); Vector512.FusedMultiplyAdd(w1, hi, Vector512.Load(o1 + i + 16)).Store(o1 + i + 16); }
                if (u2) { Vector512.FusedMultiplyAdd(w2, lo, Vector512.Load(o2 + i)).Store(o2 + i); Vector512.FusedMultiplyAdd(w2, hi, Vector512.Load(o2 + i + 16)).Store(o2 + i + 16); }
                if (u3) { Vector512.FusedMultiplyAdd(w3, lo, Vector512.Load(o3 + i)).Store(o3 + i); Vector512.FusedMultiplyAdd(w3, hi, Vector512.Load(o3 + i + 16)).Store(o3 + i + 16); }
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
                if (u0) { Vector256.FusedMultiplyAdd(w0, lo, Vector256.Load(o0 + i)).Store(o0 + i); Vector256.FusedMultiplyAdd(w0, hi, Vector256.Load(o0 + i + 8)).Store(o0 + i + 8); }
                if (u1) { Vector256.FusedMultiplyAdd(w1, lo, Vector256.Load(o1 + i)).Store(o1 + i); Vector256.FusedMultiplyAdd(w1, hi, Vector256.Load(o1 + i + 8)).Store(o1 + i + 8); }
                if (u2) { Vector256.FusedMultiplyAdd(w2, lo, Vector256.Load(o2 + i)).Store(o2 + i); Vector256.FusedMultiplyAdd(w2, hi, Vector256.Load(o2 + i + 8)).Store(o2 + i + 8); }
                if (u3) { Vector256.FusedMultiplyAdd(w3, lo, Vector256.Load(o3 + i)).Store(o3 + i); Vector256.FusedMultiplyAdd(w3, hi, Vector256.Load(o3 + i + 8)).Store(o3 + i + 8); }
            }
        }
        for (; i < n; i++)
        {
            float x = HalfConversions.HalfToFloat((ushort)v[i]);
            if (u0) o0[i] += w[0] * x;
            if (u1) o1[i] += w[1] * x;
            if (u2) o2[i] += w[2] * x;
            if (u3) o3[i] += w[3] * x;
        }
    }

    /// <summary>Whether any of the <paramref name="n"/> halves at <paramref name="row"/> is ±inf or NaN (exponent 31).</summary>
    public static bool HasNonFinite(byte* row, int n)
    {
        ushort* h = (ushort*)row;
        for (int i = 0; i < n; i++)
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

    public static float Encode(ReadOnlySpan<float> x, byte* row)
    {
        float max = 0f;
        foreach (float v in x) max = MathF.Max(max, MathF.Abs(v));
        sbyte* q = (sbyte*)row;
        if (max == 0f || float.IsNaN(max))
        {
            new Span<byte>(row, x.Length).Clear();
            return max == 0f ? 0f : float.NaN;
        }
        float inv = 127f / max;
        for (int i = 0; i < x.Length; i++) q[i] = (sbyte)Math.Clamp((int)MathF.Round(x[i] * inv), -127, 127);
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

    public static float Encode(ReadOnlySpan<float> x, byte* row)
    {
        float max = 0f;
        foreach (float v in x) max = MathF.Max(max, MathF.Abs(v));
        if (max == 0f || float.IsNaN(max) || float.IsInfinity(max))
        {
            new Span<byte>(row, x.Length).Clear();
            return max == 0f ? 0f : float.NaN;
        }
        float inv = Fp8E4M3.MaxValue / max;
        for (int i = 0; i < x.Length; i++) row[i] = Fp8E4M3.FromFloat(x[i] * inv);
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
        if (TWidth.Bits >= 256 && Vector256.IsHardwareAccelerated && n - i >= 16)
        {
            Vector256<float> a0 = default, a1 = default;
            for (; i <= n - 16; i += 16)
            {
                var s = Vector256.WidenLower(Vector128.Load(row + i).ToVector256Unsafe());
                a0 = Vector256.FusedMultiplyAdd(Vector256.Load(q + i), Fp8E4M3.Decode(Vector256.WidenLower(s)), a0);
                a1 = Vector256.FusedMultiplyAdd(Vector256.Load(q + i + 8), Fp8E4M3.Decode(Vector256.WidenUpper(s)), a1);
            }
            sum += Vector256.Sum(a0 + a1);
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
        if (TWidth.Bits >= 256 && Vector256.IsHardwareAccelerated)
        {
            var vw = Vector256.Create(w);
            for (; i <= n - 16; i += 16)
            {
                var s = Vector256.WidenLower(Vector128.Load(row + i).ToVector256Unsafe());
                Vector256.FusedMultiplyAdd(vw, Fp8E4M3.Decode(Vector256.WidenLower(s)), Vector256.Load(output + i)).Store(output + i);
                Vector256.FusedMultiplyAdd(vw, Fp8E4M3.Decode(Vector256.WidenUpper(s)), Vector256.Load(output + i + 8)).Store(output + i + 8);
            }
        }
        for (; i < n; i++) output[i] += w * Fp8E4M3.ToFloat(row[i]);
    }
}
