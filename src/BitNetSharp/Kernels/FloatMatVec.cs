using System.Runtime.Intrinsics;

namespace BitNetSharp.Kernels;

/// <summary>
/// Dense fp32 mat-vec y = W·x (W row-major [rows, cols]) with FMA over the widest vectors: the yardstick the
/// ternary kernels are measured against, and the path for small float matrices.
/// </summary>
public static unsafe class FloatMatVec
{
    public static void Compute(float* w, int rows, int cols, float* x, float* y, int rowStart, int rowEnd)
    {
        for (int n = rowStart; n < rowEnd; n++)
            y[n] = Dot(w + (long)n * cols, x, cols);
    }

    public static float Dot(float* a, float* b, int n)
    {
        int i = 0;
        float sum = 0f;
        if (Vector512.IsHardwareAccelerated && n >= 64)
        {
            Vector512<float> s0 = default, s1 = default, s2 = default, s3 = default;
            for (; i <= n - 64; i += 64)
            {
                s0 = Vector512.FusedMultiplyAdd(Vector512.Load(a + i), Vector512.Load(b + i), s0);
                s1 = Vector512.FusedMultiplyAdd(Vector512.Load(a + i + 16), Vector512.Load(b + i + 16), s1);
                s2 = Vector512.FusedMultiplyAdd(Vector512.Load(a + i + 32), Vector512.Load(b + i + 32), s2);
                s3 = Vector512.FusedMultiplyAdd(Vector512.Load(a + i + 48), Vector512.Load(b + i + 48), s3);
            }
            sum = Vector512.Sum((s0 + s1) + (s2 + s3));
        }
        else if (Vector256.IsHardwareAccelerated && n >= 32)
        {
            Vector256<float> s0 = default, s1 = default, s2 = default, s3 = default;
            for (; i <= n - 32; i += 32)
            {
                s0 = Vector256.FusedMultiplyAdd(Vector256.Load(a + i), Vector256.Load(b + i), s0);
                s1 = Vector256.FusedMultiplyAdd(Vector256.Load(a + i + 8), Vector256.Load(b + i + 8), s1);
                s2 = Vector256.FusedMultiplyAdd(Vector256.Load(a + i + 16), Vector256.Load(b + i + 16), s2);
                s3 = Vector256.FusedMultiplyAdd(Vector256.Load(a + i + 24), Vector256.Load(b + i + 24), s3);
            }
            sum = Vector256.Sum((s0 + s1) + (s2 + s3));
        }
        else if (Vector128.IsHardwareAccelerated && n >= 16)
        {
            // 128-bit vectors only (ARM64's AdvSimd; this was a scalar loop there).
            Vector128<float> s0 = default, s1 = default, s2 = default, s3 = default;
            for (; i <= n - 16; i += 16)
            {
                s0 = HeadKernels.MulAdd128(Vector128.Load(a + i), Vector128.Load(b + i), s0);
                s1 = HeadKernels.MulAdd128(Vector128.Load(a + i + 4), Vector128.Load(b + i + 4), s1);
                s2 = HeadKernels.MulAdd128(Vector128.Load(a + i + 8), Vector128.Load(b + i + 8), s2);
                s3 = HeadKernels.MulAdd128(Vector128.Load(a + i + 12), Vector128.Load(b + i + 12), s3);
            }
            sum = Vector128.Sum((s0 + s1) + (s2 + s3));
        }
        for (; i < n; i++) sum += a[i] * b[i];
        return sum;
    }
}
