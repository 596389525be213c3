//! Throughput of a zoo model on one backend, measured as timm's `benchmark.py` does: full
//! training steps (forward, backward, optimizer) or inference forwards on a fixed random
//! batch, each step timed to completion, after untimed warm-up steps (on wgpu, Burn's
//! autotuning happens there). [`bench`] is what `konv bench` and `cargo xtask bench` call.
//!
//! The weights are drawn on the CPU from the seed and copied to the device, so every backend
//! measures the same network; [`agreement`] uses that to check a device against the CPU.

use std::time::Instant;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use konv_models::Classifier;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::data::ImageBatch;
use crate::train::{TrainConfig, parallel_train_step, train_step};

/// What a benchmark measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Full training steps: forward, backward and an SGD update.
    Train,
    /// The forward pass alone, in inference mode.
    Infer,
}

/// One benchmark: a zoo model, its input, and how many steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchConfig {
    /// Zoo model name (`konv models`).
    pub model: String,
    /// Training steps or inference.
    pub mode: Mode,
    /// Images per step.
    pub batch_size: usize,
    /// Input height and width.
    pub size: usize,
    /// Input channels (`None`: the model's own).
    pub channels: Option<usize>,
    /// Classes of the head (`None`: the model's own).
    pub classes: Option<usize>,
    /// Untimed steps first (allocation, autotuning).
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    /// Model replicas a training batch is split between (CPU data parallelism).
    pub replicas: usize,
    /// Seed of the weights and the batch.
    pub seed: u64,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            model: "fashion-cnn".into(),
            mode: Mode::Train,
            batch_size: 64,
            size: 28,
            channels: None,
            classes: None,
            warmup: 2,
            steps: 10,
            replicas: 1,
            seed: 0,
        }
    }
}

/// What a benchmark measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    /// The benchmark.
    pub config: BenchConfig,
    /// The device, as Burn names it.
    pub device: String,
    /// Images per second over the timed steps.
    pub images_per_sec: f64,
    /// Median milliseconds per step.
    pub ms_median: f64,
    /// Fastest step, milliseconds.
    pub ms_min: f64,
    /// Slowest step, milliseconds.
    pub ms_max: f64,
    /// Seconds of the warm-up steps (autotuning included), model building excluded.
    pub warmup_seconds: f64,
    /// Seconds to build the model and copy it to the device.
    pub build_seconds: f64,
    /// Peak memory in bytes where the backend reports it: the process's peak resident set on
    /// the CPU, the bytes the device's allocator reserved on wgpu.
    pub peak_memory_bytes: Option<u64>,
    /// What [`BenchResult::peak_memory_bytes`] counts.
    pub peak_memory_kind: Option<String>,
    /// The loss of the first training step (training only).
    pub first_loss: Option<f64>,
}

/// The input channels and head classes of `config`: its own, or the model's.
fn channels_and_classes(config: &BenchConfig) -> Result<(usize, usize), TrainError> {
    let info = konv_models::info(&config.model)?;
    Ok((
        config.channels.unwrap_or(info.input[0]),
        config.classes.unwrap_or(info.classes),
    ))
}

static DRAW: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The benchmark's network, drawn on the CPU from `seed` and copied to `device`, checked to
/// accept the input.
///
/// # Errors
/// An unknown model, or an input it cannot take.
pub fn network(config: &BenchConfig, device: &Device) -> Result<Classifier, TrainError> {
    let (channels, classes) = channels_and_classes(config)?;
    let cpu = Device::flex();
    // Burn's CPU generator is one per process: seeding and drawing under one lock keeps
    // concurrent benchmarks apart. (Other code drawing from it at the same time, such as a
    // training step's dropout, still changes the weights: run benchmarks one at a time.)
    let _rng = DRAW.lock().unwrap_or_else(|e| e.into_inner());
    cpu.seed(config.seed);
    let build = |device: &Device| -> Result<Classifier, TrainError> {
        if config.model == "fashion-cnn" {
            // Its dense layer is sized by the input.
            return Ok(Classifier::FashionCnn(
                konv_models::fashion_cnn::FashionCnnConfig::new()
                    .with_input_size([config.size, config.size])
                    .with_num_classes(classes)
                    .init(device),
            ));
        }
        Ok(konv_models::build_for(
            &config.model,
            classes,
            channels,
            device,
        )?)
    };
    let on_cpu = build(&cpu)?;
    konv_models::summary::checked(&on_cpu, &[channels, config.size, config.size])
        .map_err(|e| TrainError::setting("size", format!("{}: {e}", config.size)))?;
    let record = on_cpu.into_record();
    Ok(build(device)?.load_record(record))
}

/// The benchmark's batch: pixels and labels from `seed` (the same on every backend).
pub fn batch(config: &BenchConfig, channels: usize, classes: usize, device: &Device) -> ImageBatch {
    let n = config.batch_size * channels * config.size * config.size;
    let mut state = config
        .seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1);
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as u32
    };
    let pixels: Vec<f32> = (0..n)
        .map(|_| next() as f32 / (1u64 << 31) as f32 * 2.0 - 1.0)
        .collect();
    let labels: Vec<i64> = (0..config.batch_size)
        .map(|_| i64::from(next()) % classes as i64)
        .collect();
    ImageBatch {
        images: Tensor::from_data(
            TensorData::new(
                pixels,
                [config.batch_size, channels, config.size, config.size],
            ),
            device,
        ),
        targets: Tensor::from_data(TensorData::new(labels, [config.batch_size]), device),
        mix: None,
    }
}

fn check(config: &BenchConfig) -> Result<(), TrainError> {
    for (name, value) in [
        ("batch_size", config.batch_size),
        ("size", config.size),
        ("steps", config.steps),
        ("replicas", config.replicas),
    ] {
        if value == 0 {
            return Err(TrainError::setting(name, "0: give at least 1".into()));
        }
    }
    if config.replicas > config.batch_size {
        return Err(TrainError::setting(
            "replicas",
            format!(
                "{} must be between 1 and the batch size {}",
                config.replicas, config.batch_size
            ),
        ));
    }
    if config.replicas > 1 && config.mode == Mode::Infer {
        return Err(TrainError::setting(
            "replicas",
            "replicas split training batches; inference runs one model".into(),
        ));
    }
    Ok(())
}

/// Runs `config` on `device` and measures it.
///
/// # Errors
/// Bad settings, an unknown model, or an input the model cannot take.
pub fn bench(config: &BenchConfig, device: &Device) -> Result<BenchResult, TrainError> {
    check(config)?;
    let (channels, classes) = channels_and_classes(config)?;
    let t0 = Instant::now();
    let plain = device.clone().without_autodiff();
    let net = network(config, &plain)?;
    let data = batch(config, channels, classes, &plain);
    let mut memory = PeakMemory::new(&plain);
    let build_seconds = t0.elapsed().as_secs_f64();
    let mut times = Vec::with_capacity(config.steps);
    let mut first_loss = None;
    let warmup_seconds = match config.mode {
        Mode::Infer => {
            let net = net.valid();
            let step = || -> Result<(), TrainError> {
                // Reading the result back waits for the device to finish; a device that
                // fails (out of memory, a lost device) is an error, not a panic.
                net.forward(data.images.clone())
                    .try_into_data()
                    .map(|_| ())
                    .map_err(|e| device_failed(device, &e.to_string()))
            };
            let t = Instant::now();
            for _ in 0..config.warmup {
                step()?;
            }
            let warm = t.elapsed().as_secs_f64();
            for _ in 0..config.steps {
                let t = Instant::now();
                step()?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
                memory.sample();
            }
            warm
        }
        Mode::Train => {
            let (mut net, data) = for_training(net, &data, device);
            let pools = (config.replicas > 1)
                .then(|| crate::parallel::Replicas::new(config.replicas))
                .transpose()?;
            let lr = TrainConfig::default().settings.lr;
            let mut optim: ModuleOptimizer = TrainConfig::default().optimizer(&net);
            // The loss is read back each step, so a step's time is its whole work.
            let step = |net: Classifier, optim: &mut ModuleOptimizer| match &pools {
                Some(pools) => parallel_train_step(net, optim, data.clone(), lr, 0.0, pools),
                None => train_step(net, optim, data.clone(), lr, 0.0),
            };
            let t = Instant::now();
            for _ in 0..config.warmup {
                let (next, loss, _) = step(net, &mut optim)?;
                first_loss.get_or_insert(loss);
                net = next;
            }
            let warm = t.elapsed().as_secs_f64();
            for _ in 0..config.steps {
                let t = Instant::now();
                let (next, loss, _) = step(net, &mut optim)?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
                first_loss.get_or_insert(loss);
                net = next;
                memory.sample();
            }
            warm
        }
    };
    let total_ms: f64 = times.iter().sum();
    times.sort_by(f64::total_cmp);
    let (peak_memory_bytes, peak_memory_kind) = memory.peak();
    Ok(BenchResult {
        config: config.clone(),
        device: format!("{device:?}"),
        images_per_sec: (config.steps * config.batch_size) as f64 * 1e3 / total_ms,
        ms_median: times[times.len() / 2],
        ms_min: times[0],
        ms_max: times[times.len() - 1],
        warmup_seconds,
        build_seconds,
        peak_memory_bytes,
        peak_memory_kind,
        first_loss,
    })
}

/// The device's own failure while running the model, in one line.
fn device_failed(device: &Device, error: &str) -> TrainError {
    let first = error.lines().next().unwrap_or(error);
    TrainError::Config(format!(
        "{device:?} failed while running the model ({first}); a smaller --batch-size or --size may fit"
    ))
}

/// The network and batch on `device`'s autodiff flavour, for training steps.
fn for_training(net: Classifier, data: &ImageBatch, device: &Device) -> (Classifier, ImageBatch) {
    let train_device = crate::engine::training_device(device);
    let net = crate::engine::onto_training_device(net, &train_device);
    let data = ImageBatch {
        images: data.images.clone().to_device(&train_device),
        targets: data.targets.clone().to_device(&train_device),
        mix: None,
    };
    (net, data)
}

/// Peak memory as the backend reports it.
struct PeakMemory {
    device: Device,
    reserved: Option<u64>,
}

impl PeakMemory {
    fn new(device: &Device) -> Self {
        PeakMemory {
            device: device.clone(),
            reserved: None,
        }
    }

    fn sample(&mut self) {
        if let Some(usage) = self.device.memory_pool_usage() {
            self.reserved = Some(self.reserved.unwrap_or(0).max(usage.bytes_reserved));
        }
    }

    fn peak(&self) -> (Option<u64>, Option<String>) {
        if let Some(bytes) = self.reserved {
            return (Some(bytes), Some("device memory reserved".into()));
        }
        match peak_rss() {
            Some(bytes) => (Some(bytes), Some("process peak RSS".into())),
            None => (None, None),
        }
    }
}

/// The process's peak resident set (`VmHWM` on Linux), in bytes.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// How a device's answers compare with the CPU's for the same network and batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Agreement {
    /// The device compared.
    pub device: String,
    /// The largest difference of a logit, over the largest |logit| on the CPU (inference).
    pub logits_relative: f64,
    /// The largest |logit| on the CPU.
    pub logits_max: f64,
    /// The losses of the first training steps on the CPU.
    pub cpu_losses: Vec<f64>,
    /// The same steps' losses on the device.
    pub device_losses: Vec<f64>,
    /// The largest difference of those losses, relative to the CPU's loss.
    pub losses_relative: f64,
}

/// Runs `config`'s network and batch on the CPU and on `device`: the inference logits, then
/// `steps` training steps' losses (the second step's loss checks the gradients and the
/// update). Models with dropout draw it from each backend's own generator, so compare those
/// by their logits only.
///
/// # Errors
/// As [`bench`].
pub fn agreement(
    config: &BenchConfig,
    device: &Device,
    steps: usize,
) -> Result<Agreement, TrainError> {
    check(config)?;
    let (channels, classes) = channels_and_classes(config)?;
    let run = |device: &Device| -> Result<(Vec<f32>, Vec<f64>), TrainError> {
        let plain = device.clone().without_autodiff();
        let net = network(config, &plain)?;
        let data = batch(config, channels, classes, &plain);
        let logits =
            crate::engine::read_values::<f32, 2, _>(net.valid().forward(data.images.clone()))?;
        let (mut net, data) = for_training(net, &data, device);
        let mut optim: ModuleOptimizer = TrainConfig::default().optimizer(&net);
        let lr = TrainConfig::default().settings.lr;
        let mut losses = Vec::new();
        for _ in 0..steps {
            let (next, loss, _) = train_step(net, &mut optim, data.clone(), lr, 0.0)?;
            losses.push(loss);
            net = next;
        }
        Ok((logits, losses))
    };
    let (cpu_logits, cpu_losses) = run(&Device::flex())?;
    let (dev_logits, device_losses) = run(device)?;
    let logits_max = cpu_logits
        .iter()
        .fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    let diff = cpu_logits
        .iter()
        .zip(&dev_logits)
        .fold(0f64, |m, (&a, &b)| m.max(f64::from(a - b).abs()));
    let losses_relative = cpu_losses
        .iter()
        .zip(&device_losses)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs() / a.abs().max(1e-12)));
    Ok(Agreement {
        device: format!("{device:?}"),
        logits_relative: if cpu_logits.len() == dev_logits.len() {
            diff / logits_max.max(1e-12)
        } else {
            f64::INFINITY
        },
        logits_max,
        cpu_losses,
        device_losses,
        losses_relative,
    })
}

/// One convolution of [`RESNET18_CONVS`]: name, input and output channels, kernel, stride,
/// input side (padding `kernel / 2`, as ResNet's).
pub type ConvLayer = (&'static str, usize, usize, usize, usize, usize);

/// ResNet-18's distinct convolutions at 224×224 (the later units of a stage repeat them).
pub const RESNET18_CONVS: [ConvLayer; 11] = [
    ("conv1", 3, 64, 7, 2, 224),
    ("layer1 3x3", 64, 64, 3, 1, 56),
    ("layer2.0.conv1 3x3/2", 64, 128, 3, 2, 56),
    ("layer2.0.downsample 1x1/2", 64, 128, 1, 2, 56),
    ("layer2 3x3", 128, 128, 3, 1, 28),
    ("layer3.0.conv1 3x3/2", 128, 256, 3, 2, 28),
    ("layer3.0.downsample 1x1/2", 128, 256, 1, 2, 28),
    ("layer3 3x3", 256, 256, 3, 1, 14),
    ("layer4.0.conv1 3x3/2", 256, 512, 3, 2, 14),
    ("layer4.0.downsample 1x1/2", 256, 512, 1, 2, 14),
    ("layer4 3x3", 512, 512, 3, 1, 7),
];

/// One convolution layer timed alone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConvLayerResult {
    /// The layer's name in [`RESNET18_CONVS`].
    pub layer: String,
    /// Forward GFLOP/s (median step).
    pub forward_gflops: f64,
    /// Forward, input gradient and weight gradient together: three times the forward's
    /// FLOPs over the median step.
    pub backward_gflops: f64,
}

/// Times one convolution layer alone through `konv_models::conv::conv2d` on `device` (the
/// way PyTorch's side of `cargo xtask bench --compare-torch` times `F.conv2d`): the forward
/// without autodiff, then forward + input and weight gradients.
pub fn conv_layer(
    &(name, c_in, c_out, k, stride, side): &ConvLayer,
    batch: usize,
    warmup: usize,
    steps: usize,
    device: &Device,
) -> ConvLayerResult {
    use burn::backend::ops::ConvOptions;
    use burn::tensor::Distribution;
    let options = ConvOptions::new([stride, stride], [k / 2, k / 2], [1, 1], 1);
    let out_side = (side + 2 * (k / 2) - k) / stride + 1;
    let flops = 2.0 * (batch * c_out * out_side * out_side * c_in * k * k) as f64;
    let x = Tensor::<4>::random(
        [batch, c_in, side, side],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let w = Tensor::<4>::random([c_out, c_in, k, k], Distribution::Normal(0.0, 0.01), device);
    let dy = Tensor::<4>::random(
        [batch, c_out, out_side, out_side],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let median = |step: &dyn Fn()| {
        for _ in 0..warmup {
            step();
        }
        let mut times: Vec<f64> = (0..steps.max(1))
            .map(|_| {
                let t = Instant::now();
                step();
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    };
    let forward = median(&|| {
        let y = konv_models::conv::conv2d(x.clone(), w.clone(), None, options.clone());
        let _ = y.slice([0..1, 0..1, 0..1, 0..1]).into_scalar::<f32>();
    });
    let autodiff = device.clone().autodiff();
    let (xa, wa, dya) = (
        Tensor::<4>::from_data(x.to_data(), &autodiff).require_grad(),
        Tensor::<4>::from_data(w.to_data(), &autodiff).require_grad(),
        Tensor::<4>::from_data(dy.to_data(), &autodiff),
    );
    let backward = median(&|| {
        let y = konv_models::conv::conv2d(xa.clone(), wa.clone(), None, options.clone());
        let grads = (y * dya.clone()).sum().backward();
        let dx = xa
            .grad(&grads)
            .map(|g| g.slice([0..1, 0..1, 0..1, 0..1]).into_scalar::<f32>());
        let dw = wa
            .grad(&grads)
            .map(|g| g.slice([0..1, 0..1, 0..1, 0..1]).into_scalar::<f32>());
        let _ = (dx, dw);
    });
    ConvLayerResult {
        layer: name.to_string(),
        forward_gflops: flops / forward / 1e9,
        backward_gflops: 3.0 * flops / backward / 1e9,
    }
}
