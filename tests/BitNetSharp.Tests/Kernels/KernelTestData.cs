using BitNetSharp.Kernels;
using BitNetSharp.Quantization;

namespace BitNetSharp.Tests.Kernels;

/// <summary>Random matrices and activation patterns shared by the kernel tests.</summary>
internal static unsafe class KernelTestData
{
    public static TernaryMatrix RandomTernary(Random rng, int rows, int cols, double zeroShare = 1.0 / 3)
    {
        var w = TernaryMatrix.Allocate(rows, cols);
        for (int r = 0; r < rows; r++)
        {
            w.RowScales[r] = 0.25f + (float)rng.NextDouble();
            for (int c = 0; c < cols; c++)
                w.Set(r, c, rng.NextDouble() < zeroShare ? 0 : (rng.Next(2) == 0 ? -1 : 1));
        }
        return w;
    }

    public static BinaryMatrix RandomBinary(Random rng, int rows, int cols)
    {
        var w = new BinaryMatrix(rows, cols);
        for (int r = 0; r < rows; r++)
        {
            w.RowScales[r] = 0.25f + (float)rng.NextDouble();
            for (int c = 0; c < cols; c++) w.Set(r, c, rng.Next(2) == 0 ? -1 : 1);
        }
        return w;
    }

    public enum Pattern { Random, AllEqual, Outlier, AllZero, Gaussianish }

    public static float[] Activations(Random rng, int cols, Pattern pattern) => pattern switch
    {
        Pattern.AllEqual => Enumerable.Repeat(0.37f, cols).ToArray(),
        Pattern.AllZero => new float[cols],
        Pattern.Outlier => Outlier(rng, cols),
        Pattern.Gaussianish => Enumerable.Range(0, cols).Select(_ => (float)((rng.NextDouble() + rng.NextDouble() + rng.NextDouble() - 1.5) * 3)).ToArray(),
        _ => Enumerable.Range(0, cols).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray(),
    };

    private static float[] Outlier(Random rng, int cols)
    {
        var x = Enumerable.Range(0, cols).Select(_ => (float)(rng.NextDouble() * 2 - 1) * 1e-3f).ToArray();
        x[rng.Next(cols)] = -5e4f;
        return x;
    }

    public static QuantizedActivations Quantize(float[][] tokens)
    {
        var qa = new QuantizedActivations(tokens.Length, tokens[0].Length);
        for (int t = 0; t < tokens.Length; t++) Int8ActivationQuantizer.Quantize(tokens[t], qa, t);
        return qa;
    }

    /// <summary>Σ_k t·q in 64-bit straight from the matrix accessors: an oracle independent of the packed-byte loops.</summary>
    public static float Oracle(TernaryMatrix w, QuantizedActivations x, int row, int token)
    {
        long d = 0;
        sbyte* q = x.Row(token);
        for (int c = 0; c < w.Cols; c++) d += w.Get(row, c) * q[c];
        return (float)d / x.Scales[token] * w.RowScales[row];
    }
}
