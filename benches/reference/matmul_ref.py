"""Reference GEMM / GEMV rates for BENCHMARKS.md (not a dependency of mla).

Runs numpy (and torch, if installed) matmul at the shapes benches/benches/cpu_gemm.rs
measures, on a fixed thread count, and prints GFLOP/s (median of repeated timings).
With torch installed it also times conv2d forward and forward+backward at the shapes
of benches/benches/cpu_conv.rs (same FLOP convention: GEMM flops only).

    python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install numpy threadpoolctl torch
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 \
        /tmp/refvenv/bin/python benches/reference/matmul_ref.py --threads 2
"""

import argparse
import statistics
import time

import numpy as np

# (name, m, k, n, trans_a, trans_b): C[m, n] = op(A) @ op(B), op(A) is m x k.
# Same list, same names as benches/benches/cpu_gemm.rs.
SHAPES = [
    ("mlp_fc1/fwd_xw", 64, 784, 256, False, False),
    ("mlp_fc1/fwd_xwt", 64, 784, 256, False, True),
    ("mlp_fc1/dw_xtdy", 784, 64, 256, True, False),
    ("mlp_fc1/dw_dytx", 256, 64, 784, True, False),
    ("mlp_fc1/dx_dywt", 64, 256, 784, False, True),
    ("mlp_fc1/dx_dyw", 64, 256, 784, False, False),
    ("cnn_img_fc/fwd_xw", 64, 3136, 128, False, False),
    ("cnn_img_fc/fwd_xwt", 64, 3136, 128, False, True),
    ("cnn_img_fc/dw_xtdy", 3136, 64, 128, True, False),
    ("cnn_img_fc/dw_dytx", 128, 64, 3136, True, False),
    ("cnn_img_fc/dx_dywt", 64, 128, 3136, False, True),
    ("cnn_img_fc/dx_dyw", 64, 128, 3136, False, False),
    ("cnn_aud_fc/fwd_xw", 64, 9600, 128, False, False),
    ("cnn_aud_fc/fwd_xwt", 64, 9600, 128, False, True),
    ("cnn_aud_fc/dw_xtdy", 9600, 64, 128, True, False),
    ("cnn_aud_fc/dw_dytx", 128, 64, 9600, True, False),
    ("cnn_aud_fc/dx_dywt", 64, 128, 9600, False, True),
    ("cnn_aud_fc/dx_dyw", 64, 128, 9600, False, False),
    ("head/fwd_xw", 64, 128, 10, False, False),
    ("head/fwd_xwt", 64, 128, 10, False, True),
    ("head/dw_xtdy", 128, 64, 10, True, False),
    ("head/dw_dytx", 10, 64, 128, True, False),
    ("head/dx_dywt", 64, 10, 128, False, True),
    ("head/dx_dyw", 64, 10, 128, False, False),
    # The per-sample GEMMs of the cnn encoder's convolutions (im2col columns
    # [c*9, h*w]): forward W cols, input gradient W^T dY, weight gradient dY cols^T.
    ("img_conv1/fwd", 32, 9, 784, False, False),
    ("img_conv1/dw", 32, 784, 9, False, True),
    ("img_conv2/fwd", 64, 288, 196, False, False),
    ("img_conv2/dx", 288, 64, 196, True, False),
    ("img_conv2/dw", 64, 196, 288, False, True),
    ("aud_conv1/fwd", 32, 9, 2520, False, False),
    ("aud_conv1/dw", 32, 2520, 9, False, True),
    ("aud_conv2/fwd", 64, 288, 620, False, False),
    ("aud_conv2/dx", 288, 64, 620, True, False),
    ("aud_conv2/dw", 64, 620, 288, False, True),
    ("square/1024", 1024, 1024, 1024, False, False),
    ("gemv/128x128_ax", 128, 128, 1, False, False),
    ("gemv/128x128_atx", 128, 128, 1, True, False),
]


def operands(m, k, n, ta, tb, dtype, rng):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return a, b


def products(a, b, n, ta, tb, torch=None):
    """Zero-argument callables computing op(A) op(B) with numpy and (if given) torch.
    With n == 1 it is a GEMV, the vector as a 1-D array."""
    if n == 1:
        x = b.reshape(-1)
        fn = (lambda: a.T @ x) if ta else (lambda: a @ x)
    else:
        ao, bo = (a.T if ta else a), (b.T if tb else b)
        fn = lambda: ao @ bo
    if torch is None:
        return fn, None
    at, bt = torch.from_numpy(a), torch.from_numpy(b)
    if n == 1:
        xt = bt.reshape(-1)
        tfn = (lambda: at.t() @ xt) if ta else (lambda: at @ xt)
    else:
        aot, bot = (at.t() if ta else at), (bt.t() if tb else bt)
        tfn = lambda: aot @ bot
    return fn, tfn


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
        fn, tfn = products(a, b, n, ta, tb, torch)
        row = f"{name},{m},{k},{n},{int(ta)},{int(tb)},{rate(fn, flops):.1f}"
        if tfn is not None:
            row += f",{rate(tfn, flops):.1f}"
        print(row, flush=True)
    if torch is not None:
        conv_rows(torch)


# (name, [n, c, h, w], out_channels, input needs a gradient): the cnn encoder's convolutions.
CONVS = [
    ("image_conv1", [64, 1, 28, 28], 32, False),
    ("image_conv2", [64, 32, 14, 14], 64, True),
    ("audio_conv1", [64, 1, 40, 63], 32, False),
    ("audio_conv2", [64, 32, 20, 31], 64, True),
]


def conv_rows(torch):
    import torch.nn.functional as F

    print("conv,fwd_gflops,fwd_ms,fwd_bwd_gflops,fwd_bwd_ms")
    g = torch.Generator().manual_seed(0)
    for name, (n, c, h, w), oc, input_grad in CONVS:
        x = torch.randn(n, c, h, w, generator=g)
        wt = torch.randn(oc, c, 3, 3, generator=g) * 0.1
        flops = 2.0 * n * oc * c * 9 * h * w
        with torch.no_grad():
            fwd = rate(lambda: F.conv2d(x, wt, padding=1), flops)
        xg = x.clone().requires_grad_(input_grad)
        wg = wt.clone().requires_grad_(True)

        def step():
            F.conv2d(xg, wg, padding=1).sum().backward()

        gemms = 3 if input_grad else 2
        both = rate(step, gemms * flops)
        print(f"{name},{fwd:.1f},{flops / fwd / 1e6:.2f},{both:.1f},{gemms * flops / both / 1e6:.2f}", flush=True)


if __name__ == "__main__":
    main()
