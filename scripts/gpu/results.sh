#!/usr/bin/env bash
# Runs the README's results table on the GPU machine (see README "Results").
# Expects gpu-results/ beside it (built by scripts/gpu/pack-results.sh): the
# `mla` binary, the raw AV-MNIST sources and benches/reference/torch_mla_step.py.
# Writes runs.tar.gz (the sweeps' run directories without checkpoints: for
# `mla report`), bench.jsonl and the profiles of scripts/gpu/step_bench.sh,
# and logs.tar.gz to $OUT. Not yet run in this form (it ran the same runs
# from a job list before the sweep files existed).
set -u
G=gpu-results
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/ds /tmp/runs /tmp/logs
MLA="$G/mla"
chmod +x "$MLA"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

# The sweeps read data/default and data/pca75 relative to the repository root.
mkdir -p data
"$MLA" prepare avmnist --raw "$G/avmnist" --out data/default > /tmp/logs/prepare-default.log 2>&1 || exit 1
"$MLA" prepare avmnist --raw "$G/avmnist" --out data/pca75 --image-pca-drop 0.75 > /tmp/logs/prepare-pca75.log 2>&1 || exit 1

# Step timings first, while the GPU is otherwise idle (mla and PyTorch; the
# dataset prepared above is reused).
ln -sfn "$PWD/data/default" /tmp/ds/default
OUT="$OUT" bash scripts/gpu/step_bench.sh > /tmp/logs/step_bench.log 2>&1

# The sweeps of experiments/ named in SWEEPS, PAR runs at a time (`mla train`
# picks the GPU), each into /tmp/runs/NAME. After JOBS_SECONDS the sweep is
# stopped (its process group: the sweep and its runs); a later call with the
# same files resumes it.
for sweep in ${SWEEPS:-hgm-entropy-full8}; do
  setsid "$MLA" sweep "experiments/$sweep.toml" --out "/tmp/runs/$sweep" --jobs "${PAR:-6}" \
      > "/tmp/logs/sweep-$sweep.log" 2>&1 &
  pid=$!
  for _ in $(seq "${JOBS_SECONDS:-300}"); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -- -"$pid" 2>/dev/null
  wait "$pid"
  tail -3 "/tmp/logs/sweep-$sweep.log"
done
# Run directories without checkpoints (each run's config, metrics and summary).
tar czf "$OUT/runs.tar.gz" --exclude='*.safetensors' -C /tmp runs
tar czf "$OUT/logs.tar.gz" -C /tmp logs
