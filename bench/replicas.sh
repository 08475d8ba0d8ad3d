#!/usr/bin/env bash
# Three `bitnet serve` replicas on loopback behind nginx (deploy/nginx/bitnet.conf as it is: it listens on 8080 and
# balances 127.0.0.1:8081-8083), LoadBench through nginx with streaming and non-streaming requests, and a replica
# killed with SIGKILL in the middle of it, then started again:
#
#   bench/replicas.sh [--duration 45] [--kill-at 15] [--restart-at 25] [--clients 12] [--max-tokens 240] > report.md
#
# Progress goes to stderr, the report (markdown) to stdout. It proves from the client's side that every request
# ended with a complete answer or an explicit error (HTTP status, SSE error event, broken connection) and none was
# silently truncated (LoadBench's outcomes), that the survivors kept serving (the timeline), and, from nginx's
# access log, which replica served what before the kill, while it was down and after it came back.
# Needs nginx (/usr/sbin/nginx; Debian's package), python3, ports 8080-8083 free, and the .NET SDK to build.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

duration=45 kill_at=15 restart_at=25 clients=12 max_tokens=240
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --kill-at) kill_at=$2; shift 2 ;;
    --restart-at) restart_at=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --max-tokens) max_tokens=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

nginx=$(command -v nginx || true)
[ -z "$nginx" ] && [ -x /usr/sbin/nginx ] && nginx=/usr/sbin/nginx
[ -n "$nginx" ] || { echo "nginx is not installed (Debian: apt-get install -y --no-install-recommends nginx)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 is needed for the access-log summary" >&2; exit 2; }
for port in 8080 8081 8082 8083; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "port $port is in use; free 8080-8083 first" >&2; exit 2; fi
done

echo "building the CLI and LoadBench ..." >&2
flock /tmp/dotnet-build.lock dotnet build -c Release src/BitNetSharp.Cli -v q -nologo >&2
flock /tmp/dotnet-build.lock dotnet build -c Release bench/BitNetSharp.LoadBench -v q -nologo >&2
bitnet="$repo/src/BitNetSharp.Cli/bin/Release/net10.0/bitnet"
loadbench="$repo/bench/BitNetSharp.LoadBench/bin/Release/net10.0/BitNetSharp.LoadBench.dll"
model="$repo/models/bitnet-tinystories.gguf"

work=$(mktemp -d /tmp/bitnet-replicas.XXXXXX)
chmod 755 "$work" # nginx's workers run as nobody when it is started as root
declare -A pids
nginx_pid=
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

now() { date +%s.%N | cut -c1-14; }
start_replica() { # $1 = port
  "$bitnet" serve -m "$model" --port "$1" -t 1 --max-seqs 8 >>"$work/replica-$1.log" 2>&1 &
  pids[$1]=$!
}
wait_ready() { # $1 = port; prints the time it became ready
  for _ in $(seq 1 600); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/health")" = 200 ]; then now; return 0; fi
    sleep 0.1
  done
  echo "replica on $1 did not become ready; its log:" >&2; cat "$work/replica-$1.log" >&2; return 1
}
rss_mib() { ps -o rss= -p "$1" | awk '{printf "%.1f", $1/1024}'; }

for port in 8081 8082 8083; do start_replica "$port"; done
for port in 8081 8082 8083; do wait_ready "$port" >/dev/null; done
echo "3 replicas ready" >&2

mkdir -p "$work/nginx/logs"
cat >"$work/nginx/nginx.conf" <<EOF
# Test harness: a private prefix, pid and temp paths, so nginx needs no root and touches nothing in /etc or /var.
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log info;
events { worker_connections 1024; }
http {
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  include $repo/deploy/nginx/bitnet.conf;
  access_log $work/nginx/logs/access.log bitnet_upstream;
}
EOF
"$nginx" -t -p "$work/nginx" -c "$work/nginx/nginx.conf" >&2
"$nginx" -p "$work/nginx" -c "$work/nginx/nginx.conf" &
nginx_pid=$!
for _ in $(seq 1 100); do [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/health)" = 200 ] && break; sleep 0.1; done

echo "load for ${duration}s; SIGKILL to the replica on 8082 at ${kill_at}s, restart at ${restart_at}s ..." >&2
dotnet "$loadbench" --url http://127.0.0.1:8080/ --clients "$clients" --duration "$duration" --stream-ratio 0.5 \
  --max-tokens "$max_tokens" --log "$work/requests.jsonl" >"$work/loadbench.md" 2>"$work/loadbench.err" &
lb=$!
t0=$(now)
sleep "$((kill_at - 1))"
rss_before=$(for port in 8081 8082 8083; do echo -n "$port: $(rss_mib "${pids[$port]}") MiB; "; done)
sleep 1
killed_at=$(now)
kill -9 "${pids[8082]}"
wait "${pids[8082]}" 2>/dev/null || true
echo "killed the replica on 8082" >&2
sleep "$((restart_at - kill_at))"
restarted_at=$(now)
start_replica 8082
ready_at=$(wait_ready 8082)
echo "the replica on 8082 is ready again" >&2
set +e
wait "$lb"
lb_rc=$?
set -e
rss_after=$(for port in 8081 8082 8083; do echo -n "$port: $(rss_mib "${pids[$port]}") MiB; "; done)
t0=$(sed -nE 's/^loadbench-external: t0=([0-9.]+).*/\1/p' "$work/loadbench.err")
sleep 0.5 # the last access-log lines

cpu=$(lscpu | sed -nE 's/^Model name: *//p' | head -1)
cat <<EOF
# Three replicas behind nginx, one killed mid-load

$(date -u +%Y-%m-%d), $cpu, $(nproc) logical CPUs; $("$nginx" -v 2>&1 | sed 's/^nginx version: //'); .NET $(dotnet --version).
Model: the bundled \`models/bitnet-tinystories.gguf\`. Each replica: \`bitnet serve -m models/bitnet-tinystories.gguf --port 808N -t 1 --max-seqs 8\`;
nginx with \`deploy/nginx/bitnet.conf\` unchanged (least_conn over 127.0.0.1:8081-8083, max_fails=2 fail_timeout=5s,
\`proxy_next_upstream error timeout http_503 non_idempotent\`, proxy_buffering off) in a private prefix.

Command: \`bench/replicas.sh --duration $duration --kill-at $kill_at --restart-at $restart_at --clients $clients --max-tokens $max_tokens\`

Events (seconds from the first request): SIGKILL to the replica on 8082 at $(python3 -c "print(f'{$killed_at-$t0:.1f}')"),
restarted at $(python3 -c "print(f'{$restarted_at-$t0:.1f}')"), ready (/health 200) at $(python3 -c "print(f'{$ready_at-$t0:.1f}')").

RSS (\`ps -o rss\`) under load, just before the kill: $rss_before at the end: $rss_after

## What the clients saw (LoadBench, exit code $lb_rc)

$(sed -n '3,$p' "$work/loadbench.md")

## What nginx did (access log)

EOF
python3 - "$work/nginx/logs/access.log" "$t0" "$killed_at" "$restarted_at" "$ready_at" <<'PY'
import re, sys
log, t0, killed, restarted, ready = sys.argv[1], *map(float, sys.argv[2:])
rows = []
for line in open(log):
    m = re.match(r'ts=([\d.]+) .*?"(\S+) (\S+) [^"]*" (\d+) \d+ upstream=(.*?) upstream_status=(.*?) request_time', line)
    if not m or m.group(3) != '/v1/completions': continue
    ts, status = float(m.group(1)), int(m.group(4))
    addrs = [a.strip() for a in m.group(5).replace(' : ', ', ').split(', ')]
    codes = [c.strip() for c in m.group(6).replace(' : ', ', ').split(', ')]
    rows.append((ts, status, addrs, codes))
phases = [("before the kill", t0 - 1, killed), ("8082 dead", killed, restarted), ("8082 loading/warming up", restarted, ready), ("8082 back", ready, 1e12)]
print("Requests to /v1/completions by the time nginx logged them (their end), the replica that answered, and the attempts\nthat failed over to another replica (upstream address: status):\n")
print("| phase | requests | answered by 8081 / 8082 / 8083 | status (to the client) | failed attempts before the answer |")
print("|---|---:|---|---|---|")
for name, lo, hi in phases:
    ph = [r for r in rows if lo <= r[0] < hi]
    by = {p: sum(1 for r in ph if r[2][-1].endswith(p)) for p in ("8081", "8082", "8083")}
    st = {}
    for r in ph: st[r[1]] = st.get(r[1], 0) + 1
    fails = {}
    for r in ph:
        for a, c in zip(r[2][:-1], r[3][:-1]):
            k = f"{a.split(':')[-1]}: {c}"
            fails[k] = fails.get(k, 0) + 1
    print(f"| {name} | {len(ph)} | {by['8081']} / {by['8082']} / {by['8083']} | {', '.join(f'{k}: {v}' for k, v in sorted(st.items()))} | {', '.join(f'{k} ×{v}' for k, v in sorted(fails.items())) or '–'} |")
PY
cat <<EOF

Status 200 with a broken connection is a stream that was cut when its replica died: nginx had already sent the
headers and the events so far, then closed the client connection without the final chunk (LoadBench's io_error).
A failed attempt with status 502 or an empty status is a connection refused or reset on the dead replica that
nginx passed on to another one before anything reached the client; 503 is the restarted replica loading or
warming up.

nginx's error log, upstream failures:

\`\`\`
$(grep -E 'upstream|no live' "$work/nginx/logs/error.log" | sed -E 's/^[0-9\/]+ [0-9:]+ \[([a-z]+)\] [0-9#]+: \*[0-9]+ /[\1] /; s/, client: .*upstream: "http:\/\/([0-9.:]+)[^"]*".*/ (upstream \1)/' | sort | uniq -c | sort -rn | head -12)
\`\`\`
EOF
if [ "$lb_rc" -ne 0 ]; then echo "LoadBench exited $lb_rc (3: a silent truncation)" >&2; exit 1; fi
