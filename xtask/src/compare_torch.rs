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

/// Untimed and timed passes of each layer of row 5, on both sides; the figure is the median
/// of the timed ones. The smallest layers take about a millisecond, so five timed passes let
/// one interrupted pass move the median: `layer2.0.downsample` read 58 GFLOP/s in one run
/// with 5 and 120–132 in five rounds of 50.
const LAYER_WARMUP: usize = 3;
/// See [`LAYER_WARMUP`].
const LAYER_STEPS: usize = 25;

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

/// The median of `values` (the mean of the middle two for an even count); NaN for none.
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if !n.is_multiple_of(2) => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs every row (the whole-model ones `rounds` times, konv and PyTorch alternated) and
/// prints the table.
pub fn run(python: PathBuf, rounds: usize) -> Result<()> {
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
    if rounds > 1 {
        println!(
            "{rounds} rounds per row, konv then PyTorch in each; medians, and the lowest and highest of the rounds' ratios\n"
        );
    }
    println!(
        "{:<40} {:>12} {:>12} {:>7}  {}konv",
        "workload",
        "konv img/s",
        "torch img/s",
        "ratio",
        if rounds > 1 { "rounds' ratios  " } else { "" }
    );
    let mut memory = Vec::new();
    for row in &ROWS {
        let (mut ours_all, mut theirs_all, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut replicas_used, mut peaks) = (Vec::new(), (0f64, 0f64));
        for _ in 0..rounds {
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
            ours_all.push(a);
            theirs_all.push(b);
            ratios.push(a / b);
            replicas_used.push(replicas);
            peaks.0 = peaks.0.max(number(&ours, "peak_memory_bytes"));
            peaks.1 = peaks.1.max(number(&theirs, "peak_rss_bytes"));
        }
        let (a, b) = (median(&ours_all), median(&theirs_all));
        replicas_used.sort_unstable();
        replicas_used.dedup();
        let spread = if rounds > 1 {
            let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{lo:.2}–{hi:.2}       ")
        } else {
            String::new()
        };
        println!(
            "{:<40} {a:>12.1} {b:>12.1} {:>7.2}  {spread}{}",
            row.label,
            a / b,
            match replicas_used.as_slice() {
                [1] => "one model".to_string(),
                [r] => format!("--replicas {r}"),
                all => format!(
                    "--replicas {} (best per round)",
                    all.iter()
                        .map(|r| r.to_string())
                        .collect::<Vec<_>>()
                        .join("/")
                ),
            }
        );
        if row.label.starts_with("1.") || row.label.starts_with("2.") {
            // The highest peak of the rounds on each side.
            memory.push((row.label, peaks.0, peaks.1));
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
    let (warmup, steps) = (LAYER_WARMUP.to_string(), LAYER_STEPS.to_string());
    let torch_layers = torch(
        &python,
        &script,
        &[
            "conv-layers",
            "--warmup",
            &warmup,
            "--steps",
            &steps,
            "--layers",
            &layers,
        ],
    )?;
    let device = burn::prelude::Device::flex();
    for (layer, theirs) in konv_train::bench::RESNET18_CONVS.iter().zip(&torch_layers) {
        let ours = konv_train::bench::conv_layer(layer, 8, LAYER_WARMUP, LAYER_STEPS, &device);
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

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_even_and_no_rounds() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.5]), 7.5);
        assert!(median(&[]).is_nan());
    }
}
