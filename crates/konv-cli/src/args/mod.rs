//! The flags of each subcommand, as clap parses them (what the user typed), and the value
//! parsers they share. Turning them into library settings is the commands' job
//! ([`crate::commands`]), as ripgrep keeps its low-level and high-level arguments apart.

mod folder;
mod run;
mod tools;
mod train;

pub(crate) use folder::*;
pub(crate) use run::*;
pub(crate) use tools::*;
pub(crate) use train::*;

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use konv_datasets::{DatasetName, Locator};

#[derive(Args)]
pub(crate) struct DataArgs {
    /// Folder with the dataset's four IDX files (raw or .gz); the only place looked at when given.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Do not try to download missing data.
    #[arg(long)]
    pub(crate) no_download: bool,
    /// Fail instead of falling back to the embedded Fashion-MNIST subset.
    #[arg(long, conflicts_with = "embedded")]
    pub(crate) full: bool,
    /// Use the embedded Fashion-MNIST subset even when the full dataset is present (quick runs).
    #[arg(long)]
    pub(crate) embedded: bool,
}

impl DataArgs {
    /// Loads `name` from where these flags say.
    pub(crate) fn load(&self, name: DatasetName) -> Result<konv_datasets::Dataset> {
        if self.embedded {
            if name != DatasetName::FashionMnist {
                bail!("--embedded: only fashion-mnist has an embedded subset");
            }
            return Ok(konv_datasets::mnist::embedded_fashion_mnist());
        }
        Ok(self.locator().load(name)?)
    }

    pub(crate) fn locator(&self) -> Locator {
        Locator {
            data_dir: self.data_dir.clone(),
            download: !self.no_download,
            allow_embedded: !self.full,
        }
    }
}

/// `A,B` as two numbers (a range such as `--scale 1.0,2.0`).
pub(crate) fn parse_pair<T: std::str::FromStr>(s: &str) -> Result<(T, T), String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    match parts[..] {
        [a, b] => match (a.parse(), b.parse()) {
            (Ok(a), Ok(b)) => Ok((a, b)),
            _ => Err(format!("`{s}`: give two numbers, smallest first, e.g. 1,2")),
        },
        _ => Err(format!(
            "`{s}`: give two numbers separated by a comma, e.g. 1,2"
        )),
    }
}

pub(crate) fn parse_dataset(s: &str) -> Result<DatasetName, String> {
    DatasetName::parse(s).ok_or_else(|| {
        let names: Vec<_> = DatasetName::ALL.iter().map(|d| d.as_str()).collect();
        format!("unknown dataset; valid datasets: {}", names.join(", "))
    })
}

pub(crate) fn parse_chw(s: &str) -> Result<[usize; 3], String> {
    let dims: Vec<usize> = s
        .split(['x', '×'])
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("expected CxHxW, e.g. 3x224x224, got `{s}`"))?;
    match dims[..] {
        [c, h, w] if c > 0 && h > 0 && w > 0 => Ok([c, h, w]),
        _ => Err(format!(
            "expected CxHxW with three positive numbers, e.g. 3x224x224, got `{s}`"
        )),
    }
}

pub(crate) fn parse_augment(s: &str) -> Result<konv_train::augment::Pipeline, String> {
    s.parse()
}

pub(crate) fn parse_schedule(s: &str) -> Result<konv_train::schedule::LrSchedule, String> {
    s.parse()
}

pub(crate) fn parse_non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err("expected a number ≥ 0, e.g. 0.0005".into()),
    }
}

pub(crate) fn parse_positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err("expected a positive number, e.g. 0.01".into()),
    }
}

pub(crate) fn parse_momentum(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
        _ => Err("expected a number in [0, 1), e.g. 0.9".into()),
    }
}

pub(crate) fn parse_decay(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v < 1.0 => Ok(v),
        _ => Err("expected a decay in (0, 1), e.g. 0.999".into()),
    }
}

pub(crate) fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
        _ => Err("expected a number in [0, 1), e.g. 0.1".into()),
    }
}
