//! Project automation: `cargo xtask ci` (format check, clippy, tests),
//! `cargo xtask bench` (training throughput per backend, or `--inference` latency),
//! `cargo xtask parity` (konv against torchvision, fixtures made with PyTorch in a venv) and
//! `cargo xtask subset` (rebuilds the embedded Fashion-MNIST subset from the real files).

mod compare_torch;

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use clap::{Parser, Subcommand};
use konv_train::backend::BackendName;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// What CI runs: `cargo fmt --check`, `cargo clippy -D warnings`, `cargo test` (release
    /// profile), the `own_model` example, and the GPU check bundle with `gpu-check.sh --tiny`.
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
        /// Measure inference latency (forward only, no autodiff) instead of training.
        #[arg(long)]
        inference: bool,
        /// Model replicas each batch is split between (data parallelism over CPU cores).
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        /// Input channels (3 for RGB models at ImageNet sizes, e.g. resnet18 at 224).
        #[arg(long, default_value_t = 1)]
        channels: usize,
        /// Instead: konv (cpu) and PyTorch side by side on this machine, one after the other,
        /// 2 threads each (issue 17's table: training and inference rows, each ResNet-18
        /// convolution alone against the sgemm ceiling, peak RSS).
        #[arg(long)]
        compare_torch: bool,
        /// With --compare-torch: a Python with torch (default: the venv of `cargo xtask
        /// parity`, made on first use).
        #[arg(long)]
        python: Option<std::path::PathBuf>,
        /// With --compare-torch: rounds per whole-model row, konv and PyTorch alternated in
        /// each; the table shows the median images/s of each side and the spread of the
        /// rounds' ratios (this machine's speed drifts by tens of percent within minutes).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
        rounds: u32,
    },
    /// Images/s of an image folder through konv's data path (a benchmark, not a test):
    /// decoding cold, reading the decoded cache, and the loader's augmentation per epoch.
    BenchLoader {
        /// JPEG files to generate.
        #[arg(long, default_value_t = 600)]
        images: usize,
        /// Their side (and the training size).
        #[arg(long, default_value_t = 224)]
        size: u32,
        /// Images per batch.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Augmentation of the training images.
        #[arg(long, default_value = "flip,resized-crop=0.35")]
        augment: String,
    },
    /// Fuzz konv's file readers (IDX, images, run folders, PyTorch weights) with mutated
    /// files: panics, memory past each reader's bound and hangs are findings, saved under
    /// target/fuzz/. Exits non-zero when any is found.
    Fuzz {
        /// Minutes on each target.
        #[arg(long, default_value_t = 1.0)]
        minutes: f64,
        /// Targets, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        target: Vec<String>,
        /// Random seed of the mutations.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Write the GPU check bundle: a stripped, gzipped release `konv`, `gpu-check.sh`, the
    /// PyTorch side and Debian's Vulkan loader .debs, in one folder to carry to a GPU machine
    /// (where nothing can be built or fetched). Run it there with `gpu-check.sh --out DIR`.
    GpuBundle {
        /// The bundle folder (replaced).
        #[arg(long, default_value = "target/gpu-bundle")]
        out: std::path::PathBuf,
        /// Refuse a bundle larger than this many MiB.
        #[arg(long, default_value_t = 60)]
        max_mib: u64,
        /// Then run `gpu-check.sh --tiny` from the bundle, into this folder (CI: lavapipe).
        #[arg(long)]
        check_tiny: Option<std::path::PathBuf>,
    },
    /// Check konv's outputs against torchvision's: makes fixtures with PyTorch (pip, in a
    /// venv under target/) and compares every model.
    Parity {
        /// Where the fixtures go.
        #[arg(long, default_value = "target/parity")]
        dir: std::path::PathBuf,
        /// Input height and width.
        #[arg(long, default_value_t = 224)]
        size: usize,
        /// Models, `name[:divisor]`, comma-separated.
        #[arg(
            long,
            default_value = "resnet18,resnet34,resnet50,alexnet,googlenet,vgg16"
        )]
        models: String,
        /// Regenerate the committed reduced-width fixture (models/tests/fixtures/parity)
        /// instead.
        #[arg(long)]
        reduced: bool,
        /// Python with torch, torchvision and safetensors (default: a venv made in
        /// target/parity-venv).
        #[arg(long)]
        python: Option<std::path::PathBuf>,
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
    cargo(&["test", "--workspace", "--release"])?;
    own_model_example()?;
    // The GPU check bundle, built and run with tiny shapes on lavapipe: ready for a GPU.
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let bundle = std::path::Path::new(&target).join("gpu-bundle");
    gpu_bundle(&bundle, 60)?;
    gpu_check_tiny(
        &bundle,
        &std::path::Path::new(&target).join("gpu-check-tiny"),
    )
}

/// The `own_model` example end to end on tiny real data: 300 embedded Fashion-MNIST images
/// exported as a folder by `konv export`, then the example's own CNN trained on them.
fn own_model_example() -> Result<()> {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let dir = std::path::Path::new(&target).join("own-model-example");
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir)?;
    let data = dir.join("fashion");
    let data = data.to_str().context("a UTF-8 target folder")?;
    // The decoded-image cache goes beside the data, not into the user's cache.
    // SAFETY: xtask is single-threaded here.
    unsafe { std::env::set_var("KONV_CACHE", dir.join("cache")) };
    cargo(&[
        "run",
        "--release",
        "-q",
        "-p",
        "konv-cli",
        "--",
        "export",
        "--embedded",
        "--limit",
        "300",
        "--out",
        data,
    ])?;
    cargo(&[
        "run",
        "--release",
        "-q",
        "-p",
        "konv-train",
        "--example",
        "own_model",
        "--",
        data,
    ])
}

/// Generates `count` JPEGs of `size`² in two classes under a fresh folder, then measures
/// [`konv_datasets::ImageFolder::open`] cold (decode, resize) and cached, and one epoch of
/// the training loader (augmentation, standardization, batching).
fn bench_loader(count: usize, size: u32, batch_size: usize, augment: &str) -> Result<()> {
    use konv_datasets::{FolderOptions, ImageFolder};
    let pipeline: konv_train::augment::Pipeline =
        augment.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let dir = std::env::temp_dir().join(format!("konv-bench-loader-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    for i in 0..count {
        let class = dir.join("photos").join(["a", "b"][i % 2]);
        std::fs::create_dir_all(&class)?;
        let img = image::RgbImage::from_fn(size, size, |x, y| {
            let v = (x * 3 + y * 5 + i as u32 * 7) % 256;
            image::Rgb([v as u8, (v / 2) as u8, (255 - v) as u8])
        });
        img.save(class.join(format!("{i:05}.jpg")))?;
    }
    let options = FolderOptions {
        image_size: Some(size as usize),
        cache: Some(dir.join("cache")),
        ..FolderOptions::default()
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "image folder: {count} JPEGs of {size}x{size}, RGB, {threads} decoding threads, batch {batch_size}, --augment {pipeline}"
    );
    let t = Instant::now();
    let folder = ImageFolder::open(&dir.join("photos"), &options)?;
    let cold = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let cached = ImageFolder::open(&dir.join("photos"), &options)?;
    let warm = t.elapsed().as_secs_f64();
    anyhow::ensure!(cached.from_cache, "the second open should read the cache");
    let stats = konv_datasets::folder::channel_stats(&folder.train);
    let normalize = konv_train::data::Normalize::per_channel(&stats);
    let set = std::sync::Arc::new(folder.train);
    let device = Device::flex();
    let t = Instant::now();
    let mut seen = 0;
    let loader = konv_train::data::loader(
        set,
        normalize,
        batch_size,
        Some(1),
        Some(std::sync::Arc::new(pipeline)),
        &device,
    );
    for batch in loader.iter() {
        seen += batch
            .map_err(|e| anyhow::anyhow!(e.to_string()))?
            .targets
            .dims()[0];
    }
    let epoch = t.elapsed().as_secs_f64();
    println!(
        "{:<44} {:>10.0} images/s  ({cold:.2}s)",
        "decode + resize, cold (first run)",
        count as f64 / cold
    );
    println!(
        "{:<44} {:>10.0} images/s  ({warm:.2}s)",
        "decoded cache (later runs)",
        count as f64 / warm
    );
    println!(
        "{:<44} {:>10.0} images/s  ({epoch:.2}s)",
        "augment + batch, one epoch (every epoch)",
        seen as f64 / epoch
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// One `cargo xtask bench` row through [`konv_train::bench`], the loop `konv bench` runs.
#[allow(clippy::too_many_arguments)]
fn bench_row(
    backend: BackendName,
    model: &str,
    batch: usize,
    size: usize,
    warmup: usize,
    steps: usize,
    replicas: usize,
    channels: usize,
    inference: bool,
) -> Result<()> {
    use konv_train::bench::{BenchConfig, Mode, bench};
    let config = BenchConfig {
        model: model.to_string(),
        mode: if inference { Mode::Infer } else { Mode::Train },
        batch_size: batch,
        size,
        channels: Some(channels),
        classes: Some(10).filter(|_| !inference),
        warmup,
        steps,
        replicas,
        seed: 0,
    };
    let r = bench(&config, &backend.open()?)?;
    println!(
        "{:<8} {model} batch {batch} {size}x{size}{}: {:>8.1} images/s, median {:.1} ms/step  ({steps} steps; warm-up {warmup} steps {:.1}s)",
        backend.as_str(),
        if replicas > 1 {
            format!(", {replicas} replicas")
        } else {
            String::new()
        },
        r.images_per_sec,
        r.ms_median,
        r.warmup_seconds
    );
    Ok(())
}

/// A Python with torch, torchvision and safetensors: `python` if given, else a venv in
/// target/parity-venv, made (pip install) on first use.
fn parity_python(python: Option<std::path::PathBuf>) -> Result<std::path::PathBuf> {
    if let Some(python) = python {
        return Ok(python);
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let venv = root.join("target/parity-venv");
    let py = venv.join("bin/python");
    let ready = py.is_file()
        && Command::new(&py)
            .args(["-c", "import torch, torchvision, safetensors"])
            .status()
            .is_ok_and(|s| s.success());
    if !ready {
        println!(
            "$ python3 -m venv {} && pip install torch torchvision safetensors",
            venv.display()
        );
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()?
            .success()
            && Command::new(&py)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "torch",
                    "torchvision",
                    "safetensors",
                ])
                .status()?
                .success();
        if !ok {
            bail!(
                "could not make the PyTorch venv in {}; pass --python with torch installed",
                venv.display()
            );
        }
    }
    Ok(py)
}

fn parity(
    dir: std::path::PathBuf,
    size: usize,
    models: String,
    reduced: bool,
    python: Option<std::path::PathBuf>,
) -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let py = parity_python(python)?;
    let script = root.join("xtask/parity/make_fixtures.py");
    let (dir, args): (std::path::PathBuf, Vec<String>) = if reduced {
        (
            root.join("models/tests/fixtures/parity"),
            "--divisor 8 --size 64 --batch 2 --classes 10 --pth --models resnet18,resnet34:16,resnet50:16,alexnet:16,googlenet,vgg16:16"
                .split(' ')
                .map(String::from)
                .collect(),
        )
    } else {
        (
            dir,
            vec!["--size".into(), size.to_string(), "--models".into(), models],
        )
    };
    println!(
        "$ {} {} {} {}",
        py.display(),
        script.display(),
        dir.display(),
        args.join(" ")
    );
    let status = Command::new(&py)
        .arg(&script)
        .arg(&dir)
        .args(&args)
        .status()?;
    if !status.success() {
        bail!("making the fixtures failed ({status})");
    }
    if reduced {
        // Only resnet18's .pth is committed (the loader's other format).
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".pth") && name != "resnet18.pth" {
                std::fs::remove_file(&path)?;
            }
        }
    }
    let results = konv_models::parity::check_fixtures(&dir, &Device::flex())?;
    println!(
        "{:<10} {:>7} {:>8} {:>14} {:>14} {:>12}  within 1e-4·max?",
        "model", "width", "tensors", "max|konv−tv|", "max|tv|", "ratio"
    );
    let mut failed = Vec::new();
    for r in &results {
        println!(
            "{:<10} {:>7} {:>8} {:>14.3e} {:>14.3e} {:>12.2e}  {}",
            r.name,
            format!("1/{}", r.divisor),
            r.loaded,
            r.max_abs_diff,
            r.max_abs_ref,
            r.max_abs_diff / r.max_abs_ref,
            if r.passes() { "yes" } else { "NO" }
        );
        if !r.passes() {
            failed.push(r.name.clone());
        }
    }
    if !failed.is_empty() {
        bail!("konv differs from torchvision for {}", failed.join(", "));
    }
    Ok(())
}

/// The bundle's scripts, kept beside this file.
const BUNDLE_FILES: [(&str, &str); 3] = [
    ("gpu-check.sh", include_str!("../gpu-bundle/gpu-check.sh")),
    (
        "torch_bench.py",
        include_str!("../gpu-bundle/torch_bench.py"),
    ),
    ("report.py", include_str!("../gpu-bundle/report.py")),
];

/// `cargo xtask gpu-bundle`: see [`Cmd::GpuBundle`].
fn gpu_bundle(out: &std::path::Path, max_mib: u64) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    cargo(&["build", "--release", "-p", "konv-cli"])?;
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let binary = std::path::Path::new(&target).join("release/konv");
    if out.exists() {
        std::fs::remove_dir_all(out)
            .with_context(|| format!("{}: cannot replace", out.display()))?;
    }
    std::fs::create_dir_all(out.join("debs"))?;
    // Stripped (125 MB rather than 164), then gzipped: gzip is on every machine.
    let stripped = out.join("konv.stripped");
    let status = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&binary)
        .status();
    if !status.is_ok_and(|s| s.success()) {
        println!("warning: `strip` failed or is missing; the bundle carries the unstripped binary");
        std::fs::copy(&binary, &stripped)?;
    }
    let bytes = std::fs::read(&stripped)?;
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(out.join("konv.gz"))?,
        flate2::Compression::best(),
    );
    gz.write_all(&bytes)?;
    gz.finish()?;
    std::fs::remove_file(&stripped)?;
    for (name, text) in BUNDLE_FILES {
        let path = out.join(name);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    // The Vulkan loader (and EGL, which wgpu opens too) for a machine without them.
    let debs = Command::new("apt-get")
        .args(["download", "libvulkan1", "libegl1", "libglvnd0"])
        .current_dir(out.join("debs"))
        .status();
    if !debs.is_ok_and(|s| s.success()) {
        println!(
            "warning: `apt-get download libvulkan1 libegl1 libglvnd0` failed: the bundle relies on the GPU machine's own Vulkan loader"
        );
    }
    let mut total = 0u64;
    let mut listing = Vec::new();
    for entry in walk(out)? {
        let len = std::fs::metadata(&entry)?.len();
        total += len;
        listing.push(format!(
            "{:>10}  {}",
            len,
            entry.strip_prefix(out).unwrap_or(&entry).display()
        ));
    }
    listing.sort();
    for line in &listing {
        println!("{line}");
    }
    let mib = total as f64 / 1048576.0;
    println!("{}: {mib:.1} MiB in all", out.display());
    if total > max_mib << 20 {
        bail!("the bundle is {mib:.1} MiB, past --max-mib {max_mib}");
    }
    Ok(())
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(walk(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}

/// `gpu-check.sh --tiny` from the bundle in `bundle`, into `out`.
fn gpu_check_tiny(bundle: &std::path::Path, out: &std::path::Path) -> Result<()> {
    std::fs::remove_dir_all(out).ok();
    let status = Command::new("bash")
        .arg(bundle.join("gpu-check.sh"))
        .args(["--tiny", "--out"])
        .arg(out)
        .status()
        .context("bash, to run gpu-check.sh")?;
    if !status.success() {
        bail!(
            "gpu-check.sh --tiny failed; see {}",
            out.join("log.txt").display()
        );
    }
    Ok(())
}

/// `cargo xtask fuzz`: each target for `minutes`, one table at the end.
fn fuzz(minutes: f64, targets: &[String], seed: u64) -> Result<()> {
    use konv_fuzz::targets::{NAMES, target};
    if !(minutes > 0.0 && minutes.is_finite()) {
        bail!("--minutes must be a positive number");
    }
    let names: Vec<&str> = if targets.is_empty() {
        NAMES.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    if let Some(bad) = names.iter().find(|n| !NAMES.contains(n)) {
        bail!(
            "--target {bad}: no such target; the targets: {}",
            NAMES.join(", ")
        );
    }
    let root = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let save = std::path::Path::new(&root).join("fuzz");
    let budget = konv_fuzz::Budget::Time(std::time::Duration::from_secs_f64(minutes * 60.0));
    let mut rows = Vec::new();
    for name in names {
        println!("fuzzing {name} for {minutes} min...");
        let mut t = target(name);
        let report = konv_fuzz::fuzz(&mut t, budget, seed, Some(&save));
        for f in &report.findings {
            println!(
                "  FOUND {}: {} ({} bytes{})",
                name,
                f.problem,
                f.len,
                f.saved
                    .as_ref()
                    .map(|p| format!(", saved as {}", p.display()))
                    .unwrap_or_default()
            );
        }
        rows.push((name, t.about, report));
    }
    println!(
        "\n{:<20} {:>9} {:>9} {:>9} {:>7} {:>8}  reads",
        "target", "inputs", "inputs/s", "accepted", "corpus", "findings"
    );
    let mut found = 0;
    for (name, about, r) in &rows {
        found += r.findings.len();
        println!(
            "{:<20} {:>9} {:>9.0} {:>9} {:>7} {:>8}  {about}",
            name,
            r.execs,
            r.execs as f64 / r.elapsed.as_secs_f64().max(1e-9),
            r.accepted,
            r.corpus,
            r.findings.len()
        );
    }
    if found > 0 {
        bail!("{found} finding(s); the inputs are in {}", save.display());
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Ci { no_clippy } => ci(no_clippy),
        Cmd::BenchLoader {
            images,
            size,
            batch_size,
            augment,
        } => bench_loader(images, size, batch_size, &augment),
        Cmd::Subset { from } => subset(&from),
        Cmd::GpuBundle {
            out,
            max_mib,
            check_tiny,
        } => {
            gpu_bundle(&out, max_mib)?;
            match check_tiny {
                Some(dir) => gpu_check_tiny(&out, &dir),
                None => Ok(()),
            }
        }
        Cmd::Fuzz {
            minutes,
            target,
            seed,
        } => fuzz(minutes, &target, seed),
        Cmd::Parity {
            dir,
            size,
            models,
            reduced,
            python,
        } => parity(dir, size, models, reduced, python),
        Cmd::Bench {
            backends,
            model,
            batch_size,
            size,
            warmup,
            steps,
            inference,
            replicas,
            channels,
            compare_torch: compare,
            python,
            rounds,
        } => {
            if compare {
                let python = python.map(Ok).unwrap_or_else(|| parity_python(None))?;
                return compare_torch::run(python, rounds as usize);
            }
            if inference {
                println!("inference latency (forward only, inference mode, random data)");
            } else {
                println!("training throughput (forward + backward + SGD step, random data)");
            }
            for backend in backends {
                let result = bench_row(
                    backend, &model, batch_size, size, warmup, steps, replicas, channels, inference,
                );
                if let Err(e) = result {
                    println!("{:<8} skipped: {e}", backend.as_str());
                }
            }
            Ok(())
        }
    }
}
