//! konv's model zoo: the classic CNN families on Burn, importable into your own code.
//!
//! Each family is one file, in the order of its paper, with a `Config` (Burn's
//! `#[derive(Config)]`, serde) whose `init(&device)` builds the `Module`. Field names follow
//! torchvision's state-dict keys (`conv1`, `bn1`, `layer1.0.downsample.0`, `fc`), so PyTorch
//! weights load without remapping ([`import`]). Every classifier has `forward_features`
//! (everything but the head), `with_num_classes` (a fresh head) and `freeze_backbone`
//! (transfer learning), and lists its layers into a [`summary::Summary`] (parameters,
//! multiply-adds, activation memory). The [`registry`] maps names to builders, as timm's
//! `create_model` does.
//!
//! ```no_run
//! use burn::prelude::*;
//! use konv_models::resnet::ResNetConfig;
//!
//! let device = Device::flex();
//! let model = ResNetConfig::resnet50(1000).init(&device);
//! let logits = model.forward(Tensor::zeros([1, 3, 224, 224], &device)); // [1, 1000]
//!
//! // Or by name, with a new head:
//! let model = konv_models::build("resnet18", 10, &device)?;
//! # Ok::<(), konv_models::ModelError>(())
//! ```

pub mod alexnet;
pub mod conv;
pub mod detection;
pub mod fashion_cnn;
pub mod fcn;
pub mod googlenet;
pub mod import;
pub mod layers;
pub mod lenet;
pub mod localization;
pub mod parity;
pub mod preprocess;
pub mod registry;
pub mod resnet;
pub mod summary;
pub mod vgg;
pub mod xception;

pub use registry::{
    Classifier, Model, ModelError, ModelInfo, ModelKind, build, build_for, build_model, info,
    models,
};
