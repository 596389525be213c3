//! PyTorch weights into konv models, through burn-store.
//!
//! Field names follow torchvision's state-dict keys, so a torchvision `state_dict()` saved
//! with `torch.save` (`.pth`/`.pt`) or `safetensors.torch.save_file` (`.safetensors`) loads
//! key for key: burn-store's PyTorch adapter transposes dense weights and maps batch norm's
//! `weight`/`bias` to Burn's `gamma`/`beta`; `nn.Sequential` indices are kept as they are
//! (konv models use the same indices). A missing tensor or a shape mismatch is an error that
//! lists the keys; tensors of the file that the model does not use are reported
//! (`num_batches_tracked` is always unused: Burn does not count batches).

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::store::{
    ApplyError, ApplyResult, ModuleSnapshot, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};

/// What an import loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// Tensors loaded into the model.
    pub loaded: usize,
    /// Tensors of the file the model has no place for (`num_batches_tracked` left out).
    pub unused: Vec<String>,
}

/// Why an import failed. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file is not there.
    #[error("weights file {path} does not exist")]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// Neither `.pth`/`.pt` nor `.safetensors`.
    #[error("weights file {path}: unknown format; expected .pth, .pt or .safetensors")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// The file could not be read as its format.
    #[error("weights file {path} could not be read: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The reader's message.
        reason: String,
    },
    /// The file does not fit the model: missing tensors or wrong shapes.
    #[error("weights file {path} does not fit model `{model}`: {summary}; is it the right model?")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The model's name.
        model: String,
        /// One line: counts and the first keys.
        summary: String,
        /// Every missing key.
        missing: Vec<String>,
        /// Every shape mismatch, `key: expected …, found …`.
        wrong_shape: Vec<String>,
    },
}

fn first_keys(keys: &[String]) -> String {
    let shown: Vec<&str> = keys.iter().take(3).map(String::as_str).collect();
    let more = keys.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// A Burn tensor path as PyTorch names it: batch norm's `gamma`/`beta` are `weight`/`bias`.
fn pytorch_key(path: &str) -> String {
    if let Some(stem) = path.strip_suffix(".gamma") {
        format!("{stem}.weight")
    } else if let Some(stem) = path.strip_suffix(".beta") {
        format!("{stem}.bias")
    } else {
        path.to_string()
    }
}

fn report(path: &Path, model: &str, result: ApplyResult) -> Result<ImportReport, ImportError> {
    let mut missing: Vec<String> = result
        .missing
        .iter()
        .map(|(key, _)| pytorch_key(key))
        .collect();
    missing.sort();
    let wrong_shape: Vec<String> = result
        .errors
        .iter()
        .map(|e| match e {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => format!(
                "{}: {:?} in the model, {:?} in the file",
                pytorch_key(path),
                expected.as_slice(),
                found.as_slice()
            ),
            other => other.to_string(),
        })
        .collect();
    let unused: Vec<String> = result
        .unused
        .into_iter()
        .filter(|k| !k.ends_with("num_batches_tracked"))
        .collect();
    if !missing.is_empty() || !wrong_shape.is_empty() {
        let mut parts = Vec::new();
        if !wrong_shape.is_empty() {
            parts.push(format!(
                "{} tensor(s) of the wrong shape ({})",
                wrong_shape.len(),
                first_keys(&wrong_shape)
            ));
        }
        if !missing.is_empty() {
            parts.push(format!(
                "{} tensor(s) missing from the file ({})",
                missing.len(),
                first_keys(&missing)
            ));
        }
        if !unused.is_empty() {
            parts.push(format!(
                "{} in the file unused ({})",
                unused.len(),
                first_keys(&unused)
            ));
        }
        return Err(ImportError::Mismatch {
            path: path.to_path_buf(),
            model: model.to_string(),
            summary: parts.join(", "),
            missing,
            wrong_shape,
        });
    }
    Ok(ImportReport {
        loaded: result.applied.len(),
        unused,
    })
}

/// Loads a PyTorch state dict (`.pth`/`.pt`, or `.safetensors` with PyTorch's layout) into
/// `model`, named `model_name` in errors. Every tensor of the model must be in the file.
pub fn load_pytorch<M: Module>(
    model: &mut M,
    model_name: &str,
    path: &Path,
) -> Result<ImportReport, ImportError> {
    if !path.is_file() {
        return Err(ImportError::NotFound {
            path: path.to_path_buf(),
        });
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let unreadable = |reason: String| ImportError::Unreadable {
        path: path.to_path_buf(),
        reason,
    };
    let result = match ext.as_str() {
        "pth" | "pt" | "bin" => {
            let mut store = PytorchStore::from_file(path)
                .map_indices_contiguous(false)
                .validate(false)
                .allow_partial(true);
            model
                .load_from(&mut store)
                .map_err(|e| unreadable(e.to_string()))?
        }
        "safetensors" => {
            let mut store = SafetensorsStore::from_file(path)
                .with_from_adapter(PyTorchToBurnAdapter)
                .skip_enum_variants(true)
                .map_indices_contiguous(false)
                .validate(false)
                .allow_partial(true);
            model
                .load_from(&mut store)
                .map_err(|e| unreadable(e.to_string()))?
        }
        _ => {
            return Err(ImportError::UnknownFormat {
                path: path.to_path_buf(),
            });
        }
    };
    report(path, model_name, result)
}

/// Builds zoo model `name` for `num_classes` classes and loads `path` into it, in inference
/// mode. The class count must match the file's head.
pub fn load_classifier(
    name: &str,
    num_classes: usize,
    path: &Path,
    device: &Device,
) -> Result<(crate::Classifier, ImportReport), LoadError> {
    let mut model = crate::build(name, num_classes, device)?;
    let report = load_pytorch(&mut model, name, path)?;
    Ok((model, report))
}

/// Building or importing failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Unknown model.
    #[error(transparent)]
    Model(#[from] crate::ModelError),
    /// The weights did not load.
    #[error(transparent)]
    Import(#[from] ImportError),
}
