#!/bin/bash
# Classification + localization on real Fashion-MNIST canvases (CPU): ResNet-20 (stem
# stride 2) with a class head and a 4×4-grid box head, 64×64 canvases, items at scale 1-2,
# loss 0.8 · cross-entropy + 0.2 · box MSE; tested on canvases of the 10,000 test items.
# Usage: bash xtask/demo/localize.sh OUT_DIR [KONV]
set -euo pipefail
out=${1:?usage: localize.sh OUT_DIR [KONV]}
konv=${2:-target/release/konv}
mkdir -p "$out"
$konv train --task localize --model resnet20 --stem-stride 2 --full --epochs 4 --batch-size 64 \
  --lr 0.1 --lr-schedule one-cycle --nesterov --weight-decay 5e-4 --augment flip --seed 1 \
  --out "$out/loc-r20"
