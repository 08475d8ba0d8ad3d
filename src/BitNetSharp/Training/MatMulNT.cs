using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using BitNetSharp.Threading;

namespace BitNetSharp.Training;

/// <summary>
/// The one fp32 matrix product the trainer uses: C[i, j] = (Σ_k A[i, k] · B[j, k]) / div[i] · scale, optionally added
/// to C. Both operands are row-major with k contiguous ("NT"), so every forward and backward product of a linear
/// layer is this kernel after at most a transpose: forward y = x·Wᵀ, input gradient dx = dy·(Wᵀ)ᵀ, weight gradient
/// dW = dyᵀ·(xᵀ)ᵀ. The epilogue is the engine's ternary epilogue in the same fp32 order (÷ s_x, then × β,
/// <see cref="Kernels.TernaryKernel.Epilogue"/>), so with integer-valued A and B — int8 codes and ternary codes,
/// whose partial sums stay exact below 2^24 — the trainer's quantized forward equals the engine's bit for bit.
/// <para>
/// Split over groups of 4 rows of A, each output element computed by one thread in a fixed k order: the result does
/// not depend on the thread count. Register tile: with 512-bit vectors 4 rows of A × 4 rows of B (16 accumulators),
/// else 2 × 4 (8 accumulators + 6 operands ≤ 16 ymm); B is walked in panels of <see cref="PanelRows"/> rows so a
/// panel stays in L2 while every A row group passes over it.
/// </para>
/// </summary>
public sealed unsafe class MatMulNT : IParallelWork
{
    private const int PanelRows = 64;
    private const int RowGroup = 4; // rows of A per work item (one 4×4 tile, or two 2×4 tiles)

    /// <summary>
    /// The 512-bit 4×4 tile (16 accumulators + 5 operands of the 32 zmm registers: half the loads per FMA of the
    /// 256-bit 2×4 tile). Set per instance from <see cref="Vector512.IsHardwareAccelerated"/>; tests turn it off to
    /// compare the two tiles, and `quick-matmul` in bench/BitNetSharp.Benchmarks times one against the other.
    /// </summary>
    public bool Use512 { get; set; } = Vector512.IsHardwareAccelerated;
    private readonly WorkerPool _pool;
    private float* _a, _b, _c, _div;
    private int _m, _n, _k, _lda, _ldb, _ldc;
    private float _scale;
    private bool _accumulate;

    public MatMulNT(WorkerPool pool) => _pool = pool;

    /// <param name="div">Per-row divisor of the result (the activation scale s_x), or null.</param>
    public void Run(float* a, float* b, float* c, int m, int n, int k, bool accumulate = false, float* div = null, float scale = 1f) =>
        Run(a, k, b, k, c, n, m, n, k, accumulate, div, scale);

    public void Run(float* a, int lda, float* b, int ldb, float* c, int ldc, int m, int n, int k, bool accumulate, float* div, float scale)
    {
        _a = a;
        _lda = lda;
        _b = b;
        _ldb = ldb;
        _c = c;
        _ldc = ldc;
        _m = m;
        _n = n;
        _k = k;
        _accumulate = accumulate;
        _div = div;
        _scale = scale;
        _pool.Run(this, (m + RowGroup - 1) / RowGroup);
    }

    public void Execute(int start, int end, int worker)
    {
        int i0 = RowGroup * start, i1 = Math.Min(RowGroup * end, _m);
        float* s = stackalloc float[16];
        bool wide = Use512;
        for (int j0 = 0; j0 < _n; j0 += PanelRows)
        {
            int j1 = Math.Min(_n, j0 + PanelRows);
            for (int i = i0; i < i1; i += RowGroup)
            {
                int rows = Math.Min(RowGroup, i1 - i);
                float* a0 = _a + (long)i * _lda;
                if (wide)
                {
                    // 4 rows of A × 4 rows of B per call (rows past the end repeat row 0 and are not stored).
                    float* a1 = rows > 1 ? a0 + _lda : a0, a2 = rows > 2 ? a0 + 2L * _lda : a0, a3 = rows > 3 ? a0 + 3L * _lda : a0;
                    int j = j0;
                    for (; j + 4 <= j1; j += 4)
                    {
                        float* b0 = _b + (long)j * _ldb;
                        Kernel4x4(a0, a1, a2, a3, b0, b0 + _ldb, b0 + 2 * _ldb, b0 + 3 * _ldb, _k, s);
                        for (int r = 0; r < rows; r++)
                        for (int q = 0; q < 4; q++) Store(i + r, j + q, s[4 * r + q]);
                    }
                    for (; j < j1; j++)
                    {
                        float* bj = _b + (long)j * _ldb;
                        for (int r = 0; r < rows; r++) Store(i + r, j, Dot(a0 + (long)r * _lda, bj, _k));
                    }
                    continue;
                }
                for (int i2 = i; i2 < i + rows; i2 += 2)
                {
                    bool two = i2 + 1 < i + rows;
                    float* r0 = _a + (long)i2 * _lda, r1 = two ? r0 + _lda : r0;
                    int j = j0;
                    for (; j + 4 <= j1; j += 4)
                    {
                        float* b0 = _b + (long)j * _ldb;
                        Kernel2x4(r0, r1, b0, b0 + _ldb, b0 + 2 * _ldb, b0 + 3 * _ldb, _k, s);
                        for (int q = 0; q < 4; q++)
                        {
                            Store(i2, j + q, s[q]);
                            if (two) Store(i2 + 1, j + q, s[4 + q]);
                        }
                    }
                    for (; j < j1; j++)
                    {
                        float* bj = _b + (long)j * _ldb;
                        Store(i2, j, Dot(r0, bj, _k));
                        if (two) Store(i2 + 1, j, Dot(r1, bj, _k));
                    }
                }
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Store(int i, int j, float sum)
    {
        float v = _div != null ? sum / _div[i] * _scale : sum * _scale;
        float* c = _c + (long)i * _ldc + j;
        *c = _accumulate ? *c + v : v;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Fmadd(Vector256<float> a, Vector256<float> b, Vector256<float> c) =>
        Fma.IsSupported ? Fma.MultiplyAdd(a, b, c) : a * b + c;

    private static void Kernel2x4(float* a0, float* a1, float* b0, float* b1, float* b2, float* b3, int k, float* s)
    {
        int p = 0;
        if (Vector256.IsHardwareAccelerated && k >= 8)
        {
            Vector256<float> c00 = default, c01 = default, c02 = default, c03 = default;
            Vector256<float> c10 = default, c11 = default, c12 = default, c13 = default;
            for (; p <= k - 8; p += 8)
            {
                var x0 = Vector256.Load(a0 + p);
                var x1 = Vector256.Load(a1 + p);
                var w = Vector256.Load(b0 + p);
                c00 = Fmadd(x0, w, c00); c10 = Fmadd(x1, w, c10);
                w = Vector256.Load(b1 + p);
                c01 = Fmadd(x0, w, c01); c11 = Fmadd(x1, w, c11);
                w = Vector256.Load(b2 + p);
                c02 = Fmadd(x0, w, c02); c12 = Fmadd(x1, w, c12);
                w = Vector256.Load(b3 + p);
                c03 = Fmadd(x0, w, c03); c13 = Fmadd(x1, w, c13);
            }
            s[0] = Vector256.Sum(c00); s[1] = Vector256.Sum(c01); s[2] = Vector256.Sum(c02); s[3] = Vector256.Sum(c03);
            s[4] = Vector256.Sum(c10); s[5] = Vector256.Sum(c11); s[6] = Vector256.Sum(c12); s[7] = Vector256.Sum(c13);
        }
        else new Span<float>(s, 8).Clear();
        for (; p < k; p++)
        {
            float x0 = a0[p], x1 = a1[p];
            s[0] += x0 * b0[p]; s[1] += x0 * b1[p]; s[2] += x0 * b2[p]; s[3] += x0 * b3[p];
            s[4] += x1 * b0[p]; s[5] += x1 * b1[p]; s[6] += x1 * b2[p]; s[7] += x1 * b3[p];
        }
    }

    private static void Kernel4x4(float* a0, float* a1, float* a2, float* a3, float* b0, float* b1, float* b2, float* b3, int k, float* s)
    {
        Vector512<float> c00 = default, c01 = default, c02 = default, c03 = default;
        Vector512<float> c10 = default, c11 = default, c12 = default, c13 = default;
        Vector512<float> c20 = default, c21 = default, c22 = default, c23 = default;
        Vector512<float> c30 = default, c31 = default, c32 = default, c33 = default;
        int p = 0;
        for (; p <= k - 16; p += 16)
        {
            var x0 = Vector512.Load(a0 + p);
            var x1 = Vector512.Load(a1 + p);
            var x2 = Vector512.Load(a2 + p);
            var x3 = Vector512.Load(a3 + p);
            var w = Vector512.Load(b0 + p);
            c00 = Vector512.FusedMultiplyAdd(x0, w, c00); c10 = Vector512.FusedMultiplyAdd(x1, w, c10);
            c20 = Vector512.FusedMultiplyAdd(x2, w, c20); c30 = Vector512.FusedMultiplyAdd(x3, w, c30);
            w = Vector512.Load(b1 + p);
            c01 = Vector512.FusedMultiplyAdd(x0, w, c01); c11 = Vector512.FusedMultiplyAdd(x1, w, c11);
            c21 = Vector512.FusedMultiplyAdd(x2, w, c21); c31 = Vector512.FusedMultiplyAdd(x3, w, c31);
            w = Vector512.Load(b2 + p);
            c02 = Vector512.FusedMultiplyAdd(x0, w, c02); c12 = Vector512.FusedMultiplyAdd(x1, w, c12);
            c22 = Vector512.FusedMultiplyAdd(x2, w, c22); c32 = Vector512.FusedMultiplyAdd(x3, w, c32);
            w = Vector512.Load(b3 + p);
            c03 = Vector512.FusedMultiplyAdd(x0, w, c03); c13 = Vector512.FusedMultiplyAdd(x1, w, c13);
            c23 = Vector512.FusedMultiplyAdd(x2, w, c23); c33 = Vector512.FusedMultiplyAdd(x3, w, c33);
        }
        s[0] = Vector512.Sum(c00); s[1] = Vector512.Sum(c01); s[2] = Vector512.Sum(c02); s[3] = Vector512.Sum(c03);
        s[4] = Vector512.Sum(c10); s[5] = Vector512.Sum(c11); s[6] = Vector512.Sum(c12); s[7] = Vector512.Sum(c13);
        s[8] = Vector512.Sum(c20); s[9] = Vector512.Sum(c21); s[10] = Vector512.Sum(c22); s[11] = Vector512.Sum(c23);
        s[12] = Vector512.Sum(c30); s[13] = Vector512.Sum(c31); s[14] = Vector512.Sum(c32); s[15] = Vector512.Sum(c33);
        for (; p < k; p++)
        {
            float x0 = a0[p], x1 = a1[p], x2 = a2[p], x3 = a3[p];
            float w0 = b0[p], w1 = b1[p], w2 = b2[p], w3 = b3[p];
            s[0] += x0 * w0; s[1] += x0 * w1; s[2] += x0 * w2; s[3] += x0 * w3;
            s[4] += x1 * w0; s[5] += x1 * w1; s[6] += x1 * w2; s[7] += x1 * w3;
            s[8] += x2 * w0; s[9] += x2 * w1; s[10] += x2 * w2; s[11] += x2 * w3;
            s[12] += x3 * w0; s[13] += x3 * w1; s[14] += x3 * w2; s[15] += x3 * w3;
        }
    }

    /// <summary>Σ x[p]·y[p], two vector accumulators then a scalar tail.</summary>
    public static float Dot(float* x, float* y, int k)
    {
        int p = 0;
        float sum = 0f;
        if (Vector256.IsHardwareAccelerated && k >= 8)
        {
            Vector256<float> c0 = default, c1 = default;
            for (; p <= k - 16; p += 16)
            {
                c0 = Fmadd(Vector256.Load(x + p), Vector256.Load(y + p), c0);
                c1 = Fmadd(Vector256.Load(x + p + 8), Vector256.Load(y + p + 8), c1);
            }
            if (p <= k - 8)
            {
                c0 = Fmadd(Vector256.Load(x + p), Vector256.Load(y + p), c0);
                p += 8;
            }
            sum = Vector256.Sum(c0 + c1);
        }
        for (; p < k; p++) sum += x[p] * y[p];
        return sum;
    }

    /// <summary>y[p] += a · x[p].</summary>
    public static void Axpy(float a, float* x, float* y, int k)
    {
        int p = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var va = Vector256.Create(a);
            for (; p <= k - 8; p += 8) Fmadd(va, Vector256.Load(x + p), Vector256.Load(y + p)).Store(y + p);
        }
        for (; p < k; p++) y[p] += a * x[p];
    }

    /// <summary>The definition, for tests: double accumulation, no tiling.</summary>
    public static void Reference(float* a, float* b, float* c, int m, int n, int k, bool accumulate, float* div, float scale)
    {
        for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++)
        {
            double sum = 0;
            for (int p = 0; p < k; p++) sum += (double)a[(long)i * k + p] * b[(long)j * k + p];
            float v = div != null ? (float)sum / div[i] * scale : (float)sum * scale;
            c[(long)i * n + j] = accumulate ? c[(long)i * n + j] + v : v;
        }
    }
}

/// <summary>dst[c, r] = src[r, c] / div[r] (div optional), split over blocks of source columns.</summary>
public sealed unsafe class Transpose : IParallelWork
{
    private const int Block = 16;
    private readonly WorkerPool _pool;
    private float* _src, _dst, _div;
    private int _rows, _cols, _lds, _ldd;

    public Transpose(WorkerPool pool) => _pool = pool;

    public void Run(float* src, int rows, int cols, float* dst, float* div = null) => Run(src, rows, cols, cols, dst, rows, div);

    public void Run(float* src, int rows, int cols, int lds, float* dst, int ldd, float* div)
    {
        _src = src;
        _rows = rows;
        _cols = cols;
        _lds = lds;
        _dst = dst;
        _ldd = ldd;
        _div = div;
        _pool.Run(this, (cols + Block - 1) / Block);
    }

    public void Execute(int start, int end, int worker)
    {
        int c0 = start * Block, c1 = Math.Min(end * Block, _cols);
        for (int r0 = 0; r0 < _rows; r0 += Block)
        {
            int r1 = Math.Min(r0 + Block, _rows);
            for (int c = c0; c < c1; c += Block)
            {
                int ce = Math.Min(c + Block, c1);
                for (int r = r0; r < r1; r++)
                {
                    float* s = _src + (long)r * _lds;
                    float inv = _div != null ? _div[r] : 1f;
                    if (_div != null)
                        for (int cc = c; cc < ce; cc++) _dst[(long)cc * _ldd + r] = s[cc] / inv;
                    else
                        for (int cc = c; cc < ce; cc++) _dst[(long)cc * _ldd + r] = s[cc];
                }
            }
        }
    }
}
