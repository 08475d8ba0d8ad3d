#!/usr/bin/env bash
# Every per-CPU decode table in one file, measured on the machine this runs on: the read-bandwidth bound, decode and
# prefill of the 2B4T shape at depths 0 and 4096 for the int8 and f16 KV caches on 1 and all threads (tokens/s, % of the
# bound, depth ratio, attention ms/token), 1 to 8 sequences decoding together on all threads, the output head as f16, q8_0
# and q6_k (1, 2 and 4 sequences), the decode kernels in one process (from memory, in cache, and with prefetch into L1
# instead of L2), the quantized head kernels, and the attention kernels (in cache and from memory).
# Run it on a CPU that bench/results/ has no tables for yet (a Zen 5, an Intel core) and commit the file it writes.
# Usage: bash bench/cpu-tables.sh [OUT.md]   (DOTNET_EnableAVX512=0 bash bench/cpu-tables.sh: the AVX2 paths, file suffix -avx512-off)
#   default OUT: bench/results/cpu-tables-<lscpu model name>-<N>core.md
#   CPU_TABLES_QUICK=1: short runs that check the script works (not figures to publish); about 3 minutes.
# A full run takes ~15-25 minutes on 2 cores; keep the machine otherwise idle.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "cpu-tables.sh needs python3 (it turns bench --json into the summary table)" >&2; exit 1; }
cores=$(nproc)
threads=1; [ "$cores" -gt 1 ] && threads="1,$cores"
model_name=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
slug=$(echo "${model_name:-unknown-cpu}" | tr 'A-Z' 'a-z' | sed 's/([^)]*)//g; s/[^a-z0-9]\+/-/g; s/^-//; s/-$//')
# Hypervisors often show only "AMD EPYC": name the Zen generation from the CPU family and model so that one CPU's
# tables do not overwrite another's (family 17h: Zen/Zen 2; 19h: Zen 3, or Zen 4 for models 10h-1Fh, 60h-7Fh, A0h-AFh; 1Ah: Zen 5).
if ! echo "$model_name" | grep -q '[0-9]' && lscpu | grep -q AuthenticAMD; then
  family=$(lscpu | sed -n 's/^CPU family: *//p' | head -1); model=$(lscpu | sed -n 's/^Model: *//p' | head -1)
  zen=""
  case "$family" in
    23) zen=zen2 ;;
    25) if [ "$model" -ge 16 -a "$model" -le 31 ] || [ "$model" -ge 96 -a "$model" -le 127 ] || [ "$model" -ge 160 -a "$model" -le 175 ]; then zen=zen4; else zen=zen3; fi ;;
    26) zen=zen5 ;;
  esac
  [ -n "$zen" ] && slug="$slug-$zen"
fi
# Intel under a hypervisor often shows "Intel(R) Xeon(R) Processor" alone: name the server generation from the model
# (family 6: 85 Skylake/Cascade Lake-SP, 106/108 Ice Lake-SP, 143 Sapphire Rapids, 207 Emerald Rapids, 173/174 Granite Rapids).
if ! echo "$model_name" | grep -q '[0-9]' && lscpu | grep -q GenuineIntel; then
  family=$(lscpu | sed -n 's/^CPU family: *//p' | head -1); model=$(lscpu | sed -n 's/^Model: *//p' | head -1)
  icx=""
  if [ "$family" = 6 ]; then
    case "$model" in
      85) icx=cascade-lake ;; 106|108) icx=ice-lake ;; 143) icx=sapphire-rapids ;; 207) icx=emerald-rapids ;; 173|174) icx=granite-rapids ;;
    esac
  fi
  [ -n "$icx" ] && slug="$slug-$icx"
fi
# DOTNET_EnableAVX512=0 takes every kernel's 256-bit path (as on Zen 2/3 and Intel client cores): its own file.
suffix=""; [ "${DOTNET_EnableAVX512:-1}" = 0 ] && suffix="-avx512-off"
out=${1:-bench/results/cpu-tables-$slug-${cores}core$suffix.md}
quick=${CPU_TABLES_QUICK:-0}
if [ "$quick" = 1 ]; then
  depth=1024; ctx=1100; reps=1; gen=8; prompt=16
  decode_mem=(4 1 0.2); decode_cache=(1 1 0.1); int8_rounds=1; attn_depth=1024; attn_layers=4
else
  depth=4096; ctx=4224; reps=3; gen=32; prompt=128
  decode_mem=(16 5 0.5); decode_cache=(1 5 0.3); int8_rounds=3; attn_depth=4096; attn_layers=30
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "building (Release)..." >&2
dotnet build src/BitNetSharp.Cli -c Release -v q -nologo >/dev/null
dotnet build bench/BitNetSharp.Benchmarks -c Release -v q -nologo >/dev/null
bitnet=src/BitNetSharp.Cli/bin/Release/net10.0/bitnet
benchmarks=bench/BitNetSharp.Benchmarks/bin/Release/net10.0/BitNetSharp.Benchmarks

# step NAME COMMAND...: runs the command, keeps its output for the report, and says what it is doing.
step() {
  local name=$1; shift
  echo "[$(date +%H:%M:%S)] $name: $*" >&2
  printf '%s\n' "$*" > "$work/$name.cmd"
  "$@" > "$work/$name.out" 2> "$work/$name.err" || { echo "failed: $*" >&2; cat "$work/$name.out" "$work/$name.err" >&2; exit 1; }
}

step bandwidth "$bitnet" bench --bandwidth-only -t "$threads"
for kv in int8 f16; do
  step "e2e-$kv" "$bitnet" bench --synthetic 2b4t -p "$prompt" -n "$gen" -d "0,$depth" --ctx "$ctx" --kv-type "$kv" -t "$threads" -r "$reps" --json
done
step e2e-sequences "$bitnet" bench --synthetic 2b4t -p 0 -n "$gen" --kv-type int8 -t "$cores" -r "$reps" -s 1,2,3,4,8 --json
for head in f16 q8_0 q6_k; do
  step "e2e-head-$head" "$bitnet" bench --synthetic 2b4t -p 0 -n "$gen" --kv-type int8 -t "$cores" -r "$reps" -s 1,2,4 --head-type "$head" --json
done
# The lookup kernel (avx512lut) against the int8 kernel, end to end, where the CPU can run it: the bundled model (the
# engine's default there on Zen 5, prefilling by lookup as it is narrow) and the 2B4T shape (int8 by default). Forced
# both ways so any CPU can be compared.
kernels=()
if grep -qw avx512bw /proc/cpuinfo 2>/dev/null && [ "${DOTNET_EnableAVX512:-1}" != 0 ]; then
  int8=avx512; grep -qw gfni /proc/cpuinfo && int8=avx512gfni
  kernels=("$int8" avx512lut)
fi
for k in "${kernels[@]}"; do
  step "kernel-small-$k" env BITNET_KERNEL="$k" "$bitnet" bench -m models/bitnet-tinystories.gguf -p 64 -n 128 -t "$threads" -r "$reps" --json
  step "kernel-2b4t-$k" env BITNET_KERNEL="$k" "$bitnet" bench --synthetic 2b4t -p 0 -n "$gen" --kv-type int8 -t "$threads" -r "$reps" --json
done
printf '%s\n' "${kernels[@]}" > "$work/kernels.list"
step decode-memory "$benchmarks" quick-decode "${decode_mem[@]}"
step decode-cache "$benchmarks" quick-decode "${decode_cache[@]}"
step decode-memory-l1 env BITNET_PREFETCH_LEVEL=l1 "$benchmarks" quick-decode "${decode_mem[@]}"
step head-kernels "$benchmarks" quick-decode qhead "${decode_cache[1]}" "${decode_cache[2]}"
step attention-kernels "$benchmarks" quick-int8-attention "$int8_rounds"
step attention-memory env QUICK_ATTENTION_LAYERS="$attn_layers" "$benchmarks" quick-attention "$attn_depth" ${threads//,/ }

python3 - "$work" "$out" "$quick" "$depth" <<'PY'
import json, os, subprocess, sys, datetime
work, out, quick, depth = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
def sh(*a):
    try: return subprocess.run(a, capture_output=True, text=True).stdout.strip()
    except OSError: return "?"
lscpu = dict((k.strip(), v.strip()) for k, v in (l.split(":", 1) for l in sh("lscpu").splitlines() if ":" in l))
flags = set(lscpu.get("Flags", "").split())
isa = [f for f in ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_vbmi", "gfni", "avx512_bf16", "asimddp") if f in flags]
def read(name): return open(os.path.join(work, name + ".out")).read().rstrip()
def cmd(name): return open(os.path.join(work, name + ".cmd")).read().strip()
runtimes = [l.split()[1] for l in sh("dotnet", "--list-runtimes").splitlines() if l.startswith("Microsoft.NETCore.App ")]
dotnet = f".NET runtime {runtimes[-1] if runtimes else '?'} (SDK {sh('dotnet', '--version')})"
L = []
L.append(f"# Decode tables: {lscpu.get('Model name', '?')}, {os.cpu_count()} cores" + (" (QUICK smoke run: not figures to publish)" if quick else ""))
L.append("")
dirty = " (with uncommitted changes)" if sh("git", "status", "--porcelain", "--untracked-files=no") else ""
L.append(f"Written by `bash bench/cpu-tables.sh` on {datetime.date.today()} at commit {sh('git', 'rev-parse', '--short', 'HEAD')}{dirty}.")
L.append(f"CPU: `lscpu` → \"{lscpu.get('Model name', '?')}\", vendor {lscpu.get('Vendor ID', '?')}, family {lscpu.get('CPU family', '?')} "
         f"model {lscpu.get('Model', '?')}, {lscpu.get('CPU(s)', '?')} CPUs, L2 {lscpu.get('L2 cache', '?')}, L3 {lscpu.get('L3 cache', '?')}; "
         f"ISA: {', '.join(isa) or 'none of interest'}; hypervisor: {lscpu.get('Hypervisor vendor', 'none')}. {dotnet}.")
if os.environ.get("DOTNET_EnableAVX512") == "0":
    L.append("")
    L.append("**Run with `DOTNET_EnableAVX512=0`**: .NET reports no AVX-512, so every kernel takes its 256-bit (AVX2) path, as on")
    L.append("CPUs without AVX-512 (Zen 2/3, Intel client cores). Same machine and memory; only the instruction paths differ.")
L.append("")
L.append("## Summary: the 2B4T shape end to end")
L.append("")
for kv in ("int8", "f16"): L.append(f"- `{cmd('e2e-' + kv)}`")
L.append(f"- ternary kernel dispatched: {json.load(open(os.path.join(work, 'e2e-int8.out'))).get('kernel', '?')}")
L.append("")
L.append("Attention ms/token = attention share × the step's p50 latency. Ratio = tg at the depth ÷ tg at depth 0, the median of the")
L.append("ratios of repetitions run together (bench interleaves the depths), with their range. Probe = the")
L.append("read bandwidth `bench` measured around that thread count's tests (the bound is probe ÷ bytes per token).")
L.append("")
L.append(f"| KV | threads | pp d0 t/s | tg d0 t/s | probe GB/s | tg d0 % of bound | tg d{depth} t/s | ratio | attention ms/token at d{depth} |")
L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
def ratio(tgd, tg0):
    if not tgd or not tg0: return "-"
    if tgd.get("depth_ratio") is not None:
        return f"{tgd['depth_ratio']:.2f} ({tgd['depth_ratio_min']:.2f}–{tgd['depth_ratio_max']:.2f})"
    return f"{tgd['tokens_per_second'] / tg0['tokens_per_second']:.2f}"
for kv in ("int8", "f16"):
    doc = json.load(open(os.path.join(work, f"e2e-{kv}.out")))
    res = doc["results"]
    for t in sorted({r["threads"] for r in res}):
        def pick(test, d):
            return next((r for r in res if r["threads"] == t and r["depth"] == d and r["test"].startswith(test)), None)
        pp0, tg0, tgd = pick("pp", 0), pick("tg", 0), pick("tg", depth)
        att = tgd["attention_share"] * tgd["latency_p50_ms"] if tgd and tgd.get("attention_share") is not None and tgd.get("latency_p50_ms") else None
        f = lambda r, k, fmt="{:.2f}": fmt.format(r[k]) if r and r.get(k) is not None else "-"
        L.append(f"| {kv} | {t} | {f(pp0, 'tokens_per_second')} | {f(tg0, 'tokens_per_second')} ± {f(tg0, 'stddev')} | {f(tg0, 'bandwidth_gbps', '{:.1f}')} | {f(tg0, 'percent_of_bound', '{:.1f} %')} | "
                 f"{f(tgd, 'tokens_per_second')} ± {f(tgd, 'stddev')} | {ratio(tgd, tg0)} | "
                 f"{'-' if att is None else f'{att:.1f}'} |")
L.append("")
L.append("## Sequences decoding together (continuous batching), all threads")
L.append("")
L.append(f"`{cmd('e2e-sequences')}`")
L.append("")
L.append("| sequences | tg t/s in all | × 1 sequence | per sequence t/s | step p50 ms | weights GB/s |")
L.append("|---:|---:|---:|---:|---:|---:|")
seq = json.load(open(os.path.join(work, "e2e-sequences.out")))["results"]
one = next((r for r in seq if r.get("sequences", 1) == 1), None)
for r in sorted(seq, key=lambda r: r.get("sequences", 1)):
    n = r.get("sequences", 1)
    L.append(f"| {n} | {r['tokens_per_second']:.2f} ± {r['stddev']:.2f} | {(r['tokens_per_second'] / one['tokens_per_second']) if one else float('nan'):.2f} | "
             f"{r['tokens_per_second'] / n:.2f} | {r['latency_p50_ms'] if r.get('latency_p50_ms') is not None else float('nan'):.2f} | {r['weight_gbps']:.1f} |")
L.append("")
L.append("## Output head type, all threads")
L.append("")
for head in ("f16", "q8_0", "q6_k"): L.append(f"- `{cmd('e2e-head-' + head)}`")
L.append("")
L.append("| head | head MB | bytes per token | 1 sequence t/s | % of bound | 2 sequences t/s | 4 sequences t/s |")
L.append("|---|---:|---:|---:|---:|---:|---:|")
for head in ("f16", "q8_0", "q6_k"):
    doc = json.load(open(os.path.join(work, f"e2e-head-{head}.out")))
    by = {r.get("sequences", 1): r for r in doc["results"]}
    g = lambda n: f"{by[n]['tokens_per_second']:.2f} ± {by[n]['stddev']:.2f}" if n in by else "-"
    pct = f"{by[1]['percent_of_bound']:.1f} %" if 1 in by and by[1].get("percent_of_bound") is not None else "-"
    L.append(f"| {head} | {doc['head_bytes'] / 1e6:.1f} | {doc['bytes_per_token'] / 1e9:.3f} GB | {g(1)} | {pct} | {g(2)} | {g(4)} |")
L.append("")
kernels = [k for k in open(os.path.join(work, "kernels.list")).read().split() if k]
if kernels:
    L.append("## Lookup kernel against the int8 kernel, end to end")
    L.append("")
    for k in kernels:
        L.append(f"- `{cmd('kernel-small-' + k)}`")
        L.append(f"- `{cmd('kernel-2b4t-' + k)}`")
    L.append("")
    L.append("| model | kernel | test | threads | t/s | % of bound |")
    L.append("|---|---|---|---:|---:|---:|")
    for model in ("small", "2b4t"):
        for k in kernels:
            doc = json.load(open(os.path.join(work, f"kernel-{model}-{k}.out")))
            for r in doc["results"]:
                pct = f"{r['percent_of_bound']:.1f} %" if r.get("percent_of_bound") is not None else "-"
                L.append(f"| {'bundled' if model == 'small' else '2B4T'} | {k} | {r['test']} | {r['threads']} | {r['tokens_per_second']:.1f} ± {r['stddev']:.1f} | {pct} |")
    L.append("")
sections = [
    ("Read bandwidth (the bound)", "bandwidth"),
    ("Decode kernels in one process, weights from memory", "decode-memory"),
    ("Decode kernels in one process, weights in cache", "decode-cache"),
    ("Decode kernels from memory, prefetch into L1 (`BITNET_PREFETCH_LEVEL=l1`)", "decode-memory-l1"),
    ("Quantized output head kernels, one thread", "head-kernels"),
    ("Attention kernels, rows in cache", "attention-kernels"),
    ("Attention per layer, the cache from memory", "attention-memory"),
]
for title, name in sections:
    L.append(f"## {title}")
    L.append("")
    L.append(f"`{cmd(name)}`")
    L.append("")
    L.append("```")
    L.append(read(name))
    L.append("```")
    L.append("")
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
open(out, "w").write("\n".join(L))
print(out)
PY
