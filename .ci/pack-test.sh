#!/usr/bin/env bash
# The tool as a user gets it: pack src/BitNetSharp.Cli, fail past the size limit, install the package with
# `dotnet tool install --tool-path` into a fresh folder (and a fresh NuGet cache, so an earlier package of the same
# version cannot stand in) and generate with the bundled model. Ends with "pack-test: 1 passed, 0 failed" (or 0, 1).
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

NUGET_PACKAGES="$tmp/nuget" dotnet tool install --tool-path "$tmp/tool" BitNetSharp.Cli --add-source "$tmp/pkg" --version "$version" >"$tmp/install.log" 2>&1 \
  || { cat "$tmp/install.log"; fail "dotnet tool install failed"; }
out=$("$tmp/tool/bitnet" generate -n 8 -p "Once upon a time" 2>"$tmp/generate.err")
rc=$?
[ "$rc" -eq 0 ] || { cat "$tmp/generate.err"; fail "the installed 'bitnet generate -n 8' exited with $rc"; }
[ -n "${out//[[:space:]]/}" ] || { cat "$tmp/generate.err"; fail "the installed 'bitnet generate -n 8' printed nothing"; }
echo "pack-test: installed bitnet generated: ${out//$'\n'/ }"
echo "pack-test: 1 passed, 0 failed"
