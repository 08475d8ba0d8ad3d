using BenchmarkDotNet.Running;
using BitNetSharp.Benchmarks;

// BenchmarkDotNet:  dotnet run -c Release --project bench/BitNetSharp.Benchmarks -- --filter '*'
// Quick dev loop:   dotnet run -c Release --project bench/BitNetSharp.Benchmarks -- quick [tokens]
// Quantizer A/B:    dotnet run -c Release --project bench/BitNetSharp.Benchmarks -- quick-quant
if (args.Length > 0 && args[0] == "quick-quant")
{
    QuickQuantizerTimer.Run();
    return;
}
if (args.Length > 0 && args[0] == "quick")
{
    QuickKernelTimer.Run(args.Length > 1 ? int.Parse(args[1]) : 1);
    return;
}
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
