//! The training loop: SGD with momentum/Nesterov on cross-entropy, validation each epoch,
//! metrics and checkpoints written to a run folder.

use std::sync::Arc;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use konv_datasets::{Dataset, ImageSet};
use konv_models::Classifier;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::augment::{AugmentSchedule, Pipeline};
use crate::backend::BackendName;
use crate::data::{ImageBatch, Normalize, loader};
use crate::engine::{Settings, Step, StepLoss, Task, Validation};
use crate::eval::{EvalReport, evaluate_with};
use crate::model::Classify;
use crate::observer::Observer;
use crate::optim::OptimizerSettings;
use crate::progressive::resize_batch;
use crate::run::RunDir;

pub use crate::engine::Monitor;
pub use crate::record::{EpochMetrics, TrainState, epoch_seed};

/// What to train and how: everything `konv train` takes, saved as the run's `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    /// Registry name of the model.
    pub model: String,
    /// Dataset name.
    pub dataset: String,
    /// Backend.
    pub backend: BackendName,
    /// Start from these weights (a run's `best.bpk` or `checkpoint.bpk`, or a run folder for
    /// its `best.bpk`) instead of a fresh initialization: to fine-tune at a lower learning
    /// rate, for example.
    #[serde(default)]
    pub init_from: Option<std::path::PathBuf>,
    /// Label smoothing of the cross-entropy (0 for none; 0.1 is common).
    #[serde(default)]
    pub label_smoothing: f64,
    /// Train on these classes of the dataset only, relabelled 0, 1, … in this order (the
    /// test set likewise).
    #[serde(default)]
    pub classes: Option<Vec<u8>>,
    /// The image folder trained on, when `dataset` is `folder`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<FolderSpec>,
    /// Start a fresh ResNet with the last batch norm of every residual unit at zero scale,
    /// so that each unit begins as its shortcut (torchvision's `zero_init_residual`;
    /// [`konv_models::resnet::ResNetConfig::zero_init_residual`]). ResNets only, and not with
    /// `init_from`, whose weights it would overwrite.
    #[serde(default)]
    pub zero_init_residual: bool,
    /// How to train: epochs, batch size, optimizer, schedule, augmentation, phases… (the
    /// settings of every task, written flat into `config.json`).
    #[serde(flatten)]
    pub settings: Settings,
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
    /// Files cut short were decoded anyway.
    #[serde(default)]
    pub allow_truncated: bool,
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
            allow_truncated: self.allow_truncated,
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: "fashion-cnn".into(),
            dataset: "fashion-mnist".into(),
            backend: BackendName::Cpu,
            init_from: None,
            label_smoothing: 0.0,
            classes: None,
            folder: None,
            zero_init_residual: false,
            settings: Settings::default(),
        }
    }
}

impl TrainConfig {
    /// Settings that cannot work together ([`Settings::validate`]), and replicas on a
    /// backend that is not the CPU's.
    ///
    /// # Errors
    /// The first bad setting, as [`TrainError::Setting`].
    pub fn validate(&self) -> Result<(), TrainError> {
        self.settings.validate()?;
        if self.zero_init_residual && self.init_from.is_some() {
            return Err(TrainError::setting(
                "zero_init_residual",
                "initializes a fresh network, and init_from loads trained weights over it; drop one"
                    .into(),
            ));
        }
        if self.settings.replicas > 1 && !self.backend.is_cpu() {
            return Err(TrainError::setting(
                "replicas",
                format!(
                    "{} splits batches between CPU cores; the {} backend runs one model",
                    self.settings.replicas,
                    self.backend.as_str()
                ),
            ));
        }
        Ok(())
    }

    /// The optimizer settings of this configuration.
    pub fn optimizer_settings(&self) -> OptimizerSettings {
        self.settings.optimizer_settings()
    }

    /// The optimizer for `model` (SGD as Keras and PyTorch define it unless another is
    /// chosen).
    pub fn optimizer<M: Module>(&self, model: &M) -> ModuleOptimizer {
        self.settings.optimizer(model)
    }

    /// What picks the best epoch: the configured monitor, or validation accuracy (a run
    /// without validation images keeps its last epoch: [`TrainOutcome::monitor`]).
    pub fn monitor(&self) -> Monitor {
        self.settings.monitor.unwrap_or_default()
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

impl RunInfo {
    /// Reads a classification run's `config.json`.
    ///
    /// # Errors
    /// A missing or corrupt file.
    pub fn read(run: &RunDir) -> Result<Self, TrainError> {
        run.read_config()
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
    /// What picked `best`: the configured monitor, validation accuracy by default, the last
    /// epoch when no validation images were held out.
    pub monitor: Monitor,
    /// Test-set evaluation of the best model.
    pub test: EvalReport,
    /// The epoch early stopping ended the run at, if it did.
    pub stopped_early: Option<usize>,
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
    if let Some(p) = &config.settings.progressive_resize {
        let [h, w] = p.smallest([input[1], input[2]]);
        check_input(model, &config.model, [input[0], h, w], classes).map_err(|e| {
            TrainError::setting("progressive_resize", format!("min={}: {e}", p.min_size))
        })?;
    }
    Ok(())
}

/// [`check_training_input`] before anything is written: builds `config.model` for
/// `num_classes` classes on the CPU to try it, from `config.init_from` when given (so
/// weights that do not fit the model fail here, not after the run folder exists).
pub fn check_config_input(
    config: &TrainConfig,
    num_classes: usize,
    input: [usize; 3],
) -> Result<(), TrainError> {
    let device = Device::flex();
    let model = match &config.init_from {
        Some(path) => initial_weights(&config.model, path, num_classes, input[0], &device)?,
        None => fresh_model(config, num_classes, input[0], &device)?,
    };
    check_training_input(&model, config, input, num_classes)
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
            let info = RunInfo::read(&run)?;
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
        return Err(TrainError::setting(
            "init_from",
            format!(
                "{}: these `{name}` weights take {from_channels}-channel images, the dataset has {channels} channel(s)",
                path.display()
            ),
        ));
    }
    let model = if is_pytorch_file(path) {
        // A PyTorch state dict (torchvision's `resnet18-f37072fd.pth`, a `.safetensors`
        // export): imported on the fly, as `konv import` would, every tensor checked.
        let (model, _) = konv_models::import::load_classifier(name, from_classes, path, device)
            .map_err(|e| TrainError::setting("init_from", e.to_string()))?;
        model
    } else {
        let model = konv_models::build_for(name, from_classes, from_channels, device)?;
        crate::run::load_module(model, path)?
    };
    let model = if gray { model.to_grayscale() } else { model };
    Ok(if from_classes == num_classes {
        model
    } else {
        model.with_num_classes(num_classes, device)
    })
}

/// Whether `path` is a PyTorch state dict (`.pth`, `.pt`, `.bin`, `.safetensors`) rather
/// than konv's own burnpack weights.
pub fn is_pytorch_file(path: &std::path::Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        ["pth", "pt", "bin", "safetensors"].contains(&e.to_ascii_lowercase().as_str())
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

/// The loss of one classification step: cross-entropy (with label smoothing, against both
/// label sets of a mixed batch), the correct top-1 predictions counted.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClassifyStep {
    /// Label smoothing (0 for none).
    pub label_smoothing: f64,
}

impl<M: Classify> Step<M> for ClassifyStep {
    type Batch = ImageBatch;

    fn batch_len(&self, batch: &ImageBatch) -> usize {
        batch.targets.dims()[0]
    }

    fn loss(&self, model: &M, batch: ImageBatch, frozen: bool) -> Result<StepLoss, TrainError> {
        let n = batch.targets.dims()[0];
        let logits = if frozen {
            model.head_logits(batch.images)
        } else {
            model.logits(batch.images)
        };
        let (loss, right) =
            classification_loss(logits, batch.targets, batch.mix, self.label_smoothing)?;
        Ok(StepLoss {
            loss,
            right,
            counted: n,
            sums: Vec::new(),
        })
    }

    fn split(&self, batch: &ImageBatch, start: usize, len: usize) -> ImageBatch {
        let rows = |t: &Tensor<1, Int>| t.clone().narrow(0, start, len);
        ImageBatch {
            images: batch.images.clone().narrow(0, start, len),
            targets: rows(&batch.targets),
            mix: batch.mix.as_ref().map(|m| crate::data::Mix {
                targets: rows(&m.targets),
                lambda: m.lambda,
            }),
        }
    }
}

/// One optimization step on `batch`: returns the updated model, the batch's mean loss and
/// its number of correct predictions. `label_smoothing` (0 for none) spreads that much of
/// each target's probability over all classes; a mixed batch ([`ImageBatch::mix`], mixup or
/// cutmix) is scored against both of its label sets, weighted by the mixing ratio.
///
/// # Errors
/// A device that failed ([`TrainError::Device`]).
pub fn train_step<M: Classify>(
    model: M,
    optim: &mut ModuleOptimizer,
    batch: ImageBatch,
    lr: f64,
    label_smoothing: f64,
) -> Result<(M, f64, usize), TrainError> {
    let step = ClassifyStep { label_smoothing };
    let (model, totals) = crate::engine::single_step(&step, model, optim, batch, lr, false)?;
    Ok((model, totals.loss, totals.right))
}

/// [`train_step`] with the batch split between `replicas` ([`crate::parallel`]).
///
/// # Errors
/// A device that failed ([`TrainError::Device`]).
pub fn parallel_train_step<M: Classify>(
    model: M,
    optim: &mut ModuleOptimizer,
    batch: ImageBatch,
    lr: f64,
    label_smoothing: f64,
    replicas: &crate::parallel::Replicas,
) -> Result<(M, f64, usize), TrainError> {
    let step = ClassifyStep { label_smoothing };
    let (model, totals) = crate::parallel::parallel_step(&step, model, optim, batch, lr, replicas)?;
    Ok((model, totals.loss, totals.right))
}

/// The cross-entropy of `logits` against `targets` (and, for a mixed batch, against `mix`'s
/// classes, the two weighted), with label smoothing, and the number of correct top-1
/// predictions.
///
/// # Errors
/// A device that failed reading the count back ([`TrainError::Device`]).
pub fn classification_loss(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    mix: Option<crate::data::Mix>,
    label_smoothing: f64,
) -> Result<(Tensor<1>, usize), TrainError> {
    let device = logits.device();
    let correct = count_correct(logits.clone(), targets.clone())?;
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
    Ok((loss, correct))
}

/// The number of rows of `logits` `[n, classes]` whose highest class is `targets`' label.
///
/// # Errors
/// A device that failed reading the count back ([`TrainError::Device`]).
pub fn count_correct(logits: Tensor<2>, targets: Tensor<1, Int>) -> Result<usize, TrainError> {
    crate::engine::read_count(
        logits
            .argmax(1)
            .squeeze_dim::<1>(1)
            .equal(targets)
            .int()
            .sum(),
    )
}

/// Classification as an [`engine`](crate::engine) task: batches from Burn's data loader
/// (shuffled, augmented, standardized in its worker), validation accuracy as the score.
struct ClassifyTask<'a> {
    step: ClassifyStep,
    name: &'a str,
    data: &'a SplitData,
    augment: AugmentSchedule,
    batch_size: usize,
    num_classes: usize,
    preprocess: Option<Arc<Pipeline>>,
    side: usize,
    loader: Option<Arc<dyn burn::data::dataloader::DataLoader<ImageBatch>>>,
}

impl<M: Classify> Step<M> for ClassifyTask<'_> {
    type Batch = ImageBatch;

    fn batch_len(&self, batch: &ImageBatch) -> usize {
        <ClassifyStep as Step<M>>::batch_len(&self.step, batch)
    }

    fn loss(&self, model: &M, batch: ImageBatch, frozen: bool) -> Result<StepLoss, TrainError> {
        self.step.loss(model, batch, frozen)
    }

    fn split(&self, batch: &ImageBatch, start: usize, len: usize) -> ImageBatch {
        <ClassifyStep as Step<M>>::split(&self.step, batch, start, len)
    }
}

impl<M: Classify> Task<M> for ClassifyTask<'_> {
    fn train_len(&self) -> usize {
        self.data.train.len()
    }

    fn start_epoch(
        &mut self,
        seed: u64,
        epoch: usize,
        epoch_seed: u64,
        device: &Device,
    ) -> Result<(), TrainError> {
        self.loader = Some(loader(
            self.data.train.clone(),
            self.data.normalize,
            self.batch_size,
            Some(epoch_seed),
            Some(Arc::new(self.augment.for_epoch(seed, epoch))),
            device,
        ));
        Ok(())
    }

    fn batches(&self) -> Box<dyn Iterator<Item = Result<ImageBatch, TrainError>> + '_> {
        match &self.loader {
            Some(loader) => Box::new(
                loader
                    .iter()
                    .map(|b| b.map_err(|e| TrainError::Config(e.to_string()))),
            ),
            None => Box::new(std::iter::empty()),
        }
    }

    fn input_side(&self) -> usize {
        self.side
    }

    fn resize(&self, mut batch: ImageBatch, side: usize) -> Result<ImageBatch, String> {
        batch.images = resize_batch(batch.images, side);
        Ok(batch)
    }

    fn freeze(&self, model: M) -> Result<M, String> {
        model
            .freeze_backbone()
            .map_err(|e| format!("`{}`: {e}; train without a frozen phase", self.name))
    }

    fn validate(&self, model: &M) -> Result<Validation, TrainError> {
        let val = evaluate_with(
            model,
            &self.data.val,
            self.data.normalize,
            self.batch_size,
            self.num_classes,
            self.preprocess.clone(),
        )?;
        Ok(Validation {
            loss: val.loss,
            accuracy: val.accuracy(),
            score: val.accuracy(),
            columns: Vec::new(),
        })
    }

    fn default_monitor(&self) -> Monitor {
        Monitor::ValAccuracy
    }

    fn has_validation(&self) -> bool {
        !self.data.val.is_empty()
    }
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
    train_model(model, config, num_classes, data, device, run, observer)
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

/// The zoo model of `config` for `data`'s channels, seeded with `config.settings.seed`, from
/// `config.init_from` when given, on `device` with autodiff.
fn zoo_model(
    config: &TrainConfig,
    num_classes: usize,
    data: &SplitData,
    device: &Device,
) -> Result<Classifier, TrainError> {
    let train_device = crate::engine::training_device(device);
    train_device.seed(config.settings.seed);
    // The model takes the data's channels (1 for IDX files, 1 or 3 for image folders).
    let channels = data.train.images.channels;
    Ok(match &config.init_from {
        Some(path) => initial_weights(&config.model, path, num_classes, channels, &train_device)?,
        None => fresh_model(config, num_classes, channels, &train_device)?,
    })
}

/// `config.model` freshly initialized for `num_classes` classes and `channels` input
/// channels, its residual units zeroed when `config.zero_init_residual` asks.
fn fresh_model(
    config: &TrainConfig,
    num_classes: usize,
    channels: usize,
    device: &Device,
) -> Result<Classifier, TrainError> {
    let model = konv_models::build_for(&config.model, num_classes, channels, device)?;
    if !config.zero_init_residual {
        return Ok(model);
    }
    model
        .with_zero_init_residual()
        .map_err(|e| TrainError::setting("zero_init_residual", format!("{}: {e}", config.model)))
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
    model: M,
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
        return Err(TrainError::setting(
            "limit",
            "the training set is empty".into(),
        ));
    }
    let settings = &config.settings;
    let (rows, cols) = settings
        .augment
        .output_size(data.train.images.rows, data.train.images.cols);
    let input = [data.train.images.channels, rows, cols];
    check_training_input(&model, config, input, num_classes)?;
    let preprocess = Some(Arc::new(settings.augment.eval_steps()));
    let mut task = ClassifyTask {
        step: ClassifyStep {
            label_smoothing: config.label_smoothing,
        },
        name: &config.model,
        data,
        augment: settings.augment_schedule(),
        batch_size: settings.batch_size,
        num_classes,
        preprocess: preprocess.clone(),
        side: rows.min(cols),
        loader: None,
    };
    let fitted = crate::engine::fit(settings, model, &mut task, device, run, state, observer)?;
    let test = evaluate_with(
        &fitted.best,
        &data.test,
        data.normalize,
        settings.batch_size,
        num_classes,
        preprocess,
    )?;
    Ok(TrainOutcome {
        model: fitted.last,
        best: fitted.best,
        best_epoch: fitted.best_epoch,
        monitor: fitted.monitor,
        history: fitted.history.into_iter().map(|e| e.metrics).collect(),
        test,
        stopped_early: fitted.stopped_early,
    })
}

/// Builds the model a run trained and loads its best weights (or `weights`, when given) on
/// `device`.
///
/// # Errors
/// A run folder without a readable `config.json`, an unknown model, or weights that do not
/// fit it.
pub fn load_run_model(
    run: &RunDir,
    weights: Option<&std::path::Path>,
    device: &Device,
) -> Result<(RunInfo, Classifier), TrainError> {
    let info = RunInfo::read(run)?;
    let channels = info.input[0];
    let model =
        konv_models::build_for(&info.config.model, info.class_names.len(), channels, device)?;
    let path = weights.map_or_else(
        || run.path.join(crate::run::BEST),
        std::path::Path::to_path_buf,
    );
    Ok((info.clone(), crate::run::load_module(model, &path)?))
}
