#!/usr/bin/env bash
# Soak: `bitnet serve` at saturation for a long time, with a mix of streaming and non-streaming completions and chat,
# client disconnects, malformed requests and oversized prompts (bench/BitNetSharp.LoadBench/Soak.cs). Samples the
# server's RSS (/proc/PID/status), GC heap, running sequences, waiting requests, KV use and the clients' P50/P99
# latency; judges: RSS flat after the warm-up (within 5 %), no 5xx, every malformed/oversized request a 4xx, every
# valid generation complete, dropped streams cancelled, sequences/queue/KV back to 0 at the end, latency stable
# (last third's P50 and P99 within 1.5x of the first third's after the warm-up).
#
#   bench/soak.sh                          # 30 minutes, the bundled model, 16 clients against --max-seqs 8
#   bench/soak.sh -d 300                   # 5 minutes
#   bench/soak.sh -m model.gguf -s 4 -c 8 -t 2 -n 64 -- --latency-tolerance 2
#
# Options: -m MODEL (default models/bitnet-tinystories.gguf)  -d SECONDS (1800)  -c CLIENTS (16)  -s MAX_SEQS (8)
#          -t THREADS (engine threads; default: the server's)  -n MAX_TOKENS per request (48)  -i SAMPLE_SECONDS (5)
#          -o DIR (bench/results)  -B (do not build)   anything after -- goes to the soak driver (see Soak.cs:
#          --warmup S, --rss-tolerance F, --latency-tolerance X, --mix completion=25,..., --log requests.jsonl, ...)
# Writes DIR/soak-<cpu>-<date>-<seconds>s.{md,csv,svg} and the server's log next to them (.server.log, not for commit).
# Exit status: the driver's (0 pass, 1 a verdict failed, 2 bad arguments or no server), or 3 if the server did not
# exit 0 after SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."

model=models/bitnet-tinystories.gguf duration=1800 clients=16 seqs=8 threads="" maxtok=48 sample=5 outdir=bench/results build=1
usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while getopts "m:d:c:s:t:n:i:o:Bh" opt; do
  case $opt in
    m) model=$OPTARG ;; d) duration=$OPTARG ;; c) clients=$OPTARG ;; s) seqs=$OPTARG ;; t) threads=$OPTARG ;;
    n) maxtok=$OPTARG ;; i) sample=$OPTARG ;; o) outdir=$OPTARG ;; B) build=0 ;; *) usage ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift
for pair in d:duration c:clients s:seqs n:maxtok; do
  v=${pair#*:}
  [[ "${!v}" =~ ^[0-9]+$ && "${!v}" -gt 0 ]] || { echo "error: -${pair%%:*} must be a positive integer; got '${!v}'" >&2; exit 2; }
done
[[ -z "$threads" || "$threads" =~ ^[0-9]+$ ]] || { echo "error: -t must be a positive integer; got '$threads'" >&2; exit 2; }
[[ -f "$model" ]] || { echo "error: no model file $model" >&2; exit 2; }
mkdir -p "$outdir"

if [[ $build == 1 ]]; then
  dotnet build -c Release -v q --nologo src/BitNetSharp.Cli >/dev/null
  dotnet build -c Release -v q --nologo bench/BitNetSharp.LoadBench >/dev/null
fi
bitnet=src/BitNetSharp.Cli/bin/Release/net10.0/bitnet
driver=bench/BitNetSharp.LoadBench/bin/Release/net10.0/BitNetSharp.LoadBench.dll
[[ -x $bitnet && -f $driver ]] || { echo "error: build first (dotnet build -c Release src/BitNetSharp.Cli bench/BitNetSharp.LoadBench), or drop -B" >&2; exit 2; }

cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
slug=$(echo "${cpu:-unknown}" | tr '[:upper:]' '[:lower:]' | sed -E 's/\((r|tm)\)//g; s/ (processor|cpu).*$//; s/[^a-z0-9]+/-/g; s/^-|-$//g')-$(nproc)core
prefix="$outdir/soak-$slug-$(date -u +%Y-%m-%d)-${duration}s"
log="$prefix.server.log"

# The server on a free loopback port (--port 0; it prints the one it got).
args=(serve -m "$model" --host 127.0.0.1 --port 0 --max-seqs "$seqs")
[[ -n "$threads" ]] && args+=(-t "$threads")
"$bitnet" "${args[@]}" >"$log" 2>&1 &
server=$!
trap 'kill -9 $server 2>/dev/null || true' EXIT
url=""
for _ in $(seq 1 240); do
  url=$(sed -n "s|^ready: model '[^']*' at \(http://[^ ]*/\)v1 .*|\1|p" "$log" | head -1)
  [[ -n "$url" ]] && break
  kill -0 $server 2>/dev/null || { echo "error: bitnet serve exited:" >&2; cat "$log" >&2; exit 2; }
  sleep 0.5
done
[[ -n "$url" ]] || { echo "error: bitnet serve was not ready within 120 s:" >&2; cat "$log" >&2; exit 2; }
echo "soak: bitnet ${args[*]} (pid $server) ready at $url; $duration s, $clients clients -> $prefix.{md,csv,svg}" >&2

rc=0
dotnet "$driver" --soak --url "$url" --pid "$server" --duration "$duration" --clients "$clients" --max-tokens "$maxtok" \
  --sample "$sample" --out "$prefix" "$@" >/dev/null || rc=$?

# Graceful stop: SIGTERM drains (nothing is in flight by now) and must exit 0.
kill -TERM "$server" 2>/dev/null || echo "soak: bitnet serve (pid $server) had already exited before SIGTERM" >&2
code=0
wait $server || code=$?
trap - EXIT
problems=$(grep -cE '^(fail|crit|warn):' "$log" || true)
if [[ -f "$prefix.md" ]]; then
  {
    echo
    echo "## Server"
    echo
    echo "\`bitnet ${args[*]}\` (run by \`bench/soak.sh -d $duration -c $clients -s $seqs -n $maxtok${threads:+ -t $threads}${*:+ -- $*}\`): exit code $code after SIGTERM; $problems warning/error lines in its log."
    grep -E '^(fail|crit|warn):' "$log" | head -5 | sed 's/^/    /' || true
  } >>"$prefix.md"
  sed -n '1,/^!\[/p' "$prefix.md" | grep -v '^!\[' >&2
fi
[[ $code == 0 ]] || { echo "soak: bitnet serve exited $code after SIGTERM (see $log)" >&2; [[ $rc == 0 ]] && rc=3; }
echo "soak: exit $rc; $prefix.md" >&2
exit $rc
