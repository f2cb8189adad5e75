#!/usr/bin/env bash
# Runs the README's results table on the GPU machine (see README "Results").
# Expects gpu-results/ beside it (built by scripts/gpu/pack-results.sh): the
# `mla` binary, the raw AV-MNIST sources and benches/reference/torch_mla_step.py.
# Writes results.jsonl (one summary per run), bench.jsonl and the profiles of
# scripts/gpu/step_bench.sh, and logs.tar.gz to $OUT.
set -u
G=gpu-results
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/ds /tmp/runs /tmp/logs
MLA="$G/mla"
chmod +x "$MLA"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

"$MLA" prepare avmnist --raw "$G/avmnist" --out /tmp/ds/default > /tmp/logs/prepare-default.log 2>&1 || exit 1
"$MLA" prepare avmnist --raw "$G/avmnist" --out /tmp/ds/pca75 --image-pca-drop 0.75 > /tmp/logs/prepare-pca75.log 2>&1 || exit 1

# Step timings first, while the GPU is otherwise idle (mla and PyTorch; the
# dataset prepared above is reused).
OUT="$OUT" bash scripts/gpu/step_bench.sh > /tmp/logs/step_bench.log 2>&1

# Training runs, one line per job: NAME ARGS... (the list is scripts/results_jobs.sh).
jobs=/tmp/jobs.txt
bash scripts/results_jobs.sh /tmp/ds > "$jobs" || exit 1

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
