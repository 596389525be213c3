//! `konv`: train, evaluate and run CNNs from the command line.
//!
//! A thin dispatcher: [`args`] holds each subcommand's flags as clap parses them,
//! [`commands`] one module per subcommand that turns them into library settings, calls
//! `konv-train`, and prints.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod args;
mod commands;

use args::*;

#[derive(Parser)]
#[command(
    name = "konv",
    version,
    about = "Convolutional neural networks in Rust, on Burn"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model and write a run folder (config, metrics, checkpoints, curves); or
    /// continue one with --resume.
    Train(Box<TrainArgs>),
    /// Test accuracy and confusion matrix of a trained run.
    Eval(EvalArgs),
    /// Top classes of image files (PNG or JPEG) for a trained run.
    Predict(PredictArgs),
    /// List the models of the zoo with their input, parameters and multiply-adds.
    Models,
    /// List what each backend sees here: the CPU threads, and every wgpu adapter with its
    /// graphics API, type and driver (OpenGL adapters are listed but not used).
    Devices,
    /// Per-layer output shapes, parameters, multiply-adds and memory of a model.
    Summary(SummaryArgs),
    /// Images/s of a zoo model on a backend: training steps or inference, with the
    /// milliseconds per step, the warm-up (autotuning) time and the peak memory.
    Bench(BenchArgs),
    /// Load PyTorch (torchvision) weights into a zoo model and save them as Burn weights.
    Import(ImportArgs),
    /// Write a PNG grid of augmented training images, to look at an --augment pipeline.
    Augment(AugmentArgs),
    /// Convolve images with hand-made filters and write the feature maps as PNGs; with
    /// --run or --model, draw a trained network's first-layer filters and feature maps.
    Filters(FiltersArgs),
    /// Write a dataset as an image folder (root/train/<class>/*.png, root/test/…), the
    /// layout `konv train --dataset folder` reads.
    Export(ExportArgs),
}

fn main() {
    let code = run();
    // `run` has returned, so every file konv writes is written and closed: end without the
    // GPU driver's exit handlers, which crashed after wgpu runs (see the function's docs).
    konv_train::backend::exit(code)
}

/// Parses the command line and runs the subcommand; the process's exit code.
fn run() -> i32 {
    // Training steps reuse the memory the last one freed (see the function's docs).
    konv_train::backend::keep_freed_memory();
    // Burn materializes a loaded optimizer state (`--resume`) on its default device, which
    // prefers a GPU: on a machine without one that would start wgpu (or fail). konv moves
    // every tensor to the device chosen with --backend anyway, so default to the CPU.
    if std::env::var_os("BURN_DEVICE").is_none() {
        // SAFETY: first thing in main, before any other thread exists.
        unsafe { std::env::set_var("BURN_DEVICE", "flex") };
    }
    // `--epochs -1` reads -1 as the value, so the error names the flag and its range (clap
    // would otherwise take it for an unknown flag `-1`).
    let command = Cli::command().mut_subcommands(|sub| {
        sub.mut_args(|arg| {
            if arg.get_action().takes_values() {
                arg.allow_negative_numbers(true)
            } else {
                arg
            }
        })
    });
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Train(args) => commands::cmd_train(*args),
        Command::Eval(args) => commands::cmd_eval(args),
        Command::Predict(args) => commands::cmd_predict(args),
        Command::Devices => {
            commands::cmd_devices();
            Ok(())
        }
        Command::Models => {
            commands::cmd_models();
            Ok(())
        }
        Command::Summary(args) => commands::cmd_summary(args),
        Command::Bench(args) => commands::cmd_bench(args),
        Command::Import(args) => commands::cmd_import(args),
        Command::Augment(args) => commands::cmd_augment(args),
        Command::Filters(args) => commands::cmd_filters(args),
        Command::Export(args) => commands::cmd_export(args),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            1
        }
    }
}

/// The one line an error prints: the library names settings by their field names
/// (`batch_size`); here they become the flags that set them (`--batch-size`), and advice
/// names the flag to change.
fn describe(e: &anyhow::Error) -> String {
    use konv_train::TrainError;
    match e.downcast_ref::<TrainError>() {
        Some(TrainError::Setting { name, reason }) => {
            format!("--{}: {reason}", name.replace('_', "-"))
        }
        Some(diverged @ TrainError::Diverged { .. }) => {
            format!("{diverged}: give a smaller --lr (or --clip-grad-norm)")
        }
        // The chain of causes, each once: an error that already prints its cause (`path:
        // Permission denied (os error 13)`) is not followed by that cause again.
        _ => {
            let mut line = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !line.contains(&cause) {
                    line.push_str(": ");
                    line.push_str(&cause);
                }
            }
            line
        }
    }
}
