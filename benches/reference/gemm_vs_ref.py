"""mla's CPU GEMM against numpy and torch, interleaved shape by shape.

On a shared VM the speed of the machine drifts by 20-30% over minutes, so
comparing a whole mla run with a whole numpy run taken minutes apart mostly
measures the drift. Here, for each shape and each repetition, the mla
criterion bench (one or more builds, e.g. before/after a change) runs for that
one shape, then numpy and torch are timed in this process at the same shape;
the table reports the median of the repetitions of each and the ratio of mla
to the faster reference.

    cargo bench -p mla-benches --bench cpu_gemm --no-run   # prints the binary path
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 \\
        /tmp/refvenv/bin/python benches/reference/gemm_vs_ref.py --bench target/release/deps/cpu_gemm-HASH

Not a dependency of mla (numpy, threadpoolctl and optionally torch in a scratch venv).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from matmul_ref import SHAPES, operands, products, rate  # noqa: E402

UNITS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def mla_seconds(binary, name, threads):
    """Criterion's median time for `gemm/<name>` from one run of the bench binary."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run(
        [binary, "--bench", "--noplot", f"^gemm/{re.escape(name)}$"],
        env=env, capture_output=True, text=True, check=True).stdout
    m = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", out)
    if not m:
        raise SystemExit(f"no criterion time for gemm/{name} in the output of {binary}:\n{out}")
    return float(m.group(1)) * UNITS[m.group(2)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", action="append", required=True,
                    help="cpu_gemm bench binary (repeat to compare builds)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default="", help="regex on shape names")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    names = [f"mla{i}" for i in range(len(args.bench))]
    print("# benches: " + ", ".join(f"{n}={b}" for n, b in zip(names, args.bench)))
    print("# numpy " + np.__version__ + (f", torch {torch.__version__}" if torch else ""))
    cols = [f"{n}_gflops" for n in names] + ["numpy_gflops"] + (["torch_gflops"] if torch else [])
    print("shape,m,k,n,trans_a,trans_b," + ",".join(cols) + "," +
          ",".join(f"{n}_vs_best_ref" for n in names), flush=True)
    for name, m, k, n, ta, tb in SHAPES:
        if args.only and not re.search(args.only, name):
            continue
        flops = 2.0 * m * k * n
        a, b = operands(m, k, n, ta, tb, np.float32, rng)
        fn, tfn = products(a, b, n, ta, tb, torch)
        runs = {c: [] for c in cols}
        for _ in range(args.reps):
            for nm, binary in zip(names, args.bench):
                runs[f"{nm}_gflops"].append(flops / mla_seconds(binary, name, args.threads) / 1e9)
            runs["numpy_gflops"].append(rate(fn, flops))
            if tfn is not None:
                runs["torch_gflops"].append(rate(tfn, flops))
        med = {c: statistics.median(v) for c, v in runs.items()}
        best = max(med["numpy_gflops"], med.get("torch_gflops", 0.0))
        print(f"{name},{m},{k},{n},{int(ta)},{int(tb)}," + ",".join(f"{med[c]:.1f}" for c in cols) + "," +
              ",".join(f"{100 * med[f'{nm}_gflops'] / best:.0f}%" for nm in names), flush=True)


if __name__ == "__main__":
    main()
