using System.Diagnostics;
using System.Globalization;
using System.Net.ServerSentEvents;
using System.Text;
using System.Text.Json;
using BitNetSharp.Generation.Scheduler;
using BitNetSharp.LoadBench;
using BitNetSharp.Model;
using BitNetSharp.Server;
using BitNetSharp.Tokenization;

// A load benchmark for `bitnet serve`: an in-process server on a free loopback port serving a synthetic model,
// and 1, 4, 8, 16 … concurrent streaming clients over real HTTP. Per round: aggregate generation tokens/s (all
// completion tokens / wall time), TTFT (request sent → first text chunk) and ITL (gaps between a stream's chunks)
// percentiles, plus the server's own view from /metrics.
//
// dotnet run -c Release --project bench/BitNetSharp.LoadBench -- [--shape tiny|large|2b4t|DIMxLAYERS] [--streams 1,4,8,16]
//   [--max-tokens 64] [--prompt-tokens 32] [--threads N] [--max-batched-tokens 256] [--embedding f16|f32|bf16]
//   [--repeat N] [--model file.gguf] [--keep-model]
//
// --repeat N measures every concurrency N times, cycling through them (1, 4, 8, 16, 1, 4, …), so each ratio to one
// stream is taken against the single-stream round of the same cycle, minutes apart at most: on a shared host whose
// bandwidth and CPU share drift, that ratio is far steadier than ratios between separate runs. The table then shows
// medians over the cycles (percentiles pool every cycle's samples), and the per-cycle ratios follow it.
//
// Against a server that is already running (a replica, or nginx in front of several; see ExternalLoad.cs):
// dotnet run -c Release --project bench/BitNetSharp.LoadBench -- --url http://127.0.0.1:8080/ [--clients 6]
//   [--duration 30] [--stream-ratio 0.5] [--max-tokens 64] [--prompt TEXT] [--request-timeout 120] [--log requests.jsonl]
// counts every request's outcome: complete, an explicit error (HTTP status, SSE error event, broken connection), a
// timeout, or a silent truncation (exit code 3 if any; 4 if no request ended ok).
//
// A soak against a running server (see Soak.cs and bench/soak.sh, which starts `bitnet serve` and runs it):
// dotnet run -c Release --project bench/BitNetSharp.LoadBench -- --soak --url http://127.0.0.1:8080/ [--duration 1800]
//   [--clients 16] [--sample 5] [--max-tokens 48] [--pid SERVER_PID] [--warmup S] [--idle-timeout 60] [--rss-tolerance 0.05]
//   [--latency-tolerance 1.5] [--body-limit 1048576] [--mix completion=25,...] [--seed 1] [--api-key KEY] [--out PREFIX]
//   [--request-timeout 600]
// streaming and non-streaming completions and chat, client disconnects, malformed and oversized requests at saturation;
// samples RSS, GC heap, sequences, queue, KV use and client latency; writes PREFIX.{md,csv,svg} and exits 1 on a failed verdict.

Dictionary<string, string> args_;
try
{
    args_ = ParseArgs(args);
}
catch (ArgumentException e)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 2;
}
if (args_.ContainsKey("soak")) return await Soak.RunCliAsync(args_);
if (args_.ContainsKey("url"))
{
    try
    {
        return await ExternalLoad.RunAsync(args_);
    }
    catch (Exception e) when (e is ArgumentException or FormatException or UriFormatException)
    {
        Console.Error.WriteLine($"error: {e.Message}");
        return 2;
    }
}
var shape = ShapeFrom(args_.GetValueOrDefault("shape", "large"));
int[] streams = args_.GetValueOrDefault("streams", "1,4,8,16").Split(',').Select(int.Parse).ToArray();
if (streams.Distinct().Count() != streams.Length || streams.Any(n => n < 1))
{
    // rounds are kept per concurrency and paired by cycle: a repeated value would pair one cycle with another's round
    Console.Error.WriteLine($"error: --streams must list distinct positive counts; got {string.Join(',', streams)}.");
    return 2;
}
int maxTokens = int.Parse(args_.GetValueOrDefault("max-tokens", "64"), CultureInfo.InvariantCulture);
int promptTokens = int.Parse(args_.GetValueOrDefault("prompt-tokens", "32"), CultureInfo.InvariantCulture);
int threads = int.Parse(args_.GetValueOrDefault("threads", "0"), CultureInfo.InvariantCulture);
int maxBatched = int.Parse(args_.GetValueOrDefault("max-batched-tokens", "256"), CultureInfo.InvariantCulture);
int maxSeqs = streams.Max();
int repeat = Math.Max(1, int.Parse(args_.GetValueOrDefault("repeat", "1"), CultureInfo.InvariantCulture));
var embedding = Enum.Parse<BitNetSharp.Formats.Gguf.GgmlType>(args_.GetValueOrDefault("embedding", "F16"), ignoreCase: true);

string path = args_.GetValueOrDefault("model", Path.Combine(Path.GetTempPath(), $"bitnet-loadbench-{shape.Name}-{embedding}.gguf".ToLowerInvariant()));
if (!File.Exists(path))
{
    var sw = Stopwatch.StartNew();
    Console.Error.WriteLine($"writing synthetic model {shape} to {path} ...");
    SyntheticChatModel.Write(shape, path, embedding);
    Console.Error.WriteLine($"  {new FileInfo(path).Length / 1e6:F0} MB in {sw.Elapsed.TotalSeconds:F1} s");
}

int ctx = Math.Min(shape.ContextLength, promptTokens + maxTokens + 8);
var server = await BitNetServer.StartAsync(new ServerOptions
{
    Host = "127.0.0.1",
    Port = 0,
    LoadModel = () =>
    {
        var weights = ModelWeights.Load(path);
        return new LoadedModel(weights, TokenizerLoader.FromGguf(weights.Gguf!), shape.Name);
    },
    Scheduler = new SchedulerOptions { MaxSequences = maxSeqs, MaxBatchedTokens = Math.Max(maxBatched, maxSeqs), MaxQueue = 1024, ContextLength = ctx, Threads = threads },
    MaxChoices = 1,
    MaxTokensLimit = maxTokens,
    WarmupRequests = Math.Min(4, maxSeqs),
    ConsoleLogLevel = Microsoft.Extensions.Logging.LogLevel.Warning,
});
await server.Ready;
using var http = new HttpClient { BaseAddress = server.Address, Timeout = TimeSpan.FromMinutes(30) };
var models = JsonDocument.Parse(await http.GetStringAsync("v1/models")).RootElement.GetProperty("data")[0].GetProperty("meta");
Console.WriteLine($"# bitnet serve load benchmark");
Console.WriteLine();
Console.WriteLine($"model: synthetic `{shape.Name}` (dim {shape.Dim}, {shape.Layers} layers, ff {shape.FeedForward}, vocab {shape.VocabSize}, {embedding} embedding/head); " +
                  $"prompt {promptTokens} tokens, {maxTokens} generated per stream (ignore_eos, greedy); --max-seqs {maxSeqs}, --max-batched-tokens {Math.Max(maxBatched, maxSeqs)}, ctx {ctx}; " +
                  $"{Environment.ProcessorCount} logical CPUs, {(threads > 0 ? threads.ToString(CultureInfo.InvariantCulture) : "default")} worker threads; {RuntimeInfo()}");
Console.WriteLine();

// Rounds at every concurrency first, so each batch shape's path has been compiled at tier 1 before measuring.
foreach (int n in streams) await Round(n, Math.Min(16, maxTokens));

// rounds[n][cycle]; the ratios of a cycle are to that cycle's single-stream round.
var rounds = streams.Distinct().ToDictionary(n => n, _ => new List<(double TokS, double Decode, List<double> Ttft, List<double> Itl, double StepTokens, double StepMs)>());
for (int cycle = 0; cycle < repeat; cycle++)
    foreach (int n in streams)
    {
        var (tokS, ttft, itl, stepTokens, stepMs) = await Round(n, maxTokens);
        rounds[n].Add((tokS, itl.Count == 0 ? double.NaN : n * 1000 / itl.Average(), ttft, itl, stepTokens, stepMs)); // no gaps: one text event per stream
    }
bool haveSingle = rounds.ContainsKey(1);
double Ratio(int n, int cycle, bool decode) => decode ? rounds[n][cycle].Decode / rounds[1][cycle].Decode : rounds[n][cycle].TokS / rounds[1][cycle].TokS;
double MedianRatio(int n, bool decode) => Median(Enumerable.Range(0, repeat).Select(c => Ratio(n, c, decode)));

Console.WriteLine(repeat == 1 ? "" : $"Medians over {repeat} cycles; ratios are medians of each cycle's ratio to its own single-stream round.");
Console.WriteLine();
Console.WriteLine("| streams | gen tok/s (aggregate, wall) | × 1 stream | decode tok/s (streams ÷ mean ITL) | × 1 stream | TTFT p50 / p90 / p99 ms | ITL p50 / p90 / p99 ms | server tokens/step (mean) | forward ms/step (mean) |");
Console.WriteLine("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
foreach (int n in streams.Distinct())
{
    var r = rounds[n];
    List<double> ttft = [.. r.SelectMany(x => x.Ttft)], itl = [.. r.SelectMany(x => x.Itl)];
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
        $"| {n} | {Median(r.Select(x => x.TokS)):F1} | {(haveSingle ? $"{MedianRatio(n, false):F2}×" : "–")} | {Median(r.Select(x => x.Decode)):F1} | {(haveSingle ? $"{MedianRatio(n, true):F2}×" : "–")} | {P(ttft, 50):F0} / {P(ttft, 90):F0} / {P(ttft, 99):F0} | {P(itl, 50):F1} / {P(itl, 90):F1} / {P(itl, 99):F1} | {r.Average(x => x.StepTokens):F1} | {r.Average(x => x.StepMs):F1} |"));
}
if (repeat > 1 && haveSingle)
{
    Console.WriteLine();
    foreach (int n in streams.Distinct().Where(n => n != 1))
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"- {n} streams, decode × 1 stream in each cycle: {string.Join(", ", Enumerable.Range(0, repeat).Select(c => $"{Ratio(n, c, true):F2}×"))}; aggregate: {string.Join(", ", Enumerable.Range(0, repeat).Select(c => $"{Ratio(n, c, false):F2}×"))}"));
}
await server.DisposeAsync();
if (!args_.ContainsKey("keep-model") && !args_.ContainsKey("model")) File.Delete(path);
return 0;

async Task<(double TokensPerSecond, List<double> Ttft, List<double> Itl, double StepTokens, double StepMs)> Round(int n, int tokens)
{
    var before = await Metrics();
    var rng = new Random(n);
    int low = Math.Min(256, shape.VocabSize / 2); // past the byte tokens where the vocabulary is large enough
    var prompts = Enumerable.Range(0, n).Select(_ => Enumerable.Range(0, promptTokens).Select(_ => low + rng.Next(shape.VocabSize - low - 1)).ToArray()).ToArray();
    var wall = Stopwatch.StartNew();
    var results = await Task.WhenAll(prompts.Select(p => Stream(p, tokens)));
    double seconds = wall.Elapsed.TotalSeconds;
    var after = await Metrics();
    double steps = after.GetValueOrDefault("bitnet_engine_steps_total") - before.GetValueOrDefault("bitnet_engine_steps_total");
    double stepTokens = after.GetValueOrDefault("bitnet_engine_step_tokens_sum") - before.GetValueOrDefault("bitnet_engine_step_tokens_sum");
    double stepSeconds = after.GetValueOrDefault("bitnet_engine_step_duration_seconds_sum") - before.GetValueOrDefault("bitnet_engine_step_duration_seconds_sum");
    return (results.Sum(r => r.Tokens) / seconds, [.. results.Select(r => r.Ttft)], [.. results.SelectMany(r => r.Gaps)], steps > 0 ? stepTokens / steps : 0,
        steps > 0 ? stepSeconds / steps * 1000 : 0);
}

async Task<(int Tokens, double Ttft, List<double> Gaps)> Stream(int[] prompt, int tokens)
{
    var body = JsonSerializer.Serialize(new { model = shape.Name, prompt, max_tokens = tokens, temperature = 0, ignore_eos = true, stream = true, stream_options = new { include_usage = true } });
    var sw = Stopwatch.StartNew();
    using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
    using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
    response.EnsureSuccessStatusCode();
    await using var stream = await response.Content.ReadAsStreamAsync();
    double ttft = double.NaN, last = 0;
    int generated = 0;
    var gaps = new List<double>();
    await foreach (var e in SseParser.Create(stream).EnumerateAsync())
    {
        if (e.Data == "[DONE]") break;
        var root = JsonDocument.Parse(e.Data).RootElement;
        if (root.TryGetProperty("usage", out var u) && u.ValueKind == JsonValueKind.Object) generated = u.GetProperty("completion_tokens").GetInt32();
        if (root.GetProperty("choices").GetArrayLength() == 0 || root.GetProperty("choices")[0].GetProperty("text").GetString() is not { Length: > 0 }) continue;
        double now = sw.Elapsed.TotalMilliseconds;
        if (double.IsNaN(ttft)) ttft = now;
        else gaps.Add(now - last);
        last = now;
    }
    return (generated, ttft, gaps);
}

async Task<Dictionary<string, double>> Metrics()
{
    var text = await http.GetStringAsync("metrics");
    var values = new Dictionary<string, double>();
    foreach (var line in text.Split('\n'))
    {
        if (line.Length == 0 || line[0] == '#' || line.Contains('{')) continue;
        var parts = line.Split(' ');
        values[parts[0]] = double.Parse(parts[1], CultureInfo.InvariantCulture);
    }
    return values;
}

static double Median(IEnumerable<double> xs)
{
    var sorted = xs.Order().ToArray();
    return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
}

static double P(List<double> xs, double p)
{
    var sorted = xs.Where(double.IsFinite).Order().ToArray();
    if (sorted.Length == 0) return double.NaN;
    double rank = p / 100 * (sorted.Length - 1);
    int lo = (int)Math.Floor(rank), hi = (int)Math.Ceiling(rank);
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo);
}

static string RuntimeInfo() => $".NET {Environment.Version}, {System.Runtime.InteropServices.RuntimeInformation.OSArchitecture}";

static SyntheticShape ShapeFrom(string name)
{
    var parts = name.Split('x');
    if (parts.Length == 2 && int.TryParse(parts[0], out int dim) && int.TryParse(parts[1], out int layers))
        return new SyntheticShape(name, dim, layers, Math.Max(1, dim / 128), Math.Max(1, dim / 128), dim * 8 / 3 / 64 * 64, 32002, 2048);
    return SyntheticShape.ByName(name);
}

static Dictionary<string, string> ParseArgs(string[] a)
{
    var d = new Dictionary<string, string>();
    for (int i = 0; i < a.Length; i++)
    {
        if (!a[i].StartsWith("--", StringComparison.Ordinal)) throw new ArgumentException($"Unexpected argument '{a[i]}'.");
        string key = a[i][2..];
        d[key] = i + 1 < a.Length && !a[i + 1].StartsWith("--", StringComparison.Ordinal) ? a[++i] : "true";
    }
    return d;
}
