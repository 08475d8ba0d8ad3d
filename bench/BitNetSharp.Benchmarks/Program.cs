using BenchmarkDotNet.Running;

// dotnet run -c Release --project bench/BitNetSharp.Benchmarks -- --filter '*'
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
