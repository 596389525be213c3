//! Training konv models, from the `konv` CLI or from your own code.
//!
//! - [`backend`]: pick `cpu`, `flex`, `ndarray`, `wgpu` (or `cuda`) at run time.
//! - [`data`]: image sets through Burn's `Dataset`, `Batcher` and `DataLoader`.
//! - [`optim`]: SGD, Adam, AdamW, RMSProp by name, weight decay off biases and norms.
//! - [`model`]: [`model::Classify`], what the loop trains: the zoo's models or your own
//!   Burn module.
//! - [`train`]: the SGD training loop with validation, metrics and checkpoints
//!   ([`train::train`] for the zoo by name, [`train::train_model`] for any model);
//!   [`parallel`]: data parallelism over CPU cores (`--replicas`); [`progressive`]: smaller
//!   images in the first epochs (`--progressive-resize`); [`ema`]: a moving average of the
//!   weights, validated and kept instead of the raw ones (`--ema`).
//! - [`loss`]: weighted multi-output losses (class + box); [`metrics`]: box IoU, mean IoU
//!   and pixel accuracy of masks.
//! - [`eval`] and [`predict`]: accuracy, confusion matrix, top-k classes of image files.
//! - [`run`]: the run folder (`config.json`, `metrics.csv`, atomic checkpoints, `state.json`
//!   for `--resume`); [`plot`]: `curves.png`.
//!
//! ```no_run
//! use konv_datasets::{DatasetName, Locator};
//! use konv_train::{backend::BackendName, engine::Settings, observer::Silent, train::*};
//!
//! let dataset = Locator { allow_embedded: true, ..Default::default() }
//!     .load(DatasetName::FashionMnist)?;
//! let settings = Settings { epochs: 1, ..Default::default() };
//! let config = TrainConfig { settings, ..Default::default() };
//! let data = SplitData::new(&dataset, 500, None, config.settings.seed);
//! let device = BackendName::Cpu.open()?;
//! let outcome = train(&config, 10, &data, &device, None, &mut Silent)?;
//! println!("test accuracy {:.2}%", 100.0 * outcome.test.accuracy());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};

pub mod augment;
pub mod backend;
pub mod bench;
pub mod data;
pub mod detect;
pub mod ema;
pub mod engine;
pub mod eval;
pub mod filters;
pub mod localize;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod observer;
pub mod optim;
pub mod parallel;
pub mod plot;
pub mod predict;
pub mod progressive;
pub mod record;
pub mod run;
pub mod schedule;
pub mod segment;
pub mod train;

/// What can go wrong while training, evaluating or predicting.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A weights file could not be read, written or applied to the model.
    #[error("{0}: cannot use these weights: {1}")]
    Record(PathBuf, String),
    /// A run folder's file is not what konv wrote.
    #[error("{path}: corrupt ({reason})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The folder is not a konv run.
    #[error(
        "{0}: not a konv run folder (no config.json); pass the --out folder of a `konv train` run"
    )]
    NotARun(PathBuf),
    /// An image file could not be decoded.
    #[error("{path}: cannot read image ({reason}); konv reads PNG and JPEG files")]
    Image {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// The loss became NaN or infinite.
    #[error(
        "training diverged at epoch {epoch}, step {step} (the loss is not finite); lower the learning rate"
    )]
    Diverged {
        /// The epoch.
        epoch: usize,
        /// The step in the epoch.
        step: usize,
    },
    /// Invalid settings.
    #[error("{0}")]
    Config(String),
    /// The device failed while training or evaluating (out of memory, a lost GPU): the
    /// message is the backend's first line. A run folder keeps its last finished epoch.
    #[error(
        "the device failed ({0}); a smaller --batch-size may fit, and a training run resumes from its last finished epoch with --resume"
    )]
    Device(String),
    /// One setting of [`engine::Settings`] (or of a task's configuration) is bad: `name` is
    /// the field's name (`batch_size`), which the CLI turns into its flag (`--batch-size`).
    #[error("{name}: {reason}")]
    Setting {
        /// The setting's field name.
        name: &'static str,
        /// What is wrong and what would work.
        reason: String,
    },
    /// A resumed run has already finished its epochs.
    #[error("{path}: the run already finished its {epochs} epochs", path = path.display())]
    Finished {
        /// The run folder.
        path: PathBuf,
        /// Its epochs.
        epochs: usize,
    },
    /// Training stopped before the end (see [`observer::Observer::interrupted`]).
    #[error("training interrupted during epoch {epoch}; continue with --resume")]
    Interrupted {
        /// The epoch that was running.
        epoch: usize,
    },
    /// An unknown model.
    #[error(transparent)]
    Model(#[from] konv_models::ModelError),
    /// A backend that is unknown or unavailable.
    #[error(transparent)]
    Backend(#[from] backend::BackendError),
    /// Data that could not be found or read.
    #[error(transparent)]
    Data(#[from] konv_datasets::DataError),
}

impl TrainError {
    /// A bad setting `name` (the field's name in [`engine::Settings`] or a task's config).
    pub fn setting(name: &'static str, reason: String) -> Self {
        TrainError::Setting { name, reason }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
