using BitNetSharp.Formats.Gguf;
using BitNetSharp.Model;
using BitNetSharp.Monitoring;

namespace BitNetSharp.Tests.Model;

public class ActivationBitsTests
{
    [Fact]
    public void SpecsParseAndPrintBack()
    {
        var all4 = ActivationBits.Parse("4", 3);
        Assert.Equal(4, all4[2, BitLinearInput.Down]);
        Assert.Equal("4", all4.ToString());
        Assert.True(ActivationBits.Uniform(3).AllEight);
        Assert.False(all4.AllEight);

        var perLayer = ActivationBits.Parse("8, 6, 4", 3);
        Assert.Equal(6, perLayer[1, BitLinearInput.O]);
        Assert.Equal(4, perLayer[2, BitLinearInput.Qkv]);

        var a48 = ActivationBits.Parse("qkv=4,gate_up=4", 3);
        Assert.Equal(4, a48[0, BitLinearInput.Qkv]);
        Assert.Equal(8, a48[0, BitLinearInput.O]);
        Assert.Equal(4, a48[2, BitLinearInput.GateUp]);
        Assert.Equal(8, a48[2, BitLinearInput.Down]);
        Assert.Equal("qkv=4,gate_up=4", a48.ToString());

        var mixed = ActivationBits.Parse("qkv=4,1:qkv=8,2=5,0:down=3", 3);
        Assert.Equal([4, 8, 5], new[] { mixed[0, BitLinearInput.Qkv], mixed[1, BitLinearInput.Qkv], mixed[2, BitLinearInput.Qkv] });
        Assert.Equal(5, mixed[2, BitLinearInput.O]);
        Assert.Equal(3, mixed[0, BitLinearInput.Down]);
        // White space around the colon as around = and , ("'1 ' is not a layer" before); a layer's item over a general one layers.
        Assert.Equal(ActivationBits.Parse("1:qkv=4", 3), ActivationBits.Parse(" 1 : qkv = 4 ", 3));
        Assert.Equal(8, ActivationBits.Parse("down=4,2:down=8", 3)[2, BitLinearInput.Down]);
        // Whatever it prints parses back to the same widths.
        foreach (var bits in new[] { all4, perLayer, a48, mixed, ActivationBits.Uniform(3).With(1, BitLinearInput.O, 2) })
            Assert.Equal(bits, ActivationBits.Parse(bits.ToString(), 3));
        Assert.Equal(127, ActivationBits.MaxCode(8));
        Assert.Equal(7, ActivationBits.MaxCode(4));
        Assert.Equal(1, ActivationBits.MaxCode(2));
    }

    [Theory]
    [InlineData("7", "one of 8, 6, 5, 4, 3, 2")]
    [InlineData("8,8", "lists 2 widths; the model has 3 layers")]
    [InlineData("kv=4", "'kv' is not one of qkv, o, gate_up, down")]
    [InlineData("3:qkv=4", "'3' is not a layer of this model (0 to 2)")]
    [InlineData("qkv=4,8", "mixes a bare width")]
    [InlineData("qkv=x", "the bit width must be one of")]
    [InlineData(" ", "is empty")]
    // The same target twice: the later silently won (a typo).
    [InlineData("qkv=4,qkv=6", "'qkv=6' sets what 'qkv=4' already set")]
    [InlineData("1:down=4,01:down=6", "'01:down=6' sets what '1:down=4' already set")]
    [InlineData("2=6,2=4", "'2=4' sets what '2=6' already set")]
    // An empty item was blamed on mixing forms or on the count of widths; a layer without an input on its width.
    [InlineData("qkv=4,", "has an empty item")]
    [InlineData(",4", "has an empty item")]
    [InlineData("0:8", "a layer's item names an input and a width")]
    // A negative layer was named "not one of qkv, o, gate_up, down"; an input without a width was blamed on the width.
    [InlineData("-1=4", "'-1' is not a layer of this model (0 to 2)")]
    [InlineData("qkv", "'qkv' names an input without a width; write e.g. qkv=4")]
    [InlineData("8,down,8", "'down' names an input without a width")]
    [InlineData("qkv=4,down", "'down' names an input without a width; write e.g. down=4")]
    public void BadSpecsNameTheItem(string spec, string message)
    {
        var e = Assert.Throws<ArgumentException>(() => ActivationBits.Parse(spec, 3));
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void GgufRoundTripAndBadValues()
    {
        var bits = ActivationBits.Parse("qkv=4,gate_up=4,1:down=6", 2);
        var w = new GgufWriter();
        bits.WriteTo(w);
        using var file = GgufFile.Parse(w.ToArray(), "bits.gguf");
        Assert.Equal(bits, ActivationBits.FromGguf(file, 2));
        Assert.Contains("must be an array of 12", Assert.Throws<BitNetSharp.Formats.ModelFormatException>(() => ActivationBits.FromGguf(file, 3)).Message);

        using var none = GgufFile.Parse(new GgufWriter().ToArray(), "none.gguf");
        Assert.Null(ActivationBits.FromGguf(none, 2));

        var bad = new GgufWriter().AddArray(ActivationBits.GgufKey, new byte[] { 8, 8, 8, 7 });
        using var badFile = GgufFile.Parse(bad.ToArray(), "bad.gguf");
        var e = Assert.Throws<BitNetSharp.Formats.ModelFormatException>(() => ActivationBits.FromGguf(badFile, 1));
        Assert.Contains("bad.gguf", e.Message);
        Assert.Contains("[3] is 7", e.Message);
        Assert.Contains(ActivationBits.GgufKey, e.Message);
    }
}
