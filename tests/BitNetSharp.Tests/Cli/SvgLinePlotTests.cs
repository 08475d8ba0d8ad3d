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
}
