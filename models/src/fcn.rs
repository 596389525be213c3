//! Fully convolutional networks for semantic segmentation (Long, Shelhamer & Darrell, *Fully
//! Convolutional Networks for Semantic Segmentation*, 2015).
//!
//! A classifier's dense layers become convolutions (VGG-16's `fc6` a 7×7 and `fc7` a 1×1
//! convolution; a ResNet needs none), a 1×1 `score_fr` gives class scores at 1/32 of the
//! input, and transposed convolutions initialized to bilinear interpolation upsample them:
//!
//! ```text
//! FCN-32s  upscore ×32 (score_fr)
//! FCN-16s  upscore ×16 (upscore2 ×2 (score_fr) + score_pool4 (pool4))
//! FCN-8s   upscore ×8  (upscore_pool4 ×2 (… FCN-16s' sum …) + score_pool3 (pool3))
//! ```
//!
//! Output size: the paper pads the first convolution by 100 and crops each sum at hand-set
//! offsets. Here the input is zero-padded on the bottom and right to a multiple of the
//! backbone's stride, every upsampling is exactly ×2 or ×f (kernel 2f, stride f, padding
//! f/2), so the maps line up without offsets, and the output is cropped back to the input's
//! size: exactly `[batch, classes, height, width]` for any height and width, odd ones too.
//!
//! Backbones: `vgg16` (the paper's; VGG-16's `features` load torchvision weights), the
//! ImageNet ResNets (skips from `layer3`/`layer2`), and the small-image ResNets (stride 4,
//! skips from `layer2`/`layer1`: FCN-8s then needs no final upsampling), which train on a
//! laptop CPU.

use burn::module::Param;
use burn::nn::conv::{Conv2d, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, Relu};
use burn::prelude::*;

use crate::conv::FastConv2d;

use crate::layers::{Layer, conv, init_bilinear};
use crate::resnet::{Block, ResNet, ResNetConfig};
use crate::summary::{Summarize, Summary};
use crate::vgg::{Vgg, VggConfig};

/// Which of the paper's three nets.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum FcnVariant {
    /// One upsampling from the last stage.
    Fcn32s,
    /// Plus a skip from the stage at half the stride.
    Fcn16s,
    /// Plus a skip from the stage at a quarter of the stride.
    Fcn8s,
}

/// The classifier an FCN is built on.
#[derive(Config, Debug)]
pub enum BackboneConfig {
    /// A VGG (the paper's VGG-16), with `fc6`/`fc7` as convolutions.
    Vgg(VggConfig),
    /// A ResNet (either family).
    ResNet(ResNetConfig),
}

/// Hyper-parameters of an [`Fcn`].
#[derive(Config, Debug)]
pub struct FcnConfig {
    /// FCN-32s, -16s or -8s.
    pub variant: FcnVariant,
    /// The backbone.
    pub backbone: BackboneConfig,
    /// Segmentation classes (the paper: 21 for PASCAL VOC, background included).
    #[config(default = 21)]
    pub num_classes: usize,
    /// Width of `fc6`/`fc7` (VGG backbones only).
    #[config(default = 4096)]
    pub fc_width: usize,
    /// Dropout after `fc6` and `fc7`.
    #[config(default = 0.5)]
    pub dropout: f64,
}

/// The backbone's modules.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // Module derives need the modules inline, not boxed.
pub enum Backbone {
    /// VGG.
    Vgg(Vgg),
    /// ResNet.
    ResNet(ResNet),
}

impl Backbone {
    /// The feature maps at a quarter, half and all of the total stride.
    pub fn forward_pyramid(&self, x: Tensor<4>) -> [Tensor<4>; 3] {
        let mut maps = match self {
            Backbone::Vgg(vgg) => vgg.forward_pools(x),
            Backbone::ResNet(resnet) => resnet.forward_stages(x),
        };
        let c5 = maps.pop().expect("a backbone has stages");
        let c4 = maps.pop().expect("a backbone has 3 stages");
        let c3 = maps.pop().expect("a backbone has 3 stages");
        [c3, c4, c5]
    }

    /// Channels of [`Backbone::forward_pyramid`]'s maps.
    pub fn pyramid_channels(&self) -> [usize; 3] {
        let mut channels = Vec::new();
        match self {
            Backbone::Vgg(vgg) => {
                let mut last = 0;
                for layer in &vgg.features {
                    match layer {
                        Layer::Conv2d(c) => last = c.weight.dims()[0],
                        Layer::MaxPool2d(_) => channels.push(last),
                        _ => {}
                    }
                }
            }
            Backbone::ResNet(resnet) => {
                for stage in resnet.stages() {
                    let last = stage.last().expect("stages are not empty");
                    channels.push(match last {
                        Block::Basic(b) => b.conv2.weight.dims()[0],
                        Block::Bottleneck(b) => b.conv3.weight.dims()[0],
                    });
                }
            }
        }
        let n = channels.len();
        assert!(n >= 3, "an FCN backbone needs three stages");
        [channels[n - 3], channels[n - 2], channels[n - 1]]
    }

    /// The total stride of the last map.
    pub fn stride(&self) -> usize {
        match self {
            Backbone::Vgg(vgg) => {
                let pools = vgg
                    .features
                    .iter()
                    .filter(|layer| matches!(layer, Layer::MaxPool2d(_)))
                    .count();
                1 << pools
            }
            Backbone::ResNet(resnet) => {
                let pool = if resnet.maxpool.is_some() { 2 } else { 1 };
                (resnet.conv1.stride[0] * pool) << (resnet.stages().count() - 1)
            }
        }
    }
}

/// A fully convolutional network.
#[derive(Module, Debug)]
pub struct Fcn {
    /// The classifier's convolutional part.
    pub backbone: Backbone,
    /// VGG's first dense layer as a 7×7 convolution (VGG backbones).
    pub fc6: Option<Conv2d>,
    /// VGG's second dense layer as a 1×1 convolution (VGG backbones).
    pub fc7: Option<Conv2d>,
    /// 1×1 class scores at the full stride.
    pub score_fr: Conv2d,
    /// ×2 upsampling of `score_fr` (16s, 8s).
    pub upscore2: Option<ConvTranspose2d>,
    /// 1×1 class scores of the half-stride map (16s, 8s), zero-initialized as in the paper.
    pub score_pool4: Option<Conv2d>,
    /// ×2 upsampling of the 16s sum (8s).
    pub upscore_pool4: Option<ConvTranspose2d>,
    /// 1×1 class scores of the quarter-stride map (8s), zero-initialized.
    pub score_pool3: Option<Conv2d>,
    /// The final upsampling to the (padded) input size; none when the factor is 1.
    pub upscore: Option<ConvTranspose2d>,
    /// ReLU after `fc6`/`fc7`.
    pub relu: Relu,
    /// Dropout after `fc6`/`fc7`.
    pub dropout: Dropout,
}

/// A transposed convolution that upsamples by `factor` with bilinear weights and no bias.
fn upsampler(classes: usize, factor: usize, device: &Device) -> Option<ConvTranspose2d> {
    (factor > 1).then(|| {
        init_bilinear(
            ConvTranspose2dConfig::new([classes, classes], [2 * factor, 2 * factor])
                .with_stride([factor, factor])
                .with_padding([factor / 2, factor / 2])
                .with_bias(false)
                .init(device),
        )
    })
}

/// A dense layer that read a flattened `[channels, k, k]` map, as the equivalent `k×k`
/// convolution (the paper's "convolutionalization").
fn dense_as_conv(dense: &Linear, channels: usize, k: usize) -> Conv2d {
    let [d_in, d_out] = dense.weight.dims();
    assert_eq!(
        d_in,
        channels * k * k,
        "the dense layer reads {channels}×{k}×{k} maps"
    );
    let device = dense.weight.device();
    let mut conv = conv([channels, d_out], k, 1, k / 2, true, &device);
    // Burn stores dense weights [in, out]; a convolution's are [out, in, k, k].
    conv.weight = Param::from_tensor(
        dense
            .weight
            .val()
            .transpose()
            .reshape([d_out, channels, k, k]),
    );
    conv.bias = dense.bias.as_ref().map(|b| Param::from_tensor(b.val()));
    conv
}

fn zero_conv(c_in: usize, c_out: usize, device: &Device) -> Conv2d {
    let mut layer = conv([c_in, c_out], 1, 1, 0, true, device);
    layer.weight = Initializer::Zeros.init([c_out, c_in, 1, 1], device);
    layer
}

impl FcnConfig {
    /// FCN over VGG-16, as the paper.
    pub fn vgg16(variant: FcnVariant, num_classes: usize) -> Self {
        Self::new(variant, BackboneConfig::Vgg(VggConfig::vgg16(1000)))
            .with_num_classes(num_classes)
    }

    /// Builds the network on `device`.
    pub fn init(&self, device: &Device) -> Fcn {
        let backbone = match &self.backbone {
            BackboneConfig::Vgg(c) => {
                // The dense classifier becomes fc6/fc7 below; the backbone keeps `features`.
                let mut vgg = c.clone().with_hidden(1).init(device);
                vgg.classifier.clear();
                Backbone::Vgg(vgg)
            }
            // FCN does not use the classifier's head; a one-class head keeps it small.
            BackboneConfig::ResNet(c) => {
                Backbone::ResNet(c.clone().with_num_classes(1).init(device))
            }
        };
        self.init_with(backbone, device)
    }

    /// Builds the FCN over a trained VGG (torchvision weights, say), as the paper does: its
    /// `features` become the backbone and its first two dense layers become `fc6` (a 7×7
    /// convolution) and `fc7` (a 1×1 convolution) with the same weights.
    pub fn init_from_vgg(&self, mut vgg: Vgg, device: &Device) -> Fcn {
        let dense: Vec<Linear> = vgg
            .classifier
            .drain(..)
            .filter_map(|layer| match layer {
                Layer::Linear(linear) => Some(linear),
                _ => None,
            })
            .collect();
        let backbone = Backbone::Vgg(vgg);
        let [_, _, channels] = backbone.pyramid_channels();
        let width = dense
            .first()
            .map_or(self.fc_width, |fc6| fc6.weight.dims()[1]);
        let mut fcn = self
            .clone()
            .with_fc_width(width)
            .init_with(backbone, device);
        if let [fc6, fc7, ..] = &dense[..] {
            fcn.fc6 = Some(dense_as_conv(fc6, channels, 7));
            fcn.fc7 = Some(dense_as_conv(fc7, width, 1));
        }
        fcn
    }

    /// The layers on top of a built backbone.
    fn init_with(&self, backbone: Backbone, device: &Device) -> Fcn {
        let [c3, c4, c5] = backbone.pyramid_channels();
        let stride = backbone.stride();
        let k = self.num_classes;
        let (fc6, fc7, c_score) = match &backbone {
            Backbone::Vgg(_) => (
                Some(conv([c5, self.fc_width], 7, 1, 3, true, device)),
                Some(conv([self.fc_width, self.fc_width], 1, 1, 0, true, device)),
                self.fc_width,
            ),
            Backbone::ResNet(_) => (None, None, c5),
        };
        let (v16, v8) = match self.variant {
            FcnVariant::Fcn32s => (false, false),
            FcnVariant::Fcn16s => (true, false),
            FcnVariant::Fcn8s => (true, true),
        };
        let final_factor = match self.variant {
            FcnVariant::Fcn32s => stride,
            FcnVariant::Fcn16s => stride / 2,
            FcnVariant::Fcn8s => stride / 4,
        };
        Fcn {
            backbone,
            fc6,
            fc7,
            score_fr: zero_conv(c_score, k, device),
            upscore2: if v16 { upsampler(k, 2, device) } else { None },
            score_pool4: v16.then(|| zero_conv(c4, k, device)),
            upscore_pool4: if v8 { upsampler(k, 2, device) } else { None },
            score_pool3: v8.then(|| zero_conv(c3, k, device)),
            upscore: upsampler(k, final_factor, device),
            relu: Relu::new(),
            dropout: DropoutConfig::new(self.dropout).init(),
        }
    }
}

fn maybe(layer: &Option<ConvTranspose2d>, x: Tensor<4>) -> Tensor<4> {
    match layer {
        Some(up) => up.forward(x),
        None => x,
    }
}

impl Fcn {
    /// Per-pixel class scores: `[batch, c, h, w]` → `[batch, classes, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let stride = self.backbone.stride();
        let (hp, wp) = (h.div_ceil(stride) * stride, w.div_ceil(stride) * stride);
        let device = x.device();
        let x = if hp > h {
            Tensor::cat(vec![x, Tensor::zeros([n, c, hp - h, w], &device)], 2)
        } else {
            x
        };
        let x = if wp > w {
            Tensor::cat(vec![x, Tensor::zeros([n, c, hp, wp - w], &device)], 3)
        } else {
            x
        };
        let [c3, c4, c5] = self.backbone.forward_pyramid(x);
        let mut top = c5;
        for fc in [&self.fc6, &self.fc7].into_iter().flatten() {
            top = self
                .dropout
                .forward(self.relu.forward(fc.fast_forward(top)));
        }
        let mut score = self.score_fr.fast_forward(top);
        if let Some(skip) = &self.score_pool4 {
            score = maybe(&self.upscore2, score) + skip.fast_forward(c4);
        }
        if let Some(skip) = &self.score_pool3 {
            score = maybe(&self.upscore_pool4, score) + skip.fast_forward(c3);
        }
        let out = maybe(&self.upscore, score);
        let classes = out.dims()[1];
        out.slice([0..n, 0..classes, 0..h, 0..w])
    }
}

impl Summarize for Fcn {
    fn summarize(&self, s: &mut Summary) {
        let [c, h, w] = s.chw();
        let stride = self.backbone.stride();
        let (hp, wp) = (h.div_ceil(stride) * stride, w.div_ceil(stride) * stride);
        s.push("pad", "ZeroPad", vec![c, hp, wp], 0, 0);
        match &self.backbone {
            Backbone::Vgg(vgg) => s.sequential("backbone.features", &vgg.features),
            Backbone::ResNet(resnet) => s.scope("backbone", |s| resnet.summarize_features(s)),
        }
        for (name, fc) in [("fc6", &self.fc6), ("fc7", &self.fc7)] {
            if let Some(fc) = fc {
                s.conv2d(name, fc);
                s.same(&format!("{name}.relu"), "ReLU");
            }
        }
        s.conv2d("score_fr", &self.score_fr);
        let [c3, c4, _] = self.backbone.pyramid_channels();
        if let (Some(up), Some(skip)) = (&self.upscore2, &self.score_pool4) {
            s.conv_transpose2d("upscore2", up);
            let [_, sh, sw] = s.chw();
            let main = s.shape();
            s.set_shape(vec![c4, sh, sw]);
            s.conv2d("score_pool4", skip);
            s.set_shape(main);
        }
        if let (Some(up), Some(skip)) = (&self.upscore_pool4, &self.score_pool3) {
            s.conv_transpose2d("upscore_pool4", up);
            let [_, sh, sw] = s.chw();
            let main = s.shape();
            s.set_shape(vec![c3, sh, sw]);
            s.conv2d("score_pool3", skip);
            s.set_shape(main);
        }
        if let Some(up) = &self.upscore {
            s.conv_transpose2d("upscore", up);
        }
        let [classes, _, _] = s.chw();
        s.push("crop", "Crop", vec![classes, h, w], 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_vgg() -> BackboneConfig {
        BackboneConfig::Vgg(VggConfig::vgg16(10).narrowed(16))
    }

    #[test]
    fn output_is_the_input_size_for_odd_sizes() {
        let device = Device::flex();
        for variant in [FcnVariant::Fcn32s, FcnVariant::Fcn16s, FcnVariant::Fcn8s] {
            for backbone in [
                small_vgg(),
                BackboneConfig::ResNet(ResNetConfig::resnet18(10).with_width(8)),
                BackboneConfig::ResNet(ResNetConfig::small(1, 10, 3)),
            ] {
                let model = FcnConfig::new(variant, backbone)
                    .with_num_classes(5)
                    .with_fc_width(32)
                    .init(&device);
                for [h, w] in [[97, 131], [64, 64], [33, 1 + 32]] {
                    let out = model.forward(Tensor::ones([2, 3, h, w], &device));
                    assert_eq!(out.dims(), [2, 5, h, w], "{variant:?}");
                    let s = Summary::of(&model, &[3, h, w]);
                    assert_eq!(s.shape(), vec![5, h, w]);
                }
            }
        }
    }

    #[test]
    fn upsampling_starts_bilinear_and_skips_start_at_zero() {
        let device = Device::flex();
        let model = FcnConfig::new(FcnVariant::Fcn8s, small_vgg())
            .with_num_classes(3)
            .with_fc_width(16)
            .init(&device);
        let up = model.upscore.as_ref().unwrap();
        assert_eq!(up.weight.dims(), [3, 3, 16, 16]);
        // A constant map stays constant under bilinear upsampling (away from the borders).
        let ones = Tensor::ones([1, 3, 4, 4], &device);
        let out = up.forward(ones);
        assert_eq!(out.dims(), [1, 3, 32, 32]);
        let center = out.slice([0..1, 0..3, 8..24, 8..24]);
        let (min, max) = (
            center.clone().min().into_scalar::<f32>(),
            center.max().into_scalar::<f32>(),
        );
        assert!(
            (min - 1.0).abs() < 1e-5 && (max - 1.0).abs() < 1e-5,
            "{min} {max}"
        );
        let skip = model.score_pool3.as_ref().unwrap();
        assert_eq!(skip.weight.val().abs().max().into_scalar::<f32>(), 0.0);
    }

    #[test]
    fn fc6_fc7_are_the_vggs_dense_layers_as_convolutions() {
        let device = Device::flex();
        let vgg = VggConfig::vgg16(5).narrowed(16).init(&device);
        // The VGG's first dense layer on a 224×224 input (7×7 final maps)…
        let x = Tensor::<4>::random(
            [1, 3, 224, 224],
            burn::tensor::Distribution::Default,
            &device,
        );
        let map = vgg.forward_feature_map(x.clone());
        let Layer::Linear(fc6) = &vgg.classifier[0] else {
            panic!()
        };
        let dense = fc6.forward(map.clone().flatten::<2>(1, 3));
        let fcn = FcnConfig::vgg16(FcnVariant::Fcn32s, 3).init_from_vgg(vgg, &device);
        // …is fc6's output at the center of the 7×7 map.
        let conv = fcn.fc6.as_ref().unwrap().forward(map);
        let center = conv.slice([0..1, 0..256, 3..4, 3..4]).reshape([1, 256]);
        let diff = (center - dense.clone()).abs().max().into_scalar::<f32>();
        assert!(
            diff < 1e-4 * dense.abs().max().into_scalar::<f32>().max(1e-3),
            "{diff}"
        );
        assert_eq!(fcn.forward(x).dims(), [1, 3, 224, 224]);
    }

    #[test]
    fn vgg16_fcn_parameters() {
        // The paper's FCN-8s over VGG-16 with 21 classes: 134.3 M parameters
        // (VGG-16's convolutions 14,714,688 + fc6 102,764,544 + fc7 16,781,312 + scores and
        // upsamplings).
        let device = Device::flex();
        let model = FcnConfig::vgg16(FcnVariant::Fcn8s, 21).init(&device);
        let s = Summary::of(&model, &[3, 224, 224]);
        let vgg_features = 14_714_688;
        let fc = 512 * 49 * 4096 + 4096 + 4096 * 4096 + 4096;
        let scores = (4096 + 1) * 21 + (512 + 1) * 21 + (256 + 1) * 21;
        let ups = 21 * 21 * (4 * 4 + 4 * 4 + 16 * 16);
        assert_eq!(s.params(), vgg_features + fc + scores + ups);
        assert_eq!(crate::layers::parameter_count(&model), s.params());
    }
}
