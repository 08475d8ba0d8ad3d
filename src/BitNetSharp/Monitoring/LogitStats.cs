using System.Runtime.Intrinsics;

namespace BitNetSharp.Monitoring;

/// <summary>
/// The health of one logits row: smallest and largest finite logit, their range, the softmax entropy in nats
/// (0 = one token certain, ln V = uniform: a flat or collapsed output shows here), and how many entries are NaN or ±∞.
/// </summary>
public readonly record struct LogitStats(float Min, float Max, float Entropy, int NonFinite)
{
    public float Range => Max - Min;

    /// <summary>NaN or ±∞ entries in <paramref name="logits"/>, counted with vector compares (a scan, no exp).</summary>
    public static unsafe int CountNonFinite(ReadOnlySpan<float> logits)
    {
        int n = logits.Length, i = 0, count = 0;
        fixed (float* p = logits)
        {
            if (Vector256.IsHardwareAccelerated && n >= 8)
            {
                // x − x is 0 for finite x and NaN for NaN and ±∞; NaN ≠ NaN, so Equals marks exactly the finite lanes.
                var acc = Vector256<int>.Zero;
                for (; i <= n - 8; i += 8)
                {
                    var v = Vector256.Load(p + i);
                    acc -= ~Vector256.Equals(v - v, Vector256<float>.Zero).AsInt32();
                }
                count = Vector256.Sum(acc);
            }
            for (; i < n; i++) if (!float.IsFinite(p[i])) count++;
        }
        return count;
    }

    /// <summary>Min, max, entropy and the non-finite count of one row; non-finite entries are left out of the others.</summary>
    public static unsafe LogitStats Compute(ReadOnlySpan<float> logits)
    {
        int n = logits.Length;
        float min = float.PositiveInfinity, max = float.NegativeInfinity;
        int bad = 0;
        fixed (float* p = logits)
        {
            int i = 0;
            if (Vector256.IsHardwareAccelerated && n >= 8)
            {
                var vmin = Vector256.Create(float.PositiveInfinity);
                var vmax = Vector256.Create(float.NegativeInfinity);
                var badAcc = Vector256<int>.Zero;
                for (; i <= n - 8; i += 8)
                {
                    var v = Vector256.Load(p + i);
                    var finite = Vector256.Equals(v - v, Vector256<float>.Zero);
                    badAcc -= ~finite.AsInt32();
                    vmin = Vector256.Min(vmin, Vector256.ConditionalSelect(finite, v, Vector256.Create(float.PositiveInfinity)));
                    vmax = Vector256.Max(vmax, Vector256.ConditionalSelect(finite, v, Vector256.Create(float.NegativeInfinity)));
                }
                for (int k = 0; k < 8; k++)
                {
                    min = MathF.Min(min, vmin[k]);
                    max = MathF.Max(max, vmax[k]);
                }
                bad = Vector256.Sum(badAcc);
            }
            for (; i < n; i++)
            {
                float v = p[i];
                if (!float.IsFinite(v)) { bad++; continue; }
                min = MathF.Min(min, v);
                max = MathF.Max(max, v);
            }
            if (bad == n) return new LogitStats(float.NaN, float.NaN, float.NaN, bad);

            // H = ln Z − Σ e^z·z / Z with z = x − max ≤ 0; sums in double.
            double z = 0, ez = 0;
            i = 0;
            if (Vector256.IsHardwareAccelerated && n >= 8)
            {
                var m = Vector256.Create(max);
                Vector256<double> z0 = default, z1 = default, e0 = default, e1 = default;
                for (; i <= n - 8; i += 8)
                {
                    var v = Vector256.Load(p + i);
                    var finite = Vector256.Equals(v - v, Vector256<float>.Zero);
                    var d = Vector256.ConditionalSelect(finite, v - m, Vector256.Create(float.NegativeInfinity));
                    var e = Vector256.Exp(d);
                    // e = 0 adds nothing: a spread past float's range makes d −∞ and e·d NaN (0·∞).
                    var ed = Vector256.ConditionalSelect(finite & Vector256.GreaterThan(e, Vector256<float>.Zero), e * d, Vector256<float>.Zero);
                    z0 += Vector256.WidenLower(e);
                    z1 += Vector256.WidenUpper(e);
                    e0 += Vector256.WidenLower(ed);
                    e1 += Vector256.WidenUpper(ed);
                }
                z = Vector256.Sum(z0 + z1);
                ez = Vector256.Sum(e0 + e1);
            }
            for (; i < n; i++)
            {
                float v = p[i];
                if (!float.IsFinite(v)) continue;
                float d = v - max;
                float e = MathF.Exp(d);
                z += e;
                if (e > 0) ez += (double)e * d;
            }
            float entropy = (float)Math.Max(0, Math.Log(z) - ez / z);
            return new LogitStats(min, max, entropy, bad);
        }
    }

    /// <summary>The same statistics in double, one element at a time: what the vector path is tested against.</summary>
    public static LogitStats Reference(ReadOnlySpan<float> logits)
    {
        float min = float.PositiveInfinity, max = float.NegativeInfinity;
        int bad = 0;
        foreach (float v in logits)
        {
            if (!float.IsFinite(v)) { bad++; continue; }
            min = Math.Min(min, v);
            max = Math.Max(max, v);
        }
        if (bad == logits.Length) return new LogitStats(float.NaN, float.NaN, float.NaN, bad);
        double z = 0;
        foreach (float v in logits) if (float.IsFinite(v)) z += Math.Exp(v - (double)max);
        double h = 0;
        foreach (float v in logits)
        {
            if (!float.IsFinite(v)) continue;
            double pr = Math.Exp(v - (double)max) / z;
            if (pr > 0) h -= pr * Math.Log(pr);
        }
        return new LogitStats(min, max, (float)h, bad);
    }
}
