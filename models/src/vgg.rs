//! VGG (Simonyan & Zisserman, *Very Deep Convolutional Networks for Large-Scale Image
//! Recognition*, 2014), in torchvision's layout: stacks of 3×3 convolutions (padding 1) and
//! 2×2 max poolings in `features`, adaptive 7×7 average pooling, and a 4096-4096 dropout
//! classifier. VGG-16 (configuration D, 138,357,544 parameters) is FCN's backbone and loads
//! torchvision weights.

use burn::nn::pool::AdaptiveAvgPool2dConfig;
use burn::nn::{DropoutConfig, Initializer, Relu};
use burn::prelude::*;

use crate::layers::{FeaturesClassifier, Layer, batch_norm, conv, linear_zero_bias, max_pool};
#[cfg(test)]
use crate::summary::Summary;

/// Hyper-parameters of a [`Vgg`].
#[derive(Config, Debug)]
pub struct VggConfig {
    /// The stack, as in the paper's table 1: a filter count per 3×3 convolution, `0` for a
    /// 2×2 max pooling.
    pub layers: Vec<usize>,
    /// Output classes.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// Input channels.
    #[config(default = 3)]
    pub in_channels: usize,
    /// Width of the two hidden dense layers.
    #[config(default = 4096)]
    pub hidden: usize,
    /// Batch norm after each convolution (torchvision's `vgg16_bn`).
    #[config(default = false)]
    pub batch_norm: bool,
    /// Dropout after each hidden dense layer.
    #[config(default = 0.5)]
    pub dropout: f64,
}

impl VggConfig {
    /// VGG-11 (configuration A).
    pub fn vgg11(num_classes: usize) -> Self {
        Self::new(vec![64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0])
            .with_num_classes(num_classes)
    }

    /// VGG-16 (configuration D).
    pub fn vgg16(num_classes: usize) -> Self {
        Self::new(vec![
            64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
        ])
        .with_num_classes(num_classes)
    }

    /// The same stack with every width divided by `divisor` (reduced test networks that keep
    /// the keys).
    pub fn narrowed(mut self, divisor: usize) -> Self {
        self.layers = self.layers.iter().map(|&c| c / divisor).collect();
        self.hidden /= divisor;
        self
    }

    /// Builds the network on `device`.
    pub fn init(&self, device: &Device) -> Vgg {
        let mut features = Vec::new();
        let mut c_in = self.in_channels;
        for &c in &self.layers {
            if c == 0 {
                features.push(Layer::MaxPool2d(max_pool(2, 2, 0, false)));
                continue;
            }
            features.push(Layer::Conv2d(conv([c_in, c], 3, 1, 1, true, device)));
            if self.batch_norm {
                features.push(Layer::BatchNorm(batch_norm(c, device)));
            }
            features.push(Layer::Relu(Relu::new()));
            c_in = c;
        }
        // torchvision: dense weights N(0, 0.01), zero biases.
        let normal = Initializer::Normal {
            mean: 0.0,
            std: 0.01,
        };
        let linear = |d_in: usize, d_out: usize| {
            Layer::Linear(linear_zero_bias(d_in, d_out, normal.clone(), device))
        };
        let dropout = || Layer::Dropout(DropoutConfig::new(self.dropout).init());
        FeaturesClassifier {
            features,
            avgpool: AdaptiveAvgPool2dConfig::new([7, 7]).init(),
            classifier: vec![
                linear(c_in * 49, self.hidden),
                Layer::Relu(Relu::new()),
                dropout(),
                linear(self.hidden, self.hidden),
                Layer::Relu(Relu::new()),
                dropout(),
                linear(self.hidden, self.num_classes),
            ],
        }
    }
}

/// A VGG network: 3×3 convolutions (and batch norms), ReLUs and poolings in `features`, 7×7
/// average pooling, and dense, ReLU, dropout, dense, ReLU, dropout, dense head in
/// `classifier`, indexed as torchvision's. The same layout as [`crate::alexnet::AlexNet`].
pub type Vgg = FeaturesClassifier;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vgg16_counts() {
        let device = Device::flex();
        let s = Summary::of(&VggConfig::vgg16(1000).init(&device), &[3, 224, 224]);
        assert_eq!(s.params(), 138_357_544);
        assert!((s.macs() as f64 / 1e9 - 15.47).abs() < 0.01, "{}", s.macs());
    }

    #[test]
    fn narrowed_vgg_runs_at_other_sizes() {
        let device = Device::flex();
        let model = VggConfig::vgg16(4).narrowed(16).init(&device);
        assert_eq!(
            model.forward(Tensor::zeros([1, 3, 64, 96], &device)).dims(),
            [1, 4]
        );
        let pools = model.forward_pools(Tensor::zeros([1, 3, 64, 96], &device));
        assert_eq!(pools.len(), 5);
        assert_eq!(pools[4].dims(), [1, 32, 2, 3]);
    }
}
