//! The training loop: SGD with momentum/Nesterov on cross-entropy, validation each epoch,
//! metrics and checkpoints written to a run folder.

use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use konv_datasets::{Dataset, ImageSet};
use konv_models::Classifier;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::augment::Pipeline;
use crate::backend::BackendName;
use crate::data::{ImageBatch, Normalize, loader};
use crate::eval::{EvalReport, evaluate_with};
use crate::model::Classify;
use crate::observer::Observer;
use crate::optim::{OptimizerName, OptimizerSettings};
use crate::progressive::{ProgressiveResize, resize_batch};
use crate::run::{BEST, RunDir};
use crate::schedule::{LrSchedule, ScheduleDriver};

/// What to train and how: everything `konv train` takes, saved as the run's `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    /// Registry name of the model.
    pub model: String,
    /// Dataset name.
    pub dataset: String,
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Learning rate.
    pub lr: f64,
    /// SGD momentum (0 for plain SGD).
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Seed for weights, dropout, the validation split and the shuffling.
    pub seed: u64,
    /// Backend.
    pub backend: BackendName,
    /// Use only the first N training images (after the validation split).
    pub limit: Option<usize>,
    /// Images held out of the training set for validation.
    pub val_size: usize,
    /// Start from these weights (a run's `best.bpk` or `checkpoint.bpk`, or a run folder for
    /// its `best.bpk`) instead of a fresh initialization: to fine-tune at a lower learning
    /// rate, for example.
    #[serde(default)]
    pub init_from: Option<std::path::PathBuf>,
    /// Learning-rate schedule (constant when absent from an older `config.json`).
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Augmentation of the training images (none when empty).
    #[serde(default)]
    pub augment: Pipeline,
    /// L2 weight decay added to every gradient (PyTorch SGD's `weight_decay`); 0 for none.
    #[serde(default)]
    pub weight_decay: f64,
    /// Clip each parameter's gradient to this L2 norm.
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
    /// Stop when the [`Monitor`]ed metric has not improved for this many epochs (Keras'
    /// `EarlyStopping(patience=…, restore_best_weights=True)`: the best epoch's weights are
    /// the result either way).
    #[serde(default)]
    pub early_stop: Option<usize>,
    /// The optimizer (SGD unless given).
    #[serde(default)]
    pub optimizer: OptimizerName,
    /// Keep weight decay off biases and normalization parameters.
    #[serde(default)]
    pub no_decay_bias_norm: bool,
    /// Label smoothing of the cross-entropy (0 for none; 0.1 is common).
    #[serde(default)]
    pub label_smoothing: f64,
    /// Train on these classes of the dataset only, relabelled 0, 1, … in this order (the
    /// test set likewise).
    #[serde(default)]
    pub classes: Option<Vec<u8>>,
    /// Transfer learning's first phase: for this many epochs train only the head, the
    /// backbone frozen and run in inference mode (batch norm on its running statistics, as
    /// Keras does for a frozen base), at `head_lr`; then unfreeze everything and fine-tune
    /// with a fresh optimizer at `lr` and `lr_schedule` over the remaining epochs.
    #[serde(default)]
    pub freeze_epochs: usize,
    /// Learning rate of the first phase (`lr` when absent).
    #[serde(default)]
    pub head_lr: Option<f64>,
    /// Epoch checkpoints kept besides the best (the newest ones); at least 1.
    #[serde(default = "one")]
    pub keep_checkpoints: usize,
    /// What picks the best epoch (`best.bpk`, the test evaluation) and what early stopping
    /// watches.
    #[serde(default)]
    pub monitor: Monitor,
    /// Model replicas each batch is split between, one CPU thread each, gradients summed
    /// ([`crate::parallel`]); 1 trains one model with Burn's own threading.
    #[serde(default = "one")]
    pub replicas: usize,
    /// Train the first epochs on smaller images ([`crate::progressive`]); validation and
    /// test stay at the full size.
    #[serde(default)]
    pub progressive_resize: Option<ProgressiveResize>,
    /// The image folder trained on, when `dataset` is `folder`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<FolderSpec>,
}

/// An image folder a run trains on ([`konv_datasets::folder`]), with how it was read, so
/// that `--resume`, evaluation and prediction read it the same way.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FolderSpec {
    /// The folder (`root/<class>/…` or `root/train/<class>/…`).
    pub dir: std::path::PathBuf,
    /// Shorter side resized to this, centre square kept; `None`: the images' own size.
    pub image_size: Option<usize>,
    /// Channels read: 1 (gray) or 3 (RGB).
    pub channels: usize,
    /// Undecodable files were skipped.
    pub skip_bad: bool,
}

impl FolderSpec {
    /// The options that read the folder this way, caching decoded images in `cache`.
    pub fn options(&self, cache: Option<std::path::PathBuf>) -> konv_datasets::FolderOptions {
        konv_datasets::FolderOptions {
            channels: Some(self.channels),
            image_size: self.image_size,
            skip_bad: self.skip_bad,
            cache,
            workers: 0,
        }
    }
}

/// The validation metric that decides the best epoch (Keras' `monitor`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Monitor {
    /// Highest validation accuracy.
    #[default]
    ValAccuracy,
    /// Lowest validation loss.
    ValLoss,
    /// The last epoch, whatever validation says: the weights a run ends with, as Keras
    /// `fit` and torchvision's reference `train.py` keep them. With a small validation set,
    /// picking the best epoch is noise; with a schedule that anneals to zero (one-cycle,
    /// cosine), the last epoch is the one to test.
    Last,
}

impl Monitor {
    /// Higher is better: the accuracy, or minus the loss.
    pub fn score(self, m: &EpochMetrics) -> f64 {
        match self {
            Monitor::ValAccuracy => m.val_accuracy,
            Monitor::ValLoss => -m.val_loss,
            Monitor::Last => m.epoch as f64,
        }
    }
}

impl std::str::FromStr for Monitor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "val-accuracy" => Ok(Monitor::ValAccuracy),
            "val-loss" => Ok(Monitor::ValLoss),
            "last" => Ok(Monitor::Last),
            _ => Err(format!(
                "unknown monitor `{s}`; valid: val-accuracy, val-loss, last"
            )),
        }
    }
}

fn one() -> usize {
    1
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: "fashion-cnn".into(),
            dataset: "fashion-mnist".into(),
            epochs: 10,
            batch_size: 64,
            lr: 0.01,
            momentum: 0.9,
            nesterov: true,
            seed: 42,
            backend: BackendName::Cpu,
            limit: None,
            val_size: 5000,
            init_from: None,
            lr_schedule: LrSchedule::Constant,
            augment: Pipeline::default(),
            weight_decay: 0.0,
            clip_grad_norm: None,
            early_stop: None,
            optimizer: OptimizerName::Sgd,
            no_decay_bias_norm: false,
            label_smoothing: 0.0,
            classes: None,
            freeze_epochs: 0,
            head_lr: None,
            keep_checkpoints: 1,
            monitor: Monitor::ValAccuracy,
            replicas: 1,
            progressive_resize: None,
            folder: None,
        }
    }
}

impl TrainConfig {
    /// Settings that cannot work together, as an error naming the flags.
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.batch_size == 0 || self.epochs == 0 {
            return Err(TrainError::Config(
                "--epochs and --batch-size must be at least 1".into(),
            ));
        }
        if self.replicas == 0 || self.replicas > self.batch_size {
            return Err(TrainError::Config(format!(
                "--replicas {} must be between 1 and --batch-size {} (each replica takes a share of every batch)",
                self.replicas, self.batch_size
            )));
        }
        if self.replicas > 1
            && !matches!(
                self.backend,
                BackendName::Cpu | BackendName::Flex | BackendName::Ndarray
            )
        {
            return Err(TrainError::Config(format!(
                "--replicas {} splits batches between CPU cores; drop it for --backend {}",
                self.replicas,
                self.backend.as_str()
            )));
        }
        if self.freeze_epochs >= self.epochs {
            return Err(TrainError::Config(format!(
                "--freeze-epochs {} leaves no epoch to fine-tune in (--epochs {})",
                self.freeze_epochs, self.epochs
            )));
        }
        if let Some(p) = &self.progressive_resize {
            p.validate(self.epochs).map_err(TrainError::Config)?;
        }
        if self.monitor == Monitor::Last
            && let Some(patience) = self.early_stop
        {
            return Err(TrainError::Config(format!(
                "--early-stop {patience} watches a validation metric; give --monitor val-accuracy or val-loss with it, not last"
            )));
        }
        Ok(())
    }

    /// The optimizer settings of this configuration.
    pub fn optimizer_settings(&self) -> OptimizerSettings {
        OptimizerSettings {
            name: self.optimizer,
            momentum: self.momentum,
            nesterov: self.nesterov,
            weight_decay: self.weight_decay,
            no_decay_bias_norm: self.no_decay_bias_norm,
            clip_grad_norm: self.clip_grad_norm,
        }
    }

    /// The optimizer for `model` (SGD as Keras and PyTorch define it unless another is
    /// chosen).
    pub fn optimizer<M: Module>(&self, model: &M) -> ModuleOptimizer {
        self.optimizer_settings().build(model)
    }
}

/// A run's configuration with what it was trained on: written as `config.json`, read back
/// by `konv eval` and `konv predict`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    /// The training configuration.
    pub config: TrainConfig,
    /// Where the data came from.
    pub data_source: String,
    /// Whether the data was the embedded subset.
    pub subset: bool,
    /// Class names, in label order.
    pub class_names: Vec<String>,
    /// Input `[channels, height, width]`.
    pub input: [usize; 3],
    /// Pixel standardization.
    pub normalize: Normalize,
    /// Training and validation set sizes.
    pub train_size: usize,
    /// Validation set size.
    pub val_size: usize,
}

/// Metrics of one epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss (with dropout active).
    pub train_loss: f64,
    /// Training accuracy (with dropout active).
    pub train_accuracy: f64,
    /// Validation loss.
    pub val_loss: f64,
    /// Validation accuracy.
    pub val_accuracy: f64,
    /// Learning rate.
    pub lr: f64,
    /// Training throughput.
    pub images_per_sec: f64,
    /// Wall time of the epoch, validation included.
    pub seconds: f64,
}

impl EpochMetrics {
    /// Header of `metrics.csv`.
    pub const CSV_HEADER: &str =
        "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr,images_per_sec,seconds";

    /// One `metrics.csv` row.
    pub fn csv_row(&self) -> String {
        format!(
            "{},{:.6},{:.6},{:.6},{:.6},{},{:.2},{:.2}",
            self.epoch,
            self.train_loss,
            self.train_accuracy,
            self.val_loss,
            self.val_accuracy,
            self.lr,
            self.images_per_sec,
            self.seconds
        )
    }
}

/// The data of a run: training, validation and test sets, ready to batch.
#[derive(Debug, Clone)]
pub struct SplitData {
    /// Training images.
    pub train: Arc<ImageSet>,
    /// Validation images, held out of the training set.
    pub val: Arc<ImageSet>,
    /// Test images.
    pub test: Arc<ImageSet>,
    /// Standardization.
    pub normalize: Normalize,
}

impl SplitData {
    /// Splits `dataset`'s training set into train and validation (deterministic for `seed`)
    /// and applies `limit` to the training part.
    pub fn new(dataset: &Dataset, val_size: usize, limit: Option<usize>, seed: u64) -> Self {
        Self::with_classes(dataset, None, val_size, limit, seed)
    }

    /// [`SplitData::new`] on the images of `classes` only (relabelled by their position in
    /// `classes`), when given.
    pub fn with_classes(
        dataset: &Dataset,
        classes: Option<&[u8]>,
        val_size: usize,
        limit: Option<usize>,
        seed: u64,
    ) -> Self {
        let (full_train, test) = match classes {
            Some(c) => (dataset.train.with_classes(c), dataset.test.with_classes(c)),
            None => (dataset.train.clone(), dataset.test.clone()),
        };
        let (train, val) = full_train.split_validation(val_size, seed);
        let train = match limit {
            Some(n) => train.take(n),
            None => train,
        };
        let (mean, std) = dataset.name.mean_std();
        SplitData {
            train: Arc::new(train),
            val: Arc::new(val),
            test: Arc::new(test),
            normalize: Normalize::new(mean, std),
        }
    }

    /// The splits of an image folder: its `val/` and `test/` when it has them; otherwise
    /// `val_size` training images held out at random (deterministic for `seed`), and, with
    /// no `test/`, the validation images as the test set too. `limit` keeps that many
    /// training images drawn at random (`seed`): a folder is sorted by class, so its first
    /// images would be its first classes. The standardization is measured on the training
    /// images, per channel.
    pub fn from_folder(
        folder: &konv_datasets::ImageFolder,
        val_size: usize,
        limit: Option<usize>,
        seed: u64,
    ) -> Self {
        let (train, val) = match &folder.val {
            Some(val) => (folder.train.clone(), val.clone()),
            None => folder.train.split_validation(val_size, seed),
        };
        let train = match limit {
            Some(n) => train.sample(n, seed),
            None => train,
        };
        let test = folder.test.clone().unwrap_or_else(|| val.clone());
        let normalize = Normalize::per_channel(&konv_datasets::folder::channel_stats(&train));
        SplitData {
            train: Arc::new(train),
            val: Arc::new(val),
            test: Arc::new(test),
            normalize,
        }
    }
}

/// The result of [`train`] (and of [`train_model`], for a model of type `M`).
#[derive(Debug, Clone)]
pub struct TrainOutcome<M = Classifier> {
    /// The model after the last epoch.
    pub model: M,
    /// The model of the epoch with the best monitored score.
    pub best: M,
    /// Metrics of every epoch.
    pub history: Vec<EpochMetrics>,
    /// The epoch of `best` (the first with the best monitored score), 1-based.
    pub best_epoch: usize,
    /// Test-set evaluation of the best model.
    pub test: EvalReport,
    /// The epoch early stopping ended the run at, if it did.
    pub stopped_early: Option<usize>,
}

/// One optimization step on `batch`: returns the updated model, the batch's mean loss and
/// its number of correct predictions. `label_smoothing` (0 for none) spreads that much of
/// each target's probability over all classes; a mixed batch ([`ImageBatch::mix`], mixup or
/// cutmix) is scored against both of its label sets, weighted by the mixing ratio.
pub fn train_step<M: Classify>(
    model: M,
    optim: &mut ModuleOptimizer,
    batch: ImageBatch,
    lr: f64,
    label_smoothing: f64,
) -> (M, f64, usize) {
    let logits = model.logits(batch.images.clone());
    finish_step(model, optim, logits, batch, lr, label_smoothing)
}

/// Fails with a clear error when `model` (named `name`) cannot take `input` images (LeNet-5
/// needs 32×32, say) or does not give `classes` logits, instead of a panic deep in a
/// convolution.
pub fn check_input<M: Classify>(
    model: &M,
    name: &str,
    input: [usize; 3],
    classes: usize,
) -> Result<(), TrainError> {
    model.check_input(input, classes).map_err(|e| {
        TrainError::Config(format!(
            "model `{name}` cannot take the dataset's {}×{} images: {e}",
            input[1], input[2]
        ))
    })
}

/// [`check_input`] for what `config` trains on: `input`, and with progressive resizing also
/// the smaller images of the first epochs.
pub fn check_training_input<M: Classify>(
    model: &M,
    config: &TrainConfig,
    input: [usize; 3],
    classes: usize,
) -> Result<(), TrainError> {
    check_input(model, &config.model, input, classes)?;
    if let Some(p) = &config.progressive_resize {
        let [h, w] = p.smallest([input[1], input[2]]);
        check_input(model, &config.model, [input[0], h, w], classes).map_err(|e| {
            TrainError::Config(format!("--progressive-resize min={}: {e}", p.min_size))
        })?;
    }
    Ok(())
}

/// [`check_training_input`] before anything is written: builds `config.model` for
/// `num_classes` classes on the CPU to try it.
pub fn check_config_input(
    config: &TrainConfig,
    num_classes: usize,
    input: [usize; 3],
) -> Result<(), TrainError> {
    let model = konv_models::build_for(&config.model, num_classes, input[0], &Device::flex())?;
    check_training_input(&model, config, input, num_classes)
}

/// What a run folder records after each epoch so that `--resume` continues exactly where
/// the run was: the epochs done, their metrics, the best epoch so far and the files of the
/// last checkpoint. Written (atomically) after the checkpoint files it names, so a run killed
/// at any moment resumes from its last finished epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Epochs finished.
    pub epoch: usize,
    /// Metrics of every finished epoch.
    pub history: Vec<EpochMetrics>,
    /// The epoch of `best.bpk` (0 before any).
    pub best_epoch: usize,
    /// Its score under the run's [`Monitor`] (validation accuracy, or minus the loss).
    pub best_score: f64,
    /// Model weights after `epoch`, in the run folder.
    pub checkpoint: String,
    /// Optimizer state after `epoch`, in the run folder.
    pub optimizer: String,
}

/// The weights `config.init_from` names, in a model built for `num_classes` classes and
/// `channels` input channels. A konv run's weights (its `config.json` beside them) or
/// imported torchvision weights (the registry's class count and channels) for another number
/// of classes get a fresh head, and RGB weights for grayscale data get their first filters
/// summed over RGB ([`Classifier::to_grayscale`]): transfer learning.
pub fn initial_weights(
    name: &str,
    path: &std::path::Path,
    num_classes: usize,
    channels: usize,
    device: &Device,
) -> Result<Classifier, TrainError> {
    let path = &crate::run::weights_path(path)?;
    let (from_classes, from_channels) = match path.parent().map(crate::run::RunDir::open) {
        Some(Ok(run)) => {
            let info = run.read_info()?;
            (info.class_names.len(), info.input[0])
        }
        _ => {
            let info = konv_models::registry::info(name)?;
            (info.classes, info.input[0])
        }
    };
    // RGB weights (ImageNet) for grayscale data: the first filters summed over RGB.
    let gray = from_channels == 3 && channels == 1;
    if from_channels != channels && !gray {
        return Err(TrainError::Config(format!(
            "--init-from {}: these `{name}` weights take {from_channels}-channel images, the dataset has {channels} channel(s)",
            path.display()
        )));
    }
    let model = konv_models::build_for(name, from_classes, from_channels, device)?;
    let model = crate::run::load_weights(model, path)?;
    let model = if gray { model.to_grayscale() } else { model };
    Ok(if from_classes == num_classes {
        model
    } else {
        model.with_num_classes(num_classes, device)
    })
}

/// The standardization pretrained weights expect, for `channels`-channel data: the zoo
/// model's own preprocessing (ImageNet's per-channel mean and standard deviation for
/// torchvision's RGB models), when `init_from` holds imported weights rather than a konv
/// run's; `None` when the statistics should be measured on the data (a konv run's weights,
/// which saw konv's own standardization, or a model whose preprocessing has other channels).
pub fn pretrained_normalize(
    model: &str,
    init_from: &std::path::Path,
    channels: usize,
) -> Result<Option<Normalize>, TrainError> {
    let path = crate::run::weights_path(init_from)?;
    let from_run = path
        .parent()
        .is_some_and(|dir| dir.join(crate::run::CONFIG).is_file());
    let pre = konv_models::registry::info(model)?.preprocess;
    if from_run || pre.channels != channels {
        return Ok(None);
    }
    let stats: Vec<(f32, f32)> = (0..channels).map(|c| (pre.mean[c], pre.std[c])).collect();
    Ok(Some(Normalize::per_channel(&stats)))
}

/// One step of transfer learning's first phase: the frozen backbone runs in inference mode
/// (no autodiff, batch norm on its running statistics), only the head trains.
pub fn head_step<M: Classify>(
    model: M,
    optim: &mut ModuleOptimizer,
    batch: ImageBatch,
    lr: f64,
    label_smoothing: f64,
) -> (M, f64, usize) {
    let logits = model.head_logits(batch.images.clone());
    finish_step(model, optim, logits, batch, lr, label_smoothing)
}

/// Loss, accuracy, backward pass and update, from the logits of `batch`.
fn finish_step<M: Classify>(
    model: M,
    optim: &mut ModuleOptimizer,
    logits: Tensor<2>,
    batch: ImageBatch,
    lr: f64,
    label_smoothing: f64,
) -> (M, f64, usize) {
    let (loss, correct) = classification_loss(logits, batch.targets, batch.mix, label_smoothing);
    let loss_value = loss.clone().into_scalar::<f64>();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let model = optim.step(lr, model, grads);
    (model, loss_value, correct)
}

/// The cross-entropy of `logits` against `targets` (and, for a mixed batch, against `mix`'s
/// classes, the two weighted), with label smoothing, and the number of correct top-1
/// predictions.
pub(crate) fn classification_loss(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    mix: Option<crate::data::Mix>,
    label_smoothing: f64,
) -> (Tensor<1>, usize) {
    let device = logits.device();
    let correct = logits
        .clone()
        .argmax(1)
        .squeeze_dim::<1>(1)
        .equal(targets.clone())
        .int()
        .sum()
        .into_scalar::<i64>() as usize;
    let criterion = CrossEntropyLossConfig::new()
        .with_smoothing((label_smoothing > 0.0).then_some(label_smoothing as f32))
        .init(&device);
    let loss = match mix {
        None => criterion.forward(logits, targets),
        Some(mix) => {
            criterion.forward(logits.clone(), targets) * mix.lambda
                + criterion.forward(logits, mix.targets) * (1.0 - mix.lambda)
        }
    };
    (loss, correct)
}

/// The seed of epoch `epoch`'s randomness (dropout, shuffling, augmentation): a function of
/// the run's seed and the epoch alone, so a resumed epoch draws what the original did.
pub fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64)
}

/// Trains the zoo model `config.model` on `data`, on `device` (autodiff is added here),
/// reporting to `observer` and, when `run` is given, writing metrics and checkpoints there
/// after each epoch.
pub fn train(
    config: &TrainConfig,
    num_classes: usize,
    data: &SplitData,
    device: &Device,
    run: Option<&RunDir>,
    observer: &mut dyn Observer,
) -> Result<TrainOutcome, TrainError> {
    let model = zoo_model(config, num_classes, data, device)?;
    train_from(
        model,
        config,
        num_classes,
        data,
        device,
        run,
        None,
        observer,
    )
}

/// [`train`] for any model: yours, or one of the zoo's built and changed in your code. The
/// model may live on a plain device (it is forked onto `device` with autodiff); it must
/// give `num_classes` logits for `data`'s images. `config.model` only names it in messages
/// and in `config.json`.
pub fn train_model<M: Classify>(
    model: M,
    config: &TrainConfig,
    num_classes: usize,
    data: &SplitData,
    device: &Device,
    run: Option<&RunDir>,
    observer: &mut dyn Observer,
) -> Result<TrainOutcome<M>, TrainError> {
    let model = onto_training_device(model, device);
    train_from(
        model,
        config,
        num_classes,
        data,
        device,
        run,
        None,
        observer,
    )
}

/// [`resume`] for a model of your own, built the same way as for [`train_model`] (its
/// weights are replaced by the checkpoint's).
pub fn resume_model<M: Classify>(
    model: M,
    config: &TrainConfig,
    num_classes: usize,
    data: &SplitData,
    device: &Device,
    run: &RunDir,
    observer: &mut dyn Observer,
) -> Result<TrainOutcome<M>, TrainError> {
    let state = run.read_state()?;
    let model = onto_training_device(model, device);
    train_from(
        model,
        config,
        num_classes,
        data,
        device,
        Some(run),
        Some(state),
        observer,
    )
}

/// `model` on `device` with autodiff, ready to train (as it is when already there).
fn onto_training_device<M: Classify>(model: M, device: &Device) -> M {
    let train_device = device.clone().autodiff();
    let devices = model.devices();
    // (Device equality does not tell a device from its autodiff wrapper.)
    if !devices.is_empty()
        && devices
            .iter()
            .all(|d| *d == train_device && d.is_autodiff())
    {
        return model;
    }
    // Plain tensors on `device`, then lifted to autodiff with gradients on (Burn's
    // `valid` → `train` transition).
    model.valid().to_device(device).train()
}

/// The zoo model of `config` for `data`'s channels, seeded with `config.seed`, from
/// `config.init_from` when given, on `device` with autodiff.
fn zoo_model(
    config: &TrainConfig,
    num_classes: usize,
    data: &SplitData,
    device: &Device,
) -> Result<Classifier, TrainError> {
    let train_device = device.clone().autodiff();
    train_device.seed(config.seed);
    // The model takes the data's channels (1 for IDX files, 1 or 3 for image folders).
    let channels = data.train.images.channels;
    Ok(match &config.init_from {
        Some(path) => initial_weights(&config.model, path, num_classes, channels, &train_device)?,
        None => konv_models::build_for(&config.model, num_classes, channels, &train_device)?,
    })
}

/// [`train`] continuing the run in `run` from its `state.json` (the CLI's `--resume`): the
/// model, optimizer state, schedule, best epoch and metrics are restored, and the remaining
/// epochs draw the same random numbers as the uninterrupted run would have. Burn loads the
/// optimizer state onto its default device first (a GPU when one is compiled in; set
/// `BURN_DEVICE=flex` on machines without one, as the `konv` binary does).
pub fn resume(
    config: &TrainConfig,
    num_classes: usize,
    data: &SplitData,
    device: &Device,
    run: &RunDir,
    observer: &mut dyn Observer,
) -> Result<TrainOutcome, TrainError> {
    let state = run.read_state()?;
    let model = zoo_model(config, num_classes, data, device)?;
    train_from(
        model,
        config,
        num_classes,
        data,
        device,
        Some(run),
        Some(state),
        observer,
    )
}

#[allow(clippy::too_many_arguments)]
fn train_from<M: Classify>(
    mut model: M,
    config: &TrainConfig,
    num_classes: usize,
    data: &SplitData,
    device: &Device,
    run: Option<&RunDir>,
    state: Option<TrainState>,
    observer: &mut dyn Observer,
) -> Result<TrainOutcome<M>, TrainError> {
    config.validate()?;
    if data.train.is_empty() {
        return Err(TrainError::Config("the training set is empty".into()));
    }
    let train_device = device.clone().autodiff();
    let (rows, cols) = config
        .augment
        .output_size(data.train.images.rows, data.train.images.cols);
    let input = [data.train.images.channels, rows, cols];
    let preprocess = Some(Arc::new(config.augment.eval_steps()));
    check_training_input(&model, config, input, num_classes)?;
    let steps = data.train.len().div_ceil(config.batch_size);
    let phase2 = |model: &M| -> Result<(ModuleOptimizer, ScheduleDriver), TrainError> {
        let schedule = ScheduleDriver::new(
            &config.lr_schedule,
            config.lr,
            steps,
            config.epochs - config.freeze_epochs,
        )
        .map_err(|e| TrainError::Config(format!("--lr-schedule: {e}")))?;
        Ok((config.optimizer(model), schedule))
    };
    let mut frozen = config.freeze_epochs > 0;
    if frozen {
        model = model.freeze_backbone().map_err(|e| {
            TrainError::Config(format!(
                "`{}`: {e}; train without a frozen phase",
                config.model
            ))
        })?;
    }
    let (mut optim, mut schedule) = phase2(&model)?;
    let mut history = Vec::new();
    let mut best = (f64::NEG_INFINITY, model.valid(), 0);
    let mut first_epoch = 1;
    if let Some(state) = state {
        let run = run.expect("resume has a run folder");
        if state.epoch >= config.epochs {
            return Err(TrainError::Config(format!(
                "{}: the run already finished its {} epochs",
                run.path.display(),
                config.epochs
            )));
        }
        model = crate::run::load_module(model, &run.path.join(&state.checkpoint))?;
        if state.epoch >= config.freeze_epochs && frozen {
            model = model.unfreeze();
            frozen = false;
        }
        // Built on the loaded parameters: their ids (restored from the checkpoint) are what
        // parameter groups such as the no-decay one match.
        (optim, schedule) = phase2(&model)?;
        // Right after the first phase the fine-tuning optimizer starts fresh.
        if !(config.freeze_epochs > 0 && state.epoch == config.freeze_epochs) {
            optim = run.load_optimizer(optim, &state.optimizer)?;
        }
        // Replay the schedule through the finished fine-tuning epochs.
        for m in &state.history[config.freeze_epochs.min(state.epoch)..state.epoch] {
            for _ in 0..steps {
                schedule.next_lr();
            }
            schedule.epoch_end(m.val_loss);
        }
        if state.best_epoch > 0 {
            let best_model = crate::run::load_module(model.valid(), &run.path.join(BEST))?;
            best = (state.best_score, best_model, state.best_epoch);
        }
        history = state.history;
        first_epoch = state.epoch + 1;
    }
    let mut stopped_early = None;
    let replicas = match config.replicas {
        0 | 1 => None,
        n => Some(crate::parallel::Replicas::new(n)?),
    };

    for epoch in first_epoch..=config.epochs {
        if frozen && epoch > config.freeze_epochs {
            // Phase 2: everything trains, with a fresh optimizer (Keras recompiles).
            model = model.unfreeze();
            frozen = false;
            (optim, schedule) = phase2(&model)?;
        }
        let start = Instant::now();
        let seed = epoch_seed(config.seed, epoch);
        train_device.seed(seed);
        let batches = loader(
            data.train.clone(),
            data.normalize,
            config.batch_size,
            Some(seed),
            Some(Arc::new(config.augment.for_epoch(config.seed, epoch))),
            &train_device,
        );
        observer.epoch_start(epoch, config.epochs, steps);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        let mut lr = config.head_lr.unwrap_or(config.lr);
        let side = config
            .progressive_resize
            .map(|p| p.size_at(epoch, rows.min(cols)));
        for batch in batches.iter() {
            let mut batch = batch.map_err(|e| TrainError::Config(e.to_string()))?;
            if let Some(side) = side {
                batch.images = resize_batch(batch.images, side);
            }
            let n = batch.targets.dims()[0];
            let (next, loss, ok) = if frozen {
                head_step(model, &mut optim, batch, lr, config.label_smoothing)
            } else {
                lr = schedule.next_lr();
                match &replicas {
                    Some(replicas) => crate::parallel::parallel_train_step(
                        model,
                        &mut optim,
                        batch,
                        lr,
                        config.label_smoothing,
                        replicas,
                    ),
                    None => train_step(model, &mut optim, batch, lr, config.label_smoothing),
                }
            };
            model = next;
            if !loss.is_finite() {
                return Err(TrainError::Diverged {
                    epoch,
                    step: seen / config.batch_size + 1,
                });
            }
            loss_sum += loss * n as f64;
            correct += ok;
            seen += n;
            let secs = start.elapsed().as_secs_f64();
            observer.step(
                seen,
                loss_sum / seen as f64,
                correct as f64 / seen as f64,
                seen as f64 / secs,
            );
            if observer.interrupted() {
                return Err(TrainError::Interrupted { epoch });
            }
        }
        let train_secs = start.elapsed().as_secs_f64();
        let valid = model.valid();
        let val = evaluate_with(
            &valid,
            &data.val,
            data.normalize,
            config.batch_size,
            num_classes,
            preprocess.clone(),
        );
        let metrics = EpochMetrics {
            epoch,
            train_loss: loss_sum / seen as f64,
            train_accuracy: correct as f64 / seen as f64,
            val_loss: val.loss,
            val_accuracy: val.accuracy(),
            lr,
            images_per_sec: seen as f64 / train_secs,
            seconds: start.elapsed().as_secs_f64(),
        };
        if !frozen {
            schedule.epoch_end(val.loss);
        }
        let improved = config.monitor.score(&metrics) > best.0;
        if improved {
            best = (config.monitor.score(&metrics), valid.clone(), epoch);
        }
        history.push(metrics.clone());
        if let Some(run) = run {
            run.save_epoch(
                &valid,
                &optim,
                improved,
                TrainState {
                    epoch,
                    history: history.clone(),
                    best_epoch: best.2,
                    best_score: best.0,
                    checkpoint: String::new(),
                    optimizer: String::new(),
                },
                config.keep_checkpoints,
            )?;
        }
        observer.epoch_end(&metrics, improved);
        if let Some(patience) = config.early_stop
            && epoch - best.2 >= patience.max(1)
        {
            stopped_early = Some(epoch);
            break;
        }
    }
    let test = evaluate_with(
        &best.1,
        &data.test,
        data.normalize,
        config.batch_size,
        num_classes,
        preprocess,
    );
    Ok(TrainOutcome {
        model: model.valid(),
        best: best.1,
        best_epoch: best.2,
        history,
        test,
        stopped_early,
    })
}
