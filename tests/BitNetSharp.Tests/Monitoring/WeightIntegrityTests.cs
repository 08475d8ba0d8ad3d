using BitNetSharp.Monitoring;
using BitNetSharp.Quantization;
using BitNetSharp.Tests.Model;

namespace BitNetSharp.Tests.Monitoring;

public class WeightIntegrityTests
{
    [Fact]
    public unsafe void AFlippedBitIsFoundAndNamed()
    {
        using var w = TransformerTests.TinyModel();
        var integrity = new WeightIntegrity(w);
        Assert.True(integrity.Verify(TestContext.Current.CancellationToken).Ok);
        Assert.True(integrity.Probe().Ok);
        var names = integrity.Tensors.Select(t => t.Name).ToList();
        Assert.Contains("blk.1.ffn_down.weight", names);
        Assert.Contains("blk.1.ffn_down.scale", names);
        Assert.Contains("token_embd.weight", names);
        Assert.Contains("blk.0.attn_norm.weight", names);

        string? reported = null;
        integrity.MismatchFound += bad => reported = bad[0];
        var down = w.Layers[1].Down;
        long offset = integrity.FirstProbeOffset("blk.1.ffn_down.weight");
        down.Data[offset] ^= 0x04;
        try
        {
            var probe = integrity.Probe();
            Assert.Equal(["blk.1.ffn_down.weight"], probe.Mismatched);
            var full = integrity.Verify(TestContext.Current.CancellationToken);
            Assert.Equal(["blk.1.ffn_down.weight"], full.Mismatched);
            Assert.False(integrity.Verified);
            Assert.Equal("blk.1.ffn_down.weight", integrity.LastMismatch);
            Assert.Equal("blk.1.ffn_down.weight", reported);
            Assert.Equal(1, integrity.Mismatches);
            Assert.Equal(1, integrity.ProbeMismatches);
        }
        finally
        {
            down.Data[offset] ^= 0x04;
        }
        Assert.True(integrity.Verify(TestContext.Current.CancellationToken).Ok);
        Assert.True(integrity.Verified);
    }

    /// <summary>
    /// With as many probe words as a tensor has, every word is probed: the offsets were drawn with replacement, so about
    /// a third of the words were never looked at while others were read twice.
    /// </summary>
    [Fact]
    public unsafe void ProbeOffsetsAreDistinct()
    {
        using var w = TransformerTests.TinyModel();
        var down = w.Layers[1].Down;
        long words = down.ByteLength / 8;
        var integrity = new WeightIntegrity(w, probeWords: (int)words);
        int missed = 0;
        for (long word = 0; word < words; word++)
        {
            down.Data[word * 8 + 3] ^= 0x10;
            try
            {
                if (integrity.Probe().Ok) missed++;
            }
            finally
            {
                down.Data[word * 8 + 3] ^= 0x10;
            }
        }
        Assert.Equal(0, missed);
        Assert.True(integrity.Probe().Ok);
    }

    /// <summary>
    /// A tensor that stays changed is reported (the event the server logs and writes to the telemetry log) and counted
    /// once, not again by every probe and full check (every 256 steps: a counter that grew forever and an error per
    /// probe); it stays unverified meanwhile, and once a full check passes, a new change is news again.
    /// </summary>
    [Fact]
    public unsafe void APersistentChangeIsReportedAndCountedOnce()
    {
        using var w = TransformerTests.TinyModel();
        var integrity = new WeightIntegrity(w);
        var reports = new List<IReadOnlyList<string>>();
        integrity.MismatchFound += bad => reports.Add(bad);
        var down = w.Layers[1].Down;
        long offset = integrity.FirstProbeOffset("blk.1.ffn_down.weight");
        down.Data[offset] ^= 0x04;
        try
        {
            for (int i = 0; i < 5; i++) Assert.False(integrity.Probe().Ok);
            Assert.False(integrity.Verify(TestContext.Current.CancellationToken).Ok);
            Assert.False(integrity.Verify(TestContext.Current.CancellationToken).Ok);
            Assert.Single(reports);
            Assert.Equal(1, integrity.ProbeMismatches);
            Assert.Equal(1, integrity.Mismatches);
            Assert.False(integrity.Verified);
        }
        finally
        {
            down.Data[offset] ^= 0x04;
        }
        Assert.True(integrity.Verify(TestContext.Current.CancellationToken).Ok);
        down.Data[offset] ^= 0x04;
        try
        {
            Assert.False(integrity.Probe().Ok);
            Assert.Equal(2, reports.Count);
            Assert.Equal(2, integrity.ProbeMismatches);
        }
        finally
        {
            down.Data[offset] ^= 0x04;
        }
    }

    /// <summary>
    /// A probe that finds a change while a full check runs (in a tensor the check had already hashed) is not undone by
    /// the check ending clean: "verified" stays false until a check passes with nothing found meanwhile.
    /// </summary>
    [Fact]
    public unsafe void AProbeMismatchDuringACheckIsNotClearedByIt()
    {
        using var w = TransformerTests.TinyModel();
        var integrity = new WeightIntegrity(w);
        var down = w.Layers[1].Down;
        long offset = integrity.FirstProbeOffset("blk.1.ffn_down.weight");
        integrity.AfterHash = name =>
        {
            if (name != "blk.1.ffn_down.weight") return;
            down.Data[offset] ^= 0x04; // corrupted just after the check hashed it
            Assert.False(integrity.Probe().Ok);
        };
        try
        {
            Assert.True(integrity.Verify(TestContext.Current.CancellationToken).Ok); // this pass saw the old bytes
            Assert.False(integrity.Verified); // before: true, over changed bytes
            integrity.AfterHash = null;
            Assert.False(integrity.Verify(TestContext.Current.CancellationToken).Ok);
            Assert.False(integrity.Verified);
        }
        finally
        {
            down.Data[offset] ^= 0x04;
        }
        Assert.True(integrity.Verify(TestContext.Current.CancellationToken).Ok);
        Assert.True(integrity.Verified);
    }

    /// <summary>The lookup kernel reads its own repack of each projection: that copy is hashed and probed too, named after
    /// its tensor, and leaves the model checksum (which names the weights as stored) unchanged.</summary>
    [Fact]
    public unsafe void TheLookupKernelsRepackIsGuardedToo()
    {
        using var w = TransformerTests.TinyModel(seed: 7);
        ulong stored = new WeightIntegrity(w).ModelChecksum;
        foreach (var layer in w.Layers)
            foreach (var (_, m) in WeightIntegrity.Projections(layer)) BitNetSharp.Kernels.LutTernaryKernel.Layout(m);
        var integrity = new WeightIntegrity(w);
        Assert.Equal(stored, integrity.ModelChecksum);
        const string name = "blk.1.ffn_down.weight (avx512lut layout)";
        Assert.Contains(name, integrity.Tensors.Select(t => t.Name));
        var packed = (BitNetSharp.Kernels.LutTernaryKernel.Packed)w.Layers[1].Down.KernelLayout!;
        long offset = integrity.FirstProbeOffset(name);
        ((byte*)packed.Data)[offset] ^= 0x10;
        try
        {
            Assert.Equal([name], integrity.Probe().Mismatched);
            Assert.Equal([name], integrity.Verify(TestContext.Current.CancellationToken).Mismatched);
        }
        finally
        {
            ((byte*)packed.Data)[offset] ^= 0x10;
        }
        Assert.True(integrity.Verify(TestContext.Current.CancellationToken).Ok);
    }

    [Fact]
    public void ScalesAndNormsAreCovered()
    {
        using var w = TransformerTests.TinyModel();
        var integrity = new WeightIntegrity(w);
        w.Layers[0].Q.RowScales[0] *= 2;
        Assert.Equal(["blk.0.attn_q.scale"], integrity.Verify(TestContext.Current.CancellationToken).Mismatched);
        w.Layers[0].Q.RowScales[0] /= 2;
        w.Layers[1].FfnNorm[5] = 0;
        Assert.Equal(["blk.1.ffn_norm.weight"], integrity.Verify(TestContext.Current.CancellationToken).Mismatched);
    }

    [Fact]
    public void ModelChecksumIdentifiesTheWeights()
    {
        using var a = TransformerTests.TinyModel(seed: 7);
        using var b = TransformerTests.TinyModel(seed: 7);
        using var c = TransformerTests.TinyModel(seed: 8);
        Assert.Equal(new WeightIntegrity(a).ModelChecksum, new WeightIntegrity(b).ModelChecksum);
        Assert.NotEqual(new WeightIntegrity(a).ModelChecksum, new WeightIntegrity(c).ModelChecksum);
    }

    [Fact]
    public async Task TheVerifierFindsAChangeInTheBackground()
    {
        using var w = TransformerTests.TinyModel();
        var integrity = new WeightIntegrity(w);
        using var verifier = new WeightVerifier(integrity, TimeSpan.FromMilliseconds(20));
        w.Layers[0].Up.RowScales[1] = -w.Layers[0].Up.RowScales[1];
        for (int i = 0; i < 1500 && integrity.Verified; i++) await Task.Delay(20, TestContext.Current.CancellationToken);
        Assert.False(integrity.Verified);
        Assert.Equal("blk.0.ffn_up.scale", integrity.LastMismatch);
        Assert.Throws<ArgumentOutOfRangeException>(() => new WeightVerifier(integrity, TimeSpan.Zero));
    }

    /// <summary>
    /// The wait after a pass is the interval, or nine times the pass when that is longer: checks take at most a tenth of
    /// a core whatever interval was asked (--verify-weights 0.001 re-hashed without pause and slowed serving by 20 %).
    /// </summary>
    [Fact]
    public void TheVerifierTakesAtMostATenthOfACore()
    {
        Assert.Equal(TimeSpan.FromSeconds(600), WeightVerifier.NextWait(TimeSpan.FromSeconds(600), TimeSpan.FromSeconds(2)));
        Assert.Equal(TimeSpan.FromSeconds(18), WeightVerifier.NextWait(TimeSpan.FromMilliseconds(1), TimeSpan.FromSeconds(2)));
        Assert.Equal(TimeSpan.FromMilliseconds(int.MaxValue), WeightVerifier.NextWait(TimeSpan.FromMilliseconds(1), TimeSpan.FromDays(30)));
        var pass = TimeSpan.FromMilliseconds(50);
        var wait = WeightVerifier.NextWait(TimeSpan.FromTicks(1), pass);
        Assert.InRange(pass / (pass + wait), 0, WeightVerifier.MaxShare + 1e-9);
    }

    [Fact]
    public void CodeSharesAndDegenerateTensors()
    {
        using var w = TransformerTests.TinyModel();
        var stats = WeightCodeStats.Compute(w, TestContext.Current.CancellationToken);
        Assert.Equal(0, stats.Degenerate);
        var k = stats[0, 0];
        Assert.Equal(1.0, k.MinusShare + k.ZeroShare + k.PlusShare, 1e-12);
        Assert.True(k.MinusShare > 0.1 && k.PlusShare > 0.1);
        // Every code of blk.1.attn_v made +1 or 0: no −1 left, "all one sign".
        var v = w.Layers[1].V;
        for (int r = 0; r < v.Rows; r++)
            for (int col = 0; col < v.Cols; col++)
                if (v.Get(r, col) < 0) v.Set(r, col, 1);
        stats = WeightCodeStats.Compute(w, TestContext.Current.CancellationToken);
        Assert.Equal(1, stats.Degenerate);
        Assert.True(WeightCodeStats.IsDegenerate(stats[1, 2]));
        Assert.Equal(0, stats[1, 2].Minus);
    }
}
