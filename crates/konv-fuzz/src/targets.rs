//! The readers konv fuzzes, each with its seed files and its bounds.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use burn::prelude::Device;
use konv_datasets::folder::{MAX_PIXELS, decode_image, planes, resize_center_crop};
use konv_datasets::idx::{IdxImages, encode_images, encode_labels, read_images, read_labels};
use konv_datasets::mnist::embedded_fashion_mnist;
use konv_train::observer::Silent;
use konv_train::run::RunDir;
use konv_train::train::{RunInfo, SplitData, TrainConfig};

use crate::Target;

const MIB: usize = 1 << 20;

/// The names of every target, in the order `cargo xtask fuzz` runs them.
pub const NAMES: [&str; 7] = [
    "idx-raw",
    "idx-gzip",
    "image",
    "run-config",
    "run-state",
    "weights-safetensors",
    "weights-pth",
];

/// Builds target `name` (its seeds are made here: a few seconds for the run-folder ones,
/// which train a tiny run).
///
/// # Panics
/// For a name not in [`NAMES`], or when the seeds cannot be made (a temporary folder that
/// cannot be written, the repository's weight fixtures missing).
pub fn target(name: &str) -> Target {
    match name {
        "idx-raw" => idx(false),
        "idx-gzip" => idx(true),
        "image" => image(),
        "run-config" => run_config(),
        "run-state" => run_state(),
        "weights-safetensors" => weights("resnet18.safetensors"),
        "weights-pth" => weights("resnet18.pth"),
        other => panic!(
            "no fuzz target `{other}`; the targets: {}",
            NAMES.join(", ")
        ),
    }
}

/// A temporary folder of one target, removed when the target is dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("konv-fuzz-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("the harness cannot write: {e}"))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).expect("gzip into memory");
    gz.finish().expect("gzip into memory")
}

/// IDX image and label files of the embedded Fashion-MNIST subset's first images, raw or
/// gzipped; both readers run on every input. Memory: the input and what it inflates to,
/// which the header bounds.
fn idx(gzipped: bool) -> Target {
    let set = embedded_fashion_mnist().train.take(12);
    let images = IdxImages {
        count: set.len(),
        ..set.images.clone()
    };
    let mut seeds = vec![encode_images(&images), encode_labels(&set.labels)];
    if gzipped {
        let compressed: Vec<Vec<u8>> = seeds.iter().map(|s| gzip(s)).collect();
        seeds.extend(compressed);
    }
    let scratch = Scratch::new(if gzipped { "idx-gzip" } else { "idx-raw" });
    let path = scratch.0.join(if gzipped { "input.gz" } else { "input" });
    Target {
        name: if gzipped { "idx-gzip" } else { "idx-raw" },
        about: "IDX images and labels (konv_datasets::idx)",
        seeds,
        hot: 64,
        // Deflate inflates at most ~1,032×; the reader keeps the data and one copy.
        memory: if gzipped {
            |len| 32 * MIB + 3 * 1032 * len
        } else {
            |len| 32 * MIB + 3 * len
        },
        time: Duration::from_secs(2),
        run: Box::new(move |bytes| {
            let _keep = &scratch;
            // A mutated raw file is gzipped first: the gzip reader then sees valid streams
            // of hostile content (a huge declared size in a tiny, highly compressed file),
            // besides the mutated streams.
            if gzipped && !bytes.starts_with(&[0x1f, 0x8b]) {
                write(&path, &gzip(bytes))?;
            } else {
                write(&path, bytes)?;
            }
            let images = read_images(&path).map(|_| ()).map_err(|e| e.to_string());
            let labels = read_labels(&path, 10)
                .map(|_| ())
                .map_err(|e| e.to_string());
            images.or(labels)
        }),
    }
}

/// PNG and JPEG files, gray and color, decoded as konv decodes every image, then converted
/// and resized as the folder loader does. Memory: the documented pixel limit.
fn image() -> Target {
    let set = embedded_fashion_mnist().train.take(2);
    let gray =
        ::image::GrayImage::from_raw(28, 28, set.images.image(0).to_vec()).expect("a 28×28 image");
    let color = ::image::RgbImage::from_fn(40, 24, |x, y| {
        ::image::Rgb([(x * 6) as u8, (y * 10) as u8, ((x + y) * 3) as u8])
    });
    let encode = |img: ::image::DynamicImage, format| {
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), format)
            .expect("encode a seed image");
        out
    };
    use ::image::{DynamicImage, ImageFormat};
    let seeds = vec![
        encode(DynamicImage::ImageLuma8(gray.clone()), ImageFormat::Png),
        encode(DynamicImage::ImageRgb8(color.clone()), ImageFormat::Png),
        encode(DynamicImage::ImageLuma8(gray), ImageFormat::Jpeg),
        encode(DynamicImage::ImageRgb8(color), ImageFormat::Jpeg),
    ];
    Target {
        name: "image",
        about: "PNG and JPEG files (konv_datasets::folder::decode_image)",
        seeds,
        hot: 256,
        memory: |_| 64 * MIB + 8 * MAX_PIXELS as usize,
        time: Duration::from_secs(10),
        run: Box::new(|bytes| {
            let strict = decode_image(bytes, false).map(|_| ());
            let (img, _) = decode_image(bytes, true)?;
            let _ = planes(&img, 3);
            let _ = resize_center_crop(&img, 16, [16, 16]);
            strict
        }),
    }
}

/// A finished classification run of one epoch on 32 images (its folder's files), for the
/// run-folder targets.
struct SeedRun {
    scratch: Scratch,
    files: Vec<(String, Vec<u8>)>,
}

fn seed_run(name: &str) -> SeedRun {
    let scratch = Scratch::new(name);
    let dir = scratch.0.join("seed");
    let run = RunDir::create(&dir).expect("a run folder");
    let config = TrainConfig {
        settings: konv_train::engine::Settings {
            epochs: 1,
            batch_size: 16,
            limit: Some(32),
            val_size: 16,
            seed: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let data = SplitData::new(&embedded_fashion_mnist(), 16, Some(32), 1);
    let device = Device::flex();
    let info = RunInfo {
        config: config.clone(),
        data_source: "the embedded Fashion-MNIST subset".into(),
        subset: true,
        class_names: (0..10).map(|c| format!("class {c}")).collect(),
        input: [1, 28, 28],
        normalize: data.normalize,
        train_size: data.train.len(),
        val_size: data.val.len(),
    };
    run.write_config(&info).expect("the seed run's config.json");
    konv_train::train::train(&config, 10, &data, &device, Some(&run), &mut Silent)
        .expect("the seed run trains");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("the seed run's folder") {
        let path = entry.expect("a file of the seed run").path();
        if path.is_file() {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            files.push((
                name.unwrap_or_default(),
                std::fs::read(&path).expect("a file of the seed run"),
            ));
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    SeedRun { scratch, files }
}

impl SeedRun {
    fn file(&self, name: &str) -> Vec<u8> {
        self.files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| panic!("the seed run has no {name}"))
    }

    /// A fresh copy of the run with `name` replaced by `bytes`.
    fn with(&self, name: &str, bytes: &[u8]) -> Result<RunDir, String> {
        let dir = self.scratch.0.join("run");
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        for (n, b) in &self.files {
            write(&dir.join(n), if n == name { bytes } else { b })?;
        }
        RunDir::open(&dir).map_err(|e| e.to_string())
    }
}

/// A run's `config.json`, read as `konv eval` and `konv predict` read it: the task's
/// description, then the model it names built and its weights loaded.
fn run_config() -> Target {
    let seed = seed_run("run-config");
    let config = seed.file("config.json");
    // The same run described as each dense task, so that their readers see valid JSON too
    // (these seeds are refused further on: their fields are a classifier's).
    let mut seeds = vec![config.clone()];
    if let Ok(serde_json::Value::Object(mut map)) = serde_json::from_slice(&config) {
        for task in ["localize", "segment", "detect"] {
            map.insert("task".into(), task.into());
            seeds.push(serde_json::to_vec_pretty(&map).expect("JSON"));
        }
    }
    let device = Device::flex();
    Target {
        name: "run-config",
        about: "a run folder's config.json (eval and predict)",
        seeds,
        hot: 0,
        memory: |_| 512 * MIB,
        time: Duration::from_secs(10),
        run: Box::new(move |bytes| {
            let run = seed.with("config.json", bytes)?;
            let e = |e: konv_train::TrainError| e.to_string();
            if let Some(info) = konv_train::localize::read_info(&run).map_err(e)? {
                konv_train::localize::load_localizer(&run, &info, &device).map_err(e)?;
            } else if let Some(info) = konv_train::segment::read_info(&run).map_err(e)? {
                konv_train::segment::load_fcn(&run, &info, &device).map_err(e)?;
            } else if let Some(info) = konv_train::detect::read_info(&run).map_err(e)? {
                konv_train::detect::load_detector(&run, &info, &device).map_err(e)?;
            } else {
                konv_train::train::load_run_model(&run, None, &device).map_err(e)?;
            }
            Ok(())
        }),
    }
}

/// A run's `state.json`, read as `konv train --resume` reads it: the run resumed for its
/// second epoch (or refused).
fn run_state() -> Target {
    let mut seed = seed_run("run-state");
    // The seed run is asked for a second epoch, so a valid state resumes and trains it.
    let mut config: serde_json::Value =
        serde_json::from_slice(&seed.file("config.json")).expect("the seed run's config");
    if let Some(c) = config.get_mut("config") {
        c["epochs"] = 2.into();
    }
    let config_bytes = serde_json::to_vec_pretty(&config).expect("JSON");
    for (n, b) in &mut seed.files {
        if n == "config.json" {
            b.clone_from(&config_bytes);
        }
    }
    let seeds = vec![seed.file("state.json")];
    let data = SplitData::new(&embedded_fashion_mnist(), 16, Some(32), 1);
    let device = Device::flex();
    Target {
        name: "run-state",
        about: "a run folder's state.json (--resume)",
        seeds,
        hot: 0,
        memory: |_| 512 * MIB,
        time: Duration::from_secs(20),
        run: Box::new(move |bytes| {
            let run = seed.with("state.json", bytes)?;
            let e = |e: konv_train::TrainError| e.to_string();
            let info = RunInfo::read(&run).map_err(e)?;
            konv_train::train::resume(&info.config, 10, &data, &device, &run, &mut Silent)
                .map_err(e)?;
            Ok(())
        }),
    }
}

/// A PyTorch state dict of a narrow ResNet-18 (the parity fixture, made by `torch.save`
/// and by safetensors) imported into konv's model as `konv import` and `--weights` do.
fn weights(file: &'static str) -> Target {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tests/fixtures/parity");
    let seed =
        std::fs::read(fixtures.join(file)).unwrap_or_else(|e| panic!("the fixture {file}: {e}"));
    let scratch = Scratch::new(file);
    let path = scratch.0.join(file);
    let model = konv_models::registry::build_narrow("resnet18", 10, 8, &Device::flex())
        .expect("the narrow resnet18");
    Target {
        name: if file.ends_with(".pth") {
            "weights-pth"
        } else {
            "weights-safetensors"
        },
        about: "PyTorch weights (konv_models::import::load_pytorch)",
        seeds: vec![seed],
        // The header: safetensors' JSON, or the zip's first entry (the pickle).
        hot: 16 * 1024,
        memory: |len| 256 * MIB + 4 * len,
        time: Duration::from_secs(5),
        run: Box::new(move |bytes| {
            let _keep = &scratch;
            write(&path, bytes)?;
            let mut m = model.clone();
            konv_models::import::load_pytorch(&mut m, "resnet18", &path)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
    }
}
