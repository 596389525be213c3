//! Project automation: `cargo xtask ci` (format check, clippy, tests),
//! `cargo xtask bench` (training throughput of the Fashion-MNIST CNN per backend) and
//! `cargo xtask subset` (rebuilds the embedded Fashion-MNIST subset from the real files).

use std::process::Command;
use std::time::Instant;

use anyhow::{Result, bail};
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use clap::{Parser, Subcommand};
use konv_train::backend::BackendName;
use konv_train::data::ImageBatch;
use konv_train::train::{TrainConfig, train_step};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// What CI runs: `cargo fmt --check`, `cargo clippy -D warnings`, `cargo test` (release profile).
    Ci {
        /// Skip clippy (and the check build it needs).
        #[arg(long)]
        no_clippy: bool,
    },
    /// Training images/s of a model on each backend, on random data (a benchmark, not a test).
    Bench {
        /// Backends to measure, comma-separated.
        #[arg(long, default_value = "flex,ndarray,wgpu", value_delimiter = ',')]
        backends: Vec<BackendName>,
        /// Model to train.
        #[arg(long, default_value = "fashion-cnn")]
        model: String,
        /// Images per step.
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        /// Input height and width.
        #[arg(long, default_value_t = 28)]
        size: usize,
        /// Untimed steps first (autotuning, allocation).
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Timed steps.
        #[arg(long, default_value_t = 10)]
        steps: usize,
    },
    /// Rebuild `datasets/embedded/fashion-mnist/` from the real Fashion-MNIST files: the first
    /// 600 training and 100 test images of each class.
    Subset {
        /// Folder with the real files.
        #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
        from: std::path::PathBuf,
    },
}

/// The first `per_class` items of each class, in file order.
fn balanced(set: &konv_datasets::ImageSet, per_class: usize) -> konv_datasets::ImageSet {
    let mut counts = [0usize; 256];
    let picked: Vec<usize> = (0..set.len())
        .filter(|&i| {
            let c = &mut counts[set.labels[i] as usize];
            *c += 1;
            *c <= per_class
        })
        .collect();
    set.select(&picked)
}

fn subset(from: &std::path::Path) -> Result<()> {
    use konv_datasets::idx::{encode_images, encode_labels};
    use std::io::Write;
    let data = konv_datasets::Locator {
        data_dir: Some(from.to_path_buf()),
        ..Default::default()
    }
    .load(konv_datasets::DatasetName::FashionMnist)?;
    let out =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/embedded/fashion-mnist");
    std::fs::create_dir_all(&out)?;
    for (prefix, set) in [
        ("train", balanced(&data.train, 600)),
        ("t10k", balanced(&data.test, 100)),
    ] {
        for (kind, bytes) in [
            ("images-idx3", encode_images(&set.images)),
            ("labels-idx1", encode_labels(&set.labels)),
        ] {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            gz.write_all(&bytes)?;
            let path = out.join(format!("{prefix}-{kind}-ubyte.gz"));
            std::fs::write(&path, gz.finish()?)?;
            println!("{} ({} items)", path.display(), set.len());
        }
    }
    Ok(())
}

fn cargo(args: &[&str]) -> Result<()> {
    println!("$ cargo {}", args.join(" "));
    let status = Command::new(env!("CARGO")).args(args).status()?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn ci(no_clippy: bool) -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    if !no_clippy {
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--release",
            "--",
            "-D",
            "warnings",
        ])?;
    }
    cargo(&["test", "--workspace", "--release"])
}

/// A random batch on `device`.
fn random_batch(batch: usize, size: usize, classes: usize, device: &Device) -> ImageBatch {
    ImageBatch {
        images: Tensor::random(
            [batch, 1, size, size],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            device,
        ),
        targets: Tensor::<1>::random(
            [batch],
            burn::tensor::Distribution::Uniform(0.0, classes as f64),
            device,
        )
        .int(),
    }
}

fn bench_one(
    backend: BackendName,
    model: &str,
    batch: usize,
    size: usize,
    warmup: usize,
    steps: usize,
) -> Result<f64> {
    let device = backend.open()?.autodiff();
    device.seed(0);
    let mut net = if model == "fashion-cnn" && size != 28 {
        konv_models::Classifier::FashionCnn(
            konv_models::fashion_cnn::FashionCnnConfig::new()
                .with_input_size([size, size])
                .init(&device),
        )
    } else {
        konv_models::build(model, 10, &device)?
    };
    let config = TrainConfig::default();
    let mut optim: ModuleOptimizer = config.optimizer();
    let batch_data = random_batch(batch, size, 10, &device);
    let t0 = Instant::now();
    for _ in 0..warmup {
        net = train_step(net, &mut optim, batch_data.clone(), config.lr).0;
    }
    let warm_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..steps {
        net = train_step(net, &mut optim, batch_data.clone(), config.lr).0;
    }
    let secs = t1.elapsed().as_secs_f64();
    println!(
        "{:<8} {model} batch {batch} {size}x{size}: {:>8.1} images/s  ({steps} steps in {secs:.1}s; warm-up {warmup} steps {warm_secs:.1}s)",
        backend.as_str(),
        (steps * batch) as f64 / secs
    );
    Ok((steps * batch) as f64 / secs)
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Ci { no_clippy } => ci(no_clippy),
        Cmd::Subset { from } => subset(&from),
        Cmd::Bench {
            backends,
            model,
            batch_size,
            size,
            warmup,
            steps,
        } => {
            println!("training throughput (forward + backward + SGD step, random data)");
            for backend in backends {
                if let Err(e) = bench_one(backend, &model, batch_size, size, warmup, steps) {
                    println!("{:<8} skipped: {e}", backend.as_str());
                }
            }
            Ok(())
        }
    }
}
