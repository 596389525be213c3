#!/usr/bin/env python3
"""The table of konv's GPU check, from the JSON files gpu-check.sh wrote into OUT.

    python3 report.py OUT > OUT/table.txt
"""
import json
import os
import sys


def lines(path):
    if not os.path.exists(path):
        return []
    out = []
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def main(out):
    konv = {r["workload"]: r for r in lines(os.path.join(out, "konv.jsonl"))}
    torch = {r["workload"]: r for r in lines(os.path.join(out, "torch.jsonl"))}
    rows = []
    head = f"{'workload':<24} {'konv ran':<22} {'konv wgpu img/s':>15} {'PyTorch img/s':>14} {'ratio':>6} {'konv warm-up s':>14} {'konv ms median':>14}  device"
    rows.append(head)
    rows.append("-" * len(head))
    for name, k in konv.items():
        t = torch.get(name, {})
        ki = k.get("images_per_sec")
        ti = t.get("images_per_sec")
        ratio = f"{ki / ti:.2f}" if ki and ti else "-"
        fmt = lambda v, f: format(v, f) if isinstance(v, (int, float)) else (v or "-")
        c = k.get("config") or {}
        ran = f"{c.get('model')} b{c.get('batch_size')} {c.get('size')}x{c.get('size')}" if c else "-"
        rows.append(
            f"{name:<24} {ran:<22} {fmt(ki, '15.1f'):>15} {fmt(ti, '14.1f') if ti else t.get('error', 'skipped')[:14]:>14} {ratio:>6} "
            f"{fmt(k.get('warmup_seconds'), '14.1f'):>14} {fmt(k.get('ms_median'), '14.2f'):>14}  "
            f"{k.get('error', '')}{t.get('device', '') if ti else ''}"
        )
    agreement = os.path.join(out, "agreement.json")
    a = lines(agreement)
    if a and "agreement" in a[0]:
        g = a[0]["agreement"]
        ok = g["logits_relative"] <= 1e-3 and g["losses_relative"] <= 1e-3
        rows.append("")
        rows.append(
            f"agreement ({a[0]['config']['model']}, cpu vs wgpu): logits max|Δ|/max|y| = {g['logits_relative']:.2e}, "
            f"training losses {g['device_losses']} vs {g['cpu_losses']} (max rel. Δ {g['losses_relative']:.2e}): "
            + ("OK" if ok else "DIFFERENT")
        )
    elif a:
        rows.append("")
        rows.append(f"agreement: {a[0].get('error', 'not measured')}")
    print("\n".join(rows))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
