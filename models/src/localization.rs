//! Classification and localization (the lecture's "classification + localization"): any
//! classifier of the zoo without its head, global average pooling (inside the classifier's
//! `forward_features`), then two heads on the same features: class logits and a box of four
//! numbers.
//!
//! The box head is linear, as the lecture's `Dense(4)`: train it on boxes normalized to the
//! image (for example center x, center y, width, height in [0, 1]) with an MSE or IoU loss,
//! and the class head with cross-entropy.

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

use crate::registry::Classifier;
use crate::summary::{Summarize, Summary};

/// A classifier's features with a class head and a box head.
#[derive(Module, Debug)]
pub struct Localizer {
    /// The feature extractor (its own head is not used).
    pub backbone: Classifier,
    /// Class logits.
    pub class_head: Linear,
    /// Four box numbers.
    pub box_head: Linear,
}

/// What a [`Localizer`] predicts.
#[derive(Debug, Clone)]
pub struct LocalizerOutput {
    /// `[batch, num_classes]` class logits.
    pub logits: Tensor<2>,
    /// `[batch, 4]` box numbers.
    pub boxes: Tensor<2>,
}

impl Localizer {
    /// Wraps `backbone` (any classifier) with fresh heads for `num_classes` classes.
    pub fn new(backbone: Classifier, num_classes: usize, device: &Device) -> Self {
        let features = backbone.num_features();
        Self {
            backbone,
            class_head: LinearConfig::new(features, num_classes).init(device),
            box_head: LinearConfig::new(features, 4).init(device),
        }
    }

    /// Both heads on the shared features.
    pub fn forward(&self, x: Tensor<4>) -> LocalizerOutput {
        let features = self.backbone.forward_features(x);
        LocalizerOutput {
            logits: self.class_head.forward(features.clone()),
            boxes: self.box_head.forward(features),
        }
    }

    /// Freezes the feature extractor, leaving both heads trainable.
    pub fn freeze_backbone(mut self) -> Self {
        self.backbone = self.backbone.freeze();
        self
    }
}

impl Summarize for Localizer {
    fn summarize(&self, s: &mut Summary) {
        s.scope("backbone", |s| self.backbone.summarize(s));
        // The classifier's own head is the last row; the two heads read its input.
        s.rows.pop();
        let features = self.backbone.num_features();
        s.set_shape(vec![features]);
        s.linear("class_head", &self.class_head);
        s.set_shape(vec![features]);
        s.linear("box_head", &self.box_head);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::build_for;

    #[test]
    fn two_heads_on_any_classifier() {
        let device = Device::flex();
        for name in ["fashion-cnn", "resnet20", "lenet5-modern"] {
            let info = crate::registry::info(name).unwrap();
            let [c, h, w] = info.input;
            let backbone = build_for(name, 1, c, &device).unwrap();
            let model = Localizer::new(backbone, 3, &device);
            let out = model.forward(Tensor::zeros([2, c, h, w], &device));
            assert_eq!(out.logits.dims(), [2, 3]);
            assert_eq!(out.boxes.dims(), [2, 4]);
            let s = Summary::of(&model, &[c, h, w]);
            assert_eq!(s.rows.last().unwrap().name, "box_head");
            assert_eq!(s.shape(), vec![4]);
        }
    }
}
