//! `konv models`, `summary`, `augment` and `import`.

use anyhow::{Context, Result, bail};
use konv_train::run;

use crate::args::*;

pub(crate) fn cmd_devices() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("cpu   {threads} threads (--backend cpu: Burn's Flex backend)");
    let adapters = konv_train::backend::adapters();
    if adapters.is_empty() {
        println!("wgpu  no adapter (for wgpu without a GPU: apt-get install mesa-vulkan-drivers)");
    }
    for a in adapters {
        let used = if a.api == "Gl" {
            "  (OpenGL: not used for compute)"
        } else {
            ""
        };
        println!(
            "wgpu  {} ({}, {}, driver {}){used}",
            a.name, a.api, a.kind, a.driver
        );
    }
}

pub(crate) fn cmd_models() {
    use konv_models::summary::{giga, thousands};
    println!(
        "{:<16} {:<10} {:<11} {:>13} {:>10}  description",
        "name", "kind", "input", "parameters", "mult-adds"
    );
    for m in konv_models::models() {
        let [c, h, w] = m.input;
        println!(
            "{:<16} {:<10} {:<11} {:>13} {:>10}  {}",
            m.name,
            format!("{:?}", m.kind).to_lowercase(),
            format!("{c}x{h}x{w}"),
            thousands(m.params as u64),
            giga(m.macs),
            m.description
        );
    }
}

pub(crate) fn cmd_summary(args: SummaryArgs) -> Result<()> {
    use konv_models::summary::{SingleConv, Summary};
    let device = burn::prelude::Device::flex();
    let summary = if let Some(spec) = args.model.strip_prefix("conv2d:") {
        let dims: Vec<usize> = spec
            .split('x')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()
            .filter(|d: &Vec<usize>| d.len() == 3 && d.iter().all(|&v| v > 0))
            .with_context(|| {
                format!("--model conv2d:{spec}: expected conv2d:FILTERSxKxK, e.g. conv2d:200x5x5")
            })?;
        let input = args
            .input
            .context("--input CxHxW is needed for a conv2d: layer, e.g. --input 3x150x100")?;
        let padding = if args.padding == "same" {
            burn::nn::PaddingConfig2d::Same
        } else {
            burn::nn::PaddingConfig2d::Valid
        };
        if args.stride == 0 {
            bail!("--stride must be at least 1");
        }
        if padding == burn::nn::PaddingConfig2d::Valid && (input[1] < dims[1] || input[2] < dims[2])
        {
            bail!(
                "--input {}x{}x{} is smaller than the {}x{} kernel",
                input[0],
                input[1],
                input[2],
                dims[1],
                dims[2]
            );
        }
        let conv = burn::nn::conv::Conv2dConfig::new([input[0], dims[0]], [dims[1], dims[2]])
            .with_stride([args.stride, args.stride])
            .with_padding(padding)
            .init(&device);
        Summary::of(&SingleConv { conv }, &input)
    } else {
        let info = konv_models::info(&args.model)?;
        let input = args.input.unwrap_or(info.input);
        let classes = args.classes.unwrap_or(info.classes);
        let model = konv_models::build_model(&args.model, classes, input[0], &device)?;
        konv_models::summary::checked(&model, &input)
            .map_err(|e| anyhow::anyhow!("--input {}x{}x{}: {e}", input[0], input[1], input[2]))?
    };
    print!("{}", summary.table(args.batch as usize));
    Ok(())
}

pub(crate) fn cmd_augment(args: AugmentArgs) -> Result<()> {
    let dataset = args.data.load(args.dataset)?;
    konv_train::augment::save_grid(
        &args.out,
        &dataset.train,
        &args.augment,
        args.count.max(1),
        args.variants,
        args.seed,
    )?;
    println!(
        "{}: {} images of {} ({}), the original then {} augmented versions each ({})",
        args.out.display(),
        args.count.max(1).min(dataset.train.len()),
        args.dataset,
        dataset.source,
        args.variants,
        if args.augment.is_empty() {
            "no steps".to_string()
        } else {
            args.augment.to_string()
        }
    );
    Ok(())
}

pub(crate) fn cmd_import(args: ImportArgs) -> Result<()> {
    let info = konv_models::info(&args.model)?;
    let classes = args.classes.unwrap_or(info.classes);
    let device = burn::prelude::Device::flex();
    let (model, report) =
        konv_models::import::load_classifier(&args.model, classes, &args.weights, &device)?;
    let bytes = burn::module::Module::into_record(model)
        .into_bytes()
        .map_err(|e| anyhow::anyhow!("{}: cannot encode the weights: {e}", args.out.display()))?;
    run::write_atomic(&args.out, &bytes)
        .with_context(|| format!("{}: cannot write the weights", args.out.display()))?;
    println!(
        "{}: loaded {} tensors into {} ({} classes); {} unused{}; wrote {}",
        args.weights.display(),
        report.loaded,
        args.model,
        classes,
        report.unused.len(),
        if report.unused.is_empty() {
            String::new()
        } else {
            format!(" ({})", report.unused.join(", "))
        },
        args.out.display()
    );
    Ok(())
}

pub(crate) fn cmd_bench(args: BenchArgs) -> Result<()> {
    use konv_train::bench::{BenchConfig, Mode, agreement, bench};
    let info = konv_models::info(&args.model)?;
    let config = BenchConfig {
        model: args.model.clone(),
        mode: match args.mode {
            BenchModeArg::Train => Mode::Train,
            BenchModeArg::Infer => Mode::Infer,
        },
        batch_size: args.batch_size,
        size: args.size.unwrap_or(info.input[1]),
        channels: args.channels,
        classes: args.classes,
        warmup: args.warmup,
        steps: args.steps,
        replicas: args.replicas,
        seed: args.seed,
    };
    let device = args.backend.open()?;
    let agreed = if args.check_cpu {
        Some(agreement(&config, &device, 2)?)
    } else {
        None
    };
    let result = bench(&config, &device)?;
    if args.json {
        let mut value = serde_json::to_value(&result)?;
        value["backend"] = args.backend.as_str().into();
        if let Some(a) = &agreed {
            value["agreement"] = serde_json::to_value(a)?;
        }
        println!("{value}");
        return Ok(());
    }
    let channels = args.channels.unwrap_or(info.input[0]);
    println!(
        "{} {} on {} ({}), batch {}, {}×{}×{}{}",
        config.model,
        match config.mode {
            Mode::Train => "training steps",
            Mode::Infer => "inference",
        },
        args.backend.as_str(),
        result.device,
        config.batch_size,
        channels,
        config.size,
        config.size,
        if config.replicas > 1 {
            format!(", {} replicas", config.replicas)
        } else {
            String::new()
        }
    );
    println!("  images/s     {:.1}", result.images_per_sec);
    println!(
        "  ms/step      median {:.2}, min {:.2}, max {:.2} ({} steps)",
        result.ms_median, result.ms_min, result.ms_max, config.steps
    );
    println!(
        "  warm-up      {:.2} s ({} steps{}); model built in {:.2} s",
        result.warmup_seconds,
        config.warmup,
        if args.backend == konv_train::backend::BackendName::Wgpu {
            ", autotuning included"
        } else {
            ""
        },
        result.build_seconds
    );
    if let (Some(bytes), Some(kind)) = (result.peak_memory_bytes, &result.peak_memory_kind) {
        println!(
            "  peak memory  {:.1} MiB ({kind})",
            bytes as f64 / 1048576.0
        );
    }
    if let Some(a) = agreed {
        println!(
            "  vs cpu       logits max |Δ| {:.2e} of max |y| {:.3}; losses {} vs cpu {} (max rel. Δ {:.2e})",
            a.logits_relative,
            a.logits_max,
            losses(&a.device_losses),
            losses(&a.cpu_losses),
            a.losses_relative
        );
    }
    Ok(())
}

fn losses(values: &[f64]) -> String {
    let v: Vec<String> = values.iter().map(|l| format!("{l:.6}")).collect();
    v.join(", ")
}
