//! Runs a torchvision state dict in a konv model.
//!
//! ```text
//! cargo run --release -p konv-models --example torchvision_inference -- \
//!     resnet18 resnet18.pth input.safetensors output.safetensors [CLASSES]
//! ```
//!
//! Loads the state dict (`.pth`/`.pt` from `torch.save(model.state_dict(), …)`, or
//! `.safetensors`) into the zoo model of that name, reads the `[batch, 3, H, W]` float32
//! tensor `input` of the input file, runs the model in inference mode (batch norm on its
//! running statistics, no dropout: the device is not an autodiff one) and writes the logits
//! as tensor `output`. To make the input in Python:
//!
//! ```python
//! from safetensors.torch import save_file
//! save_file({"input": torch.randn(1, 3, 224, 224)}, "input.safetensors")
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use burn::prelude::*;
use konv_models::import::load_classifier;
use konv_models::parity::{read_tensor, write_tensors};

fn run(args: &[String]) -> Result<String, String> {
    let [model, weights, input, output, rest @ ..] = args else {
        return Err(
            "usage: torchvision_inference MODEL WEIGHTS INPUT.safetensors OUTPUT.safetensors [CLASSES]"
                .into(),
        );
    };
    let classes = match rest.first() {
        Some(n) => n
            .parse::<usize>()
            .map_err(|_| format!("CLASSES must be a number, got `{n}`"))?,
        None => 1000,
    };
    let device = Device::flex();
    let (model_net, report) = load_classifier(model, classes, &PathBuf::from(weights), &device)
        .map_err(|e| e.to_string())?;
    let x: Tensor<4> =
        read_tensor(&PathBuf::from(input), "input", &device).map_err(|e| e.to_string())?;
    let y = model_net.forward(x);
    let dims = y.dims();
    write_tensors(
        &PathBuf::from(output),
        vec![("output".into(), y.into_data())],
    )
    .map_err(|e| e.to_string())?;
    Ok(format!(
        "{model}: loaded {} tensors ({} unused in the file); wrote output {dims:?} to {output}",
        report.loaded,
        report.unused.len()
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
