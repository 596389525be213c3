//! Classification and localization (the lecture's "classification + localization"): any
//! classifier of the zoo without its head, global average pooling (inside the classifier's
//! `forward_features`), then two heads on the same features: class logits and a box of four
//! numbers.
//!
//! The box head is linear, as the lecture's `Dense(4)`: train it on boxes normalized to the
//! image (for example center x, center y, width, height in [0, 1]) with an MSE or IoU loss,
//! and the class head with cross-entropy.
//!
//! Global average pooling keeps *what* is in the image and mostly discards *where*; with
//! [`Localizer::with_box_grid`] the box head reads the last feature map averaged to a
//! `g × g` grid instead (flattened, `channels · g²` numbers, divided by `g`), so positions survive, as a
//! Keras model with `Flatten()` before `Dense(4)` would keep them.

use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
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
    /// Pooling of the feature map to a grid for the box head (none: the pooled features).
    pub box_pool: Option<AdaptiveAvgPool2d>,
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
            box_pool: None,
        }
    }

    /// Like [`Localizer::new`], but the box head reads the last feature map averaged to a
    /// `grid × grid` grid (`grid` 1 is [`Localizer::new`]).
    pub fn with_box_grid(
        backbone: Classifier,
        num_classes: usize,
        grid: usize,
        device: &Device,
    ) -> Self {
        let mut model = Self::new(backbone, num_classes, device);
        if grid > 1 {
            let inputs = model.backbone.feature_map_channels() * grid * grid;
            model.box_head = LinearConfig::new(inputs, 4).init(device);
            model.box_pool = Some(AdaptiveAvgPool2dConfig::new([grid, grid]).init());
        }
        model
    }

    /// Side of the box head's grid (1: the pooled features).
    pub fn box_grid(&self) -> usize {
        self.box_pool.as_ref().map_or(1, |p| p.output_size[0])
    }

    /// Both heads on the shared features.
    pub fn forward(&self, x: Tensor<4>) -> LocalizerOutput {
        let map = self.backbone.forward_feature_map(x);
        // Divided by the grid side, the g² cells have the squared norm of one pooled vector:
        // under SGD a linear regression head is stable only while lr · ‖x‖² stays small, and
        // 16 cells at full scale diverge at learning rates the pooled head trains well with.
        let box_input = self.box_pool.as_ref().map(|pool| {
            let g = pool.output_size[0] as f64;
            pool.forward(map.clone()).flatten::<2>(1, 3).div_scalar(g)
        });
        let features = self.backbone.features_from_map(map);
        let box_input = box_input.unwrap_or_else(|| features.clone());
        LocalizerOutput {
            logits: self.class_head.forward(features),
            boxes: self.box_head.forward(box_input),
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
        s.set_shape(vec![self.box_head.weight.dims()[0]]);
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

    #[test]
    fn a_box_grid_reads_the_feature_map() {
        let device = Device::flex();
        let backbone = build_for("resnet20", 1, 1, &device)
            .unwrap()
            .with_stem_stride(2)
            .unwrap();
        let model = Localizer::with_box_grid(backbone, 10, 4, &device);
        assert_eq!(model.box_grid(), 4);
        assert_eq!(model.box_head.weight.dims(), [64 * 16, 4]);
        let x = Tensor::<4>::random([2, 1, 64, 64], burn::tensor::Distribution::Default, &device);
        // Stem stride 2: a 64×64 canvas gives ResNet-20's 8×8 map of a 32×32 input.
        assert_eq!(
            model.backbone.forward_feature_map(x.clone()).dims(),
            [2, 64, 8, 8]
        );
        let out = model.forward(x.clone());
        assert_eq!((out.logits.dims(), out.boxes.dims()), ([2, 10], [2, 4]));
        // The class head still sees the pooled features.
        let features = model.backbone.forward_features(x);
        model
            .class_head
            .forward(features)
            .into_data()
            .assert_approx_eq::<f32>(&out.logits.into_data(), Default::default());
    }
}
