//! `konv train --task localize|segment|detect` and their `--resume`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use konv_datasets::DatasetName;
use konv_train::observer::{ConsoleObserver, OutputMode};
use konv_train::run::{self, RunDir};

use crate::args::*;
use crate::commands::*;

pub(crate) fn train_localize(
    args: &TrainArgs,
    dataset: &konv_datasets::Dataset,
    val_size: usize,
    mode: OutputMode,
) -> Result<()> {
    use konv_train::localize::{CanvasSpec, LocalizeConfig, LocalizeData, train_localizer};
    task_flags(args)?;
    let device = args.backend.open()?;
    let config = LocalizeConfig {
        model: args.model.clone(),
        box_grid: args.box_grid as usize,
        stem_stride: args.stem_stride as usize,
        dataset: args.dataset.to_string(),
        canvas: CanvasSpec {
            size: args.canvas.map_or(64, |c| c as usize),
            scale_min: args.scale.map_or(1.0, |s| s.0),
            scale_max: args.scale.map_or(2.0, |s| s.1),
            noise: args.noise as f32,
            clutter: args.clutter,
        },
        loss_weights: args.loss_weights.clone(),
        box_loss: if args.box_loss == "smooth-l1" {
            konv_train::loss::BoxLoss::SmoothL1
        } else {
            konv_train::loss::BoxLoss::Mse
        },
        settings: dense_settings(args, val_size),
    };
    konv_models::registry::info(&config.model)?;
    config.validate()?;
    let out = new_run_folder(args.out.as_deref(), |secs| {
        format!("loc-{}-{}-{secs}", config.model, config.dataset)
    })?;
    let data = LocalizeData::generate(dataset, &config)?;
    let names: Vec<String> = dataset
        .class_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let run_dir = RunDir::create(&out)?;
    if mode != OutputMode::Quiet {
        println!(
            "localizing with {} on {}×{} canvases of {} ({}): {} train / {} validation / {} test images, run folder {}",
            config.model,
            config.canvas.size,
            config.canvas.size,
            config.dataset,
            dataset.source,
            data.train.len(),
            data.val.len(),
            data.test.len(),
            out.display()
        );
    }
    let started = std::time::Instant::now();
    let mut observer = ConsoleObserver::new(mode, config.settings.batch_size);
    let outcome = train_localizer(
        &config,
        &names,
        &data,
        &device,
        Some(&run_dir),
        &mut observer,
    )?;
    print_localize_outcome(&outcome, "s in all", started, &out.join(run::BEST));
    Ok(())
}

pub(crate) fn train_segment(
    args: &TrainArgs,
    dataset: &konv_datasets::Dataset,
    mode: OutputMode,
) -> Result<()> {
    use konv_train::segment::{SceneSpec, SegmentConfig, SegmentData, train_segmenter};
    task_flags(args)?;
    // `--model fcn8s --backbone resnet20`, or the zoo's name `fcn8s-resnet20`.
    let (variant, backbone) = match args.model.split_once('-') {
        Some((v, b)) if v.starts_with("fcn") => (v.to_string(), b.to_string()),
        _ => (args.model.clone(), args.backbone.clone()),
    };
    if !variant.starts_with("fcn") {
        bail!(
            "--model {}: --task segment trains fcn32s, fcn16s or fcn8s (a classifier cannot label pixels)",
            args.model
        );
    }
    let device = args.backend.open()?;
    let config = SegmentConfig {
        variant,
        backbone,
        stem_stride: args.stem_stride as usize,
        dataset: args.dataset.to_string(),
        scene: SceneSpec {
            size: args.canvas.map_or(96, |c| c as usize),
            items_min: args.items.0,
            items_max: args.items.1,
            scale_min: args.scale.map_or(1.0, |s| s.0),
            scale_max: args.scale.map_or(1.5, |s| s.1),
        },
        settings: dense_settings(
            args,
            args.val_size
                .unwrap_or(if dataset.is_subset() { 500 } else { 2000 }),
        ),
    };
    config.validate()?;
    let out = new_run_folder(args.out.as_deref(), |secs| {
        format!(
            "{}-{}-{}-{secs}",
            config.variant, config.backbone, config.dataset
        )
    })?;
    let data = SegmentData::generate(dataset, &config)?;
    let mut names = vec!["background".to_string()];
    names.extend(dataset.class_names().iter().map(|s| s.to_string()));
    let run_dir = RunDir::create(&out)?;
    if mode != OutputMode::Quiet {
        println!(
            "segmenting with {} over {} on {}×{} scenes of {} ({}): {} train / {} validation / {} test scenes, run folder {}",
            config.variant,
            config.backbone,
            config.scene.size,
            config.scene.size,
            config.dataset,
            dataset.source,
            data.train.len(),
            data.val.len(),
            data.test.len(),
            out.display()
        );
    }
    let started = std::time::Instant::now();
    let mut observer = ConsoleObserver::new(mode, config.settings.batch_size);
    let outcome = train_segmenter(
        &config,
        &names,
        &data,
        &device,
        Some(&run_dir),
        &mut observer,
    )?;
    print_segment_outcome(&outcome, "s in all", started, &out.join(run::BEST));
    Ok(())
}

pub(crate) fn train_detect(
    args: &TrainArgs,
    dataset: &konv_datasets::Dataset,
    mode: OutputMode,
) -> Result<()> {
    use konv_train::detect::{DetectConfig, DetectData, train_detector};
    use konv_train::segment::SceneSpec;
    task_flags(args)?;
    if konv_models::info(&args.model)?.kind != konv_models::ModelKind::Classifier {
        bail!(
            "--model {}: --task detect slides a classifier of the zoo (resnet20, fashion-cnn, …) over the canvas",
            args.model
        );
    }
    let device = args.backend.open()?;
    let config = DetectConfig {
        model: args.model.clone(),
        stem_stride: args.stem_stride as usize,
        dataset: args.dataset.to_string(),
        scene: SceneSpec {
            size: args.canvas.map_or(96, |c| c as usize),
            items_min: args.items.0,
            items_max: args.items.1,
            scale_min: args.scale.map_or(1.0, |s| s.0),
            scale_max: args.scale.map_or(1.5, |s| s.1),
        },
        max_overlap: args.max_overlap as f32,
        settings: dense_settings(
            args,
            args.val_size
                .unwrap_or(if dataset.is_subset() { 500 } else { 2000 }),
        ),
        init_from: args.init_from.clone(),
    };
    config.validate()?;
    let out = new_run_folder(args.out.as_deref(), |secs| {
        format!("detect-{}-{}-{secs}", config.model, config.dataset)
    })?;
    let data = DetectData::generate(dataset, &config)?;
    let names: Vec<String> = dataset
        .class_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let run_dir = RunDir::create(&out)?;
    if mode != OutputMode::Quiet {
        let objects = |set: &konv_datasets::segmentation::SegmentationSet| {
            set.objects.iter().map(Vec::len).sum::<usize>()
        };
        println!(
            "detecting with {} on {}×{} scenes of {} ({}): {} train / {} validation / {} test scenes ({} test objects), box prior {:.1}×{:.1}, run folder {}",
            config.model,
            config.scene.size,
            config.scene.size,
            config.dataset,
            dataset.source,
            data.train.len(),
            data.val.len(),
            data.test.len(),
            objects(&data.test),
            data.prior[0],
            data.prior[1],
            out.display()
        );
    }
    let started = std::time::Instant::now();
    let mut observer = ConsoleObserver::new(mode, config.settings.batch_size);
    let outcome = train_detector(
        &config,
        &names,
        &data,
        &device,
        Some(&run_dir),
        &mut observer,
    )?;
    print_detect_outcome(&outcome, "s in all", started, &out.join(run::BEST));
    Ok(())
}

/// The settings of a dense task's run from the flags: as classification's, with weight
/// decay always kept off biases and batch-norm parameters (as these tasks always trained).
fn dense_settings(args: &TrainArgs, val_size: usize) -> konv_train::engine::Settings {
    konv_train::engine::Settings {
        no_decay_bias_norm: true,
        ..settings(args, val_size)
    }
}

/// The task of the run in `dir` when it is one `--resume` continues through
/// `konv_train::fit` (segment, detect); `None` for classification runs.
pub(crate) fn dense_task(dir: &Path) -> Result<Option<String>> {
    let run_dir = RunDir::open(dir)?;
    if konv_train::segment::read_info(&run_dir)?.is_some() {
        return Ok(Some("segment".into()));
    }
    if konv_train::detect::read_info(&run_dir)?.is_some() {
        return Ok(Some("detect".into()));
    }
    if konv_train::localize::read_info(&run_dir)?.is_some() {
        return Ok(Some("localize".into()));
    }
    Ok(None)
}

/// `konv train --resume RUN` for a localization, segmentation or detection run: its own
/// settings, the canvases or scenes generated again from them.
pub(crate) fn resume_dense(
    dir: &Path,
    task: &str,
    args: &TrainArgs,
    mode: OutputMode,
) -> Result<()> {
    let run_dir = RunDir::open(dir)?;
    let device = args.backend.open()?;
    let load = |name: &str| -> Result<konv_datasets::Dataset> {
        let name = DatasetName::parse(name)
            .with_context(|| format!("{}: unknown dataset in config.json", dir.display()))?;
        args.data.load(name)
    };
    let started = std::time::Instant::now();
    if task == "localize" {
        let info = konv_train::localize::read_info(&run_dir)?.context("a localization run")?;
        let data = konv_train::localize::LocalizeData::generate(
            &load(&info.config.dataset)?,
            &info.config,
        )?;
        if mode != OutputMode::Quiet {
            println!(
                "resuming {} (localization with {})",
                dir.display(),
                info.config.model
            );
        }
        let mut observer = ConsoleObserver::new(mode, info.config.settings.batch_size);
        let outcome =
            konv_train::localize::resume_localizer(&data, &device, &run_dir, &mut observer)?;
        print_localize_outcome(&outcome, "s", started, &dir.join(run::BEST));
    } else if task == "segment" {
        let info = konv_train::segment::read_info(&run_dir)?.context("a segmentation run")?;
        let data =
            konv_train::segment::SegmentData::generate(&load(&info.config.dataset)?, &info.config)?;
        if mode != OutputMode::Quiet {
            println!(
                "resuming {} ({} over {})",
                dir.display(),
                info.config.variant,
                info.config.backbone
            );
        }
        let mut observer = ConsoleObserver::new(mode, info.config.settings.batch_size);
        let outcome =
            konv_train::segment::resume_segmenter(&data, &device, &run_dir, &mut observer)?;
        print_segment_outcome(&outcome, "s", started, &dir.join(run::BEST));
    } else {
        let info = konv_train::detect::read_info(&run_dir)?.context("a detection run")?;
        let data =
            konv_train::detect::DetectData::generate(&load(&info.config.dataset)?, &info.config)?;
        if mode != OutputMode::Quiet {
            println!(
                "resuming {} (detection with {})",
                dir.display(),
                info.config.model
            );
        }
        let mut observer = ConsoleObserver::new(mode, info.config.settings.batch_size);
        let outcome = konv_train::detect::resume_detector(&data, &device, &run_dir, &mut observer)?;
        print_detect_outcome(&outcome, "s", started, &dir.join(run::BEST));
    }
    Ok(())
}

/// The closing line of a localization run, as [`print_segment_outcome`].
pub(crate) fn print_localize_outcome(
    outcome: &konv_train::localize::LocalizeOutcome,
    unit: &str,
    started: std::time::Instant,
    best: &Path,
) {
    println!(
        "test accuracy {:.2}%, mean IoU {:.3} ({:.1}% of boxes with IoU ≥ 0.5; {} {}, {} test images), {:.0}{unit}; weights in {}",
        100.0 * outcome.test.accuracy,
        outcome.test.mean_iou,
        100.0 * outcome.test.iou50,
        which_epoch(outcome.monitor),
        outcome.best_epoch,
        outcome.test.count,
        started.elapsed().as_secs_f64(),
        best.display()
    );
}

/// The closing line of a segmentation run: test figures, time (`unit` after the seconds:
/// "s in all" for a whole run, "s" for a resumed part) and where the best weights are.
pub(crate) fn print_segment_outcome(
    outcome: &konv_train::segment::SegmentOutcome,
    unit: &str,
    started: std::time::Instant,
    best: &Path,
) {
    println!(
        "test mean IoU {:.3}, pixel accuracy {:.2}% ({} {}, {} test scenes), {:.0}{unit}; weights in {}",
        outcome.test.mean_iou,
        100.0 * outcome.test.pixel_accuracy,
        which_epoch(outcome.monitor),
        outcome.best_epoch,
        outcome.test.count,
        started.elapsed().as_secs_f64(),
        best.display()
    );
}

/// The closing line of a detection run, as [`print_segment_outcome`].
pub(crate) fn print_detect_outcome(
    outcome: &konv_train::detect::DetectOutcome,
    unit: &str,
    started: std::time::Instant,
    best: &Path,
) {
    println!(
        "test mAP@0.5 {:.3}, mAP@0.5:0.95 {:.3} ({} {}, {} test scenes, {} objects), {:.0}{unit}; weights in {}",
        outcome.test.map50,
        outcome.test.map50_95,
        which_epoch(outcome.monitor),
        outcome.best_epoch,
        outcome.test.count,
        outcome.test.objects,
        started.elapsed().as_secs_f64(),
        best.display()
    );
}
