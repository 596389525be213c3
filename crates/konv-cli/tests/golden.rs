//! Behaviour kept: short seeded CPU runs of each task compared with the `metrics.csv` that
//! the code before the one-engine refactor wrote (`tests/golden/<task>.csv`, timing columns
//! dropped).
//!
//! Re-recorded when konv's own CPU kernels replaced Burn's convolution and batch norm
//! (`konv_models::conv`): their sums run in another order, so the values moved in the 5th–6th
//! digit and, through training, a few accuracies; with `KONV_CONV=burn` (Burn's kernels) the
//! earlier files still matched bit for bit, which is what showed the change was rounding only.
//!
//! The numbers depend on the CPU's vector width: Burn's CPU backend picks AVX-512 kernels
//! (macerator's x86-64-v4 level) at run time where the CPU has them, and they sum in another
//! order than the AVX2 ones, so two runs of the same code differ in the 5th digit between an
//! AVX2 and an AVX-512 machine (seen with Burn's own kernels too, `KONV_CONV=burn`). Each
//! task therefore has `<task>.csv`, recorded on AVX2, and, where AVX-512 gives other
//! numbers, `<task>.x86-64-v4.csv`, which AVX-512 machines read instead.
//!
//! The runs use `KONV_CONV=gemm`: konv's kernels without Winograd F(2×2, 3×3), which takes
//! ResNet-20's 64-channel layers otherwise and sums in another order again (the same files,
//! since Winograd came after them; its arithmetic is checked against Burn's convolution and
//! finite differences in `models/tests/conv.rs` and `konv-train/tests/gradcheck.rs`).
//!
//! Re-record with `KONV_GOLDEN_BLESS=1 cargo test --release -p konv-cli --test golden`
//! (and `KONV_BIN=path/to/konv` to record with another binary): it writes the files of the
//! machine's level.
//!
//! Within one level the numbers are not the same on every CPU either: the `gemm` crate sizes
//! its blocks by the CPU's cache sizes, and the block sizes set the summation order. On an
//! Intel Xeon with AVX-512 the code that recorded the x86-64-v4 files (on an AMD EPYC) gave
//! values within 1e-5 of them after the first epoch, and then, through training, 1e-4 to 1e-3
//! (relative) on the second epoch's losses and two images more of 64 right. So the comparison
//! allows rounding, tightly where it cannot have grown yet, and no change of behaviour:
//! - the learning rate and the rows and columns: exactly;
//! - the first epoch: 1e-4 (relative) per value;
//! - later epochs: losses 1e-2 (relative), accuracies and IoU 0.05 (absolute, 3 of 64 images).
//!
//! A wrong schedule, augmentation, loss or metric moves the first epoch by far more.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Columns that measure time, not behaviour.
const TIMING: [&str; 2] = ["images_per_sec", "seconds"];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Whether this CPU runs Burn's x86-64-v4 (AVX-512) kernels: the features macerator checks.
fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512cd")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The golden file this machine compares with, and the one it writes when blessing:
/// `<name>.x86-64-v4.csv` on AVX-512 machines where it exists (or is being written),
/// `<name>.csv` otherwise.
fn golden_file(name: &str, bless: bool) -> PathBuf {
    let level = golden_dir().join(format!("{name}.x86-64-v4.csv"));
    if avx512() && (bless || level.exists()) {
        level
    } else {
        golden_dir().join(format!("{name}.csv"))
    }
}

/// `metrics.csv` without its timing columns.
fn behaviour(csv: &str) -> String {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let keep: Vec<usize> = (0..header.len())
        .filter(|&i| !TIMING.contains(&header[i]))
        .collect();
    std::iter::once(header)
        .chain(lines.map(|l| l.split(',').collect()))
        .map(|cells| {
            keep.iter()
                .map(|&i| cells.get(i).copied().unwrap_or(""))
                .collect::<Vec<_>>()
                .join(",")
        })
        .map(|l| l + "\n")
        .collect()
}

/// Runs `konv train` with `args` into a fresh folder and checks its metrics against
/// `tests/golden/<name>.csv`.
fn check(name: &str, args: &[&str]) {
    let dir = std::env::temp_dir().join(format!("konv-golden-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    let bin = std::env::var("KONV_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_konv").into());
    let out = Command::new(bin)
        .arg("train")
        .args(args)
        .args(["--out", "run", "--quiet", "--backend", "cpu", "--embedded"])
        .current_dir(&dir)
        .env_remove("KONV_DATA")
        // konv's im2col + GEMM kernels for every layer: the files pin the engine's behaviour,
        // and Winograd's transforms (64 channels and more) only move the rounding again, as
        // a CPU's vector width does; `models/tests/conv.rs` and `gradcheck.rs` check them.
        .env("KONV_CONV", "gemm")
        .output()
        .expect("konv runs");
    assert!(
        out.status.success(),
        "{name}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let got = behaviour(&std::fs::read_to_string(dir.join("run/metrics.csv")).unwrap());
    let bless = std::env::var_os("KONV_GOLDEN_BLESS").is_some();
    let path = golden_file(name, bless);
    if bless {
        std::fs::create_dir_all(golden_dir()).unwrap();
        let base = golden_dir().join(format!("{name}.csv"));
        if path != base && std::fs::read_to_string(&base).is_ok_and(|b| b == got) {
            // AVX-512 gives the AVX2 numbers for this task: one file is enough.
            std::fs::remove_file(&path).ok();
        } else {
            std::fs::write(&path, &got).unwrap();
        }
    }
    let path = golden_file(name, false);
    let want = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    if got == want {
        return;
    }
    let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    assert_eq!(
        g.len(),
        w.len(),
        "{name}: rows differ:\n{got}\nwanted\n{want}"
    );
    assert_eq!(g[0], w[0], "{name}: columns differ");
    for (row, (gl, wl)) in g[1..].iter().zip(&w[1..]).enumerate() {
        for ((gc, wc), col) in gl.split(',').zip(wl.split(',')).zip(w[0].split(',')) {
            let (a, b): (f64, f64) = (gc.parse().unwrap(), wc.parse().unwrap());
            assert!(
                (a - b).abs() <= tolerance(col, row == 0, b),
                "{name}: {col} is {gc}, golden {wc} ({})\n{got}\nwanted\n{want}",
                path.display()
            );
        }
    }
    eprintln!(
        "{name}: within rounding of {} but not bit for bit",
        path.display()
    );
}

/// How far column `col` of one epoch may be from its golden value `golden` (see the module
/// docs): exact for the epoch number and learning rate, 1e-4 relative in the first epoch,
/// then 1e-2 relative for losses and 0.05 absolute for accuracies and IoU.
fn tolerance(col: &str, first_epoch: bool, golden: f64) -> f64 {
    let scale = golden.abs().max(1.0);
    if col == "epoch" || col == "lr" {
        1e-12 * scale
    } else if first_epoch {
        1e-4 * scale
    } else if col.contains("loss") {
        1e-2 * scale
    } else {
        0.05
    }
}

#[test]
fn classification_metrics_are_kept() {
    check(
        "classify",
        &[
            "--epochs",
            "2",
            "--limit",
            "256",
            "--val-size",
            "64",
            "--batch-size",
            "32",
            "--lr",
            "0.05",
            "--seed",
            "7",
            "--augment",
            "flip,crop=2",
        ],
    );
}

#[test]
fn localization_metrics_are_kept() {
    check(
        "localize",
        &[
            "--task",
            "localize",
            "--model",
            "resnet20",
            "--stem-stride",
            "2",
            "--epochs",
            "2",
            "--limit",
            "64",
            "--val-size",
            "32",
            "--batch-size",
            "16",
            "--seed",
            "7",
        ],
    );
}

#[test]
fn segmentation_metrics_are_kept() {
    check(
        "segment",
        &[
            "--task",
            "segment",
            "--model",
            "fcn32s",
            "--backbone",
            "resnet20",
            "--stem-stride",
            "2",
            "--canvas",
            "48",
            "--epochs",
            "2",
            "--limit",
            "32",
            "--val-size",
            "16",
            "--batch-size",
            "8",
            "--seed",
            "7",
        ],
    );
}

#[test]
fn detection_metrics_are_kept() {
    check(
        "detect",
        &[
            "--task",
            "detect",
            "--model",
            "resnet20",
            "--stem-stride",
            "2",
            "--canvas",
            "48",
            "--epochs",
            "2",
            "--limit",
            "32",
            "--val-size",
            "16",
            "--batch-size",
            "8",
            "--seed",
            "7",
        ],
    );
}
