#!/usr/bin/env bash
# BENCHMARKS.md, "Data-parallel training": W=1 x 2 threads against W=2 x 1
# thread on recipe default, joint and mla, two repetitions interleaved.
# Usage: experiments/distributed-bench.sh MLA_BINARY_WITH_MPI DATA_DIR OUT_DIR
set -euo pipefail
B=${1:?mla binary built with --features mpi}
DATA=${2:?prepared dataset (recipe default)}
OUT=${3:?output directory}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
for rep in 1 2; do
  for m in joint mla; do
    A="train --data $DATA --method $m --epochs 1 --train-limit 4000 --eval-limit 500 --backend cpu --quiet --overwrite"
    $B $A --threads 2 --out "$OUT/$m-w1t2-r$rep" > /dev/null
    mpirun --oversubscribe --bind-to none -np 2 $B $A --threads 1 --distributed --out "$OUT/$m-w2t1-r$rep" > /dev/null
  done
done
