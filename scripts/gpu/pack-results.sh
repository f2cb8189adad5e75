#!/usr/bin/env bash
# Stages what scripts/gpu/results.sh and scripts/gpu/step_bench.sh need on the
# GPU machine in gpu-results/ (git-ignored): the release `mla` binary, the raw
# AV-MNIST sources and the PyTorch reference scripts.
#
#   scripts/gpu/pack-results.sh [RAW_AVMNIST_DIR]   (default ../shared/data/avmnist)
set -euo pipefail
cd "$(dirname "$0")/../.."
raw=${1:-../shared/data/avmnist}
[ -d "$raw/mnist" ] && [ -d "$raw/fsdd" ] || {
    echo "pack-results: $raw has no mnist/ and fsdd/ folders" >&2
    exit 1
}
cargo build --release -p mla-cli
out=gpu-results
rm -rf "$out"
mkdir -p "$out/avmnist"
cp target/release/mla "$out/mla"
strip "$out/mla"
cp -r "$raw/mnist" "$raw/fsdd" "$out/avmnist/"
cp benches/reference/torch_mla_step.py "$out/"
du -sh "$out"
