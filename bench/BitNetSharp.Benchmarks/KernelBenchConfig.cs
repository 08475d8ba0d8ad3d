using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace BitNetSharp.Benchmarks;

/// <summary>Bytes of weights (or buffer) one call reads, for the GB/s column.</summary>
public interface IBytesPerOperation
{
    long BytesPerOperation(string method);
}

/// <summary>A short job (the machine has two cores and a 90-minute CI budget) plus GB/s and "× fp32" columns.</summary>
public sealed class KernelBenchConfig : ManualConfig
{
    public KernelBenchConfig()
    {
        AddJob(Job.Default.WithWarmupCount(3).WithIterationCount(12).WithId("kernel"));
        AddColumn(new GigabytesPerSecondColumn(), new SpeedupOverFloat32Column());
        WithOrderer(new BenchmarkDotNet.Order.DefaultOrderer(BenchmarkDotNet.Order.SummaryOrderPolicy.Declared));
    }
}

/// <summary>Weight bytes read per second (GB = 1e9 bytes).</summary>
public sealed class GigabytesPerSecondColumn : IColumn
{
    public string Id => nameof(GigabytesPerSecondColumn);
    public string ColumnName => "GB/s";
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => 0;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => "Weight bytes read per second (1 GB = 1e9 B)";
    public bool IsAvailable(Summary summary) => true;
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        var report = summary[benchmarkCase];
        if (report?.ResultStatistics is null) return "-";
        return (Bytes(benchmarkCase) / report.ResultStatistics.Mean).ToString("F2");
    }

    internal static long Bytes(BenchmarkCase benchmarkCase)
    {
        var instance = (IBytesPerOperation)Activator.CreateInstance(benchmarkCase.Descriptor.Type)!;
        foreach (var p in benchmarkCase.Parameters.Items)
            benchmarkCase.Descriptor.Type.GetProperty(p.Name)!.SetValue(instance, p.Value);
        if (instance is MatVecBenchmarks m) return MatVecBytes(m.Shape, benchmarkCase.Descriptor.WorkloadMethod.Name);
        return instance.BytesPerOperation(benchmarkCase.Descriptor.WorkloadMethod.Name);
    }

    private static long MatVecBytes(string shape, string method)
    {
        var parts = shape.Split('x');
        long k = long.Parse(parts[0]), n = long.Parse(parts[1]);
        return method == nameof(MatVecBenchmarks.Float32) ? k * n * 4 : n * ((k + 127) / 128 * 128) / 4;
    }
}

/// <summary>How many times faster than the fp32 mat-vec of the same shape, in the same run.</summary>
public sealed class SpeedupOverFloat32Column : IColumn
{
    public string Id => nameof(SpeedupOverFloat32Column);
    public string ColumnName => "× fp32";
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => 1;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => "Speed-up over the dense fp32 mat-vec of the same shape, same run";
    public bool IsAvailable(Summary summary) => true;
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        var mine = summary[benchmarkCase]?.ResultStatistics;
        if (mine is null || benchmarkCase.Descriptor.Type != typeof(MatVecBenchmarks)) return "-";
        var f32 = summary.BenchmarksCases.FirstOrDefault(c =>
            c.Descriptor.WorkloadMethod.Name == nameof(MatVecBenchmarks.Float32) &&
            c.Parameters.DisplayInfo == benchmarkCase.Parameters.DisplayInfo);
        var theirs = f32 is null ? null : summary[f32]?.ResultStatistics;
        return theirs is null ? "-" : (theirs.Mean / mine.Mean).ToString("F1");
    }
}
