using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using BitNetSharp.Quantization;

namespace BitNetSharp.Kernels;

/// <summary>
/// Per-token int8 activation quantization as bitnet.cpp's quantize_row_i8_s and HF's ActQuant (FORMATS.md §2.6,
/// §4.4): γ = max(max|x|, 1e−5) taken in double, s_x = (float)(127/γ) (the scale the kernels divide by), and
/// q = clamp(round_half_even(x·127/γ), −128, 127) with x·127/γ the exact real quotient, and Σq kept for the kernels.
/// <para>
/// Why exact: on bf16 checkpoints activations hit ties (an element exactly γ/2 gives −63.5 → −64), and the fp32
/// product x·fl(127/γ) lands a hair off them (−63.499996 → −63), so from that token on every logit differs from
/// transformers' and a float64 evaluation by ~1e−2 of the range (issue #15). <see cref="ExactCode"/> is the reference:
/// x·127 is exact in double (24 + 7 significant bits), the division is correctly rounded, and rounding is monotonic,
/// so the double quotient rounds like the real one unless it lands exactly on a half-integer; there an exact
/// residual (fused multiply-add) says whether the real quotient is that tie or on which side of it. (With γ a float,
/// i.e. max|x| ≥ 1e−5, a non-tie quotient is ≥ 2^−34 away from a half-integer, far more than the double's rounding,
/// so the residual never corrects anything there; it matters only under the 1e−5 floor, where γ is not a float.)
/// </para>
/// <para>
/// The fast paths keep the fp32 product y = x·s_x, which is within |x·127/γ|·2^−23 ≤ 127·2^−23 &lt; 2^−16 of the real
/// quotient (s_x's and the product's roundings, 2^−24 each). Where y is more than 2^−14 from every half-integer
/// (|y − round(y)| ≤ <see cref="NearTie"/>) the real quotient is on the same side of every tie, so round(y) is the
/// exact code; the elements nearer a tie than that are recoded with <see cref="ExactCode"/>: for random fp32 activations
/// about 1 in 14 000, on bf16-valued ones the exact ties, about 1 in 400. The results equal the reference bit for bit.
/// </para>
/// </summary>
public static unsafe class Int8ActivationQuantizer
{
    public const double AbsMaxFloor = 1e-5;

    /// <summary>|y − round(y)| above this (2^−14 from a half-integer) sends an element to <see cref="ExactCode"/>.</summary>
    public const float NearTie = 0.5f - 1f / 16384;

    /// <summary>γ = max(max|x|, 1e−5) in double, the divisor of the exact code.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double Gamma(float absMax) => Math.Max((double)absMax, AbsMaxFloor);

    /// <summary>s_x for a given max|x|.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ScaleFor(float absMax) => (float)(127.0 / Gamma(absMax));

    /// <summary>clamp(round_half_even(x·127/γ), −128, 127) with x·127/γ the real quotient (see the class remarks).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int ExactCode(float x, double gamma) => ExactCode(x, gamma, 127);

    /// <summary>
    /// round_half_even(x·m/γ) of the real quotient, clamped to [−m−1, m] (m = 127 here; 2^(b−1) − 1 for b-bit
    /// activations, see <see cref="LowBitActivationQuantizer"/>): x·m is exact in double (24 + 7 significant bits), the
    /// division is correctly rounded and rounding is monotonic, so the double quotient rounds like the real one unless
    /// it is exactly a half-integer; there the residual d·γ − x·m, exact in a fused multiply-add, is zero only if the
    /// real quotient is that tie, and otherwise says on which side of it the real quotient lies.
    /// </summary>
    public static int ExactCode(float x, double gamma, int maxCode)
    {
        double p = x * (double)maxCode;
        double d = p / gamma;
        double r = Math.Round(d);
        if (Math.Abs(d - r) == 0.5)
        {
            double residual = Math.FusedMultiplyAdd(d, gamma, -p);
            if (residual != 0) r = residual > 0 ? Math.Floor(d) : Math.Ceiling(d);
        }
        return Math.Clamp((int)r, -maxCode - 1, maxCode);
    }

    /// <summary>Quantizes one token into row <paramref name="token"/> of <paramref name="dst"/>.</summary>
    public static void Quantize(ReadOnlySpan<float> x, QuantizedActivations dst, int token)
    {
        if (x.Length != dst.Cols)
            throw new ArgumentException($"Activation row has {x.Length} values; the quantized buffer expects {dst.Cols}.", nameof(x));
        if ((uint)token >= (uint)dst.MaxTokens) throw new ArgumentOutOfRangeException(nameof(token));
        Quantize(x, dst.RowSpan(token), out dst.Scales[token], out dst.Sums[token]);
    }

    /// <summary>Vectorized quantization; <paramref name="q"/> past x.Length is zeroed (kernel padding).</summary>
    public static void Quantize(ReadOnlySpan<float> x, Span<sbyte> q, out float scale, out int sum) =>
        Quantize(x, q, out scale, out sum, Vector512.IsHardwareAccelerated && Avx512F.IsSupported ? 512 : Vector256.IsHardwareAccelerated ? 256 : Vector128.IsHardwareAccelerated ? 128 : 0);

    /// <summary>
    /// <see cref="Quantize(ReadOnlySpan{float}, Span{sbyte}, out float, out int)"/> with the vector width chosen
    /// (256, 128, or 0 for scalar), so the tests run every path this CPU has, not only the widest.
    /// </summary>
    internal static void Quantize(ReadOnlySpan<float> x, Span<sbyte> q, out float scale, out int sum, int vectorBits)
    {
        if (q.Length < x.Length) throw new ArgumentException("Output is shorter than the input.", nameof(q));
        double gamma = Gamma(AbsMax(x));
        float s = (float)(127.0 / gamma);
        scale = s;
        int n = x.Length, i = 0;
        sum = 0;
        fixed (float* px = x)
        fixed (sbyte* pq = q)
        {
            if (vectorBits >= 512 && Vector512.IsHardwareAccelerated && Avx512F.IsSupported && n >= 64)
            {
                // As the 256-bit path, 64 values a step: r = round_half_even(y) by vrndscaleps, then vcvtps2dq of the
                // integral r (exact; .NET 10's saturating conversion takes four instructions where this takes one), a NaN
                // lane (a row holding NaN) set to code 0 as that conversion gives, the clamp, vpmovdb.
                var vs = Vector512.Create(s);
                var near = Vector512.Create(NearTie);
                var lo = Vector512.Create(-128);
                var hi = Vector512.Create(127);
                var acc = Vector512<int>.Zero;
                for (; i <= n - 64; i += 64)
                {
                    var ya = Vector512.Load(px + i) * vs;
                    var yb = Vector512.Load(px + i + 16) * vs;
                    var yc = Vector512.Load(px + i + 32) * vs;
                    var yd = Vector512.Load(px + i + 48) * vs;
                    var ra = Vector512.Round(ya);
                    var rb = Vector512.Round(yb);
                    var rc = Vector512.Round(yc);
                    var rd = Vector512.Round(yd);
                    var a = Codes(ra, lo, hi);
                    var b = Codes(rb, lo, hi);
                    var c = Codes(rc, lo, hi);
                    var d = Codes(rd, lo, hi);
                    acc += (a + b) + (c + d);
                    Avx512F.ConvertToVector128SByte(a).Store(pq + i);
                    Avx512F.ConvertToVector128SByte(b).Store(pq + i + 16);
                    Avx512F.ConvertToVector128SByte(c).Store(pq + i + 32);
                    Avx512F.ConvertToVector128SByte(d).Store(pq + i + 48);
                    var off = Vector512.MaxNative(Vector512.MaxNative(Vector512.Abs(ya - ra), Vector512.Abs(yb - rb)), Vector512.MaxNative(Vector512.Abs(yc - rc), Vector512.Abs(yd - rd)));
                    if (Vector512.GreaterThanAny(off, near))
                    {
                        ulong lanes = Vector512.GreaterThan(Vector512.Abs(ya - ra), near).ExtractMostSignificantBits()
                            | Vector512.GreaterThan(Vector512.Abs(yb - rb), near).ExtractMostSignificantBits() << 16
                            | Vector512.GreaterThan(Vector512.Abs(yc - rc), near).ExtractMostSignificantBits() << 32
                            | Vector512.GreaterThan(Vector512.Abs(yd - rd), near).ExtractMostSignificantBits() << 48;
                        sum += FixNearTies(px + i, pq + i, lanes, gamma);
                    }
                }
                sum += Vector512.Sum(acc);
            }
            if (vectorBits >= 256 && Vector256.IsHardwareAccelerated && n - i >= 32)
            {
                var vs = Vector256.Create(s);
                var near = Vector256.Create(NearTie);
                var lo = Vector256.Create(-128);
                var hi = Vector256.Create(127);
                var acc = Vector256<int>.Zero;
                for (; i <= n - 32; i += 32)
                {
                    var ya = Vector256.Load(px + i) * vs;
                    var yb = Vector256.Load(px + i + 8) * vs;
                    var yc = Vector256.Load(px + i + 16) * vs;
                    var yd = Vector256.Load(px + i + 24) * vs;
                    var ra = Vector256.Round(ya);
                    var rb = Vector256.Round(yb);
                    var rc = Vector256.Round(yc);
                    var rd = Vector256.Round(yd);
                    var a = Vector256.Clamp(Vector256.ConvertToInt32(ra), lo, hi);
                    var b = Vector256.Clamp(Vector256.ConvertToInt32(rb), lo, hi);
                    var c = Vector256.Clamp(Vector256.ConvertToInt32(rc), lo, hi);
                    var d = Vector256.Clamp(Vector256.ConvertToInt32(rd), lo, hi);
                    acc += (a + b) + (c + d);
                    Vector256.Narrow(Vector256.Narrow(a, b), Vector256.Narrow(c, d)).Store(pq + i);
                    var off = Vector256.MaxNative(Vector256.MaxNative(Vector256.Abs(ya - ra), Vector256.Abs(yb - rb)), Vector256.MaxNative(Vector256.Abs(yc - rc), Vector256.Abs(yd - rd)));
                    if (Vector256.GreaterThanAny(off, near))
                    {
                        ulong lanes = Vector256.GreaterThan(Vector256.Abs(ya - ra), near).ExtractMostSignificantBits()
                            | (ulong)Vector256.GreaterThan(Vector256.Abs(yb - rb), near).ExtractMostSignificantBits() << 8
                            | (ulong)Vector256.GreaterThan(Vector256.Abs(yc - rc), near).ExtractMostSignificantBits() << 16
                            | (ulong)Vector256.GreaterThan(Vector256.Abs(yd - rd), near).ExtractMostSignificantBits() << 24;
                        sum += FixNearTies(px + i, pq + i, lanes, gamma);
                    }
                }
                sum += Vector256.Sum(acc);
            }
            else if (vectorBits >= 128 && vectorBits < 512 && Vector128.IsHardwareAccelerated && n - i >= 16)
            {
                var vs = Vector128.Create(s);
                var near = Vector128.Create(NearTie);
                var lo = Vector128.Create(-128);
                var hi = Vector128.Create(127);
                var acc = Vector128<int>.Zero;
                for (; i <= n - 16; i += 16)
                {
                    var ya = Vector128.Load(px + i) * vs;
                    var yb = Vector128.Load(px + i + 4) * vs;
                    var yc = Vector128.Load(px + i + 8) * vs;
                    var yd = Vector128.Load(px + i + 12) * vs;
                    var ra = Vector128.Round(ya);
                    var rb = Vector128.Round(yb);
                    var rc = Vector128.Round(yc);
                    var rd = Vector128.Round(yd);
                    var a = Vector128.Clamp(Vector128.ConvertToInt32(ra), lo, hi);
                    var b = Vector128.Clamp(Vector128.ConvertToInt32(rb), lo, hi);
                    var c = Vector128.Clamp(Vector128.ConvertToInt32(rc), lo, hi);
                    var d = Vector128.Clamp(Vector128.ConvertToInt32(rd), lo, hi);
                    acc += (a + b) + (c + d);
                    Vector128.Narrow(Vector128.Narrow(a, b), Vector128.Narrow(c, d)).Store(pq + i);
                    var off = Vector128.MaxNative(Vector128.MaxNative(Vector128.Abs(ya - ra), Vector128.Abs(yb - rb)), Vector128.MaxNative(Vector128.Abs(yc - rc), Vector128.Abs(yd - rd)));
                    if (Vector128.GreaterThanAny(off, near))
                    {
                        ulong lanes = Vector128.GreaterThan(Vector128.Abs(ya - ra), near).ExtractMostSignificantBits()
                            | (ulong)Vector128.GreaterThan(Vector128.Abs(yb - rb), near).ExtractMostSignificantBits() << 4
                            | (ulong)Vector128.GreaterThan(Vector128.Abs(yc - rc), near).ExtractMostSignificantBits() << 8
                            | (ulong)Vector128.GreaterThan(Vector128.Abs(yd - rd), near).ExtractMostSignificantBits() << 12;
                        sum += FixNearTies(px + i, pq + i, lanes, gamma);
                    }
                }
                sum += Vector128.Sum(acc);
            }
            for (; i < n; i++)
            {
                int v = CodeOf(px[i], s, gamma);
                pq[i] = (sbyte)v;
                sum += v;
            }
        }
        q[n..].Clear();
    }

    /// <summary>
    /// The trainer's fake quantizer (<see cref="Training.Layers.BitLinear"/>): the same codes as
    /// <see cref="Quantize(ReadOnlySpan{float}, Span{sbyte}, out float, out int)"/>, stored as floats; returns s_x.
    /// </summary>
    public static float QuantizeToFloatCodes(ReadOnlySpan<float> x, Span<float> q)
    {
        if (q.Length < x.Length) throw new ArgumentException("Output is shorter than the input.", nameof(q));
        double gamma = Gamma(AbsMax(x));
        float s = (float)(127.0 / gamma);
        int n = x.Length, i = 0;
        fixed (float* px = x)
        fixed (float* pq = q)
        {
            if (Vector256.IsHardwareAccelerated)
            {
                var vs = Vector256.Create(s);
                var near = Vector256.Create(NearTie);
                var lo = Vector256.Create(-128f);
                var hi = Vector256.Create(127f);
                for (; i <= n - 8; i += 8)
                {
                    var y = Vector256.Load(px + i) * vs;
                    var r = Vector256.Round(y);
                    if (Vector256.GreaterThanAny(Vector256.Abs(y - r), near))
                        for (int j = i; j < i + 8; j++) pq[j] = ExactCode(px[j], gamma);
                    else Vector256.Clamp(r, lo, hi).Store(pq + i);
                }
            }
            for (; i < n; i++) pq[i] = CodeOf(px[i], s, gamma);
        }
        return s;
    }

    /// <summary>The scalar reference, written for reading, against which every fast path is tested.</summary>
    public static void QuantizeReference(ReadOnlySpan<float> x, Span<sbyte> q, out float scale, out int sum)
    {
        float absMax = 0f;
        foreach (float v in x) absMax = MathF.Max(absMax, MathF.Abs(v));
        double gamma = Gamma(absMax);
        scale = (float)(127.0 / gamma);
        sum = 0;
        for (int i = 0; i < x.Length; i++)
        {
            q[i] = (sbyte)ExactCode(x[i], gamma);
            sum += q[i];
        }
        q[x.Length..].Clear();
    }

    /// <summary>round(x·s_x) in fp32 where that is provably the exact code, else <see cref="ExactCode"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int CodeOf(float x, float s, double gamma)
    {
        float y = x * s, r = MathF.Round(y);
        return MathF.Abs(y - r) > NearTie ? ExactCode(x, gamma) : Math.Clamp((int)r, -128, 127);
    }

    /// <summary>clamp((int)r, −128, 127) of integral (or NaN) r: one vcvtps2dq, NaN lanes 0 as the saturating conversion gives.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<int> Codes(Vector512<float> r, Vector512<int> lo, Vector512<int> hi) =>
        Vector512.Clamp(Avx512F.ConvertToVector512Int32(r) & Vector512.Equals(r, r).AsInt32(), lo, hi);

    /// <summary>Recodes the elements of a block whose bit is set in <paramref name="lanes"/> exactly; returns the change of Σq.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static int FixNearTies(float* x, sbyte* q, ulong lanes, double gamma)
    {
        int delta = 0;
        for (; lanes != 0; lanes &= lanes - 1)
        {
            int j = System.Numerics.BitOperations.TrailingZeroCount(lanes);
            int v = ExactCode(x[j], gamma);
            delta += v - q[j];
            q[j] = (sbyte)v;
        }
        return delta;
    }

    /// <summary>
    /// max |x_i| (NaN-free inputs assumed; a NaN is the logit/activation monitor's job to flag). Four accumulators, so
    /// the loop is not one chain of Max latencies; max is exact in any order.
    /// </summary>
    public static float AbsMax(ReadOnlySpan<float> x)
    {
        int n = x.Length, i = 0;
        float m = 0f;
        fixed (float* p = x)
        {
            if (Vector512.IsHardwareAccelerated && n >= 64)
            {
                Vector512<float> a0 = Vector512<float>.Zero, a1 = a0, a2 = a0, a3 = a0;
                for (; i <= n - 64; i += 64)
                {
                    a0 = Vector512.Max(a0, Vector512.Abs(Vector512.Load(p + i)));
                    a1 = Vector512.Max(a1, Vector512.Abs(Vector512.Load(p + i + 16)));
                    a2 = Vector512.Max(a2, Vector512.Abs(Vector512.Load(p + i + 32)));
                    a3 = Vector512.Max(a3, Vector512.Abs(Vector512.Load(p + i + 48)));
                }
                for (; i <= n - 16; i += 16) a0 = Vector512.Max(a0, Vector512.Abs(Vector512.Load(p + i)));
                var acc = Vector512.Max(Vector512.Max(a0, a1), Vector512.Max(a2, a3));
                for (int k = 0; k < 16; k++) m = MathF.Max(m, acc[k]);
            }
            else if (Vector256.IsHardwareAccelerated && n >= 8)
            {
                Vector256<float> a0 = Vector256<float>.Zero, a1 = a0, a2 = a0, a3 = a0;
                for (; i <= n - 32; i += 32)
                {
                    a0 = Vector256.Max(a0, Vector256.Abs(Vector256.Load(p + i)));
                    a1 = Vector256.Max(a1, Vector256.Abs(Vector256.Load(p + i + 8)));
                    a2 = Vector256.Max(a2, Vector256.Abs(Vector256.Load(p + i + 16)));
                    a3 = Vector256.Max(a3, Vector256.Abs(Vector256.Load(p + i + 24)));
                }
                for (; i <= n - 8; i += 8) a0 = Vector256.Max(a0, Vector256.Abs(Vector256.Load(p + i)));
                var acc = Vector256.Max(Vector256.Max(a0, a1), Vector256.Max(a2, a3));
                for (int k = 0; k < 8; k++) m = MathF.Max(m, acc[k]);
            }
            else if (Vector128.IsHardwareAccelerated && n >= 4)
            {
                Vector128<float> a0 = Vector128<float>.Zero, a1 = a0, a2 = a0, a3 = a0;
                for (; i <= n - 16; i += 16)
                {
                    a0 = Vector128.Max(a0, Vector128.Abs(Vector128.Load(p + i)));
                    a1 = Vector128.Max(a1, Vector128.Abs(Vector128.Load(p + i + 4)));
                    a2 = Vector128.Max(a2, Vector128.Abs(Vector128.Load(p + i + 8)));
                    a3 = Vector128.Max(a3, Vector128.Abs(Vector128.Load(p + i + 12)));
                }
                for (; i <= n - 4; i += 4) a0 = Vector128.Max(a0, Vector128.Abs(Vector128.Load(p + i)));
                var acc = Vector128.Max(Vector128.Max(a0, a1), Vector128.Max(a2, a3));
                for (int k = 0; k < 4; k++) m = MathF.Max(m, acc[k]);
            }
            for (; i < n; i++) m = MathF.Max(m, MathF.Abs(p[i]));
        }
        return m;
    }
}
