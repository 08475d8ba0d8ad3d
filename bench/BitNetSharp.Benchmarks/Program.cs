using BenchmarkDotNet.Running;
using BitNetSharp.Benchmarks;

// BenchmarkDotNet:  dotnet run -c Release --project bench/BitNetSharp.Benchmarks -- --filter '*'
// Quick dev loop:   dotnet run -c Release --project bench/BitNetSharp.Benchmarks -- quick [tokens]
// Quantizer A/B:    dotnet run -c Release --project bench/BitNetSharp.Benchmarks -- quick-quant
// Trainer matmul:   dotnet run -c Release --project bench/BitNetSharp.Benchmarks -- quick-matmul [threads]
// Decode kernels:   dotnet run -c Release --project bench/BitNetSharp.Benchmarks -- quick-decode [layers] [rounds] [seconds] | quick-decode head [rounds] [seconds] | quick-decode threads [threads] [layers] [rounds] [seconds] | quick-decode qhead [rounds] [seconds]
// Prefill lookup:   dotnet run -c Release --project bench/BitNetSharp.Benchmarks -- quick-prefill [tokens] [rounds] [threads...]
// Attention:        dotnet run -c Release --project bench/BitNetSharp.Benchmarks -- quick-attention [depth] [threads...]   (QUICK_ATTENTION_LAYERS=30: the cache from memory; QUICK_ATTENTION_TYPES=int8,f16: only those; QUICK_ATTENTION_HUGEPAGES=1: buffers advised for huge pages)
// Int8 hot/cold:     dotnet run -c Release --project bench/BitNetSharp.Benchmarks -- quick-int8-cold [rounds]   (one kv head's int8 kernels in cache and from memory, beside a plain read)
// Through KvCache:   dotnet run -c Release --project bench/BitNetSharp.Benchmarks -- quick-int8-cache [rounds]  (QUICK_CACHE_LAYERS=64: rotate layers from memory)
// Int8 attention:   dotnet run -c Release --project bench/BitNetSharp.Benchmarks -- quick-int8-attention [rounds]
// GQA groups:       dotnet run -c Release --project bench/BitNetSharp.Benchmarks -- quick-gqa [positions] [headDim] [kvHeads]
// Worker wake-up:   dotnet run -c Release --project bench/BitNetSharp.Benchmarks -- quick-wake [rounds] [trials]
// Multiply rates:   dotnet run -c Release --project bench/BitNetSharp.Benchmarks -- quick-ops [rounds]   (ns per vpmaddubsw/vpmaddwd/vpdpbusd on this core)
if (args.Length > 0 && args[0] == "quick-attn-variants")
{
    QuickAttentionVariants.Run(args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 3);
    return;
}
if (args.Length > 0 && args[0] == "quick-ops")
{
    QuickInstructionRates.Run(args.Length > 1 ? int.Parse(args[1]) : 7);
    return;
}
if (args.Length > 0 && args[0] == "quick-wake")
{
    BitNetSharp.Benchmarks.QuickWorkerWake.Run(args.Length > 1 ? int.Parse(args[1]) : 300, args.Length > 2 ? int.Parse(args[2]) : 3);
    return;
}
if (args.Length > 0 && args[0] == "quick-gqa")
{
    BitNetSharp.Benchmarks.QuickGqaAttention.Run(args.Length > 1 ? int.Parse(args[1]) : 132, args.Length > 2 ? int.Parse(args[2]) : 64, args.Length > 3 ? int.Parse(args[3]) : 2);
    return;
}
if (args.Length > 0 && args[0] == "quick-int8-cache")
{
    QuickInt8CacheCalls.Run(args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 3);
    return;
}
if (args.Length > 0 && args[0] == "quick-int8-cold")
{
    QuickInt8AttentionCold.Run(args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 3);
    return;
}
if (args.Length > 0 && args[0] == "quick-small-attention")
{
    foreach (var t in (args.Length > 2 ? args[2] : "f16,int8").Split(','))
        if (Environment.GetEnvironmentVariable("SMALL_2B4T") == "1") QuickSmallAttention.Run(args.Length > 1 ? int.Parse(args[1]) : 64, Enum.Parse<BitNetSharp.Model.KvCacheType>(t, true), 20, 5, 128);
        else QuickSmallAttention.Run(args.Length > 1 ? int.Parse(args[1]) : 64, Enum.Parse<BitNetSharp.Model.KvCacheType>(t, true));
    return;
}
if (args.Length > 1 && args[0] == "quick-product-timeline")
{
    QuickProductTimeline.Run(int.Parse(args[1]), int.Parse(args[2]), args.Length > 3 ? int.Parse(args[3]) : 2);
    return;
}
if (args.Length > 1 && args[0] == "quick-least-claims")
{
    QuickLeastClaims.Run(args[1], args.Length > 2 ? int.Parse(args[2]) : 7, args.Length > 3 ? int.Parse(args[3]) : 2, args.Length > 4 ? int.Parse(args[4]) : 64);
    return;
}
if (args.Length > 1 && args[0] == "quick-kv-pages")
{
    QuickKvPages.Run(args[1], args.Length > 2 ? int.Parse(args[2]) : 4096, args.Length > 3 ? int.Parse(args[3]) : 5, args.Length > 4 ? int.Parse(args[4]) : 2);
    return;
}
if (args.Length > 1 && args[0] == "quick-spin-ab")
{
    QuickSpinAb.Run(args[1], args.Length > 2 ? int.Parse(args[2]) : 64, args.Length > 3 ? int.Parse(args[3]) : 5);
    return;
}
if (args.Length > 0 && args[0] == "quick-call-latency")
{
    QuickCallLatency.Run(args.Length > 1 ? double.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 3);
    return;
}
if (args.Length > 0 && args[0] == "quick-chunk-cost")
{
    QuickChunkCost.Run(args.Length > 1 ? int.Parse(args[1]) : 3);
    return;
}
if (args.Length > 0 && args[0] == "quick-int8-attention")
{
    QuickInt8AttentionKernels.Run(args.Length > 1 ? int.Parse(args[1]) : 3);
    return;
}
if (args.Length > 0 && args[0] == "quick-attention")
{
    int depth = args.Length > 1 ? int.Parse(args[1]) : 4096;
    int[] threads = args.Length > 2 ? args[2..].Select(int.Parse).ToArray() : [1, 2];
    QuickAttentionTimer.Run(depth, threads);
    return;
}
if (args.Length > 1 && args[0] == "quick-decode" && args[1] == "threads")
{
    int Arg(int i, int fallback) => args.Length > i ? int.Parse(args[i]) : fallback;
    QuickDecodeThreads.Run(Arg(2, 2), Arg(3, 16), Arg(4, 7), args.Length > 5 ? double.Parse(args[5], System.Globalization.CultureInfo.InvariantCulture) : 0.3);
    return;
}
if (args.Length > 1 && args[0] == "quick-decode" && args[1] == "qhead")
{
    QuickQuantHead.Run(args.Length > 2 ? int.Parse(args[2]) : 5, args.Length > 3 ? double.Parse(args[3], System.Globalization.CultureInfo.InvariantCulture) : 0.5);
    return;
}
if (args.Length > 1 && args[0] == "quick-decode" && args[1] == "head")
{
    QuickDecodeVariants.RunHead(args.Length > 2 ? int.Parse(args[2]) : 5, args.Length > 3 ? double.Parse(args[3], System.Globalization.CultureInfo.InvariantCulture) : 0.5);
    return;
}
if (args.Length > 0 && args[0] == "quick-decode")
{
    QuickDecodeVariants.Run(args.Length > 1 ? int.Parse(args[1]) : 16, args.Length > 2 ? int.Parse(args[2]) : 5, args.Length > 3 ? double.Parse(args[3], System.Globalization.CultureInfo.InvariantCulture) : 0.5);
    return;
}
if (args.Length > 0 && args[0] == "quick-prefill")
{
    QuickPrefillLookup.Run(args.Length > 1 ? int.Parse(args[1]) : 64, args.Length > 2 ? int.Parse(args[2]) : 5, args.Length > 3 ? args[3..].Select(int.Parse).ToArray() : [1, 2]);
    return;
}
if (args.Length > 0 && args[0] == "quick-matmul")
{
    QuickMatMulTimer.Run(args.Length > 1 ? int.Parse(args[1]) : 1);
    return;
}
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
