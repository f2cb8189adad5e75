"""PyTorch reference for `mla train --method unimodal` (not a dependency of mla).

Trains the `cnn` encoder + linear head on one modality of a prepared
mla-dataset/1 directory exactly as the spec's reference does (SGD lr 0.01,
momentum 0.9, weight decay 1e-4, batch 64, PyTorch default init, a seeded
random subset of the train split, best-validation epoch) and prints one JSON
line with the test accuracy of that epoch. It reads the same files as mla, so
it separates "our data differ" from "our training differs".

    /tmp/refvenv/bin/python benches/reference/torch_train_ref.py --data DS --modality audio \
        --train-limit 10000 --epochs 3 --seed 0 --threads 1
"""

import argparse
import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def cnn(in_ch, h, w, s=128):
    return nn.Sequential(
        nn.Conv2d(in_ch, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), s), nn.ReLU())


def load(ds, modality):
    meta = json.load(open(os.path.join(ds, "dataset.json")))
    mod = next(m for m in meta["modalities"] if m["name"] == modality)
    data = np.load(os.path.join(ds, mod["data"]), mmap_mode="r")
    n = len(np.load(os.path.join(ds, meta["labels"]), mmap_mode="r"))
    rows = np.load(os.path.join(ds, mod["index"])) if "index" in mod else np.arange(n)
    labels = np.load(os.path.join(ds, meta["labels"])).astype(np.int64)
    split = np.load(os.path.join(ds, meta["split"]))
    return data, rows, labels, split


def batches(data, rows, labels, idx, batch):
    for i in range(0, len(idx), batch):
        b = idx[i:i + batch]
        x = torch.from_numpy(np.ascontiguousarray(data[rows[b]], dtype=np.float32))
        if x.dim() == 3:
            x = x.unsqueeze(1)
        yield x, torch.from_numpy(labels[b])


def accuracy(model, data, rows, labels, idx):
    model.eval()
    hits = 0
    with torch.no_grad():
        for x, y in batches(data, rows, labels, idx, 512):
            hits += (model(x).argmax(1) == y).sum().item()
    model.train()
    return hits / max(len(idx), 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--modality", required=True)
    ap.add_argument("--train-limit", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    data, rows, labels, split = load(a.data, a.modality)
    present = rows >= 0
    train = np.flatnonzero((split == 0) & present)
    if a.train_limit:
        train = np.sort(rng.choice(train, size=min(a.train_limit, len(train)), replace=False))
    val = np.flatnonzero((split == 1) & present)
    test = np.flatnonzero((split == 2) & present)
    shape = data.shape[1:]
    c, h, w = (1, *shape) if len(shape) == 2 else shape
    model = nn.Sequential(cnn(c, h, w), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    best = (-1.0, 0, 0.0)
    for epoch in range(1, a.epochs + 1):
        for x, y in batches(data, rows, labels, rng.permutation(train), 64):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        v = accuracy(model, data, rows, labels, val)
        if v > best[0]:
            best = (v, epoch, accuracy(model, data, rows, labels, test))
    print(json.dumps({"framework": f"torch {torch.__version__}", "modality": a.modality, "seed": a.seed,
                      "train_samples": len(train), "epochs": a.epochs, "best_epoch": best[1],
                      "val_accuracy": best[0], "test_accuracy": best[2]}), flush=True)


if __name__ == "__main__":
    main()
