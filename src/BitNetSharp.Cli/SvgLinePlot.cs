using System.Globalization;
using System.Text;

namespace BitNetSharp.Cli;

/// <summary>
/// A minimal SVG line chart: one polyline per series (optionally with point markers), axes with "nice" ticks and
/// labels, a legend on the right. Pure text, no native libraries, so the tool package carries none.
/// </summary>
public sealed class SvgLinePlot
{
    private const int Width = 1000, Height = 560, Left = 80, Right = 150, Top = 40, Bottom = 56;

    /// <summary>Points beyond which a series is averaged into this many buckets, keeping the file small.</summary>
    public const int MaxPointsPerSeries = 2000;

    public required string Title { get; init; }
    public required string XLabel { get; init; }
    public required string YLabel { get; init; }

    public List<SvgSeries> Series { get; } = [];

    public void Write(TextWriter w)
    {
        var series = new List<SvgSeries>(Series.Count);
        foreach (var s in Series) series.Add(s with { Points = Downsample(s.Points) });

        double xMin = double.PositiveInfinity, xMax = double.NegativeInfinity, yMin = double.PositiveInfinity, yMax = double.NegativeInfinity;
        foreach (var s in series)
            foreach (var (x, y) in s.Points)
            {
                if (!double.IsFinite(x) || !double.IsFinite(y)) continue; // a gap in the line (a NaN crest, a layer that blew up)
                xMin = Math.Min(xMin, x); xMax = Math.Max(xMax, x);
                yMin = Math.Min(yMin, y); yMax = Math.Max(yMax, y);
            }
        if (double.IsInfinity(xMin)) { xMin = 0; xMax = 1; yMin = 0; yMax = 1; }
        if (xMax <= xMin) xMax = xMin + 1;
        // A range of a few ulps (a constant series averaged into buckets: (0.1 + 0.1 + 0.1) / 3 ≠ 0.1) is flat: its tick
        // step fell below an ulp and the tick loop never advanced.
        if (yMax - yMin <= 1e-9 * Math.Max(Math.Abs(yMax), Math.Abs(yMin))) { yMax += Math.Abs(yMax) * 0.5 + 0.5; yMin -= Math.Abs(yMin) * 0.5 + 0.5; }
        if (xMax - xMin <= 1e-9 * Math.Max(Math.Abs(xMax), Math.Abs(xMin))) xMax = xMin + Math.Max(1, Math.Abs(xMin) * 1e-6);
        var xTicks = Ticks(xMin, xMax, 8);
        var yTicks = Ticks(yMin, yMax, 6);
        xMin = Math.Min(xMin, xTicks[0]); xMax = Math.Max(xMax, xTicks[^1]);
        yMin = Math.Min(yMin, yTicks[0]); yMax = Math.Max(yMax, yTicks[^1]);
        int plotW = Width - Left - Right, plotH = Height - Top - Bottom;
        double Px(double x) => Left + (x - xMin) / (xMax - xMin) * plotW;
        double Py(double y) => Top + plotH - (y - yMin) / (yMax - yMin) * plotH;

        w.WriteLine("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
        w.WriteLine($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{Width}\" height=\"{Height}\" viewBox=\"0 0 {Width} {Height}\" font-family=\"sans-serif\" font-size=\"12\">");
        w.WriteLine($"<rect width=\"{Width}\" height=\"{Height}\" fill=\"white\"/>");
        w.WriteLine($"<text x=\"{Width / 2}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{Escape(Title)}</text>");
        w.WriteLine("<g class=\"axes\" stroke=\"#444\" fill=\"none\">");
        w.WriteLine($"<line x1=\"{Left}\" y1=\"{Top + plotH}\" x2=\"{Left + plotW}\" y2=\"{Top + plotH}\"/>");
        w.WriteLine($"<line x1=\"{Left}\" y1=\"{Top}\" x2=\"{Left}\" y2=\"{Top + plotH}\"/>");
        w.WriteLine("</g>");
        w.WriteLine("<g class=\"ticks\" fill=\"#222\">");
        foreach (var t in xTicks)
        {
            string x = N(Px(t));
            w.WriteLine($"<line x1=\"{x}\" y1=\"{Top + plotH}\" x2=\"{x}\" y2=\"{Top + plotH + 5}\" stroke=\"#444\"/><line x1=\"{x}\" y1=\"{Top}\" x2=\"{x}\" y2=\"{Top + plotH}\" stroke=\"#eee\"/>");
            w.WriteLine($"<text x=\"{x}\" y=\"{Top + plotH + 18}\" text-anchor=\"middle\">{TickLabel(t)}</text>");
        }
        foreach (var t in yTicks)
        {
            string y = N(Py(t));
            w.WriteLine($"<line x1=\"{Left - 5}\" y1=\"{y}\" x2=\"{Left}\" y2=\"{y}\" stroke=\"#444\"/><line x1=\"{Left}\" y1=\"{y}\" x2=\"{Left + plotW}\" y2=\"{y}\" stroke=\"#eee\"/>");
            w.WriteLine($"<text x=\"{Left - 8}\" y=\"{y}\" text-anchor=\"end\" dominant-baseline=\"middle\">{TickLabel(t)}</text>");
        }
        w.WriteLine("</g>");
        w.WriteLine($"<text x=\"{Left + plotW / 2}\" y=\"{Height - 14}\" text-anchor=\"middle\">{Escape(XLabel)}</text>");
        w.WriteLine($"<text x=\"18\" y=\"{Top + plotH / 2}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {Top + plotH / 2})\">{Escape(YLabel)}</text>");

        w.WriteLine("<g class=\"series\" fill=\"none\">");
        var line = new StringBuilder();
        for (int s = 0; s < series.Count; s++)
        {
            // One polyline per run of finite points: a NaN or infinite value breaks the line there instead of
            // poisoning the axes (it made every tick NaN and the chart threw).
            var points = series[s].Points;
            for (int i = 0; i < points.Count;)
            {
                while (i < points.Count && !Finite(points[i])) i++;
                if (i == points.Count) break;
                line.Clear();
                int runStart = i;
                for (; i < points.Count && Finite(points[i]); i++)
                    line.Append(N(Px(points[i].X))).Append(',').Append(N(Py(points[i].Y))).Append(' ');
                // A lone point between gaps draws no line: a dot keeps it visible when the series has no markers.
                if (i - runStart == 1 && !series[s].Markers)
                    w.WriteLine($"<circle data-series=\"{Escape(series[s].Name)}\" cx=\"{N(Px(points[runStart].X))}\" cy=\"{N(Py(points[runStart].Y))}\" r=\"{N(Math.Max(1.5, series[s].Width))}\" fill=\"{StrokeOf(series, s)}\"/>");
                w.WriteLine($"<polyline data-series=\"{Escape(series[s].Name)}\" stroke=\"{StrokeOf(series, s)}\" stroke-width=\"{N(series[s].Width)}\" points=\"{line.ToString().TrimEnd()}\"/>");
            }
        }
        w.WriteLine("</g>");
        w.WriteLine("<g class=\"markers\">");
        for (int s = 0; s < series.Count; s++)
        {
            if (!series[s].Markers) continue;
            foreach (var (x, y) in series[s].Points)
                if (Finite((x, y))) w.WriteLine($"<circle data-series=\"{Escape(series[s].Name)}\" cx=\"{N(Px(x))}\" cy=\"{N(Py(y))}\" r=\"3\" fill=\"{StrokeOf(series, s)}\"/>");
        }
        w.WriteLine("</g>");

        w.WriteLine("<g class=\"legend\">");
        double spacing = series.Count == 0 ? 16 : Math.Min(16, (double)(Height - Top - 10) / series.Count);
        for (int s = 0; s < series.Count; s++)
        {
            string y = N(Top + 6 + s * spacing);
            int lx = Width - Right + 16;
            string marker = series[s].Markers ? $"<circle cx=\"{lx + 10}\" cy=\"{y}\" r=\"3\" fill=\"{StrokeOf(series, s)}\"/>" : "";
            w.WriteLine($"<line x1=\"{lx}\" y1=\"{y}\" x2=\"{lx + 20}\" y2=\"{y}\" stroke=\"{StrokeOf(series, s)}\" stroke-width=\"2\"/>{marker}<text x=\"{lx + 26}\" y=\"{y}\" dominant-baseline=\"middle\" font-size=\"{(spacing < 12 ? 9 : 11)}\">{Escape(series[s].Name)}</text>");
        }
        w.WriteLine("</g>");
        w.WriteLine("</svg>");
    }

    private static bool Finite((double X, double Y) p) => double.IsFinite(p.X) && double.IsFinite(p.Y);

    private static string StrokeOf(List<SvgSeries> series, int index) => series[index].Color ?? Color(index, series.Count);

    private static List<(double X, double Y)> Downsample(List<(double X, double Y)> points)
    {
        if (points.Count <= MaxPointsPerSeries) return points;
        var result = new List<(double X, double Y)>(MaxPointsPerSeries);
        for (int b = 0; b < MaxPointsPerSeries; b++)
        {
            int from = (int)((long)b * points.Count / MaxPointsPerSeries), to = (int)((long)(b + 1) * points.Count / MaxPointsPerSeries);
            double sx = 0, sy = 0;
            for (int i = from; i < to; i++) { sx += points[i].X; sy += points[i].Y; }
            result.Add((sx / (to - from), sy / (to - from)));
        }
        return result;
    }

    /// <summary>About <paramref name="count"/> round tick values (1, 2 or 5 × 10^k apart) covering [min, max].</summary>
    public static double[] Ticks(double min, double max, int count)
    {
        double raw = (max - min) / Math.Max(1, count);
        double magnitude = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        double step = (raw / magnitude) switch { <= 1 => 1, <= 2 => 2, <= 5 => 5, _ => 10 } * magnitude;
        double first = Math.Floor(min / step) * step, last = Math.Ceiling(max / step) * step;
        var ticks = new List<double>();
        // Counted, not accumulated: t += step stops advancing once step is below half an ulp of t.
        long n = (long)Math.Round((last - first) / step);
        if (!double.IsFinite(step) || step <= 0 || n < 0 || n > 1000) return [min, max];
        for (long k = 0; k <= n; k++) ticks.Add(Math.Round((first + k * step) / step) * step);
        return [.. ticks];
    }

    private static string TickLabel(double v) => Math.Abs(v) is >= 1e5 or (< 1e-3 and > 0)
        ? v.ToString("0.##E0", CultureInfo.InvariantCulture)
        : v.ToString("0.####", CultureInfo.InvariantCulture);

    private static string N(double v) => v.ToString("0.##", CultureInfo.InvariantCulture);

    // Hues spread around the wheel, alternating lightness so neighbouring layers differ.
    private static string Color(int index, int count)
    {
        double h = 360.0 * index / Math.Max(1, count), l = index % 2 == 0 ? 0.42 : 0.58, s = 0.7;
        double c = (1 - Math.Abs(2 * l - 1)) * s, x = c * (1 - Math.Abs(h / 60 % 2 - 1)), m = l - c / 2;
        var (r, g, b) = (int)(h / 60) switch { 0 => (c, x, 0.0), 1 => (x, c, 0.0), 2 => (0.0, c, x), 3 => (0.0, x, c), 4 => (x, 0.0, c), _ => (c, 0.0, x) };
        return string.Create(CultureInfo.InvariantCulture, $"#{(int)Math.Round((r + m) * 255):x2}{(int)Math.Round((g + m) * 255):x2}{(int)Math.Round((b + m) * 255):x2}");
    }

    private static string Escape(string s) => s.Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;").Replace("\"", "&quot;");
}

/// <summary>One line of an <see cref="SvgLinePlot"/>: legend name, points, and how it is drawn.</summary>
public sealed record SvgSeries(string Name, List<(double X, double Y)> Points)
{
    /// <summary>An SVG colour such as <c>#4682b4</c>; null spreads the series around the colour wheel.</summary>
    public string? Color { get; init; }

    public double Width { get; init; } = 1.5;

    /// <summary>A dot at every point, for sparse series such as validation losses.</summary>
    public bool Markers { get; init; }
}
