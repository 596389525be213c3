#!/bin/bash
# The lecture's FCN comparison on real Fashion-MNIST scenes (CPU): FCN-8s, FCN-32s and
# FCN-16s over ResNet-20 (stem stride 2: stages at 1/2, 1/4, 1/8), trained the same way on
# 96×96 scenes of 2-4 items, tested on scenes of the 10,000 test items.
# Usage: bash xtask/demo/segment.sh OUT_DIR [KONV] [EXTRA FLAGS...]
set -euo pipefail
out=${1:?usage: segment.sh OUT_DIR [KONV] [EXTRA FLAGS...]}
konv=${2:-target/release/konv}
shift $(( $# > 1 ? 2 : 1 ))
mkdir -p "$out"
common="--task segment --backbone resnet20 --stem-stride 2 --dataset fashion-mnist --full --seed 1 \
  --limit 30000 --val-size 2000 --epochs 2 --batch-size 32 --lr 0.05 --lr-schedule one-cycle \
  --nesterov --weight-decay 1e-4 --augment flip"
for variant in fcn8s fcn32s fcn16s; do
  $konv train $common "$@" --model $variant --out "$out/$variant"
done
