#!/usr/bin/env bash
# Prints the README's results runs, one per line: NAME then `mla train` flags.
#   scripts/results_jobs.sh DS_ROOT    (DS_ROOT/default and DS_ROOT/pca75 prepared)
# Set A: the reference settings (10,000-sample train subset, 3 epochs); set B:
# the full training split, 8 epochs; set C: the full training split, 3 epochs
# (the README's main job), for the fusion rules and the HGM ablation; set D:
# the balancing methods next to MLA and joint on the set A setting (each
# method's documented defaults, SGD lr 0.01 momentum 0.9 for all). 3 seeds,
# both recipes.
set -eu
ds_root=$1
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
for seed in 0 1 2; do for ds in default pca75; do for m in "${methods[@]}"; do
  set -- $m; name=$1; shift
  echo "A-$ds-$name-s$seed --data $ds_root/$ds --train-limit 10000 --epochs 3 --seed $seed $*"
done; done; done
for seed in 0 1 2; do for ds in default pca75; do for m in "${methods[@]:0:8}"; do
  set -- $m; name=$1; shift
  echo "B-$ds-$name-s$seed --data $ds_root/$ds --epochs 8 --seed $seed $*"
done; done; done
for m in "mla-owm-a1e4 --method mla --hgm owm --alpha 10000" "mla-none --method mla --hgm none" \
         "uni-image --method unimodal --modality image"; do
  for seed in 0 1 2; do for ds in default pca75; do
    set -- $m; name=$1; shift
    echo "C-$ds-$name-s$seed --data $ds_root/$ds --epochs 3 --seed $seed $*"
  done; done
done
balancing=(
  "joint --method joint"
  "mla --method mla"
  "ogm --method ogm"
  "ogm-ge --method ogm-ge"
  "pmr --method pmr"
  "mmpareto --method mmpareto"
  "agm --method agm"
  "reconboost --method reconboost"
  # One estimation of one epoch per copy before the first epoch: the
  # defaults (10 x 10) would cost 30 extra epochs in a 3-epoch run.
  "gblending --method gblending --gblending-every 0 --gblending-epochs 1"
)
for ds in default pca75; do for seed in 0 1 2; do for m in "${balancing[@]}"; do
  set -- $m; name=$1; shift
  echo "D-$ds-$name-s$seed --data $ds_root/$ds --train-limit 10000 --epochs 3 --seed $seed $*"
done; done; done
