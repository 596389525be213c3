//! `konv train` for classification: flags to a [`TrainConfig`], the data, the run folder,
//! and `--resume`.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use konv_train::engine::Settings;
use konv_train::observer::{ConsoleObserver, OutputMode};
use konv_train::run::{self, RunDir};
use konv_train::train::{RunInfo, SplitData, TrainConfig, train};

use crate::args::*;
use crate::commands::*;

pub(crate) fn cmd_train(args: TrainArgs) -> Result<()> {
    let mode = OutputMode::detect(args.quiet);
    if let Some(dir) = &args.resume
        && folder::is_folder_run(dir)?
    {
        return folder::resume(dir, &args, mode);
    }
    let name = match args.dataset {
        DatasetChoice::Folder => return folder::train(&args, mode),
        DatasetChoice::Named(name) => name,
    };
    args.folder.refuse_without_folder()?;
    let dataset = args.data.load(name)?;
    let device = args.backend.open()?;
    let say = |msg: String| {
        if mode != OutputMode::Quiet {
            println!("{msg}");
        }
    };
    if dataset.is_subset() {
        say("note: training on the embedded Fashion-MNIST subset (6,000 train / 1,000 test images), \
             not the full dataset; for the full 70,000 images: apt-get install dataset-fashion-mnist, \
             or --data-dir DIR"
            .to_string());
    }
    let val_size = args
        .val_size
        .unwrap_or(if dataset.is_subset() { 500 } else { 5000 });
    if val_size >= dataset.train.len() {
        bail!(
            "--val-size {val_size} leaves no training images (the training set has {})",
            dataset.train.len()
        );
    }
    if let Some(dir) = &args.resume
        && let Some(task) = dense_task(dir)?
    {
        return resume_dense(dir, &task, &args, mode);
    }
    match args.task {
        Task::Localize => return train_localize(&args, &dataset, val_size, mode),
        Task::Segment => return train_segment(&args, &dataset, mode),
        Task::Detect => return train_detect(&args, &dataset, mode),
        Task::Classify => {}
    }
    if let Some(dir) = &args.resume {
        return resume_run(dir, &args, &dataset, mode);
    }
    if let Some(classes) = &args.classes {
        check_classes(classes, dataset.class_names().len())?;
    }
    let config = train_config(&args, val_size);
    let data = SplitData::with_classes(
        &dataset,
        config.classes.as_deref(),
        val_size,
        args.limit,
        args.seed,
    );
    let class_names: Vec<String> = match &config.classes {
        Some(c) => c
            .iter()
            .map(|&i| dataset.class_names()[i as usize].to_string())
            .collect(),
        None => dataset
            .class_names()
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let source = Source {
        text: dataset.source.to_string(),
        subset: dataset.is_subset(),
    };
    train_classifier(&args, config, &data, class_names, source, &device, mode)
}

/// The training settings `args` give (`val_size` resolved).
pub(crate) fn train_config(args: &TrainArgs, val_size: usize) -> TrainConfig {
    TrainConfig {
        model: args.model.clone(),
        dataset: args.dataset.to_string(),
        backend: args.backend,
        init_from: args.init_from.clone(),
        label_smoothing: args.label_smoothing,
        classes: args.classes.clone(),
        folder: None,
        zero_init_residual: args.zero_init_residual,
        settings: settings(args, val_size),
    }
}

/// The settings every task shares, from the flags: one place for all four tasks.
pub(crate) fn settings(args: &TrainArgs, val_size: usize) -> Settings {
    Settings {
        epochs: args.epochs as usize,
        batch_size: args.batch_size as usize,
        lr: args.lr,
        lr_schedule: args.lr_schedule.clone(),
        optimizer: args.optimizer,
        momentum: args.momentum,
        nesterov: args.nesterov,
        weight_decay: args.weight_decay,
        no_decay_bias_norm: args.no_decay_bias_norm,
        clip_grad_norm: args.clip_grad_norm,
        augment: args.augment.clone(),
        augment_off_epoch: args.augment_off_epoch.map(|e| e as usize),
        seed: args.seed,
        limit: args.limit,
        val_size,
        freeze_epochs: args.freeze_epochs,
        head_lr: args.head_lr,
        monitor: args.monitor,
        early_stop: args.early_stop.map(|p| p as usize),
        keep_checkpoints: args.keep_checkpoints as usize,
        replicas: args.replicas as usize,
        progressive_resize: args.progressive_resize,
        ema: args.ema,
    }
}

/// Where a run's data came from, for its `config.json` and the first line it prints.
pub(crate) struct Source {
    /// The folder or the embedded subset, in words.
    pub text: String,
    /// Whether it is the embedded subset.
    pub subset: bool,
}

/// Checks that `config.model` takes `data`'s images, then creates the run folder, writes
/// `config.json` and trains: the classification path of `konv train`, for any dataset.
pub(crate) fn train_classifier(
    args: &TrainArgs,
    config: TrainConfig,
    data: &SplitData,
    class_names: Vec<String>,
    source: Source,
    device: &burn::prelude::Device,
    mode: OutputMode,
) -> Result<()> {
    // An unknown model or impossible settings fail before anything is written.
    konv_models::registry::info(&config.model)?;
    config.validate()?;
    if data.val.is_empty() {
        config.settings.check_without_validation()?;
    }
    if let Some(path) = &config.init_from {
        konv_train::run::weights_path(path)?;
    }
    let say = |msg: String| {
        if mode != OutputMode::Quiet {
            println!("{msg}");
        }
    };
    let out = new_run_folder(args.out.as_deref(), |secs| {
        format!("{}-{}-{secs}", config.model, config.dataset)
    })?;
    // What the model is trained on: the data's images, resized if asked.
    let images = &data.train.images;
    let (rows, cols) = config
        .settings
        .augment
        .output_size(images.rows, images.cols);
    let input = [images.channels, rows, cols];
    konv_train::train::check_config_input(&config, class_names.len(), input)?;
    let run_dir = RunDir::create(&out)?;
    let info = RunInfo {
        config: config.clone(),
        data_source: source.text.clone(),
        subset: source.subset,
        class_names,
        input,
        normalize: data.normalize,
        train_size: data.train.len(),
        val_size: data.val.len(),
    };
    run_dir.write_config(&info)?;
    say(format!(
        "training {} on {} ({}): {} train / {} validation / {} test images, backend {}, run folder {}",
        config.model,
        config.dataset,
        source.text,
        data.train.len(),
        data.val.len(),
        data.test.len(),
        config.backend,
        out.display()
    ));
    if let Some(p) = &config.settings.progressive_resize {
        let sides: Vec<String> = p
            .plan(config.settings.epochs, rows.min(cols))
            .iter()
            .map(usize::to_string)
            .collect();
        say(format!(
            "progressive resize, image side by epoch: {}",
            sides.join(" ")
        ));
    }
    let mut observer = ConsoleObserver::new(mode, config.settings.batch_size);
    let started = std::time::Instant::now();
    let outcome = train(
        &config,
        info.class_names.len(),
        data,
        device,
        Some(&run_dir),
        &mut observer,
    )?;
    report_outcome(&outcome, started, &out);
    Ok(())
}

/// Fails when a flag of one task is given to another, or the shared settings cannot work
/// on the chosen backend; everything else of the training loop works for every task.
pub(crate) fn task_flags(args: &TrainArgs) -> Result<()> {
    if args.classes.is_some() {
        bail!(
            "--classes picks classes of a classification dataset; --task {} draws its scenes from every class, drop it",
            args.task
        );
    }
    if args.init_from.is_some() && args.task != Task::Detect {
        bail!(
            "--init-from starts a classifier or a detector's backbone; --task {} builds its own network, drop it",
            args.task
        );
    }
    if args.zero_init_residual {
        bail!(
            "--zero-init-residual starts a classifier's residual units at zero; --task {} builds its own network, drop it",
            args.task
        );
    }
    if args.label_smoothing > 0.0 {
        bail!(
            "--label-smoothing smooths a classifier's cross-entropy; --task {} has its own losses, drop it",
            args.task
        );
    }
    if args.replicas > 1 && !args.backend.is_cpu() {
        bail!(
            "--replicas {} splits batches between CPU cores; the {} backend runs one model, drop it",
            args.replicas,
            args.backend.as_str()
        );
    }
    Ok(())
}

/// The run folder: `out`, or `runs/NAME` with `name(unix seconds)`; an error when it already
/// holds a run.
pub(crate) fn new_run_folder(
    out: Option<&Path>,
    name: impl FnOnce(u64) -> String,
) -> Result<PathBuf> {
    let out = out.map_or_else(
        || {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            PathBuf::from("runs").join(name(secs))
        },
        Path::to_path_buf,
    );
    if out.join(run::CONFIG).exists() {
        bail!(
            "{}: already holds a run; choose another --out",
            out.display()
        );
    }
    Ok(out)
}

pub(crate) fn check_classes(classes: &[u8], available: usize) -> Result<()> {
    if let Some(bad) = classes.iter().find(|&&c| c as usize >= available) {
        bail!(
            "--classes: class {bad} does not exist (the dataset has classes 0 to {})",
            available - 1
        );
    }
    let mut sorted = classes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != classes.len() || classes.len() < 2 {
        bail!(
            "--classes needs at least two different classes, each once (e.g. --classes 5,6,7,8,9)"
        );
    }
    Ok(())
}

/// How a closing line names the epoch whose weights were tested.
pub(crate) fn which_epoch(monitor: konv_train::engine::Monitor) -> &'static str {
    match monitor {
        konv_train::engine::Monitor::Last => "last epoch",
        _ => "best validation epoch",
    }
}

/// The closing lines of a classification run: early stopping, the test accuracy, where the
/// weights are.
pub(crate) fn report_outcome(
    outcome: &konv_train::train::TrainOutcome,
    started: std::time::Instant,
    out: &Path,
) {
    if let Some(epoch) = outcome.stopped_early {
        println!(
            "stopped early after epoch {epoch}: the monitored validation metric did not improve for {} epochs",
            epoch - outcome.best_epoch
        );
    }
    let which = which_epoch(outcome.monitor);
    println!(
        "test accuracy {:.2}% ({which} {}, {} test images), {:.0}s in all; weights in {}",
        100.0 * outcome.test.accuracy(),
        outcome.best_epoch,
        outcome.test.total(),
        started.elapsed().as_secs_f64(),
        out.join(run::BEST).display()
    );
}

/// `konv train --resume DIR`: the run's own settings and data, from its last finished epoch.
pub(crate) fn resume_run(
    dir: &Path,
    args: &TrainArgs,
    dataset: &konv_datasets::Dataset,
    mode: OutputMode,
) -> Result<()> {
    let run_dir = RunDir::open(dir)?;
    let info = konv_train::train::RunInfo::read(&run_dir)?;
    let config = info.config.clone();
    if config.dataset != args.dataset.to_string() || dataset.is_subset() != info.subset {
        bail!(
            "--resume {}: the run trained on {} ({}); give the same --dataset and data flags",
            dir.display(),
            config.dataset,
            info.data_source
        );
    }
    let data = SplitData::with_classes(
        dataset,
        config.classes.as_deref(),
        config.settings.val_size,
        config.settings.limit,
        config.settings.seed,
    );
    resume_classifier(dir, &run_dir, &info, &data, mode)
}

/// The end of `konv train --resume` for a classification run, whatever its data: checks that
/// `data` is the run's, then trains its remaining epochs and reports.
pub(crate) fn resume_classifier(
    dir: &Path,
    run_dir: &RunDir,
    info: &RunInfo,
    data: &SplitData,
    mode: OutputMode,
) -> Result<()> {
    let config = &info.config;
    let device = config.backend.open()?;
    if (data.train.len(), data.val.len()) != (info.train_size, info.val_size) {
        bail!(
            "--resume {}: the data differs from the run's ({} train / {} validation images now, {} / {} then); point --data-dir at the same files",
            dir.display(),
            data.train.len(),
            data.val.len(),
            info.train_size,
            info.val_size
        );
    }
    let state = run_dir.read_state()?;
    if mode != OutputMode::Quiet {
        println!(
            "resuming {} in {} after epoch {} of {} (settings from its config.json)",
            config.model,
            dir.display(),
            state.epoch,
            config.settings.epochs
        );
    }
    let mut observer = ConsoleObserver::new(mode, config.settings.batch_size);
    let started = std::time::Instant::now();
    let outcome = konv_train::train::resume(
        config,
        info.class_names.len(),
        data,
        &device,
        run_dir,
        &mut observer,
    )?;
    report_outcome(&outcome, started, dir);
    Ok(())
}
