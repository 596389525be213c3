//! A run folder: `config.json`; after each epoch `epoch-NNNN.bpk` + `epoch-NNNN.optim.bpk`
//! (the newest `keep_checkpoints` epochs), `checkpoint.bpk` + `optimizer.bpk` (the latest,
//! as links to those), `best.bpk` (the weights of the epoch with the best validation
//! accuracy), `state.json` (what `--resume` reads), `metrics.csv` and `curves.png`.
//! Every file is written to a temporary name and renamed, so a crash never leaves a
//! half-written file behind; `state.json` is written last and names only complete files.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;

use crate::TrainError;
pub use crate::record::write_atomic;
use crate::record::{EpochRecord, TrainState, metrics_csv};

/// The model weights after the latest epoch.
pub const CHECKPOINT: &str = "checkpoint.bpk";
/// The optimizer state after the latest epoch.
pub const OPTIMIZER: &str = "optimizer.bpk";
/// The weights of the epoch with the best validation accuracy.
pub const BEST: &str = "best.bpk";
/// The moving average of the weights after the latest epoch, in runs that keep one
/// (`--ema`); `best.bpk` is then the average of the best epoch.
pub const EMA: &str = "ema.bpk";
/// The run's configuration.
pub const CONFIG: &str = "config.json";
/// One line per epoch.
pub const METRICS: &str = "metrics.csv";
/// Where training stands, for `--resume`.
pub const STATE: &str = "state.json";
/// Training curves, redrawn after each epoch.
pub const CURVES: &str = "curves.png";

/// A run folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// The folder.
    pub path: PathBuf,
}

impl RunDir {
    /// Creates the folder (and its parents) for a new run.
    pub fn create(path: &Path) -> Result<Self, TrainError> {
        std::fs::create_dir_all(path).map_err(|e| TrainError::io(path, e))?;
        Ok(RunDir {
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing run folder, checking it has a configuration.
    pub fn open(path: &Path) -> Result<Self, TrainError> {
        if !path.join(CONFIG).is_file() {
            return Err(TrainError::NotARun(path.to_path_buf()));
        }
        Ok(RunDir {
            path: path.to_path_buf(),
        })
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), TrainError> {
        let path = self.path.join(name);
        write_atomic(&path, bytes).map_err(|e| TrainError::io(&path, e))
    }

    /// Reads `config.json` as a `T` (the run description of its task).
    pub fn read_config<T: serde::de::DeserializeOwned>(&self) -> Result<T, TrainError> {
        self.decode_config(self.config_json()?)
    }

    /// `config.json` parsed as JSON.
    fn config_json(&self) -> Result<serde_json::Value, TrainError> {
        let path = self.path.join(CONFIG);
        let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| TrainError::Corrupt {
            path,
            reason: e.to_string(),
        })
    }

    /// A parsed `config.json` checked ([`check_run_config`]), then read as a `T`.
    fn decode_config<T: serde::de::DeserializeOwned>(
        &self,
        value: serde_json::Value,
    ) -> Result<T, TrainError> {
        let corrupt = |reason: String| TrainError::Corrupt {
            path: self.path.join(CONFIG),
            reason,
        };
        check_run_config(&value).map_err(corrupt)?;
        serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))
    }

    /// Rewrites `metrics.csv` with every epoch so far.
    pub fn write_metrics(&self, history: &[EpochRecord]) -> Result<(), TrainError> {
        self.write(METRICS, metrics_csv(history).as_bytes())
    }

    /// Saves any module's weights as `name` (burnpack format), atomically.
    pub fn save_module<M: Module>(&self, name: &str, model: &M) -> Result<(), TrainError> {
        let bytes = model
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| TrainError::Record(self.path.join(name), e.to_string()))?;
        self.write(name, &bytes)
    }

    /// Writes `info` as `config.json` (any serializable run description).
    pub fn write_config<T: serde::Serialize>(&self, info: &T) -> Result<(), TrainError> {
        let json = serde_json::to_vec_pretty(info).expect("run descriptions serialize");
        self.write(CONFIG, &json)
    }

    /// Reads `config.json` as a `T` when its `"task"` field is `task`; `None` for a run of
    /// another task (classification runs have no `"task"`).
    pub fn read_task_config<T: serde::de::DeserializeOwned>(
        &self,
        task: &str,
    ) -> Result<Option<T>, TrainError> {
        let value = self.config_json()?;
        if value.get("task").and_then(|t| t.as_str()) != Some(task) {
            return Ok(None);
        }
        self.decode_config(value).map(Some)
    }

    /// The `config.json` of a `task` run about to be resumed on data of its own kind: `kind`
    /// names the task in the error (`"localization"`), `items` the data (`"canvases"`), and
    /// `same_data` says whether the data made again matches the run's.
    ///
    /// # Errors
    /// A run of another task, or data that differs from the run's, each in one line with
    /// the fix.
    pub fn read_resumable<T: serde::de::DeserializeOwned>(
        &self,
        task: &str,
        (kind, items): (&str, &str),
        same_data: impl FnOnce(&T) -> bool,
    ) -> Result<T, TrainError> {
        let info = self.read_task_config(task)?.ok_or_else(|| {
            TrainError::Config(format!("{}: not a {kind} run", self.path.display()))
        })?;
        if !same_data(&info) {
            return Err(TrainError::Config(format!(
                "{}: the {items} differ from the run's (other pixel statistics); use the same dataset and data flags",
                self.path.display()
            )));
        }
        Ok(info)
    }

    /// Saves optimizer state bytes as `optimizer.bpk`.
    pub fn save_optimizer(&self, bytes: &[u8]) -> Result<(), TrainError> {
        self.write(OPTIMIZER, bytes)
    }

    /// Everything after an epoch, in crash-safe order: the epoch's weights, optimizer state
    /// and moving average (`ema`, when the run keeps one), `best.bpk` when `improved` (the
    /// average when there is one), then `state.json` naming them (the commit point), then
    /// `checkpoint.bpk`/`optimizer.bpk`/`ema.bpk`, `metrics.csv` and `curves.png`; finally the
    /// epoch files older than the newest `keep` are deleted.
    pub fn save_epoch<M: Module>(
        &self,
        model: &M,
        optim: &ModuleOptimizer,
        ema: Option<(&M, u64)>,
        improved: bool,
        mut state: TrainState,
        keep: usize,
    ) -> Result<(), TrainError> {
        let epoch = state.epoch;
        state.checkpoint = format!("epoch-{epoch:04}.bpk");
        state.optimizer = format!("epoch-{epoch:04}.optim.bpk");
        self.save_module(&state.checkpoint, model)?;
        let optim_path = self.path.join(&state.optimizer);
        let bytes = optim
            .into_bytes()
            .map_err(|e| TrainError::Record(optim_path.clone(), e.to_string()))?;
        self.write(&state.optimizer, &bytes)?;
        if let Some((average, updates)) = ema {
            let name = format!("epoch-{epoch:04}.ema.bpk");
            self.save_module(&name, average)?;
            state.ema = Some(name);
            state.ema_updates = updates;
        }
        if improved {
            self.save_module(BEST, ema.map_or(model, |(average, _)| average))?;
        }
        let json = serde_json::to_vec_pretty(&state).expect("TrainState serializes");
        self.write(STATE, &json)?;
        self.link_latest(&state.checkpoint, CHECKPOINT)?;
        self.link_latest(&state.optimizer, OPTIMIZER)?;
        if let Some(name) = &state.ema {
            self.link_latest(name, EMA)?;
        }
        self.write_metrics(&state.history)?;
        let curves = self.path.join(CURVES);
        let metrics: Vec<_> = state.history.iter().map(|e| e.metrics.clone()).collect();
        crate::plot::save_curves(&curves, &metrics)?;
        // Prune epoch files beyond the newest `keep`.
        for old in 1..=epoch.saturating_sub(keep.max(1)) {
            for name in [
                format!("epoch-{old:04}.bpk"),
                format!("epoch-{old:04}.optim.bpk"),
                format!("epoch-{old:04}.ema.bpk"),
            ] {
                let path = self.path.join(name);
                if path.exists() {
                    std::fs::remove_file(&path).map_err(|e| TrainError::io(&path, e))?;
                }
            }
        }
        Ok(())
    }

    /// Points `name` at the file `target` of this folder (a hard link, or a copy where links
    /// are not possible), atomically.
    fn link_latest(&self, target: &str, name: &str) -> Result<(), TrainError> {
        let from = self.path.join(target);
        let to = self.path.join(name);
        let tmp = self.path.join(format!("{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(&from, &tmp).is_err() {
            std::fs::copy(&from, &tmp).map_err(|e| TrainError::io(&tmp, e))?;
        }
        std::fs::rename(&tmp, &to).map_err(|e| TrainError::io(&to, e))
    }

    /// Reads `state.json`.
    pub fn read_state(&self) -> Result<TrainState, TrainError> {
        let path = self.path.join(STATE);
        let bytes = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                TrainError::Corrupt {
                    path: path.clone(),
                    reason: "missing: the run has not finished an epoch, so there is nothing to resume; start it again".into(),
                }
            } else {
                TrainError::io(&path, e)
            }
        })?;
        let state: TrainState =
            serde_json::from_slice(&bytes).map_err(|e| TrainError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let corrupt = |reason: String| TrainError::Corrupt {
            path: path.clone(),
            reason,
        };
        if state.history.len() != state.epoch {
            return Err(corrupt(format!(
                "{} epochs of metrics for {} epochs done",
                state.history.len(),
                state.epoch
            )));
        }
        if state.best_epoch > state.epoch {
            return Err(corrupt(format!(
                "its best epoch {} is past the {} epochs done",
                state.best_epoch, state.epoch
            )));
        }
        // The checkpoints it names are files of this folder, never a path elsewhere.
        for name in [&state.checkpoint, &state.optimizer] {
            let plain = Path::new(name)
                .file_name()
                .is_some_and(|f| f == name.as_str());
            if !plain || name.starts_with('.') {
                return Err(corrupt(format!(
                    "`{name}` is not a checkpoint file of the run folder"
                )));
            }
        }
        Ok(state)
    }

    /// `optim` with the state saved in `name`.
    pub fn load_optimizer(
        &self,
        optim: ModuleOptimizer,
        name: &str,
    ) -> Result<ModuleOptimizer, TrainError> {
        let path = self.path.join(name);
        let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
        optim
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
            .map_err(|e| TrainError::Record(path, e.to_string()))
    }
}

/// The weights file `path` names: the file itself, or a run folder's `best.bpk`.
pub fn weights_path(path: &Path) -> Result<PathBuf, TrainError> {
    if path.is_dir() {
        let best = path.join(BEST);
        if best.is_file() {
            return Ok(best);
        }
        return Err(TrainError::Config(format!(
            "{}: a folder without {BEST}; give a weights file (.bpk) or a konv run folder",
            path.display()
        )));
    }
    if !path.is_file() {
        return Err(TrainError::Config(format!(
            "{}: no such weights file; give a .bpk file or a konv run folder",
            path.display()
        )));
    }
    Ok(path.to_path_buf())
}

/// Loads weights from a burnpack file into `model` (which must have the same layout);
/// `path` may also be a run folder (its `best.bpk`).
pub fn load_module<M: Module>(model: M, path: &Path) -> Result<M, TrainError> {
    let path = &weights_path(path)?;
    let record = ModuleRecord::load(path)
        .map_err(|e| TrainError::Record(path.to_path_buf(), e.to_string()))?;
    model
        .try_load_record(record)
        .map_err(|e| TrainError::Record(path.to_path_buf(), e.to_string()))
}

/// The most classes a run may have: labels are bytes.
const MAX_RUN_CLASSES: usize = 256;

/// Checks what every task's `config.json` has in common before a model is built from it:
/// `input` `[channels, height, width]` of 1–4 channels and sides up to
/// [`konv_datasets::folder::MAX_SIDE`], 1–256 `class_names`, and a finite, positive
/// standardization. A file edited by hand or damaged then fails here, as a corrupt run, and
/// never as an allocation of a model of any size or a division by zero.
fn check_run_config(value: &serde_json::Value) -> Result<(), String> {
    use konv_datasets::folder::MAX_SIDE;
    if let Some(input) = value.get("input").and_then(|v| v.as_array()) {
        let dims: Vec<u64> = input.iter().filter_map(serde_json::Value::as_u64).collect();
        let ok = matches!(dims.as_slice(), [c, h, w]
            if (1..=4).contains(c)
                && (1..=u64::from(MAX_SIDE)).contains(h)
                && (1..=u64::from(MAX_SIDE)).contains(w));
        if !ok {
            return Err(format!(
                "input {input:?} is not [channels 1–4, height, width 1–{MAX_SIDE}]"
            ));
        }
    }
    if let Some(names) = value.get("class_names").and_then(|v| v.as_array())
        && !(1..=MAX_RUN_CLASSES).contains(&names.len())
    {
        return Err(format!(
            "{} class names; a run has 1 to {MAX_RUN_CLASSES}",
            names.len()
        ));
    }
    if let Some(normalize) = value.get("normalize") {
        let mut stds: Vec<Option<f64>> = vec![normalize.get("std").and_then(|v| v.as_f64())];
        if let Some(rgb) = normalize.get("rgb").and_then(|v| v.as_array()) {
            stds.extend(rgb.iter().map(|pair| pair.get(1).and_then(|v| v.as_f64())));
        }
        if stds
            .iter()
            .any(|s| !s.is_some_and(|s| s.is_finite() && s > 0.0))
        {
            return Err("its standardization has a standard deviation that is not positive".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(name: &str, file: &str, json: &str) -> RunDir {
        let dir = std::env::temp_dir().join(format!("konv-run-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(CONFIG), "{}").unwrap();
        std::fs::write(dir.join(file), json).unwrap();
        RunDir::open(&dir).unwrap()
    }

    #[test]
    fn a_state_naming_files_outside_the_run_is_corrupt() {
        for (checkpoint, best_epoch) in [
            ("../../elsewhere/weights.bpk", 1),
            ("/etc/passwd", 1),
            (".hidden.bpk", 1),
            ("epoch-1.bpk", 2),
        ] {
            let json = format!(
                r#"{{"epoch":1,"history":[{{"epoch":1,"train_loss":1.0,"train_accuracy":0.5,"val_loss":1.0,"val_accuracy":0.5,"lr":0.1,"images_per_sec":10.0,"seconds":1.0}}],"best_epoch":{best_epoch},"best_score":0.5,"checkpoint":"{checkpoint}","optimizer":"optimizer-1.bpk"}}"#
            );
            let run = run_with("state", STATE, &json);
            let err = run.read_state().unwrap_err().to_string();
            assert!(err.contains("state.json: corrupt"), "{checkpoint}: {err}");
            std::fs::remove_dir_all(&run.path).ok();
        }
    }

    #[test]
    fn a_config_that_would_build_an_impossible_model_is_corrupt() {
        for (json, says) in [
            (r#"{"input":[0,28,28]}"#, "channels"),
            (r#"{"input":[1,28,4000000000]}"#, "channels"),
            (r#"{"class_names":[]}"#, "0 class names"),
            (
                r#"{"normalize":{"mean":0.5,"std":0.0}}"#,
                "standard deviation",
            ),
        ] {
            let run = run_with("config", CONFIG, json);
            let err = run
                .read_config::<serde_json::Value>()
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("corrupt") && err.contains(says),
                "{json}: {err}"
            );
            std::fs::remove_dir_all(&run.path).ok();
        }
    }
}
