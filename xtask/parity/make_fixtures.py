"""Writes torchvision parity fixtures for konv.

For each model: torchvision's own module (weights=None), with batch-norm weights, biases
and running statistics drawn away from their defaults (so that a loader that skipped them
fails), in eval mode; a seeded input; and torchvision's output.

  NAME.safetensors     the state dict (safetensors.torch.save_file)
  NAME.pth             the same, with torch.save (--pth)
  NAME.io.safetensors  `input` and `output`
  manifest.json        [{name, divisor, classes, input}]

--divisor D builds reduced-width networks with torchvision's own classes (its
`_make_layer`, `Inception`, `BasicConv2d`, `make_layers`) and every width divided by D,
so that the keys are torchvision's and the files are small enough to commit.

Usage: python make_fixtures.py OUT_DIR [--divisor D] [--size S] [--batch N] [--classes K]
                               [--models name[:divisor],...]
"""

import argparse
import json
import os

import torch
import torch.nn as nn
import torchvision.models as tvm
from safetensors.torch import save_file
from torchvision.models.googlenet import BasicConv2d, Inception
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models.vgg import make_layers

CLASSES = 1000  # set from --classes


def narrow_resnet(ctor, block, layers, d):
    m = ctor(num_classes=CLASSES)
    if d == 1:
        return m
    w = 64 // d
    m.inplanes = w
    m.conv1 = nn.Conv2d(3, w, kernel_size=7, stride=2, padding=3, bias=False)
    m.bn1 = nn.BatchNorm2d(w)
    m.layer1 = m._make_layer(block, w, layers[0])
    m.layer2 = m._make_layer(block, 2 * w, layers[1], stride=2)
    m.layer3 = m._make_layer(block, 4 * w, layers[2], stride=2)
    m.layer4 = m._make_layer(block, 8 * w, layers[3], stride=2)
    m.fc = nn.Linear(8 * w * block.expansion, CLASSES)
    return m


def narrow_alexnet(d):
    m = tvm.alexnet(num_classes=CLASSES)
    if d == 1:
        return m
    f = [c // d for c in (64, 192, 384, 256, 256)]
    h = 4096 // d
    m.features[0] = nn.Conv2d(3, f[0], kernel_size=11, stride=4, padding=2)
    m.features[3] = nn.Conv2d(f[0], f[1], kernel_size=5, padding=2)
    m.features[6] = nn.Conv2d(f[1], f[2], kernel_size=3, padding=1)
    m.features[8] = nn.Conv2d(f[2], f[3], kernel_size=3, padding=1)
    m.features[10] = nn.Conv2d(f[3], f[4], kernel_size=3, padding=1)
    m.classifier[1] = nn.Linear(f[4] * 36, h)
    m.classifier[4] = nn.Linear(h, h)
    m.classifier[6] = nn.Linear(h, CLASSES)
    return m


def narrow_vgg16(d):
    m = tvm.vgg16(num_classes=CLASSES)
    if d == 1:
        return m
    cfg = [c // d if c != "M" else c for c in
           [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]]
    h = 4096 // d
    m.features = make_layers(cfg)
    m.classifier[0] = nn.Linear(512 // d * 49, h)
    m.classifier[3] = nn.Linear(h, h)
    m.classifier[6] = nn.Linear(h, CLASSES)
    return m


def narrow_googlenet(d):
    m = tvm.googlenet(num_classes=CLASSES, aux_logits=False, init_weights=True)
    if d == 1:
        return m
    m.conv1 = BasicConv2d(3, 64 // d, kernel_size=7, stride=2, padding=3)
    m.conv2 = BasicConv2d(64 // d, 64 // d, kernel_size=1)
    m.conv3 = BasicConv2d(64 // d, 192 // d, kernel_size=3, padding=1)
    table = {
        "inception3a": (192, 64, 96, 128, 16, 32, 32),
        "inception3b": (256, 128, 128, 192, 32, 96, 64),
        "inception4a": (480, 192, 96, 208, 16, 48, 64),
        "inception4b": (512, 160, 112, 224, 24, 64, 64),
        "inception4c": (512, 128, 128, 256, 24, 64, 64),
        "inception4d": (512, 112, 144, 288, 32, 64, 64),
        "inception4e": (528, 256, 160, 320, 32, 128, 128),
        "inception5a": (832, 256, 160, 320, 32, 128, 128),
        "inception5b": (832, 384, 192, 384, 48, 128, 128),
    }
    for name, widths in table.items():
        setattr(m, name, Inception(*[w // d for w in widths]))
    m.fc = nn.Linear(1024 // d, CLASSES)
    return m


BUILDERS = {
    "resnet18": lambda d: narrow_resnet(tvm.resnet18, BasicBlock, [2, 2, 2, 2], d),
    "resnet34": lambda d: narrow_resnet(tvm.resnet34, BasicBlock, [3, 4, 6, 3], d),
    "resnet50": lambda d: narrow_resnet(tvm.resnet50, Bottleneck, [3, 4, 6, 3], d),
    "alexnet": narrow_alexnet,
    "googlenet": narrow_googlenet,
    "vgg16": narrow_vgg16,
}


def perturb(model, gen):
    """Non-default values everywhere, batch norm's statistics included."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            elif isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.01)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--divisor", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--models", default=",".join(BUILDERS))
    parser.add_argument("--pth", action="store_true",
                        help="also write NAME.pth (torch.save of the state dict)")
    args = parser.parse_args()
    global CLASSES
    CLASSES = args.classes
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(2)
    manifest = []
    for i, entry in enumerate(args.models.split(",")):
        name, _, divisor = entry.partition(":")
        divisor = int(divisor) if divisor else args.divisor
        torch.manual_seed(1000 + i)
        gen = torch.Generator().manual_seed(2000 + i)
        model = BUILDERS[name](divisor)
        perturb(model, gen)
        model.eval()
        x = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
        with torch.no_grad():
            y = model(x)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, os.path.join(args.out, f"{name}.safetensors"))
        if args.pth:
            torch.save(model.state_dict(), os.path.join(args.out, f"{name}.pth"))
        save_file({"input": x.contiguous(), "output": y.contiguous()},
                  os.path.join(args.out, f"{name}.io.safetensors"))
        manifest.append({"name": name, "divisor": divisor, "classes": CLASSES,
                         "input": list(x.shape)})
        print(f"{name}: {sum(p.numel() for p in model.parameters()):,} parameters, "
              f"output {tuple(y.shape)}, max |y| {y.abs().max().item():.4g}")
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
