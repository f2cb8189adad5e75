"""Reference GEMM / GEMV rates for BENCHMARKS.md (not a dependency of mla).

Runs numpy (and torch, if installed) matmul at the shapes benches/benches/cpu_gemm.rs
measures, on a fixed thread count, and prints GFLOP/s (median of repeated timings).

    python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install numpy threadpoolctl torch
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 \
        /tmp/refvenv/bin/python benches/reference/matmul_ref.py --threads 2
"""

import argparse
import statistics
import time

import numpy as np

# (name, m, k, n, trans_a, trans_b): C[m, n] = op(A) @ op(B), op(A) is m x k.
SHAPES = [
    ("fc_img_fwd", 64, 784, 256, False, False),
    ("fc_img_dw", 784, 64, 256, True, False),
    ("fc_img_dx", 64, 256, 784, False, True),
    ("fc_cnn_img_fwd", 64, 3136, 128, False, False),
    ("fc_cnn_img_dw", 3136, 64, 128, True, False),
    ("fc_cnn_img_dx", 64, 128, 3136, False, True),
    ("fc_cnn_aud_fwd", 64, 9600, 128, False, False),
    ("fc_cnn_aud_dw", 9600, 64, 128, True, False),
    ("fc_cnn_aud_dx", 64, 128, 9600, False, True),
    ("head_fwd", 64, 128, 10, False, False),
    ("head_dw", 128, 64, 10, True, False),
    ("head_dx", 64, 10, 128, False, True),
    ("square_1024", 1024, 1024, 1024, False, False),
    ("gemv_128", 128, 128, 1, False, False),
    ("gemv_t_128", 128, 128, 1, True, False),
]


def operands(m, k, n, ta, tb, dtype, rng):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return a, b


def rate(fn, flops, min_time=0.02, samples=15):
    fn()
    t = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t, 1e-7)
    reps = max(1, int(min_time / one))
    per = []
    for _ in range(samples):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        per.append((time.perf_counter() - t) / reps)
    return flops / statistics.median(per) / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    try:
        from threadpoolctl import threadpool_info, threadpool_limits

        threadpool_limits(args.threads)
        for lib in threadpool_info():
            print(f"# {lib.get('internal_api')} {lib.get('version')} arch={lib.get('architecture')} threads={lib.get('num_threads')}")
    except ImportError:
        print("# threadpoolctl not installed: thread count from the environment")
    try:
        import torch

        torch.set_num_threads(args.threads)
        print(f"# torch {torch.__version__} threads={torch.get_num_threads()}")
    except ImportError:
        torch = None
    print(f"# numpy {np.__version__}")
    print("shape,m,k,n,trans_a,trans_b,numpy_gflops" + (",torch_gflops" if torch else ""))
    for name, m, k, n, ta, tb in SHAPES:
        a, b = operands(m, k, n, ta, tb, np.float32, rng)
        flops = 2.0 * m * k * n
        if n == 1:
            # GEMV: matrix-vector product, the vector as a 1-D array.
            x = b.reshape(-1)
            fn = (lambda a=a, x=x: a.T @ x) if ta else (lambda a=a, x=x: a @ x)
        else:
            ao = a.T if ta else a
            bo = b.T if tb else b
            fn = lambda ao=ao, bo=bo: ao @ bo
        row = f"{name},{m},{k},{n},{int(ta)},{int(tb)},{rate(fn, flops):.1f}"
        if torch is not None:
            at, bt = torch.from_numpy(a), torch.from_numpy(b)
            if n == 1:
                xt = bt.reshape(-1)
                tfn = (lambda: at.t() @ xt) if ta else (lambda: at @ xt)
            else:
                aot = at.t() if ta else at
                bot = bt.t() if tb else bt
                tfn = lambda aot=aot, bot=bot: aot @ bot
            row += f",{rate(tfn, flops):.1f}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
