#!/bin/bash
# Transfer-learning demonstration on real Fashion-MNIST (CPU): pretrain ResNet-20 on classes
# 0-4, then learn classes 5-9 from 1,000 labelled images (800 train + 200 validation),
# starting from the pretrained weights (head first, then everything) or from scratch.
# Usage: bash xtask/demo/transfer.sh OUT_DIR [KONV]
set -euo pipefail
out=${1:?usage: transfer.sh OUT_DIR [KONV]}
konv=${2:-target/release/konv}
mkdir -p "$out"
common="--model resnet20 --dataset fashion-mnist --full --seed 1 --batch-size 64 --nesterov --weight-decay 5e-4 --no-decay-bias-norm --augment flip"
few="--classes 5,6,7,8,9 --limit 800 --val-size 200 --epochs 30"
$konv train $common --classes 0,1,2,3,4 --epochs 2 --lr 0.2 --lr-schedule one-cycle --out "$out/pretrain"
$konv train $common $few --init-from "$out/pretrain/best.bpk" --freeze-epochs 5 --head-lr 0.1 --lr 0.01 --lr-schedule cosine --out "$out/transfer"
$konv train $common $few --lr 0.1 --lr-schedule cosine:warmup=2 --out "$out/scratch"
