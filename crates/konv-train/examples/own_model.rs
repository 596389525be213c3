//! A CNN of your own, written here (not from konv's zoo), trained on a folder of your own
//! images with konv-train's loop: augmentation, validation, checkpoints and all.
//!
//! `cargo run --release -p konv-train --example own_model -- DIR [RUN_DIR]`, where DIR holds
//! one sub-folder of PNG/JPEG images per class (or train/, val/, test/ with those inside;
//! `konv export --out DIR` writes Fashion-MNIST so). With RUN_DIR, the run's metrics and
//! weights are written there and `konv`-style resume works on it.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use konv_datasets::{FolderOptions, ImageFolder};
use konv_train::observer::{ConsoleObserver, OutputMode};
use konv_train::{backend::BackendName, model::Classify, run::RunDir, train::*};

#[derive(Module, Debug)]
struct SmallCnn {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: AdaptiveAvgPool2d,
    fc: Linear,
}

impl Classify for SmallCnn {
    fn logits(&self, images: Tensor<4>) -> Tensor<2> {
        let x = relu(self.conv1.forward(images));
        let x = relu(self.conv2.forward(x));
        self.fc.forward(self.pool.forward(x).flatten(1, 3))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: own_model DIR [RUN_DIR]")?;
    let options = FolderOptions {
        image_size: Some(28),
        ..Default::default()
    };
    let folder = ImageFolder::open(dir.as_ref(), &options)?;
    let data = SplitData::from_folder(&folder, folder.train.len() / 10, None, 1);
    let ([channels, _, _], classes) = (folder.input(), folder.class_names.len());
    let device = BackendName::Cpu.open()?;
    let conv = |i, o| Conv2dConfig::new([i, o], [3, 3]).with_padding(PaddingConfig2d::Same);
    let model = SmallCnn {
        conv1: conv(channels, 16).init(&device),
        conv2: conv(16, 32).init(&device),
        pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
        fc: LinearConfig::new(32, classes).init(&device),
    };
    let config = TrainConfig {
        model: "small-cnn".into(),
        epochs: 2,
        lr: 0.05,
        ..Default::default()
    };
    let run = std::env::args()
        .nth(2)
        .map(|p| RunDir::create(p.as_ref()))
        .transpose()?;
    let mut observer = ConsoleObserver::new(OutputMode::detect(false), config.batch_size);
    let outcome = train_model(
        model,
        &config,
        classes,
        &data,
        &device,
        run.as_ref(),
        &mut observer,
    )?;
    println!(
        "{folder}\ntest accuracy {:.2}%",
        100.0 * outcome.test.accuracy()
    );
    Ok(())
}
