//! Image folders on the command line: `konv train --dataset folder --data-dir DIR`, its
//! `--resume`, evaluation and prediction, and `konv export`.

use std::path::Path;

use anyhow::{Result, bail};
use konv_datasets::folder::{FolderLayout, export_set};
use konv_datasets::{DatasetName, FolderError, ImageFolder, ImageSet};
use konv_train::observer::OutputMode;
use konv_train::run::RunDir;
use konv_train::train::{FolderSpec, RunInfo, SplitData, pretrained_normalize};

use crate::args::{ExportArgs, Task, TrainArgs, cache_dir};
use crate::commands::{Source, resume_classifier, train_classifier, train_config};

/// A folder error with the flag that fixes it.
fn explain(e: FolderError) -> anyhow::Error {
    let hint = match &e {
        FolderError::BadImage { reason, .. } if reason.starts_with("truncated") => {
            "; or pass --allow-truncated to decode it anyway, or --skip-bad"
        }
        FolderError::BadImage { .. } => "; fix or delete the file, or pass --skip-bad",
        FolderError::MixedSizes { .. } => "; give --image-size S",
        FolderError::Channels(_) => "; give --channels 1 or 3",
        _ => "",
    };
    anyhow::anyhow!("{e}{hint}")
}

/// Lists and decodes the folder `spec` names, printing what was skipped.
fn open(dir: &Path, options: &konv_datasets::FolderOptions) -> Result<ImageFolder> {
    let folder = FolderLayout::scan(dir)
        .and_then(|layout| layout.load(options))
        .map_err(explain)?;
    if !folder.skipped.is_empty() {
        eprintln!(
            "warning: {} file(s) could not be decoded and were skipped (--skip-bad), e.g. {}",
            folder.skipped.len(),
            folder.skipped[0].display()
        );
    }
    if !folder.truncated.is_empty() {
        eprintln!(
            "warning: {} file(s) were cut short and decoded anyway (--allow-truncated; the missing part is filled in), e.g. {}",
            folder.truncated.len(),
            folder.truncated[0].display()
        );
    }
    Ok(folder)
}

/// `konv train --dataset folder`: classification on the user's images.
pub(crate) fn train(args: &TrainArgs, mode: OutputMode) -> Result<()> {
    if args.task != Task::Classify {
        bail!(
            "--dataset folder trains classifiers; --task {} trains on generated canvases of fashion-mnist or mnist",
            args.task
        );
    }
    if args.data.embedded {
        bail!("--embedded is the Fashion-MNIST subset; drop it with --dataset folder");
    }
    if args.classes.is_some() {
        bail!(
            "--classes picks classes of fashion-mnist or mnist; with --dataset folder, keep only the class folders to train on"
        );
    }
    let Some(dir) = &args.data.data_dir else {
        bail!(
            "--dataset folder needs --data-dir DIR, a folder with one sub-folder of images per class"
        );
    };
    let f = &args.folder;
    let options = konv_datasets::FolderOptions {
        channels: f.channels.map(|c| c as usize),
        image_size: f.image_size.map(|s| s as usize),
        skip_bad: f.skip_bad,
        cache: f.cache(),
        workers: 0,
        allow_truncated: f.allow_truncated,
    };
    let device = args.backend.open()?;
    let folder = open(dir, &options)?;
    let val_size = match (&folder.val, args.val_size) {
        (Some(val), _) => val.len(),
        (None, Some(n)) => n,
        // Keras' validation_split=0.2 would be a fifth; a tenth keeps more to train on.
        (None, None) => (folder.train.len() / 10).max(1),
    };
    if folder.val.is_none() && val_size >= folder.train.len() {
        bail!(
            "--val-size {val_size} leaves no training images ({} has {} images and no val/ folder)",
            dir.display(),
            folder.train.len()
        );
    }
    let mut config = train_config(args, val_size);
    config.folder = Some(FolderSpec {
        dir: dir.clone(),
        image_size: options.image_size,
        channels: folder.train.images.channels,
        skip_bad: options.skip_bad,
        allow_truncated: options.allow_truncated,
    });
    let mut data = SplitData::from_folder(&folder, val_size, args.limit, args.seed);
    if data.train.is_empty() {
        bail!("--limit 0 leaves no training images; give --limit 1 or more");
    }
    // Imported torchvision weights saw ImageNet's standardization: fine-tune with it.
    let channels = folder.train.images.channels;
    if let Some(path) = &config.init_from
        && let Some(normalize) = pretrained_normalize(&config.model, path, channels)?
    {
        data.normalize = normalize;
        if mode != OutputMode::Quiet {
            println!(
                "note: standardizing as `{}`'s pretrained weights expect, not with the folder's own statistics",
                config.model
            );
        }
    }
    if folder.test.is_none() && mode != OutputMode::Quiet {
        println!(
            "note: {} has no test/ folder; the final evaluation is on the validation images",
            dir.display()
        );
    }
    let source = Source {
        text: folder.to_string(),
        subset: false,
    };
    let names = folder.class_names.clone();
    train_classifier(args, config, &data, names, source, &device, mode)
}

/// Whether `dir` holds a classification run on an image folder.
pub(crate) fn is_folder_run(dir: &Path) -> Result<bool> {
    let Ok(run) = RunDir::open(dir) else {
        return Ok(false);
    };
    Ok(konv_train::train::RunInfo::read(&run)
        .map(|info| info.config.folder.is_some())
        .unwrap_or(false))
}

/// The folder and splits of a folder run, read as the run read them.
fn run_data(info: &RunInfo, no_cache: bool) -> Result<(ImageFolder, SplitData)> {
    let config = &info.config;
    let spec = config
        .folder
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("not a folder run"))?;
    let folder = open(&spec.dir, &spec.options(cache_dir(no_cache)))?;
    if folder.class_names != info.class_names {
        bail!(
            "{}: the class folders are now {}, the run trained on {}",
            spec.dir.display(),
            folder.class_names.join(", "),
            info.class_names.join(", ")
        );
    }
    let mut data = SplitData::from_folder(
        &folder,
        config.settings.val_size,
        config.settings.limit,
        config.settings.seed,
    );
    // The run's own standardization (measured, or the pretrained weights').
    data.normalize = info.normalize;
    Ok((folder, data))
}

/// `konv train --resume DIR` for a folder run.
pub(crate) fn resume(dir: &Path, args: &TrainArgs, mode: OutputMode) -> Result<()> {
    let run_dir = RunDir::open(dir)?;
    let info = konv_train::train::RunInfo::read(&run_dir)?;
    let (_, data) = run_data(&info, args.folder.no_cache)?;
    resume_classifier(dir, &run_dir, &info, &data, mode)
}

/// The images `konv eval` tests a folder run on: `test/`, or the validation images when the
/// folder has none; and where they came from, in words.
pub(crate) fn eval_set(info: &RunInfo) -> Result<(ImageSet, String)> {
    let (folder, data) = run_data(info, false)?;
    let what = if folder.test.is_some() {
        format!("{}/test", folder.root.display())
    } else {
        format!(
            "{} (validation images; no test/ folder)",
            folder.root.display()
        )
    };
    Ok(((*data.test).clone(), what))
}

/// The preprocessing of a folder run's images for `konv predict`: the same resize and
/// crop, channels and per-channel standardization as in training.
pub(crate) fn preprocess(info: &RunInfo) -> konv_models::preprocess::Preprocess {
    let [c, h, w] = info.input;
    let n = info.normalize;
    let spec = info.config.folder.as_ref();
    konv_models::preprocess::Preprocess {
        channels: c,
        resize: spec.and_then(|s| s.image_size).unwrap_or(h.min(w)),
        crop: [h, w],
        mean: [0, 1, 2].map(|i| n.channel(i).0),
        std: [0, 1, 2].map(|i| n.channel(i).1),
        light_on_dark: false,
    }
}

/// Folder names of `name`'s classes: their index first (so that sorted folders keep the
/// dataset's label order) and no path separators.
pub(crate) fn export_class_names(name: DatasetName) -> Vec<String> {
    name.class_names()
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{i}-{}", c.replace(['/', '\\', ' '], "-")))
        .collect()
}

/// `konv export`: writes into a folder beside `--out`, then renames it, so that a failed
/// export leaves nothing.
pub(crate) fn cmd_export(args: ExportArgs) -> Result<()> {
    if args.out.exists() {
        bail!(
            "{}: already exists; give --out a new folder",
            args.out.display()
        );
    }
    let dataset = args.data.load(args.dataset)?;
    let limit = |set: &ImageSet| match args.limit {
        Some(n) => set.take(n),
        None => set.clone(),
    };
    let (train, test) = (limit(&dataset.train), limit(&dataset.test));
    let names = export_class_names(args.dataset);
    let parent = args
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!(
            "{}: no such folder to export into; create it first",
            parent.display()
        );
    }
    let file = args.out.file_name().unwrap_or_default().to_string_lossy();
    let partial = parent.join(format!(".{file}.partial-{}", std::process::id()));
    let written = export_set(&train, &names, &partial.join("train"))
        .and_then(|()| export_set(&test, &names, &partial.join("test")))
        .map_err(anyhow::Error::from)
        .and_then(|()| std::fs::rename(&partial, &args.out).map_err(anyhow::Error::from));
    if let Err(e) = written {
        std::fs::remove_dir_all(&partial).ok();
        return Err(e);
    }
    println!(
        "{}: {} ({}) as PNGs, {} train / {} test images in {} class folders; train with `konv train --dataset folder --data-dir {}`",
        args.out.display(),
        args.dataset,
        dataset.source,
        train.len(),
        test.len(),
        names.len(),
        args.out.display()
    );
    Ok(())
}
