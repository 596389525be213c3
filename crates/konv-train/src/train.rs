//! The training loop: SGD with momentum/Nesterov on cross-entropy, validation each epoch,
//! metrics and checkpoints written to a run folder.

use std::sync::Arc;
use std::time::Instant;

use burn::grad_clipping::GradientClippingConfig;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
use burn::prelude::*;
use konv_datasets::{Dataset, ImageSet};
use konv_models::Classifier;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::augment::Pipeline;
use crate::backend::BackendName;
use crate::data::{ImageBatch, Normalize, loader};
use crate::eval::{EvalReport, evaluate};
use crate::observer::Observer;
use crate::run::{BEST, CHECKPOINT, RunDir};
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
    /// Start from these weights (a run's `best.bpk` or `checkpoint.bpk`) instead of a fresh
    /// initialization: to fine-tune at a lower learning rate, for example.
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
    /// Stop when the validation accuracy has not improved for this many epochs (Keras'
    /// `EarlyStopping(patience=…, restore_best_weights=True)`: the best epoch's weights are
    /// the result either way).
    #[serde(default)]
    pub early_stop: Option<usize>,
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
        }
    }
}

impl TrainConfig {
    /// SGD as Keras and PyTorch define it: Burn's `MomentumConfig` defaults `dampening` to
    /// 0.1, Keras and PyTorch use 0.
    pub fn optimizer(&self) -> ModuleOptimizer {
        let momentum = (self.momentum > 0.0).then(|| {
            MomentumConfig::new()
                .with_momentum(self.momentum)
                .with_dampening(0.0)
                .with_nesterov(self.nesterov)
        });
        SgdConfig::new()
            .with_momentum(momentum)
            .with_weight_decay(
                (self.weight_decay > 0.0).then(|| WeightDecayConfig::new(self.weight_decay as f32)),
            )
            .with_gradient_clipping(
                self.clip_grad_norm
                    .map(|norm| GradientClippingConfig::Norm(norm as f32)),
            )
            .init()
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
        let (train, val) = dataset.train.split_validation(val_size, seed);
        let train = match limit {
            Some(n) => train.take(n),
            None => train,
        };
        let (mean, std) = dataset.name.mean_std();
        SplitData {
            train: Arc::new(train),
            val: Arc::new(val),
            test: Arc::new(dataset.test.clone()),
            normalize: Normalize { mean, std },
        }
    }
}

/// The result of [`train`].
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// The model after the last epoch.
    pub model: Classifier,
    /// The model of the epoch with the best validation accuracy.
    pub best: Classifier,
    /// Metrics of every epoch.
    pub history: Vec<EpochMetrics>,
    /// The epoch of `best` (the first with the highest validation accuracy), 1-based.
    pub best_epoch: usize,
    /// Test-set evaluation of the best model.
    pub test: EvalReport,
    /// The epoch early stopping ended the run at, if it did.
    pub stopped_early: Option<usize>,
}

/// One optimization step on `batch`: returns the updated model, the batch's mean loss and
/// its number of correct predictions.
pub fn train_step(
    model: Classifier,
    optim: &mut ModuleOptimizer,
    batch: ImageBatch,
    lr: f64,
) -> (Classifier, f64, usize) {
    let device = batch.images.device();
    let logits = model.forward(batch.images);
    let correct = logits
        .clone()
        .argmax(1)
        .squeeze_dim::<1>(1)
        .equal(batch.targets.clone())
        .int()
        .sum();
    let loss = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits, batch.targets);
    let loss_value = loss.clone().into_scalar::<f64>();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let model = optim.step(lr, model, grads);
    (model, loss_value, correct.into_scalar::<i64>() as usize)
}

/// Fails with a clear error when `model` (named `name`) cannot take `input` images (LeNet-5
/// needs 32×32, say), instead of a panic deep in a convolution.
pub fn check_input(model: &Classifier, name: &str, input: [usize; 3]) -> Result<(), TrainError> {
    konv_models::summary::checked(model, &input)
        .map(|_| ())
        .map_err(|e| {
            TrainError::Config(format!(
                "model `{name}` cannot take the dataset's {}×{} images: {e}",
                input[1], input[2]
            ))
        })
}

/// [`check_input`] by model name, before anything is written.
pub fn check_model_input(
    name: &str,
    num_classes: usize,
    input: [usize; 3],
) -> Result<(), TrainError> {
    let model = konv_models::build_for(name, num_classes, input[0], &Device::flex())?;
    check_input(&model, name, input)
}

/// Trains `config.model` on `data`, on `device` (autodiff is added here), reporting to
/// `observer` and, when `run` is given, writing metrics and checkpoints there after each epoch.
pub fn train(
    config: &TrainConfig,
    num_classes: usize,
    data: &SplitData,
    device: &Device,
    run: Option<&RunDir>,
    observer: &mut dyn Observer,
) -> Result<TrainOutcome, TrainError> {
    if config.batch_size == 0 || config.epochs == 0 {
        return Err(TrainError::Config(
            "--epochs and --batch-size must be at least 1".into(),
        ));
    }
    if data.train.is_empty() {
        return Err(TrainError::Config("the training set is empty".into()));
    }
    let train_device = device.clone().autodiff();
    train_device.seed(config.seed);
    // konv's datasets are grayscale: every model is built for one input channel.
    let mut model = konv_models::build_for(&config.model, num_classes, 1, &train_device)?;
    check_input(
        &model,
        &config.model,
        [1, data.train.images.rows, data.train.images.cols],
    )?;
    if let Some(path) = &config.init_from {
        model = crate::run::load_weights(model, path)?;
    }
    let mut optim = config.optimizer();
    let mut schedule = ScheduleDriver::new(
        &config.lr_schedule,
        config.lr,
        data.train.len().div_ceil(config.batch_size),
        config.epochs,
    )
    .map_err(|e| TrainError::Config(format!("--lr-schedule: {e}")))?;
    let mut best = (f64::NEG_INFINITY, model.valid(), 0);
    let mut history = Vec::new();
    let augment = Arc::new(config.augment.clone());
    let mut stopped_early = None;

    for epoch in 1..=config.epochs {
        let start = Instant::now();
        let shuffle_seed = config
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(epoch as u64);
        let batches = loader(
            data.train.clone(),
            data.normalize,
            config.batch_size,
            Some(shuffle_seed),
            Some(augment.clone()),
            &train_device,
        );
        let steps = data.train.len().div_ceil(config.batch_size);
        observer.epoch_start(epoch, config.epochs, steps);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        for batch in batches.iter() {
            let batch = batch.map_err(|e| TrainError::Config(e.to_string()))?;
            let n = batch.targets.dims()[0];
            let lr = schedule.next_lr();
            let (next, loss, ok) = train_step(model, &mut optim, batch, lr);
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
        }
        let train_secs = start.elapsed().as_secs_f64();
        let valid = model.valid();
        let val = evaluate(
            &valid,
            &data.val,
            data.normalize,
            config.batch_size,
            num_classes,
        );
        let metrics = EpochMetrics {
            epoch,
            train_loss: loss_sum / seen as f64,
            train_accuracy: correct as f64 / seen as f64,
            val_loss: val.loss,
            val_accuracy: val.accuracy(),
            lr: schedule.current_lr(),
            images_per_sec: seen as f64 / train_secs,
            seconds: start.elapsed().as_secs_f64(),
        };
        schedule.epoch_end(val.loss);
        let improved = metrics.val_accuracy > best.0;
        if improved {
            best = (metrics.val_accuracy, valid.clone(), epoch);
        }
        history.push(metrics.clone());
        if let Some(run) = run {
            run.save_model(CHECKPOINT, &valid)?;
            let optim_bytes = optim
                .into_bytes()
                .map_err(|e| TrainError::Record(run.path.join("optimizer.bpk"), e.to_string()))?;
            run.save_optimizer(&optim_bytes)?;
            if improved {
                run.save_model(BEST, &valid)?;
            }
            run.write_metrics(&history)?;
        }
        observer.epoch_end(&metrics, improved);
        if let Some(patience) = config.early_stop
            && epoch - best.2 >= patience.max(1)
        {
            stopped_early = Some(epoch);
            break;
        }
    }
    let test = evaluate(
        &best.1,
        &data.test,
        data.normalize,
        config.batch_size,
        num_classes,
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
