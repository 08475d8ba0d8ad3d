using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace BitNetSharp.Benchmarks;

/// <summary>
/// `quick-ops`: the throughput of the instructions the int8 × ternary kernels are built from, on this core — nanoseconds
/// per instruction with twelve independent chains (enough to hide each one's latency), and the multiply-accumulates
/// that buys per nanosecond. It answers which multiply a kernel should use here (AVX-512 <c>vpmaddubsw</c> zmm, the same
/// at 256 bits, or AVX-VNNI's 256-bit <c>vpdpbusd</c>; .NET 10 exposes 512-bit <c>vpdpbusd</c> only through AVX10) and
/// how far a kernel's own operation count is from the floor: a one-token 64-byte row step of the decode kernel is a
/// shift, four masks, four multiplies and four adds; two tokens share the shift and masks.
/// </summary>
public static class QuickInstructionRates
{
    private const int Iterations = 4_000_000;

    public static void Run(int rounds)
    {
        var tests = new List<(string Name, int MacsPerOp, Func<long> Run)>
        {
            ("vpaddd zmm (a simple vector op, for scale)", 0, AddD512),
            ("vpmaddubsw zmm (64 u8×s8 products, pair sums)", 64, MaddUbsw512),
            ("vpmaddubsw ymm (32 products)", 32, MaddUbsw256),
            ("vpmaddwd zmm (32 s16×s16 products)", 32, MaddWd512),
        };
        if (AvxVnni.IsSupported) tests.Add(("vpdpbusd ymm, AVX-VNNI (32 products, accumulated)", 32, DpBusd256));
        tests.Add(("decode step mix, per 64 B (+1 vpaddb, shift, 4 and, 4 madd, 4 add)", 0, StepMix<ShiftStep>));
        if (Gfni.V512.IsSupported) tests.Add(("decode step mix, per 64 B (+1 vpaddb, 2 gfni, 2 and, 4 madd, 4 add)", 0, StepMix<GfniStep>));
        if (Gfni.V512.IsSupported) tests.Add(("vgf2p8affineqb zmm", 0, Gfni512));
        if (!Avx512BW.IsSupported)
        {
            Console.WriteLine("quick-ops needs AVX-512BW (this CPU lacks it).");
            return;
        }
        var results = tests.ToDictionary(t => t.Name, _ => new List<double>());
        foreach (var t in tests) t.Run(); // JIT and warm-up
        for (int round = 0; round < rounds; round++)
            foreach (var t in tests)
            {
                var sw = Stopwatch.StartNew();
                long ops = t.Run();
                results[t.Name].Add(sw.Elapsed.TotalNanoseconds / ops);
            }
        double add = Median(results[tests[0].Name]);
        Console.WriteLine($"{rounds} rounds, {Iterations} iterations of 12 independent chains; medians");
        foreach (var t in tests)
        {
            double ns = Median(results[t.Name]);
            string macs = t.MacsPerOp > 0 ? $"{t.MacsPerOp / ns,7:F0} MAC/ns" : "";
            Console.WriteLine($"  {t.Name,-52} {ns,6:F3} ns/op  {ns / add,5:F2}× vpaddd  {macs}");
        }
    }

    /// <summary>One 64-byte step of the four-stream decode loop on registers: the code split, four multiplies, four adds.</summary>
    private interface IStep
    {
        static abstract void Step(Vector512<byte> p, Vector512<sbyte> q0, Vector512<sbyte> q1, Vector512<sbyte> q2, Vector512<sbyte> q3,
            Vector512<byte> m3, Vector512<byte> m12, ref Vector512<short> s1, ref Vector512<short> s4);
    }

    /// <summary>The engine's split (`Dot512.ScaledStep`): a 16-bit shift and four ANDs.</summary>
    private readonly struct ShiftStep : IStep
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Step(Vector512<byte> p, Vector512<sbyte> q0, Vector512<sbyte> q1, Vector512<sbyte> q2, Vector512<sbyte> q3,
            Vector512<byte> m3, Vector512<byte> m12, ref Vector512<short> s1, ref Vector512<short> s4)
        {
            var p4 = Avx512BW.ShiftRightLogical(p.AsUInt16(), 4).AsByte();
            s4 = Avx512BW.Add(s4, Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(p4 & m12, q0), Avx512BW.MultiplyAddAdjacent(p & m12, q2)));
            s1 = Avx512BW.Add(s1, Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(p4 & m3, q1), Avx512BW.MultiplyAddAdjacent(p & m3, q3)));
        }
    }

    /// <summary>The two high code groups by GFNI (tried, not kept: bench/results/owned-claims-tail-amd-epyc-zen5-2core.md).</summary>
    private readonly struct GfniStep : IStep
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Step(Vector512<byte> p, Vector512<sbyte> q0, Vector512<sbyte> q1, Vector512<sbyte> q2, Vector512<sbyte> q3,
            Vector512<byte> m3, Vector512<byte> m12, ref Vector512<short> s1, ref Vector512<short> s4)
        {
            var h0 = Gfni.V512.GaloisFieldAffineTransform(p, Vector512.Create(0x40UL << 40 | 0x80UL << 32).AsByte(), 0);
            var h1 = Gfni.V512.GaloisFieldAffineTransform(p, Vector512.Create(0x10UL << 56 | 0x20UL << 48).AsByte(), 0);
            s4 = Avx512BW.Add(s4, Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(h0, q0), Avx512BW.MultiplyAddAdjacent(p & m12, q2)));
            s1 = Avx512BW.Add(s1, Avx512BW.Add(Avx512BW.MultiplyAddAdjacent(h1, q1), Avx512BW.MultiplyAddAdjacent(p & m3, q3)));
        }
    }

    /// <summary>Four independent steps per iteration; the code vectors change every iteration (one vpaddb each) so that
    /// nothing is hoisted out of the loop. Returns the steps run.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static long StepMix<TStep>() where TStep : IStep
    {
        var m3 = Vector512.Create((byte)3); var m12 = Vector512.Create((byte)12);
        var q0 = Vector512.Create((sbyte)1); var q1 = Vector512.Create((sbyte)2); var q2 = Vector512.Create((sbyte)3); var q3 = Vector512.Create((sbyte)4);
        var p0 = Vector512.Create((byte)0x5A); var p1 = Vector512.Create((byte)0x1B); var p2 = Vector512.Create((byte)0x66); var p3 = Vector512.Create((byte)0x24);
        Vector512<short> a0 = default, b0 = default, a1 = default, b1 = default, a2 = default, b2 = default, a3 = default, b3 = default;
        for (int i = 0; i < Iterations; i++)
        {
            p0 += m3; p1 += m3; p2 += m3; p3 += m3;
            TStep.Step(p0, q0, q1, q2, q3, m3, m12, ref a0, ref b0); TStep.Step(p1, q0, q1, q2, q3, m3, m12, ref a1, ref b1);
            TStep.Step(p2, q0, q1, q2, q3, m3, m12, ref a2, ref b2); TStep.Step(p3, q0, q1, q2, q3, m3, m12, ref a3, ref b3);
        }
        Keep((a0 + b0 + a1 + b1 + a2 + b2 + a3 + b3).AsInt32());
        return 4L * Iterations;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static long Gfni512()
    {
        var m = Vector512.Create(0x10UL << 56 | 0x20UL << 48).AsByte();
        Vector512<byte> s0 = Vector512.Create((byte)1), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0, s8 = s0, s9 = s0, s10 = s0, s11 = s0;
        for (int i = 0; i < Iterations; i++)
        {
            s0 = Gfni.V512.GaloisFieldAffineTransform(s0, m, 1); s1 = Gfni.V512.GaloisFieldAffineTransform(s1, m, 1);
            s2 = Gfni.V512.GaloisFieldAffineTransform(s2, m, 1); s3 = Gfni.V512.GaloisFieldAffineTransform(s3, m, 1);
            s4 = Gfni.V512.GaloisFieldAffineTransform(s4, m, 1); s5 = Gfni.V512.GaloisFieldAffineTransform(s5, m, 1);
            s6 = Gfni.V512.GaloisFieldAffineTransform(s6, m, 1); s7 = Gfni.V512.GaloisFieldAffineTransform(s7, m, 1);
            s8 = Gfni.V512.GaloisFieldAffineTransform(s8, m, 1); s9 = Gfni.V512.GaloisFieldAffineTransform(s9, m, 1);
            s10 = Gfni.V512.GaloisFieldAffineTransform(s10, m, 1); s11 = Gfni.V512.GaloisFieldAffineTransform(s11, m, 1);
        }
        Keep((s0 ^ s1 ^ s2 ^ s3 ^ s4 ^ s5 ^ s6 ^ s7 ^ s8 ^ s9 ^ s10 ^ s11).AsInt32());
        return 12L * Iterations;
    }

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted[sorted.Length / 2];
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static long AddD512()
    {
        var a = Vector512.Create(1);
        Vector512<int> s0 = default, s1 = default, s2 = default, s3 = default, s4 = default, s5 = default;
        Vector512<int> s6 = default, s7 = default, s8 = default, s9 = default, s10 = default, s11 = default;
        for (int i = 0; i < Iterations; i++)
        {
            s0 += a; s1 += a; s2 += a; s3 += a; s4 += a; s5 += a;
            s6 += a; s7 += a; s8 += a; s9 += a; s10 += a; s11 += a;
        }
        Keep(s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7 + s8 + s9 + s10 + s11);
        return 12L * Iterations;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static long MaddUbsw512()
    {
        var b = Vector512.Create((sbyte)1);
        Vector512<short> s0 = Vector512.Create((short)1), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0;
        Vector512<short> s6 = s0, s7 = s0, s8 = s0, s9 = s0, s10 = s0, s11 = s0;
        for (int i = 0; i < Iterations; i++)
        {
            s0 = Avx512BW.MultiplyAddAdjacent(s0.AsByte(), b); s1 = Avx512BW.MultiplyAddAdjacent(s1.AsByte(), b);
            s2 = Avx512BW.MultiplyAddAdjacent(s2.AsByte(), b); s3 = Avx512BW.MultiplyAddAdjacent(s3.AsByte(), b);
            s4 = Avx512BW.MultiplyAddAdjacent(s4.AsByte(), b); s5 = Avx512BW.MultiplyAddAdjacent(s5.AsByte(), b);
            s6 = Avx512BW.MultiplyAddAdjacent(s6.AsByte(), b); s7 = Avx512BW.MultiplyAddAdjacent(s7.AsByte(), b);
            s8 = Avx512BW.MultiplyAddAdjacent(s8.AsByte(), b); s9 = Avx512BW.MultiplyAddAdjacent(s9.AsByte(), b);
            s10 = Avx512BW.MultiplyAddAdjacent(s10.AsByte(), b); s11 = Avx512BW.MultiplyAddAdjacent(s11.AsByte(), b);
        }
        Keep((s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7 + s8 + s9 + s10 + s11).AsInt32());
        return 12L * Iterations;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static long MaddUbsw256()
    {
        var b = Vector256.Create((sbyte)1);
        Vector256<short> s0 = Vector256.Create((short)1), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0;
        Vector256<short> s6 = s0, s7 = s0, s8 = s0, s9 = s0, s10 = s0, s11 = s0;
        for (int i = 0; i < Iterations; i++)
        {
            s0 = Avx2.MultiplyAddAdjacent(s0.AsByte(), b); s1 = Avx2.MultiplyAddAdjacent(s1.AsByte(), b);
            s2 = Avx2.MultiplyAddAdjacent(s2.AsByte(), b); s3 = Avx2.MultiplyAddAdjacent(s3.AsByte(), b);
            s4 = Avx2.MultiplyAddAdjacent(s4.AsByte(), b); s5 = Avx2.MultiplyAddAdjacent(s5.AsByte(), b);
            s6 = Avx2.MultiplyAddAdjacent(s6.AsByte(), b); s7 = Avx2.MultiplyAddAdjacent(s7.AsByte(), b);
            s8 = Avx2.MultiplyAddAdjacent(s8.AsByte(), b); s9 = Avx2.MultiplyAddAdjacent(s9.AsByte(), b);
            s10 = Avx2.MultiplyAddAdjacent(s10.AsByte(), b); s11 = Avx2.MultiplyAddAdjacent(s11.AsByte(), b);
        }
        Keep(Vector512.Create((s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7 + s8 + s9 + s10 + s11).AsInt32(), default));
        return 12L * Iterations;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static long MaddWd512()
    {
        var b = Vector512.Create((short)1);
        Vector512<int> s0 = Vector512.Create(1), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0;
        Vector512<int> s6 = s0, s7 = s0, s8 = s0, s9 = s0, s10 = s0, s11 = s0;
        for (int i = 0; i < Iterations; i++)
        {
            s0 = Avx512BW.MultiplyAddAdjacent(s0.AsInt16(), b); s1 = Avx512BW.MultiplyAddAdjacent(s1.AsInt16(), b);
            s2 = Avx512BW.MultiplyAddAdjacent(s2.AsInt16(), b); s3 = Avx512BW.MultiplyAddAdjacent(s3.AsInt16(), b);
            s4 = Avx512BW.MultiplyAddAdjacent(s4.AsInt16(), b); s5 = Avx512BW.MultiplyAddAdjacent(s5.AsInt16(), b);
            s6 = Avx512BW.MultiplyAddAdjacent(s6.AsInt16(), b); s7 = Avx512BW.MultiplyAddAdjacent(s7.AsInt16(), b);
            s8 = Avx512BW.MultiplyAddAdjacent(s8.AsInt16(), b); s9 = Avx512BW.MultiplyAddAdjacent(s9.AsInt16(), b);
            s10 = Avx512BW.MultiplyAddAdjacent(s10.AsInt16(), b); s11 = Avx512BW.MultiplyAddAdjacent(s11.AsInt16(), b);
        }
        Keep(s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7 + s8 + s9 + s10 + s11);
        return 12L * Iterations;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static long DpBusd256()
    {
        var a = Vector256.Create((byte)1);
        var b = Vector256.Create((sbyte)1);
        Vector256<int> s0 = default, s1 = default, s2 = default, s3 = default, s4 = default, s5 = default;
        Vector256<int> s6 = default, s7 = default, s8 = default, s9 = default, s10 = default, s11 = default;
        for (int i = 0; i < Iterations; i++)
        {
            s0 = AvxVnni.MultiplyWideningAndAdd(s0, a, b); s1 = AvxVnni.MultiplyWideningAndAdd(s1, a, b);
            s2 = AvxVnni.MultiplyWideningAndAdd(s2, a, b); s3 = AvxVnni.MultiplyWideningAndAdd(s3, a, b);
            s4 = AvxVnni.MultiplyWideningAndAdd(s4, a, b); s5 = AvxVnni.MultiplyWideningAndAdd(s5, a, b);
            s6 = AvxVnni.MultiplyWideningAndAdd(s6, a, b); s7 = AvxVnni.MultiplyWideningAndAdd(s7, a, b);
            s8 = AvxVnni.MultiplyWideningAndAdd(s8, a, b); s9 = AvxVnni.MultiplyWideningAndAdd(s9, a, b);
            s10 = AvxVnni.MultiplyWideningAndAdd(s10, a, b); s11 = AvxVnni.MultiplyWideningAndAdd(s11, a, b);
        }
        Keep(Vector512.Create(s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7 + s8 + s9 + s10 + s11, default));
        return 12L * Iterations;
    }

    private static int s_sink;

    /// <summary>Keeps a result alive so the JIT cannot drop the loop that made it.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void Keep(Vector512<int> v) => s_sink ^= v.ToScalar();
}
