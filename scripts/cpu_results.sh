#!/usr/bin/env bash
# Runs chosen results runs (names from scripts/results_jobs.sh) on the CPU and
# appends each finished run's summary.json, tagged with its name, to OUT_JSONL.
#   P=2 T=1 scripts/cpu_results.sh MLA_BIN DS_ROOT RUNS_DIR OUT_JSONL NAME...
# P runs at a time with T threads each (on 2 cores, two 1-thread runs get
# ~30% more steps through than one 2-thread run). Logs: RUNS_DIR/NAME.log.
set -eu
mla=$(realpath "$1"); ds_root=$(realpath "$2"); runs=$3; out=$4; shift 4
mkdir -p "$runs"
runs=$(realpath "$runs"); touch "$out"; out=$(realpath "$out")
jobs=$(mktemp)
for name in "$@"; do
  line=$(bash "$(dirname "$0")/results_jobs.sh" "$ds_root" | grep "^$name " || true)
  [ -n "$line" ] || { echo "unknown run name: $name" >&2; exit 2; }
  echo "$line" >> "$jobs"
done
run_one() {
  set -- $1; name=$1; shift
  if "$MLA" train --backend cpu --threads "$T" --out "$RUNS/$name" "$@" > "$RUNS/$name.log" 2>&1; then
    ( flock 9; python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["run"]=sys.argv[2]; print(json.dumps(d))' \
        "$RUNS/$name/summary.json" "$name" >> "$OUT" ) 9>> "$OUT.lock"
    echo "done $name"
  else
    echo "FAILED $name (see $RUNS/$name.log)"
  fi
}
export -f run_one
export MLA="$mla" RUNS="$runs" OUT="$out" T="${T:-1}"
xargs -P "${P:-2}" -I{} bash -c 'run_one "{}"' < "$jobs"
rm -f "$jobs" "$out.lock"
