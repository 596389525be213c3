//! A CNN of your own, written here (not from konv's zoo), trained on a folder of your own
//! images with konv-train's loop: augmentation, validation, checkpoints and all.
//!
//! `cargo run --release -p konv-train --example own_model -- DIR`, where DIR holds
//! one sub-folder of PNG/JPEG images per class (or train/, val/, test/ with those inside;
//! `konv export --out DIR` writes Fashion-MNIST so).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use konv_datasets::{FolderOptions, ImageFolder};
use konv_train::observer::{ConsoleObserver, OutputMode};
use konv_train::{backend::BackendName, engine::Settings, model::Classify, train::*};

#[derive(Module, Debug)]
struct SmallCnn {
    conv1: Conv2d,
    conv2: Conv2d,
    fc: Linear,
}

impl Classify for SmallCnn {
    fn logits(&self, images: Tensor<4>) -> Tensor<2> {
        let x = relu(self.conv2.forward(relu(self.conv1.forward(images))));
        self.fc.forward(x.mean_dim(3).mean_dim(2).flatten(1, 3)) // global average pool
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Each training step reuses the memory the last one freed (as the `konv` binary does).
    konv_train::backend::keep_freed_memory();
    let dir = std::env::args().nth(1).ok_or("usage: own_model DIR")?;
    // Shorter side resized to 28, the centre 28×28 kept; decoded once, then cached.
    let options = FolderOptions {
        image_size: Some(28),
        ..Default::default()
    };
    let folder = ImageFolder::open(dir.as_ref(), &options)?;
    let data = SplitData::from_folder(&folder, folder.train.len() / 10, None, 1);
    let ([channels, _, _], classes) = (folder.input(), folder.class_names.len());
    let device = BackendName::Cpu.open()?;
    // The weights below come from the device's generator: seed it for the same run every
    // time (konv seeds its zoo models from `Settings::seed` the same way).
    device.seed(42);
    let conv = |i, o| Conv2dConfig::new([i, o], [3, 3]).with_padding(PaddingConfig2d::Same);
    let fc = LinearConfig::new(32, classes).init(&device);
    let (conv1, conv2) = (conv(channels, 16).init(&device), conv(16, 32).init(&device));
    let model = SmallCnn { conv1, conv2, fc };
    let settings = Settings {
        epochs: 2,
        lr: 0.05,
        ..Default::default()
    };
    let cfg = TrainConfig {
        model: "small-cnn".into(),
        settings,
        ..Default::default()
    };
    let mut obs = ConsoleObserver::new(OutputMode::detect(false), cfg.settings.batch_size);
    // With Some(&RunDir::create(path)?) instead of None: checkpoints, and resume_model.
    let out = train_model(model, &cfg, classes, &data, &device, None, &mut obs)?;
    println!(
        "{folder}\ntest accuracy {:.2}%",
        100.0 * out.test.accuracy()
    );
    Ok(())
}
