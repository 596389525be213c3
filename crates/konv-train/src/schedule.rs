//! Learning-rate schedules Burn lacks, written as reusable pieces.
//!
//! - [`KerasDecayLrScheduler`]: Keras' `decay` argument of its (pre-2.11) optimizers, the
//!   lecture's `SGD(learning_rate=0.2, momentum=0.9, decay=0.01)`:
//!   `lr_t = lr0 / (1 + decay · t)`, `t` the number of updates already made. A Burn
//!   [`LrScheduler`], so it plugs in wherever Burn's own schedulers do.
//! - [`ReduceLrOnPlateau`]: Keras' `ReduceLROnPlateau` callback (PyTorch's
//!   `ReduceLROnPlateau` with `threshold_mode="abs"`): when a monitored validation metric has
//!   not improved by `min_delta` for `patience` epochs, multiply the learning rate by
//!   `factor`, not below `min_lr`, then wait `cooldown` epochs. It reads a metric, which
//!   Burn's step-only scheduler trait cannot, so it is driven once per epoch with
//!   [`ReduceLrOnPlateau::observe`].
//!
//! Both save and restore their state (for exact resume). [`LrSchedule`] names every schedule
//! of `--lr-schedule` (the rest are Burn's schedulers, composed), and [`ScheduleDriver`] runs
//! one through a training run.

use burn::config::Config;
use burn::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::lr_scheduler::exponential::ExponentialLrSchedulerConfig;
use burn::lr_scheduler::linear::LinearLrSchedulerConfig;
use burn::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::lr_scheduler::sequential::SequentialLrSchedulerConfig;
use burn::lr_scheduler::step::StepLrSchedulerConfig;
use burn::lr_scheduler::{LrScheduler, LrSchedulerRecord};
use burn::optim::LearningRate;
use serde::{Deserialize, Serialize};

/// Hyper-parameters of [`KerasDecayLrScheduler`].
#[derive(Config, Debug)]
pub struct KerasDecayLrSchedulerConfig {
    /// The learning rate of the first update.
    pub initial_lr: LearningRate,
    /// Keras' `decay`: how fast the rate falls with the update count.
    pub decay: f64,
}

impl KerasDecayLrSchedulerConfig {
    /// The scheduler, or why the values make no sense.
    pub fn init(&self) -> Result<KerasDecayLrScheduler, String> {
        if !(self.initial_lr > 0.0 && self.initial_lr.is_finite()) {
            return Err(format!(
                "the initial learning rate must be positive, got {}",
                self.initial_lr
            ));
        }
        if !(self.decay >= 0.0 && self.decay.is_finite()) {
            return Err(format!(
                "decay must be zero or positive, got {}",
                self.decay
            ));
        }
        Ok(KerasDecayLrScheduler {
            initial_lr: self.initial_lr,
            decay: self.decay,
            iterations: 0,
        })
    }
}

/// `lr_t = lr0 / (1 + decay · t)`, stepped once per update.
#[derive(Clone, Debug, PartialEq)]
pub struct KerasDecayLrScheduler {
    initial_lr: LearningRate,
    decay: f64,
    iterations: u64,
}

impl KerasDecayLrScheduler {
    /// Updates made so far.
    pub fn iterations(&self) -> u64 {
        self.iterations
    }
}

impl LrScheduler for KerasDecayLrScheduler {
    fn step(&mut self) -> LearningRate {
        let lr = self.initial_lr / (1.0 + self.decay * self.iterations as f64);
        self.iterations += 1;
        lr
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new().with_scalar("iterations", self.iterations)
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        if let Some(iterations) = record.scalar::<u64>("iterations") {
            self.iterations = iterations;
        }
    }
}

/// Whether a smaller or a larger monitored value is better.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum PlateauMode {
    /// A loss: lower is better.
    Min,
    /// An accuracy: higher is better.
    Max,
}

/// Hyper-parameters of [`ReduceLrOnPlateau`] (Keras' defaults).
#[derive(Config, Debug)]
pub struct ReduceLrOnPlateauConfig {
    /// The learning rate to start from.
    pub initial_lr: LearningRate,
    /// Lower (a loss) or higher (an accuracy) is better.
    #[config(default = "PlateauMode::Min")]
    pub mode: PlateauMode,
    /// Multiplier applied on a plateau.
    #[config(default = 0.1)]
    pub factor: f64,
    /// Epochs without improvement before reducing.
    #[config(default = 10)]
    pub patience: usize,
    /// An improvement must beat the best value by more than this.
    #[config(default = 1e-4)]
    pub min_delta: f64,
    /// Epochs to wait after a reduction before counting again.
    #[config(default = 0)]
    pub cooldown: usize,
    /// The learning rate never goes below this.
    #[config(default = 0.0)]
    pub min_lr: f64,
}

/// The state of [`ReduceLrOnPlateau`], as saved in a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReduceLrOnPlateau {
    lr: LearningRate,
    mode: PlateauMode,
    factor: f64,
    patience: usize,
    min_delta: f64,
    cooldown: usize,
    min_lr: f64,
    best: Option<f64>,
    wait: usize,
    cooldown_left: usize,
}

impl ReduceLrOnPlateauConfig {
    /// The scheduler, or why the values make no sense.
    pub fn init(&self) -> Result<ReduceLrOnPlateau, String> {
        if !(self.factor > 0.0 && self.factor < 1.0) {
            return Err(format!("factor must be in (0, 1), got {}", self.factor));
        }
        if !(self.initial_lr > 0.0 && self.initial_lr.is_finite()) {
            return Err(format!(
                "the initial learning rate must be positive, got {}",
                self.initial_lr
            ));
        }
        Ok(ReduceLrOnPlateau {
            lr: self.initial_lr,
            mode: self.mode,
            factor: self.factor,
            patience: self.patience,
            min_delta: self.min_delta.abs(),
            cooldown: self.cooldown,
            min_lr: self.min_lr,
            best: None,
            wait: 0,
            cooldown_left: 0,
        })
    }
}

impl ReduceLrOnPlateau {
    /// The current learning rate.
    pub fn lr(&self) -> LearningRate {
        self.lr
    }

    /// The best monitored value so far.
    pub fn best(&self) -> Option<f64> {
        self.best
    }

    fn improves(&self, value: f64) -> bool {
        match (self.best, self.mode) {
            (None, _) => true,
            (Some(best), PlateauMode::Min) => value < best - self.min_delta,
            (Some(best), PlateauMode::Max) => value > best + self.min_delta,
        }
    }

    /// Feeds one epoch's monitored value (Keras' `on_epoch_end`); returns the learning rate
    /// for the next epoch.
    pub fn observe(&mut self, value: f64) -> LearningRate {
        let cooling = self.cooldown_left > 0;
        if cooling {
            self.cooldown_left -= 1;
            self.wait = 0;
        }
        if self.improves(value) {
            self.best = Some(value);
            self.wait = 0;
        } else if !cooling {
            self.wait += 1;
            if self.wait >= self.patience && self.lr > self.min_lr {
                self.lr = (self.lr * self.factor).max(self.min_lr);
                self.cooldown_left = self.cooldown;
                self.wait = 0;
            }
        }
        self.lr
    }
}

/// The learning-rate schedule of a training run (`konv train --lr-schedule`), saved in the
/// run's `config.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum LrSchedule {
    /// `--lr` throughout.
    #[default]
    Constant,
    /// Keras' `decay`, per update: `lr / (1 + decay · t)`.
    KerasDecay {
        /// Keras' `decay`.
        decay: f64,
    },
    /// Multiply by `gamma` every `every` epochs (Burn's step scheduler, per update).
    Step {
        /// Epochs between reductions.
        every: usize,
        /// Multiplier.
        gamma: f64,
    },
    /// Multiply by `gamma` at each milestone epoch (PyTorch's `MultiStepLR`).
    MultiStep {
        /// Epochs (0-based: the first epoch that uses the reduced rate).
        milestones: Vec<usize>,
        /// Multiplier.
        gamma: f64,
    },
    /// Multiply by `gamma` per epoch, spread smoothly over its updates (Burn's exponential
    /// scheduler).
    Exponential {
        /// Factor per epoch.
        gamma: f64,
    },
    /// Linear warm-up over `warmup` epochs, then cosine annealing to `min_lr` at the end of
    /// the run (Burn's linear and cosine schedulers in sequence).
    Cosine {
        /// Warm-up epochs (0 for none).
        warmup: usize,
        /// The final learning rate.
        min_lr: f64,
    },
    /// One-cycle (Smith & Topin; PyTorch's `OneCycleLR` without momentum cycling): a linear
    /// rise from `lr / div` to `lr` over the first `pct` of all updates, then cosine
    /// annealing to `lr / (div · final_div)` at the last update.
    OneCycle {
        /// Fraction of the updates spent rising (PyTorch's `pct_start`, 0.3).
        pct: f64,
        /// Start at `lr / div` (PyTorch's `div_factor`, 25).
        div: f64,
        /// End at `lr / (div · final_div)` (PyTorch's `final_div_factor`, 1e4).
        final_div: f64,
    },
    /// Reduce on a plateau of the validation loss, per epoch.
    Plateau {
        /// Epochs without improvement before reducing.
        patience: usize,
        /// Multiplier.
        factor: f64,
        /// Lower bound.
        min_lr: f64,
    },
}

impl std::fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LrSchedule::Constant => write!(f, "constant"),
            LrSchedule::KerasDecay { decay } => write!(f, "keras-decay:{decay}"),
            LrSchedule::Step { every, gamma } => write!(f, "step:every={every},gamma={gamma}"),
            LrSchedule::MultiStep { milestones, gamma } => {
                let at: Vec<String> = milestones.iter().map(|m| m.to_string()).collect();
                write!(f, "multistep:at={},gamma={gamma}", at.join("+"))
            }
            LrSchedule::Exponential { gamma } => write!(f, "exponential:gamma={gamma}"),
            LrSchedule::Cosine { warmup, min_lr } => {
                write!(f, "cosine:warmup={warmup},min-lr={min_lr}")
            }
            LrSchedule::OneCycle {
                pct,
                div,
                final_div,
            } => write!(f, "one-cycle:pct={pct},div={div},final-div={final_div}"),
            LrSchedule::Plateau {
                patience,
                factor,
                min_lr,
            } => write!(
                f,
                "plateau:patience={patience},factor={factor},min-lr={min_lr}"
            ),
        }
    }
}

const SCHEDULE_HELP: &str = "valid schedules: constant, keras-decay:DECAY (e.g. keras-decay:0.01), \
step:every=EPOCHS[,gamma=G], multistep:at=E1+E2+…[,gamma=G], exponential:gamma=G (per epoch), \
cosine[:warmup=EPOCHS,min-lr=L], one-cycle[:pct=0.3,div=25,final-div=1e4], plateau[:patience=N,factor=F,min-lr=L] \
(e.g. plateau:patience=2,factor=0.5)";

impl std::str::FromStr for LrSchedule {
    type Err = String;

    /// `constant`, `keras-decay:0.01`, `plateau` or `plateau:patience=2,factor=0.5,min-lr=1e-4`.
    fn from_str(spec: &str) -> Result<Self, String> {
        let (name, args) = spec.split_once(':').unwrap_or((spec, ""));
        let bad = |what: String| format!("{what}; {SCHEDULE_HELP}");
        let number = |key: &str, value: &str| {
            value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| bad(format!("`{key}` needs a number, got `{value}`")))
        };
        let whole = |key: &str, value: &str| {
            value
                .parse::<usize>()
                .map_err(|_| bad(format!("`{key}` needs a whole number, got `{value}`")))
        };
        let fraction = |key: &str, value: f64| {
            if value > 0.0 && value < 1.0 {
                Ok(value)
            } else {
                Err(bad(format!("`{key}` must be in (0, 1), got {value}")))
            }
        };
        // KEY=VALUE settings.
        let mut settings = std::collections::BTreeMap::new();
        if name != "keras-decay" {
            for pair in args.split(',').filter(|p| !p.is_empty()) {
                let (key, value) = pair
                    .split_once('=')
                    .ok_or_else(|| bad(format!("`{pair}` is not KEY=VALUE")))?;
                settings.insert(key.to_string(), value.to_string());
            }
        }
        let allow = |keys: &[&str]| match settings.keys().find(|k| !keys.contains(&k.as_str())) {
            Some(other) => Err(bad(format!(
                "unknown {name} setting `{other}` ({})",
                keys.join(", ")
            ))),
            None => Ok(()),
        };
        let get = |key: &str| settings.get(key).map(String::as_str);
        let gamma = || {
            get("gamma")
                .map_or(Ok(0.1), |v| number("gamma", v))
                .and_then(|g| fraction("gamma", g))
        };
        match name {
            "constant" if args.is_empty() => Ok(LrSchedule::Constant),
            "keras-decay" => Ok(LrSchedule::KerasDecay {
                decay: number("keras-decay", args)?,
            }),
            "step" => {
                allow(&["every", "gamma"])?;
                let every = get("every").ok_or_else(|| bad("`step` needs every=EPOCHS".into()))?;
                let every = whole("every", every)?;
                if every == 0 {
                    return Err(bad("`every` must be at least 1".into()));
                }
                Ok(LrSchedule::Step {
                    every,
                    gamma: gamma()?,
                })
            }
            "multistep" => {
                allow(&["at", "gamma"])?;
                let at = get("at").ok_or_else(|| bad("`multistep` needs at=E1+E2+…".into()))?;
                let milestones = at
                    .split('+')
                    .map(|m| whole("at", m))
                    .collect::<Result<Vec<_>, _>>()?;
                if milestones.windows(2).any(|w| w[0] >= w[1]) || milestones.first() == Some(&0) {
                    return Err(bad(format!(
                        "`at` must be increasing epochs from 1, got `{at}`"
                    )));
                }
                Ok(LrSchedule::MultiStep {
                    milestones,
                    gamma: gamma()?,
                })
            }
            "exponential" => {
                allow(&["gamma"])?;
                let g = get("gamma").ok_or_else(|| bad("`exponential` needs gamma=G".into()))?;
                Ok(LrSchedule::Exponential {
                    gamma: fraction("gamma", number("gamma", g)?)?,
                })
            }
            "cosine" => {
                allow(&["warmup", "min-lr"])?;
                Ok(LrSchedule::Cosine {
                    warmup: get("warmup").map_or(Ok(0), |v| whole("warmup", v))?,
                    min_lr: get("min-lr").map_or(Ok(0.0), |v| number("min-lr", v))?,
                })
            }
            "one-cycle" => {
                allow(&["pct", "div", "final-div"])?;
                let pct = get("pct")
                    .map_or(Ok(0.3), |v| number("pct", v))
                    .and_then(|p| fraction("pct", p))?;
                let at_least_one = |key: &str, default: f64| {
                    let v = get(key).map_or(Ok(default), |v| number(key, v))?;
                    if v >= 1.0 {
                        Ok(v)
                    } else {
                        Err(bad(format!("`{key}` must be at least 1, got {v}")))
                    }
                };
                Ok(LrSchedule::OneCycle {
                    pct,
                    div: at_least_one("div", 25.0)?,
                    final_div: at_least_one("final-div", 1e4)?,
                })
            }
            "plateau" => {
                allow(&["patience", "factor", "min-lr"])?;
                let patience = get("patience").map_or(Ok(10), |v| whole("patience", v))?;
                let factor = get("factor")
                    .map_or(Ok(0.1), |v| number("factor", v))
                    .and_then(|f| fraction("factor", f))?;
                let min_lr = get("min-lr").map_or(Ok(0.0), |v| number("min-lr", v))?;
                Ok(LrSchedule::Plateau {
                    patience,
                    factor,
                    min_lr,
                })
            }
            other => Err(bad(format!("unknown schedule `{other}`"))),
        }
    }
}

/// Drives an [`LrSchedule`] through a run: [`ScheduleDriver::next_lr`] before each update,
/// [`ScheduleDriver::epoch_end`] after each validation.
#[derive(Clone)]
pub struct ScheduleDriver {
    lr: LearningRate,
    decay: Option<KerasDecayLrScheduler>,
    plateau: Option<ReduceLrOnPlateau>,
    burn: Option<ModuleLrScheduler>,
    multistep: Option<(Vec<usize>, f64, LearningRate)>,
    updates: usize,
}

impl std::fmt::Debug for ScheduleDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScheduleDriver")
            .field("lr", &self.lr)
            .field("updates", &self.updates)
            .finish_non_exhaustive()
    }
}

impl ScheduleDriver {
    /// The driver of `schedule` starting from `lr`, for a run of `epochs` epochs of
    /// `steps_per_epoch` updates (epoch-based settings become update counts).
    pub fn new(
        schedule: &LrSchedule,
        lr: LearningRate,
        steps_per_epoch: usize,
        epochs: usize,
    ) -> Result<Self, String> {
        let mut driver = Self {
            lr,
            decay: None,
            plateau: None,
            burn: None,
            multistep: None,
            updates: 0,
        };
        let spe = steps_per_epoch.max(1);
        let total = spe * epochs.max(1);
        match *schedule {
            LrSchedule::Constant => {}
            LrSchedule::Step { every, gamma } => {
                driver.burn = Some(
                    StepLrSchedulerConfig::new(lr, every * spe)
                        .with_gamma(gamma)
                        .init()?,
                );
            }
            LrSchedule::MultiStep {
                ref milestones,
                gamma,
            } => {
                driver.multistep = Some((milestones.iter().map(|m| m * spe).collect(), gamma, lr));
            }
            LrSchedule::Exponential { gamma } => {
                driver.burn = Some(
                    ExponentialLrSchedulerConfig::new(lr, gamma.powf(1.0 / spe as f64)).init()?,
                );
            }
            LrSchedule::Cosine { warmup, min_lr } => {
                let warm = (warmup * spe).min(total.saturating_sub(1));
                let cosine =
                    CosineAnnealingLrSchedulerConfig::new(lr, total - warm).with_min_lr(min_lr);
                driver.burn = Some(if warm == 0 {
                    cosine.init()?
                } else {
                    SequentialLrSchedulerConfig::new(
                        vec![
                            LinearLrSchedulerConfig::new(lr / warm as f64, lr, warm).into(),
                            cosine.into(),
                        ],
                        vec![warm],
                    )
                    .init()?
                });
            }
            LrSchedule::OneCycle {
                pct,
                div,
                final_div,
            } => {
                // At least one update in each phase.
                let rise = ((pct * total as f64).round() as usize).clamp(1, total.max(2) - 1);
                let start = lr / div;
                let cosine = CosineAnnealingLrSchedulerConfig::new(lr, total - rise)
                    .with_min_lr(start / final_div);
                driver.burn = Some(
                    SequentialLrSchedulerConfig::new(
                        vec![
                            LinearLrSchedulerConfig::new(start, lr, rise).into(),
                            cosine.into(),
                        ],
                        vec![rise],
                    )
                    .init()?,
                );
            }
            LrSchedule::KerasDecay { decay } => {
                driver.decay = Some(KerasDecayLrSchedulerConfig::new(lr, decay).init()?);
            }
            LrSchedule::Plateau {
                patience,
                factor,
                min_lr,
            } => {
                driver.plateau = Some(
                    ReduceLrOnPlateauConfig::new(lr)
                        .with_patience(patience)
                        .with_factor(factor)
                        .with_min_lr(min_lr)
                        .init()?,
                );
            }
        }
        Ok(driver)
    }

    /// The learning rate of the next update.
    pub fn next_lr(&mut self) -> LearningRate {
        if let Some(decay) = &mut self.decay {
            self.lr = decay.step();
        }
        if let Some(burn) = &mut self.burn {
            self.lr = burn.step().base();
        }
        if let Some((milestones, gamma, lr0)) = &self.multistep {
            let passed = milestones.iter().filter(|&&m| m <= self.updates).count();
            self.lr = lr0 * gamma.powi(passed as i32);
        }
        self.updates += 1;
        self.lr
    }

    /// The learning rate last used (what an epoch's metrics report).
    pub fn current_lr(&self) -> LearningRate {
        self.lr
    }

    /// After an epoch's validation: feeds the validation loss to a plateau schedule.
    pub fn epoch_end(&mut self, val_loss: f64) {
        if let Some(plateau) = &mut self.plateau {
            self.lr = plateau.observe(val_loss);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keras_decay_is_the_lectures_formula() {
        // SGD(learning_rate=0.2, decay=0.01): 0.2, 0.2/1.01, 0.2/1.02, … and 0.1 at update 100.
        let mut s = KerasDecayLrSchedulerConfig::new(0.2, 0.01).init().unwrap();
        let lrs: Vec<f64> = (0..101).map(|_| s.step()).collect();
        assert_eq!(lrs[0], 0.2);
        assert!((lrs[1] - 0.2 / 1.01).abs() < 1e-15);
        assert!((lrs[2] - 0.2 / 1.02).abs() < 1e-15);
        assert!((lrs[100] - 0.1).abs() < 1e-15);
        // Its record resumes it where it was.
        let record = s.to_record();
        let mut resumed = KerasDecayLrSchedulerConfig::new(0.2, 0.01).init().unwrap();
        resumed.load_record(record);
        assert_eq!(resumed.iterations(), 101);
        assert_eq!(resumed.step(), s.step());
        assert!(KerasDecayLrSchedulerConfig::new(0.0, 0.01).init().is_err());
        assert!(KerasDecayLrSchedulerConfig::new(0.1, -1.0).init().is_err());
    }

    #[test]
    fn schedules_parse_and_explain_mistakes() {
        assert_eq!("constant".parse(), Ok(LrSchedule::Constant));
        assert_eq!(
            "keras-decay:0.01".parse(),
            Ok(LrSchedule::KerasDecay { decay: 0.01 })
        );
        assert_eq!(
            "plateau:patience=2,factor=0.5".parse(),
            Ok(LrSchedule::Plateau {
                patience: 2,
                factor: 0.5,
                min_lr: 0.0
            })
        );
        let plateau = LrSchedule::Plateau {
            patience: 3,
            factor: 0.2,
            min_lr: 1e-4,
        };
        assert_eq!(plateau.to_string().parse::<LrSchedule>(), Ok(plateau));
        for bad in [
            "linear",
            "keras-decay:x",
            "plateau:factor=2",
            "plateau:wait=3",
            "constant:1",
            "step",
            "step:every=0",
            "multistep:at=3+2",
            "exponential:gamma=1.5",
            "cosine:warmup=x",
        ] {
            let err = bad.parse::<LrSchedule>().unwrap_err();
            assert!(err.contains("valid schedules"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_driver_steps_decay_per_update_and_plateau_per_epoch() {
        let mut d = ScheduleDriver::new(&LrSchedule::KerasDecay { decay: 0.5 }, 0.3, 1, 1).unwrap();
        for want in [0.3, 0.2, 0.15] {
            assert!((d.next_lr() - want).abs() < 1e-15);
        }
        let mut p = ScheduleDriver::new(
            &LrSchedule::Plateau {
                patience: 1,
                factor: 0.5,
                min_lr: 0.0,
            },
            0.4,
            1,
            1,
        )
        .unwrap();
        p.epoch_end(1.0);
        assert_eq!(p.next_lr(), 0.4);
        p.epoch_end(1.0);
        assert_eq!(p.next_lr(), 0.2);
    }

    fn lrs(schedule: &str, steps_per_epoch: usize, epochs: usize) -> Vec<f64> {
        let schedule: LrSchedule = schedule.parse().unwrap();
        let mut d = ScheduleDriver::new(&schedule, 0.1, steps_per_epoch, epochs).unwrap();
        (0..steps_per_epoch * epochs).map(|_| d.next_lr()).collect()
    }

    fn close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-9, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn epoch_schedules_by_hand() {
        // Two updates per epoch.
        close(
            &lrs("step:every=1,gamma=0.5", 2, 3),
            &[0.1, 0.1, 0.05, 0.05, 0.025, 0.025],
        );
        close(
            &lrs("multistep:at=1+3,gamma=0.1", 1, 4),
            &[0.1, 0.01, 0.01, 0.001],
        );
        close(
            &lrs("exponential:gamma=0.25", 2, 2),
            &[0.1, 0.05, 0.025, 0.0125],
        );
        // Cosine over 4 updates: 0.1·(1 + cos(π t / 4)) / 2.
        let want: Vec<f64> = (0..4)
            .map(|t| 0.05 * (1.0 + (std::f64::consts::PI * t as f64 / 4.0).cos()))
            .collect();
        close(&lrs("cosine", 2, 2), &want);
        // One warm-up epoch of 2 updates starting at 0.05, then cosine over 4 updates.
        let warm = lrs("cosine:warmup=1", 2, 3);
        assert!((warm[0] - 0.05).abs() < 1e-9, "{warm:?}");
        assert!(
            warm[1] > warm[0] && warm[2] >= warm[3] && warm[3] > warm[5],
            "{warm:?}"
        );
        for spec in [
            "step:every=2,gamma=0.5",
            "multistep:at=3+6,gamma=0.2",
            "exponential:gamma=0.9",
            "cosine:warmup=1,min-lr=0.001",
        ] {
            let s: LrSchedule = spec.parse().unwrap();
            assert_eq!(s.to_string().parse::<LrSchedule>(), Ok(s));
        }
    }

    #[test]
    fn one_cycle_by_hand() {
        // 4 epochs of 2 updates, 2 rising (pct 0.25) from 0.1/10, then cosine over 6 updates
        // from 0.1 towards 0.1/(10·100).
        let got = lrs("one-cycle:pct=0.25,div=10,final-div=100", 2, 4);
        let (start, end) = (0.01, 0.0001);
        let mut want = vec![start, start + (0.1 - start) / 2.0];
        want.extend((0..6).map(|t| {
            end + 0.5 * (0.1 - end) * (1.0 + (std::f64::consts::PI * t as f64 / 6.0).cos())
        }));
        close(&got, &want);
        let s: LrSchedule = "one-cycle".parse().unwrap();
        assert_eq!(
            s,
            LrSchedule::OneCycle {
                pct: 0.3,
                div: 25.0,
                final_div: 1e4
            }
        );
        assert_eq!(s.to_string().parse::<LrSchedule>(), Ok(s));
        let err = "one-cycle:div=0.5".parse::<LrSchedule>().unwrap_err();
        assert!(err.contains("`div` must be at least 1"), "{err}");
    }

    #[test]
    fn reduce_on_plateau_by_hand() {
        // Loss, patience 2, factor 0.5, cooldown 1, min_lr 0.02, min_delta 0.01.
        let mut s = ReduceLrOnPlateauConfig::new(0.1)
            .with_patience(2)
            .with_factor(0.5)
            .with_cooldown(1)
            .with_min_lr(0.02)
            .with_min_delta(0.01)
            .init()
            .unwrap();
        let losses = [
            1.0, 0.9, 0.895, 0.9, 0.85, 0.8, 0.75, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7,
        ];
        let lrs: Vec<f64> = losses.iter().map(|&l| s.observe(l)).collect();
        // 1.0 best; 0.9 best; 0.895 not better by 0.01 → wait 1; 0.9 → wait 2 → 0.05 and
        // cooldown 1; 0.85 (cooling) best; 0.8, 0.75, 0.7 best; 0.7 → wait 1; 0.7 → wait 2 →
        // 0.025, cooldown; 0.7 cooling; 0.7 → wait 1; 0.7 → wait 2 → 0.0125, held at 0.02.
        let want = [
            0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.02,
        ];
        for (i, (got, want)) in lrs.iter().zip(want).enumerate() {
            assert!(
                (got - want).abs() < 1e-12,
                "epoch {i}: {got} vs {want}: {lrs:?}"
            );
        }
        // Accuracy mode: higher is better.
        let mut acc = ReduceLrOnPlateauConfig::new(0.1)
            .with_mode(PlateauMode::Max)
            .with_patience(1)
            .init()
            .unwrap();
        assert_eq!(acc.observe(0.80), 0.1);
        assert_eq!(acc.observe(0.85), 0.1);
        assert!((acc.observe(0.84) - 0.01).abs() < 1e-12);
        assert!(
            ReduceLrOnPlateauConfig::new(0.1)
                .with_factor(1.5)
                .init()
                .is_err()
        );
    }
}
