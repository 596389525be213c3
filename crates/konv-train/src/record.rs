//! What a run records, at the bottom of the crate: the metrics of an epoch, the state that
//! `--resume` reads, the seed of an epoch's randomness and the atomic file writer. Every
//! other module may use these; this one uses none of them.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Metrics of one epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss (with dropout active).
    pub train_loss: f64,
    /// Training accuracy (with dropout active; the task's notion: images, pixels, cells).
    pub train_accuracy: f64,
    /// Validation loss; NaN in a run without validation examples (`state.json` writes it
    /// as `null`).
    #[serde(deserialize_with = "nan_if_null")]
    pub val_loss: f64,
    /// Validation accuracy; NaN as `val_loss`.
    #[serde(deserialize_with = "nan_if_null")]
    pub val_accuracy: f64,
    /// Learning rate.
    pub lr: f64,
    /// Training throughput.
    pub images_per_sec: f64,
    /// Wall time of the epoch, validation included.
    pub seconds: f64,
}

/// A number, or NaN for the `null` that `serde_json` writes NaN as.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl EpochMetrics {
    /// Did the epoch validate? (Not in a run without validation examples.)
    pub fn validated(&self) -> bool {
        !(self.val_loss.is_nan() && self.val_accuracy.is_nan())
    }

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

/// One epoch as a run records it: the metrics every task has and the task's own columns
/// (`train_iou`, `val_mean_iou`, `val_map50` …), in `metrics.csv`'s order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    /// Loss, accuracy, learning rate, speed.
    #[serde(flatten)]
    pub metrics: EpochMetrics,
    /// The task's columns, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<(String, f64)>,
}

impl EpochRecord {
    /// The value of the task's column `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.extra.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

/// `metrics.csv` of `history`: [`EpochMetrics::CSV_HEADER`], then the task's columns (those
/// of the first epoch), values with six decimals.
pub fn metrics_csv(history: &[EpochRecord]) -> String {
    let mut csv = String::from(EpochMetrics::CSV_HEADER);
    if let Some(first) = history.first() {
        for (name, _) in &first.extra {
            csv.push(',');
            csv.push_str(name);
        }
    }
    csv.push('\n');
    for e in history {
        csv.push_str(&e.metrics.csv_row());
        for (_, v) in &e.extra {
            csv.push_str(&format!(",{v:.6}"));
        }
        csv.push('\n');
    }
    csv
}

/// What a run folder records after each epoch so that `--resume` continues exactly where
/// the run was: the epochs done, their metrics, the best epoch so far and the files of the
/// last checkpoint. Written (atomically) after the checkpoint files it names, so a run killed
/// at any moment resumes from its last finished epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Epochs finished.
    pub epoch: usize,
    /// Every finished epoch.
    pub history: Vec<EpochRecord>,
    /// The epoch of `best.bpk` (0 before any).
    pub best_epoch: usize,
    /// Its score under the run's monitor (higher is better).
    pub best_score: f64,
    /// Model weights after `epoch`, in the run folder.
    pub checkpoint: String,
    /// Optimizer state after `epoch`, in the run folder.
    pub optimizer: String,
    /// The moving average of the weights after `epoch` ([`crate::ema`]), in the run folder,
    /// when the run keeps one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<String>,
    /// Updates the moving average has had.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ema_updates: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The seed of epoch `epoch`'s randomness (dropout, shuffling, augmentation): a function of
/// the run's seed and the epoch alone, so a resumed epoch draws what the original did.
pub fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// crash leaves the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: usize, extra: Vec<(String, f64)>) -> EpochRecord {
        EpochRecord {
            metrics: EpochMetrics {
                epoch,
                train_loss: 1.0,
                train_accuracy: 0.5,
                val_loss: 0.9,
                val_accuracy: 0.6,
                lr: 0.1,
                images_per_sec: 100.0,
                seconds: 2.0,
            },
            extra,
        }
    }

    #[test]
    fn a_state_of_a_classification_run_reads_as_before() {
        // The state.json of a classification run: the metrics flat, no extra columns.
        let state = TrainState {
            epoch: 1,
            history: vec![record(1, vec![])],
            best_epoch: 1,
            best_score: 0.6,
            checkpoint: "epoch-0001.bpk".into(),
            optimizer: "epoch-0001.optim.bpk".into(),
            ema: None,
            ema_updates: 0,
        };
        let json = serde_json::to_string(&state).unwrap();
        assert!(json.contains("\"train_loss\":1.0") && !json.contains("extra"));
        assert!(
            !json.contains("ema"),
            "a run without an average writes no ema fields"
        );
        assert_eq!(serde_json::from_str::<TrainState>(&json).unwrap(), state);
    }

    #[test]
    fn an_epoch_without_validation_round_trips_as_nan() {
        let mut unvalidated = record(1, vec![]);
        unvalidated.metrics.val_loss = f64::NAN;
        unvalidated.metrics.val_accuracy = f64::NAN;
        let json = serde_json::to_string(&unvalidated).unwrap();
        assert!(json.contains("\"val_loss\":null"), "{json}");
        let back: EpochRecord = serde_json::from_str(&json).unwrap();
        assert!(back.metrics.val_loss.is_nan() && back.metrics.val_accuracy.is_nan());
        assert!(!back.metrics.validated() && record(1, vec![]).metrics.validated());
        assert_eq!(back.metrics.train_loss, 1.0);
        assert!(unvalidated.metrics.csv_row().contains(",NaN,NaN,"));
    }

    #[test]
    fn the_task_columns_follow_the_common_ones() {
        let csv = metrics_csv(&[record(1, vec![("val_map50".into(), 0.25)])]);
        let mut lines = csv.lines();
        assert!(lines.next().unwrap().ends_with(",seconds,val_map50"));
        assert!(lines.next().unwrap().ends_with(",2.00,0.250000"));
    }
}
