//! The wgpu backend computes what the CPU computes: the first training steps' losses from
//! the same weights and batch agree within a tolerance.
//!
//! Uses 8×8 inputs at batch 2 so that it runs in about a minute on lavapipe (Mesa's CPU
//! Vulkan driver), where Burn autotunes every new kernel shape. Without a wgpu adapter the
//! test is skipped with a message, unless `KONV_REQUIRE_WGPU=1` (as in CI), where it fails.
//!
//! The binary has its own `main` (`harness = false`): libtest would end the process with
//! `exit`, which runs the Vulkan driver's and LLVM's exit handlers while Burn's device
//! threads and lavapipe's own are still running, the race that crashed `konv bench
//! --backend wgpu` in CI after its work was done. Like the `konv` binary, this one ends with
//! [`konv_train::backend::exit`].

use burn::module::Module;
use burn::prelude::*;
use konv_models::Classifier;
use konv_models::fashion_cnn::FashionCnnConfig;
use konv_train::backend::BackendName;
use konv_train::data::ImageBatch;
use konv_train::train::{TrainConfig, train_step};

fn losses(model: Classifier, batch: &ImageBatch, steps: usize) -> Vec<f64> {
    let mut optim = TrainConfig::default().optimizer(&model);
    let mut model = model;
    let mut out = Vec::new();
    for _ in 0..steps {
        let (next, loss, _) = train_step(model, &mut optim, batch.clone(), 0.05, 0.0).unwrap();
        model = next;
        out.push(loss);
    }
    out
}

fn batch_on(device: &Device) -> ImageBatch {
    let pixels: Vec<f32> = (0..2 * 64)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    ImageBatch {
        images: Tensor::from_data(TensorData::new(pixels, [2, 1, 8, 8]), device),
        targets: Tensor::from_data(TensorData::new(vec![3i64, 7], [2]), device),
        mix: None,
    }
}

fn main() {
    const NAME: &str = "wgpu_losses_match_cpu";
    // `cargo test FILTER` passes the filter on; flags (`--nocapture`, …) are libtest's.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let code = if filters.is_empty() || filters.iter().any(|f| NAME.contains(f.as_str())) {
        match std::panic::catch_unwind(wgpu_losses_match_cpu) {
            Ok(()) => {
                println!("test {NAME} ... ok");
                0
            }
            Err(_) => {
                println!("test {NAME} ... FAILED");
                101
            }
        }
    } else {
        println!("test {NAME} ... filtered out");
        0
    };
    konv_train::backend::exit(code)
}

fn wgpu_losses_match_cpu() {
    let wgpu = match BackendName::Wgpu.open() {
        Ok(d) => d.autodiff(),
        Err(e) => {
            if std::env::var("KONV_REQUIRE_WGPU").as_deref() == Ok("1") {
                panic!("wgpu required but unavailable: {e}");
            }
            eprintln!("skipping: {e}");
            return;
        }
    };
    let cpu = Device::flex().autodiff();
    cpu.seed(5);
    // No dropout: its masks come from each backend's own random generator.
    let config = FashionCnnConfig::new()
        .with_input_size([8, 8])
        .with_dropout(0.0);
    let cpu_model = Classifier::FashionCnn(config.init(&cpu));
    let record = cpu_model.clone().into_record();
    let wgpu_model = Classifier::FashionCnn(config.init(&wgpu)).load_record(record);

    let on_cpu = losses(cpu_model, &batch_on(&cpu), 3);
    let on_wgpu = losses(wgpu_model, &batch_on(&wgpu), 3);
    println!("cpu  {on_cpu:?}\nwgpu {on_wgpu:?}");
    for (a, b) in on_cpu.iter().zip(&on_wgpu) {
        assert!(
            (a - b).abs() <= 1e-3 * a.abs().max(1.0),
            "cpu {on_cpu:?} vs wgpu {on_wgpu:?}"
        );
    }
    assert!(on_cpu[2] < on_cpu[0], "the steps train: {on_cpu:?}");
}
