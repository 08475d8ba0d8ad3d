using BitNetSharp.Monitoring;
using BitNetSharp.Kernels;
using BitNetSharp.Model;
using BitNetSharp.Quantization;

namespace BitNetSharp.Tests.Model;

/// <summary>
/// A deliberately plain forward pass written straight from FORMATS.md §4.2 and §4.4 — dequantized float weights,
/// double-precision norms, RoPE, softmax and dot products, one token at a time, its own KV lists — to check the
/// engine's batched, SIMD, int8-kernel path against. Shares nothing with the engine but the activation quantizer's
/// reference (the int8 codes are part of the model's definition).
/// </summary>
internal sealed class NaiveForward
{
    private readonly ModelWeights _w;
    private readonly ModelConfig _c;
    private readonly List<double[]>[] _k, _v;
    private readonly float[][][] _dense; // [layer][q,k,v,o,gate,up,down] row-major (out, in)

    public NaiveForward(ModelWeights w)
    {
        _w = w;
        _c = w.Config;
        _k = Enumerable.Range(0, _c.Layers).Select(_ => new List<double[]>()).ToArray();
        _v = Enumerable.Range(0, _c.Layers).Select(_ => new List<double[]>()).ToArray();
        _dense = w.Layers.Select(l => new[] { l.Q, l.K, l.V, l.O, l.Gate, l.Up, l.Down }.Select(Dequantizer.ToFloat).ToArray()).ToArray();
    }

    private static double[] RmsNorm(double[] x, float[] w, float eps)
    {
        double ss = x.Sum(v => v * v) / x.Length;
        double inv = 1.0 / Math.Sqrt(ss + eps);
        return x.Select((v, i) => v * inv * w[i]).ToArray();
    }

    /// <summary>Activation bit widths per layer and input (null: 8 everywhere); b &lt; 8 quantizes with <see cref="ExactLowBit"/>.</summary>
    public ActivationBits? Bits { get; init; }

    private double[] Linear(float[] w, int rows, int cols, double[] x, int layer, BitLinearInput input)
    {
        int bits = Bits?[layer, input] ?? 8;
        return bits == 8 ? Linear(w, rows, cols, x) : LinearLowBit(w, rows, cols, x, bits);
    }

    /// <summary>
    /// b-bit absmax quantization written independently of the engine: round half to even of the real quotient
    /// x·m/γ (m = 2^(b−1) − 1, γ = max(max|x|, 1e−5)), computed on exact rationals (BigInteger).
    /// </summary>
    internal static int ExactLowBit(float x, double gamma, int m)
    {
        static (System.Numerics.BigInteger Mantissa, int Exponent) Dyadic(double d)
        {
            if (d == 0) return (0, 0);
            int e = Math.ILogB(d) - 52;
            return (new System.Numerics.BigInteger(Math.ScaleB(d, -e)), e); // |d|·2^−e < 2^53: an exact integer
        }
        var (xn, xe) = Dyadic(x);
        var (gn, ge) = Dyadic(gamma);
        var num = xn * m;
        var den = gn;
        int shift = xe - ge;
        if (shift >= 0) num <<= shift; else den <<= -shift;
        var q = System.Numerics.BigInteger.DivRem(num, den, out var r);
        if (r < 0) { q -= 1; r += den; } // floor
        int c = (2 * r).CompareTo(den);
        if (c > 0 || (c == 0 && !q.IsEven)) q += 1;
        return (int)System.Numerics.BigInteger.Max(-m - 1, System.Numerics.BigInteger.Min(m, q));
    }

    /// <summary>
    /// In the last <see cref="Step"/>, the smallest distance (in code units) of any b &lt; 8 input's x·m/γ from a rounding
    /// boundary: where it is tiny, the engine's fp32 input may legitimately round to the neighbouring code.
    /// </summary>
    public double LowBitMargin { get; private set; } = double.PositiveInfinity;

    private double[] LinearLowBit(float[] w, int rows, int cols, double[] x, int bits)
    {
        var xf = x.Select(v => (float)v).ToArray();
        int m = (1 << (bits - 1)) - 1;
        double gamma = Math.Max(xf.Max(v => (double)Math.Abs(v)), 1e-5);
        var q = xf.Select(v => ExactLowBit(v, gamma, m)).ToArray();
        foreach (float v in xf)
        {
            double code = v * (double)m / gamma;
            LowBitMargin = Math.Min(LowBitMargin, Math.Abs(Math.Abs(code - Math.Floor(code)) - 0.5));
        }
        return MatVec(w, rows, cols, q, (float)(m / gamma));
    }

    /// <summary>BitLinear: per-token int8 fake quantization of the input, then the dequantized ternary matrix.</summary>
    private static double[] Linear(float[] w, int rows, int cols, double[] x)
    {
        var xf = x.Select(v => (float)v).ToArray();
        var q = new sbyte[cols];
        Int8ActivationQuantizer.QuantizeReference(xf, q, out float s, out _);
        return MatVec(w, rows, cols, Array.ConvertAll(q, v => (int)v), s);
    }

    /// <summary>y = W·q / s in double: the dequantized matrix times the integer codes, divided by the activation scale.</summary>
    private static double[] MatVec(float[] w, int rows, int cols, int[] q, float s)
    {
        var y = new double[rows];
        for (int r = 0; r < rows; r++)
        {
            double acc = 0;
            for (int c = 0; c < cols; c++) acc += w[r * cols + c] * (double)q[c];
            y[r] = acc / s;
        }
        return y;
    }

    private void Rope(double[] v, int offset, int pos)
    {
        int hd = _c.HeadDim, half = hd / 2;
        for (int i = 0; i < half; i++)
        {
            double theta = pos * Math.Pow(_c.RopeTheta, -2.0 * i / hd);
            double cos = Math.Cos(theta), sin = Math.Sin(theta);
            double a = v[offset + i], b = v[offset + i + half];
            v[offset + i] = a * cos - b * sin;
            v[offset + i + half] = b * cos + a * sin;
        }
    }

    /// <summary>The final normalized hidden state of the last <see cref="Step"/>, the vector the output head multiplies.</summary>
    public double[] LastHidden { get; private set; } = [];

    /// <summary>Logits of the token at <paramref name="pos"/> (positions must be fed in order from 0).</summary>
    public double[] Step(int token, int pos)
    {
        LowBitMargin = double.PositiveInfinity;
        var c = _c;
        var row = new float[c.Dim];
        _w.TokenEmbedding.GetRow(token, row);
        var h = row.Select(v => (double)v).ToArray();
        for (int l = 0; l < c.Layers; l++)
        {
            var lw = _w.Layers[l];
            var d = _dense[l];
            var a = RmsNorm(h, lw.AttnNorm, c.RmsEps);
            var q = Linear(d[0], c.QDim, c.Dim, a, l, BitLinearInput.Qkv);
            var k = Linear(d[1], c.KvDim, c.Dim, a, l, BitLinearInput.Qkv);
            var v = Linear(d[2], c.KvDim, c.Dim, a, l, BitLinearInput.Qkv);
            for (int hh = 0; hh < c.Heads; hh++) Rope(q, hh * c.HeadDim, pos);
            for (int hh = 0; hh < c.KvHeads; hh++) Rope(k, hh * c.HeadDim, pos);
            _k[l].Add(k);
            _v[l].Add(v);
            var att = new double[c.QDim];
            for (int hh = 0; hh < c.Heads; hh++)
            {
                int kv = hh / c.GroupSize;
                var scores = new double[pos + 1];
                for (int p = 0; p <= pos; p++)
                {
                    double s = 0;
                    for (int i = 0; i < c.HeadDim; i++) s += q[hh * c.HeadDim + i] * _k[l][p][kv * c.HeadDim + i];
                    scores[p] = s / Math.Sqrt(c.HeadDim);
                }
                double max = scores.Max();
                var e = scores.Select(s => Math.Exp(s - max)).ToArray();
                double sum = e.Sum();
                for (int p = 0; p <= pos; p++)
                for (int i = 0; i < c.HeadDim; i++)
                    att[hh * c.HeadDim + i] += e[p] / sum * _v[l][p][kv * c.HeadDim + i];
            }
            if (lw.AttnSubNorm is { } asn) att = RmsNorm(att, asn, c.RmsEps);
            var o = Linear(d[3], c.Dim, c.QDim, att, l, BitLinearInput.O);
            for (int i = 0; i < c.Dim; i++) h[i] += o[i];

            var f = RmsNorm(h, lw.FfnNorm, c.RmsEps);
            var g = Linear(d[4], c.FeedForward, c.Dim, f, l, BitLinearInput.GateUp);
            var u = Linear(d[5], c.FeedForward, c.Dim, f, l, BitLinearInput.GateUp);
            var m = new double[c.FeedForward];
            for (int i = 0; i < m.Length; i++)
                m[i] = c.Activation == FeedForwardActivation.ReluSquared
                    ? Math.Pow(Math.Max(g[i], 0), 2) * u[i]
                    : g[i] / (1 + Math.Exp(-g[i])) * u[i];
            if (lw.FfnSubNorm is { } fsn) m = RmsNorm(m, fsn, c.RmsEps);
            var down = Linear(d[6], c.Dim, c.FeedForward, m, l, BitLinearInput.Down);
            for (int i = 0; i < c.Dim; i++) h[i] += down[i];
        }
        var hn = RmsNorm(h, _w.OutputNorm, c.RmsEps);
        LastHidden = hn;
        var logits = new double[c.VocabSize];
        var e2 = new float[c.Dim];
        for (int t = 0; t < c.VocabSize; t++)
        {
            _w.Output.GetRow(t, e2);
            double s = 0;
            for (int i = 0; i < c.Dim; i++) s += e2[i] * hn[i];
            logits[t] = s;
        }
        return logits;
    }
}
