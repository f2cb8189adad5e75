#!/usr/bin/env bash
# Runs the README's results table on the GPU machine (see README "Results").
# Expects gpu-results/ beside it (built by scripts/gpu/pack-results.sh): the
# `mla` binary, the raw AV-MNIST sources and benches/reference/torch_mla_step.py.
# Writes results.jsonl (one summary per run), bench.jsonl and logs.tar.gz to $OUT.
set -u
G=gpu-results
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/ds /tmp/runs /tmp/logs
MLA="$G/mla"
chmod +x "$MLA"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

"$MLA" prepare avmnist --raw "$G/avmnist" --out /tmp/ds/default > /tmp/logs/prepare-default.log 2>&1 || exit 1
"$MLA" prepare avmnist --raw "$G/avmnist" --out /tmp/ds/pca75 --image-pca-drop 0.75 > /tmp/logs/prepare-pca75.log 2>&1 || exit 1

# Step timings first, while the GPU is otherwise idle.
for b in 64 512; do
  for m in mla joint; do
    "$MLA" bench --data /tmp/ds/default --backend cuda --method "$m" --batch-size "$b" --steps 200 --warmup 20 --json \
      >> "$OUT/bench.jsonl" 2>> /tmp/logs/bench.log
  done
done
python3 "$G/torch_mla_step.py" --device cuda --batch 64 --batch 512 --steps 200 --warmup 20 >> "$OUT/bench.jsonl" 2>> /tmp/logs/bench.log

# Training runs: one line per job: NAME ARGS...
jobs=/tmp/jobs.txt
: > "$jobs"
add() { echo "$*" >> "$jobs"; }
methods=(
  "uni-image --method unimodal --modality image"
  "uni-audio --method unimodal --modality audio"
  "joint --method joint"
  "mla-none --method mla --hgm none"
  "mla-owm-a1 --method mla --hgm owm --alpha 1"
  "mla-cross-a1 --method mla --hgm cross --alpha 1"
  "mla-owm-a100 --method mla --hgm owm --alpha 100"
  "mla-owm-a1e4 --method mla --hgm owm --alpha 10000"
  "mla-cross-a100 --method mla --hgm cross --alpha 100"
)
# Set A: the reference settings (10,000-sample train subset, 3 epochs), 3 seeds, both recipes.
for seed in 0 1 2; do for ds in default pca75; do for m in "${methods[@]}"; do
  set -- $m; name=$1; shift
  add "A-$ds-$name-s$seed --data /tmp/ds/$ds --train-limit 10000 --epochs 3 --seed $seed $*"
done; done; done
# Set B: full training split, 8 epochs.
for seed in 0 1 2; do for ds in default pca75; do for m in "${methods[@]:0:7}"; do
  set -- $m; name=$1; shift
  add "B-$ds-$name-s$seed --data /tmp/ds/$ds --epochs 8 --seed $seed $*"
done; done; done

run_job() {
  set -- $1; name=$1; shift
  "$MLA" train --backend cuda --out "/tmp/runs/$name" "$@" > "/tmp/logs/$name.log" 2>&1
}
export -f run_job; export MLA
# Stop launching new jobs before the call's limit; whatever finished is collected.
timeout "${JOBS_SECONDS:-300}" bash -c 'xargs -P "${PAR:-6}" -I{} bash -c "run_job \"{}\"" < /tmp/jobs.txt'

python3 - "$OUT/results.jsonl" <<'PY'
import json, os, sys
with open(sys.argv[1], "w") as out:
    for name in sorted(os.listdir("/tmp/runs")):
        p = f"/tmp/runs/{name}/summary.json"
        if os.path.exists(p):
            d = json.load(open(p)); d["run"] = name
            out.write(json.dumps(d) + "\n")
PY
wc -l "$OUT/results.jsonl"
tar czf "$OUT/logs.tar.gz" -C /tmp logs
