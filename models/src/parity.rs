//! Tensors in safetensors files, and the torchvision parity check.
//!
//! A parity fixture directory (written by `xtask/parity/make_fixtures.py`) holds, per model,
//! the torchvision state dict (`NAME.safetensors`), a seeded input and torchvision's output
//! (`NAME.io.safetensors`, keys `input` and `output`), and a `manifest.json` listing the
//! models with their width divisor and class count. [`check_fixtures`] builds each konv
//! model, loads the state dict with [`crate::import::load_pytorch`], runs it in inference
//! mode and compares.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::Deserialize;

use crate::import::{ImportError, load_pytorch};

/// Reading or writing a safetensors file failed.
#[derive(Debug, thiserror::Error)]
pub enum TensorIoError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not a safetensors file, or no such key, or not float32.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// Reads float32 tensor `key` of a safetensors file.
pub fn read_tensor<const D: usize>(
    path: &Path,
    key: &str,
    device: &Device,
) -> Result<Tensor<D>, TensorIoError> {
    let bytes = std::fs::read(path).map_err(|source| TensorIoError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let format = |reason: String| TensorIoError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| format(format!("not a safetensors file ({e})")))?;
    let view = file.tensor(key).map_err(|_| {
        let mut keys: Vec<String> = file.names().into_iter().map(|k| k.to_string()).collect();
        keys.sort();
        format(format!(
            "no tensor `{key}` (the file has: {})",
            keys.join(", ")
        ))
    })?;
    if view.dtype() != Dtype::F32 {
        return Err(format(format!(
            "tensor `{key}` is {:?}, expected F32",
            view.dtype()
        )));
    }
    let shape = view.shape().to_vec();
    if shape.len() != D {
        return Err(format(format!(
            "tensor `{key}` has shape {shape:?}, expected {D} dimensions"
        )));
    }
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Tensor::from_data(TensorData::new(values, shape), device))
}

/// Writes float32 tensors to a safetensors file (atomically: a temporary file, renamed).
pub fn write_tensors(path: &Path, tensors: Vec<(String, TensorData)>) -> Result<(), TensorIoError> {
    let format = |reason: String| TensorIoError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let mut owned = Vec::new();
    for (key, data) in tensors {
        let shape = data.shape().to_vec();
        let values = data
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| format(format!("tensor `{key}`: {e:?}")))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        owned.push((key, shape, bytes));
    }
    let views = owned
        .iter()
        .map(|(key, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|view| (key.clone(), view))
                .map_err(|e| format(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = safetensors::serialize(views, None).map_err(|e| format(e.to_string()))?;
    let tmp = path.with_extension("safetensors.tmp");
    let io = |source| TensorIoError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// One model of a fixture directory.
#[derive(Debug, Clone, Deserialize)]
pub struct FixtureEntry {
    /// torchvision's (and konv's) model name.
    pub name: String,
    /// Width divisor of the reduced network (1: the real one).
    pub divisor: usize,
    /// Classes of the head.
    pub classes: usize,
}

/// The outcome for one model.
#[derive(Debug, Clone)]
pub struct ParityResult {
    /// The model.
    pub name: String,
    /// Width divisor.
    pub divisor: usize,
    /// Tensors loaded from the state dict.
    pub loaded: usize,
    /// `max |konv − torchvision|`.
    pub max_abs_diff: f32,
    /// `max |torchvision|`.
    pub max_abs_ref: f32,
}

impl ParityResult {
    /// The bar: `max |konv − torchvision| ≤ 1e-4 · max |torchvision|`.
    pub fn passes(&self) -> bool {
        self.max_abs_diff <= 1e-4 * self.max_abs_ref
    }
}

/// A fixture could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    /// The manifest is missing or malformed.
    #[error("{path}: {reason}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Model unknown or not reducible.
    #[error(transparent)]
    Model(#[from] crate::ModelError),
    /// The state dict did not load.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// An input/output file.
    #[error(transparent)]
    Io(#[from] TensorIoError),
}

/// Builds, loads and runs every model of the fixture directory `dir`.
pub fn check_fixtures(dir: &Path, device: &Device) -> Result<Vec<ParityResult>, ParityError> {
    let manifest = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).map_err(|e| ParityError::Manifest {
        path: manifest.clone(),
        reason: e.to_string(),
    })?;
    let entries: Vec<FixtureEntry> =
        serde_json::from_str(&text).map_err(|e| ParityError::Manifest {
            path: manifest.clone(),
            reason: e.to_string(),
        })?;
    let mut results = Vec::new();
    for entry in entries {
        let mut model =
            crate::registry::build_narrow(&entry.name, entry.classes, entry.divisor, device)?;
        let report = load_pytorch(
            &mut model,
            &entry.name,
            &dir.join(format!("{}.safetensors", entry.name)),
        )?;
        let io = dir.join(format!("{}.io.safetensors", entry.name));
        let input: Tensor<4> = read_tensor(&io, "input", device)?;
        let expected: Tensor<2> = read_tensor(&io, "output", device)?;
        let output = model.forward(input);
        let max_abs_diff = (output - expected.clone()).abs().max().into_scalar::<f32>();
        let max_abs_ref = expected.abs().max().into_scalar::<f32>();
        results.push(ParityResult {
            name: entry.name,
            divisor: entry.divisor,
            loaded: report.loaded,
            max_abs_diff,
            max_abs_ref,
        });
    }
    Ok(results)
}
