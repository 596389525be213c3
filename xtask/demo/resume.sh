#!/bin/bash
# A real run killed with SIGKILL in the middle of an epoch and resumed, against the same run
# uninterrupted (CPU backend, same seed): every metric but the timings must be identical.
# Usage: bash xtask/demo/resume.sh OUT_DIR [KONV]
set -uo pipefail
out=${1:?usage: resume.sh OUT_DIR [KONV]}
konv=${2:-target/release/konv}
mkdir -p "$out"
args="--model resnet20 --dataset fashion-mnist --full --backend cpu --seed 7 --limit 2000 --val-size 500 --epochs 3 --batch-size 64 --lr 0.1 --nesterov --lr-schedule one-cycle --weight-decay 5e-4 --no-decay-bias-norm --label-smoothing 0.1 --augment flip,crop=2"
$konv train $args --out "$out/whole"
$konv train $args --out "$out/cut" &
pid=$!
while [ ! -f "$out/cut/state.json" ]; do sleep 0.2; done
sleep $(( (RANDOM % 8) + 2 ))
kill -9 $pid; wait $pid 2>/dev/null
echo "killed (SIGKILL) after $(grep -m1 '"epoch"' "$out/cut/state.json")"
$konv train --resume "$out/cut" --dataset fashion-mnist --full
cut -d, -f1-6 "$out/whole/metrics.csv" > "$out/whole.txt"
cut -d, -f1-6 "$out/cut/metrics.csv" > "$out/cut.txt"
cat "$out/whole.txt"
diff "$out/whole.txt" "$out/cut.txt" && echo "IDENTICAL: uninterrupted and killed+resumed"
