using BitNetSharp.Training;

namespace BitNetSharp.Tests.Training;

/// <summary>
/// An independent, plain double-precision implementation of the full-precision training graph (FORMATS.md §4.2 with
/// the quantizers off): loops straight from the formulas, no shared kernels, exact RoPE angles. The gradient check
/// differentiates this by central differences.
/// </summary>
internal sealed class NaiveTrainingForward(TrainingShape s)
{
    private readonly ParameterLayout _l = new(s);

    public double Loss(double[] p, int[] inputs, int[] targets, int batch, int T)
    {
        double total = 0;
        for (int b = 0; b < batch; b++)
        {
            var logits = Logits(p, inputs.AsSpan(b * T, T).ToArray());
            for (int t = 0; t < T; t++)
            {
                double max = logits[t].Max();
                double sum = logits[t].Sum(z => Math.Exp(z - max));
                total += Math.Log(sum) + max - logits[t][targets[b * T + t]];
            }
        }
        return total / (batch * T);
    }

    public double[][] Logits(double[] p, int[] tokens)
    {
        int T = tokens.Length, d = s.Dim, hd = s.HeadDim;
        var x = new double[T][];
        for (int t = 0; t < T; t++) x[t] = Row(p, _l.Embedding + tokens[t] * d, d);
        foreach (var o in _l.Layers)
        {
            var q = new double[T][];
            var k = new double[T][];
            var v = new double[T][];
            for (int t = 0; t < T; t++)
            {
                var a = Norm(x[t], p, o.AttnNorm);
                q[t] = Rope(MatVec(p, o.Q, s.QDim, d, a), t);
                k[t] = Rope(MatVec(p, o.K, s.KvDim, d, a), t);
                v[t] = MatVec(p, o.V, s.KvDim, d, a);
            }
            for (int t = 0; t < T; t++)
            {
                var att = new double[s.QDim];
                for (int h = 0; h < s.Heads; h++)
                {
                    int kvh = h / s.GroupSize;
                    var scores = new double[t + 1];
                    for (int u = 0; u <= t; u++)
                    {
                        double dot = 0;
                        for (int i = 0; i < hd; i++) dot += q[t][h * hd + i] * k[u][kvh * hd + i];
                        scores[u] = dot / Math.Sqrt(hd);
                    }
                    double max = scores.Max();
                    double sum = scores.Sum(z => Math.Exp(z - max));
                    for (int u = 0; u <= t; u++)
                    {
                        double w = Math.Exp(scores[u] - max) / sum;
                        for (int i = 0; i < hd; i++) att[h * hd + i] += w * v[u][kvh * hd + i];
                    }
                }
                var y = MatVec(p, o.O, d, s.QDim, Norm(att, p, o.AttnSubNorm));
                for (int i = 0; i < d; i++) x[t][i] += y[i];

                var f = Norm(x[t], p, o.FfnNorm);
                var g = MatVec(p, o.Gate, s.FeedForward, d, f);
                var up = MatVec(p, o.Up, s.FeedForward, d, f);
                var m = new double[s.FeedForward];
                for (int i = 0; i < m.Length; i++) m[i] = Math.Max(g[i], 0) * Math.Max(g[i], 0) * up[i];
                var down = MatVec(p, o.Down, d, s.FeedForward, Norm(m, p, o.FfnSubNorm));
                for (int i = 0; i < d; i++) x[t][i] += down[i];
            }
        }
        var logits = new double[T][];
        for (int t = 0; t < T; t++) logits[t] = MatVec(p, _l.Embedding, s.VocabSize, d, Norm(x[t], p, _l.OutputNorm));
        return logits;
    }

    private static double[] Row(double[] p, int offset, int n) => p.AsSpan(offset, n).ToArray();

    private static double[] MatVec(double[] p, int offset, int rows, int cols, double[] x)
    {
        var y = new double[rows];
        for (int r = 0; r < rows; r++)
        {
            double sum = 0;
            for (int c = 0; c < cols; c++) sum += p[offset + r * cols + c] * x[c];
            y[r] = sum;
        }
        return y;
    }

    private double[] Norm(double[] x, double[] p, int weight)
    {
        double ms = x.Sum(v => v * v) / x.Length;
        double r = 1 / Math.Sqrt(ms + s.RmsEps);
        var y = new double[x.Length];
        for (int i = 0; i < x.Length; i++) y[i] = x[i] * r * p[weight + i];
        return y;
    }

    private double[] Rope(double[] x, int pos)
    {
        int hd = s.HeadDim, half = hd / 2;
        var y = (double[])x.Clone();
        for (int h = 0; h < x.Length; h += hd)
        for (int i = 0; i < half; i++)
        {
            double angle = pos * Math.Pow(s.RopeTheta, -2.0 * i / hd);
            double c = Math.Cos(angle), sn = Math.Sin(angle);
            y[h + i] = x[h + i] * c - x[h + i + half] * sn;
            y[h + i + half] = x[h + i + half] * c + x[h + i] * sn;
        }
        return y;
    }
}
