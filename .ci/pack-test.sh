#!/usr/bin/env bash
# The tool as a user gets it: pack src/BitNetSharp.Cli, fail past the size limit, install the package with
# `dotnet tool install --tool-path` into a fresh folder (and a fresh NuGet cache, so an earlier package of the same
# version cannot stand in) from that package alone, check the bundled model is in it, generate with it, and serve it
# (/health 200, SIGTERM exits 0). Ends with "pack-test: 1 passed, 0 failed" (or 0, 1).
set -uo pipefail
cd "$(dirname "$0")/.."
limit=${BITNET_PACK_LIMIT_BYTES:-25000000}   # bytes (25 MB), the bundled model included
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "pack-test: $*"; echo "pack-test: 0 passed, 1 failed"; exit 1; }

version=$(sed -nE 's:.*<Version>([^<]+)</Version>.*:\1:p' src/BitNetSharp.Cli/BitNetSharp.Cli.csproj | head -1)
[ -n "$version" ] || fail "no <Version> in src/BitNetSharp.Cli/BitNetSharp.Cli.csproj"
dotnet pack src/BitNetSharp.Cli -c Release -o "$tmp/pkg" >"$tmp/pack.log" 2>&1 \
  || { tail -20 "$tmp/pack.log"; fail "dotnet pack failed"; }
nupkg="$tmp/pkg/BitNetSharp.Cli.$version.nupkg"
[ -f "$nupkg" ] || fail "dotnet pack made no $(basename "$nupkg")"
size=$(stat -c %s "$nupkg")
echo "pack-test: BitNetSharp.Cli.$version.nupkg is $size bytes (limit $limit)"
[ "$size" -le "$limit" ] || fail "the package is $size bytes, over the $limit-byte limit (look for native runtimes or large files: unzip -l $(basename "$nupkg"))"

# Only the package just made: a nuget.config that clears every other source (a user's feeds or nuget.org could hold
# another BitNetSharp.Cli of the same version).
cat >"$tmp/nuget.config" <<EOF
<?xml version="1.0" encoding="utf-8"?>
<configuration><packageSources><clear /><add key="local" value="$tmp/pkg" /></packageSources></configuration>
EOF
NUGET_PACKAGES="$tmp/nuget" dotnet tool install --tool-path "$tmp/tool" BitNetSharp.Cli --configfile "$tmp/nuget.config" --version "$version" >"$tmp/install.log" 2>&1 \
  || { cat "$tmp/install.log"; fail "dotnet tool install failed"; }
model=$(find "$tmp/tool" -name bitnet-tinystories.gguf | head -1)
[ -n "$model" ] || fail "the installed tool has no models/bitnet-tinystories.gguf (the package was made without the bundled model)"

# Run from the temporary folder: in the repository, ./models/ would stand in for a model the package lacks.
cd "$tmp"
out=$("$tmp/tool/bitnet" generate --no-echo --ignore-eos -n 8 -p "Once upon a time" 2>"$tmp/generate.err")
rc=$?
[ "$rc" -eq 0 ] || { cat "$tmp/generate.err"; fail "the installed 'bitnet generate -n 8' exited with $rc"; }
grep -q "generation: 8 tokens" "$tmp/generate.err" || { cat "$tmp/generate.err"; fail "the installed 'bitnet generate -n 8 --ignore-eos' did not generate 8 tokens"; }
[ -n "${out//[[:space:]]/}" ] || { cat "$tmp/generate.err"; fail "the installed 'bitnet generate -n 8' printed no text"; }
echo "pack-test: installed bitnet generated: ${out//$'\n'/ }"

# serve: ready on a free port, /health 200, SIGTERM drains and exits 0.
"$tmp/tool/bitnet" serve --port 0 >"$tmp/serve.out" 2>"$tmp/serve.err" &
server=$!
url=""
for _ in $(seq 1 120); do
  url=$(sed -nE "s|^ready: model '[^']*' at http://([0-9.]+:[0-9]+)/v1 .*|\1|p" "$tmp/serve.out" "$tmp/serve.err" | head -1)
  [ -n "$url" ] && break
  kill -0 "$server" 2>/dev/null || break
  sleep 0.5
done
[ -n "$url" ] || { kill "$server" 2>/dev/null; cat "$tmp/serve.out" "$tmp/serve.err"; fail "the installed 'bitnet serve' was not ready within 60 s"; }
grep -q "loading $tmp/tool/" "$tmp/serve.out" "$tmp/serve.err" || { kill "$server"; cat "$tmp/serve.out"; fail "the installed 'bitnet serve' did not load the packaged model"; }
status=""
if exec 3<>"/dev/tcp/${url%:*}/${url#*:}"; then
  printf 'GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
  IFS= read -r -t 10 status <&3 || true   # a server that accepts and never answers fails here, not hangs CI
  exec 3<&- 3>&-
fi
case "$status" in
  *" 200 "*) ;;
  *) kill "$server"; fail "the installed 'bitnet serve' answered GET /health with '${status:-nothing}'" ;;
esac
kill -TERM "$server"
for _ in $(seq 1 120); do kill -0 "$server" 2>/dev/null || break; sleep 0.5; done
if kill -0 "$server" 2>/dev/null; then kill -9 "$server"; fail "the installed 'bitnet serve' was still running 60 s after SIGTERM"; fi
code=0
wait "$server" || code=$?
[ "$code" -eq 0 ] || { cat "$tmp/serve.err"; fail "the installed 'bitnet serve' exited $code after SIGTERM"; }
echo "pack-test: installed bitnet serve answered /health 200 at $url and exited 0 on SIGTERM"
echo "pack-test: 1 passed, 0 failed"
