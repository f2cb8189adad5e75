#!/usr/bin/env bash
# Builds the CUDA test and benchmark binaries on this machine (no GPU or CUDA
# toolkit needed: the CUDA libraries are loaded at run time) and stages them,
# stripped, in gpu-bin/ (git-ignored) for scripts/gpu/run.sh on the GPU machine:
#
#   scripts/gpu/build.sh
#   (device tool) run: scripts/gpu/run.sh   with carry ["gpu-bin"]
set -euo pipefail
cd "$(dirname "$0")/../.."

out=gpu-bin
rm -rf "$out"
mkdir -p "$out"
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Test binaries: the cuda_* integration tests and mla-cuda's own unit tests.
cargo test --release -p mla-tests -p mla-cuda --no-run --message-format=json >"$log"
# The backend comparison bench.
cargo bench -p mla-benches --bench backends --no-run --message-format=json >>"$log"

# One "kind name path" line per executable we want.
jq -r 'select(.reason == "compiler-artifact" and .executable != null)
       | select((.target.kind[0] == "test" and (.target.name | startswith("cuda_")))
                or (.target.kind[0] == "lib" and .target.name == "mla_cuda")
                or (.target.kind[0] == "bench" and .target.name == "backends"))
       | "\(.target.kind[0]) \(.target.name) \(.executable)"' "$log" |
while read -r kind name path; do
    case "$kind" in
        test) dest="$out/test-$name" ;;
        lib) dest="$out/test-${name}-unit" ;;
        bench) dest="$out/bench-$name" ;;
    esac
    cp "$path" "$dest"
    strip "$dest"
done

# The runner travels with the binaries: the device tool sends the checkout the
# session started in, which need not have this script.
cp scripts/gpu/run.sh "$out/run.sh"
ls -l "$out"
total=$(du -cb "$out"/* | tail -1 | cut -f1)
echo "gpu-bin: $((total / 1024 / 1024)) MiB in $(ls "$out" | wc -l) binaries"
if [ "$total" -gt $((48 * 1024 * 1024)) ]; then
    echo "gpu-bin is over 48 MiB: the device tool carries at most 64 MiB" >&2
    exit 1
fi
