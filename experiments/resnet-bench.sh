#!/bin/bash
# ResNet-18 training steps, mla against PyTorch eager (torchvision), side by
# side on one machine: each configuration runs once per framework per round,
# alternating, each in its own process (peak resident memory per run).
#   experiments/resnet-bench.sh MLA_BIN PYTHON OUT.jsonl [ROUNDS] [THREADS]
# PYTHON is an interpreter with torch and torchvision (a scratch venv, not a
# project dependency). Needs data/default (mla prepare avmnist) and
# data/cremad-shapes (mla prepare synthetic, see README).
set -euo pipefail
mla=$1 py=$2 out=$3 rounds=${4:-2} threads=${5:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
ref="$here/benches/reference/torch_mla_step.py"
run() { # label, then the mla bench flags, then -- and the torch flags
  local label=$1; shift
  local m=() t=()
  while [ "$1" != "--" ]; do m+=("$1"); shift; done; shift; t=("$@")
  "$mla" bench "${m[@]}" --threads "$threads" --backend cpu --json |
    sed "s/^{/{\"label\":\"$label\",\"framework\":\"mla\",\"round\":$r,/" >> "$out"
  "$py" "$ref" "${t[@]}" --threads "$threads" |
    sed "s/^{/{\"label\":\"$label\",\"round\":$r,/" >> "$out"
}
for r in $(seq 1 "$rounds"); do
  for method in mla joint; do
    run "small-$method" --data data/default --encoder resnet18-small --width-mult 0.25 \
        --method $method --steps 8 --warmup 2 -- \
        --encoder resnet18-small --width-mult 0.25 --method $method --steps 8 --warmup 2
    run "full-$method" --data data/cremad-shapes --encoder resnet18 --method $method \
        --steps 3 --warmup 1 -- \
        --encoder resnet18 --classes 6 --shape audio=1x257x188 --shape visual=3x224x224 \
        --method $method --steps 3 --warmup 1
  done
done
