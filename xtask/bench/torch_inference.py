"""PyTorch's inference latency for the same models, threads and shapes as
`cargo xtask bench --inference` (for comparison on the same machine).

Usage: python torch_inference.py MODEL BATCH [--size 224] [--threads 2] [--warmup 2] [--steps 10]
"""

import argparse
import statistics
import time

import torch
import torchvision.models as tvm

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("batch", type=int)
parser.add_argument("--size", type=int, default=224)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--warmup", type=int, default=2)
parser.add_argument("--steps", type=int, default=10)
args = parser.parse_args()

torch.set_num_threads(args.threads)
model = getattr(tvm, args.model)(weights=None).eval()
x = torch.randn(args.batch, 3, args.size, args.size)
with torch.inference_mode():
    for _ in range(args.warmup):
        model(x)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - t) * 1e3)
median = statistics.median(times)
print(f"torch {torch.__version__} {args.model} batch {args.batch} {args.size}x{args.size}, "
      f"{args.threads} threads: median {median:.1f} ms, mean {statistics.mean(times):.1f} ms")
