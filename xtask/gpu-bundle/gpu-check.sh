#!/usr/bin/env bash
# konv's GPU check, ready to run on a machine where nothing can be built or fetched:
#   1. finds the Vulkan loader (or unpacks the one the bundle carries) and a Vulkan driver
#      (NVIDIA's ICD where the loader finds none);
#   2. prints `konv devices`;
#   3. checks agreement: ResNet-18 (ResNet-20 with --tiny) with the same seeded weights and batch on cpu and wgpu
#      (logits, and the losses of two training steps);
#   4. times `konv bench` on wgpu: Fashion-MNIST CNN training at batch 64 and 256, ResNet-50
#      training at 224², batch 32, ResNet-50 inference at batch 1 and 64, and a short
#      `konv train` on the embedded Fashion-MNIST subset;
#   5. times the same workloads in PyTorch eager (CUDA when there is one), when PyTorch is
#      installed;
#   6. writes every figure as JSON, and the table, into --out (autotune caches too, so a
#      second run starts warm).
#
# Usage: gpu-check.sh [--out DIR] [--tiny] [--no-torch]
#   --tiny      the same steps with tiny shapes (for CI, on lavapipe: Mesa's CPU Vulkan)
#   --no-torch  skip PyTorch
# Each part has its own time limit, and all of them end within 9 minutes (20 with --tiny).
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$PWD/gpu-check-out
TINY=0
TORCH=1
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        --out=*) OUT=${1#--out=}; shift ;;
        --tiny) TINY=1; shift ;;
        --no-torch) TORCH=0; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "gpu-check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
START=$(date +%s)
# The whole check ends within 9 minutes (--tiny, on lavapipe: 20): each part gets its own
# limit or what is left.
DEADLINE=$(( START + (TINY ? 1200 : 540) ))
within() {
    local left=$(( DEADLINE - $(date +%s) ))
    [ "$left" -lt "$1" ] && echo $(( left > 1 ? left : 1 )) || echo "$1"
}
say() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/log.txt"; }

# The binary: shipped gzipped (the bundle's size limit), unpacked once into --out.
KONV=$HERE/konv
if [ ! -x "$KONV" ]; then
    KONV=$OUT/bin/konv
    if [ ! -x "$KONV" ]; then
        mkdir -p "$OUT/bin"
        gzip -dc "$HERE/konv.gz" > "$KONV.part" && chmod +x "$KONV.part" && mv "$KONV.part" "$KONV" \
            || { echo "gpu-check.sh: cannot unpack $HERE/konv.gz" >&2; exit 1; }
    fi
fi

# 1. The Vulkan loader, and a driver.
if ! ldconfig -p 2>/dev/null | grep 'libvulkan\.so\.1' >/dev/null; then  # (not grep -q: with pipefail its early exit fails the pipe)
    say "no libvulkan.so.1 on this machine: unpacking the bundle's"
    for deb in "$HERE"/debs/*.deb; do
        [ -e "$deb" ] || continue
        if command -v dpkg-deb >/dev/null; then
            dpkg-deb -x "$deb" "$OUT/sysroot"
        else
            (mkdir -p "$OUT/sysroot" && cd "$OUT/sysroot" && ar p "$deb" data.tar.xz | tar xJ)
        fi
    done
    export LD_LIBRARY_PATH="$OUT/sysroot/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
NVIDIA_ICD=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ] \
    && ! ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json >/dev/null 2>&1 \
    && [ -f "$NVIDIA_ICD" ]; then
    say "no Vulkan driver where the loader looks: using $NVIDIA_ICD"
    export VK_DRIVER_FILES=$NVIDIA_ICD VK_ICD_FILENAMES=$NVIDIA_ICD
fi

# Autotune results and compiled kernels go into --out: run konv from there.
printf '[environment]\npath = "local"\n' > "$OUT/cubecl.toml"
cd "$OUT" || exit 1
export XDG_CACHE_HOME=$OUT/cache
if [ "$TINY" = 1 ]; then
    # lavapipe runs kernels on the CPU; a full autotune of every shape would take minutes.
    export CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-minimal}
fi

# 2. What konv sees.
say "konv devices"
timeout 60 "$KONV" devices 2>&1 | grep -v XDG_RUNTIME_DIR | tee "$OUT/devices.txt" | tee -a "$OUT/log.txt"
if ! grep -q '^wgpu .*(Vulkan\|^wgpu .*(Metal\|^wgpu .*(Dx12' "$OUT/devices.txt"; then
    say "FAILED: no wgpu adapter konv can compute on (see devices.txt)"
    exit 1
fi

# One `konv bench` row as a JSON line in konv.jsonl: name, limit in seconds, flags.
: > "$OUT/konv.jsonl"
FAILED=0
bench() {
    local name=$1 budget=$2; shift 2
    say "konv bench: $name"
    local json rc limit try
    for try in 1 2; do
        limit=$(within "$budget")
        rc=0
        json=$(timeout "$limit" "$KONV" bench --backend wgpu --json "$@" 2> >(grep -v XDG_RUNTIME_DIR >>"$OUT/log.txt")) || rc=$?
        if [ "$rc" = 0 ] && [ "${json:0:1}" != "{" ]; then rc=1; fi
        # Killed by a signal (not the time limit, 124): Mesa's lavapipe has crashed now and then
        # in CI (exit 139, not reproducible on rerun), so a crash gets one more try, logged.
        if [ "$rc" -gt 128 ] && [ "$try" = 1 ]; then
            say "  crashed (exit $rc); once more"
            continue
        fi
        break
    done
    if [ "$rc" = 0 ]; then
        echo "{\"workload\":\"$name\",${json:1}" >> "$OUT/konv.jsonl"
    else
        echo "{\"workload\":\"$name\",\"error\":\"exit $rc$( [ "$rc" = 124 ] && echo ", past ${limit}s")\"}" >> "$OUT/konv.jsonl"
        say "  failed (exit $rc)"
        FAILED=1
    fi
}

if [ "$TINY" = 1 ]; then
    # lavapipe compiles every kernel shape on the CPU (about a minute per network): the tiny
    # run keeps the steps but swaps ResNet-18/50 for ResNet-20 at 8×8.
    # (One channel throughout, so that the short `konv train` of ResNet-20 on 8×8 Fashion-MNIST
    # reuses the kernels the benchmarks compiled: Burn keeps them in its cache in --out.)
    AGREE_MODEL=resnet20; AGREE=(--size 8 --batch-size 2 --channels 1); FC=(--size 8)
    R50_MODEL=resnet20; R50=(--size 8 --channels 1)
    B64=2; B256=4; B32=2; B1=1; BIG=2; STEPS=(--warmup 1 --steps 2)
    TRAIN=(--model resnet20 --augment resize=8x8 --batch-size 2 --limit 16 --val-size 4)
    T=300
else
    AGREE_MODEL=resnet18; AGREE=(--size 224 --batch-size 8); FC=(--size 28)
    R50_MODEL=resnet50; R50=(--size 224)
    B64=64; B256=256; B32=32; B1=1; BIG=64; STEPS=(--warmup 3 --steps 20)
    TRAIN=(--model fashion-cnn --batch-size 64 --limit 4096 --val-size 512)
    T=100
fi

# 3. Agreement with the CPU.
say "agreement: $AGREE_MODEL on cpu and wgpu"
if timeout "$(within "$T")" "$KONV" bench --model $AGREE_MODEL --backend wgpu --mode train "${AGREE[@]}" \
    --warmup 0 --steps 1 --check-cpu --json > "$OUT/agreement.json" 2>>"$OUT/log.txt"; then
    :
else
    echo "{\"error\":\"exit $?\"}" > "$OUT/agreement.json"; FAILED=1
fi

# 4. konv on wgpu.
bench "fashion-cnn train b64" "$T" --model fashion-cnn --mode train "${FC[@]}" --batch-size $B64 "${STEPS[@]}"
bench "fashion-cnn train b256" "$T" --model fashion-cnn --mode train "${FC[@]}" --batch-size $B256 "${STEPS[@]}"
bench "resnet50 train b32" "$T" --model $R50_MODEL --mode train "${R50[@]}" --batch-size $B32 "${STEPS[@]}"
bench "resnet50 infer b1" "$T" --model $R50_MODEL --mode infer "${R50[@]}" --batch-size $B1 "${STEPS[@]}"
bench "resnet50 infer b64" "$T" --model $R50_MODEL --mode infer "${R50[@]}" --batch-size $BIG "${STEPS[@]}"

say "konv train: one epoch on the embedded subset on wgpu (${TRAIN[*]})"
rm -rf "$OUT/train-run"
if timeout "$(within "$T")" "$KONV" train --embedded --backend wgpu --epochs 1 "${TRAIN[@]}" \
    --out "$OUT/train-run" > >(grep -v XDG_RUNTIME_DIR >>"$OUT/log.txt") 2>&1; then
    ips=$(awk -F, 'NR==1{for(i=1;i<=NF;i++) if($i=="images_per_sec") c=i} NR==2{print $c}' "$OUT/train-run/metrics.csv")
    echo "{\"workload\":\"konv train (embedded)\",\"images_per_sec\":$ips}" >> "$OUT/konv.jsonl"
else
    echo "{\"workload\":\"konv train (embedded)\",\"error\":\"exit $?\"}" >> "$OUT/konv.jsonl"; FAILED=1
fi

# 5. PyTorch eager.
: > "$OUT/torch.jsonl"
if [ "$TORCH" = 1 ] && python3 -c 'import torch' 2>/dev/null; then
    say "PyTorch: the same workloads"
    timeout "$(within $(( T * 2 )))" python3 "$HERE/torch_bench.py" $( [ "$TINY" = 1 ] && echo --tiny ) \
        > "$OUT/torch.jsonl" 2>>"$OUT/log.txt" || say "  PyTorch part failed or timed out (exit $?)"
else
    say "PyTorch: skipped (not installed, or --no-torch)"
fi

# 6. The table.
if command -v python3 >/dev/null; then
    python3 "$HERE/report.py" "$OUT" > "$OUT/table.txt"
else
    cat "$OUT/konv.jsonl" "$OUT/agreement.json" > "$OUT/table.txt"
fi
echo
cat "$OUT/table.txt"
say "done; everything is in $OUT"
if grep -q '"agreement"' "$OUT/agreement.json" && command -v python3 >/dev/null; then
    python3 - "$OUT/agreement.json" <<'PY' || FAILED=1
import json, sys
a = json.load(open(sys.argv[1]))["agreement"]
sys.exit(0 if a["logits_relative"] <= 1e-3 and a["losses_relative"] <= 1e-3 else 1)
PY
fi
exit $FAILED
