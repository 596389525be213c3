//! `konv predict`: a run's (or imported weights') answers for image files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use konv_train::predict;
use konv_train::run::{self, RunDir};

use crate::args::*;
use crate::commands::*;

pub(crate) fn predict_localize(
    run_dir: &RunDir,
    info: &konv_train::localize::LocalizeInfo,
    args: &PredictArgs,
    device: &burn::prelude::Device,
) -> Result<()> {
    use konv_train::localize::{draw_box, load_localizer, locate_file};
    let model = load_localizer(run_dir, info, device)?;
    let (mut pictures, mut lines) = (Vec::new(), Vec::new());
    for path in &args.images {
        let (found, img) = locate_file(&model, info, path, args.invert)?;
        let name = &info.class_names[found.class];
        let mut picture = img.to_rgb8();
        let label = format!("{name} {:.0}%", 100.0 * found.probability);
        draw_box(&mut picture, found.bbox, &label, image::Rgb([230, 40, 40]));
        let file = args.out.join(format!("{}-box.png", stem(path)));
        let [x0, y0, x1, y1] = found.bbox;
        lines.push(format!(
            "{}: {name} ({:.2}%), box x {x0:.0}..{x1:.0}, y {y0:.0}..{y1:.0} → {}",
            path.display(),
            100.0 * found.probability,
            file.display()
        ));
        pictures.push((file, picture));
    }
    write_pictures(&args.out, &pictures)?;
    lines.iter().for_each(|l| println!("{l}"));
    Ok(())
}

/// A file's name without its extension, for the pictures named after it.
fn stem(path: &Path) -> String {
    path.file_stem()
        .map_or("image".into(), |s| s.to_string_lossy().into_owned())
}

/// Writes `pictures` into `--out` (created if needed), each atomically, once every image
/// has been read and answered: a bad image among them leaves nothing on disk.
fn write_pictures(out: &Path, pictures: &[(PathBuf, image::RgbImage)]) -> Result<()> {
    let encoded = pictures
        .iter()
        .map(|(file, picture)| Ok((file, konv_train::plot::encode_png(picture, file)?)))
        .collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("--out {}: cannot create the folder", out.display()))?;
    for (file, png) in encoded {
        run::write_atomic(file, &png)
            .with_context(|| format!("{}: cannot write", file.display()))?;
    }
    Ok(())
}

pub(crate) fn predict_segment(
    run_dir: &RunDir,
    info: &konv_train::segment::SegmentInfo,
    args: &PredictArgs,
    device: &burn::prelude::Device,
) -> Result<()> {
    use konv_train::segment::{load_fcn, segment_file};
    let model = load_fcn(run_dir, info, device)?;
    let (mut pictures, mut lines) = (Vec::new(), Vec::new());
    for path in &args.images {
        let (labels, mask, overlay) = segment_file(&model, info, path, args.invert)?;
        let (mask_file, overlay_file) = (
            args.out.join(format!("{}-mask.png", stem(path))),
            args.out.join(format!("{}-overlay.png", stem(path))),
        );
        let mut counts = vec![0usize; info.class_names.len()];
        for &l in &labels {
            if let Some(c) = counts.get_mut(usize::from(l)) {
                *c += 1;
            }
        }
        let found: Vec<String> = counts
            .iter()
            .enumerate()
            .skip(1)
            .filter(|&(_, &c)| c > 0)
            .map(|(i, &c)| {
                format!(
                    "{} {c} px ({:.1}%)",
                    info.class_names[i],
                    100.0 * c as f64 / labels.len() as f64
                )
            })
            .collect();
        lines.push(format!(
            "{}: {} → {}, {}",
            path.display(),
            if found.is_empty() {
                "background only".to_string()
            } else {
                found.join(", ")
            },
            mask_file.display(),
            overlay_file.display()
        ));
        pictures.push((mask_file, mask));
        pictures.push((overlay_file, overlay));
    }
    write_pictures(&args.out, &pictures)?;
    lines.iter().for_each(|l| println!("{l}"));
    Ok(())
}

pub(crate) fn predict_detect(
    run_dir: &RunDir,
    info: &konv_train::detect::DetectInfo,
    args: &PredictArgs,
    device: &burn::prelude::Device,
) -> Result<()> {
    use konv_train::detect::{detect_file, load_detector};
    let model = load_detector(run_dir, info, device)?;
    let (mut pictures, mut lines) = (Vec::new(), Vec::new());
    for path in &args.images {
        let (found, drawn) = detect_file(&model, info, path, args.invert, args.score as f32)?;
        let file = args.out.join(format!("{}-boxes.png", stem(path)));
        lines.push(format!(
            "{}: {} object{} → {}",
            path.display(),
            found.len(),
            if found.len() == 1 { "" } else { "s" },
            file.display()
        ));
        for d in &found {
            let [x0, y0, x1, y1] = d.bbox.map(|v| v.round() as i64);
            lines.push(format!(
                "  {:<12} {:5.1}%  box x {x0}..{x1}, y {y0}..{y1}",
                info.class_names[d.class],
                100.0 * d.score
            ));
        }
        pictures.push((file, drawn));
    }
    write_pictures(&args.out, &pictures)?;
    lines.iter().for_each(|l| println!("{l}"));
    Ok(())
}

pub(crate) fn cmd_predict(args: PredictArgs) -> Result<()> {
    let device = args.backend.open()?;
    if let (Some(name), Some(weights)) = (&args.model, &args.weights) {
        return predict_pretrained(name, weights, args.classes, &args.images, args.top, &device);
    }
    let run = args
        .run
        .as_deref()
        .context("pass --run DIR, or --model NAME --weights FILE")?;
    let run_dir = RunDir::open(run)?;
    let localize = konv_train::localize::read_info(&run_dir)?;
    let segment = konv_train::segment::read_info(&run_dir)?;
    let detect = konv_train::detect::read_info(&run_dir)?;
    let task = match (&localize, &segment, &detect) {
        (Some(_), _, _) => "localize",
        (_, Some(_), _) => "segment",
        (_, _, Some(_)) => "detect",
        _ => "classify",
    };
    if let Some(asked) = args.task.as_deref().filter(|&t| t != task) {
        bail!(
            "--task {asked}: {} is a {task} run; train one with `konv train --task {asked}`, or leave --task out",
            run.display()
        );
    }
    if let Some(info) = localize {
        return predict_localize(&run_dir, &info, &args, &device);
    }
    if let Some(info) = segment {
        return predict_segment(&run_dir, &info, &args, &device);
    }
    if let Some(info) = detect {
        return predict_detect(&run_dir, &info, &args, &device);
    }
    let (info, model) = konv_train::train::load_run_model(&run_dir, None, &device)?;
    let [_, h, w] = info.input;
    for path in &args.images {
        let ranked = if info.config.folder.is_some() {
            // The run's own resize, crop, channels and standardization.
            let x = predict::load_preprocessed(path, &folder::preprocess(&info), &device)?;
            predict::classify_tensor(&model, x)?
        } else {
            let mut pixels = predict::load_grayscale(path, h, w)?;
            if args.invert {
                pixels.iter_mut().for_each(|p| *p = 255 - *p);
            }
            predict::classify(&model, &pixels, [h, w], info.normalize)?
        };
        println!("{}", path.display());
        for (class, p) in ranked.into_iter().take(args.top) {
            println!("  {:>6.2}%  {}", 100.0 * p, info.class_names[class]);
        }
    }
    Ok(())
}

/// Builds zoo model `name` and loads `weights`: a PyTorch state dict, or a `.bpk`.
pub(crate) fn load_zoo_weights(
    name: &str,
    weights: &Path,
    classes: Option<usize>,
    device: &burn::prelude::Device,
) -> Result<konv_models::Classifier> {
    let info = konv_models::info(name)?;
    let classes = classes.unwrap_or(info.classes);
    let is_burn = weights.extension().and_then(|e| e.to_str()) == Some("bpk");
    if is_burn {
        let model = konv_models::build(name, classes, device)?;
        return Ok(run::load_module(model, weights)?);
    }
    let (model, _) = konv_models::import::load_classifier(name, classes, weights, device)?;
    Ok(model)
}

pub(crate) fn predict_pretrained(
    name: &str,
    weights: &Path,
    classes: Option<usize>,
    images: &[PathBuf],
    top: usize,
    device: &burn::prelude::Device,
) -> Result<()> {
    let info = konv_models::info(name)?;
    let model = load_zoo_weights(name, weights, classes, device)?;
    let names = konv_models::preprocess::imagenet_classes();
    let named = names.len() == classes.unwrap_or(info.classes);
    for path in images {
        let x = predict::load_preprocessed(path, &info.preprocess, device)?;
        let ranked = predict::classify_tensor(&model, x)?;
        println!("{}", path.display());
        for (class, p) in ranked.into_iter().take(top) {
            let label = if named {
                names[class].to_string()
            } else {
                format!("class {class}")
            };
            println!("  {:>6.2}%  {label}", 100.0 * p);
        }
    }
    Ok(())
}
