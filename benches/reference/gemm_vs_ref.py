"""mla's CPU GEMM against numpy and torch, alternating every few tens of milliseconds.

On a shared VM the speed of the machine drifts by 20-30% over minutes, so a
whole mla run compared with a whole numpy run taken minutes apart mostly
measures the drift, and even runs a few seconds apart differ by 10-20%. Here
mla runs as a server (the `gemm_burst` example of mla-benches) and, for each
shape, the engines take turns in short bursts: mla, numpy, torch, mla, ...
(the order rotated every round), with a pause before each burst so that the
spinning worker threads of the previous engine (OpenBLAS, OpenMP, mla's
polling workers) have gone to sleep. Each burst times every call and keeps
the median. The machine's speed still moves between rounds, so the ratio is
taken within each round (mla's burst over the faster reference's burst of the
same round, all within about a second) and the table reports the median of
those ratios over the rounds, beside each engine's median rate.

Give the same mla binary twice (`--mla B --mla B`) to see how far identical
code differs under this procedure: that is the resolution of the comparison.

    cargo build --release -p mla-benches --example gemm_burst
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 \\
        /tmp/refvenv/bin/python benches/reference/gemm_vs_ref.py \\
        --mla target/release/examples/gemm_burst --mla target/release/examples/gemm_burst

Not a dependency of mla (numpy, threadpoolctl and optionally torch in a scratch venv).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from matmul_ref import SHAPES, operands, products  # noqa: E402


class MlaServer:
    """One `gemm_burst` process; `burst` returns the median seconds per call."""

    def __init__(self, spec, threads):
        # "NAME=value ... path": environment settings for this server, then the binary.
        *assigns, binary = spec.split()
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads), MATMUL_NUM_THREADS=str(threads))
        env.update(a.split("=", 1) for a in assigns)
        self.p = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  env=env, text=True, bufsize=1)

    def burst(self, m, k, n, ta, tb, seconds):
        self.p.stdin.write(f"{m} {k} {n} {int(ta)} {int(tb)} {seconds}\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise SystemExit(f"gemm_burst exited (status {self.p.wait()}) on {m}x{k}x{n}")
        return float(line.split()[1])

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def py_burst(fn, seconds):
    fn()
    times = []
    start = time.perf_counter()
    while not times or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mla", action="append", required=True,
                    help="gemm_burst binary, optionally after NAME=value environment settings "
                         "(repeat: other builds or settings, or the same one as a control)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--burst", type=float, default=0.05, help="seconds per burst")
    ap.add_argument("--gap", type=float, default=0.25,
                    help="seconds of pause before each burst (spinning threads park)")
    ap.add_argument("--only", default="", help="regex on shape names")
    args = ap.parse_args()
    from threadpoolctl import threadpool_info, threadpool_limits

    threadpool_limits(args.threads)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    names = [f"mla{i}" for i in range(len(args.mla))]
    servers = [MlaServer(b, args.threads) for b in args.mla]
    print("# mla: " + ", ".join(f"{n}={b}" for n, b in zip(names, args.mla)))
    libs = "; ".join(f"{lib.get('internal_api')} {lib.get('version')} {lib.get('architecture')}"
                     for lib in threadpool_info())
    print(f"# numpy {np.__version__} ({libs})" + (f", torch {torch.__version__}" if torch else ""))
    print(f"# {args.threads} threads, {args.rounds} rounds of {args.burst * 1e3:.0f} ms bursts, "
          f"{args.gap * 1e3:.0f} ms pause before each; GFLOP/s: median over the rounds; "
          "vs_ref: median over the rounds of mla / the faster reference in that round "
          "(in brackets: the middle half of those ratios)")
    engines = names + ["numpy"] + (["torch"] if torch else [])
    refs = [e for e in engines if e not in names]
    print("shape,m,k,n,trans_a,trans_b," + ",".join(f"{e}_gflops" for e in engines) + "," +
          ",".join(f"{n}_vs_ref" for n in names), flush=True)
    for name, m, k, n, ta, tb in SHAPES:
        if args.only and not re.search(args.only, name):
            continue
        flops = 2.0 * m * k * n
        a, b = operands(m, k, n, ta, tb, np.float32, rng)
        fn, tfn = products(a, b, n, ta, tb, torch)
        run = {nm: (lambda s=s: s.burst(m, k, n, ta, tb, args.burst)) for nm, s in zip(names, servers)}
        run["numpy"] = lambda: py_burst(fn, args.burst)
        if tfn is not None:
            run["torch"] = lambda: py_burst(tfn, args.burst)
        rates = {e: [] for e in engines}
        for r in range(args.rounds):
            for e in engines[r % len(engines):] + engines[:r % len(engines)]:
                time.sleep(args.gap)
                rates[e].append(flops / run[e]() / 1e9)
        med = {e: statistics.median(v) for e, v in rates.items()}
        ratio = []
        for nm in names:
            rs = sorted(100 * rates[nm][r] / max(rates[e][r] for e in refs) for r in range(args.rounds))
            q = statistics.quantiles(rs, n=4) if len(rs) > 1 else rs * 3
            ratio.append(f"{statistics.median(rs):.0f}% ({q[0]:.0f}-{q[2]:.0f})")
        print(f"{name},{m},{k},{n},{int(ta)},{int(tb)}," +
              ",".join(f"{med[e]:.1f}" for e in engines) + "," + ",".join(ratio), flush=True)
    for s in servers:
        s.close()


if __name__ == "__main__":
    main()
