using System.Xml.Linq;
using BitNetSharp.Cli;

namespace BitNetSharp.Tests.Cli;

/// <summary>The SVG charts of calibrate's report, logs --plot and train's loss plot.</summary>
public class SvgLinePlotTests
{
    private static readonly XNamespace Svg = "http://www.w3.org/2000/svg";

    /// <summary>
    /// A NaN point (calibrate's crest of an input with no non-zero token; a layer that blew up in a log) made every
    /// axis bound NaN, the tick list empty and the chart throw, after calibrate had written its model and before the
    /// report. It is a gap in the line now; the axes span the finite points.
    /// </summary>
    [Fact]
    public void NonFinitePointsAreGapsInTheLine()
    {
        var plot = new SvgLinePlot { Title = "t", XLabel = "layer", YLabel = "crest" };
        plot.Series.Add(new SvgSeries("qkv", [(0, 1.5), (1, double.NaN), (2, 2.5), (3, 3.0), (4, double.PositiveInfinity)]) { Markers = true });
        plot.Series.Add(new SvgSeries("down", [(0, double.NaN), (1, double.NaN)]) { Markers = true });
        var text = new StringWriter();
        plot.Write(text);
        Assert.DoesNotContain("NaN", text.ToString());
        Assert.DoesNotContain("Infinity", text.ToString());
        var doc = XDocument.Parse(text.ToString());
        var lines = doc.Descendants(Svg + "polyline").ToList();
        Assert.Equal(2, lines.Count); // qkv's two runs; down has no finite point
        Assert.All(lines, l => Assert.Equal("qkv", (string)l.Attribute("data-series")!));
        Assert.Single(((string)lines[0].Attribute("points")!).Split(' '));
        Assert.Equal(2, ((string)lines[1].Attribute("points")!).Split(' ').Length);
        Assert.Equal(3, doc.Descendants(Svg + "circle").Count(c => (string?)c.Attribute("data-series") == "qkv"));
        Assert.Contains(doc.Descendants(Svg + "text"), t => t.Value == "down"); // still in the legend
    }

    /// <summary>A lone finite point between gaps draws no line; without markers it was invisible. It gets a dot.</summary>
    [Fact]
    public void ALonePointBetweenGapsIsDrawn()
    {
        var plot = new SvgLinePlot { Title = "loss", XLabel = "step", YLabel = "loss" };
        plot.Series.Add(new SvgSeries("train", [(0, double.NaN), (1, 2.0), (2, double.NaN)]));
        var text = new StringWriter();
        plot.Write(text);
        var doc = XDocument.Parse(text.ToString());
        Assert.Single(doc.Descendants(Svg + "circle"), c => (string?)c.Attribute("data-series") == "train");
    }

    /// <summary>
    /// A constant series of more than 2000 points is averaged into buckets whose means differ by an ulp ((0.1 + 0.1 +
    /// 0.1) / 3 ≠ 0.1): the tick step fell below an ulp and the tick loop never ended (logs --plot hung).
    /// </summary>
    [Fact(Timeout = 20_000)]
    public async Task ARangeOfAFewUlpsEnds()
    {
        var plot = new SvgLinePlot { Title = "flat", XLabel = "step", YLabel = "v" };
        plot.Series.Add(new SvgSeries("v", Enumerable.Range(0, 4999).Select(i => ((double)i, 0.1)).ToList()));
        var text = new StringWriter();
        await Task.Run(() => plot.Write(text), TestContext.Current.CancellationToken);
        Assert.Contains("<polyline", text.ToString());
        Assert.InRange(SvgLinePlot.Ticks(0.1, 0.10000000000000002, 6).Length, 1, 1001);
    }
}
