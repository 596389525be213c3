//! Detection by sliding a classifier over the image (the lecture's detection slide, and
//! OverFeat's "convolutional implementation of sliding windows").
//!
//! Running a classifier on every window of an image repeats most of its work, since
//! neighbouring windows share most of their pixels. A classifier without its dense head is
//! fully convolutional: one pass over the whole image gives its last feature map, in which
//! each cell sees one window (its receptive field), stepped by the network's stride. A head
//! of convolutions then classifies every window at once. [`SlidingDetector`] puts such a
//! head on any classifier of the zoo; each cell predicts
//!
//! - **objectness**: one logit, whether an object's center falls in this cell;
//! - **class**: `num_classes` logits, what that object is;
//! - **box**: four numbers, the center's offset inside the cell and the box's size
//!   relative to a prior (the YOLO parametrisation, see `konv_train::detect`).
//!
//! The head is torchvision's `RPNHead` layout with a class branch: a shared 3×3 `conv`
//! with ReLU, then 1×1 `objectness`, `cls_logits` and `bbox_pred`. Overlapping windows
//! find the same object more than once; non-maximum suppression keeps the best of them.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, PaddingConfig2d, Relu};
use burn::prelude::*;

use crate::conv::FastConv2d;

use crate::registry::Classifier;
use crate::summary::{Summarize, Summary};

/// A fully convolutional detector: a classifier's feature maps and a per-cell head.
#[derive(Module, Debug)]
pub struct SlidingDetector {
    /// The feature extractor (its own dense head is not used).
    pub backbone: Classifier,
    /// Shared 3×3 convolution of the head.
    pub conv: Conv2d,
    /// One objectness logit per cell.
    pub objectness: Conv2d,
    /// Class logits per cell.
    pub cls_logits: Conv2d,
    /// Four box numbers per cell.
    pub bbox_pred: Conv2d,
    relu: Relu,
}

/// What a [`SlidingDetector`] predicts for every cell of its grid.
#[derive(Debug, Clone)]
pub struct DetectorOutput {
    /// `[batch, 1, gh, gw]` objectness logits.
    pub objectness: Tensor<4>,
    /// `[batch, num_classes, gh, gw]` class logits.
    pub class_logits: Tensor<4>,
    /// `[batch, 4, gh, gw]` box numbers.
    pub boxes: Tensor<4>,
}

impl SlidingDetector {
    /// Puts a fresh head for `num_classes` classes on `backbone` (any classifier). The
    /// objectness bias starts at the logit of `prior` (RetinaNet's 0.01), so that the first
    /// steps are not swamped by thousands of confident false positives.
    pub fn new(backbone: Classifier, num_classes: usize, prior: f64, device: &Device) -> Self {
        let channels = backbone.feature_map_channels();
        let one = |out: usize| {
            Conv2dConfig::new([channels, out], [1, 1])
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.01,
                })
                .init(device)
        };
        let mut objectness = one(1);
        let logit = -((1.0 - prior) / prior).ln();
        // A new trainable parameter (`Param::map` would keep a value that is not tracked).
        objectness.bias = Some(burn::module::Param::from_tensor(Tensor::full(
            [1],
            logit,
            device,
        )));
        Self {
            conv: Conv2dConfig::new([channels, channels], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .init(device),
            objectness,
            cls_logits: one(num_classes),
            bbox_pred: one(4),
            backbone,
            relu: Relu::new(),
        }
    }

    /// Number of classes the head predicts.
    pub fn num_classes(&self) -> usize {
        self.cls_logits.weight.dims()[0]
    }

    /// The head on every cell of the backbone's last feature map, in one pass.
    pub fn forward(&self, x: Tensor<4>) -> DetectorOutput {
        let map = self.backbone.forward_feature_map(x);
        let h = self.relu.forward(self.conv.fast_forward(map));
        DetectorOutput {
            objectness: self.objectness.fast_forward(h.clone()),
            class_logits: self.cls_logits.fast_forward(h.clone()),
            boxes: self.bbox_pred.fast_forward(h),
        }
    }

    /// Freezes the feature extractor, leaving the head trainable.
    pub fn freeze_backbone(mut self) -> Self {
        self.backbone = self.backbone.freeze();
        self
    }
}

impl Summarize for SlidingDetector {
    fn summarize(&self, s: &mut Summary) {
        s.scope("backbone", |s| self.backbone.summarize(s));
        // The classifier's pooling and dense head are not part of the detector: it reads
        // the last feature map.
        while s.rows.last().is_some_and(|r| r.output.len() != 3) {
            s.rows.pop();
        }
        if let Some(map) = s.rows.last().map(|r| r.output.clone()) {
            s.set_shape(map);
        }
        s.conv2d("conv", &self.conv);
        let shape = s.shape();
        s.conv2d("objectness", &self.objectness);
        s.set_shape(shape.clone());
        s.conv2d("cls_logits", &self.cls_logits);
        s.set_shape(shape);
        s.conv2d("bbox_pred", &self.bbox_pred);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::build_for;

    #[test]
    fn one_prediction_per_cell_of_the_feature_map() {
        let device = Device::flex();
        let backbone = build_for("resnet20", 1, 1, &device)
            .unwrap()
            .with_stem_stride(2)
            .unwrap();
        let model = SlidingDetector::new(backbone, 10, 0.01, &device);
        let x = Tensor::<4>::random([2, 1, 96, 80], burn::tensor::Distribution::Default, &device);
        let out = model.forward(x);
        // Stem stride 2 and two stride-2 stages: one cell per 8×8 window.
        assert_eq!(out.objectness.dims(), [2, 1, 12, 10]);
        assert_eq!(out.class_logits.dims(), [2, 10, 12, 10]);
        assert_eq!(out.boxes.dims(), [2, 4, 12, 10]);
        assert_eq!(model.num_classes(), 10);
        // The objectness prior: every cell starts near 1 % (weights are tiny).
        let p = burn::tensor::activation::sigmoid(out.objectness)
            .mean()
            .into_scalar::<f32>();
        assert!((p - 0.01).abs() < 0.005, "{p}");
        // Sliding: a window's prediction depends only on nearby pixels, so the same
        // content in another place gives the same numbers in the shifted cell. Here a
        // blank image: every interior cell predicts alike.
        let out = model.forward(Tensor::zeros([1, 1, 96, 96], &device));
        let v: Vec<f32> = out.class_logits.into_data().try_to_vec::<f32>().unwrap();
        let at = |r: usize, c: usize| v[r * 12 + c];
        assert!((at(5, 5) - at(6, 7)).abs() < 1e-5);
        let s = Summary::of(&model, &[1, 96, 96]);
        assert_eq!(s.rows.last().unwrap().name, "bbox_pred");
        assert_eq!(s.shape(), vec![4, 12, 12]);
    }

    #[test]
    fn every_head_parameter_trains() {
        let device = Device::flex().autodiff();
        let backbone = build_for("fashion-cnn", 1, 1, &device).unwrap();
        let model = SlidingDetector::new(backbone, 3, 0.01, &device);
        for conv in [
            &model.conv,
            &model.objectness,
            &model.cls_logits,
            &model.bbox_pred,
        ] {
            assert!(conv.weight.val().is_require_grad());
            assert!(conv.bias.as_ref().unwrap().val().is_require_grad());
        }
        let bias: Vec<f32> = model
            .objectness
            .bias
            .as_ref()
            .unwrap()
            .val()
            .into_data()
            .try_to_vec()
            .unwrap();
        assert!((bias[0] - (0.01f32 / 0.99).ln()).abs() < 1e-6);
    }

    #[test]
    fn any_classifier_slides() {
        let device = Device::flex();
        let backbone = build_for("fashion-cnn", 1, 1, &device).unwrap();
        let model = SlidingDetector::new(backbone, 3, 0.01, &device);
        let out = model.forward(Tensor::zeros([1, 1, 56, 56], &device));
        assert_eq!(out.class_logits.dims()[..2], [1, 3]);
        assert_eq!(out.boxes.dims()[2..], out.objectness.dims()[2..]);
    }
}
