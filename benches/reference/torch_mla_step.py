"""PyTorch eager reference for `mla bench`: times one MLA training step (and a
joint step) of the AV-MNIST `cnn` model, same shapes as ours; with
`--encoder resnet18` (torchvision's, stem for the modality's channels, no fc)
or `resnet18-small` (3x3 stride-1 stem, no max-pool, `--width-mult`) and
`--shape NAME=CxHxW` per modality, the ResNet steps of `mla bench --encoder`.

Not a dependency of the project: run it in a scratch venv (CPU) or on the GPU
machine, where PyTorch is installed.

    python3 torch_mla_step.py --device cpu --threads 2 --batch 64
    python3 torch_mla_step.py --device cuda --batch 64 --batch 512
    python3 torch_mla_step.py --encoder resnet18 --classes 6 \
        --shape audio=1x257x188 --shape visual=3x224x224 --method mla
Prints one JSON line per (method, batch), with the process's peak resident
memory so far (run one method per process to read it per method).
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import resource


def cnn(in_ch, h, w, s=128):
    return nn.Sequential(
        nn.Conv2d(in_ch, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), s), nn.ReLU())


class Block(nn.Module):
    """torchvision's BasicBlock."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (x if self.down is None else self.down(x)))


def resnet18_small(in_ch, width_mult):
    """mla's resnet18-small: 3x3 stride-1 stem, no max-pool, widths 64-128-256-512 x width_mult."""
    w = [max(1, round(c * width_mult)) for c in (64, 128, 256, 512)]
    layers = [nn.Conv2d(in_ch, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU()]
    cin = w[0]
    for i, c in enumerate(w):
        layers += [Block(cin, c, 1 if i == 0 else 2), Block(c, c, 1)]
        cin = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), w[-1]


def encoder(kind, shape, width_mult, s):
    """(module, feature size) for one modality of input shape (C, H, W)."""
    c, h, w = shape
    if kind == "cnn":
        return cnn(c, h, w, s), s
    if kind == "resnet18-small":
        return resnet18_small(c, width_mult)
    import torchvision
    net = torchvision.models.resnet18()
    net.conv1 = nn.Conv2d(c, 64, 7, 2, 3, bias=False)
    net.fc = nn.Identity()
    return net, 512


class Mla:
    """Alternating unimodal steps through a shared head, with OWM/RLS projection of the head gradient."""

    def __init__(self, dev, encs, s=128, classes=10, alpha=1.0, hgm=True):
        self.enc = [e.to(dev) for e in encs]
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
    def __init__(self, dev, encs, s=128, classes=10):
        self.enc = nn.ModuleList(encs).to(dev)
        self.head = nn.Linear(len(encs) * s, classes).to(dev)
        self.opt = torch.optim.SGD(list(self.enc.parameters()) + list(self.head.parameters()), lr=0.01,
                                   momentum=0.9, weight_decay=1e-4)

    def step(self, xs, y):
        self.opt.zero_grad(set_to_none=True)
        z = self.head(torch.cat([e(x) for e, x in zip(self.enc, xs)], 1))
        loss = F.cross_entropy(z, y)
        loss.backward()
        self.opt.step()
        return loss


def time_steps(model, dev, batch, steps, warmup, shapes, classes):
    g = torch.Generator(device="cpu").manual_seed(0)
    xs = [torch.randn(batch, *shape, generator=g).to(dev) for shape in shapes]
    y = torch.randint(0, classes, (batch,), generator=g).to(dev)
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
    ap.add_argument("--encoder", choices=["cnn", "resnet18", "resnet18-small"], default="cnn")
    ap.add_argument("--width-mult", type=float, default=1.0, help="widths of resnet18-small")
    ap.add_argument("--shape", action="append", metavar="NAME=CxHxW",
                    help="a modality's input shape, in training order (default: AV-MNIST's "
                         "image=1x28x28 and audio=1x40x63)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--cudnn-tf32", choices=["default", "on", "off"], default="default",
                    help="torch.backends.cudnn.allow_tf32: PyTorch's default (on) runs convolutions "
                         "in TF32 on tensor cores; off keeps them in full FP32 like mla")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.cudnn_tf32 != "default":
        torch.backends.cudnn.allow_tf32 = a.cudnn_tf32 == "on"
    dev = torch.device(a.device)
    named = [sh.split("=", 1) for sh in a.shape or ["image=1x28x28", "audio=1x40x63"]]
    shapes = [tuple(int(d) for d in dims.split("x")) for _, dims in named]

    def encs():
        out = [encoder(a.encoder, sh, a.width_mult, 128) for sh in shapes]
        return [e for e, _ in out], out[0][1]

    def mla():
        e, s = encs()
        return Mla(dev, e, s, a.classes)

    def joint():
        e, s = encs()
        return Joint(dev, e, s, a.classes)

    for batch in a.batch or [64]:
        for name, make in [("mla", mla), ("joint", joint)]:
            if a.method and name not in a.method:
                continue
            torch.manual_seed(0)
            ms, total = time_steps(make(), dev, batch, a.steps, a.warmup, shapes, a.classes)
            print(json.dumps({"framework": f"torch {torch.__version__}", "device": str(dev),
                              "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None,
                              "threads": a.threads, "method": name, "batch": batch,
                              "encoder": a.encoder, "width_mult": a.width_mult,
                              "modalities": ",".join(n for n, _ in named),
                              "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                              "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                              "ms_per_step_median": round(ms, 3), "steps": a.steps,
                              "timed_seconds_total": round(total, 3),
                              "samples_per_second": round(batch / ms * 1e3, 1),
                              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}),
                  flush=True)


if __name__ == "__main__":
    main()
