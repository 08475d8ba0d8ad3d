namespace BitNetSharp.Kernels.FloatOps;

/// <summary>
/// The widest vector a float op may use, as a type: each op's vector path is one generic method whose width
/// tests become JIT constants, so the public entry points run <see cref="WidestVector"/> and the tests run every
/// narrower width this CPU supports (an AVX-512 machine also checks the AVX2 and SSE/NEON loops).
/// </summary>
public interface IVectorWidth
{
    /// <summary>512, 256, 128, or 0 for scalar only.</summary>
    static abstract int Bits { get; }
}

/// <summary>Whatever the hardware accelerates: 512, else 256, else 128 bits.</summary>
public readonly struct WidestVector : IVectorWidth
{
    public static int Bits => 512;
}

/// <summary>At most 256-bit vectors (AVX2).</summary>
public readonly struct Vector256Width : IVectorWidth
{
    public static int Bits => 256;
}

/// <summary>At most 128-bit vectors (SSE, NEON).</summary>
public readonly struct Vector128Width : IVectorWidth
{
    public static int Bits => 128;
}

/// <summary>No vectors: the loops' scalar tails run over everything.</summary>
public readonly struct ScalarWidth : IVectorWidth
{
    public static int Bits => 0;
}
