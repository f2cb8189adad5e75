"""PyTorch eager reference for `mla bench`: times one MLA training step (and a
joint step) of the AV-MNIST `cnn` model, same shapes as ours.

Not a dependency of the project: run it in a scratch venv (CPU) or on the GPU
machine, where PyTorch is installed.

    python3 torch_mla_step.py --device cpu --threads 2 --batch 64
    python3 torch_mla_step.py --device cuda --batch 64 --batch 512
Prints one JSON line per (method, batch).
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def cnn(in_ch, h, w, s=128):
    return nn.Sequential(
        nn.Conv2d(in_ch, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), s), nn.ReLU())


class Mla:
    """Alternating unimodal steps through a shared head, with OWM/RLS projection of the head gradient."""

    def __init__(self, dev, s=128, classes=10, alpha=1.0, hgm=True):
        self.enc = [cnn(1, 28, 28, s).to(dev), cnn(1, 40, 63, s).to(dev)]
        self.head = nn.Linear(s, classes).to(dev)
        self.opts = [torch.optim.SGD(list(e.parameters()) + list(self.head.parameters()), lr=0.01,
                                     momentum=0.9, weight_decay=1e-4) for e in self.enc]
        self.P = torch.eye(s, device=dev)
        self.alpha, self.hgm = alpha, hgm

    def step(self, xs, y):
        loss_val = None
        for m, x in enumerate(xs):
            opt = self.opts[m]
            opt.zero_grad(set_to_none=True)
            h = self.enc[m](x)
            loss = F.cross_entropy(self.head(h), y)
            loss.backward()
            if self.hgm:
                with torch.no_grad():
                    r = h.detach().mean(0)
                    g = self.head.weight.grad
                    g.copy_(g @ self.P)
                    u = self.P @ r
                    self.P -= torch.outer(u, u) / (self.alpha + r @ u)
            opt.step()
            loss_val = loss
        return loss_val


class Joint:
    def __init__(self, dev, s=128, classes=10):
        self.enc = nn.ModuleList([cnn(1, 28, 28, s), cnn(1, 40, 63, s)]).to(dev)
        self.head = nn.Linear(2 * s, classes).to(dev)
        self.opt = torch.optim.SGD(list(self.enc.parameters()) + list(self.head.parameters()), lr=0.01,
                                   momentum=0.9, weight_decay=1e-4)

    def step(self, xs, y):
        self.opt.zero_grad(set_to_none=True)
        z = self.head(torch.cat([e(x) for e, x in zip(self.enc, xs)], 1))
        loss = F.cross_entropy(z, y)
        loss.backward()
        self.opt.step()
        return loss


def time_steps(model, dev, batch, steps, warmup):
    g = torch.Generator(device="cpu").manual_seed(0)
    xs = [torch.rand(batch, 1, 28, 28, generator=g).to(dev), torch.randn(batch, 1, 40, 63, generator=g).to(dev)]
    y = torch.randint(0, 10, (batch,), generator=g).to(dev)
    times = []
    for i in range(warmup + steps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.step(xs, y)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, sum(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, action="append")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--method", choices=["mla", "joint"], action="append",
                    help="which steps to time (default: both)")
    ap.add_argument("--cudnn-tf32", choices=["default", "on", "off"], default="default",
                    help="torch.backends.cudnn.allow_tf32: PyTorch's default (on) runs convolutions "
                         "in TF32 on tensor cores; off keeps them in full FP32 like mla")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.cudnn_tf32 != "default":
        torch.backends.cudnn.allow_tf32 = a.cudnn_tf32 == "on"
    dev = torch.device(a.device)
    for batch in a.batch or [64]:
        for name, make in [("mla", lambda: Mla(dev)), ("joint", lambda: Joint(dev))]:
            if a.method and name not in a.method:
                continue
            torch.manual_seed(0)
            ms, total = time_steps(make(), dev, batch, a.steps, a.warmup)
            print(json.dumps({"framework": f"torch {torch.__version__}", "device": str(dev),
                              "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None,
                              "threads": a.threads, "method": name, "batch": batch,
                              "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                              "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                              "ms_per_step_median": round(ms, 3), "steps": a.steps,
                              "timed_seconds_total": round(total, 3),
                              "samples_per_second": round(batch / ms * 1e3, 1)}), flush=True)


if __name__ == "__main__":
    main()
