//! AlexNet (Krizhevsky, Sutskever & Hinton, *ImageNet Classification with Deep Convolutional
//! Neural Networks*, 2012).
//!
//! - `alexnet`: torchvision's layout (from Krizhevsky's "one weird trick" paper): 64, 192,
//!   384, 256, 256 filters, no LRN, adaptive 6×6 average pooling, a dropout classifier.
//!   61,100,840 parameters at 1000 classes; loads torchvision weights
//!   (`features.{0,3,6,8,10}`, `classifier.{1,4,6}`).
//! - `alexnet-paper`: the 2012 paper on one GPU: 96, 256, 384, 384, 256 filters,
//!   227×227 input, local response normalization (k = 2, n = 5, α = 1e-4, β = 0.75) after
//!   the ReLU of the first two convolutions, overlapping 3×3/2 max pooling, weights drawn
//!   from N(0, 0.01) and biases of 1 in conv 2, 4, 5 and the hidden dense layers.
//!
//! ```text
//! conv 11×11/4 → ReLU → [LRN] → pool 3/2
//! conv 5×5     → ReLU → [LRN] → pool 3/2
//! conv 3×3 → ReLU → conv 3×3 → ReLU → conv 3×3 → ReLU → pool 3/2
//! avg pool to 6×6 → dropout → fc 4096 → ReLU → dropout → fc 4096 → ReLU → fc classes
//! ```

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::AdaptiveAvgPool2dConfig;
use burn::nn::{DropoutConfig, Initializer, Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::prelude::*;

use crate::layers::{FeaturesClassifier, Layer, max_pool, paper_lrn};
#[cfg(test)]
use crate::summary::Summary;

/// Hyper-parameters of [`AlexNet`].
#[derive(Config, Debug)]
pub struct AlexNetConfig {
    /// Output classes.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// Input channels.
    #[config(default = 3)]
    pub in_channels: usize,
    /// Filters of the five convolutions.
    #[config(default = "[64, 192, 384, 256, 256]")]
    pub filters: [usize; 5],
    /// Width of the two hidden dense layers.
    #[config(default = 4096)]
    pub hidden: usize,
    /// Dropout before the hidden dense layers.
    #[config(default = 0.5)]
    pub dropout: f64,
    /// The 2012 paper's network: LRN, no padding in the first convolution, the paper's
    /// initialization.
    #[config(default = false)]
    pub paper: bool,
}

impl AlexNetConfig {
    /// torchvision's AlexNet.
    pub fn alexnet(num_classes: usize) -> Self {
        Self::new().with_num_classes(num_classes)
    }

    /// The 2012 paper's AlexNet (single-GPU widths, LRN), for 227×227 inputs.
    pub fn paper_2012(num_classes: usize) -> Self {
        Self::new()
            .with_num_classes(num_classes)
            .with_filters([96, 256, 384, 384, 256])
            .with_paper(true)
    }

    /// Builds the network on `device`.
    pub fn init(&self, device: &Device) -> AlexNet {
        let f = self.filters;
        // The paper: N(0, 0.01) weights; bias 1 where `one`, else 0. torchvision: PyTorch's
        // defaults, which Burn's defaults equal.
        let conv = |c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize, one: bool| {
            let config = Conv2dConfig::new([c_in, c_out], [k, k])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad));
            if self.paper {
                paper_init_conv(config, one, device)
            } else {
                config.init(device)
            }
        };
        let linear = |d_in: usize, d_out: usize, one: bool| {
            let layer = LinearConfig::new(d_in, d_out);
            if self.paper {
                paper_init_linear(layer, one, device)
            } else {
                layer.init(device)
            }
        };
        let pool = || Layer::MaxPool2d(max_pool(3, 2, 0, false));
        let relu = || Layer::Relu(Relu::new());
        let dropout = || Layer::Dropout(DropoutConfig::new(self.dropout).init());
        let first_pad = if self.paper { 0 } else { 2 };
        let mut features = vec![
            Layer::Conv2d(conv(self.in_channels, f[0], 11, 4, first_pad, false)),
            relu(),
        ];
        if self.paper {
            features.push(Layer::Lrn(paper_lrn()));
        }
        features.extend([
            pool(),
            Layer::Conv2d(conv(f[0], f[1], 5, 1, 2, true)),
            relu(),
        ]);
        if self.paper {
            features.push(Layer::Lrn(paper_lrn()));
        }
        features.extend([
            pool(),
            Layer::Conv2d(conv(f[1], f[2], 3, 1, 1, false)),
            relu(),
            Layer::Conv2d(conv(f[2], f[3], 3, 1, 1, true)),
            relu(),
            Layer::Conv2d(conv(f[3], f[4], 3, 1, 1, true)),
            relu(),
            pool(),
        ]);
        FeaturesClassifier {
            features,
            avgpool: AdaptiveAvgPool2dConfig::new([6, 6]).init(),
            classifier: vec![
                dropout(),
                Layer::Linear(linear(f[4] * 36, self.hidden, true)),
                relu(),
                dropout(),
                Layer::Linear(linear(self.hidden, self.hidden, true)),
                relu(),
                Layer::Linear(linear(self.hidden, self.num_classes, false)),
            ],
        }
    }
}

fn paper_init_conv(config: Conv2dConfig, one: bool, device: &Device) -> Conv2d {
    let mut layer = config
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: 0.01,
        })
        .init(device);
    let c_out = layer.weight.dims()[0];
    layer.bias = Some(Param::from_tensor(Tensor::full(
        [c_out],
        if one { 1.0 } else { 0.0 },
        device,
    )));
    layer
}

fn paper_init_linear(config: LinearConfig, one: bool, device: &Device) -> Linear {
    let mut layer = config
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: 0.01,
        })
        .init(device);
    let d_out = layer.weight.dims()[1];
    layer.bias = Some(Param::from_tensor(Tensor::full(
        [d_out],
        if one { 1.0 } else { 0.0 },
        device,
    )));
    layer
}

/// AlexNet: a convolutional `features` stack, 6×6 average pooling and a dense `classifier`
/// stack (dropout, dense, ReLU, dropout, dense, ReLU, dense head), indexed as torchvision's
/// `nn.Sequential`s. The same layout as [`crate::vgg::Vgg`].
pub type AlexNet = FeaturesClassifier;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_and_multiply_adds() {
        let device = Device::flex();
        let s = Summary::of(&AlexNetConfig::alexnet(1000).init(&device), &[3, 224, 224]);
        assert_eq!(s.params(), 61_100_840);
        assert!((s.macs() as f64 / 1e9 - 0.71).abs() < 0.005, "{}", s.macs());
        let paper = AlexNetConfig::paper_2012(1000).init(&device);
        let s = Summary::of(&paper, &[3, 227, 227]);
        assert_eq!(s.params(), 62_378_344);
        // 227 → 55 → 27 → 13 → 6, as in the paper.
        let conv1 = &s.rows[0];
        assert_eq!(conv1.output, vec![96, 55, 55]);
        assert_eq!(
            paper
                .forward(Tensor::zeros([1, 3, 227, 227], &device))
                .dims(),
            [1, 1000]
        );
    }

    #[test]
    fn torchvision_indices_and_other_sizes() {
        let device = Device::flex().autodiff();
        let model = AlexNetConfig::alexnet(10)
            .with_filters([8, 16, 16, 16, 16])
            .with_hidden(32)
            .init(&device);
        let convs: Vec<usize> = model
            .features
            .iter()
            .enumerate()
            .filter(|(_, l)| matches!(l, Layer::Conv2d(_)))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(convs, vec![0, 3, 6, 8, 10]);
        assert_eq!(
            model
                .forward(Tensor::zeros([2, 3, 100, 130], &device))
                .dims(),
            [2, 10]
        );
        let model = model.with_num_classes(3, &device).freeze_backbone();
        assert_eq!(
            model
                .forward(Tensor::zeros([1, 3, 224, 224], &device))
                .dims(),
            [1, 3]
        );
        assert!(model.head().weight.is_require_grad());
    }
}
