#!/usr/bin/env python3
"""PyTorch eager side of konv's GPU check: the workloads of gpu-check.sh, timed the way
`konv bench` times them (untimed warm-up steps, then each step timed to completion), one
JSON object per line on stdout.

    python3 torch_bench.py [--tiny] [--device cuda|cpu]

The models are written here (no torchvision needed): the lecture's Fashion-MNIST CNN, as
konv's `fashion-cnn`, and torchvision's ResNet-50 layout.
"""
import argparse
import json
import sys
import time

import torch
from torch import nn


def fashion_cnn(size, classes=10):
    same = lambda i, o, k: nn.Conv2d(i, o, k, padding=k // 2)
    side = size // 8
    return nn.Sequential(
        same(1, 64, 7), nn.ReLU(), nn.MaxPool2d(2),
        same(64, 128, 3), nn.ReLU(), same(128, 128, 3), nn.ReLU(), nn.MaxPool2d(2),
        same(128, 256, 3), nn.ReLU(), same(256, 256, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(256 * side * side, 128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, 64), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(64, classes),
    )


class Bottleneck(nn.Module):
    def __init__(self, inp, width, stride):
        super().__init__()
        out = width * 4
        self.conv1 = nn.Conv2d(inp, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inp != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + idt)


def resnet50(classes=1000):
    layers, inp = [], 64
    for width, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
        for b in range(blocks):
            layers.append(Bottleneck(inp, width, stride if b == 0 else 1))
            inp = width * 4
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1), *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(2048, classes))


def bench(name, model, mode, batch, channels, size, classes, warmup, steps, device):
    torch.manual_seed(0)
    model = model.to(device)
    x = torch.randn(batch, channels, size, size, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if mode == "train":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            return loss.item()  # waits for the device, as konv reads its loss back
    else:
        model.eval()

        def step():
            with torch.inference_mode():
                out = model(x)
            sync()
            return float(out[0, 0])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warm = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    total = sum(times)
    times.sort()
    return {
        "workload": name,
        "framework": "pytorch",
        "device": str(device) + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
        "torch": torch.__version__,
        "images_per_sec": steps * batch * 1e3 / total,
        "ms_median": times[len(times) // 2],
        "ms_min": times[0],
        "ms_max": times[-1],
        "warmup_seconds": warm,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--only", default="", help="comma-separated workload names")
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    # name, model builder, mode, batch, channels, size, classes, warmup, steps
    if a.tiny:
        work = [
            ("fashion-cnn train b64", lambda: fashion_cnn(8), "train", 2, 1, 8, 10, 1, 2),
            ("fashion-cnn train b256", lambda: fashion_cnn(8), "train", 4, 1, 8, 10, 1, 2),
            ("resnet50 train b32", lambda: resnet50(), "train", 2, 3, 32, 1000, 1, 2),
            ("resnet50 infer b1", lambda: resnet50(), "infer", 1, 3, 32, 1000, 1, 2),
            ("resnet50 infer b64", lambda: resnet50(), "infer", 2, 3, 32, 1000, 1, 2),
        ]
    else:
        work = [
            ("fashion-cnn train b64", lambda: fashion_cnn(28), "train", 64, 1, 28, 10, 5, 30),
            ("fashion-cnn train b256", lambda: fashion_cnn(28), "train", 256, 1, 28, 10, 5, 30),
            ("resnet50 train b32", lambda: resnet50(), "train", 32, 3, 224, 1000, 3, 20),
            ("resnet50 infer b1", lambda: resnet50(), "infer", 1, 3, 224, 1000, 5, 50),
            ("resnet50 infer b64", lambda: resnet50(), "infer", 64, 3, 224, 1000, 3, 20),
        ]
    only = set(filter(None, a.only.split(",")))
    for name, build, *rest in work:
        if only and name not in only:
            continue
        try:
            print(json.dumps(bench(name, build(), *rest, device)), flush=True)
        except Exception as e:  # one failed row does not lose the others
            print(json.dumps({"workload": name, "framework": "pytorch", "error": str(e)}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
