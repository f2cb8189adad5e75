#!/usr/bin/env bash
# Runs on the GPU machine from the repository root (after pack-results.sh):
# MLA and joint training-step timings of `mla bench` at batch 64 and 512 beside
# PyTorch eager (torch_mla_step.py, cuDNN TF32 at PyTorch's default and off),
# then one profiled `mla bench` per batch size (MLA_CUDA_PROFILE=1: device time
# by op). Writes bench.jsonl and profile-B.txt to $OUT.
#
#   STEPS=200 WARMUP=20 scripts/gpu/step_bench.sh     (SKIP_TORCH=1: mla only)
set -u
G=gpu-results
OUT=${OUT:-/tmp/out}
STEPS=${STEPS:-200}
WARMUP=${WARMUP:-20}
mkdir -p "$OUT" /tmp/ds
MLA="$G/mla"
chmod +x "$MLA"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
[ -f /tmp/ds/default/dataset.json ] ||
    "$MLA" prepare avmnist --raw "$G/avmnist" --out /tmp/ds/default >"$OUT/prepare.log" 2>&1 || exit 1

status=0
for b in 64 512; do
    for m in mla joint; do
        "$MLA" bench --data /tmp/ds/default --backend cuda --method "$m" --batch-size "$b" \
            --steps "$STEPS" --warmup "$WARMUP" --json >>"$OUT/bench.jsonl" 2>>"$OUT/bench.log" || status=1
    done
done
for tf32 in default off; do
    [ "${SKIP_TORCH:-0}" = 1 ] && break
    python3 "$G/torch_mla_step.py" --device cuda --batch 64 --batch 512 --steps "$STEPS" \
        --warmup "$WARMUP" --cudnn-tf32 "$tf32" >>"$OUT/bench.jsonl" 2>>"$OUT/bench.log" || status=1
done
for b in 64 512; do
    MLA_CUDA_PROFILE=1 "$MLA" bench --data /tmp/ds/default --backend cuda --batch-size "$b" \
        --steps 50 --warmup 5 >"$OUT/profile-$b.txt" 2>&1 || status=1
done
cat "$OUT/bench.jsonl"
exit $status
