#!/usr/bin/env bash
# Runs every ARM64 kernel variant against the scalar reference on this x86-64 machine: runs
# tests/BitNetSharp.KernelCheck natively with DOTNET_EnableAVX2=0 (the 128-bit paths), then publishes it self-contained
# for linux-arm64 and runs it under qemu-user three times — '-cpu max' (AdvSimd + dot product: variants neondot and
# neon), '-cpu cortex-a57' (AdvSimd only), and '-cpu max' again with tiered compilation off.
# Needs qemu-user-static and arm64 glibc/libstdc++ (from Debian's packages; installed/unpacked here if absent).
# Exit status: 0 all passed, 1 a kernel failed, 2 the environment could not be prepared (says why).
set -uo pipefail
cd "$(dirname "$0")/../.."
work=artifacts/arm64
mkdir -p "$work"

# The check must compile: a C# error is a failure (1), not an environment that could not be prepared (2).
dotnet build tests/BitNetSharp.KernelCheck -c Release >"$work/build.log" 2>&1 \
  || { echo "arm64: tests/BitNetSharp.KernelCheck does not build (see $work/build.log)"; tail -20 "$work/build.log"; exit 1; }

# The 128-bit paths ARM64 takes, on this x86 host too (AVX2 off: Vector256 not accelerated, Vector128 on SSE), natively,
# before anything qemu needs is prepared: it runs even where that cannot be. Counted like the others.
echo "arm64: x86-64 host with DOTNET_EnableAVX2=0 (the 128-bit vector paths)"
DOTNET_EnableAVX2=0 dotnet tests/BitNetSharp.KernelCheck/bin/Release/net10.0/BitNetSharp.KernelCheck.dll || host_status=1
# From here, an environment that cannot be prepared exits 2 (skipped) unless the host check already failed.
unprepared=$(( ${host_status:-0} ? 1 : 2 ))

if ! command -v qemu-aarch64-static >/dev/null; then
  echo "arm64: installing qemu-user-static from Debian's packages"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static) >"$work/apt.log" 2>&1 \
    || { echo "arm64: could not install qemu-user-static (see $work/apt.log)"; exit "$unprepared"; }
fi

root="$work/root"
if [ ! -e "$root/lib/ld-linux-aarch64.so.1" ]; then
  echo "arm64: fetching arm64 libc, libgcc, libstdc++, zlib, libicu from Debian's packages"
  mkdir -p "$work/lists/partial" "$work/debs" "$root"
  o="-oAPT::Architecture=arm64 -oAPT::Architectures=arm64 -oDir::State::Lists=$PWD/$work/lists"
  (apt-get $o update -qq && cd "$work/debs" && apt-get $o download libc6 libgcc-s1 libstdc++6 zlib1g libicu72) >"$work/apt-arm64.log" 2>&1 \
    || { echo "arm64: could not download arm64 runtime libraries (see $work/apt-arm64.log)"; exit "$unprepared"; }
  for f in "$work"/debs/*.deb; do dpkg -x "$f" "$root"; done
fi

dotnet publish tests/BitNetSharp.KernelCheck -c Release -r linux-arm64 --self-contained -o "$work/publish" >"$work/publish.log" 2>&1 \
  || { echo "arm64: publish for linux-arm64 failed (see $work/publish.log)"; cat "$work/publish.log" | tail -20; exit "$unprepared"; }

status=${host_status:-0}
# cpu:expected kernels:tiered compilation. The last run compiles every method fully optimized at its first call
# (DOTNET_TieredCompilation=0): otherwise the kernels' large bodies start at tier 0 and are rejitted only after 30
# calls and a background delay, long under qemu, so the optimized ARM64 code the engine runs went mostly unchecked.
for run in max:neondot,neon:1 cortex-a57:neon:1 max:neondot,neon:0; do
  IFS=: read -r cpu expect tiered <<<"$run"
  echo "arm64: qemu-aarch64 -cpu $cpu (expects ternary variants $expect; DOTNET_TieredCompilation=$tiered)"
  KERNELCHECK_EXPECT=$expect DOTNET_TieredCompilation=$tiered DOTNET_EnableWriteXorExecute=0 timeout 900 \
    qemu-aarch64-static -cpu "$cpu" -L "$root" "$work/publish/BitNetSharp.KernelCheck" || status=1
done
exit $status
