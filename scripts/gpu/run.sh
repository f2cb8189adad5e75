#!/usr/bin/env bash
# Runs on the GPU machine from the repository root, after scripts/gpu/build.sh
# staged the binaries in gpu-bin/: every test binary, then the backend bench.
# Logs go to $OUT (the device tool's output folder; gpu-out/ otherwise).
#
#   SKIP_BENCH=1        tests only
#   BENCH_FILTER=rls    criterion filter for the bench (a regex on ids)
#   BENCH_SECONDS=2     criterion measurement time per benchmark
#   TEST_TIMEOUT=300    seconds per test binary before it is killed (a hung kernel)
set -uo pipefail
# The binaries: gpu-bin/ under the current directory (the repository root), or
# the folder this script sits in when build.sh copied it there.
BIN=${GPU_BIN:-gpu-bin}
[ -d "$BIN" ] || BIN=$(dirname "$0")
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"

# cudarc loads libcuda, libnvrtc and libcublas by name: make sure the loader
# finds a CUDA 13 NVRTC and cuBLAS even when they are not in its cache.
if ! ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so\.13\|libcublas\.so\.13'; then
    for lib in libnvrtc.so.13 libcublas.so.13; do
        hit=$(find /usr/local /usr/lib /opt /root /home -name "$lib" 2>/dev/null | head -1)
        [ -n "$hit" ] && LD_LIBRARY_PATH="$(dirname "$hit")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    done
    export LD_LIBRARY_PATH
fi
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" | tee "$OUT/env.txt"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
head -15 "$OUT/nvidia-smi.txt"

status=0
for t in "$BIN"/test-*; do
    name=$(basename "$t")
    echo "=== $name"
    start=$(date +%s%N)
    timeout "${TEST_TIMEOUT:-300}" "$t" --test-threads=4 --show-output >"$OUT/$name.log" 2>&1
    rc=$?
    end=$(date +%s%N)
    grep -E '^test |test result|panicked|skipping|device:|allocator' "$OUT/$name.log" | grep -v ' ... ok$' | head -60
    echo "$name: exit $rc in $(((end - start) / 1000000)) ms"
    [ "$rc" -eq 0 ] || status=1
done

if [ "${SKIP_BENCH:-0}" != 1 ] && [ -x "$BIN/bench-backends" ]; then
    echo "=== bench-backends"
    CRITERION_HOME="$OUT/criterion" "$BIN/bench-backends" --bench --noplot \
        --measurement-time "${BENCH_SECONDS:-2}" ${BENCH_FILTER:+"$BENCH_FILTER"} >"$OUT/bench-backends.log" 2>&1 || status=1
    grep -E 'CUDA device|skipping|^[a-z_0-9]+/|time:|thrpt:' "$OUT/bench-backends.log"
fi
exit $status
