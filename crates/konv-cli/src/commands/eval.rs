//! `konv eval`: a run's test metrics, for every task.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use konv_datasets::{DatasetName, Locator};
use konv_train::eval;
use konv_train::run::RunDir;

use crate::args::*;
use crate::commands::*;

/// The run folder and weights file that `--run`/`--checkpoint` point to.
pub(crate) fn resolve_run(
    run: Option<&Path>,
    checkpoint: Option<&Path>,
) -> Result<(RunDir, Option<PathBuf>)> {
    match (run, checkpoint) {
        (Some(run), ckpt) => Ok((RunDir::open(run)?, ckpt.map(Path::to_path_buf))),
        (None, Some(ckpt)) => {
            let dir = ckpt
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let run = RunDir::open(dir).with_context(|| {
                format!(
                    "{}: the checkpoint's folder has no config.json; pass --run DIR as well",
                    ckpt.display()
                )
            })?;
            Ok((run, Some(ckpt.to_path_buf())))
        }
        (None, None) => bail!("pass --run DIR or --checkpoint FILE"),
    }
}

/// Regenerates a localization run's test canvases (same items, scale and seed) and reports
/// accuracy and mean IoU.
pub(crate) fn eval_localize(
    run_dir: &RunDir,
    info: &konv_train::localize::LocalizeInfo,
    args: &EvalArgs,
    device: &burn::prelude::Device,
) -> Result<()> {
    use konv_train::localize::{LocalizeData, evaluate_localizer, load_localizer};
    let name = DatasetName::parse(&info.config.dataset)
        .with_context(|| format!("{}: unknown dataset in config.json", run_dir.path.display()))?;
    let dataset = args.data.load(name)?;
    let model = load_localizer(run_dir, info, device)?;
    let test = LocalizeData::test_set(&dataset, &info.config)?;
    let report = evaluate_localizer(
        &model,
        &test,
        info.normalize,
        &info.config.loss_weights,
        info.config.box_loss,
        args.batch_size.max(1),
        info.class_names.len(),
    )?;
    println!(
        "{}: test accuracy {:.2}%, mean IoU {:.3}, IoU ≥ 0.5 for {:.1}% ({} canvases of {} test items, loss {:.4})",
        run_dir.path.display(),
        100.0 * report.accuracy,
        report.mean_iou,
        100.0 * report.iou50,
        report.count,
        info.config.dataset,
        report.loss
    );
    for (name, acc) in info.class_names.iter().zip(&report.per_class_accuracy) {
        println!("  {name:<12} {:6.2}%", 100.0 * acc);
    }
    Ok(())
}

/// Regenerates a segmentation run's test scenes and reports pixel accuracy and IoU.
pub(crate) fn eval_segment(
    run_dir: &RunDir,
    info: &konv_train::segment::SegmentInfo,
    args: &EvalArgs,
    device: &burn::prelude::Device,
) -> Result<()> {
    use konv_train::segment::{SegmentData, evaluate_segmenter, load_fcn};
    let name = DatasetName::parse(&info.config.dataset)
        .with_context(|| format!("{}: unknown dataset in config.json", run_dir.path.display()))?;
    let dataset = args.data.load(name)?;
    let model = load_fcn(run_dir, info, device)?;
    let test = SegmentData::test_set(&dataset, &info.config)?;
    let report = evaluate_segmenter(
        &model,
        &test,
        info.normalize,
        args.batch_size.clamp(1, 64),
        info.class_names.len(),
    )?;
    println!(
        "{}: test mean IoU {:.3}, pixel accuracy {:.2}% ({} scenes of {} test items, loss {:.4})",
        run_dir.path.display(),
        report.mean_iou,
        100.0 * report.pixel_accuracy,
        report.count,
        info.config.dataset,
        report.loss
    );
    for (name, iou) in info.class_names.iter().zip(&report.class_iou) {
        match iou {
            Some(v) => println!("  {name:<12} IoU {v:.3}"),
            None => println!("  {name:<12} (absent)"),
        }
    }
    Ok(())
}

/// Regenerates a detection run's test scenes and reports mAP.
pub(crate) fn eval_detect(
    run_dir: &RunDir,
    info: &konv_train::detect::DetectInfo,
    args: &EvalArgs,
    device: &burn::prelude::Device,
) -> Result<()> {
    use konv_train::detect::{DetectData, evaluate_detector, load_detector};
    let name = DatasetName::parse(&info.config.dataset)
        .with_context(|| format!("{}: unknown dataset in config.json", run_dir.path.display()))?;
    let dataset = args.data.load(name)?;
    let model = load_detector(run_dir, info, device)?;
    let test = DetectData::test_set(&dataset, &info.config)?;
    let report = evaluate_detector(
        &model,
        &test,
        info.normalize,
        info.prior,
        args.batch_size.clamp(1, 64),
    )?;
    println!(
        "{}: test mAP@0.5 {:.3}, mAP@0.5:0.95 {:.3} ({} scenes, {} objects of {} test items; class accuracy at object cells {:.2}%, loss {:.4})",
        run_dir.path.display(),
        report.map50,
        report.map50_95,
        report.count,
        report.objects,
        info.config.dataset,
        100.0 * report.class_accuracy,
        report.loss
    );
    for (name, ap) in info.class_names.iter().zip(&report.class_ap) {
        match ap {
            Some(v) => println!("  {name:<12} AP@0.5 {v:.3}"),
            None => println!("  {name:<12} (no objects)"),
        }
    }
    Ok(())
}

pub(crate) fn cmd_eval(args: EvalArgs) -> Result<()> {
    let (run_dir, weights) = resolve_run(args.run.as_deref(), args.checkpoint.as_deref())?;
    let device = args.backend.open()?;
    let tta = args.tta_flip || args.tta_shift > 0;
    let dense = |task: &str| {
        ensure!(
            !tta,
            "--tta-flip and --tta-shift average class scores; {} is a {task} run, evaluate it without them",
            run_dir.path.display()
        );
        Ok(())
    };
    if let Some(info) = konv_train::localize::read_info(&run_dir)? {
        dense("localization")?;
        return eval_localize(&run_dir, &info, &args, &device);
    }
    if let Some(info) = konv_train::segment::read_info(&run_dir)? {
        dense("segmentation")?;
        return eval_segment(&run_dir, &info, &args, &device);
    }
    if let Some(info) = konv_train::detect::read_info(&run_dir)? {
        dense("detection")?;
        return eval_detect(&run_dir, &info, &args, &device);
    }
    let (info, model) = konv_train::train::load_run_model(&run_dir, weights.as_deref(), &device)?;
    let (test, source) = if info.config.folder.is_some() {
        folder::eval_set(&info)?
    } else {
        let name = DatasetName::parse(&info.config.dataset).with_context(|| {
            format!("{}: unknown dataset in config.json", run_dir.path.display())
        })?;
        let dataset = if info.subset {
            konv_datasets::mnist::embedded_fashion_mnist()
        } else {
            Locator {
                allow_embedded: false,
                ..args.data.locator()
            }
            .load(name)?
        };
        let test = match &info.config.classes {
            Some(c) => dataset.test.with_classes(c),
            None => dataset.test,
        };
        (test, dataset.source.to_string())
    };
    let test = std::sync::Arc::new(test);
    let report = eval::evaluate_tta(
        &model,
        &test,
        info.normalize,
        args.batch_size.max(1),
        info.class_names.len(),
        Some(std::sync::Arc::new(
            info.config.settings.augment.eval_steps(),
        )),
        eval::Tta {
            flip: args.tta_flip,
            shift: args.tta_shift,
        },
    )?;
    println!(
        "{}: test accuracy {:.2}% (top-5 {:.2}%; {} images, loss {:.4}), data from {}",
        run_dir.path.display(),
        100.0 * report.accuracy(),
        100.0 * report.top5_accuracy(),
        report.total(),
        report.loss,
        source
    );
    print!("{}", report.confusion_table(&info.class_names));
    Ok(())
}
