//! The one training loop every task runs on: classification, localization, segmentation
//! and detection.
//!
//! A [`Task`] says what a batch is, how the model turns one into a loss, and how a model is
//! validated (as Burn's `TrainStep`/`InferenceStep`, Keras' `train_step`/`test_step` or
//! PyTorch Lightning's `training_step`/`validation_step`); [`fit`] does everything else, the
//! same way for every task:
//!
//! - the optimizer ([`Settings::optimizer_settings`]) and the learning-rate schedule, stepped
//!   per batch, told the validation loss per epoch;
//! - transfer learning's frozen phase ([`Settings::freeze_epochs`]): only the head trains at
//!   `head_lr`, then everything trains with a fresh optimizer;
//! - data parallelism over CPU cores ([`Settings::replicas`], [`crate::parallel`]);
//! - progressive resizing ([`Settings::progressive_resize`]) where the task can resize a
//!   batch;
//! - a moving average of the weights ([`Settings::ema`], [`crate::ema`]): validated, kept as
//!   the best and returned in place of the trained weights;
//! - the best epoch by a [`Monitor`]ed metric, early stopping, `metrics.csv`, `curves.png`,
//!   the progress bar;
//! - a crash-safe commit of every epoch into the run folder and an exact `--resume`: each
//!   epoch's randomness is seeded by the run's seed and the epoch's number
//!   ([`crate::record::epoch_seed`]), so on a CPU backend a resumed run ends where the
//!   uninterrupted one would have.

use std::time::Instant;

use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::augment::{AugmentSchedule, Pipeline};
use crate::ema::ModelEma;
use crate::observer::Observer;
use crate::optim::{OptimizerName, OptimizerSettings};
use crate::progressive::ProgressiveResize;
use crate::record::{EpochMetrics, EpochRecord, TrainState, epoch_seed};
use crate::run::{BEST, RunDir};
use crate::schedule::{LrSchedule, ScheduleDriver};

/// How to train, whatever the task: the settings every task's configuration embeds (and
/// writes flat into its `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Passes over the training set.
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning-rate schedule.
    pub lr_schedule: LrSchedule,
    /// The optimizer.
    pub optimizer: OptimizerName,
    /// SGD momentum (0 for plain SGD).
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 weight decay (PyTorch SGD's `weight_decay`); 0 for none.
    pub weight_decay: f64,
    /// Keep weight decay off biases and normalization parameters.
    pub no_decay_bias_norm: bool,
    /// Clip each parameter's gradient to this L2 norm.
    pub clip_grad_norm: Option<f64>,
    /// Augmentation of the training examples (none when empty).
    pub augment: Pipeline,
    /// From this epoch on (counting from 1) the training examples are no longer augmented:
    /// only `augment`'s evaluation steps (`resize`) run ([`AugmentSchedule`]). `None` keeps
    /// augmenting to the end.
    pub augment_off_epoch: Option<usize>,
    /// Seed of weights, dropout, the validation split, the shuffles and augmentation.
    pub seed: u64,
    /// Train on this many training examples only.
    pub limit: Option<usize>,
    /// Examples held out of the training set for validation (when the data has no
    /// validation set of its own).
    pub val_size: usize,
    /// Transfer learning's first phase: for this many epochs only the head trains (the
    /// backbone frozen), at `head_lr`; then everything trains with a fresh optimizer at
    /// `lr` and `lr_schedule` over the remaining epochs.
    pub freeze_epochs: usize,
    /// Learning rate of the frozen phase (`lr` when absent).
    pub head_lr: Option<f64>,
    /// What picks the best epoch and what early stopping watches; the task's own choice
    /// when absent ([`Task::default_monitor`]).
    pub monitor: Option<Monitor>,
    /// Stop when the monitored metric has not improved for this many epochs (Keras'
    /// `EarlyStopping(patience=…, restore_best_weights=True)`).
    pub early_stop: Option<usize>,
    /// Epoch checkpoints kept besides the best (the newest ones); at least 1.
    pub keep_checkpoints: usize,
    /// Model replicas each batch is split between, one CPU thread each, gradients summed
    /// ([`crate::parallel`]); 1 trains one model with the backend's own threading.
    pub replicas: usize,
    /// Train the first epochs on smaller inputs ([`crate::progressive`]); validation and
    /// test stay at the full size.
    pub progressive_resize: Option<ProgressiveResize>,
    /// Keep an exponential moving average of the weights with this decay (e.g. 0.999),
    /// updated after every step ([`crate::ema`]). Validation, the best epoch and the
    /// returned models are then the average's; the trained weights stay in the epoch
    /// checkpoints, for resuming.
    pub ema: Option<f64>,
}

impl Default for Settings {
    /// Classification's defaults: SGD with Nesterov momentum at 0.01, batch 64, 10 epochs.
    fn default() -> Self {
        Settings {
            epochs: 10,
            batch_size: 64,
            lr: 0.01,
            lr_schedule: LrSchedule::Constant,
            optimizer: OptimizerName::Sgd,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.0,
            no_decay_bias_norm: false,
            clip_grad_norm: None,
            augment: Pipeline::default(),
            augment_off_epoch: None,
            seed: 42,
            limit: None,
            val_size: 5000,
            freeze_epochs: 0,
            head_lr: None,
            monitor: None,
            early_stop: None,
            keep_checkpoints: 1,
            replicas: 1,
            progressive_resize: None,
            ema: None,
        }
    }
}

impl Settings {
    /// Settings that cannot work together, as a [`TrainError::Setting`] naming the setting.
    ///
    /// # Errors
    /// The first bad setting.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |name: &'static str, reason: String| Err(TrainError::setting(name, reason));
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if self.limit == Some(0) {
            return bad(
                "limit",
                "0 leaves no training examples; give at least 1 (or drop it to train on all)"
                    .into(),
            );
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad(
                "lr",
                format!(
                    "{} is not a learning rate; give a number such as 0.01",
                    self.lr
                ),
            );
        }
        if self.replicas == 0 || self.replicas > self.batch_size {
            return bad(
                "replicas",
                format!(
                    "{} must be between 1 and the batch size {} (each replica takes a share of every batch)",
                    self.replicas, self.batch_size
                ),
            );
        }
        if self.freeze_epochs >= self.epochs {
            return bad(
                "freeze_epochs",
                format!(
                    "{} leaves no epoch to fine-tune in ({} epochs)",
                    self.freeze_epochs, self.epochs
                ),
            );
        }
        if let Some(p) = &self.progressive_resize {
            p.validate(self.epochs)
                .map_err(|e| TrainError::setting("progressive_resize", e))?;
        }
        if let Some(off) = self.augment_off_epoch {
            if off == 0 || off > self.epochs {
                return bad(
                    "augment_off_epoch",
                    format!(
                        "{off} is not an epoch of this run; give one from 1 to {} (the first epoch without augmentation)",
                        self.epochs
                    ),
                );
            }
            if self.augment.eval_steps() == self.augment {
                return bad(
                    "augment_off_epoch",
                    "has no augmentation to turn off; add random steps with augment (e.g. flip,crop=2)"
                        .into(),
                );
            }
        }
        if let Some(decay) = self.ema
            && !(decay > 0.0 && decay < 1.0)
        {
            return bad(
                "ema",
                format!("{decay} is not a decay; give one between 0 and 1, such as 0.999"),
            );
        }
        if self.monitor == Some(Monitor::Last)
            && let Some(patience) = self.early_stop
        {
            return bad(
                "early_stop",
                format!(
                    "{patience} watches a validation metric; monitor val-accuracy, val-loss or score with it, not last"
                ),
            );
        }
        Ok(())
    }

    /// The monitor that picks the best epoch: [`Settings::monitor`], else `default` (the
    /// task's); [`Monitor::Last`] when the run has no validation examples.
    ///
    /// # Errors
    /// Without validation examples, what [`Settings::check_without_validation`] refuses.
    pub fn monitor_for(
        &self,
        default: Monitor,
        has_validation: bool,
    ) -> Result<Monitor, TrainError> {
        if has_validation {
            return Ok(self.monitor.unwrap_or(default));
        }
        self.check_without_validation()?;
        Ok(Monitor::Last)
    }

    /// For a task that holds [`Settings::val_size`] examples out of its own data (the localize,
    /// segment and detect tasks): with none held out, what
    /// [`Settings::check_without_validation`] refuses, checked before any data is made.
    ///
    /// # Errors
    /// As [`Settings::check_without_validation`], when `val_size` is 0.
    pub fn check_val_size(&self) -> Result<(), TrainError> {
        if self.val_size == 0 {
            self.check_without_validation()
        } else {
            Ok(())
        }
    }

    /// Can these settings train without validation examples (a run that holds none out)?
    ///
    /// # Errors
    /// The settings that watch validation: a validation monitor, `early_stop`, or a
    /// `plateau` schedule (each error says what to change).
    pub fn check_without_validation(&self) -> Result<(), TrainError> {
        let bad = |name: &'static str, reason: String| Err(TrainError::setting(name, reason));
        let none = "the run holds no validation examples out";
        if let Some(monitor) = self.monitor
            && monitor != Monitor::Last
        {
            return bad(
                "monitor",
                format!(
                    "{monitor} watches validation, and {none}; hold some out (a validation size above 0) or monitor last"
                ),
            );
        }
        if let Some(patience) = self.early_stop {
            return bad(
                "early_stop",
                format!(
                    "{patience} watches validation, and {none}; hold some out (a validation size above 0) or train without early stopping"
                ),
            );
        }
        if matches!(self.lr_schedule, LrSchedule::Plateau { .. }) {
            return bad(
                "lr_schedule",
                format!(
                    "{} watches the validation loss, and {none}; hold some out (a validation size above 0) or choose another schedule",
                    self.lr_schedule
                ),
            );
        }
        Ok(())
    }

    /// The run's augmentation over its epochs: `augment` until `augment_off_epoch`.
    pub fn augment_schedule(&self) -> AugmentSchedule {
        AugmentSchedule::new(self.augment.clone(), self.augment_off_epoch)
    }

    /// The optimizer settings.
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

    /// The optimizer for `model`: the one way every task builds it.
    pub fn optimizer<M: Module>(&self, model: &M) -> ModuleOptimizer {
        self.optimizer_settings().build(model)
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
    /// Highest task score ([`Task::score_name`]: mean IoU, mAP@0.5 …).
    Score,
    /// The last epoch, whatever validation says: the weights a run ends with, as Keras
    /// `fit` and torchvision's reference `train.py` keep them. With a small validation set,
    /// picking the best epoch is noise; with a schedule that anneals to zero (one-cycle,
    /// cosine), the last epoch is the one to test.
    Last,
}

impl Monitor {
    /// Higher is better: the accuracy, minus the loss, the task's score, or the epoch.
    pub fn score(self, m: &EpochMetrics, task_score: f64) -> f64 {
        match self {
            Monitor::ValAccuracy => m.val_accuracy,
            Monitor::ValLoss => -m.val_loss,
            Monitor::Score => task_score,
            Monitor::Last => m.epoch as f64,
        }
    }
}

impl std::fmt::Display for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Monitor::ValAccuracy => "val-accuracy",
            Monitor::ValLoss => "val-loss",
            Monitor::Score => "score",
            Monitor::Last => "last",
        })
    }
}

impl std::str::FromStr for Monitor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "val-accuracy" => Ok(Monitor::ValAccuracy),
            "val-loss" => Ok(Monitor::ValLoss),
            "score" => Ok(Monitor::Score),
            "last" => Ok(Monitor::Last),
            _ => Err(format!(
                "unknown monitor `{s}`; valid: val-accuracy, val-loss, score (the task's: mean IoU, mAP@0.5), last"
            )),
        }
    }
}

/// The loss of one training batch, with what the task counts of it.
#[derive(Debug, Clone)]
pub struct StepLoss {
    /// Scalar loss to minimize (on the autodiff device).
    pub loss: Tensor<1>,
    /// Right predictions in the batch (the task decides what counts: images, pixels,
    /// cells…).
    pub right: usize,
    /// Predictions counted.
    pub counted: usize,
    /// Sums over the batch's examples of the task's training columns
    /// ([`Task::train_columns`]), averaged over the epoch's examples.
    pub sums: Vec<f64>,
}

/// What a task reports of a model on its validation set.
#[derive(Debug, Clone, PartialEq)]
pub struct Validation {
    /// Mean loss.
    pub loss: f64,
    /// Accuracy (the task's notion).
    pub accuracy: f64,
    /// The task's score ([`Monitor::Score`]; higher is better).
    pub score: f64,
    /// The task's validation columns of `metrics.csv`, by name.
    pub columns: Vec<(&'static str, f64)>,
}

impl Validation {
    /// What an epoch of a task without validation examples records: NaN throughout.
    pub fn none() -> Self {
        Validation {
            loss: f64::NAN,
            accuracy: f64::NAN,
            score: f64::NAN,
            columns: Vec::new(),
        }
    }
}

/// What one optimization step of a task needs: its batches, their loss, and how to split
/// one between replicas ([`crate::parallel`]).
pub trait Step<M: Module>: Sync {
    /// One batch, ready for the model.
    type Batch: Send;

    /// Examples in `batch`.
    fn batch_len(&self, batch: &Self::Batch) -> usize;

    /// The loss of `batch` (training mode). `frozen`: the frozen phase, where the task runs
    /// the backbone as it is meant to be frozen (for a classifier, in inference mode).
    ///
    /// # Errors
    /// When the batch does not fit the task.
    fn loss(&self, model: &M, batch: Self::Batch, frozen: bool) -> Result<StepLoss, TrainError>;

    /// Rows `start..start + len` of `batch` (for [`Settings::replicas`]).
    fn split(&self, batch: &Self::Batch, start: usize, len: usize) -> Self::Batch;
}

/// A task [`fit`] can train model `M` on: its steps, its epochs of data, its validation.
pub trait Task<M: Module>: Step<M> {
    /// Training examples.
    fn train_len(&self) -> usize;

    /// Prepares epoch `epoch`'s batches: the run's `seed` and the epoch's own seed
    /// ([`epoch_seed`]) decide the shuffle and the augmentation; `device` is where the
    /// batches go.
    ///
    /// # Errors
    /// When the epoch's data cannot be prepared.
    fn start_epoch(
        &mut self,
        seed: u64,
        epoch: usize,
        epoch_seed: u64,
        device: &Device,
    ) -> Result<(), TrainError>;

    /// The batches of the epoch [`Task::start_epoch`] prepared.
    fn batches(&self) -> Box<dyn Iterator<Item = Result<Self::Batch, TrainError>> + '_>;

    /// The shorter side of the training inputs (what [`Settings::progressive_resize`]
    /// shrinks).
    fn input_side(&self) -> usize;

    /// `batch` with its inputs shrunk to shorter side `side` (and its targets to match).
    ///
    /// # Errors
    /// Where the task's targets cannot follow a resize, one line saying why; it is asked
    /// once, with the full side, before training starts.
    fn resize(&self, batch: Self::Batch, side: usize) -> Result<Self::Batch, String>;

    /// Can the task resize batches at all? Asked before training when progressive resizing
    /// is on.
    ///
    /// # Errors
    /// One line saying why not.
    fn can_resize(&self) -> Result<(), String> {
        Ok(())
    }

    /// `model` with its backbone frozen (the frozen phase).
    ///
    /// # Errors
    /// One line, when the model has no backbone/head split.
    fn freeze(&self, model: M) -> Result<M, String>;

    /// Validates `model` (in inference mode).
    ///
    /// # Errors
    /// A batch that could not be made or a device that failed ([`TrainError::Device`]); the
    /// run stops there, keeping its last finished epoch.
    fn validate(&self, model: &M) -> Result<Validation, TrainError>;

    /// Names of the training columns of `metrics.csv` ([`StepLoss::sums`]).
    fn train_columns(&self) -> &'static [&'static str] {
        &[]
    }

    /// The task's score on the progress line (`mIoU`, `mAP@0.5`); empty for none.
    fn score_label(&self) -> &'static str {
        ""
    }

    /// What picks the best epoch when the settings do not say.
    fn default_monitor(&self) -> Monitor;

    /// Does the task hold validation examples? Without them (a run that holds none out,
    /// Keras' `validation_split=0`) [`fit`] does not validate: the run keeps its last epoch,
    /// records the validation metrics as NaN, and refuses settings that watch them.
    fn has_validation(&self) -> bool {
        true
    }
}

/// What [`fit`] returns.
#[derive(Debug, Clone)]
pub struct Fitted<M> {
    /// The weights after the last epoch, in inference mode (their moving average with
    /// [`Settings::ema`]).
    pub last: M,
    /// The weights of the best epoch under the monitor, in inference mode (the moving
    /// average's with [`Settings::ema`]).
    pub best: M,
    /// Which epoch `best` is.
    pub best_epoch: usize,
    /// What picked `best` ([`Settings::monitor_for`]).
    pub monitor: Monitor,
    /// Every epoch.
    pub history: Vec<EpochRecord>,
    /// The epoch early stopping ended the run at, if it did.
    pub stopped_early: Option<usize>,
}

/// `model` on `device` with autodiff, ready to train (as it is when already there).
pub fn onto_training_device<M: Module>(model: M, device: &Device) -> M {
    let train_device = training_device(device);
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

/// `device` with autodiff.
pub fn training_device(device: &Device) -> Device {
    if device.is_autodiff() {
        device.clone()
    } else {
        device.clone().autodiff()
    }
}

/// Trains `model` on `task` as `settings` say, on `device` (autodiff is added), writing
/// every epoch into `run` when given; `resume` continues from a run's `state.json`
/// ([`RunDir::read_state`]) into the same `run`.
///
/// # Errors
/// Bad settings ([`TrainError::Setting`]), a loss that is not finite
/// ([`TrainError::Diverged`]), an interrupt, a checkpoint that does not fit, or a run folder
/// that cannot be written.
pub fn fit<M, T>(
    settings: &Settings,
    model: M,
    task: &mut T,
    device: &Device,
    run: Option<&RunDir>,
    resume: Option<TrainState>,
    observer: &mut dyn Observer,
) -> Result<Fitted<M>, TrainError>
where
    M: Module,
    T: Task<M>,
{
    settings.validate()?;
    let len = task.train_len();
    if len == 0 {
        return Err(TrainError::setting(
            "limit",
            "the training set is empty".into(),
        ));
    }
    if settings.progressive_resize.is_some() {
        task.can_resize()
            .map_err(|e| TrainError::setting("progressive_resize", e))?;
    }
    let has_validation = task.has_validation();
    let monitor = settings.monitor_for(task.default_monitor(), has_validation)?;
    let train_device = training_device(device);
    let mut model = onto_training_device(model, device);
    let steps = len.div_ceil(settings.batch_size);
    let fine_tune = |model: &M| -> Result<(ModuleOptimizer, ScheduleDriver), TrainError> {
        let schedule = ScheduleDriver::new(
            &settings.lr_schedule,
            settings.lr,
            steps,
            settings.epochs - settings.freeze_epochs,
        )
        .map_err(|e| TrainError::setting("lr_schedule", e))?;
        Ok((settings.optimizer(model), schedule))
    };
    let mut frozen = settings.freeze_epochs > 0;
    if frozen {
        model = task
            .freeze(model)
            .map_err(|e| TrainError::setting("freeze_epochs", e))?;
    }
    let (mut optim, mut schedule) = fine_tune(&model)?;
    let mut history: Vec<EpochRecord> = Vec::new();
    // (Not `model.valid()` yet: that would initialize lazily initialized parameters here,
    // before the first epoch's seed, which is where a fresh model draws them.)
    let mut best: Option<(f64, M, usize)> = None;
    // (Empty until the first step, for the same reason.)
    let mut ema = settings.ema.map(ModelEma::new);
    let mut first_epoch = 1;
    if let Some(state) = resume {
        let Some(run) = run else {
            return Err(TrainError::setting(
                "resume",
                "a resumed run needs its run folder".into(),
            ));
        };
        if state.epoch >= settings.epochs {
            return Err(TrainError::Finished {
                path: run.path.clone(),
                epochs: settings.epochs,
            });
        }
        model = crate::run::load_module(model, &run.path.join(&state.checkpoint))?;
        if frozen && state.epoch >= settings.freeze_epochs {
            model = model.unfreeze();
            frozen = false;
        }
        // Built on the loaded parameters: their ids (restored from the checkpoint) are what
        // parameter groups such as the no-decay one match.
        (optim, schedule) = fine_tune(&model)?;
        // Right after the frozen phase the fine-tuning optimizer starts fresh.
        if !(settings.freeze_epochs > 0 && state.epoch == settings.freeze_epochs) {
            optim = run.load_optimizer(optim, &state.optimizer)?;
        }
        // Replay the schedule through the finished fine-tuning epochs.
        for e in &state.history[settings.freeze_epochs.min(state.epoch)..state.epoch] {
            for _ in 0..steps {
                schedule.next_lr();
            }
            schedule.epoch_end(e.metrics.val_loss);
        }
        if let Some(decay) = settings.ema {
            let Some(name) = &state.ema else {
                return Err(TrainError::setting(
                    "ema",
                    format!(
                        "{} names no moving average of the weights (written without one); remove \"ema\" from {} to resume without it",
                        run.path.join(crate::run::STATE).display(),
                        run.path.join(crate::run::CONFIG).display()
                    ),
                ));
            };
            let average = crate::run::load_module(model.valid(), &run.path.join(name))?;
            ema = Some(ModelEma::resume(decay, average, state.ema_updates));
        }
        if state.best_epoch > 0 {
            let best_model = crate::run::load_module(model.valid(), &run.path.join(BEST))?;
            best = Some((state.best_score, best_model, state.best_epoch));
        }
        history = state.history;
        first_epoch = state.epoch + 1;
    }
    let replicas = match settings.replicas {
        0 | 1 => None,
        n => Some(crate::parallel::Replicas::new(n)?),
    };
    let mut stopped_early = None;
    for epoch in first_epoch..=settings.epochs {
        if frozen && epoch > settings.freeze_epochs {
            // Everything trains now, with a fresh optimizer (Keras recompiles).
            model = model.unfreeze();
            frozen = false;
            (optim, schedule) = fine_tune(&model)?;
        }
        let start = Instant::now();
        let seed = epoch_seed(settings.seed, epoch);
        train_device.seed(seed);
        task.start_epoch(settings.seed, epoch, seed, &train_device)?;
        observer.epoch_start(epoch, settings.epochs, steps);
        let mut totals = Totals::new(task.train_columns().len());
        let mut lr = settings.head_lr.unwrap_or(settings.lr);
        let side = settings
            .progressive_resize
            .map(|p| p.size_at(epoch, task.input_side()));
        for batch in task.batches() {
            let mut batch = batch?;
            if let Some(side) = side {
                batch = task
                    .resize(batch, side)
                    .map_err(|e| TrainError::setting("progressive_resize", e))?;
            }
            let n = task.batch_len(&batch);
            let step = totals.seen / settings.batch_size + 1;
            let (next, step_totals) = if frozen {
                single_step(&*task, model, &mut optim, batch, lr, true)?
            } else {
                lr = schedule.next_lr();
                match &replicas {
                    Some(replicas) => crate::parallel::parallel_step(
                        &*task, model, &mut optim, batch, lr, replicas,
                    )?,
                    None => single_step(&*task, model, &mut optim, batch, lr, false)?,
                }
            };
            model = next;
            if !step_totals.loss.is_finite() {
                return Err(TrainError::Diverged { epoch, step });
            }
            if let Some(ema) = &mut ema {
                ema.update(&model);
            }
            totals.add(&step_totals, n);
            observer.step(
                totals.seen,
                totals.loss / totals.seen as f64,
                totals.right as f64 / totals.counted.max(1) as f64,
                totals.seen as f64 / start.elapsed().as_secs_f64(),
            );
            if observer.interrupted() {
                return Err(TrainError::Interrupted { epoch });
            }
        }
        let train_secs = start.elapsed().as_secs_f64();
        let valid = model.valid();
        // What is validated and kept: the average when there is one (a copy that later
        // updates leave alone), else the trained weights.
        let judged = ema
            .as_ref()
            .and_then(ModelEma::snapshot)
            .unwrap_or_else(|| valid.clone());
        let val = if has_validation {
            task.validate(&judged)?
        } else {
            Validation::none()
        };
        if !frozen {
            schedule.epoch_end(val.loss);
        }
        let seen = totals.seen.max(1) as f64;
        let metrics = EpochMetrics {
            epoch,
            train_loss: totals.loss / seen,
            train_accuracy: totals.right as f64 / totals.counted.max(1) as f64,
            val_loss: val.loss,
            val_accuracy: val.accuracy,
            lr,
            images_per_sec: totals.seen as f64 / train_secs,
            seconds: start.elapsed().as_secs_f64(),
        };
        let mut extra: Vec<(String, f64)> = task
            .train_columns()
            .iter()
            .zip(&totals.sums)
            .map(|(name, sum)| (name.to_string(), sum / seen))
            .collect();
        extra.extend(val.columns.iter().map(|(n, v)| (n.to_string(), *v)));
        let score = monitor.score(&metrics, val.score);
        let improved = best.as_ref().is_none_or(|(b, _, _)| score > *b);
        if improved {
            best = Some((score, judged.clone(), epoch));
        }
        let (best_score, _, best_epoch) = best.as_ref().expect("set on the first epoch");
        let (best_score, best_epoch) = (*best_score, *best_epoch);
        history.push(EpochRecord {
            metrics: metrics.clone(),
            extra,
        });
        if let Some(run) = run {
            run.save_epoch(
                &valid,
                &optim,
                ema.as_ref().map(|e| (&judged, e.updates())),
                improved,
                TrainState {
                    epoch,
                    history: history.clone(),
                    best_epoch,
                    best_score,
                    checkpoint: String::new(),
                    optimizer: String::new(),
                    ema: None,
                    ema_updates: 0,
                },
                settings.keep_checkpoints,
            )?;
        }
        let label = task.score_label();
        let shown = if label.is_empty() {
            String::new()
        } else {
            format!("  {label} {:.3}", val.score)
        };
        observer.epoch_end_with(&metrics, improved, &shown);
        if let Some(patience) = settings.early_stop
            && epoch - best_epoch >= patience.max(1)
        {
            stopped_early = Some(epoch);
            break;
        }
    }
    let (_, best, best_epoch) =
        best.ok_or_else(|| TrainError::setting("epochs", "no epoch ran".into()))?;
    let last = match ema.as_ref().and_then(ModelEma::snapshot) {
        Some(average) => average,
        None => model.valid(),
    };
    Ok(Fitted {
        last,
        best,
        best_epoch,
        monitor,
        history,
        stopped_early,
    })
}

/// What the steps of an epoch add up to.
struct Totals {
    loss: f64,
    right: usize,
    counted: usize,
    seen: usize,
    sums: Vec<f64>,
}

impl Totals {
    fn new(columns: usize) -> Self {
        Totals {
            loss: 0.0,
            right: 0,
            counted: 0,
            seen: 0,
            sums: vec![0.0; columns],
        }
    }

    fn add(&mut self, step: &StepTotals, n: usize) {
        self.loss += step.loss * n as f64;
        self.right += step.right;
        self.counted += step.counted;
        self.seen += n;
        for (s, v) in self.sums.iter_mut().zip(&step.sums) {
            *s += v;
        }
    }
}

/// One step's figures: the batch's mean loss, what the task counted, its column sums.
#[derive(Debug, Clone, Default)]
pub struct StepTotals {
    /// The batch's mean loss.
    pub loss: f64,
    /// Right predictions.
    pub right: usize,
    /// Predictions counted.
    pub counted: usize,
    /// The task's column sums.
    pub sums: Vec<f64>,
}

/// One optimization step on `batch` with one model: loss, backward pass, update (none when
/// the loss is not finite; the caller stops).
///
/// # Errors
/// When the batch does not fit the task.
pub fn single_step<M: Module, T: Step<M>>(
    task: &T,
    model: M,
    optim: &mut ModuleOptimizer,
    batch: T::Batch,
    lr: f64,
    frozen: bool,
) -> Result<(M, StepTotals), TrainError> {
    let out = task.loss(&model, batch, frozen)?;
    let loss = read_loss(out.loss.clone())?;
    let totals = StepTotals {
        loss,
        right: out.right,
        counted: out.counted,
        sums: out.sums,
    };
    if !loss.is_finite() {
        return Ok((model, totals));
    }
    let grads = GradientsParams::from_grads(out.loss.backward(), &model);
    Ok((optim.step(lr, model, grads), totals))
}

/// Reads a step's loss back from its device. Reading waits for the device to finish the
/// step, so this is where a device that fails (out of memory, a lost GPU) shows: an error,
/// not a panic.
///
/// # Errors
/// [`TrainError::Device`] with the backend's first line.
pub fn read_loss(loss: Tensor<1>) -> Result<f64, TrainError> {
    loss.try_into_scalar::<f64>().map_err(device_error)
}

/// A count (a sum of right answers) read back from its device.
///
/// # Errors
/// [`TrainError::Device`] with the backend's first line.
pub fn read_count(count: Tensor<1, Int>) -> Result<usize, TrainError> {
    count
        .try_into_scalar::<i64>()
        .map(|n| n.max(0) as usize)
        .map_err(device_error)
}

/// A backend's read error as [`TrainError::Device`], with its first line.
pub fn device_error(error: impl std::fmt::Display) -> TrainError {
    let message = error.to_string();
    TrainError::Device(message.lines().next().unwrap_or_default().to_string())
}

/// The values of `tensor`, converted to `E`.
///
/// # Errors
/// [`TrainError::Device`] with the backend's first line.
pub fn read_values<E: burn::tensor::Element, const D: usize, K: burn::tensor::kind::Basic>(
    tensor: Tensor<D, K>,
) -> Result<Vec<E>, TrainError> {
    tensor.try_into_vec_as::<E>().map_err(device_error)
}

/// An epoch of a task that makes its own batches (the dense tasks): the training examples'
/// order shuffled by the epoch's seed, the run's augmentation bound to the epoch, and the
/// device the batches go to.
#[derive(Debug, Clone)]
pub struct EpochPlan {
    order: Vec<usize>,
    batch_size: usize,
    augment: Pipeline,
    seed: u64,
    device: Device,
}

impl EpochPlan {
    /// Epoch `epoch` of a run with seed `seed` and augmentation `augment`, over `len`
    /// examples in batches of `batch_size`: `0..len` shuffled with `epoch_seed`.
    pub fn new(
        augment: &AugmentSchedule,
        len: usize,
        batch_size: usize,
        (seed, epoch, epoch_seed): (u64, usize, u64),
        device: &Device,
    ) -> Self {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        let mut order: Vec<usize> = (0..len).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(epoch_seed));
        EpochPlan {
            order,
            batch_size: batch_size.max(1),
            augment: augment.for_epoch(seed, epoch),
            seed: epoch_seed,
            device: device.clone(),
        }
    }

    /// The epoch's batches, each made by `make` from its examples' indices, the epoch's
    /// augmentation (none when the pipeline is empty) and the device; none before a plan.
    pub fn batches<'a, B: 'a>(
        plan: Option<&'a Self>,
        make: impl Fn(&[usize], Option<(&Pipeline, u64)>, &Device) -> B + 'a,
    ) -> Box<dyn Iterator<Item = Result<B, TrainError>> + 'a> {
        let Some(plan) = plan else {
            return Box::new(std::iter::empty());
        };
        let augment = (!plan.augment.is_empty()).then_some((&plan.augment, plan.seed));
        Box::new(
            plan.order
                .chunks(plan.batch_size)
                .map(move |indices| Ok(make(indices, augment, &plan.device))),
        )
    }
}

/// How a task that makes its own batches turns examples into one: the examples' indices,
/// the epoch's augmentation (pipeline and seed; `None` when there is none) and the device.
pub type MakeBatch<'a, B> =
    dyn Fn(&[usize], Option<(&Pipeline, u64)>, &Device) -> B + Send + Sync + 'a;

/// The training epochs of a task that makes its own batches from `len` examples, for its
/// [`Task::train_len`], [`Task::start_epoch`], [`Task::batches`] and [`Task::input_side`]
/// to hand on to. Each epoch is an [`EpochPlan`] (shuffle and augmentation from the run's
/// seeds), and each batch comes from the task's own [`MakeBatch`].
///
/// ```
/// use burn::prelude::*;
/// use konv_train::engine::{PlannedEpochs, Settings};
///
/// let device = Default::default();
/// let values: Vec<f32> = (0..10).map(|i| i as f32).collect();
/// let augment = Settings::default().augment_schedule();
/// // Ten examples of side 1, in batches of 4: each batch holds its examples' values.
/// let mut epochs = PlannedEpochs::new(values.len(), 1, augment, 4, |indices, _, device| {
///     let rows: Vec<f32> = indices.iter().map(|&i| values[i]).collect();
///     Tensor::<1>::from_data(TensorData::new(rows, [indices.len()]), device)
/// });
/// epochs.start(7, 1, 42, &device);
/// let mut sizes = Vec::new();
/// for batch in epochs.batches() {
///     sizes.push(batch?.dims()[0]);
/// }
/// assert_eq!(sizes, [4, 4, 2]);
/// # Ok::<(), konv_train::TrainError>(())
/// ```
pub struct PlannedEpochs<'a, B> {
    len: usize,
    side: usize,
    augment: AugmentSchedule,
    batch_size: usize,
    make: Box<MakeBatch<'a, B>>,
    plan: Option<EpochPlan>,
}

impl<'a, B: 'a> PlannedEpochs<'a, B> {
    /// Epochs over `len` examples whose inputs have shorter side `side`, augmented by
    /// `augment` ([`Settings::augment_schedule`]), in batches of `batch_size` made by `make`.
    pub fn new(
        len: usize,
        side: usize,
        augment: AugmentSchedule,
        batch_size: usize,
        make: impl Fn(&[usize], Option<(&Pipeline, u64)>, &Device) -> B + Send + Sync + 'a,
    ) -> Self {
        Self {
            len,
            side,
            augment,
            batch_size,
            make: Box::new(make),
            plan: None,
        }
    }

    /// Training examples ([`Task::train_len`]).
    pub fn examples(&self) -> usize {
        self.len
    }

    /// The shorter side of the inputs ([`Task::input_side`]).
    pub fn side(&self) -> usize {
        self.side
    }

    /// Examples per batch (what validation can batch by too).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Plans epoch `epoch` ([`Task::start_epoch`]): its order and augmentation from the
    /// run's `seed` and the epoch's `epoch_seed`; its batches go to `device`.
    pub fn start(&mut self, seed: u64, epoch: usize, epoch_seed: u64, device: &Device) {
        self.plan = Some(EpochPlan::new(
            &self.augment,
            self.len,
            self.batch_size,
            (seed, epoch, epoch_seed),
            device,
        ));
    }

    /// The planned epoch's batches ([`Task::batches`]); none before [`PlannedEpochs::start`].
    pub fn batches(&self) -> Box<dyn Iterator<Item = Result<B, TrainError>> + '_> {
        EpochPlan::batches(self.plan.as_ref(), &*self.make)
    }
}

impl<B> std::fmt::Debug for PlannedEpochs<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlannedEpochs")
            .field("len", &self.len)
            .field("side", &self.side)
            .field("batch_size", &self.batch_size)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

/// Where a task's run starts: its `state.json` when `resuming`; otherwise nothing, after
/// `describe()` is written into the run folder as `config.json`.
///
/// # Errors
/// A missing or corrupt `state.json`, or a `config.json` that cannot be written.
pub fn start_run<C: Serialize>(
    run: Option<&RunDir>,
    resuming: bool,
    describe: impl FnOnce() -> C,
) -> Result<Option<TrainState>, TrainError> {
    match run {
        Some(run) if resuming => Ok(Some(run.read_state()?)),
        Some(run) => {
            run.write_config(&describe())?;
            Ok(None)
        }
        None => Ok(None),
    }
}
