using System.Runtime.InteropServices;
using BitNetSharp.Kernels;
using BitNetSharp.Quantization;

// Checks every kernel variant this CPU supports against the scalar reference, bit for bit, on random shapes
// (odd K and N, 1–9 tokens) and extreme activations. Prints one line per variant and a closing
// "N passed, N failed" line; exits non-zero on any failure.
int passed = 0, failed = 0;
Console.WriteLine($"arch {RuntimeInformation.ProcessArchitecture}; ternary variants: {string.Join(", ", KernelRegistry.SupportedTernary.Select(k => k.Name))}; binary variants: {string.Join(", ", KernelRegistry.SupportedBinary.Select(k => k.Name))}");

void Report(string what, string? error)
{
    if (error is null) { passed++; Console.WriteLine($"PASS {what}"); }
    else { failed++; Console.WriteLine($"FAIL {what}: {error}"); }
}

float[] Activations(Random rng, int k, int pattern)
{
    var x = new float[k];
    for (int i = 0; i < k; i++) x[i] = pattern switch { 0 => (float)(rng.NextDouble() * 2 - 1), 1 => 0.37f, 2 => 1e-3f * (float)(rng.NextDouble() - 0.5), _ => 0f };
    if (pattern == 2) x[rng.Next(k)] = -5e4f;
    return x;
}

unsafe string? CompareTernary(TernaryKernel kernel, Random rng)
{
    var reference = new ReferenceTernaryKernel();
    foreach (int k in new[] { 1, 31, 128, 129, 255, 257, 640, 1000, 2563 })
    for (int pattern = 0; pattern < 4; pattern++)
    {
        int n = 1 + rng.Next(19), tokens = 1 + rng.Next(9);
        using var w = TernaryMatrix.Allocate(n, k);
        for (int r = 0; r < n; r++)
        {
            w.RowScales[r] = 0.5f + (float)rng.NextDouble();
            for (int c = 0; c < k; c++) w.Set(r, c, rng.Next(3) - 1);
        }
        using var x = new QuantizedActivations(tokens, k);
        for (int t = 0; t < tokens; t++) Int8ActivationQuantizer.Quantize(Activations(rng, k, pattern), x, t);
        var a = new float[n * tokens];
        var b = new float[n * tokens];
        fixed (float* pa = a) reference.MatMul(w, x, pa, n, 0, n);
        fixed (float* pb = b) kernel.MatMul(w, x, pb, n, 0, n);
        for (int i = 0; i < a.Length; i++)
            if (BitConverter.SingleToInt32Bits(a[i]) != BitConverter.SingleToInt32Bits(b[i]))
                return $"K={k} N={n} T={tokens} pattern={pattern} element {i}: reference {a[i]:R} vs {b[i]:R}";
    }
    // The int16 accumulation worst case.
    const int kk = 8192;
    using (var w = TernaryMatrix.Allocate(1, kk))
    using (var x = new QuantizedActivations(4, kk))
    {
        for (int c = 0; c < kk; c++) w.Set(0, c, 1);
        for (int t = 0; t < 4; t++) { x.RowSpan(t).Fill(-128); x.Scales[t] = 1f; x.Sums[t] = -128 * kk; }
        var y = new float[4];
        fixed (float* py = y) kernel.MatMul(w, x, py, 1, 0, 1);
        foreach (float v in y) if (v != -128f * kk) return $"worst-case accumulation gave {v}, expected {-128f * kk}";
    }
    return null;
}

unsafe string? CompareBinary(BinaryKernel kernel, Random rng)
{
    var reference = new ReferenceBinaryKernel();
    foreach (int k in new[] { 1, 100, 128, 300, 2051 })
    {
        int n = 1 + rng.Next(9), tokens = 1 + rng.Next(4);
        using var w = new BinaryMatrix(n, k);
        for (int r = 0; r < n; r++) for (int c = 0; c < k; c++) w.Set(r, c, rng.Next(2) * 2 - 1);
        for (int pattern = 0; pattern < 5; pattern++) // 4: every activation −128 (the widest code, the sign trick's edge)
        {
            using var x = new QuantizedActivations(tokens, k);
            for (int t = 0; t < tokens; t++)
            {
                if (pattern < 4) Int8ActivationQuantizer.Quantize(Activations(rng, k, pattern), x, t);
                else { x.RowSpan(t).Fill(-128); x.Scales[t] = 1f; x.Sums[t] = -128 * k; }
            }
            var a = new float[n * tokens];
            var b = new float[n * tokens];
            fixed (float* pa = a) reference.MatMul(w, x, pa, n, 0, n);
            fixed (float* pb = b) kernel.MatMul(w, x, pb, n, 0, n);
            for (int i = 0; i < a.Length; i++)
                if (BitConverter.SingleToInt32Bits(a[i]) != BitConverter.SingleToInt32Bits(b[i]))
                    return $"K={k} pattern={pattern} element {i}: reference {a[i]:R} vs {b[i]:R}";
        }
    }
    return null;
}

// The threaded products the engine runs (TernaryMatMul over a two-thread pool: owned ranges for 1-3 tokens, the
// four-stream quarters with BITNET_WEIGHT_STREAMS=4, shared-counter chunks for more tokens) with this CPU's default
// kernel, bit for bit against the reference kernel run whole.
unsafe string? ThreadedProducts(Random rng)
{
    var reference = new ReferenceTernaryKernel();
    var kernel = KernelRegistry.SelectTernary(null);
    int saved = TernaryKernel.WeightStreams;
    using var pool = new BitNetSharp.Threading.WorkerPool(2);
    using var product = new TernaryMatMul(pool);
    try
    {
        const int n = 512, k = 2560;
        using var w = TernaryMatrix.Allocate(n, k);
        for (int r = 0; r < n; r++)
        {
            w.RowScales[r] = 0.5f + (float)rng.NextDouble();
            for (int c = 0; c < k; c++) w.Set(r, c, rng.Next(3) - 1);
        }
        foreach (int streams in new[] { 1, 4 })
        {
            TernaryKernel.WeightStreams = streams;
            foreach (int tokens in new[] { 1, 2, 3, 5 })
            {
                using var x = new QuantizedActivations(tokens, k);
                for (int t = 0; t < tokens; t++) Int8ActivationQuantizer.Quantize(Activations(rng, k, 0), x, t);
                var a = new float[n * tokens];
                var b = new float[n * tokens];
                fixed (float* pa = a) reference.MatMul(w, x, pa, n, 0, n);
                fixed (float* pb = b) product.Run(kernel, w, x, pb, n);
                for (int i = 0; i < a.Length; i++)
                    if (BitConverter.SingleToInt32Bits(a[i]) != BitConverter.SingleToInt32Bits(b[i]))
                        return $"{kernel.Name}, weight streams {streams}, {tokens} tokens, element {i}: reference {a[i]:R} vs {b[i]:R}";
            }
        }
        return null;
    }
    finally
    {
        TernaryKernel.WeightStreams = saved;
    }
}

// Exact ties (issue #15), bf16-valued: with absmax 127/64, x = ±j/128 for odd j is the tie ±j/2, whose code is the even
// neighbour; with absmax 2.375, x = ±2.375·j/254 where that is a float is a tie too (−1.1875 → −63.5 → −64), and fp32's
// x·fl(127/2.375) misses it.
float[] Ties(Random rng, int k, float absMax)
{
    var x = new float[k];
    x[0] = absMax;
    for (int i = 1; i < k; i++)
    {
        float t;
        do t = (float)(absMax * (2.0 * rng.Next(127) + 1) / 254); while ((double)t * 254 != absMax * Math.Round((double)t * 254 / absMax));
        x[i] = rng.Next(2) == 0 ? t : -t;
    }
    return x;
}

string? CompareQuantizer(Random rng)
{
    foreach (int k in new[] { 1, 15, 16, 33, 2560, 6913 })
    for (int pattern = 0; pattern < 6; pattern++)
    {
        var x = pattern switch { 4 => Ties(rng, k, 127f / 64), 5 => Ties(rng, k, 2.375f), _ => Activations(rng, k, pattern) };
        var a = new sbyte[k];
        var b = new sbyte[k];
        Int8ActivationQuantizer.QuantizeReference(x, a, out float s1, out int sum1);
        Int8ActivationQuantizer.Quantize(x, b, out float s2, out int sum2);
        if (s1 != s2 || sum1 != sum2 || !a.AsSpan().SequenceEqual(b)) return $"K={k} pattern={pattern} differs";
        if (pattern == 4)
            for (int i = 1; i < k; i++)
                if (b[i] != (int)Math.Round(x[i] * 64.0, MidpointRounding.ToEven)) return $"K={k} tie {x[i]}·127/γ = {x[i] * 64.0} coded {b[i]}";
    }
    var q = new sbyte[2];
    Int8ActivationQuantizer.Quantize([2.375f, -1.1875f], q, out _, out _);
    return q[1] == -64 ? null : $"−1.1875 with absmax 2.375 (−63.5) coded {q[1]}, not −64";
}

// Attention past one chunk (256 positions): the split path with its partial-softmax merge and its prefetch hints,
// which called an x86 intrinsic unguarded and threw on ARM64 at the first token that saw more than 256 positions.
// Split (chunk 64) and unsplit (chunk 4096) must agree to rounding, and both be finite.
// The Q8_0 and Q6_K output heads quantize the hidden state (Q8_0 blocks of 32, Q8_K blocks of 256) and take integer
// dots, on every CPU; a float-activation path differs from that by the quantization error, far above 64 u.
unsafe string? QuantizedHeads(Random rng)
{
    const double u = 1.0 / (1 << 24);
    foreach (var type in new[] { BitNetSharp.Formats.Gguf.GgmlType.Q8_0, BitNetSharp.Formats.Gguf.GgmlType.Q6_K })
    {
        bool q8 = type == BitNetSharp.Formats.Gguf.GgmlType.Q8_0;
        int cols = 512, rows = 9, blockWeights = q8 ? 32 : Q6K.BlockWeights, blockBytes = q8 ? 34 : Q6K.BlockBytes, blocks = cols / blockWeights;
        var table = new byte[rows * blocks * blockBytes];
        rng.NextBytes(table);
        for (int b = 0; b < rows * blocks; b++)
            BitConverter.TryWriteBytes(table.AsSpan(b * blockBytes + (q8 ? 0 : Q6K.DOffset)), HalfConversions.FloatToHalf((float)(rng.NextDouble() - 0.5) * 0.05f));
        foreach (int tokens in new[] { 1, 2, 5 })
        {
            var x = new float[tokens * cols];
            for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() * 6 - 3);
            var y = new float[tokens * rows];
            var w = new float[cols];
            var q = new sbyte[cols];
            var d = new float[blocks];
            var sums = new short[cols / 16];
            fixed (byte* pt = table)
            fixed (float* px = x, py = y, pw = w, pd = d)
            fixed (sbyte* pq = q)
            fixed (short* ps = sums)
            {
                var m = new HeadMatrix(type, pt, blocks * blockBytes, cols);
                if (tokens == 1) HeadKernels.MatVec(m, px, py, 0, rows);
                else HeadKernels.MatMul(m, px, tokens, py, rows, 0, rows);
                for (int t = 0; t < tokens; t++)
                {
                    if (q8) HeadKernels.QuantizeQ8Blocks(px + t * cols, cols, pq, pd);
                    else HeadKernels.QuantizeQ8KBlocks(px + t * cols, cols, pq, pd, ps);
                    for (int r = 0; r < rows; r++)
                    {
                        byte* row = pt + r * blocks * blockBytes;
                        for (int b = 0; b < blocks; b++)
                        {
                            if (q8)
                            {
                                float dw = HalfConversions.HalfToFloat(*(ushort*)(row + b * 34));
                                for (int i = 0; i < 32; i++) pw[b * 32 + i] = dw * ((sbyte*)(row + b * 34 + 2))[i];
                            }
                            else Q6K.DequantizeBlock(row + b * Q6K.BlockBytes, pw + b * Q6K.BlockWeights);
                        }
                        double exact = 0, magnitude = 0;
                        for (int i = 0; i < cols; i++)
                        {
                            double term = (double)pw[i] * (q[i] * (double)d[i / blockWeights]);
                            exact += term;
                            magnitude += Math.Abs(term);
                        }
                        double got = py[t * rows + r];
                        if (!(Math.Abs(got - exact) <= 64 * u * magnitude))
                            return $"{type}, {tokens} tokens, token {t} row {r}: {got:R}, quantized dot {exact:R} (|Δ| {Math.Abs(got - exact):E2} > {64 * u * magnitude:E2})";
                    }
                }
            }
        }
    }
    return null;
}

// The float dots of the F32/F16/BF16 heads at whatever vector width this CPU accelerates (128 bits on ARM64), against
// float64 on the same (exactly converted) values: within the summation bound n·u·Σ|w·x|.
unsafe string? FloatDots(Random rng)
{
    const double u = 1.0 / (1 << 24);
    foreach (int n in new[] { 1, 3, 7, 8, 15, 16, 17, 31, 64, 100, 1000, 2560 })
    {
        var x = new float[n];
        var f32 = new float[n];
        var f16 = new ushort[n];
        var bf16 = new ushort[n];
        for (int i = 0; i < n; i++)
        {
            x[i] = (float)(rng.NextDouble() * 4 - 2);
            f32[i] = (float)(rng.NextDouble() * 2 - 1);
            f16[i] = HalfConversions.FloatToHalf((float)(rng.NextDouble() * 2 - 1) * (i % 5 == 0 ? 1e-5f : 1f)); // subnormal halves too
            bf16[i] = (ushort)(BitConverter.SingleToUInt32Bits((float)(rng.NextDouble() * 2 - 1)) >> 16);
        }
        fixed (float* px = x, p32 = f32)
        fixed (ushort* p16 = f16, pb = bf16)
        {
            foreach (var (name, got, weight) in new (string, float, Func<int, double>)[]
            {
                ("F32", FloatMatVec.Dot(p32, px, n), i => f32[i]),
                ("F16", HeadKernels.DotF16(p16, px, n), i => HalfConversions.HalfToFloat(f16[i])),
                ("BF16", HeadKernels.DotBF16(pb, px, n), i => BitConverter.UInt32BitsToSingle((uint)bf16[i] << 16)),
            })
            {
                double exact = 0, magnitude = 0;
                for (int i = 0; i < n; i++)
                {
                    exact += weight(i) * x[i];
                    magnitude += Math.Abs(weight(i) * x[i]);
                }
                if (!(Math.Abs(got - exact) <= (n + 2) * u * magnitude))
                    return $"{name}, n {n}: {got:R}, float64 {exact:R} (|Δ| {Math.Abs(got - exact):E2} > {(n + 2) * u * magnitude:E2})";
            }
        }
    }
    // Every finite half and bfloat16 value, alone in a lane against x = 1 there and 0 elsewhere: the dot is the value
    // itself, bit for bit (the vector conversions, subnormal halves included, against the scalar definition).
    var one = new float[16];
    var lane = new ushort[16];
    fixed (float* po = one)
    fixed (ushort* pl = lane)
        for (int bits = 0; bits < 65536; bits++)
        {
            int k = bits % 16;
            one.AsSpan().Clear();
            lane.AsSpan().Clear();
            one[k] = 1f;
            lane[k] = (ushort)bits;
            if ((bits & 0x7C00) != 0x7C00)
            {
                float want = HalfConversions.HalfToFloat((ushort)bits), got = HeadKernels.DotF16(pl, po, 16);
                if (BitConverter.SingleToInt32Bits(got) != BitConverter.SingleToInt32Bits(want) && !(want == 0 && got == 0))
                    return $"F16 0x{bits:X4}: {got:R}, expected {want:R}";
            }
            if ((bits & 0x7F80) != 0x7F80)
            {
                float want = BitConverter.UInt32BitsToSingle((uint)bits << 16), got = HeadKernels.DotBF16(pl, po, 16);
                if (BitConverter.SingleToInt32Bits(got) != BitConverter.SingleToInt32Bits(want) && !(want == 0 && got == 0))
                    return $"BF16 0x{bits:X4}: {got:R}, expected {want:R}";
            }
        }
    return null;
}

string? AttentionPastOneChunk()
{
    const int positions = 300;
    var shape = new BitNetSharp.Model.SyntheticShape("check", 128, 2, 4, 2, 256, 64, 512);
    using var weights = BitNetSharp.Model.ModelWeights.FromGguf(
        BitNetSharp.Formats.Gguf.GgufFile.Parse(BitNetSharp.Model.SyntheticModel.Build(shape, 7).ToArray(), "check.gguf"), ownsFile: true);
    var c = weights.Config;
    float[] Run(int chunk)
    {
        using var pool = new BitNetSharp.Threading.WorkerPool(2);
        using var engine = new BitNetSharp.Model.Transformer(weights, positions, pool) { AttentionChunk = chunk };
        using var cache = new BitNetSharp.Model.KvCache(c.Layers, c.KvHeads, c.HeadDim, positions);
        var batch = new BitNetSharp.Model.BatchToken[positions];
        for (int i = 0; i < positions; i++) batch[i] = new BitNetSharp.Model.BatchToken((i * 7 + 3) % c.VocabSize, 0, i, i == positions - 1);
        var logits = new float[c.VocabSize];
        engine.Forward(batch, [cache], logits);
        return logits;
    }
    try
    {
        float[] split = Run(64), whole = Run(4096);
        for (int i = 0; i < split.Length; i++)
        {
            if (!float.IsFinite(split[i]) || !float.IsFinite(whole[i])) return $"logit {i} is not finite: split {split[i]}, whole {whole[i]}";
            if (Math.Abs(split[i] - whole[i]) > 1e-3f * (1 + Math.Abs(whole[i]))) return $"logit {i}: split {split[i]:R} vs whole {whole[i]:R}";
        }
        return null;
    }
    catch (Exception e)
    {
        return $"{e.GetType().Name}: {e.Message}";
    }
}

// KERNELCHECK_EXPECT=neondot,neon (tests/arm64/run.sh, per emulated CPU): those ternary variants must be supported
// and the first of them chosen by default; otherwise a CPU whose features went undetected would compare only the
// reference with itself and pass.
if (Environment.GetEnvironmentVariable("KERNELCHECK_EXPECT") is { Length: > 0 } expect)
{
    var wanted = expect.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
    var have = KernelRegistry.SupportedTernary.Select(k => k.Name).ToList();
    var missing = wanted.Where(w => !have.Contains(w)).ToList();
    Report($"expected variants ({expect}) supported, {wanted[0]} chosen",
        missing.Count > 0 ? $"not supported here: {string.Join(", ", missing)} (supported: {string.Join(", ", have)})"
        : KernelRegistry.SelectTernary(null).Name != wanted[0] ? $"the default ternary kernel is {KernelRegistry.SelectTernary(null).Name}, not {wanted[0]}" : null); // the CPU's choice, whatever BITNET_KERNEL says
}

var random = new Random(2024);
foreach (var kernel in KernelRegistry.SupportedTernary) Report($"ternary {kernel.Name}", CompareTernary(kernel, random));
foreach (var kernel in KernelRegistry.SupportedBinary) Report($"binary {kernel.Name}", CompareBinary(kernel, random));
Report("activation quantizer (SIMD vs reference, exact ties)", CompareQuantizer(random));
Report("attention past one chunk (split vs whole, 300 positions)", AttentionPastOneChunk());
Report("Q8_0 and Q6_K heads: quantized activations, integer dots (1, 2, 5 tokens vs float64)", QuantizedHeads(random));
Report("F32, F16 and BF16 dots (heads, small matrices) vs float64", FloatDots(random));
Report("threaded products (two threads; weight streams 1 and 4; 1, 2, 3, 5 tokens) vs reference", ThreadedProducts(random));
Console.WriteLine($"kernel-check: {passed} passed, {failed} failed");
return failed == 0 ? 0 : 1;
