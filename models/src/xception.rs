//! Xception (Chollet, *Xception: Deep Learning with Depthwise Separable Convolutions*, 2017),
//! as Keras' `applications.Xception`: 36 convolutions, all but two of them depthwise
//! separable, in 14 blocks with residual 1×1 shortcuts, for 299×299 inputs scaled to [-1, 1].
//!
//! ```text
//! entry flow   conv 32 3×3/2, conv 64 3×3            (valid padding, BN, ReLU)
//!              3 blocks: [ReLU] sep 128/256/728, ReLU, sep, max pool 3/2; 1×1/2 shortcut
//! middle flow  8 blocks: 3 × (ReLU, sep 728, BN); identity shortcut
//! exit flow    ReLU, sep 728, ReLU, sep 1024, max pool 3/2; 1×1/2 shortcut
//!              sep 1536, ReLU, sep 2048, ReLU, global average pooling, dense
//! ```
//!
//! Every separable convolution is followed by batch norm (ε = 0.001, as Keras) and has no
//! bias. 22,855,952 parameters at 1000 classes; Keras' 22,910,480 also counts the 54,528
//! batch-norm moving means and variances.

use burn::nn::conv::Conv2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::prelude::*;

use crate::conv::{FastBatchNorm, FastConv2d, FastMaxPool2d};

use crate::fashion_cnn::GLOROT_UNIFORM;
use crate::layers::{SeparableConv2d, SeparableConv2dConfig, Taps, global_avg_pool};
use crate::summary::{Summarize, Summary};

/// Hyper-parameters of [`Xception`].
#[derive(Config, Debug)]
pub struct XceptionConfig {
    /// Output classes.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// Input channels.
    #[config(default = 3)]
    pub in_channels: usize,
    /// Blocks in the middle flow.
    #[config(default = 8)]
    pub middle_blocks: usize,
    /// Divides every width (reduced test networks).
    #[config(default = 1)]
    pub width_divisor: usize,
}

fn bn(channels: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(channels)
        .with_epsilon(1e-3)
        .init(device)
}

fn sep(c_in: usize, c_out: usize, device: &Device) -> SeparableConv2d {
    SeparableConv2dConfig::new([c_in, c_out], [3, 3])
        .with_padding(PaddingConfig2d::Same)
        .with_bias(false)
        .init(device)
}

fn plain_conv(c_in: usize, c_out: usize, k: usize, stride: usize, device: &Device) -> Conv2d {
    burn::nn::conv::Conv2dConfig::new([c_in, c_out], [k, k])
        .with_stride([stride, stride])
        .with_padding(if k == 1 {
            PaddingConfig2d::Same
        } else {
            PaddingConfig2d::Valid
        })
        .with_bias(false)
        .with_initializer(GLOROT_UNIFORM)
        .init(device)
}

/// A residual block of separable convolutions.
#[derive(Module, Debug)]
pub struct XceptionBlock {
    /// The separable convolutions.
    pub sepconv: Vec<SeparableConv2d>,
    /// Batch norm after each.
    pub bn: Vec<BatchNorm>,
    /// 1×1/2 convolution and batch norm on the shortcut (blocks that downsample).
    pub residual: Option<(Conv2d, BatchNorm)>,
    /// 3×3/2 max pooling at the end (blocks that downsample).
    pub pool: Option<MaxPool2d>,
    /// ReLU.
    pub relu: Relu,
    /// Whether the block starts with a ReLU (all but the first entry block).
    pub relu_first: bool,
}

impl XceptionBlock {
    fn new(widths: &[usize], downsample: bool, relu_first: bool, device: &Device) -> Self {
        let (c_in, c_out) = (widths[0], widths[widths.len() - 1]);
        Self {
            sepconv: widths.windows(2).map(|w| sep(w[0], w[1], device)).collect(),
            bn: widths[1..].iter().map(|&c| bn(c, device)).collect(),
            residual: downsample
                .then(|| (plain_conv(c_in, c_out, 1, 2, device), bn(c_out, device))),
            pool: downsample.then(|| {
                MaxPool2dConfig::new([3, 3])
                    .with_strides([2, 2])
                    .with_padding(PaddingConfig2d::Same)
                    .init()
            }),
            relu: Relu::new(),
            relu_first,
        }
    }

    /// `[batch, c_in, h, w]` → `[batch, c_out, h', w']`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let shortcut = match &self.residual {
            Some((conv, bn)) => bn.fast_forward(conv.fast_forward(x.clone())),
            None => x.clone(),
        };
        let mut x = x;
        for (i, (conv, bn)) in self.sepconv.iter().zip(&self.bn).enumerate() {
            if i > 0 || self.relu_first {
                x = self.relu.forward(x);
            }
            x = bn.fast_forward(conv.forward(x));
        }
        if let Some(pool) = &self.pool {
            x = pool.fast_forward(x);
        }
        x + shortcut
    }
}

impl Summarize for XceptionBlock {
    fn summarize(&self, s: &mut Summary) {
        let input = s.shape();
        for (i, (conv, bn)) in self.sepconv.iter().zip(&self.bn).enumerate() {
            if i > 0 || self.relu_first {
                s.same(&format!("relu{i}"), "ReLU");
            }
            summarize_separable(s, &format!("sepconv.{i}"), conv);
            s.batch_norm(&format!("bn.{i}"), bn);
        }
        if let Some(pool) = &self.pool {
            s.max_pool2d("pool", pool);
        }
        if let Some((conv, bn)) = &self.residual {
            let main = s.shape();
            s.set_shape(input);
            s.conv2d("residual.0", conv);
            s.batch_norm("residual.1", bn);
            s.set_shape(main);
        }
    }
}

/// Summary rows of a separable convolution: its depthwise and pointwise steps.
pub fn summarize_separable(s: &mut Summary, name: &str, conv: &SeparableConv2d) {
    s.scope(name, |s| {
        s.conv2d("depthwise", &conv.depthwise);
        s.conv2d("pointwise", &conv.pointwise);
    });
}

/// Xception.
#[derive(Module, Debug)]
pub struct Xception {
    /// 32 filters 3×3/2, valid.
    pub conv1: Conv2d,
    /// Batch norm.
    pub bn1: BatchNorm,
    /// 64 filters 3×3, valid.
    pub conv2: Conv2d,
    /// Batch norm.
    pub bn2: BatchNorm,
    /// Entry flow blocks (3), middle flow blocks (8), the exit flow's residual block (1).
    pub blocks: Vec<XceptionBlock>,
    /// Separable 1536.
    pub conv3: SeparableConv2d,
    /// Batch norm.
    pub bn3: BatchNorm,
    /// Separable 2048.
    pub conv4: SeparableConv2d,
    /// Batch norm.
    pub bn4: BatchNorm,
    /// ReLU.
    pub relu: Relu,
    /// The head.
    pub fc: Linear,
}

impl XceptionConfig {
    /// Builds the network on `device`.
    pub fn init(&self, device: &Device) -> Xception {
        let d = self.width_divisor;
        let w = |c: usize| c / d;
        let mut blocks = vec![
            XceptionBlock::new(&[w(64), w(128), w(128)], true, false, device),
            XceptionBlock::new(&[w(128), w(256), w(256)], true, true, device),
            XceptionBlock::new(&[w(256), w(728), w(728)], true, true, device),
        ];
        for _ in 0..self.middle_blocks {
            blocks.push(XceptionBlock::new(&[w(728); 4], false, true, device));
        }
        blocks.push(XceptionBlock::new(
            &[w(728), w(728), w(1024)],
            true,
            true,
            device,
        ));
        let fc = crate::fashion_cnn::keras_linear(w(2048), self.num_classes, device);
        Xception {
            conv1: plain_conv(self.in_channels, w(32), 3, 2, device),
            bn1: bn(w(32), device),
            conv2: plain_conv(w(32), w(64), 3, 1, device),
            bn2: bn(w(64), device),
            blocks,
            conv3: sep(w(1024), w(1536), device),
            bn3: bn(w(1536), device),
            conv4: sep(w(1536), w(2048), device),
            bn4: bn(w(2048), device),
            relu: Relu::new(),
            fc,
        }
    }
}

impl Xception {
    /// The last feature map, `[batch, 2048, 10, 10]` at 299×299.
    pub fn forward_feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_tapped(x, &mut Taps::default())
    }

    /// [`Xception::forward_feature_map`], tapping `conv1` … `conv4` (after batch norm and
    /// ReLU) and each block (`blocks.0` …).
    pub fn forward_tapped(&self, x: Tensor<4>, taps: &mut Taps) -> Tensor<4> {
        let x = self
            .relu
            .forward(self.bn1.fast_forward(self.conv1.fast_forward(x)));
        let x = taps.tap(|| "conv1".into(), x);
        let x = self
            .relu
            .forward(self.bn2.fast_forward(self.conv2.fast_forward(x)));
        let x = taps.tap(|| "conv2".into(), x);
        let x = self.blocks.iter().enumerate().fold(x, |x, (i, block)| {
            taps.tap(|| format!("blocks.{i}"), block.forward(x))
        });
        let x = self
            .relu
            .forward(self.bn3.fast_forward(self.conv3.forward(x)));
        let x = taps.tap(|| "conv3".into(), x);
        let x = self
            .relu
            .forward(self.bn4.fast_forward(self.conv4.forward(x)));
        taps.tap(|| "conv4".into(), x)
    }

    /// Pooled features, `[batch, 2048]`.
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        global_avg_pool(self.forward_feature_map(x))
    }

    /// Class logits, `[batch, num_classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.fc.forward(self.forward_features(x))
    }

    /// Replaces the head for `num_classes` classes.
    pub fn with_num_classes(mut self, num_classes: usize, device: &Device) -> Self {
        let [features, _] = self.fc.weight.dims();
        self.fc = LinearConfig::new(features, num_classes).init(device);
        self
    }

    /// Freezes every parameter but the head's.
    pub fn freeze_backbone(self) -> Self {
        let mut frozen = self.freeze();
        frozen.fc = frozen.fc.unfreeze();
        frozen
    }
}

impl Summarize for Xception {
    fn summarize(&self, s: &mut Summary) {
        s.conv2d("conv1", &self.conv1);
        s.batch_norm("bn1", &self.bn1);
        s.same("relu", "ReLU");
        s.conv2d("conv2", &self.conv2);
        s.batch_norm("bn2", &self.bn2);
        s.same("relu", "ReLU");
        for (i, block) in self.blocks.iter().enumerate() {
            s.scope(format!("blocks.{i}"), |s| block.summarize(s));
        }
        summarize_separable(s, "conv3", &self.conv3);
        s.batch_norm("bn3", &self.bn3);
        s.same("relu", "ReLU");
        summarize_separable(s, "conv4", &self.conv4);
        s.batch_norm("bn4", &self.bn4);
        s.same("relu", "ReLU");
        s.global_pool("avgpool", "GlobalAveragePooling2D");
        s.linear("fc", &self.fc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::parameter_count;

    #[test]
    fn keras_parameter_counts() {
        let device = Device::flex();
        let model = XceptionConfig::new().init(&device);
        assert_eq!(parameter_count(&model), 22_855_952);
        assert_eq!(model.num_params(), 22_910_480);
        let s = Summary::of(&model, &[3, 299, 299]);
        assert_eq!(s.params(), 22_855_952);
        let last_map = s.rows.iter().rev().find(|r| r.kind == "ReLU").unwrap();
        assert_eq!(last_map.output, vec![2048, 10, 10]);
    }

    #[test]
    fn reduced_network_runs_at_two_sizes() {
        let device = Device::flex();
        let model = XceptionConfig::new()
            .with_num_classes(3)
            .with_width_divisor(8)
            .with_middle_blocks(2)
            .init(&device);
        for [h, w] in [[71, 71], [96, 80]] {
            let map = model.forward_feature_map(Tensor::zeros([1, 3, h, w], &device));
            let s = Summary::of(&model, &[3, h, w]);
            let last = s.rows.iter().rev().find(|r| r.kind == "ReLU").unwrap();
            assert_eq!(last.output, map.dims()[1..].to_vec());
        }
        assert_eq!(
            model.forward(Tensor::zeros([2, 3, 71, 71], &device)).dims(),
            [2, 3]
        );
    }
}
