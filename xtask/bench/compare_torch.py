#!/usr/bin/env python3
"""PyTorch's side of `cargo xtask bench --compare-torch`: one workload per call, timed the
way `konv bench` times it (untimed warm-up steps, then each step timed), printed as one JSON
object with the process's peak RSS.

    python3 compare_torch.py WORKLOAD [--warmup N] [--steps N]
    python3 compare_torch.py conv-layers --layers JSON

Workloads: fashion-cnn-train-b64, resnet20-train-b96, resnet18-infer-b1, resnet18-infer-b8,
resnet50-infer-b1, resnet50-infer-b8, conv-layers (each convolution of --layers alone,
forward and backward; the xtask passes ResNet-18's distinct ones). Threads:
torch.set_num_threads(KONV_THREADS or 2); run it with OMP_WAIT_POLICY=PASSIVE as the xtask
does.
"""
import argparse
import json
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "gpu-bundle"))
from torch_bench import fashion_cnn  # noqa: E402  (the lecture's CNN, as konv's fashion-cnn)


class Basic(nn.Module):
    """The basic residual unit; option A shortcut (stride-2 subsampling, zero channels) as
    konv's resnet20, or torchvision's projection."""

    def __init__(self, inp, out, stride, projection):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.stride, self.extra = stride, out - inp
        self.downsample = None
        if projection and (stride != 1 or inp != out):
            self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.downsample is not None:
            s = self.downsample(x)
        elif self.stride != 1 or self.extra:
            s = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.extra))
        else:
            s = x
        return F.relu(y + s)


def resnet20(channels=1, classes=10):
    layers, inp = [], 16
    for width, stride in [(16, 1), (32, 2), (64, 2)]:
        for b in range(3):
            layers.append(Basic(inp, width, stride if b == 0 else 1, projection=False))
            inp = width
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))


def resnet18(classes=1000):
    layers, inp = [], 64
    for width, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        for b in range(2):
            layers.append(Basic(inp, width, stride if b == 0 else 1, projection=True))
            inp = width
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(3, 2, 1), *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(512, classes))


def resnet50():
    from torch_bench import resnet50 as r50
    return r50()


WORKLOADS = {
    # name: (model, mode, batch, channels, size, classes)
    "fashion-cnn-train-b64": (lambda: fashion_cnn(28), "train", 64, 1, 28, 10),
    "resnet20-train-b96": (lambda: resnet20(1, 10), "train", 96, 1, 28, 10),
    "resnet18-infer-b1": (resnet18, "infer", 1, 3, 224, 1000),
    "resnet18-infer-b8": (resnet18, "infer", 8, 3, 224, 1000),
    "resnet50-infer-b1": (resnet50, "infer", 1, 3, 224, 1000),
    "resnet50-infer-b8": (resnet50, "infer", 8, 3, 224, 1000),
}

def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(step, warmup, steps):
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    warm = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    times.sort()
    return times, warm


def workload(name, warmup, steps):
    build, mode, batch, channels, size, classes = WORKLOADS[name]
    torch.manual_seed(0)
    model = build()
    x = torch.randn(batch, channels, size, size)
    y = torch.randint(0, classes, (batch,))
    if mode == "train":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss.item()
    else:
        model.eval()

        def step():
            with torch.inference_mode():
                return float(model(x)[0, 0])
    times, warm = timed(step, warmup, steps)
    return {
        "workload": name,
        "framework": "pytorch",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "images_per_sec": steps * batch / sum(times),
        "ms_median": times[len(times) // 2] * 1e3,
        "warmup_seconds": warm,
        "peak_rss_bytes": peak_rss(),
    }


def conv_layers(layers, batch, warmup, steps):
    """Each of `layers` ([name, c_in, c_out, kernel, stride, input side], padding kernel // 2:
    konv_train::bench::RESNET18_CONVS, passed by the xtask) alone."""
    rows = []
    for name, cin, cout, k, s, side in layers:
        torch.manual_seed(0)
        x = torch.randn(batch, cin, side, side, requires_grad=True)
        w = torch.randn(cout, cin, k, k, requires_grad=True) * 0.01
        w = w.detach().requires_grad_()
        out_side = (side + 2 * (k // 2) - k) // s + 1
        flops = 2.0 * batch * cout * out_side * out_side * cin * k * k

        def fwd():
            with torch.no_grad():
                return F.conv2d(x, w, None, s, k // 2)

        dy = torch.randn(batch, cout, out_side, out_side)

        def bwd():
            out = F.conv2d(x, w, None, s, k // 2)
            dx, dw = torch.autograd.grad(out, (x, w), dy)
            return dx, dw

        tf, _ = timed(fwd, warmup, steps)
        tb, _ = timed(bwd, warmup, steps)
        # The backward row times forward + both gradients (autograd needs the graph); its
        # FLOPs are the three products.
        rows.append({
            "layer": name,
            "framework": "pytorch",
            "forward_gflops": flops / tf[len(tf) // 2] / 1e9,
            "backward_gflops": 3 * flops / tb[len(tb) // 2] / 1e9,
        })
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("workload", choices=sorted(WORKLOADS) + ["conv-layers"])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=8, help="batch of conv-layers")
    p.add_argument("--layers", default="[]", help="conv-layers: JSON [[name, c_in, c_out, kernel, stride, side], ...]")
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("KONV_THREADS", "2")))
    if a.workload == "conv-layers":
        for row in conv_layers(json.loads(a.layers), a.batch, a.warmup, a.steps):
            print(json.dumps(row), flush=True)
    else:
        print(json.dumps(workload(a.workload, a.warmup, a.steps)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
