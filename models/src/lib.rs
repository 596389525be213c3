//! konv's model zoo: classic CNN families on Burn, importable into your own code.
//!
//! Each family is one file with a `Config` (Burn's `#[derive(Config)]`, serde) whose
//! `init(&device)` builds the `Module`. The [`registry`] maps names to builders, as timm's
//! `create_model` does.
//!
//! ```no_run
//! use burn::prelude::*;
//! use konv_models::fashion_cnn::FashionCnnConfig;
//!
//! let device = Device::flex();
//! let model = FashionCnnConfig::new().init(&device);
//! let logits = model.forward(Tensor::zeros([8, 1, 28, 28], &device)); // [8, 10]
//! ```

pub mod fashion_cnn;
pub mod registry;

pub use registry::{Classifier, ModelError, ModelInfo, build, models};
