//! `konv filters`: feature maps of hand-made filters and of trained layers.

use std::path::Path;

use anyhow::{Context, Result};
use konv_train::predict;
use konv_train::run::RunDir;

use crate::args::*;
use crate::commands::*;

pub(crate) fn cmd_filters(args: FiltersArgs) -> Result<()> {
    use konv_train::filters::{self, Filter};
    let device = args.backend.open()?;
    let with_model = args.run.is_some() || args.model.is_some();
    let specs = if args.filters.is_empty() && !with_model {
        vec!["vertical".to_string(), "horizontal".to_string()]
    } else {
        args.filters.clone()
    };
    let hand_made = specs
        .iter()
        .map(|spec| Filter::parse(spec, args.size as usize).map_err(|e| anyhow::anyhow!("--{e}")))
        .collect::<Result<Vec<_>>>()?;
    // Every image, and the model, must load before anything is written.
    for path in &args.images {
        predict::open_image(path)?;
    }
    let loaded = if with_model {
        let stem = |p: &Path| {
            p.file_stem()
                .map_or("image".into(), |s| s.to_string_lossy().into_owned())
        };
        let (model, inputs) = if let (Some(name), Some(weights)) = (&args.model, &args.weights) {
            let info = konv_models::info(name)?;
            let model = load_zoo_weights(name, weights, args.classes, &device)?;
            let inputs = args
                .images
                .iter()
                .map(|p| {
                    Ok((
                        stem(p),
                        predict::load_preprocessed(p, &info.preprocess, &device)?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            (model, inputs)
        } else {
            let run = args.run.as_deref().context("--run DIR or --model NAME")?;
            let (info, model) =
                konv_train::train::load_run_model(&RunDir::open(run)?, None, &device)?;
            let [_, h, w] = info.input;
            let inputs = args
                .images
                .iter()
                .map(|p| {
                    let mut pixels = predict::load_grayscale(p, h, w)?;
                    if args.invert {
                        pixels.iter_mut().for_each(|v| *v = 255 - *v);
                    }
                    let values: Vec<f32> =
                        pixels.iter().map(|&v| info.normalize.apply(v)).collect();
                    let x = burn::prelude::Tensor::<4>::from_data(
                        burn::prelude::TensorData::new(values, [1, 1, h, w]),
                        &device,
                    );
                    Ok((stem(p), x))
                })
                .collect::<Result<Vec<_>>>()?;
            (model, inputs)
        };
        Some((model, inputs))
    } else {
        None
    };
    let mut written = Vec::new();
    if !hand_made.is_empty() {
        written.extend(filters::write_feature_maps(
            &args.images,
            &hand_made,
            args.stride as usize,
            args.padding,
            &args.out,
            &device,
        )?);
    }
    if let Some((model, inputs)) = loaded {
        if let (true, Some((_, x))) = (args.layers.is_empty(), inputs.first()) {
            let names: Vec<String> = model
                .feature_maps(x.clone())
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            println!("layers (for --layer): {}", names.join(", "));
        }
        written.extend(filters::write_model_views(
            &model,
            &inputs,
            &args.layers,
            args.max_channels,
            &args.out,
        )?);
    }
    for w in &written {
        println!(
            "{}  {}×{}  {}",
            w.path.display(),
            w.size[0],
            w.size[1],
            w.what
        );
    }
    Ok(())
}
