//! What the classification loop trains: any Burn [`Module`] from images to logits.
//!
//! The zoo's [`Classifier`] implements [`Classify`]; so can a model you write yourself:
//!
//! ```no_run
//! use burn::prelude::*;
//! use burn::nn::{Linear, LinearConfig};
//! use konv_train::model::Classify;
//!
//! #[derive(Module, Debug)]
//! struct Tiny {
//!     fc: Linear,
//! }
//!
//! impl Classify for Tiny {
//!     fn logits(&self, images: Tensor<4>) -> Tensor<2> {
//!         self.fc.forward(images.flatten(1, 3))
//!     }
//! }
//! ```
//!
//! Then [`crate::train::train_model`] trains it with everything the loop does: augmentation,
//! schedules, validation, checkpoints, exact `--resume`, early stopping, data parallelism.

use burn::module::Module;
use burn::prelude::*;
use konv_models::Classifier;

/// A classifier konv-train can train: `[batch, channels, height, width]` images to
/// `[batch, classes]` logits.
pub trait Classify: Module + 'static {
    /// The logits of a batch of standardized images.
    fn logits(&self, images: Tensor<4>) -> Tensor<2>;

    /// Transfer learning's first phase (`freeze_epochs`): the model with every parameter but
    /// its head's frozen. Models without a backbone/head split say so (the default).
    fn freeze_backbone(self) -> Result<Self, String> {
        Err("this model has no backbone/head split for a frozen phase (implement Classify::freeze_backbone and head_logits)".into())
    }

    /// The logits while the backbone is frozen: the backbone in inference mode (batch norm
    /// on its running statistics, no graph through it), the head training.
    fn head_logits(&self, images: Tensor<4>) -> Tensor<2> {
        self.logits(images)
    }

    /// Whether the model takes `[channels, height, width]` images and gives `classes`
    /// logits; an error says why not. The default runs one zero image through the model
    /// in inference mode, catching a shape panic.
    fn check_input(&self, input: [usize; 3], classes: usize) -> Result<(), String> {
        probe(self, input, classes)
    }
}

/// The device `model`'s parameters live on (Flex for a model without parameters).
pub fn device_of<M: Module>(model: &M) -> Device {
    model
        .devices()
        .into_iter()
        .next()
        .unwrap_or_else(Device::flex)
}

/// One zero image through `model` (in inference mode), a shape panic caught and turned into
/// one line ([`konv_models::summary::shape_checked`]), and the output's shape checked.
pub fn probe<M: Classify>(model: &M, input: [usize; 3], classes: usize) -> Result<(), String> {
    let [c, h, w] = input;
    let valid = model.valid();
    let x = Tensor::<4>::zeros([1, c, h, w], &device_of(&valid));
    match konv_models::summary::shape_checked(|| valid.logits(x).dims())? {
        [1, k] if k == classes => Ok(()),
        dims => Err(format!(
            "the model gives logits of shape {dims:?} for one image, not [1, {classes}] for the data's {classes} classes"
        )),
    }
}

impl Classify for Classifier {
    fn logits(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward(images)
    }

    fn freeze_backbone(self) -> Result<Self, String> {
        Ok(Classifier::freeze_backbone(self))
    }

    fn head_logits(&self, images: Tensor<4>) -> Tensor<2> {
        let features = self.valid().forward_features(images.inner());
        self.forward_head(Tensor::from_inner(features))
    }

    /// The zoo's shape walk ([`konv_models::summary::checked`]): the layer that does not
    /// fit, by name. The registry builds the head for the data's classes.
    fn check_input(&self, input: [usize; 3], _classes: usize) -> Result<(), String> {
        konv_models::summary::checked(self, &input).map(|_| ())
    }
}
