//! The wgpu backend computes what the CPU computes: the first training steps' losses from
//! the same weights and batch agree within a tolerance.
//!
//! Uses 8×8 inputs at batch 2 so that it runs in about a minute on lavapipe (Mesa's CPU
//! Vulkan driver), where Burn autotunes every new kernel shape. Without a wgpu adapter the
//! test is skipped with a message, unless `KONV_REQUIRE_WGPU=1` (as in CI), where it fails.

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
        let (next, loss, _) = train_step(model, &mut optim, batch.clone(), 0.05, 0.0);
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

#[test]
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
