#!/bin/bash
# The lecture's sliding-window detector on real Fashion-MNIST scenes (CPU): ResNet-20 made
# fully convolutional (stem stride 2: one cell per 8×8 pixels of a 96×96 scene), 2-4 items
# per scene kept mostly apart, tested with mAP@0.5 on scenes of the 10,000 test items.
# Usage: bash xtask/demo/detect.sh OUT_DIR [KONV] [EXTRA FLAGS...]
set -euo pipefail
out=${1:?usage: detect.sh OUT_DIR [KONV] [EXTRA FLAGS...]}
konv=${2:-target/release/konv}
shift $(( $# > 1 ? 2 : 1 ))
mkdir -p "$out"
$konv train --task detect --model resnet20 --stem-stride 2 --dataset fashion-mnist --full \
  --seed 1 --limit 30000 --val-size 2000 --epochs 4 --batch-size 32 --lr 0.05 \
  --lr-schedule one-cycle --nesterov --weight-decay 1e-4 --augment flip "$@" --out "$out/detect"
