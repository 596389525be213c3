//! `--dataset folder`'s flags and `konv export`'s.

use std::fmt;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use konv_datasets::DatasetName;

use super::DataArgs;

/// `--dataset`: a named dataset or an image folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DatasetChoice {
    /// MNIST or Fashion-MNIST.
    Named(DatasetName),
    /// The user's own images (`--data-dir`).
    Folder,
}

impl fmt::Display for DatasetChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatasetChoice::Named(name) => write!(f, "{name}"),
            DatasetChoice::Folder => f.write_str("folder"),
        }
    }
}

/// Parses `--dataset`.
pub(crate) fn parse_dataset_choice(s: &str) -> Result<DatasetChoice, String> {
    if s == "folder" {
        return Ok(DatasetChoice::Folder);
    }
    DatasetName::parse(s)
        .map(DatasetChoice::Named)
        .ok_or_else(|| {
            let names: Vec<_> = DatasetName::ALL.iter().map(|d| d.as_str()).collect();
            format!(
                "unknown dataset; valid datasets: {}, folder",
                names.join(", ")
            )
        })
}

/// How `--dataset folder` reads the images.
#[derive(Args, Debug, Clone)]
pub(crate) struct FolderArgs {
    /// --dataset folder: resize each image's shorter side to S and keep the centre S×S
    /// (default: the images' own size, which must then be the same for all).
    #[arg(long, value_parser = clap::value_parser!(u32).range(4..=4096))]
    pub(crate) image_size: Option<u32>,
    /// --dataset folder: read images as gray (1) or RGB (3) (default: 3 when any image has
    /// color).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3))]
    pub(crate) channels: Option<u32>,
    /// --dataset folder: skip (and count) files that cannot be decoded instead of failing.
    #[arg(long)]
    pub(crate) skip_bad: bool,
    /// --dataset folder: decode files cut short (a JPEG without its end marker, a PNG
    /// without IEND) with a warning, instead of refusing them.
    #[arg(long)]
    pub(crate) allow_truncated: bool,
    /// --dataset folder: decode every time instead of keeping decoded images in the cache
    /// ($KONV_CACHE/folders, else ~/.cache/konv/folders).
    #[arg(long)]
    pub(crate) no_cache: bool,
}

impl FolderArgs {
    /// Fails when a folder flag is given without `--dataset folder`.
    pub(crate) fn refuse_without_folder(&self) -> Result<()> {
        for (given, flag) in [
            (self.image_size.is_some(), "--image-size"),
            (self.channels.is_some(), "--channels"),
            (self.skip_bad, "--skip-bad"),
            (self.allow_truncated, "--allow-truncated"),
        ] {
            if given {
                bail!("{flag} reads image folders; give --dataset folder --data-dir DIR with it");
            }
        }
        Ok(())
    }

    pub(crate) fn cache(&self) -> Option<PathBuf> {
        cache_dir(self.no_cache)
    }
}

pub(crate) fn cache_dir(off: bool) -> Option<PathBuf> {
    (!off).then(konv_datasets::folder::default_cache_dir)
}

/// `konv export`: a dataset as an image folder.
#[derive(Args)]
pub(crate) struct ExportArgs {
    /// Dataset: fashion-mnist or mnist.
    #[arg(long, default_value = "fashion-mnist", value_parser = super::parse_dataset)]
    pub(crate) dataset: DatasetName,
    /// The folder to create (root/train/<class>/*.png, root/test/<class>/*.png); it must
    /// not exist yet.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Write only the first N training and N test images.
    #[arg(long)]
    pub(crate) limit: Option<usize>,
    #[command(flatten)]
    pub(crate) data: DataArgs,
}
