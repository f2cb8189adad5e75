#!/usr/bin/env bash
# Test-time robustness of trained checkpoints (README, "Missing modalities and
# corruptions"): every kind of perturbation of each modality, one
# `mla robustness` run each, joint's curve the reference of the others'.
#   [KINDS="audio-missing audio-timemask"] experiments/robustness.sh MLA_BIN OUT_DIR NAME=RUN_DIR...
# The first NAME=RUN_DIR pair of each seed should be joint (the reference);
# e.g. joint-s0=runs/D/D-pca75-joint-s0 mla-s0=runs/D/D-pca75-mla-s0.
# Levels: fractions 0, 0.25, 0.5, 0.75, 1; gaussian 0, 0.5, 1, 1.5, 2 standard
# deviations; 2 perturbation seeds; a seeded subset of 2,000 test samples.
# KINDS, when set, keeps only those MODALITY-KIND curves.
set -eu
mla=$1; out=$2; shift 2
curves=(
  "image missing 0:1:0.25" "image gaussian 0:2:0.5" "image saltpepper 0:1:0.25" "image dropout 0:1:0.25"
  "audio missing 0:1:0.25" "audio gaussian 0:2:0.5" "audio saltpepper 0:1:0.25" "audio dropout 0:1:0.25"
  "audio timemask 0:1:0.25" "audio freqmask 0:1:0.25"
)
for pair in "$@"; do
  name=${pair%%=*}; run=${pair#*=}
  seed=${name##*-}                       # joint-s0 -> s0
  for c in "${curves[@]}"; do
    set -- $c; m=$1; kind=$2; levels=$3
    if [ -n "${KINDS:-}" ] && [[ " $KINDS " != *" $m-$kind "* ]]; then continue; fi
    dir=$out/$name/$m-$kind
    [ -f "$dir/robustness.json" ] && continue
    ref=$out/joint-$seed/$m-$kind/robustness.json
    extra=()
    case $name in joint-*) ;; *) [ -f "$ref" ] && extra=(--reference "$ref");; esac
    mkdir -p "$out/$name"
    "$mla" robustness --checkpoint "$run/best.safetensors" --modality "$m" --kind "$kind" \
      --levels "$levels" --seeds 2 --limit 2000 --threads 1 --backend cpu --quiet \
      --out "$dir" "${extra[@]}" > "$dir.log" 2>&1 || echo "FAILED $name $m $kind (see $dir.log)"
  done
  echo "done $name"
done
