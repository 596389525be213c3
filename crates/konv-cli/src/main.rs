//! `konv`: train, evaluate and run CNNs from the command line.
//!
//! Each subcommand parses its flags, calls one library function of `konv-train`,
//! and prints the result.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use konv_datasets::{DatasetName, Locator};
use konv_train::backend::BackendName;
use konv_train::observer::{ConsoleObserver, OutputMode};
use konv_train::run::{self, RunDir};
use konv_train::train::{RunInfo, SplitData, TrainConfig, train};
use konv_train::{eval, predict};

#[derive(Parser)]
#[command(
    name = "konv",
    version,
    about = "Convolutional neural networks in Rust, on Burn"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model and write a run folder (config, metrics, checkpoints, curves); or
    /// continue one with --resume.
    Train(Box<TrainArgs>),
    /// Test accuracy and confusion matrix of a trained run.
    Eval(EvalArgs),
    /// Top classes of image files (PNG or JPEG) for a trained run.
    Predict(PredictArgs),
    /// List the models of the zoo with their input, parameters and multiply-adds.
    Models,
    /// Per-layer output shapes, parameters, multiply-adds and memory of a model.
    Summary(SummaryArgs),
    /// Load PyTorch (torchvision) weights into a zoo model and save them as Burn weights.
    Import(ImportArgs),
    /// Write a PNG grid of augmented training images, to look at an --augment pipeline.
    Augment(AugmentArgs),
    /// Convolve images with hand-made filters and write the feature maps as PNGs; with
    /// --run or --model, draw a trained network's first-layer filters and feature maps.
    Filters(FiltersArgs),
}

#[derive(Args)]
struct FiltersArgs {
    /// An image file (PNG or JPEG, colour or gray); repeat for several.
    #[arg(long = "image", required = true)]
    images: Vec<PathBuf>,
    /// A hand-made filter; repeat for several: vertical, horizontal (lines of ones, --size
    /// wide), sobel-x, sobel-y, laplacian, blur, an inline kernel with rows split by `;`
    /// (`1,0,-1;2,0,-2;1,0,-1`, or named: `edges=1,0,-1;2,0,-2;1,0,-1`), or file:PATH.
    /// Default without --run/--model: vertical and horizontal.
    #[arg(long = "filter")]
    filters: Vec<String>,
    /// Size of the vertical, horizontal and blur filters.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..))]
    size: u32,
    /// same (output ⌈n / stride⌉) or valid (output ⌊(n − size) / stride⌋ + 1).
    #[arg(long, default_value = "same")]
    padding: konv_train::filters::Padding,
    /// Stride of the hand-made filters.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    stride: u32,
    /// Folder for the PNGs (created if needed).
    #[arg(long)]
    out: PathBuf,
    /// A `konv train` run: draw its first-layer filters, and the feature maps of --layer.
    #[arg(long, conflicts_with = "model")]
    run: Option<PathBuf>,
    /// A zoo model with imported weights (needs --weights), e.g. resnet18.
    #[arg(long, requires = "weights")]
    model: Option<String>,
    /// Weights for --model: a PyTorch state dict or a .bpk from `konv import`.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Classes of --model's head (default: the model's own).
    #[arg(long)]
    classes: Option<usize>,
    /// A layer whose feature maps to draw for each image (e.g. layer1.0, features.3,
    /// conv2); repeat for several. Without it the model's layer names are listed.
    #[arg(long = "layer")]
    layers: Vec<String>,
    /// At most this many channels per feature-map grid.
    #[arg(long, default_value_t = 64)]
    max_channels: usize,
    /// Invert images first for a Fashion-MNIST run (its items are light on black).
    #[arg(long)]
    invert: bool,
    /// cpu (Flex), flex, ndarray, wgpu.
    #[arg(long, default_value = "cpu")]
    backend: BackendName,
}

#[derive(Args)]
struct AugmentArgs {
    /// Dataset: fashion-mnist or mnist.
    #[arg(long, default_value = "fashion-mnist", value_parser = parse_dataset)]
    dataset: DatasetName,
    /// The pipeline, as for `konv train --augment`.
    #[arg(long, value_parser = parse_augment)]
    augment: konv_train::augment::Pipeline,
    /// Where to write the PNG.
    #[arg(long)]
    out: PathBuf,
    /// Images (rows).
    #[arg(long, default_value_t = 8)]
    count: usize,
    /// Augmented versions of each (columns after the original).
    #[arg(long, default_value_t = 7)]
    variants: usize,
    /// Seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Args)]
struct SummaryArgs {
    /// A zoo model (see `konv models`), or one convolution layer as `conv2d:FILTERSxKxK`
    /// (e.g. `conv2d:200x5x5`, with --stride and --padding).
    #[arg(long)]
    model: String,
    /// Input as CxHxW (default: the model's own input size).
    #[arg(long, value_parser = parse_chw)]
    input: Option<[usize; 3]>,
    /// Instances per batch, for the memory totals.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Classes of the head (default: the model's own).
    #[arg(long)]
    classes: Option<usize>,
    /// Stride of a `conv2d:` layer.
    #[arg(long, default_value_t = 1)]
    stride: usize,
    /// Padding of a `conv2d:` layer: same or valid.
    #[arg(long, default_value = "same", value_parser = ["same", "valid"])]
    padding: String,
}

#[derive(Args)]
struct ImportArgs {
    /// Zoo model the weights are for (torchvision's layout: resnet18…152, alexnet, vgg16,
    /// googlenet, …).
    #[arg(long)]
    model: String,
    /// PyTorch state dict: .pth/.pt (torch.save) or .safetensors.
    #[arg(long)]
    weights: PathBuf,
    /// Classes of the weights' head (default: the model's own, 1000 for ImageNet models).
    #[arg(long)]
    classes: Option<usize>,
    /// Where to write the Burn weights (.bpk), for `konv predict --weights`.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct DataArgs {
    /// Folder with the dataset's four IDX files (raw or .gz); the only place looked at when given.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Do not try to download missing data.
    #[arg(long)]
    no_download: bool,
    /// Fail instead of falling back to the embedded Fashion-MNIST subset.
    #[arg(long, conflicts_with = "embedded")]
    full: bool,
    /// Use the embedded Fashion-MNIST subset even when the full dataset is present (quick runs).
    #[arg(long)]
    embedded: bool,
}

impl DataArgs {
    /// Loads `name` from where these flags say.
    fn load(&self, name: DatasetName) -> Result<konv_datasets::Dataset> {
        if self.embedded {
            if name != DatasetName::FashionMnist {
                bail!("--embedded: only fashion-mnist has an embedded subset");
            }
            return Ok(konv_datasets::mnist::embedded_fashion_mnist());
        }
        Ok(self.locator().load(name)?)
    }

    fn locator(&self) -> Locator {
        Locator {
            data_dir: self.data_dir.clone(),
            download: !self.no_download,
            allow_embedded: !self.full,
        }
    }
}

#[derive(Args)]
struct TrainArgs {
    /// Model name (see `konv models`).
    #[arg(long, default_value = "fashion-cnn")]
    model: String,
    /// Dataset: fashion-mnist or mnist.
    #[arg(long, default_value = "fashion-mnist", value_parser = parse_dataset)]
    dataset: DatasetName,
    /// Passes over the training set.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    epochs: u32,
    /// Images per step.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Learning rate.
    #[arg(long, default_value_t = 0.01, value_parser = parse_positive)]
    lr: f64,
    /// Learning-rate schedule: constant; keras-decay:DECAY (the lecture's `SGD(decay=0.01)`:
    /// lr / (1 + decay · updates)); step:every=EPOCHS[,gamma=G]; multistep:at=E1+E2[,gamma=G];
    /// exponential:gamma=G (per epoch); cosine[:warmup=EPOCHS,min-lr=L];
    /// one-cycle[:pct=0.3,div=25,final-div=1e4];
    /// plateau[:patience=N,factor=F,min-lr=L] (on the validation loss).
    #[arg(long, default_value = "constant", value_parser = parse_schedule)]
    lr_schedule: konv_train::schedule::LrSchedule,
    /// Augmentation of the training images, steps in order: flip, crop=PIXELS,
    /// translate=PIXELS, rotate=DEGREES, zoom=FRACTION, shear=DEGREES, resize=HxW (also
    /// applied when evaluating), erase=PROBABILITY, brightness=DELTA, contrast=DELTA;
    /// batch level: mixup=ALPHA, cutmix=ALPHA (e.g. flip,crop=4,rotate=10,erase=0.25).
    #[arg(long, default_value = "", value_parser = parse_augment)]
    augment: konv_train::augment::Pipeline,
    /// L2 weight decay (PyTorch SGD's weight_decay, e.g. 5e-4); 0 for none.
    #[arg(long, default_value_t = 0.0, value_parser = parse_non_negative)]
    weight_decay: f64,
    /// Clip each parameter's gradient to this L2 norm.
    #[arg(long, value_parser = parse_positive)]
    clip_grad_norm: Option<f64>,
    /// Stop when the monitored metric (--monitor) has not improved for this many epochs (the best
    /// epoch's weights are kept either way).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    early_stop: Option<u32>,
    /// What picks the best epoch (best.bpk, the test evaluation) and what --early-stop
    /// watches: val-accuracy (highest), val-loss (lowest) or last (the final epoch; not with
    /// --early-stop).
    #[arg(long, default_value = "val-accuracy")]
    monitor: konv_train::train::Monitor,
    /// Optimizer: sgd, adam, adamw (decoupled weight decay) or rmsprop.
    #[arg(long, default_value = "sgd")]
    optimizer: konv_train::optim::OptimizerName,
    /// Keep weight decay off biases and batch-norm parameters (timm's default).
    #[arg(long)]
    no_decay_bias_norm: bool,
    /// Label smoothing of the cross-entropy loss (e.g. 0.1); 0 for none.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    label_smoothing: f64,
    /// Split each batch between this many model replicas, one CPU thread each, gradients
    /// summed (data parallelism over cores: --replicas 2 on a 2-core machine). Batch norm
    /// then normalizes each replica's share on its own; dropout masks are drawn in thread
    /// order, so runs with dropout are no longer bit-reproducible. Classifiers, CPU backend.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    replicas: u32,
    /// Train the first epochs on smaller images: `min=20,start=4,end=8` trains on 20×20
    /// through epoch 4, grows the side linearly, and trains at the full size from epoch 8
    /// (FFCV's progressive resizing). Validation and test stay at the full size; the model
    /// must take any size (the ResNets, GoogLeNet, Xception).
    #[arg(long)]
    progressive_resize: Option<konv_train::progressive::ProgressiveResize>,
    /// SGD momentum (0 for plain SGD); RMSProp's momentum with --optimizer rmsprop.
    #[arg(long, default_value_t = 0.9, value_parser = parse_momentum)]
    momentum: f64,
    /// Nesterov momentum.
    #[arg(long)]
    nesterov: bool,
    /// Seed for weights, dropout, validation split and shuffling.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// cpu (Flex), flex, ndarray, wgpu (or cuda when built with it).
    #[arg(long, default_value = "cpu")]
    backend: BackendName,
    /// Train on the first N training images only.
    #[arg(long)]
    limit: Option<usize>,
    /// Training images held out for validation (the lecture's 5,000 on the full set;
    /// 500 on the embedded subset when not given).
    #[arg(long)]
    val_size: Option<usize>,
    /// Start from these weights: a run's best.bpk or checkpoint.bpk, or `konv import`ed
    /// torchvision weights. Weights for another number of classes get a fresh head
    /// (transfer learning). With --task detect: the classifier (same --model) to slide.
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// Train on these classes only, relabelled 0, 1, … in this order (e.g. 5,6,7,8,9).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u8))]
    classes: Option<Vec<u8>>,
    /// Transfer learning, phase 1: train only the head for this many epochs (the backbone
    /// frozen, batch norm in inference mode) at --head-lr; then fine-tune everything at --lr.
    #[arg(long, default_value_t = 0)]
    freeze_epochs: usize,
    /// Learning rate of phase 1 (--freeze-epochs); --lr when not given.
    #[arg(long, value_parser = parse_positive)]
    head_lr: Option<f64>,
    /// Epoch checkpoints to keep besides best.bpk (the newest).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    keep_checkpoints: u32,
    /// Continue the run in this folder from its last finished epoch, with its own settings
    /// (config.json): the result is the same as a run never interrupted.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Run folder (default: runs/MODEL-DATASET-TIME).
    #[arg(long)]
    out: Option<PathBuf>,
    /// What to learn: classify; localize (one item per generated canvas: its class and
    /// bounding box, a two-head model of the zoo; metrics accuracy and mean IoU); segment
    /// (several items per canvas, a class per pixel: --model fcn32s|fcn16s|fcn8s with
    /// --backbone; metrics pixel accuracy and mean IoU); or detect (several items per
    /// canvas, a box and class for each: --model slides fully convolutionally over the
    /// canvas; metric mAP@0.5).
    #[arg(long, default_value = "classify", value_parser = ["classify", "localize", "segment", "detect"])]
    task: String,
    /// --task segment: the FCN's backbone, a ResNet of the zoo.
    #[arg(long, default_value = "resnet20")]
    backbone: String,
    /// --task segment/detect: fewest and most items per canvas.
    #[arg(long, default_value = "2,4", value_parser = parse_pair::<usize>)]
    items: (usize, usize),
    /// --task localize: weights of the class and box losses (Keras' loss_weights).
    #[arg(long, default_value = "0.8,0.2")]
    loss_weights: konv_train::loss::LossWeights,
    /// --task localize: box loss on the normalized box, mse or smooth-l1.
    #[arg(long, default_value = "mse", value_parser = ["mse", "smooth-l1"])]
    box_loss: String,
    /// --task localize: the box head reads the last feature map averaged to an N×N grid
    /// (1: the globally pooled features, as the lecture's model).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    box_grid: u32,
    /// --task localize/segment/detect: stride of the backbone's first convolution (ResNets),
    /// e.g. 2 to run 64×64 canvases at the cost of 32×32.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4))]
    stem_stride: u32,
    /// --task localize/segment/detect: canvas side in pixels (default 64 to localize, 96 to
    /// segment and detect).
    #[arg(long, value_parser = clap::value_parser!(u32).range(28..=512))]
    canvas: Option<u32>,
    /// --task localize/segment/detect: smallest and largest item scale, the 28×28 item ×
    /// scale (default 1.0,2.0 to localize, 1.0,1.5 to segment and detect).
    #[arg(long, value_parser = parse_pair::<f32>)]
    scale: Option<(f32, f32)>,
    /// --task detect: the largest IoU two items' placements may have (0: apart).
    #[arg(long, default_value_t = 0.2, value_parser = parse_fraction)]
    max_overlap: f64,
    /// --task localize: Gaussian pixel noise, as a fraction of white.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    noise: f64,
    /// --task localize: fragments of other items scattered on each canvas.
    #[arg(long, default_value_t = 0)]
    clutter: usize,
    /// Print only the final result.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Args)]
struct EvalArgs {
    /// Run folder of `konv train`.
    #[arg(long, required_unless_present = "checkpoint")]
    run: Option<PathBuf>,
    /// Weights file (a run's best.bpk or checkpoint.bpk); its folder must hold config.json.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// cpu (Flex), flex, ndarray, wgpu.
    #[arg(long, default_value = "cpu")]
    backend: BackendName,
    /// Images per batch.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Test-time augmentation: average the logits of each image and its mirror image.
    #[arg(long)]
    tta_flip: bool,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Args)]
struct PredictArgs {
    /// Run folder of `konv train`.
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    run: Option<PathBuf>,
    /// A zoo model with imported weights (needs --weights), e.g. resnet50.
    #[arg(long, requires = "weights")]
    model: Option<String>,
    /// Weights for --model: a PyTorch state dict (.pth/.pt/.safetensors) or a .bpk from
    /// `konv import`.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Classes of --model's head (default: the model's own; ImageNet's 1000 are named).
    #[arg(long)]
    classes: Option<usize>,
    /// Image files (PNG or JPEG); resized, cropped and normalized as the model expects.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Invert the image first (Fashion-MNIST items are light on black; photos are usually
    /// dark on light).
    #[arg(long)]
    invert: bool,
    /// cpu (Flex), flex, ndarray, wgpu.
    #[arg(long, default_value = "cpu")]
    backend: BackendName,
    /// The run's task, checked against the run (classify, localize, segment or detect;
    /// default: the run's).
    #[arg(long, value_parser = ["classify", "localize", "segment", "detect"])]
    task: Option<String>,
    /// --task detect: the lowest score (objectness × class probability) of a box to keep.
    #[arg(long, default_value_t = 0.5, value_parser = parse_fraction)]
    score: f64,
    /// Folder for the pictures of --task localize (each image with its box and label),
    /// segment (a colour mask and an overlay per image) and detect (the kept boxes).
    #[arg(long, default_value = "predictions")]
    out: PathBuf,
}

/// `A,B` as two numbers (a range such as `--scale 1.0,2.0`).
fn parse_pair<T: std::str::FromStr>(s: &str) -> Result<(T, T), String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    match parts[..] {
        [a, b] => match (a.parse(), b.parse()) {
            (Ok(a), Ok(b)) => Ok((a, b)),
            _ => Err(format!("`{s}`: give two numbers, smallest first, e.g. 1,2")),
        },
        _ => Err(format!(
            "`{s}`: give two numbers separated by a comma, e.g. 1,2"
        )),
    }
}

fn parse_dataset(s: &str) -> Result<DatasetName, String> {
    DatasetName::parse(s).ok_or_else(|| {
        let names: Vec<_> = DatasetName::ALL.iter().map(|d| d.as_str()).collect();
        format!("unknown dataset; valid datasets: {}", names.join(", "))
    })
}

fn parse_chw(s: &str) -> Result<[usize; 3], String> {
    let dims: Vec<usize> = s
        .split(['x', '×'])
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("expected CxHxW, e.g. 3x224x224, got `{s}`"))?;
    match dims[..] {
        [c, h, w] if c > 0 && h > 0 && w > 0 => Ok([c, h, w]),
        _ => Err(format!(
            "expected CxHxW with three positive numbers, e.g. 3x224x224, got `{s}`"
        )),
    }
}

fn parse_augment(s: &str) -> Result<konv_train::augment::Pipeline, String> {
    s.parse()
}

fn parse_schedule(s: &str) -> Result<konv_train::schedule::LrSchedule, String> {
    s.parse()
}

fn parse_non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err("expected a number ≥ 0, e.g. 0.0005".into()),
    }
}

fn parse_positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err("expected a positive number, e.g. 0.01".into()),
    }
}

fn parse_momentum(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
        _ => Err("expected a number in [0, 1), e.g. 0.9".into()),
    }
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
        _ => Err("expected a number in [0, 1), e.g. 0.1".into()),
    }
}

fn cmd_train(args: TrainArgs) -> Result<()> {
    let dataset = args.data.load(args.dataset)?;
    let device = args.backend.open()?;
    let mode = OutputMode::detect(args.quiet);
    let say = |msg: String| {
        if mode != OutputMode::Quiet {
            println!("{msg}");
        }
    };
    if dataset.is_subset() {
        say("note: training on the embedded Fashion-MNIST subset (6,000 train / 1,000 test images), \
             not the full dataset; for the full 70,000 images: apt-get install dataset-fashion-mnist, \
             or --data-dir DIR"
            .to_string());
    }
    let val_size = args
        .val_size
        .unwrap_or(if dataset.is_subset() { 500 } else { 5000 });
    if val_size >= dataset.train.len() {
        bail!(
            "--val-size {val_size} leaves no training images (the training set has {})",
            dataset.train.len()
        );
    }
    if let Some(dir) = &args.resume
        && let Some(task) = dense_task(dir)?
    {
        return resume_dense(dir, &task, &args, mode);
    }
    if args.task == "localize" {
        return train_localize(&args, &dataset, val_size, mode);
    }
    if args.task == "segment" {
        return train_segment(&args, &dataset, mode);
    }
    if args.task == "detect" {
        return train_detect(&args, &dataset, mode);
    }
    if let Some(dir) = &args.resume {
        return resume_run(dir, &args, &dataset, mode);
    }
    if let Some(classes) = &args.classes {
        check_classes(classes, dataset.class_names().len())?;
    }
    let config = TrainConfig {
        model: args.model.clone(),
        dataset: args.dataset.to_string(),
        epochs: args.epochs as usize,
        batch_size: args.batch_size as usize,
        lr: args.lr,
        momentum: args.momentum,
        nesterov: args.nesterov,
        seed: args.seed,
        backend: args.backend,
        limit: args.limit,
        val_size,
        init_from: args.init_from.clone(),
        lr_schedule: args.lr_schedule.clone(),
        augment: args.augment.clone(),
        weight_decay: args.weight_decay,
        clip_grad_norm: args.clip_grad_norm,
        early_stop: args.early_stop.map(|p| p as usize),
        optimizer: args.optimizer,
        no_decay_bias_norm: args.no_decay_bias_norm,
        label_smoothing: args.label_smoothing,
        classes: args.classes.clone(),
        freeze_epochs: args.freeze_epochs,
        head_lr: args.head_lr,
        keep_checkpoints: args.keep_checkpoints as usize,
        monitor: args.monitor,
        replicas: args.replicas as usize,
        progressive_resize: args.progressive_resize,
    };
    // An unknown model or impossible settings fail before anything is written.
    konv_models::registry::info(&config.model)?;
    config.validate()?;
    if let Some(path) = &config.init_from {
        konv_train::run::weights_path(path)?;
    }
    let data = SplitData::with_classes(
        &dataset,
        config.classes.as_deref(),
        val_size,
        args.limit,
        args.seed,
    );
    let out = args.out.unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PathBuf::from("runs").join(format!("{}-{}-{secs}", config.model, config.dataset))
    });
    if out.join(run::CONFIG).exists() {
        bail!(
            "{}: already holds a run; choose another --out",
            out.display()
        );
    }
    let class_names: Vec<String> = match &config.classes {
        Some(c) => c
            .iter()
            .map(|&i| dataset.class_names()[i as usize].to_string())
            .collect(),
        None => dataset
            .class_names()
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    // What the model is trained on: the dataset's grayscale images, resized if asked.
    let (rows, cols) = config
        .augment
        .output_size(dataset.train.images.rows, dataset.train.images.cols);
    konv_train::train::check_config_input(&config, class_names.len(), [1, rows, cols])?;
    let run_dir = RunDir::create(&out)?;
    let info = RunInfo {
        config: config.clone(),
        data_source: dataset.source.to_string(),
        subset: dataset.is_subset(),
        class_names,
        input: [1, rows, cols],
        normalize: data.normalize,
        train_size: data.train.len(),
        val_size: data.val.len(),
    };
    run_dir.write_info(&info)?;
    say(format!(
        "training {} on {} ({}): {} train / {} validation / {} test images, backend {}, run folder {}",
        config.model,
        config.dataset,
        dataset.source,
        data.train.len(),
        data.val.len(),
        data.test.len(),
        config.backend,
        out.display()
    ));
    if let Some(p) = &config.progressive_resize {
        let sides: Vec<String> = p
            .plan(config.epochs, rows.min(cols))
            .iter()
            .map(usize::to_string)
            .collect();
        say(format!(
            "progressive resize, image side by epoch: {}",
            sides.join(" ")
        ));
    }
    let mut observer = ConsoleObserver::new(mode, config.batch_size);
    let started = std::time::Instant::now();
    let outcome = train(
        &config,
        info.class_names.len(),
        &data,
        &device,
        Some(&run_dir),
        &mut observer,
    )?;
    report_outcome(&outcome, config.monitor, started, &out);
    Ok(())
}

/// Fails when a classification-only flag is given to another task.
fn classification_only_flags(args: &TrainArgs) -> Result<()> {
    for (given, flag) in [
        (args.resume.is_some(), "--resume"),
        (
            args.init_from.is_some() && args.task != "detect",
            "--init-from",
        ),
        (args.classes.is_some(), "--classes"),
        (args.freeze_epochs > 0, "--freeze-epochs"),
        (args.replicas > 1, "--replicas"),
        (args.progressive_resize.is_some(), "--progressive-resize"),
        (args.early_stop.is_some(), "--early-stop"),
        (
            args.monitor != konv_train::train::Monitor::default(),
            "--monitor",
        ),
    ] {
        if given {
            bail!(
                "{flag} is not available with --task {} yet; drop it",
                args.task
            );
        }
    }
    Ok(())
}

/// The run folder: `out`, or `runs/NAME` with `name(unix seconds)`; an error when it already
/// holds a run.
fn new_run_folder(out: Option<&Path>, name: impl FnOnce(u64) -> String) -> Result<PathBuf> {
    let out = out.map_or_else(
        || {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            PathBuf::from("runs").join(name(secs))
        },
        Path::to_path_buf,
    );
    if out.join(run::CONFIG).exists() {
        bail!(
            "{}: already holds a run; choose another --out",
            out.display()
        );
    }
    Ok(out)
}

fn train_localize(
    args: &TrainArgs,
    dataset: &konv_datasets::Dataset,
    val_size: usize,
    mode: OutputMode,
) -> Result<()> {
    use konv_train::localize::{CanvasSpec, LocalizeConfig, LocalizeData, train_localizer};
    classification_only_flags(args)?;
    let device = args.backend.open()?;
    let config = LocalizeConfig {
        model: args.model.clone(),
        box_grid: args.box_grid as usize,
        stem_stride: args.stem_stride as usize,
        dataset: args.dataset.to_string(),
        canvas: CanvasSpec {
            size: args.canvas.map_or(64, |c| c as usize),
            scale_min: args.scale.map_or(1.0, |s| s.0),
            scale_max: args.scale.map_or(2.0, |s| s.1),
            noise: args.noise as f32,
            clutter: args.clutter,
        },
        epochs: args.epochs as usize,
        batch_size: args.batch_size as usize,
        lr: args.lr,
        lr_schedule: args.lr_schedule.clone(),
        optimizer: args.optimizer,
        momentum: args.momentum,
        nesterov: args.nesterov,
        weight_decay: args.weight_decay,
        loss_weights: args.loss_weights.clone(),
        box_loss: if args.box_loss == "smooth-l1" {
            konv_train::loss::BoxLoss::SmoothL1
        } else {
            konv_train::loss::BoxLoss::Mse
        },
        augment: args.augment.clone(),
        seed: args.seed,
        val_size,
        limit: args.limit,
    };
    konv_models::registry::info(&config.model)?;
    config.validate()?;
    let out = new_run_folder(args.out.as_deref(), |secs| {
        format!("loc-{}-{}-{secs}", config.model, config.dataset)
    })?;
    let data = LocalizeData::generate(dataset, &config)?;
    let names: Vec<String> = dataset
        .class_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let run_dir = RunDir::create(&out)?;
    if mode != OutputMode::Quiet {
        println!(
            "localizing with {} on {}×{} canvases of {} ({}): {} train / {} validation / {} test images, run folder {}",
            config.model,
            config.canvas.size,
            config.canvas.size,
            config.dataset,
            dataset.source,
            data.train.len(),
            data.val.len(),
            data.test.len(),
            out.display()
        );
    }
    let started = std::time::Instant::now();
    let mut observer = ConsoleObserver::new(mode, config.batch_size);
    let outcome = train_localizer(
        &config,
        &names,
        &data,
        &device,
        Some(&run_dir),
        &mut observer,
    )?;
    println!(
        "test accuracy {:.2}%, mean IoU {:.3} ({:.1}% of boxes with IoU ≥ 0.5; best validation epoch {}, {} test images), {:.0}s in all; weights in {}",
        100.0 * outcome.test.accuracy,
        outcome.test.mean_iou,
        100.0 * outcome.test.iou50,
        outcome.best_epoch,
        outcome.test.count,
        started.elapsed().as_secs_f64(),
        out.join(run::BEST).display()
    );
    Ok(())
}

fn train_segment(
    args: &TrainArgs,
    dataset: &konv_datasets::Dataset,
    mode: OutputMode,
) -> Result<()> {
    use konv_train::segment::{SceneSpec, SegmentConfig, SegmentData, train_segmenter};
    classification_only_flags(args)?;
    // `--model fcn8s --backbone resnet20`, or the zoo's name `fcn8s-resnet20`.
    let (variant, backbone) = match args.model.split_once('-') {
        Some((v, b)) if v.starts_with("fcn") => (v.to_string(), b.to_string()),
        _ => (args.model.clone(), args.backbone.clone()),
    };
    if !variant.starts_with("fcn") {
        bail!(
            "--model {}: --task segment trains fcn32s, fcn16s or fcn8s (a classifier cannot label pixels)",
            args.model
        );
    }
    let device = args.backend.open()?;
    let config = SegmentConfig {
        variant,
        backbone,
        stem_stride: args.stem_stride as usize,
        dataset: args.dataset.to_string(),
        scene: SceneSpec {
            size: args.canvas.map_or(96, |c| c as usize),
            items_min: args.items.0,
            items_max: args.items.1,
            scale_min: args.scale.map_or(1.0, |s| s.0),
            scale_max: args.scale.map_or(1.5, |s| s.1),
        },
        epochs: args.epochs as usize,
        batch_size: args.batch_size as usize,
        lr: args.lr,
        lr_schedule: args.lr_schedule.clone(),
        optimizer: args.optimizer,
        momentum: args.momentum,
        nesterov: args.nesterov,
        weight_decay: args.weight_decay,
        augment: args.augment.clone(),
        seed: args.seed,
        val_size: args
            .val_size
            .unwrap_or(if dataset.is_subset() { 500 } else { 2000 }),
        limit: args.limit,
    };
    config.validate()?;
    let out = new_run_folder(args.out.as_deref(), |secs| {
        format!(
            "{}-{}-{}-{secs}",
            config.variant, config.backbone, config.dataset
        )
    })?;
    let data = SegmentData::generate(dataset, &config)?;
    let mut names = vec!["background".to_string()];
    names.extend(dataset.class_names().iter().map(|s| s.to_string()));
    let run_dir = RunDir::create(&out)?;
    if mode != OutputMode::Quiet {
        println!(
            "segmenting with {} over {} on {}×{} scenes of {} ({}): {} train / {} validation / {} test scenes, run folder {}",
            config.variant,
            config.backbone,
            config.scene.size,
            config.scene.size,
            config.dataset,
            dataset.source,
            data.train.len(),
            data.val.len(),
            data.test.len(),
            out.display()
        );
    }
    let started = std::time::Instant::now();
    let mut observer = ConsoleObserver::new(mode, config.batch_size);
    let outcome = train_segmenter(
        &config,
        &names,
        &data,
        &device,
        Some(&run_dir),
        &mut observer,
    )?;
    print_segment_outcome(&outcome, "s in all", started, &out.join(run::BEST));
    Ok(())
}

fn train_detect(
    args: &TrainArgs,
    dataset: &konv_datasets::Dataset,
    mode: OutputMode,
) -> Result<()> {
    use konv_train::detect::{DetectConfig, DetectData, train_detector};
    use konv_train::segment::SceneSpec;
    classification_only_flags(args)?;
    if konv_models::info(&args.model)?.kind != konv_models::ModelKind::Classifier {
        bail!(
            "--model {}: --task detect slides a classifier of the zoo (resnet20, fashion-cnn, …) over the canvas",
            args.model
        );
    }
    let device = args.backend.open()?;
    let config = DetectConfig {
        model: args.model.clone(),
        stem_stride: args.stem_stride as usize,
        dataset: args.dataset.to_string(),
        scene: SceneSpec {
            size: args.canvas.map_or(96, |c| c as usize),
            items_min: args.items.0,
            items_max: args.items.1,
            scale_min: args.scale.map_or(1.0, |s| s.0),
            scale_max: args.scale.map_or(1.5, |s| s.1),
        },
        max_overlap: args.max_overlap as f32,
        epochs: args.epochs as usize,
        batch_size: args.batch_size as usize,
        lr: args.lr,
        lr_schedule: args.lr_schedule.clone(),
        optimizer: args.optimizer,
        momentum: args.momentum,
        nesterov: args.nesterov,
        weight_decay: args.weight_decay,
        augment: args.augment.clone(),
        seed: args.seed,
        val_size: args
            .val_size
            .unwrap_or(if dataset.is_subset() { 500 } else { 2000 }),
        limit: args.limit,
        init_from: args.init_from.clone(),
    };
    config.validate()?;
    let out = new_run_folder(args.out.as_deref(), |secs| {
        format!("detect-{}-{}-{secs}", config.model, config.dataset)
    })?;
    let data = DetectData::generate(dataset, &config)?;
    let names: Vec<String> = dataset
        .class_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let run_dir = RunDir::create(&out)?;
    if mode != OutputMode::Quiet {
        let objects = |set: &konv_datasets::segmentation::SegmentationSet| {
            set.objects.iter().map(Vec::len).sum::<usize>()
        };
        println!(
            "detecting with {} on {}×{} scenes of {} ({}): {} train / {} validation / {} test scenes ({} test objects), box prior {:.1}×{:.1}, run folder {}",
            config.model,
            config.scene.size,
            config.scene.size,
            config.dataset,
            dataset.source,
            data.train.len(),
            data.val.len(),
            data.test.len(),
            objects(&data.test),
            data.prior[0],
            data.prior[1],
            out.display()
        );
    }
    let started = std::time::Instant::now();
    let mut observer = ConsoleObserver::new(mode, config.batch_size);
    let outcome = train_detector(
        &config,
        &names,
        &data,
        &device,
        Some(&run_dir),
        &mut observer,
    )?;
    print_detect_outcome(&outcome, "s in all", started, &out.join(run::BEST));
    Ok(())
}

/// The task of the run in `dir` when it is one `--resume` continues through
/// `konv_train::fit` (segment, detect); `None` for classification runs.
fn dense_task(dir: &Path) -> Result<Option<String>> {
    let run_dir = RunDir::open(dir)?;
    if konv_train::segment::read_info(&run_dir)?.is_some() {
        return Ok(Some("segment".into()));
    }
    if konv_train::detect::read_info(&run_dir)?.is_some() {
        return Ok(Some("detect".into()));
    }
    if konv_train::localize::read_info(&run_dir)?.is_some() {
        bail!(
            "--resume {}: localization runs cannot be resumed yet; train it again",
            dir.display()
        );
    }
    Ok(None)
}

/// `konv train --resume RUN` for a segmentation or detection run: its own settings, the
/// scenes generated again from them.
fn resume_dense(dir: &Path, task: &str, args: &TrainArgs, mode: OutputMode) -> Result<()> {
    let run_dir = RunDir::open(dir)?;
    let device = args.backend.open()?;
    let load = |name: &str| -> Result<konv_datasets::Dataset> {
        let name = DatasetName::parse(name)
            .with_context(|| format!("{}: unknown dataset in config.json", dir.display()))?;
        args.data.load(name)
    };
    let started = std::time::Instant::now();
    if task == "segment" {
        let info = konv_train::segment::read_info(&run_dir)?.context("a segmentation run")?;
        let data =
            konv_train::segment::SegmentData::generate(&load(&info.config.dataset)?, &info.config)?;
        if mode != OutputMode::Quiet {
            println!(
                "resuming {} ({} over {})",
                dir.display(),
                info.config.variant,
                info.config.backbone
            );
        }
        let mut observer = ConsoleObserver::new(mode, info.config.batch_size);
        let outcome =
            konv_train::segment::resume_segmenter(&data, &device, &run_dir, &mut observer)?;
        print_segment_outcome(&outcome, "s", started, &dir.join(run::BEST));
    } else {
        let info = konv_train::detect::read_info(&run_dir)?.context("a detection run")?;
        let data =
            konv_train::detect::DetectData::generate(&load(&info.config.dataset)?, &info.config)?;
        if mode != OutputMode::Quiet {
            println!(
                "resuming {} (detection with {})",
                dir.display(),
                info.config.model
            );
        }
        let mut observer = ConsoleObserver::new(mode, info.config.batch_size);
        let outcome = konv_train::detect::resume_detector(&data, &device, &run_dir, &mut observer)?;
        print_detect_outcome(&outcome, "s", started, &dir.join(run::BEST));
    }
    Ok(())
}

/// The closing line of a segmentation run: test figures, time (`unit` after the seconds:
/// "s in all" for a whole run, "s" for a resumed part) and where the best weights are.
fn print_segment_outcome(
    outcome: &konv_train::segment::SegmentOutcome,
    unit: &str,
    started: std::time::Instant,
    best: &Path,
) {
    println!(
        "test mean IoU {:.3}, pixel accuracy {:.2}% (best validation epoch {}, {} test scenes), {:.0}{unit}; weights in {}",
        outcome.test.mean_iou,
        100.0 * outcome.test.pixel_accuracy,
        outcome.best_epoch,
        outcome.test.count,
        started.elapsed().as_secs_f64(),
        best.display()
    );
}

/// The closing line of a detection run, as [`print_segment_outcome`].
fn print_detect_outcome(
    outcome: &konv_train::detect::DetectOutcome,
    unit: &str,
    started: std::time::Instant,
    best: &Path,
) {
    println!(
        "test mAP@0.5 {:.3}, mAP@0.5:0.95 {:.3} (best validation epoch {}, {} test scenes, {} objects), {:.0}{unit}; weights in {}",
        outcome.test.map50,
        outcome.test.map50_95,
        outcome.best_epoch,
        outcome.test.count,
        outcome.test.objects,
        started.elapsed().as_secs_f64(),
        best.display()
    );
}

fn check_classes(classes: &[u8], available: usize) -> Result<()> {
    if let Some(bad) = classes.iter().find(|&&c| c as usize >= available) {
        bail!(
            "--classes: class {bad} does not exist (the dataset has classes 0 to {})",
            available - 1
        );
    }
    let mut sorted = classes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != classes.len() || classes.len() < 2 {
        bail!(
            "--classes needs at least two different classes, each once (e.g. --classes 5,6,7,8,9)"
        );
    }
    Ok(())
}

fn report_outcome(
    outcome: &konv_train::train::TrainOutcome,
    monitor: konv_train::train::Monitor,
    started: std::time::Instant,
    out: &Path,
) {
    if let Some(epoch) = outcome.stopped_early {
        println!(
            "stopped early after epoch {epoch}: the monitored validation metric did not improve for {} epochs",
            epoch - outcome.best_epoch
        );
    }
    let which = match monitor {
        konv_train::train::Monitor::Last => "last epoch",
        _ => "best validation epoch",
    };
    println!(
        "test accuracy {:.2}% ({which} {}, {} test images), {:.0}s in all; weights in {}",
        100.0 * outcome.test.accuracy(),
        outcome.best_epoch,
        outcome.test.total(),
        started.elapsed().as_secs_f64(),
        out.join(run::BEST).display()
    );
}

/// `konv train --resume DIR`: the run's own settings and data, from its last finished epoch.
fn resume_run(
    dir: &Path,
    args: &TrainArgs,
    dataset: &konv_datasets::Dataset,
    mode: OutputMode,
) -> Result<()> {
    let run_dir = RunDir::open(dir)?;
    let info = run_dir.read_info()?;
    let config = info.config.clone();
    let device = config.backend.open()?;
    if config.dataset != args.dataset.to_string() || dataset.is_subset() != info.subset {
        bail!(
            "--resume {}: the run trained on {} ({}); give the same --dataset and data flags",
            dir.display(),
            config.dataset,
            info.data_source
        );
    }
    let data = SplitData::with_classes(
        dataset,
        config.classes.as_deref(),
        config.val_size,
        config.limit,
        config.seed,
    );
    if (data.train.len(), data.val.len()) != (info.train_size, info.val_size) {
        bail!(
            "--resume {}: the data differs from the run's ({} train / {} validation images now, {} / {} then); point --data-dir at the same files",
            dir.display(),
            data.train.len(),
            data.val.len(),
            info.train_size,
            info.val_size
        );
    }
    let state = run_dir.read_state()?;
    if mode != OutputMode::Quiet {
        println!(
            "resuming {} in {} after epoch {} of {} (settings from its config.json)",
            config.model,
            dir.display(),
            state.epoch,
            config.epochs
        );
    }
    let mut observer = ConsoleObserver::new(mode, config.batch_size);
    let started = std::time::Instant::now();
    let outcome = konv_train::train::resume(
        &config,
        info.class_names.len(),
        &data,
        &device,
        &run_dir,
        &mut observer,
    )?;
    report_outcome(&outcome, config.monitor, started, dir);
    Ok(())
}

/// The run folder and weights file that `--run`/`--checkpoint` point to.
fn resolve_run(run: Option<&Path>, checkpoint: Option<&Path>) -> Result<(RunDir, Option<PathBuf>)> {
    match (run, checkpoint) {
        (Some(run), ckpt) => Ok((RunDir::open(run)?, ckpt.map(Path::to_path_buf))),
        (None, Some(ckpt)) => {
            let dir = ckpt
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let run = RunDir::open(dir).with_context(|| {
                format!(
                    "{}: the checkpoint's folder has no config.json; pass --run DIR as well",
                    ckpt.display()
                )
            })?;
            Ok((run, Some(ckpt.to_path_buf())))
        }
        (None, None) => bail!("pass --run DIR or --checkpoint FILE"),
    }
}

/// Regenerates a localization run's test canvases (same items, scale and seed) and reports
/// accuracy and mean IoU.
fn eval_localize(
    run_dir: &RunDir,
    info: &konv_train::localize::LocalizeInfo,
    args: &EvalArgs,
    device: &burn::prelude::Device,
) -> Result<()> {
    use konv_train::localize::{LocalizeData, evaluate_localizer, load_localizer};
    let name = DatasetName::parse(&info.config.dataset)
        .with_context(|| format!("{}: unknown dataset in config.json", run_dir.path.display()))?;
    let dataset = args.data.load(name)?;
    let model = load_localizer(run_dir, info, device)?;
    let test = LocalizeData::test_set(&dataset, &info.config)?;
    let report = evaluate_localizer(
        &model,
        &test,
        info.normalize,
        &info.config.loss_weights,
        info.config.box_loss,
        args.batch_size.max(1),
        info.class_names.len(),
    );
    println!(
        "{}: test accuracy {:.2}%, mean IoU {:.3}, IoU ≥ 0.5 for {:.1}% ({} canvases of {} test items, loss {:.4})",
        run_dir.path.display(),
        100.0 * report.accuracy,
        report.mean_iou,
        100.0 * report.iou50,
        report.count,
        info.config.dataset,
        report.loss
    );
    for (name, acc) in info.class_names.iter().zip(&report.per_class_accuracy) {
        println!("  {name:<12} {:6.2}%", 100.0 * acc);
    }
    Ok(())
}

/// Regenerates a segmentation run's test scenes and reports pixel accuracy and IoU.
fn eval_segment(
    run_dir: &RunDir,
    info: &konv_train::segment::SegmentInfo,
    args: &EvalArgs,
    device: &burn::prelude::Device,
) -> Result<()> {
    use konv_train::segment::{SegmentData, evaluate_segmenter, load_fcn};
    let name = DatasetName::parse(&info.config.dataset)
        .with_context(|| format!("{}: unknown dataset in config.json", run_dir.path.display()))?;
    let dataset = args.data.load(name)?;
    let model = load_fcn(run_dir, info, device)?;
    let test = SegmentData::test_set(&dataset, &info.config)?;
    let report = evaluate_segmenter(
        &model,
        &test,
        info.normalize,
        args.batch_size.clamp(1, 64),
        info.class_names.len(),
    );
    println!(
        "{}: test mean IoU {:.3}, pixel accuracy {:.2}% ({} scenes of {} test items, loss {:.4})",
        run_dir.path.display(),
        report.mean_iou,
        100.0 * report.pixel_accuracy,
        report.count,
        info.config.dataset,
        report.loss
    );
    for (name, iou) in info.class_names.iter().zip(&report.class_iou) {
        match iou {
            Some(v) => println!("  {name:<12} IoU {v:.3}"),
            None => println!("  {name:<12} (absent)"),
        }
    }
    Ok(())
}

/// Regenerates a detection run's test scenes and reports mAP.
fn eval_detect(
    run_dir: &RunDir,
    info: &konv_train::detect::DetectInfo,
    args: &EvalArgs,
    device: &burn::prelude::Device,
) -> Result<()> {
    use konv_train::detect::{DetectData, evaluate_detector, load_detector};
    let name = DatasetName::parse(&info.config.dataset)
        .with_context(|| format!("{}: unknown dataset in config.json", run_dir.path.display()))?;
    let dataset = args.data.load(name)?;
    let model = load_detector(run_dir, info, device)?;
    let test = DetectData::test_set(&dataset, &info.config)?;
    let report = evaluate_detector(
        &model,
        &test,
        info.normalize,
        info.prior,
        args.batch_size.clamp(1, 64),
    );
    println!(
        "{}: test mAP@0.5 {:.3}, mAP@0.5:0.95 {:.3} ({} scenes, {} objects of {} test items; class accuracy at object cells {:.2}%, loss {:.4})",
        run_dir.path.display(),
        report.map50,
        report.map50_95,
        report.count,
        report.objects,
        info.config.dataset,
        100.0 * report.class_accuracy,
        report.loss
    );
    for (name, ap) in info.class_names.iter().zip(&report.class_ap) {
        match ap {
            Some(v) => println!("  {name:<12} AP@0.5 {v:.3}"),
            None => println!("  {name:<12} (no objects)"),
        }
    }
    Ok(())
}

fn cmd_eval(args: EvalArgs) -> Result<()> {
    let (run_dir, weights) = resolve_run(args.run.as_deref(), args.checkpoint.as_deref())?;
    let device = args.backend.open()?;
    if let Some(info) = konv_train::localize::read_info(&run_dir)? {
        return eval_localize(&run_dir, &info, &args, &device);
    }
    if let Some(info) = konv_train::segment::read_info(&run_dir)? {
        return eval_segment(&run_dir, &info, &args, &device);
    }
    if let Some(info) = konv_train::detect::read_info(&run_dir)? {
        return eval_detect(&run_dir, &info, &args, &device);
    }
    let (info, model) = run::load_run_model(&run_dir, weights.as_deref(), &device)?;
    let name = DatasetName::parse(&info.config.dataset)
        .with_context(|| format!("{}: unknown dataset in config.json", run_dir.path.display()))?;
    let dataset = if info.subset {
        konv_datasets::mnist::embedded_fashion_mnist()
    } else {
        Locator {
            allow_embedded: false,
            ..args.data.locator()
        }
        .load(name)?
    };
    let test = std::sync::Arc::new(match &info.config.classes {
        Some(c) => dataset.test.with_classes(c),
        None => dataset.test,
    });
    let report = eval::evaluate_tta(
        &model,
        &test,
        info.normalize,
        args.batch_size.max(1),
        info.class_names.len(),
        Some(std::sync::Arc::new(info.config.augment.eval_steps())),
        args.tta_flip,
    );
    println!(
        "{}: test accuracy {:.2}% (top-5 {:.2}%; {} images, loss {:.4}), data from {}",
        run_dir.path.display(),
        100.0 * report.accuracy(),
        100.0 * report.top5_accuracy(),
        report.total(),
        report.loss,
        dataset.source
    );
    print!("{}", report.confusion_table(&info.class_names));
    Ok(())
}

fn predict_localize(
    run_dir: &RunDir,
    info: &konv_train::localize::LocalizeInfo,
    args: &PredictArgs,
    device: &burn::prelude::Device,
) -> Result<()> {
    use konv_train::localize::{draw_box, load_localizer, locate_file};
    let model = load_localizer(run_dir, info, device)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("--out {}: cannot create the folder", args.out.display()))?;
    for path in &args.images {
        let (found, img) = locate_file(&model, info, path, args.invert)?;
        let name = &info.class_names[found.class];
        let mut picture = img.to_rgb8();
        let label = format!("{name} {:.0}%", 100.0 * found.probability);
        draw_box(&mut picture, found.bbox, &label, image::Rgb([230, 40, 40]));
        let stem = path
            .file_stem()
            .map_or("image".into(), |s| s.to_string_lossy().into_owned());
        let file = args.out.join(format!("{stem}-box.png"));
        picture
            .save(&file)
            .with_context(|| format!("{}: cannot write", file.display()))?;
        let [x0, y0, x1, y1] = found.bbox;
        println!(
            "{}: {name} ({:.2}%), box x {x0:.0}..{x1:.0}, y {y0:.0}..{y1:.0} → {}",
            path.display(),
            100.0 * found.probability,
            file.display()
        );
    }
    Ok(())
}

fn predict_segment(
    run_dir: &RunDir,
    info: &konv_train::segment::SegmentInfo,
    args: &PredictArgs,
    device: &burn::prelude::Device,
) -> Result<()> {
    use konv_train::segment::{load_fcn, segment_file};
    let model = load_fcn(run_dir, info, device)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("--out {}: cannot create the folder", args.out.display()))?;
    for path in &args.images {
        let (labels, mask, overlay) = segment_file(&model, info, path, args.invert)?;
        let stem = path
            .file_stem()
            .map_or("image".into(), |s| s.to_string_lossy().into_owned());
        let (mask_file, overlay_file) = (
            args.out.join(format!("{stem}-mask.png")),
            args.out.join(format!("{stem}-overlay.png")),
        );
        mask.save(&mask_file)
            .with_context(|| format!("{}: cannot write", mask_file.display()))?;
        overlay
            .save(&overlay_file)
            .with_context(|| format!("{}: cannot write", overlay_file.display()))?;
        let mut counts = vec![0usize; info.class_names.len()];
        for &l in &labels {
            if let Some(c) = counts.get_mut(usize::from(l)) {
                *c += 1;
            }
        }
        let found: Vec<String> = counts
            .iter()
            .enumerate()
            .skip(1)
            .filter(|&(_, &c)| c > 0)
            .map(|(i, &c)| {
                format!(
                    "{} {c} px ({:.1}%)",
                    info.class_names[i],
                    100.0 * c as f64 / labels.len() as f64
                )
            })
            .collect();
        println!(
            "{}: {} → {}, {}",
            path.display(),
            if found.is_empty() {
                "background only".to_string()
            } else {
                found.join(", ")
            },
            mask_file.display(),
            overlay_file.display()
        );
    }
    Ok(())
}

fn predict_detect(
    run_dir: &RunDir,
    info: &konv_train::detect::DetectInfo,
    args: &PredictArgs,
    device: &burn::prelude::Device,
) -> Result<()> {
    use konv_train::detect::{detect_file, load_detector};
    let model = load_detector(run_dir, info, device)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("--out {}: cannot create the folder", args.out.display()))?;
    for path in &args.images {
        let (found, drawn) = detect_file(&model, info, path, args.invert, args.score as f32)?;
        let stem = path
            .file_stem()
            .map_or("image".into(), |s| s.to_string_lossy().into_owned());
        let file = args.out.join(format!("{stem}-boxes.png"));
        drawn
            .save(&file)
            .with_context(|| format!("{}: cannot write", file.display()))?;
        println!(
            "{}: {} object{} → {}",
            path.display(),
            found.len(),
            if found.len() == 1 { "" } else { "s" },
            file.display()
        );
        for d in &found {
            let [x0, y0, x1, y1] = d.bbox.map(|v| v.round() as i64);
            println!(
                "  {:<12} {:5.1}%  box x {x0}..{x1}, y {y0}..{y1}",
                info.class_names[d.class],
                100.0 * d.score
            );
        }
    }
    Ok(())
}

fn cmd_predict(args: PredictArgs) -> Result<()> {
    let device = args.backend.open()?;
    if let (Some(name), Some(weights)) = (&args.model, &args.weights) {
        return predict_pretrained(name, weights, args.classes, &args.images, args.top, &device);
    }
    let run = args
        .run
        .as_deref()
        .context("pass --run DIR, or --model NAME --weights FILE")?;
    let run_dir = RunDir::open(run)?;
    let localize = konv_train::localize::read_info(&run_dir)?;
    let segment = konv_train::segment::read_info(&run_dir)?;
    let detect = konv_train::detect::read_info(&run_dir)?;
    let task = match (&localize, &segment, &detect) {
        (Some(_), _, _) => "localize",
        (_, Some(_), _) => "segment",
        (_, _, Some(_)) => "detect",
        _ => "classify",
    };
    if let Some(asked) = args.task.as_deref().filter(|&t| t != task) {
        bail!(
            "--task {asked}: {} is a {task} run; train one with `konv train --task {asked}`, or leave --task out",
            run.display()
        );
    }
    if let Some(info) = localize {
        return predict_localize(&run_dir, &info, &args, &device);
    }
    if let Some(info) = segment {
        return predict_segment(&run_dir, &info, &args, &device);
    }
    if let Some(info) = detect {
        return predict_detect(&run_dir, &info, &args, &device);
    }
    let (info, model) = run::load_run_model(&run_dir, None, &device)?;
    let [_, h, w] = info.input;
    for path in &args.images {
        let mut pixels = predict::load_grayscale(path, h, w)?;
        if args.invert {
            pixels.iter_mut().for_each(|p| *p = 255 - *p);
        }
        let ranked = predict::classify(&model, &pixels, [h, w], info.normalize);
        println!("{}", path.display());
        for (class, p) in ranked.into_iter().take(args.top) {
            println!("  {:>6.2}%  {}", 100.0 * p, info.class_names[class]);
        }
    }
    Ok(())
}

/// Builds zoo model `name` and loads `weights`: a PyTorch state dict, or a `.bpk`.
fn load_zoo_weights(
    name: &str,
    weights: &Path,
    classes: Option<usize>,
    device: &burn::prelude::Device,
) -> Result<konv_models::Classifier> {
    let info = konv_models::info(name)?;
    let classes = classes.unwrap_or(info.classes);
    let is_burn = weights.extension().and_then(|e| e.to_str()) == Some("bpk");
    if is_burn {
        let model = konv_models::build(name, classes, device)?;
        return Ok(run::load_weights(model, weights)?);
    }
    let (model, _) = konv_models::import::load_classifier(name, classes, weights, device)?;
    Ok(model)
}

fn predict_pretrained(
    name: &str,
    weights: &Path,
    classes: Option<usize>,
    images: &[PathBuf],
    top: usize,
    device: &burn::prelude::Device,
) -> Result<()> {
    let info = konv_models::info(name)?;
    let model = load_zoo_weights(name, weights, classes, device)?;
    let names = konv_models::preprocess::imagenet_classes();
    let named = names.len() == classes.unwrap_or(info.classes);
    for path in images {
        let x = predict::load_preprocessed(path, &info.preprocess, device)?;
        let ranked = predict::classify_tensor(&model, x);
        println!("{}", path.display());
        for (class, p) in ranked.into_iter().take(top) {
            let label = if named {
                names[class].to_string()
            } else {
                format!("class {class}")
            };
            println!("  {:>6.2}%  {label}", 100.0 * p);
        }
    }
    Ok(())
}

fn cmd_filters(args: FiltersArgs) -> Result<()> {
    use konv_train::filters::{self, Filter};
    let device = args.backend.open()?;
    let with_model = args.run.is_some() || args.model.is_some();
    let specs = if args.filters.is_empty() && !with_model {
        vec!["vertical".to_string(), "horizontal".to_string()]
    } else {
        args.filters.clone()
    };
    let hand_made = specs
        .iter()
        .map(|spec| Filter::parse(spec, args.size as usize).map_err(|e| anyhow::anyhow!("--{e}")))
        .collect::<Result<Vec<_>>>()?;
    let mut written = Vec::new();
    if !hand_made.is_empty() {
        written.extend(filters::write_feature_maps(
            &args.images,
            &hand_made,
            args.stride as usize,
            args.padding,
            &args.out,
            &device,
        )?);
    }
    if with_model {
        let stem = |p: &Path| {
            p.file_stem()
                .map_or("image".into(), |s| s.to_string_lossy().into_owned())
        };
        let (model, inputs) = if let (Some(name), Some(weights)) = (&args.model, &args.weights) {
            let info = konv_models::info(name)?;
            let model = load_zoo_weights(name, weights, args.classes, &device)?;
            let inputs = args
                .images
                .iter()
                .map(|p| {
                    Ok((
                        stem(p),
                        predict::load_preprocessed(p, &info.preprocess, &device)?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            (model, inputs)
        } else {
            let run = args.run.as_deref().context("--run DIR or --model NAME")?;
            let (info, model) = run::load_run_model(&RunDir::open(run)?, None, &device)?;
            let [_, h, w] = info.input;
            let inputs = args
                .images
                .iter()
                .map(|p| {
                    let mut pixels = predict::load_grayscale(p, h, w)?;
                    if args.invert {
                        pixels.iter_mut().for_each(|v| *v = 255 - *v);
                    }
                    let values: Vec<f32> =
                        pixels.iter().map(|&v| info.normalize.apply(v)).collect();
                    let x = burn::prelude::Tensor::<4>::from_data(
                        burn::prelude::TensorData::new(values, [1, 1, h, w]),
                        &device,
                    );
                    Ok((stem(p), x))
                })
                .collect::<Result<Vec<_>>>()?;
            (model, inputs)
        };
        if let (true, Some((_, x))) = (args.layers.is_empty(), inputs.first()) {
            let names: Vec<String> = model
                .feature_maps(x.clone())
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            println!("layers (for --layer): {}", names.join(", "));
        }
        written.extend(filters::write_model_views(
            &model,
            &inputs,
            &args.layers,
            args.max_channels,
            &args.out,
        )?);
    }
    for w in &written {
        println!(
            "{}  {}×{}  {}",
            w.path.display(),
            w.size[0],
            w.size[1],
            w.what
        );
    }
    Ok(())
}

fn cmd_summary(args: SummaryArgs) -> Result<()> {
    use konv_models::summary::{SingleConv, Summary};
    let device = burn::prelude::Device::flex();
    let summary = if let Some(spec) = args.model.strip_prefix("conv2d:") {
        let dims: Vec<usize> = spec
            .split('x')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()
            .filter(|d: &Vec<usize>| d.len() == 3 && d.iter().all(|&v| v > 0))
            .with_context(|| {
                format!("--model conv2d:{spec}: expected conv2d:FILTERSxKxK, e.g. conv2d:200x5x5")
            })?;
        let input = args
            .input
            .context("--input CxHxW is needed for a conv2d: layer, e.g. --input 3x150x100")?;
        let padding = if args.padding == "same" {
            burn::nn::PaddingConfig2d::Same
        } else {
            burn::nn::PaddingConfig2d::Valid
        };
        if args.stride == 0 {
            bail!("--stride must be at least 1");
        }
        if padding == burn::nn::PaddingConfig2d::Valid && (input[1] < dims[1] || input[2] < dims[2])
        {
            bail!(
                "--input {}x{}x{} is smaller than the {}x{} kernel",
                input[0],
                input[1],
                input[2],
                dims[1],
                dims[2]
            );
        }
        let conv = burn::nn::conv::Conv2dConfig::new([input[0], dims[0]], [dims[1], dims[2]])
            .with_stride([args.stride, args.stride])
            .with_padding(padding)
            .init(&device);
        Summary::of(&SingleConv { conv }, &input)
    } else {
        let info = konv_models::info(&args.model)?;
        let input = args.input.unwrap_or(info.input);
        let classes = args.classes.unwrap_or(info.classes);
        let model = konv_models::build_model(&args.model, classes, input[0], &device)?;
        konv_models::summary::checked(&model, &input)
            .map_err(|e| anyhow::anyhow!("--input {}x{}x{}: {e}", input[0], input[1], input[2]))?
    };
    print!("{}", summary.table(args.batch as usize));
    Ok(())
}

fn cmd_augment(args: AugmentArgs) -> Result<()> {
    let dataset = args.data.load(args.dataset)?;
    konv_train::augment::save_grid(
        &args.out,
        &dataset.train,
        &args.augment,
        args.count.max(1),
        args.variants,
        args.seed,
    )?;
    println!(
        "{}: {} images of {} ({}), the original then {} augmented versions each ({})",
        args.out.display(),
        args.count.max(1).min(dataset.train.len()),
        args.dataset,
        dataset.source,
        args.variants,
        if args.augment.is_empty() {
            "no steps".to_string()
        } else {
            args.augment.to_string()
        }
    );
    Ok(())
}

fn cmd_import(args: ImportArgs) -> Result<()> {
    let info = konv_models::info(&args.model)?;
    let classes = args.classes.unwrap_or(info.classes);
    let device = burn::prelude::Device::flex();
    let (model, report) =
        konv_models::import::load_classifier(&args.model, classes, &args.weights, &device)?;
    let bytes = burn::module::Module::into_record(model)
        .into_bytes()
        .map_err(|e| anyhow::anyhow!("{}: cannot encode the weights: {e}", args.out.display()))?;
    run::write_atomic(&args.out, &bytes)
        .with_context(|| format!("{}: cannot write the weights", args.out.display()))?;
    println!(
        "{}: loaded {} tensors into {} ({} classes); {} unused{}; wrote {}",
        args.weights.display(),
        report.loaded,
        args.model,
        classes,
        report.unused.len(),
        if report.unused.is_empty() {
            String::new()
        } else {
            format!(" ({})", report.unused.join(", "))
        },
        args.out.display()
    );
    Ok(())
}

fn cmd_models() {
    use konv_models::summary::{giga, thousands};
    println!(
        "{:<16} {:<10} {:<11} {:>13} {:>10}  description",
        "name", "kind", "input", "parameters", "mult-adds"
    );
    for m in konv_models::models() {
        let [c, h, w] = m.input;
        println!(
            "{:<16} {:<10} {:<11} {:>13} {:>10}  {}",
            m.name,
            format!("{:?}", m.kind).to_lowercase(),
            format!("{c}x{h}x{w}"),
            thousands(m.params as u64),
            giga(m.macs),
            m.description
        );
    }
}

fn main() -> ExitCode {
    // Burn materializes a loaded optimizer state (`--resume`) on its default device, which
    // prefers a GPU: on a machine without one that would start wgpu (or fail). konv moves
    // every tensor to the device chosen with --backend anyway, so default to the CPU.
    if std::env::var_os("BURN_DEVICE").is_none() {
        // SAFETY: first thing in main, before any other thread exists.
        unsafe { std::env::set_var("BURN_DEVICE", "flex") };
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => cmd_train(*args),
        Command::Eval(args) => cmd_eval(args),
        Command::Predict(args) => cmd_predict(args),
        Command::Models => {
            cmd_models();
            Ok(())
        }
        Command::Summary(args) => cmd_summary(args),
        Command::Import(args) => cmd_import(args),
        Command::Augment(args) => cmd_augment(args),
        Command::Filters(args) => cmd_filters(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
