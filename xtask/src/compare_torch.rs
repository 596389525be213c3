//! `cargo xtask bench --compare-torch`: konv on the CPU and PyTorch side by side on this
//! machine, one after the other, the same workloads with 2 threads each.
//!
//! Each whole-model row runs in its own process on both sides (`konv bench --json`, and
//! `xtask/bench/compare_torch.py`), so each peak RSS is that workload's alone. PyTorch runs with
//! `OMP_WAIT_POLICY=PASSIVE`, so its idle OpenMP threads do not spin against konv's.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// One whole-model row: label, the PyTorch workload, `konv bench` arguments, warm-up and
/// timed steps, and the replica counts konv tries (the best is reported).
struct Row {
    label: &'static str,
    torch: &'static str,
    konv: &'static str,
    warmup: usize,
    steps: usize,
    replicas: &'static [usize],
}

const ROWS: [Row; 6] = [
    Row {
        label: "1. Fashion-MNIST CNN, train, b64, 28²",
        torch: "fashion-cnn-train-b64",
        konv: "--model fashion-cnn --mode train --batch-size 64 --size 28 --channels 1 --classes 10",
        warmup: 3,
        steps: 15,
        replicas: &[1, 2],
    },
    Row {
        label: "2. ResNet-20, train, b96, 28²",
        torch: "resnet20-train-b96",
        konv: "--model resnet20 --mode train --batch-size 96 --size 28 --channels 1 --classes 10",
        warmup: 3,
        steps: 10,
        replicas: &[1, 2],
    },
    Row {
        label: "3. ResNet-18, infer, b1, 224²",
        torch: "resnet18-infer-b1",
        konv: "--model resnet18 --mode infer --batch-size 1 --size 224 --channels 3",
        warmup: 5,
        steps: 20,
        replicas: &[1],
    },
    Row {
        label: "3. ResNet-18, infer, b8, 224²",
        torch: "resnet18-infer-b8",
        konv: "--model resnet18 --mode infer --batch-size 8 --size 224 --channels 3",
        warmup: 2,
        steps: 8,
        replicas: &[1],
    },
    Row {
        label: "4. ResNet-50, infer, b1, 224²",
        torch: "resnet50-infer-b1",
        konv: "--model resnet50 --mode infer --batch-size 1 --size 224 --channels 3",
        warmup: 3,
        steps: 12,
        replicas: &[1],
    },
    Row {
        label: "4. ResNet-50, infer, b8, 224²",
        torch: "resnet50-infer-b8",
        konv: "--model resnet50 --mode infer --batch-size 8 --size 224 --channels 3",
        warmup: 2,
        steps: 6,
        replicas: &[1],
    },
];

fn json_line(output: std::process::Output, what: &str) -> Result<Vec<Value>> {
    if !output.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).with_context(|| format!("{what}: not JSON: {l}")))
        .collect()
}

fn number(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn torch(python: &Path, script: &Path, args: &[&str]) -> Result<Vec<Value>> {
    let output = Command::new(python)
        .arg(script)
        .args(args)
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .env("KONV_THREADS", "2")
        .output()
        .context("running PyTorch")?;
    json_line(output, &format!("PyTorch {}", args.join(" ")))
}

fn konv(binary: &Path, args: &str, warmup: usize, steps: usize, replicas: usize) -> Result<Value> {
    let output = Command::new(binary)
        .arg("bench")
        .args(["--backend", "cpu", "--json"])
        .args(args.split_whitespace())
        .args([
            "--warmup",
            &warmup.to_string(),
            "--steps",
            &steps.to_string(),
        ])
        .args(["--replicas", &replicas.to_string()])
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .context("running konv bench")?;
    json_line(output, &format!("konv bench {args}"))?
        .pop()
        .context("konv bench printed no JSON")
}

fn mib(bytes: f64) -> String {
    format!("{:.0} MiB", bytes / (1024.0 * 1024.0))
}

/// Runs every row and prints the table.
pub fn run(python: PathBuf) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("xtask/bench/compare_torch.py");
    // PyTorch first: a wrong --python is one line, before minutes of building.
    let version = Command::new(&python)
        .args(["-c", "import torch; print(torch.__version__)"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .with_context(|| {
            format!(
                "--python {}: cannot import torch with it; give a Python with torch installed",
                python.display()
            )
        })?;
    let status = Command::new("cargo")
        .args(["build", "--release", "-p", "konv-cli"])
        .status()?;
    if !status.success() {
        bail!("cargo build -p konv-cli failed");
    }
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let binary = root.join(target).join("release/konv");
    println!(
        "konv (cpu, {} rayon threads) against PyTorch {} (2 threads, OMP_WAIT_POLICY=PASSIVE), one after the other; images/s over all timed steps\n",
        2,
        String::from_utf8_lossy(&version.stdout).trim()
    );
    println!(
        "{:<40} {:>12} {:>12} {:>7}  konv",
        "workload", "konv img/s", "torch img/s", "ratio"
    );
    let mut memory = Vec::new();
    for row in &ROWS {
        let mut best: Option<(usize, Value)> = None;
        for &r in row.replicas {
            let v = konv(&binary, row.konv, row.warmup, row.steps, r)?;
            if best
                .as_ref()
                .is_none_or(|(_, b)| number(&v, "images_per_sec") > number(b, "images_per_sec"))
            {
                best = Some((r, v));
            }
        }
        let (replicas, ours) = best.context("no konv run")?;
        let theirs = torch(
            &python,
            &script,
            &[
                row.torch,
                "--warmup",
                &row.warmup.to_string(),
                "--steps",
                &row.steps.to_string(),
            ],
        )?
        .pop()
        .context("PyTorch printed no JSON")?;
        let (a, b) = (
            number(&ours, "images_per_sec"),
            number(&theirs, "images_per_sec"),
        );
        println!(
            "{:<40} {a:>12.1} {b:>12.1} {:>7.2}  {}",
            row.label,
            a / b,
            if replicas > 1 {
                format!("--replicas {replicas}")
            } else {
                "one model".into()
            }
        );
        if row.label.starts_with("1.") || row.label.starts_with("2.") {
            memory.push((
                row.label,
                number(&ours, "peak_memory_bytes"),
                number(&theirs, "peak_rss_bytes"),
            ));
        }
    }

    let ceiling = konv_models::conv::cpu::sgemm_gflops(1024, 5);
    println!(
        "\n5. ResNet-18's convolutions alone, batch 8, GFLOP/s (sgemm ceiling here: {ceiling:.1} GFLOP/s, 1024³ f32 on the gemm crate, 2 threads)"
    );
    println!(
        "{:<28} {:>10} {:>10} {:>7} {:>10} {:>10} {:>7}",
        "layer", "konv fwd", "torch fwd", "ratio", "konv bwd", "torch bwd", "ratio"
    );
    // The one list of layers (konv_train::bench), handed to PyTorch's side as JSON.
    let layers = serde_json::to_string(&konv_train::bench::RESNET18_CONVS)?;
    let torch_layers = torch(
        &python,
        &script,
        &[
            "conv-layers",
            "--warmup",
            "2",
            "--steps",
            "5",
            "--layers",
            &layers,
        ],
    )?;
    let device = burn::prelude::Device::flex();
    for (layer, theirs) in konv_train::bench::RESNET18_CONVS.iter().zip(&torch_layers) {
        let ours = konv_train::bench::conv_layer(layer, 8, 2, 5, &device);
        let (tf, tb) = (
            number(theirs, "forward_gflops"),
            number(theirs, "backward_gflops"),
        );
        println!(
            "{:<28} {:>10.1} {:>10.1} {:>7.2} {:>10.1} {:>10.1} {:>7.2}",
            ours.layer,
            ours.forward_gflops,
            tf,
            ours.forward_gflops / tf,
            ours.backward_gflops,
            tb,
            ours.backward_gflops / tb
        );
    }

    println!("\n6. Peak RSS (each workload in its own process)");
    println!("{:<40} {:>12} {:>12}", "workload", "konv", "PyTorch");
    for (label, ours, theirs) in memory {
        println!("{label:<40} {:>12} {:>12}", mib(ours), mib(theirs));
    }
    Ok(())
}
