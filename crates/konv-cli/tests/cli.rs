//! The `konv` binary end to end on tiny data, and its answers to bad input.

use std::path::Path;
use std::process::{Command, Output};

fn konv(args: &[&str], cwd: &Path) -> Output {
    konv_with_env(args, cwd, &[])
}

/// Runs `konv` with the arguments `base` then `extra` (a test's common flags, then one
/// case's).
fn konv_plus(base: &[&str], extra: &[&str], cwd: &Path) -> Output {
    konv(&[base, extra].concat(), cwd)
}

/// Runs `konv` with extra environment variables (and without `KONV_DATA`).
fn konv_with_env(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_konv"))
        .args(args)
        .current_dir(cwd)
        .env_remove("KONV_DATA")
        .envs(env.iter().copied())
        .output()
        .expect("konv runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A test's own folder, removed when the test ends.
fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("konv-cli-{name}-"))
        .tempdir()
        .unwrap()
}

/// Asserts a failed run with a one-line error containing `needle` and no panic.
fn assert_clear_error(out: &Output, needle: &str) {
    let all = text(out);
    assert!(!out.status.success(), "should fail: {all}");
    assert!(!all.contains("panicked"), "panicked: {all}");
    assert!(all.contains(needle), "expected `{needle}` in: {all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.trim().lines().count() <= 3,
        "error should be short: {stderr}"
    );
}

#[test]
fn train_eval_predict_on_the_embedded_subset() {
    let scratch = temp_dir("e2e");
    let dir = scratch.path();
    let out = konv(
        &[
            "train",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--limit",
            "64",
            "--val-size",
            "32",
            "--nesterov",
            "--out",
            "run",
            "--embedded",
        ],
        dir,
    );
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("embedded Fashion-MNIST subset"), "{log}");
    assert!(log.contains("test accuracy"), "{log}");
    for f in [
        "config.json",
        "metrics.csv",
        "checkpoint.bpk",
        "optimizer.bpk",
        "best.bpk",
    ] {
        assert!(dir.join("run").join(f).is_file(), "{f}");
    }
    // Training again into the same folder would overwrite it: refused.
    let again = konv(
        &[
            "train",
            "--epochs",
            "1",
            "--limit",
            "16",
            "--out",
            "run",
            "--embedded",
        ],
        dir,
    );
    assert_clear_error(&again, "already holds a run");

    let out = konv(&["eval", "--run", "run"], dir);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("test accuracy") && log.contains("Ankle boot"),
        "{log}"
    );
    let out = konv(&["eval", "--checkpoint", "run/checkpoint.bpk"], dir);
    assert!(out.status.success(), "{}", text(&out));
    // Ten-crop test-time augmentation; a shift as wide as the images is refused by name.
    let out = konv(
        &["eval", "--run", "run", "--tta-flip", "--tta-shift", "1"],
        dir,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_clear_error(
        &konv(&["eval", "--run", "run", "--tta-shift", "28"], dir),
        "--tta-shift 28",
    );

    // A 28×28 PNG and a larger JPEG, both go through resize and grayscale.
    image::GrayImage::from_fn(28, 28, |x, _| image::Luma([(x * 9) as u8]))
        .save(dir.join("a.png"))
        .unwrap();
    image::RgbImage::from_fn(64, 50, |x, y| image::Rgb([x as u8, y as u8, 90]))
        .save(dir.join("b.jpg"))
        .unwrap();
    let out = konv(
        &["predict", "--run", "run", "a.png", "b.jpg", "--top", "3"],
        dir,
    );
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(log.matches('%').count(), 6, "{log}");

    // An unreadable image.
    std::fs::write(dir.join("broken.png"), b"not a png").unwrap();
    assert_clear_error(
        &konv(&["predict", "--run", "run", "broken.png"], dir),
        "broken.png",
    );
    assert_clear_error(
        &konv(&["predict", "--run", "run", "missing.jpg"], dir),
        "missing.jpg",
    );
    assert_clear_error(
        &konv(&["eval", "--run", "nowhere"], dir),
        "not a konv run folder",
    );

    // The trained network's first-layer filters (fashion-cnn: 64 of 7×7) and a layer's maps.
    let out = konv(
        &[
            "filters", "--image", "b.jpg", "--run", "run", "--layer", "conv2", "--out", "views",
        ],
        dir,
    );
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("64 filters 7×7 over 1 channel"), "{log}");
    assert!(log.contains("conv2: 64 of 128 feature maps 14×14"), "{log}");
    assert!(dir.join("views/filters.png").is_file() && dir.join("views/b-conv2.png").is_file());
    assert_clear_error(
        &konv(
            &[
                "filters", "--image", "b.jpg", "--run", "run", "--layer", "fc1", "--out", "views",
            ],
            dir,
        ),
        "its layers are conv1, pool1",
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn missing_and_broken_data_are_clear_errors() {
    let scratch = temp_dir("data");
    let dir = scratch.path();
    let out = konv(
        &["train", "--data-dir", "no-such-dir", "--epochs", "1"],
        dir,
    );
    assert_clear_error(&out, "no-such-dir [--data-dir] (no such folder)");

    // A truncated images file.
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let header = |magic: u8, dims: &[u32]| {
        let mut v = vec![0, 0, 8, magic];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    };
    let mut images = header(3, &[4, 28, 28]);
    images.extend(vec![0u8; 4 * 784 - 10]);
    let mut labels = header(1, &[4]);
    labels.extend([0, 1, 2, 3]);
    for split in ["train", "t10k"] {
        std::fs::write(data.join(format!("{split}-images-idx3-ubyte")), &images).unwrap();
        std::fs::write(data.join(format!("{split}-labels-idx1-ubyte")), &labels).unwrap();
    }
    let out = konv(&["train", "--data-dir", "data", "--epochs", "1"], dir);
    assert_clear_error(
        &out,
        "train-images-idx3-ubyte: header announces 3136 data bytes but the file holds 3126",
    );

    // Images and labels that disagree in count.
    images.extend(vec![0u8; 10]);
    std::fs::write(data.join("train-images-idx3-ubyte"), &images).unwrap();
    let mut labels3 = header(1, &[3]);
    labels3.extend([0, 1, 2]);
    std::fs::write(data.join("train-labels-idx1-ubyte"), &labels3).unwrap();
    let out = konv(&["train", "--data-dir", "data", "--epochs", "1"], dir);
    assert_clear_error(&out, "holds 4 images but");

    // MNIST has no embedded subset: with nothing found, the error lists what was tried.
    let out = konv(&["train", "--dataset", "mnist", "--no-download"], dir);
    assert_clear_error(&out, "mnist: data not found. Tried:");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_flag_values_are_clear_errors() {
    let scratch = temp_dir("flags");
    let dir = scratch.path();
    assert_clear_error(
        &konv(&["train", "--backend", "tpu"], dir),
        "valid backends: cpu, flex, ndarray, wgpu",
    );
    assert_clear_error(&konv(&["train", "--lr=-1"], dir), "--lr");
    assert_clear_error(&konv(&["train", "--epochs", "0"], dir), "--epochs");
    assert_clear_error(
        &konv(&["train", "--dataset", "cifar"], dir),
        "valid datasets: fashion-mnist, mnist",
    );
    assert_clear_error(
        &konv(&["train", "--model", "resnet9000", "--embedded"], dir),
        "known models: fashion-cnn",
    );
    assert_clear_error(
        &konv(&["train", "--val-size", "999999", "--embedded"], dir),
        "--val-size",
    );
    assert_clear_error(&konv(&["train", "--replicas", "0"], dir), "--replicas");
    assert_clear_error(
        &konv(
            &[
                "train",
                "--replicas",
                "9",
                "--batch-size",
                "8",
                "--embedded",
            ],
            dir,
        ),
        "--replicas: 9 must be between 1 and the batch size 8",
    );
    assert_clear_error(
        &konv(&["train", "--progressive-resize", "20:4:8"], dir),
        "min=SIDE,start=EPOCH,end=EPOCH",
    );
    assert_clear_error(
        &konv(
            &[
                "train",
                "--embedded",
                "--epochs",
                "6",
                "--progressive-resize",
                "min=20,start=4,end=8",
            ],
            dir,
        ),
        "--progressive-resize: end=8: the full size must be reached by the last epoch (6 epochs)",
    );
    // The fashion CNN's dense layer is sized for 28×28 inputs: it cannot shrink them.
    assert_clear_error(
        &konv(
            &[
                "train",
                "--embedded",
                "--epochs",
                "3",
                "--progressive-resize",
                "min=14,start=1,end=3",
                "--out",
                "shrunk",
            ],
            dir,
        ),
        "--progressive-resize: min=14: model `fashion-cnn` cannot take the dataset's 14×14 images",
    );
    assert!(
        !dir.join("shrunk").exists(),
        "nothing written before the error"
    );
    // Flags of one task given to another are refused with the reason.
    for (flag, why) in [
        (
            ["--classes", "0,1"],
            "--classes picks classes of a classification dataset",
        ),
        (
            ["--label-smoothing", "0.1"],
            "--label-smoothing smooths a classifier's",
        ),
        (["--init-from", "x.bpk"], "--init-from starts a classifier"),
    ] {
        assert_clear_error(
            &konv(
                &["train", "--task", "segment", "--embedded", flag[0], flag[1]],
                dir,
            ),
            why,
        );
    }
    assert_clear_error(
        &konv(
            &[
                "train",
                "--task",
                "segment",
                "--embedded",
                "--zero-init-residual",
            ],
            dir,
        ),
        "--zero-init-residual starts a classifier's residual units",
    );
    // Zeroed residual units need residual units, and a fresh network.
    assert_clear_error(
        &konv(
            &[
                "train",
                "--embedded",
                "--zero-init-residual",
                "--out",
                "zeroed",
            ],
            dir,
        ),
        "--zero-init-residual: fashion-cnn: zero-initialized residual units are for the ResNets",
    );
    assert_clear_error(
        &konv(
            &[
                "train",
                "--model",
                "resnet20",
                "--embedded",
                "--zero-init-residual",
                "--init-from",
                "run",
                "--out",
                "zeroed",
            ],
            dir,
        ),
        "--zero-init-residual: initializes a fresh network",
    );
    assert!(
        !dir.join("zeroed").exists(),
        "nothing written before the error"
    );
    // Detection's targets live on the full-size grid: progressive resizing says why not.
    assert_clear_error(
        &konv(
            &[
                "train",
                "--task",
                "detect",
                "--model",
                "resnet20",
                "--embedded",
                "--epochs",
                "3",
                "--progressive-resize",
                "min=64,start=1,end=2",
                "--out",
                "det",
            ],
            dir,
        ),
        "--progressive-resize: detection's targets are cells",
    );
    assert!(
        !dir.join("det").exists(),
        "nothing written before the error"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn wgpu_without_an_adapter_is_one_clear_line() {
    let scratch = temp_dir("nogpu");
    let dir = scratch.path();
    // Ask for a discrete GPU: this machine (and CI) has none, only lavapipe at most.
    let out = konv_with_env(
        &[
            "train",
            "--backend",
            "wgpu",
            "--embedded",
            "--epochs",
            "1",
            "--out",
            "r",
        ],
        dir,
        &[("CUBECL_WGPU_DEFAULT_DEVICE", "DiscreteGpu(0)")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("panicked"), "{stderr}");
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: backend `wgpu` has no usable device here"),
        "{stderr}"
    );
    assert!(last.contains("--backend cpu"), "{last}");
    assert!(!dir.join("r").exists(), "no run folder is left behind");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn models_lists_every_model_with_parameters_and_multiply_adds() {
    let out = konv(&["models"], Path::new("."));
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    for needle in [
        "resnet50",
        "25,557,032",
        "4.09 G",
        "alexnet",
        "61,100,840",
        "googlenet",
        "6,624,904",
        "xception",
        "fcn8s-vgg16",
        "lenet5",
        "resnet20",
        "269,722",
    ] {
        assert!(all.contains(needle), "`{needle}` missing from:\n{all}");
    }
}

#[test]
fn a_model_too_big_for_the_images_is_a_clear_error() {
    let scratch = temp_dir("lenet28");
    let dir = scratch.path();
    let out = konv(
        &[
            "train",
            "--model",
            "lenet5",
            "--embedded",
            "--epochs",
            "1",
            "--limit",
            "32",
            "--out",
            "run",
        ],
        dir,
    );
    assert_clear_error(
        &out,
        "model `lenet5` cannot take the dataset's 28×28 images",
    );
    assert!(!dir.join("run").exists(), "nothing is written");
}

#[test]
fn a_run_without_validation_keeps_its_last_epoch() {
    let scratch = temp_dir("noval");
    let dir = scratch.path();
    let classify = [
        "train",
        "--model",
        "fashion-cnn",
        "--embedded",
        "--epochs",
        "2",
        "--limit",
        "32",
        "--val-size",
        "0",
        "--batch-size",
        "16",
        "--out",
        "run",
    ];
    let train = |extra: &[&str]| konv_plus(&classify, extra, dir);
    // A monitor that watches validation is refused before anything is written.
    let out = train(&["--monitor", "val-loss"]);
    assert_clear_error(
        &out,
        "--monitor: val-loss watches validation, and the run holds no validation examples out",
    );
    assert!(!dir.join("run").exists(), "nothing is written");
    let out = train(&["--early-stop", "3"]);
    assert_clear_error(&out, "--early-stop: 3 watches validation");
    assert!(!dir.join("run").exists(), "nothing is written");
    // Without one the run keeps (and tests) its last epoch and shows no validation figures.
    let out = train(&[]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("32 train / 0 validation"), "{all}");
    assert!(all.contains("epoch  2/2  train loss"), "{all}");
    assert!(!all.contains("val loss"), "{all}");
    assert!(all.contains("(last epoch 2,"), "{all}");
    let csv = std::fs::read_to_string(dir.join("run/metrics.csv")).unwrap();
    assert!(csv.lines().nth(2).unwrap().contains(",NaN,NaN,"), "{csv}");
    let out = konv(&["eval", "--run", "run"], dir);
    assert!(out.status.success(), "{}", text(&out));
    // The dense tasks too: a localizer keeps its last epoch, and refuses `--monitor score`.
    let localize_flags = [
        "train",
        "--task",
        "localize",
        "--model",
        "resnet20",
        "--embedded",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--limit",
        "64",
        "--val-size",
        "0",
        "--stem-stride",
        "2",
        "--canvas",
        "40",
        "--scale",
        "1.0,1.4",
    ];
    let localize = |extra: &[&str]| konv_plus(&localize_flags, extra, dir);
    assert_clear_error(
        &localize(&["--monitor", "score", "--out", "loc-score"]),
        "--monitor: score watches validation",
    );
    assert!(!dir.join("loc-score").exists(), "nothing is written");
    let out = localize(&["--out", "loc"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("; last epoch 1,") && !all.contains("val loss"),
        "{all}"
    );
}

#[test]
fn a_zoo_resnet_trains_on_grayscale_and_evaluates() {
    let scratch = temp_dir("resnet20");
    let dir = scratch.path();
    let out = konv(
        &[
            "train",
            "--model",
            "resnet20",
            "--embedded",
            "--epochs",
            "1",
            "--limit",
            "32",
            "--val-size",
            "16",
            "--batch-size",
            "16",
            "--augment",
            "flip=alternate",
            "--monitor",
            "last",
            "--out",
            "run",
            "--quiet",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", text(&out));
    // --monitor last keeps the final epoch and says so.
    assert!(text(&out).contains("(last epoch 1,"), "{}", text(&out));
    let out = konv(&["eval", "--run", "run"], dir);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("test accuracy"), "{}", text(&out));
}

#[test]
fn keras_decay_schedule_from_the_command_line() {
    let scratch = temp_dir("decay");
    let dir = scratch.path();
    let out = konv(
        &[
            "train",
            "--embedded",
            "--epochs",
            "2",
            "--limit",
            "32",
            "--val-size",
            "16",
            "--batch-size",
            "16",
            "--lr",
            "0.2",
            "--lr-schedule",
            "keras-decay:0.5",
            "--augment",
            "flip,crop=2,erase=0.5,erase-random=0.5",
            "--augment-off-epoch",
            "2",
            "--out",
            "run",
            "--quiet",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", text(&out));
    // Two updates per epoch: epoch 1 ends with update 2 (0.2 / 1.5), epoch 2 with update 4
    // (0.2 / 2.5).
    let metrics = std::fs::read_to_string(dir.join("run/metrics.csv")).unwrap();
    let config = std::fs::read_to_string(dir.join("run/config.json")).unwrap();
    assert!(config.contains("KerasDecay"), "{config}");
    assert!(config.contains("Erase"), "{config}");
    assert!(config.contains("EraseRandom"), "{config}");
    assert!(config.contains("\"augment_off_epoch\": 2"), "{config}");
    let lrs: Vec<f64> = metrics
        .lines()
        .skip(1)
        .map(|line| {
            let header: Vec<&str> = metrics.lines().next().unwrap().split(',').collect();
            let col = header.iter().position(|h| *h == "lr").unwrap();
            line.split(',').nth(col).unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(lrs.len(), 2, "{metrics}");
    assert!((lrs[0] - 0.2 / 1.5).abs() < 1e-9, "{metrics}");
    assert!((lrs[1] - 0.2 / 2.5).abs() < 1e-9, "{metrics}");
    let out = konv(&["train", "--embedded", "--lr-schedule", "linear"], dir);
    assert_clear_error(&out, "valid schedules");
    let out = konv(&["train", "--embedded", "--augment", "flip,spin=10"], dir);
    assert_clear_error(&out, "valid steps");
}

#[test]
fn summary_reproduces_the_lectures_slide() {
    let out = konv(
        &[
            "summary",
            "--model",
            "conv2d:200x5x5",
            "--input",
            "3x150x100",
            "--batch",
            "100",
        ],
        Path::new("."),
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("200×150×100"), "{all}");
    assert!(all.contains("15,200"), "{all}");
    assert!(all.contains("225,000,000"), "{all}");
    assert!(all.contains("96,000,000 bits = 12.0 MB"), "{all}");
    assert!(all.contains("1.2 GB"), "{all}");
}

#[test]
fn summary_of_a_zoo_model_and_its_errors() {
    let out = konv(
        &["summary", "--model", "resnet20", "--input", "1x28x28"],
        Path::new("."),
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("layer3.2.conv2"), "{all}");
    assert!(all.contains("64×7×7"), "{all}");
    let out = konv(
        &["summary", "--model", "lenet5", "--input", "1x8x8"],
        Path::new("."),
    );
    assert_clear_error(&out, "too small");
    let out = konv(&["summary", "--model", "resnet9000"], Path::new("."));
    assert_clear_error(&out, "unknown model `resnet9000`");
    let out = konv(
        &["summary", "--model", "resnet20", "--input", "3x32"],
        Path::new("."),
    );
    assert_clear_error(&out, "expected CxHxW");
    let out = konv(&["summary", "--model", "conv2d:5x5"], Path::new("."));
    assert_clear_error(&out, "conv2d:FILTERSxKxK");
}

#[test]
fn import_and_predict_with_torchvision_weights() {
    let scratch = temp_dir("import");
    let dir = scratch.path();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tests/fixtures/parity");
    let weights = fixtures.join("resnet18.pth");
    // The fixture is a reduced-width ResNet-18: the full-width model does not fit it.
    let out = konv(
        &[
            "import",
            "--model",
            "resnet18",
            "--weights",
            weights.to_str().unwrap(),
            "--out",
            dir.join("r18.bpk").to_str().unwrap(),
        ],
        dir,
    );
    assert_clear_error(&out, "does not fit model `resnet18`");
    assert!(!dir.join("r18.bpk").exists());
    let out = konv(
        &[
            "import",
            "--model",
            "resnet18",
            "--weights",
            dir.join("missing.pth").to_str().unwrap(),
            "--out",
            dir.join("r18.bpk").to_str().unwrap(),
        ],
        dir,
    );
    assert_clear_error(&out, "does not exist");
}

#[test]
fn augment_writes_a_grid_png() {
    let scratch = temp_dir("augment");
    let dir = scratch.path();
    let out = konv(
        &[
            "augment",
            "--embedded",
            "--augment",
            "flip,crop=4,erase=0.5",
            "--out",
            "grid.png",
            "--count",
            "3",
            "--variants",
            "4",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", text(&out));
    let grid = image::open(dir.join("grid.png")).unwrap();
    assert_eq!((grid.width(), grid.height()), (58 * 5 + 2, 58 * 3 + 2));
    let out = konv(
        &[
            "augment",
            "--embedded",
            "--augment",
            "spin",
            "--out",
            "x.png",
        ],
        dir,
    );
    assert_clear_error(&out, "valid steps");
}

#[test]
fn transfer_and_resume_from_the_command_line() {
    let scratch = temp_dir("transfer");
    let dir = scratch.path();
    let tiny = [
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--limit",
        "32",
        "--val-size",
        "16",
        "--embedded",
        "--quiet",
    ];
    let run = |extra: &[&str]| {
        let mut args = vec!["train"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&tiny);
        konv(&args, dir)
    };
    // Pretrain on classes 0–4, with LeNet-5 resized to its 32×32.
    let out = run(&[
        "--classes",
        "0,1,2,3,4",
        "--augment",
        "resize=32x32,flip",
        "--model",
        "lenet5-modern",
        "--optimizer",
        "adamw",
        "--lr",
        "0.001",
        "--out",
        "pre",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    for f in ["curves.png", "state.json", "epoch-0002.bpk", "best.bpk"] {
        assert!(dir.join("pre").join(f).is_file(), "{f}");
    }
    assert!(
        !dir.join("pre/epoch-0001.bpk").exists(),
        "kept only the newest"
    );
    let eval = konv(&["eval", "--run", "pre"], dir);
    assert!(text(&eval).contains("Coat") && !text(&eval).contains("Sandal"));
    // Transfer to classes 5 and 6: head first, then everything.
    let out = run(&[
        "--classes",
        "5,6",
        "--augment",
        "resize=32x32",
        "--model",
        "lenet5-modern",
        // A run folder stands for its best.bpk.
        "--init-from",
        "pre",
        "--freeze-epochs",
        "1",
        "--head-lr",
        "0.05",
        "--out",
        "transfer",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let csv = std::fs::read_to_string(dir.join("transfer/metrics.csv")).unwrap();
    let lrs: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(5).unwrap())
        .collect();
    assert_eq!(lrs, vec!["0.05", "0.01"], "{csv}");
    // A moving average of the weights: kept beside the trained weights, the best epoch's
    // in best.bpk, the newest epoch's files only; eval reads it like any run.
    let out = run(&["--ema", "0.9", "--keep-checkpoints", "1", "--out", "ema"]);
    assert!(out.status.success(), "{}", text(&out));
    for f in [
        "ema.bpk",
        "epoch-0002.ema.bpk",
        "checkpoint.bpk",
        "best.bpk",
    ] {
        assert!(dir.join("ema").join(f).is_file(), "{f}");
    }
    assert!(!dir.join("ema/epoch-0001.ema.bpk").exists());
    let state = std::fs::read_to_string(dir.join("ema/state.json")).unwrap();
    assert!(state.contains("\"ema_updates\": 4"), "{state}");
    assert!(konv(&["eval", "--run", "ema"], dir).status.success());
    assert_clear_error(&run(&["--ema", "1", "--out", "x4"]), "--ema");
    assert!(!dir.join("x4").exists());
    // Augmentation switched off after the run's end, or with none to switch off.
    let out = run(&[
        "--augment",
        "flip",
        "--augment-off-epoch",
        "3",
        "--out",
        "x5",
    ]);
    assert_clear_error(&out, "--augment-off-epoch: 3 is not an epoch of this run");
    let out = run(&["--augment-off-epoch", "2", "--out", "x5"]);
    assert_clear_error(&out, "--augment-off-epoch: has no augmentation to turn off");
    let out = run(&[
        "--augment",
        "resize=32x32",
        "--augment-off-epoch",
        "2",
        "--out",
        "x5",
    ]);
    assert_clear_error(&out, "--augment-off-epoch: has no augmentation to turn off");
    assert!(!dir.join("x5").exists());
    // A finished run does not resume; bad phases, classes and folders are clear errors.
    let out = konv(&["train", "--resume", "pre", "--embedded"], dir);
    assert_clear_error(&out, "already finished");
    let out = konv(&["train", "--resume", "nowhere", "--embedded"], dir);
    assert_clear_error(&out, "not a konv run folder");
    let out = run(&["--init-from", "pre/nothing.bpk", "--out", "x0"]);
    assert_clear_error(&out, "pre/nothing.bpk: no such weights file");
    assert!(!dir.join("x0").exists(), "nothing written before the error");
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    let out = run(&["--init-from", "empty", "--out", "x0b"]);
    assert_clear_error(&out, "empty: a folder without best.bpk");
    let out = run(&["--freeze-epochs", "2", "--out", "x1"]);
    assert_clear_error(&out, "leaves no epoch to fine-tune");
    let out = run(&["--classes", "3,12", "--out", "x2"]);
    assert_clear_error(&out, "class 12 does not exist");
    let out = run(&["--optimizer", "lamb", "--out", "x3"]);
    assert_clear_error(&out, "sgd, adam, adamw, rmsprop");
}

#[test]
fn filters_write_feature_maps_of_the_lectures_sizes() {
    let scratch = temp_dir("filters");
    let dir = scratch.path();
    // A 40×30 colour image with a bright vertical bar.
    let img = image::RgbImage::from_fn(40, 30, |x, _| {
        if (18..22).contains(&x) {
            image::Rgb([250, 240, 230])
        } else {
            image::Rgb([20, 40, 60])
        }
    });
    img.save(dir.join("bar.png")).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["filters", "--image", "bar.png", "--out", "maps"];
        args.extend_from_slice(extra);
        konv(&args, dir)
    };
    let out = run(&[]);
    assert!(out.status.success(), "{}", text(&out));
    for name in ["bar-vertical.png", "bar-horizontal.png", "sheet.png"] {
        assert!(
            dir.join("maps").join(name).is_file(),
            "{name}: {}",
            text(&out)
        );
    }
    let size = |name: &str| image::image_dimensions(dir.join("maps").join(name)).unwrap();
    assert_eq!(size("bar-vertical.png"), (40, 30));
    // The vertical filter answers the vertical bar: its middle column is the brightest.
    let map = image::open(dir.join("maps/bar-vertical.png"))
        .unwrap()
        .to_luma8();
    assert_eq!(map.get_pixel(20, 15)[0], 255);
    assert!(map.get_pixel(5, 15)[0] < 50);

    // valid, stride 2, size 5: ⌊(40 − 5) / 2⌋ + 1 = 18 by ⌊(30 − 5) / 2⌋ + 1 = 13.
    let out = run(&[
        "--filter",
        "vertical",
        "--size",
        "5",
        "--padding",
        "valid",
        "--stride",
        "2",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(size("bar-vertical.png"), (18, 13));
    // same, stride 3: ⌈40 / 3⌉ = 14 by ⌈30 / 3⌉ = 10; an inline named kernel.
    let out = run(&["--filter", "edge=1,0,-1;2,0,-2;1,0,-1", "--stride", "3"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(size("bar-edge.png"), (14, 10));

    assert_clear_error(&run(&["--filter", "diagonal"]), "--filter `diagonal`");
    assert_clear_error(&run(&["--filter", "1,2;3"]), "row 2 has 1 weights");
    assert_clear_error(
        &run(&["--filter", "vertical", "--size", "41", "--padding", "valid"]),
        "larger than the 30×40 image",
    );
    assert_clear_error(&run(&["--padding", "full"]), "use same or valid");
    let out = konv(&["filters", "--image", "missing.png", "--out", "maps"], dir);
    assert_clear_error(&out, "missing.png");
    let out = konv(
        &[
            "filters",
            "--image",
            "bar.png",
            "--run",
            "no-such-run",
            "--out",
            "maps",
        ],
        dir,
    );
    assert_clear_error(&out, "no-such-run");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn localize_and_segment_train_eval_and_predict() {
    let scratch = temp_dir("tasks");
    let dir = scratch.path();
    let common = [
        "--embedded",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--limit",
        "240",
        "--val-size",
        "40",
        "--stem-stride",
        "2",
        "--quiet",
    ];
    let train = |extra: &[&str]| {
        let mut args = vec!["train"];
        args.extend_from_slice(&common);
        args.extend_from_slice(extra);
        konv(&args, dir)
    };
    let out = train(&[
        "--task", "localize", "--model", "resnet20", "--canvas", "40", "--scale", "1.0,1.4",
        "--out", "loc",
    ]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("test accuracy") && log.contains("mean IoU"),
        "{log}"
    );
    let out = konv(&["eval", "--run", "loc", "--embedded"], dir);
    let log = text(&out);
    assert!(out.status.success() && log.contains("mean IoU"), "{log}");
    // Test-time augmentation averages class scores: refused on a box run, not ignored.
    assert_clear_error(
        &konv(&["eval", "--run", "loc", "--embedded", "--tta-flip"], dir),
        "is a localization run",
    );
    image::GrayImage::from_fn(80, 60, |x, y| {
        image::Luma([if (20..50).contains(&x) && (10..40).contains(&y) {
            220
        } else {
            0
        }])
    })
    .save(dir.join("item.png"))
    .unwrap();
    let out = konv(
        &[
            "predict", "--run", "loc", "--task", "localize", "item.png", "--out", "boxes",
        ],
        dir,
    );
    let log = text(&out);
    assert!(out.status.success() && log.contains("box x"), "{log}");
    assert_eq!(
        image::image_dimensions(dir.join("boxes/item-box.png")).unwrap(),
        (80, 60)
    );
    assert_clear_error(
        &konv(
            &["predict", "--run", "loc", "--task", "segment", "item.png"],
            dir,
        ),
        "is a localize run",
    );

    let out = train(&[
        "--task",
        "segment",
        "--model",
        "fcn8s",
        "--backbone",
        "resnet20",
        "--canvas",
        "48",
        "--scale",
        "1.0,1.2",
        "--out",
        "seg",
    ]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("test mean IoU"), "{log}");
    let out = konv(&["eval", "--run", "seg", "--embedded"], dir);
    let log = text(&out);
    assert!(out.status.success() && log.contains("background"), "{log}");
    let out = konv(
        &["predict", "--run", "seg", "item.png", "--out", "masks"],
        dir,
    );
    assert!(out.status.success(), "{}", text(&out));
    for name in ["item-mask.png", "item-overlay.png"] {
        assert_eq!(
            image::image_dimensions(dir.join("masks").join(name)).unwrap(),
            (80, 60)
        );
    }

    // Bad input: each one line, nothing trained.
    assert_clear_error(
        &train(&[
            "--task",
            "localize",
            "--model",
            "resnet20",
            "--loss-weights",
            "1",
            "--out",
            "x1",
        ]),
        "give two weights",
    );
    assert_clear_error(
        &train(&["--task", "segment", "--model", "resnet20", "--out", "x2"]),
        "fcn32s, fcn16s or fcn8s",
    );
    assert_clear_error(
        &train(&[
            "--task", "localize", "--model", "resnet20", "--canvas", "40", "--out", "x3",
        ]),
        "larger than the 40×40 canvas",
    );
    assert_clear_error(
        &konv(&["predict", "--run", "loc", "missing.png"], dir),
        "missing.png",
    );
    // A good image then a bad one: the error names the bad one, and --out is not made.
    for run in ["loc", "seg"] {
        assert_clear_error(
            &konv(
                &[
                    "predict",
                    "--run",
                    run,
                    "item.png",
                    "missing.png",
                    "--out",
                    "x4",
                ],
                dir,
            ),
            "missing.png",
        );
        assert!(!dir.join("x4").exists(), "{run}: --out was created");
    }
    assert!(!dir.join("x1").exists() && !dir.join("x2").exists() && !dir.join("x3").exists());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn detect_trains_evaluates_and_draws_boxes() {
    let scratch = temp_dir("detect");
    let dir = scratch.path();
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--task",
            "detect",
            "--embedded",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--limit",
            "200",
            "--val-size",
            "40",
            "--stem-stride",
            "2",
            "--scale",
            "1.0,1.2",
            "--items",
            "1,2",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        konv(&args, dir)
    };
    let out = train(&["--model", "resnet20", "--out", "det"]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("test mAP@0.5"), "{log}");
    let csv = std::fs::read_to_string(dir.join("det/metrics.csv")).unwrap();
    assert!(
        csv.starts_with("epoch,") && csv.contains("val_map50"),
        "{csv}"
    );
    let out = konv(&["eval", "--run", "det", "--embedded"], dir);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("test mAP@0.5") && log.contains("Ankle boot   AP@0.5"),
        "{log}"
    );
    image::GrayImage::from_fn(96, 72, |x, y| {
        image::Luma([if (20..50).contains(&x) && (10..40).contains(&y) {
            220
        } else {
            0
        }])
    })
    .save(dir.join("scene.png"))
    .unwrap();
    // Score 0: every cell's best box survives NMS, so a barely trained model draws some.
    let out = konv(
        &[
            "predict",
            "--run",
            "det",
            "scene.png",
            "--score",
            "0",
            "--out",
            "found",
        ],
        dir,
    );
    let log = text(&out);
    assert!(out.status.success() && log.contains("box x"), "{log}");
    assert_eq!(
        image::image_dimensions(dir.join("found/scene-boxes.png")).unwrap(),
        (384, 288),
        "drawn ×4 so that the labels are readable"
    );
    // --resume regenerates the run's scenes from its config.json; a finished run says so.
    assert_clear_error(
        &konv(&["train", "--resume", "det", "--embedded"], dir),
        "already finished its 1 epochs",
    );
    // Bad input: one line each, nothing trained.
    assert_clear_error(
        &konv(
            &["predict", "--run", "det", "--task", "localize", "scene.png"],
            dir,
        ),
        "is a detect run",
    );
    assert_clear_error(
        &konv(&["predict", "--run", "det", "missing.png"], dir),
        "missing.png",
    );
    assert_clear_error(
        &train(&["--model", "fcn8s-resnet20", "--canvas", "48", "--out", "x1"]),
        "slides a classifier",
    );
    assert_clear_error(
        &train(&["--model", "resnet20", "--max-overlap", "1.5", "--out", "x2"]),
        "--max-overlap",
    );
    assert_clear_error(
        &train(&["--model", "resnet20", "--canvas", "30", "--out", "x3"]),
        "larger than the 30×30 canvas",
    );
    assert!(!dir.join("x1").exists() && !dir.join("x2").exists() && !dir.join("x3").exists());
    std::fs::remove_dir_all(dir).ok();
}

/// A two-class RGB folder (red and blue pictures of two sizes, PNG and JPEG) under `dir`.
fn colour_folder(dir: &Path) {
    for (split, n) in [("train", 12u32), ("test", 4)] {
        for (class, rgb) in [("red", [220u8, 30, 30]), ("blue", [30, 30, 220])] {
            let d = dir.join("photos").join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..n {
                let (w, h) = if i % 2 == 0 { (16, 20) } else { (20, 16) };
                let img = image::RgbImage::from_fn(w, h, |x, y| {
                    let v = ((x * 7 + y * 3 + i * 5) % 40) as u8;
                    image::Rgb(rgb.map(|c| c.saturating_sub(v)))
                });
                let ext = if i % 3 == 0 { "jpg" } else { "png" };
                img.save(d.join(format!("{i}.{ext}"))).unwrap();
            }
        }
    }
}

#[test]
fn an_rgb_folder_trains_evaluates_and_predicts() {
    let scratch = temp_dir("folder");
    let dir = scratch.path();
    colour_folder(dir);
    let cache = dir.join("cache");
    let env = [("KONV_CACHE", cache.to_str().unwrap())];
    let train = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--dataset",
            "folder",
            "--data-dir",
            "photos",
            "--image-size",
            "12",
            "--model",
            "resnet20",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--val-size",
            "4",
            "--lr",
            "0.05",
            "--augment",
            "flip,resized-crop=0.5",
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        konv_with_env(&args, dir, &env)
    };
    let out = train("run", &[]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("2 classes, 24 train / 8 test images, 3×12×12"),
        "{log}"
    );
    assert!(log.contains("test accuracy"), "{log}");
    let config = std::fs::read_to_string(dir.join("run/config.json")).unwrap();
    assert!(
        config.contains("\"folder\"") && config.contains("\"rgb\""),
        "{config}"
    );
    // The second run reads the decoded cache.
    assert!(cache.join("folders").read_dir().unwrap().count() >= 1);

    let out = konv_with_env(&["eval", "--run", "run"], dir, &env);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("8 images") && log.contains("photos/test"),
        "{log}"
    );
    assert!(log.contains("blue") && log.contains("red"), "{log}");

    let out = konv_with_env(
        &[
            "predict",
            "--run",
            "run",
            "photos/test/red/1.png",
            "--top",
            "2",
        ],
        dir,
        &env,
    );
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("red") && log.contains("blue"), "{log}");

    // Resume of a finished folder run says so; of a killed one it would continue.
    let out = konv_with_env(&["train", "--resume", "run"], dir, &env);
    assert_clear_error(&out, "already finished");

    // A corrupt file: one error naming it and the fix; with --skip-bad, trained on.
    std::fs::write(
        dir.join("photos/train/red/bad.jpg"),
        b"\xff\xd8\xff\xe0 cut",
    )
    .unwrap();
    let out = train("bad", &[]);
    assert_clear_error(&out, "bad.jpg: cannot decode image");
    assert_clear_error(&out, "--skip-bad");
    assert!(!dir.join("bad").exists(), "nothing is written");
    let out = train("skipped", &["--skip-bad"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("1 file(s) could not be decoded"),
        "{}",
        text(&out)
    );
}

#[test]
fn bad_image_folders_are_clear_errors_and_write_nothing() {
    let scratch = temp_dir("folder-errors");
    let dir = scratch.path();
    let folder = |args: &[&str]| {
        let mut all = vec![
            "train",
            "--dataset",
            "folder",
            "--epochs",
            "1",
            "--out",
            "run",
        ];
        all.extend_from_slice(args);
        konv(&all, dir)
    };
    assert_clear_error(&folder(&[]), "--data-dir");
    assert_clear_error(
        &folder(&["--data-dir", "missing"]),
        "missing: no such folder",
    );
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    assert_clear_error(&folder(&["--data-dir", "empty"]), "no images found");
    let one = dir.join("one/cat");
    std::fs::create_dir_all(&one).unwrap();
    image::GrayImage::new(8, 8).save(one.join("a.png")).unwrap();
    assert_clear_error(
        &folder(&["--data-dir", "one"]),
        "only one class folder (cat)",
    );
    std::fs::create_dir_all(dir.join("one/dog")).unwrap();
    assert_clear_error(&folder(&["--data-dir", "one"]), "holds no .png/.jpg images");
    image::GrayImage::new(9, 8)
        .save(dir.join("one/dog/b.png"))
        .unwrap();
    assert_clear_error(&folder(&["--data-dir", "one"]), "--image-size");
    assert_clear_error(
        &folder(&["--data-dir", "one", "--task", "localize"]),
        "--dataset folder trains classifiers",
    );
    assert_clear_error(
        &konv(&["train", "--image-size", "32"], dir),
        "--dataset folder",
    );
    assert!(!dir.join("run").exists(), "nothing is written");
}

#[test]
fn export_writes_fashion_mnist_as_a_folder() {
    let scratch = temp_dir("export");
    let dir = scratch.path();
    let out = konv(
        &["export", "--embedded", "--limit", "30", "--out", "fm"],
        dir,
    );
    assert!(out.status.success(), "{}", text(&out));
    let tshirts = dir.join("fm/train/0-T-shirt-top");
    assert!(tshirts.is_dir(), "{}", text(&out));
    let count: usize = std::fs::read_dir(dir.join("fm/train"))
        .unwrap()
        .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
        .sum();
    assert_eq!(count, 30);
    assert_clear_error(
        &konv(&["export", "--embedded", "--out", "fm"], dir),
        "already exists",
    );
    // Nothing half-written beside it.
    let stray: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(stray.is_empty());
}

/// `--weights` takes a PyTorch state dict directly (imported on the fly): transfer learning
/// to three classes with a fresh head, from the CLI.
#[test]
fn train_starts_from_pytorch_weights() {
    use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, SafetensorsStore};
    let scratch = temp_dir("pth");
    let dir = scratch.path();
    let device = burn::prelude::Device::flex();
    let pretrained = konv_models::build_for("fashion-cnn", 10, 1, &device).unwrap();
    let mut store = SafetensorsStore::from_file(dir.join("w.safetensors"))
        .with_to_adapter(BurnToPyTorchAdapter)
        .skip_enum_variants(true);
    pretrained.save_into(&mut store).unwrap();
    let out = konv(
        &[
            "train",
            "--weights",
            "w.safetensors",
            "--classes",
            "0,1,2",
            "--embedded",
            "--epochs",
            "1",
            "--limit",
            "96",
            "--val-size",
            "32",
            "--batch-size",
            "32",
            "--out",
            "run",
            "--quiet",
        ],
        dir,
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let config = std::fs::read_to_string(dir.join("run/config.json")).unwrap();
    assert!(config.contains("w.safetensors"), "{config}");
    // Another architecture's file: one line naming the file, nothing written.
    assert_clear_error(
        &konv(
            &[
                "train",
                "--model",
                "resnet20",
                "--weights",
                "w.safetensors",
                "--embedded",
                "--out",
                "bad",
            ],
            dir,
        ),
        "w.safetensors does not fit model `resnet20`",
    );
    assert!(
        !dir.join("bad").exists(),
        "nothing written before the error"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// The reliability defects found by trying bad inputs, each as its own case: one clear
/// line, a non-zero exit, and nothing left on disk.
#[test]
fn odd_inputs_fail_before_anything_is_written() {
    let scratch = temp_dir("odd");
    let dir = scratch.path();
    // Negative numbers are values: the error names the flag and its range.
    for (flag, value) in [("--epochs", "-1"), ("--lr", "-1"), ("--batch-size", "-3")] {
        assert_clear_error(
            &konv(&["train", "--embedded", flag, value], dir),
            &format!("invalid value '{value}' for '{flag}"),
        );
    }
    // --limit 0 names --limit, and leaves no run folder.
    assert_clear_error(
        &konv(
            &["train", "--embedded", "--limit", "0", "--out", "lim0"],
            dir,
        ),
        "--limit: 0 leaves no training examples",
    );
    assert!(!dir.join("lim0").exists());
    // A missing image for `konv filters`: no output folder.
    assert_clear_error(
        &konv(&["filters", "--image", "nope.png", "--out", "maps"], dir),
        "nope.png",
    );
    assert!(!dir.join("maps").exists());
    // A JPEG cut in the middle of its data is refused as truncated, not decoded in silence.
    let jpg = dir.join("cut.jpg");
    image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 128]))
        .save(&jpg)
        .unwrap();
    let bytes = std::fs::read(&jpg).unwrap();
    std::fs::write(&jpg, &bytes[..bytes.len() / 2]).unwrap();
    assert_clear_error(
        &konv(&["filters", "--image", "cut.jpg", "--out", "cut"], dir),
        "truncated: the JPEG has no end-of-image marker",
    );
    assert!(!dir.join("cut").exists());
    // A shape walk that does not fit names the layer, with the shape it got.
    assert_clear_error(
        &konv(&["summary", "--model", "lenet5", "--input", "1x8x8"], dir),
        "layer `c3`: its 5×5 window does not fit its 2×2 input",
    );
    std::fs::remove_dir_all(dir).ok();
}

/// `konv devices` lists the CPU and every wgpu adapter; OpenGL ones are marked unused.
#[test]
fn devices_lists_the_cpu_and_the_adapters() {
    let scratch = temp_dir("devices");
    let dir = scratch.path();
    let out = konv(&["devices"], dir);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("cpu   ") && text.contains(" threads"),
        "{text}"
    );
    for line in text.lines().filter(|l| l.contains("(Gl,")) {
        assert!(line.ends_with("(OpenGL: not used for compute)"), "{line}");
    }
    std::fs::remove_dir_all(dir).ok();
}

/// A machine whose only wgpu adapter is OpenGL (here: the Vulkan driver hidden) gets the
/// one "no usable device" line and no run folder, instead of a hang in the first kernel.
#[test]
fn wgpu_with_only_an_opengl_adapter_is_refused() {
    let scratch = temp_dir("glonly");
    let dir = scratch.path();
    let out = konv_with_env(
        &["train", "--backend", "wgpu", "--embedded", "--out", "run"],
        dir,
        &[("VK_ICD_FILENAMES", "/nonexistent.json")],
    );
    assert_clear_error(&out, "has no usable device here");
    assert!(!dir.join("run").exists());
    std::fs::remove_dir_all(dir).ok();
}

/// `konv bench` on the CPU: text and JSON, and its settings checked. On wgpu (lavapipe here,
/// tiny shapes), `--check-cpu` compares the logits and two training losses with the CPU's.
#[test]
fn bench_measures_a_model_on_a_backend() {
    let scratch = temp_dir("bench");
    let dir = scratch.path();
    let args = [
        "bench",
        "--model",
        "fashion-cnn",
        "--size",
        "12",
        "--batch-size",
        "4",
        "--steps",
        "3",
        "--warmup",
        "1",
    ];
    let out = konv(&args, dir);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("images/s") && log.contains("median"), "{log}");
    let mut json_args = args.to_vec();
    json_args.extend(["--mode", "infer", "--json"]);
    let out = konv(&json_args, dir);
    assert!(out.status.success(), "{}", text(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["config"]["mode"], "infer");
    assert_eq!(value["backend"], "cpu");
    assert!(value["images_per_sec"].as_f64().unwrap() > 0.0, "{value}");
    assert!(value["peak_memory_bytes"].as_u64().unwrap() > 0, "{value}");
    assert_clear_error(
        &konv(&["bench", "--batch-size", "0"], dir),
        "--batch-size: 0: give at least 1",
    );
    assert_clear_error(
        &konv(&["bench", "--model", "lenet5", "--size", "8"], dir),
        "--size: 8",
    );
    assert_clear_error(&konv(&["bench", "--model", "nope"], dir), "nope");

    let wgpu = konv(
        &[
            "bench",
            "--model",
            "resnet20",
            "--backend",
            "wgpu",
            "--size",
            "8",
            "--batch-size",
            "2",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--check-cpu",
            "--json",
        ],
        dir,
    );
    if !wgpu.status.success() && std::env::var("KONV_REQUIRE_WGPU").as_deref() != Ok("1") {
        eprintln!("skipping wgpu: {}", text(&wgpu));
    } else {
        assert!(wgpu.status.success(), "{}", text(&wgpu));
        let value: serde_json::Value = serde_json::from_slice(&wgpu.stdout).unwrap();
        let agreement = &value["agreement"];
        assert!(
            agreement["logits_relative"].as_f64().unwrap() < 1e-3,
            "{value}"
        );
        assert!(
            agreement["losses_relative"].as_f64().unwrap() < 1e-3,
            "{value}"
        );
    }
    std::fs::remove_dir_all(dir).ok();
}
