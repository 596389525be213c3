//! The epoch loop the dense-prediction tasks share (detection, segmentation): shuffle,
//! batch, loss, backward, optimizer step on the scheduled learning rate, validation after
//! each epoch, the best weights kept by a validation score, `metrics.csv` and `best.bpk`
//! written atomically as it goes.
//!
//! A task says how a batch becomes a loss and how a model is validated ([`FitTask`]);
//! [`fit`] does the rest, as Keras' `Model.fit` or PyTorch Lightning's `Trainer.fit` drive
//! a module's `training_step` and `validation_step`.
//!
//! With a run folder, every finished epoch is committed crash-safely: the epoch's weights
//! and optimizer state (`epoch-NNNN.bpk`, `epoch-NNNN.optim.bpk`), `best.bpk` when it
//! improved, then `state.json` naming them ([`FitState`], the commit point), then
//! `metrics.csv`; older epoch files are deleted. [`resume`] continues from `state.json`:
//! weights, optimizer state, the schedule replayed, best epoch and history restored, and
//! the remaining epochs draw the same random numbers (each epoch is seeded by the run's
//! seed and its number), so on a CPU backend the resumed run ends where the uninterrupted
//! one would have.

use std::time::Instant;

use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::observer::Observer;
use crate::optim::OptimizerSettings;
use crate::run::{BEST, METRICS, RunDir, STATE, load_module, write_atomic};
use crate::schedule::{LrSchedule, ScheduleDriver};
use crate::train::{EpochMetrics, epoch_seed};

/// How long and how fast to train.
#[derive(Debug, Clone, PartialEq)]
pub struct FitSettings {
    /// Passes over the training set.
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning-rate schedule.
    pub lr_schedule: LrSchedule,
    /// Optimizer.
    pub optimizer: OptimizerSettings,
    /// Seed of the shuffles (and, through the device, dropout and initialization).
    pub seed: u64,
}

/// The loss of one training batch and how many of its predictions were right.
#[derive(Debug, Clone)]
pub struct BatchLoss {
    /// Scalar loss to minimize (on the autodiff device).
    pub loss: Tensor<1>,
    /// Right predictions in the batch (the task decides what counts: pixels, cells…).
    pub right: usize,
    /// Predictions counted.
    pub counted: usize,
}

/// What a task reports of a model on its validation set.
#[derive(Debug, Clone, PartialEq)]
pub struct Validation {
    /// Mean loss.
    pub loss: f64,
    /// Accuracy (the task's notion).
    pub accuracy: f64,
    /// The score the best epoch is chosen by; higher is better (mean IoU, mAP…).
    pub score: f64,
}

/// A task [`fit`] can train: a training set of `len` examples and a validation set.
pub trait FitTask<M: Module> {
    /// Training examples.
    fn train_len(&self) -> usize;
    /// The loss of the training examples `indices` (in this order), augmented with the
    /// epoch's `seed`.
    ///
    /// # Errors
    /// When the batch cannot be built.
    fn batch_loss(
        &mut self,
        model: &M,
        indices: &[usize],
        seed: u64,
    ) -> Result<BatchLoss, TrainError>;
    /// Called before each epoch's batches, with the run's seed and the epoch (from 1): where
    /// the task's augmentation depends on the epoch ([`crate::augment::Pipeline::for_epoch`]).
    fn start_epoch(&mut self, _seed: u64, _epoch: usize) {}
    /// Validates `model` (already in inference mode).
    fn validate(&mut self, model: &M) -> Validation;
    /// The score's column in `metrics.csv` (`val_mean_iou`, `val_map50`).
    fn score_name(&self) -> &'static str;
    /// The score's name on the progress line (`mIoU`, `mAP@0.5`).
    fn score_label(&self) -> &'static str;
}

/// One epoch of [`fit`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitEpoch {
    /// Loss, accuracy, learning rate, speed.
    pub metrics: EpochMetrics,
    /// The validation score.
    pub val_score: f64,
}

/// Where a [`fit`] run stands after its last finished epoch (`state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitState {
    /// Epochs finished.
    pub epoch: usize,
    /// Every finished epoch.
    pub history: Vec<FitEpoch>,
    /// The epoch of `best.bpk`.
    pub best_epoch: usize,
    /// Its validation score.
    pub best_score: f64,
    /// Weights after `epoch`, in the run folder.
    pub checkpoint: String,
    /// Optimizer state after `epoch`, in the run folder.
    pub optimizer: String,
}

impl FitState {
    /// Reads `state.json` of `run`.
    ///
    /// # Errors
    /// A missing file (no epoch finished: nothing to resume) or a corrupt one.
    pub fn read(run: &RunDir) -> Result<Self, TrainError> {
        let path = run.path.join(STATE);
        let corrupt = |reason: String| TrainError::Corrupt {
            path: path.clone(),
            reason,
        };
        let bytes = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                corrupt("missing: the run has not finished an epoch, so there is nothing to resume; start it again".into())
            } else {
                TrainError::io(&path, e)
            }
        })?;
        let state: Self = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if state.history.len() != state.epoch || state.best_epoch > state.epoch {
            return Err(corrupt(format!(
                "{} epochs of metrics and best epoch {} for {} epochs done",
                state.history.len(),
                state.best_epoch,
                state.epoch
            )));
        }
        Ok(state)
    }
}

/// What [`fit`] returns.
#[derive(Debug, Clone)]
pub struct Fitted<M> {
    /// The weights of the best validation epoch, in inference mode.
    pub model: M,
    /// Every epoch.
    pub history: Vec<FitEpoch>,
    /// Which epoch `model` is.
    pub best_epoch: usize,
}

/// Trains `model` on `task` for `settings.epochs` epochs on `device` (an autodiff device),
/// writing `metrics.csv` and `best.bpk` into `run` after every epoch.
///
/// # Errors
/// A bad schedule, a loss that is not finite ([`TrainError::Diverged`]), an interrupt, or a
/// run folder that cannot be written.
pub fn fit<M: Module, T: FitTask<M>>(
    settings: &FitSettings,
    model: M,
    task: &mut T,
    device: &Device,
    run: Option<&RunDir>,
    observer: &mut dyn Observer,
) -> Result<Fitted<M>, TrainError> {
    fit_from(settings, model, task, device, run, None, observer)
}

/// [`fit`] continuing the run in `run` from its `state.json`; `model` is the freshly built
/// model the weights load into.
///
/// # Errors
/// As [`fit`], and a missing, corrupt or finished run state.
pub fn resume<M: Module, T: FitTask<M>>(
    settings: &FitSettings,
    model: M,
    task: &mut T,
    device: &Device,
    run: &RunDir,
    observer: &mut dyn Observer,
) -> Result<Fitted<M>, TrainError> {
    let state = FitState::read(run)?;
    fit_from(
        settings,
        model,
        task,
        device,
        Some(run),
        Some(state),
        observer,
    )
}

/// The entry point of a task's run: writes `config` into `run` as `config.json` and
/// [`fit`]s, or, when `resuming`, [`resume`]s the run from its `state.json` (its
/// `config.json` is already there).
///
/// # Errors
/// As [`fit`] and [`resume`].
#[allow(clippy::too_many_arguments)]
pub fn fit_or_resume<M: Module, T: FitTask<M>, C: Serialize>(
    settings: &FitSettings,
    model: M,
    task: &mut T,
    device: &Device,
    run: Option<&RunDir>,
    config: &C,
    resuming: bool,
    observer: &mut dyn Observer,
) -> Result<Fitted<M>, TrainError> {
    match run {
        Some(run) if resuming => resume(settings, model, task, device, run, observer),
        _ => {
            if let Some(run) = run {
                run.write_config(config)?;
            }
            fit(settings, model, task, device, run, observer)
        }
    }
}

fn fit_from<M: Module, T: FitTask<M>>(
    settings: &FitSettings,
    mut model: M,
    task: &mut T,
    device: &Device,
    run: Option<&RunDir>,
    state: Option<FitState>,
    observer: &mut dyn Observer,
) -> Result<Fitted<M>, TrainError> {
    if settings.epochs == 0 || settings.batch_size == 0 {
        return Err(TrainError::Config(
            "--epochs and --batch-size must be at least 1".into(),
        ));
    }
    let len = task.train_len();
    let steps = len.div_ceil(settings.batch_size);
    let mut optim = settings.optimizer.build(&model);
    let mut schedule =
        ScheduleDriver::new(&settings.lr_schedule, settings.lr, steps, settings.epochs)
            .map_err(TrainError::Config)?;
    let (score_name, score_label) = (task.score_name(), task.score_label());
    let mut history: Vec<FitEpoch> = Vec::new();
    let mut best: Option<(f64, M, usize)> = None;
    let mut first_epoch = 1;
    if let (Some(state), Some(run)) = (state, run) {
        if state.epoch >= settings.epochs {
            return Err(TrainError::Config(format!(
                "{}: the run already finished its {} epochs",
                run.path.display(),
                settings.epochs
            )));
        }
        model = load_module(model, &run.path.join(&state.checkpoint))?;
        // Built on the loaded parameters, whose ids the parameter groups match.
        optim = run.load_optimizer(settings.optimizer.build(&model), &state.optimizer)?;
        for e in &state.history {
            for _ in 0..steps {
                schedule.next_lr();
            }
            schedule.epoch_end(e.metrics.val_loss);
        }
        if state.best_epoch > 0 {
            let best_model = load_module(model.valid(), &run.path.join(BEST))?;
            best = Some((state.best_score, best_model, state.best_epoch));
        }
        history = state.history;
        first_epoch = state.epoch + 1;
    }
    for epoch in first_epoch..=settings.epochs {
        let start = Instant::now();
        let seed = epoch_seed(settings.seed, epoch);
        device.seed(seed);
        task.start_epoch(settings.seed, epoch);
        let mut order: Vec<usize> = (0..len).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        observer.epoch_start(epoch, settings.epochs, steps);
        let (mut loss_sum, mut right, mut counted, mut seen) = (0.0, 0usize, 0usize, 0usize);
        let mut lr = settings.lr;
        for chunk in order.chunks(settings.batch_size) {
            lr = schedule.next_lr();
            let batch = task.batch_loss(&model, chunk, seed)?;
            let value = batch.loss.clone().into_scalar::<f64>();
            if !value.is_finite() {
                return Err(TrainError::Diverged {
                    epoch,
                    step: seen / settings.batch_size + 1,
                });
            }
            let grads = burn::optim::GradientsParams::from_grads(batch.loss.backward(), &model);
            model = optim.step(lr, model, grads);
            loss_sum += value * chunk.len() as f64;
            right += batch.right;
            counted += batch.counted;
            seen += chunk.len();
            observer.step(
                seen,
                loss_sum / seen as f64,
                right as f64 / counted.max(1) as f64,
                seen as f64 / start.elapsed().as_secs_f64(),
            );
            if observer.interrupted() {
                return Err(TrainError::Interrupted { epoch });
            }
        }
        let train_secs = start.elapsed().as_secs_f64();
        let valid = model.valid();
        let val = task.validate(&valid);
        schedule.epoch_end(val.loss);
        let metrics = EpochMetrics {
            epoch,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: right as f64 / counted.max(1) as f64,
            val_loss: val.loss,
            val_accuracy: val.accuracy,
            lr,
            images_per_sec: seen as f64 / train_secs,
            seconds: start.elapsed().as_secs_f64(),
        };
        let improved = best.as_ref().is_none_or(|(score, _, _)| val.score > *score);
        history.push(FitEpoch {
            metrics: metrics.clone(),
            val_score: val.score,
        });
        if improved {
            best = Some((val.score, valid.clone(), epoch));
        }
        if let Some(run) = run {
            let (best_score, _, best_epoch) = best.as_ref().expect("set on the first epoch");
            let state = FitState {
                epoch,
                history: history.clone(),
                best_epoch: *best_epoch,
                best_score: *best_score,
                checkpoint: format!("epoch-{epoch:04}.bpk"),
                optimizer: format!("epoch-{epoch:04}.optim.bpk"),
            };
            commit_epoch(run, &model, &optim, improved.then_some(&valid), &state)?;
            write_fit_metrics(run, score_name, &history)?;
        }
        observer.epoch_end_with(
            &metrics,
            improved,
            &format!("  {score_label} {:.3}", val.score),
        );
    }
    let (_, model, best_epoch) = best.ok_or_else(|| TrainError::Config("no epoch ran".into()))?;
    Ok(Fitted {
        model,
        history,
        best_epoch,
    })
}

/// Saves an epoch in crash-safe order: its weights and optimizer state, `best.bpk`, then
/// `state.json` naming them (the commit point); then deletes the previous epoch's files.
fn commit_epoch<M: Module>(
    run: &RunDir,
    model: &M,
    optim: &ModuleOptimizer,
    best: Option<&M>,
    state: &FitState,
) -> Result<(), TrainError> {
    run.save_module(&state.checkpoint, model)?;
    let optim_path = run.path.join(&state.optimizer);
    let bytes = optim
        .into_bytes()
        .map_err(|e| TrainError::Record(optim_path.clone(), e.to_string()))?;
    write_atomic(&optim_path, &bytes).map_err(|e| TrainError::io(&optim_path, e))?;
    if let Some(best) = best {
        run.save_module(BEST, best)?;
    }
    let json = serde_json::to_vec_pretty(state).expect("FitState serializes");
    let path = run.path.join(STATE);
    write_atomic(&path, &json).map_err(|e| TrainError::io(&path, e))?;
    for old in 1..state.epoch {
        for name in [
            format!("epoch-{old:04}.bpk"),
            format!("epoch-{old:04}.optim.bpk"),
        ] {
            let path = run.path.join(name);
            if path.exists() {
                std::fs::remove_file(&path).map_err(|e| TrainError::io(&path, e))?;
            }
        }
    }
    Ok(())
}

/// Writes `metrics.csv`: [`EpochMetrics::CSV_HEADER`] and the score's column.
fn write_fit_metrics(run: &RunDir, score: &str, history: &[FitEpoch]) -> Result<(), TrainError> {
    let mut csv = format!("{},{score}\n", EpochMetrics::CSV_HEADER);
    for e in history {
        csv.push_str(&format!("{},{:.6}\n", e.metrics.csv_row(), e.val_score));
    }
    let path = run.path.join(METRICS);
    write_atomic(&path, csv.as_bytes()).map_err(|e| TrainError::io(&path, e))
}
